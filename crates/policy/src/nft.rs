//! From desired states to nftables commands: the pure diff (old, new) -> the minimal commands,
//! the full build for start-up, and their rendering as one `nft -j -f -` JSON batch.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use nftables::expr::{
    Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, Range, SetItem,
    Verdict as NftVerdict, CT,
};
use nftables::schema::{
    Chain as NftChain, Element as NftElement, FlushObject, NfCmd, NfListObject, NfObject,
    Rule as NftRule, Set as NftSet, SetFlag, SetType, SetTypeValue, Table,
};
use nftables::stmt::{JumpTarget, Match as NftMatch, Operator, Statement, VerdictMap};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use serde_json::{json, Value};

use crate::compile::{
    Action, AddrField, CounterMeta, Element, Family, Hook, Match, Rule, Ruleset, Set, SetKind,
    TABLE,
};

/// One nftables command of a batch, in weft's terms (rendered by [`Batch::to_json`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `add table; delete table; add table`: start from an empty table whatever was there,
    /// inside the same transaction (no window without rules).
    ResetTable,
    AddChain(String, Option<Hook>),
    AddSet(String, Set),
    AddElements(String, SetKind, Vec<Element>),
    DeleteElements(String, SetKind, Vec<Element>),
    FlushChain(String),
    AddRule(String, Rule),
    DeleteChain(String),
    DeleteSet(String, SetKind),
    /// A named counter (object), before the rules that update it.
    AddCounter(String, CounterMeta),
    DeleteCounter(String),
}

impl Command {
    /// Adds or deletes set/map elements (what pod and namespace events should produce).
    pub fn is_element_op(&self) -> bool {
        matches!(self, Command::AddElements(..) | Command::DeleteElements(..))
    }

    /// The chain or set the command is about (`None` for the table).
    pub fn object(&self) -> Option<&str> {
        match self {
            Command::ResetTable => None,
            Command::AddChain(n, _)
            | Command::AddSet(n, _)
            | Command::AddElements(n, _, _)
            | Command::DeleteElements(n, _, _)
            | Command::FlushChain(n)
            | Command::AddRule(n, _)
            | Command::DeleteChain(n)
            | Command::DeleteSet(n, _)
            | Command::AddCounter(n, _)
            | Command::DeleteCounter(n) => Some(n),
        }
    }
}

/// An ordered list of commands that nft runs as one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    pub commands: Vec<Command>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// The number of set/map elements added or deleted.
    pub fn element_count(&self) -> usize {
        self.commands
            .iter()
            .map(|c| match c {
                Command::AddElements(_, _, e) | Command::DeleteElements(_, _, e) => e.len(),
                Command::AddSet(_, s) => s.elements.len(),
                _ => 0,
            })
            .sum()
    }

    /// The `{"nftables": [...]}` document for `nft -j -f -`.
    pub fn to_json(&self) -> Value {
        let mut objects: Vec<Value> = Vec::new();
        for c in &self.commands {
            render(c, &mut objects);
        }
        json!({ "nftables": objects })
    }

    /// [`Batch::to_json`] as text, rendered one command at a time: a start-up batch of
    /// 10,000 pods is ~2.5 MiB of text, but as one `Value` tree it would be ten times that
    /// at once (the peak stays in the process's RSS).
    pub fn to_json_string(&self) -> String {
        let mut out = String::from("{\"nftables\":[");
        let mut objects: Vec<Value> = Vec::new();
        let mut first = true;
        for c in &self.commands {
            render(c, &mut objects);
            for o in objects.drain(..) {
                if !first {
                    out.push(',');
                }
                first = false;
                out.push_str(&o.to_string());
            }
        }
        out.push_str("]}");
        out
    }
}

/// The full state for start-up: the table replaced atomically (deleted and re-created in the
/// same transaction as its new content).
pub fn build(desired: &Ruleset) -> Batch {
    let mut batch = diff(&Ruleset::default(), desired);
    batch.commands.insert(0, Command::ResetTable);
    batch
}

