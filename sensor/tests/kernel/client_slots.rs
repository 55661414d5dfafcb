//! Client slots: per-client totals in an array, one slot per client MAC.

use std::net::Ipv4Addr;

use aya::maps::MapInfo;
use ipnet::IpNet;
use sensor::{
    common::{Direction, Stat, names},
    kernel::loader::{KeptMaps, LoadOptions, PINNED_MAPS, STAGED_DIR, finish_replacement, load},
};

use crate::{
    CLIENT_MAC, CLIENT4, GW_MAC, IPPROTO_TCP, IPPROTO_UDP, LAN, REMOTE4, client_n,
    expect::{Count, check, down, key, show_key, up},
    frames::{tcp4, udp4},
    harness::{Sensor, require_root},
};

/// Loading with the maps pinned in `dir`: 1024 flows, `clients` client slots, no kernel BTF.
fn pinned<'a>(prefixes: &'a [IpNet], dir: &'a std::path::Path, clients: u32) -> LoadOptions<'a> {
    LoadOptions {
        lan_prefixes: prefixes,
        flow_capacity: 1024,
        client_capacity: clients,
        pin_dir: Some(dir),
        kernel_btf: false,
    }
}

/// Runs the calling thread (and so its test runs) on `cpu` only.
fn pin_to_cpu(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).unwrap();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).unwrap();
}

#[test]
fn new_clients_get_slots_in_order_and_exact_totals() {
    require_root!();
    let s = Sensor::new();
    let mut flows = vec![];
    let mut clients = vec![];
    for i in 0..5u8 {
        let (mac, ip) = client_n(i);
        // Two flows each (one known client, one new flow: no new slot), sizes distinct.
        let a = udp4(mac, GW_MAC, ip, REMOTE4, 51000, 443, 100 + usize::from(i));
        let b = tcp4(mac, GW_MAC, ip, REMOTE4, 40000, 80, 300 + usize::from(i));
        s.upload(&a);
        s.upload(&b);
        flows.push((key(mac, ip, REMOTE4, IPPROTO_UDP, 443), up(&[&a])));
        flows.push((key(mac, ip, REMOTE4, IPPROTO_TCP, 80), up(&[&b])));
        clients.push((mac, up(&[&a, &b])));
    }
    let slots = s.maps.client_slots().unwrap();
    let want: std::collections::HashMap<[u8; 6], u32> =
        (0..5u8).map(|i| (client_n(i).0, u32::from(i))).collect();
    assert_eq!(slots, want, "one slot per client, handed out in order");
    check(
        &s.snapshot(),
        &flows,
        &clients,
        &[(Direction::Upload, Stat::Seen, 10), (Direction::Upload, Stat::Counted, 10)],
    );
}

/// The flow map is an LRU: flows go when it is full, but the client's totals (an array slot,
/// never evicted) keep every packet.
#[test]
fn client_totals_stay_exact_when_its_flows_are_evicted() {
    require_root!();
    const FLOW_CAPACITY: u32 = 16;
    let s = Sensor::with_capacities(FLOW_CAPACITY, 8);
    let frames: Vec<Vec<u8>> = (0..200u16)
        .map(|i| {
            udp4(CLIENT_MAC, GW_MAC, CLIENT4, REMOTE4, 51000, 1000 + i, 20 + usize::from(i % 50))
        })
        .collect();
    for f in &frames {
        s.upload(f);
    }
    // A flow evicted long ago, seen again: a fresh flow entry, the same client slot.
    s.upload(&frames[0]);
    let snap = s.snapshot();
    let all: Vec<&[u8]> =
        frames.iter().map(|f| f.as_slice()).chain([frames[0].as_slice()]).collect();
    let total = up(&all);
    let got = snap.clients.get(&CLIENT_MAC).map(|c| Count { packets: c.packets, bytes: c.bytes });
    assert_eq!(
        got,
        Some(total),
        "client totals over 201 packets, most of whose flows were evicted"
    );
    assert_eq!(snap.clients.len(), 1);
    assert!(
        !snap.flows.is_empty() && snap.flows.len() <= FLOW_CAPACITY as usize,
        "{} flows in a map of {FLOW_CAPACITY}",
        snap.flows.len()
    );
    // Every flow still there has exactly what its frame carried (each was seen once, but the
    // first twice: its second packet went into a new entry after the old one was evicted).
    for (k, c) in &snap.flows {
        let i = usize::from(k.remote_port - 1000);
        let want = up(&[&frames[i]]);
        assert_eq!(Count { packets: c.packets, bytes: c.bytes }, want, "flow {}", show_key(k));
    }
    let stats = snap.stats;
    assert_eq!(stats[Direction::Upload.index()][Stat::Seen as usize], 201);
    assert_eq!(stats[Direction::Upload.index()][Stat::Counted as usize], 201);
    assert_eq!(s.maps.client_slots().unwrap().get(&CLIENT_MAC), Some(&0));
}

