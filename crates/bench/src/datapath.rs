//! Suite `datapath`: single-stream TCP throughput (iperf3, 5 s per run) over five paths, built
//! side by side and measured round by round (interleaved, starting path rotated each round):
//!
//! * `veth`: a bare veth pair between two netns, the physical limit of this machine;
//! * `weft same-node`: two pods on one node through the weft plugin (MTU 1500);
//! * `bridge same-node`: the same through the reference bridge + host-local plugins;
//! * `host-gw cross-node` and `vxlan cross-node`: a pod on n1 to a pod on n2 of a 2-node lab
//!   (static datastore, real weftd, pods through the conflist the agent wrote).

use crate::stats::{spread, Spread};
use crate::util::{output, ChildGuard};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;
use weft_lab::ns::enter_command;
use weft_lab::plugin::Call;
use weft_lab::{Cluster, DatastoreKind, LabConfig, Netns, PluginRunner};
use weft_netops::netns::NetNs;
use weft_netops::{Netlink, VethSpec};

const PORT: u16 = 5201;

#[derive(Debug, Clone)]
pub struct Options {
    pub rounds: usize,
    pub seconds: u32,
    pub bin_dir: PathBuf,
    /// Only these paths (veth, weft, bridge, host-gw, vxlan, vxlan-jumbo); empty = the
    /// default five (all but vxlan-jumbo).
    pub only: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub path: &'static str,
    pub mtu: u32,
    pub gbit_s: Spread,
    pub ratio_to_veth: Option<f64>,
    pub retransmits: Spread,
    /// iperf3's own CPU use (process CPU time / wall time, %) on the sender and the receiver.
    pub sender_cpu_pct: Spread,
    pub receiver_cpu_pct: Spread,
    pub samples_gbit_s: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub rows: Vec<Row>,
    /// `ethtool -k` of the vxlan path's devices (device -> feature -> value), if ethtool is
    /// installed.
    pub vxlan_offloads: BTreeMap<String, BTreeMap<String, String>>,
    pub notes: Vec<String>,
}

/// What keeps a path alive until the end of the suite.
enum Holder {
    Veth(Netns, Netns),
    SameNode {
        node: Netns,
        pods: [Netns; 2],
        plugin: &'static str,
        conf: Vec<u8>,
        data_dir: PathBuf,
        bin_dir: PathBuf,
    },
    Lab(Box<Cluster>),
}

pub(crate) struct Path {
    pub name: &'static str,
    holder: Holder,
    pub server_ip: IpAddr,
    mtu: u32,
    server: Option<ChildGuard>,
    runs: Vec<Run>,
}

impl Path {
    /// The node netns of a same-node path (where weft's bridge and firewall live).
    pub fn node(&self) -> Option<&NetNs> {
        match &self.holder {
            Holder::SameNode { node, .. } => Some(node.handle()),
            _ => None,
        }
    }

    /// (server, client) netns.
    pub fn ends(&self) -> (&NetNs, &NetNs) {
        match &self.holder {
            Holder::Veth(a, b) => (a.handle(), b.handle()),
            Holder::SameNode { pods, .. } => (pods[0].handle(), pods[1].handle()),
            Holder::Lab(c) => (
                c.pod("srv").expect("pod srv").ns(),
                c.pod("cli").expect("pod cli").ns(),
            ),
        }
    }
}

