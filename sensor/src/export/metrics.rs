//! The Prometheus exposition: traffic counters rendered from the accounting after each poll,
//! and the agent's own health metrics.

use std::sync::{Arc, Mutex, RwLock};

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder, core::Collector, proto::MetricType,
};
use sensor_common::EventKind;

use super::{
    FamilyDoc, NAMESPACE,
    continued::{Continued, SavedCounter},
    exposition::{Chunks, Traffic},
};
use crate::{accounting::Accounting, enrich::ClientLabels, types::Mac};

/// The registry and a list of what was registered in it: a family without series yet does
/// not show in a scrape, but is in the catalogue (which docs/metrics.md is checked against).
struct Families {
    registry: Registry,
    registered: Mutex<Vec<FamilyDoc>>,
}

impl Families {
    fn register(&self, collector: Box<dyn Collector>) -> prometheus::Result<()> {
        let docs = collector.collect().into_iter().map(|mf| FamilyDoc {
            name: format!("{NAMESPACE}_{}", mf.name()),
            kind: match mf.get_field_type() {
                MetricType::COUNTER => "counter",
                MetricType::GAUGE => "gauge",
                MetricType::HISTOGRAM => "histogram",
                MetricType::SUMMARY => "summary",
                MetricType::UNTYPED => "untyped",
            },
        });
        let docs: Vec<FamilyDoc> = docs.collect();
        self.registry.register(collector)?;
        self.registered.lock().unwrap_or_else(|e| e.into_inner()).extend(docs);
        Ok(())
    }
}

/// The `outcome` values of `gwsensor_dhcp_requests_total`.
pub const DHCP_OUTCOMES: [&str; 5] =
    ["learnt", "not_a_request", "malformed", "rate_limited", "queue_full"];

/// Health metrics are ordinary registered collectors; traffic families are rebuilt each poll
/// and written as text per scrape ([`super::exposition`]).
pub struct Metrics {
    families: Families,
    pub poll_duration: Histogram,
    pub flows_tracked: IntGauge,
    /// Clients retired from their kernel slots, by reason (`idle`, `one_way`).
    pub clients_retired: IntCounterVec,
    /// Remotes and destinations remembered, by kind (`remote`, `destination`).
    pub tracked: IntGaugeVec,
    /// Remotes and destinations forgotten to stay within `tracking`, by kind.
    pub tracking_forgotten: IntCounterVec,
    pub flows_capacity: IntGauge,
    pub clients_tracked: IntGauge,
    pub clients_capacity: IntGauge,
    pub xdp_attach_mode: IntGaugeVec,
    pub tc_attach_mode: IntGaugeVec,
    pub flow_offload: IntGaugeVec,
    pub state_save_failures: IntGauge,
    pub events_received: IntCounterVec,
    pub events_dropped: IntCounter,
    pub name_parse_errors: IntCounterVec,
    pub tls_ech: IntCounter,
    pub names_cached: IntGauge,
    /// Captured DHCP frames by outcome (`learnt`, `not_a_request`, `malformed`,
    /// `rate_limited`, `queue_full`).
    pub dhcp_requests: IntCounterVec,
    pub dhcp_fingerprints: IntGauge,
    pub config_warnings: IntGauge,
    pub policy_violations: IntCounterVec,
    pub policy_alerts: IntGaugeVec,
    pub policy_evaluation: Histogram,
    pub policy_series: IntGauge,
    pub policy_series_dropped: IntCounter,
    pub config_last_reload_successful: IntGauge,
    pub config_reload_failures: IntCounter,
    /// Changes of the LAN prefixes followed from the interface (`lan_prefixes` unset).
    pub lan_prefix_changes: IntCounter,
    pub lan_prefixes: IntGauge,
    pub http_connections: IntGauge,
    pub http_connections_closed: IntCounterVec,
    /// The traffic families scrapes get, and the ones the last poll made, held back until
    /// [`Metrics::release`] (the agent releases them once the state holding them is saved).
    traffic: RwLock<Arc<Traffic>>,
    staged: Mutex<Option<Arc<Traffic>>>,
    /// The registered counters, continued across starts and released like the traffic.
    continued: Mutex<Continued>,
}

