//! The peer bench's traffic: a fixed pool of upload frames from many LAN clients (one MAC, one
//! IPv4 and one IPv6 address each) to many remotes, in a realistic mix of sizes, families and
//! protocols. The pool is built from a fixed seed, so every run (and both monitors in a run)
//! sees the same frames in the same order.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context as _, Result};
use etherparse::PacketBuilder;

/// Distinct clients (MACs). Their IPv4 addresses 10.77.1.20–219 sit in the lab's LAN prefix.
pub const CLIENTS: usize = 200;
/// Remote addresses per family: 10.77.3.1–64 and fd77:3::1–40 (hex). The gateway has
/// blackhole routes for both prefixes, so forwarded frames end at the gateway.
pub const REMOTES: usize = 64;
/// Frames in the pool; the generator sends it round and round.
pub const POOL: usize = 8192;
/// Smallest and largest frame (no FCS): a minimal Ethernet frame and a full 1500-byte MTU.
pub const MIN_FRAME: usize = 64;
pub const MAX_FRAME: usize = 1514;

/// The remote prefixes the gateway blackholes.
pub const REMOTE_PREFIXES: [&str; 2] = ["10.77.3.0/24", "fd77:3::/64"];

/// One frame's description (what `build` turns into bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameSpec {
    pub client: usize,
    pub remote: usize,
    pub ipv6: bool,
    pub tcp: bool,
    pub client_port: u16,
    pub remote_port: u16,
    /// Frame length without FCS.
    pub len: usize,
}

/// The pool: frame bytes and, per frame, its client (to check per-client counts).
pub struct Mix {
    pub frames: Vec<Vec<u8>>,
    pub specs: Vec<FrameSpec>,
}

pub fn client_mac(i: usize) -> [u8; 6] {
    // Locally administered unicast (0x02): never a group MAC, which the sensor does not count.
    [0x02, 0x42, 0x77, 0x01, (i >> 8) as u8, i as u8]
}

pub fn client_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 1, 20 + i as u8)
}

pub fn client_v6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd77, 1, 0, 0, 0, 0, 1, i as u16)
}

pub fn remote_v4(r: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 3, 1 + r as u8)
}

pub fn remote_v6(r: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd77, 3, 0, 0, 0, 0, 0, 1 + r as u16)
}

/// splitmix64: a fixed, dependency-free sequence; the mix only needs to be the same each run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Frame length: many small (ACKs, DNS, QUIC acks), some medium, many full-size.
fn frame_len(rng: &mut Rng) -> usize {
    let len = match rng.below(100) {
        0..40 => MIN_FRAME + rng.below(65) as usize,
        40..55 => 129 + rng.below(472) as usize,
        55..60 => 601 + rng.below(599) as usize,
        _ => 1200 + rng.below(315) as usize,
    };
    len.min(MAX_FRAME)
}

fn spec(rng: &mut Rng) -> FrameSpec {
    let tcp = rng.below(100) < 75;
    let remote_port = if tcp {
        match rng.below(100) {
            0..60 => 443,
            60..80 => 80,
            80..90 => 8443,
            _ => 993,
        }
    } else {
        match rng.below(100) {
            0..50 => 443,
            50..80 => 53,
            80..90 => 123,
            _ => 3478,
        }
    };
    FrameSpec {
        client: rng.below(CLIENTS as u64) as usize,
        remote: rng.below(REMOTES as u64) as usize,
        ipv6: rng.below(100) < 30,
        tcp,
        // A handful of source ports per client, so flows repeat (as real connections do).
        client_port: 40_000 + rng.below(4) as u16,
        remote_port,
        len: frame_len(rng),
    }
}

