//! GC (spec 1.1): release every reservation and remove every weft-made host link of this
//! network whose (container id, ifname) is not in `cni.dev/valid-attachments`. Continues past
//! individual errors and reports them together at the end.
//!
//! It also repairs what a plugin killed half-way leaves behind: a host veth whose alias was
//! never set (an ADD killed between creating the pair and labelling it) is found by the name
//! derived from a released reservation's owner; with ipMasq, set elements whose address no
//! valid attachment holds (a killed ADD's nft child finishing after the DEL) are removed.

use crate::config::{Config, Ipam};
use crate::dataplane::nl_error;
use crate::{ipam, masq};
use std::collections::HashSet;
use std::net::IpAddr;
use weft_cni::error::{self, CniError};
use weft_ipam::Attachment;
use weft_netops::names;
use weft_netops::netlink::Netlink;

pub fn run(conf: &Config) -> Result<(), CniError> {
    let valid: HashSet<(String, String)> = conf
        .valid_attachments
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect();
    let mut failures = Vec::new();
    // Host veth names of released reservations: deleted below even without an alias.
    let mut released_links = HashSet::new();

    if let Ipam::Builtin { .. } = conf.ipam {
        let keep: Vec<Attachment> = valid
            .iter()
            .map(|(c, i)| Attachment {
                container_id: c.clone(),
                ifname: i.clone(),
            })
            .collect();
        match ipam::open_store(conf).and_then(|s| s.gc(&keep).map_err(ipam::ipam_error)) {
            Ok(report) => {
                failures.extend(report.errors.iter().map(|e| e.to_string()));
                released_links.extend(
                    report.released.iter().map(|(_, who)| {
                        names::host_veth(&conf.name, &who.container_id, &who.ifname)
                    }),
                );
                if conf.ip_masq {
                    if let Err(e) = gc_masq(conf) {
                        failures.push(e.to_string());
                    }
                }
            }
            Err(e) => failures.push(e.to_string()),
        }
    }

    let mut nl = Netlink::new().map_err(nl_error)?;
    for link in nl.list_links().map_err(nl_error)? {
        let ours = match link
            .alias
            .as_deref()
            .and_then(|a| names::parse_alias(a, &conf.name))
        {
            Some((cid, ifname)) => !valid.contains(&(cid.to_string(), ifname.to_string())),
            None => released_links.contains(&link.name),
        };
        if !ours {
            continue;
        }
        if let Err(e) = nl.delete_link(link.index) {
            if !e.is_not_found() {
                failures.push(format!("delete {}: {e}", link.name));
            }
        }
    }

    if failures.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(error::IO_FAILURE, "GC finished with errors")
            .with_details(failures.join("; ")))
    }
}

/// Removes the ipMasq set elements of addresses that no remaining reservation holds (after
/// the store's GC, the remaining ones are exactly the valid attachments').
fn gc_masq(conf: &Config) -> Result<(), CniError> {
    let held: HashSet<IpAddr> = ipam::open_store(conf)?
        .list()
        .map_err(ipam::ipam_error)?
        .into_iter()
        .map(|(ip, _)| ip)
        .collect();
    let stale: Vec<IpAddr> = masq::list(&conf.name)?
        .into_iter()
        .filter(|ip| !held.contains(ip))
        .collect();
    masq::remove(&conf.name, &stale)
}
