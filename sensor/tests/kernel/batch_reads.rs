//! Batch reads (BPF_MAP_LOOKUP_BATCH) against key-by-key iteration.

use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnet::IpNet;
use sensor::{
    common::{Direction, FlowKey, Stat, names},
    kernel::loader::{LoadOptions, load},
};

use crate::{
    GW_MAC, IPPROTO_TCP, IPPROTO_UDP, LAN, client_n,
    expect::{Count, key, show_key, up},
    frames::udp4,
    harness::{Sensor, require_root},
};

/// 10,000 flows of 40 clients through the XDP program (more than one batch of the flow map):
/// the batch read, the forced key-by-key read, and what was sent agree exactly.
#[test]
fn batch_read_equals_iteration_and_what_was_sent() {
    require_root!();
    use sensor::kernel::collector::ReadMethod;
    let s = Sensor::with_capacities(16_384, 64);
    let mut flows = BTreeMap::new();
    let mut clients: BTreeMap<[u8; 6], Count> = BTreeMap::new();
    for i in 0..10_000u32 {
        let (mac, ip) = client_n((i % 40) as u8);
        let remote = Ipv4Addr::from(0x5db8_0000 + i / 40);
        let f = udp4(
            mac,
            GW_MAC,
            ip,
            remote,
            40_000,
            1000 + (i % 7) as u16,
            18 + (i as usize * 13) % 700,
        );
        s.upload(&f);
        flows
            .insert(show_key(&key(mac, ip, remote, IPPROTO_UDP, 1000 + (i % 7) as u16)), up(&[&f]));
        *clients.entry(mac).or_default() =
            clients.get(&mac).copied().unwrap_or_default() + up(&[&f]);
    }
    assert_eq!(s.maps.read_method(), ReadMethod::Batch, "this kernel has batch lookups");
    let batch = s.snapshot();
    s.maps.set_read_method(ReadMethod::Iterate);
    let iterated = s.snapshot();
    assert_eq!(s.maps.read_method(), ReadMethod::Iterate, "the fallback stays chosen");
    for snap in [&batch, &iterated] {
        let got: BTreeMap<String, Count> = snap
            .flows
            .iter()
            .map(|(k, c)| (show_key(k), Count { packets: c.packets, bytes: c.bytes }))
            .collect();
        assert_eq!(got.len(), snap.flows.len(), "a flow read twice");
        assert_eq!(got, flows);
        let got: BTreeMap<[u8; 6], Count> = snap
            .clients
            .iter()
            .map(|(m, c)| (*m, Count { packets: c.packets, bytes: c.bytes }))
            .collect();
        assert_eq!(got, clients);
        assert_eq!(snap.stat(Stat::Counted, Direction::Upload), 10_000);
    }
    let (mut a, mut b) = (batch.flows.clone(), iterated.flows.clone());
    a.sort_by_key(|(k, _)| *k);
    b.sort_by_key(|(k, _)| *k);
    assert_eq!(a, b, "first/last seen too");
    assert_eq!(s.maps.client_slots().unwrap().len(), 40);
}

