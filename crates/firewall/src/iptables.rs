//! iptables driver: weft's own chains `WEFT-FORWARD` (filter) and `WEFT-POSTRTG` (nat), one jump
//! to each from FORWARD / POSTROUTING, written with `iptables-restore --noflush`.

use crate::exec::run;
use crate::plan::{self, diff_chain, Family, FamilyPlan, Match, Verdict};
use crate::{Firewall, FirewallError, FirewallStatus, Policy, Result};

/// Which iptables binaries to use. Mixing them breaks rules silently (flannel#1317,
/// kubernetes#112477), so use the one the rest of the node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IptablesVariant {
    /// `iptables-nft-*` (nf_tables kernel backend).
    Nft,
    /// `iptables-legacy-*` (x_tables kernel backend).
    Legacy,
    /// Pick like kubernetes-sigs/iptables-wrappers: the variant kubelet uses, else the one with
    /// more rules, nft by default.
    Auto,
}

impl IptablesVariant {
    fn suffix(self) -> &'static str {
        match self {
            IptablesVariant::Legacy => "legacy",
            _ => "nft",
        }
    }
}

/// One of weft's chains and the built-in chain that jumps to it.
struct Hook {
    table: &'static str,
    builtin: &'static str,
    chain: &'static str,
}

const FORWARD: Hook = Hook {
    table: "filter",
    builtin: "FORWARD",
    chain: "WEFT-FORWARD",
};
const POSTROUTING: Hook = Hook {
    table: "nat",
    builtin: "POSTROUTING",
    chain: "WEFT-POSTRTG",
};

/// Seconds iptables-restore waits for the xtables lock (legacy only; nft ignores it).
const LOCK_WAIT: &str = "5";

/// Driver that keeps weft's rules in iptables chains of its own.
#[derive(Debug, Clone)]
pub struct IptablesDriver {
    /// Never `Auto`: resolved when the driver is built.
    variant: IptablesVariant,
}

impl IptablesDriver {
    /// Driver for `variant`; `Auto` inspects the current rules of both variants now.
    pub fn new(variant: IptablesVariant) -> Result<Self> {
        let variant = match variant {
            IptablesVariant::Auto => detect_variant(),
            v => v,
        };
        Ok(IptablesDriver { variant })
    }

    /// The variant in use (`Nft` or `Legacy`).
    pub fn variant(&self) -> IptablesVariant {
        self.variant
    }

    fn bin(&self, family: Family, tool: &str) -> String {
        binary(self.variant, family, tool)
    }

    fn save(&self, family: Family, table: &str) -> Result<SavedTable> {
        let program = self.bin(family, "save");
        let out = run(&program, &["-t", table], None)?;
        SavedTable::parse(&program, &out)
    }

    fn restore(&self, family: Family, input: &str) -> Result<()> {
        let program = self.bin(family, "restore");
        run(&program, &["-w", LOCK_WAIT, "--noflush"], Some(input))?;
        Ok(())
    }

    /// Remove weft's chains of one family and every rule that jumps to them.
    fn remove_family(&self, family: Family, saved: &[(&Hook, SavedTable)]) -> Result<()> {
        let mut input = String::new();
        for (hook, saved) in saved {
            if !saved.has_chain(hook.chain) {
                continue;
            }
            input.push_str(&format!("*{}\n", hook.table));
            for (chain, spec) in &saved.rules {
                if chain != hook.chain && targets(spec, hook.chain) {
                    input.push_str(&format!("-D {chain} {spec}\n"));
                }
            }
            // Declaring the chain flushes it (--noflush keeps everything else); then delete it.
            input.push_str(&format!(
                ":{} - [0:0]\n-X {}\nCOMMIT\n",
                hook.chain, hook.chain
            ));
        }
        if input.is_empty() {
            return Ok(());
        }
        self.restore(family, &input)
    }
}

