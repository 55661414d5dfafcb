//! Expectations: `Count`, flow keys, `check` (the whole state of the maps, exactly), and the
//! counted / rejected assertions.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr},
};

use sensor::{
    common::{Direction, FlowKey, Stat},
    kernel::collector::Snapshot,
};

use crate::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6, harness::Sensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct Count {
    pub(crate) packets: [u64; 2],
    pub(crate) bytes: [u64; 2],
}

/// Upload counts of frames with these lengths.
pub(crate) fn up(frames: &[&[u8]]) -> Count {
    Count {
        packets: [frames.len() as u64, 0],
        bytes: [frames.iter().map(|f| f.len() as u64).sum(), 0],
    }
}

/// Download counts of frames with these lengths.
pub(crate) fn down(frames: &[&[u8]]) -> Count {
    Count {
        packets: [0, frames.len() as u64],
        bytes: [0, frames.iter().map(|f| f.len() as u64).sum()],
    }
}

impl std::ops::Add for Count {
    type Output = Count;
    fn add(self, o: Count) -> Count {
        Count {
            packets: [self.packets[0] + o.packets[0], self.packets[1] + o.packets[1]],
            bytes: [self.bytes[0] + o.bytes[0], self.bytes[1] + o.bytes[1]],
        }
    }
}

pub(crate) fn ip16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

pub(crate) fn key(
    mac: [u8; 6],
    client: impl Into<IpAddr>,
    remote: impl Into<IpAddr>,
    protocol: u8,
    port: u16,
) -> FlowKey {
    FlowKey {
        client_ip: ip16(client.into()),
        remote_ip: ip16(remote.into()),
        client_mac: mac,
        remote_port: port,
        protocol,
        _pad: [0; 7],
    }
}

pub(crate) fn show_key(k: &FlowKey) -> String {
    let ip = |b: [u8; 16]| {
        let v6 = Ipv6Addr::from(b);
        v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6))
    };
    format!(
        "{} {} -> {} proto {} port {}",
        mac_text(&k.client_mac),
        ip(k.client_ip),
        ip(k.remote_ip),
        k.protocol,
        k.remote_port
    )
}

pub(crate) fn mac_text(m: &[u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Asserts the whole state of the maps: exactly these flows, exactly these clients, and every
/// stat slot zero except those listed.
pub(crate) fn check(
    snap: &Snapshot,
    flows: &[(FlowKey, Count)],
    clients: &[([u8; 6], Count)],
    stats: &[(Direction, Stat, u64)],
) {
    let got_flows: BTreeMap<String, Count> = snap
        .flows
        .iter()
        .map(|(k, c)| (show_key(k), Count { packets: c.packets, bytes: c.bytes }))
        .collect();
    let want_flows: BTreeMap<String, Count> =
        flows.iter().map(|(k, c)| (show_key(k), *c)).collect();
    assert_eq!(
        got_flows, want_flows,
        "flows (key: client MAC, client IP -> remote IP, protocol, remote port)"
    );
    // The rendering above is lossless for every field but the padding; check it too.
    for (k, _) in &snap.flows {
        assert_eq!(k._pad, [0; 7], "padding of {}", show_key(k));
    }
    assert_eq!(got_flows.len(), snap.flows.len(), "a flow read twice");
    for c in snap.flows.iter().map(|(_, c)| c).chain(snap.clients.values()) {
        assert!(c.first_seen_ns > 0 && c.last_seen_ns >= c.first_seen_ns, "timestamps {c:?}");
    }

    let got_clients: BTreeMap<String, Count> = snap
        .clients
        .iter()
        .map(|(m, c)| (mac_text(m), Count { packets: c.packets, bytes: c.bytes }))
        .collect();
    let want_clients: BTreeMap<String, Count> =
        clients.iter().map(|(m, c)| (mac_text(m), *c)).collect();
    assert_eq!(got_clients, want_clients, "client totals");

    let mut want = [[0u64; Stat::COUNT]; 2];
    for &(dir, stat, n) in stats {
        want[dir.index()][stat as usize] += n;
    }
    let render = |s: &[[u64; Stat::COUNT]; 2]| -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for dir in Direction::ALL {
            for stat in Stat::ALL {
                let n = s[dir.index()][stat as usize];
                if n != 0 {
                    m.insert(
                        format!("{}/{} (slot {})", dir.as_str(), stat.as_str(), stat.slot(dir)),
                        n,
                    );
                }
            }
        }
        m
    };
    assert_eq!(render(&snap.stats), render(&want), "STATS slots (all others must be 0)");
}

/// One frame that must not be counted: only `seen` and `stat` move, in that direction.
pub(crate) fn assert_rejected(dir: Direction, frame: &[u8], stat: Stat) {
    let s = Sensor::new();
    match dir {
        Direction::Upload => s.upload(frame),
        Direction::Download => s.download(frame),
    }
    check(&s.snapshot(), &[], &[], &[(dir, Stat::Seen, 1), (dir, stat, 1)]);
}

/// The frame through both programs (the reason must not depend on the direction).
pub(crate) fn assert_rejected_both(frame: &[u8], stat: Stat) {
    assert_rejected(Direction::Upload, frame, stat);
    if skb_test_run_takes(frame) {
        assert_rejected(Direction::Download, frame, stat);
    }
}

/// The skb test run (TC) refuses, with EINVAL, a frame whose EtherType is IPv4 or IPv6 but
/// that lacks the full fixed IP header (the kernel reads the addresses out of it); on a real
/// egress path such an skb cannot exist either. Those frames go through XDP only; the
/// truncation tests give them VLAN-tagged twins, which the kernel hands to TC as they are.
pub(crate) fn skb_test_run_takes(frame: &[u8]) -> bool {
    match frame.get(12..14).map(|t| u16::from_be_bytes([t[0], t[1]])) {
        Some(ETH_P_IP) => frame.len() >= ETH_HLEN + 20,
        Some(ETH_P_IPV6) => frame.len() >= ETH_HLEN + 40,
        _ => true,
    }
}

/// One upload frame, counted under `k`.
pub(crate) fn assert_counted_upload(frame: &[u8], k: FlowKey) {
    let s = Sensor::new();
    s.upload(frame);
    check(
        &s.snapshot(),
        &[(k, up(&[frame]))],
        &[(k.client_mac, up(&[frame]))],
        &[(Direction::Upload, Stat::Seen, 1), (Direction::Upload, Stat::Counted, 1)],
    );
}

/// One download frame, counted under `k`.
pub(crate) fn assert_counted_download(frame: &[u8], k: FlowKey) {
    let s = Sensor::new();
    s.download(frame);
    check(
        &s.snapshot(),
        &[(k, down(&[frame]))],
        &[(k.client_mac, down(&[frame]))],
        &[(Direction::Download, Stat::Seen, 1), (Direction::Download, Stat::Counted, 1)],
    );
}
