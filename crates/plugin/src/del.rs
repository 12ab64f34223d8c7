//! DEL: idempotent and best-effort. Succeeds when the attachment is already gone, when
//! CNI_NETNS is empty and when the netns no longer exists; removes the host veth (which takes
//! the pod end with it) and releases the addresses by (container id, ifname).

use crate::config::Config;
use crate::dataplane::nl_error;
use crate::{ipam, masq, names};
use weft_cni::{CniError, CniResult, Env};
use weft_netops::netlink::Netlink;

pub fn run(conf: &Config, env: &Env) -> Result<(), CniError> {
    let host_name = names::host_veth(&conf.name, &env.container_id, &env.ifname);
    let mut nl = Netlink::new().map_err(nl_error)?;
    nl.delete_link_by_name(&host_name).map_err(nl_error)?;

    let mut released = ipam::del(conf, env)?;
    if conf.ip_masq {
        // A delegated IPAM does not tell us what it released: learn the IPs from prevResult.
        if let Some(prev) = conf
            .prev_result
            .as_ref()
            .and_then(|p| CniResult::from_json(p).ok())
        {
            released.extend(prev.ips.iter().map(|ip| ip.address.addr()));
        }
        released.sort();
        released.dedup();
        masq::remove(&conf.name, &released)?;
    }
    Ok(())
}
