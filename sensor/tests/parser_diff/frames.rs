//! Seeded frame generator: valid frames of every kind the parser meets, and mutations of them.
//!
//! Valid headers are written by etherparse's header types; the hostile parts (bogus lengths,
//! cut-short headers, tag stacks, chains past the walk limit, bit flips) are made by changing
//! the bytes afterwards, which is what a broken or malicious sender does. The same seed gives
//! the same frames, so a mismatch found in a long run can be replayed.

use std::{
    collections::VecDeque,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use etherparse::{
    EtherType, Ethernet2Header, IpAuthHeader, IpFragOffset, IpNumber, Ipv4Header, Ipv4Options,
    Ipv6FragmentHeader, Ipv6Header, Ipv6RawExtHeader, SingleVlanHeader, TcpHeader, UdpHeader,
    VlanId,
};
use ipnet::IpNet;
use sensor::common::Direction;

/// The LAN the generated clients live in (and the programs are loaded with).
pub const LAN: [&str; 4] = ["192.168.1.0/24", "10.20.0.0/16", "fd00:1::/64", "2001:db8:1::/48"];

pub fn lan() -> Vec<IpNet> {
    LAN.iter().map(|p| p.parse().expect("LAN prefix")).collect()
}

/// The gateway's LAN port.
pub const GW_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0xfe];
/// Distinct unicast client MACs most frames use (random MACs come on top of them).
pub const CLIENT_POOL: u8 = 40;

/// One frame and the program it goes through (upload: XDP, download: TC).
#[derive(Clone, Debug)]
pub struct Frame {
    pub bytes: Vec<u8>,
    pub dir: Direction,
    /// What the generator made: the base kind and the mutations applied.
    pub label: String,
}

/// Where the headers of a base frame are, for the mutations.
#[derive(Clone)]
struct Built {
    frame: Frame,
    /// Start of the IP header (after the tags), if the frame has one.
    l3: Option<usize>,
    /// Start of the TCP/UDP header, if any.
    l4: Option<(usize, IpNumber)>,
    /// End of the headers (where the payload starts).
    headers_end: usize,
}

pub struct Generator {
    rng: fastrand::Rng,
    queue: VecDeque<Frame>,
    recent: Vec<Frame>,
}

impl Generator {
    pub fn new(seed: u64) -> Generator {
        Generator {
            rng: fastrand::Rng::with_seed(seed),
            queue: VecDeque::new(),
            recent: Vec::new(),
        }
    }

    fn chance(&mut self, percent: u32) -> bool {
        self.rng.u32(0..100) < percent
    }

    // -----------------------------------------------------------------------------------------
    // Addresses

    fn client_mac(&mut self) -> [u8; 6] {
        match self.rng.u32(0..100) {
            0..=94 => [0x02, 0x00, 0x00, 0x00, 0x01, self.rng.u8(0..CLIENT_POOL)],
            // Group addresses: broadcast, IPv4 and IPv6 multicast.
            95 => [0xff; 6],
            96 => [0x01, 0x00, 0x5e, 0x00, 0x00, self.rng.u8(..)],
            97 => [0x33, 0x33, 0x00, 0x00, 0x00, self.rng.u8(..)],
            // Anything, group bit included half the time.
            _ => std::array::from_fn(|_| self.rng.u8(..)),
        }
    }

    fn client_v4(&mut self) -> Ipv4Addr {
        match self.rng.u32(0..100) {
            0..=59 => Ipv4Addr::new(192, 168, 1, self.rng.u8(1..255)),
            60..=84 => Ipv4Addr::new(10, 20, self.rng.u8(..), self.rng.u8(..)),
            85..=89 => Ipv4Addr::new(192, 168, 2, self.rng.u8(..)),
            90..=91 => Ipv4Addr::BROADCAST,
            92 => Ipv4Addr::UNSPECIFIED,
            _ => Ipv4Addr::from(self.rng.u32(..)),
        }
    }

