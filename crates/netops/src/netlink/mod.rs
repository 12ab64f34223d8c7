//! Synchronous rtnetlink (NETLINK_ROUTE) client.
//!
//! A `Netlink` owns one socket, bound in the namespace where it was created
//! (`Netlink::new` = current namespace, `Netlink::in_netns` = another one);
//! every call on it acts in that namespace, whatever thread makes it.
//! Messages are encoded and decoded by netlink-packet-route; this module only
//! does the request / ack loop: sequence numbers, NLM_F_ACK, multipart dumps,
//! and errno -> `Error::Netlink` with the operation and object in the text.

mod request;
mod types;

use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

use ipnet::IpNet;
use netlink_packet_core::{
    DefaultNla, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_DUMP_INTR, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
    LinkProtoInfoBridge,
};
use netlink_packet_route::neighbour::NeighbourMessage;
use netlink_packet_route::route::{RouteAttribute, RouteMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};

use crate::error::{Error, Result};
use crate::netns::{run_in, NetNs};

pub use request::Request;

pub mod monitor;
pub use types::*;

/// Requests sent back to back before reading their acks in `batch`.
pub const BATCH_CHUNK: usize = 256;

/// Receive buffer for one datagram. The kernel caps dump datagrams at 32 KiB
/// (more with large pages); anything larger is reported as truncated.
const RECV_BUF_LEN: usize = 256 * 1024;

/// Socket receive buffer: must hold the acks of a whole batch chunk, or the
/// kernel drops them (ENOBUFS).
const SOCKET_RCVBUF: libc::c_int = 4 * 1024 * 1024;

const NLMSG_HDRLEN: usize = 16;
const IFLA_BRPORT_MODE: u16 = 4;
const VXLAN_DEFAULT_PORT: u16 = 4789;

/// Parameters for `Netlink::create_veth`.
#[derive(Debug, Clone, Default)]
pub struct VethSpec<'a> {
    pub host_name: String,
    /// IFLA_IFALIAS set on the host side after creation.
    pub host_alias: Option<String>,
    pub peer_name: String,
    /// Create the peer directly in this namespace (IFLA_NET_NS_FD in the
    /// peer's message): it never appears in ours.
    pub peer_netns: Option<&'a NetNs>,
    pub mtu: Option<u32>,
    pub host_mac: Option<[u8; 6]>,
    pub peer_mac: Option<[u8; 6]>,
    /// Enslave the host end to this bridge in the creating request (IFLA_MASTER).
    pub host_master: Option<u32>,
    /// Create the host end administratively up (saves a request). The peer cannot be: veth
    /// refuses to open an end before both are linked (ENOTCONN), so bring it up afterwards.
    pub up: bool,
}

impl<'a> VethSpec<'a> {
    pub fn new(host_name: &str, peer_name: &str) -> VethSpec<'a> {
        VethSpec {
            host_name: host_name.to_string(),
            peer_name: peer_name.to_string(),
            ..Default::default()
        }
    }
}

/// Indexes of a created veth pair. `peer_index` is an index in the peer's
/// namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethPair {
    pub host_index: u32,
    pub peer_index: u32,
    /// The host end as read back after creation (name, MAC, MTU, master...).
    pub host: Link,
}

/// Parameters for `Netlink::create_vxlan`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    /// UDP destination port (default 4789).
    pub port: u16,
    /// Source address of the tunnel (our underlay address).
    pub local: Option<IpAddr>,
    /// Underlay interface.
    pub underlay_ifindex: Option<u32>,
    pub mac: Option<[u8; 6]>,
    /// MAC learning from received packets; off by default (FDB is programmed).
    pub learning: bool,
    pub mtu: Option<u32>,
}

impl VxlanSpec {
    pub fn new(name: &str, vni: u32) -> VxlanSpec {
        VxlanSpec {
            name: name.to_string(),
            vni,
            port: VXLAN_DEFAULT_PORT,
            local: None,
            underlay_ifindex: None,
            mac: None,
            learning: false,
            mtu: None,
        }
    }
}

