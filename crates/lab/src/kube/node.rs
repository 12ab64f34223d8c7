//! A Kubernetes node in a lab node's netns: containerd 1.6 and a real kubelet, in a private
//! **mount** namespace of their own so that the node has its own /etc/cni/net.d, /opt/cni/bin,
//! /var/lib/cni, /var/lib/kubelet, /var/lib/containerd, /run/containerd, /var/log/pods, ...
//! (per-node dirs bound over the standard paths; a missing parent such as /etc/cni is made on
//! an overlay of its existing ancestor, never on the machine), and so that the sysctls kubelet
//! writes host-wide (`vm.overcommit_memory`, `kernel.panic`, `kernel.panic_on_oops`, ...) land
//! on per-node files bound over them. The machine's own paths and values never change.
//!
//! containerd is started with `unshare(CLONE_NEWNS)`, `/` made rslave (host mounts still reach
//! it, its mounts never reach the host), the overlays and binds, then exec; kubelet joins its
//! mount namespace and the node's netns with setns (like `nsenter --net= --mount=`, no /sys
//! remount). Teardown kills every process in that mount namespace and their descendants (the
//! shims and the containers), which also removes the namespace and its mounts.

use super::certs;
use super::control_plane::ControlPlane;
use crate::error::{io_err, LabError};
use crate::proc::{Proc, Spawn};
use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use weft_netops::netns::NetNs;

/// The standard paths a node gets its own copy of (node path, per-node dir name).
pub const NODE_DIRS: &[(&str, &str)] = &[
    ("/etc/cni/net.d", "etc-cni-net.d"),
    ("/opt/cni/bin", "opt-cni-bin"),
    ("/var/lib/cni", "var-lib-cni"),
    ("/var/lib/kubelet", "var-lib-kubelet"),
    ("/var/lib/containerd", "var-lib-containerd"),
    ("/run/containerd", "run-containerd"),
    ("/var/log/pods", "var-log-pods"),
    ("/var/log/containers", "var-log-containers"),
    ("/var/lib/weft", "var-lib-weft"),
    ("/run/weft", "run-weft"),
];

/// Host-wide sysctls kubelet sets (pkg/kubelet/cm setupKernelTunables): bound to per-node files.
pub const KUBELET_SYSCTLS: &[&str] = &[
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];

/// The reference plugins a node's runtime finds in /opt/cni/bin (what a distro's CNI plugins
/// package provides; weft's own plugin is installed by its DaemonSet).
pub const REFERENCE_PLUGINS: &[&str] = &["loopback", "portmap", "host-local", "bandwidth"];

/// Reads the machine's values of [`KUBELET_SYSCTLS`] (to check they never change).
pub fn host_sysctls() -> Vec<(String, String)> {
    KUBELET_SYSCTLS
        .iter()
        .map(|s| {
            let v = std::fs::read_to_string(Path::new("/proc/sys").join(s)).unwrap_or_default();
            (s.to_string(), v.trim().to_string())
        })
        .collect()
}

enum Step {
    Overlay { target: CString, options: CString },
    Mkdir(CString),
    Bind { src: CString, dst: CString },
}

fn cstr(p: &Path) -> Result<CString, LabError> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| LabError::Setup(format!("NUL in path {}", p.display())))
}

/// What the new mount namespace needs: overlays where a standard path's parent is missing on
/// the machine, the missing dirs, the binds. Computed before fork (no allocation after it).
fn mount_plan(root: &Path) -> Result<Vec<Step>, LabError> {
    mount_plan_for(root, NODE_DIRS)
}

