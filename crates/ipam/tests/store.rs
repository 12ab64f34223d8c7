//! Store behaviour, read back from the files on disk.

use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use weft_ipam::{
    validate_range_sets, Attachment, ErrorKind, IpamConfig, RangeConfig, RangeSet, Store,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sets(json: &str) -> Vec<RangeSet> {
    let c: IpamConfig = serde_json::from_str(json).unwrap();
    c.validate().unwrap()
}

fn v4(subnet: &str) -> Vec<RangeSet> {
    sets(&format!(r#"{{"ranges":[[{{"subnet":"{subnet}"}}]]}}"#))
}

fn who(n: usize) -> Attachment {
    Attachment::new(format!("c{n}"), "eth0")
}

fn store() -> (tempfile::TempDir, Store) {
    let tmp = tempfile::tempdir().unwrap();
    let s = Store::open(tmp.path(), "net1").unwrap();
    (tmp, s)
}

fn alloc1(s: &Store, sets: &[RangeSet], w: &Attachment) -> IpAddr {
    let a = s.allocate(sets, w, &[]).unwrap();
    assert_eq!(a.len(), 1);
    a[0].address.addr()
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn first_allocation_skips_gateway_and_writes_host_local_format() {
    let (_t, s) = store();
    let sets = v4("10.1.0.0/24");
    let a = s.allocate(&sets, &who(1), &[]).unwrap();
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].address, "10.1.0.2/24".parse().unwrap());
    assert_eq!(a[0].gateway, Some(ip("10.1.0.1")));
    assert_eq!(a[0].set_index, 0);
    let content = fs::read_to_string(s.dir().join("10.1.0.2")).unwrap();
    assert_eq!(content, "c1\r\neth0");
    assert_eq!(
        fs::read_to_string(s.dir().join("last_reserved_ip.0")).unwrap(),
        "10.1.0.2"
    );
    assert_eq!(s.get(&who(1)).unwrap(), vec![ip("10.1.0.2")]);
    assert_eq!(s.list().unwrap(), vec![(ip("10.1.0.2"), who(1))]);
}

#[test]
fn permissions_are_0700_and_0600() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = Store::open(&data, "net1").unwrap();
    assert_eq!(mode(&data.join("net1")), 0o700);
    s.allocate(&v4("10.1.0.0/24"), &who(1), &[]).unwrap();
    for f in ["lock", "10.1.0.2", "last_reserved_ip.0"] {
        assert_eq!(mode(&s.dir().join(f)), 0o600, "{f}");
    }
}

#[test]
fn open_rejects_bad_names_and_non_directories() {
    let tmp = tempfile::tempdir().unwrap();
    for bad in ["", ".", "..", "a/b"] {
        let e = Store::open(tmp.path(), bad).unwrap_err();
        assert!(e.is_invalid_config(), "{bad:?}: {e}");
    }
    fs::write(tmp.path().join("file"), "x").unwrap();
    let e = Store::open(tmp.path(), "file").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert!(e.to_string().contains("not a directory"), "{e}");
    assert!(e.to_string().contains("file"), "{e}");
}

#[test]
fn round_robin_does_not_reuse_freed_ip_and_wraps() {
    let (_t, s) = store();
    // .1 is the gateway, so the range gives .2 .3 .4 .5 .6
    let sets = sets(r#"{"ranges":[[{"subnet":"10.1.0.0/24","rangeEnd":"10.1.0.6"}]]}"#);
    let got: Vec<IpAddr> = (0..3).map(|n| alloc1(&s, &sets, &who(n))).collect();
    assert_eq!(got, vec![ip("10.1.0.2"), ip("10.1.0.3"), ip("10.1.0.4")]);
    // Freed .2 is not handed out again right away.
    assert_eq!(s.release(&who(0)).unwrap(), vec![ip("10.1.0.2")]);
    assert_eq!(alloc1(&s, &sets, &who(3)), ip("10.1.0.5"));
    assert_eq!(alloc1(&s, &sets, &who(4)), ip("10.1.0.6"));
    // Wraps to the start, skipping the gateway.
    assert_eq!(alloc1(&s, &sets, &who(5)), ip("10.1.0.2"));
    let e = s.allocate(&sets, &who(6), &[]).unwrap_err();
    assert!(e.is_exhausted(), "{e}");
    assert_eq!(
        e.to_string(),
        "no IP addresses available in range set 0 (10.1.0.0/24 (10.1.0.1-10.1.0.6))"
    );
    // A hole in the middle is found after wrapping.
    s.release(&who(2)).unwrap();
    assert_eq!(alloc1(&s, &sets, &who(7)), ip("10.1.0.4"));
}

#[test]
fn slash30_gives_exactly_one_address() {
    let (_t, s) = store();
    let sets = v4("10.0.0.0/30");
    assert_eq!(alloc1(&s, &sets, &who(1)), ip("10.0.0.2"));
    let e = s.allocate(&sets, &who(2), &[]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Exhausted);
    assert_eq!(
        s.usage(&sets).unwrap()[0].total,
        1,
        "range .1-.2 minus gateway"
    );
}

#[test]
fn explicit_gateway_inside_range_is_skipped() {
    let (_t, s) = store();
    let sets = sets(
        r#"{"ranges":[[{"subnet":"10.1.0.0/24","rangeStart":"10.1.0.10","rangeEnd":"10.1.0.12","gateway":"10.1.0.11"}]]}"#,
    );
    assert_eq!(alloc1(&s, &sets, &who(1)), ip("10.1.0.10"));
    assert_eq!(alloc1(&s, &sets, &who(2)), ip("10.1.0.12"));
    assert!(s.allocate(&sets, &who(3), &[]).unwrap_err().is_exhausted());
}

#[test]
fn multiple_ranges_in_a_set_are_walked_in_order() {
    let (_t, s) = store();
    let sets = sets(
        r#"{"ranges":[[{"subnet":"10.1.0.0/24","rangeStart":"10.1.0.2","rangeEnd":"10.1.0.3"},
                       {"subnet":"10.2.0.0/24","rangeStart":"10.2.0.5","rangeEnd":"10.2.0.5"}]]}"#,
    );
    let a: Vec<_> = (0..3)
        .map(|n| s.allocate(&sets, &who(n), &[]).unwrap()[0])
        .collect();
    assert_eq!(a[0].address, "10.1.0.2/24".parse().unwrap());
    assert_eq!(a[1].address, "10.1.0.3/24".parse().unwrap());
    assert_eq!(a[2].address, "10.2.0.5/24".parse().unwrap());
    assert_eq!(a[2].gateway, Some(ip("10.2.0.1")));
    s.release(&who(0)).unwrap();
    // After 10.2.0.5 the walk wraps to the first range.
    assert_eq!(alloc1(&s, &sets, &who(9)), ip("10.1.0.2"));
}

