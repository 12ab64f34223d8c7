//! weftd's operator commands other than `run`: init-etcd, status, cleanup, install, uninstall.

use crate::agent::Status;
use crate::backend::PathKind;
use crate::datastore::etcd;
use crate::{cniconf, http, vxlan};
use clap::{Args, ValueEnum};
use ipnet::IpNet;
use std::net::SocketAddr;
use std::path::PathBuf;
use weft_firewall::{DriverKind, IptablesVariant};
use weft_netops::Netlink;

#[derive(Debug, Clone, Args)]
pub struct InitEtcd {
    #[command(flatten)]
    pub etcd: crate::config::EtcdArgs,
    /// The cluster's IPv4 pod network.
    #[arg(long)]
    pub network: IpNet,
    /// Prefix length of each node's subnet.
    #[arg(long, default_value_t = 24)]
    pub subnet_len: u8,
    #[arg(long)]
    pub ipv6_network: Option<IpNet>,
    #[arg(long)]
    pub ipv6_subnet_len: Option<u8>,
}

pub async fn init_etcd(a: InitEtcd) -> Result<(), String> {
    let cfg = etcd::ClusterConfig {
        network: a.network,
        subnet_len: a.subnet_len,
        ipv6_network: a.ipv6_network,
        ipv6_subnet_len: a.ipv6_subnet_len,
    };
    etcd::write_cluster_config(&a.etcd.etcd_endpoints, &a.etcd.etcd_prefix, &cfg)
        .await
        .map_err(|e| e.to_string())
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "NO"
    }
}

pub fn status(listen: SocketAddr, json: bool) -> Result<(), String> {
    let (code, body) = http::get_blocking(listen, "/status").map_err(|e| {
        format!("cannot reach weftd on {listen}: {e} (is it running? see --listen)")
    })?;
    if code != 200 {
        return Err(format!("weftd on {listen} answered {code}: {body}"));
    }
    if json {
        println!("{body}");
        return Ok(());
    }
    // The same type weftd serves: server and CLI cannot drift apart.
    let st: Status = serde_json::from_str(&body).map_err(|e| format!("bad /status: {e}"))?;
    print!("{}", render(&st));
    Ok(())
}

fn join<T: std::fmt::Display>(items: &[T], sep: &str) -> String {
    items.iter().map(T::to_string).collect::<Vec<_>>().join(sep)
}

