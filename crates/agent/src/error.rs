//! weftd's errors: what failed, on which object, and the cause, as a type (the CLI and logs
//! print them; callers match on them where the kind matters).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A kernel request failed (the netops error names the operation and the object).
    #[error("{what}: {source}")]
    Kernel {
        what: String,
        #[source]
        source: weft_netops::Error,
    },
    /// A file or directory weftd reads or writes.
    #[error("{}: {source}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("firewall: {0}")]
    Firewall(#[from] weft_firewall::FirewallError),
    #[error(transparent)]
    Datastore(#[from] crate::datastore::DatastoreError),
    /// The node is not as weftd needs it (no underlay, a name taken by another kind of
    /// interface); the message says what to change.
    #[error("{0}")]
    Node(String),
    /// The configuration (flags, environment) cannot work.
    #[error("{0}")]
    Config(String),
    /// The HTTP endpoints (/healthz, /readyz, /metrics, /status) cannot listen.
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `map_err(kernel("list routes"))`: a netops error with what weftd was doing.
pub fn kernel(what: impl Into<String>) -> impl FnOnce(weft_netops::Error) -> Error {
    let what = what.into();
    move |source| Error::Kernel { what, source }
}

/// `map_err(file(path))`: an I/O error with the path.
pub fn file(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::File { path, source }
}

/// `e` and its sources, each once: "create vxlan weft.1: netlink ...: File exists (os error 17)".
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_names_each_cause_once() {
        let io = std::io::Error::from_raw_os_error(libc::EEXIST);
        let e = kernel("create vxlan weft.1")(weft_netops::Error::Netlink {
            op: "RTM_NEWLINK weft.1".into(),
            source: io,
        });
        let text = chain(&e);
        assert!(
            text.starts_with("create vxlan weft.1: RTM_NEWLINK weft.1"),
            "{text}"
        );
        assert_eq!(text.matches("File exists").count(), 1, "{text}");
    }
}
