//! Batchable requests (routes, neighbours, FDB, addresses) and the
//! translation of each into one rtnetlink message.

use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::types::{af_of, format_mac, FdbEntry, Neighbour, Route, RT_SCOPE_NOWHERE};

/// One add/replace/del operation; see `Netlink::batch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Fails with EEXIST if an equal route exists.
    AddRoute(Route),
    /// Create or replace.
    ReplaceRoute(Route),
    DelRoute(Route),
    /// Create or replace.
    ReplaceNeighbour(Neighbour),
    DelNeighbour(Neighbour),
    /// Add one more destination for the MAC (vxlan flood lists).
    AppendFdb(FdbEntry),
    /// Create or replace.
    ReplaceFdb(FdbEntry),
    DelFdb(FdbEntry),
    AddAddress {
        index: u32,
        addr: IpNet,
        nodad: bool,
    },
    ReplaceAddress {
        index: u32,
        addr: IpNet,
        nodad: bool,
    },
    DelAddress {
        index: u32,
        addr: IpNet,
    },
}

impl Request {
    /// Human description for error messages, e.g. "add route 10.1.0.0/24 via 10.0.0.2".
    pub fn describe(&self) -> String {
        match self {
            Request::AddRoute(r) => format!("add route {r}"),
            Request::ReplaceRoute(r) => format!("replace route {r}"),
            Request::DelRoute(r) => format!("delete route {r}"),
            Request::ReplaceNeighbour(n) => format!(
                "replace neighbour {} lladdr {} ifindex {}",
                n.ip,
                n.mac.as_ref().map(format_mac).unwrap_or_default(),
                n.ifindex
            ),
            Request::DelNeighbour(n) => {
                format!("delete neighbour {} ifindex {}", n.ip, n.ifindex)
            }
            Request::AppendFdb(e) => format!("append fdb {}", describe_fdb(e)),
            Request::ReplaceFdb(e) => format!("replace fdb {}", describe_fdb(e)),
            Request::DelFdb(e) => format!("delete fdb {}", describe_fdb(e)),
            Request::AddAddress { index, addr, .. } => {
                format!("add address {addr} ifindex {index}")
            }
            Request::ReplaceAddress { index, addr, .. } => {
                format!("replace address {addr} ifindex {index}")
            }
            Request::DelAddress { index, addr } => {
                format!("delete address {addr} ifindex {index}")
            }
        }
    }

    /// The message and the extra NLM_F_* flags (REQUEST and ACK are added by
    /// the sender).
    pub(crate) fn to_message(&self) -> (RouteNetlinkMessage, u16) {
        let create = NLM_F_CREATE | NLM_F_EXCL;
        let replace = NLM_F_CREATE | NLM_F_REPLACE;
        match self {
            Request::AddRoute(r) => (
                RouteNetlinkMessage::NewRoute(route_message(r, false)),
                create,
            ),
            Request::ReplaceRoute(r) => (
                RouteNetlinkMessage::NewRoute(route_message(r, false)),
                replace,
            ),
            Request::DelRoute(r) => (RouteNetlinkMessage::DelRoute(route_message(r, true)), 0),
            Request::ReplaceNeighbour(n) => (
                RouteNetlinkMessage::NewNeighbour(neighbour_message(n)),
                replace,
            ),
            Request::DelNeighbour(n) => {
                let mut m = neighbour_message(n);
                m.attributes
                    .retain(|a| matches!(a, NeighbourAttribute::Destination(_)));
                (RouteNetlinkMessage::DelNeighbour(m), 0)
            }
            Request::AppendFdb(e) => (
                RouteNetlinkMessage::NewNeighbour(fdb_message(e)),
                NLM_F_CREATE | NLM_F_APPEND,
            ),
            Request::ReplaceFdb(e) => (RouteNetlinkMessage::NewNeighbour(fdb_message(e)), replace),
            Request::DelFdb(e) => (RouteNetlinkMessage::DelNeighbour(fdb_message(e)), 0),
            Request::AddAddress { index, addr, nodad } => (
                RouteNetlinkMessage::NewAddress(address_message(*index, addr, *nodad)),
                create,
            ),
            Request::ReplaceAddress { index, addr, nodad } => (
                RouteNetlinkMessage::NewAddress(address_message(*index, addr, *nodad)),
                replace,
            ),
            Request::DelAddress { index, addr } => (
                RouteNetlinkMessage::DelAddress(address_message(*index, addr, false)),
                0,
            ),
        }
    }
}

fn describe_fdb(e: &FdbEntry) -> String {
    match e.dst {
        Some(dst) => format!("{} dst {dst} ifindex {}", format_mac(&e.mac), e.ifindex),
        None => format!("{} ifindex {}", format_mac(&e.mac), e.ifindex),
    }
}

fn route_address(ip: IpAddr) -> RouteAddress {
    RouteAddress::from(ip)
}

