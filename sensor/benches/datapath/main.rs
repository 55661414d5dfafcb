//! Datapath cost of the kernel programs, measured in the kernel with BPF_PROG_TEST_RUN.
//!
//! `cargo bench -p sensor --bench datapath [-- --write-docs]` (what `cargo xtask bench` runs):
//! loads the programs privately (no pinning, no attachment), builds a realistic frame mix over
//! 10,000 flows, primes the maps with it, then times `gwsensor_xdp` against the do-nothing
//! `gwsensor_xdp_pass` on the same frames in the same run, the TC program, and the first packet
//! of new flows. With `--write-docs` it rewrites its section of docs/benchmarks.md; otherwise it only prints.
//!
//! Run by `cargo test --all-targets` (no `--bench` argument) it is a smoke test instead: a few
//! frames once, checked, no timing. Needs root either way.
//!
//! Layout: `programs` (the private instance and its test runs), `mix` (the frame mix and the
//! priming of the maps), `smoke` (the smoke test), `measure` (the timed runs) and `report` (the
//! bench mode: its table and the docs section). The constants below are what they share.

mod measure;
mod mix;
mod programs;
mod report;
mod smoke;

use std::process::ExitCode;

use report::bench;
use smoke::smoke;

const XDP_PASS: u32 = 2;
const TC_ACT_UNSPEC: u32 = u32::MAX;

/// The frame mix: CLIENTS × REMOTES_PER_CLIENT distinct flows.
const CLIENTS: usize = 250;
const REMOTES_PER_CLIENT: usize = 40;
const FLOWS: usize = CLIENTS * REMOTES_PER_CLIENT;
/// Frames of the mix that are timed, and how often each runs in the kernel per measurement.
const SAMPLE: usize = 64;
const REPEAT: u32 = 200_000;
/// Each sample frame is measured this many times (programs interleaved); the median is kept.
const ROUNDS: usize = 3;
/// New flows whose first packet is timed (single runs), and as many known-flow single runs.
const NEW_FLOWS_PER_CLIENT: usize = 8;
const NEW_FLOWS: usize = CLIENTS * NEW_FLOWS_PER_CLIENT;
/// The figure to meet: added cost of the sensor per known-flow packet.
const TARGET_ADDED_NS: f64 = 80.0;
/// The figure to meet against the floor: the sensor's added cost per known-flow packet over the
/// floor's (issue 17).
const TARGET_FLOOR_RATIO: f64 = 1.15;

const LAN: [&str; 2] = ["192.168.0.0/16", "fd00:1::/64"];
const GW_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0xfe];
const COMMAND: &str = "cargo bench -p sensor --bench datapath -- --write-docs";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bench_mode = args.iter().any(|a| a == "--bench");
    let write_docs = args.iter().any(|a| a == "--write-docs");
    if !nix::unistd::geteuid().is_root() {
        let required = bench_mode
            || std::env::var("CI").as_deref() == Ok("true")
            || std::env::var("GWSENSOR_TEST_REQUIRE_PRIVILEGED").as_deref() == Ok("1");
        if required {
            eprintln!(
                "datapath bench: needs root (loads eBPF programs and runs BPF_PROG_TEST_RUN)"
            );
            return ExitCode::FAILURE;
        }
        eprintln!("\n*** SKIPPED: needs root (datapath bench smoke test) ***\n");
        return ExitCode::SUCCESS;
    }
    let result = if bench_mode { bench(write_docs) } else { smoke() };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("datapath bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