fn render(s: &Status) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "node:        {}", s.node);
    let _ = writeln!(
        o,
        "ready:       {}{}",
        yes_no(s.ready),
        s.waiting_for
            .as_deref()
            .map(|w| format!(" (waiting for {w})"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        o,
        "datastore:   {} ({}){}",
        s.datastore,
        if s.datastore_connected {
            "connected"
        } else {
            "DISCONNECTED"
        },
        s.datastore_error
            .as_deref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default()
    );
    let backend = s.backend.and_then(|b| b.to_possible_value());
    let _ = writeln!(
        o,
        "backend:     {}",
        backend.as_ref().map_or("-", |v| v.get_name())
    );
    if let Some(u) = &s.underlay {
        let _ = writeln!(
            o,
            "underlay:    {} {} mtu {}",
            u.interface, u.address, u.mtu
        );
    }
    let _ = writeln!(
        o,
        "pod CIDRs:   {}   (cluster: {})   pod MTU {}",
        join(&s.pod_cidrs, ", "),
        join(&s.cluster_cidrs, ", "),
        s.pod_mtu.map(|m| m.to_string()).unwrap_or("-".into())
    );
    if let Some(v) = &s.vtep {
        let _ = writeln!(
            o,
            "vtep:        {} mac {} vni {} port {}",
            v.device, v.mac, v.vni, v.port
        );
    }
    let _ = writeln!(
        o,
        "cni config:  {}",
        s.cni_config.as_deref().unwrap_or("NOT WRITTEN")
    );
    match &s.firewall {
        Some(f) => {
            let _ = writeln!(
                o,
                "firewall:    {} rules in place: {}",
                f.driver,
                yes_no(f.in_place)
            );
            for p in f.problems.iter().chain(&f.warnings) {
                let _ = writeln!(o, "             ! {p}");
            }
        }
        None if s.firewall_mode == "none" => {
            let _ = writeln!(o, "firewall:    none (--firewall none)");
        }
        // Rules are set up once the pod CIDR is known.
        None => {
            let _ = writeln!(o, "firewall:    {} (not set up yet)", s.firewall_mode);
        }
    }
    if let Some(p) = &s.policy {
        let _ = writeln!(
            o,
            "policy:      {} policies, {} pods ({} here); {}{}",
            p.policies,
            p.pods,
            p.local_pods,
            match (p.synced, p.programmed) {
                (false, _) => "not synced yet (nothing enforced by this weftd yet)",
                (true, true) => "programmed",
                (true, false) => "NOT programmed",
            },
            p.last_error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
        for i in &p.invalid {
            let _ = writeln!(o, "             ! ignored {i}");
        }
    }
    if let Some(r) = &s.last_reconcile {
        let _ = writeln!(
            o,
            "\n{:<16} {:<16} {:<24} {:<8} {:<6} {:<6} {:<4}",
            "PEER", "UNDERLAY", "POD CIDRS", "PATH", "ROUTE", "NEIGH", "FDB"
        );
        for p in &r.peers {
            let l2 = |programmed: bool| {
                if p.path == PathKind::HostGw {
                    "-"
                } else {
                    yes_no(programmed)
                }
            };
            let _ = writeln!(
                o,
                "{:<16} {:<16} {:<24} {:<8} {:<6} {:<6} {:<4}",
                p.name,
                p.underlay_ip,
                join(&p.pod_cidrs, ","),
                p.path.as_str(),
                yes_no(p.routes_programmed),
                l2(p.neighbours_programmed),
                l2(p.fdb_programmed),
            );
            if let Some(problem) = &p.problem {
                let _ = writeln!(o, "  ! {problem}");
            }
        }
        let _ = writeln!(
            o,
            "\nkernel objects desired/programmed: routes {}/{} neighbours {}/{} fdb {}/{}",
            r.desired.routes,
            r.programmed.routes,
            r.desired.neighbours,
            r.programmed.neighbours,
            r.desired.fdb,
            r.programmed.fdb
        );
        for e in &r.errors {
            let _ = writeln!(o, "  ! {e}");
        }
    } else {
        let _ = writeln!(o, "\npeers:       not reconciled yet");
    }
    for p in &s.problems {
        let _ = writeln!(o, "problem:     {p}");
    }
    o
}

#[derive(Debug, Clone, Args)]
pub struct Cleanup {
    #[arg(long, env = "WEFT_VXLAN_VNI", default_value_t = 1)]
    pub vxlan_vni: u32,
    #[arg(long, env = "WEFT_BRIDGE", default_value = weft_netops::bridge::DEFAULT_BRIDGE)]
    pub bridge: String,
    #[arg(long, env = "WEFT_CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    #[arg(long, env = "WEFT_IPAM_DATA_DIR", default_value = weft_ipam::DEFAULT_DATA_DIR)]
    pub ipam_data_dir: PathBuf,
    #[arg(long, env = "WEFT_STATE_DIR", default_value = "/var/lib/weft")]
    pub state_dir: PathBuf,
}

/// Removes everything weft made on this node; keeps going past errors and reports them all.
pub fn cleanup(a: &Cleanup) -> Result<(), String> {
    let mut errors = Vec::new();
    let mut nl = Netlink::new().map_err(|e| e.to_string())?;
    if let Err(e) = crate::reconcile::remove_all_routes(&mut nl) {
        errors.push(format!("routes: {e}"));
    }
    // Pod veths (alias "weft:..."), the VTEP and the bridge.
    match nl.list_links() {
        Ok(links) => {
            for l in links {
                let ours = l
                    .alias
                    .as_deref()
                    .is_some_and(|a| a.starts_with(weft_netops::names::ALIAS_PREFIX))
                    || l.name == vxlan::device_name(a.vxlan_vni)
                    || l.name == a.bridge;
                if ours {
                    if let Err(e) = nl.delete_link(l.index) {
                        if !e.is_not_found() {
                            errors.push(format!("delete {}: {e}", l.name));
                        }
                    }
                }
            }
        }
        Err(e) => errors.push(format!("list links: {e}")),
    }
    for kind in [
        DriverKind::Nftables,
        DriverKind::Iptables(IptablesVariant::Nft),
        DriverKind::Iptables(IptablesVariant::Legacy),
    ] {
        // A driver whose tools are not installed has nothing to remove.
        if let Ok(fw) = weft_firewall::driver(kind) {
            if let Err(e) = fw.remove() {
                errors.push(format!("firewall {}: {e}", fw.name()));
            }
        }
    }
    // The NetworkPolicy table (absent is fine; without nft, as for the driver, there is none).
    if weft_firewall::driver(DriverKind::Nftables).is_ok() {
        if let Err(e) = weft_policy::Applier::new().remove() {
            errors.push(format!("table inet {}: {e}", weft_policy::TABLE));
        }
    }
    for path in [cniconf::path(&a.cni_conf_dir)] {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                errors.push(format!("{}: {e}", path.display()))
            }
            _ => {}
        }
    }
    for dir in [&a.ipam_data_dir, &a.state_dir] {
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                errors.push(format!("{}: {e}", dir.display()))
            }
            _ => {}
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!("cleanup incomplete: {}", errors.join("; ")))
    }
}

