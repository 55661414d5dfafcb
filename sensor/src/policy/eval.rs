//! Evaluates the policy on every poll: one series of samples per (rule, client, destination),
//! its condition over a sliding window, and the alert lifecycle Prometheus uses: pending, then
//! firing once the condition held for `for`, resolved when it clears (kept for re-sending).
//! The whole state is serializable and saved with the counters, so a restart loses nothing:
//! not the windows, not the alerts, not what was learnt about destinations and devices.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet, VecDeque, btree_map},
    hash::Hasher as _,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use super::{
    Policy, Rule,
    matcher::{ClientFacts, FlowFacts, PollFacts, destination_label, write_destination_label},
    spec::{Condition, Direction, GroupBy},
};
use crate::types::{Alert, AlertStatus, alert::fingerprint, labels::human_bytes};

/// Most series held over all rules; beyond it new ones are not tracked (and counted).
pub const MAX_SERIES: usize = 20_000;
/// Most destinations remembered per client and level for `new_destination`.
pub const MAX_KNOWN_PER_CLIENT: usize = 20_000;
/// Most devices remembered for `new_device` (randomized MACs add up over the years).
pub const MAX_KNOWN_DEVICES: usize = 100_000;
/// Samples a series keeps per window at most: samples closer together than window/64 are
/// added up, so a series' memory is bounded however often its flows gain. A sample then
/// leaves the window up to window/64 late (never early); windows under 64 s stay exact.
const WINDOW_STEPS: u64 = 64;

/// What one evaluation produced.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Firing alerts and the ones resolved within the retention ([`Evaluator::alert`] builds
    /// them).
    pub alerts: Vec<AlertStatus>,
    /// The series each of `alerts` is for.
    pub alert_series: Vec<String>,
    /// (rule, client) of every alert that started firing in this evaluation.
    pub fired: Vec<(String, String)>,
    /// (rule, client) of every series this evaluation started tracking: the violations
    /// counter is created at 0 then, before an alert can fire (Prometheus's increase() cannot
    /// see the first violation of a counter whose series appears at 1).
    pub started: Vec<(String, String)>,
    /// Per rule: (pending, firing).
    pub counts: BTreeMap<String, (usize, usize)>,
    /// Series not created because [`MAX_SERIES`] was reached.
    pub series_dropped: usize,
    pub series: usize,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
struct Sample {
    t: u64,
    bytes: [u64; 2],
    packets: [u64; 2],
}

/// Samples a series keeps inline: most series only ever see one or two steps of traffic.
const INLINE_SAMPLES: usize = 2;

/// A series' window, oldest sample first: up to [`INLINE_SAMPLES`] in the series itself,
/// more on the heap (back inline once the window drains to that few).
#[derive(Debug, Clone)]
enum Samples {
    Inline { len: u8, buf: [Sample; INLINE_SAMPLES] },
    Heap(VecDeque<Sample>),
}

impl Default for Samples {
    fn default() -> Samples {
        Samples::Inline { len: 0, buf: [Sample::default(); INLINE_SAMPLES] }
    }
}

