//! Download (TC): client = destination, remote port = source port; one conversation as one
//! flow; GSO skbs counted per segment.

use aya::programs::TestRunOptions;
use etherparse::PacketBuilder;
use sensor::common::{Direction, Stat};

use crate::{
    CLIENT_MAC, CLIENT4, CLIENT6, GW_MAC, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
    REMOTE4, REMOTE6, TC_ACT_UNSPEC,
    expect::{Count, assert_counted_download, check, down, key, up},
    frames::{build, tcp4, tcp6, udp4, udp6},
    harness::{Sensor, require_root},
};

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
pub(crate) fn gso_ctx(segs: u32, size: u32) -> [u8; 192] {
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

/// A GSO packet from a packet socket or tap/tun with a virtio_net_hdr reaches TC with
/// `gso_segs` 0 (the kernel fills it in only when it segments) and `gso_size` set: it is as
/// many frames as its payload fills at `gso_size` each, with their headers. (Counted as one
/// frame before: 10 wire frames of 15,140 B came out as 2 / 14,532 B in the trace.)
#[test]
fn download_gso_with_gso_segs_0_counts_payload_over_gso_size_frames() {
    require_root!();
    // TCP over IPv4 without options: headers 14 + 20 + 20 = 54; 2,500 bytes of payload at a
    // gso_size of 1000 is frames of 1000, 1000 and 500.
    let f = tcp4(GW_MAC, CLIENT_MAC, REMOTE4, CLIENT4, 443, 40000, 2500);
    assert_eq!(f.len(), 54 + 2500);
    let s = Sensor::new();
    let ctx = gso_ctx(0, 1000);
    let r = s
        .tc_run(TestRunOptions {
            data_in: Some(&f),
            ctx_in: Some(&ctx),
            repeat: 1,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.return_value, TC_ACT_UNSPEC);
    let c = Count { packets: [0, 3], bytes: [0, (54 + 1000) * 2 + (54 + 500)] };
    check(
        &s.snapshot(),
        &[(key(CLIENT_MAC, CLIENT4, REMOTE4, IPPROTO_TCP, 443), c)],
        &[(CLIENT_MAC, c)],
        &[(Direction::Download, Stat::Seen, 1), (Direction::Download, Stat::Counted, 1)],
    );
}
