//! Evaluates the policy on every poll: one series of samples per (rule, client, destination),
//! its condition over a sliding window, and the alert lifecycle Prometheus uses: pending, then
//! firing once the condition held for `for`, resolved when it clears (kept for re-sending).
//! The whole state is serializable and saved with the counters, so a restart loses nothing:
//! not the windows, not the alerts, not what was learnt about destinations and devices.

mod alert;
mod series;
mod stored;

use std::{
    collections::{BTreeMap, BTreeSet, btree_map},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use alert::alert;
use series::{FINGERPRINT, Interner, Phase, Sample, Series, destination_of, series_id};
pub use stored::EvalState;
use stored::{KnownDestinations, Levels, Seen, level_name};

use super::{
    Policy, Rule,
    condition::{Feed, FlowFilter, Measured},
    matcher::{ClientFacts, FlowFacts, PollFacts, destination_label},
    values::GroupBy,
};
use crate::types::{Alert, AlertStatus, address::Reach};

/// Most series held over all rules; beyond it new ones are not tracked (and counted).
pub const MAX_SERIES: usize = 20_000;
/// Most destinations remembered per client and level for `new_destination`.
pub const MAX_KNOWN_PER_CLIENT: usize = 20_000;
/// Most devices remembered for `new_device` (randomized MACs add up over the years).
pub const MAX_KNOWN_DEVICES: usize = 100_000;

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

/// The policy with everything it remembers, fed one poll at a time.
pub struct Evaluator {
    policy: Policy,
    state: EvalState,
    /// Base URL of the sensor's API, for generatorURL.
    external_url: String,
    resolved_retention: Duration,
    /// The series' shared labels; released at every step.
    interner: Interner,
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

    /// The LAN prefixes changed (followed from the interface): its hosts are the allowed
    /// resolvers from now on.
    pub fn set_lan_prefixes(&mut self, lan_prefixes: &[ipnet::IpNet]) {
        self.policy.allow_lan_resolvers(lan_prefixes);
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
            let learning = match rule.condition.feed() {
                Feed::NewDevices { learning } => learning,
                Feed::Flows(_) => continue,
            };
            for &(i, first_seen) in &new_devices {
                let client = &clients[i];
                let learnt = first_seen < self.state.started.saturating_add(learning.as_secs());
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
            if rule.schedule.as_ref().is_some_and(|s| !s.contains(now)) {
                continue;
            }
            let filter = match rule.condition.feed() {
                Feed::Flows(filter) => filter,
                Feed::NewDevices { .. } => continue,
            };
            let window = rule.condition.window().as_secs().max(1);
            let event = rule.condition.is_event();
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
                    let counts = match filter {
                        FlowFilter::All => true,
                        FlowFilter::NewDestinations { .. } => {
                            new_destinations.get(i).copied().unwrap_or(false)
                        }
                        FlowFilter::DnsBypass => self.policy.dns.is_bypass(f),
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
        let rules: Vec<(GroupBy, u64)> =
            self.policy
                .rules
                .iter()
                .filter_map(|r| match r.condition.feed() {
                    Feed::Flows(FlowFilter::NewDestinations { by, learning }) => {
                        Some((by, learning.as_secs()))
                    }
                    Feed::Flows(FlowFilter::All | FlowFilter::DnsBypass)
                    | Feed::NewDevices { .. } => None,
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
                    // The network itself (multicast, broadcast, the router) is never a new
                    // destination: a phone's mDNS or router solicitation is not news.
                    if f.reach == Reach::Network {
                        continue;
                    }
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
            let (bytes, packets) = s.measured(rule.condition.direction());
            let holds = rule.condition.holds(&Measured {
                bytes,
                packets,
                window,
                event: s.event_at().is_some(),
            });
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

#[cfg(test)]
mod tests;
