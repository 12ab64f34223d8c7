//! IPAM state files: weft_ipam::parse_reservation on arbitrary bytes, and the store working
//! over a directory of arbitrary files (reservations with any name and content, a garbage
//! round-robin hint): allocate, get, release and gc must not panic, must never hand out an
//! address whose file exists, and gc must leave no reservation behind.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::HashSet;
use std::net::IpAddr;
use std::path::PathBuf;
use weft_ipam::{parse_reservation, validate_range_sets, Attachment, RangeConfig, Store};

fn scratch() -> PathBuf {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    base.join(format!("weft-fuzz-ipam-{}", std::process::id()))
}

fn usable_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() < 200
        && !name.contains(['/', '\0'])
}

fuzz_target!(|input: (Vec<u8>, Vec<(String, Vec<u8>)>, Vec<u8>)| {
    let (content, files, hint) = input;

    // The pure parser: what it accepts is a usable owner that writes back identically.
    if let Ok(who) = parse_reservation(&content) {
        assert!(!who.container_id.is_empty());
        for s in [&who.container_id, &who.ifname] {
            assert!(!s.contains(['\r', '\n', '\0']), "{who:?}");
        }
        let again = format!("{}\r\n{}", who.container_id, who.ifname);
        assert_eq!(parse_reservation(again.as_bytes()).as_ref(), Ok(&who));
    }

    // The store over a directory of fuzzed files.
    let root = scratch();
    let _ = std::fs::remove_dir_all(&root);
    let dir = root.join("net");
    std::fs::create_dir_all(&dir).unwrap();
    let mut existing: HashSet<IpAddr> = HashSet::new();
    for (name, bytes) in files.iter().take(16) {
        if !usable_name(name) || name == "lock" {
            continue;
        }
        if std::fs::write(dir.join(name), bytes).is_ok() {
            if let Ok(ip) = name.parse::<IpAddr>() {
                existing.insert(ip);
            }
        }
    }
    std::fs::write(dir.join("last_reserved_ip.0"), &hint).unwrap();
    std::fs::write(dir.join("last_reserved_ip.1"), &hint).unwrap();

    let sets = validate_range_sets(&[
        vec![RangeConfig {
            subnet: "10.0.0.0/29".parse().unwrap(),
            range_start: None,
            range_end: None,
            gateway: None,
        }],
        vec![RangeConfig {
            subnet: "fd00::/125".parse().unwrap(),
            range_start: None,
            range_end: None,
            gateway: None,
        }],
    ])
    .unwrap();
    let store = Store::open(&root, "net").unwrap();
    let _ = store.list();
    let who = Attachment::new("fuzz-ctr", "eth0");
    if let Ok(made) = store.allocate(&sets, &who, &[]) {
        assert_eq!(made.len(), 2);
        for a in &made {
            let ip = a.address.addr();
            assert!(
                !existing.contains(&ip),
                "handed out {ip}, whose file exists"
            );
            assert!(sets[a.set_index]
                .iter()
                .any(|r| r.contains(ip) && r.gateway() != ip));
        }
        let mut ips: Vec<IpAddr> = made.iter().map(|a| a.address.addr()).collect();
        ips.sort();
        assert_eq!(store.get(&who).unwrap(), ips);
        assert_eq!(store.release(&who).unwrap(), ips);
    }
    let report = store.gc(&[]).unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(
            name.parse::<IpAddr>().is_err(),
            "gc left reservation {name}"
        );
        assert!(!name.starts_with(weft_ipam::TEMP_PREFIX), "gc left {name}");
    }
    let _ = std::fs::remove_dir_all(&root);
});
