//! Peer routing state: what weft owns in the kernel ([`Dataplane`]), what the peer plans want
//! (also a [`Dataplane`]), one pure [`diff`] from the one to the other as typed netlink
//! requests in a safe order, and [`apply`], which sends them and keeps the record of what is
//! programmed.
//!
//! Ownership: routes in the main table with protocol [`RTPROT_WEFT`], and permanent
//! neighbour/FDB entries on weft's VTEP. Nothing else is ever deleted. Order matters for a
//! packet in flight: FDB and neighbour before the route that uses them; a route goes before
//! the entries it used.
//!
//! Two ways in (felix's way): on a datastore event the diff runs against the record of what
//! the last apply programmed, so the work is the change and no kernel dump; on the periodic
//! resync it runs against the kernel as read, which repairs anything done behind weft's back.
use crate::backend::{PathKind, PeerPlan, RTPROT_WEFT};
use crate::error::{kernel, Result};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::IpAddr;
use weft_netops::netlink::NUD_PERMANENT;
use weft_netops::{FdbEntry, Neighbour, Netlink, Request, Route};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ObjectCounts {
    pub routes: usize,
    pub neighbours: usize,
    pub fdb: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStatus {
    pub name: String,
    pub underlay_ip: IpAddr,
    pub pod_cidrs: Vec<IpNet>,
    pub path: PathKind,
    pub routes_programmed: bool,
    pub neighbours_programmed: bool,
    pub fdb_programmed: bool,
    pub problem: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub desired: ObjectCounts,
    pub programmed: ObjectCounts,
    /// Requests sent (adds, replaces, deletes).
    pub changes: usize,
    pub stale_removed: usize,
    pub errors: Vec<String>,
    pub peers: Vec<PeerStatus>,
}

/// What weft owns (or wants) in the kernel for its peers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dataplane {
    pub routes: HashMap<IpNet, Route>,
    pub neighbours: HashMap<IpAddr, Neighbour>,
    pub fdb: HashMap<FdbKey, FdbEntry>,
}

/// An FDB entry's identity: (MAC, remote underlay address).
pub type FdbKey = ([u8; 6], Option<IpAddr>);

impl Dataplane {
    /// What `plans` want.
    pub fn desired(plans: &[PeerPlan]) -> Dataplane {
        let mut d = Dataplane::default();
        for p in plans {
            d.routes.extend(p.routes.iter().map(|r| (r.dst, r.clone())));
            d.neighbours
                .extend(p.neighbours.iter().map(|n| (n.ip, n.clone())));
            d.fdb
                .extend(p.fdb.iter().map(|f| ((f.mac, f.dst), f.clone())));
        }
        d
    }

    /// What weft owns in the kernel now. `vtep` is the VTEP's ifindex, if there is one.
    pub fn read(nl: &mut Netlink, vtep: Option<u32>) -> Result<Dataplane> {
        let routes = nl
            .list_routes(None, Some(254))
            .map_err(kernel("list routes"))?
            .into_iter()
            .filter(|r| r.protocol == RTPROT_WEFT)
            .map(|r| (r.dst, r))
            .collect();
        let (mut neighbours, mut fdb) = (HashMap::new(), HashMap::new());
        if let Some(ix) = vtep {
            neighbours = nl
                .list_neighbours(Some(ix))
                .map_err(kernel("list neighbours"))?
                .into_iter()
                .filter(|n| n.state & NUD_PERMANENT != 0)
                .map(|n| (n.ip, n))
                .collect();
            fdb = nl
                .list_fdb(ix)
                .map_err(kernel("list fdb"))?
                .into_iter()
                .filter(|f| f.dst.is_some() && f.mac != [0; 6])
                .map(|f| ((f.mac, f.dst), f))
                .collect();
        }
        Ok(Dataplane {
            routes,
            neighbours,
            fdb,
        })
    }

    fn has_route(&self, want: &Route) -> bool {
        self.routes.get(&want.dst).is_some_and(|have| {
            have.gateway == want.gateway && have.oif == want.oif && have.onlink == want.onlink
        })
    }

    fn has_neighbour(&self, want: &Neighbour) -> bool {
        self.neighbours
            .get(&want.ip)
            .is_some_and(|have| have.mac == want.mac && have.ifindex == want.ifindex)
    }

    fn has_fdb(&self, want: &FdbEntry) -> bool {
        self.fdb
            .get(&(want.mac, want.dst))
            .is_some_and(|have| have.ifindex == want.ifindex)
    }

