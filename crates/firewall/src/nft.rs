//! nftables driver: weft's own table `inet weft`, written as one atomic JSON batch.

use std::borrow::Cow;
use std::collections::HashSet;

use ipnet::IpNet;
use nftables::batch::Batch;
use nftables::expr::{
    BinaryOperation, Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix,
};
use nftables::schema::{Chain, FlushObject, NfCmd, NfListObject, NfObject, Nftables, Rule, Table};
use nftables::stmt::{Match as NftMatch, NATFlag, Operator, Statement, NAT};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use crate::exec::run;
use crate::plan::{self, diff_chain, Family, Match, Verdict};
use crate::{Firewall, FirewallError, FirewallStatus, Policy, Result};

pub(crate) const TABLE: &str = "weft";
const FORWARD: &str = "forward";
const POSTROUTING: &str = "postrouting";
/// `priority filter`
const PRIO_FILTER: i32 = 0;
/// `priority srcnat`
const PRIO_SRCNAT: i32 = 100;

/// Driver that keeps weft's rules in the nftables table `inet weft`.
#[derive(Debug, Clone)]
pub struct NftablesDriver {
    nft: String,
}

impl Default for NftablesDriver {
    fn default() -> Self {
        Self::new()
    }
}

impl NftablesDriver {
    /// Driver using `nft` from PATH.
    pub fn new() -> Self {
        NftablesDriver { nft: "nft".into() }
    }

    /// Driver using another `nft` binary.
    pub fn with_program(nft: impl Into<String>) -> Self {
        NftablesDriver { nft: nft.into() }
    }

    fn run_batch(&self, batch: Batch<'_>) -> Result<()> {
        // The crate's helper::apply_ruleset lets nft's stderr go to our stderr; we run the same
        // `nft -j -f -` ourselves so the error carries nft's message and exit status.
        let json =
            serde_json::to_string(&batch.to_nftables()).map_err(|e| FirewallError::Parse {
                program: self.nft.clone(),
                reason: format!("serializing the ruleset: {e}"),
            })?;
        run(&self.nft, &["-j", "-f", "-"], Some(&json))?;
        Ok(())
    }

    /// The live table, `None` when it does not exist.
    fn list_table(&self) -> Result<Option<Nftables<'static>>> {
        let out = match run(&self.nft, &["-j", "list", "table", "inet", TABLE], None) {
            Ok(out) => out,
            Err(FirewallError::Command { stderr, .. })
                if stderr.contains("No such file or directory") =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        parse_ruleset(&self.nft, &out).map(Some)
    }

    /// Base chains of other tables on the forward hook whose policy is drop, as
    /// "table <family> <table> chain <name>". Forwarded pod traffic dies there whatever
    /// `inet weft` says: every base chain on a hook must accept a packet.
    pub fn forward_drop_chains(&self) -> Result<Vec<String>> {
        let out = run(&self.nft, &["-j", "list", "chains"], None)?;
        let listing = parse_ruleset(&self.nft, &out)?;
        Ok(listing
            .objects
            .iter()
            .filter_map(|obj| match obj {
                NfObject::ListObject(NfListObject::Chain(c)) => Some(c),
                _ => None,
            })
            .filter(|c| {
                c.hook == Some(NfHook::Forward)
                    && c.policy == Some(NfChainPolicy::Drop)
                    && !(c.family == NfFamily::INet && c.table == TABLE)
            })
            .map(|c| {
                let family = serde_json::to_value(c.family)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                format!("table {family} {} chain {}", c.table, c.name)
            })
            .collect())
    }
}

impl Firewall for NftablesDriver {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn apply(&self, p: &Policy) -> Result<()> {
        p.validate()?;
        // One transaction: create the table if needed, empty it, refill it. Packets see either
        // the old or the new rules, and running it again yields the same table.
        let mut batch = Batch::new();
        batch.add(NfListObject::Table(table()));
        batch.add_cmd(NfCmd::Flush(FlushObject::Table(table())));
        for chain in chains() {
            batch.add(NfListObject::Chain(chain));
        }
        let (forward, postrouting) = expected_rules(p);
        for (chain, rules) in [(FORWARD, forward), (POSTROUTING, postrouting)] {
            for (_, expr) in rules {
                batch.add(NfListObject::Rule(Rule {
                    family: NfFamily::INet,
                    table: TABLE.into(),
                    chain: chain.into(),
                    expr: expr.into(),
                    handle: None,
                    index: None,
                    comment: None,
                }));
            }
        }
        self.run_batch(batch)
    }

