//! `--datastore kubernetes`: the lab's nodes become a real Kubernetes cluster. The control
//! plane runs in the underlay netns at 192.168.77.250:6443, every node runs containerd and
//! kubelet (see [`super::node`]) and registers itself, nodeipam gives each a /24 of the lab's
//! cluster network, and weft is installed the way users install it: its image (built offline
//! from the workspace's binaries) imported into every node's containerd and
//! `deploy/weft.yaml` applied with kubectl, with only the ConfigMap's `WEFT_CLUSTER_CIDRS` set
//! to the lab's network (as the manifest tells users to) and `WEFT_FIREWALL` to the lab's
//! firewall driver.

use super::control_plane::{ControlPlane, ControlPlaneSpec};
use super::image;
use super::node::{KubeNode, KubeNodeSpec};
use crate::cluster::{Cluster, Pod, ETCD_IP};
use crate::conflist::ConfList;
use crate::error::{io_err, LabError};
use crate::ns::Netns;
use serde_json::{json, Map, Value};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// deploy/weft.yaml, as shipped.
pub const MANIFEST: &str = include_str!("../../../../deploy/weft.yaml");

/// The kube parts of a lab.
pub struct KubeLab {
    pub cp: ControlPlane,
    pub nodes: Vec<KubeNode>,
    /// The weft image's reference (deploy/weft.yaml's `image:`).
    pub weft_image: String,
    /// The image archives every node imports (busybox, weft, agnhost).
    pub images: Vec<PathBuf>,
}

impl KubeLab {
    pub fn node(&self, name: &str) -> Option<&KubeNode> {
        self.nodes.iter().find(|n| n.spec.name == name)
    }

    /// Keeps every process after drop (a kept lab).
    pub fn keep(&mut self) {
        self.cp.keep();
        self.nodes.iter_mut().for_each(KubeNode::keep);
    }
}

impl Drop for KubeLab {
    fn drop(&mut self) {
        // Nodes first (in parallel: each stops kubelet, then sweeps its mount namespace).
        let nodes = std::mem::take(&mut self.nodes);
        std::thread::scope(|s| {
            for n in nodes {
                s.spawn(move || drop(n));
            }
        });
    }
}

/// The `image:` of deploy/weft.yaml (every container uses the same one).
pub fn manifest_image() -> Result<String, LabError> {
    MANIFEST
        .lines()
        .find_map(|l| l.trim().strip_prefix("image: "))
        .map(|s| s.trim().to_string())
        .ok_or_else(|| LabError::Setup("deploy/weft.yaml names no image".into()))
}

/// deploy/weft.yaml with ConfigMap settings replaced: each `(key, value)` must be set exactly
/// once (uncommented) in the manifest; nothing else changes.
pub fn patched_manifest(settings: &[(&str, &str)]) -> Result<String, LabError> {
    let mut lines: Vec<String> = MANIFEST.lines().map(String::from).collect();
    for (key, value) in settings {
        // Values go into a double-quoted YAML scalar: refuse what would need escaping.
        if value.contains(['"', '\\', '\n']) {
            return Err(LabError::Setup(format!(
                "ConfigMap value for {key} is not a plain string: {value:?}"
            )));
        }
        let needle = format!("{key}: ");
        let mut found = 0;
        for l in lines.iter_mut() {
            let Some(key_at) = l.find(&needle) else {
                continue;
            };
            if l.trim_start().starts_with('#') {
                continue;
            }
            found += 1;
            *l = format!("{}{key}: \"{value}\"", &l[..key_at]);
        }
        if found != 1 {
            return Err(LabError::Setup(format!(
                "deploy/weft.yaml: expected one {key} setting, found {found}"
            )));
        }
    }
    Ok(lines.join("\n") + "\n")
}

impl Cluster {
    /// The kube parts (only with `--datastore kubernetes`, after [`Cluster::start_agents`]).
    pub fn kube(&self) -> Option<&KubeLab> {
        self.kube.as_ref()
    }

    pub fn kube_mut(&mut self) -> Option<&mut KubeLab> {
        self.kube.as_mut()
    }

