//! The reference evaluator: networking.k8s.io/v1 semantics written down directly, one packet
//! (the first of a connection) at a time. It is the truth the compiled ruleset is tested
//! against, and the source of the reasons `weftd trace` can give.

use std::fmt;
use std::net::IpAddr;

use crate::model::{Direction, Key, Model, Peer, Pod, Policy, Protocol, Rule};

/// One end of a connection, as the caller names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A pod by name (a hostNetwork pod stands for its node).
    Pod(Key),
    /// An address: a pod's if a pod-network pod owns it, else outside any pod (another node,
    /// the world).
    Ip(IpAddr),
    /// The node this model is compiled for, by one of its addresses: kubelet probes come from
    /// here and are always admitted into the node's pods.
    LocalNode(IpAddr),
}

/// An endpoint after resolution: the pod behind it (if any) and the address the packet carries.
#[derive(Debug, Clone, Copy)]
struct Resolved<'a> {
    pod: Option<&'a Pod>,
    ip: Option<IpAddr>,
    local_node: bool,
}

/// The decision of one direction, with its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// That end is not a pod under policy (an address outside pods, a node, a hostNetwork pod).
    NotAPod,
    /// Always admitted: `reason` says why (traffic from the pod's own node, a pod to itself).
    Exempt(&'static str),
    /// No policy isolates the pod in this direction.
    NotIsolated,
    /// Admitted by `policy`'s rule `rule` (index in its ingress or egress list).
    Admitted {
        isolated_by: Vec<Key>,
        policy: Key,
        rule: usize,
        rule_text: String,
    },
    /// Isolated and no rule of the isolating policies admits it.
    Denied { isolated_by: Vec<Key> },
}

impl Decision {
    pub fn allows(&self) -> bool {
        !matches!(self, Decision::Denied { .. })
    }
}

/// The verdict on one connection: allowed only if both directions allow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// The source's egress.
    pub egress: Decision,
    /// The destination's ingress.
    pub ingress: Decision,
    /// The ends as written in reasons ("x/a", "10.0.0.1").
    pub src: String,
    pub dst: String,
}

impl fmt::Display for Verdict {
    /// "denied: y/b is isolated for ingress by [y/deny-all]; no rule admits x/a" or
    /// "allowed: egress: x/a not isolated; ingress: by y/allow-x, ingress rule 0 (...)".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |keys: &[Key]| {
            keys.iter()
                .map(|k| k.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !self.allowed {
            f.write_str("denied:")?;
            let mut sep = " ";
            if let Decision::Denied { isolated_by } = &self.egress {
                write!(
                    f,
                    "{sep}{} is isolated for egress by [{}]; no rule admits {}",
                    self.src,
                    list(isolated_by),
                    self.dst
                )?;
                sep = "; and ";
            }
            if let Decision::Denied { isolated_by } = &self.ingress {
                write!(
                    f,
                    "{sep}{} is isolated for ingress by [{}]; no rule admits {}",
                    self.dst,
                    list(isolated_by),
                    self.src
                )?;
            }
            return Ok(());
        }
        f.write_str("allowed")?;
        for (dir, d, who) in [
            (Direction::Egress, &self.egress, &self.src),
            (Direction::Ingress, &self.ingress, &self.dst),
        ] {
            match d {
                Decision::NotAPod => write!(f, "; {dir}: {who} is not a pod under policy")?,
                Decision::Exempt(why) => write!(f, "; {dir}: {why}")?,
                Decision::NotIsolated => write!(f, "; {dir}: {who} is not isolated")?,
                Decision::Admitted {
                    policy,
                    rule,
                    rule_text,
                    ..
                } => write!(f, "; {dir}: by {policy}, {dir} rule {rule} ({rule_text})")?,
                Decision::Denied { .. } => {}
            }
        }
        Ok(())
    }
}

fn resolve<'a>(model: &'a Model, e: &Endpoint) -> Resolved<'a> {
    match e {
        Endpoint::Pod(key) => match model.pods.get(key) {
            // A hostNetwork pod is its node: the local node, or an address outside pods.
            Some(p) if p.host_network => Resolved {
                pod: None,
                ip: p.ips.first().copied(),
                local_node: p.local,
            },
            Some(p) => Resolved {
                pod: Some(p),
                ip: None,
                local_node: false,
            },
            None => Resolved {
                pod: None,
                ip: None,
                local_node: false,
            },
        },
        Endpoint::Ip(ip) => Resolved {
            pod: model.pod_by_ip(ip),
            ip: Some(*ip),
            local_node: false,
        },
        Endpoint::LocalNode(ip) => Resolved {
            pod: None,
            ip: Some(*ip),
            local_node: true,
        },
    }
}

fn describe(r: &Resolved) -> String {
    match (r.pod, r.ip) {
        (Some(p), _) => p.key().to_string(),
        (None, Some(ip)) if r.local_node => format!("node {ip}"),
        (None, Some(ip)) => ip.to_string(),
        (None, None) => "unknown".into(),
    }
}

