//! Country and autonomous system of remote addresses, from MaxMind-format (`.mmdb`) databases.
//!
//! Understood layouts, all read from the same lookup:
//! - MaxMind GeoLite2/GeoIP2 Country and City, DB-IP's IP-to-Country/City Lite:
//!   `country.iso_code` (else `registered_country.iso_code`);
//! - MaxMind GeoLite2-ASN, DB-IP's IP-to-ASN Lite, ip-location-db's `*-asn` files:
//!   `autonomous_system_number`, `autonomous_system_organization`;
//! - ip-location-db's `*-country` files: `country_code`;
//! - IPinfo's Lite file: `country_code`, `asn` (`"AS15169"`), `as_name`.
//!
//! ip-location-db ships IPv4 and IPv6 in separate files (`...-ipv4.mmdb`, `...-ipv6.mmdb`):
//! when the configured file's name has `ipv4` or `ipv6` and its sibling with the other family
//! exists, both are read.
//!
//! Databases are read into memory once at startup (not memory-mapped: a database replaced
//! in place by `cp` would crash a mapped reader; `geoipupdate` writes a new file and renames
//! it, which a restart picks up). Private and LAN addresses are in no such database: their
//! lookups come back empty.

use std::{
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use maxminddb::Reader;
use serde::{
    Deserialize, Deserializer,
    de::{IgnoredAny, MapAccess, Visitor},
};

/// The `geo` part of the configuration.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GeoConfig {
    /// GeoLite2-Country/City, DB-IP country/city lite, or an ip-location-db country file.
    #[serde(default)]
    pub country_database: Option<PathBuf>,
    /// GeoLite2-ASN, DB-IP ASN lite, or an ip-location-db ASN file.
    #[serde(default)]
    pub asn_database: Option<PathBuf>,
}

/// What the databases say about one address; empty where they say nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GeoInfo {
    /// ISO 3166-1 alpha-2 code, upper case, or "".
    pub country: String,
    /// 0 = unknown.
    pub asn: u32,
    pub as_org: String,
}

/// One database, possibly in two files (one per address family).
struct Database {
    readers: Vec<(PathBuf, Reader<Vec<u8>>)>,
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.readers.iter().map(|(p, _)| p)).finish()
    }
}

/// The opened country and ASN databases.
#[derive(Debug, Default)]
pub struct Geo {
    country: Option<Arc<Database>>,
    asn: Option<Arc<Database>>,
}

const COUNTRY_SOURCES: &str = "GeoLite2-Country.mmdb from maxmind.com (free account; geoipupdate \
                               keeps it current) or dbip-country-lite.mmdb from db-ip.com";
const ASN_SOURCES: &str = "GeoLite2-ASN.mmdb from maxmind.com (free account; geoipupdate keeps it \
                           current) or dbip-asn-lite.mmdb from db-ip.com";

impl Geo {
    /// Whether any database is open (without one every lookup is empty).
    pub fn has_databases(&self) -> bool {
        self.country.is_some() || self.asn.is_some()
    }

    /// Opens the configured databases. A database that is not configured, missing or
    /// unreadable gives one warning saying which labels stay empty and where to get it;
    /// its lookups then return empty values.
    pub fn open(cfg: &GeoConfig) -> (Geo, Vec<String>) {
        let mut warnings = Vec::new();
        let country = open_database(
            cfg.country_database.as_deref(),
            "country_database",
            "country labels",
            COUNTRY_SOURCES,
            &mut warnings,
        );
        let asn = if cfg.asn_database.is_some() && cfg.asn_database == cfg.country_database {
            // One combined file (e.g. IPinfo Lite) for both: read it once.
            country.clone()
        } else {
            open_database(
                cfg.asn_database.as_deref(),
                "asn_database",
                "asn and as_org labels",
                ASN_SOURCES,
                &mut warnings,
            )
        };
        (Geo { country, asn }, warnings)
    }

    /// Whether a country database is open.
    pub fn has_country(&self) -> bool {
        self.country.is_some()
    }

    /// Whether an ASN database is open.
    pub fn has_asn(&self) -> bool {
        self.asn.is_some()
    }

    /// Country and AS of `ip` (IPv4-mapped IPv6 addresses are looked up as IPv4).
    pub fn lookup(&self, ip: IpAddr) -> GeoInfo {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let mut info = GeoInfo::default();
        let country_record = self.country.as_ref().and_then(|db| db.record(ip));
        if let Some(r) = &country_record {
            info.country = r.country().unwrap_or_default();
        }
        let shared = matches!((&self.country, &self.asn), (Some(a), Some(b)) if Arc::ptr_eq(a, b));
        let asn_record =
            if shared { country_record } else { self.asn.as_ref().and_then(|db| db.record(ip)) };
        if let Some(r) = asn_record {
            info.asn = r.autonomous_system_number.0.or(r.asn.0).unwrap_or(0);
            info.as_org = r.autonomous_system_organization.or(r.as_name).unwrap_or_default();
        }
        info
    }
}

