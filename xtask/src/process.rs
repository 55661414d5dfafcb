//! Child processes for the xtask commands. Every step prints a `[label] ...` header and how long
//! it took, and a failure names the exact command line, so a broken CI log says what to re-run.

use std::{
    borrow::Cow,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// The workspace root: xtask lives one level below it, and cargo commands run from there so they
/// see the workspace manifest whatever directory `cargo xtask` was started in.
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask's manifest directory has a parent")
}

/// Where cargo puts what it builds: `CARGO_TARGET_DIR` (relative to the workspace root, where
/// [`cargo`] runs) if set, else the workspace's `target`.
pub fn target_dir() -> std::path::PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// `cargo` run from the workspace root. Uses the cargo that started xtask (`$CARGO`) so child
/// builds use the same toolchain as `cargo xtask` itself.
pub fn cargo() -> Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(program);
    cmd.current_dir(workspace_root());
    cmd
}

/// Runs `cmd` with its output streamed to ours, between a `[label] what...` header (plus the
/// command line) and a `done in ...` footer. Fails with the command line if it exits non-zero.
pub fn run(label: &str, what: &str, cmd: &mut Command) -> Result<Duration> {
    let line = command_line(cmd);
    println!("[{label}] {what}...");
    println!("[{label}]   $ {line}");
    let start = Instant::now();
    let status = cmd.status().with_context(|| format!("could not start `{line}`"))?;
    let took = start.elapsed();
    if !status.success() {
        bail!("`{line}` failed ({status}) after {}", format_duration(took));
    }
    println!("[{label}] {what}: done in {}", format_duration(took));
    Ok(took)
}

/// Runs `cmd` quietly and returns its stdout, for probes whose answer xtask parses. A failure
/// carries the command line and the child's stderr.
pub fn output(cmd: &mut Command) -> Result<String> {
    let line = command_line(cmd);
    let out =
        cmd.stdin(Stdio::null()).output().with_context(|| format!("could not start `{line}`"))?;
    if !out.status.success() {
        bail!("`{line}` failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{line}` printed non-UTF-8 output"))
}

/// Prints the outcome of a step that ran no long command (a probe, a skip), with its duration.
pub fn report(label: &str, what: &str, outcome: &str, since: Instant) {
    println!("[{label}] {what}: {outcome} ({})", format_duration(since.elapsed()));
}

/// `0.4s`, `12.0s`, `2m41s`: short enough for a one-line step footer.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// Renders `cmd` the way one would type it (`VAR=value program args`), for headers and errors.
/// The program is shown by file name: `$CARGO` is a long toolchain path that would bury the
/// interesting part.
pub fn command_line(cmd: &Command) -> String {
    let mut words: Vec<String> = cmd
        .get_envs()
        .filter_map(|(key, value)| {
            value.map(|v| format!("{}={}", key.to_string_lossy(), quote(&v.to_string_lossy())))
        })
        .collect();
    let program = Path::new(cmd.get_program());
    let program = program.file_name().unwrap_or(program.as_os_str());
    words.push(quote(&program.to_string_lossy()).into_owned());
    words.extend(cmd.get_args().map(|a| quote(&a.to_string_lossy()).into_owned()));
    words.join(" ")
}

/// Single-quotes a word for the shell when it has anything beyond plain path/flag characters.
fn quote(word: &str) -> Cow<'_, str> {
    let plain = !word.is_empty()
        && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c));
    if plain {
        Cow::Borrowed(word)
    } else {
        Cow::Owned(format!("'{}'", word.replace('\'', r"'\''")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_quotes_and_shows_env() {
        let mut cmd = Command::new("/opt/bin/cargo");
        cmd.env("LLVM_PREFIX", "/root/.cargo/bpf-linker-llvm").args(["install", "a b", "it's"]);
        assert_eq!(
            command_line(&cmd),
            r"LLVM_PREFIX=/root/.cargo/bpf-linker-llvm cargo install 'a b' 'it'\''s'"
        );
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(format_duration(Duration::from_millis(420)), "0.4s");
        assert_eq!(format_duration(Duration::from_secs(161)), "2m41s");
    }
}
