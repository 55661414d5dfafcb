//! `cargo xtask bench`: runs the datapath benchmark, which rewrites docs/benchmarks.md (keeping
//! the section `cargo xtask bench --peer` writes there).

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
    // The datapath bench writes the whole file; the peer comparison's section is put back.
    let peer_section = fs::read_to_string(&results)
        .ok()
        .and_then(|doc| crate::peer::section_of(&doc));
    run(
        "bench",
        "datapath",
        cargo().args([
            "bench",
            "-p",
            "sensor",
            "--bench",
            "datapath",
            "--",
            "--write-docs",
        ]),
    )?;
    if let Some(section) = peer_section
        && let Ok(doc) = fs::read_to_string(&results)
        && !doc.contains(crate::peer::SECTION_BEGIN)
    {
        fs::write(&results, crate::peer::upsert_section(&doc, &section)?)?;
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
