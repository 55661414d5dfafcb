//! Evaluates the policy on every poll: one series of samples per (rule, client, destination),
//! its condition over a sliding window, and the alert lifecycle Prometheus uses: pending, then
//! firing once the condition held for `for`, resolved when it clears (kept for re-sending).
//! The whole state is serializable and saved with the counters, so a restart loses nothing:
//! not the windows, not the alerts, not what was learnt about destinations and devices.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    time::{Duration, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use super::{
    Policy, Rule,
    matcher::{ClientFacts, FlowFacts, PollFacts, destination_label},
    spec::{Condition, Direction, GroupBy},
};
use crate::{alerting::Alert, api::human_bytes};

/// Most series held over all rules; beyond it new ones are not tracked (and counted).
pub const MAX_SERIES: usize = 20_000;
/// Most destinations remembered per client and level for `new_destination`.
pub const MAX_KNOWN_PER_CLIENT: usize = 20_000;
/// Most devices remembered for `new_device` (randomized MACs add up over the years).
pub const MAX_KNOWN_DEVICES: usize = 100_000;

/// What one evaluation produced.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Firing alerts and the ones resolved within the retention.
    pub alerts: Vec<Alert>,
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
    rule: String,
    mac: String,
    destination: String,
    /// Labels of the client and destination as of the series' start (stable alert identity).
    client: String,
    group: String,
    vendor: String,
    country: String,
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
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct KnownDestinations {
    first_seen: u64,
    /// Per grouping level (domain, asn...): every destination seen.
    seen: BTreeMap<String, BTreeSet<String>>,
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
        state: EvalState,
        external_url: String,
        resolved_retention: Duration,
    ) -> Evaluator {
        Evaluator {
            policy,
            state,
            external_url,
            resolved_retention,
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
            .retain(|_, s| names.contains(s.rule.as_str()));
        self.policy = policy;
        self.external_url = external_url;
        self.resolved_retention = resolved_retention;
    }

    pub fn evaluate(&mut self, facts: &PollFacts) -> Outcome {
        let now = facts.now;
        if self.state.started == 0 {
            self.state.started = now;
        }
        let mut outcome = Outcome::default();
        let new_devices = self.learn_devices(facts);
        let new_destinations = self.learn_destinations(facts);
        let rules = std::mem::take(&mut self.policy.rules);
        for rule in &rules {
            if rule.schedule.as_ref().is_some_and(|s| !s.contains(now)) {
                continue;
            }
            match &rule.condition {
                Condition::NewDevice(c) => {
                    for &(i, first_seen) in &new_devices {
                        let client = &facts.clients[i];
                        let learnt =
                            first_seen < self.state.started.saturating_add(c.learning.as_secs());
                        if learnt
                            || !rule.matches.matches_client(client)
                            || self.device_excepted(rule, client)
                        {
                            continue;
                        }
                        if let Some(s) = self.series(rule, client, None, &mut outcome) {
                            s.event_at = Some(now);
                        }
                    }
                }
                _ => {
                    for (i, f) in facts.flows.iter().enumerate() {
                        let client = &facts.clients[f.client];
                        if !rule.matches.matches_flow(client, f)
                            || self.flow_excepted(rule, client, f)
                        {
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
                        let event = matches!(rule.condition, Condition::NewDestination(_));
                        if let Some(s) = self.series(rule, client, Some(f), &mut outcome) {
                            if event {
                                s.event_at = Some(now);
                            }
                            s.samples.push_back(Sample {
                                t: now,
                                bytes: [f.upload_bytes, f.download_bytes],
                                packets: [f.upload_packets, f.download_packets],
                            });
                        }
                    }
                }
            }
        }
        self.policy.rules = rules;
        self.step(now, &mut outcome);
        outcome
    }

    /// Clients never seen before, as (index, first seen) — recorded on the way.
    fn learn_devices(&mut self, facts: &PollFacts) -> Vec<(usize, u64)> {
        let mut new = Vec::new();
        for (i, c) in facts.clients.iter().enumerate() {
            if !self.state.devices.contains_key(&c.mac_text) && self.state.devices.len() < MAX_KNOWN_DEVICES {
                self.state.devices.insert(c.mac_text.clone(), facts.now);
                new.push((i, facts.now));
            }
        }
        new
    }

    /// Flows (indices) reaching a destination their client had never reached before, after
    /// that client's learning period. Learnt from all traffic, before matches and exceptions.
    fn learn_destinations(&mut self, facts: &PollFacts) -> BTreeSet<usize> {
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
        for (i, f) in facts.flows.iter().enumerate() {
            let client = &facts.clients[f.client];
            let known = self
                .state
                .destinations
                .entry(client.mac_text.clone())
                .or_insert_with(|| KnownDestinations {
                    first_seen: facts.now,
                    seen: BTreeMap::new(),
                });
            for &(by, learning) in &rules {
                let set = known.seen.entry(level_name(by).to_string()).or_default();
                let label = destination_label(f, by);
                if set.contains(&label) || set.len() >= MAX_KNOWN_PER_CLIENT {
                    continue;
                }
                set.insert(label);
                if facts.now >= known.first_seen.saturating_add(learning) {
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
        if !self.state.series.contains_key(&id) {
            if self.state.series.len() >= MAX_SERIES {
                outcome.series_dropped += 1;
                return None;
            }
            outcome
                .started
                .push((rule.name.clone(), client.name.clone()));
        }
        Some(self.state.series.entry(id).or_insert_with(|| Series {
            rule: rule.name.clone(),
            mac: client.mac_text.clone(),
            destination,
            client: client.name.clone(),
            group: client.group.clone(),
            vendor: client.vendor.clone(),
            country: f.map(|f| f.country.clone()).unwrap_or_default(),
            asn: f.map(|f| f.asn).unwrap_or(0),
            ..Series::default()
        }))
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
            let Some(rule) = rules.get(s.rule.as_str()) else {
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
            let counts = outcome.counts.entry(s.rule.clone()).or_default();
            match s.phase {
                Phase::Pending { .. } => counts.0 += 1,
                Phase::Firing { fired_at } => {
                    counts.1 += 1;
                    outcome
                        .alerts
                        .push(self::alert(rule, s, fired_at, None, &self.external_url));
                }
                Phase::Inactive => {}
            }
            if let Some((fired_at, resolved_at)) = s.resolved
                && !matches!(s.phase, Phase::Firing { .. })
            {
                outcome.alerts.push(self::alert(
                    rule,
                    s,
                    fired_at,
                    Some(resolved_at),
                    &self.external_url,
                ));
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
        outcome.series = self.state.series.len();
    }
}

fn fire(rule: &Rule, s: &Series, now: u64, outcome: &mut Outcome) -> Phase {
    outcome.fired.push((rule.name.clone(), s.client.clone()));
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

fn alert(
    rule: &Rule,
    s: &Series,
    fired_at: u64,
    resolved_at: Option<u64>,
    external_url: &str,
) -> Alert {
    let mut labels = rule.labels.clone();
    labels.insert("alertname".into(), rule.name.clone());
    labels.insert("severity".into(), rule.severity.clone());
    labels.insert("client".into(), s.client.clone());
    labels.insert("mac".into(), s.mac.clone());
    if !s.destination.is_empty() {
        labels.insert("destination".into(), s.destination.clone());
    }
    let window = rule.condition.window();
    let values = BTreeMap::from([
        ("rule", rule.name.clone()),
        ("severity", rule.severity.clone()),
        ("client", s.client.clone()),
        ("mac", s.mac.clone()),
        ("group", s.group.clone()),
        ("vendor", s.vendor.clone()),
        ("destination", s.destination.clone()),
        ("country", s.country.clone()),
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
    let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(secs);
    Alert {
        labels,
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
