//! A Kubernetes control plane in one network namespace: etcd (the lab's launcher), a TLS
//! kube-apiserver bound to every address of that netns (its serving certificate names the
//! advertised address and 127.0.0.1), kube-controller-manager allocating node pod CIDRs from
//! the cluster CIDR (as kubeadm's `--pod-network-cidr` does) and creating ServiceAccount
//! tokens, kube-scheduler. Nothing listens outside the netns; stopped (reverse order) on drop.
//!
//! ```no_run
//! # use weft_lab::kube::{ControlPlane, ControlPlaneSpec};
//! let spec = ControlPlaneSpec::new("/tmp/cp".into(), "/run/netns/x".into(),
//!     "192.168.77.250".parse().unwrap(), "10.244.0.0/16".parse().unwrap()).unwrap();
//! let cp = ControlPlane::start(spec).unwrap();
//! println!("{}", cp.kubectl(&["get", "nodes"]).unwrap());
//! ```

use super::certs::{self, KeyPair, Pki};
use crate::error::{io_err, LabError};
use crate::etcd::{self, EtcdSpec};
use crate::ns::enter_command;
use crate::proc::{log_tail, process_err, Proc, Spawn};
use ipnet::Ipv4Net;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use weft_netops::netns::NetNs;

/// What to start, where.
#[derive(Debug, Clone)]
pub struct ControlPlaneSpec {
    /// Its files: pki/, etcd data, kubeconfigs, logs.
    pub dir: PathBuf,
    /// The netns it runs in (e.g. /run/netns/<name>).
    pub netns_path: PathBuf,
    /// The address nodes reach the apiserver at (in that netns).
    pub address: Ipv4Addr,
    /// The pods' network: nodeipam hands out `/node_cidr_mask` subnets of it.
    pub cluster_cidr: Ipv4Net,
    pub node_cidr_mask: u8,
    pub service_cidr: Ipv4Net,
    pub secure_port: u16,
    /// etcd's client port on 127.0.0.1 of that netns (peer port: +1).
    pub etcd_port: u16,
    /// Where kube-apiserver & co are ([`super::assets_dir`]).
    pub assets: PathBuf,
    /// A lab dir whose pid file records the processes.
    pub record_in: Option<PathBuf>,
    /// The processes outlive this value (a kept lab).
    pub detached: bool,
    /// How long each component may take to become ready.
    pub timeout: Duration,
}

impl ControlPlaneSpec {
    /// Defaults: port 6443, etcd on 127.0.0.1:12379, services 10.96.0.0/16, /24 per node,
    /// binaries from [`super::assets_dir`].
    pub fn new(
        dir: PathBuf,
        netns_path: PathBuf,
        address: Ipv4Addr,
        cluster_cidr: Ipv4Net,
    ) -> Result<ControlPlaneSpec, LabError> {
        Ok(ControlPlaneSpec {
            dir,
            netns_path,
            address,
            cluster_cidr,
            node_cidr_mask: 24,
            service_cidr: "10.96.0.0/16".parse().unwrap(),
            secure_port: 6443,
            etcd_port: 12379,
            assets: super::assets_dir()?,
            record_in: None,
            detached: false,
            timeout: Duration::from_secs(60),
        })
    }
}

/// A running control plane.
pub struct ControlPlane {
    pub spec: ControlPlaneSpec,
    pub pki: Pki,
    /// https://<address>:<port>
    pub url: String,
    /// A `system:masters` kubeconfig for `url`.
    pub admin_kubeconfig: PathBuf,
    ns: NetNs,
    /// etcd, apiserver, controller-manager, scheduler (stopped in reverse).
    procs: Vec<Proc>,
}

/// The first address of a service CIDR: the `kubernetes` Service's ClusterIP.
fn first_host(net: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + 1)
}

impl ControlPlane {
    /// Starts everything and waits until the apiserver is ready. Nothing is left running on
    /// error.
    pub fn start(spec: ControlPlaneSpec) -> Result<ControlPlane, LabError> {
        let ns = NetNs::open(&spec.netns_path).map_err(|source| LabError::Net {
            op: format!("open netns {}", spec.netns_path.display()),
            source,
        })?;
        std::fs::create_dir_all(&spec.dir).map_err(io_err("create dir", &spec.dir))?;
        let pki = Pki::create(
            &spec.dir.join("pki"),
            &[
                IpAddr::V4(spec.address),
                IpAddr::V4(first_host(spec.service_cidr)),
            ],
        )?;
        let url = format!("https://{}:{}", spec.address, spec.secure_port);
        let admin_kubeconfig = spec.dir.join("admin.kubeconfig");
        certs::write_kubeconfig(&admin_kubeconfig, &url, &pki.ca.cert, &pki.admin)?;
        let mut cp = ControlPlane {
            spec,
            pki,
            url,
            admin_kubeconfig,
            ns,
            procs: Vec::new(),
        };
        cp.start_etcd()?;
        cp.start_apiserver()?;
        cp.start_controller_manager()?;
        cp.start_scheduler()?;
        Ok(cp)
    }

