//! The floor as the peer bench runs it: sensor's bench-only example `xdp_floor` (the least XDP
//! program that counts the sensor's flow key, one LRU per-CPU hash) attached in driver mode to
//! the gateway's LAN interface; its run time from BPF statistics, its counts when it stops.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use lab::{Lab, Process};
use nix::sys::signal::Signal;

use super::agent;

pub struct Floor {
    process: Process,
}

/// What the floor counted, from its exit line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    pub packets: u64,
    pub flows: u64,
}

impl Floor {
    pub fn start(lab: &Lab, ns: &str, iface: &str, binary: &Path) -> Result<Floor> {
        let mut cmd = Command::new(binary);
        cmd.arg(iface);
        let process = lab.spawn(ns, cmd)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !process.log().contains("attached") {
            if let Some(status) = process.try_wait()? {
                bail!("the floor program exited at startup ({status}):\n{}", process.log());
            }
            if Instant::now() > deadline {
                bail!("the floor program was not attached after 20 s:\n{}", process.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Floor { process })
    }

    /// (run_time_ns, run_cnt) of its program so far.
    pub fn run_time(&self) -> Result<(u64, u64)> {
        agent::bpf_run_time(self.process.pid())
    }

    /// SIGTERM, then its count of packets and flows.
    pub fn stop(self) -> Result<Counted> {
        self.process.signal(Signal::SIGTERM)?;
        if self.process.wait_timeout(Duration::from_secs(10))?.is_none() {
            bail!("the floor program did not exit 10 s after SIGTERM:\n{}", self.process.log());
        }
        let log = self.process.log();
        parse_counted(&log).with_context(|| format!("no count in the floor's output:\n{log}"))
    }
}

/// `counted <packets> packets in <flows> flows`.
fn parse_counted(log: &str) -> Option<Counted> {
    let line = log.lines().rev().find(|l| l.starts_with("counted "))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    match words[..] {
        ["counted", packets, "packets", "in", flows, "flows"] => {
            Some(Counted { packets: packets.parse().ok()?, flows: flows.parse().ok()? })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exit_line_gives_packets_and_flows() {
        assert_eq!(
            parse_counted("attached\ncounted 1000000 packets in 7822 flows\n"),
            Some(Counted { packets: 1_000_000, flows: 7822 })
        );
        assert_eq!(parse_counted("attached\n"), None);
        assert_eq!(parse_counted("counted many packets in 3 flows\n"), None);
    }
}
