//! Chaining: the conflist weftd writes, extended to weft -> portmap -> bandwidth (Debian's
//! reference plugins, /usr/lib/cni), driven like libcni with the capability arguments
//! containerd passes. weft's result must pass the reference plugins' strict parsing as
//! prevResult (ADD, CHECK and DEL); the host port forwards to the pod, the rate limit is in
//! the kernel and holds, and DEL through the chain removes all of it.
//!
//! Root; needs `weft` and `weftd` built (see tests/e2e.rs).

use serde_json::{json, Map, Value};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};
use weft_lab::cluster::WORLD_IP;
use weft_lab::conflist;
use weft_lab::probe::{in_netns_thread, whoami, WhoAmIServer};
use weft_lab::{Attachment, Cluster, ConfList, DatastoreKind, LabConfig, PluginRunner};
use weft_netops::netns::NetNs;
use weft_netops::Netlink;

const HOST_PORT: u16 = 8080;
const POD_PORT: u16 = 8081;
/// Into the pod: 8 Mbit/s (1 MB/s), burst 1 Mbit (125 kB). Out of it: 16 Mbit/s.
const INGRESS_RATE: u64 = 8_000_000;
const INGRESS_BURST: u64 = 1_000_000;
const EGRESS_RATE: u64 = 16_000_000;
const EGRESS_BURST: u64 = 1_000_000;

fn tc_qdiscs(node: &NetNs) -> Vec<Value> {
    let out = weft_lab::ns::enter_command(node, "tc")
        .args(["-j", "qdisc", "show"])
        .output()
        .expect("tc");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

fn tbf_on(qdiscs: &[Value], dev: &str) -> Option<Value> {
    qdiscs
        .iter()
        .find(|q| q["dev"] == dev && q["kind"] == "tbf")
        .cloned()
}

/// All rules of every iptables flavour in `node` (portmap uses `iptables`, whichever it is).
fn iptables_rules(node: &NetNs) -> String {
    let mut all = String::new();
    for tool in ["iptables-nft-save", "iptables-legacy-save"] {
        let out = weft_lab::ns::enter_command(node, tool)
            .output()
            .expect(tool);
        all.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    all
}

/// Sends `bytes` from `from` to a sink at `to` and returns how long the transfer took (until
/// the sink has read everything and said so).
fn transfer(from: &NetNs, sink_ns: &NetNs, to: IpAddr, bytes: usize) -> Duration {
    let listener = in_netns_thread(sink_ns, move || TcpListener::bind((to, 0)))
        .unwrap()
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let sink = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut n = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match conn.read(&mut buf).unwrap() {
                0 => break,
                k => n += k,
            }
        }
        conn.write_all(format!("{n}\n").as_bytes()).unwrap();
    });
    let elapsed = in_netns_thread(from, move || {
        let start = Instant::now();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
        s.write_all(&vec![0x5a; bytes]).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert_eq!(answer.trim(), bytes.to_string());
        start.elapsed()
    })
    .unwrap();
    sink.join().unwrap();
    elapsed
}

