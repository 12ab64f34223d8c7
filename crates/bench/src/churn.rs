//! Suite `churn`: sustained pod churn on one node. `workers` threads, each with its own pod
//! netns, run ADD then DEL of the weft plugin back to back (a fresh container id every cycle)
//! for `duration`; then the node is checked for leftovers: reservations in the IPAM dir, host
//! veths, ipMasq set elements, interfaces left in the pod netns.

use crate::stats::{spread, summarize, Spread, Summary};
use serde::Serialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use weft_lab::plugin::Call;
use weft_lab::{Netns, PluginRunner};
use weft_netops::Netlink;

pub const NETWORK: &str = "benchnet";

#[derive(Debug, Clone)]
pub struct Options {
    pub duration: Duration,
    pub workers: usize,
    pub ip_masq: bool,
    pub bin_dir: PathBuf,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Leaks {
    /// Reservation files left in `<dataDir>/<network>/`.
    pub reservations: Vec<String>,
    /// Host veths (`weft*`, kind veth) left in the node netns.
    pub host_veths: Vec<String>,
    /// Elements left in the ipMasq sets (None: ipMasq off, not checked).
    pub masq_elements: Option<Vec<String>>,
    /// Interfaces other than `lo` left in the pod netns.
    pub pod_interfaces: Vec<String>,
    /// Why a check could not run.
    pub check_errors: Vec<String>,
}

impl Leaks {
    pub fn clean(&self) -> bool {
        self.reservations.is_empty()
            && self.host_veths.is_empty()
            && self.masq_elements.as_ref().is_none_or(Vec::is_empty)
            && self.pod_interfaces.is_empty()
            && self.check_errors.is_empty()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub workers: usize,
    pub ip_masq: bool,
    pub seconds: f64,
    pub cycles: usize,
    pub cycles_per_s: f64,
    /// Cycles completed in each whole second of the run.
    pub per_second: Spread,
    pub add: Summary,
    pub del: Summary,
    pub failures: usize,
    pub first_failures: Vec<String>,
    pub leaks: Leaks,
    pub leak_free: bool,
}

struct Sample {
    done_at: Duration,
    add: Duration,
    del: Duration,
}

fn conf(data_dir: &Path, ip_masq: bool) -> Vec<u8> {
    json!({
        "cniVersion": "1.0.0", "name": NETWORK, "type": "weft", "bridge": "weft0",
        "isGateway": true, "isDefaultGateway": true, "hairpinMode": true,
        "ipMasq": ip_masq, "mtu": 1500,
        "ipam": { "type": "weft", "ranges": [[{ "subnet": "10.78.0.0/16" }]], "dataDir": data_dir },
    })
    .to_string()
    .into_bytes()
}

fn exec(
    runner: &PluginRunner,
    command: &str,
    cid: &str,
    pod: &Path,
    conf: &[u8],
) -> Result<Duration, String> {
    let call = Call {
        command,
        container_id: cid,
        netns: Some(pod),
        ifname: "eth0",
        args: None,
    };
    let start = Instant::now();
    let out = runner
        .exec("weft", &call, conf)
        .map_err(|e| format!("exec weft {command}: {e}"))?;
    let took = start.elapsed();
    if !out.ok() {
        return Err(format!(
            "{command} {cid}: {} {}",
            out.stdout.trim(),
            out.stderr.trim()
        ));
    }
    Ok(took)
}

pub fn run(opts: &Options) -> Result<Report, String> {
    let node = Netns::new("wb-churn").map_err(|e| format!("create node netns: {e}"))?;
    let data_dir = std::env::temp_dir().join(format!("weft-bench-{}", node.name));
    let pods: Vec<Netns> = (0..opts.workers)
        .map(|_| Netns::new("wb-cpod"))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("create pod netns: {e}"))?;
    let conf = conf(&data_dir, opts.ip_masq);

    // Warm-up: the first ADD creates the bridge (and the ipMasq table).
    let runner = PluginRunner::new(&opts.bin_dir, node.handle());
    exec(&runner, "ADD", "warmup", &pods[0].path(), &conf)?;
    exec(&runner, "DEL", "warmup", &pods[0].path(), &conf)?;

