//! The deny log in the kernel (root): a node netns with two pod netns routed through it, the
//! table compiled with the log option and applied with nft, weftd's NFLOG reader bound in the
//! node netns. A denied probe gives exactly one structured line naming both pods and the
//! policy; the same flow again gives none; without the option the table has no log statement.
//! Everything lives in namespaces made here, removed on drop (also on failure).

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use weft_agent::policy_log::{self, Limiter, Reader};
use weft_lab::ns::Netns;
use weft_policy::{
    k8s, Applier, CompileOptions, Compiler, Direction, Labels, Model, Namespace, Pod,
};

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Pod netns `pod` behind veth `host` in `node`: pod address `ip`/24, gateway `gw`.
fn attach(node: &Netns, pod: &Netns, host: &str, ip: &str, gw: &str) {
    run(node.command("ip").args([
        "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", &pod.name,
    ]));
    run(node
        .command("ip")
        .args(["addr", "add", &format!("{gw}/24"), "dev", host]));
    run(node.command("ip").args(["link", "set", host, "up"]));
    run(pod
        .command("ip")
        .args(["addr", "add", &format!("{ip}/24"), "dev", "eth0"]));
    run(pod.command("ip").args(["link", "set", "eth0", "up"]));
    run(pod.command("ip").args(["link", "set", "lo", "up"]));
    run(pod
        .command("ip")
        .args(["route", "add", "default", "via", gw]));
}

fn pod(ns: &str, name: &str, ip: &str) -> Pod {
    Pod {
        namespace: ns.into(),
        name: name.into(),
        labels: Labels::from([("pod".to_string(), name.to_string())]),
        ips: vec![ip.parse().unwrap()],
        named_ports: vec![],
        local: true,
        host_network: false,
    }
}

fn model() -> Model {
    let mut m = Model::new();
    for ns in ["x", "y"] {
        m.set_namespace(Namespace::new(ns, Labels::new()));
    }
    m.set_pod(pod("x", "a", "10.244.1.2"));
    m.set_pod(pod("y", "b", "10.244.3.2"));
    let deny = serde_json::from_value(serde_json::json!({
        "metadata": { "namespace": "y", "name": "deny" },
        "spec": { "podSelector": {}, "policyTypes": ["Ingress"] }
    }))
    .unwrap();
    m.set_policy(k8s::policy(&deny).unwrap());
    m
}

fn listing(node: &Netns) -> String {
    let out = node
        .command("nft")
        .args(["list", "table", "inet", weft_policy::TABLE])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn send_udp(pod: &Netns, dst: &str, port: u16) {
    let dst: SocketAddr = (dst.parse::<IpAddr>().unwrap(), port).into();
    weft_netops::run_in(pod.handle(), move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.send_to(b"probe", dst).unwrap();
    })
    .unwrap();
}

#[test]
fn a_denied_connection_is_logged_once_with_its_pods_and_policy() {
    let node = Netns::new("wlog-node").unwrap();
    let a = Netns::new("wlog-a").unwrap();
    let b = Netns::new("wlog-b").unwrap();
    attach(&node, &a, "va", "10.244.1.2", "10.244.1.1");
    attach(&node, &b, "vb", "10.244.3.2", "10.244.3.1");
    weft_netops::run_in(node.handle(), || {
        weft_netops::sysctl::write("net/ipv4/ip_forward", "1").unwrap()
    })
    .unwrap();

    // Off: no log statement anywhere.
    let off = CompileOptions {
        sctp: false,
        ..Default::default()
    };
    let mut applier = Applier::new();
    weft_netops::run_in(node.handle(), || {
        applier.apply(&weft_policy::compile(&model(), &off))
    })
    .unwrap()
    .unwrap();
    assert!(!listing(&node).contains("log"), "{}", listing(&node));

    // On: weftd's reader bound first, then the table (as weftd does).
    let reader = weft_netops::run_in(node.handle(), || Reader::open(policy_log::GROUP))
        .unwrap()
        .expect("bind NFLOG group in the node netns");
    // Guards a hang only: a missing message fails the test, it is never a verdict.
    reader.set_timeout(Duration::from_secs(10)).unwrap();
    let on = CompileOptions {
        log_denied: Some(policy_log::GROUP),
        ..off
    };
    let compiler = RwLock::new(Compiler::new(model(), on));
    let desired = compiler.write().unwrap().ruleset().clone();
    weft_netops::run_in(node.handle(), || applier.apply(&desired))
        .unwrap()
        .unwrap();
    let text = listing(&node);
    assert!(
        text.contains(
            "ct state new limit rate 10/second burst 20 packets log prefix \"ni_y\" group 87"
        ),
        "{text}"
    );

    // A denied probe, the same flow again (a client's retry), then a second denied flow as
    // the end marker: NFLOG delivers in order, so everything before it has been seen.
    send_udp(&a, "10.244.3.2", 81);
    send_udp(&a, "10.244.3.2", 81);
    send_udp(&a, "10.244.3.2", 82);
    let mut reader = reader;
    let mut limiter = Limiter::new(policy_log::PER_SECOND);
    let mut lines = Vec::new();
    let mut seen = 0;
    while !lines.iter().any(|l: &policy_log::Line| l.port == 82) {
        let denied = reader.receive().expect("a denial from the kernel");
        seen += denied.len();
        lines.extend(policy_log::process(
            &mut limiter,
            &compiler,
            denied,
            Instant::now(),
        ));
    }
    assert_eq!(seen, 3, "the kernel reported each denied packet");
    assert_eq!(lines.len(), 2, "{lines:#?}");
    let l = &lines[0];
    assert_eq!((l.src.as_str(), l.dst.as_str()), ("x/a", "y/b"));
    assert_eq!((l.protocol.as_str(), l.port), ("udp", 81));
    assert_eq!(l.direction, Direction::Ingress);
    assert_eq!(l.policies, ["y/deny"]);
    assert!(
        l.reason
            .starts_with("denied: y/b is isolated for ingress by [y/deny]"),
        "{}",
        l.reason
    );
    assert_eq!(limiter.suppressed, 1, "the retry was counted, not logged");
}
