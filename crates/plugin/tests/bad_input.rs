//! Bad input: the real `weft` binary, exec'd in a node netns with a pod netns, fed malformed,
//! mistyped, unsupported or impossible input. Every case must exit 1 with the spec's error
//! JSON on stdout (the right code, a message naming the culprit), and change nothing: links,
//! addresses and routes of the node and the pod netns, the node's forwarding sysctls and every
//! file under the IPAM data dirs are compared before and after.

mod common;

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use weft_lab::ns::enter_command;
use weft_lab::probe::in_netns_thread;
use weft_lab::Netns;
use weft_netops::netlink::Netlink;

const NETWORK: &str = "testnet";

/// One call of the plugin and what it must answer.
struct Case {
    what: String,
    /// Environment overrides: Some(value) sets, None unsets.
    env: Vec<(&'static str, Option<String>)>,
    stdin: Vec<u8>,
    code: u64,
    /// Text the message (or its details) must contain: the culprit.
    needle: String,
    /// Run the plugin with this directory bind-mounted read-only (in its own mount ns).
    read_only: Option<PathBuf>,
}

impl Case {
    fn new(what: impl Into<String>, command: &str, conf: &Value, code: u64, needle: &str) -> Case {
        Case {
            what: what.into(),
            env: vec![("CNI_COMMAND", Some(command.to_string()))],
            stdin: conf.to_string().into_bytes(),
            code,
            needle: needle.to_string(),
            read_only: None,
        }
    }
    fn raw(what: &str, stdin: impl Into<Vec<u8>>, code: u64, needle: &str) -> Case {
        Case {
            stdin: stdin.into(),
            ..Case::new(what, "ADD", &Value::Null, code, needle)
        }
    }
    fn env(mut self, key: &'static str, value: Option<&str>) -> Case {
        self.env.push((key, value.map(String::from)));
        self
    }
    fn read_only(mut self, dir: &Path) -> Case {
        self.read_only = Some(dir.to_path_buf());
        self
    }
}

/// A node netns, a pod netns, and a scratch dir for IPAM data dirs and fake plugins.
struct Node {
    ns: Netns,
    pod: Netns,
    root: PathBuf,
    bin_dir: PathBuf,
}

impl Node {
    fn new() -> Node {
        let ns = Netns::new("wtb-node").expect("create node netns");
        let pod = Netns::new("wtb-pod").expect("create pod netns");
        let root = std::env::temp_dir().join(format!("weft-bad-{}", ns.name));
        std::fs::create_dir_all(root.join("bin")).unwrap();
        let bin_dir = common::bin_dir();
        Node {
            ns,
            pod,
            root,
            bin_dir,
        }
    }

