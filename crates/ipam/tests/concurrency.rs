//! Many threads and many processes allocating from one network at once, and processes
//! killed with SIGKILL in the middle of allocating.
//!
//! Child processes are this test binary re-executed on the `child_worker` test, which does
//! nothing unless WEFT_IPAM_CHILD is set.

use std::collections::HashSet;
use std::fs;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use weft_ipam::{Attachment, IpamConfig, RangeSet, Store};

const NETWORK: &str = "conc";

fn sets() -> Vec<RangeSet> {
    let c: IpamConfig = serde_json::from_str(
        r#"{"ranges":[[{"subnet":"10.7.0.0/24"}],[{"subnet":"fd07::/120"}]]}"#,
    )
    .unwrap();
    c.validate().unwrap()
}

/// Child role. `WEFT_IPAM_CHILD=<data dir>`, `WEFT_IPAM_CHILD_ID=<tag>`,
/// `WEFT_IPAM_CHILD_COUNT=<n>`: allocates n attachments and prints `<container> <ip>...`
/// lines. With `WEFT_IPAM_CHILD_LOOP=1` it allocates and releases forever (to be killed).
#[test]
fn child_worker() {
    let Ok(dir) = std::env::var("WEFT_IPAM_CHILD") else {
        return;
    };
    let tag = std::env::var("WEFT_IPAM_CHILD_ID").unwrap();
    let count: usize = std::env::var("WEFT_IPAM_CHILD_COUNT")
        .unwrap_or_else(|_| "0".into())
        .parse()
        .unwrap();
    let store = Store::open(&dir, NETWORK).unwrap();
    let sets = sets();
    if std::env::var("WEFT_IPAM_CHILD_LOOP").is_ok() {
        for n in 0.. {
            let w = Attachment::new(format!("{tag}-{n}"), "eth0");
            store.allocate(&sets, &w, &[]).unwrap();
            if n % 2 == 0 {
                store.release(&w).unwrap();
            }
        }
    }
    for n in 0..count {
        // A fresh Store each time, like a fresh CNI process.
        let store = Store::open(&dir, NETWORK).unwrap();
        let w = Attachment::new(format!("{tag}-{n}"), "eth0");
        let a = store.allocate(&sets, &w, &[]).unwrap();
        let ips: Vec<String> = a.iter().map(|a| a.address.addr().to_string()).collect();
        println!("ALLOC {} {}", w.container_id, ips.join(" "));
    }
}

fn spawn_child(dir: &Path, tag: &str, count: usize, looping: bool) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child_worker", "--nocapture", "--test-threads=1"])
        .env("WEFT_IPAM_CHILD", dir)
        .env("WEFT_IPAM_CHILD_ID", tag)
        .env("WEFT_IPAM_CHILD_COUNT", count.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if looping {
        cmd.env("WEFT_IPAM_CHILD_LOOP", "1");
    }
    cmd.spawn().unwrap()
}

#[test]
fn threads_and_processes_never_share_an_address() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    const PROCS: usize = 8;
    const THREADS: usize = 4;
    const EACH: usize = 12; // (8 + 4) * 12 = 144 of 253 addresses

    let children: Vec<Child> = (0..PROCS)
        .map(|p| spawn_child(&dir, &format!("p{p}"), EACH, false))
        .collect();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let dir = dir.clone();
            std::thread::spawn(move || {
                let sets = sets();
                let mut got = Vec::new();
                for n in 0..EACH {
                    let store = Store::open(&dir, NETWORK).unwrap();
                    let w = Attachment::new(format!("t{t}-{n}"), "eth0");
                    let a = store.allocate(&sets, &w, &[]).unwrap();
                    got.push((w, a.iter().map(|a| a.address.addr()).collect::<Vec<_>>()));
                }
                got
            })
        })
        .collect();

    let mut all: Vec<(Attachment, Vec<IpAddr>)> = Vec::new();
    for t in threads {
        all.extend(t.join().unwrap());
    }
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        // libtest may print "test child_worker ... " in front of the first line.
        for line in stdout.lines().filter_map(|l| l.split_once("ALLOC ")) {
            let mut words = line.1.split_whitespace();
            let id = words.next().unwrap();
            let ips = words.map(|w| w.parse().unwrap()).collect();
            all.push((Attachment::new(id, "eth0"), ips));
        }
    }
    assert_eq!(all.len(), (PROCS + THREADS) * EACH);

    // Every address handed out once, and the files say the same.
    let mut seen = HashSet::new();
    for (_, ips) in &all {
        assert_eq!(ips.len(), 2);
        for ip in ips {
            assert!(seen.insert(*ip), "{ip} handed out twice");
        }
    }
    let store = Store::open(&dir, NETWORK).unwrap();
    let listed = store.list().unwrap();
    assert_eq!(listed.len(), seen.len());
    for (w, ips) in &all {
        assert_eq!(&store.get(w).unwrap(), ips);
    }
    // No temp files left behind by clean exits.
    let temps = fs::read_dir(store.dir())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".tmp-")
        })
        .count();
    assert_eq!(temps, 0);
}

#[test]
fn sigkill_at_any_moment_leaves_consistent_state() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let sets = sets();
    for round in 0..8u64 {
        // Two workers racing, so a kill can land while the other holds the lock, too.
        let mut a = spawn_child(&dir, &format!("k{round}a"), 0, true);
        let mut b = spawn_child(&dir, &format!("k{round}b"), 0, true);
        // Wait until both are busy, so the kill lands mid-work.
        let store = Store::open(&dir, NETWORK).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let owners: Vec<String> = store
                .list()
                .unwrap()
                .into_iter()
                .map(|(_, w)| w.container_id)
                .collect();
            let busy = |t: &str| {
                owners
                    .iter()
                    .any(|o| o.starts_with(&format!("k{round}{t}-")))
            };
            if busy("a") && busy("b") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "workers did not start"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(round * 3));
        a.kill().unwrap(); // SIGKILL
        b.kill().unwrap();
        a.wait().unwrap();
        b.wait().unwrap();

        // Every reservation file is complete. An attachment holds at most one address per
        // family (a kill between the two files of an allocate or a release leaves one).
        let store = Store::open(&dir, NETWORK).unwrap();
        let listed = store.list().expect("no torn reservation files");
        let mut by_owner: std::collections::HashMap<Attachment, Vec<IpAddr>> = Default::default();
        for (ip, w) in listed {
            by_owner.entry(w).or_default().push(ip);
        }
        for (w, ips) in &by_owner {
            let v4 = ips.iter().filter(|ip| ip.is_ipv4()).count();
            assert!(v4 <= 1 && ips.len() - v4 <= 1, "{w}: {ips:?}");
        }
        // Clean up with gc (keeping nothing) so the range does not fill, and check the
        // store still works after the crash.
        let report = store.gc(&[]).unwrap();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert!(report.removed_unreadable.is_empty());
        let w = Attachment::new(format!("after-{round}"), "eth0");
        assert_eq!(store.allocate(&sets, &w, &[]).unwrap().len(), 2);
        store.release(&w).unwrap();
        let leftovers: Vec<String> = fs::read_dir(store.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
