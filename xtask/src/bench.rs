//! `cargo xtask bench`: the datapath benchmark, the agent at scale (full flow maps), the full
//! differential run of the kernel parser,
//! and every fuzz target for a fixed time. Each writes its own section of docs/benchmarks.md;
//! the bench fails if the differential run finds a mismatch or a fuzz target crashes (after
//! all of them ran and wrote their sections). `--peer` runs the side-by-side comparison with
//! pmacctd instead.

use std::{fs, path::Path, time::SystemTime};

use anyhow::{Result, bail};

use crate::{
    fuzz,
    process::{cargo, run, workspace_root},
    toolchain::ensure_toolchain,
};

#[derive(clap::Args)]
pub struct BenchOpts {
    /// Seconds each fuzz target runs.
    #[arg(long, env = "GWSENSOR_FUZZ_SECONDS", default_value_t = 20)]
    pub fuzz_seconds: u64,
    /// Frames of the differential parser run.
    #[arg(long, env = "GWSENSOR_DIFF_FRAMES", default_value_t = 5_000_000)]
    pub differential_frames: u64,
    /// Instead, run the sensor and pmacctd side by side on the same traffic in the lab (needs
    /// root; installs pmacct) and rewrite the "Side by side with pmacct" section.
    #[arg(long)]
    pub peer: bool,
    /// Instead, a port scan from LAN clients: 1,000,000 unique remotes in 10 minutes against
    /// the agent with the shipped tracking bounds and policy (needs root); rewrites the
    /// "Tracking under a scan" section.
    #[arg(long)]
    pub scan: bool,
}

pub fn run_bench(opts: &BenchOpts) -> Result<()> {
    if opts.peer {
        return crate::peer::run();
    }
    if opts.scan {
        ensure_toolchain()?;
        crate::sensor_build::build_sensor(true)?;
        run(
            "bench",
            "a scan of 1,000,000 unique remotes in 10 minutes",
            cargo()
                .env("GWSENSOR_TEST_REQUIRE_PRIVILEGED", "1")
                .env("GWSENSOR_SCAN_PER_CLIENT", "333334")
                .env("GWSENSOR_SCAN_SECONDS", "600")
                .env("GWSENSOR_SCAN_DOCS", "1")
                .env("GWSENSOR_SCAN_BINARY", crate::sensor_build::release_binary())
                .args(["test", "-p", "sensor", "--test", "netns", "--"])
                .args(["a_scan_of_unique_remotes_stays_within_the_tracking_bounds", "--exact"])
                .arg("--nocapture"),
        )?;
        return Ok(());
    }
    ensure_toolchain()?;
    let results = workspace_root().join("docs").join("benchmarks.md");
    let mut failed = Vec::new();

    let before = modified(&results);
    if let Err(e) = run(
        "bench",
        "datapath",
        cargo().args(["bench", "-p", "sensor", "--bench", "datapath", "--", "--write-docs"]),
    ) {
        failed.push(format!("datapath: {e:#}"));
    }
    say_written(&results, before, "datapath");

    let before = modified(&results);
    if let Err(e) = run(
        "bench",
        "scale limits of the agent",
        cargo().args(["bench", "-p", "sensor", "--bench", "scale", "--", "--write-docs"]),
    ) {
        failed.push(format!("scale: {e:#}"));
    }
    say_written(&results, before, "scale");

    let before = modified(&results);
    if let Err(e) = run(
        "bench",
        &format!("differential parser test, {} frames", opts.differential_frames),
        cargo()
            .args(["bench", "-p", "sensor", "--bench", "differential", "--", "--write-docs"])
            .env("GWSENSOR_DIFF_FRAMES", opts.differential_frames.to_string()),
    ) {
        failed.push(format!(
            "differential parser test (mismatches are listed above and in the doc): {e:#}"
        ));
    }
    say_written(&results, before, "differential");

    match fuzz::run_all(opts.fuzz_seconds) {
        Ok(runs) => {
            let doc = fuzz::render_doc(
                &runs,
                opts.fuzz_seconds,
                &lab::docs::now_utc(),
                &lab::docs::Machine::current().summary(),
            );
            lab::docs::write_section(&results, "fuzzing", &doc)?;
            println!("[bench] fuzzing results written to {}", results.display());
            for r in runs.iter().filter(|r| !r.crashes.is_empty()) {
                failed.push(format!("fuzz target {} crashed: {:?}", r.target, r.crashes));
            }
        }
        Err(e) => failed.push(format!("fuzzing: {e:#}")),
    }

    if !failed.is_empty() {
        bail!("the bench found problems:\n  {}", failed.join("\n  "));
    }
    Ok(())
}

/// Says whether a step really rewrote the results: one that exits 0 without writing them would
/// otherwise leave stale numbers looking fresh.
fn say_written(results: &Path, before: Option<SystemTime>, what: &str) {
    if modified(results).is_some_and(|after| Some(after) != before) {
        println!("[bench] {what} results written to {}", results.display());
    } else {
        println!(
            "[bench] warning: {what} did not update {}; its numbers are not from this run",
            results.display()
        );
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}
