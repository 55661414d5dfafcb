//! Runs frames through the kernel programs with BPF_PROG_TEST_RUN and compares what the maps
//! gained with what the reference predicts.
//!
//! Frames go in batches. Within a batch the model adds up the predicted outcomes (flows,
//! client totals, stats, and which new clients still get a slot); after it the maps are read
//! and must equal the model exactly, then every client is retired (`KernelMaps::remove_clients`,
//! the agent's own path), which deletes their flows and frees their slots, so each batch starts
//! from empty flow and client tables. A batch that differs is replayed one frame at a time on a
//! fresh instance to name the frames that differ.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf,
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use ipnet::IpNet;
use sensor::{
    common::{Direction, FlowKey, Stat, names},
    kernel::collector::{KernelMaps, Snapshot},
    kernel::loader::{LoadOptions, load, verify_for_test_runs},
};

use super::{
    frames::Frame,
    reference::{Outcome, Reference, etherparse_view, show_key},
};

const XDP_PASS: u32 = 2;
/// TC_ACT_UNSPEC (-1) as the u32 the test run reports.
const TC_ACT_UNSPEC: u32 = u32::MAX;
const ETH_HLEN: usize = 14;
/// The XDP test run hands the program its first (PAGE_SIZE - 256 - tailroom) bytes as linear
/// data and the rest as fragments; the skb test run takes (PAGE_SIZE - 64 - tailroom) bytes at
/// most. Both share the tailroom, so the XDP linear size is the skb limit less 192 bytes.
const XDP_EXTRA_HEADROOM: usize = 256 - 64;

/// Client slots: fewer than the generator's client pool, so that new clients past them
/// (`client_table_full`) happen in most batches.
pub const CLIENT_CAPACITY: u32 = 36;
/// Flow capacity: far above the flows of one batch, so that the LRU never evicts.
const FLOW_CAPACITY: u32 = 65_536;

/// Differing batches replayed frame by frame to name the frames; later ones are only counted.
const MAX_LOCALISED_BATCHES: usize = 20;

/// Frames per batch (between two readings of the maps).
pub const BATCH: usize = 512;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Count {
    packets: [u64; 2],
    bytes: [u64; 2],
}

impl Count {
    fn add(&mut self, dir: Direction, bytes: u64) {
        self.packets[dir.index()] += 1;
        self.bytes[dir.index()] += bytes;
    }
}

/// What one frame must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expected {
    /// The test runner refuses the frame (EINVAL) before the program runs: nothing changes.
    Refused,
    /// The program runs and the frame has this outcome, seen as `bytes` bytes.
    Runs { outcome: Outcome, bytes: u64 },
}

/// The predicted state of the maps.
#[derive(Default)]
struct Model {
    flows: HashMap<FlowKey, Count>,
    clients: HashMap<[u8; 6], Count>,
    stats: [[u64; Stat::COUNT]; 2],
}

impl Model {
    /// Adds a frame's outcome; returns the stat it ends in (a counted frame of a new client
    /// past the slots is `client_table_full`).
    fn apply(&mut self, dir: Direction, outcome: Outcome, bytes: u64) -> Stat {
        let stat = match outcome {
            Outcome::Rejected(stat) => stat,
            Outcome::Counted(key) => {
                let known = self.clients.contains_key(&key.client_mac);
                if !known && self.clients.len() >= CLIENT_CAPACITY as usize {
                    Stat::ClientTableFull
                } else {
                    self.clients.entry(key.client_mac).or_default().add(dir, bytes);
                    self.flows.entry(key).or_default().add(dir, bytes);
                    Stat::Counted
                }
            }
        };
        self.stats[dir.index()][stat as usize] += 1;
        self.stats[dir.index()][Stat::Seen as usize] += 1;
        stat
    }
}

/// Totals of a run.
#[derive(Default, Debug)]
pub struct Report {
    pub frames: u64,
    /// Frames by direction.
    pub frames_by_dir: [u64; 2],
    /// Frames the test runner refused as predicted (XDP: shorter than an Ethernet header; TC:
    /// that, IP EtherTypes without the fixed IP header, and frames past its size limit).
    pub refused: [u64; 2],
    /// Outcomes by direction and stat (`seen` = program runs).
    pub stats: [[u64; Stat::COUNT]; 2],
    /// Frames where etherparse's whole-packet parse applied and agreed with the reference.
    pub etherparse_agreed: u64,
    pub mismatches: Vec<String>,
    pub elapsed: Duration,
    /// Largest frame the skb test run takes, and the XDP test run's linear size, on this kernel.
    pub tc_max: usize,
    pub xdp_linear: usize,
}

impl Report {
    pub fn refused(&self) -> u64 {
        self.refused[0] + self.refused[1]
    }