    /// The control plane (Err without `--datastore kubernetes`).
    pub fn control_plane(&self) -> Result<&ControlPlane, LabError> {
        self.kube
            .as_ref()
            .map(|k| &k.cp)
            .ok_or_else(|| LabError::Setup("this lab runs no Kubernetes".into()))
    }

    /// kubectl (admin) against the lab's apiserver.
    pub fn kubectl(&self, args: &[&str]) -> Result<String, LabError> {
        self.control_plane()?.kubectl(args).map_err(LabError::Setup)
    }

    /// Starts the control plane, then containerd + kubelet on every node (they register
    /// themselves), and waits until every Node has a pod CIDR.
    pub fn start_kube_nodes(&mut self) -> Result<(), LabError> {
        let assets = super::assets_dir()?;
        let kdir = self.dir.join("kube");
        let mut spec = ControlPlaneSpec::new(
            kdir.clone(),
            self.underlay.path(),
            ETCD_IP,
            self.config.network,
        )?;
        spec.node_cidr_mask = self.config.subnet_len;
        spec.assets = assets;
        spec.record_in = Some(self.dir.clone());
        spec.detached = self.config.keep;
        spec.timeout = self.config.ready_timeout;
        let cp = ControlPlane::start(spec)?;
        let weft_image = manifest_image()?;
        let images_dir = self.dir.join("images");
        let busybox = image::busybox_image(&images_dir.join("busybox"))?;
        let weftd_dir = self
            .weftd_path()?
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default();
        let weft = image::weft_image(&images_dir.join("weft"), &weft_image, &weftd_dir)?;
        let agnhost = image::agnhost_image(&images_dir.join("agnhost"), &weftd_dir)?;
        self.kube = Some(KubeLab {
            cp,
            nodes: Vec::new(),
            weft_image,
            images: vec![busybox, weft, agnhost],
        });
        let names: Vec<String> = self
            .nodes
            .iter()
            .map(|n| n.name.clone())
            .filter(|n| !self.config.kube_deferred_nodes.contains(n))
            .collect();
        for name in &names {
            self.start_kube_node(name)?;
        }
        for name in &names {
            self.wait_kube_node_registered(name)?;
        }
        Ok(())
    }

    fn start_kube_node(&mut self, name: &str) -> Result<(), LabError> {
        let n = self.node_or_err(name)?;
        let (netns_path, node_ip, dir) = (n.netns.path(), n.underlay_ip, n.dir.join("kube"));
        let kube = self
            .kube
            .as_mut()
            .ok_or_else(|| LabError::Setup("no Kubernetes in this lab".into()))?;
        if kube.node(name).is_some() {
            return Err(LabError::Setup(format!("{name} runs a kubelet already")));
        }
        let spec = KubeNodeSpec {
            name: name.to_string(),
            netns_path,
            node_ip,
            dir,
            images: kube.images.clone(),
            sandbox_image: image::BUSYBOX_IMAGE.into(),
            record_in: Some(self.dir.clone()),
            detached: self.config.keep,
        };
        let mut node = KubeNode::start(spec, &kube.cp)?;
        node.start_kube_proxy(&kube.cp, &self.config.network.to_string())?;
        kube.nodes.push(node);
        Ok(())
    }

    fn wait_kube_node_registered(&mut self, name: &str) -> Result<(), LabError> {
        let timeout = self.config.ready_timeout;
        let kube = self
            .kube
            .as_mut()
            .ok_or_else(|| LabError::Setup("no Kubernetes in this lab".into()))?;
        kube.cp
            .wait_for(
                &format!("Node {name} registered with a pod CIDR"),
                timeout,
                |cp| {
                    let n = cp.get_json(&["node", name])?;
                    n["spec"]["podCIDR"]
                        .as_str()
                        .map(|_| ())
                        .ok_or_else(|| format!("Node {name} has no spec.podCIDR yet"))
                },
            )
            .map_err(|e| node_err(kube, name, e))
    }

