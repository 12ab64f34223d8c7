//! The `kubernetes` datastore: the cluster's Node objects are the datastore, as with flannel's
//! kube subnet manager (`--kube-subnet-mgr`).
//!
//! - This node's pod CIDRs are `spec.podCIDRs` (or the older `spec.podCIDR`) of its Node,
//!   assigned by kube-controller-manager (`--allocate-node-cidrs`, kubeadm
//!   `--pod-network-cidr`). weftd waits until they are set.
//! - weftd publishes what peers need on its own Node as annotations:
//!   [`ANNOTATION_UNDERLAY_IP`] always, [`ANNOTATION_VTEP_MAC`] when it runs a VXLAN device.
//!   It puts them back if somebody removes or changes them.
//! - Peers are all other Nodes with pod CIDRs. Their underlay IP is the annotation, else the
//!   node's `InternalIP` (so nodes not (yet) running weftd are reachable with host-gw).
//! - The cluster network is not stored in Kubernetes: it comes from `--cluster-cidr`.
//!
//! RBAC (a ClusterRole bound to weftd's service account): `nodes`: `get`, `list`, `watch`,
//! `patch`.

use super::{
    identity_changed, send_if_changed, Backoff, DatastoreError, Health, IdentityRx, OwnState,
    OwnTx, PeersTx,
};
use crate::node::{LocalIdentity, NodeRecord, Registration};
use ::kube::api::{Api, Patch, PatchParams};
use ::kube::config::{KubeConfigOptions, Kubeconfig};
use ::kube::{Client, Config};
use futures::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;
use tracing::{debug, info, warn};

/// This node's address on the underlay, set by weftd on its own Node.
pub const ANNOTATION_UNDERLAY_IP: &str = "weft.dev/underlay-ip";
/// MAC of this node's VXLAN device, set by weftd on its own Node (VXLAN backend only).
pub const ANNOTATION_VTEP_MAC: &str = "weft.dev/vtep-mac";

/// Upper bound for one request (get, list, patch): a request to an unreachable API server
/// would otherwise wait for the client's own, much longer, timeouts.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Server-side duration of one watch request; the watch is then resumed where it stopped.
const WATCH_TIMEOUT_SECS: u32 = 290;
/// Nodes per page of a (re-)list: bounds the bytes of one answer held while it is decoded
/// (a Node object is ~10-14 KiB of JSON; only its few fields weftd uses are kept).
const LIST_PAGE_SIZE: u32 = 100;
/// How often to look again while this node has no pod CIDR yet (flannel: every second).
const POD_CIDR_POLL: Duration = Duration::from_secs(1);

pub struct KubeConfig {
    /// Path of a kubeconfig file; without it: in-cluster service account, then `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// This node's Kubernetes Node name.
    pub node_name: String,
    /// The cluster network(s) (`--cluster-cidr`); Kubernetes does not tell nodes about it.
    pub cluster_cidrs: Vec<IpNet>,
}

pub struct KubeStore {
    pub cfg: KubeConfig,
    client: Option<Client>,
    /// The API server's URL, for error messages.
    server: String,
}

impl KubeStore {
    pub fn new(cfg: KubeConfig) -> KubeStore {
        KubeStore {
            cfg,
            client: None,
            server: String::new(),
        }
    }