impl Samples {
    fn from_vec(samples: Vec<Sample>) -> Samples {
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

    fn iter(&self) -> impl Iterator<Item = &Sample> {
        let (a, b) = self.as_slices();
        a.iter().chain(b)
    }

    fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    fn front(&self) -> Option<&Sample> {
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

    fn pop_front(&mut self) {
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
enum Phase {
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
struct SeriesLabels {
    rule: Arc<str>,
    mac: Arc<str>,
    client: Arc<str>,
    group: Arc<str>,
    vendor: Arc<str>,
    country: Arc<str>,
    asn: u32,
}

impl SeriesLabels {
    /// Rule, mac, client, group, vendor and country: the order [`Interner::labels`] takes.
    fn texts(&self) -> [&str; 6] {
        [&self.rule, &self.mac, &self.client, &self.group, &self.vendor, &self.country]
    }
}

/// The one shared copy of every text and of every set of labels series hold; one no series
/// holds any more is dropped at the next [`Interner::release`].
#[derive(Debug, Default)]
struct Interner {
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
    fn labels(&mut self, texts: [&str; 6], asn: u32) -> Arc<SeriesLabels> {
        let [rule, mac, client, group, vendor, country] = texts.map(|t| self.text(t));
        let labels = SeriesLabels { rule, mac, client, group, vendor, country, asn };
        if let Some(l) = self.labels.get(&labels) {
            return Arc::clone(l);
        }
        let labels = Arc::new(labels);
        self.labels.insert(Arc::clone(&labels));
        labels
    }

    fn release(&mut self) {
        // Labels first: dropping them releases their texts.
        self.labels.retain(|l| Arc::strong_count(l) > 1);
        self.texts.retain(|t| Arc::strong_count(t) > 1);
    }
}

/// One (rule, client, destination). The map holds it boxed and its destination is the tail
/// of its id: a B-tree node holds 11 values inline, so every byte of a value counts about
/// twice (nodes are half to two thirds full).
#[derive(Debug, Clone)]
struct Series {
    labels: Arc<SeriesLabels>,
    samples: Samples,
    // The event time, phase and last resolved instance, their `Option`/enum tags packed in
    // `flags` (see the accessors): 33 bytes instead of 56.
    event_at: u64,
    phase_at: u64,
    resolved: [u64; 2],
    /// Measured values the last time the condition held (for the templates).
    last_bytes: u64,
    last_packets: u64,
    /// Of the alert's labels, computed once (not saved: a restart computes it again).
    fingerprint: u64,
    flags: u8,
}

// `flags` bits.
const EVENT: u8 = 1;
const PENDING: u8 = 2;
const FIRING: u8 = 4;
const RESOLVED: u8 = 8;
const FINGERPRINT: u8 = 16;

// The point of the layout above (a larger value costs a larger allocation per series).
const _: () = assert!(std::mem::size_of::<Series>() <= 160);

impl Series {
    fn new(labels: Arc<SeriesLabels>) -> Series {
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

    fn flag(&self, bit: u8) -> bool {
        self.flags & bit != 0
    }

    fn set_flag(&mut self, bit: u8, on: bool) {
        self.flags = if on { self.flags | bit } else { self.flags & !bit };
    }

    /// For event conditions: when the event happened.
    fn event_at(&self) -> Option<u64> {
        self.flag(EVENT).then_some(self.event_at)
    }

    fn set_event_at(&mut self, at: Option<u64>) {
        self.set_flag(EVENT, at.is_some());
        self.event_at = at.unwrap_or(0);
    }

    fn phase(&self) -> Phase {
        if self.flag(PENDING) {
            Phase::Pending { active_at: self.phase_at }
        } else if self.flag(FIRING) {
            Phase::Firing { fired_at: self.phase_at }
        } else {
            Phase::Inactive
        }
    }

    fn set_phase(&mut self, phase: Phase) {
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
    fn resolved(&self) -> Option<(u64, u64)> {
        self.flag(RESOLVED).then_some((self.resolved[0], self.resolved[1]))
    }

    fn set_resolved(&mut self, resolved: Option<(u64, u64)>) {
        self.set_flag(RESOLVED, resolved.is_some());
        let (fired_at, resolved_at) = resolved.unwrap_or_default();
        self.resolved = [fired_at, resolved_at];
    }

    /// Adds a sample to the window (into the last one if both fall in the same step).
    fn record(&mut self, sample: Sample, window: u64) {
        let step = (window / WINDOW_STEPS).max(1);
        match self.samples.back_mut() {
            Some(last) if last.t / step == sample.t / step => {
                // Keyed by its newest part, so that nothing leaves the window early.
                last.t = last.t.max(sample.t);
                for d in 0..2 {
                    last.bytes[d] += sample.bytes[d];
                    last.packets[d] += sample.packets[d];
                }
            }
            _ => self.samples.push_back(sample),
        }
    }

    /// The status of this series' alert (its id is `id`), fired at `fired_at` (and resolved
    /// at `resolved_at`).
    fn status(
        &mut self,
        rule: &Rule,
        id: &str,
        fired_at: u64,
        resolved_at: Option<u64>,
    ) -> AlertStatus {
        if !self.flag(FINGERPRINT) {
            self.fingerprint = fingerprint(&labels(rule, self, destination_of(id, &self.labels)));
            self.set_flag(FINGERPRINT, true);
        }
        AlertStatus {
            fingerprint: self.fingerprint,
            starts_at: at(fired_at),
            resolved_at: resolved_at.map(at),
        }
    }
}

/// The destination of the series `id` labelled `labels`: the rest of its id (see [`series_id`]).
fn destination_of<'a>(id: &'a str, labels: &SeriesLabels) -> &'a str {
    id.get(labels.rule.len() + labels.mac.len() + 2..).unwrap_or_default()
}

/// The series map as saved: every series with its rule, mac, destination and labels in full,
/// as it was when the series held them all itself (state files load in either release).
mod stored {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

    use super::{Interner, Phase, Sample, Samples, Series, destination_of, series_id};

    #[derive(Serialize)]
    struct SeriesRef<'a> {
        rule: &'a str,
        mac: &'a str,
        destination: &'a str,
        client: &'a str,
        group: &'a str,
        vendor: &'a str,
        country: &'a str,
        asn: u32,
        samples: &'a Samples,
        event_at: Option<u64>,
        phase: Phase,
        resolved: Option<(u64, u64)>,
        last_bytes: u64,
        last_packets: u64,
    }

    /// Same fields in the same order as [`SeriesRef`] (a struct also loads from a sequence).
    #[derive(Deserialize)]
    struct StoredSeries {
        rule: String,
        mac: String,
        destination: String,
        client: String,
        group: String,
        vendor: String,
        country: String,
        asn: u32,
        samples: Vec<Sample>,
        event_at: Option<u64>,
        phase: Phase,
        resolved: Option<(u64, u64)>,
        last_bytes: u64,
        last_packets: u64,
    }

    pub fn serialize<S: Serializer>(
        map: &BTreeMap<Box<str>, Box<Series>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_map(map.iter().map(|(id, series)| {
            let l = &*series.labels;
            let value = SeriesRef {
                rule: &l.rule,
                mac: &l.mac,
                destination: destination_of(id, l),
                client: &l.client,
                group: &l.group,
                vendor: &l.vendor,
                country: &l.country,
                asn: l.asn,
                samples: &series.samples,
                event_at: series.event_at(),
                phase: series.phase(),
                resolved: series.resolved(),
                last_bytes: series.last_bytes,
                last_packets: series.last_packets,
            };
            (id, value)
        }))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<Box<str>, Box<Series>>, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = BTreeMap<Box<str>, Box<Series>>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of series")
            }

            fn visit_map<A: de::MapAccess<'de>>(
                self,
                mut entries: A,
            ) -> Result<Self::Value, A::Error> {
                let mut map = BTreeMap::new();
                // Loaded series share their labels from the start (the evaluator adopts them).
                let mut interner = Interner::default();
                while let Some((id, s)) = entries.next_entry::<String, StoredSeries>()? {
                    let labels = interner.labels(
                        [&s.rule, &s.mac, &s.client, &s.group, &s.vendor, &s.country],
                        s.asn,
                    );
                    // The destination is kept as the tail of the id only: an id that is not
                    // the one its series' fields make (a hand-edited file) is corrected.
                    let canonical = id
                        .strip_prefix(s.rule.as_str())
                        .and_then(|r| r.strip_prefix('\u{1f}'))
                        .and_then(|r| r.strip_prefix(s.mac.as_str()))
                        .and_then(|r| r.strip_prefix('\u{1f}'))
                        == Some(s.destination.as_str());
                    let id = if canonical {
                        id.into_boxed_str()
                    } else {
                        series_id(&s.rule, &s.mac, &s.destination)
                    };
                    let mut series = Series::new(labels);
                    series.samples = Samples::from_vec(s.samples);
                    series.set_event_at(s.event_at);
                    series.set_phase(s.phase);
                    series.set_resolved(s.resolved);
                    series.last_bytes = s.last_bytes;
                    series.last_packets = s.last_packets;
                    map.insert(id, Box::new(series));
                }
                Ok(map)
            }
        }
        d.deserialize_map(Visitor)
    }
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct KnownDestinations {
    first_seen: u64,
    /// Per grouping level (domain, asn...): every destination seen.
    seen: Levels,
}

/// A client's sets by level, saved as a map. A list: a client has one to a few levels, and a
/// B-tree's first node took ~550 bytes per client for one (thousands of clients).
#[derive(Debug, Clone, Default)]
struct Levels(Vec<(Box<str>, BTreeSet<Seen>)>);

impl Levels {
    /// The set of `level`, made empty the first time.
    fn set(&mut self, level: &str) -> &mut BTreeSet<Seen> {
        let i = match self.0.iter().position(|(l, _)| **l == *level) {
            Some(i) => i,
            None => {
                self.0.push((level.into(), BTreeSet::new()));
                self.0.len() - 1
            }
        };
        &mut self.0[i].1
    }
}

impl Serialize for Levels {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // In key order, as the map it was.
        let mut sorted: Vec<&(Box<str>, BTreeSet<Seen>)> = self.0.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        s.collect_map(sorted.into_iter().map(|(level, set)| (level, set)))
    }
}

impl<'de> Deserialize<'de> for Levels {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Levels, D::Error> {
        let map = BTreeMap::<String, BTreeSet<Seen>>::deserialize(d)?;
        Ok(Levels(map.into_iter().map(|(level, set)| (level.into_boxed_str(), set)).collect()))
    }
}

/// A destination `new_destination` has seen: the 64-bit FNV-1a hash of its label, stable
/// across restarts and releases. 8 bytes where the label took tens (a client's set holds up
/// to [`MAX_KNOWN_PER_CLIENT`]); only membership is ever asked. State files that stored the
/// labels themselves load as their hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
struct Seen(u64);

impl Seen {
    /// Of a flow's label at `by`, hashed as it is written (no allocation).
    fn of(f: &FlowFacts, by: GroupBy) -> Seen {
        let mut h = LabelHash::default();
        let _ = write_destination_label(&mut h, f, by);
        Seen(h.0.finish())
    }

