//! The fuzzing part of `cargo xtask bench`: every cargo-fuzz target in fuzz/ (as `cargo fuzz
//! list` names them, so a new target is included without a change here) runs for a fixed time,
//! its corpus seeded from the recorded test data. Writes executions and crashes into
//! docs/benchmarks.md; a crash fails the bench (its input is in fuzz/artifacts/<target>/ and
//! becomes a regression test next to the parser).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail};

use crate::process::{cargo, output, run, workspace_root};

const LABEL: &str = "fuzz";

/// Seed inputs beyond fuzz/seeds/<target>/: recorded payloads the parser tests use.
const TEST_DATA_SEEDS: &[(&str, &str)] =
    &[("dns_response", "sensor/tests/data/dns"), ("tls_client_hello", "sensor/tests/data/tls")];

/// One target's run.
pub struct FuzzRun {
    pub target: String,
    pub seconds: f64,
    pub execs: u64,
    /// Inputs in its corpus after the run.
    pub corpus: usize,
    /// Inputs libFuzzer saved because they crashed, leaked, hung or ran out of memory.
    pub crashes: Vec<PathBuf>,
}

fn fuzz_dir() -> PathBuf {
    workspace_root().join("fuzz")
}

/// `cargo +nightly fuzz ...` in fuzz/ (cargo-fuzz needs nightly for the sanitizer flags).
fn cargo_fuzz() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(fuzz_dir()).args(["+nightly", "fuzz"]);
    cmd
}

fn ensure_cargo_fuzz() -> Result<()> {
    if output(cargo_fuzz().arg("--version")).is_ok() {
        return Ok(());
    }
    run(LABEL, "cargo-fuzz: installing", cargo().args(["install", "--locked", "cargo-fuzz"]))?;
    Ok(())
}

/// Runs every target for `seconds`; returns what each did (a crash is in the result, not an
/// error: the other targets still run and the docs are still written).
pub fn run_all(seconds: u64) -> Result<Vec<FuzzRun>> {
    ensure_cargo_fuzz()?;
    let targets: Vec<String> = output(cargo_fuzz().arg("list"))?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if targets.is_empty() {
        bail!("`cargo fuzz list` in {} names no target", fuzz_dir().display());
    }
    run(LABEL, "building the targets", cargo_fuzz().arg("build"))?;
    targets.iter().map(|t| run_target(t, seconds)).collect()
}

fn run_target(target: &str, seconds: u64) -> Result<FuzzRun> {
    let dir = fuzz_dir();
    let corpus = dir.join("corpus").join(target);
    fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    // libFuzzer writes new inputs to the first directory and only reads the others.
    let mut dirs = vec![corpus.clone()];
    let own = dir.join("seeds").join(target);
    if own.is_dir() {
        dirs.push(own);
    }
    for (t, path) in TEST_DATA_SEEDS {
        if *t == target {
            dirs.push(workspace_root().join(path));
        }
    }
    let artifacts = dir.join("artifacts").join(target);
    fs::create_dir_all(&artifacts)?;
    let before = SystemTime::now();
    let log = workspace_root().join("target").join(format!("fuzz-{target}.log"));
    let log_file = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let mut cmd = cargo_fuzz();
    cmd.args(["run", target]).args(&dirs).args([
        "--",
        &format!("-max_total_time={seconds}"),
        // A hang is a finding too (saved as timeout-*).
        "-timeout=10",
        "-print_final_stats=1",
    ]);
    cmd.stderr(log_file.try_clone()?).stdout(log_file);
    println!("[{LABEL}] {target}: {seconds} s (log: {})", log.display());
    let start = Instant::now();
    let status = cmd.status().with_context(|| format!("starting cargo fuzz run {target}"))?;
    let took = start.elapsed();
    let text = fs::read_to_string(&log).unwrap_or_default();
    let execs = final_stat(&text, "stat::number_of_executed_units:").with_context(|| {
        format!(
            "cargo fuzz run {target} printed no execution count ({status}); see {}",
            log.display()
        )
    })?;
    let crashes = new_files(&artifacts, before)?;
    if !status.success() && crashes.is_empty() {
        bail!(
            "cargo fuzz run {target} failed ({status}) without a crash input; see {}",
            log.display()
        );
    }
    let run = FuzzRun {
        target: target.to_string(),
        // libFuzzer's own time ("Done N runs in S second(s)"), without cargo's start-up.
        seconds: done_seconds(&text).unwrap_or(took.as_secs_f64()),
        execs,
        corpus: fs::read_dir(&corpus)?.count(),
        crashes,
    };
    println!(
        "[{LABEL}] {target}: {} executions in {:.0} s, corpus {}, {} crashes",
        run.execs,
        run.seconds,
        run.corpus,
        run.crashes.len()
    );
    Ok(run)
}

/// The number after `key` in libFuzzer's final stats.
fn final_stat(text: &str, key: &str) -> Option<u64> {
    text.lines().rev().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().parse().ok())
}

/// S of libFuzzer's closing "Done N runs in S second(s)" (absent after a crash).
fn done_seconds(text: &str) -> Option<f64> {
    let line = text.lines().rev().find(|l| l.starts_with("Done ") && l.contains(" runs in "))?;
    line.split(" runs in ").nth(1)?.split_whitespace().next()?.parse().ok()
}

/// Files in `dir` modified since `since`.
fn new_files(dir: &Path, since: SystemTime) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.metadata()?.modified()? >= since {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// The "Fuzzing" section of docs/benchmarks.md.
pub fn render_doc(runs: &[FuzzRun], seconds: u64, date: &str, machine: &str) -> String {
    let mut rows = String::from(
        "| Target | seconds | executions | executions/s | corpus | crashes |\n|---|---:|---:|---:|---:|---:|\n",
    );
    for r in runs {
        rows.push_str(&format!(
            "| `{}` | {:.0} | {} | {:.0} | {} | {} |\n",
            r.target,
            r.seconds,
            r.execs,
            r.execs as f64 / r.seconds.max(0.001),
            r.corpus,
            r.crashes.len()
        ));
    }
    let crashes: Vec<String> = runs
        .iter()
        .flat_map(|r| r.crashes.iter().map(move |c| format!("- `{}`: `{}`", r.target, rel(c))))
        .collect();
    let verdict = if crashes.is_empty() {
        "**No crash.**".to_string()
    } else {
        format!("**{} crashes** (the bench fails):\n\n{}", crashes.len(), crashes.join("\n"))
    };
    format!(
        "## Fuzzing\n\
         \n\
         Every cargo-fuzz target in `fuzz/` for {seconds} s (`cargo xtask bench --fuzz-seconds N`), \
         with libFuzzer, its corpus (`fuzz/corpus/<target>/`, kept between runs, not committed) \
         seeded from `fuzz/seeds/<target>/` and the recorded DNS and TLS payloads of the tests.\n\
         \n\
         {verdict}\n\
         \n\
         {rows}\n\
         - Date: {date}; {machine}\n\
         - What each target feeds its parser, and what it asserts besides not panicking: \
           fuzz/README.md.\n\
         - A crash, hang (over 10 s) or out-of-memory input is saved in \
           `fuzz/artifacts/<target>/` and fails the bench; it becomes a regression test in the \
           parser's unit tests before it is fixed.\n"
    )
}

fn rel(p: &Path) -> String {
    p.strip_prefix(workspace_root()).unwrap_or(p).display().to_string()
}
