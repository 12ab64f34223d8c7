//! Datastores: where a node learns its pod CIDRs and its peers.
//!
//! Each one registers this node (`register`) and then streams the full set of *other* nodes
//! whenever it changes (`run`). The reconcile loop only ever sees whole peer lists, so an
//! event missed while the agent was down cannot leave stale state behind.

pub mod etcd;
pub mod kube;
pub mod static_file;

use crate::node::{LocalIdentity, NodeRecord, Registration};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// The peer set as last reported; `None` until the datastore delivered its first full list.
pub type PeersTx = watch::Sender<Option<Vec<NodeRecord>>>;

/// This node's own record as the datastore holds it now. It can change after registration:
/// a Node deleted and re-created gets a new podCIDR from kube-controller-manager; an etcd lease
/// lost while the subnet went to another node is claimed anew.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnState {
    /// Registered with these pod CIDRs.
    Registered(Vec<ipnet::IpNet>),
    /// Not registered any more, and why (own Node deleted, or without a pod CIDR; lease lost).
    Lost(String),
}

/// Where a datastore reports [`OwnState`]; starts as the registration's pod CIDRs.
pub type OwnTx = watch::Sender<OwnState>;

/// What this node publishes about itself, as the agent last found it (its underlay address
/// can change while weftd runs; the datastore then publishes the new one).
pub type IdentityRx = watch::Receiver<LocalIdentity>;

/// Waits for a new identity; never returns once the agent has dropped its sender (tests).
pub(crate) async fn identity_changed(rx: &mut IdentityRx) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await
    }
}

/// Sends `value` unless it equals what was sent last: receivers wake only for a change.
pub(crate) fn send_if_changed<T: PartialEq>(tx: &watch::Sender<T>, value: T) -> bool {
    tx.send_if_modified(|cur| {
        let changed = *cur != value;
        if changed {
            *cur = value;
        }
        changed
    })
}

/// Datastore connectivity, shared with readiness, status and metrics.
#[derive(Debug, Clone, Default)]
pub struct Health(Arc<Mutex<HealthState>>);

#[derive(Debug, Clone, Default)]
pub struct HealthState {
    pub connected: bool,
    pub last_error: Option<String>,
}

impl Health {
    pub fn ok(&self) {
        let mut s = self.0.lock().unwrap();
        s.connected = true;
        s.last_error = None;
    }
    pub fn failed(&self, err: impl ToString) {
        let mut s = self.0.lock().unwrap();
        s.connected = false;
        s.last_error = Some(err.to_string());
    }
    pub fn get(&self) -> HealthState {
        self.0.lock().unwrap().clone()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DatastoreError {
    #[error("static node file {path}: {detail}")]
    Static { path: String, detail: String },
    #[error("etcd: {0}")]
    Etcd(String),
    #[error("kubernetes: {0}")]
    Kubernetes(String),
}

pub enum Datastore {
    Static(static_file::StaticStore),
    Etcd(etcd::EtcdStore),
    Kubernetes(kube::KubeStore),
}

impl Datastore {
    pub fn kind(&self) -> &'static str {
        match self {
            Datastore::Static(_) => "static",
            Datastore::Etcd(_) => "etcd",
            Datastore::Kubernetes(_) => "kubernetes",
        }
    }

    /// Learns this node's pod CIDRs, publishing `me` where the datastore keeps it. Waits (and
    /// retries) until the datastore can answer.
    pub async fn register(
        &mut self,
        me: &LocalIdentity,
        health: &Health,
    ) -> Result<Registration, DatastoreError> {
        match self {
            Datastore::Static(s) => s.register(me, health).await,
            Datastore::Etcd(s) => s.register(me, health).await,
            Datastore::Kubernetes(s) => s.register(me, health).await,
        }
    }

    /// Keeps the registration alive, sends the full peer list on every change and this
    /// node's own state when it changes. Returns only on a fatal error.
    pub async fn run(
        self,
        me: IdentityRx,
        peers: PeersTx,
        own: OwnTx,
        health: Health,
    ) -> Result<(), DatastoreError> {
        match self {
            Datastore::Static(s) => {
                let me = me.borrow().clone();
                s.run(me, peers, own, health).await
            }
            Datastore::Etcd(s) => s.run(me, peers, own, health).await,
            Datastore::Kubernetes(s) => s.run(me, peers, own, health).await,
        }
    }
}

pub(crate) const BACKOFF_MIN: std::time::Duration = std::time::Duration::from_millis(250);
pub(crate) const BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(4);

/// Exponential backoff with jitter for datastore retries: 250 ms doubling to 4 s.
pub(crate) struct Backoff {
    next: std::time::Duration,
}

impl Backoff {
    pub(crate) fn new() -> Backoff {
        Backoff { next: BACKOFF_MIN }
    }

    pub(crate) fn next(&mut self) -> std::time::Duration {
        use rand::Rng;
        let d = self.next;
        self.next = (d * 2).min(BACKOFF_MAX);
        let jitter_ms = rand::rng().random_range(0..=d.as_millis() as u64 / 4);
        d + std::time::Duration::from_millis(jitter_ms)
    }

    pub(crate) fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}