    /// A node joins the running cluster: its containerd, kubelet and kube-proxy start, the
    /// Node registers and gets a pod CIDR, weft's DaemonSet runs on it and it becomes Ready.
    pub fn add_kube_node(&mut self, name: &str) -> Result<(), LabError> {
        self.start_kube_node(name)?;
        self.wait_kube_node_registered(name)?;
        self.wait_nodes_ready()?;
        self.wait_weft_ready()
    }

    /// The names of the nodes that run a kubelet.
    pub fn kube_node_names(&self) -> Vec<String> {
        self.kube
            .as_ref()
            .map(|k| k.nodes.iter().map(|n| n.spec.name.clone()).collect())
            .unwrap_or_default()
    }

    /// Waits until the weft DaemonSet's pods are Ready on every kubelet node.
    pub fn wait_weft_ready(&mut self) -> Result<(), LabError> {
        let want = self.kube_node_names().len();
        let timeout = self.config.ready_timeout.max(Duration::from_secs(120));
        let kube = self
            .kube
            .as_mut()
            .ok_or_else(|| LabError::Setup("no Kubernetes in this lab".into()))?;
        kube.cp
            .wait_for("weft DaemonSet Ready on every node", timeout, |cp| {
                let ds = cp.get_json(&["daemonset", "weft", "-n", "weft"])?;
                let ready = ds["status"]["numberReady"].as_u64().unwrap_or(0) as usize;
                let desired = ds["status"]["desiredNumberScheduled"].as_u64().unwrap_or(0) as usize;
                if ready == want && desired == want {
                    Ok(())
                } else {
                    let pods = cp
                        .kubectl(&["get", "pods", "-n", "weft", "-o", "wide"])
                        .unwrap_or_default();
                    Err(format!("{ready} of {want} weft pods ready\n{pods}"))
                }
            })
    }

    /// `kubectl apply` of deploy/weft.yaml (WEFT_CLUSTER_CIDRS = the lab's network,
    /// WEFT_FIREWALL = the lab's `firewall`), then
    /// waits until the DaemonSet's pod is Ready on every node.
    pub fn deploy_weft(&mut self) -> Result<(), LabError> {
        let network = self.config.network.to_string();
        let manifest = patched_manifest(&[
            ("WEFT_CLUSTER_CIDRS", &network),
            ("WEFT_FIREWALL", &self.config.firewall),
        ])?;
        let path = self.dir.join("weft.yaml");
        std::fs::write(&path, &manifest).map_err(io_err("write", &path))?;
        self.control_plane()?
            .kubectl(&["apply", "-f", &path.display().to_string()])
            .map_err(LabError::Setup)?;
        self.wait_weft_ready()
    }

    /// Waits until every Node is Ready (the CNI config is in place).
    pub fn wait_nodes_ready(&mut self) -> Result<(), LabError> {
        let names = self.kube_node_names();
        let timeout = self.config.ready_timeout;
        let kube = self
            .kube
            .as_mut()
            .ok_or_else(|| LabError::Setup("no Kubernetes in this lab".into()))?;
        for name in &names {
            kube.cp
                .wait_for(&format!("Node {name} Ready"), timeout, |cp| {
                    let n = cp.get_json(&["node", name])?;
                    let ready = n["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|c| c["type"] == "Ready");
                    match ready {
                        Some(c) if c["status"] == "True" => Ok(()),
                        Some(c) => Err(format!("Ready={}: {}", c["status"], c["message"])),
                        None => Err("no Ready condition".into()),
                    }
                })?;
        }
        Ok(())
    }

    /// The whole kube set-up: control plane, nodes, weft by its DaemonSet, Nodes Ready.
    pub fn start_kube(&mut self) -> Result<(), LabError> {
        let t0 = Instant::now();
        self.start_kube_nodes()?;
        eprintln!(
            "weft-lab: control plane and {} kubelets up in {:.1?}",
            self.kube_node_names().len(),
            t0.elapsed()
        );
        self.deploy_weft()?;
        self.wait_nodes_ready()?;
        eprintln!(
            "weft-lab: weft DaemonSet ready on every node after {:.1?}",
            t0.elapsed()
        );
        Ok(())
    }
}

fn node_err(kube: &mut KubeLab, name: &str, e: LabError) -> LabError {
    let Some(n) = kube.nodes.iter_mut().find(|n| n.spec.name == name) else {
        return e;
    };
    let mut detail = e.to_string();
    if let Some(k) = &mut n.kubelet {
        if let Some(status) = k.exited() {
            detail.push_str(&format!("\nkubelet exited with {status}"));
        }
        detail.push_str(&format!(
            "\n--- last lines of {} ---\n{}",
            k.log.display(),
            k.log_tail()
        ));
    }
    detail.push_str(&format!(
        "\n--- last lines of {} ---\n{}",
        n.containerd.log.display(),
        n.containerd.log_tail()
    ));
    LabError::Setup(detail)
}

/// The lab's classic agnhost container (TCP 8080, UDP 8081), for Deployments and the like.
pub fn agnhost_container() -> Value {
    KubeContainer::agnhost().manifest(None)
}

/// A pod's JSON (status.podIP, spec.nodeName, ...).
pub fn pod_json(cp: &ControlPlane, namespace: &str, name: &str) -> Result<Value, LabError> {
    cp.get_json(&["pod", "-n", namespace, name])
        .map_err(LabError::Setup)
}

/// One container port (`name` makes it a named port, what NetworkPolicy can refer to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubePort {
    pub name: Option<String>,
    pub port: u16,
    /// "TCP" or "UDP".
    pub protocol: &'static str,
}

