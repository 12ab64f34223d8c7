//! weft-lab: a weft cluster of network namespaces on this machine.
//!
//!   weft-lab demo     build, add pods, print the connectivity matrix, tear down
//!   weft-lab check    the same, exit 1 if anything is not as expected
//!   weft-lab up       build and wait for Ctrl-C
//!   weft-lab down --id ID   remove a lab left by --keep (or by a crash)
//!   weft-lab list     labs present on this machine
//!   weft-lab kubectl --id ID -- ARGS...          kubectl against a kube lab
//!   weft-lab exec --id ID NAMESPACE/POD -- CMD... a command of this machine in a pod's netns

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use weft_lab::{matrix, registry, Cluster, DatastoreKind, LabConfig};

#[derive(Parser)]
#[command(
    name = "weft-lab",
    about = "A weft cluster of network namespaces on this machine"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build a lab, add pods, print the connectivity matrix, tear down.
    Demo(LabArgs),
    /// Like demo, but exit 1 when any probe is not as expected.
    Check(LabArgs),
    /// Build a lab (with pods) and keep it until Ctrl-C / SIGTERM.
    Up(LabArgs),
    /// Remove a lab: kill its recorded processes, delete its netns and dir.
    Down {
        #[arg(long)]
        id: String,
    },
    /// List the labs present on this machine.
    List,
    /// Run the real kubectl (admin) against a lab started with --datastore kubernetes.
    Kubectl {
        #[arg(long)]
        id: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run a command of this machine inside a Kubernetes pod's network namespace.
    Exec {
        #[arg(long)]
        id: String,
        /// NAMESPACE/POD
        pod: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        cmd: Vec<String>,
    },
    /// Follow a packet through a running lab, hop by hop, on every node it crosses.
    Trace {
        #[arg(long)]
        id: String,
        /// Pod name (n1-p1), node name (n1), `world`, or an address.
        src: String,
        dst: String,
    },
}

#[derive(Args, Clone)]
struct LabArgs {
    /// Nodes on the first segment.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Do not add the far node (second segment, behind the router).
    #[arg(long)]
    no_far_node: bool,
    #[arg(long, default_value_t = 2)]
    pods_per_node: usize,
    /// host-gw, vxlan or auto.
    #[arg(long, default_value = "auto")]
    backend: String,
    /// nftables, iptables or auto.
    #[arg(long, default_value = "auto")]
    firewall: String,
    /// etcd, static, kubernetes (a real control plane and kubelets, weft by its DaemonSet,
    /// pods made with kubectl) or none (topology only, no agents, no pods).
    #[arg(long, default_value = "etcd")]
    datastore: DatastoreKind,
    /// Leave the lab running; print its id and netns names.
    #[arg(long)]
    keep: bool,
    /// Dir holding weft and weftd (default: next to this binary, or $WEFT_BIN_DIR).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Seconds to wait for each agent's /readyz.
    #[arg(long, default_value_t = 60)]
    ready_timeout: u64,
}

impl LabArgs {
    fn config(&self) -> LabConfig {
        LabConfig {
            nodes: self.nodes,
            far_node: !self.no_far_node,
            datastore: self.datastore,
            backend: self.backend.clone(),
            firewall: self.firewall.clone(),
            bin_dir: self.bin_dir.clone(),
            keep: self.keep,
            ready_timeout: Duration::from_secs(self.ready_timeout),
            ..LabConfig::default()
        }
    }
}

/// Ctrl-C / SIGTERM at any moment (also mid-build): remove every lab of this process, exit.
fn install_signal_handler() -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            eprintln!("weft-lab: signal {sig}, tearing down");
            let ids = registry::shutdown_all();
            eprintln!(
                "weft-lab: removed {}",
                if ids.is_empty() {
                    "nothing".into()
                } else {
                    ids.join(", ")
                }
            );
            std::process::exit(128 + sig);
        }
    });
    Ok(())
}

fn build(args: &LabArgs) -> Result<Cluster, String> {
    if args.datastore == DatastoreKind::None && args.pods_per_node > 0 {
        eprintln!("weft-lab: --datastore none starts no agents: no pods");
    }
    let mut c = Cluster::build(args.config()).map_err(|e| format!("building the lab: {e}"))?;
    eprintln!(
        "weft-lab: lab {} built ({} nodes), files in {}",
        c.id,
        c.nodes.len(),
        c.dir.display()
    );
    if args.datastore == DatastoreKind::None {
        return Ok(c);
    }
    c.start_agents()
        .map_err(|e| format!("starting the agents: {e}"))?;
    eprintln!(
        "weft-lab: {} agents ready ({} datastore)",
        c.nodes.len(),
        args.datastore.as_str()
    );
    let names: Vec<String> = c.nodes.iter().map(|n| n.name.clone()).collect();
    for node in &names {
        for i in 1..=args.pods_per_node {
            let name = format!("{node}-p{i}");
            let pod = if args.datastore == DatastoreKind::Kubernetes {
                c.add_kube_pod(node, &name)
            } else {
                c.add_pod(node, &name)
            }
            .map_err(|e| format!("adding a pod: {e}"))?;
            let ips: Vec<String> = pod.ips.iter().map(|ip| ip.to_string()).collect();
            eprintln!("weft-lab: pod {} on {node}: {}", pod.name, ips.join(", "));
        }
    }
    Ok(c)
}

