//! `weftd trace SRC DST`: the path a packet takes on this node right now, hop by hop, from
//! the kernel's own answers: the IPAM store and link aliases (which pod, which host veth), the
//! routing decision (`ip route get DST from SRC iif BRIDGE`), the VTEP's neighbour and FDB
//! entries, and the firewall driver's live view of weft's rules. A node sees only its own
//! kernel: when the packet leaves for a peer, the trace says which one (`next_node`), and
//! `weftd trace --arriving` on that peer (or `weft-lab trace`, which does both) continues.
//! A destination that is a Service (ClusterIP or NodePort) is first followed through
//! kube-proxy's DNAT as the kernel's nat table holds it ([`crate::kubeproxy`]), then the path
//! to each endpoint.

use crate::backend::RTPROT_WEFT;
use crate::cniconf::NETWORK_NAME;
use crate::kubeproxy::{self, KubeProxyRules, ServiceNat};
use crate::vxlan;
use ipnet::IpNet;
use serde::Serialize;
use std::net::IpAddr;
use std::path::PathBuf;
use weft_firewall::{DriverKind, IptablesVariant, Policy};
use weft_netops::netlink::{format_mac, Link, RTN_LOCAL};
use weft_netops::Netlink;

/// What the trace needs to know about this node besides the kernel.
#[derive(Debug, Clone)]
pub struct TraceContext {
    pub bridge: String,
    pub vxlan_vni: u32,
    pub ipam_data_dir: PathBuf,
    pub cluster_cidrs: Vec<IpNet>,
    /// Firewall driver name as weftd reports it ("nftables", "iptables-nft", ...), if any.
    pub firewall: Option<String>,
    /// Peer names by underlay IP (from the agent's status), for readable output.
    pub peers: Vec<(String, IpAddr)>,
    /// kube-proxy's rules (iptables mode), when this node has them.
    pub kube_proxy: Option<KubeProxyRules>,
    /// The destination (protocol, port), when given: the Service port to follow. Without
    /// it, every port kube-proxy has for the destination.
    pub port: Option<(String, u16)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Hop {
    pub step: String,
    pub detail: String,
    pub ok: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Trace {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub hops: Vec<Hop>,
    /// The underlay address of the node the packet goes to next, if it leaves this node.
    pub next_node: Option<IpAddr>,
    pub ok: bool,
    /// DST is a Service: what kube-proxy's rules do with the packet.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceNat>,
    /// DST is a Service: the path to each endpoint it is DNATed to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Trace>,
}

impl Trace {
    fn hop(&mut self, step: &str, detail: String, ok: bool) {
        self.ok &= ok;
        self.hops.push(Hop {
            step: step.into(),
            detail,
            ok,
        });
    }

    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let _ = writeln!(o, "trace {} -> {}", self.src, self.dst);
        self.render_hops(&mut o, "");
        let _ = writeln!(
            o,
            "{}",
            if self.ok {
                "path complete"
            } else {
                "PATH BROKEN (see !)"
            }
        );
        o
    }

    fn render_hops(&self, o: &mut String, indent: &str) {
        use std::fmt::Write;
        for (i, h) in self.hops.iter().enumerate() {
            let mark = if h.ok { " " } else { "!" };
            let _ = writeln!(o, "{indent}{mark}{:>2}. {:<14} {}", i + 1, h.step, h.detail);
        }
        for e in &self.endpoints {
            let _ = writeln!(o, "{indent}   to endpoint {}:", e.dst);
            e.render_hops(o, &format!("{indent}      "));
        }
    }
}

/// The pod (container id, ifname) holding `ip` in this node's IPAM store, if any.
fn local_pod(ctx: &TraceContext, ip: IpAddr) -> Option<weft_ipam::Attachment> {
    let store = weft_ipam::Store::open(&ctx.ipam_data_dir, NETWORK_NAME).ok()?;
    store
        .list()
        .ok()?
        .into_iter()
        .find(|(held, _)| *held == ip)
        .map(|(_, who)| who)
}

fn host_veth<'a>(links: &'a [Link], who: &weft_ipam::Attachment) -> Option<&'a Link> {
    let alias = weft_netops::names::host_alias(NETWORK_NAME, &who.container_id, &who.ifname);
    links
        .iter()
        .find(|l| l.alias.as_deref() == Some(alias.as_str()))
}

fn in_cluster(ctx: &TraceContext, ip: IpAddr) -> Option<IpNet> {
    ctx.cluster_cidrs.iter().find(|c| c.contains(&ip)).copied()
}

fn peer_name(ctx: &TraceContext, ip: IpAddr) -> String {
    ctx.peers
        .iter()
        .find(|(_, u)| *u == ip)
        .map(|(n, _)| format!("node {n} ({ip})"))
        .unwrap_or_else(|| format!("node {ip}"))
}

