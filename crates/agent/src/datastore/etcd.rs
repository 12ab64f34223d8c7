//! The `etcd` datastore: flannel-style subnet leases, no Kubernetes needed.
//!
//! Keys under the prefix (default `/weft/network`):
//! - `<prefix>/config`: the cluster network, written once (`weftd init-etcd`):
//!   `{"network": "10.244.0.0/16", "subnetLen": 24, "ipv6Network": "fd00:10:244::/56", "ipv6SubnetLen": 64}`
//!   (either family may be left out).
//! - `<prefix>/subnets/10.244.3.0-24`: one key per node, holding its [`NodeRecord`] as JSON and
//!   bound to a lease the node keeps alive. A node gone for longer than the TTL loses its key
//!   and so drops out of everybody's peer list.
//!
//! Both families use the same subnet index: claiming subnet #3 of the IPv4 network also claims
//! subnet #3 of the IPv6 network, so one key and one transaction cover a dual-stack node. The key
//! is named after the IPv4 subnet (the IPv6 one on an IPv6-only cluster).
//!
//! Claims are transactions (`create_revision == 0` -> put), so two nodes never get the same
//! subnet. A node that restarts within the TTL finds its own key and keeps its subnet; after a
//! longer absence it asks for the subnet remembered in `<state_dir>/etcd-subnet.json` first.

use super::{
    identity_changed, send_if_changed, Backoff, DatastoreError, Health, IdentityRx, OwnState,
    OwnTx, PeersTx,
};
use crate::node::{LocalIdentity, NodeRecord, Registration};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KeyValue, PutOptions, Txn,
    TxnOp, TxnOpResponse, TxnResponse, WatchOptions,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

pub const DEFAULT_PREFIX: &str = "/weft/network";
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(60);
/// File in the state directory remembering the last subnet of this node.
pub const STATE_FILE: &str = "etcd-subnet.json";

/// Upper bound for one etcd request: a request to an unreachable cluster would otherwise wait
/// for a connection forever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Client URLs, e.g. `http://10.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Key prefix of this weft network.
    pub prefix: String,
    /// TTL of the lease holding this node's subnet key.
    pub lease_ttl: Duration,
    /// Where this node remembers its last subnet (`etcd-subnet.json`).
    pub state_dir: PathBuf,
}

impl EtcdConfig {
    /// A configuration with the default prefix and lease TTL.
    pub fn new(endpoints: Vec<String>, state_dir: PathBuf) -> EtcdConfig {
        EtcdConfig {
            endpoints,
            prefix: DEFAULT_PREFIX.to_string(),
            lease_ttl: DEFAULT_LEASE_TTL,
            state_dir,
        }
    }
}

/// The cluster network, stored at `<prefix>/config`.
///
/// `network` is IPv4 (optionally with `ipv6Network` for dual-stack) or, on an IPv6-only
/// cluster, IPv6.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterConfig {
    /// The cluster network, split into one subnet per node.
    pub network: IpNet,
    /// Prefix length of the node subnets of `network`.
    #[serde(default = "default_subnet_len")]
    pub subnet_len: u8,
    /// IPv6 network of a dual-stack cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_network: Option<IpNet>,
    /// Prefix length of the IPv6 node subnets (default 64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_subnet_len: Option<u8>,
}

fn default_subnet_len() -> u8 {
    24
}

const DEFAULT_IPV6_SUBNET_LEN: u8 = 64;