/// Build an RTM_NEWROUTE/RTM_DELROUTE message. For deletes, protocol, scope
/// and type are left unspecified (scope NOWHERE) so they do not restrict the
/// match, as iproute2 does.
pub(crate) fn route_message(r: &Route, delete: bool) -> RouteMessage {
    let dst = r.dst.trunc();
    let mut m = RouteMessage::default();
    m.header.address_family = af_of(&dst.addr());
    m.header.destination_prefix_length = dst.prefix_len();
    // Table ids above 255 only fit in RTA_TABLE, which we always send.
    m.header.table = if r.table < 256 {
        r.table as u8
    } else {
        RouteHeader::RT_TABLE_UNSPEC
    };
    if delete {
        m.header.protocol = RouteProtocol::Unspec;
        m.header.scope = RouteScope::from(RT_SCOPE_NOWHERE);
        m.header.kind = RouteType::Unspec;
    } else {
        m.header.protocol = RouteProtocol::from(r.protocol);
        m.header.scope = RouteScope::from(r.scope);
        m.header.kind = RouteType::from(r.kind);
    }
    if r.onlink {
        m.header.flags |= RouteFlags::Onlink;
    }
    if dst.prefix_len() > 0 {
        m.attributes
            .push(RouteAttribute::Destination(route_address(dst.addr())));
    }
    m.attributes.push(RouteAttribute::Table(r.table));
    if let Some(gw) = r.gateway {
        m.attributes
            .push(RouteAttribute::Gateway(route_address(gw)));
    }
    if let Some(oif) = r.oif {
        m.attributes.push(RouteAttribute::Oif(oif));
    }
    if let Some(metric) = r.metric {
        m.attributes.push(RouteAttribute::Priority(metric));
    }
    if let Some(src) = r.prefsrc {
        if !delete {
            m.attributes
                .push(RouteAttribute::PrefSource(route_address(src)));
        }
    }
    m
}

fn neighbour_address(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
    }
}

fn neighbour_message(n: &Neighbour) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = af_of(&n.ip);
    m.header.ifindex = n.ifindex;
    m.header.state = NeighbourState::from(n.state);
    m.attributes
        .push(NeighbourAttribute::Destination(neighbour_address(n.ip)));
    if let Some(mac) = n.mac {
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    }
    m
}

/// AF_BRIDGE neighbour with NTF_SELF: the entry goes into the device's own
/// FDB (the vxlan driver), not into a bridge master's.
fn fdb_message(e: &FdbEntry) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = e.ifindex;
    m.header.state = NeighbourState::from(e.state);
    m.header.flags = NeighbourFlags::Own;
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(e.mac.to_vec()));
    if let Some(dst) = e.dst {
        m.attributes
            .push(NeighbourAttribute::Destination(neighbour_address(dst)));
    }
    m
}

pub(crate) fn address_message(index: u32, addr: &IpNet, nodad: bool) -> AddressMessage {
    let mut m = AddressMessage::default();
    let ip = addr.addr();
    m.header.family = af_of(&ip);
    m.header.prefix_len = addr.prefix_len();
    m.header.index = index;
    m.header.scope = AddressScope::Universe;
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS the same when
    // there is no point-to-point peer.
    m.attributes.push(AddressAttribute::Local(ip));
    m.attributes.push(AddressAttribute::Address(ip));
    if nodad && ip.is_ipv6() {
        m.header.flags = AddressHeaderFlags::Nodad;
        m.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::types::{RTPROT_STATIC, RT_SCOPE_LINK};

    #[test]
    fn route_message_fields() {
        let r = Route::dev("10.1.2.3/24".parse().unwrap(), 7)
            .with_table(1000)
            .with_protocol(RTPROT_STATIC);
        assert_eq!(r.dst, "10.1.2.0/24".parse::<IpNet>().unwrap());
        let m = route_message(&r, false);
        assert_eq!(m.header.destination_prefix_length, 24);
        assert_eq!(m.header.table, RouteHeader::RT_TABLE_UNSPEC);
        assert_eq!(u8::from(m.header.scope), RT_SCOPE_LINK);
        assert_eq!(u8::from(m.header.protocol), RTPROT_STATIC);
        assert!(m.attributes.contains(&RouteAttribute::Table(1000)));
        assert!(m.attributes.contains(&RouteAttribute::Oif(7)));

        // Deletes do not restrict on protocol / scope / type.
        let d = route_message(&r, true);
        assert_eq!(u8::from(d.header.scope), RT_SCOPE_NOWHERE);
        assert_eq!(u8::from(d.header.protocol), 0);

        // Default route: no RTA_DST.
        let m = route_message(&Route::new("0.0.0.0/0".parse().unwrap()), false);
        assert!(!m
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Destination(_))));
    }

    #[test]
    fn describe_names_the_object() {
        let r = Request::AddRoute(Route::via(
            "10.1.0.0/24".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
        ));
        assert_eq!(r.describe(), "add route 10.1.0.0/24 via 10.0.0.2");
        let f = Request::AppendFdb(FdbEntry::new(3, [0; 6], Some("192.0.2.1".parse().unwrap())));
        assert_eq!(
            f.describe(),
            "append fdb 00:00:00:00:00:00 dst 192.0.2.1 ifindex 3"
        );
    }
}
