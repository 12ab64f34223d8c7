//! Agent faults in the lab: an etcd outage, and the underlay going down and up. Pod traffic
//! must not notice the first; weftd must recover from the second without a restart.
//! The outage lasts `WEFT_ETCD_OUTAGE_SECS` (default 15; the full size is 60).

use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::time::{Duration, Instant};
use weft_lab::cluster::AGENT_LISTEN;
use weft_lab::probe::{http_get, ping};
use weft_lab::{Cluster, DatastoreKind, LabConfig};
use weft_netops::{IpFamily, Netlink, Route};

fn status(c: &Cluster, node: &str) -> serde_json::Value {
    let addr: SocketAddr = AGENT_LISTEN.to_string().parse().unwrap();
    let (_, body) = http_get(
        c.node(node).unwrap().ns(),
        addr,
        "/status",
        Duration::from_secs(2),
    )
    .expect("agent /status");
    serde_json::from_str(&body).expect("status JSON")
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

/// `ping -i 0.1` until SIGINT; returns (transmitted, received).
fn stop_ping(child: std::process::Child) -> (u32, u32) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary in {text}"));
    let num = |key: &str| -> u32 {
        let before = line.split(key).next().unwrap();
        before.split_whitespace().last().unwrap().parse().unwrap()
    };
    (num("packets transmitted"), num("received"))
}

/// Two nodes on the segment and the far node (auto: host-gw and vxlan peers), one pod each.
fn lab_with_pods() -> Cluster {
    let mut c = Cluster::start(LabConfig {
        nodes: 2,
        datastore: DatastoreKind::Etcd,
        backend: "auto".into(),
        resync_interval: "2s".into(),
        ..LabConfig::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    for (node, pod) in [("n1", "n1-p1"), ("n2", "n2-p1"), ("n3", "n3-p1")] {
        c.add_pod(node, pod).unwrap_or_else(|e| panic!("{e}"));
    }
    c
}

#[test]
fn etcd_outage_does_not_touch_pod_traffic_and_the_agents_converge_after() {
    let outage = Duration::from_secs(
        std::env::var("WEFT_ETCD_OUTAGE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(15),
    );
    let mut c = lab_with_pods();
    let far: IpAddr = c.pod("n3-p1").unwrap().ipv4().unwrap();
    let src = c.pod("n1-p1").unwrap().netns.clone();
    let pinger = src
        .command("ping")
        .args(["-n", "-i", "0.1"])
        .arg(far.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    c.stop_etcd().unwrap();
    let down_at = Instant::now();
    wait_until("n1 to report the outage", Duration::from_secs(15), || {
        status(&c, "n1")["datastore_connected"] == false
    });
    let st = status(&c, "n1");
    assert!(
        st["datastore_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{st}"
    );
    // A ready node still starts pods: the plugin never needs the datastore.
    c.add_pod("n1", "n1-new")
        .unwrap_or_else(|e| panic!("pod during the outage: {e}"));
    let new_pod = c.pod("n1-new").unwrap().netns.clone();
    assert!(ping(
        new_pod.handle(),
        c.pod("n2-p1").unwrap().ipv4().unwrap()
    ));
    assert!(ping(new_pod.handle(), far));
    if let Some(rest) = outage.checked_sub(down_at.elapsed()) {
        std::thread::sleep(rest);
    }

    c.start_etcd().unwrap();
    let took = wait_until("n1 to reconnect", Duration::from_secs(30), || {
        status(&c, "n1")["datastore_connected"] == true
    });
    eprintln!("reconnected {took:?} after etcd came back");
    // Converged: every agent still sees both peers, programmed.
    for node in ["n1", "n2", "n3"] {
        wait_until("peers programmed", Duration::from_secs(15), || {
            let st = status(&c, node);
            let peers = st["last_reconcile"]["peers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            peers.len() == 2 && peers.iter().all(|p| p["routes_programmed"] == true)
        });
    }
    let (sent, received) = stop_ping(pinger);
    eprintln!("ping across the outage: {sent} sent, {received} received");
    assert!(
        sent >= 10 * outage.as_secs() as u32 / 2,
        "ping ran the whole time ({sent} sent)"
    );
    assert_eq!(
        sent, received,
        "pod traffic lost packets during the etcd outage"
    );
}

#[test]
fn underlay_down_and_up_recovers_without_restart() {
    let mut c = lab_with_pods();
    let near = c.pod("n2-p1").unwrap().ipv4().unwrap();
    let far = c.pod("n3-p1").unwrap().ipv4().unwrap();
    let src = c.pod("n1-p1").unwrap().netns.clone();
    assert!(ping(src.handle(), near) && ping(src.handle(), far));

    let n1 = c.node("n1").unwrap();
    let mut nl = Netlink::in_netns(n1.ns()).unwrap();
    let eth0 = nl.get_link_by_name("eth0").unwrap().unwrap();
    let default = nl
        .list_routes(Some(IpFamily::V4), Some(254))
        .unwrap()
        .into_iter()
        .find(|r| r.dst.prefix_len() == 0)
        .expect("lab default route");
    nl.set_link_down(eth0.index).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    // The kernel dropped every route through eth0, weft's host-gw route to n2 among them.
    assert!(!nl
        .list_routes(Some(IpFamily::V4), Some(254))
        .unwrap()
        .iter()
        .any(|r| r.protocol == 87 && r.dst.contains(&near)));
    nl.set_link_up(eth0.index).unwrap();
    // The node's own network manager would restore its default route; the lab plays it.
    let _ = nl.add_route(&Route {
        oif: default.oif,
        ..default.clone()
    });

    let took = wait_until(
        "pod traffic to n2 (host-gw) and n3 (vxlan)",
        Duration::from_secs(15),
        || ping(src.handle(), near) && ping(src.handle(), far),
    );
    eprintln!("recovered {took:?} after the underlay came back");
    let routes = nl.list_routes(Some(IpFamily::V4), Some(254)).unwrap();
    assert!(
        routes
            .iter()
            .any(|r| r.protocol == 87 && r.dst.contains(&near)),
        "{routes:?}"
    );
    assert!(c.agent_running("n1"), "recovered without a restart");
}