    /// Waits until this node has pod CIDRs, then annotates it with `me`.
    pub async fn register(
        &mut self,
        me: &LocalIdentity,
        health: &Health,
    ) -> Result<Registration, DatastoreError> {
        if self.cfg.cluster_cidrs.is_empty() {
            return Err(DatastoreError::Kubernetes(
                "--cluster-cidr is required with --datastore kubernetes".to_string(),
            ));
        }
        let client = self.client().await?;
        let api: Api<Node> = Api::all(client.clone());
        // Read as the watch reads it: only the fields weftd uses.
        let slim: Api<SlimNode> = Api::all(client);
        let name = self.cfg.node_name.clone();
        let mut backoff = Backoff::new();

        let pod_cidrs = loop {
            let node = match call(
                &self.server,
                format!("get node {name}"),
                slim.get_opt(&name),
            )
            .await
            {
                Ok(Some(node)) => node,
                Ok(None) => {
                    let msg = format!(
                        "node {name} not found: is the node name right (--node-name, \
                         usually the hostname)?"
                    );
                    self.wait(health, msg, backoff.next()).await;
                    continue;
                }
                Err(e) => {
                    self.wait(health, e, backoff.next()).await;
                    continue;
                }
            };
            backoff.reset();
            let cidrs = NodeFacts::of_slim(&node).map_or(Ok(Vec::new()), |f| f.pod_cidrs);
            match cidrs {
                Ok(cidrs) if !cidrs.is_empty() => break cidrs,
                Ok(_) => {
                    let msg = format!(
                        "node {name} has no spec.podCIDRs yet: is kube-controller-manager \
                         running with --allocate-node-cidrs (kubeadm --pod-network-cidr)?"
                    );
                    self.wait(health, msg, POD_CIDR_POLL).await;
                }
                Err(e) => self.wait(health, e, POD_CIDR_POLL).await,
            }
        };

        loop {
            match patch_annotations(&api, &self.server, &name, me).await {
                Ok(()) => break,
                Err(e) => self.wait(health, e, backoff.next()).await,
            }
        }
        health.ok();
        info!(node = %name, pod_cidrs = ?pod_cidrs, underlay_ip = %me.underlay_ip,
              "kubernetes: registered");
        Ok(Registration {
            pod_cidrs,
            cluster_cidrs: self.cfg.cluster_cidrs.clone(),
            vtep_mac: None,
        })
    }

    /// Lists and watches all Nodes (kube-runtime's watcher: paginated list, watch with
    /// bookmarks, re-list on 410 Gone, backoff on errors), keeping of each only the few facts
    /// weftd needs ([`NodeFacts`]); sends the other nodes when a peer-relevant fact changed and
    /// keeps this node's annotations in place.
    pub async fn run(
        mut self,
        mut identity: IdentityRx,
        peers: PeersTx,
        own_tx: OwnTx,
        health: Health,
    ) -> Result<(), DatastoreError> {
        let mut me = identity.borrow_and_update().clone();
        use ::kube::runtime::watcher::{self, Event};
        use ::kube::runtime::WatchStreamExt;

        let client = self.client().await?;
        // Patches of our own Node go through the full type; the watch decodes only what weftd
        // reads (SlimNode), so a Node's status, images and managed fields are never kept.
        let api: Api<Node> = Api::all(client.clone());
        let slim: Api<SlimNode> = Api::all(client);
        let config = watcher::Config::default()
            .timeout(WATCH_TIMEOUT_SECS)
            .page_size(LIST_PAGE_SIZE);
        let mut events = watcher::watcher(slim, config).default_backoff().boxed();
        // The nodes as last listed and watched; `listing` collects a (re-)list until it is
        // complete, so that peers are only ever sent from a whole list.
        let mut nodes: BTreeMap<String, NodeFacts> = BTreeMap::new();
        let mut listing: Option<BTreeMap<String, NodeFacts>> = None;
        let mut own = OwnNode::new();
        loop {
            let item = tokio::select! {
                item = events.next() => item,
                _ = tokio::time::sleep_until(own.retry_at), if own.needs_patch => {
                    own.patch(&api, &self.server, &me, &health).await;
                    continue;
                }
                // A new underlay address: annotate our Node with it (peers route to it).
                _ = identity_changed(&mut identity) => {
                    me = identity.borrow_and_update().clone();
                    info!(node = %me.name, underlay_ip = %me.underlay_ip, "kubernetes: this node's underlay address changed");
                    own.needs_patch = true;
                    own.retry_at = tokio::time::Instant::now();
                    publish(&nodes, &me, &peers);
                    continue;
                }
            };
            let event = match item {
                None => return Err(DatastoreError::Kubernetes("node watch ended".to_string())),
                Some(Err(e)) => {
                    let why = describe_watch_error(&self.server, &e);
                    warn!(error = %why, "kubernetes: node watch failed, retrying");
                    health.failed(why);
                    continue;
                }
                Some(Ok(event)) => event,
            };
            health.ok();
            // Which node changed in a way peers care about (None: nothing did).
            let changed = match event {
                Event::Init => {
                    listing = Some(BTreeMap::new());
                    continue;
                }
                Event::InitApply(node) => {
                    if let (Some(list), Some(facts)) = (listing.as_mut(), NodeFacts::of_slim(&node))
                    {
                        list.insert(facts.name.clone(), facts);
                    }
                    continue;
                }
                Event::InitDone => {
                    nodes = listing.take().unwrap_or_default();
                    debug!(nodes = nodes.len(), "kubernetes: listed nodes");
                    send_if_changed(&own_tx, own.check(nodes.get(&me.name), &me));
                    publish(&nodes, &me, &peers);
                    continue;
                }
                Event::Apply(node) => NodeFacts::of_slim(&node).and_then(|facts| {
                    let name = facts.name.clone();
                    let before = nodes.insert(name.clone(), facts);
                    (before.as_ref() != nodes.get(&name)).then_some(name)
                }),
                Event::Delete(node) => node
                    .metadata
                    .name
                    .and_then(|name| nodes.remove(&name).map(|_| name)),
            };
            let Some(name) = changed else { continue };
            if name == me.name {
                send_if_changed(&own_tx, own.check(nodes.get(&me.name), &me));
            } else {
                publish(&nodes, &me, &peers);
            }
        }
    }