impl KubePort {
    pub fn new(port: u16, protocol: &'static str) -> KubePort {
        KubePort {
            name: None,
            port,
            protocol,
        }
    }

    pub fn named(name: &str, port: u16, protocol: &'static str) -> KubePort {
        KubePort {
            name: Some(name.into()),
            port,
            protocol,
        }
    }
}

/// One container of a [`KubePodSpec`]: `weft-agnhost ARGS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeContainer {
    pub name: String,
    pub args: Vec<String>,
    pub ports: Vec<KubePort>,
}

impl KubeContainer {
    /// `weft-agnhost serve` on these ports (each over its protocol; a number named twice is
    /// served once).
    pub fn serve(ports: Vec<KubePort>) -> KubeContainer {
        let mut args = vec!["serve".to_string()];
        let mut seen = Vec::new();
        for p in &ports {
            if seen.contains(&(p.port, p.protocol)) {
                continue;
            }
            seen.push((p.port, p.protocol));
            args.push(format!("--{}", p.protocol.to_ascii_lowercase()));
            args.push(p.port.to_string());
        }
        KubeContainer {
            name: "main".into(),
            args,
            ports,
        }
    }

    /// The lab's classic workload: serving TCP 8080 and UDP 8081.
    pub fn agnhost() -> KubeContainer {
        KubeContainer::serve(vec![
            KubePort::new(image::AGNHOST_PORTS.0, "TCP"),
            KubePort::new(image::AGNHOST_PORTS.1, "UDP"),
        ])
    }

    /// The container object (pure); `tcp_probe` adds kubelet's readiness and liveness probes.
    pub fn manifest(&self, tcp_probe: Option<u16>) -> Value {
        let ports: Vec<Value> = self
            .ports
            .iter()
            .map(|p| {
                let mut v = json!({ "containerPort": p.port, "protocol": p.protocol });
                if let Some(n) = &p.name {
                    v["name"] = json!(n);
                }
                v
            })
            .collect();
        let mut v = json!({
            "name": self.name,
            "image": image::AGNHOST_IMAGE,
            "imagePullPolicy": "Never",
            "command": ["/usr/local/bin/weft-agnhost"],
            "args": self.args,
            "env": [{
                "name": "POD_NAME",
                "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } },
            }],
            "ports": ports,
        });
        if let Some(port) = tcp_probe {
            let probe = json!({ "tcpSocket": { "port": port }, "periodSeconds": 1,
                                "timeoutSeconds": 1, "failureThreshold": 1 });
            v["readinessProbe"] = probe.clone();
            v["livenessProbe"] = probe;
        }
        v
    }
}

