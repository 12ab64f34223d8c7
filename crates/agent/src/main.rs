//! weftd: the weft node agent and its operator commands.

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::process::ExitCode;
use weft_agent::config::{LogFormat, RunConfig};
use weft_agent::{agent, cli};

#[derive(Parser)]
#[command(
    name = "weftd",
    version,
    about = "weft node agent: pod networking across nodes"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent on this node.
    Run(Box<RunConfig>),
    /// Write the cluster network config into etcd (once per cluster, before the agents).
    InitEtcd(cli::InitEtcd),
    /// Show this node's network state as the running agent sees it.
    Status {
        /// Where the agent serves /status.
        #[arg(long, env = "WEFT_LISTEN", default_value = "127.0.0.1:9946")]
        listen: SocketAddr,
        #[arg(long, value_parser = ["table", "json"], default_value = "table")]
        output: String,
    },
    /// Probe every peer node through the pod network (its pod gateway's health echo).
    Check(cli::CheckArgs),
    /// Follow a packet from SRC to DST through this node's kernel, hop by hop.
    Trace(cli::TraceArgs),
    /// Remove everything weft made on this node (routes, VXLAN device, rules, bridge and pod
    /// veths, CNI config, state). Pods on the node lose their network.
    Cleanup(cli::Cleanup),
    /// Install the weft CNI plugin binary into the CNI bin dir (DaemonSet init container).
    Install(cli::Install),
    /// Remove the plugin binary, then everything `cleanup` removes.
    Uninstall {
        #[command(flatten)]
        install: cli::Install,
        #[command(flatten)]
        cleanup: cli::Cleanup,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(weft_agent::DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Run(cfg) => {
            // Reconciles run on whichever blocking thread is free; glibc's default of one malloc
            // arena per thread let peak RSS grow from ~22 to ~36 MiB at 5,000 peers. Two arenas
            // keep it under 30 MiB (BENCHMARKS.md).
            // SAFETY: mallopt only tunes the allocator; called before any other thread exists.
            unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
            init_logging(cfg.log_format);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime");
            // The whole chain of causes: "what: why: deeper why".
            rt.block_on(agent::run(*cfg))
                .map_err(|e| weft_agent::error::chain(&e))
        }
        Cmd::InitEtcd(args) => {
            init_logging(LogFormat::Text);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(cli::init_etcd(args))
        }
        Cmd::Status { listen, output } => cli::status(listen, output == "json"),
        Cmd::Trace(args) => cli::trace(&args),
        Cmd::Check(args) => cli::check(&args),
        Cmd::Cleanup(args) => cli::cleanup(&args),
        Cmd::Install(args) => cli::install(&args),
        Cmd::Uninstall { install, cleanup } => {
            cli::uninstall(&install).and_then(|_| cli::cleanup(&cleanup))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weftd: {e}");
            ExitCode::FAILURE
        }
    }
}
