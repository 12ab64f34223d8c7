//! Per-pod masquerade for `ipMasq: true` (off by default: weftd masquerades for the node).
//! The rules live in weft-firewall's `pod_masq`, keyed by pod IP, so DEL needs no netns.

use ipnet::IpNet;
use std::net::IpAddr;
use weft_cni::error::{self, CniError};
use weft_firewall::pod_masq;

pub fn add(network: &str, ips: &[IpAddr], subnets: &[IpNet]) -> Result<(), CniError> {
    pod_masq::add(network, ips, subnets)
        .map_err(|e| CniError::new(error::IO_FAILURE, format!("ipMasq: {e}")))
}

pub fn remove(network: &str, ips: &[IpAddr]) -> Result<(), CniError> {
    pod_masq::remove(network, ips)
        .map_err(|e| CniError::new(error::IO_FAILURE, format!("ipMasq: {e}")))
}

pub fn list(network: &str) -> Result<Vec<IpAddr>, CniError> {
    pod_masq::list(network).map_err(|e| CniError::new(error::IO_FAILURE, format!("ipMasq: {e}")))
}