/// The commands that turn `old` into `new`, both desired states of the same table: element
/// changes for sets present in both, flush + rewrite for changed chains only, creation and
/// deletion of what appears or disappears. Pure. Ordered so that every reference is valid at
/// each step: chains exist before map elements jump to them, sets exist before rules use
/// them, and chains/sets are deleted only after the rules and elements that refer to them.
pub fn diff(old: &Ruleset, new: &Ruleset) -> Batch {
    let mut cmds = Vec::new();
    // 1. New chains, empty.
    for (name, chain) in &new.chains {
        if !old.chains.contains_key(name) {
            cmds.push(Command::AddChain(name.clone(), chain.hook));
        }
    }
    // Named counters, before the rules that update them (a changed chain keeps its counter).
    for (name, meta) in &new.counters {
        if !old.counters.contains_key(name) {
            cmds.push(Command::AddCounter(name.clone(), meta.clone()));
        }
    }
    // 2. New sets with their elements. A set whose kind changed is replaced (names encode
    // the kind, so the compiler never does that).
    let mut replaced: BTreeSet<&String> = BTreeSet::new();
    for (name, set) in &new.sets {
        match old.sets.get(name) {
            None => cmds.push(Command::AddSet(name.clone(), set.clone())),
            Some(o) if o.kind != set.kind => {
                replaced.insert(name);
            }
            Some(_) => {}
        }
    }
    // 3. Element changes: deletes first (an interval set refuses overlapping elements).
    for (name, set) in &new.sets {
        let Some(o) = old.sets.get(name).filter(|o| o.kind == set.kind) else {
            continue;
        };
        let gone: Vec<Element> = o.elements.difference(&set.elements).cloned().collect();
        if !gone.is_empty() {
            cmds.push(Command::DeleteElements(name.clone(), set.kind, gone));
        }
    }
    for (name, set) in &new.sets {
        let Some(o) = old.sets.get(name).filter(|o| o.kind == set.kind) else {
            continue;
        };
        let added: Vec<Element> = set.elements.difference(&o.elements).cloned().collect();
        if !added.is_empty() {
            cmds.push(Command::AddElements(name.clone(), set.kind, added));
        }
    }
    // 4. Rules of new chains, and changed chains flushed and rewritten.
    let mut removed_chains: Vec<&String> = old
        .chains
        .keys()
        .filter(|n| !new.chains.contains_key(*n))
        .collect();
    for (name, chain) in &new.chains {
        match old.chains.get(name) {
            Some(o) if o.rules == chain.rules && o.hook == chain.hook => {}
            Some(o) if o.hook != chain.hook => {
                // A base chain's hook cannot change in place: only a different compiler
                // version would ask for it. Re-create it after the deletes below.
                removed_chains.push(name);
            }
            Some(_) => {
                cmds.push(Command::FlushChain(name.clone()));
                cmds.extend(
                    chain
                        .rules
                        .iter()
                        .map(|r| Command::AddRule(name.clone(), r.clone())),
                );
            }
            None => {
                cmds.extend(
                    chain
                        .rules
                        .iter()
                        .map(|r| Command::AddRule(name.clone(), r.clone())),
                );
            }
        }
    }
    // 5. Chains that go: emptied first (they may jump to each other), then deleted.
    for name in &removed_chains {
        cmds.push(Command::FlushChain((*name).clone()));
    }
    for name in &removed_chains {
        cmds.push(Command::DeleteChain((*name).clone()));
    }
    for name in &removed_chains {
        if let Some(chain) = new.chains.get(*name) {
            cmds.push(Command::AddChain((*name).clone(), chain.hook));
            cmds.extend(
                chain
                    .rules
                    .iter()
                    .map(|r| Command::AddRule((*name).clone(), r.clone())),
            );
        }
    }
    // 6. Sets that go, after every rule that used them.
    for (name, set) in &old.sets {
        if !new.sets.contains_key(name) || replaced.contains(name) {
            cmds.push(Command::DeleteSet(name.clone(), set.kind));
        }
    }
    for name in replaced {
        cmds.push(Command::AddSet(name.clone(), new.sets[name].clone()));
    }
    // 7. Counters that go, after the rules that updated them.
    for name in old.counters.keys() {
        if !new.counters.contains_key(name) {
            cmds.push(Command::DeleteCounter(name.clone()));
        }
    }
    Batch { commands: cmds }
}

