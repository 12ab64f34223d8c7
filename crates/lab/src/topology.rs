//! The lab's topology: segments, router, world and nodes (see the picture), all network
//! namespaces named `<id>-...`.
//!
//! ```text
//!            192.168.77.0/24 (<id>-ul, br0, etcd on .250)       192.168.78.0/24 (<id>-ul2, br0)
//!   n1 .11   n2 .12   n3 .13 ...            rt .254 ------------ rt .254          nX .11
//!                                              |
//!                                     198.51.100.1 -- world 198.51.100.2 (<id>-world)
//! ```
//!
//! The router forwards between the segments and the world but knows no pod CIDR: host-gw
//! cannot reach the far node (VXLAN can), and pod -> world is answered only if masqueraded (the
//! world routes back only the node subnets). Every netns is named `<id>-...`; nothing is
//! created in the root netns. Dropping the [`Cluster`] (also on a build error, and through
//! [`crate::registry::shutdown_all`] on a signal) kills its processes, deletes its netns and
//! removes its dir.

use crate::cluster::{exe_dir, find_bin_dir, Cluster, LabConfig};
use crate::error::{io_err, net_err, LabError};
use crate::netutil::{add_addr, add_route, link, make_bridge, nl, plug, up};
use crate::ns::Netns;
use crate::registry;
use ipnet::{Ipv4Net, Ipv6Net};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use weft_netops::netlink::{Route, VethSpec};
use weft_netops::netns::NetNs;

/// The nodes' segment; the bridge in `<id>-ul` holds .250 (etcd).
pub const SEGMENT_A: Ipv4Net = net(192, 168, 77, 0, 24);
/// The far node's segment, behind the router.
pub const SEGMENT_B: Ipv4Net = net(192, 168, 78, 0, 24);
/// Between the router and the world.
pub const WORLD_NET: Ipv4Net = net(198, 51, 100, 0, 24);
pub const ETCD_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 250);
pub const ROUTER_A: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 254);
pub const ROUTER_B: Ipv4Addr = Ipv4Addr::new(192, 168, 78, 254);
pub const ROUTER_WORLD: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const WORLD_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const ETCD_PORT: u16 = 2379;
pub const ETCD_PREFIX: &str = "/weft/network";
/// Where each weftd listens (inside its node netns).
pub const AGENT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 9946);
pub const CONFLIST_NAME: &str = "10-weft.conflist";

pub(crate) const fn net(a: u8, b: u8, c: u8, d: u8, len: u8) -> Ipv4Net {
    match Ipv4Net::new(Ipv4Addr::new(a, b, c, d), len) {
        Ok(n) => n,
        Err(_) => panic!("bad prefix length"),
    }
}

/// Which underlay segment a node sits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    A,
    B,
}

pub struct Node {
    /// n1, n2, ... (the far node is the last one).
    pub name: String,
    pub index: u32,
    pub netns: Netns,
    pub underlay_ip: Ipv4Addr,
    pub segment: Segment,
    /// The node's files: cni/net.d, ipam, state, weftd.log.
    pub dir: PathBuf,
}

impl Node {
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.join("net.d")
    }
    pub fn conflist_path(&self) -> PathBuf {
        self.cni_conf_dir().join(CONFLIST_NAME)
    }
    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.join("ipam")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("weftd.log")
    }
    pub fn ns(&self) -> &NetNs {
        self.netns.handle()
    }
    /// The pod CIDR the static datastore gives this node: the index-th subnet of the network.
    pub fn static_pod_cidr(&self, network: Ipv4Net, subnet_len: u8) -> Option<Ipv4Net> {
        network.subnets(subnet_len).ok()?.nth(self.index as usize)
    }
    /// The IPv6 pod CIDR the static datastore gives this node (same index as the IPv4 one).
    pub fn static_pod_cidr_v6(&self, network: Ipv6Net, subnet_len: u8) -> Option<Ipv6Net> {
        network.subnets(subnet_len).ok()?.nth(self.index as usize)
    }
    /// VTEP MAC written for this node in the static file.
    pub fn static_vtep_mac(&self) -> String {
        format!(
            "02:77:00:00:{:02x}:{:02x}",
            self.index >> 8,
            self.index & 0xff
        )
    }
}

