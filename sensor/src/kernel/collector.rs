//! Reads the kernel maps into a plain snapshot, summing the per-CPU values, and retires clients
//! from them.

use std::{
    collections::{HashMap, HashSet},
    os::fd::AsFd as _,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
};

use aya::{
    Ebpf,
    maps::{
        HashMap as BpfHashMap, IterableMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap,
        PerCpuValues, Queue,
    },
};
use sensor_common::{
    ClientKey, Counters, Direction, EVENT_STATS_LEN, EventKind, EventOutcome, FlowKey, FlowValue,
    STATS_LEN, Stat, names,
};
use tracing::info;

use super::{
    bpf_batch::{BatchError, BatchReader, Layout},
    error::KernelError,
};

/// How the hash maps (flows, client slots) are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMethod {
    /// `BPF_MAP_LOOKUP_BATCH`: a chunk of entries per syscall (Linux 5.6+).
    Batch,
    /// `get_next_key` + `lookup` per entry: works everywhere, about six times slower.
    Iterate,
}

/// The maps the agent reads, taken out of the loaded object.
pub struct KernelMaps {
    flows: PerCpuHashMap<MapData, FlowKey, FlowValue>,
    client_slots: BpfHashMap<MapData, ClientKey, u32>,
    client_totals: PerCpuArray<MapData, Counters>,
    free_slots: Queue<MapData, u32>,
    stats: PerCpuArray<MapData, u64>,
    event_stats: PerCpuArray<MapData, u64>,
    /// Set once a batch lookup was refused (old kernel): from then on, iterate.
    iterate: AtomicBool,
    /// Possible CPUs: per-CPU values come one per possible CPU.
    cpus: usize,
    /// Flows in the last read.
    flows_read: AtomicUsize,
    /// The flow map's `max_entries`.
    flow_capacity: usize,
}

/// One reading of the kernel maps, CPUs summed.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Every flow once, sorted by key (a list: the map holds up to millions; the accounting
    /// walks two successive reads side by side).
    pub flows: Vec<(FlowKey, Counters)>,
    pub clients: HashMap<[u8; 6], Counters>,
    /// `stats[direction][stat]`.
    pub stats: [[u64; Stat::COUNT]; 2],
    /// `events[kind][outcome]`: naming events in the kernel.
    pub events: [[u64; EventOutcome::COUNT]; EventKind::COUNT],
}

/// [`FlowKey`]'s own order (its fields in turn, arrays byte by byte) as integers: the same
/// order, without a `memcmp` call per address. A poll sorts a full map's read and walks it
/// beside the last one by this order; the byte-wise comparisons were most of that time.
#[inline]
pub fn flow_order(k: &FlowKey) -> (u128, u128, u64, u64) {
    let [m0, m1, m2, m3, m4, m5] = k.client_mac;
    let [p0, p1] = k.remote_port.to_be_bytes();
    let [x0, x1, x2, x3, x4, x5, x6] = k._pad;
    (
        u128::from_be_bytes(k.client_ip),
        u128::from_be_bytes(k.remote_ip),
        u64::from_be_bytes([m0, m1, m2, m3, m4, m5, p0, p1]),
        u64::from_be_bytes([k.protocol, x0, x1, x2, x3, x4, x5, x6]),
    )
}

/// `a` before `b` in [`FlowKey`]'s order (see [`flow_order`]).
#[inline]
pub fn flow_cmp(a: &FlowKey, b: &FlowKey) -> std::cmp::Ordering {
    flow_order(a).cmp(&flow_order(b))
}

impl Snapshot {
    /// A snapshot of these flows, sorted by key, each key once (the first kept).
    pub fn sorted(mut flows: Vec<(FlowKey, Counters)>) -> Snapshot {
        flows.sort_by(|a, b| flow_cmp(&a.0, &b.0));
        flows.dedup_by(|a, b| a.0 == b.0);
        Snapshot { flows, ..Snapshot::default() }
    }

    /// Whether the flows are sorted by key, each key once (what [`KernelMaps::read`] returns).
    pub fn is_sorted(&self) -> bool {
        self.flows.is_sorted_by(|a, b| flow_cmp(&a.0, &b.0).is_lt())
    }

    pub fn stat(&self, stat: Stat, dir: Direction) -> u64 {
        self.stats[dir.index()][stat as usize]
    }

    pub fn event(&self, kind: EventKind, outcome: EventOutcome) -> u64 {
        self.events[kind as usize][outcome as usize]
    }
}

fn sum<'a>(values: impl IntoIterator<Item = &'a Counters>) -> Counters {
    let mut total = Counters::default();
    for v in values {
        total.merge(v);
    }
    total
}

