//! A synthetic NetworkPolicy workload for benchmarks (the `bench` example and `weft-bench
//! policy`): the same policies whether they are fed to the model directly or created through a
//! kube-apiserver. Pods carry `app=app<i % 20>`, `tier=<i % 3>` and a container port named
//! `http`; namespaces `ns<n>` carry `team=t<n % 10>`.

use serde_json::{json, Value};

/// The `spec` of synthetic policy `p`: four shapes in turn (pod selector + port, namespace
/// selector + named port, egress with ipBlock/except and DNS, allow-all-from-namespace).
pub fn policy_spec(p: usize) -> Value {
    match p % 4 {
        0 => json!({ "podSelector": { "matchLabels": { "app": format!("app{}", p % 20) } },
            "ingress": [{ "from": [{ "podSelector": { "matchLabels": { "tier": "0" } } }], "ports": [{ "port": 8080 }] }] }),
        1 => json!({ "podSelector": { "matchLabels": { "tier": "1" } },
            "ingress": [{ "from": [{ "namespaceSelector": { "matchLabels": { "team": format!("t{}", p % 10) } } }],
                          "ports": [{ "port": "http" }] }] }),
        2 => {
            json!({ "podSelector": { "matchExpressions": [{ "key": "app", "operator": "In", "values": [format!("app{}", p % 20), "app1"] }] },
            "policyTypes": ["Egress"],
            "egress": [{ "to": [{ "ipBlock": { "cidr": "10.0.0.0/8", "except": [format!("10.{}.0.0/16", p % 200)] } }] },
                       { "to": [{ "namespaceSelector": {}, "podSelector": { "matchLabels": { "app": "dns" } } }], "ports": [{ "port": 53, "protocol": "UDP" }] }] })
        }
        _ => json!({ "podSelector": {}, "ingress": [{ "from": [{ "podSelector": {} }] }] }),
    }
}

/// Synthetic policy `p` as a NetworkPolicy object, in namespace `ns<p % namespaces>`.
pub fn policy_object(p: usize, namespaces: usize) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": { "namespace": format!("ns{}", p % namespaces), "name": format!("pol{p}") },
        "spec": policy_spec(p),
    })
}

/// The labels of synthetic pod `i`.
pub fn pod_labels(i: usize) -> [(&'static str, String); 2] {
    [
        ("app", format!("app{}", i % 20)),
        ("tier", format!("{}", i % 3)),
    ]
}

/// The labels of synthetic namespace `n`.
pub fn namespace_labels(n: usize) -> [(&'static str, String); 1] {
    [("team", format!("t{}", n % 10))]
}
