//! Turns successive kernel snapshots into the counters the agent exports.
//!
//! The kernel maps hold cumulative values, but flows come and go (LRU eviction, a map
//! recreated after a reboot) and only the top remotes of a client get a series of their own.
//! So the agent works in deltas: each poll, what every flow and client gained since the last
//! poll is added to exactly one exported counter. Exported counters therefore only ever grow,
//! whatever is evicted or whichever remotes enter or leave a client's top-N, and the sum over
//! a client's remote series (including `other`) equals what its flows were seen to carry.

use std::collections::{BTreeMap, HashMap};

use sensor_common::{Counters, Direction, FlowKey};
use serde::{Deserialize, Serialize};

use crate::collector::Snapshot;

pub type Mac = [u8; 6];

/// Packets and bytes per direction (indexed by [`Direction::index`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
}

impl Tally {
    pub fn of(c: &Counters) -> Tally {
        Tally { packets: c.packets, bytes: c.bytes }
    }

    /// What `self` gained over `prev`. A value below `prev` means the kernel entry was
    /// recreated (evicted and seen again, or the map was reset): all of it is new.
    fn since(&self, prev: &Tally) -> Tally {
        let grew = (0..2).all(|d| self.packets[d] >= prev.packets[d] && self.bytes[d] >= prev.bytes[d]);
        if !grew {
            return *self;
        }
        Tally {
            packets: [self.packets[0] - prev.packets[0], self.packets[1] - prev.packets[1]],
            bytes: [self.bytes[0] - prev.bytes[0], self.bytes[1] - prev.bytes[1]],
        }
    }

    pub fn add(&mut self, other: &Tally) {
        for d in 0..2 {
            self.packets[d] += other.packets[d];
            self.bytes[d] += other.bytes[d];
        }
    }

    pub fn is_zero(&self) -> bool {
        *self == Tally::default()
    }

    pub fn packets(&self, dir: Direction) -> u64 {
        self.packets[dir.index()]
    }

    pub fn bytes(&self, dir: Direction) -> u64 {
        self.bytes[dir.index()]
    }

    fn total_bytes(&self) -> u64 {
        self.bytes[0] + self.bytes[1]
    }
}

/// A remote endpoint as a client sees it: the client's own address and port do not matter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RemoteId {
    pub ip: [u8; 16],
    pub protocol: u8,
    pub port: u16,
}

impl RemoteId {
    fn of(key: &FlowKey) -> RemoteId {
        RemoteId { ip: key.remote_ip, protocol: key.protocol, port: key.remote_port }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RemoteAccount {
    /// The value of this remote's series: what it carried while it was in the top set.
    pub exported: Tally,
    /// Has a series of its own right now.
    pub in_top: bool,
    /// Recent activity in bytes, halving every [`Params::score_half_life_secs`]: what "top"
    /// ranks by, so that a remote that was busy last week does not hold a series forever.
    pub score: f64,
    /// Unix seconds of the last poll that saw it carry traffic.
    pub last_active: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClientAccount {
    /// Client totals, from the kernel's per-client map (exact even when flows are evicted).
    pub totals: Tally,
    /// Traffic to remotes without a series of their own: `remote="other"`.
    pub other: Tally,
    #[serde(with = "as_pairs")]
    pub remotes: HashMap<RemoteId, RemoteAccount>,
}

/// Knobs from the config.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub top_remotes: usize,
    pub remote_idle_expiry_secs: u64,
    pub score_half_life_secs: f64,
}

/// Everything exported, plus the last kernel reading it was computed from.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Accounting {
    #[serde(with = "as_pairs")]
    pub clients: BTreeMap<Mac, ClientAccount>,
    /// Flows that left the kernel map between two polls (LRU evictions, mostly).
    pub flow_evictions: u64,
    #[serde(with = "as_pairs")]
    flows_last: HashMap<FlowKeyBytes, Tally>,
    #[serde(with = "as_pairs")]
    clients_last: HashMap<Mac, Tally>,
    last_update: u64,
}

/// A flow key as raw bytes, so that the state file does not depend on the struct's Rust form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct FlowKeyBytes(#[serde(with = "hex")] [u8; 44]);

impl FlowKeyBytes {
    fn of(key: &FlowKey) -> FlowKeyBytes {
        let mut b = [0u8; 44];
        b[..16].copy_from_slice(&key.client_ip);
        b[16..32].copy_from_slice(&key.remote_ip);
        b[32..38].copy_from_slice(&key.client_mac);
        b[38..40].copy_from_slice(&key.remote_port.to_be_bytes());
        b[40] = key.protocol;
        FlowKeyBytes(b)
    }
}

impl Accounting {
    /// Folds one snapshot in. `now` is Unix seconds.
    pub fn update(&mut self, snap: &Snapshot, now: u64, params: &Params) {
        let mut clients_last = HashMap::with_capacity(snap.clients.len());
        for (mac, counters) in &snap.clients {
            let cur = Tally::of(counters);
            let delta = cur.since(self.clients_last.get(mac).unwrap_or(&Tally::default()));
            self.clients.entry(*mac).or_default().totals.add(&delta);
            clients_last.insert(*mac, cur);
        }
        self.clients_last = clients_last;

        let mut deltas: HashMap<Mac, HashMap<RemoteId, Tally>> = HashMap::new();
        let mut flows_last = HashMap::with_capacity(snap.flows.len());
        for (key, counters) in &snap.flows {
            let id = FlowKeyBytes::of(key);
            let cur = Tally::of(counters);
            let delta = cur.since(self.flows_last.get(&id).unwrap_or(&Tally::default()));
            if !delta.is_zero() {
                deltas.entry(key.client_mac).or_default().entry(RemoteId::of(key)).or_default().add(&delta);
            }
            flows_last.insert(id, cur);
        }
        self.flow_evictions += self.flows_last.keys().filter(|k| !flows_last.contains_key(*k)).count() as u64;
        self.flows_last = flows_last;

        let elapsed = now.saturating_sub(self.last_update) as f64;
        let decay = if self.last_update == 0 { 1.0 } else { 0.5f64.powf(elapsed / params.score_half_life_secs) };
        self.last_update = now;
        for (mac, account) in self.clients.iter_mut() {
            let empty = HashMap::new();
            account.apply(deltas.get(mac).unwrap_or(&empty), decay, now, params);
        }
    }

