//! A real Kubernetes (v1.20.2 from scripts/kube-build.sh; `WEFT_KUBE_ASSETS` or its cache)
//! in the lab: control plane in the underlay netns, real kubelets with containerd as nodes,
//! weft installed by its own DaemonSet.
//!
//! Root; needs the Kubernetes binaries (scripts/test.sh builds them once and exports
//! WEFT_KUBE_ASSETS), etcd, openssl, and `weft`/`weftd` built.

use serde_json::{json, Value};
use std::time::Duration;
use weft_lab::cluster::ETCD_IP;
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
