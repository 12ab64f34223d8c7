//! The compiler: a [`Model`] to the desired state of one node's table `inet weft-policy`, as
//! plain data ([`Ruleset`]) that [`crate::nft`] diffs and renders.
//!
//! Layout (see the crate docs for the why):
//!
//! ```text
//! chain egress        hook forward prio -1   ct established,related accept; ND accept;
//!                                             ip saddr vmap @eg4; ip6 saddr vmap @eg6
//! chain egress-local  hook input   prio -1   the same (a pod to its own node)
//! chain ingress       hook forward prio  0   ct ...; ND ...; ip daddr vmap @in4; ip6 daddr vmap @in6
//! map in4/in6, eg4/eg6    local isolated pod IP -> jump ni_<ns> / ne_<ns>
//! chain ni_<ns>       jump pi_<ns>_<policy> (each ingress policy of <ns>) ...; drop
//! chain pi_<ns>_<pol> ip daddr != @<targets>4 return; ip6 daddr != @<targets>6 return;
//!                     <peer> <ports> accept ... (falls through = return: next policy)
//! set  s4_<h>/s6_<h>  IPs of the pods of one distinct (namespaces, podSelector)
//! set  b4_<h>, e4_<h> (interval) one ipBlock's cidr and its excepts
//! set  n4_<h>/n6_<h>  (IP . port) of every pod whose named port <name>/<proto> is that port
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::model::{
    Direction, IpBlock, Model, Namespaces, Peer, PodSet, PortRef, PortSpec, Protocol,
};

/// weft's own table for policy (family inet), apart from `inet weft` (forward accept,
/// masquerade) whichever firewall driver that one uses.
pub const TABLE: &str = "weft-policy";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    pub fn of(ip: &IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }

    fn digit(self) -> char {
        match self {
            Family::V4 => '4',
            Family::V6 => '6',
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileOptions {
    /// Generate SCTP port rules. Off only where the kernel lacks SCTP (this lab machine): the
    /// rules are plain `meta l4proto 132` matches, but nothing should be loaded that the
    /// kernel cannot exercise. Rules whose ports are all SCTP then admit nothing, as before.
    pub sctp: bool,
    /// This node's pod CIDRs, for the first-packet guarantee: on the forward hook, a packet
    /// from or to an address in them that no local pod of the model holds is dropped. weftd
    /// puts a pod in the model (labels from CNI ADD's K8S_POD_NAMESPACE/NAME and its informer,
    /// IP from IPAM) before ADD returns; until then the pod can neither send nor be reached.
    /// Empty: no such rule (an unknown local address is treated as outside every pod).
    pub fail_closed: Vec<IpNet>,
    /// Packet counters for metrics: on each accept of a policy chain (what that rule admitted;
    /// reset when the policy changes, as its chain is rewritten) and on each namespace chain's
    /// drop (what the policies isolating pods of that namespace denied).
    pub counters: bool,
    /// A policy that starts denying also cuts connections already established: only replies
    /// (and ICMP errors) skip the policies, the original direction of every connection is
    /// judged again packet by packet (it costs a map lookup per packet of isolated pods).
    /// Off: `ct state established,related accept` first, established connections live on
    /// until conntrack forgets them (what most implementations do).
    pub cut_established: bool,
    /// Log denied new connections to this NFLOG group (`log group N`, read by weftd over
    /// netlink; kernel logging from a non-init netns is off by default), at most
    /// [`LOG_RATE`] per second and namespace chain (burst [`LOG_BURST`]). `None`: no log
    /// statement at all.
    pub log_denied: Option<u16>,
}

/// The deny log's kernel rate limit, per namespace chain: packets per second, and burst.
pub const LOG_RATE: u32 = 10;
pub const LOG_BURST: u32 = 20;

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            sctp: true,
            fail_closed: Vec::new(),
            counters: false,
            cut_established: false,
            log_denied: None,
        }
    }
}

/// The set of local pod IPs the model knows, per family (fail-closed).
pub fn known_set(family: Family) -> String {
    format!("known{}", family.digit())
}