impl Cluster {
    pub(crate) fn build_in(
        id: String,
        dir: PathBuf,
        config: LabConfig,
    ) -> Result<Cluster, LabError> {
        if config.nodes == 0 || config.nodes > 200 {
            return Err(LabError::Setup(format!(
                "--nodes {} is outside 1..200",
                config.nodes
            )));
        }
        let bin_dir = match &config.bin_dir {
            Some(d) => d.clone(),
            // The topology needs no binary: a missing plugin shows up at the first add_pod.
            None => find_bin_dir(&["weft"]).unwrap_or_else(|_| exe_dir()),
        };
        {
            // Under the guard like every other creation: a signal's teardown either sees the
            // dir or runs before it exists (and then this refuses to make it).
            let _g = registry::create_guard().map_err(|_| LabError::Interrupted)?;
            std::fs::create_dir_all(&dir).map_err(io_err("create lab dir", &dir))?;
        }
        let new_ns = |suffix: &str| -> Result<Netns, LabError> {
            let _g = registry::create_guard().map_err(|_| LabError::Interrupted)?;
            let name = format!("{id}-{suffix}");
            Netns::named(&name).map_err(io_err("create netns", Path::new(&name)))
        };
        let mtu = config.underlay_mtu;

        // The segments: a bridge each.
        let underlay = new_ns("ul")?;
        let underlay2 = new_ns("ul2")?;
        let mut ul = nl(&underlay)?;
        let mut ul2 = nl(&underlay2)?;
        let br = make_bridge(&mut ul, &underlay.name, mtu)?;
        let br2 = make_bridge(&mut ul2, &underlay2.name, mtu)?;
        add_addr(&mut ul, &underlay.name, br, ETCD_IP, 24)?;
        // etcd must answer the far node.
        add_route(
            &mut ul,
            &underlay.name,
            Route::via(SEGMENT_B.into(), ROUTER_A.into()),
        )?;

        // The router: a leg on each segment and one to the world.
        let router = new_ns("rt")?;
        let world = new_ns("world")?;
        let mut rt = nl(&router)?;
        plug(&mut ul, br, "rt", &router, "eth0", mtu)?;
        plug(&mut ul2, br2, "rt", &router, "eth1", mtu)?;
        let (eth0, eth1) = (
            link(&mut rt, &router.name, "eth0")?,
            link(&mut rt, &router.name, "eth1")?,
        );
        add_addr(&mut rt, &router.name, eth0, ROUTER_A, 24)?;
        add_addr(&mut rt, &router.name, eth1, ROUTER_B, 24)?;
        let pair = rt
            .create_veth(&VethSpec {
                host_name: "eth2".into(),
                peer_name: "eth0".into(),
                peer_netns: Some(world.handle()),
                mtu: Some(mtu),
                ..Default::default()
            })
            .map_err(net_err(format!(
                "create router-world veth in {}",
                router.name
            )))?;
        up(&mut rt, &router.name, pair.host_index)?;
        add_addr(&mut rt, &router.name, pair.host_index, ROUTER_WORLD, 24)?;
        weft_netops::netns::run_in(router.handle(), || {
            weft_netops::sysctl::write("net/ipv4/ip_forward", "1")
        })
        .map_err(net_err(format!("enter {}", router.name)))?
        .map_err(net_err(format!("enable ip_forward in {}", router.name)))?;

        // The world knows the node subnets, not the pod CIDRs.
        let mut w = nl(&world)?;
        let weth = link(&mut w, &world.name, "eth0")?;
        up(&mut w, &world.name, weth)?;
        add_addr(&mut w, &world.name, weth, WORLD_IP, 24)?;
        for seg in [SEGMENT_A, SEGMENT_B] {
            add_route(
                &mut w,
                &world.name,
                Route::via(seg.into(), ROUTER_WORLD.into()),
            )?;
        }

        // The nodes.
        let mut nodes = Vec::new();
        let total = config.nodes + usize::from(config.far_node);
        for i in 1..=total {
            let far = i > config.nodes;
            let name = format!("n{i}");
            let netns = new_ns(&name)?;
            let (seg_nl, seg_br, net, gw, host) = if far {
                (
                    &mut ul2,
                    br2,
                    SEGMENT_B,
                    ROUTER_B,
                    10 + (i - config.nodes) as u8,
                )
            } else {
                (&mut ul, br, SEGMENT_A, ROUTER_A, 10 + i as u8)
            };
            let ip = Ipv4Addr::from(u32::from(net.network()) + u32::from(host));
            plug(seg_nl, seg_br, &name, &netns, "eth0", mtu)?;
            let mut n = nl(&netns)?;
            let eth0 = link(&mut n, &netns.name, "eth0")?;
            add_addr(&mut n, &netns.name, eth0, ip, net.prefix_len())?;
            add_route(
                &mut n,
                &netns.name,
                Route::via("0.0.0.0/0".parse().unwrap(), gw.into()),
            )?;
            let node_dir = dir.join(&name);
            for sub in ["net.d", "ipam", "state"] {
                let d = node_dir.join(sub);
                let _g = registry::create_guard().map_err(|_| LabError::Interrupted)?;
                std::fs::create_dir_all(&d).map_err(io_err("create node dir", &d))?;
            }
            nodes.push(Node {
                name,
                index: i as u32,
                netns,
                underlay_ip: ip,
                segment: if far { Segment::B } else { Segment::A },
                dir: node_dir,
            });
        }

        Ok(Cluster {
            id,
            dir,
            config,
            bin_dir,
            underlay,
            underlay2,
            router,
            world,
            nodes,
            pods: Vec::new(),
            procs: Vec::new(),
            kept: false,
            kube: None,
        })
    }
}