/// Retiring a client frees its slot; the next new client takes it, starting from zero; the
/// retired client, back, gets a new slot and starts from zero too.
#[test]
fn retired_client_slot_goes_to_the_next_new_client_with_fresh_totals() {
    require_root!();
    let mut s = Sensor::new();
    let (a, a_ip) = client_n(1);
    let (b, b_ip) = client_n(2);
    let (c, c_ip) = client_n(3);
    let fa = udp4(a, GW_MAC, a_ip, REMOTE4, 51000, 443, 111);
    let fa_down = udp4(GW_MAC, a, REMOTE4, a_ip, 443, 51000, 1111);
    let fb = udp4(b, GW_MAC, b_ip, REMOTE4, 51000, 443, 222);
    let fc = tcp4(c, GW_MAC, c_ip, REMOTE6_AS_V4, 40000, 443, 333);
    s.upload(&fa);
    s.download(&fa_down);
    s.upload(&fb);
    assert_eq!(s.maps.client_slots().unwrap(), [(a, 0), (b, 1)].into_iter().collect());

    s.maps.remove_client(&a).unwrap();
    // A's flow and totals are gone; B is untouched.
    check(
        &s.snapshot(),
        &[(key(b, b_ip, REMOTE4, IPPROTO_UDP, 443), up(&[&fb]))],
        &[(b, up(&[&fb]))],
        &[
            (Direction::Upload, Stat::Seen, 2),
            (Direction::Upload, Stat::Counted, 2),
            (Direction::Download, Stat::Seen, 1),
            (Direction::Download, Stat::Counted, 1),
        ],
    );

    // C is new: it gets A's old slot, with nothing of A's in it.
    s.upload(&fc);
    assert_eq!(s.maps.client_slots().unwrap(), [(b, 1), (c, 0)].into_iter().collect());
    // A is back: a new slot (the free list is empty again), counting from zero.
    s.upload(&fa);
    assert_eq!(s.maps.client_slots().unwrap(), [(b, 1), (c, 0), (a, 2)].into_iter().collect());
    check(
        &s.snapshot(),
        &[
            (key(b, b_ip, REMOTE4, IPPROTO_UDP, 443), up(&[&fb])),
            (key(c, c_ip, REMOTE6_AS_V4, IPPROTO_TCP, 443), up(&[&fc])),
            (key(a, a_ip, REMOTE4, IPPROTO_UDP, 443), up(&[&fa])),
        ],
        &[(a, up(&[&fa])), (b, up(&[&fb])), (c, up(&[&fc]))],
        &[
            (Direction::Upload, Stat::Seen, 4),
            (Direction::Upload, Stat::Counted, 4),
            (Direction::Download, Stat::Seen, 1),
            (Direction::Download, Stat::Counted, 1),
        ],
    );
    // Retiring a client the kernel does not know (or twice) is harmless.
    s.maps.remove_clients(&[client_n(9).0, b, b]).unwrap();
    assert_eq!(s.maps.client_slots().unwrap(), [(c, 0), (a, 2)].into_iter().collect());
}

/// A remote for the test above that is not REMOTE4 (so the flows differ by more than the MAC).
const REMOTE6_AS_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

