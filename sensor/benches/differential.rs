//! The full differential run of the kernel parser (what `cargo xtask bench` runs): millions of
//! generated and mutated frames through the XDP and TC programs (BPF_PROG_TEST_RUN) and
//! through the reference classifier; see tests/parser_diff. With `--write-docs` it rewrites
//! its section of docs/benchmarks.md. Exits non-zero on any mismatch.
//!
//! `GWSENSOR_DIFF_FRAMES` (default 5,000,000) sets the number of frames, `GWSENSOR_DIFF_SEED`
//! the seed (default: from the clock, so that every run tries new frames; the seed is printed
//! and written down, so a run can be repeated). Run by `cargo test --all-targets` (no `--bench`
//! argument) it is a smoke test of a few thousand frames. Needs root either way.

#[path = "../tests/parser_diff/mod.rs"]
mod parser_diff;

use std::{fmt::Write as _, process::ExitCode, time::SystemTime};

use parser_diff::{
    frames::{Generator, LAN, lan},
    run::{BATCH, CLIENT_CAPACITY, Differential, Report},
};
use sensor::common::{Direction, Stat};

const COMMAND: &str = "cargo bench -p sensor --bench differential -- --write-docs";
const DEFAULT_FRAMES: u64 = 5_000_000;
const SMOKE_FRAMES: u64 = 3_000;
/// Frames per progress line.
const CHUNK: u64 = 250_000;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bench_mode = args.iter().any(|a| a == "--bench");
    let write_docs = args.iter().any(|a| a == "--write-docs");
    if !nix::unistd::geteuid().is_root() {
        if bench_mode || lab::privileged_required() {
            eprintln!(
                "differential bench: needs root (loads eBPF programs and runs BPF_PROG_TEST_RUN)"
            );
            return ExitCode::FAILURE;
        }
        eprintln!("\n*** SKIPPED: needs root (differential bench smoke test) ***\n");
        return ExitCode::SUCCESS;
    }
    match run(bench_mode, write_docs) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("differential bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn env_u64(name: &str) -> anyhow::Result<Option<u64>> {
    match std::env::var(name) {
        Ok(v) => Ok(Some(v.parse().map_err(|e| anyhow::anyhow!("{name}={v}: {e}"))?)),
        Err(_) => Ok(None),
    }
}

/// Whether the run found no mismatch.
fn run(bench_mode: bool, write_docs: bool) -> anyhow::Result<bool> {
    let frames = if bench_mode {
        env_u64("GWSENSOR_DIFF_FRAMES")?.unwrap_or(DEFAULT_FRAMES)
    } else {
        SMOKE_FRAMES
    };
    let seed = match env_u64("GWSENSOR_DIFF_SEED")? {
        Some(seed) => seed,
        None if bench_mode => {
            SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?.as_nanos() as u64
        }
        None => 1,
    };
    println!(
        "differential: {frames} frames, seed {seed} (GWSENSOR_DIFF_SEED={seed} repeats this run)"
    );
    let mut diff = Differential::new(&lan(), BATCH)?;
    let mut generator = Generator::new(seed);
    let mut done = 0;
    while done < frames {
        let n = CHUNK.min(frames - done);
        diff.run(&mut generator, n)?;
        done += n;
        let r = &diff.report;
        if bench_mode {
            println!(
                "  {done} frames, {:.0} frames/s, {} mismatches",
                r.frames as f64 / r.elapsed.as_secs_f64(),
                r.mismatches.len()
            );
        }
    }
    let r = &diff.report;
    for m in r.mismatches.iter().take(20) {
        eprintln!("MISMATCH {m}");
    }
    println!("{}\noutcomes: {:?}", summary(r, seed), r.outcomes());
    if write_docs {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/benchmarks.md");
        lab::docs::write_section(&path, "differential", &render_doc(r, seed))?;
        println!("wrote {}", path.canonicalize().unwrap_or(path).display());
    }
    Ok(r.mismatches.is_empty())
}

fn summary(r: &Report, seed: u64) -> String {
    format!(
        "**{} frames, {} mismatches** (seed {seed}): {} counted, {} not counted (each with the \
         predicted reason), {} refused by the test runner as predicted; {:.0} frames/s, test run, \
         prediction and comparison of the maps included ({:.1} s in all).",
        r.frames,
        r.mismatches.len(),
        r.counted(),
        r.frames - r.counted() - r.refused(),
        r.refused(),
        r.frames as f64 / r.elapsed.as_secs_f64(),
        r.elapsed.as_secs_f64()
    )
}

