//! One series per (rule, client, destination): its window of samples (bounded however often
//! its flows gain), its alert phase, and its labels, shared with the other series through an
//! interner. What the evaluator keeps per series, and nothing about when alerts fire.

use std::{
    collections::{HashSet, VecDeque},
    sync::Arc,
};

use serde::{Deserialize, Serialize};

use crate::policy::condition::Direction;

/// Samples a series keeps per window at most: samples closer together than window/64 are
/// added up, so a series' memory is bounded however often its flows gain. A sample then
/// leaves the window up to window/64 late (never early); windows under 64 s stay exact.
const WINDOW_STEPS: u64 = 64;

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub(super) struct Sample {
    pub(super) t: u64,
    pub(super) bytes: [u64; 2],
    pub(super) packets: [u64; 2],
}

/// Samples a series keeps inline: most series only ever see one or two steps of traffic.
const INLINE_SAMPLES: usize = 2;

/// A series' window, oldest sample first: up to [`INLINE_SAMPLES`] in the series itself,
/// more on the heap (back inline once the window drains to that few).
#[derive(Debug, Clone)]
pub(super) enum Samples {
    Inline { len: u8, buf: [Sample; INLINE_SAMPLES] },
    Heap(VecDeque<Sample>),
}

impl Default for Samples {
    fn default() -> Samples {
        Samples::Inline { len: 0, buf: [Sample::default(); INLINE_SAMPLES] }
    }
}

impl Samples {
    pub(super) fn from_vec(samples: Vec<Sample>) -> Samples {
        if samples.len() > INLINE_SAMPLES {
            return Samples::Heap(samples.into());
        }
        Samples::collect(samples)
    }

    fn collect(samples: impl IntoIterator<Item = Sample>) -> Samples {
        let mut all = Samples::default();
        samples.into_iter().for_each(|x| all.push_back(x));
        all
    }

