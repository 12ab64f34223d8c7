//! The CNI_* environment a runtime sets, checked as libcni and the spec require.

use crate::args::CniArgs;
use crate::error::{self, CniError};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }
}

/// The environment of one plugin invocation, validated for its verb.
#[derive(Debug, Clone)]
pub struct Env {
    pub command: Command,
    pub container_id: String,
    /// Empty when the runtime gave none (allowed for DEL).
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub args: CniArgs,
    pub path: Vec<PathBuf>,
}

/// The spec's regex for container ids and network names: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
pub fn valid_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Interface names as libcni validates them (and the kernel accepts them).
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("interface name is empty".into());
    }
    if name.len() > 15 {
        return Err(format!(
            "interface name {name:?} is longer than 15 characters"
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("interface name {name:?} is not allowed"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace())
    {
        return Err(format!("interface name {name:?} contains {c:?}"));
    }
    Ok(())
}

fn invalid_env(msg: String) -> CniError {
    CniError::new(error::INVALID_ENV, msg)
}

impl Env {
    /// Reads and validates the environment through `get` (std::env::var in the binary).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
        let raw_cmd = get("CNI_COMMAND").ok_or_else(|| {
            invalid_env("required environment variable CNI_COMMAND is not set".into())
        })?;
        let command = Command::parse(&raw_cmd).ok_or_else(|| {
            invalid_env(format!(
                "CNI_COMMAND {raw_cmd:?} is not one of ADD, DEL, CHECK, STATUS, GC, VERSION"
            ))
        })?;
        let per_attachment = matches!(command, Command::Add | Command::Del | Command::Check);

        let require = |key: &str| -> Result<String, CniError> {
            match get(key) {
                Some(v) if !v.is_empty() => Ok(v),
                _ => Err(invalid_env(format!(
                    "required environment variable {key} is not set"
                ))),
            }
        };

        let mut container_id = String::new();
        let mut ifname = String::new();
        let mut netns = None;
        if per_attachment {
            container_id = require("CNI_CONTAINERID")?;
            if !valid_identifier(&container_id) {
                return Err(invalid_env(format!(
                    "CNI_CONTAINERID {container_id:?} must match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"
                )));
            }
            ifname = require("CNI_IFNAME")?;
            check_ifname(&ifname).map_err(|e| invalid_env(format!("CNI_IFNAME: {e}")))?;
            netns = match command {
                Command::Del => get("CNI_NETNS")
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from),
                _ => Some(PathBuf::from(require("CNI_NETNS")?)),
            };
        }
        let path = match command {
            Command::Version => Vec::new(),
            _ => {
                let raw = require("CNI_PATH")?;
                let dirs: Vec<PathBuf> = raw
                    .split(':')
                    .filter(|p| !p.is_empty())
                    .map(PathBuf::from)
                    .collect();
                // ":" is as unset as "" (fuzzing found it accepted as an empty list).
                if dirs.is_empty() {
                    return Err(invalid_env(format!("CNI_PATH {raw:?} names no directory")));
                }
                dirs
            }
        };
        let args = CniArgs::parse(&get("CNI_ARGS").unwrap_or_default())
            .map_err(|e| invalid_env(format!("CNI_ARGS: {e}")))?;
        Ok(Env {
            command,
            container_id,
            netns,
            ifname,
            args,
            path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Env, CniError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_lookup(|k| m.get(k).cloned())
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
    ];

    fn with(over: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut v: Vec<_> = ADD
            .iter()
            .filter(|(k, _)| !over.iter().any(|(o, _)| o == k))
            .copied()
            .collect();
        v.extend(over.iter().filter(|(_, val)| *val != "<unset>"));
        v
    }

    #[test]
    fn valid_add() {
        let e = env(ADD).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.path.len(), 2);
        assert_eq!(e.netns.unwrap(), PathBuf::from("/run/netns/x"));
    }

    #[test]
    fn missing_and_bad_values_name_the_variable() {
        for (over, needle) in [
            (vec![("CNI_COMMAND", "<unset>")], "CNI_COMMAND"),
            (vec![("CNI_COMMAND", "FOO")], "FOO"),
            (vec![("CNI_CONTAINERID", "<unset>")], "CNI_CONTAINERID"),
            (vec![("CNI_CONTAINERID", "-bad")], "-bad"),
            (vec![("CNI_CONTAINERID", "a/b")], "a/b"),
            (vec![("CNI_NETNS", "<unset>")], "CNI_NETNS"),
            (vec![("CNI_IFNAME", "<unset>")], "CNI_IFNAME"),
            (vec![("CNI_IFNAME", "a-very-long-name0")], "longer than 15"),
            (vec![("CNI_IFNAME", "..")], "not allowed"),
            (vec![("CNI_IFNAME", "et h0")], "contains"),
            (vec![("CNI_IFNAME", "eth:0")], "contains"),
            (vec![("CNI_PATH", "<unset>")], "CNI_PATH"),
            // Fuzzing regression: a CNI_PATH of only separators named no directory.
            (vec![("CNI_PATH", ":")], "names no directory"),
            (vec![("CNI_PATH", ":::")], "CNI_PATH"),
            (vec![("CNI_ARGS", "FOO")], "CNI_ARGS"),
        ] {
            let err = env(&with(&over)).unwrap_err();
            assert_eq!(err.code, error::INVALID_ENV, "{over:?}");
            assert!(err.msg.contains(needle), "{over:?}: {}", err.msg);
        }
    }

    #[test]
    fn del_without_netns_is_fine() {
        let e = env(&with(&[("CNI_COMMAND", "DEL"), ("CNI_NETNS", "<unset>")])).unwrap();
        assert!(e.netns.is_none());
    }

    #[test]
    fn version_needs_nothing_else() {
        let e = env(&[("CNI_COMMAND", "VERSION")]).unwrap();
        assert_eq!(e.command, Command::Version);
    }

    #[test]
    fn identifier_regex() {
        assert!(valid_identifier("a"));
        assert!(valid_identifier("9a_b.c-d"));
        assert!(!valid_identifier(""));
        assert!(!valid_identifier("_a"));
        assert!(!valid_identifier("a b"));
    }
}