#[test]
fn weft_portmap_bandwidth_chain_add_check_del() {
    let cfg = LabConfig {
        nodes: 1,
        far_node: false,
        datastore: DatastoreKind::Static,
        ready_timeout: Duration::from_secs(45),
        ..LabConfig::default()
    };
    let mut c = Cluster::start(cfg).unwrap_or_else(|e| panic!("{e}"));
    let node_ip = c.nodes[0].underlay_ip;
    let mut list = ConfList::load(&c.nodes[0].conflist_path()).unwrap();
    let types: Vec<&str> = list
        .plugins
        .iter()
        .filter_map(|p| p["type"].as_str())
        .collect();
    assert_eq!(types, ["weft", "portmap"], "what weftd writes");
    list.plugins
        .push(json!({ "type": "bandwidth", "capabilities": { "bandwidth": true } }));

    let mut caps = Map::new();
    caps.insert(
        "portMappings".into(),
        json!([{ "hostPort": HOST_PORT, "containerPort": POD_PORT, "protocol": "tcp" }]),
    );
    caps.insert(
        "bandwidth".into(),
        json!({
            "ingressRate": INGRESS_RATE, "ingressBurst": INGRESS_BURST,
            "egressRate": EGRESS_RATE, "egressBurst": EGRESS_BURST,
        }),
    );
    let pod = c
        .add_pod_with("n1", "web", &list, caps.clone())
        .unwrap_or_else(|e| panic!("ADD weft -> portmap -> bandwidth: {e}"));
    let pod_ip = pod.ipv4().unwrap();

    // bandwidth passes weft's result through: the pod's address, the host veth.
    let result = &pod.result;
    assert_eq!(
        result["ips"][0]["address"]
            .as_str()
            .unwrap()
            .split('/')
            .next(),
        Some(pod_ip.to_string().as_str())
    );
    let host_veth = result["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i.get("sandbox").is_none() && i["name"] != "weft0")
        .and_then(|i| i["name"].as_str())
        .expect("host veth in the result")
        .to_string();

    // CHECK with the final result as prevResult: weft compares it with the kernel, bandwidth
    // its qdiscs with its config. Not portmap: Debian's portmap 1.1.1 CHECK also looks for its
    // chain in ip6tables for an IPv4-only pod and fails ("could not check ipv6 dnat: chain
    // CNI-DN-... not found"); its rules are checked below by using them.
    let node_ns = c.nodes[0].ns();
    let runner = PluginRunner::new(&c.bin_dir, node_ns);
    let mut att = Attachment::for_pod(&pod.container_id, &pod.netns.path(), "default", "web");
    att.capability_args = caps;
    let mut without_portmap = list.clone();
    without_portmap.plugins.retain(|p| p["type"] != "portmap");
    conflist::check(&runner, &without_portmap, &att, result)
        .unwrap_or_else(|e| panic!("CHECK: {e}"));

    // Ingress limit: a token bucket on the host veth (traffic to the pod leaves through it).
    let qdiscs = tc_qdiscs(node_ns);
    let tbf =
        tbf_on(&qdiscs, &host_veth).unwrap_or_else(|| panic!("no tbf on {host_veth}: {qdiscs:?}"));
    assert_eq!(tbf["options"]["rate"], json!(INGRESS_RATE / 8), "{tbf}");
    // Egress limit: an ifb device the host veth's ingress is redirected to, with its own tbf.
    let ifb: Vec<String> = Netlink::in_netns(node_ns)
        .unwrap()
        .list_links()
        .unwrap()
        .into_iter()
        .filter(|l| l.kind.as_deref() == Some("ifb"))
        .map(|l| l.name)
        .collect();
    assert_eq!(ifb.len(), 1, "{ifb:?}");
    let tbf =
        tbf_on(&qdiscs, &ifb[0]).unwrap_or_else(|| panic!("no tbf on {}: {qdiscs:?}", ifb[0]));
    assert_eq!(tbf["options"]["rate"], json!(EGRESS_RATE / 8), "{tbf}");
    assert!(qdiscs
        .iter()
        .any(|q| q["dev"] == host_veth.as_str() && q["kind"] == "ingress"));

    // The limit holds: 2.5 MB into the pod at 1 MB/s takes well over a second (unshaped,
    // a veth moves it in milliseconds).
    let took = transfer(node_ns, pod.ns(), pod_ip, 2_500_000);
    assert!(
        took >= Duration::from_millis(1500),
        "2.5 MB in {took:?}: not shaped"
    );

    // The host port reaches the pod, from outside the node, without source NAT.
    let server = WhoAmIServer::start(pod.ns(), Ipv4Addr::UNSPECIFIED.into(), POD_PORT).unwrap();
    let seen = whoami(c.world.handle(), node_ip.into(), HOST_PORT)
        .unwrap_or_else(|e| panic!("world -> {node_ip}:{HOST_PORT}: {e}"));
    assert_eq!(seen, IpAddr::from(WORLD_IP));
    assert!(iptables_rules(node_ns).contains(&format!("--dport {HOST_PORT}")));
    drop(server);

    // DEL through the chain (bandwidth, portmap, weft): nothing of the pod is left.
    let ifb_name = ifb[0].clone();
    let ipam = c.nodes[0].ipam_dir();
    // As libcni does, DEL gets the capability arguments again (portmap needs portMappings to
    // know what to remove; `Cluster::remove_pod` does not keep them).
    conflist::del(&runner, &list, &att, Some(result)).unwrap_or_else(|e| panic!("DEL: {e}"));
    // DEL is idempotent: the runtime retries until it succeeds.
    conflist::del(&runner, &list, &att, Some(result)).unwrap_or_else(|e| panic!("DEL again: {e}"));
    let mut nl = Netlink::in_netns(node_ns).unwrap();
    assert!(
        nl.get_link_by_name(&host_veth).unwrap().is_none(),
        "{host_veth} left"
    );
    assert!(
        nl.get_link_by_name(&ifb_name).unwrap().is_none(),
        "{ifb_name} left"
    );
    let left: Vec<Value> = tc_qdiscs(node_ns)
        .into_iter()
        .filter(|q| q["kind"] == "tbf" || q["kind"] == "ingress")
        .collect();
    assert!(left.is_empty(), "qdiscs left: {left:?}");
    let rules = iptables_rules(node_ns);
    assert!(!rules.contains(&format!("--dport {HOST_PORT}")), "{rules}");
    assert!(!rules.contains(":CNI-DN-"), "{rules}");
    let reserved: BTreeSet<String> = walk_names(&ipam);
    assert!(
        !reserved.contains(&pod_ip.to_string()),
        "{pod_ip} still reserved"
    );
    // And the port is closed again.
    let world = c.world.handle();
    let addr = SocketAddr::new(node_ip.into(), HOST_PORT);
    let still = in_netns_thread(world, move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
    })
    .unwrap();
    assert!(!still, "{addr} still forwards");
}

fn walk_names(dir: &std::path::Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(walk_names(&e.path()));
        } else {
            out.insert(e.file_name().to_string_lossy().into_owned());
        }
    }
    out
}
