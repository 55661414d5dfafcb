//! The Prometheus exposition: traffic counters rendered from the accounting after each poll,
//! and the agent's own health metrics.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{Arc, RwLock},
};

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use sensor_common::{Direction, EventKind, EventOutcome, Stat};

use crate::{
    accounting::{Accounting, ClientAccount, Mac, Tally},
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

/// Health metrics are ordinary registered collectors; traffic families are rebuilt each poll,
/// as text.
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
    traffic: RwLock<Arc<String>>,
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
            traffic: RwLock::new(Arc::default()),
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
        let Ok(mut slot) = self.traffic.write() else { return };
        // Rewritten in place unless a scrape still sends it (the text is megabytes at thousands
        // of clients: two of them were the agent's peak). Scrapes wait for the lock meanwhile.
        let text = match Arc::get_mut(&mut slot) {
            Some(text) => {
                text.clear();
                text
            }
            None => {
                // Sized like the last one.
                *slot = Arc::new(String::with_capacity(slot.len() + slot.len() / 8));
                Arc::make_mut(&mut slot)
            }
        };
        traffic_text(text, acct, snap, client);
        // A text that outgrew its buffer doubled it: back to an eighth of slack, so that the
        // next poll's slightly longer text fits without doubling again.
        let room = text.len() + text.len() / 8;
        if text.capacity() > room + text.len() / 8 {
            text.shrink_to(room);
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

    /// The text exposition for a scrape, in its two parts: the health metrics, then the
    /// traffic families as the last poll wrote them (shared, not copied: megabytes at
    /// thousands of clients).
    pub fn exposition(&self) -> Result<(Vec<u8>, Arc<String>), prometheus::Error> {
        let traffic = self.traffic.read().map(|t| Arc::clone(&t)).unwrap_or_default();
        let mut health = Vec::with_capacity(16 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut health)?;
        Ok((health, traffic))
    }

    /// [`Metrics::exposition`] as one text.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let (health, traffic) = self.exposition()?;
        let mut text = String::from_utf8(health).map_err(|e| prometheus::Error::Msg(e.to_string()))?;
        text.reserve_exact(traffic.len());
        text.push_str(&traffic);
        Ok(text)
    }
}

/// The Prometheus text format's escaping of a label value.
fn escape_into(out: &mut String, value: &str) {
    for ch in value.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// One metric family being written: its HELP and TYPE lines, then its series. A family that
/// got no series is taken back out (Prometheus wants no empty families).
struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
    start: usize,
    series: usize,
}

impl<'a> Family<'a> {
    fn begin(out: &'a mut String, name: &'static str, kind: &str, help: &str) -> Family<'a> {
        let start = out.len();
        let _ = writeln!(out, "# HELP {NAMESPACE}_{name} {help}");
        let _ = writeln!(out, "# TYPE {NAMESPACE}_{name} {kind}");
        Family { out, name, start, series: 0 }
    }

    /// `gwsensor_<name>{<labels>,<extra>} <value>`: `labels` is already escaped text
    /// (`k="v",...`), `extra` is escaped here.
    fn series(&mut self, labels: &str, extra: &[(&str, &str)], value: impl std::fmt::Display) {
        let out = &mut *self.out;
        out.push_str(NAMESPACE);
        out.push('_');
        out.push_str(self.name);
        if !labels.is_empty() || !extra.is_empty() {
            out.push('{');
            out.push_str(labels);
            for (i, (k, v)) in extra.iter().enumerate() {
                if i > 0 || !labels.is_empty() {
                    out.push(',');
                }
                out.push_str(k);
                out.push_str("=\"");
                escape_into(out, v);
                out.push('"');
            }
            out.push('}');
        }
        let _ = writeln!(out, " {value}");
        self.series += 1;
    }
}

impl Drop for Family<'_> {
    fn drop(&mut self) {
        if self.series == 0 {
            self.out.truncate(self.start);
        }
    }
}

