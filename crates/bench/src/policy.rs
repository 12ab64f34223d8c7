//! Suite `policy`: what NetworkPolicy costs, in three parts (figures printed, never asserted).
//!
//! * `datapath`: two pods on one node through the weft plugin (the same-node path of the
//!   `datapath` suite); interleaved rounds with no policy table versus weft-policy's table for
//!   1,000 policies that all select the server (the last one admits the client) among 10,000
//!   other pods: one-stream TCP throughput (iperf3) and new TCP connections per second (connect,
//!   read the answer, close; one client thread).
//! * `scale` (needs the lab's Kubernetes binaries): one real weftd against a real
//!   kube-apiserver holding 10,000 Pods and 1,000 NetworkPolicies: start -> policy programmed,
//!   weftd's VmHWM/VmRSS, and one pod relabel -> the kernel's transaction (seen by `nft monitor`).
//! * `latency` (needs the lab's Kubernetes binaries): the Kubernetes lab (kubelets, weft by its
//!   DaemonSet); a NetworkPolicy created through the API -> the probe from another pod flips on
//!   every node, and deleted -> it flips back.

use crate::datapath::{self, Path};
use crate::stats::{spread, Spread};
use serde::Serialize;
use serde_json::json;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use weft_lab::probe::{in_netns_thread, WhoAmIServer};
use weft_netops::netns::NetNs;
use weft_policy::{
    compile, k8s, synthetic, Applier, CompileOptions, Labels, Model, Namespace, Pod,
};

#[derive(Debug, Clone)]
pub struct Options {
    pub parts: Vec<String>,
    pub rounds: usize,
    pub seconds: u32,
    pub pods: usize,
    pub policies: usize,
    pub bin_dir: PathBuf,
}

