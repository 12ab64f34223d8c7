//! Driver tests against the real kernel. Every test runs on a thread of its own that first moves
//! into a brand-new network namespace; nft / iptables spawned from that thread inherit it, and the
//! namespace (with all rules in it) disappears when the thread ends. The root namespace is never
//! touched. Needs root.

use std::process::Command;

use nix::sched::{unshare, CloneFlags};
use weft_firewall::{
    driver, DriverKind, Firewall, FirewallError, IptablesDriver, IptablesVariant, NftablesDriver,
    Policy,
};

/// Run `f` on a new thread inside a new, empty network namespace.
fn in_new_netns<F: FnOnce() + Send + 'static>(f: F) {
    let result = std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET) (tests need root)");
        f()
    })
    .join();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// Run a command (argv, no shell) and return stdout; panics with stderr on failure.
fn cmd(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[derive(Clone, Copy)]
enum Kind {
    Nft,
    IptNft,
    IptLegacy,
}

impl Kind {
    fn driver(self) -> Box<dyn Firewall> {
        match self {
            Kind::Nft => Box::new(NftablesDriver::new()),
            Kind::IptNft => Box::new(IptablesDriver::new(IptablesVariant::Nft).unwrap()),
            Kind::IptLegacy => Box::new(IptablesDriver::new(IptablesVariant::Legacy).unwrap()),
        }
    }

    /// iptables command for manual changes (`v6` selects ip6tables).
    fn ipt(self, v6: bool) -> String {
        let variant = match self {
            Kind::IptLegacy => "legacy",
            _ => "nft",
        };
        format!("{}-{variant}", if v6 { "ip6tables" } else { "iptables" })
    }

    /// Everything the driver could have written, without timestamps or handles.
    fn dump(self) -> String {
        let text = match self {
            Kind::Nft => cmd("nft", &["list", "ruleset"]),
            _ => {
                let mut all = String::new();
                for v6 in [false, true] {
                    all += &cmd(&format!("{}-save", self.ipt(v6)), &[]);
                }
                all
            }
        };
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// iptables-save lines of one table of one family.
    fn save(self, v6: bool, table: &str) -> Vec<String> {
        cmd(&format!("{}-save", self.ipt(v6)), &["-t", table])
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Manual iptables change, waiting for the (global) legacy xtables lock.
    fn ipt_cmd(self, v6: bool, args: &[&str]) {
        let mut full = vec!["-w", "5"];
        full.extend_from_slice(args);
        cmd(&self.ipt(v6), &full);
    }
}

fn dual_stack() -> Policy {
    Policy::new(vec![
        "10.244.0.0/16".parse().unwrap(),
        "fd00:10::/56".parse().unwrap(),
    ])
}

fn assert_in_place(fw: &dyn Firewall, p: &Policy) {
    let status = fw.status(p).unwrap();
    assert!(
        status.in_place,
        "{}: not in place: {:?}",
        fw.name(),
        status.problems
    );
    assert!(status.problems.is_empty());
}

fn apply_is_idempotent(kind: Kind) {
    in_new_netns(move || {
        let fw = kind.driver();
        let p = dual_stack();
        assert!(!fw.status(&p).unwrap().in_place, "nothing applied yet");
        fw.apply(&p).unwrap();
        let first = kind.dump();
        assert_in_place(fw.as_ref(), &p);
        fw.apply(&p).unwrap();
        fw.apply(&p).unwrap();
        assert_eq!(first, kind.dump(), "apply twice changed the ruleset");
        assert_in_place(fw.as_ref(), &p);

        match kind {
            Kind::Nft => {
                assert!(first.contains("ip saddr 10.244.0.0/16 accept"), "{first}");
                assert!(first.contains("ip daddr 10.244.0.0/16 accept"), "{first}");
                assert!(
                    first.contains("meta mark & 0x00004000 == 0x00004000 return"),
                    "{first}"
                );
                assert!(
                    first.contains("ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return"),
                    "{first}"
                );
                assert!(first.contains("ip daddr 224.0.0.0/4 return"), "{first}");
                assert!(
                    first.contains("ip saddr 10.244.0.0/16 masquerade fully-random"),
                    "{first}"
                );
                assert!(
                    first.contains("type nat hook postrouting priority srcnat"),
                    "{first}"
                );
                assert!(
                    first.contains("type filter hook forward priority filter"),
                    "{first}"
                );
            }
            _ => {
                for v6 in [false, true] {
                    let filter = kind.save(v6, "filter");
                    let nat = kind.save(v6, "nat");
                    let jumps = |lines: &[String], rule: &str| {
                        lines.iter().filter(|l| l.as_str() == rule).count()
                    };
                    assert_eq!(
                        jumps(&filter, "-A FORWARD -j WEFT-FORWARD"),
                        1,
                        "{filter:?}"
                    );
                    assert_eq!(jumps(&nat, "-A POSTROUTING -j WEFT-POSTRTG"), 1, "{nat:?}");
                }
                let nat = kind.save(false, "nat");
                for rule in [
                    "-A WEFT-POSTRTG -m mark --mark 0x4000/0x4000 -j RETURN",
                    "-A WEFT-POSTRTG -s 10.244.0.0/16 -d 10.244.0.0/16 -j RETURN",
                    "-A WEFT-POSTRTG -d 224.0.0.0/4 -j RETURN",
                    "-A WEFT-POSTRTG -s 10.244.0.0/16 -j MASQUERADE --random-fully",
                ] {
                    assert!(nat.iter().any(|l| l == rule), "{rule} not in {nat:?}");
                }
            }
        }
    });
}

fn status_sees_manual_deletion_and_apply_restores(kind: Kind) {
    in_new_netns(move || {
        let fw = kind.driver();
        let p = dual_stack();
        fw.apply(&p).unwrap();
        let good = kind.dump();

        // 1. Partial damage: weft's nat rules flushed by hand.
        match kind {
            Kind::Nft => {
                cmd("nft", &["flush", "chain", "inet", "weft", "postrouting"]);
            }
            _ => kind.ipt_cmd(false, &["-t", "nat", "-F", "WEFT-POSTRTG"]),
        }
        let status = fw.status(&p).unwrap();
        assert!(!status.in_place);
        assert!(
            status
                .problems
                .iter()
                .any(|pr| pr.contains("missing rule") && pr.contains("224.0.0.0/4")),
            "{:?}",
            status.problems
        );
        fw.apply(&p).unwrap();
        assert_in_place(fw.as_ref(), &p);
        assert_eq!(good, kind.dump());

        // 2. Everything gone: table deleted / jump removed.
        let expected_problem = match kind {
            Kind::Nft => {
                cmd("nft", &["delete", "table", "inet", "weft"]);
                "table inet weft is missing"
            }
            _ => {
                kind.ipt_cmd(true, &["-D", "FORWARD", "-j", "WEFT-FORWARD"]);
                "jump from FORWARD to WEFT-FORWARD is missing"
            }
        };
        let status = fw.status(&p).unwrap();
        assert!(!status.in_place);
        assert!(
            status
                .problems
                .iter()
                .any(|pr| pr.contains(expected_problem)),
            "{:?}",
            status.problems
        );
        fw.apply(&p).unwrap();
        assert_in_place(fw.as_ref(), &p);
        assert_eq!(good, kind.dump());

        // 3. A foreign rule in weft's chain is reported and removed by apply.
        match kind {
            Kind::Nft => {
                cmd(
                    "nft",
                    &[
                        "add", "rule", "inet", "weft", "forward", "tcp", "dport", "22", "drop",
                    ],
                );
            }
            _ => kind.ipt_cmd(
                false,
                &["-A", "WEFT-FORWARD", "-s", "192.0.2.1/32", "-j", "DROP"],
            ),
        }
        let status = fw.status(&p).unwrap();
        assert!(
            status
                .problems
                .iter()
                .any(|pr| pr.contains("unexpected rule")),
            "{:?}",
            status.problems
        );
        fw.apply(&p).unwrap();
        assert_in_place(fw.as_ref(), &p);
        assert_eq!(good, kind.dump());
    });
}

fn remove_leaves_nothing(kind: Kind) {
    in_new_netns(move || {
        let fw = kind.driver();
        let before = kind.dump();
        // Absent: Ok.
        fw.remove().unwrap();
        let p = dual_stack();
        fw.apply(&p).unwrap();
        assert_ne!(before, kind.dump());
        fw.remove().unwrap();
        let after = kind.dump();
        assert!(
            !after.contains("weft") && !after.contains("WEFT"),
            "{after}"
        );
        if let Kind::Nft = kind {
            assert!(!cmd("nft", &["list", "tables"]).contains("weft"));
        }
        fw.remove().unwrap();
        let status = fw.status(&p).unwrap();
        assert!(!status.in_place && !status.problems.is_empty());
    });
}

fn ipv6_only_policy_writes_ip6_rules(kind: Kind) {
    in_new_netns(move || {
        let fw = kind.driver();
        let p = Policy::new(vec!["fd00:10::/56".parse().unwrap()]);
        fw.apply(&p).unwrap();
        assert_in_place(fw.as_ref(), &p);
        match kind {
            Kind::Nft => {
                let t = cmd("nft", &["list", "table", "inet", "weft"]);
                assert!(t.contains("ip6 saddr fd00:10::/56 accept"), "{t}");
                assert!(t.contains("ip6 daddr ff00::/8 return"), "{t}");
                assert!(
                    t.contains("ip6 saddr fd00:10::/56 masquerade fully-random"),
                    "{t}"
                );
                assert!(!t.contains("ip saddr"), "{t}");
            }
            _ => {
                let nat6 = kind.save(true, "nat");
                assert!(nat6.contains(&"-A WEFT-POSTRTG -d ff00::/8 -j RETURN".to_string()));
                assert!(nat6.contains(
                    &"-A WEFT-POSTRTG -s fd00:10::/56 -j MASQUERADE --random-fully".to_string()
                ));
                let filter6 = kind.save(true, "filter");
                assert!(filter6.contains(&"-A WEFT-FORWARD -s fd00:10::/56 -j ACCEPT".to_string()));
                assert!(filter6.contains(&"-A FORWARD -j WEFT-FORWARD".to_string()));
                // Nothing in IPv4.
                let v4 =
                    kind.save(false, "filter").join("\n") + &kind.save(false, "nat").join("\n");
                assert!(!v4.contains("WEFT"), "{v4}");
            }
        }

        // Switching to dual stack and back to IPv4 only: IPv6 leftovers are cleaned up.
        fw.apply(&dual_stack()).unwrap();
        let v4 = Policy::new(vec!["10.244.0.0/16".parse().unwrap()]);
        fw.apply(&v4).unwrap();
        assert_in_place(fw.as_ref(), &v4);
        let dump = kind.dump();
        assert!(!dump.contains("fd00:10::/56"), "{dump}");
        if !matches!(kind, Kind::Nft) {
            let v6 = kind.save(true, "filter").join("\n") + &kind.save(true, "nat").join("\n");
            assert!(!v6.contains("WEFT"), "{v6}");
        }
    });
}

/// Docker-like FORWARD: policy DROP and rules of its own. weft's jump must come first.
fn forward_drop_keeps_jump_first(kind: Kind) {
    in_new_netns(move || {
        let fw = kind.driver();
        let p = dual_stack();
        for v6 in [false, true] {
            kind.ipt_cmd(v6, &["-P", "FORWARD", "DROP"]);
            kind.ipt_cmd(v6, &["-N", "DOCKER-USER"]);
            kind.ipt_cmd(v6, &["-A", "FORWARD", "-j", "DOCKER-USER"]);
            kind.ipt_cmd(v6, &["-A", "FORWARD", "-o", "docker0", "-j", "DROP"]);
        }
        fw.apply(&p).unwrap();
        for v6 in [false, true] {
            let forward: Vec<String> = kind
                .save(v6, "filter")
                .into_iter()
                .filter(|l| l.starts_with("-A FORWARD "))
                .collect();
            assert_eq!(forward[0], "-A FORWARD -j WEFT-FORWARD", "{forward:?}");
            assert_eq!(forward.len(), 3, "{forward:?}");
        }

        // A second jump added by hand is reported and collapsed back to one, first.
        kind.ipt_cmd(false, &["-A", "FORWARD", "-j", "WEFT-FORWARD"]);
        let status = fw.status(&p).unwrap();
        assert!(
            status.problems.iter().any(|pr| pr.contains("2 jumps")),
            "{:?}",
            status.problems
        );
        fw.apply(&p).unwrap();
        assert_in_place(fw.as_ref(), &p);
        let forward: Vec<String> = kind
            .save(false, "filter")
            .into_iter()
            .filter(|l| l.starts_with("-A FORWARD "))
            .collect();
        assert_eq!(
            forward,
            [
                "-A FORWARD -j WEFT-FORWARD",
                "-A FORWARD -j DOCKER-USER",
                "-A FORWARD -o docker0 -j DROP"
            ]
        );

        // remove takes weft out and leaves Docker's rules alone.
        fw.remove().unwrap();
        let filter = kind.save(false, "filter");
        assert!(filter.contains(&":FORWARD DROP [0:0]".to_string()));
        assert!(filter.contains(&"-A FORWARD -j DOCKER-USER".to_string()));
        assert!(!filter.join("\n").contains("WEFT"));
    });
}

/// nftables: an accept in `inet weft` cannot override a FORWARD DROP in another table (every
/// base chain on the hook must accept). The nft driver still applies, but status warns, and the
/// Auto driver picks iptables, whose jump sits inside that FORWARD chain.
#[test]
fn nft_warns_about_foreign_forward_drop() {
    in_new_netns(|| {
        let fw = NftablesDriver::new();
        let p = dual_stack();
        fw.apply(&p).unwrap();
        let status = fw.status(&p).unwrap();
        assert!(status.in_place && status.warnings.is_empty(), "{status:?}");
        assert_eq!(driver(DriverKind::Auto).unwrap().name(), "nftables");

        cmd("iptables-nft", &["-P", "FORWARD", "DROP"]);
        let status = fw.status(&p).unwrap();
        assert!(status.in_place, "{status:?}");
        assert_eq!(status.warnings.len(), 1, "{status:?}");
        assert!(
            status.warnings[0].contains("table ip filter chain FORWARD"),
            "{status:?}"
        );
        assert_eq!(driver(DriverKind::Auto).unwrap().name(), "iptables-nft");
        fw.remove().unwrap();
        // The foreign table is left alone.
        assert!(cmd("nft", &["list", "ruleset"]).contains("policy drop"));
    });
}

#[test]
fn masquerade_off_keeps_forward_rules_only() {
    in_new_netns(|| {
        let mut p = dual_stack();
        p.masquerade = false;
        for kind in [Kind::Nft, Kind::IptNft] {
            let fw = kind.driver();
            fw.apply(&p).unwrap();
            assert_in_place(fw.as_ref(), &p);
            let dump = kind.dump();
            assert!(
                !dump.contains("asquerade") && !dump.contains("MASQUERADE"),
                "{dump}"
            );
            assert!(dump.contains("10.244.0.0/16"), "{dump}");
            // Turning masquerade on is a difference status sees.
            let on = dual_stack();
            assert!(!fw.status(&on).unwrap().in_place);
            fw.apply(&on).unwrap();
            assert_in_place(fw.as_ref(), &on);
            fw.remove().unwrap();
        }
    });
}

#[test]
fn invalid_policy_is_rejected() {
    in_new_netns(|| {
        let mut p = dual_stack();
        p.kube_proxy_mark = 0;
        let err = NftablesDriver::new().apply(&p).unwrap_err();
        assert!(err.to_string().contains("kube_proxy_mark"), "{err}");
        let p = Policy::new(vec!["0.0.0.0/0".parse().unwrap()]);
        assert!(NftablesDriver::new().apply(&p).is_err());
        assert!(!cmd("nft", &["list", "tables"]).contains("weft"));
    });
}

#[test]
fn command_errors_carry_program_status_and_stderr() {
    in_new_netns(|| {
        let p = dual_stack();
        let err = NftablesDriver::with_program("/nonexistent/nft")
            .remove()
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/nft"), "{err}");

        // Someone made inet weft's forward chain an input chain: status says so, and apply
        // fails (a base chain's hook cannot change) with nft's exit status and stderr.
        let fw = NftablesDriver::new();
        cmd("nft", &["add", "table", "inet", "weft"]);
        cmd(
            "nft",
            &["add chain inet weft forward { type filter hook input priority 0; }"],
        );
        let status = fw.status(&p).unwrap();
        assert!(
            status
                .problems
                .iter()
                .any(|pr| pr.contains("forward is not `type filter hook forward")),
            "{status:?}"
        );
        match fw.apply(&p).unwrap_err() {
            FirewallError::Command {
                program,
                status,
                stderr,
                ..
            } => {
                assert_eq!(program, "nft");
                assert_eq!(status.code(), Some(1));
                assert!(stderr.contains("Error"), "{stderr}");
            }
            other => panic!("unexpected error {other:?}"),
        }
        // remove clears it; apply then works.
        fw.remove().unwrap();
        fw.apply(&p).unwrap();
        assert_in_place(&fw, &p);

        // A jump from a chain weft does not manage is removed too, so the chain can go.
        let ipt = IptablesDriver::new(IptablesVariant::Nft).unwrap();
        ipt.apply(&p).unwrap();
        cmd("iptables-nft", &["-N", "OTHER"]);
        cmd(
            "iptables-nft",
            &["-A", "OTHER", "-i", "eth0", "-j", "WEFT-FORWARD"],
        );
        ipt.remove().unwrap();
        assert!(!cmd("iptables-nft-save", &[]).contains("WEFT"));
    });
}

#[test]
fn auto_driver_picks_nftables_here() {
    in_new_netns(|| {
        let fw = driver(DriverKind::Auto).unwrap();
        assert_eq!(fw.name(), "nftables");
        // Empty namespace: no rules either way, so iptables Auto falls back to nft.
        let fw = driver(DriverKind::Iptables(IptablesVariant::Auto)).unwrap();
        assert_eq!(fw.name(), "iptables-nft");
        // More legacy rules than nft rules: legacy.
        cmd(
            "iptables-legacy",
            &[
                "-w",
                "5",
                "-A",
                "INPUT",
                "-s",
                "192.0.2.1/32",
                "-j",
                "ACCEPT",
            ],
        );
        let fw = driver(DriverKind::Iptables(IptablesVariant::Auto)).unwrap();
        assert_eq!(fw.name(), "iptables-legacy");
        // kubelet's hint chain in nft wins.
        cmd(
            "iptables-nft",
            &["-t", "mangle", "-N", "KUBE-IPTABLES-HINT"],
        );
        let fw = driver(DriverKind::Iptables(IptablesVariant::Auto)).unwrap();
        assert_eq!(fw.name(), "iptables-nft");
    });
}

macro_rules! per_driver {
    ($($case:ident),* $(,)?) => {
        mod nft {
            $(#[test] fn $case() { super::$case(super::Kind::Nft) })*
        }
        mod iptables_nft {
            $(#[test] fn $case() { super::$case(super::Kind::IptNft) })*
        }
        mod iptables_legacy {
            $(#[test] fn $case() { super::$case(super::Kind::IptLegacy) })*
        }
    };
}

per_driver!(
    apply_is_idempotent,
    status_sees_manual_deletion_and_apply_restores,
    remove_leaves_nothing,
    ipv6_only_policy_writes_ip6_rules,
);

mod iptables_forward_drop {
    #[test]
    fn nft() {
        super::forward_drop_keeps_jump_first(super::Kind::IptNft)
    }
    #[test]
    fn legacy() {
        super::forward_drop_keeps_jump_first(super::Kind::IptLegacy)
    }
}
