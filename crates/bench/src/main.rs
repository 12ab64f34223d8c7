//! weft-bench: weft's benchmarks. Each suite runs its comparison in one process, interleaved,
//! and prints a table (and JSON with --json). Figures are printed, never asserted.

mod churn;
mod control_plane;
mod control_plane_kube;
mod datapath;
mod plugin;
mod policy;
mod policy_kube;
mod stats;
mod util;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "weft-bench")]
struct Cli {
    /// Also write the figures as JSON here.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// Directory holding the weft binaries (default: next to weft-bench).
    #[arg(long, global = true)]
    bin_dir: Option<PathBuf>,
    #[command(subcommand)]
    suite: Suite,
}

#[derive(Subcommand)]
enum Suite {
    /// ADD/DEL latency: weft vs reference bridge+host-local, ipMasq off and on.
    Plugin {
        /// Sequential ADDs (and DELs) per implementation, split over the rounds.
        #[arg(long, default_value_t = 300)]
        ops: usize,
        #[arg(long, default_value_t = 6)]
        rounds: usize,
        /// Degrees of parallelism (wall time of N concurrent ADDs, then DELs).
        #[arg(long, value_delimiter = ',', default_value = "20,32")]
        parallel: Vec<usize>,
    },
    /// Sustained ADD+DEL cycles of the weft plugin on one node, then a leak check.
    Churn {
        /// Seconds to run.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Concurrent workers (each its own pod netns).
        #[arg(long, default_value_t = 8)]
        workers: usize,
        /// Run with ipMasq on (and check its set elements).
        #[arg(long)]
        ip_masq: bool,
    },
    /// iperf3 single TCP stream: bare veth, same-node weft and bridge, cross-node host-gw
    /// and vxlan.
    Datapath {
        #[arg(long, default_value_t = 7)]
        rounds: usize,
        /// Seconds per iperf3 run.
        #[arg(long, default_value_t = 5)]
        seconds: u32,
        /// Only these paths: veth, weft, bridge, host-gw, vxlan, and vxlan-jumbo (underlay MTU
        /// 9000, not in the default set); comma-separated.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// weftd with N peers (synthetic etcd records, or Node objects in a real kube-apiserver):
    /// time to program, one new peer, peak RSS; with kubernetes also deletion bursts,
    /// unrelated updates and CPU.
    ControlPlane {
        #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
        peers: Vec<usize>,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// etcd, or kubernetes (needs the lab's Kubernetes binaries: scripts/kube-build.sh).
        #[arg(long, default_value = "etcd")]
        datastore: String,
        /// Backend (kubernetes datastore; the etcd suite always uses vxlan).
        #[arg(long, default_value = "host-gw")]
        backend: String,
        /// Nodes deleted at once, and Nodes given an unrelated annotation (kubernetes).
        #[arg(long, default_value_t = 100)]
        burst: usize,
        /// Seconds the agent idles before its RSS is read (kubernetes).
        #[arg(long, default_value_t = 30)]
        idle_secs: u64,
        /// New peers added one by one per run (latency to their route).
        #[arg(long, default_value_t = 20)]
        new_peers: usize,
        /// Keep the agents' logs in this directory.
        #[arg(long)]
        log_dir: Option<PathBuf>,
        /// Extra arguments for `weftd run` (after --).
        #[arg(last = true)]
        agent_args: Vec<String>,
    },
    /// NetworkPolicy: data path with 0 vs 1,000 policies; weftd with 10,000 Pods and 1,000
    /// policies in a real kube-apiserver; apply -> enforced on every node of the Kubernetes lab.
    Policy {
        /// Only these parts: datapath, scale, latency (comma-separated; default all).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Interleaved rounds (datapath), policy create/delete rounds (latency).
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        /// Seconds per iperf3 and connection-rate run (datapath).
        #[arg(long, default_value_t = 3)]
        seconds: u32,
        /// Pods besides the probes (datapath: remote pods in the sets; scale: Pods in the API).
        #[arg(long, default_value_t = 10_000)]
        pods: usize,
        #[arg(long, default_value_t = 1_000)]
        policies: usize,
    },
}

fn fail(suite: &str, e: String) -> ! {
    eprintln!("weft-bench {suite}: {e}");
    std::process::exit(1);
}

/// Ctrl-C / SIGTERM: remove every lab and every netns this process made, then exit. (Daemons
/// die with us: they are spawned with PR_SET_PDEATHSIG.)
fn install_signal_handler() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("weft-bench: cannot install the signal handler: {e}");
            return;
        }
    };
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            eprintln!("weft-bench: signal {sig}, cleaning up");
            weft_lab::registry::shutdown_all();
            let mine = format!("-{}-", std::process::id());
            for name in weft_netops::netns::list_named() {
                if name.starts_with("wb-") && name.contains(&mine) {
                    let _ = weft_netops::netns::delete_named(&name);
                }
            }
            std::process::exit(130);
        }
    });
}

