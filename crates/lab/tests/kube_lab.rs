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

    let cp = c.control_plane().unwrap();
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

/// Issue 14 (first part): Services through kube-proxy (iptables mode) and weft: a ClusterIP
/// reached from a pod on the backend's node (bridged) and from another node (host-gw) with
/// the client pod's own address as the source the backend sees; a pod reaching itself through
/// its own Service (hairpin, one endpoint: itself).
#[test]
fn cluster_ip_services_work_through_weft_from_every_node_and_hairpin() {
    let mut c = Cluster::build(kube(2, false)).unwrap_or_else(|e| panic!("{e}"));
    c.start_agents().unwrap_or_else(|e| panic!("{e}"));
    let web = c
        .add_kube_pod("n1", "web")
        .unwrap_or_else(|e| panic!("{e}"));
    let near = c
        .add_kube_pod("n1", "near")
        .unwrap_or_else(|e| panic!("{e}"));
    let far = c
        .add_kube_pod("n2", "far")
        .unwrap_or_else(|e| panic!("{e}"));
    let cp = c.control_plane().unwrap();
    cp.kubectl(&["label", "pod", "web", "svc=web"]).unwrap();
    let svc = r#"{"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"selector": {"svc": "web"},
                 "ports": [{"protocol": "TCP", "port": 80, "targetPort": 8080}]}}"#;
    cp.kubectl_stdin(&["apply", "-f", "-"], Some(svc.as_bytes()))
        .unwrap();
    let cluster_ip: std::net::IpAddr = cp
        .kubectl(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let vip = std::net::SocketAddr::new(cluster_ip, 80);
    for (who, from) in [("same node", &near), ("other node", &far)] {
        let (name, source) = wait_for_answer(
            &format!("{who} reaches the ClusterIP"),
            from.netns.handle(),
            vip,
            Duration::from_secs(30),
        );
        assert_eq!(name, "web", "{who}: answered by {name}");
        assert_eq!(
            source,
            from.ipv4().unwrap().to_string(),
            "{who}: the backend must see the client pod's address (no SNAT pod to Service)"
        );
    }
    // Hairpin: web reaches itself through its own Service (kube-proxy masquerades hairpin
    // traffic; weft's bridge port has hairpin mode on).
    let (who, _) = wait_for_answer("hairpin", web.netns.handle(), vip, Duration::from_secs(10));
    assert_eq!(who, "web");
}

/// One TCP exchange with an agnhost from any netns: (who answered, the source it saw).
fn agnhost_answer_from(
    ns: &weft_netops::netns::NetNs,
    to: std::net::SocketAddr,
) -> Option<(String, String)> {
    weft_lab::probe::agnhost_exchange(ns, false, to, Duration::from_secs(1))
}

/// Waits (up to `timeout`) for an agnhost at `to` to answer from `ns`; (who, source seen).
fn wait_for_answer(
    what: &str,
    ns: &weft_netops::netns::NetNs,
    to: std::net::SocketAddr,
    timeout: Duration,
) -> (String, String) {
    let mut last = None;
    wait_until(what, timeout, || {
        last = agnhost_answer_from(ns, to);
        last.is_some()
            .then_some(())
            .ok_or_else(|| "no answer".to_string())
    });
    last.unwrap()
}

/// Issue 14 (second part): NodePort from the world host, through a node that has no endpoint
/// (the backend sees that node's address: kube-proxy masquerades) and, with
/// `externalTrafficPolicy: Local`, through the backend's node with the client's own address
/// (a node without an endpoint does not answer).
#[test]
fn node_ports_work_from_the_world_through_weft() {
    let mut c = Cluster::build(kube(2, false)).unwrap_or_else(|e| panic!("{e}"));
    c.start_agents().unwrap_or_else(|e| panic!("{e}"));
    c.add_kube_pod("n1", "web")
        .unwrap_or_else(|e| panic!("{e}"));
    let cp = c.control_plane().unwrap();
    cp.kubectl(&["label", "pod", "web", "svc=web"]).unwrap();
    let service = |name: &str, policy: &str| {
        format!(
            r#"{{"apiVersion": "v1", "kind": "Service",
                "metadata": {{"name": "{name}", "namespace": "default"}},
                "spec": {{"type": "NodePort", "externalTrafficPolicy": "{policy}",
                         "selector": {{"svc": "web"}},
                         "ports": [{{"protocol": "TCP", "port": 80, "targetPort": 8080}}]}}}}"#
        )
    };
    let node_port = |name: &str| -> u16 {
        cp.kubectl(&[
            "get",
            "service",
            name,
            "-o",
            "jsonpath={.spec.ports[0].nodePort}",
        ])
        .unwrap()
        .trim()
        .parse()
        .unwrap()
    };
    for (name, policy) in [("web-cluster", "Cluster"), ("web-local", "Local")] {
        cp.kubectl_stdin(
            &["apply", "-f", "-"],
            Some(service(name, policy).as_bytes()),
        )
        .unwrap();
    }
    let (cluster_port, local_port) = (node_port("web-cluster"), node_port("web-local"));
    let n1 = std::net::IpAddr::V4(c.node("n1").unwrap().underlay_ip);
    let n2 = std::net::IpAddr::V4(c.node("n2").unwrap().underlay_ip);
    let world = c.world.handle();

    // Cluster: through n2, which has no endpoint; the backend sees n2's address.
    let (who, source) = wait_for_answer(
        "NodePort through n2",
        world,
        std::net::SocketAddr::new(n2, cluster_port),
        Duration::from_secs(30),
    );
    assert_eq!(who, "web");
    assert_eq!(
        source,
        n2.to_string(),
        "masqueraded to the node that forwarded"
    );

    // Local: the client's own address through the backend's node; nothing through n2.
    let (who, source) = wait_for_answer(
        "Local NodePort through n1",
        world,
        std::net::SocketAddr::new(n1, local_port),
        Duration::from_secs(30),
    );
    assert_eq!(who, "web");
    assert_eq!(
        source,
        weft_lab::cluster::WORLD_IP.to_string(),
        "externalTrafficPolicy: Local keeps the client's address"
    );
    assert_eq!(
        agnhost_answer_from(world, std::net::SocketAddr::new(n2, local_port)),
        None,
        "a node without an endpoint must not answer a Local NodePort"
    );
}
