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

/// The agent rewrites the LAN prefixes of loaded programs (`lan_prefixes` unset: the
/// interface's, followed): from the write on, packets are classified by the new set, each of
/// its slots up to the last one the programs check; the prefix left out is not client traffic
/// any more, the one kept still is.
#[test]
fn lan_prefixes_rewritten_while_loaded_take_effect_at_once() {
    use ipnet::IpNet;
    use sensor::kernel::{lan_prefixes::LanPrefixMap, loader::SPARE_LAN_SLOTS};

    require_root!();
    let mut s = crate::harness::Sensor::new();
    let v4 = udp4(CLIENT_MAC, GW_MAC, CLIENT4, REMOTE4, 51000, 53, 20);
    let old6 = udp6(CLIENT_MAC, GW_MAC, CLIENT6, REMOTE6, 51000, 53, 20);
    let new6 = udp6(CLIENT_MAC, GW_MAC, OUTSIDE6, REMOTE6, 51000, 53, 20);
    let outcomes = |s: &crate::harness::Sensor| {
        let snap = s.snapshot();
        (snap.stat(Stat::Counted, Direction::Upload), snap.stat(Stat::NotClient, Direction::Upload))
    };
    for f in [&v4, &old6, &new6] {
        s.upload(f);
    }
    assert_eq!(outcomes(&s), (2, 1), "before: fd00:2::/64 is outside");

    // The IPv6 prefix rotated (fd00:1::/64 → fd00:2::/64): in the last slot the programs check
    // (the two prefixes at load and the spare one), behind a filler.
    let slots = 2 + SPARE_LAN_SLOTS;
    let mut nets: Vec<IpNet> = vec!["192.168.1.0/24".parse().unwrap()];
    nets.extend((1..slots - 1).map(|i| format!("10.{i}.0.0/16").parse::<IpNet>().unwrap()));
    nets.push("fd00:2::/64".parse().unwrap());
    let mut map = LanPrefixMap::borrow(&mut s.ebpf).expect("the LAN_PREFIXES map");
    map.set(&nets).expect("writing the LAN prefixes");
    let active = map.get().expect("reading the LAN prefixes");
    assert_eq!(active, sensor::kernel::lan_prefixes::encode(&nets).unwrap());
    for f in [&v4, &old6, &new6] {
        s.upload(f);
    }
    assert_eq!(outcomes(&s), (2 + 2, 1 + 1), "after: fd00:1::/64 is outside, fd00:2::/64 in");

    // One slot further is past what the programs check: not client traffic.
    nets.insert(slots - 1, "10.99.0.0/16".parse().unwrap());
    LanPrefixMap::borrow(&mut s.ebpf).unwrap().set(&nets).unwrap();
    for f in [&v4, &old6, &new6] {
        s.upload(f);
    }
    assert_eq!(outcomes(&s), (4 + 1, 2 + 2), "a prefix past the checked slots is not seen");

    // And back, into the other set: the swap goes both ways.
    let mut map = LanPrefixMap::borrow(&mut s.ebpf).expect("the LAN_PREFIXES map");
    map.set(&["192.168.1.0/24".parse().unwrap(), "fd00:1::/64".parse().unwrap()]).unwrap();
    for f in [&v4, &old6, &new6] {
        s.upload(f);
    }
    assert_eq!(outcomes(&s), (5 + 2, 4 + 1), "back to fd00:1::/64");
}
