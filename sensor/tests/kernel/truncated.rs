//! Truncated frames: nothing counted, the right reason.

use aya::programs::TestRunOptions;
use etherparse::PacketBuilder;
use sensor::common::{Direction, Stat, names};

use crate::{
    BROADCAST_MAC, CLIENT_MAC, CLIENT4, CLIENT6, ETH_HLEN, ETH_P_8021Q, ETH_P_ARP, ETH_P_IP,
    GW_MAC, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, IPV6_DSTOPTS, IPV6_FRAGMENT,
    IPV6_HOPOPTS, IPV6_ROUTING, REMOTE4, REMOTE6,
    expect::{assert_rejected, assert_rejected_both, check},
    frames::{
        build, cat, eth, fragment_ext, ipv4, ipv4_frame, ipv6_frame, opts_ext, routing_ext, tcp,
        tcp4, tcp6, udp, udp4, udp6, vid,
    },
    harness::{Sensor, require_root},
};

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
