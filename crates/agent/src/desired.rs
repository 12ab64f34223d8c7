//! What this node's own interfaces must carry, computed from its pod CIDRs alone, and the
//! pure comparisons against what the kernel and the IPAM store hold. No kernel access here:
//! the agent reads, calls these, and applies the result.

use ipnet::IpNet;
use std::net::IpAddr;

/// The pods' gateway in `cidr` (network + 1, the IPAM default) with the CIDR's prefix.
pub fn pod_gateway(cidr: &IpNet) -> Option<IpNet> {
    IpNet::new(weft_ipam::default_gateway(cidr), cidr.prefix_len()).ok()
}

/// The bridge's addresses: one gateway per pod CIDR.
pub fn bridge_addresses(pod_cidrs: &[IpNet]) -> Vec<IpNet> {
    pod_cidrs.iter().filter_map(pod_gateway).collect()
}

/// Changes that make an interface carry exactly `want`. Link-local IPv6 addresses are the
/// kernel's own and stay. Used for the bridge and the VTEP, where weftd owns every address:
/// a gateway left from a former pod CIDR would keep a connected route that clashes once that
/// CIDR is given to another node.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AddressChanges {
    pub add: Vec<IpNet>,
    pub remove: Vec<IpNet>,
}

pub fn address_changes(have: &[IpNet], want: &[IpNet]) -> AddressChanges {
    let link_local =
        |a: &IpNet| matches!(a.addr(), IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
    AddressChanges {
        add: want.iter().filter(|w| !have.contains(w)).copied().collect(),
        remove: have
            .iter()
            .filter(|h| !want.contains(h) && !link_local(h))
            .copied()
            .collect(),
    }
}

/// A pod whose address is outside this node's pod CIDRs: it was made for a former CIDR, and
/// peers now route that CIDR elsewhere, so it cannot work any more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrandedPod {
    pub address: IpAddr,
    pub container_id: String,
    pub ifname: String,
}

impl std::fmt::Display for StrandedPod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pod {} (container {}, {}) has an address of a former pod CIDR; it cannot be \
             reached until it is re-created (delete the pod)",
            self.address, self.container_id, self.ifname
        )
    }
}

/// The IPAM store's reservations that lie outside `pod_cidrs`.
pub fn stranded_pods(
    reservations: &[(IpAddr, String, String)],
    pod_cidrs: &[IpNet],
) -> Vec<StrandedPod> {
    reservations
        .iter()
        .filter(|(ip, _, _)| !pod_cidrs.iter().any(|c| c.contains(ip)))
        .map(|(ip, cid, ifname)| StrandedPod {
            address: *ip,
            container_id: cid.clone(),
            ifname: ifname.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn gateways_are_network_plus_one() {
        assert_eq!(
            bridge_addresses(&nets(&["10.244.3.0/24", "fd00:10:244:3::/64"])),
            nets(&["10.244.3.1/24", "fd00:10:244:3::1/64"])
        );
    }

    #[test]
    fn a_new_pod_cidr_replaces_the_old_gateway() {
        let have = nets(&["10.244.1.1/24", "fe80::1/64"]);
        let want = bridge_addresses(&nets(&["10.244.7.0/24"]));
        assert_eq!(
            address_changes(&have, &want),
            AddressChanges {
                add: nets(&["10.244.7.1/24"]),
                remove: nets(&["10.244.1.1/24"]),
            }
        );
    }

    #[test]
    fn nothing_to_do_when_in_place_and_link_local_is_kept() {
        let have = nets(&["10.244.1.1/24", "fd00::1/64", "fe80::aa/64"]);
        let want = nets(&["fd00::1/64", "10.244.1.1/24"]);
        assert_eq!(address_changes(&have, &want), AddressChanges::default());
    }

    #[test]
    fn a_stranger_address_on_an_owned_interface_is_removed() {
        let have = nets(&["192.168.9.9/32"]);
        assert_eq!(
            address_changes(&have, &[]).remove,
            nets(&["192.168.9.9/32"])
        );
    }

    #[test]
    fn pods_outside_the_current_cidrs_are_stranded() {
        let res = vec![
            (
                "10.244.1.5".parse().unwrap(),
                "aaa".to_string(),
                "eth0".to_string(),
            ),
            (
                "10.244.7.2".parse().unwrap(),
                "bbb".to_string(),
                "eth0".to_string(),
            ),
        ];
        let stranded = stranded_pods(&res, &nets(&["10.244.7.0/24"]));
        assert_eq!(stranded.len(), 1);
        assert_eq!(stranded[0].container_id, "aaa");
        assert!(stranded[0].to_string().contains("10.244.1.5"));
        assert!(stranded_pods(&res, &nets(&["10.244.0.0/16"])).is_empty());
    }
}
