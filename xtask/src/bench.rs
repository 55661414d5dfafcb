//! `cargo xtask bench`: runs the datapath benchmark, which rewrites docs/benchmarks.md, and
//! the scale benchmark, which rewrites its "Scale limits" section there.

use std::{fs, time::SystemTime};

use anyhow::Result;

use crate::{
    process::{cargo, run, workspace_root},
    toolchain::ensure_toolchain,
};

pub fn run_bench() -> Result<()> {
    ensure_toolchain()?;
    let results = workspace_root().join("docs").join("benchmarks.md");
    let before = modified(&results);
    for bench in ["datapath", "scale"] {
        run(
            "bench",
            bench,
            cargo().args(["bench", "-p", "sensor", "--bench", bench, "--", "--write-docs"]),
        )?;
    }
    // Say whether the file really changed: a bench that exits 0 without writing it would
    // otherwise leave stale numbers looking fresh.
    if modified(&results).is_some_and(|after| Some(after) != before) {
        println!("[bench] results written to {}", results.display());
    } else {
        println!(
            "[bench] warning: the bench did not update {}; its numbers are not from this run",
            results.display()
        );
    }
    Ok(())
}

fn modified(path: &std::path::Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}
