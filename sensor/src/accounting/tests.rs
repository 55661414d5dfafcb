//! The per-poll update: deltas, top-N and `other`, the budget, evictions, retirement, names
//! that arrive late.

use std::{hash::Hash, sync::Arc};

use sensor_common::FlowKey;

use super::{
    Accounting, Namer, Params, RemoteId,
    dest_names::DestKey,
    fixtures::{MAC, PARAMS, counters, key, snap, snap_for, update},
    ranked::{Ranked, Series},
    tally::Tally,
};
use crate::kernel::collector::Snapshot;

fn remote(a: &Accounting, r: u8, port: u16) -> Option<Series> {
    a.clients[&MAC].remotes.get(&RemoteId::of(&key(r, port)))
}

fn exported_bytes<K: Copy + Eq + Hash + Ord>(set: &Ranked<K>) -> u64 {
    set.carried().bytes[0]
}

/// A client's destination series by name.
fn destination(a: &Accounting, name: &str) -> Option<Series> {
    let d = &a.clients[&MAC].destinations;
    d.keys().find(|id| a.destination(**id).destination == name).and_then(|id| d.get(id))
}

#[test]
fn deltas_accumulate_into_monotonic_counters() {
    let mut a = Accounting::default();
    update(&mut a, &snap(&[(key(1, 53), counters(2, 200, 1, 100))]), 100, &PARAMS);
    update(&mut a, &snap(&[(key(1, 53), counters(5, 500, 3, 300))]), 105, &PARAMS);
    let r = remote(&a, 1, 53).unwrap();
    assert!(r.in_top);
    assert_eq!(r.exported, Tally { packets: [5, 3], bytes: [500, 300] });
    assert_eq!(a.clients[&MAC].totals, Tally { packets: [5, 3], bytes: [500, 300] });
    assert_eq!(a.clients[&MAC].remotes.other, Tally::default());
}

#[test]
fn beyond_top_n_goes_to_other_and_sums_stay_exact() {
    let mut a = Accounting::default();
    let flows = [
        (key(1, 443), counters(10, 10_000, 0, 0)),
        (key(2, 443), counters(5, 5_000, 0, 0)),
        (key(3, 443), counters(1, 100, 0, 0)),
    ];
    update(&mut a, &snap(&flows), 100, &PARAMS);
    let c = &a.clients[&MAC];
    assert!(remote(&a, 1, 443).unwrap().in_top && remote(&a, 2, 443).unwrap().in_top);
    assert!(!remote(&a, 3, 443).unwrap().in_top);
    assert_eq!(c.remotes.other, Tally { packets: [1, 0], bytes: [100, 0] });
    assert_eq!(exported_bytes(&c.remotes), c.totals.bytes[0]);
}

#[test]
fn destinations_aggregate_flows_by_name() {
    let mut a = Accounting::default();
    let flows = [
        (key(1, 443), counters(10, 10_000, 0, 0)),
        (key(2, 80), counters(5, 5_000, 0, 0)),
        (key(3, 443), counters(1, 100, 0, 0)),
    ];
    update(&mut a, &snap(&flows), 100, &PARAMS);
    let d = &a.clients[&MAC].destinations;
    let one = destination(&a, "one.example").unwrap();
    assert_eq!(one.exported, Tally { packets: [15, 0], bytes: [15_000, 0] });
    assert_eq!(
        a.destination(*d.keys().min_by_key(|id| &a.destination(**id).destination).unwrap()).asn,
        64_500
    );
    assert_eq!(d.series().count(), 2);
    assert_eq!(d.other, Tally::default());
}

#[test]
fn the_global_budget_moves_the_least_active_series_to_other() {
    let mut a = Accounting::default();
    let params = Params { series_budget: 3, ..PARAMS };
    let mut s = snap_for(
        [2, 0, 0, 0, 0, 1],
        &[(key(1, 1), counters(1, 1000, 0, 0)), (key(3, 1), counters(1, 900, 0, 0))],
    );
    let other = snap_for(
        [2, 0, 0, 0, 0, 2],
        &[(key(4, 1), counters(1, 800, 0, 0)), (key(5, 1), counters(1, 10, 0, 0))],
    );
    s.flows.extend(other.flows);
    s.clients.extend(other.clients);
    update(&mut a, &s, 100, &params);
    let held: usize = a.clients.values().map(|c| c.remotes.series().count()).sum();
    assert_eq!(held, 3);
    let second = &a.clients[&[2, 0, 0, 0, 0, 2]];
    // The 10-byte remote lost its series; its bytes are in that client's other.
    assert_eq!(second.remotes.other.bytes[0], 10);
    assert_eq!(exported_bytes(&second.remotes), 810);
}