    fn of_label(label: &str) -> Seen {
        let mut h = LabelHash::default();
        let _ = std::fmt::Write::write_str(&mut h, label);
        Seen(h.0.finish())
    }
}

#[derive(Default)]
struct LabelHash(fnv::FnvHasher);

impl std::fmt::Write for LabelHash {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.write(s.as_bytes());
        Ok(())
    }
}

impl<'de> Deserialize<'de> for Seen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Seen, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Stored {
            Hash(u64),
            Label(String),
        }
        Ok(match Stored::deserialize(d)? {
            Stored::Hash(h) => Seen(h),
            Stored::Label(label) => Seen::of_label(&label),
        })
    }
}

/// Everything the evaluator remembers; saved in the state file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EvalState {
    /// When the policy engine first ran (start of `new_device` learning).
    started: u64,
    /// Every MAC ever seen, with when.
    devices: BTreeMap<String, u64>,
    destinations: BTreeMap<String, KnownDestinations>,
    /// By id (see [`series_id`]). Both boxed: nodes of this map hold 11 keys and values each,
    /// and are a half to two thirds full.
    #[serde(with = "stored")]
    series: BTreeMap<Box<str>, Box<Series>>,
}

pub struct Evaluator {
    policy: Policy,
    state: EvalState,
    /// Base URL of the sensor's API, for generatorURL.
    external_url: String,
    resolved_retention: Duration,
    /// The series' shared labels; released at every step.
    interner: Interner,
}

