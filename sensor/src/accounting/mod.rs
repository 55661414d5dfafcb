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
    hash::{BuildHasher as _, Hash},
    sync::Arc,
};

use hashbrown::HashTable;
use sensor_common::{Counters, Direction, FlowKey};
use serde::{Deserialize, Serialize};

use crate::{
    kernel::collector::Snapshot,
    types::{FastMap, Mac},
};

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
        let grew =
            (0..2).all(|d| self.packets[d] >= prev.packets[d] && self.bytes[d] >= prev.bytes[d]);
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DestKey {
    pub destination: String,
    pub country: String,
    /// 0 when unknown.
    pub asn: u32,
}

/// One key's place in a [`Ranked`] set. 12 bytes: a client can have thousands of keys, and only
/// its top few carry a series, so the value of a series lives apart (see [`Ranked::values`]).
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Recent activity in bytes, halving every [`Params::score_half_life_secs`]: what "top"
    /// ranks by, so that a remote that was busy last week does not hold a series forever.
    score: f32,
    /// Unix seconds (fits until 2106) of the last poll that saw it carry traffic.
    last_active: u32,
    /// Where its series' value is in [`Ranked::values`] (low 31 bits; [`NO_SLOT`] before it
    /// first had a series) and whether it has a series of its own now (top bit).
    place: u32,
}

const NO_SLOT: u32 = 0x7fff_ffff;
const IN_TOP: u32 = 0x8000_0000;

impl Entry {
    fn new(score: f32, last_active: u32, in_top: bool) -> Entry {
        let mut e = Entry { score, last_active, place: NO_SLOT };
        e.set_in_top(in_top);
        e
    }

    fn in_top(&self) -> bool {
        self.place & IN_TOP != 0
    }

    fn set_in_top(&mut self, in_top: bool) {
        self.place = if in_top { self.place | IN_TOP } else { self.place & !IN_TOP };
    }

    fn slot(&self) -> u32 {
        self.place & NO_SLOT
    }

    fn set_slot(&mut self, slot: u32) {
        self.place = (self.place & IN_TOP) | (slot & NO_SLOT);
    }
}

/// What a key's series holds, for readers of a [`Ranked`] set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Series {
    /// The value of this key's series: what it carried while it had a series.
    pub exported: Tally,
    /// Has a series of its own right now.
    pub in_top: bool,
}

/// One client's series of one kind (remotes, destinations): its most active keys have a
/// series of their own, the others' traffic is summed into `other`. A key that loses its series
/// keeps its value in memory, so that if it wins one back the series continues where it was.
#[derive(Debug, Clone)]
pub struct Ranked<K> {
    entries: FastMap<K, Entry>,
    /// Values of the keys that have had a series, by [`Entry::slot`]; freed slots are zero.
    values: Vec<Tally>,
    free: Vec<u32>,
    pub other: Tally,
}

impl<K> Default for Ranked<K> {
    fn default() -> Self {
        Ranked {
            entries: FastMap::default(),
            values: Vec::new(),
            free: Vec::new(),
            other: Tally::default(),
        }
    }
}

impl<K: Copy + Eq + Hash + Ord> Ranked<K> {
    /// Ages every key's activity (once per poll, before [`Ranked::touch`]).
    fn decay(&mut self, factor: f32) {
        if factor != 1.0 {
            self.entries.values_mut().for_each(|e| e.score *= factor);
        }
    }

    /// Records that `key` carried `bytes` in this poll; true if the key is new to the set.
    fn touch(&mut self, key: K, bytes: u64, now: u64) -> bool {
        let mut new = false;
        let entry = self.entries.entry(key).or_insert_with(|| {
            new = true;
            Entry::new(0.0, 0, false)
        });
        entry.score += bytes as f32;
        entry.last_active = unix_u32(now);
        new
    }

