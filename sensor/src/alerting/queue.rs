//! One Alertmanager's queue of alerts waiting to be posted: one entry per alert (fingerprint),
//! the newest state replacing an older one, bounded, oldest first out. When full, resolved
//! alerts go before firing ones: a lost resolution only leaves an alert to time out at its
//! `endsAt`, a lost firing alert is a missed notification.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use crate::types::alert::Alert;

/// A queued alert. `seq` orders the queue (lower = older).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub seq: u64,
    pub fingerprint: u64,
    pub alert: Arc<Alert>,
}

#[derive(Debug)]
pub(crate) struct AlertQueue {
    capacity: usize,
    next_seq: u64,
    /// fingerprint → (seq, resolved)
    index: HashMap<u64, (u64, bool)>,
    firing: BTreeMap<u64, Entry>,
    resolved: BTreeMap<u64, Entry>,
}

impl AlertQueue {
    pub fn new(capacity: usize) -> AlertQueue {
        AlertQueue {
            capacity: capacity.max(1),
            next_seq: 0,
            index: HashMap::new(),
            firing: BTreeMap::new(),
            resolved: BTreeMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Queues the newest state of an alert (replacing a queued older one, which moves it to
    /// the back). Returns how many alerts were dropped to make room.
    pub fn push(&mut self, fingerprint: u64, alert: Arc<Alert>) -> usize {
        self.remove(fingerprint);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.insert(Entry { seq, fingerprint, alert });
        self.trim()
    }

    /// Takes up to `max` of the oldest alerts.
    pub fn take_batch(&mut self, max: usize) -> Vec<Entry> {
        let mut batch = Vec::with_capacity(max.min(self.len()));
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
            batch.push(entry);
        }
        batch
    }

    /// Puts a batch that failed to go out back in its place (at the front), except alerts
    /// queued again meanwhile: their newer state wins. Returns how many were dropped for room.
    pub fn requeue(&mut self, batch: Vec<Entry>) -> usize {
        for entry in batch {
            if !self.index.contains_key(&entry.fingerprint) {
                self.insert(entry);
            }
        }
        self.trim()
    }

    /// Changes the capacity; returns how many alerts were dropped to fit.
    pub fn set_capacity(&mut self, capacity: usize) -> usize {
        self.capacity = capacity.max(1);
        self.trim()
    }

    fn insert(&mut self, entry: Entry) {
        let resolved = entry.alert.resolved_at.is_some();
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

    /// Drops the oldest resolved alerts, then the oldest firing ones, down to the capacity.
    fn trim(&mut self) -> usize {
        let mut dropped = 0;
        while self.len() > self.capacity {
            let victim = match self.resolved.pop_first() {
                Some(v) => Some(v),
                None => self.firing.pop_first(),
            };
            let Some((_, entry)) = victim else { break };
            self.index.remove(&entry.fingerprint);
            dropped += 1;
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeMap,
        time::{Duration, SystemTime},
    };

    use super::*;

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

    #[test]
    fn a_newer_state_replaces_the_queued_one() {
        let mut q = AlertQueue::new(10);
        push(&mut q, 1, "a", false);
        push(&mut q, 2, "b", false);
        push(&mut q, 1, "a", true);
        assert_eq!(q.len(), 2);
        let batch = q.take_batch(64);
        // "a" was replaced, so it is now the newest.
        assert_eq!(names(&batch), ["b", "a"]);
        assert_eq!(batch[1].alert.resolved_at, Some(alert("a", true).resolved_at.unwrap()));
        assert!(q.is_empty());
    }

    #[test]
    fn overflow_drops_the_oldest_resolved_then_the_oldest_firing() {
        let mut q = AlertQueue::new(3);
        assert_eq!(push(&mut q, 1, "f1", false), 0);
        assert_eq!(push(&mut q, 2, "r2", true), 0);
        assert_eq!(push(&mut q, 3, "f3", false), 0);
        // Full: the resolved r2 goes although f1 is older.
        assert_eq!(push(&mut q, 4, "f4", false), 1);
        // Full of firing alerts: a new resolved one is the one dropped, newest as it is.
        assert_eq!(push(&mut q, 5, "r5", true), 1);
        // Full, no resolved left: the oldest firing (f1) goes.
        assert_eq!(push(&mut q, 6, "f6", false), 1);
        // The resolution of a queued alert replaces it: no growth, nothing dropped.
        assert_eq!(push(&mut q, 3, "f3", true), 0);
        let batch = q.take_batch(64);
        assert_eq!(names(&batch), ["f4", "f6", "f3"]);
        assert!(batch[2].alert.resolved_at.is_some());
    }

    #[test]
    fn replacing_does_not_grow_or_drop() {
        let mut q = AlertQueue::new(2);
        push(&mut q, 1, "a", false);
        push(&mut q, 2, "b", false);
        assert_eq!(push(&mut q, 1, "a", true), 0);
        assert_eq!(push(&mut q, 2, "b", true), 0);
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn batches_are_oldest_first_and_bounded() {
        let mut q = AlertQueue::new(100);
        for i in 0..70 {
            push(&mut q, i, &format!("a{i}"), i % 3 == 0);
        }
        let first = q.take_batch(64);
        assert_eq!(first.len(), 64);
        assert_eq!(names(&first), (0..64).map(|i| format!("a{i}")).collect::<Vec<_>>());
        assert_eq!(names(&q.take_batch(64)), (64..70).map(|i| format!("a{i}")).collect::<Vec<_>>());
        assert!(q.take_batch(64).is_empty());
    }

    #[test]
    fn a_failed_batch_goes_back_in_front_unless_newer_state_arrived() {
        let mut q = AlertQueue::new(10);
        push(&mut q, 1, "a", false);
        push(&mut q, 2, "b", false);
        let batch = q.take_batch(64);
        // While the batch was out: b resolved, c fired.
        push(&mut q, 2, "b", true);
        push(&mut q, 3, "c", false);
        assert_eq!(q.requeue(batch), 0);
        let again = q.take_batch(64);
        assert_eq!(names(&again), ["a", "b", "c"]);
        assert!(again[1].alert.resolved_at.is_some(), "the newer (resolved) b was kept");
    }

    #[test]
    fn requeue_into_a_full_queue_drops_the_oldest() {
        let mut q = AlertQueue::new(2);
        push(&mut q, 1, "a", false);
        let batch = q.take_batch(64);
        push(&mut q, 2, "b", false);
        push(&mut q, 3, "c", false);
        assert_eq!(q.requeue(batch), 1);
        assert_eq!(names(&q.take_batch(64)), ["b", "c"]);
    }

    #[test]
    fn shrinking_drops() {
        let mut q = AlertQueue::new(5);
        for i in 0..5 {
            push(&mut q, i, &format!("a{i}"), i == 4);
        }
        assert_eq!(q.set_capacity(3), 2);
        assert_eq!(names(&q.take_batch(64)), ["a1", "a2", "a3"]);
    }
}
