//! A multi-node cluster of network namespaces on one machine: [`Cluster`] ties together the
//! topology ([`crate::topology`]), the datastore ([`crate::etcd`], a static file, or a real
//! Kubernetes control plane in [`crate::kube`]), one weftd per node, and pods
//! ([`crate::pods`]). Dropping the [`Cluster`] (also on a build error, and through
//! [`crate::registry::shutdown_all`] on a signal) kills its processes, deletes its netns and
//! removes its dir.

pub use crate::error::LabError;
pub use crate::pods::Pod;
pub use crate::proc::{log_tail, Proc};
pub use crate::topology::*;

use crate::error::io_err;
use crate::etcd::etcd_url;
use crate::ns::Netns;
use crate::probe;
use crate::proc::{process_err, Spawn};
use crate::registry;
use ipnet::{Ipv4Net, Ipv6Net};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use weft_netops::netns::NetNs;

/// Where nodes learn their pod CIDRs and peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatastoreKind {
    Etcd,
    Static,
    /// A real Kubernetes: control plane, kubelets with containerd, weft by its DaemonSet
    /// (see [`crate::kube::lab`]).
    Kubernetes,
    /// No agents at all: the topology only (pods need a hand-written conflist).
    None,
}

impl DatastoreKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DatastoreKind::Etcd => "etcd",
            DatastoreKind::Static => "static",
            DatastoreKind::None => "none",
            DatastoreKind::Kubernetes => "kubernetes",
        }
    }
}

impl std::str::FromStr for DatastoreKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "etcd" => Ok(DatastoreKind::Etcd),
            "static" => Ok(DatastoreKind::Static),
            "none" => Ok(DatastoreKind::None),
            "kubernetes" | "kube" => Ok(DatastoreKind::Kubernetes),
            _ => Err(format!(
                "unknown datastore {s:?} (etcd, static, kubernetes, none)"
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct LabConfig {
    /// Nodes on segment A.
    pub nodes: usize,
    /// One more node on segment B, behind the router.
    pub far_node: bool,
    pub datastore: DatastoreKind,
    pub backend: String,
    pub firewall: String,
    /// The cluster network and the per-node subnet length.
    pub network: Ipv4Net,
    pub subnet_len: u8,
    /// A dual-stack pod network: the IPv6 cluster network and its per-node subnet length
    /// (etcd: `init-etcd --ipv6-network`; static: a second pod CIDR per node).
    pub ipv6_network: Option<Ipv6Net>,
    pub ipv6_subnet_len: u8,
    pub underlay_mtu: u32,
    /// Where `weft` and `weftd` are; default: see [`find_bin_dir`].
    pub bin_dir: Option<PathBuf>,
    /// The lab will outlive this process (`--keep`): its daemons are not tied to our life.
    pub keep: bool,
    pub ready_timeout: Duration,
    pub resync_interval: String,
    /// `weftd run --etcd-lease-ttl`: how long a dead node's key outlives it.
    pub etcd_lease_ttl: String,
    /// Extra arguments for every `weftd run`.
    pub agent_args: Vec<String>,
    /// `--datastore kubernetes`: nodes whose kubelet is not started with the others (a test
    /// adds them later with [`Cluster::add_kube_node`]: a Node joining a running cluster).
    pub kube_deferred_nodes: Vec<String>,
}

impl LabConfig {
    /// A real Kubernetes (`--datastore kubernetes`) on `nodes` nodes (plus the far one).
    pub fn kubernetes(nodes: usize, far_node: bool) -> LabConfig {
        LabConfig {
            nodes,
            far_node,
            datastore: DatastoreKind::Kubernetes,
            ready_timeout: Duration::from_secs(90),
            ..LabConfig::default()
        }
    }
}

impl Default for LabConfig {
    fn default() -> Self {
        LabConfig {
            nodes: 3,
            far_node: true,
            datastore: DatastoreKind::Etcd,
            backend: "auto".into(),
            firewall: "auto".into(),
            network: crate::topology::net(10, 244, 0, 0, 16),
            subnet_len: 24,
            ipv6_network: None,
            ipv6_subnet_len: 64,
            underlay_mtu: 1500,
            bin_dir: None,
            keep: false,
            ready_timeout: Duration::from_secs(60),
            resync_interval: "5s".into(),
            etcd_lease_ttl: "30s".into(),
            agent_args: Vec::new(),
            kube_deferred_nodes: Vec::new(),
        }
    }
}

/// Finds a dir holding all of `names`: `$WEFT_BIN_DIR`, else next to the running executable
/// (target/debug), else its parent (a test binary in target/debug/deps).
pub fn find_bin_dir(names: &[&str]) -> Result<PathBuf, LabError> {
    let mut candidates = Vec::new();
    if let Some(d) = std::env::var_os("WEFT_BIN_DIR") {
        candidates.push(PathBuf::from(d));
    } else if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            candidates.push(dir.to_path_buf());
            if let Some(up) = dir.parent() {
                candidates.push(up.to_path_buf());
            }
        }
    }
    for dir in &candidates {
        if names.iter().all(|n| dir.join(n).is_file()) {
            return Ok(dir.clone());
        }
    }
    let missing = names
        .iter()
        .find(|n| !candidates.iter().any(|d| d.join(n).is_file()))
        .unwrap_or(&names[0]);
    Err(LabError::MissingBinary {
        missing: missing.to_string(),
        searched: candidates,
    })
}

