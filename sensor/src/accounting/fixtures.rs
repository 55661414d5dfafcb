//! What the accounting's tests, and the tests of the stages that read it, start from: params,
//! one client's flows and snapshots of them.

use std::sync::Arc;

use sensor_common::{Counters, FlowKey};

use super::{Accounting, Params, dest_names::DestKey};
use crate::{kernel::collector::Snapshot, types::Mac};

/// What the tests of other modules start from too.
pub(crate) const PARAMS: Params = Params {
    top_remotes: 2,
    top_destinations: 2,
    series_budget: 100,
    remote_idle_expiry_secs: 600,
    destination_idle_expiry_secs: 600,
    client_idle_expiry_secs: 3600,
    tracked_per_client: 2_048,
    tracked_total: 16_384,
    client_slots: 0,
    score_half_life_secs: 60.0,
    name_wait_secs: 2,
};
pub(crate) const MAC: Mac = [2, 0, 0, 0, 0, 1];

pub(crate) fn key(remote: u8, port: u16) -> FlowKey {
    let mut k = FlowKey { client_mac: MAC, protocol: 17, remote_port: port, ..FlowKey::default() };
    k.client_ip[15] = 10;
    k.remote_ip[15] = remote;
    k
}

/// Destinations named by the remote's last byte: remotes 1 and 2 are one domain.
pub(crate) fn by_domain(key: &FlowKey) -> DestKey {
    let destination = if key.remote_ip[15] <= 2 {
        "one.example".to_string()
    } else {
        format!("r{}.example", key.remote_ip[15])
    };
    DestKey { destination, country: "ZZ".into(), asn: 64_500 }
}

pub(crate) fn counters(up_pk: u64, up_b: u64, down_pk: u64, down_b: u64) -> Counters {
    Counters { packets: [up_pk, down_pk], bytes: [up_b, down_b], first_seen_ns: 1, last_seen_ns: 2 }
}

pub(crate) fn snap_for(mac: Mac, flows: &[(FlowKey, Counters)]) -> Snapshot {
    let mut s = Snapshot::default();
    let mut total = Counters::default();
    for (k, c) in flows {
        let mut k = *k;
        k.client_mac = mac;
        s.flows.push((k, *c));
        total.merge(c);
    }
    s.clients.insert(mac, total);
    s
}

pub(crate) fn snap(flows: &[(FlowKey, Counters)]) -> Snapshot {
    snap_for(MAC, flows)
}

pub(crate) fn update(a: &mut Accounting, s: &Snapshot, now: u64, p: &Params) -> Vec<Mac> {
    a.update(&Arc::new(s.clone()), now, p, &by_domain)
}
