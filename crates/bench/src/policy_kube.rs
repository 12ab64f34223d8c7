//! The Kubernetes parts of suite `policy` (see policy.rs): `scale` (one weftd, a real
//! kube-apiserver with N Pods and M NetworkPolicies) and `latency` (the Kubernetes lab, a policy
//! created through the API -> enforced on every node).

use crate::control_plane::make_underlay;
use crate::control_plane_kube::{cpu_s, kube_agent, node_object, with_client, SELF};
use crate::policy::Options;
use crate::stats::{summarize, Summary};
use crate::util::{proc_status_kib, wait_for, ChildGuard};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde::Serialize;
use serde_json::{json, Value};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use weft_lab::kube::{ControlPlane, ControlPlaneSpec};
use weft_lab::probe::in_netns_thread;
use weft_lab::{Cluster, DatastoreKind, LabConfig, Netns};
use weft_policy::synthetic;

const UNDERLAY_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 200, 1);
const NAMESPACES: usize = 100;
/// Nodes the other pods are spread over (they must exist: podgc deletes pods of unknown nodes).
const PEERS: usize = 100;
const CONCURRENCY: usize = 32;
/// weftd's default `--listen` (what `kube_agent` leaves it at).
const AGENT_LISTEN: &str = "127.0.0.1:9946";

#[derive(Debug, Clone, Serialize)]
pub struct ScaleReport {
    pub pods: usize,
    pub local_pods: usize,
    pub policies: usize,
    pub objects_created_s: f64,
    /// weftd started -> /status says the policy table is programmed with every object.
    pub programmed_s: f64,
    pub vm_hwm_programmed_kib: u64,
    pub vm_rss_idle_kib: u64,
    /// One local pod's labels patched -> the first nft event of weftd's transaction.
    pub relabel_to_kernel: Summary,
    pub relabel_ms: Vec<f64>,
    /// CNI ADD of the plugin (exec'd as a runtime does) with the first-packet handshake
    /// (weftd has the pod in its table before ADD returns) and without (no policySocket).
    pub add_with_handshake: Summary,
    pub add_without_handshake: Summary,
    pub vm_hwm_end_kib: u64,
    pub cpu_total_s: f64,
}

/// Pod `i`'s node and address: one pod in 50 on the agent's node (10.255.255.0/24), the
/// others over `PEERS` nodes in their pod CIDRs.
fn placement(i: usize) -> (String, Ipv4Addr) {
    if i.is_multiple_of(50) {
        // From .50 up: the plugin's IPAM hands out .2 and up to the ADDs measured here.
        (
            SELF.into(),
            Ipv4Addr::new(10, 255, 255, (i / 50 + 50) as u8),
        )
    } else {
        let node = i % PEERS + 1;
        (
            format!("node-{node:05}"),
            Ipv4Addr::new(10, 0, node as u8, (i / PEERS + 2) as u8),
        )
    }
}

fn peer_cidr(node: usize) -> String {
    format!("10.0.{node}.0/24")
}

fn pod_namespace(i: usize) -> String {
    format!("ns{}", (i / PEERS) % NAMESPACES)
}

/// A Pod as a Deployment and a kubelet leave it (spec, status with conditions and container
/// state: what weftd's watch decodes).
fn pod_object(i: usize) -> Value {
    let (node, _) = placement(i);
    let labels: serde_json::Map<String, Value> = synthetic::pod_labels(i)
        .into_iter()
        .map(|(k, v)| (k.to_string(), Value::String(v)))
        .chain([(
            "pod-template-hash".to_string(),
            Value::String(format!("{:08x}", i * 2654435761 % 0xffff_ffff)),
        )])
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": format!("pod{i}"),
            "namespace": pod_namespace(i),
            "labels": labels,
            "annotations": { "example.com/build": format!("build-{i}"), "prometheus.io/scrape": "true" }
        },
        "spec": {
            "nodeName": node,
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "app",
                "image": format!("registry.example.com/team/app{}:v1.{}", i % 20, i % 7),
                "args": ["--listen=:8000", "--log-level=info"],
                "env": [{ "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } }],
                "ports": [{ "name": "http", "containerPort": 8000 + i % 3, "protocol": "TCP" }],
                "resources": { "requests": { "cpu": "100m", "memory": "64Mi" } },
                "readinessProbe": { "tcpSocket": { "port": "http" }, "periodSeconds": 10 }
            }],
            "tolerations": [{ "key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute" },
                            { "key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute" }]
        }
    })
}