// ---- rendering ----

fn table() -> Table<'static> {
    Table {
        family: NfFamily::INet,
        name: TABLE.into(),
        handle: None,
    }
}

fn chain_obj(name: &str, hook: Option<Hook>) -> NftChain<'static> {
    let (t, h, prio, policy) = match hook {
        None => (None, None, None, None),
        Some(Hook::Forward(p)) => (
            Some(NfChainType::Filter),
            Some(NfHook::Forward),
            Some(p),
            Some(NfChainPolicy::Accept),
        ),
        Some(Hook::Input(p)) => (
            Some(NfChainType::Filter),
            Some(NfHook::Input),
            Some(p),
            Some(NfChainPolicy::Accept),
        ),
    };
    NftChain {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: name.to_string().into(),
        newname: None,
        handle: None,
        _type: t,
        hook: h,
        prio,
        dev: None,
        policy,
    }
}

fn addr_type(f: Family) -> SetType {
    match f {
        Family::V4 => SetType::Ipv4Addr,
        Family::V6 => SetType::Ipv6Addr,
    }
}

fn set_obj(
    name: &str,
    kind: SetKind,
    elements: Option<Vec<Expression<'static>>>,
    comment: Option<&str>,
) -> Value {
    let obj = |set_type, flags: Option<SetFlag>| {
        NfObject::ListObject(NfListObject::Set(Box::new(NftSet {
            family: NfFamily::INet,
            table: TABLE.into(),
            name: name.to_string().into(),
            handle: None,
            set_type,
            policy: None,
            flags: flags.map(|f| [f].into_iter().collect()),
            elem: elements.clone().map(Cow::Owned),
            timeout: None,
            gc_interval: None,
            size: None,
            comment: comment.map(|c| Cow::Owned(c.to_string())),
        })))
    };
    let value = match kind {
        SetKind::Addr(f) => obj(SetTypeValue::Single(addr_type(f)), None),
        SetKind::Prefix(f) => obj(SetTypeValue::Single(addr_type(f)), Some(SetFlag::Interval)),
        SetKind::AddrPort(f) => obj(
            SetTypeValue::Concatenated(Cow::Owned(vec![addr_type(f), SetType::InetService])),
            None,
        ),
        SetKind::Dispatch(f) => {
            // nftables 0.6 has no `verdict` map type: this one object is written by hand.
            let ty = match f {
                Family::V4 => "ipv4_addr",
                Family::V6 => "ipv6_addr",
            };
            let mut map = json!({
                "family": "inet", "table": TABLE, "name": name, "type": ty, "map": "verdict",
            });
            if let Some(e) = elements {
                map["elem"] = serde_json::to_value(e).unwrap_or_default();
            }
            if let Some(c) = comment {
                map["comment"] = json!(c);
            }
            return json!({ "map": map });
        }
    };
    // NfObject::ListObject serializes as {"set": {...}}.
    serde_json::to_value(value).unwrap_or_default()
}

fn element_expr(e: &Element) -> Expression<'static> {
    let ip = |ip: &std::net::IpAddr| Expression::String(Cow::Owned(ip.to_string()));
    match e {
        Element::Addr(a) => ip(a),
        Element::Prefix(n) if n.prefix_len() == n.max_prefix_len() => ip(&n.addr()),
        Element::Prefix(n) => Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(ip(&n.addr())),
            len: n.prefix_len().into(),
        })),
        Element::AddrPort(a, p) => Expression::Named(NamedExpression::Concat(vec![
            ip(a),
            Expression::Number((*p).into()),
        ])),
        Element::Jump(a, chain) => Expression::List(vec![
            ip(a),
            Expression::Verdict(NftVerdict::Jump(JumpTarget {
                target: Cow::Owned(chain.clone()),
            })),
        ]),
    }
}

fn element_obj(name: &str, elements: &[Element]) -> NfListObject<'static> {
    NfListObject::Element(NftElement {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: name.to_string().into(),
        elem: Cow::Owned(elements.iter().map(element_expr).collect()),
    })
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