impl Metrics {
    pub fn new() -> prometheus::Result<Metrics> {
        let families = Families {
            registry: Registry::new_custom(Some(NAMESPACE.into()), None)?,
            registered: Mutex::default(),
        };
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
            let g = IntGauge::new(name, help)?;
            families.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let gauge_vec =
            |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntGaugeVec> {
                let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
                families.register(Box::new(g.clone()))?;
                Ok(g)
            };
        let poll_duration = Histogram::with_opts(
            HistogramOpts::new(
                "poll_duration_seconds",
                "Time to read the kernel maps and update the counters.",
            )
            .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
        )?;
        families.register(Box::new(poll_duration.clone()))?;
        let build_info =
            gauge_vec("build_info", "Version of the running agent (always 1).", &["version"])?;
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::new(name, help)?;
            families.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let policy_violations = IntCounterVec::new(
            Opts::new(
                "policy_violations_total",
                "Alerts that started firing, by policy rule and client.",
            ),
            &["rule", "client"],
        )?;
        families.register(Box::new(policy_violations.clone()))?;
        let policy_evaluation = Histogram::with_opts(
            HistogramOpts::new(
                "policy_evaluation_seconds",
                "Time to evaluate the policy over one poll's flows.",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
            ]),
        )?;
        families.register(Box::new(policy_evaluation.clone()))?;
        let metrics = Metrics {
            policy_violations,
            policy_evaluation,
            policy_alerts: gauge_vec(
                "policy_alerts",
                "Alerts of each policy rule now, by state (pending or firing).",
                &["rule", "state"],
            )?,
            policy_series: gauge(
                "policy_series",
                "(rule, client, destination) series the policy evaluator tracks.",
            )?,
            clients_retired: {
                let c = IntCounterVec::new(
                    Opts::new(
                        "clients_retired_total",
                        "Clients whose kernel slot was freed, by reason: idle (unseen for client_idle_expiry) or one_way (slots were short and no packet had ever gone to the client: a spoofed or one-packet MAC).",
                    ),
                    &["reason"],
                )?;
                families.register(Box::new(c.clone()))?;
                for reason in ["idle", "one_way"] {
                    c.with_label_values(&[reason]);
                }
                c
            },
            tracked: {
                let g = gauge_vec(
                    "tracked",
                    "Remotes and destinations the agent remembers (with or without a series of their own), by kind.",
                    &["kind"],
                )?;
                for kind in ["remote", "destination"] {
                    g.with_label_values(&[kind]);
                }
                g
            },
            tracking_forgotten: {
                let c = IntCounterVec::new(
                    Opts::new(
                        "tracking_forgotten_total",
                        "Remotes and destinations forgotten to stay within the tracking bounds (least active first; their traffic stays in \"other\"), by kind.",
                    ),
                    &["kind"],
                )?;
                families.register(Box::new(c.clone()))?;
                for kind in ["remote", "destination"] {
                    c.with_label_values(&[kind]);
                }
                c
            },
            policy_series_dropped: counter(
                "policy_series_dropped_total",
                "Series the policy evaluator could not track (its limit was reached).",
            )?,
            config_last_reload_successful: gauge(
                "config_last_reload_successful",
                "1 if the last config and policy (re)load worked, 0 if the files on disk were refused.",
            )?,
            config_reload_failures: counter(
                "config_reload_failures_total",
                "SIGHUP reloads refused because the new config or policy was invalid.",
            )?,
            lan_prefix_changes: counter(
                "lan_prefix_changes_total",
                "Changes of the LAN prefixes followed from the interface's addresses (lan_prefixes not set).",
            )?,
            lan_prefixes: gauge(
                "lan_prefixes",
                "LAN prefixes the kernel programs count as clients now.",
            )?,
            http_connections: gauge(
                "http_connections",
                "HTTP connections open now (/metrics, /healthz, the API).",
            )?,
            http_connections_closed: {
                let c = IntCounterVec::new(
                    Opts::new(
                        "http_connections_closed_total",
                        "HTTP connections the agent closed, by reason: address_limit, limit (refused at once), evicted (for a client with fewer connections), header_timeout, write_timeout.",
                    ),
                    &["reason"],
                )?;
                families.register(Box::new(c.clone()))?;
                for reason in
                    ["address_limit", "limit", "evicted", "header_timeout", "write_timeout"]
                {
                    c.with_label_values(&[reason]);
                }
                c
            },
            poll_duration,
            flows_tracked: gauge(
                "flows_tracked",
                "Flows in the kernel flow map at the last poll.",
            )?,
            flows_capacity: gauge(
                "flows_capacity",
                "Capacity of the kernel flow map (LRU: beyond it the least recent flows are evicted).",
            )?,
            clients_tracked: gauge(
                "clients_tracked",
                "Clients holding a kernel slot (per-client totals) at the last poll.",
            )?,
            clients_capacity: gauge(
                "clients_capacity",
                "Client slots in the kernel (beyond them new clients are not counted).",
            )?,
            xdp_attach_mode: gauge_vec(
                "xdp_attach_mode",
                "XDP attach mode in use on the LAN interface (1 for the mode in use).",
                &["interface", "mode"],
            )?,
            tc_attach_mode: gauge_vec(
                "tc_attach_mode",
                "How the TC egress program is attached (1 for the mode in use).",
                &["interface", "mode"],
            )?,
            flow_offload: gauge_vec(
                "flow_offload",
                "1 when the router offloads flows (kind software or hardware), which the sensor then partly misses.",
                &["kind"],
            )?,
            state_save_failures: gauge(
                "state_save_failures",
                "Consecutive failures to write the state file (0 when the last save worked).",
            )?,
            events_received: {
                let c = IntCounterVec::new(
                    Opts::new(
                        "events_received_total",
                        "Naming events (DNS answers, TLS ClientHellos, HTTP requests) read from the kernel ring buffer.",
                    ),
                    &["kind"],
                )?;
                families.register(Box::new(c.clone()))?;
                c
            },
            events_dropped: {
                let c = IntCounter::new(
                    "events_dropped_total",
                    "Naming events read but dropped in the agent (malformed, or the agent was too busy).",
                )?;
                families.register(Box::new(c.clone()))?;
                c
            },
            name_parse_errors: {
                let c = IntCounterVec::new(
                    Opts::new(
                        "name_parse_errors_total",
                        "Naming events whose payload could not be parsed, by kind.",
                    ),
                    &["kind"],
                )?;
                families.register(Box::new(c.clone()))?;
                c
            },
            tls_ech: counter(
                "tls_ech_total",
                "ClientHellos (TLS or QUIC) offering Encrypted Client Hello: their SNI names only the client-facing server (GREASE ECH included).",
            )?,
            names_cached: gauge(
                "names_cached",
                "Names (from DNS, SNI and HTTP Host) held for attributing flows.",
            )?,
            dhcp_requests: {
                let c = IntCounterVec::new(
                    Opts::new(
                        "dhcp_requests_total",
                        "DHCP frames captured from clients for device fingerprints, by outcome.",
                    ),
                    &["outcome"],
                )?;
                families.register(Box::new(c.clone()))?;
                c
            },
            dhcp_fingerprints: gauge(
                "dhcp_fingerprints",
                "Clients with a DHCP fingerprint (their latest requests) held.",
            )?,
            config_warnings: gauge(
                "enrichment_warnings",
                "Enrichment sources that are missing or unreadable (OUI, leases, GeoIP databases); see the log.",
            )?,
            traffic: RwLock::new(Arc::default()),
            staged: Mutex::default(),
            continued: Mutex::default(),
            families,
        };
        // Every kind shows from the start (0), so that rate() sees the first events.
        for kind in EventKind::ALL {
            metrics.events_received.with_label_values(&[kind.as_str()]);
            metrics.name_parse_errors.with_label_values(&[kind.as_str()]);
        }
        for outcome in DHCP_OUTCOMES {
            metrics.dhcp_requests.with_label_values(&[outcome]);
        }
        Ok(metrics)
    }

    /// Rebuilds the traffic families from the accounting, held back until [`Metrics::release`].
    pub fn publish(&self, acct: &Accounting, client: &dyn Fn(&Mac) -> ClientLabels) {
        let traffic = Arc::new(Traffic::new(acct, client));
        *self.staged.lock().unwrap_or_else(|e| e.into_inner()) = Some(traffic);
    }

    /// The registered counters continue from these (the state file's, at start).
    pub fn continue_counters(&self, saved: Vec<SavedCounter>) {
        self.continued.lock().unwrap_or_else(|e| e.into_inner()).continue_from(saved);
    }

    /// Every registered counter series as it stands (what the state file saves).
    pub fn counters(&self) -> Vec<SavedCounter> {
        let gathered = self.families.registry.gather();
        self.continued.lock().unwrap_or_else(|e| e.into_inner()).snapshot(&gathered)
    }

    /// Lets scrapes see the traffic families the last [`Metrics::publish`] made and the
    /// registered counters as `counters` has them. The agent calls it once the state holding
    /// both is saved: an exported counter is then never higher than what a restart (even after
    /// a crash and a reboot) continues from.
    pub fn release(&self, counters: &[SavedCounter]) {
        self.continued.lock().unwrap_or_else(|e| e.into_inner()).release(counters);
        let staged = self.staged.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let (Some(traffic), Ok(mut slot)) = (staged, self.traffic.write()) {
            *slot = traffic;
        }
    }

    /// Registers a component's own collector (alert delivery), catalogued like the agent's.
    pub fn register(&self, collector: Box<dyn Collector>) -> prometheus::Result<()> {
        self.families.register(collector)
    }

    /// Every family the agent can export: the registered ones, then the traffic families.
    pub fn catalogue(&self) -> Vec<FamilyDoc> {
        let mut all = self.families.registered.lock().unwrap_or_else(|e| e.into_inner()).clone();
        all.extend(super::exposition::families());
        all
    }

    /// Keeps the `policy_violations_total` series of the rules in `rules` only: a rule removed
    /// from the policy (SIGHUP, or while the agent was stopped: the state file still holds its
    /// series) leaves /metrics at once, from this process's counts, from what they continue
    /// from and from what scrapes see. A rule of that name added again starts from 0.
    pub fn keep_policy_rules(&self, rules: &[&str]) {
        let kept = |rule: &str| rules.contains(&rule);
        for family in self.policy_violations.collect() {
            for metric in family.get_metric() {
                let label = |name: &str| {
                    metric.get_label().iter().find(|l| l.name() == name).map(|l| l.value())
                };
                if let (Some(rule), Some(client)) = (label("rule"), label("client"))
                    && !kept(rule)
                {
                    // Absent already is fine: nothing to remove.
                    let _ = self.policy_violations.remove_label_values(&[rule, client]);
                }
            }
        }
        let name = format!("{}_policy_violations_total", super::NAMESPACE);
        let keep = |labels: &[(String, String)]| labels.iter().any(|(n, v)| n == "rule" && kept(v));
        self.continued.lock().unwrap_or_else(|e| e.into_inner()).forget(&name, &keep);
    }

    /// Pending and firing alerts per rule; rules no longer in the policy disappear.
    pub fn set_policy_alerts(&self, counts: &std::collections::BTreeMap<String, (usize, usize)>) {
        self.policy_alerts.reset();
        for (rule, (pending, firing)) in counts {
            self.policy_alerts.with_label_values(&[rule.as_str(), "pending"]).set(*pending as i64);
            self.policy_alerts.with_label_values(&[rule.as_str(), "firing"]).set(*firing as i64);
        }
    }

    /// The text exposition for a scrape: the health metrics, then the traffic families of the
    /// last poll, written a chunk at a time as the scrape reads them.
    pub fn exposition(&self) -> Result<(Vec<u8>, Chunks), prometheus::Error> {
        let traffic = self.traffic.read().map(|t| Arc::clone(&t)).unwrap_or_default();
        let mut health = Vec::with_capacity(16 * 1024);
        let gathered = self.families.registry.gather();
        let families = self.continued.lock().unwrap_or_else(|e| e.into_inner()).exposed(gathered);
        TextEncoder::new().encode(&families, &mut health)?;
        Ok((health, traffic.chunks()))
    }

    /// [`Metrics::exposition`] as one text.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let (health, traffic) = self.exposition()?;
        let mut text =
            String::from_utf8(health).map_err(|e| prometheus::Error::Msg(e.to_string()))?;
        text.extend(traffic);
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rule removed from the policy takes its violation series out of /metrics at once:
    /// this process's, the ones continued from the state file, and the ones scrapes saw.
    #[test]
    fn a_removed_rule_leaves_no_violation_series() {
        let m = Metrics::new().unwrap();
        let saved = |rule: &str, client: &str, value: f64| SavedCounter {
            name: "gwsensor_policy_violations_total".into(),
            help: "Alerts that started firing, by policy rule and client.".into(),
            labels: vec![("client".into(), client.into()), ("rule".into(), rule.into())],
            value,
        };
        // From the state file: a rule removed while the agent was stopped, and two kept.
        m.continue_counters(vec![
            saved("Gone", "tv", 4.0),
            saved("Kept", "tv", 2.0),
            saved("Old", "phone", 1.0),
        ]);
        m.policy_violations.with_label_values(&["Kept", "tv"]).inc();
        m.policy_violations.with_label_values(&["Old", "laptop"]).inc();
        m.release(&m.counters());
        let violations = |m: &Metrics| -> Vec<String> {
            m.render()
                .unwrap()
                .lines()
                .filter(|l| l.starts_with("gwsensor_policy_violations_total"))
                .map(str::to_string)
                .collect()
        };
        assert_eq!(
            violations(&m),
            [
                r#"gwsensor_policy_violations_total{client="laptop",rule="Old"} 1"#,
                r#"gwsensor_policy_violations_total{client="phone",rule="Old"} 1"#,
                r#"gwsensor_policy_violations_total{client="tv",rule="Gone"} 4"#,
                r#"gwsensor_policy_violations_total{client="tv",rule="Kept"} 3"#,
            ]
        );
        // At start, the policy has Kept and Old: Gone leaves, before the next save.
        m.keep_policy_rules(&["Kept", "Old"]);
        assert_eq!(
            violations(&m),
            [
                r#"gwsensor_policy_violations_total{client="laptop",rule="Old"} 1"#,
                r#"gwsensor_policy_violations_total{client="phone",rule="Old"} 1"#,
                r#"gwsensor_policy_violations_total{client="tv",rule="Kept"} 3"#,
            ]
        );
        // A SIGHUP removes Old: its series go, the saved one and this process's alike, and
        // stay gone after the next save.
        m.keep_policy_rules(&["Kept"]);
        let kept = [r#"gwsensor_policy_violations_total{client="tv",rule="Kept"} 3"#];
        assert_eq!(violations(&m), kept);
        m.release(&m.counters());
        assert_eq!(violations(&m), kept);
        assert_eq!(
            m.counters()
                .iter()
                .filter(|c| c.name == "gwsensor_policy_violations_total")
                .map(|c| c.value)
                .collect::<Vec<_>>(),
            [3.0]
        );
        // No rule left: no series, and no family without series.
        m.keep_policy_rules(&[]);
        m.release(&m.counters());
        assert!(!m.render().unwrap().contains("gwsensor_policy_violations_total"));
    }

    /// The registry's health metrics and the traffic text in one scrape.
    #[test]
    fn render_joins_health_and_traffic() {
        let m = Metrics::new().unwrap();
        m.flows_tracked.set(7);
        let mut acct = Accounting::default();
        acct.flow_evictions = 3;
        m.publish(&acct, &|_| ClientLabels::default());
        // Held back until released (the agent releases once the state is saved); until then
        // no traffic family at all (zeros would read as a reset after a restart).
        let text = m.render().unwrap();
        assert!(!text.contains("gwsensor_flow_evictions_total"), "{text}");
        m.release(&m.counters());
        let text = m.render().unwrap();
        assert!(text.lines().any(|l| l == "gwsensor_flows_tracked 7"), "{text}");
        assert!(text.lines().any(|l| l == "gwsensor_flow_evictions_total 3"), "{text}");
        // No client: no client family at all, not even its HELP line.
        assert!(
            !text.contains("gwsensor_client_bytes_total")
                && !text.contains("gwsensor_remote_packets_total"),
            "{text}"
        );
    }
}
