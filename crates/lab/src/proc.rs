//! The one guard for every process the lab, the benchmarks and the tests start: SIGTERM, a
//! grace period, then SIGKILL when dropped (also on a panic), optionally recorded in a lab's pid
//! file (for `weft-lab down` and the signal handler) and tied to our life with
//! `PR_SET_PDEATHSIG`. Only ever signals its own child, by the pid `spawn` returned (not yet
//! reaped, so it cannot have been recycled).

use crate::error::{io_err, LabError};
use crate::registry;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How [`Proc::spawn`] starts a process.
#[derive(Debug, Clone, Default)]
pub struct Spawn {
    /// What it is, for messages ("etcd", "weftd on n1").
    pub what: String,
    /// stdout and stderr are appended here; None: discarded.
    pub log: Option<PathBuf>,
    /// A lab dir: the pid is recorded in its pid file.
    pub record_in: Option<PathBuf>,
    /// Outlives us (`--keep`): no parent-death signal, not stopped on drop.
    pub detached: bool,
    /// Its own process group (a terminal's Ctrl-C reaches only us; we stop it in order).
    pub own_group: bool,
}

impl Spawn {
    pub fn new(what: impl Into<String>) -> Spawn {
        Spawn {
            what: what.into(),
            own_group: true,
            ..Spawn::default()
        }
    }
    pub fn log(mut self, path: impl Into<PathBuf>) -> Spawn {
        self.log = Some(path.into());
        self
    }
    pub fn record_in(mut self, dir: impl Into<PathBuf>) -> Spawn {
        self.record_in = Some(dir.into());
        self
    }
    pub fn detached(mut self, detached: bool) -> Spawn {
        self.detached = detached;
        self
    }
}

/// A process we started; stopped on drop unless kept.
pub struct Proc {
    pub what: String,
    /// The program's file name (what the pid file records).
    pub program: String,
    pub child: Child,
    /// Where its output goes (empty when discarded).
    pub log: PathBuf,
    keep: bool,
}

impl Proc {
    /// Starts `cmd` as `opts` says. Holds the registry's create guard while spawning, so a
    /// concurrent signal teardown either sees the pid or refuses the start.
    pub fn spawn(mut cmd: Command, opts: Spawn) -> Result<Proc, LabError> {
        let _g = registry::create_guard().map_err(|_| LabError::Interrupted)?;
        let program_path = PathBuf::from(cmd.get_program());
        cmd.stdin(Stdio::null());
        match &opts.log {
            Some(log) => {
                let out = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .map_err(io_err("open log", log))?;
                let err = out.try_clone().map_err(io_err("open log", log))?;
                cmd.stdout(out).stderr(err);
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        if opts.own_group {
            cmd.process_group(0);
        }
        if !opts.detached {
            // SAFETY: prctl is async-signal-safe. Kills the process if we die without cleanup
            // (SIGKILL). Tied to the spawning thread: keep the owner on one thread.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .spawn()
            .map_err(io_err(&format!("start {}", opts.what), &program_path))?;
        let program = program_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(dir) = &opts.record_in {
            let _ = registry::record_pid(dir, child.id(), &program);
        }
        Ok(Proc {
            what: opts.what,
            program,
            child,
            log: opts.log.unwrap_or_default(),
            keep: opts.detached,
        })
    }

    /// [`Proc::spawn`] with a log (or none), tied to our life: the benchmarks' and tests' way.
    pub fn start(what: &str, cmd: Command, log: Option<&Path>) -> Result<Proc, LabError> {
        let mut opts = Spawn::new(what);
        opts.own_group = false;
        opts.log = log.map(Path::to_path_buf);
        Proc::spawn(cmd, opts)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Some(status) once it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn log_tail(&self) -> String {
        log_tail(&self.log, 20)
    }

    /// Not stopped on drop (a lab kept with `--keep`).
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Whether [`Proc::keep`] was called (or it was started detached).
    pub fn is_kept(&self) -> bool {
        self.keep
    }

    /// Sends `signal` (our own, not yet reaped child).
    pub fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) on our own unreaped child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL; reaps the child.
    pub fn stop(&mut self, grace: Duration) {
        if self.exited().is_none() {
            self.signal(libc::SIGTERM);
            let start = Instant::now();
            while start.elapsed() < grace && self.exited().is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits until it exits, up to `timeout`; Err with its log when it does not, or fails.
    pub fn wait_success(&mut self, timeout: Duration) -> Result<(), LabError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                if status.success() {
                    return Ok(());
                }
                return Err(process_err(self, format!("exited with {status}")));
            }
            if Instant::now() > deadline {
                return Err(process_err(
                    self,
                    format!("did not finish within {timeout:?}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls `ready` until it returns Ok; fails with the last reason and the log tail when the
    /// process exits or `timeout` passes.
    pub fn wait_ready(
        &mut self,
        timeout: Duration,
        mut ready: impl FnMut() -> Result<(), String>,
    ) -> Result<(), LabError> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match ready() {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if let Some(status) = self.exited() {
                return Err(process_err(self, format!("exited with {status}")));
            }
            if Instant::now() > deadline {
                return Err(process_err(
                    self,
                    format!("not ready after {timeout:?}: {last}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        self.stop(Duration::from_secs(3));
    }
}

/// The last `n` lines of a log file.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A process failure with the last lines of its log.
pub fn process_err(p: &Proc, detail: String) -> LabError {
    LabError::Process {
        what: p.what.clone(),
        detail,
        log: p.log.clone(),
        tail: p.log_tail(),
    }
}
