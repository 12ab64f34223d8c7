//! Backends: from the peer list to the kernel objects that make each peer's pods reachable.
//!
//! * host-gw: `peerPodCIDR via peerUnderlayIP dev <underlay>`.
//! * vxlan (as flannel does): a permanent neighbour (peer VTEP address -> peer VTEP MAC) and
//!   an FDB entry (peer VTEP MAC -> peer underlay IP) on the local VTEP, and the route
//!   `peerPodCIDR via peerVtepAddr dev weft.<vni> onlink`.
//! * auto: host-gw to peers on this node's underlay subnet, vxlan to the others.
//!
//! Every route weft installs carries protocol [`RTPROT_WEFT`]; that is how the reconcile loop
//! recognises what it owns (and what it may delete) in the main table.

use crate::config::BackendKind;
use crate::node::NodeRecord;
use crate::underlay::Underlay;
use crate::vxlan::{parse_mac, vtep_addr};
use serde::{Deserialize, Serialize};
use weft_netops::{FdbEntry, Neighbour, Route};

/// Route protocol id marking weft's routes (`ip route show proto 87`).
pub const RTPROT_WEFT: u8 = 87;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathKind {
    HostGw,
    Vxlan,
}

impl PathKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PathKind::HostGw => "host-gw",
            PathKind::Vxlan => "vxlan",
        }
    }
}

/// What one peer needs in the kernel.
#[derive(Debug, Clone)]
pub struct PeerPlan {
    pub peer: NodeRecord,
    pub path: PathKind,
    pub routes: Vec<Route>,
    pub neighbours: Vec<Neighbour>,
    pub fdb: Vec<FdbEntry>,
    /// Why the peer cannot be (fully) programmed, if so.
    pub problem: Option<String>,
}

pub struct LocalView<'a> {
    pub backend: BackendKind,
    pub underlay: &'a Underlay,
    /// The VTEP's ifindex (vxlan and auto).
    pub vtep_index: Option<u32>,
}

pub fn choose_path(local: &LocalView, peer: &NodeRecord) -> PathKind {
    match local.backend {
        BackendKind::HostGw => PathKind::HostGw,
        BackendKind::Vxlan => PathKind::Vxlan,
        BackendKind::Auto if local.underlay.on_link(peer.underlay_ip) => PathKind::HostGw,
        BackendKind::Auto => PathKind::Vxlan,
    }
}