fn open_database(
    path: Option<&Path>,
    key: &str,
    labels: &str,
    sources: &str,
    warnings: &mut Vec<String>,
) -> Option<Arc<Database>> {
    let Some(path) = path else {
        warnings.push(format!(
            "no geo {key} configured: {labels} will be empty (get {sources}, and set {key})"
        ));
        return None;
    };
    let open = |p: &Path| -> Result<Reader<Vec<u8>>, maxminddb::MaxMindDbError> {
        let reader = Reader::open_readfile(p)?;
        // Refuse a truncated or corrupt file now rather than fail every lookup.
        reader.lookup(IpAddr::from([1, 1, 1, 1]))?;
        Ok(reader)
    };
    if !path.exists() {
        warnings.push(format!(
            "geo {key} {} not found: {labels} will be empty (get {sources})",
            path.display()
        ));
        return None;
    }
    let reader = match open(path) {
        Ok(r) => r,
        Err(e) => {
            warnings.push(format!(
                "geo {key} {} cannot be read ({e}): {labels} will be empty (get {sources})",
                path.display()
            ));
            return None;
        }
    };
    let mut readers = vec![(path.to_owned(), reader)];
    if let Some(sibling) = other_family_file(path).filter(|p| p.exists()) {
        match open(&sibling) {
            Ok(r) => readers.push((sibling, r)),
            Err(e) => warnings.push(format!(
                "geo {key} {} cannot be read ({e}): {labels} will be empty for its address family",
                sibling.display()
            )),
        }
    }
    Some(Arc::new(Database { readers }))
}

/// `x-ipv4.mmdb` ↔ `x-ipv6.mmdb` (ip-location-db's naming).
fn other_family_file(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    let other = if name.contains("ipv4") {
        name.replacen("ipv4", "ipv6", 1)
    } else if name.contains("ipv6") {
        name.replacen("ipv6", "ipv4", 1)
    } else {
        return None;
    };
    Some(path.with_file_name(other))
}

impl Database {
    /// The record of the first file that has one for `ip`.
    fn record(&self, ip: IpAddr) -> Option<Record> {
        self.readers.iter().find_map(|(_, reader)| {
            if ip.is_ipv6() && reader.metadata().ip_version == 4 {
                return None;
            }
            reader.lookup(ip).ok()?.decode::<Record>().ok().flatten()
        })
    }
}

/// The fields read, over all the layouts understood; unknown fields are skipped undecoded.
#[derive(Debug, Default, Deserialize)]
struct Record {
    #[serde(default)]
    country: IsoCode,
    #[serde(default)]
    registered_country: IsoCode,
    #[serde(default)]
    country_code: Option<String>,
    #[serde(default)]
    autonomous_system_number: AsNumber,
    #[serde(default)]
    autonomous_system_organization: Option<String>,
    #[serde(default)]
    asn: AsNumber,
    #[serde(default)]
    as_name: Option<String>,
}

impl Record {
    fn country(&self) -> Option<String> {
        let code = self
            .country
            .0
            .as_deref()
            .or(self.country_code.as_deref())
            .or(self.registered_country.0.as_deref())?;
        let code = code.trim();
        (!code.is_empty()).then(|| code.to_ascii_uppercase())
    }
}

/// `{"iso_code": "CN", ...}`'s code; a plain string (IPinfo's country *name*) gives none.
#[derive(Debug, Default)]
struct IsoCode(Option<String>);