    fn as_slices(&self) -> (&[Sample], &[Sample]) {
        match self {
            Samples::Inline { len, buf } => (&buf[..usize::from(*len)], &[]),
            Samples::Heap(d) => d.as_slices(),
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Sample> {
        let (a, b) = self.as_slices();
        a.iter().chain(b)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    pub(super) fn front(&self) -> Option<&Sample> {
        self.iter().next()
    }

    fn back_mut(&mut self) -> Option<&mut Sample> {
        match self {
            Samples::Inline { len, buf } => buf[..usize::from(*len)].last_mut(),
            Samples::Heap(d) => d.back_mut(),
        }
    }

    fn push_back(&mut self, sample: Sample) {
        match self {
            Samples::Inline { len, buf } if usize::from(*len) < INLINE_SAMPLES => {
                buf[usize::from(*len)] = sample;
                *len += 1;
            }
            Samples::Inline { buf, .. } => {
                // Doubles from there as it needs.
                let mut d = VecDeque::with_capacity(INLINE_SAMPLES + 1);
                d.extend(*buf);
                d.push_back(sample);
                *self = Samples::Heap(d);
            }
            Samples::Heap(d) => d.push_back(sample),
        }
    }

    pub(super) fn pop_front(&mut self) {
        match self {
            Samples::Inline { len, buf } => {
                if *len > 0 {
                    buf.copy_within(1.., 0);
                    *len -= 1;
                }
            }
            Samples::Heap(d) => {
                d.pop_front();
                if d.len() <= INLINE_SAMPLES {
                    // Frees the heap part: a drained window (e.g. a resolved alert kept for
                    // re-sending) holds no capacity.
                    *self = Samples::collect(d.iter().copied());
                }
            }
        }
    }
}

impl Serialize for Samples {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub(super) enum Phase {
    #[default]
    Inactive,
    Pending {
        active_at: u64,
    },
    Firing {
        fired_at: u64,
    },
}

/// What a series is labelled with as of its start (stable alert identity), shared: all
/// series of a rule and client to one country and network hold the same one, and its texts
/// are shared with the others'.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(super) struct SeriesLabels {
    pub(super) rule: Arc<str>,
    pub(super) mac: Arc<str>,
    pub(super) client: Arc<str>,
    pub(super) group: Arc<str>,
    pub(super) vendor: Arc<str>,
    pub(super) country: Arc<str>,
    pub(super) asn: u32,
}

impl SeriesLabels {
    /// Rule, mac, client, group, vendor and country: the order [`Interner::labels`] takes.
    pub(super) fn texts(&self) -> [&str; 6] {
        [&self.rule, &self.mac, &self.client, &self.group, &self.vendor, &self.country]
    }
}

/// The one shared copy of every text and of every set of labels series hold; one no series
/// holds any more is dropped at the next [`Interner::release`].
#[derive(Debug, Default)]
pub(super) struct Interner {
    texts: HashSet<Arc<str>>,
    labels: HashSet<Arc<SeriesLabels>>,
}

impl Interner {
    fn text(&mut self, s: &str) -> Arc<str> {
        if let Some(t) = self.texts.get(s) {
            return Arc::clone(t);
        }
        let t: Arc<str> = Arc::from(s);
        self.texts.insert(Arc::clone(&t));
        t
    }

    /// Of texts in the order of [`SeriesLabels::texts`].
    pub(super) fn labels(&mut self, texts: [&str; 6], asn: u32) -> Arc<SeriesLabels> {
        let [rule, mac, client, group, vendor, country] = texts.map(|t| self.text(t));
        let labels = SeriesLabels { rule, mac, client, group, vendor, country, asn };
        if let Some(l) = self.labels.get(&labels) {
            return Arc::clone(l);
        }
        let labels = Arc::new(labels);
        self.labels.insert(Arc::clone(&labels));
        labels
    }

    pub(super) fn release(&mut self) {
        // Labels first: dropping them releases their texts.
        self.labels.retain(|l| Arc::strong_count(l) > 1);
        self.texts.retain(|t| Arc::strong_count(t) > 1);
    }
}

/// One (rule, client, destination). The map holds it boxed and its destination is the tail
/// of its id: a B-tree node holds 11 values inline, so every byte of a value counts about
/// twice (nodes are half to two thirds full).
#[derive(Debug, Clone)]
pub(super) struct Series {
    pub(super) labels: Arc<SeriesLabels>,
    pub(super) samples: Samples,
    // The event time, phase and last resolved instance, their `Option`/enum tags packed in
    // `flags` (see the accessors): 33 bytes instead of 56.
    event_at: u64,
    phase_at: u64,
    resolved: [u64; 2],
    /// Measured values the last time the condition held (for the templates).
    pub(super) last_bytes: u64,
    pub(super) last_packets: u64,
    /// Of the alert's labels, computed once (not saved: a restart computes it again).
    pub(super) fingerprint: u64,
    flags: u8,
}

// `flags` bits.
const EVENT: u8 = 1;
const PENDING: u8 = 2;
const FIRING: u8 = 4;
const RESOLVED: u8 = 8;
pub(super) const FINGERPRINT: u8 = 16;

// The point of the layout above (a larger value costs a larger allocation per series).
const _: () = assert!(std::mem::size_of::<Series>() <= 160);

impl Series {
    pub(super) fn new(labels: Arc<SeriesLabels>) -> Series {
        Series {
            labels,
            samples: Samples::default(),
            event_at: 0,
            phase_at: 0,
            resolved: [0; 2],
            last_bytes: 0,
            last_packets: 0,
            fingerprint: 0,
            flags: 0,
        }
    }

    pub(super) fn flag(&self, bit: u8) -> bool {
        self.flags & bit != 0
    }

    pub(super) fn set_flag(&mut self, bit: u8, on: bool) {
        self.flags = if on { self.flags | bit } else { self.flags & !bit };
    }

    /// For event conditions: when the event happened.
    pub(super) fn event_at(&self) -> Option<u64> {
        self.flag(EVENT).then_some(self.event_at)
    }

    pub(super) fn set_event_at(&mut self, at: Option<u64>) {
        self.set_flag(EVENT, at.is_some());
        self.event_at = at.unwrap_or(0);
    }

    pub(super) fn phase(&self) -> Phase {
        if self.flag(PENDING) {
            Phase::Pending { active_at: self.phase_at }
        } else if self.flag(FIRING) {
            Phase::Firing { fired_at: self.phase_at }
        } else {
            Phase::Inactive
        }
    }

    pub(super) fn set_phase(&mut self, phase: Phase) {
        let (pending, firing, at) = match phase {
            Phase::Inactive => (false, false, 0),
            Phase::Pending { active_at } => (true, false, active_at),
            Phase::Firing { fired_at } => (false, true, fired_at),
        };
        self.set_flag(PENDING, pending);
        self.set_flag(FIRING, firing);
        self.phase_at = at;
    }

    /// The last instance that resolved, re-sent until the retention ends: (fired_at, resolved_at).
    pub(super) fn resolved(&self) -> Option<(u64, u64)> {
        self.flag(RESOLVED).then_some((self.resolved[0], self.resolved[1]))
    }

    pub(super) fn set_resolved(&mut self, resolved: Option<(u64, u64)>) {
        self.set_flag(RESOLVED, resolved.is_some());
        let (fired_at, resolved_at) = resolved.unwrap_or_default();
        self.resolved = [fired_at, resolved_at];
    }

    /// Adds a sample to the window (into the last one if both fall in the same step).
    pub(super) fn record(&mut self, sample: Sample, window: u64) {
        let step = (window / WINDOW_STEPS).max(1);
        match self.samples.back_mut() {
            Some(last) if last.t / step == sample.t / step => {
                // Keyed by its newest part, so that nothing leaves the window early.
                last.t = last.t.max(sample.t);
                // Saturating: a sample restored from a damaged state file must not wrap.
                for d in 0..2 {
                    last.bytes[d] = last.bytes[d].saturating_add(sample.bytes[d]);
                    last.packets[d] = last.packets[d].saturating_add(sample.packets[d]);
                }
            }
            _ => self.samples.push_back(sample),
        }
    }

    /// Bytes and packets in the window, in `direction`.
    pub(super) fn measured(&self, direction: Direction) -> (u64, u64) {
        let dirs = direction_index(direction);
        self.samples.iter().fold((0u64, 0u64), |(b, p), x| {
            dirs.iter().fold((b, p), |(b, p), &d| {
                (b.saturating_add(x.bytes[d]), p.saturating_add(x.packets[d]))
            })
        })
    }
}

/// A sample's indices (upload, download) that count in `d`.
fn direction_index(d: Direction) -> &'static [usize] {
    match d {
        Direction::Upload => &[0],
        Direction::Download => &[1],
        Direction::Both => &[0, 1],
    }
}

/// The destination of the series `id` labelled `labels`: the rest of its id (see [`series_id`]).
pub(super) fn destination_of<'a>(id: &'a str, labels: &SeriesLabels) -> &'a str {
    id.get(labels.rule.len() + labels.mac.len() + 2..).unwrap_or_default()
}

