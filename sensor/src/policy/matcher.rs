//! What the evaluator sees of a poll (named clients and the flows that gained traffic), and
//! how matches, exceptions and the DNS-bypass test apply to it.

use std::{collections::BTreeMap, fmt, net::IpAddr};

use crate::types::address::Reach;

use super::{
    spec::{ClientMatch, DestinationMatch, DnsSpec, MatchSpec, Scope},
    values::{Cidr, DomainPattern, GroupBy},
};

/// A client as the policy names it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientFacts {
    pub mac: [u8; 6],
    pub mac_text: String,
    pub name: String,
    pub group: String,
    /// What the inventory says, else the OUI registry's (as the `vendor` label).
    pub vendor: String,
    /// The OUI registry's alone; `vendor` patterns match either.
    pub oui_vendor: String,
    /// The DHCP fingerprint's vendor hint alone; `vendor` patterns match it too.
    pub fingerprint_vendor: String,
    /// The inventory's, else the DHCP fingerprint's (as the `os` label); empty when unknown.
    pub os: String,
    /// The inventory's, else the DHCP fingerprint's (as the `device_class` label).
    pub device_class: String,
    pub tags: BTreeMap<String, String>,
}

/// One flow's gain since the previous poll, named.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlowFacts {
    /// Index into [`PollFacts::clients`].
    pub client: usize,
    pub remote_ip: Option<IpAddr>,
    /// How far the remote is (`Enricher::reach`): `Lan` and `Network` are `scope: local`,
    /// `Network` (multicast, broadcast, link-local, the router) is never a new destination.
    pub reach: Reach,
    pub protocol: u8,
    pub port: u16,
    /// The name the client used (SNI, Host, DNS), lower case; empty when unknown.
    pub name: String,
    /// Registrable domain of `name`.
    pub domain: String,
    pub country: String,
    pub asn: u32,
    pub upload_bytes: u64,
    pub download_bytes: u64,
    pub upload_packets: u64,
    pub download_packets: u64,
}

/// One poll's input to the evaluator.
#[derive(Debug, Clone, Default)]
pub struct PollFacts {
    /// Unix seconds.
    pub now: u64,
    /// Every client the kernel has counted (for `new_device`), and the ones flows refer to.
    pub clients: Vec<ClientFacts>,
    pub flows: Vec<FlowFacts>,
}

impl ClientMatch {
    pub fn matches(&self, c: &ClientFacts) -> bool {
        self.name.any_or_empty(|p| p.matches(&c.name))
            && self.group.any_or_empty(|p| p.matches(&c.group))
            && self.mac.any_or_empty(|m| m.0 == c.mac)
            && self.vendor.any_or_empty(|p| {
                p.matches(&c.vendor) || p.matches(&c.oui_vendor) || p.matches(&c.fingerprint_vendor)
            })
            && self.os.any_or_empty(|p| p.matches(&c.os))
            && self.device_class.any_or_empty(|p| p.matches(&c.device_class))
            && self.tag.iter().all(|(k, values)| {
                c.tags.get(k).is_some_and(|v| values.any_or_empty(|p| p.matches(v)))
            })
    }
}

impl DestinationMatch {
    pub fn matches(&self, f: &FlowFacts) -> bool {
        let ip = f.remote_ip;
        self.cidr.any_or_empty(|c| ip.is_some_and(|ip| c.contains(&ip)))
            && self.country.any_or_empty(|c| c.0 == f.country)
            && self.asn.any_or_empty(|a| a.0 == f.asn)
            && self.domain.any_or_empty(|d| d.matches(&f.name))
            && self.port.any_or_empty(|p| p.contains(f.port))
            && self.protocol.any_or_empty(|p| p.0 == f.protocol)
            && self.scope.is_none_or(|s| ip.is_some() && (s == Scope::Local) == f.reach.is_local())
    }
}

