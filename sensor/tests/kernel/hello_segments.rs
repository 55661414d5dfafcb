//! ClientHellos longer than a segment, and QUIC Initials: the kernel hands up every byte the
//! agent needs to read them, in chunks placed by sequence number and offset, and nothing of
//! other packets.

use aya::maps::RingBuf;
use etherparse::PacketBuilder;
use sensor::{
    common::{EVENT_DATA_MAX, EventKind, EventOutcome, HELLO_MAX_SEGMENTS, names},
    kernel::events::{Observation, decode},
};

use crate::{
    CLIENT_MAC, CLIENT4, GW_MAC, REMOTE4,
    frames::payload,
    harness::{Sensor, require_root},
};

/// An upload TCP segment from the client with sequence number `seq` carrying `data`.
fn segment(seq: u32, data: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, GW_MAC)
        .ipv4(CLIENT4.octets(), REMOTE4.octets(), 64)
        .tcp(40000, 443, seq, 64240);
    let mut f = Vec::with_capacity(b.size(data.len()));
    b.write(&mut f, data).unwrap();
    f
}

/// A TLS record that starts like a ClientHello and is `len` bytes long in all.
fn hello_record(len: usize) -> Vec<u8> {
    let mut r = payload(len);
    let body = (len - 5) as u16;
    r[..6].copy_from_slice(&[22, 3, 1, (body >> 8) as u8, body as u8, 1]);
    r
}

fn drain(s: &mut Sensor) -> Vec<Observation> {
    let mut ring = RingBuf::try_from(s.ebpf.map_mut(names::EVENTS).unwrap()).unwrap();
    let mut out = Vec::new();
    while let Some(rec) = ring.next() {
        out.push(decode(&rec).expect("a well-formed event"));
    }
    out
}

/// (kind, seq, chunk_off, payload_len, data) of each event.
type Seen = (EventKind, u32, u16, u32, Vec<u8>);
fn seen(obs: &[Observation]) -> Vec<Seen> {
    obs.iter().map(|o| (o.kind, o.seq, o.chunk_off, o.payload_len, o.data.clone())).collect()
}

/// A 1,900-byte ClientHello over two 1,460-byte segments through XDP: the first segment in two
/// chunks (1,280 + 180), the second whole; a segment past the ClientHello's end is not handed
/// up.
#[test]
fn a_clienthello_over_two_segments_is_handed_up_whole() {
    require_root!();
    let mut s = Sensor::with_events(1000);
    let hello = hello_record(1900);
    let isn = u32::MAX - 1000; // the sequence numbers wrap inside it
    let second = isn.wrapping_add(1460);
    s.upload(&segment(isn, &hello[..1460]));
    s.upload(&segment(second, &hello[1460..]));
    // Past the ClientHello's end: application data, not a segment of it.
    s.upload(&segment(isn.wrapping_add(1900), &payload(300)));
    let got = seen(&drain(&mut s));
    let want: Vec<Seen> = vec![
        (EventKind::TlsClientHello, isn, 0, 1460, hello[..EVENT_DATA_MAX].to_vec()),
        (EventKind::TlsClientHello, isn, EVENT_DATA_MAX as u16, 1460, hello[1280..1460].to_vec()),
        (EventKind::TlsSegment, second, 0, 440, hello[1460..].to_vec()),
    ];
    assert_eq!(got, want);
    let snap = s.snapshot();
    // Events count packets, not chunks.
    assert_eq!(snap.event(EventKind::TlsClientHello, EventOutcome::Sent), 1);
    assert_eq!(snap.event(EventKind::TlsSegment, EventOutcome::Sent), 1);
}

