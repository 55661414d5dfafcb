//! Evaluates the policy on every poll: one series of samples per (rule, client, destination),
//! its condition over a sliding window, and the alert lifecycle Prometheus uses: pending, then
//! firing once the condition held for `for`, resolved when it clears (kept for re-sending).
//! The whole state is serializable and saved with the counters, so a restart loses nothing:
//! not the windows, not the alerts, not what was learnt about destinations and devices.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet, VecDeque, btree_map},
    sync::Arc,
    hash::Hasher as _,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use super::{
    Policy, Rule,
    matcher::{ClientFacts, FlowFacts, PollFacts, destination_label, write_destination_label},
    spec::{Condition, Direction, GroupBy},
};
use crate::{
    alerting::{self, Alert, AlertStatus},
    api::human_bytes,
};

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

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Series {
    // Texts shared between series (the evaluator interns them): a client's or a rule's many
    // series do not each hold a copy. Saved as plain strings.
    rule: Arc<str>,
    mac: Arc<str>,
    destination: String,
    /// Labels of the client and destination as of the series' start (stable alert identity).
    client: Arc<str>,
    group: Arc<str>,
    vendor: Arc<str>,
    country: Arc<str>,
    asn: u32,
    samples: VecDeque<Sample>,
    /// For event conditions: when the event happened.
    event_at: Option<u64>,
    phase: Phase,
    /// The last instance that resolved, re-sent until the retention ends: (fired_at, resolved_at).
    resolved: Option<(u64, u64)>,
    /// Measured values the last time the condition held (for the templates).
    last_bytes: u64,
    last_packets: u64,
    /// Of the alert's labels, computed once (not saved: a restart computes it again).
    #[serde(skip)]
    fingerprint: Option<u64>,
}

impl Series {
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

    /// The status of this series' alert, fired at `fired_at` (and resolved at `resolved_at`).
    fn status(&mut self, rule: &Rule, fired_at: u64, resolved_at: Option<u64>) -> AlertStatus {
        let fingerprint = match self.fingerprint {
            Some(fp) => fp,
            None => *self.fingerprint.insert(alerting::fingerprint(&labels(rule, self))),
        };
        AlertStatus { fingerprint, starts_at: at(fired_at), resolved_at: resolved_at.map(at) }
    }
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct KnownDestinations {
    first_seen: u64,
    /// Per grouping level (domain, asn...): every destination seen.
    seen: BTreeMap<String, BTreeSet<Seen>>,
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
    series: BTreeMap<String, Series>,
}

pub struct Evaluator {
    policy: Policy,
    state: EvalState,
    /// Base URL of the sensor's API, for generatorURL.
    external_url: String,
    resolved_retention: Duration,
    /// The series' shared texts; one no series holds any more is dropped at the next step.
    texts: HashSet<Arc<str>>,
}

/// The one shared copy of `s` in `texts`.
fn intern(texts: &mut HashSet<Arc<str>>, s: &str) -> Arc<str> {
    if let Some(t) = texts.get(s) {
        return Arc::clone(t);
    }
    let t: Arc<str> = Arc::from(s);
    texts.insert(Arc::clone(&t));
    t
}

fn series_id(rule: &str, mac: &str, destination: &str) -> String {
    format!("{rule}\u{1f}{mac}\u{1f}{destination}")
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
        let mut texts = HashSet::new();
        // Loaded series share their texts too.
        for s in state.series.values_mut() {
            for t in [&mut s.rule, &mut s.mac, &mut s.client, &mut s.group, &mut s.vendor, &mut s.country] {
                *t = intern(&mut texts, t);
            }
        }
        Evaluator {
            policy,
            state,
            external_url,
            resolved_retention,
            texts,
        }
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
        self.state
            .series
            .retain(|_, s| names.contains(&*s.rule));
        // A rule's labels may have changed.
        for s in self.state.series.values_mut() {
            s.fingerprint = None;
        }
        self.policy = policy;
        self.external_url = external_url;
        self.resolved_retention = resolved_retention;
    }

