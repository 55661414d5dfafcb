//! Alert delivery to Alertmanager, with Prometheus's semantics: the policy evaluator hands
//! over, each poll, the state of every firing alert and every recently resolved one (the
//! alerts themselves are built only for what is sent); the [`Notifier`]
//! decides per Alertmanager what (re-)goes out (firing alerts every `resend_interval`, a
//! resolution at once and then likewise), and each Alertmanager's thread posts its queue
//! (API v2, batches of 64) with `endsAt` set at sending, retrying with backoff. See
//! docs/alerting.md.

mod client;
mod config;
mod error;
mod metrics;
mod queue;
mod schedule;
mod secrets;
mod worker;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime},
};

use tracing::{info, warn};

pub use config::{AlertingConfig, AlertmanagerTarget, BasicAuth};
pub use error::AlertingError;

use client::{Endpoint, Validity};
use metrics::NotifierMetrics;
use worker::Target;

pub use crate::types::alert::{Alert, AlertStatus, fingerprint};

/// Sends alerts to every configured Alertmanager.
pub struct Notifier {
    inner: Mutex<Inner>,
    metrics: NotifierMetrics,
}

struct Inner {
    targets: Vec<Target>,
    resend_interval: Duration,
    /// `alerting.site`: the `site` label of every alert sent.
    site: Option<String>,
}

impl Notifier {
    /// Starts one sending thread per Alertmanager. `poll_interval` is needed for endsAt.
    /// Registers its self-metrics through `register`.
    pub fn start(
        config: &AlertingConfig,
        poll_interval: Duration,
        register: &dyn Fn(Box<dyn prometheus::core::Collector>) -> prometheus::Result<()>,
    ) -> Result<Notifier, AlertingError> {
        config.validate()?;
        let metrics = NotifierMetrics::register(register)
            .map_err(|error| AlertingError::Metrics { error })?;
        let validity = Validity { poll_interval, resend_interval: config.resend_interval };
        let mut targets = Vec::with_capacity(config.alertmanagers.len());
        for (target, endpoint) in config.alertmanagers.iter().zip(endpoints(config)?) {
            targets.push(Target::spawn(
                &target.url,
                endpoint,
                validity,
                config.queue_capacity,
                metrics.for_target(&target.url),
            )?);
        }
        if !targets.is_empty() {
            let urls: Vec<&str> = targets.iter().map(Target::url).collect();
            info!(alertmanagers = ?urls, "sending alerts to Alertmanager");
        }
        Ok(Notifier {
            inner: Mutex::new(Inner {
                targets,
                resend_interval: config.resend_interval,
                site: config.site.clone(),
            }),
            metrics,
        })
    }

    /// Called once per poll with the status of every alert firing now plus every alert
    /// resolved within resolved_retention. Queues what needs sending, built by `build(i)` for
    /// `alerts[i]` (once, whatever the number of Alertmanagers; None: it cannot be built any
    /// more, and is skipped). No I/O, only short locks.
    pub fn update(
        &self,
        now: SystemTime,
        alerts: &[AlertStatus],
        build: &dyn Fn(usize) -> Option<Alert>,
    ) {
        let inner = self.lock();
        if inner.targets.is_empty() {
            return;
        }
        let current: HashSet<u64> = alerts.iter().map(|a| a.fingerprint).collect();
        let mut built: HashMap<usize, Option<Arc<Alert>>> = HashMap::new();
        let site = inner.site.as_deref();
        let mut get = |i: usize| {
            built.entry(i).or_insert_with(|| build(i).map(|a| Arc::new(with_site(a, site)))).clone()
        };
        for target in &inner.targets {
            target.offer(now, alerts, &current, inner.resend_interval, &mut get);
        }
    }

    /// [`Notifier::update`] with the alerts already built.
    pub fn update_alerts(&self, now: SystemTime, alerts: &[Alert]) {
        let statuses: Vec<AlertStatus> = alerts.iter().map(AlertStatus::of).collect();
        self.update(now, &statuses, &|i| alerts.get(i).cloned());
    }

