//! The programs attached to a real link and fed skbs that BPF_PROG_TEST_RUN cannot make: frames
//! from a packet socket whose headers lie outside the linear area, and GSO packets behind a
//! virtio_net_hdr (as a tap or a VM's NIC hands them to the kernel). Each is counted exactly,
//! packets and frame bytes, in every upload hook (driver XDP, generic XDP, TC ingress) and on
//! TC egress, and the link's own counters confirm what crossed it.
//!
//! No agent: the programs, attached with the loader, and their maps. The two namespaces have
//! IPv6 off and no addresses, and the frames are addressed to MACs neither end owns, so the
//! kernels drop them at once and the link carries nothing else.
//!
//! Needs root; skips loudly otherwise, and fails under CI=true or
//! GWSENSOR_TEST_REQUIRE_PRIVILEGED=1.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use aya::Ebpf;
use lab::{
    Lab,
    wire::{
        Gso, GsoKind, LinkCounters, Offload, link_counters, send_frames, send_gso, set_offload,
    },
};
use sensor::{
    common::{FlowKey, Stat},
    kernel::{
        collector::KernelMaps,
        loader::{LoadOptions, TcAttach, XdpMode, attach, load_with_events},
    },
};

const CLIENT_MAC: [u8; 6] = [0x02, 0x77, 0x00, 0x30, 0x00, 0x01];
/// The gateway side of the frames; not lan0's own MAC (so the gateway's kernel drops uploads).
const GW_MAC: [u8; 6] = [0x02, 0x77, 0x00, 0x30, 0x00, 0xfe];
const CLIENT4: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 10);
const REMOTE4: Ipv4Addr = Ipv4Addr::new(10, 77, 3, 1);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd77, 1, 0, 0, 0, 0, 0, 0x10);
const REMOTE6: Ipv6Addr = Ipv6Addr::new(0xfd77, 3, 0, 0, 0, 0, 0, 1);
const LAN: [&str; 2] = ["10.77.1.0/24", "fd77:1::/64"];
const TIMEOUT: Duration = Duration::from_secs(5);

fn privileged() -> bool {
    lab::lab_tests_can_run("hook tests", &[])
}

/// A gateway `lan0` and a client `eth0`, a veth pair of the given MTU, silent.
struct Link {
    lab: Lab,
    gw: String,
    client: String,
}

impl Link {
    fn new(prefix: &str, mtu: u32) -> Link {
        let lab = Lab::new(prefix).expect("lab");
        let gw = lab.add_netns("gw").expect("gateway namespace");
        let client = lab.add_netns("c0").expect("client namespace");
        let ip = |args: &[&str]| lab::ip(args).unwrap_or_else(|e| panic!("{e:#}"));
        for ns in [&gw, &client] {
            ip(&[
                "netns",
                "exec",
                ns,
                "sysctl",
                "-q",
                "-w",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ]);
        }
        ip(&[
            "-n",
            &gw,
            "link",
            "add",
            "lan0",
            "mtu",
            &mtu.to_string(),
            "address",
            "02:77:00:30:01:01",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "mtu",
            &mtu.to_string(),
            "address",
            "02:77:00:30:01:02",
            "netns",
            &client,
        ]);
        ip(&["-n", &gw, "link", "set", "lan0", "up"]);
        ip(&["-n", &client, "link", "set", "eth0", "up"]);
        Link { lab, gw, client }
    }

    /// Loads and attaches the programs to lan0, the upload hook as `mode` says.
    fn attach(&self, mode: XdpMode) -> (Ebpf, KernelMaps, &'static str) {
        let prefixes: Vec<ipnet::IpNet> = LAN.iter().map(|p| p.parse().unwrap()).collect();
        self.lab
            .in_netns(&self.gw, || -> anyhow::Result<_> {
                let opts = LoadOptions {
                    lan_prefixes: &prefixes,
                    flow_capacity: 1024,
                    client_capacity: 16,
                    pin_dir: None,
                    kernel_btf: false,
                };
                let (mut ebpf, _) = load_with_events(&opts, 0)?;
                let attachment = attach(&mut ebpf, "lan0", mode, TcAttach::Auto)?;
                let maps = KernelMaps::take(&mut ebpf)?;
                Ok((ebpf, maps, attachment.xdp_mode))
            })
            .unwrap()
            .unwrap_or_else(|e| panic!("attaching the programs to lan0 ({mode:?}): {e:#}"))
    }

    fn counters(&self) -> (LinkCounters, LinkCounters) {
        let gw = link_counters(&self.gw, "lan0").unwrap_or_else(|e| panic!("{e:#}"));
        let client = link_counters(&self.client, "eth0").unwrap_or_else(|e| panic!("{e:#}"));
        (gw, client)
    }
}

/// (packets, bytes) per direction, [upload, download].
type Counts = [(u64, u64); 2];

