//! Address management for one attachment: weft's built-in store, or a delegated IPAM plugin
//! exec'd from CNI_PATH as the spec describes.

use crate::config::{Config, Ipam};
use ipnet::IpNet;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use weft_cni::error::{self, CniError};
use weft_cni::{CniResult, Env};
pub use weft_ipam::PendingSync;
use weft_ipam::{Attachment, IpamError, Store};

/// One address given to the pod.
#[derive(Debug, Clone)]
pub struct Assigned {
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
}

/// Maps IPAM store errors to CNI error codes.
pub fn ipam_error(e: IpamError) -> CniError {
    let code = match &e {
        IpamError::InvalidConfig { .. } => error::INVALID_CONFIG,
        IpamError::Exhausted { .. } => error::IPAM_EXHAUSTED,
        IpamError::AlreadyExists { .. } => error::ALREADY_EXISTS,
        // InvalidRequest: two requested addresses for one range set (the rest of its causes
        // are ruled out by config and environment validation before IPAM runs).
        IpamError::RequestedUnavailable { .. }
        | IpamError::RequestedOutOfRange { .. }
        | IpamError::InvalidRequest { .. } => error::IPAM_REQUESTED_UNAVAILABLE,
        IpamError::Corrupt { .. } => error::IPAM_CORRUPT,
        _ => error::IO_FAILURE,
    };
    CniError::new(code, e.to_string())
}

pub fn open_store(conf: &Config) -> Result<Store, CniError> {
    Store::open(conf.data_dir(), &conf.name).map_err(ipam_error)
}

fn attachment(env: &Env) -> Attachment {
    Attachment {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
    }
}

/// Reserves the pod's addresses (one per range set). With the built-in store, the fsyncs
/// that make the reservation durable run in the background: the caller must
/// [`PendingSync::wait`] before it reports success.
pub fn add(conf: &Config, env: &Env) -> Result<(Vec<Assigned>, Option<PendingSync>), CniError> {
    match &conf.ipam {
        Ipam::Builtin { sets, .. } => {
            let mut requested = env.args.ips.clone();
            requested.extend(conf.runtime_ips.iter().copied());
            let store = open_store(conf)?;
            let (allocs, pending) = store
                .allocate_deferred_sync(sets, &attachment(env), &requested)
                .map_err(ipam_error)?;
            let assigned = allocs
                .into_iter()
                .map(|a| Assigned {
                    address: a.address,
                    gateway: a.gateway,
                })
                .collect();
            Ok((assigned, Some(pending)))
        }
        Ipam::Delegated { plugin } => {
            let out = exec_delegate(plugin, "ADD", conf, env)?;
            let value: serde_json::Value = serde_json::from_slice(&out).map_err(|e| {
                CniError::new(error::DELEGATE, format!("IPAM plugin {plugin}: bad result"))
                    .with_details(e.to_string())
            })?;
            let result = CniResult::from_json(&value)?;
            if result.ips.is_empty() {
                return Err(CniError::new(
                    error::DELEGATE,
                    format!("IPAM plugin {plugin} returned no IP addresses"),
                ));
            }
            let assigned = result
                .ips
                .into_iter()
                .map(|ip| Assigned {
                    address: ip.address,
                    gateway: ip.gateway,
                })
                .collect();
            Ok((assigned, None))
        }
    }
}

/// Releases the attachment's addresses; Ok when there were none.
pub fn del(conf: &Config, env: &Env) -> Result<Vec<IpAddr>, CniError> {
    match &conf.ipam {
        Ipam::Builtin { .. } => open_store(conf)?
            .release(&attachment(env))
            .map_err(ipam_error),
        Ipam::Delegated { plugin } => {
            exec_delegate(plugin, "DEL", conf, env)?;
            Ok(Vec::new())
        }
    }
}

/// Finds an executable plugin in CNI_PATH.
fn find_in_path(plugin: &str, env: &Env) -> Result<PathBuf, CniError> {
    env.path
        .iter()
        .map(|dir| dir.join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                error::DELEGATE,
                format!(
                    "IPAM plugin {plugin:?} not found in CNI_PATH {}",
                    env.path
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(":")
                ),
            )
        })
}

/// Execs a delegated IPAM plugin with our own environment (CNI_COMMAND overridden) and stdin.
fn exec_delegate(
    plugin: &str,
    command: &str,
    conf: &Config,
    env: &Env,
) -> Result<Vec<u8>, CniError> {
    let path = find_in_path(plugin, env)?;
    let mut child = Command::new(&path)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            CniError::new(
                error::DELEGATE,
                format!("cannot run IPAM plugin {}", path.display()),
            )
            .with_details(e.to_string())
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A plugin that exits without reading its stdin is reported by its exit status below.
        let _ = stdin.write_all(&conf.raw);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| CniError::new(error::DELEGATE, format!("IPAM plugin {plugin}: {e}")))?;
    if !out.status.success() {
        // Pass the delegate's own error through when it printed a spec error.
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
            if let Some(code) = v.get("code").and_then(serde_json::Value::as_u64) {
                let msg = v
                    .get("msg")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("");
                return Err(CniError::new(
                    code as u32,
                    format!("IPAM plugin {plugin}: {msg}"),
                ));
            }
        }
        return Err(CniError::new(
            error::DELEGATE,
            format!("IPAM plugin {plugin} {command} failed: {}", out.status),
        )
        .with_details(String::from_utf8_lossy(&out.stdout).into_owned()));
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (bad-input corpus): two requested IPs in one range set came out as error 5
    /// ("I/O failure") instead of a requested-address error.
    #[test]
    fn two_requested_ips_for_one_set_is_a_request_error() {
        let sets = weft_ipam::validate_range_sets(&[vec![weft_ipam::RangeConfig {
            subnet: "10.99.0.0/24".parse().unwrap(),
            range_start: None,
            range_end: None,
            gateway: None,
        }]])
        .unwrap();
        let dir = std::env::temp_dir().join(format!("weft-ipam-map-{}", std::process::id()));
        let store = Store::open(&dir, "net").unwrap();
        let e = store
            .allocate(
                &sets,
                &Attachment::new("c", "eth0"),
                &["10.99.0.5".parse().unwrap(), "10.99.0.6".parse().unwrap()],
            )
            .unwrap_err();
        let _ = std::fs::remove_dir_all(&dir);
        let e = ipam_error(e);
        assert_eq!(e.code, error::IPAM_REQUESTED_UNAVAILABLE);
        assert!(e.msg.contains("10.99.0.6"), "{}", e.msg);
    }
}