impl ClusterConfig {
    /// Parses and validates the JSON stored at `<prefix>/config`.
    pub fn from_json(raw: &[u8]) -> Result<ClusterConfig, DatastoreError> {
        let cfg: ClusterConfig = serde_json::from_slice(raw)
            .map_err(|e| DatastoreError::Etcd(format!("invalid cluster config JSON: {e}")))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks that the networks can be split as configured.
    pub fn validate(&self) -> Result<(), DatastoreError> {
        self.layout()
            .map(|_| ())
            .map_err(|e| DatastoreError::Etcd(format!("invalid cluster config: {e}")))
    }

    /// The cluster networks (traffic inside them is never masqueraded).
    pub fn cluster_cidrs(&self) -> Vec<IpNet> {
        let mut out = vec![self.network];
        out.extend(self.ipv6_network);
        out
    }

    fn layout(&self) -> Result<Layout, String> {
        let (v4, v6) = match (self.network, self.ipv6_network) {
            (IpNet::V4(net), None) => (Some((net, self.subnet_len)), None),
            (IpNet::V6(net), None) => {
                if self.ipv6_subnet_len.is_some() {
                    return Err(format!(
                        "ipv6SubnetLen is for ipv6Network; network {net} is IPv6, set its \
                         length with subnetLen"
                    ));
                }
                (None, Some((net, self.subnet_len)))
            }
            (IpNet::V4(net), Some(IpNet::V6(net6))) => (
                Some((net, self.subnet_len)),
                Some((
                    net6,
                    self.ipv6_subnet_len.unwrap_or(DEFAULT_IPV6_SUBNET_LEN),
                )),
            ),
            (IpNet::V4(_), Some(other @ IpNet::V4(_))) => {
                return Err(format!("ipv6Network {other} is not an IPv6 network"))
            }
            (IpNet::V6(net), Some(_)) => {
                return Err(format!(
                    "network {net} is IPv6; a dual-stack config has an IPv4 network and an \
                     ipv6Network"
                ))
            }
        };
        let mut count = 0;
        if let Some((net, len)) = v4 {
            check_split(&IpNet::V4(net), len, 30, "subnetLen")?;
            count = span(net.prefix_len(), len);
        }
        if let Some((net6, len6)) = v6 {
            let field = if v4.is_some() {
                "ipv6SubnetLen"
            } else {
                "subnetLen"
            };
            check_split(&IpNet::V6(net6), len6, 126, field)?;
            let count6 = span(net6.prefix_len(), len6);
            if let Some((net, len)) = v4 {
                // Both families share the subnet index, so IPv6 needs at least as many subnets.
                if count6 < count {
                    return Err(format!(
                        "ipv6Network {net6} split into /{len6} gives {count6} subnets, fewer than \
                         the {count} of network {net} split into /{len}; both families use the \
                         same subnet index"
                    ));
                }
            } else {
                count = count6;
            }
        }
        Ok(Layout { v4, v6, count })
    }
}

fn check_split(net: &IpNet, len: u8, max: u8, field: &str) -> Result<(), String> {
    if net.addr() != net.network() {
        return Err(format!(
            "network {net} has host bits set (did you mean {}?)",
            net.trunc()
        ));
    }
    if len <= net.prefix_len() {
        return Err(format!(
            "{field} {len} must be longer than the prefix of network {net}"
        ));
    }
    if len > max {
        return Err(format!(
            "{field} {len} leaves no room for pods (at most {max})"
        ));
    }
    Ok(())
}

/// How many subnets of length `len` fit into a network of length `prefix`.
fn span(prefix: u8, len: u8) -> u128 {
    1u128
        .checked_shl(u32::from(len - prefix))
        .unwrap_or(u128::MAX)
}

/// A validated [`ClusterConfig`]: maps subnet indexes to subnets and back.
#[derive(Debug, Clone)]
struct Layout {
    v4: Option<(Ipv4Net, u8)>,
    v6: Option<(Ipv6Net, u8)>,
    /// Number of subnets of the family that names the keys.
    count: u128,
}

impl Layout {
    /// The node subnets at `index`, IPv4 first.
    fn subnets(&self, index: u128) -> Vec<IpNet> {
        let mut out = Vec::new();
        if let Some((net, len)) = self.v4 {
            let base = u32::from(net.network());
            let addr = Ipv4Addr::from(base + ((index << (32 - len)) as u32));
            out.push(IpNet::V4(Ipv4Net::new(addr, len).expect("len <= 30")));
        }
        if let Some((net, len)) = self.v6 {
            let base = u128::from(net.network());
            let addr = Ipv6Addr::from(base + (index << (128 - len)));
            out.push(IpNet::V6(Ipv6Net::new(addr, len).expect("len <= 126")));
        }
        out
    }

    /// The subnet naming the key at `index`.
    fn key_subnet(&self, index: u128) -> IpNet {
        self.subnets(index)[0]
    }

