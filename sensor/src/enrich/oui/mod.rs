//! Device vendors from the MAC address's organizationally unique identifier (OUI).
//!
//! Reads the IEEE registry as Debian's `ieee-data` package ships it (`oui.csv`, `mam.csv`,
//! `oui36.csv`, `iab.csv`, or the `.txt` forms) and Wireshark's `manuf` file, recognized by
//! their content. Assignments come in three sizes: MA-L (/24), MA-M (/28) and MA-S and IAB
//! (/36); the longest matching prefix names the vendor, so a small company holding a /36
//! inside an IEEE-owned /24 is named rather than "IEEE Registration Authority".
//!
//! A locally administered address (bit 0x02 of the first byte) is not from any registry:
//! phones and laptops make one up per network for privacy. Those are [`Vendor::Randomized`].
//!
//! Here the database and its lookups; `table` keeps the prefixes compactly, `formats` reads
//! the registry files.

mod formats;
mod table;

use std::{
    fmt,
    path::{Path, PathBuf},
};

#[cfg(test)]
use self::table::Key as _;
use self::{
    formats::{Format, detect, parse_ieee_csv, parse_ieee_txt, parse_manuf},
    table::{Interner, Names, Staged, Table, merge_into},
};
use crate::{enrich::error::EnrichError, types::Mac};

/// The registry files of Debian's `ieee-data` package (`apt-get install ieee-data`).
pub const DEFAULT_OUI_PATHS: &[&str] = &[
    "/usr/share/ieee-data/oui.csv",
    "/usr/share/ieee-data/mam.csv",
    "/usr/share/ieee-data/oui36.csv",
    "/usr/share/ieee-data/iab.csv",
];

/// Who made a device's network interface, as far as its MAC address tells.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Vendor {
    /// The organization the prefix is registered to, as the registry spells it.
    Known(String),
    /// A locally administered (random, private) address: no vendor can be known.
    Randomized,
    /// A universally administered address whose prefix is in no loaded registry file.
    Unknown,
}

impl Vendor {
    /// The vendor as a label value: its name, `randomized`, or empty when unknown.
    pub fn label(&self) -> String {
        match self {
            Vendor::Known(name) => name.clone(),
            Vendor::Randomized => "randomized".into(),
            Vendor::Unknown => String::new(),
        }
    }
}

impl fmt::Display for Vendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

/// Whether the address is locally administered (made up by the device, not assigned by a
/// vendor): bit 0x02 of the first byte.
pub fn is_locally_administered(mac: &Mac) -> bool {
    mac[0] & 0x02 != 0
}

/// MAC prefix → organization, for /24, /28 and /36 (and any other length a `manuf` file
/// uses), looked up longest first.
///
/// Sorted arrays searched by bisection rather than hash maps, and each organization name
/// stored once: the whole IEEE registry (~46,000 prefixes, ~30,000 names) takes about
/// 1.2 MB, where maps of shared strings took 4.6 MB.
#[derive(Clone, Debug, Default)]
pub struct OuiDb {
    /// Prefixes of more than 32 bits (the /36s), one table per length, longest first.
    wide: Vec<Table<[u32; 2]>>,
    /// Prefixes of up to 32 bits (the /24s and /28s), one table per length, longest first;
    /// all shorter than those of `wide`, so searched after them.
    narrow: Vec<Table<u32>>,
    names: Names,
    files: Vec<PathBuf>,
}

impl OuiDb {
    /// An empty database: every universally administered address is [`Vendor::Unknown`].
    pub fn empty() -> OuiDb {
        OuiDb::default()
    }

    /// Reads one registry file (IEEE CSV or TXT, or Wireshark `manuf`).
    pub fn load(path: &Path) -> Result<OuiDb, EnrichError> {
        let mut db = OuiDb::empty();
        db.add_file(path)?;
        Ok(db)
    }

    /// Reads several registry files into one database; a prefix in a later file replaces the
    /// same prefix from an earlier one.
    pub fn load_all<P: AsRef<Path>>(paths: &[P]) -> Result<OuiDb, EnrichError> {
        let mut db = OuiDb::empty();
        for path in paths {
            db.add_file(path.as_ref())?;
        }
        Ok(db)
    }

