//! Plain data types for links, routes, neighbours and FDB entries, and their
//! conversion from kernel messages.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use netlink_packet_route::link::{
    InfoBridgePort, InfoPortData, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, State,
};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteFlags, RouteMessage};
use netlink_packet_route::AddressFamily;

/// Main routing table.
pub const RT_TABLE_MAIN: u32 = 254;
/// Local routing table.
pub const RT_TABLE_LOCAL: u32 = 255;

/// Route protocols (rtm_protocol). Routes we add default to `RTPROT_BOOT`,
/// like iproute2.
pub const RTPROT_KERNEL: u8 = 2;
pub const RTPROT_BOOT: u8 = 3;
pub const RTPROT_STATIC: u8 = 4;

/// Route scopes (rtm_scope).
pub const RT_SCOPE_UNIVERSE: u8 = 0;
pub const RT_SCOPE_LINK: u8 = 253;
pub const RT_SCOPE_HOST: u8 = 254;
pub const RT_SCOPE_NOWHERE: u8 = 255;

/// Route types (rtm_type).
pub const RTN_UNICAST: u8 = 1;
pub const RTN_LOCAL: u8 = 2;
pub const RTN_BLACKHOLE: u8 = 6;

/// Neighbour states (ndm_state).
pub const NUD_REACHABLE: u16 = 0x02;
pub const NUD_STALE: u16 = 0x04;
pub const NUD_NOARP: u16 = 0x40;
pub const NUD_PERMANENT: u16 = 0x80;

/// Link flags (ifi_flags).
pub const IFF_UP: u32 = 0x1;
pub const IFF_LOWER_UP: u32 = 0x10000;

/// Address family selector for dumps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub fn of(ip: &IpAddr) -> IpFamily {
        match ip {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    pub(crate) fn af(self) -> AddressFamily {
        match self {
            IpFamily::V4 => AddressFamily::Inet,
            IpFamily::V6 => AddressFamily::Inet6,
        }
    }
}

pub(crate) fn af_of(ip: &IpAddr) -> AddressFamily {
    IpFamily::of(ip).af()
}

/// A network interface as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// IFLA_INFO_KIND: "bridge", "veth", "vxlan"... None for lo / physical.
    pub kind: Option<String>,
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    /// Index of the master (bridge) this link is a port of.
    pub master: Option<u32>,
    pub alias: Option<String>,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// Operational state is "up".
    pub oper_up: bool,
    /// Raw ifi_flags (IFF_*).
    pub flags: u32,
    /// IFLA_LINK: for a veth, the peer's ifindex (in `link_netnsid`'s namespace
    /// if that is set).
    pub link: Option<u32>,
    pub link_netnsid: Option<i32>,
    /// IFLA_INFO_PORT_KIND: "bridge" when this link is a bridge port.
    pub port_kind: Option<String>,
    /// Hairpin mode of a bridge port (None if not a bridge port).
    pub hairpin: Option<bool>,
}

