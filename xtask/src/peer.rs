//! `cargo xtask bench --peer`: the sensor beside Debian's pmacctd and darkstat. In the lab's
//! namespaces a generator writes a fixed number of frames (many clients to many remotes, mixed
//! sizes, IPv4 and IPv6) into the gateway's LAN veth at several offered rates; each rate runs
//! with no monitor, with a do-nothing XDP program, with the floor (the least XDP program that
//! counts the sensor's flow key), with the sensor (release build), with pmacctd and with darkstat
//! on that interface. For each run: frames sent, received by the interface, counted (checked
//! against what was sent), and the CPU each monitor used. The results replace the "Side by side
//! with pmacct and darkstat" section of docs/benchmarks.md.

mod agent;
mod blaster;
mod cpu;
mod darkstat;
mod floor;
mod frames;
mod pmacct;
mod report;
mod xdp_pass;

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use lab::{LanKind, Topology, TopologyBuilder};

use self::{
    agent::{Agent, BpfStats},
    blaster::Blaster,
    darkstat::Darkstat,
    floor::Floor,
    frames::Mix,
    pmacct::Pmacctd,
    report::{DarkstatRun, FloorRun, PmacctRun, Rate, RateResult, SensorRun, Wire, XdpPassRun},
    xdp_pass::XdpPass,
};
use crate::{
    apt::ensure_debian_packages,
    process::{report as step, workspace_root},
    sensor_build::{build_floor_example, build_sensor, release_binary},
    toolchain::ensure_toolchain,
};

const LABEL: &str = "peer";
/// Frames per run: ten seconds at the lowest rate.
const FRAMES_PER_RUN: u64 = 1_000_000;
const RATES: [Rate; 3] = [Rate::Paced(100_000), Rate::Paced(250_000), Rate::Max];
/// The tools the bench drives, and their Debian packages.
const TOOLS: &[(&str, &str)] =
    &[("pmacctd", "pmacct"), ("darkstat", "darkstat"), ("ip", "iproute2")];
/// The lab client whose veth carries the generator's frames (its own MAC is not used).
const GENERATOR_MAC: [u8; 6] = [0x02, 0x42, 0x77, 0x00, 0x00, 0x01];