    /// The index of a key subnet, if it is one of this layout.
    fn index_of(&self, subnet: IpNet) -> Option<u128> {
        match (subnet, self.v4, self.v6) {
            (IpNet::V4(s), Some((net, len)), _) => {
                if s.prefix_len() != len || s.addr() != s.network() || !net.contains(&s) {
                    return None;
                }
                Some(u128::from(u32::from(s.addr()) - u32::from(net.network())) >> (32 - len))
            }
            (IpNet::V6(s), None, Some((net, len))) => {
                if s.prefix_len() != len || s.addr() != s.network() || !net.contains(&s) {
                    return None;
                }
                Some((u128::from(s.addr()) - u128::from(net.network())) >> (128 - len))
            }
            _ => None,
        }
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some((net, len)) = self.v4 {
            parts.push(format!("{net} in /{len}"));
        }
        if let Some((net, len)) = self.v6 {
            parts.push(format!("{net} in /{len}"));
        }
        parts.join(" + ")
    }
}

fn normalize(prefix: &str) -> &str {
    prefix.trim_end_matches('/')
}

/// `<prefix>/config`.
pub fn config_key(prefix: &str) -> String {
    format!("{}/config", normalize(prefix))
}

/// `<prefix>/subnets/`.
pub fn subnets_prefix(prefix: &str) -> String {
    format!("{}/subnets/", normalize(prefix))
}

/// `<prefix>/subnets/10.244.3.0-24` for `10.244.3.0/24`.
pub fn subnet_key(prefix: &str, subnet: IpNet) -> String {
    format!(
        "{}{}",
        subnets_prefix(prefix),
        subnet.to_string().replace('/', "-")
    )
}

/// Writes (validated) `cfg` to `<prefix>/config`.
pub async fn write_cluster_config(
    endpoints: &[String],
    prefix: &str,
    cfg: &ClusterConfig,
) -> Result<(), DatastoreError> {
    cfg.validate()?;
    let key = config_key(prefix);
    let value = serde_json::to_vec(cfg).expect("ClusterConfig serializes");
    let mut client = connect(endpoints).await.map_err(Fail::into_error)?;
    call(
        format!("put {key} on {endpoints:?}"),
        client.put(key.as_str(), value, None),
    )
    .await
    .map_err(Fail::into_error)?;
    info!(key, config = ?cfg, "etcd: wrote cluster config");
    Ok(())
}

/// Reads `<prefix>/config`; `None` if it was never written.
pub async fn read_cluster_config(
    endpoints: &[String],
    prefix: &str,
) -> Result<Option<ClusterConfig>, DatastoreError> {
    let key = config_key(prefix);
    let mut client = connect(endpoints).await.map_err(Fail::into_error)?;
    let resp = call(
        format!("get {key} from {endpoints:?}"),
        client.get(key.as_str(), None),
    )
    .await
    .map_err(Fail::into_error)?;
    match resp.kvs().first() {
        None => Ok(None),
        Some(kv) => ClusterConfig::from_json(kv.value())
            .map(Some)
            .map_err(|e| DatastoreError::Etcd(format!("{key}: {e}"))),
    }
}

/// Every node record under `<prefix>/subnets/`, sorted by name.
pub async fn list_nodes(
    endpoints: &[String],
    prefix: &str,
) -> Result<Vec<NodeRecord>, DatastoreError> {
    let from = subnets_prefix(prefix);
    let mut client = connect(endpoints).await.map_err(Fail::into_error)?;
    let resp = call(
        format!("list {from} on {endpoints:?}"),
        client.get(from.as_str(), Some(GetOptions::new().with_prefix())),
    )
    .await
    .map_err(Fail::into_error)?;
    let mut out: Vec<NodeRecord> = resp.kvs().iter().filter_map(parse_record).collect();
    sort_records(&mut out);
    Ok(out)
}

/// Why an attempt failed, and so what to do next.
#[derive(Debug)]
enum Fail {
    /// etcd unreachable or not ready (no config yet, no free subnet): retry with backoff.
    Unavailable(String),
    /// Our registration changed under us (lease expired, key deleted): start over at once.
    Resync(String),
    /// Our subnet now belongs to another node (our lease expired meanwhile): claim another.
    Lost(String),
    /// Retrying cannot help.
    Fatal(DatastoreError),
}

impl Fail {
    fn into_error(self) -> DatastoreError {
        match self {
            Fail::Unavailable(m) | Fail::Resync(m) | Fail::Lost(m) => DatastoreError::Etcd(m),
            Fail::Fatal(e) => e,
        }
    }
}

/// One etcd request, bounded by [`REQUEST_TIMEOUT`].
async fn call<T>(
    what: String,
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, Fail> {
    match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Fail::Unavailable(format!("{what}: {e}"))),
        Err(_) => Err(Fail::Unavailable(format!(
            "{what}: no answer within {REQUEST_TIMEOUT:?}"
        ))),
    }
}