    /// Replaces targets and intervals (SIGHUP). An Alertmanager still configured (same URL)
    /// keeps its queue and send times; a removed one is stopped and its queue dropped. On error
    /// nothing changes.
    pub fn reconfigure(
        &self,
        config: &AlertingConfig,
        poll_interval: Duration,
    ) -> Result<(), AlertingError> {
        config.validate()?;
        let mut new_endpoints = endpoints(config)?;
        let validity = Validity { poll_interval, resend_interval: config.resend_interval };
        let mut inner = self.lock();
        let mut old: Vec<Target> = std::mem::take(&mut inner.targets);
        let mut targets = Vec::with_capacity(config.alertmanagers.len());
        for (target, endpoint) in config.alertmanagers.iter().zip(new_endpoints.drain(..)) {
            match old.iter().position(|t| t.url() == target.url) {
                Some(i) => {
                    let kept = old.swap_remove(i);
                    kept.reconfigure(endpoint, validity, config.queue_capacity);
                    targets.push(kept);
                }
                None => {
                    let metrics = self.metrics.for_target(&target.url);
                    match Target::spawn(
                        &target.url,
                        endpoint,
                        validity,
                        config.queue_capacity,
                        metrics,
                    ) {
                        Ok(t) => targets.push(t),
                        Err(e) => {
                            // Keep serving what was there rather than losing every target.
                            inner.targets = targets.into_iter().chain(old).collect();
                            return Err(e);
                        }
                    }
                }
            }
        }
        for removed in old {
            let url = removed.url().to_string();
            let dropped = removed.abort();
            self.metrics.remove(&url);
            if dropped > 0 {
                warn!(alertmanager = %url, dropped, "Alertmanager removed from the configuration: its queued alerts are dropped");
            }
        }
        inner.targets = targets;
        inner.resend_interval = config.resend_interval;
        inner.site = config.site.clone();
        Ok(())
    }

