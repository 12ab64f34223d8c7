//! `weftd install`, `weftd uninstall` and `weftd cleanup`, run as the real binary.
//!
//! - install and uninstall are idempotent and atomic (no temp file left behind);
//! - cleanup and uninstall leave a node as it was before weft: a lab node is snapshotted
//!   (links, routes, nftables and iptables rules, files), weftd runs there with pods and peers
//!   (host-gw and VXLAN), is stopped, and cleanup must bring back exactly the snapshot.
//!
//! Everything runs inside the lab's own network namespaces (root needed for the lab tests).
//! The lab needs `weft` and `weftd` built in the same target dir (scripts/test.sh builds the
//! workspace first; by hand: `cargo build -p weft-plugin -p weft-agent`).

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;
use weft_lab::cluster::AGENT_LISTEN;
use weft_lab::{probe, Cluster, DatastoreKind, LabConfig, Netns, Node};
use weft_netops::netns::NetNs;
use weft_netops::Netlink;

const WEFTD: &str = env!("CARGO_BIN_EXE_weftd");

fn run(mut cmd: Command) -> Output {
    let out = cmd.output().expect("spawn weftd");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn install_and_uninstall_are_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    // The bin dir does not exist yet: install creates it (a fresh node has no /opt/cni/bin).
    let bin_dir = tmp.path().join("opt/cni/bin");
    let v1 = tmp.path().join("weft-v1");
    let v2 = tmp.path().join("weft-v2");
    std::fs::write(&v1, b"#!/bin/sh\necho v1\n").unwrap();
    std::fs::write(&v2, b"#!/bin/sh\necho v2\n").unwrap();

    let install = |src: &Path| {
        let mut c = Command::new(WEFTD);
        c.arg("install")
            .arg("--plugin-source")
            .arg(src)
            .arg("--cni-bin-dir")
            .arg(&bin_dir);
        run(c);
    };
    let listing = || -> BTreeSet<String> {
        std::fs::read_dir(&bin_dir)
            .map(|rd| {
                rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let target = bin_dir.join("weft");

    for _ in 0..2 {
        install(&v1);
        assert_eq!(std::fs::read(&target).unwrap(), std::fs::read(&v1).unwrap());
        let mode = std::fs::metadata(&target).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        // Nothing but the plugin: no temp file left.
        assert_eq!(listing(), BTreeSet::from(["weft".to_string()]));
    }
    // Another plugin next to ours must survive upgrades and uninstall.
    std::fs::write(bin_dir.join("portmap"), b"other").unwrap();
    // An upgrade replaces the file (a new inode: a runtime exec'ing the old one is unharmed).
    let old_inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&target).unwrap());
    install(&v2);
    assert_eq!(std::fs::read(&target).unwrap(), std::fs::read(&v2).unwrap());
    let new_inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&target).unwrap());
    assert_ne!(
        old_inode, new_inode,
        "install must rename into place, not rewrite"
    );

    // Uninstall (plugin and cleanup) twice, inside a netns of its own with its own dirs, so
    // the cleanup half touches nothing of this machine.
    let ns = Netns::new("weft-uninst").unwrap();
    for _ in 0..2 {
        let mut c = ns.command(WEFTD);
        c.arg("uninstall")
            .arg("--cni-bin-dir")
            .arg(&bin_dir)
            .args(dirs_args(tmp.path()));
        run(c);
        assert_eq!(listing(), BTreeSet::from(["portmap".to_string()]));
    }
    assert_eq!(std::fs::read(bin_dir.join("portmap")).unwrap(), b"other");
}

/// cleanup's dir flags pointing under `root`.
fn dirs_args(root: &Path) -> Vec<String> {
    vec![
        format!("--cni-conf-dir={}", root.join("net.d").display()),
        format!("--ipam-data-dir={}", root.join("ipam").display()),
        format!("--state-dir={}", root.join("state").display()),
    ]
}

fn node_dirs_args(n: &Node) -> Vec<String> {
    vec![
        format!("--cni-conf-dir={}", n.cni_conf_dir().display()),
        format!("--ipam-data-dir={}", n.ipam_dir().display()),
        format!("--state-dir={}", n.state_dir().display()),
    ]
}

