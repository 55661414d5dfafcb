//! One Alertmanager's queue of alerts waiting to be posted: one entry per alert (fingerprint),
//! the newest state replacing an older one, bounded, oldest first out. When full, resolved
//! alerts go before firing ones: a lost resolution only leaves an alert to time out at its
//! `endsAt`, a lost firing alert is a missed notification.
//!
//! One exception to "the newest state wins": a resolution that arrives while its episode's
//! firing state was never delivered (Alertmanager down since the alert fired) does not replace
//! it. Alertmanager never notifies an alert it only learns as resolved, so the firing state
//! goes first, and the resolution is *held* until then, and then *delayed* by as long as the
//! alert fired (at most `max_hold`), so Alertmanager sees the episode as it would have live.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use crate::types::alert::Alert;

/// A queued alert. `seq` orders the queue (lower = older).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub seq: u64,
    pub fingerprint: u64,
    pub alert: Arc<Alert>,
}

impl Entry {
    fn is_resolved(&self) -> bool {
        self.alert.resolved_at.is_some()
    }
}

/// When the queue has something to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NextSend {
    Now,
    /// Only delayed resolutions: the first is due then.
    At(Instant),
    Idle,
}

#[derive(Debug)]
pub(crate) struct AlertQueue {
    capacity: usize,
    /// Longest a resolution is delayed behind its late firing state.
    max_hold: Duration,
    next_seq: u64,
    /// fingerprint → (seq, resolved), of the entries ready to go (`firing`, `resolved`).
    index: HashMap<u64, (u64, bool)>,
    firing: BTreeMap<u64, Entry>,
    resolved: BTreeMap<u64, Entry>,
    /// Resolutions waiting for their episode's firing state (queued or in flight) to be
    /// delivered.
    held: HashMap<u64, Entry>,
    /// Resolutions whose firing state was delivered late, by when they are due.
    delayed: BTreeMap<(Instant, u64), Entry>,
    delayed_at: HashMap<u64, (Instant, u64)>,
    /// Firing entries taken in a batch and not settled yet: fingerprint → episode start.
    in_flight: HashMap<u64, SystemTime>,
    /// The firing episode (start) Alertmanager has received, per fingerprint.
    delivered: HashMap<u64, SystemTime>,
}

impl AlertQueue {
    pub fn new(capacity: usize, max_hold: Duration) -> AlertQueue {
        AlertQueue {
            capacity: capacity.max(1),
            max_hold,
            next_seq: 0,
            index: HashMap::new(),
            firing: BTreeMap::new(),
            resolved: BTreeMap::new(),
            held: HashMap::new(),
            delayed: BTreeMap::new(),
            delayed_at: HashMap::new(),
            in_flight: HashMap::new(),
            delivered: HashMap::new(),
        }
    }

