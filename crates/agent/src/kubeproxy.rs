//! kube-proxy's Service NAT as the kernel holds it, for `weftd trace` to a ClusterIP or a
//! NodePort: the `iptables-save` text of the nat and filter tables (kube-proxy in iptables
//! mode), followed for one packet from `KUBE-SERVICES` through `KUBE-NODEPORTS`,
//! `KUBE-SVC-…`/`KUBE-XLB-…` to the `KUBE-SEP-…` chains' DNAT, with each endpoint's
//! probability (the `statistic` matches) and whether kube-proxy marks the packet for
//! masquerade (`KUBE-MARK-MASQ`). A Service without endpoints is found in the filter table's
//! `KUBE-SERVICES` (REJECT). Everything here is a pure function of the text; [`read_rules`]
//! reads it from the kernel.

use ipnet::IpNet;
use serde::Serialize;
use std::collections::HashMap;
use std::net::IpAddr;

/// The entry chain kube-proxy hooks into PREROUTING and OUTPUT (nat) and FORWARD/OUTPUT
/// (filter).
pub const SERVICES_CHAIN: &str = "KUBE-SERVICES";
const NODEPORTS_CHAIN: &str = "KUBE-NODEPORTS";
/// kube-proxy's default masquerade bit (`--iptables-masquerade-bit=14`).
const MASQ_MARK: u32 = 0x4000;
/// Chains followed at most this deep (kube-proxy nests 4).
const MAX_DEPTH: usize = 16;

/// One table of `iptables-save` output: each chain's rules (their arguments after
/// `-A CHAIN`), in order.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Table {
    pub chains: HashMap<String, Vec<Vec<String>>>,
}

/// kube-proxy's rules as read from one iptables backend.
#[derive(Debug, Clone)]
pub struct KubeProxyRules {
    /// `iptables-nft` or `iptables-legacy` (the backend holding `KUBE-SERVICES`).
    pub backend: String,
    pub nat: Table,
    pub filter: Table,
}

/// Splits a rule line like a shell would for iptables-save's quoting: words, and
/// double-quoted strings with `\"` and `\\` escapes (comments).
fn words(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(&first) = chars.peek() else {
            return Ok(out);
        };
        let mut w = String::new();
        if first == '"' {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some(c) => w.push(c),
                        None => return Err(format!("unfinished escape in: {line}")),
                    },
                    Some(c) => w.push(c),
                    None => return Err(format!("unterminated quote in: {line}")),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                w.push(c);
                chars.next();
            }
        }
        out.push(w);
    }
}

/// Parses `iptables-save` output into its tables by name (`nat`, `filter`, ...).
pub fn parse_save(text: &str) -> Result<HashMap<String, Table>, String> {
    let mut tables: HashMap<String, Table> = HashMap::new();
    let mut current: Option<String> = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line == "COMMIT" {
            continue;
        }
        let at = |e: String| format!("iptables-save line {}: {e}", n + 1);
        if let Some(name) = line.strip_prefix('*') {
            tables.entry(name.to_string()).or_default();
            current = Some(name.to_string());
            continue;
        }
        let table = current
            .as_ref()
            .and_then(|t| tables.get_mut(t))
            .ok_or_else(|| at(format!("{line:?} outside a table")))?;
        if let Some(decl) = line.strip_prefix(':') {
            let chain = decl.split_whitespace().next().unwrap_or_default();
            table.chains.entry(chain.to_string()).or_default();
        } else if line.starts_with("-A ") {
            let mut w = words(line).map_err(at)?;
            if w.len() < 2 {
                return Err(at(format!("no chain in {line:?}")));
            }
            let args = w.split_off(2);
            table.chains.entry(w.remove(1)).or_default().push(args);
        } else {
            return Err(at(format!("unexpected {line:?}")));
        }
    }
    Ok(tables)
}

/// The packet being traced, as kube-proxy's matches see it.
#[derive(Debug, Clone)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// `tcp`, `udp` or `sctp`.
    pub proto: String,
    pub dport: u16,
    /// `-m addrtype --src-type LOCAL`: the source is one of this node's addresses.
    pub src_local: bool,
    /// `-m addrtype --dst-type LOCAL`: the destination is (a NodePort on this node).
    pub dst_local: bool,
}