    pub fn counted(&self) -> u64 {
        self.stats[0][Stat::Counted as usize] + self.stats[1][Stat::Counted as usize]
    }

    /// Non-zero stats, `direction/reason: n`.
    pub fn outcomes(&self) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for dir in Direction::ALL {
            for stat in Stat::ALL {
                let n = self.stats[dir.index()][stat as usize];
                if n != 0 && stat != Stat::Seen {
                    m.insert(format!("{}/{}", dir.as_str(), stat.as_str()), n);
                }
            }
        }
        m
    }
}

/// A private instance of the programs (no pinning, nothing attached).
pub struct Kernel {
    ebpf: Ebpf,
    maps: KernelMaps,
    tc_max: usize,
    stats_base: [[u64; Stat::COUNT]; 2],
}

impl Kernel {
    pub fn load(lan: &[IpNet]) -> anyhow::Result<Kernel> {
        let (mut ebpf, _) = load(&LoadOptions {
            lan_prefixes: lan,
            flow_capacity: FLOW_CAPACITY,
            client_capacity: CLIENT_CAPACITY,
            pin_dir: None,
            kernel_btf: false,
        })?;
        verify_for_test_runs(&mut ebpf)?;
        let maps = KernelMaps::take(&mut ebpf)?;
        let mut k = Kernel { ebpf, maps, tc_max: 0, stats_base: Default::default() };
        k.tc_max = k.probe_tc_max()?;
        Ok(k)
    }

    /// The largest frame the skb test run accepts (a property of the runner, not of the
    /// program): found with a non-IP frame, whose outcome (`not_ip`) is then cleared.
    fn probe_tc_max(&mut self) -> anyhow::Result<usize> {
        let frame = |n: usize| {
            let mut f = vec![0u8; n];
            f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes()); // local experimental EtherType
            f
        };
        let (mut ok, mut refused) = (ETH_HLEN, 65_536);
        if self.run(Direction::Download, &frame(ok))?.is_none() {
            bail!("the skb test run refuses a {ok}-byte frame");
        }
        while refused - ok > 1 {
            let mid = (ok + refused) / 2;
            match self.run(Direction::Download, &frame(mid))? {
                Some(_) => ok = mid,
                None => refused = mid,
            }
        }
        // The probes' `not_ip` counts are not the run's.
        self.rebase()?;
        Ok(ok)
    }

    /// The maps, with the stats counted since the last [`Kernel::rebase`].
    fn read(&self) -> anyhow::Result<Snapshot> {
        let mut snap = self.maps.read()?;
        for (got, base) in snap.stats.iter_mut().zip(&self.stats_base) {
            for (g, b) in got.iter_mut().zip(base) {
                *g -= b;
            }
        }
        Ok(snap)
    }

    /// Counts stats from zero again (the STATS array itself is never reset: it is the agent's).
    fn rebase(&mut self) -> anyhow::Result<()> {
        self.stats_base = self.maps.read()?.stats;
        Ok(())
    }

    /// One test run: `Some(return value)`, or `None` when the runner refused the frame with
    /// EINVAL (any other error is an error).
    fn run(&self, dir: Direction, frame: &[u8]) -> anyhow::Result<Option<u32>> {
        let opts = TestRunOptions { data_in: Some(frame), repeat: 1, ..Default::default() };
        let result = match dir {
            Direction::Upload => {
                let p: &Xdp =
                    self.ebpf.program(names::XDP_PROGRAM).context("XDP program")?.try_into()?;
                p.test_run(opts)
            }
            Direction::Download => {
                let p: &SchedClassifier =
                    self.ebpf.program(names::TC_PROGRAM).context("TC program")?.try_into()?;
                p.test_run(opts)
            }
        };
        match result {
            Ok(r) => Ok(Some(r.return_value)),
            Err(e) if einval(&e) => Ok(None),
            Err(e) => Err(e).with_context(|| {
                format!("{} test run of a {}-byte frame", dir.as_str(), frame.len())
            }),
        }
    }
}

fn einval(e: &aya::programs::ProgramError) -> bool {
    match e {
        aya::programs::ProgramError::SyscallError(s) => {
            s.io_error.raw_os_error() == Some(libc::EINVAL)
        }
        _ => false,
    }
}

/// The differential run: a kernel instance, the reference, and the model of one batch.
pub struct Differential {
    kernel: Kernel,
    lan: Vec<IpNet>,
    reference: Reference,
    model: Model,
    batch: Vec<(Frame, Expected)>,
    batch_size: usize,
    differing_batches: usize,
    pub report: Report,
}