/// `client="…",mac="…",direction="…"`: the labels a client's traffic series share.
fn client_labels(name: &str, mac: &str, dir: Direction) -> String {
    let mut out = String::with_capacity(name.len() + 48);
    out.push_str("client=\"");
    escape_into(&mut out, name);
    out.push_str("\",mac=\"");
    out.push_str(mac);
    out.push_str("\",direction=\"");
    out.push_str(dir.as_str());
    out.push('"');
    out
}

/// A tag key as a label name: `tag_` + the key (validated as a label name by the config).
fn tag_label(key: &str) -> String {
    format!("tag_{key}")
}

/// A client's names and its series' shared labels, made once per publish.
struct ClientText {
    mac: String,
    names: ClientLabels,
    /// [`client_labels`] per direction.
    base: [String; 2],
}

/// What a remote (or destination) series adds to the client's labels.
type Extra<'a> = [(&'a str, &'a str); 3];

/// Writes each direction's series of a remote or destination that carried traffic that way
/// (most remotes are one-sided for a long time: a zero series would double the series count
/// for nothing). `bytes` picks the family's value.
fn one_sided(f: &mut Family, c: &ClientText, extra: &Extra, t: &Tally, bytes: bool) {
    for dir in Direction::ALL {
        if t.packets(dir) != 0 {
            f.series(&c.base[dir.index()], extra, if bytes { t.bytes(dir) } else { t.packets(dir) });
        }
    }
}

