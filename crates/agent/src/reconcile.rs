//! One reconcile pass: compare the kernel's routes, neighbours and FDB entries that weft owns
//! with what the peer plans want, and apply the difference in netlink batches.
//!
//! Ownership: routes in the main table with protocol [`RTPROT_WEFT`], and permanent
//! neighbour/FDB entries on weft's VTEP. Nothing else is ever deleted. Order matters for a
//! packet in flight: FDB and neighbour before the route that uses them; a route goes before
//! the entries it used.

use crate::backend::{PathKind, PeerPlan, RTPROT_WEFT};
use ipnet::IpNet;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use weft_netops::netlink::NUD_PERMANENT;
use weft_netops::{FdbEntry, Neighbour, Netlink, Request, Route};

#[derive(Debug, Clone, Default, Serialize)]
pub struct ObjectCounts {
    pub routes: usize,
    pub neighbours: usize,
    pub fdb: usize,
}

#[derive(Debug, Clone, Serialize)]
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

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub desired: ObjectCounts,
    pub programmed: ObjectCounts,
    /// Requests sent (adds, replaces, deletes).
    pub changes: usize,
    pub stale_removed: usize,
    pub errors: Vec<String>,
    pub peers: Vec<PeerStatus>,
}

fn route_matches(have: &Route, want: &Route) -> bool {
    have.gateway == want.gateway && have.oif == want.oif && have.onlink == want.onlink
}

/// Reconciles the kernel with `plans`. `vtep` is the VTEP's ifindex, if there is one.
pub fn reconcile(nl: &mut Netlink, plans: &[PeerPlan], vtep: Option<u32>) -> Report {
    let mut report = Report::default();
    let want_routes: Vec<&Route> = plans.iter().flat_map(|p| &p.routes).collect();
    let want_neigh: Vec<&Neighbour> = plans.iter().flat_map(|p| &p.neighbours).collect();
    let want_fdb: Vec<&FdbEntry> = plans.iter().flat_map(|p| &p.fdb).collect();
    report.desired = ObjectCounts {
        routes: want_routes.len(),
        neighbours: want_neigh.len(),
        fdb: want_fdb.len(),
    };

    let have_routes: HashMap<IpNet, Route> = match nl.list_routes(None, Some(254)) {
        Ok(rs) => rs
            .into_iter()
            .filter(|r| r.protocol == RTPROT_WEFT)
            .map(|r| (r.dst, r))
            .collect(),
        Err(e) => {
            report.errors.push(format!("list routes: {e}"));
            return report;
        }
    };
    let (have_neigh, have_fdb) = match vtep {
        Some(ix) => {
            let n = nl.list_neighbours(Some(ix)).unwrap_or_else(|e| {
                report.errors.push(format!("list neighbours: {e}"));
                Vec::new()
            });
            let f = nl.list_fdb(ix).unwrap_or_else(|e| {
                report.errors.push(format!("list fdb: {e}"));
                Vec::new()
            });
            (n, f)
        }
        None => (Vec::new(), Vec::new()),
    };
    let have_neigh: HashMap<IpAddr, &Neighbour> = have_neigh
        .iter()
        .filter(|n| n.state & NUD_PERMANENT != 0)
        .map(|n| (n.ip, n))
        .collect();
    let have_fdb: Vec<&FdbEntry> = have_fdb
        .iter()
        .filter(|f| f.dst.is_some() && f.mac != [0; 6])
        .collect();

    // What to change.
    let mut route_dels = Vec::new();
    let wanted_dsts: HashSet<IpNet> = want_routes.iter().map(|r| r.dst).collect();
    for (dst, r) in &have_routes {
        if !wanted_dsts.contains(dst) {
            route_dels.push(Request::DelRoute(r.clone()));
        }
    }
    let mut l2_adds = Vec::new();
    let have_fdb_keys: HashSet<([u8; 6], Option<IpAddr>)> =
        have_fdb.iter().map(|h| (h.mac, h.dst)).collect();
    let want_fdb_keys: HashSet<([u8; 6], Option<IpAddr>)> =
        want_fdb.iter().map(|w| (w.mac, w.dst)).collect();
    for f in &want_fdb {
        if !have_fdb_keys.contains(&(f.mac, f.dst)) {
            l2_adds.push(Request::ReplaceFdb((*f).clone()));
        }
    }
    for n in &want_neigh {
        if have_neigh.get(&n.ip).map(|h| h.mac) != Some(n.mac) {
            l2_adds.push(Request::ReplaceNeighbour((*n).clone()));
        }
    }
    let mut route_adds = Vec::new();
    for r in &want_routes {
        if !have_routes.get(&r.dst).is_some_and(|h| route_matches(h, r)) {
            route_adds.push(Request::ReplaceRoute((*r).clone()));
        }
    }
    let mut l2_dels = Vec::new();
    let wanted_ips: HashSet<IpAddr> = want_neigh.iter().map(|n| n.ip).collect();
    for (ip, n) in &have_neigh {
        if !wanted_ips.contains(ip) {
            l2_dels.push(Request::DelNeighbour((*n).clone()));
        }
    }
    for f in &have_fdb {
        if !want_fdb_keys.contains(&(f.mac, f.dst)) {
            l2_dels.push(Request::DelFdb((*f).clone()));
        }
    }
    report.stale_removed = route_dels.len() + l2_dels.len();

    // Apply, phase by phase, remembering what failed.
    let mut failed: HashSet<String> = HashSet::new();
    for phase in [route_dels, l2_adds, route_adds, l2_dels] {
        if phase.is_empty() {
            continue;
        }
        report.changes += phase.len();
        for (req, res) in phase.iter().zip(nl.batch(&phase)) {
            if let Err(e) = res {
                // Deleting what is already gone is success.
                if matches!(
                    req,
                    Request::DelRoute(_) | Request::DelNeighbour(_) | Request::DelFdb(_)
                ) && e.is_not_found()
                {
                    continue;
                }
                failed.insert(req.describe());
                report.errors.push(e.to_string());
            }
        }
    }

    let ok = |req: Request| failed.is_empty() || !failed.contains(&req.describe());
    for p in plans {
        let routes_ok = p
            .routes
            .iter()
            .all(|r| ok(Request::ReplaceRoute(r.clone())));
        let neigh_ok = p
            .neighbours
            .iter()
            .all(|n| ok(Request::ReplaceNeighbour(n.clone())));
        let fdb_ok = p.fdb.iter().all(|f| ok(Request::ReplaceFdb(f.clone())));
        if routes_ok {
            report.programmed.routes += p.routes.len();
        }
        if neigh_ok {
            report.programmed.neighbours += p.neighbours.len();
        }
        if fdb_ok {
            report.programmed.fdb += p.fdb.len();
        }
        report.peers.push(PeerStatus {
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
    report
}

/// Removes every route weft owns (for `weftd cleanup`).
pub fn remove_all_routes(nl: &mut Netlink) -> Result<usize, String> {
    let routes: Vec<Request> = nl
        .list_routes(None, Some(254))
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|r| r.protocol == RTPROT_WEFT)
        .map(Request::DelRoute)
        .collect();
    let n = routes.len();
    for res in nl.batch(&routes) {
        res.map_err(|e| e.to_string())?;
    }
    Ok(n)
}
