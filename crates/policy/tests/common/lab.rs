//! A two-node lab in network namespaces made for each test (unique names, removed on drop, also
//! when a test panics): each node has a bridge `weft0` with its pods on veths (same-node
//! traffic is bridged; br_netfilter is on in new namespaces here), the nodes are routed to each
//! other over a veth pair (host-gw). Every pod serves TCP and UDP on 80 and 81. Only netlink
//! (weft-netops) and `nft -j -f -` inside the lab's namespaces: the machine is never touched.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use weft_lab::probe::in_netns_thread;
use weft_lab::Netns;
use weft_netops::netlink::{Netlink, Route, VethSpec};
use weft_policy::{compile, Applier, ApplyStats, CompileOptions, Model, Protocol};

use super::{all_pods, placement, pod_v4, pod_v6, Truth};

pub const PORTS: [u16; 2] = [80, 81];

pub struct Node {
    pub ns: Netns,
    pub applier: Applier,
}

pub struct Lab {
    pub nodes: Vec<Node>,
    pub pods: BTreeMap<String, Netns>,
    stop: Arc<AtomicBool>,
    servers: Vec<std::thread::JoinHandle<()>>,
}

fn node_addr(node: u8, v6: bool) -> IpAddr {
    if v6 {
        format!("fd00:99::{node}").parse().unwrap()
    } else {
        IpAddr::from([192, 168, 250, node])
    }
}

pub fn gateway(node: u8, v6: bool) -> IpAddr {
    if v6 {
        format!("fd00:10:244:{node}::1").parse().unwrap()
    } else {
        IpAddr::from([10, 244, node, 1])
    }
}

fn net(ip: IpAddr, len: u8) -> IpNet {
    IpNet::new(ip, len).unwrap()
}

/// Link-local addresses usable at once (no DAD wait) on links made later in this netns:
/// otherwise the first seconds of IPv6 between nodes are lost to tentative addresses.
fn no_dad() {
    weft_netops::sysctl::write("net/ipv6/conf/default/accept_dad", "0").unwrap();
    weft_netops::sysctl::write("net/ipv6/conf/all/accept_dad", "0").unwrap();
}

fn in_ns<T>(ns: &Netns, f: impl FnOnce() -> T) -> T {
    weft_netops::run_in(ns.handle(), f).expect("enter netns")
}

impl Lab {
    pub fn new(tag: &str) -> Lab {
        let mut nodes = Vec::new();
        for n in 1..=2u8 {
            let ns = Netns::new(&format!("wpol-{tag}-n{n}")).expect("create node netns (root?)");
            in_ns(&ns, || {
                weft_netops::sysctl::write("net/ipv4/ip_forward", "1").unwrap();
                weft_netops::sysctl::write("net/ipv6/conf/all/forwarding", "1").unwrap();
                no_dad();
            });
            let mut nl = Netlink::in_netns(ns.handle()).unwrap();
            weft_netops::bridge::ensure(
                &mut nl,
                "weft0",
                &[net(gateway(n, false), 24), net(gateway(n, true), 64)],
            )
            .unwrap();
            nodes.push(Node {
                ns,
                applier: Applier::new(),
            });
        }
        // The underlay: a veth pair between the nodes, each routing the other's pod CIDR.
        {
            let mut nl1 = Netlink::in_netns(nodes[0].ns.handle()).unwrap();
            let mut spec = VethSpec::new("to-n2", "to-n1");
            spec.peer_netns = Some(nodes[1].ns.handle());
            spec.up = true;
            let pair = nl1.create_veth(&spec).unwrap();
            let mut nl2 = Netlink::in_netns(nodes[1].ns.handle()).unwrap();
            let peer = nl2.get_link_by_name("to-n1").unwrap().unwrap();
            nl2.set_link_up(peer.index).unwrap();
            for (nl, idx, me, other) in [
                (&mut nl1, pair.host_index, 1u8, 2u8),
                (&mut nl2, peer.index, 2, 1),
            ] {
                nl.add_address(idx, net(node_addr(me, false), 24), true)
                    .unwrap();
                nl.add_address(idx, net(node_addr(me, true), 64), true)
                    .unwrap();
                nl.add_route(&Route::via(
                    net(IpAddr::from([10, 244, other, 0]), 24),
                    node_addr(other, false),
                ))
                .unwrap();
                nl.add_route(&Route::via(
                    net(format!("fd00:10:244:{other}::").parse().unwrap(), 64),
                    node_addr(other, true),
                ))
                .unwrap();
            }
        }
        // Resolve the nodes' neighbours on the underlay now: a forwarded first packet waiting
        // for IPv6 neighbour discovery between the nodes is lost (the probe would read it as a
        // denial). The pods' own neighbour discovery still happens under the policies.
        for (n, other) in [(0usize, 2u8), (1, 1)] {
            for v6 in [false, true] {
                let gw = gateway(other, v6);
                assert!(
                    weft_lab::probe::ping(nodes[n].ns.handle(), gw),
                    "node {} -> {gw}",
                    n + 1
                );
            }
        }
        let mut lab = Lab {
            nodes,
            pods: BTreeMap::new(),
            stop: Arc::new(AtomicBool::new(false)),
            servers: Vec::new(),
        };
        for pod in all_pods() {
            lab.add_pod(tag, &pod);
        }
        lab
    }

