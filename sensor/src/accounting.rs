//! Turns successive kernel snapshots into the counters the agent exports.
//!
//! The kernel maps hold cumulative values, but flows come and go (LRU eviction, a map
//! recreated after a reboot) and only the top remotes of a client get a series of their own.
//! So the agent works in deltas: each poll, what every flow and client gained since the last
//! poll is added to exactly one exported counter. Exported counters therefore only ever grow,
//! whatever is evicted or whichever remotes enter or leave a client's top-N, and the sum over
//! a client's remote series (including `other`) equals what its flows were seen to carry.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    hash::Hash,
    sync::Arc,
};

use sensor_common::{Counters, Direction, FlowKey};
use serde::{Deserialize, Serialize};

use crate::collector::Snapshot;

pub type Mac = [u8; 6];

/// A hash map with a fast, randomly seeded hasher: the per-flow maps are hashed several times
/// per flow and poll, and SipHash dominated the poll at 65,536 flows.
pub type FastMap<K, V> = foldhash::HashMap<K, V>;
pub type FastSet<K> = foldhash::HashSet<K>;

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

/// A destination as the per-destination series name it: the name at the configured level
/// (domain, fqdn, ip, asn or country) and the network it is in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DestKey {
    pub destination: String,
    pub country: String,
    /// 0 when unknown.
    pub asn: u32,
}

/// One key's series in a [`Ranked`] set.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Entry {
    /// The value of this key's series: what it carried while it had a series.
    pub exported: Tally,
    /// Has a series of its own right now.
    pub in_top: bool,
    /// Recent activity in bytes, halving every [`Params::score_half_life_secs`]: what "top"
    /// ranks by, so that a remote that was busy last week does not hold a series forever.
    pub score: f64,
    /// Unix seconds of the last poll that saw it carry traffic.
    pub last_active: u64,
    /// This poll's traffic, until it is attributed (to this key's series or `other`).
    #[serde(skip)]
    pending: Tally,
}

/// One client's series of one kind (remotes, destinations): its most active keys have a
/// series of their own, the others' traffic is summed into `other`. A key that loses its series
/// keeps its value in memory, so that if it wins one back the series continues where it was.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound(serialize = "K: Serialize", deserialize = "K: Deserialize<'de> + Eq + Hash"))]
pub struct Ranked<K> {
    #[serde(with = "as_pairs")]
    pub entries: FastMap<K, Entry>,
    pub other: Tally,
}

impl<K> Default for Ranked<K> {
    fn default() -> Self {
        Ranked { entries: FastMap::default(), other: Tally::default() }
    }
}

impl<K: Clone + Eq + Hash + Ord> Ranked<K> {
    /// Records traffic of `key` in this poll (attributed by [`Ranked::attribute`]).
    fn add(&mut self, key: K, delta: &Tally) {
        self.entries.entry(key).or_default().pending.add(delta);
    }

    /// Ages every key's activity and adds this poll's.
    fn observe(&mut self, decay: f64, now: u64) {
        for entry in self.entries.values_mut() {
            entry.score *= decay;
            if !entry.pending.is_zero() {
                entry.score += entry.pending.total_bytes() as f64;
                entry.last_active = now;
            }
        }
    }

    /// The `n` most active keys get a series; on equal activity the incumbent keeps it.
    fn choose_top(&mut self, n: usize) {
        if self.entries.len() <= n {
            self.entries.values_mut().for_each(|e| e.in_top = true);
            return;
        }
        // A selection, not a sort: linear in the keys (a client may have thousands).
        let mut ranked: Vec<(usize, &K, f64, bool)> =
            self.entries.iter().enumerate().map(|(i, (k, e))| (i, k, e.score, e.in_top)).collect();
        let mut top = vec![false; ranked.len()];
        if n > 0 {
            ranked.select_nth_unstable_by(n - 1, |a, b| b.2.total_cmp(&a.2).then(b.3.cmp(&a.3)).then(a.1.cmp(b.1)));
            for r in &ranked[..n] {
                top[r.0] = true;
            }
        }
        // The map is unchanged since `ranked` was made, so it iterates in the same order.
        for (entry, in_top) in self.entries.values_mut().zip(top) {
            entry.in_top = in_top;
        }
    }