    /// The `n` most active keys get a series; on equal activity the incumbent keeps it.
    fn choose_top(&mut self, n: usize) {
        if self.entries.len() <= n {
            self.entries.values_mut().for_each(|e| e.set_in_top(true));
            return;
        }
        // A selection, not a sort: linear in the keys (a client may have thousands).
        let mut ranked: Vec<(u32, K, f32, bool)> = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, (k, e))| (i as u32, *k, e.score, e.in_top()))
            .collect();
        let mut top = vec![false; ranked.len()];
        if n > 0 {
            ranked.select_nth_unstable_by(n - 1, |a, b| {
                b.2.total_cmp(&a.2).then(b.3.cmp(&a.3)).then(a.1.cmp(&b.1))
            });
            for r in &ranked[..n] {
                top[r.0 as usize] = true;
            }
        }
        // The map is unchanged since `ranked` was made, so it iterates in the same order.
        for (entry, in_top) in self.entries.values_mut().zip(top) {
            entry.set_in_top(in_top);
        }
    }

    /// Adds one flow's gain in this poll to exactly one series: its key's own, or `other`.
    fn credit(&mut self, key: &K, delta: &Tally) {
        let Some(entry) = self.entries.get_mut(key).filter(|e| e.in_top()) else {
            self.other.add(delta);
            return;
        };
        if entry.slot() == NO_SLOT {
            entry.set_slot(match self.free.pop() {
                Some(slot) => slot,
                None => {
                    self.values.push(Tally::default());
                    (self.values.len() - 1) as u32
                }
            });
        }
        self.values[entry.slot() as usize].add(delta);
    }

    /// Forgets keys idle for `expiry` seconds: their series (if any) ends, memory stays bounded.
    /// `forgotten` sees each key dropped.
    fn expire(&mut self, now: u64, expiry: u64, mut forgotten: impl FnMut(&K)) {
        let (values, free) = (&mut self.values, &mut self.free);
        self.entries.retain(|k, e| {
            let keep = now.saturating_sub(u64::from(e.last_active)) < expiry;
            if !keep {
                if e.slot() != NO_SLOT {
                    values[e.slot() as usize] = Tally::default();
                    free.push(e.slot());
                }
                forgotten(k);
            }
            keep
        });
    }

    fn value(&self, entry: &Entry) -> Tally {
        self.values.get(entry.slot() as usize).copied().unwrap_or_default()
    }

    /// Keys with a series of their own, with its value.
    pub fn series(&self) -> impl Iterator<Item = (&K, Tally)> {
        self.entries.iter().filter(|(_, e)| e.in_top()).map(|(k, e)| (k, self.value(e)))
    }

    /// One key's series, if the key is tracked.
    pub fn get(&self, key: &K) -> Option<Series> {
        self.entries.get(key).map(|e| Series { exported: self.value(e), in_top: e.in_top() })
    }

    /// Keys tracked, with or without a series.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Keys tracked without a series of their own (their traffic goes to `other`).
    pub fn in_other(&self) -> usize {
        self.entries.values().filter(|e| !e.in_top()).count()
    }

    /// Everything the tracked keys' series and `other` carried.
    pub fn carried(&self) -> Tally {
        let mut sum = self.other;
        self.values.iter().for_each(|v| sum.add(v));
        sum
    }
}

fn unix_u32(secs: u64) -> u32 {
    u32::try_from(secs).unwrap_or(u32::MAX)
}

/// A key's entry in the state file (the layout of earlier versions, so their files still load).
#[derive(Serialize, Deserialize)]
struct EntryFile {
    exported: Tally,
    in_top: bool,
    score: f64,
    last_active: u64,
}

/// A [`Ranked`] set in the state file, its keys written as `name` gives them.
struct RankedFile<'a, K, F> {
    set: &'a Ranked<K>,
    name: F,
}

impl<'a, K, N: Serialize + 'a, F: Fn(&'a K) -> &'a N> Serialize for RankedFile<'a, K, F>
where
    K: Copy + Eq + Hash + Ord,
{
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let set = self.set;
        let entries = Pairs(|| {
            set.entries.iter().map(|(k, e)| {
                let file = EntryFile {
                    exported: set.value(e),
                    in_top: e.in_top(),
                    score: f64::from(e.score),
                    last_active: u64::from(e.last_active),
                };
                ((self.name)(k), file)
            })
        });
        let mut st = s.serialize_struct("Ranked", 2)?;
        st.serialize_field("entries", &entries)?;
        st.serialize_field("other", &set.other)?;
        st.end()
    }
}

/// Serializes what an iterator yields as a sequence, without collecting it first.
struct Pairs<F>(F);

impl<I: Iterator<Item: Serialize>, F: Fn() -> I> Serialize for Pairs<F> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq((self.0)())
    }
}

impl<K: Copy + Eq + Hash + Ord + Serialize> Serialize for Ranked<K> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        fn same<K>(k: &K) -> &K {
            k
        }
        RankedFile { set: self, name: same }.serialize(s)
    }
}

/// A [`Ranked`] set as read from the state file, keys as written.
#[derive(Deserialize)]
struct RankedIn<N> {
    entries: Vec<(N, EntryFile)>,
    other: Tally,
}