    fn add_pod(&mut self, tag: &str, pod: &str) {
        let (ns_name, name) = pod.split_once('/').unwrap();
        let (node, _) = placement(ns_name, name);
        let ns = Netns::new(&format!("wpol-{tag}-{ns_name}{name}")).unwrap();
        in_ns(&ns, no_dad);
        let node_ns = &self.nodes[usize::from(node - 1)].ns;
        let mut nl = Netlink::in_netns(node_ns.handle()).unwrap();
        let bridge = nl.get_link_by_name("weft0").unwrap().unwrap();
        let mut spec = VethSpec::new(&format!("v{ns_name}{name}"), "eth0");
        spec.peer_netns = Some(ns.handle());
        spec.host_master = Some(bridge.index);
        spec.up = true;
        nl.create_veth(&spec).unwrap();
        let mut pnl = Netlink::in_netns(ns.handle()).unwrap();
        let eth0 = pnl.get_link_by_name("eth0").unwrap().unwrap();
        pnl.add_address(eth0.index, net(pod_v4(ns_name, name), 24), true)
            .unwrap();
        pnl.add_address(eth0.index, net(pod_v6(ns_name, name), 64), true)
            .unwrap();
        pnl.set_link_up(eth0.index).unwrap();
        pnl.add_route(&Route::via(
            net(IpAddr::from([0, 0, 0, 0]), 0),
            gateway(node, false),
        ))
        .unwrap();
        pnl.add_route(&Route::via(
            net("::".parse().unwrap(), 0),
            gateway(node, true),
        ))
        .unwrap();
        self.serve(&ns);
        self.pods.insert(pod.to_string(), ns);
    }

