//! weft-bench: weft's benchmarks. Each suite runs its comparison in one process, interleaved,
//! and prints a table (and JSON with --json). Figures are printed, never asserted.

mod plugin;
mod stats;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

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
        #[arg(long, default_value_t = 200)]
        ops: usize,
        #[arg(long, default_value_t = 4)]
        rounds: usize,
        #[arg(long, value_delimiter = ',', default_value = "20,32")]
        parallel: Vec<usize>,
    },
}

fn main() {
    let cli = Cli::parse();
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
    };
    if let Some(path) = cli.json {
        std::fs::write(&path, serde_json::to_vec_pretty(&json).unwrap()).expect("write json");
    }
}
