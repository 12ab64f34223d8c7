//! Conversion from the Kubernetes API types (k8s-openapi, types only) to the model, with errors
//! that name the object and the field.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::model::Pod;
use crate::model::{
    Direction, IpBlock, NamedPort, Namespace, Namespaces, Operator, Peer, PodSet, Policy, PortRef,
    PortSpec, Protocol, Requirement, Rule, Selector,
};

/// An API object the model cannot take, with the object (`kind namespace/name`) and what is
/// wrong, e.g. `NetworkPolicy x/allow-web: spec.ingress[0].from[1].ipBlock.cidr: invalid CIDR
/// "10.0.0.0/33"`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {object}: {field}: {reason}")]
pub struct ConversionError {
    pub kind: &'static str,
    pub object: String,
    pub field: String,
    pub reason: String,
}

fn object_name(meta: &ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// A Namespace; `kubernetes.io/metadata.name` is added from the name (absent before v1.21).
pub fn namespace(ns: &core::Namespace) -> Result<Namespace, ConversionError> {
    let name = ns.metadata.name.clone().unwrap_or_default();
    if name.is_empty() {
        return Err(ConversionError {
            kind: "Namespace",
            object: "<unnamed>".into(),
            field: "metadata.name".into(),
            reason: "empty".into(),
        });
    }
    Ok(Namespace::new(
        name,
        ns.metadata.labels.clone().unwrap_or_default(),
    ))
}

/// What policy reads of a Pod, and nothing else: weftd's pod watch decodes Pods straight into
/// this (`Deserialize` skips every other field of the JSON without building it: managed fields,
/// container statuses, env, volumes are most of a Pod's few KiB), so 10k pods cost little.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SlimPod {
    /// name, namespace, labels and resourceVersion only (the watch needs the last).
    pub metadata: ObjectMeta,
    pub node_name: Option<String>,
    pub host_network: bool,
    pub phase: Option<String>,
    /// `status.podIPs`, else `status.podIP`, as written.
    pub ips: Vec<String>,
    /// The named ports of `spec.containers[].ports[]` (unnamed ones mean nothing to policy).
    pub ports: Vec<SlimPort>,
}

/// A named container port, with where it was (for errors).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlimPort {
    pub container: usize,
    pub index: usize,
    pub name: String,
    pub protocol: Option<String>,
    pub container_port: i32,
}

fn slim_meta(m: &ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: m.name.clone(),
        namespace: m.namespace.clone(),
        labels: m.labels.clone(),
        resource_version: m.resource_version.clone(),
        ..Default::default()
    }
}

fn listed_ips(pod_ips: Option<Vec<String>>, pod_ip: Option<String>) -> Vec<String> {
    match pod_ips {
        Some(list) if !list.is_empty() => list,
        _ => pod_ip.into_iter().collect(),
    }
}

impl From<&core::Pod> for SlimPod {
    fn from(p: &core::Pod) -> SlimPod {
        let spec = p.spec.as_ref();
        let status = p.status.as_ref();
        let mut ports = Vec::new();
        for (ci, c) in spec
            .map(|s| s.containers.as_slice())
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            for (pi, port) in c.ports.iter().flatten().enumerate() {
                if let Some(name) = &port.name {
                    ports.push(SlimPort {
                        container: ci,
                        index: pi,
                        name: name.clone(),
                        protocol: port.protocol.clone(),
                        container_port: port.container_port,
                    });
                }
            }
        }
        SlimPod {
            metadata: slim_meta(&p.metadata),
            node_name: spec.and_then(|s| s.node_name.clone()),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            phase: status.and_then(|s| s.phase.clone()),
            ips: listed_ips(
                status
                    .and_then(|s| s.pod_ips.as_ref())
                    .map(|l| l.iter().map(|i| i.ip.clone()).collect()),
                status.and_then(|s| s.pod_ip.clone()),
            ),
            ports,
        }
    }
}

