//! An alert as the policy hands it over and the notifier delivers it: the interface between
//! the two stages, so neither imports the other.

use std::{collections::BTreeMap, hash::Hasher as _, time::SystemTime};

/// One alert as the evaluator sees it at this poll.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Alert {
    /// Identity: alertname, severity, client, mac, destination, the rule's labels.
    pub labels: BTreeMap<String, String>,
    /// summary, description.
    pub annotations: BTreeMap<String, String>,
    pub generator_url: String,
    /// When it started firing.
    pub starts_at: SystemTime,
    /// Some: resolved at that time.
    pub resolved_at: Option<SystemTime>,
}

impl Alert {
    pub fn fingerprint(&self) -> u64 {
        fingerprint(&self.labels)
    }
}

/// A hash of an alert's labels that is the same in every process and release (FNV-1a over
/// name, value pairs; empty values skipped, as they mean "no label").
pub fn fingerprint(labels: &BTreeMap<String, String>) -> u64 {
    let mut h = fnv::FnvHasher::default();
    for (name, value) in labels.iter().filter(|(_, v)| !v.is_empty()) {
        h.write(name.as_bytes());
        h.write(&[0xff]);
        h.write(value.as_bytes());
        h.write(&[0xff]);
    }
    h.finish()
}

/// An alert's state at one poll: all that decides whether it is sent. The alert itself is
/// built only when an Alertmanager needs it: with thousands firing, most polls send none, and
/// keeping them all built would cost kilobytes each.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlertStatus {
    /// [`Alert::fingerprint`] of the alert it stands for.
    pub fingerprint: u64,
    pub starts_at: SystemTime,
    pub resolved_at: Option<SystemTime>,
}

impl AlertStatus {
    pub fn of(alert: &Alert) -> AlertStatus {
        AlertStatus {
            fingerprint: alert.fingerprint(),
            starts_at: alert.starts_at,
            resolved_at: alert.resolved_at,
        }
    }
}
