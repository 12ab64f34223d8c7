//! `weftd run`: bring the node up, then reconcile forever.
//!
//! Start-up never flushes anything: routes, neighbours, FDB entries and rules left by a
//! previous weftd keep carrying pod traffic until the first complete peer list from the
//! datastore says what is stale. That is why a restart (even kill -9) loses no packets.

use crate::backend::{self, LocalView, PathKind};
use crate::config::{BackendKind, DatastoreKind, FirewallKind, RunConfig};
use crate::datastore::OwnState;
use crate::datastore::{self, Datastore, Health};
use crate::error::{file, kernel, Error, Result};
use crate::metrics::{ObjectLabel, PathLabel};
use crate::node::{LocalIdentity, NodeRecord, Registration};
use crate::reconcile::{self, Report};
use crate::underlay::{self, Underlay};
use crate::{cniconf, desired, http, vxlan};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::watch;
use weft_firewall::{DriverKind, Firewall, IptablesVariant, Policy};
use weft_netops::netlink::{format_mac, monitor};
use weft_netops::Netlink;

/// Everything `weftd status` and /status show.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    pub node: String,
    pub datastore: String,
    pub datastore_connected: bool,
    pub datastore_error: Option<String>,
    pub backend: Option<BackendKind>,
    pub underlay: Option<UnderlayStatus>,
    pub pod_cidrs: Vec<IpNet>,
    pub cluster_cidrs: Vec<IpNet>,
    pub pod_mtu: Option<u32>,
    pub vtep: Option<VtepStatus>,
    pub cni_config: Option<String>,
    /// The configured driver (`--firewall`), known before the rules are set up.
    pub firewall_mode: String,
    pub firewall: Option<FirewallStatus>,
    /// NetworkPolicy enforcement (kubernetes datastore), when on.
    pub policy: Option<crate::policy::PolicyStatus>,
    pub ready: bool,
    /// What the agent is waiting for, while not ready.
    pub waiting_for: Option<String>,
    pub last_reconcile: Option<Report>,
    pub problems: Vec<String>,
}