impl<'de> serde::Deserialize<'de> for SlimPod {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SlimPod, D::Error> {
        use serde::Deserialize;
        use std::collections::BTreeMap;
        // Unknown fields are skipped by serde without being built.
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Meta {
            name: Option<String>,
            namespace: Option<String>,
            labels: Option<BTreeMap<String, String>>,
            resource_version: Option<String>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Port {
            name: Option<String>,
            protocol: Option<String>,
            container_port: i32,
        }
        #[derive(Deserialize)]
        struct Container {
            ports: Option<Vec<Port>>,
        }
        #[derive(Deserialize, Default)]
        #[serde(rename_all = "camelCase")]
        struct Spec {
            node_name: Option<String>,
            host_network: Option<bool>,
            #[serde(default)]
            containers: Vec<Container>,
        }
        #[derive(Deserialize)]
        struct PodIp {
            ip: String,
        }
        #[derive(Deserialize, Default)]
        #[serde(rename_all = "camelCase")]
        struct Status {
            phase: Option<String>,
            #[serde(rename = "podIP")]
            pod_ip: Option<String>,
            #[serde(rename = "podIPs")]
            pod_ips: Option<Vec<PodIp>>,
        }
        #[derive(Deserialize)]
        struct Wire {
            metadata: Meta,
            spec: Option<Spec>,
            status: Option<Status>,
        }
        let w = Wire::deserialize(d)?;
        let spec = w.spec.unwrap_or_default();
        let status = w.status.unwrap_or_default();
        let mut ports = Vec::new();
        for (ci, c) in spec.containers.into_iter().enumerate() {
            for (pi, port) in c.ports.into_iter().flatten().enumerate() {
                if let Some(name) = port.name {
                    ports.push(SlimPort {
                        container: ci,
                        index: pi,
                        name,
                        protocol: port.protocol,
                        container_port: port.container_port,
                    });
                }
            }
        }
        Ok(SlimPod {
            metadata: ObjectMeta {
                name: w.metadata.name,
                namespace: w.metadata.namespace,
                labels: w.metadata.labels,
                resource_version: w.metadata.resource_version,
                ..Default::default()
            },
            node_name: spec.node_name,
            host_network: spec.host_network.unwrap_or(false),
            phase: status.phase,
            ips: listed_ips(
                status
                    .pod_ips
                    .map(|l| l.into_iter().map(|i| i.ip).collect()),
                status.pod_ip,
            ),
            ports,
        })
    }
}

/// A Pod as seen from node `node_name`. A pod that has finished (Succeeded/Failed) keeps no
/// IPs: its address may already belong to a new pod.
pub fn pod(p: &core::Pod, node_name: &str) -> Result<Pod, ConversionError> {
    slim_pod(&SlimPod::from(p), node_name)
}

/// [`pod`] of a Pod as weftd's watch decodes it.
pub fn slim_pod(p: &SlimPod, node_name: &str) -> Result<Pod, ConversionError> {
    let (namespace, name) = object_name(&p.metadata);
    let err = |field: String, reason: String| ConversionError {
        kind: "Pod",
        object: format!("{namespace}/{name}"),
        field,
        reason,
    };
    let finished = matches!(p.phase.as_deref(), Some("Succeeded" | "Failed"));
    let mut ips: Vec<IpAddr> = Vec::new();
    if !finished {
        for (i, text) in p.ips.iter().enumerate() {
            let ip = text.parse().map_err(|_| {
                err(
                    format!("status.podIPs[{i}]"),
                    format!("invalid IP {text:?}"),
                )
            })?;
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
    }
    let mut named_ports = Vec::new();
    for port in &p.ports {
        let field = format!("spec.containers[{}].ports[{}]", port.container, port.index);
        let protocol = match port.protocol.as_deref() {
            None => Protocol::Tcp,
            Some(s) => Protocol::parse(s).ok_or_else(|| {
                err(
                    field.clone() + ".protocol",
                    format!("unknown protocol {s:?}"),
                )
            })?,
        };
        let number = u16::try_from(port.container_port)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                err(
                    field.clone() + ".containerPort",
                    format!("{} is not a port", port.container_port),
                )
            })?;
        named_ports.push(NamedPort {
            name: port.name.clone(),
            protocol,
            port: number,
        });
    }
    Ok(Pod {
        labels: p.metadata.labels.clone().unwrap_or_default(),
        ips,
        named_ports,
        local: p.node_name.as_deref() == Some(node_name),
        host_network: p.host_network,
        namespace,
        name,
    })
}