impl Firewall for IptablesDriver {
    fn name(&self) -> &'static str {
        match self.variant {
            IptablesVariant::Legacy => "iptables-legacy",
            _ => "iptables-nft",
        }
    }

    fn apply(&self, p: &Policy) -> Result<()> {
        p.validate()?;
        for family in [Family::V4, Family::V6] {
            let Some(plan) = plan::plan(p, family) else {
                // A family the policy no longer has: clean up what an older policy left. A
                // family this node cannot read (no IPv6 tables) has nothing of ours either.
                let saved: Vec<(&Hook, SavedTable)> = [&FORWARD, &POSTROUTING]
                    .into_iter()
                    .filter_map(|h| self.save(family, h.table).ok().map(|s| (h, s)))
                    .collect();
                self.remove_family(family, &saved)?;
                continue;
            };

            // Read each table once, write only the tables that differ: with the legacy backend
            // every restore rewrites the whole table, which is costly next to kube-proxy's rules.
            let mut input = String::new();
            for hook in [&FORWARD, &POSTROUTING] {
                let saved = self.save(family, hook.table)?;
                let expected = expected_specs(&plan, hook);
                if diff_hook(hook, &expected, &saved).is_empty() {
                    continue;
                }
                input.push_str(&format!("*{}\n:{} - [0:0]\n", hook.table, hook.chain));
                for (spec, _) in &expected {
                    input.push_str(&format!("-A {} {spec}\n", hook.chain));
                }
                let jump = format!("-j {}", hook.chain);
                let jumps = saved.count_rules(hook.builtin, &jump);
                if jumps != 1 {
                    for _ in 0..jumps {
                        input.push_str(&format!("-D {} {jump}\n", hook.builtin));
                    }
                    // First, so an earlier DROP (Docker's FORWARD) cannot shadow it.
                    input.push_str(&format!("-I {} 1 {jump}\n", hook.builtin));
                }
                input.push_str("COMMIT\n");
            }
            if !input.is_empty() {
                self.restore(family, &input)?;
            }
        }
        Ok(())
    }

    fn status(&self, p: &Policy) -> Result<FirewallStatus> {
        p.validate()?;
        let mut problems = Vec::new();
        for family in [Family::V4, Family::V6] {
            let Some(plan) = plan::plan(p, family) else {
                continue;
            };
            for hook in [&FORWARD, &POSTROUTING] {
                let saved = self.save(family, hook.table)?;
                let expected = expected_specs(&plan, hook);
                let label = self.bin(family, "save").replace("-save", "");
                problems.extend(
                    diff_hook(hook, &expected, &saved)
                        .into_iter()
                        .map(|problem| format!("{label}: {problem}")),
                );
            }
        }
        Ok(FirewallStatus::from_problems(problems))
    }

    fn remove(&self) -> Result<()> {
        for family in [Family::V4, Family::V6] {
            let mut saved = Vec::new();
            for hook in [&FORWARD, &POSTROUTING] {
                saved.push((hook, self.save(family, hook.table)?));
            }
            self.remove_family(family, &saved)?;
        }
        Ok(())
    }
}

fn binary(variant: IptablesVariant, family: Family, tool: &str) -> String {
    let base = match family {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    };
    format!("{base}-{}-{tool}", variant.suffix())
}

/// What differs between weft's chain + jump in `saved` and the `expected` rules.
fn diff_hook(hook: &Hook, expected: &[(String, String)], saved: &SavedTable) -> Vec<String> {
    let label = format!("-t {} {}", hook.table, hook.chain);
    if !saved.has_chain(hook.chain) {
        return vec![format!("chain {label} is missing")];
    }
    let live = saved.chain_rules(hook.chain);
    let mut problems = diff_chain(&label, expected, &live, |s| s.clone());
    match saved.count_rules(hook.builtin, &format!("-j {}", hook.chain)) {
        1 => {}
        0 => problems.push(format!(
            "-t {}: jump from {} to {} is missing",
            hook.table, hook.builtin, hook.chain
        )),
        n => problems.push(format!(
            "-t {}: {n} jumps from {} to {} (want 1)",
            hook.table, hook.builtin, hook.chain
        )),
    }
    problems
}

/// Rules of weft's chain for `hook` as iptables-save prints them (so they compare as strings).
/// Both tuple members are the spec: the first is the description used in problem reports.
fn expected_specs(plan: &FamilyPlan, hook: &Hook) -> Vec<(String, String)> {
    let rules = if hook.table == "filter" {
        &plan.forward
    } else {
        &plan.postrouting
    };
    rules
        .iter()
        .map(|rule| {
            let spec = rule_spec(rule);
            (spec.clone(), spec)
        })
        .collect()
}

fn rule_spec(rule: &plan::Rule) -> String {
    let mut parts: Vec<String> = rule
        .matches
        .iter()
        .map(|m| match m {
            Match::Src(net) => format!("-s {net}"),
            Match::Dst(net) => format!("-d {net}"),
            Match::Mark(mark) => format!("-m mark --mark {mark:#x}/{mark:#x}"),
        })
        .collect();
    parts.push(
        match rule.verdict {
            Verdict::Accept => "-j ACCEPT",
            Verdict::Return => "-j RETURN",
            Verdict::MasqueradeFullyRandom => "-j MASQUERADE --random-fully",
        }
        .to_string(),
    );
    parts.join(" ")
}

/// Whether a rule spec jumps (or goes) to `chain`.
fn targets(spec: &str, chain: &str) -> bool {
    let words: Vec<&str> = spec.split_whitespace().collect();
    words
        .windows(2)
        .any(|w| (w[0] == "-j" || w[0] == "-g") && w[1] == chain)
}

/// One table of `iptables-save -t <table>` output.
#[derive(Debug, Default)]
struct SavedTable {
    chains: Vec<String>,
    /// (chain, spec after `-A <chain> `), in order.
    rules: Vec<(String, String)>,
}

