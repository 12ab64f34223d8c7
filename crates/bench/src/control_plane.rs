//! Suite `control-plane`: one real weftd (vxlan backend, etcd datastore) in its own netns, with
//! a real etcd on that netns' loopback pre-populated with N synthetic peer records, written
//! exactly as the agent's etcd datastore writes them (`<prefix>/subnets/10.0.3.0-24` holding
//! `{"name","underlayIp","podCidrs","vtepMac"}`) through etcd's HTTP/JSON gateway. Measured,
//! from the kernel (netlink read-backs, polling):
//!
//! * agent start -> every route, neighbour and FDB entry of the N peers programmed;
//! * one new peer key put -> its route present (the route is programmed last);
//! * the agent's peak RSS (VmHWM);
//! * the agent's own account: its JSON log (time to register, reconcile `took_ms`) and
//!   `weft_kernel_objects` from /metrics.
//!
//! Sizes are interleaved round by round; every run gets a fresh netns, etcd and agent.

use crate::stats::{spread, Spread};
use crate::util::{free_port, http, proc_status_kib, wait_for, ChildGuard};
use base64::prelude::{Engine, BASE64_STANDARD};
use ipnet::{IpNet, Ipv4Net};
use serde::Serialize;
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use weft_lab::Netns;
use weft_netops::netlink::NUD_PERMANENT;
use weft_netops::{IpFamily, Netlink, VethSpec};

pub const PREFIX: &str = "/weft/network";
const NETWORK: &str = "10.0.0.0/8";
const SUBNET_LEN: u8 = 24;
const VTEP: &str = "weft.1";
const RTPROT_WEFT: u8 = 87;
const AGENT_LISTEN: &str = "127.0.0.1:9946";
/// Puts per etcd transaction while pre-populating (etcd started with --max-txn-ops above it).
const TXN_OPS: usize = 500;

/// The targets the issue sets; printed next to the figures, never asserted.
pub const TARGET_PROGRAMMED_S: f64 = 2.0;
pub const TARGET_NEW_PEER_MS: f64 = 100.0;
pub const TARGET_RSS_MIB: f64 = 30.0;

#[derive(Debug, Clone)]
pub struct Options {
    pub sizes: Vec<usize>,
    pub rounds: usize,
    pub new_peers: usize,
    pub bin_dir: PathBuf,
    /// Extra arguments for `weftd run`.
    pub agent_args: Vec<String>,
    /// Keep each run's agent log here (default: a temp dir, removed).
    pub log_dir: Option<PathBuf>,
}

/// One agent run.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub peers: usize,
    /// Agent spawn -> all N routes, neighbours and FDB entries in the kernel.
    pub programmed_s: f64,
    /// Put of one new peer key -> its route in the kernel, per new peer.
    pub new_peer_ms: Vec<f64>,
    pub vm_hwm_kib: u64,
    /// VmRSS when the VTEP first appeared (registered, before the big reconcile), when all
    /// peers were programmed, and at the end.
    pub rss_start_kib: u64,
    pub rss_programmed_kib: u64,
    pub vm_rss_kib: u64,
    /// From the agent's log, seconds after its first line: registered with etcd, first
    /// reconcile done, and that reconcile's own `took_ms`.
    pub log_registered_s: Option<f64>,
    pub log_first_reconcile_s: Option<f64>,
    pub log_first_reconcile_took_ms: Option<f64>,
    /// `took_ms` of the reconciles the new peers triggered.
    pub log_incremental_took_ms: Vec<f64>,
    /// weft_kernel_objects lines of /metrics at the end.
    pub metrics: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SizeRow {
    pub peers: usize,
    pub programmed_s: Spread,
    pub new_peer_ms: Spread,
    pub vm_hwm_mib: Spread,
    pub rss_start_mib: Spread,
    pub rss_programmed_mib: Spread,
    pub rss_end_mib: Spread,
    pub first_reconcile_took_ms: Spread,
    pub incremental_reconcile_took_ms: Spread,
    pub registered_s: Spread,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub rows: Vec<SizeRow>,
    pub runs: Vec<RunResult>,
}