async fn connect(endpoints: &[String]) -> Result<Client, Fail> {
    // HTTP/2 keep-alive notices a silently dead connection under a long-lived watch.
    let opts = ConnectOptions::new()
        .with_connect_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(Duration::from_secs(10), REQUEST_TIMEOUT);
    match tokio::time::timeout(REQUEST_TIMEOUT, Client::connect(endpoints, Some(opts))).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e @ (etcd_client::Error::InvalidArgs(_) | etcd_client::Error::InvalidUri(_)))) => {
            Err(Fail::Fatal(DatastoreError::Etcd(format!(
                "endpoints {endpoints:?}: {e}"
            ))))
        }
        Ok(Err(e)) => Err(Fail::Unavailable(format!("connect to {endpoints:?}: {e}"))),
        Err(_) => Err(Fail::Unavailable(format!(
            "connect to {endpoints:?}: no answer within {REQUEST_TIMEOUT:?}"
        ))),
    }
}

async fn grant(client: &mut Client, ttl: Duration) -> Result<i64, Fail> {
    let secs = ttl.as_secs().max(1) as i64;
    let resp = call(
        format!("grant lease (ttl {secs}s)"),
        client.lease_grant(secs, None),
    )
    .await?;
    Ok(resp.id())
}

fn parse_record(kv: &KeyValue) -> Option<NodeRecord> {
    match serde_json::from_slice::<NodeRecord>(kv.value()) {
        Ok(r) => Some(r),
        Err(e) => {
            warn!(key = %String::from_utf8_lossy(kv.key()), error = %e, "etcd: ignoring unparseable node record");
            None
        }
    }
}

fn sort_records(records: &mut [NodeRecord]) {
    records.sort_by(|a, b| {
        a.name
            .cmp(&b.name)
            .then_with(|| a.pod_cidrs.cmp(&b.pod_cidrs))
    });
}

fn first_kv(resp: &TxnResponse) -> Option<KeyValue> {
    resp.op_responses().into_iter().find_map(|r| match r {
        TxnOpResponse::Get(g) => g.kvs().first().cloned(),
        _ => None,
    })
}

/// Outcome of [`claim`].
#[derive(Debug, PartialEq, Eq)]
enum Claim {
    /// The key was free and is now ours.
    Created,
    /// The key held our node's record (an earlier run, or old addresses); it is now bound to
    /// our lease with the current record.
    TookOver,
    /// The key already holds exactly our record on our lease.
    Unchanged,
    /// Another node holds the key.
    TakenBy(String),
    /// The key changed while we looked at it.
    Raced,
}

/// Binds `key` to `record` on `lease`, unless another node holds it.
async fn claim(
    client: &mut Client,
    key: &str,
    record: &NodeRecord,
    lease: i64,
) -> Result<Claim, Fail> {
    let value = serde_json::to_vec(record).expect("NodeRecord serializes");
    let put = || {
        TxnOp::put(
            key,
            value.clone(),
            Some(PutOptions::new().with_lease(lease)),
        )
    };
    let txn = Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, 0)])
        .and_then([put()])
        .or_else([TxnOp::get(key, None)]);
    let resp = call(format!("claim {key}"), client.txn(txn)).await?;
    if resp.succeeded() {
        return Ok(Claim::Created);
    }
    let Some(kv) = first_kv(&resp) else {
        return Ok(Claim::Raced); // deleted between compare and get: cannot happen in one txn, be safe
    };
    let holder = serde_json::from_slice::<NodeRecord>(kv.value())
        .map(|r| r.name)
        .unwrap_or_else(|_| "<unparseable record>".to_string());
    if holder != record.name {
        return Ok(Claim::TakenBy(holder));
    }
    if kv.lease() == lease && kv.value() == value.as_slice() {
        return Ok(Claim::Unchanged);
    }
    let txn = Txn::new()
        .when([Compare::mod_revision(
            key,
            CompareOp::Equal,
            kv.mod_revision(),
        )])
        .and_then([put()]);
    let resp = call(format!("take over {key}"), client.txn(txn)).await?;
    Ok(if resp.succeeded() {
        Claim::TookOver
    } else {
        Claim::Raced
    })
}

/// What [`EtcdStore::register`] obtained.
#[derive(Debug, Clone)]
struct Claimed {
    key: String,
    pod_cidrs: Vec<IpNet>,
}

impl Claimed {
    fn record(&self, me: &LocalIdentity) -> NodeRecord {
        NodeRecord {
            name: me.name.clone(),
            underlay_ip: me.underlay_ip,
            pod_cidrs: self.pod_cidrs.clone(),
            vtep_mac: me.vtep_mac.clone(),
        }
    }
}

