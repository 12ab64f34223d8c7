//! The policy model: stripped-down Namespaces, Pods and NetworkPolicies holding only what
//! enforcement depends on (labels, IPs, named ports, selectors, rules), so memory grows with
//! what matters and not with whole API objects.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// The label every namespace carries from Kubernetes v1.21 on. The model sets it itself, so
/// `namespaceSelector` by name also works on older clusters (v1.20).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

pub type Labels = BTreeMap<String, String>;

/// `namespace/name` of a pod or a policy.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Key {
        Key {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
}

impl Namespace {
    /// A namespace with `labels` plus `kubernetes.io/metadata.name=<name>` (the API server
    /// forces that label to the name from v1.21 on; we do the same for older ones).
    pub fn new(name: impl Into<String>, mut labels: Labels) -> Namespace {
        let name = name.into();
        labels.insert(NAMESPACE_NAME_LABEL.into(), name.clone());
        Namespace { name, labels }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// The API's spelling ("TCP", "UDP", "SCTP"); `None` for anything else.
    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A container port with a name: `ports[].name` of the pod's containers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamedPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    /// Empty until the pod has an IP; such a pod matches no peer and no target in the
    /// kernel (the agent's first-packet guarantee covers that window).
    pub ips: Vec<IpAddr>,
    pub named_ports: Vec<NamedPort>,
    /// Runs on the node this model is compiled for.
    pub local: bool,
    /// Uses its node's network: policies neither select it nor see it as a pod; its traffic is
    /// its node's.
    pub host_network: bool,
}

impl Pod {
    pub fn key(&self) -> Key {
        Key::new(&self.namespace, &self.name)
    }

    /// The number `name` means on this pod for `protocol`.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.named_ports
            .iter()
            .find(|p| p.name == name && p.protocol == protocol)
            .map(|p| p.port)
    }
}

/// One `matchExpressions` operator with its values.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operator {
    In(BTreeSet<String>),
    NotIn(BTreeSet<String>),
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
}

impl Requirement {
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match &self.operator {
            Operator::In(values) => value.is_some_and(|v| values.contains(v)),
            // A pod without the key is "not in" (apimachinery's selection semantics).
            Operator::NotIn(values) => !value.is_some_and(|v| values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// metav1.LabelSelector: every matchLabels pair and every expression must hold; the empty
/// selector selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    pub match_labels: Labels,
    /// Sorted and deduplicated, so equal selectors compare (and hash) equal.
    pub match_expressions: Vec<Requirement>,
}

impl Selector {
    /// The empty selector: everything.
    pub fn all() -> Selector {
        Selector::default()
    }

    pub fn labels<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Selector {
        Selector {
            match_labels: pairs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            match_expressions: Vec::new(),
        }
    }

    pub fn with_expression(mut self, key: &str, operator: Operator) -> Selector {
        self.match_expressions.push(Requirement {
            key: key.into(),
            operator,
        });
        self.match_expressions.sort();
        self.match_expressions.dedup();
        self
    }

    pub fn is_all(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }
}

impl fmt::Display for Selector {
    /// kubectl's form: `a=b,c in (d,e),!f`; the empty selector is `{}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_all() {
            return f.write_str("{}");
        }
        let mut parts: Vec<String> = self
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for r in &self.match_expressions {
            let list = |v: &BTreeSet<String>| v.iter().cloned().collect::<Vec<_>>().join(",");
            parts.push(match &r.operator {
                Operator::In(v) => format!("{} in ({})", r.key, list(v)),
                Operator::NotIn(v) => format!("{} notin ({})", r.key, list(v)),
                Operator::Exists => r.key.clone(),
                Operator::DoesNotExist => format!("!{}", r.key),
            });
        }
        f.write_str(&parts.join(","))
    }
}

/// Which namespaces a pod peer looks in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Namespaces {
    /// No namespaceSelector: the policy's own namespace (resolved to its name).
    Named(String),
    /// namespaceSelector: the namespaces whose labels it selects.
    Selected(Selector),
}