/// A NETLINK_ROUTE socket. Not thread-safe by itself (`&mut self`); create
/// one per thread or guard it.
pub struct Netlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    /// Open a socket in the calling thread's current network namespace.
    pub fn new() -> Result<Netlink> {
        let sock_err = |op: &str, e: io::Error| Error::Netlink {
            op: op.to_string(),
            source: e,
        };
        let mut socket =
            Socket::new(NETLINK_ROUTE).map_err(|e| sock_err("open netlink socket", e))?;
        socket
            .bind_auto()
            .map_err(|e| sock_err("bind netlink socket", e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| sock_err("connect netlink socket", e))?;
        // Acks without a copy of our request: less to read in batches.
        let _ = socket.set_cap_ack(true);
        set_rcvbuf(&socket);
        Ok(Netlink {
            socket,
            seq: 0,
            buf: vec![0u8; RECV_BUF_LEN],
        })
    }

    /// Open a socket inside `ns` (enter, create, leave). The socket stays tied
    /// to `ns`, so later calls need no setns.
    pub fn in_netns(ns: &NetNs) -> Result<Netlink> {
        run_in(ns, Netlink::new)?
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn send(&self, op: &dyn Fn() -> String, bytes: &[u8]) -> Result<()> {
        let n = self.socket.send(bytes, 0).map_err(|e| Error::Netlink {
            op: op(),
            source: e,
        })?;
        if n != bytes.len() {
            return Err(Error::Protocol {
                op: op(),
                msg: format!("short netlink send: {n} of {} bytes", bytes.len()),
            });
        }
        Ok(())
    }

    /// Receive one datagram into self.buf; returns its length.
    fn recv(&mut self, op: &dyn Fn() -> String) -> Result<usize> {
        loop {
            // SAFETY: buf is a valid writable buffer of buf.len() bytes.
            let n = unsafe {
                libc::recv(
                    self.socket.as_raw_fd(),
                    self.buf.as_mut_ptr() as *mut libc::c_void,
                    self.buf.len(),
                    libc::MSG_TRUNC,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Error::Netlink {
                    op: op(),
                    source: e,
                });
            }
            let n = n as usize;
            if n > self.buf.len() {
                return Err(Error::Protocol {
                    op: op(),
                    msg: format!("netlink datagram truncated ({n} bytes)"),
                });
            }
            return Ok(n);
        }
    }

    /// Send one request and collect the replies: for a dump, every message up
    /// to NLMSG_DONE; otherwise every message up to the ack. Retries a dump
    /// that the kernel flagged as interrupted (NLM_F_DUMP_INTR).
    fn request(
        &mut self,
        op: &dyn Fn() -> String,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let flags = flags | NLM_F_REQUEST | if dump { 0 } else { NLM_F_ACK };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let seq = self.next_seq();
            let mut bytes = Vec::new();
            encode(msg.clone(), flags, seq, &mut bytes);
            self.send(op, &bytes)?;
            let mut out = Vec::new();
            let mut interrupted = false;
            'recv: loop {
                let n = self.recv(op)?;
                for (hdr, raw) in split_datagram(&self.buf[..n], op)? {
                    if hdr.seq != seq {
                        continue; // stale answer to an earlier, abandoned request
                    }
                    if hdr.flags & NLM_F_DUMP_INTR != 0 {
                        interrupted = true;
                    }
                    let parsed =
                        NetlinkMessage::<RouteNetlinkMessage>::deserialize(raw).map_err(|e| {
                            Error::Protocol {
                                op: op(),
                                msg: format!("cannot decode netlink message type {}: {e}", hdr.ty),
                            }
                        })?;
                    match parsed.payload {
                        NetlinkPayload::InnerMessage(m) => out.push(m),
                        NetlinkPayload::Error(e) => match e.code {
                            None => break 'recv,
                            Some(code) => {
                                return Err(Error::Netlink {
                                    op: op(),
                                    source: io::Error::from_raw_os_error(-code.get()),
                                })
                            }
                        },
                        NetlinkPayload::Done(d) => {
                            if d.code < 0 {
                                return Err(Error::Netlink {
                                    op: op(),
                                    source: io::Error::from_raw_os_error(-d.code),
                                });
                            }
                            break 'recv;
                        }
                        _ => {}
                    }
                }
            }
            if dump && interrupted && attempt < 3 {
                continue;
            }
            return Ok(out);
        }
    }

    fn ack(&mut self, op: &dyn Fn() -> String, msg: RouteNetlinkMessage, flags: u16) -> Result<()> {
        self.request(op, msg, flags).map(|_| ())
    }

    fn dump(
        &mut self,
        op: &dyn Fn() -> String,
        msg: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.request(op, msg, NLM_F_DUMP)
    }

    /// Run one batchable request and wait for its ack.
    pub fn execute(&mut self, req: &Request) -> Result<()> {
        let (msg, flags) = req.to_message();
        self.ack(&|| req.describe(), msg, flags)
    }

    /// Run many requests, pipelined: each chunk of `BATCH_CHUNK` messages is
    /// written in one datagram, then its acks are read and matched by
    /// sequence number. Returns one result per request, in order. A failing
    /// request does not stop the others.
    pub fn batch(&mut self, reqs: &[Request]) -> Vec<Result<()>> {
        let mut results = Vec::with_capacity(reqs.len());
        for chunk in reqs.chunks(BATCH_CHUNK) {
            self.batch_chunk(chunk, &mut results);
        }
        results
    }

    fn batch_chunk(&mut self, chunk: &[Request], results: &mut Vec<Result<()>>) {
        let base = self.seq.wrapping_add(1);
        let mut bytes = Vec::with_capacity(chunk.len() * 96);
        for req in chunk {
            let seq = self.next_seq();
            let (msg, flags) = req.to_message();
            encode(msg, flags | NLM_F_REQUEST | NLM_F_ACK, seq, &mut bytes);
        }
        let mut slots: Vec<Option<Result<()>>> = (0..chunk.len()).map(|_| None).collect();
        let op = || format!("batch of {} requests", chunk.len());
        let mut pending = chunk.len();
        let mut failure: Option<io::Error> = None;
        if let Err(e) = self.send(&op, &bytes) {
            failure = Some(io::Error::other(e.to_string()));
        }
        while pending > 0 && failure.is_none() {
            let n = match self.recv(&op) {
                Ok(n) => n,
                Err(e) => {
                    // ENOBUFS: the kernel dropped acks; we cannot know the
                    // outcome of the unanswered requests.
                    failure = Some(io::Error::other(format!("no ack: {e}")));
                    break;
                }
            };
            let msgs = match split_datagram(&self.buf[..n], &op) {
                Ok(m) => m,
                Err(e) => {
                    failure = Some(io::Error::other(e.to_string()));
                    break;
                }
            };
            for (hdr, raw) in msgs {
                let idx = hdr.seq.wrapping_sub(base) as usize;
                if idx >= chunk.len() || slots[idx].is_some() {
                    continue;
                }
                if hdr.ty != netlink_packet_core::NLMSG_ERROR {
                    continue;
                }
                let code = error_code(raw);
                slots[idx] = Some(if code == 0 {
                    Ok(())
                } else {
                    Err(Error::Netlink {
                        op: chunk[idx].describe(),
                        source: io::Error::from_raw_os_error(-code),
                    })
                });
                pending -= 1;
            }
        }
        for (i, slot) in slots.into_iter().enumerate() {
            results.push(match slot {
                Some(r) => r,
                None => Err(Error::Netlink {
                    op: chunk[i].describe(),
                    source: failure
                        .as_ref()
                        .map(|e| io::Error::new(e.kind(), e.to_string()))
                        .unwrap_or_else(|| io::Error::other("no ack")),
                }),
            });
        }
    }

    // ---------------------------------------------------------------- links

    /// The link named `name`, or None.
    pub fn get_link_by_name(&mut self, name: &str) -> Result<Option<Link>> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.get_link(&|| format!("get link {name}"), m)
    }

    /// The link with index `index`, or None.
    pub fn get_link_by_index(&mut self, index: u32) -> Result<Option<Link>> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.get_link(&|| format!("get link {index}"), m)
    }

    fn get_link(&mut self, op: &dyn Fn() -> String, m: LinkMessage) -> Result<Option<Link>> {
        match self.request(op, RouteNetlinkMessage::GetLink(m), 0) {
            Ok(msgs) => Ok(msgs.iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn list_links(&mut self) -> Result<Vec<Link>> {
        let msgs = self.dump(
            &|| "list links".to_string(),
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
        )?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })
            .collect())
    }

    fn new_link(&mut self, op: &dyn Fn() -> String, m: LinkMessage) -> Result<()> {
        self.ack(
            op,
            RouteNetlinkMessage::NewLink(m),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    fn index_of(&mut self, name: &str) -> Result<u32> {
        match self.get_link_by_name(name)? {
            Some(l) => Ok(l.index),
            None => Err(Error::Netlink {
                op: format!("get link {name} after creation"),
                source: io::Error::from_raw_os_error(libc::ENODEV),
            }),
        }
    }

    /// Create a bridge; returns its index. `is_exists()` if the name is taken. With `mac`, the
    /// bridge keeps that address for life; without, the kernel gives it the lowest MAC among
    /// its ports and changes it whenever that port leaves.
    pub fn create_bridge(
        &mut self,
        name: &str,
        mtu: Option<u32>,
        mac: Option<[u8; 6]>,
    ) -> Result<u32> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        if let Some(mtu) = mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(mac) = mac {
            m.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        m.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        self.new_link(&|| format!("create bridge {name}"), m)?;
        self.index_of(name)
    }

    /// Create a veth pair. With `peer_netns`, the peer is created directly in
    /// that namespace. Then sets the host alias if any.
    pub fn create_veth(&mut self, spec: &VethSpec) -> Result<VethPair> {
        let mut peer = LinkMessage::default();
        peer.attributes
            .push(LinkAttribute::IfName(spec.peer_name.clone()));
        if let Some(ns) = spec.peer_netns {
            peer.attributes.push(LinkAttribute::NetNsFd(ns.as_raw_fd()));
        }
        if let Some(mtu) = spec.mtu {
            peer.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(mac) = spec.peer_mac {
            peer.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }

        let mut m = LinkMessage::default();
        m.attributes
            .push(LinkAttribute::IfName(spec.host_name.clone()));
        if let Some(mtu) = spec.mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(mac) = spec.host_mac {
            m.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        if let Some(master) = spec.host_master {
            m.attributes.push(LinkAttribute::Controller(master));
        }
        if spec.up {
            m.header.flags = LinkFlags::Up;
            m.header.change_mask = LinkFlags::Up;
        }
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        let op = || {
            format!(
                "create veth {} peer {}{}",
                spec.host_name,
                spec.peer_name,
                spec.peer_netns
                    .map(|ns| format!(" in {}", ns.path().display()))
                    .unwrap_or_default()
            )
        };
        self.new_link(&op, m)?;

        let host = self
            .get_link_by_name(&spec.host_name)?
            .ok_or_else(|| Error::Netlink {
                op: op(),
                source: io::Error::from_raw_os_error(libc::ENODEV),
            })?;
        if let Some(alias) = &spec.host_alias {
            if let Err(e) = self.set_alias(host.index, alias) {
                let _ = self.delete_link(host.index);
                return Err(e);
            }
        }
        Ok(VethPair {
            host_index: host.index,
            peer_index: host.link.unwrap_or(0),
            host,
        })
    }

    /// Create a vxlan device; returns its index.
    pub fn create_vxlan(&mut self, spec: &VxlanSpec) -> Result<u32> {
        let mut data = vec![
            InfoVxlan::Id(spec.vni),
            InfoVxlan::Port(spec.port),
            InfoVxlan::Learning(spec.learning),
        ];
        match spec.local {
            Some(IpAddr::V4(v4)) => data.push(InfoVxlan::Local(v4)),
            Some(IpAddr::V6(v6)) => data.push(InfoVxlan::Local6(v6)),
            None => {}
        }
        if let Some(link) = spec.underlay_ifindex {
            data.push(InfoVxlan::Link(link));
        }
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(spec.name.clone()));
        if let Some(mtu) = spec.mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(mac) = spec.mac {
            m.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(data)),
        ]));
        self.new_link(
            &|| format!("create vxlan {} vni {}", spec.name, spec.vni),
            m,
        )?;
        self.index_of(&spec.name)
    }

    pub fn delete_link(&mut self, index: u32) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.ack(
            &|| format!("delete link {index}"),
            RouteNetlinkMessage::DelLink(m),
            0,
        )
    }

    /// Delete a link by name; Ok(false) if it did not exist.
    pub fn delete_link_by_name(&mut self, name: &str) -> Result<bool> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.ack(
            &|| format!("delete link {name}"),
            RouteNetlinkMessage::DelLink(m),
            0,
        ) {
            Ok(()) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn set_link(&mut self, op: &dyn Fn() -> String, m: LinkMessage) -> Result<()> {
        self.ack(op, RouteNetlinkMessage::SetLink(m), 0)
    }

    fn set_flag_up(&mut self, index: u32, up: bool) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = if up {
            LinkFlags::Up
        } else {
            LinkFlags::empty()
        };
        m.header.change_mask = LinkFlags::Up;
        let word = if up { "up" } else { "down" };
        self.set_link(&|| format!("set link {index} {word}"), m)
    }

    pub fn set_link_up(&mut self, index: u32) -> Result<()> {
        self.set_flag_up(index, true)
    }

    pub fn set_link_down(&mut self, index: u32) -> Result<()> {
        self.set_flag_up(index, false)
    }

    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::Mtu(mtu));
        self.set_link(&|| format!("set link {index} mtu {mtu}"), m)
    }

    /// Enslave `index` to `master_index` (a bridge). 0 releases it.
    pub fn set_master(&mut self, index: u32, master_index: u32) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::Controller(master_index));
        self.set_link(&|| format!("set link {index} master {master_index}"), m)
    }

    pub fn set_alias(&mut self, index: u32, alias: &str) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::IfAlias(alias.to_string()));
        self.set_link(&|| format!("set link {index} alias {alias:?}"), m)
    }

    pub fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::Address(mac.to_vec()));
        self.set_link(
            &|| format!("set link {index} address {}", format_mac(&mac)),
            m,
        )
    }

    /// Hairpin mode on a bridge port (needed for a pod to reach itself via a
    /// service IP). Same message as the CNI bridge plugin: RTM_SETLINK,
    /// AF_BRIDGE, IFLA_PROTINFO(nested) { IFLA_BRPORT_MODE }.
    pub fn set_bridge_port_hairpin(&mut self, index: u32, on: bool) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.interface_family = AddressFamily::Bridge;
        m.header.index = index;
        m.attributes.push(LinkAttribute::ProtoInfoBridge(vec![
            LinkProtoInfoBridge::Other(DefaultNla::new(IFLA_BRPORT_MODE, vec![on as u8])),
        ]));
        self.set_link(&|| format!("set link {index} hairpin {on}"), m)
    }

    // ------------------------------------------------------------ addresses

    /// Add an address (fails `is_exists()` if present). `nodad` skips IPv6
    /// duplicate address detection so the address is usable at once.
    pub fn add_address(&mut self, index: u32, addr: IpNet, nodad: bool) -> Result<()> {
        self.execute(&Request::AddAddress { index, addr, nodad })
    }

    /// Add or update an address.
    pub fn replace_address(&mut self, index: u32, addr: IpNet, nodad: bool) -> Result<()> {
        self.execute(&Request::ReplaceAddress { index, addr, nodad })
    }

    pub fn del_address(&mut self, index: u32, addr: IpNet) -> Result<()> {
        self.execute(&Request::DelAddress { index, addr })
    }

    /// (ifindex, address/prefix) of all addresses, or of one link.
    pub fn list_addresses(&mut self, index: Option<u32>) -> Result<Vec<(u32, IpNet)>> {
        let msgs = self.dump(
            &|| "list addresses".to_string(),
            RouteNetlinkMessage::GetAddress(Default::default()),
        )?;
        let mut out = Vec::new();
        for m in &msgs {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            if index.is_some_and(|i| i != a.header.index) {
                continue;
            }
            let mut local = None;
            let mut address = None;
            for attr in &a.attributes {
                match attr {
                    AddressAttribute::Local(ip) => local = Some(*ip),
                    AddressAttribute::Address(ip) => address = Some(*ip),
                    _ => {}
                }
            }
            if let Some(ip) = local.or(address) {
                if let Ok(net) = IpNet::new(ip, a.header.prefix_len) {
                    out.push((a.header.index, net));
                }
            }
        }
        Ok(out)
    }

    // --------------------------------------------------------------- routes

    pub fn add_route(&mut self, route: &Route) -> Result<()> {
        self.execute(&Request::AddRoute(route.clone()))
    }

    pub fn replace_route(&mut self, route: &Route) -> Result<()> {
        self.execute(&Request::ReplaceRoute(route.clone()))
    }

    /// Delete the route matching dst, table and, if set, gateway, oif and
    /// metric (protocol and scope do not restrict the match).
    pub fn del_route(&mut self, route: &Route) -> Result<()> {
        self.execute(&Request::DelRoute(route.clone()))
    }

    /// Routes of one family (None = IPv4 and IPv6) in one table (None = all
    /// tables, including local).
    pub fn list_routes(
        &mut self,
        family: Option<IpFamily>,
        table: Option<u32>,
    ) -> Result<Vec<Route>> {
        let families: &[IpFamily] = match family {
            Some(IpFamily::V4) => &[IpFamily::V4],
            Some(IpFamily::V6) => &[IpFamily::V6],
            None => &[IpFamily::V4, IpFamily::V6],
        };
        let mut out = Vec::new();
        for fam in families {
            let mut m = RouteMessage::default();
            m.header.address_family = fam.af();
            let msgs = self.dump(
                &|| format!("list routes {fam:?}"),
                RouteNetlinkMessage::GetRoute(m),
            )?;
            for msg in &msgs {
                if let RouteNetlinkMessage::NewRoute(r) = msg {
                    if let Some(route) = Route::from_message(r) {
                        if table.is_none_or(|t| t == route.table) {
                            out.push(route);
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// The route the kernel would use for `dst` (like `ip route get`). The
    /// result's `dst` is the address itself (/32 or /128); `oif`, `gateway`,
    /// `prefsrc` and `table` say where it goes.
    pub fn route_get(&mut self, dst: IpAddr) -> Result<Route> {
        self.route_get_from(dst, None, None)
    }

    /// The kernel's routing decision for a packet to `dst` from `src` that arrived on
    /// interface `iif` (a forwarded packet, e.g. from a pod through the bridge), like
    /// `ip route get DST from SRC iif DEV`. A local destination comes back with
    /// `kind == RTN_LOCAL`.
    pub fn route_get_from(
        &mut self,
        dst: IpAddr,
        src: Option<IpAddr>,
        iif: Option<u32>,
    ) -> Result<Route> {
        let mut m = RouteMessage::default();
        m.header.address_family = types::af_of(&dst);
        m.header.destination_prefix_length = if dst.is_ipv4() { 32 } else { 128 };
        m.attributes.push(RouteAttribute::Destination(dst.into()));
        if let Some(src) = src {
            m.header.source_prefix_length = if src.is_ipv4() { 32 } else { 128 };
            m.attributes.push(RouteAttribute::Source(src.into()));
        }
        if let Some(iif) = iif {
            m.attributes.push(RouteAttribute::Iif(iif));
        }
        let op = || {
            format!(
                "get route to {dst}{}{}",
                src.map(|s| format!(" from {s}")).unwrap_or_default(),
                iif.map(|i| format!(" iif {i}")).unwrap_or_default()
            )
        };
        let msgs = self.request(&op, RouteNetlinkMessage::GetRoute(m), 0)?;
        msgs.iter()
            .find_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => Route::from_message(r),
                _ => None,
            })
            .ok_or_else(|| Error::Protocol {
                op: op(),
                msg: "kernel answered without a route".into(),
            })
    }

    // ----------------------------------------------------------- neighbours

    /// Create or replace a neighbour entry (state from `n.state`, normally
    /// NUD_PERMANENT).
    pub fn replace_neighbour(&mut self, n: &Neighbour) -> Result<()> {
        self.execute(&Request::ReplaceNeighbour(n.clone()))
    }

    /// Delete the entry for n.ip on n.ifindex (mac and state are ignored).
    pub fn del_neighbour(&mut self, n: &Neighbour) -> Result<()> {
        self.execute(&Request::DelNeighbour(n.clone()))
    }

    /// IPv4 and IPv6 neighbours, of all links or of one.
    pub fn list_neighbours(&mut self, ifindex: Option<u32>) -> Result<Vec<Neighbour>> {
        let msgs = self.dump(
            &|| "list neighbours".to_string(),
            RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default()),
        )?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) => Neighbour::from_message(n),
                _ => None,
            })
            .filter(|n| ifindex.is_none_or(|i| i == n.ifindex))
            .collect())
    }

    // ------------------------------------------------------------------ fdb

    /// Add one more (mac, dst) entry; with an all-zero MAC this builds the
    /// vxlan flood list.
    pub fn append_fdb(&mut self, e: &FdbEntry) -> Result<()> {
        self.execute(&Request::AppendFdb(e.clone()))
    }

    /// Create or replace the entry for e.mac.
    pub fn replace_fdb(&mut self, e: &FdbEntry) -> Result<()> {
        self.execute(&Request::ReplaceFdb(e.clone()))
    }

    /// Delete the entry for e.mac (and e.dst if set).
    pub fn del_fdb(&mut self, e: &FdbEntry) -> Result<()> {
        self.execute(&Request::DelFdb(e.clone()))
    }

    /// Bridge FDB entries of one device (AF_BRIDGE neighbour dump).
    pub fn list_fdb(&mut self, ifindex: u32) -> Result<Vec<FdbEntry>> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        let msgs = self.dump(
            &|| format!("list fdb ifindex {ifindex}"),
            RouteNetlinkMessage::GetNeighbour(m),
        )?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n)
                    if n.header.family == AddressFamily::Bridge =>
                {
                    FdbEntry::from_message(n)
                }
                _ => None,
            })
            .filter(|e| e.ifindex == ifindex)
            .collect())
    }
}

