//! The capture: a small home network's frames, generated (`home_capture`), and their pcap
//! file.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use etherparse::{PacketBuilder, VlanId};
use pcap_file::{
    DataLink, Endianness, TsResolution,
    pcap::{PcapHeader, PcapPacket, PcapWriter},
};

use crate::GW_MAC;

/// A device of the capture's home network.
struct Device {
    mac: [u8; 6],
    v4: Ipv4Addr,
    v6: Ipv6Addr,
    vlan: Option<u16>,
}

const TV: Device = Device {
    mac: [0x02, 0xaa, 0x00, 0x00, 0x00, 0x01],
    v4: Ipv4Addr::new(10, 77, 1, 101),
    v6: Ipv6Addr::new(0xfd77, 1, 0, 0, 0, 0, 0, 0x101),
    vlan: None,
};
const PHONE: Device = Device {
    mac: [0x64, 0x09, 0x80, 0xaa, 0x00, 0x02],
    v4: Ipv4Addr::new(10, 77, 1, 102),
    v6: Ipv6Addr::new(0xfd77, 1, 0, 0, 0x5a1e, 0x77ff, 0xfe00, 0x102),
    vlan: Some(20),
};
const LAPTOP: Device = Device {
    mac: [0x02, 0xaa, 0x00, 0x00, 0x00, 0x03],
    v4: Ipv4Addr::new(10, 77, 1, 103),
    v6: Ipv6Addr::new(0xfd77, 1, 0, 0, 0x1c3f, 0x9a01, 0x44e2, 0x7b10),
    vlan: None,
};

/// Frames in capture order, with their timestamps.
struct Capture {
    frames: Vec<(Duration, Vec<u8>)>,
    t: Duration,
    rng: fastrand::Rng,
}

#[derive(Clone, Copy)]
enum Proto {
    Tcp { seq: u32, ack: u32, syn: bool, fin: bool, psh: bool },
    Udp,
    Icmp4Echo { reply: bool, seq: u16 },
    Icmp6Echo { reply: bool, seq: u16 },
}

impl Capture {
    fn new() -> Capture {
        Capture {
            frames: Vec::new(),
            t: Duration::from_secs(1_795_460_000),
            rng: fastrand::Rng::with_seed(7),
        }
    }