/// A ClientHello that its segment holds whole is not followed; nor is one announcing more
/// than the kernel follows. A flow's later segments stop after HELLO_MAX_SEGMENTS.
#[test]
fn only_a_clienthello_that_continues_is_followed_and_boundedly() {
    require_root!();
    let mut s = Sensor::with_events(1000);
    let small = hello_record(600);
    s.upload(&segment(5, &small));
    s.upload(&segment(605, &payload(100)));
    let got = seen(&drain(&mut s));
    assert_eq!(got.iter().map(|e| e.0).collect::<Vec<_>>(), vec![EventKind::TlsClientHello]);

    // A record announcing 16,000 bytes (over HELLO_MAX_LEN): not followed.
    let mut huge = hello_record(1400);
    huge[3..5].copy_from_slice(&(16_000u16 - 5).to_be_bytes());
    let mut s = Sensor::with_events(1000);
    s.upload(&segment(5, &huge));
    s.upload(&segment(1405, &payload(100)));
    let kinds: Vec<_> = drain(&mut s).iter().map(|e| e.kind).collect();
    assert_eq!(kinds, vec![EventKind::TlsClientHello, EventKind::TlsClientHello]);

    // 8,000 bytes in 100-byte segments: at most HELLO_MAX_SEGMENTS of them follow (the flow is
    // young for its first YOUNG_PACKETS packets, which is more).
    let big = hello_record(8000);
    let mut s = Sensor::with_events(1000);
    s.upload(&segment(0, &big[..100]));
    for i in 1..8u32 {
        s.upload(&segment(i * 100, &big[(i * 100) as usize..(i * 100 + 100) as usize]));
    }
    let segs = drain(&mut s).iter().filter(|e| e.kind == EventKind::TlsSegment).count();
    assert_eq!(segs, HELLO_MAX_SEGMENTS as usize);
}

/// TC (uploads on a bridge) sees a GRO-merged skb of both segments at once: its 1,900-byte
/// payload goes out as two chunks.
#[test]
fn a_merged_clienthello_through_tc_goes_out_in_chunks() {
    require_root!();
    let mut s = Sensor::with_events(1000);
    let hello = hello_record(1900);
    s.upload_tc(&segment(77, &hello));
    let got = seen(&drain(&mut s));
    let want: Vec<Seen> = vec![
        (EventKind::TlsClientHello, 77, 0, 1900, hello[..EVENT_DATA_MAX].to_vec()),
        (EventKind::TlsClientHello, 77, EVENT_DATA_MAX as u16, 1900, hello[1280..].to_vec()),
    ];
    assert_eq!(got, want);
}

/// QUIC Initials of versions 1 and 2 from a client (any port) are handed up whole, a 1,350-byte
/// one in two chunks; other long-header types, short headers, unknown versions and Initials
/// of an old flow are not.
#[test]
fn quic_initials_are_handed_up() {
    require_root!();
    let mut s = Sensor::with_events(1000);
    let datagram = |first: u8, version: [u8; 4], len: usize| {
        let mut d = payload(len);
        d[0] = first;
        d[1..5].copy_from_slice(&version);
        d
    };
    let v1 = [0, 0, 0, 1];
    let v2 = [0x6b, 0x33, 0x43, 0xcf];
    let up = |port: u16, d: &[u8]| {
        let b = PacketBuilder::ethernet2(CLIENT_MAC, GW_MAC)
            .ipv4(CLIENT4.octets(), REMOTE4.octets(), 64)
            .udp(50000, port);
        let mut f = Vec::with_capacity(b.size(d.len()));
        b.write(&mut f, d).unwrap();
        f
    };
    let v1_initial = datagram(0xc3, v1, 1250);
    let v2_initial = datagram(0xd3, v2, 1350);
    s.upload(&up(443, &v1_initial));
    s.upload(&up(8443, &v2_initial));
    s.upload(&up(444, &datagram(0xe3, v1, 1250))); // v1 Handshake
    s.upload(&up(445, &datagram(0xc3, v2, 1250))); // v2's 0b00 is 0-RTT
    s.upload(&up(446, &datagram(0x43, v1, 1250))); // short header
    s.upload(&up(447, &datagram(0xc3, [0xfa, 0xce, 0xb0, 0x0c], 1250))); // unknown version
    let got = seen(&drain(&mut s));
    let want: Vec<Seen> = vec![
        (EventKind::QuicInitial, 0, 0, 1250, v1_initial.clone()),
        (EventKind::QuicInitial, 0, 0, 1350, v2_initial[..EVENT_DATA_MAX].to_vec()),
        (EventKind::QuicInitial, 0, EVENT_DATA_MAX as u16, 1350, v2_initial[1280..].to_vec()),
    ];
    assert_eq!(got, want);

    // Past its first packets a flow's Initials (a long-lived connection) are not looked at.
    for _ in 0..20 {
        s.upload(&up(443, &payload(100)));
    }
    s.upload(&up(443, &v1_initial));
    assert!(drain(&mut s).is_empty());
}