/// Waits until the client's totals and its one flow `key` are `want`, and every packet the
/// programs saw was counted; fails with what the maps hold.
fn expect_counts(maps: &KernelMaps, key: FlowKey, want: Counts, context: &str) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let snap = maps.read().expect("reading the maps");
        let client = snap
            .clients
            .get(&CLIENT_MAC)
            .map(|c| [(c.packets[0], c.bytes[0]), (c.packets[1], c.bytes[1])]);
        let flows: Vec<(FlowKey, Counts)> = snap
            .flows
            .iter()
            .map(|(k, c)| (*k, [(c.packets[0], c.bytes[0]), (c.packets[1], c.bytes[1])]))
            .collect();
        // Outcomes other than `counted`, by direction: what was seen but not counted.
        let uncounted: Vec<(usize, &str, u64)> = (0..2)
            .flat_map(|d| {
                let snap = &snap;
                Stat::ALL
                    .iter()
                    .filter(|s| !matches!(s, Stat::Seen | Stat::Counted))
                    .map(move |s| (d, s.as_str(), snap.stats[d][*s as usize]))
            })
            .filter(|(_, _, n)| *n != 0)
            .collect();
        if client == Some(want) && flows == [(key, want)] && uncounted.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{context}: client (packets, bytes) [upload, download] {client:?}, want {want:?}; \
             flows {flows:?}; not counted (direction, reason, n) {uncounted:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn key(client: std::net::IpAddr, remote: std::net::IpAddr, protocol: u8, port: u16) -> FlowKey {
    let ip16 = |ip: std::net::IpAddr| match ip {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(v6) => v6.octets(),
    };
    FlowKey {
        client_ip: ip16(client),
        remote_ip: ip16(remote),
        client_mac: CLIENT_MAC,
        remote_port: port,
        protocol,
        _pad: [0; 7],
    }
}

fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    [&dst[..], &src[..], &ethertype.to_be_bytes()].concat()
}

/// An IPv6 UDP frame with a hop-by-hop header of `hbh` bytes (PadN options only, which every
/// receiver skips) and `payload` bytes of UDP payload.
fn ipv6_hbh_udp(up: bool, hbh: usize, payload: usize) -> Vec<u8> {
    assert!(hbh.is_multiple_of(8) && hbh >= 8);
    let (src_mac, dst_mac, src, dst, sport, dport) = if up {
        (CLIENT_MAC, GW_MAC, CLIENT6, REMOTE6, 51000u16, 443u16)
    } else {
        (GW_MAC, CLIENT_MAC, REMOTE6, CLIENT6, 443, 51000)
    };
    let mut f = eth(dst_mac, src_mac, 0x86dd);
    let plen = (hbh + 8 + payload) as u16;
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&plen.to_be_bytes());
    f.extend_from_slice(&[0 /* hop-by-hop */, 64]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    // Hop-by-hop: next header UDP, length in 8-byte units past the first 8; then PadN options
    // of at most 257 bytes each filling the remaining hbh - 2 bytes.
    f.extend_from_slice(&[17, (hbh / 8 - 1) as u8]);
    let mut left = hbh - 2;
    while left > 0 {
        let n = left.min(257);
        let n = if left - n == 1 { n - 2 } else { n }; // never leave a lone byte
        f.extend_from_slice(&[1, (n - 2) as u8]);
        f.extend(std::iter::repeat_n(0u8, n - 2));
        left -= n;
    }
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend((0..payload).map(|i| (i % 251) as u8));
    f
}

/// An IPv4 TCP packet (20-byte IP and TCP headers, ACK|PSH) with `payload` bytes, as one
/// frame (a GSO packet's headers once).
fn ipv4_tcp(up: bool, payload: usize) -> Vec<u8> {
    let (src_mac, dst_mac, src, dst, sport, dport) = if up {
        (CLIENT_MAC, GW_MAC, CLIENT4, REMOTE4, 40000u16, 443u16)
    } else {
        (GW_MAC, CLIENT_MAC, REMOTE4, CLIENT4, 443, 40000)
    };
    let mut f = eth(dst_mac, src_mac, 0x0800);
    let total = (20 + 20 + payload) as u16;
    let mut iph = vec![0x45, 0];
    iph.extend_from_slice(&total.to_be_bytes());
    iph.extend_from_slice(&[0, 1, 0x40, 0, 64, 6, 0, 0]);
    iph.extend_from_slice(&src.octets());
    iph.extend_from_slice(&dst.octets());
    let sum = iph.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum::<u32>();
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    iph[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&iph);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
    f.extend((0..payload).map(|i| (i % 251) as u8));
    f
}