    /// TCP and UDP (echo) servers on 80 and 81, dual-stack, until the lab is dropped.
    fn serve(&mut self, ns: &Netns) {
        for port in PORTS {
            let any: SocketAddr = (IpAddr::from([0u16; 8]), port).into();
            let (tcp, udp) = in_netns_thread(ns.handle(), move || {
                (
                    TcpListener::bind(any).unwrap(),
                    UdpSocket::bind(any).unwrap(),
                )
            })
            .unwrap();
            tcp.set_nonblocking(true).unwrap();
            udp.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let stop = self.stop.clone();
            self.servers.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match tcp.accept() {
                        Ok(_) => {}
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            }));
            let stop = self.stop.clone();
            self.servers.push(std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = udp.recv_from(&mut buf) {
                        let _ = udp.send_to(&buf[..n], from);
                    }
                }
            }));
        }
    }

    /// Compile `model` for each node (local = on that node) and apply it: the first time a
    /// full build, then diffs against what each node's applier programmed.
    pub fn apply(&mut self, model: &Model, opts: &CompileOptions) -> Vec<ApplyStats> {
        let mut stats = Vec::new();
        for (i, node) in self.nodes.iter_mut().enumerate() {
            let mut m = model.clone();
            for p in m.pods.values_mut() {
                p.local = placement(&p.namespace, &p.name).0 == i as u8 + 1;
            }
            let mut opts = opts.clone();
            if !opts.fail_closed.is_empty() {
                // Each node fails closed on its own pod CIDRs.
                let n = i as u8 + 1;
                opts.fail_closed = vec![
                    net(gateway(n, false), 24).trunc(),
                    net(gateway(n, true), 64).trunc(),
                ];
            }
            let desired = compile(&m, &opts);
            let applier = &mut node.applier;
            let s = weft_netops::run_in(node.ns.handle(), || applier.apply(&desired))
                .unwrap()
                .unwrap_or_else(|e| panic!("node {}: {e}", i + 1));
            stats.push(s);
        }
        stats
    }

    pub fn node_ns(&self, node: u8) -> &Netns {
        &self.nodes[usize::from(node - 1)].ns
    }

    /// The kernel's matrix: every pod to every pod on `protocol`/`port`, all probes at once.
    pub fn probe_matrix(&self, protocol: Protocol, port: u16, v6: bool) -> Truth {
        let mut handles = Vec::new();
        for from in all_pods() {
            for to in all_pods() {
                let (tns, tp) = to.split_once('/').unwrap();
                let dst = if v6 { pod_v6(tns, tp) } else { pod_v4(tns, tp) };
                let fd = self.pods[&from].handle();
                let h = probe_async(fd, dst, protocol, port, Duration::from_millis(800));
                handles.push(((from.clone(), to), h));
            }
        }
        let mut m = BTreeMap::new();
        for (k, h) in handles {
            m.insert(k, h.join().unwrap());
        }
        Truth(m)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.servers.drain(..) {
            let _ = h.join();
        }
        // The Netns guards delete the namespaces (with their links and tables).
    }
}

/// A fresh source port per UDP probe: an earlier admitted flow with the same 5-tuple would
/// still be in conntrack as established and pass whatever the current rules say.
static UDP_PORT: AtomicU16 = AtomicU16::new(20000);

/// TCP connect or UDP echo from inside `from`, on a thread of its own.
pub fn probe_async(
    from: &weft_netops::NetNs,
    dst: IpAddr,
    protocol: Protocol,
    port: u16,
    timeout: Duration,
) -> std::thread::JoinHandle<bool> {
    use std::os::fd::AsFd;
    let fd = from.as_fd().try_clone_to_owned().unwrap();
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: plain syscall on a valid fd; affects only this thread.
        if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            panic!("setns: {}", std::io::Error::last_os_error());
        }
        let addr = SocketAddr::new(dst, port);
        match protocol {
            Protocol::Tcp => TcpStream::connect_timeout(&addr, timeout).is_ok(),
            Protocol::Udp => {
                let sport = UDP_PORT.fetch_add(1, Ordering::Relaxed);
                let local: SocketAddr = if dst.is_ipv4() {
                    (IpAddr::from([0u8; 4]), sport).into()
                } else {
                    (IpAddr::from([0u16; 8]), sport).into()
                };
                let Ok(s) = UdpSocket::bind(local) else {
                    return false;
                };
                s.set_read_timeout(Some(timeout)).unwrap();
                if s.connect(addr).is_err() || s.send(b"ping").is_err() {
                    return false;
                }
                let mut buf = [0u8; 16];
                matches!(s.recv(&mut buf), Ok(4))
            }
            Protocol::Sctp => panic!("no SCTP in this kernel"),
        }
    })
}
