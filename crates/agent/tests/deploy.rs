//! The Kubernetes manifests in deploy/: every document parses into the real API types
//! (k8s-openapi) with no unknown field, the RBAC is exactly the minimal set, and the DaemonSet's
//! command, environment, probes, ports and paths are what weftd really parses, serves and uses.
//! Needs no root and no cluster.

use clap::{ArgAction, Args, Command, FromArgMatches};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use weft_agent::cli::Install;
use weft_agent::config::{DatastoreKind, RunConfig};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// Every YAML document of every file in deploy/, as JSON values, with the file name.
fn documents() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .expect("deploy/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML in deploy/");
    let mut docs = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for doc in serde_norway::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}", f.display()));
            // `---` followed by nothing (or only comments) is an empty document.
            if !v.is_null() {
                docs.push((f.display().to_string(), v));
            }
        }
    }
    docs
}

/// Where `a` and `b` differ (JSON paths), for the error message.
fn differences(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys()).collect::<BTreeSet<_>>() {
                let p = format!("{path}.{k}");
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => differences(&p, u, v, out),
                    (Some(_), None) => out.push(format!("{p}: unknown field")),
                    (None, Some(_)) => out.push(format!("{p}: added by the API type")),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (u, v)) in x.iter().zip(y).enumerate() {
                differences(&format!("{path}[{i}]"), u, v, out);
            }
        }
        _ if a != b => out.push(format!("{path}: {a} became {b}")),
        _ => {}
    }
}

/// Parses `v` as `T` and rejects what the API type does not know: k8s-openapi's deserializers
/// skip unknown fields (as the API server does without strict field validation), so the
/// typed value is serialized again and must give back exactly the document.
fn strict<T: DeserializeOwned + Serialize>(v: &Value) -> Result<T, String> {
    let typed: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).unwrap();
    let mut diff = Vec::new();
    differences("", v, &back, &mut diff);
    if diff.is_empty() {
        Ok(typed)
    } else {
        Err(diff.join("; "))
    }
}

/// The parsed manifest: exactly one object of each kind.
#[derive(Default)]
struct Manifest {
    namespace: Option<Namespace>,
    service_account: Option<ServiceAccount>,
    cluster_role: Option<ClusterRole>,
    binding: Option<ClusterRoleBinding>,
    config_map: Option<ConfigMap>,
    daemon_set: Option<DaemonSet>,
}

fn set_once<T>(slot: &mut Option<T>, v: T, kind: &str) {
    assert!(slot.is_none(), "more than one {kind}");
    *slot = Some(v);
}

fn manifest() -> Manifest {
    let mut m = Manifest::default();
    for (file, v) in documents() {
        let api = v["apiVersion"].as_str().unwrap_or_default().to_string();
        let kind = v["kind"].as_str().unwrap_or_default().to_string();
        let ctx = |e: String| format!("{file}: {api} {kind} {}: {e}", v["metadata"]["name"]);
        match (api.as_str(), kind.as_str()) {
            ("v1", "Namespace") => {
                set_once(&mut m.namespace, strict(&v).map_err(ctx).unwrap(), &kind)
            }
            ("v1", "ServiceAccount") => set_once(
                &mut m.service_account,
                strict(&v).map_err(ctx).unwrap(),
                &kind,
            ),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                set_once(&mut m.cluster_role, strict(&v).map_err(ctx).unwrap(), &kind)
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                set_once(&mut m.binding, strict(&v).map_err(ctx).unwrap(), &kind)
            }
            ("v1", "ConfigMap") => {
                set_once(&mut m.config_map, strict(&v).map_err(ctx).unwrap(), &kind)
            }
            ("apps/v1", "DaemonSet") => {
                set_once(&mut m.daemon_set, strict(&v).map_err(ctx).unwrap(), &kind)
            }
            _ => panic!("{file}: unexpected object {api} {kind}"),
        }
    }
    m
}

#[test]
fn every_document_is_a_known_api_object_without_unknown_fields() {
    let m = manifest();
    assert!(m.namespace.is_some(), "no Namespace");
    assert!(m.service_account.is_some(), "no ServiceAccount");
    assert!(m.cluster_role.is_some(), "no ClusterRole");
    assert!(m.binding.is_some(), "no ClusterRoleBinding");
    assert!(m.config_map.is_some(), "no ConfigMap");
    assert!(m.daemon_set.is_some(), "no DaemonSet");
}