/// metav1.LabelSelector to a [`Selector`]; `field` names it in errors.
pub fn selector(sel: &LabelSelector, field: &str) -> Result<Selector, (String, String)> {
    let mut out = Selector {
        match_labels: sel.match_labels.clone().unwrap_or_default(),
        match_expressions: Vec::new(),
    };
    for (i, req) in sel.match_expressions.iter().flatten().enumerate() {
        let f = format!("{field}.matchExpressions[{i}]");
        let values: BTreeSet<String> = req.values.iter().flatten().cloned().collect();
        let operator = match req.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err((
                    f + ".values",
                    format!("{} needs at least one value", req.operator),
                ))
            }
            "In" => Operator::In(values),
            "NotIn" => Operator::NotIn(values),
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err((f + ".values", format!("{} takes no values", req.operator)))
            }
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            other => {
                return Err((
                    f + ".operator",
                    format!("unknown operator {other:?} (In, NotIn, Exists, DoesNotExist)"),
                ))
            }
        };
        out.match_expressions.push(Requirement {
            key: req.key.clone(),
            operator,
        });
    }
    out.match_expressions.sort();
    out.match_expressions.dedup();
    Ok(out)
}

/// A NetworkPolicy, with policyTypes' defaults applied.
pub fn policy(p: &net::NetworkPolicy) -> Result<Policy, ConversionError> {
    let (namespace, name) = object_name(&p.metadata);
    let err = |(field, reason): (String, String)| ConversionError {
        kind: "NetworkPolicy",
        object: format!("{namespace}/{name}"),
        field,
        reason,
    };
    let spec = p.spec.clone().unwrap_or_default();
    let pod_selector = match &spec.pod_selector {
        Some(s) => selector(s, "spec.podSelector").map_err(err)?,
        None => Selector::all(),
    };
    let types: Option<Vec<Direction>> = match &spec.policy_types {
        None => None,
        Some(list) => Some(
            list.iter()
                .enumerate()
                .map(|(i, t)| match t.as_str() {
                    "Ingress" => Ok(Direction::Ingress),
                    "Egress" => Ok(Direction::Egress),
                    other => Err((
                        format!("spec.policyTypes[{i}]"),
                        format!("unknown policy type {other:?} (Ingress, Egress)"),
                    )),
                })
                .collect::<Result<_, _>>()
                .map_err(err)?,
        ),
    };
    let mut ingress = Vec::new();
    for (i, r) in spec.ingress.iter().flatten().enumerate() {
        let field = format!("spec.ingress[{i}]");
        ingress.push(
            rule(
                &namespace,
                r.from.as_deref(),
                r.ports.as_deref(),
                &field,
                "from",
            )
            .map_err(err)?,
        );
    }
    let mut egress = Vec::new();
    for (i, r) in spec.egress.iter().flatten().enumerate() {
        let field = format!("spec.egress[{i}]");
        egress.push(
            rule(
                &namespace,
                r.to.as_deref(),
                r.ports.as_deref(),
                &field,
                "to",
            )
            .map_err(err)?,
        );
    }
    Ok(Policy::new(
        &namespace,
        &name,
        pod_selector,
        types.as_deref(),
        ingress,
        egress,
    ))
}

fn rule(
    namespace: &str,
    peers: Option<&[net::NetworkPolicyPeer]>,
    ports: Option<&[net::NetworkPolicyPort]>,
    field: &str,
    peers_name: &str,
) -> Result<Rule, (String, String)> {
    let mut out = Rule::default();
    for (i, peer) in peers.unwrap_or_default().iter().enumerate() {
        let f = format!("{field}.{peers_name}[{i}]");
        out.peers.push(convert_peer(namespace, peer, &f)?);
    }
    for (i, port) in ports.unwrap_or_default().iter().enumerate() {
        let f = format!("{field}.ports[{i}]");
        out.ports.push(convert_port(port, &f)?);
    }
    Ok(out)
}