    /// Adds a registry file's entries; returns how many it had.
    pub fn add_file(&mut self, path: &Path) -> Result<usize, EnrichError> {
        let bytes = std::fs::read(path)
            .map_err(|error| EnrichError::OuiRead { path: path.to_owned(), error })?;
        let text = String::from_utf8_lossy(&bytes);
        let count = self.add_text(&text, path)?;
        self.files.push(path.to_owned());
        Ok(count)
    }

    /// Adds a registry file's entries from its text; `origin` names it in errors. A prefix
    /// given again, in this text or an earlier one, now names the later organization. A text
    /// with an error adds nothing.
    pub fn add_text(&mut self, text: &str, origin: &Path) -> Result<usize, EnrichError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        // Names are stored as they are read, each once; the prefixes wait in `staged` until
        // the whole text has parsed, so that an error leaves the tables as they were.
        let names_before = self.names.count();
        let mut interner = Interner::new(&self.names);
        let mut staged: Vec<Staged> = Vec::new();
        let mut add = |bits: u8, key: u64, name: &str| -> Result<(), EnrichError> {
            let id = interner.intern(&mut self.names, name)?;
            staged.push((bits, key, id));
            Ok(())
        };
        let parsed = match detect(text) {
            Some(Format::IeeeCsv) => parse_ieee_csv(text, &mut add),
            Some(Format::IeeeTxt) => parse_ieee_txt(text, &mut add),
            Some(Format::Manuf) => parse_manuf(text, &mut add),
            None => Err((1, EnrichError::OuiFormat)),
        };
        // Only needed while loading: kept, the index would add a quarter to the database.
        drop(interner);
        if let Err((line, problem)) = parsed {
            self.names.truncate(names_before);
            return Err(EnrichError::OuiLine {
                path: origin.to_owned(),
                line,
                problem: Box::new(problem),
            });
        }
        self.names.shrink_to_fit();
        let count = staged.len();
        self.merge(&staged);
        Ok(count)
    }

    /// Adds the prefixes of one text to their tables, the later of two equal ones winning.
    fn merge(&mut self, staged: &[Staged]) {
        // Bit n set: some prefix is n bits long (at most 48, as the parsers check).
        let lengths = staged.iter().fold(0u64, |set, &(bits, ..)| set | (1 << bits));
        for bits in (0..=48u8).filter(|bits| lengths & (1 << bits) != 0) {
            if bits > 32 {
                merge_into(&mut self.wide, bits, staged);
            } else {
                merge_into(&mut self.narrow, bits, staged);
            }
        }
    }

    /// Prefixes known, over all lengths.
    pub fn len(&self) -> usize {
        let wide: usize = self.wide.iter().map(|t| t.slots.len()).sum();
        let narrow: usize = self.narrow.iter().map(|t| t.slots.len()).sum();
        wide + narrow
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The files read, in order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The vendor of `mac`: the organization of its longest registered prefix.
    pub fn vendor(&self, mac: &Mac) -> Vendor {
        if is_locally_administered(mac) {
            return Vendor::Randomized;
        }
        match self.organization(mac) {
            Some(name) => Vendor::Known(name.to_string()),
            None => Vendor::Unknown,
        }
    }

    /// The registered organization of `mac`'s longest known prefix, whatever its
    /// administration bit.
    pub fn organization(&self, mac: &Mac) -> Option<&str> {
        let value = mac.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        let id = self
            .wide
            .iter()
            .find_map(|table| table.get(value))
            .or_else(|| self.narrow.iter().find_map(|table| table.get(value)))?;
        Some(self.names.get(id))
    }

    /// Every (bits, prefix, organization), longest prefixes first, each length by prefix.
    #[cfg(test)]
    fn entries(&self) -> impl Iterator<Item = (u8, u64, &str)> {
        let wide = self.wide.iter().flat_map(|t| {
            t.slots.iter().map(|&(key, id)| (t.bits, key.to_u64(), self.names.get(id)))
        });
        let narrow = self.narrow.iter().flat_map(|t| {
            t.slots.iter().map(|&(key, id)| (t.bits, key.to_u64(), self.names.get(id)))
        });
        wide.chain(narrow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/inventory").join(name)
    }

    fn known(s: &str) -> Vendor {
        Vendor::Known(s.into())
    }

    #[test]
    fn labels() {
        assert_eq!(known("Apple, Inc.").label(), "Apple, Inc.");
        assert_eq!(Vendor::Randomized.label(), "randomized");
        assert_eq!(Vendor::Unknown.label(), "");
    }

    #[test]
    fn ieee_csv_with_quotes_and_multiline_addresses() {
        let db = OuiDb::load(&data("oui.csv")).unwrap();
        assert_eq!(
            db.vendor(&[0x64, 0x09, 0x80, 0x12, 0x34, 0x56]),
            known("Xiaomi Communications Co Ltd")
        );
        assert_eq!(db.vendor(&[0x60, 0x8b, 0x0e, 0, 0, 1]), known("Apple, Inc."));
        // The entry after a quoted address spanning two lines.
        assert_eq!(db.vendor(&[0x00, 0x1e, 0xfc, 0, 0, 1]), known("JSC \"MASSA-K\""));
        assert_eq!(db.vendor(&[0x00, 0xd0, 0xef, 0, 0, 1]), known("IGT"), "names are trimmed");
        assert_eq!(db.vendor(&[0x00, 0x11, 0x22, 0, 0, 1]), Vendor::Unknown);
    }

    #[test]
    fn locally_administered_is_randomized_even_if_registered() {
        let db = OuiDb::load(&data("oui.csv")).unwrap();
        // 66:09:80 is 64:09:80 with the local bit set.
        assert_eq!(db.vendor(&[0x66, 0x09, 0x80, 0x12, 0x34, 0x56]), Vendor::Randomized);
        assert_eq!(OuiDb::empty().vendor(&[0xda, 0xa1, 0x19, 1, 2, 3]), Vendor::Randomized);
        assert_eq!(OuiDb::empty().vendor(&[0x64, 0x09, 0x80, 1, 2, 3]), Vendor::Unknown);
    }

    #[test]
    fn longest_prefix_over_several_files() {
        let db = OuiDb::load_all(&[data("oui.csv"), data("mam.csv"), data("oui36.csv")]).unwrap();
        // MA-S /36 inside the IEEE's own 70:B3:D5 /24.
        assert_eq!(db.vendor(&[0x70, 0xb3, 0xd5, 0xf2, 0xf1, 0x23]), known("TELEPLATFORMS"));
        assert_eq!(
            db.vendor(&[0x70, 0xb3, 0xd5, 0xf3, 0x00, 0x00]),
            known("IEEE Registration Authority")
        );
        // MA-M /28 inside 20:85:93.
        assert_eq!(db.vendor(&[0x20, 0x85, 0x93, 0xb1, 0x23, 0x45]), known("IOG Products LLC"));
        assert_eq!(
            db.vendor(&[0x20, 0x85, 0x93, 0xc1, 0x23, 0x45]),
            known("IEEE Registration Authority")
        );
        assert_eq!(db.len(), 8 + 2 + 2);
        assert_eq!(db.files().len(), 3);
    }

    #[test]
    fn ieee_txt_with_ranges() {
        let db = OuiDb::load(&data("oui.txt")).unwrap();
        assert_eq!(db.vendor(&[0x64, 0x09, 0x80, 1, 2, 3]), known("Xiaomi Communications Co Ltd"));
        assert_eq!(
            db.vendor(&[0x00, 0x22, 0x72, 1, 2, 3]),
            known("American Micro-Fuel Device Corp.")
        );
        // MA-M range 900000-9FFFFF and MA-S range F2F000-F2FFFF (CRLF lines).
        assert_eq!(db.vendor(&[0x74, 0x1a, 0xe0, 0x9a, 0, 0]), known("Private"));
        assert_eq!(db.vendor(&[0x74, 0x1a, 0xe0, 0xa0, 0, 0]), Vendor::Unknown);
        assert_eq!(db.vendor(&[0x70, 0xb3, 0xd5, 0xf2, 0xf9, 0x99]), known("TELEPLATFORMS"));
        assert_eq!(db.vendor(&[0x70, 0xb3, 0xd5, 0xf3, 0xf9, 0x99]), Vendor::Unknown);
        assert_eq!(db.len(), 4);
    }

    #[test]
    fn wireshark_manuf_with_masks() {
        let db = OuiDb::load(&data("manuf")).unwrap();
        assert_eq!(db.vendor(&[0x00, 0x00, 0x0c, 1, 2, 3]), known("Cisco Systems, Inc"));
        assert_eq!(db.vendor(&[0x64, 0x09, 0x80, 1, 2, 3]), known("Xiaomi Communications Co Ltd"));
        // /36 and /28 entries beat their /24.
        assert_eq!(
            db.vendor(&[0x00, 0x1b, 0xc5, 0x00, 0x01, 0x23]),
            known("Converging Systems Inc.")
        );
        assert_eq!(
            db.vendor(&[0x00, 0x1b, 0xc5, 0x00, 0x11, 0x23]),
            known("IEEE Registration Authority")
        );
        assert_eq!(db.vendor(&[0x20, 0x85, 0x93, 0xb0, 0, 1]), known("IOG Products LLC"));
        // No long name: the short one.
        assert_eq!(db.vendor(&[0x00, 0x00, 0x01, 0, 0, 1]), known("Xerox"));
        // Old style: long name in a comment.
        assert_eq!(db.vendor(&[0x00, 0x00, 0x02, 0, 0, 1]), known("XEROX CORPORATION"));
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = OuiDb::load(&data("bad-oui.csv")).unwrap_err().to_string();
        assert!(e.contains("bad-oui.csv:4:"), "{e}");
        assert!(e.contains("`64098G`"), "{e}");
        let e = OuiDb::load(&data("bad-manuf")).unwrap_err().to_string();
        assert!(e.contains("bad-manuf:3:"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("leases");
        std::fs::write(&other, "1700000000 aa:bb:cc:dd:ee:ff 10.0.0.2 phone *\n").unwrap();
        let e = OuiDb::load(&other).unwrap_err().to_string();
        assert!(e.contains("leases:1: not an OUI registry file"), "{e}");
        let e = OuiDb::load(&dir.path().join("missing.csv")).unwrap_err();
        assert!(format!("{e:#}").contains("missing.csv"), "{e:#}");
        let unterminated = dir.path().join("u.csv");
        std::fs::write(
            &unterminated,
            "Registry,Assignment,Organization Name,Organization Address\nMA-L,001122,\"Oops,x\n",
        )
        .unwrap();
        let e = OuiDb::load(&unterminated).unwrap_err().to_string();
        assert!(e.contains("u.csv:2: quoted field never closed"), "{e}");
    }

    /// The real registry from Debian's ieee-data, when installed (CI installs it).
    #[test]
    fn real_ieee_data() {
        let path = Path::new(DEFAULT_OUI_PATHS[0]);
        if !path.exists() {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{} is missing: CI must `apt-get install ieee-data`", path.display());
            }
            eprintln!(
                "SKIPPED real_ieee_data: {} not installed (apt-get install ieee-data)",
                path.display()
            );
            return;
        }
        let paths: Vec<PathBuf> =
            DEFAULT_OUI_PATHS.iter().map(PathBuf::from).filter(|p| p.exists()).collect();
        let db = OuiDb::load_all(&paths).unwrap();
        assert!(db.len() > 30_000, "{} prefixes", db.len());
        assert_eq!(
            db.vendor(&[0x64, 0x09, 0x80, 0xab, 0xcd, 0xef]),
            known("Xiaomi Communications Co Ltd")
        );
        assert_eq!(db.vendor(&[0x70, 0xb3, 0xd5, 0xf2, 0xf1, 0x23]), known("TELEPLATFORMS"));
        // The .txt forms of the same registries give the same answers (they drop the
        // quotes some names have in the CSV).
        let txt: Vec<PathBuf> =
            paths.iter().map(|p| p.with_extension("txt")).filter(|p| p.exists()).collect();
        if txt.len() == paths.len() {
            let from_txt = OuiDb::load_all(&txt).unwrap();
            assert_eq!(from_txt.len(), db.len());
            let unquoted = |s: &str| s.replace('"', "");
            for (csv, txt) in db.entries().zip(from_txt.entries()) {
                assert_eq!((csv.0, csv.1, unquoted(csv.2)), (txt.0, txt.1, unquoted(txt.2)));
            }
        }
    }

    fn add(db: &mut OuiDb, text: &str) -> usize {
        db.add_text(text, Path::new("test")).unwrap()
    }

    /// A `manuf` line for the `bits`-long prefix `key`.
    fn manuf_line(bits: u8, key: u64, name: &str) -> String {
        let mac = (key << (48 - bits)).to_be_bytes();
        let [a, b, c, d, e, f] = [mac[2], mac[3], mac[4], mac[5], mac[6], mac[7]];
        format!("{a:02X}:{b:02X}:{c:02X}:{d:02X}:{e:02X}:{f:02X}/{bits}\tShort\t{name}\n")
    }

    #[test]
    fn longest_prefix_wins_over_lengths_added_in_any_order() {
        let mut db = OuiDb::empty();
        // Lengths come in no order, on either side of 32 bits (wide and narrow tables).
        add(
            &mut db,
            "00:1B:C5:00:10:00/36\tSmall\tSmall Co\n\
             00:1B:C5:00:00:01/48\tOne\tOne Address\n",
        );
        add(&mut db, "00:1B:C5\tIEEE\tIEEE Registration Authority\n");
        add(
            &mut db,
            "00:1B:C5:00:00:00/33\tHalf\tHalf Block\n\
             00:1B:C5:00:00:00/28\tBlock\tBlock Of 28\n\
             00:1B:C5:00:00:00/32\tQuarter\tBlock Of 32\n",
        );
        let wide: Vec<u8> = db.wide.iter().map(|t| t.bits).collect();
        let narrow: Vec<u8> = db.narrow.iter().map(|t| t.bits).collect();
        assert_eq!((wide, narrow), (vec![48, 36, 33], vec![32, 28, 24]));
        assert_eq!(db.len(), 6);
        let cases: &[([u8; 6], Vendor)] = &[
            ([0x00, 0x1b, 0xc5, 0x00, 0x00, 0x01], known("One Address")),
            ([0x00, 0x1b, 0xc5, 0x00, 0x00, 0x02], known("Half Block")),
            // The /36 inside the /33 inside the /32 inside the /28 inside the /24.
            ([0x00, 0x1b, 0xc5, 0x00, 0x10, 0x00], known("Small Co")),
            ([0x00, 0x1b, 0xc5, 0x00, 0x1f, 0xff], known("Small Co")),
            ([0x00, 0x1b, 0xc5, 0x00, 0x20, 0x00], known("Half Block")),
            ([0x00, 0x1b, 0xc5, 0x00, 0x80, 0x00], known("Block Of 32")),
            ([0x00, 0x1b, 0xc5, 0x01, 0x00, 0x00], known("Block Of 28")),
            ([0x00, 0x1b, 0xc5, 0x10, 0x00, 0x00], known("IEEE Registration Authority")),
            ([0x00, 0x1b, 0xc5, 0xff, 0xff, 0xff], known("IEEE Registration Authority")),
            ([0x00, 0x1b, 0xc4, 0xff, 0xff, 0xff], Vendor::Unknown),
            ([0x00, 0x1b, 0xc6, 0x00, 0x00, 0x00], Vendor::Unknown),
            ([0x00, 0x00, 0x00, 0x00, 0x00, 0x00], Vendor::Unknown),
            ([0xfc, 0xff, 0xff, 0xff, 0xff, 0xff], Vendor::Unknown),
            // 00:1B:C5:00:00:01 with the local bit: random, whatever is registered.
            ([0x02, 0x1b, 0xc5, 0x00, 0x00, 0x01], Vendor::Randomized),
        ];
        for (mac, vendor) in cases {
            assert_eq!(&db.vendor(mac), vendor, "{mac:02x?}");
        }
        assert_eq!(OuiDb::empty().organization(&[0; 6]), None);
        // What the two slot sizes are for.
        assert_eq!(size_of::<(u32, u32)>(), 8);
        assert_eq!(size_of::<([u32; 2], u32)>(), 12);
    }

    #[test]
    fn a_prefix_given_again_names_the_later_organization() {
        let header = "Registry,Assignment,Organization Name,Organization Address\n";
        let mut db = OuiDb::empty();
        let first = format!(
            "{header}MA-L,001122,First,x\nMA-L,0011AA,Kept,x\nMA-M,0011220,Longer,x\n\
             MA-L,001122,Second,x\nMA-L,001122,Third,x\n"
        );
        // Every entry is counted, the repeated prefix once in the database.
        assert_eq!(add(&mut db, &first), 5);
        assert_eq!(db.len(), 3);
        assert_eq!(db.organization(&[0x00, 0x11, 0x22, 0x10, 0, 0]), Some("Third"));
        assert_eq!(db.organization(&[0x00, 0x11, 0x22, 0x00, 0, 0]), Some("Longer"));
        assert_eq!(db.organization(&[0x00, 0x11, 0xaa, 0, 0, 0]), Some("Kept"));
        // A later text replaces the prefix again and leaves the others; names it shares
        // with the first are not stored twice.
        let names = db.names.count();
        add(&mut db, &format!("{header}MA-L,001122,Kept,x\n"));
        assert_eq!(db.len(), 3);
        assert_eq!(db.names.count(), names);
        assert_eq!(db.organization(&[0x00, 0x11, 0x22, 0x10, 0, 0]), Some("Kept"));
        assert_eq!(db.organization(&[0x00, 0x11, 0x22, 0x00, 0, 0]), Some("Longer"));
        assert_eq!(db.organization(&[0x00, 0x11, 0xaa, 0, 0, 0]), Some("Kept"));
    }

    #[test]
    fn a_bad_text_adds_nothing() {
        let mut db = OuiDb::load(&data("oui.csv")).unwrap();
        let before: Vec<(u8, u64, String)> =
            db.entries().map(|(b, k, n)| (b, k, n.to_string())).collect();
        let (names, bytes) = (db.names.count(), db.names.text.len());
        let bad = "Registry,Assignment,Organization Name,Organization Address\n\
                   MA-L,AABBCC,Fresh Name,x\nMA-L,640980,Replaced,x\nMA-L,64098G,Bad,x\n";
        let e = db.add_text(bad, Path::new("bad")).unwrap_err().to_string();
        assert!(e.starts_with("bad:4:"), "{e}");
        let after: Vec<(u8, u64, String)> =
            db.entries().map(|(b, k, n)| (b, k, n.to_string())).collect();
        assert_eq!(after, before);
        assert_eq!((db.names.count(), db.names.text.len()), (names, bytes));
        assert_eq!(db.vendor(&[0xaa, 0xbb, 0xcc, 0, 0, 0]), Vendor::Randomized);
        assert_eq!(db.organization(&[0xaa, 0xbb, 0xcc, 0, 0, 0]), None);
        // And the database still takes good ones after.
        add(&mut db, "AA:BB:CC\tFresh\tFresh Name\n");
        assert_eq!(db.organization(&[0xaa, 0xbb, 0xcc, 0, 0, 0]), Some("Fresh Name"));
        assert_eq!(db.names.count(), names + 1);
    }

    /// Against a map of (bits, prefix) → name, filled in order, looked up longest first:
    /// the structure this one replaced.
    #[test]
    fn matches_a_map_of_every_length() {
        let mut rng = fastrand::Rng::with_seed(2024);
        let lengths = [8, 24, 28, 31, 32, 33, 36, 40, 48];
        // Few /24s, so that prefixes nest and repeat.
        let ouis = [0x001bc5u64, 0x70b3d5, 0x8c1f64, 0xfcffaa];
        let mut model: std::collections::HashMap<(u8, u64), String> = Default::default();
        let mut db = OuiDb::empty();
        for _ in 0..8 {
            let mut text = String::new();
            for _ in 0..rng.usize(1..300) {
                let bits: u8 = lengths[rng.usize(..lengths.len())];
                let mac = (ouis[rng.usize(..ouis.len())] << 24) | (rng.u64(..1 << 24) & 0xf0f00f);
                let key = mac >> (48 - bits);
                let name = format!("Org {}", rng.u32(..40));
                text.push_str(&manuf_line(bits, key, &name));
                model.insert((bits, key), name);
            }
            add(&mut db, &text);
        }
        assert_eq!(db.len(), model.len());
        assert!(db.names.count() <= 40);
        let mut won = std::collections::BTreeSet::new();
        for _ in 0..20_000 {
            // Mostly where the prefixes are dense, some between them, some in other /24s.
            let mask = if rng.bool() { 0xf0f00f } else { 0xffffff };
            let mut mac = (ouis[rng.usize(..ouis.len())] << 24) | (rng.u64(..1 << 24) & mask);
            if rng.u8(..8) == 0 {
                mac ^= rng.u64(1..1 << 16) << 24;
            }
            let bytes = mac.to_be_bytes();
            let mac: Mac = [bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7]];
            let value = mac.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
            let expected = (1..=48u8).rev().find_map(|bits| {
                let name = model.get(&(bits, value >> (48 - bits)))?;
                Some((bits, name.as_str()))
            });
            if let Some((bits, _)) = expected {
                won.insert(bits);
            }
            assert_eq!(db.organization(&mac), expected.map(|(_, name)| name), "{mac:02x?}");
        }
        assert_eq!(won.len(), lengths.len(), "every length named some address: {won:?}");
        // Every length sorted and without repeats, for the bisection.
        for (a, b) in db.entries().zip(db.entries().skip(1)) {
            assert!(a.0 > b.0 || (a.0 == b.0 && a.1 < b.1), "{a:?} then {b:?}");
        }
    }
}