    /// Adds this poll's traffic of each key to exactly one series: its own, or `other`.
    fn attribute(&mut self) {
        for entry in self.entries.values_mut() {
            let delta = std::mem::take(&mut entry.pending);
            if entry.in_top {
                entry.exported.add(&delta);
            } else {
                self.other.add(&delta);
            }
        }
    }

    /// Forgets keys idle for `expiry` seconds: their series (if any) ends, memory stays bounded.
    fn expire(&mut self, now: u64, expiry: u64) {
        self.entries.retain(|_, e| now.saturating_sub(e.last_active) < expiry);
    }

    /// Keys with a series of their own.
    pub fn series(&self) -> impl Iterator<Item = (&K, &Entry)> {
        self.entries.iter().filter(|(_, e)| e.in_top)
    }

    /// Keys tracked without a series of their own (their traffic goes to `other`).
    pub fn in_other(&self) -> usize {
        self.entries.values().filter(|e| !e.in_top).count()
    }
}

/// Takes series away from the least active keys, across all clients, until at most `budget`
/// keys have one: the global bound on series whatever the number of clients.
fn enforce_budget<'a, K: 'a>(sets: impl Iterator<Item = &'a mut Ranked<K>>, budget: usize) {
    let mut holders: Vec<&mut Entry> = sets.flat_map(|set| set.entries.values_mut()).filter(|e| e.in_top).collect();
    if holders.len() <= budget {
        return;
    }
    let excess = holders.len() - budget;
    holders.select_nth_unstable_by(excess - 1, |a, b| a.score.total_cmp(&b.score));
    for entry in holders.into_iter().take(excess) {
        entry.in_top = false;
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClientAccount {
    /// Client totals, from the kernel's per-client totals (exact even when flows are evicted).
    pub totals: Tally,
    /// Per remote endpoint (IP, protocol, port).
    pub remotes: Ranked<RemoteId>,
    /// Per named destination.
    pub destinations: Ranked<DestKey>,
    /// Unix seconds of the last poll that saw the client's totals grow.
    pub last_seen: u64,
}

/// Knobs from the config.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Remote series per client.
    pub top_remotes: usize,
    /// Destination series per client.
    pub top_destinations: usize,
    /// Most remote series, and most destination series, over all clients.
    pub series_budget: usize,
    pub remote_idle_expiry_secs: u64,
    pub destination_idle_expiry_secs: u64,
    /// A client unseen this long is retired: its series end until it is seen again.
    pub client_idle_expiry_secs: u64,
    pub score_half_life_secs: f64,
    /// Longest a new flow waits for its own name before it counts under its DNS name or address.
    pub name_wait_secs: u64,
}

/// Everything exported, plus the last kernel reading it was computed from.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Accounting {
    #[serde(with = "as_pairs")]
    pub clients: BTreeMap<Mac, ClientAccount>,
    /// Flows that left the kernel map between two polls (LRU evictions, mostly).
    pub flow_evictions: u64,
    /// Stored as (flow key, counters) pairs, the flows held back left out.
    #[serde(rename = "flows_last")]
    last: LastRead,
    #[serde(with = "as_pairs")]
    clients_last: HashMap<Mac, Tally>,
    last_update: u64,
    /// New flows held back for their name (see [`Namer::awaits_name`]), with the Unix second
    /// they were first held.
    #[serde(skip)]
    waiting: FastMap<FlowKey, u64>,
    /// Every flow that gained traffic in the last update, with its gain (the policy's input).
    #[serde(skip)]
    pub gains: Vec<(FlowKey, Tally)>,
}

/// The flows as last read: the previous poll's snapshot itself (shared with the API view, not
/// copied; sorted by key), except the flows it held back and the flows of the clients it
/// retired (which the agent then deleted from the kernel: gone, but not evicted).
#[derive(Debug, Clone, Default)]
struct LastRead {
    snap: Arc<Snapshot>,
    held: HashSet<FlowKey>,
    retired: HashSet<Mac>,
}

impl LastRead {
    fn flows(&self) -> impl Iterator<Item = &(FlowKey, Counters)> {
        self.snap.flows.iter().filter(|(k, _)| !self.held.contains(k))
    }
}