/// The traffic families as exposition text, written straight into `out`, one family after
/// the other: at thousands of clients the series number in the hundred thousands, and
/// building the prometheus crate's structures for them (then cloning them for every scrape)
/// cost more than the rest of a poll; intermediate per-family buffers would double the text.
fn traffic_text(out: &mut String, acct: &Accounting, snap: &Snapshot, client: &dyn Fn(&Mac) -> ClientLabels) {
    let clients: Vec<(&ClientAccount, ClientText)> = acct
        .clients
        .iter()
        .map(|(mac_raw, account)| {
            let mac = labels::mac(mac_raw);
            let names = client(mac_raw);
            let base = Direction::ALL.map(|dir| client_labels(&names.name, &mac, dir));
            (account, ClientText { mac, names, base })
        })
        .collect();

    for (bytes, name, help) in [
        (false, "client_packets_total", "Packets of a client (one per MAC, whatever its IPs), by direction."),
        (true, "client_bytes_total", "Bytes (Ethernet frames) of a client, by direction."),
    ] {
        let mut f = Family::begin(out, name, "counter", help);
        for (account, c) in &clients {
            for dir in Direction::ALL {
                let t = &account.totals;
                f.series(&c.base[dir.index()], &[], if bytes { t.bytes(dir) } else { t.packets(dir) });
            }
        }
    }
    {
        let help = "A client's name, group, vendor, where the name came from, and its tags (always 1).";
        let mut f = Family::begin(out, "client_info", "gauge", help);
        for (_, c) in &clients {
            let tags: Vec<(String, &str)> = c.names.tags.iter().map(|(k, v)| (tag_label(k), v.as_str())).collect();
            let mut labels = vec![
                ("client", c.names.name.as_str()),
                ("mac", c.mac.as_str()),
                ("group", c.names.group.as_str()),
                ("vendor", c.names.vendor.as_str()),
                ("source", c.names.source.as_str()),
            ];
            labels.extend(tags.iter().map(|(k, v)| (k.as_str(), *v)));
            f.series("", &labels, 1);
        }
    }
    for (bytes, name, help) in [
        (false, "remote_packets_total", "Packets between a client and a remote endpoint; remote=\"other\" sums the remotes beyond the client's top-N."),
        (true, "remote_bytes_total", "Bytes between a client and a remote endpoint; remote=\"other\" sums the remotes beyond the client's top-N."),
    ] {
        let mut f = Family::begin(out, name, "counter", help);
        for (account, c) in &clients {
            for (id, remote) in account.remotes.series() {
                let (ip, protocol, port) = (labels::ip(&id.ip).to_string(), labels::protocol(id.protocol), id.port.to_string());
                one_sided(&mut f, c, &[("remote", &ip), ("protocol", &protocol), ("port", &port)], &remote, bytes);
            }
            // Only clients that overflowed their top-N carry an "other" series.
            one_sided(&mut f, c, &[("remote", "other"), ("protocol", ""), ("port", "")], &account.remotes.other, bytes);
        }
    }
    for (bytes, name, help) in [
        (false, "destination_packets_total", "Packets between a client and a named destination; destination=\"other\" sums those beyond the top-N or the series budget."),
        (true, "destination_bytes_total", "Bytes between a client and a named destination; destination=\"other\" sums those beyond the top-N or the series budget."),
    ] {
        let mut f = Family::begin(out, name, "counter", help);
        for (account, c) in &clients {
            for (id, dest) in account.destinations.series() {
                let key = acct.destination(*id);
                let asn = if key.asn == 0 { String::new() } else { key.asn.to_string() };
                let extra = [("destination", key.destination.as_str()), ("country", key.country.as_str()), ("asn", asn.as_str())];
                one_sided(&mut f, c, &extra, &dest, bytes);
            }
            one_sided(&mut f, c, &[("destination", "other"), ("country", ""), ("asn", "")], &account.destinations.other, bytes);
        }
    }
    {
        let help = "Remotes or destinations tracked without a series of their own (summed into \"other\"), by family.";
        let mut f = Family::begin(out, "series_overflow", "gauge", help);
        let remotes: usize = clients.iter().map(|(a, _)| a.remotes.in_other()).sum();
        let destinations: usize = clients.iter().map(|(a, _)| a.destinations.in_other()).sum();
        f.series("", &[("family", "remote")], remotes);
        f.series("", &[("family", "destination")], destinations);
    }
    {
        let help = "Every packet the kernel programs saw, by direction and outcome (reason=\"seen\" is all of them).";
        let mut f = Family::begin(out, "packets_total", "counter", help);
        for dir in Direction::ALL {
            for stat in Stat::ALL {
                f.series("", &[("direction", dir.as_str()), ("reason", stat.as_str())], snap.stat(stat, dir));
            }
        }
    }
    {
        let help = "Naming events in the kernel, by kind and outcome (sent to the agent, rate_limited, ring_full).";
        let mut f = Family::begin(out, "kernel_events_total", "counter", help);
        for kind in EventKind::ALL {
            for outcome in EventOutcome::ALL {
                f.series("", &[("kind", kind.as_str()), ("outcome", outcome.as_str())], snap.event(kind, outcome));
            }
        }
    }
    let help = "Flows that left the kernel flow map between two polls (LRU evictions).";
    Family::begin(out, "flow_evictions_total", "counter", help).series("", &[], acct.flow_evictions);
}

#[cfg(test)]
mod tests {
    use sensor_common::{Counters, FlowKey};

    use super::*;
    use crate::accounting::{DestKey, Params};

    const PARAMS: Params = Params {
        top_remotes: 1,
        top_destinations: 5,
        series_budget: 100,
        remote_idle_expiry_secs: 600,
        destination_idle_expiry_secs: 600,
        client_idle_expiry_secs: 3600,
        score_half_life_secs: 60.0,
        name_wait_secs: 2,
    };