/// Builds `spec` as an upload frame to `gateway_mac`: Ethernet, IPv4 or IPv6, TCP (ACK) or UDP,
/// zero payload up to `spec.len`, checksums filled in.
pub fn build(spec: &FrameSpec, gateway_mac: [u8; 6]) -> Result<Vec<u8>> {
    let eth = PacketBuilder::ethernet2(client_mac(spec.client), gateway_mac);
    let l3 = if spec.ipv6 {
        eth.ipv6(client_v6(spec.client).octets(), remote_v6(spec.remote).octets(), 64)
    } else {
        eth.ipv4(client_v4(spec.client).octets(), remote_v4(spec.remote).octets(), 64)
    };
    let mut out = Vec::with_capacity(spec.len);
    if spec.tcp {
        let b = l3.tcp(spec.client_port, spec.remote_port, 1, 64_240).ack(1);
        let payload = vec![0; spec.len.saturating_sub(b.size(0))];
        b.write(&mut out, &payload)
    } else {
        let b = l3.udp(spec.client_port, spec.remote_port);
        let payload = vec![0; spec.len.saturating_sub(b.size(0))];
        b.write(&mut out, &payload)
    }
    .with_context(|| format!("building frame {spec:?}"))?;
    Ok(out)
}

/// The pool for a gateway whose LAN MAC is `gateway_mac`.
pub fn mix(gateway_mac: [u8; 6]) -> Result<Mix> {
    let mut rng = Rng(0x5eed_f00d_9ee7_0001);
    let specs: Vec<FrameSpec> = (0..POOL).map(|_| spec(&mut rng)).collect();
    let frames = specs.iter().map(|s| build(s, gateway_mac)).collect::<Result<_>>()?;
    Ok(Mix { frames, specs })
}

impl Mix {
    /// Frames per client when the first `count` frames of the endless pool are sent.
    pub fn per_client(&self, count: u64) -> Vec<u64> {
        let pool = self.specs.len() as u64;
        let (rounds, rest) = (count / pool, (count % pool) as usize);
        let mut out = vec![0u64; CLIENTS];
        for (i, s) in self.specs.iter().enumerate() {
            out[s.client] += rounds + u64::from(i < rest);
        }
        out
    }

    /// IP bytes (the frame without its 14-byte Ethernet header: what darkstat counts) sent by
    /// each client address when the first `count` frames of the endless pool are sent.
    pub fn ip_bytes_per_client_address(&self, count: u64) -> BTreeMap<IpAddr, u64> {
        let pool = self.specs.len() as u64;
        let (rounds, rest) = (count / pool, (count % pool) as usize);
        let mut out = BTreeMap::new();
        for (i, (s, f)) in self.specs.iter().zip(&self.frames).enumerate() {
            let addr = if s.ipv6 {
                IpAddr::V6(client_v6(s.client))
            } else {
                IpAddr::V4(client_v4(s.client))
            };
            *out.entry(addr).or_insert(0) += (rounds + u64::from(i < rest)) * (f.len() as u64 - 14);
        }
        out
    }

    /// Distinct (client MAC, client IP, remote IP, protocol, remote port) keys in the pool: the
    /// flows both monitors aggregate into.
    pub fn flows(&self) -> usize {
        let mut keys: Vec<_> =
            self.specs.iter().map(|s| (s.client, s.ipv6, s.remote, s.tcp, s.remote_port)).collect();
        keys.sort_unstable();
        keys.dedup();
        keys.len()
    }

