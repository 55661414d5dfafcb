//! The peer bench's results as Markdown: the "Side by side with pmacct and darkstat" section of
//! docs/benchmarks.md, kept between its own markers so the other generators of that file (the
//! datapath bench, other sections) can rewrite their parts without touching it.

use std::{fmt::Write as _, time::Duration};

use anyhow::Result;

use super::{agent, blaster::Sent, cpu::LinkCounters, darkstat, floor, pmacct};

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

/// The run with the floor attached: the least XDP program that counts the sensor's flow key.
pub struct FloorRun {
    pub wire: Wire,
    /// Its run_time_ns over the run.
    pub run_ns: u64,
    pub counted: floor::Counted,
}

impl FloorRun {
    pub fn prog_ns_per_frame(&self) -> f64 {
        self.run_ns as f64 / self.wire.lan.rx_packets.max(1) as f64
    }

    /// Every frame the interface received, in as many flows as the pool has.
    pub fn exact(&self, flows: usize) -> bool {
        self.counted.packets == self.wire.lan.rx_packets && self.counted.flows == flows as u64
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

pub struct DarkstatRun {
    pub wire: Wire,
    pub cpu: Duration,
    pub counted: darkstat::Counted,
    /// Whether the bytes each client address sent, as darkstat counted them, equal what the
    /// generator sent (only checkable when no frame was lost before the interface).
    pub per_host_exact: Option<bool>,
}

/// One offered rate: a run without any monitor, one with a do-nothing XDP program, one with
/// the floor, one with the sensor, one with pmacctd, one with darkstat.
pub struct RateResult {
    pub rate: Rate,
    pub baseline: Wire,
    pub xdp_pass: XdpPassRun,
    pub floor: FloorRun,
    pub sensor: SensorRun,
    pub pmacct: PmacctRun,
    pub darkstat: DarkstatRun,
}

/// A libpcap peer's whole cost per frame: its processes, plus the kernel's capture work for it
/// (copying frames into its ring), which runs in softirq context charged to the sending path:
/// what its run adds to the sending path of the run with no monitor.
#[derive(Debug, Clone, Copy)]
pub struct Whole {
    pub processes: f64,
    pub capture: f64,
}

impl Whole {
    pub fn total(&self) -> f64 {
        self.processes + self.capture
    }

    fn cell(&self) -> String {
        format!("**{:.0}** ({:.0} {:+.0})", self.total(), self.processes, self.capture)
    }
}

impl RateResult {
    pub fn pmacct_whole(&self) -> Whole {
        Whole {
            processes: self.pmacct.ns_per_frame(),
            capture: self.pmacct.wire.sender_ns_per_frame() - self.baseline.sender_ns_per_frame(),
        }
    }

    pub fn darkstat_whole(&self) -> Whole {
        Whole {
            processes: self.darkstat.ns_per_frame(),
            capture: self.darkstat.wire.sender_ns_per_frame() - self.baseline.sender_ns_per_frame(),
        }
    }

    /// The sensor's kernel programs per frame over the floor's, same traffic.
    pub fn floor_ratio(&self) -> f64 {
        self.sensor.bpf_ns_per_frame() / self.floor.prog_ns_per_frame()
    }
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

impl DarkstatRun {
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
    pub darkstat_version: String,
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

/// "every one" / "all but 12" / "12 more than".
fn how_many(counted: u64, received: u64) -> String {
    if counted == received {
        "every one".into()
    } else if counted < received {
        format!("all but {}", thousands(received - counted))
    } else {
        format!("{} more than", thousands(counted - received))
    }
}

/// The headline sentences (the README may quote them), from the highest paced rate.
pub fn headline(results: &[RateResult]) -> String {
    let Some(r) = results
        .iter()
        .filter(|r| matches!(r.rate, Rate::Paced(_)))
        .max_by_key(|r| r.rate.per_second())
    else {
        return String::new();
    };
    let s = &r.sensor;
    let (pm, ds) = (r.pmacct_whole(), r.darkstat_whole());
    let sensor = s.total_ns_per_frame();
    format!(
        "At {rate} of mixed IPv4/IPv6 traffic from {clients} clients, the sensor counted {what} \
         of the {recv} frames for {sensor:.0} ns of CPU per frame (kernel programs {bpf:.0} ns, \
         agent {agent:.0} ns). pmacctd counted {pm_what} for {pmw:.0} ns per frame, {pm_ratio:.1}× \
         as much ({pmp:.0} ns in its processes, {pmc:+.0} ns of capture work in the kernel){pm_miss}; \
         darkstat counted {ds_what} for {dsw:.0} ns per frame, {ds_ratio:.1}× as much ({dsp:.0} \
         ns in its process, {dsc:+.0} ns of capture work){ds_miss}. The floor, the least XDP program that \
         counts the sensor's flow key, ran {floor:.0} ns per frame on the same traffic: the \
         sensor's kernel programs cost {floor_ratio:.2}× that.",
        rate = match r.rate.per_second() {
            // The generator shares the machine: say so when it fell short of the offer.
            Some(offered) if s.wire.sent.rate() < 0.95 * offered as f64 =>
                format!("{} offered ({} pps achieved)", r.rate.label(), kilo(s.wire.sent.rate())),
            _ => r.rate.label(),
        },
        clients = super::frames::CLIENTS,
        what = if s.exact() { "every one".to_string() } else { "NOT all".to_string() },
        recv = thousands(s.wire.lan.rx_packets),
        bpf = s.bpf_ns_per_frame(),
        agent = s.agent_ns_per_frame(),
        pm_what = how_many(r.pmacct.counted.packets, r.pmacct.wire.lan.rx_packets),
        pmw = pm.total(),
        pm_ratio = pm.total() / sensor,
        pmp = pm.processes,
        pmc = pm.capture,
        ds_what = how_many(r.darkstat.counted.packets, r.darkstat.wire.lan.rx_packets),
        dsw = ds.total(),
        ds_ratio = ds.total() / sensor,
        dsp = ds.processes,
        dsc = ds.capture,
        floor = r.floor.prog_ns_per_frame(),
        floor_ratio = r.floor_ratio(),
        pm_miss = not_comparable(r.pmacct.counted.packets, r.pmacct.wire.lan.rx_packets),
        ds_miss = not_comparable(r.darkstat.counted.packets, r.darkstat.wire.lan.rx_packets),
    )
}

/// A peer that missed frames spent its CPU on fewer of them: its cost per frame received is
/// then no like-for-like figure, and the text says so.
fn not_comparable(counted: u64, received: u64) -> String {
    if counted >= received {
        return String::new();
    }
    format!(
        ", but it processed only {:.1}% of the frames (libpcap dropped the rest), so that figure \
         is not a cost of counting them all",
        100.0 * counted as f64 / received.max(1) as f64
    )
}

/// The whole section, markers included.
pub fn render(results: &[RateResult], setup: &Setup) -> Result<String> {
    let mut s = String::new();
    writeln!(s, "## Side by side with pmacct and darkstat\n")?;
    writeln!(
        s,
        "The sensor, `pmacctd` ({pmacct}) and `darkstat` ({darkstat}), both of which capture \
         with libpcap, counting the same traffic on the same interface of the same machine, one \
         after the other in one run of `{COMMAND}`: {frames} frames per run from {clients} \
         clients (one MAC, one IPv4 and one IPv6 address each) to {remotes} remotes, {flows} \
         flows, mixed sizes (mean {len:.0} bytes), 70% IPv4, 75% TCP, at each offered rate. The \
         same traffic also runs through the floor: the least XDP program that counts the \
         sensor's flow key.\n",
        pmacct = setup.pmacct_version,
        darkstat = setup.darkstat_version,
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
        let rows: [(&str, &Wire, String, String); 4] = [
            (
                "floor",
                &r.floor.wire,
                counted_cell(
                    r.floor.counted.packets,
                    r.floor.wire.lan.rx_packets,
                    &format!(", {} flows", r.floor.counted.flows),
                ),
                "–".into(),
            ),
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
            (
                "darkstat",
                &r.darkstat.wire,
                counted_cell(
                    r.darkstat.counted.packets,
                    r.darkstat.wire.lan.rx_packets,
                    match r.darkstat.per_host_exact {
                        Some(true) => ", each client address's bytes exact",
                        Some(false) => "; **per-address bytes differ**",
                        None => "",
                    },
                ),
                thousands(r.darkstat.counted.dropped),
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
        "Nanoseconds of CPU per frame received, which is also milliseconds per million frames. \
         Whole costs: the sensor's kernel programs and agent; for each libpcap peer its \
         processes plus the kernel's capture work for it (in parentheses: processes, then \
         capture work, estimated as what its run adds to the sending path of the run with no \
         monitor, see below).\n"
    )?;
    writeln!(
        s,
        "| Offered rate | sensor: kernel programs | sensor: agent (polls) | **sensor** | **pmacctd** (processes, capture) | **darkstat** (process, capture) | pmacctd ÷ sensor | darkstat ÷ sensor |"
    )?;
    writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|")?;
    let mut missed = Vec::new();
    for r in results {
        let (pm, ds) = (r.pmacct_whole(), r.darkstat_whole());
        let sensor = r.sensor.total_ns_per_frame();
        writeln!(
            s,
            "| {} | {:.0} | {:.0} ({}) | **{sensor:.0}** | {} | {} | {:.1}× | {:.1}× |",
            r.rate.label(),
            r.sensor.bpf_ns_per_frame(),
            r.sensor.agent_ns_per_frame(),
            r.sensor.polls,
            pm.cell(),
            ds.cell(),
            pm.total() / sensor,
            ds.total() / sensor,
        )?;
        for (name, counted, received) in [
            ("pmacctd", r.pmacct.counted.packets, r.pmacct.wire.lan.rx_packets),
            ("darkstat", r.darkstat.counted.packets, r.darkstat.wire.lan.rx_packets),
        ] {
            if counted < received {
                missed.push(format!("{name} at {}", r.rate.label()));
            }
        }
    }
    writeln!(s)?;

    if !missed.is_empty() {
        writeln!(
            s,
            "Missed frames (see *Frames counted*): {}. A peer's CPU per frame received there \
             covers only the frames it processed, so its ratio is not a like-for-like cost.\n",
            missed.join(", ")
        )?;
    }

    writeln!(s, "### The kernel programs against the floor\n")?;
    writeln!(
        s,
        "Run time per frame of the XDP programs as the kernel measures it (BPF statistics), same \
         traffic: the floor (`gwsensor_floor`: parses just enough to build the sensor's flow key, then \
         one lookup-and-add of packets and bytes in one LRU per-CPU hash of the same capacity as \
         the sensor's flows, nothing else; a separate bench-only object, sensor's example \
         `xdp_floor`), and the sensor's programs (parsing, LAN check, flow and client totals, \
         stats, clock). The do-nothing program shows what the statistics' own clock reads cost \
         per run.\n"
    )?;
    writeln!(
        s,
        "| Offered rate | do-nothing XDP | floor | sensor: kernel programs | sensor ÷ floor | sensor − floor |"
    )?;
    writeln!(s, "|---|---:|---:|---:|---:|---:|")?;
    for r in results {
        let (f, k) = (r.floor.prog_ns_per_frame(), r.sensor.bpf_ns_per_frame());
        writeln!(
            s,
            "| {} | {:.0} | {f:.0} | {k:.0} | {:.2}× | {:+.0} |",
            r.rate.label(),
            r.xdp_pass.prog_ns_per_frame(),
            r.floor_ratio(),
            k - f,
        )?;
    }
    writeln!(s)?;

    writeln!(s, "### The sending path\n")?;
    writeln!(
        s,
        "System CPU per frame of the whole way in: the generator thread's system time (its \
         send calls and the softirq work the kernel ran in its context: veth, XDP, the packet \
         sockets' copies for libpcap, routing into the blackhole) plus the ksoftirqd threads. It \
         holds the kernel work that no monitor's own process figure includes. Two more runs of \
         the same traffic per rate give the references: one with no monitor, one with a \
         do-nothing XDP program (`return XDP_PASS`) attached in driver mode.\n"
    )?;
    writeln!(
        s,
        "| Offered rate | no monitor | do-nothing XDP | floor | sensor | pmacctd | darkstat | any XDP program adds | the floor adds to that | the sensor adds to that | pmacctd adds | darkstat adds |"
    )?;
    writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for r in results {
        let (b, x, fl, se, pm, ds) = (
            r.baseline.sender_ns_per_frame(),
            r.xdp_pass.wire.sender_ns_per_frame(),
            r.floor.wire.sender_ns_per_frame(),
            r.sensor.wire.sender_ns_per_frame(),
            r.pmacct.wire.sender_ns_per_frame(),
            r.darkstat.wire.sender_ns_per_frame(),
        );
        writeln!(
            s,
            "| {} | {b:.0} | {x:.0} | {fl:.0} | {se:.0} | {pm:.0} | {ds:.0} | {:+.0} | {:+.0} | {:+.0} | {:+.0} | {:+.0} |",
            r.rate.label(),
            x - b,
            fl - x,
            se - x,
            pm - b,
            ds - b
        )?;
    }
    writeln!(s)?;
    writeln!(
        s,
        "On a veth, attaching any XDP program switches the receiving side to its XDP path, which \
         copies every frame from the sender into a fresh page with room for XDP; a NIC's driver \
         runs XDP on its own receive buffer before any socket buffer exists, so there this \
         column is not paid, and the sensor's whole cost above leaves it out. What the floor and \
         the sensor add beyond it is their programs' run time plus their cache misses on the \
         frames and maps. These columns are differences of two totals of a few µs measured in \
         separate runs on a shared machine: differences of a couple of hundred ns are within \
         their noise, and so is the capture work in the peers' whole costs."
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
         frame (libpcap hands over a partly filled ring block after its 1 s timeout), plus the \
         kernel's work for its capture socket (copying each frame's first bytes into libpcap's \
         ring), which runs in softirq context and is charged to whatever process the softirq \
         interrupted, here the generator: it is estimated as what pmacctd's run adds to the \
         sending path of the run with no monitor. pmacctd 1.7.7 leaves libpcap's ring at its \
         default size (2 MiB; it has no setting for it) and captures 128 bytes per frame (its \
         default snaplen); capture drops are libpcap's count of frames the ring had no room for."
    )?;
    writeln!(
        s,
        "- **darkstat**: the same two parts, measured the same way, for its one process (run \
         with `--no-daemon --no-promisc --no-dns`: no reverse lookups, which would have nothing \
         to ask in the lab). It counts bytes per host, not flows: the run checks, for every \
         client address (IPv4 and IPv6), that the bytes darkstat shows it sent (`Out` in its \
         hosts table; darkstat counts IP bytes, the frame without its Ethernet header) equal \
         what the generator sent from it. *Counted* is its \"in N packets\" total, capture drops \
         libpcap's count, both from its front page before and after the traffic. The Debian \
         package predates darkstat's Prometheus exporter; its web pages show the same counters."
    )?;
    writeln!(
        s,
        "- **Floor**: `gwsensor_floor` attached in driver mode by sensor's bench-only example \
         `xdp_floor` (its own object, with its one map: the agent never loads it), run time from \
         BPF statistics like the sensor's programs; it counts every frame into the pool's flows \
         (checked: its packets and number of flows when it stops)."
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
         rate runs six times (no monitor, do-nothing XDP, the floor, the sensor, pmacctd, \
         darkstat), each monitor started fresh.",
        pool = super::frames::POOL
    )?;
    writeln!(
        s,
        "- **Aggregation**: pmacctd aggregates on `{agg}`, the sensor's flow key (client MAC and \
         IP, remote IP, protocol, remote port); the sensor also keeps per-client totals and \
         exports them per poll. darkstat keeps per-host totals (and per-host port tables), a \
         coarser aggregation than the flow key.\n",
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
