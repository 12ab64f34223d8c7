//! A multi-node cluster of network namespaces on one machine.
//!
//! ```text
//!            192.168.77.0/24 (<id>-ul, br0, etcd on .250)       192.168.78.0/24 (<id>-ul2, br0)
//!   n1 .11   n2 .12   n3 .13 ...            rt .254 ------------ rt .254          nX .11
//!                                              |
//!                                     198.51.100.1 -- world 198.51.100.2 (<id>-world)
//! ```
//!
//! The router forwards between the segments and the world but knows no pod CIDR: host-gw
//! cannot reach the far node (VXLAN can), and pod -> world is answered only if masqueraded (the
//! world routes back only the node subnets). Every netns is named `<id>-...`; nothing is
//! created in the root netns. Dropping the [`Cluster`] (also on a build error, and through
//! [`crate::registry::shutdown_all`] on a signal) kills its processes, deletes its netns and
//! removes its dir.

use crate::conflist::{self, Attachment, ConfList, ConfListError};
use crate::ns::{enter_command, Netns};
use crate::plugin::PluginRunner;
use crate::probe;
use crate::registry;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::{json, Map, Value};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weft_netops::netlink::{Netlink, Route, VethSpec};
use weft_netops::netns::NetNs;

/// The nodes' segment; the bridge in `<id>-ul` holds .250 (etcd).
pub const SEGMENT_A: Ipv4Net = net(192, 168, 77, 0, 24);
/// The far node's segment, behind the router.
pub const SEGMENT_B: Ipv4Net = net(192, 168, 78, 0, 24);
/// Between the router and the world.
pub const WORLD_NET: Ipv4Net = net(198, 51, 100, 0, 24);
pub const ETCD_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 250);
pub const ROUTER_A: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 254);
pub const ROUTER_B: Ipv4Addr = Ipv4Addr::new(192, 168, 78, 254);
pub const ROUTER_WORLD: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const WORLD_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const ETCD_PORT: u16 = 2379;
pub const ETCD_PREFIX: &str = "/weft/network";
/// Where each weftd listens (inside its node netns).
pub const AGENT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 9946);
pub const CONFLIST_NAME: &str = "10-weft.conflist";

const fn net(a: u8, b: u8, c: u8, d: u8, len: u8) -> Ipv4Net {
    match Ipv4Net::new(Ipv4Addr::new(a, b, c, d), len) {
        Ok(n) => n,
        Err(_) => panic!("bad prefix length"),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("{op}: {source}")]
    Net {
        op: String,
        source: weft_netops::Error,
    },
    #[error("{op} {}: {source}", .path.display())]
    Io {
        op: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
    #[error("{missing} not found in {searched:?}: build it (cargo build -p weft-plugin -p weft-agent) or set WEFT_BIN_DIR")]
    MissingBinary {
        missing: String,
        searched: Vec<PathBuf>,
    },
    #[error("{what}: {detail}\n--- last lines of {} ---\n{tail}", .log.display())]
    Process {
        what: String,
        detail: String,
        log: PathBuf,
        tail: String,
    },
    #[error("pod {pod} on {node}: {source}")]
    Pod {
        pod: String,
        node: String,
        source: Box<ConfListError>,
    },
    #[error("weft-lab is shutting down")]
    Interrupted,
}

fn net_err(op: impl Into<String>) -> impl FnOnce(weft_netops::Error) -> LabError {
    let op = op.into();
    move |source| LabError::Net { op, source }
}

fn io_err(op: &str, path: &Path) -> impl FnOnce(std::io::Error) -> LabError {
    let (op, path) = (op.to_string(), path.to_path_buf());
    move |source| LabError::Io { op, path, source }
}

/// Where nodes learn their pod CIDRs and peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatastoreKind {
    Etcd,
    Static,
    /// No agents at all: the topology only (pods need a hand-written conflist).
    None,
}

impl DatastoreKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DatastoreKind::Etcd => "etcd",
            DatastoreKind::Static => "static",
            DatastoreKind::None => "none",
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
            _ => Err(format!("unknown datastore {s:?} (etcd, static, none)")),
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
}

