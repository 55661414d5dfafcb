//! A small MaxMind DB (`.mmdb`) writer, so tests and the demo can give the sensor country and
//! ASN databases for the lab's addresses (real GeoLite2 files know nothing of 10.77.0.0/16).
//!
//! Follows the format spec (<https://maxmind.github.io/MaxMind-DB/>): a binary search tree over
//! the 128 bits of an IPv6 address, IPv4 networks under `::/96` (the spec's IPv4 subtree, where
//! readers look IPv4 addresses up), records of 24, 28 or 32 bits, a data section of maps,
//! strings and unsigned integers with identical records stored once, and the metadata map. No
//! IPv4-mapped (`::ffff:0:0/96`) or 6to4 aliases: look IPv4 addresses up as IPv4.
//!
//! The longest matching network wins whatever the insertion order; inserting a network again
//! sets more fields of the same record (a country and an ASN on one network make one record
//! with both, as combined databases have).

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use ipnet::IpNet;

/// A value in a record's map, in the spec's types.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MmdbValue {
    String(String),
    U16(u16),
    U32(u32),
    U64(u64),
    Bool(bool),
    Map(BTreeMap<String, MmdbValue>),
    Array(Vec<MmdbValue>),
}

impl From<&str> for MmdbValue {
    fn from(s: &str) -> Self {
        MmdbValue::String(s.to_string())
    }
}

impl From<u32> for MmdbValue {
    fn from(n: u32) -> Self {
        MmdbValue::U32(n)
    }
}

/// Builds a database in memory; [`MmdbWriter::write`] saves it.
#[derive(Debug, Clone)]
pub struct MmdbWriter {
    database_type: String,
    description: String,
    build_epoch: u64,
    record_size: Option<u16>,
    /// The insertion trie; node 0 is the root (and so never a child: 0 means none).
    nodes: Vec<TrieNode>,
    records: Vec<BTreeMap<String, MmdbValue>>,
}

#[derive(Debug, Clone, Default)]
struct TrieNode {
    children: [u32; 2],
    record: Option<usize>,
}

/// A record of the final tree before numbering.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Empty,
    Data(usize),
    Node(usize),
}

impl MmdbWriter {
    /// An empty database of the given `database_type` (e.g. `GeoLite2-Country`,
    /// `GeoLite2-ASN`; readers only show it).
    pub fn new(database_type: &str) -> Self {
        MmdbWriter {
            database_type: database_type.to_string(),
            description: format!("{database_type} test database written by the gateway-sensor lab"),
            build_epoch: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            record_size: None,
            nodes: vec![TrieNode::default()],
            records: Vec::new(),
        }
    }

    /// The English description in the metadata.
    pub fn set_description(&mut self, description: &str) {
        self.description = description.to_string();
    }

    /// The build time in the metadata, Unix seconds (default: now).
    pub fn set_build_epoch(&mut self, epoch: u64) {
        self.build_epoch = epoch;
    }

    /// Forces the record size (24, 28 or 32 bits) instead of the smallest that fits.
    pub fn set_record_size(&mut self, bits: u16) {
        self.record_size = Some(bits);
    }

    /// GeoIP2-Country style: `{"country": {"iso_code": "CN"}}` (also DB-IP's layout).
    pub fn insert_country(&mut self, net: IpNet, iso_code: &str) {
        let country = BTreeMap::from([("iso_code".to_string(), MmdbValue::from(iso_code))]);
        self.insert(net, "country", MmdbValue::Map(country));
    }

    /// GeoLite2-ASN style: `autonomous_system_number` and `autonomous_system_organization`.
    pub fn insert_asn(&mut self, net: IpNet, asn: u32, org: &str) {
        self.insert(net, "autonomous_system_number", MmdbValue::U32(asn));
        self.insert(net, "autonomous_system_organization", MmdbValue::from(org));
    }

    /// Sets one top-level field of `net`'s record (e.g. ip-location-db's `country_code`).
    pub fn insert(&mut self, net: IpNet, key: &str, value: MmdbValue) {
        let (bits, len) = tree_key(net);
        let mut node = 0usize;
        for depth in 0..len {
            let bit = ((bits >> (127 - u32::from(depth))) & 1) as usize;
            let child = self.nodes[node].children[bit];
            node = if child == 0 {
                self.nodes.push(TrieNode::default());
                let new = self.nodes.len() - 1;
                self.nodes[node].children[bit] = new as u32;
                new
            } else {
                child as usize
            };
        }
        let record = match self.nodes[node].record {
            Some(r) => r,
            None => {
                self.records.push(BTreeMap::new());
                self.nodes[node].record = Some(self.records.len() - 1);
                self.records.len() - 1
            }
        };
        self.records[record].insert(key.to_string(), value);
    }

