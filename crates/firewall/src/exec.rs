//! Spawning nft / iptables: argv only (no shell), stdin fed from memory, stderr kept for errors.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::{FirewallError, Result};

/// Run `program args...`, optionally feeding `stdin`, and return its stdout.
/// A non-zero exit becomes [`FirewallError::Command`] with the exit status and stderr.
pub(crate) fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut child = Command::new(program)
        .args(args)
        // Stable, parseable messages whatever the agent's locale is.
        .env("LC_ALL", "C")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| FirewallError::Spawn {
            program: program.to_string(),
            source,
        })?;

    // Feed stdin from another thread so a child that writes a lot before reading all of its
    // input cannot deadlock against us.
    let output = std::thread::scope(|s| {
        let writer = child.stdin.take().map(|mut pipe| {
            let data = stdin.unwrap_or_default().as_bytes();
            s.spawn(move || pipe.write_all(data))
        });
        let output = child.wait_with_output();
        let written = writer.map(|w| w.join().expect("stdin writer panicked"));
        (output, written)
    });
    let (output, written) = output;
    let output = output.map_err(|source| FirewallError::Spawn {
        program: program.to_string(),
        source,
    })?;

    if !output.status.success() {
        return Err(FirewallError::Command {
            program: program.to_string(),
            args: args.join(" "),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    // The child exited 0, so it read what it needed; a broken pipe only matters if it failed.
    if let Some(Err(source)) = written {
        if source.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(FirewallError::Spawn {
                program: program.to_string(),
                source,
            });
        }
    }
    String::from_utf8(output.stdout).map_err(|e| FirewallError::Parse {
        program: program.to_string(),
        reason: e.to_string(),
    })
}
