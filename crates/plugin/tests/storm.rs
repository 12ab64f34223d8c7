//! Storm with crashes: thousands of random ADD/DEL/CHECK calls of the real `weft` binary on
//! one node netns, 32 at a time, about 5% of them killed with SIGKILL at a random moment —
//! the way a runtime's timeout or an OOM kill hits a plugin. A killed ADD or DEL leaves its
//! attachment "in doubt": the runtime DELs it (retrying a killed DEL), except in the last
//! tenth of the storm, where attachments in doubt are forgotten; after the storm half of them
//! get their DEL and GC, given the attachments that must survive, cleans up the rest. Asserts:
//!
//! - no address was ever held by two live attachments at once (from the ADD results);
//! - every call that was not killed did what it must (ADD of a new attachment succeeds, DEL
//!   succeeds, CHECK of a live attachment succeeds, a second ADD is error 100);
//! - afterwards the IPAM files, the host veths, the pods' interfaces and (ipMasq variant) the
//!   masquerade set elements match exactly the surviving attachments; no temp files.
//!
//! The CI size is 600 operations per variant. The full size:
//! `WEFT_STORM_OPS=10000 cargo test -p weft-plugin --test storm -- --nocapture`
//! (`WEFT_STORM_SEED=N` replays a run's random choices, not its timing; the seed is printed).

mod common;

use common::{ips_of, ScratchDir};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use weft_lab::ns::enter_command;
use weft_lab::plugin::Call;
use weft_lab::probe::in_netns_thread;
use weft_lab::{Netns, PluginOutput, PluginRunner};
use weft_netops::netlink::Netlink;

const NETWORK: &str = "storm";
const BRIDGE: &str = "weft0";
const PARALLEL: usize = 32;
/// Attachments in play: twice the parallelism, so a random pick usually finds an idle one.
const POOL: usize = 64;
const CI_OPS: usize = 600;
const KILL_PERCENT: u64 = 5;

/// xorshift64*: tiny and deterministic for a given seed, so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    /// Never added, or the last op was a completed DEL.
    Absent,
    /// The last completed op was a successful ADD with these addresses (and result).
    Present { ips: Vec<IpAddr>, result: Value },
    /// An ADD or DEL was killed: anything from nothing to a complete attachment.
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Add,
    Del,
    Check,
    /// ADD of an attachment that exists: must be error 100 and change nothing.
    DupAdd,
}

#[derive(Default, Debug)]
struct Stats {
    ops: usize,
    kills_sent: usize,
    /// The kill landed while the process ran (it died of SIGKILL).
    killed: usize,
    by_op: BTreeMap<String, usize>,
}

struct Shared {
    rng: Rng,
    issued: usize,
    states: Vec<State>,
    busy: Vec<bool>,
    /// Address -> attachment index, for attachments in state Present.
    holders: HashMap<IpAddr, usize>,
    violations: Vec<String>,
    stats: Stats,
}

struct Variant {
    name: &'static str,
    dual_stack: bool,
    ip_masq: bool,
}

struct Node {
    ns: Netns,
    data_dir: ScratchDir,
    bin_dir: PathBuf,
    conf: Value,
}

impl Node {
    fn new(v: &Variant) -> Node {
        let ns = Netns::new("wts-node").expect("create node netns");
        let data_dir = ScratchDir::new("storm", &ns.name);
        let bin_dir = common::bin_dir();
        // A /25: 125 addresses for at most 64 attachments, so round-robin reuses addresses
        // often (every ~125 ADDs) but the range never runs out.
        let mut ranges = vec![json!([{ "subnet": "10.77.0.0/25" }])];
        if v.dual_stack {
            ranges.push(json!([{ "subnet": "fd00:77::/64" }]));
        }
        let conf = json!({
            "cniVersion": "1.1.0",
            "name": NETWORK,
            "type": "weft",
            "bridge": BRIDGE,
            "mtu": 1400,
            "ipMasq": v.ip_masq,
            "ipam": { "type": "weft", "ranges": ranges, "dataDir": data_dir.path() },
        });
        Node {
            ns,
            data_dir,
            bin_dir,
            conf,
        }
    }

