//! The deny log (`--policy-log-denied`): one line per denied new connection, naming both
//! pods, the protocol and port, and the policies that isolate, with the evaluator's reason.
//!
//! Kernel logging from a pod-network netns is off by default (`nf_log_all_netns`, a host-wide
//! sysctl weft never writes), so the table sends denied new connections to an NFLOG group
//! instead (`ct state new limit rate 10/second log group 87`, before each namespace chain's
//! drop) and weftd reads that group over netlink in its own netns. Userspace limits again:
//! the same flow (source, destination, protocol, port) is logged once per [`FLOW_WINDOW`]
//! (a TCP client retries its SYN, a UDP client resends), and at most `per_second` lines are
//! written per second; what is left out is counted (`weft_policy_log_suppressed_total`).

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::nflog::{
    config_request, ConfigCmd, ConfigMode, PacketNla, ULogMessage,
};
use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};
use netlink_sys::{constants::NETLINK_NETFILTER, Socket};
use weft_policy::{Decision, Direction, Model, Protocol};

/// The NFLOG group weft's table logs denials to (one reader per group and netns).
pub const GROUP: u16 = 87;
/// A flow denied again within this is counted, not logged again.
pub const FLOW_WINDOW: Duration = Duration::from_secs(10);
/// Lines per second at most (userspace; the kernel limits per namespace chain too).
pub const PER_SECOND: u32 = 20;
/// Bytes of each packet copied to weftd: IPv6 header and the ports are within this.
const COPY_RANGE: u32 = 128;

/// A denied packet as the kernel reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP, ...).
    pub protocol: u8,
    /// Destination port (0 when the protocol has none).
    pub port: u16,
    /// The log prefix: the namespace chain that denied it (`ni_<ns>` / `ne_<ns>`).
    pub chain: String,
}

/// The addresses, protocol and destination port of an IPv4 or IPv6 packet (network header
/// first, as NFLOG copies it); `None` if it is cut short or not IP.
pub fn parse_packet(p: &[u8]) -> Option<(IpAddr, IpAddr, u8, u16)> {
    let (src, dst, protocol, l4) = match p.first()? >> 4 {
        4 if p.len() >= 20 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let src: [u8; 4] = p[12..16].try_into().ok()?;
            let dst: [u8; 4] = p[16..20].try_into().ok()?;
            (IpAddr::from(src), IpAddr::from(dst), p[9], p.get(ihl..)?)
        }
        6 if p.len() >= 40 => {
            let src: [u8; 16] = p[8..24].try_into().ok()?;
            let dst: [u8; 16] = p[24..40].try_into().ok()?;
            (IpAddr::from(src), IpAddr::from(dst), p[6], &p[40..])
        }
        _ => return None,
    };
    // TCP, UDP and SCTP start with source and destination ports.
    let port = match protocol {
        6 | 17 | 132 if l4.len() >= 4 => u16::from_be_bytes([l4[2], l4[3]]),
        _ => 0,
    };
    Some((src, dst, protocol, port))
}

/// Decides which denials become lines: once per flow per [`FLOW_WINDOW`], at most
/// `per_second` a second. Pure (time is an argument), so it is tested without clocks.
pub struct Limiter {
    per_second: u32,
    second: Option<Instant>,
    this_second: u32,
    recent: HashMap<(IpAddr, IpAddr, u8, u16), Instant>,
    /// Denials not logged (repeated flows and lines over the rate).
    pub suppressed: u64,
}

impl Limiter {
    pub fn new(per_second: u32) -> Limiter {
        Limiter {
            per_second,
            second: None,
            this_second: 0,
            recent: HashMap::new(),
            suppressed: 0,
        }
    }

    /// Whether `d`, seen at `now`, is logged.
    pub fn admit(&mut self, d: &Denied, now: Instant) -> bool {
        let flow = (d.src, d.dst, d.protocol, d.port);
        if let Some(at) = self.recent.get(&flow) {
            if now.duration_since(*at) < FLOW_WINDOW {
                self.suppressed += 1;
                return false;
            }
        }
        if self
            .second
            .is_none_or(|s| now.duration_since(s) >= Duration::from_secs(1))
        {
            self.second = Some(now);
            self.this_second = 0;
            // Forget old flows now and then, so the map stays small.
            self.recent
                .retain(|_, at| now.duration_since(*at) < FLOW_WINDOW);
        }
        if self.this_second >= self.per_second {
            self.suppressed += 1;
            return false;
        }
        self.this_second += 1;
        self.recent.insert(flow, now);
        true
    }
}

