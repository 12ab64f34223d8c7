//! Suite `plugin`: ADD and DEL latency of the weft plugin and of the reference
//! `bridge` + `host-local` (Debian's containernetworking-plugins), same subnet and options,
//! interleaved round by round, each in its own node netns; sequential and parallel.

use crate::stats::{summarize, Summary};
use serde::Serialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use weft_lab::plugin::Call;
use weft_lab::{Netns, PluginRunner};

#[derive(Debug, Clone)]
pub struct Options {
    pub ops: usize,
    pub rounds: usize,
    pub parallel: Vec<usize>,
    pub bin_dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Impl {
    Weft,
    Reference,
}

impl Impl {
    fn name(self) -> &'static str {
        match self {
            Impl::Weft => "weft",
            Impl::Reference => "bridge+host-local",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub implementation: &'static str,
    pub ip_masq: bool,
    pub add: Summary,
    pub del: Summary,
    /// Parallel ADD wall time per degree of parallelism (median over rounds).
    pub parallel_add_wall_ms: Vec<(usize, Summary)>,
    pub parallel_del_wall_ms: Vec<(usize, Summary)>,
}

struct Subject {
    which: Impl,
    ip_masq: bool,
    node: Netns,
    data_dir: PathBuf,
    add: Vec<Duration>,
    del: Vec<Duration>,
    par_add: Vec<(usize, Vec<Duration>)>,
    par_del: Vec<(usize, Vec<Duration>)>,
}

impl Subject {
    fn conf(&self) -> Value {
        let ranges = json!([[{ "subnet": "10.77.0.0/16" }]]);
        match self.which {
            Impl::Weft => json!({
                "cniVersion": "1.0.0", "name": "benchnet", "type": "weft", "bridge": "weft0",
                "isGateway": true, "isDefaultGateway": true, "hairpinMode": true,
                "ipMasq": self.ip_masq, "mtu": 1500,
                "ipam": { "type": "weft", "ranges": ranges, "dataDir": self.data_dir },
            }),
            Impl::Reference => json!({
                "cniVersion": "1.0.0", "name": "benchnet", "type": "bridge", "bridge": "cni0",
                "isGateway": true, "isDefaultGateway": true, "hairpinMode": true,
                "ipMasq": self.ip_masq, "mtu": 1500,
                "ipam": { "type": "host-local", "ranges": ranges, "dataDir": self.data_dir },
            }),
        }
    }

    fn plugin_type(&self) -> &'static str {
        match self.which {
            Impl::Weft => "weft",
            Impl::Reference => "bridge",
        }
    }

