//! CNI_ARGS (`K=V;K2=V2`, `IP=a,b`) and the whole CNI_* environment: weft_cni's parsers on
//! arbitrary text. Nothing may panic; what parses must re-render to the same thing, and a
//! valid environment must carry only identifiers and interface names the spec allows.

#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_cni::args::CniArgs;
use weft_cni::{error, Command, Env};

const KEYS: [&str; 6] = [
    "CNI_COMMAND",
    "CNI_CONTAINERID",
    "CNI_NETNS",
    "CNI_IFNAME",
    "CNI_PATH",
    "CNI_ARGS",
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(args) = CniArgs::parse(text) {
        let mut ips = 0;
        for (k, v) in &args.pairs {
            assert!(!k.is_empty() && !k.contains(['=', ';']), "{k:?}");
            assert!(!v.contains(';'), "{v:?}");
            if k == "IP" {
                ips += v.split(',').filter(|s| !s.is_empty()).count();
            }
        }
        assert_eq!(args.ips.len(), ips);
        let rendered: Vec<String> = args.pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(CniArgs::parse(&rendered.join(";")).as_ref(), Ok(&args));
    }

    // The same bytes as an environment: NUL-separated values of KEYS, in order.
    let fields: Vec<&str> = text.split('\0').collect();
    let get = |key: &str| {
        let i = KEYS.iter().position(|k| *k == key)?;
        fields.get(i).map(|s| s.to_string())
    };
    match Env::from_lookup(get) {
        Ok(env) => {
            if matches!(env.command, Command::Add | Command::Del | Command::Check) {
                assert!(weft_cni::env::valid_identifier(&env.container_id));
                assert!(weft_cni::env::check_ifname(&env.ifname).is_ok());
            }
            if env.command != Command::Version {
                assert!(!env.path.is_empty());
            }
        }
        Err(e) => assert_eq!(e.code, error::INVALID_ENV, "{e}"),
    }
});
