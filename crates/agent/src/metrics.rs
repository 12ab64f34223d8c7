//! Prometheus metrics of the agent (served on /metrics).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
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

pub struct Metrics {
    pub registry: Registry,
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
        Metrics {
            registry,
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
