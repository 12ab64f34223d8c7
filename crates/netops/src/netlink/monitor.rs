//! Kernel notifications about links and addresses: a NETLINK_ROUTE socket bound to the
//! RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR and RTNLGRP_IPV6_IFADDR groups. weftd reacts to its
//! underlay being re-addressed, or its bridge or VTEP deleted, at once instead of at the next
//! resync.

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};

use super::{split_datagram, RECV_BUF_LEN};
use crate::error::{Error, Result};

const RTMGRP_LINK: u32 = 0x1;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV6_IFADDR: u32 = 0x100;

/// What the kernel says changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A link appeared or changed (state, address, MTU, master...).
    Link {
        index: u32,
    },
    LinkDeleted {
        index: u32,
    },
    /// An address was added to or removed from a link.
    Address {
        index: u32,
    },
    /// The socket's buffer overflowed: notifications were lost, look at everything.
    Overrun,
}

/// A subscription in the calling thread's network namespace.
pub struct Monitor {
    socket: Socket,
    buf: Vec<u8>,
}

impl Monitor {
    pub fn new() -> Result<Monitor> {
        let err = |op: &str| {
            let op = op.to_string();
            move |source| Error::Netlink { op, source }
        };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(err("open netlink monitor"))?;
        socket
            .bind(&SocketAddr::new(
                0,
                RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR,
            ))
            .map_err(err("bind netlink monitor"))?;
        Ok(Monitor {
            socket,
            buf: vec![0u8; RECV_BUF_LEN],
        })
    }

    /// A subscription inside `ns` (the socket stays tied to it).
    pub fn in_netns(ns: &crate::NetNs) -> Result<Monitor> {
        crate::run_in(ns, Monitor::new)?
    }

    /// Blocks until the kernel sends notifications; returns what they say.
    pub fn wait(&mut self) -> Result<Vec<Change>> {
        let op = || "receive netlink notifications".to_string();
        let n = match self.socket.recv(&mut &mut self.buf[..], 0) {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => return Ok(vec![Change::Overrun]),
            Err(e) => {
                return Err(Error::Netlink {
                    op: op(),
                    source: e,
                })
            }
        };
        let mut out = Vec::new();
        for (_, raw) in split_datagram(&self.buf[..n], &op)? {
            let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(raw) else {
                continue; // a message type this crate does not know: not ours to act on
            };
            let NetlinkPayload::InnerMessage(m) = msg.payload else {
                continue;
            };
            out.push(match m {
                RouteNetlinkMessage::NewLink(l) => Change::Link {
                    index: l.header.index,
                },
                RouteNetlinkMessage::DelLink(l) => Change::LinkDeleted {
                    index: l.header.index,
                },
                RouteNetlinkMessage::NewAddress(a) | RouteNetlinkMessage::DelAddress(a) => {
                    Change::Address {
                        index: a.header.index,
                    }
                }
                _ => continue,
            });
        }
        Ok(out)
    }
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Monitor")
    }
}
