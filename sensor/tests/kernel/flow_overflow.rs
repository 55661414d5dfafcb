//! More live flows than the flow map holds: client totals stay exact, evictions are counted.

use std::{collections::BTreeMap, net::Ipv4Addr};

use sensor::common::FlowKey;

use crate::{
    GW_MAC, client_n,
    expect::{mac_text, show_key},
    frames::udp4,
    harness::{Sensor, require_root},
};

/// Three rounds of 100 new flows each (two clients) into a flow map of 64, read and accounted
/// after each round as the agent does: the exported client totals are exactly what was sent;
/// the remote series have exactly what the reads saw (the flows evicted before any read are
/// missing there, not from the totals); `gwsensor_flow_evictions_total` counts every flow that
/// was read once and was gone at the next read.
#[test]
fn overflowing_the_flow_map_keeps_client_totals_exact_and_counts_evictions() {
    require_root!();
    use sensor::{
        accounting::{Accounting, DestKey, Params},
        enrich::ClientLabels,
        export::metrics::Metrics,
    };
    use std::collections::BTreeSet;
    const FLOW_CAPACITY: u32 = 64;
    let s = Sensor::with_capacities(FLOW_CAPACITY, 8);
    let params = Params {
        top_remotes: 20,
        top_destinations: 20,
        series_budget: 1000,
        remote_idle_expiry_secs: 3600,
        destination_idle_expiry_secs: 3600,
        client_idle_expiry_secs: 3600,
        tracked_per_client: 2_048,
        tracked_total: 16_384,
        client_slots: 0,
        score_half_life_secs: 120.0,
        name_wait_secs: 2,
    };
    let namer = |k: &FlowKey| DestKey { destination: show_key(k), country: String::new(), asn: 0 };
    let metrics = Metrics::new().unwrap();
    let mut acct = Accounting::default();
    let (a, a_ip) = client_n(1);
    let (b, b_ip) = client_n(2);
    let mut sent: BTreeMap<[u8; 6], u64> = BTreeMap::new();
    let mut previous: BTreeSet<FlowKey> = BTreeSet::new();
    let (mut evicted, mut seen_bytes) = (0u64, BTreeMap::<[u8; 6], u64>::new());
    for round in 0..3u32 {
        for i in 0..100u32 {
            let (mac, ip) = if i % 3 == 0 { (b, b_ip) } else { (a, a_ip) };
            let remote = Ipv4Addr::from(0x5db8_0000 + round * 1000 + i);
            let f = udp4(mac, GW_MAC, ip, remote, 40_000, 443, 20 + i as usize);
            s.upload(&f);
            *sent.entry(mac).or_default() += f.len() as u64;
        }
        let snap = s.snapshot();
        assert!(
            snap.flows.len() <= FLOW_CAPACITY as usize,
            "{} flows in a map of {FLOW_CAPACITY}",
            snap.flows.len()
        );
        let now: BTreeSet<FlowKey> = snap.flows.iter().map(|(k, _)| *k).collect();
        evicted += previous.difference(&now).count() as u64;
        // Every flow carried one frame, and no key comes back: a flow in this read and not in
        // the last one is new, and its bytes reach the remote series.
        for (k, c) in &snap.flows {
            if !previous.contains(k) {
                *seen_bytes.entry(k.client_mac).or_default() += c.bytes[0];
            }
        }
        previous = now;
        let snap = std::sync::Arc::new(snap);
        acct.update(&snap, 1000 + u64::from(round) * 5, &params, &namer);
        metrics.publish(&acct, &|_| ClientLabels { name: "c".into(), ..ClientLabels::default() });
    }
    assert!(evicted >= 100, "{evicted} evictions: the map of {FLOW_CAPACITY} took 300 flows");
    assert_eq!(acct.flow_evictions, evicted);
    for (mac, want) in &sent {
        let account = &acct.clients[mac];
        assert_eq!(account.totals.bytes[0], *want, "client {} totals", mac_text(mac));
        let remotes: u64 = account.remotes.carried().bytes[0];
        assert_eq!(
            remotes,
            seen_bytes[mac],
            "client {} remote series: what the reads saw",
            mac_text(mac)
        );
        assert!(
            remotes < *want,
            "flows evicted before any read are missing from the remote series"
        );
    }
    metrics.release(&metrics.counters());
    let text = metrics.render().unwrap();
    assert!(
        text.lines().any(|l| l == format!("gwsensor_flow_evictions_total {evicted}")),
        "{text}"
    );
    let line = format!(
        "gwsensor_client_bytes_total{{client=\"c\",mac=\"{}\",direction=\"upload\"}} {}",
        mac_text(&a),
        sent[&a]
    );
    assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
}
