//! Container images made offline: an OCI image archive (one layer, a config, a manifest, an
//! index naming the reference) written from files of this machine, for `ctr images import`.
//! Nothing is pulled from a registry.
//!
//! * [`busybox_image`]: busybox-static, the pods' sandbox ("pause") and workload image.
//! * [`weft_image`]: what the Containerfile builds: `weft` and `weftd` in /usr/local/bin, with
//!   `nft` and `iptables` and the shared libraries they load (found with `ldd`).

use crate::error::{io_err, LabError};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The sandbox and workload image of the kube lab.
pub const BUSYBOX_IMAGE: &str = "localhost/weft-busybox:1";

/// One image: files copied from this machine (source, absolute path in the image), symlinks
/// (link path, target), entrypoint and environment.
#[derive(Debug, Clone, Default)]
pub struct ImageSpec {
    pub reference: String,
    pub files: Vec<(PathBuf, String)>,
    pub symlinks: Vec<(String, String)>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    /// Strip debug info from these image paths (debug builds of weftd are ~200 MB).
    pub strip: Vec<String>,
}

fn run(cmd: &mut Command, what: &str) -> Result<String, LabError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(io_err(&format!("run {what}"), Path::new(cmd.get_program())))?;
    if !out.status.success() {
        return Err(LabError::Setup(format!(
            "{what}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sha256(path: &Path) -> Result<String, LabError> {
    let out = run(Command::new("sha256sum").arg(path), "sha256sum")?;
    Ok(out
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// Stores `path` as a blob of the OCI layout; returns its descriptor.
fn blob(layout: &Path, path: &Path, media_type: &str) -> Result<Value, LabError> {
    let digest = sha256(path)?;
    let size = std::fs::metadata(path).map_err(io_err("stat", path))?.len();
    let dst = layout.join("blobs/sha256").join(&digest);
    std::fs::copy(path, &dst).map_err(io_err("copy blob", &dst))?;
    Ok(json!({ "mediaType": media_type, "digest": format!("sha256:{digest}"), "size": size }))
}

fn write(path: &Path, data: &[u8]) -> Result<(), LabError> {
    std::fs::write(path, data).map_err(io_err("write", path))
}

/// Writes the image as an OCI archive under `dir` (a scratch dir); returns the archive path.
pub fn build(dir: &Path, spec: &ImageSpec) -> Result<PathBuf, LabError> {
    let rootfs = dir.join("rootfs");
    let layout = dir.join("layout");
    for d in [&rootfs, &layout.join("blobs/sha256")] {
        std::fs::create_dir_all(d).map_err(io_err("create dir", d))?;
    }
    for (src, dst) in &spec.files {
        let to = rootfs.join(dst.trim_start_matches('/'));
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(io_err("create dir", parent))?;
        }
        std::fs::copy(src, &to).map_err(io_err("copy into image", src))?;
        if spec.strip.contains(dst) {
            // Optional (binutils): only makes the image smaller.
            let _ = Command::new("strip")
                .arg("--strip-debug")
                .arg(&to)
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
    for (link, target) in &spec.symlinks {
        let at = rootfs.join(link.trim_start_matches('/'));
        if let Some(parent) = at.parent() {
            std::fs::create_dir_all(parent).map_err(io_err("create dir", parent))?;
        }
        std::os::unix::fs::symlink(target, &at).map_err(io_err("symlink", &at))?;
    }
    let layer = dir.join("layer.tar");
    run(
        Command::new("tar")
            .args([
                "--sort=name",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "--mtime=@0",
                "-C",
            ])
            .arg(&rootfs)
            .arg("-cf")
            .arg(&layer)
            .arg("."),
        "tar (layer)",
    )?;
    let layer_desc = blob(&layout, &layer, "application/vnd.oci.image.layer.v1.tar")?;
    let mut config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Env": spec.env },
        "rootfs": { "type": "layers", "diff_ids": [layer_desc["digest"]] },
    });
    if !spec.entrypoint.is_empty() {
        config["config"]["Entrypoint"] = json!(spec.entrypoint);
    }
    if !spec.cmd.is_empty() {
        config["config"]["Cmd"] = json!(spec.cmd);
    }
    let config_path = dir.join("config.json");
    write(&config_path, config.to_string().as_bytes())?;
    let config_desc = blob(
        &layout,
        &config_path,
        "application/vnd.oci.image.config.v1+json",
    )?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc,
        "layers": [layer_desc],
    });
    let manifest_path = dir.join("manifest.json");
    write(&manifest_path, manifest.to_string().as_bytes())?;
    let mut manifest_desc = blob(
        &layout,
        &manifest_path,
        "application/vnd.oci.image.manifest.v1+json",
    )?;
    manifest_desc["annotations"] = json!({ "io.containerd.image.name": spec.reference });
    manifest_desc["platform"] = json!({ "architecture": "amd64", "os": "linux" });
    write(
        &layout.join("index.json"),
        json!({ "schemaVersion": 2, "manifests": [manifest_desc] })
            .to_string()
            .as_bytes(),
    )?;
    write(
        &layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let archive = dir.join("image.tar");
    run(
        Command::new("tar")
            .arg("-C")
            .arg(&layout)
            .arg("-cf")
            .arg(&archive)
            .arg("."),
        "tar (archive)",
    )?;
    // The archive holds everything; the staging copies are large (weftd).
    let _ = std::fs::remove_dir_all(&rootfs);
    let _ = std::fs::remove_dir_all(&layout);
    let _ = std::fs::remove_file(&layer);
    Ok(archive)
}

/// busybox-static as /bin/busybox with a few applets; by default waits for SIGTERM (the
/// sandbox's job; workloads give their own command).
pub fn busybox_image(dir: &Path) -> Result<PathBuf, LabError> {
    let mut spec = ImageSpec {
        reference: BUSYBOX_IMAGE.into(),
        files: vec![("/bin/busybox".into(), "/bin/busybox".into())],
        entrypoint: vec![
            "/bin/sh".into(),
            "-c".into(),
            "trap 'exit 0' TERM INT; while :; do sleep 1; done".into(),
        ],
        env: vec!["PATH=/bin".into()],
        ..ImageSpec::default()
    };
    for applet in [
        "sh", "sleep", "cat", "echo", "nc", "hostname", "ip", "ping", "wget", "ls",
    ] {
        spec.symlinks
            .push((format!("/bin/{applet}"), "busybox".into()));
    }
    build(dir, &spec)
}

/// The shared libraries `binary` loads (ldd), as absolute paths.
fn libraries(binary: &Path) -> Result<Vec<PathBuf>, LabError> {
    let out = run(Command::new("ldd").arg(binary), "ldd")?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// Adds the shared libraries of `elf` (and the loader) to the image, at the paths `ldd` names.
fn add_libraries(spec: &mut ImageSpec, elf: &[PathBuf]) -> Result<(), LabError> {
    let mut libs: Vec<PathBuf> = Vec::new();
    for b in elf {
        for l in libraries(b)? {
            if !libs.contains(&l) {
                libs.push(l);
            }
        }
    }
    for l in libs {
        // Follow the symlink for the content, keep the name the loader looks for.
        spec.files.push((l.clone(), l.display().to_string()));
    }
    Ok(())
}

/// The workload image: `weft-agnhost` (crates/agnhost) serving TCP 8080 and UDP 8081.
pub const AGNHOST_IMAGE: &str = "localhost/weft-agnhost:1";
/// Where the workload pods serve (TCP, UDP).
pub const AGNHOST_PORTS: (u16, u16) = (8080, 8081);

pub fn agnhost_image(dir: &Path, bin_dir: &Path) -> Result<PathBuf, LabError> {
    let bin = bin_dir.join("weft-agnhost");
    if !bin.is_file() {
        return Err(LabError::MissingBinary {
            missing: "weft-agnhost".into(),
            searched: vec![bin_dir.to_path_buf()],
        });
    }
    let mut spec = ImageSpec {
        reference: AGNHOST_IMAGE.into(),
        files: vec![(bin.clone(), "/usr/local/bin/weft-agnhost".into())],
        env: vec!["PATH=/usr/local/bin:/bin".into()],
        entrypoint: vec![
            "/usr/local/bin/weft-agnhost".into(),
            "serve".into(),
            "--tcp".into(),
            AGNHOST_PORTS.0.to_string(),
            "--udp".into(),
            AGNHOST_PORTS.1.to_string(),
        ],
        strip: vec!["/usr/local/bin/weft-agnhost".into()],
        ..ImageSpec::default()
    };
    add_libraries(&mut spec, &[bin])?;
    build(dir, &spec)
}

/// The weft image (deploy/weft.yaml's `image`): weft and weftd from `bin_dir`, nft and
/// iptables (nft and legacy) from this machine with their libraries and xtables modules.
pub fn weft_image(dir: &Path, reference: &str, bin_dir: &Path) -> Result<PathBuf, LabError> {
    let mut spec = ImageSpec {
        reference: reference.into(),
        env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
        cmd: vec!["weftd".into(), "run".into()],
        strip: vec!["/usr/local/bin/weft".into(), "/usr/local/bin/weftd".into()],
        ..ImageSpec::default()
    };
    let mut elf: Vec<PathBuf> = Vec::new();
    for b in ["weft", "weftd"] {
        spec.files
            .push((bin_dir.join(b), format!("/usr/local/bin/{b}")));
        elf.push(bin_dir.join(b));
    }
    for tool in ["nft", "xtables-nft-multi", "xtables-legacy-multi"] {
        let p = PathBuf::from("/usr/sbin").join(tool);
        if p.is_file() {
            spec.files.push((p.clone(), format!("/usr/sbin/{tool}")));
            elf.push(p);
        }
    }
    for (multi, names) in [
        (
            "xtables-nft-multi",
            &[
                "iptables",
                "iptables-save",
                "iptables-restore",
                "ip6tables",
                "ip6tables-save",
                "ip6tables-restore",
                "iptables-nft",
                "iptables-nft-save",
                "iptables-nft-restore",
                "ip6tables-nft",
                "ip6tables-nft-save",
                "ip6tables-nft-restore",
            ][..],
        ),
        (
            "xtables-legacy-multi",
            &[
                "iptables-legacy",
                "iptables-legacy-save",
                "iptables-legacy-restore",
                "ip6tables-legacy",
                "ip6tables-legacy-save",
                "ip6tables-legacy-restore",
            ][..],
        ),
    ] {
        for n in names {
            spec.symlinks.push((format!("/usr/sbin/{n}"), multi.into()));
        }
    }
    let xt = Path::new("/usr/lib/x86_64-linux-gnu/xtables");
    if let Ok(rd) = std::fs::read_dir(xt) {
        for e in rd.flatten() {
            let p = e.path();
            spec.files.push((p.clone(), p.display().to_string()));
            elf.push(p);
        }
    }
    add_libraries(&mut spec, &elf)?;
    for f in ["/etc/protocols", "/etc/services", "/etc/ethertypes"] {
        if Path::new(f).is_file() {
            spec.files.push((f.into(), f.into()));
        }
    }
    build(dir, &spec)
}