/// The wrapper on its own, on maps filled by map updates with a different value on every CPU:
/// per-CPU values come back per CPU (8-byte strides), across batch boundaries of any size, a
/// chunk smaller than a hash bucket grows, and arrays (generic batch code) read the same.
#[test]
fn batch_reader_reads_every_entry_per_cpu_at_any_chunk_size() {
    require_root!();
    use aya::maps::{
        HashMap as BpfHashMap, IterableMap as _, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues,
    };
    use sensor::{
        common::{ClientKey, Counters, FlowValue},
        kernel::bpf_batch::{BatchReader, Layout},
    };
    use std::os::fd::AsFd as _;
    let cpus = aya::util::nr_cpus().unwrap();
    let prefixes: Vec<IpNet> = LAN.iter().map(|p| p.parse().unwrap()).collect();
    let (mut ebpf, _) = load(&LoadOptions {
        lan_prefixes: &prefixes,
        flow_capacity: 4096,
        client_capacity: 64,
        pin_dir: None,
        kernel_btf: false,
    })
    .unwrap();
    let mut flows: PerCpuHashMap<MapData, FlowKey, FlowValue> =
        ebpf.take_map(names::FLOWS).unwrap().try_into().unwrap();
    let mut slots: BpfHashMap<MapData, ClientKey, u32> =
        ebpf.take_map(names::CLIENT_SLOTS).unwrap().try_into().unwrap();
    let mut totals: PerCpuArray<MapData, Counters> =
        ebpf.take_map(names::CLIENT_TOTALS).unwrap().try_into().unwrap();
    let value = |i: u32, cpu: usize| {
        let n = u64::from(i) * 100 + cpu as u64;
        FlowValue {
            counters: Counters {
                packets: [n, n + 1],
                bytes: [n * 7, n * 11],
                first_seen_ns: n + 2,
                last_seen_ns: n + 3,
            },
            client_slot: i + 1,
            _pad: 0,
        }
    };
    let mut want: BTreeMap<FlowKey, Vec<FlowValue>> = BTreeMap::new();
    for i in 0..3000u32 {
        let (mac, ip) = client_n((i % 50) as u8);
        let k = key(mac, ip, Ipv4Addr::from(0x0a00_0000 + i), IPPROTO_TCP, 443);
        let per_cpu: Vec<FlowValue> = (0..cpus).map(|c| value(i, c)).collect();
        flows.insert(k, PerCpuValues::try_from(per_cpu.clone()).unwrap(), 0).unwrap();
        want.insert(k, per_cpu);
    }
    let iterated: BTreeMap<FlowKey, Vec<FlowValue>> =
        flows.iter().map(|e| e.unwrap()).map(|(k, v)| (k, v.iter().copied().collect())).collect();
    assert_eq!(iterated, want, "aya's iteration, the reference");
    for chunk in [1, 7, 256, 4096] {
        let reader =
            BatchReader::<FlowKey, FlowValue>::new(Layout::PerCpu { cpus }).with_chunk(chunk);
        let mut got = BTreeMap::new();
        let n = reader
            .for_each(flows.map().fd().as_fd(), |k, values| {
                assert!(got.insert(*k, values.collect::<Vec<_>>()).is_none(), "key read twice");
            })
            .unwrap();
        assert_eq!(n, 3000, "chunk {chunk}");
        assert_eq!(got, want, "chunk {chunk}");
    }

    for i in 0..50u8 {
        slots.insert(ClientKey { mac: client_n(i).0, _pad: [0; 2] }, u32::from(i) * 3, 0).unwrap();
        let per_cpu: Vec<Counters> = (0..cpus).map(|c| value(u32::from(i), c).counters).collect();
        totals.set(u32::from(i), PerCpuValues::try_from(per_cpu).unwrap(), 0).unwrap();
    }
    let mut got = BTreeMap::new();
    BatchReader::<ClientKey, u32>::new(Layout::Plain)
        .with_chunk(16)
        .for_each(slots.map().fd().as_fd(), |k, mut v| {
            got.insert(k.mac, v.next().unwrap());
        })
        .unwrap();
    let want_slots: BTreeMap<[u8; 6], u32> =
        (0..50u8).map(|i| (client_n(i).0, u32::from(i) * 3)).collect();
    assert_eq!(got, want_slots);
    let mut rows = Vec::new();
    let n = BatchReader::<u32, Counters>::new(Layout::PerCpu { cpus })
        .with_chunk(10)
        .for_each(totals.map().fd().as_fd(), |slot, v| rows.push((*slot, v.collect::<Vec<_>>())))
        .unwrap();
    assert_eq!(n, 64, "every array element, set or not");
    for (slot, per_cpu) in rows {
        let want: Vec<Counters> = (0..cpus)
            .map(|c| if slot < 50 { value(slot, c).counters } else { Counters::default() })
            .collect();
        assert_eq!(per_cpu, want, "slot {slot}");
    }
}

/// A map type without batch operations (the slot queue) is "unsupported", the answer an old
/// kernel gives for every map, on which the collector falls back to iteration.
#[test]
fn batch_lookup_on_a_map_without_batch_ops_is_unsupported() {
    require_root!();
    use aya::maps::Map;
    use sensor::kernel::bpf_batch::{BatchError, BatchReader, Layout};
    use std::os::fd::AsFd as _;
    let prefixes: Vec<IpNet> = LAN.iter().map(|p| p.parse().unwrap()).collect();
    let (mut ebpf, _) = load(&LoadOptions {
        lan_prefixes: &prefixes,
        flow_capacity: 64,
        client_capacity: 8,
        pin_dir: None,
        kernel_btf: false,
    })
    .unwrap();
    let Some(Map::Queue(queue)) = ebpf.take_map(names::FREE_SLOTS) else {
        panic!("FREE_SLOTS is not a queue")
    };
    let r = BatchReader::<u32, u32>::new(Layout::Plain)
        .for_each(queue.fd().as_fd(), |_, _| panic!("no entries"));
    assert!(matches!(r, Err(BatchError::Unsupported(_))), "{r:?}");
}
