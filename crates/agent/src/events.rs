//! Collects the plugin's event files (see the plugin's `events` module) into the CNI metrics.
//! The plugin writes `<dir>/<pid>-<nanos>.json` (renamed into place, never partial); each one
//! is read once and deleted.

use crate::metrics::{CommandLabel, ErrorLabel, Metrics};
use serde::Deserialize;
use std::path::Path;

#[derive(Deserialize)]
struct Event {
    command: String,
    code: u32,
    seconds: f64,
}

/// Reads and removes every pending event; returns how many were collected.
pub fn collect(dir: &Path, metrics: &Metrics) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        let path = entry.path();
        if let Ok(raw) = std::fs::read(&path) {
            if let Ok(ev) = serde_json::from_slice::<Event>(&raw) {
                metrics
                    .cni_duration
                    .get_or_create(&CommandLabel {
                        command: ev.command.clone(),
                    })
                    .observe(ev.seconds);
                if ev.code != 0 {
                    metrics
                        .cni_errors
                        .get_or_create(&ErrorLabel {
                            command: ev.command,
                            code: ev.code.to_string(),
                        })
                        .inc();
                }
                n += 1;
            }
        }
        let _ = std::fs::remove_file(&path);
    }
    n
}

/// Creates the event directory (0700: only root's plugin writes there).
pub fn prepare(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}
