//! The traffic families as of one poll, kept compactly (each label text once, counters as
//! numbers), and written as Prometheus exposition text a chunk at a time when scraped.
//!
//! The text is several times the data behind it: every line repeats its client's labels, and
//! each remote or destination appears in up to four lines (packets and bytes, by direction).
//! At thousands of clients it was megabytes, the agent's largest buffer between polls; a
//! scrape now holds one chunk of it at a time.

use std::{fmt::Write as _, ops::Range, sync::Arc};

use sensor_common::{Direction, EventKind, EventOutcome, Stat};

use super::{FamilyDoc, NAMESPACE};
use crate::{
    accounting::{Accounting, Tally},
    enrich::ClientLabels,
    types::{Mac, labels},
};

/// A scrape's traffic text comes in chunks of about this size (whole clients each).
const CHUNK: usize = 64 * 1024;

/// One poll's traffic families.
#[derive(Debug, Default)]
pub struct Traffic {
    /// The escaped label texts the rows point into.
    text: String,
    clients: Vec<ClientRow>,
    /// Per client, its remote series then its destination series; only series that carried
    /// traffic (a line is written per direction with packets).
    series: Vec<SeriesRow>,
    /// Whether any remote (destination) series has a line: a family without lines is left
    /// out (Prometheus wants no empty families).
    remote_lines: bool,
    destination_lines: bool,
    /// Remotes and destinations summed into "other".
    overflow: [usize; 2],
    stats: [[u64; Stat::COUNT]; 2],
    events: [[u64; EventOutcome::COUNT]; EventKind::COUNT],
    evictions: u64,
    /// Made from an accounting ([`Traffic::new`]). The empty families an agent serves before
    /// its first poll is released have no lines at all: zeros there would read as a reset of
    /// the kernel's counters after every start.
    made: bool,
}

#[derive(Debug)]
struct ClientRow {
    /// `client="…",mac="…"`.
    labels: Range<usize>,
    /// `,group="…",vendor="…",source="…"` and the tags.
    info: Range<usize>,
    totals: Tally,
    remotes: Range<usize>,
    destinations: Range<usize>,
}

#[derive(Debug)]
struct SeriesRow {
    /// `remote="…",protocol="…",port="…"` or `destination="…",country="…",asn="…"`.
    labels: Range<usize>,
    tally: Tally,
}

/// The families in the order they are written.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Family {
    ClientTotals { bytes: bool },
    ClientInfo,
    Remotes { bytes: bool },
    Destinations { bytes: bool },
    Overflow,
    Packets,
    KernelEvents,
    Evictions,
}

impl Family {
    /// Written client by client (the others at once).
    fn per_client(self) -> bool {
        matches!(
            self,
            Family::ClientTotals { .. }
                | Family::ClientInfo
                | Family::Remotes { .. }
                | Family::Destinations { .. }
        )
    }
}

/// (family, name, type, help)
const FAMILIES: [(Family, &str, &str, &str); 11] = [
    (
        Family::ClientTotals { bytes: false },
        "client_packets_total",
        "counter",
        "Packets of a client (one per MAC, whatever its IPs), by direction.",
    ),
    (
        Family::ClientTotals { bytes: true },
        "client_bytes_total",
        "counter",
        "Bytes (Ethernet frames) of a client, by direction.",
    ),
    (
        Family::ClientInfo,
        "client_info",
        "gauge",
        "A client's name, group, vendor, OS and device class, where the name came from, and its tags (always 1).",
    ),
    (
        Family::Remotes { bytes: false },
        "remote_packets_total",
        "counter",
        "Packets between a client and a remote endpoint; remote=\"other\" sums the remotes beyond the client's top-N.",
    ),
    (
        Family::Remotes { bytes: true },
        "remote_bytes_total",
        "counter",
        "Bytes between a client and a remote endpoint; remote=\"other\" sums the remotes beyond the client's top-N.",
    ),
    (
        Family::Destinations { bytes: false },
        "destination_packets_total",
        "counter",
        "Packets between a client and a named destination; destination=\"other\" sums those beyond the top-N or the series budget.",
    ),
    (
        Family::Destinations { bytes: true },
        "destination_bytes_total",
        "counter",
        "Bytes between a client and a named destination; destination=\"other\" sums those beyond the top-N or the series budget.",
    ),
    (
        Family::Overflow,
        "series_overflow",
        "gauge",
        "Remotes or destinations tracked without a series of their own (summed into \"other\"), by family.",
    ),
    (
        Family::Packets,
        "packets_total",
        "counter",
        "Every packet the kernel programs saw, by direction and outcome (reason=\"seen\" is all of them).",
    ),
    (
        Family::KernelEvents,
        "kernel_events_total",
        "counter",
        "Naming events in the kernel, by kind and outcome (sent to the agent, rate_limited, ring_full).",
    ),
    (
        Family::Evictions,
        "flow_evictions_total",
        "counter",
        "Flows that left the kernel flow map between two polls (LRU evictions).",
    ),
];

