//! Frame builders: frames built by etherparse, and frames built by hand (what etherparse cannot
//! express, or must not fix up).

use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::{PacketBuilder, VlanId};

use crate::{CLIENT_MAC, CLIENT4, CLIENT6, ETH_P_IP, ETH_P_IPV6, GW_MAC, REMOTE4, REMOTE6};

// Frames built by etherparse

pub(crate) fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// Serialises a PacketBuilder step with an `n`-byte payload.
macro_rules! build {
    ($builder:expr, $n:expr) => {{
        let b = $builder;
        let p = $crate::frames::payload($n);
        let mut f = Vec::with_capacity(b.size(p.len()));
        b.write(&mut f, &p).unwrap();
        f
    }};
}
pub(crate) use build;

pub(crate) fn vid(v: u16) -> VlanId {
    VlanId::try_new(v).unwrap()
}

pub(crate) fn udp4(
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

pub(crate) fn tcp4(
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

pub(crate) fn udp6(
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

pub(crate) fn tcp6(
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

// Frames built by hand (what etherparse cannot express, or must not fix up)

pub(crate) fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(1514);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// A VLAN tag: TCI (PCP 0, DEI 0, VID) and the EtherType that follows it.
pub(crate) fn tag(vid: u16, next: u16) -> [u8; 4] {
    let [a, b] = vid.to_be_bytes();
    let [c, d] = next.to_be_bytes();
    [a, b, c, d]
}

pub(crate) fn checksum(bytes: &[u8]) -> u16 {
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
pub(crate) fn ipv4(
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

pub(crate) fn ipv6(next: u8, payload_len: usize, src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
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
pub(crate) fn udp(sport: u16, dport: u16, n: usize) -> Vec<u8> {
    let mut h = Vec::with_capacity(8 + n);
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&((8 + n) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend(payload(n));
    h
}

/// A 20-byte TCP header (ACK) and `n` bytes of payload.
pub(crate) fn tcp(sport: u16, dport: u16, n: usize) -> Vec<u8> {
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
pub(crate) fn opts_ext(next: u8, units: u8) -> Vec<u8> {
    let len = (usize::from(units) + 1) * 8;
    let mut h = vec![0u8; len];
    h[0] = next;
    h[1] = units;
    h[2] = 1; // PadN
    h[3] = (len - 4) as u8;
    h
}

/// Routing header (type 4, segment routing, segments left 0): `(units + 1) * 8` bytes.
pub(crate) fn routing_ext(next: u8, units: u8) -> Vec<u8> {
    let mut h = vec![0u8; (usize::from(units) + 1) * 8];
    h[0] = next;
    h[1] = units;
    h[2] = 4;
    h[3] = 0;
    h
}

/// Fragment header: offset in 8-byte units, M flag.
pub(crate) fn fragment_ext(next: u8, offset: u16, more: bool) -> Vec<u8> {
    let mut h = vec![0u8; 8];
    h[0] = next;
    h[2..4].copy_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
    h[4..8].copy_from_slice(&0xdead_beefu32.to_be_bytes());
    h
}

/// Authentication header: its length counts 4-byte units minus 2 (payload length 4 = 24 bytes).
pub(crate) fn ah_ext(next: u8) -> Vec<u8> {
    let mut h = vec![0u8; 24];
    h[0] = next;
    h[1] = 4;
    h[4..8].copy_from_slice(&0x100u32.to_be_bytes()); // SPI
    h[8..12].copy_from_slice(&1u32.to_be_bytes()); // sequence
    h
}

pub(crate) fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// An IPv6 frame from the client: the header, then `chain` (extension headers and L4 bytes).
pub(crate) fn ipv6_frame(first_next: u8, chain: &[&[u8]]) -> Vec<u8> {
    let rest = cat(chain);
    cat(&[
        &eth(GW_MAC, CLIENT_MAC, ETH_P_IPV6),
        &ipv6(first_next, rest.len(), CLIENT6, REMOTE6),
        &rest,
    ])
}

/// An IPv4 frame from the client with a hand-made header.
pub(crate) fn ipv4_frame(ihl: u8, protocol: u8, frag: u16, l4: &[u8]) -> Vec<u8> {
    cat(&[
        &eth(GW_MAC, CLIENT_MAC, ETH_P_IP),
        &ipv4(ihl, protocol, frag, CLIENT4, REMOTE4, l4.len()),
        l4,
    ])
}
