//! VLAN tags: parsed through, and counted in the bytes.

use etherparse::PacketBuilder;
use sensor::common::{Direction, Stat};

use crate::{
    CLIENT_MAC, CLIENT4, CLIENT6, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, GW_MAC, IPPROTO_TCP,
    IPPROTO_UDP, REMOTE4, REMOTE6,
    expect::{assert_counted_upload, assert_rejected_both, check, down, key, up},
    frames::{build, cat, eth, ipv4, tag, udp, vid},
    harness::{Sensor, require_root},
};

#[test]
fn vlan_8021q_upload_and_download() {
    require_root!();
    let upf = build!(
        PacketBuilder::ethernet2(CLIENT_MAC, GW_MAC)
            .single_vlan(vid(10))
            .ipv4(CLIENT4.octets(), REMOTE4.octets(), 64)
            .udp(51000, 53),
        40
    );
    assert_eq!(upf.len(), 14 + 4 + 20 + 8 + 40);
    assert_eq!(&upf[12..14], &ETH_P_8021Q.to_be_bytes());
    let downf = build!(
        PacketBuilder::ethernet2(GW_MAC, CLIENT_MAC)
            .single_vlan(vid(10))
            .ipv6(REMOTE6.octets(), CLIENT6.octets(), 64)
            .tcp(443, 40000, 1, 1000),
        500
    );
    let s = Sensor::new();
    s.upload(&upf);
    s.download(&downf);
    check(
        &s.snapshot(),
        &[
            (key(CLIENT_MAC, CLIENT4, REMOTE4, IPPROTO_UDP, 53), up(&[&upf])),
            (key(CLIENT_MAC, CLIENT6, REMOTE6, IPPROTO_TCP, 443), down(&[&downf])),
        ],
        &[(CLIENT_MAC, up(&[&upf]) + down(&[&downf]))],
        &[
            (Direction::Upload, Stat::Seen, 1),
            (Direction::Upload, Stat::Counted, 1),
            (Direction::Download, Stat::Seen, 1),
            (Direction::Download, Stat::Counted, 1),
        ],
    );
}

#[test]
fn qinq_8021ad_then_8021q_upload_and_download() {
    require_root!();
    let upf = build!(
        PacketBuilder::ethernet2(CLIENT_MAC, GW_MAC)
            .double_vlan(vid(100), vid(10))
            .ipv6(CLIENT6.octets(), REMOTE6.octets(), 64)
            .tcp(40000, 8443, 1, 1000),
        200
    );
    assert_eq!(upf.len(), 14 + 8 + 40 + 20 + 200);
    assert_eq!(&upf[12..14], &ETH_P_8021AD.to_be_bytes());
    assert_eq!(&upf[16..18], &ETH_P_8021Q.to_be_bytes());
    let downf = build!(
        PacketBuilder::ethernet2(GW_MAC, CLIENT_MAC)
            .double_vlan(vid(100), vid(10))
            .ipv4(REMOTE4.octets(), CLIENT4.octets(), 64)
            .udp(4500, 4500),
        1000
    );
    let s = Sensor::new();
    s.upload(&upf);
    s.download(&downf);
    check(
        &s.snapshot(),
        &[
            (key(CLIENT_MAC, CLIENT6, REMOTE6, IPPROTO_TCP, 8443), up(&[&upf])),
            (key(CLIENT_MAC, CLIENT4, REMOTE4, IPPROTO_UDP, 4500), down(&[&downf])),
        ],
        &[(CLIENT_MAC, up(&[&upf]) + down(&[&downf]))],
        &[
            (Direction::Upload, Stat::Seen, 1),
            (Direction::Upload, Stat::Counted, 1),
            (Direction::Download, Stat::Seen, 1),
            (Direction::Download, Stat::Counted, 1),
        ],
    );
}

#[test]
fn two_8021q_tags_are_parsed_too() {
    require_root!();
    let l4 = udp(51000, 53, 20);
    let f = cat(&[
        &eth(GW_MAC, CLIENT_MAC, ETH_P_8021Q),
        &tag(10, ETH_P_8021Q),
        &tag(20, ETH_P_IP),
        &ipv4(5, IPPROTO_UDP, 0, CLIENT4, REMOTE4, l4.len()),
        &l4,
    ]);
    assert_counted_upload(&f, key(CLIENT_MAC, CLIENT4, REMOTE4, IPPROTO_UDP, 53));
}

#[test]
fn three_vlan_tags_are_vlan_depth() {
    require_root!();
    let l4 = udp(51000, 53, 20);
    let f = cat(&[
        &eth(GW_MAC, CLIENT_MAC, ETH_P_8021AD),
        &tag(100, ETH_P_8021Q),
        &tag(10, ETH_P_8021Q),
        &tag(20, ETH_P_IP),
        &ipv4(5, IPPROTO_UDP, 0, CLIENT4, REMOTE4, l4.len()),
        &l4,
    ]);
    assert_rejected_both(&f, Stat::VlanDepth);
}
