//! External commands with errors that say which command failed and what it printed.

use std::process::Command;

use anyhow::{Context as _, bail};

/// Runs `program args…` to completion; on failure the error carries the full command line,
/// the exit status and stderr, which is what one needs to debug a half-built topology.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let cmdline = || {
        let mut s = program.to_string();
        for a in args {
            s.push(' ');
            s.push_str(a);
        }
        s
    };
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run `{}`", cmdline()))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            cmdline(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// iproute2 `ip`; use `-n <netns>` as the first arguments to act inside a namespace.
pub fn ip(args: &[&str]) -> anyhow::Result<String> {
    run("ip", args)
}

/// iproute2 `bridge` (static FDB entries).
pub fn bridge(args: &[&str]) -> anyhow::Result<String> {
    run("bridge", args)
}
