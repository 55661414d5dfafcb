//! IPv4 header details: options, IHL, version, fragments.

use sensor::common::{Direction, Stat};

use crate::{
    CLIENT_MAC, CLIENT4, CLIENT6, ETH_P_IP, ETH_P_IPV6, GW_MAC, IPPROTO_TCP, IPPROTO_UDP, REMOTE4,
    REMOTE6,
    expect::{
        assert_counted_download, assert_counted_upload, assert_rejected_both, check, key, up,
    },
    frames::{cat, eth, ipv4, ipv4_frame, ipv6, payload, tcp, udp},
    harness::{Sensor, require_root},
};

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
