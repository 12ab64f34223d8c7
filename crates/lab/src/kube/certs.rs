//! The control plane's PKI, made with the `openssl` CLI (arguments, never a shell string): one
//! ECDSA P-256 CA, the apiserver's serving certificate (its SANs: the addresses it is reached
//! at, 127.0.0.1, the `kubernetes` Service names and its ClusterIP), client certificates (admin
//! in `system:masters`, the controller-manager, the scheduler, one per kubelet as
//! `system:node:<name>`), and the ServiceAccount signing key pair. Kubeconfigs are written as
//! JSON (valid YAML).

use crate::error::{io_err, LabError};
use serde_json::json;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A certificate and its key.
#[derive(Debug, Clone)]
pub struct KeyPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The PKI of one control plane, under `dir`.
#[derive(Debug, Clone)]
pub struct Pki {
    pub dir: PathBuf,
    pub ca: KeyPair,
    pub apiserver: KeyPair,
    /// The apiserver's client certificate towards kubelets (exec, logs).
    pub apiserver_kubelet_client: KeyPair,
    pub admin: KeyPair,
    pub controller_manager: KeyPair,
    pub scheduler: KeyPair,
    /// ServiceAccount token signing key (private) and its public half.
    pub sa_key: PathBuf,
    pub sa_pub: PathBuf,
}

fn openssl(args: &[&str], what: &str) -> Result<(), LabError> {
    let out = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(io_err("run openssl", Path::new("openssl")))?;
    if !out.status.success() {
        return Err(LabError::Setup(format!(
            "openssl ({what}): {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn p(path: &Path) -> &str {
    path.to_str().expect("lab paths are UTF-8")
}

/// Only names that are safe in a certificate subject (`/CN=...`): no `/`, `=`, `+`, `\`.
fn check_subject_part(s: &str) -> Result<(), LabError> {
    if s.is_empty()
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '_'))
    {
        return Err(LabError::Setup(format!(
            "{s:?} cannot be a certificate subject name"
        )));
    }
    Ok(())
}

impl Pki {
    /// Creates the CA, the serving certificate for `apiserver_ips` (plus 127.0.0.1) and every
    /// control-plane client certificate.
    pub fn create(dir: &Path, apiserver_ips: &[IpAddr]) -> Result<Pki, LabError> {
        std::fs::create_dir_all(dir).map_err(io_err("create pki dir", dir))?;
        let ca = KeyPair {
            cert: dir.join("ca.crt"),
            key: dir.join("ca.key"),
        };
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                p(&ca.key),
                "-out",
                p(&ca.cert),
                "-days",
                "3650",
                "-subj",
                "/CN=weft-lab-ca",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
            ],
            "CA",
        )?;
        let sa_key = dir.join("sa.key");
        let sa_pub = dir.join("sa.pub");
        openssl(
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-out",
                p(&sa_key),
            ],
            "ServiceAccount key",
        )?;
        openssl(
            &["pkey", "-in", p(&sa_key), "-pubout", "-out", p(&sa_pub)],
            "ServiceAccount public key",
        )?;
        let mut pki = Pki {
            dir: dir.to_path_buf(),
            apiserver: ca.clone(),
            apiserver_kubelet_client: ca.clone(),
            admin: ca.clone(),
            controller_manager: ca.clone(),
            scheduler: ca.clone(),
            ca,
            sa_key,
            sa_pub,
        };
        let mut sans: Vec<String> = [
            "DNS:kubernetes",
            "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc",
            "DNS:kubernetes.default.svc.cluster.local",
            "DNS:localhost",
            "IP:127.0.0.1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        sans.extend(apiserver_ips.iter().map(|ip| format!("IP:{ip}")));
        pki.apiserver = pki.issue("apiserver", "kube-apiserver", &[], &sans, true)?;
        pki.apiserver_kubelet_client = pki.issue(
            "apiserver-kubelet-client",
            "kube-apiserver-kubelet-client",
            &["system:masters"],
            &[],
            false,
        )?;
        pki.admin = pki.issue("admin", "kubernetes-admin", &["system:masters"], &[], false)?;
        pki.controller_manager = pki.issue(
            "controller-manager",
            "system:kube-controller-manager",
            &[],
            &[],
            false,
        )?;
        pki.scheduler = pki.issue("scheduler", "system:kube-scheduler", &[], &[], false)?;
        Ok(pki)
    }

    /// Issues `<file>.crt`/`<file>.key` signed by the CA: subject CN=`cn`, O=`orgs`, the SANs
    /// given (`IP:...`, `DNS:...`), for server and client auth (`server`) or client auth only.
    pub fn issue(
        &self,
        file: &str,
        cn: &str,
        orgs: &[&str],
        sans: &[String],
        server: bool,
    ) -> Result<KeyPair, LabError> {
        check_subject_part(file)?;
        check_subject_part(cn)?;
        let mut subj = String::new();
        for o in orgs {
            check_subject_part(o)?;
            subj.push_str(&format!("/O={o}"));
        }
        subj.push_str(&format!("/CN={cn}"));
        let kp = KeyPair {
            cert: self.dir.join(format!("{file}.crt")),
            key: self.dir.join(format!("{file}.key")),
        };
        let eku = if server {
            "extendedKeyUsage=serverAuth,clientAuth"
        } else {
            "extendedKeyUsage=clientAuth"
        };
        let san_ext = format!("subjectAltName={}", sans.join(","));
        let mut args = vec![
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            p(&kp.key),
            "-out",
            p(&kp.cert),
            "-days",
            "365",
            "-subj",
            &subj,
            "-CA",
            p(&self.ca.cert),
            "-CAkey",
            p(&self.ca.key),
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-addext",
            "keyUsage=critical,digitalSignature,keyEncipherment",
            "-addext",
            eku,
        ];
        if !sans.is_empty() {
            args.extend(["-addext", &san_ext]);
        }
        openssl(&args, file)?;
        Ok(kp)
    }
}

/// Writes a kubeconfig for `server` with a client certificate.
pub fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca: &Path,
    client: &KeyPair,
) -> Result<(), LabError> {
    let user = json!({
        "client-certificate": client.cert,
        "client-key": client.key,
    });
    write_kubeconfig_user(path, server, ca, user)
}

/// Writes a kubeconfig for `server` with a bearer token.
pub fn write_kubeconfig_token(
    path: &Path,
    server: &str,
    ca: &Path,
    token: &str,
) -> Result<(), LabError> {
    write_kubeconfig_user(path, server, ca, json!({ "token": token }))
}

fn write_kubeconfig_user(
    path: &Path,
    server: &str,
    ca: &Path,
    user: serde_json::Value,
) -> Result<(), LabError> {
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "lab", "cluster": {
            "server": server,
            "certificate-authority": ca,
        }}],
        "users": [{ "name": "user", "user": user }],
        "contexts": [{ "name": "lab", "context": { "cluster": "lab", "user": "user" } }],
        "current-context": "lab",
    });
    std::fs::write(path, serde_json::to_vec_pretty(&doc).unwrap())
        .map_err(io_err("write kubeconfig", path))
}
