//! Pods made by the lab itself: a netns attached through a node's conflist, the way a runtime
//! attaches one (CNI ADD in order, DEL in reverse with the ADD result as prevResult).

use crate::cluster::Cluster;
use crate::conflist::{self, Attachment, ConfList};
use crate::error::{io_err, LabError};
use crate::ns::Netns;
use crate::plugin::PluginRunner;
use crate::registry;
use ipnet::IpNet;
use serde_json::{Map, Value};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use weft_netops::netns::NetNs;

/// A pod: a netns attached through the node's conflist.
#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    pub node: String,
    pub netns: Arc<Netns>,
    pub ips: Vec<IpAddr>,
    pub container_id: String,
    /// The conflist's final ADD result (used as prevResult for DEL).
    pub result: Value,
    pub conflist: ConfList,
    /// The runtimeConfig capabilities given at ADD (e.g. portMappings): a runtime passes them
    /// again on DEL, or portmap cannot find its rules.
    pub capability_args: Map<String, Value>,
    /// A Kubernetes Pod (created with kubectl, networked by containerd through weft) in this
    /// namespace; None for the lab's own CNI pods.
    pub kube_namespace: Option<String>,
}

impl Pod {
    pub fn ipv4(&self) -> Option<IpAddr> {
        self.ips.iter().copied().find(IpAddr::is_ipv4)
    }
    pub fn ipv6(&self) -> Option<IpAddr> {
        self.ips.iter().copied().find(IpAddr::is_ipv6)
    }
    pub fn ns(&self) -> &NetNs {
        self.netns.handle()
    }
}

impl Cluster {
    pub fn add_pod(&mut self, node: &str, name: &str) -> Result<Pod, LabError> {
        let path = self.node_or_err(node)?.conflist_path();
        let list = ConfList::load(&path).map_err(|source| LabError::Pod {
            pod: name.into(),
            node: node.into(),
            source: Box::new(source),
        })?;
        self.add_pod_with(node, name, &list, Map::new())
    }

    /// Adds a pod with an explicit conflist and capability args (e.g. `portMappings`). On
    /// failure the attachment is deleted again (as a runtime does) and the netns removed.
    pub fn add_pod_with(
        &mut self,
        node: &str,
        name: &str,
        list: &ConfList,
        capability_args: Map<String, Value>,
    ) -> Result<Pod, LabError> {
        if name.is_empty()
            || name.len() > 40
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(LabError::Setup(format!(
                "bad pod name {name:?} (a-z, 0-9, -)"
            )));
        }
        if self.pod(name).is_some() {
            return Err(LabError::Setup(format!("pod {name} exists already")));
        }
        let n = self.node_or_err(node)?;
        let netns = {
            let _g = registry::create_guard().map_err(|_| LabError::Interrupted)?;
            let ns_name = format!("{}-p-{name}", self.id);
            Netns::named(&ns_name).map_err(io_err("create netns", Path::new(&ns_name)))?
        };
        let container_id = format!("{}-{name}", self.id);
        let mut att = Attachment::for_pod(&container_id, &netns.path(), "default", name);
        att.capability_args = capability_args;
        let runner = PluginRunner::new(&self.bin_dir, n.ns());
        let pod_err = |source| LabError::Pod {
            pod: name.into(),
            node: node.into(),
            source: Box::new(source),
        };
        let result = match conflist::add(&runner, list, &att) {
            Ok(r) => r,
            Err(e) => {
                let _ = conflist::del(&runner, list, &att, None);
                return Err(pod_err(e));
            }
        };
        let ips: Vec<IpAddr> = result["ips"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|ip| ip["address"].as_str())
                    .filter_map(|s| s.parse::<IpNet>().ok())
                    .map(|n| n.addr())
                    .collect()
            })
            .unwrap_or_default();
        let pod = Pod {
            name: name.into(),
            node: node.into(),
            netns: Arc::new(netns),
            ips,
            container_id,
            result,
            conflist: list.clone(),
            capability_args: att.capability_args.clone(),
            kube_namespace: None,
        };
        self.pods.push(pod.clone());
        Ok(pod)
    }

    /// CNI DEL (reverse order, ADD result as prevResult), then removes the pod's netns.
    pub fn remove_pod(&mut self, name: &str) -> Result<(), LabError> {
        let i = self
            .pods
            .iter()
            .position(|p| p.name == name)
            .ok_or_else(|| LabError::Setup(format!("no pod {name}")))?;
        let pod = self.pods.remove(i);
        if let Some(ns) = &pod.kube_namespace {
            return self.delete_kube_pod(ns, &pod.name);
        }
        let node = self.node_or_err(&pod.node)?;
        let runner = PluginRunner::new(&self.bin_dir, node.ns());
        let mut att =
            Attachment::for_pod(&pod.container_id, &pod.netns.path(), "default", &pod.name);
        att.capability_args = pod.capability_args.clone();
        conflist::del(&runner, &pod.conflist, &att, Some(&pod.result)).map_err(|source| {
            LabError::Pod {
                pod: pod.name.clone(),
                node: pod.node.clone(),
                source: Box::new(source),
            }
        })
    }
}