fn series_id(rule: &str, mac: &str, destination: &str) -> Box<str> {
    // Exactly sized (format! leaves slack): a new series keeps its id as its key.
    [rule, mac, destination].join("\u{1f}").into_boxed_str()
}

/// The flows in runs of one client each. A client's flows come one after the other (the read
/// is sorted by client address), so per-client work is done once per run, not per flow.
fn client_runs(flows: &[FlowFacts]) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let mut start = 0;
    std::iter::from_fn(move || {
        let first = flows.get(start)?;
        let run =
            start..start + flows[start..].iter().take_while(|f| f.client == first.client).count();
        start = run.end;
        Some(run)
    })
}

fn level_name(by: GroupBy) -> &'static str {
    match by {
        GroupBy::Domain => "domain",
        GroupBy::Fqdn => "fqdn",
        GroupBy::Ip => "ip",
        GroupBy::Asn => "asn",
        GroupBy::Country => "country",
        GroupBy::None => "none",
    }
}

impl Evaluator {
    pub fn new(
        policy: Policy,
        mut state: EvalState,
        external_url: String,
        resolved_retention: Duration,
    ) -> Evaluator {
        let mut interner = Interner::default();
        // Loaded series share their labels with the ones to come.
        for s in state.series.values_mut() {
            let labels = interner.labels(s.labels.texts(), s.labels.asn);
            s.labels = labels;
        }
        Evaluator { policy, state, external_url, resolved_retention, interner }
    }