    fn exec(&self, bin_dir: &Path, command: &str, cid: &str, pod: &Netns, conf: &[u8]) -> Duration {
        let runner = PluginRunner::new(bin_dir, self.node.handle());
        let path = pod.path();
        let call = Call {
            command,
            container_id: cid,
            netns: Some(&path),
            ifname: "eth0",
            args: None,
        };
        let start = Instant::now();
        let out = runner
            .exec(self.plugin_type(), &call, conf)
            .unwrap_or_else(|e| panic!("exec {}: {e}", self.plugin_type()));
        let took = start.elapsed();
        assert!(
            out.ok(),
            "{} {command} {cid} failed: {} {}",
            self.which.name(),
            out.stdout,
            out.stderr
        );
        took
    }
}

pub fn run(opts: &Options) -> Vec<Row> {
    let max_par = opts.parallel.iter().copied().max().unwrap_or(0);
    let per_round = opts.ops.div_ceil(opts.rounds);
    let pods: Vec<Netns> = (0..per_round.max(max_par))
        .map(|_| Netns::new("wb-pod").expect("pod netns"))
        .collect();
    let mut subjects: Vec<Subject> = Vec::new();
    for ip_masq in [false, true] {
        for which in [Impl::Weft, Impl::Reference] {
            let node = Netns::new("wb-node").expect("node netns");
            let data_dir = std::env::temp_dir().join(format!("weft-bench-{}", node.name));
            subjects.push(Subject {
                which,
                ip_masq,
                node,
                data_dir,
                add: Vec::new(),
                del: Vec::new(),
                par_add: opts.parallel.iter().map(|p| (*p, Vec::new())).collect(),
                par_del: opts.parallel.iter().map(|p| (*p, Vec::new())).collect(),
            });
        }
    }
    // Warm-up: the first ADD creates the bridge; keep it out of the figures.
    for s in &subjects {
        let conf = s.conf().to_string();
        s.exec(&opts.bin_dir, "ADD", "warmup", &pods[0], conf.as_bytes());
        s.exec(&opts.bin_dir, "DEL", "warmup", &pods[0], conf.as_bytes());
    }
    for round in 0..opts.rounds {
        eprintln!("plugin: round {}/{}", round + 1, opts.rounds);
        for s in subjects.iter_mut() {
            let conf = s.conf().to_string();
            for (i, pod) in pods.iter().take(per_round).enumerate() {
                let t = s.exec(
                    &opts.bin_dir,
                    "ADD",
                    &format!("seq-{round}-{i}"),
                    pod,
                    conf.as_bytes(),
                );
                s.add.push(t);
            }
            for (i, pod) in pods.iter().take(per_round).enumerate() {
                let t = s.exec(
                    &opts.bin_dir,
                    "DEL",
                    &format!("seq-{round}-{i}"),
                    pod,
                    conf.as_bytes(),
                );
                s.del.push(t);
            }
        }
        for pi in 0..opts.parallel.len() {
            for s in subjects.iter_mut() {
                let p = opts.parallel[pi];
                let conf = s.conf().to_string();
                for (verb, samples) in [("ADD", 0), ("DEL", 1)] {
                    let start = Instant::now();
                    std::thread::scope(|scope| {
                        for (i, pod) in pods.iter().take(p).enumerate() {
                            let (s, conf, bin) = (&*s, &conf, &opts.bin_dir);
                            scope.spawn(move || {
                                s.exec(bin, verb, &format!("par-{round}-{i}"), pod, conf.as_bytes())
                            });
                        }
                    });
                    let wall = start.elapsed();
                    let target = if samples == 0 {
                        &mut s.par_add
                    } else {
                        &mut s.par_del
                    };
                    target[pi].1.push(wall);
                }
            }
        }
    }
    let rows = subjects
        .iter()
        .map(|s| Row {
            implementation: s.which.name(),
            ip_masq: s.ip_masq,
            add: summarize(&s.add),
            del: summarize(&s.del),
            parallel_add_wall_ms: s.par_add.iter().map(|(p, d)| (*p, summarize(d))).collect(),
            parallel_del_wall_ms: s.par_del.iter().map(|(p, d)| (*p, summarize(d))).collect(),
        })
        .collect();
    for s in &subjects {
        let _ = std::fs::remove_dir_all(&s.data_dir);
    }
    rows
}

fn mm(s: &Summary) -> String {
    format!("{:.1}-{:.1}", s.min_ms, s.max_ms)
}

pub fn print(rows: &[Row], opts: &Options) {
    println!(
        "suite plugin: {} sequential ADD+DEL per implementation in {} interleaved rounds; parallel {:?}",
        opts.ops, opts.rounds, opts.parallel
    );
    print!(
        "{:<18} {:<6} {:>9} {:>9} {:>11} {:>9} {:>9} {:>11}",
        "implementation",
        "ipMasq",
        "ADD p50",
        "ADD p99",
        "ADD min-max",
        "DEL p50",
        "DEL p99",
        "DEL min-max"
    );
    for p in &opts.parallel {
        print!(" {:>11} {:>11}", format!("ADD x{p}"), format!("DEL x{p}"));
    }
    println!("   (ms; parallel = wall time, median of rounds)");
    for r in rows {
        print!(
            "{:<18} {:<6} {:>9.2} {:>9.2} {:>11} {:>9.2} {:>9.2} {:>11}",
            r.implementation,
            if r.ip_masq { "on" } else { "off" },
            r.add.median_ms,
            r.add.p99_ms,
            mm(&r.add),
            r.del.median_ms,
            r.del.p99_ms,
            mm(&r.del)
        );
        for (a, d) in r.parallel_add_wall_ms.iter().zip(&r.parallel_del_wall_ms) {
            print!(" {:>11.1} {:>11.1}", a.1.median_ms, d.1.median_ms);
        }
        println!();
    }
    for ip_masq in [false, true] {
        let find = |name: &str| {
            rows.iter()
                .find(|r| r.implementation == name && r.ip_masq == ip_masq)
        };
        if let (Some(w), Some(r)) = (find("weft"), find("bridge+host-local")) {
            print!(
                "{:<18} {:<6} {:>9.2} {:>9.2} {:>11} {:>9.2} {:>9.2} {:>11}",
                "ratio weft/ref",
                if ip_masq { "on" } else { "off" },
                w.add.median_ms / r.add.median_ms,
                w.add.p99_ms / r.add.p99_ms,
                "",
                w.del.median_ms / r.del.median_ms,
                w.del.p99_ms / r.del.p99_ms,
                ""
            );
            for ((wa, wd), (ra, rd)) in w
                .parallel_add_wall_ms
                .iter()
                .zip(&w.parallel_del_wall_ms)
                .zip(r.parallel_add_wall_ms.iter().zip(&r.parallel_del_wall_ms))
            {
                print!(
                    " {:>11.2} {:>11.2}",
                    wa.1.median_ms / ra.1.median_ms,
                    wd.1.median_ms / rd.1.median_ms
                );
            }
            println!();
        }
    }
    println!("parallel wall time min-max over rounds (ms):");
    for r in rows {
        print!(
            "{:<18} {:<6}",
            r.implementation,
            if r.ip_masq { "on" } else { "off" }
        );
        for ((p, a), (_, d)) in r.parallel_add_wall_ms.iter().zip(&r.parallel_del_wall_ms) {
            print!("  ADD x{p} {:>13}  DEL x{p} {:>13}", mm(a), mm(d));
        }
        println!();
    }
}
