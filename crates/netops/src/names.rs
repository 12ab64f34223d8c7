//! Names weft gives to a pod attachment's host-side objects, derived from the attachment so
//! that DEL and GC find them again without the pod's network namespace, and so that weftd
//! (trace, cleanup) recognises them. The plugin and the agent both use this one definition.

/// Host veth name: `weft` + 11 hex digits of a hash of (network, container id, ifname).
/// 15 characters, the kernel's limit.
pub fn host_veth(network: &str, container_id: &str, ifname: &str) -> String {
    // FNV-1a, 64 bits: tiny, stable across releases, and collisions need ~2^22 pods on a node.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in network
        .bytes()
        .chain([0])
        .chain(container_id.bytes())
        .chain([0])
        .chain(ifname.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("weft{:011x}", h >> 20)
}

/// Every alias weft puts on a host veth starts with this (`weftd cleanup` looks for it).
pub const ALIAS_PREFIX: &str = "weft:";

/// The alias stored on the host veth. `:` cannot occur in a network name, a container id or
/// an ifname, so the alias parses back unambiguously (GC uses it).
pub fn host_alias(network: &str, container_id: &str, ifname: &str) -> String {
    format!("{ALIAS_PREFIX}{network}:{container_id}:{ifname}")
}

/// Parses an alias made by [`host_alias`] for `network` back into (container id, ifname).
pub fn parse_alias<'a>(alias: &'a str, network: &str) -> Option<(&'a str, &'a str)> {
    let rest = alias.strip_prefix(ALIAS_PREFIX)?;
    let mut parts = rest.splitn(3, ':');
    let (net, cid, ifname) = (parts.next()?, parts.next()?, parts.next()?);
    (net == network).then_some((cid, ifname))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_are_stable_short_and_distinct() {
        let a = host_veth("net", "abc", "eth0");
        assert_eq!(a, host_veth("net", "abc", "eth0"));
        assert_eq!(a.len(), 15);
        assert_ne!(a, host_veth("net", "abc", "eth1"));
        assert_ne!(a, host_veth("net2", "abc", "eth0"));
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000 {
            assert!(seen.insert(host_veth("net", &format!("c{i}"), "eth0")));
        }
    }

    #[test]
    fn alias_round_trip() {
        let a = host_alias("mynet", "c1", "eth0");
        assert_eq!(parse_alias(&a, "mynet"), Some(("c1", "eth0")));
        assert_eq!(parse_alias(&a, "other"), None);
        assert_eq!(parse_alias("something", "mynet"), None);
    }
}
