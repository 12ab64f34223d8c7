//! Diagnosis against the real path: `weft-lab trace` (weftd trace on each node it crosses)
//! for same-node, host-gw, vxlan and pod->world traffic, and for deliberately broken paths;
//! `weftd check --peers`; the CNI metrics weftd serves after a few ADD/DEL.
//! Needs `weft` and `weftd` built next to the test binary (a workspace `cargo test` does it).

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use weft_lab::cluster::AGENT_LISTEN;
use weft_lab::ns::enter_command;
use weft_lab::probe::http_get;
use weft_lab::{Cluster, DatastoreKind, LabConfig};
use weft_netops::{FdbEntry, Netlink};

fn lab() -> Cluster {
    let mut c = Cluster::start(LabConfig {
        nodes: 2,
        far_node: true,
        datastore: DatastoreKind::Etcd,
        backend: "auto".into(),
        // Long enough that a hand-made break is still there when we trace it.
        resync_interval: "120s".into(),
        ..LabConfig::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    for (node, pod) in [
        ("n1", "n1-p1"),
        ("n1", "n1-p2"),
        ("n2", "n2-p1"),
        ("n3", "n3-p1"),
    ] {
        c.add_pod(node, pod).unwrap_or_else(|e| panic!("{e}"));
    }
    c
}

fn trace(c: &Cluster, src: &str, dst: &str) -> (String, bool) {
    weft_lab::trace::trace(&c.id, src, dst, &c.bin_dir).unwrap_or_else(|e| panic!("{e}"))
}

fn assert_has(text: &str, needles: &[&str]) {
    for n in needles {
        assert!(text.contains(n), "trace lacks {n:?}:\n{text}");
    }
}

#[test]
fn trace_follows_real_paths_and_names_what_is_broken() {
    let c = lab();
    let n3_cidr = c.pod("n3-p1").unwrap().ipv4().unwrap();

    let (t, ok) = trace(&c, "n1-p1", "n1-p2");
    assert!(ok, "{t}");
    assert_has(
        &t,
        &[
            "source pod",
            "this node's pod network",
            "dest pod",
            "source kept",
        ],
    );
    assert!(
        !t.contains("== on node n2"),
        "same-node traffic stays on n1:\n{t}"
    );

    let (t, ok) = trace(&c, "n1-p1", "n2-p1");
    assert!(ok, "{t}");
    assert_has(
        &t,
        &[
            "weft host-gw route",
            "next node",
            "== on node n2",
            "arrives",
            "dest pod",
            "source kept",
        ],
    );

    // n2 has a VTEP too (auto: the far node needs it), but this packet came over host-gw.
    let on_n2 = &t[t.find("== on node n2").unwrap()..];
    assert!(
        on_n2.contains("(over eth0)") && !on_n2.contains("over weft.1"),
        "arrives over the underlay:\n{t}"
    );

    // n3 is the far node behind the router: auto picks vxlan.
    let (t, ok) = trace(&c, "n1-p1", "n3-p1");
    assert!(ok, "{t}");
    let on_n3 = &t[t.find("== on node n3").unwrap()..];
    assert!(on_n3.contains("(over weft.1)"), "arrives over VXLAN:\n{t}");
    assert_has(
        &t,
        &[
            "weft vxlan route",
            "neighbour",
            "peer VTEP MAC",
            "fdb",
            "encapsulated",
            "== on node n3",
            "dest pod",
        ],
    );

    let (t, ok) = trace(&c, "n2-p1", "world");
    assert!(ok, "{t}");
    assert_has(&t, &["leaves the cluster network", "masquerade"]);

    // Broken: the host-gw route to n2's pods deleted by hand on n1.
    let n1 = c.node("n1").unwrap();
    let mut nl = Netlink::in_netns(n1.ns()).unwrap();
    let n2_pod = c.pod("n2-p1").unwrap().ipv4().unwrap();
    let route = nl
        .list_routes(None, Some(254))
        .unwrap()
        .into_iter()
        .find(|r| r.protocol == 87 && r.dst.contains(&n2_pod))
        .expect("weft route to n2's pods");
    nl.del_route(&route).unwrap();
    let (t, ok) = trace(&c, "n1-p1", "n2-p1");
    assert!(!ok, "{t}");
    assert_has(&t, &["no weft route for", "PATH BROKEN"]);

    // Broken: the FDB entry for n3's VTEP deleted by hand on n1.
    let vtep = nl.get_link_by_name("weft.1").unwrap().unwrap();
    let entry: FdbEntry = nl
        .list_fdb(vtep.index)
        .unwrap()
        .into_iter()
        .find(|f| f.dst.is_some())
        .expect("fdb entry for the far node");
    nl.del_fdb(&entry).unwrap();
    let (t, ok) = trace(&c, "n1-p1", &n3_cidr.to_string());
    assert!(!ok, "{t}");
    assert_has(&t, &["no FDB entry for", "PATH BROKEN"]);
}

fn metric(body: &str, name_and_labels: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn check_peers_and_cni_metrics() {
    let mut c = lab();
    let out = enter_command(c.node("n1").unwrap().ns(), c.bin_dir.join("weftd"))
        .args(["check", "--peers"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // n2 over host-gw, n3 (behind the router) over vxlan: each answers with its name.
    assert!(
        text.lines()
            .any(|l| l.starts_with("n2") && l.contains("host-gw") && l.contains("yes")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("n3") && l.contains("vxlan") && l.contains("yes")),
        "{text}"
    );

    // Two ADDs happened on n1; remove one pod: one DEL. The agent collects events each second.
    c.remove_pod("n1-p2").unwrap();
    let n1 = c.node("n1").unwrap();
    let addr: SocketAddr = AGENT_LISTEN.to_string().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let (code, body) = http_get(n1.ns(), addr, "/metrics", Duration::from_secs(2)).unwrap();
        assert_eq!(code, 200);
        let dels = metric(
            &body,
            "weft_cni_operation_duration_seconds_count{command=\"DEL\"}",
        );
        if dels.is_some() || Instant::now() > deadline {
            break body;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        metric(
            &body,
            "weft_cni_operation_duration_seconds_count{command=\"ADD\"}"
        ),
        Some(2.0),
        "{body}"
    );
    assert_eq!(
        metric(
            &body,
            "weft_cni_operation_duration_seconds_count{command=\"DEL\"}"
        ),
        Some(1.0),
        "{body}"
    );
    assert!(
        body.lines()
            .all(|l| !l.starts_with("weft_cni_operation_errors_total")),
        "no errors expected:\n{body}"
    );
    assert_eq!(
        metric(&body, "weft_peers{path=\"host-gw\"}"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        metric(&body, "weft_peers{path=\"vxlan\"}"),
        Some(1.0),
        "{body}"
    );
    // One pod left on n1: 1 address used (the gateway is not counted as used).
    let used = body
        .lines()
        .find(|l| l.starts_with("weft_ipam_addresses{") && l.contains("state=\"used\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    assert_eq!(used, Some(1.0), "{body}");

    // A failed ADD shows up as an error by code: an ADD for an attachment that exists.
    let pod = c.pod("n1-p1").unwrap().clone();
    let conflist = weft_lab::ConfList::load(&n1.conflist_path()).unwrap();
    let attach = weft_lab::conflist::Attachment::for_pod(
        &pod.container_id,
        &pod.netns.path(),
        "default",
        "n1-p1",
    );
    let runner = weft_lab::PluginRunner::new(&c.bin_dir, n1.ns());
    let err = weft_lab::conflist::add(&runner, &conflist, &attach);
    assert!(err.is_err());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = http_get(n1.ns(), addr, "/metrics", Duration::from_secs(2)).unwrap();
        if metric(
            &body,
            "weft_cni_operation_errors_total{command=\"ADD\",code=\"100\"}",
        ) == Some(1.0)
        {
            break;
        }
        assert!(Instant::now() < deadline, "no error metric:\n{body}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
