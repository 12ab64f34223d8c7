//! weft-lab: network namespaces playing nodes, pods, an underlay and the outside world, with
//! the real `weft` plugin exec'd the way a runtime execs it. Used by the `weft-lab` binary (the
//! demo), by the end-to-end tests and by the benchmarks.
//!
//! * [`cluster`]: [`Cluster`], the multi-node lab (config, agents, keep/teardown).
//! * [`topology`]: segments, router, world, nodes; [`netutil`]: the netlink helpers it uses.
//! * [`pods`]: pods attached through a node's conflist.
//! * [`proc`]: the one process guard; [`etcd`]: the one etcd launcher.
//! * [`kube`]: a real Kubernetes in the lab: control plane (certificates, apiserver,
//!   controller-manager, scheduler) in a lab netns, kubelet + containerd nodes in their own
//!   mount namespaces, offline images, weft deployed by its DaemonSet, pods made with kubectl.
//! * [`conflist`]: runs a CNI conflist as libcni does (ADD in order, DEL in reverse).
//! * [`matrix`]: the connectivity matrix and its expected-vs-actual check.
//! * [`registry`]: lab ids and dirs, `down` (remove a lab), `shutdown_all` (signal handlers).
//! * [`ns`], [`plugin`], [`probe`]: netns guards, one plugin exec, ping / whoami / HTTP GET.

pub mod cluster;
pub mod conflist;
pub mod error;
pub mod etcd;
pub mod kube;
pub mod matrix;
pub mod netutil;
pub mod ns;
pub mod plugin;
pub mod pods;
pub mod probe;
pub mod proc;
pub mod registry;
pub mod topology;
pub mod trace;

pub use cluster::{Cluster, DatastoreKind, LabConfig, LabError, Node, Pod};
pub use conflist::{Attachment, ConfList, ConfListError};
pub use ns::Netns;

/// The workspace binaries a lab runs from its bin dir (the plugin, the agent, the CLI, and the
/// Kubernetes lab's workload); `scripts/demo.sh` builds each (tests/setup.rs checks).
pub const LAB_BINARIES: &[&str] = &["weft", "weftd", "weft-lab", "weft-agnhost"];
pub use plugin::{PluginOutput, PluginRunner};