fn addr_payload(family: Family, field: AddrField) -> Expression<'static> {
    let p = match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    };
    let f = match field {
        AddrField::Src => "saddr",
        AddrField::Dst => "daddr",
    };
    payload(p, f)
}

fn set_ref(name: &str) -> Expression<'static> {
    Expression::String(Cow::Owned(format!("@{name}")))
}

fn eq(left: Expression<'static>, right: Expression<'static>, negate: bool) -> Statement<'static> {
    Statement::Match(NftMatch {
        left,
        right,
        op: if negate { Operator::NEQ } else { Operator::EQ },
    })
}

/// `ct state in {..}`: `in` is a flags test (`==` with a list would compare the whole value).
fn ct_state(states: &[&'static str]) -> Statement<'static> {
    Statement::Match(NftMatch {
        left: Expression::Named(NamedExpression::CT(CT {
            key: "state".into(),
            family: None,
            dir: None,
        })),
        right: Expression::List(
            states
                .iter()
                .map(|s| Expression::String((*s).into()))
                .collect(),
        ),
        op: Operator::IN,
    })
}

/// The nftables statements of a rule.
pub fn rule_statements(rule: &Rule) -> Vec<Statement<'static>> {
    let mut out: Vec<Statement<'static>> = rule
        .matches
        .iter()
        .map(|m| match m {
            Match::Related => ct_state(&["related"]),
            // Every packet of the reply direction belongs to an established connection.
            Match::EstablishedReply => eq(
                Expression::Named(NamedExpression::CT(CT {
                    key: "direction".into(),
                    family: None,
                    dir: None,
                })),
                Expression::String("reply".into()),
                false,
            ),
            Match::EstablishedRelated => ct_state(&["established", "related"]),
            Match::NeighbourDiscovery => eq(
                payload("icmpv6", "type"),
                Expression::Named(NamedExpression::Set(
                    (133..=137)
                        .map(|t| SetItem::Element(Expression::Number(t)))
                        .collect(),
                )),
                false,
            ),
            Match::InSet {
                family,
                field,
                set,
                negate,
            } => eq(addr_payload(*family, *field), set_ref(set), *negate),
            Match::InPrefix { field, net } => eq(
                addr_payload(Family::of(&net.addr()), *field),
                Expression::Named(NamedExpression::Prefix(Prefix {
                    addr: Box::new(Expression::String(Cow::Owned(net.addr().to_string()))),
                    len: net.prefix_len().into(),
                })),
                false,
            ),
            Match::L4Proto(p) => eq(
                Expression::Named(NamedExpression::Meta(Meta {
                    key: MetaKey::L4proto,
                })),
                Expression::String(p.as_str().into()),
                false,
            ),
            Match::DPort(a, b) if a == b => eq(
                payload("th", "dport"),
                Expression::Number((*a).into()),
                false,
            ),
            Match::DPort(a, b) => eq(
                payload("th", "dport"),
                Expression::Range(Box::new(Range {
                    range: [
                        Expression::Number((*a).into()),
                        Expression::Number((*b).into()),
                    ],
                })),
                false,
            ),
            Match::New => ct_state(&["new"]),
            Match::Limit { per_second, burst } => Statement::Limit(nftables::stmt::Limit {
                rate: *per_second,
                rate_unit: Some("packets".into()),
                per: Some("second".into()),
                burst: Some(*burst),
                burst_unit: None,
                inv: None,
            }),
            Match::AddrPortInSet { family, set } => eq(
                Expression::Named(NamedExpression::Concat(vec![
                    addr_payload(*family, AddrField::Dst),
                    payload("th", "dport"),
                ])),
                set_ref(set),
                false,
            ),
        })
        .collect();
    if let Some(name) = &rule.counter {
        out.push(Statement::Counter(nftables::stmt::Counter::Named(
            Cow::Owned(name.clone()),
        )));
    }
    out.push(match &rule.action {
        Action::Log { group, prefix } => Statement::Log(Some(nftables::stmt::Log {
            prefix: Some(Cow::Owned(prefix.clone())),
            group: Some(u32::from(*group)),
            ..nftables::stmt::Log::new(None)
        })),
        Action::Accept => Statement::Accept(None),
        Action::Drop => Statement::Drop(None),
        Action::Return => Statement::Return(None),
        Action::Jump(c) => Statement::Jump(JumpTarget {
            target: Cow::Owned(c.clone()),
        }),
        Action::Dispatch { family, field, map } => Statement::VerdictMap(VerdictMap {
            key: addr_payload(*family, *field),
            data: set_ref(map),
        }),
    });
    out
}

fn cmd(c: NfCmd<'static>) -> Value {
    serde_json::to_value(NfObject::CmdObject(c)).unwrap_or_default()
}

fn render(c: &Command, out: &mut Vec<Value>) {
    match c {
        Command::ResetTable => {
            out.push(cmd(NfCmd::Add(NfListObject::Table(table()))));
            out.push(cmd(NfCmd::Delete(NfListObject::Table(table()))));
            out.push(cmd(NfCmd::Add(NfListObject::Table(table()))));
        }
        Command::AddChain(name, hook) => {
            out.push(cmd(NfCmd::Add(NfListObject::Chain(chain_obj(name, *hook)))))
        }
        Command::AddSet(name, set) => {
            let elems: Vec<Expression<'static>> = set.elements.iter().map(element_expr).collect();
            // nft limits comments to 128 bytes.
            let comment: String = set.comment.chars().take(120).collect();
            let obj = set_obj(
                name,
                set.kind,
                (!elems.is_empty()).then_some(elems),
                (!comment.is_empty()).then_some(comment.as_str()),
            );
            out.push(json!({ "add": obj }));
        }
        Command::AddElements(name, _, e) => {
            out.push(cmd(NfCmd::Add(element_obj(name, e))));
        }
        Command::DeleteElements(name, _, e) => {
            out.push(cmd(NfCmd::Delete(element_obj(name, e))));
        }
        Command::FlushChain(name) => {
            out.push(cmd(NfCmd::Flush(FlushObject::Chain(chain_obj(name, None)))));
        }
        Command::AddRule(chain, rule) => out.push(cmd(NfCmd::Add(NfListObject::Rule(NftRule {
            family: NfFamily::INet,
            table: TABLE.into(),
            chain: chain.clone().into(),
            expr: Cow::Owned(rule_statements(rule)),
            handle: None,
            index: None,
            comment: None,
        })))),
        Command::DeleteChain(name) => out.push(cmd(NfCmd::Delete(NfListObject::Chain(chain_obj(
            name, None,
        ))))),
        Command::DeleteSet(name, kind) => {
            let obj = set_obj(name, *kind, None, None);
            out.push(json!({ "delete": obj }));
        }
        Command::AddCounter(name, _) | Command::DeleteCounter(name) => {
            let verb = match c {
                Command::AddCounter(..) => "add",
                _ => "delete",
            };
            let counter = json!({ "family": "inet", "table": TABLE, "name": name });
            out.push(json!({ verb: { "counter": counter } }));
        }
    }
}

/// Sets grouped by kind, for reports.
pub fn set_summary(r: &Ruleset) -> BTreeMap<&'static str, (usize, usize)> {
    let mut out: BTreeMap<&'static str, (usize, usize)> = BTreeMap::new();
    for s in r.sets.values() {
        let k = match s.kind {
            SetKind::Addr(_) => "pod sets",
            SetKind::Prefix(_) => "ipBlock sets",
            SetKind::AddrPort(_) => "named-port sets",
            SetKind::Dispatch(_) => "dispatch maps",
        };
        let e = out.entry(k).or_default();
        e.0 += 1;
        e.1 += s.elements.len();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{compile, CompileOptions};
    use crate::model::{Labels, Model, Namespace, Policy, PortSpec, Protocol, Rule, Selector};

    fn sctp_model() -> Model {
        let mut m = Model::new();
        m.set_namespace(Namespace::new("x", Labels::new()));
        m.set_policy(Policy::new(
            "x",
            "sctp",
            Selector::all(),
            None,
            vec![Rule {
                peers: vec![],
                ports: vec![
                    PortSpec::range(Protocol::Sctp, 7000, 7010),
                    PortSpec::number(Protocol::Tcp, 80),
                ],
            }],
            vec![],
        ));
        m
    }

    #[test]
    fn the_streamed_text_is_the_document() {
        let batch = build(&compile(&sctp_model(), &CompileOptions::default()));
        let text = batch.to_json_string();
        let parsed: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(parsed, batch.to_json());
        assert_eq!(Batch::default().to_json_string(), r#"{"nftables":[]}"#);
    }

    fn rules_of(json: &Value, chain: &str) -> Vec<String> {
        json["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o.get("add")?.get("rule"))
            .filter(|r| r["chain"] == chain)
            .map(|r| r["expr"].to_string())
            .collect()
    }

    #[test]
    fn sctp_rules_are_generated_and_can_be_left_out() {
        let json = build(&compile(&sctp_model(), &CompileOptions::default())).to_json();
        let rules = rules_of(&json, "pi_x_sctp");
        assert!(
            rules.iter().any(|r| r
                == r#"[{"match":{"left":{"meta":{"key":"l4proto"}},"op":"==","right":"sctp"}},{"match":{"left":{"payload":{"field":"dport","protocol":"th"}},"op":"==","right":{"range":[7000,7010]}}},{"accept":null}]"#),
            "{rules:#?}"
        );
        let json = build(&compile(
            &sctp_model(),
            &CompileOptions {
                sctp: false,
                ..Default::default()
            },
        ))
        .to_json();
        let rules = rules_of(&json, "pi_x_sctp");
        assert!(!rules.iter().any(|r| r.contains("sctp")), "{rules:#?}");
        assert!(
            rules.iter().any(|r| r.contains(r#""right":"tcp""#)),
            "{rules:#?}"
        );
    }

    #[test]
    fn build_replaces_the_table_in_one_transaction() {
        let json = build(&compile(&sctp_model(), &CompileOptions::default())).to_json();
        let list = json["nftables"].as_array().unwrap();
        let table = json!({ "family": "inet", "name": "weft-policy" });
        assert_eq!(list[0], json!({ "add": { "table": table } }));
        assert_eq!(list[1], json!({ "delete": { "table": table } }));
        assert_eq!(list[2], json!({ "add": { "table": table } }));
        // Base chains: established first, then ND, then the dispatch.
        let ingress = rules_of(&json, "ingress");
        assert_eq!(ingress.len(), 4);
        assert!(ingress[0].contains(r#""op":"in""#) && ingress[0].contains("established"));
        assert!(ingress[1].contains("icmpv6") && ingress[1].contains("133"));
        assert!(ingress[2].contains(r#""vmap""#) && ingress[2].contains("@in4"));
        let map = list
            .iter()
            .find_map(|o| o.get("add")?.get("map").filter(|m| m["name"] == "in6"))
            .unwrap();
        assert_eq!(map["map"], "verdict");
        assert_eq!(map["type"], "ipv6_addr");
    }

    /// The deny log: off, no log statement at all; on, one rate-limited NFLOG rule for new
    /// connections before each namespace chain's drop.
    #[test]
    fn deny_log_rule_only_with_the_option() {
        let json = build(&compile(&sctp_model(), &CompileOptions::default())).to_json();
        assert!(!json.to_string().contains("\"log\""), "{json}");
        let opts = CompileOptions {
            log_denied: Some(87),
            ..Default::default()
        };
        let json = build(&compile(&sctp_model(), &opts)).to_json();
        let rules = rules_of(&json, "ni_x");
        assert_eq!(rules.len(), 3, "{rules:#?}");
        assert_eq!(
            rules[1],
            r#"[{"match":{"left":{"ct":{"key":"state"}},"op":"in","right":["new"]}},{"limit":{"burst":20,"per":"second","rate":10,"rate_unit":"packets"}},{"log":{"group":87,"prefix":"ni_x"}}]"#
        );
        assert_eq!(rules[2], r#"[{"drop":null}]"#);
        assert!(rules_of(&json, "pi_x_sctp")
            .iter()
            .all(|r| !r.contains("log")));
    }

    #[test]
    fn diff_of_equal_states_is_empty() {
        let r = compile(&sctp_model(), &CompileOptions::default());
        assert!(diff(&r, &r).is_empty());
    }
}
