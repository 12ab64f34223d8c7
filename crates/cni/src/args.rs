//! CNI_ARGS: `K=V;K2=V2`. weft knows a few keys; others are an error unless
//! `IgnoreUnknown` is set, as the reference plugins do.

use std::net::IpAddr;

/// Keys runtimes pass that weft accepts without using them.
const KNOWN_PASSIVE: &[&str] = &[
    "K8S_POD_NAMESPACE",
    "K8S_POD_NAME",
    "K8S_POD_INFRA_CONTAINER_ID",
    "K8S_POD_UID",
];

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub pairs: Vec<(String, String)>,
    /// Addresses requested with `IP=10.1.0.5,fd00::5`.
    pub ips: Vec<IpAddr>,
}

impl CniArgs {
    pub fn parse(raw: &str) -> Result<CniArgs, String> {
        let mut args = CniArgs::default();
        if raw.is_empty() {
            return Ok(args);
        }
        for pair in raw.split(';') {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("invalid pair {pair:?}: expected KEY=VALUE"))?;
            if k.is_empty() {
                return Err(format!("invalid pair {pair:?}: empty key"));
            }
            args.pairs.push((k.to_string(), v.to_string()));
        }
        let ignore_unknown = args
            .get("IgnoreUnknown")
            .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true"))
            .unwrap_or(false);
        for (k, v) in &args.pairs {
            match k.as_str() {
                "IP" => {
                    for ip in v.split(',').filter(|s| !s.is_empty()) {
                        args.ips.push(
                            ip.parse()
                                .map_err(|_| format!("IP={v:?}: {ip:?} is not an IP address"))?,
                        );
                    }
                }
                "IgnoreUnknown" => {}
                k if KNOWN_PASSIVE.contains(&k) => {}
                _ if ignore_unknown => {}
                _ => {
                    return Err(format!(
                        "unknown key {k:?} (set IgnoreUnknown=1 to ignore unknown keys)"
                    ))
                }
            }
        }
        Ok(args)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_style() {
        let a = CniArgs::parse("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u;FOO=bar").unwrap();
        assert_eq!(a.get("K8S_POD_NAME"), Some("web"));
        assert!(a.ips.is_empty());
    }

    #[test]
    fn requested_ips() {
        let a = CniArgs::parse("IP=10.1.0.7,fd00::7").unwrap();
        assert_eq!(a.ips.len(), 2);
        assert!(CniArgs::parse("IP=10.1.0.300")
            .unwrap_err()
            .contains("10.1.0.300"));
    }

    #[test]
    fn unknown_keys_need_ignore_unknown() {
        assert!(CniArgs::parse("FOO=bar").unwrap_err().contains("FOO"));
        assert!(CniArgs::parse("FOO=bar;IgnoreUnknown=true").is_ok());
        assert!(CniArgs::parse("novalue").is_err());
        assert!(CniArgs::parse("=x").is_err());
    }
}
