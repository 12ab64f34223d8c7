//! The spec's error result and its well-known codes, plus weft's own (>= 100).

use serde_json::json;
use std::fmt;

pub const INCOMPATIBLE_VERSION: u32 = 1;
pub const UNSUPPORTED_FIELD: u32 = 2;
pub const UNKNOWN_CONTAINER: u32 = 3;
pub const INVALID_ENV: u32 = 4;
pub const IO_FAILURE: u32 = 5;
pub const DECODE: u32 = 6;
pub const INVALID_CONFIG: u32 = 7;
pub const TRY_AGAIN_LATER: u32 = 11;
pub const NOT_AVAILABLE: u32 = 50;
pub const NOT_AVAILABLE_LIMITED: u32 = 51;

// weft's own codes (documented in the README).
/// The (container, ifname) attachment already exists (duplicate ADD).
pub const ALREADY_EXISTS: u32 = 100;
/// No free address is left in a range set.
pub const IPAM_EXHAUSTED: u32 = 101;
/// A requested address (CNI_ARGS IP= or runtimeConfig ips) is taken or outside the ranges.
pub const IPAM_REQUESTED_UNAVAILABLE: u32 = 102;
/// The IPAM state on disk is corrupt.
pub const IPAM_CORRUPT: u32 = 103;
/// A kernel (netlink) operation failed.
pub const NETLINK: u32 = 104;
/// CHECK found live state that differs from prevResult.
pub const CHECK_MISMATCH: u32 = 105;
/// A delegated IPAM plugin failed or could not be run.
pub const DELEGATE: u32 = 106;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The error JSON the spec defines; goes to stdout with exit code 1.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        let mut v = json!({ "cniVersion": cni_version, "code": self.code, "msg": self.msg });
        if !self.details.is_empty() {
            v["details"] = json!(self.details);
        }
        v
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape() {
        let e = CniError::new(INVALID_CONFIG, "bad").with_details("why");
        assert_eq!(
            e.to_json("1.1.0"),
            json!({"cniVersion":"1.1.0","code":7,"msg":"bad","details":"why"})
        );
        let e = CniError::new(IO_FAILURE, "io");
        assert!(e.to_json("0.4.0").get("details").is_none());
    }
}
