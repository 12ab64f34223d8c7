//! Per-pod masquerade for the CNI plugin's `ipMasq: true` (the reference bridge plugin's
//! option; off by default in weft, whose agent masquerades for the whole node).
//!
//! Table `inet weft-ipmasq`; per CNI network a set of its masqueraded pod addresses per family
//! (`<network>-v4`, `<network>-v6`) and a nat postrouting chain `<network>` whose three rules
//! never change: return for the network's own subnets, return for multicast, masquerade the
//! rest. A pod is one set element, so ADD and DEL are each one small atomic batch, and DEL
//! needs only the pod's IP (from IPAM), never its network namespace — unlike the reference
//! plugin, which leaks its rules when DEL comes after the netns is gone.

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::IpAddr;

use ipnet::IpNet;
use nftables::batch::Batch;
use nftables::expr::{Expression, NamedExpression, Payload, PayloadField, Prefix};
use nftables::schema::{
    Chain, Element, FlushObject, NfCmd, NfListObject, Rule, Set, SetType, SetTypeValue, Table,
};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use crate::exec::run;
use crate::{FirewallError, Result};

pub const TABLE: &str = "weft-ipmasq";

fn table() -> Table<'static> {
    Table {
        family: NfFamily::INet,
        name: TABLE.into(),
        handle: None,
    }
}

fn set_name(network: &str, v4: bool) -> String {
    format!("{network}-{}", if v4 { "v4" } else { "v6" })
}

fn set(network: &str, v4: bool) -> Set<'static> {
    Set {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: set_name(network, v4).into(),
        set_type: SetTypeValue::Single(if v4 {
            SetType::Ipv4Addr
        } else {
            SetType::Ipv6Addr
        }),
        ..Default::default()
    }
}

fn element(network: &str, ip: &IpAddr) -> Element<'static> {
    Element {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: set_name(network, ip.is_ipv4()).into(),
        elem: Cow::Owned(vec![Expression::String(ip.to_string().into())]),
    }
}

fn chain(network: &str) -> Chain<'static> {
    Chain {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: network.to_string().into(),
        newname: None,
        handle: None,
        _type: Some(NfChainType::NAT),
        hook: Some(NfHook::Postrouting),
        prio: Some(100),
        dev: None,
        policy: Some(NfChainPolicy::Accept),
    }
}

fn field(proto: &'static str, name: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: proto.into(),
            field: name.into(),
        },
    )))
}

fn rule(network: &str, stmts: Vec<Statement<'static>>) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: NfFamily::INet,
        table: TABLE.into(),
        chain: network.to_string().into(),
        expr: Cow::Owned(stmts),
        handle: None,
        index: None,
        comment: None,
    })
}

fn rules(network: &str, v4: bool, subnets: &[IpNet]) -> Vec<NfListObject<'static>> {
    let proto = if v4 { "ip" } else { "ip6" };
    let from_pod = || {
        Statement::Match(Match {
            left: field(proto, "saddr"),
            right: Expression::String(format!("@{}", set_name(network, v4)).into()),
            op: Operator::EQ,
        })
    };
    let to = |net: &IpNet| {
        Statement::Match(Match {
            left: field(proto, "daddr"),
            right: Expression::Named(NamedExpression::Prefix(Prefix {
                addr: Box::new(Expression::String(net.network().to_string().into())),
                len: net.prefix_len().into(),
            })),
            op: Operator::EQ,
        })
    };
    let multicast: IpNet = if v4 { "224.0.0.0/4" } else { "ff00::/8" }.parse().unwrap();
    let mut out: Vec<NfListObject> = subnets
        .iter()
        .filter(|n| n.addr().is_ipv4() == v4)
        .chain([&multicast])
        .map(|net| rule(network, vec![from_pod(), to(net), Statement::Return(None)]))
        .collect();
    out.push(rule(network, vec![from_pod(), Statement::Masquerade(None)]));
    out
}

fn apply(batch: Batch<'_>) -> Result<()> {
    let json = serde_json::to_string(&batch.to_nftables()).map_err(|e| FirewallError::Parse {
        program: "nft".into(),
        reason: format!("serializing the ruleset: {e}"),
    })?;
    run("nft", &["-j", "-f", "-"], Some(&json)).map(|_| ())
}

/// Masquerades traffic from `ips` leaving `subnets` (the network's own subnets).
pub fn add(network: &str, ips: &[IpAddr], subnets: &[IpNet]) -> Result<()> {
    let mut batch = Batch::new();
    batch.add(NfListObject::Table(table()));
    batch.add(NfListObject::Chain(chain(network)));
    // Rewriting the chain inside the same transaction: no moment without its rules.
    batch.add_cmd(NfCmd::Flush(FlushObject::Chain(chain(network))));
    for v4 in [true, false] {
        if !subnets.iter().any(|n| n.addr().is_ipv4() == v4) {
            continue;
        }
        batch.add(NfListObject::Set(Box::new(set(network, v4))));
        for r in rules(network, v4, subnets) {
            batch.add(r);
        }
    }
    for ip in ips {
        batch.add(NfListObject::Element(element(network, ip)));
    }
    apply(batch)
}

/// Stops masquerading `ips`; succeeds when they (or the table) are already gone.
pub fn remove(network: &str, ips: &[IpAddr]) -> Result<()> {
    if ips.is_empty() {
        return Ok(());
    }
    // add-then-delete in one transaction: deleting an absent element would fail the batch.
    let mut batch = Batch::new();
    batch.add(NfListObject::Table(table()));
    let families: HashSet<bool> = ips.iter().map(|ip| ip.is_ipv4()).collect();
    for v4 in families {
        batch.add(NfListObject::Set(Box::new(set(network, v4))));
    }
    for ip in ips {
        batch.add(NfListObject::Element(element(network, ip)));
        batch.delete(NfListObject::Element(element(network, ip)));
    }
    apply(batch)
}

/// The masqueraded addresses of `network` (for GC and tests).
pub fn list(network: &str) -> Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for v4 in [true, false] {
        let name = set_name(network, v4);
        let listing = match run("nft", &["-j", "list", "set", "inet", TABLE, &name], None) {
            Ok(l) => l,
            Err(FirewallError::Command { stderr, .. }) if stderr.contains("No such file") => {
                continue
            }
            Err(e) => return Err(e),
        };
        let v: serde_json::Value =
            serde_json::from_str(&listing).map_err(|e| FirewallError::Parse {
                program: "nft".into(),
                reason: e.to_string(),
            })?;
        for obj in v["nftables"].as_array().into_iter().flatten() {
            for e in obj["set"]["elem"].as_array().into_iter().flatten() {
                if let Some(ip) = e.as_str().and_then(|s| s.parse().ok()) {
                    out.push(ip);
                }
            }
        }
    }
    Ok(out)
}

/// Removes the network's chain and sets (nothing left when the last pod is gone is not
/// required: empty sets match nothing).
pub fn remove_network(network: &str) -> Result<()> {
    let mut batch = Batch::new();
    batch.add(NfListObject::Table(table()));
    batch.add(NfListObject::Chain(chain(network)));
    batch.delete(NfListObject::Chain(chain(network)));
    for v4 in [true, false] {
        batch.add(NfListObject::Set(Box::new(set(network, v4))));
        batch.delete(NfListObject::Set(Box::new(set(network, v4))));
    }
    apply(batch)
}
