//! The real agent on the same maps: `sensor run` in a network namespace, its figures and its
//! exported totals.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::ensure;
use lab::{
    Agent, Lab,
    agent::{Config as AgentConfig, Launch},
    prom::Scrape,
};

use crate::{
    AGENT_METRICS, AGENT_POLL, CLIENT_CAPACITY, Case, LAN, instance::Instance, traffic::client_mac,
};

pub(crate) struct AgentRun {
    /// Mean poll time from the agent's own histogram, over the polls while traffic went on.
    pub(crate) poll_mean: Duration,
    pub(crate) polls: u64,
    pub(crate) scrape: Duration,
    pub(crate) scrape_bytes: usize,
    pub(crate) hwm_kb: u64,
    pub(crate) rss_kb: u64,
    pub(crate) flows_tracked: f64,
}

/// One scrape of the agent, timed from outside.
fn scrape(agent: &Agent) -> anyhow::Result<(Duration, String, Scrape)> {
    let started = Instant::now();
    let text = agent.scrape_text()?;
    let took = started.elapsed();
    let parsed = Scrape::parse(&text)?;
    Ok((took, text, parsed))
}

fn poll_stats(s: &Scrape) -> anyhow::Result<(f64, f64)> {
    Ok((
        s.value("gwsensor_poll_duration_seconds_sum", &[])?,
        s.value("gwsensor_poll_duration_seconds_count", &[])?,
    ))
}

/// Starts `sensor run` on the pinned maps (attached to a veth in its own namespace),
/// keeps every flow growing through `inst` for `rounds` passes and at least three polls, then
/// reads the agent's figures and checks that it exported exactly what each client sent
/// (`sent`, which the passes add to).
pub(crate) fn run_agent(
    case: &Case,
    inst: &Instance,
    pins: &Path,
    rounds: usize,
    sent: &mut [u64],
) -> anyhow::Result<AgentRun> {
    let lab = Lab::new("gwb-scale")?;
    let ns = lab.add_netns("gw")?;
    // An interface to attach to (no traffic crosses it: the flows come from the test runs).
    lab::ip(&["-n", &ns, "link", "add", "lan0", "type", "veth", "peer", "name", "lan1"])?;
    lab::ip(&["-n", &ns, "link", "set", "lan0", "up"])?;
    lab::ip(&["-n", &ns, "link", "set", "lan1", "up"])?;
    let config = AgentConfig::new("lan0", pins, &lab.dir().join("state.json"))
        .lan_prefixes(&[LAN])
        .poll(AGENT_POLL)
        .metrics(AGENT_METRICS.parse()?)
        .with(&format!(
            "flow_capacity: {cap}\n\
             client_capacity: {CLIENT_CAPACITY}\n\
             state_save_interval: 2s\n\
             policy: {policy}\n",
            cap = case.capacity,
            // As deployed: the example policy is evaluated on every poll.
            policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/policy.yaml").display(),
        ));
    let launch = Launch::new(env!("CARGO_BIN_EXE_sensor"))
        .log("warn")
        .ready_within(Duration::from_secs(120));
    let agent = Agent::start(&lab, &ns, launch, &config)?;
    let run = measure_agent(case, inst, &agent, rounds, sent).map_err(|e| agent.with_log(e))?;
    agent.stop(Duration::from_secs(60))?;
    Ok(run)
}

fn measure_agent(
    case: &Case,
    inst: &Instance,
    agent: &Agent,
    rounds: usize,
    sent: &mut [u64],
) -> anyhow::Result<AgentRun> {
    let wait_polls = |at_least: f64| -> anyhow::Result<(f64, f64)> {
        poll_stats(&agent.wait_polls(at_least, Duration::from_secs(300))?)
    };
    // The first poll takes in the whole map as new; then measure polls under traffic.
    let (sum0, count0) = wait_polls(1.0)?;
    let mut passes = 0;
    loop {
        for (c, b) in inst.pass(case)?.into_iter().enumerate() {
            sent[c] += b;
        }
        passes += 1;
        let (_, _, s) = scrape(agent)?;
        if passes >= rounds && poll_stats(&s)?.1 >= count0 + 3.0 {
            break;
        }
    }
    // A poll after the last pass, so that the scrape shows everything sent.
    let (_, _, s) = scrape(agent)?;
    let (sum1, count1) = wait_polls(poll_stats(&s)?.1 + 2.0)?;
    // Counters show once saved (every 2 s here): three more polls of 1 s hold a save after
    // the last pass.
    agent.wait_polls(count1 + 3.0, Duration::from_secs(300))?;
    let (scrape_time, text, parsed) = scrape(agent)?;
    for (c, want) in sent.iter().enumerate() {
        let mac = sensor::types::labels::mac(&client_mac(c));
        let labels = [("mac", mac.as_str()), ("direction", "upload")];
        ensure!(
            parsed.matching("gwsensor_client_bytes_total", &labels).count() == 1,
            "no one upload series for client {mac}"
        );
        let got = parsed.sum("gwsensor_client_bytes_total", &labels);
        ensure!(
            got == *want as f64,
            "the agent exported {got} upload bytes for client {mac}, {want} were sent"
        );
    }
    let flows_tracked = parsed.value("gwsensor_flows_tracked", &[])?;
    Ok(AgentRun {
        poll_mean: Duration::from_secs_f64((sum1 - sum0) / (count1 - count0)),
        polls: (count1 - count0) as u64,
        scrape: scrape_time,
        scrape_bytes: text.len(),
        hwm_kb: agent.process().status_kb("VmHWM")?,
        rss_kb: agent.process().status_kb("VmRSS")?,
        flows_tracked,
    })
}
