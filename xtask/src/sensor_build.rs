//! Building the sensor binary (agent with the eBPF object embedded by sensor/build.rs).

use std::path::PathBuf;

use anyhow::Result;

use crate::process::{cargo, run, target_dir};

/// `cargo build -p sensor [--release]`; the caller has run `ensure_toolchain` first.
pub fn build_sensor(release: bool) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["build", "-p", "sensor"]);
    if release {
        cmd.arg("--release");
    }
    let profile = if release { "release" } else { "debug" };
    run("build", &format!("sensor ({profile})"), &mut cmd)?;
    println!("[build] binary: {}", target_dir().join(profile).join("sensor").display());
    Ok(())
}

/// The release binary `build_sensor(true)` built.
pub fn release_binary() -> PathBuf {
    target_dir().join("release").join("sensor")
}

/// The sensor's bench-only example `xdp_floor` (attaches the benchmarks' floor program), in
/// release mode; returns its path.
pub fn build_floor_example() -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "-p", "sensor", "--release", "--example", "xdp_floor"]);
    run("build", "the floor program's example (release)", &mut cmd)?;
    Ok(target_dir().join("release").join("examples").join("xdp_floor"))
}