/// The traffic families, as the catalogue lists them.
pub fn families() -> impl Iterator<Item = FamilyDoc> {
    FAMILIES
        .iter()
        .map(|(_, name, kind, _)| FamilyDoc { name: format!("{NAMESPACE}_{name}"), kind })
}

/// The Prometheus text format's escaping of a label value.
pub fn escape_into(out: &mut String, value: &str) {
    for ch in value.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// `,name="value"` (escaped).
fn label(out: &mut String, name: impl std::fmt::Display, value: &str) {
    let _ = write!(out, ",{name}=\"");
    escape_into(out, value);
    out.push('"');
}

impl Traffic {
    /// The families of the accounting and the kernel stats; `client` names each client.
    pub fn new(acct: &Accounting, client: &dyn Fn(&Mac) -> ClientLabels) -> Traffic {
        let mut t = Traffic {
            stats: acct.kernel.stats,
            events: acct.kernel.events,
            evictions: acct.flow_evictions,
            made: true,
            ..Traffic::default()
        };
        // The "other" series of every client share their labels.
        let other_remote = t.span(|s| s.push_str("remote=\"other\",protocol=\"\",port=\"\""));
        let other_destination =
            t.span(|s| s.push_str("destination=\"other\",country=\"\",asn=\"\""));
        let mut number = itoa::Buffer::new();
        for (mac, account) in &acct.clients {
            let names = client(mac);
            let labels = t.span(|s| {
                s.push_str("client=\"");
                escape_into(s, &names.name);
                s.push_str("\",mac=\"");
                s.push_str(&labels::mac(mac));
                s.push('"');
            });
            let info = t.span(|s| {
                label(s, "group", &names.group);
                label(s, "vendor", &names.vendor);
                label(s, "os", &names.os);
                label(s, "device_class", &names.device_class);
                label(s, "mac_type", names.mac_type);
                label(s, "source", &names.source);
                for (k, v) in &names.tags {
                    // Tag keys are validated as label names by the config.
                    label(s, format_args!("tag_{k}"), v);
                }
            });
            let start = t.series.len();
            for (id, tally) in account.remotes.series() {
                if has_lines(&tally) {
                    let labels = t.span(|s| {
                        let _ = write!(
                            s,
                            "remote=\"{}\",protocol=\"{}\",port=\"",
                            labels::ip(&id.ip),
                            labels::protocol(id.protocol)
                        );
                        s.push_str(number.format(id.port));
                        s.push('"');
                    });
                    t.series.push(SeriesRow { labels, tally });
                }
            }
            // Only clients that overflowed their top-N carry an "other" series.
            if has_lines(&account.remotes.other) {
                t.series
                    .push(SeriesRow { labels: other_remote.clone(), tally: account.remotes.other });
            }
            let remotes = start..t.series.len();
            t.remote_lines |= !remotes.is_empty();
            for (id, tally) in account.destinations.series() {
                if has_lines(&tally) {
                    let key = acct.destination(*id);
                    let labels = t.span(|s| {
                        s.push_str("destination=\"");
                        escape_into(s, &key.destination);
                        s.push('"');
                        label(s, "country", &key.country);
                        s.push_str(",asn=\"");
                        if key.asn != 0 {
                            s.push_str(number.format(key.asn));
                        }
                        s.push('"');
                    });
                    t.series.push(SeriesRow { labels, tally });
                }
            }
            if has_lines(&account.destinations.other) {
                t.series.push(SeriesRow {
                    labels: other_destination.clone(),
                    tally: account.destinations.other,
                });
            }
            let destinations = remotes.end..t.series.len();
            t.destination_lines |= !destinations.is_empty();
            t.overflow[0] += account.remotes.in_other();
            t.overflow[1] += account.destinations.in_other();
            t.clients.push(ClientRow {
                labels,
                info,
                totals: account.totals,
                remotes,
                destinations,
            });
        }
        t.text.shrink_to_fit();
        t.series.shrink_to_fit();
        t
    }

    /// Appends what `write` writes to the label texts; returns where it is.
    fn span(&mut self, write: impl FnOnce(&mut String)) -> Range<usize> {
        let start = self.text.len();
        write(&mut self.text);
        start..self.text.len()
    }

    fn text(&self, span: &Range<usize>) -> &str {
        self.text.get(span.clone()).unwrap_or_default()
    }

    fn has_family(&self, family: Family) -> bool {
        match family {
            Family::ClientTotals { .. } | Family::ClientInfo => !self.clients.is_empty(),
            Family::Remotes { .. } => self.remote_lines,
            Family::Destinations { .. } => self.destination_lines,
            Family::Overflow | Family::Packets | Family::KernelEvents | Family::Evictions => {
                self.made
            }
        }
    }

    /// The lines of one client in a per-client family.
    fn client_lines(&self, out: &mut Line, family: Family, c: &ClientRow) {
        let client = self.text(&c.labels);
        match family {
            Family::ClientTotals { bytes } => {
                for dir in Direction::ALL {
                    out.write(client, Some(dir), "", value(&c.totals, dir, bytes));
                }
            }
            Family::ClientInfo => {
                out.begin(client);
                out.text.push_str(self.text(&c.info));
                out.end(1);
            }
            Family::Remotes { bytes } | Family::Destinations { bytes } => {
                let rows = if matches!(family, Family::Remotes { .. }) {
                    &c.remotes
                } else {
                    &c.destinations
                };
                for row in self.series.get(rows.clone()).unwrap_or_default() {
                    for dir in Direction::ALL {
                        if row.tally.packets(dir) != 0 {
                            out.write(
                                client,
                                Some(dir),
                                self.text(&row.labels),
                                value(&row.tally, dir, bytes),
                            );
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// The lines of a family that is not per client.
    fn global_lines(&self, out: &mut Line, family: Family) {
        match family {
            Family::Overflow => {
                out.write("family=\"remote\"", None, "", self.overflow[0] as u64);
                out.write("family=\"destination\"", None, "", self.overflow[1] as u64);
            }
            Family::Packets => {
                for dir in Direction::ALL {
                    for stat in Stat::ALL {
                        let labels =
                            format!("direction=\"{}\",reason=\"{}\"", dir.as_str(), stat.as_str());
                        out.write(&labels, None, "", self.stats[dir.index()][stat as usize]);
                    }
                }
            }
            Family::KernelEvents => {
                for kind in EventKind::ALL {
                    for outcome in EventOutcome::ALL {
                        let labels =
                            format!("kind=\"{}\",outcome=\"{}\"", kind.as_str(), outcome.as_str());
                        out.write(&labels, None, "", self.events[kind as usize][outcome as usize]);
                    }
                }
            }
            Family::Evictions => out.write("", None, "", self.evictions),
            _ => {}
        }
    }

    /// The whole text, a chunk at a time.
    pub fn chunks(self: &Arc<Traffic>) -> Chunks {
        Chunks { traffic: Arc::clone(self), family: 0, client: 0 }
    }
}

/// Whether a series has a line: a direction with packets (most remotes are one-sided for a
/// long time: a zero line would double the series count for nothing).
fn has_lines(tally: &Tally) -> bool {
    tally.packets.iter().any(|&p| p != 0)
}

fn value(t: &Tally, dir: Direction, bytes: bool) -> u64 {
    if bytes { t.bytes(dir) } else { t.packets(dir) }
}

/// Writes the lines of one family: `gwsensor_<name>{<labels>} <value>`.
struct Line<'a> {
    text: &'a mut String,
    name: &'static str,
    number: itoa::Buffer,
}

impl Line<'_> {
    /// A line whose labels are `labels`, then `direction="…"`, then `extra`.
    fn write(&mut self, labels: &str, dir: Option<Direction>, extra: &str, value: u64) {
        self.begin(labels);
        if let Some(dir) = dir {
            self.text.push_str(if labels.is_empty() { "direction=\"" } else { ",direction=\"" });
            self.text.push_str(dir.as_str());
            self.text.push('"');
        }
        if !extra.is_empty() {
            self.text.push(',');
            self.text.push_str(extra);
        }
        self.end(value);
    }

    fn begin(&mut self, labels: &str) {
        self.text.push_str(NAMESPACE);
        self.text.push('_');
        self.text.push_str(self.name);
        self.text.push('{');
        self.text.push_str(labels);
    }

    fn end(&mut self, value: u64) {
        // `name{}` is valid text format, but no other exporter writes it.
        if self.text.ends_with('{') {
            self.text.pop();
        } else {
            self.text.push('}');
        }
        self.text.push(' ');
        self.text.push_str(self.number.format(value));
        self.text.push('\n');
    }
}

/// The traffic text of one scrape, a chunk at a time, from the families of one poll (a poll
/// meanwhile makes new ones; this scrape keeps its own).
pub struct Chunks {
    traffic: Arc<Traffic>,
    /// The family being written, and its next client.
    family: usize,
    client: usize,
}

impl Iterator for Chunks {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        let t = &*self.traffic;
        let mut text = String::with_capacity(CHUNK + CHUNK / 4);
        while text.len() < CHUNK {
            let Some(&(family, name, kind, help)) = FAMILIES.get(self.family) else { break };
            if self.client == 0 {
                if !t.has_family(family) {
                    self.family += 1;
                    continue;
                }
                let _ = write!(
                    text,
                    "# HELP {NAMESPACE}_{name} {help}\n# TYPE {NAMESPACE}_{name} {kind}\n"
                );
            }
            let mut line = Line { text: &mut text, name, number: itoa::Buffer::new() };
            match t.clients.get(self.client) {
                Some(c) if family.per_client() => {
                    t.client_lines(&mut line, family, c);
                    self.client += 1;
                    if self.client == t.clients.len() {
                        (self.family, self.client) = (self.family + 1, 0);
                    }
                }
                _ => {
                    t.global_lines(&mut line, family);
                    (self.family, self.client) = (self.family + 1, 0);
                }
            }
        }
        (!text.is_empty()).then_some(text)
    }
}

#[cfg(test)]
mod tests {
    use sensor_common::{Counters, FlowKey};

    use super::*;
    use crate::{
        accounting::{DestKey, Params},
        kernel::collector::Snapshot,
    };

    const PARAMS: Params =
        Params { top_remotes: 1, top_destinations: 5, ..crate::accounting::fixtures::PARAMS };

    fn text(traffic: Traffic) -> String {
        Arc::new(traffic).chunks().collect()
    }

    /// One client, two remotes (one over its top-1), a name that needs escaping: the exact text
    /// Prometheus reads, family by family.
    #[test]
    fn traffic_renders_as_exposition_text_with_escaped_labels() {
        let mac = [0x64, 0x09, 0x80, 0, 0, 1];
        let flow = |last: u8, port: u16| {
            let mut k =
                FlowKey { client_mac: mac, protocol: 17, remote_port: port, ..FlowKey::default() };
            k.client_ip[10..].copy_from_slice(&[0xff, 0xff, 10, 0, 0, 2]);
            k.remote_ip[10..].copy_from_slice(&[0xff, 0xff, 93, 184, 216, last]);
            k
        };
        let counters = |p: u64, b: u64| Counters {
            packets: [p, 0],
            bytes: [b, 0],
            first_seen_ns: 1,
            last_seen_ns: 2,
        };
        let mut snap = Snapshot {
            flows: vec![(flow(34, 443), counters(3, 3000)), (flow(35, 53), counters(1, 80))],
            ..Snapshot::default()
        };
        snap.clients.insert(mac, counters(4, 3080));
        let mut acct = Accounting::default();
        let dest = |k: &FlowKey| DestKey {
            destination: format!("r{}.example", k.remote_ip[15]),
            country: "NL".into(),
            asn: 0,
        };
        acct.update(&Arc::new(snap.clone()), 100, &PARAMS, &dest);
        let labels = |_: &Mac| ClientLabels {
            name: "kid's \"tab\" \\ 2".into(),
            group: "kids".into(),
            vendor: "Xiaomi".into(),
            oui_vendor: "Xiaomi Communications Co Ltd".into(),
            fingerprint_vendor: "Xiaomi".into(),
            os: "android".into(),
            device_class: "phone".into(),
            mac_type: "universal",
            source: "inventory".into(),
            tags: [("owner".to_string(), "alice".to_string())].into(),
        };
        let text = text(Traffic::new(&acct, &labels));
        let c = r#"client="kid's \"tab\" \\ 2",mac="64:09:80:00:00:01""#;
        for line in [
            "# TYPE gwsensor_client_bytes_total counter".to_string(),
            format!("gwsensor_client_bytes_total{{{c},direction=\"upload\"}} 3080"),
            format!("gwsensor_client_packets_total{{{c},direction=\"download\"}} 0"),
            format!(
                "gwsensor_client_info{{{c},group=\"kids\",vendor=\"Xiaomi\",os=\"android\",device_class=\"phone\",mac_type=\"universal\",source=\"inventory\",tag_owner=\"alice\"}} 1"
            ),
            format!(
                "gwsensor_remote_bytes_total{{{c},direction=\"upload\",remote=\"93.184.216.34\",protocol=\"udp\",port=\"443\"}} 3000"
            ),
            format!(
                "gwsensor_remote_bytes_total{{{c},direction=\"upload\",remote=\"other\",protocol=\"\",port=\"\"}} 80"
            ),
            format!(
                "gwsensor_destination_packets_total{{{c},direction=\"upload\",destination=\"r35.example\",country=\"NL\",asn=\"\"}} 1"
            ),
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

    /// Before its first poll is released an agent serves no traffic family at all: the
    /// kernel's counters at zero would read as a reset after every start (a test scraping
    /// through restarts saw `gwsensor_packets_total` go 15 → 0); from an accounting, even an
    /// empty one, they are there.
    #[test]
    fn no_traffic_family_before_the_first_poll() {
        assert_eq!(text(Traffic::default()), "");
        let fresh = text(Traffic::new(&Accounting::default(), &|_: &Mac| ClientLabels::default()));
        assert!(fresh.lines().any(|l| l == "gwsensor_flow_evictions_total 0"), "{fresh}");
    }

    /// Thousands of clients: the text comes in chunks of whole lines, each family whole and
    /// once, every client's totals in it, the same text however it is cut.
    #[test]
    fn many_clients_come_in_chunks_of_whole_lines() {
        let mut snap = Snapshot::default();
        for i in 0..3000u32 {
            let mac = [2, 0, 0, 0, (i >> 8) as u8, i as u8];
            let mut k =
                FlowKey { client_mac: mac, protocol: 6, remote_port: 443, ..FlowKey::default() };
            k.remote_ip[12..].copy_from_slice(&i.to_be_bytes());
            let c = Counters {
                packets: [1, 2],
                bytes: [u64::from(i), 7],
                first_seen_ns: 1,
                last_seen_ns: 2,
            };
            snap.flows.push((k, c));
            snap.clients.insert(mac, c);
        }
        let mut acct = Accounting::default();
        let dest = |_: &FlowKey| DestKey::default();
        acct.update(&Arc::new(snap.clone()), 100, &PARAMS, &dest);
        let traffic = Arc::new(Traffic::new(&acct, &|m| ClientLabels {
            name: labels::mac(m),
            ..ClientLabels::default()
        }));
        let chunks: Vec<String> = traffic.chunks().collect();
        assert!(chunks.len() > 4, "{} chunks", chunks.len());
        for c in &chunks {
            assert!(c.ends_with('\n') && c.len() < CHUNK + 4096, "chunk of {} bytes", c.len());
        }
        let text = chunks.concat();
        assert_eq!(text.matches("# TYPE gwsensor_remote_bytes_total counter\n").count(), 1);
        for i in [0u32, 1234, 2999] {
            let mac = labels::mac(&[2, 0, 0, 0, (i >> 8) as u8, i as u8]);
            let line = format!(
                "gwsensor_client_bytes_total{{client=\"{mac}\",mac=\"{mac}\",direction=\"upload\"}} {i}\n"
            );
            assert_eq!(text.matches(&line).count(), 1, "{line}");
        }
        // 3,000 clients × (2 totals × 2 families + info + 2 directions × 2 families of remotes
        // and of destinations) + 2 overflow + packets + events + evictions.
        let series = text.lines().filter(|l| !l.starts_with('#')).count();
        let global = 2 + 2 * Stat::COUNT + EventKind::COUNT * EventOutcome::COUNT + 1;
        assert_eq!(series, 3000 * (4 + 1 + 4 + 4) + global);
    }
}