fn main() {
    let cli = Cli::parse();
    install_signal_handler();
    let bin_dir = cli.bin_dir.unwrap_or_else(|| {
        std::env::current_exe()
            .expect("current exe")
            .parent()
            .expect("exe dir")
            .to_path_buf()
    });
    let json = match cli.suite {
        Suite::Plugin {
            ops,
            rounds,
            parallel,
        } => {
            let opts = plugin::Options {
                ops,
                rounds: rounds.max(1),
                parallel,
                bin_dir,
            };
            let rows = plugin::run(&opts);
            plugin::print(&rows, &opts);
            serde_json::json!({ "suite": "plugin", "rows": rows })
        }
        Suite::Churn {
            seconds,
            workers,
            ip_masq,
        } => {
            let opts = churn::Options {
                duration: Duration::from_secs(seconds),
                workers: workers.max(1),
                ip_masq,
                bin_dir,
            };
            let report = churn::run(&opts).unwrap_or_else(|e| fail("churn", e));
            churn::print(&report);
            serde_json::json!({ "suite": "churn", "report": report })
        }
        Suite::Datapath {
            rounds,
            seconds,
            only,
        } => {
            let opts = datapath::Options {
                rounds: rounds.max(1),
                seconds: seconds.max(1),
                bin_dir,
                only,
            };
            let report = datapath::run(&opts).unwrap_or_else(|e| fail("datapath", e));
            datapath::print(&report, &opts);
            serde_json::json!({ "suite": "datapath", "report": report })
        }
        Suite::ControlPlane {
            peers,
            rounds,
            datastore,
            backend,
            burst,
            idle_secs,
            new_peers,
            log_dir: _,
            agent_args,
        } if datastore == "kubernetes" => {
            let opts = control_plane_kube::Options {
                sizes: peers,
                rounds: rounds.max(1),
                new_nodes: new_peers,
                burst,
                idle: Duration::from_secs(idle_secs),
                backend,
                bin_dir,
                agent_args,
            };
            let report =
                control_plane_kube::run(&opts).unwrap_or_else(|e| fail("control-plane", e));
            control_plane_kube::print(&report, &opts);
            serde_json::json!({ "suite": "control-plane-kubernetes", "report": report })
        }
        Suite::Policy {
            only,
            rounds,
            seconds,
            pods,
            policies,
        } => {
            let opts = policy::Options {
                parts: only,
                rounds: rounds.max(1),
                seconds: seconds.max(1),
                pods,
                policies: policies.max(1),
                bin_dir,
            };
            let report = policy::run(&opts).unwrap_or_else(|e| fail("policy", e));
            policy::print(&report, &opts);
            serde_json::json!({ "suite": "policy", "report": report })
        }
        Suite::ControlPlane {
            peers,
            rounds,
            new_peers,
            log_dir,
            agent_args,
            ..
        } => {
            let opts = control_plane::Options {
                sizes: peers,
                rounds: rounds.max(1),
                new_peers,
                bin_dir,
                agent_args,
                log_dir,
            };
            let report = control_plane::run(&opts).unwrap_or_else(|e| fail("control-plane", e));
            control_plane::print(&report, &opts);
            serde_json::json!({ "suite": "control-plane", "report": report })
        }
    };
    if let Some(path) = cli.json {
        std::fs::write(&path, serde_json::to_vec_pretty(&json).unwrap()).expect("write json");
    }
}