fn mount_plan_for(root: &Path, dirs: &[(&str, &str)]) -> Result<Vec<Step>, LabError> {
    let mut overlays: Vec<PathBuf> = Vec::new();
    let mut mkdirs: Vec<PathBuf> = Vec::new();
    let mut binds: Vec<(PathBuf, PathBuf)> = Vec::new();
    for (target, name) in dirs {
        let target = Path::new(target);
        let src = root.join(name);
        std::fs::create_dir_all(&src).map_err(io_err("create node dir", &src))?;
        if !target.exists() {
            let mut anc = target.parent();
            while let Some(a) = anc {
                if a.exists() {
                    break;
                }
                anc = a.parent();
            }
            let anc = anc.unwrap_or(Path::new("/"));
            // /run is an overlay like any other parent (/run/weft exists on a machine only
            // while something made it); only / itself cannot be.
            if anc == Path::new("/") {
                return Err(LabError::Setup(format!(
                    "cannot give the node its own {}: its parent dirs are missing up to {}",
                    target.display(),
                    anc.display()
                )));
            }
            if !overlays.iter().any(|o| o == anc) {
                overlays.push(anc.to_path_buf());
            }
            let mut missing: Vec<PathBuf> = target
                .ancestors()
                .take_while(|a| !a.exists())
                .map(Path::to_path_buf)
                .collect();
            missing.reverse();
            for m in missing {
                if !mkdirs.contains(&m) {
                    mkdirs.push(m);
                }
            }
        }
        binds.push((src, target.to_path_buf()));
    }
    let sysctl_dir = root.join("sysctl");
    std::fs::create_dir_all(&sysctl_dir).map_err(io_err("create node dir", &sysctl_dir))?;
    for (name, value) in host_sysctls() {
        let file = sysctl_dir.join(name.replace('/', "."));
        std::fs::write(&file, format!("{value}\n")).map_err(io_err("write", &file))?;
        binds.push((file, Path::new("/proc/sys").join(&name)));
    }
    let mut steps = Vec::new();
    for o in &overlays {
        let name = o
            .display()
            .to_string()
            .trim_start_matches('/')
            .replace('/', "-");
        let upper = root.join("overlay").join(&name).join("upper");
        let work = root.join("overlay").join(&name).join("work");
        for d in [&upper, &work] {
            std::fs::create_dir_all(d).map_err(io_err("create overlay dir", d))?;
        }
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            o.display(),
            upper.display(),
            work.display()
        );
        steps.push(Step::Overlay {
            target: cstr(o)?,
            options: CString::new(options)
                .map_err(|_| LabError::Setup("NUL in overlay options".into()))?,
        });
    }
    for m in &mkdirs {
        steps.push(Step::Mkdir(cstr(m)?));
    }
    for (src, dst) in &binds {
        steps.push(Step::Bind {
            src: cstr(src)?,
            dst: cstr(dst)?,
        });
    }
    Ok(steps)
}

/// Runs in the child between fork and exec: only syscalls, no allocation.
fn enter_private_mounts(steps: &[Step]) -> std::io::Result<()> {
    let err = std::io::Error::last_os_error;
    // SAFETY: plain syscalls on pointers to CStrings that outlive the call.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(err());
        }
        if libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        ) != 0
        {
            return Err(err());
        }
        for step in steps {
            let rc = match step {
                Step::Overlay { target, options } => libc::mount(
                    c"overlay".as_ptr(),
                    target.as_ptr(),
                    c"overlay".as_ptr(),
                    0,
                    options.as_ptr().cast(),
                ),
                Step::Mkdir(p) => {
                    if libc::mkdir(p.as_ptr(), 0o755) != 0
                        && std::io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST)
                    {
                        -1
                    } else {
                        0
                    }
                }
                Step::Bind { src, dst } => libc::mount(
                    src.as_ptr(),
                    dst.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ),
            };
            if rc != 0 {
                return Err(err());
            }
        }
    }
    Ok(())
}