impl<N> RankedIn<N> {
    fn into_ranked<K: Copy + Eq + Hash + Ord>(self, mut key: impl FnMut(N) -> K) -> Ranked<K> {
        let mut set = Ranked { other: self.other, ..Ranked::default() };
        for (name, file) in self.entries {
            let mut entry = Entry::new(file.score as f32, unix_u32(file.last_active), file.in_top);
            if file.in_top || !file.exported.is_zero() {
                entry.set_slot(set.values.len() as u32);
                set.values.push(file.exported);
            }
            set.entries.insert(key(name), entry);
        }
        set
    }
}

impl<'de, K: Copy + Eq + Hash + Ord + Deserialize<'de>> Deserialize<'de> for Ranked<K> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(RankedIn::<K>::deserialize(d)?.into_ranked(|k| k))
    }
}

/// Takes series away from the least active keys, across all clients, until at most `budget`
/// keys have one: the global bound on series whatever the number of clients.
fn enforce_budget<'a, K: 'a>(sets: impl Iterator<Item = &'a mut Ranked<K>>, budget: usize) {
    let mut holders: Vec<&mut Entry> =
        sets.flat_map(|set| set.entries.values_mut()).filter(|e| e.in_top()).collect();
    if holders.len() <= budget {
        return;
    }
    let excess = holders.len() - budget;
    holders.select_nth_unstable_by(excess - 1, |a, b| a.score.total_cmp(&b.score));
    for entry in holders.into_iter().take(excess) {
        entry.set_in_top(false);
    }
}

/// A destination as a client's table holds it: an index into [`DestNames`], 4 bytes instead of
/// a name, a country and an ASN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DestId(u32);

/// Every destination any client's table holds, once, with the number of tables holding it:
/// clients and flows share destinations (a domain per service), and names are the bulk of them.
#[derive(Debug, Clone, Default)]
struct DestNames {
    /// Ids by key, hashed through `keys`: each key is stored once (a full map of flows with
    /// a destination each held every key twice).
    index: HashTable<DestId>,
    hasher: foldhash::fast::RandomState,
    /// By id; a free id holds an empty key.
    keys: Vec<DestKey>,
    holders: Vec<u32>,
    free: Vec<DestId>,
}

impl DestNames {
    /// The id of `key`, copied in if new.
    fn id(&mut self, key: &DestKey) -> DestId {
        let hash = self.hasher.hash_one(key);
        let keys = &self.keys;
        if let Some(&id) = self.index.find(hash, |id| keys[id.0 as usize] == *key) {
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.keys[id.0 as usize] = key.clone();
                id
            }
            None => {
                self.keys.push(key.clone());
                self.holders.push(0);
                DestId((self.keys.len() - 1) as u32)
            }
        };
        let (keys, hasher) = (&self.keys, &self.hasher);
        self.index.insert_unique(hash, id, |id| hasher.hash_one(&keys[id.0 as usize]));
        id
    }

    fn hold(&mut self, id: DestId) {
        self.holders[id.0 as usize] += 1;
    }

    /// A table let go of `id`; the last one frees it.
    fn release(&mut self, id: DestId) {
        // Freed once, on its last holder's release (never again while free).
        let Some(holders) = self.holders.get_mut(id.0 as usize).filter(|h| **h > 0) else { return };
        *holders -= 1;
        if *holders == 0 {
            let key = std::mem::take(&mut self.keys[id.0 as usize]);
            if let Ok(entry) = self.index.find_entry(self.hasher.hash_one(&key), |&x| x == id) {
                entry.remove();
            }
            self.free.push(id);
        }
    }

    fn key(&self, id: DestId) -> &DestKey {
        &self.keys[id.0 as usize]
    }
}

#[derive(Debug, Clone, Default)]
pub struct ClientAccount {
    /// Client totals, from the kernel's per-client totals (exact even when flows are evicted).
    pub totals: Tally,
    /// Per remote endpoint (IP, protocol, port).
    pub remotes: Ranked<RemoteId>,
    /// Per named destination ([`Accounting::destination`] names them).
    pub destinations: Ranked<DestId>,
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

/// One flow's gain in the last update ([`Accounting::gained`] pairs it with its key).
#[derive(Debug, Clone, Copy)]
pub struct Gain {
    bytes: [u64; 2],
    /// Packets per direction since the last poll: a u32 holds billions (40-byte records, for
    /// every flow that grew).
    packets: [u32; 2],
    /// The flow's place in the last read (its key is there: 4 bytes instead of 48).
    flow: u32,
    client: u32,
    destination: DestId,
}

impl Gain {
    fn new(delta: &Tally, flow: u32, client: u32, destination: DestId) -> Gain {
        let packets = delta.packets.map(|p| u32::try_from(p).unwrap_or(u32::MAX));
        Gain { bytes: delta.bytes, packets, flow, client, destination }
    }

