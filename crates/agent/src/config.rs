//! `weftd run` options. Every option is a flag (and an environment variable `WEFT_...`, handy
//! in a DaemonSet); the README lists them all.

use clap::{Args, ValueEnum};
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DatastoreKind {
    Kubernetes,
    Etcd,
    Static,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// Routes `podCIDR via nodeIP`: nodes must share an L2 segment.
    HostGw,
    /// A VXLAN overlay: works across routed underlays.
    Vxlan,
    /// host-gw to peers on this node's underlay subnet, vxlan to the others.
    Auto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FirewallKind {
    Auto,
    Nftables,
    Iptables,
    IptablesNft,
    IptablesLegacy,
    /// Install no rules (someone else forwards and masquerades).
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m, h)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// Where etcd is (the `etcd` datastore, and `weftd init-etcd`).
#[derive(Debug, Clone, Args)]
pub struct EtcdArgs {
    /// etcd client URLs, comma-separated.
    #[arg(
        long,
        env = "WEFT_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub etcd_endpoints: Vec<String>,
    #[arg(long, env = "WEFT_ETCD_PREFIX", default_value = "/weft/network")]
    pub etcd_prefix: String,
}

#[derive(Debug, Clone, Args)]
pub struct RunConfig {
    /// This node's name (Kubernetes Node name; key in etcd/static datastores).
    #[arg(long, env = "WEFT_NODE_NAME")]
    pub node_name: String,

    #[arg(long, env = "WEFT_DATASTORE", value_enum, default_value = "kubernetes")]
    pub datastore: DatastoreKind,

    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// TTL of this node's subnet lease; it is kept alive while weftd runs.
    #[arg(long, env = "WEFT_ETCD_LEASE_TTL", value_parser = parse_duration, default_value = "60s")]
    pub etcd_lease_ttl: Duration,

    /// Node list for the static datastore.
    #[arg(long, env = "WEFT_STATIC_FILE")]
    pub static_file: Option<PathBuf>,

    /// Path to a kubeconfig (default: in-cluster service account, then ~/.kube/config).
    #[arg(long, env = "WEFT_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The cluster's pod network(s) (kubernetes datastore: what kube-controller-manager's
    /// --cluster-cidr is). etcd and static datastores carry it themselves.
    #[arg(
        long = "cluster-cidr",
        env = "WEFT_CLUSTER_CIDRS",
        value_delimiter = ','
    )]
    pub cluster_cidrs: Vec<IpNet>,
    /// Enforce Kubernetes NetworkPolicy (table `inet weft-policy`). Default: on with the
    /// kubernetes datastore; etcd and static have no policy objects, so `true` there is an
    /// error.
    #[arg(long, env = "WEFT_NETWORK_POLICY")]
    pub network_policy: Option<bool>,
    /// A policy that starts denying also cuts connections already established (only replies
    /// and related packets skip the policies). Off: established connections live on until
    /// conntrack forgets them, as in most implementations.
    #[arg(long, env = "WEFT_POLICY_CUTS_ESTABLISHED")]
    pub policy_cuts_established: bool,
    /// Log each denied new connection (source and destination pod, protocol/port, the
    /// policies that isolate): NFLOG group 87 read by weftd, rate-limited in the kernel and
    /// in weftd. Off by default.
    #[arg(long, env = "WEFT_POLICY_LOG_DENIED")]
    pub policy_log_denied: bool,
    /// Where the plugin tells weftd about a new pod at CNI ADD (NetworkPolicy), so that the
    /// pod is in the table before ADD returns.
    #[arg(
        long,
        env = "WEFT_POLICY_SOCKET",
        default_value = "/run/weft/policy/weft.sock"
    )]
    pub policy_socket: PathBuf,

    #[arg(long, env = "WEFT_BACKEND", value_enum, default_value = "auto")]
    pub backend: BackendKind,
    #[arg(long, env = "WEFT_VXLAN_VNI", default_value_t = 1)]
    pub vxlan_vni: u32,
    #[arg(long, env = "WEFT_VXLAN_PORT", default_value_t = 4789)]
    pub vxlan_port: u16,

    /// Underlay interface (default: the interface of the default route).
    #[arg(long, env = "WEFT_UNDERLAY_INTERFACE")]
    pub underlay_interface: Option<String>,
    /// Underlay address to publish (default: the interface's first IPv4 address).
    #[arg(long, env = "WEFT_UNDERLAY_IP")]
    pub underlay_ip: Option<IpAddr>,
    /// Pod MTU (default: underlay MTU, minus 50 when VXLAN may carry pod traffic).
    #[arg(long, env = "WEFT_MTU")]
    pub mtu: Option<u32>,

    #[arg(long, env = "WEFT_FIREWALL", value_enum, default_value = "auto")]
    pub firewall: FirewallKind,
    /// Do not masquerade pod traffic leaving the cluster network.
    #[arg(long, env = "WEFT_NO_MASQUERADE")]
    pub no_masquerade: bool,

    #[arg(long, env = "WEFT_BRIDGE", default_value = weft_netops::bridge::DEFAULT_BRIDGE)]
    pub bridge: String,
    #[arg(long, env = "WEFT_CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    #[arg(long, env = "WEFT_CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    /// cniVersion of the written conflist (1.0.0: what the reference plugins of most distros speak).
    #[arg(long, env = "WEFT_CNI_VERSION", default_value = "1.0.0")]
    pub cni_version: String,
    #[arg(long, env = "WEFT_IPAM_DATA_DIR", default_value = weft_ipam::DEFAULT_DATA_DIR)]
    pub ipam_data_dir: PathBuf,
    /// Where the plugin drops one event file per call for the CNI metrics (tmpfs is best).
    #[arg(
        long,
        env = "WEFT_PLUGIN_EVENTS_DIR",
        default_value = "/run/weft/plugin-events"
    )]
    pub plugin_events_dir: PathBuf,
    /// weftd's own state (VTEP MAC, last etcd subnet).
    #[arg(long, env = "WEFT_STATE_DIR", default_value = "/var/lib/weft")]
    pub state_dir: PathBuf,

    /// Address of /healthz, /readyz, /metrics and /status.
    #[arg(long, env = "WEFT_LISTEN", default_value = "127.0.0.1:9946")]
    pub listen: SocketAddr,
    /// TCP port of the health echo on this node's pod gateway address (what `weftd check
    /// --peers` on other nodes probes through the pod network); 0 turns it off.
    #[arg(long, env = "WEFT_HEALTH_PORT", default_value_t = 9947)]
    pub health_port: u16,
    /// Full resync period: compare desired with the kernel's actual state.
    #[arg(long, env = "WEFT_RESYNC_INTERVAL", value_parser = parse_duration, default_value = "10s")]
    pub resync_interval: Duration,
    #[arg(long, env = "WEFT_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl RunConfig {
    /// Whether NetworkPolicy is enforced, or why the configuration cannot work.
    pub fn enforces_network_policy(&self) -> Result<bool, String> {
        match (self.network_policy, self.datastore) {
            (Some(true), DatastoreKind::Etcd | DatastoreKind::Static) => Err(format!(
                "--network-policy needs --datastore kubernetes: the {:?} datastore has no \
                 NetworkPolicy objects",
                self.datastore
            )
            .to_lowercase()),
            (Some(on), _) => Ok(on),
            (None, d) => Ok(d == DatastoreKind::Kubernetes),
        }
    }

    /// Every node path weftd shares with the plugin (which runs on the node, exec'd by the
    /// runtime) or with its own next run. In a container each must be the node's directory,
    /// mounted at the same path: the conflist names them to the plugin as they are here.
    /// deploy/weft.yaml's volumes are checked against this list (tests/deploy.rs).
    pub fn shared_node_paths(&self) -> [(&'static str, &Path); 5] {
        [
            (
                "NetworkPolicy socket the plugin calls at ADD",
                self.policy_socket.parent().unwrap_or(Path::new("/")),
            ),
            (
                "CNI config weftd writes for the runtime",
                &self.cni_conf_dir,
            ),
            (
                "IPAM store the plugin writes, weftd reads",
                &self.ipam_data_dir,
            ),
            (
                "plugin events weftd turns into CNI metrics",
                &self.plugin_events_dir,
            ),
            ("weftd's own state across restarts", &self.state_dir),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_policy_needs_the_kubernetes_datastore() {
        #[derive(clap::Parser)]
        struct W {
            #[command(flatten)]
            run: RunConfig,
        }
        let parse = |args: &[&str]| {
            let mut argv = vec!["weftd", "--node-name", "n"];
            argv.extend_from_slice(args);
            <W as clap::Parser>::try_parse_from(argv).unwrap().run
        };
        assert_eq!(parse(&[]).enforces_network_policy(), Ok(true));
        assert_eq!(
            parse(&["--network-policy", "false"]).enforces_network_policy(),
            Ok(false)
        );
        assert_eq!(
            parse(&["--datastore", "etcd"]).enforces_network_policy(),
            Ok(false)
        );
        let err = parse(&["--datastore", "etcd", "--network-policy", "true"])
            .enforces_network_policy()
            .unwrap_err();
        assert!(err.contains("needs --datastore kubernetes"), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("3x").is_err());
    }
}