    fn status(&self, p: &Policy) -> Result<FirewallStatus> {
        p.validate()?;
        let Some(live) = self.list_table()? else {
            return Ok(FirewallStatus::from_problems(vec![format!(
                "table inet {TABLE} is missing"
            )]));
        };

        let mut problems = Vec::new();
        let mut live_chains = Vec::new();
        let mut live_rules: Vec<(String, Vec<Statement<'static>>)> = Vec::new();
        for obj in live.objects.iter() {
            match obj {
                NfObject::ListObject(NfListObject::Chain(c)) => live_chains.push(c.clone()),
                NfObject::ListObject(NfListObject::Rule(r)) => {
                    live_rules.push((r.chain.to_string(), r.expr.to_vec()))
                }
                _ => {}
            }
        }

        let (forward, postrouting) = expected_rules(p);
        for (want, expected) in chains().into_iter().zip([forward, postrouting]) {
            let label = format!("inet {TABLE} {}", want.name);
            match live_chains.iter().find(|c| c.name == want.name) {
                None => {
                    problems.push(format!("chain {label} is missing"));
                    continue;
                }
                Some(c) if !same_base_chain(c, &want) => {
                    problems.push(format!("chain {label} is not `{}`", chain_spec(&want.name)))
                }
                Some(_) => {}
            }
            let live: Vec<Vec<Statement>> = live_rules
                .iter()
                .filter(|(chain, _)| *chain == want.name)
                .map(|(_, expr)| expr.clone())
                .collect();
            problems.extend(diff_chain(&label, &expected, &live, |expr| {
                serde_json::to_string(expr).unwrap_or_default()
            }));
        }
        let mut status = FirewallStatus::from_problems(problems);
        status.warnings = self
            .forward_drop_chains()?
            .into_iter()
            .map(|chain| {
                format!("{chain} drops forwarded packets by policy; weft's forward accept cannot override it (use the iptables driver)")
            })
            .collect();
        Ok(status)
    }

    fn remove(&self) -> Result<()> {
        // Adding the table first makes the delete succeed when it is already gone.
        let mut batch = Batch::new();
        batch.add(NfListObject::Table(table()));
        batch.delete(NfListObject::Table(table()));
        self.run_batch(batch)
    }
}

fn table() -> Table<'static> {
    Table {
        family: NfFamily::INet,
        name: TABLE.into(),
        handle: None,
    }
}

fn chains() -> [Chain<'static>; 2] {
    let base = |name: &'static str, kind, hook, prio| Chain {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: name.into(),
        newname: None,
        handle: None,
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(prio),
        dev: None,
        policy: Some(NfChainPolicy::Accept),
    };
    [
        base(FORWARD, NfChainType::Filter, NfHook::Forward, PRIO_FILTER),
        base(
            POSTROUTING,
            NfChainType::NAT,
            NfHook::Postrouting,
            PRIO_SRCNAT,
        ),
    ]
}

fn chain_spec(name: &str) -> &'static str {
    if name == FORWARD {
        "type filter hook forward priority filter; policy accept"
    } else {
        "type nat hook postrouting priority srcnat; policy accept"
    }
}

fn same_base_chain(live: &Chain, want: &Chain) -> bool {
    live._type == want._type
        && live.hook == want.hook
        && live.prio == want.prio
        && live.policy == want.policy
}

type NftRules = Vec<(String, Vec<Statement<'static>>)>;

/// Rules of the forward and postrouting chains, each with its nft text for problem reports.
/// Written in the form `nft -j list` gives back, so status can compare them as values.
fn expected_rules(p: &Policy) -> (NftRules, NftRules) {
    let mut forward: NftRules = Vec::new();
    let mut postrouting: NftRules = Vec::new();
    for family in [Family::V4, Family::V6] {
        let Some(plan) = plan::plan(p, family) else {
            continue;
        };
        for (out, rules) in [
            (&mut forward, &plan.forward),
            (&mut postrouting, &plan.postrouting),
        ] {
            for rule in rules {
                let rendered = (describe(family, rule), render(family, rule));
                // The mark rule is family-less in an inet table: keep one copy.
                if !out.iter().any(|(_, r)| *r == rendered.1) {
                    out.push(rendered);
                }
            }
        }
    }
    (forward, postrouting)
}

fn render(family: Family, rule: &plan::Rule) -> Vec<Statement<'static>> {
    let proto = match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    };
    let addr = |field: &'static str, net: &IpNet| {
        Statement::Match(NftMatch {
            left: Expression::Named(NamedExpression::Payload(Payload::PayloadField(
                PayloadField {
                    protocol: proto.into(),
                    field: field.into(),
                },
            ))),
            right: prefix(net),
            op: Operator::EQ,
        })
    };
    let mut stmts: Vec<Statement<'static>> = rule
        .matches
        .iter()
        .map(|m| match m {
            Match::Src(net) => addr("saddr", net),
            Match::Dst(net) => addr("daddr", net),
            Match::Mark(mark) => Statement::Match(NftMatch {
                left: Expression::BinaryOperation(Box::new(BinaryOperation::AND(
                    Expression::Named(NamedExpression::Meta(Meta { key: MetaKey::Mark })),
                    Expression::Number(*mark),
                ))),
                right: Expression::Number(*mark),
                op: Operator::EQ,
            }),
        })
        .collect();
    stmts.push(match rule.verdict {
        Verdict::Accept => Statement::Accept(None),
        Verdict::Return => Statement::Return(None),
        Verdict::MasqueradeFullyRandom => Statement::Masquerade(Some(NAT {
            addr: None,
            family: None,
            port: None,
            flags: Some(HashSet::from([NATFlag::FullyRandom])),
        })),
    });
    stmts
}

