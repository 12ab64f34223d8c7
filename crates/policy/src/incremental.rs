//! The incremental compiler: the same desired state as [`compile()`](crate::compile::compile), kept up to date per event.
//! A pod event recomputes only the elements of its addresses (in every pod set, named-port set,
//! the known sets and the dispatch maps); a namespace event the members of the sets selecting
//! namespaces; a policy event recompiles (rare, and a policy can change any set). Exact: the
//! tests compare it with [`compile()`](crate::compile::compile) over random event streams.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use crate::compile::{
    compile_indexed, dispatch_map, known_set, members, named_port_set_name, namespace_chain,
    namespace_index, pod_set_name, CompileOptions, Element, Family, Ruleset,
};
use crate::model::{Direction, Key, Model, Namespace, Pod, PodSet, Policy, Protocol};

pub struct Compiler {
    opts: CompileOptions,
    model: Model,
    ruleset: Ruleset,
    pod_sets: Vec<PodSet>,
    named_ports: Vec<(String, Protocol)>,
    /// Which pods hold an address (normally one; two while a deletion is not seen yet).
    owners: HashMap<IpAddr, BTreeSet<Key>>,
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
        };
        for pod in c.model.pods.values() {
            for ip in &pod.ips {
                c.owners.entry(*ip).or_default().insert(pod.key());
            }
        }
        c.recompile();
        c
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The desired state after every event so far (what [`compile()`](crate::compile::compile) of [`Self::model`] gives).
    pub fn ruleset(&self) -> &Ruleset {
        &self.ruleset
    }

    pub fn set_options(&mut self, opts: CompileOptions) {
        self.opts = opts;
        self.recompile();
    }

    pub fn set_pod(&mut self, pod: Pod) {
        let old = self.model.pods.insert(pod.key(), pod.clone());
        self.pod_changed(old, Some(pod));
    }

    pub fn remove_pod(&mut self, key: &Key) {
        if let Some(old) = self.model.remove_pod(key) {
            self.pod_changed(Some(old), None);
        }
    }

    pub fn set_namespace(&mut self, ns: Namespace) {
        self.model.set_namespace(ns);
        self.refresh_namespace_selected();
    }

    pub fn remove_namespace(&mut self, name: &str) {
        if self.model.remove_namespace(name).is_some() {
            self.refresh_namespace_selected();
        }
    }

    pub fn set_policy(&mut self, policy: Policy) {
        self.model.set_policy(policy);
        self.recompile();
    }

    pub fn remove_policy(&mut self, key: &Key) {
        if self.model.remove_policy(key).is_some() {
            self.recompile();
        }
    }

    fn recompile(&mut self) {
        let (ruleset, pod_sets, named_ports) = compile_indexed(&self.model, &self.opts);
        self.ruleset = ruleset;
        self.pod_sets = pod_sets;
        self.named_ports = named_ports;
    }

    /// Namespace labels decide the members of namespaceSelector sets only (a policy's targets
    /// are in its own namespace by name).
    fn refresh_namespace_selected(&mut self) {
        let index = namespace_index(&self.model);
        for set in self
            .pod_sets
            .iter()
            .filter(|s| matches!(s.namespaces, crate::model::Namespaces::Selected(_)))
        {
            let mut v4 = BTreeSet::new();
            let mut v6 = BTreeSet::new();
            for pod in members(&self.model, &index, set) {
                for ip in &pod.ips {
                    let s = if ip.is_ipv4() { &mut v4 } else { &mut v6 };
                    s.insert(Element::Addr(*ip));
                }
            }
            for (family, elements) in [(Family::V4, v4), (Family::V6, v6)] {
                if let Some(s) = self.ruleset.sets.get_mut(&pod_set_name(set, family)) {
                    s.elements = elements;
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
                if let Some(s) = ruleset.sets.get_mut(&pod_set_name(set, Family::of(ip))) {
                    if present {
                        s.elements.insert(Element::Addr(*ip));
                    } else {
                        s.elements.remove(&Element::Addr(*ip));
                    }
                }
            }
        }
        for ip in &ips {
            let holders = owners_of(ip);
            let family = Family::of(ip);
            // Named ports.
            for (name, protocol) in named_ports.iter() {
                let Some(s) = ruleset
                    .sets
                    .get_mut(&named_port_set_name(name, *protocol, family))
                else {
                    continue;
                };
                let stale: Vec<Element> = s
                    .elements
                    .range(Element::AddrPort(*ip, 0)..=Element::AddrPort(*ip, u16::MAX))
                    .cloned()
                    .collect();
                for e in stale {
                    s.elements.remove(&e);
                }
                for p in holders.iter().filter(|p| !p.host_network) {
                    if let Some(port) = p.named_port(name, *protocol) {
                        s.elements.insert(Element::AddrPort(*ip, port));
                    }
                }
            }
            let local: Vec<&&Pod> = holders
                .iter()
                .filter(|p| p.local && !p.host_network)
                .collect();
            if let Some(s) = ruleset.sets.get_mut(&known_set(family)) {
                if local.is_empty() {
                    s.elements.remove(&Element::Addr(*ip));
                } else {
                    s.elements.insert(Element::Addr(*ip));
                }
            }
            // Dispatch: as compile decides it (the least chain among isolated holders).
            for dir in [Direction::Ingress, Direction::Egress] {
                let chain = local
                    .iter()
                    .filter(|p| !model.isolating(p, dir).is_empty())
                    .map(|p| namespace_chain(dir, &p.namespace))
                    .min();
                if let Some(s) = ruleset.sets.get_mut(&dispatch_map(dir, family)) {
                    s.elements
                        .retain(|e| !matches!(e, Element::Jump(i, _) if i == ip));
                    if let Some(chain) = chain {
                        s.elements.insert(Element::Jump(*ip, chain));
                    }
                }
            }
        }
    }
}