#[derive(Debug, Clone, Args)]
pub struct Install {
    /// The plugin binary to install (default: `weft` next to this weftd).
    #[arg(long, env = "WEFT_PLUGIN_SOURCE")]
    pub plugin_source: Option<PathBuf>,
    #[arg(long, env = "WEFT_CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
}

fn plugin_source(a: &Install) -> Result<PathBuf, String> {
    match &a.plugin_source {
        Some(p) => Ok(p.clone()),
        None => std::env::current_exe()
            .map_err(|e| e.to_string())
            .map(|exe| exe.with_file_name("weft")),
    }
}

/// Copies the plugin into the CNI bin dir atomically: a runtime exec'ing it mid-copy must see
/// the old binary or the new one, never half of one.
pub fn install(a: &Install) -> Result<(), String> {
    let src = plugin_source(a)?;
    let target = a.cni_bin_dir.join("weft");
    let binary = std::fs::read(&src).map_err(|e| format!("read {}: {e}", src.display()))?;
    crate::files::write_atomic(&target, &binary, 0o755)
        .map_err(|e| format!("install {}: {e}", target.display()))?;
    println!("installed {}", target.display());
    Ok(())
}

pub fn uninstall(a: &Install) -> Result<(), String> {
    let target = a.cni_bin_dir.join("weft");
    match std::fs::remove_file(&target) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(format!("{}: {e}", target.display()))
        }
        _ => Ok(()),
    }
}

#[derive(Debug, Clone, Args)]
pub struct TraceArgs {
    pub src: std::net::IpAddr,
    pub dst: std::net::IpAddr,
    /// The packet arrives from the underlay (continue a trace on the next node).
    #[arg(long)]
    pub arriving: bool,
    /// Where the agent serves /status (cluster network, firewall driver, peer names).
    #[arg(long, env = "WEFT_LISTEN", default_value = "127.0.0.1:9946")]
    pub listen: SocketAddr,
    /// Cluster network(s), when the agent is not reachable.
    #[arg(long = "cluster-cidr", value_delimiter = ',')]
    pub cluster_cidrs: Vec<IpNet>,
    #[arg(long, env = "WEFT_BRIDGE", default_value = weft_netops::bridge::DEFAULT_BRIDGE)]
    pub bridge: String,
    #[arg(long, env = "WEFT_VXLAN_VNI", default_value_t = 1)]
    pub vxlan_vni: u32,
    #[arg(long, env = "WEFT_IPAM_DATA_DIR", default_value = weft_ipam::DEFAULT_DATA_DIR)]
    pub ipam_data_dir: PathBuf,
    #[arg(long, value_parser = ["table", "json"], default_value = "table")]
    pub output: String,
    /// The destination port: a Service's port to follow through kube-proxy's DNAT (without
    /// it, every port of the Service), and the NetworkPolicy verdict for a new connection.
    #[arg(long)]
    pub port: Option<u16>,
    #[arg(long, value_parser = ["tcp", "udp", "sctp"], default_value = "tcp")]
    pub proto: String,
}

