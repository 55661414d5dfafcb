//! An alert as Alertmanager receives it: a series' identity (the rule's labels and which rule,
//! client and destination), its annotations (the rule's templates filled in) and its times.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use super::series::{FINGERPRINT, Series, destination_of};
use crate::{
    policy::Rule,
    types::{Alert, AlertStatus, alert::fingerprint, labels::human_bytes},
};

impl Series {
    /// The status of this series' alert (its id is `id`), fired at `fired_at` (and resolved
    /// at `resolved_at`).
    pub(super) fn status(
        &mut self,
        rule: &Rule,
        id: &str,
        fired_at: u64,
        resolved_at: Option<u64>,
    ) -> AlertStatus {
        if !self.flag(FINGERPRINT) {
            self.fingerprint = fingerprint(&labels(rule, self, destination_of(id, &self.labels)));
            self.set_flag(FINGERPRINT, true);
        }
        AlertStatus {
            fingerprint: self.fingerprint,
            starts_at: at(fired_at),
            resolved_at: resolved_at.map(at),
        }
    }
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// An alert's identity: the rule's labels and which rule, client and destination.
fn labels(rule: &Rule, s: &Series, destination: &str) -> BTreeMap<String, String> {
    let mut labels = rule.labels.clone();
    labels.insert("alertname".into(), rule.name.clone());
    labels.insert("severity".into(), rule.severity.clone());
    labels.insert("client".into(), s.labels.client.to_string());
    labels.insert("mac".into(), s.labels.mac.to_string());
    if !destination.is_empty() {
        labels.insert("destination".into(), destination.to_string());
    }
    labels
}

pub(super) fn alert(
    rule: &Rule,
    s: &Series,
    destination: &str,
    fired_at: u64,
    resolved_at: Option<u64>,
    external_url: &str,
) -> Alert {
    let window = rule.condition.window();
    let l = &*s.labels;
    let values = BTreeMap::from([
        ("rule", rule.name.clone()),
        ("severity", rule.severity.clone()),
        ("client", l.client.to_string()),
        ("mac", l.mac.to_string()),
        ("group", l.group.to_string()),
        ("vendor", l.vendor.to_string()),
        ("destination", destination.to_string()),
        ("country", l.country.to_string()),
        ("asn", if l.asn == 0 { String::new() } else { format!("AS{}", l.asn) }),
        ("bytes", human_bytes(s.last_bytes)),
        ("packets", s.last_packets.to_string()),
        ("rate", format!("{}/s", human_bytes(s.last_bytes / window.as_secs().max(1)))),
        ("window", humantime::format_duration(window).to_string()),
        ("for", humantime::format_duration(rule.for_).to_string()),
    ]);
    let annotations = BTreeMap::from([
        ("summary".to_string(), rule.summary.render(&values)),
        ("description".to_string(), rule.description.render(&values)),
    ]);
    Alert {
        labels: labels(rule, s, destination),
        annotations,
        generator_url: format!(
            "{}/api/v1/flows?client={}",
            external_url.trim_end_matches('/'),
            l.mac
        ),
        starts_at: at(fired_at),
        resolved_at: resolved_at.map(at),
    }
}