/// When every slot is held, a new client's packets are not counted (client_table_full); known
/// clients, even on new flows, still are. A retired client's slot lets the new one in.
#[test]
fn new_client_is_client_table_full_when_every_slot_is_held() {
    require_root!();
    let mut s = Sensor::with_capacities(4096, 2);
    let (a, a_ip) = client_n(1);
    let (b, b_ip) = client_n(2);
    let (c, c_ip) = client_n(3);
    let fa = udp4(a, GW_MAC, a_ip, REMOTE4, 51000, 443, 10);
    let fb = udp4(b, GW_MAC, b_ip, REMOTE4, 51000, 443, 20);
    let fb2 = tcp4(b, GW_MAC, b_ip, REMOTE4, 40000, 80, 25);
    let fc = udp4(c, GW_MAC, c_ip, REMOTE4, 51000, 443, 30);
    let fc_down = udp4(GW_MAC, c, REMOTE4, c_ip, 443, 51000, 40);
    for f in [&fa, &fb, &fc, &fb2] {
        s.upload(f);
    }
    s.download(&fc_down);
    check(
        &s.snapshot(),
        &[
            (key(a, a_ip, REMOTE4, IPPROTO_UDP, 443), up(&[&fa])),
            (key(b, b_ip, REMOTE4, IPPROTO_UDP, 443), up(&[&fb])),
            (key(b, b_ip, REMOTE4, IPPROTO_TCP, 80), up(&[&fb2])),
        ],
        &[(a, up(&[&fa])), (b, up(&[&fb, &fb2]))],
        &[
            (Direction::Upload, Stat::Seen, 4),
            (Direction::Upload, Stat::Counted, 3),
            (Direction::Upload, Stat::ClientTableFull, 1),
            (Direction::Download, Stat::Seen, 1),
            (Direction::Download, Stat::ClientTableFull, 1),
        ],
    );

    s.maps.remove_client(&a).unwrap();
    s.upload(&fc);
    assert_eq!(s.maps.client_slots().unwrap(), [(b, 1), (c, 0)].into_iter().collect());
    check(
        &s.snapshot(),
        &[
            (key(b, b_ip, REMOTE4, IPPROTO_UDP, 443), up(&[&fb])),
            (key(b, b_ip, REMOTE4, IPPROTO_TCP, 80), up(&[&fb2])),
            (key(c, c_ip, REMOTE4, IPPROTO_UDP, 443), up(&[&fc])),
        ],
        &[(b, up(&[&fb, &fb2])), (c, up(&[&fc]))],
        &[
            (Direction::Upload, Stat::Seen, 5),
            (Direction::Upload, Stat::Counted, 4),
            (Direction::Upload, Stat::ClientTableFull, 1),
            (Direction::Download, Stat::Seen, 1),
            (Direction::Download, Stat::ClientTableFull, 1),
        ],
    );
}

/// A flow inserted on one CPU has a zeroed value on the others: the first packet there must
/// find the flow's client slot (not take the zero for slot 0, which is another client's).
#[test]
fn a_flow_counted_on_two_cpus_adds_to_its_own_client() {
    require_root!();
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        eprintln!("note: one CPU only; nothing to check");
        return;
    }
    let s = Sensor::new();
    let (a, a_ip) = client_n(1);
    let (b, b_ip) = client_n(2);
    let fa = udp4(a, GW_MAC, a_ip, REMOTE4, 51000, 443, 10);
    let fb = udp4(b, GW_MAC, b_ip, REMOTE4, 51000, 443, 500);
    let fb_down = udp4(GW_MAC, b, REMOTE4, b_ip, 443, 51000, 900);
    pin_to_cpu(0);
    s.upload(&fa);
    s.upload(&fb);
    pin_to_cpu(1);
    s.upload(&fb);
    s.download(&fb_down);
    s.upload(&fb);
    assert_eq!(s.maps.client_slots().unwrap(), [(a, 0), (b, 1)].into_iter().collect());
    let b_count = up(&[&fb, &fb, &fb]) + down(&[&fb_down]);
    check(
        &s.snapshot(),
        &[
            (key(a, a_ip, REMOTE4, IPPROTO_UDP, 443), up(&[&fa])),
            (key(b, b_ip, REMOTE4, IPPROTO_UDP, 443), b_count),
        ],
        &[(a, up(&[&fa])), (b, b_count)],
        &[
            (Direction::Upload, Stat::Seen, 4),
            (Direction::Upload, Stat::Counted, 4),
            (Direction::Download, Stat::Seen, 1),
            (Direction::Download, Stat::Counted, 1),
        ],
    );
}