/// Remembered subnet, `<state_dir>/etcd-subnet.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Remembered {
    name: String,
    pod_cidrs: Vec<IpNet>,
}

pub struct EtcdStore {
    cfg: EtcdConfig,
    /// Set by `register`.
    claimed: Option<Claimed>,
    /// The lease our key is bound to; `None` once it is known to have expired.
    lease: Option<i64>,
}

impl EtcdStore {
    pub fn new(cfg: EtcdConfig) -> EtcdStore {
        EtcdStore {
            cfg,
            claimed: None,
            lease: None,
        }
    }

    pub fn config(&self) -> &EtcdConfig {
        &self.cfg
    }

    /// Claims a subnet for this node (its own from an earlier run if it still holds one, else
    /// the remembered one if free, else the lowest free one). Waits while etcd is unreachable
    /// or the cluster config is missing; errors only when retrying cannot help.
    pub async fn register(
        &mut self,
        me: &LocalIdentity,
        health: &Health,
    ) -> Result<Registration, DatastoreError> {
        let mut backoff = Backoff::new();
        loop {
            match self.try_register(me).await {
                Ok(reg) => {
                    health.ok();
                    return Ok(reg);
                }
                Err(Fail::Fatal(e)) => {
                    health.failed(&e);
                    return Err(e);
                }
                Err(Fail::Unavailable(msg)) | Err(Fail::Resync(msg)) | Err(Fail::Lost(msg)) => {
                    warn!(endpoints = ?self.cfg.endpoints, error = %msg, "etcd: cannot register yet, retrying");
                    health.failed(format!("etcd: {msg}"));
                    tokio::time::sleep(backoff.next()).await;
                }
            }
        }
    }

    async fn try_register(&mut self, me: &LocalIdentity) -> Result<Registration, Fail> {
        let mut client = connect(&self.cfg.endpoints).await?;
        let key = config_key(&self.cfg.prefix);
        let resp = call(format!("get {key}"), client.get(key.as_str(), None)).await?;
        let Some(kv) = resp.kvs().first() else {
            return Err(Fail::Unavailable(format!(
                "cluster config {key} not found (write it with `weftd init-etcd`)"
            )));
        };
        let config = ClusterConfig::from_json(kv.value())
            .map_err(|e| Fail::Fatal(DatastoreError::Etcd(format!("{key}: {e}"))))?;
        let layout = config.layout().expect("validated by from_json");

        let lease = grant(&mut client, self.cfg.lease_ttl).await?;
        let remembered = self.load_remembered(me, &layout);
        let from = subnets_prefix(&self.cfg.prefix);
        loop {
            let resp = call(
                format!("list {from}"),
                client.get(from.as_str(), Some(GetOptions::new().with_prefix())),
            )
            .await?;
            let mut taken = HashSet::new();
            let mut mine = Vec::new();
            for kv in resp.kvs() {
                let Some(index) = self.index_of_key(kv.key(), &layout) else {
                    continue;
                };
                taken.insert(index);
                if parse_record(kv).is_some_and(|r| r.name == me.name) {
                    mine.push(index);
                }
            }
            mine.sort();
            let (index, how) = if let Some(&i) = mine.first() {
                (i, "reusing own subnet")
            } else if let Some(i) = remembered.filter(|i| !taken.contains(i)) {
                (i, "claiming remembered subnet")
            } else if let Some(i) = (1..layout.count).find(|i| !taken.contains(i)) {
                (i, "claiming free subnet")
            } else {
                return Err(Fail::Unavailable(format!(
                    "no free subnet in {} ({} in use)",
                    layout.describe(),
                    taken.len()
                )));
            };
            let claimed = Claimed {
                key: subnet_key(&self.cfg.prefix, layout.key_subnet(index)),
                pod_cidrs: layout.subnets(index),
            };
            match claim(&mut client, &claimed.key, &claimed.record(me), lease).await? {
                Claim::TakenBy(other) => {
                    info!(
                        key = claimed.key,
                        holder = other,
                        "etcd: subnet taken meanwhile, picking again"
                    );
                    continue;
                }
                Claim::Raced => continue,
                Claim::Created | Claim::TookOver | Claim::Unchanged => {}
            }
            info!(node = me.name, key = claimed.key, pod_cidrs = ?claimed.pod_cidrs, lease = format!("{lease:x}"), "etcd: {how}");
            self.save_remembered(me, &claimed.pod_cidrs);
            let reg = Registration {
                pod_cidrs: claimed.pod_cidrs.clone(),
                cluster_cidrs: config.cluster_cidrs(),
                vtep_mac: None,
            };
            self.claimed = Some(claimed);
            self.lease = Some(lease);
            return Ok(reg);
        }
    }