/// The i-th /24 of 10.0.0.0/8 (the agent's etcd layout: index i <-> subnet i).
fn subnet(i: usize) -> Ipv4Net {
    let base = u32::from(Ipv4Addr::new(10, 0, 0, 0));
    Ipv4Net::new(Ipv4Addr::from(base + ((i as u32) << 8)), SUBNET_LEN).unwrap()
}

fn key(i: usize) -> String {
    format!(
        "{PREFIX}/subnets/{}",
        subnet(i).to_string().replace('/', "-")
    )
}

/// A synthetic peer as the agent's datastore writes it (crates/agent/src/node.rs NodeRecord).
fn record(i: usize) -> Value {
    let ul = Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 0)) + i as u32);
    json!({
        "name": format!("peer-{i:05}"),
        "underlayIp": ul.to_string(),
        "podCidrs": [subnet(i).to_string()],
        "vtepMac": format!("02:42:00:{:02x}:{:02x}:{:02x}", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff),
    })
}

fn b64(s: &[u8]) -> String {
    BASE64_STANDARD.encode(s)
}

struct Etcd {
    ns: Netns,
    addr: SocketAddr,
    _proc: ChildGuard,
    _data: PathBuf,
}

impl Etcd {
    fn post(&self, path: &str, body: &Value) -> Result<Value, String> {
        let (code, text) = http(
            self.ns.handle(),
            self.addr,
            "POST",
            path,
            body.to_string().as_bytes(),
            Duration::from_secs(10),
        )
        .map_err(|e| format!("etcd {path}: {e}"))?;
        if code != 200 {
            return Err(format!("etcd {path}: HTTP {code}: {}", text.trim()));
        }
        serde_json::from_str(&text).map_err(|e| format!("etcd {path}: {e}: {text}"))
    }

    fn put(&self, key: &str, value: &Value) -> Result<(), String> {
        self.post(
            "/v3/kv/put",
            &json!({ "key": b64(key.as_bytes()), "value": b64(value.to_string().as_bytes()) }),
        )
        .map(|_| ())
    }

    fn put_many(&self, kvs: &[(String, Value)]) -> Result<(), String> {
        for chunk in kvs.chunks(TXN_OPS) {
            let ops: Vec<Value> = chunk
                .iter()
                .map(|(k, v)| {
                    json!({ "requestPut": {
                        "key": b64(k.as_bytes()),
                        "value": b64(v.to_string().as_bytes()),
                    }})
                })
                .collect();
            let resp = self.post("/v3/kv/txn", &json!({ "success": ops }))?;
            if resp["succeeded"] != Value::Bool(true) {
                return Err(format!("etcd txn did not succeed: {resp}"));
            }
        }
        Ok(())
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self._data);
    }
}

fn start_etcd(ns: Netns, dir: &Path) -> Result<Etcd, String> {
    let port = free_port(ns.handle()).map_err(|e| format!("free port: {e}"))?;
    let peer_port = free_port(ns.handle()).map_err(|e| format!("free port: {e}"))?;
    let peer_port = if peer_port == port {
        port + 1
    } else {
        peer_port
    };
    let data = dir.join("etcd");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let spec = weft_lab::etcd::EtcdSpec {
        name: "bench".into(),
        data_dir: data.clone(),
        listen_client: vec![addr],
        advertise_client: addr,
        peer: format!("127.0.0.1:{peer_port}").parse().unwrap(),
        extra_args: vec![format!("--max-txn-ops={}", TXN_OPS * 2)],
        log: dir.join("etcd.log"),
    };
    let mut opts = weft_lab::proc::Spawn::new("etcd");
    opts.own_group = false;
    let proc = weft_lab::etcd::start(ns.handle(), &spec, opts).map_err(|e| e.to_string())?;
    Ok(Etcd {
        ns,
        addr,
        _proc: proc,
        _data: data,
    })
}