impl Default for LabConfig {
    fn default() -> Self {
        LabConfig {
            nodes: 3,
            far_node: true,
            datastore: DatastoreKind::Etcd,
            backend: "auto".into(),
            firewall: "auto".into(),
            network: net(10, 244, 0, 0, 16),
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

fn exe_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
        .unwrap_or_default()
}

/// Which underlay segment a node sits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    A,
    B,
}

pub struct Node {
    /// n1, n2, ... (the far node is the last one).
    pub name: String,
    pub index: u32,
    pub netns: Netns,
    pub underlay_ip: Ipv4Addr,
    pub segment: Segment,
    /// The node's files: cni/net.d, ipam, state, weftd.log.
    pub dir: PathBuf,
}

impl Node {
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.join("net.d")
    }
    pub fn conflist_path(&self) -> PathBuf {
        self.cni_conf_dir().join(CONFLIST_NAME)
    }
    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.join("ipam")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("weftd.log")
    }
    pub fn ns(&self) -> &NetNs {
        self.netns.handle()
    }
    /// The pod CIDR the static datastore gives this node: the index-th subnet of the network.
    pub fn static_pod_cidr(&self, network: Ipv4Net, subnet_len: u8) -> Option<Ipv4Net> {
        network.subnets(subnet_len).ok()?.nth(self.index as usize)
    }
    /// The IPv6 pod CIDR the static datastore gives this node (same index as the IPv4 one).
    pub fn static_pod_cidr_v6(&self, network: Ipv6Net, subnet_len: u8) -> Option<Ipv6Net> {
        network.subnets(subnet_len).ok()?.nth(self.index as usize)
    }
    /// VTEP MAC written for this node in the static file.
    pub fn static_vtep_mac(&self) -> String {
        format!(
            "02:77:00:00:{:02x}:{:02x}",
            self.index >> 8,
            self.index & 0xff
        )
    }
}

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

