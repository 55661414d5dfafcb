//! The agent's local JSON API (docs/api.md): the named view of clients and flows that
//! `sensor clients` and `sensor flows` print. Rebuilt after every poll, served as is.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Everything the API serves, as of the last poll.
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

impl View {
    /// Flows of one client, matched by name or MAC; all flows for `None`.
    pub fn flows_of(&self, client: Option<&str>) -> Vec<FlowView> {
        self.flows
            .iter()
            .filter(|f| client.is_none_or(|c| f.client == c || f.mac.eq_ignore_ascii_case(c)))
            .cloned()
            .collect()
    }
}

/// Bytes in a short human form (1.5 MB), for the tables.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[unit]) }
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
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
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
            let remote = if f.name.is_empty() { f.remote_ip.clone() } else { format!("{} ({})", f.name, f.remote_ip) };
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
    use super::*;

    #[test]
    fn human_bytes_reads_well() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(40_000_000), "40.0 MB");
        assert_eq!(human_bytes(1_234), "1.2 kB");
    }

    #[test]
    fn tables_pad_columns() {
        let t = table(&["A", "BB"], &[vec!["long".into(), "x".into()], vec!["s".into(), "yy".into()]]);
        assert_eq!(t, "A     BB\nlong  x\ns     yy\n");
    }

    #[test]
    fn flows_filter_by_name_or_mac() {
        let f = |client: &str, mac: &str| FlowView { client: client.into(), mac: mac.into(), ..FlowView::default() };
        let view = View { flows: vec![f("phone", "64:09:80:00:00:01"), f("tv", "aa:bb:cc:00:00:02")], ..View::default() };
        assert_eq!(view.flows_of(Some("phone")).len(), 1);
        assert_eq!(view.flows_of(Some("AA:BB:CC:00:00:02"))[0].client, "tv");
        assert_eq!(view.flows_of(None).len(), 2);
        assert!(view.flows_of(Some("nobody")).is_empty());
    }
}
