//! The peer bench's results as Markdown: the "Side by side with pmacct" section of
//! docs/benchmarks.md, kept between its own markers so the other generators of that file (the
//! datapath bench, other sections) can rewrite their parts without touching it.

use std::{fmt::Write as _, time::Duration};

use anyhow::Result;

use super::{agent, blaster::Sent, cpu::LinkCounters, pmacct};

/// Offered rate of a run: frames per second, or unpaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    Paced(u64),
    Max,
}

impl Rate {
    pub fn per_second(self) -> Option<u64> {
        match self {
            Rate::Paced(r) => Some(r),
            Rate::Max => None,
        }
    }

    pub fn label(self) -> String {
        match self {
            Rate::Paced(r) if r.is_multiple_of(1000) => format!("{} kpps", r / 1000),
            Rate::Paced(r) => format!("{r} pps"),
            Rate::Max => "max (unpaced)".into(),
        }
    }
}

/// What happened on the wire in one run, whatever watched it.
#[derive(Debug, Clone, Copy)]
pub struct Wire {
    pub sent: Sent,
    /// lan0's counters over the run: what reached the interface the monitors watch.
    pub lan: LinkCounters,
    /// The client-side veth's transmit drops over the run: frames lost inside the veth pair.
    pub peer_tx_dropped: u64,
    /// CPU time of the ksoftirqd threads over the run.
    pub ksoftirqd: Duration,
}

impl Wire {
    /// CPU per frame of the whole sending path: the generator thread (syscalls and the softirq
    /// work run in its context) plus deferred softirq work.
    pub fn sender_ns_per_frame(&self) -> f64 {
        per_frame(self.sent.thread_sys + self.ksoftirqd, self.lan.rx_packets)
    }
}

/// The run with a do-nothing XDP program attached instead of a monitor.
pub struct XdpPassRun {
    pub wire: Wire,
    /// Its run_time_ns over the run.
    pub run_ns: u64,
}

impl XdpPassRun {
    pub fn prog_ns_per_frame(&self) -> f64 {
        self.run_ns as f64 / self.wire.lan.rx_packets.max(1) as f64
    }
}

pub struct SensorRun {
    pub wire: Wire,
    pub cost: agent::Cost,
    pub counted: agent::Counted,
    /// Agent polls within the measured window.
    pub polls: u64,
    /// Whether each client's count equals what the generator sent it (only checkable when no
    /// frame was lost before the interface).
    pub per_client_exact: Option<bool>,
}

pub struct PmacctRun {
    pub wire: Wire,
    pub cpu: Duration,
    pub counted: pmacct::Counted,
}

/// One offered rate: a run without any monitor, one with a do-nothing XDP program, one with
/// the sensor, one with pmacctd.
pub struct RateResult {
    pub rate: Rate,
    pub baseline: Wire,
    pub xdp_pass: XdpPassRun,
    pub sensor: SensorRun,
    pub pmacct: PmacctRun,
}

impl SensorRun {
    pub fn bpf_ns_per_frame(&self) -> f64 {
        self.cost.bpf_ns as f64 / self.wire.lan.rx_packets.max(1) as f64
    }
    pub fn agent_ns_per_frame(&self) -> f64 {
        per_frame(self.cost.process, self.wire.lan.rx_packets)
    }
    pub fn total_ns_per_frame(&self) -> f64 {
        self.bpf_ns_per_frame() + self.agent_ns_per_frame()
    }
    pub fn exact(&self) -> bool {
        self.counted.upload_packets == self.wire.lan.rx_packets
            && self.per_client_exact != Some(false)
    }
}

impl PmacctRun {
    pub fn ns_per_frame(&self) -> f64 {
        per_frame(self.cpu, self.wire.lan.rx_packets)
    }
}

fn per_frame(d: Duration, frames: u64) -> f64 {
    d.as_nanos() as f64 / frames.max(1) as f64
}

/// The machine and software the numbers come from.
pub struct Setup {
    pub date: String,
    pub machine: lab::docs::Machine,
    pub pmacct_version: String,
    pub frames_per_run: u64,
    pub clients: usize,
    pub remotes: usize,
    pub flows: usize,
    pub mean_len: f64,
    pub xdp_mode: String,
    pub took: Duration,
}

