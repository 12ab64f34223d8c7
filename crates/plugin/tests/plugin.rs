//! The built `weft` binary exec'd as a runtime execs it, in network namespaces: a netns plays
//! the node, further ones the pods. Nothing touches the machine's own network namespace.

mod common;

use common::{ips_of, ScratchDir};
use serde_json::{json, Value};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use weft_lab::plugin::Call;
use weft_lab::probe::ping;
use weft_lab::{Netns, PluginOutput, PluginRunner};
use weft_netops::netlink::{Netlink, Route};
use weft_plugin::dataplane::mac_string;

/// A node netns with its own IPAM data dir, and helpers to run the plugin in it.
struct Node {
    ns: Netns,
    data_dir: ScratchDir,
    bin_dir: PathBuf,
}

impl Node {
    fn new() -> Node {
        let ns = Netns::new("wtp-node").expect("create node netns");
        let data_dir = ScratchDir::new("test", &ns.name);
        Node {
            ns,
            data_dir,
            bin_dir: common::bin_dir(),
        }
    }

    fn runner(&self) -> PluginRunner<'_> {
        PluginRunner::new(&self.bin_dir, self.ns.handle())
    }

    /// A weft config with the given ranges (list of range sets, each a list of subnets).
    fn conf(&self, version: &str, sets: &[&[&str]]) -> Value {
        let ranges: Vec<Vec<Value>> = sets
            .iter()
            .map(|set| set.iter().map(|s| json!({ "subnet": s })).collect())
            .collect();
        json!({
            "cniVersion": version,
            "name": "testnet",
            "type": "weft",
            "bridge": "weft0",
            "mtu": 1400,
            "ipam": { "type": "weft", "ranges": ranges, "dataDir": self.data_dir.path() },
        })
    }

    fn call(&self, command: &str, cid: &str, pod: Option<&Path>, conf: &Value) -> PluginOutput {
        self.call_args(command, cid, pod, "eth0", None, conf)
    }

    fn call_args(
        &self,
        command: &str,
        cid: &str,
        pod: Option<&Path>,
        ifname: &str,
        args: Option<&str>,
        conf: &Value,
    ) -> PluginOutput {
        self.runner()
            .exec(
                "weft",
                &Call {
                    command,
                    container_id: cid,
                    netns: pod,
                    ifname,
                    args,
                },
                conf.to_string().as_bytes(),
            )
            .expect("exec weft")
    }

    fn add(&self, cid: &str, pod: &Netns, conf: &Value) -> Value {
        let out = self.call("ADD", cid, Some(&pod.path()), conf);
        assert!(out.ok(), "ADD {cid} failed: {} {}", out.stdout, out.stderr);
        out.json()
    }

    fn nl(&self) -> Netlink {
        Netlink::in_netns(self.ns.handle()).unwrap()
    }

    /// Names of weft's host veths in the node.
    fn host_veths(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .nl()
            .list_links()
            .unwrap()
            .into_iter()
            .filter(|l| l.name.starts_with("weft") && l.name != "weft0")
            .map(|l| l.name)
            .collect();
        v.sort();
        v
    }

    /// Reserved addresses on disk (the IPAM store's files, excluding its bookkeeping).
    fn reservations(&self) -> Vec<String> {
        let dir = self.data_dir.join("testnet");
        let mut v: Vec<String> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<IpAddr>().is_ok() || n.contains('_') && n.contains(':'))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

