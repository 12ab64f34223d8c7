//! The ipam section of the network config (host-local's keys) and its validation.

use crate::error::{IpamError, Result};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

/// Where the store lives when `dataDir` is not set.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/weft";

/// One range of a range set, as written in the config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RangeConfig {
    pub subnet: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_start: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_end: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteConfig {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// The ipam section. Unknown keys (`type`, `resolvConf`, ...) are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpamConfig {
    /// Range sets: one address is allocated from each set (one set per family for dual-stack).
    #[serde(default)]
    pub ranges: Vec<Vec<RangeConfig>>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,

    // host-local's legacy single-range form; becomes range set 0 when `subnet` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<IpNet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_start: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_end: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

/// A range with host-local's defaults filled in and checked. Built only by validation, so
/// `range_start <= range_end` and everything lies inside `subnet`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ValidatedRange {
    subnet: IpNet,
    range_start: IpAddr,
    range_end: IpAddr,
    gateway: IpAddr,
}

/// The addresses one allocation picks from: ranges of one family, not overlapping.
pub type RangeSet = Vec<ValidatedRange>;

impl IpamConfig {
    pub fn data_dir(&self) -> &Path {
        self.data_dir
            .as_deref()
            .unwrap_or(Path::new(DEFAULT_DATA_DIR))
    }

    /// Fills in defaults and checks every range set (see [`validate_range`] and
    /// [`validate_range_sets`]). The legacy top-level `subnet` form becomes set 0.
    pub fn validate(&self) -> Result<Vec<RangeSet>> {
        let mut labelled: Vec<(String, Vec<(String, RangeConfig)>)> = Vec::new();
        match self.subnet {
            Some(subnet) => {
                let legacy = RangeConfig {
                    subnet,
                    range_start: self.range_start,
                    range_end: self.range_end,
                    gateway: self.gateway,
                };
                // Keys of the legacy form sit directly in the ipam section.
                labelled.push(("ipam".to_string(), vec![(String::new(), legacy)]));
            }
            None => {
                for (key, value) in [
                    ("rangeStart", self.range_start),
                    ("rangeEnd", self.range_end),
                    ("gateway", self.gateway),
                ] {
                    if let Some(v) = value {
                        return Err(IpamError::config(
                            key,
                            format!("{v} is set but the legacy `subnet` key is not (use `ranges`)"),
                        ));
                    }
                }
            }
        }
        for (i, set) in self.ranges.iter().enumerate() {
            let ranges = set
                .iter()
                .enumerate()
                .map(|(j, r)| (format!("ranges[{i}][{j}]."), r.clone()))
                .collect();
            labelled.push((format!("ranges[{i}]"), ranges));
        }
        validate_labelled(&labelled)
    }
}

/// Validates range sets given directly (keys in errors are `ranges[i][j].key`).
pub fn validate_range_sets(sets: &[Vec<RangeConfig>]) -> Result<Vec<RangeSet>> {
    let labelled: Vec<_> = sets
        .iter()
        .enumerate()
        .map(|(i, set)| {
            let ranges = set
                .iter()
                .enumerate()
                .map(|(j, r)| (format!("ranges[{i}][{j}]."), r.clone()))
                .collect();
            (format!("ranges[{i}]"), ranges)
        })
        .collect();
    validate_labelled(&labelled)
}

