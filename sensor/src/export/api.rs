//! The agent's local JSON API (docs/api.md): the named view of clients and flows that
//! `sensor clients` and `sensor flows` print. Rebuilt after every poll, served as is.

use std::{collections::BTreeMap, sync::Arc};

use sensor_common::Direction;
use serde::{Deserialize, Serialize, Serializer};

use crate::{
    enrich::geo::GeoInfo,
    kernel::collector::Snapshot,
    types::labels::{self, human_bytes},
};

/// Everything the API serves, as of the last poll, in the form it is served (and read back
/// by `sensor clients` / `sensor flows`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct View {
    /// Unix seconds of the poll this view comes from.
    pub updated: u64,
    pub clients: Vec<ClientView>,
    pub flows: Vec<FlowView>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ClientView {
    /// The device's name (inventory, DHCP lease, or a stable fallback).
    pub client: String,
    pub mac: String,
    pub group: String,
    pub vendor: String,
    /// As the `os` and `device_class` labels (absent from older agents' answers).
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub device_class: String,
    /// Where the name came from: inventory, dhcp or fallback.
    pub source: String,
    pub tags: BTreeMap<String, String>,
    /// Every address seen for this MAC (IPv4 and IPv6) in the current flows.
    pub ips: Vec<String>,
    pub upload_bytes: u64,
    pub download_bytes: u64,
    pub upload_packets: u64,
    pub download_packets: u64,
    /// Flows of this client in the kernel flow map now.
    pub flows: usize,
    /// Unix seconds.
    pub last_seen: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FlowView {
    pub client: String,
    pub mac: String,
    pub client_ip: String,
    pub remote_ip: String,
    pub protocol: String,
    pub port: u16,
    /// The name the client used for the remote (TLS SNI, HTTP Host, or DNS), if known.
    pub name: String,
    /// Registrable domain of `name`.
    pub domain: String,
    pub country: String,
    pub asn: u32,
    pub as_org: String,
    pub upload_bytes: u64,
    pub download_bytes: u64,
    pub upload_packets: u64,
    pub download_packets: u64,
    /// Unix seconds.
    pub first_seen: u64,
    pub last_seen: u64,
}

/// What the server holds between polls: the clients as served, and the flows compactly (the
/// poll's flow list itself, with indices into per-client, per-remote and per-name tables), so
/// that a full flow map costs about 120 bytes a flow here instead of some 500 as text, and no
/// string per flow is made unless the flows are asked for.
#[derive(Debug, Default)]
pub struct LiveView {
    /// Unix seconds of the poll.
    pub updated: u64,
    pub clients: Vec<ClientView>,
    /// The poll's snapshot, shared with the accounting (its last read).
    snap: Arc<Snapshot>,
    /// Parallel to the snapshot's flows.
    rows: Vec<FlowRow>,
    owners: Vec<Owner>,
    geos: Vec<GeoInfo>,
    names: Vec<Box<str>>,
    /// The poll's time as Unix seconds and as the kernel's monotonic clock (ns), to turn the
    /// kernel's first/last-seen stamps into Unix seconds.
    unix: u64,
    mono_ns: u64,
}

/// A flow's client and remote, as indices, and its name.
#[derive(Debug, Clone)]
pub struct FlowRow {
    pub owner: u32,
    pub geo: u32,
    /// Into the view's names; 0 is "no name". 12 bytes a flow: two views coexist while a
    /// poll builds the next.
    pub name: u32,
}

/// A client as its flows show it.
#[derive(Debug, Clone)]
pub struct Owner {
    pub name: String,
    pub mac: String,
}

impl LiveView {
    /// `rows` is parallel to the snapshot's flows; its indices point into `owners`, `geos` and
    /// `names` (whose first is the empty name).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        updated: u64,
        clients: Vec<ClientView>,
        snap: Arc<Snapshot>,
        rows: Vec<FlowRow>,
        owners: Vec<Owner>,
        geos: Vec<GeoInfo>,
        names: Vec<Box<str>>,
        unix: u64,
        mono_ns: u64,
    ) -> LiveView {
        debug_assert_eq!(snap.flows.len(), rows.len());
        LiveView { updated, clients, snap, rows, owners, geos, names, unix, mono_ns }
    }

    pub fn flow_count(&self) -> usize {
        self.snap.flows.len()
    }

    fn unix_of(&self, mono_ns: u64) -> u64 {
        if mono_ns == 0 {
            return 0;
        }
        self.unix.saturating_sub(self.mono_ns.saturating_sub(mono_ns) / 1_000_000_000)
    }

    fn flow(&self, i: usize) -> FlowView {
        let (key, c) = &self.snap.flows[i];
        let row = &self.rows[i];
        let owner = &self.owners[row.owner as usize];
        let geo = &self.geos[row.geo as usize];
        let name = self.names.get(row.name as usize).map_or("", |n| n);
        FlowView {
            client: owner.name.clone(),
            mac: owner.mac.clone(),
            client_ip: labels::ip(&key.client_ip).to_string(),
            remote_ip: labels::ip(&key.remote_ip).to_string(),
            protocol: labels::protocol(key.protocol),
            port: key.remote_port,
            name: name.to_string(),
            domain: if name.is_empty() {
                String::new()
            } else {
                crate::enrich::domain::registrable(name)
            },
            country: geo.country.clone(),
            asn: geo.asn,
            as_org: geo.as_org.clone(),
            upload_bytes: c.bytes[Direction::Upload.index()],
            download_bytes: c.bytes[Direction::Download.index()],
            upload_packets: c.packets[Direction::Upload.index()],
            download_packets: c.packets[Direction::Download.index()],
            first_seen: self.unix_of(c.first_seen_ns),
            last_seen: self.unix_of(c.last_seen_ns),
        }
    }

    /// Flows of one client, matched by name or MAC (all flows for `None`), sorted by client,
    /// then by bytes, largest first; made one at a time as they are serialized.
    pub fn flows_of<'a>(&'a self, client: Option<&str>) -> Flows<'a> {
        Flows { view: self, order: self.order_of(client) }
    }

    /// Indices of [`LiveView::flows_of`]'s flows, in its order.
    fn order_of(&self, client: Option<&str>) -> Vec<u32> {
        let matches =
            |o: &Owner| client.is_none_or(|c| o.name == c || o.mac.eq_ignore_ascii_case(c));
        let wanted: Vec<bool> = self.owners.iter().map(matches).collect();
        let mut order: Vec<u32> = (0..self.rows.len() as u32)
            .filter(|&i| wanted[self.rows[i as usize].owner as usize])
            .collect();
        let bytes = |i: u32| {
            let c = &self.snap.flows[i as usize].1;
            c.bytes[0] + c.bytes[1]
        };
        let owner = |i: u32| &self.owners[self.rows[i as usize].owner as usize].name;
        order.sort_by(|&a, &b| owner(a).cmp(owner(b)).then(bytes(b).cmp(&bytes(a))));
        order
    }

    /// `GET /api/v1/flows` as JSON text, in chunks of about [`JSON_CHUNK`] bytes made as they
    /// are asked for: `{"updated":N,"flows":[...]}`.
    pub fn flows_json(self: &Arc<LiveView>, client: Option<&str>) -> JsonChunks {
        let order = self.order_of(client);
        JsonChunks::new(self, "flows", order.len(), Some(order), |view, i, out| {
            serde_json::to_writer(out, &view.flow(i))
        })
    }

    /// `GET /api/v1/clients` as JSON text, in chunks: `{"updated":N,"clients":[...]}`.
    pub fn clients_json(self: &Arc<LiveView>) -> JsonChunks {
        JsonChunks::new(self, "clients", self.clients.len(), None, |view, i, out| {
            serde_json::to_writer(out, &view.clients[i])
        })
    }
}