    fn runner(&self) -> PluginRunner<'_> {
        PluginRunner::new(&self.bin_dir, self.ns.handle())
    }

    /// Runs the plugin; with `kill_after`, SIGKILLs it that long after the spawn. Returns the
    /// output, or None when the process died of the kill.
    fn exec(
        &self,
        command: &str,
        cid: &str,
        pod: Option<&Path>,
        conf: &Value,
        kill_after: Option<Duration>,
    ) -> Option<PluginOutput> {
        let binary = self.bin_dir.join("weft");
        let mut cmd = enter_command(self.ns.handle(), &binary);
        cmd.env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_PATH", self.runner().cni_path())
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if !cid.is_empty() {
            cmd.env("CNI_CONTAINERID", cid).env("CNI_IFNAME", "eth0");
        }
        if let Some(p) = pod {
            cmd.env("CNI_NETNS", p);
        }
        let mut child = cmd.spawn().expect("spawn weft");
        // The config is far smaller than a pipe buffer: this never blocks.
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(conf.to_string().as_bytes());
        }
        if let Some(d) = kill_after {
            std::thread::sleep(d);
            let _ = child.kill();
        }
        let out = child.wait_with_output().expect("wait for weft");
        if out.status.signal() == Some(libc::SIGKILL) {
            return None;
        }
        Some(PluginOutput {
            exit_code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    fn gc(&self, valid: &[String]) -> PluginOutput {
        let mut conf = self.conf.clone();
        conf["cni.dev/valid-attachments"] = valid
            .iter()
            .map(|c| json!({"containerID": c, "ifname": "eth0"}))
            .collect();
        self.runner()
            .exec(
                "weft",
                &Call {
                    command: "GC",
                    ..Default::default()
                },
                conf.to_string().as_bytes(),
            )
            .expect("exec weft GC")
    }

    /// Reservation files: address -> file content. Fails the test on stray temp files.
    fn reservations(&self) -> BTreeMap<IpAddr, String> {
        let dir = self.data_dir.join(NETWORK);
        let mut out = BTreeMap::new();
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(!name.starts_with(".tmp-"), "temp file left: {name}");
            if let Ok(ip) = name.parse::<IpAddr>() {
                out.insert(ip, std::fs::read_to_string(e.path()).unwrap());
            } else {
                assert!(
                    name == "lock" || name.starts_with("last_reserved_ip."),
                    "unexpected file {name} in {}",
                    dir.display()
                );
            }
        }
        out
    }

    fn masq_elements(&self) -> BTreeSet<IpAddr> {
        in_netns_thread(self.ns.handle(), || weft_firewall::pod_masq::list(NETWORK))
            .unwrap()
            .unwrap()
            .into_iter()
            .collect()
    }
}

fn cid(i: usize) -> String {
    format!("storm-{i:03}")
}

fn env_usize(key: &str) -> Option<u64> {
    std::env::var(key).ok().and_then(|v| v.parse().ok())
}