impl Differential {
    pub fn new(lan: &[IpNet], batch_size: usize) -> anyhow::Result<Differential> {
        let kernel = Kernel::load(lan)?;
        let report = Report {
            tc_max: kernel.tc_max,
            xdp_linear: kernel.tc_max - XDP_EXTRA_HEADROOM,
            ..Default::default()
        };
        Ok(Differential {
            kernel,
            lan: lan.to_vec(),
            reference: Reference::new(lan),
            model: Model::default(),
            batch: Vec::with_capacity(batch_size),
            batch_size,
            differing_batches: 0,
            report,
        })
    }

    /// What the runner and the program must do with `frame`.
    fn expect(&mut self, frame: &Frame) -> Expected {
        let b = &frame.bytes;
        let ether_type = b.get(12..14).map(|t| u16::from_be_bytes([t[0], t[1]]));
        let refused = match frame.dir {
            Direction::Upload => b.len() < ETH_HLEN,
            // The skb runner reads the addresses of an IP EtherType's fixed header, and so
            // refuses a frame without one (no such skb reaches a real egress either).
            Direction::Download => {
                b.len() < ETH_HLEN
                    || b.len() > self.report.tc_max
                    || (ether_type == Some(0x0800) && b.len() < ETH_HLEN + 20)
                    || (ether_type == Some(0x86dd) && b.len() < ETH_HLEN + 40)
            }
        };
        if refused {
            return Expected::Refused;
        }
        // What the program sees: XDP, the linear part (a jumbo frame's head: under the test
        // runner the rest is in fragments, which a program not built for fragments never
        // reads; attached for real, generic XDP linearises the frame first and native XDP
        // refuses such a program on a jumbo MTU); TC, all of it (skb->len).
        let view = match frame.dir {
            Direction::Upload => &b[..b.len().min(self.report.xdp_linear)],
            Direction::Download => &b[..],
        };
        let outcome = self.reference.classify(view, frame.dir);
        if let Some(ep) = etherparse_view(&self.reference, view, frame.dir) {
            if ep == outcome {
                self.report.etherparse_agreed += 1;
            } else {
                // A fault of the reference (or a rule it does not say it encodes): reported
                // like a kernel mismatch, so that a long run still finishes and says so.
                self.mismatch(
                    frame,
                    &format!("the reference ({outcome:?}) disagrees with etherparse's own parse ({ep:?}): fix the reference"),
                );
            }
        }
        Expected::Runs { outcome, bytes: view.len() as u64 }
    }

    /// Runs one frame and checks its return value; the maps are compared at the batch's end.
    pub fn push(&mut self, frame: Frame) -> anyhow::Result<()> {
        let expected = self.expect(&frame);
        let ran = self.kernel.run(frame.dir, &frame.bytes)?;
        let want_rc = match frame.dir {
            Direction::Upload => XDP_PASS,
            Direction::Download => TC_ACT_UNSPEC,
        };
        self.report.frames += 1;
        self.report.frames_by_dir[frame.dir.index()] += 1;
        match (expected, ran) {
            (Expected::Refused, None) => self.report.refused[frame.dir.index()] += 1,
            (Expected::Runs { outcome, bytes }, Some(rc)) => {
                if rc != want_rc {
                    self.mismatch(&frame, &format!("returned {rc:#x}, not {want_rc:#x}"));
                }
                let stat = self.model.apply(frame.dir, outcome, bytes);
                self.report.stats[frame.dir.index()][stat as usize] += 1;
                self.report.stats[frame.dir.index()][Stat::Seen as usize] += 1;
            }
            (Expected::Refused, Some(rc)) => {
                self.mismatch(
                    &frame,
                    &format!(
                        "the test runner was expected to refuse it, but it ran (returned {rc:#x})"
                    ),
                );
                // Its effect is unknown to the model: the batch will differ too.
            }
            (Expected::Runs { .. }, None) => {
                self.mismatch(
                    &frame,
                    "the test runner refused it (EINVAL), but it was expected to run",
                );
            }
        }
        self.batch.push((frame, expected));
        if self.batch.len() >= self.batch_size {
            self.finish_batch()?;
        }
        Ok(())
    }

    fn mismatch(&mut self, frame: &Frame, what: &str) {
        self.report.mismatches.push(format!(
            "{} frame, {} bytes ({}): {what}\n{}",
            frame.dir.as_str(),
            frame.bytes.len(),
            frame.label,
            hex(&frame.bytes)
        ));
    }