    /// The client, made on first use.
    async fn client(&mut self) -> Result<Client, DatastoreError> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let (client, server) = make_client(self.cfg.kubeconfig.as_deref()).await?;
        self.server = server;
        self.client = Some(client.clone());
        Ok(client)
    }

    async fn wait(&self, health: &Health, why: impl ToString, delay: Duration) {
        let why = why.to_string();
        warn!(node = %self.cfg.node_name, retry_in = ?delay, "kubernetes: {why}");
        health.failed(why);
        tokio::time::sleep(delay).await;
    }
}

/// Keeps this node's annotations in place while watching.
struct OwnNode {
    needs_patch: bool,
    retry_at: tokio::time::Instant,
    backoff: Backoff,
}

impl OwnNode {
    fn new() -> OwnNode {
        OwnNode {
            needs_patch: false,
            retry_at: tokio::time::Instant::now(),
            backoff: Backoff::new(),
        }
    }

    /// Looks at the latest facts of our own Node (`None`: it was deleted): what this node's
    /// registration is now, and whether our annotations need putting back.
    fn check(&mut self, node: Option<&NodeFacts>, me: &LocalIdentity) -> OwnState {
        let Some(node) = node else {
            warn!(node = %me.name, "kubernetes: this node's Node object was deleted");
            self.needs_patch = false;
            return OwnState::Lost(format!("this node's Node object {} was deleted", me.name));
        };
        if !node.annotations_current(me) && !self.needs_patch {
            info!(node = %me.name, "kubernetes: this node's annotations are missing or stale, patching");
            self.needs_patch = true;
            self.retry_at = tokio::time::Instant::now();
        }
        match &node.pod_cidrs {
            // A Node re-created (kubectl delete node, kubelet re-registers) has none until
            // kube-controller-manager assigns them again.
            Ok(cidrs) if cidrs.is_empty() => OwnState::Lost(format!(
                "node {} has no spec.podCIDRs (re-created?): waiting for kube-controller-manager \
                 to assign one",
                me.name
            )),
            Ok(cidrs) => OwnState::Registered(cidrs.clone()),
            Err(e) => OwnState::Lost(e.clone()),
        }
    }

    async fn patch(&mut self, api: &Api<Node>, server: &str, me: &LocalIdentity, health: &Health) {
        match patch_annotations(api, server, &me.name, me).await {
            Ok(()) => {
                self.needs_patch = false;
                self.backoff.reset();
            }
            Err(e) => {
                let delay = self.backoff.next();
                self.retry_at = tokio::time::Instant::now() + delay;
                warn!(error = %e, retry_in = ?delay, "kubernetes: cannot annotate this node");
                health.failed(e);
            }
        }
    }
}

/// One API request, bounded by [`REQUEST_TIMEOUT`]; the error says what failed, where, why.
async fn call<T>(
    server: &str,
    what: String,
    fut: impl Future<Output = Result<T, ::kube::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(describe_error(&what, server, &e)),
        Err(_) => Err(format!(
            "{what} at {server}: no answer within {REQUEST_TIMEOUT:?}"
        )),
    }
}

