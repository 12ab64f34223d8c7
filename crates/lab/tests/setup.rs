//! The set-up a fresh machine runs (scripts/install-deps.sh, the Containerfile's build stage)
//! names every package the build and the tests need. Packages are installed with
//! `--no-install-recommends`, so a package we rely on only because another one *recommends* it
//! is missing on a fresh machine even though it is present on a developer's: that is how
//! `libprotobuf-dev` (recommended by `protobuf-compiler`) broke the build once. Needs apt's
//! package lists (`apt-get update`, which .ci/run does first).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// (group, package, file) as install-deps.sh declares them.
fn declared() -> Vec<(String, String, String)> {
    let out = Command::new("bash")
        .arg(repo().join("scripts/install-deps.sh"))
        .arg("--list")
        .output()
        .expect("run install-deps.sh --list");
    assert!(out.status.success(), "install-deps.sh --list failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 3, "bad --list line: {l:?}");
            (f[0].to_string(), f[1].to_string(), f[2].to_string())
        })
        .collect()
}

/// Recommended packages we deliberately do without, and why.
const NOT_NEEDED: &[(&str, &str)] = &[
    (
        "criu",
        "runc's checkpoint/restore: no test checkpoints a container",
    ),
    ("psmisc", "procps' companion (killall, fuser): not used"),
    ("libatm1", "iproute2's ATM qdisc support: no ATM here"),
];

fn recommends(package: &str) -> Vec<String> {
    let out = Command::new("apt-cache")
        .args(["depends", "--no-suggests", "--no-depends", "--no-conflicts"])
        .args(["--no-breaks", "--no-replaces", "--no-enhances", package])
        .output()
        .expect("apt-cache is part of every Debian machine");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.lines().next() == Some(package),
        "apt-cache knows nothing of {package} (run `apt-get update` first): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Recommends: "))
        // Alternatives and virtual packages are printed as `<name>`.
        .map(|p| p.trim_matches(|c| c == '<' || c == '>').to_string())
        .collect()
}

#[test]
fn every_recommended_package_is_declared_or_explained() {
    let declared = declared();
    let names: BTreeSet<&str> = declared.iter().map(|(_, p, _)| p.as_str()).collect();
    let not_needed: BTreeMap<&str, &str> = NOT_NEEDED.iter().copied().collect();
    let mut gaps = Vec::new();
    for (_, package, _) in &declared {
        for r in recommends(package) {
            if !names.contains(r.as_str()) && !not_needed.contains_key(r.as_str()) {
                gaps.push(format!("{package} recommends {r}"));
            }
        }
    }
    assert!(
        gaps.is_empty(),
        "installed with --no-install-recommends, so these would be missing on a fresh machine; \
         declare them in scripts/install-deps.sh or say in NOT_NEEDED why not: {gaps:?}"
    );
}

#[test]
fn install_deps_checks_the_file_each_package_provides() {
    // What a fresh machine would miss shows up as a missing file, named, not as a build error
    // three crates later.
    for (_, package, file) in declared() {
        assert!(
            Path::new(&file).is_absolute(),
            "{package}: {file} is not a path"
        );
        let listed = Command::new("dpkg")
            .args(["-S", &file])
            .output()
            .expect("dpkg");
        let owner = String::from_utf8_lossy(&listed.stdout);
        assert!(
            owner.split(':').next().map(str::trim) == Some(package.as_str())
                || owner.contains(&format!("{package}:")),
            "{file} does not come from {package} (dpkg -S: {owner:?})"
        );
    }
}

#[test]
fn the_containerfile_build_stage_installs_every_build_package() {
    let text = std::fs::read_to_string(repo().join("Containerfile")).unwrap();
    let build_stage = text
        .split("\nFROM ")
        .find(|s| s.contains("AS build"))
        .expect("a build stage");
    for (group, package, _) in declared() {
        if group == "build" {
            assert!(
                build_stage
                    .split_whitespace()
                    .any(|w| w == package.as_str()),
                "the Containerfile's build stage does not install {package}"
            );
        }
    }
}

/// Regression: `./scripts/demo.sh --datastore kubernetes` failed on "weft-agnhost not found"
/// because the demo built only weft, weftd and weft-lab.
#[test]
fn the_demo_builds_every_binary_the_lab_runs() {
    let demo = std::fs::read_to_string(repo().join("scripts/demo.sh")).unwrap();
    let build = demo
        .lines()
        .find(|l| l.starts_with("cargo build --release"))
        .expect("demo.sh builds the release binaries");
    let built: Vec<&str> = build
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "--bin")
        .map(|w| w[1])
        .collect();
    for bin in weft_lab::LAB_BINARIES {
        assert!(built.contains(bin), "demo.sh does not build {bin}: {build}");
    }
}