/// Where one node's kube files are.
#[derive(Debug, Clone)]
pub struct KubeNodeSpec {
    pub name: String,
    /// The lab node's netns (/run/netns/<id>-<name>).
    pub netns_path: PathBuf,
    pub node_ip: std::net::Ipv4Addr,
    /// Per-node dirs, configs, logs.
    pub dir: PathBuf,
    /// Image archives imported into its containerd before kubelet starts.
    pub images: Vec<PathBuf>,
    pub sandbox_image: String,
    pub record_in: Option<PathBuf>,
    pub detached: bool,
}

/// containerd + kubelet of one node.
pub struct KubeNode {
    pub spec: KubeNodeSpec,
    /// The inode of its mount namespace (what teardown sweeps).
    pub mntns: u64,
    pub containerd: Proc,
    pub kubelet: Option<Proc>,
    pub kube_proxy: Option<Proc>,
    ns: NetNs,
}

impl KubeNode {
    fn root(&self) -> PathBuf {
        self.spec.dir.join("root")
    }

    /// containerd's socket as seen from the machine (the node sees /run/containerd/...).
    pub fn containerd_socket(&self) -> PathBuf {
        self.root().join("run-containerd/containerd.sock")
    }

    /// The inode of the node's netns (with [`KubeNode::mntns`], what identifies its processes).
    pub fn netns_inode(&self) -> u64 {
        self.ns.inode().unwrap_or(0)
    }

    /// The processes of this node: containerd, kubelet, kube-proxy, shims, containers.
    pub fn processes(&self) -> Vec<i32> {
        crate::registry::node_processes(self.mntns, self.netns_inode())
    }

    /// The node's netns.
    pub fn ns(&self) -> &NetNs {
        &self.ns
    }

    /// The node's view of a standard path (e.g. /etc/cni/net.d) from the machine.
    pub fn host_path(&self, node_path: &str) -> Option<PathBuf> {
        NODE_DIRS
            .iter()
            .find_map(|(p, name)| {
                node_path
                    .strip_prefix(p)
                    .map(|rest| (name, rest.trim_start_matches('/')))
            })
            .map(|(name, rest)| self.root().join(name).join(rest))
    }

    /// Starts containerd in a new mount namespace inside the node's netns, imports the images,
    /// then starts kubelet (registering the Node with `kubeconfig`'s identity).
    pub fn start(spec: KubeNodeSpec, cp: &ControlPlane) -> Result<KubeNode, LabError> {
        let ns = NetNs::open(&spec.netns_path).map_err(|source| LabError::Net {
            op: format!("open netns {}", spec.netns_path.display()),
            source,
        })?;
        let root = spec.dir.join("root");
        let steps = mount_plan(&root)?;
        // kubeadm's preflight requires forwarding; weftd is not privileged and cannot set it.
        // A sysctl of the node's own netns.
        weft_netops::netns::run_in(&ns, || {
            weft_netops::sysctl::write("net/ipv4/ip_forward", "1")
        })
        .map_err(|source| LabError::Net {
            op: format!("enter {}", spec.netns_path.display()),
            source,
        })?
        .map_err(|source| LabError::Net {
            op: "net.ipv4.ip_forward=1".into(),
            source,
        })?;
        // The node's /opt/cni/bin: the reference plugins (weft's comes from its DaemonSet).
        for p in REFERENCE_PLUGINS {
            let src = Path::new("/usr/lib/cni").join(p);
            let dst = root.join("opt-cni-bin").join(p);
            std::fs::copy(&src, &dst).map_err(io_err("copy CNI plugin", &src))?;
        }
        let config = spec.dir.join("containerd.toml");
        std::fs::write(&config, containerd_config(&spec.sandbox_image))
            .map_err(io_err("write", &config))?;
        let mut cmd = crate::ns::enter_command(&ns, "/usr/bin/containerd");
        cmd.arg("--config").arg(&config);
        // SAFETY: enter_private_mounts only makes syscalls on data prepared before the fork.
        unsafe {
            cmd.pre_exec(move || enter_private_mounts(&steps));
        }
        let mut opts = Spawn::new(format!("containerd on {}", spec.name))
            .log(spec.dir.join("containerd.log"))
            .detached(spec.detached);
        opts.record_in = spec.record_in.clone();
        let mut containerd = Proc::spawn(cmd, opts)?;
        let mntns = std::fs::metadata(format!("/proc/{}/ns/mnt", containerd.pid()))
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap_or(0);
        if let Some(dir) = &spec.record_in {
            let name = spec
                .netns_path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let _ = crate::registry::record_mntns(dir, mntns, &name);
        }
        let sock = root.join("run-containerd/containerd.sock");
        containerd.wait_ready(Duration::from_secs(30), || {
            if sock.exists() {
                Ok(())
            } else {
                Err(format!("no socket {}", sock.display()))
            }
        })?;
        let mut node = KubeNode {
            spec,
            mntns,
            containerd,
            kubelet: None,
            kube_proxy: None,
            ns,
        };
        for image in node.spec.images.clone() {
            node.ctr(&[
                "images",
                "import",
                "--snapshotter",
                "native",
                &image.display().to_string(),
            ])?;
        }
        node.start_kubelet(cp)?;
        Ok(node)
    }

