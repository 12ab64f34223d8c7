//! weft-agnhost: the kube lab's workload image (after Kubernetes' e2e `agnhost`), std only.
//!
//!   weft-agnhost serve [--tcp PORT]... [--udp PORT]...
//!       answers every TCP connection and every UDP datagram with one line:
//!       "<name> <client address>" (name: $POD_NAME, else the hostname), so a prober learns
//!       whom it reached and which source address the receiver saw (no NAT inside the cluster).
//!   weft-agnhost probe tcp|udp HOST:PORT [--timeout-ms N]
//!       prints the answer; exit 1 (message on stderr) when there is none.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::Duration;

fn name() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn serve(args: &[String]) -> Result<(), String> {
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let port: u16 = it
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("{a} needs a port"))?;
        match a.as_str() {
            "--tcp" => tcp.push(port),
            "--udp" => udp.push(port),
            _ => return Err(format!("unknown option {a}")),
        }
    }
    if tcp.is_empty() && udp.is_empty() {
        return Err("serve: give --tcp PORT and/or --udp PORT".into());
    }
    let me = name();
    let mut threads = Vec::new();
    for port in tcp {
        let l = TcpListener::bind(("0.0.0.0", port)).map_err(|e| format!("tcp {port}: {e}"))?;
        let me = me.clone();
        threads.push(std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let peer = conn
                    .peer_addr()
                    .map(|a| a.ip().to_string())
                    .unwrap_or_default();
                let mut conn = conn;
                let _ = writeln!(conn, "{me} {peer}");
            }
        }));
    }
    for port in udp {
        let s = UdpSocket::bind(("0.0.0.0", port)).map_err(|e| format!("udp {port}: {e}"))?;
        let me = me.clone();
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((_, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(format!("{me} {}\n", from.ip()).as_bytes(), from);
            }
        }));
    }
    eprintln!("weft-agnhost: serving as {me}");
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn probe(args: &[String]) -> Result<String, String> {
    let (proto, target) = match args {
        [p, t, ..] => (p.as_str(), t.as_str()),
        _ => return Err("probe tcp|udp HOST:PORT [--timeout-ms N]".into()),
    };
    let timeout = match args.get(2..4) {
        Some([flag, ms]) if flag == "--timeout-ms" => {
            Duration::from_millis(ms.parse().map_err(|_| format!("bad timeout {ms}"))?)
        }
        _ => Duration::from_secs(2),
    };
    let addr: SocketAddr = target
        .parse()
        .map_err(|e| format!("{target}: {e} (want IP:PORT)"))?;
    match proto {
        "tcp" => {
            let conn = TcpStream::connect_timeout(&addr, timeout)
                .map_err(|e| format!("tcp {addr}: {e}"))?;
            conn.set_read_timeout(Some(timeout)).ok();
            let mut line = String::new();
            BufReader::new(conn)
                .read_line(&mut line)
                .map_err(|e| format!("tcp {addr}: {e}"))?;
            Ok(line.trim().to_string())
        }
        "udp" => {
            let bind = if addr.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            };
            let s = UdpSocket::bind(bind).map_err(|e| format!("udp: {e}"))?;
            s.set_read_timeout(Some(timeout)).ok();
            s.send_to(b"?", addr)
                .map_err(|e| format!("udp {addr}: {e}"))?;
            let mut buf = [0u8; 512];
            let n = s
                .recv(&mut buf)
                .map_err(|e| format!("udp {addr}: no answer within {timeout:?} ({e})"))?;
            Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
        }
        _ => Err(format!("unknown protocol {proto} (tcp, udp)")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let res = match args.first().map(String::as_str) {
        Some("serve") => serve(&args[1..]).map(|_| String::new()),
        Some("probe") => probe(&args[1..]),
        _ => Err(
            "usage: weft-agnhost serve [--tcp PORT]... [--udp PORT]... | \
                  weft-agnhost probe tcp|udp HOST:PORT [--timeout-ms N]"
                .into(),
        ),
    };
    match res {
        Ok(out) => {
            if !out.is_empty() {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("weft-agnhost: {e}");
            ExitCode::FAILURE
        }
    }
}
