//! weft under a real container runtime: containerd (Debian's `containerd` and `runc`) runs
//! inside a lab node's netns with its CRI plugin configured for the conflist weftd wrote, and
//! the test drives it through the CRI gRPC API the way the kubelet does:
//! RunPodSandbox -> the sandbox has an IP from weft, reachable from pods on the same and on the
//! other node -> StopPodSandbox (CNI DEL) -> the IP and the host veth are released ->
//! RemovePodSandbox.
//!
//! Set-up facts (this sandbox and Debian's packages): the pause image is built locally (an OCI
//! archive around busybox-static) and imported with `ctr`, nothing is pulled; containerd needs
//! `restrict_oom_score_adj = true`; it is started with setns(CLONE_NEWNET) only (like
//! `nsenter --net`; `ip netns exec` remounts /sys and breaks runc's cgroup detection); the CRI
//! reads the first file of its conf dir only (weftd's 10-weft.conflist is the only one there);
//! its `bin_dir` is a single directory, so weft and the reference plugins are linked into one.
//!
//! Root; needs `weft` and `weftd` built (see tests/e2e.rs) and containerd, runc, ctr,
//! busybox-static (scripts/install-deps.sh). Skipped with a message when containerd is absent.

use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ListPodSandboxRequest, PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StatusRequest, StopPodSandboxRequest,
};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint, Uri};
use weft_lab::proc::Proc;
use weft_lab::{probe, Cluster, DatastoreKind, LabConfig};
use weft_netops::Netlink;

const PAUSE_IMAGE: &str = "localhost/weft-pause:1";
const CONTAINERD: &str = "/usr/bin/containerd";
const NAMESPACE: &str = "k8s.io";

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sha256(path: &Path) -> String {
    sh(Command::new("sha256sum").arg(path))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Stores `path` as a blob of the OCI layout `layout`; returns its descriptor.
fn blob(layout: &Path, path: &Path, media_type: &str) -> serde_json::Value {
    let digest = sha256(path);
    let size = std::fs::metadata(path).unwrap().len();
    std::fs::copy(path, layout.join("blobs/sha256").join(&digest)).unwrap();
    serde_json::json!({ "mediaType": media_type, "digest": format!("sha256:{digest}"), "size": size })
}

/// An OCI image archive (docker.io/library/pause's job, without a registry): busybox-static
/// as /bin/sh and /bin/sleep, waiting until SIGTERM.
fn build_pause_image(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    let layout = dir.join("layout");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for applet in ["sh", "sleep"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    let layer = dir.join("layer.tar");
    sh(Command::new("tar")
        .args([
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--mtime=@0",
            "-C",
        ])
        .arg(&rootfs)
        .arg("-cf")
        .arg(&layer)
        .arg("."));
    let layer_desc = blob(&layout, &layer, "application/vnd.oci.image.layer.v1.tar");
    let config = dir.join("config.json");
    let config_doc = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": ["/bin/sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 1; done"]
        },
        "rootfs": { "type": "layers", "diff_ids": [layer_desc["digest"]] },
    });
    std::fs::write(&config, config_doc.to_string()).unwrap();
    let config_desc = blob(&layout, &config, "application/vnd.oci.image.config.v1+json");
    let manifest = dir.join("manifest.json");
    let manifest_doc = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc,
        "layers": [layer_desc],
    });
    std::fs::write(&manifest, manifest_doc.to_string()).unwrap();
    let mut manifest_desc = blob(
        &layout,
        &manifest,
        "application/vnd.oci.image.manifest.v1+json",
    );
    manifest_desc["annotations"] = serde_json::json!({ "io.containerd.image.name": PAUSE_IMAGE });
    manifest_desc["platform"] = serde_json::json!({ "architecture": "amd64", "os": "linux" });
    std::fs::write(
        layout.join("index.json"),
        serde_json::json!({ "schemaVersion": 2, "manifests": [manifest_desc] }).to_string(),
    )
    .unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let archive = dir.join("pause.tar");
    sh(Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&archive)
        .arg("."));
    archive
}

/// containerd in a node's netns; on drop: every sandbox stopped and removed through the CRI,
/// then containerd stopped, then any shim left killed.
struct Containerd {
    child: Proc,
    dir: PathBuf,
    sock: PathBuf,
    rt: tokio::runtime::Runtime,
}