/// Picks an idle attachment and the op for it, and marks it busy. None when the storm is over.
fn schedule(sh: &mut Shared, total: usize) -> Option<(usize, Op, Option<Duration>)> {
    if sh.issued >= total {
        return None;
    }
    // In the last tenth the runtime "forgets" attachments in doubt: they are left to GC.
    let late = sh.issued >= total - total / 10;
    let mut idle: Vec<usize> = (0..POOL)
        .filter(|&i| !sh.busy[i] && (!late || sh.states[i] != State::Unknown))
        .collect();
    if idle.is_empty() {
        idle = (0..POOL).filter(|&i| !sh.busy[i]).collect();
    }
    let i = idle[sh.rng.below(idle.len() as u64) as usize];
    let r = sh.rng.below(100);
    let op = match &sh.states[i] {
        State::Absent if r < 90 => Op::Add,
        // DEL of something that is not there must succeed too.
        State::Absent => Op::Del,
        State::Present { .. } if r < 75 => Op::Del,
        State::Present { .. } if r < 88 => Op::Check,
        State::Present { .. } => Op::DupAdd,
        // The runtime retries a killed DEL, and DELs a killed ADD.
        State::Unknown => Op::Del,
    };
    if op == Op::Del {
        // From now on the attachment may no longer hold its addresses.
        if let State::Present { ips, .. } = &sh.states[i] {
            for ip in ips {
                sh.holders.remove(ip);
            }
        }
    }
    let kill =
        (sh.rng.below(100) < KILL_PERCENT).then(|| Duration::from_micros(sh.rng.below(5_001)));
    sh.busy[i] = true;
    sh.issued += 1;
    Some((i, op, kill))
}

/// Applies the outcome of one call to the model, recording anything that must not happen.
fn complete(sh: &mut Shared, i: usize, op: Op, out: Option<PluginOutput>, killed_sent: bool) {
    sh.busy[i] = false;
    sh.stats.ops += 1;
    *sh.stats.by_op.entry(format!("{op:?}")).or_default() += 1;
    if killed_sent {
        sh.stats.kills_sent += 1;
    }
    let name = cid(i);
    let Some(out) = out else {
        sh.stats.killed += 1;
        match op {
            // Neither changes anything before it fails or returns: the attachment is as it was.
            Op::Check | Op::DupAdd => {}
            Op::Add | Op::Del => sh.states[i] = State::Unknown,
        }
        return;
    };
    let mut violation = |what: String| sh.violations.push(format!("{name} {op:?}: {what}"));
    match op {
        Op::Add if out.ok() => {
            let result = out.json();
            let ips = ips_of(&result);
            if ips.is_empty() {
                violation(format!("ADD succeeded without addresses: {}", out.stdout));
            }
            for ip in &ips {
                if let Some(&other) = sh.holders.get(ip) {
                    if other != i {
                        sh.violations
                            .push(format!("{name} ADD got {ip}, which {} holds", cid(other)));
                    }
                }
                sh.holders.insert(*ip, i);
            }
            sh.states[i] = State::Present { ips, result };
        }
        Op::Add => {
            violation(format!(
                "ADD of a new attachment failed: {} {}",
                out.stdout, out.stderr
            ));
            // The plugin should have rolled back; the runtime DELs anyway.
            sh.states[i] = State::Unknown;
        }
        Op::Del if out.ok() => sh.states[i] = State::Absent,
        Op::Del => {
            violation(format!("DEL failed: {} {}", out.stdout, out.stderr));
            sh.states[i] = State::Unknown;
        }
        Op::Check if out.ok() => {}
        Op::Check => violation(format!("CHECK failed: {} {}", out.stdout, out.stderr)),
        Op::DupAdd if out.error_code() == Some(100) => {}
        Op::DupAdd => violation(format!(
            "second ADD: want error 100, got exit {} {}",
            out.exit_code, out.stdout
        )),
    }
}