/// An API error as an operator can act on it. A request the server refused: its own message
/// and code (a 403 names the user and the missing permission). Anything else (connection
/// refused, TLS, DNS, timeout): the server's address and the whole chain of causes, which the
/// client's own message ("ServiceError: client error (Connect)") leaves out.
pub fn describe_error(what: &str, server: &str, e: &::kube::Error) -> String {
    if let ::kube::Error::Api(status) = e {
        let reason = if status.reason.is_empty() {
            String::new()
        } else {
            format!(" {}", status.reason)
        };
        return format!("{what}: {} (HTTP {}{reason})", status.message, status.code);
    }
    format!("{what} at {server}: {}", crate::error::chain(e))
}

/// Merge patch of our annotations; a VTEP MAC we no longer have is removed (`null`).
async fn patch_annotations(
    api: &Api<Node>,
    server: &str,
    name: &str,
    me: &LocalIdentity,
) -> Result<(), String> {
    let patch = serde_json::json!({
        "metadata": { "annotations": {
            ANNOTATION_UNDERLAY_IP: me.underlay_ip.to_string(),
            ANNOTATION_VTEP_MAC: me.vtep_mac,
        }}
    });
    call(
        server,
        format!("annotate node {name}"),
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)),
    )
    .await?;
    debug!(node = name, "kubernetes: annotated node");
    Ok(())
}

/// A Node as weftd's watch decodes it: the name, resource version and weft's own annotations,
/// the pod CIDRs and the InternalIPs. Everything else in the JSON (status conditions, images,
/// managed fields: most of a Node's ~10-14 KiB) is skipped while parsing, never allocated.
#[derive(Debug, Clone, Default)]
pub struct SlimNode {
    pub metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    /// `spec.podCIDRs`, else `spec.podCIDR`.
    pub pod_cidrs: Vec<String>,
    pub internal_ips: Vec<String>,
}

impl ::kube::Resource for SlimNode {
    type DynamicType = ();
    type Scope = k8s_openapi::ClusterResourceScope;
    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        "Node".into()
    }
    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        "nodes".into()
    }
    fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        &mut self.metadata
    }
}

/// Only weft's annotations are kept of a Node's annotations.
fn weft_annotations(
    all: impl IntoIterator<Item = (String, String)>,
) -> Option<BTreeMap<String, String>> {
    let ours: BTreeMap<String, String> = all
        .into_iter()
        .filter(|(k, _)| k == ANNOTATION_UNDERLAY_IP || k == ANNOTATION_VTEP_MAC)
        .collect();
    (!ours.is_empty()).then_some(ours)
}

impl<'de> serde::Deserialize<'de> for SlimNode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SlimNode, D::Error> {
        // Unknown fields are skipped by serde without being built.
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Meta {
            name: Option<String>,
            resource_version: Option<String>,
            annotations: Option<BTreeMap<String, String>>,
        }
        #[derive(serde::Deserialize, Default)]
        #[serde(rename_all = "camelCase")]
        struct Spec {
            #[serde(rename = "podCIDR")]
            pod_cidr: Option<String>,
            #[serde(rename = "podCIDRs")]
            pod_cidrs: Option<Vec<String>>,
        }
        #[derive(serde::Deserialize)]
        struct Address {
            #[serde(rename = "type")]
            type_: String,
            address: String,
        }
        #[derive(serde::Deserialize, Default)]
        struct Status {
            addresses: Option<Vec<Address>>,
        }
        #[derive(serde::Deserialize)]
        struct Wire {
            metadata: Meta,
            spec: Option<Spec>,
            status: Option<Status>,
        }
        let w = Wire::deserialize(d)?;
        let spec = w.spec.unwrap_or_default();
        let pod_cidrs = match spec.pod_cidrs {
            Some(list) if !list.is_empty() => list,
            _ => spec.pod_cidr.into_iter().collect(),
        };
        Ok(SlimNode {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: w.metadata.name,
                resource_version: w.metadata.resource_version,
                annotations: weft_annotations(w.metadata.annotations.unwrap_or_default()),
                ..Default::default()
            },
            pod_cidrs,
            internal_ips: w
                .status
                .and_then(|s| s.addresses)
                .unwrap_or_default()
                .into_iter()
                .filter(|a| a.type_ == "InternalIP")
                .map(|a| a.address)
                .collect(),
        })
    }
}

