//! weftd, the weft node agent: learns this node's pod CIDRs from a datastore, writes the CNI
//! configuration, makes other nodes' pods reachable (host-gw routes or a VXLAN overlay),
//! installs forward-accept and masquerade rules, and reconciles all of it continuously.
//!
//! One idea per module: `datastore` (where CIDRs and peers come from), `backend` (peer ->
//! kernel objects), `reconcile` (kernel diff and apply), `vxlan` (the VTEP), `cniconf` (the
//! conflist), `agent` (the loop), `http`/`metrics` (what operators see), `trace` and
//! `kubeproxy` (a packet's path, through kube-proxy's Service NAT), `cli` (the rest).

pub mod agent;
pub mod backend;
pub mod cli;
pub mod cniconf;
pub mod config;
pub mod datastore;
pub mod desired;
pub mod error;
pub mod events;
pub mod files;
pub mod http;
pub mod kubeproxy;
pub mod metrics;
pub mod node;
pub mod policy;
pub mod policy_log;
pub mod reconcile;
pub mod trace;
pub mod underlay;
pub mod vxlan;

/// The log filter without `WEFT_LOG`. The kube client logs every failed request at ERROR
/// itself (`failed with error ...`); weftd logs each failure once, with the address and the
/// cause, so the client's own lines are off unless asked for (`WEFT_LOG=kube_client=debug`).
pub const DEFAULT_LOG_FILTER: &str = "info,kube_client::client::builder=off";
