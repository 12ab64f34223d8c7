//! The connectivity matrix: who reaches whom, and which source address the receiver sees.
//!
//! Reachability is an ICMP echo; the source address comes from a TCP connection to a
//! [`WhoAmIServer`] in the target. Pod -> pod must keep the pod's IP (no NAT inside the
//! cluster); pod -> world must arrive from the node's underlay IP (masqueraded: the world has
//! no route back to pod CIDRs).

use crate::cluster::{Cluster, WORLD_IP};
use crate::probe::{self, WhoAmIServer};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;
use weft_netops::netns::NetNs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    PodPodSameNode,
    PodPodSameSubnet,
    PodPodAcrossSubnets,
    NodePod,
    PodNode,
    PodWorld,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::PodPodSameNode => "pod-pod same node",
            Kind::PodPodSameSubnet => "pod-pod same subnet",
            Kind::PodPodAcrossSubnets => "pod-pod across subnets",
            Kind::NodePod => "node-pod",
            Kind::PodNode => "pod-node",
            Kind::PodWorld => "pod-world",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One probe: `from` -> `to` (`dst`).
#[derive(Debug, Clone)]
pub struct Row {
    pub from: String,
    pub to: String,
    pub dst: IpAddr,
    pub kind: Kind,
    /// The echo was answered.
    pub ok: bool,
    /// Whether it must be: false only where the design says so (host-gw across the router,
    /// which knows no pod routes).
    pub expected_ok: bool,
    /// The source address the receiver saw on a TCP connection (None if it failed).
    pub seen_source: Option<IpAddr>,
    /// What the receiver must see; None when it depends on the backend (node -> pod).
    pub expected_source: Option<IpAddr>,
    /// Why the TCP probe failed, if it did.
    pub tcp_error: Option<String>,
}

impl Row {
    /// Why this row is not what the design promises, if it is not.
    pub fn failure(&self) -> Option<String> {
        let head = format!("{} {} -> {} ({})", self.kind, self.from, self.to, self.dst);
        if self.ok != self.expected_ok {
            return Some(if self.ok {
                format!("{head}: answered, but must be unreachable")
            } else {
                format!("{head}: no echo reply")
            });
        }
        if !self.ok {
            return None;
        }
        match (self.expected_source, self.seen_source) {
            (Some(want), Some(seen)) if want != seen => Some(format!(
                "{head}: receiver saw source {seen}, expected {want}"
            )),
            (Some(want), None) => Some(format!(
                "{head}: TCP probe failed ({}), expected source {want}",
                self.tcp_error.as_deref().unwrap_or("?")
            )),
            _ => None,
        }
    }
}

/// Every row that is not as expected, as a message.
pub fn failures(rows: &[Row]) -> Vec<String> {
    rows.iter().filter_map(Row::failure).collect()
}

/// One endpoint: a pod, a node or the world.
struct End<'a> {
    name: String,
    ns: &'a NetNs,
    ip: IpAddr,
    /// Node name (for pods: their node; for nodes: themselves).
    node: Option<String>,
}

struct Probe<'a> {
    from: &'a End<'a>,
    to: &'a End<'a>,
    kind: Kind,
    expected_ok: bool,
    expected_source: Option<IpAddr>,
}