    /// What the flow carried since the last poll.
    pub fn delta(&self) -> Tally {
        Tally { bytes: self.bytes, packets: self.packets.map(u64::from) }
    }

    /// The destination it counts into ([`Accounting::destination`] names it).
    pub fn destination(&self) -> DestId {
        self.destination
    }
}

/// Everything exported, plus the last kernel reading it was computed from.
#[derive(Debug, Clone, Default)]
pub struct Accounting {
    pub clients: BTreeMap<Mac, ClientAccount>,
    /// Flows that left the kernel map between two polls (LRU evictions, mostly).
    pub flow_evictions: u64,
    last: LastRead,
    clients_last: HashMap<Mac, Tally>,
    last_update: u64,
    destinations: DestNames,
    /// New flows held back for their name (see [`Namer::awaits_name`]), with the Unix second
    /// they were first held.
    waiting: FastMap<FlowKey, u64>,
    /// Every flow that gained traffic in the last update, with its gain (the policy's input).
    gains: Vec<Gain>,
}

/// A client's account in the state file, its destinations by name.
#[derive(Serialize)]
struct ClientFile<'a, D: Serialize> {
    totals: &'a Tally,
    remotes: &'a Ranked<RemoteId>,
    destinations: D,
    last_seen: u64,
}

#[derive(Deserialize)]
struct ClientIn {
    totals: Tally,
    remotes: Ranked<RemoteId>,
    destinations: RankedIn<DestKey>,
    last_seen: u64,
}

/// The accounting in the state file. `flows_last` is stored as (flow key, counters) pairs, the
/// flows held back left out.
#[derive(Deserialize)]
struct AccountingIn {
    #[serde(deserialize_with = "as_pairs::deserialize")]
    clients: Vec<(Mac, ClientIn)>,
    flow_evictions: u64,
    flows_last: LastRead,
    #[serde(deserialize_with = "as_pairs::deserialize")]
    clients_last: HashMap<Mac, Tally>,
    last_update: u64,
}

impl Serialize for Accounting {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let names = &self.destinations;
        let clients = Pairs(|| {
            self.clients.iter().map(|(mac, a)| {
                let destinations =
                    RankedFile { set: &a.destinations, name: |id: &DestId| names.key(*id) };
                (
                    mac,
                    ClientFile {
                        totals: &a.totals,
                        remotes: &a.remotes,
                        destinations,
                        last_seen: a.last_seen,
                    },
                )
            })
        });
        let mut st = s.serialize_struct("Accounting", 5)?;
        st.serialize_field("clients", &clients)?;
        st.serialize_field("flow_evictions", &self.flow_evictions)?;
        st.serialize_field("flows_last", &self.last)?;
        st.serialize_field("clients_last", &Pairs(|| self.clients_last.iter()))?;
        st.serialize_field("last_update", &self.last_update)?;
        st.end()
    }
}

impl<'de> Deserialize<'de> for Accounting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let file = AccountingIn::deserialize(d)?;
        let mut names = DestNames::default();
        let clients = file
            .clients
            .into_iter()
            .map(|(mac, c)| {
                let destinations = c.destinations.into_ranked(|key| {
                    let id = names.id(&key);
                    names.hold(id);
                    id
                });
                (
                    mac,
                    ClientAccount {
                        totals: c.totals,
                        remotes: c.remotes,
                        destinations,
                        last_seen: c.last_seen,
                    },
                )
            })
            .collect();
        Ok(Accounting {
            clients,
            flow_evictions: file.flow_evictions,
            last: file.flows_last,
            clients_last: file.clients_last,
            last_update: file.last_update,
            destinations: names,
            ..Accounting::default()
        })
    }
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
            .map(|(k, t)| {
                (
                    k.key(),
                    Counters {
                        packets: t.packets,
                        bytes: t.bytes,
                        first_seen_ns: 0,
                        last_seen_ns: 0,
                    },
                )
            })
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
    /// The destination a flow counts into, written into `out` (reusing its strings: the
    /// accounting asks for every flow that grew, every poll, and only keeps the ones it has
    /// not seen).
    fn destination_into(&self, key: &FlowKey, out: &mut DestKey);

    /// Whether a new flow should wait (at most [`Params::name_wait_secs`]) before it is
    /// attributed, because its own name is likely on its way: a TCP flow whose TLS ClientHello
    /// or HTTP request has not been seen yet (a poll can fall between its SYN and its data).
    fn awaits_name(&self, _key: &FlowKey) -> bool {
        false
    }
}

