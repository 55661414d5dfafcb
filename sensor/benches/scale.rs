//! Scale limits of the agent: a full flow map, read and accounted every poll.
//!
//! `cargo bench -p sensor --bench scale [-- --write-docs]` (what `cargo xtask bench` runs):
//! for each case (N flows over M clients), creates the real maps through the loader with the
//! flow capacity the agent would use (65,536 up to that many flows, 1,000,000 beyond), fills
//! them by running the real XDP program on one frame per flow (BPF_PROG_TEST_RUN), then
//!
//! - in this process: times reading the flow map with batch lookups and with key-by-key
//!   iteration (and checks both read the same), the agent's whole poll (`Pipeline::poll`:
//!   read → accounting → metrics → API view) after every flow grew, and rendering /metrics;
//! - with the real agent (`sensor run` in a network namespace, on the same pinned maps, with
//!   traffic going on): its mean poll time from its own histogram, a scrape's time and size,
//!   and its peak RSS (VmHWM).
//!
//! With `--write-docs` it rewrites the "Scale limits" section of docs/benchmarks.md.
//!
//! Run by `cargo test --all-targets` (no `--bench` argument) it is a smoke test: one small case,
//! every step, exact checks, no timing. Needs root (BPF, network namespaces) either way.

use std::{
    fmt::Write as _,
    path::Path,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use aya::{
    Ebpf,
    programs::{TestRun, TestRunOptions, Xdp},
};
use etherparse::PacketBuilder;
use ipnet::IpNet;
use lab::{
    Agent, Lab,
    agent::{Config as AgentConfig, Launch},
    docs::{Machine, now_utc},
    prom::Scrape,
};
use sensor::{
    accounting::Accounting,
    agent,
    agent::pipeline::{Pipeline, PollTimings},
    common::{Direction, names},
    config::Config,
    enrich::Enricher,
    export::metrics::Metrics,
    export::server::SharedView,
    kernel::collector::{KernelMaps, ReadMethod, Snapshot},
    kernel::loader::{LoadOptions, load},
    policy::{
        Policy,
        eval::{EvalState, Evaluator},
    },
};

const XDP_PASS: u32 = 2;
const LAN: &str = "10.0.0.0/8";
const GW_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0xfe];
const CLIENT_CAPACITY: u32 = 4_096;
const COMMAND: &str = "cargo bench -p sensor --bench scale -- --write-docs";
/// Polls timed per case after every flow grew (the median is kept).
const ROUNDS: usize = 3;
/// The targets of the issue, on this machine.
const TARGET_POLL_RENDER_MS: f64 = 100.0;
const TARGET_RSS_MB: f64 = 64.0;
/// Where the agent under test serves /metrics, inside its own namespace.
const AGENT_METRICS: &str = "127.0.0.1:9979";
const AGENT_POLL: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug)]
struct Case {
    flows: usize,
    clients: usize,
    capacity: u32,
}

/// N grows at M = 256; M varies at N = 65,536 (the default capacity).
const CASES: [Case; 7] = [
    Case { flows: 4_096, clients: 256, capacity: 65_536 },
    Case { flows: 16_384, clients: 256, capacity: 65_536 },
    Case { flows: 65_536, clients: 16, capacity: 65_536 },
    Case { flows: 65_536, clients: 256, capacity: 65_536 },
    Case { flows: 65_536, clients: 4_096, capacity: 65_536 },
    Case { flows: 262_144, clients: 256, capacity: 1_000_000 },
    Case { flows: 1_000_000, clients: 256, capacity: 1_000_000 },
];
const SMOKE: Case = Case { flows: 2_000, clients: 16, capacity: 4_096 };

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bench_mode = args.iter().any(|a| a == "--bench");
    let write_docs = args.iter().any(|a| a == "--write-docs");
    let only: Option<usize> =
        args.iter().find_map(|a| a.strip_prefix("--flows=")).and_then(|n| n.parse().ok());
    let no_agent = args.iter().any(|a| a == "--no-agent");
    // `--flows=N --clients=M`: one case of your own (exploring; not written to the docs).
    let clients: Option<usize> =
        args.iter().find_map(|a| a.strip_prefix("--clients=")).and_then(|n| n.parse().ok());
    if !lab::lab_tests_can_run("scale bench", &[]) {
        // Skipped outside CI (loudly); lab_tests_can_run fails by itself where it must run.
        return if bench_mode { ExitCode::FAILURE } else { ExitCode::SUCCESS };
    }
    let result = if bench_mode { bench(write_docs, only, clients, no_agent) } else { smoke() };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scale bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The flows