    /// Records that `req` took effect.
    fn record(&mut self, req: &Request) {
        match req {
            Request::ReplaceRoute(r) | Request::AddRoute(r) => {
                self.routes.insert(r.dst, r.clone());
            }
            Request::DelRoute(r) => {
                self.routes.remove(&r.dst);
            }
            Request::ReplaceNeighbour(n) => {
                self.neighbours.insert(n.ip, n.clone());
            }
            Request::DelNeighbour(n) => {
                self.neighbours.remove(&n.ip);
            }
            Request::ReplaceFdb(f) | Request::AppendFdb(f) => {
                self.fdb.insert((f.mac, f.dst), f.clone());
            }
            Request::DelFdb(f) => {
                self.fdb.remove(&(f.mac, f.dst));
            }
            Request::AddAddress { .. }
            | Request::ReplaceAddress { .. }
            | Request::DelAddress { .. } => {}
        }
    }
}

/// The requests that turn `have` into `want`, as phases to send one after the other: stale
/// routes, then FDB and neighbours, then routes, then stale FDB and neighbours. Pure.
pub fn diff(have: &Dataplane, want: &Dataplane) -> [Vec<Request>; 4] {
    let route_dels = have
        .routes
        .values()
        .filter(|r| !want.routes.contains_key(&r.dst))
        .map(|r| Request::DelRoute(r.clone()))
        .collect();
    let mut l2_adds: Vec<Request> = want
        .fdb
        .values()
        .filter(|f| !have.has_fdb(f))
        .map(|f| Request::ReplaceFdb(f.clone()))
        .collect();
    l2_adds.extend(
        want.neighbours
            .values()
            .filter(|n| !have.has_neighbour(n))
            .map(|n| Request::ReplaceNeighbour(n.clone())),
    );
    let route_adds = want
        .routes
        .values()
        .filter(|r| !have.has_route(r))
        .map(|r| Request::ReplaceRoute(r.clone()))
        .collect();
    let mut l2_dels: Vec<Request> = have
        .neighbours
        .values()
        .filter(|n| !want.neighbours.contains_key(&n.ip))
        .map(|n| Request::DelNeighbour(n.clone()))
        .collect();
    l2_dels.extend(
        have.fdb
            .iter()
            .filter(|(k, _)| !want.fdb.contains_key(k))
            .map(|(_, f)| Request::DelFdb(f.clone())),
    );
    [route_dels, l2_adds, route_adds, l2_dels]
}