/// The client-slot maps are pinned as a set: with one of them gone (a fresh `NEXT_SLOT` would
/// hand out slots that clients hold), loading is refused with a message saying what to do.
#[test]
fn a_partial_set_of_pinned_client_slot_maps_is_refused() {
    require_root!();
    lab::ensure_bpffs().expect("pinning needs a BPF filesystem at /sys/fs/bpf");
    let pins = lab::PinDir::new("kernel", "partial-slots");
    let dir = pins.path().to_path_buf();
    let prefixes: Vec<IpNet> = LAN.iter().map(|p| p.parse().unwrap()).collect();
    let opts = pinned(&prefixes, &dir, 8);
    let (ebpf, first) = load(&opts).expect("first load: creates and pins the maps");
    drop(ebpf);
    assert_eq!(first.kept, KeptMaps::default(), "nothing was pinned before");
    // Reused as they are.
    let (_, again) =
        load(&LoadOptions { client_capacity: 16, ..opts }).expect("second load: reuses the pins");
    assert_eq!(again.capacities.clients, 8, "pinned client maps keep their capacity");
    assert_eq!(again.kept, KeptMaps { flows: true, clients: true, stats: true });
    std::fs::remove_file(dir.join(names::NEXT_SLOT)).unwrap();
    let err = load(&opts).map(|_| ()).expect_err("a partial set must be refused");
    let msg = format!("{err:#}");
    assert!(msg.contains("NEXT_SLOT") && msg.contains("rm -r"), "{msg}");
}

/// The maps another build pinned with another layout (a new stat slot, a bigger key) are
/// replaced, not refused: the load makes new maps and stages them beside the old pins (whose
/// programs may still be counting), and `finish_replacement`, which `attach_pinned` runs once
/// the new programs are on the hooks, renames them over the old pins. A staged set that was
/// never finished is not adopted by the next load.
#[test]
fn pinned_maps_of_another_layout_are_replaced_after_the_attach() {
    require_root!();
    lab::ensure_bpffs().expect("pinning needs a BPF filesystem at /sys/fs/bpf");
    let pins = lab::PinDir::new("kernel", "old-layout");
    let dir = pins.path().to_path_buf();
    std::fs::create_dir_all(&dir).unwrap();
    let pin_info = |name: &str| {
        let info = MapInfo::from_pin(dir.join(name)).expect("reading a pinned map");
        (info.id(), info.key_size(), info.value_size())
    };
    // STATS is a u32 → u64 array in this build; an "old" one with 4-byte values.
    let stats = dir.join(names::STATS);
    lab::pin_percpu_array(&stats, 4, "old_stats").expect("bpftool map create");
    let old = pin_info(names::STATS);
    let prefixes: Vec<IpNet> = LAN.iter().map(|p| p.parse().unwrap()).collect();
    let opts = pinned(&prefixes, &dir, 8);
    let (ebpf, loaded) = load(&opts).expect("another layout is replaced, not refused");
    assert_eq!(loaded.kept, KeptMaps::default(), "nothing of another layout is kept");
    assert_eq!(loaded.capacities.clients, 8);
    // Until the attach, the old pin stays where it is and the new maps wait aside.
    assert_eq!(pin_info(names::STATS), old, "the old pin is replaced only after the attach");
    let staged = dir.join(STAGED_DIR);
    for name in PINNED_MAPS {
        assert!(staged.join(name).exists(), "{name} is not staged in {}", staged.display());
    }
    let new_stats = MapInfo::from_pin(staged.join(names::STATS)).unwrap().id();
    let moved = finish_replacement(&dir).expect("finishing the replacement");
    assert_eq!(moved, PINNED_MAPS.to_vec());
    assert_eq!(pin_info(names::STATS), (new_stats, 4, 8), "the new STATS is pinned in place");
    assert!(!staged.exists(), "{} is left", staged.display());
    drop(ebpf);

    // Now of this layout: kept as it is.
    let (ebpf, again) = load(&opts).expect("loading over the replaced pins");
    assert_eq!(again.kept, KeptMaps { flows: true, clients: true, stats: true });
    assert_eq!(pin_info(names::STATS).0, new_stats);
    drop(ebpf);

    // A replacement that never reached its attach (a crash) leaves a staged set: the next
    // load of this layout removes it rather than adopt it.
    std::fs::create_dir_all(&staged).unwrap();
    let stray = staged.join(names::STATS);
    lab::pin_percpu_array(&stray, 8, "stray_stats").expect("bpftool map create");
    let (_ebpf, third) = load(&opts).expect("loading beside a stray staged set");
    assert_eq!(third.kept, KeptMaps { flows: true, clients: true, stats: true });
    assert!(!staged.exists(), "the stray staged set is left");
    assert_eq!(finish_replacement(&dir).expect("nothing to finish"), Vec::<&str>::new());
    assert_eq!(pin_info(names::STATS).0, new_stats, "a stray staged map replaced the pin");
}

