//! The policy file's value types. Each one validates itself while it is deserialized, so that
//! a bad CIDR, country code, glob or size is reported by serde_yaml with its line and column.

use std::{fmt, marker::PhantomData, net::IpAddr};

use globset::{GlobBuilder, GlobMatcher};
use ipnet::IpNet;
use serde::{
    Deserialize, Deserializer, Serialize,
    de::{self, IntoDeserializer as _, value::MapAccessDeserializer},
};

use super::{countries, error::PolicyError};
use crate::types::mac;

/// What names the destination an alert is about (one alert per client and destination).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    /// Registrable domain (xiaomi.net), else the address.
    #[default]
    Domain,
    Fqdn,
    Ip,
    Asn,
    Country,
    /// One alert per client: all matching destinations summed (`none` or `client`).
    #[serde(alias = "client")]
    None,
}

/// One value or a list of them: `country: CN` and `country: [CN, HK]` both read.
#[derive(Debug, Clone, PartialEq)]
pub struct OneOrMany<T>(pub Vec<T>);

impl<T> Default for OneOrMany<T> {
    fn default() -> Self {
        OneOrMany(Vec::new())
    }
}

impl<T> OneOrMany<T> {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.0.iter()
    }
    /// An empty list puts no constraint; otherwise one element must satisfy `f`.
    pub fn any_or_empty(&self, f: impl Fn(&T) -> bool) -> bool {
        self.0.is_empty() || self.0.iter().any(f)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> de::Visitor<'de> for V<T> {
            type Value = OneOrMany<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a value or a list of values")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element()? {
                    out.push(v);
                }
                Ok(OneOrMany(out))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(|t| OneOrMany(vec![t]))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(|t| OneOrMany(vec![t]))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(|t| OneOrMany(vec![t]))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(|t| OneOrMany(vec![t]))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(|t| OneOrMany(vec![t]))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// Parses a value from its text form with a message that says what was expected. The error
/// is raised inside the visitor, so serde_yaml locates it at the value itself.
pub(super) fn from_text<'de, D: Deserializer<'de>, T>(
    d: D,
    parse: impl Fn(&str) -> Result<T, PolicyError>,
) -> Result<T, D::Error> {
    struct V<F>(F);
    impl<'de, T, F: Fn(&str) -> Result<T, PolicyError>> de::Visitor<'de> for V<F> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string or a number")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            (self.0)(v).map_err(E::custom)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
            (self.0)(&v.to_string()).map_err(E::custom)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
            (self.0)(&v.to_string()).map_err(E::custom)
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
            (self.0)(&v.to_string()).map_err(E::custom)
        }
    }
    d.deserialize_any(V(parse))
}

macro_rules! text_value {
    ($ty:ty, $parse:path) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                from_text(d, $parse)
            }
        }
    };
}

/// A case-insensitive glob (`*`, `?`, `[a-z]`) over a whole string: client names, groups,
/// vendors, tag values.
#[derive(Debug, Clone)]
pub struct Pattern {
    text: String,
    glob: GlobMatcher,
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Pattern, PolicyError> {
        let glob = GlobBuilder::new(text)
            .case_insensitive(true)
            .literal_separator(false)
            .build()
            .map_err(|e| PolicyError::Glob {
            text: text.into(),
            reason: e.kind().to_string(),
        })?;
        Ok(Pattern { text: text.to_string(), glob: glob.compile_matcher() })
    }
    pub fn matches(&self, s: &str) -> bool {
        self.glob.is_match(s)
    }
}
text_value!(Pattern, Pattern::parse);

/// A domain: `xiaomi.net` matches the name and every name under it; a glob
/// (`*.micloud.*`) matches whole names, case-insensitively.
#[derive(Debug, Clone, PartialEq)]
pub enum DomainPattern {
    Suffix(String),
    Glob(Pattern),
}

impl DomainPattern {
    pub fn parse(text: &str) -> Result<DomainPattern, PolicyError> {
        let t = text.trim().trim_end_matches('.').to_ascii_lowercase();
        if t.is_empty() {
            return Err(PolicyError::EmptyDomain);
        }
        if t.contains(['*', '?', '[']) {
            return Pattern::parse(&t).map(DomainPattern::Glob);
        }
        if t.contains(|c: char| c.is_whitespace() || c == '/' || c == ':') {
            return Err(PolicyError::Domain(text.into()));
        }
        Ok(DomainPattern::Suffix(t))
    }
    /// `name` is a lower-case fully qualified name without the trailing dot.
    pub fn matches(&self, name: &str) -> bool {
        if name.is_empty() {
            return false;
        }
        match self {
            DomainPattern::Suffix(s) => {
                name.eq_ignore_ascii_case(s)
                    || (name.len() > s.len()
                        && name.as_bytes()[name.len() - s.len() - 1] == b'.'
                        && name[name.len() - s.len()..].eq_ignore_ascii_case(s))
            }
            DomainPattern::Glob(g) => g.matches(name),
        }
    }
}
text_value!(DomainPattern, DomainPattern::parse);