    fn spawn_opts(&self, what: &str, log: &str) -> Spawn {
        let mut s = Spawn::new(what)
            .log(self.spec.dir.join(log))
            .detached(self.spec.detached);
        s.record_in = self.spec.record_in.clone();
        s
    }

    fn command(&self, binary: &str) -> Command {
        enter_command(&self.ns, self.spec.assets.join(binary))
    }

    fn start_etcd(&mut self) -> Result<(), LabError> {
        let client = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.spec.etcd_port);
        let spec = EtcdSpec {
            name: "kube".into(),
            data_dir: self.spec.dir.join("etcd"),
            listen_client: vec![client],
            advertise_client: client,
            peer: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.spec.etcd_port + 1),
            extra_args: Vec::new(),
            log: self.spec.dir.join("etcd.log"),
        };
        let opts = self.spawn_opts("kube etcd", "etcd.log");
        let p = etcd::start(&self.ns, &spec, opts)?;
        self.procs.push(p);
        Ok(())
    }

    fn apiserver_args(&self) -> Vec<String> {
        let s = &self.spec;
        let pki = &self.pki;
        let d = |p: &Path| p.display().to_string();
        vec![
            format!("--advertise-address={}", s.address),
            "--bind-address=0.0.0.0".into(),
            format!("--secure-port={}", s.secure_port),
            "--insecure-port=0".into(),
            format!("--etcd-servers=http://127.0.0.1:{}", s.etcd_port),
            format!("--client-ca-file={}", d(&pki.ca.cert)),
            format!("--tls-cert-file={}", d(&pki.apiserver.cert)),
            format!("--tls-private-key-file={}", d(&pki.apiserver.key)),
            format!(
                "--kubelet-client-certificate={}",
                d(&pki.apiserver_kubelet_client.cert)
            ),
            format!(
                "--kubelet-client-key={}",
                d(&pki.apiserver_kubelet_client.key)
            ),
            "--kubelet-preferred-address-types=InternalIP".into(),
            format!("--service-account-key-file={}", d(&pki.sa_pub)),
            format!("--service-account-signing-key-file={}", d(&pki.sa_key)),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-cluster-ip-range={}", s.service_cidr),
            "--authorization-mode=Node,RBAC".into(),
            "--allow-privileged=true".into(),
            "--profiling=false".into(),
            "--enable-priority-and-fairness=false".into(),
            "--v=1".into(),
        ]
    }

    /// Starts kube-apiserver and waits for its /readyz.
    fn start_apiserver(&mut self) -> Result<(), LabError> {
        let mut cmd = self.command("kube-apiserver");
        cmd.args(self.apiserver_args());
        let mut p = Proc::spawn(cmd, self.spawn_opts("kube-apiserver", "apiserver.log"))?;
        p.wait_ready(self.spec.timeout, || {
            self.kubectl(&["get", "--raw", "/readyz"]).map(|_| ())
        })?;
        self.procs.push(p);
        Ok(())
    }

    /// Kills the apiserver (SIGKILL: a crash) and starts it again; waits for /readyz.
    pub fn restart_apiserver(&mut self) -> Result<(), LabError> {
        if let Some(i) = self.procs.iter().position(|p| p.what == "kube-apiserver") {
            let mut p = self.procs.remove(i);
            p.signal(libc::SIGKILL);
            p.stop(Duration::from_secs(1));
        }
        self.start_apiserver()
    }

    fn start_controller_manager(&mut self) -> Result<(), LabError> {
        let s = &self.spec;
        let kc = s.dir.join("controller-manager.kubeconfig");
        certs::write_kubeconfig(
            &kc,
            &self.url,
            &self.pki.ca.cert,
            &self.pki.controller_manager,
        )?;
        let d = |p: &Path| p.display().to_string();
        let mut cmd = self.command("kube-controller-manager");
        cmd.args([
            format!("--kubeconfig={}", d(&kc)),
            "--allocate-node-cidrs=true".into(),
            format!("--cluster-cidr={}", s.cluster_cidr),
            format!("--node-cidr-mask-size={}", s.node_cidr_mask),
            format!("--service-cluster-ip-range={}", s.service_cidr),
            "--port=0".into(),
            "--secure-port=0".into(),
            "--leader-elect=false".into(),
            // nodelifecycle lifts the `node.kubernetes.io/not-ready` taint kubelet registers
            // with once the Node is Ready: without it the scheduler places no pod anywhere.
            "--controllers=nodeipam,nodelifecycle,serviceaccount-token,serviceaccount,\
             namespace,garbagecollector,daemonset,replicaset,deployment,podgc,endpoint,\
             endpointslice"
                .into(),
            format!("--service-account-private-key-file={}", d(&self.pki.sa_key)),
            format!("--root-ca-file={}", d(&self.pki.ca.cert)),
            "--use-service-account-credentials=true".into(),
            "--v=1".into(),
        ]);
        let p = Proc::spawn(
            cmd,
            self.spawn_opts("kube-controller-manager", "controller-manager.log"),
        )?;
        self.procs.push(p);
        Ok(())
    }

    fn start_scheduler(&mut self) -> Result<(), LabError> {
        let kc = self.spec.dir.join("scheduler.kubeconfig");
        certs::write_kubeconfig(&kc, &self.url, &self.pki.ca.cert, &self.pki.scheduler)?;
        let mut cmd = self.command("kube-scheduler");
        cmd.args([
            format!("--kubeconfig={}", kc.display()),
            "--leader-elect=false".into(),
            "--port=0".into(),
            "--secure-port=0".into(),
            "--v=1".into(),
        ]);
        let p = Proc::spawn(cmd, self.spawn_opts("kube-scheduler", "scheduler.log"))?;
        self.procs.push(p);
        Ok(())
    }

    /// Issues a client certificate and writes a kubeconfig for it (e.g. a kubelet's
    /// `system:node:<name>` in `system:nodes`).
    pub fn client_kubeconfig(
        &self,
        file: &str,
        cn: &str,
        orgs: &[&str],
    ) -> Result<(PathBuf, KeyPair), LabError> {
        let kp = self.pki.issue(file, cn, orgs, &[], false)?;
        let path = self.spec.dir.join(format!("{file}.kubeconfig"));
        certs::write_kubeconfig(&path, &self.url, &self.pki.ca.cert, &kp)?;
        Ok((path, kp))
    }

    /// A kubectl command (admin) that runs inside the control plane's netns.
    pub fn kubectl_command(&self) -> Command {
        let mut cmd = self.command("kubectl");
        cmd.arg("--kubeconfig").arg(&self.admin_kubeconfig);
        cmd
    }

    /// Runs kubectl (admin) with `args`; its stdout, or Err with its stderr.
    pub fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        self.kubectl_stdin(args, None)
    }

    /// Runs kubectl with `input` on its stdin (e.g. `apply -f -`).
    pub fn kubectl_stdin(&self, args: &[&str], input: Option<&[u8]>) -> Result<String, String> {
        let mut cmd = self.kubectl_command();
        cmd.args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("kubectl: {e}"))?;
        if let Some(data) = input {
            let mut stdin = child.stdin.take().unwrap();
            stdin
                .write_all(data)
                .map_err(|e| format!("kubectl stdin: {e}"))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("kubectl: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "kubectl {}: {}: {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kubectl get <args> -o json`, parsed.
    pub fn get_json(&self, args: &[&str]) -> Result<serde_json::Value, String> {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend(["-o", "json"]);
        let text = self.kubectl(&a)?;
        serde_json::from_str(&text).map_err(|e| format!("kubectl get {args:?}: {e}"))
    }

    /// Polls `f` every 200 ms until Some, or fails after `timeout` with the last message.
    pub fn wait_for<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&ControlPlane) -> Result<T, String>,
    ) -> Result<T, LabError> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match f(self) {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            // A component that died is the likelier cause: say so, with its log.
            for p in self.procs.iter_mut() {
                if let Some(status) = p.exited() {
                    return Err(process_err(p, format!("exited with {status} ({what})")));
                }
            }
            if Instant::now() > deadline {
                let tails: String = self
                    .procs
                    .iter()
                    .map(|p| {
                        format!(
                            "\n--- last lines of {} ---\n{}",
                            p.log.display(),
                            log_tail(&p.log, 8)
                        )
                    })
                    .collect();
                return Err(LabError::Setup(format!(
                    "{what}: not after {timeout:?}: {last}{tails}"
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The components, for a test that kills one (etcd, kube-apiserver, ...).
    pub fn procs(&mut self) -> &mut Vec<Proc> {
        &mut self.procs
    }

    /// The netns it runs in.
    pub fn ns(&self) -> &NetNs {
        &self.ns
    }

    /// Keeps the processes running after this value is dropped (a kept lab).
    pub fn keep(&mut self) {
        self.procs.iter_mut().for_each(Proc::keep);
    }

    /// Stops everything (scheduler first, etcd last).
    pub fn stop(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        if self.procs.iter().all(|p| p.is_kept()) {
            return;
        }
        // Clients first: SIGTERM the scheduler, controller-manager and apiserver together,
        // then etcd once they are gone.
        let etcd = (!self.procs.is_empty()).then(|| self.procs.remove(0));
        for p in &self.procs {
            p.signal(libc::SIGTERM);
        }
        while let Some(mut p) = self.procs.pop() {
            p.stop(Duration::from_secs(3));
        }
        drop(etcd);
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop_all();
    }
}