pub(crate) fn exe_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
        .unwrap_or_default()
}

pub struct Cluster {
    pub id: String,
    /// The lab's files: node dirs, logs, etcd data, pid file.
    pub dir: PathBuf,
    pub config: LabConfig,
    /// Where the `weft` plugin (and `weftd`) are.
    pub bin_dir: PathBuf,
    pub underlay: Netns,
    pub underlay2: Netns,
    pub router: Netns,
    pub world: Netns,
    pub nodes: Vec<Node>,
    pub(crate) pods: Vec<Pod>,
    pub(crate) procs: Vec<Proc>,
    pub(crate) kept: bool,
    /// `--datastore kubernetes`: control plane, kubelets (dropped before everything else).
    pub(crate) kube: Option<crate::kube::lab::KubeLab>,
}

/// What remains of a lab kept with [`Cluster::keep`].
#[derive(Debug, Clone)]
pub struct KeptLab {
    pub id: String,
    pub dir: PathBuf,
    pub netns: Vec<String>,
    pub pids: Vec<u32>,
}

impl Cluster {
    /// Builds the topology (no agents). Nothing is left behind on error.
    pub fn build(config: LabConfig) -> Result<Cluster, LabError> {
        let id = registry::new_id();
        let dir = registry::lab_dir(&id);
        // Same pid as a dead earlier process that did not clean up: its leftovers are stale.
        if dir.exists() || !registry::netns_of(&id).is_empty() {
            eprintln!("weft-lab: removing stale lab {id}");
            let _ = registry::down(&id);
        }
        registry::register(&id);
        let res = Cluster::build_in(id.clone(), dir, config);
        if res.is_err() {
            let _ = registry::down(&id);
            registry::unregister(&id);
        }
        res
    }