#[test]
fn eviction_and_reappearance_never_go_backwards() {
    let mut a = Accounting::default();
    update(&mut a, &snap(&[(key(1, 80), counters(4, 400, 0, 0))]), 100, &PARAMS);
    // Evicted: the flow is gone from the map, the client total still holds it.
    let mut s = snap(&[]);
    s.clients.insert(MAC, counters(4, 400, 0, 0));
    update(&mut a, &s, 105, &PARAMS);
    assert_eq!(a.flow_evictions, 1);
    // Seen again from zero: its new counts add on top.
    let mut s = snap(&[(key(1, 80), counters(1, 100, 0, 0))]);
    s.clients.insert(MAC, counters(5, 500, 0, 0));
    update(&mut a, &s, 110, &PARAMS);
    assert_eq!(remote(&a, 1, 80).unwrap().exported.bytes, [500, 0]);
    assert_eq!(a.clients[&MAC].totals.bytes, [500, 0]);
}

#[test]
fn a_flow_read_twice_in_one_poll_counts_once() {
    let mut a = Accounting::default();
    let mut s = snap(&[(key(1, 80), counters(2, 200, 0, 0))]);
    s.flows.push(s.flows[0]);
    update(&mut a, &s, 100, &PARAMS);
    assert_eq!(remote(&a, 1, 80).unwrap().exported.bytes, [200, 0]);
    assert_eq!(a.flow_evictions, 0);
}

#[test]
fn flows_of_a_retired_client_are_not_evictions() {
    let mut a = Accounting::default();
    let s = snap(&[(key(1, 1), counters(1, 10, 0, 0)), (key(2, 2), counters(1, 10, 0, 0))]);
    update(&mut a, &s, 100, &PARAMS);
    assert_eq!(update(&mut a, &s, 100 + 3600, &PARAMS), vec![MAC]);
    // The agent deleted the retired client's flows from the kernel: the next read lacks them.
    update(&mut a, &Snapshot::default(), 100 + 3605, &PARAMS);
    assert_eq!(a.flow_evictions, 0);
}

#[test]
fn flows_gone_between_polls_are_counted_as_evictions() {
    let mut a = Accounting::default();
    let f = [
        (key(1, 1), counters(1, 10, 0, 0)),
        (key(2, 2), counters(1, 10, 0, 0)),
        (key(3, 3), counters(1, 10, 0, 0)),
    ];
    update(&mut a, &snap(&f), 100, &PARAMS);
    let mut s = snap(&f[2..]);
    s.clients.insert(MAC, counters(3, 30, 0, 0));
    update(&mut a, &s, 105, &PARAMS);
    assert_eq!(a.flow_evictions, 2);
    update(&mut a, &s, 110, &PARAMS);
    assert_eq!(a.flow_evictions, 2, "only flows that left since the last poll");
}

#[test]
fn a_busier_remote_takes_the_series_of_an_idle_one_and_nothing_is_double_counted() {
    let mut a = Accounting::default();
    let mut f = vec![(key(1, 1), counters(1, 1000, 0, 0)), (key(2, 2), counters(1, 1000, 0, 0))];
    update(&mut a, &snap(&f), 100, &PARAMS);
    // Much later, remote 3 is busy while 1 and 2 are idle: 3 displaces one of them.
    f.push((key(3, 3), counters(9, 9000, 0, 0)));
    update(&mut a, &snap(&f), 500, &PARAMS);
    assert!(remote(&a, 3, 3).unwrap().in_top);
    assert_eq!(remote(&a, 3, 3).unwrap().exported.bytes[0], 9000);
    let c = &a.clients[&MAC];
    assert_eq!(exported_bytes(&c.remotes), 11_000);
    assert_eq!(c.remotes.series().count(), 2);
}