    /// The database file's bytes.
    pub fn to_bytes(&self) -> anyhow::Result<Vec<u8>> {
        // Data section: each distinct record once.
        let mut data = Vec::new();
        let mut offsets = Vec::with_capacity(self.records.len());
        let mut seen: HashMap<Vec<u8>, usize> = HashMap::new();
        for record in &self.records {
            let mut encoded = Vec::new();
            encode(&MmdbValue::Map(record.clone()), &mut encoded);
            let offset = *seen.entry(encoded).or_insert_with_key(|bytes| {
                let at = data.len();
                data.extend_from_slice(bytes);
                at
            });
            offsets.push(offset);
        }

        // Search tree: the trie with every record pushed down to the leaves it covers.
        let mut tree: Vec<[Slot; 2]> = Vec::new();
        let root = &self.nodes[0];
        if root.children == [0, 0] {
            let slot = root.record.map_or(Slot::Empty, Slot::Data);
            tree.push([slot, slot]);
        } else {
            self.build(0, None, &mut tree);
        }
        let node_count = tree.len();
        let value = |slot: Slot| -> u64 {
            match slot {
                Slot::Empty => node_count as u64,
                Slot::Node(n) => n as u64,
                Slot::Data(r) => (node_count + 16 + offsets[r]) as u64,
            }
        };
        let largest = (node_count + 16 + data.len()) as u64;
        let record_size = match self.record_size {
            Some(size @ (24 | 28 | 32)) => size,
            Some(other) => bail!("record size {other} is not one of 24, 28 or 32"),
            None if largest < 1 << 24 => 24,
            None if largest < 1 << 28 => 28,
            None => 32,
        };
        if largest >= 1u64 << record_size {
            bail!("{largest} does not fit {record_size}-bit records: the database is too large");
        }

        let mut out =
            Vec::with_capacity(node_count * usize::from(record_size) / 4 + 16 + data.len() + 256);
        for [left, right] in &tree {
            let (l, r) = (value(*left), value(*right));
            match record_size {
                24 => {
                    out.extend_from_slice(&l.to_be_bytes()[5..]);
                    out.extend_from_slice(&r.to_be_bytes()[5..]);
                }
                28 => {
                    out.extend_from_slice(&l.to_be_bytes()[5..]);
                    out.push((((l >> 24) & 0x0f) << 4 | ((r >> 24) & 0x0f)) as u8);
                    out.extend_from_slice(&r.to_be_bytes()[5..]);
                }
                _ => {
                    out.extend_from_slice(&(l as u32).to_be_bytes());
                    out.extend_from_slice(&(r as u32).to_be_bytes());
                }
            }
        }
        out.extend_from_slice(&[0u8; 16]);
        out.extend_from_slice(&data);

        out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
        let metadata = BTreeMap::from([
            ("binary_format_major_version".to_string(), MmdbValue::U16(2)),
            ("binary_format_minor_version".to_string(), MmdbValue::U16(0)),
            ("build_epoch".to_string(), MmdbValue::U64(self.build_epoch)),
            ("database_type".to_string(), MmdbValue::from(self.database_type.as_str())),
            (
                "description".to_string(),
                MmdbValue::Map(BTreeMap::from([(
                    "en".to_string(),
                    MmdbValue::from(self.description.as_str()),
                )])),
            ),
            ("ip_version".to_string(), MmdbValue::U16(6)),
            ("languages".to_string(), MmdbValue::Array(vec![MmdbValue::from("en")])),
            (
                "node_count".to_string(),
                MmdbValue::U32(u32::try_from(node_count).context("too many nodes")?),
            ),
            ("record_size".to_string(), MmdbValue::U16(record_size)),
        ]);
        encode(&MmdbValue::Map(metadata), &mut out);
        Ok(out)
    }

    /// Writes the database to `path` (through a temporary file and a rename, so a reader never
    /// sees half a file).
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let bytes = self.to_bytes()?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        std::fs::write(&tmp, &bytes)
            .with_context(|| format!("writing {}", Path::new(&tmp).display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))?;
        Ok(())
    }

    /// Numbers the tree nodes depth-first (root 0) and returns the slot for trie node `at`,
    /// which has children; `inherited` is the record of the nearest covering network.
    fn build(&self, at: usize, inherited: Option<usize>, tree: &mut Vec<[Slot; 2]>) -> Slot {
        let node = &self.nodes[at];
        let effective = node.record.or(inherited);
        let me = tree.len();
        tree.push([Slot::Empty, Slot::Empty]);
        for bit in 0..2 {
            let child = node.children[bit] as usize;
            let slot = if child == 0 {
                effective.map_or(Slot::Empty, Slot::Data)
            } else if self.nodes[child].children == [0, 0] {
                self.nodes[child].record.or(effective).map_or(Slot::Empty, Slot::Data)
            } else {
                self.build(child, effective, tree)
            };
            tree[me][bit] = slot;
        }
        Slot::Node(me)
    }
}

