//! Suite `control-plane --datastore kubernetes`: one real weftd (release) in its own netns
//! against a REAL kube-apiserver v1.20.2 (the lab's `kube::ControlPlane`: etcd, apiserver,
//! controller-manager, scheduler, in the same netns) holding N Node objects made like real
//! ones (labels, weft's annotations, podCIDR, status with capacity, conditions, addresses,
//! nodeInfo and ~30 images: ~10 KiB each). Measured from the kernel (netlink read-backs) and
//! /proc:
//!
//! * agent start -> every peer route programmed; VmHWM then, VmRSS after an idle period;
//! * one new Node created -> its route, one at a time;
//! * a burst of Node deletions -> all their routes gone (and after the last request);
//! * an unrelated annotation patched on many Nodes: the agent's CPU for it, no kernel change;
//! * the agent's CPU for the whole run.
//!
//! The API calls run on one thread inside the netns (kube client, current-thread runtime).

use crate::control_plane::{count_routes, make_underlay};
use crate::stats::{spread, Spread};
use crate::util::{proc_status_kib, wait_for, ChildGuard};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde::Serialize;
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use weft_lab::kube::{ControlPlane, ControlPlaneSpec};
use weft_lab::probe::in_netns_thread;
use weft_lab::Netns;
use weft_netops::Netlink;

const UNDERLAY_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 200, 1);
pub(crate) const SELF: &str = "bench-self";
/// Concurrent API requests while creating the Nodes (a setup step, not measured).
const CREATE_CONCURRENCY: usize = 32;

#[derive(Debug, Clone)]
pub struct Options {
    pub sizes: Vec<usize>,
    pub rounds: usize,
    pub new_nodes: usize,
    pub burst: usize,
    pub idle: Duration,
    pub backend: String,
    pub bin_dir: PathBuf,
    pub agent_args: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub nodes: usize,
    pub programmed_s: f64,
    pub vm_hwm_programmed_kib: u64,
    pub vm_rss_idle_kib: u64,
    pub vm_hwm_end_kib: u64,
    pub new_node_ms: Vec<f64>,
    /// First delete request -> the last of the burst's routes gone.
    pub burst_delete_s: f64,
    /// Last delete request answered -> the last route gone.
    pub burst_after_last_request_s: f64,
    /// The agent's CPU while `burst` Nodes got an unrelated annotation, and whether any
    /// weft route changed meanwhile.
    pub unrelated_patch_cpu_s: f64,
    pub unrelated_patch_kernel_changed: bool,
    pub cpu_total_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub nodes: usize,
    pub programmed_s: Spread,
    pub vm_hwm_mib: Spread,
    pub vm_rss_idle_mib: Spread,
    pub new_node_p50_ms: Spread,
    pub new_node_max_ms: Spread,
    pub burst_delete_s: Spread,
    pub unrelated_patch_cpu_ms_per_event: Spread,
    pub cpu_total_s: Spread,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub backend: String,
    pub rows: Vec<Row>,
    pub runs: Vec<RunResult>,
}

/// The i-th /24 of 10.0.0.0/8 (i >= 1); the agent's own node gets 10.255.255.0/24.
fn pod_cidr(i: usize) -> String {
    let base = u32::from(Ipv4Addr::new(10, 0, 0, 0));
    format!("{}/24", Ipv4Addr::from(base + ((i as u32) << 8)))
}

/// Peers' underlay addresses, on the agent's underlay segment (192.168.0.0/16: host-gw).
fn underlay(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(192, 168, 0, 0)) + 2 + i as u32)
}

fn node_name(i: usize) -> String {
    format!("node-{i:05}")
}

