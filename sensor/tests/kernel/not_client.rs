//! Not client traffic: ARP, addresses outside the LAN prefixes, group MACs.

use sensor::common::{Direction, Stat};

use crate::{
    BROADCAST_MAC, CLIENT_MAC, CLIENT4, CLIENT6, ETH_P_8021Q, ETH_P_ARP, ETH_P_IP, GW_MAC,
    MCAST4_MAC, MCAST6_MAC, OUTSIDE4, OUTSIDE6, REMOTE4, REMOTE6,
    expect::assert_rejected,
    frames::{cat, eth, tag, tcp4, udp4, udp6},
    harness::require_root,
};

#[test]
fn arp_is_not_ip() {
    require_root!();
    let mut arp = vec![0u8; 28];
    arp[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    arp[2..4].copy_from_slice(&ETH_P_IP.to_be_bytes());
    arp[4] = 6;
    arp[5] = 4;
    arp[6..8].copy_from_slice(&1u16.to_be_bytes()); // request
    arp[8..14].copy_from_slice(&CLIENT_MAC);
    arp[14..18].copy_from_slice(&CLIENT4.octets());
    arp[24..28].copy_from_slice(&[192, 168, 1, 1]);
    let mut f = cat(&[&eth(BROADCAST_MAC, CLIENT_MAC, ETH_P_ARP), &arp]);
    f.resize(60, 0);
    assert_rejected(Direction::Upload, &f, Stat::NotIp);
    let reply = cat(&[&eth(CLIENT_MAC, GW_MAC, ETH_P_ARP), &arp]);
    assert_rejected(Direction::Download, &reply, Stat::NotIp);
    // Behind a VLAN tag as well.
    let tagged = cat(&[&eth(BROADCAST_MAC, CLIENT_MAC, ETH_P_8021Q), &tag(10, ETH_P_ARP), &arp]);
    assert_rejected(Direction::Upload, &tagged, Stat::NotIp);
}

#[test]
fn source_outside_lan_prefixes_is_not_client() {
    require_root!();
    assert_rejected(
        Direction::Upload,
        &udp4(CLIENT_MAC, GW_MAC, OUTSIDE4, REMOTE4, 51000, 53, 20),
        Stat::NotClient,
    );
    assert_rejected(
        Direction::Upload,
        &udp6(CLIENT_MAC, GW_MAC, OUTSIDE6, REMOTE6, 51000, 53, 20),
        Stat::NotClient,
    );
    // A packet from the internet to the LAN seen on ingress (the LAN address is the destination).
    assert_rejected(
        Direction::Upload,
        &tcp4(CLIENT_MAC, GW_MAC, REMOTE4, CLIENT4, 443, 40000, 20),
        Stat::NotClient,
    );
}

#[test]
fn destination_outside_lan_prefixes_is_not_client_on_download() {
    require_root!();
    assert_rejected(
        Direction::Download,
        &udp4(GW_MAC, CLIENT_MAC, REMOTE4, OUTSIDE4, 53, 51000, 20),
        Stat::NotClient,
    );
    assert_rejected(
        Direction::Download,
        &udp6(GW_MAC, CLIENT_MAC, REMOTE6, OUTSIDE6, 53, 51000, 20),
        Stat::NotClient,
    );
}

/// An IPv6 packet whose addresses are IPv4-mapped (`::ffff:192.168.1.10`) is not inside the IPv4
/// LAN prefix: it must not be counted, least of all into the IPv4 flow with the same key.
#[test]
fn ipv4_mapped_ipv6_source_is_not_client() {
    require_root!();
    let f =
        udp6(CLIENT_MAC, GW_MAC, CLIENT4.to_ipv6_mapped(), REMOTE4.to_ipv6_mapped(), 51000, 53, 20);
    assert_rejected(Direction::Upload, &f, Stat::NotClient);
}

#[test]
fn group_client_mac_is_not_client() {
    require_root!();
    // Upload: the client is the source MAC.
    for mac in [BROADCAST_MAC, MCAST4_MAC, MCAST6_MAC] {
        assert_rejected(
            Direction::Upload,
            &udp4(mac, GW_MAC, CLIENT4, REMOTE4, 51000, 53, 20),
            Stat::NotClient,
        );
        assert_rejected(
            Direction::Upload,
            &udp6(mac, GW_MAC, CLIENT6, REMOTE6, 51000, 53, 20),
            Stat::NotClient,
        );
    }
    // Download: the client is the destination MAC (broadcast / multicast to LAN addresses).
    assert_rejected(
        Direction::Download,
        &udp4(GW_MAC, BROADCAST_MAC, REMOTE4, CLIENT4, 67, 68, 300),
        Stat::NotClient,
    );
    assert_rejected(
        Direction::Download,
        &udp4(GW_MAC, MCAST4_MAC, REMOTE4, CLIENT4, 5353, 5353, 30),
        Stat::NotClient,
    );
    assert_rejected(
        Direction::Download,
        &udp6(GW_MAC, MCAST6_MAC, REMOTE6, CLIENT6, 5353, 5353, 30),
        Stat::NotClient,
    );
}