    fn client_v6(&mut self) -> Ipv6Addr {
        let iid = self.rng.u64(..);
        match self.rng.u32(0..100) {
            0..=54 => Ipv6Addr::from((0xfd00_0001_0000_0000u128 << 64) | iid as u128),
            55..=79 => Ipv6Addr::from(
                (0x2001_0db8_0001_0000u128 << 64)
                    | ((self.rng.u16(..) as u128) << 64)
                    | iid as u128,
            ),
            80..=84 => Ipv6Addr::from((0xfe80u128 << 112) | iid as u128),
            85..=89 => Ipv6Addr::from((0xfd00_0002_0000_0000u128 << 64) | iid as u128),
            // An IPv4-mapped LAN address in an IPv6 header: never a client.
            90..=93 => Ipv4Addr::new(192, 168, 1, self.rng.u8(1..255)).to_ipv6_mapped(),
            94 => Ipv6Addr::UNSPECIFIED,
            95 => Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
            _ => Ipv6Addr::from(self.rng.u128(..)),
        }
    }

    fn remote(&mut self, v6: bool) -> IpAddr {
        if v6 {
            match self.rng.u32(0..10) {
                0..=7 => IpAddr::V6(Ipv6Addr::from((0x2a00u128 << 112) | self.rng.u128(..) >> 16)),
                8 => IpAddr::V6(self.client_v6()),
                _ => IpAddr::V6(Ipv6Addr::from(self.rng.u128(..))),
            }
        } else {
            match self.rng.u32(0..10) {
                0..=8 => IpAddr::V4(Ipv4Addr::from(self.rng.u32(..))),
                _ => IpAddr::V4(self.client_v4()),
            }
        }
    }

    fn remote_port(&mut self) -> u16 {
        match self.rng.u32(0..10) {
            0..=3 => 443,
            4 => 80,
            5 => 53,
            6 => 123,
            _ => self.rng.u16(..),
        }
    }

