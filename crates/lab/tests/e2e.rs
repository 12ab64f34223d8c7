//! End to end: etcd or the static file, one real weftd per node, pods through the conflist
//! the agents write, the connectivity matrix. Needs `weft` and `weftd` in target/debug
//! (`cargo build -p weft-plugin -p weft-agent`; a workspace-wide `cargo test` builds them).

use serde_json::{json, Map};
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use weft_lab::cluster::{Segment, WORLD_IP};
use weft_lab::matrix::{self, Kind};
use weft_lab::probe::{whoami, WhoAmIServer};
use weft_lab::{registry, Cluster, ConfList, DatastoreKind, LabConfig};

fn config(datastore: DatastoreKind, backend: &str, nodes: usize) -> LabConfig {
    LabConfig {
        nodes,
        datastore,
        backend: backend.into(),
        ready_timeout: Duration::from_secs(45),
        ..LabConfig::default()
    }
}

/// Builds the lab, adds two pods per node, runs the matrix, asserts it is as expected.
fn full_matrix(cfg: LabConfig) -> Vec<matrix::Row> {
    let mut c = Cluster::start(cfg).unwrap_or_else(|e| panic!("{e}"));
    let (id, dir) = (c.id.clone(), c.dir.clone());
    let names: Vec<String> = c.nodes.iter().map(|n| n.name.clone()).collect();
    for n in &names {
        for i in 1..=2 {
            c.add_pod(n, &format!("{n}-p{i}"))
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }
    let rows = c.connectivity_matrix().unwrap();
    let failures = matrix::failures(&rows);
    assert!(
        failures.is_empty(),
        "{}\n{}",
        failures.join("\n"),
        matrix::table(&rows)
    );
    drop(c);
    assert!(registry::netns_of(&id).is_empty());
    assert!(!dir.exists());
    rows
}

#[test]
fn etcd_auto_backend_everything_reachable_and_masquerade_only_to_the_world() {
    let rows = full_matrix(config(DatastoreKind::Etcd, "auto", 2));
    // 3 nodes x 2 pods: 30 pod pairs, 9 node->pod, 9 pod->node, 6 pod->world.
    assert_eq!(rows.len(), 54);
    assert!(rows.iter().all(|r| r.ok));
    for k in [
        Kind::PodPodSameNode,
        Kind::PodPodSameSubnet,
        Kind::PodPodAcrossSubnets,
    ] {
        assert!(rows.iter().any(|r| r.kind == k), "no {k} rows");
    }
}

#[test]
fn static_vxlan_everything_reachable() {
    full_matrix(config(DatastoreKind::Static, "vxlan", 2));
}

#[test]
fn host_gw_cannot_cross_the_router() {
    let rows = full_matrix(config(DatastoreKind::Static, "host-gw", 2));
    let across: Vec<_> = rows
        .iter()
        .filter(|r| r.kind == Kind::PodPodAcrossSubnets)
        .collect();
    assert!(!across.is_empty());
    assert!(across.iter().all(|r| !r.ok && !r.expected_ok));
    assert!(rows
        .iter()
        .filter(|r| r.kind == Kind::PodPodSameSubnet)
        .all(|r| r.ok));
}

#[test]
fn port_mapping_through_portmap_and_remove_pod() {
    let mut c =
        Cluster::start(config(DatastoreKind::Static, "auto", 1)).unwrap_or_else(|e| panic!("{e}"));
    let node = &c.nodes[0];
    assert_eq!(node.segment, Segment::A);
    let node_ip = node.underlay_ip;
    let list = ConfList::load(&node.conflist_path()).unwrap();
    assert_eq!(list.plugins[0]["type"], "weft");
    assert_eq!(list.plugins[1]["type"], "portmap");
    let mut caps = Map::new();
    caps.insert(
        "portMappings".into(),
        json!([{ "hostPort": 8080, "containerPort": 8081, "protocol": "tcp" }]),
    );
    let pod = c
        .add_pod_with("n1", "web", &list, caps)
        .unwrap_or_else(|e| panic!("{e}"));
    let server = WhoAmIServer::start(pod.ns(), Ipv4Addr::UNSPECIFIED.into(), 8081).unwrap();
    // The world reaches the pod through the node's port 8080.
    let seen = whoami(c.world.handle(), node_ip.into(), 8080)
        .unwrap_or_else(|e| panic!("world -> {node_ip}:8080: {e}"));
    assert_eq!(seen, IpAddr::from(WORLD_IP));
    drop(server);
    let ip = pod.ipv4().unwrap();
    assert!(reserved(&c.nodes[0].ipam_dir()).contains(&ip.to_string()));
    drop(pod);
    c.remove_pod("web").unwrap();
    // The address is released: no reservation file under the IPAM dir any more.
    let ipam = c.nodes[0].ipam_dir();
    assert!(
        !reserved(&ipam).contains(&ip.to_string()),
        "{ip} still reserved"
    );
    let again = c.add_pod("n1", "web2").unwrap();
    assert!(reserved(&ipam).contains(&again.ipv4().unwrap().to_string()));
}

/// File names under `dir` (recursively) that are IP addresses: the IPAM reservations.
fn reserved(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if e.path().is_dir() {
            out.extend(reserved(&e.path()));
        } else if name.parse::<IpAddr>().is_ok() {
            out.push(name);
        }
    }
    out
}

#[test]
fn ctrl_c_kills_etcd_and_the_agents() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft-lab"))
        .args(["up", "--nodes", "2", "--pods-per-node", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let id = format!("wl{}", child.id());
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut up = false;
    while Instant::now() < deadline && !up {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 {
            break;
        }
        up = line.contains("is up");
    }
    if !up {
        let _ = child.kill();
        let _ = child.wait();
        panic!("weft-lab up did not come up");
    }
    let pids = registry::recorded_pids(&registry::lab_dir(&id));
    let names: Vec<&str> = pids.iter().map(|(_, p)| p.as_str()).collect();
    assert_eq!(
        names.iter().filter(|p| **p == "weftd").count(),
        4,
        "{names:?}"
    ); // init + 3
    assert!(names.contains(&"etcd"));
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert_eq!(child.wait().unwrap().code(), Some(130));
    for (pid, prog) in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read(format!("/proc/{pid}/cmdline"))
                    .unwrap_or_default()
                    .is_empty(),
            "{prog} ({pid}) still running"
        );
    }
    assert!(registry::netns_of(&id).is_empty());
    assert!(!registry::lab_dir(&id).exists());
}
