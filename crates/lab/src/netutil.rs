//! Netlink helpers for building the topology: bridges, veths into other namespaces,
//! addresses, routes (crates/netops underneath; never the `ip` command).

use crate::error::{net_err, LabError};
use crate::ns::Netns;
use ipnet::IpNet;
use std::net::Ipv4Addr;
use weft_netops::netlink::{Netlink, Route, VethSpec};

pub(crate) fn nl(ns: &Netns) -> Result<Netlink, LabError> {
    Netlink::in_netns(ns.handle()).map_err(net_err(format!("open netlink in {}", ns.name)))
}

pub(crate) fn link(nl: &mut Netlink, ns: &str, name: &str) -> Result<u32, LabError> {
    nl.get_link_by_name(name)
        .map_err(net_err(format!("get link {name} in {ns}")))?
        .map(|l| l.index)
        .ok_or_else(|| LabError::Setup(format!("no link {name} in {ns}")))
}

pub(crate) fn up(nl: &mut Netlink, ns: &str, index: u32) -> Result<(), LabError> {
    nl.set_link_up(index)
        .map_err(net_err(format!("set link {index} up in {ns}")))
}

pub(crate) fn make_bridge(nl: &mut Netlink, ns: &str, mtu: u32) -> Result<u32, LabError> {
    let br = nl
        .create_bridge("br0", Some(mtu), None)
        .map_err(net_err(format!("create bridge br0 in {ns}")))?;
    up(nl, ns, br)?;
    Ok(br)
}

pub(crate) fn add_addr(
    nl: &mut Netlink,
    ns: &str,
    index: u32,
    ip: Ipv4Addr,
    len: u8,
) -> Result<(), LabError> {
    let addr = IpNet::new(ip.into(), len).unwrap();
    nl.add_address(index, addr, true)
        .map_err(net_err(format!("add address {addr} in {ns}")))
}

pub(crate) fn add_route(nl: &mut Netlink, ns: &str, route: Route) -> Result<(), LabError> {
    nl.add_route(&route)
        .map_err(net_err(format!("add route {route} in {ns}")))
}

/// Plugs `target` into the segment bridge `br`: a veth `port` on the bridge whose peer is
/// created directly in `target` as `ifname`; both ends up.
pub(crate) fn plug(
    seg: &mut Netlink,
    br: u32,
    port: &str,
    target: &Netns,
    ifname: &str,
    mtu: u32,
) -> Result<(), LabError> {
    let pair = seg
        .create_veth(&VethSpec {
            host_name: port.into(),
            peer_name: ifname.into(),
            peer_netns: Some(target.handle()),
            mtu: Some(mtu),
            ..Default::default()
        })
        .map_err(net_err(format!(
            "create veth {port} peer {ifname} in {}",
            target.name
        )))?;
    seg.set_master(pair.host_index, br)
        .map_err(net_err(format!("attach {port} to br0")))?;
    seg.set_link_up(pair.host_index)
        .map_err(net_err(format!("set {port} up")))?;
    let mut t = nl(target)?;
    let i = link(&mut t, &target.name, ifname)?;
    up(&mut t, &target.name, i)
}
