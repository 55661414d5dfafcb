//! The smoke test (`cargo test --all-targets`): a few frames once, checked, no timing.

use anyhow::ensure;
use sensor::common::{Direction, Stat, names};

use crate::{
    FLOWS,
    mix::{check_all_counted, check_floor_keys, mix},
    programs::Programs,
};

pub(crate) fn smoke() -> anyhow::Result<()> {
    let p = Programs::load()?;
    let m = mix();
    for i in (0..FLOWS).step_by(FLOWS / 50) {
        p.xdp(names::XDP_PROGRAM, &m.up[i], 1)?;
        p.xdp(names::XDP_PASS_PROGRAM, &m.up[i], 1)?;
        p.xdp(names::FLOOR_PROGRAM, &m.up[i], 1)?;
        p.tc(&m.down[i], 1)?;
    }
    let snap = p.snapshot()?;
    ensure!(snap.flows.len() == 50, "{} flows, expected 50", snap.flows.len());
    check_all_counted(&snap)?;
    check_floor_keys(&p, &snap)?;
    ensure!(
        snap.stat(Stat::Counted, Direction::Upload) == 50
            && snap.stat(Stat::Counted, Direction::Download) == 50
    );
    println!(
        "datapath bench: smoke test passed (`cargo bench -p sensor --bench datapath` for figures)"
    );
    Ok(())
}
