//! ADD: reserve addresses, make the bridge and the veth pair, configure the pod, return the
//! result. Any failure undoes every earlier step.

use crate::config::Config;
use crate::dataplane::{self, mac_string, nl_error};
use crate::{ipam, masq};
use weft_cni::error::{self, CniError};
use weft_cni::{CniResult, Env, Interface, IpConfig};
use weft_netops::names;
use weft_netops::netlink::Netlink;
use weft_netops::netns::NetNs;

/// Undo list for a half-done ADD, run in reverse on drop unless disarmed.
struct Rollback<'a> {
    conf: &'a Config,
    env: &'a Env,
    ipam_reserved: bool,
    host_veth: Option<String>,
    masq_ips: Vec<std::net::IpAddr>,
    armed: bool,
}

impl Drop for Rollback<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if !self.masq_ips.is_empty() {
            let _ = masq::remove(&self.conf.name, &self.masq_ips);
        }
        if let Some(name) = &self.host_veth {
            // Deleting the host end destroys the pod end too.
            if let Ok(mut nl) = Netlink::new() {
                let _ = nl.delete_link_by_name(name);
            }
        }
        if self.ipam_reserved {
            let _ = ipam::del(self.conf, self.env);
        }
    }
}

pub fn open_netns(env: &Env) -> Result<NetNs, CniError> {
    let path = env.netns.as_ref().ok_or_else(|| {
        CniError::new(
            error::INVALID_ENV,
            "required environment variable CNI_NETNS is not set",
        )
    })?;
    NetNs::open(path).map_err(|e| {
        CniError::new(
            error::INVALID_ENV,
            format!("CNI_NETNS {}: {e}", path.display()),
        )
    })
}

pub fn run(conf: &Config, env: &Env) -> Result<CniResult, CniError> {
    let pod_ns = open_netns(env)?;
    let host_name = names::host_veth(&conf.name, &env.container_id, &env.ifname);
    let host_alias = names::host_alias(&conf.name, &env.container_id, &env.ifname);

    let (assigned, durability) = ipam::add(conf, env)?;
    let mut undo = Rollback {
        conf,
        env,
        ipam_reserved: true,
        host_veth: None,
        masq_ips: Vec::new(),
        armed: true,
    };

    let mut nl = Netlink::new().map_err(nl_error)?;
    let bridge = dataplane::ensure_bridge(&mut nl, conf, &assigned)?;
    let mtu = conf
        .mtu
        .unwrap_or_else(|| dataplane::default_route_mtu(&mut nl));
    let routes = dataplane::pod_routes(conf, &assigned);

    let setup = |nl: &mut Netlink| {
        dataplane::setup_veth(
            nl,
            conf,
            &bridge,
            &pod_ns,
            &host_name,
            &host_alias,
            &env.ifname,
            mtu,
            &assigned,
            &routes,
        )
    };
    let links = match setup(&mut nl) {
        Err(e) if e.code == error::ALREADY_EXISTS => {
            // We hold no reservation for this attachment (IPAM would have refused), so a host
            // veth of this name carrying this attachment's alias is a leftover of a crashed
            // ADD or DEL: remove it and try once more. Anything else is not ours to touch.
            let stale = nl.get_link_by_name(&host_name).map_err(nl_error)?;
            if stale.as_ref().and_then(|l| l.alias.as_deref()) != Some(host_alias.as_str()) {
                return Err(e);
            }
            nl.delete_link_by_name(&host_name).map_err(nl_error)?;
            undo.host_veth = Some(host_name.clone());
            setup(&mut nl)?
        }
        other => {
            undo.host_veth = Some(host_name.clone());
            other?
        }
    };

    if conf.ip_masq {
        let ips: Vec<_> = assigned.iter().map(|a| a.address.addr()).collect();
        undo.masq_ips = ips.clone();
        let nets: Vec<_> = assigned.iter().map(|a| a.address.trunc()).collect();
        masq::add(&conf.name, &ips, &nets)?;
    }

    if let Some(pending) = durability {
        pending.wait().map_err(ipam::ipam_error)?;
    }
    if let Some(socket) = &conf.policy_socket {
        let ips: Vec<_> = assigned.iter().map(|a| a.address.addr()).collect();
        crate::policy::announce(socket, env, &ips);
    }

    let sandbox = env
        .netns
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let result = CniResult {
        interfaces: vec![
            Interface {
                name: bridge.name.clone(),
                mac: mac_string(bridge.mac),
                mtu: None,
                sandbox: String::new(),
            },
            Interface {
                name: links.host.name.clone(),
                mac: mac_string(links.host.mac),
                mtu: Some(mtu),
                sandbox: String::new(),
            },
            Interface {
                name: env.ifname.clone(),
                mac: mac_string(Some(links.pod_mac)),
                mtu: Some(mtu),
                sandbox,
            },
        ],
        ips: assigned
            .iter()
            .map(|a| IpConfig {
                address: a.address,
                gateway: a.gateway,
                interface: Some(2),
            })
            .collect(),
        routes,
        dns: conf.dns.clone(),
    };
    undo.armed = false;
    Ok(result)
}