/// The underlay the agent needs: a veth pair inside the netns (both ends there), up, with
/// 192.168.200.1/16 on `eth0`. Peers' underlay IPs (172.16/12) only end up in FDB entries.
pub(crate) fn make_underlay(ns: &Netns) -> Result<(), String> {
    let mut nl = Netlink::in_netns(ns.handle()).map_err(|e| e.to_string())?;
    let pair = nl
        .create_veth(&VethSpec {
            host_name: "eth0".into(),
            peer_name: "ul-peer".into(),
            mtu: Some(1500),
            ..Default::default()
        })
        .map_err(|e| format!("create underlay veth: {e}"))?;
    nl.add_address(pair.host_index, "192.168.200.1/16".parse().unwrap(), true)
        .map_err(|e| e.to_string())?;
    nl.set_link_up(pair.peer_index).map_err(|e| e.to_string())?;
    nl.set_link_up(pair.host_index).map_err(|e| e.to_string())?;
    Ok(())
}

/// weft's routes (protocol 87) in the main table.
pub(crate) fn count_routes(nl: &mut Netlink) -> Result<usize, String> {
    Ok(nl
        .list_routes(Some(IpFamily::V4), Some(254))
        .map_err(|e| e.to_string())?
        .iter()
        .filter(|r| r.protocol == RTPROT_WEFT)
        .count())
}

/// Counts of programmed peer objects: (routes proto 87, permanent neighbours, FDB entries).
fn counts(nl: &mut Netlink, vtep: u32) -> Result<(usize, usize, usize), String> {
    let routes = count_routes(nl)?;
    let neigh = nl
        .list_neighbours(Some(vtep))
        .map_err(|e| e.to_string())?
        .iter()
        .filter(|n| n.state & NUD_PERMANENT != 0)
        .count();
    let fdb = nl
        .list_fdb(vtep)
        .map_err(|e| e.to_string())?
        .iter()
        .filter(|f| f.dst.is_some() && f.mac != [0; 6])
        .count();
    Ok((routes, neigh, fdb))
}

