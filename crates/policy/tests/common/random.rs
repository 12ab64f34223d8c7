//! Seeded random labels, named ports and policies over the x/y/z model (bounded, so the kernel
//! lab can probe them): the differential test and the O(change) properties use them.

use serde_json::{json, Value};
use weft_policy::{Key, Model, NamedPort, Protocol};

use super::{np, xyz_model, NAMESPACES, PODS};

/// xorshift64*: deterministic per seed, no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const APPS: [&str; 3] = ["web", "db", "cache"];
const TEAMS: [&str; 2] = ["red", "blue"];

/// Random pod and namespace labels and named ports on the 3x3 model.
pub fn random_labels(rng: &mut Rng, m: &mut Model) {
    for ns in NAMESPACES {
        if rng.chance(60) {
            let team = *rng.pick(&TEAMS);
            m.namespaces
                .get_mut(ns)
                .unwrap()
                .labels
                .insert("team".into(), team.into());
        }
        for pod in PODS {
            let p = m.pods.get_mut(&Key::new(ns, pod)).unwrap();
            if rng.chance(70) {
                p.labels.insert("app".into(), rng.pick(&APPS).to_string());
            }
            if rng.chance(30) {
                p.labels.insert("tier".into(), "front".into());
            }
            if rng.chance(60) {
                p.named_ports.push(NamedPort {
                    name: "http".into(),
                    protocol: Protocol::Tcp,
                    port: *rng.pick(&[80, 81]),
                });
            }
            if rng.chance(50) {
                p.named_ports.push(NamedPort {
                    name: "dns".into(),
                    protocol: Protocol::Udp,
                    port: *rng.pick(&[80, 81]),
                });
            }
        }
    }
}

fn selector(rng: &mut Rng, ns: bool) -> Value {
    match rng.below(6) {
        0 => json!({}),
        1 if ns => json!({ "matchLabels": { "team": rng.pick(&TEAMS) } }),
        1 => json!({ "matchLabels": { "app": rng.pick(&APPS) } }),
        2 if ns => {
            json!({ "matchLabels": { "kubernetes.io/metadata.name": rng.pick(&NAMESPACES) } })
        }
        2 => json!({ "matchLabels": { "pod": rng.pick(&PODS) } }),
        3 => {
            let key = if ns { "team" } else { "app" };
            let op = *rng.pick(&["In", "NotIn"]);
            let values: &[&str] = if ns { &TEAMS } else { &APPS };
            json!({ "matchExpressions": [{ "key": key, "operator": op, "values": [rng.pick(values)] }] })
        }
        4 => {
            let key = if ns { "team" } else { "tier" };
            let op = *rng.pick(&["Exists", "DoesNotExist"]);
            json!({ "matchExpressions": [{ "key": key, "operator": op }] })
        }
        _ => {
            json!({ "matchLabels": { if ns { "team" } else { "app" }: if ns { rng.pick(&TEAMS) } else { rng.pick(&APPS) } } })
        }
    }
}

fn peer(rng: &mut Rng) -> Value {
    match rng.below(6) {
        5 => {
            // IPv6: a node's pod prefix, maybe without one pod.
            let node = 1 + rng.below(2);
            let mut b = json!({ "cidr": format!("fd00:10:244:{node}::/64") });
            if rng.chance(50) {
                b["except"] = json!([format!("fd00:10:244:{node}::{}/128", 10 + rng.below(9))]);
            }
            json!({ "ipBlock": b })
        }
        0 => json!({ "podSelector": selector(rng, false) }),
        1 => json!({ "namespaceSelector": selector(rng, true) }),
        2 => {
            json!({ "namespaceSelector": selector(rng, true), "podSelector": selector(rng, false) })
        }
        3 => {
            // A node's pod CIDR, maybe without one pod: ipBlocks covering pod IPs.
            let node = 1 + rng.below(2);
            let mut b = json!({ "cidr": format!("10.244.{node}.0/24") });
            if rng.chance(50) {
                b["except"] = json!([format!("10.244.{node}.{}/32", 10 + rng.below(9))]);
            }
            json!({ "ipBlock": b })
        }
        _ => {
            json!({ "ipBlock": { "cidr": "10.244.0.0/16", "except": [format!("10.244.{}.0/28", 1 + rng.below(2))] } })
        }
    }
}

fn port(rng: &mut Rng) -> Value {
    match rng.below(6) {
        0 => json!({ "port": rng.pick(&[80, 81]) }),
        1 => json!({ "port": rng.pick(&[80, 81]), "protocol": "UDP" }),
        2 => json!({ "port": "http" }),
        3 => json!({ "port": "dns", "protocol": "UDP" }),
        4 => json!({ "port": 80, "endPort": 81, "protocol": rng.pick(&["TCP", "UDP"]) }),
        _ => json!({ "protocol": rng.pick(&["TCP", "UDP", "SCTP"]) }),
    }
}

fn rules(rng: &mut Rng, peers_key: &str) -> Value {
    let n = rng.below(3);
    let mut out = Vec::new();
    for _ in 0..n {
        let mut r = json!({});
        let peers = rng.below(3);
        if peers > 0 {
            r[peers_key] = Value::Array((0..peers).map(|_| peer(rng)).collect());
        }
        let ports = rng.below(3);
        if ports > 0 {
            r["ports"] = Value::Array((0..ports).map(|_| port(rng)).collect());
        }
        out.push(r);
    }
    Value::Array(out)
}

/// One random policy named `name` in a random namespace.
pub fn random_policy(rng: &mut Rng, name: &str) -> weft_policy::Policy {
    let (ns, spec) = random_policy_spec(rng);
    np(ns, name, spec)
}

/// A random policy as written: (namespace, spec).
pub fn random_policy_spec(rng: &mut Rng) -> (&'static str, Value) {
    let ns = *rng.pick(&NAMESPACES);
    let mut spec = json!({ "podSelector": selector(rng, false) });
    match rng.below(4) {
        0 => {}
        1 => spec["policyTypes"] = json!(["Ingress"]),
        2 => spec["policyTypes"] = json!(["Egress"]),
        _ => spec["policyTypes"] = json!(["Ingress", "Egress"]),
    }
    if rng.chance(70) {
        spec["ingress"] = rules(rng, "from");
    }
    if rng.chance(60) {
        spec["egress"] = rules(rng, "to");
    }
    (ns, spec)
}

/// The 3x3 model with random labels and 1..=max_policies random policies.
pub fn random_model(seed: u64, max_policies: usize) -> Model {
    let mut rng = Rng::new(seed);
    let mut m = xyz_model(1);
    random_labels(&mut rng, &mut m);
    for i in 0..1 + rng.below(max_policies) {
        m.set_policy(random_policy(&mut rng, &format!("p{i}")));
    }
    m
}
