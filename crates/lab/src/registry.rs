//! Where labs keep their files, and how to remove a lab from outside (`weft-lab down`) or from
//! a signal handler (Ctrl-C / SIGTERM while a lab is being built or used).
//!
//! Every lab has an id (`wl<pid>`, `wl<pid>c<n>` for further labs of the same process). All its
//! network namespaces are named `<id>-...` and its files live in `<base>/<id>/`, where
//! `<base>/<id>/pids` lists the processes it started (`<pid> <program>` per line). That is all
//! `down` needs: kill those processes, delete every netns with the prefix, remove the dir.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Parent of all lab dirs: `$WEFT_LAB_DIR`, else `<tmp>/weft-lab`.
pub fn base_dir() -> PathBuf {
    std::env::var_os("WEFT_LAB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("weft-lab"))
}

pub fn lab_dir(id: &str) -> PathBuf {
    base_dir().join(id)
}

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh lab id for this process.
pub fn new_id() -> String {
    let n = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    if n == 0 {
        format!("wl{pid}")
    } else {
        format!("wl{pid}c{n}")
    }
}

/// Checks a user-given id before deleting things by its prefix.
pub fn valid_id(id: &str) -> bool {
    id.len() >= 3
        && id.len() <= 20
        && id.starts_with("wl")
        && id.chars().all(|c| c.is_ascii_alphanumeric())
}

struct Live {
    shutting_down: bool,
    ids: BTreeSet<String>,
}

static LIVE: Mutex<Live> = Mutex::new(Live {
    shutting_down: false,
    ids: BTreeSet::new(),
});

fn live() -> MutexGuard<'static, Live> {
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Held while a lab creates a netns or starts a process, so that a concurrent
/// [`shutdown_all`] either sees the new object or runs before it is created (and then the
/// creation is refused): nothing is left behind by a signal arriving mid-build.
pub struct CreateGuard(#[allow(dead_code)] MutexGuard<'static, Live>);

/// Err(Interrupted) once a shutdown has begun.
pub fn create_guard() -> std::io::Result<CreateGuard> {
    let g = live();
    if g.shutting_down {
        return Err(std::io::Error::new(
            std::io::ErrorKind::Interrupted,
            "weft-lab is shutting down",
        ));
    }
    Ok(CreateGuard(g))
}

pub fn register(id: &str) {
    live().ids.insert(id.to_string());
}

pub fn unregister(id: &str) {
    live().ids.remove(id);
}

/// For a signal handler: refuses further creations, then removes every lab of this process.
/// Returns the ids removed.
pub fn shutdown_all() -> Vec<String> {
    let mut g = live();
    g.shutting_down = true;
    let ids: Vec<String> = g.ids.iter().cloned().collect();
    for id in &ids {
        if let Err(e) = down(id) {
            eprintln!("weft-lab: removing lab {id}: {e}");
        }
    }
    g.ids.clear();
    ids
}

/// Records a started process in the lab's pid file.
pub fn record_pid(dir: &Path, pid: u32, program: &str) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("pids"))?;
    writeln!(f, "{pid} {program}")
}

/// The processes a lab recorded: (pid, program file name).
pub fn recorded_pids(dir: &Path) -> Vec<(i32, String)> {
    std::fs::read_to_string(dir.join("pids"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (pid, prog) = l.split_once(' ')?;
            Some((pid.parse().ok()?, prog.trim().to_string()))
        })
        .collect()
}

/// True if `pid` is alive and runs `program` (guards against a recycled pid).
fn runs(pid: i32, program: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    let argv0 = String::from_utf8_lossy(argv0);
    let name = Path::new(argv0.as_ref())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A zombie (our own unreaped child) has an empty cmdline: nothing left to kill.
    !name.is_empty() && name == program
}