pub(super) fn series_id(rule: &str, mac: &str, destination: &str) -> Box<str> {
    // Exactly sized (format! leaves slack): a new series keeps its id as its key.
    [rule, mac, destination].join("\u{1f}").into_boxed_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A window holding a sample near the top of u64 (restored from a damaged state file)
    /// stops at u64::MAX: adding to it, or summing it with others, never wraps to a small
    /// value (which would resolve an alert) nor panics.
    #[test]
    fn window_sums_saturate() {
        let labels = SeriesLabels {
            rule: "R".into(),
            mac: "02:00:00:00:00:01".into(),
            client: "tv".into(),
            group: "".into(),
            vendor: "".into(),
            country: "".into(),
            asn: 0,
        };
        let mut s = Series::new(Arc::new(labels));
        let sample = |t: u64, bytes: u64| Sample { t, bytes: [bytes, 1], packets: [bytes, 1] };
        s.record(sample(100, u64::MAX - 1), 600);
        s.record(sample(101, 10), 600);
        assert_eq!(s.measured(Direction::Upload), (u64::MAX, u64::MAX));
        s.record(sample(500, 10), 600);
        assert_eq!(s.samples.iter().count(), 2);
        assert_eq!(s.measured(Direction::Both), (u64::MAX, u64::MAX));
        assert_eq!(s.measured(Direction::Download), (3, 3));
    }
}