/// Traces `src -> dst` on this node. `arriving`: the packet comes in from the underlay (the
/// second half of a cross-node trace) rather than from a local pod or the node itself.
/// A Service destination is followed through kube-proxy's DNAT to each endpoint.
pub fn trace(
    nl: &mut Netlink,
    ctx: &TraceContext,
    src: IpAddr,
    dst: IpAddr,
    arriving: bool,
) -> Trace {
    // Pod addresses are never Services: only other destinations are looked up.
    if let Some(rules) = ctx
        .kube_proxy
        .as_ref()
        .filter(|_| in_cluster(ctx, dst).is_none())
    {
        if let Some(t) = through_service(nl, ctx, rules, src, dst, arriving) {
            return t;
        }
    }
    path(nl, ctx, src, dst, arriving)
}

fn empty_trace(src: IpAddr, dst: IpAddr) -> Trace {
    Trace {
        src,
        dst,
        hops: Vec::new(),
        next_node: None,
        ok: true,
        services: Vec::new(),
        endpoints: Vec::new(),
    }
}

/// `dst` as a Service: kube-proxy's DNAT (nat table, PREROUTING/OUTPUT come before routing),
/// then [`path`] to each endpoint. None when no Service rule takes the packet.
fn through_service(
    nl: &mut Netlink,
    ctx: &TraceContext,
    rules: &KubeProxyRules,
    src: IpAddr,
    dst: IpAddr,
    arriving: bool,
) -> Option<Trace> {
    let mut is_local = |ip: IpAddr| nl.route_get(ip).is_ok_and(|r| r.kind == RTN_LOCAL);
    let dst_local = is_local(dst);
    let src_local = !arriving && local_pod(ctx, src).is_none() && is_local(src);
    let ports = match &ctx.port {
        Some((proto, port)) => vec![(proto.clone(), *port)],
        None => kubeproxy::service_ports(rules, dst, dst_local),
    };
    let nats: Vec<ServiceNat> = ports
        .into_iter()
        .filter_map(|(proto, dport)| {
            let p = kubeproxy::Packet {
                src,
                dst,
                proto,
                dport,
                src_local,
                dst_local,
            };
            kubeproxy::service_nat(rules, &p)
        })
        .collect();
    if nats.is_empty() {
        return None;
    }
    let mut t = empty_trace(src, dst);
    for s in &nats {
        let what = format!("{dst}:{}/{} = {}", s.port, s.proto, s.service);
        if s.endpoints.is_empty() {
            let why = s.rejected.as_deref().unwrap_or("no endpoint");
            t.hop(
                "service",
                format!("{what}: kube-proxy ({}) refuses it: {why}", rules.backend),
                false,
            );
            continue;
        }
        t.hop(
            "service",
            format!(
                "{what}: kube-proxy ({}) DNATs new connections to {} endpoint(s)",
                rules.backend,
                s.endpoints.len()
            ),
            true,
        );
        for e in &s.endpoints {
            let source = if e.masquerade {
                "masqueraded by kube-proxy (KUBE-MARK-MASQ): the endpoint sees this node's address"
            } else {
                "source kept"
            };
            t.hop(
                "endpoint",
                format!(
                    "{}:{} ({:.1}%) via {}; {source}",
                    e.ip,
                    e.port,
                    e.probability * 100.0,
                    e.chains.join(" -> ")
                ),
                true,
            );
        }
    }
    let mut seen = Vec::new();
    for e in nats.iter().flat_map(|s| &s.endpoints) {
        if !seen.contains(&e.ip) {
            seen.push(e.ip);
            let sub = path(nl, ctx, src, e.ip, arriving);
            t.ok &= sub.ok;
            t.endpoints.push(sub);
        }
    }
    t.services = nats;
    Some(t)
}

