//! Expected numbers, accumulated as traffic is sent: each client's totals (lab's ledger) and
//! its destinations, with their country and ASN, compared with a scrape.

use lab::ledger::{self, compare};

use super::*;

/// (destination, country, asn) as labelled.
pub(crate) type Dest = (String, String, String);

#[derive(Default, Clone)]
pub(crate) struct Ledger {
    /// Names and client totals.
    pub(crate) base: ledger::Ledger,
    /// (client MAC, direction, destination) → totals
    pub(crate) dests: BTreeMap<(String, Dir, Dest), Count>,
}

impl Ledger {
    pub(crate) fn name(&mut self, mac: &str, name: &str) {
        self.base.name(mac, name);
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
        self.base.add_client(mac, dir, packets, packets * frame);
        let (d, (country, asn)) = dest;
        let key = (mac.to_string(), dir, (d.to_string(), country.to_string(), asn.to_string()));
        ledger::add_frames(self.dests.entry(key).or_default(), packets, frame);
    }

    /// Client totals only (destinations checked separately, e.g. TCP flows).
    pub(crate) fn add_client_only(&mut self, mac: &str, dir: Dir, packets: u64, bytes: u64) {
        self.base.add_client(mac, dir, packets, bytes);
    }

    pub(crate) fn client(&self, mac: &str, dir: Dir) -> Count {
        self.base.client(mac, dir)
    }

    pub(crate) fn label<'a>(&'a self, mac: &'a str) -> &'a str {
        self.base.label(mac)
    }

    /// Every difference between the scrape and the ledger: client totals and destination
    /// series exact (`strict_dests`: no destination series beyond the ledger's for its
    /// clients), and, whatever the ledger, each client's destination series summing to its
    /// totals.
    pub(crate) fn mismatches(&self, scrape: &Scrape, strict_dests: bool) -> Vec<String> {
        let mut out = Vec::new();
        self.base.client_mismatches(scrape, &mut out);
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
            compare(
                &mut out,
                format!("destination packets {id}"),
                scrape.get("gwsensor_destination_packets_total", &labels),
                *packets,
            );
            compare(
                &mut out,
                format!("destination bytes   {id}"),
                scrape.get("gwsensor_destination_bytes_total", &labels),
                *bytes,
            );
        }
        let macs: BTreeSet<&String> = self.base.clients.keys().map(|(m, _)| m).collect();
        for s in scrape.series("gwsensor_destination_bytes_total") {
            let mac = s.label("mac").to_string();
            if !macs.contains(&mac) {
                continue;
            }
            let dir = Dir::of_label(s.label("direction"));
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
