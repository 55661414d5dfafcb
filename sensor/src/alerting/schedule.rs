//! When an alert is (re-)sent, the validity it is given, and how long a failing Alertmanager is
//! left alone: Prometheus's rules (rules/alerting.go), as pure functions of time.

use std::time::{Duration, SystemTime};

use crate::types::alert::{Alert, AlertStatus};

/// What was last queued for one alert to one Alertmanager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LastSent {
    /// The poll time of the send decision (Prometheus's `LastSentAt`).
    pub at: SystemTime,
    /// The firing episode it belonged to.
    pub starts_at: SystemTime,
}

/// Whether `alert` goes out at `now`: a new firing episode at once; a resolution made after the
/// last send at once; otherwise once `resend_interval` has passed since the last send.
pub(crate) fn needs_sending(
    alert: &AlertStatus,
    last: Option<&LastSent>,
    now: SystemTime,
    resend_interval: Duration,
) -> bool {
    let Some(last) = last else {
        return true;
    };
    // Prometheus starts a fresh alert (never sent) when a resolved one fires again.
    if last.starts_at != alert.starts_at {
        return true;
    }
    if alert.resolved_at.is_some_and(|resolved| resolved > last.at) {
        return true;
    }
    last.at + resend_interval <= now
}

/// The `endsAt` an alert is sent with at `send_time`. Firing: valid for four resend (or poll)
/// intervals, so two lost sends do not resolve it in Alertmanager, while a dead agent's alerts
/// do resolve eventually. Resolved: when it resolved (never before it started, which
/// Alertmanager would reject).
pub(crate) fn ends_at(
    alert: &Alert,
    send_time: SystemTime,
    poll_interval: Duration,
    resend_interval: Duration,
) -> SystemTime {
    match alert.resolved_at {
        Some(resolved) => resolved.max(alert.starts_at),
        None => send_time + 4 * poll_interval.max(resend_interval),
    }
}

pub(crate) const BACKOFF_FIRST: Duration = Duration::from_secs(1);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Retries are shortened by up to this fraction, so agents that lost the same Alertmanager
/// do not all come back at the same instant.
const JITTER: f64 = 0.2;

/// The wait after the `failures`-th failure in a row (1-based): 1s doubling, at most 1 min.
pub(crate) fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (BACKOFF_FIRST * (1u32 << doublings)).min(BACKOFF_MAX)
}

/// `wait` shortened by `JITTER × random`, `random` in [0, 1).
pub(crate) fn jittered(wait: Duration, random: f64) -> Duration {
    wait.mul_f64(1.0 - JITTER * random.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn alert(starts: u64, resolved: Option<u64>) -> Alert {
        Alert {
            labels: BTreeMap::from([("alertname".to_string(), "TooMuchUpload".to_string())]),
            annotations: BTreeMap::new(),
            generator_url: String::new(),
            starts_at: t(starts),
            resolved_at: resolved.map(t),
        }
    }

    const RESEND: Duration = Duration::from_secs(60);

    #[test]
    fn firing_alerts_are_sent_once_then_every_resend_interval() {
        let a = alert(0, None);
        assert!(needs_sending(&AlertStatus::of(&a), None, t(0), RESEND));
        let last = LastSent { at: t(0), starts_at: t(0) };
        assert!(!needs_sending(&AlertStatus::of(&a), Some(&last), t(5), RESEND));
        assert!(!needs_sending(&AlertStatus::of(&a), Some(&last), t(59), RESEND));
        assert!(needs_sending(&AlertStatus::of(&a), Some(&last), t(60), RESEND));
        assert!(needs_sending(&AlertStatus::of(&a), Some(&last), t(61), RESEND));
    }

    #[test]
    fn a_resolution_is_sent_at_once_then_every_resend_interval() {
        let last = LastSent { at: t(30), starts_at: t(0) };
        let resolved = alert(0, Some(35));
        assert!(needs_sending(&AlertStatus::of(&resolved), Some(&last), t(35), RESEND));
        // Sent at 35: from then on like a firing alert.
        let last = LastSent { at: t(35), starts_at: t(0) };
        assert!(!needs_sending(&AlertStatus::of(&resolved), Some(&last), t(40), RESEND));
        assert!(!needs_sending(&AlertStatus::of(&resolved), Some(&last), t(94), RESEND));
        assert!(needs_sending(&AlertStatus::of(&resolved), Some(&last), t(95), RESEND));
    }

    #[test]
    fn a_new_episode_is_sent_at_once() {
        // Resolved at 35 and sent; fires again at 40 with the same labels.
        let last = LastSent { at: t(35), starts_at: t(0) };
        assert!(needs_sending(&AlertStatus::of(&alert(40, None)), Some(&last), t(40), RESEND));
    }

    #[test]
    fn ends_at_math() {
        let send = t(1000);
        let five = Duration::from_secs(5);
        let two_min = Duration::from_secs(120);
        // 4 × max(5s, 60s) = 240s.
        assert_eq!(ends_at(&alert(0, None), send, five, RESEND), t(1240));
        // 4 × max(120s, 60s) = 480s.
        assert_eq!(ends_at(&alert(0, None), send, two_min, RESEND), t(1480));
        assert_eq!(ends_at(&alert(0, Some(700)), send, five, RESEND), t(700));
        assert_eq!(ends_at(&alert(800, Some(700)), send, five, RESEND), t(800));
    }

    #[test]
    fn backoff_schedule() {
        let secs: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(60));
        assert_eq!(jittered(Duration::from_secs(10), 0.0), Duration::from_secs(10));
        assert_eq!(jittered(Duration::from_secs(10), 0.5), Duration::from_secs(9));
        assert_eq!(jittered(Duration::from_secs(10), 1.0), Duration::from_secs(8));
    }
}
