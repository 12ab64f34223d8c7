//! A real Kubernetes (v1.20.2, built by `scripts/kube-build.sh`) in the lab.
//!
//! * [`certs`]: the PKI and kubeconfigs (openssl CLI).
//! * [`control_plane`]: etcd, kube-apiserver, kube-controller-manager, kube-scheduler in a
//!   given netns; usable on its own (a benchmark, a test) or by the lab's
//!   `--datastore kubernetes`.

pub mod certs;
pub mod control_plane;
pub mod image;
pub mod lab;
pub mod node;

pub use control_plane::{ControlPlane, ControlPlaneSpec};

use crate::error::LabError;
use std::path::PathBuf;

/// The Kubernetes version the lab runs (what kube-build.sh builds).
pub const KUBE_VERSION: &str = "v1.20.2";

/// The binaries the lab needs from the assets dir.
pub const BINARIES: &[&str] = &[
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kubectl",
    "kube-proxy",
];

/// Where the Kubernetes binaries are: `$WEFT_KUBE_ASSETS` (as `scripts/kube-build.sh`
/// honours it), else kube-build.sh's cache (`$WEFT_KUBE_CACHE`, default
/// /var/cache/weft/kubernetes, `/<version>/bin`).
pub fn assets_dir() -> Result<PathBuf, LabError> {
    let dir = match std::env::var_os("WEFT_KUBE_ASSETS") {
        Some(d) => PathBuf::from(d),
        None => std::env::var_os("WEFT_KUBE_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/cache/weft/kubernetes"))
            .join(KUBE_VERSION)
            .join("bin"),
    };
    for b in BINARIES {
        if !dir.join(b).is_file() {
            return Err(LabError::Setup(format!(
                "{b} not found in {}: run scripts/kube-build.sh (builds Kubernetes {KUBE_VERSION} \
                 once, ~10 min) or set WEFT_KUBE_ASSETS",
                dir.display()
            )));
        }
    }
    Ok(dir)
}
