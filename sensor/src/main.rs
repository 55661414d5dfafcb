//! `sensor`: the gateway sensor agent.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use sensor::config::Config;

/// Counts every LAN client's traffic in the kernel (XDP + TC) and serves it as Prometheus
/// metrics.
///
/// Upload (client → anywhere) is counted by XDP on the LAN interface, download by a TC program
/// on its egress, per client MAC and IP and per remote endpoint. Counters live in pinned BPF
/// maps and a state file, so they survive agent restarts and upgrades.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the programs, attach them to the LAN interface and serve /metrics until SIGINT or
    /// SIGTERM (needs root, or CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON).
    Run {
        /// YAML config file (see docs/config.md).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file: prints `FILE: ok`, or the file, line, column, what is wrong and
    /// how to fix it, and exits 1.
    CheckConfig {
        /// YAML config file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(config) => {
                println!("{}: ok (interface {})", file.display(), config.interface);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .with_writer(std::io::stderr)
                .init();
            let config = match Config::load(&config) {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: starting the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(sensor::agent::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