    /// Keeps the lease alive and sends the full list of other nodes on every change. On etcd
    /// trouble it marks `health` failed, reconnects with backoff and resumes from a full read.
    /// If this node's subnet was given to another node (its lease expired meanwhile), it
    /// claims another and reports it on `own`: the agent moves the node to it.
    pub async fn run(
        mut self,
        mut identity: IdentityRx,
        peers: PeersTx,
        own: OwnTx,
        health: Health,
    ) -> Result<(), DatastoreError> {
        if self.claimed.is_none() {
            return Err(DatastoreError::Etcd(
                "run() called before register()".into(),
            ));
        }
        let mut backoff = Backoff::new();
        loop {
            let claimed = self.claimed.clone().expect("registered");
            let me = identity.borrow_and_update().clone();
            let fail = match self
                .session(&claimed, &me, &mut identity, &peers, &health, &mut backoff)
                .await
            {
                Ok(never) => match never {},
                Err(f) => f,
            };
            match fail {
                Fail::Fatal(e) => {
                    health.failed(&e);
                    return Err(e);
                }
                Fail::Lost(msg) => {
                    warn!(node = me.name, reason = %msg, "etcd: own subnet lost, claiming another");
                    health.failed(format!("etcd: {msg}"));
                    send_if_changed(&own, OwnState::Lost(msg));
                    self.claimed = None;
                    self.lease = None;
                    let reg = self.register(&me, &health).await?;
                    send_if_changed(&own, OwnState::Registered(reg.pod_cidrs));
                }
                Fail::Resync(msg) => {
                    warn!(node = me.name, reason = %msg, "etcd: resyncing");
                    tokio::time::sleep(super::BACKOFF_MIN).await;
                }
                Fail::Unavailable(msg) => {
                    warn!(endpoints = ?self.cfg.endpoints, error = %msg, "etcd: unavailable, reconnecting");
                    health.failed(format!("etcd: {msg}"));
                    tokio::time::sleep(backoff.next()).await;
                }
            }
        }
    }

