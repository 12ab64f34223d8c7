//! O(change): what a pod, namespace or policy event costs in nft commands, and that every diff
//! is exact. A small simulator applies batches to a desired state the way nft's transaction
//! does, refusing what the kernel would refuse (a missing object, a duplicate element, deleting
//! a chain or set that is still referenced), so a diff must be complete and well ordered.

mod common;

use std::collections::BTreeSet;

use common::random::{random_model, random_policy, Rng};
use common::{np, xyz_model};
use serde_json::json;
use weft_policy::compile::{Action, Element, Match};
use weft_policy::{build, compile, diff, Batch, Command, CompileOptions, Key, Model, Pod, Ruleset};

fn simulate(state: &Ruleset, batch: &Batch) -> Result<Ruleset, String> {
    let mut s = state.clone();
    let chain_refs = |s: &Ruleset, name: &str| -> bool {
        s.chains.values().any(|c| {
            c.rules
                .iter()
                .any(|r| r.action == Action::Jump(name.into()))
        }) || s.sets.values().any(|set| {
            set.elements
                .iter()
                .any(|e| matches!(e, Element::Jump(_, c) if c == name))
        })
    };
    let set_refs = |s: &Ruleset, name: &str| -> bool {
        s.chains.values().any(|c| {
            c.rules.iter().any(|r| {
                r.matches.iter().any(|m| match m {
                    Match::InSet { set, .. } | Match::AddrPortInSet { set, .. } => set == name,
                    _ => false,
                }) || matches!(&r.action, Action::Dispatch { map, .. } if map == name)
            })
        })
    };
    for c in &batch.commands {
        match c {
            Command::ResetTable => s = Ruleset::default(),
            Command::AddChain(n, hook) => {
                if s.chains.contains_key(n) {
                    return Err(format!("chain {n} exists"));
                }
                s.chains.insert(
                    n.clone(),
                    weft_policy::compile::Chain {
                        hook: *hook,
                        rules: vec![],
                    },
                );
            }
            Command::AddSet(n, set) => {
                if s.sets.insert(n.clone(), set.clone()).is_some() {
                    return Err(format!("set {n} exists"));
                }
            }
            Command::AddElements(n, _, elems) => {
                for e in elems {
                    if let Element::Jump(_, chain) = e {
                        if !s.chains.contains_key(chain) {
                            return Err(format!("element of {n} jumps to missing chain {chain}"));
                        }
                    }
                    let set = s.sets.get_mut(n).ok_or(format!("no set {n}"))?;
                    if !set.elements.insert(e.clone()) {
                        return Err(format!("{e:?} already in {n}"));
                    }
                }
            }
            Command::DeleteElements(n, _, elems) => {
                let set = s.sets.get_mut(n).ok_or(format!("no set {n}"))?;
                for e in elems {
                    if !set.elements.remove(e) {
                        return Err(format!("{e:?} not in {n}"));
                    }
                }
            }
            Command::FlushChain(n) => s
                .chains
                .get_mut(n)
                .ok_or(format!("no chain {n}"))?
                .rules
                .clear(),
            Command::AddRule(n, r) => {
                for m in &r.matches {
                    if let Match::InSet { set, .. } | Match::AddrPortInSet { set, .. } = m {
                        if !s.sets.contains_key(set) {
                            return Err(format!("rule in {n} uses missing set {set}"));
                        }
                    }
                }
                if let Some(c) = &r.counter {
                    if !s.counters.contains_key(c) {
                        return Err(format!("rule in {n} updates missing counter {c}"));
                    }
                }
                if let Action::Jump(t) = &r.action {
                    if !s.chains.contains_key(t) {
                        return Err(format!("rule in {n} jumps to missing chain {t}"));
                    }
                }
                s.chains
                    .get_mut(n)
                    .ok_or(format!("no chain {n}"))?
                    .rules
                    .push(r.clone());
            }
            Command::DeleteChain(n) => {
                let chain = s.chains.get(n).ok_or(format!("no chain {n}"))?;
                if !chain.rules.is_empty() || chain_refs(&s, n) {
                    return Err(format!("chain {n} busy"));
                }
                s.chains.remove(n);
            }
            Command::AddCounter(n, meta) => {
                if s.counters.insert(n.clone(), meta.clone()).is_some() {
                    return Err(format!("counter {n} exists"));
                }
            }
            Command::DeleteCounter(n) => {
                let used = s
                    .chains
                    .values()
                    .any(|c| c.rules.iter().any(|r| r.counter.as_ref() == Some(n)));
                if used {
                    return Err(format!("counter {n} busy"));
                }
                s.counters.remove(n).ok_or(format!("no counter {n}"))?;
            }
            Command::DeleteSet(n, _) => {
                if set_refs(&s, n) {
                    return Err(format!("set {n} busy"));
                }
                s.sets.remove(n).ok_or(format!("no set {n}"))?;
            }
        }
    }
    Ok(s)
}