#[test]
fn idle_remotes_are_forgotten_after_expiry() {
    let mut a = Accounting::default();
    update(&mut a, &snap(&[(key(1, 1), counters(1, 10, 0, 0))]), 100, &PARAMS);
    let mut s = snap(&[(key(1, 1), counters(1, 10, 0, 0))]);
    s.clients.insert(MAC, counters(2, 20, 0, 0));
    update(&mut a, &s, 800, &PARAMS);
    assert!(remote(&a, 1, 1).is_none());
}

#[test]
fn idle_clients_retire_and_come_back_as_new_series() {
    let mut a = Accounting::default();
    let s = snap(&[(key(1, 1), counters(1, 10, 0, 0))]);
    assert!(update(&mut a, &s, 100, &PARAMS).is_empty());
    assert_eq!(update(&mut a, &s, 100 + 3600, &PARAMS), vec![MAC]);
    assert!(!a.clients.contains_key(&MAC));
    // The kernel entry was removed by the agent; the device returns with fresh counts.
    update(&mut a, &snap(&[(key(1, 1), counters(1, 30, 0, 0))]), 5000, &PARAMS);
    assert_eq!(a.clients[&MAC].totals.bytes, [30, 0]);
}

/// Names remote 9 only once its "ClientHello" has been seen (after the first poll).
struct LateName(std::cell::Cell<bool>);

impl Namer for LateName {
    fn destination_into(&self, key: &FlowKey, out: &mut DestKey) {
        let destination = if self.0.get() { "named.example".into() } else { "10.0.0.9".into() };
        *out = DestKey { destination, country: String::new(), asn: key.remote_ip[15].into() };
    }
    fn awaits_name(&self, _key: &FlowKey) -> bool {
        !self.0.get()
    }
}

#[test]
fn a_new_unnamed_flow_waits_for_its_name() {
    let mut a = Accounting::default();
    let namer = LateName(std::cell::Cell::new(false));
    a.update(&Arc::new(snap(&[(key(9, 443), counters(3, 200, 1, 60))])), 100, &PARAMS, &namer);
    assert!(a.clients[&MAC].destinations.is_empty(), "held back for a poll");
    assert_eq!(a.clients[&MAC].totals.bytes, [200, 60], "client totals never wait");
    namer.0.set(true);
    a.update(&Arc::new(snap(&[(key(9, 443), counters(5, 900, 2, 120))])), 105, &PARAMS, &namer);
    assert_eq!(a.clients[&MAC].destinations.len(), 1);
    let e = destination(&a, "named.example").unwrap();
    assert_eq!(e.exported, Tally { packets: [5, 2], bytes: [900, 120] });
}

#[test]
fn a_flow_waits_at_most_name_wait() {
    let mut a = Accounting::default();
    let namer = LateName(std::cell::Cell::new(false));
    a.update(&Arc::new(snap(&[(key(9, 22), counters(1, 100, 0, 0))])), 100, &PARAMS, &namer);
    a.update(&Arc::new(snap(&[(key(9, 22), counters(2, 150, 0, 0))])), 101, &PARAMS, &namer);
    assert!(a.clients[&MAC].destinations.is_empty(), "still within name_wait");
    a.update(&Arc::new(snap(&[(key(9, 22), counters(3, 200, 0, 0))])), 102, &PARAMS, &namer);
    assert_eq!(a.clients[&MAC].destinations.carried().bytes[0], 200);
}