/// A set of pods: the policy's targets, or a pod peer (podSelector and/or namespaceSelector,
/// both in one peer meaning AND). The unit of sharing in the kernel: one set per distinct value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodSet {
    pub namespaces: Namespaces,
    pub pods: Selector,
}

impl fmt::Display for PodSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespaces {
            Namespaces::Named(ns) => write!(f, "podSelector {} in {ns}", self.pods),
            Namespaces::Selected(sel) => {
                write!(f, "namespaceSelector {sel}")?;
                if !self.pods.is_all() {
                    write!(f, " and podSelector {}", self.pods)?;
                }
                Ok(())
            }
        }
    }
}

/// An ipBlock, canonical: `cidr` has no host bits, `except` is sorted and without entries
/// contained in another (so it loads into an interval set).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpBlock {
    pub cidr: IpNet,
    pub except: Vec<IpNet>,
}

impl IpBlock {
    /// Canonical form; `except` entries must lie within `cidr` (the API validates that too).
    pub fn new(cidr: IpNet, except: Vec<IpNet>) -> Result<IpBlock, String> {
        let cidr = cidr.trunc();
        let mut ex: Vec<IpNet> = Vec::new();
        for e in except {
            let e = e.trunc();
            if !cidr.contains(&e) {
                return Err(format!("except {e} is not within cidr {cidr}"));
            }
            ex.push(e);
        }
        Ok(IpBlock {
            cidr,
            except: normalize_prefixes(ex),
        })
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.cidr.contains(ip) && !self.except.iter().any(|e| e.contains(ip))
    }
}

/// Sorted, deduplicated, without prefixes contained in another: what an interval set takes.
pub fn normalize_prefixes(mut nets: Vec<IpNet>) -> Vec<IpNet> {
    nets.sort_by_key(|n| (n.prefix_len(), *n));
    let mut out: Vec<IpNet> = Vec::new();
    for n in nets {
        if !out.iter().any(|o| o.contains(&n)) {
            out.push(n);
        }
    }
    out.sort();
    out
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    Pods(PodSet),
    IpBlock(IpBlock),
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Pods(p) => write!(f, "{p}"),
            Peer::IpBlock(b) => {
                write!(f, "ipBlock {}", b.cidr)?;
                if !b.except.is_empty() {
                    let ex: Vec<String> = b.except.iter().map(|e| e.to_string()).collect();
                    write!(f, " except {}", ex.join(","))?;
                }
                Ok(())
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

/// One entry of `ports`: protocol (default TCP), optional port (number or name), optional
/// endPort (only with a number: the range port..=endPort).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortSpec {
    pub protocol: Protocol,
    pub port: Option<PortRef>,
    pub end_port: Option<u16>,
}

impl PortSpec {
    pub fn number(protocol: Protocol, port: u16) -> PortSpec {
        PortSpec {
            protocol,
            port: Some(PortRef::Number(port)),
            end_port: None,
        }
    }

    pub fn named(protocol: Protocol, name: &str) -> PortSpec {
        PortSpec {
            protocol,
            port: Some(PortRef::Name(name.into())),
            end_port: None,
        }
    }

    pub fn range(protocol: Protocol, port: u16, end: u16) -> PortSpec {
        PortSpec {
            protocol,
            port: Some(PortRef::Number(port)),
            end_port: Some(end),
        }
    }

    pub fn any(protocol: Protocol) -> PortSpec {
        PortSpec {
            protocol,
            port: None,
            end_port: None,
        }
    }

    /// Does (protocol, port) to `dst` (a pod, for named ports) match?
    pub fn matches(&self, protocol: Protocol, port: u16, dst: Option<&Pod>) -> bool {
        if protocol != self.protocol {
            return false;
        }
        match &self.port {
            None => true,
            Some(PortRef::Number(p)) => match self.end_port {
                Some(end) => (*p..=end).contains(&port),
                None => *p == port,
            },
            // Named ports resolve on the destination pod; an IP outside any pod has none.
            Some(PortRef::Name(name)) => {
                dst.and_then(|pod| pod.named_port(name, protocol)) == Some(port)
            }
        }
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.port, self.end_port) {
            (None, _) => write!(f, "{}", self.protocol),
            (Some(PortRef::Number(p)), None) => write!(f, "{}/{p}", self.protocol),
            (Some(PortRef::Number(p)), Some(e)) => write!(f, "{}/{p}-{e}", self.protocol),
            (Some(PortRef::Name(n)), _) => write!(f, "{}/{n}", self.protocol),
        }
    }
}

