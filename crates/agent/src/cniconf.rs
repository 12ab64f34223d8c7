//! The CNI configuration weftd writes for the runtime: `10-weft.conflist`, the weft plugin
//! with this node's ranges and MTU, chained with the reference `portmap` plugin.

use crate::config::RunConfig;
use ipnet::IpNet;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

pub const CONFLIST_NAME: &str = "10-weft.conflist";
pub const NETWORK_NAME: &str = "weft";

pub fn conflist(cfg: &RunConfig, pod_cidrs: &[IpNet], mtu: u32) -> Value {
    let mut list = conflist_without_policy(cfg, pod_cidrs, mtu);
    if cfg.enforces_network_policy() == Ok(true) {
        list["plugins"][0]["policySocket"] = json!(cfg.policy_socket);
    }
    list
}

fn conflist_without_policy(cfg: &RunConfig, pod_cidrs: &[IpNet], mtu: u32) -> Value {
    let ranges: Vec<Value> = pod_cidrs
        .iter()
        .map(|c| json!([{ "subnet": c.trunc().to_string() }]))
        .collect();
    json!({
        "cniVersion": cfg.cni_version,
        "name": NETWORK_NAME,
        "plugins": [
            {
                "type": "weft",
                "bridge": cfg.bridge,
                "isGateway": true,
                "isDefaultGateway": true,
                "hairpinMode": true,
                "ipMasq": false,
                "mtu": mtu,
                "metricsDir": cfg.plugin_events_dir,
                "ipam": {
                    "type": "weft",
                    "ranges": ranges,
                    "dataDir": cfg.ipam_data_dir,
                }
            },
            {
                "type": "portmap",
                "capabilities": { "portMappings": true },
                "snat": true
            }
        ]
    })
}

pub fn path(conf_dir: &Path) -> PathBuf {
    conf_dir.join(CONFLIST_NAME)
}

/// Writes the conflist atomically unless it already says exactly this. Returns whether it
/// wrote.
pub fn write_if_changed(conf_dir: &Path, conf: &Value) -> std::io::Result<bool> {
    let target = path(conf_dir);
    let body = serde_json::to_vec_pretty(conf).expect("json serializes");
    if std::fs::read(&target).ok().as_deref() == Some(body.as_slice()) {
        return Ok(false);
    }
    crate::files::write_atomic(&target, &body, 0o644)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Weftd {
        #[command(flatten)]
        run: RunConfig,
    }

    /// The conflist weftd writes, read by the plugin's own parser as a runtime hands it over
    /// (libcni injects the list's cniVersion and name into each plugin's config).
    #[test]
    fn the_plugin_accepts_the_conflist_weftd_writes() {
        let cfg = Weftd::try_parse_from(["weftd", "--node-name", "n1"])
            .unwrap()
            .run;
        let cidrs: Vec<IpNet> = vec![
            "10.244.3.0/24".parse().unwrap(),
            "fd00:10:244:3::/64".parse().unwrap(),
        ];
        let list = conflist(&cfg, &cidrs, 1450);
        let mut plugin = list["plugins"][0].clone();
        plugin["cniVersion"] = list["cniVersion"].clone();
        plugin["name"] = list["name"].clone();
        let raw = serde_json::to_vec(&plugin).unwrap();
        let (value, header, _) = weft_cni::parse_header(&raw).unwrap();
        let conf = weft_plugin::config::Config::parse(&raw, value, header)
            .unwrap_or_else(|e| panic!("the plugin rejects weftd's conflist: {}", e.msg));
        assert_eq!(conf.bridge, cfg.bridge);
        assert_eq!(conf.mtu, Some(1450));
        assert_eq!(
            conf.metrics_dir.as_deref(),
            Some(cfg.plugin_events_dir.as_path())
        );
        let weft_plugin::config::Ipam::Builtin { config, sets } = conf.ipam else {
            panic!("weftd's conflist must use the built-in IPAM")
        };
        assert_eq!(
            config.data_dir.as_deref(),
            Some(cfg.ipam_data_dir.as_path())
        );
        // NetworkPolicy is on by default with the kubernetes datastore.
        assert_eq!(
            conf.policy_socket.as_deref(),
            Some(cfg.policy_socket.as_path())
        );
        let subnets: Vec<IpNet> = sets.iter().map(|s| s[0].subnet()).collect();
        assert_eq!(subnets, cidrs);
    }
}
