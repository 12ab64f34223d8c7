//! Reachability probes run inside a namespace with the system's ping (iputils).

use crate::ns::enter_command;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::process::Stdio;
use std::time::Duration;
use weft_netops::netns::NetNs;

/// Reachability: true if one of up to three ICMP echoes (1 s timeout each) is answered.
/// Retrying keeps a first-packet neighbour resolution on a loaded machine from reading as
/// a broken path.
pub fn ping(from: &NetNs, to: IpAddr) -> bool {
    (0..3).any(|_| ping_n(from, to, 1, 1.0))
}

/// `count` echoes spaced by `interval_s`; true if every one was answered.
pub fn ping_n(from: &NetNs, to: IpAddr, count: u32, interval_s: f64) -> bool {
    let mut cmd = enter_command(from, "ping");
    if to.is_ipv6() {
        cmd.arg("-6");
    }
    cmd.args(["-q", "-n", "-W", "1", "-c"])
        .arg(count.to_string())
        .arg("-i")
        .arg(format!("{interval_s}"))
        .arg(to.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// `count` echoes spaced by `interval_s` (1 s timeout each): how many were answered.
pub fn ping_received(from: &NetNs, to: IpAddr, count: u32, interval_s: f64) -> u32 {
    let mut cmd = enter_command(from, "ping");
    if to.is_ipv6() {
        cmd.arg("-6");
    }
    let out = cmd
        .args(["-q", "-n", "-W", "1", "-c"])
        .arg(count.to_string())
        .arg("-i")
        .arg(format!("{interval_s}"))
        .arg(to.to_string())
        .stderr(Stdio::null())
        .output();
    // iputils' summary: "5 packets transmitted, 5 received, 0% packet loss, time 804ms".
    out.ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let summary = text
                .lines()
                .find(|l| l.contains("transmitted"))?
                .to_string();
            let received = summary.split(", ").nth(1)?.split(' ').next()?.parse().ok();
            received
        })
        .unwrap_or(0)
}

/// Runs `f` on a fresh thread that has entered `ns` (a thread's netns is its own; the caller's
/// thread is never moved).
pub fn in_netns_thread<T: Send + 'static>(
    ns: &NetNs,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<T> {
    let fd = ns.as_fd().try_clone_to_owned()?;
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: plain syscall on a valid fd; affects only this thread.
        if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(f())
    })
    .join()
    .map_err(|_| std::io::Error::other("netns thread panicked"))?
}

/// A TCP server inside a namespace that answers each connection with the source address it
/// sees, then closes. It shows whether traffic was NATed on the way.
pub struct WhoAmIServer {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    addr: std::net::SocketAddr,
    ns_fd: std::os::fd::OwnedFd,
}

impl WhoAmIServer {
    pub fn start(ns: &NetNs, bind: IpAddr, port: u16) -> std::io::Result<WhoAmIServer> {
        use std::io::Write;
        use std::net::{SocketAddr, TcpListener};
        use std::sync::atomic::{AtomicBool, Ordering};
        let addr = SocketAddr::new(bind, port);
        let listener = in_netns_thread(ns, move || TcpListener::bind(addr))??;
        let port = listener.local_addr()?.port();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(mut conn) = conn {
                    if let Ok(peer) = conn.peer_addr() {
                        let _ = writeln!(conn, "{}", peer.ip());
                    }
                }
            }
        });
        Ok(WhoAmIServer {
            port,
            stop,
            addr: SocketAddr::new(bind, port),
            ns_fd: ns.as_fd().try_clone_to_owned()?,
        })
    }
}

impl Drop for WhoAmIServer {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // Wake the accept loop with one last connection from inside its namespace.
        let addr = self.addr;
        let fd = self.ns_fd.as_raw_fd();
        let _ = std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: see in_netns_thread.
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } == 0 {
                    let _ = std::net::TcpStream::connect_timeout(
                        &addr,
                        std::time::Duration::from_millis(200),
                    );
                }
            })
            .join()
        });
    }
}

/// Connects from `from` to a [`WhoAmIServer`] and returns the source address it saw.
pub fn whoami(from: &NetNs, to: IpAddr, port: u16) -> std::io::Result<IpAddr> {
    in_netns_thread(from, move || -> std::io::Result<IpAddr> {
        use std::io::Read;
        let addr = std::net::SocketAddr::new(to, port);
        let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)?;
        buf.trim()
            .parse()
            .map_err(|_| std::io::Error::other(format!("bad answer {buf:?}")))
    })?
}

/// A minimal HTTP/1.0 GET from inside `ns` (agent readiness, etcd health): returns the status
/// code and the body.
pub fn http_get(
    ns: &NetNs,
    addr: std::net::SocketAddr,
    path: &str,
    timeout: std::time::Duration,
) -> std::io::Result<(u16, String)> {
    http_request(ns, addr, "GET", path, b"", timeout)
}

/// One HTTP/1.0 request with a JSON body from inside `ns`: returns the status code and body.
pub fn http_request(
    ns: &NetNs,
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    timeout: std::time::Duration,
) -> std::io::Result<(u16, String)> {
    let mut request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    in_netns_thread(ns, move || -> std::io::Result<(u16, String)> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        s.write_all(&request)?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad HTTP answer {head:?}")))?;
        Ok((status, body.to_string()))
    })?
}

/// One exchange with a `weft-agnhost serve` at `to` from `ns`: a TCP connection and the line
/// it answers, or (`udp`) a datagram and its answer. (who answered, the source address it saw),
/// None when nothing came back within `timeout`.
pub fn agnhost_exchange(
    ns: &NetNs,
    udp: bool,
    to: std::net::SocketAddr,
    timeout: Duration,
) -> Option<(String, String)> {
    in_netns_thread(ns, move || {
        let line = if udp {
            let bind = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
            let s = std::net::UdpSocket::bind(bind).ok()?;
            s.set_read_timeout(Some(timeout)).ok()?;
            s.send_to(b"?", to).ok()?;
            let mut buf = [0u8; 512];
            let n = s.recv(&mut buf).ok()?;
            String::from_utf8_lossy(&buf[..n]).into_owned()
        } else {
            use std::io::BufRead;
            let s = std::net::TcpStream::connect_timeout(&to, timeout).ok()?;
            s.set_read_timeout(Some(timeout)).ok()?;
            let mut line = String::new();
            std::io::BufReader::new(s).read_line(&mut line).ok()?;
            line
        };
        let mut words = line.split_whitespace();
        Some((words.next()?.to_string(), words.next()?.to_string()))
    })
    .ok()
    .flatten()
}

/// Polls `f` every 250 ms until Ok; panics after `timeout` with `what` and the last error
/// (for tests).
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<(), String>) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let last = match f() {
            Ok(()) => return,
            Err(e) => e,
        };
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not after {timeout:?}: {last}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}