#[test]
fn the_strict_parse_rejects_misspelt_and_misplaced_fields() {
    let (_, ds) = documents()
        .into_iter()
        .find(|(_, v)| v["kind"] == "DaemonSet")
        .unwrap();
    let mut typo = ds.clone();
    typo["spec"]["template"]["spec"]["hostNetwrok"] = Value::Bool(true);
    let err = strict::<DaemonSet>(&typo).unwrap_err();
    assert!(err.contains("hostNetwrok: unknown field"), "{err}");
    let mut misplaced = ds.clone();
    misplaced["spec"]["hostNetwork"] = Value::Bool(true);
    assert!(strict::<DaemonSet>(&misplaced).is_err());
    let mut wrong_type = ds;
    wrong_type["spec"]["template"]["spec"]["hostNetwork"] = Value::String("yes".into());
    assert!(strict::<DaemonSet>(&wrong_type).is_err());
}

#[test]
fn rbac_is_exactly_nodes_and_what_network_policy_reads() {
    let m = manifest();
    let ns = m.namespace.unwrap().metadata.name.unwrap();
    let sa = m.service_account.unwrap();
    assert_eq!(sa.metadata.namespace.as_deref(), Some(ns.as_str()));
    let role = m.cluster_role.unwrap();
    assert!(role.aggregation_rule.is_none());
    let rules = role.rules.unwrap();
    let rule = |group: &str, resources: &[&str], verbs: &[&str]| PolicyRule {
        api_groups: Some(vec![group.into()]),
        resources: Some(resources.iter().map(|r| r.to_string()).collect()),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        resource_names: None,
        non_resource_urls: None,
    };
    assert_eq!(
        rules,
        vec![
            // The kubernetes datastore: Nodes, and weft's annotations on its own.
            rule("", &["nodes"], &["get", "list", "watch", "patch"]),
            // NetworkPolicy: what it selects on and what it enforces, read only.
            rule("", &["namespaces", "pods"], &["get", "list", "watch"]),
            rule(
                "networking.k8s.io",
                &["networkpolicies"],
                &["get", "list", "watch"]
            ),
        ],
        "the ClusterRole must grant exactly what weftd uses"
    );

    let b = m.binding.unwrap();
    assert_eq!(
        b.role_ref.api_group.as_deref(),
        Some("rbac.authorization.k8s.io")
    );
    assert_eq!(b.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&b.role_ref.name), role.metadata.name.as_ref());
    let subjects = b.subjects.unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(&subjects[0].name), sa.metadata.name.as_ref());
    assert_eq!(subjects[0].namespace.as_deref(), Some(ns.as_str()));

    let pod = m.daemon_set.unwrap().spec.template.spec.unwrap();
    assert_eq!(pod.service_account_name, sa.metadata.name);
    assert_ne!(pod.automount_service_account_token, Some(false));
}

/// The container's environment: the ConfigMap's keys (envFrom) overridden by `env` values.
/// `valueFrom` entries are returned separately.
fn environment(
    c: &Container,
    cm: &ConfigMap,
) -> (BTreeMap<String, String>, BTreeMap<String, Value>) {
    let mut env = BTreeMap::new();
    for from in c.env_from.iter().flatten() {
        let r = from
            .config_map_ref
            .as_ref()
            .expect("only ConfigMap envFrom");
        assert_eq!(
            Some(&r.name),
            cm.metadata.name.as_ref(),
            "envFrom names a ConfigMap that is not in deploy/"
        );
        assert!(from.prefix.is_none());
        env.extend(cm.data.clone().unwrap_or_default());
    }
    let mut from_refs = BTreeMap::new();
    for e in c.env.iter().flatten() {
        match (&e.value, &e.value_from) {
            (Some(v), None) => {
                env.insert(e.name.clone(), v.clone());
            }
            (None, Some(src)) => {
                from_refs.insert(e.name.clone(), serde_json::to_value(src).unwrap());
            }
            _ => panic!("env {} needs exactly one of value and valueFrom", e.name),
        }
    }
    (env, from_refs)
}

/// Parses a weftd subcommand as weftd would: `argv` after the subcommand plus the container's
/// environment. clap reads `env = "WEFT_..."` from the process environment when the command is
/// built, so each variable is given as its flag (an env var is exactly its flag's value); an
/// unknown `WEFT_*` variable is an error (a typo would be silently ignored by weftd).
fn parse_like_weftd<T: Args + FromArgMatches>(
    argv: &[String],
    env: &BTreeMap<String, String>,
) -> Result<T, String> {
    let cmd = T::augment_args(Command::new("weftd").no_binary_name(true));
    let mut args: Vec<String> = argv.to_vec();
    for (name, value) in env {
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == name.as_str()))
            .ok_or_else(|| format!("{name} is not a weftd option"))?;
        let long = arg.get_long().expect("env options have a long flag");
        match arg.get_action() {
            ArgAction::SetTrue => {
                if !matches!(value.as_str(), "" | "0" | "false" | "no" | "off") {
                    args.push(format!("--{long}"));
                }
            }
            _ => args.push(format!("--{long}={value}")),
        }
    }
    let matches = cmd.try_get_matches_from(&args).map_err(|e| e.to_string())?;
    T::from_arg_matches(&matches).map_err(|e| e.to_string())
}

