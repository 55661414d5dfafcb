//! The sensor as the bench runs it: the real release binary in the gateway namespace, with a
//! fresh pin directory and state file per run, its cost (the kernel programs' run time from BPF
//! statistics plus the agent process's CPU) and what it counted (from /metrics).

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use lab::{
    PinDir, Topology,
    agent::{Config, Launch},
};

use super::cpu;

/// The agent's default poll interval, which the bench leaves as it is: the agent's work is per
/// poll (every flow read, every series updated), so this is what sets its share per frame.
pub const POLL: Duration = lab::agent::DEFAULT_POLL;

/// The agent under the bench, with its own pin directory (and state file) per run.
pub struct Agent<'l> {
    agent: lab::Agent<'l>,
    _pins: PinDir,
}

/// Cost counters of a running agent at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cost {
    /// utime + stime of the agent process.
    pub process: Duration,
    /// Sum of run_time_ns of every BPF program the agent holds.
    pub bpf_ns: u64,
    /// Sum of run_cnt of those programs.
    pub bpf_runs: u64,
}

impl Cost {
    pub fn since(&self, before: &Cost) -> Cost {
        Cost {
            process: self.process.saturating_sub(before.process),
            bpf_ns: self.bpf_ns - before.bpf_ns,
            bpf_runs: self.bpf_runs - before.bpf_runs,
        }
    }
}

/// What the agent counted, from one scrape.
#[derive(Debug, Clone, Default)]
pub struct Counted {
    /// Sum of gwsensor_client_packets_total{direction="upload"}.
    pub upload_packets: u64,
    /// gwsensor_packets_total{direction="upload",reason="seen"}: every frame XDP ran on.
    pub seen: u64,
    /// Upload packets per client MAC.
    pub per_mac: BTreeMap<String, u64>,
    /// The XDP attach mode the agent reports (`driver` or `generic`).
    pub xdp_mode: String,
    /// Polls done so far (gwsensor_poll_duration_seconds_count).
    pub polls: u64,
}

impl<'l> Agent<'l> {
    pub fn start(topo: &'l Topology, binary: &Path, tag: &str) -> Result<Agent<'l>> {
        let pins = PinDir::new("peer", tag);
        let config = Config::for_topology(topo, &pins)
            .state(&topo.lab.dir().join(format!("state-{tag}.json")));
        let launch = Launch::new(binary)
            .name(&format!("sensor-{tag}"))
            .ready_within(Duration::from_secs(30));
        let agent = lab::Agent::start(&topo.lab, &topo.gateway.ns, launch, &config)?;
        Ok(Agent { agent, _pins: pins })
    }

    pub fn cost(&self) -> Result<Cost> {
        let pid = self.agent.process().pid();
        let (bpf_ns, bpf_runs) = bpf_run_time(pid)?;
        Ok(Cost { process: cpu::process_cpu(pid)?, bpf_ns, bpf_runs })
    }

    pub fn counted(&self) -> Result<Counted> {
        let scrape = self.agent.scrape()?;
        let mut per_mac = BTreeMap::new();
        for s in scrape.matching("gwsensor_client_packets_total", &[("direction", "upload")]) {
            *per_mac.entry(s.label("mac").to_string()).or_insert(0) += s.value as u64;
        }
        let xdp_mode = scrape
            .series("gwsensor_xdp_attach_mode")
            .find(|s| s.value == 1.0)
            .map(|s| s.label("mode").to_string())
            .unwrap_or_default();
        Ok(Counted {
            upload_packets: per_mac.values().sum(),
            seen: scrape
                .value("gwsensor_packets_total", &[("direction", "upload"), ("reason", "seen")])?
                as u64,
            per_mac,
            xdp_mode,
            polls: scrape.value("gwsensor_poll_duration_seconds_count", &[])? as u64,
        })
    }

    /// Waits for the agent's next poll after the traffic, then scrapes until it has exported
    /// `expected` frames or `timeout` passes; returns the last scrape either way. Scrapes are
    /// few (they cost the agent CPU too, and are counted).
    pub fn wait_counted(&self, expected: u64, timeout: Duration) -> Result<Counted> {
        std::thread::sleep(POLL + Duration::from_millis(500));
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.counted()?;
            if c.seen >= expected || Instant::now() > deadline {
                return Ok(c);
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    pub fn stop(self) -> Result<()> {
        self.agent.stop(Duration::from_secs(10)).context("stopping the agent")
    }
}

/// Sum of run_time_ns and run_cnt over the BPF programs `pid` holds open, read from its fd info
/// (the kernel fills these in while `kernel.bpf_stats_enabled` is 1). Programs referenced by
/// several descriptors (a program and its link) are counted once.
pub fn bpf_run_time(pid: u32) -> Result<(u64, u64)> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut progs: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        let Ok(text) = std::fs::read_to_string(entry?.path()) else {
            continue;
        };
        if let Some((id, ns, runs)) = parse_prog_fdinfo(&text) {
            progs.insert(id, (ns, runs));
        }
    }
    if progs.is_empty() {
        bail!("process {pid} holds no BPF program");
    }
    Ok(progs.values().fold((0, 0), |(t, c), (ns, runs)| (t + ns, c + runs)))
}

/// (prog_id, run_time_ns, run_cnt) of a BPF program descriptor's fdinfo; None for anything
/// else (links carry a prog_id but no run time, maps and sockets neither).
pub(super) fn parse_prog_fdinfo(text: &str) -> Option<(u64, u64, u64)> {
    let field = |key: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
    };
    Some((field("prog_id")?, field("run_time_ns")?, field("run_cnt")?))
}

/// Turns the kernel's BPF run-time statistics on for as long as it lives, then restores the
/// previous setting. The statistics cost two clock reads per program run, counted in
/// run_time_ns itself.
pub struct BpfStats {
    previous: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    pub fn enable() -> Result<BpfStats> {
        let previous = std::fs::read_to_string(BPF_STATS)
            .with_context(|| format!("reading {BPF_STATS}"))?
            .trim()
            .to_string();
        std::fs::write(BPF_STATS, "1").with_context(|| format!("writing 1 to {BPF_STATS}"))?;
        Ok(BpfStats { previous })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, &self.previous);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_fdinfo_gives_id_and_run_time_links_do_not() {
        let prog = "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1039\nprog_type:\t6\n\
                    prog_jited:\t1\nprog_tag:\t13bc60af1ca6e01a\nmemlock:\t16384\n\
                    prog_id:\t13548\nrun_time_ns:\t98765\nrun_cnt:\t1000\n\
                    recursion_misses:\t0\nverified_insns:\t87363\n";
        assert_eq!(parse_prog_fdinfo(prog), Some((13548, 98765, 1000)));
        let link = "pos:\t0\nflags:\t02000000\nlink_type:\txdp\nlink_id:\t651\n\
                    prog_tag:\t13bc60af1ca6e01a\nprog_id:\t13548\nifindex:\t2\n";
        assert_eq!(parse_prog_fdinfo(link), None);
        assert_eq!(parse_prog_fdinfo("pos:\t0\nflags:\t02\n"), None);
    }
}