/// A network in CIDR form; a bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cidr(pub IpNet);

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, PolicyError> {
        let t = text.trim();
        if let Ok(net) = t.parse::<IpNet>() {
            return Ok(Cidr(net.trunc()));
        }
        t.parse::<IpAddr>()
            .map(|ip| Cidr(IpNet::from(ip)))
            .map_err(|_| PolicyError::Cidr(text.into()))
    }
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.0.contains(ip)
    }
}
text_value!(Cidr, Cidr::parse);

/// An ISO 3166-1 alpha-2 country code, upper case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Country(pub String);

impl Country {
    pub fn parse(text: &str) -> Result<Country, PolicyError> {
        let code = text.trim().to_ascii_uppercase();
        if countries::is_known(&code) {
            Ok(Country(code))
        } else {
            Err(PolicyError::Country(text.into()))
        }
    }
}
text_value!(Country, Country::parse);

/// An autonomous system number: `4808` or `AS4808`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asn(pub u32);

impl Asn {
    pub fn parse(text: &str) -> Result<Asn, PolicyError> {
        let t = text.trim();
        let digits = t.strip_prefix("AS").or_else(|| t.strip_prefix("as")).unwrap_or(t);
        match digits.parse::<u32>() {
            Ok(n) if n > 0 => Ok(Asn(n)),
            _ => Err(PolicyError::Asn(text.into())),
        }
    }
}
text_value!(Asn, Asn::parse);

/// A port or an inclusive range: `443`, `8000-8100`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange(pub u16, pub u16);

impl PortRange {
    pub fn parse(text: &str) -> Result<PortRange, PolicyError> {
        let bad = || PolicyError::PortRange(text.into());
        let port = |s: &str| s.trim().parse::<u16>().map_err(|_| bad());
        match text.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (port(a)?, port(b)?);
                if a > b { Err(bad()) } else { Ok(PortRange(a, b)) }
            }
            None => port(text).map(|p| PortRange(p, p)),
        }
    }
    pub fn contains(&self, port: u16) -> bool {
        (self.0..=self.1).contains(&port)
    }
}
text_value!(PortRange, PortRange::parse);

/// An IP protocol by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocol(pub u8);

impl Protocol {
    pub fn parse(text: &str) -> Result<Protocol, PolicyError> {
        match text.trim().to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol(6)),
            "udp" => Ok(Protocol(17)),
            "icmp" => Ok(Protocol(1)),
            "icmpv6" => Ok(Protocol(58)),
            _ => Err(PolicyError::Protocol(text.into())),
        }
    }
}
text_value!(Protocol, Protocol::parse);

/// A MAC address, `64:09:80:4a:1c:07` or with dashes, as the inventory and lease files take
/// it (one parser for all: `crate::types::mac`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub fn parse(text: &str) -> Result<MacAddr, PolicyError> {
        Ok(MacAddr(mac::parse(text)?))
    }
}
text_value!(MacAddr, MacAddr::parse);

/// A byte count: `5MB` (10^6), `5MiB` (2^20), `1.5GB`, or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(text: &str) -> Result<ByteSize, PolicyError> {
        let t = text.trim();
        let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let bad = || PolicyError::Size(text.into());
        let n: f64 = num.parse().map_err(|_| bad())?;
        let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "m" | "mb" => 1_000_000,
            "g" | "gb" => 1_000_000_000,
            "t" | "tb" => 1_000_000_000_000,
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            "tib" => 1 << 40,
            _ => return Err(bad()),
        };
        let bytes = n * scale as f64;
        if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
            return Err(bad());
        }
        Ok(ByteSize(bytes.round() as u64))
    }
}
text_value!(ByteSize, ByteSize::parse);

/// Labels the sensor sets on every alert; rules cannot redefine them.
pub const RESERVED_LABELS: &[&str] = &["alertname", "severity", "client", "mac", "destination"];

/// A label name as Prometheus and Alertmanager accept it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LabelName(pub String);