/// Everything on the node matches exactly the attachments in `present`.
fn assert_node_matches(
    node: &Node,
    pods: &[Netns],
    present: &BTreeMap<usize, Vec<IpAddr>>,
    ip_masq: bool,
) {
    // IPAM: one file per address, naming its attachment.
    let want: BTreeMap<IpAddr, String> = present
        .iter()
        .flat_map(|(i, ips)| {
            ips.iter()
                .map(move |ip| (*ip, format!("{}\r\neth0", cid(*i))))
        })
        .collect();
    assert_eq!(node.reservations(), want, "IPAM reservations");

    // Host side: lo, the bridge and exactly one veth per surviving attachment, with its alias,
    // on the bridge, up. Anything else (an alias-less leftover too) is a leak.
    let mut nl = Netlink::in_netns(node.ns.handle()).unwrap();
    let links = nl.list_links().unwrap();
    let bridge = links.iter().find(|l| l.name == BRIDGE).map(|l| l.index);
    let mut have_aliases = BTreeSet::new();
    for l in &links {
        if l.name == "lo" || l.name == BRIDGE {
            continue;
        }
        let alias = l.alias.clone().unwrap_or_default();
        assert!(
            alias.starts_with(&format!("weft:{NETWORK}:")),
            "stray link {} (alias {alias:?}) on the node",
            l.name
        );
        assert_eq!(l.master, bridge, "{} not on the bridge", l.name);
        assert!(l.up, "{} is down", l.name);
        have_aliases.insert(alias);
    }
    let want_aliases: BTreeSet<String> = present
        .keys()
        .map(|i| format!("weft:{NETWORK}:{}:eth0", cid(*i)))
        .collect();
    assert_eq!(have_aliases, want_aliases, "host veths");

    // Pod side: eth0 with exactly its addresses where the attachment lives, else only lo.
    for (i, pod) in pods.iter().enumerate() {
        let mut pnl = Netlink::in_netns(pod.handle()).unwrap();
        let names: BTreeSet<String> = pnl
            .list_links()
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .collect();
        match present.get(&i) {
            Some(ips) => {
                assert_eq!(
                    names,
                    BTreeSet::from(["lo".into(), "eth0".into()]),
                    "{}",
                    cid(i)
                );
                let eth0 = pnl.get_link_by_name("eth0").unwrap().unwrap();
                let mut addrs: Vec<IpAddr> = pnl
                    .list_addresses(Some(eth0.index))
                    .unwrap()
                    .into_iter()
                    .map(|(_, a)| a.addr())
                    .filter(|a| !matches!(a, IpAddr::V6(v6) if v6.segments()[0] == 0xfe80))
                    .collect();
                addrs.sort();
                let mut want = ips.clone();
                want.sort();
                assert_eq!(addrs, want, "addresses of {}'s eth0", cid(i));
            }
            None => assert_eq!(
                names,
                BTreeSet::from(["lo".into()]),
                "{} should be gone",
                cid(i)
            ),
        }
    }

    if ip_masq {
        let want: BTreeSet<IpAddr> = present.values().flatten().copied().collect();
        assert_eq!(node.masq_elements(), want, "ipMasq set elements");
    }
}