/// The network as (address bits left-aligned in 128, prefix length in the IPv6 tree).
fn tree_key(net: IpNet) -> (u128, u8) {
    match net.trunc() {
        IpNet::V4(v4) => (u128::from(u32::from(v4.addr())), 96 + v4.prefix_len()),
        IpNet::V6(v6) => (u128::from(v6.addr()), v6.prefix_len()),
    }
}

/// Control byte(s): type (extended types 8+ after it) and payload size.
fn control(type_num: u8, size: usize, out: &mut Vec<u8>) {
    let (size_bits, extra): (u8, Vec<u8>) = if size < 29 {
        (size as u8, vec![])
    } else if size < 29 + 256 {
        (29, vec![(size - 29) as u8])
    } else if size < 285 + 65_536 {
        (30, ((size - 285) as u16).to_be_bytes().to_vec())
    } else {
        (31, ((size - 65_821) as u32).to_be_bytes()[1..].to_vec())
    };
    if type_num <= 7 {
        out.push(type_num << 5 | size_bits);
    } else {
        out.push(size_bits);
        out.push(type_num - 7);
    }
    out.extend_from_slice(&extra);
}

fn encode_uint(type_num: u8, n: u64, out: &mut Vec<u8>) {
    let bytes = n.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    control(type_num, 8 - skip, out);
    out.extend_from_slice(&bytes[skip..]);
}

fn encode(value: &MmdbValue, out: &mut Vec<u8>) {
    match value {
        MmdbValue::String(s) => {
            control(2, s.len(), out);
            out.extend_from_slice(s.as_bytes());
        }
        MmdbValue::U16(n) => encode_uint(5, u64::from(*n), out),
        MmdbValue::U32(n) => encode_uint(6, u64::from(*n), out),
        MmdbValue::U64(n) => encode_uint(9, *n, out),
        MmdbValue::Bool(b) => control(14, usize::from(*b), out),
        MmdbValue::Map(map) => {
            control(7, map.len(), out);
            for (k, v) in map {
                encode(&MmdbValue::String(k.clone()), out);
                encode(v, out);
            }
        }
        MmdbValue::Array(items) => {
            control(11, items.len(), out);
            for v in items {
                encode(v, out);
            }
        }
    }
}