fn convert_peer(
    namespace: &str,
    peer: &net::NetworkPolicyPeer,
    f: &str,
) -> Result<Peer, (String, String)> {
    match (&peer.ip_block, &peer.pod_selector, &peer.namespace_selector) {
        (Some(block), None, None) => {
            let parse = |text: &str, field: String| -> Result<IpNet, (String, String)> {
                text.parse::<IpNet>()
                    .map_err(|_| (field, format!("invalid CIDR {text:?}")))
            };
            let cidr = parse(&block.cidr, format!("{f}.ipBlock.cidr"))?;
            let mut except = Vec::new();
            for (j, e) in block.except.iter().flatten().enumerate() {
                let net = parse(e, format!("{f}.ipBlock.except[{j}]"))?;
                if net.addr().is_ipv4() != cidr.addr().is_ipv4() {
                    return Err((
                        format!("{f}.ipBlock.except[{j}]"),
                        format!("{e} is not of the family of cidr {}", block.cidr),
                    ));
                }
                except.push(net);
            }
            IpBlock::new(cidr, except)
                .map(Peer::IpBlock)
                .map_err(|reason| (format!("{f}.ipBlock.except"), reason))
        }
        (Some(_), _, _) => Err((
            f.to_string(),
            "ipBlock cannot be combined with podSelector or namespaceSelector".into(),
        )),
        (None, None, None) => Err((
            f.to_string(),
            "a peer needs podSelector, namespaceSelector or ipBlock".into(),
        )),
        (None, pods, nss) => {
            let pods = match pods {
                Some(s) => selector(s, &format!("{f}.podSelector"))?,
                None => Selector::all(),
            };
            let namespaces = match nss {
                Some(s) => Namespaces::Selected(selector(s, &format!("{f}.namespaceSelector"))?),
                None => Namespaces::Named(namespace.to_string()),
            };
            Ok(Peer::Pods(PodSet { namespaces, pods }))
        }
    }
}

