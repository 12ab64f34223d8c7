//! Network namespaces: open/verify, create and delete named ones (like
//! `ip netns add/del`), and run code inside one on the current thread.
//!
//! Namespaces are per thread in Linux. Everything here either works on a
//! dedicated short-lived thread (`create_named`) or switches the calling
//! thread and switches it back (`run_in`). Never hold `run_in` across an
//! `.await`: an async runtime could move the task or run other tasks on this
//! thread while it is in the wrong namespace.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::statfs::{fstatfs, NSFS_MAGIC};

use crate::error::{Error, Result};
use crate::netlink::Netlink;

/// Where named namespaces live (same place as iproute2, so `ip netns` sees them).
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// ioctl(NS_GET_NSTYPE) = _IO(0xb7, 0x3): returns the CLONE_NEW* type of an nsfs fd.
const NS_GET_NSTYPE: u64 = 0xb703;

/// An open handle on a network namespace. Keeping the fd open keeps the
/// namespace alive even if its bind mount is removed.
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: PathBuf,
}

impl NetNs {
    /// Open `path` (e.g. `/run/netns/foo` or `/proc/1234/ns/net`) and verify
    /// it really is a network namespace.
    pub fn open(path: impl AsRef<Path>) -> Result<NetNs> {
        let path = path.as_ref().to_path_buf();
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Error::NotFound { path }),
            Err(e) => return Err(Error::io("open netns", path, e)),
        };
        let st = fstatfs(&file).map_err(|e| Error::nix("fstatfs", &path, e))?;
        if st.filesystem_type() != NSFS_MAGIC {
            return Err(Error::NotANetns { path });
        }
        // Other namespace types (mnt, uts...) are nsfs files too: check the type.
        // SAFETY: plain ioctl on an fd we own, no argument.
        let ty = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
        if ty >= 0 && ty != libc::CLONE_NEWNET {
            return Err(Error::NotANetns { path });
        }
        // ty < 0: kernel without NS_GET_NSTYPE (< 4.11); the fs magic must do.
        Ok(NetNs { file, path })
    }

    /// The network namespace of the calling thread.
    pub fn current() -> Result<NetNs> {
        NetNs::open("/proc/thread-self/ns/net")
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Inode number of the namespace: equal inodes (on nsfs) mean the same
    /// namespace.
    pub fn inode(&self) -> Result<u64> {
        let md = self
            .file
            .metadata()
            .map_err(|e| Error::io("stat netns", &self.path, e))?;
        Ok(md.ino())
    }
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for NetNs {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// Path of the named namespace `name` (no check that it exists).
pub fn named_path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(Error::Invalid(format!("bad netns name {name:?}")));
    }
    Ok(())
}

/// Serialises the one-time setup of /run/netns within this process (tests
/// create namespaces from many threads at once).
static RUN_DIR_SETUP: Mutex<bool> = Mutex::new(false);

/// Create /run/netns and make it a shared mount point, as iproute2 does, so
/// that namespace bind mounts propagate to other mount namespaces (container
/// runtimes). Failing to change propagation is not fatal: the bind mounts
/// still work in our own mount namespace.
fn ensure_run_dir() -> Result<()> {
    let mut done = RUN_DIR_SETUP.lock().unwrap_or_else(|p| p.into_inner());
    if *done {
        return Ok(());
    }
    fs::create_dir_all(NETNS_RUN_DIR).map_err(|e| Error::io("create dir", NETNS_RUN_DIR, e))?;
    let mut bound = false;
    loop {
        match mount(
            None::<&str>,
            NETNS_RUN_DIR,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        ) {
            Ok(()) => break,
            // EINVAL: not a mount point yet; bind it onto itself and retry once.
            Err(Errno::EINVAL) if !bound => {
                if mount(
                    Some(NETNS_RUN_DIR),
                    NETNS_RUN_DIR,
                    Some("none"),
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .is_err()
                {
                    break;
                }
                bound = true;
            }
            Err(_) => break,
        }
    }
    *done = true;
    Ok(())
}

/// Create a named network namespace `/run/netns/NAME` (like `ip netns add`)
/// and bring its `lo` up. The calling thread's namespace is not changed:
/// the namespace is created on a short-lived helper thread.
/// Fails with an `is_exists()` error if the name is taken.
pub fn create_named(name: &str) -> Result<NetNs> {
    validate_name(name)?;
    ensure_run_dir()?;
    let path = named_path(name);

    // The mount target. create_new: fail with EEXIST if the name is taken.
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(&path)
        .map_err(|e| Error::io("create netns file", &path, e))?;

    let thread_path = path.clone();
    let res = std::thread::Builder::new()
        .name("weft-netns".into())
        .spawn(move || -> Result<()> {
            // Only this thread moves to the new namespace.
            unshare(CloneFlags::CLONE_NEWNET)
                .map_err(|e| Error::nix("unshare(CLONE_NEWNET) for", &thread_path, e))?;
            // thread-self, not self: /proc/self is the main thread's view.
            mount(
                Some("/proc/thread-self/ns/net"),
                &thread_path,
                Some("none"),
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| Error::nix("bind mount netns on", &thread_path, e))?;
            let mut nl = Netlink::new()?;
            let lo = nl.get_link_by_name("lo")?.ok_or_else(|| Error::Protocol {
                op: format!("set lo up in {}", thread_path.display()),
                msg: "no lo interface in new namespace".into(),
            })?;
            nl.set_link_up(lo.index)
        })
        .map_err(|e| Error::io("spawn thread for netns", &path, e))?
        .join()
        .unwrap_or_else(|_| {
            Err(Error::Invalid(format!(
                "netns creation thread panicked for {}",
                path.display()
            )))
        });

    if let Err(e) = res {
        let _ = delete_named(name);
        return Err(e);
    }
    NetNs::open(&path)
}

/// Delete a named namespace (like `ip netns del`): lazy unmount and remove
/// the file. Ok if it does not exist. The namespace itself lives on while
/// some process or open `NetNs` still refers to it.
pub fn delete_named(name: &str) -> Result<()> {
    validate_name(name)?;
    let path = named_path(name);
    match umount2(&path, MntFlags::MNT_DETACH) {
        // EINVAL: not a mount point (half-created); ENOENT: absent.
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(Error::nix("umount netns", &path, e)),
    }
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove netns file", &path, e)),
    }
}

/// Names of the namespaces in /run/netns, sorted. Empty if the directory
/// does not exist.
pub fn list_named() -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(NETNS_RUN_DIR) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// Switches the thread back to its original namespace when dropped, also
/// while unwinding from a panic in the closure.
struct Restore {
    orig: NetNs,
}

impl Drop for Restore {
    fn drop(&mut self) {
        if let Err(e) = setns(self.orig.as_fd(), CloneFlags::CLONE_NEWNET) {
            // A thread stuck in a foreign namespace would silently program the
            // wrong network from now on: better to stop the process.
            eprintln!("weft-netops: cannot restore network namespace of thread: {e}; aborting");
            std::process::abort();
        }
    }
}

/// Run `f` with the calling thread inside `ns`, then switch back (also if
/// `f` panics). Only the calling thread moves (threads spawned by `f`
/// inherit `ns`). Never hold this across an `.await`: the runtime could run
/// other tasks on this thread while it is in `ns`.
pub fn run_in<T>(ns: &NetNs, f: impl FnOnce() -> T) -> Result<T> {
    let orig = NetNs::current()?;
    setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| Error::nix("setns", &ns.path, e))?;
    let _restore = Restore { orig };
    Ok(f())
}