/// A kubectl pod of the lab: agnhost containers pinned to a node, with labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubePodSpec {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub labels: Vec<(String, String)>,
    pub containers: Vec<KubeContainer>,
    /// A TCP readiness and liveness probe (kubelet, from the node) on this port, every second.
    pub tcp_probe: Option<u16>,
}

impl KubePodSpec {
    /// The lab's classic workload: `default/<name>` serving TCP 8080 and UDP 8081.
    pub fn agnhost(node: &str, name: &str) -> KubePodSpec {
        KubePodSpec {
            namespace: "default".into(),
            name: name.into(),
            node: node.into(),
            labels: vec![("app".into(), "weft-lab".into())],
            containers: vec![KubeContainer::agnhost()],
            tcp_probe: None,
        }
    }

    /// The Pod object (pure).
    pub fn manifest(&self) -> Value {
        let labels: Map<String, Value> = self
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        let containers: Vec<Value> = self
            .containers
            .iter()
            .map(|c| c.manifest(self.tcp_probe))
            .collect();
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": { "name": self.name, "namespace": self.namespace, "labels": labels },
            "spec": {
                "nodeName": self.node,
                "terminationGracePeriodSeconds": 2,
                "automountServiceAccountToken": false,
                "containers": containers,
            },
        })
    }

    /// The name of its netns in the lab: `<id>-k-<name>` in `default`, `<id>-k-<ns>-<name>`
    /// elsewhere (one name may be in several namespaces).
    fn netns_name(&self, id: &str) -> String {
        if self.namespace == "default" {
            format!("{id}-k-{}", self.name)
        } else {
            format!("{id}-k-{}-{}", self.namespace, self.name)
        }
    }
}

fn dns_label(what: &str, s: &str) -> Result<(), LabError> {
    if s.is_empty()
        || s.len() > 40
        || !s
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(LabError::Setup(format!("bad {what} {s:?} (a-z, 0-9, -)")));
    }
    Ok(())
}