/// One rule, read for evaluation.
#[derive(Debug, Default)]
struct Rule<'a> {
    /// Every match holds for the packet (false also when a match is not understood: such a
    /// rule is never followed, so nothing is claimed that the rules do not say).
    matches: bool,
    probability: Option<f64>,
    comment: Option<&'a str>,
    target: Option<&'a str>,
    /// `-g`: a chain entered by goto returns to this chain's caller, not here.
    goto: bool,
    /// The target's own options (`--to-destination ...`).
    target_args: &'a [String],
}

fn cidr(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

fn port_range(s: &str) -> Option<(u16, u16)> {
    match s.split_once(':') {
        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
        None => s.parse().ok().map(|p| (p, p)),
    }
}

fn read_rule<'a>(args: &'a [String], p: &Packet) -> Rule<'a> {
    let mut r = Rule {
        matches: true,
        ..Rule::default()
    };
    let mut negate = false;
    let mut i = 0;
    while i < args.len() {
        let opt = args[i].as_str();
        let val = args.get(i + 1).map(String::as_str).unwrap_or_default();
        // Some(test) for a match: None inside when its value is not understood.
        let test: Option<Option<bool>> = match opt {
            "!" => {
                negate = true;
                i += 1;
                continue;
            }
            "-s" | "--source" => Some(cidr(val).map(|n| n.contains(&p.src))),
            "-d" | "--destination" => Some(cidr(val).map(|n| n.contains(&p.dst))),
            "-p" | "--protocol" => Some(Some(val == "all" || val.eq_ignore_ascii_case(&p.proto))),
            "--dport" | "--destination-port" => {
                Some(port_range(val).map(|(a, b)| (a..=b).contains(&p.dport)))
            }
            "--dst-type" => Some((val == "LOCAL").then_some(p.dst_local)),
            "--src-type" => Some((val == "LOCAL").then_some(p.src_local)),
            "-m" | "--match" | "--mode" => None,
            "--comment" => {
                r.comment = Some(val);
                None
            }
            "--probability" => {
                r.probability = val.parse().ok();
                Some(r.probability.map(|_| true))
            }
            "-j" | "--jump" | "-g" | "--goto" => {
                r.target = Some(val);
                r.goto = opt == "-g" || opt == "--goto";
                r.target_args = args.get(i + 2..).unwrap_or_default();
                return r;
            }
            // Interfaces, marks, conntrack state, ...: not evaluated here.
            _ => Some(None),
        };
        if let Some(t) = test {
            // A match not understood never holds, negated or not.
            r.matches &= t.is_some_and(|t| t != negate);
            negate = false;
        }
        i += 2;
    }
    r
}

/// Where one way through the chains ends.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Dnat {
        ip: IpAddr,
        port: u16,
    },
    Reject {
        with: String,
    },
    Drop,
    Accept,
    /// Fell off the chain or returned: no Service rule took the packet.
    Continue,
}

/// One way through the chains, with its probability.
#[derive(Debug, Clone, PartialEq)]
struct Leaf {
    probability: f64,
    verdict: Verdict,
    masquerade: bool,
    /// The chains entered, from the entry chain on.
    chains: Vec<String>,
    /// The comment of the rule that gave the verdict (`namespace/name:port`).
    comment: Option<String>,
}

fn dnat_target(args: &[String], dport: u16) -> Option<Verdict> {
    let to = args
        .iter()
        .position(|a| a == "--to-destination")
        .and_then(|i| args.get(i + 1))?;
    // `IP:PORT`, `[IPv6]:PORT`, or an address alone (port unchanged).
    if let Ok(sa) = to.parse::<std::net::SocketAddr>() {
        return Some(Verdict::Dnat {
            ip: sa.ip(),
            port: sa.port(),
        });
    }
    let ip = to
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    Some(Verdict::Dnat { ip, port: dport })
}

fn sets_masq_mark(args: &[String]) -> bool {
    let value = args
        .iter()
        .position(|a| a == "--set-xmark" || a == "--set-mark" || a == "--or-mark")
        .and_then(|i| args.get(i + 1));
    value
        .and_then(|v| u32::from_str_radix(v.split('/').next()?.trim_start_matches("0x"), 16).ok())
        .is_some_and(|v| v & MASQ_MARK != 0)
}