fn client_mac(c: usize) -> [u8; 6] {
    [0x02, 0x00, 0x00, 0x01, (c >> 8) as u8, c as u8]
}

fn client_ip(c: usize) -> [u8; 4] {
    [10, 1, (c >> 8) as u8, c as u8]
}

/// Flow `i` of `case`: client i mod M, its (i / M)-th remote (distinct per client).
fn flow(case: &Case, i: usize) -> (usize, [u8; 4], u16) {
    let (c, j) = (i % case.clients, i / case.clients);
    let remote = [23 + (j >> 16) as u8, (j >> 8) as u8, j as u8, 1 + (c % 250) as u8];
    let port = [443, 53, 123, 3478][j % 4];
    (c, remote, port)
}

/// Payload length of flow `i`'s frames: they differ, so sums catch a mix-up.
fn payload_len(i: usize) -> usize {
    18 + (i * 7) % 1400
}

/// The upload frame of flow `i` (UDP over IPv4: UDP flows are attributed at their first poll;
/// a TCP flow without a name may wait up to 2 s for its ClientHello).
fn frame(case: &Case, i: usize, out: &mut Vec<u8>) {
    let (c, remote, port) = flow(case, i);
    out.clear();
    let b = PacketBuilder::ethernet2(client_mac(c), GW_MAC)
        .ipv4(client_ip(c), remote, 64)
        .udp(40_000, port);
    let payload = [0x5a; 1500];
    b.write(out, &payload[..payload_len(i)]).expect("building a frame");
}

fn frame_len(i: usize) -> u64 {
    (14 + 20 + 8 + payload_len(i)) as u64
}

// ---------------------------------------------------------------------------------------------
// The programs and the agent's pipeline, on pinned maps

struct Instance {
    ebpf: Ebpf,
    pipeline: Pipeline,
}

fn load_instance(case: &Case, pins: &Path) -> anyhow::Result<Instance> {
    let prefixes: Vec<IpNet> = vec![LAN.parse()?];
    let (mut ebpf, caps) = load(&LoadOptions {
        lan_prefixes: &prefixes,
        flow_capacity: case.capacity,
        client_capacity: CLIENT_CAPACITY,
        pin_dir: Some(pins),
        kernel_btf: false,
    })?;
    ensure!(
        caps.flows == case.capacity,
        "flow map of {} entries, wanted {}",
        caps.flows,
        case.capacity
    );
    let prog: &mut Xdp =
        ebpf.program_mut(names::XDP_PROGRAM).context("XDP program missing")?.try_into()?;
    prog.load().context("verifying the XDP program")?;
    let maps = KernelMaps::take(&mut ebpf)?;
    let config = Config::parse("interface: lo\n", Path::new("scale-bench.yaml"))?;
    let (enricher, _warnings) =
        Enricher::new(&config.inventory, &config.geoip, &config.names, config.destinations.level)?;
    let (_, events) = tokio::sync::mpsc::channel(1);
    let pipeline = Pipeline {
        maps,
        accounting: Accounting::default(),
        enricher,
        params: agent::params(&config),
        metrics: Arc::new(Metrics::new()?),
        view: SharedView::default(),
        events,
        // The example policy: its evaluation is part of every poll.
        policy: Evaluator::new(
            Policy::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/policy.yaml"))
                .map_err(|e| anyhow::anyhow!("{e}"))?,
            EvalState::default(),
            config.external_url(),
            config.alerting.resolved_retention,
        ),
        timings: PollTimings::default(),
    };
    Ok(Instance { ebpf, pipeline })
}