fn storm(v: Variant) {
    let total = env_usize("WEFT_STORM_OPS").unwrap_or(CI_OPS as u64) as usize;
    let seed = env_usize("WEFT_STORM_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1
    });
    eprintln!(
        "storm {}: {total} ops, seed {seed} (WEFT_STORM_SEED)",
        v.name
    );
    let node = Node::new(&v);
    let pods: Vec<Netns> = (0..POOL).map(|_| Netns::new("wts-pod").unwrap()).collect();
    let shared = Mutex::new(Shared {
        rng: Rng(seed),
        issued: 0,
        states: vec![State::Absent; POOL],
        busy: vec![false; POOL],
        holders: HashMap::new(),
        violations: Vec::new(),
        stats: Stats::default(),
    });

    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..PARALLEL {
            s.spawn(|| loop {
                let Some((i, op, kill)) = schedule(&mut shared.lock().unwrap(), total) else {
                    break;
                };
                let pod = pods[i].path();
                let mut conf = node.conf.clone();
                let command = match op {
                    Op::Add | Op::DupAdd => "ADD",
                    Op::Del => "DEL",
                    Op::Check => {
                        if let State::Present { result, .. } = &shared.lock().unwrap().states[i] {
                            conf["prevResult"] = result.clone();
                        }
                        "CHECK"
                    }
                };
                let out = node.exec(command, &cid(i), Some(&pod), &conf, kill);
                complete(&mut shared.lock().unwrap(), i, op, out, kill.is_some());
            });
        }
    });
    let storm_time = started.elapsed();
    // A killed plugin's nft child (ipMasq) is not killed with it: let such orphans finish.
    std::thread::sleep(Duration::from_millis(200));

    let mut sh = shared.into_inner().unwrap();
    // Recovery as a runtime does it: DEL half of the attachments left in doubt (retrying
    // until one is not killed, which here means just once); GC gets the rest.
    let unknown: Vec<usize> = (0..POOL)
        .filter(|&i| sh.states[i] == State::Unknown)
        .collect();
    for (n, &i) in unknown.iter().enumerate() {
        if n % 2 == 0 {
            let out = node
                .exec("DEL", &cid(i), Some(&pods[i].path()), &node.conf, None)
                .unwrap();
            assert!(out.ok(), "recovery DEL {}: {}", cid(i), out.stdout);
            sh.states[i] = State::Absent;
        }
    }
    let present: BTreeMap<usize, Vec<IpAddr>> = (0..POOL)
        .filter_map(|i| match &sh.states[i] {
            State::Present { ips, .. } => Some((i, ips.clone())),
            _ => None,
        })
        .collect();
    let valid: Vec<String> = present.keys().map(|i| cid(*i)).collect();
    let out = node.gc(&valid);
    assert!(out.ok(), "GC: {} {}", out.stdout, out.stderr);
    let total_time = started.elapsed();

    eprintln!(
        "storm {}: {} ops in {:.1} s ({:?}); kills sent {}, landed {}; {} attachments in doubt \
         ({} DEL'd, {} left to GC), {} survive; violations: {}",
        v.name,
        sh.stats.ops,
        storm_time.as_secs_f64(),
        sh.stats.by_op,
        sh.stats.kills_sent,
        sh.stats.killed,
        unknown.len(),
        unknown.len().div_ceil(2),
        unknown.len() / 2,
        present.len(),
        sh.violations.len(),
    );
    assert!(
        sh.violations.is_empty(),
        "{} violations:\n{}",
        sh.violations.len(),
        sh.violations.join("\n")
    );
    assert_eq!(sh.stats.ops, total);
    assert_node_matches(&node, &pods, &present, v.ip_masq);

    // And the survivors still work end to end: DEL them all, then nothing is left.
    for i in present.keys() {
        let out = node
            .exec("DEL", &cid(*i), Some(&pods[*i].path()), &node.conf, None)
            .unwrap();
        assert!(out.ok(), "final DEL {}: {}", cid(*i), out.stdout);
    }
    assert_node_matches(&node, &pods, &BTreeMap::new(), v.ip_masq);
    eprintln!(
        "storm {}: done in {:.1} s, leaks found: 0",
        v.name,
        total_time.as_secs_f64()
    );
}

#[test]
fn storm_with_kills_dual_stack() {
    storm(Variant {
        name: "dual-stack",
        dual_stack: true,
        ip_masq: false,
    });
}

#[test]
fn storm_with_kills_ip_masq() {
    storm(Variant {
        name: "ipMasq",
        dual_stack: false,
        ip_masq: true,
    });
}

// ---- Deterministic replays of the crash windows the storm hits only by chance ----

fn one_node(ip_masq: bool) -> (Node, Netns) {
    let node = Node::new(&Variant {
        name: "replay",
        dual_stack: false,
        ip_masq,
    });
    let pod = Netns::new("wts-rpod").unwrap();
    (node, pod)
}

fn add_ok(node: &Node, cid: &str, pod: &Netns) -> Value {
    let out = node
        .exec("ADD", cid, Some(&pod.path()), &node.conf, None)
        .unwrap();
    assert!(out.ok(), "ADD {cid}: {} {}", out.stdout, out.stderr);
    out.json()
}

