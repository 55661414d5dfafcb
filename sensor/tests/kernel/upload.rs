//! Upload (XDP): client = source, remote port = destination port.

use etherparse::PacketBuilder;

use crate::{
    CLIENT_MAC, CLIENT4, CLIENT6, GW_MAC, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
    REMOTE4, REMOTE6,
    expect::{assert_counted_upload, key},
    frames::{build, ipv4_frame, payload, tcp4, tcp6, udp4, udp6},
    harness::require_root,
};

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

/// TC ingress, the upload hook where the interface has no native XDP (a bridge): a plain
/// frame counts as XDP counts it, and a GRO-merged packet (the kernel's segment count in
/// `gso_segs`) as the frames that crossed the wire, each with its headers.
#[test]
fn upload_on_tc_ingress_counts_plain_frames_and_gro_merged_segments() {
    use aya::programs::TestRunOptions;
    use sensor::common::{Direction, Stat, names};

    use crate::{
        TC_ACT_UNSPEC,
        download::gso_ctx,
        expect::{Count, check, up},
        harness::Sensor,
    };
    require_root!();
    let plain = udp6(CLIENT_MAC, GW_MAC, CLIENT6, REMOTE6, 51000, 443, 900);
    // Three segments of 1000 merged by GRO (a test-run skb holds at most ~3.7 kB): headers
    // 14 + 20 + 20 = 54.
    let merged = tcp4(CLIENT_MAC, GW_MAC, CLIENT4, REMOTE4, 40000, 443, 3 * 1000);
    let s = Sensor::new();
    for (frame, ctx) in [(&plain, None), (&merged, Some(gso_ctx(3, 1000)))] {
        let r = s
            .tc_run_of(
                names::TC_INGRESS_PROGRAM,
                TestRunOptions {
                    data_in: Some(frame),
                    ctx_in: ctx.as_ref().map(|c| c.as_slice()),
                    repeat: 1,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(r.return_value, TC_ACT_UNSPEC);
    }
    let merged_count = Count { packets: [3, 0], bytes: [3 * (54 + 1000), 0] };
    check(
        &s.snapshot(),
        &[
            (key(CLIENT_MAC, CLIENT6, REMOTE6, IPPROTO_UDP, 443), up(&[&plain])),
            (key(CLIENT_MAC, CLIENT4, REMOTE4, IPPROTO_TCP, 443), merged_count),
        ],
        &[(CLIENT_MAC, up(&[&plain]) + merged_count)],
        &[(Direction::Upload, Stat::Seen, 2), (Direction::Upload, Stat::Counted, 2)],
    );
}