/// Ask for a large receive buffer. SO_RCVBUFFORCE (root) ignores
/// net.core.rmem_max; fall back to SO_RCVBUF otherwise.
fn set_rcvbuf(socket: &Socket) {
    let val = SOCKET_RCVBUF;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: setsockopt with a pointer to a live c_int and its size.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                &val as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return;
        }
    }
}

/// Append one encoded request (4-byte aligned) to `out`.
fn encode(msg: RouteNetlinkMessage, flags: u16, seq: u32, out: &mut Vec<u8>) {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    nl.finalize();
    let start = out.len();
    out.resize(start + nl.buffer_len(), 0);
    nl.serialize(&mut out[start..]);
    out.resize((out.len() + 3) & !3, 0);
}

/// The header fields we route on, read without decoding the payload.
pub(crate) struct RawHeader {
    ty: u16,
    flags: u16,
    seq: u32,
}

/// Split a datagram into its netlink messages.
pub(crate) fn split_datagram<'a>(
    data: &'a [u8],
    op: &dyn Fn() -> String,
) -> Result<Vec<(RawHeader, &'a [u8])>> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + NLMSG_HDRLEN <= data.len() {
        let d = &data[off..];
        let len = u32::from_ne_bytes([d[0], d[1], d[2], d[3]]) as usize;
        if len < NLMSG_HDRLEN || len > d.len() {
            return Err(Error::Protocol {
                op: op(),
                msg: format!("bad netlink message length {len}"),
            });
        }
        let hdr = RawHeader {
            ty: u16::from_ne_bytes([d[4], d[5]]),
            flags: u16::from_ne_bytes([d[6], d[7]]),
            seq: u32::from_ne_bytes([d[8], d[9], d[10], d[11]]),
        };
        out.push((hdr, &d[..len]));
        off += (len + 3) & !3;
    }
    Ok(out)
}

/// The (negative errno or 0) code of an NLMSG_ERROR message.
fn error_code(raw: &[u8]) -> i32 {
    match raw.get(NLMSG_HDRLEN..NLMSG_HDRLEN + 4) {
        Some(b) => i32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        None => -libc::EBADMSG,
    }
}