fn convert_port(port: &net::NetworkPolicyPort, f: &str) -> Result<PortSpec, (String, String)> {
    let protocol = match port.protocol.as_deref() {
        None => Protocol::Tcp,
        Some(s) => Protocol::parse(s).ok_or_else(|| {
            (
                format!("{f}.protocol"),
                format!("unknown protocol {s:?} (TCP, UDP, SCTP)"),
            )
        })?,
    };
    let number = |n: i32, field: &str| -> Result<u16, (String, String)> {
        u16::try_from(n).ok().filter(|n| *n > 0).ok_or_else(|| {
            (
                format!("{f}.{field}"),
                format!("{n} is not a port (1-65535)"),
            )
        })
    };
    let port_ref = match &port.port {
        None => None,
        Some(IntOrString::Int(n)) => Some(PortRef::Number(number(*n, "port")?)),
        // A string of digits is still a name to the API (it must contain a letter), but be
        // forgiving and read it as the number it obviously means.
        Some(IntOrString::String(s)) => match s.parse::<i32>() {
            Ok(n) => Some(PortRef::Number(number(n, "port")?)),
            Err(_) if s.is_empty() => return Err((format!("{f}.port"), "empty port name".into())),
            Err(_) => Some(PortRef::Name(s.clone())),
        },
    };
    let end_port = match port.end_port {
        None => None,
        Some(end) => {
            let end = number(end, "endPort")?;
            match &port_ref {
                Some(PortRef::Number(start)) if *start <= end => Some(end),
                Some(PortRef::Number(start)) => {
                    return Err((
                        format!("{f}.endPort"),
                        format!("{end} is below port {start}"),
                    ))
                }
                _ => {
                    return Err((
                        format!("{f}.endPort"),
                        "endPort needs a numeric port".into(),
                    ))
                }
            }
        }
    };
    Ok(PortSpec {
        protocol,
        port: port_ref,
        end_port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn np(spec: serde_json::Value) -> Result<Policy, ConversionError> {
        let obj: net::NetworkPolicy = serde_json::from_value(json!({
            "metadata": { "namespace": "x", "name": "p" }, "spec": spec,
        }))
        .unwrap();
        policy(&obj)
    }

    fn err(spec: serde_json::Value) -> String {
        np(spec).unwrap_err().to_string()
    }

    #[test]
    fn invalid_policies_name_object_and_field() {
        assert_eq!(
            err(json!({ "podSelector": {}, "ingress": [{ "from": [{}, { "ipBlock": { "cidr": "10.0.0.0/33" } }] }] })),
            "NetworkPolicy x/p: spec.ingress[0].from[0]: a peer needs podSelector, namespaceSelector or ipBlock"
        );
        assert_eq!(
            err(
                json!({ "podSelector": {}, "egress": [{ "to": [{ "ipBlock": { "cidr": "10.0.0.0/33" } }] }] })
            ),
            "NetworkPolicy x/p: spec.egress[0].to[0].ipBlock.cidr: invalid CIDR \"10.0.0.0/33\""
        );
        assert!(err(json!({ "podSelector": { "matchExpressions": [{ "key": "a", "operator": "Equals", "values": ["b"] }] } }))
            .contains("spec.podSelector.matchExpressions[0].operator: unknown operator \"Equals\""));
        assert!(err(
            json!({ "podSelector": { "matchExpressions": [{ "key": "a", "operator": "In" }] } })
        )
        .contains("In needs at least one value"));
        assert!(err(json!({ "podSelector": { "matchExpressions": [{ "key": "a", "operator": "Exists", "values": ["b"] }] } }))
            .contains("Exists takes no values"));
        assert!(err(json!({ "podSelector": {}, "ingress": [{ "ports": [{ "port": "web", "endPort": 90 }] }] }))
            .contains("spec.ingress[0].ports[0].endPort: endPort needs a numeric port"));
        assert!(err(
            json!({ "podSelector": {}, "ingress": [{ "ports": [{ "port": 90, "endPort": 80 }] }] })
        )
        .contains("80 is below port 90"));
        assert!(err(
            json!({ "podSelector": {}, "ingress": [{ "ports": [{ "protocol": "ICMP" }] }] })
        )
        .contains("unknown protocol \"ICMP\""));
        assert!(
            err(json!({ "podSelector": {}, "ingress": [{ "ports": [{ "port": 70000 }] }] }))
                .contains("70000 is not a port")
        );
        assert!(err(json!({ "podSelector": {}, "ingress": [{ "from": [{ "ipBlock": { "cidr": "10.0.0.0/8", "except": ["11.0.0.0/24"] } }] }] }))
            .contains("except 11.0.0.0/24 is not within cidr 10.0.0.0/8"));
        assert!(
            err(json!({ "podSelector": {}, "policyTypes": ["Sideways"] }))
                .contains("spec.policyTypes[0]")
        );
    }

    #[test]
    fn peers_ports_and_defaults() {
        let p = np(json!({
            "podSelector": { "matchLabels": { "app": "db" } },
            "ingress": [{
                "from": [
                    { "podSelector": { "matchLabels": { "app": "web" } } },
                    { "namespaceSelector": {} , "podSelector": { "matchLabels": { "app": "mon" } } },
                    { "ipBlock": { "cidr": "192.168.1.7/24", "except": ["192.168.1.128/25"] } }],
                "ports": [{ "port": 5432 }, { "port": "metrics", "protocol": "UDP" }, { "port": 7000, "endPort": 7010, "protocol": "SCTP" }] }]
        }))
        .unwrap();
        assert!(p.isolates_ingress && !p.isolates_egress);
        let r = &p.ingress[0];
        assert_eq!(
            r.peers[0],
            Peer::Pods(PodSet {
                namespaces: Namespaces::Named("x".into()),
                pods: Selector::labels([("app", "web")])
            })
        );
        assert_eq!(
            r.peers[1],
            Peer::Pods(PodSet {
                namespaces: Namespaces::Selected(Selector::all()),
                pods: Selector::labels([("app", "mon")])
            })
        );
        match &r.peers[2] {
            Peer::IpBlock(b) => assert_eq!(b.cidr.to_string(), "192.168.1.0/24"),
            other => panic!("{other:?}"),
        }
        assert_eq!(r.ports[0], PortSpec::number(Protocol::Tcp, 5432));
        assert_eq!(r.ports[1], PortSpec::named(Protocol::Udp, "metrics"));
        assert_eq!(r.ports[2], PortSpec::range(Protocol::Sctp, 7000, 7010));
        // No podSelector at all (allowed since v1.31's optional field): every pod.
        assert!(np(json!({})).unwrap().pod_selector.is_all());
    }

    /// A full Pod as the API server sends it (managed fields, statuses, env, volumes): the
    /// watch's slim decoding keeps exactly what policy reads, and converts like the full one.
    #[test]
    fn slim_pod_decodes_a_full_pod() {
        let text = include_str!("../tests/data/pod-full.json");
        let full: core::Pod = serde_json::from_str(text).unwrap();
        let slim: SlimPod = serde_json::from_str(text).unwrap();
        assert_eq!(slim, SlimPod::from(&full));
        assert_eq!(slim.metadata.name.as_deref(), Some("web-6d4cf56db6-x7k2p"));
        assert_eq!(slim.metadata.resource_version.as_deref(), Some("48213"));
        assert!(slim.metadata.annotations.is_none() && slim.metadata.managed_fields.is_none());
        assert_eq!(slim.ips, ["10.244.1.7", "fd00:10:244:1::7"]);
        let names: Vec<(&str, usize, usize)> = slim
            .ports
            .iter()
            .map(|p| (p.name.as_str(), p.container, p.index))
            .collect();
        assert_eq!(names, [("http", 0, 0), ("echo", 0, 1), ("metrics", 1, 0)]);
        let m = slim_pod(&slim, "n2").unwrap();
        assert_eq!(m, pod(&full, "n2").unwrap());
        assert!(m.local && !m.host_network);
        assert_eq!(m.labels["tier"], "frontend");
        assert_eq!(m.named_port("echo", Protocol::Udp), Some(8081));
        assert_eq!(m.named_port("metrics", Protocol::Tcp), Some(9090));
        // Errors still name the container and port.
        let mut bad = slim.clone();
        bad.ports[2].protocol = Some("QUIC".into());
        assert_eq!(
            slim_pod(&bad, "n2").unwrap_err().to_string(),
            "Pod shop/web-6d4cf56db6-x7k2p: spec.containers[1].ports[0].protocol: unknown protocol \"QUIC\""
        );
        // podIP alone (older servers), no spec at all.
        let only: SlimPod = serde_json::from_str(
            r#"{"metadata":{"name":"p","namespace":"x"},"status":{"podIP":"10.1.0.4"}}"#,
        )
        .unwrap();
        assert_eq!(only.ips, ["10.1.0.4"]);
        assert!(only.ports.is_empty() && only.node_name.is_none());
    }

    #[test]
    fn pods_and_namespaces() {
        let p: core::Pod = serde_json::from_value(json!({
            "metadata": { "namespace": "x", "name": "a", "labels": { "pod": "a" } },
            "spec": { "nodeName": "n1", "containers": [{ "name": "c", "ports": [
                { "name": "web", "containerPort": 8080 },
                { "name": "dns", "containerPort": 53, "protocol": "UDP" },
                { "containerPort": 9 }] }] },
            "status": { "podIPs": [{ "ip": "10.244.1.5" }, { "ip": "fd00::5" }] }
        }))
        .unwrap();
        let m = pod(&p, "n1").unwrap();
        assert!(m.local && !m.host_network);
        assert_eq!(m.ips.len(), 2);
        assert_eq!(m.named_port("web", Protocol::Tcp), Some(8080));
        assert_eq!(m.named_port("dns", Protocol::Udp), Some(53));
        assert_eq!(m.named_ports.len(), 2);
        assert!(!pod(&p, "n2").unwrap().local);

        let mut done = p.clone();
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert!(pod(&done, "n1").unwrap().ips.is_empty());

        let mut bad = p.clone();
        bad.status.as_mut().unwrap().pod_ips.as_mut().unwrap()[0].ip = "10.244.1.500".into();
        assert_eq!(
            pod(&bad, "n1").unwrap_err().to_string(),
            "Pod x/a: status.podIPs[0]: invalid IP \"10.244.1.500\""
        );

        // The watch's decoding keeps the same: named ports with where they were.
        let slim: SlimPod = serde_json::from_value(serde_json::to_value(&p).unwrap()).unwrap();
        assert_eq!(slim, SlimPod::from(&p));
        assert_eq!(slim_pod(&slim, "n1").unwrap(), m);

        let ns: core::Namespace = serde_json::from_value(
            json!({ "metadata": { "name": "y", "labels": { "team": "b" } } }),
        )
        .unwrap();
        let ns = namespace(&ns).unwrap();
        assert_eq!(ns.labels["kubernetes.io/metadata.name"], "y");
        assert_eq!(ns.labels["team"], "b");
    }
}