/// The few facts weftd keeps of a Node. A full Node object is ~14 KiB (status, images,
/// conditions, managed fields); these are a few hundred bytes, so weftd's memory follows the
/// number of nodes, not the size of their objects. Two Nodes with equal facts are the same
/// to weftd: a change elsewhere in the object (a heartbeat, an unrelated annotation) costs a
/// comparison and nothing more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    pub name: String,
    /// `spec.podCIDRs` (else `spec.podCIDR`), or why they cannot be read.
    pub pod_cidrs: Result<Vec<IpNet>, String>,
    pub underlay_annotation: Option<String>,
    pub vtep_mac_annotation: Option<String>,
    /// `status.addresses` of type InternalIP, in order.
    pub internal_ips: Vec<IpAddr>,
}

impl NodeFacts {
    /// The facts of a full Node object; `None` for an object without a name. (The same
    /// decoding as the watch's, so the two can never disagree.)
    pub fn of(node: &Node) -> Option<NodeFacts> {
        use serde::Deserialize;
        let slim = SlimNode::deserialize(serde_json::to_value(node).ok()?).ok()?;
        NodeFacts::of_slim(&slim)
    }

    /// The facts of a Node as the watch decodes it.
    pub fn of_slim(node: &SlimNode) -> Option<NodeFacts> {
        let name = node.metadata.name.clone()?;
        let ann = node.metadata.annotations.as_ref();
        let get = |key: &str| ann.and_then(|a| a.get(key)).cloned();
        let pod_cidrs = node
            .pod_cidrs
            .iter()
            .map(|c| {
                c.parse::<IpNet>()
                    .map_err(|e| format!("node {name}: invalid pod CIDR {c:?}: {e}"))
            })
            .collect();
        Some(NodeFacts {
            pod_cidrs,
            underlay_annotation: get(ANNOTATION_UNDERLAY_IP),
            vtep_mac_annotation: get(ANNOTATION_VTEP_MAC),
            internal_ips: node
                .internal_ips
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect(),
            name,
        })
    }

    /// Whether the node carries exactly our annotations.
    fn annotations_current(&self, me: &LocalIdentity) -> bool {
        self.underlay_annotation.as_deref() == Some(me.underlay_ip.to_string().as_str())
            && self.vtep_mac_annotation.as_deref() == me.vtep_mac.as_deref()
    }

    /// How peers reach this node, or why it cannot be a peer. The underlay IP is the
    /// [`ANNOTATION_UNDERLAY_IP`] annotation, else the node's InternalIP, preferring the
    /// family of `family` (our own underlay IP) on a dual-stack node.
    pub fn record(&self, family: IpAddr) -> Result<NodeRecord, String> {
        let name = &self.name;
        let pod_cidrs = self.pod_cidrs.clone()?;
        if pod_cidrs.is_empty() {
            return Err(format!("node {name} has no spec.podCIDRs"));
        }
        let annotated = self.underlay_annotation.as_deref().and_then(|s| {
            s.parse::<IpAddr>()
                .inspect_err(|e| {
                    debug!(node = %name, value = %s, error = %e,
                           "kubernetes: ignoring invalid underlay-ip annotation")
                })
                .ok()
        });
        let internal = self
            .internal_ips
            .iter()
            .find(|ip| ip.is_ipv4() == family.is_ipv4())
            .or(self.internal_ips.first())
            .copied();
        let underlay_ip = annotated.or(internal).ok_or_else(|| {
            format!(
                "node {name} has neither a {ANNOTATION_UNDERLAY_IP} annotation nor an InternalIP"
            )
        })?;
        Ok(NodeRecord {
            name: name.clone(),
            underlay_ip,
            pod_cidrs,
            vtep_mac: self.vtep_mac_annotation.clone().filter(|m| !m.is_empty()),
        })
    }
}

/// How peers reach `node`, or why it cannot be a peer (see [`NodeFacts::record`]).
pub fn node_record(node: &Node, family: IpAddr) -> Result<NodeRecord, String> {
    NodeFacts::of(node)
        .ok_or("node without metadata.name")?
        .record(family)
}