#[test]
fn two_pods_reach_each_other_and_the_gateway_dual_stack() {
    let node = Node::new();
    let conf = node.conf("1.1.0", &[&["10.88.0.0/24"], &["fd00:88::/64"]]);
    let (a, b) = (Netns::new("wtp-pa").unwrap(), Netns::new("wtp-pb").unwrap());
    let ra = node.add("ctr-a", &a, &conf);
    let rb = node.add("ctr-b", &b, &conf);

    // Result shape: bridge, host veth, pod interface in the sandbox; ips point at the latter.
    assert_eq!(ra["cniVersion"], "1.1.0");
    assert_eq!(ra["interfaces"][0]["name"], "weft0");
    assert_eq!(ra["interfaces"][2]["name"], "eth0");
    assert_eq!(
        ra["interfaces"][2]["sandbox"],
        a.path().display().to_string()
    );
    assert_eq!(ra["ips"][0]["interface"], 2);
    assert_eq!(ra["ips"][0]["gateway"], "10.88.0.1");
    assert_eq!(ra["ips"][1]["gateway"], "fd00:88::1");
    let routes: Vec<&str> = ra["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["dst"].as_str().unwrap())
        .collect();
    assert_eq!(routes, ["0.0.0.0/0", "::/0"]);

    let (ipa, ipb) = (ips_of(&ra), ips_of(&rb));
    assert_eq!(ipa.len(), 2);
    assert_ne!(ipa, ipb);
    for (from, to) in [(&a, &ipb[0]), (&b, &ipa[0]), (&a, &ipb[1]), (&b, &ipa[1])] {
        assert!(ping(from.handle(), *to), "ping {to} from {}", from.name);
    }
    for gw in ["10.88.0.1", "fd00:88::1"] {
        assert!(ping(a.handle(), gw.parse().unwrap()), "ping gateway {gw}");
    }

    // Kernel state: MTU on both ends, the host end on the bridge with hairpin, up.
    let mut nl = node.nl();
    let bridge = nl.get_link_by_name("weft0").unwrap().unwrap();
    let host = nl
        .get_link_by_name(ra["interfaces"][1]["name"].as_str().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(host.master, Some(bridge.index));
    assert_eq!(host.mtu, 1400);
    assert!(host.up);
    let mut pod_nl = Netlink::in_netns(a.handle()).unwrap();
    let eth0 = pod_nl.get_link_by_name("eth0").unwrap().unwrap();
    assert_eq!(eth0.mtu, 1400);
    assert_eq!(ra["interfaces"][2]["mac"], mac_string(eth0.mac));

    for (cid, ns) in [("ctr-a", &a), ("ctr-b", &b)] {
        assert!(node.call("DEL", cid, Some(&ns.path()), &conf).ok());
    }
    assert!(node.host_veths().is_empty());
    assert!(node.reservations().is_empty(), "{:?}", node.reservations());
}

#[test]
fn check_passes_then_fails_when_a_route_is_removed() {
    let node = Node::new();
    let mut conf = node.conf("1.1.0", &[&["10.89.0.0/24"]]);
    let pod = Netns::new("wtp-chk").unwrap();
    let result = node.add("ctr-chk", &pod, &conf);
    conf["prevResult"] = result;
    let out = node.call("CHECK", "ctr-chk", Some(&pod.path()), &conf);
    assert!(out.ok(), "CHECK: {}", out.stdout);

    let mut pod_nl = Netlink::in_netns(pod.handle()).unwrap();
    let eth0 = pod_nl.get_link_by_name("eth0").unwrap().unwrap();
    pod_nl
        .del_route(&Route {
            oif: Some(eth0.index),
            ..Route::via("0.0.0.0/0".parse().unwrap(), "10.89.0.1".parse().unwrap())
        })
        .unwrap();
    let out = node.call("CHECK", "ctr-chk", Some(&pod.path()), &conf);
    assert_eq!(out.exit_code, 1);
    assert_eq!(out.error_code(), Some(105), "{}", out.stdout);
    assert!(
        out.json()["msg"].as_str().unwrap().contains("0.0.0.0/0"),
        "{}",
        out.stdout
    );

    // Without prevResult CHECK refuses.
    conf.as_object_mut().unwrap().remove("prevResult");
    let out = node.call("CHECK", "ctr-chk", Some(&pod.path()), &conf);
    assert_eq!(out.error_code(), Some(7), "{}", out.stdout);
    assert!(node.call("DEL", "ctr-chk", Some(&pod.path()), &conf).ok());
}

#[test]
fn del_twice_and_del_without_netns_succeed() {
    let node = Node::new();
    let conf = node.conf("1.0.0", &[&["10.90.0.0/24"]]);
    let pod = Netns::new("wtp-del").unwrap();
    node.add("ctr-del", &pod, &conf);
    assert_eq!(node.host_veths().len(), 1);
    assert_eq!(node.reservations().len(), 1);
    for _ in 0..2 {
        let out = node.call("DEL", "ctr-del", Some(&pod.path()), &conf);
        assert!(out.ok(), "{}", out.stdout);
    }
    assert!(node.host_veths().is_empty());
    assert!(node.reservations().is_empty());
    // DEL with no CNI_NETNS at all, for an attachment that never existed.
    assert!(node.call("DEL", "never-was", None, &conf).ok());
}

#[test]
fn del_after_the_pod_netns_is_gone_leaves_nothing() {
    let node = Node::new();
    let conf = node.conf("1.1.0", &[&["10.91.0.0/24"]]);
    let pod = Netns::new("wtp-gone").unwrap();
    let path = pod.path();
    node.add("ctr-gone", &pod, &conf);
    drop(pod); // the runtime deleted the sandbox first
    let out = node.call("DEL", "ctr-gone", Some(&path), &conf);
    assert!(out.ok(), "{}", out.stdout);
    assert!(node.host_veths().is_empty());
    assert!(node.reservations().is_empty());
}

#[test]
fn duplicate_add_is_an_error_and_keeps_the_first() {
    let node = Node::new();
    let conf = node.conf("1.1.0", &[&["10.92.0.0/24"]]);
    let pod = Netns::new("wtp-dup").unwrap();
    let first = node.add("ctr-dup", &pod, &conf);
    let out = node.call("ADD", "ctr-dup", Some(&pod.path()), &conf);
    assert_eq!(out.exit_code, 1);
    assert_eq!(out.error_code(), Some(100), "{}", out.stdout);
    assert_eq!(node.reservations().len(), 1);
    assert_eq!(node.host_veths().len(), 1);
    assert!(
        ping(pod.handle(), "10.92.0.1".parse().unwrap()),
        "first attachment still works"
    );
    let _ = first;
    assert!(node.call("DEL", "ctr-dup", Some(&pod.path()), &conf).ok());
}

#[test]
fn exhausted_range_errors_and_leaks_nothing() {
    let node = Node::new();
    // A /29 has 6 usable addresses, one of them the gateway: 5 pods.
    let conf = node.conf("1.1.0", &[&["10.93.0.0/29"]]);
    let pods: Vec<Netns> = (0..6).map(|_| Netns::new("wtp-exh").unwrap()).collect();
    for (i, pod) in pods.iter().take(5).enumerate() {
        node.add(&format!("ctr-{i}"), pod, &conf);
    }
    let out = node.call("ADD", "ctr-5", Some(&pods[5].path()), &conf);
    assert_eq!(out.error_code(), Some(101), "{}", out.stdout);
    assert!(
        out.json()["msg"].as_str().unwrap().contains("10.93.0.0/29"),
        "{}",
        out.stdout
    );
    assert_eq!(node.reservations().len(), 5);
    assert_eq!(node.host_veths().len(), 5);
    let mut pod_nl = Netlink::in_netns(pods[5].handle()).unwrap();
    assert!(
        pod_nl.get_link_by_name("eth0").unwrap().is_none(),
        "no half-made interface"
    );
    for (i, pod) in pods.iter().enumerate() {
        assert!(node
            .call("DEL", &format!("ctr-{i}"), Some(&pod.path()), &conf)
            .ok());
    }
    assert!(node.reservations().is_empty());
}

#[test]
fn thirty_two_parallel_adds_get_distinct_addresses() {
    let node = Node::new();
    let conf = node.conf("1.1.0", &[&["10.94.0.0/24"]]);
    let pods: Vec<Netns> = (0..32).map(|_| Netns::new("wtp-par").unwrap()).collect();
    let results: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| {
                let (node, conf) = (&node, &conf);
                s.spawn(move || node.add(&format!("par-{i}"), pod, conf))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ips: Vec<IpAddr> = results.iter().flat_map(ips_of).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 32);
    assert_eq!(node.host_veths().len(), 32);
    assert!(ping(pods[0].handle(), ips_of(&results[31])[0]));
    for (i, pod) in pods.iter().enumerate() {
        assert!(node
            .call("DEL", &format!("par-{i}"), Some(&pod.path()), &conf)
            .ok());
    }
    assert!(node.reservations().is_empty());
}

#[test]
fn gc_releases_exactly_what_is_not_valid() {
    let node = Node::new();
    let mut conf = node.conf("1.1.0", &[&["10.95.0.0/24"]]);
    let pods: Vec<Netns> = (0..4).map(|_| Netns::new("wtp-gc").unwrap()).collect();
    let results: Vec<Value> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| node.add(&format!("gc-{i}"), p, &conf))
        .collect();
    conf["cni.dev/valid-attachments"] = json!([
        {"containerID": "gc-0", "ifname": "eth0"},
        {"containerID": "gc-2", "ifname": "eth0"},
    ]);
    let out = node.call_args("GC", "", None, "", None, &conf);
    assert!(out.ok(), "GC: {}", out.stdout);
    assert_eq!(node.reservations().len(), 2);
    assert_eq!(node.host_veths().len(), 2);
    assert!(
        ping(pods[0].handle(), ips_of(&results[2])[0]),
        "valid pods untouched"
    );
    let mut pod_nl = Netlink::in_netns(pods[1].handle()).unwrap();
    assert!(
        pod_nl.get_link_by_name("eth0").unwrap().is_none(),
        "gc-1's interface is gone"
    );
    // GC needs 1.1.0.
    conf["cniVersion"] = json!("1.0.0");
    assert_eq!(
        node.call_args("GC", "", None, "", None, &conf).error_code(),
        Some(1)
    );
}

#[test]
fn every_supported_version_round_trips() {
    let node = Node::new();
    for (i, version) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
        .iter()
        .enumerate()
    {
        let conf = node.conf(version, &[&["10.96.0.0/24"]]);
        let pod = Netns::new("wtp-ver").unwrap();
        let cid = format!("ver-{i}");
        let r = node.add(&cid, &pod, &conf);
        assert_eq!(r["cniVersion"], *version);
        let has_version = r["ips"][0].get("version").is_some();
        assert_eq!(has_version, version.starts_with('0'), "{version}: {r}");
        assert_eq!(
            r["interfaces"][1].get("mtu").is_some(),
            *version == "1.1.0",
            "{version}: {r}"
        );
        if *version != "0.3.0" && *version != "0.3.1" {
            let mut chk = conf.clone();
            chk["prevResult"] = r.clone();
            assert!(
                node.call("CHECK", &cid, Some(&pod.path()), &chk).ok(),
                "CHECK {version}"
            );
        }
        let out = node.call("DEL", &cid, Some(&pod.path()), &conf);
        assert!(out.ok(), "DEL {version}: {}", out.stdout);
        assert!(out.stdout.trim().is_empty());
    }
    let out = node.call_args(
        "VERSION",
        "",
        None,
        "",
        None,
        &json!({"cniVersion": "0.4.0"}),
    );
    assert_eq!(out.json()["cniVersion"], "0.4.0");
    assert_eq!(
        out.json()["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
}

#[test]
fn status_reports_ipam_usability() {
    let node = Node::new();
    let conf = node.conf("1.1.0", &[&["10.97.0.0/24"]]);
    let out = node.call_args("STATUS", "", None, "", None, &conf);
    assert!(out.ok(), "{}", out.stdout);
    // A data dir that is a regular file cannot hold the store.
    let blocker = std::env::temp_dir().join(format!("weft-status-blocker-{}", node.ns.name));
    std::fs::write(&blocker, b"x").unwrap();
    let mut bad = conf.clone();
    bad["ipam"]["dataDir"] = json!(blocker);
    let out = node.call_args("STATUS", "", None, "", None, &bad);
    std::fs::remove_file(&blocker).unwrap();
    assert_eq!(out.error_code(), Some(50), "{}", out.stdout);
}

#[test]
fn delegated_ipam_host_local() {
    let node = Node::new();
    let dir = node.data_dir.join("host-local");
    let conf = json!({
        "cniVersion": "1.0.0", "name": "testnet", "type": "weft", "mtu": 1400,
        "ipam": { "type": "host-local", "ranges": [[{"subnet": "10.98.0.0/24"}]], "dataDir": dir },
    });
    let (a, b) = (Netns::new("wtp-hl").unwrap(), Netns::new("wtp-hl").unwrap());
    let ra = node.add("hl-a", &a, &conf);
    let rb = node.add("hl-b", &b, &conf);
    assert!(ping(a.handle(), ips_of(&rb)[0]));
    let _ = ra;
    for (cid, ns) in [("hl-a", &a), ("hl-b", &b)] {
        assert!(node.call("DEL", cid, Some(&ns.path()), &conf).ok());
    }
    let left: Vec<_> = std::fs::read_dir(dir.join("testnet"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("10."))
        .collect();
    assert!(left.is_empty(), "host-local kept {left:?}");
}

/// ipMasq: pod traffic leaving its subnet is masqueraded behind the node; the rule goes away
/// on DEL even when the pod's netns is already gone.
#[test]
fn ip_masq_masquerades_and_del_without_netns_removes_it() {
    use weft_lab::probe::{in_netns_thread, whoami, WhoAmIServer};
    use weft_netops::VethSpec;
    let node = Node::new();
    let ext = Netns::new("wtp-ext").unwrap();
    // node --veth-- ext, 198.18.0.0/24 (benchmarking range; lives only in these netns).
    let mut nl = node.nl();
    let mut spec = VethSpec::new("toext", "eth0");
    spec.peer_netns = Some(ext.handle());
    nl.create_veth(&spec).unwrap();
    let l = nl.get_link_by_name("toext").unwrap().unwrap();
    nl.add_address(l.index, "198.18.0.1/24".parse().unwrap(), true)
        .unwrap();
    nl.set_link_up(l.index).unwrap();
    let mut ext_nl = Netlink::in_netns(ext.handle()).unwrap();
    let e = ext_nl.get_link_by_name("eth0").unwrap().unwrap();
    ext_nl
        .add_address(e.index, "198.18.0.2/24".parse().unwrap(), true)
        .unwrap();
    ext_nl.set_link_up(e.index).unwrap();

    let mut conf = node.conf("1.1.0", &[&["10.86.0.0/24"]]);
    conf["ipMasq"] = json!(true);
    let network = format!("testnet{}", std::process::id());
    conf["name"] = json!(network);
    let pod = Netns::new("wtp-masq").unwrap();
    let r = node.add("ctr-masq", &pod, &conf);
    let pod_ip = ips_of(&r)[0];
    let net2 = network.clone();
    let listed = in_netns_thread(node.ns.handle(), move || {
        weft_firewall::pod_masq::list(&net2)
    })
    .unwrap()
    .unwrap();
    assert_eq!(listed, vec![pod_ip]);

    let server = WhoAmIServer::start(ext.handle(), "198.18.0.2".parse().unwrap(), 0).unwrap();
    let seen = whoami(pod.handle(), "198.18.0.2".parse().unwrap(), server.port).unwrap();
    assert_eq!(
        seen,
        "198.18.0.1".parse::<IpAddr>().unwrap(),
        "masqueraded behind the node"
    );

    let path = pod.path();
    drop(pod);
    let out = node.call("DEL", "ctr-masq", Some(&path), &conf);
    assert!(out.ok(), "{}", out.stdout);
    let net2 = network.clone();
    let listed = in_netns_thread(node.ns.handle(), move || {
        weft_firewall::pod_masq::list(&net2)
    })
    .unwrap()
    .unwrap();
    assert!(listed.is_empty(), "{listed:?}");
}

/// Regression (issue 10): the bridge had no MAC of its own, so it took the lowest MAC among its
/// ports; deleting that pod changed the gateway's MAC under every other pod's ARP cache and cut
/// them off their gateway for 35-40 s. The survivors must lose nothing.
#[test]
fn deleting_a_pod_does_not_change_the_gateway_mac_of_the_others() {
    let node = Node::new();
    let conf = node.conf("1.1.0", &[&["10.89.0.0/24"]]);
    let gw: IpAddr = "10.89.0.1".parse().unwrap();
    let pods: Vec<Netns> = (0..4).map(|_| Netns::new("wtp-mac").unwrap()).collect();
    let mut host_macs = Vec::new();
    for (i, pod) in pods.iter().enumerate() {
        let r = node.add(&format!("ctr-mac-{i}"), pod, &conf);
        // The result reports the bridge's real MAC, never 00:00:00:00:00:00.
        let bridge = node.nl().get_link_by_name("weft0").unwrap().unwrap();
        assert_eq!(r["interfaces"][0]["mac"], mac_string(bridge.mac));
        assert_ne!(r["interfaces"][0]["mac"], "00:00:00:00:00:00");
        let host = node
            .nl()
            .get_link_by_name(r["interfaces"][1]["name"].as_str().unwrap())
            .unwrap()
            .unwrap();
        host_macs.push(host.mac.unwrap());
        // Every pod learns the gateway's MAC now, as a running pod would have.
        assert!(ping(pod.handle(), gw), "pod {i} cannot reach its gateway");
    }
    let before = node.nl().get_link_by_name("weft0").unwrap().unwrap().mac;

    let lowest = (0..4).min_by_key(|&i| host_macs[i]).unwrap();
    let out = node.call(
        "DEL",
        &format!("ctr-mac-{lowest}"),
        Some(&pods[lowest].path()),
        &conf,
    );
    assert!(out.ok(), "DEL failed: {}", out.stdout);
    let after = node.nl().get_link_by_name("weft0").unwrap().unwrap().mac;
    assert_eq!(before, after, "the bridge's MAC changed when a pod left");

    for (i, pod) in pods.iter().enumerate().filter(|(i, _)| *i != lowest) {
        let received = weft_lab::probe::ping_received(pod.handle(), gw, 5, 0.2);
        assert_eq!(received, 5, "pod {i} lost pings to its gateway after a DEL");
    }
    for (i, pod) in pods.iter().enumerate().filter(|(i, _)| *i != lowest) {
        assert!(node
            .call("DEL", &format!("ctr-mac-{i}"), Some(&pod.path()), &conf)
            .ok());
    }
}

/// A bridge that exists without weft's MAC (made by an older weft, or changed by hand) is
/// given it at the next ADD, and keeps it.
#[test]
fn an_existing_bridge_without_its_own_mac_is_repaired() {
    let node = Node::new();
    let conf = node.conf("1.1.0", &[&["10.90.0.0/24"]]);
    let mut nl = node.nl();
    nl.create_bridge("weft0", None, None).unwrap();
    let pod = Netns::new("wtp-mac").unwrap();
    let r = node.add("ctr-repair", &pod, &conf);
    let bridge = nl.get_link_by_name("weft0").unwrap().unwrap();
    assert_eq!(
        bridge.mac,
        Some(weft_netops::bridge::stable_mac("weft0")),
        "bridge MAC not repaired"
    );
    assert_eq!(r["interfaces"][0]["mac"], mac_string(bridge.mac));
    assert!(node
        .call("DEL", "ctr-repair", Some(&pod.path()), &conf)
        .ok());
}

/// NetworkPolicy's first-packet handshake: with `policySocket`, ADD tells weftd the pod's
/// namespace, name and addresses and returns only once weftd answered (here a stand-in
/// listener that answers after 300 ms), so the pod is in weftd's table before it runs. With
/// nobody listening, ADD still succeeds (the pod stays closed until weftd knows it).
#[test]
fn add_announces_the_pod_to_weftd_and_waits_for_its_answer() {
    use std::io::{BufRead, BufReader, Write};
    let node = Node::new();
    let socket = node.data_dir.join("policy.sock");
    std::fs::create_dir_all(node.data_dir.path()).unwrap();
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let seen = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(&conn).read_line(&mut line).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        (&conn).write_all(b"ok\n").unwrap();
        serde_json::from_str::<Value>(&line).unwrap()
    });
    let mut conf = node.conf("1.1.0", &[&["10.91.0.0/24"]]);
    conf["policySocket"] = json!(socket);
    let pod = Netns::new("wtp-pol").unwrap();
    let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=db-0";
    let t = std::time::Instant::now();
    let out = node.call_args(
        "ADD",
        "ctr-pol",
        Some(&pod.path()),
        "eth0",
        Some(args),
        &conf,
    );
    let took = t.elapsed();
    assert!(out.ok(), "ADD failed: {} {}", out.stdout, out.stderr);
    let req = seen.join().unwrap();
    assert_eq!(req["namespace"], "shop");
    assert_eq!(req["name"], "db-0");
    assert_eq!(req["ips"], json!(ips_of(&out.json())));
    assert!(
        took >= std::time::Duration::from_millis(300),
        "ADD returned before weftd answered ({took:?})"
    );
    assert!(node.call("DEL", "ctr-pol", Some(&pod.path()), &conf).ok());

    // weftd not there: ADD succeeds anyway, and says why on stderr.
    std::fs::remove_file(&socket).unwrap();
    let out = node.call_args(
        "ADD",
        "ctr-pol2",
        Some(&pod.path()),
        "eth0",
        Some(args),
        &conf,
    );
    assert!(out.ok(), "ADD failed without weftd: {}", out.stdout);
    assert!(out.stderr.contains("policy handshake"), "{}", out.stderr);
    assert!(node.call("DEL", "ctr-pol2", Some(&pod.path()), &conf).ok());
}