    pub fn state(&self) -> &EvalState {
        &self.state
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// A new policy (SIGHUP): series of rules that still exist keep their windows and alerts.
    pub fn replace(&mut self, policy: Policy, external_url: String, resolved_retention: Duration) {
        let names: BTreeSet<&str> = policy.rules.iter().map(|r| r.name.as_str()).collect();
        self.state.series.retain(|_, s| names.contains(&*s.labels.rule));
        // A rule's labels may have changed.
        for s in self.state.series.values_mut() {
            s.set_flag(FINGERPRINT, false);
        }
        self.policy = policy;
        self.external_url = external_url;
        self.resolved_retention = resolved_retention;
    }

    /// The alert `status` (of the last evaluation's `alert_series`) stands for; None if that
    /// series or its rule is gone.
    pub fn alert(&self, series: &str, status: &AlertStatus) -> Option<Alert> {
        let s = self.state.series.get(series)?;
        let rule = self.policy.rules.iter().find(|r| *r.name == *s.labels.rule)?;
        let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let destination = destination_of(series, &s.labels);
        Some(alert(
            rule,
            s,
            destination,
            secs(status.starts_at),
            status.resolved_at.map(secs),
            &self.external_url,
        ))
    }

    pub fn evaluate(&mut self, facts: &PollFacts) -> Outcome {
        let mut outcome = self.begin(facts.now, &facts.clients);
        self.add_flows(&mut outcome, facts.now, &facts.clients, &facts.flows);
        self.finish(facts.now, outcome)
    }

    /// Starts the evaluation of a poll with all its clients (new devices are decided here).
    /// Its flows follow through [`Evaluator::add_flows`], in as many parts as the caller likes
    /// (the facts of a full flow map need not all be in memory at once), then
    /// [`Evaluator::finish`].
    pub fn begin(&mut self, now: u64, clients: &[ClientFacts]) -> Outcome {
        if self.state.started == 0 {
            self.state.started = now;
        }
        let mut outcome = Outcome::default();
        let new_devices = self.learn_devices(now, clients);
        let rules = std::mem::take(&mut self.policy.rules);
        for rule in &rules {
            if rule.schedule.as_ref().is_some_and(|s| !s.contains(now)) {
                continue;
            }
            let Condition::NewDevice(c) = &rule.condition else { continue };
            for &(i, first_seen) in &new_devices {
                let client = &clients[i];
                let learnt = first_seen < self.state.started.saturating_add(c.learning.as_secs());
                if learnt
                    || !rule.matches.matches_client(client)
                    || self.device_excepted(rule, client)
                {
                    continue;
                }
                if let Some(s) = self.series(rule, client, None, &mut outcome) {
                    s.set_event_at(Some(now));
                }
            }
        }
        self.policy.rules = rules;
        outcome
    }

    /// Flows that gained traffic in this poll (`f.client` indexes `clients`, the ones given
    /// to [`Evaluator::begin`]).
    pub fn add_flows(
        &mut self,
        outcome: &mut Outcome,
        now: u64,
        clients: &[ClientFacts],
        flows: &[FlowFacts],
    ) {
        let new_destinations = self.learn_destinations(now, clients, flows);
        let rules = std::mem::take(&mut self.policy.rules);
        let exceptions = std::mem::take(&mut self.policy.exceptions);
        for rule in &rules {
            if rule.schedule.as_ref().is_some_and(|s| !s.contains(now))
                || matches!(rule.condition, Condition::NewDevice(_))
            {
                continue;
            }
            let window = rule.condition.window().as_secs().max(1);
            let event = matches!(rule.condition, Condition::NewDestination(_));
            let mut excepts = Vec::new();
            for run in client_runs(flows) {
                // The client half of the match and of the exceptions, once per client.
                let client = &clients[flows[run.start].client];
                if !rule.matches.matches_client(client) {
                    continue;
                }
                excepts.clear();
                excepts.extend(
                    exceptions.iter().chain(&rule.except).filter(|e| e.matches_client(client)),
                );
                for (i, f) in flows.iter().enumerate().skip(run.start).take(run.len()) {
                    if !rule.matches.matches_destination(f)
                        || excepts.iter().any(|e| e.matches_destination(f))
                    {
                        continue;
                    }
                    let counts = match &rule.condition {
                        Condition::DnsBypass(_) => self.policy.dns.is_bypass(f),
                        Condition::NewDestination(_) => {
                            new_destinations.get(i).copied().unwrap_or(false)
                        }
                        _ => true,
                    };
                    if !counts {
                        continue;
                    }
                    if let Some(s) = self.series(rule, client, Some(f), outcome) {
                        if event {
                            s.set_event_at(Some(now));
                        }
                        let sample = Sample {
                            t: now,
                            bytes: [f.upload_bytes, f.download_bytes],
                            packets: [f.upload_packets, f.download_packets],
                        };
                        s.record(sample, window);
                    }
                }
            }
        }
        self.policy.rules = rules;
        self.policy.exceptions = exceptions;
    }

    /// Ends the evaluation: windows, conditions, alerts.
    pub fn finish(&mut self, now: u64, mut outcome: Outcome) -> Outcome {
        self.step(now, &mut outcome);
        outcome
    }

    /// Clients never seen before, as (index, first seen) — recorded on the way.
    fn learn_devices(&mut self, now: u64, clients: &[ClientFacts]) -> Vec<(usize, u64)> {
        let mut new = Vec::new();
        for (i, c) in clients.iter().enumerate() {
            if !self.state.devices.contains_key(&c.mac_text)
                && self.state.devices.len() < MAX_KNOWN_DEVICES
            {
                self.state.devices.insert(c.mac_text.clone(), now);
                new.push((i, now));
            }
        }
        new
    }

    /// Per flow: whether it reaches a destination its client had never reached before, after
    /// that client's learning period. Learnt from all traffic, before matches and exceptions.
    fn learn_destinations(
        &mut self,
        now: u64,
        clients: &[ClientFacts],
        flows: &[FlowFacts],
    ) -> Vec<bool> {
        let mut new = vec![false; flows.len()];
        let rules: Vec<(GroupBy, u64)> = self
            .policy
            .rules
            .iter()
            .filter_map(|r| match &r.condition {
                Condition::NewDestination(c) => Some((c.by, c.learning.as_secs())),
                _ => None,
            })
            .collect();
        if rules.is_empty() {
            return new;
        }
        // Its sets once per run of a client's flows, not per flow (a tree descent by MAC text
        // among thousands of clients).
        for run in client_runs(flows) {
            let client = &clients[flows[run.start].client];
            // Looked up by reference: keys are allocated once per client, not per flow.
            let mac = client.mac_text.as_str();
            if !self.state.destinations.contains_key(mac) {
                let known = KnownDestinations { first_seen: now, seen: Levels::default() };
                self.state.destinations.insert(mac.to_string(), known);
            }
            let Some(known) = self.state.destinations.get_mut(mac) else { continue };
            let first_seen = known.first_seen;
            let learnt = |learning: u64| now >= first_seen.saturating_add(learning);
            for &(by, learning) in &rules {
                let set = known.seen.set(level_name(by));
                for (i, f) in flows.iter().enumerate().skip(run.start).take(run.len()) {
                    if set.len() < MAX_KNOWN_PER_CLIENT
                        && set.insert(Seen::of(f, by))
                        && learnt(learning)
                    {
                        new[i] = true;
                    }
                }
            }
        }
        new
    }

    fn device_excepted(&self, rule: &Rule, client: &ClientFacts) -> bool {
        self.policy.exceptions.iter().chain(&rule.except).any(|e| e.matches_device(client))
    }

    fn series(
        &mut self,
        rule: &Rule,
        client: &ClientFacts,
        f: Option<&FlowFacts>,
        outcome: &mut Outcome,
    ) -> Option<&mut Series> {
        let destination = f.map(|f| destination_label(f, rule.group_by)).unwrap_or_default();
        let id = series_id(&rule.name, &client.mac_text, &destination);
        let full = self.state.series.len() >= MAX_SERIES;
        // One lookup: this runs for every flow a rule matches, every poll.
        match self.state.series.entry(id) {
            btree_map::Entry::Occupied(o) => Some(&mut **o.into_mut()),
            btree_map::Entry::Vacant(_) if full => {
                outcome.series_dropped += 1;
                None
            }
            btree_map::Entry::Vacant(v) => {
                outcome.started.push((rule.name.clone(), client.name.clone()));
                let country = f.map_or("", |f| f.country.as_str());
                let texts = [
                    rule.name.as_str(),
                    &client.mac_text,
                    &client.name,
                    &client.group,
                    &client.vendor,
                    country,
                ];
                let labels = self.interner.labels(texts, f.map_or(0, |f| f.asn));
                Some(&mut **v.insert(Box::new(Series::new(labels))))
            }
        }
    }

    /// Windows, conditions and the alert lifecycle of every series.
    fn step(&mut self, now: u64, outcome: &mut Outcome) {
        let retention = self.resolved_retention.as_secs();
        let rules: BTreeMap<&str, &Rule> =
            self.policy.rules.iter().map(|r| (r.name.as_str(), r)).collect();
        for r in rules.keys() {
            outcome.counts.insert(r.to_string(), (0, 0));
        }
        let mut finished = Vec::new();
        for (id, s) in self.state.series.iter_mut() {
            let Some(&rule) = rules.get(&*s.labels.rule) else {
                finished.push(id.clone());
                continue;
            };
            let window = rule.condition.window().as_secs().max(1);
            while s.samples.front().is_some_and(|x| x.t + window <= now) {
                s.samples.pop_front();
            }
            if s.event_at().is_some_and(|t| t + window <= now) {
                s.set_event_at(None);
            }
            let (bytes, packets) = measured(rule, s);
            let holds = holds(rule, s, bytes, packets, window);
            if holds {
                s.last_bytes = bytes;
                s.last_packets = packets;
            }
            let phase = match (s.phase(), holds) {
                (Phase::Inactive, true) if rule.for_.is_zero() => fire(rule, s, now, outcome),
                (Phase::Inactive, true) => Phase::Pending { active_at: now },
                (Phase::Pending { active_at }, true)
                    if now.saturating_sub(active_at) >= rule.for_.as_secs() =>
                {
                    fire(rule, s, now, outcome)
                }
                (Phase::Firing { fired_at }, false) => {
                    s.set_resolved(Some((fired_at, now)));
                    Phase::Inactive
                }
                (phase @ (Phase::Pending { .. } | Phase::Firing { .. }), true) => phase,
                (_, false) => Phase::Inactive,
            };
            s.set_phase(phase);
            if s.resolved().is_some_and(|(_, at)| now.saturating_sub(at) >= retention) {
                s.set_resolved(None);
            }
            // Every rule has its entry (filled above).
            let mut counts = outcome.counts.get_mut(&*s.labels.rule);
            match phase {
                Phase::Pending { .. } => counts.iter_mut().for_each(|c| c.0 += 1),
                Phase::Firing { fired_at } => {
                    counts.iter_mut().for_each(|c| c.1 += 1);
                    outcome.alerts.push(s.status(rule, id, fired_at, None));
                    outcome.alert_series.push(id.to_string());
                }
                Phase::Inactive => {}
            }
            if let Some((fired_at, resolved_at)) = s.resolved()
                && !matches!(phase, Phase::Firing { .. })
            {
                outcome.alerts.push(s.status(rule, id, fired_at, Some(resolved_at)));
                outcome.alert_series.push(id.to_string());
            }
            if s.samples.is_empty()
                && s.event_at().is_none()
                && phase == Phase::Inactive
                && s.resolved().is_none()
            {
                finished.push(id.clone());
            }
        }
        for id in finished {
            self.state.series.remove(&id);
        }
        self.interner.release();
        outcome.series = self.state.series.len();
    }
}

fn fire(rule: &Rule, s: &Series, now: u64, outcome: &mut Outcome) -> Phase {
    outcome.fired.push((rule.name.clone(), s.labels.client.to_string()));
    Phase::Firing { fired_at: now }
}

fn direction_index(d: Direction) -> &'static [usize] {
    match d {
        Direction::Upload => &[0],
        Direction::Download => &[1],
        Direction::Both => &[0, 1],
    }
}

