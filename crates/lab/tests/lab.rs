//! The lab without the agent: topology, teardown, pods through the conflist executor, the
//! matrix, and the binary's Ctrl-C / --keep / down. Everything lives in netns named `wl<pid>-*`.
//!
//! The pod tests need the `weft` plugin binary next to the test binary's dir (target/debug):
//! `cargo build -p weft-plugin` (a workspace-wide `cargo test` builds it).

use serde_json::{json, Map, Value};
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use weft_lab::cluster::{ROUTER_A, ROUTER_B, WORLD_IP};
use weft_lab::matrix::{self, Kind};
use weft_lab::plugin::PluginRunner;
use weft_lab::probe::{ping, whoami, WhoAmIServer};
use weft_lab::{
    conflist, registry, Attachment, Cluster, ConfList, DatastoreKind, LabConfig, Netns,
};
use weft_netops::netlink::Netlink;

fn topo(nodes: usize, far_node: bool) -> LabConfig {
    LabConfig {
        nodes,
        far_node,
        datastore: DatastoreKind::None,
        ..LabConfig::default()
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn assert_gone(id: &str, dir: &Path) {
    assert_eq!(
        registry::netns_of(id),
        Vec::<String>::new(),
        "netns of {id} left behind"
    );
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn topology_connects_nodes_router_far_node_and_world_and_tears_down() {
    let c = Cluster::build(topo(2, true)).unwrap();
    let (id, dir) = (c.id.clone(), c.dir.clone());
    let mut names = registry::netns_of(&id);
    names.sort();
    let mut want: Vec<String> = ["ul", "ul2", "rt", "world", "n1", "n2", "n3"]
        .iter()
        .map(|s| format!("{id}-{s}"))
        .collect();
    want.sort();
    assert_eq!(names, want);

    let n1 = c.node("n1").unwrap();
    let far = c.node("n3").unwrap();
    assert_eq!(n1.underlay_ip, Ipv4Addr::new(192, 168, 77, 11));
    assert_eq!(
        c.node("n2").unwrap().underlay_ip,
        Ipv4Addr::new(192, 168, 77, 12)
    );
    assert_eq!(far.underlay_ip, Ipv4Addr::new(192, 168, 78, 11));

    // Underlay MTU and the default route, read back from the kernel.
    let mut nl = Netlink::in_netns(n1.ns()).unwrap();
    let eth0 = nl.get_link_by_name("eth0").unwrap().unwrap();
    assert_eq!(eth0.mtu, 1500);
    assert_eq!(
        nl.route_get(WORLD_IP.into()).unwrap().gateway,
        Some(ROUTER_A.into())
    );

    for (from, to) in [
        (n1.ns(), ip("192.168.77.12")),   // same segment
        (n1.ns(), ROUTER_A.into()),       // router
        (n1.ns(), ip("192.168.78.11")),   // far node, through the router
        (n1.ns(), WORLD_IP.into()),       // world
        (far.ns(), ip("192.168.77.250")), // etcd's address, from the far segment
        (far.ns(), ROUTER_B.into()),
        (c.world.handle(), ip("192.168.77.12")),
    ] {
        assert!(ping(from, to), "{} cannot ping {to}", from.path().display());
    }

    // No pod routes on the router, none in the world: un-masqueraded pod traffic is lost.
    for ns in [c.router.handle(), c.world.handle()] {
        let mut nl = Netlink::in_netns(ns).unwrap();
        assert!(
            nl.route_get(ip("10.244.1.2")).is_err(),
            "{} routes pod IPs",
            ns.path().display()
        );
    }

    drop(c);
    assert_gone(&id, &dir);
}

/// weft + portmap, the shape weftd writes, with a fixed range.
fn write_conflist(node: &weft_lab::Node, subnet: &str) {
    let list = json!({
        "cniVersion": "1.0.0",
        "name": "weft",
        "plugins": [
            {
                "type": "weft",
                "bridge": "weft0",
                "ipam": { "type": "weft", "ranges": [[{ "subnet": subnet }]], "dataDir": node.ipam_dir() },
            },
            { "type": "portmap", "capabilities": { "portMappings": true } },
        ],
    });
    std::fs::write(node.conflist_path(), list.to_string()).unwrap();
}

fn reservations(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("weft"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<IpAddr>().is_ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The source NAT weftd will install, written by hand (nft inside the node netns).
fn masquerade(node: &weft_lab::Node, pods: &str) {
    let rules = format!(
        "table ip labtest {{\n chain post {{\n  type nat hook postrouting priority srcnat;\n  \
         ip saddr {pods} ip daddr != 10.244.0.0/16 masquerade\n }}\n}}\n"
    );
    let mut child = weft_lab::ns::enter_command(node.ns(), "nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(rules.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "nft failed");
}

#[test]
fn pods_through_the_conflist_reach_their_node_and_each_other() {
    let mut c = Cluster::build(topo(1, false)).unwrap();
    let (id, dir) = (c.id.clone(), c.dir.clone());
    write_conflist(&c.nodes[0], "10.244.1.0/24");
    let a = c.add_pod("n1", "a").unwrap();
    let b = c.add_pod("n1", "b").unwrap();
    let a_ip = a.ipv4().unwrap();
    assert!(ip("10.244.1.0/24".split('/').next().unwrap()) != a_ip);
    assert!(a_ip.to_string().starts_with("10.244.1."), "{a_ip}");
    assert_eq!(a.netns.name, format!("{id}-p-a"));
    // The final result is portmap's pass-through of weft's result.
    assert_eq!(a.result["cniVersion"], "1.0.0");
    assert_eq!(a.result["interfaces"][2]["name"], "eth0");

    let node = &c.nodes[0];
    assert!(ping(node.ns(), a_ip), "node cannot ping pod {a_ip}");
    assert!(
        ping(a.ns(), node.underlay_ip.into()),
        "pod cannot ping its node"
    );
    assert!(ping(a.ns(), b.ipv4().unwrap()), "pod a cannot ping pod b");
    assert_eq!(reservations(&node.ipam_dir()).len(), 2);

    // Without masquerade the world cannot answer; with it, it sees the node's address.
    let server = WhoAmIServer::start(c.world.handle(), Ipv4Addr::UNSPECIFIED.into(), 0).unwrap();
    assert!(
        !ping(a.ns(), WORLD_IP.into()),
        "world answered an un-masqueraded pod"
    );
    masquerade(node, "10.244.1.0/24");
    assert!(
        ping(a.ns(), WORLD_IP.into()),
        "world did not answer a masqueraded pod"
    );
    let seen = whoami(a.ns(), WORLD_IP.into(), server.port).unwrap();
    assert_eq!(seen, IpAddr::from(node.underlay_ip));
    drop(server);

    // The matrix on a one-node cluster: everything as expected now.
    let rows = c.connectivity_matrix().unwrap();
    let kinds = |k: Kind| rows.iter().filter(|r| r.kind == k).count();
    assert_eq!(kinds(Kind::PodPodSameNode), 2);
    assert_eq!(kinds(Kind::PodWorld), 2);
    assert_eq!(kinds(Kind::NodePod), 1);
    assert_eq!(kinds(Kind::PodNode), 1);
    assert_eq!(
        matrix::failures(&rows),
        Vec::<String>::new(),
        "\n{}",
        matrix::table(&rows)
    );
    let ab = rows.iter().find(|r| r.from == "a" && r.to == "b").unwrap();
    assert_eq!(ab.seen_source, Some(a_ip));

    // remove_pod: DEL through the list releases the address; the netns goes with the last ref.
    let a_ns = a.netns.name.clone();
    drop(a);
    c.remove_pod("a").unwrap();
    assert!(c.pod("a").is_none());
    assert_eq!(reservations(&c.nodes[0].ipam_dir()).len(), 1);
    assert!(!weft_netops::netns::list_named().contains(&a_ns));
    assert!(c.remove_pod("a").is_err());

    drop(b);
    drop(c);
    assert_gone(&id, &dir);
}

#[test]
fn add_pod_failure_is_clean_and_names_the_plugin() {
    let mut c = Cluster::build(topo(1, false)).unwrap();
    // No conflist yet: a clear error, nothing created.
    let e = c.add_pod("n1", "x").unwrap_err().to_string();
    assert!(e.contains("10-weft.conflist"), "{e}");
    // A bad range: the weft plugin fails; the pod netns is removed again.
    let node = &c.nodes[0];
    let list = ConfList::from_value(
        &json!({"cniVersion": "1.0.0", "name": "weft", "plugins": [
            {"type": "weft", "ipam": {"type": "weft", "ranges": [[{"subnet": "10.244.1.0/33"}]], "dataDir": node.ipam_dir()}}
        ]}),
        None,
    )
    .unwrap();
    let e = c
        .add_pod_with("n1", "x", &list, Map::new())
        .unwrap_err()
        .to_string();
    assert!(e.contains("plugin weft ADD failed"), "{e}");
    assert!(!weft_netops::netns::list_named().contains(&format!("{}-p-x", c.id)));
    assert!(c.pods().is_empty());
    assert!(c.add_pod("n9", "y").is_err());
    assert!(c.add_pod("n1", "bad/name").is_err());
}

/// Fake plugins (shell scripts) that log what they get: the executor's order and injection.
#[test]
fn conflist_executor_order_prev_result_and_capabilities() {
    let node = Netns::new("wlt-fake").unwrap();
    let tmp = std::env::temp_dir().join(format!("wlt-fake-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    for name in ["fake-a", "fake-b", "fake-fail"] {
        let script = format!(
            "#!/bin/sh\ncat > {dir}/$CNI_COMMAND-{name}.json\necho {name} $CNI_COMMAND $CNI_IFNAME \"$CNI_ARGS\" >> {dir}/order\n\
             if [ {name} = fake-fail ] && [ $CNI_COMMAND = DEL ]; then echo '{{\"code\":11,\"msg\":\"boom\"}}'; exit 1; fi\n\
             echo '{{\"cniVersion\":\"1.0.0\",\"ips\":[{{\"address\":\"10.9.0.2/24\"}}],\"from\":\"{name}\"}}'\n",
            dir = tmp.display()
        );
        let p = tmp.join(name);
        std::fs::write(&p, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let list = ConfList::from_value(
        &json!({"cniVersion": "1.0.0", "name": "lst", "plugins": [
            {"type": "fake-a", "capabilities": {"ips": true}},
            {"type": "fake-fail", "x": 1},
            {"type": "fake-b", "capabilities": {"portMappings": true}},
        ]}),
        None,
    )
    .unwrap();
    let runner = PluginRunner::new(&tmp, node.handle());
    let mut att = Attachment::for_pod("cid1", Path::new("/run/netns/none"), "ns1", "pod1");
    att.capability_args.insert(
        "portMappings".into(),
        json!([{"hostPort": 80, "containerPort": 8080}]),
    );

    let result = conflist::add(&runner, &list, &att).unwrap();
    assert_eq!(result["from"], "fake-b");
    let read = |f: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(tmp.join(f)).unwrap()).unwrap()
    };
    let a = read("ADD-fake-a.json");
    assert_eq!(
        (a["name"].as_str(), a["cniVersion"].as_str()),
        (Some("lst"), Some("1.0.0"))
    );
    assert!(a.get("prevResult").is_none() && a.get("runtimeConfig").is_none());
    let f = read("ADD-fake-fail.json");
    assert_eq!(f["prevResult"]["from"], "fake-a");
    assert_eq!(f["x"], 1);
    let b = read("ADD-fake-b.json");
    assert_eq!(b["prevResult"]["from"], "fake-fail");
    assert_eq!(b["runtimeConfig"]["portMappings"][0]["hostPort"], 80);

    // DEL: reverse order, the ADD result as prevResult to each, all called despite a failure.
    let e = conflist::del(&runner, &list, &att, Some(&result)).unwrap_err();
    assert_eq!(e.code(), Some(11));
    assert!(e.to_string().contains("boom"), "{e}");
    let order = std::fs::read_to_string(tmp.join("order")).unwrap();
    // "fake-b DEL eth0 ..." -> "b-".
    let lines: Vec<String> = order
        .lines()
        .map(|l| {
            let mut w = l.split(' ');
            let plugin = w.next().unwrap().trim_start_matches("fake-");
            let sign = if w.next() == Some("ADD") { "+" } else { "-" };
            format!("{}{sign}", &plugin[..1])
        })
        .collect();
    assert_eq!(lines, ["a+", "f+", "b+", "b-", "f-", "a-"]);
    assert!(
        order.contains("K8S_POD_NAME=pod1") && order.contains("IgnoreUnknown=1"),
        "{order}"
    );
    for p in ["DEL-fake-a.json", "DEL-fake-b.json"] {
        assert_eq!(read(p)["prevResult"]["from"], "fake-b", "{p}");
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

fn lab_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weft-lab"))
}

/// Starts `weft-lab up` and waits for its "is up" line; returns the child and the lab id.
fn spawn_up(extra: &[&str]) -> (std::process::Child, String) {
    let mut child = lab_bin()
        .args(["up", "--datastore", "none", "--nodes", "2"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let id = format!("wl{}", child.id());
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if line.contains("is up") {
            assert!(line.contains(&id), "{line}");
            return (child, id);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("weft-lab up did not come up");
}

#[test]
fn ctrl_c_and_sigterm_tear_the_binary_lab_down() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let (mut child, id) = spawn_up(&[]);
        assert_eq!(registry::netns_of(&id).len(), 7, "lab {id} incomplete");
        unsafe { libc::kill(child.id() as i32, sig) };
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(128 + sig));
        assert_gone(&id, &registry::lab_dir(&id));
    }
}

#[test]
fn sigterm_mid_build_leaves_nothing() {
    for delay_ms in [5, 30, 60] {
        let mut child = lab_bin()
            .args(["up", "--datastore", "none", "--nodes", "6"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let id = format!("wl{}", child.id());
        std::thread::sleep(Duration::from_millis(delay_ms));
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().unwrap();
        assert_gone(&id, &registry::lab_dir(&id));
    }
}

#[test]
fn keep_then_down() {
    let out = lab_bin()
        .args([
            "up",
            "--datastore",
            "none",
            "--nodes",
            "1",
            "--no-far-node",
            "--keep",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let id = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("lab ")
                .and_then(|r| r.split_whitespace().next())
        })
        .unwrap()
        .to_string();
    let names = registry::netns_of(&id);
    assert_eq!(names.len(), 5, "{text}");
    assert!(registry::list_labs().contains(&id));
    // The kept lab still works.
    let n1 = weft_netops::netns::NetNs::open(format!("/run/netns/{id}-n1")).unwrap();
    assert!(ping(&n1, WORLD_IP.into()));
    drop(n1);

    let st = lab_bin().args(["down", "--id", &id]).status().unwrap();
    assert!(st.success());
    assert_gone(&id, &registry::lab_dir(&id));
    // Refuses things that are not lab ids.
    assert!(!lab_bin()
        .args(["down", "--id", "x"])
        .status()
        .unwrap()
        .success());
}