/// With the named counters of /metrics: they must be created before and deleted after the
/// rules that update them, and survive a policy's rewrite.
fn opts() -> CompileOptions {
    CompileOptions {
        counters: true,
        ..Default::default()
    }
}

/// The xyz model with a realistic mix of policies.
fn base() -> Model {
    let mut m = xyz_model(1);
    for p in [
        np(
            "x",
            "deny-all",
            json!({ "podSelector": {}, "policyTypes": ["Ingress", "Egress"] }),
        ),
        np(
            "x",
            "web",
            json!({ "podSelector": { "matchLabels": { "pod": "a" } },
            "ingress": [{ "from": [{ "namespaceSelector": { "matchLabels": { "ns": "y" } } }], "ports": [{ "port": "serve-80-tcp" }] }] }),
        ),
        np(
            "y",
            "from-b",
            json!({ "podSelector": { "matchLabels": { "pod": "a" } },
            "ingress": [{ "from": [{ "podSelector": { "matchLabels": { "pod": "b" } }, "namespaceSelector": {} }] }],
            "egress": [{ "to": [{ "ipBlock": { "cidr": "10.0.0.0/8", "except": ["10.244.0.0/16"] } }] }] }),
        ),
        np(
            "z",
            "isolated",
            json!({ "podSelector": { "matchLabels": { "role": "isolated" } } }),
        ),
    ] {
        m.set_policy(p);
    }
    m
}

/// diff(old, new) applied to old gives new, and every command is about `allowed` objects or
/// is an element change.
fn check(old: &Model, new: &Model) -> Batch {
    let (a, b) = (compile(old, &opts()), compile(new, &opts()));
    let batch = diff(&a, &b);
    assert_eq!(simulate(&a, &batch).expect("diff refused"), b);
    batch
}

fn only_elements(batch: &Batch) {
    assert!(!batch.is_empty());
    let other: Vec<&Command> = batch
        .commands
        .iter()
        .filter(|c| !c.is_element_op())
        .collect();
    assert!(other.is_empty(), "not element changes: {other:#?}");
}

/// The non-element commands touch only `objects`.
fn touches_only(batch: &Batch, objects: &[&str]) {
    let stray: BTreeSet<&str> = batch
        .commands
        .iter()
        .filter(|c| !c.is_element_op())
        .filter_map(|c| c.object())
        .filter(|o| {
            !objects.contains(o)
                && !o.starts_with('s')
                && !o.starts_with('b')
                && !o.starts_with('e')
                && !o.starts_with('n')
        })
        .collect();
    assert!(stray.is_empty(), "touched {stray:?}: {:#?}", batch.commands);
}

#[test]
fn pod_relabel_changes_only_elements() {
    let old = base();
    let mut new = old.clone();
    // y/a is on node 1; y/from-b selected it by pod=a.
    let p = new.pods.get_mut(&Key::new("y", "a")).unwrap();
    p.labels.insert("pod".into(), "c".into());
    let batch = check(&old, &new);
    only_elements(&batch);
    // The relabelled pod: now isolated (dispatch map) and in other selector sets.
    assert!(batch.commands.iter().any(|c| c.object() == Some("in4")));
}

#[test]
fn pod_add_and_delete_change_only_elements() {
    let old = base();
    let mut new = old.clone();
    let mut pod: Pod = new.pods[&Key::new("x", "a")].clone();
    pod.name = "d".into();
    pod.ips = vec![
        "10.244.1.99".parse().unwrap(),
        "fd00:10:244:1::99".parse().unwrap(),
    ];
    new.set_pod(pod);
    let added = check(&old, &new);
    only_elements(&added);
    // Isolated by x/deny-all in both directions, both families, and in the named-port set.
    for map in ["in4", "in6", "eg4", "eg6"] {
        assert!(
            added.commands.iter().any(|c| c.object() == Some(map)),
            "{map}"
        );
    }
    only_elements(&check(&new, &old));
    let mut gone = old.clone();
    gone.remove_pod(&Key::new("y", "b"));
    only_elements(&check(&old, &gone));
}

#[test]
fn namespace_relabel_changes_only_elements() {
    let old = base();
    let mut new = old.clone();
    new.namespaces
        .get_mut("z")
        .unwrap()
        .labels
        .insert("ns".into(), "y".into());
    only_elements(&check(&old, &new));
}