/// One attribution of the lab's test GeoIP databases: (networks, ISO country code, ASN,
/// AS organisation).
pub type Geo<'a> = (&'a [&'a str], &'a str, u32, &'a str);

/// A country and an ASN database written for a lab run.
#[derive(Debug, Clone)]
pub struct GeoDatabases {
    pub country: PathBuf,
    pub asn: PathBuf,
}

impl GeoDatabases {
    /// Writes `<stem>country.mmdb` and `<stem>asn.mmdb` (GeoLite2-Country and GeoLite2-ASN
    /// layouts) into `dir`, each network of `geo` attributed as given.
    pub fn write(dir: &Path, stem: &str, geo: &[Geo]) -> anyhow::Result<GeoDatabases> {
        let mut country = MmdbWriter::new("GeoLite2-Country");
        let mut asn = MmdbWriter::new("GeoLite2-ASN");
        for (nets, code, number, org) in geo {
            for n in *nets {
                let net: IpNet = n.parse().with_context(|| format!("network {n}"))?;
                country.insert_country(net, code);
                asn.insert_asn(net, *number, org);
            }
        }
        let dbs = GeoDatabases {
            country: dir.join(format!("{stem}country.mmdb")),
            asn: dir.join(format!("{stem}asn.mmdb")),
        };
        country.write(&dbs.country)?;
        asn.write(&dbs.asn)?;
        Ok(dbs)
    }

    /// The agent config's `geoip:` block naming them.
    pub fn config_yaml(&self) -> String {
        format!(
            "geoip:\n  country_database: {}\n  asn_database: {}\n",
            self.country.display(),
            self.asn.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use maxminddb::{Reader, geoip2};

    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn country(reader: &Reader<Vec<u8>>, addr: &str) -> Option<String> {
        let result = reader.lookup(ip(addr)).unwrap();
        result
            .decode::<geoip2::Country>()
            .unwrap()
            .and_then(|c| c.country.iso_code.map(str::to_string))
    }

    fn read(writer: &MmdbWriter) -> Reader<Vec<u8>> {
        let reader = Reader::from_source(writer.to_bytes().unwrap()).unwrap();
        reader.verify().unwrap();
        reader
    }

    fn countries() -> MmdbWriter {
        let mut w = MmdbWriter::new("GeoLite2-Country");
        // More specific first, less specific after: order must not matter.
        w.insert_country(net("10.77.3.0/24"), "CN");
        w.insert_country(net("10.0.0.0/8"), "US");
        w.insert_country(net("10.77.0.0/16"), "DE");
        w.insert_country(net("198.51.100.7/32"), "NL");
        w.insert_country(net("2001:db8:1::/48"), "FR");
        w.insert_country(net("2001:db8::/32"), "JP");
        w.insert_country(net("fd77:3::/32"), "CN");
        w
    }

    #[test]
    fn countries_read_back_longest_prefix_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("country.mmdb");
        countries().write(&path).unwrap();
        let reader = Reader::open_readfile(&path).unwrap();
        reader.verify().unwrap();
        let m = reader.metadata();
        assert_eq!(m.database_type, "GeoLite2-Country");
        assert_eq!(m.ip_version, 6);
        assert_eq!(m.record_size, 24);
        assert_eq!(m.binary_format_major_version, 2);
        assert_eq!(m.binary_format_minor_version, 0);
        assert_eq!(m.languages, vec!["en".to_string()]);
        assert!(m.description["en"].contains("GeoLite2-Country"));

        assert_eq!(country(&reader, "10.77.3.2").as_deref(), Some("CN"));
        assert_eq!(country(&reader, "10.77.4.2").as_deref(), Some("DE"));
        assert_eq!(country(&reader, "10.1.2.3").as_deref(), Some("US"));
        assert_eq!(country(&reader, "198.51.100.7").as_deref(), Some("NL"));
        assert_eq!(country(&reader, "2001:db8:1::5").as_deref(), Some("FR"));
        assert_eq!(country(&reader, "2001:db8:2::5").as_deref(), Some("JP"));
        assert_eq!(country(&reader, "fd77:3::2").as_deref(), Some("CN"));
        // Misses.
        assert_eq!(country(&reader, "198.51.100.8"), None);
        assert_eq!(country(&reader, "11.0.0.1"), None);
        assert_eq!(country(&reader, "2001:db9::1"), None);
        assert!(!reader.lookup(ip("192.0.2.1")).unwrap().has_data());
        // The matched network is the leaf of the search tree.
        let found = reader.lookup(ip("10.77.3.2")).unwrap().network().unwrap();
        assert_eq!(found.to_string(), "10.77.3.0/24");
        // A covering network is split around the more specific one, as in real databases.
        let found = reader.lookup(ip("10.77.200.1")).unwrap().network().unwrap();
        assert_eq!(found.to_string(), "10.77.128.0/17");
    }

    #[test]
    fn asn_records_and_shared_data() {
        let mut w = MmdbWriter::new("GeoLite2-ASN");
        w.insert_asn(net("10.77.3.0/24"), 4808, "China Unicom Beijing Province Network");
        w.insert_asn(net("10.77.5.0/24"), 4808, "China Unicom Beijing Province Network");
        w.insert_asn(net("fd77:3::/32"), 4294967295, "Big Number Networks");
        let bytes = w.to_bytes().unwrap();
        // One copy of the repeated record.
        let needle = b"China Unicom Beijing Province Network";
        assert_eq!(bytes.windows(needle.len()).filter(|w| w == needle).count(), 1);
        let reader = read(&w);
        let asn = |addr: &str| {
            let r = reader.lookup(ip(addr)).unwrap();
            r.decode::<geoip2::Asn>().unwrap().map(|a| {
                (
                    a.autonomous_system_number.unwrap(),
                    a.autonomous_system_organization.unwrap().to_string(),
                )
            })
        };
        assert_eq!(asn("10.77.3.9"), Some((4808, "China Unicom Beijing Province Network".into())));
        assert_eq!(asn("10.77.5.9"), Some((4808, "China Unicom Beijing Province Network".into())));
        assert_eq!(asn("fd77:3::1"), Some((4294967295, "Big Number Networks".into())));
        assert_eq!(asn("10.77.4.9"), None);
    }

    #[test]
    fn combined_records_and_custom_fields() {
        let mut w = MmdbWriter::new("ip-location-db-country");
        w.insert(net("203.0.113.0/24"), "country_code", MmdbValue::from("AU"));
        w.insert_asn(net("203.0.113.0/24"), 64_500, "Example");
        w.insert_country(net("203.0.113.0/24"), "AU");
        w.insert(net("203.0.113.0/25"), "flag", MmdbValue::Bool(true));
        w.insert(net("203.0.113.0/25"), "big", MmdbValue::U64(1 << 40));
        w.insert(
            net("203.0.113.0/25"),
            "list",
            MmdbValue::Array(vec![MmdbValue::U16(7), "x".into()]),
        );
        let reader = read(&w);
        let r = reader.lookup(ip("203.0.113.200")).unwrap();
        let code: Option<String> = r.decode_path(&maxminddb::path!["country_code"]).unwrap();
        assert_eq!(code.as_deref(), Some("AU"));
        let asn: Option<u32> =
            r.decode_path(&maxminddb::path!["autonomous_system_number"]).unwrap();
        assert_eq!(asn, Some(64_500));
        let iso: Option<String> = r.decode_path(&maxminddb::path!["country", "iso_code"]).unwrap();
        assert_eq!(iso.as_deref(), Some("AU"));
        // The /25 has only its own fields: a record is per network, not inherited.
        let r = reader.lookup(ip("203.0.113.5")).unwrap();
        assert_eq!(r.decode_path::<bool>(&maxminddb::path!["flag"]).unwrap(), Some(true));
        assert_eq!(r.decode_path::<u64>(&maxminddb::path!["big"]).unwrap(), Some(1 << 40));
        assert_eq!(r.decode_path::<u16>(&maxminddb::path!["list", 0]).unwrap(), Some(7));
        assert_eq!(r.decode_path::<String>(&maxminddb::path!["country_code"]).unwrap(), None);
    }

    #[test]
    fn all_record_sizes_and_long_strings() {
        for size in [24, 28, 32] {
            let mut w = countries();
            w.set_record_size(size);
            w.set_build_epoch(1_700_000_000);
            // Strings past every size class of the control byte.
            for (i, len) in [28usize, 29, 284, 285, 65_820, 65_821, 70_000].into_iter().enumerate()
            {
                let name = "x".repeat(len);
                w.insert_asn(net(&format!("192.0.2.{i}/32")), i as u32, &name);
            }
            let reader = read(&w);
            assert_eq!(reader.metadata().record_size, size);
            assert_eq!(reader.metadata().build_epoch, 1_700_000_000);
            assert_eq!(country(&reader, "10.77.3.2").as_deref(), Some("CN"), "record size {size}");
            assert_eq!(
                country(&reader, "2001:db8:1::5").as_deref(),
                Some("FR"),
                "record size {size}"
            );
            for (i, len) in [28usize, 29, 284, 285, 65_820, 65_821, 70_000].into_iter().enumerate()
            {
                let r = reader.lookup(ip(&format!("192.0.2.{i}"))).unwrap();
                let asn = r.decode::<geoip2::Asn>().unwrap().unwrap();
                assert_eq!(asn.autonomous_system_number, Some(i as u32));
                assert_eq!(
                    asn.autonomous_system_organization.map(str::len),
                    Some(len),
                    "record size {size}"
                );
            }
        }
        let mut w = countries();
        w.set_record_size(16);
        assert!(w.to_bytes().is_err());
    }

    #[test]
    fn large_data_section_picks_28_bit_records() {
        let mut w = MmdbWriter::new("GeoLite2-ASN");
        let org = "o".repeat(70_000);
        for i in 0..250u32 {
            let net = IpNet::from(
                ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(0x0a00_0000 + (i << 8)), 24).unwrap(),
            );
            w.insert_asn(net, i, &format!("{i}{org}"));
        }
        let reader = read(&w);
        assert_eq!(reader.metadata().record_size, 28);
        let r = reader.lookup(ip("10.0.249.1")).unwrap().decode::<geoip2::Asn>().unwrap().unwrap();
        assert_eq!(r.autonomous_system_number, Some(249));
        assert!(r.autonomous_system_organization.unwrap().starts_with("249o"));
    }

    #[test]
    fn empty_and_whole_space_databases() {
        let reader = read(&MmdbWriter::new("Empty"));
        assert!(!reader.lookup(ip("10.0.0.1")).unwrap().has_data());
        assert!(!reader.lookup(ip("2001:db8::1")).unwrap().has_data());
        let mut w = MmdbWriter::new("Everything");
        w.insert_country(net("::/0"), "ZZ");
        let reader = read(&w);
        assert_eq!(country(&reader, "10.0.0.1").as_deref(), Some("ZZ"));
        assert_eq!(country(&reader, "2001:db8::1").as_deref(), Some("ZZ"));
    }
}