impl<F: Fn(&FlowKey) -> DestKey> Namer for F {
    fn destination_into(&self, key: &FlowKey, out: &mut DestKey) {
        *out = self(key);
    }
}

impl Accounting {
    /// Folds one snapshot in. `now` is Unix seconds; `destination` names a flow's remote end.
    /// Returns the clients retired in this poll (unseen for `client_idle_expiry_secs`): the
    /// caller frees their kernel slots (totals and flows) so that they never fill up with
    /// departed devices (a retired client seen again starts from zero, as a new series).
    /// `snap` is kept as the last read until the next update (shared, not copied).
    pub fn update(
        &mut self,
        snap: &Arc<Snapshot>,
        now: u64,
        params: &Params,
        namer: &dyn Namer,
    ) -> Vec<Mac> {
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

        let elapsed = now.saturating_sub(self.last_update) as f64;
        let decay = if self.last_update == 0 {
            1.0
        } else {
            0.5f64.powf(elapsed / params.score_half_life_secs) as f32
        };
        self.last_update = now;
        for account in self.clients.values_mut() {
            account.remotes.decay(decay);
            account.destinations.decay(decay);
        }

        // Every flow read: its gain since the last read adds to its client's remote's and
        // destination's activity, and is kept until the top-N is chosen below. Both reads are
        // sorted by key, so they are walked side by side: no lookup per flow, and no copy of
        // the last read.
        let snap = if snap.is_sorted() {
            Arc::clone(snap)
        } else {
            Arc::new(Snapshot::sorted(snap.flows.clone()))
        };
        // Accounts by MAC through a hash index: one lookup per flow instead of a tree descent.
        let (account_of, mut accounts): (FastMap<Mac, u32>, Vec<&mut ClientAccount>) = self
            .clients
            .iter_mut()
            .enumerate()
            .map(|(i, (mac, account))| ((*mac, i as u32), account))
            .unzip();
        let last = &self.last;
        let gone = |k: &FlowKey| !last.held.contains(k) && !last.retired.contains(&k.client_mac);
        let mut prev = last.snap.flows.iter().peekable();
        let (mut evicted, mut waiting, mut held) = (0u64, FastMap::default(), HashSet::new());
        self.gains.clear();
        let mut scratch = DestKey::default();
        for (i, (key, counters)) in snap.flows.iter().enumerate() {
            while let Some((k, _)) = prev.next_if(|(k, _)| k < key) {
                evicted += u64::from(gone(k));
            }
            let before = prev
                .next_if(|(k, _)| k == key)
                .filter(|(k, _)| !last.held.contains(k))
                .map(|(_, c)| Tally::of(c));
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
            if let Some(&client) = account_of.get(&key.client_mac) {
                let account = &mut accounts[client as usize];
                let bytes = delta.total_bytes();
                account.remotes.touch(RemoteId::of(key), bytes, now);
                namer.destination_into(key, &mut scratch);
                let destination = self.destinations.id(&scratch);
                if account.destinations.touch(destination, bytes, now) {
                    self.destinations.hold(destination);
                }
                self.gains.push(Gain::new(&delta, i as u32, client, destination));
            }
        }
        // Flows read last time but not now left the map (LRU evictions, mostly).
        evicted += prev.filter(|(k, _)| gone(k)).count() as u64;
        self.flow_evictions += evicted;
        self.waiting = waiting;
        self.last = LastRead { snap, held, retired: HashSet::new() };

        for account in accounts.iter_mut() {
            account.remotes.choose_top(params.top_remotes);
            account.destinations.choose_top(params.top_destinations);
        }
        enforce_budget(accounts.iter_mut().map(|a| &mut a.remotes), params.series_budget);
        enforce_budget(accounts.iter_mut().map(|a| &mut a.destinations), params.series_budget);
        // Each gain to exactly one series: its key's own, or its client's `other`.
        let flows = &self.last.snap.flows;
        for gain in &self.gains {
            let account = &mut accounts[gain.client as usize];
            let delta = gain.delta();
            account.remotes.credit(&RemoteId::of(&flows[gain.flow as usize].0), &delta);
            account.destinations.credit(&gain.destination, &delta);
        }
        let names = &mut self.destinations;
        for account in accounts.iter_mut() {
            account.remotes.expire(now, params.remote_idle_expiry_secs, |_| {});
            account
                .destinations
                .expire(now, params.destination_idle_expiry_secs, |id| names.release(*id));
        }
        drop(accounts);

        let retired: Vec<Mac> = self
            .clients
            .iter()
            .filter(|(_, a)| now.saturating_sub(a.last_seen) >= params.client_idle_expiry_secs)
            .map(|(mac, _)| *mac)
            .collect();
        for mac in &retired {
            if let Some(account) = self.clients.remove(mac) {
                account.destinations.entries.keys().for_each(|id| self.destinations.release(*id));
            }
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

    /// The flows that grew in the last update, with their gains.
    pub fn gained(&self) -> impl Iterator<Item = (&FlowKey, &Gain)> {
        self.gains.iter().filter_map(|g| Some((&self.last.snap.flows.get(g.flow as usize)?.0, g)))
    }

    /// The destination a client's destination series is for.
    pub fn destination(&self, id: DestId) -> &DestKey {
        self.destinations.key(id)
    }

    /// Distinct destinations the clients' tables hold.
    pub fn destinations_tracked(&self) -> usize {
        self.destinations.index.len()
    }
}

/// Reads maps with non-string keys from JSON arrays of pairs (`Pairs` writes them).
mod as_pairs {
    use serde::{Deserialize, Deserializer};

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

    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
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
pub(crate) mod tests {
    use super::*;

    /// What the tests of other modules start from too.
    pub(crate) const PARAMS: Params = Params {
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
        let mut k =
            FlowKey { client_mac: MAC, protocol: 17, remote_port: port, ..FlowKey::default() };
        k.client_ip[15] = 10;
        k.remote_ip[15] = remote;
        k
    }

    /// Destinations named by the remote's last byte: remotes 1 and 2 are one domain.
    fn by_domain(key: &FlowKey) -> DestKey {
        let destination = if key.remote_ip[15] <= 2 {
            "one.example".to_string()
        } else {
            format!("r{}.example", key.remote_ip[15])
        };
        DestKey { destination, country: "ZZ".into(), asn: 64_500 }
    }

    fn counters(up_pk: u64, up_b: u64, down_pk: u64, down_b: u64) -> Counters {
        Counters {
            packets: [up_pk, down_pk],
            bytes: [up_b, down_b],
            first_seen_ns: 1,
            last_seen_ns: 2,
        }
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

    fn remote(a: &Accounting, r: u8, port: u16) -> Option<Series> {
        a.clients[&MAC].remotes.get(&RemoteId::of(&key(r, port)))
    }

    fn exported_bytes<K: Copy + Eq + Hash + Ord>(set: &Ranked<K>) -> u64 {
        set.carried().bytes[0]
    }

    /// A client's destination series by name.
    fn destination(a: &Accounting, name: &str) -> Option<Series> {
        let d = &a.clients[&MAC].destinations;
        d.entries.keys().find(|id| a.destination(**id).destination == name).and_then(|id| d.get(id))
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
            a.destination(
                *d.entries.keys().min_by_key(|id| &a.destination(**id).destination).unwrap()
            )
            .asn,
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
        let mut f =
            vec![(key(1, 1), counters(1, 1000, 0, 0)), (key(2, 2), counters(1, 1000, 0, 0))];
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

    #[test]
    fn state_round_trips_through_json() {
        let mut a = Accounting::default();
        update(&mut a, &snap(&[(key(1, 53), counters(2, 200, 1, 100))]), 100, &PARAMS);
        let text = serde_json::to_string(&a).unwrap();
        let mut b: Accounting = serde_json::from_str(&text).unwrap();
        // After a restart the same kernel values add nothing; new ones add only the delta.
        update(&mut b, &snap(&[(key(1, 53), counters(3, 300, 1, 100))]), 105, &PARAMS);
        let r = b.clients[&MAC].remotes.get(&RemoteId::of(&key(1, 53))).unwrap();
        assert_eq!(r.exported, Tally { packets: [3, 1], bytes: [300, 100] });
        assert_eq!(b.clients[&MAC].totals, Tally { packets: [3, 1], bytes: [300, 100] });
    }
}
