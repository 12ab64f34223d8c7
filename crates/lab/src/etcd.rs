//! etcd: one launcher for the lab's datastore, the Kubernetes control plane's store and the
//! benchmarks ([`start`]), and the lab's etcd operations (start/stop, `weftd init-etcd`,
//! `etcdctl`).

use crate::cluster::Cluster;
use crate::error::{io_err, LabError};
use crate::probe;
use crate::proc::{Proc, Spawn};
use crate::topology::{ETCD_IP, ETCD_PORT, ETCD_PREFIX};
use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use weft_netops::netns::NetNs;

/// One single-member etcd.
#[derive(Debug, Clone)]
pub struct EtcdSpec {
    pub name: String,
    pub data_dir: PathBuf,
    /// Where clients connect; the first is the one probed for health.
    pub listen_client: Vec<SocketAddr>,
    pub advertise_client: SocketAddr,
    /// The (unused, single-member) peer URL's address.
    pub peer: SocketAddr,
    /// More flags (e.g. `--max-txn-ops=...`).
    pub extra_args: Vec<String>,
    pub log: PathBuf,
}

/// Starts etcd in `ns` and waits (up to 20 s) until its `/health` answers 200.
pub fn start(ns: &NetNs, spec: &EtcdSpec, spawn: Spawn) -> Result<Proc, LabError> {
    let urls = |a: &[SocketAddr]| {
        a.iter()
            .map(|a| format!("http://{a}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let peer = format!("http://{}", spec.peer);
    let mut args: Vec<String> = vec![
        format!("--name={}", spec.name),
        format!("--data-dir={}", spec.data_dir.display()),
        format!("--listen-client-urls={}", urls(&spec.listen_client)),
        format!("--advertise-client-urls=http://{}", spec.advertise_client),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster={}={peer}", spec.name),
        "--initial-cluster-state=new".into(),
        "--logger=zap".into(),
        "--log-level=warn".into(),
    ];
    args.extend(spec.extra_args.iter().cloned());
    let mut cmd = crate::ns::enter_command(ns, "/usr/bin/etcd");
    cmd.args(&args);
    let mut proc = Proc::spawn(cmd, spawn.log(&spec.log))?;
    let health = spec.listen_client[0];
    proc.wait_ready(Duration::from_secs(20), || {
        match probe::http_get(ns, health, "/health", Duration::from_secs(1)) {
            Ok((200, _)) => Ok(()),
            Ok((code, body)) => Err(format!("/health answered {code}: {}", body.trim())),
            Err(e) => Err(format!("/health: {e}")),
        }
    })?;
    Ok(proc)
}

pub(crate) fn etcd_url() -> String {
    format!("http://{ETCD_IP}:{ETCD_PORT}")
}

impl Cluster {
    /// Starts the lab's etcd in the underlay netns (again: its data dir is kept, so a restart
    /// resumes the same cluster).
    pub fn start_etcd(&mut self) -> Result<(), LabError> {
        let spec = EtcdSpec {
            name: "lab".into(),
            data_dir: self.dir.join("etcd"),
            listen_client: vec![
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), ETCD_PORT),
                SocketAddr::new(IpAddr::V4(ETCD_IP), ETCD_PORT),
            ],
            advertise_client: SocketAddr::new(IpAddr::V4(ETCD_IP), ETCD_PORT),
            peer: "127.0.0.1:2380".parse().unwrap(),
            extra_args: Vec::new(),
            log: self.dir.join("etcd.log"),
        };
        let proc = start(self.underlay.handle(), &spec, self.spawn_opts("etcd"))?;
        self.push_proc(proc);
        Ok(())
    }

    /// Stops etcd (SIGKILL: an outage, not a shutdown). Its data dir stays.
    pub fn stop_etcd(&mut self) -> Result<(), LabError> {
        let i = self
            .procs
            .iter()
            .position(|p| p.what == "etcd")
            .ok_or_else(|| LabError::Setup("etcd is not running".into()))?;
        let mut p = self.procs.remove(i);
        let _ = p.child.kill();
        let _ = p.child.wait();
        Ok(())
    }

    /// `weftd init-etcd` once, inside the first node.
    pub(crate) fn init_etcd(&self, weftd: &Path, url: &str) -> Result<(), LabError> {
        let node = &self.nodes[0];
        let log = self.dir.join("init-etcd.log");
        let mut args: Vec<String> = [
            "init-etcd",
            "--etcd-endpoints",
            url,
            "--etcd-prefix",
            ETCD_PREFIX,
            "--network",
            &self.config.network.to_string(),
            "--subnet-len",
            &self.config.subnet_len.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(v6) = self.config.ipv6_network {
            args.extend([
                "--ipv6-network".to_string(),
                v6.to_string(),
                "--ipv6-subnet-len".to_string(),
                self.config.ipv6_subnet_len.to_string(),
            ]);
        }
        let mut p = self.spawn("weftd init-etcd", node.ns(), weftd, &args, &log)?;
        p.wait_success(Duration::from_secs(30))
    }

    /// `etcdctl` against the lab's etcd (run inside the underlay netns); its stdout.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String, LabError> {
        let out = self
            .underlay
            .command("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints=http://127.0.0.1:{ETCD_PORT}"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(io_err("run etcdctl", Path::new("etcdctl")))?;
        if !out.status.success() {
            return Err(LabError::Setup(format!(
                "etcdctl {args:?}: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The node records under `<prefix>/subnets/`: (key, record JSON).
    pub fn etcd_subnets(&self) -> Result<Vec<(String, Value)>, LabError> {
        let from = format!("{ETCD_PREFIX}/subnets/");
        let text = self.etcdctl(&["get", "--prefix", &from])?;
        // etcdctl prints each key on one line and its value on the next.
        let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
        Ok(lines
            .chunks(2)
            .filter(|kv| kv.len() == 2)
            .map(|kv| {
                let value = serde_json::from_str(kv[1]).unwrap_or(Value::Null);
                (kv[0].to_string(), value)
            })
            .collect())
    }

    /// Deletes `node`'s subnet key from etcd (a node removed from the cluster); returns the key.
    pub fn etcd_delete_node(&self, node: &str) -> Result<String, LabError> {
        let key = self
            .etcd_subnets()?
            .into_iter()
            .find(|(_, v)| v["name"] == node)
            .map(|(k, _)| k)
            .ok_or_else(|| LabError::Setup(format!("no etcd subnet key holds node {node}")))?;
        let deleted = self.etcdctl(&["del", &key])?;
        if deleted.trim() != "1" {
            return Err(LabError::Setup(format!(
                "etcdctl del {key} deleted {:?} keys",
                deleted.trim()
            )));
        }
        Ok(key)
    }
}
