//! The smoke test (`cargo test --all-targets`): one small case, every step, exact checks, no
//! timing.

use anyhow::{Context as _, ensure};

use crate::{SMOKE, case::run_case};

pub(crate) fn smoke() -> anyhow::Result<()> {
    let f = run_case(&SMOKE, false, true)?;
    ensure!(f.in_map == SMOKE.flows, "{} flows in the map, expected all {}", f.in_map, SMOKE.flows);
    ensure!(f.evictions == 0, "{} evictions in a map with room to spare", f.evictions);
    let agent = f.agent.context("no agent figures")?;
    ensure!(
        agent.flows_tracked == SMOKE.flows as f64,
        "the agent tracks {} flows, expected {}",
        agent.flows_tracked,
        SMOKE.flows
    );
    ensure!(agent.hwm_kb > 0 && agent.scrape_bytes > 0 && agent.polls >= 2);
    println!("scale bench: smoke test passed (`cargo bench -p sensor --bench scale` for figures)");
    Ok(())
}
