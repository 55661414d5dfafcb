//! `cargo xtask test`: the one command that runs every check (lints, unit tests, and the kernel
//! and network-namespace integration tests).

use std::{env, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{
    apt::{TEST_TOOLS, ensure_debian_packages},
    dist, matrix,
    process::{cargo, run, target_dir, workspace_root},
    toolchain::{ensure_clippy, ensure_rustfmt, ensure_toolchain},
};

/// Tests read this and fail instead of skipping when they lack root, bpffs or namespaces.
const REQUIRE_PRIVILEGED: &str = "GWSENSOR_TEST_REQUIRE_PRIVILEGED";

/// Every workspace package that builds for the host. sensor-ebpf only compiles for the BPF
/// target (sensor/build.rs builds it through aya-build, so a broken eBPF crate still fails the
/// sensor build); checked for the host, its `no_main` binary fails on the panic strategy.
const HOST_PACKAGES: [&str; 3] = ["--workspace", "--exclude", "sensor-ebpf"];

pub fn run_all() -> Result<()> {
    // Checked first, before minutes of setup: without root the kernel and namespace tests
    // would skip, and a suite that skips its point must not be reported as passing.
    if !nix::unistd::geteuid().is_root() {
        bail!("the kernel and namespace tests need root: run as root (sudo -E cargo xtask test)");
    }
    ensure_toolchain()?;
    ensure_clippy()?;
    ensure_rustfmt()?;
    ensure_debian_packages(TEST_TOOLS)?;

    // Formatting first: the cheapest check (rustfmt.toml at the root; the eBPF crate too).
    run("fmt", "every workspace crate, rustfmt.toml", cargo().args(["fmt", "--all", "--check"]))?;
    run(
        "fmt",
        "the fuzz targets (a workspace of their own)",
        cargo().args(["fmt", "--manifest-path", "fuzz/Cargo.toml", "--all", "--check"]),
    )?;

    // Lints first: cheaper than the test build and the likeliest failure on a fresh change.
    run(
        "clippy",
        "all host packages and targets, warnings are errors",
        cargo().arg("clippy").args(HOST_PACKAGES).args(["--all-targets", "--", "-D", "warnings"]),
    )?;

    // The eBPF crate, linted for what it is: no_std with panic=abort, checked by nightly clippy
    // (the toolchain that builds it).
    run(
        "clippy",
        "sensor-ebpf (nightly, panic=abort), warnings are errors",
        Command::new("rustup")
            .current_dir(workspace_root())
            .args([
                "run",
                "nightly",
                "cargo",
                "clippy",
                "--package",
                "sensor-ebpf",
                "--all-targets",
                "--",
            ])
            .args(["-D", "warnings", "-C", "panic=abort", "-Zpanic_abort_tests"]),
    )?;

    // CI is inherited as is (tests use it to pick CI-appropriate timeouts and output); shown
    // so a log says which mode ran.
    match env::var("CI") {
        Ok(ci) => println!("[test] CI={ci}"),
        Err(_) => println!("[test] CI is not set"),
    }
    // The release build, as deployed: the scan test measures its memory (the demo runs it
    // later; built once).
    crate::sensor_build::build_sensor(true)?;
    // --no-fail-fast: one failing test binary must not hide the results of the others; the
    // exit status is still non-zero if any failed.
    run(
        "test",
        "all host packages and targets",
        cargo()
            .env(REQUIRE_PRIVILEGED, "1")
            .env("GWSENSOR_SCAN_BINARY", crate::sensor_build::release_binary())
            .arg("test")
            .args(HOST_PACKAGES)
            .args(["--all-targets", "--no-fail-fast"]),
    )?;
    // Packaging and old kernels: the static binaries `cargo xtask dist` ships (built and run
    // here so they cannot rot unseen), then the kernel matrix, whose guests run them.
    let statics = dist::static_binaries(&target_dir().join("dist"))?;
    // An upgrade to another build: the restart test again, its third agent the static release
    // binary just built (the host build is already compiled: this only runs it).
    let amd64 = statics
        .iter()
        .find(|s| s.debian_arch == "amd64")
        .context("the static amd64 build is missing from dist")?;
    run(
        "test",
        "restart under traffic, upgrading to the static release build",
        cargo().env(REQUIRE_PRIVILEGED, "1").env("GWSENSOR_UPGRADE_BINARY", &amd64.sensor).args([
            "test",
            "-p",
            "sensor",
            "--test",
            "netns",
            "--",
            "steady_stream_counted",
        ]),
    )?;
    matrix::run_matrix(&statics, &[])?;
    // The demo's story end to end: the release agent, a real Prometheus and Alertmanager, the
    // expected alert firing and resolving, and every dashboard panel query returning data.
    run(
        "test",
        "cargo xtask demo --replay-once",
        Command::new(env::current_exe().context("locating the xtask binary")?)
            .args(["demo", "--replay-once"]),
    )?;
    println!("[test] all checks passed");
    Ok(())
}
