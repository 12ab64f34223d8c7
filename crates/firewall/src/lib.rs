//! weft-firewall: the node firewall of weftd.
//!
//! One [`Policy`] (forward-accept for the cluster networks, masquerade of pod traffic leaving the
//! cluster) and two drivers that enforce it the same way: [`NftablesDriver`] (own table
//! `inet weft`) and [`IptablesDriver`] (own chains `WEFT-FORWARD` / `WEFT-POSTRTG`, nft or legacy
//! binaries). The rules follow flannel's pkg/trafficmngr; the driver split follows netavark.
//!
//! Both drivers spawn `nft` / `iptables-restore` processes, which inherit the network namespace of
//! the calling thread: call them from the thread that lives in the node's network namespace.

mod exec;
mod iptables;
mod nft;
mod plan;
pub mod pod_masq;

use std::process::ExitStatus;

use ipnet::IpNet;

pub use iptables::{IptablesDriver, IptablesVariant};
pub use nft::NftablesDriver;

/// Default kube-proxy masquerade mark (`--masquerade-bit 14`).
pub const KUBE_PROXY_MARK: u32 = 0x4000;

/// What the node firewall must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// IPv4 and/or IPv6 cluster (pod) networks.
    pub cluster_cidrs: Vec<IpNet>,
    /// Masquerade pod traffic that leaves the cluster networks.
    pub masquerade: bool,
    /// Packets carrying this mark are masqueraded by kube-proxy itself; we leave them alone.
    pub kube_proxy_mark: u32,
}

impl Policy {
    /// Policy with masquerade on and the default kube-proxy mark.
    pub fn new(cluster_cidrs: Vec<IpNet>) -> Self {
        Policy {
            cluster_cidrs,
            masquerade: true,
            kube_proxy_mark: KUBE_PROXY_MARK,
        }
    }

    fn validate(&self) -> Result<()> {
        // mark & 0 == 0 matches every packet: masquerade would silently never happen.
        if self.kube_proxy_mark == 0 {
            return Err(FirewallError::InvalidPolicy(
                "kube_proxy_mark must not be 0".into(),
            ));
        }
        if let Some(net) = self.cluster_cidrs.iter().find(|n| n.prefix_len() == 0) {
            return Err(FirewallError::InvalidPolicy(format!(
                "cluster CIDR {net} covers the whole address space"
            )));
        }
        Ok(())
    }
}

/// Result of comparing the live ruleset with what `apply` would write.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FirewallStatus {
    /// All of weft's rules are present and nothing else is in weft's chains.
    pub in_place: bool,
    /// What is missing or unexpected (empty when `in_place`).
    pub problems: Vec<String>,
    /// Things outside weft's rules that defeat them, e.g. another table's forward chain with
    /// policy drop, which an accept in `inet weft` cannot override.
    pub warnings: Vec<String>,
}

impl FirewallStatus {
    fn from_problems(problems: Vec<String>) -> Self {
        FirewallStatus {
            in_place: problems.is_empty(),
            problems,
            warnings: Vec::new(),
        }
    }
}

/// A node firewall driver.
pub trait Firewall: Send + Sync {
    /// Driver name for logs ("nftables", "iptables-nft", "iptables-legacy").
    fn name(&self) -> &'static str;
    /// Make the live rules equal to the policy. Idempotent; meant to be called periodically.
    fn apply(&self, p: &Policy) -> Result<()>;
    /// Read the live rules back and report what differs from what `apply` would write.
    fn status(&self, p: &Policy) -> Result<FirewallStatus>;
    /// Delete everything weft created. Ok when nothing is there.
    fn remove(&self) -> Result<()>;
}

/// Which driver to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverKind {
    Nftables,
    Iptables(IptablesVariant),
    /// nftables when `nft` works and no other nftables table drops forwarded packets by policy
    /// (Docker, firewalld); else iptables, variant picked automatically.
    Auto,
}

/// Build a driver. `Auto` probes the tools, so call it in the namespace the driver will manage.
pub fn driver(kind: DriverKind) -> Result<Box<dyn Firewall>> {
    match kind {
        DriverKind::Nftables => Ok(Box::new(NftablesDriver::new())),
        DriverKind::Iptables(variant) => Ok(Box::new(IptablesDriver::new(variant)?)),
        DriverKind::Auto => {
            let nft = NftablesDriver::new();
            // An accept in inet weft cannot override another table's drop on the same hook;
            // rules inside iptables' own FORWARD chain can.
            if nft
                .forward_drop_chains()
                .is_ok_and(|drops| drops.is_empty())
            {
                Ok(Box::new(nft))
            } else {
                Ok(Box::new(IptablesDriver::new(IptablesVariant::Auto)?))
            }
        }
    }
}

/// Errors of the firewall drivers.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("invalid firewall policy: {0}")]
    InvalidPolicy(String),
    #[error("failed to run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} {args} failed ({status}): {stderr}")]
    Command {
        program: String,
        args: String,
        status: ExitStatus,
        stderr: String,
    },
    #[error("cannot parse the output of {program}: {reason}")]
    Parse { program: String, reason: String },
}

pub type Result<T> = std::result::Result<T, FirewallError>;