/// An IPv6 download whose extension headers end past byte 256, in a frame larger than a page:
/// a packet socket builds it with only the Ethernet header linear, so TC sees the rest in
/// pages. TC made 256 bytes linear and counted it `truncated_l3`, where XDP (which sees the
/// whole frame) counted it. Now every hook counts it, both ways.
#[test]
fn paged_frame_with_ipv6_extension_headers_past_256_bytes_counts_in_every_hook() {
    if !privileged() {
        return;
    }
    // The frame: a 264-byte hop-by-hop header (ending at byte 318) in 7,490 bytes.
    const FRAME: u64 = 7490;
    let payload = FRAME as usize - (14 + 40 + 264 + 8);
    let up = ipv6_hbh_udp(true, 264, payload);
    let down = ipv6_hbh_udp(false, 264, payload);
    assert_eq!((up.len() as u64, down.len() as u64), (FRAME, FRAME));
    let k = key(CLIENT6.into(), REMOTE6.into(), 17, 443);
    // Native XDP takes no frame this large (the veth refuses it above a page's MTU): generic
    // XDP and TC ingress are the upload hooks here.
    for (mode, hook) in [(XdpMode::Generic, "generic"), (XdpMode::Tc, "tc_ingress")] {
        let link = Link::new("gwt-hooks-ext", 9000);
        let (ebpf, maps, attached) = link.attach(mode);
        assert_eq!(attached, hook);
        let before = link.counters();
        send_frames(&link.client, "eth0", std::slice::from_ref(&up)).expect("sending the upload");
        send_frames(&link.gw, "lan0", std::slice::from_ref(&down)).expect("sending the download");
        let want = [(1, FRAME), (1, FRAME)];
        expect_counts(&maps, k, want, &format!("upload on {hook}, download on TC egress"));
        // The link carried exactly these two frames.
        let after = link.counters();
        assert_eq!(
            (after.0.rx_packets - before.0.rx_packets, after.0.rx_bytes - before.0.rx_bytes),
            (1, FRAME),
            "lan0 received"
        );
        assert_eq!(
            (after.1.rx_packets - before.1.rx_packets, after.1.rx_bytes - before.1.rx_bytes),
            (1, FRAME),
            "eth0 received"
        );
        drop(ebpf);
    }
}

/// A GSO packet behind a virtio_net_hdr reaches TC with gso_segs 0 and gso_size set (the
/// kernel counts its segments only when it makes them): 14,480 bytes of TCP payload at a
/// gso_size of 1,448 are 10 frames of 54 + 1,448 bytes on the wire. TC counted it as one frame.
/// Downloads: the gateway sends it out of lan0 with TSO off, so the kernel segments it after
/// TC and the client's link receives the 10 frames. Uploads: the client sends it; with driver
/// XDP the veth makes the client's side segment it (XDP sees 10 frames), with TC ingress the
/// gateway receives the one GSO packet and counts its 10 frames.
#[test]
fn virtio_net_hdr_gso_packets_count_as_their_segments_in_every_hook() {
    if !privileged() {
        return;
    }
    const SEGMENTS: u64 = 10;
    const MSS: u64 = 1448;
    const WIRE: u64 = SEGMENTS * (54 + MSS);
    let gso = Gso { kind: GsoKind::TcpV4, hdr_len: 54, gso_size: MSS as u16, csum_start: 34 };
    let up = ipv4_tcp(true, (SEGMENTS * MSS) as usize);
    let down = ipv4_tcp(false, (SEGMENTS * MSS) as usize);
    let k = key(CLIENT4.into(), REMOTE4.into(), 6, 443);
    for (mode, hook) in [(XdpMode::Auto, "driver"), (XdpMode::Tc, "tc_ingress")] {
        let link = Link::new("gwt-hooks-gso", 1500);
        set_offload(&link.gw, "lan0", Offload::Tso, false).expect("TSO off on lan0");
        let (ebpf, maps, attached) = link.attach(mode);
        assert_eq!(attached, hook);
        let before = link.counters();
        send_gso(&link.client, "eth0", &up, gso).expect("sending the upload");
        send_gso(&link.gw, "lan0", &down, gso).expect("sending the download");
        let want = [(SEGMENTS, WIRE), (SEGMENTS, WIRE)];
        expect_counts(&maps, k, want, &format!("upload on {hook}, download on TC egress"));
        // The download crossed as 10 frames.
        let after = link.counters();
        assert_eq!(
            (after.1.rx_packets - before.1.rx_packets, after.1.rx_bytes - before.1.rx_bytes),
            (SEGMENTS, WIRE),
            "eth0 received the download as"
        );
        if hook == "driver" {
            // Frames only: with native XDP on it, a veth counts received bytes without their
            // Ethernet header (measured: 10 x 14 bytes short).
            assert_eq!(
                after.0.rx_packets - before.0.rx_packets,
                SEGMENTS,
                "lan0 received the upload as"
            );
        }
        drop(ebpf);
    }
}