/// Follows `chain` from rule `from` for packet `p` reaching it with `probability`; every way
/// through and its probability (they sum to `probability`).
fn walk(
    table: &Table,
    chain: &str,
    from: usize,
    p: &Packet,
    state: Leaf,
    depth: usize,
) -> Vec<Leaf> {
    let Some(rules) = table.chains.get(chain) else {
        return vec![state];
    };
    if depth > MAX_DEPTH {
        return vec![state];
    }
    for (i, args) in rules.iter().enumerate().skip(from) {
        let r = read_rule(args, p);
        if !r.matches {
            continue;
        }
        let Some(target) = r.target else {
            continue;
        };
        let share = r.probability.unwrap_or(1.0).clamp(0.0, 1.0);
        let mut taken = state.clone();
        taken.probability *= share;
        taken.comment = r.comment.map(String::from);
        let mut leaves = Vec::new();
        match target {
            "DNAT" => {
                if let Some(v) = dnat_target(r.target_args, p.dport) {
                    taken.verdict = v;
                    leaves.push(taken);
                }
            }
            "REJECT" => {
                let with = r
                    .target_args
                    .iter()
                    .position(|a| a == "--reject-with")
                    .and_then(|i| r.target_args.get(i + 1))
                    .cloned()
                    .unwrap_or_else(|| "icmp-port-unreachable".into());
                taken.verdict = Verdict::Reject { with };
                leaves.push(taken);
            }
            "DROP" => {
                taken.verdict = Verdict::Drop;
                leaves.push(taken);
            }
            "ACCEPT" => {
                taken.verdict = Verdict::Accept;
                leaves.push(taken);
            }
            "RETURN" => {
                taken.verdict = Verdict::Continue;
                leaves.push(taken);
            }
            "MARK" => {
                taken.masquerade |= sets_masq_mark(r.target_args);
                leaves.extend(walk(table, chain, i + 1, p, taken, depth));
            }
            user if table.chains.contains_key(user) => {
                taken.chains.push(user.to_string());
                let back = state.chains.clone();
                for mut leaf in walk(table, user, 0, p, taken, depth + 1) {
                    if leaf.verdict == Verdict::Continue && !r.goto {
                        // Back in this chain, after the jump.
                        leaf.chains = back.clone();
                        leaves.extend(walk(table, chain, i + 1, p, leaf, depth));
                    } else {
                        leaves.push(leaf);
                    }
                }
            }
            // Other targets (LOG, MASQUERADE in the wrong table, ...) do not decide here.
            _ => leaves.extend(walk(table, chain, i + 1, p, taken, depth)),
        }
        if share < 1.0 {
            let mut rest = state.clone();
            rest.probability *= 1.0 - share;
            leaves.extend(walk(table, chain, i + 1, p, rest, depth));
        }
        return leaves;
    }
    vec![state]
}

/// An endpoint kube-proxy DNATs the packet to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
    /// The share of new connections that go to it (0..=1).
    pub probability: f64,
    /// kube-proxy marks the packet for masquerade (KUBE-MARK-MASQ): the endpoint sees the
    /// node's address, not the client's.
    pub masquerade: bool,
    /// The chains it went through (`KUBE-SERVICES`, `KUBE-SVC-…`, `KUBE-SEP-…`).
    pub chains: Vec<String>,
}

/// What kube-proxy's rules do with the packet.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceNat {
    /// The Service port, from kube-proxy's rule comment (`namespace/name:port`).
    pub service: String,
    pub proto: String,
    pub port: u16,
    pub endpoints: Vec<Endpoint>,
    /// The filter table rejects it: the Service has no endpoints (kube-proxy's comment and
    /// the ICMP type).
    pub rejected: Option<String>,
}

/// What kube-proxy's rules do with packet `p`: None when no Service rule matches it.
pub fn service_nat(rules: &KubeProxyRules, p: &Packet) -> Option<ServiceNat> {
    let start = Leaf {
        probability: 1.0,
        verdict: Verdict::Continue,
        masquerade: false,
        chains: vec![SERVICES_CHAIN.to_string()],
        comment: None,
    };
    let mut endpoints: Vec<Endpoint> = Vec::new();
    let mut service = None;
    for leaf in walk(&rules.nat, SERVICES_CHAIN, 0, p, start.clone(), 0) {
        let Verdict::Dnat { ip, port } = leaf.verdict else {
            continue;
        };
        service = service.or(leaf.comment.clone());
        match endpoints
            .iter_mut()
            .find(|e| e.ip == ip && e.port == port && e.masquerade == leaf.masquerade)
        {
            Some(e) => e.probability += leaf.probability,
            None => endpoints.push(Endpoint {
                ip,
                port,
                probability: leaf.probability,
                masquerade: leaf.masquerade,
                chains: leaf.chains,
            }),
        }
    }
    let rejected = walk(&rules.filter, SERVICES_CHAIN, 0, p, start, 0)
        .into_iter()
        .find_map(|l| match l.verdict {
            Verdict::Reject { with } => Some((l.comment.unwrap_or_default(), with)),
            _ => None,
        });
    if endpoints.is_empty() && rejected.is_none() {
        return None;
    }
    let service = service
        .or_else(|| rejected.as_ref().map(|(c, _)| c.clone()))
        .unwrap_or_default();
    Some(ServiceNat {
        service,
        proto: p.proto.clone(),
        port: p.dport,
        endpoints,
        rejected: rejected.map(|(c, with)| format!("{c} (REJECT {with})")),
    })
}