pub const COMMAND: &str = "cargo xtask bench --peer";

/// "1.23 M" / "987 k": frame counts and rates read at a glance; exact counts are in the table.
fn kilo(x: f64) -> String {
    if x >= 1e6 { format!("{:.2} M", x / 1e6) } else { format!("{:.0} k", x / 1e3) }
}

/// 1000000 → "1,000,000".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn counted_cell(counted: u64, received: u64, note: &str) -> String {
    let n = thousands(counted);
    if counted == received {
        format!("{n} (all{note})")
    } else if counted < received {
        format!("{n} (**{} missed**)", thousands(received - counted))
    } else {
        format!("{n} (**{} extra**)", thousands(counted - received))
    }
}

/// The headline sentence (the README may quote it), from the highest paced rate.
pub fn headline(results: &[RateResult]) -> String {
    let Some(r) = results
        .iter()
        .filter(|r| matches!(r.rate, Rate::Paced(_)))
        .max_by_key(|r| r.rate.per_second())
    else {
        return String::new();
    };
    let (s, p) = (&r.sensor, &r.pmacct);
    let missed = p.wire.lan.rx_packets.saturating_sub(p.counted.packets);
    format!(
        "At {rate} of mixed IPv4/IPv6 traffic from {clients} clients, the sensor counted {what} \
         of the {recv} frames for {sns:.0} ns of CPU per frame (kernel programs {bpf:.0} ns, \
         agent {agent:.0} ns); pmacctd's processes used {pns:.0} ns per frame, {ratio:.1}× as \
         much before the kernel's capture work{miss}.",
        rate = match r.rate.per_second() {
            // The generator shares the machine: say so when it fell short of the offer.
            Some(offered) if s.wire.sent.rate() < 0.95 * offered as f64 =>
                format!("{} offered ({} pps achieved)", r.rate.label(), kilo(s.wire.sent.rate())),
            _ => r.rate.label(),
        },
        clients = super::frames::CLIENTS,
        what = if s.exact() { "every one" } else { "NOT all" },
        recv = thousands(s.wire.lan.rx_packets),
        sns = s.total_ns_per_frame(),
        bpf = s.bpf_ns_per_frame(),
        agent = s.agent_ns_per_frame(),
        pns = p.ns_per_frame(),
        ratio = p.ns_per_frame() / s.total_ns_per_frame(),
        miss = if missed == 0 {
            ", and counted them all too".to_string()
        } else {
            format!(", and missed {}", thousands(missed))
        }
    )
}