/// The path of `src -> dst` through this node's routes, bridge, VXLAN and weft's rules.
fn path(nl: &mut Netlink, ctx: &TraceContext, src: IpAddr, dst: IpAddr, arriving: bool) -> Trace {
    let mut t = empty_trace(src, dst);
    let links = match nl.list_links() {
        Ok(l) => l,
        Err(e) => {
            t.hop("kernel", format!("cannot list links: {e}"), false);
            return t;
        }
    };
    let bridge = links.iter().find(|l| l.name == ctx.bridge);
    let vtep_name = vxlan::device_name(ctx.vxlan_vni);
    let vtep = links.iter().find(|l| l.name == vtep_name);
    let name_of = |index: u32| {
        links
            .iter()
            .find(|l| l.index == index)
            .map(|l| l.name.clone())
            .unwrap_or_else(|| format!("ifindex {index}"))
    };

    // 1. Where the packet starts on this node.
    let mut iif = None;
    if arriving {
        // The way back to the source is the way it came (weft's routes are symmetric): the
        // VTEP for a VXLAN peer's pod, the underlay for a host-gw peer or the world.
        let via = nl
            .route_get(src)
            .ok()
            .and_then(|r| r.oif)
            .map(name_of)
            .unwrap_or_else(|| "the underlay".into());
        t.hop("arrives", format!("from {src} (over {via})"), true);
    } else if let Some(who) = local_pod(ctx, src) {
        t.hop(
            "source pod",
            format!(
                "{src} = container {} {} (IPAM reservation)",
                who.container_id, who.ifname
            ),
            true,
        );
        match (host_veth(&links, &who), bridge) {
            (Some(v), Some(b)) if v.master == Some(b.index) && v.up => {
                t.hop(
                    "host veth",
                    format!("{} up, on bridge {}", v.name, b.name),
                    true,
                );
                iif = Some(b.index);
            }
            (Some(v), Some(b)) => t.hop(
                "host veth",
                format!(
                    "{} is {} and {} bridge {}",
                    v.name,
                    if v.up { "up" } else { "DOWN" },
                    if v.master == Some(b.index) {
                        "on"
                    } else {
                        "NOT on"
                    },
                    b.name
                ),
                false,
            ),
            (None, _) => t.hop(
                "host veth",
                "no host veth carries this pod's alias: pod network gone (run CNI CHECK)".into(),
                false,
            ),
            (_, None) => t.hop(
                "bridge",
                format!("bridge {} does not exist", ctx.bridge),
                false,
            ),
        }
    } else {
        t.hop("source", format!("{src} (this node)"), true);
    }
    if !t.ok {
        return t;
    }

    // 2. The kernel's routing decision.
    let route = match nl.route_get_from(dst, if iif.is_some() { Some(src) } else { None }, iif) {
        Ok(r) => r,
        Err(e) => {
            t.hop("route", format!("no route to {dst}: {e}"), false);
            return t;
        }
    };
    if route.kind == RTN_LOCAL {
        t.hop(
            "route",
            format!("{dst} is this node's own address: delivered locally"),
            true,
        );
        return t;
    }
    let oif = route.oif.unwrap_or(0);
    let out_name = name_of(oif);
    let via = route
        .gateway
        .map(|g| format!(" via {g}"))
        .unwrap_or_default();
    let dst_cluster = in_cluster(ctx, dst);
    // `route get` answers do not carry the route's protocol: find the table entry it used.
    let weft_route = nl
        .list_routes(None, Some(254))
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.protocol == RTPROT_WEFT && r.dst.contains(&dst))
        .max_by_key(|r| r.dst.prefix_len());

    if bridge.is_some_and(|b| b.index == oif) {
        t.hop(
            "route",
            format!("{dst} dev {out_name}: this node's pod network"),
            true,
        );
        match local_pod(ctx, dst) {
            Some(who) => match host_veth(&links, &who) {
                Some(v) => {
                    t.hop(
                        "bridge",
                        format!(
                            "{out_name} -> host veth {}{}",
                            v.name,
                            if v.up { "" } else { " (DOWN)" }
                        ),
                        v.up,
                    );
                    t.hop(
                        "dest pod",
                        format!("{dst} = container {} {}", who.container_id, who.ifname),
                        true,
                    );
                }
                None => t.hop(
                    "bridge",
                    format!(
                        "{dst} is reserved by {} but its host veth is gone",
                        who.container_id
                    ),
                    false,
                ),
            },
            None => t.hop(
                "dest pod",
                format!("no pod on this node holds {dst}"),
                false,
            ),
        }
    } else if vtep.is_some_and(|v| v.index == oif) {
        let vtep = vtep.expect("checked");
        t.hop(
            "route",
            format!("{dst}{via} dev {out_name} onlink (weft vxlan route)"),
            true,
        );
        let gw = route.gateway;
        let neigh = nl
            .list_neighbours(Some(vtep.index))
            .unwrap_or_default()
            .into_iter()
            .find(|n| Some(n.ip) == gw);
        let Some(mac) = neigh.and_then(|n| n.mac) else {
            t.hop(
                "neighbour",
                format!(
                    "no neighbour entry for VTEP {} on {}: the agent has not programmed this peer",
                    gw.map(|g| g.to_string()).unwrap_or_default(),
                    vtep.name
                ),
                false,
            );
            return t;
        };
        t.hop(
            "neighbour",
            format!(
                "{} lladdr {} (peer VTEP MAC)",
                gw.map(|g| g.to_string()).unwrap_or_default(),
                format_mac(&mac)
            ),
            true,
        );
        let fdb = nl
            .list_fdb(vtep.index)
            .unwrap_or_default()
            .into_iter()
            .find(|f| f.mac == mac && f.dst.is_some());
        let Some(remote) = fdb.and_then(|f| f.dst) else {
            t.hop("fdb", format!("no FDB entry for {} on {}: the peer's VTEP is unreachable (is its agent publishing a VTEP MAC, and is ours programming it?)", format_mac(&mac), vtep.name), false);
            return t;
        };
        let outer = nl.route_get(remote);
        let (outer_src, outer_dev) = match &outer {
            Ok(r) => (
                r.prefsrc
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "?".into()),
                r.oif.map(name_of).unwrap_or_else(|| "?".into()),
            ),
            Err(_) => ("?".into(), "?".into()),
        };
        t.hop("fdb", format!("{} dst {remote}", format_mac(&mac)), true);
        t.hop(
            "vxlan",
            format!(
                "encapsulated: outer {outer_src} -> {remote} UDP, VNI {}, out {outer_dev}",
                ctx.vxlan_vni
            ),
            outer.is_ok(),
        );
        t.hop("next node", peer_name(ctx, remote), true);
        t.next_node = Some(remote);
    } else if let Some(w) = weft_route.filter(|w| w.gateway == route.gateway) {
        t.hop(
            "route",
            format!("{dst}{via} dev {out_name} (weft host-gw route {})", w.dst),
            true,
        );
        if let Some(g) = route.gateway {
            t.hop("next node", peer_name(ctx, g), true);
            t.next_node = Some(g);
        }
    } else if let Some(cidr) = dst_cluster {
        // Pod traffic inside the cluster that no weft route claims: the path is broken.
        t.hop(
            "route",
            format!("no weft route for {dst} (cluster {cidr}): the kernel would send it{via} dev {out_name}; the peer owning it is not programmed here (agent down, or peer missing from the datastore)"),
            false,
        );
        return t;
    } else {
        t.hop(
            "route",
            format!("{dst}{via} dev {out_name}: leaves the cluster network"),
            true,
        );
    }

    // 3. The firewall: forward-accept and NAT, checked against the live ruleset.
    let src_cluster = in_cluster(ctx, src);
    if let Some(driver) = &ctx.firewall {
        let policy = Policy::new(ctx.cluster_cidrs.clone());
        let kind = match driver.as_str() {
            "nftables" => Some(DriverKind::Nftables),
            "iptables-nft" => Some(DriverKind::Iptables(IptablesVariant::Nft)),
            "iptables-legacy" => Some(DriverKind::Iptables(IptablesVariant::Legacy)),
            _ => None,
        };
        let status = kind
            .and_then(|k| weft_firewall::driver(k).ok())
            .map(|fw| fw.status(&policy));
        let in_place = matches!(&status, Some(Ok(s)) if s.in_place);
        let missing = match &status {
            Some(Ok(s)) => s.problems.join("; "),
            Some(Err(e)) => e.to_string(),
            None => format!("unknown driver {driver}"),
        };
        if iif.is_some() || arriving {
            let rule = src_cluster
                .or(dst_cluster)
                .map(|c| format!("accepted by weft's forward rule for {c}"));
            match rule {
                Some(r) if in_place => t.hop("forward", format!("{r} ({driver})"), true),
                Some(r) => t.hop(
                    "forward",
                    format!("{r}, but weft's rules are NOT in place: {missing}"),
                    false,
                ),
                None => t.hop(
                    "forward",
                    "neither address is in the cluster network: weft does not accept it".into(),
                    true,
                ),
            }
        }
        let multicast = match dst {
            IpAddr::V4(a) => a.is_multicast(),
            IpAddr::V6(a) => a.is_multicast(),
        };
        let nat = match (src_cluster, dst_cluster) {
            (Some(_), Some(c)) => (
                "none: pod to cluster address, source kept".to_string(),
                true,
                c.to_string(),
            ),
            (Some(_), None) if multicast => (
                "none: multicast is never masqueraded".into(),
                true,
                String::new(),
            ),
            (Some(c), None) => (
                format!("masquerade to this node's address on {out_name} (fully random ports)"),
                in_place,
                c.to_string(),
            ),
            (None, _) => (
                "none: source is not a pod address".into(),
                true,
                String::new(),
            ),
        };
        let detail = if nat.1 {
            nat.0
        } else {
            format!("{}, but weft's rules are NOT in place: {missing}", nat.0)
        };
        t.hop("nat", detail, nat.1);
    } else {
        t.hop(
            "firewall",
            "weftd runs with --firewall none: no forward/NAT rules from weft".into(),
            true,
        );
    }
    t
}