/// The (protocol, port) pairs kube-proxy's Service rules name for destination `dst`: its
/// ClusterIP ports, and when `dst_local`, every NodePort. For a trace without `--port`.
pub fn service_ports(rules: &KubeProxyRules, dst: IpAddr, dst_local: bool) -> Vec<(String, u16)> {
    let mut out: Vec<(String, u16)> = Vec::new();
    for table in [&rules.nat, &rules.filter] {
        for chain in [SERVICES_CHAIN, NODEPORTS_CHAIN] {
            for args in table.chains.get(chain).into_iter().flatten() {
                let arg = |name: &str| {
                    args.iter()
                        .position(|a| a == name)
                        .and_then(|i| args.get(i + 1))
                };
                let to_dst = match arg("-d") {
                    Some(d) => cidr(d).is_some_and(|n| n.contains(&dst)),
                    None => chain == NODEPORTS_CHAIN && dst_local,
                };
                let negated_d = args.windows(2).any(|w| w[0] == "!" && w[1] == "-d");
                let (Some(proto), Some(port)) = (arg("-p"), arg("--dport")) else {
                    continue;
                };
                let Ok(port) = port.parse::<u16>() else {
                    continue;
                };
                let pair = (proto.clone(), port);
                if to_dst && !negated_d && !out.contains(&pair) {
                    out.push(pair);
                }
            }
        }
    }
    out
}

