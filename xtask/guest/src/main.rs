//! The kernel matrix's checker (`cargo xtask test` boots each matrix kernel under qemu with an
//! initramfs holding busybox, the kernel's network modules and this program, static musl).
//!
//! Inside the guest it loads the sensor's programs with and without kernel BTF and with naming
//! events on, then, for each interface and attach mode (a veth with native and with generic
//! XDP, a bridge `br-lan`), attaches them as the agent does, sends known frames both ways
//! through AF_PACKET sockets and checks the kernel's counts (flows, client totals, outcome
//! stats) and naming events (DNS answer via TC, HTTP request and TLS ClientHello via XDP's
//! capture) exactly against what it sent. One JSON line per check on stdout (the serial
//! console), each prefixed `MATRIX `; the host builds docs/deploy.md's table from them.

mod frames;
mod net;

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use aya::maps::{MapInfo, RingBuf};
use ipnet::IpNet;
use sensor::{
    common::{Counters, Direction, EVENT_DATA_MAX, EventKind, EventOutcome, FlowKey, Stat, names},
    kernel::{
        KernelError,
        collector::{KernelMaps, Snapshot},
        events::{Observation, decode},
        links::{self, Hook, LinkPins},
        loader::{
            KeptMaps, LoadOptions, STAGED_DIR, TcAttach, XdpMode, attach, attach_pinned,
            install_capture, load, load_with_events, verify_for_test_runs,
        },
    },
};

use crate::frames::Traffic;

const LAN: &str = "192.168.1.0/24";

fn main() {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let btf = std::path::Path::new("/sys/kernel/btf/vmlinux").exists();
    emit("kernel", true, &format!("{} btf={btf}", kernel.trim()));

    let mut all_ok = true;
    let mut check = |name: &str, result: Result<String>| {
        let (ok, detail) = match result {
            Ok(detail) => (true, detail),
            Err(e) => (false, format!("{e:#}")),
        };
        all_ok &= ok;
        emit(name, ok, &detail);
    };

    // Kernels older than the minimum are refused at startup by design (one line naming the
    // missing feature): that refusal is this kernel's result.
    let prefixes = lan();
    if let Err(e @ KernelError::KernelTooOld { .. }) = load(&options(&prefixes, false)) {
        emit("refused", true, &e.to_string());
        emit("done", true, "");
        return;
    }

    check("load-no-btf", load_check(false, 0));
    check("load-btf", if btf { load_check(true, 0) } else { Err(anyhow::anyhow!("no BTF")) });
    check("load-events", load_check(false, 100));

    check("veth-xdp-driver", traffic_check(Setup::Veth, XdpMode::Driver, TcAttach::Auto, true));
    check(
        "veth-xdp-generic",
        traffic_check(Setup::Veth, XdpMode::Generic, TcAttach::Netlink, false),
    );
    check("br-lan", traffic_check(Setup::Bridge, XdpMode::Auto, TcAttach::Auto, false));
    check("restart", restart_check());
    emit("done", all_ok, "");
}

fn emit(check: &str, ok: bool, detail: &str) {
    let line = serde_json::json!({ "check": check, "ok": ok, "detail": detail });
    println!("MATRIX {line}");
}

fn lan() -> Vec<IpNet> {
    vec![LAN.parse().expect("a valid prefix")]
}

fn options(prefixes: &[IpNet], kernel_btf: bool) -> LoadOptions<'_> {
    LoadOptions {
        lan_prefixes: prefixes,
        flow_capacity: 1024,
        client_capacity: 64,
        pin_dir: None,
        kernel_btf,
    }
}

/// Loads and verifies every program (XDP, TC, the XDP baseline and the event capture).
fn load_check(kernel_btf: bool, events_per_sec: u32) -> Result<String> {
    let prefixes = lan();
    let start = Instant::now();
    let (mut ebpf, _) = load_with_events(&options(&prefixes, kernel_btf), events_per_sec)
        .context("loading the object")?;
    install_capture(&mut ebpf).context("verifying the XDP capture program")?;
    // The TC ingress program is optional for the agent (refused, uploads fall back to
    // generic XDP): its verdict is reported, not a failure.
    let ingress = match verify_for_test_runs(&mut ebpf) {
        Ok(()) => "",
        Err(sensor::kernel::KernelError::Verify { program: "TC ingress", .. }) => {
            "; TC ingress refused by this verifier (uploads on generic XDP where no native XDP)"
        }
        Err(e) => return Err(e).context("verifying the XDP and TC programs"),
    };
    if events_per_sec == 0 && ingress.is_empty() {
        // The plain loader is the agent's path with events off: the same object.
        drop(ebpf);
        let (mut ebpf, _) = load(&options(&prefixes, kernel_btf))?;
        verify_for_test_runs(&mut ebpf)?;
    }
    Ok(format!("verified in {:.1}s{ingress}", start.elapsed().as_secs_f64()))
}

