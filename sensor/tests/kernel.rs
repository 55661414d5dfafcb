//! The kernel programs against hand-made frames, run with BPF_PROG_TEST_RUN: the parser and
//! the counters, checked exactly (flow keys, packets, bytes, client totals, every stat slot).
//!
//! Each test loads its own private instance (no pinning), so its maps start empty. Needs root
//! (CAP_BPF + CAP_SYS_ADMIN); skips loudly otherwise, and fails under CI=true or
//! GWSENSOR_TEST_REQUIRE_PRIVILEGED=1. No timings here: speed is `cargo xtask bench`'s job.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::Context as _;
use aya::{
    Ebpf,
    programs::{SchedClassifier, TestRun, TestRunOptions, TestRunResult, Xdp},
};
use etherparse::{PacketBuilder, VlanId};
use ipnet::IpNet;
use sensor::{
    common::{Direction, EventKind, EventOutcome, FlowKey, Stat, names},
    kernel::collector::{KernelMaps, Snapshot},
    kernel::loader::{LoadOptions, install_capture, load, load_with_events},
};

const XDP_PASS: u32 = 2;
/// TC_ACT_UNSPEC (-1) as the u32 the test run reports.
const TC_ACT_UNSPEC: u32 = u32::MAX;

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AH: u8 = 51;
const IPV6_DSTOPTS: u8 = 60;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

/// A LAN client (locally administered unicast MAC) and the gateway's LAN port.
const CLIENT_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
const CLIENT2_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
const GW_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0xfe];
const BROADCAST_MAC: [u8; 6] = [0xff; 6];
const MCAST4_MAC: [u8; 6] = [0x01, 0x00, 0x5e, 0x00, 0x00, 0x01];
const MCAST6_MAC: [u8; 6] = [0x33, 0x33, 0x00, 0x00, 0x00, 0x01];

const LAN: [&str; 2] = ["192.168.1.0/24", "fd00:1::/64"];
const CLIENT4: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);
const CLIENT4_B: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 11);
const REMOTE4: Ipv4Addr = Ipv4Addr::new(93, 184, 216, 34);
const OUTSIDE4: Ipv4Addr = Ipv4Addr::new(192, 168, 2, 10);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0x10);
const REMOTE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
const OUTSIDE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 0x10);

// ---------------------------------------------------------------------------------------------
// Privileges

fn privileged() -> bool {
    nix::unistd::geteuid().is_root()
        || lab::cannot_run(
            "kernel tests",
            "need root (to load eBPF programs and run BPF_PROG_TEST_RUN)",
        )
}

/// Skips the test (returns) unless privileged.
macro_rules! require_root {
    () => {
        if !privileged() {
            return;
        }
    };
}

// ---------------------------------------------------------------------------------------------
// A private instance of the programs

struct Sensor {
    ebpf: Ebpf,
    maps: KernelMaps,
}

impl Sensor {
    fn new() -> Sensor {
        Sensor::with_btf(false).expect("loading the eBPF programs")
    }

    fn with_btf(kernel_btf: bool) -> anyhow::Result<Sensor> {
        Sensor::with_options(kernel_btf, 4096, 256)
    }

    /// Small maps, to make the flow LRU evict or the client slots run out.
    fn with_capacities(flow_capacity: u32, client_capacity: u32) -> Sensor {
        Sensor::with_options(false, flow_capacity, client_capacity)
            .expect("loading the eBPF programs")
    }

    fn with_options(
        kernel_btf: bool,
        flow_capacity: u32,
        client_capacity: u32,
    ) -> anyhow::Result<Sensor> {
        let prefixes: Vec<IpNet> = LAN.iter().map(|p| p.parse().unwrap()).collect();
        let (mut ebpf, _) = load(&LoadOptions {
            lan_prefixes: &prefixes,
            flow_capacity,
            client_capacity,
            pin_dir: None,
            kernel_btf,
        })?;
        for name in [names::XDP_PROGRAM, names::XDP_PASS_PROGRAM] {
            let prog: &mut Xdp =
                ebpf.program_mut(name).with_context(|| format!("{name} missing"))?.try_into()?;
            prog.load().with_context(|| format!("verifying {name}"))?;
        }
        let tc: &mut SchedClassifier =
            ebpf.program_mut(names::TC_PROGRAM).context("TC program missing")?.try_into()?;
        tc.load().context("verifying the TC program")?;
        let maps = KernelMaps::take(&mut ebpf)?;
        Ok(Sensor { ebpf, maps })
    }

    fn xdp_run(&self, name: &str, opts: TestRunOptions<'_>) -> anyhow::Result<TestRunResult> {
        let prog: &Xdp = self.ebpf.program(name).unwrap().try_into()?;
        Ok(prog.test_run(opts)?)
    }

    fn tc_run(&self, opts: TestRunOptions<'_>) -> anyhow::Result<TestRunResult> {
        let prog: &SchedClassifier = self.ebpf.program(names::TC_PROGRAM).unwrap().try_into()?;
        Ok(prog.test_run(opts)?)
    }

    /// One frame through the XDP program (upload direction).
    fn upload(&self, frame: &[u8]) {
        let r = self
            .xdp_run(
                names::XDP_PROGRAM,
                TestRunOptions { data_in: Some(frame), repeat: 1, ..Default::default() },
            )
            .unwrap_or_else(|e| panic!("XDP test run of a {}-byte frame: {e:#}", frame.len()));
        assert_eq!(r.return_value, XDP_PASS, "the XDP program must always pass the packet");
    }

    /// One frame through the TC program (download direction).
    fn download(&self, frame: &[u8]) {
        let r = self
            .tc_run(TestRunOptions { data_in: Some(frame), repeat: 1, ..Default::default() })
            .unwrap_or_else(|e| panic!("TC test run of a {}-byte frame: {e:#}", frame.len()));
        assert_eq!(
            r.return_value, TC_ACT_UNSPEC,
            "the TC program must always return TC_ACT_UNSPEC"
        );
    }

    fn snapshot(&self) -> Snapshot {
        self.maps.read().expect("reading the maps")
    }
}

// ---------------------------------------------------------------------------------------------
// Expectations

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
struct Count {
    packets: [u64; 2],
    bytes: [u64; 2],
}

/// Upload counts of frames with these lengths.
fn up(frames: &[&[u8]]) -> Count {
    Count {
        packets: [frames.len() as u64, 0],
        bytes: [frames.iter().map(|f| f.len() as u64).sum(), 0],
    }
}

/// Download counts of frames with these lengths.
fn down(frames: &[&[u8]]) -> Count {
    Count {
        packets: [0, frames.len() as u64],
        bytes: [0, frames.iter().map(|f| f.len() as u64).sum()],
    }
}

impl std::ops::Add for Count {
    type Output = Count;
    fn add(self, o: Count) -> Count {
        Count {
            packets: [self.packets[0] + o.packets[0], self.packets[1] + o.packets[1]],
            bytes: [self.bytes[0] + o.bytes[0], self.bytes[1] + o.bytes[1]],
        }
    }
}

fn ip16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn key(
    mac: [u8; 6],
    client: impl Into<IpAddr>,
    remote: impl Into<IpAddr>,
    protocol: u8,
    port: u16,
) -> FlowKey {
    FlowKey {
        client_ip: ip16(client.into()),
        remote_ip: ip16(remote.into()),
        client_mac: mac,
        remote_port: port,
        protocol,
        _pad: [0; 7],
    }
}

fn show_key(k: &FlowKey) -> String {
    let ip = |b: [u8; 16]| {
        let v6 = Ipv6Addr::from(b);
        v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6))
    };
    format!(
        "{} {} -> {} proto {} port {}",
        mac_text(&k.client_mac),
        ip(k.client_ip),
        ip(k.remote_ip),
        k.protocol,
        k.remote_port
    )
}

