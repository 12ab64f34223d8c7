//! GC (spec 1.1): release every reservation and remove every weft-made host link of this
//! network whose (container id, ifname) is not in `cni.dev/valid-attachments`. Continues past
//! individual errors and reports them together at the end.

use crate::config::{Config, Ipam};
use crate::dataplane::nl_error;
use crate::{ipam, masq, names};
use std::collections::HashSet;
use weft_cni::error::{self, CniError};
use weft_ipam::Attachment;
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
                if conf.ip_masq && !report.released.is_empty() {
                    let ips: Vec<_> = report.released.iter().map(|(ip, _)| *ip).collect();
                    if let Err(e) = masq::remove(&conf.name, &ips) {
                        failures.push(e.to_string());
                    }
                }
            }
            Err(e) => failures.push(e.to_string()),
        }
    }

    let mut nl = Netlink::new().map_err(nl_error)?;
    for link in nl.list_links().map_err(nl_error)? {
        let Some(alias) = link.alias.as_deref() else {
            continue;
        };
        let Some((cid, ifname)) = names::parse_alias(alias, &conf.name) else {
            continue;
        };
        if valid.contains(&(cid.to_string(), ifname.to_string())) {
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