impl Status {
    /// Why the agent is not ready, as /readyz says it: what it waits for and, while the
    /// datastore cannot answer, the datastore's own reason (Node missing, access forbidden,
    /// pod CIDR not assigned yet, server unreachable).
    pub fn not_ready_reason(&self) -> Option<String> {
        if self.ready {
            return None;
        }
        let mut why = format!(
            "waiting for {}",
            self.waiting_for.as_deref().unwrap_or("start-up")
        );
        if let (false, Some(err)) = (self.datastore_connected, &self.datastore_error) {
            why.push_str(": ");
            why.push_str(err);
        }
        Some(why)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnderlayStatus {
    pub interface: String,
    pub address: IpNet,
    pub mtu: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VtepStatus {
    pub device: String,
    pub mac: String,
    pub vni: u32,
    pub port: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FirewallStatus {
    pub driver: String,
    pub in_place: bool,
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
}

/// State shared between the reconcile loop and the HTTP endpoints.
pub struct Shared {
    pub status: Mutex<Status>,
    pub metrics: crate::metrics::Metrics,
    pub health: Health,
    /// The NetworkPolicy compiler (its model and desired table), when weftd enforces
    /// NetworkPolicy.
    pub policy: std::sync::OnceLock<Arc<std::sync::RwLock<weft_policy::Compiler>>>,
}

impl Shared {
    pub fn update(&self, f: impl FnOnce(&mut Status)) {
        let mut s = self.status.lock().unwrap();
        f(&mut s);
        let h = self.health.get();
        s.datastore_connected = h.connected;
        s.datastore_error = h.last_error;
        self.metrics.datastore_up.set(i64::from(h.connected));
        self.metrics.ready.set(i64::from(s.ready));
    }
    pub fn snapshot(&self) -> Status {
        let h = self.health.get();
        let mut s = self.status.lock().unwrap().clone();
        s.datastore_connected = h.connected;
        s.datastore_error = h.last_error;
        s
    }
}

fn firewall_driver(kind: FirewallKind) -> Result<Option<Box<dyn Firewall>>> {
    let kind = match kind {
        FirewallKind::None => return Ok(None),
        FirewallKind::Auto => DriverKind::Auto,
        FirewallKind::Nftables => DriverKind::Nftables,
        FirewallKind::Iptables => DriverKind::Iptables(IptablesVariant::Auto),
        FirewallKind::IptablesNft => DriverKind::Iptables(IptablesVariant::Nft),
        FirewallKind::IptablesLegacy => DriverKind::Iptables(IptablesVariant::Legacy),
    };
    Ok(Some(weft_firewall::driver(kind)?))
}

fn build_datastore(cfg: &RunConfig) -> Result<Datastore> {
    Ok(match cfg.datastore {
        DatastoreKind::Static => {
            let path = cfg
                .static_file
                .clone()
                .ok_or_else(|| Error::Config("--datastore static needs --static-file".into()))?;
            Datastore::Static(datastore::static_file::StaticStore::new(path))
        }
        DatastoreKind::Etcd => Datastore::Etcd(datastore::etcd::EtcdStore::new(
            datastore::etcd::EtcdConfig {
                endpoints: cfg.etcd.etcd_endpoints.clone(),
                prefix: cfg.etcd.etcd_prefix.clone(),
                lease_ttl: cfg.etcd_lease_ttl,
                state_dir: cfg.state_dir.clone(),
            },
        )),
        DatastoreKind::Kubernetes => Datastore::Kubernetes(datastore::kube::KubeStore::new(
            datastore::kube::KubeConfig {
                kubeconfig: cfg.kubeconfig.clone(),
                node_name: cfg.node_name.clone(),
                cluster_cidrs: cfg.cluster_cidrs.clone(),
            },
        )),
    })
}

/// Runs blocking netlink work off the async workers (netlink calls are short but synchronous).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking task panicked")
}

pub async fn run(cfg: RunConfig) -> Result<()> {
    let network_policy = cfg.enforces_network_policy().map_err(Error::Config)?;
    let shared = Arc::new(Shared {
        status: Mutex::new(Status {
            node: cfg.node_name.clone(),
            datastore: format!("{:?}", cfg.datastore).to_lowercase(),
            backend: Some(cfg.backend),
            firewall_mode: clap::ValueEnum::to_possible_value(&cfg.firewall)
                .map(|v| v.get_name().to_string())
                .unwrap_or_default(),
            waiting_for: Some("start-up".into()),
            ..Default::default()
        }),
        metrics: crate::metrics::Metrics::new(),
        health: Health::default(),
        policy: Default::default(),
    });
    http::serve(cfg.listen, shared.clone()).await?;
    if let Err(e) = crate::events::prepare(&cfg.plugin_events_dir) {
        tracing::warn!(dir = %cfg.plugin_events_dir.display(), error = %e, "plugin events dir; CNI metrics off");
    }

    let (ifname, ip) = (cfg.underlay_interface.clone(), cfg.underlay_ip);
    let underlay = blocking(move || {
        let mut nl = Netlink::new().map_err(kernel("open netlink"))?;
        underlay::detect(&mut nl, ifname.as_deref(), ip)
    })
    .await?;
    tracing::info!(interface = %underlay.ifname, address = %underlay.addr, mtu = underlay.mtu, "underlay");

    let uses_vxlan = cfg.backend != BackendKind::HostGw;
    let mut vtep_mac = if uses_vxlan {
        Some(vxlan::load_or_create_mac(&cfg.state_dir).map_err(file(&cfg.state_dir))?)
    } else {
        None
    };
    let mut me = LocalIdentity {
        name: cfg.node_name.clone(),
        underlay_ip: underlay.ip(),
        vtep_mac: vtep_mac.map(|m| format_mac(&m)),
    };
    let pod_mtu = cfg
        .mtu
        .unwrap_or(underlay.mtu - if uses_vxlan { vxlan::VXLAN_OVERHEAD } else { 0 });
    shared.update(|s| {
        s.underlay = Some(UnderlayStatus {
            interface: underlay.ifname.clone(),
            address: underlay.addr,
            mtu: underlay.mtu,
        });
        s.pod_mtu = Some(pod_mtu);
        s.vtep = vtep_mac.map(|m| VtepStatus {
            device: vxlan::device_name(cfg.vxlan_vni),
            mac: format_mac(&m),
            vni: cfg.vxlan_vni,
            port: cfg.vxlan_port,
        });
        s.waiting_for = Some(format!("datastore {}: this node's pod CIDR", s.datastore));
    });

    let mut store = build_datastore(&cfg)?;
    let reg: Registration = store.register(&me, &shared.health).await?;
    if let (true, Some(assigned)) = (uses_vxlan, reg.vtep_mac.as_deref()) {
        let mac = vxlan::parse_mac(assigned)
            .ok_or_else(|| Error::Node(format!("datastore assigns a bad VTEP MAC {assigned:?}")))?;
        vtep_mac = Some(mac);
        me.vtep_mac = Some(format_mac(&mac));
    }
    let mut cluster_cidrs = reg.cluster_cidrs.clone();
    cluster_cidrs.extend(cfg.cluster_cidrs.iter().copied());
    cluster_cidrs.sort();
    cluster_cidrs.dedup();
    tracing::info!(pod_cidrs = ?reg.pod_cidrs, cluster_cidrs = ?cluster_cidrs, "registered");
    shared.update(|s| {
        s.pod_cidrs = reg.pod_cidrs.clone();
        s.cluster_cidrs = cluster_cidrs.clone();
        if let (Some(v), Some(mac)) = (s.vtep.as_mut(), vtep_mac) {
            v.mac = format_mac(&mac);
        }
    });

    let firewall = firewall_driver(cfg.firewall)?;
    let mut policy = Policy::new(cluster_cidrs.clone());
    policy.masquerade = !cfg.no_masquerade;

    let node = Arc::new(NodeSetup {
        cfg: cfg.clone(),
        underlay: Mutex::new(underlay),
        vtep_mac,
        pod_cidrs: watch::Sender::new(reg.pod_cidrs.clone()),
        identity: watch::Sender::new(me.clone()),
        own_lost: Mutex::new(None),
        watched: Mutex::new(WatchedLinks::default()),
        programmed: Mutex::new(None),
        pod_mtu,
        firewall,
        policy,
    });

    // Node-level set-up, then readiness: CNI config only once forwarding and rules are in place.
    let n = node.clone();
    let sh = shared.clone();
    blocking(move || n.converge_node(&sh)).await;

    let mut echoes = start_health_echoes(&cfg, &node.pod_cidrs());

    // NetworkPolicy: its own watches and table, beside the node's networking (a failure
    // there never touches routes or pods' addresses).
    if network_policy {
        let (client, _) = crate::datastore::kube::make_client(cfg.kubeconfig.as_deref()).await?;
        tokio::spawn(crate::policy::run(
            client,
            cfg.node_name.clone(),
            node.pod_cidrs.subscribe(),
            crate::policy::Options {
                cut_established: cfg.policy_cuts_established,
                log_denied: cfg.policy_log_denied,
            },
            cfg.policy_socket.clone(),
            shared.clone(),
        ));
    }

    // The plugin's events are cheap to collect: once a second, off the reconcile path. New
    // events mean pods came or went: refresh the IPAM usage too.
    let (sh, n) = (shared.clone(), node.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            let (sh, n) = (sh.clone(), n.clone());
            blocking(move || {
                if crate::events::collect(&n.cfg.plugin_events_dir, &sh.metrics) > 0 {
                    n.update_ipam_usage(&sh);
                }
            })
            .await;
        }
    });

    let (peers_tx, mut peers_rx) = watch::channel::<Option<Vec<NodeRecord>>>(None);
    let (own_tx, mut own_rx) = watch::channel(OwnState::Registered(reg.pod_cidrs.clone()));
    let health = shared.health.clone();
    let identity = node.identity.subscribe();
    let datastore_task =
        tokio::spawn(async move { store.run(identity, peers_tx, own_tx, health).await });

    let mut link_events = watch_links();
    let mut resync = tokio::time::interval(cfg.resync_interval);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = Box::pin(shutdown_signal());
    loop {
        let full = tokio::select! {
            // The underlay re-addressed or gone, the bridge or VTEP deleted: converge now,
            // not at the next resync.
            Some(change) = link_events.recv() => {
                if !node.is_affected_by(change) {
                    continue;
                }
                // Changes come in bursts (an address removed, then another added).
                tokio::time::sleep(LINK_EVENT_SETTLE).await;
                while link_events.try_recv().is_ok() {}
                tracing::info!(?change, "link change: converging");
                true
            }
            changed = peers_rx.changed() => {
                if changed.is_err() {
                    return Err(match datastore_task.await {
                        Ok(Err(e)) => e.into(),
                        _ => Error::Node("the datastore task ended".into()),
                    });
                }
                false
            }
            _ = own_rx.changed() => {
                let own = own_rx.borrow_and_update().clone();
                if let OwnState::Registered(cidrs) = &own {
                    if *cidrs != node.pod_cidrs() {
                        echoes.iter().for_each(|t| t.abort());
                        echoes = start_health_echoes(&cfg, cidrs);
                    }
                }
                node.set_own(&shared, own);
                true
            }
            _ = resync.tick() => true,
            _ = &mut shutdown => {
                // Leave everything in place: pods keep working while weftd is away.
                tracing::info!("shutting down; kernel state left in place");
                return Ok(());
            }
        };
        let peers = peers_rx.borrow_and_update().clone();
        let n = node.clone();
        let sh = shared.clone();
        blocking(move || {
            if full {
                n.converge_node(&sh);
            }
            // Until the datastore has delivered a complete peer list, change nothing: what the
            // kernel has is the best knowledge there is.
            if let Some(peers) = peers {
                n.reconcile_peers(&sh, &peers, full);
            }
        })
        .await;
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

pub use crate::desired::pod_gateway;

/// Answers each connection on `addr` with this node's name: the target of `weftd check
/// --peers` on other nodes, reached through the pod network (routes, VXLAN, rules).
async fn health_echo(addr: std::net::SocketAddr, node: String) {
    use tokio::io::AsyncWriteExt;
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(%addr, error = %e, "health echo not started");
            return;
        }
    };
    loop {
        if let Ok((mut conn, _)) = listener.accept().await {
            let line = format!("weft {node}\n");
            tokio::spawn(async move {
                let _ = conn.write_all(line.as_bytes()).await;
            });
        }
    }
}

/// How long to let a burst of link notifications settle before converging.
const LINK_EVENT_SETTLE: std::time::Duration = std::time::Duration::from_millis(100);

/// Kernel notifications about links and addresses in weftd's network namespace, read on a
/// thread of their own (the socket read blocks). Without a monitor (it could not be opened),
/// the resync interval alone notices such changes.
fn watch_links() -> tokio::sync::mpsc::UnboundedReceiver<monitor::Change> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    match monitor::Monitor::new() {
        Ok(mut mon) => {
            std::thread::spawn(move || loop {
                match mon.wait() {
                    Ok(changes) => {
                        for c in changes {
                            if tx.send(c).is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "link monitor stopped; relying on the resync");
                        return;
                    }
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "no link monitor; relying on the resync"),
    }
    rx
}

/// The health echo on each pod gateway (`weftd check --peers` on other nodes probes it).
fn start_health_echoes(cfg: &RunConfig, pod_cidrs: &[IpNet]) -> Vec<tokio::task::JoinHandle<()>> {
    if cfg.health_port == 0 {
        return Vec::new();
    }
    pod_cidrs
        .iter()
        .filter_map(pod_gateway)
        .map(|gw| {
            let addr = std::net::SocketAddr::new(gw.addr(), cfg.health_port);
            tokio::spawn(health_echo(addr, cfg.node_name.clone()))
        })
        .collect()
}

/// This node's facts plus the pieces that converge the node-level state.
struct NodeSetup {
    cfg: RunConfig,
    underlay: Mutex<Underlay>,
    vtep_mac: Option<[u8; 6]>,
    /// This node's pod CIDRs as the datastore holds them now (they can change: see
    /// [`OwnState`]).
    /// (A watch: the NetworkPolicy task follows them for its fail-closed rule.)
    pod_cidrs: watch::Sender<Vec<IpNet>>,
    /// What this node publishes about itself; the underlay address follows the kernel.
    identity: watch::Sender<LocalIdentity>,
    /// Why this node is not registered any more (own Node deleted, lease lost), if so.
    own_lost: Mutex<Option<String>>,
    /// The links whose change means converging now: the underlay, the bridge, the VTEP.
    watched: Mutex<WatchedLinks>,
    /// What the last reconcile left programmed for the peers; `None` until the first full
    /// read of the kernel (and after a failed one).
    programmed: Mutex<Option<reconcile::Dataplane>>,
    pod_mtu: u32,
    firewall: Option<Box<dyn Firewall>>,
    policy: Policy,
}

/// Indexes of the links weftd depends on, as last seen.
#[derive(Debug, Default, Clone, Copy)]
struct WatchedLinks {
    underlay: Option<u32>,
    bridge: Option<u32>,
    vtep: Option<u32>,
}

impl NodeSetup {
    /// Whether a kernel notification concerns what weftd set up or depends on. Pod veths come
    /// and go all the time and the bridge changes as they do: those are not.
    fn is_affected_by(&self, change: monitor::Change) -> bool {
        let w = *self.watched.lock().unwrap();
        match change {
            monitor::Change::Overrun => true,
            monitor::Change::Link { index } | monitor::Change::Address { index } => {
                w.underlay == Some(index)
            }
            monitor::Change::LinkDeleted { index } => {
                [w.underlay, w.bridge, w.vtep].contains(&Some(index))
            }
        }
    }

    fn pod_cidrs(&self) -> Vec<IpNet> {
        self.pod_cidrs.borrow().clone()
    }

    /// The datastore says what this node's registration is now. New pod CIDRs take effect at
    /// the convergence that follows (new gateways and conflist, the old ones removed); while
    /// unregistered, everything stays as it is (pods keep working) and readiness says why.
    fn set_own(&self, shared: &Shared, own: OwnState) {
        match own {
            OwnState::Registered(cidrs) => {
                let old = self.pod_cidrs();
                if crate::datastore::send_if_changed(&self.pod_cidrs, cidrs.clone()) {
                    tracing::warn!(old = ?old, new = ?cidrs, "this node's pod CIDRs changed; moving the node to them");
                }
                *self.own_lost.lock().unwrap() = None;
                shared.update(|s| s.pod_cidrs = cidrs);
            }
            OwnState::Lost(why) => {
                tracing::warn!(reason = %why, "this node is not registered in the datastore");
                *self.own_lost.lock().unwrap() = Some(why);
            }
        }
    }

    /// Forwarding, VTEP, firewall rules and the CNI config; idempotent, run at start-up and on
    /// every resync (someone may have flushed the rules or deleted the VTEP).
    fn converge_node(&self, shared: &Shared) {
        let mut problems = Vec::new();
        if let Err(e) = self.enable_forwarding() {
            problems.push(e);
        }
        let mut nl = match Netlink::new() {
            Ok(nl) => nl,
            Err(e) => {
                shared.update(|s| s.problems = vec![format!("netlink: {e}")]);
                return;
            }
        };
        // The underlay may have been re-created (new ifindex) or re-addressed.
        let cfg = &self.cfg;
        match underlay::detect(&mut nl, cfg.underlay_interface.as_deref(), cfg.underlay_ip) {
            Ok(u) => {
                // Re-addressed: the datastore publishes the new address to the peers.
                let ip = u.ip();
                self.identity.send_if_modified(|me| {
                    let changed = me.underlay_ip != ip;
                    if changed {
                        tracing::warn!(old = %me.underlay_ip, new = %ip, "underlay address changed");
                        me.underlay_ip = ip;
                    }
                    changed
                });
                *self.underlay.lock().unwrap() = u;
            }
            Err(e) => problems.push(format!("underlay: {e}")),
        }
        let vtep = match self.ensure_vtep(&mut nl) {
            Ok(index) => index,
            Err(e) => {
                problems.push(format!("vtep: {e}"));
                None
            }
        };
        // The pod bridge with its gateway addresses, before any pod: the node's pod gateway
        // answers health probes from peers from the start.
        let pod_cidrs = self.pod_cidrs();
        let gateways = desired::bridge_addresses(&pod_cidrs);
        let bridge = match weft_netops::bridge::ensure(&mut nl, &cfg.bridge, &gateways) {
            Ok(bridge) => {
                if let Err(e) = remove_stale_addresses(&mut nl, bridge.index, &gateways) {
                    problems.push(format!("bridge {}: {e}", cfg.bridge));
                }
                Some(bridge.index)
            }
            Err(e) => {
                problems.push(format!("bridge {}: {e}", cfg.bridge));
                None
            }
        };
        *self.watched.lock().unwrap() = WatchedLinks {
            underlay: Some(self.underlay.lock().unwrap().ifindex),
            bridge,
            vtep,
        };
        let fw_status = self.firewall.as_ref().map(|fw| {
            let mut st = fw.status(&self.policy);
            if !st.as_ref().map(|s| s.in_place).unwrap_or(false) {
                if let Err(e) = fw.apply(&self.policy) {
                    problems.push(format!("firewall {}: {e}", fw.name()));
                } else {
                    tracing::info!(driver = fw.name(), "firewall rules applied");
                }
                st = fw.status(&self.policy);
            }
            match st {
                Ok(s) => FirewallStatus {
                    driver: fw.name().into(),
                    in_place: s.in_place,
                    problems: s.problems,
                    warnings: s.warnings,
                },
                Err(e) => FirewallStatus {
                    driver: fw.name().into(),
                    in_place: false,
                    problems: vec![e.to_string()],
                    warnings: vec![],
                },
            }
        });
        let rules_ok = fw_status.as_ref().is_none_or(|s| s.in_place);
        let mut cni_written = None;
        if rules_ok && problems.is_empty() {
            let conf = cniconf::conflist(cfg, &pod_cidrs, self.pod_mtu);
            match cniconf::write_if_changed(&cfg.cni_conf_dir, &conf) {
                Ok(wrote) => {
                    if wrote {
                        tracing::info!(path = %cniconf::path(&cfg.cni_conf_dir).display(), "CNI config written");
                    }
                    cni_written = Some(cniconf::path(&cfg.cni_conf_dir).display().to_string());
                }
                Err(e) => {
                    problems.push(format!("CNI config in {}: {e}", cfg.cni_conf_dir.display()))
                }
            }
        }
        self.update_ipam_usage(shared);
        for p in &problems {
            tracing::warn!(problem = %p, "node set-up");
        }
        let own_lost = self.own_lost.lock().unwrap().clone();
        let stranded = self.stranded_pods(&pod_cidrs);
        problems.extend(stranded.iter().map(|p| p.to_string()));
        let underlay = self.underlay.lock().unwrap().clone();
        shared.update(|s| {
            s.underlay = Some(UnderlayStatus {
                interface: underlay.ifname.clone(),
                address: underlay.addr,
                mtu: underlay.mtu,
            });
            s.ready =
                cni_written.is_some() && rules_ok && own_lost.is_none() && stranded.is_empty();
            s.waiting_for = if s.ready {
                None
            } else if let Some(why) = &own_lost {
                problems.push(why.clone());
                Some(format!("this node's registration in the datastore: {why}"))
            } else if !rules_ok {
                Some("firewall rules".into())
            } else if !stranded.is_empty() {
                Some(format!(
                    "{} pod(s) with addresses of a former pod CIDR to be deleted (see problems)",
                    stranded.len()
                ))
            } else {
                Some("node set-up (see problems)".into())
            };
            s.cni_config = cni_written;
            s.firewall = fw_status;
            s.problems = problems;
        });
    }

    /// Pods whose addresses (in the plugin's IPAM store) lie outside this node's pod CIDRs.
    fn stranded_pods(&self, pod_cidrs: &[IpNet]) -> Vec<desired::StrandedPod> {
        let Ok(list) = weft_ipam::Store::open(&self.cfg.ipam_data_dir, cniconf::NETWORK_NAME)
            .and_then(|store| store.list())
        else {
            return Vec::new();
        };
        let reservations: Vec<_> = list
            .into_iter()
            .map(|(ip, a)| (ip, a.container_id, a.ifname))
            .collect();
        desired::stranded_pods(&reservations, pod_cidrs)
    }

    /// weft_ipam_addresses{range, state}: read from the plugin's IPAM store.
    fn update_ipam_usage(&self, shared: &Shared) {
        let ranges: Vec<Vec<weft_ipam::RangeConfig>> = self
            .pod_cidrs()
            .iter()
            .map(|c| {
                vec![weft_ipam::RangeConfig {
                    subnet: c.trunc(),
                    range_start: None,
                    range_end: None,
                    gateway: None,
                }]
            })
            .collect();
        let Ok(sets) = weft_ipam::validate_range_sets(&ranges) else {
            return;
        };
        let usage = weft_ipam::Store::open(&self.cfg.ipam_data_dir, cniconf::NETWORK_NAME)
            .and_then(|store| store.usage(&sets));
        if let Ok(usage) = usage {
            for u in usage {
                for (state, n) in [("used", u.used), ("free", u.total - u.used)] {
                    shared
                        .metrics
                        .ipam_addresses
                        .get_or_create(&crate::metrics::RangeLabel {
                            range: u.subnet.to_string(),
                            state: state.into(),
                        })
                        .set(n as i64);
                }
            }
        }
    }

    /// IPv4 forwarding always (pods reach the world through the node), IPv6 with an IPv6 pod
    /// CIDR.
    fn enable_forwarding(&self) -> Result<(), String> {
        let ipv6 = self.pod_cidrs().iter().any(|c| c.addr().is_ipv6());
        weft_netops::sysctl::enable_forwarding(true, ipv6)
            .map_err(|e| format!("enable forwarding: {e}"))
    }

    fn ensure_vtep(&self, nl: &mut Netlink) -> Result<Option<u32>> {
        let Some(mac) = self.vtep_mac else {
            return Ok(None);
        };
        let underlay = self.underlay.lock().unwrap().clone();
        vxlan::ensure(
            nl,
            &vxlan::VtepSpec {
                vni: self.cfg.vxlan_vni,
                port: self.cfg.vxlan_port,
                mac,
                mtu: underlay.mtu - vxlan::VXLAN_OVERHEAD,
                underlay: &underlay,
                pod_cidrs: &self.pod_cidrs(),
            },
        )
        .map(Some)
    }

    /// Programs the peers. `full`: against the kernel as read now (the resync, which repairs
    /// what was changed behind weft's back); otherwise against the record of the last apply,
    /// so that a datastore event costs its change, not a dump of every route.
    fn reconcile_peers(&self, shared: &Shared, peers: &[NodeRecord], full: bool) {
        let started = Instant::now();
        let mut nl = match Netlink::new() {
            Ok(nl) => nl,
            Err(e) => {
                tracing::error!(error = %e, "netlink");
                return;
            }
        };
        let vtep_index = match self.vtep_mac {
            Some(_) => nl
                .get_link_by_name(&vxlan::device_name(self.cfg.vxlan_vni))
                .ok()
                .flatten()
                .map(|l| l.index),
            None => None,
        };
        let underlay = self.underlay.lock().unwrap().clone();
        let local = LocalView {
            backend: self.cfg.backend,
            underlay: &underlay,
            vtep_index,
        };
        let plans: Vec<_> = peers
            .iter()
            .map(|p| backend::plan_peer(&local, p))
            .collect();
        let mut programmed = self.programmed.lock().unwrap();
        if full || programmed.is_none() {
            match reconcile::Dataplane::read(&mut nl, vtep_index) {
                Ok(now) => *programmed = Some(now),
                Err(e) => {
                    *programmed = None;
                    tracing::warn!(error = %e, "reconcile: cannot read the kernel");
                    shared.metrics.reconcile_errors.inc();
                    return;
                }
            }
        }
        let report = reconcile::reconcile(&mut nl, &plans, programmed.as_mut().expect("read"));
        drop(programmed);
        let took = started.elapsed();

        let m = &shared.metrics;
        m.reconcile_duration.observe(took.as_secs_f64());
        m.reconcile_errors.inc_by(report.errors.len() as u64);
        m.reconcile_changes.inc_by(report.changes as u64);
        for path in [PathKind::HostGw, PathKind::Vxlan] {
            let n = plans.iter().filter(|p| p.path == path).count();
            m.peers
                .get_or_create(&PathLabel {
                    path: path.as_str().into(),
                })
                .set(n as i64);
        }
        for (kind, desired, programmed) in [
            ("route", report.desired.routes, report.programmed.routes),
            (
                "neighbour",
                report.desired.neighbours,
                report.programmed.neighbours,
            ),
            ("fdb", report.desired.fdb, report.programmed.fdb),
        ] {
            m.kernel_objects
                .get_or_create(&ObjectLabel {
                    kind: kind.into(),
                    state: "desired".into(),
                })
                .set(desired as i64);
            m.kernel_objects
                .get_or_create(&ObjectLabel {
                    kind: kind.into(),
                    state: "programmed".into(),
                })
                .set(programmed as i64);
        }
        if report.changes > 0 || !report.errors.is_empty() {
            tracing::info!(
                peers = peers.len(),
                changes = report.changes,
                stale_removed = report.stale_removed,
                errors = report.errors.len(),
                took_ms = took.as_millis() as u64,
                "reconciled"
            );
            for e in report.errors.iter().take(5) {
                tracing::warn!(error = %e, "reconcile");
            }
        }
        shared.update(|s| s.last_reconcile = Some(report));
    }
}

/// Removes the addresses on `index` that are not in `want` (weftd owns every address on the
/// bridge and the VTEP; link-local stays).
pub(crate) fn remove_stale_addresses(nl: &mut Netlink, index: u32, want: &[IpNet]) -> Result<()> {
    let have: Vec<IpNet> = nl
        .list_addresses(Some(index))
        .map_err(kernel(format!("list addresses of link {index}")))?
        .into_iter()
        .map(|(_, a)| a)
        .collect();
    for stale in desired::address_changes(&have, want).remove {
        tracing::info!(address = %stale, ifindex = index, "removing an address of a former pod CIDR");
        match nl.del_address(index, stale) {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(kernel(format!("remove address {stale}"))(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_names_the_datastore_reason() {
        let mut s = Status {
            waiting_for: Some("datastore kubernetes: this node's pod CIDR".into()),
            datastore_error: Some("node n1 has no spec.podCIDRs yet".into()),
            ..Default::default()
        };
        assert_eq!(
            s.not_ready_reason().unwrap(),
            "waiting for datastore kubernetes: this node's pod CIDR: node n1 has no spec.podCIDRs yet"
        );
        s.datastore_error =
            Some("get node n1: nodes \"n1\" is forbidden (HTTP 403 Forbidden)".into());
        assert!(s
            .not_ready_reason()
            .unwrap()
            .ends_with("(HTTP 403 Forbidden)"));
        s.datastore_connected = true;
        s.datastore_error = None;
        assert_eq!(
            s.not_ready_reason().unwrap(),
            "waiting for datastore kubernetes: this node's pod CIDR"
        );
        s.ready = true;
        assert_eq!(s.not_ready_reason(), None);
    }
}