/// Fill in the address each end uses: the given one, else the pod's address of the family the
/// other end uses (IPv4 first when nothing decides).
fn addresses<'a>(src: &mut Resolved<'a>, dst: &mut Resolved<'a>) {
    let has = |r: &Resolved, v4: bool| {
        r.pod
            .is_some_and(|p| p.ips.iter().any(|ip| ip.is_ipv4() == v4))
    };
    let v4 = match src.ip.or(dst.ip) {
        Some(ip) => ip.is_ipv4(),
        None => !(has(src, false) && has(dst, false) && !(has(src, true) && has(dst, true))),
    };
    for r in [src, dst] {
        if r.ip.is_none() {
            r.ip = r
                .pod
                .and_then(|p| p.ips.iter().find(|ip| ip.is_ipv4() == v4).copied());
        }
    }
}

/// Does `peer`, in `policy`'s view, match the remote end `other`?
fn peer_matches(model: &Model, peer: &Peer, other: &Resolved) -> bool {
    match peer {
        Peer::Pods(set) => other.pod.is_some_and(|p| model.pod_in(set, p)),
        // Pod addresses are in ipBlocks like any other (cilium#9209).
        Peer::IpBlock(block) => other.ip.is_some_and(|ip| block.contains(&ip)),
    }
}

fn rule_admits(
    model: &Model,
    rule: &Rule,
    other: &Resolved,
    dst_pod: Option<&Pod>,
    protocol: Protocol,
    port: u16,
) -> bool {
    (rule.peers.is_empty() || rule.peers.iter().any(|p| peer_matches(model, p, other)))
        && (rule.ports.is_empty()
            || rule
                .ports
                .iter()
                .any(|p| p.matches(protocol, port, dst_pod)))
}

/// The decision for `pod` in `dir`, `other` being the remote end and `dst_pod` the pod named
/// ports resolve on.
fn decide(
    model: &Model,
    pod: &Pod,
    dir: Direction,
    other: &Resolved,
    dst_pod: Option<&Pod>,
    protocol: Protocol,
    port: u16,
) -> Decision {
    let isolating: Vec<&Policy> = model.isolating(pod, dir);
    if isolating.is_empty() {
        return Decision::NotIsolated;
    }
    let isolated_by: Vec<Key> = isolating.iter().map(|p| p.key()).collect();
    for policy in &isolating {
        for (i, rule) in policy.rules(dir).iter().enumerate() {
            if rule_admits(model, rule, other, dst_pod, protocol, port) {
                return Decision::Admitted {
                    isolated_by,
                    policy: policy.key(),
                    rule: i,
                    rule_text: rule.to_string(),
                };
            }
        }
    }
    Decision::Denied { isolated_by }
}

