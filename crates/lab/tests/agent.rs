//! End-to-end tests of weftd, the node agent: every backend with every firewall driver, a
//! kill -9 restart under traffic, nodes leaving (also while a peer's agent is down), repair of
//! hand-deleted kernel state, dual-stack pods.
//!
//! Each test builds its own lab (etcd, one weftd per node) and removes it when it ends, also on
//! failure (the [`Cluster`] is dropped while the panic unwinds). Kernel state is read back from
//! the node netns through netlink: weft's routes carry protocol 87, its neighbours and FDB
//! entries are the permanent ones on the VTEP `weft.1`. Needs `weft` and `weftd` next to the
//! test binary (`cargo build -p weft-plugin -p weft-agent`) and etcd, etcdctl, nft, iptables,
//! ping on the machine.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use weft_lab::cluster::{Segment, AGENT_LISTEN, WORLD_IP};
use weft_lab::matrix::{self, Kind};
use weft_lab::probe::{self, WhoAmIServer};
use weft_lab::{registry, Cluster, DatastoreKind, LabConfig, Node, Pod};
use weft_netops::netlink::NUD_PERMANENT;
use weft_netops::{FdbEntry, Neighbour, Netlink, Route};

/// weft's route protocol (`ip route show proto 87`).
const RTPROT_WEFT: u8 = 87;
const VTEP: &str = "weft.1";

fn config(backend: &str, firewall: &str, nodes: usize, far_node: bool) -> LabConfig {
    LabConfig {
        nodes,
        far_node,
        datastore: DatastoreKind::Etcd,
        backend: backend.into(),
        firewall: firewall.into(),
        ready_timeout: Duration::from_secs(45),
        ..LabConfig::default()
    }
}

fn start(cfg: LabConfig) -> Cluster {
    Cluster::start(cfg).unwrap_or_else(|e| panic!("lab start: {e}"))
}

fn add_pod(c: &mut Cluster, node: &str, name: &str) -> Pod {
    c.add_pod(node, name)
        .unwrap_or_else(|e| panic!("add pod {name} on {node}: {e}"))
}

/// Drops the lab and checks nothing of it is left.
fn tear_down(c: Cluster) {
    let (id, dir) = (c.id.clone(), c.dir.clone());
    drop(c);
    assert!(
        registry::netns_of(&id).is_empty(),
        "netns of {id} left behind"
    );
    assert!(!dir.exists(), "{} left behind", dir.display());
}

/// Polls `f` every 20 ms until it is true; the time it took, or None after `timeout`.
fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if f() {
            return Some(start.elapsed());
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn node<'a>(c: &'a Cluster, name: &str) -> &'a Node {
    c.node(name)
        .unwrap_or_else(|| panic!("no node {name} in lab {}", c.id))
}

fn agent_status(c: &Cluster, name: &str) -> serde_json::Value {
    let (code, body) = probe::http_get(
        node(c, name).ns(),
        AGENT_LISTEN,
        "/status",
        Duration::from_secs(2),
    )
    .unwrap_or_else(|e| panic!("/status of {name}: {e}"));
    assert_eq!(code, 200, "/status of {name}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status of {name}: {e}: {body}"))
}

fn weftd_log(c: &Cluster, name: &str) -> String {
    weft_lab::cluster::log_tail(&node(c, name).log_path(), 30)
}

// ------------------------------------------------------------------ kernel state

/// What weft owns in a node's kernel.
#[derive(Debug, Default)]
struct Kernel {
    routes: Vec<Route>,
    neighbours: Vec<Neighbour>,
    fdb: Vec<FdbEntry>,
    vtep: Option<weft_netops::Link>,
}

fn kernel(n: &Node) -> Kernel {
    let mut nl = Netlink::in_netns(n.ns()).unwrap_or_else(|e| panic!("netlink in {}: {e}", n.name));
    let routes = nl
        .list_routes(None, Some(254))
        .unwrap_or_else(|e| panic!("routes of {}: {e}", n.name))
        .into_iter()
        .filter(|r| r.protocol == RTPROT_WEFT)
        .collect();
    let vtep = nl
        .get_link_by_name(VTEP)
        .unwrap_or_else(|e| panic!("link {VTEP} of {}: {e}", n.name));
    let (neighbours, fdb) = match &vtep {
        Some(l) => (
            nl.list_neighbours(Some(l.index))
                .unwrap_or_else(|e| panic!("neighbours of {}: {e}", n.name))
                .into_iter()
                .filter(|x| x.state & NUD_PERMANENT != 0)
                .collect(),
            nl.list_fdb(l.index)
                .unwrap_or_else(|e| panic!("fdb of {}: {e}", n.name))
                .into_iter()
                .filter(|f| f.dst.is_some() && f.mac != [0; 6])
                .collect(),
        ),
        None => (Vec::new(), Vec::new()),
    };
    Kernel {
        routes,
        neighbours,
        fdb,
        vtep,
    }
}

/// A node as its peers know it (its etcd record).
#[derive(Debug, Clone)]
struct PeerInfo {
    name: String,
    underlay_ip: IpAddr,
    pod_cidrs: Vec<IpNet>,
    vtep_mac: Option<[u8; 6]>,
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let v: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).ok())
        .collect::<Option<_>>()?;
    v.try_into().ok()
}

