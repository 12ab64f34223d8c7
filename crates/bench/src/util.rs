//! Helpers shared by the suites: the lab's process guard, HTTP from inside a netns, kernel
//! read-backs.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use weft_lab::probe::in_netns_thread;
use weft_netops::netns::NetNs;

/// The lab's process guard (SIGTERM, grace, SIGKILL on drop; tied to our life).
pub use weft_lab::proc::Proc as ChildGuard;

/// One HTTP/1.0 request from inside a netns (shared with the lab).
pub use weft_lab::probe::http_request as http;

/// Polls `f` every `every` until it returns Some or `timeout` passes.
pub fn wait_for<T>(
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// A TCP port nobody in `ns` listens on yet (bind to :0 inside it, then release).
pub fn free_port(ns: &NetNs) -> std::io::Result<u16> {
    in_netns_thread(ns, || {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        Ok(l.local_addr()?.port())
    })?
}

/// `/proc/<pid>/status` field in KiB (VmHWM, VmRSS).
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Runs a command to completion, returning stdout; an error carries stderr.
pub fn output(mut cmd: Command, what: &str) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Makes weftd's per-node directories under `dir` and returns the `weftd run` flags that
/// point it there (CNI config, IPAM, state, plugin events, policy socket): a benchmark's agent
/// never writes to the machine's own /etc/cni, /var/lib or /run/weft.
pub fn agent_dir_args(dir: &std::path::Path) -> Result<Vec<String>, String> {
    let mut args = Vec::new();
    for (flag, sub) in [
        ("--cni-conf-dir", "net.d"),
        ("--ipam-data-dir", "ipam"),
        ("--state-dir", "state"),
        ("--plugin-events-dir", "plugin-events"),
    ] {
        let path = dir.join(sub);
        std::fs::create_dir_all(&path).map_err(|e| format!("create {}: {e}", path.display()))?;
        args.push(flag.to_string());
        args.push(path.display().to_string());
    }
    args.push("--policy-socket".into());
    args.push(dir.join("policy.sock").display().to_string());
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every path weftd shares with its node (the agent's own list) is under the benchmark's
    /// dir: a benchmark's weftd once made /run/weft/plugin-events on the machine.
    #[test]
    fn agent_dir_args_cover_every_shared_node_path() {
        #[derive(clap::Parser)]
        struct W {
            #[command(flatten)]
            run: weft_agent::config::RunConfig,
        }
        let dir = std::env::temp_dir().join(format!("weft-bench-dirs-{}", std::process::id()));
        let mut argv = vec!["weftd".to_string(), "--node-name".into(), "n".into()];
        argv.extend(agent_dir_args(&dir).unwrap());
        let cfg = <W as clap::Parser>::try_parse_from(argv).unwrap().run;
        let _ = std::fs::remove_dir_all(&dir);
        for (what, path) in cfg.shared_node_paths() {
            assert!(
                path.starts_with(&dir),
                "{what}: {} is not under {}",
                path.display(),
                dir.display()
            );
        }
    }
}