impl Instance {
    /// One frame of every flow through the real XDP program: fills the map, or makes every
    /// flow grow. Returns the bytes sent per client.
    fn pass(&self, case: &Case) -> anyhow::Result<Vec<u64>> {
        let prog: &Xdp =
            self.ebpf.program(names::XDP_PROGRAM).context("program missing")?.try_into()?;
        let mut buf = Vec::with_capacity(1600);
        let mut bytes = vec![0u64; case.clients];
        for i in 0..case.flows {
            frame(case, i, &mut buf);
            let r = prog.test_run(TestRunOptions {
                data_in: Some(&buf),
                repeat: 1,
                ..Default::default()
            })?;
            ensure!(r.return_value == XDP_PASS, "XDP returned {}", r.return_value);
            bytes[i % case.clients] += frame_len(i);
        }
        Ok(bytes)
    }

    fn maps(&self) -> &KernelMaps {
        &self.pipeline.maps
    }
}

/// Flows in the map now (the view lists each once).
fn by_snapshot_len(inst: &Instance) -> anyhow::Result<usize> {
    Ok(inst.maps().read()?.flows.len())
}

/// Times one full read of the maps with `method`.
fn timed_read(maps: &KernelMaps, method: ReadMethod) -> anyhow::Result<(Duration, Snapshot)> {
    maps.set_read_method(method);
    let started = Instant::now();
    let snap = maps.read()?;
    let took = started.elapsed();
    maps.set_read_method(ReadMethod::Batch);
    Ok((took, snap))
}

// ---------------------------------------------------------------------------------------------
// The real agent on the same maps

struct AgentRun {
    /// Mean poll time from the agent's own histogram, over the polls while traffic went on.
    poll_mean: Duration,
    polls: u64,
    scrape: Duration,
    scrape_bytes: usize,
    hwm_kb: u64,
    rss_kb: u64,
    flows_tracked: f64,
}

fn status_kb(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim_start_matches(':').trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
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
fn run_agent(
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
        hwm_kb: status_kb(agent.process().pid(), "VmHWM")?,
        rss_kb: status_kb(agent.process().pid(), "VmRSS")?,
        flows_tracked,
    })
}

// ---------------------------------------------------------------------------------------------
// One case

struct Figures {
    case: Case,
    in_map: usize,
    batch_read: Duration,
    iter_read: Duration,
    first_poll: PollTimings,
    poll: PollTimings,
    idle_poll: PollTimings,
    render: Duration,
    render_bytes: usize,
    api_json: Duration,
    api_bytes: usize,
    evictions: u64,
    agent: Option<AgentRun>,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn run_case(case: &Case, timed: bool, with_agent: bool) -> anyhow::Result<Figures> {
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
    let (mut renders, mut render_bytes) = (Vec::new(), 0);
    for _ in 0..if timed { ROUNDS } else { 1 } {
        for (c, b) in inst.pass(case)?.into_iter().enumerate() {
            sent[c] += b;
        }
        inst.pipeline.poll()?;
        polls.push(inst.pipeline.timings);
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
    inst.pipeline.poll()?;
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
        render: median(renders),
        render_bytes,
        api_json,
        api_bytes,
        evictions: inst.pipeline.accounting.flow_evictions,
        agent,
    })
}

// ---------------------------------------------------------------------------------------------
// Smoke test (cargo test --all-targets)