fn validate_labelled(sets: &[(String, Vec<(String, RangeConfig)>)]) -> Result<Vec<RangeSet>> {
    if sets.is_empty() {
        return Err(IpamError::config(
            "ranges",
            "is empty: no IP ranges specified",
        ));
    }
    let mut out: Vec<RangeSet> = Vec::with_capacity(sets.len());
    for (set_label, ranges) in sets {
        if ranges.is_empty() {
            return Err(IpamError::config(
                set_label.as_str(),
                "is an empty range set",
            ));
        }
        let mut set: RangeSet = Vec::with_capacity(ranges.len());
        for (prefix, cfg) in ranges {
            let r = validate_range(cfg, prefix)?;
            for (k, other) in set.iter().enumerate() {
                if r.is_ipv6() != other.is_ipv6() {
                    return Err(IpamError::config(
                        format!("{prefix}subnet"),
                        format!(
                            "{} is not the same address family as {}subnet {} of the same range set",
                            r.subnet, ranges[k].0, other.subnet
                        ),
                    ));
                }
                if r.overlaps(other) {
                    return Err(IpamError::config(
                        format!("{prefix}subnet"),
                        format!("{r} overlaps {}subnet {other}", ranges[k].0),
                    ));
                }
            }
            set.push(r);
        }
        for (k, other) in out.iter().enumerate() {
            let clash = set
                .iter()
                .find_map(|a| other.iter().find(|b| a.overlaps(b)).map(|b| (a, b)));
            if let Some((a, b)) = clash {
                return Err(IpamError::config(
                    set_label.as_str(),
                    format!("range {a} overlaps range {b} of range set {}", sets[k].0),
                ));
            }
        }
        out.push(set);
    }
    Ok(out)
}

/// Fills in host-local's defaults (plugins/ipam/host-local/backend/allocator/range.go
/// `Canonicalize`) and checks the range. `prefix` is put before key names in errors
/// (e.g. `ranges[0][1].`).
///
/// - the subnet must be a network address (host bits zero) and leave at least 2 host bits
///   (IPv4 /31 and /32, IPv6 /127 and /128 are rejected);
/// - `gateway` defaults to network+1;
/// - `rangeStart` defaults to network+1;
/// - `rangeEnd` defaults to the last address, minus one for IPv4 (the broadcast);
/// - `gateway`, `rangeStart`, `rangeEnd` must be inside the subnet, `rangeStart <= rangeEnd`.
pub fn validate_range(cfg: &RangeConfig, prefix: &str) -> Result<ValidatedRange> {
    let subnet = cfg.subnet;
    let key = |k: &str| format!("{prefix}{k}");
    let max_len = subnet.max_prefix_len();
    if subnet.prefix_len() + 2 > max_len {
        return Err(IpamError::config(
            key("subnet"),
            format!("{subnet} is too small to allocate from"),
        ));
    }
    if subnet.addr() != subnet.network() {
        return Err(IpamError::config(
            key("subnet"),
            format!(
                "{subnet} has host bits set: for a prefix length of {} the network address is {}",
                subnet.prefix_len(),
                subnet.network()
            ),
        ));
    }
    let v6 = subnet.network().is_ipv6();
    let last = to_u128(subnet.broadcast());
    let first_host = default_gateway(&subnet);
    let check_inside = |k: &str, ip: IpAddr| -> Result<()> {
        if ip.is_ipv6() != v6 || !subnet.contains(&ip) {
            return Err(IpamError::config(
                key(k),
                format!("{ip} is outside subnet {subnet}"),
            ));
        }
        Ok(())
    };

    let gateway = cfg.gateway.unwrap_or(first_host);
    check_inside("gateway", gateway)?;
    let range_start = cfg.range_start.unwrap_or(first_host);
    check_inside("rangeStart", range_start)?;
    let range_end = match cfg.range_end {
        Some(end) => end,
        None if v6 => from_u128(last, v6),
        None => from_u128(last - 1, v6),
    };
    check_inside("rangeEnd", range_end)?;
    if to_u128(range_start) > to_u128(range_end) {
        return Err(IpamError::config(
            key("rangeEnd"),
            format!("{range_end} is before rangeStart {range_start}"),
        ));
    }
    Ok(ValidatedRange {
        subnet,
        range_start,
        range_end,
        gateway,
    })
}

/// A range's gateway when none is configured: the subnet's first address after the network
/// address (host-local's default). weftd puts it on the bridge for each pod CIDR.
pub fn default_gateway(subnet: &IpNet) -> IpAddr {
    from_u128(to_u128(subnet.network()) + 1, subnet.network().is_ipv6())
}

impl ValidatedRange {
    pub fn subnet(&self) -> IpNet {
        self.subnet
    }

    pub fn range_start(&self) -> IpAddr {
        self.range_start
    }