#[derive(Clone, Copy, PartialEq)]
enum Setup {
    /// The sensor on `lan0`, a veth whose peer `cli0` is the client's side.
    Veth,
    /// The sensor on `br-lan`, a bridge whose port `port0` is a veth to the client's `cli0`.
    Bridge,
}

/// Attaches as the agent does, sends [`Traffic`] through the interface both ways, and checks
/// the counts and events exactly.
fn traffic_check(setup: Setup, xdp: XdpMode, tc: TcAttach, kernel_btf: bool) -> Result<String> {
    let iface = match setup {
        Setup::Veth => net::veth()?,
        Setup::Bridge => net::bridge()?,
    };
    let result = run_traffic(&iface, xdp, tc, kernel_btf);
    net::teardown(&iface);
    result
}

fn run_traffic(iface: &net::Lan, xdp: XdpMode, tc: TcAttach, kernel_btf: bool) -> Result<String> {
    let prefixes = lan();
    let (mut ebpf, _) = load_with_events(&options(&prefixes, kernel_btf), 100)?;
    let attachment = attach(&mut ebpf, &iface.sensor, xdp, tc)
        .with_context(|| format!("attaching to {}", iface.sensor))?;
    let mut ring = RingBuf::try_from(ebpf.take_map(names::EVENTS).context("no EVENTS map")?)?;
    let maps = KernelMaps::take(&mut ebpf)?;

    let traffic = Traffic::new(iface.sensor_mac);
    let sockets = Sockets::new(iface)?;
    sockets.send(&traffic)?;

    // The frames cross the veth asynchronously (NAPI); wait until the counts settle.
    let want = traffic.expected();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut snap = maps.read()?;
    while !matches(&snap, &want) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        snap = maps.read()?;
    }
    std::thread::sleep(Duration::from_millis(300));
    let snap = maps.read()?;
    compare(&snap, &want)?;

    // Naming events: each payload handed up whole, in chunks of at most EVENT_DATA_MAX placed
    // by their offsets; one event per packet in the kernel's stats.
    let mut seen: Vec<Observation> = Vec::new();
    while let Some(record) = ring.next() {
        seen.push(decode(&record).context("an undecodable event record")?);
    }
    let wanted: Vec<_> = traffic.events().collect();
    for w in &wanted {
        let mut chunks: Vec<&Observation> =
            seen.iter().filter(|o| o.kind == w.kind && o.key == w.key && o.seq == w.seq).collect();
        chunks.sort_by_key(|o| o.chunk_off);
        let offsets: Vec<u16> = chunks.iter().map(|o| o.chunk_off).collect();
        let want_offsets: Vec<u16> = (0..w.payload.len().div_ceil(EVENT_DATA_MAX))
            .map(|i| (i * EVENT_DATA_MAX) as u16)
            .collect();
        ensure!(
            offsets == want_offsets,
            "{:?} event chunks at offsets {offsets:?} (want {want_offsets:?})",
            w.kind
        );
        let joined: Vec<u8> = chunks.iter().flat_map(|o| o.data.iter().copied()).collect();
        ensure!(joined == w.payload, "{:?} event carries other bytes than were sent", w.kind);
    }
    for kind in EventKind::ALL {
        let want = wanted.iter().filter(|w| w.kind == kind).count() as u64;
        let sent = snap.event(kind, EventOutcome::Sent);
        ensure!(sent == want, "{kind:?} events sent per the kernel's stats: {sent} (want {want})");
    }
    let chunks: usize = wanted.iter().map(|w| w.payload.len().div_ceil(EVENT_DATA_MAX)).sum();
    ensure!(
        seen.len() == chunks,
        "event records in the ring buffer: {} (want {chunks})",
        seen.len()
    );
    let (up, down) = (want.totals(Direction::Upload), want.totals(Direction::Download));
    Ok(format!(
        "xdp={} tc={}; exact: up {}p/{}B, down {}p/{}B; events dns+http+tls+tls_segment+quic",
        attachment.xdp_mode, attachment.tc_mode, up.0, up.1, down.0, down.1
    ))
}

