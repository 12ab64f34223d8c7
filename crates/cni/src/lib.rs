//! The CNI protocol, as the CNI specification 1.1.0 defines it (containernetworking/cni SPEC.md).
//!
//! This crate knows nothing about bridges or IPAM: it parses what a runtime hands a plugin
//! (environment, network configuration) and renders what the plugin hands back (results,
//! errors, version info) in whichever spec version the runtime asked for.

pub mod args;
pub mod env;
pub mod error;
pub mod result;
pub mod version;

pub use env::{Command, Env};
pub use error::CniError;
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
pub use version::Version;

use serde::Deserialize;
use serde_json::Value;

/// The fields every network configuration has, whatever the plugin type. A plugin parses its
/// own keys from the same JSON document.
#[derive(Debug, Clone, Deserialize)]
pub struct NetConfHeader {
    #[serde(rename = "cniVersion")]
    pub cni_version: Option<String>,
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub plugin_type: Option<String>,
    #[serde(rename = "prevResult")]
    pub prev_result: Option<Value>,
    #[serde(rename = "runtimeConfig", default)]
    pub runtime_config: Value,
    #[serde(default)]
    pub args: Value,
}

/// The spec's attachment key, used by GC's `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
pub struct AttachmentKey {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// Parses the stdin network configuration's header and checks the keys every verb needs:
/// a supported `cniVersion` and a `name` that matches the spec's regex.
pub fn parse_header(raw: &[u8]) -> Result<(Value, NetConfHeader, Version), CniError> {
    if raw.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(CniError::new(
            error::DECODE,
            "network configuration on stdin is empty",
        ));
    }
    let value: Value = serde_json::from_slice(raw).map_err(|e| {
        CniError::new(error::DECODE, "failed to decode network configuration")
            .with_details(e.to_string())
    })?;
    if !value.is_object() {
        return Err(CniError::new(
            error::DECODE,
            "network configuration must be a JSON object",
        ));
    }
    let header: NetConfHeader = serde_json::from_value(value.clone()).map_err(|e| {
        CniError::new(error::DECODE, "failed to decode network configuration")
            .with_details(e.to_string())
    })?;
    let raw_version = header.cni_version.as_deref().ok_or_else(|| {
        CniError::new(
            error::INVALID_CONFIG,
            "network configuration has no cniVersion",
        )
    })?;
    let version = Version::parse(raw_version)?;
    let name = header.name.as_deref().unwrap_or("");
    if !env::valid_identifier(name) {
        return Err(CniError::new(
            error::INVALID_CONFIG,
            format!("invalid network name {name:?}: must match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"),
        ));
    }
    Ok((value, header, version))
}