    eprintln!(
        "churn: {} workers for {:?}, ipMasq {}",
        opts.workers,
        opts.duration,
        if opts.ip_masq { "on" } else { "off" }
    );
    let samples: Mutex<Vec<Sample>> = Mutex::new(Vec::new());
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let deadline = start + opts.duration;
    std::thread::scope(|s| {
        for (w, pod) in pods.iter().enumerate() {
            let (samples, failures, stop, conf, node) = (&samples, &failures, &stop, &conf, &node);
            s.spawn(move || {
                let runner = PluginRunner::new(&opts.bin_dir, node.handle());
                let path = pod.path();
                let mut i = 0u64;
                while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                    let cid = format!("churn-{w}-{i}");
                    i += 1;
                    let add = exec(&runner, "ADD", &cid, &path, conf);
                    // DEL even after a failed ADD, as a runtime does.
                    let del = exec(&runner, "DEL", &cid, &path, conf);
                    match (add, del) {
                        (Ok(add), Ok(del)) => samples.lock().unwrap().push(Sample {
                            done_at: start.elapsed(),
                            add,
                            del,
                        }),
                        (a, d) => {
                            let mut f = failures.lock().unwrap();
                            f.extend(a.err());
                            f.extend(d.err());
                            if f.len() > 1000 {
                                stop.store(true, Ordering::Relaxed);
                            }
                        }
                    }
                }
            });
        }
    });
    let elapsed = start.elapsed();
    let samples = samples.into_inner().unwrap();
    let failures = failures.into_inner().unwrap();

    let leaks = check_leaks(&node, &pods, &data_dir, opts.ip_masq);
    let _ = std::fs::remove_dir_all(&data_dir);

    let whole_secs = elapsed.as_secs().max(1) as usize;
    let mut buckets = vec![0f64; whole_secs];
    for s in &samples {
        let b = s.done_at.as_secs() as usize;
        if b < whole_secs {
            buckets[b] += 1.0;
        }
    }
    let adds: Vec<Duration> = samples.iter().map(|s| s.add).collect();
    let dels: Vec<Duration> = samples.iter().map(|s| s.del).collect();
    Ok(Report {
        workers: opts.workers,
        ip_masq: opts.ip_masq,
        seconds: elapsed.as_secs_f64(),
        cycles: samples.len(),
        cycles_per_s: samples.len() as f64 / elapsed.as_secs_f64(),
        per_second: spread(&buckets),
        add: summarize(&adds),
        del: summarize(&dels),
        failures: failures.len(),
        first_failures: failures.into_iter().take(5).collect(),
        leak_free: leaks.clean(),
        leaks,
    })
}

/// Reads back what the plugin left: files, links, nft set elements.
pub fn check_leaks(node: &Netns, pods: &[Netns], data_dir: &Path, ip_masq: bool) -> Leaks {
    let mut leaks = Leaks::default();
    let dir = data_dir.join(NETWORK);
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name != "lock" && !name.starts_with("last_reserved_ip") {
                    leaks.reservations.push(name);
                }
            }
        }
        Err(e) => leaks
            .check_errors
            .push(format!("read {}: {e}", dir.display())),
    }
    match Netlink::in_netns(node.handle()).and_then(|mut nl| nl.list_links()) {
        Ok(links) => {
            leaks.host_veths = links
                .into_iter()
                .filter(|l| l.name.starts_with("weft") && l.kind.as_deref() == Some("veth"))
                .map(|l| l.name)
                .collect()
        }
        Err(e) => leaks
            .check_errors
            .push(format!("list links in {}: {e}", node.name)),
    }
    for pod in pods {
        match Netlink::in_netns(pod.handle()).and_then(|mut nl| nl.list_links()) {
            Ok(links) => leaks.pod_interfaces.extend(
                links
                    .into_iter()
                    .filter(|l| l.name != "lo")
                    .map(|l| format!("{}:{}", pod.name, l.name)),
            ),
            Err(e) => leaks
                .check_errors
                .push(format!("list links in {}: {e}", pod.name)),
        }
    }
    if ip_masq {
        match masq_elements(node) {
            Ok(v) => leaks.masq_elements = Some(v),
            Err(e) => leaks.check_errors.push(e),
        }
    }
    leaks
}