impl Link {
    pub(crate) fn from_message(msg: &LinkMessage) -> Link {
        let mut link = Link {
            index: msg.header.index,
            up: msg.header.flags.contains(LinkFlags::Up),
            flags: msg.header.flags.bits(),
            ..Default::default()
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Mtu(m) => link.mtu = *m,
                LinkAttribute::Address(a) => link.mac = mac_from_slice(a),
                LinkAttribute::Controller(m) if *m != 0 => link.master = Some(*m),
                LinkAttribute::IfAlias(a) => link.alias = Some(a.clone()),
                LinkAttribute::OperState(s) => link.oper_up = *s == State::Up,
                LinkAttribute::Link(l) => link.link = Some(*l),
                LinkAttribute::LinkNetNsId(id) => link.link_netnsid = Some(*id),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(k) => link.kind = Some(k.to_string()),
                            LinkInfo::PortKind(k) => link.port_kind = Some(k.to_string()),
                            LinkInfo::PortData(InfoPortData::BridgePort(opts)) => {
                                for o in opts {
                                    if let InfoBridgePort::HairpinMode(h) = o {
                                        link.hairpin = Some(*h);
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

/// A route. `dst` is stored truncated to its prefix (10.1.0.0/24).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    /// Output interface index.
    pub oif: Option<u32>,
    /// RTNH_F_ONLINK: gateway is reachable on `oif` even if no subnet says so.
    pub onlink: bool,
    pub protocol: u8,
    pub table: u32,
    pub scope: u8,
    /// Route type (RTN_UNICAST, RTN_BLACKHOLE...).
    pub kind: u8,
    /// Priority / metric.
    pub metric: Option<u32>,
    pub prefsrc: Option<IpAddr>,
}

impl Route {
    /// A unicast route in the main table with nothing else set (callers fill
    /// in gateway/oif). Scope universe, protocol boot.
    pub fn new(dst: IpNet) -> Route {
        Route {
            dst: dst.trunc(),
            gateway: None,
            oif: None,
            onlink: false,
            protocol: RTPROT_BOOT,
            table: RT_TABLE_MAIN,
            scope: RT_SCOPE_UNIVERSE,
            kind: RTN_UNICAST,
            metric: None,
            prefsrc: None,
        }
    }

    /// `dst via gw`.
    pub fn via(dst: IpNet, gateway: IpAddr) -> Route {
        Route {
            gateway: Some(gateway),
            ..Route::new(dst)
        }
    }

    /// `dst dev oif scope link` (directly connected).
    pub fn dev(dst: IpNet, oif: u32) -> Route {
        Route {
            oif: Some(oif),
            scope: RT_SCOPE_LINK,
            ..Route::new(dst)
        }
    }

    /// `dst via gw dev oif onlink`.
    pub fn onlink(dst: IpNet, gateway: IpAddr, oif: u32) -> Route {
        Route {
            gateway: Some(gateway),
            oif: Some(oif),
            onlink: true,
            ..Route::new(dst)
        }
    }

    pub fn with_table(mut self, table: u32) -> Route {
        self.table = table;
        self
    }

    pub fn with_protocol(mut self, protocol: u8) -> Route {
        self.protocol = protocol;
        self
    }

    pub fn with_metric(mut self, metric: u32) -> Route {
        self.metric = Some(metric);
        self
    }

    pub fn with_prefsrc(mut self, src: IpAddr) -> Route {
        self.prefsrc = Some(src);
        self
    }

    pub(crate) fn from_message(msg: &RouteMessage) -> Option<Route> {
        let h = &msg.header;
        let family_default = match h.address_family {
            AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            _ => return None, // MPLS and friends: not ours
        };
        let mut dst = family_default;
        let mut route = Route {
            dst: IpNet::new(family_default, 0).ok()?,
            gateway: None,
            oif: None,
            onlink: h.flags.contains(RouteFlags::Onlink),
            protocol: h.protocol.into(),
            table: h.table as u32,
            scope: h.scope.into(),
            kind: h.kind.into(),
            metric: None,
            prefsrc: None,
        };
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Destination(a) => {
                    if let Some(ip) = route_addr(a) {
                        dst = ip;
                    }
                }
                RouteAttribute::Gateway(a) => route.gateway = route_addr(a),
                RouteAttribute::PrefSource(a) => route.prefsrc = route_addr(a),
                RouteAttribute::Oif(i) => route.oif = Some(*i),
                RouteAttribute::Priority(p) => route.metric = Some(*p),
                RouteAttribute::Table(t) => route.table = *t,
                _ => {}
            }
        }
        route.dst = IpNet::new(dst, h.destination_prefix_length).ok()?;
        Some(route)
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.dst)?;
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if let Some(oif) = self.oif {
            write!(f, " oif {oif}")?;
        }
        if self.onlink {
            write!(f, " onlink")?;
        }
        if self.table != RT_TABLE_MAIN {
            write!(f, " table {}", self.table)?;
        }
        if let Some(m) = self.metric {
            write!(f, " metric {m}")?;
        }
        Ok(())
    }
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// An IP neighbour (ARP / NDP entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub ifindex: u32,
    pub ip: IpAddr,
    pub mac: Option<[u8; 6]>,
    /// NUD_* state; `Neighbour::permanent` uses NUD_PERMANENT.
    pub state: u16,
}

impl Neighbour {
    /// A permanent (static) entry ip -> mac on ifindex.
    pub fn permanent(ifindex: u32, ip: IpAddr, mac: [u8; 6]) -> Neighbour {
        Neighbour {
            ifindex,
            ip,
            mac: Some(mac),
            state: NUD_PERMANENT,
        }
    }

    pub(crate) fn from_message(msg: &NeighbourMessage) -> Option<Neighbour> {
        let mut ip = None;
        let mut mac = None;
        for attr in &msg.attributes {
            match attr {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                    ip = Some(IpAddr::V4(*v4))
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                    ip = Some(IpAddr::V6(*v6))
                }
                NeighbourAttribute::LinkLayerAddress(l) => mac = mac_from_slice(l),
                _ => {}
            }
        }
        Some(Neighbour {
            ifindex: msg.header.ifindex,
            ip: ip?,
            mac,
            state: msg.header.state.into(),
        })
    }
}

/// A bridge forwarding database entry with NTF_SELF, as used on a vxlan
/// device: frames for `mac` are sent to the remote VTEP `dst`. An all-zero
/// MAC with several appended `dst`s is the flood list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdbEntry {
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub dst: Option<IpAddr>,
    /// NUD_* state; `FdbEntry::new` uses NUD_PERMANENT.
    pub state: u16,
}

impl FdbEntry {
    pub fn new(ifindex: u32, mac: [u8; 6], dst: Option<IpAddr>) -> FdbEntry {
        FdbEntry {
            ifindex,
            mac,
            dst,
            state: NUD_PERMANENT,
        }
    }

    pub(crate) fn from_message(msg: &NeighbourMessage) -> Option<FdbEntry> {
        let mut mac = None;
        let mut dst = None;
        for attr in &msg.attributes {
            match attr {
                NeighbourAttribute::LinkLayerAddress(l) => mac = mac_from_slice(l),
                // In AF_BRIDGE messages the crate cannot know the address
                // family of NDA_DST: decode it from its length.
                NeighbourAttribute::Destination(a) => dst = neigh_addr(a),
                _ => {}
            }
        }
        Some(FdbEntry {
            ifindex: msg.header.ifindex,
            mac: mac?,
            dst,
            state: msg.header.state.into(),
        })
    }
}

fn neigh_addr(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        NeighbourAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        NeighbourAddress::Other(b) => match b.len() {
            4 => Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
            16 => {
                let arr: [u8; 16] = b.as_slice().try_into().ok()?;
                Some(IpAddr::V6(Ipv6Addr::from(arr)))
            }
            _ => None,
        },
        _ => None,
    }
}

pub(crate) fn mac_from_slice(b: &[u8]) -> Option<[u8; 6]> {
    b.try_into().ok()
}

/// Format a MAC as aa:bb:cc:dd:ee:ff (for error messages and logs).
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
