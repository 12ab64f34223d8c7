//! weft-policy: Kubernetes NetworkPolicy (networking.k8s.io/v1) for weft, enforced in the
//! kernel by nftables with nothing in userspace per packet.
//!
//! * [`model`]: the stripped objects ([`Namespace`], [`Pod`], [`Policy`]) and [`Model`];
//!   [`k8s`] converts k8s-openapi objects into them.
//! * [`eval`]: [`evaluate`], the reference evaluator with reasons (the truth for tests, and
//!   what a trace can explain with).
//! * [`mod@compile`]: [`compile()`] a model into the desired [`Ruleset`] of one node's table
//!   `inet weft-policy` (plain data).
//! * [`incremental`]: [`Compiler`], the same desired state kept up to date event by event.
//! * [`nft`]: [`diff`] (old, new) -> the minimal [`Batch`], [`build`] for start-up; rendered
//!   as one `nft -j -f -` JSON transaction.
//! * [`apply`]: [`Applier`], which runs batches and remembers what it programmed.
//!
//! ## How weftd uses it
//!
//! ```text
//! let mut compiler = Compiler::new(Model::new(), opts);
//! let mut applier = Applier::new();
//! on every event (from the watches, via k8s::{slim_pod, namespace, policy}):
//!     compiler.set_pod(k8s::slim_pod(&pod, node_name)?);  ...  // each: changed or not
//! after each burst:
//!     let changes = compiler.take_changes();        // journalled elements, or full
//!     applier.apply_changes(compiler.ruleset(), &changes)?;
//!     // first call: table replaced atomically; then the journal alone (or a full diff
//!     // after a policy event)
//! ```
//!
//! ## Kernel design
//!
//! * Enforcement is on the forward hook (routed and, with br_netfilter, bridged traffic) and,
//!   for egress to the node itself, the input hook. Traffic the node sends to its own pods
//!   (kubelet probes) leaves through output and is never filtered.
//! * `ct state established,related accept` comes first: replies of admitted connections pass,
//!   and a policy that starts denying does not cut connections already established (they
//!   live until conntrack forgets them), unless [`CompileOptions::cut_established`].
//! * ICMPv6 neighbour discovery (133-137) always passes.
//! * Dispatch: a verdict map per direction and family, keyed by the IPs of the node's isolated
//!   pods, jumps to the pod's namespace chain, which jumps to each policy of the namespace;
//!   a policy chain returns at once unless it targets the pod, accepts what its rules admit,
//!   and the namespace chain drops what none admitted. Unisolated pods are not in the map.
//! * Sets: one per distinct (namespaces, podSelector) per family, shared by every policy that
//!   uses it; interval sets for each ipBlock and its excepts; one (IP . port) set per named
//!   port name and protocol, so one name may be different numbers on different pods.
//! * O(change): pods and namespace labels only change set and map elements; a policy change
//!   rewrites only its own chains (and adds or removes its jump in its namespace's chain).
//! * [`CompileOptions::fail_closed`] (the node's pod CIDRs): local addresses the model does not
//!   know are dropped both ways on the forward hook, the kernel side of the first-packet
//!   guarantee (weftd puts a pod in the model before CNI ADD returns).
//! * SCTP rules are generated (`meta l4proto sctp th dport ...`); [`CompileOptions::sctp`]
//!   leaves them out for kernels without SCTP (the lab machine: its tests read the JSON).

pub mod apply;
pub mod compile;
pub mod eval;
pub mod incremental;
pub mod k8s;
pub mod model;
pub mod nft;
pub mod synthetic;

pub use apply::{Applier, ApplyError, ApplyStats, CounterValue};
pub use compile::{compile, CompileOptions, CounterMeta, Family, Ruleset, TABLE};
pub use eval::{evaluate, Decision, Endpoint, Verdict};
pub use incremental::{Changes, Compiler, Delta};
pub use model::{
    Direction, IpBlock, Key, Labels, Model, NamedPort, Namespace, Namespaces, Operator, Peer, Pod,
    PodSet, Policy, PortRef, PortSpec, Protocol, Requirement, Rule, Selector,
};
pub use nft::{build, diff, Batch, Command};
