//! `weft-lab trace SRC DST`: the cross-node version of `weftd trace`. It runs `weftd trace` in
//! the source's node, and when the packet leaves for a peer, `weftd trace --arriving` in that
//! peer, so the whole path shows up, hop by hop, from live kernel state on every node.
//! SRC and DST may be pod names (`n1-p1`), node names (`n1`), `world`, or addresses.

use crate::cluster::WORLD_IP;
use crate::ns::enter_command;
use crate::registry;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use weft_netops::netns::{named_path, NetNs};
use weft_netops::Netlink;

/// Addresses of the interfaces in netns `name` (lo excluded).
fn addresses_in(name: &str) -> Vec<IpAddr> {
    let Ok(ns) = NetNs::open(named_path(name)) else {
        return Vec::new();
    };
    let Ok(mut nl) = Netlink::in_netns(&ns) else {
        return Vec::new();
    };
    nl.list_addresses(None)
        .unwrap_or_default()
        .into_iter()
        .map(|(_, a)| a.addr())
        .filter(|a| !a.is_loopback())
        .collect()
}

/// The lab's node names (netns `<id>-nK`).
fn nodes(id: &str) -> Vec<String> {
    let prefix = format!("{id}-");
    registry::netns_of(id)
        .into_iter()
        .filter_map(|ns| ns.strip_prefix(&prefix).map(String::from))
        .filter(|n| n.starts_with('n') && n[1..].chars().all(|c| c.is_ascii_digit()))
        .collect()
}

fn resolve(id: &str, what: &str) -> Result<IpAddr, String> {
    if let Ok(ip) = what.parse() {
        return Ok(ip);
    }
    if what == "world" {
        return Ok(IpAddr::V4(WORLD_IP));
    }
    for candidate in [format!("{id}-p-{what}"), format!("{id}-{what}")] {
        if let Some(ip) = addresses_in(&candidate).into_iter().find(|a| a.is_ipv4()) {
            return Ok(ip);
        }
    }
    Err(format!(
        "{what:?} is neither a pod, a node, `world` nor an address of lab {id}"
    ))
}

/// The node whose IPAM store holds `ip` (the pod's node), or whose interface has it.
fn node_of(id: &str, ip: IpAddr) -> Option<String> {
    let dir = registry::lab_dir(id);
    nodes(id).into_iter().find(|n| {
        dir.join(n)
            .join("ipam")
            .join("weft")
            .join(ip.to_string())
            .exists()
            || addresses_in(&format!("{id}-{n}")).contains(&ip)
    })
}

fn run_weftd(
    bin_dir: &Path,
    id: &str,
    node: &str,
    args: &[String],
) -> Result<(String, bool), String> {
    let ns = NetNs::open(named_path(&format!("{id}-{node}"))).map_err(|e| e.to_string())?;
    let ipam = registry::lab_dir(id).join(node).join("ipam");
    let out = enter_command(&ns, bin_dir.join("weftd"))
        .arg("trace")
        .args(args)
        .arg("--ipam-data-dir")
        .arg(&ipam)
        .output()
        .map_err(|e| format!("run weftd trace on {node}: {e}"))?;
    Ok((
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.success(),
    ))
}

/// Traces `src -> dst` across the lab; returns the printed trace and whether the path is whole.
pub fn trace(id: &str, src: &str, dst: &str, bin_dir: &Path) -> Result<(String, bool), String> {
    let (src_ip, dst_ip) = (resolve(id, src)?, resolve(id, dst)?);
    let first = node_of(id, src_ip).ok_or_else(|| format!("no lab node holds {src_ip}"))?;
    let mut out = format!("== on node {first}\n");
    let args = vec![
        src_ip.to_string(),
        dst_ip.to_string(),
        "--output".into(),
        "json".into(),
    ];
    let (json, ok) = run_weftd(bin_dir, id, &first, &args)?;
    let t: serde_json::Value =
        serde_json::from_str(&json).map_err(|e| format!("weftd trace: {e}: {json}"))?;
    out.push_str(&render(&t));
    let mut whole = ok;
    if let Some(next) = t["next_node"]
        .as_str()
        .and_then(|s| s.parse::<IpAddr>().ok())
    {
        let node =
            node_of(id, next).ok_or_else(|| format!("no lab node has underlay address {next}"))?;
        out.push_str(&format!("== on node {node}\n"));
        let mut args = args.clone();
        args.push("--arriving".into());
        let (json, ok) = run_weftd(bin_dir, id, &node, &args)?;
        let t: serde_json::Value =
            serde_json::from_str(&json).map_err(|e| format!("weftd trace: {e}: {json}"))?;
        out.push_str(&render(&t));
        whole &= ok;
    }
    out.push_str(if whole {
        "path complete\n"
    } else {
        "PATH BROKEN (see !)\n"
    });
    Ok((out, whole))
}

fn render(t: &serde_json::Value) -> String {
    let mut o = String::new();
    for (i, h) in t["hops"].as_array().into_iter().flatten().enumerate() {
        let mark = if h["ok"].as_bool().unwrap_or(false) {
            ' '
        } else {
            '!'
        };
        o.push_str(&format!(
            "{mark}{:>2}. {:<14} {}\n",
            i + 1,
            h["step"].as_str().unwrap_or("?"),
            h["detail"].as_str().unwrap_or("")
        ));
    }
    o
}

/// Where `weftd` is: next to this executable, or `WEFT_BIN_DIR`.
pub fn bin_dir() -> Result<PathBuf, String> {
    crate::cluster::find_bin_dir(&["weftd"]).map_err(|e| e.to_string())
}