    /// Compares the maps with the model, then retires every client (flows go with them).
    pub fn finish_batch(&mut self) -> anyhow::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let frames = std::mem::take(&mut self.batch);
        if let Some(diff) = compare(&self.kernel, &self.model)? {
            self.differing_batches += 1;
            // Replaying costs a program load and a map reading per frame: enough batches to
            // show what is wrong, then only the count.
            let culprits = if self.differing_batches <= MAX_LOCALISED_BATCHES {
                localise(&self.lan, &frames)?
            } else {
                Vec::new()
            };
            if culprits.is_empty() {
                self.report.mismatches.push(format!(
                    "a batch of {} frames differs, and no single frame replayed on its own does (or it was not replayed): {diff}",
                    frames.len()
                ));
            }
            self.report.mismatches.extend(culprits);
        }
        retire_all(&mut self.kernel)?;
        self.model.flows.clear();
        self.model.clients.clear();
        Ok(())
    }

    pub fn run(
        &mut self,
        frames: &mut impl Iterator<Item = Frame>,
        count: u64,
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        for frame in frames.take(count as usize) {
            self.push(frame)?;
        }
        self.finish_batch()?;
        self.report.elapsed += start.elapsed();
        Ok(())
    }
}

/// Retires every client holding a slot: their flows are deleted, their totals zeroed and their
/// slots freed. The flow table must then be empty.
fn retire_all(kernel: &mut Kernel) -> anyhow::Result<()> {
    let macs: Vec<[u8; 6]> = kernel.maps.client_slots()?.into_keys().collect();
    kernel.maps.remove_clients(&macs)?;
    let left = kernel.read()?;
    if !left.flows.is_empty() || !left.clients.is_empty() {
        bail!(
            "{} flows and {} clients left after retiring every client",
            left.flows.len(),
            left.clients.len()
        );
    }
    Ok(())
}

/// The maps against the model: `None` if equal, else what differs.
fn compare(kernel: &Kernel, model: &Model) -> anyhow::Result<Option<String>> {
    let snap = kernel.read()?;
    let mut diff = Vec::new();
    let got: HashMap<FlowKey, Count> = snap
        .flows
        .iter()
        .map(|(k, c)| (*k, Count { packets: c.packets, bytes: c.bytes }))
        .collect();
    let keys: HashSet<&FlowKey> = got.keys().chain(model.flows.keys()).collect();
    for k in keys {
        let (g, w) = (got.get(k), model.flows.get(k));
        if g != w {
            diff.push(format!("flow {}: kernel {g:?}, reference {w:?}", show_key(k)));
        }
    }
    let got: HashMap<[u8; 6], Count> = snap
        .clients
        .iter()
        .map(|(m, c)| (*m, Count { packets: c.packets, bytes: c.bytes }))
        .collect();
    let macs: HashSet<&[u8; 6]> = got.keys().chain(model.clients.keys()).collect();
    for m in macs {
        let (g, w) = (got.get(m), model.clients.get(m));
        if g != w {
            diff.push(format!("client {m:02x?}: kernel {g:?}, reference {w:?}"));
        }
    }
    for dir in Direction::ALL {
        for stat in Stat::ALL {
            let (g, w) =
                (snap.stats[dir.index()][stat as usize], model.stats[dir.index()][stat as usize]);
            if g != w {
                diff.push(format!(
                    "stat {}/{}: kernel {g}, reference {w}",
                    dir.as_str(),
                    stat.as_str()
                ));
            }
        }
    }
    diff.sort();
    Ok((!diff.is_empty()).then(|| diff.join("; ")))
}

/// Replays a batch one frame at a time on a fresh instance; names each frame whose own effect
/// differs from the prediction.
fn localise(lan: &[IpNet], frames: &[(Frame, Expected)]) -> anyhow::Result<Vec<String>> {
    let mut kernel = Kernel::load(lan)?;
    let mut out = Vec::new();
    for (frame, expected) in frames {
        let mut model = Model::default();
        if let Expected::Runs { outcome, bytes } = expected {
            model.apply(frame.dir, *outcome, *bytes);
        }
        kernel.run(frame.dir, &frame.bytes)?;
        if let Some(diff) = compare(&kernel, &model)? {
            out.push(format!(
                "{} frame, {} bytes ({}): predicted {expected:?}; {diff}\n{}",
                frame.dir.as_str(),
                frame.bytes.len(),
                frame.label,
                hex(&frame.bytes)
            ));
        }
        retire_all(&mut kernel)?;
        kernel.rebase()?;
    }
    Ok(out)
}

/// The first 128 bytes of a frame in hex, for a mismatch report.
pub fn hex(b: &[u8]) -> String {
    let shown: Vec<String> = b.iter().take(128).map(|x| format!("{x:02x}")).collect();
    let mut s =
        shown.chunks(16).map(|c| format!("  {}", c.join(" "))).collect::<Vec<_>>().join("\n");
    if b.len() > 128 {
        s.push_str(&format!("\n  ... ({} bytes in all)", b.len()));
    }
    s
}