fn finish(c: Cluster, keep: bool) {
    if keep {
        let kept = c.keep();
        println!(
            "lab {} kept; remove it with: weft-lab down --id {}",
            kept.id, kept.id
        );
        println!("files: {}", kept.dir.display());
        for ns in &kept.netns {
            println!("netns {ns}");
        }
    } else {
        drop(c);
    }
}

fn demo(args: &LabArgs, strict: bool) -> ExitCode {
    let c = match build(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("weft-lab: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.datastore == DatastoreKind::Kubernetes {
        // The seeds' scenario as a user sees it.
        for a in [
            &["get", "nodes", "-o", "wide"][..],
            &["get", "pods", "-A", "-o", "wide"][..],
        ] {
            println!("$ kubectl {}", a.join(" "));
            match c.kubectl(a) {
                Ok(out) => print!("{out}"),
                Err(e) => eprintln!("weft-lab: {e}"),
            }
        }
    }
    let rows = match c.connectivity_matrix() {
        Ok(rows) => rows,
        Err(e) => {
            eprintln!("weft-lab: probing: {e}");
            finish(c, args.keep);
            return ExitCode::FAILURE;
        }
    };
    print!("{}", matrix::table(&rows));
    let failures = matrix::failures(&rows);
    if failures.is_empty() {
        println!("all {} probes as expected", rows.len());
    } else {
        println!(
            "{} of {} probes not as expected:",
            failures.len(),
            rows.len()
        );
        for f in &failures {
            println!("  {f}");
        }
    }
    finish(c, args.keep);
    if strict && !failures.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn up(args: &LabArgs) -> ExitCode {
    let c = match build(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("weft-lab: {e}");
            return ExitCode::FAILURE;
        }
    };
    for ns in c.netns_names() {
        println!("netns {ns}");
    }
    println!("lab {} is up; Ctrl-C to tear down", c.id);
    if args.keep {
        finish(c, true);
        return ExitCode::SUCCESS;
    }
    // The signal handler tears the lab down and exits.
    loop {
        std::thread::park();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = install_signal_handler() {
        eprintln!("weft-lab: cannot install the signal handler: {e}");
        return ExitCode::FAILURE;
    }
    match cli.cmd {
        Cmd::Demo(a) => demo(&a, false),
        Cmd::Check(a) => demo(&a, true),
        Cmd::Up(a) => up(&a),
        Cmd::Down { id } => match registry::down(&id) {
            Ok(()) => {
                println!("lab {id} removed");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("weft-lab: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Trace { id, src, dst } => {
            match weft_lab::trace::bin_dir()
                .and_then(|b| weft_lab::trace::trace(&id, &src, &dst, &b))
            {
                Ok((text, whole)) => {
                    print!("{text}");
                    if whole {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("weft-lab: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Kubectl { id, args } => {
            let status = weft_lab::kube::lab::lab_kubectl(&id)
                .map_err(|e| e.to_string())
                .and_then(|mut cmd| cmd.args(&args).status().map_err(|e| e.to_string()));
            match status {
                Ok(s) => ExitCode::from(s.code().unwrap_or(1).clamp(0, 255) as u8),
                Err(e) => {
                    eprintln!("weft-lab: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Exec { id, pod, cmd } => {
            let Some((ns, name)) = pod.split_once('/') else {
                eprintln!("weft-lab: {pod:?}: expected NAMESPACE/POD");
                return ExitCode::FAILURE;
            };
            match weft_lab::kube::lab::exec_in_pod(&id, ns, name, &cmd[0], &cmd[1..]) {
                Ok(s) => ExitCode::from(s.code().unwrap_or(1).clamp(0, 255) as u8),
                Err(e) => {
                    eprintln!("weft-lab: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::List => {
            for id in registry::list_labs() {
                let ns = registry::netns_of(&id);
                println!(
                    "{id}\t{} netns\t{}",
                    ns.len(),
                    registry::lab_dir(&id).display()
                );
            }
            ExitCode::SUCCESS
        }
    }
}
