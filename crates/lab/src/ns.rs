//! Uniquely named network namespaces that remove themselves when dropped.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use weft_netops::netns::{self, NetNs};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A named netns under /run/netns, deleted on drop (also when a test panics).
#[derive(Debug)]
pub struct Netns {
    pub name: String,
    ns: NetNs,
    /// Set by [`Netns::keep`]: the named netns outlives this guard.
    keep: std::sync::atomic::AtomicBool,
}

impl Netns {
    /// Creates `<prefix>-<pid>-<n>`: unique across concurrent tests and processes.
    pub fn new(prefix: &str) -> std::io::Result<Netns> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        Netns::named(&name)
    }

    /// Creates a netns with exactly this name (the caller guarantees uniqueness).
    pub fn named(name: &str) -> std::io::Result<Netns> {
        let ns = netns::create_named(name).map_err(std::io::Error::other)?;
        Ok(Netns {
            name: name.to_string(),
            ns,
            keep: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Names an existing network namespace (e.g. `/proc/<pid>/ns/net` of a container) as
    /// `/run/netns/<name>`: a bind mount, removed on drop (the namespace itself lives as long
    /// as its processes).
    pub fn bind_named(name: &str, source: &std::path::Path) -> std::io::Result<Netns> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(std::io::Error::other(format!("bad netns name {name:?}")));
        }
        let path = PathBuf::from("/run/netns").join(name);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        if let Err(e) = nix::mount::mount(
            Some(source),
            &path,
            Some("none"),
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        ) {
            let _ = std::fs::remove_file(&path);
            return Err(std::io::Error::other(format!(
                "bind {} on {}: {e}",
                source.display(),
                path.display()
            )));
        }
        let ns = NetNs::open(&path).map_err(std::io::Error::other)?;
        Ok(Netns {
            name: name.to_string(),
            ns,
            keep: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Disarms the guard: the named netns stays after drop (a lab kept with `--keep`).
    pub fn keep(&self) {
        self.keep.store(true, Ordering::Relaxed);
    }

    pub fn handle(&self) -> &NetNs {
        &self.ns
    }

    /// A command that will run inside this netns (setns in the child before exec; unlike
    /// `ip netns exec` it does not remount /sys).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        enter_command(&self.ns, program)
    }
}

/// A command that will run inside `ns`.
pub fn enter_command(ns: &NetNs, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let fd = ns.as_raw_fd();
    let mut cmd = Command::new(program);
    // SAFETY: setns is async-signal-safe; the fd stays open in the parent until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// A command that will run inside `ns`, owning it (for a namespace opened just for this
/// command: the fd lives as long as the Command).
pub fn enter_command_owned(ns: NetNs, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    // SAFETY: setns is async-signal-safe; the closure owns the fd.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.keep.load(Ordering::Relaxed) {
            return;
        }
        if let Err(e) = netns::delete_named(&self.name) {
            eprintln!("weft-lab: cannot delete netns {}: {e}", self.name);
        }
    }
}
