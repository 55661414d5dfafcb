//! IPv6 extension headers: walked to the L4 header, fragments, the walk limit.

use sensor::common::{Direction, Stat};

use crate::{
    CLIENT_MAC, CLIENT6, ETH_P_IPV6, GW_MAC, IPPROTO_TCP, IPPROTO_UDP, IPV6_AH, IPV6_DSTOPTS,
    IPV6_FRAGMENT, IPV6_HOPOPTS, IPV6_ROUTING, REMOTE6,
    expect::{
        assert_counted_download, assert_counted_upload, assert_rejected, assert_rejected_both,
        check, key, up,
    },
    frames::{
        ah_ext, cat, eth, fragment_ext, ipv6, ipv6_frame, opts_ext, payload, routing_ext, tcp, udp,
    },
    harness::{Sensor, require_root},
};

#[test]
fn ipv6_hop_by_hop_routing_destination_options_before_udp() {
    require_root!();
    let f = ipv6_frame(
        IPV6_HOPOPTS,
        &[
            &opts_ext(IPV6_ROUTING, 0),
            &routing_ext(IPV6_DSTOPTS, 2),
            &opts_ext(IPPROTO_UDP, 1),
            &udp(51000, 443, 100),
        ],
    );
    assert_eq!(f.len(), 14 + 40 + 8 + 24 + 16 + 8 + 100);
    assert_counted_upload(&f, key(CLIENT_MAC, CLIENT6, REMOTE6, IPPROTO_UDP, 443));
}

#[test]
fn ipv6_hop_by_hop_before_tcp_on_download() {
    require_root!();
    let rest = cat(&[&opts_ext(IPPROTO_TCP, 0), &tcp(443, 40000, 100)]);
    let f = cat(&[
        &eth(CLIENT_MAC, GW_MAC, ETH_P_IPV6),
        &ipv6(IPV6_HOPOPTS, rest.len(), REMOTE6, CLIENT6),
        &rest,
    ]);
    assert_counted_download(&f, key(CLIENT_MAC, CLIENT6, REMOTE6, IPPROTO_TCP, 443));
}

#[test]
fn ipv6_authentication_header_length_in_4_byte_units() {
    require_root!();
    // AH is 24 bytes (payload length 4); read as 8-byte units it would be 40.
    let f = ipv6_frame(IPV6_AH, &[&ah_ext(IPPROTO_TCP), &tcp(40000, 443, 64)]);
    assert_counted_upload(&f, key(CLIENT_MAC, CLIENT6, REMOTE6, IPPROTO_TCP, 443));
}

#[test]
fn ipv6_fragment_header_first_has_ports_non_first_has_port_0() {
    require_root!();
    let first =
        ipv6_frame(IPV6_FRAGMENT, &[&fragment_ext(IPPROTO_UDP, 0, true), &udp(51000, 443, 1000)]);
    let non_first =
        ipv6_frame(IPV6_FRAGMENT, &[&fragment_ext(IPPROTO_UDP, 126, true), &payload(1008)]);
    let last = ipv6_frame(IPV6_FRAGMENT, &[&fragment_ext(IPPROTO_UDP, 252, false), &payload(3)]);
    // After hop-by-hop options, too.
    let hbh_first = ipv6_frame(
        IPV6_HOPOPTS,
        &[&opts_ext(IPV6_FRAGMENT, 0), &fragment_ext(IPPROTO_TCP, 0, true), &tcp(40000, 8080, 500)],
    );
    let hbh_non_first = ipv6_frame(
        IPV6_HOPOPTS,
        &[&opts_ext(IPV6_FRAGMENT, 0), &fragment_ext(IPPROTO_TCP, 65, false), &payload(300)],
    );
    let s = Sensor::new();
    for f in [&first, &non_first, &last, &hbh_first, &hbh_non_first] {
        s.upload(f);
    }
    check(
        &s.snapshot(),
        &[
            (key(CLIENT_MAC, CLIENT6, REMOTE6, IPPROTO_UDP, 443), up(&[&first])),
            (key(CLIENT_MAC, CLIENT6, REMOTE6, IPPROTO_UDP, 0), up(&[&non_first, &last])),
            (key(CLIENT_MAC, CLIENT6, REMOTE6, IPPROTO_TCP, 8080), up(&[&hbh_first])),
            (key(CLIENT_MAC, CLIENT6, REMOTE6, IPPROTO_TCP, 0), up(&[&hbh_non_first])),
        ],
        &[(CLIENT_MAC, up(&[&first, &non_first, &last, &hbh_first, &hbh_non_first]))],
        &[(Direction::Upload, Stat::Seen, 5), (Direction::Upload, Stat::Counted, 5)],
    );
}

/// `n` destination-options headers (8 bytes each), then UDP.
fn ext_chain_frame(n: usize) -> Vec<u8> {
    let mut chain: Vec<Vec<u8>> =
        (0..n).map(|i| opts_ext(if i + 1 == n { IPPROTO_UDP } else { IPV6_DSTOPTS }, 0)).collect();
    chain.push(udp(51000, 443, 50));
    let parts: Vec<&[u8]> = chain.iter().map(|v| v.as_slice()).collect();
    ipv6_frame(if n == 0 { IPPROTO_UDP } else { IPV6_DSTOPTS }, &parts)
}

#[test]
fn eight_ipv6_extension_headers_are_walked() {
    require_root!();
    let f = ext_chain_frame(8);
    assert_counted_upload(&f, key(CLIENT_MAC, CLIENT6, REMOTE6, IPPROTO_UDP, 443));
}

#[test]
fn more_than_eight_ipv6_extension_headers_are_ipv6_ext_limit() {
    require_root!();
    assert_rejected_both(&ext_chain_frame(9), Stat::Ipv6ExtLimit);
    assert_rejected(Direction::Upload, &ext_chain_frame(12), Stat::Ipv6ExtLimit);
}
