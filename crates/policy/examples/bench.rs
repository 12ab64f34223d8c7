//! Figures, not assertions: `cargo run --release -p weft-policy --example bench [pods] [policies]`
//! (default 10,000 pods, 1,000 policies, 100 namespaces, this node holding 1 pod in 50).
//! Compile, full build batch and diffs are pure; the kernel figures come from a fresh network
//! namespace of this process's own (needs root; skipped otherwise).

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::json;
use weft_policy::{
    build, compile, diff, k8s, synthetic, Applier, CompileOptions, Key, Labels, Model, NamedPort,
    Namespace, Pod, Protocol,
};

fn labels(pairs: &[(&str, String)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn model(pods: usize, policies: usize) -> Model {
    let namespaces = 100;
    let mut m = Model::new();
    for n in 0..namespaces {
        m.set_namespace(Namespace::new(
            format!("ns{n}"),
            labels(&synthetic::namespace_labels(n)),
        ));
    }
    for i in 0..pods {
        let ns = format!("ns{}", i % namespaces);
        m.set_pod(Pod {
            namespace: ns,
            name: format!("pod{i}"),
            labels: labels(&synthetic::pod_labels(i)),
            ips: vec![
                std::net::IpAddr::from([10, (i >> 16) as u8 + 100, (i >> 8) as u8, i as u8]),
                format!("fd00:10::{:x}", i + 1).parse().unwrap(),
            ],
            named_ports: vec![NamedPort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 8000 + (i % 3) as u16,
            }],
            local: i % 50 == 0,
            host_network: false,
        });
    }
    for p in 0..policies {
        let obj = serde_json::from_value(synthetic::policy_object(p, namespaces)).unwrap();
        m.set_policy(k8s::policy(&obj).unwrap());
    }
    m
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let pods = args.first().copied().unwrap_or(10_000);
    let policies = args.get(1).copied().unwrap_or(1_000);
    let opts = CompileOptions {
        sctp: false,
        ..Default::default()
    };

    let t = Instant::now();
    let m = model(pods, policies);
    println!(
        "model: {pods} pods, {policies} policies, 100 namespaces, built in {:.1} ms",
        ms(t)
    );

    let t = Instant::now();
    let desired = compile(&m, &opts);
    println!(
        "compile: {:.1} ms; {} chains, {} rules, {} sets, {} elements",
        ms(t),
        desired.chains.len(),
        desired.rule_count(),
        desired.sets.len(),
        desired.element_count()
    );
    for (kind, (n, e)) in weft_policy::nft::set_summary(&desired) {
        println!("  {kind}: {n} sets, {e} elements");
    }
    let t = Instant::now();
    let full = build(&desired);
    let text = full.to_json().to_string();
    println!(
        "full build batch: {} commands, {} KiB of JSON, made in {:.1} ms",
        full.commands.len(),
        text.len() / 1024,
        ms(t)
    );

    // One pod relabelled (a local one, so the dispatch maps change too).
    let mut relabelled = m.clone();
    let key = Key::new("ns0", "pod0");
    relabelled
        .pods
        .get_mut(&key)
        .unwrap()
        .labels
        .insert("app".into(), "app7".into());
    let t = Instant::now();
    let after = compile(&relabelled, &opts);
    let compile_ms = ms(t);
    let t = Instant::now();
    let relabel = diff(&desired, &after);
    let diff_ms = ms(t);
    println!(
        "pod relabel: recompile {compile_ms:.1} ms + diff {diff_ms:.2} ms -> {} commands, {} elements, {} bytes of JSON",
        relabel.commands.len(),
        relabel.element_count(),
        relabel.to_json().to_string().len()
    );

    // The same relabel through the incremental Compiler (what weftd would keep).
    let mut compiler = weft_policy::Compiler::new(m.clone(), opts.clone());
    let mut pod = compiler.model().pods[&key].clone();
    pod.labels.insert("app".into(), "app7".into());
    let before = compiler.ruleset().clone();
    compiler.take_changes();
    let t = Instant::now();
    compiler.set_pod(pod);
    let inc_ms = ms(t);
    let t = Instant::now();
    let changes = compiler.take_changes();
    let journal = changes.batch(Some(&before), compiler.ruleset());
    let journal_ms = ms(t);
    let t = Instant::now();
    let inc = diff(&before, compiler.ruleset());
    println!(
        "pod relabel, incremental: update {inc_ms:.3} ms + batch from its journal {journal_ms:.3} ms -> {} commands, {} elements (a full diff: {:.2} ms, same elements: {})",
        journal.commands.len(),
        journal.element_count(),
        ms(t),
        inc.element_count() == journal.element_count()
    );
    // Many relabels, one at a time (what weftd does per event), averaged.
    let n = 1000;
    let t = Instant::now();
    for i in 0..n {
        let key = Key::new(format!("ns{}", i % 100), format!("pod{i}"));
        let mut p = compiler.model().pods[&key].clone();
        p.labels
            .insert("app".into(), format!("app{}", (i + 7) % 20));
        compiler.set_pod(p);
        let changes = compiler.take_changes();
        let _ = changes.batch(Some(&before), compiler.ruleset());
    }
    println!(
        "{n} relabels through the incremental Compiler (update + journal batch each): {:.3} ms per relabel",
        ms(t) / n as f64
    );

    // One policy's port changed.
    let mut changed = m.clone();
    let obj = serde_json::from_value(json!({ "metadata": { "namespace": "ns0", "name": "pol0" },
        "spec": { "podSelector": { "matchLabels": { "app": "app0" } },
                  "ingress": [{ "from": [{ "podSelector": { "matchLabels": { "tier": "0" } } }], "ports": [{ "port": 9090 }] }] } }))
    .unwrap();
    changed.set_policy(k8s::policy(&obj).unwrap());
    let policy_diff = diff(&desired, &compile(&changed, &opts));
    let mut per_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &policy_diff.commands {
        *per_kind
            .entry(match c {
                weft_policy::Command::FlushChain(_) => "flush chain",
                weft_policy::Command::AddRule(..) => "add rule",
                _ => "other",
            })
            .or_default() += 1;
    }
    println!(
        "policy port change: {} commands {per_kind:?}",
        policy_diff.commands.len()
    );
    println!(
        "RSS so far (model, 3 rulesets, batches): {} MiB",
        rss_kib() / 1024
    );

    // The kernel: a fresh netns of this thread's own.
    let kernel = std::thread::spawn(move || {
        // SAFETY: affects only this thread.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            println!("kernel: skipped ({})", std::io::Error::last_os_error());
            return;
        }
        let mut applier = Applier::new();
        let t = Instant::now();
        match applier.apply(&desired) {
            Ok(s) => println!(
                "kernel cold program: {:.0} ms ({} commands, {} KiB)",
                ms(t),
                s.commands,
                s.json_bytes / 1024
            ),
            Err(e) => {
                println!("kernel cold program failed: {e}");
                return;
            }
        }
        let t = Instant::now();
        applier.apply(&after).unwrap();
        println!(
            "kernel: one pod relabel applied in {:.1} ms (one nft exec)",
            ms(t)
        );
        let t = Instant::now();
        applier.apply(&desired).unwrap();
        println!("kernel: relabel back in {:.1} ms", ms(t));
        let t = Instant::now();
        let mut restart = Applier::new();
        restart.apply(&desired).unwrap();
        println!(
            "kernel: restart rebuild (atomic replace) in {:.0} ms",
            ms(t)
        );
    });
    kernel.join().unwrap();
}