/// A daemon started by the lab; SIGTERM then SIGKILL on drop.
pub struct Proc {
    pub what: String,
    pub program: String,
    pub child: Child,
    pub log: PathBuf,
    keep: bool,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    /// Some(status) once it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
    pub fn log_tail(&self) -> String {
        log_tail(&self.log, 20)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if self.exited().is_none() {
            registry::terminate(
                self.child.id() as i32,
                &self.program,
                Duration::from_secs(3),
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last `n` lines of a log file.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
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
    pods: Vec<Pod>,
    procs: Vec<Proc>,
    kept: bool,
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

    fn build_in(id: String, dir: PathBuf, config: LabConfig) -> Result<Cluster, LabError> {
        if config.nodes == 0 || config.nodes > 200 {
            return Err(LabError::Setup(format!(
                "--nodes {} is outside 1..200",
                config.nodes
            )));
        }
        let bin_dir = match &config.bin_dir {
            Some(d) => d.clone(),
            // The topology needs no binary: a missing plugin shows up at the first add_pod.
            None => find_bin_dir(&["weft"]).unwrap_or_else(|_| exe_dir()),
        };
        {
            // Under the guard like every other creation: a signal's teardown either sees the
            // dir or runs before it exists (and then this refuses to make it).
            let _g = registry::create_guard().map_err(|_| LabError::Interrupted)?;
            std::fs::create_dir_all(&dir).map_err(io_err("create lab dir", &dir))?;
        }
        let new_ns = |suffix: &str| -> Result<Netns, LabError> {
            let _g = registry::create_guard().map_err(|_| LabError::Interrupted)?;
            let name = format!("{id}-{suffix}");
            Netns::named(&name).map_err(io_err("create netns", Path::new(&name)))
        };
        let mtu = config.underlay_mtu;

        // The segments: a bridge each.
        let underlay = new_ns("ul")?;
        let underlay2 = new_ns("ul2")?;
        let mut ul = nl(&underlay)?;
        let mut ul2 = nl(&underlay2)?;
        let br = make_bridge(&mut ul, &underlay.name, mtu)?;
        let br2 = make_bridge(&mut ul2, &underlay2.name, mtu)?;
        add_addr(&mut ul, &underlay.name, br, ETCD_IP, 24)?;
        // etcd must answer the far node.
        add_route(
            &mut ul,
            &underlay.name,
            Route::via(SEGMENT_B.into(), ROUTER_A.into()),
        )?;

        // The router: a leg on each segment and one to the world.
        let router = new_ns("rt")?;
        let world = new_ns("world")?;
        let mut rt = nl(&router)?;
        plug(&mut ul, br, "rt", &router, "eth0", mtu)?;
        plug(&mut ul2, br2, "rt", &router, "eth1", mtu)?;
        let (eth0, eth1) = (
            link(&mut rt, &router.name, "eth0")?,
            link(&mut rt, &router.name, "eth1")?,
        );
        add_addr(&mut rt, &router.name, eth0, ROUTER_A, 24)?;
        add_addr(&mut rt, &router.name, eth1, ROUTER_B, 24)?;
        let pair = rt
            .create_veth(&VethSpec {
                host_name: "eth2".into(),
                peer_name: "eth0".into(),
                peer_netns: Some(world.handle()),
                mtu: Some(mtu),
                ..Default::default()
            })
            .map_err(net_err(format!(
                "create router-world veth in {}",
                router.name
            )))?;
        up(&mut rt, &router.name, pair.host_index)?;
        add_addr(&mut rt, &router.name, pair.host_index, ROUTER_WORLD, 24)?;
        weft_netops::netns::run_in(router.handle(), || {
            weft_netops::sysctl::write("net/ipv4/ip_forward", "1")
        })
        .map_err(net_err(format!("enter {}", router.name)))?
        .map_err(net_err(format!("enable ip_forward in {}", router.name)))?;

        // The world knows the node subnets, not the pod CIDRs.
        let mut w = nl(&world)?;
        let weth = link(&mut w, &world.name, "eth0")?;
        up(&mut w, &world.name, weth)?;
        add_addr(&mut w, &world.name, weth, WORLD_IP, 24)?;
        for seg in [SEGMENT_A, SEGMENT_B] {
            add_route(
                &mut w,
                &world.name,
                Route::via(seg.into(), ROUTER_WORLD.into()),
            )?;
        }

        // The nodes.
        let mut nodes = Vec::new();
        let total = config.nodes + usize::from(config.far_node);
        for i in 1..=total {
            let far = i > config.nodes;
            let name = format!("n{i}");
            let netns = new_ns(&name)?;
            let (seg_nl, seg_br, net, gw, host) = if far {
                (
                    &mut ul2,
                    br2,
                    SEGMENT_B,
                    ROUTER_B,
                    10 + (i - config.nodes) as u8,
                )
            } else {
                (&mut ul, br, SEGMENT_A, ROUTER_A, 10 + i as u8)
            };
            let ip = Ipv4Addr::from(u32::from(net.network()) + u32::from(host));
            plug(seg_nl, seg_br, &name, &netns, "eth0", mtu)?;
            let mut n = nl(&netns)?;
            let eth0 = link(&mut n, &netns.name, "eth0")?;
            add_addr(&mut n, &netns.name, eth0, ip, net.prefix_len())?;
            add_route(
                &mut n,
                &netns.name,
                Route::via("0.0.0.0/0".parse().unwrap(), gw.into()),
            )?;
            let node_dir = dir.join(&name);
            for sub in ["net.d", "ipam", "state"] {
                let d = node_dir.join(sub);
                let _g = registry::create_guard().map_err(|_| LabError::Interrupted)?;
                std::fs::create_dir_all(&d).map_err(io_err("create node dir", &d))?;
            }
            nodes.push(Node {
                name,
                index: i as u32,
                netns,
                underlay_ip: ip,
                segment: if far { Segment::B } else { Segment::A },
                dir: node_dir,
            });
        }

        Ok(Cluster {
            id,
            dir,
            config,
            bin_dir,
            underlay,
            underlay2,
            router,
            world,
            nodes,
            pods: Vec::new(),
            procs: Vec::new(),
            kept: false,
        })
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    fn node_or_err(&self, name: &str) -> Result<&Node, LabError> {
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

    /// Starts a daemon inside `ns` with its output in `log`, recorded in the pid file.
    fn spawn(
        &self,
        what: &str,
        ns: &NetNs,
        program: &Path,
        args: &[String],
        log: &Path,
    ) -> Result<Proc, LabError> {
        let _g = registry::create_guard().map_err(|_| LabError::Interrupted)?;
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(io_err("open log", log))?;
        let err = out.try_clone().map_err(io_err("open log", log))?;
        let mut cmd = enter_command(ns, program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own process group: a terminal's Ctrl-C reaches only us, and we stop the
            // daemons in order.
            .process_group(0);
        if !self.config.keep {
            // SAFETY: prctl is async-signal-safe. Kills the daemon if we die without cleanup
            // (SIGKILL). Tied to the spawning thread: keep the Cluster on one thread.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .spawn()
            .map_err(io_err(&format!("start {what}"), program))?;
        let program_name = program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let _ = registry::record_pid(&self.dir, child.id(), &program_name);
        Ok(Proc {
            what: what.to_string(),
            program: program_name,
            child,
            log: log.to_path_buf(),
            keep: false,
        })
    }

    /// Starts the datastore and one weftd per node; waits for every /readyz and conflist.
    pub fn start_agents(&mut self) -> Result<(), LabError> {
        let weftd = self.weftd_path()?;
        let etcd_url = etcd_url();
        let static_file = self.static_file_path();
        match self.config.datastore {
            DatastoreKind::None => return Ok(()),
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

    fn weftd_path(&self) -> Result<PathBuf, LabError> {
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

    /// Stops etcd (SIGKILL: an outage, not a shutdown). Its data dir stays.
    pub fn stop_etcd(&mut self) -> Result<(), LabError> {
        let i = self
            .procs
            .iter()
            .position(|p| p.what == "etcd")
            .ok_or_else(|| LabError::Setup("etcd is not running".into()))?;
        let mut p = self.procs.remove(i);
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

    /// `etcdctl` against the lab's etcd (run inside the underlay netns); its stdout.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String, LabError> {
        let out = self
            .underlay
            .command("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints=http://127.0.0.1:{ETCD_PORT}"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(io_err("run etcdctl", Path::new("etcdctl")))?;
        if !out.status.success() {
            return Err(LabError::Setup(format!(
                "etcdctl {args:?}: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The node records under `<prefix>/subnets/`: (key, record JSON).
    pub fn etcd_subnets(&self) -> Result<Vec<(String, Value)>, LabError> {
        let from = format!("{ETCD_PREFIX}/subnets/");
        let text = self.etcdctl(&["get", "--prefix", &from])?;
        // etcdctl prints each key on one line and its value on the next.
        let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
        Ok(lines
            .chunks(2)
            .filter(|kv| kv.len() == 2)
            .map(|kv| {
                let value = serde_json::from_str(kv[1]).unwrap_or(Value::Null);
                (kv[0].to_string(), value)
            })
            .collect())
    }

    /// Deletes `node`'s subnet key from etcd (a node removed from the cluster); returns the key.
    pub fn etcd_delete_node(&self, node: &str) -> Result<String, LabError> {
        let key = self
            .etcd_subnets()?
            .into_iter()
            .find(|(_, v)| v["name"] == node)
            .map(|(k, _)| k)
            .ok_or_else(|| LabError::Setup(format!("no etcd subnet key holds node {node}")))?;
        let deleted = self.etcdctl(&["del", &key])?;
        if deleted.trim() != "1" {
            return Err(LabError::Setup(format!(
                "etcdctl del {key} deleted {:?} keys",
                deleted.trim()
            )));
        }
        Ok(key)
    }

    /// Starts etcd (again: its data dir is kept, so a restart resumes the same cluster).
    pub fn start_etcd(&mut self) -> Result<(), LabError> {
        let data = self.dir.join("etcd");
        let peer = "http://127.0.0.1:2380";
        let args: Vec<String> = vec![
            "--name=lab".into(),
            format!("--data-dir={}", data.display()),
            format!(
                "--listen-client-urls=http://{ETCD_IP}:{ETCD_PORT},http://127.0.0.1:{ETCD_PORT}"
            ),
            format!("--advertise-client-urls=http://{ETCD_IP}:{ETCD_PORT}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster=lab={peer}"),
            "--initial-cluster-state=new".into(),
            "--logger=zap".into(),
            "--log-level=warn".into(),
        ];
        let log = self.dir.join("etcd.log");
        let proc = self.spawn(
            "etcd",
            self.underlay.handle(),
            Path::new("/usr/bin/etcd"),
            &args,
            &log,
        )?;
        self.procs.push(proc);
        let health = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), ETCD_PORT);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, _)) = probe::http_get(
                self.underlay.handle(),
                health,
                "/health",
                Duration::from_secs(1),
            ) {
                return Ok(());
            }
            let p = self.procs.last_mut().unwrap();
            if let Some(status) = p.exited() {
                return Err(process_err(p, format!("exited with {status}")));
            }
            if Instant::now() > deadline {
                return Err(process_err(
                    p,
                    "no healthy answer on /health within 20 s".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `weftd init-etcd` once, inside the first node.
    fn init_etcd(&self, weftd: &Path, url: &str) -> Result<(), LabError> {
        let node = &self.nodes[0];
        let log = self.dir.join("init-etcd.log");
        let mut args: Vec<String> = [
            "init-etcd",
            "--etcd-endpoints",
            url,
            "--etcd-prefix",
            ETCD_PREFIX,
            "--network",
            &self.config.network.to_string(),
            "--subnet-len",
            &self.config.subnet_len.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(v6) = self.config.ipv6_network {
            args.extend([
                "--ipv6-network".to_string(),
                v6.to_string(),
                "--ipv6-subnet-len".to_string(),
                self.config.ipv6_subnet_len.to_string(),
            ]);
        }
        let mut p = self.spawn("weftd init-etcd", node.ns(), weftd, &args, &log)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = p.exited() {
                if status.success() {
                    return Ok(());
                }
                return Err(process_err(&p, format!("exited with {status}")));
            }
            if Instant::now() > deadline {
                return Err(process_err(&p, "did not finish within 30 s".into()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The static datastore's file: every node with its underlay IP, pod CIDR and VTEP MAC.
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

fn etcd_url() -> String {
    format!("http://{ETCD_IP}:{ETCD_PORT}")
}

fn agent_what(node: &str) -> String {
    format!("weftd on {node}")
}

fn process_err(p: &Proc, detail: String) -> LabError {
    LabError::Process {
        what: p.what.clone(),
        detail,
        log: p.log.clone(),
        tail: p.log_tail(),
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.kept {
            for p in &mut self.procs {
                p.keep = true;
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

fn nl(ns: &Netns) -> Result<Netlink, LabError> {
    Netlink::in_netns(ns.handle()).map_err(net_err(format!("open netlink in {}", ns.name)))
}

fn link(nl: &mut Netlink, ns: &str, name: &str) -> Result<u32, LabError> {
    nl.get_link_by_name(name)
        .map_err(net_err(format!("get link {name} in {ns}")))?
        .map(|l| l.index)
        .ok_or_else(|| LabError::Setup(format!("no link {name} in {ns}")))
}

fn up(nl: &mut Netlink, ns: &str, index: u32) -> Result<(), LabError> {
    nl.set_link_up(index)
        .map_err(net_err(format!("set link {index} up in {ns}")))
}

fn make_bridge(nl: &mut Netlink, ns: &str, mtu: u32) -> Result<u32, LabError> {
    let br = nl
        .create_bridge("br0", Some(mtu), None)
        .map_err(net_err(format!("create bridge br0 in {ns}")))?;
    up(nl, ns, br)?;
    Ok(br)
}

fn add_addr(nl: &mut Netlink, ns: &str, index: u32, ip: Ipv4Addr, len: u8) -> Result<(), LabError> {
    let addr = IpNet::new(ip.into(), len).unwrap();
    nl.add_address(index, addr, true)
        .map_err(net_err(format!("add address {addr} in {ns}")))
}

fn add_route(nl: &mut Netlink, ns: &str, route: Route) -> Result<(), LabError> {
    nl.add_route(&route)
        .map_err(net_err(format!("add route {route} in {ns}")))
}

/// Plugs `target` into the segment bridge `br`: a veth `port` on the bridge whose peer is
/// created directly in `target` as `ifname`; both ends up.
fn plug(
    seg: &mut Netlink,
    br: u32,
    port: &str,
    target: &Netns,
    ifname: &str,
    mtu: u32,
) -> Result<(), LabError> {
    let pair = seg
        .create_veth(&VethSpec {
            host_name: port.into(),
            peer_name: ifname.into(),
            peer_netns: Some(target.handle()),
            mtu: Some(mtu),
            ..Default::default()
        })
        .map_err(net_err(format!(
            "create veth {port} peer {ifname} in {}",
            target.name
        )))?;
    seg.set_master(pair.host_index, br)
        .map_err(net_err(format!("attach {port} to br0")))?;
    seg.set_link_up(pair.host_index)
        .map_err(net_err(format!("set {port} up")))?;
    let mut t = nl(target)?;
    let i = link(&mut t, &target.name, ifname)?;
    up(&mut t, &target.name, i)
}
