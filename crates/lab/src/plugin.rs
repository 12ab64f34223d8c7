//! Runs the CNI plugin exactly as a runtime does: CNI_* environment, config on stdin, result
//! or error JSON on stdout, inside the node's network namespace.

use crate::ns::enter_command;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use weft_netops::netns::NetNs;

/// Where Debian's containernetworking-plugins put the reference plugins.
pub const REFERENCE_PLUGIN_DIR: &str = "/usr/lib/cni";

#[derive(Debug, Clone)]
pub struct PluginOutput {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl PluginOutput {
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or(Value::Null)
    }
    pub fn ok(&self) -> bool {
        self.exit_code == 0
    }
    /// The spec error code, when the plugin failed with an error JSON.
    pub fn error_code(&self) -> Option<u64> {
        self.json().get("code").and_then(Value::as_u64)
    }
}

/// One plugin call's per-attachment environment.
#[derive(Debug, Clone, Default)]
pub struct Call<'a> {
    pub command: &'a str,
    pub container_id: &'a str,
    pub netns: Option<&'a Path>,
    pub ifname: &'a str,
    pub args: Option<&'a str>,
}

pub struct PluginRunner<'n> {
    /// Directory holding the plugin binaries, searched first in CNI_PATH.
    pub bin_dir: PathBuf,
    /// The node's network namespace (the plugin's "host").
    pub node: &'n NetNs,
}

impl<'n> PluginRunner<'n> {
    pub fn new(bin_dir: impl Into<PathBuf>, node: &'n NetNs) -> Self {
        PluginRunner {
            bin_dir: bin_dir.into(),
            node,
        }
    }

    pub fn cni_path(&self) -> String {
        format!("{}:{REFERENCE_PLUGIN_DIR}", self.bin_dir.display())
    }

    /// Execs plugin `plugin_type` (found in CNI_PATH) with `conf` on stdin.
    pub fn exec(
        &self,
        plugin_type: &str,
        call: &Call,
        conf: &[u8],
    ) -> std::io::Result<PluginOutput> {
        let binary = [self.bin_dir.as_path(), Path::new(REFERENCE_PLUGIN_DIR)]
            .iter()
            .map(|d| d.join(plugin_type))
            .find(|p| p.is_file())
            .ok_or_else(|| std::io::Error::other(format!("plugin {plugin_type} not found")))?;
        let mut cmd = enter_command(self.node, &binary);
        cmd.env_clear()
            .env("CNI_COMMAND", call.command)
            .env("CNI_PATH", self.cni_path())
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if !call.container_id.is_empty() {
            cmd.env("CNI_CONTAINERID", call.container_id);
        }
        if let Some(ns) = call.netns {
            cmd.env("CNI_NETNS", ns);
        }
        if !call.ifname.is_empty() {
            cmd.env("CNI_IFNAME", call.ifname);
        }
        if let Some(args) = call.args {
            cmd.env("CNI_ARGS", args);
        }
        let mut child = cmd.spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(conf);
        }
        let out = child.wait_with_output()?;
        Ok(PluginOutput {
            exit_code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}
