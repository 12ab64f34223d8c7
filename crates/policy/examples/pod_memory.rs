//! Figures, not assertions: `cargo run --release -p weft-policy --example pod_memory [pods]`.
//! The memory 10,000 watched Pods take decoded as full k8s-openapi Pods and as weft's
//! `SlimPod` (what weftd's pod watch keeps), from the JSON of a real full Pod
//! (tests/data/pod-full.json) with a distinct name and IP each. Bytes are counted by a global
//! allocator wrapper: live heap bytes after decoding, minus before.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use k8s_openapi::api::core::v1::Pod;
use weft_policy::k8s::SlimPod;

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn texts(n: usize) -> Vec<String> {
    let base = include_str!("../tests/data/pod-full.json");
    (0..n)
        .map(|i| {
            base.replace("web-6d4cf56db6-x7k2p", &format!("web-{i}"))
                .replace(
                    "10.244.1.7",
                    &format!("10.{}.{}.{}", 100 + i / 65536, (i / 256) % 256, i % 256),
                )
        })
        .collect()
}

fn measure<T: serde::de::DeserializeOwned>(what: &str, texts: &[String]) {
    let before = LIVE.load(Ordering::Relaxed);
    let t = Instant::now();
    let decoded: Vec<T> = texts
        .iter()
        .map(|t| serde_json::from_str(t).unwrap())
        .collect();
    let took = t.elapsed().as_secs_f64() * 1000.0;
    let bytes = LIVE.load(Ordering::Relaxed) - before;
    println!(
        "{what}: {} pods decoded in {took:.0} ms, {:.1} MiB kept ({} bytes per pod)",
        decoded.len(),
        bytes as f64 / 1048576.0,
        bytes / decoded.len().max(1)
    );
}

fn main() {
    let n = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let texts = texts(n);
    println!("JSON of one pod: {} bytes", texts[0].len());
    measure::<SlimPod>("SlimPod (weftd's watch)", &texts);
    measure::<Pod>("full k8s-openapi Pod", &texts);
}