/// A scan: one busy remote and many one-packet ones. Each client keeps at most
/// `tracked_per_client` remotes and destinations, all clients together `tracked_total`; the
/// least active without a series go first, the top series stay, and every byte stays in the
/// client's series or `other` (totals exact).
#[test]
fn a_scan_is_forgotten_least_active_first_within_the_tracking_bounds() {
    let mut a = Accounting::default();
    let params = Params { tracked_per_client: 6, tracked_total: 9, ..PARAMS };
    let scan = |mac: [u8; 6], busy: u64, first: u8, n: u8| {
        let mut flows = vec![(key(1, 443), counters(10, busy, 0, 0))];
        flows.extend((first..first + n).map(|r| (key(r, 9), counters(1, 60, 0, 0))));
        snap_for(mac, &flows)
    };
    // First client: the busy remote and 20 scanned ones (remotes 10..30, 60 B each).
    update(&mut a, &scan(MAC, 50_000, 10, 20), 100, &params);
    let c = &a.clients[&MAC];
    assert_eq!(c.remotes.len(), 6);
    assert_eq!(c.destinations.len(), 6);
    assert_eq!(a.forgotten(), [15, 15]);
    assert!(remote(&a, 1, 443).unwrap().in_top, "the busy remote keeps its series");
    assert_eq!(c.totals.bytes[0], 50_000 + 20 * 60);
    assert_eq!(exported_bytes(&c.remotes), c.totals.bytes[0], "bytes lost with the keys");
    assert_eq!(exported_bytes(&c.destinations), c.totals.bytes[0]);

    // A second client scans too: over both, at most 9 of each kind.
    let second = [2, 0, 0, 0, 0, 2];
    let mut s = scan(MAC, 50_000, 10, 20);
    let more = scan(second, 40_000, 100, 20);
    s.flows.extend(more.flows);
    s.clients.extend(more.clients);
    update(&mut a, &s, 105, &params);
    assert_eq!(a.tracked(), [9, 9]);
    for mac in [MAC, second] {
        let c = &a.clients[&mac];
        assert!(c.remotes.get(&RemoteId::of(&key(1, 443))).unwrap().in_top, "{mac:?}");
        assert_eq!(exported_bytes(&c.remotes), c.totals.bytes[0], "{mac:?}");
        assert_eq!(exported_bytes(&c.destinations), c.totals.bytes[0], "{mac:?}");
    }
    assert_eq!(a.clients[&second].totals.bytes[0], 40_000 + 20 * 60);
    // The forgotten destinations' names were released: only the kept ones are held.
    assert_eq!(a.destinations_tracked(), 9 - 1, "one.example is held by both clients");
}

/// With three quarters of the kernel's client slots held, a client no packet ever went to (a
/// spoofed or one-packet source MAC) is retired at the first poll that does not see it; one
/// that got traffic back stays for `client_idle_expiry`; with slots to spare nothing changes.
#[test]
fn one_way_clients_leave_early_when_slots_are_short() {
    let mut a = Accounting::default();
    let params = Params { client_slots: 4, ..PARAMS };
    let spoofed = |n: u8| snap_for([2, 0, 0, 0, 9, n], &[(key(9, 9), counters(1, 60, 0, 0))]);
    let real = snap_for(MAC, &[(key(1, 443), counters(3, 300, 2, 200))]);
    let merged = |snaps: &[&Snapshot]| {
        let mut s = Snapshot::default();
        for part in snaps {
            s.flows.extend(part.flows.iter().copied());
            s.clients.extend(part.clients.iter().map(|(m, c)| (*m, *c)));
        }
        s
    };
    // Two of four slots: not short; the one-way client stays though this poll does not see it.
    update(&mut a, &merged(&[&real, &spoofed(1)]), 100, &params);
    let retired = update(&mut a, &merged(&[&real, &spoofed(1)]), 105, &params);
    assert!(retired.is_empty());
    assert_eq!(a.retired_one_way(), 0);
    // Two spoofed MACs more: three of four held, short. The one seen before and not again,
    // which nothing answered, leaves at once; the new ones at the next poll that misses them
    // (the kernel frees the slots of those retired: they are gone from its reads).
    let retired = update(&mut a, &merged(&[&real, &spoofed(2), &spoofed(3)]), 110, &params);
    assert_eq!(retired, vec![[2, 0, 0, 0, 9, 1]]);
    assert_eq!(a.retired_one_way(), 1);
    let mut retired = update(&mut a, &merged(&[&real, &spoofed(2), &spoofed(3)]), 115, &params);
    retired.sort();
    assert_eq!(retired, vec![[2, 0, 0, 0, 9, 2], [2, 0, 0, 0, 9, 3]]);
    assert_eq!(a.retired_one_way(), 2);
    assert!(a.clients.contains_key(&MAC));
}