/// About this many bytes of JSON a chunk of a streamed answer holds (one item more at most).
pub const JSON_CHUNK: usize = 64 * 1024;

/// Writes item `i` of a view as JSON.
type WriteItem = fn(&LiveView, usize, &mut Vec<u8>) -> serde_json::Result<()>;

/// An API answer `{"updated":N,"<list>":[items]}` as chunks of text, each made when asked for:
/// the view is shared, not copied, while a client reads (`http.write_timeout` bounds how long).
pub struct JsonChunks {
    view: Arc<LiveView>,
    head: Option<String>,
    order: Option<Vec<u32>>,
    len: usize,
    next: usize,
    write: WriteItem,
    chunk: usize,
    done: bool,
}

impl JsonChunks {
    fn new(
        view: &Arc<LiveView>,
        list: &str,
        len: usize,
        order: Option<Vec<u32>>,
        write: WriteItem,
    ) -> JsonChunks {
        JsonChunks {
            view: Arc::clone(view),
            head: Some(format!("{{\"updated\":{},\"{list}\":[", view.updated)),
            order,
            len,
            next: 0,
            write,
            chunk: JSON_CHUNK,
            done: false,
        }
    }
}

impl Iterator for JsonChunks {
    type Item = std::io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut out = Vec::with_capacity(self.chunk + self.chunk / 4);
        if let Some(head) = self.head.take() {
            out.extend_from_slice(head.as_bytes());
        }
        while self.next < self.len && out.len() < self.chunk {
            if self.next > 0 {
                out.push(b',');
            }
            let i = self.order.as_ref().map_or(self.next, |o| o[self.next] as usize);
            if let Err(e) = (self.write)(&self.view, i, &mut out) {
                // The body ends in an error: the client sees a cut answer, never a short one.
                self.done = true;
                return Some(Err(std::io::Error::other(e)));
            }
            self.next += 1;
        }
        if self.next >= self.len {
            out.extend_from_slice(b"]}");
            self.done = true;
        }
        Some(Ok(out))
    }
}

