//! The timed runs: known flows (repeated runs of a sample), and single runs of first packets
//! and known flows; the statistics the report takes of them.

use std::time::Duration;

use sensor::common::names;

use crate::{FLOWS, REPEAT, ROUNDS, SAMPLE, mix::Mix, programs::Programs};

fn ns(d: Duration) -> f64 {
    d.as_nanos() as f64
}

pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

pub(crate) fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

pub(crate) fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Per sample frame: median over the rounds of the kernel's mean ns/run.
pub(crate) struct Known {
    pub(crate) xdp: Vec<f64>,
    pub(crate) pass: Vec<f64>,
    /// The floor (`names::FLOOR_PROGRAM`), interleaved with the two above.
    pub(crate) floor: Vec<f64>,
    pub(crate) tc: Vec<f64>,
    /// Indices into the mix of the sample.
    pub(crate) sample: Vec<usize>,
}

pub(crate) fn measure_known(p: &Programs, m: &Mix) -> anyhow::Result<Known> {
    let sample: Vec<usize> =
        (0..SAMPLE).map(|k| k * FLOWS / SAMPLE + (k * 37) % (FLOWS / SAMPLE)).collect();
    let mut out =
        Known { xdp: vec![], pass: vec![], floor: vec![], tc: vec![], sample: sample.clone() };
    for &i in &sample {
        let (mut x, mut b, mut f, mut t) = (vec![], vec![], vec![], vec![]);
        for _ in 0..ROUNDS {
            b.push(ns(p.xdp(names::XDP_PASS_PROGRAM, &m.up[i], REPEAT)?));
            x.push(ns(p.xdp(names::XDP_PROGRAM, &m.up[i], REPEAT)?));
            f.push(ns(p.xdp(names::FLOOR_PROGRAM, &m.up[i], REPEAT)?));
            t.push(ns(p.tc(&m.down[i], REPEAT)?));
        }
        out.xdp.push(median(&mut x));
        out.pass.push(median(&mut b));
        out.floor.push(median(&mut f));
        out.tc.push(median(&mut t));
    }
    Ok(out)
}

/// Single runs (repeat 1), interleaved per new flow: its frame through the baseline, then
/// through the sensor (its first packet: inserts the flow); then a known flow not touched since
/// priming (its entries cold in the CPU caches), and that same frame again (entries hot). A
/// single run's time includes the kernel's timer reads, the same for all four.
pub(crate) struct Single {
    pub(crate) pass: Vec<f64>,
    pub(crate) new_flow: Vec<f64>,
    pub(crate) known_cold: Vec<f64>,
    pub(crate) known_hot: Vec<f64>,
}

pub(crate) fn measure_single(p: &Programs, m: &Mix) -> anyhow::Result<Single> {
    // Warm the code paths first (on the last 100 flows of the mix, which the known-flow single
    // runs below do not touch: (k * 4_999 + 5_000) % FLOWS for k < 2_000 never reaches them).
    for f in &m.up[FLOWS - 100..] {
        p.xdp(names::XDP_PASS_PROGRAM, f, 1)?;
        p.xdp(names::XDP_PROGRAM, f, 1)?;
    }
    let mut s = Single { pass: vec![], new_flow: vec![], known_cold: vec![], known_hot: vec![] };
    for (k, f) in m.new_up.iter().enumerate() {
        let known = &m.up[(k * 4_999 + 5_000) % FLOWS];
        s.pass.push(ns(p.xdp(names::XDP_PASS_PROGRAM, f, 1)?));
        s.new_flow.push(ns(p.xdp(names::XDP_PROGRAM, f, 1)?));
        s.known_cold.push(ns(p.xdp(names::XDP_PROGRAM, known, 1)?));
        s.known_hot.push(ns(p.xdp(names::XDP_PROGRAM, known, 1)?));
    }
    Ok(s)
}
