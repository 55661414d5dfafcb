//! Expected numbers, accumulated as traffic is sent, and their comparison with a scrape.

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Dir {
    Upload,
    Download,
}

impl Dir {
    pub(crate) const ALL: [Dir; 2] = [Dir::Upload, Dir::Download];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Dir::Upload => "upload",
            Dir::Download => "download",
        }
    }
}

/// (packets, bytes)
pub(crate) type Count = (u64, u64);

/// (destination, country, asn) as labelled.
pub(crate) type Dest = (String, String, String);

#[derive(Default, Clone)]
pub(crate) struct Ledger {
    /// client MAC → the `client` label it should have
    pub(crate) names: BTreeMap<String, String>,
    /// (client MAC, direction) → totals
    pub(crate) clients: BTreeMap<(String, Dir), Count>,
    /// (client MAC, direction, destination) → totals
    pub(crate) dests: BTreeMap<(String, Dir, Dest), Count>,
}

impl Ledger {
    pub(crate) fn name(&mut self, mac: &str, name: &str) {
        self.names.insert(mac.to_string(), name.to_string());
    }

    /// `packets` frames of `frame` bytes each between a client and a destination.
    pub(crate) fn add(
        &mut self,
        mac: &str,
        dir: Dir,
        dest: (&str, (&str, &str)),
        packets: u64,
        frame: u64,
    ) {
        let c = self.clients.entry((mac.to_string(), dir)).or_default();
        c.0 += packets;
        c.1 += packets * frame;
        let (d, (country, asn)) = dest;
        let key = (mac.to_string(), dir, (d.to_string(), country.to_string(), asn.to_string()));
        let e = self.dests.entry(key).or_default();
        e.0 += packets;
        e.1 += packets * frame;
    }

    /// Client totals only (destinations checked separately, e.g. TCP flows).
    pub(crate) fn add_client_only(&mut self, mac: &str, dir: Dir, packets: u64, bytes: u64) {
        let c = self.clients.entry((mac.to_string(), dir)).or_default();
        c.0 += packets;
        c.1 += bytes;
    }

    pub(crate) fn client(&self, mac: &str, dir: Dir) -> Count {
        self.clients.get(&(mac.to_string(), dir)).copied().unwrap_or_default()
    }

    pub(crate) fn label<'a>(&'a self, mac: &'a str) -> &'a str {
        self.names.get(mac).map_or(mac, String::as_str)
    }

    /// Every difference between the scrape and the ledger: client totals and destination
    /// series exact (`strict_dests`: no destination series beyond the ledger's for its
    /// clients), and, whatever the ledger, each client's destination series summing to its
    /// totals.
    pub(crate) fn mismatches(&self, scrape: &Scrape, strict_dests: bool) -> Vec<String> {
        let mut out = Vec::new();
        let mut cmp = |what: String, got: Option<f64>, want: u64| {
            if got != Some(want as f64) {
                out.push(format!(
                    "{what}: got {}, want {want}",
                    got.map_or("nothing".into(), |v| v.to_string())
                ));
            }
        };
        for ((mac, dir), (packets, bytes)) in &self.clients {
            let labels =
                [("client", self.label(mac)), ("mac", mac.as_str()), ("direction", dir.label())];
            let id = format!("{} {mac} {}", self.label(mac), dir.label());
            cmp(
                format!("client packets {id}"),
                scrape.get("gwsensor_client_packets_total", &labels),
                *packets,
            );
            cmp(
                format!("client bytes   {id}"),
                scrape.get("gwsensor_client_bytes_total", &labels),
                *bytes,
            );
        }
        for ((mac, dir, (dest, country, asn)), (packets, bytes)) in &self.dests {
            let labels = [
                ("client", self.label(mac)),
                ("mac", mac.as_str()),
                ("direction", dir.label()),
                ("destination", dest.as_str()),
                ("country", country.as_str()),
                ("asn", asn.as_str()),
            ];
            let id = format!("{} {} {dest} ({country}, {asn})", self.label(mac), dir.label());
            cmp(
                format!("destination packets {id}"),
                scrape.get("gwsensor_destination_packets_total", &labels),
                *packets,
            );
            cmp(
                format!("destination bytes   {id}"),
                scrape.get("gwsensor_destination_bytes_total", &labels),
                *bytes,
            );
        }
        let macs: BTreeSet<&String> = self.clients.keys().map(|(m, _)| m).collect();
        for s in scrape.series("gwsensor_destination_bytes_total") {
            let mac = s.label("mac").to_string();
            if !macs.contains(&mac) {
                continue;
            }
            let dir = if s.label("direction") == "upload" { Dir::Upload } else { Dir::Download };
            let key = (
                mac,
                dir,
                (
                    s.label("destination").to_string(),
                    s.label("country").to_string(),
                    s.label("asn").to_string(),
                ),
            );
            if strict_dests && !self.dests.contains_key(&key) {
                out.push(format!("unexpected series: {}", format_sample(s)));
            }
        }
        for mac in &macs {
            for dir in Dir::ALL {
                let sel = [("mac", mac.as_str()), ("direction", dir.label())];
                let dest_sum = scrape.sum("gwsensor_destination_bytes_total", &sel);
                let total = scrape.sum("gwsensor_client_bytes_total", &sel);
                if dest_sum != total {
                    out.push(format!(
                        "{} {mac} {}: destination series sum to {dest_sum} bytes, client total is {total}",
                        self.label(mac),
                        dir.label()
                    ));
                }
                let dest_sum = scrape.sum("gwsensor_destination_packets_total", &sel);
                let total = scrape.sum("gwsensor_client_packets_total", &sel);
                if dest_sum != total {
                    out.push(format!(
                        "{} {mac} {}: destination series sum to {dest_sum} packets, client total is {total}",
                        self.label(mac),
                        dir.label()
                    ));
                }
            }
        }
        out
    }
}
