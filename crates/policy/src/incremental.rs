//! The incremental compiler: the same desired state as [`compile()`](crate::compile::compile), kept up to date per event.
//! A pod event recomputes only the elements of its addresses (in every pod set, named-port set,
//! the known sets and the dispatch maps); a namespace event the members of the sets selecting
//! namespaces; a policy event recompiles (rare, and a policy can change any set), lazily: a
//! burst of policy events (a re-list) costs one compile, when the ruleset is next asked for.
//! Exact: the tests compare it with [`compile()`](crate::compile::compile) over random event
//! streams.
//!
//! The element changes are journalled ([`Changes`]), so the kernel update of a pod event is
//! made from them alone ([`Changes::batch`]), without comparing whole rulesets.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use crate::compile::{
    compile_indexed, dispatch_map, known_set, members, named_port_set_name, namespace_chain,
    namespace_index, pod_set_name, CompileOptions, Element, Family, Ruleset, Set,
};
use crate::model::{Direction, Key, Model, Namespace, Pod, PodSet, Policy, Protocol};
use crate::nft::{build, diff, Batch, Command};

pub struct Compiler {
    opts: CompileOptions,
    model: Model,
    ruleset: Ruleset,
    pod_sets: Vec<PodSet>,
    named_ports: Vec<(String, Protocol)>,
    /// Which pods hold an address (normally one; two while a deletion is not seen yet).
    owners: HashMap<IpAddr, BTreeSet<Key>>,
    /// A policy or the options changed: `ruleset` is out of date until recompiled.
    stale: bool,
    changes: Changes,
}

/// What changed in the desired ruleset since the last [`Compiler::take_changes`]: net element
/// additions and removals per set, or `full` after a recompile (anything may have changed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub full: bool,
    pub sets: BTreeMap<String, Delta>,
}

/// Net element changes of one set: `added` were absent before, `removed` were present.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    pub added: BTreeSet<Element>,
    pub removed: BTreeSet<Element>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        !self.full
            && self
                .sets
                .values()
                .all(|d| d.added.is_empty() && d.removed.is_empty())
    }

    fn added(&mut self, set: &str, e: Element) {
        if self.full {
            return;
        }
        let d = self.sets.entry(set.to_string()).or_default();
        if !d.removed.remove(&e) {
            d.added.insert(e);
        }
    }

    fn removed(&mut self, set: &str, e: Element) {
        if self.full {
            return;
        }
        let d = self.sets.entry(set.to_string()).or_default();
        if !d.added.remove(&e) {
            d.removed.insert(e);
        }
    }

    /// The batch that turns `programmed` (the desired state when the changes were last
    /// taken) into `desired`: element commands only (deletes first: a dispatch map key that
    /// changes its verdict is deleted, then added), or the full diff after a recompile, or
    /// the atomic build when nothing is programmed yet.
    pub fn batch(&self, programmed: Option<&Ruleset>, desired: &Ruleset) -> Batch {
        let Some(old) = programmed else {
            return build(desired);
        };
        if self.full {
            return diff(old, desired);
        }
        let mut commands = Vec::new();
        for (name, d) in &self.sets {
            if let (Some(set), false) = (desired.sets.get(name), d.removed.is_empty()) {
                let e = d.removed.iter().cloned().collect();
                commands.push(Command::DeleteElements(name.clone(), set.kind, e));
            }
        }
        for (name, d) in &self.sets {
            if let (Some(set), false) = (desired.sets.get(name), d.added.is_empty()) {
                let e = d.added.iter().cloned().collect();
                commands.push(Command::AddElements(name.clone(), set.kind, e));
            }
        }
        Batch { commands }
    }

    /// `programmed` after [`Self::batch`] succeeded: O(change) unless `full`.
    pub fn apply_to(&self, programmed: &mut Ruleset, desired: &Ruleset) {
        if self.full {
            *programmed = desired.clone();
            return;
        }
        for (name, d) in &self.sets {
            if let Some(s) = programmed.sets.get_mut(name) {
                for e in &d.removed {
                    s.elements.remove(e);
                }
                s.elements.extend(d.added.iter().cloned());
            }
        }
    }
}

/// Puts `e` in `set` or takes it out, journalling what actually changed.
fn put(changes: &mut Changes, name: &str, set: &mut Set, e: Element, present: bool) {
    if present {
        if set.elements.insert(e.clone()) {
            changes.added(name, e);
        }
    } else if set.elements.remove(&e) {
        changes.removed(name, e);
    }
}