    /// The alert `status` (of the last evaluation's `alert_series`) stands for; None if that
    /// series or its rule is gone.
    pub fn alert(&self, series: &str, status: &AlertStatus) -> Option<Alert> {
        let s = self.state.series.get(series)?;
        let rule = self.policy.rules.iter().find(|r| *r.name == *s.rule)?;
        let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Some(alert(rule, s, secs(status.starts_at), status.resolved_at.map(secs), &self.external_url))
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
                if learnt || !rule.matches.matches_client(client) || self.device_excepted(rule, client) {
                    continue;
                }
                if let Some(s) = self.series(rule, client, None, &mut outcome) {
                    s.event_at = Some(now);
                }
            }
        }
        self.policy.rules = rules;
        outcome
    }

    /// Flows that gained traffic in this poll (`f.client` indexes `clients`, the ones given
    /// to [`Evaluator::begin`]).
    pub fn add_flows(&mut self, outcome: &mut Outcome, now: u64, clients: &[ClientFacts], flows: &[FlowFacts]) {
        let new_destinations = self.learn_destinations(now, clients, flows);
        let rules = std::mem::take(&mut self.policy.rules);
        for rule in &rules {
            if rule.schedule.as_ref().is_some_and(|s| !s.contains(now)) || matches!(rule.condition, Condition::NewDevice(_)) {
                continue;
            }
            let window = rule.condition.window().as_secs().max(1);
            let event = matches!(rule.condition, Condition::NewDestination(_));
            for (i, f) in flows.iter().enumerate() {
                let client = &clients[f.client];
                if !rule.matches.matches_flow(client, f) || self.flow_excepted(rule, client, f) {
                    continue;
                }
                let counts = match &rule.condition {
                    Condition::DnsBypass(_) => self.policy.dns.is_bypass(f),
                    Condition::NewDestination(_) => new_destinations.contains(&i),
                    _ => true,
                };
                if !counts {
                    continue;
                }
                if let Some(s) = self.series(rule, client, Some(f), outcome) {
                    if event {
                        s.event_at = Some(now);
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
        self.policy.rules = rules;
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
            if !self.state.devices.contains_key(&c.mac_text) && self.state.devices.len() < MAX_KNOWN_DEVICES {
                self.state.devices.insert(c.mac_text.clone(), now);
                new.push((i, now));
            }
        }
        new
    }

    /// Flows (indices) reaching a destination their client had never reached before, after
    /// that client's learning period. Learnt from all traffic, before matches and exceptions.
    fn learn_destinations(&mut self, now: u64, clients: &[ClientFacts], flows: &[FlowFacts]) -> BTreeSet<usize> {
        let mut new = BTreeSet::new();
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
        for (i, f) in flows.iter().enumerate() {
            let client = &clients[f.client];
            // Looked up by reference: keys are allocated once per client and level, not per flow.
            let mac = client.mac_text.as_str();
            if !self.state.destinations.contains_key(mac) {
                let known = KnownDestinations { first_seen: now, seen: BTreeMap::new() };
                self.state.destinations.insert(mac.to_string(), known);
            }
            let Some(known) = self.state.destinations.get_mut(mac) else { continue };
            for &(by, learning) in &rules {
                let level = level_name(by);
                if !known.seen.contains_key(level) {
                    known.seen.insert(level.to_string(), BTreeSet::new());
                }
                let Some(set) = known.seen.get_mut(level) else { continue };
                let seen = Seen::of(f, by);
                if set.contains(&seen) || set.len() >= MAX_KNOWN_PER_CLIENT {
                    continue;
                }
                set.insert(seen);
                if now >= known.first_seen.saturating_add(learning) {
                    new.insert(i);
                }
            }
        }
        new
    }

    fn flow_excepted(&self, rule: &Rule, client: &ClientFacts, f: &FlowFacts) -> bool {
        self.policy
            .exceptions
            .iter()
            .chain(&rule.except)
            .any(|e| e.matches_flow(client, f))
    }

    fn device_excepted(&self, rule: &Rule, client: &ClientFacts) -> bool {
        self.policy
            .exceptions
            .iter()
            .chain(&rule.except)
            .any(|e| e.matches_device(client))
    }

    fn series(
        &mut self,
        rule: &Rule,
        client: &ClientFacts,
        f: Option<&FlowFacts>,
        outcome: &mut Outcome,
    ) -> Option<&mut Series> {
        let destination = f
            .map(|f| destination_label(f, rule.group_by))
            .unwrap_or_default();
        let id = series_id(&rule.name, &client.mac_text, &destination);
        let full = self.state.series.len() >= MAX_SERIES;
        // One lookup: this runs for every flow a rule matches, every poll.
        match self.state.series.entry(id) {
            btree_map::Entry::Occupied(o) => Some(o.into_mut()),
            btree_map::Entry::Vacant(_) if full => {
                outcome.series_dropped += 1;
                None
            }
            btree_map::Entry::Vacant(v) => {
                outcome
                    .started
                    .push((rule.name.clone(), client.name.clone()));
                let texts = &mut self.texts;
                Some(v.insert(Series {
                    rule: intern(texts, &rule.name),
                    mac: intern(texts, &client.mac_text),
                    destination,
                    client: intern(texts, &client.name),
                    group: intern(texts, &client.group),
                    vendor: intern(texts, &client.vendor),
                    country: intern(texts, f.map_or("", |f| f.country.as_str())),
                    asn: f.map(|f| f.asn).unwrap_or(0),
                    // Most series see one step of traffic, not the four a first push reserves.
                    samples: VecDeque::with_capacity(1),
                    ..Series::default()
                }))
            }
        }
    }

    /// Windows, conditions and the alert lifecycle of every series.
    fn step(&mut self, now: u64, outcome: &mut Outcome) {
        let retention = self.resolved_retention.as_secs();
        let rules: BTreeMap<&str, &Rule> = self
            .policy
            .rules
            .iter()
            .map(|r| (r.name.as_str(), r))
            .collect();
        for r in rules.keys() {
            outcome.counts.insert(r.to_string(), (0, 0));
        }
        let mut finished = Vec::new();
        for (id, s) in self.state.series.iter_mut() {
            let Some(&rule) = rules.get(&*s.rule) else {
                finished.push(id.clone());
                continue;
            };
            let window = rule.condition.window().as_secs().max(1);
            while s.samples.front().is_some_and(|x| x.t + window <= now) {
                s.samples.pop_front();
            }
            if s.event_at.is_some_and(|t| t + window <= now) {
                s.event_at = None;
            }
            let (bytes, packets) = measured(rule, s);
            let holds = holds(rule, s, bytes, packets, window);
            if holds {
                s.last_bytes = bytes;
                s.last_packets = packets;
            }
            s.phase = match (s.phase, holds) {
                (Phase::Inactive, true) if rule.for_.is_zero() => fire(rule, s, now, outcome),
                (Phase::Inactive, true) => Phase::Pending { active_at: now },
                (Phase::Pending { active_at }, true)
                    if now.saturating_sub(active_at) >= rule.for_.as_secs() =>
                {
                    fire(rule, s, now, outcome)
                }
                (Phase::Firing { fired_at }, false) => {
                    s.resolved = Some((fired_at, now));
                    Phase::Inactive
                }
                (phase @ (Phase::Pending { .. } | Phase::Firing { .. }), true) => phase,
                (_, false) => Phase::Inactive,
            };
            if s.resolved
                .is_some_and(|(_, at)| now.saturating_sub(at) >= retention)
            {
                s.resolved = None;
            }
            // Every rule has its entry (filled above).
            let mut counts = outcome.counts.get_mut(&*s.rule);
            match s.phase {
                Phase::Pending { .. } => counts.iter_mut().for_each(|c| c.0 += 1),
                Phase::Firing { fired_at } => {
                    counts.iter_mut().for_each(|c| c.1 += 1);
                    outcome.alerts.push(s.status(rule, fired_at, None));
                    outcome.alert_series.push(id.clone());
                }
                Phase::Inactive => {}
            }
            if let Some((fired_at, resolved_at)) = s.resolved
                && !matches!(s.phase, Phase::Firing { .. })
            {
                outcome.alerts.push(s.status(rule, fired_at, Some(resolved_at)));
                outcome.alert_series.push(id.clone());
            }
            if s.samples.is_empty()
                && s.event_at.is_none()
                && s.phase == Phase::Inactive
                && s.resolved.is_none()
            {
                finished.push(id.clone());
            }
        }
        for id in finished {
            self.state.series.remove(&id);
        }
        self.texts.retain(|t| Arc::strong_count(t) > 1);
        outcome.series = self.state.series.len();
    }
}

fn fire(rule: &Rule, s: &Series, now: u64, outcome: &mut Outcome) -> Phase {
    outcome.fired.push((rule.name.clone(), s.client.to_string()));
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
        Condition::NewDestination(_) | Condition::NewDevice(_) => s.event_at.is_some(),
    }
}

/// An alert's identity: the rule's labels and which rule, client and destination.
fn labels(rule: &Rule, s: &Series) -> BTreeMap<String, String> {
    let mut labels = rule.labels.clone();
    labels.insert("alertname".into(), rule.name.clone());
    labels.insert("severity".into(), rule.severity.clone());
    labels.insert("client".into(), s.client.to_string());
    labels.insert("mac".into(), s.mac.to_string());
    if !s.destination.is_empty() {
        labels.insert("destination".into(), s.destination.clone());
    }
    labels
}

fn alert(
    rule: &Rule,
    s: &Series,
    fired_at: u64,
    resolved_at: Option<u64>,
    external_url: &str,
) -> Alert {
    let window = rule.condition.window();
    let values = BTreeMap::from([
        ("rule", rule.name.clone()),
        ("severity", rule.severity.clone()),
        ("client", s.client.to_string()),
        ("mac", s.mac.to_string()),
        ("group", s.group.to_string()),
        ("vendor", s.vendor.to_string()),
        ("destination", s.destination.clone()),
        ("country", s.country.to_string()),
        (
            "asn",
            if s.asn == 0 {
                String::new()
            } else {
                format!("AS{}", s.asn)
            },
        ),
        ("bytes", human_bytes(s.last_bytes)),
        ("packets", s.last_packets.to_string()),
        (
            "rate",
            format!("{}/s", human_bytes(s.last_bytes / window.as_secs().max(1))),
        ),
        ("window", humantime::format_duration(window).to_string()),
        ("for", humantime::format_duration(rule.for_).to_string()),
    ]);
    let annotations = BTreeMap::from([
        ("summary".to_string(), rule.summary.render(&values)),
        ("description".to_string(), rule.description.render(&values)),
    ]);
    Alert {
        labels: labels(rule, s),
        annotations,
        generator_url: format!(
            "{}/api/v1/flows?client={}",
            external_url.trim_end_matches('/'),
            s.mac
        ),
        starts_at: at(fired_at),
        resolved_at: resolved_at.map(at),
    }
}