/// One line of the deny log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// `namespace/name` of the pods, or the address when no pod holds it.
    pub src: String,
    pub dst: String,
    pub protocol: String,
    pub port: u16,
    /// The direction that denied: the destination's ingress or the source's egress.
    pub direction: Direction,
    /// The policies that isolate the denied end (`namespace/name`).
    pub policies: Vec<String>,
    /// The evaluator's verdict, e.g. `denied: y/b is isolated for ingress by [y/deny]; ...`.
    pub reason: String,
}

/// Explains `d` with the model the table was compiled from.
pub fn explain(model: &Model, d: &Denied) -> Line {
    let direction = if d.chain.starts_with("ne_") {
        Direction::Egress
    } else {
        Direction::Ingress
    };
    let protocol = match d.protocol {
        6 => Some(Protocol::Tcp),
        17 => Some(Protocol::Udp),
        132 => Some(Protocol::Sctp),
        _ => None,
    };
    let name = |ip: &IpAddr| match model.pod_by_ip(ip) {
        Some(p) => format!("{}/{}", p.namespace, p.name),
        None => ip.to_string(),
    };
    // The isolating policies of the end that denied, from the model.
    let end = match direction {
        Direction::Ingress => d.dst,
        Direction::Egress => d.src,
    };
    let mut policies: Vec<String> = model
        .pod_by_ip(&end)
        .map(|p| {
            model
                .isolating(p, direction)
                .iter()
                .map(|pol| format!("{}/{}", pol.namespace, pol.name))
                .collect()
        })
        .unwrap_or_default();
    let reason = match protocol {
        Some(proto) => {
            let v = crate::policy::verdict(model, &[], d.src, d.dst, proto, d.port);
            // The evaluator's isolating policies, where it has them (the same list).
            for dec in [&v.egress, &v.ingress] {
                if let Decision::Denied { isolated_by } = dec {
                    for k in isolated_by {
                        let k = format!("{}/{}", k.namespace, k.name);
                        if !policies.contains(&k) {
                            policies.push(k);
                        }
                    }
                }
            }
            v.to_string()
        }
        None => format!(
            "denied: protocol {} is admitted only by rules without ports",
            d.protocol
        ),
    };
    Line {
        src: name(&d.src),
        dst: name(&d.dst),
        protocol: protocol
            .map(|p| p.as_str().to_lowercase())
            .unwrap_or_else(|| d.protocol.to_string()),
        port: d.port,
        direction,
        policies,
        reason,
    }
}

/// An NFLOG group's socket, bound in the netns of the thread that opened it.
pub struct Reader {
    socket: Socket,
    buf: Vec<u8>,
}

fn send_config(
    socket: &Socket,
    group: u16,
    nlas: Vec<netlink_packet_netfilter::nflog::ConfigNla>,
) -> io::Result<()> {
    let msg = config_request(NetfilterProtoFamily::Unspec, group, nlas);
    let mut buf = vec![0; msg.header.length as usize];
    msg.serialize(&mut buf[..]);
    socket.send(&buf, 0)?;
    let mut reply = vec![0u8; 4096];
    let n = socket.recv(&mut &mut reply[..], 0)?;
    let rx = <NetlinkMessage<NetfilterMessage>>::deserialize(&reply[..n])
        .map_err(|e| io::Error::other(format!("NFLOG group {group}: bad reply: {e}")))?;
    match rx.payload {
        NetlinkPayload::Error(e) if e.code.is_some() => Err(io::Error::other(format!(
            "NFLOG group {group}: the kernel refused the configuration: {}",
            e.to_io()
        ))),
        _ => Ok(()),
    }
}

