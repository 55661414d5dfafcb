//! The agent's own counters (HTTP connections closed, naming events received, policy
//! violations, alert notifications, ...) continued across starts, as the traffic counters are:
//! what the last save held is added to this process's counts, and scrapes see them as of the
//! last save, so that no start (even after a crash) shows one lower than before.

use std::collections::BTreeMap;

use prometheus::proto::{Counter, LabelPair, Metric, MetricFamily, MetricType};
use serde::{Deserialize, Serialize};

/// A series' family name and labels.
type SeriesId = (String, Vec<(String, String)>);

/// Which series of a family to keep, by their labels.
type KeepLabels<'a> = &'a dyn Fn(&[(String, String)]) -> bool;

/// One counter series as saved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedCounter {
    pub name: String,
    pub help: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// The values the counters continue from (what the state file held at start), and the
/// counters as last released to scrapes.
#[derive(Debug, Default)]
pub struct Continued {
    base: Vec<SavedCounter>,
    released: Vec<MetricFamily>,
}

impl Continued {
    pub fn continue_from(&mut self, saved: Vec<SavedCounter>) {
        self.base = saved;
    }

    /// Every counter series: this process's counts (from `gathered`) plus what it continues
    /// from, sorted by name and labels.
    pub fn snapshot(&self, gathered: &[MetricFamily]) -> Vec<SavedCounter> {
        let mut all: BTreeMap<SeriesId, (String, f64)> = self
            .base
            .iter()
            .map(|c| ((c.name.clone(), c.labels.clone()), (c.help.clone(), c.value)))
            .collect();
        for family in gathered.iter().filter(|f| f.get_field_type() == MetricType::COUNTER) {
            for metric in family.get_metric() {
                let labels = metric
                    .get_label()
                    .iter()
                    .map(|l| (l.name().to_string(), l.value().to_string()))
                    .collect();
                let entry = all
                    .entry((family.name().to_string(), labels))
                    .or_insert_with(|| (family.help().to_string(), 0.0));
                entry.1 += metric.get_counter().get_value();
            }
        }
        all.into_iter()
            .map(|((name, labels), (help, value))| SavedCounter { name, help, labels, value })
            .collect()
    }

    /// Drops the series of family `name` (its full name, as saved) whose labels `keep`
    /// refuses, from what the counters continue from and from what scrapes see.
    pub fn forget(&mut self, name: &str, keep: KeepLabels<'_>) {
        self.base.retain(|c| c.name != name || keep(&c.labels));
        for family in self.released.iter_mut().filter(|f| f.name() == name) {
            family.mut_metric().retain(|m| {
                let labels: Vec<(String, String)> = m
                    .get_label()
                    .iter()
                    .map(|l| (l.name().to_string(), l.value().to_string()))
                    .collect();
                keep(&labels)
            });
        }
        // A family without series is not shown at all (no HELP line for nothing).
        self.released.retain(|f| !f.get_metric().is_empty());
    }

    /// Scrapes see `counters` from now on.
    pub fn release(&mut self, counters: &[SavedCounter]) {
        self.released = families(counters);
    }

    /// `gathered` with its counter families replaced by the released ones, sorted by name.
    pub fn exposed(&self, gathered: Vec<MetricFamily>) -> Vec<MetricFamily> {
        let mut out: Vec<MetricFamily> = gathered
            .into_iter()
            .filter(|f| f.get_field_type() != MetricType::COUNTER)
            .chain(self.released.iter().cloned())
            .collect();
        out.sort_by(|a, b| a.name().cmp(b.name()));
        out
    }
}

/// Counter families made from saved series (sorted by name, as [`Continued::snapshot`] gives).
fn families(counters: &[SavedCounter]) -> Vec<MetricFamily> {
    let mut out: Vec<MetricFamily> = Vec::new();
    for c in counters {
        if out.last().is_none_or(|f| f.name() != c.name) {
            let mut family = MetricFamily::default();
            family.set_name(c.name.clone());
            family.set_help(c.help.clone());
            family.set_field_type(MetricType::COUNTER);
            out.push(family);
        }
        let labels = c
            .labels
            .iter()
            .map(|(name, value)| {
                let mut pair = LabelPair::default();
                pair.set_name(name.clone());
                pair.set_value(value.clone());
                pair
            })
            .collect();
        let mut metric = Metric::from_label(labels);
        let mut counter = Counter::default();
        counter.set_value(c.value);
        metric.set_counter(counter);
        if let Some(family) = out.last_mut() {
            family.mut_metric().push(metric);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use prometheus::{Encoder as _, IntCounterVec, Opts, Registry, TextEncoder};

    use super::*;

    fn text(families: &[MetricFamily]) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(families, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn counts_continue_from_the_saved_ones_and_show_as_released() {
        let registry = Registry::new();
        let closed =
            IntCounterVec::new(Opts::new("closed_total", "Connections closed."), &["reason"])
                .unwrap();
        registry.register(Box::new(closed.clone())).unwrap();
        let mut c = Continued::default();
        let saved = |reason: &str, value: f64| SavedCounter {
            name: "closed_total".into(),
            help: "Connections closed.".into(),
            labels: vec![("reason".into(), reason.into())],
            value,
        };
        // The last process closed 5 idle and 2 evicted.
        c.continue_from(vec![saved("evicted", 2.0), saved("idle", 5.0)]);
        closed.with_label_values(&["idle"]).inc_by(3);
        let snap = c.snapshot(&registry.gather());
        assert_eq!(snap, vec![saved("evicted", 2.0), saved("idle", 8.0)]);
        // Nothing released yet: no counter family in a scrape.
        assert_eq!(text(&c.exposed(registry.gather())), "");
        c.release(&snap);
        closed.with_label_values(&["idle"]).inc();
        assert_eq!(
            text(&c.exposed(registry.gather())),
            "# HELP closed_total Connections closed.\n# TYPE closed_total counter\n\
             closed_total{reason=\"evicted\"} 2\nclosed_total{reason=\"idle\"} 8\n"
        );
    }
}