impl Options {
    fn wants(&self, part: &str) -> bool {
        self.parts.is_empty() || self.parts.iter().any(|p| p == part)
    }
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    pub datapath: Option<DatapathReport>,
    pub scale: Option<crate::policy_kube::ScaleReport>,
    pub latency: Option<crate::policy_kube::LatencyReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DatapathReport {
    pub pods: usize,
    pub variants: Vec<Variant>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Variant {
    pub shape: Shape,
    pub name: String,
    pub rules: usize,
    pub elements: usize,
    pub gbit_s: Vec<f64>,
    pub connections_per_s: Vec<f64>,
}

impl Variant {
    fn gbit(&self) -> Spread {
        spread(&self.gbit_s)
    }
    fn cps(&self) -> Spread {
        spread(&self.connections_per_s)
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Which policies the datapath part puts in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Shape {
    /// No table at all.
    None,
    /// weft's table with no policy (what every node has with policy enforcement on: the base
    /// chains, fail-closed for unknown addresses of the node's CIDR).
    Empty,
    /// The synthetic cluster workload (`weft_policy::synthetic`: 1,000 policies over 100
    /// namespaces; the server's namespace holds 10 of them and they select it) plus one that
    /// admits the client.
    Cluster,
    /// Every policy selects the server, in its namespace; the last one admits the client: each
    /// new connection walks them all (the worst case of weft's per-policy chains).
    AllSelectServer,
}

impl Shape {
    fn describe(self, policies: usize) -> String {
        match self {
            Shape::None => "no table".into(),
            Shape::Empty => "0 (weft's table)".into(),
            Shape::Cluster => format!("{policies} in the cluster"),
            Shape::AllSelectServer => format!("{policies} on the server"),
        }
    }
}

/// The model of the datapath part: the two real pods in namespace `ns0` (server
/// `app=app0, tier=1`, client `role=client`), `others` remote synthetic pods over 100
/// namespaces (all in no set unless a policy selects them), and the policies of `shape`.
pub fn datapath_model(
    srv: IpAddr,
    cli: IpAddr,
    others: usize,
    policies: usize,
    shape: Shape,
) -> Model {
    let mut m = Model::new();
    for n in 0..100 {
        let l: Labels = synthetic::namespace_labels(n)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        m.set_namespace(Namespace::new(format!("ns{n}"), l));
    }
    let pod = |ns: &str, name: &str, l: Labels, ip: IpAddr, local: bool| Pod {
        namespace: ns.into(),
        name: name.into(),
        labels: l,
        ips: vec![ip],
        named_ports: Vec::new(),
        local,
        host_network: false,
    };
    m.set_pod(pod(
        "ns0",
        "srv",
        labels(&[("app", "app0"), ("tier", "1")]),
        srv,
        true,
    ));
    m.set_pod(pod("ns0", "cli", labels(&[("role", "client")]), cli, true));
    for i in 0..others {
        let ip = IpAddr::from([10, 100 + (i >> 16) as u8, (i >> 8) as u8, i as u8]);
        let l: Labels = synthetic::pod_labels(i)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        m.set_pod(pod(
            &format!("ns{}", i % 100),
            &format!("pod{i}"),
            l,
            ip,
            false,
        ));
    }
    let add = |m: &mut Model, obj: serde_json::Value| {
        let obj = serde_json::from_value(obj).expect("a valid NetworkPolicy");
        m.set_policy(k8s::policy(&obj).expect("a policy weft reads"));
    };
    let admit_client =
        json!([{ "from": [{ "podSelector": { "matchLabels": { "role": "client" } } }] }]);
    match shape {
        Shape::None | Shape::Empty => {}
        Shape::Cluster => {
            for p in 0..policies {
                add(&mut m, synthetic::policy_object(p, 100));
            }
            add(
                &mut m,
                json!({ "metadata": { "namespace": "ns0", "name": "zz-admit-client" },
                        "spec": { "podSelector": { "matchLabels": { "app": "app0" } }, "ingress": admit_client } }),
            );
        }
        Shape::AllSelectServer => {
            for k in 0..policies {
                let ingress = if k + 1 == policies {
                    admit_client.clone()
                } else {
                    json!([{ "from": [{ "podSelector": { "matchLabels": { "role": format!("r{k}") } } }],
                             "ports": [{ "protocol": "TCP", "port": 6000 + k }] }])
                };
                add(
                    &mut m,
                    json!({ "metadata": { "namespace": "ns0", "name": format!("pol{k:04}") },
                            "spec": { "podSelector": { "matchLabels": { "app": "app0" } }, "ingress": ingress } }),
                );
            }
        }
    }
    m
}

/// New connections per second from `cli` to the server for `seconds` (one thread: connect,
/// read the answer, close). Failures end the run early and are reported.
fn connection_rate(cli: &NetNs, server: IpAddr, port: u16, seconds: u32) -> Result<f64, String> {
    in_netns_thread(cli, move || {
        use std::io::Read;
        let addr = std::net::SocketAddr::new(server, port);
        let until = Instant::now() + Duration::from_secs(seconds.into());
        let started = Instant::now();
        let mut n = 0u64;
        let mut buf = [0u8; 64];
        while Instant::now() < until {
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))
                .map_err(|e| format!("connect {addr} after {n} connections: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(1)))
                .map_err(|e| e.to_string())?;
            let _ = s
                .read(&mut buf)
                .map_err(|e| format!("read from {addr}: {e}"))?;
            n += 1;
        }
        Ok(n as f64 / started.elapsed().as_secs_f64())
    })
    .map_err(|e| format!("thread in netns: {e}"))?
}

fn client_ip(p: &Path) -> Result<IpAddr, String> {
    let (_, cli) = p.ends();
    let mut nl = weft_netops::Netlink::in_netns(cli).map_err(|e| e.to_string())?;
    let eth0 = nl
        .get_link_by_name("eth0")
        .map_err(|e| e.to_string())?
        .ok_or("client pod has no eth0")?;
    nl.list_addresses(Some(eth0.index))
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|(_, a)| a.addr())
        .find(|a| a.is_ipv4())
        .ok_or_else(|| "client pod has no IPv4 address".into())
}

fn run_datapath(opts: &Options) -> Result<DatapathReport, String> {
    eprintln!("policy datapath: two pods through the weft plugin");
    let mut path = datapath::same_node(true, &opts.bin_dir)?;
    datapath::start_server(&mut path)?;
    let (srv, cli) = (path.server_ip, client_ip(&path)?);
    let node = path.node().ok_or("same-node path without a node")?;
    let whoami = WhoAmIServer::start(path.ends().0, srv, 0).map_err(|e| e.to_string())?;

    // As weftd compiles (counters for /metrics, fail-closed for the node's pod CIDR), but
    // without SCTP rules, which this kernel cannot load.
    let opts_c = CompileOptions {
        sctp: false,
        counters: true,
        fail_closed: vec!["10.79.0.0/24".parse().expect("the same-node path's CIDR")],
        ..CompileOptions::default()
    };
    let shapes = [
        Shape::None,
        Shape::Empty,
        Shape::Cluster,
        Shape::AllSelectServer,
    ];
    let mut variants = Vec::new();
    let mut tables = Vec::new();
    for shape in shapes {
        let t = Instant::now();
        let model = datapath_model(srv, cli, opts.pods, opts.policies, shape);
        let desired = compile(&model, &opts_c);
        eprintln!(
            "policy datapath: {}: model and compile {:.0} ms: {} rules, {} set elements",
            shape.describe(opts.policies),
            t.elapsed().as_secs_f64() * 1000.0,
            desired.rule_count(),
            desired.element_count()
        );
        variants.push(Variant {
            shape,
            name: shape.describe(opts.policies),
            rules: if shape == Shape::None {
                0
            } else {
                desired.rule_count()
            },
            elements: if shape == Shape::None {
                0
            } else {
                desired.element_count()
            },
            gbit_s: Vec::new(),
            connections_per_s: Vec::new(),
        });
        tables.push((shape != Shape::None).then_some(desired));
    }
    // Each switch replaces the whole table (or removes it) in one transaction.
    let set = |table: &Option<weft_policy::Ruleset>| -> Result<(), String> {
        let table = table.clone();
        in_netns_thread(node, move || {
            let mut a = Applier::new();
            match table {
                Some(t) => a.remove().and_then(|_| a.apply(&t).map(|_| ())),
                None => a.remove(),
            }
        })
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
    };

    let n = variants.len();
    for round in 0..opts.rounds {
        for k in 0..n {
            let i = (k + round) % n;
            set(&tables[i])?;
            let run = datapath::run_client(&path, opts.seconds)?;
            let cps = connection_rate(path.ends().1, srv, whoami.port, opts.seconds)?;
            eprintln!(
                "policy datapath: round {}/{}: {}: {:.2} Gbit/s, {:.0} connections/s",
                round + 1,
                opts.rounds,
                variants[i].name,
                run.gbit_s,
                cps
            );
            variants[i].gbit_s.push(run.gbit_s);
            variants[i].connections_per_s.push(cps);
        }
    }
    set(&None)?;
    drop(whoami);
    drop(path);
    Ok(DatapathReport {
        pods: opts.pods,
        variants,
    })
}

pub fn run(opts: &Options) -> Result<Report, String> {
    let mut r = Report::default();
    if opts.wants("datapath") {
        r.datapath = Some(run_datapath(opts)?);
    }
    if opts.wants("scale") {
        r.scale = Some(crate::policy_kube::run_scale(opts)?);
    }
    if opts.wants("latency") {
        r.latency = Some(crate::policy_kube::run_latency(opts)?);
    }
    Ok(r)
}

pub fn print(r: &Report, opts: &Options) {
    if let Some(d) = &r.datapath {
        println!(
            "suite policy, datapath: same-node pods (weft plugin), {} interleaved rounds, {} s per run, {} other pods in the model",
            opts.rounds, opts.seconds, d.pods
        );
        println!(
            "{:<20} {:>6} {:>9} {:>11} {:>13} {:>7} {:>11} {:>13} {:>7} {:>7}",
            "policies",
            "rules",
            "elements",
            "Gbit/s p50",
            "min-max",
            "x none",
            "conn/s p50",
            "min-max",
            "x none",
            "x 0"
        );
        let base = |shape: Shape| {
            d.variants
                .iter()
                .find(|v| v.shape == shape)
                .map(|v| (v.gbit().median, v.cps().median))
                .unwrap_or((f64::NAN, f64::NAN))
        };
        let ((none_g, none_c), (_, empty_c)) = (base(Shape::None), base(Shape::Empty));
        for v in &d.variants {
            let (g, c) = (v.gbit(), v.cps());
            println!(
                "{:<20} {:>6} {:>9} {:>11.2} {:>13} {:>7.3} {:>11.0} {:>13} {:>7.3} {:>7.3}",
                v.name,
                v.rules,
                v.elements,
                g.median,
                format!("{:.2}-{:.2}", g.min, g.max),
                g.median / none_g,
                c.median,
                format!("{:.0}-{:.0}", c.min, c.max),
                c.median / none_c,
                c.median / empty_c
            );
        }
        println!("(x 0: against weft's table with no policy, what a node with enforcement on has)");
    }
    if let Some(s) = &r.scale {
        crate::policy_kube::print_scale(s);
    }
    if let Some(l) = &r.latency {
        crate::policy_kube::print_latency(l);
    }
}