pub fn run() -> Result<()> {
    let started = Instant::now();
    lab::check_privileged().context(
        "the peer bench needs root (it builds network namespaces, loads eBPF, runs pmacctd and darkstat)",
    )?;
    ensure_toolchain()?;
    ensure_debian_packages(TOOLS)?;
    build_sensor(true)?;
    let floor_binary = build_floor_example()?;
    lab::ensure_bpffs()?;
    let binary = release_binary();
    let stop = lab::interrupt_flag()?;

    let t = Instant::now();
    let topo = TopologyBuilder::new("gwpeer")
        .lan(LanKind::Veth)
        .client("generator", GENERATOR_MAC)
        .build()?;
    for prefix in frames::REMOTE_PREFIXES {
        let family = if prefix.contains(':') { "-6" } else { "-4" };
        lab::ip(&["-n", &topo.gateway.ns, family, "route", "add", "blackhole", prefix])?;
    }
    let mix = frames::mix(topo.gateway.lan_mac)?;
    let generator = &topo.clients[0];
    let blaster = Blaster::open(&generator.ns, &generator.ifname)?;
    let _stats = BpfStats::enable()?;
    step(
        LABEL,
        "lab",
        &format!(
            "{} (traffic {} → {}/{}; {} frames in the pool, {} flows)",
            topo.lab.tag(),
            generator.ifname,
            topo.gateway.ns,
            topo.gateway.lan_if,
            mix.frames.len(),
            mix.flows()
        ),
        t,
    );

    let bench = Bench {
        topo: &topo,
        blaster: &blaster,
        mix: &mix,
        binary: &binary,
        floor_binary: &floor_binary,
        stop: &stop,
    };
    let mut results = Vec::new();
    let mut xdp_mode = String::new();
    for (i, rate) in RATES.into_iter().enumerate() {
        let baseline = bench.baseline(rate)?;
        let xdp_pass = bench.xdp_pass(rate)?;
        let floor = bench.floor(rate)?;
        let sensor = bench.sensor(rate, i)?;
        xdp_mode.clone_from(&sensor.counted.xdp_mode);
        let pmacct = bench.pmacct(rate, i)?;
        let darkstat = bench.darkstat(rate)?;
        results.push(RateResult { rate, baseline, xdp_pass, floor, sensor, pmacct, darkstat });
    }
    drop(topo);

    let setup = report::Setup {
        date: lab::docs::now_utc(),
        machine: lab::docs::Machine::current(),
        pmacct_version: pmacct::version()?,
        darkstat_version: darkstat::version()?,
        frames_per_run: FRAMES_PER_RUN,
        clients: frames::CLIENTS,
        remotes: frames::REMOTES,
        flows: mix.flows(),
        mean_len: mix.mean_len(),
        xdp_mode,
        took: started.elapsed(),
    };
    let section = report::render(&results, &setup)?;
    println!("\n{section}");
    let doc_path = workspace_root().join("docs").join("benchmarks.md");
    write_section(&doc_path, &section)?;
    println!("[{LABEL}] results written to {}", doc_path.display());

    let inexact: Vec<String> =
        results.iter().filter(|r| !r.sensor.exact()).map(|r| r.rate.label()).collect();
    if !inexact.is_empty() {
        bail!(
            "the sensor did not count exactly the frames the interface received at: {}",
            inexact.join(", ")
        );
    }
    // The floor is only a floor if it did the counting: every frame, into the pool's flows.
    let floor_inexact: Vec<String> =
        results.iter().filter(|r| !r.floor.exact(mix.flows())).map(|r| r.rate.label()).collect();
    if !floor_inexact.is_empty() {
        bail!(
            "the floor program did not count every frame into the pool's {} flows at: {}",
            mix.flows(),
            floor_inexact.join(", ")
        );
    }
    Ok(())
}

/// Replaces (or adds) the peer section of the benchmarks document, leaving the rest alone.
fn write_section(path: &Path, section: &str) -> Result<()> {
    lab::docs::write_section(path, "peer", section)
}

struct Bench<'a> {
    topo: &'a Topology,
    blaster: &'a Blaster,
    mix: &'a Mix,
    binary: &'a PathBuf,
    floor_binary: &'a PathBuf,
    stop: &'a AtomicBool,
}

