//! pmacctd (Debian's pmacct, libpcap) as the peer: its configuration for an aggregation
//! equivalent to the sensor's, running it in a lab namespace, and reading what it counted (the
//! print plugin's CSV) and what libpcap dropped (the core's exit notice).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use lab::{Lab, Process};
use nix::sys::signal::Signal;

use super::cpu;

/// The sensor's flow key is client MAC + client IP + remote IP + protocol + remote port (and
/// its per-client totals are per MAC): the same primitives here.
pub const AGGREGATE: &str = "src_mac, src_host, dst_host, proto, dst_port";

/// pmacctd's configuration: capture inbound on `iface` (what the sensor's XDP sees), aggregate
/// as above, keep everything in the print plugin's cache and write it as CSV when it stops.
pub fn config(iface: &str, csv: &Path) -> String {
    format!(
        "daemonize: false\n\
         pcap_interface: {iface}\n\
         pcap_direction: in\n\
         ! the frames are addressed to the gateway: no promiscuous mode needed\n\
         promisc: false\n\
         aggregate: {AGGREGATE}\n\
         plugins: print\n\
         print_output: csv\n\
         print_output_file: {csv}\n\
         ! one write at exit; should the cache fill up earlier, purges append instead of\n\
         ! overwriting, and the CSV is summed whole\n\
         print_output_file_append: true\n\
         print_refresh_time: 86400\n\
         print_cache_entries: 32771\n\
         ! 40 MB core-to-plugin queue in 40 KB chunks (the documented 1:1000 ratio)\n\
         plugin_pipe_size: 40960000\n\
         plugin_buffer_size: 40960\n",
        csv = csv.display()
    )
}

/// A running pmacctd (core process; it forks the print plugin).
pub struct Pmacctd {
    process: Process,
    csv: PathBuf,
}

/// What pmacctd reported when stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    /// Sum of the PACKETS column.
    pub packets: u64,
    /// Aggregates (CSV rows).
    pub rows: usize,
    /// libpcap's statistics for the capture (received includes dropped).
    pub pcap: PcapStats,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PcapStats {
    pub received: u64,
    pub dropped: u64,
}

impl Pmacctd {
    /// Starts pmacctd in `ns` on `iface`, with its files under `dir` (named by `tag`), and
    /// waits until the capture is open and the plugin is up.
    pub fn start(lab: &Lab, ns: &str, iface: &str, dir: &Path, tag: &str) -> Result<Pmacctd> {
        let csv = dir.join(format!("pmacct-{tag}.csv"));
        let conf = dir.join(format!("pmacctd-{tag}.conf"));
        let _ = std::fs::remove_file(&csv);
        std::fs::write(&conf, config(iface, &csv))
            .with_context(|| format!("writing {}", conf.display()))?;
        let mut cmd = Command::new("pmacctd");
        cmd.arg("-f").arg(&conf);
        let process = lab.spawn(ns, cmd)?;
        let p = Pmacctd { process, csv };
        p.wait_ready(Duration::from_secs(20))?;
        Ok(p)
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// CPU time of the core and its plugin so far.
    pub fn cpu(&self) -> Result<Duration> {
        cpu::tree_cpu(self.pid())
    }

    fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.process.try_wait()? {
                bail!("pmacctd exited at startup ({status}):\n{}", self.process.log());
            }
            let log = self.process.log();
            // The core logs the link type once the capture is open; the print plugin logs
            // its cache size once it is ready to take data.
            if log.contains("link type is") && log.contains("cache entries=") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("pmacctd not ready after {timeout:?}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGINT (pmacctd's clean stop: the plugin writes its cache, the core prints libpcap's
    /// statistics), then reads both.
    pub fn stop(self) -> Result<Counted> {
        self.process.signal(Signal::SIGINT)?;
        if self.process.wait_timeout(Duration::from_secs(30))?.is_none() {
            bail!("pmacctd did not exit 30 s after SIGINT:\n{}", self.process.log());
        }
        // The plugin is a child of the core; it may finish writing a moment after the core.
        let deadline = Instant::now() + Duration::from_secs(10);
        while cpu::descendants(self.pid())?.len() > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = self.process.log();
        let pcap = parse_pcap_stats(&log)
            .with_context(|| format!("no libpcap statistics in pmacctd's output:\n{log}"))?;
        let text = std::fs::read_to_string(&self.csv)
            .with_context(|| format!("reading {} (pmacctd's log:\n{log})", self.csv.display()))?;
        let (packets, rows) =
            parse_csv(&text).with_context(|| format!("parsing {}", self.csv.display()))?;
        if log.contains("Missing data detected") {
            bail!("pmacctd lost data between its core and plugin:\n{log}");
        }
        Ok(Counted { packets, rows, pcap })
    }
}

/// Sum of the PACKETS column and the number of rows of the print plugin's CSV (one header line
/// per purge, since purges append).
pub fn parse_csv(text: &str) -> Result<(u64, usize)> {
    let mut column: Option<usize> = None;
    let (mut packets, mut rows) = (0u64, 0usize);
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').collect();
        if let Some(i) = fields.iter().position(|f| *f == "PACKETS") {
            column = Some(i);
            continue;
        }
        let i = column.with_context(|| format!("line {}: data before the header", n + 1))?;
        let value =
            fields.get(i).with_context(|| format!("line {}: no PACKETS field: {line}", n + 1))?;
        packets += value
            .parse::<u64>()
            .with_context(|| format!("line {}: PACKETS is not a number: {line}", n + 1))?;
        rows += 1;
    }
    if column.is_none() {
        bail!("no header with a PACKETS column");
    }
    Ok((packets, rows))
}

/// The core's exit notice: `NOTICE ( default/core ): [lan0,0] received_packets=N dropped_packets=M`.
pub fn parse_pcap_stats(log: &str) -> Option<PcapStats> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("received_packets=") && l.contains("dropped_packets="))?;
    let value = |key: &str| -> Option<u64> {
        let start = line.find(key)? + key.len();
        line[start..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    };
    Some(PcapStats { received: value("received_packets=")?, dropped: value("dropped_packets=")? })
}

