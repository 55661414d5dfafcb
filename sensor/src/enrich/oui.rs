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

use std::{
    collections::{HashMap, HashSet},
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context as _;

use crate::accounting::Mac;

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
#[derive(Clone, Debug, Default)]
pub struct OuiDb {
    /// One table per prefix length, longest first. Keys are the prefix's top bits.
    tables: Vec<(u8, HashMap<u64, Arc<str>>)>,
    /// Organization names are shared between their prefixes (Apple alone has ~1,000).
    names: HashSet<Arc<str>>,
    files: Vec<PathBuf>,
}

impl OuiDb {
    /// An empty database: every universally administered address is [`Vendor::Unknown`].
    pub fn empty() -> OuiDb {
        OuiDb::default()
    }

    /// Reads one registry file (IEEE CSV or TXT, or Wireshark `manuf`).
    pub fn load(path: &Path) -> anyhow::Result<OuiDb> {
        let mut db = OuiDb::empty();
        db.add_file(path)?;
        Ok(db)
    }

    /// Reads several registry files into one database; a prefix in a later file replaces the
    /// same prefix from an earlier one.
    pub fn load_all<P: AsRef<Path>>(paths: &[P]) -> anyhow::Result<OuiDb> {
        let mut db = OuiDb::empty();
        for path in paths {
            db.add_file(path.as_ref())?;
        }
        Ok(db)
    }

    /// Adds a registry file's entries; returns how many it had.
    pub fn add_file(&mut self, path: &Path) -> anyhow::Result<usize> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read OUI database {}", path.display()))?;
        let text = String::from_utf8_lossy(&bytes);
        let count = self.add_text(&text, path)?;
        self.files.push(path.to_owned());
        Ok(count)
    }

    /// Adds a registry file's entries from its text; `origin` names it in errors.
    pub fn add_text(&mut self, text: &str, origin: &Path) -> anyhow::Result<usize> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut entries = Vec::new();
        match detect(text) {
            Some(Format::IeeeCsv) => parse_ieee_csv(text, &mut entries),
            Some(Format::IeeeTxt) => parse_ieee_txt(text, &mut entries),
            Some(Format::Manuf) => parse_manuf(text, &mut entries),
            None => Err((
                1,
                "not an OUI registry file: expected the IEEE's oui.csv/mam.csv/oui36.csv \
                 (header `Registry,Assignment,Organization Name,Organization Address`), \
                 oui.txt (`XX-XX-XX   (hex)  Organization` lines) or Wireshark's manuf \
                 (`00:00:0C<TAB>Cisco<TAB>Cisco Systems, Inc` lines)"
                    .to_string(),
            )),
        }
        .map_err(|(line, message)| anyhow::anyhow!("{}:{line}: {message}", origin.display()))?;
        let count = entries.len();
        for (bits, key, name) in entries {
            self.insert(bits, key, &name);
        }
        Ok(count)
    }

    fn insert(&mut self, bits: u8, key: u64, name: &str) {
        let name = match self.names.get(name) {
            Some(shared) => shared.clone(),
            None => {
                let shared: Arc<str> = Arc::from(name);
                self.names.insert(shared.clone());
                shared
            }
        };
        let i = match self.tables.iter().position(|(b, _)| *b <= bits) {
            Some(i) if self.tables[i].0 == bits => i,
            Some(i) => {
                self.tables.insert(i, (bits, HashMap::new()));
                i
            }
            None => {
                self.tables.push((bits, HashMap::new()));
                self.tables.len() - 1
            }
        };
        self.tables[i].1.insert(key, name);
    }

    /// Prefixes known, over all lengths.
    pub fn len(&self) -> usize {
        self.tables.iter().map(|(_, t)| t.len()).sum()
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
        self.tables
            .iter()
            .find_map(|(bits, table)| table.get(&(value >> (48 - u32::from(*bits)))))
            .map(|name| &**name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    IeeeCsv,
    IeeeTxt,
    Manuf,
}

/// (prefix length in bits, prefix value, organization)
type Entry = (u8, u64, String);
/// (1-based line, message)
type LineError = (usize, String);

fn detect(text: &str) -> Option<Format> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.clone().next()?;
    if first.starts_with("Registry,Assignment") {
        return Some(Format::IeeeCsv);
    }
    if lines
        .clone()
        .take(50)
        .any(|l| l.contains("(hex)") || l.contains("(base 16)"))
    {
        return Some(Format::IeeeTxt);
    }
    let data = lines.find(|l| !l.starts_with('#'))?;
    parse_manuf_line(data).ok().map(|_| Format::Manuf)
}

