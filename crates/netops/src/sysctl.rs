//! Read and write /proc/sys. Network entries (net/...) belong to the network
//! namespace of the calling thread, so wrap calls in `netns::run_in` to act
//! on another namespace.

use std::fs;
use std::path::PathBuf;

use crate::error::{Error, Result};

fn full_path(key: &str) -> Result<PathBuf> {
    let key = key.trim_start_matches("/proc/sys/");
    if key.is_empty()
        || key.starts_with('/')
        || key
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(Error::Invalid(format!("bad sysctl path {key:?}")));
    }
    Ok(PathBuf::from("/proc/sys").join(key))
}

/// Write `value` to /proc/sys/`key`, e.g. `write("net/ipv4/ip_forward", "1")`.
/// Path form with slashes (interface names may contain dots).
pub fn write(key: &str, value: &str) -> Result<()> {
    let path = full_path(key)?;
    fs::write(&path, value.as_bytes()).map_err(|e| Error::io("write sysctl", path, e))
}

/// Turns IP forwarding on for the families asked for, in the calling thread's network
/// namespace; writes only what is not on yet (the plugin and weftd both need it: a bridge that
/// is the pods' gateway routes).
pub fn enable_forwarding(ipv4: bool, ipv6: bool) -> Result<()> {
    let keys = [
        (ipv4, "net/ipv4/ip_forward"),
        (ipv6, "net/ipv6/conf/all/forwarding"),
    ];
    for (_, key) in keys.into_iter().filter(|(wanted, _)| *wanted) {
        if read(key).map(|v| v.trim() == "1").unwrap_or(false) {
            continue;
        }
        write(key, "1")?;
    }
    Ok(())
}

/// Read /proc/sys/`key`, trimmed of the trailing newline.
pub fn read(key: &str) -> Result<String> {
    let path = full_path(key)?;
    fs::read_to_string(&path)
        .map(|s| s.trim_end().to_string())
        .map_err(|e| Error::io("read sysctl", path, e))
}