    /// One connected stretch: make sure our key is there, read everything, then follow the
    /// watch and keep the lease alive until something breaks.
    async fn session(
        &mut self,
        claimed: &Claimed,
        me: &LocalIdentity,
        identity: &mut IdentityRx,
        peers: &PeersTx,
        health: &Health,
        backoff: &mut Backoff,
    ) -> Result<Infallible, Fail> {
        let mut client = connect(&self.cfg.endpoints).await?;
        let lease = match self.lease {
            Some(id) => id,
            None => {
                let id = grant(&mut client, self.cfg.lease_ttl).await?;
                self.lease = Some(id);
                id
            }
        };
        // An expired lease has a TTL of -1: ask (typed) rather than read the keep-alive
        // error's text, and start over with a new lease.
        let ttl = call(
            format!("time to live of lease {lease:x}"),
            client.lease_time_to_live(lease, None),
        )
        .await?;
        if ttl.ttl() < 0 {
            self.lease = None;
            return Err(Fail::Resync(format!("lease {lease:x} expired")));
        }
        let (mut keeper, mut acks) =
            match tokio::time::timeout(REQUEST_TIMEOUT, client.lease_keep_alive(lease)).await {
                Ok(Ok(pair)) => pair,
                Ok(Err(e)) => {
                    return Err(Fail::Unavailable(format!(
                        "keep lease {lease:x} alive: {e}"
                    )))
                }
                Err(_) => {
                    return Err(Fail::Unavailable(format!(
                        "keep lease {lease:x} alive: no answer within {REQUEST_TIMEOUT:?}"
                    )))
                }
            };

        // Our key: re-created with the same subnet if it expired, updated if our addresses
        // changed.
        match claim(&mut client, &claimed.key, &claimed.record(me), lease).await? {
            Claim::Unchanged => {}
            Claim::Created => {
                info!(
                    node = me.name,
                    key = claimed.key,
                    "etcd: re-registered own subnet"
                )
            }
            Claim::TookOver => {
                info!(
                    node = me.name,
                    key = claimed.key,
                    "etcd: updated own record"
                )
            }
            Claim::Raced => return Err(Fail::Resync(format!("{} changed", claimed.key))),
            Claim::TakenBy(other) => {
                return Err(Fail::Lost(format!(
                    "subnet {:?} ({}) of node {:?} now belongs to node {other:?}: this node's \
                     lease expired and the subnet was claimed again",
                    claimed.pod_cidrs, claimed.key, me.name
                )))
            }
        }

        // Full read, then watch from the next revision so that no change is missed.
        let from = subnets_prefix(&self.cfg.prefix);
        let resp = call(
            format!("list {from}"),
            client.get(from.as_str(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        let mut nodes: BTreeMap<Vec<u8>, NodeRecord> = resp
            .kvs()
            .iter()
            .filter_map(|kv| parse_record(kv).map(|r| (kv.key().to_vec(), r)))
            .collect();
        publish(&nodes, me, peers);
        let mut watch = call(
            format!("watch {from}"),
            client.watch(
                from.as_str(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            ),
        )
        .await?;
        health.ok();
        backoff.reset();
        debug!(revision, nodes = nodes.len(), "etcd: in sync, watching");

        let own_key = claimed.key.as_bytes();
        let mut tick =
            tokio::time::interval((self.cfg.lease_ttl / 3).max(Duration::from_millis(500)));
        let mut last_ack = Instant::now();
        loop {
            tokio::select! {
                // Our record must say the new address: the next session re-claims our key
                // with it.
                _ = identity_changed(identity) => {
                    return Err(Fail::Resync("this node's underlay address changed".into()));
                }
                _ = tick.tick() => {
                    if last_ack.elapsed() > self.cfg.lease_ttl {
                        return Err(Fail::Unavailable(format!(
                            "no keep-alive answer for lease {lease:x} for {:?}",
                            self.cfg.lease_ttl
                        )));
                    }
                    keeper.keep_alive().await.map_err(|e| {
                        Fail::Unavailable(format!("keep lease {lease:x} alive: {e}"))
                    })?;
                }
                ack = acks.message() => match ack {
                    Ok(Some(r)) if r.ttl() > 0 => last_ack = Instant::now(),
                    Ok(Some(_)) => {
                        self.lease = None;
                        return Err(Fail::Resync(format!("lease {lease:x} expired")));
                    }
                    Ok(None) => {
                        return Err(Fail::Unavailable(format!(
                            "keep-alive stream of lease {lease:x} closed"
                        )))
                    }
                    Err(e) => {
                        return Err(Fail::Unavailable(format!("keep lease {lease:x} alive: {e}")))
                    }
                },
                msg = watch.message() => {
                    let resp = match msg {
                        Ok(Some(resp)) => resp,
                        Ok(None) => {
                            return Err(Fail::Unavailable(format!("watch {from}: stream closed")))
                        }
                        Err(e) => return Err(Fail::Unavailable(format!("watch {from}: {e}"))),
                    };
                    if resp.canceled() {
                        return Err(Fail::Unavailable(format!(
                            "watch {from} canceled: {} (compacted revision {})",
                            resp.cancel_reason(),
                            resp.compact_revision()
                        )));
                    }
                    let mut lost_own = false;
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        match ev.event_type() {
                            EventType::Put => match parse_record(kv) {
                                Some(r) => {
                                    if kv.key() == own_key && r.name != me.name {
                                        lost_own = true;
                                    }
                                    nodes.insert(kv.key().to_vec(), r);
                                }
                                None => {
                                    nodes.remove(kv.key());
                                }
                            },
                            EventType::Delete => {
                                nodes.remove(kv.key());
                                if kv.key() == own_key {
                                    lost_own = true;
                                }
                            }
                        }
                    }
                    publish(&nodes, me, peers);
                    if lost_own {
                        return Err(Fail::Resync(format!("own key {} was deleted or overwritten", claimed.key)));
                    }
                }
            }
        }
    }

    /// The subnet index named by a key under `<prefix>/subnets/`.
    fn index_of_key(&self, key: &[u8], layout: &Layout) -> Option<u128> {
        let from = subnets_prefix(&self.cfg.prefix);
        let key = std::str::from_utf8(key).ok()?;
        let (addr, len) = key.strip_prefix(from.as_str())?.rsplit_once('-')?;
        let net: IpNet = format!("{addr}/{len}").parse().ok()?;
        let index = layout.index_of(net);
        if index.is_none() {
            warn!(
                key,
                "etcd: subnet key outside the cluster network, ignored for allocation"
            );
        }
        index
    }

    fn state_path(&self) -> PathBuf {
        self.cfg.state_dir.join(STATE_FILE)
    }

    /// The remembered subnet index, if it is still valid for this node and network.
    fn load_remembered(&self, me: &LocalIdentity, layout: &Layout) -> Option<u128> {
        let path = self.state_path();
        let raw = match std::fs::read(&path) {
            Ok(raw) => raw,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "etcd: cannot read remembered subnet");
                return None;
            }
        };
        let rem: Remembered = match serde_json::from_slice(&raw) {
            Ok(r) => r,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "etcd: ignoring unparseable remembered subnet");
                return None;
            }
        };
        if rem.name != me.name {
            return None;
        }
        rem.pod_cidrs
            .iter()
            .find_map(|net| layout.index_of(*net))
            .filter(|&i| i >= 1 && layout.subnets(i) == rem.pod_cidrs)
    }

    /// Best effort: losing the file only means a restart after a long outage may get another
    /// subnet.
    fn save_remembered(&self, me: &LocalIdentity, pod_cidrs: &[IpNet]) {
        let path = self.state_path();
        let rem = Remembered {
            name: me.name.clone(),
            pod_cidrs: pod_cidrs.to_vec(),
        };
        let body = serde_json::to_vec(&rem).expect("serializes");
        if let Err(e) = crate::files::write_atomic(&path, &body, 0o600) {
            warn!(path = %path.display(), error = %e, "etcd: cannot remember subnet");
        }
    }
}