    pub fn mean_len(&self) -> f64 {
        self.frames.iter().map(Vec::len).sum::<usize>() as f64 / self.frames.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    use super::*;

    const GW: [u8; 6] = [0x02, 0x77, 0, 0, 1, 1];

    #[test]
    fn frames_parse_back_to_their_spec_with_valid_checksums() {
        let spec = FrameSpec {
            client: 7,
            remote: 63,
            ipv6: false,
            tcp: true,
            client_port: 40_002,
            remote_port: 443,
            len: 100,
        };
        let frame = build(&spec, GW).unwrap();
        assert_eq!(frame.len(), 100);
        let p = SlicedPacket::from_ethernet(&frame).unwrap();
        let Some(etherparse::LinkSlice::Ethernet2(eth)) = &p.link else {
            panic!("not Ethernet II: {:?}", p.link)
        };
        assert_eq!(eth.source(), [0x02, 0x42, 0x77, 0x01, 0, 7]);
        assert_eq!(eth.destination(), GW);
        let Some(NetSlice::Ipv4(ip)) = &p.net else { panic!("not IPv4") };
        assert_eq!(ip.header().source_addr(), Ipv4Addr::new(10, 77, 1, 27));
        assert_eq!(ip.header().destination_addr(), Ipv4Addr::new(10, 77, 3, 64));
        let Some(TransportSlice::Tcp(tcp)) = &p.transport else { panic!("not TCP") };
        assert_eq!((tcp.source_port(), tcp.destination_port()), (40_002, 443));
        assert!(tcp.ack());
        let header = ip.header().to_header();
        assert_eq!(header.header_checksum, header.calc_header_checksum());
        assert_eq!(
            tcp.checksum(),
            tcp.to_header().calc_checksum_ipv4(&header, tcp.payload()).unwrap()
        );

        let v6 = build(&FrameSpec { ipv6: true, tcp: false, len: 1514, ..spec }, GW).unwrap();
        assert_eq!(v6.len(), 1514);
        let p = SlicedPacket::from_ethernet(&v6).unwrap();
        let Some(NetSlice::Ipv6(ip)) = &p.net else { panic!("not IPv6") };
        assert_eq!(ip.header().source_addr(), "fd77:1::1:7".parse::<Ipv6Addr>().unwrap());
        assert_eq!(ip.header().destination_addr(), "fd77:3::40".parse::<Ipv6Addr>().unwrap());
        assert!(matches!(p.transport, Some(TransportSlice::Udp(_))));
    }

    #[test]
    fn the_pool_is_a_fixed_realistic_mix_over_many_clients_and_remotes() {
        let mix = mix(GW).unwrap();
        assert_eq!(mix.frames.len(), POOL);
        // Same seed, same pool.
        assert_eq!(mix.frames, super::mix(GW).unwrap().frames);
        let v6 = mix.specs.iter().filter(|s| s.ipv6).count() as f64 / POOL as f64;
        let tcp = mix.specs.iter().filter(|s| s.tcp).count() as f64 / POOL as f64;
        assert!((0.25..0.35).contains(&v6), "IPv6 share {v6}");
        assert!((0.70..0.80).contains(&tcp), "TCP share {tcp}");
        assert!(mix.frames.iter().all(|f| (MIN_FRAME..=MAX_FRAME).contains(&f.len())));
        assert!(mix.frames.iter().any(|f| f.len() == MIN_FRAME));
        assert!(mix.frames.iter().any(|f| f.len() >= 1500));
        let mut clients: Vec<usize> = mix.specs.iter().map(|s| s.client).collect();
        clients.sort_unstable();
        clients.dedup();
        assert_eq!(clients.len(), CLIENTS);
        assert!(mix.flows() > 4000, "{} flows", mix.flows());
    }

    #[test]
    fn per_client_counts_follow_the_pool_round_and_round() {
        let mix = mix(GW).unwrap();
        let count = 2 * POOL as u64 + 10;
        let per = mix.per_client(count);
        assert_eq!(per.iter().sum::<u64>(), count);
        let first = mix.specs[0].client;
        let in_pool = mix.specs.iter().filter(|s| s.client == first).count() as u64;
        let in_rest = mix.specs[..10].iter().filter(|s| s.client == first).count() as u64;
        assert_eq!(per[first], 2 * in_pool + in_rest);

        let bytes = mix.ip_bytes_per_client_address(count);
        let ip_len = |i: usize| mix.frames[i].len() as u64 - 14;
        assert_eq!(
            bytes.values().sum::<u64>(),
            2 * (0..POOL).map(ip_len).sum::<u64>() + (0..10).map(ip_len).sum::<u64>()
        );
        let s = mix.specs[0];
        let addr =
            if s.ipv6 { IpAddr::V6(client_v6(s.client)) } else { IpAddr::V4(client_v4(s.client)) };
        let of_first = |range: std::ops::Range<usize>| -> u64 {
            range
                .filter(|&i| mix.specs[i].client == s.client && mix.specs[i].ipv6 == s.ipv6)
                .map(ip_len)
                .sum()
        };
        assert_eq!(bytes[&addr], 2 * of_first(0..POOL) + of_first(0..10));
    }
}