/// What a crash does to the agent's pinned attachments (issue 14): loads and attaches on a veth
/// as the agent does (links pinned), drops everything as a dying process would, sends the
/// frames while no process holds the programs, then loads afresh and attaches again, which
/// must adopt the links (same link, program swapped), and the pinned maps must hold exactly
/// what was sent.
fn restart_check() -> Result<String> {
    let iface = net::veth()?;
    let pins = std::path::Path::new("/sys/fs/bpf/matrix-restart");
    let result = run_restart(&iface, pins);
    let cleanup = links::detach(pins, &iface.sensor)
        .map_err(anyhow::Error::from)
        .and_then(|_| Ok(sensor::kernel::loader::unpin_maps(pins)?));
    net::teardown(&iface);
    let result = result?;
    cleanup.context("sensor detach --maps")?;
    Ok(result)
}

fn run_restart(iface: &net::Lan, pins: &std::path::Path) -> Result<String> {
    let prefixes = lan();
    let opts = LoadOptions { pin_dir: Some(pins), ..options(&prefixes, false) };
    let (mut ebpf, _) = load_with_events(&opts, 100).context("first load")?;
    let (xdp, tc) = (XdpMode::Driver, TcAttach::Auto);
    attach_pinned(&mut ebpf, &iface.sensor, xdp, tc, pins).context("first attach")?;
    let link_pins = LinkPins::new(pins);
    let hooks = [Hook::XdpDriver, Hook::TcxEgress];
    let before_first = hooks.map(|h| link_pins.info(h));
    drop(ebpf);

    let traffic = Traffic::new(iface.sensor_mac);
    let sockets = Sockets::new(iface)?;
    sockets.send(&traffic)?;
    // Counted by the orphaned programs into the pinned maps, read through a fresh load.
    let (mut ebpf, _) = load_with_events(&opts, 100).context("second load")?;
    let attachment =
        attach_pinned(&mut ebpf, &iface.sensor, xdp, tc, pins).context("second attach")?;
    let before = hooks.map(|h| link_pins.info(h));
    let adopted = adopted_links(&link_pins, &hooks, before_first)?;
    let maps = KernelMaps::take(&mut ebpf)?;
    let want = traffic.expected();
    wait_counted(&maps, &want).context("counted while no process held the programs")?;
    drop((maps, ebpf));

    // A build with another map layout: stood in for by a pinned STATS of another layout (this
    // build's EVENT_RATE map). The next load makes new maps; the attach swaps its programs into
    // the same links, then puts the new maps in place of the pins.
    let stats = pins.join(names::STATS);
    std::fs::remove_file(&stats).context("removing the STATS pin")?;
    let (other, _) = load(&options(&prefixes, false)).context("loading a private set of maps")?;
    other
        .map(names::EVENT_RATE)
        .context("no EVENT_RATE map in the object")?
        .pin(&stats)
        .context("pinning the stand-in STATS")?;
    drop(other);
    let stand_in = MapInfo::from_pin(&stats).context("reading the stand-in STATS")?.id();
    let (mut ebpf, loaded) = load_with_events(&opts, 100).context("load over another layout")?;
    ensure!(loaded.kept == KeptMaps::default(), "maps of another layout kept: {:?}", loaded.kept);
    attach_pinned(&mut ebpf, &iface.sensor, xdp, tc, pins).context("attach over another layout")?;
    adopted_links(&link_pins, &hooks, before).context("after the layout change")?;
    let info = MapInfo::from_pin(&stats).context("reading the new STATS pin")?;
    ensure!(
        info.id() != stand_in && info.value_size() == 8,
        "STATS pin not replaced: map {} with value size {}",
        info.id(),
        info.value_size()
    );
    ensure!(!pins.join(STAGED_DIR).exists(), "the staged maps were left");
    sockets.send(&traffic)?;
    let maps = KernelMaps::take(&mut ebpf)?;
    wait_counted(&maps, &want).context("counted into the new maps after the layout change")?;
    Ok(format!(
        "xdp={} tc={}; frames sent with no process holding the programs counted exactly; \
         adopted {}; a layout change kept the links and counted into new maps exactly",
        attachment.xdp_mode,
        attachment.tc_mode,
        adopted.join(", ")
    ))
}