/// Seconds since midnight of a tracing JSON timestamp ("2025-01-02T11:22:33.123456Z").
fn log_time(line: &Value) -> Option<f64> {
    let ts = line["timestamp"].as_str()?;
    let t = ts.split('T').nth(1)?.trim_end_matches('Z');
    let mut parts = t.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.split('+').next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

struct LogFacts {
    registered_s: Option<f64>,
    first_reconcile_s: Option<f64>,
    first_took_ms: Option<f64>,
    later_took_ms: Vec<f64>,
}

fn read_log(path: &Path) -> LogFacts {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let t0 = lines.iter().find_map(log_time);
    let rel = |l: &Value| Some(log_time(l)? - t0?);
    let msg = |l: &Value| l["fields"]["message"].as_str().unwrap_or("").to_string();
    let registered_s = lines.iter().find(|l| msg(l) == "registered").and_then(rel);
    let reconciles: Vec<&Value> = lines.iter().filter(|l| msg(l) == "reconciled").collect();
    let took = |l: &Value| l["fields"]["took_ms"].as_f64();
    LogFacts {
        registered_s,
        first_reconcile_s: reconciles.first().and_then(|l| rel(l)),
        first_took_ms: reconciles.first().and_then(|l| took(l)),
        later_took_ms: reconciles.iter().skip(1).filter_map(|l| took(l)).collect(),
    }
}

fn one_run(opts: &Options, peers: usize, run_no: usize) -> Result<RunResult, String> {
    let ns = Netns::new("wb-cp").map_err(|e| format!("create netns: {e}"))?;
    let dir = std::env::temp_dir().join(format!("weft-bench-{}", ns.name));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let result = (|| {
        make_underlay(&ns)?;
        let etcd = start_etcd(ns, &dir)?;
        let endpoint = format!("http://{}", etcd.addr);
        etcd.put(
            &format!("{PREFIX}/config"),
            &json!({ "network": NETWORK, "subnetLen": SUBNET_LEN }),
        )?;
        let kvs: Vec<(String, Value)> = (1..=peers).map(|i| (key(i), record(i))).collect();
        let t = Instant::now();
        etcd.put_many(&kvs)?;
        eprintln!(
            "control-plane: run {run_no}: {peers} peer records written in {:.2} s",
            t.elapsed().as_secs_f64()
        );

        let log = dir.join("weftd.log");
        let mut cmd = etcd.ns.command(opts.bin_dir.join("weftd"));
        let mut args: Vec<String> = [
            "run",
            "--node-name",
            "bench-node",
            "--datastore",
            "etcd",
            "--etcd-endpoints",
            &endpoint,
            "--etcd-prefix",
            PREFIX,
            "--backend",
            "vxlan",
            "--firewall",
            "nftables",
            "--underlay-interface",
            "eth0",
            "--listen",
            AGENT_LISTEN,
            "--resync-interval",
            "30s",
            "--log-format",
            "json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(crate::util::agent_dir_args(&dir)?);
        args.push("--cni-bin-dir".into());
        args.push(opts.bin_dir.display().to_string());
        args.extend(opts.agent_args.iter().cloned());
        cmd.args(&args).env("WEFT_LOG", "info");

        let mut nl = Netlink::in_netns(etcd.ns.handle()).map_err(|e| e.to_string())?;
        let start = Instant::now();
        let mut agent = ChildGuard::start("weftd", cmd, Some(&log)).map_err(|e| e.to_string())?;
        // Profiling aid: WEFT_BENCH_PERF_DIR=dir attaches `perf record -g` to the agent.
        let mut perf = match std::env::var_os("WEFT_BENCH_PERF_DIR") {
            Some(d) => {
                let out = PathBuf::from(d).join(format!("perf-{peers}-run{run_no}.data"));
                let mut p = std::process::Command::new("perf");
                p.args([
                    "record",
                    "-g",
                    "-F",
                    "1999",
                    "-p",
                    &agent.pid().to_string(),
                    "-o",
                ])
                .arg(&out);
                Some(ChildGuard::start("perf", p, None).map_err(|e| e.to_string())?)
            }
            None => None,
        };
        let tail = |log: &Path| {
            let t = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = t.lines().collect();
            lines[lines.len().saturating_sub(15)..].join("\n")
        };
        // All N peers' objects in the kernel.
        let mut vtep = None;
        let mut rss_start_kib = 0;
        let mut last = (0, 0, 0);
        let done = wait_for(Duration::from_secs(120), Duration::from_millis(10), || {
            if agent.exited().is_some() {
                return Some(false);
            }
            let ix = match vtep {
                Some(ix) => ix,
                None => {
                    let ix = nl.get_link_by_name(VTEP).ok().flatten()?.index;
                    vtep = Some(ix);
                    rss_start_kib = proc_status_kib(agent.pid(), "VmRSS").unwrap_or(0);
                    ix
                }
            };
            // The agent programs FDB and neighbours before the routes that use them, so poll
            // the route count only (a route dump does not hold the RTNL lock the agent needs;
            // an FDB dump does) and check the rest once the routes are all there.
            last.0 = count_routes(&mut nl).ok()?;
            if last.0 < peers {
                return None;
            }
            last = counts(&mut nl, ix).ok()?;
            (last.0 >= peers && last.1 >= peers && last.2 >= peers).then_some(true)
        });
        let programmed_s = start.elapsed().as_secs_f64();
        let rss_programmed_kib = proc_status_kib(agent.pid(), "VmRSS").unwrap_or(0);
        if done != Some(true) {
            return Err(format!(
                "weftd did not program {peers} peers (have routes/neigh/fdb {last:?}); log {}:\n{}",
                log.display(),
                tail(&log)
            ));
        }
        let vtep = vtep.unwrap();

        // New peers, one at a time.
        let mut new_peer_ms = Vec::new();
        for k in 0..opts.new_peers {
            // Index N+1 is the agent's own subnet (the lowest free one).
            let i = peers + 2 + k;
            let cidr = subnet(i);
            let probe = IpAddr::V4(Ipv4Addr::from(u32::from(cidr.network()) + 5));
            let gw = IpAddr::V4(cidr.network());
            let t = Instant::now();
            etcd.put(&key(i), &record(i))?;
            let seen = wait_for(Duration::from_secs(10), Duration::from_micros(500), || {
                let r = nl.route_get(probe).ok()?;
                (r.oif == Some(vtep) && r.gateway == Some(gw)).then_some(())
            });
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            if seen.is_none() {
                return Err(format!(
                    "route to new peer {} not programmed within 10 s; log:\n{}",
                    IpNet::V4(cidr),
                    tail(&log)
                ));
            }
            new_peer_ms.push(ms);
            std::thread::sleep(Duration::from_millis(150));
        }

        if let Some(p) = perf.as_mut() {
            // SAFETY: plain kill(2) on our own child; perf writes its file on SIGINT.
            unsafe { libc::kill(p.pid() as i32, libc::SIGINT) };
            wait_for(Duration::from_secs(20), Duration::from_millis(50), || {
                p.exited().map(|_| ())
            });
        }
        let vm_hwm_kib = proc_status_kib(agent.pid(), "VmHWM").unwrap_or(0);
        let vm_rss_kib = proc_status_kib(agent.pid(), "VmRSS").unwrap_or(0);
        let listen: SocketAddr = AGENT_LISTEN.parse().unwrap();
        let metrics = http(
            etcd.ns.handle(),
            listen,
            "GET",
            "/metrics",
            b"",
            Duration::from_secs(5),
        )
        .map(|(_, body)| {
            body.lines()
                .filter(|l| l.starts_with("weft_kernel_objects{"))
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
        agent.stop(Duration::from_secs(5));
        drop(agent);
        let facts = read_log(&log);
        if let Some(keep) = &opts.log_dir {
            let _ = std::fs::create_dir_all(keep);
            let _ = std::fs::copy(&log, keep.join(format!("weftd-{peers}-run{run_no}.log")));
        }
        drop(etcd);
        Ok(RunResult {
            peers,
            programmed_s,
            new_peer_ms,
            vm_hwm_kib,
            rss_start_kib,
            rss_programmed_kib,
            vm_rss_kib,
            log_registered_s: facts.registered_s,
            log_first_reconcile_s: facts.first_reconcile_s,
            log_first_reconcile_took_ms: facts.first_took_ms,
            log_incremental_took_ms: facts.later_took_ms,
            metrics,
        })
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

pub fn run(opts: &Options) -> Result<Report, String> {
    let mut runs = Vec::new();
    let mut n = 0;
    for round in 0..opts.rounds {
        for &peers in &opts.sizes {
            n += 1;
            eprintln!(
                "control-plane: round {}/{}: {peers} peers",
                round + 1,
                opts.rounds
            );
            let r = one_run(opts, peers, n)?;
            eprintln!(
                "control-plane:   programmed in {:.2} s, new peer p50 {:.1} ms, VmHWM {:.1} MiB",
                r.programmed_s,
                spread(&r.new_peer_ms).median,
                r.vm_hwm_kib as f64 / 1024.0
            );
            runs.push(r);
        }
    }
    let rows = opts
        .sizes
        .iter()
        .map(|&peers| {
            let of: Vec<&RunResult> = runs.iter().filter(|r| r.peers == peers).collect();
            let all = |f: &dyn Fn(&RunResult) -> Vec<f64>| -> Spread {
                spread(&of.iter().flat_map(|r| f(r)).collect::<Vec<_>>())
            };
            SizeRow {
                peers,
                programmed_s: all(&|r| vec![r.programmed_s]),
                new_peer_ms: all(&|r| r.new_peer_ms.clone()),
                vm_hwm_mib: all(&|r| vec![r.vm_hwm_kib as f64 / 1024.0]),
                rss_start_mib: all(&|r| vec![r.rss_start_kib as f64 / 1024.0]),
                rss_programmed_mib: all(&|r| vec![r.rss_programmed_kib as f64 / 1024.0]),
                rss_end_mib: all(&|r| vec![r.vm_rss_kib as f64 / 1024.0]),
                first_reconcile_took_ms: all(&|r| {
                    r.log_first_reconcile_took_ms.into_iter().collect()
                }),
                incremental_reconcile_took_ms: all(&|r| r.log_incremental_took_ms.clone()),
                registered_s: all(&|r| r.log_registered_s.into_iter().collect()),
            }
        })
        .collect();
    Ok(Report { rows, runs })
}

fn fmt(s: &Spread, prec: usize) -> String {
    format!("{:.p$} ({:.p$}-{:.p$})", s.median, s.min, s.max, p = prec)
}

pub fn print(r: &Report, opts: &Options) {
    println!(
        "suite control-plane: weftd (release, vxlan, etcd datastore) with N synthetic peers; {} \
         interleaved rounds, {} new peers per run; median (min-max)",
        opts.rounds, opts.new_peers
    );
    println!(
        "{:>6} {:>22} {:>22} {:>20} | agent's log: {:>16} {:>22} {:>22}",
        "peers",
        "all programmed s",
        "one new peer ms",
        "VmHWM MiB",
        "registered s",
        "1st reconcile ms",
        "incr. reconcile ms"
    );
    for row in &r.rows {
        println!(
            "{:>6} {:>22} {:>22} {:>20} | {:>29} {:>22} {:>22}",
            row.peers,
            fmt(&row.programmed_s, 2),
            fmt(&row.new_peer_ms, 1),
            fmt(&row.vm_hwm_mib, 1),
            fmt(&row.registered_s, 2),
            fmt(&row.first_reconcile_took_ms, 0),
            fmt(&row.incremental_reconcile_took_ms, 0),
        );
    }
    println!(
        "targets: {} peers programmed <= {TARGET_PROGRAMMED_S} s; one new peer <= \
         {TARGET_NEW_PEER_MS} ms; RSS <= {TARGET_RSS_MIB} MiB",
        opts.sizes.iter().max().copied().unwrap_or(0)
    );
    for row in &r.rows {
        println!(
            "  {:>5} peers: programmed {:.2} s [{}], new peer {:.1} ms [{}], VmHWM {:.1} MiB [{}]",
            row.peers,
            row.programmed_s.median,
            verdict(row.programmed_s.median <= TARGET_PROGRAMMED_S),
            row.new_peer_ms.median,
            verdict(row.new_peer_ms.median <= TARGET_NEW_PEER_MS),
            row.vm_hwm_mib.max,
            verdict(row.vm_hwm_mib.max <= TARGET_RSS_MIB),
        );
    }
    println!("agent VmRSS (MiB, median): at start-up (VTEP up) / all programmed / end; VmHWM");
    for row in &r.rows {
        println!(
            "  {:>5} peers: {:.1} / {:.1} / {:.1}; {:.1}",
            row.peers,
            row.rss_start_mib.median,
            row.rss_programmed_mib.median,
            row.rss_end_mib.median,
            row.vm_hwm_mib.median
        );
    }
    if let Some(last) = r.runs.last() {
        println!("/metrics of the last run ({} peers):", last.peers);
        for m in &last.metrics {
            println!("  {m}");
        }
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "meets target"
    } else {
        "MISSES target"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_records_match_the_agents_layout() {
        assert_eq!(key(1), "/weft/network/subnets/10.0.1.0-24");
        assert_eq!(key(300), "/weft/network/subnets/10.1.44.0-24");
        let r = record(300);
        assert_eq!(r["podCidrs"][0], "10.1.44.0/24");
        assert_eq!(r["underlayIp"], "172.16.1.44");
        assert_eq!(r["vtepMac"], "02:42:00:00:01:2c");
    }

    #[test]
    fn log_timestamps() {
        let l = json!({ "timestamp": "2025-01-02T01:02:03.500000Z" });
        assert_eq!(log_time(&l), Some(3723.5));
    }
}
