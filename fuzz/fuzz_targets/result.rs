//! Results and prevResults: weft_cni::CniResult::from_json on any JSON, and for whatever
//! parses, a round trip through to_json in every supported version (what CHECK and chained
//! plugins read back must be what ADD printed, minus what the older version cannot carry).

#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_cni::{CniResult, Version};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Ok(result) = CniResult::from_json(&value) else {
        return;
    };
    for v in weft_cni::version::SUPPORTED {
        let version = Version::parse(v).unwrap();
        let json = result.to_json(version);
        assert_eq!(json["cniVersion"], *v);
        let text = json.to_string();
        let reparsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        let back = CniResult::from_json(&reparsed)
            .unwrap_or_else(|e| panic!("{v}: own output {text} does not parse: {e}"));
        let mut want = result.clone();
        if version < Version::V1_1_0 {
            // Fields 1.1.0 added are left out of older results.
            for i in &mut want.interfaces {
                i.mtu = None;
            }
            for r in &mut want.routes {
                *r = weft_cni::Route::new(r.dst, r.gw);
            }
        }
        assert_eq!(back, want, "{v}: {text}");
    }
});
