//! Runs a CNI network configuration list the way libcni (containernetworking/cni/libcni) does:
//! ADD calls each plugin in order with `name` and `cniVersion` injected from the list and the
//! previous plugin's result as `prevResult`; `runtimeConfig` carries only the capabilities a
//! plugin declares; DEL calls the plugins in reverse order with the ADD result as `prevResult`.

use crate::plugin::{Call, PluginOutput, PluginRunner};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfListError {
    #[error("read conflist {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid conflist{}: {detail}", .path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    Invalid {
        path: Option<PathBuf>,
        detail: String,
    },
    #[error("exec plugin {plugin} for {command}: {source}")]
    Exec {
        plugin: String,
        command: String,
        source: std::io::Error,
    },
    #[error("plugin {plugin} {command} failed (exit {}): {}{}", .output.exit_code, plugin_message(.output), stderr_tail(.output))]
    Plugin {
        plugin: String,
        command: String,
        output: PluginOutput,
    },
    #[error("plugin {plugin} {command} printed no JSON result: {stdout:?}")]
    BadResult {
        plugin: String,
        command: String,
        stdout: String,
    },
}

fn plugin_message(out: &PluginOutput) -> String {
    let v = out.json();
    match (v.get("code"), v.get("msg")) {
        (Some(code), Some(msg)) => {
            let details = v
                .get("details")
                .and_then(Value::as_str)
                .filter(|d| !d.is_empty())
                .map(|d| format!(" ({d})"))
                .unwrap_or_default();
            format!("code {code}: {}{details}", msg.as_str().unwrap_or_default())
        }
        _ => out.stdout.trim().to_string(),
    }
}

fn stderr_tail(out: &PluginOutput) -> String {
    let s = out.stderr.trim();
    if s.is_empty() {
        return String::new();
    }
    let tail: String = s
        .chars()
        .rev()
        .take(400)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("; stderr: {tail}")
}

impl ConfListError {
    /// The spec error code when a plugin failed with an error JSON.
    pub fn code(&self) -> Option<u64> {
        match self {
            ConfListError::Plugin { output, .. } => output.error_code(),
            _ => None,
        }
    }
}

/// A parsed `.conflist`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfList {
    pub cni_version: String,
    pub name: String,
    pub disable_check: bool,
    /// Each plugin's configuration object, as written in the list.
    pub plugins: Vec<Value>,
}

impl ConfList {
    pub fn from_value(v: &Value, path: Option<&Path>) -> Result<ConfList, ConfListError> {
        let invalid = |detail: String| ConfListError::Invalid {
            path: path.map(Path::to_path_buf),
            detail,
        };
        let obj = v
            .as_object()
            .ok_or_else(|| invalid("not a JSON object".into()))?;
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| invalid("no network name".into()))?;
        let cni_version = obj
            .get("cniVersion")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("no cniVersion".into()))?;
        let plugins = obj
            .get("plugins")
            .and_then(Value::as_array)
            .filter(|p| !p.is_empty())
            .ok_or_else(|| invalid("no plugins".into()))?;
        for (i, p) in plugins.iter().enumerate() {
            if p.get("type")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .is_empty()
            {
                return Err(invalid(format!("plugins[{i}] has no type")));
            }
        }
        Ok(ConfList {
            cni_version: cni_version.to_string(),
            name: name.to_string(),
            disable_check: obj
                .get("disableCheck")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            plugins: plugins.clone(),
        })
    }

    pub fn from_slice(bytes: &[u8]) -> Result<ConfList, ConfListError> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| ConfListError::Invalid {
            path: None,
            detail: e.to_string(),
        })?;
        ConfList::from_value(&v, None)
    }

    pub fn load(path: &Path) -> Result<ConfList, ConfListError> {
        let bytes = std::fs::read(path).map_err(|source| ConfListError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| ConfListError::Invalid {
            path: Some(path.to_path_buf()),
            detail: e.to_string(),
        })?;
        ConfList::from_value(&v, Some(path))
    }

    /// The stdin document for plugin `index` (libcni's buildOneConfig): the plugin's object
    /// with `name` and `cniVersion` from the list, `prevResult` when given, and a
    /// `runtimeConfig` holding the capability arguments this plugin declares.
    pub fn plugin_config(
        &self,
        index: usize,
        prev_result: Option<&Value>,
        capability_args: &Map<String, Value>,
    ) -> Value {
        let mut conf = self.plugins[index].as_object().cloned().unwrap_or_default();
        conf.insert("name".into(), Value::String(self.name.clone()));
        conf.insert("cniVersion".into(), Value::String(self.cni_version.clone()));
        if let Some(prev) = prev_result {
            conf.insert("prevResult".into(), prev.clone());
        }
        let mut runtime = Map::new();
        if let Some(caps) = conf.get("capabilities").and_then(Value::as_object) {
            for (cap, enabled) in caps {
                if enabled.as_bool() == Some(true) {
                    if let Some(arg) = capability_args.get(cap) {
                        runtime.insert(cap.clone(), arg.clone());
                    }
                }
            }
        }
        if !runtime.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(runtime));
        }
        Value::Object(conf)
    }

    fn plugin_type(&self, index: usize) -> &str {
        self.plugins[index]
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
}

/// One attachment: what the runtime passes in the CNI_* environment and as capability args.
#[derive(Debug, Clone, Default)]
pub struct Attachment {
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// CNI_ARGS pairs (joined as `K=V;K=V`).
    pub args: Vec<(String, String)>,
    /// Capability arguments, e.g. `"portMappings": [{"hostPort":8080,...}]`.
    pub capability_args: Map<String, Value>,
}