    /// A valid config whose IPAM store lives in `<root>/<data>`.
    fn conf(&self, version: &str, data: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": NETWORK,
            "type": "weft",
            "bridge": "weft0",
            "mtu": 1400,
            "ipam": {
                "type": "weft",
                "ranges": [[{ "subnet": "10.99.0.0/24" }]],
                "dataDir": self.root.join(data),
            },
        })
    }

    /// Creates the store of `<root>/<data>` (directory and lock file) with a STATUS call, so
    /// that a later failing call that opens it has nothing left to create.
    fn prepare_store(&self, data: &str) {
        let case = Case::new("prepare", "STATUS", &self.conf("1.1.0", data), 0, "");
        let (code, out) = self.exec(&case);
        assert_eq!(code, 0, "STATUS to prepare {data}: {out}");
    }

    /// Writes an executable fake IPAM plugin into `<root>/bin`.
    fn fake_plugin(&self, name: &str, script: &str) {
        let path = self.root.join("bin").join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Runs the plugin in the node netns with the case's environment; (exit code, stdout).
    fn exec(&self, case: &Case) -> (i32, String) {
        let mut cmd = enter_command(self.ns.handle(), self.bin_dir.join("weft"));
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_CONTAINERID", "ctr-bad")
            .env("CNI_NETNS", self.pod.path())
            .env("CNI_IFNAME", "eth0")
            .env(
                "CNI_PATH",
                format!(
                    "{}:{}",
                    self.bin_dir.display(),
                    self.root.join("bin").display()
                ),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &case.env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        if let Some(dir) = &case.read_only {
            let dir = CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: only async-signal-safe syscalls between fork and exec; the strings are
            // allocated before the fork. The mounts live in the child's own mount namespace.
            unsafe {
                cmd.pre_exec(move || {
                    let null = std::ptr::null();
                    let check = |r: libc::c_int| {
                        if r == 0 {
                            Ok(())
                        } else {
                            Err(std::io::Error::last_os_error())
                        }
                    };
                    check(libc::unshare(libc::CLONE_NEWNS))?;
                    let root = c"/";
                    check(libc::mount(
                        null,
                        root.as_ptr(),
                        null,
                        libc::MS_REC | libc::MS_PRIVATE,
                        null as _,
                    ))?;
                    check(libc::mount(
                        dir.as_ptr(),
                        dir.as_ptr(),
                        null,
                        libc::MS_BIND,
                        null as _,
                    ))?;
                    check(libc::mount(
                        null,
                        dir.as_ptr(),
                        null,
                        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                        null as _,
                    ))
                });
            }
        }
        let mut child = cmd.spawn().expect("spawn weft");
        let mut stdin = child.stdin.take().unwrap();
        let input = case.stdin.clone();
        // The huge inputs exceed a pipe buffer: feed from another thread.
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let out = child.wait_with_output().expect("wait for weft");
        writer.join().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// Everything a failed call must leave as it was.
    fn snapshot(&self) -> String {
        let mut s = String::new();
        for (label, ns) in [("node", &self.ns), ("pod", &self.pod)] {
            let mut nl = Netlink::in_netns(ns.handle()).unwrap();
            for l in nl.list_links().unwrap() {
                s += &format!(
                    "{label} link {} {:?} master={:?} up={} mtu={} alias={:?} mac={:?}\n",
                    l.name, l.kind, l.master, l.up, l.mtu, l.alias, l.mac
                );
            }
            for a in nl.list_addresses(None).unwrap() {
                s += &format!("{label} addr {a:?}\n");
            }
            let mut routes: Vec<String> = nl
                .list_routes(None, None)
                .unwrap()
                .iter()
                .map(|r| format!("{label} route {r:?}\n"))
                .collect();
            routes.sort();
            s += &routes.concat();
        }
        let sysctls = in_netns_thread(self.ns.handle(), || {
            ["net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"]
                .map(|k| std::fs::read_to_string(Path::new("/proc/sys").join(k)).unwrap())
                .concat()
        })
        .unwrap();
        s += &format!("node sysctls {sysctls:?}\n");
        for (path, what) in list_tree(&self.root) {
            s += &format!("file {} {what}\n", path.display());
        }
        s
    }

    fn check(&self, case: &Case) {
        let before = self.snapshot();
        let (code, stdout) = self.exec(case);
        let what = &case.what;
        assert_eq!(code, 1, "{what}: exit code; stdout {stdout}");
        let v: Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("{what}: stdout is not JSON ({e}): {stdout:?}"));
        assert!(v["cniVersion"].is_string(), "{what}: no cniVersion in {v}");
        assert_eq!(v["code"].as_u64(), Some(case.code), "{what}: {v}");
        let msg = v["msg"].as_str().unwrap_or_default();
        assert!(!msg.is_empty(), "{what}: empty msg in {v}");
        let text = format!("{msg} {}", v["details"].as_str().unwrap_or_default());
        assert!(
            text.contains(&case.needle),
            "{what}: message {text:?} should name {:?}",
            case.needle
        );
        let after = self.snapshot();
        assert!(
            before == after,
            "{what}: the node changed:\n{}",
            diff(&before, &after)
        );
    }

    fn check_all(&self, cases: &[Case]) {
        for case in cases {
            self.check(case);
        }
        eprintln!("{} cases passed", cases.len());
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Every file and directory under `root` with its type and (for small files) content.
fn list_tree(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let what = if md.is_dir() {
                stack.push(p.clone());
                format!("dir {:o}", md.permissions().mode())
            } else {
                let content = std::fs::read(&p).unwrap_or_default();
                format!(
                    "file {:o} {:?}",
                    md.permissions().mode(),
                    String::from_utf8_lossy(&content[..content.len().min(200)])
                )
            };
            out.insert(p, what);
        }
    }
    out
}

fn diff(before: &str, after: &str) -> String {
    let b: Vec<&str> = before.lines().collect();
    let a: Vec<&str> = after.lines().collect();
    let gone = b
        .iter()
        .filter(|l| !a.contains(l))
        .map(|l| format!("- {l}"));
    let new = a
        .iter()
        .filter(|l| !b.contains(l))
        .map(|l| format!("+ {l}"));
    gone.chain(new).collect::<Vec<_>>().join("\n")
}

fn with(conf: &Value, f: impl FnOnce(&mut Value)) -> Value {
    let mut c = conf.clone();
    f(&mut c);
    c
}

fn remove(key: &'static str) -> impl FnOnce(&mut Value) {
    move |c: &mut Value| {
        c.as_object_mut().unwrap().remove(key);
    }
}

/// Undecodable, empty, huge and mistyped documents; versions unknown, missing or too old for
/// the verb; names and types that are wrong.
#[test]
fn bad_json_and_versions() {
    let node = Node::new();
    node.prepare_store("data");
    let good = node.conf("1.1.0", "data");
    let huge_name = "a".repeat(1 << 20);
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let mut huge_doc = good.clone();
    huge_doc["padding"] = json!("x".repeat(8 << 20));
    huge_doc["ipam"]["ranges"] = json!([[{"subnet": "10.99.0.0/24", "rangeStart": "10.99.1.1"}]]);
    let cases = vec![
        Case::raw("malformed JSON", "{not json", 6, "decode"),
        Case::raw("empty stdin", "", 6, "empty"),
        Case::raw("whitespace stdin", " \n\t ", 6, "empty"),
        Case::raw("array", "[1,2]", 6, "JSON object"),
        Case::raw("string", "\"weft\"", 6, "JSON object"),
        Case::raw("null", "null", 6, "JSON object"),
        Case::raw("truncated", &good.to_string()[..40], 6, "EOF"),
        Case::raw("trailing garbage", format!("{good} x"), 6, "trailing"),
        Case::raw(
            "invalid UTF-8",
            b"{\"cniVersion\":\"1.1.0\xff\"}".to_vec(),
            6,
            "decode",
        ),
        Case::raw("100000 nested arrays", deep, 6, "recursion"),
        Case::new(
            "1 MiB network name",
            "ADD",
            &with(&good, |c| c["name"] = json!(huge_name)),
            7,
            "longer than 255 bytes",
        ),
        // 8 MiB of padding is read and ignored; the error is the bad rangeStart.
        Case::new("8 MiB document", "ADD", &huge_doc, 7, "10.99.1.1"),
        Case::new(
            "unknown version",
            "ADD",
            &with(&good, |c| c["cniVersion"] = json!("9.9.9")),
            1,
            "9.9.9",
        ),
        Case::new(
            "too old version",
            "ADD",
            &with(&good, |c| c["cniVersion"] = json!("0.2.0")),
            1,
            "0.2.0",
        ),
        Case::new(
            "empty version",
            "ADD",
            &with(&good, |c| c["cniVersion"] = json!("")),
            1,
            "cniVersion",
        ),
        Case::new(
            "missing version",
            "ADD",
            &with(&good, remove("cniVersion")),
            7,
            "cniVersion",
        ),
        Case::new(
            "version a number",
            "ADD",
            &with(&good, |c| c["cniVersion"] = json!(1.1)),
            6,
            "string",
        ),
        Case::new(
            "CHECK at 0.3.1",
            "CHECK",
            &node.conf("0.3.1", "data"),
            1,
            "CHECK",
        ),
        Case::new(
            "CHECK at 0.3.0",
            "CHECK",
            &node.conf("0.3.0", "data"),
            1,
            "0.3.0",
        ),
        Case::new(
            "STATUS at 1.0.0",
            "STATUS",
            &node.conf("1.0.0", "data"),
            1,
            "STATUS",
        ),
        Case::new("GC at 0.4.0", "GC", &node.conf("0.4.0", "data"), 1, "GC"),
        Case::new(
            "missing name",
            "ADD",
            &with(&good, remove("name")),
            7,
            "network name",
        ),
        Case::new(
            "bad name",
            "ADD",
            &with(&good, |c| c["name"] = json!("a b")),
            7,
            "a b",
        ),
        Case::new(
            "name a number",
            "ADD",
            &with(&good, |c| c["name"] = json!(5)),
            6,
            "string",
        ),
        Case::new(
            "another plugin's type",
            "ADD",
            &with(&good, |c| c["type"] = json!("bridge")),
            7,
            "bridge",
        ),
        Case::new(
            "bridge a number",
            "ADD",
            &with(&good, |c| c["bridge"] = json!(5)),
            6,
            "bridge",
        ),
        Case::new(
            "mtu a string",
            "ADD",
            &with(&good, |c| c["mtu"] = json!("1400")),
            6,
            "mtu",
        ),
        Case::new(
            "isGateway a string",
            "ADD",
            &with(&good, |c| c["isGateway"] = json!("yes")),
            6,
            "isGateway",
        ),
        Case::new(
            "ipMasq a number",
            "ADD",
            &with(&good, |c| c["ipMasq"] = json!(1)),
            6,
            "ipMasq",
        ),
        Case::new(
            "dns a number",
            "ADD",
            &with(&good, |c| c["dns"] = json!(5)),
            6,
            "dns",
        ),
        Case::new(
            "ipam a string",
            "ADD",
            &with(&good, |c| c["ipam"] = json!("weft")),
            7,
            "ipam.type",
        ),
        Case::new(
            "ranges a string",
            "ADD",
            &with(&good, |c| c["ipam"]["ranges"] = json!("10.0.0.0/8")),
            7,
            "ranges",
        ),
        Case::new(
            "subnet a number",
            "ADD",
            &with(&good, |c| c["ipam"]["ranges"] = json!([[{"subnet": 10}]])),
            7,
            "subnet",
        ),
        Case::new(
            "runtimeConfig.ips not an address",
            "ADD",
            &with(&good, |c| c["runtimeConfig"] = json!({"ips": ["nope"]})),
            7,
            "nope",
        ),
        Case::new(
            "runtimeConfig.ips a number",
            "ADD",
            &with(&good, |c| c["runtimeConfig"] = json!({"ips": [5]})),
            7,
            "runtimeConfig.ips",
        ),
        Case::new(
            "valid-attachments wrong type",
            "GC",
            &with(&good, |c| c["cni.dev/valid-attachments"] = json!("all")),
            6,
            "valid-attachments",
        ),
        Case::new(
            "valid-attachments entry without ifname",
            "GC",
            &with(&good, |c| {
                c["cni.dev/valid-attachments"] = json!([{"containerID": "c"}])
            }),
            6,
            "ifname",
        ),
    ];
    node.check_all(&cases);
}

/// CNI_* variables missing or invalid, CNI_ARGS malformed, CNI_NETNS not a network namespace.
#[test]
fn bad_environment() {
    let node = Node::new();
    node.prepare_store("data");
    let good = node.conf("1.1.0", "data");
    let add = |what: &str, code: u64, needle: &str| Case::new(what, "ADD", &good, code, needle);
    let uts = "/proc/self/ns/uts";
    let regular = node.root.join("regular-file");
    std::fs::write(&regular, b"not a netns").unwrap();
    let cases = vec![
        add("no CNI_COMMAND", 4, "CNI_COMMAND").env("CNI_COMMAND", None),
        add("lower-case CNI_COMMAND", 4, "add").env("CNI_COMMAND", Some("add")),
        add("unknown CNI_COMMAND", 4, "FROB").env("CNI_COMMAND", Some("FROB")),
        add("no CNI_CONTAINERID", 4, "CNI_CONTAINERID").env("CNI_CONTAINERID", None),
        add("empty CNI_CONTAINERID", 4, "CNI_CONTAINERID").env("CNI_CONTAINERID", Some("")),
        add("CNI_CONTAINERID starts with -", 4, "-bad").env("CNI_CONTAINERID", Some("-bad")),
        add("CNI_CONTAINERID with /", 4, "a/b").env("CNI_CONTAINERID", Some("a/b")),
        add("CNI_CONTAINERID with :", 4, "a:b").env("CNI_CONTAINERID", Some("a:b")),
        add("no CNI_IFNAME", 4, "CNI_IFNAME").env("CNI_IFNAME", None),
        add("CNI_IFNAME with /", 4, "eth/0").env("CNI_IFNAME", Some("eth/0")),
        add("CNI_IFNAME too long", 4, "a234567890123456")
            .env("CNI_IFNAME", Some("a234567890123456")),
        add("CNI_IFNAME ..", 4, "..").env("CNI_IFNAME", Some("..")),
        add("CNI_IFNAME with space", 4, "et h0").env("CNI_IFNAME", Some("et h0")),
        add("CNI_IFNAME with :", 4, "eth:0").env("CNI_IFNAME", Some("eth:0")),
        add("no CNI_PATH", 4, "CNI_PATH").env("CNI_PATH", None),
        add("CNI_PATH of separators only", 4, "names no directory").env("CNI_PATH", Some(":")),
        add("no CNI_NETNS", 4, "CNI_NETNS").env("CNI_NETNS", None),
        add("empty CNI_NETNS", 4, "CNI_NETNS").env("CNI_NETNS", Some("")),
        add("CNI_NETNS does not exist", 4, "/run/netns/weft-no-such")
            .env("CNI_NETNS", Some("/run/netns/weft-no-such")),
        add("CNI_NETNS a regular file", 4, regular.to_str().unwrap())
            .env("CNI_NETNS", regular.to_str()),
        add("CNI_NETNS a directory", 4, "/tmp").env("CNI_NETNS", Some("/tmp")),
        add("CNI_NETNS a uts namespace", 4, uts).env("CNI_NETNS", Some(uts)),
        Case::new(
            "CHECK with CNI_NETNS a uts namespace",
            "CHECK",
            &with(&good, |c| {
                c["prevResult"] = json!({"cniVersion": "1.1.0", "ips": []});
            }),
            4,
            uts,
        )
        .env("CNI_NETNS", Some(uts)),
        add("CNI_ARGS without =", 4, "NOEQUALS").env("CNI_ARGS", Some("NOEQUALS")),
        add("CNI_ARGS empty key", 4, "=x").env("CNI_ARGS", Some("=x")),
        add("CNI_ARGS unknown key", 4, "FOO").env("CNI_ARGS", Some("FOO=1")),
        add("CNI_ARGS trailing ;", 4, "CNI_ARGS").env("CNI_ARGS", Some("IgnoreUnknown=1;")),
        add("CNI_ARGS bad IP", 4, "10.99.0.300").env("CNI_ARGS", Some("IP=10.99.0.300")),
        add("CNI_ARGS IP outside the ranges", 102, "10.1.2.3").env("CNI_ARGS", Some("IP=10.1.2.3")),
        add("CNI_ARGS IP is the gateway", 102, "10.99.0.1").env("CNI_ARGS", Some("IP=10.99.0.1")),
        add("CNI_ARGS IP is the network address", 102, "10.99.0.0")
            .env("CNI_ARGS", Some("IP=10.99.0.0")),
        add("CNI_ARGS two IPs for one range set", 102, "10.99.0.6")
            .env("CNI_ARGS", Some("IP=10.99.0.5,10.99.0.6")),
    ];
    node.check_all(&cases);
}

/// Ranges that overlap, lie outside their subnet or are not ranges at all; other config
/// values out of bounds.
#[test]
fn bad_ranges_and_config_values() {
    let node = Node::new();
    node.prepare_store("data");
    let good = node.conf("1.1.0", "data");
    let ranges = |r: Value| with(&good, |c| c["ipam"]["ranges"] = r);
    let add = |what: &str, conf: Value, needle: &str| Case::new(what, "ADD", &conf, 7, needle);
    let cases = vec![
        add(
            "prefix /33",
            ranges(json!([[{"subnet": "10.99.0.0/33"}]])),
            "ipam",
        ),
        add(
            "not a CIDR",
            ranges(json!([[{"subnet": "10.99.0.0"}]])),
            "ipam.ranges[0][0].subnet",
        ),
        add(
            "host bits set",
            ranges(json!([[{"subnet": "10.99.0.5/24"}]])),
            "10.99.0.5",
        ),
        add(
            "subnet too small",
            ranges(json!([[{"subnet": "10.99.0.0/31"}]])),
            "too small",
        ),
        add("no ranges", ranges(json!([])), "ranges"),
        add("empty range set", ranges(json!([[]])), "ranges[0]"),
        add(
            "overlapping ranges in a set",
            ranges(json!([[{"subnet": "10.99.0.0/24"}, {"subnet": "10.99.0.0/25"}]])),
            "overlaps",
        ),
        add(
            "overlapping range sets",
            ranges(json!([[{"subnet": "10.99.0.0/24"}], [{"subnet": "10.99.0.128/25"}]])),
            "ranges[1]",
        ),
        add(
            "mixed families in a set",
            ranges(json!([[{"subnet": "10.99.0.0/24"}, {"subnet": "fd00::/64"}]])),
            "fd00::/64",
        ),
        add(
            "rangeStart outside the subnet",
            ranges(json!([[{"subnet": "10.99.0.0/24", "rangeStart": "10.98.0.10"}]])),
            "10.98.0.10",
        ),
        add(
            "rangeEnd outside the subnet",
            ranges(json!([[{"subnet": "10.99.0.0/24", "rangeEnd": "10.99.1.10"}]])),
            "10.99.1.10",
        ),
        add(
            "rangeEnd before rangeStart",
            ranges(
                json!([[{"subnet": "10.99.0.0/24", "rangeStart": "10.99.0.50", "rangeEnd": "10.99.0.40"}]]),
            ),
            "rangeEnd",
        ),
        add(
            "gateway outside the subnet",
            ranges(json!([[{"subnet": "10.99.0.0/24", "gateway": "192.0.2.1"}]])),
            "192.0.2.1",
        ),
        add(
            "rangeStart of the other family",
            ranges(json!([[{"subnet": "10.99.0.0/24", "rangeStart": "fd00::5"}]])),
            "fd00::5",
        ),
        add(
            "legacy rangeStart without subnet",
            with(&good, |c| c["ipam"]["rangeStart"] = json!("10.99.0.5")),
            "rangeStart",
        ),
        add(
            "route dst not a CIDR",
            with(&good, |c| c["ipam"]["routes"] = json!([{"dst": "default"}])),
            "routes",
        ),
        add("no ipam", with(&good, remove("ipam")), "ipam"),
        add(
            "ipam without type",
            with(&good, |c| {
                c["ipam"].as_object_mut().unwrap().remove("type");
            }),
            "ipam.type",
        ),
        add(
            "ipam.type a path",
            with(&good, |c| c["ipam"]["type"] = json!("../bin/sh")),
            "../bin/sh",
        ),
        add(
            "ipam.type empty",
            with(&good, |c| c["ipam"]["type"] = json!("")),
            "ipam.type",
        ),
        add(
            "mtu too small",
            with(&good, |c| c["mtu"] = json!(10)),
            "mtu",
        ),
        add(
            "mtu too large",
            with(&good, |c| c["mtu"] = json!(70000)),
            "70000",
        ),
        add(
            "bridge name with /",
            with(&good, |c| c["bridge"] = json!("br/0")),
            "br/0",
        ),
        add(
            "bridge name too long",
            with(&good, |c| c["bridge"] = json!("bridge-name-too-long")),
            "bridge",
        ),
    ];
    node.check_all(&cases);
}

/// The IPAM state on disk: exhausted, corrupt, unusable or read-only; delegated IPAM plugins
/// missing or misbehaving; CHECK with a bad or stale prevResult.
#[test]
fn bad_state_delegates_and_prev_results() {
    let node = Node::new();
    let root = &node.root;

    // A /30 has one allocatable address (the other is the gateway): fill it.
    let mut exhausted = node.conf("1.1.0", "exhausted");
    exhausted["ipam"]["ranges"] = json!([[{"subnet": "10.99.0.0/30"}]]);
    let sets = weft_ipam::validate_range_sets(&[vec![weft_ipam::RangeConfig {
        subnet: "10.99.0.0/30".parse().unwrap(),
        range_start: None,
        range_end: None,
        gateway: None,
    }]])
    .unwrap();
    weft_ipam::Store::open(root.join("exhausted"), NETWORK)
        .unwrap()
        .allocate(&sets, &weft_ipam::Attachment::new("filler", "eth0"), &[])
        .unwrap();

    // A reservation file with garbage in it.
    node.prepare_store("corrupt");
    let garbage = root.join("corrupt").join(NETWORK).join("10.99.0.5");
    std::fs::write(&garbage, b"\x00\xffgarbage without a separator").unwrap();

    // The lock file is a directory.
    std::fs::create_dir_all(root.join("lockdir").join(NETWORK).join("lock")).unwrap();
    // The data dir is a regular file; the network's directory is a regular file.
    std::fs::write(root.join("dd-file"), b"x").unwrap();
    std::fs::create_dir_all(root.join("net-file")).unwrap();
    std::fs::write(root.join("net-file").join(NETWORK), b"x").unwrap();
    // A read-only store (bind-mounted read-only for the plugin only).
    node.prepare_store("readonly");

    node.fake_plugin(
        "fail-ipam",
        r#"echo '{"cniVersion":"1.0.0","code":11,"msg":"pool busy"}'; exit 1"#,
    );
    node.fake_plugin("garbage-ipam", "echo 'this is not json'");
    node.fake_plugin("noip-ipam", r#"echo '{"cniVersion":"1.0.0"}'"#);
    node.fake_plugin("crash-ipam", "kill -9 $$");
    let delegated = |t: &str| {
        with(&node.conf("1.0.0", "data"), |c| {
            c["ipam"] = json!({"type": t, "ranges": [[{"subnet": "10.99.0.0/24"}]]})
        })
    };

    node.prepare_store("data");
    let good = node.conf("1.1.0", "data");
    let check = |prev: Value| with(&good, |c| c["prevResult"] = prev);

    let ro_dir = root.join("readonly");
    let cases = vec![
        Case::new("exhausted range", "ADD", &exhausted, 101, "10.99.0.0/30"),
        Case::new(
            "requested IP held by a corrupt file",
            "ADD",
            &node.conf("1.1.0", "corrupt"),
            102,
            garbage.to_str().unwrap(),
        )
        .env("CNI_ARGS", Some("IP=10.99.0.5")),
        Case::new(
            "lock file is a directory",
            "ADD",
            &node.conf("1.1.0", "lockdir"),
            5,
            "lock",
        ),
        Case::new(
            "STATUS: lock file is a directory",
            "STATUS",
            &node.conf("1.1.0", "lockdir"),
            50,
            "lock",
        ),
        Case::new(
            "dataDir is a file",
            "ADD",
            &node.conf("1.1.0", "dd-file"),
            5,
            "dd-file",
        ),
        Case::new(
            "network dir is a file",
            "ADD",
            &node.conf("1.1.0", "net-file"),
            5,
            "not a directory",
        ),
        Case::new(
            "STATUS: dataDir is a file",
            "STATUS",
            &node.conf("1.1.0", "dd-file"),
            50,
            "dd-file",
        ),
        Case::new(
            "GC: dataDir is a file",
            "GC",
            &node.conf("1.1.0", "dd-file"),
            5,
            "dd-file",
        ),
        Case::new(
            "read-only dataDir",
            "ADD",
            &node.conf("1.1.0", "readonly"),
            5,
            "Read-only",
        )
        .read_only(&ro_dir),
        Case::new(
            "STATUS: read-only dataDir",
            "STATUS",
            &node.conf("1.1.0", "readonly"),
            50,
            "Read-only",
        )
        .read_only(&ro_dir),
        Case::new(
            "delegated IPAM not in CNI_PATH",
            "ADD",
            &delegated("no-such-ipam"),
            106,
            "no-such-ipam",
        ),
        Case::new(
            "delegated IPAM fails",
            "ADD",
            &delegated("fail-ipam"),
            11,
            "pool busy",
        ),
        Case::new(
            "delegated IPAM prints garbage",
            "ADD",
            &delegated("garbage-ipam"),
            106,
            "garbage-ipam",
        ),
        Case::new(
            "delegated IPAM returns no IPs",
            "ADD",
            &delegated("noip-ipam"),
            106,
            "no IP addresses",
        ),
        Case::new(
            "delegated IPAM killed",
            "ADD",
            &delegated("crash-ipam"),
            106,
            "crash-ipam",
        ),
        Case::new("CHECK without prevResult", "CHECK", &good, 7, "prevResult"),
        Case::new(
            "CHECK prevResult a string",
            "CHECK",
            &check(json!("x")),
            6,
            "prevResult",
        ),
        Case::new(
            "CHECK prevResult bad address",
            "CHECK",
            &check(json!({"ips": [{"address": "nope"}]})),
            6,
            "prevResult",
        ),
        Case::new(
            "CHECK prevResult bad ips version",
            "CHECK",
            &check(json!({"ips": [{"address": "10.99.0.5/24", "version": "5"}]})),
            6,
            "version",
        ),
        Case::new(
            "CHECK prevResult interfaces wrong type",
            "CHECK",
            &check(json!({"interfaces": {"name": "eth0"}})),
            6,
            "prevResult",
        ),
        Case::new(
            "CHECK of an attachment that does not exist",
            "CHECK",
            &check(json!({"cniVersion": "1.1.0", "ips": [{"address": "10.99.0.5/24"}]})),
            105,
            "10.99.0.5",
        ),
    ];
    node.check_all(&cases);
}
