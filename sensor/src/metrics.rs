//! The Prometheus exposition: traffic counters rendered from the accounting after each poll,
//! and the agent's own health metrics.

use std::{collections::BTreeMap, sync::RwLock};

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
    proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType},
};
use sensor_common::{Direction, EventKind, EventOutcome, Stat};

use crate::{
    accounting::{Accounting, Mac, Tally},
    collector::Snapshot,
    labels,
};

/// How a client is named in the metrics (from the inventory, DHCP leases or a fallback).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientLabels {
    pub name: String,
    pub group: String,
    pub vendor: String,
    pub source: String,
    pub tags: BTreeMap<String, String>,
}

pub const NAMESPACE: &str = "gwsensor";

/// Health metrics are ordinary registered collectors; traffic families are rebuilt each poll.
pub struct Metrics {
    registry: Registry,
    pub poll_duration: Histogram,
    pub flows_tracked: IntGauge,
    pub flows_capacity: IntGauge,
    pub clients_tracked: IntGauge,
    pub clients_capacity: IntGauge,
    pub xdp_attach_mode: IntGaugeVec,
    pub tc_attach_mode: IntGaugeVec,
    pub state_save_failures: IntGauge,
    pub events_received: IntCounterVec,
    pub events_dropped: IntCounter,
    pub name_parse_errors: IntCounterVec,
    pub names_cached: IntGauge,
    pub config_warnings: IntGauge,
    pub policy_violations: IntCounterVec,
    pub policy_alerts: IntGaugeVec,
    pub policy_evaluation: Histogram,
    pub policy_series: IntGauge,
    pub policy_series_dropped: IntCounter,
    pub config_last_reload_successful: IntGauge,
    pub config_reload_failures: IntCounter,
    traffic: RwLock<Vec<MetricFamily>>,
}

impl Metrics {
    pub fn new() -> prometheus::Result<Metrics> {
        let registry = Registry::new_custom(Some(NAMESPACE.into()), None)?;
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntGaugeVec> {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let poll_duration = Histogram::with_opts(
            HistogramOpts::new("poll_duration_seconds", "Time to read the kernel maps and update the counters.")
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
        )?;
        registry.register(Box::new(poll_duration.clone()))?;
        let build_info = gauge_vec("build_info", "Version of the running agent (always 1).", &["version"])?;
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let policy_violations = IntCounterVec::new(
            Opts::new("policy_violations_total", "Alerts that started firing, by policy rule and client."),
            &["rule", "client"],
        )?;
        registry.register(Box::new(policy_violations.clone()))?;
        let policy_evaluation = Histogram::with_opts(
            HistogramOpts::new("policy_evaluation_seconds", "Time to evaluate the policy over one poll's flows.")
                .buckets(vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25]),
        )?;
        registry.register(Box::new(policy_evaluation.clone()))?;
        let metrics = Metrics {
            policy_violations,
            policy_evaluation,
            policy_alerts: gauge_vec("policy_alerts", "Alerts of each policy rule now, by state (pending or firing).", &["rule", "state"])?,
            policy_series: gauge("policy_series", "(rule, client, destination) series the policy evaluator tracks.")?,
            policy_series_dropped: counter("policy_series_dropped_total", "Series the policy evaluator could not track (its limit was reached).")?,
            config_last_reload_successful: gauge("config_last_reload_successful", "1 if the last config and policy (re)load worked, 0 if the files on disk were refused.")?,
            config_reload_failures: counter("config_reload_failures_total", "SIGHUP reloads refused because the new config or policy was invalid.")?,
            poll_duration,
            flows_tracked: gauge("flows_tracked", "Flows in the kernel flow map at the last poll.")?,
            flows_capacity: gauge("flows_capacity", "Capacity of the kernel flow map (LRU: beyond it the least recent flows are evicted).")?,
            clients_tracked: gauge("clients_tracked", "Clients holding a kernel slot (per-client totals) at the last poll.")?,
            clients_capacity: gauge("clients_capacity", "Client slots in the kernel (beyond them new clients are not counted).")?,
            xdp_attach_mode: gauge_vec("xdp_attach_mode", "XDP attach mode in use on the LAN interface (1 for the mode in use).", &["interface", "mode"])?,
            tc_attach_mode: gauge_vec("tc_attach_mode", "How the TC egress program is attached (1 for the mode in use).", &["interface", "mode"])?,
            state_save_failures: gauge("state_save_failures", "Consecutive failures to write the state file (0 when the last save worked).")?,
            events_received: {
                let c = IntCounterVec::new(Opts::new("events_received_total", "Naming events (DNS answers, TLS ClientHellos, HTTP requests) read from the kernel ring buffer."), &["kind"])?;
                registry.register(Box::new(c.clone()))?;
                c
            },
            events_dropped: {
                let c = IntCounter::new("events_dropped_total", "Naming events read but dropped in the agent (malformed, or the agent was too busy).")?;
                registry.register(Box::new(c.clone()))?;
                c
            },
            name_parse_errors: {
                let c = IntCounterVec::new(Opts::new("name_parse_errors_total", "Naming events whose payload could not be parsed, by kind."), &["kind"])?;
                registry.register(Box::new(c.clone()))?;
                c
            },
            names_cached: gauge("names_cached", "Names (from DNS, SNI and HTTP Host) held for attributing flows.")?,
            config_warnings: gauge("enrichment_warnings", "Enrichment sources that are missing or unreadable (OUI, leases, GeoIP databases); see the log.")?,
            traffic: RwLock::new(Vec::new()),
            registry,
        };
        // Every kind shows from the start (0), so that rate() sees the first events.
        for kind in EventKind::ALL {
            metrics.events_received.with_label_values(&[kind.as_str()]);
            metrics.name_parse_errors.with_label_values(&[kind.as_str()]);
        }
        Ok(metrics)
    }