/// nft lists a full-length prefix as a plain address.
fn prefix(net: &IpNet) -> Expression<'static> {
    let addr = Expression::String(Cow::Owned(net.addr().to_string()));
    if net.prefix_len() == net.max_prefix_len() {
        addr
    } else {
        Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(addr),
            len: net.prefix_len().into(),
        }))
    }
}

fn describe(family: Family, rule: &plan::Rule) -> String {
    let proto = match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    };
    let mut parts: Vec<String> = rule
        .matches
        .iter()
        .map(|m| match m {
            Match::Src(net) => format!("{proto} saddr {net}"),
            Match::Dst(net) => format!("{proto} daddr {net}"),
            Match::Mark(mark) => format!("meta mark & {mark:#x} == {mark:#x}"),
        })
        .collect();
    parts.push(
        match rule.verdict {
            Verdict::Accept => "accept",
            Verdict::Return => "return",
            Verdict::MasqueradeFullyRandom => "masquerade fully-random",
        }
        .to_string(),
    );
    parts.join(" ")
}

/// Parse `nft -j list ...` output with the nftables crate's types.
fn parse_ruleset(program: &str, out: &str) -> Result<Nftables<'static>> {
    let parse_err = |e: serde_json::Error| FirewallError::Parse {
        program: program.to_string(),
        reason: e.to_string(),
    };
    let mut value: serde_json::Value = serde_json::from_str(out).map_err(parse_err)?;
    normalize_nat_flags(&mut value);
    serde_json::from_value(value).map_err(parse_err)
}

/// nft prints a single NAT flag as a string (`"flags": "fully-random"`), but nftables 0.6 only
/// reads the list form (`"flags": ["fully-random"]`): wrap lone strings of NAT statements.
fn normalize_nat_flags(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            for (key, inner) in map.iter_mut() {
                if matches!(key.as_str(), "masquerade" | "snat" | "dnat" | "redirect") {
                    if let Some(flags) = inner.get_mut("flags") {
                        if let Value::String(s) = flags {
                            *flags = Value::Array(vec![Value::String(std::mem::take(s))]);
                        }
                    }
                }
                normalize_nat_flags(inner);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize_nat_flags),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listing_with_single_nat_flag() {
        let out = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "inet", "name": "weft", "handle": 1}}, {"rule": {"family": "inet", "table": "weft", "chain": "postrouting", "handle": 8, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.244.0.0", "len": 16}}}}, {"masquerade": {"flags": "fully-random"}}]}}]}"#;
        let parsed = parse_ruleset("nft", out).unwrap();
        let rule = parsed
            .objects
            .iter()
            .find_map(|o| match o {
                NfObject::ListObject(NfListObject::Rule(r)) => Some(r),
                _ => None,
            })
            .unwrap();
        let p = Policy::new(vec!["10.244.0.0/16".parse().unwrap()]);
        let (_, post) = expected_rules(&p);
        assert_eq!(rule.expr.to_vec(), post.last().unwrap().1);
    }

    #[test]
    fn dual_stack_has_one_mark_rule() {
        let p = Policy::new(vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00:10::/56".parse().unwrap(),
        ]);
        let (forward, post) = expected_rules(&p);
        assert_eq!(forward.len(), 4);
        let marks = post
            .iter()
            .filter(|(d, _)| d.starts_with("meta mark"))
            .count();
        assert_eq!(marks, 1);
        assert_eq!(post.len(), 1 + 3 + 3);
    }
}
