//! The top-N of one client's series of one kind: which keys get a series of their own, what
//! each carried, and `other` for the rest, bounded per client and across all clients.

use std::hash::Hash;

use super::tally::Tally;
use crate::types::FastMap;

/// One key's place in a [`Ranked`] set. 12 bytes: a client can have thousands of keys, and only
/// its top few carry a series, so the value of a series lives apart (see [`Ranked::values`]).
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Recent activity in bytes, halving every `Params::score_half_life_secs`: what "top"
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

/// One key as the state file keeps it: its series and what ranks it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Kept {
    pub(super) series: Series,
    pub(super) score: f32,
    /// Unix seconds of the last poll that saw it carry traffic.
    pub(super) last_active: u64,
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
    pub(super) fn decay(&mut self, factor: f32) {
        if factor != 1.0 {
            self.entries.values_mut().for_each(|e| e.score *= factor);
        }
    }

    /// Records that `key` carried `bytes` in this poll; true if the key is new to the set.
    pub(super) fn touch(&mut self, key: K, bytes: u64, now: u64) -> bool {
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
    pub(super) fn choose_top(&mut self, n: usize) {
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
    pub(super) fn credit(&mut self, key: &K, delta: &Tally) {
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
    pub(super) fn expire(&mut self, now: u64, expiry: u64, mut forgotten: impl FnMut(&K)) {
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

    /// Forgets `key`: its series (if it had one) ends, as when it expires.
    fn forget(&mut self, key: &K) -> bool {
        let Some(e) = self.entries.remove(key) else { return false };
        if e.slot() != NO_SLOT {
            self.values[e.slot() as usize] = Tally::default();
            self.free.push(e.slot());
        }
        true
    }

    /// The keys without a series, least worth keeping first: those that never had one (no
    /// value to continue), then by activity.
    fn forgettable(&self) -> impl Iterator<Item = (Forgettable, K)> + '_ {
        self.entries
            .iter()
            .filter(|(_, e)| !e.in_top())
            .map(|(k, e)| (Forgettable { had_series: e.slot() != NO_SLOT, score: e.score }, *k))
    }

    fn value(&self, entry: &Entry) -> Tally {
        self.values.get(entry.slot() as usize).copied().unwrap_or_default()
    }

    fn series_of(&self, entry: &Entry) -> Series {
        Series { exported: self.value(entry), in_top: entry.in_top() }
    }

    /// Keys with a series of their own, with its value.
    pub fn series(&self) -> impl Iterator<Item = (&K, Tally)> {
        self.entries.iter().filter(|(_, e)| e.in_top()).map(|(k, e)| (k, self.value(e)))
    }

    /// One key's series, if the key is tracked.
    pub fn get(&self, key: &K) -> Option<Series> {
        self.entries.get(key).map(|e| self.series_of(e))
    }

    /// Keys tracked, with or without a series (retiring a client releases its destinations).
    pub(super) fn keys(&self) -> impl Iterator<Item = &K> {
        self.entries.keys()
    }

    /// Every tracked key as the state file keeps it.
    pub(super) fn kept(&self) -> impl Iterator<Item = (&K, Kept)> {
        self.entries.iter().map(|(k, e)| {
            let last_active = u64::from(e.last_active);
            (k, Kept { series: self.series_of(e), score: e.score, last_active })
        })
    }

    /// A set back from the state file, its keys as [`Ranked::kept`] gave them. A key that has
    /// or had a series gets a slot for its value.
    pub(super) fn restored(other: Tally, keys: impl IntoIterator<Item = (K, Kept)>) -> Ranked<K> {
        let mut set = Ranked { other, ..Ranked::default() };
        for (key, kept) in keys {
            let Series { exported, in_top } = kept.series;
            let mut entry = Entry::new(kept.score, unix_u32(kept.last_active), in_top);
            if in_top || !exported.is_zero() {
                entry.set_slot(set.values.len() as u32);
                set.values.push(exported);
            }
            set.entries.insert(key, entry);
        }
        set
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

/// Takes series away from the least active keys, across all clients, until at most `budget`
/// keys have one: the global bound on series whatever the number of clients.
pub(super) fn enforce_budget<'a, K: 'a>(
    sets: impl Iterator<Item = &'a mut Ranked<K>>,
    budget: usize,
) {
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

/// What decides which keys go first when there are too many: see [`Ranked::forgettable`].
#[derive(Debug, Clone, Copy)]
struct Forgettable {
    had_series: bool,
    score: f32,
}

impl Forgettable {
    fn order(&self, other: &Forgettable) -> std::cmp::Ordering {
        self.had_series.cmp(&other.had_series).then(self.score.total_cmp(&other.score))
    }
}

/// Keeps at most `per_client` keys in each set and `total` over all of them by forgetting
/// keys without a series, least worth keeping first ([`Ranked::forgettable`]); `forgotten`
/// sees each. Keys with a series are never forgotten here: the bounds are validated to leave
/// room for every client's top and the series budget. Returns how many were forgotten.
pub(super) fn forget_least_active<'a, K: Copy + Eq + Hash + Ord + 'a>(
    sets: impl Iterator<Item = &'a mut Ranked<K>>,
    per_client: usize,
    total: usize,
    mut forgotten: impl FnMut(&K),
) -> u64 {
    let mut sets: Vec<&mut Ranked<K>> = sets.collect();
    let mut count = 0;
    for i in 0..sets.len() {
        let excess = sets[i].len().saturating_sub(per_client);
        count += forget_excess(&mut sets, Some(i), excess, &mut forgotten);
    }
    let excess = sets.iter().map(|s| s.len()).sum::<usize>().saturating_sub(total);
    count + forget_excess(&mut sets, None, excess, &mut forgotten)
}

/// Forgets the `excess` keys least worth keeping of set `only` (all sets: `None`).
fn forget_excess<K: Copy + Eq + Hash + Ord>(
    sets: &mut [&mut Ranked<K>],
    only: Option<usize>,
    excess: usize,
    forgotten: &mut impl FnMut(&K),
) -> u64 {
    if excess == 0 {
        return 0;
    }
    let mut candidates: Vec<(Forgettable, u32, K)> = sets
        .iter()
        .enumerate()
        .filter(|(i, _)| only.is_none_or(|o| o == *i))
        .flat_map(|(i, set)| set.forgettable().map(move |(f, k)| (f, i as u32, k)))
        .collect();
    let excess = excess.min(candidates.len());
    if excess == 0 {
        return 0;
    }
    candidates.select_nth_unstable_by(excess - 1, |a, b| {
        a.0.order(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2))
    });
    let mut count = 0;
    for (_, set, key) in &candidates[..excess] {
        if sets[*set as usize].forget(key) {
            forgotten(key);
            count += 1;
        }
    }
    count
}