impl LabelName {
    pub fn parse(text: &str) -> Result<LabelName, PolicyError> {
        let ok = text
            .chars()
            .enumerate()
            .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
        if text.is_empty() || !ok {
            return Err(PolicyError::LabelName(text.into()));
        }
        if RESERVED_LABELS.contains(&text) {
            return Err(PolicyError::ReservedLabel(text.into()));
        }
        Ok(LabelName(text.to_string()))
    }
}
text_value!(LabelName, LabelName::parse);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_match_themselves_and_below() {
        let d = DomainPattern::parse("Xiaomi.NET.").unwrap();
        assert!(d.matches("xiaomi.net"));
        assert!(d.matches("api.micloud.xiaomi.net"));
        assert!(!d.matches("notxiaomi.net"));
        assert!(!d.matches("xiaomi.net.evil.com"));
        assert!(!d.matches(""));
        let g = DomainPattern::parse("*.micloud.*").unwrap();
        assert!(g.matches("eu.micloud.com"));
        assert!(!g.matches("micloud.com"));
    }

    /// Every refusal in full: the text as written and what a good one looks like.
    #[test]
    fn refusals_say_what_a_good_value_looks_like() {
        let refusals = [
            (
                Pattern::parse("a[").map(|_| ()),
                "invalid glob `a[`: unclosed character class; missing ']'",
            ),
            (DomainPattern::parse(" . ").map(|_| ()), "empty domain"),
            (
                DomainPattern::parse("a b").map(|_| ()),
                "`a b` is not a domain (write e.g. xiaomi.net or *.micloud.com)",
            ),
            (
                Cidr::parse("10/8").map(|_| ()),
                "`10/8` is not a CIDR (write e.g. 203.0.113.0/24, 2001:db8::/32 or 198.51.100.7)",
            ),
            (
                Country::parse("XX").map(|_| ()),
                "unknown country code `XX` (ISO 3166-1 alpha-2, e.g. CN, US, DE)",
            ),
            (
                Asn::parse("AS0").map(|_| ()),
                "`AS0` is not an AS number (write e.g. 4808 or AS4808)",
            ),
            (
                PortRange::parse("9-1").map(|_| ()),
                "`9-1` is not a port or port range (write e.g. 443 or 8000-8100)",
            ),
            (
                Protocol::parse("sctp").map(|_| ()),
                "unknown protocol `sctp` (one of tcp, udp, icmp, icmpv6)",
            ),
            (
                ByteSize::parse("5 parsecs").map(|_| ()),
                "`5 parsecs` is not a size (write e.g. 5MB, 500kB, 1.5GB or 5MiB)",
            ),
            (
                LabelName::parse("9x").map(|_| ()),
                "`9x` is not a label name (letters, digits and _, not starting with a digit)",
            ),
            (
                LabelName::parse("mac").map(|_| ()),
                "label `mac` is set by the sensor itself; choose another name",
            ),
            (
                MacAddr::parse("64:09:80:4a:1c").map(|_| ()),
                "`64:09:80:4a:1c` is not a MAC address (write six bytes in hex, e.g. 64:09:80:4a:1c:07)",
            ),
            (
                MacAddr::parse("64:09:80-4a:1c:07").map(|_| ()),
                "`64:09:80-4a:1c:07` is not a MAC address (write six bytes in hex, e.g. 64:09:80:4a:1c:07)",
            ),
        ];
        for (result, message) in refusals {
            assert_eq!(result.map_err(|e| e.to_string()), Err(message.to_string()));
        }
    }

    #[test]
    fn values_parse_and_reject() {
        assert_eq!(ByteSize::parse("5MB").unwrap(), ByteSize(5_000_000));
        assert_eq!(ByteSize::parse("1.5 GB").unwrap(), ByteSize(1_500_000_000));
        assert_eq!(ByteSize::parse("2MiB").unwrap(), ByteSize(2 << 20));
        assert_eq!(ByteSize::parse("700").unwrap(), ByteSize(700));
        assert!(ByteSize::parse("5 parsecs").is_err());
        assert_eq!(Asn::parse("AS4808").unwrap(), Asn(4808));
        assert!(Asn::parse("ASX").is_err());
        assert_eq!(PortRange::parse("8000-8100").unwrap(), PortRange(8000, 8100));
        assert!(PortRange::parse("9-1").is_err());
        assert_eq!(Country::parse("cn").unwrap(), Country("CN".into()));
        assert!(Country::parse("XX").is_err());
        assert_eq!(
            Cidr::parse("198.51.100.7").unwrap().0,
            "198.51.100.7/32".parse::<IpNet>().unwrap()
        );
        assert_eq!(Cidr::parse("10.1.2.3/8").unwrap().0, "10.0.0.0/8".parse::<IpNet>().unwrap());
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert_eq!(
            MacAddr::parse("64-09-80-4A-1C-07").unwrap().0,
            [0x64, 0x09, 0x80, 0x4a, 0x1c, 0x07]
        );
        assert_eq!(MacAddr::parse("64:9:80:4a:1c:7").unwrap().0, [0x64, 9, 0x80, 0x4a, 0x1c, 7]);
        assert!(LabelName::parse("team").is_ok());
        assert!(LabelName::parse("9x").is_err());
        assert!(LabelName::parse("alertname").is_err());
        assert!(Pattern::parse("phone-[").is_err());
        assert!(Pattern::parse("Redmi*").unwrap().matches("redmi-note"));
    }
}
