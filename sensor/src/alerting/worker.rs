//! One Alertmanager: the send decisions for it (its [`Outbox`]), and the thread that posts its
//! queue, backing off while it fails. Each Alertmanager has its own, so one that is down
//! delays no other. The poll loop only touches the outbox under a short lock, never I/O.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use tracing::{debug, error, info, warn};

use super::{
    client::{self, Endpoint, Validity},
    error::AlertingError,
    metrics::TargetMetrics,
    queue::{AlertQueue, NextSend},
    schedule::{LastSent, backoff, jittered, needs_sending},
};
use crate::types::alert::{Alert, AlertStatus};

/// Builds the alert of the i-th status of a poll (shared between the Alertmanagers).
pub(crate) type Get<'a> = &'a mut dyn FnMut(usize) -> Option<Arc<Alert>>;

/// Alerts per POST, as Prometheus does.
pub(crate) const MAX_BATCH: usize = 64;

/// The send decisions for one Alertmanager: what waits to go, and when each alert last went.
#[derive(Debug)]
pub(crate) struct Outbox {
    pub queue: AlertQueue,
    pub last_sent: HashMap<u64, LastSent>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Offered {
    pub queued: usize,
    pub dropped: usize,
}

impl Outbox {
    /// `max_hold`: longest a resolution waits behind its late firing state (the resend
    /// interval: Alertmanager has notified a firing alert by then with any usual group_wait).
    pub fn new(capacity: usize, max_hold: Duration) -> Outbox {
        Outbox { queue: AlertQueue::new(capacity, max_hold), last_sent: HashMap::new() }
    }

