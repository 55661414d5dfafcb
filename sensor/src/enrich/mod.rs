//! Enrichment: names what the collector counted. Devices (inventory, DHCP leases, OUI vendor),
//! destinations (DNS answers, TLS SNI, HTTP Host), networks (country, ASN) and registrable
//! domains.

pub mod dns;
pub mod domain;
mod error;
pub mod geo;
pub mod http;
pub mod inventory;
pub mod names;
pub mod oui;
mod parse;
pub mod tls;

use std::{collections::BTreeMap, net::IpAddr};

use sensor_common::{EventKind, FlowKey};
use serde::Deserialize;

pub use error::EnrichError;

use crate::{
    accounting::{DestKey, Namer},
    kernel::events::Observation,
    types::{DestinationLevel, Mac, labels},
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

/// How long names are kept, and how many.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NamesConfig {
    /// A DNS answer names its addresses for its TTL plus this grace (devices reuse addresses
    /// they resolved a while ago).
    #[serde(default = "default_dns_grace", with = "humantime_serde")]
    pub dns_grace: std::time::Duration,
    /// A name seen in a TLS ClientHello or HTTP request names its flow this long after it was
    /// last seen.
    #[serde(default = "default_flow_name_ttl", with = "humantime_serde")]
    pub flow_name_ttl: std::time::Duration,
    /// Most names held (DNS and flow names together); the ones closest to expiry go first.
    #[serde(default = "default_max_names")]
    pub max_names: usize,
}

fn default_dns_grace() -> std::time::Duration {
    std::time::Duration::from_secs(300)
}
fn default_flow_name_ttl() -> std::time::Duration {
    std::time::Duration::from_secs(3600)
}
fn default_max_names() -> usize {
    100_000
}

impl Default for NamesConfig {
    fn default() -> Self {
        NamesConfig {
            dns_grace: default_dns_grace(),
            flow_name_ttl: default_flow_name_ttl(),
            max_names: default_max_names(),
        }
    }
}

/// Everything that names what the sensor sees.
pub struct Enricher {
    pub inventory: inventory::Inventory,
    pub names: names::NameCache,
    pub geo: geo::Geo,
    level: DestinationLevel,
}

impl Enricher {
    /// Opens the inventory and databases. Missing optional sources are warnings (their labels
    /// stay empty), returned for the caller to log once.
    pub fn new(
        inventory: &inventory::InventoryConfig,
        geo: &geo::GeoConfig,
        names: &NamesConfig,
        level: DestinationLevel,
    ) -> Result<(Enricher, Vec<String>), EnrichError> {
        let (inventory, mut warnings) = inventory::Inventory::new(inventory)?;
        let (geo, geo_warnings) = geo::Geo::open(geo);
        warnings.extend(geo_warnings);
        let names = names::NameCache::new(
            names.dns_grace.as_secs(),
            names.max_names,
            names.flow_name_ttl.as_secs(),
        );
        Ok((Enricher { inventory, names, geo, level }, warnings))
    }

    /// Learns from one naming event. An error means its payload did not parse.
    pub fn learn(&mut self, obs: &Observation, now: u64) -> Result<(), parse::ParseError> {
        let client = obs.key.client_mac;
        let remote = labels::ip(&obs.key.remote_ip);
        match obs.kind {
            EventKind::DnsResponse => {
                let answer = dns::parse_response(&obs.data, obs.key.protocol == 6)?;
                self.names.learn_dns(client, &answer, now);
            }
            EventKind::TlsClientHello => {
                if let Some(sni) = tls::client_hello_sni(&obs.data)? {
                    self.names.learn_flow_name(client, remote, obs.key.remote_port, &sni, now);
                }
            }
            EventKind::HttpRequest => {
                if let Some(host) = http::request_host(&obs.data)? {
                    self.names.learn_flow_name(client, remote, obs.key.remote_port, &host, now);
                }
            }
        }
        Ok(())
    }

    /// Takes over the sources that come from files (the inventory with its lease files, the
    /// GeoIP databases) of an enricher made from a reloaded config. The names learnt from
    /// traffic stay (no file holds them), and so do the name cache's limits and the
    /// destination level this enricher started with.
    pub fn replace_sources(&mut self, reloaded: Enricher) {
        self.inventory = reloaded.inventory;
        self.geo = reloaded.geo;
    }

    /// Re-reads changed lease files and forgets expired names; returns new warnings.
    pub fn maintain(&mut self, now: u64) -> Vec<String> {
        self.names.expire(now);
        self.inventory.refresh()
    }

    /// The name the client used for this flow's remote end, if one is known.
    pub fn flow_name(&self, key: &FlowKey, now: u64) -> Option<&str> {
        self.names.name_for(key.client_mac, labels::ip(&key.remote_ip), key.remote_port, now)
    }

    pub fn geo(&self, ip: IpAddr) -> geo::GeoInfo {
        self.geo.lookup(ip)
    }

    /// Whether destinations are named by names (domain or fqdn level), not by address or network.
    pub fn level_uses_names(&self) -> bool {
        matches!(self.level, DestinationLevel::Domain | DestinationLevel::Fqdn)
    }

    /// The destination series a flow counts into, at the configured level, written into `out`
    /// (reusing its strings: no allocation for a flow named by its address, the most common
    /// kind). Without a name (or country, or ASN) the address stands in, so that nothing is
    /// attributed to nobody.
    pub fn destination_into(&self, key: &FlowKey, now: u64, out: &mut DestKey) {
        use std::fmt::Write as _;
        let ip = labels::ip(&key.remote_ip);
        let info = self.geo.lookup(ip);
        let name = || self.flow_name(key, now);
        out.destination.clear();
        match self.level {
            DestinationLevel::Fqdn => out.destination.push_str(name().unwrap_or_default()),
            DestinationLevel::Domain => {
                out.destination.push_str(&name().map(domain::registrable).unwrap_or_default())
            }
            DestinationLevel::Ip => {}
            // Writing to a String cannot fail.
            DestinationLevel::Asn if info.asn != 0 => _ = write!(out.destination, "AS{}", info.asn),
            DestinationLevel::Asn => {}
            DestinationLevel::Country => out.destination.push_str(&info.country),
        }
        if out.destination.is_empty() {
            _ = write!(out.destination, "{ip}");
        }
        out.country.clear();
        out.country.push_str(&info.country);
        out.asn = info.asn;
    }

    /// How a client reads in the metrics and the API.
    pub fn client_labels(&self, mac: &Mac) -> ClientLabels {
        let device = self.inventory.device(mac);
        ClientLabels {
            name: device.name,
            group: device.group,
            vendor: device.vendor.label(),
            source: device.source.as_str().to_string(),
            tags: device.tags,
        }
    }
}

/// Destinations as of one poll's time.
pub struct PollNamer<'a> {
    pub enricher: &'a Enricher,
    pub now: u64,
}

impl Namer for PollNamer<'_> {
    fn destination_into(&self, key: &FlowKey, out: &mut DestKey) {
        self.enricher.destination_into(key, self.now, out);
    }

    /// A TCP flow without its own name yet: its ClientHello or request usually follows the
    /// handshake within milliseconds, so its first poll waits for it.
    fn awaits_name(&self, key: &FlowKey) -> bool {
        const TCP: u8 = 6;
        key.protocol == TCP
            && self.enricher.level_uses_names()
            && !self.enricher.names.has_flow_name(
                key.client_mac,
                labels::ip(&key.remote_ip),
                key.remote_port,
                self.now,
            )
    }
}