    pub fn range_end(&self) -> IpAddr {
        self.range_end
    }

    pub fn gateway(&self) -> IpAddr {
        self.gateway
    }

    pub fn is_ipv6(&self) -> bool {
        self.subnet.network().is_ipv6()
    }

    /// Whether `ip` lies between `rangeStart` and `rangeEnd` (inclusive). The gateway counts.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv6() == self.is_ipv6()
            && (self.start_u128()..=self.end_u128()).contains(&to_u128(ip))
    }

    /// Number of addresses from `rangeStart` to `rangeEnd`, gateway included.
    pub fn len(&self) -> u128 {
        // Cannot overflow: the subnet leaves at least 2 host bits so start >= network+0 and
        // the span is at most 2^128 - 1 only for ::/0, whose start is at least ::.
        (self.end_u128() - self.start_u128()).saturating_add(1)
    }

    /// Always false: a validated range holds at least one address.
    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn overlaps(&self, other: &ValidatedRange) -> bool {
        self.is_ipv6() == other.is_ipv6()
            && self.start_u128() <= other.end_u128()
            && other.start_u128() <= self.end_u128()
    }

    pub(crate) fn start_u128(&self) -> u128 {
        to_u128(self.range_start)
    }

    pub(crate) fn end_u128(&self) -> u128 {
        to_u128(self.range_end)
    }
}

impl fmt::Display for ValidatedRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}-{})",
            self.subnet, self.range_start, self.range_end
        )
    }
}

pub(crate) fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

