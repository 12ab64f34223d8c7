//! The compiled rulesets in the real kernel: a two-node lab in network namespaces (see
//! common/lab.rs), each node programmed by its own Applier with `nft -j -f -`, the probe matrix
//! (TCP connect, UDP echo) compared with the truth tables and the reference evaluator. Needs
//! root. SCTP rules are compiled out here (no SCTP in this kernel).

mod common;

use common::cases::{cases, Case};
use common::lab::Lab;
use common::{eval_matrix, explain, xyz_model, Truth};
use weft_policy::{CompileOptions, Model, Protocol};

fn no_sctp() -> CompileOptions {
    CompileOptions {
        sctp: false,
        ..Default::default()
    }
}

/// Kernel matrix vs `expected`: the mismatches, rendered (empty when equal).
fn compare(
    lab: &Lab,
    model: &Model,
    what: &str,
    expected: &Truth,
    protocol: Protocol,
    port: u16,
    v6: bool,
) -> String {
    let mut kernel = lab.probe_matrix(protocol, port, v6);
    // A "denied" where the evaluator allows is probed again, slowly and all at once, so a
    // loaded machine does not read as a policy bug.
    let suspicious: Vec<(String, String)> = kernel
        .0
        .iter()
        .filter(|(k, v)| !**v && expected.0[*k])
        .map(|(k, _)| k.clone())
        .collect();
    let again: Vec<_> = suspicious
        .iter()
        .map(|(f, t)| {
            let (tns, tp) = t.split_once('/').unwrap();
            let dst = if v6 {
                common::pod_v6(tns, tp)
            } else {
                common::pod_v4(tns, tp)
            };
            common::lab::probe_async(
                lab.pods[f].handle(),
                dst,
                protocol,
                port,
                std::time::Duration::from_secs(3),
            )
        })
        .collect();
    for (k, h) in suspicious.into_iter().zip(again) {
        kernel.0.insert(k, h.join().unwrap());
    }
    if kernel == *expected {
        return String::new();
    }
    format!(
        "{what} {protocol}/{port}{} kernel (X = differs from the evaluator):\n{}{}",
        if v6 { " IPv6" } else { "" },
        kernel.render(expected),
        explain(model, expected, &kernel, protocol, port)
    )
}

fn run_cases(tag: &str, chunk: usize, of: usize) {
    let mut lab = Lab::new(tag);
    let all = cases();
    let mine: Vec<&Case> = all
        .iter()
        .enumerate()
        .filter(|(i, _)| i % of == chunk)
        .map(|(_, c)| c)
        .collect();
    let mut errors = String::new();
    for case in &mine {
        // Each case starts from the plain model; the appliers diff from the previous case.
        let mut model = xyz_model(1);
        for (i, step) in case.steps.iter().enumerate() {
            step.change.apply(&mut model);
            lab.apply(&model, &no_sctp());
            for (protocol, port, truth) in &step.probes {
                let expected = truth.clone().with_loopback();
                assert_eq!(
                    eval_matrix(&model, *protocol, *port, false),
                    expected,
                    "{}",
                    case.name
                );
                errors += &compare(
                    &lab,
                    &model,
                    &format!("{} step {i}", case.name),
                    &expected,
                    *protocol,
                    *port,
                    false,
                );
            }
        }
    }
    assert!(errors.is_empty(), "{errors}");
    eprintln!("{} cases through the kernel", mine.len());
}

#[test]
fn conformance_in_kernel_0() {
    run_cases("c0", 0, 3);
}

#[test]
fn conformance_in_kernel_1() {
    run_cases("c1", 1, 3);
}

#[test]
fn conformance_in_kernel_2() {
    run_cases("c2", 2, 3);
}