pub fn plan_peer(local: &LocalView, peer: &NodeRecord) -> PeerPlan {
    let path = choose_path(local, peer);
    let mut plan = PeerPlan {
        peer: peer.clone(),
        path,
        routes: Vec::new(),
        neighbours: Vec::new(),
        fdb: Vec::new(),
        problem: None,
    };
    if path == PathKind::HostGw && !local.underlay.on_link(peer.underlay_ip) {
        plan.problem = Some(format!(
            "host-gw: {} is not on this node's underlay subnet {}; use --backend vxlan or auto",
            peer.underlay_ip,
            local.underlay.addr.trunc()
        ));
        return plan;
    }
    let mut problems = Vec::new();
    for cidr in &peer.pod_cidrs {
        // A host-gw next hop must be of the CIDR's family; with an IPv4 underlay, an IPv6 pod
        // CIDR rides the overlay when there is one.
        let same_family = cidr.addr().is_ipv4() == peer.underlay_ip.is_ipv4();
        let cidr_path = match path {
            PathKind::HostGw if same_family => PathKind::HostGw,
            PathKind::HostGw if local.vtep_index.is_some() => PathKind::Vxlan,
            PathKind::HostGw => {
                problems.push(format!(
                    "host-gw cannot route {cidr} via {}: address families differ (use vxlan or auto)",
                    peer.underlay_ip
                ));
                continue;
            }
            PathKind::Vxlan => PathKind::Vxlan,
        };
        match cidr_path {
            PathKind::HostGw => {
                let mut r = Route::via(*cidr, peer.underlay_ip).with_protocol(RTPROT_WEFT);
                r.oif = Some(local.underlay.ifindex);
                plan.routes.push(r);
            }
            PathKind::Vxlan => {
                let Some(vtep) = local.vtep_index else {
                    problems.push("vxlan: the local VTEP does not exist".into());
                    continue;
                };
                let Some(mac) = peer.vtep_mac.as_deref().and_then(parse_mac) else {
                    problems.push(format!(
                        "vxlan: peer {} does not publish a VTEP MAC (is its agent running with vxlan or auto?)",
                        peer.name
                    ));
                    continue;
                };
                let fdb = FdbEntry::new(vtep, mac, Some(peer.underlay_ip));
                if !plan.fdb.contains(&fdb) {
                    plan.fdb.push(fdb);
                }
                let gw = vtep_addr(cidr).addr();
                plan.neighbours.push(Neighbour::permanent(vtep, gw, mac));
                plan.routes
                    .push(Route::onlink(*cidr, gw, vtep).with_protocol(RTPROT_WEFT));
            }
        }
    }
    if !problems.is_empty() {
        plan.problem = Some(problems.join("; "));
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn underlay() -> Underlay {
        Underlay {
            ifname: "eth0".into(),
            ifindex: 2,
            addr: "192.168.77.11/24".parse().unwrap(),
            mtu: 1500,
        }
    }

    fn peer(ip: &str, mac: Option<&str>) -> NodeRecord {
        NodeRecord {
            name: "p".into(),
            underlay_ip: ip.parse().unwrap(),
            pod_cidrs: vec![
                "10.244.2.0/24".parse().unwrap(),
                "fd00:10:244:2::/64".parse().unwrap(),
            ],
            vtep_mac: mac.map(String::from),
        }
    }

    #[test]
    fn auto_picks_host_gw_on_link_and_vxlan_otherwise() {
        let u = underlay();
        let local = LocalView {
            backend: BackendKind::Auto,
            underlay: &u,
            vtep_index: Some(9),
        };
        let near = plan_peer(&local, &peer("192.168.77.12", Some("02:00:00:00:00:02")));
        assert_eq!(near.path, PathKind::HostGw);
        assert_eq!(near.routes.len(), 2);
        assert_eq!(
            near.routes[0].gateway,
            Some("192.168.77.12".parse().unwrap())
        );
        // The IPv6 CIDR cannot use an IPv4 next hop: it rides the overlay.
        assert!(near.routes[1].onlink && near.routes[1].oif == Some(9));
        assert!(near.problem.is_none());
        let far = plan_peer(&local, &peer("192.168.78.11", Some("02:00:00:00:00:03")));
        assert_eq!(far.path, PathKind::Vxlan);
        assert_eq!(far.routes.len(), 2);
        assert!(far
            .routes
            .iter()
            .all(|r| r.onlink && r.oif == Some(9) && r.protocol == RTPROT_WEFT));
        assert_eq!(far.routes[0].gateway, Some("10.244.2.0".parse().unwrap()));
        assert_eq!(far.neighbours.len(), 2);
        assert_eq!(far.fdb[0].dst, Some("192.168.78.11".parse().unwrap()));
        assert!(far.problem.is_none());
    }

    #[test]
    fn vxlan_without_mac_is_a_named_problem() {
        let u = underlay();
        let local = LocalView {
            backend: BackendKind::Vxlan,
            underlay: &u,
            vtep_index: Some(9),
        };
        let p = plan_peer(&local, &peer("192.168.77.12", None));
        assert!(p.routes.is_empty());
        assert!(p.problem.unwrap().contains("VTEP MAC"));
    }

    #[test]
    fn host_gw_to_an_off_link_peer_is_refused() {
        let u = underlay();
        let local = LocalView {
            backend: BackendKind::HostGw,
            underlay: &u,
            vtep_index: None,
        };
        let p = plan_peer(&local, &peer("192.168.78.11", None));
        assert!(p.routes.is_empty());
        assert!(p
            .problem
            .unwrap()
            .contains("not on this node's underlay subnet"));
        let p = plan_peer(&local, &peer("192.168.77.12", None));
        assert_eq!(p.routes.len(), 1);
        assert!(p.problem.unwrap().contains("families differ"));
    }
}