impl Attachment {
    /// What containerd passes for a Kubernetes pod sandbox.
    pub fn for_pod(container_id: &str, netns: &Path, namespace: &str, pod: &str) -> Attachment {
        Attachment {
            container_id: container_id.to_string(),
            netns: Some(netns.to_path_buf()),
            ifname: "eth0".into(),
            args: vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_NAMESPACE".into(), namespace.into()),
                ("K8S_POD_NAME".into(), pod.into()),
                ("K8S_POD_INFRA_CONTAINER_ID".into(), container_id.into()),
                ("K8S_POD_UID".into(), format!("uid-{container_id}")),
            ],
            capability_args: Map::new(),
        }
    }

    fn cni_args(&self) -> Option<String> {
        if self.args.is_empty() {
            return None;
        }
        Some(
            self.args
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(";"),
        )
    }
}

fn run(
    runner: &PluginRunner,
    list: &ConfList,
    index: usize,
    command: &str,
    att: &Attachment,
    prev: Option<&Value>,
) -> Result<PluginOutput, ConfListError> {
    let plugin = list.plugin_type(index).to_string();
    let conf = list.plugin_config(index, prev, &att.capability_args);
    let args = att.cni_args();
    let call = Call {
        command,
        container_id: &att.container_id,
        netns: att.netns.as_deref(),
        ifname: &att.ifname,
        args: args.as_deref(),
    };
    let out = runner
        .exec(&plugin, &call, conf.to_string().as_bytes())
        .map_err(|source| ConfListError::Exec {
            plugin: plugin.clone(),
            command: command.into(),
            source,
        })?;
    if !out.ok() {
        return Err(ConfListError::Plugin {
            plugin,
            command: command.into(),
            output: out,
        });
    }
    Ok(out)
}

/// ADD: every plugin in order; returns the last plugin's result.
pub fn add(
    runner: &PluginRunner,
    list: &ConfList,
    att: &Attachment,
) -> Result<Value, ConfListError> {
    let mut prev: Option<Value> = None;
    for i in 0..list.plugins.len() {
        let out = run(runner, list, i, "ADD", att, prev.as_ref())?;
        let result = out.json();
        if !result.is_object() {
            return Err(ConfListError::BadResult {
                plugin: list.plugin_type(i).into(),
                command: "ADD".into(),
                stdout: out.stdout,
            });
        }
        prev = Some(result);
    }
    Ok(prev.unwrap_or(Value::Null))
}

/// CHECK: every plugin in order, each with the ADD result as `prevResult` (skipped when the
/// list sets `disableCheck`).
pub fn check(
    runner: &PluginRunner,
    list: &ConfList,
    att: &Attachment,
    result: &Value,
) -> Result<(), ConfListError> {
    if list.disable_check {
        return Ok(());
    }
    for i in 0..list.plugins.len() {
        run(runner, list, i, "CHECK", att, Some(result))?;
    }
    Ok(())
}

/// DEL: every plugin in reverse order with the cached ADD result (if any) as `prevResult`.
/// All plugins are called even when one fails; the first error is returned.
pub fn del(
    runner: &PluginRunner,
    list: &ConfList,
    att: &Attachment,
    result: Option<&Value>,
) -> Result<(), ConfListError> {
    let mut first_err = None;
    for i in (0..list.plugins.len()).rev() {
        if let Err(e) = run(runner, list, i, "DEL", att, result) {
            first_err.get_or_insert(e);
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn list() -> ConfList {
        ConfList::from_slice(
            json!({
                "cniVersion": "1.0.0",
                "name": "weft",
                "plugins": [
                    {"type": "weft", "bridge": "weft0", "capabilities": {"ips": true}},
                    {"type": "portmap", "capabilities": {"portMappings": true, "bandwidth": false}}
                ]
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn injects_name_version_and_prev_result() {
        let l = list();
        let c = l.plugin_config(0, None, &Map::new());
        assert_eq!(c["name"], "weft");
        assert_eq!(c["cniVersion"], "1.0.0");
        assert_eq!(c["bridge"], "weft0");
        assert!(c.get("prevResult").is_none());
        assert!(c.get("runtimeConfig").is_none());

        let prev = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24"}]});
        let c = l.plugin_config(1, Some(&prev), &Map::new());
        assert_eq!(c["prevResult"], prev);
        assert_eq!(c["type"], "portmap");
    }

    #[test]
    fn runtime_config_only_for_declared_capabilities() {
        let l = list();
        let mut caps = Map::new();
        caps.insert(
            "portMappings".into(),
            json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]),
        );
        caps.insert("bandwidth".into(), json!({"ingressRate": 1}));
        caps.insert("dns".into(), json!({"servers": ["1.1.1.1"]}));
        // weft declares only `ips`, which is not given: no runtimeConfig at all.
        assert!(l
            .plugin_config(0, None, &caps)
            .get("runtimeConfig")
            .is_none());
        // portmap declares portMappings (true) and bandwidth (false).
        let c = l.plugin_config(1, None, &caps);
        let rc = c["runtimeConfig"].as_object().unwrap();
        assert_eq!(rc.keys().collect::<Vec<_>>(), vec!["portMappings"]);
        assert_eq!(rc["portMappings"][0]["hostPort"], 8080);
    }

    #[test]
    fn rejects_bad_lists() {
        for bad in [
            json!([]),
            json!({"cniVersion": "1.0.0", "plugins": [{"type": "x"}]}),
            json!({"cniVersion": "1.0.0", "name": "n", "plugins": []}),
            json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"bridge": "x"}]}),
            json!({"name": "n", "plugins": [{"type": "x"}]}),
        ] {
            assert!(
                matches!(
                    ConfList::from_value(&bad, None),
                    Err(ConfListError::Invalid { .. })
                ),
                "{bad} accepted"
            );
        }
    }
}
