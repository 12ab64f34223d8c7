//! What nodes tell each other through the datastore.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// One node as its peers see it: where its pods live and how to reach them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    pub name: String,
    /// The node's address on the underlay (host-gw next hop, VXLAN outer destination).
    pub underlay_ip: IpAddr,
    /// The node's pod CIDRs (one per family).
    pub pod_cidrs: Vec<IpNet>,
    /// MAC of the node's VXLAN device (`aa:bb:cc:dd:ee:ff`), when it runs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_mac: Option<String>,
}

/// What this node publishes about itself (its pod CIDRs come from the datastore).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalIdentity {
    pub name: String,
    pub underlay_ip: IpAddr,
    pub vtep_mac: Option<String>,
}

/// What registration with the datastore yields for this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub pod_cidrs: Vec<IpNet>,
    /// The cluster network(s): traffic inside them is never masqueraded.
    pub cluster_cidrs: Vec<IpNet>,
    /// The VTEP MAC the datastore assigns this node (static files name it; others leave it
    /// to the node, which keeps its own in its state dir).
    pub vtep_mac: Option<String>,
}