    /// Every queued alert state, held and delayed resolutions included.
    pub fn len(&self) -> usize {
        self.index.len() + self.held.len() + self.delayed.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether something can be sent now, later, or nothing is waiting.
    pub fn next_send(&self, now: Instant) -> NextSend {
        if !self.index.is_empty() {
            return NextSend::Now;
        }
        match self.delayed.first_key_value() {
            Some(((at, _), _)) if *at <= now => NextSend::Now,
            Some(((at, _), _)) => NextSend::At(*at),
            None => NextSend::Idle,
        }
    }

    /// Queues the newest state of an alert (replacing a queued older one, which moves it to
    /// the back; but see the module doc for a resolution behind an undelivered firing state).
    /// Returns how many alerts were dropped to make room.
    pub fn push(&mut self, fingerprint: u64, alert: Arc<Alert>) -> usize {
        let seq = self.next_seq;
        self.next_seq += 1;
        let entry = Entry { seq, fingerprint, alert };
        if entry.is_resolved() {
            // A resolution already waiting keeps its place and time; only its text is newer.
            if let Some(key) = self.delayed_at.get(&fingerprint) {
                if let Some(waiting) = self.delayed.get_mut(key) {
                    waiting.alert = entry.alert;
                }
                return 0;
            }
            if let Some(waiting) = self.held.get_mut(&fingerprint) {
                waiting.alert = entry.alert;
                return 0;
            }
            if self.firing_undelivered(fingerprint, entry.alert.starts_at) {
                self.held.insert(fingerprint, entry);
                return self.trim();
            }
        } else {
            // A new episode (or a re-send): what Alertmanager must learn now is that it fires.
            self.held.remove(&fingerprint);
            if let Some(key) = self.delayed_at.remove(&fingerprint) {
                self.delayed.remove(&key);
            }
        }
        self.remove(fingerprint);
        self.insert(entry);
        self.trim()
    }

    /// Whether the firing state of the episode starting at `starts_at` is queued or in flight,
    /// and Alertmanager has not received it yet.
    fn firing_undelivered(&self, fingerprint: u64, starts_at: SystemTime) -> bool {
        if self.delivered.get(&fingerprint) == Some(&starts_at) {
            return false;
        }
        let queued = match self.index.get(&fingerprint) {
            Some((seq, false)) => {
                self.firing.get(seq).is_some_and(|e| e.alert.starts_at == starts_at)
            }
            _ => false,
        };
        queued || self.in_flight.get(&fingerprint) == Some(&starts_at)
    }

    /// Takes up to `max` of the oldest alerts that are due at `now`.
    pub fn take_batch(&mut self, max: usize, now: Instant) -> Vec<Entry> {
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let entry = entry.remove();
            self.delayed_at.remove(&entry.fingerprint);
            self.insert(entry);
        }
        let mut batch = Vec::with_capacity(max.min(self.index.len()));
        while batch.len() < max {
            let oldest_firing = self.firing.first_key_value().map(|(s, _)| *s);
            let oldest_resolved = self.resolved.first_key_value().map(|(s, _)| *s);
            let entry = match (oldest_firing, oldest_resolved) {
                (Some(f), Some(r)) if r < f => self.resolved.pop_first(),
                (Some(_), _) => self.firing.pop_first(),
                (None, Some(_)) => self.resolved.pop_first(),
                (None, None) => None,
            };
            let Some((_, entry)) = entry else { break };
            self.index.remove(&entry.fingerprint);
            if !entry.is_resolved() {
                self.in_flight.insert(entry.fingerprint, entry.alert.starts_at);
            }
            batch.push(entry);
        }
        batch
    }

    /// A batch is over: Alertmanager took it (`accepted`) or rejected it for good. A firing
    /// state that went out releases its held resolution, due after as long as the alert fired
    /// (at most `max_hold`; at once when rejected).
    pub fn settle(&mut self, batch: &[Entry], accepted: bool, now: Instant) {
        for entry in batch {
            let fp = entry.fingerprint;
            if entry.is_resolved() {
                if accepted {
                    self.delivered.remove(&fp);
                }
                continue;
            }
            self.in_flight.remove(&fp);
            if accepted {
                self.delivered.insert(fp, entry.alert.starts_at);
            }
            if let Some(resolution) = self.held.remove(&fp) {
                let fired = resolution
                    .alert
                    .resolved_at
                    .and_then(|r| r.duration_since(resolution.alert.starts_at).ok())
                    .unwrap_or_default();
                let hold = if accepted { fired.min(self.max_hold) } else { Duration::ZERO };
                let key = (now + hold, resolution.seq);
                self.delayed_at.insert(fp, key);
                self.delayed.insert(key, resolution);
            }
        }
    }

    /// Puts a batch that failed to go out back in its place (at the front), except alerts
    /// queued again meanwhile: their newer state wins (a resolution held behind a firing
    /// state of the batch stays held). Returns how many were dropped for room.
    pub fn requeue(&mut self, batch: Vec<Entry>) -> usize {
        for entry in batch {
            let fp = entry.fingerprint;
            if !entry.is_resolved() {
                self.in_flight.remove(&fp);
            }
            let newer = self.index.contains_key(&fp)
                || self.delayed_at.contains_key(&fp)
                || (entry.is_resolved() && self.held.contains_key(&fp));
            if !newer {
                self.insert(entry);
            }
        }
        self.trim()
    }