/// A client for `kubeconfig` (else the in-cluster service account, then ~/.kube/config), and
/// the API server's URL (for error messages). Shared by the datastore and the policy watches.
pub async fn make_client(
    kubeconfig: Option<&std::path::Path>,
) -> Result<(Client, String), DatastoreError> {
    let err = DatastoreError::Kubernetes;
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|e| err(format!("kubeconfig {}: {e}", path.display())))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| err(format!("kubeconfig {}: {e}", path.display())))?
        }
        None => Config::infer().await.map_err(|e| {
            err(format!(
                "no --kubeconfig given and no in-cluster service account or \
                 ~/.kube/config: {e}"
            ))
        })?,
    };
    debug!(url = %config.cluster_url, "kubernetes: API server");
    let server = config.cluster_url.to_string();
    let client = Client::try_from(config)
        .map_err(|e| err(format!("cannot create Kubernetes client: {e}")))?;
    Ok((client, server))
}

/// A watcher error as an operator can act on it (see [`describe_error`]).
fn describe_watch_error(server: &str, e: &::kube::runtime::watcher::Error) -> String {
    use ::kube::runtime::watcher::Error as W;
    match e {
        W::InitialListFailed(e) => describe_error("list nodes", server, e),
        W::WatchStartFailed(e) | W::WatchFailed(e) => describe_error("watch nodes", server, e),
        W::WatchError(status) => format!(
            "watch nodes: {} (HTTP {} {})",
            status.message, status.code, status.reason
        ),
        W::NoResourceVersion => format!("list nodes at {server}: answer has no resourceVersion"),
    }
}