/// Random labels, named ports and policies (seeded, bounded): the kernel's matrix must equal
/// the evaluator's. WEFT_POLICY_SEEDS=n runs more seeds.
#[test]
fn differential_random_policies() {
    let seeds: u64 = std::env::var("WEFT_POLICY_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let mut lab = Lab::new("diff");
    let mut errors = String::new();
    let mut denied = 0;
    for seed in 1..=seeds {
        let model = common::random::random_model(seed, 4);
        // Every other seed judges established connections again: same verdicts on new ones.
        let opts = CompileOptions {
            cut_established: seed % 2 == 0,
            ..no_sctp()
        };
        lab.apply(&model, &opts);
        // IPv6 too (the random ipBlocks are of either family).
        for (protocol, port, v6) in [
            (Protocol::Tcp, 80, false),
            (Protocol::Tcp, 81, false),
            (Protocol::Udp, 80, false),
            (Protocol::Tcp, 81, true),
        ] {
            let expected = eval_matrix(&model, protocol, port, v6);
            denied += expected.0.values().filter(|v| !**v).count();
            errors += &compare(
                &lab,
                &model,
                &format!("seed {seed}"),
                &expected,
                protocol,
                port,
                v6,
            );
        }
    }
    assert!(errors.is_empty(), "{errors}");
    // The generator must produce denials, or the comparison proves little.
    assert!(denied > 0);
    eprintln!("{seeds} random models, {denied} denied pairs, kernel = evaluator");
}

/// IPv6 through the same rules: isolated pods still resolve their neighbours (ICMPv6 ND
/// passes under default deny), and the matrix matches the evaluator's IPv6 one.
#[test]
fn ipv6_with_neighbour_discovery_under_default_deny() {
    let mut lab = Lab::new("v6");
    let mut model = xyz_model(1);
    model.set_policy(common::np(
        "x",
        "deny-all",
        serde_json::json!({ "podSelector": {}, "policyTypes": ["Ingress", "Egress"] }),
    ));
    model.set_policy(common::np(
        "x",
        "from-y",
        serde_json::json!({ "podSelector": {},
        "ingress": [{ "from": [{ "namespaceSelector": { "matchLabels": { "ns": "y" } } }] }],
        "egress": [{ "to": [{ "namespaceSelector": { "matchLabels": { "ns": "z" } } }] }] }),
    ));
    // Before any IPv6 packet: the first ones need neighbour discovery through the rules.
    lab.apply(&model, &no_sctp());
    let mut errors = String::new();
    for (protocol, port) in [(Protocol::Tcp, 80), (Protocol::Udp, 81)] {
        let expected = eval_matrix(&model, protocol, port, true);
        assert!(expected.0.values().any(|v| !v) && expected.0.values().any(|v| *v));
        errors += &compare(&lab, &model, "ipv6", &expected, protocol, port, true);
    }
    assert!(errors.is_empty(), "{errors}");
}

/// The node reaches its own pods whatever the policies (kubelet probes); another node is just
/// an address (ipBlock decides); a pod's egress to its own node is enforced (input hook).
#[test]
fn node_traffic() {
    use common::lab::{gateway, probe_async};
    use std::net::{IpAddr, SocketAddr, TcpListener};
    use std::time::Duration;
    use weft_policy::{evaluate, Endpoint};

    let mut lab = Lab::new("node");
    // A server on node 1 itself.
    let any: SocketAddr = (IpAddr::from([0u16; 8]), 80).into();
    let listener = weft_lab::probe::in_netns_thread(lab.node_ns(1).handle(), move || {
        TcpListener::bind(any).unwrap()
    })
    .unwrap();
    let xa = common::pod_v4("x", "a");
    let node1_gw = gateway(1, false);
    let node2_underlay: IpAddr = "192.168.250.2".parse().unwrap();
    let tcp = |from: &weft_netops::NetNs, to: IpAddr, timeout_ms| {
        probe_async(
            from,
            to,
            Protocol::Tcp,
            80,
            Duration::from_millis(timeout_ms),
        )
        .join()
        .unwrap()
    };

    let mut model = xyz_model(1);
    model.set_policy(common::np(
        "x",
        "deny-all",
        serde_json::json!({ "podSelector": {}, "policyTypes": ["Ingress", "Egress"] }),
    ));
    lab.apply(&model, &no_sctp());
    let eval = |model: &Model, src: Endpoint, dst: Endpoint| {
        evaluate(model, &src, &dst, Protocol::Tcp, 80).allowed
    };

    // kubelet: node 1 -> x/a, allowed under deny-all.
    assert!(eval(
        &model,
        Endpoint::LocalNode(node1_gw),
        Endpoint::Pod(common::key("x/a"))
    ));
    assert!(
        tcp(lab.node_ns(1).handle(), xa, 2000),
        "node 1 cannot reach its pod x/a"
    );
    // Node 2 -> x/a: an address outside pods, denied.
    assert!(!eval(
        &model,
        Endpoint::Ip(node2_underlay),
        Endpoint::Pod(common::key("x/a"))
    ));
    assert!(
        !tcp(lab.node_ns(2).handle(), xa, 600),
        "node 2 reached isolated x/a"
    );
    // x/a -> its own node: egress-isolated, denied (input hook); y/a (not isolated) gets there.
    assert!(!eval(
        &model,
        Endpoint::Pod(common::key("x/a")),
        Endpoint::LocalNode(node1_gw)
    ));
    assert!(
        !tcp(lab.pods["x/a"].handle(), node1_gw, 600),
        "x/a reached its node"
    );
    assert!(
        tcp(lab.pods["y/a"].handle(), node1_gw, 2000),
        "y/a cannot reach its node"
    );

    // An ipBlock for the underlay admits node 2, and one for the node admits x/a's egress.
    model.set_policy(common::np(
        "x",
        "nodes",
        serde_json::json!({ "podSelector": {}, "policyTypes": ["Ingress", "Egress"],
        "ingress": [{ "from": [{ "ipBlock": { "cidr": "192.168.250.0/24" } }] }],
        "egress": [{ "to": [{ "ipBlock": { "cidr": "10.244.1.1/32" } }] }] }),
    ));
    lab.apply(&model, &no_sctp());
    assert!(eval(
        &model,
        Endpoint::Ip(node2_underlay),
        Endpoint::Pod(common::key("x/a"))
    ));
    assert!(
        tcp(lab.node_ns(2).handle(), xa, 2000),
        "ipBlock did not admit node 2"
    );
    assert!(eval(
        &model,
        Endpoint::Pod(common::key("x/a")),
        Endpoint::LocalNode(node1_gw)
    ));
    assert!(
        tcp(lab.pods["x/a"].handle(), node1_gw, 2000),
        "ipBlock did not admit x/a -> node"
    );
    drop(listener);
}

/// weftd restarting with policies in place: a fresh Applier rebuilds the table (delete and
/// re-create in one transaction) again and again while a denied pod keeps trying: nothing
/// gets through, and an admitted pod keeps getting through.
#[test]
fn rebuild_leaves_no_open_window() {
    use common::lab::probe_async;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    let mut lab = Lab::new("restart");
    let mut model = xyz_model(1);
    model.set_policy(common::np(
        "x",
        "only-xb",
        serde_json::json!({ "podSelector": {},
        "ingress": [{ "from": [{ "podSelector": { "matchLabels": { "pod": "b" } } }] }] }),
    ));
    lab.apply(&model, &no_sctp());
    let desired = weft_policy::compile(&model, &no_sctp());

    let stop = Arc::new(AtomicBool::new(false));
    let (leaked, admitted, tries) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let xa = common::pod_v4("x", "a");
    let mut workers = Vec::new();
    for (from, counter) in [("y/a", leaked.clone()), ("x/b", admitted.clone())] {
        let ns = weft_netops::NetNs::open(lab.pods[from].path()).unwrap();
        let (stop, tries) = (stop.clone(), tries.clone());
        workers.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if probe_async(&ns, xa, Protocol::Tcp, 80, Duration::from_millis(50))
                    .join()
                    .unwrap()
                {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                tries.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // node 1 holds x/a: rebuild there, each time as a restarted agent would.
    for _ in 0..40 {
        let mut fresh = weft_policy::Applier::new();
        let stats = weft_netops::run_in(lab.node_ns(1).handle(), || fresh.apply(&desired))
            .unwrap()
            .unwrap();
        assert!(stats.full);
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(
        leaked.load(Ordering::Relaxed),
        0,
        "a denied connection got through during a rebuild"
    );
    assert!(
        admitted.load(Ordering::Relaxed) > 0,
        "the admitted pod never got through"
    );
    eprintln!(
        "{} probes during 40 rebuilds",
        tries.load(Ordering::Relaxed)
    );
}

/// The table as nft prints it reads as designed (what an operator sees with
/// `nft list table inet weft-policy`).
#[test]
fn listing_reads_as_designed() {
    let mut lab = Lab::new("list");
    let mut model = xyz_model(1);
    model.set_policy(common::np("x", "web", serde_json::json!({ "podSelector": { "matchLabels": { "pod": "a" } },
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [{ "from": [{ "namespaceSelector": { "matchLabels": { "ns": "y" } } }, { "ipBlock": { "cidr": "10.244.2.0/24", "except": ["10.244.2.14/32"] } }],
                      "ports": [{ "port": "serve-80-tcp" }, { "port": 81, "endPort": 82, "protocol": "UDP" }] }],
        "egress": [{ "to": [{ "podSelector": {} }] }] })));
    lab.apply(&model, &no_sctp());
    let out = weft_lab::ns::enter_command(lab.node_ns(1).handle(), "nft")
        .args(["list", "table", "inet", "weft-policy"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    for want in [
        "type filter hook forward priority filter; policy accept;",
        "type filter hook forward priority filter - 1; policy accept;",
        "type filter hook input priority filter - 1; policy accept;",
        "ct state established,related accept",
        "icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, nd-redirect } accept",
        "ip daddr vmap @in4",
        "ip6 saddr vmap @eg6",
        "10.244.1.10 : jump ni_x",
        "jump pi_x_web",
        "udp dport 81-82 accept",
        "ip daddr . tcp dport @n4_",
        "ip saddr != @e4_",
        "drop",
    ] {
        assert!(text.contains(want), "{want:?} not in\n{text}");
    }
}

/// The first-packet guarantee's kernel side: with `fail_closed` on the node's pod CIDRs, a
/// local pod the model does not know yet can neither send nor be reached, even with no policy
/// at all; once it is in the model it is treated by the policies like any other.
#[test]
fn unknown_local_pods_fail_closed() {
    use common::lab::probe_async;
    use std::time::Duration;

    let mut lab = Lab::new("fc");
    let opts = CompileOptions {
        sctp: false,
        // Lab::apply puts each node's own CIDRs here.
        fail_closed: vec!["0.0.0.0/0".parse().unwrap()],
        ..Default::default()
    };
    let mut model = xyz_model(1);
    let xa = model.remove_pod(&common::key("x/a")).unwrap();
    lab.apply(&model, &opts);
    fn tcp(lab: &Lab, from: &str, to: &str, ms: u64) -> bool {
        let (ns, p) = to.split_once('/').unwrap();
        probe_async(
            lab.pods[from].handle(),
            common::pod_v4(ns, p),
            Protocol::Tcp,
            80,
            Duration::from_millis(ms),
        )
        .join()
        .unwrap()
    }
    for other in ["x/b", "z/a"] {
        assert!(!tcp(&lab, other, "x/a", 500), "{other} reached unknown x/a");
        assert!(!tcp(&lab, "x/a", other, 500), "unknown x/a reached {other}");
    }
    assert!(tcp(&lab, "x/b", "z/a", 2000), "known pods are cut off");
    // Known now (no policy): open.
    model.set_pod(xa);
    let stats = lab.apply(&model, &opts);
    assert!(stats.iter().all(|s| !s.full), "not a diff");
    assert!(
        tcp(&lab, "x/b", "x/a", 2000)
            && tcp(&lab, "x/a", "z/a", 2000)
            && tcp(&lab, "z/a", "x/a", 2000)
    );
}

/// Someone deletes the table behind weftd's back: the next diff fails as a whole (nothing of
/// it applied) and says why; the call after rebuilds, and the policies hold again.
#[test]
fn recovers_after_the_table_is_removed_behind_its_back() {
    let mut lab = Lab::new("gone");
    let mut model = xyz_model(1);
    model.set_policy(common::np(
        "x",
        "deny",
        serde_json::json!({ "podSelector": {}, "policyTypes": ["Ingress"] }),
    ));
    lab.apply(&model, &no_sctp());
    let node = weft_netops::NetNs::open(lab.node_ns(1).path()).unwrap();
    let out = weft_lab::ns::enter_command(&node, "nft")
        .args(["delete", "table", "inet", "weft-policy"])
        .status()
        .unwrap();
    assert!(out.success());
    let expected = eval_matrix(&model, Protocol::Tcp, 80, false);
    assert!(
        !compare(
            &lab,
            &model,
            "table gone",
            &expected,
            Protocol::Tcp,
            80,
            false
        )
        .is_empty(),
        "nothing enforced, yet the matrix matched"
    );

    model.remove_pod(&common::key("x/b"));
    let desired = weft_policy::compile(&model, &no_sctp());
    let applier = &mut lab.nodes[0].applier;
    let err = weft_netops::run_in(&node, || applier.apply(&desired))
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("nft -j -f - failed"), "{err}");
    let stats = weft_netops::run_in(&node, || applier.apply(&desired))
        .unwrap()
        .unwrap();
    assert!(stats.full, "the retry must rebuild");
    model.set_pod(xyz_model(1).pods[&common::key("x/b")].clone());
    lab.apply(&model, &no_sctp());
    assert_eq!(
        compare(&lab, &model, "rebuilt", &expected, Protocol::Tcp, 80, false),
        ""
    );
}

/// Counters for metrics: what each namespace chain dropped and what each policy rule admitted,
/// read back from the kernel as weftd's /metrics would.
#[test]
fn counters_for_metrics() {
    let mut lab = Lab::new("cnt");
    let mut model = xyz_model(1);
    model.set_policy(common::np(
        "x",
        "deny",
        serde_json::json!({ "podSelector": {}, "policyTypes": ["Ingress"] }),
    ));
    model.set_policy(common::np(
        "x",
        "from-y",
        serde_json::json!({ "podSelector": {},
        "ingress": [{ "from": [{ "namespaceSelector": { "matchLabels": { "ns": "y" } } }] }] }),
    ));
    let opts = CompileOptions {
        sctp: false,
        counters: true,
        ..Default::default()
    };
    lab.apply(&model, &opts);
    let expected = eval_matrix(&model, Protocol::Tcp, 80, false);
    assert_eq!(
        compare(
            &lab,
            &model,
            "counters",
            &expected,
            Protocol::Tcp,
            80,
            false
        ),
        ""
    );

    // One `nft -j list counters` read, as weftd's /metrics does.
    let read = |lab: &Lab| {
        weft_netops::run_in(lab.node_ns(1).handle(), || {
            weft_policy::Applier::new().read_counters()
        })
        .unwrap()
        .unwrap()
    };
    let c = read(&lab);
    let desired = weft_policy::compile(&model, &opts);
    assert_eq!(
        c.keys().collect::<Vec<_>>(),
        desired.counters.keys().collect::<Vec<_>>(),
        "one named counter per policy chain and per namespace chain"
    );
    assert_eq!(desired.counters["ni_x"].policy, None);
    assert_eq!(
        desired.counters["pi_x_from-y"].policy.as_deref(),
        Some("from-y")
    );
    // x/a, x/b, x/c are on node 1: denied SYNs from x and z (and their retries) were dropped
    // there; y's were admitted by from-y's rule.
    assert!(c["ni_x"].packets >= 12, "{c:?}");
    assert!(c["pi_x_from-y"].packets >= 3, "{c:?}");
    assert_eq!(c["pi_x_deny"].packets, 0, "{c:?}");

    // A policy rewritten (its chain flushed and refilled) keeps its counter: it never goes
    // backwards while the policy exists.
    model.set_policy(common::np(
        "x",
        "from-y",
        serde_json::json!({ "podSelector": {},
        "ingress": [{ "from": [{ "namespaceSelector": { "matchLabels": { "ns": "y" } } }],
                      "ports": [{ "port": 80 }] }] }),
    ));
    lab.apply(&model, &opts);
    let after = read(&lab);
    assert!(
        after["pi_x_from-y"].packets >= c["pi_x_from-y"].packets,
        "{c:?} -> {after:?}"
    );
    // And a deleted policy's counter goes with it.
    model.remove_policy(&weft_policy::Key::new("x", "from-y"));
    lab.apply(&model, &opts);
    assert!(!read(&lab).contains_key("pi_x_from-y"));
}

/// A policy that starts denying: established connections live on by default, and are cut
/// (their next packet dropped) with `cut_established`; replies of admitted ones still pass.
#[test]
fn established_connections_live_on_or_are_cut() {
    use std::io::{Read, Write};
    use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
    use std::time::Duration;

    let mut lab = Lab::new("est");
    // An echo server on x/a:9000.
    let any: SocketAddr = (IpAddr::from([0u16; 8]), 9000).into();
    let listener = weft_lab::probe::in_netns_thread(lab.pods["x/a"].handle(), move || {
        TcpListener::bind(any).unwrap()
    })
    .unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut buf = [0u8; 64];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let xa = common::pod_v4("x", "a");
    let connect = |lab: &Lab, from: &str| -> TcpStream {
        weft_lab::probe::in_netns_thread(lab.pods[from].handle(), move || {
            let s = TcpStream::connect_timeout(&SocketAddr::new(xa, 9000), Duration::from_secs(2))
                .unwrap();
            s.set_read_timeout(Some(Duration::from_millis(1500)))
                .unwrap();
            s
        })
        .unwrap()
    };
    let echo = |s: &mut TcpStream| -> bool {
        let mut buf = [0u8; 4];
        s.write_all(b"ping").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"ping"
    };
    let open = xyz_model(1);
    let mut deny = open.clone();
    deny.set_policy(common::np(
        "x",
        "deny",
        serde_json::json!({ "podSelector": {}, "policyTypes": ["Ingress"] }),
    ));
    for cut in [false, true] {
        let opts = CompileOptions {
            sctp: false,
            cut_established: cut,
            ..Default::default()
        };
        lab.apply(&open, &opts);
        // Same node (bridged) and across nodes (routed).
        let mut conns: Vec<(&str, TcpStream)> = ["y/a", "z/a"]
            .iter()
            .map(|f| (*f, connect(&lab, f)))
            .collect();
        for (from, c) in conns.iter_mut() {
            assert!(echo(c), "{from}: no echo before the policy (cut {cut})");
        }
        lab.apply(&deny, &opts);
        for (from, c) in conns.iter_mut() {
            assert_eq!(
                echo(c),
                !cut,
                "{from} -> x/a established, cut_established {cut}"
            );
        }
        // New connections are denied either way.
        let new = common::lab::probe_async(
            lab.pods["z/a"].handle(),
            xa,
            Protocol::Tcp,
            9000,
            Duration::from_millis(500),
        );
        assert!(!new.join().unwrap());
    }
}
