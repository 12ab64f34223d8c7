//! Prometheus metrics of the agent (served on /metrics).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabel {
    pub path: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ObjectLabel {
    pub kind: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabel {
    pub command: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub command: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RangeLabel {
    pub range: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabel {
    pub namespace: String,
    pub policy: String,
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IsolationLabel {
    pub namespace: String,
    pub direction: String,
}

/// NetworkPolicy packet counters, read from the kernel's named counters at each scrape
/// (`set` before encoding): what each policy admitted, and what was denied per namespace and
/// direction (a denial is the namespace's isolation: no policy selecting the pod admitted the
/// packet, so it belongs to no single policy).
#[derive(Debug, Default)]
pub struct PolicyPackets {
    samples: std::sync::Mutex<Vec<(weft_policy::CounterMeta, u64)>>,
}

impl PolicyPackets {
    pub fn set(&self, samples: Vec<(weft_policy::CounterMeta, u64)>) {
        *self.samples.lock().unwrap() = samples;
    }

    /// The counters of `meta` (the desired table's) found in `values` (the kernel's).
    pub fn join(
        meta: &std::collections::BTreeMap<String, weft_policy::CounterMeta>,
        values: &std::collections::BTreeMap<String, weft_policy::CounterValue>,
    ) -> Vec<(weft_policy::CounterMeta, u64)> {
        meta.iter()
            .filter_map(|(name, m)| Some((m.clone(), values.get(name)?.packets)))
            .collect()
    }
}

impl Collector for PolicyPackets {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let samples = self.samples.lock().unwrap().clone();
        let direction = |m: &weft_policy::CounterMeta| match m.direction {
            weft_policy::Direction::Ingress => "ingress".to_string(),
            weft_policy::Direction::Egress => "egress".to_string(),
        };
        let mut allowed = encoder.encode_descriptor(
            "policy_allowed_packets",
            "Packets of new connections a NetworkPolicy admitted on this node (to or from the pods it isolates), by policy and direction",
            None,
            MetricType::Counter,
        )?;
        for (m, packets) in samples.iter() {
            let Some(policy) = &m.policy else { continue };
            let labels = PolicyLabel {
                namespace: m.namespace.clone(),
                policy: policy.clone(),
                direction: direction(m),
            };
            ConstCounter::new(*packets).encode(allowed.encode_family(&labels)?)?;
        }
        let mut denied = encoder.encode_descriptor(
            "policy_denied_packets",
            "Packets denied on this node to (ingress) or from (egress) a namespace's pods isolated by NetworkPolicy, none of whose policies admitted them",
            None,
            MetricType::Counter,
        )?;
        for (m, packets) in samples.iter().filter(|(m, _)| m.policy.is_none()) {
            let labels = IsolationLabel {
                namespace: m.namespace.clone(),
                direction: direction(m),
            };
            ConstCounter::new(*packets).encode(denied.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

pub struct Metrics {
    pub registry: Registry,
    pub policy_packets: std::sync::Arc<PolicyPackets>,
    pub policy_log_suppressed: Counter,
    pub peers: Family<PathLabel, Gauge>,
    pub kernel_objects: Family<ObjectLabel, Gauge>,
    pub reconcile_duration: Histogram,
    pub reconcile_errors: Counter,
    pub reconcile_changes: Counter,
    pub datastore_up: Gauge,
    pub ready: Gauge,
    pub cni_duration: Family<CommandLabel, Histogram>,
    pub cni_errors: Family<ErrorLabel, Counter>,
    pub ipam_addresses: Family<RangeLabel, Gauge>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("weft");
        let peers = Family::<PathLabel, Gauge>::default();
        registry.register(
            "peers",
            "Peer nodes by the path used to reach them",
            peers.clone(),
        );
        let kernel_objects = Family::<ObjectLabel, Gauge>::default();
        registry.register(
            "kernel_objects",
            "Routes, neighbours and FDB entries weft wants (desired) and has in the kernel (programmed)",
            kernel_objects.clone(),
        );
        let reconcile_duration = Histogram::new([
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ]);
        registry.register(
            "reconcile_duration_seconds",
            "Time of one reconcile pass",
            reconcile_duration.clone(),
        );
        let reconcile_errors = Counter::default();
        registry.register(
            "reconcile_errors",
            "Kernel operations that failed during reconcile",
            reconcile_errors.clone(),
        );
        let reconcile_changes = Counter::default();
        registry.register(
            "reconcile_changes",
            "Kernel objects added, replaced or deleted by reconcile",
            reconcile_changes.clone(),
        );
        let datastore_up = Gauge::default();
        registry.register(
            "datastore_up",
            "1 when the datastore is reachable",
            datastore_up.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 when the CNI config is written and the firewall rules are in place",
            ready.clone(),
        );
        let cni_duration = Family::<CommandLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ])
        });
        registry.register(
            "cni_operation_duration_seconds",
            "Duration of weft plugin invocations by CNI command (from the plugin's event files)",
            cni_duration.clone(),
        );
        let cni_errors = Family::<ErrorLabel, Counter>::default();
        registry.register(
            "cni_operation_errors",
            "Failed weft plugin invocations by CNI command and CNI error code",
            cni_errors.clone(),
        );
        let ipam_addresses = Family::<RangeLabel, Gauge>::default();
        registry.register(
            "ipam_addresses",
            "Pod addresses per IPAM range, by state (used, free)",
            ipam_addresses.clone(),
        );
        let policy_packets = std::sync::Arc::new(PolicyPackets::default());
        registry.register_collector(Box::new(policy_packets.clone()));
        let policy_log_suppressed = Counter::default();
        registry.register(
            "policy_log_suppressed",
            "Denied connections not written to the deny log (the same flow again within 10 s, over 20 lines a second, or dropped by the kernel)",
            policy_log_suppressed.clone(),
        );
        Metrics {
            registry,
            policy_packets,
            policy_log_suppressed,
            cni_duration,
            cni_errors,
            ipam_addresses,
            peers,
            kernel_objects,
            reconcile_duration,
            reconcile_errors,
            reconcile_changes,
            datastore_up,
            ready,
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encode metrics");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_policy::{CounterMeta, CounterValue, Direction};

    #[test]
    fn policy_counters_are_rendered_per_policy_and_per_isolated_namespace() {
        let meta = [
            ("pi_x_from-y", Direction::Ingress, "x", Some("from-y")),
            ("ni_x", Direction::Ingress, "x", None),
            ("pe_y_dns", Direction::Egress, "y", Some("dns")),
            ("ne_y", Direction::Egress, "y", None),
            ("pi_z_new", Direction::Ingress, "z", Some("new")),
        ]
        .into_iter()
        .map(|(name, direction, ns, policy)| {
            let m = CounterMeta {
                direction,
                namespace: ns.into(),
                policy: policy.map(str::to_string),
            };
            (name.to_string(), m)
        })
        .collect();
        let values = [
            ("pi_x_from-y", 7),
            ("ni_x", 12),
            ("pe_y_dns", 3),
            ("ne_y", 0),
        ]
        .into_iter()
        .map(|(n, packets)| (n.to_string(), CounterValue { packets, bytes: 0 }))
        .collect();
        let m = Metrics::new();
        // pi_z_new is not in the kernel yet (programmed after this read): left out.
        m.policy_packets.set(PolicyPackets::join(&meta, &values));
        let text = m.encode();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("weft_policy_allowed") || l.contains("weft_policy_denied"))
            .collect();
        assert_eq!(
            lines,
            [
                "# HELP weft_policy_allowed_packets Packets of new connections a NetworkPolicy admitted on this node (to or from the pods it isolates), by policy and direction",
                "# TYPE weft_policy_allowed_packets counter",
                r#"weft_policy_allowed_packets_total{namespace="y",policy="dns",direction="egress"} 3"#,
                r#"weft_policy_allowed_packets_total{namespace="x",policy="from-y",direction="ingress"} 7"#,
                "# HELP weft_policy_denied_packets Packets denied on this node to (ingress) or from (egress) a namespace's pods isolated by NetworkPolicy, none of whose policies admitted them",
                "# TYPE weft_policy_denied_packets counter",
                r#"weft_policy_denied_packets_total{namespace="y",direction="egress"} 0"#,
                r#"weft_policy_denied_packets_total{namespace="x",direction="ingress"} 12"#,
            ],
            "{text}"
        );
    }
}