impl Reader {
    /// Binds NFLOG `group` (fails if another process reads it in this netns).
    pub fn open(group: u16) -> io::Result<Reader> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        send_config(&socket, group, vec![ConfigCmd::Bind.into()])?;
        send_config(
            &socket,
            group,
            vec![ConfigMode::new_packet(COPY_RANGE).into()],
        )?;
        Ok(Reader {
            socket,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Makes [`Self::receive`] fail after `timeout` without a message (tests: a hang guard).
    pub fn set_timeout(&self, timeout: Duration) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: a valid socket and a timeval of the size given.
        let rc = unsafe {
            libc::setsockopt(
                self.socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits for the next datagram and returns the denials in it.
    pub fn receive(&mut self) -> io::Result<Vec<Denied>> {
        let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
        let mut out = Vec::new();
        let mut offset = 0;
        while offset < n {
            let Ok(msg) = <NetlinkMessage<NetfilterMessage>>::deserialize(&self.buf[offset..n])
            else {
                break;
            };
            let len = msg.header.length as usize;
            if let NetlinkPayload::InnerMessage(NetfilterMessage {
                inner: NetfilterMessageInner::ULog(ULogMessage::Packet(nlas)),
                ..
            }) = &msg.payload
            {
                let mut chain = String::new();
                let mut packet = None;
                for nla in nlas {
                    match nla {
                        PacketNla::Prefix(p) => chain = p.to_string_lossy().into_owned(),
                        PacketNla::Payload(p) => packet = parse_packet(p),
                        _ => {}
                    }
                }
                if let Some((src, dst, protocol, port)) = packet {
                    out.push(Denied {
                        src,
                        dst,
                        protocol,
                        port,
                        chain,
                    });
                }
            }
            if len == 0 {
                break;
            }
            offset += (len + 3) & !3;
        }
        Ok(out)
    }
}

/// weftd's reader: on a thread of its own, forever; each admitted denial is one log line
/// (target `weft::policy::denied`).
pub fn spawn(
    compiler: std::sync::Arc<std::sync::RwLock<weft_policy::Compiler>>,
    suppressed: prometheus_client::metrics::counter::Counter,
) {
    let mut reader = match Reader::open(GROUP) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(group = GROUP, error = %e, "network policy: no deny log");
            return;
        }
    };
    std::thread::spawn(move || {
        let mut limiter = Limiter::new(PER_SECOND);
        loop {
            let denied = match reader.receive() {
                Ok(d) => d,
                Err(e) => {
                    // ENOBUFS: the kernel dropped messages we were too slow for.
                    tracing::debug!(error = %e, "deny log: receive");
                    suppressed.inc();
                    continue;
                }
            };
            let before = limiter.suppressed;
            let lines = process(&mut limiter, &compiler, denied, Instant::now());
            suppressed.inc_by(limiter.suppressed - before);
            lines.iter().for_each(log);
        }
    });
}

/// The lines of the denials `denied` (one datagram's) that the limiter lets through.
pub fn process(
    limiter: &mut Limiter,
    compiler: &std::sync::RwLock<weft_policy::Compiler>,
    denied: Vec<Denied>,
    now: Instant,
) -> Vec<Line> {
    let admitted: Vec<Denied> = denied
        .into_iter()
        .filter(|d| limiter.admit(d, now))
        .collect();
    if admitted.is_empty() {
        return Vec::new();
    }
    let c = compiler.read().unwrap();
    admitted.iter().map(|d| explain(c.model(), d)).collect()
}

/// The structured line.
pub fn log(l: &Line) {
    tracing::info!(
        target: "weft::policy::denied",
        src = %l.src,
        dst = %l.dst,
        protocol = %l.protocol,
        port = l.port,
        direction = %l.direction,
        policies = %l.policies.join(","),
        reason = %l.reason,
        "network policy denied a new connection"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denied(port: u16) -> Denied {
        Denied {
            src: "10.244.1.2".parse().unwrap(),
            dst: "10.244.1.3".parse().unwrap(),
            protocol: 6,
            port,
            chain: "ni_x".into(),
        }
    }

    #[test]
    fn packets_are_parsed() {
        // IPv4 TCP SYN 10.0.0.1:40000 -> 10.0.0.2:80.
        let mut v4 = vec![
            0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        v4.extend([0x9c, 0x40, 0, 80]);
        assert_eq!(
            parse_packet(&v4),
            Some((
                "10.0.0.1".parse().unwrap(),
                "10.0.0.2".parse().unwrap(),
                6,
                80
            ))
        );
        // IPv6 UDP to port 53.
        let mut v6 = vec![0x60, 0, 0, 0, 0, 8, 17, 64];
        v6.extend("fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
        v6.extend("fd00::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
        v6.extend([0x9c, 0x40, 0, 53, 0, 8, 0, 0]);
        assert_eq!(
            parse_packet(&v6),
            Some((
                "fd00::1".parse().unwrap(),
                "fd00::2".parse().unwrap(),
                17,
                53
            ))
        );
        assert_eq!(parse_packet(&v4[..10]), None, "cut short");
        assert_eq!(parse_packet(&[0x20; 40]), None, "not IP");
    }

    /// One line per flow per window; at most per_second lines a second; the rest counted.
    #[test]
    fn limiter_dedupes_flows_and_caps_the_rate() {
        let t0 = Instant::now();
        let mut l = Limiter::new(3);
        assert!(l.admit(&denied(80), t0));
        assert!(
            !l.admit(&denied(80), t0 + Duration::from_millis(900)),
            "SYN retry"
        );
        assert!(l.admit(&denied(81), t0));
        assert!(l.admit(&denied(82), t0));
        assert!(!l.admit(&denied(83), t0), "over 3 a second");
        assert_eq!(l.suppressed, 2);
        // The next second has room again; the first flow is still in its window.
        assert!(l.admit(&denied(83), t0 + Duration::from_secs(1)));
        assert!(!l.admit(&denied(80), t0 + Duration::from_secs(5)));
        assert!(l.admit(&denied(80), t0 + FLOW_WINDOW));
        assert_eq!(l.suppressed, 3);
    }
}