    /// The last kernel reading, for a client that wants to know what is in flight.
    pub fn flows_tracked(&self) -> usize {
        self.flows_last.len()
    }
}

impl ClientAccount {
    fn apply(&mut self, deltas: &HashMap<RemoteId, Tally>, decay: f64, now: u64, params: &Params) {
        for remote in self.remotes.values_mut() {
            remote.score *= decay;
        }
        for (id, delta) in deltas {
            let remote = self.remotes.entry(*id).or_default();
            remote.score += delta.total_bytes() as f64;
            remote.last_active = now;
        }
        self.choose_top(params.top_remotes);
        for (id, delta) in deltas {
            match self.remotes.get_mut(id) {
                Some(remote) if remote.in_top => remote.exported.add(delta),
                _ => self.other.add(delta),
            }
        }
        // Forget remotes idle for long: their series (if any) ends, memory stays bounded.
        let expiry = params.remote_idle_expiry_secs;
        self.remotes.retain(|_, r| now.saturating_sub(r.last_active) < expiry);
    }

    /// The `n` most active remotes get a series; on equal activity the incumbent keeps it.
    fn choose_top(&mut self, n: usize) {
        let mut ranked: Vec<(&RemoteId, &RemoteAccount)> = self.remotes.iter().collect();
        ranked.sort_by(|a, b| {
            b.1.score.total_cmp(&a.1.score).then(b.1.in_top.cmp(&a.1.in_top)).then(a.0.cmp(b.0))
        });
        let top: Vec<RemoteId> = ranked.iter().take(n).map(|(id, _)| **id).collect();
        for (id, remote) in self.remotes.iter_mut() {
            remote.in_top = top.contains(id);
        }
    }
}

/// Maps with non-string keys as JSON arrays of pairs.
mod as_pairs {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<'a, M, K, V, S>(map: &'a M, s: S) -> Result<S::Ok, S::Error>
    where
        &'a M: IntoIterator<Item = (&'a K, &'a V)>,
        K: Serialize + 'a,
        V: Serialize + 'a,
        S: Serializer,
    {
        s.collect_seq(map)
    }

    pub fn deserialize<'de, M, K, V, D>(d: D) -> Result<M, D::Error>
    where
        M: FromIterator<(K, V)>,
        K: Deserialize<'de>,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(d)?.into_iter().collect())
    }
}