impl<'de> Deserialize<'de> for IsoCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = IsoCode;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map with iso_code")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<IsoCode, A::Error> {
                let mut code = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key == "iso_code" {
                        code = map.next_value::<Option<String>>()?;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(IsoCode(code))
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<IsoCode, E> {
                Ok(IsoCode(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// An AS number stored as an unsigned integer (any width) or as `"AS15169"`.
#[derive(Debug, Default)]
struct AsNumber(Option<u32>);

impl<'de> Deserialize<'de> for AsNumber {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AsNumber;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an AS number")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<AsNumber, E> {
                Ok(AsNumber(u32::try_from(n).ok()))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<AsNumber, E> {
                Ok(AsNumber(u32::try_from(n).ok()))
            }
            fn visit_u128<E: serde::de::Error>(self, n: u128) -> Result<AsNumber, E> {
                Ok(AsNumber(u32::try_from(n).ok()))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<AsNumber, E> {
                let digits = s.trim().trim_start_matches("AS").trim_start_matches("as");
                Ok(AsNumber(digits.parse().ok()))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use lab::mmdb::{MmdbValue, MmdbWriter};

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> ipnet::IpNet {
        s.parse().unwrap()
    }

    fn info(country: &str, asn: u32, as_org: &str) -> GeoInfo {
        GeoInfo { country: country.into(), asn, as_org: as_org.into() }
    }

    /// GeoLite2-style country and ASN files in a temporary directory.
    fn maxmind_dbs(dir: &Path) -> GeoConfig {
        let mut c = MmdbWriter::new("GeoLite2-Country");
        c.insert_country(net("10.77.3.0/24"), "CN");
        c.insert_country(net("10.77.4.0/24"), "us");
        c.insert_country(net("fd77:3::/32"), "CN");
        // Only a registered country (as GeoLite2 has for some anycast and satellite blocks).
        let registered = BTreeMap::from([("iso_code".to_string(), MmdbValue::from("SE"))]);
        c.insert(net("10.77.5.0/24"), "registered_country", MmdbValue::Map(registered));
        // A City-style record: names and more alongside the code.
        let names = BTreeMap::from([
            ("en".to_string(), MmdbValue::from("Germany")),
            ("de".into(), "Deutschland".into()),
        ]);
        let country = BTreeMap::from([
            ("iso_code".to_string(), MmdbValue::from("DE")),
            ("geoname_id".to_string(), MmdbValue::U32(2_921_044)),
            ("is_in_european_union".to_string(), MmdbValue::Bool(true)),
            ("names".to_string(), MmdbValue::Map(names)),
        ]);
        c.insert(net("10.77.6.0/24"), "country", MmdbValue::Map(country));
        c.insert(
            net("10.77.6.0/24"),
            "location",
            MmdbValue::Map(BTreeMap::from([("time_zone".to_string(), "Europe/Berlin".into())])),
        );
        let mut a = MmdbWriter::new("GeoLite2-ASN");
        a.insert_asn(net("10.77.3.0/24"), 4808, "China Unicom Beijing Province Network");
        a.insert_asn(net("fd77:3::/32"), 4808, "China Unicom Beijing Province Network");
        let cfg = GeoConfig {
            country_database: Some(dir.join("country.mmdb")),
            asn_database: Some(dir.join("asn.mmdb")),
        };
        c.write(cfg.country_database.as_ref().unwrap()).unwrap();
        a.write(cfg.asn_database.as_ref().unwrap()).unwrap();
        cfg
    }

    #[test]
    fn maxmind_layout() {
        let dir = tempfile::tempdir().unwrap();
        let (geo, warnings) = Geo::open(&maxmind_dbs(dir.path()));
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(geo.has_country() && geo.has_asn());
        let china = info("CN", 4808, "China Unicom Beijing Province Network");
        assert_eq!(geo.lookup(ip("10.77.3.2")), china);
        assert_eq!(geo.lookup(ip("fd77:3::2")), china);
        assert_eq!(geo.lookup(ip("::ffff:10.77.3.2")), china, "IPv4-mapped reads as IPv4");
        assert_eq!(geo.lookup(ip("10.77.4.2")), info("US", 0, ""), "upper case; no ASN entry");
        assert_eq!(geo.lookup(ip("10.77.5.2")), info("SE", 0, ""));
        assert_eq!(geo.lookup(ip("10.77.6.2")), info("DE", 0, ""));
        // Not in the databases (as private and LAN addresses never are).
        assert_eq!(geo.lookup(ip("192.168.1.10")), GeoInfo::default());
        assert_eq!(geo.lookup(ip("fe80::1")), GeoInfo::default());
    }

    #[test]
    fn ip_location_db_layout_with_split_families() {
        let dir = tempfile::tempdir().unwrap();
        let mut v4 = MmdbWriter::new("geolite2-country");
        v4.insert(net("10.77.3.0/24"), "country_code", MmdbValue::from("CN"));
        v4.write(&dir.path().join("geolite2-country-ipv4.mmdb")).unwrap();
        let mut v6 = MmdbWriter::new("geolite2-country");
        v6.insert(net("fd77:3::/32"), "country_code", MmdbValue::from("JP"));
        v6.write(&dir.path().join("geolite2-country-ipv6.mmdb")).unwrap();
        let mut asn = MmdbWriter::new("asn");
        asn.insert_asn(net("10.77.3.0/24"), 13_335, "Cloudflare, Inc.");
        asn.write(&dir.path().join("iplocate-asn.mmdb")).unwrap();
        let cfg = GeoConfig {
            // The IPv6 file configured: its IPv4 sibling is found too.
            country_database: Some(dir.path().join("geolite2-country-ipv6.mmdb")),
            asn_database: Some(dir.path().join("iplocate-asn.mmdb")),
        };
        let (geo, warnings) = Geo::open(&cfg);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(geo.lookup(ip("10.77.3.2")), info("CN", 13_335, "Cloudflare, Inc."));
        assert_eq!(geo.lookup(ip("fd77:3::2")), info("JP", 0, ""));
    }

    #[test]
    fn ipinfo_lite_combined_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipinfo_lite.mmdb");
        let mut w = MmdbWriter::new("ipinfo lite.mmdb");
        for (key, value) in [
            ("country", "United States"),
            ("country_code", "US"),
            ("continent", "North America"),
            ("asn", "AS15169"),
            ("as_name", "Google LLC"),
            ("as_domain", "google.com"),
        ] {
            w.insert(net("10.77.8.0/24"), key, MmdbValue::from(value));
        }
        w.write(&path).unwrap();
        let (geo, warnings) = Geo::open(&GeoConfig {
            country_database: Some(path.clone()),
            asn_database: Some(path),
        });
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(geo.lookup(ip("10.77.8.8")), info("US", 15_169, "Google LLC"));
        assert!(Arc::ptr_eq(geo.country.as_ref().unwrap(), geo.asn.as_ref().unwrap()), "read once");
    }

    #[test]
    fn missing_databases_warn_once_each() {
        let (geo, warnings) = Geo::open(&GeoConfig::default());
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0]
                .starts_with("no geo country_database configured: country labels will be empty"),
            "{warnings:?}"
        );
        assert!(
            warnings[0].contains("GeoLite2-Country.mmdb") && warnings[0].contains("db-ip.com"),
            "{warnings:?}"
        );
        assert!(
            warnings[1]
                .starts_with("no geo asn_database configured: asn and as_org labels will be empty"),
            "{warnings:?}"
        );
        assert!(warnings[1].contains("GeoLite2-ASN.mmdb"), "{warnings:?}");
        assert_eq!(geo.lookup(ip("8.8.8.8")), GeoInfo::default());

        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.mmdb");
        std::fs::write(&garbage, b"this is not a database").unwrap();
        let cfg = GeoConfig {
            country_database: Some(dir.path().join("nope.mmdb")),
            asn_database: Some(garbage),
        };
        let (geo, warnings) = Geo::open(&cfg);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].contains("nope.mmdb not found: country labels will be empty"),
            "{warnings:?}"
        );
        assert!(warnings[1].contains("garbage.mmdb cannot be read ("), "{warnings:?}");
        assert!(warnings[1].contains("asn and as_org labels will be empty"), "{warnings:?}");
        assert!(!geo.has_country() && !geo.has_asn());
        assert_eq!(geo.lookup(ip("10.77.3.2")), GeoInfo::default());

        // A truncated database is refused at open, not at every lookup.
        let full = maxmind_dbs(dir.path());
        let bytes = std::fs::read(full.asn_database.as_ref().unwrap()).unwrap();
        let cut = dir.path().join("cut.mmdb");
        std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
        let (_, warnings) = Geo::open(&GeoConfig {
            country_database: full.country_database,
            asn_database: Some(cut),
        });
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("cut.mmdb cannot be read"), "{warnings:?}");
    }

    #[test]
    fn config_parses() {
        let cfg: GeoConfig =
            serde_yaml::from_str("country_database: /var/lib/GeoIP/GeoLite2-Country.mmdb\n")
                .unwrap();
        assert_eq!(
            cfg.country_database,
            Some(PathBuf::from("/var/lib/GeoIP/GeoLite2-Country.mmdb"))
        );
        assert_eq!(cfg.asn_database, None);
        assert!(serde_yaml::from_str::<GeoConfig>("country_db: x\n").is_err());
    }

    #[test]
    fn sibling_names() {
        assert_eq!(
            other_family_file(Path::new("/d/asn-country-ipv4.mmdb")),
            Some(PathBuf::from("/d/asn-country-ipv6.mmdb"))
        );
        assert_eq!(
            other_family_file(Path::new("/d/x-ipv6.mmdb")),
            Some(PathBuf::from("/d/x-ipv4.mmdb"))
        );
        assert_eq!(other_family_file(Path::new("/ipv4/GeoLite2-ASN.mmdb")), None);
    }
}