impl Serialize for LastRead {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.flows().map(|(k, c)| (FlowKeyBytes::of(k), Tally::of(c))))
    }
}

impl<'de> Deserialize<'de> for LastRead {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let pairs = Vec::<(FlowKeyBytes, Tally)>::deserialize(d)?;
        let flows = pairs
            .into_iter()
            .map(|(k, t)| (k.key(), Counters { packets: t.packets, bytes: t.bytes, first_seen_ns: 0, last_seen_ns: 0 }))
            .collect();
        Ok(LastRead { snap: Arc::new(Snapshot::sorted(flows)), ..LastRead::default() })
    }
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

    fn key(&self) -> FlowKey {
        let b = &self.0;
        let mut k = FlowKey::default();
        k.client_ip.copy_from_slice(&b[..16]);
        k.remote_ip.copy_from_slice(&b[16..32]);
        k.client_mac.copy_from_slice(&b[32..38]);
        k.remote_port = u16::from_be_bytes([b[38], b[39]]);
        k.protocol = b[40];
        k
    }
}

/// Names flows for the destination series.
pub trait Namer {
    /// The destination a flow counts into.
    fn destination(&self, key: &FlowKey) -> DestKey;

    /// Whether a new flow should wait (at most [`Params::name_wait_secs`]) before it is
    /// attributed, because its own name is likely on its way: a TCP flow whose TLS ClientHello
    /// or HTTP request has not been seen yet (a poll can fall between its SYN and its data).
    fn awaits_name(&self, _key: &FlowKey) -> bool {
        false
    }
}

impl<F: Fn(&FlowKey) -> DestKey> Namer for F {
    fn destination(&self, key: &FlowKey) -> DestKey {
        self(key)
    }
}