    /// `ctr -n k8s.io ARGS` against this node's containerd; its stdout.
    pub fn ctr(&self, args: &[&str]) -> Result<String, LabError> {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(self.containerd_socket())
            .args(["--namespace", "k8s.io"])
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(io_err("run ctr", Path::new("ctr")))?;
        if !out.status.success() {
            return Err(LabError::Setup(format!(
                "ctr {args:?} on {}: {}: {}",
                self.spec.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// (Re)starts kubelet in the node's netns and mount namespace.
    pub fn start_kubelet(&mut self, cp: &ControlPlane) -> Result<(), LabError> {
        let name = &self.spec.name;
        let (kubeconfig, _) = cp.client_kubeconfig(
            &format!("kubelet-{name}"),
            &format!("system:node:{name}"),
            &["system:nodes"],
        )?;
        let config = self.spec.dir.join("kubelet.json");
        let resolv = self.spec.dir.join("resolv.conf");
        std::fs::write(&resolv, "").map_err(io_err("write", &resolv))?;
        let doc = serde_json::json!({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": self.spec.node_ip.to_string(),
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248,
            "authentication": {
                "anonymous": { "enabled": false },
                "webhook": { "enabled": false },
                "x509": { "clientCAFile": cp.pki.ca.cert },
            },
            "authorization": { "mode": "AlwaysAllow" },
            "cgroupDriver": "cgroupfs",
            "cgroupsPerQOS": false,
            "enforceNodeAllocatable": [],
            "makeIPTablesUtilChains": false,
            "failSwapOn": false,
            "resolvConf": resolv,
            "clusterDomain": "cluster.local",
            "evictionHard": {
                "memory.available": "1Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": false,
            "nodeStatusUpdateFrequency": "5s",
            "syncFrequency": "10s",
            "fileCheckFrequency": "10s",
            "volumeStatsAggPeriod": "0s",
        });
        std::fs::write(&config, serde_json::to_vec_pretty(&doc).unwrap())
            .map_err(io_err("write", &config))?;
        let mut cmd = self.node_command(&cp.spec.assets.join("kubelet"))?;
        cmd.args([
            format!("--config={}", config.display()),
            format!("--kubeconfig={}", kubeconfig.display()),
            "--container-runtime=remote".into(),
            "--container-runtime-endpoint=unix:///run/containerd/containerd.sock".into(),
            format!("--node-ip={}", self.spec.node_ip),
            format!("--hostname-override={name}"),
            format!("--pod-infra-container-image={}", self.spec.sandbox_image),
            "--v=1".into(),
        ]);
        let mut opts = Spawn::new(format!("kubelet on {name}"))
            .log(self.spec.dir.join("kubelet.log"))
            .detached(self.spec.detached);
        opts.record_in = self.spec.record_in.clone();
        self.kubelet = Some(Proc::spawn(cmd, opts)?);
        Ok(())
    }

    /// A command that runs in the node's netns and mount namespace (setns, like
    /// `nsenter --net= --mount=`); the namespace fds stay open until `spawn` returns.
    fn node_command(&self, program: &Path) -> Result<Command, LabError> {
        let mnt_path = format!("/proc/{}/ns/mnt", self.containerd.pid());
        let mnt = std::fs::File::open(&mnt_path).map_err(io_err("open", Path::new(&mnt_path)))?;
        let net = NetNs::open(&self.spec.netns_path).map_err(|source| LabError::Net {
            op: format!("open netns {}", self.spec.netns_path.display()),
            source,
        })?;
        let mut cmd = Command::new(program);
        // SAFETY: setns and chdir are async-signal-safe; the closure owns both fds, which stay
        // open until the Command is dropped.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(net.as_raw_fd(), libc::CLONE_NEWNET) != 0
                    || libc::setns(mnt.as_raw_fd(), libc::CLONE_NEWNS) != 0
                    || libc::chdir(c"/".as_ptr()) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(cmd)
    }

    /// (Re)starts kube-proxy (iptables mode) in the node: the `kubernetes` Service's ClusterIP
    /// is how in-cluster clients (weftd) reach the apiserver. Its conntrack flags are 0, so it
    /// never writes the machine-wide conntrack settings.
    pub fn start_kube_proxy(
        &mut self,
        cp: &ControlPlane,
        cluster_cidr: &str,
    ) -> Result<(), LabError> {
        let name = self.spec.name.clone();
        let (kubeconfig, _) =
            cp.client_kubeconfig(&format!("kube-proxy-{name}"), "system:kube-proxy", &[])?;
        let mut cmd = self.node_command(&cp.spec.assets.join("kube-proxy"))?;
        cmd.args([
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--hostname-override={name}"),
            format!("--cluster-cidr={cluster_cidr}"),
            "--proxy-mode=iptables".into(),
            "--conntrack-max-per-core=0".into(),
            "--conntrack-min=0".into(),
            "--conntrack-tcp-timeout-established=0".into(),
            "--conntrack-tcp-timeout-close-wait=0".into(),
            "--metrics-bind-address=127.0.0.1:10249".into(),
            "--healthz-bind-address=127.0.0.1:10256".into(),
            "--v=1".into(),
        ]);
        let mut opts = Spawn::new(format!("kube-proxy on {name}"))
            .log(self.spec.dir.join("kube-proxy.log"))
            .detached(self.spec.detached);
        opts.record_in = self.spec.record_in.clone();
        self.kube_proxy = Some(Proc::spawn(cmd, opts)?);
        Ok(())
    }

    /// Keeps everything running after this value is dropped.
    pub fn keep(&mut self) {
        self.containerd.keep();
        if let Some(k) = &mut self.kubelet {
            k.keep();
        }
        if let Some(k) = &mut self.kube_proxy {
            k.keep();
        }
        self.spec.detached = true;
    }
}

impl Drop for KubeNode {
    fn drop(&mut self) {
        if self.spec.detached {
            return;
        }
        if let Some(mut k) = self.kubelet.take() {
            k.stop(Duration::from_secs(3));
        }
        if let Some(mut k) = self.kube_proxy.take() {
            k.stop(Duration::from_secs(1));
        }
        let ids = crate::registry::container_ids(
            &self
                .root()
                .join("run-containerd/io.containerd.runtime.v2.task/k8s.io"),
        );
        // Everything in its mount namespace (containerd, shims) and below (containers).
        crate::registry::kill_node_processes(self.mntns, self.netns_inode());
        self.containerd.stop(Duration::from_secs(1));
        crate::registry::remove_container_cgroups(&ids);
    }
}

/// containerd's config for a node: standard paths (the node's own, bound), the native
/// snapshotter, pod netns under its state dir, the CRI reading the first conflist of
/// /etc/cni/net.d with plugins from /opt/cni/bin.
fn containerd_config(sandbox_image: &str) -> String {
    format!(
        r#"version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.overlayfs",
]
[grpc]
  address = "/run/containerd/containerd.sock"
[ttrpc]
  address = "/run/containerd/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
    max_conf_num = 1
"#
    )
}

/// Writes a kubeconfig for a ServiceAccount token (e.g. to act as weftd outside a pod).
pub fn token_kubeconfig(cp: &ControlPlane, path: &Path, token: &str) -> Result<(), LabError> {
    certs::write_kubeconfig_token(path, &cp.url, &cp.pki.ca.cert, token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn described(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .map(|s| match s {
                Step::Overlay { target, .. } => format!("overlay {}", target.to_string_lossy()),
                Step::Mkdir(p) => format!("mkdir {}", p.to_string_lossy()),
                Step::Bind { dst, .. } => format!("bind {}", dst.to_string_lossy()),
            })
            .collect()
    }

    #[test]
    fn a_missing_dir_under_run_is_made_on_an_overlay_of_run() {
        let root = std::env::temp_dir().join(format!("weft-mount-plan-{}", std::process::id()));
        let missing = format!("/run/weft-lab-test-missing-{}/sub", std::process::id());
        assert!(!Path::new(&missing).exists());
        let steps = mount_plan_for(&root, &[(missing.as_str(), "x")]);
        let parent = Path::new(&missing).parent().unwrap().display().to_string();
        let _ = std::fs::remove_dir_all(&root);
        let steps = described(&steps.unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(
            steps[..4],
            [
                "overlay /run".to_string(),
                format!("mkdir {parent}"),
                format!("mkdir {missing}"),
                format!("bind {missing}"),
            ]
        );
        // Nothing was made on the machine.
        assert!(!Path::new(&parent).exists());
    }

    #[test]
    fn a_path_whose_only_existing_ancestor_is_root_is_refused() {
        let root = std::env::temp_dir().join(format!("weft-mount-plan-r-{}", std::process::id()));
        let missing = format!("/weft-lab-test-missing-{}/x", std::process::id());
        let r = mount_plan_for(&root, &[(missing.as_str(), "x")]);
        let _ = std::fs::remove_dir_all(&root);
        let e = r.err().expect("refused").to_string();
        assert!(e.contains(&missing), "{e}");
    }

    /// Root: a process started with the plan sees the node's dir at the missing path under
    /// /run and the rest of /run as it is; the machine gets nothing.
    #[test]
    fn a_process_in_the_private_mounts_sees_its_dir_under_run() {
        let pid = std::process::id();
        let root = std::env::temp_dir().join(format!("weft-mount-plan-p-{pid}"));
        let missing = format!("/run/weft-lab-test-missing-{pid}-p/sub");
        let parent = Path::new(&missing).parent().unwrap().to_path_buf();
        let run_in_plan = |args: &[&str]| {
            let steps = mount_plan_for(&root, &[(missing.as_str(), "x")]).unwrap();
            std::fs::write(root.join("x").join("marker"), "").unwrap();
            let mut cmd = Command::new("test");
            cmd.args(args);
            // SAFETY: enter_private_mounts only makes syscalls on data prepared before the fork.
            unsafe {
                cmd.pre_exec(move || enter_private_mounts(&steps));
            }
            cmd.status().unwrap().success()
        };
        let sees_marker = run_in_plan(&["-f", &format!("{missing}/marker")]);
        let sees_lock = run_in_plan(&["-d", "/run/lock"]);
        let _ = std::fs::remove_dir_all(&root);
        assert!(sees_marker, "the node's dir is not at {missing}");
        assert!(sees_lock, "/run/lock is gone under the overlay");
        assert!(!parent.exists(), "{} made on the machine", parent.display());
    }
}
