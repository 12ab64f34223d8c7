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
    CompileOptions { sctp: false }
}

/// Kernel matrix vs `expected`; a "denied" where `expected` allows is probed again slowly so a
/// loaded machine does not read as a policy bug. Returns the mismatches, rendered.
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
    let suspicious = kernel
        .0
        .iter()
        .filter(|(k, v)| !**v && expected.0[*k])
        .count();
    // Many at once is a real difference, not load: do not spend seconds on each.
    for ((f, t), v) in kernel.0.iter_mut().filter(|_| suspicious <= 6) {
        if !*v && expected.0[&(f.clone(), t.clone())] {
            *v = lab.probe_slow(f, t, protocol, port, v6);
        }
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
            (step.change)(&mut model);
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
        lab.apply(&model, &no_sctp());
        for (protocol, port) in [
            (Protocol::Tcp, 80),
            (Protocol::Tcp, 81),
            (Protocol::Udp, 80),
        ] {
            let expected = eval_matrix(&model, protocol, port, false);
            denied += expected.0.values().filter(|v| !**v).count();
            errors += &compare(
                &lab,
                &model,
                &format!("seed {seed}"),
                &expected,
                protocol,
                port,
                false,
            );
        }
    }
    assert!(errors.is_empty(), "{errors}");
    // The generator must produce denials, or the comparison proves little.
    assert!(denied > 0);
    eprintln!("{seeds} random models, {denied} denied pairs, kernel = evaluator");
}