/// A running pod's (addresses, first container id) from its JSON; Err says what it waits for.
fn running(p: &Value) -> Result<(Vec<IpAddr>, String), String> {
    let st = &p["status"];
    let cs = &st["containerStatuses"][0];
    let cid = cs["containerID"].as_str().unwrap_or_default();
    if st["phase"] != "Running" || cid.is_empty() {
        return Err(format!(
            "phase {}, conditions {}, container {}",
            st["phase"], st["conditions"], cs["state"]
        ));
    }
    let ips: Vec<IpAddr> = st["podIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["ip"].as_str()?.parse().ok())
        .collect();
    if ips.is_empty() {
        return Err("no podIPs".into());
    }
    Ok((ips, cid.trim_start_matches("containerd://").to_string()))
}

impl Cluster {
    /// Creates a Pod with kubectl on `node` (`weft-agnhost serve` on TCP 8080 and UDP 8081,
    /// its network from weft through containerd), waits until it runs, and names its netns `<id>-k-<name>` for probes. It
    /// joins [`Cluster::pods`], so the connectivity matrix covers it.
    pub fn add_kube_pod(&mut self, node: &str, name: &str) -> Result<Pod, LabError> {
        let mut pods = self.add_kube_pods(&[KubePodSpec::agnhost(node, name)])?;
        Ok(pods.remove(0))
    }

    /// Creates a Namespace with these labels.
    pub fn add_kube_namespace(&self, name: &str, labels: &[(&str, &str)]) -> Result<(), LabError> {
        dns_label("namespace", name)?;
        let labels: Map<String, Value> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let doc = json!({ "apiVersion": "v1", "kind": "Namespace",
                          "metadata": { "name": name, "labels": labels } });
        self.control_plane()?
            .kubectl_stdin(&["create", "-f", "-"], Some(doc.to_string().as_bytes()))
            .map_err(LabError::Setup)?;
        Ok(())
    }

    /// Creates all the pods with one kubectl call, then waits until every one runs (they come
    /// up in parallel), names their netns (see [`KubePodSpec`]) and adds them to
    /// [`Cluster::pods`]. Returned in the order given.
    pub fn add_kube_pods(&mut self, specs: &[KubePodSpec]) -> Result<Vec<Pod>, LabError> {
        for s in specs {
            dns_label("pod name", &s.name)?;
            dns_label("namespace", &s.namespace)?;
            self.node_or_err(&s.node)?;
        }
        let list = json!({
            "apiVersion": "v1",
            "kind": "List",
            "items": specs.iter().map(KubePodSpec::manifest).collect::<Vec<_>>(),
        });
        let timeout = self.config.ready_timeout;
        let id = self.id.clone();
        let kube = self
            .kube
            .as_mut()
            .ok_or_else(|| LabError::Setup("no Kubernetes in this lab".into()))?;
        kube.cp
            .kubectl_stdin(&["create", "-f", "-"], Some(list.to_string().as_bytes()))
            .map_err(LabError::Setup)?;
        let what = format!("{} pods running", specs.len());
        let states = kube.cp.wait_for(&what, timeout, |cp| {
            let all = cp.get_json(&["pods", "--all-namespaces"])?;
            let items = all["items"].as_array().cloned().unwrap_or_default();
            specs
                .iter()
                .map(|s| {
                    let p = items
                        .iter()
                        .find(|p| {
                            p["metadata"]["namespace"] == s.namespace.as_str()
                                && p["metadata"]["name"] == s.name.as_str()
                        })
                        .ok_or_else(|| format!("{}/{}: not found", s.namespace, s.name))?;
                    running(p).map_err(|e| format!("{}/{}: {e}", s.namespace, s.name))
                })
                .collect::<Result<Vec<_>, String>>()
        })?;
        let mut out = Vec::new();
        for (s, (ips, container)) in specs.iter().zip(states) {
            let kn = kube
                .node(&s.node)
                .ok_or_else(|| LabError::Setup(format!("no kubelet on {}", s.node)))?;
            let pid = task_pid(kn, &container)?;
            let netns = {
                let _g = crate::registry::create_guard().map_err(|_| LabError::Interrupted)?;
                let src = PathBuf::from(format!("/proc/{pid}/ns/net"));
                Netns::bind_named(&s.netns_name(&id), &src)
                    .map_err(io_err("name pod netns", &src))?
            };
            out.push(Pod {
                name: s.name.clone(),
                node: s.node.clone(),
                netns: Arc::new(netns),
                ips,
                container_id: container,
                result: Value::Null,
                conflist: ConfList {
                    cni_version: String::new(),
                    name: String::new(),
                    disable_check: true,
                    plugins: Vec::new(),
                },
                capability_args: Map::new(),
                kube_namespace: Some(s.namespace.clone()),
            });
        }
        self.pods.extend(out.iter().cloned());
        Ok(out)
    }

    /// `kubectl delete pod` and wait until it is gone (its sandbox stopped: CNI DEL done).
    pub(crate) fn delete_kube_pod(&mut self, namespace: &str, name: &str) -> Result<(), LabError> {
        let cp = self.control_plane()?;
        cp.kubectl(&[
            "delete",
            "pod",
            "-n",
            namespace,
            name,
            "--wait=true",
            "--timeout=60s",
        ])
        .map_err(LabError::Setup)?;
        Ok(())
    }

    /// weftd's HTTP endpoint `path` on `node` (e.g. `/status`), through the node's loopback:
    /// (status code, body), (0, "") when it does not answer.
    pub fn agent_get(&self, node: &str, path: &str) -> (u16, String) {
        let Some(n) = self.node(node) else {
            return (0, String::new());
        };
        crate::probe::http_get(
            n.ns(),
            crate::cluster::AGENT_LISTEN,
            path,
            Duration::from_secs(2),
        )
        .unwrap_or((0, String::new()))
    }

    /// SIGKILLs container `container` of pod `namespace/name` through its node's containerd
    /// (`ctr tasks kill`: a crash, no graceful stop); kubelet restarts it. Returns the
    /// container's restart count before the kill.
    pub fn kill_kube_container(
        &self,
        namespace: &str,
        name: &str,
        container: &str,
    ) -> Result<u64, LabError> {
        let p = pod_json(self.control_plane()?, namespace, name)?;
        let node = p["spec"]["nodeName"].as_str().unwrap_or_default();
        let status = p["status"]["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["name"] == container)
            .ok_or_else(|| {
                LabError::Setup(format!("{namespace}/{name} has no container {container}"))
            })?;
        let cid = status["containerID"]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches("containerd://");
        if cid.is_empty() || !cid.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(LabError::Setup(format!(
                "{namespace}/{name}/{container}: no running container ({cid:?})"
            )));
        }
        let kn = self
            .kube()
            .and_then(|k| k.node(node))
            .ok_or_else(|| LabError::Setup(format!("no kubelet on {node:?}")))?;
        let out = std::process::Command::new("ctr")
            .arg("--address")
            .arg(kn.containerd_socket())
            .args([
                "--namespace",
                "k8s.io",
                "tasks",
                "kill",
                "--signal",
                "SIGKILL",
                cid,
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(io_err("run ctr", std::path::Path::new("ctr")))?;
        if !out.status.success() {
            return Err(LabError::Setup(format!(
                "ctr tasks kill {cid}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(status["restartCount"].as_u64().unwrap_or(0))
    }

    /// Runs `program args` of this machine inside pod `namespace/name`'s netns; see
    /// [`exec_in_pod`].
    pub fn exec_in_pod(
        &self,
        namespace: &str,
        name: &str,
        program: &str,
        args: &[String],
    ) -> Result<std::process::ExitStatus, LabError> {
        exec_in_pod(&self.id, namespace, name, program, args)
    }
}

/// kubectl (admin) for lab `id` (also one kept by another process): runs inside its underlay
/// netns, where the apiserver is.
pub fn lab_kubectl(id: &str) -> Result<std::process::Command, LabError> {
    if !crate::registry::valid_id(id) {
        return Err(LabError::Setup(format!("{id:?} is not a weft-lab id")));
    }
    let dir = crate::registry::lab_dir(id);
    let kubeconfig = dir.join("kube/admin.kubeconfig");
    if !kubeconfig.is_file() {
        return Err(LabError::Setup(format!(
            "lab {id} runs no Kubernetes (no {})",
            kubeconfig.display()
        )));
    }
    let ns_path = weft_netops::netns::named_path(&format!("{id}-ul"));
    let ns = weft_netops::netns::NetNs::open(&ns_path).map_err(|source| LabError::Net {
        op: format!("open netns {}", ns_path.display()),
        source,
    })?;
    let mut cmd = crate::ns::enter_command_owned(ns, super::assets_dir()?.join("kubectl"));
    cmd.arg("--kubeconfig").arg(kubeconfig);
    Ok(cmd)
}

/// Runs `program args` of this machine inside the netns of pod `namespace/name` of lab `id`
/// (found through kubectl, then its container's task on its node's containerd). Output is
/// inherited; returns the exit status.
pub fn exec_in_pod(
    id: &str,
    namespace: &str,
    name: &str,
    program: &str,
    args: &[String],
) -> Result<std::process::ExitStatus, LabError> {
    let out = lab_kubectl(id)?
        .args(["get", "pod", "-n", namespace, name, "-o", "json"])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(io_err("run kubectl", std::path::Path::new("kubectl")))?;
    if !out.status.success() {
        return Err(LabError::Setup(format!(
            "kubectl get pod {namespace}/{name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let p: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| LabError::Setup(format!("pod {namespace}/{name}: {e}")))?;
    let node = p["spec"]["nodeName"].as_str().unwrap_or_default();
    if node.is_empty() || !node.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(LabError::Setup(format!(
            "pod {namespace}/{name} is on no lab node ({node:?})"
        )));
    }
    let cid = p["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("containerd://");
    let sock = crate::registry::lab_dir(id)
        .join(node)
        .join("kube/root/run-containerd/containerd.sock");
    let pid = task_pid_at(&sock, node, cid)?;
    let ns = weft_netops::netns::NetNs::open(format!("/proc/{pid}/ns/net")).map_err(|source| {
        LabError::Net {
            op: format!("open netns of {namespace}/{name}"),
            source,
        }
    })?;
    crate::ns::enter_command(&ns, program)
        .args(args)
        .status()
        .map_err(io_err("run", std::path::Path::new(program)))
}

/// The pid of container `id`'s task on node `kn` (`ctr task ls`).
fn task_pid(kn: &KubeNode, id: &str) -> Result<u32, LabError> {
    task_pid_at(&kn.containerd_socket(), &kn.spec.name, id)
}

fn task_pid_at(sock: &std::path::Path, node: &str, id: &str) -> Result<u32, LabError> {
    if id.is_empty() {
        return Err(LabError::Setup("the pod has no container yet".into()));
    }
    let out = std::process::Command::new("ctr")
        .arg("--address")
        .arg(sock)
        .args(["--namespace", "k8s.io", "tasks", "ls"])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(io_err("run ctr", std::path::Path::new("ctr")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .skip(1)
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next()? == id).then(|| f.next()?.parse().ok())?
        })
        .ok_or_else(|| {
            LabError::Setup(format!(
                "no task {id} on {node}: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patched_manifest_sets_each_configmap_key_and_nothing_else() {
        let m = patched_manifest(&[
            ("WEFT_CLUSTER_CIDRS", "10.9.0.0/16"),
            ("WEFT_FIREWALL", "iptables"),
        ])
        .unwrap();
        assert!(
            m.contains("\n  WEFT_CLUSTER_CIDRS: \"10.9.0.0/16\"\n"),
            "{m}"
        );
        assert!(m.contains("\n  WEFT_FIREWALL: \"iptables\"\n"), "{m}");
        let changed = MANIFEST
            .lines()
            .zip(m.lines())
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(changed, 2);
        assert_eq!(MANIFEST.lines().count(), m.lines().count());
    }

    #[test]
    fn patched_manifest_refuses_unknown_keys_and_quoting() {
        let e = patched_manifest(&[("WEFT_NOPE", "x")]).unwrap_err();
        assert!(e.to_string().contains("WEFT_NOPE"), "{e}");
        // Commented out in the manifest: not a setting.
        assert!(patched_manifest(&[("WEFT_MTU", "1400")]).is_err());
        assert!(patched_manifest(&[("WEFT_FIREWALL", "a\"b")]).is_err());
    }

    #[test]
    fn pod_manifest_has_named_ports_args_and_probes() {
        let mut spec = KubePodSpec {
            namespace: "x".into(),
            name: "a".into(),
            node: "n1".into(),
            labels: vec![("pod".into(), "a".into())],
            containers: vec![KubeContainer::serve(vec![
                KubePort::named("serve-80-tcp", 80, "TCP"),
                KubePort::named("web", 80, "TCP"),
                KubePort::new(81, "UDP"),
            ])],
            tcp_probe: None,
        };
        let m = spec.manifest();
        assert_eq!(m["metadata"]["namespace"], "x");
        assert_eq!(m["metadata"]["labels"]["pod"], "a");
        assert_eq!(m["spec"]["nodeName"], "n1");
        let c = &m["spec"]["containers"][0];
        // 80/TCP is named twice but served once.
        assert_eq!(c["args"], json!(["serve", "--tcp", "80", "--udp", "81"]));
        assert_eq!(
            c["ports"][1],
            json!({ "containerPort": 80, "protocol": "TCP", "name": "web" })
        );
        assert_eq!(
            c["ports"][2],
            json!({ "containerPort": 81, "protocol": "UDP" })
        );
        assert!(c.get("readinessProbe").is_none());
        spec.tcp_probe = Some(80);
        let c = &spec.manifest()["spec"]["containers"][0];
        assert_eq!(c["readinessProbe"]["tcpSocket"]["port"], 80);
        assert_eq!(c["livenessProbe"]["tcpSocket"]["port"], 80);
        assert_eq!(spec.netns_name("L"), "L-k-x-a");
        assert_eq!(KubePodSpec::agnhost("n1", "p").netns_name("L"), "L-k-p");
    }
}
