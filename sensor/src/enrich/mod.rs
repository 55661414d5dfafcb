//! Enrichment: names what the collector counted. Devices (inventory, DHCP leases, DHCP
//! fingerprints, OUI vendor), destinations (DNS answers, TLS SNI, HTTP Host), networks
//! (country, ASN) and registrable domains.

pub mod dhcp;
pub mod dns;
pub mod domain;
mod error;
pub mod geo;
pub mod hello;
pub mod http;
pub mod inventory;
pub mod names;
pub mod oui;
mod parse;
pub mod quic;
pub mod tls;

use std::{collections::BTreeMap, net::IpAddr};

use sensor_common::{EventKind, FlowKey};
use serde::Deserialize;

pub use error::EnrichError;

use crate::{
    accounting::{DestKey, Namer},
    kernel::events::Observation,
    types::{
        DestinationLevel, FastSet, Mac,
        address::{self, Reach},
        labels,
    },
};

/// How a client is named in the metrics (from the inventory, DHCP leases or a fallback).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientLabels {
    pub name: String,
    pub group: String,
    /// The inventory's vendor if the user gave one, else the DHCP fingerprint's hint, else the
    /// OUI registry's.
    pub vendor: String,
    /// The OUI registry's vendor alone (`randomized` for a private MAC); the policy's `vendor`
    /// matches it too.
    pub oui_vendor: String,
    /// The DHCP fingerprint's vendor hint alone (empty when none); the policy's `vendor`
    /// matches it too.
    pub fingerprint_vendor: String,
    /// The inventory's `os` if the user gave one, else the DHCP fingerprint's; empty when
    /// unknown.
    pub os: String,
    /// The inventory's `device_class` if the user gave one, else the DHCP fingerprint's.
    pub device_class: String,
    /// `private` for a locally administered (randomized) MAC, else `universal`.
    pub mac_type: &'static str,
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
    /// What clients' DHCP requests say they are; learnt, so kept across reloads.
    pub fingerprints: dhcp::Fingerprints,
    level: DestinationLevel,
    /// The router's own addresses (every interface's): local, like the LAN's.
    router: FastSet<IpAddr>,
    /// ClientHellos over TCP arriving in several pieces.
    tcp_hellos: hello::TcpHellos,
    /// QUIC connections whose Initials are being read.
    quic_hellos: hello::QuicHellos,
    /// ClientHellos offering ECH read since the last [`Enricher::take_tally`].
    ech: u64,
}