impl Bench<'_> {
    /// Sends the run's frames at `rate` and returns what happened on the wire.
    fn traffic(&self, rate: Rate) -> Result<Wire> {
        if self.stop.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        let (gw, lan) = (&self.topo.gateway.ns, &self.topo.gateway.lan_if);
        let generator = &self.topo.clients[0];
        let lan_before = cpu::link_counters(gw, lan)?;
        let peer_before = cpu::link_counters(&generator.ns, &generator.ifname)?;
        let softirq_before = cpu::ksoftirqd_cpu()?;
        let sent = self.blaster.send(&self.mix.frames, FRAMES_PER_RUN, rate.per_second())?;
        // The last frames may still be in a softirq queue.
        std::thread::sleep(Duration::from_millis(100));
        let wire = Wire {
            sent,
            lan: cpu::link_counters(gw, lan)?.since(&lan_before),
            peer_tx_dropped: cpu::link_counters(&generator.ns, &generator.ifname)?
                .since(&peer_before)
                .tx_dropped,
            ksoftirqd: cpu::ksoftirqd_cpu()?.saturating_sub(softirq_before),
        };
        if wire.lan.rx_packets > wire.sent.frames {
            bail!(
                "{} received {} frames but only {} were sent: something else is talking on the LAN",
                lan,
                wire.lan.rx_packets,
                wire.sent.frames
            );
        }
        Ok(wire)
    }

    fn say(&self, rate: Rate, run: &str, wire: &Wire, detail: &str, since: Instant) {
        step(
            LABEL,
            &format!("{} {run}", rate.label()),
            &format!(
                "sent {} at {:.0} pps, lan0 received {}{}{detail}",
                wire.sent.frames,
                wire.sent.rate(),
                wire.lan.rx_packets,
                if wire.peer_tx_dropped > 0 || wire.sent.stalls > 0 {
                    format!(
                        " (veth dropped {}, {} send calls refused and retried)",
                        wire.peer_tx_dropped, wire.sent.stalls
                    )
                } else {
                    String::new()
                },
            ),
            since,
        );
    }

    fn baseline(&self, rate: Rate) -> Result<Wire> {
        let t = Instant::now();
        let wire = self.traffic(rate)?;
        self.say(
            rate,
            "no monitor",
            &wire,
            &format!("; sending path {:.0} ns/frame", wire.sender_ns_per_frame()),
            t,
        );
        Ok(wire)
    }

    fn xdp_pass(&self, rate: Rate) -> Result<XdpPassRun> {
        let t = Instant::now();
        let prog = XdpPass::attach(&self.topo.gateway.ns, &self.topo.gateway.lan_if)?;
        let (before, _) = prog.run_time()?;
        let wire = self.traffic(rate)?;
        let (after, _) = prog.run_time()?;
        drop(prog);
        let run = XdpPassRun { wire, run_ns: after - before };
        self.say(
            rate,
            "do-nothing XDP",
            &run.wire,
            &format!(
                "; program {:.0} ns/frame, sending path {:.0} ns/frame",
                run.prog_ns_per_frame(),
                run.wire.sender_ns_per_frame()
            ),
            t,
        );
        Ok(run)
    }

    fn floor(&self, rate: Rate) -> Result<FloorRun> {
        let t = Instant::now();
        let floor = Floor::start(
            &self.topo.lab,
            &self.topo.gateway.ns,
            &self.topo.gateway.lan_if,
            self.floor_binary,
        )?;
        let (before, _) = floor.run_time()?;
        let wire = self.traffic(rate)?;
        let (after, _) = floor.run_time()?;
        let counted = floor.stop()?;
        let run = FloorRun { wire, run_ns: after - before, counted };
        self.say(
            rate,
            "floor",
            &run.wire,
            &format!(
                ", counted {} in {} flows; program {:.0} ns/frame, sending path {:.0} ns/frame",
                run.counted.packets,
                run.counted.flows,
                run.prog_ns_per_frame(),
                run.wire.sender_ns_per_frame()
            ),
            t,
        );
        Ok(run)
    }

    fn sensor(&self, rate: Rate, i: usize) -> Result<SensorRun> {
        let t = Instant::now();
        let agent = Agent::start(self.topo, self.binary, &format!("r{i}"))?;
        let polls_before = agent.counted()?.polls;
        let before = agent.cost()?;
        let wire = self.traffic(rate)?;
        let counted = agent.wait_counted(wire.lan.rx_packets, Duration::from_secs(10))?;
        let cost = agent.cost()?.since(&before);
        agent.stop()?;
        let per_client_exact = (wire.sent.frames == wire.lan.rx_packets).then(|| {
            let expected = self.mix.per_client(wire.sent.frames);
            expected.iter().enumerate().all(|(c, &n)| {
                let mac = lab::mac_text(&frames::client_mac(c));
                counted.per_mac.get(&mac).copied().unwrap_or(0) == n
            }) && counted.per_mac.len() == frames::CLIENTS
        });
        let run = SensorRun {
            wire,
            cost,
            polls: counted.polls - polls_before,
            counted,
            per_client_exact,
        };
        self.say(
            rate,
            "sensor",
            &run.wire,
            &format!(
                ", counted {}{}; XDP {} ({} runs), kernel programs {:.0} + agent {:.0} ns/frame ({} polls)",
                run.counted.upload_packets,
                match run.per_client_exact {
                    Some(true) => " (every client exact)",
                    Some(false) => " (PER-CLIENT COUNTS DIFFER)",
                    None => "",
                },
                run.counted.xdp_mode,
                run.cost.bpf_runs,
                run.bpf_ns_per_frame(),
                run.agent_ns_per_frame(),
                run.polls
            ),
            t,
        );
        Ok(run)
    }

    fn pmacct(&self, rate: Rate, i: usize) -> Result<PmacctRun> {
        let t = Instant::now();
        let pm = Pmacctd::start(
            &self.topo.lab,
            &self.topo.gateway.ns,
            &self.topo.gateway.lan_if,
            self.topo.lab.dir(),
            &format!("r{i}"),
        )?;
        let before = pm.cpu()?;
        let wire = self.traffic(rate)?;
        // libpcap hands a partly filled ring block to pmacctd only after its 1 s timeout, and
        // pmacctd may still be draining the ring: wait that long, then until its CPU time
        // stops growing.
        std::thread::sleep(Duration::from_millis(1500));
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut last = pm.cpu()?;
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let now = pm.cpu()?;
            if now == last || Instant::now() > deadline {
                break;
            }
            last = now;
        }
        let cpu = pm.cpu()?.saturating_sub(before);
        let counted = pm.stop()?;
        let run = PmacctRun { wire, cpu, counted };
        self.say(
            rate,
            "pmacctd",
            &run.wire,
            &format!(
                ", counted {} ({} aggregates), libpcap received {} and dropped {}; {:.0} ns/frame",
                run.counted.packets,
                run.counted.rows,
                run.counted.pcap.received,
                run.counted.pcap.dropped,
                run.ns_per_frame()
            ),
            t,
        );
        Ok(run)
    }

    fn darkstat(&self, rate: Rate) -> Result<DarkstatRun> {
        let t = Instant::now();
        let ds = Darkstat::start(&self.topo.lab, &self.topo.gateway.ns, &self.topo.gateway.lan_if)?;
        let totals_before = ds.totals()?;
        let before = ds.cpu()?;
        let wire = self.traffic(rate)?;
        // As for pmacctd: libpcap hands over a partly filled block after 1 s; then wait until
        // darkstat has seen every frame and its CPU time stops growing.
        std::thread::sleep(Duration::from_millis(1500));
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut last = ds.cpu()?;
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let now = ds.cpu()?;
            let seen = ds.totals()?.packets - totals_before.packets;
            if (now == last && seen >= wire.lan.rx_packets) || Instant::now() > deadline {
                break;
            }
            last = now;
        }
        let cpu = ds.cpu()?.saturating_sub(before);
        let totals = ds.totals()?;
        let out_bytes = ds.hosts()?;
        ds.stop()?;
        let per_host_exact = (wire.sent.frames == wire.lan.rx_packets).then(|| {
            self.mix
                .ip_bytes_per_client_address(wire.sent.frames)
                .iter()
                .all(|(addr, &bytes)| out_bytes.get(addr) == Some(&bytes))
        });
        let run = DarkstatRun {
            wire,
            cpu,
            counted: darkstat::Counted {
                packets: totals.packets - totals_before.packets,
                dropped: totals.dropped - totals_before.dropped,
                out_bytes,
            },
            per_host_exact,
        };
        self.say(
            rate,
            "darkstat",
            &run.wire,
            &format!(
                ", counted {}{} ({} hosts), libpcap dropped {}; {:.0} ns/frame",
                run.counted.packets,
                match run.per_host_exact {
                    Some(true) => " (every client address's bytes exact)",
                    Some(false) => " (PER-HOST BYTES DIFFER)",
                    None => "",
                },
                run.counted.out_bytes.len(),
                run.counted.dropped,
                run.ns_per_frame()
            ),
            t,
        );
        Ok(run)
    }
}