impl Containerd {
    fn start(node: &weft_lab::Node, dir: &Path, cni_bin: &Path) -> Containerd {
        std::fs::create_dir_all(dir).unwrap();
        let sock = dir.join("containerd.sock");
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.overlayfs",
]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  # Pod netns under our state dir, not in the machine's /run/netns.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"
    max_conf_num = 1
"#,
            root = dir.join("root").display(),
            state = dir.join("state").display(),
            sock = sock.display(),
            bin = cni_bin.display(),
            conf = node.cni_conf_dir().display(),
        );
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut cmd = node.netns.command(CONTAINERD);
        cmd.arg("--config").arg(&config_path);
        // The lab's process guard: dies with the test process, stopped on drop.
        let child = Proc::start("containerd", cmd, Some(&dir.join("containerd.log")))
            .unwrap_or_else(|e| panic!("{e}"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut c = Containerd {
            child,
            dir: dir.to_path_buf(),
            sock,
            rt,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !c.sock.exists() {
            if let Some(status) = c.child.exited() {
                panic!("containerd exited with {status}:\n{}", c.log());
            }
            assert!(
                Instant::now() < deadline,
                "no containerd socket:\n{}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    fn ctr(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.sock)
            .args(["--namespace", NAMESPACE]);
        cmd
    }

    fn client(&self) -> RuntimeServiceClient<Channel> {
        let sock = self.sock.clone();
        let channel = self
            .rt
            .block_on(
                Endpoint::try_from("http://[::]:50051")
                    .unwrap()
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let sock = sock.clone();
                        async move {
                            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                                tokio::net::UnixStream::connect(sock).await?,
                            ))
                        }
                    })),
            )
            .expect("connect to containerd");
        RuntimeServiceClient::new(channel)
    }

    /// Shim processes of this containerd (their pid files are in its state dir).
    fn shim_pids(&self) -> Vec<i32> {
        let tasks = self
            .dir
            .join("state/io.containerd.runtime.v2.task")
            .join(NAMESPACE);
        std::fs::read_dir(tasks)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("shim.pid")).ok())
            .filter_map(|p| p.trim().parse().ok())
            .collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.child.exited().is_none() {
            let mut client = self.client();
            let rt = &self.rt;
            if let Ok(list) =
                rt.block_on(client.list_pod_sandbox(ListPodSandboxRequest { filter: None }))
            {
                for s in list.into_inner().items {
                    let id = s.id;
                    let _ = rt.block_on(client.stop_pod_sandbox(StopPodSandboxRequest {
                        pod_sandbox_id: id.clone(),
                    }));
                    let _ = rt.block_on(
                        client.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id }),
                    );
                }
            }
        }
        let shims = self.shim_pids();
        self.child.stop(Duration::from_secs(5));
        for pid in shims {
            // SAFETY: plain kill(2) on the shims our containerd started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        // Rootfs bind mounts of a sandbox that could not be removed.
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            let prefix = self.dir.display().to_string();
            let mut ours: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter(|m| m.starts_with(&prefix))
                .collect();
            ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
            for m in ours {
                let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

/// Files under `dir` named like an IP address: the IPAM reservations.
fn reservations(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if e.path().is_dir() {
            out.extend(reservations(&e.path()));
        } else if name.parse::<IpAddr>().is_ok() {
            out.push((name, std::fs::read_to_string(e.path()).unwrap_or_default()));
        }
    }
    out
}

#[test]
fn containerd_cri_sandbox_gets_a_weft_ip_reachable_across_nodes_and_released() {
    if !Path::new(CONTAINERD).is_file() || !Path::new("/usr/sbin/runc").exists() {
        eprintln!("SKIPPED: containerd/runc not installed (scripts/install-deps.sh)");
        return;
    }
    let cfg = LabConfig {
        nodes: 2,
        far_node: false,
        datastore: DatastoreKind::Static,
        ready_timeout: Duration::from_secs(45),
        ..LabConfig::default()
    };
    let mut c = Cluster::start(cfg).unwrap_or_else(|e| panic!("{e}"));
    // One bin dir for the CRI: weft (as `weftd install` would put it) and the reference plugins.
    let cni_bin = c.dir.join("cni-bin");
    std::fs::create_dir_all(&cni_bin).unwrap();
    std::os::unix::fs::symlink(c.bin_dir.join("weft"), cni_bin.join("weft")).unwrap();
    for p in ["portmap", "bandwidth", "loopback"] {
        std::os::unix::fs::symlink(Path::new("/usr/lib/cni").join(p), cni_bin.join(p)).unwrap();
    }
    let image = build_pause_image(&c.dir.join("image"));
    let ctrd = Containerd::start(&c.nodes[0], &c.dir.join("containerd"), &cni_bin);
    sh(ctrd
        .ctr()
        .args(["images", "import", "--snapshotter", "native"])
        .arg(&image));

    let mut cri = ctrd.client();
    // The CRI reports the network ready once it has loaded weftd's conflist.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = ctrd
            .rt
            .block_on(cri.status(StatusRequest { verbose: false }))
            .unwrap()
            .into_inner();
        let ready = st
            .status
            .iter()
            .flat_map(|s| &s.conditions)
            .any(|c| c.r#type == "NetworkReady" && c.status);
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "CRI network not ready: {st:?}");
        std::thread::sleep(Duration::from_millis(200));
    }

    let config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "web".into(),
            uid: "0c5e5a8e-weft-test".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "web".into(),
        log_directory: ctrd.dir.join("logs").display().to_string(),
        ..Default::default()
    };
    let t0 = Instant::now();
    let id = ctrd
        .rt
        .block_on(cri.run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        }))
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", ctrd.log()))
        .into_inner()
        .pod_sandbox_id;
    let run_took = t0.elapsed();
    let status = ctrd
        .rt
        .block_on(cri.pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.clone(),
            verbose: false,
        }))
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    let ip: IpAddr = status
        .network
        .as_ref()
        .map(|n| n.ip.clone())
        .unwrap_or_default()
        .parse()
        .unwrap_or_else(|_| panic!("no sandbox IP: {status:?}"));
    eprintln!("RunPodSandbox took {run_took:?}; sandbox {id} has {ip}");

    // The IP is from n1's pod CIDR, reserved by weft's IPAM for this sandbox.
    let n1 = &c.nodes[0];
    let cidr = n1
        .static_pod_cidr(c.config.network, c.config.subnet_len)
        .unwrap();
    match ip {
        IpAddr::V4(v4) => assert!(cidr.contains(&v4), "{ip} not in {cidr}"),
        IpAddr::V6(_) => panic!("IPv4 expected, got {ip}"),
    }
    let held = reservations(&n1.ipam_dir());
    assert!(
        held.iter()
            .any(|(a, owner)| a == &ip.to_string() && owner.starts_with(&id)),
        "{ip} not reserved for {id}: {held:?}"
    );
    // The host veth, found by weft's alias weft:<network>:<container>:<ifname>.
    let alias = format!("weft:weft:{id}:eth0");
    let host_veth = |c: &Cluster| {
        Netlink::in_netns(c.nodes[0].ns())
            .unwrap()
            .list_links()
            .unwrap()
            .into_iter()
            .find(|l| l.alias.as_deref() == Some(alias.as_str()))
    };
    let veth = host_veth(&c).unwrap_or_else(|| panic!("no host veth with alias {alias}"));
    assert_eq!(veth.kind.as_deref(), Some("veth"));

    // Reachable from the node, a pod on the same node and a pod on the other node.
    assert!(probe::ping(c.nodes[0].ns(), ip), "n1 -> sandbox {ip}");
    let same = c.add_pod("n1", "same").unwrap_or_else(|e| panic!("{e}"));
    let other = c.add_pod("n2", "other").unwrap_or_else(|e| panic!("{e}"));
    assert!(probe::ping(same.ns(), ip), "pod on n1 -> sandbox {ip}");
    assert!(probe::ping(other.ns(), ip), "pod on n2 -> sandbox {ip}");

    // StopPodSandbox: CNI DEL through the chain; the IP and the host veth are released.
    ctrd.rt
        .block_on(cri.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        }))
        .unwrap_or_else(|e| panic!("StopPodSandbox: {e}\n{}", ctrd.log()));
    assert!(host_veth(&c).is_none(), "host veth {} left", veth.name);
    let held = reservations(&c.nodes[0].ipam_dir());
    assert!(
        !held.iter().any(|(a, _)| a == &ip.to_string()),
        "{ip} still reserved: {held:?}"
    );
    assert!(!probe::ping_n(other.ns(), ip, 1, 1.0), "{ip} still answers");

    ctrd.rt
        .block_on(cri.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: id.clone(),
        }))
        .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}"));
    let left = ctrd
        .rt
        .block_on(cri.list_pod_sandbox(ListPodSandboxRequest { filter: None }))
        .unwrap()
        .into_inner()
        .items;
    assert!(left.is_empty(), "sandboxes left: {left:?}");
    drop(cri);
    drop(ctrd);
    drop(c);
}