/// The flows of [`LiveView::flows_of`]: serializes as a JSON array, or iterates.
pub struct Flows<'a> {
    view: &'a LiveView,
    order: Vec<u32>,
}

impl Flows<'_> {
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = FlowView> + '_ {
        self.order.iter().map(|&i| self.view.flow(i as usize))
    }
}

impl Serialize for Flows<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

/// A plain text table: columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> =
            cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        padded.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out += &line(row.clone());
    }
    out
}

/// `sensor clients`, as a table.
pub fn clients_table(view: &View) -> String {
    let rows: Vec<Vec<String>> = view
        .clients
        .iter()
        .map(|c| {
            vec![
                c.client.clone(),
                c.mac.clone(),
                c.group.clone(),
                c.vendor.clone(),
                c.ips.join(" "),
                human_bytes(c.upload_bytes),
                human_bytes(c.download_bytes),
                c.flows.to_string(),
            ]
        })
        .collect();
    table(&["CLIENT", "MAC", "GROUP", "VENDOR", "IPS", "UPLOAD", "DOWNLOAD", "FLOWS"], &rows)
}

/// `sensor flows`, as a table.
pub fn flows_table(flows: &[FlowView]) -> String {
    let rows: Vec<Vec<String>> = flows
        .iter()
        .map(|f| {
            let remote = if f.name.is_empty() {
                f.remote_ip.clone()
            } else {
                format!("{} ({})", f.name, f.remote_ip)
            };
            let asn = if f.asn == 0 { String::new() } else { format!("AS{}", f.asn) };
            vec![
                f.client.clone(),
                remote,
                format!("{}/{}", f.protocol, f.port),
                f.country.clone(),
                asn,
                human_bytes(f.upload_bytes),
                human_bytes(f.download_bytes),
            ]
        })
        .collect();
    table(&["CLIENT", "REMOTE", "PROTO/PORT", "COUNTRY", "ASN", "UPLOAD", "DOWNLOAD"], &rows)
}

#[cfg(test)]
mod tests {
    use sensor_common::{Counters, FlowKey};

    use super::*;

    #[test]
    fn tables_pad_columns() {
        let t =
            table(&["A", "BB"], &[vec!["long".into(), "x".into()], vec!["s".into(), "yy".into()]]);
        assert_eq!(t, "A     BB\nlong  x\ns     yy\n");
    }

