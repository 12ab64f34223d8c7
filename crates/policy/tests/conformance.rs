//! The upstream conformance cases as truth tables against the reference evaluator (no kernel;
//! kernel.rs runs the same cases through nftables).

mod common;

use common::cases::{cases, Case};
use common::{eval_matrix, explain, xyz_model};

fn run(case: &Case) -> Result<(), String> {
    let mut model = xyz_model(1);
    let mut errors = String::new();
    for (i, step) in case.steps.iter().enumerate() {
        step.change.apply(&mut model);
        for (protocol, port, truth) in &step.probes {
            let expected = truth.clone().with_loopback();
            for v6 in [false, true]
                .into_iter()
                .filter(|v6| !*v6 || !case.v4_only())
            {
                let actual = eval_matrix(&model, *protocol, *port, v6);
                if actual != expected {
                    errors += &format!(
                        "{} step {i} {protocol}/{port}{}:\n{}{}",
                        case.name,
                        if v6 { " (IPv6)" } else { "" },
                        actual.render(&expected),
                        explain(&model, &expected, &actual, *protocol, *port)
                    );
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn case(name: &str) {
    let all = cases();
    let c = all
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no case {name}"));
    assert!(
        !c.steps.is_empty() && c.steps.iter().all(|s| !s.probes.is_empty()),
        "{name} probes nothing"
    );
    if let Err(e) = run(c) {
        panic!("{e}");
    }
}

macro_rules! conformance {
    ($($f:ident => $name:literal),* $(,)?) => {
        $(#[test] fn $f() { case($name) })*
        const NAMES: &[&str] = &[$($name),*];
    };
}

conformance! {
    default_deny_ingress => "default-deny-ingress",
    default_deny_all => "default-deny-all",
    allow_from_pod_selector => "allow-from-pod-selector",
    allow_ingress_for_a_target_on_a_port => "allow-ingress-for-a-target-on-a-port",
    allow_from_all_namespaces => "allow-from-all-namespaces",
    allow_from_namespace_selector => "allow-from-namespace-selector",
    pod_selector_match_expressions => "pod-selector-match-expressions",
    namespace_selector_match_expressions => "namespace-selector-match-expressions",
    pod_selector_or_namespace_selector => "pod-selector-or-namespace-selector",
    pod_selector_and_namespace_selector => "pod-selector-and-namespace-selector",
    multiple_pod_selectors_and_namespace_selectors => "multiple-pod-selectors-and-namespace-selectors",
    any_of_several_pod_selectors => "any-of-several-pod-selectors",
    pod_in_another_namespace => "pod-in-another-namespace",
    ports => "ports",
    stacked_policies_union => "stacked-policies-union",
    allow_all => "allow-all",
    named_port_ingress => "named-port-ingress",
    named_port_from_namespace => "named-port-from-namespace",
    named_port_egress => "named-port-egress",
    named_port_with_different_numbers_ingress => "named-port-with-different-numbers-ingress",
    named_port_with_different_numbers_egress => "named-port-with-different-numbers-egress",
    protocol_only => "protocol-only",
    sctp_is_not_tcp => "sctp-is-not-tcp",
    udp_only_denies_tcp => "udp-only-denies-tcp",
    namespace_by_default_name_label => "namespace-by-default-name-label",
    namespace_selector_match_expressions_by_default_name_label => "namespace-selector-match-expressions-by-default-name-label",
    ports_udp => "ports-udp",
    pod_in_another_namespace_udp => "pod-in-another-namespace-udp",
    end_port => "end-port",
    multiple_ports_with_end_port => "multiple-ports-with-end-port",
    deny_ingress_from_other_namespaces => "deny-ingress-from-other-namespaces",
    deny_egress_by_pod_selector => "deny-egress-by-pod-selector",
    deny_egress_whole_namespace => "deny-egress-whole-namespace",
    ingress_and_egress_together => "ingress-and-egress-together",
    egress_to_pod_in_another_namespace => "egress-to-pod-in-another-namespace",
    client_side_egress_denies_even_if_server_allows => "client-side-egress-denies-even-if-server-allows",
    ingress_allow_all_takes_precedence => "ingress-allow-all-takes-precedence",
    egress_allow_all_takes_precedence => "egress-allow-all-takes-precedence",
    updated_policy => "updated-policy",
    updated_namespace => "updated-namespace",
    updated_pod => "updated-pod",
    deny_ingress_to_updated_pod => "deny-ingress-to-updated-pod",
    stop_enforcing_after_delete => "stop-enforcing-after-delete",
    ingress_and_egress_controlled_independently => "ingress-and-egress-controlled-independently",
    egress_to_ip_block => "egress-to-ip-block",
    egress_ip_block_except => "egress-ip-block-except",
    ip_in_cidr_and_except_admitted_by_another_peer => "ip-in-cidr-and-except-admitted-by-another-peer",
    ingress_ip_block_covering_pods => "ingress-ip-block-covering-pods",
}

#[test]
fn every_case_has_a_test() {
    let names: Vec<&str> = cases().iter().map(|c| c.name).collect();
    for n in &names {
        assert!(NAMES.contains(n), "case {n} has no test");
    }
    assert_eq!(names.len(), NAMES.len());
}