fn condition_direction(c: &Condition) -> Direction {
    match c {
        Condition::Traffic(c) => c.direction,
        Condition::Volume(c) => c.direction,
        Condition::Rate(c) => c.direction,
        _ => Direction::Both,
    }
}

/// Bytes and packets in the window, in the condition's direction.
fn measured(rule: &Rule, s: &Series) -> (u64, u64) {
    let dirs = direction_index(condition_direction(&rule.condition));
    s.samples.iter().fold((0, 0), |(b, p), x| {
        (
            b + dirs.iter().map(|&d| x.bytes[d]).sum::<u64>(),
            p + dirs.iter().map(|&d| x.packets[d]).sum::<u64>(),
        )
    })
}

fn holds(rule: &Rule, s: &Series, bytes: u64, packets: u64, window: u64) -> bool {
    match &rule.condition {
        Condition::Traffic(_) | Condition::DnsBypass(_) => packets > 0,
        Condition::Volume(v) => bytes > v.above.0,
        Condition::Rate(r) => match (r.bytes_per_second, r.packets_per_second) {
            (Some(bps), _) => bytes as f64 / window as f64 > bps.0 as f64,
            (None, Some(pps)) => packets as f64 / window as f64 > pps as f64,
            (None, None) => false,
        },
        Condition::NewDestination(_) | Condition::NewDevice(_) => s.event_at().is_some(),
    }
}