/// An ADD killed between creating the veth pair and setting the host end's alias leaves an
/// unlabelled veth and a reservation. GC must remove both (it used to release the
/// reservation and leave the veth: only the alias identified weft's links).
#[test]
fn gc_removes_the_veth_of_an_add_killed_before_its_alias() {
    let (node, pod) = one_node(false);
    let result = add_ok(&node, "half-add", &pod);
    let host = result["interfaces"][1]["name"]
        .as_str()
        .unwrap()
        .to_string();
    // Replay the crash: the alias was never set.
    let mut nl = Netlink::in_netns(node.ns.handle()).unwrap();
    let link = nl.get_link_by_name(&host).unwrap().unwrap();
    nl.set_alias(link.index, "").unwrap();
    let link = nl.get_link_by_name(&host).unwrap().unwrap();
    assert!(
        !link.alias.unwrap_or_default().starts_with("weft:"),
        "alias cleared"
    );

    let out = node.gc(&[]);
    assert!(out.ok(), "GC: {}", out.stdout);
    assert!(nl.get_link_by_name(&host).unwrap().is_none(), "{host} left");
    assert!(node.reservations().is_empty());
    let mut pnl = Netlink::in_netns(pod.handle()).unwrap();
    assert!(pnl.get_link_by_name("eth0").unwrap().is_none());
}

/// A fake `nft` that hangs: the plugin is then killed while it waits for it, as a kill -9
/// during DEL's masquerade removal would.
fn hanging_nft(node: &Node) -> PathBuf {
    let dir = node.data_dir.join("fake-bin");
    std::fs::create_dir_all(&dir).unwrap();
    let nft = dir.join("nft");
    std::fs::write(&nft, "#!/bin/sh\nexec sleep 3\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&nft, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// ipMasq: a DEL killed while removing the masquerade element used to leave the element
/// behind for good (it released the addresses first, so the retried DEL found nothing to
/// unmasquerade). Now the addresses are released last, and the retry finishes the job.
#[test]
fn del_killed_during_ip_masq_removal_is_finished_by_the_retry() {
    let (node, pod) = one_node(true);
    let result = add_ok(&node, "half-del", &pod);
    let ip = ips_of(&result)[0];
    assert_eq!(node.masq_elements(), BTreeSet::from([ip]));

    let fake = hanging_nft(&node);
    let mut cmd = enter_command(node.ns.handle(), node.bin_dir.join("weft"));
    cmd.env_clear()
        .env("CNI_COMMAND", "DEL")
        .env("CNI_CONTAINERID", "half-del")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_NETNS", pod.path())
        .env("CNI_PATH", &node.bin_dir)
        .env(
            "PATH",
            format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", fake.display()),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(node.conf.to_string().as_bytes())
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "DEL was still running"
    );

    // The runtime retries.
    let out = node
        .exec("DEL", "half-del", Some(&pod.path()), &node.conf, None)
        .unwrap();
    assert!(out.ok(), "retried DEL: {}", out.stdout);
    assert!(node.masq_elements().is_empty(), "masquerade element leaked");
    assert!(node.reservations().is_empty());
}

/// ipMasq: an element whose address no attachment holds (e.g. a killed ADD's nft child that
/// finished after the runtime's DEL) is removed by GC; valid attachments keep theirs.
#[test]
fn gc_removes_ip_masq_elements_nobody_holds() {
    let (node, pod) = one_node(true);
    let pod2 = Netns::new("wts-rpod").unwrap();
    let keep = ips_of(&add_ok(&node, "keep", &pod))[0];
    let stale = ips_of(&add_ok(&node, "stale", &pod2))[0];
    // Replay: the reservation is gone but the element stayed.
    weft_ipam::Store::open(&node.data_dir, NETWORK)
        .unwrap()
        .release(&weft_ipam::Attachment::new("stale", "eth0"))
        .unwrap();
    assert_eq!(node.masq_elements(), BTreeSet::from([keep, stale]));

    let out = node.gc(&["keep".to_string(), "stale".to_string()]);
    assert!(out.ok(), "GC: {}", out.stdout);
    assert_eq!(node.masq_elements(), BTreeSet::from([keep]));
    let _ = node.exec("DEL", "keep", Some(&pod.path()), &node.conf, None);
}