#[test]
fn policy_port_change_rewrites_only_its_chain() {
    let old = base();
    let mut new = old.clone();
    new.set_policy(np("x", "web", json!({ "podSelector": { "matchLabels": { "pod": "a" } },
        "ingress": [{ "from": [{ "namespaceSelector": { "matchLabels": { "ns": "y" } } }], "ports": [{ "port": 8080 }] }] })));
    let batch = check(&old, &new);
    touches_only(&batch, &["pi_x_web"]);
    assert!(batch
        .commands
        .contains(&Command::FlushChain("pi_x_web".into())));
    // The named-port sets it no longer uses go, nothing else.
    assert!(!batch
        .commands
        .iter()
        .any(|c| matches!(c, Command::FlushChain(n) if n != "pi_x_web")));
}

#[test]
fn policy_selector_change_rewrites_its_chain_and_dispatch_elements() {
    let old = base();
    let mut new = old.clone();
    new.set_policy(np(
        "z",
        "isolated",
        json!({ "podSelector": { "matchLabels": { "pod": "c" } } }),
    ));
    let batch = check(&old, &new);
    touches_only(&batch, &["pi_z_isolated", "ni_z"]);
    // The jump to it from its namespace chain stays: ni_z is not rewritten.
    assert!(!batch.commands.contains(&Command::FlushChain("ni_z".into())));
}

#[test]
fn policy_add_and_delete_touch_its_chains_and_its_dispatch_entry() {
    let old = base();
    let mut new = old.clone();
    new.set_policy(np("y", "new", json!({ "podSelector": {}, "ingress": [{ "from": [{ "ipBlock": { "cidr": "192.168.0.0/16" } }] }] })));
    let added = check(&old, &new);
    touches_only(&added, &["pi_y_new", "ni_y"]);
    assert!(added
        .commands
        .contains(&Command::AddChain("pi_y_new".into(), None)));
    let removed = check(&new, &old);
    touches_only(&removed, &["pi_y_new", "ni_y"]);
    assert!(removed
        .commands
        .contains(&Command::DeleteChain("pi_y_new".into())));
    // Its ipBlock set is deleted with it.
    assert!(removed
        .commands
        .iter()
        .any(|c| matches!(c, Command::DeleteSet(n, _) if n.starts_with("b4_"))));
}

#[test]
fn last_policy_of_a_namespace_takes_its_namespace_chain_along() {
    let old = base();
    let mut new = old.clone();
    new.remove_policy(&Key::new("z", "isolated"));
    let batch = check(&old, &new);
    assert!(batch
        .commands
        .contains(&Command::DeleteChain("ni_z".into())));
    assert!(batch
        .commands
        .contains(&Command::DeleteChain("pi_z_isolated".into())));
}

#[test]
fn build_from_anything_gives_the_desired_state() {
    let r = compile(&base(), &opts());
    let junk = compile(&random_model(7, 4), &opts());
    assert_eq!(simulate(&junk, &build(&r)).unwrap(), r);
}

/// Any two random states: the diff is accepted step by step and lands exactly on the new one.
#[test]
fn random_diffs_are_exact_and_well_ordered() {
    let mut total = 0;
    for seed in 0..300u64 {
        let a = random_model(seed, 5);
        let mut b = a.clone();
        let mut rng = Rng::new(seed + 1000);
        // An event stream: relabels, pod moves, policy replacements and deletions.
        for _ in 0..1 + rng.below(4) {
            match rng.below(4) {
                0 => {
                    let k = b.pods.keys().nth(rng.below(b.pods.len())).unwrap().clone();
                    b.pods
                        .get_mut(&k)
                        .unwrap()
                        .labels
                        .insert("app".into(), "db".into());
                }
                1 => {
                    let k = b.pods.keys().nth(rng.below(b.pods.len())).unwrap().clone();
                    b.remove_pod(&k);
                }
                2 => {
                    let name = format!("p{}", rng.below(5));
                    b.set_policy(random_policy(&mut rng, &name));
                }
                _ => {
                    if let Some(k) = b.policies.keys().next().cloned() {
                        b.remove_policy(&k);
                    }
                }
            }
        }
        let (ra, rb) = (compile(&a, &opts()), compile(&b, &opts()));
        let batch = diff(&ra, &rb);
        total += batch.commands.len();
        assert_eq!(
            simulate(&ra, &batch).unwrap_or_else(|e| panic!("seed {seed}: {e}")),
            rb,
            "seed {seed}"
        );
        assert_eq!(
            simulate(&rb, &diff(&rb, &ra)).unwrap(),
            ra,
            "seed {seed} back"
        );
    }
    assert!(total > 0);
}

