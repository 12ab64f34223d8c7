//! The `static` datastore: a JSON file listing every node, for a small cluster or a demo.
//!
//! ```json
//! { "clusterCIDRs": ["10.244.0.0/16"],
//!   "nodes": [ { "name": "n1", "underlayIp": "192.168.100.11", "podCidrs": ["10.244.1.0/24"],
//!                "vtepMac": "02:..." } ] }
//! ```
//! With static nodes there is nobody to tell the VTEP MAC to, so `vtepMac` must be written in
//! the file for nodes reached over VXLAN; weftd derives its own MAC from it too.
//! The file is re-read every few seconds; edits take effect without a restart.

use super::{send_if_changed, DatastoreError, Health, OwnState, OwnTx, PeersTx};
use crate::node::{LocalIdentity, NodeRecord, Registration};
use ipnet::IpNet;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StaticFile {
    #[serde(rename = "clusterCIDRs")]
    pub cluster_cidrs: Vec<IpNet>,
    pub nodes: Vec<NodeRecord>,
}

pub struct StaticStore {
    pub path: PathBuf,
    pub poll: Duration,
}

impl StaticStore {
    pub fn new(path: PathBuf) -> StaticStore {
        StaticStore {
            path,
            poll: Duration::from_secs(5),
        }
    }

    fn err(&self, detail: impl ToString) -> DatastoreError {
        DatastoreError::Static {
            path: self.path.display().to_string(),
            detail: detail.to_string(),
        }
    }

    pub fn load(&self) -> Result<StaticFile, DatastoreError> {
        let raw = std::fs::read(&self.path).map_err(|e| self.err(e))?;
        serde_json::from_slice(&raw).map_err(|e| self.err(e))
    }

    pub async fn register(
        &mut self,
        me: &LocalIdentity,
        health: &Health,
    ) -> Result<Registration, DatastoreError> {
        let file = self.load()?;
        health.ok();
        let mine = file
            .nodes
            .iter()
            .find(|n| n.name == me.name)
            .ok_or_else(|| self.err(format!("node {:?} is not listed", me.name)))?;
        Ok(Registration {
            pod_cidrs: mine.pod_cidrs.clone(),
            cluster_cidrs: file.cluster_cidrs,
            vtep_mac: mine.vtep_mac.clone(),
        })
    }

    pub async fn run(
        self,
        me: LocalIdentity,
        peers: PeersTx,
        own: OwnTx,
        health: Health,
    ) -> Result<(), DatastoreError> {
        loop {
            match self.load() {
                Ok(file) => {
                    health.ok();
                    let state = match file.nodes.iter().find(|n| n.name == me.name) {
                        Some(mine) => OwnState::Registered(mine.pod_cidrs.clone()),
                        None => OwnState::Lost(format!(
                            "node {:?} is not listed in {} any more",
                            me.name,
                            self.path.display()
                        )),
                    };
                    send_if_changed(&own, state);
                    let others: Vec<NodeRecord> = file
                        .nodes
                        .into_iter()
                        .filter(|n| n.name != me.name)
                        .collect();
                    send_if_changed(&peers, Some(others));
                }
                Err(e) => health.failed(e),
            }
            tokio::time::sleep(self.poll).await;
        }
    }
}
