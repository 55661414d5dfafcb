//! The kernel's own outcome counters (packets seen, counted and not counted by reason, naming
//! events by outcome) as exported counters. The maps behind them start from zero whenever they
//! are created anew (a reboot, pins removed; the event map at every start), so they are
//! exported as sums of deltas, like the traffic counters: they never go backwards.

use sensor_common::{EventKind, EventOutcome, Stat};
use serde::{Deserialize, Serialize};

type Stats = [[u64; Stat::COUNT]; 2];
type Events = [[u64; EventOutcome::COUNT]; EventKind::COUNT];

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KernelCounters {
    /// `stats[direction][stat]`, as exported.
    pub stats: Stats,
    /// `events[kind][outcome]`, as exported.
    #[serde(deserialize_with = "events_of_fewer_kinds")]
    pub events: Events,
    /// The kernel's values at the last read.
    last_stats: Stats,
    #[serde(deserialize_with = "events_of_fewer_kinds")]
    last_events: Events,
}

/// Event counters as a state file holds them: an earlier version knew fewer kinds (the kinds
/// only grow, at the end); the ones it did not know start at zero.
fn events_of_fewer_kinds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Events, D::Error> {
    let rows = Vec::<[u64; EventOutcome::COUNT]>::deserialize(d)?;
    let mut events = Events::default();
    if rows.len() > events.len() {
        return Err(serde::de::Error::invalid_length(
            rows.len(),
            &"at most one row per event kind",
        ));
    }
    events[..rows.len()].copy_from_slice(&rows);
    Ok(events)
}

impl KernelCounters {
    /// Adds what the kernel counted since the last read.
    pub fn update(&mut self, stats: &Stats, events: &Events) {
        fold(
            self.stats.as_flattened_mut(),
            self.last_stats.as_flattened_mut(),
            stats.as_flattened(),
        );
        fold(
            self.events.as_flattened_mut(),
            self.last_events.as_flattened_mut(),
            events.as_flattened(),
        );
    }

    /// The largest value held, exported or last read.
    pub(super) fn max_value(&self) -> u64 {
        [
            self.stats.as_flattened(),
            self.last_stats.as_flattened(),
            self.events.as_flattened(),
            self.last_events.as_flattened(),
        ]
        .into_iter()
        .flatten()
        .copied()
        .max()
        .unwrap_or(0)
    }

    /// The kernel's maps were made anew (`stats`: the stats map; the event map always is):
    /// their next values count whole.
    pub fn maps_recreated(&mut self, stats: bool) {
        if stats {
            self.last_stats = Stats::default();
        }
        self.last_events = Events::default();
    }
}

/// Adds each counter's growth to its exported value; a counter lower than last time started
/// again from zero (a map made anew that the caller could not know of), so all of it is new.
fn fold(exported: &mut [u64], last: &mut [u64], now: &[u64]) {
    for ((exported, last), now) in exported.iter_mut().zip(last.iter_mut()).zip(now) {
        let delta = if *now >= *last { *now - *last } else { *now };
        *exported = exported.saturating_add(delta);
        *last = *now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(seen: u64) -> Stats {
        let mut s = Stats::default();
        s[0][Stat::Seen as usize] = seen;
        s
    }

    #[test]
    fn growth_adds_and_a_recreated_map_counts_whole() {
        let mut k = KernelCounters::default();
        k.update(&stats(10), &Events::default());
        k.update(&stats(15), &Events::default());
        assert_eq!(k.stats[0][Stat::Seen as usize], 15);
        // A reboot: the new map already counted 20, more than the old one's last 15.
        k.maps_recreated(true);
        k.update(&stats(20), &Events::default());
        assert_eq!(k.stats[0][Stat::Seen as usize], 35);
        // Unannounced restart from zero: what the new map holds is new.
        k.update(&stats(4), &Events::default());
        assert_eq!(k.stats[0][Stat::Seen as usize], 39);
    }

    #[test]
    fn the_event_map_restarts_with_every_agent() {
        let mut k = KernelCounters::default();
        let mut e = Events::default();
        e[EventKind::DnsResponse as usize][EventOutcome::Sent as usize] = 7;
        k.update(&Stats::default(), &e);
        // Pinned stats kept, event map new: its 9 are all new, the stats add nothing.
        k.maps_recreated(false);
        e[EventKind::DnsResponse as usize][EventOutcome::Sent as usize] = 9;
        k.update(&Stats::default(), &e);
        assert_eq!(k.events[EventKind::DnsResponse as usize][EventOutcome::Sent as usize], 16);
        assert_eq!(k.stats, Stats::default());
    }
}
