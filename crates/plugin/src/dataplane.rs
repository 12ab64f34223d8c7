//! The per-pod data plane: the node's bridge, the veth pair, the pod's addresses and routes.

use crate::config::Config;
use crate::ipam::Assigned;
use ipnet::IpNet;
use weft_cni::error::{self, CniError};
use weft_netops::netlink::{Link, Netlink, Request, Route, VethSpec};
use weft_netops::netns::{self, NetNs};
use weft_netops::sysctl;

pub fn nl_error(e: impl std::fmt::Display) -> CniError {
    CniError::new(error::NETLINK, e.to_string())
}

/// A result's `mac` field: empty when the kernel reported none.
pub fn mac_string(mac: Option<[u8; 6]>) -> String {
    mac.as_ref()
        .map(weft_netops::netlink::format_mac)
        .unwrap_or_default()
}

/// The bridge's address for a range: the gateway with the subnet's prefix length.
pub fn gateway_net(a: &Assigned) -> Option<IpNet> {
    a.gateway
        .map(|gw| IpNet::new(gw, a.address.prefix_len()).expect("prefix length of a valid net"))
}

/// Makes sure the bridge exists, is up and (as gateway) carries each range's gateway address,
/// with forwarding on.
pub fn ensure_bridge(
    nl: &mut Netlink,
    conf: &Config,
    assigned: &[Assigned],
) -> Result<Link, CniError> {
    let gateways: Vec<IpNet> = if conf.is_gateway {
        assigned.iter().filter_map(gateway_net).collect()
    } else {
        Vec::new()
    };
    let bridge = weft_netops::bridge::ensure(nl, &conf.bridge, &gateways).map_err(|e| match e {
        weft_netops::Error::Invalid(msg) => CniError::new(error::INVALID_CONFIG, msg),
        e => nl_error(e),
    })?;
    if conf.is_gateway {
        enable_forwarding(assigned)?;
    }
    Ok(bridge)
}

/// A gateway bridge routes: forwarding must be on for each family it serves.
fn enable_forwarding(assigned: &[Assigned]) -> Result<(), CniError> {
    sysctl::enable_forwarding(
        assigned.iter().any(|a| a.address.addr().is_ipv4()),
        assigned.iter().any(|a| a.address.addr().is_ipv6()),
    )
    .map_err(|e| CniError::new(error::IO_FAILURE, format!("enable forwarding: {e}")))
}

/// The routes the pod gets: a default route per family via its gateway, plus `ipam.routes`.
pub fn pod_routes(conf: &Config, assigned: &[Assigned]) -> Vec<weft_cni::Route> {
    let mut routes = Vec::new();
    let gw_for = |v4: bool| {
        assigned
            .iter()
            .filter(|a| a.address.addr().is_ipv4() == v4)
            .find_map(|a| a.gateway)
    };
    if conf.is_default_gateway {
        for v4 in [true, false] {
            if let Some(gw) = gw_for(v4) {
                let dst: IpNet = if v4 { "0.0.0.0/0" } else { "::/0" }.parse().unwrap();
                routes.push(weft_cni::Route::new(dst, Some(gw)));
            }
        }
    }
    for (dst, gw) in &conf.ipam_routes {
        if conf.is_default_gateway && dst.prefix_len() == 0 {
            continue; // already there
        }
        let gw = gw.or_else(|| gw_for(dst.addr().is_ipv4()));
        routes.push(weft_cni::Route::new(*dst, gw));
    }
    routes
}

pub struct PodLinks {
    pub host: Link,
    pub pod_mac: [u8; 6],
}

/// A random unicast, locally administered MAC. Choosing it ourselves (rather than letting
/// the kernel pick) saves reading the pod interface back for the result.
fn random_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    // SAFETY: getrandom fills the buffer it is given; a short read leaves zeros, still valid.
    unsafe { libc::getrandom(mac.as_mut_ptr().cast(), mac.len(), 0) };
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

/// Creates the veth pair with the pod end born inside the pod netns, already up, the host end
/// already on the bridge; then configures the pod end in one pipelined netlink batch. The
/// caller undoes it (by deleting the host end) on error.
#[allow(clippy::too_many_arguments)]
pub fn setup_veth(
    nl: &mut Netlink,
    conf: &Config,
    bridge: &Link,
    pod_ns: &NetNs,
    host_name: &str,
    host_alias: &str,
    ifname: &str,
    mtu: u32,
    assigned: &[Assigned],
    routes: &[weft_cni::Route],
) -> Result<PodLinks, CniError> {
    let pod_mac = random_mac();
    let pair = nl
        .create_veth(&VethSpec {
            host_name: host_name.to_string(),
            host_alias: Some(host_alias.to_string()),
            peer_name: ifname.to_string(),
            peer_netns: Some(pod_ns),
            mtu: Some(mtu),
            peer_mac: Some(pod_mac),
            host_master: Some(bridge.index),
            up: true,
            ..Default::default()
        })
        .map_err(|e| {
            if e.is_exists() {
                CniError::new(
                    error::ALREADY_EXISTS,
                    format!("interface {host_name} or {ifname} in the pod netns already exists"),
                )
            } else {
                nl_error(e)
            }
        })?;
    if conf.hairpin {
        nl.set_bridge_port_hairpin(pair.host_index, true)
            .map_err(nl_error)?;
    }

    // The pod side: one visit to the pod's netns makes a netlink socket bound there (and turns
    // DAD off); the socket keeps working from here.
    let v6 = assigned.iter().any(|a| a.address.addr().is_ipv6());
    let mut pod_nl = netns::run_in(pod_ns, || -> Result<Netlink, CniError> {
        if v6 {
            // No DAD: it delays the address (and so the pod) by ~2 s for nothing on our bridge.
            let key = format!("net/ipv6/conf/{ifname}/accept_dad");
            sysctl::write(&key, "0")
                .map_err(|e| CniError::new(error::IO_FAILURE, format!("sysctl {key}=0: {e}")))?;
        }
        Netlink::new().map_err(nl_error)
    })
    .map_err(nl_error)??;
    let pod_index = pair.peer_index;
    pod_nl.set_link_up(pod_index).map_err(nl_error)?;
    let mut reqs: Vec<Request> = assigned
        .iter()
        .map(|a| Request::AddAddress {
            index: pod_index,
            addr: a.address,
            nodad: true,
        })
        .collect();
    reqs.extend(routes.iter().map(|r| {
        Request::AddRoute(match r.gw {
            Some(gw) => Route {
                oif: Some(pod_index),
                ..Route::via(r.dst, gw)
            },
            None => Route::dev(r.dst, pod_index),
        })
    }));
    for res in pod_nl.batch(&reqs) {
        res.map_err(nl_error)?;
    }
    Ok(PodLinks {
        host: pair.host,
        pod_mac,
    })
}

/// MTU of the interface holding the node's default route (IPv4 first, else IPv6); 1500 if
/// the node has no default route.
pub fn default_route_mtu(nl: &mut Netlink) -> u32 {
    let routes = nl.list_routes(None, Some(254)).unwrap_or_default();
    let mut defaults: Vec<&Route> = routes.iter().filter(|r| r.dst.prefix_len() == 0).collect();
    defaults.sort_by_key(|r| r.dst.addr().is_ipv6());
    for route in defaults {
        if let Some(Ok(Some(link))) = route.oif.map(|oif| nl.get_link_by_index(oif)) {
            return link.mtu;
        }
    }
    1500
}