/// Runs all probes of the cluster's current pods (in parallel) and returns the rows in a
/// stable order: pod-pod pairs, node-pod, pod-node, pod-world.
pub fn connectivity_matrix(c: &Cluster) -> std::io::Result<Vec<Row>> {
    let node_ip =
        |name: &str| -> Option<IpAddr> { c.node(name).map(|n| IpAddr::V4(n.underlay_ip)) };
    let pods: Vec<End> = c
        .pods()
        .iter()
        .filter_map(|p| {
            Some(End {
                name: p.name.clone(),
                ns: p.ns(),
                ip: p.ipv4()?,
                node: Some(p.node.clone()),
            })
        })
        .collect();
    let nodes: Vec<End> = c
        .nodes
        .iter()
        .map(|n| End {
            name: n.name.clone(),
            ns: n.ns(),
            ip: IpAddr::V4(n.underlay_ip),
            node: Some(n.name.clone()),
        })
        .collect();
    let world = End {
        name: "world".into(),
        ns: c.world.handle(),
        ip: IpAddr::V4(WORLD_IP),
        node: None,
    };
    let segment = |node: &str| c.node(node).map(|n| n.segment);
    // host-gw routes pod CIDRs via peers' underlay IPs: only on the same segment.
    let host_gw = c.config.backend == "host-gw";
    let reachable = |a: &End, b: &End| {
        !host_gw || segment(a.node.as_deref().unwrap()) == segment(b.node.as_deref().unwrap())
    };

    let mut probes = Vec::new();
    for a in &pods {
        for b in &pods {
            if a.name == b.name {
                continue;
            }
            let kind = if a.node == b.node {
                Kind::PodPodSameNode
            } else if segment(a.node.as_deref().unwrap()) == segment(b.node.as_deref().unwrap()) {
                Kind::PodPodSameSubnet
            } else {
                Kind::PodPodAcrossSubnets
            };
            probes.push(Probe {
                from: a,
                to: b,
                kind,
                expected_ok: reachable(a, b),
                expected_source: Some(a.ip),
            });
        }
    }
    // Node -> the first pod of every node; the source depends on the backend.
    let first_pods: Vec<&End> = nodes
        .iter()
        .filter_map(|n| pods.iter().find(|p| p.node == n.node))
        .collect();
    for n in &nodes {
        for p in &first_pods {
            probes.push(Probe {
                from: n,
                to: p,
                kind: Kind::NodePod,
                expected_ok: reachable(n, p),
                expected_source: None,
            });
        }
    }
    // First pod of every node -> every node. Its own node sees the pod IP (local delivery,
    // never masqueraded); other nodes are outside the cluster network, and whether traffic to
    // them is masqueraded is a policy choice: not checked.
    for p in &first_pods {
        for n in &nodes {
            let expected = (p.node == n.node).then_some(p.ip);
            probes.push(Probe {
                from: p,
                to: n,
                kind: Kind::PodNode,
                expected_ok: true,
                expected_source: expected,
            });
        }
    }
    for p in &pods {
        let expected = p.node.as_deref().and_then(node_ip);
        probes.push(Probe {
            from: p,
            to: &world,
            kind: Kind::PodWorld,
            expected_ok: true,
            expected_source: expected,
        });
    }

    // One whoami server per target.
    let mut servers: Vec<(String, WhoAmIServer)> = Vec::new();
    for e in pods
        .iter()
        .chain(nodes.iter())
        .chain(std::iter::once(&world))
    {
        let s = WhoAmIServer::start(e.ns, IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)?;
        servers.push((e.name.clone(), s));
    }
    let port_of = |name: &str| servers.iter().find(|(n, _)| n == name).map(|(_, s)| s.port);

    let results: Mutex<Vec<Option<Row>>> = Mutex::new(vec![None; probes.len()]);
    let next = Mutex::new(0usize);
    std::thread::scope(|s| {
        for _ in 0..8.min(probes.len()) {
            s.spawn(|| loop {
                let i = {
                    let mut n = next.lock().unwrap();
                    let i = *n;
                    *n += 1;
                    i
                };
                let Some(p) = probes.get(i) else { break };
                let row = run_probe(p, port_of(&p.to.name).unwrap_or(0));
                results.lock().unwrap()[i] = Some(row);
            });
        }
    });
    Ok(results
        .into_inner()
        .unwrap()
        .into_iter()
        .flatten()
        .collect())
}