/// Sends the other nodes, sorted by name, if they changed.
fn publish(nodes: &BTreeMap<Vec<u8>, NodeRecord>, me: &LocalIdentity, peers: &PeersTx) {
    let mut others: Vec<NodeRecord> = nodes
        .values()
        .filter(|r| r.name != me.name)
        .cloned()
        .collect();
    sort_records(&mut others);
    send_if_changed(peers, Some(others));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: &str) -> Result<ClusterConfig, DatastoreError> {
        ClusterConfig::from_json(json.as_bytes())
    }

    #[test]
    fn layout_indexes_round_trip() {
        let c =
            cfg(r#"{"network":"10.244.0.0/16","subnetLen":24,"ipv6Network":"fd00:10:244::/56"}"#)
                .unwrap();
        let l = c.layout().unwrap();
        assert_eq!(l.count, 256);
        let s = l.subnets(3);
        assert_eq!(
            s,
            vec![
                "10.244.3.0/24".parse::<IpNet>().unwrap(),
                "fd00:10:244:3::/64".parse().unwrap()
            ]
        );
        assert_eq!(l.index_of(s[0]), Some(3));
        assert_eq!(l.index_of("10.245.3.0/24".parse().unwrap()), None);
        assert_eq!(l.index_of("10.244.3.0/25".parse().unwrap()), None);
        assert_eq!(
            subnet_key("/weft/network/", s[0]),
            "/weft/network/subnets/10.244.3.0-24"
        );

        let v6 = cfg(r#"{"network":"fd00::/120","subnetLen":124}"#).unwrap();
        let l = v6.layout().unwrap();
        assert_eq!(l.count, 16);
        assert_eq!(
            l.subnets(15),
            vec!["fd00::f0/124".parse::<IpNet>().unwrap()]
        );
        assert_eq!(l.index_of("fd00::f0/124".parse().unwrap()), Some(15));
    }

    #[test]
    fn invalid_configs_are_rejected_with_reasons() {
        let cases = [
            (r#"{}"#, "missing field `network`"),
            (
                r#"{"network":"10.244.0.0/16","subnetLen":16}"#,
                "longer than the prefix",
            ),
            (
                r#"{"network":"10.244.0.0/16","subnetLen":31}"#,
                "no room for pods",
            ),
            (r#"{"network":"10.244.1.0/16"}"#, "host bits"),
            (
                r#"{"network":"10.0.0.0/8","subnetLen":24,"ipv6Network":"fd00::/56","ipv6SubnetLen":64}"#,
                "fewer than",
            ),
            (r#"{"network":"nope"}"#, "invalid cluster config JSON"),
            (
                r#"{"network":"10.244.0.0/16","ipv6Network":"10.1.0.0/16"}"#,
                "not an IPv6 network",
            ),
            (
                r#"{"network":"fd00::/56","subnetLen":64,"ipv6Network":"fd01::/56"}"#,
                "dual-stack",
            ),
            (r#"{"network":"fd00::/56"}"#, "longer than the prefix"),
        ];
        for (json, want) in cases {
            let err = cfg(json).unwrap_err().to_string();
            assert!(err.contains(want), "{json}: {err:?} lacks {want:?}");
        }
    }
}