    /// Queues the alerts of this poll that need sending (`get(i)` builds `alerts[i]`), and
    /// forgets alerts the evaluator no longer passes (`current`: their fingerprints).
    pub fn offer(
        &mut self,
        now: SystemTime,
        alerts: &[AlertStatus],
        current: &HashSet<u64>,
        resend_interval: Duration,
        get: Get<'_>,
    ) -> Offered {
        let mut offered = Offered::default();
        for (i, status) in alerts.iter().enumerate() {
            let fp = status.fingerprint;
            if needs_sending(status, self.last_sent.get(&fp), now, resend_interval) {
                let Some(alert) = get(i) else { continue };
                offered.dropped += self.queue.push(fp, alert);
                self.last_sent.insert(fp, LastSent { at: now, starts_at: status.starts_at });
                offered.queued += 1;
            }
        }
        self.last_sent.retain(|fp, _| current.contains(fp));
        self.queue.forget_delivered(|fp| current.contains(&fp));
        offered
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Stop {
    Running,
    /// Send what is queued, without backoff, until empty, a failure, or the deadline.
    Flush {
        deadline: Instant,
    },
    /// Stop now, dropping the queue.
    Abort,
}

struct State {
    outbox: Outbox,
    endpoint: Arc<Endpoint>,
    validity: Validity,
    stop: Stop,
}

struct Shared {
    url: String,
    state: Mutex<State>,
    wake: Condvar,
    metrics: TargetMetrics,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One Alertmanager and its sending thread.
pub(crate) struct Target {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Target {
    pub fn spawn(
        url: &str,
        endpoint: Endpoint,
        validity: Validity,
        capacity: usize,
        metrics: TargetMetrics,
    ) -> Result<Target, AlertingError> {
        let shared = Arc::new(Shared {
            url: url.to_string(),
            state: Mutex::new(State {
                outbox: Outbox::new(capacity, validity.resend_interval),
                endpoint: Arc::new(endpoint),
                validity,
                stop: Stop::Running,
            }),
            wake: Condvar::new(),
            metrics,
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("alert-notify".into())
            .spawn(move || run(&worker))
            .map_err(|error| AlertingError::SpawnSender { url: url.to_string(), error })?;
        Ok(Target { shared, thread: Some(thread) })
    }

    pub fn url(&self) -> &str {
        &self.shared.url
    }

    pub fn offer(
        &self,
        now: SystemTime,
        alerts: &[AlertStatus],
        current: &HashSet<u64>,
        resend_interval: Duration,
        get: Get<'_>,
    ) {
        let mut state = self.shared.lock();
        let offered = state.outbox.offer(now, alerts, current, resend_interval, get);
        self.shared.metrics.queue_length.set(state.outbox.queue.len() as i64);
        drop(state);
        self.note_dropped(offered.dropped);
        if offered.queued > 0 {
            self.shared.wake.notify_one();
        }
    }

    /// New credentials, TLS roots, timings or capacity; the queue and send times stay.
    pub fn reconfigure(&self, endpoint: Endpoint, validity: Validity, capacity: usize) {
        let mut state = self.shared.lock();
        state.endpoint = Arc::new(endpoint);
        state.validity = validity;
        let dropped = state.outbox.queue.set_limits(capacity, validity.resend_interval);
        self.shared.metrics.queue_length.set(state.outbox.queue.len() as i64);
        drop(state);
        self.note_dropped(dropped);
        self.shared.wake.notify_one();
    }

    fn note_dropped(&self, dropped: usize) {
        if dropped > 0 {
            self.shared.metrics.dropped.inc_by(dropped as u64);
            warn!(alertmanager = %self.shared.url, dropped, "alert queue full: dropped the oldest alerts");
        }
    }

    /// Stops the thread without waiting for it; queued alerts are dropped.
    pub fn abort(mut self) -> usize {
        let queued = self.stop(Stop::Abort);
        self.thread = None;
        queued
    }

    /// Lets the thread send what is queued until `deadline`, then stop; returns it to join.
    pub fn flush(mut self, deadline: Instant) -> Option<JoinHandle<()>> {
        self.stop(Stop::Flush { deadline });
        self.thread.take()
    }

    fn stop(&self, how: Stop) -> usize {
        let mut state = self.shared.lock();
        state.stop = how;
        let queued = state.outbox.queue.len();
        drop(state);
        self.shared.wake.notify_one();
        queued
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop(Stop::Abort);
        }
    }
}

/// The sending thread: waits for work (and out its backoff), posts the oldest batch with
/// `endsAt` computed now, and on failure puts the batch back and backs off.
fn run(shared: &Shared) {
    let url = shared.url.as_str();
    let mut failures: u32 = 0;
    let mut retry_at: Option<Instant> = None;
    let mut flush_failed = false;
    loop {
        let (batch, endpoint, validity, limit) = {
            let mut state = shared.lock();
            let limit = loop {
                let next = state.outbox.queue.next_send(Instant::now());
                match state.stop {
                    Stop::Abort => return,
                    Stop::Flush { deadline } => {
                        let now = Instant::now();
                        // Delayed resolutions are not waited for: their firing alert ends at
                        // its endsAt in Alertmanager anyway.
                        if next != NextSend::Now || now >= deadline || flush_failed {
                            return;
                        }
                        break Some(deadline - now);
                    }
                    Stop::Running => {}
                }
                if let Some(at) = retry_at {
                    let now = Instant::now();
                    if now < at {
                        state = shared
                            .wake
                            .wait_timeout(state, at - now)
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                        continue;
                    }
                }
                match next {
                    NextSend::Now => break None,
                    NextSend::At(at) => {
                        let wait = at.saturating_duration_since(Instant::now());
                        state = shared
                            .wake
                            .wait_timeout(state, wait)
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                    }
                    NextSend::Idle => {
                        state = shared.wake.wait(state).unwrap_or_else(|e| e.into_inner());
                    }
                }
            };
            let batch = state.outbox.queue.take_batch(MAX_BATCH, Instant::now());
            shared.metrics.queue_length.set(state.outbox.queue.len() as i64);
            (batch, state.endpoint.clone(), state.validity, limit)
        };

        let count = batch.len();
        // endsAt from the moment of sending: after an outage a stale one would resolve alerts.
        let body = client::body(batch.iter().map(|e| &*e.alert), SystemTime::now(), validity);
        let result = endpoint.post(&body, limit);

        let mut state = shared.lock();
        if state.stop == Stop::Abort {
            // Removed from the configuration: its series are gone, nothing to record.
            return;
        }
        match result {
            Ok(()) => {
                state.outbox.queue.settle(&batch, true, Instant::now());
                shared.metrics.queue_length.set(state.outbox.queue.len() as i64);
                shared.metrics.sent.inc_by(count as u64);
                shared.metrics.set_up(true);
                if failures > 0 {
                    info!(alertmanager = url, failures, "alerts delivered again");
                }
                debug!(alertmanager = url, alerts = count, "alerts delivered");
                failures = 0;
                retry_at = None;
            }
            Err(e) if e.retryable() => {
                shared.metrics.failed.inc_by(count as u64);
                shared.metrics.set_up(false);
                failures = failures.saturating_add(1);
                let wait = jittered(backoff(failures), fastrand::f64());
                retry_at = Some(Instant::now() + wait);
                flush_failed = matches!(state.stop, Stop::Flush { .. });
                let dropped = state.outbox.queue.requeue(batch);
                shared.metrics.queue_length.set(state.outbox.queue.len() as i64);
                if dropped > 0 {
                    shared.metrics.dropped.inc_by(dropped as u64);
                }
                warn!(alertmanager = url, alerts = count, failures, retry_in = ?wait, "cannot send alerts to Alertmanager: {e}");
            }
            Err(e) => {
                state.outbox.queue.settle(&batch, false, Instant::now());
                shared.metrics.failed.inc_by(count as u64);
                shared.metrics.set_up(false);
                error!(
                    alertmanager = url,
                    alerts = count,
                    "Alertmanager rejected alerts (not retried; they are offered again at the next resend): {e}"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    /// The evaluator's view at poll time `now`: firing from 0, resolved at 150, passed along
    /// until 150 + 15 min.
    fn evaluator(now: u64) -> Vec<Arc<Alert>> {
        if now > 150 + 900 {
            return Vec::new();
        }
        vec![Arc::new(Alert {
            labels: BTreeMap::from([("alertname".to_string(), "TooMuchUpload".to_string())]),
            annotations: BTreeMap::new(),
            generator_url: String::new(),
            starts_at: t(0),
            resolved_at: (now >= 150).then_some(t(150)),
        })]
    }

    /// Polls every 5 s; returns the poll times at which the alert was queued.
    fn queued_at(outbox: &mut Outbox, polls: impl Iterator<Item = u64>) -> Vec<u64> {
        let resend = Duration::from_secs(60);
        let mut times = Vec::new();
        for now in polls {
            let alerts = evaluator(now);
            let statuses: Vec<AlertStatus> = alerts.iter().map(|a| AlertStatus::of(a)).collect();
            let current = statuses.iter().map(|s| s.fingerprint).collect();
            if outbox
                .offer(t(now), &statuses, &current, resend, &mut |i| alerts.get(i).cloned())
                .queued
                > 0
            {
                times.push(now);
            }
        }
        times
    }

    #[test]
    fn polls_on_synthetic_time() {
        let mut outbox = Outbox::new(10, Duration::from_secs(60));
        let times = queued_at(&mut outbox, (0..=1200).step_by(5));
        let mut want = vec![0, 60, 120, 150];
        want.extend((210..=1050).step_by(60));
        assert_eq!(times, want);
        // Never delivered (no Alertmanager took it): the firing state stays queued, the
        // resolution waits behind it.
        assert_eq!(outbox.queue.len(), 2);
        let batch = outbox.queue.take_batch(64, Instant::now());
        assert_eq!(batch.len(), 1);
        assert!(batch[0].alert.resolved_at.is_none());
        // No longer passed: forgotten.
        assert!(outbox.last_sent.is_empty());
    }

    #[test]
    fn refiring_after_resolution_is_sent_at_once() {
        let mut outbox = Outbox::new(10, Duration::from_secs(60));
        let resend = Duration::from_secs(60);
        let mut alert = Arc::unwrap_or_clone(evaluator(150).remove(0));
        let fp = alert.fingerprint();
        let current = HashSet::from([fp]);
        let resolved = Arc::new(alert.clone());
        let offer = |outbox: &mut Outbox, now, alert: &Arc<Alert>| {
            outbox
                .offer(t(now), &[AlertStatus::of(alert)], &current, resend, &mut |_| {
                    Some(Arc::clone(alert))
                })
                .queued
        };
        assert_eq!(offer(&mut outbox, 150, &resolved), 1);
        alert.starts_at = t(160);
        alert.resolved_at = None;
        let refired = Arc::new(alert);
        assert_eq!(offer(&mut outbox, 160, &refired), 1);
        assert_eq!(offer(&mut outbox, 165, &refired), 0);
    }
}