fn smoke() -> anyhow::Result<()> {
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

// ---------------------------------------------------------------------------------------------
// Report

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us_per(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e6 / n.max(1) as f64
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn bench(
    write_docs: bool,
    only: Option<usize>,
    clients: Option<usize>,
    no_agent: bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut all = Vec::new();
    let custom = clients.map(|clients| {
        let flows = only.unwrap_or(65_536);
        vec![Case { flows, clients, capacity: if flows <= 65_536 { 65_536 } else { 1_000_000 } }]
    });
    let cases = custom.unwrap_or_else(|| {
        CASES.iter().copied().filter(|c| only.is_none_or(|n| n == c.flows)).collect()
    });
    for case in &cases {
        eprintln!(
            "scale: {} flows over {} clients (capacity {})",
            case.flows, case.clients, case.capacity
        );
        let f = run_case(case, true, !no_agent)?;
        eprintln!(
            "  read batch {:.1} ms, iterate {:.1} ms; poll {:.1} ms (read {:.1}, account {:.1}, publish {:.1}, view {:.1}, policy {:.1}), idle {:.1} ms; render {:.1} ms {} B{}",
            ms(f.batch_read),
            ms(f.iter_read),
            ms(f.poll.total),
            ms(f.poll.read),
            ms(f.poll.account),
            ms(f.poll.publish),
            ms(f.poll.view),
            ms(f.poll.policy),
            ms(f.idle_poll.total),
            ms(f.render),
            f.render_bytes,
            f.agent.as_ref().map_or(String::new(), |a| format!(
                "; agent poll {:.1} ms, HWM {:.1} MB",
                ms(a.poll_mean),
                mb(a.hwm_kb)
            )),
        );
        all.push(f);
    }
    let (reads, polls, agents, verdict) = tables(&all)?;
    println!("\n{reads}\n{polls}\n{agents}\n{verdict}");
    println!(
        "machine: {}; {}; took {:.0?}",
        Machine::current().summary(),
        now_utc(),
        started.elapsed()
    );
    if write_docs {
        ensure!(
            only.is_none() && clients.is_none() && !no_agent,
            "--write-docs needs every case, with the agent"
        );
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/benchmarks.md");
        // Its own section only: the other benchmarks of `cargo xtask bench` write theirs.
        lab::docs::write_section(
            &path,
            "scale",
            &render_section(&reads, &polls, &agents, &verdict),
        )?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn tables(all: &[Figures]) -> anyhow::Result<(String, String, String, String)> {
    let mut reads = String::new();
    writeln!(
        reads,
        "| flows (capacity) | clients | in map | batch read ms | µs/flow | iteration ms | µs/flow | iteration / batch |"
    )?;
    writeln!(reads, "|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    let mut polls = String::new();
    writeln!(
        polls,
        "| flows | clients | poll ms | read | accounting | metrics | API view | policy | µs/flow | first poll ms | idle poll ms | /metrics render ms | /metrics bytes | poll + render ms | API flows JSON ms (bytes) |"
    )?;
    writeln!(
        polls,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )?;
    let mut agents = String::new();
    writeln!(
        agents,
        "| flows | clients | agent poll ms (mean of n) | scrape ms | scrape bytes | peak RSS (VmHWM) MB | RSS MB | KB/flow over the 4,096-flow case |"
    )?;
    writeln!(agents, "|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    let base_hwm =
        all.iter().find(|f| f.case.flows == 4_096).and_then(|f| f.agent.as_ref()).map(|a| a.hwm_kb);
    for f in all {
        let c = &f.case;
        writeln!(
            reads,
            "| {} ({}) | {} | {} | {:.1} | {:.2} | {:.1} | {:.2} | {:.1}× |",
            c.flows,
            c.capacity,
            c.clients,
            f.in_map,
            ms(f.batch_read),
            us_per(f.batch_read, f.in_map),
            ms(f.iter_read),
            us_per(f.iter_read, f.in_map),
            f.iter_read.as_secs_f64() / f.batch_read.as_secs_f64()
        )?;
        let p = &f.poll;
        writeln!(
            polls,
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {:.1} | {:.1} | {:.1} | {} | {:.1} | {:.0} ({}) |",
            f.in_map,
            c.clients,
            ms(p.total),
            ms(p.read),
            ms(p.account),
            ms(p.publish),
            ms(p.view),
            ms(p.policy),
            us_per(p.total, f.in_map),
            ms(f.first_poll.total),
            ms(f.idle_poll.total),
            ms(f.render),
            f.render_bytes,
            ms(p.total + f.render),
            ms(f.api_json),
            f.api_bytes
        )?;
        if let Some(a) = &f.agent {
            let per_flow = base_hwm.filter(|_| c.flows > 4_096).map_or("–".to_string(), |b| {
                format!("{:.2}", (a.hwm_kb as f64 - b as f64) / (f.in_map as f64 - 4_096.0))
            });
            writeln!(
                agents,
                "| {} | {} | {:.1} (n={}) | {:.1} | {} | {:.1} | {:.1} | {} |",
                a.flows_tracked,
                c.clients,
                ms(a.poll_mean),
                a.polls,
                ms(a.scrape),
                a.scrape_bytes,
                mb(a.hwm_kb),
                mb(a.rss_kb),
                per_flow
            )?;
        }
    }
    let mut verdict = String::new();
    for f in all.iter().filter(|f| f.case.flows == 65_536) {
        let poll_render = ms(f.poll.total + f.render);
        let rss = f.agent.as_ref().map(|a| mb(a.hwm_kb));
        writeln!(
            verdict,
            "- 65,536 flows, {} clients: poll + render {poll_render:.1} ms (target < {TARGET_POLL_RENDER_MS:.0} ms: **{}**); agent peak RSS {} (target < {TARGET_RSS_MB:.0} MB: **{}**).",
            f.case.clients,
            if poll_render < TARGET_POLL_RENDER_MS { "met" } else { "NOT met" },
            rss.map_or("not measured".to_string(), |r| format!("{r:.1} MB")),
            match rss {
                Some(r) if r < TARGET_RSS_MB => "met",
                Some(_) => "NOT met",
                None => "not measured",
            }
        )?;
    }
    if let Some(f) = all.iter().find(|f| f.case.flows == 1_000_000) {
        writeln!(
            verdict,
            "- 1,000,000 flows: no failure; {} flows in the map, poll {:.0} ms ({:.2} µs/flow), agent peak RSS {}.",
            f.in_map,
            ms(f.poll.total),
            us_per(f.poll.total, f.in_map),
            f.agent
                .as_ref()
                .map_or("not measured".to_string(), |a| format!("{:.0} MB", mb(a.hwm_kb)))
        )?;
    }
    Ok((reads, polls, agents, verdict))
}

fn render_section(reads: &str, polls: &str, agents: &str, verdict: &str) -> String {
    let date = now_utc();
    let m = Machine::current();
    let (machine, load) = (m.summary(), m.load);
    format!(
        "## Scale limits of the agent\n\
         \n\
         <!-- Generated by `{COMMAND}` (run by `cargo xtask bench`); do not edit by hand. -->\n\
         \n\
         What a full flow map costs the agent each poll, and its memory.\n\
         \n\
         {verdict}\n\
         ### Reading the flow map\n\
         \n\
         {reads}\n\
         ### One poll after every flow grew (in the benchmark process)\n\
         \n\
         {polls}\n\
         ### The real agent on the same maps, with traffic going on\n\
         \n\
         {agents}\n\
         ### Machine and run\n\
         \n\
         - Date: {date}; machine: {machine}; load average at the end: {load}\n\
         - Command: `{COMMAND}` (what `cargo xtask bench` runs)\n\
         \n\
         One run on a small shared machine: compare figures within the run. The tests never \
         assert timings.\n\
         \n\
         ### Method\n\
         \n\
         - Each case creates the real maps through the loader (`flow_capacity` 65,536 up to \
           65,536 flows, 1,000,000 beyond; `client_capacity` {CLIENT_CAPACITY}), pinned, and fills \
           them by running the real XDP program once per flow (`BPF_PROG_TEST_RUN`): UDP over \
           IPv4, client i mod M, a distinct remote per flow of a client, remote ports 443, 53, 123 \
           and 3478 in turn, frame sizes 60–1,460 bytes. At the capacity the LRU evicts a few flows before the map is full (\"in map\").\n\
         - Reading: `KernelMaps::read` (the flows, sorted by key; client slots and totals; stats) with \
           `BPF_MAP_LOOKUP_BATCH` and with `get_next_key` + `lookup` per flow (the fallback for \
           kernels before 5.6), on the same map; the run checks both read the same. Median of 3 \
           (1 above 100,000 flows).\n\
         - Poll: `Pipeline::poll`, what the agent runs every `poll_interval` (read → accounting \
           → API view → metrics families → policy), after one more frame of every flow went through the \
           program, so every flow has a delta (the worst case); median of {ROUNDS}, with its \
           stages. \"First poll\" is the one that finds the whole map new; \"idle poll\" one with \
           no traffic since the last (the flows are in the map, none grew). /metrics render is \
           what a scrape costs: `Metrics::exposition`, the health metrics and the traffic text \
           written chunk by chunk from the poll's families. The run checks that every client's \
           exported upload bytes equal what was sent, exactly, whatever the LRU evicted. The \
           default config: 20 remote and 20 destination series per client, 10,000 of each at \
           most, destinations by domain (no names known here: by address), and the example \
           policy (deploy/policy.yaml). Its DnsBypass rule fires for every flow to port 53, a \
           quarter of them: 16,384 alerts firing at 65,536 flows, an alert storm that the policy \
           and memory figures include.\n\
         - Agent: `sensor run` (release build), attached to a veth in its own network \
           namespace, on the pinned maps, with the example policy, `poll_interval` {poll} s, state \
           saved every 2 s. While \
           passes of traffic make every flow grow, its mean poll time comes from its own \
           `gwsensor_poll_duration_seconds` (sum / count over the polls after the first); a \
           scrape of /metrics over HTTP is timed from outside; peak RSS is the agent's `VmHWM` \
           (its whole life: startup, the first poll of a full map, state saves, scrapes). \
           The API (`/api/v1/flows`) is not requested there: its JSON for every flow is built \
           per request (timed above in the benchmark process).\n\
         - Where the memory goes, per flow (the worst case: every flow has a remote and a \
           destination of its own, no names are known so destinations are addresses, and every \
           flow grows every poll): two lists of 96 bytes while a poll compares its read with the \
           last one, then one; the flow's remote, a 12-byte entry in its client's table (hash \
           tables between half and seven eighths full: 38 to 66 bytes); its destination, interned \
           once for all clients (56 bytes and its address text) with a 4-byte id in its client's \
           table; a 40-byte gain record for the policy; 12 bytes of API view (two views while a poll \
           builds the next); and what the \
           example policy learns (an 8-byte hash per new destination) or tracks (a series of \
           about 250 bytes for each firing DnsBypass alert: a quarter of the flows here). At \
           home, flows share destinations (a domain per service) and most clients have tens to \
           hundreds of flows. The rest is the agent itself (about 16 MB resident; its start, \
           which parses the kernel's BTF, peaks near 27 MB: that start is the whole peak of the \
           4,096- and 16,384-flow cases, hence a growth per flow near zero between them) and, \
           with many clients, the metrics families (each client's and series' labels once, \
           counters as numbers: about 2.6 MB at 4,096 clients, bounded by `series_budget`; two \
           while a poll replaces them). The \
           /metrics text itself (3.4 MB at 256 clients, 11 MB at 4,096) is never whole in \
           memory: a scrape writes it 64 KiB at a time as it sends it. The agent fixes glibc's mmap threshold \
           (docs/design.md): without it, the same 65,536-flow, 16-client case peaked 7 MB higher \
           in one run.",
        poll = AGENT_POLL.as_secs(),
    )
}