/// The whole section, markers included.
pub fn render(results: &[RateResult], setup: &Setup) -> Result<String> {
    let mut s = String::new();
    writeln!(s, "## Side by side with pmacct\n")?;
    writeln!(
        s,
        "The sensor and `pmacctd` ({pmacct}; it captures with libpcap) counting the same traffic on \
         the same interface of the same machine, one after the other in one run of \
         `{COMMAND}`: {frames} frames per run from {clients} clients (one MAC, one IPv4 and one \
         IPv6 address each) to {remotes} remotes, {flows} flows, mixed sizes (mean {len:.0} \
         bytes), 70% IPv4, 75% TCP, at each offered rate.\n",
        pmacct = setup.pmacct_version,
        frames = thousands(setup.frames_per_run),
        clients = setup.clients,
        remotes = 2 * setup.remotes,
        flows = setup.flows,
        len = setup.mean_len,
    )?;
    writeln!(s, "{}\n", headline(results))?;

    writeln!(s, "### Frames counted\n")?;
    writeln!(
        s,
        "| Offered rate | Run | Sent | Achieved rate | Received by `lan0` | Lost before `lan0` | Counted | Capture drops |"
    )?;
    writeln!(s, "|---|---|---:|---:|---:|---:|---|---:|")?;
    for r in results {
        let rows: [(&str, &Wire, String, String); 2] = [
            (
                "sensor",
                &r.sensor.wire,
                counted_cell(
                    r.sensor.counted.upload_packets,
                    r.sensor.wire.lan.rx_packets,
                    match r.sensor.per_client_exact {
                        Some(true) => ", each client exact",
                        _ => "",
                    },
                ),
                "–".into(),
            ),
            (
                "pmacctd",
                &r.pmacct.wire,
                counted_cell(r.pmacct.counted.packets, r.pmacct.wire.lan.rx_packets, ""),
                thousands(r.pmacct.counted.pcap.dropped),
            ),
        ];
        for (name, w, counted, drops) in rows {
            writeln!(
                s,
                "| {} | {name} | {} | {} pps | {} | {} | {counted} | {drops} |",
                r.rate.label(),
                thousands(w.sent.frames),
                kilo(w.sent.rate()),
                thousands(w.lan.rx_packets),
                thousands(w.sent.frames.saturating_sub(w.lan.rx_packets)),
            )?;
        }
    }
    writeln!(s)?;

    writeln!(s, "### CPU per frame\n")?;
    writeln!(
        s,
        "Nanoseconds of CPU per frame received, which is also milliseconds per million frames.\n"
    )?;
    writeln!(
        s,
        "| Offered rate | sensor: kernel programs | sensor: agent (polls) | **sensor** | **pmacctd** | pmacctd ÷ sensor | for scale: a do-nothing XDP program |"
    )?;
    writeln!(s, "|---|---:|---:|---:|---:|---:|---:|")?;
    for r in results {
        writeln!(
            s,
            "| {} | {:.0} | {:.0} ({}) | **{:.0}** | **{:.0}** | {:.1}× | {:.0} |",
            r.rate.label(),
            r.sensor.bpf_ns_per_frame(),
            r.sensor.agent_ns_per_frame(),
            r.sensor.polls,
            r.sensor.total_ns_per_frame(),
            r.pmacct.ns_per_frame(),
            r.pmacct.ns_per_frame() / r.sensor.total_ns_per_frame(),
            r.xdp_pass.prog_ns_per_frame(),
        )?;
    }
    writeln!(s)?;

    writeln!(s, "### The sending path\n")?;
    writeln!(
        s,
        "System CPU per frame of the whole way in: the generator thread's system time (its \
         send calls and the softirq work the kernel ran in its context: veth, XDP, the packet \
         socket's copy for libpcap, routing into the blackhole) plus the ksoftirqd threads. It \
         holds the kernel work that no monitor's own figure above includes. Two more runs of \
         the same traffic per rate give the references: one with no monitor, one with a \
         do-nothing XDP program (`return XDP_PASS`) attached in driver mode.\n"
    )?;
    writeln!(
        s,
        "| Offered rate | no monitor | do-nothing XDP | sensor | pmacctd | any XDP program adds | the sensor adds to that | pmacctd adds |"
    )?;
    writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|")?;
    for r in results {
        let (b, x, se, pm) = (
            r.baseline.sender_ns_per_frame(),
            r.xdp_pass.wire.sender_ns_per_frame(),
            r.sensor.wire.sender_ns_per_frame(),
            r.pmacct.wire.sender_ns_per_frame(),
        );
        writeln!(
            s,
            "| {} | {b:.0} | {x:.0} | {se:.0} | {pm:.0} | {:+.0} | {:+.0} | {:+.0} |",
            r.rate.label(),
            x - b,
            se - x,
            pm - b
        )?;
    }
    writeln!(s)?;
    writeln!(
        s,
        "On a veth, attaching any XDP program switches the receiving side to its XDP path, which \
         copies every frame from the sender into a fresh page with room for XDP; a NIC's driver \
         runs XDP on its own receive buffer before any socket buffer exists, so there this \
         column is not paid. What the sensor adds beyond it is its programs' run time (above) \
         plus their cache misses on the frames and maps. These columns are differences of two \
         totals of about 3 µs measured in separate runs on a shared machine: differences of a \
         couple of hundred ns are within their noise."
    )?;
    writeln!(s)?;

    writeln!(s, "### What the numbers include\n")?;
    writeln!(
        s,
        "- **Sensor**: the run time of its kernel programs as the kernel measures it \
         (`kernel.bpf_stats_enabled=1`, `run_time_ns` of each program the agent holds, read from \
         its `/proc/PID/fdinfo`; it includes the statistics' own two clock reads per run), plus \
         the agent process's user and system time (`/proc/PID/stat`) from just before the \
         traffic until its next poll has exported every frame, scrapes of `/metrics` included. \
         XDP ran in {mode} mode; on a veth it runs in the softirq of the sending CPU. The agent \
         polled every {poll} s (its default): its cost grows with time and flows, not \
         frames, so it weighs most at the lowest rate, where the same polls are shared by \
         fewer frames per second; the polls column counts those in the window. The kernel \
         programs' figure is several times the datapath benchmark's known-flow cost (above): \
         here thousands of flows cycle through the maps between two frames of the same flow, \
         so lookups mostly miss the CPU caches (that benchmark's cold-entry row is the one to \
         compare with), and the statistics' clock reads are in it (the do-nothing program's \
         column).",
        mode = setup.xdp_mode,
        poll = agent::POLL.as_secs()
    )?;
    writeln!(
        s,
        "- **pmacctd**: user and system time of its core and print-plugin processes from just \
         before the traffic until its CPU time stops growing, at least 1.5 s after the last \
         frame (libpcap hands over a partly filled ring block after its 1 s timeout). Not \
         included: the kernel's work for the capture socket (copying each frame's first bytes \
         into libpcap's ring) runs in softirq context and is charged to whatever process the \
         softirq interrupted, here the generator; the table above shows it as what pmacctd adds to the \
         sending path. The sensor's programs are the same kind of work, but the kernel measures \
         them and they are included. pmacctd 1.7.7 leaves libpcap's ring at its default size \
         (2 MiB; it has no setting for it) and captures 128 bytes per frame (its default \
         snaplen); capture drops are libpcap's count of frames the ring had no room for."
    )?;
    writeln!(
        s,
        "- **Frames**: *Sent* is the generator's count (what `sendmmsg` accepted); *Received by \
         `lan0`* is the interface's own counter (`ip -s link`), the ground truth of what both \
         monitors could see. Frames lost between the two (the veth's queue) are no monitor's \
         fault. *Counted*: the sum of `gwsensor_client_packets_total{{direction=\"upload\"}}` \
         after the final poll; for pmacctd the sum of its aggregates' packets after it stopped."
    )?;
    writeln!(
        s,
        "- **Traffic**: one namespace writes raw Ethernet frames (AF_PACKET, `sendmmsg`, \
         qdisc bypassed) into a veth pair whose other end is the gateway's `lan0`, where the \
         monitors watch; the frames are addressed to the gateway, which routes them into \
         blackhole routes. The same {pool} frames (fixed seed) are sent round and round, paced \
         in batches of 32 to the offered rate; *max* sends as fast as the generator can. Each \
         rate runs four times (no monitor, do-nothing XDP, the sensor, pmacctd), each monitor \
         started fresh.",
        pool = super::frames::POOL
    )?;
    writeln!(
        s,
        "- **Aggregation**: pmacctd aggregates on `{agg}`, the sensor's flow key (client MAC and \
         IP, remote IP, protocol, remote port); the sensor also keeps per-client totals and \
         exports them per poll.\n",
        agg = pmacct::AGGREGATE
    )?;

    writeln!(s, "### Machine and run\n")?;
    writeln!(s, "- Date: {}", setup.date)?;
    let m = &setup.machine;
    writeln!(s, "- Machine: {} CPUs, {}", m.cpus, m.cpu_model)?;
    writeln!(s, "- Kernel: {}", m.kernel)?;
    writeln!(s, "- Load average (1, 5, 15 min) at the end: {}", m.load)?;
    writeln!(s, "- Took {:.0} s", setup.took.as_secs_f64())?;
    writeln!(s, "- Command: `{COMMAND}` (as root)\n")?;
    writeln!(
        s,
        "One run on a small machine shared with other work: the CPU figures move between runs \
         (rerun before reading much into a small difference); the counts do not."
    )?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_labels() {
        assert_eq!(Rate::Paced(100_000).label(), "100 kpps");
        assert_eq!(Rate::Paced(1500).label(), "1500 pps");
        assert_eq!(Rate::Max.label(), "max (unpaced)");
        assert_eq!(kilo(1_234_567.0), "1.23 M");
        assert_eq!(kilo(99_600.0), "100 k");
        assert_eq!(thousands(1_000_000), "1,000,000");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
    }
}