fn mac_text(m: &[u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Asserts the whole state of the maps: exactly these flows, exactly these clients, and every
/// stat slot zero except those listed.
fn check(
    snap: &Snapshot,
    flows: &[(FlowKey, Count)],
    clients: &[([u8; 6], Count)],
    stats: &[(Direction, Stat, u64)],
) {
    let got_flows: BTreeMap<String, Count> = snap
        .flows
        .iter()
        .map(|(k, c)| (show_key(k), Count { packets: c.packets, bytes: c.bytes }))
        .collect();
    let want_flows: BTreeMap<String, Count> =
        flows.iter().map(|(k, c)| (show_key(k), *c)).collect();
    assert_eq!(
        got_flows, want_flows,
        "flows (key: client MAC, client IP -> remote IP, protocol, remote port)"
    );
    // The rendering above is lossless for every field but the padding; check it too.
    for (k, _) in &snap.flows {
        assert_eq!(k._pad, [0; 7], "padding of {}", show_key(k));
    }
    assert_eq!(got_flows.len(), snap.flows.len(), "a flow read twice");
    for c in snap.flows.iter().map(|(_, c)| c).chain(snap.clients.values()) {
        assert!(c.first_seen_ns > 0 && c.last_seen_ns >= c.first_seen_ns, "timestamps {c:?}");
    }

    let got_clients: BTreeMap<String, Count> = snap
        .clients
        .iter()
        .map(|(m, c)| (mac_text(m), Count { packets: c.packets, bytes: c.bytes }))
        .collect();
    let want_clients: BTreeMap<String, Count> =
        clients.iter().map(|(m, c)| (mac_text(m), *c)).collect();
    assert_eq!(got_clients, want_clients, "client totals");

    let mut want = [[0u64; Stat::COUNT]; 2];
    for &(dir, stat, n) in stats {
        want[dir.index()][stat as usize] += n;
    }
    let render = |s: &[[u64; Stat::COUNT]; 2]| -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for dir in Direction::ALL {
            for stat in Stat::ALL {
                let n = s[dir.index()][stat as usize];
                if n != 0 {
                    m.insert(
                        format!("{}/{} (slot {})", dir.as_str(), stat.as_str(), stat.slot(dir)),
                        n,
                    );
                }
            }
        }
        m
    };
    assert_eq!(render(&snap.stats), render(&want), "STATS slots (all others must be 0)");
}

/// One frame that must not be counted: only `seen` and `stat` move, in that direction.
fn assert_rejected(dir: Direction, frame: &[u8], stat: Stat) {
    let s = Sensor::new();
    match dir {
        Direction::Upload => s.upload(frame),
        Direction::Download => s.download(frame),
    }
    check(&s.snapshot(), &[], &[], &[(dir, Stat::Seen, 1), (dir, stat, 1)]);
}

/// The frame through both programs (the reason must not depend on the direction).
fn assert_rejected_both(frame: &[u8], stat: Stat) {
    assert_rejected(Direction::Upload, frame, stat);
    if skb_test_run_takes(frame) {
        assert_rejected(Direction::Download, frame, stat);
    }
}

/// The skb test run (TC) refuses, with EINVAL, a frame whose EtherType is IPv4 or IPv6 but
/// that lacks the full fixed IP header (the kernel reads the addresses out of it); on a real
/// egress path such an skb cannot exist either. Those frames go through XDP only; the
/// truncation tests give them VLAN-tagged twins, which the kernel hands to TC as they are.
fn skb_test_run_takes(frame: &[u8]) -> bool {
    match frame.get(12..14).map(|t| u16::from_be_bytes([t[0], t[1]])) {
        Some(ETH_P_IP) => frame.len() >= ETH_HLEN + 20,
        Some(ETH_P_IPV6) => frame.len() >= ETH_HLEN + 40,
        _ => true,
    }
}

// ---------------------------------------------------------------------------------------------
// Frames built by etherparse

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// Serialises a PacketBuilder step with an `n`-byte payload.
macro_rules! build {
    ($builder:expr, $n:expr) => {{
        let b = $builder;
        let p = payload($n);
        let mut f = Vec::with_capacity(b.size(p.len()));
        b.write(&mut f, &p).unwrap();
        f
    }};
}

fn vid(v: u16) -> VlanId {
    VlanId::try_new(v).unwrap()
}

fn udp4(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    n: usize,
) -> Vec<u8> {
    build!(
        PacketBuilder::ethernet2(src_mac, dst_mac)
            .ipv4(src.octets(), dst.octets(), 64)
            .udp(sport, dport),
        n
    )
}

fn tcp4(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    n: usize,
) -> Vec<u8> {
    build!(
        PacketBuilder::ethernet2(src_mac, dst_mac)
            .ipv4(src.octets(), dst.octets(), 64)
            .tcp(sport, dport, 1000, 64240),
        n
    )
}

fn udp6(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    sport: u16,
    dport: u16,
    n: usize,
) -> Vec<u8> {
    build!(
        PacketBuilder::ethernet2(src_mac, dst_mac)
            .ipv6(src.octets(), dst.octets(), 64)
            .udp(sport, dport),
        n
    )
}

fn tcp6(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    sport: u16,
    dport: u16,
    n: usize,
) -> Vec<u8> {
    build!(
        PacketBuilder::ethernet2(src_mac, dst_mac)
            .ipv6(src.octets(), dst.octets(), 64)
            .tcp(sport, dport, 1000, 64240),
        n
    )
}

// ---------------------------------------------------------------------------------------------
// Frames built by hand (what etherparse cannot express, or must not fix up)

fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(1514);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// A VLAN tag: TCI (PCP 0, DEI 0, VID) and the EtherType that follows it.
fn tag(vid: u16, next: u16) -> [u8; 4] {
    let [a, b] = vid.to_be_bytes();
    let [c, d] = next.to_be_bytes();
    [a, b, c, d]
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 header with IHL `ihl` (32-bit words; the bytes past 20 are NOP options) and the
/// flags/fragment-offset field `frag`. For IHL below 5 it still writes 20 bytes.
fn ipv4(
    ihl: u8,
    protocol: u8,
    frag: u16,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    payload_len: usize,
) -> Vec<u8> {
    let hlen = (usize::from(ihl) * 4).max(20);
    let mut h = vec![0x01u8; hlen];
    h[0] = 0x40 | ihl;
    h[1] = 0;
    h[2..4].copy_from_slice(&((hlen + payload_len) as u16).to_be_bytes());
    h[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = 64;
    h[9] = protocol;
    h[10..12].copy_from_slice(&[0, 0]);
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let sum = checksum(&h);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    h
}

fn ipv6(next: u8, payload_len: usize, src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
    let mut h = vec![0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&(payload_len as u16).to_be_bytes());
    h[6] = next;
    h[7] = 64;
    h[8..24].copy_from_slice(&src.octets());
    h[24..40].copy_from_slice(&dst.octets());
    h
}

/// A UDP header and `n` bytes of payload (checksum 0: "none" for IPv4, and unchecked here).
fn udp(sport: u16, dport: u16, n: usize) -> Vec<u8> {
    let mut h = Vec::with_capacity(8 + n);
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&((8 + n) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend(payload(n));
    h
}

/// A 20-byte TCP header (ACK) and `n` bytes of payload.
fn tcp(sport: u16, dport: u16, n: usize) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..8].copy_from_slice(&1000u32.to_be_bytes());
    h[12] = 5 << 4;
    h[13] = 0x10;
    h[14..16].copy_from_slice(&64240u16.to_be_bytes());
    h.extend(payload(n));
    h
}

/// Hop-by-hop or destination options header: `(units + 1) * 8` bytes, filled with one PadN.
fn opts_ext(next: u8, units: u8) -> Vec<u8> {
    let len = (usize::from(units) + 1) * 8;
    let mut h = vec![0u8; len];
    h[0] = next;
    h[1] = units;
    h[2] = 1; // PadN
    h[3] = (len - 4) as u8;
    h
}

/// Routing header (type 4, segment routing, segments left 0): `(units + 1) * 8` bytes.
fn routing_ext(next: u8, units: u8) -> Vec<u8> {
    let mut h = vec![0u8; (usize::from(units) + 1) * 8];
    h[0] = next;
    h[1] = units;
    h[2] = 4;
    h[3] = 0;
    h
}

/// Fragment header: offset in 8-byte units, M flag.
fn fragment_ext(next: u8, offset: u16, more: bool) -> Vec<u8> {
    let mut h = vec![0u8; 8];
    h[0] = next;
    h[2..4].copy_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
    h[4..8].copy_from_slice(&0xdead_beefu32.to_be_bytes());
    h
}

/// Authentication header: its length counts 4-byte units minus 2 (payload length 4 = 24 bytes).
fn ah_ext(next: u8) -> Vec<u8> {
    let mut h = vec![0u8; 24];
    h[0] = next;
    h[1] = 4;
    h[4..8].copy_from_slice(&0x100u32.to_be_bytes()); // SPI
    h[8..12].copy_from_slice(&1u32.to_be_bytes()); // sequence
    h
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// An IPv6 frame from the client: the header, then `chain` (extension headers and L4 bytes).
fn ipv6_frame(first_next: u8, chain: &[&[u8]]) -> Vec<u8> {
    let rest = cat(chain);
    cat(&[
        &eth(GW_MAC, CLIENT_MAC, ETH_P_IPV6),
        &ipv6(first_next, rest.len(), CLIENT6, REMOTE6),
        &rest,
    ])
}

/// An IPv4 frame from the client with a hand-made header.
fn ipv4_frame(ihl: u8, protocol: u8, frag: u16, l4: &[u8]) -> Vec<u8> {
    cat(&[
        &eth(GW_MAC, CLIENT_MAC, ETH_P_IP),
        &ipv4(ihl, protocol, frag, CLIENT4, REMOTE4, l4.len()),
        l4,
    ])
}

// ---------------------------------------------------------------------------------------------
// Loading

#[test]
fn loads_without_and_with_kernel_btf() {
    require_root!();
    for kernel_btf in [false, true] {
        let mut s = Sensor::with_btf(kernel_btf)
            .unwrap_or_else(|e| panic!("load with kernel_btf={kernel_btf}: {e:#}"));
        // The event capture program the XDP program tail-calls (the agent loads it first).
        install_capture(&mut s.ebpf)
            .unwrap_or_else(|e| panic!("capture program, kernel_btf={kernel_btf}: {e:#}"));
        let f = udp4(CLIENT_MAC, GW_MAC, CLIENT4, REMOTE4, 40000, 53, 32);
        s.upload(&f);
        check(
            &s.snapshot(),
            &[(key(CLIENT_MAC, CLIENT4, REMOTE4, IPPROTO_UDP, 53), up(&[&f]))],
            &[(CLIENT_MAC, up(&[&f]))],
            &[(Direction::Upload, Stat::Seen, 1), (Direction::Upload, Stat::Counted, 1)],
        );
    }
}

/// With naming events on, the event paths are live (with them off, the verifier prunes them as
/// dead code): both programs and the capture program must load, and events must go out.
#[test]
fn loads_and_sends_events_with_naming_events_on() {
    require_root!();
    let prefixes: Vec<IpNet> = LAN.iter().map(|p| p.parse().unwrap()).collect();
    let opts = LoadOptions {
        lan_prefixes: &prefixes,
        flow_capacity: 4096,
        client_capacity: 256,
        pin_dir: None,
        kernel_btf: false,
    };
    let (mut ebpf, _) = load_with_events(&opts, 100).expect("loading with events on");
    install_capture(&mut ebpf).expect("verifying the capture program");
    let xdp: &mut Xdp = ebpf.program_mut(names::XDP_PROGRAM).unwrap().try_into().unwrap();
    xdp.load().expect("verifying the XDP program with events on");
    let tc: &mut SchedClassifier = ebpf.program_mut(names::TC_PROGRAM).unwrap().try_into().unwrap();
    tc.load().expect("verifying the TC program with events on");
    let maps = KernelMaps::take(&mut ebpf).unwrap();
    let s = Sensor { ebpf, maps };

    // A DNS answer to a client (TC) and an HTTP request from it (XDP, through the tail call).
    let dns = udp4(GW_MAC, CLIENT_MAC, REMOTE4, CLIENT4, 53, 51000, 60);
    let mut http = tcp4(CLIENT_MAC, GW_MAC, CLIENT4, REMOTE4, 40000, 80, 0);
    http.extend_from_slice(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n");
    s.download(&dns);
    s.upload(&http);
    let snap = s.snapshot();
    assert_eq!(snap.event(EventKind::DnsResponse, EventOutcome::Sent), 1);
    assert_eq!(snap.event(EventKind::HttpRequest, EventOutcome::Sent), 1);
}

#[test]
fn baseline_program_passes_and_counts_nothing() {
    require_root!();
    let s = Sensor::new();
    let f = udp4(CLIENT_MAC, GW_MAC, CLIENT4, REMOTE4, 40000, 53, 32);
    let r = s
        .xdp_run(
            names::XDP_PASS_PROGRAM,
            TestRunOptions { data_in: Some(&f), repeat: 1, ..Default::default() },
        )
        .unwrap();
    assert_eq!(r.return_value, XDP_PASS);
    check(&s.snapshot(), &[], &[], &[]);
}

// ---------------------------------------------------------------------------------------------
// Upload (XDP): client = source, remote port = destination port

/// One upload frame, counted under `k`.
fn assert_counted_upload(frame: &[u8], k: FlowKey) {
    let s = Sensor::new();
    s.upload(frame);
    check(
        &s.snapshot(),
        &[(k, up(&[frame]))],
        &[(k.client_mac, up(&[frame]))],
        &[(Direction::Upload, Stat::Seen, 1), (Direction::Upload, Stat::Counted, 1)],
    );
}

/// One download frame, counted under `k`.
fn assert_counted_download(frame: &[u8], k: FlowKey) {
    let s = Sensor::new();
    s.download(frame);
    check(
        &s.snapshot(),
        &[(k, down(&[frame]))],
        &[(k.client_mac, down(&[frame]))],
        &[(Direction::Download, Stat::Seen, 1), (Direction::Download, Stat::Counted, 1)],
    );
}

#[test]
fn upload_ipv4_tcp() {
    require_root!();
    let f = tcp4(CLIENT_MAC, GW_MAC, CLIENT4, REMOTE4, 40000, 443, 100);
    assert_eq!(f.len(), 14 + 20 + 20 + 100);
    assert_counted_upload(&f, key(CLIENT_MAC, CLIENT4, REMOTE4, IPPROTO_TCP, 443));
}

#[test]
fn upload_ipv4_udp() {
    require_root!();
    let f = udp4(CLIENT_MAC, GW_MAC, CLIENT4, REMOTE4, 51000, 53, 40);
    assert_counted_upload(&f, key(CLIENT_MAC, CLIENT4, REMOTE4, IPPROTO_UDP, 53));
}

#[test]
fn upload_ipv4_icmp_has_port_0() {
    require_root!();
    let f = build!(
        PacketBuilder::ethernet2(CLIENT_MAC, GW_MAC)
            .ipv4(CLIENT4.octets(), REMOTE4.octets(), 64)
            .icmpv4_echo_request(7, 1),
        56
    );
    assert_counted_upload(&f, key(CLIENT_MAC, CLIENT4, REMOTE4, IPPROTO_ICMP, 0));
}

#[test]
fn upload_ipv6_tcp() {
    require_root!();
    let f = tcp6(CLIENT_MAC, GW_MAC, CLIENT6, REMOTE6, 40000, 443, 1200);
    assert_eq!(f.len(), 14 + 40 + 20 + 1200);
    assert_counted_upload(&f, key(CLIENT_MAC, CLIENT6, REMOTE6, IPPROTO_TCP, 443));
}

#[test]
fn upload_ipv6_udp() {
    require_root!();
    let f = udp6(CLIENT_MAC, GW_MAC, CLIENT6, REMOTE6, 51000, 443, 1350);
    assert_counted_upload(&f, key(CLIENT_MAC, CLIENT6, REMOTE6, IPPROTO_UDP, 443));
}

#[test]
fn upload_ipv6_icmpv6_has_port_0() {
    require_root!();
    let f = build!(
        PacketBuilder::ethernet2(CLIENT_MAC, GW_MAC)
            .ipv6(CLIENT6.octets(), REMOTE6.octets(), 64)
            .icmpv6_echo_request(7, 1),
        56
    );
    assert_counted_upload(&f, key(CLIENT_MAC, CLIENT6, REMOTE6, IPPROTO_ICMPV6, 0));
}

#[test]
fn upload_other_protocol_has_port_0() {
    require_root!();
    // GRE (47): counted, no port.
    let f = ipv4_frame(5, 47, 0, &payload(24));
    assert_counted_upload(&f, key(CLIENT_MAC, CLIENT4, REMOTE4, 47, 0));
}

#[test]
fn upload_counts_ethernet_padding_as_frame_bytes() {
    require_root!();
    // A 42-byte UDP frame padded to the 60-byte Ethernet minimum: bytes are the frame's, not
    // the IP total length's.
    let mut f = udp4(CLIENT_MAC, GW_MAC, CLIENT4, REMOTE4, 51000, 123, 0);
    assert_eq!(f.len(), 42);
    f.resize(60, 0);
    assert_counted_upload(&f, key(CLIENT_MAC, CLIENT4, REMOTE4, IPPROTO_UDP, 123));
}

// ---------------------------------------------------------------------------------------------
// Download (TC): client = destination, remote port = source port

#[test]
fn download_ipv4_tcp() {
    require_root!();
    let f = tcp4(GW_MAC, CLIENT_MAC, REMOTE4, CLIENT4, 443, 40000, 1400);
    let s = Sensor::new();
    // The context the kernel built, read back: a test-run skb is not GSO (gso_segs 0), and the
    // bytes counted below equal the frame length, so no VLAN metadata (+4) was added either.
    let mut ctx_out = [0xffu8; 192];
    let r = s
        .tc_run(TestRunOptions {
            data_in: Some(&f),
            ctx_out: Some(&mut ctx_out),
            repeat: 1,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.return_value, TC_ACT_UNSPEC);
    let gso_segs = u32::from_ne_bytes(ctx_out[164..168].try_into().unwrap());
    assert_eq!(gso_segs, 0, "__sk_buff.gso_segs of a test-run skb");
    let k = key(CLIENT_MAC, CLIENT4, REMOTE4, IPPROTO_TCP, 443);
    check(
        &s.snapshot(),
        &[(k, down(&[&f]))],
        &[(CLIENT_MAC, down(&[&f]))],
        &[(Direction::Download, Stat::Seen, 1), (Direction::Download, Stat::Counted, 1)],
    );
}

#[test]
fn download_ipv4_udp() {
    require_root!();
    let f = udp4(GW_MAC, CLIENT_MAC, REMOTE4, CLIENT4, 53, 51000, 120);
    assert_counted_download(&f, key(CLIENT_MAC, CLIENT4, REMOTE4, IPPROTO_UDP, 53));
}

#[test]
fn download_ipv6_tcp() {
    require_root!();
    let f = tcp6(GW_MAC, CLIENT_MAC, REMOTE6, CLIENT6, 443, 40000, 1400);
    assert_counted_download(&f, key(CLIENT_MAC, CLIENT6, REMOTE6, IPPROTO_TCP, 443));
}

#[test]
fn download_ipv6_udp() {
    require_root!();
    let f = udp6(GW_MAC, CLIENT_MAC, REMOTE6, CLIENT6, 443, 51000, 900);
    assert_counted_download(&f, key(CLIENT_MAC, CLIENT6, REMOTE6, IPPROTO_UDP, 443));
}

#[test]
fn download_icmp_and_icmpv6_have_port_0() {
    require_root!();
    let v4 = build!(
        PacketBuilder::ethernet2(GW_MAC, CLIENT_MAC)
            .ipv4(REMOTE4.octets(), CLIENT4.octets(), 64)
            .icmpv4_echo_reply(7, 1),
        56
    );
    let v6 = build!(
        PacketBuilder::ethernet2(GW_MAC, CLIENT_MAC)
            .ipv6(REMOTE6.octets(), CLIENT6.octets(), 64)
            .icmpv6_echo_reply(7, 1),
        56
    );
    let s = Sensor::new();
    s.download(&v4);
    s.download(&v6);
    check(
        &s.snapshot(),
        &[
            (key(CLIENT_MAC, CLIENT4, REMOTE4, IPPROTO_ICMP, 0), down(&[&v4])),
            (key(CLIENT_MAC, CLIENT6, REMOTE6, IPPROTO_ICMPV6, 0), down(&[&v6])),
        ],
        &[(CLIENT_MAC, down(&[&v4, &v6]))],
        &[(Direction::Download, Stat::Seen, 2), (Direction::Download, Stat::Counted, 2)],
    );
}

#[test]
fn upload_and_download_of_one_conversation_share_a_flow() {
    require_root!();
    let req = tcp4(CLIENT_MAC, GW_MAC, CLIENT4, REMOTE4, 40000, 443, 300);
    let resp = tcp4(GW_MAC, CLIENT_MAC, REMOTE4, CLIENT4, 443, 40000, 1400);
    let s = Sensor::new();
    s.upload(&req);
    s.download(&resp);
    let both = up(&[&req]) + down(&[&resp]);
    check(
        &s.snapshot(),
        &[(key(CLIENT_MAC, CLIENT4, REMOTE4, IPPROTO_TCP, 443), both)],
        &[(CLIENT_MAC, both)],
        &[
            (Direction::Upload, Stat::Seen, 1),
            (Direction::Upload, Stat::Counted, 1),
            (Direction::Download, Stat::Seen, 1),
            (Direction::Download, Stat::Counted, 1),
        ],
    );
}

/// GSO: one skb of `segs` segments is `segs` frames on the wire, each with its own copy of the
/// headers. The test run takes gso_segs/gso_size from the context we pass in.
fn gso_ctx(segs: u32, size: u32) -> [u8; 192] {
    let mut ctx = [0u8; 192];
    ctx[164..168].copy_from_slice(&segs.to_ne_bytes()); // __sk_buff.gso_segs
    ctx[176..180].copy_from_slice(&size.to_ne_bytes()); // __sk_buff.gso_size
    ctx
}

#[test]
fn download_gso_tcp_counts_every_segment_with_its_headers() {
    require_root!();
    // TCP with 12 bytes of options (NOP, NOP, timestamps): headers = 14 + 20 + 32 = 66.
    let opts = [1u8, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
    let f = build!(
        PacketBuilder::ethernet2(GW_MAC, CLIENT_MAC)
            .ipv4(REMOTE4.octets(), CLIENT4.octets(), 64)
            .tcp(443, 40000, 1, 64240)
            .options_raw(&opts)
            .unwrap(),
        3 * 1000
    );
    assert_eq!(f.len(), 66 + 3000);
    let s = Sensor::new();
    let ctx = gso_ctx(3, 1000);
    let r = s
        .tc_run(TestRunOptions {
            data_in: Some(&f),
            ctx_in: Some(&ctx),
            repeat: 1,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.return_value, TC_ACT_UNSPEC);
    let c = Count { packets: [0, 3], bytes: [0, 3 * (66 + 1000)] };
    check(
        &s.snapshot(),
        &[(key(CLIENT_MAC, CLIENT4, REMOTE4, IPPROTO_TCP, 443), c)],
        &[(CLIENT_MAC, c)],
        &[(Direction::Download, Stat::Seen, 1), (Direction::Download, Stat::Counted, 1)],
    );
}

#[test]
fn download_gso_udp_counts_every_segment_with_its_headers() {
    require_root!();
    // UDP segmentation offload over IPv6: headers = 14 + 40 + 8 = 62, segments of 1000, 1000
    // and 500 (a test-run skb is one page: at most ~3.7 kB of frame).
    let f = udp6(GW_MAC, CLIENT_MAC, REMOTE6, CLIENT6, 443, 51000, 2500);
    let s = Sensor::new();
    let ctx = gso_ctx(3, 1000);
    let r = s
        .tc_run(TestRunOptions {
            data_in: Some(&f),
            ctx_in: Some(&ctx),
            repeat: 1,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.return_value, TC_ACT_UNSPEC);
    let c = Count { packets: [0, 3], bytes: [0, (62 + 1000) + (62 + 1000) + (62 + 500)] };
    assert_eq!(f.len() as u64 + 2 * 62, c.bytes[1]);
    check(
        &s.snapshot(),
        &[(key(CLIENT_MAC, CLIENT6, REMOTE6, IPPROTO_UDP, 443), c)],
        &[(CLIENT_MAC, c)],
        &[(Direction::Download, Stat::Seen, 1), (Direction::Download, Stat::Counted, 1)],
    );
}

// ---------------------------------------------------------------------------------------------
// VLAN tags: parsed through, and counted in the bytes

#[test]
fn vlan_8021q_upload_and_download() {
    require_root!();
    let upf = build!(
        PacketBuilder::ethernet2(CLIENT_MAC, GW_MAC)
            .single_vlan(vid(10))
            .ipv4(CLIENT4.octets(), REMOTE4.octets(), 64)
            .udp(51000, 53),
        40
    );
    assert_eq!(upf.len(), 14 + 4 + 20 + 8 + 40);
    assert_eq!(&upf[12..14], &ETH_P_8021Q.to_be_bytes());
    let downf = build!(
        PacketBuilder::ethernet2(GW_MAC, CLIENT_MAC)
            .single_vlan(vid(10))
            .ipv6(REMOTE6.octets(), CLIENT6.octets(), 64)
            .tcp(443, 40000, 1, 1000),
        500
    );
    let s = Sensor::new();
    s.upload(&upf);
    s.download(&downf);
    check(
        &s.snapshot(),
        &[
            (key(CLIENT_MAC, CLIENT4, REMOTE4, IPPROTO_UDP, 53), up(&[&upf])),
            (key(CLIENT_MAC, CLIENT6, REMOTE6, IPPROTO_TCP, 443), down(&[&downf])),
        ],
        &[(CLIENT_MAC, up(&[&upf]) + down(&[&downf]))],
        &[
            (Direction::Upload, Stat::Seen, 1),
            (Direction::Upload, Stat::Counted, 1),
            (Direction::Download, Stat::Seen, 1),
            (Direction::Download, Stat::Counted, 1),
        ],
    );
}

#[test]
fn qinq_8021ad_then_8021q_upload_and_download() {
    require_root!();
    let upf = build!(
        PacketBuilder::ethernet2(CLIENT_MAC, GW_MAC)
            .double_vlan(vid(100), vid(10))
            .ipv6(CLIENT6.octets(), REMOTE6.octets(), 64)
            .tcp(40000, 8443, 1, 1000),
        200
    );
    assert_eq!(upf.len(), 14 + 8 + 40 + 20 + 200);
    assert_eq!(&upf[12..14], &ETH_P_8021AD.to_be_bytes());
    assert_eq!(&upf[16..18], &ETH_P_8021Q.to_be_bytes());
    let downf = build!(
        PacketBuilder::ethernet2(GW_MAC, CLIENT_MAC)
            .double_vlan(vid(100), vid(10))
            .ipv4(REMOTE4.octets(), CLIENT4.octets(), 64)
            .udp(4500, 4500),
        1000
    );
    let s = Sensor::new();
    s.upload(&upf);
    s.download(&downf);
    check(
        &s.snapshot(),
        &[
            (key(CLIENT_MAC, CLIENT6, REMOTE6, IPPROTO_TCP, 8443), up(&[&upf])),
            (key(CLIENT_MAC, CLIENT4, REMOTE4, IPPROTO_UDP, 4500), down(&[&downf])),
        ],
        &[(CLIENT_MAC, up(&[&upf]) + down(&[&downf]))],
        &[
            (Direction::Upload, Stat::Seen, 1),
            (Direction::Upload, Stat::Counted, 1),
            (Direction::Download, Stat::Seen, 1),
            (Direction::Download, Stat::Counted, 1),
        ],
    );
}

#[test]
fn two_8021q_tags_are_parsed_too() {
    require_root!();
    let l4 = udp(51000, 53, 20);
    let f = cat(&[
        &eth(GW_MAC, CLIENT_MAC, ETH_P_8021Q),
        &tag(10, ETH_P_8021Q),
        &tag(20, ETH_P_IP),
        &ipv4(5, IPPROTO_UDP, 0, CLIENT4, REMOTE4, l4.len()),
        &l4,
    ]);
    assert_counted_upload(&f, key(CLIENT_MAC, CLIENT4, REMOTE4, IPPROTO_UDP, 53));
}

#[test]
fn three_vlan_tags_are_vlan_depth() {
    require_root!();
    let l4 = udp(51000, 53, 20);
    let f = cat(&[
        &eth(GW_MAC, CLIENT_MAC, ETH_P_8021AD),
        &tag(100, ETH_P_8021Q),
        &tag(10, ETH_P_8021Q),
        &tag(20, ETH_P_IP),
        &ipv4(5, IPPROTO_UDP, 0, CLIENT4, REMOTE4, l4.len()),
        &l4,
    ]);
    assert_rejected_both(&f, Stat::VlanDepth);
}

// ---------------------------------------------------------------------------------------------
// IPv4 header details

#[test]
fn ipv4_options_move_the_ports() {
    require_root!();
    // IHL 6 (4 bytes of NOP options) and IHL 15 (the 60-byte maximum): read at offset 20, the
    // "ports" would be 0x0101/0x0101 (NOPs).
    for ihl in [6u8, 15] {
        let f = ipv4_frame(ihl, IPPROTO_UDP, 0, &udp(51000, 5353, 30));
        assert_eq!(f.len(), 14 + usize::from(ihl) * 4 + 8 + 30);
        assert_counted_upload(&f, key(CLIENT_MAC, CLIENT4, REMOTE4, IPPROTO_UDP, 5353));
        let f = ipv4_frame(ihl, IPPROTO_TCP, 0, &tcp(40000, 443, 30));
        assert_counted_upload(&f, key(CLIENT_MAC, CLIENT4, REMOTE4, IPPROTO_TCP, 443));
    }
}

#[test]
fn ipv4_options_on_download() {
    require_root!();
    let l4 = tcp(443, 40000, 100);
    let f = cat(&[
        &eth(CLIENT_MAC, GW_MAC, ETH_P_IP),
        &ipv4(7, IPPROTO_TCP, 0, REMOTE4, CLIENT4, l4.len()),
        &l4,
    ]);
    assert_counted_download(&f, key(CLIENT_MAC, CLIENT4, REMOTE4, IPPROTO_TCP, 443));
}

#[test]
fn ipv4_ihl_below_5_is_bad_l3_header() {
    require_root!();
    for ihl in [0u8, 4] {
        let f = ipv4_frame(ihl, IPPROTO_UDP, 0, &udp(51000, 53, 30));
        assert_rejected_both(&f, Stat::BadL3Header);
    }
}

#[test]
fn ip_version_not_matching_ethertype_is_bad_l3_header() {
    require_root!();
    // EtherType IPv4 carrying an IPv6 header, and the other way round.
    let l4 = udp(51000, 53, 30);
    let v6_in_v4 = cat(&[
        &eth(GW_MAC, CLIENT_MAC, ETH_P_IP),
        &ipv6(IPPROTO_UDP, l4.len(), CLIENT6, REMOTE6),
        &l4,
    ]);
    assert_rejected_both(&v6_in_v4, Stat::BadL3Header);
    let v4_in_v6 = cat(&[
        &eth(GW_MAC, CLIENT_MAC, ETH_P_IPV6),
        &ipv4(5, IPPROTO_UDP, 0, CLIENT4, REMOTE4, l4.len()),
        &l4,
        &[0u8; 20],
    ]);
    assert_rejected_both(&v4_in_v6, Stat::BadL3Header);
}

#[test]
fn ipv4_first_fragment_has_ports_non_first_has_port_0() {
    require_root!();
    const MF: u16 = 0x2000;
    const DF: u16 = 0x4000;
    // First fragment (offset 0, more fragments): ports.
    let first = ipv4_frame(5, IPPROTO_UDP, MF, &udp(51000, 4500, 1472));
    // Middle and last fragments (offsets 1480 and 2960 bytes): no L4 header, port 0, even
    // though the bytes at the L4 offset would read as a short "UDP header".
    let middle = ipv4_frame(5, IPPROTO_UDP, MF | 185, &payload(1480));
    let last = ipv4_frame(5, IPPROTO_UDP, 370, &payload(4));
    // Don't-fragment set, offset 0: an ordinary packet.
    let df = ipv4_frame(5, IPPROTO_TCP, DF, &tcp(40000, 443, 10));
    let s = Sensor::new();
    for f in [&first, &middle, &last, &df] {
        s.upload(f);
    }
    check(
        &s.snapshot(),
        &[
            (key(CLIENT_MAC, CLIENT4, REMOTE4, IPPROTO_UDP, 4500), up(&[&first])),
            (key(CLIENT_MAC, CLIENT4, REMOTE4, IPPROTO_UDP, 0), up(&[&middle, &last])),
            (key(CLIENT_MAC, CLIENT4, REMOTE4, IPPROTO_TCP, 443), up(&[&df])),
        ],
        &[(CLIENT_MAC, up(&[&first, &middle, &last, &df]))],
        &[(Direction::Upload, Stat::Seen, 4), (Direction::Upload, Stat::Counted, 4)],
    );
}

// ---------------------------------------------------------------------------------------------
// IPv6 extension headers

#[test]
fn ipv6_hop_by_hop_routing_destination_options_before_udp() {
    require_root!();
    let f = ipv6_frame(
        IPV6_HOPOPTS,
        &[
            &opts_ext(IPV6_ROUTING, 0),
            &routing_ext(IPV6_DSTOPTS, 2),
            &opts_ext(IPPROTO_UDP, 1),
            &udp(51000, 443, 100),
        ],
    );
    assert_eq!(f.len(), 14 + 40 + 8 + 24 + 16 + 8 + 100);
    assert_counted_upload(&f, key(CLIENT_MAC, CLIENT6, REMOTE6, IPPROTO_UDP, 443));
}

#[test]
fn ipv6_hop_by_hop_before_tcp_on_download() {
    require_root!();
    let rest = cat(&[&opts_ext(IPPROTO_TCP, 0), &tcp(443, 40000, 100)]);
    let f = cat(&[
        &eth(CLIENT_MAC, GW_MAC, ETH_P_IPV6),
        &ipv6(IPV6_HOPOPTS, rest.len(), REMOTE6, CLIENT6),
        &rest,
    ]);
    assert_counted_download(&f, key(CLIENT_MAC, CLIENT6, REMOTE6, IPPROTO_TCP, 443));
}

#[test]
fn ipv6_authentication_header_length_in_4_byte_units() {
    require_root!();
    // AH is 24 bytes (payload length 4); read as 8-byte units it would be 40.
    let f = ipv6_frame(IPV6_AH, &[&ah_ext(IPPROTO_TCP), &tcp(40000, 443, 64)]);
    assert_counted_upload(&f, key(CLIENT_MAC, CLIENT6, REMOTE6, IPPROTO_TCP, 443));
}

#[test]
fn ipv6_fragment_header_first_has_ports_non_first_has_port_0() {
    require_root!();
    let first =
        ipv6_frame(IPV6_FRAGMENT, &[&fragment_ext(IPPROTO_UDP, 0, true), &udp(51000, 443, 1000)]);
    let non_first =
        ipv6_frame(IPV6_FRAGMENT, &[&fragment_ext(IPPROTO_UDP, 126, true), &payload(1008)]);
    let last = ipv6_frame(IPV6_FRAGMENT, &[&fragment_ext(IPPROTO_UDP, 252, false), &payload(3)]);
    // After hop-by-hop options, too.
    let hbh_first = ipv6_frame(
        IPV6_HOPOPTS,
        &[&opts_ext(IPV6_FRAGMENT, 0), &fragment_ext(IPPROTO_TCP, 0, true), &tcp(40000, 8080, 500)],
    );
    let hbh_non_first = ipv6_frame(
        IPV6_HOPOPTS,
        &[&opts_ext(IPV6_FRAGMENT, 0), &fragment_ext(IPPROTO_TCP, 65, false), &payload(300)],
    );
    let s = Sensor::new();
    for f in [&first, &non_first, &last, &hbh_first, &hbh_non_first] {
        s.upload(f);
    }
    check(
        &s.snapshot(),
        &[
            (key(CLIENT_MAC, CLIENT6, REMOTE6, IPPROTO_UDP, 443), up(&[&first])),
            (key(CLIENT_MAC, CLIENT6, REMOTE6, IPPROTO_UDP, 0), up(&[&non_first, &last])),
            (key(CLIENT_MAC, CLIENT6, REMOTE6, IPPROTO_TCP, 8080), up(&[&hbh_first])),
            (key(CLIENT_MAC, CLIENT6, REMOTE6, IPPROTO_TCP, 0), up(&[&hbh_non_first])),
        ],
        &[(CLIENT_MAC, up(&[&first, &non_first, &last, &hbh_first, &hbh_non_first]))],
        &[(Direction::Upload, Stat::Seen, 5), (Direction::Upload, Stat::Counted, 5)],
    );
}

/// `n` destination-options headers (8 bytes each), then UDP.
fn ext_chain_frame(n: usize) -> Vec<u8> {
    let mut chain: Vec<Vec<u8>> =
        (0..n).map(|i| opts_ext(if i + 1 == n { IPPROTO_UDP } else { IPV6_DSTOPTS }, 0)).collect();
    chain.push(udp(51000, 443, 50));
    let parts: Vec<&[u8]> = chain.iter().map(|v| v.as_slice()).collect();
    ipv6_frame(if n == 0 { IPPROTO_UDP } else { IPV6_DSTOPTS }, &parts)
}

#[test]
fn eight_ipv6_extension_headers_are_walked() {
    require_root!();
    let f = ext_chain_frame(8);
    assert_counted_upload(&f, key(CLIENT_MAC, CLIENT6, REMOTE6, IPPROTO_UDP, 443));
}

#[test]
fn more_than_eight_ipv6_extension_headers_are_ipv6_ext_limit() {
    require_root!();
    assert_rejected_both(&ext_chain_frame(9), Stat::Ipv6ExtLimit);
    assert_rejected(Direction::Upload, &ext_chain_frame(12), Stat::Ipv6ExtLimit);
}

// ---------------------------------------------------------------------------------------------
// Truncated frames: nothing counted, the right reason

/// A frame shorter than an Ethernet header. BPF_PROG_TEST_RUN refuses less than 14 bytes of
/// packet, for TC and for XDP (recent kernels also behind XDP metadata, which older ones
/// allowed), so on such a kernel the parser's Ethernet-header check cannot be reached from
/// here (nor from a real link: runt frames never reach XDP). Wherever the kernel does run it,
/// it must be TruncatedL2 with nothing counted.
#[test]
fn truncated_mid_ethernet_is_truncated_l2_where_the_kernel_can_run_it() {
    require_root!();
    let full = udp4(CLIENT_MAC, GW_MAC, CLIENT4, REMOTE4, 51000, 53, 20);
    for short in [6usize, 13] {
        let s = Sensor::new();
        let plain = s.xdp_run(
            names::XDP_PROGRAM,
            TestRunOptions { data_in: Some(&full[..short]), repeat: 1, ..Default::default() },
        );
        // Behind 8 bytes of XDP metadata: 14+ bytes of data in all, `short` of them packet.
        let meta = 8;
        let mut data = vec![0u8; meta];
        data.extend_from_slice(&full[..short]);
        data.resize(data.len().max(ETH_HLEN), 0);
        let mut ctx = [0u8; 24]; // struct xdp_md
        ctx[0..4].copy_from_slice(&(meta as u32).to_ne_bytes()); // data
        ctx[4..8].copy_from_slice(&((meta + short) as u32).to_ne_bytes()); // data_end
        let with_meta = s.xdp_run(
            names::XDP_PROGRAM,
            TestRunOptions {
                data_in: Some(&data[..meta + short]),
                ctx_in: Some(&ctx),
                repeat: 1,
                ..Default::default()
            },
        );
        let ran = [plain, with_meta].into_iter().filter_map(Result::ok).count() as u64;
        if ran == 0 {
            eprintln!(
                "note: this kernel refuses {short}-byte test-run packets; TruncatedL2 at the Ethernet header is unreachable"
            );
            check(&s.snapshot(), &[], &[], &[]);
        } else {
            check(
                &s.snapshot(),
                &[],
                &[],
                &[
                    (Direction::Upload, Stat::Seen, ran),
                    (Direction::Upload, Stat::TruncatedL2, ran),
                ],
            );
        }
    }
}

/// The shortest frames a test run takes: an Ethernet header alone, and one byte more.
#[test]
fn ethernet_header_alone_and_one_byte_more() {
    require_root!();
    let v4 = udp4(CLIENT_MAC, GW_MAC, CLIENT4, REMOTE4, 51000, 53, 20);
    assert_rejected_both(&v4[..ETH_HLEN], Stat::TruncatedL3);
    assert_rejected_both(&v4[..ETH_HLEN + 1], Stat::TruncatedL3);
    for extra in [0usize, 1] {
        let tagged = cat(&[&eth(GW_MAC, CLIENT_MAC, ETH_P_8021Q), &[0u8; 1][..extra]]);
        assert_rejected_both(&tagged, Stat::TruncatedL2);
        let arp = cat(&[&eth(BROADCAST_MAC, CLIENT_MAC, ETH_P_ARP), &[0u8; 1][..extra]]);
        assert_rejected_both(&arp, Stat::NotIp);
    }
}

#[test]
fn truncated_mid_vlan_tag_is_truncated_l2() {
    require_root!();
    let full = build!(
        PacketBuilder::ethernet2(CLIENT_MAC, GW_MAC)
            .single_vlan(vid(10))
            .ipv4(CLIENT4.octets(), REMOTE4.octets(), 64)
            .udp(1, 2),
        0
    );
    assert_rejected_both(&full[..16], Stat::TruncatedL2);
    // The second tag of a QinQ frame cut short.
    let qinq = build!(
        PacketBuilder::ethernet2(CLIENT_MAC, GW_MAC)
            .double_vlan(vid(100), vid(10))
            .ipv4(CLIENT4.octets(), REMOTE4.octets(), 64)
            .udp(1, 2),
        0
    );
    assert_rejected_both(&qinq[..20], Stat::TruncatedL2);
    // Tag complete, nothing after it: that is the IP header missing.
    assert_rejected_both(&full[..18], Stat::TruncatedL3);
}

#[test]
fn truncated_mid_ipv4_header_is_truncated_l3() {
    require_root!();
    let full = udp4(CLIENT_MAC, GW_MAC, CLIENT4, REMOTE4, 51000, 53, 20);
    assert_rejected_both(&full[..14], Stat::TruncatedL3);
    assert_rejected_both(&full[..14 + 10], Stat::TruncatedL3);
    assert_rejected_both(&full[..14 + 19], Stat::TruncatedL3);
    // Behind a VLAN tag, so that TC runs on them too.
    let tagged = build!(
        PacketBuilder::ethernet2(CLIENT_MAC, GW_MAC)
            .single_vlan(vid(10))
            .ipv4(CLIENT4.octets(), REMOTE4.octets(), 64)
            .udp(1, 2),
        0
    );
    for cut in [18, 18 + 1, 18 + 10, 18 + 19] {
        assert_rejected_both(&tagged[..cut], Stat::TruncatedL3);
    }
}

#[test]
fn ipv4_ihl_beyond_the_frame_is_truncated_l3() {
    require_root!();
    // IHL 15 claims 60 bytes; the frame has the 20-byte header and 8 bytes of UDP.
    let mut hdr = ipv4(5, IPPROTO_UDP, 0, CLIENT4, REMOTE4, 8);
    hdr[0] = 0x4f;
    let f = cat(&[&eth(GW_MAC, CLIENT_MAC, ETH_P_IP), &hdr, &udp(51000, 53, 0)]);
    assert_rejected_both(&f, Stat::TruncatedL3);
    // IHL 6 with the options word cut in half.
    let f = ipv4_frame(6, IPPROTO_ICMP, 0, &[]);
    assert_rejected_both(&f[..f.len() - 2], Stat::TruncatedL3);
}

#[test]
fn truncated_mid_ipv6_header_is_truncated_l3() {
    require_root!();
    let full = udp6(CLIENT_MAC, GW_MAC, CLIENT6, REMOTE6, 51000, 53, 20);
    assert_rejected_both(&full[..14], Stat::TruncatedL3);
    assert_rejected_both(&full[..14 + 20], Stat::TruncatedL3);
    assert_rejected_both(&full[..14 + 39], Stat::TruncatedL3);
    // Behind two VLAN tags, so that TC runs on them too.
    let tagged = build!(
        PacketBuilder::ethernet2(CLIENT_MAC, GW_MAC)
            .double_vlan(vid(100), vid(10))
            .ipv6(CLIENT6.octets(), REMOTE6.octets(), 64)
            .udp(1, 2),
        0
    );
    for cut in [22, 22 + 20, 22 + 39] {
        assert_rejected_both(&tagged[..cut], Stat::TruncatedL3);
    }
}

#[test]
fn truncated_mid_extension_header_is_truncated_l3() {
    require_root!();
    // Hop-by-hop header cut after 1 byte (its length byte is missing).
    let f = ipv6_frame(IPV6_HOPOPTS, &[&opts_ext(IPPROTO_UDP, 0), &udp(51000, 443, 0)]);
    assert_rejected_both(&f[..14 + 40 + 1], Stat::TruncatedL3);
    // Fragment header cut after 4 bytes.
    let f = ipv6_frame(IPV6_FRAGMENT, &[&fragment_ext(IPPROTO_UDP, 0, false), &udp(51000, 443, 0)]);
    assert_rejected_both(&f[..14 + 40 + 4], Stat::TruncatedL3);
    // Routing header whose successor (destination options) is cut after 1 byte.
    let f = ipv6_frame(IPV6_ROUTING, &[&routing_ext(IPV6_DSTOPTS, 0), &opts_ext(IPPROTO_UDP, 0)]);
    assert_rejected_both(&f[..14 + 40 + 8 + 1], Stat::TruncatedL3);
}

/// An extension header whose own length runs past the end of the frame is cut short, exactly
/// like an IPv4 header whose IHL runs past it (TruncatedL3 documents "an IPv6 extension header
/// cut short"), whatever follows it.
#[test]
fn ipv6_extension_header_longer_than_the_frame_before_udp_is_truncated_l3() {
    require_root!();
    // Hop-by-hop claims 16 bytes (length 1); only its first 8 are in the frame.
    let f = ipv6_frame(IPV6_HOPOPTS, &[&opts_ext(IPPROTO_UDP, 1), &udp(51000, 443, 0)]);
    assert_rejected_both(&f[..14 + 40 + 8], Stat::TruncatedL3);
}

/// Same, before a protocol without ports: nothing at all may be counted from such a frame.
#[test]
fn ipv6_extension_header_longer_than_the_frame_before_icmpv6_is_truncated_l3() {
    require_root!();
    let f = ipv6_frame(IPV6_DSTOPTS, &[&opts_ext(IPPROTO_ICMPV6, 3), &[128, 0, 0, 0, 0, 7, 0, 1]]);
    assert_eq!(f.len(), 14 + 40 + 32 + 8);
    assert_rejected_both(&f[..14 + 40 + 16], Stat::TruncatedL3);
}

#[test]
fn truncated_mid_tcp_header_is_truncated_l4() {
    require_root!();
    let v4 = tcp4(CLIENT_MAC, GW_MAC, CLIENT4, REMOTE4, 40000, 443, 0);
    assert_rejected_both(&v4[..14 + 20], Stat::TruncatedL4);
    assert_rejected_both(&v4[..14 + 20 + 3], Stat::TruncatedL4);
    assert_rejected_both(&v4[..14 + 20 + 19], Stat::TruncatedL4);
    let v6 = tcp6(CLIENT_MAC, GW_MAC, CLIENT6, REMOTE6, 40000, 443, 0);
    assert_rejected_both(&v6[..14 + 40 + 10], Stat::TruncatedL4);
    // A first fragment too short for the TCP header is still a first fragment.
    let frag = ipv4_frame(5, IPPROTO_TCP, 0x2000, &tcp(40000, 443, 0)[..12]);
    assert_rejected(Direction::Upload, &frag, Stat::TruncatedL4);
}

#[test]
fn truncated_mid_udp_header_is_truncated_l4() {
    require_root!();
    let v4 = udp4(CLIENT_MAC, GW_MAC, CLIENT4, REMOTE4, 51000, 53, 0);
    assert_rejected_both(&v4[..14 + 20 + 4], Stat::TruncatedL4);
    assert_rejected_both(&v4[..14 + 20 + 7], Stat::TruncatedL4);
    let v6 = ipv6_frame(IPV6_HOPOPTS, &[&opts_ext(IPPROTO_UDP, 0), &udp(51000, 443, 0)]);
    assert_rejected_both(&v6[..v6.len() - 1], Stat::TruncatedL4);
}

// ---------------------------------------------------------------------------------------------
// Not client traffic

#[test]
fn arp_is_not_ip() {
    require_root!();
    let mut arp = vec![0u8; 28];
    arp[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    arp[2..4].copy_from_slice(&ETH_P_IP.to_be_bytes());
    arp[4] = 6;
    arp[5] = 4;
    arp[6..8].copy_from_slice(&1u16.to_be_bytes()); // request
    arp[8..14].copy_from_slice(&CLIENT_MAC);
    arp[14..18].copy_from_slice(&CLIENT4.octets());
    arp[24..28].copy_from_slice(&[192, 168, 1, 1]);
    let mut f = cat(&[&eth(BROADCAST_MAC, CLIENT_MAC, ETH_P_ARP), &arp]);
    f.resize(60, 0);
    assert_rejected(Direction::Upload, &f, Stat::NotIp);
    let reply = cat(&[&eth(CLIENT_MAC, GW_MAC, ETH_P_ARP), &arp]);
    assert_rejected(Direction::Download, &reply, Stat::NotIp);
    // Behind a VLAN tag as well.
    let tagged = cat(&[&eth(BROADCAST_MAC, CLIENT_MAC, ETH_P_8021Q), &tag(10, ETH_P_ARP), &arp]);
    assert_rejected(Direction::Upload, &tagged, Stat::NotIp);
}

#[test]
fn source_outside_lan_prefixes_is_not_client() {
    require_root!();
    assert_rejected(
        Direction::Upload,
        &udp4(CLIENT_MAC, GW_MAC, OUTSIDE4, REMOTE4, 51000, 53, 20),
        Stat::NotClient,
    );
    assert_rejected(
        Direction::Upload,
        &udp6(CLIENT_MAC, GW_MAC, OUTSIDE6, REMOTE6, 51000, 53, 20),
        Stat::NotClient,
    );
    // A packet from the internet to the LAN seen on ingress (the LAN address is the destination).
    assert_rejected(
        Direction::Upload,
        &tcp4(CLIENT_MAC, GW_MAC, REMOTE4, CLIENT4, 443, 40000, 20),
        Stat::NotClient,
    );
}

#[test]
fn destination_outside_lan_prefixes_is_not_client_on_download() {
    require_root!();
    assert_rejected(
        Direction::Download,
        &udp4(GW_MAC, CLIENT_MAC, REMOTE4, OUTSIDE4, 53, 51000, 20),
        Stat::NotClient,
    );
    assert_rejected(
        Direction::Download,
        &udp6(GW_MAC, CLIENT_MAC, REMOTE6, OUTSIDE6, 53, 51000, 20),
        Stat::NotClient,
    );
}

/// An IPv6 packet whose addresses are IPv4-mapped (`::ffff:192.168.1.10`) is not inside the IPv4
/// LAN prefix: it must not be counted, least of all into the IPv4 flow with the same key.
#[test]
fn ipv4_mapped_ipv6_source_is_not_client() {
    require_root!();
    let f =
        udp6(CLIENT_MAC, GW_MAC, CLIENT4.to_ipv6_mapped(), REMOTE4.to_ipv6_mapped(), 51000, 53, 20);
    assert_rejected(Direction::Upload, &f, Stat::NotClient);
}

#[test]
fn group_client_mac_is_not_client() {
    require_root!();
    // Upload: the client is the source MAC.
    for mac in [BROADCAST_MAC, MCAST4_MAC, MCAST6_MAC] {
        assert_rejected(
            Direction::Upload,
            &udp4(mac, GW_MAC, CLIENT4, REMOTE4, 51000, 53, 20),
            Stat::NotClient,
        );
        assert_rejected(
            Direction::Upload,
            &udp6(mac, GW_MAC, CLIENT6, REMOTE6, 51000, 53, 20),
            Stat::NotClient,
        );
    }
    // Download: the client is the destination MAC (broadcast / multicast to LAN addresses).
    assert_rejected(
        Direction::Download,
        &udp4(GW_MAC, BROADCAST_MAC, REMOTE4, CLIENT4, 67, 68, 300),
        Stat::NotClient,
    );
    assert_rejected(
        Direction::Download,
        &udp4(GW_MAC, MCAST4_MAC, REMOTE4, CLIENT4, 5353, 5353, 30),
        Stat::NotClient,
    );
    assert_rejected(
        Direction::Download,
        &udp6(GW_MAC, MCAST6_MAC, REMOTE6, CLIENT6, 5353, 5353, 30),
        Stat::NotClient,
    );
}

// ---------------------------------------------------------------------------------------------
// Aggregation

#[test]
fn same_flow_twice_is_one_flow_with_two_packets() {
    require_root!();
    let a = udp4(CLIENT_MAC, GW_MAC, CLIENT4, REMOTE4, 51000, 443, 1200);
    let b = udp4(CLIENT_MAC, GW_MAC, CLIENT4, REMOTE4, 51000, 443, 33);
    // A different source port is still the same flow (the key has only the remote port).
    let c = udp4(CLIENT_MAC, GW_MAC, CLIENT4, REMOTE4, 51001, 443, 500);
    let s = Sensor::new();
    s.upload(&a);
    s.upload(&b);
    check(
        &s.snapshot(),
        &[(key(CLIENT_MAC, CLIENT4, REMOTE4, IPPROTO_UDP, 443), up(&[&a, &b]))],
        &[(CLIENT_MAC, up(&[&a, &b]))],
        &[(Direction::Upload, Stat::Seen, 2), (Direction::Upload, Stat::Counted, 2)],
    );
    s.upload(&c);
    check(
        &s.snapshot(),
        &[(key(CLIENT_MAC, CLIENT4, REMOTE4, IPPROTO_UDP, 443), up(&[&a, &b, &c]))],
        &[(CLIENT_MAC, up(&[&a, &b, &c]))],
        &[(Direction::Upload, Stat::Seen, 3), (Direction::Upload, Stat::Counted, 3)],
    );
}

#[test]
fn one_client_with_ipv4_and_ipv6_is_one_client_two_flows() {
    require_root!();
    let v4 = tcp4(CLIENT_MAC, GW_MAC, CLIENT4, REMOTE4, 40000, 443, 100);
    let v6 = tcp6(CLIENT_MAC, GW_MAC, CLIENT6, REMOTE6, 40000, 443, 700);
    let v6_down = tcp6(GW_MAC, CLIENT_MAC, REMOTE6, CLIENT6, 443, 40000, 1400);
    let s = Sensor::new();
    s.upload(&v4);
    s.upload(&v6);
    s.download(&v6_down);
    check(
        &s.snapshot(),
        &[
            (key(CLIENT_MAC, CLIENT4, REMOTE4, IPPROTO_TCP, 443), up(&[&v4])),
            (key(CLIENT_MAC, CLIENT6, REMOTE6, IPPROTO_TCP, 443), up(&[&v6]) + down(&[&v6_down])),
        ],
        &[(CLIENT_MAC, up(&[&v4, &v6]) + down(&[&v6_down]))],
        &[
            (Direction::Upload, Stat::Seen, 2),
            (Direction::Upload, Stat::Counted, 2),
            (Direction::Download, Stat::Seen, 1),
            (Direction::Download, Stat::Counted, 1),
        ],
    );
}

#[test]
fn two_clients_and_two_addresses_of_one_are_kept_apart() {
    require_root!();
    // Two MACs; the second client uses two IPv4 addresses: two client totals, three flows.
    let a = udp4(CLIENT_MAC, GW_MAC, CLIENT4, REMOTE4, 51000, 53, 40);
    let b1 = udp4(CLIENT2_MAC, GW_MAC, CLIENT4_B, REMOTE4, 51000, 53, 41);
    let b2 = udp4(CLIENT2_MAC, GW_MAC, Ipv4Addr::new(192, 168, 1, 12), REMOTE4, 51000, 53, 42);
    let s = Sensor::new();
    for f in [&a, &b1, &b2] {
        s.upload(f);
    }
    check(
        &s.snapshot(),
        &[
            (key(CLIENT_MAC, CLIENT4, REMOTE4, IPPROTO_UDP, 53), up(&[&a])),
            (key(CLIENT2_MAC, CLIENT4_B, REMOTE4, IPPROTO_UDP, 53), up(&[&b1])),
            (
                key(CLIENT2_MAC, Ipv4Addr::new(192, 168, 1, 12), REMOTE4, IPPROTO_UDP, 53),
                up(&[&b2]),
            ),
        ],
        &[(CLIENT_MAC, up(&[&a])), (CLIENT2_MAC, up(&[&b1, &b2]))],
        &[(Direction::Upload, Stat::Seen, 3), (Direction::Upload, Stat::Counted, 3)],
    );
}

// ---------------------------------------------------------------------------------------------
// Client slots: per-client totals in an array, one slot per client MAC

/// A LAN client number `i` (locally administered unicast MAC) and its IPv4 address.
fn client_n(i: u8) -> ([u8; 6], Ipv4Addr) {
    ([0x02, 0x00, 0x00, 0x00, 0x01, i], Ipv4Addr::new(192, 168, 1, 100 + i))
}

/// Runs the calling thread (and so its test runs) on `cpu` only.
fn pin_to_cpu(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).unwrap();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).unwrap();
}

#[test]
fn new_clients_get_slots_in_order_and_exact_totals() {
    require_root!();
    let s = Sensor::new();
    let mut flows = vec![];
    let mut clients = vec![];
    for i in 0..5u8 {
        let (mac, ip) = client_n(i);
        // Two flows each (one known client, one new flow: no new slot), sizes distinct.
        let a = udp4(mac, GW_MAC, ip, REMOTE4, 51000, 443, 100 + usize::from(i));
        let b = tcp4(mac, GW_MAC, ip, REMOTE4, 40000, 80, 300 + usize::from(i));
        s.upload(&a);
        s.upload(&b);
        flows.push((key(mac, ip, REMOTE4, IPPROTO_UDP, 443), up(&[&a])));
        flows.push((key(mac, ip, REMOTE4, IPPROTO_TCP, 80), up(&[&b])));
        clients.push((mac, up(&[&a, &b])));
    }
    let slots = s.maps.client_slots().unwrap();
    let want: std::collections::HashMap<[u8; 6], u32> =
        (0..5u8).map(|i| (client_n(i).0, u32::from(i))).collect();
    assert_eq!(slots, want, "one slot per client, handed out in order");
    check(
        &s.snapshot(),
        &flows,
        &clients,
        &[(Direction::Upload, Stat::Seen, 10), (Direction::Upload, Stat::Counted, 10)],
    );
}

/// The flow map is an LRU: flows go when it is full, but the client's totals (an array slot,
/// never evicted) keep every packet.
#[test]
fn client_totals_stay_exact_when_its_flows_are_evicted() {
    require_root!();
    const FLOW_CAPACITY: u32 = 16;
    let s = Sensor::with_capacities(FLOW_CAPACITY, 8);
    let frames: Vec<Vec<u8>> = (0..200u16)
        .map(|i| {
            udp4(CLIENT_MAC, GW_MAC, CLIENT4, REMOTE4, 51000, 1000 + i, 20 + usize::from(i % 50))
        })
        .collect();
    for f in &frames {
        s.upload(f);
    }
    // A flow evicted long ago, seen again: a fresh flow entry, the same client slot.
    s.upload(&frames[0]);
    let snap = s.snapshot();
    let all: Vec<&[u8]> =
        frames.iter().map(|f| f.as_slice()).chain([frames[0].as_slice()]).collect();
    let total = up(&all);
    let got = snap.clients.get(&CLIENT_MAC).map(|c| Count { packets: c.packets, bytes: c.bytes });
    assert_eq!(
        got,
        Some(total),
        "client totals over 201 packets, most of whose flows were evicted"
    );
    assert_eq!(snap.clients.len(), 1);
    assert!(
        !snap.flows.is_empty() && snap.flows.len() <= FLOW_CAPACITY as usize,
        "{} flows in a map of {FLOW_CAPACITY}",
        snap.flows.len()
    );
    // Every flow still there has exactly what its frame carried (each was seen once, but the
    // first twice: its second packet went into a new entry after the old one was evicted).
    for (k, c) in &snap.flows {
        let i = usize::from(k.remote_port - 1000);
        let want = up(&[&frames[i]]);
        assert_eq!(Count { packets: c.packets, bytes: c.bytes }, want, "flow {}", show_key(k));
    }
    let stats = snap.stats;
    assert_eq!(stats[Direction::Upload.index()][Stat::Seen as usize], 201);
    assert_eq!(stats[Direction::Upload.index()][Stat::Counted as usize], 201);
    assert_eq!(s.maps.client_slots().unwrap().get(&CLIENT_MAC), Some(&0));
}

/// Retiring a client frees its slot; the next new client takes it, starting from zero; the
/// retired client, back, gets a new slot and starts from zero too.
#[test]
fn retired_client_slot_goes_to_the_next_new_client_with_fresh_totals() {
    require_root!();
    let mut s = Sensor::new();
    let (a, a_ip) = client_n(1);
    let (b, b_ip) = client_n(2);
    let (c, c_ip) = client_n(3);
    let fa = udp4(a, GW_MAC, a_ip, REMOTE4, 51000, 443, 111);
    let fa_down = udp4(GW_MAC, a, REMOTE4, a_ip, 443, 51000, 1111);
    let fb = udp4(b, GW_MAC, b_ip, REMOTE4, 51000, 443, 222);
    let fc = tcp4(c, GW_MAC, c_ip, REMOTE6_AS_V4, 40000, 443, 333);
    s.upload(&fa);
    s.download(&fa_down);
    s.upload(&fb);
    assert_eq!(s.maps.client_slots().unwrap(), [(a, 0), (b, 1)].into_iter().collect());

    s.maps.remove_client(&a).unwrap();
    // A's flow and totals are gone; B is untouched.
    check(
        &s.snapshot(),
        &[(key(b, b_ip, REMOTE4, IPPROTO_UDP, 443), up(&[&fb]))],
        &[(b, up(&[&fb]))],
        &[
            (Direction::Upload, Stat::Seen, 2),
            (Direction::Upload, Stat::Counted, 2),
            (Direction::Download, Stat::Seen, 1),
            (Direction::Download, Stat::Counted, 1),
        ],
    );

    // C is new: it gets A's old slot, with nothing of A's in it.
    s.upload(&fc);
    assert_eq!(s.maps.client_slots().unwrap(), [(b, 1), (c, 0)].into_iter().collect());
    // A is back: a new slot (the free list is empty again), counting from zero.
    s.upload(&fa);
    assert_eq!(s.maps.client_slots().unwrap(), [(b, 1), (c, 0), (a, 2)].into_iter().collect());
    check(
        &s.snapshot(),
        &[
            (key(b, b_ip, REMOTE4, IPPROTO_UDP, 443), up(&[&fb])),
            (key(c, c_ip, REMOTE6_AS_V4, IPPROTO_TCP, 443), up(&[&fc])),
            (key(a, a_ip, REMOTE4, IPPROTO_UDP, 443), up(&[&fa])),
        ],
        &[(a, up(&[&fa])), (b, up(&[&fb])), (c, up(&[&fc]))],
        &[
            (Direction::Upload, Stat::Seen, 4),
            (Direction::Upload, Stat::Counted, 4),
            (Direction::Download, Stat::Seen, 1),
            (Direction::Download, Stat::Counted, 1),
        ],
    );
    // Retiring a client the kernel does not know (or twice) is harmless.
    s.maps.remove_clients(&[client_n(9).0, b, b]).unwrap();
    assert_eq!(s.maps.client_slots().unwrap(), [(c, 0), (a, 2)].into_iter().collect());
}

/// A remote for the test above that is not REMOTE4 (so the flows differ by more than the MAC).
const REMOTE6_AS_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

/// When every slot is held, a new client's packets are not counted (client_table_full); known
/// clients, even on new flows, still are. A retired client's slot lets the new one in.
#[test]
fn new_client_is_client_table_full_when_every_slot_is_held() {
    require_root!();
    let mut s = Sensor::with_capacities(4096, 2);
    let (a, a_ip) = client_n(1);
    let (b, b_ip) = client_n(2);
    let (c, c_ip) = client_n(3);
    let fa = udp4(a, GW_MAC, a_ip, REMOTE4, 51000, 443, 10);
    let fb = udp4(b, GW_MAC, b_ip, REMOTE4, 51000, 443, 20);
    let fb2 = tcp4(b, GW_MAC, b_ip, REMOTE4, 40000, 80, 25);
    let fc = udp4(c, GW_MAC, c_ip, REMOTE4, 51000, 443, 30);
    let fc_down = udp4(GW_MAC, c, REMOTE4, c_ip, 443, 51000, 40);
    for f in [&fa, &fb, &fc, &fb2] {
        s.upload(f);
    }
    s.download(&fc_down);
    check(
        &s.snapshot(),
        &[
            (key(a, a_ip, REMOTE4, IPPROTO_UDP, 443), up(&[&fa])),
            (key(b, b_ip, REMOTE4, IPPROTO_UDP, 443), up(&[&fb])),
            (key(b, b_ip, REMOTE4, IPPROTO_TCP, 80), up(&[&fb2])),
        ],
        &[(a, up(&[&fa])), (b, up(&[&fb, &fb2]))],
        &[
            (Direction::Upload, Stat::Seen, 4),
            (Direction::Upload, Stat::Counted, 3),
            (Direction::Upload, Stat::ClientTableFull, 1),
            (Direction::Download, Stat::Seen, 1),
            (Direction::Download, Stat::ClientTableFull, 1),
        ],
    );

    s.maps.remove_client(&a).unwrap();
    s.upload(&fc);
    assert_eq!(s.maps.client_slots().unwrap(), [(b, 1), (c, 0)].into_iter().collect());
    check(
        &s.snapshot(),
        &[
            (key(b, b_ip, REMOTE4, IPPROTO_UDP, 443), up(&[&fb])),
            (key(b, b_ip, REMOTE4, IPPROTO_TCP, 80), up(&[&fb2])),
            (key(c, c_ip, REMOTE4, IPPROTO_UDP, 443), up(&[&fc])),
        ],
        &[(b, up(&[&fb, &fb2])), (c, up(&[&fc]))],
        &[
            (Direction::Upload, Stat::Seen, 5),
            (Direction::Upload, Stat::Counted, 4),
            (Direction::Upload, Stat::ClientTableFull, 1),
            (Direction::Download, Stat::Seen, 1),
            (Direction::Download, Stat::ClientTableFull, 1),
        ],
    );
}

/// A flow inserted on one CPU has a zeroed value on the others: the first packet there must
/// find the flow's client slot (not take the zero for slot 0, which is another client's).
#[test]
fn a_flow_counted_on_two_cpus_adds_to_its_own_client() {
    require_root!();
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        eprintln!("note: one CPU only; nothing to check");
        return;
    }
    let s = Sensor::new();
    let (a, a_ip) = client_n(1);
    let (b, b_ip) = client_n(2);
    let fa = udp4(a, GW_MAC, a_ip, REMOTE4, 51000, 443, 10);
    let fb = udp4(b, GW_MAC, b_ip, REMOTE4, 51000, 443, 500);
    let fb_down = udp4(GW_MAC, b, REMOTE4, b_ip, 443, 51000, 900);
    pin_to_cpu(0);
    s.upload(&fa);
    s.upload(&fb);
    pin_to_cpu(1);
    s.upload(&fb);
    s.download(&fb_down);
    s.upload(&fb);
    assert_eq!(s.maps.client_slots().unwrap(), [(a, 0), (b, 1)].into_iter().collect());
    let b_count = up(&[&fb, &fb, &fb]) + down(&[&fb_down]);
    check(
        &s.snapshot(),
        &[
            (key(a, a_ip, REMOTE4, IPPROTO_UDP, 443), up(&[&fa])),
            (key(b, b_ip, REMOTE4, IPPROTO_UDP, 443), b_count),
        ],
        &[(a, up(&[&fa])), (b, b_count)],
        &[
            (Direction::Upload, Stat::Seen, 4),
            (Direction::Upload, Stat::Counted, 4),
            (Direction::Download, Stat::Seen, 1),
            (Direction::Download, Stat::Counted, 1),
        ],
    );
}

/// The client-slot maps are pinned as a set: with one of them gone (a fresh `NEXT_SLOT` would
/// hand out slots that clients hold), loading is refused with a message saying what to do.
#[test]
fn a_partial_set_of_pinned_client_slot_maps_is_refused() {
    require_root!();
    lab::ensure_bpffs().expect("pinning needs a BPF filesystem at /sys/fs/bpf");
    let pins = lab::PinDir::new("kernel", "partial-slots");
    let dir = pins.path().to_path_buf();
    let prefixes: Vec<IpNet> = LAN.iter().map(|p| p.parse().unwrap()).collect();
    let opts = LoadOptions {
        lan_prefixes: &prefixes,
        flow_capacity: 1024,
        client_capacity: 8,
        pin_dir: Some(&dir),
        kernel_btf: false,
    };
    drop(load(&opts).expect("first load: creates and pins the maps"));
    // Reused as they are.
    let (_, caps) =
        load(&LoadOptions { client_capacity: 16, ..opts }).expect("second load: reuses the pins");
    assert_eq!(caps.clients, 8, "pinned client maps keep their capacity");
    std::fs::remove_file(dir.join(names::NEXT_SLOT)).unwrap();
    let err = load(&opts).map(|_| ()).expect_err("a partial set must be refused");
    let msg = format!("{err:#}");
    assert!(msg.contains("NEXT_SLOT") && msg.contains("rm -r"), "{msg}");
}

// ---------------------------------------------------------------------------------------------
// Batch reads (BPF_MAP_LOOKUP_BATCH) against key-by-key iteration

/// 10,000 flows of 40 clients through the XDP program (more than one batch of the flow map):
/// the batch read, the forced key-by-key read, and what was sent agree exactly.
#[test]
fn batch_read_equals_iteration_and_what_was_sent() {
    require_root!();
    use sensor::kernel::collector::ReadMethod;
    let s = Sensor::with_capacities(16_384, 64);
    let mut flows = BTreeMap::new();
    let mut clients: BTreeMap<[u8; 6], Count> = BTreeMap::new();
    for i in 0..10_000u32 {
        let (mac, ip) = client_n((i % 40) as u8);
        let remote = Ipv4Addr::from(0x5db8_0000 + i / 40);
        let f = udp4(
            mac,
            GW_MAC,
            ip,
            remote,
            40_000,
            1000 + (i % 7) as u16,
            18 + (i as usize * 13) % 700,
        );
        s.upload(&f);
        flows
            .insert(show_key(&key(mac, ip, remote, IPPROTO_UDP, 1000 + (i % 7) as u16)), up(&[&f]));
        *clients.entry(mac).or_default() =
            clients.get(&mac).copied().unwrap_or_default() + up(&[&f]);
    }
    assert_eq!(s.maps.read_method(), ReadMethod::Batch, "this kernel has batch lookups");
    let batch = s.snapshot();
    s.maps.set_read_method(ReadMethod::Iterate);
    let iterated = s.snapshot();
    assert_eq!(s.maps.read_method(), ReadMethod::Iterate, "the fallback stays chosen");
    for snap in [&batch, &iterated] {
        let got: BTreeMap<String, Count> = snap
            .flows
            .iter()
            .map(|(k, c)| (show_key(k), Count { packets: c.packets, bytes: c.bytes }))
            .collect();
        assert_eq!(got.len(), snap.flows.len(), "a flow read twice");
        assert_eq!(got, flows);
        let got: BTreeMap<[u8; 6], Count> = snap
            .clients
            .iter()
            .map(|(m, c)| (*m, Count { packets: c.packets, bytes: c.bytes }))
            .collect();
        assert_eq!(got, clients);
        assert_eq!(snap.stat(Stat::Counted, Direction::Upload), 10_000);
    }
    let (mut a, mut b) = (batch.flows.clone(), iterated.flows.clone());
    a.sort_by_key(|(k, _)| *k);
    b.sort_by_key(|(k, _)| *k);
    assert_eq!(a, b, "first/last seen too");
    assert_eq!(s.maps.client_slots().unwrap().len(), 40);
}

/// The wrapper on its own, on maps filled by map updates with a different value on every CPU:
/// per-CPU values come back per CPU (8-byte strides), across batch boundaries of any size, a
/// chunk smaller than a hash bucket grows, and arrays (generic batch code) read the same.
#[test]
fn batch_reader_reads_every_entry_per_cpu_at_any_chunk_size() {
    require_root!();
    use aya::maps::{
        HashMap as BpfHashMap, IterableMap as _, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues,
    };
    use sensor::{
        common::{ClientKey, Counters, FlowValue},
        kernel::bpf_batch::{BatchReader, Layout},
    };
    use std::os::fd::AsFd as _;
    let cpus = aya::util::nr_cpus().unwrap();
    let prefixes: Vec<IpNet> = LAN.iter().map(|p| p.parse().unwrap()).collect();
    let (mut ebpf, _) = load(&LoadOptions {
        lan_prefixes: &prefixes,
        flow_capacity: 4096,
        client_capacity: 64,
        pin_dir: None,
        kernel_btf: false,
    })
    .unwrap();
    let mut flows: PerCpuHashMap<MapData, FlowKey, FlowValue> =
        ebpf.take_map(names::FLOWS).unwrap().try_into().unwrap();
    let mut slots: BpfHashMap<MapData, ClientKey, u32> =
        ebpf.take_map(names::CLIENT_SLOTS).unwrap().try_into().unwrap();
    let mut totals: PerCpuArray<MapData, Counters> =
        ebpf.take_map(names::CLIENT_TOTALS).unwrap().try_into().unwrap();
    let value = |i: u32, cpu: usize| {
        let n = u64::from(i) * 100 + cpu as u64;
        FlowValue {
            counters: Counters {
                packets: [n, n + 1],
                bytes: [n * 7, n * 11],
                first_seen_ns: n + 2,
                last_seen_ns: n + 3,
            },
            client_slot: i + 1,
            _pad: 0,
        }
    };
    let mut want: BTreeMap<FlowKey, Vec<FlowValue>> = BTreeMap::new();
    for i in 0..3000u32 {
        let (mac, ip) = client_n((i % 50) as u8);
        let k = key(mac, ip, Ipv4Addr::from(0x0a00_0000 + i), IPPROTO_TCP, 443);
        let per_cpu: Vec<FlowValue> = (0..cpus).map(|c| value(i, c)).collect();
        flows.insert(k, PerCpuValues::try_from(per_cpu.clone()).unwrap(), 0).unwrap();
        want.insert(k, per_cpu);
    }
    let iterated: BTreeMap<FlowKey, Vec<FlowValue>> =
        flows.iter().map(|e| e.unwrap()).map(|(k, v)| (k, v.iter().copied().collect())).collect();
    assert_eq!(iterated, want, "aya's iteration, the reference");
    for chunk in [1, 7, 256, 4096] {
        let reader =
            BatchReader::<FlowKey, FlowValue>::new(Layout::PerCpu { cpus }).with_chunk(chunk);
        let mut got = BTreeMap::new();
        let n = reader
            .for_each(flows.map().fd().as_fd(), |k, values| {
                assert!(got.insert(*k, values.collect::<Vec<_>>()).is_none(), "key read twice");
            })
            .unwrap();
        assert_eq!(n, 3000, "chunk {chunk}");
        assert_eq!(got, want, "chunk {chunk}");
    }

    for i in 0..50u8 {
        slots.insert(ClientKey { mac: client_n(i).0, _pad: [0; 2] }, u32::from(i) * 3, 0).unwrap();
        let per_cpu: Vec<Counters> = (0..cpus).map(|c| value(u32::from(i), c).counters).collect();
        totals.set(u32::from(i), PerCpuValues::try_from(per_cpu).unwrap(), 0).unwrap();
    }
    let mut got = BTreeMap::new();
    BatchReader::<ClientKey, u32>::new(Layout::Plain)
        .with_chunk(16)
        .for_each(slots.map().fd().as_fd(), |k, mut v| {
            got.insert(k.mac, v.next().unwrap());
        })
        .unwrap();
    let want_slots: BTreeMap<[u8; 6], u32> =
        (0..50u8).map(|i| (client_n(i).0, u32::from(i) * 3)).collect();
    assert_eq!(got, want_slots);
    let mut rows = Vec::new();
    let n = BatchReader::<u32, Counters>::new(Layout::PerCpu { cpus })
        .with_chunk(10)
        .for_each(totals.map().fd().as_fd(), |slot, v| rows.push((*slot, v.collect::<Vec<_>>())))
        .unwrap();
    assert_eq!(n, 64, "every array element, set or not");
    for (slot, per_cpu) in rows {
        let want: Vec<Counters> = (0..cpus)
            .map(|c| if slot < 50 { value(slot, c).counters } else { Counters::default() })
            .collect();
        assert_eq!(per_cpu, want, "slot {slot}");
    }
}

/// A map type without batch operations (the slot queue) is "unsupported", the answer an old
/// kernel gives for every map, on which the collector falls back to iteration.
#[test]
fn batch_lookup_on_a_map_without_batch_ops_is_unsupported() {
    require_root!();
    use aya::maps::Map;
    use sensor::kernel::bpf_batch::{BatchError, BatchReader, Layout};
    use std::os::fd::AsFd as _;
    let prefixes: Vec<IpNet> = LAN.iter().map(|p| p.parse().unwrap()).collect();
    let (mut ebpf, _) = load(&LoadOptions {
        lan_prefixes: &prefixes,
        flow_capacity: 64,
        client_capacity: 8,
        pin_dir: None,
        kernel_btf: false,
    })
    .unwrap();
    let Some(Map::Queue(queue)) = ebpf.take_map(names::FREE_SLOTS) else {
        panic!("FREE_SLOTS is not a queue")
    };
    let r = BatchReader::<u32, u32>::new(Layout::Plain)
        .for_each(queue.fd().as_fd(), |_, _| panic!("no entries"));
    assert!(matches!(r, Err(BatchError::Unsupported(_))), "{r:?}");
}

// ---------------------------------------------------------------------------------------------
// More live flows than the flow map holds

/// Three rounds of 100 new flows each (two clients) into a flow map of 64, read and accounted
/// after each round as the agent does: the exported client totals are exactly what was sent;
/// the remote series have exactly what the reads saw (the flows evicted before any read are
/// missing there, not from the totals); `gwsensor_flow_evictions_total` counts every flow that
/// was read once and was gone at the next read.
#[test]
fn overflowing_the_flow_map_keeps_client_totals_exact_and_counts_evictions() {
    require_root!();
    use sensor::{
        accounting::{Accounting, DestKey, Params},
        enrich::ClientLabels,
        export::metrics::Metrics,
    };
    use std::collections::BTreeSet;
    const FLOW_CAPACITY: u32 = 64;
    let s = Sensor::with_capacities(FLOW_CAPACITY, 8);
    let params = Params {
        top_remotes: 20,
        top_destinations: 20,
        series_budget: 1000,
        remote_idle_expiry_secs: 3600,
        destination_idle_expiry_secs: 3600,
        client_idle_expiry_secs: 3600,
        score_half_life_secs: 120.0,
        name_wait_secs: 2,
    };
    let namer = |k: &FlowKey| DestKey { destination: show_key(k), country: String::new(), asn: 0 };
    let metrics = Metrics::new().unwrap();
    let mut acct = Accounting::default();
    let (a, a_ip) = client_n(1);
    let (b, b_ip) = client_n(2);
    let mut sent: BTreeMap<[u8; 6], u64> = BTreeMap::new();
    let mut previous: BTreeSet<FlowKey> = BTreeSet::new();
    let (mut evicted, mut seen_bytes) = (0u64, BTreeMap::<[u8; 6], u64>::new());
    for round in 0..3u32 {
        for i in 0..100u32 {
            let (mac, ip) = if i % 3 == 0 { (b, b_ip) } else { (a, a_ip) };
            let remote = Ipv4Addr::from(0x5db8_0000 + round * 1000 + i);
            let f = udp4(mac, GW_MAC, ip, remote, 40_000, 443, 20 + i as usize);
            s.upload(&f);
            *sent.entry(mac).or_default() += f.len() as u64;
        }
        let snap = s.snapshot();
        assert!(
            snap.flows.len() <= FLOW_CAPACITY as usize,
            "{} flows in a map of {FLOW_CAPACITY}",
            snap.flows.len()
        );
        let now: BTreeSet<FlowKey> = snap.flows.iter().map(|(k, _)| *k).collect();
        evicted += previous.difference(&now).count() as u64;
        // Every flow carried one frame, and no key comes back: a flow in this read and not in
        // the last one is new, and its bytes reach the remote series.
        for (k, c) in &snap.flows {
            if !previous.contains(k) {
                *seen_bytes.entry(k.client_mac).or_default() += c.bytes[0];
            }
        }
        previous = now;
        let snap = std::sync::Arc::new(snap);
        acct.update(&snap, 1000 + u64::from(round) * 5, &params, &namer);
        metrics.publish(&acct, &snap, &|_| ClientLabels {
            name: "c".into(),
            ..ClientLabels::default()
        });
    }
    assert!(evicted >= 100, "{evicted} evictions: the map of {FLOW_CAPACITY} took 300 flows");
    assert_eq!(acct.flow_evictions, evicted);
    for (mac, want) in &sent {
        let account = &acct.clients[mac];
        assert_eq!(account.totals.bytes[0], *want, "client {} totals", mac_text(mac));
        let remotes: u64 = account.remotes.carried().bytes[0];
        assert_eq!(
            remotes,
            seen_bytes[mac],
            "client {} remote series: what the reads saw",
            mac_text(mac)
        );
        assert!(
            remotes < *want,
            "flows evicted before any read are missing from the remote series"
        );
    }
    let text = metrics.render().unwrap();
    assert!(
        text.lines().any(|l| l == format!("gwsensor_flow_evictions_total {evicted}")),
        "{text}"
    );
    let line = format!(
        "gwsensor_client_bytes_total{{client=\"c\",mac=\"{}\",direction=\"upload\"}} {}",
        mac_text(&a),
        sent[&a]
    );
    assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
}