/// A map error that only says the key is not (or no longer) there: `get` reports it as
/// `KeyNotFound`, `remove` as the delete syscall's ENOENT.
fn absent(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

fn client_key(mac: &[u8; 6]) -> ClientKey {
    ClientKey { mac: *mac, _pad: [0; 2] }
}

impl KernelMaps {
    pub fn take(ebpf: &mut Ebpf) -> Result<KernelMaps, KernelError> {
        /// Takes map `map` out of the object as a `T`.
        fn take<T: TryFrom<Map, Error = MapError>>(
            ebpf: &mut Ebpf,
            map: &'static str,
        ) -> Result<T, KernelError> {
            let taken = ebpf.take_map(map).ok_or(KernelError::MissingMap { map })?;
            T::try_from(taken).map_err(|source| KernelError::OpenMap { map, source })
        }
        let cpus = aya::util::nr_cpus()
            .map_err(|(file, source)| KernelError::PossibleCpus { file, source })?;
        let flows: PerCpuHashMap<_, _, _> = take(ebpf, names::FLOWS)?;
        // Unknown (an old kernel's map info): the reads are sized by the last one alone.
        let flow_capacity =
            flows.map().info().map_or(usize::MAX, |info| info.max_entries() as usize);
        Ok(KernelMaps {
            iterate: AtomicBool::new(false),
            cpus,
            flows_read: AtomicUsize::new(0),
            flow_capacity,
            flows,
            client_slots: take(ebpf, names::CLIENT_SLOTS)?,
            client_totals: take(ebpf, names::CLIENT_TOTALS)?,
            free_slots: take(ebpf, names::FREE_SLOTS)?,
            stats: take(ebpf, names::STATS)?,
            event_stats: take(ebpf, names::EVENT_STATS)?,
        })
    }

    /// How the hash maps are read now: batch lookups unless the kernel refused them.
    pub fn read_method(&self) -> ReadMethod {
        if self.iterate.load(Ordering::Relaxed) { ReadMethod::Iterate } else { ReadMethod::Batch }
    }

    /// Forces a read method (tests and benchmarks compare them; batch falls back by itself).
    pub fn set_read_method(&self, method: ReadMethod) {
        self.iterate.store(method == ReadMethod::Iterate, Ordering::Relaxed);
    }

    /// Runs a batch read; on a kernel without batch lookups, remembers to iterate from now on
    /// and returns `None` so that the caller iterates.
    fn batch<T>(
        &self,
        map: &'static str,
        read: impl FnOnce() -> Result<T, BatchError>,
    ) -> Result<Option<T>, KernelError> {
        if self.read_method() == ReadMethod::Iterate {
            return Ok(None);
        }
        match read() {
            Ok(t) => Ok(Some(t)),
            Err(BatchError::Unsupported(e)) => {
                info!(
                    "batch map lookups unavailable ({e}): reading the maps entry by entry (slower on large flow maps)"
                );
                self.set_read_method(ReadMethod::Iterate);
                Ok(None)
            }
            Err(source) => Err(KernelError::BatchRead { map, source }),
        }
    }

    /// Every flow with its CPUs' counters summed, each passed once to `each`.
    pub fn for_each_flow(
        &self,
        mut each: impl FnMut(&FlowKey, Counters),
    ) -> Result<(), KernelError> {
        let reader = BatchReader::<FlowKey, FlowValue>::new(Layout::PerCpu { cpus: self.cpus });
        let fd = self.flows.map().fd().as_fd();
        let batched = self.batch("flow", || {
            reader.for_each(fd, |key, values| {
                let mut total = Counters::default();
                for v in values {
                    total.merge(&v.counters);
                }
                each(key, total);
            })
        })?;
        if batched.is_some() {
            return Ok(());
        }
        // Iteration restarts from the first key when its cursor is evicted meanwhile: pass
        // each key once.
        let mut seen = HashSet::new();
        for entry in self.flows.iter() {
            match entry {
                Ok((key, values)) => {
                    if seen.insert(key) {
                        each(&key, sum(values.iter().map(|v| &v.counters)));
                    }
                }
                // Evicted by the LRU while we iterate: skipped.
                Err(MapError::KeyNotFound) => continue,
                Err(source) => {
                    return Err(KernelError::Map { doing: "reading the flow map", source });
                }
            }
        }
        Ok(())
    }

    /// Reads every map.
    pub fn read(&self) -> Result<Snapshot, KernelError> {
        // Sized from the last read: growing by doubling would hold up to three times the list
        // while it is copied.
        let expected = self.flows_read.load(Ordering::Relaxed);
        // Room to grow, but never beyond the map: a full map's two reads (the last and this one)
        // are the poll's largest buffers.
        let room = (expected + expected / 16 + 64).min(self.flow_capacity);
        let mut snap = Snapshot { flows: Vec::with_capacity(room), ..Snapshot::default() };
        self.for_each_flow(|key, counters| snap.flows.push((*key, counters)))?;
        self.flows_read.store(snap.flows.len(), Ordering::Relaxed);
        snap.flows.sort_unstable_by(|a, b| flow_cmp(&a.0, &b.0));
        snap.clients = self.client_totals()?;
        for slot in 0..STATS_LEN {
            let (dir, stat) = (slot as usize / Stat::COUNT, slot as usize % Stat::COUNT);
            if stat == Stat::Seen as usize {
                continue;
            }
            let values =
                self.stats.get(&slot, 0).map_err(KernelError::map("reading the stats map"))?;
            snap.stats[dir][stat] = values.iter().sum();
        }
        // The kernel gives every packet exactly one outcome and does not count `seen` (one
        // fewer map update per packet): it is their sum, exact, and never ahead of them.
        for stats in &mut snap.stats {
            stats[Stat::Seen as usize] = stats
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != Stat::Seen as usize)
                .map(|(_, n)| n)
                .sum();
        }
        for slot in 0..EVENT_STATS_LEN {
            let values = self
                .event_stats
                .get(&slot, 0)
                .map_err(KernelError::map("reading the event stats map"))?;
            let (kind, outcome) =
                (slot as usize / EventOutcome::COUNT, slot as usize % EventOutcome::COUNT);
            snap.events[kind][outcome] = values.iter().sum();
        }
        Ok(snap)
    }

    /// Each client's totals: its slot, then that slot's counters on every CPU. The totals map
    /// is an array read whole in one batch (a lookup per client took milliseconds at
    /// thousands of clients); entry by entry where batches are unavailable.
    fn client_totals(&self) -> Result<HashMap<[u8; 6], Counters>, KernelError> {
        let slots = self.client_slots()?;
        let mut clients = HashMap::with_capacity(slots.len());
        let owner: HashMap<u32, [u8; 6]> = slots.iter().map(|(mac, slot)| (*slot, *mac)).collect();
        let reader = BatchReader::<u32, Counters>::new(Layout::PerCpu { cpus: self.cpus });
        let fd = self.client_totals.map().fd().as_fd();
        let batched = self.batch("client totals", || {
            reader.for_each(fd, |slot, values| {
                if let Some(mac) = owner.get(slot) {
                    let mut total = Counters::default();
                    for v in values {
                        total.merge(&v);
                    }
                    clients.insert(*mac, total);
                }
            })
        })?;
        if batched.is_none() {
            for (mac, slot) in slots {
                let values = self
                    .client_totals
                    .get(&slot, 0)
                    .map_err(KernelError::map("reading the client totals map"))?;
                clients.insert(mac, sum(values.iter()));
            }
        }
        Ok(clients)
    }

    /// Every client holding a slot, with its slot in the totals map.
    pub fn client_slots(&self) -> Result<HashMap<[u8; 6], u32>, KernelError> {
        let mut slots = HashMap::new();
        let reader = BatchReader::<ClientKey, u32>::new(Layout::Plain);
        let fd = self.client_slots.map().fd().as_fd();
        let batched = self.batch("client slot", || {
            reader.for_each(fd, |key, mut slot| {
                if let Some(slot) = slot.next() {
                    slots.insert(key.mac, slot);
                }
            })
        })?;
        if batched.is_some() {
            return Ok(slots);
        }
        for entry in self.client_slots.iter() {
            match entry {
                Ok((key, slot)) => {
                    slots.insert(key.mac, slot);
                }
                Err(MapError::KeyNotFound) => continue,
                Err(source) => {
                    return Err(KernelError::Map { doing: "reading the client slot map", source });
                }
            }
        }
        Ok(slots)
    }

    /// Forgets a retired client's kernel totals and flows, so departed devices never fill the
    /// maps; see [`KernelMaps::remove_clients`].
    pub fn remove_client(&mut self, mac: &[u8; 6]) -> Result<(), KernelError> {
        self.remove_clients(std::slice::from_ref(mac))
    }

    /// Retires clients: frees their slots for new clients and deletes their flows. A retired
    /// client seen again gets a slot anew and starts from zero.
    ///
    /// The order matters, because the kernel keeps counting meanwhile:
    /// 1. delete the clients' `CLIENT_SLOTS` entries first, so that from now on no new flow
    ///    can pick up their old slots (a client back at this very moment gets a new slot);
    /// 2. delete their flows (which hold the old slots), found by a scan made after step 1;
    /// 3. zero the slots' totals on every CPU;
    /// 4. push the slots onto `FREE_SLOTS` for new clients.
    ///
    /// Deleting the flows first instead would let a packet arriving between steps create a flow
    /// pointing at the old slot, which would then count into whichever client gets the slot
    /// next. What remains is a race of one program run: a packet whose program read the old
    /// slot just before step 1 and inserts its new flow just after the scan of step 2 passed
    /// that flow's place in the map. That flow would count into the slot's next holder until
    /// it is evicted. It takes a client idle for `client_idle_expiry` to start a flow within
    /// microseconds of its retirement. Packets of the retired client counted between steps 1
    /// and 3 are dropped with its totals (it then counts from zero under a new slot), and a
    /// crash between steps 1 and 4 leaks the slot (until the pinned maps are removed).
    pub fn remove_clients(&mut self, macs: &[[u8; 6]]) -> Result<(), KernelError> {
        if macs.is_empty() {
            return Ok(());
        }
        let mut slots = Vec::with_capacity(macs.len());
        for mac in macs {
            let key = client_key(mac);
            // Only the agent removes entries here, so one it read is still there.
            let slot = match self.client_slots.get(&key, 0) {
                Ok(slot) => slot,
                Err(MapError::KeyNotFound) => continue,
                Err(source) => {
                    return Err(KernelError::Map {
                        doing: "reading a retired client's slot",
                        source,
                    });
                }
            };
            match self.client_slots.remove(&key) {
                Err(source) if !absent(&source) => {
                    return Err(KernelError::Map {
                        doing: "removing a retired client from the kernel slot map",
                        source,
                    });
                }
                _ => slots.push(slot),
            }
        }

        // Collect first, then delete: deleting the iteration cursor restarts the iteration.
        let retired: HashSet<[u8; 6]> = macs.iter().copied().collect();
        let mut doomed = Vec::new();
        self.for_each_flow(|key, _| {
            if retired.contains(&key.client_mac) {
                doomed.push(*key);
            }
        })
        .map_err(|e| KernelError::RetireScan { source: Box::new(e) })?;
        for key in &doomed {
            match self.flows.remove(key) {
                // Evicted by the LRU since the scan: gone all the same.
                Err(source) if !absent(&source) => {
                    return Err(KernelError::Map {
                        doing: "removing a retired client's flow",
                        source,
                    });
                }
                _ => {}
            }
        }

        for slot in slots {
            const ZEROING: &str = "zeroing a retired client's totals";
            let zero = PerCpuValues::try_from(vec![Counters::default(); self.cpus])
                .map_err(|e| KernelError::map(ZEROING)(e.into()))?;
            self.client_totals.set(slot, zero, 0).map_err(KernelError::map(ZEROING))?;
            self.free_slots
                .push(slot, 0)
                .map_err(KernelError::map("freeing a retired client's slot"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The integer order is `FlowKey`'s own: keys that differ in any one field, or in several,
    /// compare the same both ways (the read is sorted by one, `Snapshot::sorted` by the other).
    #[test]
    fn flow_order_is_the_keys_own_order() {
        let mut keys = Vec::new();
        for byte in [0u8, 1, 0x7f, 0x80, 0xff] {
            for field in 0..7 {
                let mut k = FlowKey::default();
                match field {
                    0 => k.client_ip[15 - usize::from(byte % 16)] = byte,
                    1 => k.remote_ip[usize::from(byte % 16)] = byte,
                    2 => k.client_mac[usize::from(byte % 6)] = byte,
                    3 => k.remote_port = u16::from(byte) << 8 | u16::from(byte ^ 0x5a),
                    4 => k.remote_port = u16::from(byte),
                    5 => k.protocol = byte,
                    _ => k._pad[usize::from(byte % 7)] = byte,
                }
                keys.push(k);
                // The same with an earlier field set too: later fields must not decide.
                k.client_ip[3] = byte.wrapping_add(1);
                keys.push(k);
            }
        }
        for a in &keys {
            for b in &keys {
                assert_eq!(flow_cmp(a, b), a.cmp(b), "{a:?} vs {b:?}");
            }
        }
        let mut by_ord = keys.clone();
        by_ord.sort();
        let mut by_order = keys;
        by_order.sort_by(flow_cmp);
        assert_eq!(by_ord, by_order);
    }
}
