//! Helpers shared by the suites: a child-process guard, HTTP from inside a netns, kernel
//! read-backs.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use weft_lab::probe::in_netns_thread;
use weft_netops::netns::NetNs;

/// A process we started; SIGTERM, then SIGKILL after a grace period, on drop. Only ever
/// signals its own child (by the pid `spawn` returned).
pub struct ChildGuard {
    pub child: Child,
}

impl ChildGuard {
    pub fn spawn(what: &str, mut cmd: Command, log: Option<&Path>) -> std::io::Result<ChildGuard> {
        cmd.stdin(Stdio::null());
        match log {
            Some(path) => {
                let out = std::fs::File::create(path)?;
                cmd.stdout(out.try_clone()?).stderr(out);
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        // SAFETY: prctl is async-signal-safe. The daemon dies with us even if we are killed
        // before our guards run (tied to the spawning thread: spawn from the main thread).
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| std::io::Error::other(format!("start {what}: {e}")))?;
        Ok(ChildGuard { child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Some(status) once it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL; reaps the child.
    pub fn stop(&mut self, grace: Duration) {
        if self.exited().is_none() {
            // SAFETY: plain kill(2) on our own, not yet reaped child.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let start = Instant::now();
            while start.elapsed() < grace && self.exited().is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

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