    /// Forgets the delivered episodes of alerts no longer passed (`keep` false).
    pub fn forget_delivered(&mut self, keep: impl Fn(u64) -> bool) {
        self.delivered.retain(|fp, _| keep(*fp));
    }

    /// Changes the capacity and the longest hold; returns how many alerts were dropped to fit.
    pub fn set_limits(&mut self, capacity: usize, max_hold: Duration) -> usize {
        self.capacity = capacity.max(1);
        self.max_hold = max_hold;
        self.trim()
    }

    fn insert(&mut self, entry: Entry) {
        let resolved = entry.is_resolved();
        self.index.insert(entry.fingerprint, (entry.seq, resolved));
        let map = if resolved { &mut self.resolved } else { &mut self.firing };
        map.insert(entry.seq, entry);
    }

    fn remove(&mut self, fingerprint: u64) {
        if let Some((seq, resolved)) = self.index.remove(&fingerprint) {
            let map = if resolved { &mut self.resolved } else { &mut self.firing };
            map.remove(&seq);
        }
    }

    /// Drops the oldest resolved alerts (ready, then delayed, then held), then the oldest
    /// firing ones, down to the capacity. A firing state goes only once no resolution is
    /// left, so no held resolution outlives its firing state.
    fn trim(&mut self) -> usize {
        let mut dropped = 0;
        while self.len() > self.capacity {
            if let Some((_, entry)) = self.resolved.pop_first() {
                self.index.remove(&entry.fingerprint);
            } else if let Some((_, entry)) = self.delayed.pop_first() {
                self.delayed_at.remove(&entry.fingerprint);
            } else if let Some(fp) = self.held.iter().min_by_key(|(_, e)| e.seq).map(|(fp, _)| *fp)
            {
                self.held.remove(&fp);
            } else if let Some((_, entry)) = self.firing.pop_first() {
                self.index.remove(&entry.fingerprint);
            } else {
                break;
            }
            dropped += 1;
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeMap,
        sync::OnceLock,
        time::{Duration, SystemTime},
    };

    use super::*;

    const HOLD: Duration = Duration::from_secs(30);

    /// A fixed "now" for the queue's timing decisions.
    fn now() -> Instant {
        static NOW: OnceLock<Instant> = OnceLock::new();
        *NOW.get_or_init(Instant::now)
    }

    fn secs(s: u64) -> Instant {
        now() + Duration::from_secs(s)
    }

    /// Fired at t, resolved (when `resolved`) 60 s later.
    fn alert(name: &str, resolved: bool) -> Arc<Alert> {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        Arc::new(Alert {
            labels: BTreeMap::from([("alertname".to_string(), name.to_string())]),
            annotations: BTreeMap::new(),
            generator_url: String::new(),
            starts_at: t,
            resolved_at: resolved.then_some(t + Duration::from_secs(60)),
        })
    }

    fn names(entries: &[Entry]) -> Vec<String> {
        entries.iter().map(|e| e.alert.labels["alertname"].clone()).collect()
    }

    /// Fingerprints are the queue's keys; tests use small numbers for readability.
    fn push(q: &mut AlertQueue, fp: u64, name: &str, resolved: bool) -> usize {
        q.push(fp, alert(name, resolved))
    }

    /// Takes everything due now and has Alertmanager accept it.
    fn deliver(q: &mut AlertQueue) -> Vec<Entry> {
        let batch = q.take_batch(64, now());
        q.settle(&batch, true, now());
        batch
    }

    #[test]
    fn a_newer_state_replaces_the_queued_one() {
        let mut q = AlertQueue::new(10, HOLD);
        push(&mut q, 1, "a", false);
        push(&mut q, 2, "b", false);
        assert_eq!(names(&deliver(&mut q)), ["a", "b"]);
        // Re-sends; then a resolves: its firing state was delivered, the resolution replaces it.
        push(&mut q, 1, "a", false);
        push(&mut q, 2, "b", false);
        push(&mut q, 1, "a", true);
        assert_eq!(q.len(), 2);
        let batch = q.take_batch(64, now());
        // "a" was replaced, so it is now the newest.
        assert_eq!(names(&batch), ["b", "a"]);
        assert_eq!(batch[1].alert.resolved_at, Some(alert("a", true).resolved_at.unwrap()));
        assert!(q.is_empty());
    }

    #[test]
    fn a_resolution_waits_for_its_undelivered_firing_state_then_as_long_as_it_fired() {
        // Alertmanager down since "a" fired (60 s); "b" fired 60 s too, hold capped at 30 s.
        let mut q = AlertQueue::new(10, Duration::from_secs(90));
        push(&mut q, 1, "a", false);
        assert_eq!(push(&mut q, 1, "a", true), 0);
        assert_eq!(q.len(), 2, "both states kept");
        // A failed attempt: the firing state goes back, the resolution stays behind it.
        let failed = q.take_batch(64, now());
        assert_eq!(names(&failed), ["a"]);
        assert!(failed[0].alert.resolved_at.is_none());
        assert_eq!(q.next_send(now()), NextSend::Idle, "the resolution waits for the firing");
        assert_eq!(q.requeue(failed), 0);
        // A re-send of the resolution meanwhile changes nothing.
        assert_eq!(push(&mut q, 1, "a", true), 0);
        assert_eq!(q.len(), 2);
        // Back up: the firing state goes alone, the resolution 60 s later.
        let batch = deliver(&mut q);
        assert_eq!((names(&batch), batch[0].alert.resolved_at), (vec!["a".to_string()], None));
        assert_eq!(q.len(), 1);
        assert_eq!(q.next_send(now()), NextSend::At(secs(60)));
        assert!(q.take_batch(64, secs(59)).is_empty());
        let later = q.take_batch(64, secs(60));
        assert_eq!(names(&later), ["a"]);
        assert!(later[0].alert.resolved_at.is_some());
        assert!(q.is_empty());

        let mut capped = AlertQueue::new(10, HOLD);
        push(&mut capped, 2, "b", false);
        push(&mut capped, 2, "b", true);
        deliver(&mut capped);
        assert_eq!(capped.next_send(now()), NextSend::At(secs(30)));
    }

    #[test]
    fn a_resolution_arriving_while_its_firing_state_is_in_flight_is_held_too() {
        let mut q = AlertQueue::new(10, HOLD);
        push(&mut q, 1, "a", false);
        let batch = q.take_batch(64, now());
        push(&mut q, 1, "a", true);
        assert_eq!(q.next_send(now()), NextSend::Idle);
        q.settle(&batch, true, now());
        assert_eq!(q.next_send(now()), NextSend::At(secs(30)));
    }

    #[test]
    fn a_rejected_firing_state_releases_its_resolution_at_once() {
        let mut q = AlertQueue::new(10, HOLD);
        push(&mut q, 1, "a", false);
        push(&mut q, 1, "a", true);
        let batch = q.take_batch(64, now());
        q.settle(&batch, false, now());
        assert_eq!(q.next_send(now()), NextSend::Now);
        assert!(q.take_batch(64, now())[0].alert.resolved_at.is_some());
    }

    #[test]
    fn a_new_episode_replaces_a_waiting_resolution() {
        let mut q = AlertQueue::new(10, HOLD);
        push(&mut q, 1, "a", false);
        push(&mut q, 1, "a", true);
        let mut again = Arc::unwrap_or_clone(alert("a", false));
        again.starts_at += Duration::from_secs(120);
        q.push(1, Arc::new(again.clone()));
        assert_eq!(q.len(), 1);
        let batch = deliver(&mut q);
        assert_eq!(batch[0].alert.starts_at, again.starts_at);
        assert!(q.is_empty());
    }

    #[test]
    fn overflow_drops_the_oldest_resolved_then_the_oldest_firing() {
        let mut q = AlertQueue::new(3, HOLD);
        assert_eq!(push(&mut q, 1, "f1", false), 0);
        assert_eq!(push(&mut q, 2, "r2", true), 0);
        assert_eq!(push(&mut q, 3, "f3", false), 0);
        // Full: the resolved r2 goes although f1 is older.
        assert_eq!(push(&mut q, 4, "f4", false), 1);
        // Full of firing alerts: a new resolved one is the one dropped, newest as it is.
        assert_eq!(push(&mut q, 5, "r5", true), 1);
        // Full, no resolved left: the oldest firing (f1) goes.
        assert_eq!(push(&mut q, 6, "f6", false), 1);
        // The resolution of an undelivered firing alert waits behind it: full, so it goes.
        assert_eq!(push(&mut q, 3, "f3", true), 1);
        let batch = q.take_batch(64, now());
        assert_eq!(names(&batch), ["f3", "f4", "f6"]);
        assert!(batch.iter().all(|e| e.alert.resolved_at.is_none()));
    }

    #[test]
    fn replacing_does_not_grow_or_drop() {
        let mut q = AlertQueue::new(2, HOLD);
        push(&mut q, 1, "a", false);
        push(&mut q, 2, "b", false);
        deliver(&mut q);
        push(&mut q, 1, "a", false);
        push(&mut q, 2, "b", false);
        assert_eq!(push(&mut q, 1, "a", true), 0);
        assert_eq!(push(&mut q, 2, "b", true), 0);
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn batches_are_oldest_first_and_bounded() {
        let mut q = AlertQueue::new(100, HOLD);
        for i in 0..70 {
            push(&mut q, i, &format!("a{i}"), i % 3 == 0);
        }
        let first = q.take_batch(64, now());
        assert_eq!(first.len(), 64);
        assert_eq!(names(&first), (0..64).map(|i| format!("a{i}")).collect::<Vec<_>>());
        assert_eq!(
            names(&q.take_batch(64, now())),
            (64..70).map(|i| format!("a{i}")).collect::<Vec<_>>()
        );
        assert!(q.take_batch(64, now()).is_empty());
    }

    #[test]
    fn a_failed_batch_goes_back_in_front_unless_newer_state_arrived() {
        let mut q = AlertQueue::new(10, HOLD);
        push(&mut q, 1, "a", false);
        push(&mut q, 2, "b", false);
        deliver(&mut q);
        push(&mut q, 1, "a", false);
        push(&mut q, 2, "b", false);
        let batch = q.take_batch(64, now());
        // While the batch was out: b resolved (its firing state was delivered before), c
        // fired.
        push(&mut q, 2, "b", true);
        push(&mut q, 3, "c", false);
        assert_eq!(q.requeue(batch), 0);
        let again = q.take_batch(64, now());
        assert_eq!(names(&again), ["a", "b", "c"]);
        assert!(again[1].alert.resolved_at.is_some(), "the newer (resolved) b was kept");
    }

    #[test]
    fn requeue_into_a_full_queue_drops_the_oldest() {
        let mut q = AlertQueue::new(2, HOLD);
        push(&mut q, 1, "a", false);
        let batch = q.take_batch(64, now());
        push(&mut q, 2, "b", false);
        push(&mut q, 3, "c", false);
        assert_eq!(q.requeue(batch), 1);
        assert_eq!(names(&q.take_batch(64, now())), ["b", "c"]);
    }

    #[test]
    fn shrinking_drops() {
        let mut q = AlertQueue::new(5, HOLD);
        for i in 0..5 {
            push(&mut q, i, &format!("a{i}"), i == 4);
        }
        assert_eq!(q.set_limits(3, HOLD), 2);
        assert_eq!(names(&q.take_batch(64, now())), ["a1", "a2", "a3"]);
    }
}
