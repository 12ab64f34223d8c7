//! The kernel side: runs a [`Batch`] as one `nft -j -f -` transaction (argv only, JSON on
//! stdin, nft's stderr kept for the error) and remembers what it programmed, so each event is
//! a diff against that record and never a dump of the kernel.

use std::io::Write;
use std::process::{Command, Stdio};

use std::collections::BTreeMap;

use crate::compile::{Ruleset, TABLE};
use crate::incremental::Changes;
use crate::nft::{build, diff, Batch};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} -j list counters table inet {table}: {reason}")]
    Counters {
        program: String,
        table: &'static str,
        reason: String,
    },
    #[error("{program} -j -f - failed ({status}) on a batch of {commands} commands: {stderr}")]
    Nft {
        program: String,
        status: std::process::ExitStatus,
        commands: usize,
        stderr: String,
    },
}

/// Programs `inet weft-policy` in the calling thread's network namespace.
#[derive(Debug, Clone)]
pub struct Applier {
    nft: String,
    /// What the kernel holds since the last successful batch; `None` before the first build.
    programmed: Option<Ruleset>,
}

/// What one [`Applier::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ApplyStats {
    pub commands: usize,
    pub elements: usize,
    pub json_bytes: usize,
    /// The table was rebuilt (first call, or after a failure).
    pub full: bool,
}

impl Default for Applier {
    fn default() -> Self {
        Applier::new()
    }
}

impl Applier {
    pub fn new() -> Applier {
        Applier::with_program("nft")
    }

    pub fn with_program(nft: impl Into<String>) -> Applier {
        Applier {
            nft: nft.into(),
            programmed: None,
        }
    }

    pub fn programmed(&self) -> Option<&Ruleset> {
        self.programmed.as_ref()
    }

    /// Make the kernel hold `desired`: the first call (and the first after a failure)
    /// replaces the whole table in one transaction; later calls send only the diff against
    /// the last programmed state. On error nothing of the batch is applied (nft transactions
    /// are atomic) and the next call rebuilds.
    pub fn apply(&mut self, desired: &Ruleset) -> Result<ApplyStats, ApplyError> {
        let (batch, full) = match &self.programmed {
            Some(old) => (diff(old, desired), false),
            None => (build(desired), true),
        };
        if batch.is_empty() {
            return Ok(ApplyStats::default());
        }
        let stats = self.run(&batch).inspect_err(|_| self.programmed = None)?;
        self.programmed = Some(desired.clone());
        Ok(ApplyStats { full, ..stats })
    }

    /// Make the kernel hold `desired`, given the [`Changes`] the incremental compiler made
    /// since the state this applier last programmed: a pod or namespace event is sent as its
    /// element changes alone and recorded in O(change) (no ruleset comparison, no copy); a
    /// recompile is diffed in full; the first call (and the first after a failure) replaces
    /// the table atomically. The caller takes the changes after every call, failed or not.
    pub fn apply_changes(
        &mut self,
        desired: &Ruleset,
        changes: &Changes,
    ) -> Result<ApplyStats, ApplyError> {
        let batch = changes.batch(self.programmed.as_ref(), desired);
        let full = self.programmed.is_none();
        if batch.is_empty() {
            return Ok(ApplyStats::default());
        }
        let stats = self.run(&batch).inspect_err(|_| self.programmed = None)?;
        match &mut self.programmed {
            Some(p) => changes.apply_to(p, desired),
            None => self.programmed = Some(desired.clone()),
        }
        Ok(ApplyStats { full, ..stats })
    }

    /// Run one batch as is.
    pub fn run(&self, batch: &Batch) -> Result<ApplyStats, ApplyError> {
        let json = batch.to_json_string();
        run_nft(&self.nft, &json, batch.commands.len())?;
        Ok(ApplyStats {
            commands: batch.commands.len(),
            elements: batch.element_count(),
            json_bytes: json.len(),
            full: false,
        })
    }

