//! The upstream NetworkPolicy conformance cases (test/e2e/network/netpol/network_policy.go),
//! plus endPort, named ports with different numbers per pod and ipBlocks covering pods, each
//! as policies and the expected matrix per probe. Loopback (a pod to itself) is always allowed.
//!
//! The changes are data (policies as their k8s JSON), so that the same cases run against the
//! evaluator, through nft in network namespaces, and with kubectl on a real cluster
//! (crates/lab/tests/kube_netpol.rs includes this module).

use serde_json::{json, Value};
use weft_policy::{Key, Model, NamedPort, Protocol};

use super::Truth;

/// A NetworkPolicy as written: namespace, name, spec (JSON).
#[derive(Debug, Clone)]
pub struct Np {
    pub namespace: &'static str,
    pub name: &'static str,
    pub spec: Value,
}

impl Np {
    pub fn policy(&self) -> weft_policy::Policy {
        super::np(self.namespace, self.name, self.spec.clone())
    }
}

/// What a step changes in the cluster.
#[derive(Debug, Clone)]
pub enum Change {
    /// Create or replace these policies.
    Apply(Vec<Np>),
    /// Delete policy (namespace, name).
    Delete(&'static str, &'static str),
    /// Set label key=value on pod "ns/name".
    LabelPod(&'static str, &'static str, &'static str),
    /// Set label key=value on a namespace.
    LabelNs(&'static str, &'static str, &'static str),
    /// Pod "ns/name" has the named TCP port (name, number).
    NamedPort(&'static str, &'static str, u16),
    All(Vec<Change>),
}

impl Change {
    pub fn apply(&self, m: &mut Model) {
        match self {
            Change::Apply(nps) => nps.iter().for_each(|p| m.set_policy(p.policy())),
            Change::Delete(ns, name) => {
                m.remove_policy(&Key::new(*ns, *name));
            }
            Change::LabelPod(pod, k, v) => {
                let (ns, name) = pod.split_once('/').unwrap();
                let p = m.pods.get_mut(&Key::new(ns, name)).unwrap();
                p.labels.insert(k.to_string(), v.to_string());
            }
            Change::LabelNs(ns, k, v) => {
                let n = m.namespaces.get_mut(*ns).unwrap();
                n.labels.insert(k.to_string(), v.to_string());
            }
            Change::NamedPort(pod, name, port) => {
                let (ns, n) = pod.split_once('/').unwrap();
                m.pods
                    .get_mut(&Key::new(ns, n))
                    .unwrap()
                    .named_ports
                    .push(NamedPort {
                        name: name.to_string(),
                        protocol: Protocol::Tcp,
                        port: *port,
                    });
            }
            Change::All(changes) => changes.iter().for_each(|c| c.apply(m)),
        }
    }
}

pub struct Step {
    pub change: Change,
    pub probes: Vec<(Protocol, u16, Truth)>,
}

pub struct Case {
    pub name: &'static str,
    pub steps: Vec<Step>,
}

impl Case {
    /// ipBlock cases name IPv4 addresses: their tables hold for IPv4 only.
    pub fn v4_only(&self) -> bool {
        self.name.contains("ip-block") || self.name.contains("cidr")
    }
}

const TCP: Protocol = Protocol::Tcp;
const UDP: Protocol = Protocol::Udp;

fn np(namespace: &'static str, name: &'static str, spec: Value) -> Np {
    Np {
        namespace,
        name,
        spec,
    }
}

fn add(policies: Vec<Np>) -> Change {
    Change::Apply(policies)
}

fn step(change: Change, probes: Vec<(Protocol, u16, Truth)>) -> Step {
    Step { change, probes }
}

fn one(name: &'static str, policies: Vec<Np>, probes: Vec<(Protocol, u16, Truth)>) -> Case {
    Case {
        name,
        steps: vec![step(add(policies), probes)],
    }
}

fn label_pod(pod: &'static str, k: &'static str, v: &'static str) -> Change {
    Change::LabelPod(pod, k, v)
}

fn label_ns(ns: &'static str, k: &'static str, v: &'static str) -> Change {
    Change::LabelNs(ns, k, v)
}

fn named_port(pod: &'static str, name: &'static str, port: u16) -> Change {
    Change::NamedPort(pod, name, port)
}

fn all(changes: Vec<Change>) -> Change {
    Change::All(changes)
}

fn t() -> Truth {
    Truth::new(true)
}

fn pa() -> serde_json::Value {
    json!({ "matchLabels": { "pod": "a" } })
}

pub fn cases() -> Vec<Case> {
    let deny_x_ingress = || {
        np(
            "x",
            "deny-ingress",
            json!({ "podSelector": {}, "policyTypes": ["Ingress"] }),
        )
    };
    vec![
        one(
            "default-deny-ingress",
            vec![deny_x_ingress()],
            vec![
                (TCP, 80, t().set("*", "x/*", false)),
                (UDP, 81, t().set("*", "x/*", false)),
            ],
        ),
        one(
            "default-deny-all",
            vec![np("x", "deny-all", json!({ "podSelector": {}, "policyTypes": ["Ingress", "Egress"] }))],
            vec![(TCP, 80, t().set("*", "x/*", false).set("x/*", "*", false))],
        ),
        one(
            "allow-from-pod-selector",
            vec![np("x", "a-from-b", json!({ "podSelector": pa(),
                "ingress": [{ "from": [{ "podSelector": { "matchLabels": { "pod": "b" } } }] }] }))],
            vec![(TCP, 80, t().set("*", "x/a", false).set("x/b", "x/a", true))],
        ),
        one(
            "allow-ingress-for-a-target-on-a-port",
            vec![
                deny_x_ingress(),
                np("x", "a-80", json!({ "podSelector": pa(), "ingress": [{ "ports": [{ "port": 80 }] }] })),
            ],
            vec![
                (TCP, 80, t().set("*", "x/*", false).set("*", "x/a", true)),
                (TCP, 81, t().set("*", "x/*", false)),
            ],
        ),
        one(
            "allow-from-all-namespaces",
            vec![np("x", "all-ns", json!({ "podSelector": pa(),
                "ingress": [{ "from": [{ "namespaceSelector": {} }] }] }))],
            vec![(TCP, 80, t())],
        ),
        one(
            "allow-from-namespace-selector",
            vec![np("x", "from-y", json!({ "podSelector": pa(),
                "ingress": [{ "from": [{ "namespaceSelector": { "matchLabels": { "ns": "y" } } }] }] }))],
            vec![(TCP, 80, t().set("*", "x/a", false).set("y/*", "x/a", true))],
        ),
        one(
            "pod-selector-match-expressions",
            vec![np("x", "expr", json!({ "podSelector": pa(),
                "ingress": [{ "from": [{ "podSelector": { "matchExpressions": [
                    { "key": "pod", "operator": "In", "values": ["b"] }] } }] }] }))],
            vec![(TCP, 80, t().set("*", "x/a", false).set("x/b", "x/a", true))],
        ),
        one(
            "namespace-selector-match-expressions",
            vec![np("x", "expr", json!({ "podSelector": pa(),
                "ingress": [{ "from": [{ "namespaceSelector": { "matchExpressions": [
                    { "key": "ns", "operator": "In", "values": ["y"] }] } }] }] }))],
            vec![(TCP, 80, t().set("*", "x/a", false).set("y/*", "x/a", true))],
        ),
        one(
            "pod-selector-or-namespace-selector",
            vec![np("x", "or", json!({ "podSelector": pa(),
                "ingress": [{ "from": [
                    { "namespaceSelector": { "matchExpressions": [{ "key": "ns", "operator": "NotIn", "values": ["x"] }] } },
                    { "podSelector": { "matchLabels": { "pod": "b" } } }] }] }))],
            vec![(
                TCP,
                80,
                t().set("*", "x/a", false)
                    .set("y/*", "x/a", true)
                    .set("z/*", "x/a", true)
                    .set("x/b", "x/a", true),
            )],
        ),
        one(
            "pod-selector-and-namespace-selector",
            vec![np("x", "and", json!({ "podSelector": pa(),
                "ingress": [{ "from": [{
                    "namespaceSelector": { "matchExpressions": [{ "key": "ns", "operator": "NotIn", "values": ["x"] }] },
                    "podSelector": { "matchLabels": { "pod": "b" } } }] }] }))],
            vec![(TCP, 80, t().set("*", "x/a", false).set("y/b", "x/a", true).set("z/b", "x/a", true))],
        ),
        one(
            "multiple-pod-selectors-and-namespace-selectors",
            vec![np("x", "multi", json!({ "podSelector": pa(),
                "ingress": [{ "from": [{
                    "namespaceSelector": { "matchExpressions": [{ "key": "ns", "operator": "NotIn", "values": ["x"] }] },
                    "podSelector": { "matchExpressions": [{ "key": "pod", "operator": "In", "values": ["b", "c"] }] } }] }] }))],
            vec![(TCP, 80, t().set("*", "x/a", false).set("y/b", "x/a", true).set("y/c", "x/a", true)
                .set("z/b", "x/a", true).set("z/c", "x/a", true))],
        ),
        one(
            "any-of-several-pod-selectors",
            vec![np("x", "any", json!({ "podSelector": pa(),
                "ingress": [{ "from": [
                    { "podSelector": { "matchLabels": { "pod": "b" } } },
                    { "podSelector": { "matchLabels": { "pod": "c" } } }] }] }))],
            vec![(TCP, 80, t().set("*", "x/a", false).set("x/b", "x/a", true).set("x/c", "x/a", true))],
        ),
        one(
            "pod-in-another-namespace",
            vec![np("x", "ya", json!({ "podSelector": pa(),
                "ingress": [{ "from": [{ "namespaceSelector": { "matchLabels": { "ns": "y" } },
                                          "podSelector": { "matchLabels": { "pod": "a" } } }] }] }))],
            vec![(TCP, 80, t().set("*", "x/a", false).set("y/a", "x/a", true))],
        ),
        one(
            "ports",
            vec![np("x", "y-81", json!({ "podSelector": pa(),
                "ingress": [{ "from": [{ "namespaceSelector": { "matchLabels": { "ns": "y" } } }],
                              "ports": [{ "port": 81, "protocol": "TCP" }] }] }))],
            vec![
                (TCP, 80, t().set("*", "x/a", false)),
                (TCP, 81, t().set("*", "x/a", false).set("y/*", "x/a", true)),
            ],
        ),
        one(
            "stacked-policies-union",
            vec![
                np("x", "y-81", json!({ "podSelector": pa(),
                    "ingress": [{ "from": [{ "namespaceSelector": { "matchLabels": { "ns": "y" } } }], "ports": [{ "port": 81 }] }] })),
                np("x", "y-80", json!({ "podSelector": pa(),
                    "ingress": [{ "from": [{ "namespaceSelector": { "matchLabels": { "ns": "y" } } }], "ports": [{ "port": 80 }] }] })),
            ],
            vec![
                (TCP, 80, t().set("*", "x/a", false).set("y/*", "x/a", true)),
                (TCP, 81, t().set("*", "x/a", false).set("y/*", "x/a", true)),
            ],
        ),
        one(
            "allow-all",
            vec![np("x", "allow-all", json!({ "podSelector": {}, "ingress": [{}] }))],
            vec![(TCP, 80, t()), (UDP, 81, t())],
        ),
        one(
            "named-port-ingress",
            vec![np("x", "named", json!({ "podSelector": {}, "ingress": [{ "ports": [{ "port": "serve-81-tcp" }] }] }))],
            vec![(TCP, 81, t()), (TCP, 80, t().set("*", "x/*", false))],
        ),
        one(
            "named-port-from-namespace",
            vec![np("x", "named-y", json!({ "podSelector": {},
                "ingress": [{ "from": [{ "namespaceSelector": { "matchLabels": { "ns": "y" } } }],
                              "ports": [{ "port": "serve-80-tcp" }] }] }))],
            vec![
                (TCP, 80, t().set("*", "x/*", false).set("y/*", "x/*", true)),
                (TCP, 81, t().set("*", "x/*", false)),
            ],
        ),
        one(
            "named-port-egress",
            vec![np("x", "named-egress", json!({ "podSelector": {}, "policyTypes": ["Egress"],
                "egress": [{ "ports": [{ "port": "serve-80-udp", "protocol": "UDP" }] }] }))],
            vec![(UDP, 80, t()), (UDP, 81, t().set("x/*", "*", false))],
        ),
        one(
            "named-port-with-different-numbers-ingress",
            vec![],
            vec![],
        ),
        one(
            "protocol-only",
            vec![np("x", "tcp-only", json!({ "podSelector": pa(), "ingress": [{ "ports": [{ "protocol": "TCP" }] }] }))],
            vec![(TCP, 81, t()), (UDP, 80, t().set("*", "x/a", false))],
        ),
        one(
            "sctp-is-not-tcp",
            vec![np("x", "sctp", json!({ "podSelector": pa(), "ingress": [{ "ports": [{ "protocol": "SCTP", "port": 80 }] }] }))],
            vec![(TCP, 80, t().set("*", "x/a", false))],
        ),
        one(
            "udp-only-denies-tcp",
            vec![np("x", "udp", json!({ "podSelector": pa(), "ingress": [{ "ports": [{ "protocol": "UDP", "port": 81 }] }] }))],
            vec![(TCP, 81, t().set("*", "x/a", false)), (UDP, 81, t())],
        ),
        one(
            "namespace-by-default-name-label",
            vec![np("x", "by-name", json!({ "podSelector": pa(),
                "ingress": [{ "from": [{ "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": "y" } } }] }] }))],
            vec![(TCP, 80, t().set("*", "x/a", false).set("y/*", "x/a", true))],
        ),
        one(
            "namespace-selector-match-expressions-by-default-name-label",
            vec![np("x", "by-name-expr", json!({ "podSelector": pa(),
                "ingress": [{ "from": [{ "namespaceSelector": { "matchExpressions": [
                    { "key": "kubernetes.io/metadata.name", "operator": "In", "values": ["y"] }] } }] }] }))],
            vec![(TCP, 80, t().set("*", "x/a", false).set("y/*", "x/a", true))],
        ),
        one(
            "ports-udp",
            vec![np("x", "y-udp-81", json!({ "podSelector": pa(),
                "ingress": [{ "from": [{ "namespaceSelector": { "matchLabels": { "ns": "y" } } }],
                              "ports": [{ "port": 81, "protocol": "UDP" }] }] }))],
            vec![
                (UDP, 81, t().set("*", "x/a", false).set("y/*", "x/a", true)),
                (UDP, 80, t().set("*", "x/a", false)),
                (TCP, 81, t().set("*", "x/a", false)),
            ],
        ),
        one(
            "pod-in-another-namespace-udp",
            vec![np("x", "ya", json!({ "podSelector": pa(),
                "ingress": [{ "from": [{ "namespaceSelector": { "matchLabels": { "ns": "y" } },
                                          "podSelector": { "matchLabels": { "pod": "a" } } }] }] }))],
            vec![(UDP, 80, t().set("*", "x/a", false).set("y/a", "x/a", true))],
        ),
        one(
            "end-port",
            vec![np("x", "range", json!({ "podSelector": pa(),
                "ingress": [{ "from": [{ "namespaceSelector": { "matchLabels": { "ns": "y" } } }],
                              "ports": [{ "port": 81, "endPort": 82 }] }] }))],
            vec![
                (TCP, 80, t().set("*", "x/a", false)),
                (TCP, 81, t().set("*", "x/a", false).set("y/*", "x/a", true)),
            ],
        ),
        one(
            "multiple-ports-with-end-port",
            vec![np("x", "ranges", json!({ "podSelector": pa(),
                "ingress": [{ "ports": [{ "port": 80 }, { "port": 81, "endPort": 90 }] }] }))],
            vec![(TCP, 80, t()), (TCP, 81, t()), (UDP, 81, t().set("*", "x/a", false))],
        ),
        one(
            "deny-ingress-from-other-namespaces",
            vec![np("x", "same-ns", json!({ "podSelector": {}, "ingress": [{ "from": [{ "podSelector": {} }] }] }))],
            vec![(TCP, 80, t().set("*", "x/*", false).set("x/*", "x/*", true))],
        ),
        one(
            "deny-egress-by-pod-selector",
            vec![np("x", "a-no-egress", json!({ "podSelector": pa(), "policyTypes": ["Egress"] }))],
            vec![(TCP, 80, t().set("x/a", "*", false)), (UDP, 80, t().set("x/a", "*", false))],
        ),
        one(
            "deny-egress-whole-namespace",
            vec![np("x", "no-egress", json!({ "podSelector": {}, "policyTypes": ["Egress"] }))],
            vec![(TCP, 81, t().set("x/*", "*", false))],
        ),
        one(
            "ingress-and-egress-together",
            vec![np("x", "both", json!({ "podSelector": pa(), "policyTypes": ["Ingress", "Egress"],
                "ingress": [{ "from": [{ "podSelector": { "matchLabels": { "pod": "b" } } }] }],
                "egress": [{ "to": [{ "podSelector": { "matchLabels": { "pod": "b" } } }] }] }))],
            vec![(TCP, 80, t().set("*", "x/a", false).set("x/b", "x/a", true)
                .set("x/a", "*", false).set("x/a", "x/b", true))],
        ),
        one(
            "egress-to-pod-in-another-namespace",
            vec![np("x", "to-ya", json!({ "podSelector": pa(), "policyTypes": ["Egress"],
                "egress": [{ "to": [{ "namespaceSelector": { "matchLabels": { "ns": "y" } },
                                      "podSelector": { "matchLabels": { "pod": "a" } } }] }] }))],
            vec![(TCP, 80, t().set("x/a", "*", false).set("x/a", "y/a", true))],
        ),
        one(
            "client-side-egress-denies-even-if-server-allows",
            vec![
                np("x", "to-ya", json!({ "podSelector": pa(), "policyTypes": ["Egress"],
                    "egress": [{ "to": [{ "namespaceSelector": { "matchLabels": { "ns": "y" } },
                                          "podSelector": { "matchLabels": { "pod": "a" } } }] }] })),
                np("y", "allow-all", json!({ "podSelector": {}, "ingress": [{}] })),
            ],
            vec![(TCP, 80, t().set("x/a", "*", false).set("x/a", "y/a", true))],
        ),
        Case {
            name: "ingress-allow-all-takes-precedence",
            steps: vec![
                step(
                    add(vec![np("x", "a-80", json!({ "podSelector": pa(), "ingress": [{ "ports": [{ "port": 80 }] }] }))]),
                    vec![(TCP, 81, t().set("*", "x/a", false)), (TCP, 80, t())],
                ),
                step(
                    add(vec![np("x", "allow-all", json!({ "podSelector": {}, "ingress": [{}] }))]),
                    vec![(TCP, 81, t())],
                ),
            ],
        },
        Case {
            name: "egress-allow-all-takes-precedence",
            steps: vec![
                step(
                    add(vec![np("x", "a-80", json!({ "podSelector": pa(), "policyTypes": ["Egress"],
                        "egress": [{ "ports": [{ "port": 80 }] }] }))]),
                    vec![(TCP, 81, t().set("x/a", "*", false)), (TCP, 80, t())],
                ),
                step(
                    add(vec![np("x", "allow-all", json!({ "podSelector": {}, "policyTypes": ["Egress"], "egress": [{}] }))]),
                    vec![(TCP, 81, t())],
                ),
            ],
        },
        Case {
            name: "updated-policy",
            steps: vec![
                step(
                    add(vec![np("x", "p", json!({ "podSelector": pa(), "ingress": [{ "ports": [{ "port": 81 }] }] }))]),
                    vec![(TCP, 80, t().set("*", "x/a", false)), (TCP, 81, t())],
                ),
                step(
                    add(vec![np("x", "p", json!({ "podSelector": pa(), "ingress": [{ "ports": [{ "port": 80 }] }] }))]),
                    vec![(TCP, 80, t()), (TCP, 81, t().set("*", "x/a", false))],
                ),
            ],
        },
        Case {
            name: "updated-namespace",
            steps: vec![
                step(
                    add(vec![np("x", "p", json!({ "podSelector": pa(),
                        "ingress": [{ "from": [{ "namespaceSelector": { "matchLabels": { "ns2": "updated" } } }] }] }))]),
                    vec![(TCP, 80, t().set("*", "x/a", false))],
                ),
                step(
                    label_ns("y", "ns2", "updated"),
                    vec![(TCP, 80, t().set("*", "x/a", false).set("y/*", "x/a", true))],
                ),
            ],
        },
        Case {
            name: "updated-pod",
            steps: vec![
                step(
                    add(vec![np("x", "p", json!({ "podSelector": pa(),
                        "ingress": [{ "from": [{ "namespaceSelector": {},
                                                 "podSelector": { "matchLabels": { "pod2": "updated" } } }] }] }))]),
                    vec![(TCP, 80, t().set("*", "x/a", false))],
                ),
                step(
                    label_pod("z/b", "pod2", "updated"),
                    vec![(TCP, 80, t().set("*", "x/a", false).set("z/b", "x/a", true))],
                ),
            ],
        },
        Case {
            name: "deny-ingress-to-updated-pod",
            steps: vec![
                step(
                    add(vec![np("x", "p", json!({ "podSelector": { "matchLabels": { "target": "isolated" } },
                        "policyTypes": ["Ingress"] }))]),
                    vec![(TCP, 80, t())],
                ),
                step(
                    label_pod("x/a", "target", "isolated"),
                    vec![(TCP, 80, t().set("*", "x/a", false))],
                ),
            ],
        },
        Case {
            name: "stop-enforcing-after-delete",
            steps: vec![
                step(
                    add(vec![np("x", "deny-all", json!({ "podSelector": {}, "policyTypes": ["Ingress", "Egress"] }))]),
                    vec![(TCP, 80, t().set("*", "x/*", false).set("x/*", "*", false))],
                ),
                step(
                    Change::Delete("x", "deny-all"),
                    vec![(TCP, 80, t())],
                ),
            ],
        },
        Case {
            name: "ingress-and-egress-controlled-independently",
            steps: vec![
                step(
                    add(vec![np("x", "a-no-egress", json!({ "podSelector": pa(), "policyTypes": ["Egress"] }))]),
                    vec![(TCP, 80, t().set("x/a", "*", false))],
                ),
                step(
                    add(vec![np("x", "b-no-ingress", json!({ "podSelector": { "matchLabels": { "pod": "b" } },
                        "policyTypes": ["Ingress"] }))]),
                    vec![(TCP, 80, t().set("x/a", "*", false).set("*", "x/b", false))],
                ),
            ],
        },
        one(
            "egress-to-ip-block",
            vec![np("x", "to-yb", json!({ "podSelector": pa(), "policyTypes": ["Egress"],
                "egress": [{ "to": [{ "ipBlock": { "cidr": "10.244.2.14/32" } }] }] }))],
            vec![(TCP, 80, t().set("x/a", "*", false).set("x/a", "y/b", true))],
        ),
        one(
            "egress-ip-block-except",
            vec![np("x", "except-xb", json!({ "podSelector": pa(), "policyTypes": ["Egress"],
                "egress": [{ "to": [{ "ipBlock": { "cidr": "10.244.0.0/16", "except": ["10.244.1.11/32"] } }] }] }))],
            vec![(TCP, 80, t().set("x/a", "x/b", false))],
        ),
        one(
            "ip-in-cidr-and-except-admitted-by-another-peer",
            vec![np("x", "overlap", json!({ "podSelector": pa(), "policyTypes": ["Egress"],
                "egress": [{ "to": [
                    { "ipBlock": { "cidr": "10.244.0.0/16", "except": ["10.244.1.11/32"] } },
                    { "ipBlock": { "cidr": "10.244.1.11/32" } }] }] }))],
            vec![(TCP, 80, t())],
        ),
        one(
            "ingress-ip-block-covering-pods",
            vec![np("x", "from-node2", json!({ "podSelector": pa(),
                "ingress": [{ "from": [{ "ipBlock": { "cidr": "10.244.2.0/24", "except": ["10.244.2.14/32"] } }] }] }))],
            vec![(TCP, 80, t().set("*", "x/a", false).set("y/c", "x/a", true).set("z/*", "x/a", true))],
        ),
    ]
    .into_iter()
    .map(|c| match c.name {
        // Cases needing pod changes before the policies are written out here.
        "named-port-with-different-numbers-ingress" => Case {
            name: c.name,
            steps: vec![step(
                all(vec![
                    named_port("x/a", "web", 80),
                    named_port("x/b", "web", 81),
                    add(vec![np("x", "web", json!({ "podSelector": {}, "ingress": [{ "ports": [{ "port": "web" }] }] }))]),
                ]),
                vec![
                    (TCP, 80, t().set("*", "x/*", false).set("*", "x/a", true)),
                    (TCP, 81, t().set("*", "x/*", false).set("*", "x/b", true)),
                ],
            )],
        },
        _ => c,
    })
    .chain([Case {
        name: "named-port-with-different-numbers-egress",
        steps: vec![step(
            all(vec![
                named_port("x/a", "web", 80),
                named_port("x/b", "web", 81),
                add(vec![np("z", "to-web", json!({ "podSelector": {}, "policyTypes": ["Egress"],
                    "egress": [{ "ports": [{ "port": "web" }] }] }))]),
            ]),
            vec![
                (TCP, 80, t().set("z/*", "*", false).set("z/*", "x/a", true)),
                (TCP, 81, t().set("z/*", "*", false).set("z/*", "x/b", true)),
            ],
        )],
    }])
    .collect()
}