/// A Node as a kubelet and weftd leave it: most of its bytes are status weftd never reads.
pub(crate) fn node_object(name: &str, cidr: &str, ip: Ipv4Addr, i: usize) -> Node {
    let images: Vec<_> = (0..30)
        .map(|k| {
            json!({
                "names": [
                    format!("registry.example.com/team-{k}/service-{k}@sha256:{:064x}", k * 7919 + i),
                    format!("registry.example.com/team-{k}/service-{k}:v1.{k}.{i}")
                ],
                "sizeBytes": 10_000_000 + k * 1_000_003
            })
        })
        .collect();
    let condition = |t: &str, status: &str, reason: &str| {
        json!({"type": t, "status": status, "reason": reason,
               "message": format!("kubelet reports {t} is {status}"),
               "lastHeartbeatTime": "2026-11-29T10:00:00Z",
               "lastTransitionTime": "2026-11-29T09:00:00Z"})
    };
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
                "beta.kubernetes.io/arch": "amd64",
                "topology.kubernetes.io/zone": format!("zone-{}", i % 3),
                "node.kubernetes.io/instance-type": "m5.large"
            },
            "annotations": {
                "weft.dev/underlay-ip": ip.to_string(),
                "weft.dev/vtep-mac": format!("02:42:00:{:02x}:{:02x}:{:02x}", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff),
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true"
            }
        },
        "spec": { "podCIDR": cidr, "podCIDRs": [cidr] },
        "status": {
            "capacity": {"cpu": "2", "memory": "8037636Ki", "pods": "110",
                         "ephemeral-storage": "102350Mi", "hugepages-2Mi": "0"},
            "allocatable": {"cpu": "2", "memory": "7935236Ki", "pods": "110",
                            "ephemeral-storage": "94326Mi", "hugepages-2Mi": "0"},
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID"),
                condition("Ready", "True", "KubeletReady")
            ],
            "addresses": [{"type": "InternalIP", "address": ip.to_string()},
                          {"type": "Hostname", "address": name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": format!("{:032x}", i), "systemUUID": format!("{:032x}", i + 1),
                "bootID": format!("{:032x}", i + 2), "kernelVersion": "6.18.0",
                "osImage": "Debian GNU/Linux 12 (bookworm)", "containerRuntimeVersion":
                "containerd://1.6.20", "kubeletVersion": "v1.20.2", "kubeProxyVersion": "v1.20.2",
                "operatingSystem": "linux", "architecture": "amd64"
            },
            "images": images
        }
    }))
    .expect("a valid Node")
}

/// Runs `f` with a client for `kubeconfig` on a thread inside `ns`, on a current-thread
/// runtime (every socket is then made in that netns).
pub(crate) fn with_client<T: Send + 'static>(
    ns: &weft_netops::netns::NetNs,
    kubeconfig: PathBuf,
    f: impl FnOnce(kube::Client) -> futures::future::BoxFuture<'static, Result<T, String>>
        + Send
        + 'static,
) -> Result<T, String> {
    in_netns_thread(ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async move {
            let kc = kube::config::Kubeconfig::read_from(&kubeconfig).map_err(|e| e.to_string())?;
            let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| e.to_string())?;
            let client = kube::Client::try_from(cfg).map_err(|e| e.to_string())?;
            f(client).await
        })
    })
    .map_err(|e| format!("thread in netns: {e}"))?
}

/// [`with_client`] with the Nodes API.
fn with_api<T: Send + 'static>(
    ns: &Netns,
    kubeconfig: PathBuf,
    f: impl FnOnce(Api<Node>) -> futures::future::BoxFuture<'static, Result<T, String>> + Send + 'static,
) -> Result<T, String> {
    with_client(ns.handle(), kubeconfig, move |client| f(Api::all(client)))
}