    fn payload(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.rng.u8(..)).collect()
    }

    /// One frame between a device and the gateway side (`up`: from the device), `n` payload
    /// bytes (or `payload` when given).
    #[allow(clippy::too_many_arguments)]
    fn frame(
        &mut self,
        d: &Device,
        up: bool,
        remote: IpAddr,
        lport: u16,
        rport: u16,
        proto: Proto,
        payload: Vec<u8>,
    ) {
        let (src_mac, dst_mac) = if up { (d.mac, GW_MAC) } else { (GW_MAC, d.mac) };
        let local = if remote.is_ipv4() { IpAddr::V4(d.v4) } else { IpAddr::V6(d.v6) };
        let (src, dst) = if up { (local, remote) } else { (remote, local) };
        let (sport, dport) = if up { (lport, rport) } else { (rport, lport) };
        let eth = PacketBuilder::ethernet2(src_mac, dst_mac);
        let ip = match (d.vlan, src, dst) {
            (Some(v), IpAddr::V4(s), IpAddr::V4(t)) => {
                eth.single_vlan(VlanId::try_new(v).unwrap()).ipv4(s.octets(), t.octets(), 64)
            }
            (None, IpAddr::V4(s), IpAddr::V4(t)) => eth.ipv4(s.octets(), t.octets(), 64),
            (Some(v), IpAddr::V6(s), IpAddr::V6(t)) => {
                eth.single_vlan(VlanId::try_new(v).unwrap()).ipv6(s.octets(), t.octets(), 64)
            }
            (None, IpAddr::V6(s), IpAddr::V6(t)) => eth.ipv6(s.octets(), t.octets(), 64),
            _ => unreachable!("one family per frame"),
        };
        let mut out = Vec::new();
        let written = match proto {
            Proto::Tcp { seq, ack, syn, fin, psh } => {
                let mut b = ip.tcp(sport, dport, seq, 64240);
                if syn {
                    b = b.syn();
                }
                if ack != 0 {
                    b = b.ack(ack);
                }
                if fin {
                    b = b.fin();
                }
                if psh {
                    b = b.psh();
                }
                b.write(&mut out, &payload)
            }
            Proto::Udp => ip.udp(sport, dport).write(&mut out, &payload),
            Proto::Icmp4Echo { reply, seq } => if reply {
                ip.icmpv4_echo_reply(0x4242, seq)
            } else {
                ip.icmpv4_echo_request(0x4242, seq)
            }
            .write(&mut out, &payload),
            Proto::Icmp6Echo { reply, seq } => if reply {
                ip.icmpv6_echo_reply(0x4343, seq)
            } else {
                ip.icmpv6_echo_request(0x4343, seq)
            }
            .write(&mut out, &payload),
        };
        written.expect("building a capture frame");
        self.raw(out);
    }

    fn raw(&mut self, frame: Vec<u8>) {
        self.t += Duration::from_micros(self.rng.u64(200..3000));
        self.frames.push((self.t, frame));
    }

    /// A TCP connection: handshake, `up` bytes from the device and `down` bytes to it in
    /// segments of at most 1448 bytes (1200 over IPv6 or VLAN, so that every frame fits the
    /// lab's 1500-byte MTU with room to spare), acknowledgements, and the close.
    fn tcp(&mut self, d: &Device, remote: IpAddr, lport: u16, rport: u16, up: usize, down: usize) {
        let mss = if d.vlan.is_some() || remote.is_ipv6() { 1200 } else { 1448 };
        let (mut cs, mut ss) = (self.rng.u32(..), self.rng.u32(..));
        let tcp = |seq, ack, syn, fin, psh| Proto::Tcp { seq, ack, syn, fin, psh };
        self.frame(d, true, remote, lport, rport, tcp(cs, 0, true, false, false), vec![]);
        self.frame(d, false, remote, lport, rport, tcp(ss, cs + 1, true, false, false), vec![]);
        cs += 1;
        ss += 1;
        self.frame(d, true, remote, lport, rport, tcp(cs, ss, false, false, false), vec![]);
        let mut left = up;
        while left > 0 {
            let n = left.min(mss);
            let p = self.payload(n);
            self.frame(d, true, remote, lport, rport, tcp(cs, ss, false, false, true), p);
            cs = cs.wrapping_add(n as u32);
            left -= n;
        }
        self.frame(d, false, remote, lport, rport, tcp(ss, cs, false, false, false), vec![]);
        let mut left = down;
        let mut segs = 0;
        while left > 0 {
            let n = left.min(mss);
            let p = self.payload(n);
            self.frame(d, false, remote, lport, rport, tcp(ss, cs, false, false, left == n), p);
            ss = ss.wrapping_add(n as u32);
            left -= n;
            segs += 1;
            if segs % 2 == 0 || left == 0 {
                self.frame(d, true, remote, lport, rport, tcp(cs, ss, false, false, false), vec![]);
            }
        }
        self.frame(d, true, remote, lport, rport, tcp(cs, ss, false, true, false), vec![]);
        self.frame(d, false, remote, lport, rport, tcp(ss, cs + 1, false, true, false), vec![]);
        self.frame(d, true, remote, lport, rport, tcp(cs + 1, ss + 1, false, false, false), vec![]);
    }

    /// A DNS query and its answer (the bytes are not a valid DNS message: only sizes matter).
    fn dns(&mut self, d: &Device, resolver: IpAddr, lport: u16) {
        let q = self.payload(40);
        self.frame(d, true, resolver, lport, 53, Proto::Udp, q);
        let a = self.payload(120);
        self.frame(d, false, resolver, lport, 53, Proto::Udp, a);
    }

    fn ping(&mut self, d: &Device, remote: IpAddr, count: u16) {
        for seq in 1..=count {
            let p = self.payload(56);
            let (req, rep) = match remote {
                IpAddr::V4(_) => {
                    (Proto::Icmp4Echo { reply: false, seq }, Proto::Icmp4Echo { reply: true, seq })
                }
                IpAddr::V6(_) => {
                    (Proto::Icmp6Echo { reply: false, seq }, Proto::Icmp6Echo { reply: true, seq })
                }
            };
            self.frame(d, true, remote, 0, 0, req, p.clone());
            self.frame(d, false, remote, 0, 0, rep, p);
        }
    }
}

