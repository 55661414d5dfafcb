//! Aggregation: packets into flows, flows into clients.

use std::net::Ipv4Addr;

use sensor::common::{Direction, Stat};

use crate::{
    CLIENT_MAC, CLIENT2_MAC, CLIENT4, CLIENT4_B, CLIENT6, GW_MAC, IPPROTO_TCP, IPPROTO_UDP,
    REMOTE4, REMOTE6,
    expect::{check, down, key, up},
    frames::{tcp4, tcp6, udp4},
    harness::{Sensor, require_root},
};

#[test]
fn same_flow_twice_is_one_flow_with_two_packets() {
    require_root!();
    let a = udp4(CLIENT_MAC, GW_MAC, CLIENT4, REMOTE4, 51000, 443, 1200);
    let b = udp4(CLIENT_MAC, GW_MAC, CLIENT4, REMOTE4, 51000, 443, 33);
    // A different source port is still the same flow (the key has only the remote port).
    let c = udp4(CLIENT_MAC, GW_MAC, CLIENT4, REMOTE4, 51001, 443, 500);
    let s = Sensor::new();
    s.upload(&a);
    s.upload(&b);
    check(
        &s.snapshot(),
        &[(key(CLIENT_MAC, CLIENT4, REMOTE4, IPPROTO_UDP, 443), up(&[&a, &b]))],
        &[(CLIENT_MAC, up(&[&a, &b]))],
        &[(Direction::Upload, Stat::Seen, 2), (Direction::Upload, Stat::Counted, 2)],
    );
    s.upload(&c);
    check(
        &s.snapshot(),
        &[(key(CLIENT_MAC, CLIENT4, REMOTE4, IPPROTO_UDP, 443), up(&[&a, &b, &c]))],
        &[(CLIENT_MAC, up(&[&a, &b, &c]))],
        &[(Direction::Upload, Stat::Seen, 3), (Direction::Upload, Stat::Counted, 3)],
    );
}

#[test]
fn one_client_with_ipv4_and_ipv6_is_one_client_two_flows() {
    require_root!();
    let v4 = tcp4(CLIENT_MAC, GW_MAC, CLIENT4, REMOTE4, 40000, 443, 100);
    let v6 = tcp6(CLIENT_MAC, GW_MAC, CLIENT6, REMOTE6, 40000, 443, 700);
    let v6_down = tcp6(GW_MAC, CLIENT_MAC, REMOTE6, CLIENT6, 443, 40000, 1400);
    let s = Sensor::new();
    s.upload(&v4);
    s.upload(&v6);
    s.download(&v6_down);
    check(
        &s.snapshot(),
        &[
            (key(CLIENT_MAC, CLIENT4, REMOTE4, IPPROTO_TCP, 443), up(&[&v4])),
            (key(CLIENT_MAC, CLIENT6, REMOTE6, IPPROTO_TCP, 443), up(&[&v6]) + down(&[&v6_down])),
        ],
        &[(CLIENT_MAC, up(&[&v4, &v6]) + down(&[&v6_down]))],
        &[
            (Direction::Upload, Stat::Seen, 2),
            (Direction::Upload, Stat::Counted, 2),
            (Direction::Download, Stat::Seen, 1),
            (Direction::Download, Stat::Counted, 1),
        ],
    );
}

#[test]
fn two_clients_and_two_addresses_of_one_are_kept_apart() {
    require_root!();
    // Two MACs; the second client uses two IPv4 addresses: two client totals, three flows.
    let a = udp4(CLIENT_MAC, GW_MAC, CLIENT4, REMOTE4, 51000, 53, 40);
    let b1 = udp4(CLIENT2_MAC, GW_MAC, CLIENT4_B, REMOTE4, 51000, 53, 41);
    let b2 = udp4(CLIENT2_MAC, GW_MAC, Ipv4Addr::new(192, 168, 1, 12), REMOTE4, 51000, 53, 42);
    let s = Sensor::new();
    for f in [&a, &b1, &b2] {
        s.upload(f);
    }
    check(
        &s.snapshot(),
        &[
            (key(CLIENT_MAC, CLIENT4, REMOTE4, IPPROTO_UDP, 53), up(&[&a])),
            (key(CLIENT2_MAC, CLIENT4_B, REMOTE4, IPPROTO_UDP, 53), up(&[&b1])),
            (
                key(CLIENT2_MAC, Ipv4Addr::new(192, 168, 1, 12), REMOTE4, IPPROTO_UDP, 53),
                up(&[&b2]),
            ),
        ],
        &[(CLIENT_MAC, up(&[&a])), (CLIENT2_MAC, up(&[&b1, &b2]))],
        &[(Direction::Upload, Stat::Seen, 3), (Direction::Upload, Stat::Counted, 3)],
    );
}
