//! CNI spec versions: which ones weft speaks and which verbs each allows.

use crate::error::{self, CniError};
use std::fmt;

/// Versions weft accepts in a network configuration and answers in, oldest first.
pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u16, pub u16, pub u16);

impl Version {
    pub const V0_3_0: Version = Version(0, 3, 0);
    pub const V0_4_0: Version = Version(0, 4, 0);
    pub const V1_0_0: Version = Version(1, 0, 0);
    pub const V1_1_0: Version = Version(1, 1, 0);
    pub const LATEST: Version = Version::V1_1_0;

    /// Parses and checks that weft supports the version (error code 1 otherwise).
    pub fn parse(s: &str) -> Result<Version, CniError> {
        let unsupported = || {
            CniError::new(
                error::INCOMPATIBLE_VERSION,
                format!("unsupported cniVersion {s:?}"),
            )
            .with_details(format!("supported versions: {}", SUPPORTED.join(", ")))
        };
        if !SUPPORTED.contains(&s) {
            return Err(unsupported());
        }
        let mut parts = s.split('.').map(|p| p.parse::<u16>());
        match (parts.next(), parts.next(), parts.next()) {
            (Some(Ok(a)), Some(Ok(b)), Some(Ok(c))) => Ok(Version(a, b, c)),
            _ => Err(unsupported()),
        }
    }

    /// Results before 1.0.0 carry `ips[].version`.
    pub fn ips_have_version(self) -> bool {
        self < Version::V1_0_0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// The VERSION verb's answer.
pub fn version_info(asked: &str) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": asked,
        "supportedVersions": SUPPORTED,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_supported_and_rejects_others() {
        for v in SUPPORTED {
            assert_eq!(Version::parse(v).unwrap().to_string(), *v);
        }
        for bad in ["0.2.0", "1.2.0", "", "1.0", "x.y.z", "01.0.0"] {
            let err = Version::parse(bad).unwrap_err();
            assert_eq!(err.code, error::INCOMPATIBLE_VERSION, "{bad}");
            assert!(err.msg.contains(bad), "{}", err.msg);
        }
    }

    #[test]
    fn ordering() {
        assert!(Version::parse("0.3.1").unwrap() < Version::V0_4_0);
        assert!(Version::V1_0_0 < Version::V1_1_0);
        assert!(Version::parse("0.4.0").unwrap().ips_have_version());
        assert!(!Version::V1_0_0.ips_have_version());
    }
}