/// The capture: a few minutes of a small home network, compressed.
pub(crate) fn home_capture() -> Vec<(Duration, Vec<u8>)> {
    let mut c = Capture::new();
    let v4 = |a, b, cc, d| IpAddr::V4(Ipv4Addr::new(a, b, cc, d));
    let v6 = |s: &str| IpAddr::V6(s.parse().unwrap());
    let resolver4 = v4(198, 51, 100, 53);
    let resolver6 = v6("2001:db8:53::53");

    // The TV asks for an address (DHCP from 0.0.0.0: no LAN endpoint, so not a client's
    // traffic) and its gateway (ARP: not IP).
    let discover = {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(TV.mac, [0xff; 6])
            .ipv4([0, 0, 0, 0], [255, 255, 255, 255], 64)
            .udp(68, 67)
            .write(&mut f, &c.payload(300))
            .unwrap();
        f
    };
    c.raw(discover);
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&TV.mac);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&TV.mac);
    arp.extend_from_slice(&TV.v4.octets());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&[10, 77, 1, 1]);
    arp.resize(60, 0);
    c.raw(arp);

    // Streaming, TLS over IPv4 and IPv6, and QUIC.
    c.dns(&TV, resolver4, 40001);
    c.tcp(&TV, v4(93, 184, 216, 34), 50001, 443, 517 + 126, 24_000);
    c.tcp(&TV, v6("2a00:1450:4001:82b::200e"), 50002, 443, 517, 60_000);
    for i in 0..30u16 {
        let up = i % 6 == 0;
        let n = if up { 120 } else { 1200 };
        let p = c.payload(n);
        c.frame(&TV, up, v4(142, 250, 74, 110), 50003, 443, Proto::Udp, p);
    }

    // The phone, on VLAN 20: DNS over IPv6, an HTTP request, a ping to each family.
    c.dns(&PHONE, resolver6, 40002);
    c.tcp(&PHONE, v4(203, 0, 113, 7), 50100, 80, 180, 9_000);
    c.tcp(&PHONE, v6("2001:db8:ffff::7"), 50101, 443, 600, 3_000);
    c.ping(&PHONE, v4(203, 0, 113, 7), 4);
    c.ping(&PHONE, v6("2001:db8:ffff::7"), 3);

    // The laptop: neighbour solicitation (to a multicast address: the client is the sender),
    // a large upload, DNS, and a few frames to the TV (LAN to LAN, both ends clients).
    let ns = {
        let target: Ipv6Addr = "fd77:1::1".parse().unwrap();
        let group: Ipv6Addr = "ff02::1:ff00:1".parse().unwrap();
        let mut payload = vec![0u8; 4];
        payload.extend_from_slice(&target.octets());
        payload.extend_from_slice(&[1, 1]);
        payload.extend_from_slice(&LAPTOP.mac);
        let mut f = Vec::new();
        PacketBuilder::ethernet2(LAPTOP.mac, [0x33, 0x33, 0xff, 0x00, 0x00, 0x01])
            .ipv6(LAPTOP.v6.octets(), group.octets(), 255)
            .icmpv6(etherparse::Icmpv6Type::Unknown { type_u8: 135, code_u8: 0, bytes5to8: [0; 4] })
            .write(&mut f, &payload)
            .unwrap();
        f
    };
    c.raw(ns);
    c.dns(&LAPTOP, resolver4, 40003);
    c.tcp(&LAPTOP, v4(198, 51, 100, 80), 50200, 443, 40_000, 2_000);
    for i in 0..6u16 {
        let (from, to) = if i % 2 == 0 { (&LAPTOP, &TV) } else { (&TV, &LAPTOP) };
        let p = c.payload(200 + 10 * i as usize);
        let mut f = Vec::new();
        PacketBuilder::ethernet2(from.mac, to.mac)
            .ipv4(from.v4.octets(), to.v4.octets(), 64)
            .udp(5353, 5353)
            .write(&mut f, &p)
            .unwrap();
        c.raw(f);
    }
    c.frames
}

pub(crate) fn pcap_bytes(frames: &[(Duration, Vec<u8>)]) -> Vec<u8> {
    let header = PcapHeader {
        version_major: 2,
        version_minor: 4,
        ts_correction: 0,
        ts_accuracy: 0,
        snaplen: 65535,
        datalink: DataLink::ETHERNET,
        ts_resolution: TsResolution::MicroSecond,
        endianness: Endianness::Little,
    };
    let mut w = PcapWriter::with_header(Vec::new(), header).expect("pcap header");
    for (t, f) in frames {
        w.write_packet(&PcapPacket::new(*t, f.len() as u32, f)).expect("pcap record");
    }
    w.into_writer()
}
