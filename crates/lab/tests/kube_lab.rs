//! A real Kubernetes (v1.20.2 from scripts/kube-build.sh; `WEFT_KUBE_ASSETS` or its cache)
//! in the lab: control plane in the underlay netns, real kubelets with containerd as nodes,
//! weft installed by its own DaemonSet.
//!
//! Root; needs the Kubernetes binaries (scripts/test.sh builds them once and exports
//! WEFT_KUBE_ASSETS), etcd, openssl, containerd, runc, and `weft`, `weftd`, `weft-agnhost`
//! built (`cargo build --workspace`). Cost: see the README ("A real Kubernetes in the lab").

use serde_json::{json, Value};
use std::time::Duration;
use weft_lab::cluster::ETCD_IP;
use weft_lab::kube::node::host_sysctls;
use weft_lab::kube::{ControlPlane, ControlPlaneSpec};
use weft_lab::ns::enter_command;
use weft_lab::{registry, Cluster, DatastoreKind, LabConfig};

fn topo(nodes: usize, far_node: bool) -> LabConfig {
    LabConfig {
        nodes,
        far_node,
        datastore: DatastoreKind::None,
        ..LabConfig::default()
    }
}

#[test]
fn control_plane_serves_tls_on_the_underlay_and_nodeipam_assigns_pod_cidrs() {
    let c = Cluster::build(topo(1, false)).unwrap_or_else(|e| panic!("{e}"));
    let (id, dir) = (c.id.clone(), c.dir.clone());
    let mut spec = ControlPlaneSpec::new(
        c.dir.join("kube"),
        c.underlay.path(),
        ETCD_IP,
        c.config.network,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    spec.record_in = Some(c.dir.clone());
    let mut cp = ControlPlane::start(spec).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cp.url, format!("https://{ETCD_IP}:6443"));
    assert_eq!(
        cp.kubectl(&["get", "--raw", "/healthz"]).unwrap().trim(),
        "ok"
    );

    // From a node, at the underlay address: the serving certificate names it (kubectl
    // verifies against the lab CA).
    let out = enter_command(c.nodes[0].ns(), cp.spec.assets.join("kubectl"))
        .arg("--kubeconfig")
        .arg(&cp.admin_kubeconfig)
        .args(["get", "--raw", "/healthz"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl from n1: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");

    // A Node created by hand gets a /24 of the cluster CIDR from nodeipam.
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "hand-made"}});
    cp.kubectl_stdin(&["create", "-f", "-"], Some(node.to_string().as_bytes()))
        .unwrap();
    let cidr = cp
        .wait_for("podCIDR of hand-made", Duration::from_secs(60), |cp| {
            let n: Value = cp.get_json(&["node", "hand-made"])?;
            n["spec"]["podCIDR"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| "no spec.podCIDR yet".to_string())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let cidr: ipnet::Ipv4Net = cidr.parse().unwrap();
    assert_eq!(cidr.prefix_len(), 24);
    assert!(
        c.config.network.contains(&cidr),
        "{cidr} not in {}",
        c.config.network
    );

    // The ServiceAccount controllers run: the default namespace gets its token.
    cp.wait_for(
        "default ServiceAccount token",
        Duration::from_secs(60),
        |cp| {
            let sa = cp.get_json(&["serviceaccount", "default", "-n", "default"])?;
            sa["secrets"]
                .as_array()
                .filter(|s| !s.is_empty())
                .map(|_| ())
                .ok_or_else(|| "no token secret yet".to_string())
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));

    drop(cp);
    drop(c);
    assert!(registry::netns_of(&id).is_empty(), "netns left");
    assert!(!dir.exists(), "{} left", dir.display());
}

fn kube(nodes: usize, far_node: bool) -> LabConfig {
    LabConfig::kubernetes(nodes, far_node)
}

/// The standard paths a kube node gets its own copy of, as they are on this machine.
fn host_paths() -> Vec<(String, bool)> {
    weft_lab::kube::node::NODE_DIRS
        .iter()
        .map(|(p, _)| (p.to_string(), std::path::Path::new(p).exists()))
        .collect()
}

/// A process's start time (field 22 of /proc/PID/stat), None once it is gone.
fn start_time(pid: i32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    if rest.split_whitespace().next() == Some("Z") {
        return None;
    }
    rest.split_whitespace().nth(19).map(str::to_string)
}

#[test]
fn kubelets_register_from_their_own_mount_namespaces_and_leave_the_machine_as_it_was() {
    let sysctls_before = host_sysctls();
    let paths_before = host_paths();
    let mut c = Cluster::build(kube(2, false)).unwrap_or_else(|e| panic!("{e}"));
    let (id, dir) = (c.id.clone(), c.dir.clone());
    c.start_kube_nodes().unwrap_or_else(|e| panic!("{e}"));
    let cp = c.control_plane().unwrap();
    let mut cidrs = Vec::new();
    for n in ["n1", "n2"] {
        let node = cp.get_json(&["node", n]).unwrap();
        // Registered by its kubelet (not by hand): the kubelet's own labels and address.
        assert_eq!(node["metadata"]["labels"]["kubernetes.io/hostname"], n);
        let ip = c.node(n).unwrap().underlay_ip.to_string();
        assert!(
            node["status"]["addresses"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["type"] == "InternalIP" && a["address"] == ip.as_str()),
            "{n}: {}",
            node["status"]["addresses"]
        );
        let cidr: ipnet::Ipv4Net = node["spec"]["podCIDR"].as_str().unwrap().parse().unwrap();
        assert!(c.config.network.contains(&cidr));
        cidrs.push(cidr);
    }
    assert_ne!(cidrs[0], cidrs[1]);
    // kubelet set its sysctls: on the node's bound files, not on the machine.
    let kn = c.kube().unwrap().node("n1").unwrap();
    let overcommit = kn.spec.dir.join("root/sysctl/vm.overcommit_memory");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(&overcommit).unwrap().trim() != "1" {
        assert!(
            std::time::Instant::now() < deadline,
            "kubelet did not write vm.overcommit_memory on its node file"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        host_sysctls(),
        sysctls_before,
        "the machine's sysctls changed"
    );
    assert_eq!(
        host_paths(),
        paths_before,
        "standard paths appeared on the machine"
    );
    // kubelet's own dirs live in the node's dir.
    assert!(kn.spec.dir.join("root/var-lib-kubelet/pods").is_dir());
    // Its processes (pid and start time: a pid may be reused) must all be gone after drop.
    let procs: Vec<(i32, String)> = kn
        .processes()
        .into_iter()
        .filter_map(|p| Some((p, start_time(p)?)))
        .collect();
    assert!(
        procs.len() >= 3,
        "containerd, kubelet, kube-proxy: {procs:?}"
    );
    drop(c);
    assert_eq!(host_sysctls(), sysctls_before);
    assert_eq!(host_paths(), paths_before);
    let left: Vec<&(i32, String)> = procs
        .iter()
        .filter(|(p, t)| start_time(*p).as_ref() == Some(t))
        .collect();
    assert!(left.is_empty(), "node processes left: {left:?}");
    assert!(registry::netns_of(&id).is_empty(), "netns left");
    assert!(!dir.exists(), "{} left", dir.display());
}

/// Files under `dir` named like an IP address: weft's IPAM reservations.
fn reservations(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if e.path().is_dir() {
            out.extend(reservations(&e.path()));
        } else if name.parse::<std::net::IpAddr>().is_ok() {
            out.push(name);
        }
    }
    out
}

/// The weft host veths on a node (by weft's alias prefix).
fn weft_veths(ns: &weft_netops::netns::NetNs) -> Vec<String> {
    weft_netops::Netlink::in_netns(ns)
        .unwrap()
        .list_links()
        .unwrap()
        .into_iter()
        .filter(|l| l.alias.as_deref().is_some_and(|a| a.starts_with("weft:")))
        .map(|l| l.name)
        .collect()
}

#[test]
fn weft_by_its_daemonset_networks_kubectl_pods_across_nodes_and_releases_them() {
    let t0 = std::time::Instant::now();
    let sysctls_before = host_sysctls();
    let mut c = Cluster::build(kube(2, true)).unwrap_or_else(|e| panic!("{e}"));
    c.start_agents().unwrap_or_else(|e| panic!("{e}"));
    eprintln!("cluster with weft ready after {:.1?}", t0.elapsed());
    let cp = c.control_plane().unwrap();
    // One weft pod per node, Ready, with the manifest's ServiceAccount.
    let ds_pods = cp.get_json(&["pods", "-n", "weft"]).unwrap();
    let items = ds_pods["items"].as_array().unwrap();
    let mut on: Vec<&str> = items
        .iter()
        .map(|p| p["spec"]["nodeName"].as_str().unwrap())
        .collect();
    on.sort();
    assert_eq!(on, ["n1", "n2", "n3"]);
    for p in items {
        assert_eq!(p["spec"]["serviceAccountName"], "weft");
        assert_eq!(
            p["status"]["containerStatuses"][0]["ready"], true,
            "{}",
            p["metadata"]["name"]
        );
    }
    // The plugin was installed by the init container into each node's own /opt/cni/bin.
    let kn1 = c.kube().unwrap().node("n1").unwrap();
    assert!(kn1.host_path("/opt/cni/bin/weft").unwrap().is_file());
    assert!(kn1
        .host_path("/etc/cni/net.d/10-weft.conflist")
        .unwrap()
        .is_file());

    // Pods made with kubectl on every node: the whole matrix (host-gw between n1 and n2,
    // VXLAN to the far node n3, nodes, the world).
    for n in ["n1", "n2", "n3"] {
        for i in 1..=2 {
            c.add_kube_pod(n, &format!("{n}-p{i}"))
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }
    eprintln!("6 pods running after {:.1?}", t0.elapsed());
    let rows = c.connectivity_matrix().unwrap();
    eprintln!("{}", weft_lab::matrix::table(&rows));
    let failures = weft_lab::matrix::failures(&rows);
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(rows
        .iter()
        .any(|r| r.kind == weft_lab::matrix::Kind::PodPodAcrossSubnets && r.ok));

    // kubectl delete pod: CNI DEL through containerd releases the IP and the host veth.
    let pod = c.pod("n1-p1").unwrap().clone();
    let ip = pod.ipv4().unwrap().to_string();
    let kn1 = c.kube().unwrap().node("n1").unwrap();
    let ipam = kn1.host_path("/var/lib/cni/weft").unwrap();
    assert!(
        reservations(&ipam).contains(&ip),
        "{ip} not reserved in {}",
        ipam.display()
    );
    let veths_before = weft_veths(c.node("n1").unwrap().ns());
    c.remove_pod("n1-p1").unwrap_or_else(|e| panic!("{e}"));
    let kn1 = c.kube().unwrap().node("n1").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let held = reservations(&ipam).contains(&ip);
        let veths = weft_veths(c.node("n1").unwrap().ns());
        if !held && veths.len() + 1 == veths_before.len() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after kubectl delete: {ip} reserved: {held}; weft veths {veths:?}, before {veths_before:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = kn1;
    assert_eq!(
        host_sysctls(),
        sysctls_before,
        "the machine's sysctls changed"
    );
    let t_drop = std::time::Instant::now();
    drop(c);
    eprintln!(
        "teardown {:.1?}; total {:.1?}",
        t_drop.elapsed(),
        t0.elapsed()
    );
}

/// weftd's /status (or /readyz) on a node, through its loopback.
fn agent_get(c: &Cluster, node: &str, path: &str) -> (u16, String) {
    c.agent_get(node, path)
}

fn wait_until(what: &str, timeout: Duration, f: impl FnMut() -> Result<(), String>) {
    weft_lab::probe::wait_until(what, timeout, f)
}

#[test]
fn kube_datastore_node_recreated_with_new_pod_cidr_and_rbac_removed() {
    let mut c = Cluster::build(kube(2, false)).unwrap_or_else(|e| panic!("{e}"));
    c.start_agents().unwrap_or_else(|e| panic!("{e}"));
    let cp = c.control_plane().unwrap();
    let weft_pod_n2 = |cp: &ControlPlane| -> (String, u64) {
        let pods = cp.get_json(&["pods", "-n", "weft"]).unwrap();
        let p = pods["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["spec"]["nodeName"] == "n2")
            .cloned()
            .expect("a weft pod on n2");
        let cs = &p["status"]["containerStatuses"][0];
        (
            cs["containerID"].as_str().unwrap_or_default().to_string(),
            cs["restartCount"].as_u64().unwrap_or(0),
        )
    };
    let weftd_before = weft_pod_n2(cp);

    // Node n2 deleted and re-created (as an operator or a cloud controller would, with its
    // labels and status): nodeipam gives it a different pod CIDR.
    let mut node = cp.get_json(&["node", "n2"]).unwrap();
    let old_cidr = node["spec"]["podCIDR"].as_str().unwrap().to_string();
    let labels = node["metadata"]["labels"].clone();
    node["metadata"] = json!({ "name": "n2", "labels": labels });
    node["spec"] = json!({});
    cp.kubectl(&["delete", "node", "n2", "--wait=true"])
        .unwrap();
    cp.kubectl_stdin(&["create", "-f", "-"], Some(node.to_string().as_bytes()))
        .unwrap();
    let mut new_cidr = String::new();
    wait_until(
        "re-created n2 gets a pod CIDR",
        Duration::from_secs(60),
        || {
            let n = cp.get_json(&["node", "n2"])?;
            new_cidr = n["spec"]["podCIDR"]
                .as_str()
                .ok_or("no podCIDR yet")?
                .to_string();
            Ok(())
        },
    );
    assert_ne!(new_cidr, old_cidr, "nodeipam reused the old CIDR");
    // weftd on n2 moves to it without a restart; n1's weftd routes it.
    wait_until(
        "weftd on n2 on the new CIDR",
        Duration::from_secs(60),
        || {
            let (code, body) = agent_get(&c, "n2", "/status");
            let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            let cidrs = v.to_string();
            if code == 200 && cidrs.contains(&new_cidr) && !cidrs.contains(&old_cidr) {
                Ok(())
            } else {
                Err(format!("/status {code}: {body}"))
            }
        },
    );
    wait_until("n1 routes n2's new CIDR", Duration::from_secs(60), || {
        let (_, body) = agent_get(&c, "n1", "/status");
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let peers = v["last_reconcile"]["peers"].to_string();
        if peers.contains(&new_cidr) && !peers.contains(&old_cidr) {
            Ok(())
        } else {
            Err(format!("peers {peers}"))
        }
    });
    let cp = c.control_plane().unwrap();
    assert_eq!(weft_pod_n2(cp), weftd_before, "weftd on n2 was restarted");
    // A new pod on n2 gets an address of the new CIDR and is reachable from a pod on n1.
    let a = c.add_kube_pod("n1", "a").unwrap_or_else(|e| panic!("{e}"));
    let b = c.add_kube_pod("n2", "b").unwrap_or_else(|e| panic!("{e}"));
    let new: ipnet::IpNet = new_cidr.parse().unwrap();
    assert!(new.contains(&b.ipv4().unwrap()), "{:?} not in {new}", b.ips);
    assert!(weft_lab::probe::ping(a.ns(), b.ipv4().unwrap()), "a -> b");

    // The ClusterRoleBinding removed: after the apiserver restarts (kill -9; watches end),
    // weftd's list is refused and /readyz and /status say so. Restored: ready again.
    let cp = c.control_plane().unwrap();
    cp.kubectl(&["delete", "clusterrolebinding", "weft"])
        .unwrap();
    c.kube_mut()
        .unwrap()
        .cp
        .restart_apiserver()
        .unwrap_or_else(|e| panic!("{e}"));
    // A running weftd keeps its (ready) data plane and says why in /status.
    wait_until(
        "weftd on n1 reports forbidden",
        Duration::from_secs(60),
        || {
            let (_, status) = agent_get(&c, "n1", "/status");
            let v: Value = serde_json::from_str(&status).unwrap_or(Value::Null);
            let err = v["datastore_error"].as_str().unwrap_or_default();
            if v["datastore_connected"] == false && err.contains("forbidden") {
                Ok(())
            } else {
                Err(format!("/status: {status}"))
            }
        },
    );
    // A weftd that starts without its binding is not ready, and /readyz says why.
    let cp = c.control_plane().unwrap();
    let pods = cp.get_json(&["pods", "-n", "weft"]).unwrap();
    let on_n1 = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["spec"]["nodeName"] == "n1")
        .and_then(|p| p["metadata"]["name"].as_str())
        .unwrap()
        .to_string();
    cp.kubectl(&["delete", "pod", "-n", "weft", &on_n1, "--wait=true"])
        .unwrap();
    wait_until(
        "new weftd on n1: /readyz says forbidden",
        Duration::from_secs(90),
        || match agent_get(&c, "n1", "/readyz") {
            (503, body) if body.contains("forbidden") => Ok(()),
            (code, body) => Err(format!("/readyz {code}: {body}")),
        },
    );
    // Pods keep their network meanwhile.
    assert!(
        weft_lab::probe::ping(a.ns(), b.ipv4().unwrap()),
        "a -> b without RBAC"
    );
    let manifest = c.dir.join("weft.yaml");
    c.kubectl(&["apply", "-f", &manifest.display().to_string()])
        .unwrap_or_else(|e| panic!("{e}"));
    wait_until(
        "weftd on n1 ready again",
        Duration::from_secs(90),
        || match agent_get(&c, "n1", "/readyz") {
            (200, _) => Ok(()),
            (code, body) => Err(format!("/readyz {code}: {body}")),
        },
    );
}

/// `ping -i 0.1` from a pod's netns until stopped: (transmitted, received).
struct Pinger(std::process::Child);

impl Pinger {
    fn start(from: &weft_netops::netns::NetNs, to: std::net::IpAddr) -> Pinger {
        Pinger(
            enter_command(from, "ping")
                .args(["-n", "-i", "0.1", "-W", "1"])
                .arg(to.to_string())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    fn stop(self) -> (u32, u32) {
        // SAFETY: plain kill(2) on our own child: SIGINT makes ping print its summary.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let out = self.0.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let summary = text
            .lines()
            .find(|l| l.contains("transmitted"))
            .unwrap_or_else(|| panic!("no ping summary: {text}"));
        let num = |i: usize| -> u32 {
            summary
                .split(", ")
                .nth(i)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        (num(0), num(1))
    }
}

fn assert_no_loss(what: &str, (tx, rx): (u32, u32)) {
    eprintln!("{what}: {tx} pings, {} lost", tx - rx);
    assert!(tx > 10, "{what}: only {tx} pings sent");
    assert_eq!(tx, rx, "{what}: {} of {tx} pings lost", tx - rx);
}

/// weft's routes (protocol 87) and the permanent neighbours and FDB entries on its VTEP.
fn weft_kernel_objects(ns: &weft_netops::netns::NetNs) -> Vec<String> {
    let mut nl = weft_netops::Netlink::in_netns(ns).unwrap();
    let mut out: Vec<String> = nl
        .list_routes(None, Some(254))
        .unwrap()
        .into_iter()
        .filter(|r| r.protocol == 87)
        .map(|r| format!("route {}", r.dst))
        .collect();
    if let Some(vtep) = nl.get_link_by_name("weft.1").unwrap() {
        out.extend(
            nl.list_neighbours(Some(vtep.index))
                .unwrap()
                .into_iter()
                .filter(|n| n.state & weft_netops::netlink::NUD_PERMANENT != 0)
                .map(|n| format!("neighbour {}", n.ip)),
        );
        out.extend(
            nl.list_fdb(vtep.index)
                .unwrap()
                .into_iter()
                .filter(|f| f.dst.is_some() && f.mac != [0; 6])
                .map(|f| format!("fdb {:?}", f.dst)),
        );
    }
    out
}

#[test]
fn node_added_and_pods_keep_their_network_through_apiserver_crash_kubelet_restart_and_rolling_update(
) {
    // n3 (the far node) joins later.
    let mut cfg = kube(2, true);
    cfg.kube_deferred_nodes = vec!["n3".into()];
    let mut c = Cluster::build(cfg).unwrap_or_else(|e| panic!("{e}"));
    c.start_agents().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.kube_node_names(), ["n1", "n2"]);
    let a = c.add_kube_pod("n1", "a").unwrap_or_else(|e| panic!("{e}"));
    let b = c.add_kube_pod("n2", "b").unwrap_or_else(|e| panic!("{e}"));
    let b_ip = b.ipv4().unwrap();

    // kube-apiserver kill -9 and restart: the data path does not depend on it.
    let p = Pinger::start(a.ns(), b_ip);
    c.kube_mut()
        .unwrap()
        .cp
        .restart_apiserver()
        .unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep(Duration::from_secs(1));
    assert_no_loss("apiserver kill -9 and restart", p.stop());

    // Its watch resumed after an etcd compaction: 410 Gone, weftd lists again, and still
    // follows changes: annotations removed by hand come back.
    let kube_etcd = |args: &[&str]| -> String {
        let out = enter_command(c.underlay.handle(), "etcdctl")
            .env("ETCDCTL_API", "3")
            .arg("--endpoints=http://127.0.0.1:12379")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let st: Value =
        serde_json::from_str(&kube_etcd(&["endpoint", "status", "-w", "json"])).unwrap();
    let rev = st[0]["Status"]["header"]["revision"].as_u64().unwrap();
    kube_etcd(&["compact", &rev.to_string()]);
    c.kube_mut()
        .unwrap()
        .cp
        .restart_apiserver()
        .unwrap_or_else(|e| panic!("{e}"));
    c.kubectl(&[
        "annotate",
        "node",
        "n2",
        "weft.dev/underlay-ip-",
        "weft.dev/vtep-mac-",
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    wait_until(
        "weftd on n2 restores its annotations",
        Duration::from_secs(60),
        || {
            let n = c.control_plane().unwrap().get_json(&["node", "n2"])?;
            let ann = &n["metadata"]["annotations"];
            if ann["weft.dev/underlay-ip"] == "192.168.77.12"
                && ann["weft.dev/vtep-mac"].is_string()
            {
                Ok(())
            } else {
                Err(format!("annotations {ann}"))
            }
        },
    );

    // kubelet restarted on n2: its pod keeps its network.
    let p = Pinger::start(a.ns(), b_ip);
    {
        let k = c.kube_mut().unwrap();
        let n2 = k.nodes.iter_mut().find(|n| n.spec.name == "n2").unwrap();
        if let Some(mut kubelet) = n2.kubelet.take() {
            kubelet.stop(Duration::from_secs(5));
        }
        n2.start_kubelet(&k.cp).unwrap_or_else(|e| panic!("{e}"));
    }
    c.wait_nodes_ready().unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep(Duration::from_secs(2));
    assert_no_loss("kubelet restart on n2", p.stop());
    let pod_b = c.control_plane().unwrap().get_json(&["pod", "b"]).unwrap();
    assert_eq!(pod_b["status"]["podIP"], b_ip.to_string());
    assert_eq!(pod_b["status"]["containerStatuses"][0]["restartCount"], 0);

    // A Node added to the running cluster: it registers, weft's DaemonSet runs there, the
    // others route its pod CIDR (VXLAN: it is behind the router) and pods reach its pods.
    c.add_kube_node("n3").unwrap_or_else(|e| panic!("{e}"));
    let n3_cidr = c
        .control_plane()
        .unwrap()
        .get_json(&["node", "n3"])
        .unwrap()["spec"]["podCIDR"]
        .as_str()
        .unwrap()
        .to_string();
    wait_until(
        "n1 routes the new node over VXLAN",
        Duration::from_secs(30),
        || {
            let (_, body) = agent_get(&c, "n1", "/status");
            let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            let ok = v["last_reconcile"]["peers"].as_array().is_some_and(|p| {
                p.iter().any(|p| {
                    p["name"] == "n3"
                        && p["path"] == "vxlan"
                        && p["routes_programmed"] == true
                        && p["pod_cidrs"][0] == n3_cidr.as_str()
                })
            });
            if ok {
                Ok(())
            } else {
                Err(format!("peers {}", v["last_reconcile"]["peers"]))
            }
        },
    );
    let far = c
        .add_kube_pod("n3", "far")
        .unwrap_or_else(|e| panic!("{e}"));
    let far_ip = far.ipv4().unwrap();
    assert!(weft_lab::probe::ping(a.ns(), far_ip), "a -> far");

    // A rolling update of the DaemonSet to a new image tag, pods on different nodes (host-gw
    // and VXLAN) pinging throughout.
    let tag = {
        let k = c.kube().unwrap();
        let new = k.weft_image.replace(":0.1.0", ":0.1.0-lab2");
        assert_ne!(new, k.weft_image);
        new
    };
    let archive = weft_lab::kube::image::weft_image(
        &c.dir.join("images/weft2"),
        &tag,
        &weft_lab::cluster::find_bin_dir(&["weft", "weftd"]).unwrap(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    for n in &c.kube().unwrap().nodes {
        n.ctr(&[
            "images",
            "import",
            "--snapshotter",
            "native",
            &archive.display().to_string(),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    }
    let p1 = Pinger::start(a.ns(), b_ip);
    let p2 = Pinger::start(a.ns(), far_ip);
    let t0 = std::time::Instant::now();
    c.kubectl(&[
        "-n",
        "weft",
        "set",
        "image",
        "ds/weft",
        &format!("weftd={tag}"),
        &format!("install-cni-plugin={tag}"),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    c.kubectl(&[
        "-n",
        "weft",
        "rollout",
        "status",
        "ds/weft",
        "--timeout=180s",
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("rolling update took {:.1?}", t0.elapsed());
    let pods = c
        .control_plane()
        .unwrap()
        .get_json(&["pods", "-n", "weft"])
        .unwrap();
    for p in pods["items"].as_array().unwrap() {
        assert_eq!(p["spec"]["containers"][0]["image"], tag.as_str());
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_no_loss("rolling update, n1 -> n2 (host-gw)", p1.stop());
    assert_no_loss("rolling update, n1 -> n3 (vxlan)", p2.stop());

    // The far node drained and its Node deleted: no route, neighbour or FDB entry for it is
    // left on the others.
    c.kubectl(&[
        "drain",
        "n3",
        "--ignore-daemonsets",
        "--force",
        "--delete-emptydir-data",
        "--timeout=60s",
    ])
    .or_else(|_| {
        // kubectl 1.20 spells it --delete-local-data.
        c.kubectl(&[
            "drain",
            "n3",
            "--ignore-daemonsets",
            "--force",
            "--delete-local-data",
            "--timeout=60s",
        ])
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let n3_cidr = c
        .control_plane()
        .unwrap()
        .get_json(&["node", "n3"])
        .unwrap()["spec"]["podCIDR"]
        .as_str()
        .unwrap()
        .to_string();
    let before = weft_kernel_objects(c.node("n1").unwrap().ns());
    assert!(before.iter().any(|o| o.contains(&n3_cidr)), "{before:?}");
    c.kubectl(&["delete", "node", "n3"])
        .unwrap_or_else(|e| panic!("{e}"));
    for n in ["n1", "n2"] {
        wait_until(&format!("{n} forgets n3"), Duration::from_secs(30), || {
            let objs = weft_kernel_objects(c.node(n).unwrap().ns());
            let n3_ip = c.node("n3").unwrap().underlay_ip.to_string();
            let left: Vec<&String> = objs
                .iter()
                .filter(|o| {
                    o.contains(&n3_cidr)
                        || o.contains(&n3_ip)
                        || o.starts_with("neighbour")
                        || o.starts_with("fdb")
                })
                .collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("left: {left:?}"))
            }
        });
    }
    // n1 <-> n2 unaffected.
    assert!(weft_lab::probe::ping(a.ns(), b_ip));
}

/// A TCP connection from `from`'s netns to `to` on agnhost's TCP port (1 s timeout).
fn tcp_reaches(from: &weft_lab::Pod, to: &weft_lab::Pod) -> bool {
    let addr =
        std::net::SocketAddr::new(to.ipv4().unwrap(), weft_lab::kube::image::AGNHOST_PORTS.0);
    weft_lab::probe::in_netns_thread(from.netns.handle(), move || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
    })
    .unwrap_or(false)
}

/// Issue 13: NetworkPolicy from `kubectl apply` is enforced by weft (deployed by its
/// DaemonSet, default RBAC) on real pods, for a peer on the same node (bridged) and one on
/// another node (host-gw); relabelling a pod and deleting the policy take effect too.
#[test]
fn network_policy_is_enforced_on_kubectl_pods_same_node_and_across_nodes() {
    let mut c = Cluster::build(kube(2, false)).unwrap_or_else(|e| panic!("{e}"));
    c.start_agents().unwrap_or_else(|e| panic!("{e}"));
    let db = c.add_kube_pod("n1", "db").unwrap_or_else(|e| panic!("{e}"));
    let near = c
        .add_kube_pod("n1", "near")
        .unwrap_or_else(|e| panic!("{e}"));
    let far = c
        .add_kube_pod("n2", "far")
        .unwrap_or_else(|e| panic!("{e}"));
    let reach = |from: &weft_lab::Pod| tcp_reaches(from, &db);
    wait_until(
        "db open to all without a policy",
        Duration::from_secs(20),
        || {
            (reach(&near) && reach(&far))
                .then_some(())
                .ok_or_else(|| format!("near {} far {}", reach(&near), reach(&far)))
        },
    );

    let cp = c.control_plane().unwrap();
    cp.kubectl(&["label", "pod", "db", "role=db"]).unwrap();
    let policy = r#"{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "db-from-clients", "namespace": "default"},
        "spec": {"podSelector": {"matchLabels": {"role": "db"}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                              "ports": [{"protocol": "TCP", "port": 8080}]}]}}"#;
    let t = std::time::Instant::now();
    cp.kubectl_stdin(&["apply", "-f", "-"], Some(policy.as_bytes()))
        .unwrap();
    wait_until("db isolated", Duration::from_secs(10), || {
        (!reach(&near) && !reach(&far))
            .then_some(())
            .ok_or_else(|| format!("near {} far {}", reach(&near), reach(&far)))
    });
    eprintln!(
        "policy applied -> enforced on both nodes in {:?}",
        t.elapsed()
    );
    // weftd says why (what `weftd trace SRC DST --port 8080` prints).
    let verdict = |from: &weft_lab::Pod| {
        let (code, body) = agent_get(
            &c,
            "n1",
            &format!(
                "/policy/verdict?src={}&dst={}&proto=tcp&port=8080",
                from.ipv4().unwrap(),
                db.ipv4().unwrap()
            ),
        );
        assert_eq!(code, 200, "{body}");
        body
    };
    let why = verdict(&near);
    assert!(
        why.starts_with("denied")
            && why.contains("default/db is isolated for ingress by [default/db-from-clients]"),
        "{why}"
    );

    cp.kubectl(&["label", "pod", "far", "role=client"]).unwrap();
    wait_until("far admitted as a client", Duration::from_secs(10), || {
        (reach(&far) && !reach(&near))
            .then_some(())
            .ok_or_else(|| format!("near {} far {}", reach(&near), reach(&far)))
    });
    let why = verdict(&far);
    assert!(
        why.starts_with("allowed") && why.contains("default/db-from-clients, ingress rule 0"),
        "{why}"
    );
    // /metrics reads the kernel's counters: what the policy admitted (far) and what db's
    // isolation denied (near, and both before far was a client), on db's node.
    let sample = |body: &str, series: &str| -> u64 {
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0)
    };
    let (code, metrics) = agent_get(&c, "n1", "/metrics");
    assert_eq!(code, 200, "{metrics}");
    let denied = r#"weft_policy_denied_packets_total{namespace="default",direction="ingress"}"#;
    let allowed = r#"weft_policy_allowed_packets_total{namespace="default",policy="db-from-clients",direction="ingress"}"#;
    assert!(sample(&metrics, denied) > 0, "{metrics}");
    assert!(sample(&metrics, allowed) > 0, "{metrics}");
    let (code, body) = agent_get(&c, "n1", "/status");
    assert_eq!(code, 200);
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["policy"]["programmed"], true, "{status}");
    assert_eq!(status["policy"]["policies"], 1, "{status}");
    // The plugin announced db and near to n1's weftd at CNI ADD (classified before ADD
    // returned, not when their IPs reached weftd through the API).
    assert!(
        status["policy"]["announced_at_add"].as_u64().unwrap_or(0) >= 2,
        "{status}"
    );

    // The deny log, turned on as an operator would (weftd restarted by its DaemonSet with
    // the option): a denied connection is one line in weftd's log naming both pods and the
    // policy (NFLOG read by weftd with NET_ADMIN only, in the node's netns).
    let cp = c.control_plane().unwrap();
    cp.kubectl(&[
        "-n",
        "weft",
        "set",
        "env",
        "ds/weft",
        "-c",
        "weftd",
        "WEFT_POLICY_LOG_DENIED=true",
    ])
    .unwrap();
    cp.kubectl(&[
        "-n",
        "weft",
        "rollout",
        "status",
        "ds/weft",
        "--timeout=120s",
    ])
    .unwrap_or_else(|e| panic!("weftd restart with the deny log: {e}"));
    wait_until(
        "a denied connection logged",
        Duration::from_secs(30),
        || {
            assert!(
                !reach(&near),
                "near must stay denied across weftd's restart"
            );
            let logs = cp
                .kubectl(&[
                    "-n",
                    "weft",
                    "logs",
                    "-l",
                    "app.kubernetes.io/name=weft",
                    "-c",
                    "weftd",
                    "--tail=-1",
                ])
                .unwrap_or_default();
            logs.lines()
                .find(|l| {
                    l.contains("denied a new connection")
                        && l.contains("default/near")
                        && l.contains("default/db")
                        && l.contains("default/db-from-clients")
                })
                .map(|l| eprintln!("deny log: {l}"))
                .ok_or_else(|| "no deny log line yet".to_string())
        },
    );

    cp.kubectl(&["delete", "networkpolicy", "db-from-clients"])
        .unwrap();
    wait_until("db open again", Duration::from_secs(10), || {
        (reach(&near) && reach(&far))
            .then_some(())
            .ok_or_else(|| format!("near {} far {}", reach(&near), reach(&far)))
    });
}

fn lab_bin(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_weft-lab"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn weft_lab_cli_up_kubectl_exec_down_with_kubernetes() {
    let up = lab_bin(&[
        "up",
        "--datastore",
        "kubernetes",
        "--keep",
        "--nodes",
        "1",
        "--pods-per-node",
        "1",
    ]);
    let stdout = String::from_utf8_lossy(&up.stdout).into_owned();
    assert!(
        up.status.success(),
        "weft-lab up: {stdout}\n{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("lab ")?.split_whitespace().next())
        .unwrap_or_else(|| panic!("no lab id in {stdout}"))
        .to_string();
    // Whatever happens below, the lab goes.
    struct Down(String);
    impl Drop for Down {
        fn drop(&mut self) {
            let _ = registry::down(&self.0);
        }
    }
    let _down = Down(id.clone());
    let pods = lab_bin(&[
        "kubectl", "--id", &id, "--", "get", "pods", "-A", "-o", "json",
    ]);
    assert!(
        pods.status.success(),
        "{}",
        String::from_utf8_lossy(&pods.stderr)
    );
    let pods: Value = serde_json::from_slice(&pods.stdout).unwrap();
    let far_ip = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["metadata"]["name"] == "n2-p1")
        .and_then(|p| p["status"]["podIP"].as_str())
        .unwrap_or_else(|| panic!("no pod n2-p1 (the far node's): {pods}"))
        .to_string();
    // A command of this machine in a pod's netns: n1-p1 reaches the far node's pod (VXLAN).
    let ping = lab_bin(&[
        "exec",
        "--id",
        &id,
        "default/n1-p1",
        "--",
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        &far_ip,
    ]);
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stdout)
    );
    // And its exit status is the command's.
    let fail = lab_bin(&["exec", "--id", &id, "default/n1-p1", "--", "false"]);
    assert!(!fail.status.success());
    let down = lab_bin(&["down", "--id", &id]);
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert!(registry::netns_of(&id).is_empty(), "netns left");
    assert!(!registry::lab_dir(&id).exists(), "dir left");
    let after = lab_bin(&["kubectl", "--id", &id, "--", "get", "nodes"]);
    assert!(!after.status.success(), "kubectl still answers after down");
}

/// One TCP exchange with an agnhost from any netns: (who answered, the source it saw).
fn agnhost_answer_from(
    ns: &weft_netops::netns::NetNs,
    to: std::net::SocketAddr,
) -> Option<(String, String)> {
    weft_lab::probe::agnhost_exchange(ns, false, to, Duration::from_secs(1))
}

/// Tries an agnhost exchange from `ns` until one succeeds; None after `timeout`.
fn answer_within(
    ns: &weft_netops::netns::NetNs,
    to: std::net::SocketAddr,
    timeout: Duration,
) -> Option<(String, String)> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(a) = agnhost_answer_from(ns, to) {
            return Some(a);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Creates Service `name` selecting pods labelled `selector` (`key=value`), TCP 80 -> 8080;
/// `node_port`: `Some(externalTrafficPolicy)` makes it a NodePort Service. Returns its
/// ClusterIP and node port.
fn apply_service(
    c: &Cluster,
    name: &str,
    selector: &str,
    node_port: Option<&str>,
) -> (std::net::IpAddr, Option<u16>) {
    let (k, v) = selector.split_once('=').unwrap();
    let mut spec = json!({
        "selector": { k: v },
        "ports": [{ "protocol": "TCP", "port": 80, "targetPort": 8080 }],
    });
    if let Some(policy) = node_port {
        spec["type"] = json!("NodePort");
        spec["externalTrafficPolicy"] = json!(policy);
    }
    let doc = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": name, "namespace": "default" },
        "spec": spec,
    });
    let cp = c.control_plane().unwrap();
    cp.kubectl_stdin(&["apply", "-f", "-"], Some(doc.to_string().as_bytes()))
        .unwrap_or_else(|e| panic!("Service {name}: {e}"));
    let svc = cp.get_json(&["service", name]).unwrap();
    let ip = svc["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
    let port = svc["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .map(|p| p as u16);
    (ip, port)
}

/// Node `node`'s pod CIDR (nodeipam's).
fn pod_cidr(c: &Cluster, node: &str) -> ipnet::Ipv4Net {
    c.control_plane()
        .unwrap()
        .get_json(&["node", node])
        .unwrap()["spec"]["podCIDR"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// The pods' gateway on `node`: the first address of its pod CIDR, on weft's bridge.
fn pod_gateway(c: &Cluster, node: &str) -> String {
    let net = pod_cidr(c, node).network();
    std::net::Ipv4Addr::from(u32::from(net) + 1).to_string()
}

/// `weftd trace ARGS --output json` in the weft DaemonSet's pod on `node` (kubectl exec).
fn weftd_trace(c: &Cluster, node: &str, args: &[String]) -> Value {
    let cp = c.control_plane().unwrap();
    let pods = cp.get_json(&["pods", "-n", "weft"]).unwrap();
    let pod = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["spec"]["nodeName"] == node)
        .and_then(|p| p["metadata"]["name"].as_str())
        .unwrap_or_else(|| panic!("no weft pod on {node}"))
        .to_string();
    let mut cmd = vec![
        "-n", "weft", "exec", &pod, "-c", "weftd", "--", "weftd", "trace",
    ];
    cmd.extend(args.iter().map(String::as_str));
    cmd.extend(["--output", "json"]);
    // A broken path exits non-zero; its JSON is still the answer.
    let out = cp
        .kubectl_command()
        .args(&cmd)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "weftd trace {args:?} on {node}: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// One row of the Services matrix: who answered and which source address it saw, against
/// what was expected (None: no answer).
struct Row {
    case: String,
    got: Option<(String, String)>,
    want: Option<(String, String)>,
}

fn want(who: &str, source: impl ToString) -> Option<(String, String)> {
    Some((who.to_string(), source.to_string()))
}

fn matrix_table(rows: &[Row]) -> String {
    let show = |a: &Option<(String, String)>| match a {
        Some((who, src)) => format!("{who} saw {src}"),
        None => "no answer".into(),
    };
    rows.iter()
        .map(|r| {
            format!(
                "{} {:<58} {:<28} (want {})\n",
                if r.got == r.want { " " } else { "!" },
                r.case,
                show(&r.got),
                show(&r.want)
            )
        })
        .collect()
}

/// Issue 14: Services through kube-proxy (iptables mode) and weft with weft's firewall
/// driver `firewall`, on n1 and n2 (host-gw) and the far node n3 (VXLAN). Every case checks
/// who answered and the source address the backend saw:
/// - pod -> ClusterIP keeps the client pod's address (same node, other node, over VXLAN both
///   ways);
/// - hairpin (a pod reaching itself through a Service, as the only endpoint and as one of
///   two) is masqueraded by kube-proxy to the pod gateway on the pod's node; the other
///   endpoint of two sees the client pod's address;
/// - NodePort (externalTrafficPolicy Cluster) from the world is masqueraded by kube-proxy to
///   the address of the interface the forwarding node sends it out of: the node's underlay
///   address towards a host-gw peer, its pod gateway when the backend is local, its VTEP
///   address over VXLAN;
/// - externalTrafficPolicy Local keeps the client's address, and a node without an endpoint
///   does not answer.
fn services_through_kube_proxy(firewall: &str) {
    use std::net::{IpAddr, SocketAddr};
    let t0 = std::time::Instant::now();
    let mut cfg = kube(2, true);
    cfg.firewall = firewall.into();
    let mut c = Cluster::build(cfg).unwrap_or_else(|e| panic!("{e}"));
    c.start_agents().unwrap_or_else(|e| panic!("{e}"));
    // weftd runs the driver the ConfigMap names on every node, its rules in place.
    for n in ["n1", "n2", "n3"] {
        let (_, body) = agent_get(&c, n, "/status");
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let driver = v["firewall"]["driver"].as_str().unwrap_or_default();
        assert!(
            driver.starts_with(firewall) && v["firewall"]["in_place"] == true,
            "{n}: weftd firewall {} (want {firewall})",
            v["firewall"]
        );
    }
    let mut pods = std::collections::HashMap::new();
    for (node, name) in [
        ("n1", "web"),
        ("n1", "near"),
        ("n2", "far"),
        ("n2", "mate"),
        ("n3", "distant"),
    ] {
        let p = c.add_kube_pod(node, name).unwrap_or_else(|e| panic!("{e}"));
        pods.insert(name, p);
    }
    eprintln!("[{firewall}] lab and 5 pods up after {:.1?}", t0.elapsed());
    let cp = c.control_plane().unwrap();
    for (pod, labels) in [
        ("web", &["svc=web", "pair=yes"][..]),
        ("mate", &["pair=yes"]),
        ("distant", &["svc=distant"]),
    ] {
        let mut args = vec!["label", "pod", pod];
        args.extend(labels);
        cp.kubectl(&args).unwrap();
    }
    let (web_ip, _) = apply_service(&c, "web", "svc=web", None);
    let (pair_ip, _) = apply_service(&c, "pair", "pair=yes", None);
    let (distant_ip, _) = apply_service(&c, "distant", "svc=distant", None);
    let (_, cluster_port) = apply_service(&c, "web-cluster", "svc=web", Some("Cluster"));
    let (_, local_port) = apply_service(&c, "web-local", "svc=web", Some("Local"));
    let (cluster_port, local_port) = (cluster_port.unwrap(), local_port.unwrap());
    let ip = |name: &str| pods[name].ipv4().unwrap().to_string();
    let node_ip = |n: &str| IpAddr::V4(c.node(n).unwrap().underlay_ip);
    let ns = |name: &str| pods[name].netns.handle();
    let world = c.world.handle();
    let vip = |ip: IpAddr| SocketAddr::new(ip, 80);
    // The first answer of each case waits for kube-proxy's sync (and the endpoints).
    let sync = Duration::from_secs(30);
    let gw1 = pod_gateway(&c, "n1");
    // n3 (the far node, behind the router) is a VXLAN peer of n1 (`auto` backend).
    let (_, body) = agent_get(&c, "n1", "/status");
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let path_to_n3 = v["last_reconcile"]["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "n3")
        .map(|p| p["path"].clone());
    assert_eq!(path_to_n3, Some(json!("vxlan")), "n1's path to n3: {body}");
    let vtep3 = pod_cidr(&c, "n3").network().to_string();
    let mut rows = Vec::new();
    let mut row = |case: &str, got, want| {
        rows.push(Row {
            case: case.into(),
            got,
            want,
        })
    };
    let t_cases = std::time::Instant::now();
    row(
        "ClusterIP, client on the backend's node (bridged)",
        answer_within(ns("near"), vip(web_ip), sync),
        want("web", ip("near")),
    );
    row(
        "ClusterIP, client on another node (host-gw)",
        answer_within(ns("far"), vip(web_ip), sync),
        want("web", ip("far")),
    );
    row(
        "ClusterIP, hairpin: the pod is the only endpoint",
        answer_within(ns("web"), vip(web_ip), sync),
        want("web", &gw1),
    );
    // Two endpoints, one of them the client: both answer in turn (kube-proxy picks at random).
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        if let Some(a) = answer_within(ns("web"), vip(pair_ip), sync) {
            seen.insert(a);
        }
        if seen.len() >= 2 {
            break;
        }
    }
    let seen_from = |who: &str| seen.iter().find(|(w, _)| w == who).cloned();
    row(
        "ClusterIP, 2 endpoints, hairpin to itself",
        seen_from("web"),
        want("web", &gw1),
    );
    row(
        "ClusterIP, 2 endpoints, the other (on n2)",
        seen_from("mate"),
        want("mate", ip("web")),
    );
    row(
        "NodePort from the world via n2 (no endpoint, host-gw)",
        answer_within(world, SocketAddr::new(node_ip("n2"), cluster_port), sync),
        want("web", node_ip("n2")),
    );
    row(
        "NodePort from the world via n1 (the backend's node)",
        answer_within(world, SocketAddr::new(node_ip("n1"), cluster_port), sync),
        want("web", &gw1),
    );
    row(
        "NodePort Local from the world via n1 (endpoint here)",
        answer_within(world, SocketAddr::new(node_ip("n1"), local_port), sync),
        want("web", weft_lab::cluster::WORLD_IP),
    );
    // Once n1 answered, n2's rules are in place too: one try.
    row(
        "NodePort Local from the world via n2 (no endpoint)",
        agnhost_answer_from(world, SocketAddr::new(node_ip("n2"), local_port)),
        None,
    );
    row(
        "ClusterIP, client on the far node n3 (VXLAN to n1)",
        answer_within(ns("distant"), vip(web_ip), sync),
        want("web", ip("distant")),
    );
    row(
        "ClusterIP on the far node, client on n1 (VXLAN to n3)",
        answer_within(ns("near"), vip(distant_ip), sync),
        want("distant", ip("near")),
    );
    row(
        "NodePort from the world via n3 (VXLAN to n1)",
        answer_within(world, SocketAddr::new(node_ip("n3"), cluster_port), sync),
        want("web", &vtep3),
    );
    // `weftd trace` (weft's own image, in its DaemonSet pod) follows kube-proxy's DNAT from
    // the kernel's nat table to the endpoints and the path to each.
    let t_trace = std::time::Instant::now();
    let svc_trace = |node: &str, args: &[String]| {
        let t = weftd_trace(&c, node, args);
        let eps: Vec<(String, bool)> = t["services"][0]["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                (
                    format!("{}:{}", e["ip"].as_str().unwrap(), e["port"]),
                    e["masquerade"] == true,
                )
            })
            .collect();
        let paths: Vec<&str> = t["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["dst"].as_str())
            .collect();
        assert_eq!(t["ok"], true, "{node}: trace {args:?}: {t:#}");
        let mut paths: Vec<String> = paths.into_iter().map(String::from).collect();
        paths.sort();
        (eps, paths, t)
    };
    let arg = |v: &dyn ToString| v.to_string();
    let (eps, paths, t) = svc_trace("n1", &[ip("near"), arg(&web_ip), arg(&"--port"), arg(&80)]);
    assert_eq!(eps, [(format!("{}:8080", ip("web")), false)], "near -> web");
    assert_eq!(paths, [ip("web")]);
    // kube-proxy uses the machine's `iptables`: the nft backend here.
    let first = t["hops"][0]["detail"].as_str().unwrap_or_default();
    assert!(
        first.contains("= default/web") && first.contains("kube-proxy (iptables-nft)"),
        "{first}"
    );
    // With --port, the NetworkPolicy verdict for the endpoint, inside the one JSON document.
    assert_eq!(t["policy"][0]["to"], format!("{}:8080", ip("web")), "{t:#}");
    assert!(
        t["policy"][0]["verdict"]
            .as_str()
            .is_some_and(|v| v.starts_with("allowed")),
        "{t:#}"
    );
    let (mut eps, paths, _) = svc_trace("n1", &[ip("web"), arg(&pair_ip)]);
    eps.sort();
    let mut want_pair = vec![
        (format!("{}:8080", ip("web")), true),
        (format!("{}:8080", ip("mate")), false),
    ];
    want_pair.sort();
    assert_eq!(eps, want_pair, "web -> pair (hairpin masqueraded)");
    assert_eq!(paths.len(), 2);
    let (eps, _, _) = svc_trace(
        "n2",
        &[
            arg(&weft_lab::cluster::WORLD_IP),
            arg(&node_ip("n2")),
            arg(&"--port"),
            arg(&cluster_port),
            arg(&"--arriving"),
        ],
    );
    assert_eq!(
        eps,
        [(format!("{}:8080", ip("web")), true)],
        "NodePort via n2"
    );
    eprintln!("[{firewall}] 3 traces in {:.1?}", t_trace.elapsed());
    eprintln!(
        "[{firewall}] {} cases in {:.1?}; total {:.1?}\n{}",
        rows.len(),
        t_cases.elapsed(),
        t0.elapsed(),
        matrix_table(&rows)
    );
    let wrong: Vec<&Row> = rows.iter().filter(|r| r.got != r.want).collect();
    assert!(
        wrong.is_empty(),
        "[{firewall}] Services matrix:\n{}",
        matrix_table(&rows)
    );
}

#[test]
fn services_through_kube_proxy_with_weft_nftables_firewall() {
    services_through_kube_proxy("nftables");
}

#[test]
fn services_through_kube_proxy_with_weft_iptables_firewall() {
    services_through_kube_proxy("iptables");
}

/// What one connection attempt to a Service ended with.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// agnhost answered with its pod name.
    Answer(String),
    /// ECONNREFUSED (kube-proxy's REJECT for a Service without endpoints, or a closed port).
    Refused,
    /// No answer within the attempt's timeout.
    TimedOut,
    Failed(String),
}

#[derive(Debug, Clone)]
struct Attempt {
    started: std::time::Instant,
    took: Duration,
    outcome: Outcome,
}

impl Attempt {
    /// When its outcome was known (a connection may succeed only on a retransmitted SYN).
    fn ended(&self) -> std::time::Instant {
        self.started + self.took
    }
}

/// Per attempt: connect and read at most this long each, so no attempt hangs. Longer than
/// TCP's first SYN retransmission (1 s): kube-proxy REJECTs with ICMP port unreachable, which
/// the kernel rate-limits per destination (`icmp_ratelimit` 1 s, a burst of 6), so a client
/// connecting many times a second to a Service without endpoints gets some refusals only on
/// the retransmitted SYN.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

fn attempt(to: std::net::SocketAddr) -> Outcome {
    use std::io::{BufRead, ErrorKind};
    let s = match std::net::TcpStream::connect_timeout(&to, ATTEMPT_TIMEOUT) {
        Ok(s) => s,
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => return Outcome::Refused,
        Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {
            return Outcome::TimedOut
        }
        Err(e) => return Outcome::Failed(format!("connect: {e}")),
    };
    if let Err(e) = s.set_read_timeout(Some(ATTEMPT_TIMEOUT)) {
        return Outcome::Failed(format!("set timeout: {e}"));
    }
    let mut line = String::new();
    match std::io::BufReader::new(s).read_line(&mut line) {
        Ok(_) => match line.split_whitespace().next() {
            Some(name) => Outcome::Answer(name.to_string()),
            None => Outcome::Failed("closed without an answer".into()),
        },
        Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {
            Outcome::TimedOut
        }
        Err(e) => Outcome::Failed(format!("read: {e}")),
    }
}

/// A client connecting to `to` again and again from a pod's netns (a thread of its own),
/// recording every attempt, until dropped.
struct ClientLoop {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    log: std::sync::Arc<std::sync::Mutex<Vec<Attempt>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ClientLoop {
    fn start(ns: &weft_netops::netns::NetNs, to: std::net::SocketAddr) -> ClientLoop {
        use std::os::fd::{AsFd, AsRawFd};
        use std::sync::atomic::Ordering;
        let fd = ns.as_fd().try_clone_to_owned().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (stop2, log2) = (stop.clone(), log.clone());
        let thread = std::thread::spawn(move || {
            // SAFETY: plain syscall on a valid fd; affects only this thread.
            assert_eq!(
                unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) },
                0,
                "setns into the client pod"
            );
            while !stop2.load(Ordering::Relaxed) {
                let started = std::time::Instant::now();
                let outcome = attempt(to);
                log2.lock().unwrap().push(Attempt {
                    started,
                    took: started.elapsed(),
                    outcome,
                });
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        ClientLoop {
            stop,
            log,
            thread: Some(thread),
        }
    }

    /// The attempts that started at or after `t`.
    fn since(&self, t: std::time::Instant) -> Vec<Attempt> {
        let log = self.log.lock().unwrap();
        log.iter().filter(|a| a.started >= t).cloned().collect()
    }

    fn all(&self) -> Vec<Attempt> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for ClientLoop {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The ready endpoints of Service `name` by pod name.
fn endpoint_pods(cp: &ControlPlane, name: &str) -> std::collections::BTreeSet<String> {
    let ep = cp.get_json(&["endpoints", name]).unwrap_or(Value::Null);
    ep["subsets"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["addresses"].as_array().into_iter().flatten())
        .filter_map(|a| a["targetRef"]["name"].as_str().map(String::from))
        .collect()
}

/// Pods labelled `app=<app>`: name -> (IP, node), those that have an IP.
fn labelled_pods(
    cp: &ControlPlane,
    app: &str,
) -> std::collections::BTreeMap<String, (String, String)> {
    let pods = cp
        .get_json(&["pods", "-l", &format!("app={app}")])
        .unwrap_or(Value::Null);
    pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p["metadata"]["name"].as_str()?.to_string(),
                (
                    p["status"]["podIP"].as_str()?.to_string(),
                    p["spec"]["nodeName"].as_str()?.to_string(),
                ),
            ))
        })
        .collect()
}

fn answered_by(attempts: &[Attempt]) -> std::collections::BTreeSet<String> {
    attempts
        .iter()
        .filter_map(|a| match &a.outcome {
            Outcome::Answer(n) => Some(n.clone()),
            _ => None,
        })
        .collect()
}

/// (answers, refused, timed out, failed) among `attempts`.
fn tally(attempts: &[Attempt]) -> (usize, usize, usize, usize) {
    let count = |f: &dyn Fn(&Outcome) -> bool| attempts.iter().filter(|a| f(&a.outcome)).count();
    (
        count(&|o| matches!(o, Outcome::Answer(_))),
        count(&|o| *o == Outcome::Refused),
        count(&|o| *o == Outcome::TimedOut),
        count(&|o| matches!(o, Outcome::Failed(_))),
    )
}

/// The attempts of the next `window` (waits for them).
fn steady_window(client: &ClientLoop, window: Duration) -> Vec<Attempt> {
    let t = std::time::Instant::now();
    std::thread::sleep(window);
    client.since(t)
}

/// Issue 14: a Deployment's endpoints change under a client that keeps connecting to its
/// ClusterIP (every attempt bounded by [`ATTEMPT_TIMEOUT`]): scaled 1 -> 3 -> 0 -> 1. Answers
/// only ever come from pods that were endpoints; once kube-proxy synced, from the current
/// ones only; at 0 replicas connections are refused at once (kube-proxy's REJECT), not left
/// to time out; the deleted pods leave no IPAM reservation, host veth, /32 route or
/// permanent neighbour on any node, and weft's own kernel objects are as before. Figures
/// (time from each scale to the new state answering) are printed.
#[test]
fn service_endpoints_follow_a_deployment_scaled_under_a_client_loop() {
    use std::collections::{BTreeMap, BTreeSet};
    use std::time::Instant;
    let mut c = Cluster::build(kube(2, false)).unwrap_or_else(|e| panic!("{e}"));
    c.start_agents().unwrap_or_else(|e| panic!("{e}"));
    let client = c
        .add_kube_pod("n1", "client")
        .unwrap_or_else(|e| panic!("{e}"));
    let nodes = ["n1", "n2"];
    let baseline: Vec<(Vec<String>, usize)> = nodes
        .iter()
        .map(|n| {
            let ns = c.node(n).unwrap().ns();
            (weft_kernel_objects(ns), weft_veths(ns).len())
        })
        .collect();
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": "echo", "namespace": "default" },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": "echo" } },
            "template": {
                "metadata": { "labels": { "app": "echo" } },
                "spec": {
                    "terminationGracePeriodSeconds": 2,
                    "automountServiceAccountToken": false,
                    "containers": [weft_lab::kube::lab::agnhost_container()],
                },
            },
        },
    });
    let cp = c.control_plane().unwrap();
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(deployment.to_string().as_bytes()),
    )
    .unwrap();
    let (vip, _) = apply_service(&c, "echo", "app=echo", None);
    let vip = std::net::SocketAddr::new(vip, 80);
    let client_loop = ClientLoop::start(client.netns.handle(), vip);
    let run_start = Instant::now();
    let mut scaled_at = Vec::new();
    // Every pod that was ever an endpoint, and every Deployment pod's (IP, node).
    let mut ever: BTreeSet<String> = BTreeSet::new();
    let mut pods: BTreeMap<String, (String, String)> = BTreeMap::new();
    // Figures count from the start of `kubectl scale` (the API write is inside it).
    let scale = |n: u32| {
        let t = Instant::now();
        cp.kubectl(&["scale", "deployment", "echo", &format!("--replicas={n}")])
            .unwrap();
        t
    };
    let mut figures = Vec::new();

    // 1 replica: it answers.
    let t = Instant::now();
    wait_until("1 endpoint answers", Duration::from_secs(90), || {
        let eps = endpoint_pods(cp, "echo");
        ever.extend(eps.iter().cloned());
        pods.extend(labelled_pods(cp, "echo"));
        let answered = answered_by(&client_loop.since(t));
        (eps.len() == 1 && eps.is_subset(&answered))
            .then_some(())
            .ok_or_else(|| format!("endpoints {eps:?}, answered {answered:?}"))
    });
    let first: BTreeSet<String> = endpoint_pods(cp, "echo");

    // 1 -> 3: all three answer; then only they do.
    let t = scale(3);
    scaled_at.push((3, t.duration_since(run_start)));
    let mut t_eps = None;
    wait_until("3 endpoints answer", Duration::from_secs(90), || {
        let eps = endpoint_pods(cp, "echo");
        ever.extend(eps.iter().cloned());
        pods.extend(labelled_pods(cp, "echo"));
        if eps.len() == 3 && t_eps.is_none() {
            t_eps = Some(t.elapsed());
        }
        let answered = answered_by(&client_loop.since(t));
        (eps.len() == 3 && eps.is_subset(&answered))
            .then_some(())
            .ok_or_else(|| format!("endpoints {eps:?}, answered {answered:?}"))
    });
    let three = endpoint_pods(cp, "echo");
    let attempts = client_loop.since(t);
    for new in three.difference(&first) {
        let at = attempts
            .iter()
            .find(|a| a.outcome == Outcome::Answer(new.clone()))
            .map(|a| a.ended().duration_since(t));
        figures.push(format!(
            "1->3: first answer from new endpoint {new} after {at:.1?}"
        ));
    }
    figures.push(format!(
        "1->3: 3 ready endpoints after {:.1?}",
        t_eps.unwrap()
    ));
    let window = steady_window(&client_loop, Duration::from_secs(2));
    let (answers, ..) = tally(&window);
    assert_eq!(answers, window.len(), "at 3 replicas: {window:?}");
    assert_eq!(answered_by(&window), three, "at 3 replicas, answered by");

    // 3 -> 0: kube-proxy rejects; once the pods are gone every attempt is refused at once.
    let t = scale(0);
    scaled_at.push((0, t.duration_since(run_start)));
    wait_until("the pods are gone", Duration::from_secs(120), || {
        let eps = endpoint_pods(cp, "echo");
        let left = labelled_pods(cp, "echo");
        (eps.is_empty() && left.is_empty())
            .then_some(())
            .ok_or_else(|| format!("endpoints {eps:?}, pods {left:?}"))
    });
    let gone = t.elapsed();
    // kube-proxy's sync: five refusals in a row.
    wait_until("refused at 0 replicas", Duration::from_secs(30), || {
        let a = client_loop.all();
        let last5: Vec<&Attempt> = a.iter().rev().take(5).collect();
        (last5.len() == 5 && last5.iter().all(|a| a.outcome == Outcome::Refused))
            .then_some(())
            .ok_or_else(|| format!("last attempts {last5:?}"))
    });
    let transition = client_loop.since(t);
    let first_refused = transition
        .iter()
        .find(|a| a.outcome == Outcome::Refused)
        .map(|a| a.ended().duration_since(t));
    let (a, r, to, f) = tally(&transition);
    figures.push(format!(
        "3->0: endpoints empty and pods gone after {gone:.1?}; first refusal after \
         {first_refused:.1?}; meanwhile {a} answers, {r} refused, {to} timed out, {f} failed"
    ));
    let window = steady_window(&client_loop, Duration::from_secs(4));
    let refused: Vec<&Attempt> = window
        .iter()
        .filter(|a| a.outcome == Outcome::Refused)
        .collect();
    assert_eq!(
        refused.len(),
        window.len(),
        "at 0 replicas every attempt must be refused: {window:?}"
    );
    let slowest = refused.iter().map(|a| a.took).max().unwrap_or_default();
    let at_once = refused
        .iter()
        .filter(|a| a.took < Duration::from_millis(100))
        .count();
    figures.push(format!(
        "0: {} attempts in 4 s, all refused: {at_once} at once, the others on the SYN \
         retransmission (ICMP rate limit); slowest {slowest:.1?}",
        window.len()
    ));

    // Nothing left of the deleted pods on any node.
    let deleted: BTreeMap<String, (String, String)> = pods.clone();
    for (i, n) in nodes.iter().enumerate() {
        let ns = c.node(n).unwrap().ns();
        let ipam = c
            .kube()
            .unwrap()
            .node(n)
            .unwrap()
            .host_path("/var/lib/cni/weft")
            .unwrap();
        let held = reservations(&ipam);
        let mut nl = weft_netops::Netlink::in_netns(ns).unwrap();
        let routes: Vec<String> = nl
            .list_routes(None, Some(254))
            .unwrap()
            .into_iter()
            .map(|r| r.dst.to_string())
            .collect();
        let permanent: Vec<String> = nl
            .list_neighbours(None)
            .unwrap()
            .into_iter()
            .filter(|e| e.state & weft_netops::netlink::NUD_PERMANENT != 0)
            .map(|e| e.ip.to_string())
            .collect();
        for (pod, (ip, _)) in &deleted {
            assert!(
                !held.contains(ip),
                "{n}: {ip} of deleted {pod} still reserved"
            );
            assert!(
                !routes.contains(&format!("{ip}/32")),
                "{n}: a /32 route to deleted {pod} ({ip}) is left"
            );
            assert!(
                !permanent.contains(ip),
                "{n}: a permanent neighbour for deleted {pod} ({ip}) is left"
            );
        }
        let (objects, veths) = &baseline[i];
        assert_eq!(&weft_kernel_objects(ns), objects, "{n}: weft's objects");
        assert_eq!(weft_veths(ns).len(), *veths, "{n}: weft host veths");
    }

    // 0 -> 1: the new pod answers, then only it does.
    let t = scale(1);
    scaled_at.push((1, t.duration_since(run_start)));
    wait_until("1 endpoint answers again", Duration::from_secs(90), || {
        let eps = endpoint_pods(cp, "echo");
        ever.extend(eps.iter().cloned());
        let answered = answered_by(&client_loop.since(t));
        (eps.len() == 1 && eps.is_subset(&answered))
            .then_some(())
            .ok_or_else(|| format!("endpoints {eps:?}, answered {answered:?}"))
    });
    let again = endpoint_pods(cp, "echo");
    assert!(again.is_disjoint(&three), "a new pod, not an old one");
    let at = client_loop
        .since(t)
        .iter()
        .find(|a| matches!(a.outcome, Outcome::Answer(_)))
        .map(|a| a.ended().duration_since(t));
    figures.push(format!(
        "0->1: first answer from the new pod after {at:.1?}"
    ));
    let window = steady_window(&client_loop, Duration::from_secs(2));
    assert_eq!(answered_by(&window), again, "at 1 replica, answered by");
    assert_eq!(tally(&window).0, window.len(), "at 1 replica: {window:?}");

    // Over the whole run: answers only ever from pods that were endpoints.
    let all = client_loop.all();
    let strangers: BTreeSet<String> = answered_by(&all).difference(&ever).cloned().collect();
    assert!(
        strangers.is_empty(),
        "answers from non-endpoints {strangers:?}"
    );
    let slowest = all.iter().map(|a| a.took).max().unwrap_or_default();
    let (a, r, to, f) = tally(&all);
    // When something failed, against when the Deployment was scaled (from the loop's start).
    let failures: Vec<String> = all
        .iter()
        .filter_map(|a| match &a.outcome {
            Outcome::Failed(why) => Some(format!(
                "{why} at {:.1?}",
                a.started.saturating_duration_since(run_start)
            )),
            _ => None,
        })
        .collect();
    figures.push(format!("scaled to (replicas, at): {scaled_at:.1?}"));
    figures.push(format!(
        "whole run: {} attempts: {a} answers, {r} refused, {to} timed out, {f} failed \
         {failures:?}; slowest {slowest:.1?}",
        all.len()
    ));
    eprintln!("{}", figures.join("\n"));
}