    /// Lets every Alertmanager's thread send what is queued, for at most `grace` (requests are
    /// cut short at the deadline), then stops them.
    pub async fn shutdown(self, grace: Duration) {
        let deadline = Instant::now() + grace;
        let targets = std::mem::take(&mut self.lock().targets);
        let threads: Vec<_> = targets.into_iter().filter_map(|t| t.flush(deadline)).collect();
        if threads.is_empty() {
            return;
        }
        let join = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        });
        // A request blocked in DNS resolution may overrun its timeout: do not wait for it.
        if tokio::time::timeout(grace + Duration::from_millis(500), join).await.is_err() {
            warn!(?grace, "alert senders still busy at shutdown; leaving them");
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The alert with the `site` label, unless its rule set one (as Prometheus's external labels:
/// the alert's own label wins). Alert identity inside the agent (its fingerprint) is without
/// it: one site per agent.
fn with_site(mut alert: Alert, site: Option<&str>) -> Alert {
    if let Some(site) = site
        && alert.labels.get("site").is_none_or(String::is_empty)
    {
        alert.labels.insert("site".into(), site.into());
    }
    alert
}

/// Every target's HTTP side, built before anything changes so a bad file fails the whole call.
fn endpoints(config: &AlertingConfig) -> Result<Vec<Endpoint>, AlertingError> {
    config.alertmanagers.iter().map(|t| Endpoint::new(t, config.timeout)).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn alert(labels: &[(&str, &str)]) -> Alert {
        Alert {
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            annotations: BTreeMap::new(),
            generator_url: String::new(),
            starts_at: SystemTime::UNIX_EPOCH,
            resolved_at: None,
        }
    }

    #[test]
    fn fingerprint_is_stable_and_depends_on_labels_only() {
        let a = alert(&[("alertname", "TooMuchUpload"), ("client", "redmi-note")]);
        // Pinned (FNV-1a 64 computed independently): the same in every process and release.
        assert_eq!(a.fingerprint(), 0x44f8_1b10_fb6f_35e1);
        let mut other_times = a.clone();
        other_times.starts_at = SystemTime::now();
        other_times.resolved_at = Some(SystemTime::now());
        other_times.annotations.insert("summary".into(), "x".into());
        assert_eq!(other_times.fingerprint(), a.fingerprint());
        let with_empty =
            alert(&[("alertname", "TooMuchUpload"), ("client", "redmi-note"), ("mac", "")]);
        assert_eq!(with_empty.fingerprint(), a.fingerprint());
        // The separators keep "ab"="c" and "a"="bc" apart.
        assert_ne!(alert(&[("ab", "c")]).fingerprint(), alert(&[("a", "bc")]).fingerprint());
        assert_ne!(alert(&[("client", "tv")]).fingerprint(), a.fingerprint());
    }

    /// `alerting.site` is a label of every alert on the wire, unless the rule set `site`;
    /// a reload changes it; without it there is no such label.
    #[test]
    fn every_alert_sent_carries_the_site_label() {
        let webhook = lab::alertmanager::Webhook::start().unwrap();
        let config = |site: Option<&str>| AlertingConfig {
            alertmanagers: vec![AlertmanagerTarget {
                url: webhook.base_url(),
                basic_auth: None,
                bearer_token_file: None,
                tls_ca_file: None,
            }],
            site: site.map(str::to_string),
            ..AlertingConfig::default()
        };
        let registry = prometheus::Registry::new_custom(Some("gwsensor".into()), None).unwrap();
        let poll = Duration::from_secs(5);
        let n = Notifier::start(&config(Some("home-1")), poll, &|c| registry.register(c)).unwrap();
        let labels_sent = |count: usize| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while webhook.bodies().len() < count && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let bodies = webhook.bodies();
            assert_eq!(bodies.len(), count, "{bodies:?}");
            let mut labels: Vec<String> = bodies[count - 1]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["labels"].to_string())
                .collect();
            labels.sort();
            labels
        };
        n.update_alerts(
            SystemTime::now(),
            &[
                alert(&[("alertname", "Up"), ("client", "tv")]),
                alert(&[("alertname", "Own"), ("client", "tv"), ("site", "attic")]),
            ],
        );
        assert_eq!(
            labels_sent(1),
            [
                r#"{"alertname":"Own","client":"tv","site":"attic"}"#,
                r#"{"alertname":"Up","client":"tv","site":"home-1"}"#,
            ]
        );
        n.reconfigure(&config(None), poll).unwrap();
        n.update_alerts(SystemTime::now(), &[alert(&[("alertname", "New"), ("client", "tv")])]);
        assert_eq!(labels_sent(2), [r#"{"alertname":"New","client":"tv"}"#]);
        n.reconfigure(&config(Some("home-2")), poll).unwrap();
        n.update_alerts(SystemTime::now(), &[alert(&[("alertname", "Next"), ("client", "tv")])]);
        assert_eq!(labels_sent(3), [r#"{"alertname":"Next","client":"tv","site":"home-2"}"#]);
    }

    #[test]
    fn an_empty_site_is_refused() {
        let config = AlertingConfig { site: Some(" ".into()), ..AlertingConfig::default() };
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "alerting.site must be a name, e.g. `site: home` (leave it out for no site label)"
        );
    }

    #[test]
    fn without_alertmanagers_it_is_inert() {
        let registry = prometheus::Registry::new_custom(Some("gwsensor".into()), None).unwrap();
        let n = Notifier::start(&AlertingConfig::default(), Duration::from_secs(5), &|c| {
            registry.register(c)
        })
        .unwrap();
        n.update_alerts(SystemTime::now(), &[alert(&[("alertname", "x")])]);
        assert!(n.lock().targets.is_empty());
    }
}