/// What a node's network looks like, for before/after comparison.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    links: BTreeSet<String>,
    routes: BTreeSet<String>,
    /// nftables: every rule and every non-base chain, as "family table/chain: text". Empty
    /// tables and base chains without rules (iptables-nft makes those when it is merely
    /// asked to list) do not count.
    nft: BTreeSet<String>,
    /// iptables (nft and legacy, v4 and v6): every rule and user chain.
    iptables: BTreeSet<String>,
}

fn output_in(ns: &NetNs, program: &str, args: &[&str]) -> String {
    let out = weft_lab::ns::enter_command(ns, program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn nft_rules(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let (mut table, mut chain, mut base) = (String::new(), String::new(), false);
    for line in text.lines().map(str::trim) {
        if let Some(t) = line.strip_prefix("table ") {
            table = t.trim_end_matches(" {").to_string();
        } else if let Some(c) = line.strip_prefix("chain ") {
            chain = c.trim_end_matches(" {").to_string();
            base = false;
        } else if line.starts_with("type ") && line.contains(" hook ") {
            base = true;
        } else if line == "}" {
            if !chain.is_empty() && !base {
                out.insert(format!("{table}/{chain}"));
            }
            chain.clear();
        } else if !line.is_empty() && !chain.is_empty() && !line.starts_with("policy ") {
            out.insert(format!("{table}/{chain}: {line}"));
        } else if !line.is_empty() && chain.is_empty() {
            // sets, maps, flowtables... at table level.
            out.insert(format!("{table}: {line}"));
        }
    }
    out
}

fn snapshot(n: &Node) -> Snapshot {
    let mut nl = Netlink::in_netns(n.ns()).unwrap();
    let links = nl
        .list_links()
        .unwrap()
        .into_iter()
        .map(|l| format!("{} {:?} {:?}", l.name, l.kind, l.alias))
        .collect();
    let link_local: ipnet::IpNet = "fe80::/10".parse().unwrap();
    let routes = nl
        .list_routes(None, None)
        .unwrap()
        .into_iter()
        // The kernel adds the local route of eth0's IPv6 link-local address when its DAD
        // ends, which may be after the first snapshot: not weft's.
        .filter(|r| !(r.table == 255 && link_local.contains(&r.dst)))
        .map(|r| format!("{r:?}"))
        .collect();
    let nft = nft_rules(&output_in(n.ns(), "nft", &["list", "ruleset"]));
    let mut iptables = BTreeSet::new();
    for tool in [
        "iptables-nft-save",
        "ip6tables-nft-save",
        "iptables-legacy-save",
        "ip6tables-legacy-save",
    ] {
        for line in output_in(n.ns(), tool, &[]).lines() {
            let builtin = [
                ":INPUT ",
                ":OUTPUT ",
                ":FORWARD ",
                ":PREROUTING ",
                ":POSTROUTING ",
            ];
            let user_chain = line.starts_with(':') && !builtin.iter().any(|b| line.starts_with(b));
            if line.starts_with("-A ") || user_chain {
                // Drop the packet counters of a chain declaration.
                let l = line.split(" [").next().unwrap_or(line);
                iptables.insert(format!("{tool}: {l}"));
            }
        }
    }
    Snapshot {
        links,
        routes,
        nft,
        iptables,
    }
}

/// Asserts, by name, that none of weft's objects is left on `n`.
fn assert_no_weft(n: &Node) {
    let s = snapshot(n);
    for l in &s.links {
        assert!(
            !l.starts_with("weft0 ") && !l.starts_with("weft.1 ") && !l.contains("weft:"),
            "link left: {l}"
        );
    }
    let mut nl = Netlink::in_netns(n.ns()).unwrap();
    let ours: Vec<_> = nl
        .list_routes(None, None)
        .unwrap()
        .into_iter()
        .filter(|r| r.protocol == 87)
        .collect();
    assert!(ours.is_empty(), "routes with protocol 87 left: {ours:?}");
    let ruleset = output_in(n.ns(), "nft", &["list", "ruleset"]);
    assert!(!ruleset.contains("table inet weft"), "{ruleset}");
    assert!(!ruleset.contains("WEFT"), "{ruleset}");
    for r in &s.iptables {
        assert!(!r.contains("WEFT"), "iptables rule left: {r}");
    }
    assert!(!n.conflist_path().exists(), "conflist left");
    assert!(!n.ipam_dir().exists(), "IPAM state left");
    assert!(!n.state_dir().exists(), "weftd state left");
}

/// Stops `node`'s weftd (SIGTERM, as the kubelet does) and waits for it.
fn stop_agent(c: &mut Cluster, node: &str) {
    let what = format!("weftd on {node}");
    let p = c
        .procs()
        .iter_mut()
        .find(|p| p.what == what)
        .unwrap_or_else(|| panic!("no {what}"));
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(p.pid() as i32, libc::SIGTERM) };
    for _ in 0..100 {
        if p.exited().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} did not stop on SIGTERM:\n{}", p.log_tail());
}

/// A lab (2 nodes on one segment, one behind the router: host-gw and VXLAN peers), a
/// snapshot of every node before weftd, weftd with two pods per node, then `cleanup` on n1
/// and `uninstall` on the far node; both twice; both nodes must be back to their snapshot.
fn cleanup_restores_the_node(firewall: &str) {
    let cfg = LabConfig {
        nodes: 2,
        far_node: true,
        datastore: DatastoreKind::Static,
        backend: "auto".into(),
        firewall: firewall.into(),
        ready_timeout: Duration::from_secs(45),
        ..LabConfig::default()
    };
    let mut c = Cluster::build(cfg).unwrap_or_else(|e| panic!("{e}"));
    let before: Vec<Snapshot> = c.nodes.iter().map(snapshot).collect();
    c.start_agents().unwrap_or_else(|e| panic!("{e}"));

    // The probe paths of deploy/weft.yaml are what weftd serves.
    for path in ["/healthz", "/readyz"] {
        let (code, body) =
            probe::http_get(c.nodes[0].ns(), AGENT_LISTEN, path, Duration::from_secs(2)).unwrap();
        assert_eq!(code, 200, "{path}: {body}");
    }
    let names: Vec<String> = c.nodes.iter().map(|n| n.name.clone()).collect();
    for n in &names {
        for i in 1..=2 {
            c.add_pod(n, &format!("{n}-p{i}"))
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }
    let far = names.last().unwrap().clone();
    // The far node reaches n1's pods through VXLAN, n2's through host-gw: all of it exists.
    let during = snapshot(&c.nodes[0]);
    assert!(during.links.iter().any(|l| l.starts_with("weft0 ")));
    assert!(during.links.iter().any(|l| l.starts_with("weft.1 ")));
    assert!(during.routes.iter().any(|r| r.contains("protocol: 87")));
    assert!(
        !during.nft.is_empty() || !during.iptables.is_empty(),
        "no firewall rules while weftd runs"
    );

    for n in &names {
        stop_agent(&mut c, n);
    }
    // A NetworkPolicy table, as weftd with the kubernetes datastore leaves it.
    for n in &c.nodes {
        weft_netops::run_in(n.ns(), || {
            let empty = weft_policy::compile(&weft_policy::Model::new(), &Default::default());
            weft_policy::Applier::new().apply(&empty).map(|_| ())
        })
        .unwrap()
        .unwrap_or_else(|e| panic!("policy table on {}: {e}", n.name));
        assert!(
            snapshot(n).nft.iter().any(|l| l.contains("weft-policy")),
            "no policy table on {}",
            n.name
        );
    }
    let cni_bin = c.dir.join("cni-bin");
    for (i, n) in c.nodes.iter().enumerate() {
        if n.name == far {
            // As the DaemonSet's init container would have left it.
            let mut ins = Command::new(WEFTD);
            ins.arg("install")
                .arg("--plugin-source")
                .arg(WEFTD)
                .arg("--cni-bin-dir")
                .arg(&cni_bin);
            run(ins);
        }
        for _ in 0..2 {
            let mut cmd = n.netns.command(WEFTD);
            if n.name == far {
                cmd.arg("uninstall").arg("--cni-bin-dir").arg(&cni_bin);
            } else {
                cmd.arg("cleanup");
            }
            cmd.args(node_dirs_args(n));
            run(cmd);
            assert_no_weft(n);
            let after = snapshot(n);
            assert_eq!(after, before[i], "{} differs from before weft", n.name);
        }
    }
    assert!(!cni_bin.join("weft").exists());
}

#[test]
fn cleanup_and_uninstall_restore_the_node_nftables() {
    cleanup_restores_the_node("nftables");
}

#[test]
fn cleanup_and_uninstall_restore_the_node_iptables() {
    cleanup_restores_the_node("iptables-nft");
}