    /// Delete the table (absent is fine).
    pub fn remove(&mut self) -> Result<(), ApplyError> {
        let batch = Batch {
            commands: vec![crate::nft::Command::ResetTable],
        };
        let mut doc = batch.to_json();
        // ResetTable ends with an add: drop it, leaving add (so delete cannot fail) + delete.
        if let Some(list) = doc["nftables"].as_array_mut() {
            list.pop();
        }
        run_nft(&self.nft, &doc.to_string(), 2)?;
        self.programmed = None;
        Ok(())
    }
}

/// Packets and bytes of one named counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CounterValue {
    pub packets: u64,
    pub bytes: u64,
}

impl Applier {
    /// The table's named counters ([`crate::CompileOptions::counters`]), read with one
    /// `nft -j list counters table inet weft-policy` (not the sets: their elements are most
    /// of the table).
    pub fn read_counters(&self) -> Result<BTreeMap<String, CounterValue>, ApplyError> {
        let err = |reason: String| ApplyError::Counters {
            program: self.nft.clone(),
            table: TABLE,
            reason,
        };
        let out = Command::new(&self.nft)
            .args(["-j", "list", "counters", "table", "inet", TABLE])
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| err(e.to_string()))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(err(format!("{}: {stderr}", out.status)));
        }
        parse_counters(&String::from_utf8_lossy(&out.stdout)).map_err(err)
    }
}

/// The counters of an `nft -j list counters` document, by name.
pub fn parse_counters(json: &str) -> Result<BTreeMap<String, CounterValue>, String> {
    let doc: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("invalid JSON: {e}"))?;
    let list = doc["nftables"]
        .as_array()
        .ok_or("no \"nftables\" list in the output")?;
    let mut out = BTreeMap::new();
    for c in list.iter().filter_map(|o| o.get("counter")) {
        let (Some(name), Some(packets), Some(bytes)) = (
            c["name"].as_str(),
            c["packets"].as_u64(),
            c["bytes"].as_u64(),
        ) else {
            return Err(format!("counter without name, packets or bytes: {c}"));
        };
        if c["table"] == TABLE {
            out.insert(name.to_string(), CounterValue { packets, bytes });
        }
    }
    Ok(out)
}

fn run_nft(program: &str, json: &str, commands: usize) -> Result<(), ApplyError> {
    let spawn_err = |source| ApplyError::Spawn {
        program: program.to_string(),
        source,
    };
    let mut child = Command::new(program)
        .args(["-j", "-f", "-"])
        .env("LC_ALL", "C")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    // Write from another thread: nft may print errors before reading all its input.
    let output = std::thread::scope(|s| {
        let mut stdin = child.stdin.take();
        let writer = s.spawn(move || stdin.as_mut().map(|p| p.write_all(json.as_bytes())));
        let out = child.wait_with_output();
        let _ = writer.join();
        out
    })
    .map_err(spawn_err)?;
    if !output.status.success() {
        return Err(ApplyError::Nft {
            program: program.to_string(),
            status: output.status,
            commands,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_parsed_from_nft_json() {
        // As nft 1.0.6 prints `nft -j list counters table inet weft-policy`.
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"counter": {"family": "inet", "name": "ni_x", "table": "weft-policy", "handle": 12, "packets": 5000000000, "bytes": 320}}, {"counter": {"family": "inet", "name": "pi_x_from-y", "table": "weft-policy", "handle": 13, "packets": 3, "bytes": 180}}]}"#;
        let c = parse_counters(json).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c["ni_x"].packets, 5_000_000_000, "more than 32 bits");
        assert_eq!(
            c["pi_x_from-y"],
            CounterValue {
                packets: 3,
                bytes: 180
            }
        );
        let err = parse_counters(r#"{"nftables": [{"counter": {"name": "x"}}]}"#).unwrap_err();
        assert!(err.contains("without name, packets or bytes"), "{err}");
    }
}