pub fn trace(a: &TraceArgs) -> Result<(), String> {
    let mut ctx = crate::trace::TraceContext {
        bridge: a.bridge.clone(),
        vxlan_vni: a.vxlan_vni,
        ipam_data_dir: a.ipam_data_dir.clone(),
        cluster_cidrs: a.cluster_cidrs.clone(),
        firewall: None,
        peers: Vec::new(),
        kube_proxy: None,
        port: a.port.map(|p| (a.proto.clone(), p)),
    };
    // The running agent knows the cluster network, its firewall driver and its peers.
    if let Ok((200, body)) = http::get_blocking(a.listen, "/status") {
        let s: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if ctx.cluster_cidrs.is_empty() {
            ctx.cluster_cidrs = s["cluster_cidrs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c.as_str()?.parse().ok())
                .collect();
        }
        ctx.firewall = s["firewall"]["driver"].as_str().map(String::from);
        if let Some(vni) = s["vtep"]["vni"].as_u64() {
            ctx.vxlan_vni = vni as u32;
        }
        ctx.peers = s["last_reconcile"]["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                Some((
                    p["name"].as_str()?.to_string(),
                    p["underlay_ip"].as_str()?.parse().ok()?,
                ))
            })
            .collect();
    } else if ctx.cluster_cidrs.is_empty() {
        return Err(format!(
            "weftd is not reachable on {}: pass --cluster-cidr so the trace knows the cluster network",
            a.listen
        ));
    }
    // A destination outside the cluster network may be a Service: kube-proxy's rules.
    if !ctx.cluster_cidrs.iter().any(|c| c.contains(&a.dst)) {
        match crate::kubeproxy::read_rules(a.dst.is_ipv6()) {
            Ok(rules) => ctx.kube_proxy = rules,
            Err(e) => eprintln!("weftd trace: kube-proxy's rules not read: {e}"),
        }
    }
    let mut nl = Netlink::new().map_err(|e| e.to_string())?;
    let t = crate::trace::trace(&mut nl, &ctx, a.src, a.dst, a.arriving);
    // The NetworkPolicy verdict, from the model weftd compiles its table from; through a
    // Service, for each endpoint (policies see the packet after kube-proxy's DNAT).
    let mut verdicts: Vec<(String, String)> = Vec::new();
    if let Some(port) = a.port {
        let mut targets: Vec<(std::net::IpAddr, u16)> = t
            .services
            .iter()
            .flat_map(|s| s.endpoints.iter().map(|e| (e.ip, e.port)))
            .collect();
        if targets.is_empty() {
            targets.push((a.dst, port));
        }
        for (dst, port) in targets {
            let path = format!(
                "/policy/verdict?src={}&dst={dst}&proto={}&port={port}",
                a.src, a.proto
            );
            let verdict = match http::get_blocking(a.listen, &path) {
                Ok((_, answer)) => answer.trim().to_string(),
                Err(e) => format!("weftd on {} not reachable: {e}", a.listen),
            };
            verdicts.push((format!("{dst}:{port}"), verdict));
        }
    }
    if a.output == "json" {
        // One JSON document: the verdicts go inside it, not after it.
        let mut doc = serde_json::to_value(&t).expect("serializes");
        if !verdicts.is_empty() {
            doc["policy"] = verdicts
                .iter()
                .map(|(to, v)| serde_json::json!({ "to": to, "verdict": v }))
                .collect();
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).expect("serializes")
        );
    } else {
        print!("{}", t.render());
        for (to, verdict) in &verdicts {
            if t.services.is_empty() {
                println!("policy:  {verdict}");
            } else {
                println!("policy (to {to}):  {verdict}");
            }
        }
    }
    if t.ok {
        Ok(())
    } else {
        Err("the path is broken".into())
    }
}

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// Probe the peers (the only check there is; kept explicit like `cilium-health`).
    #[arg(long)]
    pub peers: bool,
    #[arg(long, env = "WEFT_LISTEN", default_value = "127.0.0.1:9946")]
    pub listen: SocketAddr,
    #[arg(long, env = "WEFT_HEALTH_PORT", default_value_t = 9947)]
    pub health_port: u16,
    #[arg(long, value_parser = ["table", "json"], default_value = "table")]
    pub output: String,
}