impl MatchSpec {
    pub fn matches_client(&self, c: &ClientFacts) -> bool {
        self.client.any_or_empty(|m| m.matches(c))
    }

    /// Whether a flow's destination matches; with [`MatchSpec::matches_client`], whether the
    /// flow does (the evaluator matches a client once for all its flows).
    pub fn matches_destination(&self, f: &FlowFacts) -> bool {
        self.destination.any_or_empty(|m| m.matches(f))
    }

    /// Device events have no destination: only exceptions about clients alone apply.
    pub fn matches_device(&self, c: &ClientFacts) -> bool {
        self.destination.is_empty() && self.matches_client(c)
    }

    pub fn is_empty(&self) -> bool {
        self.client.is_empty() && self.destination.is_empty()
    }
}

/// The destination label of a flow at a grouping level; the address stands in for a missing
/// name, network or country so that nothing is attributed to nobody.
pub fn destination_label(f: &FlowFacts, by: GroupBy) -> String {
    let mut label = String::new();
    // Writing to a String cannot fail.
    let _ = write_destination_label(&mut label, f, by);
    label
}

/// [`destination_label`] written to `out` (hashed on the way, it needs no allocation).
pub fn write_destination_label(
    out: &mut impl fmt::Write,
    f: &FlowFacts,
    by: GroupBy,
) -> fmt::Result {
    let ip = |out: &mut dyn fmt::Write| f.remote_ip.map_or(Ok(()), |ip| write!(out, "{ip}"));
    let or_ip =
        |out: &mut dyn fmt::Write, s: &str| if s.is_empty() { ip(out) } else { out.write_str(s) };
    match by {
        GroupBy::Domain => or_ip(out, &f.domain),
        GroupBy::Fqdn => or_ip(out, &f.name),
        GroupBy::Ip => ip(out),
        GroupBy::Asn if f.asn == 0 => ip(out),
        GroupBy::Asn => write!(out, "AS{}", f.asn),
        GroupBy::Country => or_ip(out, &f.country),
        GroupBy::None => Ok(()),
    }
}

/// Well-known public DNS-over-HTTPS services, by name and by address.
const DOH_DOMAINS: &[&str] = &[
    "dns.google",
    "cloudflare-dns.com",
    "one.one.one.one",
    "quad9.net",
    "doh.opendns.com",
    "dns.nextdns.io",
    "adguard-dns.com",
    "doh.cleanbrowsing.org",
    "doh.mullvad.net",
    "dns.mullvad.net",
    "dns.controld.com",
    "doh.dns.sb",
    "dns.alidns.com",
    "doh.pub",
];
const DOH_ADDRESSES: &[&str] = &[
    "8.8.8.8",
    "8.8.4.4",
    "1.1.1.1",
    "1.0.0.1",
    "9.9.9.9",
    "149.112.112.112",
    "208.67.222.222",
    "208.67.220.220",
    "94.140.14.14",
    "94.140.15.15",
    "223.5.5.5",
    "223.6.6.6",
    "2001:4860:4860::8888",
    "2001:4860:4860::8844",
    "2606:4700:4700::1111",
    "2606:4700:4700::1001",
    "2620:fe::fe",
    "2620:fe::9",
];

/// Tells whether a flow resolves names around the configured resolvers.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsBypass {
    resolvers: Vec<Cidr>,
    /// The LAN prefixes: apart from `resolvers`, as they follow the interface's.
    lan: Vec<Cidr>,
    doh_domains: Vec<DomainPattern>,
    doh_addresses: Vec<Cidr>,
}

impl DnsBypass {
    pub fn new(spec: &DnsSpec) -> DnsBypass {
        let mut doh_domains: Vec<DomainPattern> =
            DOH_DOMAINS.iter().filter_map(|d| DomainPattern::parse(d).ok()).collect();
        doh_domains.extend(spec.doh_domains.iter().cloned());
        let mut doh_addresses: Vec<Cidr> =
            DOH_ADDRESSES.iter().filter_map(|a| Cidr::parse(a).ok()).collect();
        doh_addresses.extend(spec.doh_addresses.iter().copied());
        DnsBypass {
            resolvers: spec.resolvers.0.clone(),
            lan: Vec::new(),
            doh_domains,
            doh_addresses,
        }
    }

