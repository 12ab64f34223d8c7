//! CHECK: compare the live state with prevResult and say precisely what differs.

use crate::add::open_netns;
use crate::config::{Config, Ipam};
use crate::dataplane::nl_error;
use crate::ipam;
use weft_cni::error::{self, CniError};
use weft_cni::{CniResult, Env};
use weft_ipam::Attachment;
use weft_netops::names;
use weft_netops::netlink::Netlink;

fn mismatch(msg: String) -> CniError {
    CniError::new(error::CHECK_MISMATCH, msg)
}

pub fn run(conf: &Config, env: &Env) -> Result<(), CniError> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(error::INVALID_CONFIG, "CHECK needs prevResult; none given")
    })?;
    let prev = CniResult::from_json(prev)?;
    let pod_ns = open_netns(env)?;

    // The IP reservations are still held by this attachment.
    if let Ipam::Builtin { .. } = conf.ipam {
        let held = ipam::open_store(conf)?
            .get(&Attachment {
                container_id: env.container_id.clone(),
                ifname: env.ifname.clone(),
            })
            .map_err(ipam::ipam_error)?;
        for ip in &prev.ips {
            if !held.contains(&ip.address.addr()) {
                return Err(mismatch(format!(
                    "IPAM: {} is not reserved for container {} ifname {}",
                    ip.address.addr(),
                    env.container_id,
                    env.ifname
                )));
            }
        }
    }

    // The host veth is there, up and on the bridge.
    let host_name = names::host_veth(&conf.name, &env.container_id, &env.ifname);
    let mut nl = Netlink::new().map_err(nl_error)?;
    let host = nl
        .get_link_by_name(&host_name)
        .map_err(nl_error)?
        .ok_or_else(|| mismatch(format!("host veth {host_name} does not exist")))?;
    let bridge = nl
        .get_link_by_name(&conf.bridge)
        .map_err(nl_error)?
        .ok_or_else(|| mismatch(format!("bridge {} does not exist", conf.bridge)))?;
    if host.master != Some(bridge.index) {
        return Err(mismatch(format!(
            "host veth {host_name} is not attached to bridge {}",
            conf.bridge
        )));
    }
    if !host.up {
        return Err(mismatch(format!("host veth {host_name} is down")));
    }

    // The pod interface has the expected addresses and routes.
    let mut pod_nl = Netlink::in_netns(&pod_ns).map_err(nl_error)?;
    let pod = pod_nl
        .get_link_by_name(&env.ifname)
        .map_err(nl_error)?
        .ok_or_else(|| {
            mismatch(format!(
                "interface {} does not exist in the pod netns",
                env.ifname
            ))
        })?;
    if let Some(want) = prev
        .interfaces
        .iter()
        .find(|i| i.name == env.ifname && !i.sandbox.is_empty())
    {
        let have = crate::dataplane::mac_string(pod.mac);
        if !want.mac.is_empty() && !want.mac.eq_ignore_ascii_case(&have) {
            return Err(mismatch(format!(
                "interface {} has MAC {have}, prevResult says {}",
                env.ifname, want.mac
            )));
        }
    }
    let addrs = pod_nl.list_addresses(Some(pod.index)).map_err(nl_error)?;
    for ip in &prev.ips {
        if !addrs.iter().any(|(_, a)| *a == ip.address) {
            return Err(mismatch(format!(
                "interface {} in the pod netns lacks address {}",
                env.ifname, ip.address
            )));
        }
    }
    let routes = pod_nl.list_routes(None, Some(254)).map_err(nl_error)?;
    for r in &prev.routes {
        if !routes
            .iter()
            .any(|have| have.dst == r.dst && (r.gw.is_none() || have.gateway == r.gw))
        {
            return Err(mismatch(format!(
                "pod netns lacks route {}{}",
                r.dst,
                r.gw.map(|g| format!(" via {g}")).unwrap_or_default()
            )));
        }
    }
    Ok(())
}
