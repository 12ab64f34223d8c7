//! The upstream conformance model (kubernetes test/e2e/network/netpol): namespaces x, y, z
//! labelled ns=<name>; pods a, b, c labelled pod=<name>, serving 80 and 81 over TCP and UDP
//! with the named ports serve-<port>-<proto>. Shared by the evaluator truth tables
//! (conformance.rs) and the kernel tests (kernel.rs).

#![allow(dead_code)]

pub mod cases;
pub mod lab;
pub mod random;

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::{json, Value};
use weft_policy::{
    evaluate, k8s, Endpoint, Key, Labels, Model, NamedPort, Namespace, Pod, Policy, Protocol,
};

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const PODS: [&str; 3] = ["a", "b", "c"];

/// Node of each pod (1 or 2) and its host part: x/* and y/a on node 1, the rest on node 2, so
/// every case has same-node (bridged) and cross-node (routed) pairs.
pub fn placement(ns: &str, pod: &str) -> (u8, u8) {
    let i = NAMESPACES.iter().position(|n| *n == ns).unwrap() * 3
        + PODS.iter().position(|p| *p == pod).unwrap();
    if i < 4 {
        (1, 10 + i as u8)
    } else {
        (2, 10 + i as u8)
    }
}

pub fn pod_v4(ns: &str, pod: &str) -> IpAddr {
    let (node, host) = placement(ns, pod);
    IpAddr::from([10, 244, node, host])
}

pub fn pod_v6(ns: &str, pod: &str) -> IpAddr {
    let (node, host) = placement(ns, pod);
    format!("fd00:10:244:{node}::{host}").parse().unwrap()
}

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The 3x3 model as node `node` sees it (local = on that node).
pub fn xyz_model(node: u8) -> Model {
    let mut m = Model::new();
    for ns in NAMESPACES {
        m.set_namespace(Namespace::new(ns, labels(&[("ns", ns)])));
        for pod in PODS {
            let mut named_ports = Vec::new();
            for port in [80u16, 81] {
                for protocol in [Protocol::Tcp, Protocol::Udp] {
                    named_ports.push(NamedPort {
                        name: format!("serve-{port}-{}", protocol.as_str()),
                        protocol,
                        port,
                    });
                }
            }
            m.set_pod(Pod {
                namespace: ns.into(),
                name: pod.into(),
                labels: labels(&[("pod", pod)]),
                ips: vec![pod_v4(ns, pod), pod_v6(ns, pod)],
                named_ports,
                local: placement(ns, pod).0 == node,
                host_network: false,
            });
        }
    }
    m
}

pub fn all_pods() -> Vec<String> {
    NAMESPACES
        .iter()
        .flat_map(|ns| PODS.iter().map(move |p| format!("{ns}/{p}")))
        .collect()
}

/// A NetworkPolicy from its spec, through the k8s-openapi types and the conversion.
pub fn np(ns: &str, name: &str, spec: Value) -> Policy {
    let obj: k8s_openapi::api::networking::v1::NetworkPolicy = serde_json::from_value(json!({
        "metadata": { "namespace": ns, "name": name },
        "spec": spec,
    }))
    .unwrap_or_else(|e| panic!("policy {ns}/{name}: {e}"));
    k8s::policy(&obj).unwrap_or_else(|e| panic!("{e}"))
}

/// An expected reachability matrix: (from, to) over "ns/pod" names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truth(pub BTreeMap<(String, String), bool>);

fn pattern(p: &str, pod: &str) -> bool {
    let (pns, pname) = p.split_once('/').unwrap_or((p, "*"));
    let (ns, name) = pod.split_once('/').unwrap();
    (pns == "*" || pns == ns) && (pname == "*" || pname == name)
}

impl Truth {
    pub fn new(default: bool) -> Truth {
        let mut m = BTreeMap::new();
        for f in all_pods() {
            for t in all_pods() {
                m.insert((f.clone(), t), default);
            }
        }
        Truth(m)
    }

    /// Set every (from, to) matching the patterns ("x/a", "x/*", "*/a", "*").
    pub fn set(mut self, from: &str, to: &str, v: bool) -> Truth {
        for ((f, t), val) in self.0.iter_mut() {
            if pattern(from, f) && pattern(to, t) {
                *val = v;
            }
        }
        self
    }

    /// A pod always reaches itself (upstream's AllowLoopback).
    pub fn with_loopback(mut self) -> Truth {
        for ((f, t), v) in self.0.iter_mut() {
            if f == t {
                *v = true;
            }
        }
        self
    }

    /// The matrix as upstream prints it, with X for mismatches against `other`.
    pub fn render(&self, other: &Truth) -> String {
        let pods = all_pods();
        let mut s = format!("{:6}", "");
        for t in &pods {
            s += &format!("{t:5}");
        }
        s += "\n";
        for f in &pods {
            s += &format!("{f:6}");
            for t in &pods {
                let k = (f.clone(), t.clone());
                let (a, b) = (self.0[&k], other.0[&k]);
                s += match (a == b, b) {
                    (true, true) => ".    ",
                    (true, false) => "x    ",
                    (false, _) => "X    ",
                };
            }
            s += "\n";
        }
        s
    }
}

pub fn key(p: &str) -> Key {
    let (ns, name) = p.split_once('/').unwrap();
    Key::new(ns, name)
}

/// The evaluator's matrix for one protocol/port, over IPv4 or IPv6 addresses.
pub fn eval_matrix(model: &Model, protocol: Protocol, port: u16, v6: bool) -> Truth {
    eval_matrix_at(model, protocol, port, |ns, p| {
        if v6 {
            pod_v6(ns, p)
        } else {
            pod_v4(ns, p)
        }
    })
}

/// The evaluator's matrix with the pods at `addr(namespace, pod)` (e.g. a real cluster's).
pub fn eval_matrix_at(
    model: &Model,
    protocol: Protocol,
    port: u16,
    addr: impl Fn(&str, &str) -> IpAddr,
) -> Truth {
    let mut m = BTreeMap::new();
    for f in all_pods() {
        for t in all_pods() {
            let (fns, fp) = f.split_once('/').unwrap();
            let (tns, tp) = t.split_once('/').unwrap();
            let v = evaluate(
                model,
                &Endpoint::Ip(addr(fns, fp)),
                &Endpoint::Ip(addr(tns, tp)),
                protocol,
                port,
            );
            m.insert((f.clone(), t.clone()), v.allowed);
        }
    }
    Truth(m)
}

/// Why each mismatch: the evaluator's reasons.
pub fn explain(
    model: &Model,
    expected: &Truth,
    actual: &Truth,
    protocol: Protocol,
    port: u16,
) -> String {
    let mut s = String::new();
    for (k, v) in &expected.0 {
        if actual.0[k] != *v {
            let verdict = evaluate(
                model,
                &Endpoint::Pod(key(&k.0)),
                &Endpoint::Pod(key(&k.1)),
                protocol,
                port,
            );
            s += &format!("  {} -> {}: expected {v}, evaluator: {verdict}\n", k.0, k.1);
        }
    }
    s
}