fn weftd_argv(c: &Container, subcommand: &str) -> Vec<String> {
    let mut argv: Vec<String> = c.command.clone().unwrap_or_default();
    argv.extend(c.args.clone().unwrap_or_default());
    assert_eq!(
        argv.get(..2),
        Some(&["weftd".to_string(), subcommand.to_string()][..]),
        "container {} must run `weftd {subcommand}`",
        c.name
    );
    argv.split_off(2)
}

/// hostPath volume name -> path.
fn host_paths(pod: &k8s_openapi::api::core::v1::PodSpec) -> BTreeMap<String, String> {
    pod.volumes
        .iter()
        .flatten()
        .map(|v| {
            let hp = v
                .host_path
                .as_ref()
                .unwrap_or_else(|| panic!("volume {} is not a hostPath", v.name));
            (v.name.clone(), hp.path.clone())
        })
        .collect()
}

/// mountPath -> host path of a container's mounts; each must be mounted at its own node path
/// (the conflist and the IPAM store name paths that the plugin, on the host, uses).
fn mounts(c: &Container, host: &BTreeMap<String, String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for m in c.volume_mounts.iter().flatten() {
        let hp = host
            .get(&m.name)
            .unwrap_or_else(|| panic!("{} mounts unknown volume {}", c.name, m.name));
        assert_eq!(
            &m.mount_path, hp,
            "{}: {} mounted elsewhere than on the node",
            c.name, m.name
        );
        assert!(m.sub_path.is_none() && m.mount_propagation.is_none());
        out.insert(m.mount_path.clone());
    }
    out
}

