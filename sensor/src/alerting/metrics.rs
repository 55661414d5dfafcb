//! The notifier's own metrics, one series per Alertmanager (`alertmanager` = its configured URL).

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, core::Collector};

const LABEL: &str = "alertmanager";

#[derive(Clone)]
pub(crate) struct NotifierMetrics {
    sent: IntCounterVec,
    failed: IntCounterVec,
    dropped: IntCounterVec,
    queue_length: IntGaugeVec,
    up: IntGaugeVec,
}

impl NotifierMetrics {
    /// Registers through `register` (the agent's catalogued registry).
    pub fn register(
        register: &dyn Fn(Box<dyn Collector>) -> prometheus::Result<()>,
    ) -> prometheus::Result<NotifierMetrics> {
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounterVec> {
            let c = IntCounterVec::new(Opts::new(name, help), &[LABEL])?;
            register(Box::new(c.clone()))?;
            Ok(c)
        };
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGaugeVec> {
            let g = IntGaugeVec::new(Opts::new(name, help), &[LABEL])?;
            register(Box::new(g.clone()))?;
            Ok(g)
        };
        Ok(NotifierMetrics {
            sent: counter(
                "alert_notifications_sent_total",
                "Alerts delivered to the Alertmanager (2xx answer).",
            )?,
            failed: counter(
                "alert_notifications_failed_total",
                "Alerts in POSTs to the Alertmanager that failed (retried unless rejected as invalid).",
            )?,
            dropped: counter(
                "alert_notifications_dropped_total",
                "Alerts dropped from the Alertmanager's full queue.",
            )?,
            queue_length: gauge(
                "alert_queue_length",
                "Alerts waiting to be sent to the Alertmanager.",
            )?,
            up: gauge(
                "alertmanager_up",
                "1 if the last POST to the Alertmanager succeeded, 0 if it failed; absent before the first.",
            )?,
        })
    }

    /// The series of one Alertmanager, counters at 0 (so that rate() sees the first increase).
    pub fn for_target(&self, url: &str) -> TargetMetrics {
        TargetMetrics {
            sent: self.sent.with_label_values(&[url]),
            failed: self.failed.with_label_values(&[url]),
            dropped: self.dropped.with_label_values(&[url]),
            queue_length: self.queue_length.with_label_values(&[url]),
            up_vec: self.up.clone(),
            url: url.to_string(),
        }
    }

    /// Ends the series of an Alertmanager no longer configured.
    pub fn remove(&self, url: &str) {
        let _ = self.sent.remove_label_values(&[url]);
        let _ = self.failed.remove_label_values(&[url]);
        let _ = self.dropped.remove_label_values(&[url]);
        let _ = self.queue_length.remove_label_values(&[url]);
        let _ = self.up.remove_label_values(&[url]);
    }
}

pub(crate) struct TargetMetrics {
    pub sent: IntCounter,
    pub failed: IntCounter,
    pub dropped: IntCounter,
    pub queue_length: IntGauge,
    up_vec: IntGaugeVec,
    url: String,
}

impl TargetMetrics {
    pub fn set_up(&self, up: bool) {
        self.up_vec.with_label_values(&[&self.url]).set(i64::from(up));
    }
}