    fn live_view() -> LiveView {
        let flow = |mac_last: u8, remote_last: u8, up: u64| {
            let mut k = FlowKey { protocol: 6, remote_port: 443, ..FlowKey::default() };
            k.client_mac[5] = mac_last;
            k.client_ip[10..].copy_from_slice(&[0xff, 0xff, 10, 0, 0, mac_last]);
            k.remote_ip[10..].copy_from_slice(&[0xff, 0xff, 93, 184, 216, remote_last]);
            (
                k,
                Counters {
                    packets: [1, 2],
                    bytes: [up, 500],
                    first_seen_ns: 1_000_000_000,
                    last_seen_ns: 9_000_000_000,
                },
            )
        };
        let row = |owner: u32, geo: u32, name: u32| FlowRow { owner, geo, name };
        let owners = vec![
            Owner { name: "tv".into(), mac: "aa:bb:cc:00:00:02".into() },
            Owner { name: "phone".into(), mac: "64:09:80:00:00:01".into() },
        ];
        let geos = vec![
            GeoInfo::default(),
            GeoInfo { country: "NL".into(), asn: 1136, as_org: "KPN".into() },
        ];
        LiveView::new(
            100,
            vec![],
            Arc::new(Snapshot {
                flows: vec![flow(2, 9, 10), flow(1, 34, 100), flow(1, 35, 7000)],
                ..Snapshot::default()
            }),
            vec![row(0, 0, 0), row(1, 1, 1), row(1, 0, 0)],
            owners,
            geos,
            vec!["".into(), "a1.cdn.example.co.uk".into()],
            1_000,
            10_000_000_000,
        )
    }

    #[test]
    fn flows_filter_by_name_or_mac_sorted_by_client_then_bytes() {
        let view = live_view();
        let all: Vec<FlowView> = view.flows_of(None).iter().collect();
        let order: Vec<(&str, u64)> =
            all.iter().map(|f| (f.client.as_str(), f.upload_bytes)).collect();
        assert_eq!(order, vec![("phone", 7000), ("phone", 100), ("tv", 10)]);
        assert_eq!(view.flows_of(Some("phone")).len(), 2);
        assert_eq!(view.flows_of(Some("AA:BB:CC:00:00:02")).iter().next().unwrap().client, "tv");
        assert!(view.flows_of(Some("nobody")).is_empty());
    }

    #[test]
    fn a_flow_reads_as_named_strings_with_unix_times() {
        let view = live_view();
        let f = view.flows_of(Some("phone")).iter().nth(1).unwrap();
        let want = FlowView {
            client: "phone".into(),
            mac: "64:09:80:00:00:01".into(),
            client_ip: "10.0.0.1".into(),
            remote_ip: "93.184.216.34".into(),
            protocol: "tcp".into(),
            port: 443,
            name: "a1.cdn.example.co.uk".into(),
            domain: "example.co.uk".into(),
            country: "NL".into(),
            asn: 1136,
            as_org: "KPN".into(),
            upload_bytes: 100,
            download_bytes: 500,
            upload_packets: 1,
            download_packets: 2,
            // The poll was at Unix 1000 = monotonic 10 s: 1 s → 991, 9 s → 999.
            first_seen: 991,
            last_seen: 999,
        };
        assert_eq!(f, want);
        let json = serde_json::to_value(view.flows_of(Some("tv"))).unwrap();
        assert_eq!(json.as_array().map(Vec::len), Some(1));
        assert_eq!(json[0]["remote_ip"], "93.184.216.9");
    }

    /// The streamed answers are the whole answers, cut anywhere between items.
    #[test]
    fn json_chunks_join_to_the_whole_answer() {
        let view = Arc::new(live_view());
        for chunk in [1, 200, JSON_CHUNK] {
            let mut chunks = view.flows_json(None);
            chunks.chunk = chunk;
            let parts: Vec<Vec<u8>> = chunks.map(Result::unwrap).collect();
            // The head alone, then an item a chunk; a flow and more a chunk; all in one.
            let want = match chunk {
                1 => 4,
                200 => 3,
                _ => 1,
            };
            assert_eq!(parts.len(), want, "chunk {chunk}");
            let whole: serde_json::Value = serde_json::from_slice(&parts.concat()).unwrap();
            assert_eq!(
                whole,
                serde_json::json!({"updated": 100, "flows": serde_json::to_value(view.flows_of(None)).unwrap()})
            );
        }
        let text: Vec<u8> = view.flows_json(Some("nobody")).flat_map(Result::unwrap).collect();
        assert_eq!(String::from_utf8(text).unwrap(), r#"{"updated":100,"flows":[]}"#);
        let tv: Vec<u8> = view.flows_json(Some("tv")).flat_map(Result::unwrap).collect();
        let tv: serde_json::Value = serde_json::from_slice(&tv).unwrap();
        assert_eq!(tv["flows"].as_array().map(Vec::len), Some(1));
        let clients: Vec<u8> = view.clients_json().flat_map(Result::unwrap).collect();
        assert_eq!(String::from_utf8(clients).unwrap(), r#"{"updated":100,"clients":[]}"#);
    }
}
