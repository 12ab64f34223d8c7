//! The weft CNI plugin as a library: the network configuration parser and the verbs. The
//! binary (`src/main.rs`) reads the environment and stdin and calls these.

mod add;
mod check;
pub mod config;
pub mod dataplane;
mod del;
pub mod events;
mod gc;
pub mod ipam;
mod masq;
mod policy;

use weft_cni::error::CniError;
use weft_cni::{Command, Env, Version};

/// ADD, DEL, CHECK or GC for a parsed configuration; ADD's result in `version`'s shape.
pub fn run_command(
    conf: &config::Config,
    env: &Env,
    version: Version,
) -> Result<Option<serde_json::Value>, CniError> {
    match env.command {
        Command::Add => add::run(conf, env).map(|r| Some(r.to_json(version))),
        Command::Del => del::run(conf, env).map(|_| None),
        Command::Check => check::run(conf, env).map(|_| None),
        Command::Gc => gc::run(conf).map(|_| None),
        Command::Status | Command::Version => {
            unreachable!("STATUS and VERSION are answered by the binary")
        }
    }
}