/// Elements of the ipMasq sets of [`NETWORK`] (`nft -j list set inet weft-ipmasq <set>`).
fn masq_elements(node: &Netns) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for set in [format!("{NETWORK}-v4"), format!("{NETWORK}-v6")] {
        let mut cmd = node.command("nft");
        cmd.args(["-j", "list", "set", "inet", "weft-ipmasq", &set]);
        let text = match crate::util::output(cmd, &format!("nft list set {set}")) {
            Ok(t) => t,
            // The v6 set exists only once an IPv6 pod was masqueraded.
            Err(e) if e.contains("No such file") => continue,
            Err(e) => return Err(e),
        };
        let doc: Value = serde_json::from_str(&text).map_err(|e| format!("nft JSON: {e}"))?;
        for item in doc["nftables"].as_array().into_iter().flatten() {
            for el in item["set"]["elem"].as_array().into_iter().flatten() {
                out.push(el.to_string());
            }
        }
    }
    Ok(out)
}

pub fn print(r: &Report) {
    println!(
        "suite churn: {} workers, ADD+DEL cycles of the weft plugin for {:.0} s, ipMasq {}",
        r.workers,
        r.seconds,
        if r.ip_masq { "on" } else { "off" }
    );
    println!(
        "{:>8} {:>10} {:>22} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "cycles",
        "cycles/s",
        "per 1 s: med (min-max)",
        "ADD p50",
        "ADD p99",
        "DEL p50",
        "DEL p99",
        "failures"
    );
    println!(
        "{:>8} {:>10.1} {:>22} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9}",
        r.cycles,
        r.cycles_per_s,
        format!(
            "{:.0} ({:.0}-{:.0})",
            r.per_second.median, r.per_second.min, r.per_second.max
        ),
        r.add.median_ms,
        r.add.p99_ms,
        r.del.median_ms,
        r.del.p99_ms,
        r.failures
    );
    for f in &r.first_failures {
        println!("  failure: {f}");
    }
    let l = &r.leaks;
    println!(
        "leak check: {} (reservations left {}, host veths left {}, ipMasq elements left {}, pod interfaces left {})",
        if r.leak_free { "CLEAN" } else { "LEAKED" },
        l.reservations.len(),
        l.host_veths.len(),
        l.masq_elements
            .as_ref()
            .map(|v| v.len().to_string())
            .unwrap_or_else(|| "n/a (ipMasq off)".into()),
        l.pod_interfaces.len()
    );
    for e in &l.check_errors {
        println!("  check error: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The leak check must see what an ADD without DEL leaves behind, and nothing after DEL.
    /// Needs root and the `weft` binary (target/<profile>/weft or $WEFT_BIN_DIR).
    #[test]
    fn leak_check_sees_an_attachment_left_behind() {
        let Ok(bin_dir) = weft_lab::cluster::find_bin_dir(&["weft"]) else {
            eprintln!("skipped: build the plugin first (cargo build -p weft-plugin)");
            return;
        };
        let node = Netns::new("wb-tnode").unwrap();
        let pods = vec![Netns::new("wb-tpod").unwrap()];
        let data_dir = std::env::temp_dir().join(format!("weft-bench-{}", node.name));
        for ip_masq in [false, true] {
            let conf = conf(&data_dir, ip_masq);
            let runner = PluginRunner::new(&bin_dir, node.handle());
            exec(&runner, "ADD", "leaky", &pods[0].path(), &conf).unwrap();
            let leaks = check_leaks(&node, &pods, &data_dir, ip_masq);
            assert!(!leaks.clean());
            assert_eq!(leaks.reservations.len(), 1, "{leaks:?}");
            assert_eq!(leaks.host_veths.len(), 1, "{leaks:?}");
            assert_eq!(leaks.pod_interfaces.len(), 1, "{leaks:?}");
            if ip_masq {
                assert_eq!(leaks.masq_elements.as_ref().unwrap().len(), 1, "{leaks:?}");
            }
            exec(&runner, "DEL", "leaky", &pods[0].path(), &conf).unwrap();
            let leaks = check_leaks(&node, &pods, &data_dir, ip_masq);
            assert!(leaks.clean(), "{leaks:?}");
        }
        let _ = std::fs::remove_dir_all(&data_dir);
    }
}