impl Drop for Path {
    fn drop(&mut self) {
        self.server.take();
        if let Holder::SameNode {
            node,
            pods,
            plugin,
            conf,
            data_dir,
            bin_dir,
        } = &self.holder
        {
            let runner = PluginRunner::new(bin_dir, node.handle());
            for (i, pod) in pods.iter().enumerate() {
                let path = pod.path();
                let call = Call {
                    command: "DEL",
                    container_id: &format!("dp-{i}"),
                    netns: Some(&path),
                    ifname: "eth0",
                    args: None,
                };
                let _ = runner.exec(plugin, &call, conf);
            }
            let _ = std::fs::remove_dir_all(data_dir);
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Run {
    pub gbit_s: f64,
    retransmits: f64,
    sender_cpu: f64,
    receiver_cpu: f64,
}

fn eth0_mtu(ns: &NetNs) -> Result<u32, String> {
    let mut nl = Netlink::in_netns(ns).map_err(|e| e.to_string())?;
    nl.get_link_by_name("eth0")
        .map_err(|e| e.to_string())?
        .map(|l| l.mtu)
        .ok_or_else(|| "no eth0".to_string())
}

fn bare_veth() -> Result<Path, String> {
    let a = Netns::new("wb-dpa").map_err(|e| format!("create netns: {e}"))?;
    let b = Netns::new("wb-dpb").map_err(|e| format!("create netns: {e}"))?;
    let mut na = Netlink::in_netns(a.handle()).map_err(|e| e.to_string())?;
    let pair = na
        .create_veth(&VethSpec {
            host_name: "eth0".into(),
            peer_name: "eth0".into(),
            peer_netns: Some(b.handle()),
            mtu: Some(1500),
            ..Default::default()
        })
        .map_err(|e| format!("create veth: {e}"))?;
    let ip_a: IpAddr = "10.99.0.1".parse().unwrap();
    na.add_address(pair.host_index, "10.99.0.1/24".parse().unwrap(), true)
        .map_err(|e| e.to_string())?;
    na.set_link_up(pair.host_index).map_err(|e| e.to_string())?;
    let mut nb = Netlink::in_netns(b.handle()).map_err(|e| e.to_string())?;
    let ib = nb
        .get_link_by_name("eth0")
        .map_err(|e| e.to_string())?
        .ok_or("veth peer eth0 missing")?
        .index;
    nb.add_address(ib, "10.99.0.2/24".parse().unwrap(), true)
        .map_err(|e| e.to_string())?;
    nb.set_link_up(ib).map_err(|e| e.to_string())?;
    Ok(Path {
        name: "veth (bare)",
        holder: Holder::Veth(a, b),
        server_ip: ip_a,
        mtu: 1500,
        server: None,
        runs: Vec::new(),
    })
}

pub(crate) fn same_node(weft: bool, bin_dir: &std::path::Path) -> Result<Path, String> {
    let node = Netns::new("wb-dpnode").map_err(|e| format!("create netns: {e}"))?;
    let pods = [
        Netns::new("wb-dppod").map_err(|e| format!("create netns: {e}"))?,
        Netns::new("wb-dppod").map_err(|e| format!("create netns: {e}"))?,
    ];
    let data_dir = std::env::temp_dir().join(format!("weft-bench-{}", node.name));
    let ranges = json!([[{ "subnet": "10.79.0.0/24" }]]);
    let (plugin, conf) = if weft {
        (
            "weft",
            json!({
                "cniVersion": "1.0.0", "name": "dpnet", "type": "weft", "bridge": "weft0",
                "isGateway": true, "isDefaultGateway": true, "hairpinMode": true, "mtu": 1500,
                "ipam": { "type": "weft", "ranges": ranges, "dataDir": data_dir },
            }),
        )
    } else {
        (
            "bridge",
            json!({
                "cniVersion": "1.0.0", "name": "dpnet", "type": "bridge", "bridge": "cni0",
                "isGateway": true, "isDefaultGateway": true, "hairpinMode": true, "mtu": 1500,
                "ipam": { "type": "host-local", "ranges": ranges, "dataDir": data_dir },
            }),
        )
    };
    let conf = conf.to_string().into_bytes();
    let runner = PluginRunner::new(bin_dir, node.handle());
    let mut ips = Vec::new();
    for (i, pod) in pods.iter().enumerate() {
        let path = pod.path();
        let call = Call {
            command: "ADD",
            container_id: &format!("dp-{i}"),
            netns: Some(&path),
            ifname: "eth0",
            args: None,
        };
        let out = runner
            .exec(plugin, &call, &conf)
            .map_err(|e| format!("exec {plugin}: {e}"))?;
        if !out.ok() {
            return Err(format!("{plugin} ADD: {} {}", out.stdout, out.stderr));
        }
        let ip: IpAddr = out.json()["ips"][0]["address"]
            .as_str()
            .and_then(|s| s.split('/').next())
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("{plugin} ADD result has no IP: {}", out.stdout))?;
        ips.push(ip);
    }
    let mtu = eth0_mtu(pods[0].handle())?;
    Ok(Path {
        name: if weft {
            "weft same-node"
        } else {
            "bridge same-node"
        },
        holder: Holder::SameNode {
            node,
            pods,
            plugin,
            conf,
            data_dir,
            bin_dir: bin_dir.to_path_buf(),
        },
        server_ip: ips[0],
        mtu,
        server: None,
        runs: Vec::new(),
    })
}

fn cross_node(backend: &str, underlay_mtu: u32, bin_dir: &std::path::Path) -> Result<Path, String> {
    let mut c = Cluster::start(LabConfig {
        nodes: 2,
        far_node: false,
        datastore: DatastoreKind::Static,
        backend: backend.into(),
        underlay_mtu,
        bin_dir: Some(bin_dir.to_path_buf()),
        ..LabConfig::default()
    })
    .map_err(|e| format!("lab ({backend}): {e}"))?;
    let srv = c.add_pod("n1", "srv").map_err(|e| e.to_string())?;
    c.add_pod("n2", "cli").map_err(|e| e.to_string())?;
    let server_ip = srv.ipv4().ok_or("pod srv has no IPv4 address")?;
    let mtu = eth0_mtu(srv.ns())?;
    Ok(Path {
        name: match (backend, underlay_mtu) {
            ("vxlan", 1500) => "vxlan cross-node",
            ("vxlan", _) => "vxlan underlay 9000",
            _ => "host-gw cross-node",
        },
        holder: Holder::Lab(Box::new(c)),
        server_ip,
        mtu,
        server: None,
        runs: Vec::new(),
    })
}

pub(crate) fn start_server(p: &mut Path) -> Result<(), String> {
    let (srv, _) = p.ends();
    let mut cmd = enter_command(srv, "iperf3");
    cmd.args([
        "-s",
        "-B",
        &p.server_ip.to_string(),
        "-p",
        &PORT.to_string(),
    ]);
    let guard = ChildGuard::start("iperf3 -s", cmd, None).map_err(|e| e.to_string())?;
    p.server = Some(guard);
    // Let it bind before the first client.
    std::thread::sleep(Duration::from_millis(300));
    Ok(())
}

pub(crate) fn run_client(p: &Path, seconds: u32) -> Result<Run, String> {
    let (_, cli) = p.ends();
    let mut last_err = String::new();
    for _ in 0..3 {
        let mut cmd = enter_command(cli, "iperf3");
        cmd.args([
            "-c",
            &p.server_ip.to_string(),
            "-p",
            &PORT.to_string(),
            "-t",
            &seconds.to_string(),
            "-J",
        ]);
        // iperf3 -J prints its JSON (with an "error" key) on stdout also when it fails.
        let out = cmd
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("iperf3: {e}"))?;
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if let Some(bps) = doc["end"]["sum_received"]["bits_per_second"].as_f64() {
            return Ok(Run {
                gbit_s: bps / 1e9,
                retransmits: doc["end"]["sum_sent"]["retransmits"]
                    .as_f64()
                    .unwrap_or(f64::NAN),
                sender_cpu: doc["end"]["cpu_utilization_percent"]["host_total"]
                    .as_f64()
                    .unwrap_or(f64::NAN),
                receiver_cpu: doc["end"]["cpu_utilization_percent"]["remote_total"]
                    .as_f64()
                    .unwrap_or(f64::NAN),
            });
        }
        last_err = doc["error"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned());
        std::thread::sleep(Duration::from_millis(500));
    }
    Err(format!(
        "iperf3 to {} ({}): {last_err}",
        p.server_ip, p.name
    ))
}

/// `ethtool -k <dev>` inside `ns`, as feature -> "on"/"off" (with " [fixed]").
fn offloads(ns: &NetNs, dev: &str) -> Result<BTreeMap<String, String>, String> {
    let mut cmd = enter_command(ns, "ethtool");
    cmd.args(["-k", dev]);
    let text = output(cmd, &format!("ethtool -k {dev}"))?;
    Ok(text
        .lines()
        .filter_map(|l| l.trim().split_once(": "))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect())
}

pub fn run(opts: &Options) -> Result<Report, String> {
    // The default five, or exactly the named ones (`vxlan-jumbo` only when asked for).
    let wanted = |name: &str| {
        if opts.only.is_empty() {
            name != "vxlan-jumbo"
        } else {
            opts.only.iter().any(|o| o == name)
        }
    };
    let mut paths: Vec<Path> = Vec::new();
    let mut notes = Vec::new();
    type Build<'a> = Box<dyn Fn() -> Result<Path, String> + 'a>;
    let builders: Vec<(&str, Build)> = vec![
        ("veth", Box::new(bare_veth)),
        ("weft", Box::new(|| same_node(true, &opts.bin_dir))),
        ("bridge", Box::new(|| same_node(false, &opts.bin_dir))),
        (
            "host-gw",
            Box::new(|| cross_node("host-gw", 1500, &opts.bin_dir)),
        ),
        (
            "vxlan",
            Box::new(|| cross_node("vxlan", 1500, &opts.bin_dir)),
        ),
        (
            "vxlan-jumbo",
            Box::new(|| cross_node("vxlan", 9000, &opts.bin_dir)),
        ),
    ];
    for (name, build) in builders {
        if !wanted(name) {
            continue;
        }
        eprintln!("datapath: setting up {name}");
        let mut p = build()?;
        start_server(&mut p)?;
        paths.push(p);
    }

    let mut vxlan_offloads = BTreeMap::new();
    if let Some(p) = paths.iter().find(|p| p.name.starts_with("vxlan")) {
        notes.push(format!("offloads read on the {} lab", p.name));
        if let Holder::Lab(c) = &p.holder {
            let node = c.node("n1").expect("n1");
            let pod = c.pod("srv").expect("srv");
            for (label, ns, dev) in [
                ("n1 weft.1 (VTEP)", node.ns(), "weft.1"),
                ("n1 eth0 (underlay)", node.ns(), "eth0"),
                ("pod eth0", pod.ns(), "eth0"),
            ] {
                match offloads(ns, dev) {
                    Ok(f) => {
                        vxlan_offloads.insert(label.to_string(), f);
                    }
                    Err(e) => {
                        notes.push(format!("{e} (install ethtool to see offloads)"));
                        break;
                    }
                }
            }
        }
    }

    for round in 0..opts.rounds {
        let n = paths.len();
        for k in 0..n {
            let i = (k + round) % n;
            eprintln!(
                "datapath: round {}/{}: {}",
                round + 1,
                opts.rounds,
                paths[i].name
            );
            let r = run_client(&paths[i], opts.seconds)?;
            paths[i].runs.push(r);
        }
    }

    let veth = paths
        .iter()
        .find(|p| matches!(p.holder, Holder::Veth(..)))
        .map(|p| spread(&p.runs.iter().map(|r| r.gbit_s).collect::<Vec<_>>()).median);
    let rows = paths
        .iter()
        .map(|p| {
            let g: Vec<f64> = p.runs.iter().map(|r| r.gbit_s).collect();
            let s = spread(&g);
            Row {
                path: p.name,
                mtu: p.mtu,
                gbit_s: s,
                ratio_to_veth: veth.map(|v| s.median / v),
                retransmits: spread(&p.runs.iter().map(|r| r.retransmits).collect::<Vec<_>>()),
                sender_cpu_pct: spread(&p.runs.iter().map(|r| r.sender_cpu).collect::<Vec<_>>()),
                receiver_cpu_pct: spread(
                    &p.runs.iter().map(|r| r.receiver_cpu).collect::<Vec<_>>(),
                ),
                samples_gbit_s: g,
            }
        })
        .collect();
    drop(paths);
    Ok(Report {
        rows,
        vxlan_offloads,
        notes,
    })
}

/// The offload features that decide VXLAN throughput.
const KEY_FEATURES: &[&str] = &[
    "tx-checksumming",
    "rx-checksumming",
    "scatter-gather",
    "tcp-segmentation-offload",
    "generic-segmentation-offload",
    "generic-receive-offload",
    "tx-udp_tnl-segmentation",
    "tx-udp_tnl-csum-segmentation",
    "rx-udp-gro-forwarding",
];

pub fn print(r: &Report, opts: &Options) {
    println!(
        "suite datapath: iperf3 single TCP stream, {} s per run, {} interleaved rounds",
        opts.seconds, opts.rounds
    );
    println!(
        "{:<20} {:>5} {:>10} {:>17} {:>9} {:>8} {:>14}",
        "path", "MTU", "Gbit/s p50", "min-max", "x veth", "retr p50", "cpu snd/rcv %"
    );
    for row in &r.rows {
        println!(
            "{:<20} {:>5} {:>10.2} {:>17} {:>9} {:>8.0} {:>14}",
            row.path,
            row.mtu,
            row.gbit_s.median,
            format!("{:.2}-{:.2}", row.gbit_s.min, row.gbit_s.max),
            row.ratio_to_veth
                .map(|x| format!("{x:.2}"))
                .unwrap_or_else(|| "-".into()),
            row.retransmits.median,
            format!(
                "{:.0}/{:.0}",
                row.sender_cpu_pct.median, row.receiver_cpu_pct.median
            )
        );
    }
    if !r.vxlan_offloads.is_empty() {
        println!("vxlan path offloads (ethtool -k):");
        print!("{:<30}", "feature");
        for dev in r.vxlan_offloads.keys() {
            print!(" {dev:>20}");
        }
        println!();
        for f in KEY_FEATURES {
            print!("{f:<30}");
            for feats in r.vxlan_offloads.values() {
                print!(" {:>20}", feats.get(*f).map(String::as_str).unwrap_or("-"));
            }
            println!();
        }
    }
    for n in &r.notes {
        println!("note: {n}");
    }
}