    /// Builds the topology and starts etcd (or writes the static file) and one weftd per node,
    /// waiting until every agent is ready.
    pub fn start(config: LabConfig) -> Result<Cluster, LabError> {
        let mut c = Cluster::build(config)?;
        c.start_agents()?;
        Ok(c)
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub(crate) fn node_or_err(&self, name: &str) -> Result<&Node, LabError> {
        self.node(name)
            .ok_or_else(|| LabError::Setup(format!("no node {name} in lab {}", self.id)))
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.pods.iter().find(|p| p.name == name)
    }

    pub fn procs(&mut self) -> &mut [Proc] {
        &mut self.procs
    }

    /// Every netns of this lab, infrastructure first.
    pub fn netns_names(&self) -> Vec<String> {
        let mut v = vec![
            self.underlay.name.clone(),
            self.underlay2.name.clone(),
            self.router.name.clone(),
            self.world.name.clone(),
        ];
        v.extend(self.nodes.iter().map(|n| n.netns.name.clone()));
        v.extend(self.pods.iter().map(|p| p.netns.name.clone()));
        v
    }

    /// Starts the datastore and one weftd per node; waits for every /readyz and conflist.
    pub fn start_agents(&mut self) -> Result<(), LabError> {
        let weftd = self.weftd_path()?;
        let etcd_url = etcd_url();
        let static_file = self.static_file_path();
        match self.config.datastore {
            DatastoreKind::None => return Ok(()),
            DatastoreKind::Kubernetes => return self.start_kube(),
            DatastoreKind::Etcd => {
                self.start_etcd()?;
                self.init_etcd(&weftd, &etcd_url)?;
            }
            DatastoreKind::Static => self.write_static_file(&static_file)?,
        }
        for i in 0..self.nodes.len() {
            self.spawn_agent(i, &weftd)?;
        }
        let names: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        for name in names {
            self.wait_agent_ready(&name)?;
        }
        self.wait_converged()
    }

    /// Waits until every agent has reconciled with every other node as a peer. Ready agents
    /// may not have heard of the nodes that registered after them yet.
    pub fn wait_converged(&self) -> Result<(), LabError> {
        let want = self.nodes.len() - 1;
        let deadline = Instant::now() + self.config.ready_timeout;
        for node in &self.nodes {
            loop {
                let status =
                    probe::http_get(node.ns(), AGENT_LISTEN, "/status", Duration::from_secs(1));
                let last = match &status {
                    Ok((200, body)) => {
                        let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
                        let peers = v["last_reconcile"]["peers"].as_array().map(Vec::len);
                        if peers == Some(want) {
                            break;
                        }
                        format!("reconciled with {peers:?} peers, want {want}")
                    }
                    Ok((code, body)) => format!("/status answered {code}: {}", body.trim()),
                    Err(e) => format!("/status: {e}"),
                };
                if Instant::now() > deadline {
                    return Err(LabError::Setup(format!(
                        "weftd on {} not converged after {:?}: {last}\n--- last lines of {} ---\n{}",
                        node.name,
                        self.config.ready_timeout,
                        node.log_path().display(),
                        log_tail(&node.log_path(), 20)
                    )));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    pub(crate) fn weftd_path(&self) -> Result<PathBuf, LabError> {
        let weftd = match &self.config.bin_dir {
            Some(d) => d.join("weftd"),
            None => find_bin_dir(&["weft", "weftd"])?.join("weftd"),
        };
        if !weftd.is_file() {
            return Err(LabError::MissingBinary {
                missing: "weftd".into(),
                searched: vec![self.bin_dir.clone()],
            });
        }
        Ok(weftd)
    }

    fn static_file_path(&self) -> PathBuf {
        self.dir.join("nodes.json")
    }

    /// The `weftd run` arguments of node `i` (the same on every start of its agent).
    fn agent_args(&self, i: usize) -> Vec<String> {
        let node = &self.nodes[i];
        [
            "run",
            "--node-name",
            &node.name,
            "--datastore",
            self.config.datastore.as_str(),
            "--etcd-endpoints",
            &etcd_url(),
            "--etcd-prefix",
            ETCD_PREFIX,
            "--etcd-lease-ttl",
            &self.config.etcd_lease_ttl,
            "--static-file",
            &self.static_file_path().display().to_string(),
            "--backend",
            &self.config.backend,
            "--firewall",
            &self.config.firewall,
            "--underlay-interface",
            "eth0",
            "--cni-conf-dir",
            &node.cni_conf_dir().display().to_string(),
            "--cni-bin-dir",
            &self.bin_dir.display().to_string(),
            "--ipam-data-dir",
            &node.ipam_dir().display().to_string(),
            "--state-dir",
            &node.state_dir().display().to_string(),
            "--plugin-events-dir",
            &node.dir.join("plugin-events").display().to_string(),
            "--listen",
            &AGENT_LISTEN.to_string(),
            "--resync-interval",
            &self.config.resync_interval,
            "--log-format",
            "json",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(self.config.agent_args.iter().cloned())
        .collect()
    }

    fn spawn_agent(&mut self, i: usize, weftd: &Path) -> Result<(), LabError> {
        let args = self.agent_args(i);
        let node = &self.nodes[i];
        let proc = self.spawn(
            &agent_what(&node.name),
            node.ns(),
            weftd,
            &args,
            &node.log_path(),
        )?;
        self.procs.push(proc);
        Ok(())
    }

    /// Whether `node`'s weftd is running (started and not exited).
    pub fn agent_running(&mut self, node: &str) -> bool {
        let what = agent_what(node);
        self.procs
            .iter_mut()
            .any(|p| p.what == what && p.exited().is_none())
    }

    /// Stops `node`'s weftd with `signal` (SIGTERM: a clean stop; SIGKILL: a crash) and waits
    /// until it is gone (SIGKILL after 5 s). Kernel state and etcd key stay as the agent leaves
    /// them.
    pub fn stop_agent(&mut self, node: &str, signal: i32) -> Result<(), LabError> {
        self.node_or_err(node)?;
        let what = agent_what(node);
        let i = self
            .procs
            .iter()
            .position(|p| p.what == what)
            .ok_or_else(|| LabError::Setup(format!("no weftd running on {node}")))?;
        let mut p = self.procs.remove(i);
        // SAFETY: plain kill(2) on our own child (not yet reaped, so the pid is still ours).
        unsafe { libc::kill(p.pid() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while p.exited().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = p.child.kill();
        let _ = p.child.wait();
        Ok(())
    }
    /// Starts `node`'s weftd again with the arguments of its first start and waits until it is
    /// ready.
    pub fn start_agent(&mut self, node: &str) -> Result<(), LabError> {
        let i = self
            .nodes
            .iter()
            .position(|n| n.name == node)
            .ok_or_else(|| LabError::Setup(format!("no node {node} in lab {}", self.id)))?;
        if self.agent_running(node) {
            return Err(LabError::Setup(format!(
                "weftd on {node} is running already"
            )));
        }
        let weftd = self.weftd_path()?;
        self.spawn_agent(i, &weftd)?;
        self.wait_agent_ready(node)
    }

    /// [`Cluster::stop_agent`] with `signal`, then [`Cluster::start_agent`].
    pub fn restart_agent(&mut self, node: &str, signal: i32) -> Result<(), LabError> {
        self.stop_agent(node, signal)?;
        self.start_agent(node)
    }

    /// How this lab starts its daemons: logged, recorded in the pid file, tied to our life
    /// unless the lab is kept.
    pub(crate) fn spawn_opts(&self, what: &str) -> Spawn {
        Spawn::new(what)
            .record_in(&self.dir)
            .detached(self.config.keep)
    }

    pub(crate) fn push_proc(&mut self, p: Proc) {
        self.procs.push(p);
    }

    /// Starts a daemon inside `ns` with its output in `log`, recorded in the pid file.
    pub(crate) fn spawn(
        &self,
        what: &str,
        ns: &NetNs,
        program: &Path,
        args: &[String],
        log: &Path,
    ) -> Result<Proc, LabError> {
        let mut cmd = crate::ns::enter_command(ns, program);
        cmd.args(args);
        Proc::spawn(cmd, self.spawn_opts(what).log(log))
    }

    pub fn write_static_file(&self, path: &Path) -> Result<(), LabError> {
        let nodes: Vec<Value> = self
            .nodes
            .iter()
            .map(|n| {
                let v4 = n
                    .static_pod_cidr(self.config.network, self.config.subnet_len)
                    .map(|c| c.to_string());
                let v6 = self.config.ipv6_network.and_then(|net| {
                    n.static_pod_cidr_v6(net, self.config.ipv6_subnet_len)
                        .map(|c| c.to_string())
                });
                json!({
                    "name": n.name,
                    "underlayIp": n.underlay_ip.to_string(),
                    "podCidrs": v4.into_iter().chain(v6).collect::<Vec<_>>(),
                    "vtepMac": n.static_vtep_mac(),
                })
            })
            .collect();
        let mut cluster_cidrs = vec![self.config.network.to_string()];
        cluster_cidrs.extend(self.config.ipv6_network.map(|n| n.to_string()));
        let doc = json!({ "clusterCIDRs": cluster_cidrs, "nodes": nodes });
        std::fs::write(path, serde_json::to_vec_pretty(&doc).unwrap())
            .map_err(io_err("write static node file", path))
    }

    fn wait_agent_ready(&mut self, node_name: &str) -> Result<(), LabError> {
        let deadline = Instant::now() + self.config.ready_timeout;
        let ni = self.nodes.iter().position(|n| n.name == node_name).unwrap();
        let pi = self
            .procs
            .iter()
            .position(|p| p.what == agent_what(node_name))
            .unwrap();
        loop {
            let node = &self.nodes[ni];
            let last =
                match probe::http_get(node.ns(), AGENT_LISTEN, "/readyz", Duration::from_secs(1)) {
                    Ok((200, _)) if node.conflist_path().is_file() => return Ok(()),
                    Ok((200, _)) => {
                        format!(
                            "/readyz is 200 but {} is missing",
                            node.conflist_path().display()
                        )
                    }
                    Ok((code, body)) => format!("/readyz answered {code}: {}", body.trim()),
                    Err(e) => format!("/readyz: {e}"),
                };
            let p = &mut self.procs[pi];
            if let Some(status) = p.exited() {
                return Err(process_err(p, format!("exited with {status}")));
            }
            if Instant::now() > deadline {
                return Err(process_err(
                    p,
                    format!("not ready after {:?}: {last}", self.config.ready_timeout),
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Adds a pod on `node` through the node's conflist (written by its agent).
    /// Probes every pod pair, node -> pod, pod -> node and pod -> world (see [`crate::matrix`]).
    pub fn connectivity_matrix(&self) -> std::io::Result<Vec<crate::matrix::Row>> {
        crate::matrix::connectivity_matrix(self)
    }

    /// Keeps everything (netns, daemons, dir) after this value is gone; `weft-lab down --id`
    /// removes it later.
    pub fn keep(mut self) -> KeptLab {
        self.kept = true;
        KeptLab {
            id: self.id.clone(),
            dir: self.dir.clone(),
            netns: self.netns_names(),
            pids: self.procs.iter().map(Proc::pid).collect(),
        }
    }
}

fn agent_what(node: &str) -> String {
    format!("weftd on {node}")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.kept {
            if let Some(k) = &mut self.kube {
                k.keep();
            }
            for p in &mut self.procs {
                p.keep();
            }
            for ns in [&self.underlay, &self.underlay2, &self.router, &self.world] {
                ns.keep();
            }
            self.nodes.iter().for_each(|n| n.netns.keep());
            self.pods.iter().for_each(|p| p.netns.keep());
            registry::unregister(&self.id);
            return;
        }
        // Daemons first (in parallel: each may take its grace period), then the namespaces.
        // Kubernetes first: kubelets and their containers, then the control plane.
        drop(self.kube.take());
        let procs = std::mem::take(&mut self.procs);
        std::thread::scope(|s| {
            for p in procs {
                s.spawn(move || drop(p));
            }
        });
        self.pods.clear();
        if let Err(e) = registry::down(&self.id) {
            eprintln!("weft-lab: tearing down {}: {e}", self.id);
        }
        registry::unregister(&self.id);
    }
}