/// Hex digits (an IEEE `Assignment`, 6, 7 or 9 of them) as (bits, value).
fn parse_hex_prefix(s: &str) -> Option<(u8, u64)> {
    if s.is_empty() || s.len() > 12 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(((s.len() * 4) as u8, u64::from_str_radix(s, 16).ok()?))
}

fn parse_ieee_csv(text: &str, out: &mut Vec<Entry>) -> Result<(), LineError> {
    let mut header = true;
    for_each_csv_record(text, |line, fields| {
        if std::mem::take(&mut header) {
            return Ok(());
        }
        if fields.len() < 3 {
            return Err((
                line,
                format!(
                    "expected `Registry,Assignment,Organization Name,...`, found {} field(s)",
                    fields.len()
                ),
            ));
        }
        let assignment = fields[1].trim();
        let (bits, value) = parse_hex_prefix(assignment)
            .filter(|(bits, _)| (24..=48).contains(bits))
            .ok_or_else(|| {
                (
                    line,
                    format!("`{assignment}` is not a MAC prefix (6, 7 or 9 hex digits)"),
                )
            })?;
        let name = fields[2].trim();
        if !name.is_empty() {
            out.push((bits, value, name.to_string()));
        }
        Ok(())
    })
}

/// Calls `f` with each record's first line and fields: RFC 4180 quoting, with quoted fields
/// that span lines (the IEEE files have such addresses) and doubled quotes.
fn for_each_csv_record(
    text: &str,
    mut f: impl FnMut(usize, &[String]) -> Result<(), LineError>,
) -> Result<(), LineError> {
    let mut fields: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut in_quotes = false;
    let mut line = 1;
    let mut record_line = 1;
    let mut quote_line = 1;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if in_quotes {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => in_quotes = false,
                '\n' => {
                    line += 1;
                    field.push('\n');
                }
                c => field.push(c),
            }
            continue;
        }
        match c {
            '"' => {
                in_quotes = true;
                quote_line = line;
            }
            ',' => fields.push(std::mem::take(&mut field)),
            '\r' => {}
            '\n' => {
                fields.push(std::mem::take(&mut field));
                if !(fields.len() == 1 && fields[0].is_empty()) {
                    f(record_line, &fields)?;
                }
                fields.clear();
                line += 1;
                record_line = line;
            }
            c => field.push(c),
        }
    }
    if in_quotes {
        return Err((quote_line, "quoted field never closed".into()));
    }
    if !field.is_empty() || !fields.is_empty() {
        fields.push(field);
        f(record_line, &fields)?;
    }
    Ok(())
}

/// `oui.txt`, `mam.txt`, `oui36.txt`, `iab.txt`: an `XX-XX-XX   (hex)  Org` line, then an
/// `XXXXXX     (base 16)  Org` line whose range (`900000-9FFFFF` for MA-M, `F2F000-F2FFFF`
/// for MA-S) gives the longer prefixes. Address lines are ignored.
fn parse_ieee_txt(text: &str, out: &mut Vec<Entry>) -> Result<(), LineError> {
    // (line, 24-bit prefix, organization) of the `(hex)` line not yet completed.
    let mut pending: Option<(usize, u64, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if let Some(at) = raw.find("(hex)") {
            if let Some((_, prefix, name)) = pending.take() {
                out.push((24, prefix, name));
            }
            let prefix = raw[..at].trim();
            let digits: String = prefix.chars().filter(|c| *c != '-' && *c != ':').collect();
            let value = parse_hex_prefix(&digits)
                .filter(|(bits, _)| *bits == 24)
                .map(|(_, v)| v)
                .ok_or_else(|| {
                    (
                        line,
                        format!("`{prefix}` is not an OUI (expected XX-XX-XX)"),
                    )
                })?;
            let name = raw[at + "(hex)".len()..].trim().to_string();
            if !name.is_empty() {
                pending = Some((line, value, name));
            }
        } else if let Some(at) = raw.find("(base 16)") {
            let Some((hex_line, prefix, name)) = pending.take() else {
                continue;
            };
            let range = raw[..at].trim();
            let Some((low, high)) = range.split_once('-') else {
                out.push((24, prefix, name));
                continue;
            };
            let (low, high) = (low.trim(), high.trim());
            let valid = |s: &str| s.len() == 6 && s.bytes().all(|b| b.is_ascii_hexdigit());
            if !valid(low) || !valid(high) {
                return Err((
                    line,
                    format!("`{range}` is not a range of the OUI at line {hex_line}"),
                ));
            }
            let common = low
                .bytes()
                .zip(high.bytes())
                .take_while(|(a, b)| a.eq_ignore_ascii_case(b))
                .count();
            let sub = if common == 0 {
                0
            } else {
                u64::from_str_radix(&low[..common], 16).unwrap_or(0)
            };
            out.push((
                (24 + 4 * common) as u8,
                (prefix << (4 * common)) | sub,
                name,
            ));
        }
    }
    if let Some((_, prefix, name)) = pending {
        out.push((24, prefix, name));
    }
    Ok(())
}