fn pod_status(i: usize) -> Value {
    let (_, ip) = placement(i);
    let cond = |t: &str| json!({ "type": t, "status": "True", "lastTransitionTime": "2026-11-29T09:00:00Z" });
    json!({ "status": {
        "phase": "Running",
        "podIP": ip.to_string(),
        "podIPs": [{ "ip": ip.to_string() }],
        "hostIP": "192.168.0.2",
        "startTime": "2026-11-29T09:00:00Z",
        "conditions": [cond("Initialized"), cond("Ready"), cond("ContainersReady"), cond("PodScheduled")],
        "containerStatuses": [{
            "name": "app", "ready": true, "restartCount": 0, "started": true,
            "image": format!("registry.example.com/team/app{}:v1.{}", i % 20, i % 7),
            "imageID": format!("registry.example.com/team/app@sha256:{:064x}", i),
            "containerID": format!("containerd://{:064x}", i * 31 + 7),
            "state": { "running": { "startedAt": "2026-11-29T09:00:01Z" } }
        }]
    }})
}

fn parse<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("a valid object")
}

/// Nodes, namespaces, pods (with their status, as a kubelet would report it) and policies.
async fn create_objects(client: kube::Client, pods: usize, policies: usize) -> Result<(), String> {
    let pp = PostParams::default();
    let nodes: Api<Node> = Api::all(client.clone());
    futures::stream::iter(1..=PEERS)
        .map(|n| {
            let (nodes, pp) = (nodes.clone(), pp.clone());
            async move {
                let ip = Ipv4Addr::new(192, 168, 0, 1 + n as u8);
                let obj = node_object(&format!("node-{n:05}"), &peer_cidr(n), ip, n);
                nodes.create(&pp, &obj).await.map(|_| ())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await
        .map_err(|e| format!("create nodes: {e}"))?;
    nodes
        .create(&pp, &node_object(SELF, "10.255.255.0/24", UNDERLAY_IP, 0))
        .await
        .map_err(|e| format!("create {SELF}: {e}"))?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for n in 0..NAMESPACES {
        let labels: serde_json::Map<String, Value> = synthetic::namespace_labels(n)
            .into_iter()
            .map(|(k, v)| (k.to_string(), Value::String(v)))
            .collect();
        let obj = parse(json!({ "metadata": { "name": format!("ns{n}"), "labels": labels } }));
        namespaces
            .create(&pp, &obj)
            .await
            .map_err(|e| format!("create namespace ns{n}: {e}"))?;
    }
    // Pod admission needs each namespace's `default` ServiceAccount (the controller makes it).
    let accounts: Api<ServiceAccount> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = accounts
            .list(&Default::default())
            .await
            .map_err(|e| format!("list serviceaccounts: {e}"))?;
        let ready = list
            .items
            .iter()
            .filter(|a| a.metadata.name.as_deref() == Some("default"))
            .filter(|a| {
                a.metadata
                    .namespace
                    .as_deref()
                    .is_some_and(|n| n.starts_with("ns"))
            })
            .count();
        if ready >= NAMESPACES {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "only {ready} of {NAMESPACES} default ServiceAccounts after 60 s"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    futures::stream::iter(0..pods)
        .map(|i| {
            let (client, pp) = (client.clone(), pp.clone());
            async move {
                let api: Api<Pod> = Api::namespaced(client, &pod_namespace(i));
                let name = format!("pod{i}");
                api.create(&pp, &parse(pod_object(i))).await?;
                api.patch_status(&name, &PatchParams::default(), &Patch::Merge(pod_status(i)))
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await
        .map_err(|e| format!("create pods: {e}"))?;
    futures::stream::iter(0..policies)
        .map(|p| {
            let (client, pp) = (client.clone(), pp.clone());
            async move {
                let obj: NetworkPolicy = parse(synthetic::policy_object(p, NAMESPACES));
                let ns = obj.metadata.namespace.clone().unwrap_or_default();
                Api::<NetworkPolicy>::namespaced(client, &ns)
                    .create(&pp, &obj)
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await
        .map_err(|e| format!("create policies: {e}"))?;
    Ok(())
}

/// weftd's /status as JSON (inside `ns`).
fn agent_status(ns: &Netns) -> Option<Value> {
    let addr: SocketAddr = AGENT_LISTEN.parse().unwrap();
    let (code, body) =
        weft_lab::probe::http_get(ns.handle(), addr, "/status", Duration::from_secs(2)).ok()?;
    (code == 200).then(|| serde_json::from_str(&body).ok())?
}

/// `nft -j monitor` in `ns`, its output in `log`: the moment each new line appeared (the file
/// is followed every 0.5 ms, which bounds the error of the reading).
fn nft_monitor(
    ns: &Netns,
    log: &std::path::Path,
) -> Result<(ChildGuard, std::sync::mpsc::Receiver<Instant>), String> {
    let mut cmd = ns.command("nft");
    cmd.args(["-j", "monitor", "ruleset"]);
    let guard = ChildGuard::start("nft monitor", cmd, Some(log)).map_err(|e| e.to_string())?;
    let mut file = std::fs::File::open(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = [0u8; 65536];
        loop {
            match file.read(&mut buf) {
                Ok(0) => std::thread::sleep(Duration::from_micros(500)),
                Ok(n) => {
                    let now = Instant::now();
                    for _ in buf[..n].iter().filter(|b| **b == b'\n') {
                        if tx.send(now).is_err() {
                            return;
                        }
                    }
                }
                Err(_) => return,
            }
        }
    });
    Ok((guard, rx))
}

pub fn run_scale(opts: &Options) -> Result<ScaleReport, String> {
    let ns = Netns::new("wb-pol").map_err(|e| format!("create netns: {e}"))?;
    let dir = std::env::temp_dir().join(format!("weft-bench-{}", ns.name));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let result = scale_in(opts, &ns, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn scale_in(opts: &Options, ns: &Netns, dir: &std::path::Path) -> Result<ScaleReport, String> {
    let (pods, policies) = (opts.pods, opts.policies);
    if pods > 50 * 250 {
        return Err(format!(
            "--pods {pods}: at most 12,500 (addresses of the synthetic layout)"
        ));
    }
    make_underlay(ns)?;
    let spec = ControlPlaneSpec::new(
        dir.join("cp"),
        ns.path(),
        UNDERLAY_IP,
        "10.0.0.0/8".parse().unwrap(),
    )
    .map_err(|e| e.to_string())?;
    let cp = ControlPlane::start(spec).map_err(|e| e.to_string())?;
    let kubeconfig = cp.admin_kubeconfig.clone();
    let t = Instant::now();
    with_client(ns.handle(), kubeconfig.clone(), move |c| {
        Box::pin(create_objects(c, pods, policies))
    })?;
    let objects_created_s = t.elapsed().as_secs_f64();
    eprintln!("policy scale: {pods} pods, {policies} policies created in {objects_created_s:.0} s");

    let log = dir.join("weftd.log");
    let cmd = kube_agent(ns, &opts.bin_dir, dir, &kubeconfig, "host-gw", &[])?;
    let start = Instant::now();
    let mut agent = ChildGuard::start("weftd", cmd, Some(&log)).map_err(|e| e.to_string())?;
    let tail = || weft_lab::proc::log_tail(&log, 15);
    let programmed = wait_for(Duration::from_secs(300), Duration::from_millis(10), || {
        if agent.exited().is_some() {
            return Some(false);
        }
        let s = agent_status(ns)?;
        let p = &s["policy"];
        (p["programmed"] == true
            && p["policies"].as_u64() == Some(policies as u64)
            && p["pods"].as_u64() == Some(pods as u64))
        .then_some(true)
    });
    let programmed_s = start.elapsed().as_secs_f64();
    if programmed != Some(true) {
        return Err(format!(
            "weftd did not program the policies; log:\n{}",
            tail()
        ));
    }
    let pid = agent.pid();
    let vm_hwm_programmed_kib = proc_status_kib(pid, "VmHWM").unwrap_or(0);
    eprintln!(
        "policy scale: programmed in {programmed_s:.2} s, VmHWM {} MiB",
        vm_hwm_programmed_kib / 1024
    );
    std::thread::sleep(Duration::from_secs(10));
    let vm_rss_idle_kib = proc_status_kib(pid, "VmRSS").unwrap_or(0);

    // Relabels of local pods that change what the kernel holds: in a namespace whose policies
    // select `tier=1` pods (n % 4 == 1) or admit `tier=0` peers (n % 4 == 0), the pod's tier
    // moves into that value (or out of it) and back.
    let (_monitor, events) = nft_monitor(ns, &dir.join("nft-monitor.log"))?;
    std::thread::sleep(Duration::from_millis(300));
    let local: Vec<(usize, [String; 2])> = (0..pods)
        .filter(|i| i.is_multiple_of(50))
        .filter_map(|i| {
            let n = (i / PEERS) % NAMESPACES;
            let want = match n % 4 {
                0 => "0",
                1 => "1",
                _ => return None,
            };
            let tier = synthetic::pod_labels(i)[1].1.clone();
            let moved = if tier == want { "5" } else { want };
            Some((i, [moved.to_string(), tier]))
        })
        .take(10)
        .collect();
    let relabel_ms = with_client(ns.handle(), kubeconfig, move |client| {
        Box::pin(async move {
            let mut ms = Vec::new();
            for (i, tiers) in local {
                let api: Api<Pod> = Api::namespaced(client.clone(), &pod_namespace(i));
                let name = format!("pod{i}");
                api.get(&name).await.map_err(|e| format!("warm up: {e}"))?;
                for tier in tiers {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    while events.try_recv().is_ok() {}
                    let patch = json!({ "metadata": { "labels": { "tier": tier } } });
                    let t = Instant::now();
                    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map_err(|e| format!("relabel {name}: {e}"))?;
                    // The reader stamps each event; polling here does not change the figure.
                    let mut seen = None;
                    while seen.is_none() && t.elapsed() < Duration::from_secs(10) {
                        seen = events.try_recv().ok();
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    let seen = seen
                        .ok_or_else(|| format!("no nft event within 10 s of relabelling {name}"))?;
                    ms.push(seen.saturating_duration_since(t).as_secs_f64() * 1000.0);
                }
            }
            Ok(ms)
        })
    })
    .map_err(|e| format!("{e}; log:\n{}", tail()))?;
    let (add_with, add_without) = add_cost(opts, ns, dir, &cp.admin_kubeconfig)
        .map_err(|e| format!("{e}; log:\n{}", tail()))?;
    let vm_hwm_end_kib = proc_status_kib(pid, "VmHWM").unwrap_or(0);
    let cpu_total_s = cpu_s(pid);
    agent.stop(Duration::from_secs(5));
    drop(cp);
    Ok(ScaleReport {
        pods,
        local_pods: (0..pods).filter(|i| i.is_multiple_of(50)).count(),
        policies,
        objects_created_s,
        programmed_s,
        vm_hwm_programmed_kib,
        vm_rss_idle_kib,
        relabel_to_kernel: summarize(
            &relabel_ms
                .iter()
                .map(|m| Duration::from_secs_f64(m / 1000.0))
                .collect::<Vec<_>>(),
        ),
        relabel_ms,
        add_with_handshake: summarize(&add_with),
        add_without_handshake: summarize(&add_without),
        vm_hwm_end_kib,
        cpu_total_s,
    })
}

/// ADDs of pods on this node (their Pod objects made first, as the kubelet's are), through
/// weftd's conflist with and without its policySocket, interleaved; then their DELs.
fn add_cost(
    opts: &Options,
    ns: &Netns,
    dir: &std::path::Path,
    kubeconfig: &std::path::Path,
) -> Result<(Vec<Duration>, Vec<Duration>), String> {
    const ADDS: usize = 40;
    let path = dir.join("net.d/10-weft.conflist");
    let list: Value = serde_json::from_slice(
        &std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?,
    )
    .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut conf = list["plugins"][0].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    conf["name"] = list["name"].clone();
    if conf.get("policySocket").is_none() {
        return Err(format!("{} has no policySocket", path.display()));
    }
    let with = conf.to_string().into_bytes();
    conf.as_object_mut().map(|o| o.remove("policySocket"));
    let without = conf.to_string().into_bytes();
    with_client(ns.handle(), kubeconfig.to_path_buf(), move |client| {
        Box::pin(async move {
            let api: Api<Pod> = Api::namespaced(client, "ns0");
            for k in 0..ADDS {
                let obj = parse(json!({ "metadata": { "name": format!("add-{k}") },
                    "spec": { "nodeName": SELF, "automountServiceAccountToken": false,
                              "containers": [{ "name": "app", "image": "registry.example.com/app:v1" }] } }));
                api.create(&PostParams::default(), &obj)
                    .await
                    .map_err(|e| format!("create pod add-{k}: {e}"))?;
            }
            Ok(())
        })
    })?;
    // Let weftd see them (the kubelet's ADD comes well after the Pod's creation).
    std::thread::sleep(Duration::from_secs(2));
    let runner = weft_lab::PluginRunner::new(&opts.bin_dir, ns.handle());
    let (mut with_ms, mut without_ms) = (Vec::new(), Vec::new());
    let mut pods = Vec::new();
    for k in 0..ADDS {
        let pod = Netns::new("wb-add").map_err(|e| format!("create netns: {e}"))?;
        let handshake = k % 2 == 0;
        let args = format!("K8S_POD_NAMESPACE=ns0;K8S_POD_NAME=add-{k}");
        let id = format!("add-{k}");
        let netns = pod.path();
        let call = weft_lab::plugin::Call {
            command: "ADD",
            container_id: &id,
            netns: Some(&netns),
            ifname: "eth0",
            args: Some(&args),
        };
        let conf = if handshake { &with } else { &without };
        let t = Instant::now();
        let out = runner
            .exec("weft", &call, conf)
            .map_err(|e| format!("exec weft: {e}"))?;
        let took = t.elapsed();
        if !out.ok() {
            return Err(format!("weft ADD add-{k}: {} {}", out.stdout, out.stderr));
        }
        if handshake {
            &mut with_ms
        } else {
            &mut without_ms
        }
        .push(took);
        pods.push((pod, id, handshake));
    }
    for (pod, id, handshake) in &pods {
        let netns = pod.path();
        let call = weft_lab::plugin::Call {
            command: "DEL",
            container_id: id,
            netns: Some(&netns),
            ifname: "eth0",
            args: None,
        };
        let _ = runner.exec("weft", &call, if *handshake { &with } else { &without });
    }
    Ok((with_ms, without_ms))
}

pub fn print_scale(s: &ScaleReport) {
    println!(
        "suite policy, scale: one weftd, a real kube-apiserver with {} Pods ({} on this node) and {} NetworkPolicies in {} namespaces",
        s.pods, s.local_pods, s.policies, NAMESPACES
    );
    println!(
        "  start -> policy table programmed: {:.2} s",
        s.programmed_s
    );
    println!(
        "  weftd VmHWM at programmed {:.1} MiB, VmRSS idle {:.1} MiB, VmHWM at end {:.1} MiB, CPU {:.2} s",
        s.vm_hwm_programmed_kib as f64 / 1024.0,
        s.vm_rss_idle_kib as f64 / 1024.0,
        s.vm_hwm_end_kib as f64 / 1024.0,
        s.cpu_total_s
    );
    println!(
        "  pod relabel -> kernel (nft monitor): p50 {:.1} ms, p99 {:.1} ms, min {:.1}, max {:.1} (n={})",
        s.relabel_to_kernel.median_ms,
        s.relabel_to_kernel.p99_ms,
        s.relabel_to_kernel.min_ms,
        s.relabel_to_kernel.max_ms,
        s.relabel_to_kernel.n
    );
    for (what, a) in [
        ("with the first-packet handshake", &s.add_with_handshake),
        ("without (no policySocket)", &s.add_without_handshake),
    ] {
        println!(
            "  plugin ADD {what}: p50 {:.1} ms, p99 {:.1} ms (n={})",
            a.median_ms, a.p99_ms, a.n
        );
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencyReport {
    pub nodes: usize,
    pub rounds: usize,
    /// Policy created -> every node's server refuses the client (max over nodes).
    pub enforced_all: Summary,
    /// Policy deleted -> every node's server admits the client again.
    pub lifted_all: Summary,
    pub enforced_ms: Vec<f64>,
    pub lifted_ms: Vec<f64>,
}

/// Whether `from` opens a TCP connection to `to` within `timeout`.
fn connects(from: &weft_netops::netns::NetNs, to: SocketAddr, timeout: Duration) -> bool {
    in_netns_thread(from, move || {
        std::net::TcpStream::connect_timeout(&to, timeout).is_ok()
    })
    .unwrap_or(false)
}

/// Probes every server until each has flipped to `want` (reachable or not); when the last
/// one flipped (the start of its first flipped attempt), in ms since `t0`.
fn until_flipped(
    client: &weft_netops::netns::NetNs,
    servers: &[SocketAddr],
    want: bool,
    t0: Instant,
) -> Result<f64, String> {
    let mut pending: Vec<SocketAddr> = servers.to_vec();
    let mut last = 0.0;
    let deadline = t0 + Duration::from_secs(30);
    while !pending.is_empty() {
        if Instant::now() > deadline {
            return Err(format!(
                "not flipped to reachable={want} within 30 s: {pending:?}"
            ));
        }
        // A refused client's SYN is dropped: a connect that has not finished in 30 ms counts
        // as refused (an answer on this lab takes well under 1 ms).
        // All servers at once; the flip counts from the start of the first attempt that saw
        // it: a SYN sent then was already judged by the new ruleset (the 30 ms wait is the
        // probe's, not weft's).
        let sent = t0.elapsed().as_secs_f64() * 1000.0;
        let flipped: Vec<bool> = std::thread::scope(|scope| {
            let probes: Vec<_> = pending
                .iter()
                .map(|s| {
                    scope.spawn(move || connects(client, *s, Duration::from_millis(30)) == want)
                })
                .collect();
            probes
                .into_iter()
                .map(|p| p.join().unwrap_or(false))
                .collect()
        });
        if flipped.iter().any(|f| *f) {
            last = f64::max(last, sent);
        }
        let mut i = 0;
        pending.retain(|_| {
            i += 1;
            !flipped[i - 1]
        });
        if !pending.is_empty() && want {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    Ok(last)
}

pub fn run_latency(opts: &Options) -> Result<LatencyReport, String> {
    let nodes = 3;
    let mut c = Cluster::start(LabConfig {
        nodes,
        far_node: false,
        datastore: DatastoreKind::Kubernetes,
        ready_timeout: Duration::from_secs(120),
        bin_dir: Some(opts.bin_dir.clone()),
        ..LabConfig::default()
    })
    .map_err(|e| format!("kube lab: {e}"))?;
    let client = c.add_kube_pod("n1", "client").map_err(|e| e.to_string())?;
    let mut servers = Vec::new();
    for n in 1..=nodes {
        let p = c
            .add_kube_pod(&format!("n{n}"), &format!("server-n{n}"))
            .map_err(|e| e.to_string())?;
        let ip = p.ipv4().ok_or("server pod without IPv4")?;
        servers.push(SocketAddr::new(ip, weft_lab::kube::image::AGNHOST_PORTS.0));
    }
    let cp = c.control_plane().map_err(|e| e.to_string())?;
    for n in 1..=nodes {
        cp.kubectl(&["label", "pod", &format!("server-n{n}"), "role=server"])?;
    }
    let cli_ns = client.ns();
    until_flipped(cli_ns, &servers, true, Instant::now())?;

    let (kubeconfig, cp_ns) = (cp.admin_kubeconfig.clone(), cp.ns());
    let policy: NetworkPolicy = parse(json!({
        "metadata": { "name": "bench-deny", "namespace": "default" },
        "spec": { "podSelector": { "matchLabels": { "role": "server" } },
                  "ingress": [{ "from": [{ "podSelector": { "matchLabels": { "role": "nobody" } } }] }] }
    }));
    let (mut enforced_ms, mut lifted_ms) = (Vec::new(), Vec::new());
    // One client with a warm connection, driven from this thread through a channel.
    let (req_tx, req_rx) = std::sync::mpsc::channel::<bool>();
    let (ack_tx, ack_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let api_thread = {
        let cp_ns = weft_netops::netns::NetNs::open(cp_ns.path()).map_err(|e| e.to_string())?;
        std::thread::spawn(move || {
            with_client(&cp_ns, kubeconfig, move |client| {
                Box::pin(async move {
                    let api: Api<NetworkPolicy> = Api::namespaced(client, "default");
                    api.list(&Default::default())
                        .await
                        .map_err(|e| e.to_string())?;
                    // Blocking between requests is fine: nothing else runs on this runtime.
                    while let Ok(create) = req_rx.recv() {
                        let r = if create {
                            api.create(&PostParams::default(), &policy)
                                .await
                                .map(|_| ())
                        } else {
                            api.delete("bench-deny", &DeleteParams::default())
                                .await
                                .map(|_| ())
                        };
                        let _ = ack_tx.send(r.map_err(|e| e.to_string()));
                    }
                    Ok(())
                })
            })
        })
    };
    for round in 0..opts.rounds {
        for create in [true, false] {
            let t0 = Instant::now();
            req_tx.send(create).map_err(|_| "API thread gone")?;
            ack_rx
                .recv()
                .map_err(|_| "API thread gone")?
                .map_err(|e| format!("policy create/delete: {e}"))?;
            let ms = until_flipped(cli_ns, &servers, !create, t0)?;
            if create {
                &mut enforced_ms
            } else {
                &mut lifted_ms
            }
            .push(ms);
            eprintln!(
                "policy latency: round {}/{}: {} on every node in {ms:.0} ms",
                round + 1,
                opts.rounds,
                if create { "enforced" } else { "lifted" }
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    drop(req_tx);
    let _ = api_thread.join();
    let to_d = |v: &[f64]| {
        v.iter()
            .map(|m| Duration::from_secs_f64(m / 1000.0))
            .collect::<Vec<_>>()
    };
    Ok(LatencyReport {
        nodes,
        rounds: opts.rounds,
        enforced_all: summarize(&to_d(&enforced_ms)),
        lifted_all: summarize(&to_d(&lifted_ms)),
        enforced_ms,
        lifted_ms,
    })
}

pub fn print_latency(l: &LatencyReport) {
    println!(
        "suite policy, latency: Kubernetes lab ({} nodes, kubelets, weft by its DaemonSet), {} rounds; a NetworkPolicy created/deleted through the API -> the probe flips on every node",
        l.nodes, l.rounds
    );
    for (what, s) in [("enforced", &l.enforced_all), ("lifted", &l.lifted_all)] {
        println!(
            "  {what:<9} p50 {:.0} ms, p99 {:.0} ms, min {:.0}, max {:.0} (n={})",
            s.median_ms, s.p99_ms, s.min_ms, s.max_ms, s.n
        );
    }
}