    /// Rebuilds the traffic families from the accounting and the kernel stats.
    pub fn publish(&self, acct: &Accounting, snap: &Snapshot, client: &dyn Fn(&Mac) -> ClientLabels) {
        let families = traffic_families(acct, snap, client);
        if let Ok(mut slot) = self.traffic.write() {
            *slot = families;
        }
    }

    /// The registry, for components that register their own collectors (alert delivery).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Pending and firing alerts per rule; rules no longer in the policy disappear.
    pub fn set_policy_alerts(&self, counts: &std::collections::BTreeMap<String, (usize, usize)>) {
        self.policy_alerts.reset();
        for (rule, (pending, firing)) in counts {
            self.policy_alerts.with_label_values(&[rule.as_str(), "pending"]).set(*pending as i64);
            self.policy_alerts.with_label_values(&[rule.as_str(), "firing"]).set(*firing as i64);
        }
    }

    /// The text exposition for a scrape.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut families = self.registry.gather();
        if let Ok(traffic) = self.traffic.read() {
            families.extend(traffic.iter().cloned());
        }
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = Vec::new();
        TextEncoder::new().encode(&families, &mut out)?;
        String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

fn label(name: &str, value: impl Into<String>) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.into());
    l.set_value(value.into());
    l
}

fn counter(labels: Vec<LabelPair>, value: u64) -> Metric {
    let mut c = Counter::default();
    c.set_value(value as f64);
    let mut m = Metric::from_label(labels);
    m.set_counter(c);
    m
}

fn gauge(labels: Vec<LabelPair>, value: f64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(value);
    let mut m = Metric::from_label(labels);
    m.set_gauge(g);
    m
}

fn family(name: &str, help: &str, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(format!("{NAMESPACE}_{name}"));
    f.set_help(help.into());
    f.set_field_type(MetricType::COUNTER);
    f.set_metric(metrics);
    f
}

fn gauge_family(name: &str, help: &str, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = family(name, help, metrics);
    f.set_field_type(MetricType::GAUGE);
    f
}

/// Label values a client's series share.
fn client_labels(name: &str, mac: &str, dir: Direction) -> Vec<LabelPair> {
    vec![label("client", name), label("mac", mac), label("direction", dir.as_str())]
}

/// A tag key as a label name: `tag_` + the key (validated as a label name by the config).
fn tag_label(key: &str) -> String {
    format!("tag_{key}")
}

fn push_tally(packets: &mut Vec<Metric>, bytes: &mut Vec<Metric>, base: &[LabelPair], dir: Direction, t: &Tally) {
    packets.push(counter(base.to_vec(), t.packets(dir)));
    bytes.push(counter(base.to_vec(), t.bytes(dir)));
}

/// Remote series exist per direction only once that direction carried traffic: most remotes
/// are one-sided for a long time (a DNS server, an upload target), and a zero series would
/// double the series count for nothing.
fn push_remote(packets: &mut Vec<Metric>, bytes: &mut Vec<Metric>, base: &[LabelPair], dir: Direction, t: &Tally) {
    if t.packets(dir) != 0 {
        push_tally(packets, bytes, base, dir, t);
    }
}