/// pmacctd's version and its Debian package's, for the report: `1.7.7-git (Debian pmacct
/// 1.7.7-1+b1)`.
pub fn version() -> Result<String> {
    let out = Command::new("pmacctd").arg("-V").output().context("running pmacctd -V")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "Promiscuous Mode Accounting Daemon, pmacctd 1.7.7-git [RELEASE]"
    let own = text
        .lines()
        .find_map(|l| l.split_once("pmacctd ").map(|(_, v)| v))
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or("?")
        .to_string();
    let package = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", "pmacct"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    Ok(match package {
        Some(p) => format!("{own}, Debian package pmacct {p}"),
        None => own,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_sums_packets_over_rows_and_purges() {
        // As the print plugin writes it (aggregate src_mac, src_host, dst_host, proto, dst_port),
        // twice: an early purge and the one at exit, appended.
        let text = "SRC_MAC,SRC_IP,DST_IP,DST_PORT,PROTOCOL,PACKETS,BYTES\n\
                    02:42:77:01:00:00,10.77.1.20,10.77.3.1,443,tcp,4,272\n\
                    02:42:77:01:00:01,fd77:1::1:1,fd77:3::2,53,udp,3,204\n\
                    SRC_MAC,SRC_IP,DST_IP,DST_PORT,PROTOCOL,PACKETS,BYTES\n\
                    02:42:77:01:00:00,10.77.1.20,10.77.3.1,443,tcp,10,680\n";
        assert_eq!(parse_csv(text).unwrap(), (17, 3));
        assert_eq!(parse_csv("SRC_MAC,PACKETS,BYTES\n").unwrap(), (0, 0));
        assert!(parse_csv("").is_err());
        assert!(parse_csv("02:42:77:01:00:00,4,272\n").is_err());
        assert!(parse_csv("SRC_MAC,PACKETS\nx,many\n").is_err());
    }

    #[test]
    fn pcap_statistics_from_the_exit_notice() {
        let log = "INFO ( default/core ): OK, Exiting ...\n\
                   NOTICE ( default/core ): +++\n\
                   NOTICE ( default/core ): [lan0,0] received_packets=1000000 dropped_packets=4711\n\
                   NOTICE ( default/core ): ---\n";
        assert_eq!(parse_pcap_stats(log), Some(PcapStats { received: 1_000_000, dropped: 4711 }));
        assert_eq!(parse_pcap_stats("INFO ( default/core ): OK, Exiting ...\n"), None);
    }

    #[test]
    fn config_names_the_interface_output_and_aggregation() {
        let c = config("lan0", Path::new("/tmp/x/out.csv"));
        assert!(c.contains("pcap_interface: lan0\n"));
        assert!(c.contains("print_output_file: /tmp/x/out.csv\n"));
        assert!(c.contains("aggregate: src_mac, src_host, dst_host, proto, dst_port\n"));
    }
}
