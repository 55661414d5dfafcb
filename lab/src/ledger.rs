//! What the agent should report, written down as the tests send traffic: frame sizes as the
//! sensor counts them, and each client's totals per direction compared with a scrape. Tests
//! add their own per-remote or per-destination books on top.

use std::{collections::BTreeMap, net::IpAddr};

use crate::prom::Scrape;

/// Header sizes of a counted frame: the sensor counts whole Ethernet frames without FCS.
pub const ETHERNET: u64 = 14;
pub const IPV4: u64 = 20;
pub const IPV6: u64 = 40;
pub const UDP: u64 = 8;

/// The Ethernet frame of a UDP datagram of `payload` bytes to or from `peer`.
pub fn udp_frame(peer: IpAddr, payload: u64) -> u64 {
    ETHERNET + if peer.is_ipv4() { IPV4 } else { IPV6 } + UDP + payload
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dir {
    Upload,
    Download,
}

impl Dir {
    pub const ALL: [Dir; 2] = [Dir::Upload, Dir::Download];

    /// The `direction` label.
    pub fn label(self) -> &'static str {
        match self {
            Dir::Upload => "upload",
            Dir::Download => "download",
        }
    }

    /// The direction a `direction` label names (anything but "upload" is a download).
    pub fn of_label(label: &str) -> Dir {
        if label == "upload" { Dir::Upload } else { Dir::Download }
    }
}

/// (packets, bytes)
pub type Count = (u64, u64);

/// Adds `packets` frames of `frame` bytes each to `count`.
pub fn add_frames(count: &mut Count, packets: u64, frame: u64) {
    count.0 += packets;
    count.1 += packets * frame;
}

/// Each client's expected `client` label and totals per direction.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    /// client MAC → the `client` label it should have
    pub names: BTreeMap<String, String>,
    /// (client MAC, direction) → totals
    pub clients: BTreeMap<(String, Dir), Count>,
}

impl Ledger {
    pub fn name(&mut self, mac: &str, name: &str) {
        self.names.insert(mac.to_string(), name.to_string());
    }

    /// The `client` label of `mac`: its name, or the MAC itself when it has none.
    pub fn label<'a>(&'a self, mac: &'a str) -> &'a str {
        self.names.get(mac).map_or(mac, String::as_str)
    }

    /// Adds to a client's totals.
    pub fn add_client(&mut self, mac: &str, dir: Dir, packets: u64, bytes: u64) {
        let c = self.clients.entry((mac.to_string(), dir)).or_default();
        c.0 += packets;
        c.1 += bytes;
    }

    pub fn client(&self, mac: &str, dir: Dir) -> Count {
        self.clients.get(&(mac.to_string(), dir)).copied().unwrap_or_default()
    }

    /// Every client total that differs from the scrape's gwsensor_client_{packets,bytes}_total
    /// series (labels client, mac, direction exactly), as readable lines.
    pub fn client_mismatches(&self, scrape: &Scrape, out: &mut Vec<String>) {
        for ((mac, dir), (packets, bytes)) in &self.clients {
            let labels =
                [("client", self.label(mac)), ("mac", mac.as_str()), ("direction", dir.label())];
            let id = format!("{} {mac} {}", self.label(mac), dir.label());
            compare(
                out,
                format!("client packets {id}"),
                scrape.get("gwsensor_client_packets_total", &labels),
                *packets,
            );
            compare(
                out,
                format!("client bytes   {id}"),
                scrape.get("gwsensor_client_bytes_total", &labels),
                *bytes,
            );
        }
    }
}

/// Adds "`what`: got …, want `want`" to `out` unless `got` is exactly `want`.
pub fn compare(out: &mut Vec<String>, what: String, got: Option<f64>, want: u64) {
    if got != Some(want as f64) {
        out.push(format!(
            "{what}: got {}, want {want}",
            got.map_or("nothing".into(), |v| v.to_string())
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_client_totals() {
        assert_eq!(udp_frame("10.0.0.1".parse().unwrap(), 1000), 1042);
        assert_eq!(udp_frame("fd00::1".parse().unwrap(), 700), 762);
        let mut l = Ledger::default();
        l.name("m", "phone");
        l.add_client("m", Dir::Upload, 2, 2084);
        let scrape = Scrape::parse(
            "gwsensor_client_packets_total{client=\"phone\",mac=\"m\",direction=\"upload\"} 2\n\
             gwsensor_client_bytes_total{client=\"phone\",mac=\"m\",direction=\"upload\"} 2000\n",
        )
        .unwrap();
        let mut out = Vec::new();
        l.client_mismatches(&scrape, &mut out);
        assert_eq!(out, ["client bytes   phone m upload: got 2000, want 2084"]);
        assert_eq!(l.label("other"), "other");
        assert_eq!(Dir::of_label("download"), Dir::Download);
    }
}
