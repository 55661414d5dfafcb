//! Differential test of the kernel parser: a bounded, seeded sample of generated and mutated
//! frames (truncated at every offset, bogus IHL and lengths, VLAN stacks of 0–3 tags, IPv6
//! extension chains past the walk limit, runts, jumbo frames, bit flips) through the XDP and TC
//! programs (BPF_PROG_TEST_RUN) and through the reference classifier (`parser_diff::reference`,
//! etherparse plus the documented parser rules). Every frame must have the predicted flow key
//! and length, or the predicted reason for not being counted, and the programs must return
//! XDP_PASS / TC_ACT_UNSPEC whatever the frame. The full run (millions of frames) is
//! `cargo xtask bench` (benches/differential.rs).
//!
//! `GWSENSOR_DIFF_FRAMES` and `GWSENSOR_DIFF_SEED` change the sample. Needs root; skips loudly
//! otherwise, and fails under CI=true or GWSENSOR_TEST_REQUIRE_PRIVILEGED=1.

#[path = "parser_diff/mod.rs"]
mod parser_diff;

use parser_diff::{
    frames::{Generator, lan},
    run::{BATCH, Differential},
};
use sensor::common::{Direction, Stat};

const DEFAULT_FRAMES: u64 = 30_000;
const DEFAULT_SEED: u64 = 0x6077_5e45_0001;

fn privileged() -> bool {
    nix::unistd::geteuid().is_root()
        || lab::cannot_run(
            "differential parser test",
            "needs root (to load eBPF programs and run BPF_PROG_TEST_RUN)",
        )
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|e| panic!("{name}={v}: {e}")),
        Err(_) => default,
    }
}

#[test]
fn seeded_sample_matches_the_reference() {
    if !privileged() {
        return;
    }
    let frames = env_u64("GWSENSOR_DIFF_FRAMES", DEFAULT_FRAMES);
    let seed = env_u64("GWSENSOR_DIFF_SEED", DEFAULT_SEED);
    let mut diff = Differential::new(&lan(), BATCH).expect("loading the eBPF programs");
    diff.run(&mut Generator::new(seed), frames).expect("running the frames");
    let r = &diff.report;
    eprintln!(
        "differential: {} frames (seed {seed:#x}) in {:.1?}: {} counted, {} refused by the test runner, \
         {} checked against etherparse's own parse, {} mismatches; outcomes {:?}",
        r.frames,
        r.elapsed,
        r.counted(),
        r.refused(),
        r.etherparse_agreed,
        r.mismatches.len(),
        r.outcomes()
    );
    assert!(
        r.mismatches.is_empty(),
        "{} frames where the kernel and the reference differ (seed {seed:#x}); the first ones:\n{}",
        r.mismatches.len(),
        r.mismatches.iter().take(10).cloned().collect::<Vec<_>>().join("\n")
    );
    assert_eq!(r.frames, frames);
    // The sample must reach every outcome in both directions, or it proves less than it says.
    // (`flow_update_failed` cannot happen here: the flow map is an LRU that evicts instead.)
    for dir in Direction::ALL {
        for stat in Stat::ALL {
            if matches!(stat, Stat::Seen | Stat::FlowUpdateFailed) {
                continue;
            }
            assert!(
                r.stats[dir.index()][stat as usize] > 0,
                "no {} frame ended as {}: the generator no longer covers it",
                dir.as_str(),
                stat.as_str()
            );
        }
    }
    assert!(r.refused() > 0 && r.etherparse_agreed > frames / 10, "{r:?}");
}