pub(crate) fn from_u128(v: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(v))
    } else {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn range(subnet: &str) -> RangeConfig {
        RangeConfig {
            subnet: subnet.parse().unwrap(),
            range_start: None,
            range_end: None,
            gateway: None,
        }
    }

    fn err_of(cfg: &RangeConfig) -> String {
        validate_range(cfg, "ranges[0][0].")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn v4_defaults_clean_prefix() {
        let r = validate_range(&range("192.0.2.0/24"), "").unwrap();
        assert_eq!(r.subnet(), "192.0.2.0/24".parse::<IpNet>().unwrap());
        assert_eq!(r.range_start(), ip("192.0.2.1"));
        assert_eq!(r.range_end(), ip("192.0.2.254"));
        assert_eq!(r.gateway(), ip("192.0.2.1"));
        assert_eq!(r.len(), 254);
    }

    #[test]
    fn v4_defaults_smaller_subnet() {
        let r = validate_range(&range("192.0.2.0/25"), "").unwrap();
        assert_eq!(r.range_start(), ip("192.0.2.1"));
        assert_eq!(r.range_end(), ip("192.0.2.126"));
        assert_eq!(r.gateway(), ip("192.0.2.1"));
    }

    #[test]
    fn v4_slash30_has_two_addresses_one_of_them_the_gateway() {
        let r = validate_range(&range("10.0.0.0/30"), "").unwrap();
        assert_eq!(r.range_start(), ip("10.0.0.1"));
        assert_eq!(r.range_end(), ip("10.0.0.2"));
        assert_eq!(r.gateway(), ip("10.0.0.1"));
    }

    #[test]
    fn v6_defaults_include_last_address() {
        let r = validate_range(&range("2001:DB8:1::/64"), "").unwrap();
        assert_eq!(r.range_start(), ip("2001:db8:1::1"));
        assert_eq!(r.range_end(), ip("2001:db8:1::ffff:ffff:ffff:ffff"));
        assert_eq!(r.gateway(), ip("2001:db8:1::1"));
        assert_eq!(r.len(), u64::MAX as u128);
    }

    #[test]
    fn explicit_fields_kept() {
        let cfg = RangeConfig {
            range_start: Some(ip("192.0.2.40")),
            range_end: Some(ip("192.0.2.50")),
            gateway: Some(ip("192.0.2.254")),
            ..range("192.0.2.0/24")
        };
        let r = validate_range(&cfg, "").unwrap();
        assert_eq!(r.range_start(), ip("192.0.2.40"));
        assert_eq!(r.range_end(), ip("192.0.2.50"));
        assert_eq!(r.gateway(), ip("192.0.2.254"));
        assert!(!r.contains(ip("192.0.3.0")));
        assert!(!r.contains(ip("192.0.2.39")));
        assert!(r.contains(ip("192.0.2.40")));
        assert!(r.contains(ip("192.0.2.50")));
        assert!(!r.contains(ip("192.0.2.51")));
        assert!(!r.contains(ip("::ffff:192.0.2.45")));
    }

    #[test]
    fn host_bits_rejected() {
        assert_eq!(
            err_of(&range("192.0.2.12/24")),
            "ranges[0][0].subnet 192.0.2.12/24 has host bits set: for a prefix length of 24 \
             the network address is 192.0.2.0"
        );
        assert!(err_of(&range("192.168.127.0/23")).contains("network address is 192.168.126.0"));
        assert!(err_of(&range("2001:DB8:1::24:19ff:fee1:c44a/64"))
            .contains("network address is 2001:db8:1::"));
        assert!(err_of(&range("2001:DB8:24:19ff::/63"))
            .contains("network address is 2001:db8:24:19fe::"));
    }

    #[test]
    fn too_small_rejected() {
        for s in [
            "192.0.2.0/31",
            "192.0.2.1/32",
            "2001:db8::/127",
            "2001:db8::/128",
        ] {
            let e = err_of(&range(s));
            assert!(e.contains("too small to allocate from"), "{s}: {e}");
            assert!(e.starts_with("ranges[0][0].subnet "), "{e}");
        }
        assert!(validate_range(&range("2001:db8::/126"), "").is_ok());
    }

    #[test]
    fn gateway_outside_or_wrong_family_rejected() {
        let cfg = RangeConfig {
            gateway: Some(ip("192.168.1.1")),
            ..range("10.0.0.0/24")
        };
        assert_eq!(
            err_of(&cfg),
            "ranges[0][0].gateway 192.168.1.1 is outside subnet 10.0.0.0/24"
        );
        let cfg = RangeConfig {
            gateway: Some(ip("2001:db8::1")),
            ..range("10.0.0.0/24")
        };
        assert_eq!(
            err_of(&cfg),
            "ranges[0][0].gateway 2001:db8::1 is outside subnet 10.0.0.0/24"
        );
        let cfg = RangeConfig {
            gateway: Some(ip("10.0.0.254")),
            ..range("10.0.0.0/24")
        };
        assert_eq!(
            validate_range(&cfg, "").unwrap().gateway(),
            ip("10.0.0.254")
        );
    }

    #[test]
    fn bad_start_end_rejected() {
        let cfg = RangeConfig {
            range_start: Some(ip("192.0.3.0")),
            ..range("192.0.2.0/24")
        };
        assert_eq!(
            err_of(&cfg),
            "ranges[0][0].rangeStart 192.0.3.0 is outside subnet 192.0.2.0/24"
        );
        let cfg = RangeConfig {
            range_end: Some(ip("192.0.4.0")),
            ..range("192.0.2.0/24")
        };
        assert_eq!(
            err_of(&cfg),
            "ranges[0][0].rangeEnd 192.0.4.0 is outside subnet 192.0.2.0/24"
        );
        let cfg = RangeConfig {
            range_start: Some(ip("192.0.2.50")),
            range_end: Some(ip("192.0.2.40")),
            ..range("192.0.2.0/24")
        };
        assert_eq!(
            err_of(&cfg),
            "ranges[0][0].rangeEnd 192.0.2.40 is before rangeStart 192.0.2.50"
        );
        let cfg = RangeConfig {
            range_start: Some(ip("2001:db8::5")),
            ..range("192.0.2.0/24")
        };
        assert!(err_of(&cfg).contains("rangeStart 2001:db8::5 is outside"));
    }

    fn parse(json: &str) -> IpamConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn parses_host_local_config_and_ignores_unknown_keys() {
        let c = parse(
            r#"{"type":"weft","resolvConf":"/etc/resolv.conf",
                "ranges":[[{"subnet":"10.1.0.0/24","rangeStart":"10.1.0.10","rangeEnd":"10.1.0.20","gateway":"10.1.0.254","foo":1}],
                          [{"subnet":"fd00::/64"}]],
                "routes":[{"dst":"0.0.0.0/0"},{"dst":"::/0","gw":"fd00::1"}],
                "dataDir":"/tmp/x"}"#,
        );
        assert_eq!(c.data_dir(), Path::new("/tmp/x"));
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.routes[1].gw, Some(ip("fd00::1")));
        let sets = c.validate().unwrap();
        assert_eq!(sets.len(), 2);
        assert_eq!(sets[0][0].range_start(), ip("10.1.0.10"));
        assert_eq!(sets[0][0].gateway(), ip("10.1.0.254"));
        assert_eq!(sets[1][0].range_end(), ip("fd00::ffff:ffff:ffff:ffff"));
        assert_eq!(parse("{}").data_dir(), Path::new(DEFAULT_DATA_DIR));
    }

    #[test]
    fn legacy_single_range_becomes_set_zero() {
        let c = parse(
            r#"{"subnet":"10.9.0.0/16","rangeStart":"10.9.1.0","ranges":[[{"subnet":"fd00::/64"}]]}"#,
        );
        let sets = c.validate().unwrap();
        assert_eq!(sets.len(), 2);
        assert_eq!(sets[0][0].range_start(), ip("10.9.1.0"));
        assert_eq!(sets[0][0].range_end(), ip("10.9.255.254"));
        assert!(sets[1][0].is_ipv6());

        let c = parse(r#"{"subnet":"10.9.0.0/16","rangeStart":"10.8.0.1"}"#);
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "rangeStart 10.8.0.1 is outside subnet 10.9.0.0/16"
        );
        let c = parse(r#"{"rangeStart":"10.8.0.1","ranges":[[{"subnet":"10.8.0.0/24"}]]}"#);
        assert!(c.validate().unwrap_err().is_invalid_config());
    }

    #[test]
    fn no_ranges_rejected() {
        assert_eq!(
            parse("{}").validate().unwrap_err().to_string(),
            "ranges is empty: no IP ranges specified"
        );
        assert_eq!(
            parse(r#"{"ranges":[[]]}"#)
                .validate()
                .unwrap_err()
                .to_string(),
            "ranges[0] is an empty range set"
        );
    }

    #[test]
    fn set_members_same_family_and_disjoint() {
        let c = parse(r#"{"ranges":[[{"subnet":"10.1.0.0/24"},{"subnet":"fd00::/64"}]]}"#);
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.starts_with("ranges[0][1].subnet fd00::/64 is not the same address family"),
            "{e}"
        );

        // host-local's overlap cases.
        let c = parse(r#"{"ranges":[[{"subnet":"10.0.0.0/20"},{"subnet":"10.0.1.0/24"}]]}"#);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("ranges[0][1].subnet 10.0.1.0/24 (10.0.1.1-10.0.1.254) overlaps ranges[0][0].subnet"), "{e}");
        let c = parse(
            r#"{"ranges":[[{"subnet":"10.0.0.0/24","rangeEnd":"10.0.0.127"},
                           {"subnet":"10.0.0.0/24","rangeStart":"10.0.0.128"}]]}"#,
        );
        assert_eq!(c.validate().unwrap()[0].len(), 2);
        let c = parse(
            r#"{"ranges":[[{"subnet":"10.0.0.0/24","rangeEnd":"10.0.0.127"},
                           {"subnet":"10.0.0.0/24","rangeStart":"10.0.0.127"}]]}"#,
        );
        assert!(c.validate().is_err());
    }

    #[test]
    fn sets_disjoint() {
        let c = parse(r#"{"ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"10.0.0.0/24"}]]}"#);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("ranges[1] range 10.0.0.0/24"), "{e}");
        assert!(e.ends_with("of range set ranges[0]"), "{e}");
        // Different families never overlap, even with the same bits.
        let c = parse(r#"{"ranges":[[{"subnet":"0.0.0.0/24"}],[{"subnet":"::/24"}]]}"#);
        assert!(c.validate().is_ok());
    }
}
