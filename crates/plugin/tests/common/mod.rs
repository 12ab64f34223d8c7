//! What the plugin's test files share: where the built `weft` is, a scratch directory per test
//! node (removed on drop, also when the test panics), and reading a result's addresses.

#![allow(dead_code)] // each test file uses a different part

use serde_json::Value;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The directory holding the built `weft` (also the CNI_PATH for delegated plugins).
pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_weft"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A directory under the temp dir named after the test node's netns, removed on drop.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    pub fn new(kind: &str, netns_name: &str) -> ScratchDir {
        ScratchDir(std::env::temp_dir().join(format!("weft-{kind}-{netns_name}")))
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.0.join(p)
    }
}

impl AsRef<Path> for ScratchDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The addresses of an ADD result's `ips`, without prefix lengths.
pub fn ips_of(result: &Value) -> Vec<IpAddr> {
    result["ips"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}