/// A base chain's hook. Both policy hooks drop only; an accept in them never skips the other
/// base chains on the hook (nor `inet weft`'s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// filter hook forward, priority `prio`, policy accept.
    Forward(i32),
    /// filter hook input, priority `prio`, policy accept.
    Input(i32),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chain {
    pub hook: Option<Hook>,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetKind {
    /// `ipv4_addr` / `ipv6_addr`
    Addr(Family),
    /// the same with `flags interval` (prefixes)
    Prefix(Family),
    /// `ipvX_addr . inet_service`
    AddrPort(Family),
    /// map `ipvX_addr : verdict` (dispatch)
    Dispatch(Family),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Element {
    Addr(IpAddr),
    Prefix(IpNet),
    AddrPort(IpAddr, u16),
    /// A dispatch entry: `ip : jump chain`.
    Jump(IpAddr, String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub kind: SetKind,
    pub elements: BTreeSet<Element>,
    /// What the hashed name stands for, shown by `nft list` (for operators and traces).
    pub comment: String,
}

impl Set {
    fn new(kind: SetKind, comment: impl Into<String>) -> Set {
        Set {
            kind,
            elements: BTreeSet::new(),
            comment: comment.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AddrField {
    Src,
    Dst,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Match {
    /// `ct state established,related`
    EstablishedRelated,
    /// `ct state related`
    Related,
    /// `ct direction reply`: replies (always of an established connection)
    EstablishedReply,
    /// `icmpv6 type { nd-router-solicit .. nd-redirect }` (133-137)
    NeighbourDiscovery,
    /// `ip saddr @set`, `ip6 daddr != @set`, ...
    InSet {
        family: Family,
        field: AddrField,
        set: String,
        negate: bool,
    },
    /// `meta l4proto tcp`
    L4Proto(Protocol),
    /// `ip saddr 10.244.1.0/24`
    InPrefix { field: AddrField, net: IpNet },
    /// `th dport first-last` (first == last: one port)
    DPort(u16, u16),
    /// `ip daddr . th dport @set` (named ports)
    AddrPortInSet { family: Family, set: String },
    /// `ct state new`
    New,
    /// `limit rate <per second>/second burst <burst> packets`: matches within the rate.
    Limit { per_second: u32, burst: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// `log group <group> prefix <prefix>`: not a verdict, the packet goes on to the next rule.
    Log {
        group: u16,
        prefix: String,
    },
    Accept,
    Drop,
    Return,
    Jump(String),
    /// `ip daddr vmap @map`
    Dispatch {
        family: Family,
        field: AddrField,
        map: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rule {
    pub matches: Vec<Match>,
    /// The named counter (`counter name ...`) the rule updates before its verdict
    /// ([`CompileOptions::counters`]).
    pub counter: Option<String>,
    pub action: Action,
}

/// What a named counter of the table counts ([`CompileOptions::counters`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CounterMeta {
    pub direction: Direction,
    pub namespace: String,
    /// `Some`: packets this policy's rules admitted (new connections of the node's pods it
    /// isolates, counted on the first policy of the namespace, by name, that admits them).
    /// `None`: packets denied to (ingress) or from (egress) the namespace's isolated pods.
    pub policy: Option<String>,
}

/// The desired content of table `inet weft-policy`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub chains: BTreeMap<String, Chain>,
    pub sets: BTreeMap<String, Set>,
    /// Named counters, by name (the name of the chain whose rules update it).
    pub counters: BTreeMap<String, CounterMeta>,
}

impl Ruleset {
    pub fn element_count(&self) -> usize {
        self.sets.values().map(|s| s.elements.len()).sum()
    }

    pub fn rule_count(&self) -> usize {
        self.chains.values().map(|c| c.rules.len()).sum()
    }
}

pub const CHAIN_INGRESS: &str = "ingress";
pub const CHAIN_EGRESS: &str = "egress";
pub const CHAIN_EGRESS_LOCAL: &str = "egress-local";
/// Before `inet weft`'s forward chain (priority filter): order does not change verdicts (a drop
/// anywhere is final), but drops come first.
pub const PRIO_EGRESS: i32 = -1;
pub const PRIO_INGRESS: i32 = 0;

/// FNV-1a 64: set names must be stable for equal content, across calls and restarts.
fn hash(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// nft names are at most 255 bytes; Kubernetes names fit except in extreme cases.
fn chain_name(prefix: &str, parts: &[&str]) -> String {
    let name = format!("{prefix}_{}", parts.join("_"));
    if name.len() <= 200 {
        name
    } else {
        format!("{prefix}_{}", hash(&parts.join("/")))
    }
}

/// `ni_<ns>` / `ne_<ns>`: the chain a namespace's isolated pods are dispatched to.
pub fn namespace_chain(dir: Direction, ns: &str) -> String {
    let p = match dir {
        Direction::Ingress => "ni",
        Direction::Egress => "ne",
    };
    chain_name(p, &[ns])
}

/// `pi_<ns>_<name>` / `pe_<ns>_<name>`: one policy's rules of one direction.
pub fn policy_chain(dir: Direction, ns: &str, name: &str) -> String {
    let p = match dir {
        Direction::Ingress => "pi",
        Direction::Egress => "pe",
    };
    chain_name(p, &[ns, name])
}

/// `in4`, `eg6`, ...: the dispatch maps.
pub fn dispatch_map(dir: Direction, family: Family) -> String {
    let p = match dir {
        Direction::Ingress => "in",
        Direction::Egress => "eg",
    };
    format!("{p}{}", family.digit())
}

pub fn pod_set_name(set: &PodSet, family: Family) -> String {
    format!("s{}_{}", family.digit(), hash(&format!("{set:?}")))
}

fn block_set_names(block: &IpBlock) -> (String, String) {
    let h = hash(&format!("{block:?}"));
    let d = Family::of(&block.cidr.addr()).digit();
    (format!("b{d}_{h}"), format!("e{d}_{h}"))
}

pub(crate) fn named_port_set_name(name: &str, protocol: Protocol, family: Family) -> String {
    format!(
        "n{}_{}",
        family.digit(),
        hash(&format!("{name}/{}", protocol.as_str()))
    )
}

/// Pods of `set`, through the namespace index. `namespaces`: every namespace name with its
/// labels (computed once per compile, not per selector).
pub(crate) fn members<'a>(
    model: &'a Model,
    namespaces: &[(&'a str, crate::model::Labels)],
    set: &'a PodSet,
) -> Vec<&'a crate::model::Pod> {
    match &set.namespaces {
        Namespaces::Named(_) => model.pods_in(set).collect(),
        Namespaces::Selected(sel) => namespaces
            .iter()
            .filter(|(_, labels)| sel.matches(labels))
            .flat_map(|(ns, _)| model.pods_of_namespace(ns))
            .filter(|p| !p.host_network && set.pods.matches(&p.labels))
            .collect(),
    }
}

/// Namespaces known to the model plus those only pods mention (name label only), with labels.
pub(crate) fn namespace_index(model: &Model) -> Vec<(&str, crate::model::Labels)> {
    let mut names: BTreeSet<&str> = model.namespaces.keys().map(String::as_str).collect();
    let mut last = "";
    for k in model.pods.keys() {
        // Keys sort by namespace: one insert per namespace, not per pod.
        if k.namespace != last {
            names.insert(&k.namespace);
            last = &k.namespace;
        }
    }
    names
        .into_iter()
        .map(|ns| (ns, model.namespace_labels(ns)))
        .collect()
}

struct Builder<'a> {
    model: &'a Model,
    namespaces: Vec<(&'a str, crate::model::Labels)>,
    opts: &'a CompileOptions,
    out: Ruleset,
    pod_sets: BTreeMap<PodSet, ()>,
    named_ports: BTreeSet<(String, Protocol)>,
}

impl Builder<'_> {
    fn pod_set(&mut self, set: &PodSet, family: Family) -> String {
        if !self.pod_sets.contains_key(set) {
            self.pod_sets.insert(set.clone(), ());
            let mut v4 = Set::new(SetKind::Addr(Family::V4), set.to_string());
            let mut v6 = Set::new(SetKind::Addr(Family::V6), set.to_string());
            for pod in members(self.model, &self.namespaces, set) {
                for ip in &pod.ips {
                    let s = if ip.is_ipv4() { &mut v4 } else { &mut v6 };
                    s.elements.insert(Element::Addr(*ip));
                }
            }
            self.out.sets.insert(pod_set_name(set, Family::V4), v4);
            self.out.sets.insert(pod_set_name(set, Family::V6), v6);
        }
        pod_set_name(set, family)
    }

    fn block_sets(&mut self, block: &IpBlock) -> (String, Option<String>) {
        let family = Family::of(&block.cidr.addr());
        let (b, e) = block_set_names(block);
        self.out.sets.entry(b.clone()).or_insert_with(|| Set {
            kind: SetKind::Prefix(family),
            elements: BTreeSet::from([Element::Prefix(block.cidr)]),
            comment: format!("ipBlock {}", block.cidr),
        });
        if block.except.is_empty() {
            return (b, None);
        }
        self.out.sets.entry(e.clone()).or_insert_with(|| Set {
            kind: SetKind::Prefix(family),
            elements: block.except.iter().map(|n| Element::Prefix(*n)).collect(),
            comment: format!("ipBlock {} except", block.cidr),
        });
        (b, Some(e))
    }

    fn named_port_set(&mut self, name: &str, protocol: Protocol, family: Family) -> String {
        self.named_ports.insert((name.to_string(), protocol));
        named_port_set_name(name, protocol, family)
    }

    /// The alternatives (OR) of a rule's peers for `family`; `None` in the list = any peer.
    fn peer_matches(
        &mut self,
        peers: &[Peer],
        field: AddrField,
        family: Family,
    ) -> Vec<Vec<Match>> {
        if peers.is_empty() {
            return vec![Vec::new()];
        }
        let mut alts = Vec::new();
        for peer in peers {
            match peer {
                Peer::Pods(set) => {
                    let set = self.pod_set(set, family);
                    alts.push(vec![Match::InSet {
                        family,
                        field,
                        set,
                        negate: false,
                    }]);
                }
                Peer::IpBlock(block) if Family::of(&block.cidr.addr()) == family => {
                    let (b, e) = self.block_sets(block);
                    let mut m = vec![Match::InSet {
                        family,
                        field,
                        set: b,
                        negate: false,
                    }];
                    if let Some(e) = e {
                        m.push(Match::InSet {
                            family,
                            field,
                            set: e,
                            negate: true,
                        });
                    }
                    alts.push(m);
                }
                Peer::IpBlock(_) => {}
            }
        }
        alts
    }

    /// The alternatives of a rule's ports; empty list = nothing can match.
    fn port_matches(&mut self, ports: &[PortSpec], family: Family) -> Vec<Vec<Match>> {
        if ports.is_empty() {
            return vec![Vec::new()];
        }
        let mut alts = Vec::new();
        for p in ports {
            if p.protocol == Protocol::Sctp && !self.opts.sctp {
                continue;
            }
            let mut m = vec![Match::L4Proto(p.protocol)];
            match &p.port {
                None => {}
                Some(PortRef::Number(n)) => m.push(Match::DPort(*n, p.end_port.unwrap_or(*n))),
                // Resolved per destination pod: one name can be different numbers.
                Some(PortRef::Name(name)) => {
                    let set = self.named_port_set(name, p.protocol, family);
                    m.push(Match::AddrPortInSet { family, set });
                }
            }
            alts.push(m);
        }
        alts
    }

    fn policy_chain(&mut self, policy: &crate::model::Policy, dir: Direction) -> Chain {
        let targets = policy.targets();
        let (own, peer) = match dir {
            Direction::Ingress => (AddrField::Dst, AddrField::Src),
            Direction::Egress => (AddrField::Src, AddrField::Dst),
        };
        let mut rules = Vec::new();
        for family in Family::BOTH {
            let set = self.pod_set(&targets, family);
            rules.push(Rule {
                counter: None,
                matches: vec![Match::InSet {
                    family,
                    field: own,
                    set,
                    negate: true,
                }],
                action: Action::Return,
            });
        }
        let mut seen = BTreeSet::new();
        for rule in policy.rules(dir) {
            for family in Family::BOTH {
                let peers = self.peer_matches(&rule.peers, peer, family);
                let ports = self.port_matches(&rule.ports, family);
                for pm in &peers {
                    for qm in &ports {
                        let r = Rule {
                            counter: None,
                            matches: pm.iter().chain(qm).cloned().collect(),
                            action: Action::Accept,
                        };
                        // A family-free rule (no address, no named port) comes out of both
                        // families: keep one.
                        if seen.insert(r.clone()) {
                            rules.push(r);
                        }
                    }
                }
            }
        }
        Chain { hook: None, rules }
    }
}

fn base_chain(hook: Hook, dir: Direction, opts: &CompileOptions) -> Chain {
    let field = match dir {
        Direction::Ingress => AddrField::Dst,
        Direction::Egress => AddrField::Src,
    };
    let accept = |m: Match| Rule {
        counter: None,
        matches: vec![m],
        action: Action::Accept,
    };
    let mut rules = if opts.cut_established {
        // Replies and ICMP errors pass; the original direction of an established connection
        // goes through the policies again, packet by packet.
        vec![accept(Match::Related), accept(Match::EstablishedReply)]
    } else {
        vec![accept(Match::EstablishedRelated)]
    };
    rules.extend([
        // Under default deny a pod must still resolve its neighbours (v6 has no ARP).
        Rule {
            counter: None,
            matches: vec![Match::NeighbourDiscovery],
            action: Action::Accept,
        },
    ]);
    let fail_closed: &[IpNet] = match hook {
        Hook::Forward(_) => &opts.fail_closed,
        Hook::Input(_) => &[],
    };
    for family in Family::BOTH {
        rules.push(Rule {
            counter: None,
            matches: Vec::new(),
            action: Action::Dispatch {
                family,
                field,
                map: dispatch_map(dir, family),
            },
        });
    }
    // Only on forward: on input the node's own addresses in the CIDR (the gateway) are
    // sources too, and the node is trusted anyway.
    {
        for net in fail_closed {
            let family = Family::of(&net.addr());
            rules.push(Rule {
                counter: None,
                matches: vec![
                    Match::InPrefix { field, net: *net },
                    Match::InSet {
                        family,
                        field,
                        set: known_set(family),
                        negate: true,
                    },
                ],
                action: Action::Drop,
            });
        }
    }
    Chain {
        hook: Some(hook),
        rules,
    }
}

/// The desired state of `inet weft-policy` on the node whose pods have `local: true`.
///
/// Everything not node-specific (policy chains, selector/ipBlock/named-port sets) is the same
/// on every node, whether or not a local pod needs it, so a pod arriving or leaving only ever
/// changes elements. Only the dispatch maps are node-specific.
pub fn compile(model: &Model, opts: &CompileOptions) -> Ruleset {
    compile_indexed(model, opts).0
}

/// [`compile`], plus the pod sets and named ports it made sets for (the incremental
/// [`crate::Compiler`] keeps them up to date element by element).
pub(crate) fn compile_indexed(
    model: &Model,
    opts: &CompileOptions,
) -> (Ruleset, Vec<PodSet>, Vec<(String, Protocol)>) {
    let mut b = Builder {
        model,
        namespaces: namespace_index(model),
        opts,
        out: Ruleset::default(),
        pod_sets: BTreeMap::new(),
        named_ports: BTreeSet::new(),
    };
    b.out.chains.insert(
        CHAIN_INGRESS.into(),
        base_chain(Hook::Forward(PRIO_INGRESS), Direction::Ingress, opts),
    );
    b.out.chains.insert(
        CHAIN_EGRESS.into(),
        base_chain(Hook::Forward(PRIO_EGRESS), Direction::Egress, opts),
    );
    b.out.chains.insert(
        CHAIN_EGRESS_LOCAL.into(),
        base_chain(Hook::Input(PRIO_EGRESS), Direction::Egress, opts),
    );
    for dir in [Direction::Ingress, Direction::Egress] {
        for family in Family::BOTH {
            b.out.sets.insert(
                dispatch_map(dir, family),
                Set::new(
                    SetKind::Dispatch(family),
                    format!("local pods isolated for {dir}"),
                ),
            );
        }
    }

    for family in Family::BOTH {
        let mut known = Set::new(SetKind::Addr(family), "local pods known to the model");
        for pod in model.pods.values().filter(|p| p.local && !p.host_network) {
            for ip in pod.ips.iter().filter(|ip| Family::of(ip) == family) {
                known.elements.insert(Element::Addr(*ip));
            }
        }
        b.out.sets.insert(known_set(family), known);
    }
    let mut dispatch: BTreeMap<(Direction, IpAddr), String> = BTreeMap::new();
    for dir in [Direction::Ingress, Direction::Egress] {
        let mut ns_chains: BTreeMap<&str, Chain> = BTreeMap::new();
        for policy in model.policies.values().filter(|p| p.isolates(dir)) {
            let mut chain = b.policy_chain(policy, dir);
            let name = policy_chain(dir, &policy.namespace, &policy.name);
            if opts.counters {
                for r in chain
                    .rules
                    .iter_mut()
                    .filter(|r| r.action == Action::Accept)
                {
                    r.counter = Some(name.clone());
                }
                b.out.counters.insert(
                    name.clone(),
                    CounterMeta {
                        direction: dir,
                        namespace: policy.namespace.clone(),
                        policy: Some(policy.name.clone()),
                    },
                );
            }
            b.out.chains.insert(name.clone(), chain);
            ns_chains
                .entry(policy.namespace.as_str())
                .or_default()
                .rules
                .push(Rule {
                    counter: None,
                    matches: Vec::new(),
                    action: Action::Jump(name),
                });
            // Dispatch the local pods this policy isolates to their namespace's chain.
            let ns_chain = namespace_chain(dir, &policy.namespace);
            for pod in model.pods_in(&policy.targets()).filter(|p| p.local) {
                for ip in &pod.ips {
                    let chain = dispatch
                        .entry((dir, *ip))
                        .or_insert_with(|| ns_chain.clone());
                    // Two live pods with one IP (a deletion not seen yet): a map key takes one
                    // verdict, nft refuses a second. Keep the same one whatever the order.
                    if ns_chain < *chain {
                        *chain = ns_chain.clone();
                    }
                }
            }
        }
        for (ns, mut chain) in ns_chains {
            let name = namespace_chain(dir, ns);
            if let Some(group) = opts.log_denied {
                // Denied: tell weftd once per new connection (rate-limited in the kernel).
                chain.rules.push(Rule {
                    counter: None,
                    matches: vec![
                        Match::New,
                        Match::Limit {
                            per_second: LOG_RATE,
                            burst: LOG_BURST,
                        },
                    ],
                    action: Action::Log {
                        group,
                        prefix: name.chars().take(120).collect(),
                    },
                });
            }
            // No policy of the namespace admitted it: the pod is isolated, drop.
            chain.rules.push(Rule {
                counter: opts.counters.then(|| name.clone()),
                matches: Vec::new(),
                action: Action::Drop,
            });
            if opts.counters {
                b.out.counters.insert(
                    name.clone(),
                    CounterMeta {
                        direction: dir,
                        namespace: ns.to_string(),
                        policy: None,
                    },
                );
            }
            b.out.chains.insert(name, chain);
        }
    }

    for ((dir, ip), chain) in dispatch {
        if let Some(set) = b.out.sets.get_mut(&dispatch_map(dir, Family::of(&ip))) {
            set.elements.insert(Element::Jump(ip, chain));
        }
    }

    // Named ports: (IP . number) of each pod declaring the name, in one shared set per name.
    let wanted = std::mem::take(&mut b.named_ports);
    for (name, protocol) in &wanted {
        let comment = format!("named port {name}/{}", protocol.as_str());
        let mut v4 = Set::new(SetKind::AddrPort(Family::V4), comment.clone());
        let mut v6 = Set::new(SetKind::AddrPort(Family::V6), comment);
        for pod in model.pods.values().filter(|p| !p.host_network) {
            if let Some(port) = pod.named_port(name, *protocol) {
                for ip in &pod.ips {
                    let s = if ip.is_ipv4() { &mut v4 } else { &mut v6 };
                    s.elements.insert(Element::AddrPort(*ip, port));
                }
            }
        }
        b.out
            .sets
            .insert(named_port_set_name(name, *protocol, Family::V4), v4);
        b.out
            .sets
            .insert(named_port_set_name(name, *protocol, Family::V6), v6);
    }
    let pod_sets = b.pod_sets.into_keys().collect();
    (b.out, pod_sets, wanted.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Labels, Namespace, Pod, Policy, Selector};

    #[test]
    fn one_dispatch_verdict_per_address() {
        let mut m = Model::new();
        for ns in ["x", "y"] {
            m.set_namespace(Namespace::new(ns, Labels::new()));
            m.set_policy(Policy::new(
                ns,
                "deny",
                Selector::all(),
                None,
                vec![],
                vec![],
            ));
            // The same IP in both namespaces: one pod is gone but its deletion not seen yet.
            m.set_pod(Pod {
                namespace: ns.into(),
                name: "p".into(),
                labels: Labels::new(),
                ips: vec!["10.0.0.5".parse().unwrap()],
                named_ports: vec![],
                local: true,
                host_network: false,
            });
        }
        let r = compile(&m, &CompileOptions::default());
        let elems: Vec<&Element> = r.sets["in4"].elements.iter().collect();
        assert_eq!(
            elems,
            [&Element::Jump("10.0.0.5".parse().unwrap(), "ni_x".into())]
        );
    }
}