/// Fixed-size byte arrays as hex strings (compact in JSON, readable in a diff).
mod hex {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer, const N: usize>(b: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&b.iter().map(|x| format!("{x:02x}")).collect::<String>())
    }

    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(d: D) -> Result<[u8; N], D::Error> {
        let text = String::deserialize(d)?;
        if text.len() != 2 * N || !text.is_ascii() {
            return Err(D::Error::custom(format!("expected {} hex digits", 2 * N)));
        }
        let mut out = [0u8; N];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(D::Error::custom)?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARAMS: Params = Params { top_remotes: 2, remote_idle_expiry_secs: 600, score_half_life_secs: 60.0 };
    const MAC: Mac = [2, 0, 0, 0, 0, 1];

    fn key(remote: u8, port: u16) -> FlowKey {
        let mut k = FlowKey { client_mac: MAC, protocol: 17, remote_port: port, ..FlowKey::default() };
        k.client_ip[15] = 10;
        k.remote_ip[15] = remote;
        k
    }

    fn counters(up_pk: u64, up_b: u64, down_pk: u64, down_b: u64) -> Counters {
        Counters { packets: [up_pk, down_pk], bytes: [up_b, down_b], first_seen_ns: 1, last_seen_ns: 2 }
    }

    fn snap(flows: &[(FlowKey, Counters)]) -> Snapshot {
        let mut s = Snapshot::default();
        let mut total = Counters::default();
        for (k, c) in flows {
            s.flows.insert(*k, *c);
            total.merge(c);
        }
        s.clients.insert(MAC, total);
        s
    }

    fn remote(a: &Accounting, r: u8, port: u16) -> Option<&RemoteAccount> {
        a.clients[&MAC].remotes.get(&RemoteId::of(&key(r, port)))
    }

    #[test]
    fn deltas_accumulate_into_monotonic_counters() {
        let mut a = Accounting::default();
        a.update(&snap(&[(key(1, 53), counters(2, 200, 1, 100))]), 100, &PARAMS);
        a.update(&snap(&[(key(1, 53), counters(5, 500, 3, 300))]), 105, &PARAMS);
        let r = remote(&a, 1, 53).unwrap();
        assert!(r.in_top);
        assert_eq!(r.exported, Tally { packets: [5, 3], bytes: [500, 300] });
        assert_eq!(a.clients[&MAC].totals, Tally { packets: [5, 3], bytes: [500, 300] });
        assert_eq!(a.clients[&MAC].other, Tally::default());
    }

    #[test]
    fn beyond_top_n_goes_to_other_and_sums_stay_exact() {
        let mut a = Accounting::default();
        let flows = [
            (key(1, 443), counters(10, 10_000, 0, 0)),
            (key(2, 443), counters(5, 5_000, 0, 0)),
            (key(3, 443), counters(1, 100, 0, 0)),
        ];
        a.update(&snap(&flows), 100, &PARAMS);
        let c = &a.clients[&MAC];
        assert!(remote(&a, 1, 443).unwrap().in_top && remote(&a, 2, 443).unwrap().in_top);
        assert!(!remote(&a, 3, 443).unwrap().in_top);
        assert_eq!(c.other, Tally { packets: [1, 0], bytes: [100, 0] });
        let sum: u64 = c.remotes.values().map(|r| r.exported.bytes[0]).sum::<u64>() + c.other.bytes[0];
        assert_eq!(sum, c.totals.bytes[0]);
    }

    #[test]
    fn eviction_and_reappearance_never_go_backwards() {
        let mut a = Accounting::default();
        a.update(&snap(&[(key(1, 80), counters(4, 400, 0, 0))]), 100, &PARAMS);
        // Evicted: the flow is gone from the map, the client total still holds it.
        let mut s = snap(&[]);
        s.clients.insert(MAC, counters(4, 400, 0, 0));
        a.update(&s, 105, &PARAMS);
        assert_eq!(a.flow_evictions, 1);
        // Seen again from zero: its new counts add on top.
        let mut s = snap(&[(key(1, 80), counters(1, 100, 0, 0))]);
        s.clients.insert(MAC, counters(5, 500, 0, 0));
        a.update(&s, 110, &PARAMS);
        assert_eq!(remote(&a, 1, 80).unwrap().exported.bytes, [500, 0]);
        assert_eq!(a.clients[&MAC].totals.bytes, [500, 0]);
    }

    #[test]
    fn a_busier_remote_takes_the_series_of_an_idle_one_and_nothing_is_double_counted() {
        let mut a = Accounting::default();
        let mut f = vec![(key(1, 1), counters(1, 1000, 0, 0)), (key(2, 2), counters(1, 1000, 0, 0))];
        a.update(&snap(&f), 100, &PARAMS);
        // Much later, remote 3 is busy while 1 and 2 are idle: 3 displaces one of them.
        f.push((key(3, 3), counters(9, 9000, 0, 0)));
        a.update(&snap(&f), 500, &PARAMS);
        assert!(remote(&a, 3, 3).unwrap().in_top);
        assert_eq!(remote(&a, 3, 3).unwrap().exported.bytes[0], 9000);
        let c = &a.clients[&MAC];
        let exported: u64 = c.remotes.values().map(|r| r.exported.bytes[0]).sum();
        assert_eq!(exported + c.other.bytes[0], 11_000);
        assert_eq!(c.remotes.values().filter(|r| r.in_top).count(), 2);
    }

    #[test]
    fn idle_remotes_are_forgotten_after_expiry() {
        let mut a = Accounting::default();
        a.update(&snap(&[(key(1, 1), counters(1, 10, 0, 0))]), 100, &PARAMS);
        a.update(&snap(&[(key(1, 1), counters(1, 10, 0, 0))]), 800, &PARAMS);
        assert!(remote(&a, 1, 1).is_none());
    }

    #[test]
    fn state_round_trips_through_json() {
        let mut a = Accounting::default();
        a.update(&snap(&[(key(1, 53), counters(2, 200, 1, 100))]), 100, &PARAMS);
        let text = serde_json::to_string(&a).unwrap();
        let mut b: Accounting = serde_json::from_str(&text).unwrap();
        // After a restart the same kernel values add nothing; new ones add only the delta.
        b.update(&snap(&[(key(1, 53), counters(3, 300, 1, 100))]), 105, &PARAMS);
        assert_eq!(remote(&b, 1, 53).unwrap().exported, Tally { packets: [3, 1], bytes: [300, 100] });
        assert_eq!(b.clients[&MAC].totals, Tally { packets: [3, 1], bytes: [300, 100] });
    }
}
