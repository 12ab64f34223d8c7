//! One error type for the whole crate. Every variant says which object
//! (path, interface, route...) and which operation failed.

use std::io;
use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The netns path does not exist.
    #[error("network namespace {path}: not found")]
    NotFound { path: PathBuf },

    /// The path exists but is not a network namespace (wrong fs magic or
    /// wrong namespace type).
    #[error("{path}: not a network namespace")]
    NotANetns { path: PathBuf },

    /// A system call on a file or namespace failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The kernel answered a netlink request with an error (or the socket
    /// itself failed). `op` names the operation and the object, e.g.
    /// "add route 10.1.0.0/24 via 10.0.0.2".
    #[error("{op}: {source}")]
    Netlink {
        op: String,
        #[source]
        source: io::Error,
    },

    /// The kernel answered something we could not decode or did not expect.
    #[error("{op}: {msg}")]
    Protocol { op: String, msg: String },

    /// The caller passed something we refuse before asking the kernel.
    #[error("invalid argument: {0}")]
    Invalid(String),
}

impl Error {
    /// The OS errno carried by this error, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Io { source, .. } | Error::Netlink { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// The object already exists (EEXIST).
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    /// The object does not exist (ENOENT, ENODEV, ESRCH, or our own NotFound).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
            || matches!(
                self.errno(),
                Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ESRCH)
            )
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn nix(op: &'static str, path: impl Into<PathBuf>, errno: nix::Error) -> Self {
        Error::io(op, path, io::Error::from_raw_os_error(errno as i32))
    }
}