#[derive(Debug, serde::Serialize)]
pub struct PeerProbe {
    pub peer: String,
    pub path: String,
    pub target: std::net::SocketAddr,
    pub ok: bool,
    pub rtt_ms: Option<f64>,
    pub error: Option<String>,
}

/// Connects to each peer's health echo on its pod gateway and reads its name back.
pub fn probe_peer(target: std::net::SocketAddr, expect: &str) -> Result<f64, String> {
    use std::io::Read;
    let start = std::time::Instant::now();
    let mut s = std::net::TcpStream::connect_timeout(&target, std::time::Duration::from_secs(2))
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    s.read_to_string(&mut line).map_err(|e| e.to_string())?;
    let rtt = start.elapsed().as_secs_f64() * 1000.0;
    match line.trim().strip_prefix("weft ") {
        Some(name) if name == expect => Ok(rtt),
        _ => Err(format!("unexpected answer {:?}", line.trim())),
    }
}

pub fn check(a: &CheckArgs) -> Result<(), String> {
    if !a.peers {
        return Err("nothing to check: pass --peers".into());
    }
    let (code, body) = http::get_blocking(a.listen, "/status")
        .map_err(|e| format!("cannot reach weftd on {}: {e}", a.listen))?;
    if code != 200 {
        return Err(format!("weftd answered {code}"));
    }
    let s: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    let mut probes = Vec::new();
    for p in s["last_reconcile"]["peers"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = p["name"].as_str().unwrap_or("?").to_string();
        let path = p["path"].as_str().unwrap_or("?").to_string();
        for cidr in p["pod_cidrs"].as_array().into_iter().flatten() {
            let Some(gw) = cidr
                .as_str()
                .and_then(|c| c.parse().ok())
                .as_ref()
                .and_then(crate::agent::pod_gateway)
            else {
                continue;
            };
            let target = std::net::SocketAddr::new(gw.addr(), a.health_port);
            let (ok, rtt_ms, error) = match probe_peer(target, &name) {
                Ok(rtt) => (true, Some(rtt), None),
                Err(e) => (false, None, Some(e)),
            };
            probes.push(PeerProbe {
                peer: name.clone(),
                path: path.clone(),
                target,
                ok,
                rtt_ms,
                error,
            });
        }
    }
    if a.output == "json" {
        println!(
            "{}",
            serde_json::to_string_pretty(&probes).expect("serializes")
        );
    } else {
        println!(
            "{:<16} {:<8} {:<28} {:<6} RTT",
            "PEER", "PATH", "TARGET", "OK"
        );
        for p in &probes {
            println!(
                "{:<16} {:<8} {:<28} {:<6} {}",
                p.peer,
                p.path,
                p.target.to_string(),
                if p.ok { "yes" } else { "NO" },
                p.rtt_ms
                    .map(|r| format!("{r:.2} ms"))
                    .or(p.error.clone())
                    .unwrap_or_default()
            );
        }
    }
    let failed = probes.iter().filter(|p| !p.ok).count();
    if failed == 0 {
        Ok(())
    } else {
        Err(format!("{failed} of {} peer probes failed", probes.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `weftd status` prints for the agent's own /status document (through JSON, as
    /// the CLI reads it).
    fn rendered(s: &crate::agent::Status) -> String {
        let back: Status = serde_json::from_str(&serde_json::to_string(s).unwrap()).unwrap();
        render(&back)
    }

    #[test]
    fn status_names_the_configured_firewall_before_it_is_set_up() {
        let mut s = crate::agent::Status {
            node: "n1".into(),
            datastore: "kubernetes".into(),
            firewall_mode: "auto".into(),
            waiting_for: Some("datastore kubernetes: this node's pod CIDR".into()),
            ..Default::default()
        };
        let out = rendered(&s);
        assert!(out.contains("firewall:    auto (not set up yet)"), "{out}");
        assert!(!out.contains("--firewall none"), "{out}");
        s.firewall_mode = "none".into();
        assert!(rendered(&s).contains("firewall:    none (--firewall none)"));
    }
}