fn run_probe(p: &Probe, port: u16) -> Row {
    // A second echo absorbs a first packet lost to ARP resolution on a cold path.
    let ok = probe::ping(p.from.ns, p.to.ip) || probe::ping(p.from.ns, p.to.ip);
    // Unreachable: a TCP probe would only wait for its timeout.
    let (seen_source, tcp_error) = if !ok {
        (None, Some("not tried: no echo reply".to_string()))
    } else {
        match probe::whoami(p.from.ns, p.to.ip, port) {
            Ok(ip) => (Some(ip), None),
            Err(e) => (None, Some(e.to_string())),
        }
    };
    Row {
        from: p.from.name.clone(),
        to: p.to.name.clone(),
        dst: p.to.ip,
        kind: p.kind,
        ok,
        expected_ok: p.expected_ok,
        seen_source,
        expected_source: p.expected_source,
        tcp_error,
    }
}

/// The rows as an aligned text table, failures marked.
pub fn table(rows: &[Row]) -> String {
    let header = [
        "FROM",
        "TO",
        "DST",
        "KIND",
        "PING",
        "SEEN SOURCE",
        "EXPECTED",
        "",
    ];
    let mut lines: Vec<[String; 8]> = vec![header.map(String::from)];
    for r in rows {
        lines.push([
            r.from.clone(),
            r.to.clone(),
            r.dst.to_string(),
            r.kind.to_string(),
            match (r.ok, r.expected_ok) {
                (true, _) => "ok",
                (false, true) => "FAIL",
                (false, false) => "no (expected)",
            }
            .into(),
            r.seen_source
                .map(|s| s.to_string())
                .unwrap_or_else(|| "-".into()),
            r.expected_source
                .map(|s| s.to_string())
                .unwrap_or_else(|| "(any)".into()),
            if r.failure().is_some() {
                "<-- FAIL"
            } else {
                ""
            }
            .into(),
        ]);
    }
    let mut widths = [0usize; 8];
    for l in &lines {
        for (w, cell) in widths.iter_mut().zip(l.iter()) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for l in &lines {
        let cells: Vec<String> = l
            .iter()
            .zip(widths.iter())
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ok: bool, seen: Option<&str>, expected: Option<&str>) -> Row {
        Row {
            from: "a".into(),
            to: "b".into(),
            dst: "10.244.2.2".parse().unwrap(),
            kind: Kind::PodPodSameSubnet,
            ok,
            expected_ok: true,
            seen_source: seen.map(|s| s.parse().unwrap()),
            expected_source: expected.map(|s| s.parse().unwrap()),
            tcp_error: seen.is_none().then(|| "refused".into()),
        }
    }

    #[test]
    fn expected_vs_actual() {
        assert!(row(true, Some("10.244.1.2"), Some("10.244.1.2"))
            .failure()
            .is_none());
        assert!(row(true, None, None).failure().is_none());
        assert!(row(true, Some("192.168.77.11"), None).failure().is_none());
        let f = row(true, Some("192.168.77.11"), Some("10.244.1.2"))
            .failure()
            .unwrap();
        assert!(
            f.contains("saw source 192.168.77.11, expected 10.244.1.2"),
            "{f}"
        );
        assert!(row(false, Some("10.244.1.2"), Some("10.244.1.2"))
            .failure()
            .unwrap()
            .contains("no echo"));
        assert!(row(true, None, Some("10.244.1.2"))
            .failure()
            .unwrap()
            .contains("refused"));
        // Unreachable by design (host-gw across the router): fine when unanswered, a failure
        // when answered.
        let mut r = row(false, None, Some("10.244.1.2"));
        r.expected_ok = false;
        assert!(r.failure().is_none());
        r.ok = true;
        assert!(r.failure().unwrap().contains("must be unreachable"));
        let rows = [row(true, None, None), row(false, None, None)];
        assert_eq!(failures(&rows).len(), 1);
        let t = table(&rows);
        assert_eq!(t.lines().count(), 3);
        assert!(t.lines().nth(2).unwrap().ends_with("<-- FAIL"));
    }
}