#[test]
fn daemon_set_runs_weftd_as_the_cli_parses_it_with_only_what_it_needs() {
    let m = manifest();
    let cm = m.config_map.unwrap();
    let ns = m.namespace.unwrap().metadata.name.unwrap();
    assert_eq!(cm.metadata.namespace.as_deref(), Some(ns.as_str()));
    let ds = m.daemon_set.unwrap();
    assert_eq!(ds.metadata.namespace.as_deref(), Some(ns.as_str()));
    let spec = ds.spec;
    let labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    for (k, v) in spec.selector.match_labels.clone().unwrap() {
        assert_eq!(
            labels.get(&k),
            Some(&v),
            "selector does not match the template"
        );
    }
    let pod = spec.template.spec.unwrap();

    // Scheduling: every node, before everything else, whatever its taints.
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let tolerations = pod.tolerations.clone().unwrap();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "no toleration for every taint: {tolerations:?}"
    );

    let host = host_paths(&pod);

    // The init container: `weftd install` into the node's /opt/cni/bin, no capabilities.
    let inits = pod.init_containers.clone().unwrap();
    assert_eq!(inits.len(), 1);
    let init = &inits[0];
    let (env, from_refs) = environment(init, &cm);
    assert!(from_refs.is_empty());
    let install: Install = parse_like_weftd(&weftd_argv(init, "install"), &env).unwrap();
    assert_eq!(install.cni_bin_dir, Path::new("/opt/cni/bin"));
    assert!(
        install.plugin_source.is_none(),
        "the plugin comes from the image, next to weftd"
    );
    assert_eq!(
        mounts(init, &host),
        BTreeSet::from(["/opt/cni/bin".to_string()])
    );
    let sc = init.security_context.clone().unwrap();
    assert_ne!(sc.privileged, Some(true));
    assert_eq!(sc.capabilities.unwrap().add, None);

    // The agent.
    assert_eq!(pod.containers.len(), 1);
    let c = &pod.containers[0];
    let (env, from_refs) = environment(c, &cm);
    assert_eq!(
        from_refs.get("WEFT_NODE_NAME"),
        Some(&serde_json::json!({"fieldRef": {"fieldPath": "spec.nodeName"}}))
    );
    assert_eq!(from_refs.len(), 1);
    let mut env = env;
    env.insert("WEFT_NODE_NAME".into(), "node-a".into());
    let cfg: RunConfig = parse_like_weftd(&weftd_argv(c, "run"), &env)
        .unwrap_or_else(|e| panic!("weftd would not start: {e}"));
    assert_eq!(cfg.datastore, DatastoreKind::Kubernetes);
    assert!(
        !cfg.cluster_cidrs.is_empty(),
        "the kubernetes datastore needs --cluster-cidr"
    );

    // Only the capabilities it needs; not privileged.
    let sc = c.security_context.clone().unwrap();
    assert_ne!(sc.privileged, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let caps = sc.capabilities.unwrap();
    assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));
    assert_eq!(
        caps.add.unwrap().into_iter().collect::<BTreeSet<_>>(),
        BTreeSet::from(["NET_ADMIN".to_string(), "NET_RAW".to_string()])
    );

    // Exactly the node paths weftd shares with the plugin and its next run, each the node's
    // own directory at the same path (issue 10: the plugin events dir was not mounted, so the
    // CNI metrics stayed empty in every real deployment), plus the iptables lock.
    let mut want: BTreeSet<String> = cfg
        .shared_node_paths()
        .iter()
        .map(|(_, p)| p.display().to_string())
        .collect();
    want.insert("/run/xtables.lock".to_string());
    let have = mounts(c, &host);
    for (what, path) in cfg.shared_node_paths() {
        assert!(
            have.contains(&path.display().to_string()),
            "{what} ({}) is not a hostPath volume mounted at the same path",
            path.display()
        );
    }
    assert_eq!(have, want);
    // And they are weftd's defaults: the plugin and `weftd` run by hand on the node (trace,
    // status, cleanup) find the same files without flags.
    let defaults: RunConfig = parse_like_weftd(
        &[],
        &BTreeMap::from([("WEFT_NODE_NAME".into(), "n".into())]),
    )
    .unwrap();
    for ((what, path), (_, default)) in cfg
        .shared_node_paths()
        .iter()
        .zip(defaults.shared_node_paths())
    {
        assert_eq!(
            *path, default,
            "the manifest moves the {what} off weftd's default"
        );
    }
    let used: BTreeSet<&String> = pod
        .containers
        .iter()
        .chain(&inits)
        .flat_map(|c| c.volume_mounts.iter().flatten().map(|m| &m.name))
        .collect();
    assert_eq!(used, host.keys().collect(), "unused volumes");

    // Probes and port: where weftd listens, the paths it serves (crates/agent/src/http.rs;
    // tests/install.rs GETs them from a running weftd).
    let probe_at = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        let g = p.clone().unwrap().http_get.unwrap();
        let port = match g.port {
            IntOrString::Int(p) => p as u16,
            IntOrString::String(name) => c
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.container_port as u16)
                .unwrap(),
        };
        assert_eq!(g.scheme.as_deref().unwrap_or("HTTP"), "HTTP");
        (g.host.unwrap(), port, g.path.unwrap())
    };
    let (host_ip, port, path) = probe_at(&c.liveness_probe);
    assert_eq!(host_ip, cfg.listen.ip().to_string());
    assert_eq!(port, cfg.listen.port());
    assert_eq!(path, "/healthz");
    let (host_ip, port, path) = probe_at(&c.readiness_probe);
    assert_eq!(
        (host_ip, port),
        (cfg.listen.ip().to_string(), cfg.listen.port())
    );
    assert_eq!(path, "/readyz");
    let ports = c.ports.clone().unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].container_port as u16, cfg.listen.port());
    assert_eq!(ports[0].protocol.as_deref(), Some("TCP"));

    // Requests so the scheduler accounts for it (flannel: 100m / 50Mi).
    for c in pod.containers.iter().chain(&inits) {
        let req = c
            .resources
            .as_ref()
            .and_then(|r| r.requests.clone())
            .unwrap_or_else(|| panic!("{} has no resource requests", c.name));
        assert!(
            req.contains_key("cpu") && req.contains_key("memory"),
            "{}",
            c.name
        );
    }
}

#[test]
fn the_env_check_catches_what_weftd_would_reject() {
    let mut env = BTreeMap::from([
        ("WEFT_NODE_NAME".to_string(), "n".to_string()),
        (
            "WEFT_CLUSTER_CIDRS".to_string(),
            "10.244.0.0/16".to_string(),
        ),
    ]);
    let argv = vec!["--datastore".to_string(), "kubernetes".to_string()];
    parse_like_weftd::<RunConfig>(&argv, &env).unwrap();
    env.insert("WEFT_MTU".into(), String::new());
    assert!(
        parse_like_weftd::<RunConfig>(&argv, &env).is_err(),
        "empty MTU accepted"
    );
    env.remove("WEFT_MTU");
    env.insert("WEFT_BAKEND".into(), "vxlan".into());
    assert!(
        parse_like_weftd::<RunConfig>(&argv, &env).is_err(),
        "typo accepted"
    );
}

#[test]
fn containerfile_builds_both_binaries_and_ships_the_firewall_tools() {
    let text = std::fs::read_to_string(deploy_dir().join("../Containerfile")).unwrap();
    let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "multi-stage: build and runtime");
    assert!(text.contains("-p weft-plugin -p weft-agent"));
    assert!(text.contains("COPY --from=build /out/weft /out/weftd /usr/local/bin/"));
    assert!(text.contains("nftables iptables"));
}
