//! Operation events for weftd's metrics: with `metricsDir` set, each invocation drops one tiny
//! JSON file there (`{"command","code","seconds"}`; code 0 = success), written to a temp name
//! and renamed so the agent never reads half a file. The plugin never depends on the agent:
//! if the directory is missing, full or unwritable, the event is dropped silently.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

/// Above this many pending events the agent is evidently not collecting: stop adding.
const MAX_PENDING: usize = 10_000;

pub fn record(dir: &Path, command: &str, code: u32, took: Duration) {
    if std::fs::read_dir(dir)
        .map(|d| d.take(MAX_PENDING).count() >= MAX_PENDING)
        .unwrap_or(true)
    {
        return;
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let name = format!("{}-{stamp}.json", std::process::id());
    let tmp = dir.join(format!(".{name}"));
    let body = format!(
        "{{\"command\":\"{command}\",\"code\":{code},\"seconds\":{:.6}}}",
        took.as_secs_f64()
    );
    let written = std::fs::File::create(&tmp).and_then(|mut f| f.write_all(body.as_bytes()));
    if written.is_err() || std::fs::rename(&tmp, dir.join(name)).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}
