//! The node's underlay: the interface and address peers reach it on.

use crate::error::{kernel, Error, Result};
use ipnet::IpNet;
use std::net::IpAddr;
use weft_netops::{IpFamily, Netlink};

#[derive(Debug, Clone)]
pub struct Underlay {
    pub ifname: String,
    pub ifindex: u32,
    /// The published address with its prefix: peers inside this prefix are on-link.
    pub addr: IpNet,
    pub mtu: u32,
}

impl Underlay {
    pub fn ip(&self) -> IpAddr {
        self.addr.addr()
    }

    /// Whether `peer` shares this node's L2 segment (host-gw can reach it).
    pub fn on_link(&self, peer: IpAddr) -> bool {
        self.addr.trunc().contains(&peer)
    }
}

/// Finds the underlay: the named interface, or the one holding `ip`, or the one of the
/// default route; its first IPv4 address unless `ip` is given.
pub fn detect(nl: &mut Netlink, ifname: Option<&str>, ip: Option<IpAddr>) -> Result<Underlay> {
    let addrs = nl.list_addresses(None).map_err(kernel("list addresses"))?;
    let link = if let Some(name) = ifname {
        nl.get_link_by_name(name)
            .map_err(kernel(format!("get link {name}")))?
            .ok_or_else(|| Error::Node(format!("underlay interface {name:?} does not exist")))?
    } else if let Some(ip) = ip {
        let (index, _) = addrs
            .iter()
            .find(|(_, a)| a.addr() == ip)
            .ok_or_else(|| Error::Node(format!("no interface holds underlay address {ip}")))?;
        nl.get_link_by_index(*index)
            .map_err(kernel(format!("get link {index}")))?
            .ok_or_else(|| Error::Node(format!("interface {index} vanished")))?
    } else {
        let routes = nl
            .list_routes(Some(IpFamily::V4), Some(254))
            .map_err(kernel("list routes"))?;
        let oif = routes
            .iter()
            .find(|r| r.dst.prefix_len() == 0)
            .and_then(|r| r.oif)
            .ok_or_else(|| {
                Error::Node("no IPv4 default route: pass --underlay-interface".into())
            })?;
        nl.get_link_by_index(oif)
            .map_err(kernel(format!("get link {oif}")))?
            .ok_or_else(|| Error::Node(format!("interface {oif} vanished")))?
    };
    let addr = addrs
        .iter()
        .filter(|(i, _)| *i == link.index)
        .map(|(_, a)| *a)
        .find(|a| match ip {
            Some(ip) => a.addr() == ip,
            None => a.addr().is_ipv4(),
        })
        .ok_or_else(|| {
            Error::Node(format!(
                "underlay interface {} has no usable address",
                link.name
            ))
        })?;
    Ok(Underlay {
        ifname: link.name,
        ifindex: link.index,
        addr,
        mtu: link.mtu,
    })
}