/// Reads kube-proxy's rules for `family` from the kernel: `iptables-save -t nat` and
/// `-t filter` of each backend (nft, legacy), the one holding `KUBE-SERVICES` (kube-proxy
/// uses the machine's `iptables`; mixing backends breaks silently, so both are looked at).
/// Fixed programs and arguments, no shell. Ok(None): kube-proxy's rules are in neither.
pub fn read_rules(ipv6: bool) -> Result<Option<KubeProxyRules>, String> {
    let prefix = if ipv6 { "ip6tables" } else { "iptables" };
    let mut errors = Vec::new();
    for backend in ["nft", "legacy"] {
        let program = format!("{prefix}-{backend}-save");
        let save = |table: &str| -> Result<Table, String> {
            let out = std::process::Command::new(&program)
                .args(["-t", table])
                .stdin(std::process::Stdio::null())
                .output()
                .map_err(|e| format!("{program}: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "{program} -t {table}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            let mut tables = parse_save(&String::from_utf8_lossy(&out.stdout))?;
            Ok(tables.remove(table).unwrap_or_default())
        };
        match save("nat") {
            Ok(nat) if nat.chains.contains_key(SERVICES_CHAIN) => {
                let filter = save("filter").unwrap_or_default();
                return Ok(Some(KubeProxyRules {
                    backend: format!("{prefix}-{backend}"),
                    nat,
                    filter,
                }));
            }
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
    }
    if errors.len() == 2 {
        return Err(errors.join("; "));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// kube-proxy v1.20.2 (iptables mode, `--cluster-cidr=10.244.0.0/16`) on node n1 of the
    /// kube lab, captured with `iptables-save -t nat; iptables-save -t filter`: Services
    /// `echo` (3 endpoints: 10.244.0.2 on n1, 10.244.1.2 and .3 on n2; tcp 80 and udp 81),
    /// `echo-np` (NodePort 30991), `echo-local` (NodePort 30027, externalTrafficPolicy
    /// Local), `nobody` (no endpoints) and `kubernetes`.
    const N1: &str = include_str!("testdata/kube-proxy-n1.save");
    /// The nat table of n2 (two of echo-local's endpoints are local there).
    const N2_NAT: &str = include_str!("testdata/kube-proxy-n2-nat.save");

    fn rules(text: &str) -> KubeProxyRules {
        let mut t = parse_save(text).unwrap();
        KubeProxyRules {
            backend: "iptables-nft".into(),
            nat: t.remove("nat").unwrap(),
            filter: t.remove("filter").unwrap_or_default(),
        }
    }

    fn pkt(src: &str, dst: &str, proto: &str, dport: u16) -> Packet {
        Packet {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto: proto.into(),
            dport,
            src_local: false,
            dst_local: false,
        }
    }

    /// (endpoint, probability rounded to 3 places, masquerade), sorted.
    fn summary(s: &ServiceNat) -> Vec<(String, f64, bool)> {
        let mut v: Vec<_> = s
            .endpoints
            .iter()
            .map(|e| {
                (
                    format!("{}:{}", e.ip, e.port),
                    (e.probability * 1000.0).round() / 1000.0,
                    e.masquerade,
                )
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    #[test]
    fn words_follow_iptables_save_quoting() {
        assert_eq!(
            words(r#"-A X -m comment --comment "a \"b\" c" -j Y"#).unwrap(),
            [
                "-A",
                "X",
                "-m",
                "comment",
                "--comment",
                "a \"b\" c",
                "-j",
                "Y"
            ]
        );
        assert!(words(r#"-A X --comment "open"#).is_err());
    }

    #[test]
    fn parse_save_reads_tables_chains_and_rules_in_order() {
        let t = parse_save(N1).unwrap();
        assert!(t.contains_key("nat") && t.contains_key("filter"));
        let svc = &t["nat"].chains["KUBE-SVC-BCTCTPECXSWGJENO"];
        assert_eq!(svc.len(), 3);
        assert_eq!(svc[2].last().unwrap(), "KUBE-SEP-NOUCMC4S45ZWWOLO");
        assert!(t["nat"].chains["KUBE-PROXY-CANARY"].is_empty());
        assert!(parse_save("-A X -j Y\n")
            .unwrap_err()
            .contains("outside a table"));
    }

    #[test]
    fn cluster_ip_from_a_pod_spreads_over_every_endpoint_and_keeps_the_source() {
        let r = rules(N1);
        let s = service_nat(&r, &pkt("10.244.0.3", "10.96.132.70", "tcp", 80)).unwrap();
        assert_eq!(s.service, "default/echo:tcp");
        assert_eq!(s.rejected, None);
        assert_eq!(
            summary(&s),
            [
                ("10.244.0.2:8080".into(), 0.333, false),
                ("10.244.1.2:8080".into(), 0.333, false),
                ("10.244.1.3:8080".into(), 0.333, false),
            ]
        );
        let total: f64 = s.endpoints.iter().map(|e| e.probability).sum();
        assert!((total - 1.0).abs() < 1e-6, "{total}");
        assert_eq!(
            s.endpoints[0].chains,
            [
                "KUBE-SERVICES",
                "KUBE-SVC-BCTCTPECXSWGJENO",
                "KUBE-SEP-7YIKJKCD5UTXFYET"
            ]
        );
        // The UDP port of the same ClusterIP goes to the UDP endpoints.
        let u = service_nat(&r, &pkt("10.244.0.3", "10.96.132.70", "udp", 81)).unwrap();
        assert_eq!(u.service, "default/echo:udp");
        assert!(u.endpoints.iter().all(|e| e.port == 8081));
        // A port the Service does not have: nothing.
        assert_eq!(
            service_nat(&r, &pkt("10.244.0.3", "10.96.132.70", "tcp", 81)),
            None
        );
    }

    #[test]
    fn hairpin_and_clients_outside_the_cluster_network_are_masqueraded() {
        let r = rules(N1);
        // The endpoint itself as the client: only its own KUBE-SEP masquerades.
        let s = service_nat(&r, &pkt("10.244.0.2", "10.96.132.70", "tcp", 80)).unwrap();
        let own: Vec<bool> = s
            .endpoints
            .iter()
            .map(|e| e.masquerade == (e.ip.to_string() == "10.244.0.2"))
            .collect();
        assert_eq!(own, [true, true, true], "{s:?}");
        // From the node (not in --cluster-cidr): every endpoint sees the node's address.
        let s = service_nat(&r, &pkt("192.168.77.11", "10.96.132.70", "tcp", 80)).unwrap();
        assert!(s.endpoints.iter().all(|e| e.masquerade), "{s:?}");
    }

    #[test]
    fn node_ports_follow_external_traffic_policy() {
        let r1 = rules(N1);
        let mut p = pkt("198.51.100.2", "192.168.77.11", "tcp", 30991);
        p.dst_local = true;
        // Cluster: all endpoints, masqueraded.
        let s = service_nat(&r1, &p).unwrap();
        assert_eq!(s.service, "default/echo-np");
        assert_eq!(summary(&s).len(), 3);
        assert!(s.endpoints.iter().all(|e| e.masquerade));
        assert_eq!(s.endpoints[0].chains[1], "KUBE-NODEPORTS");
        // The same port to an address that is not the node's: no NodePort.
        p.dst_local = false;
        assert_eq!(service_nat(&r1, &p), None);
        // Local: only this node's endpoints, the client's address kept.
        let mut p = pkt("198.51.100.2", "192.168.77.11", "tcp", 30027);
        p.dst_local = true;
        let s = service_nat(&r1, &p).unwrap();
        assert_eq!(summary(&s), [("10.244.0.2:8080".into(), 1.0, false)]);
        let s = service_nat(&rules(N2_NAT), &p).unwrap();
        assert_eq!(
            summary(&s),
            [
                ("10.244.1.2:8080".into(), 0.5, false),
                ("10.244.1.3:8080".into(), 0.5, false),
            ]
        );
        // From a pod, a Local NodePort goes to the whole Service (kube-proxy's redirect).
        let mut p = pkt("10.244.0.3", "192.168.77.11", "tcp", 30027);
        p.dst_local = true;
        assert_eq!(summary(&service_nat(&r1, &p).unwrap()).len(), 3);
        // From the node itself: the whole Service, masqueraded.
        let mut p = pkt("192.168.77.11", "192.168.77.11", "tcp", 30027);
        (p.dst_local, p.src_local) = (true, true);
        let s = service_nat(&r1, &p).unwrap();
        assert_eq!(s.endpoints.len(), 3);
        assert!(s.endpoints.iter().all(|e| e.masquerade));
    }

    #[test]
    fn a_service_without_endpoints_is_rejected_by_the_filter_table() {
        let s = service_nat(&rules(N1), &pkt("10.244.0.3", "10.96.244.205", "tcp", 80)).unwrap();
        assert!(s.endpoints.is_empty());
        assert_eq!(
            s.rejected.as_deref(),
            Some("default/nobody has no endpoints (REJECT icmp-port-unreachable)")
        );
        assert_eq!(s.service, "default/nobody has no endpoints");
    }

    #[test]
    fn service_ports_lists_cluster_ip_ports_and_node_ports() {
        let r = rules(N1);
        assert_eq!(
            service_ports(&r, "10.96.132.70".parse().unwrap(), false),
            [("tcp".to_string(), 80), ("udp".to_string(), 81)]
        );
        assert_eq!(
            service_ports(&r, "10.96.244.205".parse().unwrap(), false),
            [("tcp".to_string(), 80)]
        );
        let mut node = service_ports(&r, "192.168.77.11".parse().unwrap(), true);
        node.sort();
        assert_eq!(
            node,
            [("tcp".to_string(), 30027), ("tcp".to_string(), 30991)]
        );
        assert!(service_ports(&r, "10.244.0.2".parse().unwrap(), false).is_empty());
    }

    #[test]
    fn a_chain_entered_by_goto_returns_to_the_caller_of_the_chain() {
        let text = "*nat\n:KUBE-SERVICES - [0:0]\n:A - [0:0]\n:B - [0:0]\n\
            -A KUBE-SERVICES -j A\n\
            -A KUBE-SERVICES -j DNAT --to-destination 10.244.0.8:80\n\
            -A A -g B\n\
            -A A -j DNAT --to-destination 10.244.0.9:80\n\
            -A B -j RETURN\nCOMMIT\n";
        let s = service_nat(&rules(text), &pkt("10.244.0.3", "10.96.0.9", "tcp", 80)).unwrap();
        assert_eq!(summary(&s), [("10.244.0.8:80".into(), 1.0, false)]);
    }

    #[test]
    fn rules_with_matches_not_understood_are_not_followed() {
        let text = "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SEP-A - [0:0]\n\
            -A KUBE-SERVICES -i eth9 -d 10.96.0.9/32 -p tcp -m tcp --dport 80 -j KUBE-SEP-A\n\
            -A KUBE-SEP-A -p tcp -m tcp -j DNAT --to-destination 10.244.0.9:80\nCOMMIT\n";
        assert_eq!(
            service_nat(&rules(text), &pkt("10.244.0.3", "10.96.0.9", "tcp", 80)),
            None
        );
    }
}