impl Accounting {
    /// Folds one snapshot in. `now` is Unix seconds; `destination` names a flow's remote end.
    /// Returns the clients retired in this poll (unseen for `client_idle_expiry_secs`): the
    /// caller frees their kernel slots (totals and flows) so that they never fill up with
    /// departed devices (a retired client seen again starts from zero, as a new series).
    /// `snap` is kept as the last read until the next update (shared, not copied).
    pub fn update(&mut self, snap: &Arc<Snapshot>, now: u64, params: &Params, namer: &dyn Namer) -> Vec<Mac> {
        let mut clients_last = HashMap::with_capacity(snap.clients.len());
        for (mac, counters) in &snap.clients {
            let cur = Tally::of(counters);
            let delta = cur.since(self.clients_last.get(mac).unwrap_or(&Tally::default()));
            if !delta.is_zero() {
                let account = self.clients.entry(*mac).or_default();
                account.totals.add(&delta);
                account.last_seen = now;
            }
            clients_last.insert(*mac, cur);
        }
        self.clients_last = clients_last;

        // Every flow read: its gain since the last read goes to its client's remote and
        // destination (pending until the top-N is chosen below). Both reads are sorted by key,
        // so they are walked side by side: no lookup per flow, and no copy of the last read.
        let snap = if snap.is_sorted() { Arc::clone(snap) } else { Arc::new(Snapshot::sorted(snap.flows.clone())) };
        // Accounts by MAC through a hash index: one lookup per flow instead of a tree descent.
        let (account_of, mut accounts): (FastMap<Mac, usize>, Vec<&mut ClientAccount>) =
            self.clients.iter_mut().enumerate().map(|(i, (mac, account))| ((*mac, i), account)).unzip();
        let last = &self.last;
        let gone = |k: &FlowKey| !last.held.contains(k) && !last.retired.contains(&k.client_mac);
        let mut prev = last.snap.flows.iter().peekable();
        let (mut evicted, mut waiting, mut held) = (0u64, FastMap::default(), HashSet::new());
        self.gains.clear();
        for (key, counters) in &snap.flows {
            while let Some((k, _)) = prev.next_if(|(k, _)| k < key) {
                evicted += u64::from(gone(k));
            }
            let before = prev.next_if(|(k, _)| k == key).filter(|(k, _)| !last.held.contains(k)).map(|(_, c)| Tally::of(c));
            if before.is_none() {
                // Held back: not recorded as read, so the poll that attributes it takes all of it.
                let since = self.waiting.get(key).copied().unwrap_or(now);
                if now.saturating_sub(since) < params.name_wait_secs && namer.awaits_name(key) {
                    waiting.insert(*key, since);
                    held.insert(*key);
                    continue;
                }
            }
            let delta = Tally::of(counters).since(&before.unwrap_or_default());
            if delta.is_zero() {
                continue;
            }
            // A flow that grew has a client whose totals grew (the kernel counts both), so the
            // account exists; a flow without one is not attributed.
            if let Some(&i) = account_of.get(&key.client_mac) {
                let account = &mut accounts[i];
                account.remotes.add(RemoteId::of(key), &delta);
                account.destinations.add(namer.destination(key), &delta);
                self.gains.push((*key, delta));
            }
        }
        // Flows read last time but not now left the map (LRU evictions, mostly).
        evicted += prev.filter(|(k, _)| gone(k)).count() as u64;
        self.flow_evictions += evicted;
        self.waiting = waiting;
        self.last = LastRead { snap, held, retired: HashSet::new() };

        let elapsed = now.saturating_sub(self.last_update) as f64;
        let decay = if self.last_update == 0 { 1.0 } else { 0.5f64.powf(elapsed / params.score_half_life_secs) };
        self.last_update = now;
        for account in self.clients.values_mut() {
            account.remotes.observe(decay, now);
            account.remotes.choose_top(params.top_remotes);
            account.destinations.observe(decay, now);
            account.destinations.choose_top(params.top_destinations);
        }
        enforce_budget(self.clients.values_mut().map(|a| &mut a.remotes), params.series_budget);
        enforce_budget(self.clients.values_mut().map(|a| &mut a.destinations), params.series_budget);
        for account in self.clients.values_mut() {
            account.remotes.attribute();
            account.destinations.attribute();
            account.remotes.expire(now, params.remote_idle_expiry_secs);
            account.destinations.expire(now, params.destination_idle_expiry_secs);
        }

        let retired: Vec<Mac> = self
            .clients
            .iter()
            .filter(|(_, a)| now.saturating_sub(a.last_seen) >= params.client_idle_expiry_secs)
            .map(|(mac, _)| *mac)
            .collect();
        for mac in &retired {
            self.clients.remove(mac);
            self.clients_last.remove(mac);
        }
        // The caller deletes their flows from the kernel: that is no eviction.
        if !retired.is_empty() {
            let gone: HashSet<Mac> = retired.iter().copied().collect();
            self.waiting.retain(|k, _| !gone.contains(&k.client_mac));
            self.last.retired = gone;
        }
        retired
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

    const PARAMS: Params = Params {
        top_remotes: 2,
        top_destinations: 2,
        series_budget: 100,
        remote_idle_expiry_secs: 600,
        destination_idle_expiry_secs: 600,
        client_idle_expiry_secs: 3600,
        score_half_life_secs: 60.0,
        name_wait_secs: 2,
    };
    const MAC: Mac = [2, 0, 0, 0, 0, 1];

    fn key(remote: u8, port: u16) -> FlowKey {
        let mut k = FlowKey { client_mac: MAC, protocol: 17, remote_port: port, ..FlowKey::default() };
        k.client_ip[15] = 10;
        k.remote_ip[15] = remote;
        k
    }

    /// Destinations named by the remote's last byte: remotes 1 and 2 are one domain.
    fn by_domain(key: &FlowKey) -> DestKey {
        let destination = if key.remote_ip[15] <= 2 { "one.example".to_string() } else { format!("r{}.example", key.remote_ip[15]) };
        DestKey { destination, country: "ZZ".into(), asn: 64_500 }
    }

    fn counters(up_pk: u64, up_b: u64, down_pk: u64, down_b: u64) -> Counters {
        Counters { packets: [up_pk, down_pk], bytes: [up_b, down_b], first_seen_ns: 1, last_seen_ns: 2 }
    }

    fn snap_for(mac: Mac, flows: &[(FlowKey, Counters)]) -> Snapshot {
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

    fn snap(flows: &[(FlowKey, Counters)]) -> Snapshot {
        snap_for(MAC, flows)
    }

    fn update(a: &mut Accounting, s: &Snapshot, now: u64, p: &Params) -> Vec<Mac> {
        a.update(&Arc::new(s.clone()), now, p, &by_domain)
    }

    fn remote(a: &Accounting, r: u8, port: u16) -> Option<&Entry> {
        a.clients[&MAC].remotes.entries.get(&RemoteId::of(&key(r, port)))
    }

    fn exported_bytes<K>(set: &Ranked<K>) -> u64 {
        set.entries.values().map(|e| e.exported.bytes[0]).sum::<u64>() + set.other.bytes[0]
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
        let one = DestKey { destination: "one.example".into(), country: "ZZ".into(), asn: 64_500 };
        assert_eq!(d.entries[&one].exported, Tally { packets: [15, 0], bytes: [15_000, 0] });
        assert_eq!(d.series().count(), 2);
        assert_eq!(d.other, Tally::default());
    }

    #[test]
    fn the_global_budget_moves_the_least_active_series_to_other() {
        let mut a = Accounting::default();
        let params = Params { series_budget: 3, ..PARAMS };
        let mut s = snap_for([2, 0, 0, 0, 0, 1], &[(key(1, 1), counters(1, 1000, 0, 0)), (key(3, 1), counters(1, 900, 0, 0))]);
        let other = snap_for([2, 0, 0, 0, 0, 2], &[(key(4, 1), counters(1, 800, 0, 0)), (key(5, 1), counters(1, 10, 0, 0))]);
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
        let f = [(key(1, 1), counters(1, 10, 0, 0)), (key(2, 2), counters(1, 10, 0, 0)), (key(3, 3), counters(1, 10, 0, 0))];
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
        fn destination(&self, key: &FlowKey) -> DestKey {
            let destination = if self.0.get() { "named.example".into() } else { "10.0.0.9".into() };
            DestKey { destination, country: String::new(), asn: key.remote_ip[15].into() }
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
        assert!(a.clients[&MAC].destinations.entries.is_empty(), "held back for a poll");
        assert_eq!(a.clients[&MAC].totals.bytes, [200, 60], "client totals never wait");
        namer.0.set(true);
        a.update(&Arc::new(snap(&[(key(9, 443), counters(5, 900, 2, 120))])), 105, &PARAMS, &namer);
        let d = &a.clients[&MAC].destinations;
        assert_eq!(d.entries.len(), 1);
        let (k, e) = d.entries.iter().next().unwrap();
        assert_eq!(k.destination, "named.example");
        assert_eq!(e.exported, Tally { packets: [5, 2], bytes: [900, 120] });
    }

    #[test]
    fn a_flow_waits_at_most_name_wait() {
        let mut a = Accounting::default();
        let namer = LateName(std::cell::Cell::new(false));
        a.update(&Arc::new(snap(&[(key(9, 22), counters(1, 100, 0, 0))])), 100, &PARAMS, &namer);
        a.update(&Arc::new(snap(&[(key(9, 22), counters(2, 150, 0, 0))])), 101, &PARAMS, &namer);
        assert!(a.clients[&MAC].destinations.entries.is_empty(), "still within name_wait");
        a.update(&Arc::new(snap(&[(key(9, 22), counters(3, 200, 0, 0))])), 102, &PARAMS, &namer);
        let d = &a.clients[&MAC].destinations;
        assert_eq!(d.entries.values().map(|e| e.exported.bytes[0]).sum::<u64>(), 200);
    }

    #[test]
    fn state_round_trips_through_json() {
        let mut a = Accounting::default();
        update(&mut a, &snap(&[(key(1, 53), counters(2, 200, 1, 100))]), 100, &PARAMS);
        let text = serde_json::to_string(&a).unwrap();
        let mut b: Accounting = serde_json::from_str(&text).unwrap();
        // After a restart the same kernel values add nothing; new ones add only the delta.
        update(&mut b, &snap(&[(key(1, 53), counters(3, 300, 1, 100))]), 105, &PARAMS);
        let r = b.clients[&MAC].remotes.entries.get(&RemoteId::of(&key(1, 53))).unwrap();
        assert_eq!(r.exported, Tally { packets: [3, 1], bytes: [300, 100] });
        assert_eq!(b.clients[&MAC].totals, Tally { packets: [3, 1], bytes: [300, 100] });
    }
}
