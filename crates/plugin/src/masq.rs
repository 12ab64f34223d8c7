//! Per-pod masquerade for `ipMasq: true` (off by default: weftd masquerades for the node).
use ipnet::IpNet;
use std::net::IpAddr;
use weft_cni::error::{self, CniError};

pub fn add(_network: &str, _ips: &[IpAddr], _nets: &[IpNet]) -> Result<(), CniError> {
    Err(CniError::new(
        error::UNSUPPORTED_FIELD,
        "ipMasq: true is not supported yet; weftd masquerades pod traffic",
    ))
}

pub fn remove(_network: &str, _ips: &[IpAddr]) -> Result<(), CniError> {
    Ok(())
}