fn render_doc(r: &Report, seed: u64) -> String {
    let mut table = String::from("| Outcome | upload (XDP) | download (TC) |\n|---|---:|---:|\n");
    for stat in Stat::ALL {
        if stat == Stat::Seen {
            continue;
        }
        let _ = writeln!(
            table,
            "| `{}` | {} | {} |",
            stat.as_str(),
            r.stats[Direction::Upload.index()][stat as usize],
            r.stats[Direction::Download.index()][stat as usize]
        );
    }
    let _ = writeln!(
        table,
        "| refused by the test runner (program not run) | {} | {} |",
        r.refused[0], r.refused[1]
    );
    let _ = writeln!(table, "| **frames** | {} | {} |", r.frames_by_dir[0], r.frames_by_dir[1]);
    let mismatches = if r.mismatches.is_empty() {
        String::new()
    } else {
        let shown: Vec<String> =
            r.mismatches.iter().take(5).map(|m| format!("```\n{m}\n```")).collect();
        format!("\nThe first mismatches:\n\n{}\n", shown.join("\n"))
    };
    let date = lab::docs::now_utc();
    let lab::docs::Machine { cpus: nproc, kernel, .. } = lab::docs::Machine::current();
    format!(
        "## Differential parser test\n\
         \n\
         The kernel parser against a reference classifier, frame by frame (`{COMMAND}`).\n\
         \n\
         {summary}\n\
         {mismatches}\n\
         {table}\n\
         {agreed} of the frames were also parsed strictly by etherparse's whole-packet parser \
         (`SlicedPacket`), which gave the reference's outcome for every one of them.\n\
         \n\
         ### Machine and run\n\
         \n\
         - Date: {date}; {nproc} CPUs; kernel {kernel}\n\
         - Command: `{COMMAND}` (what `cargo xtask bench` runs); `GWSENSOR_DIFF_SEED={seed}` repeats \
           this run, `GWSENSOR_DIFF_FRAMES` sets its length.\n\
         - `cargo test -p sensor --test differential` runs a fixed-seed sample of 30,000 frames \
           (about a second); `cargo xtask test` runs it with the other tests.\n\
         \n\
         ### Method\n\
         \n\
         - Frames: valid frames of every kind (0–3 VLAN tags with 802.1Q, 802.1ad and the \
           pre-standard 0x9100 tag; IPv4 with options and fragments; IPv6 with chains of 0–12 \
           extension headers of the five kinds the parser walks, AH of every length including 0, \
           first and later fragments; TCP with options, UDP, ICMP, other protocols; ARP, LLDP, \
           802.3 and random EtherTypes; clients inside and outside the LAN prefixes \
           {lan_list}, group MACs, IPv4-mapped IPv6 sources; payloads of 0 to 9000 bytes), then \
           mutated: cut at a random offset or at every offset of the headers, bogus IHL, bogus \
           IPv4 total length or IPv6 payload length, bogus version, bogus TCP data offset, bit \
           flips and random bytes in the headers, random EtherType, runts (0–13 bytes), random \
           bytes; some frames come again (known flows and clients). Seeded (fastrand), so a run \
           can be repeated. Each frame goes through one program: XDP (upload) or TC (download), \
           mostly oriented the way its direction says.\n\
         - Reference: etherparse's header parsers with the documented parser rules on top \
           (sensor/tests/parser_diff/reference.rs, which says where the two differ and why): \
           the counted flow key and length, or the reason the frame is not counted. New clients \
           past the client slots (capacity {CLIENT_CAPACITY} here) are `client_table_full`.\n\
         - Comparison: frames run in batches of {BATCH}; after each batch the flow map, the client \
           totals and every stat slot must equal the prediction exactly, then every client is \
           retired with the agent's own `remove_clients`, so each batch starts empty. A batch \
           that differs is replayed frame by frame on a fresh instance to name the frames. Every \
           run must return XDP_PASS (XDP) or TC_ACT_UNSPEC (TC).\n\
         - The test runner itself: it refuses frames shorter than an Ethernet header (both \
           programs), and the skb runner (TC) refuses IPv4/IPv6 EtherTypes without the fixed IP \
           header and frames over {tc_max} bytes on this kernel; those are predicted and checked \
           (the program does not run, nothing changes). The XDP runner hands a frame over \
           {xdp_linear} bytes to the program as that many bytes of linear data plus fragments; \
           the program (not built for fragments) counts the linear part, which is what the \
           reference predicts for such frames. Attached to a real interface, generic XDP \
           linearises the frame first and native XDP refuses a program without fragment support \
           on a jumbo MTU, so the program always sees the whole frame there.\n",
        summary = summary(r, seed),
        agreed = r.etherparse_agreed,
        lan_list = LAN.join(", "),
        tc_max = r.tc_max,
        xdp_linear = r.xdp_linear,
    )
}
