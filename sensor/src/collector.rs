//! Reads the kernel maps into a plain snapshot, summing the per-CPU values.

use std::collections::HashMap;

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues},
};
use sensor_common::{
    ClientKey, Counters, Direction, EVENT_STATS_LEN, EventKind, EventOutcome, FlowKey, STATS_LEN, Stat,
    names,
};

/// The maps the agent reads, taken out of the loaded object.
pub struct KernelMaps {
    flows: PerCpuHashMap<MapData, FlowKey, Counters>,
    clients: PerCpuHashMap<MapData, ClientKey, Counters>,
    stats: PerCpuArray<MapData, u64>,
    event_stats: PerCpuArray<MapData, u64>,
}

/// One reading of the kernel maps, CPUs summed.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub flows: HashMap<FlowKey, Counters>,
    pub clients: HashMap<[u8; 6], Counters>,
    /// `stats[direction][stat]`.
    pub stats: [[u64; Stat::COUNT]; 2],
    /// `events[kind][outcome]`: naming events in the kernel.
    pub events: [[u64; EventOutcome::COUNT]; EventKind::COUNT],
}

impl Snapshot {
    pub fn stat(&self, stat: Stat, dir: Direction) -> u64 {
        self.stats[dir.index()][stat as usize]
    }

    pub fn event(&self, kind: EventKind, outcome: EventOutcome) -> u64 {
        self.events[kind as usize][outcome as usize]
    }
}

fn sum(values: &PerCpuValues<Counters>) -> Counters {
    let mut total = Counters::default();
    for v in values.iter() {
        total.merge(v);
    }
    total
}

impl KernelMaps {
    pub fn take(ebpf: &mut Ebpf) -> anyhow::Result<KernelMaps> {
        let mut take = |name: &str| ebpf.take_map(name).with_context(|| format!("map {name} missing from the eBPF object"));
        Ok(KernelMaps {
            flows: PerCpuHashMap::try_from(take(names::FLOWS)?)?,
            clients: PerCpuHashMap::try_from(take(names::CLIENTS)?)?,
            stats: PerCpuArray::try_from(take(names::STATS)?)?,
            event_stats: PerCpuArray::try_from(take(names::EVENT_STATS)?)?,
        })
    }

    /// Reads every map. Entries the LRU evicts while we iterate are skipped, not errors; a key
    /// met twice (iteration restarts when its cursor is evicted) is kept once.
    pub fn read(&self) -> anyhow::Result<Snapshot> {
        let mut snap = Snapshot::default();
        for entry in self.flows.iter() {
            match entry {
                Ok((key, values)) => {
                    snap.flows.insert(key, sum(&values));
                }
                Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(e).context("reading the flow map"),
            }
        }
        for entry in self.clients.iter() {
            match entry {
                Ok((key, values)) => {
                    snap.clients.insert(key.mac, sum(&values));
                }
                Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(e).context("reading the client map"),
            }
        }
        for slot in 0..STATS_LEN {
            let values = self.stats.get(&slot, 0).context("reading the stats map")?;
            let total: u64 = values.iter().sum();
            let (dir, stat) = (slot as usize / Stat::COUNT, slot as usize % Stat::COUNT);
            snap.stats[dir][stat] = total;
        }
        for slot in 0..EVENT_STATS_LEN {
            let values = self.event_stats.get(&slot, 0).context("reading the event stats map")?;
            let (kind, outcome) = (slot as usize / EventOutcome::COUNT, slot as usize % EventOutcome::COUNT);
            snap.events[kind][outcome] = values.iter().sum();
        }
        Ok(snap)
    }

    /// Forgets a retired client's kernel totals, so departed devices never fill the map.
    pub fn remove_client(&mut self, mac: &[u8; 6]) -> anyhow::Result<()> {
        match self.clients.remove(&ClientKey { mac: *mac, _pad: [0; 2] }) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e).context("removing a retired client from the kernel map"),
        }
    }
}
