//! Errors of the IPAM store. The mapping to CNI error codes lives in the plugin; this crate
//! only offers [`IpamError::kind`] to make that mapping a simple `match`.

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;

pub type Result<T, E = IpamError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// A config key has a bad value. `key` is the path of the key in the ipam section,
    /// e.g. `ranges[0][1].rangeStart`; `detail` starts with the offending value.
    #[error("{key} {detail}")]
    InvalidConfig { key: String, detail: String },

    /// The caller's arguments are unusable (bad attachment, bad network name, two requested
    /// IPs for one range set, ...).
    #[error("invalid request: {detail}")]
    InvalidRequest { detail: String },

    /// Every address of a range set is taken.
    #[error("no IP addresses available in range set {set} ({ranges})")]
    Exhausted { set: usize, ranges: String },

    /// The attachment already holds addresses in this network.
    #[error("container {container_id} interface {ifname} already holds {}", fmt_ips(.ips))]
    AlreadyExists {
        container_id: String,
        ifname: String,
        ips: Vec<IpAddr>,
    },

    /// A requested IP is taken (or is a gateway).
    #[error("requested IP address {ip} is not available: {owner}")]
    RequestedUnavailable { ip: IpAddr, owner: String },

    /// A requested IP is in none of the configured range sets.
    #[error("requested IP address {ip} is not in any configured range")]
    RequestedOutOfRange { ip: IpAddr },

    #[error("{op} {}: {source}", .path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A state file that cannot be understood.
    #[error("corrupt IPAM state file {}: {detail}", .path.display())]
    Corrupt { path: PathBuf, detail: String },
}

/// The broad class of an [`IpamError`], for mapping to CNI error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidConfig,
    InvalidRequest,
    Exhausted,
    AlreadyExists,
    RequestedUnavailable,
    RequestedOutOfRange,
    Io,
    Corrupt,
}

impl IpamError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            IpamError::InvalidConfig { .. } => ErrorKind::InvalidConfig,
            IpamError::InvalidRequest { .. } => ErrorKind::InvalidRequest,
            IpamError::Exhausted { .. } => ErrorKind::Exhausted,
            IpamError::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            IpamError::RequestedUnavailable { .. } => ErrorKind::RequestedUnavailable,
            IpamError::RequestedOutOfRange { .. } => ErrorKind::RequestedOutOfRange,
            IpamError::Io { .. } => ErrorKind::Io,
            IpamError::Corrupt { .. } => ErrorKind::Corrupt,
        }
    }

    pub fn is_invalid_config(&self) -> bool {
        self.kind() == ErrorKind::InvalidConfig
    }

    pub fn is_already_exists(&self) -> bool {
        self.kind() == ErrorKind::AlreadyExists
    }

    pub fn is_exhausted(&self) -> bool {
        self.kind() == ErrorKind::Exhausted
    }

    /// The caller asked for something that cannot be given (bad request, requested IP taken
    /// or out of range), as opposed to a config or storage problem.
    pub fn is_bad_request(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::InvalidRequest
                | ErrorKind::RequestedUnavailable
                | ErrorKind::RequestedOutOfRange
        )
    }

    /// Storage trouble: I/O failure or a corrupt state file.
    pub fn is_storage(&self) -> bool {
        matches!(self.kind(), ErrorKind::Io | ErrorKind::Corrupt)
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        IpamError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn config(key: impl Into<String>, detail: impl Into<String>) -> Self {
        IpamError::InvalidConfig {
            key: key.into(),
            detail: detail.into(),
        }
    }

    pub(crate) fn request(detail: impl Into<String>) -> Self {
        IpamError::InvalidRequest {
            detail: detail.into(),
        }
    }
}

fn fmt_ips(ips: &[IpAddr]) -> String {
    let v: Vec<String> = ips.iter().map(|ip| ip.to_string()).collect();
    v.join(", ")
}