    fn payload_len(&mut self) -> usize {
        match self.rng.u32(0..100) {
            0..=39 => self.rng.usize(0..64),
            40..=91 => self.rng.usize(64..1400),
            92..=96 => self.rng.usize(1400..1500),
            // Jumbo frames, up to 9000 bytes of payload.
            _ => self.rng.usize(1500..9000),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Valid frames

    /// One valid frame: Ethernet, 0–3 VLAN tags, IPv4 (with options, fragments) or IPv6 (with
    /// extension chains, some past the walk limit) or something else, TCP/UDP/ICMP/other.
    fn base(&mut self) -> Built {
        let dir = if self.chance(50) { Direction::Upload } else { Direction::Download };
        // Mostly the frame goes the way its direction says (client → remote on upload); some
        // go the other way round, so that the remote is the one taken for the client.
        let client_first = self.chance(92) == (dir == Direction::Upload);
        let client_mac = self.client_mac();
        let (src_mac, dst_mac) =
            if client_first { (client_mac, GW_MAC) } else { (GW_MAC, client_mac) };

        let mut label = String::new();
        let tags = match self.rng.u32(0..100) {
            0..=69 => 0,
            70..=84 => 1,
            85..=94 => 2,
            _ => 3,
        };
        let tpids: Vec<EtherType> = (0..tags)
            .map(|_| match self.rng.u32(0..100) {
                0..=59 => EtherType::VLAN_TAGGED_FRAME,
                60..=94 => EtherType::PROVIDER_BRIDGING,
                _ => EtherType::VLAN_DOUBLE_TAGGED_FRAME,
            })
            .collect();
        if tags > 0 {
            let names: Vec<String> = tpids.iter().map(|t| format!("{:#06x}", t.0)).collect();
            label.push_str(&format!("tags[{}] ", names.join(",")));
        }

        let family = self.rng.u32(0..100);
        let (ether_type, l3_bytes, l4_at, l4_end) = match family {
            0..=51 => {
                let (b, l4, end, what) = self.ipv4_packet(client_first);
                label.push_str(&what);
                (EtherType::IPV4, b, Some(l4), end)
            }
            52..=94 => {
                let (b, l4, end, what) = self.ipv6_packet(client_first);
                label.push_str(&what);
                (EtherType::IPV6, b, l4, end)
            }
            _ => {
                let (t, n, what) = match self.rng.u32(0..5) {
                    0 => (EtherType::ARP, 28, "arp"),
                    1 => (EtherType(0x88cc), 40, "lldp"),
                    2 => (EtherType(self.rng.u16(0..0x600)), 46, "802.3 length"),
                    3 => (EtherType::IPV4, 0, "ipv4 ethertype, nothing after"),
                    _ => (EtherType(self.rng.u16(..)), self.rng.usize(0..100), "random ethertype"),
                };
                label.push_str(what);
                (t, (0..n).map(|_| self.rng.u8(..)).collect(), None, 0)
            }
        };

        let mut bytes = Vec::with_capacity(14 + 12 + l3_bytes.len());
        let first_type = tpids.first().copied().unwrap_or(ether_type);
        bytes.extend_from_slice(
            &Ethernet2Header { source: src_mac, destination: dst_mac, ether_type: first_type }
                .to_bytes(),
        );
        for (i, _) in tpids.iter().enumerate() {
            let next = tpids.get(i + 1).copied().unwrap_or(ether_type);
            let tag = SingleVlanHeader {
                pcp: Default::default(),
                drop_eligible_indicator: false,
                vlan_id: VlanId::try_new(self.rng.u16(0..4096)).expect("12-bit VLAN id"),
                ether_type: next,
            };
            bytes.extend_from_slice(&tag.to_bytes());
        }
        let l3 = bytes.len();
        bytes.extend_from_slice(&l3_bytes);
        let is_ip = (ether_type == EtherType::IPV4 || ether_type == EtherType::IPV6)
            && !l3_bytes.is_empty();
        Built {
            frame: Frame { bytes, dir, label },
            l3: is_ip.then_some(l3),
            l4: l4_at.map(|(at, proto)| (l3 + at, proto)),
            headers_end: if is_ip { l3 + l4_end } else { l3 },
        }
    }

    /// An L4 header and payload for `proto` from `src_port` to `dst_port` (TCP, UDP, ICMP
    /// echo, or bytes for anything else); and the header length.
    fn l4(&mut self, proto: IpNumber, sport: u16, dport: u16, n: usize) -> (Vec<u8>, usize) {
        let payload: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
        let mut out = Vec::with_capacity(60 + n);
        match proto {
            IpNumber::TCP => {
                let mut tcp = TcpHeader::new(sport, dport, self.rng.u32(..), 64240);
                tcp.ack = true;
                if self.chance(30) {
                    let words = self.rng.usize(1..11);
                    let opts: Vec<u8> = (0..words * 4).map(|_| 1).collect(); // NOPs
                    tcp.set_options_raw(&opts).expect("≤ 40 bytes of options");
                }
                out.extend_from_slice(&tcp.to_bytes());
            }
            IpNumber::UDP => {
                let udp = UdpHeader::without_ipv4_checksum(sport, dport, n).unwrap_or(UdpHeader {
                    source_port: sport,
                    destination_port: dport,
                    length: 0,
                    checksum: 0,
                });
                out.extend_from_slice(&udp.to_bytes());
            }
            IpNumber::ICMP | IpNumber::IPV6_ICMP => {
                out.extend_from_slice(&[
                    if proto == IpNumber::ICMP { 8 } else { 128 },
                    0,
                    0,
                    0,
                    0,
                    1,
                    0,
                    1,
                ]);
            }
            _ => {}
        }
        let hlen = out.len();
        out.extend_from_slice(&payload);
        (out, hlen)
    }

    fn protocol(&mut self, v6: bool) -> IpNumber {
        match self.rng.u32(0..100) {
            0..=49 => IpNumber::TCP,
            50..=84 => IpNumber::UDP,
            85..=92 => {
                if v6 {
                    IpNumber::IPV6_ICMP
                } else {
                    IpNumber::ICMP
                }
            }
            _ => IpNumber([47, 50, 132, 0, 41, 255, 58, 1][self.rng.usize(0..8)]),
        }
    }

    /// An IPv4 packet: header (IHL 5, or options), L4, payload. Returns the bytes, where the
    /// L4 header starts (and its protocol), where the headers end, and a label.
    #[allow(clippy::type_complexity)]
    fn ipv4_packet(&mut self, client_first: bool) -> (Vec<u8>, (usize, IpNumber), usize, String) {
        let client = IpAddr::V4(self.client_v4());
        let remote = self.remote(false);
        let (IpAddr::V4(c), IpAddr::V4(r)) = (client, remote) else {
            unreachable!("IPv4 addresses")
        };
        let (src, dst) = if client_first { (c, r) } else { (r, c) };
        let proto = self.protocol(false);
        let rport = self.remote_port();
        let cport = self.rng.u16(1024..);
        let (sport, dport) = if client_first { (cport, rport) } else { (rport, cport) };
        let n = self.payload_len();
        let (l4, l4_hlen) = self.l4(proto, sport, dport, n);
        let mut ip = Ipv4Header::new(l4.len() as u16, 64, proto, src.octets(), dst.octets())
            .unwrap_or_else(|_| {
                Ipv4Header::new(0, 64, proto, src.octets(), dst.octets()).expect("empty payload")
            });
        let mut what = format!("ipv4 proto {}", proto.0);
        if self.chance(15) {
            let words = self.rng.usize(1..11);
            let opts: Vec<u8> = (0..words * 4).map(|_| 1).collect();
            ip.options = Ipv4Options::try_from(opts.as_slice()).expect("≤ 40 bytes of options");
            what.push_str(&format!(" ihl {}", 5 + words));
        }
        match self.rng.u32(0..100) {
            0..=4 => {
                ip.dont_fragment = false;
                ip.more_fragments = true;
                what.push_str(" first-fragment");
            }
            5..=14 => {
                ip.dont_fragment = false;
                ip.more_fragments = self.chance(50);
                ip.fragment_offset =
                    IpFragOffset::try_new(self.rng.u16(1..0x2000)).expect("13 bits");
                what.push_str(" later-fragment");
            }
            _ => {}
        }
        ip.header_checksum = ip.calc_header_checksum();
        let mut b = ip.to_bytes().to_vec();
        let l4_at = b.len();
        b.extend_from_slice(&l4);
        (b, (l4_at, proto), l4_at + l4_hlen, what)
    }

    /// An IPv6 packet with an extension chain (0–12 headers: past the walk limit of 8 now and
    /// then). Returns as [`Generator::ipv4_packet`]; no L4 start when the chain hides it.
    #[allow(clippy::type_complexity)]
    fn ipv6_packet(
        &mut self,
        client_first: bool,
    ) -> (Vec<u8>, Option<(usize, IpNumber)>, usize, String) {
        let client = self.client_v6();
        let IpAddr::V6(remote) = self.remote(true) else { unreachable!("IPv6 address") };
        let (src, dst) = if client_first { (client, remote) } else { (remote, client) };
        let proto = self.protocol(true);
        let rport = self.remote_port();
        let cport = self.rng.u16(1024..);
        let (sport, dport) = if client_first { (cport, rport) } else { (rport, cport) };
        let n = self.payload_len();
        let (l4, l4_hlen) = self.l4(proto, sport, dport, n);

        let chain_len = match self.rng.u32(0..100) {
            0..=64 => 0,
            65..=84 => self.rng.usize(1..4),
            85..=94 => self.rng.usize(4..9),
            _ => self.rng.usize(9..13),
        };
        let kinds: Vec<IpNumber> = (0..chain_len)
            .map(|_| {
                [
                    IpNumber::IPV6_HEADER_HOP_BY_HOP,
                    IpNumber::IPV6_ROUTE_HEADER,
                    IpNumber::IPV6_FRAGMENTATION_HEADER,
                    IpNumber::AUTHENTICATION_HEADER,
                    IpNumber::IPV6_DESTINATION_OPTIONS,
                ][self.rng.usize(0..5)]
            })
            .collect();
        let mut chain = Vec::new();
        let mut later_fragment = false;
        for (i, kind) in kinds.iter().enumerate() {
            let next = kinds.get(i + 1).copied().unwrap_or(proto);
            match *kind {
                IpNumber::IPV6_FRAGMENTATION_HEADER => {
                    let offset = if self.chance(70) { 0 } else { self.rng.u16(1..0x2000) };
                    later_fragment |= offset != 0;
                    let f = Ipv6FragmentHeader::new(
                        next,
                        IpFragOffset::try_new(offset).expect("13 bits"),
                        self.chance(50),
                        self.rng.u32(..),
                    );
                    chain.extend_from_slice(&f.to_bytes());
                }
                IpNumber::AUTHENTICATION_HEADER => {
                    if self.chance(15) {
                        // Payload length 0: 8 bytes by the kernel's formula, refused by etherparse.
                        chain.extend_from_slice(&[next.0, 0, 0, 0, 0, 0, 0, 1]);
                    } else {
                        let icv: Vec<u8> =
                            (0..self.rng.usize(0..5) * 4).map(|_| self.rng.u8(..)).collect();
                        let ah = IpAuthHeader::new(next, self.rng.u32(..), self.rng.u32(..), &icv)
                            .expect("aligned ICV");
                        chain.extend_from_slice(&ah.to_bytes());
                    }
                }
                _ => {
                    let units = self.rng.usize(0..4);
                    let mut payload = vec![0u8; 6 + units * 8];
                    // One PadN option filling the header.
                    payload[0] = 1;
                    payload[1] = (payload.len() - 2) as u8;
                    let h = Ipv6RawExtHeader::new_raw(next, &payload).expect("6 + 8n bytes");
                    chain.extend_from_slice(&h.to_bytes());
                }
            }
        }
        let first = kinds.first().copied().unwrap_or(proto);
        let payload_length = (chain.len() + l4.len()).min(u16::MAX as usize) as u16;
        let ip = Ipv6Header {
            traffic_class: 0,
            flow_label: Default::default(),
            payload_length,
            next_header: first,
            hop_limit: 64,
            source: src.octets(),
            destination: dst.octets(),
        };
        let mut b = ip.to_bytes().to_vec();
        b.extend_from_slice(&chain);
        let l4_at = b.len();
        b.extend_from_slice(&l4);
        let names: Vec<String> = kinds.iter().map(|k| k.0.to_string()).collect();
        let what = format!(
            "ipv6 exts[{}] proto {}{}",
            names.join(","),
            proto.0,
            if later_fragment { " later-fragment" } else { "" }
        );
        let l4 = (!later_fragment).then_some((l4_at, proto));
        (b, l4, l4_at + l4_hlen, what)
    }

    // -----------------------------------------------------------------------------------------
    // Mutations

    /// The bytes worth mutating: the headers and a few bytes after them.
    fn header_area(b: &Built) -> usize {
        (b.headers_end + 8).min(b.frame.bytes.len()).max(1)
    }

    fn mutate(&mut self, mut b: Built) {
        let len = b.frame.bytes.len();
        let m = self.rng.u32(0..100);
        let what: String = match m {
            0..=39 => String::new(),
            40..=53 => {
                let cut = self.rng.usize(0..len.max(1));
                b.frame.bytes.truncate(cut);
                format!("cut at {cut}")
            }
            54 => {
                // Every prefix of the headers (and a few payload bytes): every truncation the
                // parser can meet in this frame.
                let end = Self::header_area(&b);
                for cut in 0..end {
                    let mut f = b.frame.clone();
                    f.bytes.truncate(cut);
                    f.label = format!("{} | cut at {cut} (every offset)", f.label);
                    self.queue.push_back(f);
                }
                "uncut (every-offset series)".into()
            }
            55..=61 => match b.l3 {
                Some(l3) if b.frame.bytes[l3] >> 4 == 4 => {
                    let ihl = self.rng.u8(0..16);
                    b.frame.bytes[l3] = 0x40 | ihl;
                    format!("ihl {ihl}")
                }
                _ => self.flip_bits(&mut b),
            },
            62..=67 => match b.l3 {
                Some(l3) => {
                    let v = self.rng.u16(..).to_be_bytes();
                    let at = if b.frame.bytes[l3] >> 4 == 4 { l3 + 2 } else { l3 + 4 };
                    b.frame.bytes[at..at + 2].copy_from_slice(&v);
                    format!("ip length field {}", u16::from_be_bytes(v))
                }
                None => self.flip_bits(&mut b),
            },
            68..=69 => match b.l3 {
                Some(l3) => {
                    let v = self.rng.u8(0..16);
                    b.frame.bytes[l3] = (b.frame.bytes[l3] & 0x0f) | (v << 4);
                    format!("ip version {v}")
                }
                None => self.flip_bits(&mut b),
            },
            70..=84 => self.flip_bits(&mut b),
            85..=89 => {
                let end = Self::header_area(&b);
                let n = self.rng.usize(1..4);
                for _ in 0..n {
                    let at = self.rng.usize(0..end);
                    b.frame.bytes[at] = self.rng.u8(..);
                }
                format!("{n} random bytes")
            }
            90..=91 => match b.l4 {
                Some((at, IpNumber::TCP)) if at + 13 <= len => {
                    let doff = self.rng.u8(0..16);
                    b.frame.bytes[at + 12] = (doff << 4) | (b.frame.bytes[at + 12] & 0x0f);
                    format!("tcp data offset {doff}")
                }
                _ => self.flip_bits(&mut b),
            },
            92 => {
                let t = self.rng.u16(..).to_be_bytes();
                if len >= 14 {
                    b.frame.bytes[12..14].copy_from_slice(&t);
                }
                format!("ethertype {:#06x}", u16::from_be_bytes(t))
            }
            93..=94 => {
                let n = self.rng.usize(0..14);
                b.frame.bytes.truncate(n);
                format!("runt, {n} bytes")
            }
            95..=96 => {
                let n = self.rng.usize(14..200);
                b.frame.bytes = (0..n).map(|_| self.rng.u8(..)).collect();
                b.frame.label = String::new();
                format!("random {n} bytes")
            }
            _ => {
                // Two mutations: a bit flip, then a cut.
                let flips = self.flip_bits(&mut b);
                let cut = self.rng.usize(0..len.max(1));
                b.frame.bytes.truncate(cut);
                format!("{flips}, cut at {cut}")
            }
        };
        if !what.is_empty() {
            b.frame.label = format!("{} | {what}", b.frame.label);
        }
        self.queue.push_back(b.frame);
    }

    fn flip_bits(&mut self, b: &mut Built) -> String {
        let end = Self::header_area(b);
        if b.frame.bytes.is_empty() {
            return "no bits to flip".into();
        }
        let n = self.rng.usize(1..5);
        let mut at = Vec::new();
        for _ in 0..n {
            let bit = self.rng.usize(0..end * 8);
            b.frame.bytes[bit / 8] ^= 1 << (bit % 8);
            at.push(bit.to_string());
        }
        format!("bits flipped {}", at.join(","))
    }
}

impl Iterator for Generator {
    type Item = Frame;

    fn next(&mut self) -> Option<Frame> {
        if let Some(f) = self.queue.pop_front() {
            return Some(f);
        }
        // Now and then an earlier frame again: flows and clients that are already known.
        if !self.recent.is_empty() && self.chance(8) {
            let f = self.recent[self.rng.usize(0..self.recent.len())].clone();
            return Some(Frame { label: format!("{} | again", f.label), ..f });
        }
        let b = self.base();
        self.mutate(b);
        let f = self.queue.pop_front()?;
        if self.recent.len() < 64 {
            self.recent.push(f.clone());
        } else {
            let i = self.rng.usize(0..64);
            self.recent[i] = f.clone();
        }
        Some(f)
    }
}
