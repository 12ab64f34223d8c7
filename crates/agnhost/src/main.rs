//! weft-agnhost: the kube lab's workload image (after Kubernetes' e2e `agnhost`), std only.
//!
//!   weft-agnhost serve [--tcp PORT]... [--udp PORT]... [--log-peers]
//!       answers every TCP connection and every UDP datagram with one line:
//!       "<name> <client address>" (name: $POD_NAME, else the hostname), so a prober learns
//!       whom it reached and which source address the receiver saw (no NAT inside the cluster).
//!       --log-peers: also prints "peer tcp|udp PORT ADDRESS" on stdout for each one (a record
//!       of every packet that got in, for the NetworkPolicy tests).
//!   weft-agnhost probe tcp|udp HOST:PORT [--timeout-ms N]
//!       prints the answer; exit 1 (message on stderr) when there is none.
//!   weft-agnhost probe-loop [--tcp HOST:PORT]... [--udp HOST:PORT]... [--interval-ms N]
//!       probes the targets from its first instant until killed; prints "ok tcp|udp TARGET MS"
//!       for every answer (MS since start) and "tried N" every second (a record of every
//!       probe that got through, and proof that it ran).

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
    let mut log_peers = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--log-peers" {
            log_peers = true;
            continue;
        }
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
                if log_peers {
                    println!("peer tcp {port} {peer}");
                }
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
                if log_peers {
                    println!("peer udp {port} {}", from.ip());
                }
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
    probe_once(proto, addr, timeout)
}

fn probe_once(proto: &str, addr: SocketAddr, timeout: Duration) -> Result<String, String> {
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

/// Probes every target in turn from the first instant, forever; stdout is the record.
fn probe_loop(args: &[String]) -> Result<(), String> {
    let mut targets: Vec<(&'static str, SocketAddr)> = Vec::new();
    let mut interval = Duration::from_millis(20);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next().ok_or_else(|| format!("{a} needs a value"))?;
        match a.as_str() {
            "--tcp" | "--udp" => {
                let addr = v.parse().map_err(|e| format!("{v}: {e} (want IP:PORT)"))?;
                targets.push((if a == "--tcp" { "tcp" } else { "udp" }, addr));
            }
            "--interval-ms" => {
                interval = Duration::from_millis(v.parse().map_err(|_| format!("bad {v}"))?)
            }
            _ => return Err(format!("unknown option {a}")),
        }
    }
    if targets.is_empty() {
        return Err("probe-loop: give --tcp HOST:PORT and/or --udp HOST:PORT".into());
    }
    let start = std::time::Instant::now();
    let mut last_report = start;
    let mut tried = 0u64;
    println!("start");
    loop {
        for (proto, addr) in &targets {
            tried += 1;
            if probe_once(proto, *addr, Duration::from_millis(200)).is_ok() {
                println!("ok {proto} {addr} {}", start.elapsed().as_millis());
            }
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            println!("tried {tried}");
            last_report = std::time::Instant::now();
        }
        std::thread::sleep(interval);
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let res = match args.first().map(String::as_str) {
        Some("serve") => serve(&args[1..]).map(|_| String::new()),
        Some("probe") => probe(&args[1..]),
        Some("probe-loop") => probe_loop(&args[1..]).map(|_| String::new()),
        _ => Err(
            "usage: weft-agnhost serve [--tcp PORT]... [--udp PORT]... [--log-peers] | \
                  weft-agnhost probe tcp|udp HOST:PORT [--timeout-ms N] | \
                  weft-agnhost probe-loop [--tcp HOST:PORT]... [--udp HOST:PORT]... [--interval-ms N]"
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
