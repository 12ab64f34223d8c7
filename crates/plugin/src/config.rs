//! The `weft` plugin's network configuration: the bridge plugin's keys, with weft's defaults.

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;
use std::net::IpAddr;
use std::path::PathBuf;
use weft_cni::error::{self, CniError};
use weft_cni::{AttachmentKey, NetConfHeader};
use weft_ipam::{IpamConfig, RangeSet};

pub use weft_ipam::DEFAULT_DATA_DIR;
pub use weft_netops::bridge::DEFAULT_BRIDGE;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    #[serde(default)]
    bridge: Option<String>,
    #[serde(default)]
    is_gateway: Option<bool>,
    #[serde(default)]
    is_default_gateway: Option<bool>,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    hairpin_mode: Option<bool>,
    #[serde(default)]
    ip_masq: Option<bool>,
    #[serde(default)]
    ipam: Option<Value>,
    #[serde(default)]
    dns: Option<weft_cni::Dns>,
    #[serde(default, rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<AttachmentKey>>,
    #[serde(default)]
    metrics_dir: Option<PathBuf>,
    #[serde(default)]
    policy_socket: Option<PathBuf>,
}

/// Where addresses come from.
#[derive(Debug, Clone)]
pub enum Ipam {
    /// weft's own store (`ipam.type: "weft"`).
    Builtin {
        config: IpamConfig,
        sets: Vec<RangeSet>,
    },
    /// Another IPAM plugin found in CNI_PATH (e.g. host-local), exec'd per the spec.
    Delegated { plugin: String },
}

#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub bridge: String,
    pub is_gateway: bool,
    pub is_default_gateway: bool,
    pub mtu: Option<u32>,
    pub hairpin: bool,
    pub ip_masq: bool,
    pub ipam: Ipam,
    pub ipam_routes: Vec<(IpNet, Option<IpAddr>)>,
    pub dns: weft_cni::Dns,
    pub prev_result: Option<Value>,
    pub runtime_ips: Vec<IpAddr>,
    pub valid_attachments: Option<Vec<AttachmentKey>>,
    /// Where to drop one small event file per invocation for weftd's metrics (optional).
    pub metrics_dir: Option<PathBuf>,
    /// weftd's NetworkPolicy socket: ADD tells it the new pod before returning (weftd sets it).
    pub policy_socket: Option<PathBuf>,
    /// The whole stdin document, passed on unchanged to a delegated IPAM plugin.
    pub raw: Vec<u8>,
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(error::INVALID_CONFIG, msg)
}

impl Config {
    pub fn parse(raw: &[u8], value: Value, header: NetConfHeader) -> Result<Config, CniError> {
        // serde_path_to_error names the offending key ("bridge: invalid type ...").
        let conf: RawConf = serde_path_to_error::deserialize(value).map_err(|e| {
            CniError::new(
                error::DECODE,
                format!("network configuration key {}: {}", e.path(), e.inner()),
            )
        })?;
        let bridge = conf.bridge.unwrap_or_else(|| DEFAULT_BRIDGE.to_string());
        weft_cni::env::check_ifname(&bridge).map_err(|e| invalid(format!("bridge: {e}")))?;
        if let Some(mtu) = conf.mtu {
            if !(68..=65535).contains(&mtu) {
                return Err(invalid(format!("mtu {mtu} is outside 68..65535")));
            }
        }
        let ipam_value = conf
            .ipam
            .ok_or_else(|| invalid("ipam is missing: weft needs an ipam section"))?;
        let ipam_type = ipam_value
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("ipam.type is missing"))?
            .to_string();
        let (ipam, ipam_routes) = if ipam_type == "weft" {
            let config: IpamConfig = serde_path_to_error::deserialize(ipam_value.clone())
                .map_err(|e| invalid(format!("ipam.{}: {}", e.path(), e.inner())))?;
            let sets = config
                .validate()
                .map_err(|e| invalid(format!("ipam: {e}")))?;
            let routes = config.routes.iter().map(|r| (r.dst, r.gw)).collect();
            (Ipam::Builtin { config, sets }, routes)
        } else {
            if ipam_type.is_empty() || ipam_type.contains('/') || ipam_type.starts_with('.') {
                return Err(invalid(format!(
                    "ipam.type {ipam_type:?} is not a plugin name"
                )));
            }
            (Ipam::Delegated { plugin: ipam_type }, Vec::new())
        };

        // The `ips` capability: runtimeConfig.ips = ["10.1.0.5/24", ...].
        let mut runtime_ips = Vec::new();
        if let Some(ips) = header.runtime_config.get("ips").and_then(Value::as_array) {
            for ip in ips {
                let s = ip.as_str().unwrap_or_default();
                let addr = s
                    .split('/')
                    .next()
                    .and_then(|a| a.parse().ok())
                    .ok_or_else(|| {
                        invalid(format!("runtimeConfig.ips: {ip} is not an IP address"))
                    })?;
                runtime_ips.push(addr);
            }
        }

        Ok(Config {
            name: header.name.unwrap_or_default(),
            bridge,
            is_gateway: conf.is_gateway.unwrap_or(true),
            is_default_gateway: conf.is_default_gateway.unwrap_or(true),
            mtu: conf.mtu,
            hairpin: conf.hairpin_mode.unwrap_or(true),
            ip_masq: conf.ip_masq.unwrap_or(false),
            ipam,
            ipam_routes,
            dns: conf.dns.unwrap_or_default(),
            prev_result: header.prev_result,
            runtime_ips,
            valid_attachments: conf.valid_attachments,
            metrics_dir: conf.metrics_dir,
            policy_socket: conf.policy_socket,
            raw: raw.to_vec(),
        })
    }

    pub fn data_dir(&self) -> PathBuf {
        match &self.ipam {
            Ipam::Builtin { config, .. } => config
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            Ipam::Delegated { .. } => PathBuf::from(DEFAULT_DATA_DIR),
        }
    }
}
