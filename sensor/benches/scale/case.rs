//! One case: fill the maps, time the reads, the polls and a /metrics render in this process,
//! check the totals, then run the real agent on the same maps.

use std::time::{Duration, Instant};

use anyhow::ensure;
use sensor::{
    agent::pipeline::PollTimings,
    common::Direction,
    kernel::collector::{ReadMethod, Snapshot},
};

use crate::{
    Case, ROUNDS,
    agent_run::{AgentRun, run_agent},
    instance::{by_snapshot_len, load_instance, timed_read},
    traffic::client_mac,
};

pub(crate) struct Figures {
    pub(crate) case: Case,
    pub(crate) in_map: usize,
    pub(crate) batch_read: Duration,
    pub(crate) iter_read: Duration,
    pub(crate) first_poll: PollTimings,
    pub(crate) poll: PollTimings,
    pub(crate) idle_poll: PollTimings,
    /// CPU time of this thread in `poll` and `idle_poll` (on a shared machine, less noisy
    /// than their wall times; printed while exploring, not written to the docs).
    pub(crate) poll_cpu: Duration,
    pub(crate) idle_cpu: Duration,
    pub(crate) render: Duration,
    pub(crate) render_bytes: usize,
    pub(crate) api_json: Duration,
    pub(crate) api_bytes: usize,
    pub(crate) evictions: u64,
    pub(crate) agent: Option<AgentRun>,
}

/// CPU time this thread used so far (the poll runs on it: `block_in_place` outside a runtime
/// runs in place).
fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map_or(Duration::ZERO, Duration::from)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub(crate) fn run_case(case: &Case, timed: bool, with_agent: bool) -> anyhow::Result<Figures> {
    let pins = lab::PinDir::new("bench", &format!("scale-{}-{}", case.flows, case.clients));
    let mut inst = load_instance(case, pins.path())?;
    let mut sent = inst.pass(case)?;

    // Batch and iteration read the same; time both.
    let runs = if timed && case.flows <= 100_000 { 3 } else { 1 };
    let (mut batch, mut iter) = (Vec::new(), Vec::new());
    let (mut by_batch, mut by_iter) = (Snapshot::default(), Snapshot::default());
    for _ in 0..runs {
        let (t, s) = timed_read(inst.maps(), ReadMethod::Batch)?;
        batch.push(t);
        by_batch = s;
        let (t, s) = timed_read(inst.maps(), ReadMethod::Iterate)?;
        iter.push(t);
        by_iter = s;
    }
    ensure!(
        by_batch.flows == by_iter.flows,
        "batch read {} flows, iteration {}: they differ",
        by_batch.flows.len(),
        by_iter.flows.len()
    );
    ensure!(
        by_batch.clients == by_iter.clients,
        "batch and iteration read different client totals"
    );
    let in_map = by_batch.flows.len();
    ensure!(in_map <= case.capacity as usize, "{in_map} flows in a map of {}", case.capacity);
    ensure!(
        in_map * 10 >= case.flows.min(case.capacity as usize) * 9,
        "only {in_map} of {} flows in the map",
        case.flows
    );
    ensure!(
        by_batch.clients.len() == case.clients,
        "{} clients in the map, expected {}",
        by_batch.clients.len(),
        case.clients
    );
    drop((by_batch, by_iter));

    inst.pipeline.poll()?;
    let first_poll = inst.pipeline.timings;
    let mut polls = Vec::new();
    let mut cpus = Vec::new();
    let (mut renders, mut render_bytes) = (Vec::new(), 0);
    // SCALE_ROUNDS=n: more polls, for a steadier median or a profile.
    let rounds = std::env::var("SCALE_ROUNDS").ok().and_then(|n| n.parse().ok()).unwrap_or(ROUNDS);
    for _ in 0..if timed { rounds } else { 1 } {
        for (c, b) in inst.pass(case)?.into_iter().enumerate() {
            sent[c] += b;
        }
        let cpu = thread_cpu();
        inst.pipeline.poll()?;
        cpus.push(thread_cpu() - cpu);
        polls.push(inst.pipeline.timings);
        // The agent releases the families once the state is saved (its own cost, not timed here).
        inst.pipeline.metrics.release(&inst.pipeline.metrics.counters());
        // What a scrape costs: the text written chunk by chunk (a scrape sends each on).
        let started = Instant::now();
        let (health, traffic) = inst.pipeline.metrics.exposition()?;
        render_bytes = health.len() + traffic.map(|chunk| chunk.len()).sum::<usize>();
        renders.push(started.elapsed());
    }
    // Client totals are exact whatever the flow map evicted.
    for (c, want) in sent.iter().enumerate() {
        let got = inst
            .pipeline
            .accounting
            .clients
            .get(&client_mac(c))
            .map(|a| a.totals.bytes(Direction::Upload));
        ensure!(got == Some(*want), "client {c}: {got:?} bytes exported, {want} sent");
    }
    polls.sort_by_key(|t| t.total);
    let poll = polls[polls.len() / 2];
    // No traffic since the last poll: what a map of idle flows costs.
    let cpu = thread_cpu();
    inst.pipeline.poll()?;
    let idle_cpu = thread_cpu() - cpu;
    let idle_poll = inst.pipeline.timings;

    let view = inst
        .pipeline
        .view
        .read()
        .map(|v| v.clone())
        .map_err(|_| anyhow::anyhow!("view lock poisoned"))?;
    let started = Instant::now();
    let api = serde_json::to_vec(&view.flows_of(None))?;
    let api_json = started.elapsed();
    ensure!(
        view.flow_count() == by_snapshot_len(&inst)?,
        "API view has {} flows",
        view.flow_count()
    );
    let api_bytes = api.len();
    drop((api, view));

    let agent = if with_agent {
        Some(run_agent(case, &inst, pins.path(), if timed { ROUNDS } else { 1 }, &mut sent)?)
    } else {
        None
    };
    Ok(Figures {
        case: *case,
        in_map,
        batch_read: median(batch),
        iter_read: median(iter),
        first_poll,
        poll,
        idle_poll,
        poll_cpu: median(cpus),
        idle_cpu,
        render: median(renders),
        render_bytes,
        api_json,
        api_bytes,
        evictions: inst.pipeline.accounting.flow_evictions,
        agent,
    })
}