/// `weftd run` of node `bench-self` against `kubeconfig` (host-gw or vxlan `backend`,
/// nftables, listening on 127.0.0.1:9946 in `ns`, its per-node dirs under `dir`), plus `extra`.
pub(crate) fn kube_agent(
    ns: &Netns,
    bin_dir: &std::path::Path,
    dir: &std::path::Path,
    kubeconfig: &std::path::Path,
    backend: &str,
    extra: &[String],
) -> Result<std::process::Command, String> {
    let mut cmd = ns.command(bin_dir.join("weftd"));
    let mut args: Vec<String> = [
        "run",
        "--node-name",
        SELF,
        "--datastore",
        "kubernetes",
        "--cluster-cidr",
        "10.0.0.0/8",
        "--backend",
        backend,
        "--firewall",
        "nftables",
        "--underlay-interface",
        "eth0",
        "--resync-interval",
        "60s",
        "--health-port",
        "0",
        "--log-format",
        "json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push("--kubeconfig".into());
    args.push(kubeconfig.display().to_string());
    args.extend(crate::util::agent_dir_args(dir)?);
    args.extend(extra.iter().cloned());
    cmd.args(&args).env("WEFT_LOG", "info");
    Ok(cmd)
}

/// utime + stime of `pid` in seconds.
pub(crate) fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f
        .get(11..13)
        .map(|v| v.iter().filter_map(|x| x.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn route_to(nl: &mut Netlink, i: usize) -> bool {
    let cidr = pod_cidr(i);
    let network: Ipv4Addr = cidr.trim_end_matches("/24").parse().unwrap();
    let probe = IpAddr::V4(Ipv4Addr::from(u32::from(network) + 5));
    // host-gw: via the peer's underlay address; vxlan: via its VTEP address (the network
    // address of its pod CIDR), onlink.
    let via = [IpAddr::V4(underlay(i)), IpAddr::V4(network)];
    nl.route_get(probe)
        .map(|r| r.gateway.is_some_and(|g| via.contains(&g)))
        .unwrap_or(false)
}

fn one_run(opts: &Options, nodes: usize, run_no: usize) -> Result<RunResult, String> {
    let ns = Netns::new("wb-kcp").map_err(|e| format!("create netns: {e}"))?;
    let dir = std::env::temp_dir().join(format!("weft-bench-{}", ns.name));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let result = (|| {
        make_underlay(&ns)?;
        let spec = ControlPlaneSpec::new(
            dir.join("cp"),
            ns.path(),
            UNDERLAY_IP,
            "10.0.0.0/8".parse().unwrap(),
        )
        .map_err(|e| e.to_string())?;
        let t = Instant::now();
        let cp = ControlPlane::start(spec).map_err(|e| e.to_string())?;
        let kubeconfig = cp.admin_kubeconfig.clone();
        eprintln!(
            "control-plane (kubernetes): run {run_no}: apiserver ready in {:.1} s",
            t.elapsed().as_secs_f64()
        );

        // The Nodes, then the agent's own.
        let t = Instant::now();
        with_api(&ns, kubeconfig.clone(), move |api| {
            Box::pin(async move {
                let pp = PostParams::default();
                futures::stream::iter(1..=nodes)
                    .map(|i| {
                        let (api, pp) = (api.clone(), pp.clone());
                        async move {
                            let n = node_object(&node_name(i), &pod_cidr(i), underlay(i), i);
                            api.create(&pp, &n).await.map(|_| ())
                        }
                    })
                    .buffer_unordered(CREATE_CONCURRENCY)
                    .try_collect::<Vec<()>>()
                    .await
                    .map_err(|e| format!("create nodes: {e}"))?;
                let me = node_object(SELF, "10.255.255.0/24", UNDERLAY_IP, 0);
                api.create(&pp, &me)
                    .await
                    .map_err(|e| format!("create {SELF}: {e}"))?;
                Ok(())
            })
        })?;
        eprintln!(
            "control-plane (kubernetes): run {run_no}: {nodes} Nodes created in {:.1} s",
            t.elapsed().as_secs_f64()
        );

        let log = dir.join("weftd.log");
        let cmd = kube_agent(
            &ns,
            &opts.bin_dir,
            &dir,
            &kubeconfig,
            &opts.backend,
            &opts.agent_args,
        )?;

        let mut nl = Netlink::in_netns(ns.handle()).map_err(|e| e.to_string())?;
        let start = Instant::now();
        let mut agent = ChildGuard::start("weftd", cmd, Some(&log)).map_err(|e| e.to_string())?;
        let tail = || weft_lab::proc::log_tail(&log, 15);
        let done = wait_for(Duration::from_secs(180), Duration::from_millis(10), || {
            if agent.exited().is_some() {
                return Some(false);
            }
            (count_routes(&mut nl).ok()? >= nodes).then_some(true)
        });
        let programmed_s = start.elapsed().as_secs_f64();
        if done != Some(true) {
            return Err(format!(
                "weftd did not program {nodes} routes; log:\n{}",
                tail()
            ));
        }
        let pid = agent.pid();
        let vm_hwm_programmed_kib = proc_status_kib(pid, "VmHWM").unwrap_or(0);
        std::thread::sleep(opts.idle);
        let vm_rss_idle_kib = proc_status_kib(pid, "VmRSS").unwrap_or(0);

        // One new Node at a time -> its route. One client for the whole loop, its connection
        // warm: the time is the API write, the watch and the agent, not a TLS handshake.
        let (new_nodes, nodes_now) = (opts.new_nodes, nodes);
        let new_node_ms = with_api(&ns, kubeconfig.clone(), move |api| {
            Box::pin(async move {
                let mut nl = Netlink::new().map_err(|e| e.to_string())?;
                api.get(SELF).await.map_err(|e| format!("warm up: {e}"))?;
                let mut ms = Vec::new();
                for k in 0..new_nodes {
                    let i = nodes_now + 1 + k;
                    let n = node_object(&node_name(i), &pod_cidr(i), underlay(i), i);
                    let t = Instant::now();
                    api.create(&PostParams::default(), &n)
                        .await
                        .map_err(|e| format!("create node: {e}"))?;
                    let seen =
                        wait_for(Duration::from_secs(10), Duration::from_micros(500), || {
                            route_to(&mut nl, i).then_some(())
                        });
                    if seen.is_none() {
                        return Err(format!("no route to new node {i} within 10 s"));
                    }
                    ms.push(t.elapsed().as_secs_f64() * 1000.0);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(ms)
            })
        })
        .map_err(|e| format!("{e}; log:\n{}", tail()))?;

        // A burst of deletions.
        let burst = opts.burst.min(nodes);
        let t = Instant::now();
        let answered = with_api(&ns, kubeconfig.clone(), move |api| {
            Box::pin(async move {
                futures::stream::iter(1..=burst)
                    .map(|i| {
                        let api = api.clone();
                        async move { api.delete(&node_name(i), &DeleteParams::default()).await }
                    })
                    .buffer_unordered(CREATE_CONCURRENCY)
                    .try_collect::<Vec<_>>()
                    .await
                    .map_err(|e| format!("delete nodes: {e}"))?;
                Ok(Instant::now())
            })
        })?;
        let gone = wait_for(Duration::from_secs(30), Duration::from_millis(1), || {
            (1..=burst).all(|i| !route_to(&mut nl, i)).then_some(())
        });
        if gone.is_none() {
            return Err(format!(
                "deleted nodes' routes still there; log:\n{}",
                tail()
            ));
        }
        let burst_delete_s = t.elapsed().as_secs_f64();
        let burst_after_last_request_s = answered.elapsed().as_secs_f64();

        // An annotation weftd does not read, on `burst` Nodes.
        let routes_before = count_routes(&mut nl)?;
        let cpu_before = cpu_s(pid);
        with_api(&ns, kubeconfig.clone(), move |api| {
            Box::pin(async move {
                let patch = json!({"metadata": {"annotations": {"example.com/owner": "team-x"}}});
                futures::stream::iter(burst + 1..=2 * burst)
                    .map(|i| {
                        let (api, patch) = (api.clone(), patch.clone());
                        async move {
                            api.patch(
                                &node_name(i),
                                &PatchParams::default(),
                                &Patch::Merge(&patch),
                            )
                            .await
                        }
                    })
                    .buffer_unordered(CREATE_CONCURRENCY)
                    .try_collect::<Vec<_>>()
                    .await
                    .map_err(|e| format!("patch nodes: {e}"))?;
                Ok(())
            })
        })?;
        // Let the events arrive and be handled.
        std::thread::sleep(Duration::from_secs(2));
        let unrelated_patch_cpu_s = cpu_s(pid) - cpu_before;
        let unrelated_patch_kernel_changed = count_routes(&mut nl)? != routes_before;

        let vm_hwm_end_kib = proc_status_kib(pid, "VmHWM").unwrap_or(0);
        let cpu_total_s = cpu_s(pid);
        agent.stop(Duration::from_secs(5));
        drop(agent);
        drop(cp);
        Ok(RunResult {
            nodes,
            programmed_s,
            vm_hwm_programmed_kib,
            vm_rss_idle_kib,
            vm_hwm_end_kib,
            new_node_ms,
            burst_delete_s,
            burst_after_last_request_s,
            unrelated_patch_cpu_s,
            unrelated_patch_kernel_changed,
            cpu_total_s,
        })
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

pub fn run(opts: &Options) -> Result<Report, String> {
    let mut runs = Vec::new();
    let mut n = 0;
    for round in 0..opts.rounds {
        for &nodes in &opts.sizes {
            n += 1;
            eprintln!(
                "control-plane (kubernetes): round {}/{}: {nodes} Nodes",
                round + 1,
                opts.rounds
            );
            let r = one_run(opts, nodes, n)?;
            eprintln!(
                "control-plane (kubernetes):   programmed {:.2} s, new node p50 {:.1} ms, \
                 burst {:.2} s, VmHWM {:.1} MiB",
                r.programmed_s,
                spread(&r.new_node_ms).median,
                r.burst_delete_s,
                r.vm_hwm_end_kib as f64 / 1024.0
            );
            runs.push(r);
        }
    }
    let mib = |k: u64| k as f64 / 1024.0;
    let rows = opts
        .sizes
        .iter()
        .map(|&nodes| {
            let rs: Vec<&RunResult> = runs.iter().filter(|r| r.nodes == nodes).collect();
            let col = |f: &dyn Fn(&RunResult) -> f64| {
                spread(&rs.iter().map(|r| f(r)).collect::<Vec<_>>())
            };
            Row {
                nodes,
                programmed_s: col(&|r| r.programmed_s),
                vm_hwm_mib: col(&|r| mib(r.vm_hwm_end_kib)),
                vm_rss_idle_mib: col(&|r| mib(r.vm_rss_idle_kib)),
                new_node_p50_ms: col(&|r| spread(&r.new_node_ms).median),
                new_node_max_ms: col(&|r| spread(&r.new_node_ms).max),
                burst_delete_s: col(&|r| r.burst_delete_s),
                unrelated_patch_cpu_ms_per_event: col(&|r| {
                    r.unrelated_patch_cpu_s * 1000.0 / opts.burst.max(1) as f64
                }),
                cpu_total_s: col(&|r| r.cpu_total_s),
            }
        })
        .collect();
    Ok(Report {
        backend: opts.backend.clone(),
        rows,
        runs,
    })
}

fn fmt(s: &Spread, prec: usize) -> String {
    format!("{:.p$} ({:.p$}-{:.p$})", s.median, s.min, s.max, p = prec)
}

pub fn print(r: &Report, opts: &Options) {
    println!(
        "suite control-plane --datastore kubernetes: weftd (release, {}, real kube-apiserver \
         v1.20.2) with N Nodes; {} rounds, {} new Nodes, bursts of {}; median (min-max)",
        r.backend, opts.rounds, opts.new_nodes, opts.burst
    );
    println!(
        "{:>6} {:>20} {:>20} {:>20} {:>20} {:>18} {:>20} {:>16} {:>14}",
        "nodes",
        "programmed s",
        "VmHWM MiB",
        "RSS idle MiB",
        "new node p50 ms",
        "new node max ms",
        "burst delete s",
        "unrelated ms/ev",
        "CPU total s"
    );
    for row in &r.rows {
        println!(
            "{:>6} {:>20} {:>20} {:>20} {:>20} {:>18} {:>20} {:>16} {:>14}",
            row.nodes,
            fmt(&row.programmed_s, 2),
            fmt(&row.vm_hwm_mib, 1),
            fmt(&row.vm_rss_idle_mib, 1),
            fmt(&row.new_node_p50_ms, 1),
            fmt(&row.new_node_max_ms, 1),
            fmt(&row.burst_delete_s, 2),
            format!("{:.2}", row.unrelated_patch_cpu_ms_per_event.median),
            format!("{:.2}", row.cpu_total_s.median),
        );
    }
    let changed = r
        .runs
        .iter()
        .filter(|x| x.unrelated_patch_kernel_changed)
        .count();
    println!(
        "unrelated annotations changed the kernel in {changed} of {} runs",
        r.runs.len()
    );
    println!(
        "goals (5,000 Nodes): VmHWM <= 35 MiB, programmed <= 0.5 s, one Node -> kernel <= 10 ms, \
         100 deletions <= 0.2 s, CPU per unrelated Node event <= 1 ms"
    );
}