/// Records the outcome of sent requests in `programmed`: what succeeded (or, for a delete,
/// found nothing to delete) took effect; what failed did not, so the next diff asks again.
/// Returns the errors. Pure.
pub fn record_outcome(
    programmed: &mut Dataplane,
    sent: &[Request],
    results: Vec<Result<(), weft_netops::Error>>,
) -> Vec<String> {
    let mut errors = Vec::new();
    for (req, res) in sent.iter().zip(results) {
        match res {
            Ok(()) => programmed.record(req),
            Err(e)
                if matches!(
                    req,
                    Request::DelRoute(_) | Request::DelNeighbour(_) | Request::DelFdb(_)
                ) && e.is_not_found() =>
            {
                programmed.record(req)
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    errors
}

/// Sends the phases of [`diff`] and updates `programmed`. Returns (requests sent, stale
/// objects removed, errors).
pub fn apply(
    nl: &mut Netlink,
    phases: [Vec<Request>; 4],
    programmed: &mut Dataplane,
) -> (usize, usize, Vec<String>) {
    let stale = phases[0].len() + phases[3].len();
    let (mut sent, mut errors) = (0, Vec::new());
    for phase in phases {
        if phase.is_empty() {
            continue;
        }
        sent += phase.len();
        let results = nl.batch(&phase);
        errors.extend(record_outcome(programmed, &phase, results));
    }
    (sent, stale, errors)
}

/// Reconciles peers: the diff between `programmed` (the kernel as read, or the record of the
/// last apply) and `plans`, applied; `programmed` then holds what is in the kernel.
pub fn reconcile(nl: &mut Netlink, plans: &[PeerPlan], programmed: &mut Dataplane) -> Report {
    let want = Dataplane::desired(plans);
    let (changes, stale_removed, errors) = apply(nl, diff(programmed, &want), programmed);
    report(plans, programmed, changes, stale_removed, errors)
}

/// The status of each peer: programmed when every one of its objects is.
pub fn report(
    plans: &[PeerPlan],
    programmed: &Dataplane,
    changes: usize,
    stale_removed: usize,
    errors: Vec<String>,
) -> Report {
    let mut r = Report {
        changes,
        stale_removed,
        errors,
        ..Report::default()
    };
    for p in plans {
        let routes_ok = p.routes.iter().all(|x| programmed.has_route(x));
        let neigh_ok = p.neighbours.iter().all(|x| programmed.has_neighbour(x));
        let fdb_ok = p.fdb.iter().all(|x| programmed.has_fdb(x));
        r.desired.routes += p.routes.len();
        r.desired.neighbours += p.neighbours.len();
        r.desired.fdb += p.fdb.len();
        r.programmed.routes += p.routes.iter().filter(|x| programmed.has_route(x)).count();
        r.programmed.neighbours += p
            .neighbours
            .iter()
            .filter(|x| programmed.has_neighbour(x))
            .count();
        r.programmed.fdb += p.fdb.iter().filter(|x| programmed.has_fdb(x)).count();
        r.peers.push(PeerStatus {
            name: p.peer.name.clone(),
            underlay_ip: p.peer.underlay_ip,
            pod_cidrs: p.peer.pod_cidrs.clone(),
            path: p.path,
            routes_programmed: routes_ok && !p.routes.is_empty(),
            neighbours_programmed: neigh_ok
                && (p.path == PathKind::HostGw || !p.neighbours.is_empty()),
            fdb_programmed: fdb_ok && (p.path == PathKind::HostGw || !p.fdb.is_empty()),
            problem: p.problem.clone(),
        });
    }
    r
}

/// Removes every route weft owns (for `weftd cleanup`).
pub fn remove_all_routes(nl: &mut Netlink) -> Result<usize> {
    let routes: Vec<Request> = nl
        .list_routes(None, Some(254))
        .map_err(kernel("list routes"))?
        .into_iter()
        .filter(|r| r.protocol == RTPROT_WEFT)
        .map(Request::DelRoute)
        .collect();
    let n = routes.len();
    for (req, res) in routes.iter().zip(nl.batch(&routes)) {
        res.map_err(kernel(req.describe()))?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    //! The diff, table-driven, with neither root nor a kernel.
    use super::*;
    use std::io;

    const VTEP: u32 = 7;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn host_gw(cidr: &str, via: &str) -> Route {
        Route::via(net(cidr), ip(via)).with_protocol(RTPROT_WEFT)
    }
    fn vxlan_route(cidr: &str) -> Route {
        let vtep_addr = net(cidr).network();
        Route::onlink(net(cidr), vtep_addr, VTEP).with_protocol(RTPROT_WEFT)
    }
    fn neigh(cidr: &str, mac: u8) -> Neighbour {
        Neighbour::permanent(VTEP, net(cidr).network(), [2, 0, 0, 0, 0, mac])
    }
    fn fdb(mac: u8, underlay: &str) -> FdbEntry {
        FdbEntry::new(VTEP, [2, 0, 0, 0, 0, mac], Some(ip(underlay)))
    }
    fn plane(routes: &[Route], neighbours: &[Neighbour], fdbs: &[FdbEntry]) -> Dataplane {
        Dataplane {
            routes: routes.iter().map(|r| (r.dst, r.clone())).collect(),
            neighbours: neighbours.iter().map(|n| (n.ip, n.clone())).collect(),
            fdb: fdbs.iter().map(|f| ((f.mac, f.dst), f.clone())).collect(),
        }
    }
    /// The diff as (phase, description) pairs, sorted within each phase.
    fn described(phases: [Vec<Request>; 4]) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        for (i, phase) in phases.iter().enumerate() {
            let mut d: Vec<String> = phase.iter().map(|r| r.describe()).collect();
            d.sort();
            out.extend(d.into_iter().map(|x| (i, x)));
        }
        out
    }

    #[test]
    fn nothing_to_do_when_in_place() {
        let want = plane(
            &[
                host_gw("10.244.2.0/24", "192.168.0.2"),
                vxlan_route("10.244.3.0/24"),
            ],
            &[neigh("10.244.3.0/24", 3)],
            &[fdb(3, "192.168.1.3")],
        );
        assert!(described(diff(&want.clone(), &want)).is_empty());
    }

    #[test]
    fn table() {
        let a = host_gw("10.244.2.0/24", "192.168.0.2");
        let b_vx = vxlan_route("10.244.3.0/24");
        struct Case {
            name: &'static str,
            have: Dataplane,
            want: Dataplane,
            /// Requests per phase: [route dels, l2 adds, route adds, l2 dels].
            counts: [usize; 4],
        }
        let cases = [
            Case {
                name: "peer added (vxlan): FDB and neighbour before its route",
                have: plane(std::slice::from_ref(&a), &[], &[]),
                want: plane(
                    &[a.clone(), b_vx.clone()],
                    &[neigh("10.244.3.0/24", 3)],
                    &[fdb(3, "192.168.1.3")],
                ),
                counts: [0, 2, 1, 0],
            },
            Case {
                name: "peer removed: its route first, then its L2 entries",
                have: plane(
                    &[a.clone(), b_vx.clone()],
                    &[neigh("10.244.3.0/24", 3)],
                    &[fdb(3, "192.168.1.3")],
                ),
                want: plane(std::slice::from_ref(&a), &[], &[]),
                counts: [1, 0, 0, 2],
            },
            Case {
                name: "peer's pod CIDR changed (Node re-created): old route out, new one in",
                have: plane(std::slice::from_ref(&a), &[], &[]),
                want: plane(&[host_gw("10.244.9.0/24", "192.168.0.2")], &[], &[]),
                counts: [1, 0, 1, 0],
            },
            Case {
                name: "peer's underlay address changed: route replaced in place",
                have: plane(std::slice::from_ref(&a), &[], &[]),
                want: plane(&[host_gw("10.244.2.0/24", "192.168.0.22")], &[], &[]),
                counts: [0, 0, 1, 0],
            },
            Case {
                name: "path host-gw -> vxlan: L2 first, route replaced, nothing deleted",
                have: plane(&[host_gw("10.244.3.0/24", "192.168.0.3")], &[], &[]),
                want: plane(
                    std::slice::from_ref(&b_vx),
                    &[neigh("10.244.3.0/24", 3)],
                    &[fdb(3, "192.168.1.3")],
                ),
                counts: [0, 2, 1, 0],
            },
            Case {
                name: "VTEP MAC of a peer changed: neighbour replaced, old FDB entry removed",
                have: plane(
                    std::slice::from_ref(&b_vx),
                    &[neigh("10.244.3.0/24", 3)],
                    &[fdb(3, "192.168.1.3")],
                ),
                want: plane(
                    std::slice::from_ref(&b_vx),
                    &[neigh("10.244.3.0/24", 4)],
                    &[fdb(4, "192.168.1.3")],
                ),
                counts: [0, 2, 0, 1],
            },
            Case {
                name: "stale objects of each kind (left by a peer gone while weftd was down)",
                have: plane(
                    &[a.clone(), b_vx.clone()],
                    &[neigh("10.244.3.0/24", 3)],
                    &[fdb(3, "192.168.1.3")],
                ),
                want: Dataplane::default(),
                counts: [2, 0, 0, 2],
            },
        ];
        for c in cases {
            let phases = diff(&c.have, &c.want);
            let counts = phases.each_ref().map(Vec::len);
            assert_eq!(counts, c.counts, "{}: {:?}", c.name, described(phases));
            // Applying everything yields exactly the desired state.
            let mut after = c.have.clone();
            for phase in &phases {
                let results = phase.iter().map(|_| Ok(())).collect();
                assert!(record_outcome(&mut after, phase, results).is_empty());
            }
            assert_eq!(after, c.want, "{}", c.name);
        }
    }

    #[test]
    fn a_partially_failed_apply_is_retried_and_only_what_failed() {
        let want = plane(
            &[
                host_gw("10.244.2.0/24", "192.168.0.2"),
                host_gw("10.244.4.0/24", "192.168.0.4"),
            ],
            &[],
            &[],
        );
        let mut programmed = Dataplane::default();
        let [_, _, adds, _] = diff(&programmed, &want);
        assert_eq!(adds.len(), 2);
        let results = adds
            .iter()
            .map(|r| match r {
                Request::ReplaceRoute(r) if r.dst == net("10.244.4.0/24") => {
                    Err(weft_netops::Error::Netlink {
                        op: "replace route".into(),
                        source: io::Error::from_raw_os_error(libc::ENETUNREACH),
                    })
                }
                _ => Ok(()),
            })
            .collect();
        let errors = record_outcome(&mut programmed, &adds, results);
        assert_eq!(errors.len(), 1);
        // The next pass asks for exactly the one that failed.
        let retry = described(diff(&programmed, &want));
        assert_eq!(retry.len(), 1, "{retry:?}");
        assert!(retry[0].1.contains("10.244.4.0/24"), "{retry:?}");
    }

    #[test]
    fn deleting_what_is_already_gone_counts_as_done() {
        let mut programmed = plane(&[host_gw("10.244.2.0/24", "192.168.0.2")], &[], &[]);
        let [dels, ..] = diff(&programmed, &Dataplane::default());
        let results = vec![Err(weft_netops::Error::Netlink {
            op: "delete route".into(),
            source: io::Error::from_raw_os_error(libc::ESRCH),
        })];
        assert!(record_outcome(&mut programmed, &dels, results).is_empty());
        assert_eq!(programmed, Dataplane::default());
    }
}