/// A load the kernel refuses part-way (a capacity it will not allocate: the config's range
/// check stops this value, the kernel's limits can be lower) leaves none of the pins it made,
/// so the next start does not find a partial set. aya creates the maps in no fixed order, so
/// this tries several loads: in some, maps that the kernel accepts are pinned before the one
/// it refuses.
#[test]
fn a_failed_load_leaves_no_pins() {
    require_root!();
    lab::ensure_bpffs().expect("pinning needs a BPF filesystem at /sys/fs/bpf");
    let pins = lab::PinDir::new("kernel", "failed-load");
    let dir = pins.path().to_path_buf();
    let prefixes: Vec<IpNet> = LAN.iter().map(|p| p.parse().unwrap()).collect();
    let opts = pinned(&prefixes, &dir, u32::MAX);
    for attempt in 0..6 {
        let err = load(&opts).map(|_| ()).expect_err("the kernel refuses 2^32 client slots");
        let left: Vec<_> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(left.is_empty(), "attempt {attempt}: {left:?} left after: {err:#}");
    }
}

/// `LAN_PREFIXES` is a map since the prefixes follow the interface: the pins of a build
/// before it (the other maps, of this layout) are kept, and it is made and pinned beside them;
/// a pinned one of another layout (a per-CPU array standing in) has the set replaced.
#[test]
fn the_lan_prefixes_map_joins_older_pins_and_is_replaced_when_its_layout_differs() {
    require_root!();
    lab::ensure_bpffs().expect("pinning needs a BPF filesystem at /sys/fs/bpf");
    let pins = lab::PinDir::new("kernel", "lan-prefixes-pin");
    let dir = pins.path().to_path_buf();
    let prefixes: Vec<IpNet> = LAN.iter().map(|p| p.parse().unwrap()).collect();
    let opts = pinned(&prefixes, &dir, 8);
    let value_size = |path: &std::path::Path| MapInfo::from_pin(path).unwrap().value_size();
    let pin = dir.join(names::LAN_PREFIXES);
    let (ebpf, _) = load(&opts).expect("first load");
    drop(ebpf);
    // An older build's pins: all but LAN_PREFIXES.
    std::fs::remove_file(&pin).unwrap();
    let (ebpf, older) = load(&opts).expect("loading over an older build's pins");
    assert_eq!(older.kept, KeptMaps { flows: true, clients: true, stats: true });
    assert_eq!(value_size(&pin), size_of::<sensor::common::LanPrefixSets>() as u32);
    drop(ebpf);

    std::fs::remove_file(&pin).unwrap();
    lab::pin_percpu_array(&pin, 520, "old_prefixes").expect("bpftool map create");
    let (ebpf, other) = load(&opts).expect("another layout of LAN_PREFIXES is replaced");
    assert_eq!(other.kept, KeptMaps::default(), "the whole set is replaced");
    assert_eq!(value_size(&pin), 520, "the old pin stays until the attach");
    assert_eq!(finish_replacement(&dir).expect("finishing"), PINNED_MAPS.to_vec());
    assert_eq!(value_size(&pin), size_of::<sensor::common::LanPrefixSets>() as u32);
    drop(ebpf);
}
