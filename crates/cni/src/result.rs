//! The success result of ADD (and the `prevResult` of CHECK, DEL and chained plugins).
//!
//! weft keeps one internal form (the 1.1.0 shape) and renders it for the version the
//! runtime asked for: before 1.0.0 each `ips[]` entry carries `version`; the fields 1.1.0
//! added (`interfaces[].mtu`, route `mtu`/`advmss`/`priority`/`table`/`scope`) are left out
//! of older results.

use crate::error::{self, CniError};
use crate::version::Version;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::net::IpAddr;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u32>,
}

impl Route {
    pub fn new(dst: IpNet, gw: Option<IpAddr>) -> Route {
        Route {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_empty()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

impl CniResult {
    /// Renders the result in the shape of `version`.
    pub fn to_json(&self, version: Version) -> Value {
        let mut v = serde_json::to_value(self).expect("result serializes");
        v["cniVersion"] = json!(version.to_string());
        if version < Version::V1_1_0 {
            if let Some(ifaces) = v.get_mut("interfaces").and_then(Value::as_array_mut) {
                for i in ifaces {
                    if let Some(o) = i.as_object_mut() {
                        o.remove("mtu");
                    }
                }
            }
            if let Some(routes) = v.get_mut("routes").and_then(Value::as_array_mut) {
                for r in routes {
                    if let Some(o) = r.as_object_mut() {
                        for k in ["mtu", "advmss", "priority", "table", "scope"] {
                            o.remove(k);
                        }
                    }
                }
            }
        }
        if version.ips_have_version() {
            if let Some(ips) = v.get_mut("ips").and_then(Value::as_array_mut) {
                for ip in ips {
                    let family = match ip["address"].as_str().map(|a| a.contains(':')) {
                        Some(true) => "6",
                        _ => "4",
                    };
                    ip["version"] = json!(family);
                }
            }
        }
        v
    }

    /// Parses a result of any supported version (e.g. a `prevResult`).
    pub fn from_json(value: &Value) -> Result<CniResult, CniError> {
        let mut value = value.clone();
        if let Some(ips) = value.get_mut("ips").and_then(Value::as_array_mut) {
            for ip in ips {
                if let Some(o) = ip.as_object_mut() {
                    match o.remove("version") {
                        None => {}
                        Some(Value::String(f)) if f == "4" || f == "6" => {}
                        Some(other) => {
                            return Err(CniError::new(
                                error::DECODE,
                                format!("prevResult: ips[].version {other} is not \"4\" or \"6\""),
                            ))
                        }
                    }
                }
            }
        }
        serde_json::from_value(value).map_err(|e| {
            CniError::new(error::DECODE, "failed to decode prevResult").with_details(e.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "weft0".into(),
                    mac: "02:00:00:00:00:01".into(),
                    mtu: Some(1500),
                    sandbox: String::new(),
                },
                Interface {
                    name: "eth0".into(),
                    mac: "02:00:00:00:00:02".into(),
                    mtu: Some(1500),
                    sandbox: "/run/netns/p".into(),
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.1.0.5/24".parse().unwrap(),
                    gateway: Some("10.1.0.1".parse().unwrap()),
                    interface: Some(1),
                },
                IpConfig {
                    address: "fd00::5/64".parse().unwrap(),
                    gateway: Some("fd00::1".parse().unwrap()),
                    interface: Some(1),
                },
            ],
            routes: vec![Route::new(
                "0.0.0.0/0".parse().unwrap(),
                Some("10.1.0.1".parse().unwrap()),
            )],
            dns: Dns {
                nameservers: vec!["10.96.0.10".into()],
                ..Default::default()
            },
        }
    }

    #[test]
    fn shapes_per_version() {
        let r = sample();
        let v04 = r.to_json(Version::V0_4_0);
        assert_eq!(v04["cniVersion"], "0.4.0");
        assert_eq!(v04["ips"][0]["version"], "4");
        assert_eq!(v04["ips"][1]["version"], "6");
        assert!(v04["interfaces"][0].get("mtu").is_none());
        let v10 = r.to_json(Version::V1_0_0);
        assert!(v10["ips"][0].get("version").is_none());
        assert!(v10["interfaces"][0].get("mtu").is_none());
        let v11 = r.to_json(Version::V1_1_0);
        assert_eq!(v11["interfaces"][0]["mtu"], 1500);
        assert_eq!(v11["dns"]["nameservers"][0], "10.96.0.10");
    }

    #[test]
    fn round_trips_every_version() {
        let r = sample();
        for v in crate::version::SUPPORTED {
            let v = Version::parse(v).unwrap();
            let back = CniResult::from_json(&r.to_json(v)).unwrap();
            assert_eq!(back.ips, r.ips);
            assert_eq!(back.routes, r.routes);
            assert_eq!(back.interfaces.len(), 2);
        }
    }

    #[test]
    fn bad_prev_result() {
        let e = CniResult::from_json(&json!({"ips":[{"address":"nope"}]})).unwrap_err();
        assert_eq!(e.code, error::DECODE);
        let e = CniResult::from_json(&json!({"ips":[{"address":"10.0.0.1/24","version":"5"}]}))
            .unwrap_err();
        assert!(e.msg.contains("version"));
    }
}