impl Compiler {
    pub fn new(model: Model, opts: CompileOptions) -> Compiler {
        let mut c = Compiler {
            opts,
            model,
            ruleset: Ruleset::default(),
            pod_sets: Vec::new(),
            named_ports: Vec::new(),
            owners: HashMap::new(),
            stale: true,
            changes: Changes::default(),
        };
        for pod in c.model.pods.values() {
            for ip in &pod.ips {
                c.owners.entry(*ip).or_default().insert(pod.key());
            }
        }
        c.settle();
        c
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The named counters of the ruleset as last compiled (what /metrics reads back).
    pub fn counters(&self) -> &BTreeMap<String, crate::compile::CounterMeta> {
        &self.ruleset.counters
    }

    pub fn options(&self) -> &CompileOptions {
        &self.opts
    }

    /// The desired state after every event so far (what [`compile()`](crate::compile::compile)
    /// of [`Self::model`] gives); recompiles first if a policy or the options changed.
    pub fn ruleset(&mut self) -> &Ruleset {
        self.settle();
        &self.ruleset
    }

    /// The changes since the last call (the ruleset is brought up to date first), for
    /// [`Changes::batch`] against what the previous call's ruleset programmed.
    pub fn take_changes(&mut self) -> Changes {
        self.settle();
        std::mem::take(&mut self.changes)
    }

    /// Whether the options changed.
    pub fn set_options(&mut self, opts: CompileOptions) -> bool {
        if self.opts == opts {
            return false;
        }
        self.opts = opts;
        self.stale = true;
        true
    }

    /// Whether the pod changed (an equal pod costs a comparison).
    pub fn set_pod(&mut self, pod: Pod) -> bool {
        if self.model.pods.get(&pod.key()) == Some(&pod) {
            return false;
        }
        let old = self.model.pods.insert(pod.key(), pod.clone());
        self.pod_changed(old, Some(pod));
        true
    }

    pub fn remove_pod(&mut self, key: &Key) -> bool {
        match self.model.remove_pod(key) {
            Some(old) => {
                self.pod_changed(Some(old), None);
                true
            }
            None => false,
        }
    }

    pub fn set_namespace(&mut self, ns: Namespace) -> bool {
        if self.model.namespaces.get(&ns.name) == Some(&ns) {
            return false;
        }
        self.model.set_namespace(ns);
        self.refresh_namespace_selected();
        true
    }

    pub fn remove_namespace(&mut self, name: &str) -> bool {
        if self.model.remove_namespace(name).is_none() {
            return false;
        }
        self.refresh_namespace_selected();
        true
    }

    pub fn set_policy(&mut self, policy: Policy) -> bool {
        if self.model.policies.get(&policy.key()) == Some(&policy) {
            return false;
        }
        self.model.set_policy(policy);
        self.stale = true;
        true
    }

    pub fn remove_policy(&mut self, key: &Key) -> bool {
        if self.model.remove_policy(key).is_none() {
            return false;
        }
        self.stale = true;
        true
    }

    fn settle(&mut self) {
        if !self.stale {
            return;
        }
        let (ruleset, pod_sets, named_ports) = compile_indexed(&self.model, &self.opts);
        self.ruleset = ruleset;
        self.pod_sets = pod_sets;
        self.named_ports = named_ports;
        self.changes = Changes {
            full: true,
            sets: BTreeMap::new(),
        };
        self.stale = false;
    }

    /// Namespace labels decide the members of namespaceSelector sets only (a policy's targets
    /// are in its own namespace by name).
    fn refresh_namespace_selected(&mut self) {
        if self.stale {
            return;
        }
        let index = namespace_index(&self.model);
        for set in self
            .pod_sets
            .iter()
            .filter(|s| matches!(s.namespaces, crate::model::Namespaces::Selected(_)))
        {
            let mut wanted = [BTreeSet::new(), BTreeSet::new()];
            for pod in members(&self.model, &index, set) {
                for ip in &pod.ips {
                    wanted[usize::from(ip.is_ipv6())].insert(Element::Addr(*ip));
                }
            }
            for (family, elements) in Family::BOTH.into_iter().zip(wanted) {
                let name = pod_set_name(set, family);
                if let Some(s) = self.ruleset.sets.get_mut(&name) {
                    let gone: Vec<Element> = s.elements.difference(&elements).cloned().collect();
                    let new: Vec<Element> = elements.difference(&s.elements).cloned().collect();
                    for e in gone {
                        put(&mut self.changes, &name, s, e, false);
                    }
                    for e in new {
                        put(&mut self.changes, &name, s, e, true);
                    }
                }
            }
        }
    }

    fn pod_changed(&mut self, old: Option<Pod>, new: Option<Pod>) {
        if let Some(o) = &old {
            for ip in &o.ips {
                if let Some(keys) = self.owners.get_mut(ip) {
                    keys.remove(&o.key());
                    if keys.is_empty() {
                        self.owners.remove(ip);
                    }
                }
            }
        }
        if let Some(n) = &new {
            for ip in &n.ips {
                self.owners.entry(*ip).or_default().insert(n.key());
            }
        }
        if self.stale {
            // A recompile follows anyway.
            return;
        }
        let ips: BTreeSet<IpAddr> = old
            .iter()
            .chain(new.iter())
            .flat_map(|p| p.ips.clone())
            .collect();
        let Compiler {
            model,
            ruleset,
            pod_sets,
            named_ports,
            owners,
            changes,
            ..
        } = self;
        let owners_of = |ip: &IpAddr| -> Vec<&Pod> {
            owners
                .get(ip)
                .into_iter()
                .flatten()
                .filter_map(|k| model.pods.get(k))
                .collect()
        };

        // Pod sets the pod was or is in: each address is in iff one of its holders is.
        for set in pod_sets.iter() {
            let touched = old.iter().chain(new.iter()).any(|p| model.pod_in(set, p));
            if !touched {
                continue;
            }
            for ip in &ips {
                let present = owners_of(ip).iter().any(|p| model.pod_in(set, p));
                let name = pod_set_name(set, Family::of(ip));
                if let Some(s) = ruleset.sets.get_mut(&name) {
                    put(changes, &name, s, Element::Addr(*ip), present);
                }
            }
        }
        for ip in &ips {
            let holders = owners_of(ip);
            let family = Family::of(ip);
            // Named ports.
            for (port_name, protocol) in named_ports.iter() {
                let name = named_port_set_name(port_name, *protocol, family);
                let Some(s) = ruleset.sets.get_mut(&name) else {
                    continue;
                };
                let wanted: BTreeSet<Element> = holders
                    .iter()
                    .filter(|p| !p.host_network)
                    .filter_map(|p| p.named_port(port_name, *protocol))
                    .map(|port| Element::AddrPort(*ip, port))
                    .collect();
                let present: Vec<Element> = s
                    .elements
                    .range(Element::AddrPort(*ip, 0)..=Element::AddrPort(*ip, u16::MAX))
                    .cloned()
                    .collect();
                for e in present.into_iter().filter(|e| !wanted.contains(e)) {
                    put(changes, &name, s, e, false);
                }
                for e in wanted {
                    put(changes, &name, s, e, true);
                }
            }
            let local: Vec<&&Pod> = holders
                .iter()
                .filter(|p| p.local && !p.host_network)
                .collect();
            let name = known_set(family);
            if let Some(s) = ruleset.sets.get_mut(&name) {
                put(changes, &name, s, Element::Addr(*ip), !local.is_empty());
            }
            // Dispatch: as compile decides it (the least chain among isolated holders).
            for dir in [Direction::Ingress, Direction::Egress] {
                let chain = local
                    .iter()
                    .filter(|p| !model.isolating(p, dir).is_empty())
                    .map(|p| namespace_chain(dir, &p.namespace))
                    .min();
                let name = dispatch_map(dir, family);
                let Some(s) = ruleset.sets.get_mut(&name) else {
                    continue;
                };
                let present: Vec<Element> = s
                    .elements
                    .range(Element::Jump(*ip, String::new())..)
                    .take_while(|e| matches!(e, Element::Jump(i, _) if i == ip))
                    .cloned()
                    .collect();
                let wanted = chain.map(|c| Element::Jump(*ip, c));
                for e in present.into_iter().filter(|e| Some(e) != wanted.as_ref()) {
                    put(changes, &name, s, e, false);
                }
                if let Some(e) = wanted {
                    put(changes, &name, s, e, true);
                }
            }
        }
    }
}
