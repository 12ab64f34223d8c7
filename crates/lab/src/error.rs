//! The lab's error type.

use crate::conflist::ConfListError;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("{op}: {source}")]
    Net {
        op: String,
        source: weft_netops::Error,
    },
    #[error("{op} {}: {source}", .path.display())]
    Io {
        op: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
    #[error("{missing} not found in {searched:?}: build it (cargo build --workspace, or --release for the demo) or set WEFT_BIN_DIR")]
    MissingBinary {
        missing: String,
        searched: Vec<PathBuf>,
    },
    #[error("{what}: {detail}\n--- last lines of {} ---\n{tail}", .log.display())]
    Process {
        what: String,
        detail: String,
        log: PathBuf,
        tail: String,
    },
    #[error("pod {pod} on {node}: {source}")]
    Pod {
        pod: String,
        node: String,
        source: Box<ConfListError>,
    },
    #[error("weft-lab is shutting down")]
    Interrupted,
}

pub(crate) fn net_err(op: impl Into<String>) -> impl FnOnce(weft_netops::Error) -> LabError {
    let op = op.into();
    move |source| LabError::Net { op, source }
}

pub(crate) fn io_err(op: &str, path: &Path) -> impl FnOnce(std::io::Error) -> LabError {
    let (op, path) = (op.to_string(), path.to_path_buf());
    move |source| LabError::Io { op, path, source }
}