/// The verdict on a new connection from `src` to `dst` on `protocol`/`port`.
pub fn evaluate(
    model: &Model,
    src: &Endpoint,
    dst: &Endpoint,
    protocol: Protocol,
    port: u16,
) -> Verdict {
    let mut s = resolve(model, src);
    let mut d = resolve(model, dst);
    addresses(&mut s, &mut d);
    let same_pod = matches!((s.pod, d.pod), (Some(a), Some(b)) if a.key() == b.key());

    let egress = match s.pod {
        None => Decision::NotAPod,
        Some(_) if same_pod => Decision::Exempt("a pod to itself"),
        Some(p) => decide(model, p, Direction::Egress, &d, d.pod, protocol, port),
    };
    let ingress = match d.pod {
        None => Decision::NotAPod,
        Some(_) if same_pod => Decision::Exempt("a pod to itself"),
        // kubelet probes: the node always reaches its own pods.
        Some(p) if s.local_node && p.local => Decision::Exempt("from the pod's own node"),
        Some(p) => decide(model, p, Direction::Ingress, &s, Some(p), protocol, port),
    };
    Verdict {
        allowed: egress.allows() && ingress.allows(),
        src: describe(&s),
        dst: describe(&d),
        egress,
        ingress,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Labels, Namespace, Namespaces, PodSet, PortSpec, Selector};

    fn pod(ns: &str, name: &str, ip: &str, local: bool, host_network: bool) -> Pod {
        Pod {
            namespace: ns.into(),
            name: name.into(),
            labels: Labels::from([("pod".to_string(), name.to_string())]),
            ips: vec![ip.parse().unwrap()],
            named_ports: vec![],
            local,
            host_network,
        }
    }

    fn model() -> Model {
        let mut m = Model::new();
        m.set_namespace(Namespace::new("x", Labels::new()));
        m.set_namespace(Namespace::new("y", Labels::new()));
        m.set_pod(pod("x", "a", "10.0.1.2", true, false));
        m.set_pod(pod("y", "b", "10.0.2.2", false, false));
        m.set_pod(pod("y", "hn", "192.168.0.2", false, true));
        m.set_pod(pod("x", "hn-local", "192.168.0.1", true, true));
        m
    }

    fn k(ns: &str, n: &str) -> Endpoint {
        Endpoint::Pod(Key::new(ns, n))
    }

    #[test]
    fn reasons_name_the_isolating_policies_and_the_admitting_rule() {
        let mut m = model();
        m.set_policy(Policy::new(
            "x",
            "deny-all",
            Selector::all(),
            None,
            vec![],
            vec![],
        ));
        let v = evaluate(&m, &k("y", "b"), &k("x", "a"), Protocol::Tcp, 80);
        assert!(!v.allowed);
        assert_eq!(
            v.to_string(),
            "denied: x/a is isolated for ingress by [x/deny-all]; no rule admits y/b"
        );
        m.set_policy(Policy::new(
            "x",
            "allow-y",
            Selector::labels([("pod", "a")]),
            None,
            vec![
                Rule {
                    peers: vec![],
                    ports: vec![PortSpec::number(Protocol::Udp, 53)],
                },
                Rule {
                    peers: vec![Peer::Pods(PodSet {
                        namespaces: Namespaces::Selected(Selector::labels([(
                            crate::model::NAMESPACE_NAME_LABEL,
                            "y",
                        )])),
                        pods: Selector::all(),
                    })],
                    ports: vec![],
                },
            ],
            vec![],
        ));
        let v = evaluate(&m, &k("y", "b"), &k("x", "a"), Protocol::Tcp, 80);
        assert!(v.allowed);
        assert_eq!(
            v.ingress,
            Decision::Admitted {
                isolated_by: vec![Key::new("x", "allow-y"), Key::new("x", "deny-all")],
                policy: Key::new("x", "allow-y"),
                rule: 1,
                rule_text: "namespaceSelector kubernetes.io/metadata.name=y; all ports".into(),
            }
        );
        assert_eq!(
            v.to_string(),
            "allowed; egress: y/b is not isolated; ingress: by x/allow-y, ingress rule 1 \
             (namespaceSelector kubernetes.io/metadata.name=y; all ports)"
        );
    }

    #[test]
    fn own_node_always_reaches_its_pods_and_host_network_pods_are_nodes() {
        let mut m = model();
        m.set_policy(Policy::new(
            "x",
            "deny-all",
            Selector::all(),
            None,
            vec![],
            vec![],
        ));
        let node = Endpoint::LocalNode("192.168.0.1".parse().unwrap());
        let v = evaluate(&m, &node, &k("x", "a"), Protocol::Tcp, 80);
        assert!(v.allowed);
        assert_eq!(v.ingress, Decision::Exempt("from the pod's own node"));
        // A local hostNetwork pod is the local node.
        assert!(evaluate(&m, &k("x", "hn-local"), &k("x", "a"), Protocol::Tcp, 80).allowed);
        // Another node's hostNetwork pod is that node's address: not exempt, not a pod.
        let v = evaluate(&m, &k("y", "hn"), &k("x", "a"), Protocol::Tcp, 80);
        assert!(!v.allowed);
        assert_eq!(v.src, "192.168.0.2");
        // A policy never selects a hostNetwork pod.
        m.set_policy(Policy::new(
            "y",
            "deny-all",
            Selector::all(),
            None,
            vec![],
            vec![],
        ));
        assert_eq!(
            evaluate(&m, &k("x", "a"), &k("y", "hn"), Protocol::Tcp, 80).ingress,
            Decision::NotAPod
        );
        // A pod always reaches itself.
        assert!(evaluate(&m, &k("x", "a"), &k("x", "a"), Protocol::Tcp, 80).allowed);
    }

    #[test]
    fn egress_denial_and_external_addresses() {
        let mut m = model();
        m.set_policy(Policy::new(
            "x",
            "only-dns",
            Selector::all(),
            Some(&[Direction::Egress]),
            vec![],
            vec![Rule {
                peers: vec![Peer::IpBlock(
                    crate::model::IpBlock::new("8.8.8.0/24".parse().unwrap(), vec![]).unwrap(),
                )],
                ports: vec![PortSpec::number(Protocol::Udp, 53)],
            }],
        ));
        let ext = |ip: &str| Endpoint::Ip(ip.parse().unwrap());
        assert!(evaluate(&m, &k("x", "a"), &ext("8.8.8.8"), Protocol::Udp, 53).allowed);
        assert!(!evaluate(&m, &k("x", "a"), &ext("8.8.8.8"), Protocol::Tcp, 53).allowed);
        let v = evaluate(&m, &k("x", "a"), &k("y", "b"), Protocol::Udp, 53);
        assert_eq!(
            v.to_string(),
            "denied: x/a is isolated for egress by [x/only-dns]; no rule admits y/b"
        );
        // By IP, a pod's address resolves to the pod.
        assert_eq!(
            evaluate(&m, &ext("10.0.2.2"), &ext("10.0.1.2"), Protocol::Tcp, 1).src,
            "y/b"
        );
    }
}