    /// One client, two remotes (one over its top-1), a name that needs escaping: the exact text
    /// Prometheus reads, family by family.
    #[test]
    fn traffic_renders_as_exposition_text_with_escaped_labels() {
        let mac = [0x64, 0x09, 0x80, 0, 0, 1];
        let flow = |last: u8, port: u16| {
            let mut k = FlowKey { client_mac: mac, protocol: 17, remote_port: port, ..FlowKey::default() };
            k.client_ip[10..].copy_from_slice(&[0xff, 0xff, 10, 0, 0, 2]);
            k.remote_ip[10..].copy_from_slice(&[0xff, 0xff, 93, 184, 216, last]);
            k
        };
        let counters = |p: u64, b: u64| Counters { packets: [p, 0], bytes: [b, 0], first_seen_ns: 1, last_seen_ns: 2 };
        let mut snap = Snapshot { flows: vec![(flow(34, 443), counters(3, 3000)), (flow(35, 53), counters(1, 80))], ..Snapshot::default() };
        snap.clients.insert(mac, counters(4, 3080));
        let mut acct = Accounting::default();
        let dest = |k: &FlowKey| DestKey { destination: format!("r{}.example", k.remote_ip[15]), country: "NL".into(), asn: 0 };
        acct.update(&std::sync::Arc::new(snap.clone()), 100, &PARAMS, &dest);
        let labels = |_: &Mac| ClientLabels {
            name: "kid's \"tab\" \\ 2".into(),
            group: "kids".into(),
            vendor: "Xiaomi".into(),
            source: "inventory".into(),
            tags: [("owner".to_string(), "alice".to_string())].into(),
        };
        let mut text = String::new();
        traffic_text(&mut text, &acct, &snap, &labels);
        let c = r#"client="kid's \"tab\" \\ 2",mac="64:09:80:00:00:01""#;
        for line in [
            "# TYPE gwsensor_client_bytes_total counter".to_string(),
            format!("gwsensor_client_bytes_total{{{c},direction=\"upload\"}} 3080"),
            format!("gwsensor_client_packets_total{{{c},direction=\"download\"}} 0"),
            format!("gwsensor_client_info{{{c},group=\"kids\",vendor=\"Xiaomi\",source=\"inventory\",tag_owner=\"alice\"}} 1"),
            format!("gwsensor_remote_bytes_total{{{c},direction=\"upload\",remote=\"93.184.216.34\",protocol=\"udp\",port=\"443\"}} 3000"),
            format!("gwsensor_remote_bytes_total{{{c},direction=\"upload\",remote=\"other\",protocol=\"\",port=\"\"}} 80"),
            format!("gwsensor_destination_packets_total{{{c},direction=\"upload\",destination=\"r35.example\",country=\"NL\",asn=\"\"}} 1"),
            "gwsensor_series_overflow{family=\"remote\"} 1".to_string(),
            "gwsensor_packets_total{direction=\"download\",reason=\"seen\"} 0".to_string(),
            "gwsensor_flow_evictions_total 0".to_string(),
        ] {
            assert!(text.lines().any(|l| l == line), "missing line {line}\nin\n{text}");
        }
        // No download series for remotes that only carried uploads; each family once, whole.
        assert!(!text.contains("remote_bytes_total{client=\"kid's \\\"tab\\\" \\\\ 2\",mac=\"64:09:80:00:00:01\",direction=\"download\""));
        let mut seen = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            if seen.last() != Some(&name) {
                assert!(!seen.contains(&name), "family {name} is split\n{text}");
                seen.push(name);
            }
        }
        assert_eq!(text.lines().filter(|l| l.starts_with("# TYPE")).count(), seen.len());
    }

    /// The registry's health metrics and the traffic text in one scrape.
    #[test]
    fn render_joins_health_and_traffic() {
        let m = Metrics::new().unwrap();
        m.flows_tracked.set(7);
        m.publish(&Accounting::default(), &Snapshot::default(), &|_| ClientLabels::default());
        let text = m.render().unwrap();
        assert!(text.lines().any(|l| l == "gwsensor_flows_tracked 7"), "{text}");
        assert!(text.lines().any(|l| l == "gwsensor_flow_evictions_total 0"), "{text}");
        // No client: no client family at all, not even its HELP line.
        assert!(!text.contains("gwsensor_client_bytes_total") && !text.contains("gwsensor_remote_packets_total"), "{text}");
    }
}