/// Sends the other nodes that can be peers, sorted by name, if they changed.
fn publish(nodes: &BTreeMap<String, NodeFacts>, me: &LocalIdentity, peers: &PeersTx) {
    let mut others = Vec::with_capacity(nodes.len());
    for (name, node) in nodes {
        if *name == me.name {
            continue;
        }
        match node.record(me.underlay_ip) {
            Ok(r) => others.push(r),
            Err(why) => debug!("kubernetes: skipping peer: {why}"),
        }
    }
    // BTreeMap order is already by name.
    let n = others.len();
    if send_if_changed(peers, Some(others)) {
        debug!(peers = n, "kubernetes: peers changed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};

    fn node(name: &str, cidrs: &[&str], ips: &[&str], ann: &[(&str, &str)]) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.to_string());
        if !ann.is_empty() {
            n.metadata.annotations = Some(
                ann.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            );
        }
        n.spec = Some(NodeSpec {
            pod_cidrs: Some(cidrs.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        });
        n.status = Some(NodeStatus {
            addresses: Some(
                ips.iter()
                    .map(|ip| NodeAddress {
                        type_: "InternalIP".to_string(),
                        address: ip.to_string(),
                    })
                    .collect(),
            ),
            ..Default::default()
        });
        n
    }

    fn facts(n: &Node) -> NodeFacts {
        NodeFacts::of(n).unwrap()
    }

    /// The watch decodes Nodes as SlimNode: the same facts as from the full object, and
    /// nothing else kept.
    #[test]
    fn slim_node_keeps_only_what_weftd_reads() {
        let mut full = node(
            "a",
            &["10.244.1.0/24"],
            &["192.168.0.5"],
            &[(ANNOTATION_VTEP_MAC, "02:00:00:00:00:05"), ("other", "x")],
        );
        full.status.as_mut().unwrap().images = Some(vec![Default::default(); 3]);
        let json = serde_json::to_string(&full).unwrap();
        let slim: SlimNode = serde_json::from_str(&json).unwrap();
        assert_eq!(NodeFacts::of_slim(&slim), NodeFacts::of(&full));
        let ann = slim.metadata.annotations.unwrap();
        assert_eq!(ann.keys().collect::<Vec<_>>(), [ANNOTATION_VTEP_MAC]);
        // The older single-CIDR field, and a Node without spec or status.
        let slim: SlimNode =
            serde_json::from_str(r#"{"metadata":{"name":"b"},"spec":{"podCIDR":"10.1.0.0/24"}}"#)
                .unwrap();
        assert_eq!(slim.pod_cidrs, ["10.1.0.0/24"]);
        let slim: SlimNode = serde_json::from_str(r#"{"metadata":{"name":"c"}}"#).unwrap();
        assert!(slim.pod_cidrs.is_empty() && slim.internal_ips.is_empty());
    }

    /// A heartbeat or an unrelated annotation leaves the facts equal: no peer work.
    #[test]
    fn facts_ignore_what_weftd_does_not_use() {
        let a = node("a", &["10.244.1.0/24"], &["192.168.0.5"], &[]);
        let mut b = a.clone();
        b.metadata.annotations = Some([("unrelated".to_string(), "x".to_string())].into());
        b.metadata.resource_version = Some("99".into());
        b.status.as_mut().unwrap().conditions = Some(vec![Default::default()]);
        assert_eq!(facts(&a), facts(&b));
        let mut c = a.clone();
        c.spec.as_mut().unwrap().pod_cidrs = Some(vec!["10.244.9.0/24".into()]);
        assert_ne!(facts(&a), facts(&c));
    }

    fn v4() -> IpAddr {
        "192.168.0.1".parse().unwrap()
    }

    #[test]
    fn record_prefers_annotation_then_internal_ip_of_our_family() {
        let n = node("a", &["10.244.1.0/24"], &["fd00::5", "192.168.0.5"], &[]);
        let r = node_record(&n, v4()).unwrap();
        assert_eq!(r.underlay_ip, "192.168.0.5".parse::<IpAddr>().unwrap());
        assert_eq!(r.vtep_mac, None);
        let r6 = node_record(&n, "fd00::1".parse().unwrap()).unwrap();
        assert_eq!(r6.underlay_ip, "fd00::5".parse::<IpAddr>().unwrap());

        let n = node(
            "a",
            &["10.244.1.0/24"],
            &["192.168.0.5"],
            &[
                (ANNOTATION_UNDERLAY_IP, "10.0.0.5"),
                (ANNOTATION_VTEP_MAC, "02:00:00:00:00:05"),
            ],
        );
        let r = node_record(&n, v4()).unwrap();
        assert_eq!(r.underlay_ip, "10.0.0.5".parse::<IpAddr>().unwrap());
        assert_eq!(r.vtep_mac.as_deref(), Some("02:00:00:00:00:05"));
    }

    #[test]
    fn nodes_without_cidrs_or_address_are_not_peers() {
        let err = node_record(&node("a", &[], &["192.168.0.5"], &[]), v4()).unwrap_err();
        assert!(err.contains("no spec.podCIDRs"), "{err}");
        let err = node_record(&node("a", &["10.244.1.0/24"], &[], &[]), v4()).unwrap_err();
        assert!(err.contains("InternalIP"), "{err}");
        let err = node_record(&node("a", &["bogus"], &["192.168.0.5"], &[]), v4()).unwrap_err();
        assert!(err.contains("invalid pod CIDR"), "{err}");
    }

    #[test]
    fn old_single_pod_cidr_field_is_used() {
        let mut n = node("a", &[], &[], &[]);
        n.spec.as_mut().unwrap().pod_cidr = Some("10.244.7.0/24".to_string());
        assert_eq!(
            NodeFacts::of(&n).unwrap().pod_cidrs.unwrap(),
            vec!["10.244.7.0/24".parse::<IpNet>().unwrap()]
        );
    }

    #[test]
    fn annotations_compare_exactly() {
        let me = LocalIdentity {
            name: "me".into(),
            underlay_ip: v4(),
            vtep_mac: None,
        };
        let n = node("me", &[], &[], &[(ANNOTATION_UNDERLAY_IP, "192.168.0.1")]);
        assert!(facts(&n).annotations_current(&me));
        let with_mac = LocalIdentity {
            vtep_mac: Some("02:00:00:00:00:01".into()),
            ..me.clone()
        };
        assert!(!facts(&n).annotations_current(&with_mac));
        let stale = node(
            "me",
            &[],
            &[],
            &[
                (ANNOTATION_UNDERLAY_IP, "192.168.0.1"),
                (ANNOTATION_VTEP_MAC, "02:00:00:00:00:09"),
            ],
        );
        assert!(!facts(&stale).annotations_current(&me));
        assert!(!facts(&node("me", &[], &[], &[])).annotations_current(&me));
    }
}
