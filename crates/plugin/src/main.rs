//! `weft`: the CNI plugin. A runtime execs it with CNI_* variables and the network
//! configuration on stdin; it answers on stdout (a result, or the spec's error JSON with exit
//! code 1). Nothing else is ever written to stdout.
//!
//! The library half (`weft_plugin`) holds everything but the entry point, so that weftd's
//! tests check the conflist it writes with the plugin's own parser and the fuzz targets fuzz
//! the shipped code.

use weft_plugin::{config, events, ipam, run_command};

use std::io::{Read, Write};
use weft_cni::error::{self, CniError};
use weft_cni::{version, Command, Env, Version};

/// Runs one invocation. Returns what to print on success (possibly nothing), or the error and
/// the version to render it in.
fn run(
    metrics_dir: &mut Option<std::path::PathBuf>,
) -> Result<Option<serde_json::Value>, (CniError, String)> {
    let latest = Version::LATEST.to_string();
    let env = Env::from_lookup(|k| std::env::var(k).ok()).map_err(|e| (e, latest.clone()))?;

    let mut raw = Vec::new();
    std::io::stdin().read_to_end(&mut raw).map_err(|e| {
        (
            CniError::new(error::IO_FAILURE, format!("reading stdin: {e}")),
            latest.clone(),
        )
    })?;

    if env.command == Command::Version {
        // VERSION answers whatever it was asked in; with no (or a bad) config, the latest.
        let asked = serde_json::from_slice::<serde_json::Value>(&raw)
            .ok()
            .and_then(|v| {
                v.get("cniVersion")
                    .and_then(|s| s.as_str().map(String::from))
            })
            .unwrap_or(latest);
        return Ok(Some(version::version_info(&asked)));
    }

    let (value, header, version) = weft_cni::parse_header(&raw).map_err(|e| (e, latest.clone()))?;
    let vs = version.to_string();
    let fail = |e: CniError| (e, vs.clone());
    if header.plugin_type.as_deref().is_some_and(|t| t != "weft") {
        // Installed under another name, or handed another plugin's config: say so clearly.
        return Err(fail(CniError::new(
            error::INVALID_CONFIG,
            format!(
                "type {:?}: this plugin is \"weft\"",
                header.plugin_type.unwrap_or_default()
            ),
        )));
    }
    match env.command {
        Command::Check if version < Version::V0_4_0 => {
            return Err(fail(CniError::new(
                error::INCOMPATIBLE_VERSION,
                format!("CHECK needs cniVersion 0.4.0 or later; config has {vs}"),
            )))
        }
        Command::Status | Command::Gc if version < Version::V1_1_0 => {
            return Err(fail(CniError::new(
                error::INCOMPATIBLE_VERSION,
                format!(
                    "{} needs cniVersion 1.1.0; config has {vs}",
                    if env.command == Command::Gc {
                        "GC"
                    } else {
                        "STATUS"
                    }
                ),
            )))
        }
        _ => {}
    }
    let conf = config::Config::parse(&raw, value, header).map_err(fail)?;
    metrics_dir.clone_from(&conf.metrics_dir);

    match env.command {
        Command::Status => status(&conf).map(|_| None),
        _ => run_command(&conf, &env, version),
    }
    .map_err(fail)
}

/// STATUS: ready when the IPAM store is usable.
fn status(conf: &config::Config) -> Result<(), CniError> {
    if let config::Ipam::Builtin { .. } = conf.ipam {
        let store = ipam::open_store(conf).map_err(|e| {
            CniError::new(
                error::NOT_AVAILABLE,
                format!("IPAM store unusable: {}", e.msg),
            )
        })?;
        store.check_usable().map_err(|e| {
            CniError::new(error::NOT_AVAILABLE, format!("IPAM store unusable: {e}"))
        })?;
    }
    Ok(())
}

fn main() {
    let started = std::time::Instant::now();
    let mut metrics_dir = None;
    let outcome = run(&mut metrics_dir);
    let mut out = std::io::stdout().lock();
    let code = match outcome {
        Ok(Some(v)) => {
            let _ = writeln!(out, "{v}");
            0
        }
        Ok(None) => 0,
        Err((e, version)) => {
            let _ = writeln!(out, "{}", e.to_json(&version));
            e.code
        }
    };
    let _ = out.flush();
    if let Some(dir) = metrics_dir {
        let command = std::env::var("CNI_COMMAND").unwrap_or_default();
        events::record(&dir, &command, code, started.elapsed());
    }
    if code != 0 {
        std::process::exit(1);
    }
}
