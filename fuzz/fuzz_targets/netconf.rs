//! Network configuration parsing, as the plugin does it for every verb: weft_cni::parse_header
//! and then the plugin's Config::parse (the bridge keys, the ipam section and its ranges,
//! runtimeConfig, valid-attachments), plus CHECK's prevResult decoding. Nothing may panic;
//! what parses must satisfy the invariants the rest of the plugin relies on.

#![no_main]

use libfuzzer_sys::fuzz_target;

// The plugin's library half: the fuzzed code is exactly the shipped code.
use weft_netops::names;
use weft_plugin::config;

fuzz_target!(|data: &[u8]| {
    let (value, header, version) = match weft_cni::parse_header(data) {
        Ok(parsed) => parsed,
        Err(e) => {
            assert!(!e.msg.is_empty());
            let _ = e.to_json("1.1.0");
            return;
        }
    };
    let vs = version.to_string();
    assert!(weft_cni::version::SUPPORTED.contains(&vs.as_str()), "{vs}");
    let name = header.name.clone().unwrap_or_default();
    assert!(weft_cni::env::valid_identifier(&name), "{name:?}");

    let conf = match config::Config::parse(data, value, header) {
        Ok(conf) => conf,
        Err(e) => {
            assert!(!e.msg.is_empty());
            let _ = e.to_json(&vs);
            return;
        }
    };
    // Host-side names derived from the config fit the kernel and parse back.
    assert_eq!(names::host_veth(&conf.name, "ctr", "eth0").len(), 15);
    let alias = names::host_alias(&conf.name, "ctr", "eth0");
    assert_eq!(
        names::parse_alias(&alias, &conf.name),
        Some(("ctr", "eth0"))
    );
    assert!(weft_cni::env::check_ifname(&conf.bridge).is_ok());
    if let Some(mtu) = conf.mtu {
        assert!((68..=65535).contains(&mtu));
    }
    if let config::Ipam::Builtin { sets, .. } = &conf.ipam {
        assert!(!sets.is_empty());
        for set in sets {
            assert!(!set.is_empty());
            for r in set {
                let net = r.subnet();
                assert!(net.contains(&r.range_start()) && net.contains(&r.range_end()));
                assert!(net.contains(&r.gateway()));
                assert!(r.len() >= 1);
                assert!(r.contains(r.range_start()) && r.contains(r.range_end()));
            }
        }
    }
    if let Some(prev) = &conf.prev_result {
        let _ = weft_cni::CniResult::from_json(prev);
    }
});
