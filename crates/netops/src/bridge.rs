//! The node's pod bridge: exists, is up, and carries the pods' gateway addresses. Shared by
//! the CNI plugin (first ADD on a node) and weftd (which makes it at start-up so the node's
//! pod gateway answers health probes before any pod exists).

use crate::error::{Error, Result};
use crate::netlink::{Link, Netlink};
use ipnet::IpNet;

/// Makes sure bridge `name` exists, is up and carries each of `gateways`. Concurrent callers
/// race here (many ADDs at once), so "already exists" is success. An interface of that name
/// that is not a bridge is `Error::Invalid`.
pub fn ensure(nl: &mut Netlink, name: &str, gateways: &[IpNet]) -> Result<Link> {
    let bridge = match nl.get_link_by_name(name)? {
        Some(link) => link,
        None => {
            if let Err(e) = nl.create_bridge(name, None) {
                if !e.is_exists() {
                    return Err(e);
                }
            }
            nl.get_link_by_name(name)?
                .ok_or_else(|| Error::Invalid(format!("bridge {name} vanished after creation")))?
        }
    };
    if bridge.kind.as_deref() != Some("bridge") {
        return Err(Error::Invalid(format!(
            "bridge {name:?}: an interface of that name exists and is not a bridge (kind {:?})",
            bridge.kind
        )));
    }
    if !gateways.is_empty() {
        let have = nl.list_addresses(Some(bridge.index))?;
        for gw in gateways {
            if have.iter().any(|(_, a)| a == gw) {
                continue;
            }
            if let Err(e) = nl.add_address(bridge.index, *gw, true) {
                if !e.is_exists() {
                    return Err(e);
                }
            }
        }
    }
    if !bridge.up {
        nl.set_link_up(bridge.index)?;
    }
    Ok(bridge)
}