fn peer_info(c: &Cluster, name: &str) -> PeerInfo {
    let subnets = c
        .etcd_subnets()
        .unwrap_or_else(|e| panic!("etcd subnets: {e}"));
    let (_, v) = subnets
        .iter()
        .find(|(_, v)| v["name"] == name)
        .unwrap_or_else(|| panic!("no etcd record for {name}: {subnets:?}"));
    PeerInfo {
        name: name.into(),
        underlay_ip: v["underlayIp"].as_str().unwrap().parse().unwrap(),
        pod_cidrs: v["podCidrs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().parse().unwrap())
            .collect(),
        vtep_mac: v["vtepMac"].as_str().and_then(parse_mac),
    }
}

/// The entries in `k` that exist for `peer`, described (empty: none left).
fn entries_for(k: &Kernel, peer: &PeerInfo) -> Vec<String> {
    let mut out = Vec::new();
    for r in &k.routes {
        if peer.pod_cidrs.contains(&r.dst) {
            out.push(format!("route {r}"));
        }
    }
    let vtep_ips: Vec<IpAddr> = peer.pod_cidrs.iter().map(|c| c.network()).collect();
    for n in &k.neighbours {
        if vtep_ips.contains(&n.ip) || (n.mac.is_some() && n.mac == peer.vtep_mac) {
            out.push(format!("neighbour {} lladdr {:?}", n.ip, n.mac));
        }
    }
    for f in &k.fdb {
        if f.dst == Some(peer.underlay_ip) || Some(f.mac) == peer.vtep_mac {
            out.push(format!("fdb {:02x?} dst {:?}", f.mac, f.dst));
        }
    }
    out
}

/// What `node` must hold for `peer` with this backend: (routes, neighbours, fdb).
fn expected_counts(backend: &str, node: &Node, peer: &PeerInfo) -> (usize, usize, usize) {
    let on_link = match (node.segment, peer.underlay_ip) {
        (Segment::A, IpAddr::V4(ip)) => weft_lab::cluster::SEGMENT_A.contains(&ip),
        (Segment::B, IpAddr::V4(ip)) => weft_lab::cluster::SEGMENT_B.contains(&ip),
        _ => false,
    };
    let cidrs = peer.pod_cidrs.len();
    match backend {
        "host-gw" => (cidrs, 0, 0),
        "vxlan" => (cidrs, cidrs, 1),
        // auto: host-gw on link for the IPv4 CIDR; everything else over the VTEP.
        _ if on_link => {
            let v6 = peer.pod_cidrs.iter().filter(|c| c.addr().is_ipv6()).count();
            (cidrs, v6, usize::from(v6 > 0))
        }
        _ => (cidrs, cidrs, 1),
    }
}

/// Asserts that `node` holds exactly what `backend` wants for `peer` (waiting up to 5 s: a
/// peer's watch event may still be on its way on a loaded machine).
fn assert_programmed(backend: &str, n: &Node, peer: &PeerInfo) {
    let want = expected_counts(backend, n, peer);
    let counts = || {
        let have = entries_for(&kernel(n), peer);
        let count = |p: &str| have.iter().filter(|e| e.starts_with(p)).count();
        ((count("route"), count("neighbour"), count("fdb")), have)
    };
    if wait_for(Duration::from_secs(5), || counts().0 == want).is_none() {
        let (got, have) = counts();
        panic!(
            "{} for peer {}: (routes, neighbours, fdb) = {got:?}, want {want:?}: {have:#?}",
            n.name, peer.name
        );
    }
}

// ------------------------------------------------------------------ 1. backends x firewalls

/// The full matrix on one lab: pod <-> pod everywhere (with the pod's own source address),
/// node <-> pod, pod -> world masqueraded to the node's address. host-gw gets a lab without
/// the far node (it cannot cross the router), so that everything must work.
fn backend_firewall(backend: &str, firewall: &str) {
    let far = backend != "host-gw";
    let mut c = start(config(backend, firewall, 2, far));
    let names: Vec<String> = c.nodes.iter().map(|n| n.name.clone()).collect();
    for n in &names {
        for i in 1..=2 {
            add_pod(&mut c, n, &format!("{n}-p{i}"));
        }
    }
    // The driver asked for is the one in place, and its rules are where that driver keeps them.
    for n in &names {
        let st = agent_status(&c, n);
        let driver = st["firewall"]["driver"].as_str().unwrap_or("").to_string();
        assert!(
            driver.starts_with(firewall),
            "{n} uses firewall {driver:?}, asked for {firewall}"
        );
        assert_eq!(st["firewall"]["in_place"], true, "{n}: {st}");
        let nft_table = node(&c, n)
            .netns
            .command("nft")
            .args(["list", "table", "inet", "weft"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert_eq!(nft_table, firewall == "nftables", "{n}: table inet weft");
        if firewall == "iptables" {
            let out = node(&c, n)
                .netns
                .command(format!("{driver}-save"))
                .args(["-t", "nat"])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("WEFT-POSTRTG"), "{n}: {driver}-save: {text}");
        }
    }
    let rows = c.connectivity_matrix().unwrap();
    let failures = matrix::failures(&rows);
    assert!(
        failures.is_empty(),
        "{backend}/{firewall}:\n{}\n{}",
        failures.join("\n"),
        matrix::table(&rows)
    );
    // Every probe must have worked (host-gw has no far node, so nothing is expected to fail),
    // and every kind is there.
    assert!(rows.iter().all(|r| r.ok && r.expected_ok));
    let kinds: Vec<Kind> = if far {
        vec![
            Kind::PodPodSameNode,
            Kind::PodPodSameSubnet,
            Kind::PodPodAcrossSubnets,
            Kind::PodWorld,
        ]
    } else {
        vec![Kind::PodPodSameNode, Kind::PodPodSameSubnet, Kind::PodWorld]
    };
    for k in kinds {
        assert!(rows.iter().any(|r| r.kind == k), "no {k} rows");
    }
    // No NAT between pods: the receiver saw the sender's pod IP; the world saw the node IP.
    for r in &rows {
        match r.kind {
            Kind::PodPodSameNode | Kind::PodPodSameSubnet | Kind::PodPodAcrossSubnets => {
                let from = c.pod(&r.from).unwrap().ipv4();
                assert_eq!(r.seen_source, from, "{r:?}");
            }
            Kind::PodWorld => {
                let n = c.pod(&r.from).unwrap().node.clone();
                assert_eq!(
                    r.seen_source,
                    Some(IpAddr::V4(node(&c, &n).underlay_ip)),
                    "{r:?}"
                );
            }
            _ => {}
        }
    }
    // The kernel holds what the backend promises for every peer.
    let peers: Vec<PeerInfo> = names.iter().map(|n| peer_info(&c, n)).collect();
    for n in &c.nodes {
        for p in peers.iter().filter(|p| p.name != n.name) {
            assert_programmed(backend, n, p);
        }
        assert_eq!(kernel(n).vtep.is_some(), backend != "host-gw", "{}", n.name);
    }
    tear_down(c);
}

#[test]
fn host_gw_nftables() {
    backend_firewall("host-gw", "nftables");
}

#[test]
fn host_gw_iptables() {
    backend_firewall("host-gw", "iptables");
}

#[test]
fn vxlan_nftables() {
    backend_firewall("vxlan", "nftables");
}

#[test]
fn vxlan_iptables() {
    backend_firewall("vxlan", "iptables");
}

#[test]
fn auto_nftables() {
    backend_firewall("auto", "nftables");
}

#[test]
fn auto_iptables() {
    backend_firewall("auto", "iptables");
}

// ------------------------------------------------------------------ 2. kill -9 under traffic

/// A process killed when dropped (a test failing mid-way leaves no ping running).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// ping's summary: (transmitted, received), and the icmp_seq numbers answered.
fn parse_ping(out: &str) -> Option<(u32, u32, Vec<u32>)> {
    let line = out.lines().find(|l| l.contains("packets transmitted"))?;
    let nums: Vec<u32> = line
        .split(',')
        .take(2)
        .filter_map(|part| part.split_whitespace().next()?.parse().ok())
        .collect();
    let seqs = out
        .lines()
        .filter_map(|l| l.split("icmp_seq=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect();
    match nums[..] {
        [tx, rx] => Some((tx, rx, seqs)),
        _ => None,
    }
}

/// A continuous ping (every 50 ms) from a pod on n1 to a pod on n2 while weftd on n1 and then
/// on n2 is SIGKILLed and started again with the same arguments: not one echo may be lost. The
/// agent changes nothing until it has the full peer list, and the VTEP keeps its MAC (kept in
/// the state dir), so peers' neighbour entries stay valid.
fn restart_under_traffic(backend: &str) {
    let mut c = start(config(backend, "nftables", 2, false));
    let a = add_pod(&mut c, "n1", "a");
    let b = add_pod(&mut c, "n2", "b");
    let dst = b.ipv4().unwrap();
    assert!(probe::ping(a.ns(), dst), "a -> b before the restarts");
    let before: Vec<Option<weft_netops::Link>> =
        ["n1", "n2"].map(|n| kernel(node(&c, n)).vtep).into();
    let records_before: Vec<Option<[u8; 6]>> =
        ["n1", "n2"].map(|n| peer_info(&c, n).vtep_mac).into();

    let mut ping = KillOnDrop(
        a.netns
            .command("ping")
            .args(["-n", "-i", "0.05", "-W", "1", "-c", "1000"])
            .arg(dst.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(500));
    let mut took = Vec::new();
    for n in ["n1", "n2"] {
        let t = Instant::now();
        c.restart_agent(n, libc::SIGKILL)
            .unwrap_or_else(|e| panic!("restart weftd on {n}: {e}"));
        took.push((n, t.elapsed()));
        // Past /readyz the agent reconciles with the full peer list: keep traffic flowing
        // through that too. It finds everything in place and changes nothing.
        let reconciled = wait_for(Duration::from_secs(5), || {
            !agent_status(&c, n)["last_reconcile"].is_null()
        });
        assert!(
            reconciled.is_some(),
            "{n} did not reconcile after the restart"
        );
        let report = agent_status(&c, n)["last_reconcile"].clone();
        assert_eq!(report["changes"], 0, "{n} after the restart: {report}");
        assert_eq!(report["errors"], serde_json::json!([]), "{n}: {report}");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        ping.0.try_wait().unwrap().is_none(),
        "ping ended before the restarts did"
    );
    // SIGINT: ping stops and prints its summary.
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(ping.0.id() as i32, libc::SIGINT) };
    let mut out = String::new();
    use std::io::Read;
    ping.0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let _ = ping.0.wait();
    let (tx, rx, seqs) = parse_ping(&out).unwrap_or_else(|| panic!("no ping summary: {out}"));
    eprintln!("{backend}: restarts took {took:?}; ping {tx} sent, {rx} received");
    // It ran all along (checked above) and sent about 20 echoes a second.
    assert!(tx >= 20, "only {tx} echoes sent: {out}");
    // The echo in flight when SIGINT came may go unanswered; nothing before it.
    let last = *seqs.iter().max().unwrap_or(&0);
    let missing: Vec<u32> = (1..=last).filter(|s| !seqs.contains(s)).collect();
    assert!(
        missing.is_empty() && tx - rx <= 1 && tx - last <= 1,
        "{backend}: lost echoes {missing:?} ({tx} sent, {rx} received)\n{out}\n--- n1 ---\n{}\n--- n2 ---\n{}",
        weftd_log(&c, "n1"),
        weftd_log(&c, "n2")
    );
    // The VTEPs were kept as they were, not re-created with another MAC.
    let after: Vec<Option<weft_netops::Link>> =
        ["n1", "n2"].map(|n| kernel(node(&c, n)).vtep).into();
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(
            b.as_ref().map(|l| (l.index, l.mac)),
            a.as_ref().map(|l| (l.index, l.mac))
        );
    }
    if backend != "host-gw" {
        assert!(after.iter().all(Option::is_some));
        assert!(records_before.iter().all(Option::is_some));
    }
    let records_after: Vec<Option<[u8; 6]>> =
        ["n1", "n2"].map(|n| peer_info(&c, n).vtep_mac).into();
    assert_eq!(records_before, records_after, "VTEP MACs in etcd");
    assert!(probe::ping(a.ns(), dst), "a -> b after the restarts");
    tear_down(c);
}

#[test]
fn kill_9_restart_loses_no_packet_vxlan() {
    restart_under_traffic("vxlan");
}

#[test]
fn kill_9_restart_loses_no_packet_host_gw() {
    restart_under_traffic("host-gw");
}

// ------------------------------------------------------------------ 3. a node leaves

/// Waits until none of `live` holds anything for `gone`; panics after `timeout`.
fn wait_gone_everywhere(c: &Cluster, live: &[&str], gone: &PeerInfo, timeout: Duration) {
    for n in live {
        let took = wait_for(timeout, || {
            entries_for(&kernel(node(c, n)), gone).is_empty()
        });
        assert!(
            took.is_some(),
            "{n} still holds {}'s entries after {timeout:?}: {:#?}\n{}",
            gone.name,
            entries_for(&kernel(node(c, n)), gone),
            weftd_log(c, n)
        );
    }
}

/// The nodes that stay still hold each other and their pods still talk.
fn survivors_intact(c: &mut Cluster, backend: &str, a: &str, b: &str) {
    let (pa, pb) = (peer_info(c, a), peer_info(c, b));
    assert_programmed(backend, node(c, a), &pb);
    assert_programmed(backend, node(c, b), &pa);
    let p1 = add_pod(c, a, "s1");
    let p2 = add_pod(c, b, "s2");
    assert!(probe::ping(p1.ns(), p2.ipv4().unwrap()));
}

/// A node removed from the cluster (weftd stopped, its etcd key deleted) disappears from every
/// peer's kernel within a few seconds: the watch delivers the deletion (the lease, 30 s, has
/// not expired).
#[test]
fn node_deleted_from_etcd_is_removed_from_every_peer() {
    let mut c = start(config("vxlan", "nftables", 3, true));
    let info: Vec<PeerInfo> = ["n1", "n2", "n3", "n4"]
        .iter()
        .map(|n| peer_info(&c, n))
        .collect();
    for n in &c.nodes {
        for p in info.iter().filter(|p| p.name != n.name) {
            assert_programmed("vxlan", n, p);
        }
    }
    let n3 = info[2].clone();
    c.stop_agent("n3", libc::SIGTERM).unwrap();
    // A clean stop leaves everything in place: the peers still route to n3.
    std::thread::sleep(Duration::from_millis(300));
    assert_programmed("vxlan", node(&c, "n1"), &n3);
    let t = Instant::now();
    c.etcd_delete_node("n3").unwrap();
    wait_gone_everywhere(&c, &["n1", "n2", "n4"], &n3, Duration::from_secs(5));
    eprintln!(
        "n3 (key deleted) gone from all peers after {:?}",
        t.elapsed()
    );
    survivors_intact(&mut c, "vxlan", "n1", "n4");
    assert_programmed("vxlan", node(&c, "n2"), &info[3]);
    tear_down(c);
}

/// A node that dies (SIGKILL, no clean-up) leaves when its lease expires (--etcd-lease-ttl
/// 4s): etcd deletes its key and every peer removes its entries; not before.
#[test]
fn dead_node_is_removed_when_its_lease_expires() {
    let mut cfg = config("auto", "nftables", 2, true);
    cfg.etcd_lease_ttl = "4s".into();
    let mut c = start(cfg);
    let n3 = peer_info(&c, "n3"); // the far node: a vxlan peer of n1 and n2
    for n in ["n1", "n2"] {
        assert_programmed("auto", node(&c, n), &n3);
    }
    c.stop_agent("n3", libc::SIGKILL).unwrap();
    let t = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    // The last keep-alive was at most TTL/3 ago: the key lives on for a while.
    for n in ["n1", "n2"] {
        assert_programmed("auto", node(&c, n), &n3);
    }
    wait_gone_everywhere(&c, &["n1", "n2"], &n3, Duration::from_secs(10));
    let took = t.elapsed();
    eprintln!("n3 (lease 4 s expired) gone from all peers after {took:?}");
    assert!(c
        .etcd_subnets()
        .unwrap()
        .iter()
        .all(|(_, v)| v["name"] != "n3"));
    survivors_intact(&mut c, "auto", "n1", "n2");
    tear_down(c);
}

// ------------------------------------------------------------------ 4. deleted while down

/// flannel#2554: peers deleted while this node's agent is down. The restarted agent starts
/// from a full peer list and removes what it holds for nodes that are no longer there: n3 (a
/// host-gw peer with backend auto) and n4 (the far node, a vxlan peer).
#[test]
fn peers_deleted_while_agent_down_are_removed_on_restart() {
    let mut c = start(config("auto", "nftables", 3, true));
    let n2 = peer_info(&c, "n2");
    let gone = [peer_info(&c, "n3"), peer_info(&c, "n4")];
    let n1 = node(&c, "n1");
    for p in gone.iter().chain([&n2]) {
        assert_programmed("auto", n1, p);
    }

    c.stop_agent("n1", libc::SIGKILL).unwrap();
    for p in &gone {
        c.stop_agent(&p.name, libc::SIGTERM).unwrap();
        c.etcd_delete_node(&p.name).unwrap();
    }
    // n2's agent is up: it removes them at once.
    for p in &gone {
        let took = wait_for(Duration::from_secs(5), || {
            entries_for(&kernel(node(&c, "n2")), p).is_empty()
        });
        assert!(took.is_some(), "n2 still holds {}'s entries", p.name);
    }
    // n1's agent is down: its stale entries are still there.
    std::thread::sleep(Duration::from_millis(300));
    let k = kernel(node(&c, "n1"));
    for p in &gone {
        assert!(
            !entries_for(&k, p).is_empty(),
            "n1 lost {}'s entries with its agent down",
            p.name
        );
    }

    let t = Instant::now();
    c.start_agent("n1")
        .unwrap_or_else(|e| panic!("start weftd on n1: {e}"));
    let ready = t.elapsed();
    for p in &gone {
        let took = wait_for(Duration::from_secs(5), || {
            entries_for(&kernel(node(&c, "n1")), p).is_empty()
        });
        assert!(
            took.is_some(),
            "n1 still holds {}'s entries 5 s after its agent came back: {:#?}\n{}",
            p.name,
            entries_for(&kernel(node(&c, "n1")), p),
            weftd_log(&c, "n1")
        );
    }
    eprintln!(
        "n1 ready after {ready:?}, stale n3/n4 entries gone after {:?}",
        t.elapsed()
    );
    // What n1 holds for n2 survived.
    assert_programmed("auto", node(&c, "n1"), &n2);
    let k = kernel(node(&c, "n1"));
    assert_eq!(k.routes.len(), 1, "{:#?}", k.routes);
    assert!(k.neighbours.is_empty() && k.fdb.is_empty(), "{k:#?}");
    let p1 = add_pod(&mut c, "n1", "p1");
    let p2 = add_pod(&mut c, "n2", "p2");
    assert!(probe::ping(p1.ns(), p2.ipv4().unwrap()));
    tear_down(c);
}

// ------------------------------------------------------------------ 5. resync repairs

fn nft_table_exists(n: &Node) -> bool {
    n.netns
        .command("nft")
        .args(["list", "table", "inet", "weft"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// A route, a neighbour and an FDB entry deleted by hand come back within one resync; so does
/// the nftables table (`nft delete table inet weft`), and with it masquerade to the world.
#[test]
fn resync_repairs_deleted_route_and_firewall_table() {
    let interval = Duration::from_secs(2);
    let mut cfg = config("vxlan", "nftables", 2, false);
    cfg.resync_interval = "2s".into();
    let mut c = start(cfg);
    let a = add_pod(&mut c, "n1", "a");
    let b = add_pod(&mut c, "n2", "b");
    let n2 = peer_info(&c, "n2");
    let n1 = node(&c, "n1");
    assert_programmed("vxlan", n1, &n2);
    let k = kernel(n1);
    let route = k
        .routes
        .iter()
        .find(|r| n2.pod_cidrs.contains(&r.dst))
        .unwrap()
        .clone();
    let neigh = k.neighbours[0].clone();
    let fdb = k.fdb[0].clone();

    // Route, neighbour and FDB entry deleted by hand.
    let mut nl = Netlink::in_netns(n1.ns()).unwrap();
    nl.del_route(&route).unwrap();
    nl.del_neighbour(&neigh).unwrap();
    nl.del_fdb(&fdb).unwrap();
    assert!(entries_for(&kernel(n1), &n2).is_empty());
    assert!(!probe::ping_n(a.ns(), b.ipv4().unwrap(), 1, 0.2));
    let took = wait_for(interval * 2 + Duration::from_millis(500), || {
        let k = kernel(n1);
        k.routes
            .iter()
            .any(|r| r.dst == route.dst && r.gateway == route.gateway)
            && k.neighbours
                .iter()
                .any(|x| x.ip == neigh.ip && x.mac == neigh.mac)
            && k.fdb.iter().any(|f| f.mac == fdb.mac && f.dst == fdb.dst)
    });
    eprintln!("route/neighbour/fdb back after {took:?}");
    let took = took.unwrap_or_else(|| {
        panic!(
            "not repaired within 2 x {interval:?}: {:#?}\n{}",
            kernel(n1),
            weftd_log(&c, "n1")
        )
    });
    assert!(took <= interval * 2, "repaired only after {took:?}");
    assert_programmed("vxlan", n1, &n2);
    assert!(probe::ping(a.ns(), b.ipv4().unwrap()));

    // The firewall table deleted by hand.
    let world =
        WhoAmIServer::start(c.world.handle(), IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0).unwrap();
    let n1_ip = IpAddr::V4(n1.underlay_ip);
    assert_eq!(
        probe::whoami(a.ns(), WORLD_IP.into(), world.port).unwrap(),
        n1_ip
    );
    let st = n1
        .netns
        .command("nft")
        .args(["delete", "table", "inet", "weft"])
        .status()
        .unwrap();
    assert!(st.success());
    assert!(!nft_table_exists(n1));
    let took = wait_for(interval * 2 + Duration::from_millis(500), || {
        nft_table_exists(n1)
    });
    eprintln!("table inet weft back after {took:?}");
    let took = took.unwrap_or_else(|| panic!("table inet weft not back\n{}", weftd_log(&c, "n1")));
    assert!(took <= interval * 2, "table back only after {took:?}");
    // A new connection is masqueraded again (the world routes back only node addresses).
    let seen = probe::whoami(a.ns(), WORLD_IP.into(), world.port)
        .unwrap_or_else(|e| panic!("pod -> world after the repair: {e}"));
    assert_eq!(seen, n1_ip);
    assert_eq!(agent_status(&c, "n1")["firewall"]["in_place"], true);
    drop(world);
    tear_down(c);
}

/// The iptables driver's masquerade chain flushed by hand is refilled within one resync, and
/// pod -> world is masqueraded again.
#[test]
fn resync_repairs_flushed_iptables_chain() {
    let interval = Duration::from_secs(2);
    let mut cfg = config("vxlan", "iptables", 1, false);
    cfg.resync_interval = "2s".into();
    let mut c = start(cfg);
    let a = add_pod(&mut c, "n1", "a");
    let driver = agent_status(&c, "n1")["firewall"]["driver"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(driver.starts_with("iptables-"), "{driver}");
    let n1 = node(&c, "n1");
    let masq_rules = || {
        let out = n1
            .netns
            .command(&driver)
            .args(["-t", "nat", "-S", "WEFT-POSTRTG"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("MASQUERADE"))
            .count()
    };
    assert!(masq_rules() > 0);
    let world =
        WhoAmIServer::start(c.world.handle(), IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0).unwrap();
    let n1_ip = IpAddr::V4(n1.underlay_ip);
    assert_eq!(
        probe::whoami(a.ns(), WORLD_IP.into(), world.port).unwrap(),
        n1_ip
    );
    let st = n1
        .netns
        .command(&driver)
        .args(["-t", "nat", "-F", "WEFT-POSTRTG"])
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(masq_rules(), 0);
    let took = wait_for(interval * 2 + Duration::from_millis(500), || {
        masq_rules() > 0
    });
    eprintln!("{driver} WEFT-POSTRTG refilled after {took:?}");
    let took = took.unwrap_or_else(|| panic!("WEFT-POSTRTG still empty\n{}", weftd_log(&c, "n1")));
    assert!(took <= interval * 2, "refilled only after {took:?}");
    let seen = probe::whoami(a.ns(), WORLD_IP.into(), world.port)
        .unwrap_or_else(|e| panic!("pod -> world after the repair: {e}"));
    assert_eq!(seen, n1_ip);
    drop(world);
    tear_down(c);
}

// ------------------------------------------------------------------ 6. dual stack

/// Pings every pair of pods over IPv6 and checks the receiver sees the sender's own address.
fn ipv6_pod_pairs(c: &Cluster) -> Vec<String> {
    let pods = c.pods();
    let servers: Vec<WhoAmIServer> = pods
        .iter()
        .map(|p| WhoAmIServer::start(p.ns(), IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0).unwrap())
        .collect();
    let mut failures = Vec::new();
    for a in pods {
        for (b, server) in pods.iter().zip(&servers) {
            if a.name == b.name {
                continue;
            }
            let (src, dst) = (a.ipv6().unwrap(), b.ipv6().unwrap());
            if !probe::ping(a.ns(), dst) {
                failures.push(format!("{} -> {} ({dst}): no echo reply", a.name, b.name));
                continue;
            }
            match probe::whoami(a.ns(), dst, server.port) {
                Ok(seen) if seen == src => {}
                Ok(seen) => failures.push(format!(
                    "{} -> {} ({dst}): receiver saw {seen}, expected {src}",
                    a.name, b.name
                )),
                Err(e) => failures.push(format!("{} -> {} ({dst}): tcp: {e}", a.name, b.name)),
            }
        }
    }
    failures
}

/// A dual-stack pod network: pods get an address of each family; IPv6 works pod <-> pod on one
/// node, across nodes on one segment and across the router (VXLAN over the IPv4 underlay); the
/// IPv4 matrix is unchanged. With backend auto the IPv6 CIDR of an on-link peer rides the VTEP
/// (an IPv4 next hop cannot carry it).
fn dual_stack(backend: &str) {
    let mut cfg = config(backend, "nftables", 2, true);
    cfg.ipv6_network = Some("fd00:10:244::/56".parse().unwrap());
    cfg.ipv6_subnet_len = 64;
    let mut c = start(cfg);
    let names: Vec<String> = c.nodes.iter().map(|n| n.name.clone()).collect();
    for n in &names {
        let list = weft_lab::ConfList::load(&node(&c, n).conflist_path()).unwrap();
        let ranges = &list.plugins[0]["ipam"]["ranges"];
        assert_eq!(ranges.as_array().map(Vec::len), Some(2), "{n}: {ranges}");
        for i in 1..=2 {
            let p = add_pod(&mut c, n, &format!("{n}-p{i}"));
            let v6 = p
                .ipv6()
                .unwrap_or_else(|| panic!("{} has no IPv6: {:?}", p.name, p.ips));
            let v4 = p
                .ipv4()
                .unwrap_or_else(|| panic!("{} has no IPv4: {:?}", p.name, p.ips));
            let own = peer_info(&c, n);
            assert!(
                own.pod_cidrs.iter().any(|c| c.contains(&v6)),
                "{v6} not in {own:?}"
            );
            assert!(
                own.pod_cidrs.iter().any(|c| c.contains(&v4)),
                "{v4} not in {own:?}"
            );
        }
    }
    let info: Vec<PeerInfo> = names.iter().map(|n| peer_info(&c, n)).collect();
    for n in &c.nodes {
        for p in info.iter().filter(|p| p.name != n.name) {
            assert_eq!(p.pod_cidrs.len(), 2, "{p:?}");
            assert_programmed(backend, n, p);
            // The IPv6 route goes over the VTEP, on-link via the peer's VTEP address.
            let k = kernel(n);
            let vtep = k.vtep.as_ref().unwrap().index;
            let v6 = p.pod_cidrs.iter().find(|c| c.addr().is_ipv6()).unwrap();
            let r = k.routes.iter().find(|r| r.dst == *v6).unwrap();
            assert_eq!(
                (r.oif, r.onlink, r.gateway),
                (Some(vtep), true, Some(v6.network()))
            );
        }
    }
    // Full-size packets (the pod MTU, DF set) cross the router in both families: the VXLAN
    // overhead is accounted for.
    let mtu = weft_lab::ConfList::load(&node(&c, "n1").conflist_path())
        .unwrap()
        .plugins[0]["mtu"]
        .as_u64()
        .unwrap();
    let from = c.pods().iter().find(|p| p.node == "n1").unwrap();
    for to in c.pods().iter().filter(|p| p.node != "n1") {
        for (dst, headers) in [(to.ipv4().unwrap(), 28), (to.ipv6().unwrap(), 48)] {
            let size = (mtu - headers).to_string();
            let ok = (0..3).any(|_| {
                from.netns
                    .command("ping")
                    .args(["-n", "-q", "-c", "1", "-W", "1", "-M", "do", "-s", &size])
                    .arg(dst.to_string())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .unwrap()
                    .success()
            });
            assert!(
                ok,
                "{} -> {} ({dst}): {size} bytes with DF (pod MTU {mtu})",
                from.name, to.name
            );
        }
    }
    let failures = ipv6_pod_pairs(&c);
    assert!(
        failures.is_empty(),
        "{backend} IPv6:\n{}",
        failures.join("\n")
    );
    let rows = c.connectivity_matrix().unwrap();
    let failures4 = matrix::failures(&rows);
    assert!(
        failures4.is_empty(),
        "{backend} IPv4:\n{}\n{}",
        failures4.join("\n"),
        matrix::table(&rows)
    );
    // The far node leaves: its entries of both families go from both peers.
    let n3 = peer_info(&c, "n3");
    c.stop_agent("n3", libc::SIGTERM).unwrap();
    c.etcd_delete_node("n3").unwrap();
    wait_gone_everywhere(&c, &["n1", "n2"], &n3, Duration::from_secs(5));
    tear_down(c);
}

#[test]
fn dual_stack_auto() {
    dual_stack("auto");
}

#[test]
fn dual_stack_vxlan() {
    dual_stack("vxlan");
}

#[test]
fn ping_summary_parses() {
    let out = "PING 10.244.2.2 (10.244.2.2) 56(84) bytes of data.\n\
               64 bytes from 10.244.2.2: icmp_seq=1 ttl=62 time=0.1 ms\n\
               64 bytes from 10.244.2.2: icmp_seq=3 ttl=62 time=0.1 ms\n\n\
               --- 10.244.2.2 ping statistics ---\n\
               3 packets transmitted, 2 received, 33.3333% packet loss, time 2003ms\n";
    assert_eq!(parse_ping(out), Some((3, 2, vec![1, 3])));
    assert_eq!(parse_ping("nothing"), None);
}

// ------------------------------------------------------------------ the node's CIDR changes

/// Issue 11: a node whose subnet is given to another node while it is registered (its lease
/// lost, the subnet claimed again: etcd's counterpart of a Node deleted and re-created with a
/// new podCIDR) moves to a new subnet without a restart: new gateway and conflist, the old
/// gateway gone from the bridge, peers route the new subnet to it, a new pod works across
/// nodes; the pod left with an address of the old subnet is named and readiness says why
/// until it is deleted.
#[test]
fn a_node_moved_to_another_subnet_converges_without_restart() {
    let mut c = start(config("host-gw", "nftables", 2, false));
    let old_pod = add_pod(&mut c, "n1", "old");
    let peer_pod = add_pod(&mut c, "n2", "peer");
    let old_cidrs = agent_status(&c, "n1")["pod_cidrs"].clone();
    let pid_before = c
        .procs()
        .iter()
        .find(|p| p.what == "weftd on n1")
        .map(|p| p.pid());

    // The subnet goes to an "intruder" (another underlay address) while n1 is running.
    let (key, mut record) = c
        .etcd_subnets()
        .unwrap()
        .into_iter()
        .find(|(_, v)| v["name"] == "n1")
        .unwrap();
    record["name"] = "intruder".into();
    record["underlayIp"] = "10.99.99.99".into();
    c.etcdctl(&["put", &key, &record.to_string()]).unwrap();

    let moved = wait_for(Duration::from_secs(15), || {
        let s = agent_status(&c, "n1");
        s["pod_cidrs"] != old_cidrs && s["pod_cidrs"].as_array().is_some_and(|a| !a.is_empty())
    });
    assert!(
        moved.is_some(),
        "n1 kept its old subnet:\n{}",
        weftd_log(&c, "n1")
    );
    eprintln!("n1 moved to a new subnet after {moved:?}");
    let status = agent_status(&c, "n1");
    let new_cidr: IpNet = status["pod_cidrs"][0].as_str().unwrap().parse().unwrap();
    let old_cidr: IpNet = old_cidrs[0].as_str().unwrap().parse().unwrap();
    assert_ne!(new_cidr, old_cidr);

    // Converged: the bridge carries exactly the new gateway, the conflist the new subnet.
    let gateway = weft_agent_gateway(&new_cidr);
    let converged = wait_for(Duration::from_secs(15), || {
        let mut nl = Netlink::in_netns(node(&c, "n1").ns()).unwrap();
        let br = nl.get_link_by_name("weft0").unwrap().unwrap();
        let addrs: Vec<IpNet> = nl
            .list_addresses(Some(br.index))
            .unwrap()
            .into_iter()
            .map(|(_, a)| a)
            .filter(|a| a.addr().is_ipv4())
            .collect();
        addrs == [gateway]
            && std::fs::read_to_string(node(&c, "n1").conflist_path())
                .is_ok_and(|t| t.contains(&new_cidr.to_string()))
    });
    assert!(
        converged.is_some(),
        "n1 did not converge:\n{}",
        weftd_log(&c, "n1")
    );

    // The stranded pod is named; readiness says why.
    let status = agent_status(&c, "n1");
    assert_eq!(status["ready"], false);
    let old_ip = old_pod.ips[0].to_string();
    assert!(
        status["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().contains(&old_ip)),
        "{status}\n{}",
        weftd_log(&c, "n1")
    );
    let (code, body) = probe::http_get(
        node(&c, "n1").ns(),
        AGENT_LISTEN,
        "/readyz",
        Duration::from_secs(2),
    )
    .unwrap();
    assert_eq!(code, 503);
    assert!(body.contains("former pod CIDR"), "{body}");
    // `weftd status` (the CLI reads the same typed document weftd serves) says it too.
    let weftd = weft_lab::cluster::find_bin_dir(&["weftd"])
        .unwrap()
        .join("weftd");
    let out = weft_lab::ns::enter_command(node(&c, "n1").ns(), &weftd)
        .args(["status", "--listen", &AGENT_LISTEN.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "weftd status: {text}");
    assert!(
        text.contains("ready:       NO (waiting for 1 pod(s)"),
        "{text}"
    );
    assert!(text.contains(&new_cidr.to_string()), "{text}");
    assert!(
        text.contains(&format!("problem:     pod {old_ip} ")),
        "{text}"
    );

    // A new pod gets the new subnet and works across nodes both ways.
    let new_pod = add_pod(&mut c, "n1", "new");
    assert!(new_cidr.contains(&new_pod.ips[0]), "{:?}", new_pod.ips);
    let reach = wait_for(Duration::from_secs(10), || {
        probe::ping(new_pod.netns.handle(), peer_pod.ips[0])
            && probe::ping(peer_pod.netns.handle(), new_pod.ips[0])
    });
    assert!(
        reach.is_some(),
        "new pod on n1 and pod on n2 do not reach each other"
    );

    // Deleting the stranded pod makes the node ready again.
    c.remove_pod("old").unwrap();
    let ready = wait_for(Duration::from_secs(15), || {
        agent_status(&c, "n1")["ready"] == true
    });
    assert!(ready.is_some(), "{}", agent_status(&c, "n1"));
    // All without a restart.
    let pid_after = c
        .procs()
        .iter()
        .find(|p| p.what == "weftd on n1")
        .map(|p| p.pid());
    assert_eq!(pid_before, pid_after, "weftd was restarted");
    tear_down(c);
}

/// The gateway weftd puts on the bridge for `cidr` (network + 1).
fn weft_agent_gateway(cidr: &IpNet) -> IpNet {
    let IpAddr::V4(net) = cidr.network() else {
        panic!("IPv4 only")
    };
    IpNet::new(
        IpAddr::V4(Ipv4Addr::from(u32::from(net) + 1)),
        cidr.prefix_len(),
    )
    .unwrap()
}

/// Issue 11: a node re-addressed on the underlay while weftd runs (DHCP renumbering, a
/// replaced NIC) publishes its new address without a restart, as soon as the kernel says so
/// (link notifications, not the resync); peers route its pods to it.
#[test]
fn a_node_readdressed_on_the_underlay_is_followed_by_its_peers() {
    // A resync interval far longer than the test: only the link notification can make weftd
    // notice in time.
    let mut c = start(LabConfig {
        resync_interval: "300s".into(),
        ..config("host-gw", "nftables", 2, false)
    });
    let p1 = add_pod(&mut c, "n1", "a");
    let p2 = add_pod(&mut c, "n2", "b");
    assert!(probe::ping(p2.netns.handle(), p1.ips[0]));
    let old = node(&c, "n1").underlay_ip;
    let new = Ipv4Addr::new(old.octets()[0], old.octets()[1], old.octets()[2], 111);

    // n1's eth0 loses its address and gets a new one (as a renumbering does; the other order
    // would take the new one with the old, a secondary address going with its primary).
    let mut nl = Netlink::in_netns(node(&c, "n1").ns()).unwrap();
    let eth0 = nl.get_link_by_name("eth0").unwrap().unwrap();
    let (_, old_net) = nl
        .list_addresses(Some(eth0.index))
        .unwrap()
        .into_iter()
        .find(|(_, a)| a.addr() == IpAddr::V4(old))
        .unwrap();
    let new_net = IpNet::new(IpAddr::V4(new), old_net.prefix_len()).unwrap();
    nl.del_address(eth0.index, old_net).unwrap();
    nl.add_address(eth0.index, new_net, true).unwrap();
    let t = Instant::now();

    let followed = wait_for(Duration::from_secs(10), || {
        peer_info(&c, "n1").underlay_ip == IpAddr::V4(new)
            && probe::ping_n(p2.netns.handle(), p1.ips[0], 1, 0.2)
    });
    assert!(
        followed.is_some(),
        "peers did not follow n1 to {new}:\n{}",
        weftd_log(&c, "n1")
    );
    eprintln!(
        "n1 re-addressed: published and reachable again after {:?}",
        t.elapsed()
    );
    assert_eq!(
        agent_status(&c, "n1")["underlay"]["address"],
        new_net.to_string()
    );
    assert!(probe::ping(p1.netns.handle(), p2.ips[0]));
    tear_down(c);
}
