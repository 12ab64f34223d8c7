//! The VXLAN tunnel endpoint (VTEP): one device per node, `weft.<vni>`, flannel-style.
//!
//! Its address in each family is the network address of this node's pod CIDR (10.244.1.0/32),
//! so traffic the node itself sends to remote pods has a source the peers route back over the
//! overlay. Its MAC is kept in the state dir: peers' neighbour entries point at it, and a new
//! MAC after a restart would black-hole traffic until every peer reconciled (flannel#1788).

use crate::error::{kernel, Error, Result};
use crate::underlay::Underlay;
use ipnet::IpNet;
use std::path::Path;
use weft_netops::netlink::format_mac;
use weft_netops::{Netlink, VxlanSpec};

pub const VXLAN_OVERHEAD: u32 = 50;

pub fn device_name(vni: u32) -> String {
    format!("weft.{vni}")
}

/// The VTEP address a node uses for one of its pod CIDRs.
pub fn vtep_addr(pod_cidr: &IpNet) -> IpNet {
    let host = pod_cidr.network();
    IpNet::new(host, if host.is_ipv4() { 32 } else { 128 }).expect("valid prefix")
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    parts.try_into().ok()
}

/// Loads the persisted VTEP MAC, or makes (and persists) a random locally administered one.
pub fn load_or_create_mac(state_dir: &Path) -> std::io::Result<[u8; 6]> {
    let path = state_dir.join("vtep-mac");
    if let Ok(s) = std::fs::read_to_string(&path) {
        if let Some(mac) = parse_mac(s.trim()) {
            return Ok(mac);
        }
    }
    let mut mac: [u8; 6] = rand::random();
    mac[0] = (mac[0] & 0xfe) | 0x02; // unicast, locally administered
    crate::files::write_atomic(&path, format!("{}\n", format_mac(&mac)).as_bytes(), 0o600)?;
    Ok(mac)
}

pub struct VtepSpec<'a> {
    pub vni: u32,
    pub port: u16,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub underlay: &'a Underlay,
    pub pod_cidrs: &'a [IpNet],
}

/// Creates the VTEP if missing and brings an existing one in line (MAC, MTU, addresses, up)
/// without recreating it: recreating would drop traffic. Returns its ifindex.
pub fn ensure(nl: &mut Netlink, spec: &VtepSpec) -> Result<u32> {
    let name = device_name(spec.vni);
    let link = match nl
        .get_link_by_name(&name)
        .map_err(kernel(format!("get link {name}")))?
    {
        Some(link) if link.kind.as_deref() == Some("vxlan") => link,
        Some(other) => {
            return Err(Error::Node(format!(
                "{name} exists and is not a vxlan device (kind {:?})",
                other.kind
            )))
        }
        None => {
            let mut v = VxlanSpec::new(&name, spec.vni);
            v.port = spec.port;
            v.local = Some(spec.underlay.ip());
            v.underlay_ifindex = Some(spec.underlay.ifindex);
            v.mac = Some(spec.mac);
            v.mtu = Some(spec.mtu);
            nl.create_vxlan(&v)
                .map_err(kernel(format!("create vxlan {name}")))?;
            nl.get_link_by_name(&name)
                .map_err(kernel(format!("get link {name}")))?
                .ok_or_else(|| Error::Node(format!("{name} vanished after creation")))?
        }
    };
    if link.mac != Some(spec.mac) {
        nl.set_mac(link.index, spec.mac)
            .map_err(kernel(format!("set {name} address")))?;
    }
    if link.mtu != spec.mtu {
        nl.set_mtu(link.index, spec.mtu)
            .map_err(kernel(format!("set {name} mtu")))?;
    }
    let have = nl
        .list_addresses(Some(link.index))
        .map_err(kernel(format!("list {name} addresses")))?;
    let want: Vec<IpNet> = spec.pod_cidrs.iter().map(vtep_addr).collect();
    for addr in &want {
        if !have.iter().any(|(_, a)| a == addr) {
            nl.add_address(link.index, *addr, true)
                .map_err(kernel(format!("add {addr} to {name}")))?;
        }
    }
    // Addresses of a former pod CIDR go (a new CIDR after the Node was re-created).
    crate::agent::remove_stale_addresses(nl, link.index, &want)?;
    if !link.up {
        nl.set_link_up(link.index)
            .map_err(kernel(format!("set {name} up")))?;
    }
    Ok(link.index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vtep_addresses_and_macs() {
        assert_eq!(
            vtep_addr(&"10.244.3.0/24".parse().unwrap()).to_string(),
            "10.244.3.0/32"
        );
        assert_eq!(
            vtep_addr(&"fd00:1:2:3::/64".parse().unwrap()).to_string(),
            "fd00:1:2:3::/128"
        );
        assert_eq!(
            parse_mac("02:aa:bb:cc:dd:0f"),
            Some([2, 0xaa, 0xbb, 0xcc, 0xdd, 0x0f])
        );
        assert_eq!(parse_mac("02:aa:bb"), None);
    }

    #[test]
    fn mac_persists() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_mac(dir.path()).unwrap();
        assert_eq!(a[0] & 0x03, 0x02);
        assert_eq!(load_or_create_mac(dir.path()).unwrap(), a);
    }
}