/// What naming saw besides names, since the last [`Enricher::take_tally`].
#[derive(Debug, PartialEq, Eq)]
pub struct NamingTally {
    /// ClientHellos given up (they never arrived whole), by kind: `tls`, `quic`.
    pub given_up: [(EventKind, u64); 2],
    /// ClientHellos (TCP or QUIC) with an `encrypted_client_hello` extension.
    pub ech: u64,
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
        // Bounded like the kernel's client slots; the agent sets their real number.
        let fingerprints = dhcp::Fingerprints::new(sensor_common::DEFAULT_CLIENT_CAPACITY as usize);
        Ok((
            Enricher {
                inventory,
                names,
                geo,
                fingerprints,
                level,
                router: FastSet::default(),
                tcp_hellos: hello::TcpHellos::default(),
                quic_hellos: hello::QuicHellos::default(),
                ech: 0,
            },
            warnings,
        ))
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
            EventKind::TlsClientHello | EventKind::TlsSegment => {
                let first = obs.kind == EventKind::TlsClientHello && obs.chunk_off == 0;
                let seq = obs.seq.wrapping_add(u32::from(obs.chunk_off));
                let progress = self.tcp_hellos.add(&obs.key, first, seq, &obs.data, now)?;
                if let hello::Progress::Named(hello) = progress {
                    self.learn_hello(&obs.key, &hello, now);
                }
            }
            EventKind::QuicInitial => {
                let progress = self.quic_hellos.add(
                    &obs.key,
                    obs.ktime_ns,
                    obs.payload_len,
                    obs.chunk_off,
                    &obs.data,
                    now,
                )?;
                if let hello::Progress::Named(hello) = progress {
                    self.learn_hello(&obs.key, &hello, now);
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

    /// Learns what a ClientHello names: its SNI for the flow, as an outer name (a DNS name of
    /// the address wins) when it offers ECH.
    fn learn_hello(&mut self, key: &FlowKey, hello: &tls::Hello, now: u64) {
        self.ech += u64::from(hello.ech);
        let Some(sni) = &hello.sni else { return };
        let (client, remote) = (key.client_mac, labels::ip(&key.remote_ip));
        if hello.ech {
            self.names.learn_outer_name(client, remote, key.remote_port, sni, now);
        } else {
            self.names.learn_flow_name(client, remote, key.remote_port, sni, now);
        }
    }

    /// What naming saw besides names since the last call.
    pub fn take_tally(&mut self) -> NamingTally {
        NamingTally {
            given_up: [
                (EventKind::TlsClientHello, self.tcp_hellos.take_given_up()),
                (EventKind::QuicInitial, self.quic_hellos.take_given_up()),
            ],
            ech: std::mem::take(&mut self.ech),
        }
    }

    /// Learns from a captured DHCP frame; the request taken in, `None` for DHCP that is not a
    /// client's request. An error means the frame did not parse.
    pub fn learn_dhcp(
        &mut self,
        frame: &[u8],
        now: u64,
    ) -> Result<Option<dhcp::Sighting>, parse::ParseError> {
        let Some(sighting) = dhcp::parse_frame(frame)? else { return Ok(None) };
        self.fingerprints.learn(sighting.clone(), now);
        Ok(Some(sighting))
    }

    /// Takes over what a reloaded config says: the sources that come from files (the
    /// inventory with its lease files, the GeoIP databases), the name cache's limits and the
    /// destination level. The names learnt from traffic stay (no file holds them); flows are
    /// named at the new level from the next poll on (series at the old level end when idle).
    pub fn replace_sources(&mut self, reloaded: Enricher, now: u64) {
        self.inventory = reloaded.inventory;
        self.geo = reloaded.geo;
        self.level = reloaded.level;
        self.names.take_limits(&reloaded.names, now);
    }

    /// Re-reads changed lease files, forgets expired names and gives up ClientHellos that did
    /// not arrive whole in time; returns new warnings.
    pub fn maintain(&mut self, now: u64) -> Vec<String> {
        self.names.expire(now);
        for (key, hello) in self.tcp_hellos.expire(now) {
            self.learn_hello(&key, &hello, now);
        }
        self.quic_hellos.expire(now);
        self.inventory.refresh()
    }

    /// The name the client used for this flow's remote end, if one is known.
    pub fn flow_name(&self, key: &FlowKey, now: u64) -> Option<&str> {
        self.names.name_for(key.client_mac, labels::ip(&key.remote_ip), key.remote_port, now)
    }

    /// Country and AS of a remote; none for the network itself (a database may place a
    /// multicast group or the router's public address somewhere, which would be wrong here).
    pub fn geo(&self, ip: IpAddr) -> geo::GeoInfo {
        if self.reach(&ip) == Reach::Network {
            geo::GeoInfo::default()
        } else {
            self.geo.lookup(ip)
        }
    }

    /// How far traffic to `ip` goes: [`address::reach`], and the router's own addresses are
    /// the network itself.
    pub fn reach(&self, ip: &IpAddr) -> Reach {
        if self.router.contains(&canonical(*ip)) { Reach::Network } else { address::reach(ip) }
    }

    /// Replaces the router's own addresses; returns whether they changed (an ISP rotated
    /// the prefix, an interface came up).
    pub fn set_router_addresses(&mut self, addrs: impl IntoIterator<Item = IpAddr>) -> bool {
        let addrs: FastSet<IpAddr> = addrs.into_iter().map(canonical).collect();
        let changed = addrs != self.router;
        self.router = addrs;
        changed
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
        let info = self.geo(ip);
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
        let identity = self.fingerprints.identity(mac);
        // The user's word, then the fingerprint's, then the registry's.
        let stated = |stated: &str, guessed: Option<&str>| {
            if stated.is_empty() { guessed.unwrap_or_default().to_string() } else { stated.into() }
        };
        let vendor = match identity.vendor {
            Some(hint) if device.stated_vendor.is_empty() => hint.to_string(),
            _ => device.vendor_label(),
        };
        ClientLabels {
            vendor,
            oui_vendor: device.vendor.label(),
            fingerprint_vendor: identity.vendor.unwrap_or_default().to_string(),
            os: stated(&device.stated_os, identity.os),
            device_class: stated(&device.stated_class, identity.class),
            mac_type: if oui::is_locally_administered(mac) { "private" } else { "universal" },
            name: device.name,
            group: device.group,
            source: device.source.as_str().to_string(),
            tags: device.tags,
        }
    }
}

/// IPv4-mapped IPv6 addresses as the IPv4 address they stand for.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The router's own addresses (a delegated prefix's, the WAN's) are the network itself:
    /// never remote, never in a country, whatever a database says; they follow a change.
    #[test]
    fn the_routers_own_addresses_are_the_network() {
        let (mut e, _) = Enricher::new(
            &inventory::InventoryConfig::default(),
            &geo::GeoConfig::default(),
            &NamesConfig::default(),
            DestinationLevel::Domain,
        )
        .unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(e.reach(&ip("2001:db8:1::1")), Reach::Internet);
        assert!(e.set_router_addresses([ip("2001:db8:1::1"), ip("198.51.100.2")]));
        assert!(!e.set_router_addresses([ip("198.51.100.2"), ip("2001:db8:1::1")]), "same set");
        assert_eq!(e.reach(&ip("2001:db8:1::1")), Reach::Network);
        assert_eq!(e.reach(&ip("::ffff:198.51.100.2")), Reach::Network, "IPv4-mapped");
        assert_eq!(e.reach(&ip("2001:db8:1::2")), Reach::Internet);
        assert_eq!(e.reach(&ip("192.168.1.7")), Reach::Lan);
        // A rotated prefix: the old address is the internet's again.
        assert!(e.set_router_addresses([ip("2001:db8:2::1")]));
        assert_eq!(e.reach(&ip("2001:db8:1::1")), Reach::Internet);
        assert_eq!(e.reach(&ip("2001:db8:2::1")), Reach::Network);
    }

    /// A SIGHUP's config takes effect at once for the destination level and the name cache's
    /// limits (issue 16: they were kept from the start): flows are named at the new level, a
    /// lower `max_names` drops names at once, and a new `flow_name_ttl` applies to names
    /// learnt after it; names learnt before stay.
    #[test]
    fn a_reload_changes_the_level_and_the_name_limits() {
        let enricher = |level, names: NamesConfig| {
            Enricher::new(
                &inventory::InventoryConfig::default(),
                &geo::GeoConfig::default(),
                &names,
                level,
            )
            .unwrap()
            .0
        };
        let mut e = enricher(DestinationLevel::Domain, NamesConfig::default());
        let key = |last: u8| FlowKey {
            client_mac: [2, 0, 0, 0, 0, 1],
            remote_ip: std::net::Ipv4Addr::new(203, 0, 113, last).to_ipv6_mapped().octets(),
            protocol: 6,
            remote_port: 443,
            ..FlowKey::default()
        };
        let remote = |last: u8| IpAddr::from(std::net::Ipv4Addr::new(203, 0, 113, last));
        for (last, name) in [(1, "a.cdn.example.com"), (2, "b.example.org"), (3, "c.example.net")] {
            e.names.learn_flow_name([2, 0, 0, 0, 0, 1], remote(last), 443, name, 100);
        }
        let mut out = DestKey::default();
        e.destination_into(&key(1), 100, &mut out);
        assert_eq!(out.destination, "example.com");

        let names = NamesConfig {
            max_names: 2,
            flow_name_ttl: std::time::Duration::from_secs(60),
            ..NamesConfig::default()
        };
        e.replace_sources(enricher(DestinationLevel::Fqdn, names), 100);
        assert_eq!(e.names.len(), 2, "the lower max_names drops the name closest to expiry");
        e.destination_into(&key(3), 100, &mut out);
        assert_eq!(out.destination, "c.example.net", "named at the new level");
        e.names.learn_flow_name([2, 0, 0, 0, 0, 1], remote(4), 443, "d.example.net", 100);
        assert_eq!(e.flow_name(&key(4), 159), Some("d.example.net"));
        assert_eq!(e.flow_name(&key(4), 160), None, "the new flow_name_ttl (60 s)");
        assert_eq!(e.flow_name(&key(3), 160), Some("c.example.net"), "learnt before: 1 h");
    }

    /// The labels' order of authority: the inventory's stated vendor, os and device_class, then
    /// the DHCP fingerprint's, then the OUI registry's vendor (`randomized` for a private MAC).
    #[test]
    fn the_inventory_then_the_fingerprint_then_the_registry() {
        let private = [0x6a, 0x1f, 0x33, 0x10, 0x20, 0x30];
        let stated = [0x6a, 0x1f, 0x33, 0x10, 0x20, 0x31];
        let inventory = inventory::InventoryConfig {
            devices: vec![inventory::StaticDevice {
                mac: "6a:1f:33:10:20:31".into(),
                name: "tablet".into(),
                vendor: "Lenovo".into(),
                device_class: "tablet".into(),
                ..Default::default()
            }],
            oui_databases: Some(vec![]),
            ..Default::default()
        };
        let (mut e, _) = Enricher::new(
            &inventory,
            &geo::GeoConfig::default(),
            &NamesConfig::default(),
            DestinationLevel::Domain,
        )
        .unwrap();
        let l = e.client_labels(&private);
        assert_eq!(
            (l.vendor.as_str(), l.os.as_str(), l.device_class.as_str()),
            ("randomized", "", "")
        );
        for mac in [private, stated] {
            e.fingerprints.learn(
                dhcp::Sighting {
                    mac,
                    version: dhcp::Version::V4,
                    request: dhcp::Request {
                        hostname: "Redmi-Note-12".into(),
                        vendor_class: "android-dhcp-13".into(),
                        ..Default::default()
                    },
                    other_mac: None,
                },
                100,
            );
        }
        let l = e.client_labels(&private);
        assert_eq!(
            (l.vendor.as_str(), l.os.as_str(), l.device_class.as_str(), l.mac_type),
            ("Xiaomi", "android", "phone", "private")
        );
        assert_eq!(
            (l.oui_vendor.as_str(), l.fingerprint_vendor.as_str()),
            ("randomized", "Xiaomi")
        );
        let l = e.client_labels(&stated);
        assert_eq!(
            (l.vendor.as_str(), l.os.as_str(), l.device_class.as_str()),
            ("Lenovo", "android", "tablet"),
            "what the user said wins, field by field"
        );
        assert_eq!(l.fingerprint_vendor, "Xiaomi", "the hint stays for the policy's `vendor`");
    }

    /// A database that places multicast or the router's public address in a country (real ones
    /// have blocks that cover them) names neither.
    #[test]
    fn the_network_is_in_no_country() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = lab::mmdb::MmdbWriter::new("GeoLite2-Country");
        c.insert_country("224.0.0.0/4".parse().unwrap(), "US");
        c.insert_country("198.51.100.0/24".parse().unwrap(), "CN");
        c.insert_country("10.77.0.0/16".parse().unwrap(), "DE");
        let path = dir.path().join("country.mmdb");
        c.write(&path).unwrap();
        let geo = geo::GeoConfig { country_database: Some(path), asn_database: None };
        let (mut e, warnings) = Enricher::new(
            &inventory::InventoryConfig::default(),
            &geo,
            &NamesConfig::default(),
            DestinationLevel::Country,
        )
        .unwrap();
        assert!(warnings.iter().all(|w| !w.contains("country")), "{warnings:?}");
        e.set_router_addresses(["198.51.100.2".parse().unwrap()]);
        let country = |s: &str| e.geo(s.parse().unwrap()).country;
        assert_eq!(country("239.255.255.250"), "");
        assert_eq!(country("198.51.100.2"), "", "the router's own");
        assert_eq!(country("198.51.100.3"), "CN");
        assert_eq!(country("10.77.3.2"), "DE", "a private range a database places is kept");
        // The destination series at the country level: the address stands in.
        let key = |ip: [u8; 4]| FlowKey {
            client_mac: [2, 0, 0, 0, 0, 1],
            client_ip: std::net::Ipv4Addr::new(192, 168, 1, 9).to_ipv6_mapped().octets(),
            remote_ip: std::net::Ipv4Addr::from(ip).to_ipv6_mapped().octets(),
            protocol: 17,
            remote_port: 1900,
            ..FlowKey::default()
        };
        let mut out = DestKey::default();
        e.destination_into(&key([239, 255, 255, 250]), 0, &mut out);
        assert_eq!((out.destination.as_str(), out.country.as_str()), ("239.255.255.250", ""));
        e.destination_into(&key([198, 51, 100, 3]), 0, &mut out);
        assert_eq!((out.destination.as_str(), out.country.as_str()), ("CN", "CN"));
    }
}
