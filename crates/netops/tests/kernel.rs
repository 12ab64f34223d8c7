//! Kernel tests: need root. Everything happens in network namespaces created
//! here (`wnops-<pid>-<n>`), removed by a Drop guard also on failure. The
//! root namespace is never modified.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use ipnet::IpNet;
use weft_netops::netlink::{
    FdbEntry, IpFamily, Neighbour, Request, Route, VethSpec, VxlanSpec, NUD_PERMANENT,
    RTPROT_STATIC, RT_TABLE_MAIN,
};
use weft_netops::{netns, sysctl, Error, NetNs, Netlink};

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn require_root() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "weft-netops kernel tests must run as root"
    );
}

/// A named netns that is deleted when dropped.
struct TestNs {
    name: String,
    ns: NetNs,
}

impl TestNs {
    fn new() -> TestNs {
        require_root();
        let name = format!(
            "wnops-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let ns = netns::create_named(&name).expect("create netns");
        TestNs { name, ns }
    }

    fn netlink(&self) -> Netlink {
        Netlink::in_netns(&self.ns).expect("netlink in netns")
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = netns::delete_named(&self.name);
    }
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn named_netns_lifecycle() {
    let t = TestNs::new();
    let name = t.name.clone();
    assert!(netns::list_named().contains(&name));
    let path = netns::named_path(&name);
    assert!(path.exists());

    // A different namespace from ours, with lo up.
    let here = NetNs::current().unwrap();
    assert_ne!(here.inode().unwrap(), t.ns.inode().unwrap());
    let reopened = NetNs::open(&path).unwrap();
    assert_eq!(reopened.inode().unwrap(), t.ns.inode().unwrap());
    let lo = t.netlink().get_link_by_name("lo").unwrap().unwrap();
    assert!(lo.up, "lo must be up in a new named netns");

    // Same name again: exists.
    let err = netns::create_named(&name).unwrap_err();
    assert!(err.is_exists(), "{err}");

    drop(t);
    assert!(!netns::list_named().contains(&name));
    assert!(!path.exists());
    // Idempotent.
    netns::delete_named(&name).unwrap();
    netns::delete_named(&name).unwrap();
    assert!(matches!(NetNs::open(&path), Err(Error::NotFound { .. })));
    // The caller's namespace never changed.
    assert_eq!(
        NetNs::current().unwrap().inode().unwrap(),
        here.inode().unwrap()
    );
}

#[test]
fn open_rejects_non_netns() {
    let file = std::env::temp_dir().join(format!("wnops-file-{}", std::process::id()));
    std::fs::write(&file, b"x").unwrap();
    let err = NetNs::open(&file).unwrap_err();
    std::fs::remove_file(&file).unwrap();
    assert!(matches!(err, Error::NotANetns { .. }), "{err}");
    assert!(err.to_string().contains("not a network namespace"), "{err}");

    // nsfs, but the wrong kind of namespace.
    let err = NetNs::open("/proc/self/ns/uts").unwrap_err();
    assert!(matches!(err, Error::NotANetns { .. }), "{err}");

    let err = NetNs::open("/nonexistent/wnops").unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert!(err.is_not_found());

    assert!(netns::create_named("a/b").is_err());
    assert!(netns::create_named("..").is_err());
}

#[test]
fn run_in_switches_and_restores() {
    let t = TestNs::new();
    let before = NetNs::current().unwrap().inode().unwrap();
    let inside = netns::run_in(&t.ns, || NetNs::current().unwrap().inode().unwrap()).unwrap();
    assert_eq!(inside, t.ns.inode().unwrap());
    assert_eq!(NetNs::current().unwrap().inode().unwrap(), before);

    // Restored when the closure panics.
    let r = std::panic::catch_unwind(|| {
        netns::run_in(&t.ns, || panic!("boom")).unwrap();
    });
    assert!(r.is_err());
    assert_eq!(NetNs::current().unwrap().inode().unwrap(), before);
}

#[test]
fn sysctl_is_per_netns() {
    let a = TestNs::new();
    let b = TestNs::new();
    netns::run_in(&a.ns, || sysctl::write("net/ipv4/ip_forward", "1"))
        .unwrap()
        .unwrap();
    let in_a = netns::run_in(&a.ns, || sysctl::read("net/ipv4/ip_forward"))
        .unwrap()
        .unwrap();
    let in_b = netns::run_in(&b.ns, || sysctl::read("net/ipv4/ip_forward"))
        .unwrap()
        .unwrap();
    assert_eq!(in_a, "1");
    assert_eq!(in_b, "0");
    let v = netns::run_in(&a.ns, || sysctl::read("net/ipv6/conf/lo/disable_ipv6"))
        .unwrap()
        .unwrap();
    assert!(v == "0" || v == "1");
    assert!(sysctl::read("net/../../etc/passwd").is_err());
    let err = sysctl::read("net/ipv4/wnops_nope").unwrap_err();
    assert!(err.is_not_found(), "{err}");
}

#[test]
fn bridge_veth_addresses_routes_neighbours() {
    let host = TestNs::new();
    let pod = TestNs::new();
    let mut hn = host.netlink();
    let mut pn = pod.netlink();

    // Bridge.
    let br = hn.create_bridge("wbr0", Some(1400), None).unwrap();
    let err = hn.create_bridge("wbr0", None, None).unwrap_err();
    assert!(err.is_exists(), "{err}");
    assert!(err.to_string().contains("create bridge wbr0"), "{err}");

    // Veth with the peer created directly in the pod namespace.
    let peer_mac = [0x02, 0x42, 0x0a, 0x58, 0x00, 0x05];
    let spec = VethSpec {
        host_alias: Some("pod/default/web-1".into()),
        peer_netns: Some(&pod.ns),
        mtu: Some(1400),
        peer_mac: Some(peer_mac),
        ..VethSpec::new("wveth0", "eth0")
    };
    let pair = hn.create_veth(&spec).unwrap();
    assert!(
        hn.get_link_by_name("eth0").unwrap().is_none(),
        "peer leaked into host ns"
    );
    let eth0 = pn
        .get_link_by_name("eth0")
        .unwrap()
        .expect("peer in pod ns");
    assert_eq!(eth0.index, pair.peer_index);
    assert_eq!(eth0.mac, Some(peer_mac));
    assert_eq!(eth0.mtu, 1400);
    assert_eq!(eth0.kind.as_deref(), Some("veth"));

    hn.set_master(pair.host_index, br).unwrap();
    hn.set_link_up(pair.host_index).unwrap();
    hn.set_link_up(br).unwrap();
    hn.set_bridge_port_hairpin(pair.host_index, true).unwrap();
    pn.set_link_up(eth0.index).unwrap();

    let veth = hn.get_link_by_index(pair.host_index).unwrap().unwrap();
    assert_eq!(veth.name, "wveth0");
    assert_eq!(veth.kind.as_deref(), Some("veth"));
    assert_eq!(veth.master, Some(br));
    assert_eq!(veth.mtu, 1400);
    assert_eq!(veth.alias.as_deref(), Some("pod/default/web-1"));
    assert!(veth.up);
    assert_eq!(veth.port_kind.as_deref(), Some("bridge"));
    assert_eq!(veth.hairpin, Some(true));
    hn.set_bridge_port_hairpin(pair.host_index, false).unwrap();
    let veth = hn.get_link_by_index(pair.host_index).unwrap().unwrap();
    assert_eq!(veth.hairpin, Some(false));

    let brl = hn.get_link_by_name("wbr0").unwrap().unwrap();
    assert_eq!(brl.kind.as_deref(), Some("bridge"));
    assert_eq!(brl.index, br);
    assert!(brl.up);
    let names: Vec<String> = hn
        .list_links()
        .unwrap()
        .into_iter()
        .map(|l| l.name)
        .collect();
    assert!(names.contains(&"wbr0".to_string()) && names.contains(&"wveth0".to_string()));

    // Addresses.
    hn.add_address(br, net("10.88.0.1/24"), false).unwrap();
    hn.add_address(br, net("fd00:88::1/64"), true).unwrap();
    let err = hn.add_address(br, net("10.88.0.1/24"), false).unwrap_err();
    assert!(err.is_exists(), "{err}");
    hn.replace_address(br, net("10.88.0.1/24"), false).unwrap();
    pn.add_address(eth0.index, net("10.88.0.5/24"), false)
        .unwrap();
    pn.add_address(eth0.index, net("fd00:88::5/64"), true)
        .unwrap();
    let addrs = pn.list_addresses(Some(eth0.index)).unwrap();
    assert!(
        addrs.contains(&(eth0.index, net("10.88.0.5/24"))),
        "{addrs:?}"
    );
    assert!(
        addrs.contains(&(eth0.index, net("fd00:88::5/64"))),
        "{addrs:?}"
    );
    let all = hn.list_addresses(None).unwrap();
    assert!(all.contains(&(br, net("10.88.0.1/24"))));
    assert!(all.contains(&(1, net("127.0.0.1/8"))), "{all:?}");
    pn.del_address(eth0.index, net("fd00:88::5/64")).unwrap();
    assert!(!pn
        .list_addresses(Some(eth0.index))
        .unwrap()
        .contains(&(eth0.index, net("fd00:88::5/64"))));
    let err = pn
        .del_address(eth0.index, net("fd00:88::5/64"))
        .unwrap_err();
    assert!(err.errno().is_some(), "{err}");
    pn.add_address(eth0.index, net("fd00:88::5/64"), true)
        .unwrap();

    // Routes in the pod: default via the bridge, an onlink route with its
    // own protocol, an IPv6 default.
    pn.add_route(&Route::via(net("0.0.0.0/0"), ip("10.88.0.1")))
        .unwrap();
    let onlink = Route::onlink(net("10.99.0.0/24"), ip("169.254.1.1"), eth0.index)
        .with_protocol(RTPROT_STATIC)
        .with_metric(50);
    pn.add_route(&onlink).unwrap();
    pn.add_route(&Route::via(net("::/0"), ip("fd00:88::1")))
        .unwrap();

    let err = pn
        .add_route(&Route::via(net("10.1.0.0/24"), ip("10.88.0.2")))
        .and_then(|_| pn.add_route(&Route::via(net("10.1.0.0/24"), ip("10.88.0.2"))))
        .unwrap_err();
    assert!(err.is_exists());
    assert_eq!(
        err.to_string(),
        "add route 10.1.0.0/24 via 10.88.0.2: File exists (os error 17)"
    );
    pn.replace_route(&Route::via(net("10.1.0.0/24"), ip("10.88.0.3")))
        .unwrap();

    let routes = pn
        .list_routes(Some(IpFamily::V4), Some(RT_TABLE_MAIN))
        .unwrap();
    let got = routes
        .iter()
        .find(|r| r.dst == net("10.99.0.0/24"))
        .expect("onlink route listed");
    assert!(got.onlink);
    assert_eq!(got.protocol, RTPROT_STATIC);
    assert_eq!(got.gateway, Some(ip("169.254.1.1")));
    assert_eq!(got.oif, Some(eth0.index));
    assert_eq!(got.metric, Some(50));
    assert_eq!(got.table, RT_TABLE_MAIN);
    let dflt = routes.iter().find(|r| r.dst == net("0.0.0.0/0")).unwrap();
    assert_eq!(dflt.gateway, Some(ip("10.88.0.1")));
    let replaced = routes.iter().find(|r| r.dst == net("10.1.0.0/24")).unwrap();
    assert_eq!(replaced.gateway, Some(ip("10.88.0.3")));
    // Connected route, added by the kernel.
    assert!(routes
        .iter()
        .any(|r| r.dst == net("10.88.0.0/24") && r.protocol == 2 && r.oif == Some(eth0.index)));
    let v6 = pn.list_routes(Some(IpFamily::V6), None).unwrap();
    assert!(v6
        .iter()
        .any(|r| r.dst == net("::/0") && r.gateway == Some(ip("fd00:88::1"))));
    assert!(v6.iter().all(|r| r.dst.addr().is_ipv6()));

    // route_get: what the kernel would use.
    let r = pn.route_get(ip("10.200.0.1")).unwrap();
    assert_eq!(r.gateway, Some(ip("10.88.0.1")));
    assert_eq!(r.oif, Some(eth0.index));
    assert_eq!(r.prefsrc, Some(ip("10.88.0.5")));
    assert_eq!(r.dst, net("10.200.0.1/32"));
    let r = pn.route_get(ip("10.99.0.7")).unwrap();
    assert_eq!(r.gateway, Some(ip("169.254.1.1")));
    let r = pn.route_get(ip("fd00:88::1")).unwrap();
    assert_eq!(r.oif, Some(eth0.index));
    assert_eq!(r.gateway, None);

    pn.del_route(&Route::new(net("10.99.0.0/24"))).unwrap();
    let err = pn.del_route(&Route::new(net("10.99.0.0/24"))).unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(!pn
        .list_routes(Some(IpFamily::V4), None)
        .unwrap()
        .iter()
        .any(|r| r.dst == net("10.99.0.0/24")));

    // Neighbours.
    let gw_mac = [0x02, 0, 0, 0, 0, 0x01];
    let n = Neighbour::permanent(eth0.index, ip("10.88.0.1"), gw_mac);
    pn.replace_neighbour(&n).unwrap();
    pn.replace_neighbour(&n).unwrap(); // replace is idempotent
    let n6 = Neighbour::permanent(eth0.index, ip("fd00:88::1"), gw_mac);
    pn.replace_neighbour(&n6).unwrap();
    let neigh = pn.list_neighbours(Some(eth0.index)).unwrap();
    let found = neigh
        .iter()
        .find(|x| x.ip == ip("10.88.0.1"))
        .expect("neighbour");
    assert_eq!(found.mac, Some(gw_mac));
    assert_eq!(found.state, NUD_PERMANENT);
    assert!(neigh
        .iter()
        .any(|x| x.ip == ip("fd00:88::1") && x.mac == Some(gw_mac)));
    pn.del_neighbour(&n).unwrap();
    assert!(!pn
        .list_neighbours(None)
        .unwrap()
        .iter()
        .any(|x| x.ip == ip("10.88.0.1")));
    let err = pn.del_neighbour(&n).unwrap_err();
    assert!(err.is_not_found(), "{err}");

    // Link settings.
    pn.set_mtu(eth0.index, 1300).unwrap();
    let new_mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
    pn.set_mac(eth0.index, new_mac).unwrap();
    pn.set_link_down(eth0.index).unwrap();
    let e = pn.get_link_by_index(eth0.index).unwrap().unwrap();
    assert_eq!((e.mtu, e.mac, e.up), (1300, Some(new_mac), false));
    hn.set_master(pair.host_index, 0).unwrap();
    assert_eq!(
        hn.get_link_by_index(pair.host_index)
            .unwrap()
            .unwrap()
            .master,
        None
    );
    let err = hn.set_link_up(999_999).unwrap_err();
    assert!(err.is_not_found(), "{err}");

    // Deleting the host side removes the peer too.
    assert!(hn.delete_link_by_name("wveth0").unwrap());
    assert!(!hn.delete_link_by_name("wveth0").unwrap());
    assert!(pn.get_link_by_name("eth0").unwrap().is_none());
    hn.delete_link(br).unwrap();
    assert!(hn.get_link_by_index(br).unwrap().is_none());
    let err = hn.delete_link(br).unwrap_err();
    assert!(err.is_not_found(), "{err}");
}

#[test]
fn veth_in_same_namespace() {
    let t = TestNs::new();
    let mut nl = t.netlink();
    let pair = nl.create_veth(&VethSpec::new("wva", "wvb")).unwrap();
    let b = nl.get_link_by_name("wvb").unwrap().unwrap();
    assert_eq!(b.index, pair.peer_index);
    assert_eq!(b.link, Some(pair.host_index));
    let err = nl.create_veth(&VethSpec::new("wva", "wvc")).unwrap_err();
    assert!(err.is_exists(), "{err}");
}

#[test]
fn vxlan_fdb_and_neighbours() {
    let t = TestNs::new();
    let mut nl = t.netlink();
    let vx_mac = [0x0a, 0x0b, 0x0c, 0x00, 0x00, 0x01];
    let spec = VxlanSpec {
        local: Some(ip("192.0.2.1")),
        mac: Some(vx_mac),
        mtu: Some(1450),
        ..VxlanSpec::new("wvx0", 4242)
    };
    let vx = nl.create_vxlan(&spec).unwrap();
    let link = nl.get_link_by_index(vx).unwrap().unwrap();
    assert_eq!(link.kind.as_deref(), Some("vxlan"));
    assert_eq!(link.mac, Some(vx_mac));
    assert_eq!(link.mtu, 1450);
    nl.set_link_up(vx).unwrap();

    // Flood list: all-zero MAC, two remotes.
    let zero = [0u8; 6];
    nl.append_fdb(&FdbEntry::new(vx, zero, Some(ip("192.0.2.10"))))
        .unwrap();
    nl.append_fdb(&FdbEntry::new(vx, zero, Some(ip("192.0.2.11"))))
        .unwrap();
    // A remote pod MAC behind 192.0.2.12, then moved to .13.
    let remote = [0x0a, 0, 0, 0, 0, 0x02];
    nl.replace_fdb(&FdbEntry::new(vx, remote, Some(ip("192.0.2.12"))))
        .unwrap();
    nl.replace_fdb(&FdbEntry::new(vx, remote, Some(ip("192.0.2.13"))))
        .unwrap();
    let fdb = nl.list_fdb(vx).unwrap();
    let has = |mac: [u8; 6], dst: &str| fdb.iter().any(|e| e.mac == mac && e.dst == Some(ip(dst)));
    assert!(
        has(zero, "192.0.2.10") && has(zero, "192.0.2.11"),
        "{fdb:?}"
    );
    assert!(has(remote, "192.0.2.13"), "{fdb:?}");
    assert!(!has(remote, "192.0.2.12"), "{fdb:?}");
    assert!(fdb.iter().all(|e| e.ifindex == vx));

    nl.del_fdb(&FdbEntry::new(vx, zero, Some(ip("192.0.2.10"))))
        .unwrap();
    nl.del_fdb(&FdbEntry::new(vx, remote, None)).unwrap();
    let fdb = nl.list_fdb(vx).unwrap();
    assert!(!fdb.iter().any(|e| e.mac == remote), "{fdb:?}");
    assert!(fdb
        .iter()
        .any(|e| e.mac == zero && e.dst == Some(ip("192.0.2.11"))));
    assert!(!fdb
        .iter()
        .any(|e| e.mac == zero && e.dst == Some(ip("192.0.2.10"))));
    let err = nl.del_fdb(&FdbEntry::new(vx, remote, None)).unwrap_err();
    assert!(err.is_not_found(), "{err}");

    // flannel-style ARP entry for the remote VTEP's gateway address.
    nl.replace_neighbour(&Neighbour::permanent(vx, ip("10.244.1.0"), remote))
        .unwrap();
    assert!(nl
        .list_neighbours(Some(vx))
        .unwrap()
        .iter()
        .any(|n| n.ip == ip("10.244.1.0") && n.mac == Some(remote)));

    // Batch mode for FDB too.
    let reqs: Vec<Request> = (1..=20u8)
        .map(|i| {
            Request::ReplaceFdb(FdbEntry::new(
                vx,
                [0x0a, 1, 0, 0, 0, i],
                Some(ip("192.0.2.20")),
            ))
        })
        .collect();
    assert!(nl.batch(&reqs).iter().all(|r| r.is_ok()));
    assert_eq!(
        nl.list_fdb(vx)
            .unwrap()
            .iter()
            .filter(|e| e.dst == Some(ip("192.0.2.20")))
            .count(),
        20
    );
}

#[test]
fn batch_of_routes() {
    let t = TestNs::new();
    let mut nl = t.netlink();
    let br = nl.create_bridge("wbr1", None, None).unwrap();
    nl.set_link_up(br).unwrap();
    nl.add_address(br, net("10.0.0.1/16"), false).unwrap();

    const PROTO: u8 = 77;
    const N: usize = 2000;
    let routes: Vec<Route> = (0..N)
        .map(|i| {
            let dst: IpNet = format!("10.{}.{}.0/24", 100 + i / 250, i % 250)
                .parse()
                .unwrap();
            if i % 2 == 0 {
                Route::dev(dst, br).with_protocol(PROTO)
            } else {
                Route::via(dst, ip("10.0.0.2")).with_protocol(PROTO)
            }
        })
        .collect();
    let reqs: Vec<Request> = routes.iter().cloned().map(Request::AddRoute).collect();

    let start = Instant::now();
    let results = nl.batch(&reqs);
    let took = start.elapsed();
    println!("batch of {N} routes took {took:?}");
    assert_eq!(results.len(), N);
    for r in &results {
        r.as_ref().unwrap();
    }
    let listed: Vec<Route> = nl
        .list_routes(Some(IpFamily::V4), Some(RT_TABLE_MAIN))
        .unwrap()
        .into_iter()
        .filter(|r| r.protocol == PROTO)
        .collect();
    assert_eq!(listed.len(), N);
    assert!(listed.contains(&routes[0]));
    assert!(listed
        .iter()
        .any(|r| r.dst == net("10.107.249.0/24") && r.gateway == Some(ip("10.0.0.2"))));

    // Again: every one fails with EEXIST, each error names its route.
    let again = nl.batch(&reqs);
    assert!(again
        .iter()
        .all(|r| r.as_ref().is_err_and(|e| e.is_exists())));
    let msg = again[3].as_ref().unwrap_err().to_string();
    assert!(
        msg.starts_with("add route 10.100.3.0/24 via 10.0.0.2"),
        "{msg}"
    );

    // A bad request in the middle does not disturb the others.
    let mixed = vec![
        Request::AddRoute(Route::dev(net("10.250.0.0/24"), br)),
        Request::AddRoute(Route::dev(net("10.250.1.0/24"), 999_999)),
        Request::AddRoute(Route::dev(net("10.250.2.0/24"), br)),
    ];
    let r = nl.batch(&mixed);
    assert!(r[0].is_ok() && r[2].is_ok());
    assert!(r[1].as_ref().unwrap_err().is_not_found(), "{:?}", r[1]);

    let dels: Vec<Request> = routes.into_iter().map(Request::DelRoute).collect();
    let start = Instant::now();
    assert!(nl.batch(&dels).iter().all(|r| r.is_ok()));
    println!("batch delete of {N} routes took {:?}", start.elapsed());
    assert_eq!(
        nl.list_routes(Some(IpFamily::V4), None)
            .unwrap()
            .iter()
            .filter(|r| r.protocol == PROTO)
            .count(),
        0
    );
}

#[test]
fn monitor_reports_addresses_and_deleted_links() {
    use weft_netops::netlink::monitor::{Change, Monitor};
    let t = TestNs::new();
    let mut nl = t.netlink();
    let mut mon = Monitor::in_netns(&t.ns).unwrap();
    let br = nl.create_bridge("wbr2", None, None).unwrap();
    nl.add_address(br, net("10.9.0.1/24"), true).unwrap();
    nl.delete_link(br).unwrap();
    // Collect until the deletion is seen (the notifications come in order).
    let mut seen = Vec::new();
    while !seen.contains(&Change::LinkDeleted { index: br }) {
        seen.extend(mon.wait().unwrap());
        assert!(seen.len() < 100, "no deletion among {seen:?}");
    }
    assert!(seen.contains(&Change::Link { index: br }), "{seen:?}");
    assert!(seen.contains(&Change::Address { index: br }), "{seen:?}");
}