/// One ingress or egress rule: `peers` empty = every peer, `ports` empty = every port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    pub peers: Vec<Peer>,
    pub ports: Vec<PortSpec>,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let peers = if self.peers.is_empty() {
            "all peers".to_string()
        } else {
            let p: Vec<String> = self.peers.iter().map(|p| p.to_string()).collect();
            p.join(" | ")
        };
        let ports = if self.ports.is_empty() {
            "all ports".to_string()
        } else {
            let p: Vec<String> = self.ports.iter().map(|p| p.to_string()).collect();
            p.join(",")
        };
        write!(f, "{peers}; {ports}")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// networking.k8s.io/v1 NetworkPolicy, with policyTypes already resolved (see
/// [`Policy::new`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub pod_selector: Selector,
    /// Isolates its targets for ingress; `ingress` rules count only then.
    pub isolates_ingress: bool,
    pub isolates_egress: bool,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
}

impl Policy {
    /// `policy_types` as in the API (`None` = unset): unset means Ingress, plus Egress when
    /// there is at least one egress rule.
    pub fn new(
        namespace: &str,
        name: &str,
        pod_selector: Selector,
        policy_types: Option<&[Direction]>,
        ingress: Vec<Rule>,
        egress: Vec<Rule>,
    ) -> Policy {
        let (isolates_ingress, isolates_egress) = match policy_types {
            Some(types) => (
                types.contains(&Direction::Ingress),
                types.contains(&Direction::Egress),
            ),
            None => (true, !egress.is_empty()),
        };
        Policy {
            namespace: namespace.into(),
            name: name.into(),
            pod_selector,
            isolates_ingress,
            isolates_egress,
            ingress,
            egress,
        }
    }

    pub fn key(&self) -> Key {
        Key::new(&self.namespace, &self.name)
    }

    /// The pods this policy applies to.
    pub fn targets(&self) -> PodSet {
        PodSet {
            namespaces: Namespaces::Named(self.namespace.clone()),
            pods: self.pod_selector.clone(),
        }
    }

    pub fn isolates(&self, dir: Direction) -> bool {
        match dir {
            Direction::Ingress => self.isolates_ingress,
            Direction::Egress => self.isolates_egress,
        }
    }

    /// The rules of `dir` that count (none when the policy does not isolate that way).
    pub fn rules(&self, dir: Direction) -> &[Rule] {
        match dir {
            Direction::Ingress if self.isolates_ingress => &self.ingress,
            Direction::Egress if self.isolates_egress => &self.egress,
            _ => &[],
        }
    }
}

/// Everything the policy decisions of one node depend on.
#[derive(Debug, Clone, Default)]
pub struct Model {
    pub namespaces: BTreeMap<String, Namespace>,
    pub pods: BTreeMap<Key, Pod>,
    pub policies: BTreeMap<Key, Policy>,
}

impl Model {
    pub fn new() -> Model {
        Model::default()
    }

    pub fn set_namespace(&mut self, ns: Namespace) {
        self.namespaces.insert(ns.name.clone(), ns);
    }

    pub fn remove_namespace(&mut self, name: &str) -> Option<Namespace> {
        self.namespaces.remove(name)
    }

    pub fn set_pod(&mut self, pod: Pod) {
        self.pods.insert(pod.key(), pod);
    }

    pub fn remove_pod(&mut self, key: &Key) -> Option<Pod> {
        self.pods.remove(key)
    }

    pub fn set_policy(&mut self, policy: Policy) {
        self.policies.insert(policy.key(), policy);
    }

    pub fn remove_policy(&mut self, key: &Key) -> Option<Policy> {
        self.policies.remove(key)
    }

