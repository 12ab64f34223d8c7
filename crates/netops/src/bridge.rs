//! The node's pod bridge: exists, is up, and carries the pods' gateway addresses. Shared by
//! the CNI plugin (first ADD on a node) and weftd (which makes it at start-up so the node's
//! pod gateway answers health probes before any pod exists).

use crate::error::{Error, Result};
use crate::netlink::{Link, Netlink};
use ipnet::IpNet;

/// The node's pod bridge unless configured otherwise (plugin `bridge`, weftd `--bridge`).
pub const DEFAULT_BRIDGE: &str = "weft0";

/// The bridge's own MAC: `0a:58` (locally administered, unicast) and four bytes of a hash of
/// its name, so the same on every call, every restart and every node.
///
/// Why a MAC of its own: a bridge without one takes the lowest MAC among its ports and changes
/// it when that port leaves. Every pod holds the gateway's MAC in its ARP cache, so deleting
/// one pod would cut all the others off their gateway until their entries go stale (35-40 s).
pub fn stable_mac(name: &str) -> [u8; 6] {
    // FNV-1a, 32 bits: tiny, fixed, and no dependency for four bytes.
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    let [a, b, c, d] = h.to_be_bytes();
    [0x0a, 0x58, a, b, c, d]
}

/// Makes sure bridge `name` exists, is up, has its `stable_mac` and carries each of
/// `gateways`. Concurrent callers race here (many ADDs at once), so "already exists" is
/// success. A bridge with another MAC (made by an older weft, so following its ports, or changed
/// by hand) is given its stable MAC: pods re-learn the gateway once, then never again. An
/// interface of that name that is not a bridge is `Error::Invalid`.
pub fn ensure(nl: &mut Netlink, name: &str, gateways: &[IpNet]) -> Result<Link> {
    let mac = stable_mac(name);
    let mut bridge = match nl.get_link_by_name(name)? {
        Some(link) => link,
        None => {
            if let Err(e) = nl.create_bridge(name, None, Some(mac)) {
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
    if bridge.mac != Some(mac) {
        nl.set_mac(bridge.index, mac)?;
        bridge.mac = Some(mac);
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