    /// The LAN itself (the router, a Pi-hole) is always an allowed resolver: `nets` replace the
    /// LAN prefixes allowed before (they change with the interface's).
    pub fn allow_networks(&mut self, nets: &[ipnet::IpNet]) {
        self.lan = nets.iter().map(|n| Cidr(*n)).collect();
    }

    pub fn is_bypass(&self, f: &FlowFacts) -> bool {
        const TCP: u8 = 6;
        const UDP: u8 = 17;
        let Some(ip) = f.remote_ip else { return false };
        if !matches!(f.protocol, TCP | UDP)
            || self.resolvers.iter().chain(&self.lan).any(|r| r.contains(&ip))
        {
            return false;
        }
        match f.port {
            // Plain DNS, DNS over TLS and DNS over QUIC.
            53 | 853 => true,
            443 => {
                self.doh_addresses.iter().any(|a| a.contains(&ip))
                    || self.doh_domains.iter().any(|d| d.matches(&f.name))
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(ip: &str, protocol: u8, port: u16, name: &str) -> FlowFacts {
        let remote_ip = ip.parse().ok();
        FlowFacts {
            remote_ip,
            reach: remote_ip.map_or(Reach::Internet, |ip| crate::types::address::reach(&ip)),
            protocol,
            port,
            name: name.into(),
            ..FlowFacts::default()
        }
    }

    #[test]
    fn destination_fields_are_and_lists_are_or() {
        let m: DestinationMatch = serde_yaml::from_str(
            "{domain: [xiaomi.net, \"*.micloud.*\"], protocol: tcp, port: 443}",
        )
        .unwrap();
        assert!(m.matches(&flow("203.0.113.9", 6, 443, "api.xiaomi.net")));
        assert!(m.matches(&flow("203.0.113.9", 6, 443, "eu.micloud.com")));
        assert!(!m.matches(&flow("203.0.113.9", 17, 443, "api.xiaomi.net")), "udp");
        assert!(!m.matches(&flow("203.0.113.9", 6, 80, "api.xiaomi.net")), "port");
        assert!(!m.matches(&flow("203.0.113.9", 6, 443, "")), "unnamed");
        let scope: DestinationMatch = serde_yaml::from_str("{scope: local}").unwrap();
        assert!(
            scope.matches(&flow("192.168.7.1", 6, 1, ""))
                && scope.matches(&flow("fd00::1", 6, 1, ""))
        );
        assert!(!scope.matches(&flow("203.0.113.9", 6, 1, "")));
        let cidr: DestinationMatch =
            serde_yaml::from_str("{cidr: 203.0.113.0/24, country: [CN]}").unwrap();
        let mut f = flow("203.0.113.9", 6, 1, "");
        assert!(!cidr.matches(&f));
        f.country = "CN".into();
        assert!(cidr.matches(&f));
    }

    #[test]
    fn client_fields_tags_and_globs() {
        let c = ClientFacts {
            mac: [0x64, 0x09, 0x80, 1, 2, 3],
            name: "Redmi-Note".into(),
            group: "phones".into(),
            vendor: "Xiaomi Communications Co Ltd".into(),
            tags: BTreeMap::from([("owner".to_string(), "alice".to_string())]),
            ..ClientFacts::default()
        };
        let m = |y: &str| serde_yaml::from_str::<ClientMatch>(y).unwrap().matches(&c);
        assert!(m("{name: redmi*}"));
        assert!(m("{vendor: \"xiaomi*\", group: [tv, phones]}"));
        assert!(m("{tag: {owner: [bob, alice]}}"));
        assert!(!m("{tag: {owner: bob}}"));
        assert!(!m("{tag: {room: kitchen}}"));
        assert!(m("{mac: \"64:09:80:01:02:03\"}"));
        assert!(!m("{mac: \"64:09:80:01:02:04\"}"));
        assert!(m("{any: true}"));
    }

    /// A phone on a private MAC: the registry says `randomized`, the DHCP fingerprint says
    /// Android, a phone, made by Xiaomi; `os`, `device_class` and `vendor` match on that.
    #[test]
    fn os_device_class_and_the_fingerprints_vendor() {
        let c = ClientFacts {
            mac: [0x6a, 0x1f, 0x33, 1, 2, 3],
            vendor: "Xiaomi".into(),
            oui_vendor: "randomized".into(),
            fingerprint_vendor: "Xiaomi".into(),
            os: "android".into(),
            device_class: "phone".into(),
            ..ClientFacts::default()
        };
        let m = |y: &str| serde_yaml::from_str::<ClientMatch>(y).unwrap().matches(&c);
        assert!(m("{os: android}"));
        assert!(m("{os: \"Android*\", device_class: [tablet, phone]}"));
        assert!(!m("{os: ios}"));
        assert!(!m("{device_class: computer}"));
        assert!(m("{vendor: randomized}"));
        // The user said Redmi-phone's maker is "Redmi"; the fingerprint's hint still matches.
        let stated = ClientFacts { vendor: "Redmi".into(), ..c.clone() };
        let m = |y: &str| serde_yaml::from_str::<ClientMatch>(y).unwrap().matches(&stated);
        assert!(m("{vendor: xiaomi}") && m("{vendor: redmi}"));
        // Unknown: nothing matches a named OS.
        let unknown = ClientFacts::default();
        let m = |y: &str| serde_yaml::from_str::<ClientMatch>(y).unwrap().matches(&unknown);
        assert!(!m("{os: android}"));
    }

    #[test]
    fn dns_bypass_spots_dns_elsewhere_dot_and_doh() {
        let spec: DnsSpec =
            serde_yaml::from_str("resolvers: [198.51.100.53]\ndoh_domains: doh.example.org\n")
                .unwrap();
        let b = DnsBypass::new(&spec);
        assert!(!b.is_bypass(&flow("198.51.100.53", 17, 53, "")), "the configured resolver");
        assert!(b.is_bypass(&flow("203.0.113.53", 17, 53, "")), "plain DNS elsewhere");
        assert!(b.is_bypass(&flow("203.0.113.53", 6, 853, "")), "DNS over TLS");
        assert!(b.is_bypass(&flow("1.1.1.1", 6, 443, "")), "DoH by address");
        assert!(b.is_bypass(&flow("203.0.113.7", 6, 443, "dns.google")), "DoH by name");
        assert!(
            b.is_bypass(&flow("203.0.113.7", 6, 443, "doh.example.org")),
            "configured DoH name"
        );
        assert!(!b.is_bypass(&flow("203.0.113.7", 6, 443, "www.example.org")), "ordinary HTTPS");
        assert!(!b.is_bypass(&flow("203.0.113.7", 1, 53, "")), "ICMP is not DNS");
    }

    #[test]
    fn labels_fall_back_to_the_address() {
        let mut f = flow("203.0.113.9", 6, 443, "");
        assert_eq!(destination_label(&f, GroupBy::Domain), "203.0.113.9");
        f.name = "api.xiaomi.net".into();
        f.domain = "xiaomi.net".into();
        f.asn = 4808;
        assert_eq!(destination_label(&f, GroupBy::Domain), "xiaomi.net");
        assert_eq!(destination_label(&f, GroupBy::Fqdn), "api.xiaomi.net");
        assert_eq!(destination_label(&f, GroupBy::Asn), "AS4808");
        assert_eq!(destination_label(&f, GroupBy::Country), "203.0.113.9");
        assert_eq!(destination_label(&f, GroupBy::None), "");
    }
}
