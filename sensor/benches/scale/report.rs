//! The bench mode: every case, the tables of figures and the "Scale limits" section of
//! docs/benchmarks.md.

use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::ensure;
use lab::docs::{Machine, now_utc};

use crate::{
    AGENT_POLL, CASES, CLIENT_CAPACITY, COMMAND, Case, ROUNDS, TARGET_POLL_RENDER_MS,
    TARGET_RSS_MB,
    case::{Figures, run_case},
};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us_per(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e6 / n.max(1) as f64
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

pub(crate) fn bench(
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
            "  read batch {:.1} ms, iterate {:.1} ms; poll {:.1} ms (read {:.1}, account {:.1}, publish {:.1}, view {:.1}, policy {:.1}), idle {:.1} ms; cpu: poll {:.1} ms, idle {:.1} ms; render {:.1} ms {} B{}",
            ms(f.batch_read),
            ms(f.iter_read),
            ms(f.poll.total),
            ms(f.poll.read),
            ms(f.poll.account),
            ms(f.poll.publish),
            ms(f.poll.view),
            ms(f.poll.policy),
            ms(f.idle_poll.total),
            ms(f.poll_cpu),
            ms(f.idle_cpu),
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
