//! Turns successive kernel snapshots into the counters the agent exports.
//!
//! The kernel maps hold cumulative values, but flows come and go (LRU eviction, a map
//! recreated after a reboot) and only the top remotes of a client get a series of their own.
//! So the agent works in deltas: each poll, what every flow and client gained since the last
//! poll is added to exactly one exported counter. Exported counters therefore only ever grow,
//! whatever is evicted or whichever remotes enter or leave a client's top-N, and the sum over
//! a client's remote series (including `other`) equals what its flows were seen to carry.

mod dest_names;
#[cfg(test)]
pub(crate) mod fixtures;
mod kernel_counters;
mod persist;
mod ranked;
mod tally;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use sensor_common::{Counters, FlowKey};
use serde::{Deserialize, Serialize};

use dest_names::DestNames;
pub use dest_names::{DestId, DestKey};
pub use kernel_counters::KernelCounters;
pub use ranked::{Ranked, Series};
use ranked::{enforce_budget, forget_least_active};
pub use tally::{MAX_PLAUSIBLE, Tally};

use crate::{
    kernel::{
        collector::{Snapshot, flow_order},
        loader::KeptMaps,
    },
    types::{FastMap, Mac},
};

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
    /// Remotes, and destinations, remembered per client, and over all clients: beyond them the
    /// least active keys without a series are forgotten (their traffic is in `other`).
    pub tracked_per_client: usize,
    pub tracked_total: usize,
    /// Client slots in the kernel (0: unknown, no early retirement).
    pub client_slots: usize,
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
    /// The kernel's packet outcomes and naming events, as exported.
    pub kernel: KernelCounters,
    last: LastRead,
    clients_last: HashMap<Mac, Tally>,
    last_update: u64,
    destinations: DestNames,
    /// New flows held back for their name (see [`Namer::awaits_name`]), with the Unix second
    /// they were first held.
    waiting: FastMap<FlowKey, u64>,
    /// Every flow that gained traffic in the last update, with its gain (the policy's input).
    gains: Vec<Gain>,
    /// Remotes and destinations forgotten in the last update to stay within the tracking
    /// bounds ([`Params::tracked_total`]).
    forgotten: [u64; 2],
    /// Clients retired in the last update because slots were short and nothing answered them.
    retired_one_way: u64,
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
        self.kernel.update(&snap.stats, &snap.events);
        let slots_held = snap.clients.len();
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
            let order = flow_order(key);
            while let Some((k, _)) = prev.next_if(|(k, _)| flow_order(k) < order) {
                evicted += u64::from(gone(k));
            }
            let before = prev
                .next_if(|(k, _)| flow_order(k) == order)
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
        self.flow_evictions = self.flow_evictions.saturating_add(evicted);
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
        // Bounded whatever the traffic (a scan reaches a new remote with every packet).
        let per_client = params.tracked_per_client;
        self.forgotten = [
            forget_least_active(
                accounts.iter_mut().map(|a| &mut a.remotes),
                per_client,
                params.tracked_total,
                |_| {},
            ),
            forget_least_active(
                accounts.iter_mut().map(|a| &mut a.destinations),
                per_client,
                params.tracked_total,
                |id| names.release(*id),
            ),
        ];
        drop(accounts);

        // Kernel slots are few (`client_capacity`) and taken by any source MAC: when three
        // quarters are held, a client that never got a packet back (a spoofed or one-packet
        // MAC: nothing answers it) leaves as soon as a poll does not see it, so that a flood of
        // made-up MACs cannot keep real devices out for `client_idle_expiry`.
        let short = params.client_slots > 0 && slots_held * 4 >= params.client_slots * 3;
        let mut one_way = 0;
        let retired: Vec<Mac> = self
            .clients
            .iter()
            .filter(|(_, a)| {
                let idle = now.saturating_sub(a.last_seen);
                if idle >= params.client_idle_expiry_secs {
                    return true;
                }
                let spoofable = short && idle > 0 && a.totals.packets[1] == 0;
                one_way += u64::from(spoofable);
                spoofable
            })
            .map(|(mac, _)| *mac)
            .collect();
        self.retired_one_way = one_way;
        for mac in &retired {
            if let Some(account) = self.clients.remove(mac) {
                account.destinations.keys().for_each(|id| self.destinations.release(*id));
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

    /// The kernel's maps were made anew since the last read (a reboot, or pins removed; the
    /// event counters at every start): their next values are all new, not growth over the
    /// last read (which would lose what they counted up to it, and desynchronise a client's
    /// total from its series).
    pub fn kernel_maps_recreated(&mut self, maps: &KeptMaps) {
        if !maps.flows {
            self.last = LastRead::default();
            self.waiting.clear();
        }
        if !maps.clients {
            self.clients_last.clear();
        }
        self.kernel.maps_recreated(!maps.stats);
    }

    /// The flows that grew in the last update, with their gains.
    pub fn gained(&self) -> impl Iterator<Item = (&FlowKey, &Gain)> {
        self.gains.iter().filter_map(|g| Some((&self.last.snap.flows.get(g.flow as usize)?.0, g)))
    }

    /// The destination a client's destination series is for.
    pub fn destination(&self, id: DestId) -> &DestKey {
        self.destinations.key(id)
    }

    /// Remotes and destinations forgotten in the last update to stay within the tracking
    /// bounds (least active first; their traffic stays in `other`).
    pub fn forgotten(&self) -> [u64; 2] {
        self.forgotten
    }

    /// Of the clients the last update retired, those retired early: slots were short and no
    /// packet had ever gone to them (the rest had been idle for `client_idle_expiry`).
    pub fn retired_one_way(&self) -> u64 {
        self.retired_one_way
    }

    /// Remotes and destinations remembered over all clients.
    pub fn tracked(&self) -> [usize; 2] {
        self.clients
            .values()
            .fold([0, 0], |[r, d], a| [r + a.remotes.len(), d + a.destinations.len()])
    }

    /// Distinct destinations the clients' tables hold.
    pub fn destinations_tracked(&self) -> usize {
        self.destinations.len()
    }
}