    /// Labels of namespace `name`; a namespace the model has not seen yet still has its name
    /// label (so a selector by name matches from the first instant).
    pub fn namespace_labels(&self, name: &str) -> Labels {
        match self.namespaces.get(name) {
            Some(ns) => ns.labels.clone(),
            None => Labels::from([(NAMESPACE_NAME_LABEL.to_string(), name.to_string())]),
        }
    }

    fn namespace_matches(&self, namespaces: &Namespaces, ns: &str) -> bool {
        match namespaces {
            Namespaces::Named(n) => n == ns,
            Namespaces::Selected(sel) => match self.namespaces.get(ns) {
                Some(n) => sel.matches(&n.labels),
                None => sel.matches(&self.namespace_labels(ns)),
            },
        }
    }

    /// Is `pod` (a pod-network pod) in `set`? hostNetwork pods are never.
    pub fn pod_in(&self, set: &PodSet, pod: &Pod) -> bool {
        !pod.host_network
            && self.namespace_matches(&set.namespaces, &pod.namespace)
            && set.pods.matches(&pod.labels)
    }

    /// The pod-network pods in `set`, found through the namespace index, not a scan of all
    /// pods when the set names its namespace.
    pub fn pods_in<'a>(&'a self, set: &'a PodSet) -> Box<dyn Iterator<Item = &'a Pod> + 'a> {
        match &set.namespaces {
            Namespaces::Named(ns) => Box::new(
                self.pods_of_namespace(ns)
                    .filter(move |p| !p.host_network && set.pods.matches(&p.labels)),
            ),
            Namespaces::Selected(_) => {
                Box::new(self.pods.values().filter(move |p| self.pod_in(set, p)))
            }
        }
    }

    /// Pods of namespace `ns` (a range of the ordered map: keys sort by namespace first).
    pub fn pods_of_namespace<'a>(&'a self, ns: &str) -> impl Iterator<Item = &'a Pod> + 'a {
        let start = Key::new(ns, "");
        let ns = ns.to_string();
        self.pods
            .range(start..)
            .take_while(move |(k, _)| k.namespace == ns)
            .map(|(_, p)| p)
    }

    /// The pod-network pod that owns `ip`, if any.
    pub fn pod_by_ip(&self, ip: &IpAddr) -> Option<&Pod> {
        self.pods
            .values()
            .find(|p| !p.host_network && p.ips.contains(ip))
    }

    /// Policies that select `pod` and isolate it in `dir`, in key order.
    pub fn isolating(&self, pod: &Pod, dir: Direction) -> Vec<&Policy> {
        if pod.host_network {
            return Vec::new();
        }
        self.policies
            .values()
            .filter(|p| {
                p.isolates(dir)
                    && p.namespace == pod.namespace
                    && p.pod_selector.matches(&pod.labels)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn selector_operators() {
        let pod = l(&[("app", "web"), ("tier", "front")]);
        assert!(Selector::all().matches(&pod));
        assert!(Selector::all().matches(&Labels::new()));
        assert!(Selector::labels([("app", "web")]).matches(&pod));
        assert!(!Selector::labels([("app", "web"), ("x", "y")]).matches(&pod));
        let e = |op| Selector::all().with_expression("app", op);
        assert!(e(Operator::In(set(&["web", "db"]))).matches(&pod));
        assert!(!e(Operator::In(set(&["db"]))).matches(&pod));
        assert!(!e(Operator::In(set(&["web"]))).matches(&Labels::new()));
        assert!(!e(Operator::NotIn(set(&["web"]))).matches(&pod));
        // Without the key, NotIn holds.
        assert!(e(Operator::NotIn(set(&["web"]))).matches(&Labels::new()));
        assert!(e(Operator::Exists).matches(&pod));
        assert!(!e(Operator::Exists).matches(&Labels::new()));
        assert!(!e(Operator::DoesNotExist).matches(&pod));
        assert!(e(Operator::DoesNotExist).matches(&Labels::new()));
        // Labels and expressions are ANDed.
        let both = Selector::labels([("tier", "front")]).with_expression("app", Operator::Exists);
        assert!(both.matches(&pod));
        assert!(!both.matches(&l(&[("tier", "front")])));
        assert_eq!(both.to_string(), "tier=front,app");
    }

    #[test]
    fn equal_selectors_are_equal_whatever_the_expression_order() {
        let a = Selector::all()
            .with_expression("a", Operator::Exists)
            .with_expression("b", Operator::DoesNotExist);
        let b = Selector::all()
            .with_expression("b", Operator::DoesNotExist)
            .with_expression("a", Operator::Exists);
        assert_eq!(a, b);
    }

    #[test]
    fn policy_types_defaults() {
        let rule = || vec![Rule::default()];
        // Unset: Ingress always, Egress only with egress rules.
        let p = Policy::new("x", "p", Selector::all(), None, vec![], vec![]);
        assert!(p.isolates_ingress && !p.isolates_egress);
        let p = Policy::new("x", "p", Selector::all(), None, vec![], rule());
        assert!(p.isolates_ingress && p.isolates_egress);
        // Explicit Egress only: ingress rules are ignored and do not isolate.
        let p = Policy::new(
            "x",
            "p",
            Selector::all(),
            Some(&[Direction::Egress]),
            rule(),
            vec![],
        );
        assert!(!p.isolates_ingress && p.isolates_egress);
        assert!(p.rules(Direction::Ingress).is_empty());
        assert!(p.rules(Direction::Egress).is_empty());
    }

    #[test]
    fn ip_block_is_canonical() {
        let n = |s: &str| s.parse::<IpNet>().unwrap();
        let b = IpBlock::new(
            n("10.1.2.3/16"),
            vec![n("10.1.20.0/24"), n("10.1.0.0/20"), n("10.1.3.7/32")],
        )
        .unwrap();
        assert_eq!(b.cidr, n("10.1.0.0/16"));
        // 10.1.3.7 lies in 10.1.0.0/20: dropped, the interval set would refuse the overlap.
        assert_eq!(b.except, vec![n("10.1.0.0/20"), n("10.1.20.0/24")]);
        assert!(b.contains(&"10.1.200.1".parse().unwrap()));
        assert!(!b.contains(&"10.1.3.7".parse().unwrap()));
        assert!(!b.contains(&"10.2.0.1".parse().unwrap()));
        let err = IpBlock::new(n("10.1.0.0/16"), vec![n("10.2.0.0/24")]).unwrap_err();
        assert!(
            err.contains("10.2.0.0/24 is not within cidr 10.1.0.0/16"),
            "{err}"
        );
    }

    #[test]
    fn ports_by_number_range_and_name() {
        let pod = Pod {
            namespace: "x".into(),
            name: "a".into(),
            labels: Labels::new(),
            ips: vec![],
            named_ports: vec![NamedPort {
                name: "web".into(),
                protocol: Protocol::Tcp,
                port: 8080,
            }],
            local: true,
            host_network: false,
        };
        assert!(PortSpec::number(Protocol::Tcp, 80).matches(Protocol::Tcp, 80, None));
        assert!(!PortSpec::number(Protocol::Tcp, 80).matches(Protocol::Udp, 80, None));
        assert!(PortSpec::range(Protocol::Udp, 80, 90).matches(Protocol::Udp, 90, None));
        assert!(!PortSpec::range(Protocol::Udp, 80, 90).matches(Protocol::Udp, 91, None));
        assert!(PortSpec::any(Protocol::Sctp).matches(Protocol::Sctp, 9, None));
        let web = PortSpec::named(Protocol::Tcp, "web");
        assert!(web.matches(Protocol::Tcp, 8080, Some(&pod)));
        assert!(!web.matches(Protocol::Tcp, 80, Some(&pod)));
        assert!(!web.matches(Protocol::Tcp, 8080, None));
        assert!(!PortSpec::named(Protocol::Udp, "web").matches(Protocol::Udp, 8080, Some(&pod)));
    }

    #[test]
    fn namespaces_carry_their_name_label() {
        let ns = Namespace::new("kube-system", Labels::new());
        assert_eq!(ns.labels[NAMESPACE_NAME_LABEL], "kube-system");
        // Also for a namespace the model has not seen (pods can arrive first).
        let m = Model::new();
        assert_eq!(m.namespace_labels("y")[NAMESPACE_NAME_LABEL], "y");
    }
}
