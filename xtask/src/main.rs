//! `cargo xtask`: developer and CI tasks for the gateway sensor (toolchain setup, build, the full
//! test suite, benchmarks, demo). Run `cargo xtask --help`.

mod apt;
mod bench;
mod demo;
mod dist;
mod fuzz;
mod matrix;
mod peer;
mod process;
mod sensor_build;
mod test_suite;
mod toolchain;

use std::time::Instant;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Gateway sensor development tasks"
)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Make this machine ready: nightly rust-src, bpf-linker built against the nightly's LLVM,
    /// clippy, and the system tools the tests use (idempotent).
    Setup,
    /// Build the sensor binary (target/{debug,release}/sensor).
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Run all tests: clippy (warnings are errors), then every test target, including the
    /// kernel and network-namespace tests. Needs root.
    Test,
    /// Build the static (musl) binaries and run only the kernel matrix (part of `test`): boots
    /// Debian's 5.10, 6.1 and 6.12 amd64 and 6.1 arm64 kernels under qemu, checks loading,
    /// attaching, counting and naming events in each, and writes the table in docs/deploy.md.
    Matrix {
        /// Only these kernels, as suite-arch (e.g. bookworm-amd64,bookworm-arm64).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// Run the datapath benchmark, the full differential parser test and every fuzz target,
    /// and write docs/benchmarks.md; fails on a parser mismatch or a fuzz crash.
    Bench(bench::BenchOpts),
    /// Set up, build the sensor (release) and play the demo: a home network in namespaces, the
    /// agent on its router with the example config and policy, Prometheus and Alertmanager.
    Demo(demo::DemoOpts),
    /// Release artifacts in target/dist/: a .deb for this host and static (musl) binaries for
    /// x86_64 and aarch64, each checked (statically linked, runs).
    Dist,
}

/// A failure is one line (`error: what: why: cause`), not a Debug dump or a backtrace: the
/// steps' errors already name the command and its fix.
fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run_task(cli.command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_task(command: Task) -> Result<()> {
    match command {
        Task::Setup => setup(),
        Task::Build { release } => {
            toolchain::ensure_toolchain()?;
            sensor_build::build_sensor(release)
        }
        Task::Test => test_suite::run_all(),
        Task::Matrix { only } => {
            toolchain::ensure_toolchain()?;
            let archs: Vec<&str> = if only.is_empty() {
                vec!["amd64", "arm64"]
            } else {
                ["amd64", "arm64"]
                    .into_iter()
                    .filter(|a| only.iter().any(|k| k.ends_with(a)))
                    .collect()
            };
            let dist = process::target_dir().join("dist");
            let statics = dist::static_binaries_for(&dist, &archs)?;
            matrix::run_matrix(&statics, &only)
        }
        Task::Bench(opts) => bench::run_bench(&opts),
        Task::Demo(opts) => {
            // Checked first, before minutes of setup and build.
            if !nix::unistd::geteuid().is_root() {
                anyhow::bail!(
                    "the demo needs root (it builds network namespaces and loads eBPF): run it with sudo -E"
                );
            }
            toolchain::ensure_toolchain()?;
            apt::ensure_debian_packages(apt::DEMO_TOOLS)?;
            sensor_build::build_sensor(true)?;
            demo::run(opts)
        }
        Task::Dist => {
            toolchain::ensure_toolchain()?;
            dist::run_dist()
        }
    }
}

fn setup() -> Result<()> {
    let start = Instant::now();
    toolchain::ensure_toolchain()?;
    toolchain::ensure_clippy()?;
    apt::ensure_debian_packages(apt::TEST_TOOLS)?;
    println!("[setup] ready in {}", process::format_duration(start.elapsed()));
    Ok(())
}
