//! Building the sensor binary (agent with the eBPF object embedded by sensor/build.rs).

use anyhow::Result;

use crate::process::{cargo, run};

/// `cargo build -p sensor [--release]`; the caller has run `ensure_toolchain` first.
pub fn build_sensor(release: bool) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["build", "-p", "sensor"]);
    if release {
        cmd.arg("--release");
    }
    let profile = if release { "release" } else { "debug" };
    run("build", &format!("sensor ({profile})"), &mut cmd)?;
    println!(
        "[build] binary: {}",
        crate::process::workspace_root().join("target").join(profile).join("sensor").display()
    );
    Ok(())
}
