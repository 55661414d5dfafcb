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
    fmt,
    hash::BuildHasher as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use hashbrown::HashTable;

use crate::types::Mac;

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

    /// Adds a registry file's entries from its text; `origin` names it in errors. A prefix
    /// given again, in this text or an earlier one, now names the later organization. A text
    /// with an error adds nothing.
    pub fn add_text(&mut self, text: &str, origin: &Path) -> anyhow::Result<usize> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        // Names are stored as they are read, each once; the prefixes wait in `staged` until
        // the whole text has parsed, so that an error leaves the tables as they were.
        let names_before = self.names.count();
        let mut interner = Interner::new(&self.names);
        let mut staged: Vec<Staged> = Vec::new();
        let mut add = |bits: u8, key: u64, name: &str| -> Result<(), String> {
            let id = interner.intern(&mut self.names, name)?;
            staged.push((bits, key, id));
            Ok(())
        };
        let parsed = match detect(text) {
            Some(Format::IeeeCsv) => parse_ieee_csv(text, &mut add),
            Some(Format::IeeeTxt) => parse_ieee_txt(text, &mut add),
            Some(Format::Manuf) => parse_manuf(text, &mut add),
            None => Err((
                1,
                "not an OUI registry file: expected the IEEE's oui.csv/mam.csv/oui36.csv \
                 (header `Registry,Assignment,Organization Name,Organization Address`), \
                 oui.txt (`XX-XX-XX   (hex)  Organization` lines) or Wireshark's manuf \
                 (`00:00:0C<TAB>Cisco<TAB>Cisco Systems, Inc` lines)"
                    .to_string(),
            )),
        };
        // Only needed while loading: kept, the index would add a quarter to the database.
        drop(interner);
        if let Err((line, message)) = parsed {
            self.names.truncate(names_before);
            anyhow::bail!("{}:{line}: {message}", origin.display());
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

/// A prefix as read, before it joins its table: (bits, prefix, name id).
type Staged = (u8, u64, u32);

/// The prefixes of one length, sorted by prefix, each with its organization's id in
/// [`Names`].
#[derive(Clone, Debug)]
struct Table<K> {
    bits: u8,
    slots: Vec<(K, u32)>,
}

impl<K: Key> Table<K> {
    /// The organization id of the prefix of `value` (a MAC address's 48 bits), if listed.
    fn get(&self, value: u64) -> Option<u32> {
        let key = K::of(value >> (48 - u32::from(self.bits)));
        let at = self.slots.binary_search_by_key(&key, |&(k, _)| k).ok()?;
        Some(self.slots[at].1)
    }
}

/// Adds the `bits`-long prefixes of `staged` to their table in `tables` (longest first),
/// making the table if it is the first of its length.
fn merge_into<K: Key>(tables: &mut Vec<Table<K>>, bits: u8, staged: &[Staged]) {
    let at = match tables.iter().position(|t| t.bits <= bits) {
        Some(at) if tables[at].bits == bits => at,
        Some(at) => {
            tables.insert(at, Table { bits, slots: Vec::new() });
            at
        }
        None => {
            tables.push(Table { bits, slots: Vec::new() });
            tables.len() - 1
        }
    };
    let slots = &mut tables[at].slots;
    let new = staged.iter().filter(|(b, ..)| *b == bits);
    // Exactly: a table is not grown again until the next file, so slack would be kept.
    slots.reserve_exact(new.clone().count());
    slots.extend(new.map(|&(_, key, id)| (K::of(key), id)));
    // A stable sort keeps equal prefixes in the order they came (the tables' before the
    // text's, the text's in its order), so that the last of each run is the latest.
    slots.sort_by_key(|&(key, _)| key);
    slots.dedup_by(|later, kept| {
        let same = later.0 == kept.0;
        if same {
            kept.1 = later.1;
        }
        same
    });
    slots.shrink_to_fit();
}

/// A prefix as a table keeps it. Those of up to 32 bits (the /24s and /28s, four in five)
/// fit a `u32`, for 8-byte slots; longer ones take two `u32`s, for 12-byte slots where a
/// `u64` would be padded to 16.
trait Key: Copy + Ord {
    fn of(prefix: u64) -> Self;
    #[cfg(test)]
    fn to_u64(self) -> u64;
}

impl Key for u32 {
    fn of(prefix: u64) -> u32 {
        // Only the tables of up to 32 bits have u32 keys: nothing is cut off.
        prefix as u32
    }
    #[cfg(test)]
    fn to_u64(self) -> u64 {
        u64::from(self)
    }
}

impl Key for [u32; 2] {
    fn of(prefix: u64) -> [u32; 2] {
        // High half first, so that arrays order as the prefixes do.
        [(prefix >> 32) as u32, prefix as u32]
    }
    #[cfg(test)]
    fn to_u64(self) -> u64 {
        (u64::from(self[0]) << 32) | u64::from(self[1])
    }
}

/// Organization names, each stored once (Apple alone has ~1,000 prefixes), in one string:
/// a `String` or `Box<str>` each would cost a pointer and an allocation per name.
#[derive(Clone, Debug, Default)]
struct Names {
    text: String,
    /// Where each name ends in `text`; it starts where the one before ends.
    ends: Vec<u32>,
}

impl Names {
    fn count(&self) -> usize {
        self.ends.len()
    }

    fn get(&self, id: u32) -> &str {
        let id = id as usize;
        let start = match id {
            0 => 0,
            _ => self.ends[id - 1] as usize,
        };
        &self.text[start..self.ends[id] as usize]
    }

    /// Appends `name`; returns its id.
    fn push(&mut self, name: &str) -> Result<u32, String> {
        let id = u32::try_from(self.ends.len());
        let end = u32::try_from(self.text.len() + name.len());
        let (Ok(id), Ok(end)) = (id, end) else {
            return Err("more than 4 GiB of organization names".into());
        };
        self.text.push_str(name);
        self.ends.push(end);
        Ok(id)
    }

    /// Forgets the names after the first `count`.
    fn truncate(&mut self, count: usize) {
        self.ends.truncate(count);
        self.text.truncate(self.ends.last().map_or(0, |&end| end as usize));
        self.shrink_to_fit();
    }

    fn shrink_to_fit(&mut self) {
        self.text.shrink_to_fit();
        self.ends.shrink_to_fit();
    }
}

/// An index of the names of a [`Names`] by their text, to store each name once. Only kept
/// while a text is read.
struct Interner {
    index: HashTable<u32>,
    hasher: foldhash::fast::RandomState,
}

impl Interner {
    fn new(names: &Names) -> Interner {
        let hasher = foldhash::fast::RandomState::default();
        let mut index = HashTable::with_capacity(names.count());
        // `push` keeps the count within u32.
        for id in 0..names.count() as u32 {
            let hash = hasher.hash_one(names.get(id));
            index.insert_unique(hash, id, |&id| hasher.hash_one(names.get(id)));
        }
        Interner { index, hasher }
    }

    /// The id of `name` in `names`, appending it if new.
    fn intern(&mut self, names: &mut Names, name: &str) -> Result<u32, String> {
        let hash = self.hasher.hash_one(name);
        if let Some(&id) = self.index.find(hash, |&id| names.get(id) == name) {
            return Ok(id);
        }
        let id = names.push(name)?;
        let hasher = &self.hasher;
        self.index.insert_unique(hash, id, |&id| hasher.hash_one(names.get(id)));
        Ok(id)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    IeeeCsv,
    IeeeTxt,
    Manuf,
}

/// (1-based line, message)
type LineError = (usize, String);

fn detect(text: &str) -> Option<Format> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.clone().next()?;
    if first.starts_with("Registry,Assignment") {
        return Some(Format::IeeeCsv);
    }
    if lines.clone().take(50).any(|l| l.contains("(hex)") || l.contains("(base 16)")) {
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

/// Takes each entry read: (prefix length in bits, prefix value, organization).
type Sink<'a> = dyn FnMut(u8, u64, &str) -> Result<(), String> + 'a;

fn parse_ieee_csv(text: &str, add: &mut Sink<'_>) -> Result<(), LineError> {
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
        let (bits, value) =
            parse_hex_prefix(assignment).filter(|(bits, _)| (24..=48).contains(bits)).ok_or_else(
                || (line, format!("`{assignment}` is not a MAC prefix (6, 7 or 9 hex digits)")),
            )?;
        let name = fields[2].trim();
        if !name.is_empty() {
            add(bits, value, name).map_err(|m| (line, m))?;
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
fn parse_ieee_txt(text: &str, add: &mut Sink<'_>) -> Result<(), LineError> {
    // (line, 24-bit prefix, organization) of the `(hex)` line not yet completed.
    let mut pending: Option<(usize, u64, &str)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if let Some(at) = raw.find("(hex)") {
            if let Some((hex_line, prefix, name)) = pending.take() {
                add(24, prefix, name).map_err(|m| (hex_line, m))?;
            }
            let prefix = raw[..at].trim();
            let digits: String = prefix.chars().filter(|c| *c != '-' && *c != ':').collect();
            let value = parse_hex_prefix(&digits)
                .filter(|(bits, _)| *bits == 24)
                .map(|(_, v)| v)
                .ok_or_else(|| {
                (line, format!("`{prefix}` is not an OUI (expected XX-XX-XX)"))
            })?;
            let name = raw[at + "(hex)".len()..].trim();
            if !name.is_empty() {
                pending = Some((line, value, name));
            }
        } else if let Some(at) = raw.find("(base 16)") {
            let Some((hex_line, prefix, name)) = pending.take() else {
                continue;
            };
            let range = raw[..at].trim();
            let Some((low, high)) = range.split_once('-') else {
                add(24, prefix, name).map_err(|m| (hex_line, m))?;
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
            let sub =
                if common == 0 { 0 } else { u64::from_str_radix(&low[..common], 16).unwrap_or(0) };
            add((24 + 4 * common) as u8, (prefix << (4 * common)) | sub, name)
                .map_err(|m| (hex_line, m))?;
        }
    }
    if let Some((hex_line, prefix, name)) = pending {
        add(24, prefix, name).map_err(|m| (hex_line, m))?;
    }
    Ok(())
}

/// Wireshark's `manuf`: `00:00:0C<TAB>Cisco<TAB>Cisco Systems, Inc`, or with a mask,
/// `00:1B:C5:00:00:00/36<TAB>Converg<TAB>Converging Systems Inc.`. Older files put the long
/// name in a `# comment` after the short one.
fn parse_manuf(text: &str, add: &mut Sink<'_>) -> Result<(), LineError> {
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let (bits, value, name) = parse_manuf_line(trimmed).map_err(|m| (i + 1, m))?;
        if !name.is_empty() {
            add(bits, value, name).map_err(|m| (i + 1, m))?;
        }
    }
    Ok(())
}

/// (prefix length in bits, prefix value, organization)
fn parse_manuf_line(line: &str) -> Result<(u8, u64, &str), String> {
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
        .map(|b| if b.len() == 2 { u8::from_str_radix(b, 16).ok() } else { None })
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    if bytes.is_empty() || bytes.len() > 6 {
        return Err(bad());
    }
    let bits = match mask {
        Some(m) => m.parse::<u8>().ok().filter(|b| (1..=48).contains(b)).ok_or_else(bad)?,
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
    Ok((bits, value, name))
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
