//! DEL: idempotent and best-effort. Succeeds when the attachment is already gone, when
//! CNI_NETNS is empty and when the netns no longer exists; removes the host veth (which takes
//! the pod end with it) and releases the addresses by (container id, ifname).
//!
//! Order matters for a DEL killed half-way (the runtime retries it): the addresses are
//! released last, because they are how the retry finds what is left to undo (the ipMasq
//! elements are keyed by them).

use crate::config::{Config, Ipam};
use crate::dataplane::nl_error;
use crate::{ipam, masq};
use weft_cni::{CniError, CniResult, Env};
use weft_ipam::Attachment;
use weft_netops::names;
use weft_netops::netlink::Netlink;

pub fn run(conf: &Config, env: &Env) -> Result<(), CniError> {
    let host_name = names::host_veth(&conf.name, &env.container_id, &env.ifname);
    let mut nl = Netlink::new().map_err(nl_error)?;
    nl.delete_link_by_name(&host_name).map_err(nl_error)?;

    if conf.ip_masq {
        let mut ips = match conf.ipam {
            Ipam::Builtin { .. } => ipam::open_store(conf)?
                .get(&Attachment::new(&env.container_id, &env.ifname))
                .map_err(ipam::ipam_error)?,
            // A delegated IPAM does not tell us what it holds: prevResult below.
            Ipam::Delegated { .. } => Vec::new(),
        };
        if let Some(prev) = conf
            .prev_result
            .as_ref()
            .and_then(|p| CniResult::from_json(p).ok())
        {
            ips.extend(prev.ips.iter().map(|ip| ip.address.addr()));
        }
        ips.sort();
        ips.dedup();
        masq::remove(&conf.name, &ips)?;
    }
    ipam::del(conf, env)?;
    Ok(())
}