fn traffic_families(acct: &Accounting, snap: &Snapshot, client: &dyn Fn(&Mac) -> ClientLabels) -> Vec<MetricFamily> {
    let (mut client_packets, mut client_bytes) = (Vec::new(), Vec::new());
    let (mut remote_packets, mut remote_bytes) = (Vec::new(), Vec::new());
    let (mut dest_packets, mut dest_bytes) = (Vec::new(), Vec::new());
    let mut info = Vec::new();
    let (mut remotes_in_other, mut destinations_in_other) = (0, 0);
    for (mac_raw, account) in &acct.clients {
        let mac = labels::mac(mac_raw);
        let names = client(mac_raw);
        let mut info_labels = vec![
            label("client", names.name.as_str()),
            label("mac", mac.as_str()),
            label("group", names.group.as_str()),
            label("vendor", names.vendor.as_str()),
            label("source", names.source.as_str()),
        ];
        info_labels.extend(names.tags.iter().map(|(k, v)| label(&tag_label(k), v.as_str())));
        info.push(gauge(info_labels, 1.0));
        remotes_in_other += account.remotes.in_other();
        destinations_in_other += account.destinations.in_other();
        for dir in Direction::ALL {
            let base = client_labels(&names.name, &mac, dir);
            push_tally(&mut client_packets, &mut client_bytes, &base, dir, &account.totals);
            for (id, remote) in account.remotes.series() {
                let mut l = base.clone();
                l.push(label("remote", labels::ip(&id.ip).to_string()));
                l.push(label("protocol", labels::protocol(id.protocol)));
                l.push(label("port", id.port.to_string()));
                push_remote(&mut remote_packets, &mut remote_bytes, &l, dir, &remote.exported);
            }
            // Only clients that overflowed their top-N carry an "other" series.
            let mut l = base.clone();
            l.extend([label("remote", "other"), label("protocol", ""), label("port", "")]);
            push_remote(&mut remote_packets, &mut remote_bytes, &l, dir, &account.remotes.other);
            for (key, dest) in account.destinations.series() {
                let mut l = base.clone();
                l.push(label("destination", key.destination.as_str()));
                l.push(label("country", key.country.as_str()));
                l.push(label("asn", if key.asn == 0 { String::new() } else { key.asn.to_string() }));
                push_remote(&mut dest_packets, &mut dest_bytes, &l, dir, &dest.exported);
            }
            let mut l = base;
            l.extend([label("destination", "other"), label("country", ""), label("asn", "")]);
            push_remote(&mut dest_packets, &mut dest_bytes, &l, dir, &account.destinations.other);
        }
    }
    let mut stats = Vec::new();
    for dir in Direction::ALL {
        for stat in Stat::ALL {
            let l = vec![label("direction", dir.as_str()), label("reason", stat.as_str())];
            stats.push(counter(l, snap.stat(stat, dir)));
        }
    }
    let mut events = Vec::new();
    for kind in EventKind::ALL {
        for outcome in EventOutcome::ALL {
            let l = vec![label("kind", kind.as_str()), label("outcome", outcome.as_str())];
            events.push(counter(l, snap.event(kind, outcome)));
        }
    }
    let evictions = vec![counter(Vec::new(), acct.flow_evictions)];
    let overflow = vec![
        gauge(vec![label("family", "remote")], remotes_in_other as f64),
        gauge(vec![label("family", "destination")], destinations_in_other as f64),
    ];
    [
        family("client_packets_total", "Packets of a client (one per MAC, whatever its IPs), by direction.", client_packets),
        family("client_bytes_total", "Bytes (Ethernet frames) of a client, by direction.", client_bytes),
        gauge_family("client_info", "A client's name, group, vendor, where the name came from, and its tags (always 1).", info),
        family("remote_packets_total", "Packets between a client and a remote endpoint; remote=\"other\" sums the remotes beyond the client's top-N.", remote_packets),
        family("remote_bytes_total", "Bytes between a client and a remote endpoint; remote=\"other\" sums the remotes beyond the client's top-N.", remote_bytes),
        family("destination_packets_total", "Packets between a client and a named destination; destination=\"other\" sums those beyond the top-N or the series budget.", dest_packets),
        family("destination_bytes_total", "Bytes between a client and a named destination; destination=\"other\" sums those beyond the top-N or the series budget.", dest_bytes),
        gauge_family("series_overflow", "Remotes or destinations tracked without a series of their own (summed into \"other\"), by family.", overflow),
        family("packets_total", "Every packet the kernel programs saw, by direction and outcome (reason=\"seen\" is all of them).", stats),
        family("kernel_events_total", "Naming events in the kernel, by kind and outcome (sent to the agent, rate_limited, ring_full).", events),
        family("flow_evictions_total", "Flows that left the kernel flow map between two polls (LRU evictions).", evictions),
    ]
    .into_iter()
    .filter(|f| !f.get_metric().is_empty())
    .collect()
}
