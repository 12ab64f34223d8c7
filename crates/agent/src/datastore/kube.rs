//! The `kubernetes` datastore (being written).

use super::{DatastoreError, Health, PeersTx};
use crate::node::{LocalIdentity, Registration};
use ipnet::IpNet;
use std::path::PathBuf;

pub struct KubeConfig {
    pub kubeconfig: Option<PathBuf>,
    pub node_name: String,
    pub cluster_cidrs: Vec<IpNet>,
}

pub struct KubeStore {
    pub cfg: KubeConfig,
}

impl KubeStore {
    pub fn new(cfg: KubeConfig) -> KubeStore {
        KubeStore { cfg }
    }
    pub async fn register(&mut self, _me: &LocalIdentity, _health: &Health) -> Result<Registration, DatastoreError> {
        Err(DatastoreError::Kubernetes("not yet".into()))
    }
    pub async fn run(self, _me: LocalIdentity, _peers: PeersTx, _health: Health) -> Result<(), DatastoreError> {
        Err(DatastoreError::Kubernetes("not yet".into()))
    }
}