/// The hooks whose pinned link is the one it was (`before`) with a new program in it: each
/// load's programs are new, so an adopted link shows a new program id on the same link id.
fn adopted_links(
    link_pins: &LinkPins,
    hooks: &[Hook],
    before: [std::io::Result<Option<links::PinnedInfo>>; 2],
) -> Result<Vec<&'static str>> {
    let mut adopted = Vec::new();
    for (hook, before) in hooks.iter().zip(before) {
        let (Some(before), Some(after)) = (before?, link_pins.info(*hook)?) else { continue };
        ensure!(
            after.id == before.id && after.prog_id != before.prog_id,
            "{}: not adopted (link {} -> {}, program {} -> {})",
            hook.pin_name(),
            before.id,
            after.id,
            before.prog_id,
            after.prog_id
        );
        adopted.push(hook.pin_name());
    }
    ensure!(!adopted.is_empty(), "no pinned link to adopt");
    Ok(adopted)
}

/// Waits up to 10 s for `maps` to hold exactly `want`.
fn wait_counted(maps: &KernelMaps, want: &Expected) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut snap = maps.read()?;
    while !matches(&snap, want) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        snap = maps.read()?;
    }
    compare(&snap, want)
}

/// Raw sockets on both ends of the LAN veth: the client's sends uploads, the sensor side's
/// downloads.
struct Sockets {
    up: net::PacketSocket,
    down: net::PacketSocket,
}

impl Sockets {
    fn new(iface: &net::Lan) -> Result<Sockets> {
        Ok(Sockets {
            up: net::PacketSocket::new(&iface.client)?,
            down: net::PacketSocket::new(&iface.sensor)?,
        })
    }

    /// Every frame of `traffic`, uploads then downloads.
    fn send(&self, traffic: &Traffic) -> Result<()> {
        for f in traffic.upload() {
            self.up.send(&f.bytes)?;
        }
        for f in traffic.download() {
            self.down.send(&f.bytes)?;
        }
        Ok(())
    }
}

/// What the kernel must have counted: per flow, and the outcome stats.
pub(crate) struct Expected {
    pub(crate) flows: Vec<(FlowKey, Counters)>,
    pub(crate) client_mac: [u8; 6],
}

impl Expected {
    /// (packets, bytes) in one direction over every flow.
    fn totals(&self, dir: Direction) -> (u64, u64) {
        let d = dir.index();
        self.flows.iter().fold((0, 0), |(p, b), (_, c)| (p + c.packets[d], b + c.bytes[d]))
    }
}

fn same(a: &Counters, b: &Counters) -> bool {
    a.packets == b.packets && a.bytes == b.bytes
}

fn matches(snap: &Snapshot, want: &Expected) -> bool {
    compare(snap, want).is_ok()
}

fn compare(snap: &Snapshot, want: &Expected) -> Result<()> {
    ensure!(
        snap.flows.len() == want.flows.len(),
        "{} flows counted, {} sent: {:?}",
        snap.flows.len(),
        want.flows.len(),
        snap.flows.iter().map(|(k, c)| (describe(k), c.packets, c.bytes)).collect::<Vec<_>>()
    );
    for (key, counters) in &want.flows {
        let Some((_, got)) = snap.flows.iter().find(|(k, _)| k == key) else {
            bail!("flow {} not counted", describe(key));
        };
        ensure!(
            same(got, counters),
            "flow {}: counted packets {:?} bytes {:?}, sent {:?} / {:?}",
            describe(key),
            got.packets,
            got.bytes,
            counters.packets,
            counters.bytes
        );
    }
    let mut total = Counters::default();
    for (_, c) in &want.flows {
        total.merge(c);
    }
    let client = snap.clients.get(&want.client_mac).copied().unwrap_or_default();
    ensure!(
        same(&client, &total) && snap.clients.len() == 1,
        "client totals {:?}/{:?} ({} clients), sent {:?}/{:?}",
        client.packets,
        client.bytes,
        snap.clients.len(),
        total.packets,
        total.bytes
    );
    for dir in [Direction::Upload, Direction::Download] {
        let counted = snap.stat(Stat::Counted, dir);
        let packets = want.totals(dir).0;
        ensure!(counted == packets, "{dir:?}: stat counted {counted}, sent {packets}");
        let other: u64 = Stat::ALL
            .iter()
            .filter(|s| !matches!(s, Stat::Seen | Stat::Counted))
            .map(|s| snap.stat(*s, dir))
            .sum();
        ensure!(other == 0, "{dir:?}: {other} packets with another outcome than counted");
    }
    Ok(())
}

fn describe(k: &FlowKey) -> String {
    let ip = |b: [u8; 16]| {
        let v6 = std::net::Ipv6Addr::from(b);
        v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
    };
    format!("{}->{}:{}/{}", ip(k.client_ip), ip(k.remote_ip), k.remote_port, k.protocol)
}

/// The client's address (in [`LAN`]).
pub(crate) const CLIENT4: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);