impl SavedTable {
    fn parse(program: &str, out: &str) -> Result<SavedTable> {
        let bad = |line: &str| FirewallError::Parse {
            program: program.to_string(),
            reason: format!("unexpected line {line:?}"),
        };
        let mut saved = SavedTable::default();
        for line in out.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') || line.starts_with('*') || line == "COMMIT"
            {
                continue;
            }
            if let Some(decl) = line.strip_prefix(':') {
                let name = decl.split_whitespace().next().ok_or_else(|| bad(line))?;
                saved.chains.push(name.to_string());
            } else if let Some(rule) = line.strip_prefix("-A ") {
                let (chain, spec) = rule.split_once(' ').ok_or_else(|| bad(line))?;
                saved
                    .rules
                    .push((chain.to_string(), spec.trim().to_string()));
            } else {
                return Err(bad(line));
            }
        }
        Ok(saved)
    }

    fn has_chain(&self, chain: &str) -> bool {
        self.chains.iter().any(|c| c == chain)
    }

    fn chain_rules(&self, chain: &str) -> Vec<String> {
        self.rules
            .iter()
            .filter(|(c, _)| c == chain)
            .map(|(_, spec)| spec.clone())
            .collect()
    }

    fn count_rules(&self, chain: &str, spec: &str) -> usize {
        self.rules
            .iter()
            .filter(|(c, s)| c == chain && s == spec)
            .count()
    }
}

/// kubernetes-sigs/iptables-wrappers: kubelet's marker chains tell which variant the node uses;
/// without them the variant with more rules wins, nft on a tie.
fn detect_variant() -> IptablesVariant {
    let dump = |variant: IptablesVariant| -> String {
        [Family::V4, Family::V6]
            .into_iter()
            .filter_map(|f| run(&binary(variant, f, "save"), &[], None).ok())
            .collect()
    };
    let nft = dump(IptablesVariant::Nft);
    let legacy = dump(IptablesVariant::Legacy);
    let kubelet = |dump: &str| {
        dump.lines().any(|l| {
            l.starts_with(":KUBE-IPTABLES-HINT ") || l.starts_with(":KUBE-KUBELET-CANARY ")
        })
    };
    let rules = |dump: &str| dump.lines().filter(|l| l.starts_with("-A ")).count();
    if kubelet(&nft) {
        IptablesVariant::Nft
    } else if kubelet(&legacy) || rules(&legacy) > rules(&nft) {
        IptablesVariant::Legacy
    } else {
        IptablesVariant::Nft
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVE: &str = "# Generated by iptables-nft-save v1.8.9 (nf_tables)
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:WEFT-POSTRTG - [0:0]
-A POSTROUTING -j WEFT-POSTRTG
-A WEFT-POSTRTG -m mark --mark 0x4000/0x4000 -j RETURN
-A WEFT-POSTRTG -s 10.244.0.0/16 -d 10.244.0.0/16 -j RETURN
-A WEFT-POSTRTG -d 224.0.0.0/4 -j RETURN
-A WEFT-POSTRTG -s 10.244.0.0/16 -j MASQUERADE --random-fully
COMMIT
";

    fn v4_plan() -> FamilyPlan {
        plan::plan(
            &Policy::new(vec!["10.244.0.0/16".parse().unwrap()]),
            Family::V4,
        )
        .unwrap()
    }

    #[test]
    fn save_output_matches_expected() {
        let saved = SavedTable::parse("iptables-nft-save", SAVE).unwrap();
        let expected = expected_specs(&v4_plan(), &POSTROUTING);
        assert_eq!(
            diff_hook(&POSTROUTING, &expected, &saved),
            Vec::<String>::new()
        );
    }

    #[test]
    fn missing_rule_and_jump_are_reported() {
        let text = SAVE
            .replace("-A POSTROUTING -j WEFT-POSTRTG\n", "")
            .replace("-A WEFT-POSTRTG -d 224.0.0.0/4 -j RETURN\n", "");
        let saved = SavedTable::parse("iptables-nft-save", &text).unwrap();
        let expected = expected_specs(&v4_plan(), &POSTROUTING);
        let problems = diff_hook(&POSTROUTING, &expected, &saved);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("missing rule `-d 224.0.0.0/4 -j RETURN`"));
        assert!(problems[1].contains("jump from POSTROUTING to WEFT-POSTRTG is missing"));
    }

    #[test]
    fn garbage_is_a_parse_error() {
        assert!(SavedTable::parse("x", "*nat\nbogus\n").is_err());
    }

    #[test]
    fn targets_matches_jump_and_goto_only() {
        assert!(targets("-i eth0 -j WEFT-FORWARD", "WEFT-FORWARD"));
        assert!(targets("-g WEFT-FORWARD", "WEFT-FORWARD"));
        assert!(!targets("-j WEFT-FORWARD2", "WEFT-FORWARD"));
        assert!(!targets(
            "-m comment --comment WEFT-FORWARD -j ACCEPT",
            "WEFT-FORWARD"
        ));
    }
}