/// Wireshark's `manuf`: `00:00:0C<TAB>Cisco<TAB>Cisco Systems, Inc`, or with a mask,
/// `00:1B:C5:00:00:00/36<TAB>Converg<TAB>Converging Systems Inc.`. Older files put the long
/// name in a `# comment` after the short one.
fn parse_manuf(text: &str, out: &mut Vec<Entry>) -> Result<(), LineError> {
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let (bits, value, name) = parse_manuf_line(trimmed).map_err(|m| (i + 1, m))?;
        if !name.is_empty() {
            out.push((bits, value, name));
        }
    }
    Ok(())
}

fn parse_manuf_line(line: &str) -> Result<Entry, String> {
    let (prefix, rest) = match line.split_once(|c: char| c.is_whitespace()) {
        Some((p, r)) => (p, r.trim()),
        None => (line, ""),
    };
    let (addr, mask) = match prefix.split_once('/') {
        Some((a, m)) => (a, Some(m)),
        None => (prefix, None),
    };
    let bad = || {
        format!("`{prefix}` is not a MAC prefix (expected e.g. 00:00:0C or 00:1B:C5:00:00:00/36)")
    };
    let bytes: Vec<u8> = addr
        .split([':', '-', '.'])
        .map(|b| {
            if b.len() == 2 {
                u8::from_str_radix(b, 16).ok()
            } else {
                None
            }
        })
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    if bytes.is_empty() || bytes.len() > 6 {
        return Err(bad());
    }
    let bits = match mask {
        Some(m) => m
            .parse::<u8>()
            .ok()
            .filter(|b| (1..=48).contains(b))
            .ok_or_else(bad)?,
        None => (bytes.len() * 8) as u8,
    };
    if usize::from(bits) > bytes.len() * 8 {
        return Err(bad());
    }
    let mut full = [0u8; 8];
    full[2..2 + bytes.len()].copy_from_slice(&bytes);
    let value = u64::from_be_bytes(full) >> (48 - u32::from(bits));
    // Tab-separated: short name, then the registry's full name when there is one.
    let mut fields = rest.split('\t').map(str::trim).filter(|s| !s.is_empty());
    let short = fields.next().unwrap_or("");
    let long = fields.next();
    let name = match (long, short.split_once('#')) {
        (Some(long), _) => long.trim_start_matches('#').trim(),
        (None, Some((_, comment))) if !comment.trim().is_empty() => comment.trim(),
        (None, Some((short, _))) => short.trim(),
        (None, None) => short,
    };
    Ok((bits, value, name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/inventory")
            .join(name)
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
        assert_eq!(
            db.vendor(&[0x60, 0x8b, 0x0e, 0, 0, 1]),
            known("Apple, Inc.")
        );
        // The entry after a quoted address spanning two lines.
        assert_eq!(
            db.vendor(&[0x00, 0x1e, 0xfc, 0, 0, 1]),
            known("JSC \"MASSA-K\"")
        );
        assert_eq!(
            db.vendor(&[0x00, 0xd0, 0xef, 0, 0, 1]),
            known("IGT"),
            "names are trimmed"
        );
        assert_eq!(db.vendor(&[0x00, 0x11, 0x22, 0, 0, 1]), Vendor::Unknown);
    }

    #[test]
    fn locally_administered_is_randomized_even_if_registered() {
        let db = OuiDb::load(&data("oui.csv")).unwrap();
        // 66:09:80 is 64:09:80 with the local bit set.
        assert_eq!(
            db.vendor(&[0x66, 0x09, 0x80, 0x12, 0x34, 0x56]),
            Vendor::Randomized
        );
        assert_eq!(
            OuiDb::empty().vendor(&[0xda, 0xa1, 0x19, 1, 2, 3]),
            Vendor::Randomized
        );
        assert_eq!(
            OuiDb::empty().vendor(&[0x64, 0x09, 0x80, 1, 2, 3]),
            Vendor::Unknown
        );
    }

    #[test]
    fn longest_prefix_over_several_files() {
        let db = OuiDb::load_all(&[data("oui.csv"), data("mam.csv"), data("oui36.csv")]).unwrap();
        // MA-S /36 inside the IEEE's own 70:B3:D5 /24.
        assert_eq!(
            db.vendor(&[0x70, 0xb3, 0xd5, 0xf2, 0xf1, 0x23]),
            known("TELEPLATFORMS")
        );
        assert_eq!(
            db.vendor(&[0x70, 0xb3, 0xd5, 0xf3, 0x00, 0x00]),
            known("IEEE Registration Authority")
        );
        // MA-M /28 inside 20:85:93.
        assert_eq!(
            db.vendor(&[0x20, 0x85, 0x93, 0xb1, 0x23, 0x45]),
            known("IOG Products LLC")
        );
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
        assert_eq!(
            db.vendor(&[0x64, 0x09, 0x80, 1, 2, 3]),
            known("Xiaomi Communications Co Ltd")
        );
        assert_eq!(
            db.vendor(&[0x00, 0x22, 0x72, 1, 2, 3]),
            known("American Micro-Fuel Device Corp.")
        );
        // MA-M range 900000-9FFFFF and MA-S range F2F000-F2FFFF (CRLF lines).
        assert_eq!(db.vendor(&[0x74, 0x1a, 0xe0, 0x9a, 0, 0]), known("Private"));
        assert_eq!(db.vendor(&[0x74, 0x1a, 0xe0, 0xa0, 0, 0]), Vendor::Unknown);
        assert_eq!(
            db.vendor(&[0x70, 0xb3, 0xd5, 0xf2, 0xf9, 0x99]),
            known("TELEPLATFORMS")
        );
        assert_eq!(
            db.vendor(&[0x70, 0xb3, 0xd5, 0xf3, 0xf9, 0x99]),
            Vendor::Unknown
        );
        assert_eq!(db.len(), 4);
    }

    #[test]
    fn wireshark_manuf_with_masks() {
        let db = OuiDb::load(&data("manuf")).unwrap();
        assert_eq!(
            db.vendor(&[0x00, 0x00, 0x0c, 1, 2, 3]),
            known("Cisco Systems, Inc")
        );
        assert_eq!(
            db.vendor(&[0x64, 0x09, 0x80, 1, 2, 3]),
            known("Xiaomi Communications Co Ltd")
        );
        // /36 and /28 entries beat their /24.
        assert_eq!(
            db.vendor(&[0x00, 0x1b, 0xc5, 0x00, 0x01, 0x23]),
            known("Converging Systems Inc.")
        );
        assert_eq!(
            db.vendor(&[0x00, 0x1b, 0xc5, 0x00, 0x11, 0x23]),
            known("IEEE Registration Authority")
        );
        assert_eq!(
            db.vendor(&[0x20, 0x85, 0x93, 0xb0, 0, 1]),
            known("IOG Products LLC")
        );
        // No long name: the short one.
        assert_eq!(db.vendor(&[0x00, 0x00, 0x01, 0, 0, 1]), known("Xerox"));
        // Old style: long name in a comment.
        assert_eq!(
            db.vendor(&[0x00, 0x00, 0x02, 0, 0, 1]),
            known("XEROX CORPORATION")
        );
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
                panic!(
                    "{} is missing: CI must `apt-get install ieee-data`",
                    path.display()
                );
            }
            eprintln!(
                "SKIPPED real_ieee_data: {} not installed (apt-get install ieee-data)",
                path.display()
            );
            return;
        }
        let paths: Vec<PathBuf> = DEFAULT_OUI_PATHS
            .iter()
            .map(PathBuf::from)
            .filter(|p| p.exists())
            .collect();
        let db = OuiDb::load_all(&paths).unwrap();
        assert!(db.len() > 30_000, "{} prefixes", db.len());
        assert_eq!(
            db.vendor(&[0x64, 0x09, 0x80, 0xab, 0xcd, 0xef]),
            known("Xiaomi Communications Co Ltd")
        );
        assert_eq!(
            db.vendor(&[0x70, 0xb3, 0xd5, 0xf2, 0xf1, 0x23]),
            known("TELEPLATFORMS")
        );
        // The .txt forms of the same registries give the same answers (they drop the
        // quotes some names have in the CSV).
        let txt: Vec<PathBuf> = paths
            .iter()
            .map(|p| p.with_extension("txt"))
            .filter(|p| p.exists())
            .collect();
        if txt.len() == paths.len() {
            let from_txt = OuiDb::load_all(&txt).unwrap();
            assert_eq!(from_txt.len(), db.len());
            for (bits, table) in &db.tables {
                let other = &from_txt.tables.iter().find(|(b, _)| b == bits).unwrap().1;
                let unquoted = |s: &str| s.replace('"', "");
                for (key, name) in table.iter().step_by(97) {
                    assert_eq!(
                        other.get(key).map(|n| unquoted(n)),
                        Some(unquoted(name)),
                        "/{bits} {key:x}"
                    );
                }
            }
        }
    }
}