/// The incremental Compiler equals a full compile after every event of random streams, shared
/// addresses (a pod's IP taken by another before its deletion is seen) included.
#[test]
fn incremental_compiler_equals_full_compile() {
    use weft_policy::{Compiler, NamedPort, Protocol};
    let mut events = 0;
    let mut journalled = 0;
    for seed in 0..120u64 {
        let mut rng = Rng::new(seed ^ 0xfeed);
        let model = random_model(seed, 4);
        let mut c = Compiler::new(model, opts());
        assert_eq!(c.ruleset().clone(), compile(c.model(), &opts()));
        // What the kernel would hold, programmed from the journalled changes only.
        let mut programmed: Option<Ruleset> = None;
        for step in 0..25 {
            let keys: Vec<Key> = c.model().pods.keys().cloned().collect();
            let pick = |rng: &mut Rng| keys[rng.below(keys.len())].clone();
            match rng.below(9) {
                0 | 1 => {
                    let mut p = c.model().pods[&pick(&mut rng)].clone();
                    let app = rng.pick(&["web", "db", "cache"]).to_string();
                    p.labels.insert("app".into(), app);
                    if rng.chance(30) {
                        p.labels.remove("pod");
                    }
                    c.set_pod(p);
                }
                2 => {
                    // Take another pod's address (its deletion not seen yet).
                    let mut p = c.model().pods[&pick(&mut rng)].clone();
                    p.ips = c.model().pods[&pick(&mut rng)].ips.clone();
                    c.set_pod(p);
                }
                3 => {
                    let mut p = c.model().pods[&pick(&mut rng)].clone();
                    p.local = !p.local;
                    if rng.chance(30) {
                        p.host_network = !p.host_network;
                    }
                    p.named_ports.push(NamedPort {
                        name: "http".into(),
                        protocol: Protocol::Tcp,
                        port: 80 + rng.below(3) as u16,
                    });
                    c.set_pod(p);
                }
                4 => {
                    let k = pick(&mut rng);
                    let mut p = c.model().pods[&k].clone();
                    c.remove_pod(&k);
                    // Back later, maybe elsewhere and in a namespace without an object.
                    if rng.chance(50) {
                        p.namespace = "w".into();
                        p.ips = vec![format!("10.244.3.{}", rng.below(250)).parse().unwrap()];
                        c.set_pod(p);
                    }
                }
                5 => {
                    let ns = rng.pick(&["x", "y", "z"]).to_string();
                    let mut n = c.model().namespaces.get(&ns).cloned().unwrap_or_else(|| {
                        weft_policy::Namespace::new(ns.clone(), Default::default())
                    });
                    n.labels
                        .insert("team".into(), rng.pick(&["red", "blue"]).to_string());
                    c.set_namespace(n);
                }
                6 => {
                    let name = format!("p{}", rng.below(5));
                    c.set_policy(random_policy(&mut rng, &name));
                }
                7 => {
                    if let Some(k) = c.model().policies.keys().next().cloned() {
                        c.remove_policy(&k);
                    }
                }
                _ => {
                    let ns = rng.pick(&["x", "y", "z"]).to_string();
                    if rng.chance(50) {
                        c.remove_namespace(&ns);
                    } else {
                        c.set_namespace(weft_policy::Namespace::new(ns, Default::default()));
                    }
                }
            }
            events += 1;
            let desired = c.ruleset().clone();
            assert_eq!(
                desired,
                compile(c.model(), &opts()),
                "seed {seed} step {step}"
            );
            // Bursts of 1-3 events between kernel updates.
            if rng.chance(50) {
                let changes = c.take_changes();
                let batch = changes.batch(programmed.as_ref(), &desired);
                if programmed.is_some() && !changes.full {
                    assert!(
                        batch.commands.iter().all(|c| c.is_element_op()),
                        "seed {seed} step {step}: {batch:?}"
                    );
                }
                let start = programmed.clone().unwrap_or_default();
                let after = simulate(&start, &batch)
                    .unwrap_or_else(|e| panic!("seed {seed} step {step}: {e}\n{batch:?}"));
                assert_eq!(after, desired, "seed {seed} step {step}");
                let mut record = programmed.take().unwrap_or_else(|| desired.clone());
                changes.apply_to(&mut record, &desired);
                assert_eq!(record, desired, "seed {seed} step {step}");
                programmed = Some(record);
                journalled += 1;
            }
        }
    }
    assert!(events > 0 && journalled > 0);
}