/// Sends SIGTERM, waits up to `grace`, then SIGKILL. Only for processes running `program`.
pub fn terminate(pid: i32, program: &str, grace: Duration) {
    if !runs(pid, program) {
        return;
    }
    // SAFETY: plain kill(2).
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let start = Instant::now();
    while start.elapsed() < grace {
        if !runs(pid, program) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if runs(pid, program) {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Records a kube node's mount namespace (by inode) and the lab netns it runs in (by name):
/// its containerd, kubelet, shims, and below them the containers belong to the lab. A
/// namespace inode alone is not an identity (a dead namespace's number is reused); the pair
/// with a netns the lab still holds is.
pub fn record_mntns(dir: &Path, mntns: u64, netns_name: &str) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("mntns"))?;
    writeln!(f, "{mntns} {netns_name}")
}

fn ns_inode(pid: i32, kind: &str) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok()?;
    let s = link.to_str()?;
    s.strip_prefix(kind)?
        .strip_prefix(":[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...: comm may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The processes in mount namespace `mntns` AND network namespace `netns` (a kube node's
/// containerd, kubelet, kube-proxy, shims), and all their descendants (the containers, which
/// have namespaces of their own). Empty for the machine's or our own mount namespace.
pub fn node_processes(mntns: u64, netns: u64) -> Vec<i32> {
    let me = std::process::id() as i32;
    if mntns == 0
        || netns == 0
        || ns_inode(me, "mnt") == Some(mntns)
        || ns_inode(1, "mnt") == Some(mntns)
    {
        return Vec::new();
    }
    let pids: Vec<i32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|p| *p != me)
        .collect();
    let mut found: BTreeSet<i32> = pids
        .iter()
        .copied()
        .filter(|p| ns_inode(*p, "mnt") == Some(mntns) && ns_inode(*p, "net") == Some(netns))
        .collect();
    if found.is_empty() {
        return Vec::new();
    }
    // Descendants, to a fixed point (the process table is a snapshot).
    let parents: Vec<(i32, i32)> = pids
        .iter()
        .filter_map(|p| Some((*p, parent_of(*p)?)))
        .collect();
    loop {
        let before = found.len();
        for (p, pp) in &parents {
            if found.contains(pp) && *p != me {
                found.insert(*p);
            }
        }
        if found.len() == before {
            break;
        }
    }
    found.into_iter().collect()
}

/// SIGKILLs [`node_processes`] and waits (up to 5 s) until they are gone, so that their
/// mounts and namespaces go with them. Returns how many.
pub fn kill_node_processes(mntns: u64, netns: u64) -> usize {
    let doomed = node_processes(mntns, netns);
    for p in &doomed {
        // SAFETY: plain kill(2); every pid was just seen in the node's namespaces or below.
        unsafe { libc::kill(*p, libc::SIGKILL) };
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline
        && doomed
            .iter()
            .any(|p| std::fs::metadata(format!("/proc/{p}/ns")).is_ok() && !zombie(*p))
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    doomed.len()
}

/// Container ids a node's containerd ran (its task state dir, under the lab dir).
pub fn container_ids(task_state_dir: &Path) -> Vec<String> {
    std::fs::read_dir(task_state_dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 64 && n.chars().all(|c| c.is_ascii_hexdigit()))
        .collect()
}

/// Removes the (empty, dead) cgroups runc made for these containers under `k8s.io` in every
/// hierarchy: a container killed with its shim is never cleaned up by containerd. Only ids
/// this lab's containerd ran; rmdir fails harmlessly on a cgroup still in use.
pub fn remove_container_cgroups(ids: &[String]) {
    let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let hierarchies: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    for id in ids {
        for h in &hierarchies {
            let _ = std::fs::remove_dir(h.join("k8s.io").join(id));
        }
    }
}

/// Where a kube node's containerd keeps its task state, under a lab dir.
pub fn kube_task_dirs(lab_dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(lab_dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            e.path()
                .join("kube/root/run-containerd/io.containerd.runtime.v2.task/k8s.io")
        })
        .filter(|p| p.is_dir())
        .collect()
}

fn zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 1..];
            rest.split_whitespace().next().map(|st| st == "Z")
        })
        .unwrap_or(true)
}

/// Netns names belonging to lab `id`.
pub fn netns_of(id: &str) -> Vec<String> {
    let prefix = format!("{id}-");
    weft_netops::netns::list_named()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

/// Removes lab `id`: its recorded processes, every netns named `<id>-*`, its dir.
pub fn down(id: &str) -> std::io::Result<()> {
    if !valid_id(id) {
        return Err(std::io::Error::other(format!(
            "{id:?} is not a weft-lab id (wl<digits>...)"
        )));
    }
    let dir = lab_dir(id);
    let pids = recorded_pids(&dir);
    // In parallel: each may take its grace period.
    std::thread::scope(|s| {
        for (pid, prog) in &pids {
            s.spawn(move || terminate(*pid, prog, Duration::from_secs(3)));
        }
    });
    // A kube node's mount namespace: containerd's shims and the containers below them. Only
    // with the node's netns, which must still be one of this lab's.
    let prefix = format!("{id}-");
    for line in std::fs::read_to_string(dir.join("mntns"))
        .unwrap_or_default()
        .lines()
    {
        let Some((mnt, netns)) = line.trim().split_once(' ') else {
            continue;
        };
        let (Ok(mnt), true) = (mnt.parse::<u64>(), netns.starts_with(&prefix)) else {
            continue;
        };
        let net = weft_netops::netns::NetNs::open(weft_netops::netns::named_path(netns))
            .ok()
            .and_then(|ns| ns.inode().ok());
        if let Some(net) = net {
            kill_node_processes(mnt, net);
        }
    }
    for tasks in kube_task_dirs(&dir) {
        remove_container_cgroups(&container_ids(&tasks));
    }
    let mut first_err = None;
    for name in netns_of(id) {
        if let Err(e) = weft_netops::netns::delete_named(&name) {
            first_err.get_or_insert(std::io::Error::other(format!("delete netns {name}: {e}")));
        }
    }
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            first_err.get_or_insert(std::io::Error::other(format!(
                "remove {}: {e}",
                dir.display()
            )));
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Labs present on this machine: ids that have a dir or a netns.
pub fn list_labs() -> Vec<String> {
    let mut ids = BTreeSet::new();
    if let Ok(rd) = std::fs::read_dir(base_dir()) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if valid_id(&name) {
                ids.insert(name);
            }
        }
    }
    for ns in weft_netops::netns::list_named() {
        if let Some((id, _)) = ns.split_once('-') {
            if valid_id(id) {
                ids.insert(id.to_string());
            }
        }
    }
    ids.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(valid_id("wl123"));
        assert!(valid_id("wl123c2"));
        assert!(!valid_id("wl"));
        assert!(!valid_id("wl1-2"));
        assert!(!valid_id("x123"));
        assert!(!valid_id("wl1/.."));
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        assert!(valid_id(&a) && valid_id(&b));
        // One lab's prefix never matches another's names.
        assert!(!format!("{b}-n1").starts_with(&format!("{a}-")));
    }
}