#[test]
fn dual_stack_gives_one_address_per_set() {
    let (_t, s) = store();
    let sets = sets(r#"{"ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"fd00:1::/64"}]]}"#);
    let a = s.allocate(&sets, &who(1), &[]).unwrap();
    assert_eq!(a.len(), 2);
    assert_eq!(a[0].address, "10.1.0.2/24".parse().unwrap());
    assert_eq!(a[1].address, "fd00:1::2/64".parse().unwrap());
    assert_eq!(a[1].gateway, Some(ip("fd00:1::1")));
    assert_eq!(a[1].set_index, 1);
    assert_eq!(
        fs::read_to_string(s.dir().join("fd00:1::2")).unwrap(),
        "c1\r\neth0"
    );
    assert_eq!(
        fs::read_to_string(s.dir().join("last_reserved_ip.1")).unwrap(),
        "fd00:1::2"
    );
    assert_eq!(
        s.get(&who(1)).unwrap(),
        vec![ip("10.1.0.2"), ip("fd00:1::2")]
    );
    assert_eq!(
        s.release(&who(1)).unwrap(),
        vec![ip("10.1.0.2"), ip("fd00:1::2")]
    );
    assert!(s.list().unwrap().is_empty());
}

#[test]
fn already_exists_when_attachment_holds_anything() {
    let (_t, s) = store();
    let sets = v4("10.1.0.0/24");
    s.allocate(&sets, &who(1), &[]).unwrap();
    let e = s.allocate(&sets, &who(1), &[]).unwrap_err();
    assert!(e.is_already_exists(), "{e}");
    assert_eq!(
        e.to_string(),
        "container c1 interface eth0 already holds 10.1.0.2"
    );
    // Same container, other interface: fine.
    let other = Attachment::new("c1", "net1");
    assert_eq!(alloc1(&s, &sets, &other), ip("10.1.0.3"));
    assert_eq!(s.list().unwrap().len(), 2);
}

#[test]
fn requested_ips() {
    let (_t, s) = store();
    let sets = sets(r#"{"ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"fd00:1::/64"}]]}"#);
    // Requested v6 only; v4 is allocated normally.
    let a = s.allocate(&sets, &who(1), &[ip("fd00:1::99")]).unwrap();
    assert_eq!(a[0].address, "10.1.0.2/24".parse().unwrap());
    assert_eq!(a[1].address, "fd00:1::99/64".parse().unwrap());

    // Taken.
    let e = s.allocate(&sets, &who(2), &[ip("10.1.0.2")]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RequestedUnavailable);
    assert_eq!(
        e.to_string(),
        "requested IP address 10.1.0.2 is not available: held by c1/eth0"
    );
    // The gateway.
    let e = s.allocate(&sets, &who(2), &[ip("10.1.0.1")]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RequestedUnavailable);
    assert!(e.to_string().contains("the gateway of 10.1.0.0/24"), "{e}");
    // Outside every range (the broadcast is outside the default range too).
    for bad in ["10.9.0.5", "10.1.0.255"] {
        let e = s.allocate(&sets, &who(2), &[ip(bad)]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::RequestedOutOfRange, "{bad}");
        assert!(e.to_string().contains(bad));
    }
    // Two for one set.
    let e = s
        .allocate(&sets, &who(2), &[ip("10.1.0.7"), ip("10.1.0.8")])
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidRequest);
    // Nothing was left behind by the failures.
    assert_eq!(s.get(&who(2)).unwrap(), Vec::<IpAddr>::new());
    // Both requested, IPv4-mapped form accepted.
    let a = s
        .allocate(&sets, &who(2), &[ip("::ffff:10.1.0.7"), ip("fd00:1::7")])
        .unwrap();
    assert_eq!(a[0].address.addr(), ip("10.1.0.7"));
    assert_eq!(a[1].address.addr(), ip("fd00:1::7"));
    // Round-robin continues after the requested address.
    assert_eq!(alloc1(&s, &sets[..1], &who(3)), ip("10.1.0.8"));
}

#[test]
fn all_or_nothing_when_a_later_set_fails() {
    let (_t, s) = store();
    // Set 1 holds a single address (fd00::2; fd00::1 is the gateway).
    let sets = sets(
        r#"{"ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"fd00::/64","rangeEnd":"fd00::2"}]]}"#,
    );
    s.allocate(&sets, &who(1), &[]).unwrap();
    let before = s.list().unwrap();
    let e = s.allocate(&sets, &who(2), &[]).unwrap_err();
    assert!(e.is_exhausted());
    assert!(e.to_string().contains("range set 1"), "{e}");
    assert_eq!(s.list().unwrap(), before);
    assert!(!s.dir().join("10.1.0.3").exists());
    // Same with a requested IP that is taken in the later set.
    let e = s.allocate(&sets, &who(2), &[ip("fd00::2")]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RequestedUnavailable);
    assert_eq!(s.list().unwrap(), before);
}

#[test]
fn release_is_idempotent_and_only_touches_owner() {
    let (_t, s) = store();
    let sets = v4("10.1.0.0/24");
    alloc1(&s, &sets, &who(1));
    alloc1(&s, &sets, &who(2));
    assert_eq!(s.release(&who(3)).unwrap(), Vec::<IpAddr>::new());
    assert_eq!(s.release(&who(1)).unwrap(), vec![ip("10.1.0.2")]);
    assert_eq!(s.release(&who(1)).unwrap(), Vec::<IpAddr>::new());
    assert_eq!(s.list().unwrap(), vec![(ip("10.1.0.3"), who(2))]);
    assert!(!s.dir().join("10.1.0.2").exists());
}

#[test]
fn gc_releases_everything_not_valid_including_corrupt() {
    let (_t, s) = store();
    let sets = v4("10.1.0.0/24");
    for n in 0..5 {
        alloc1(&s, &sets, &who(n));
    }
    fs::write(s.dir().join("10.1.0.100"), "garbage-without-separator").unwrap();
    fs::write(s.dir().join(".tmp-1-1"), "half").unwrap();
    let valid = [who(1), who(3), Attachment::new("gone", "eth0")];
    let report = s.gc(&valid).unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(
        report.released,
        vec![
            (ip("10.1.0.2"), who(0)),
            (ip("10.1.0.4"), who(2)),
            (ip("10.1.0.6"), who(4))
        ]
    );
    assert_eq!(report.removed_unreadable.len(), 1);
    assert_eq!(report.removed_unreadable[0].0, ip("10.1.0.100"));
    assert_eq!(
        s.list().unwrap(),
        vec![(ip("10.1.0.3"), who(1)), (ip("10.1.0.5"), who(3))]
    );
    assert!(!s.dir().join(".tmp-1-1").exists());
    // Nothing left to do.
    let report = s.gc(&valid).unwrap();
    assert!(report.released.is_empty() && report.removed_unreadable.is_empty());
}

#[test]
fn gc_goes_on_past_errors() {
    let (_t, s) = store();
    let sets = v4("10.1.0.0/24");
    alloc1(&s, &sets, &who(1));
    // A directory under an address name: unreadable, and remove_file fails on it.
    fs::create_dir(s.dir().join("10.1.0.50")).unwrap();
    let report = s.gc(&[]).unwrap();
    assert_eq!(report.released, vec![(ip("10.1.0.2"), who(1))]);
    assert_eq!(report.errors.len(), 1);
    assert!(report.errors[0].to_string().contains("10.1.0.50"));
}

#[test]
fn corrupt_file_is_named_and_does_not_block_others() {
    let (_t, s) = store();
    let sets = v4("10.1.0.0/24");
    alloc1(&s, &sets, &who(1));
    let bad = s.dir().join("10.1.0.3");
    fs::write(&bad, [0xff, 0xfe, 0x00]).unwrap();
    let e = s.list().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    assert_eq!(
        e.to_string(),
        format!("corrupt IPAM state file {}: not UTF-8", bad.display())
    );
    // Healthy attachments still work; the corrupt address stays taken.
    assert_eq!(s.get(&who(1)).unwrap(), vec![ip("10.1.0.2")]);
    assert_eq!(alloc1(&s, &sets, &who(2)), ip("10.1.0.4"));
    assert_eq!(s.release(&who(1)).unwrap(), vec![ip("10.1.0.2")]);
    let e = s.allocate(&sets, &who(3), &[ip("10.1.0.3")]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RequestedUnavailable);
    assert!(e.to_string().contains("unreadable file"), "{e}");
    // A garbage round-robin hint is ignored.
    fs::write(s.dir().join("last_reserved_ip.0"), "not an ip").unwrap();
    assert_eq!(alloc1(&s, &sets, &who(4)), ip("10.1.0.2"));
}

#[test]
fn crash_leftovers_are_ignored_and_cleaned() {
    let (_t, s) = store();
    let sets = v4("10.1.0.0/24");
    alloc1(&s, &sets, &who(1));
    // What a process killed mid-write leaves: a half-written temp file, and one fully
    // written and linked (the crash came before the temp was unlinked).
    fs::write(s.dir().join(".tmp-999-0"), "c9\r").unwrap();
    fs::hard_link(s.dir().join("10.1.0.2"), s.dir().join(".tmp-999-1")).unwrap();
    assert_eq!(s.list().unwrap(), vec![(ip("10.1.0.2"), who(1))]);
    assert_eq!(s.get(&who(9)).unwrap(), Vec::<IpAddr>::new());
    // The next locked operation cleans them up and the reservation survives.
    alloc1(&s, &sets, &who(2));
    let names: Vec<String> = fs::read_dir(s.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(!names.iter().any(|n| n.starts_with(".tmp-")), "{names:?}");
    assert_eq!(s.get(&who(1)).unwrap(), vec![ip("10.1.0.2")]);
}

#[test]
fn usage_counts_per_range() {
    let (_t, s) = store();
    let sets = sets(
        r#"{"ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"fd00::/64","rangeStart":"fd00::10","rangeEnd":"fd00::1f"}]]}"#,
    );
    for n in 0..3 {
        s.allocate(&sets, &who(n), &[]).unwrap();
    }
    let u = s.usage(&sets).unwrap();
    assert_eq!(u.len(), 2);
    assert_eq!((u[0].used, u[0].total), (3, 253));
    assert_eq!(u[0].subnet, "10.1.0.0/24".parse().unwrap());
    // The default gateway fd00::1 is outside fd00::10-fd00::1f.
    assert_eq!((u[1].used, u[1].total), (3, 16));
    assert_eq!(u[1].set_index, 1);
}

#[test]
fn check_usable() {
    let (_t, s) = store();
    s.check_usable().unwrap();
    fs::remove_dir_all(s.dir()).unwrap();
    let e = s.check_usable().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert!(e.to_string().contains("net1"), "{e}");
}

#[test]
fn huge_ipv6_range_allocates_fast() {
    let (_t, s) = store();
    let sets = sets(r#"{"ranges":[[{"subnet":"fd00::/48"}]]}"#);
    assert_eq!(alloc1(&s, &sets, &who(1)), ip("fd00::2"));
    let u = s.usage(&sets).unwrap();
    assert_eq!(u[0].total, (1u128 << 80) - 1 - 1);
}

#[test]
fn validate_range_sets_direct() {
    let cfg = vec![vec![RangeConfig {
        subnet: "10.2.0.0/24".parse().unwrap(),
        range_start: Some(ip("10.1.0.5")),
        range_end: None,
        gateway: None,
    }]];
    let e = validate_range_sets(&cfg).unwrap_err();
    assert_eq!(
        e.to_string(),
        "ranges[0][0].rangeStart 10.1.0.5 is outside subnet 10.2.0.0/24"
    );
}

#[test]
fn rejects_bad_attachment() {
    let (_t, s) = store();
    let sets = v4("10.1.0.0/24");
    for w in [
        Attachment::new("", "eth0"),
        Attachment::new("a\r\nb", "eth0"),
    ] {
        let e = s.allocate(&sets, &w, &[]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidRequest);
    }
}

#[test]
fn ops_are_fast_with_250_reservations() {
    let (_t, s) = store();
    let sets = v4("10.1.0.0/24");
    for n in 0..250 {
        alloc1(&s, &sets, &who(n));
    }
    let start = std::time::Instant::now();
    for n in 0..20 {
        s.release(&who(n)).unwrap();
        alloc1(&s, &sets, &who(1000 + n));
    }
    let per_op = start.elapsed() / 40;
    // Generous bound (debug build, shared machine, two fsyncs per allocate): it catches
    // quadratic behaviour, not a slow disk. Typically 1-3 ms.
    assert!(per_op.as_millis() < 50, "{per_op:?} per op");
    eprintln!("{per_op:?} per op with 250 reservations");
}