/// An alert's identity: the rule's labels and which rule, client and destination.
fn labels(rule: &Rule, s: &Series, destination: &str) -> BTreeMap<String, String> {
    let mut labels = rule.labels.clone();
    labels.insert("alertname".into(), rule.name.clone());
    labels.insert("severity".into(), rule.severity.clone());
    labels.insert("client".into(), s.labels.client.to_string());
    labels.insert("mac".into(), s.labels.mac.to_string());
    if !destination.is_empty() {
        labels.insert("destination".into(), destination.to_string());
    }
    labels
}

fn alert(
    rule: &Rule,
    s: &Series,
    destination: &str,
    fired_at: u64,
    resolved_at: Option<u64>,
    external_url: &str,
) -> Alert {
    let window = rule.condition.window();
    let l = &*s.labels;
    let values = BTreeMap::from([
        ("rule", rule.name.clone()),
        ("severity", rule.severity.clone()),
        ("client", l.client.to_string()),
        ("mac", l.mac.to_string()),
        ("group", l.group.to_string()),
        ("vendor", l.vendor.to_string()),
        ("destination", destination.to_string()),
        ("country", l.country.to_string()),
        ("asn", if l.asn == 0 { String::new() } else { format!("AS{}", l.asn) }),
        ("bytes", human_bytes(s.last_bytes)),
        ("packets", s.last_packets.to_string()),
        ("rate", format!("{}/s", human_bytes(s.last_bytes / window.as_secs().max(1)))),
        ("window", humantime::format_duration(window).to_string()),
        ("for", humantime::format_duration(rule.for_).to_string()),
    ]);
    let annotations = BTreeMap::from([
        ("summary".to_string(), rule.summary.render(&values)),
        ("description".to_string(), rule.description.render(&values)),
    ]);
    Alert {
        labels: labels(rule, s, destination),
        annotations,
        generator_url: format!(
            "{}/api/v1/flows?client={}",
            external_url.trim_end_matches('/'),
            l.mac
        ),
        starts_at: at(fired_at),
        resolved_at: resolved_at.map(at),
    }
}
