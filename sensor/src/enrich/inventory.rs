//! Who a MAC address is: the user's own inventory first, then the hostname the device gave
//! the DHCP server, else a stable name made from its vendor and MAC.
//!
//! DHCP leases are read from dnsmasq's lease file (OpenWrt's `/tmp/dhcp.leases`, Debian's
//! `/var/lib/misc/dnsmasq.leases`) or ISC dhcpd's `dhcpd.leases`, recognized by their content.
//! [`Inventory::refresh`] re-reads a file only when its size, modification time or inode
//! changed, so it can run every poll.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    time::SystemTime,
};

use serde::Deserialize;

use super::oui::{DEFAULT_OUI_PATHS, OuiDb, Vendor};
use crate::types::Mac;

/// The `inventory` part of the configuration.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InventoryConfig {
    /// Devices named by the user; they win over DHCP hostnames.
    #[serde(default)]
    pub devices: Vec<StaticDevice>,
    /// dnsmasq or ISC dhcpd lease files, e.g. `/tmp/dhcp.leases` on OpenWrt.
    #[serde(default)]
    pub dhcp_leases: Vec<PathBuf>,
    /// OUI registry files (IEEE CSV/TXT or Wireshark `manuf`). Absent: Debian's `ieee-data`
    /// files ([`DEFAULT_OUI_PATHS`]); an empty list: no vendor lookup.
    #[serde(default)]
    pub oui_databases: Option<Vec<PathBuf>>,
}

/// A device the user named.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StaticDevice {
    /// `aa:bb:cc:dd:ee:ff` (or with `-`), any case.
    pub mac: String,
    pub name: String,
    #[serde(default)]
    pub group: String,
    /// Extra labels; keys must be Prometheus label names.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// Parses `aa:bb:cc:dd:ee:ff` or `AA-BB-CC-DD-EE-FF` (two hex digits per byte).
pub fn parse_mac(s: &str) -> Option<Mac> {
    let mut mac = [0u8; 6];
    let mut parts = s.trim().split([':', '-']);
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// A Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__` (reserved).
fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with("__")
}

impl InventoryConfig {
    /// Checks the devices: MAC syntax, duplicates, names, tag keys.
    pub fn validate(&self) -> Result<(), String> {
        let mut seen: HashMap<Mac, usize> = HashMap::new();
        for (i, d) in self.devices.iter().enumerate() {
            let Some(mac) = parse_mac(&d.mac) else {
                return Err(format!(
                    "inventory.devices[{i}] ({:?}): {:?} is not a MAC address; write six two-digit hex \
                     bytes, e.g. mac: \"aa:bb:cc:dd:ee:ff\"",
                    d.name, d.mac
                ));
            };
            if let Some(first) = seen.insert(mac, i) {
                return Err(format!(
                    "inventory.devices[{i}] ({:?}) has the same MAC {} as inventory.devices[{first}] ({:?}); list each \
                     device once",
                    d.name,
                    crate::types::labels::mac(&mac),
                    self.devices[first].name
                ));
            }
            if d.name.trim().is_empty() {
                return Err(format!(
                    "inventory.devices[{i}] ({}) has an empty name; give it one, e.g. name: living-room-tv",
                    crate::types::labels::mac(&mac)
                ));
            }
            if let Some(key) = d.tags.keys().find(|k| !is_label_name(k)) {
                let suggestion: String = key
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
                    .collect();
                let suggestion = suggestion.trim_start_matches('_');
                let suggestion = if suggestion.starts_with(|c: char| c.is_ascii_digit()) {
                    format!("tag_{suggestion}")
                } else if suggestion.is_empty() {
                    "owner".to_string()
                } else {
                    suggestion.to_string()
                };
                return Err(format!(
                    "inventory.devices[{i}] ({:?}): tag key {key:?} is not a Prometheus label name; use \
                     letters, digits and underscores, not starting with a digit or `__` (e.g. {suggestion})",
                    d.name
                ));
            }
        }
        Ok(())
    }
}

/// Where a device's name came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NameSource {
    Inventory,
    Dhcp,
    Fallback,
}

impl NameSource {
    pub fn as_str(self) -> &'static str {
        match self {
            NameSource::Inventory => "inventory",
            NameSource::Dhcp => "dhcp",
            NameSource::Fallback => "fallback",
        }
    }
}

/// What the sensor knows about one MAC address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub name: String,
    pub group: String,
    pub tags: BTreeMap<String, String>,
    pub vendor: Vendor,
    pub source: NameSource,
}

/// The name of a device nobody named: `<vendor>-<last three bytes>`, e.g. `xiaomi-123456`,
/// `randomized-123456` for a locally administered address, `device-123456` when the vendor
/// is unknown. Stable: the same MAC always gets the same name.
pub fn fallback_name(mac: &Mac, vendor: &Vendor) -> String {
    let slug = match vendor {
        Vendor::Known(org) => {
            let first = org
                .split(|c: char| c.is_whitespace() || c == ',')
                .find(|w| !w.is_empty())
                .unwrap_or("");
            let slug: String = first
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .map(|c| c.to_ascii_lowercase())
                .collect();
            let slug = slug.trim_matches('-').to_string();
            if slug.is_empty() { "device".to_string() } else { slug }
        }
        Vendor::Randomized => "randomized".to_string(),
        Vendor::Unknown => "device".to_string(),
    };
    format!("{slug}-{:02x}{:02x}{:02x}", mac[3], mac[4], mac[5])
}

/// Static inventory, DHCP leases and the OUI registry, merged.
#[derive(Debug)]
pub struct Inventory {
    devices: HashMap<Mac, StaticDevice>,
    oui: OuiDb,
    lease_files: Vec<LeaseFile>,
    /// Per MAC, merged over all lease files.
    leases: HashMap<Mac, MacLeases>,
}

#[derive(Debug)]
struct LeaseFile {
    path: PathBuf,
    stamp: Option<Stamp>,
    leases: Vec<Lease>,
    /// The last warning given for this file, so a lasting problem is reported once.
    last_warning: Option<String>,
}

/// What tells a changed file: a rewrite in place changes the size or the mtime, a
/// rename over it the inode.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    dev: u64,
    ino: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Lease {
    mac: Mac,
    ip: IpAddr,
    hostname: Option<String>,
    /// Unix seconds; `u64::MAX` for a lease that never ends.
    ends: u64,
}

#[derive(Debug, Default)]
struct MacLeases {
    hostname: Option<String>,
    /// Most recent first.
    ips: Vec<IpAddr>,
}

impl Inventory {
    /// Builds the inventory: validates the devices, loads the OUI registry and reads the
    /// lease files. Missing files are warnings (vendors stay empty; a lease file may only be
    /// created later by the DHCP server); an invalid device list or a malformed OUI file named
    /// in `oui_databases` is an error.
    pub fn new(cfg: &InventoryConfig) -> anyhow::Result<(Inventory, Vec<String>)> {
        cfg.validate().map_err(anyhow::Error::msg)?;
        let mut warnings = Vec::new();
        let devices =
            cfg.devices.iter().filter_map(|d| Some((parse_mac(&d.mac)?, d.clone()))).collect();
        let (oui_paths, defaults): (Vec<PathBuf>, bool) = match &cfg.oui_databases {
            Some(paths) => (paths.clone(), false),
            None => (DEFAULT_OUI_PATHS.iter().map(PathBuf::from).collect(), true),
        };
        let mut oui = OuiDb::empty();
        let missing: Vec<&PathBuf> = oui_paths.iter().filter(|p| !p.exists()).collect();
        for path in oui_paths.iter().filter(|p| p.exists()) {
            match oui.add_file(path) {
                Ok(_) => {}
                // Debian's files are not the user's doing: a format change there should cost
                // the vendor labels, not the agent.
                Err(e) if defaults => {
                    warnings.push(format!("{e:#}: vendors from it will be missing"))
                }
                Err(e) => anyhow::bail!("{e:#} (check inventory.oui_databases)"),
            }
        }
        if !missing.is_empty() {
            let all = missing.len() == oui_paths.len();
            let listed =
                missing.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
            let (what, consequence) = match (all, missing.len()) {
                (true, 1) => ("database", "vendors will be empty"),
                (true, _) => ("databases", "vendors will be empty"),
                (false, 1) => ("database", "vendors of its prefixes will be missing"),
                (false, _) => ("databases", "vendors of their prefixes will be missing"),
            };
            let listed = if defaults && all { DEFAULT_OUI_PATHS[0].to_string() } else { listed };
            let fix = if defaults {
                "apt-get install ieee-data"
            } else {
                "check inventory.oui_databases"
            };
            warnings.push(format!("OUI {what} {listed} not found: {consequence} ({fix})"));
        }
        let lease_files = cfg
            .dhcp_leases
            .iter()
            .map(|path| LeaseFile {
                path: path.clone(),
                stamp: None,
                leases: Vec::new(),
                last_warning: None,
            })
            .collect();
        let mut inventory = Inventory { devices, oui, lease_files, leases: HashMap::new() };
        warnings.extend(inventory.refresh());
        Ok((inventory, warnings))
    }

    /// Re-reads the lease files that changed since the last call. Cheap when none did (one
    /// `stat` per file). Returns warnings for files that cannot be read, each once until it
    /// changes; a file that cannot be read keeps the leases last read from it.
    pub fn refresh(&mut self) -> Vec<String> {
        let mut warnings = Vec::new();
        let mut changed = false;
        for file in &mut self.lease_files {
            let warning = match file.check() {
                Ok(c) => {
                    changed |= c.changed;
                    c.warning
                }
                Err(w) => Some(w),
            };
            if warning != file.last_warning {
                if let Some(w) = &warning {
                    warnings.push(w.clone());
                }
                file.last_warning = warning;
            }
        }
        if changed {
            self.merge();
        }
        warnings
    }

    /// Who `mac` is: the inventory entry, else the DHCP hostname of its most recent lease
    /// that has one, else [`fallback_name`].
    pub fn device(&self, mac: &Mac) -> Device {
        let vendor = self.oui.vendor(mac);
        if let Some(d) = self.devices.get(mac) {
            return Device {
                name: d.name.clone(),
                group: d.group.clone(),
                tags: d.tags.clone(),
                vendor,
                source: NameSource::Inventory,
            };
        }
        if let Some(hostname) = self.leases.get(mac).and_then(|l| l.hostname.as_ref()) {
            return Device {
                name: hostname.clone(),
                group: String::new(),
                tags: BTreeMap::new(),
                vendor,
                source: NameSource::Dhcp,
            };
        }
        Device {
            name: fallback_name(mac, &vendor),
            group: String::new(),
            tags: BTreeMap::new(),
            vendor,
            source: NameSource::Fallback,
        }
    }

    /// The addresses leased to `mac`, most recent first.
    pub fn lease_ips(&self, mac: &Mac) -> Vec<IpAddr> {
        self.leases.get(mac).map(|l| l.ips.clone()).unwrap_or_default()
    }

    /// The vendor of `mac` alone.
    pub fn vendor(&self, mac: &Mac) -> Vendor {
        self.oui.vendor(mac)
    }

    /// The OUI registry in use.
    pub fn oui(&self) -> &OuiDb {
        &self.oui
    }

    /// Leases from all files per MAC, most recent first: latest end, then later file.
    fn merge(&mut self) {
        let mut all: Vec<(u64, usize, usize, &Lease)> = Vec::new();
        for (f, file) in self.lease_files.iter().enumerate() {
            all.extend(file.leases.iter().enumerate().map(|(i, l)| (l.ends, f, i, l)));
        }
        all.sort_by_key(|&(ends, file, line, _)| std::cmp::Reverse((ends, file, line)));
        let mut merged: HashMap<Mac, MacLeases> = HashMap::new();
        for (_, _, _, lease) in all {
            let entry = merged.entry(lease.mac).or_default();
            if entry.hostname.is_none() {
                entry.hostname = lease.hostname.clone();
            }
            if !entry.ips.contains(&lease.ip) {
                entry.ips.push(lease.ip);
            }
        }
        self.leases = merged;
    }
}

struct Checked {
    changed: bool,
    warning: Option<String>,
}

impl LeaseFile {
    /// Re-reads the file if its stamp changed. Err: a warning, the old leases kept.
    fn check(&mut self) -> Result<Checked, String> {
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(format!(
                    "DHCP leases file {} does not exist (yet): device names from it will appear once \
                     the DHCP server writes it",
                    self.path.display()
                ));
            }
            Err(e) => {
                return Err(format!("cannot read DHCP leases file {}: {e}", self.path.display()));
            }
        };
        let stamp = Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            dev: meta.dev(),
            ino: meta.ino(),
        };
        if self.stamp.as_ref() == Some(&stamp) {
            // Unchanged: whatever was said about its content still holds.
            return Ok(Checked { changed: false, warning: self.last_warning.clone() });
        }
        let bytes = std::fs::read(&self.path)
            .map_err(|e| format!("cannot read DHCP leases file {}: {e}", self.path.display()))?;
        if bytes.is_empty() && !self.leases.is_empty() {
            // dnsmasq rewrites its file in place (truncate, write): an empty read is most
            // likely that moment. Keep the leases, and look again at the next call.
            self.stamp = None;
            return Ok(Checked { changed: false, warning: self.last_warning.clone() });
        }
        let text = String::from_utf8_lossy(&bytes);
        let parsed = parse_leases(&text);
        self.stamp = Some(stamp);
        if parsed.format.is_none() {
            return Ok(Checked {
                changed: false,
                warning: Some(format!(
                    "{} is not a dnsmasq or ISC dhcpd leases file: no device names from it (the \
                     leases read before are kept)",
                    self.path.display()
                )),
            });
        }
        self.leases = parsed.leases;
        let warning = parsed.malformed.first().map(|first| {
            format!(
                "{}: {} malformed lease line(s) skipped (first at line {first})",
                self.path.display(),
                parsed.malformed.len()
            )
        });
        Ok(Checked { changed: true, warning })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeaseFormat {
    Dnsmasq,
    Isc,
}

#[derive(Debug, Default)]
struct ParsedLeases {
    /// None: neither format (an empty file is dnsmasq with no leases).
    format: Option<LeaseFormat>,
    leases: Vec<Lease>,
    /// 1-based lines of the entries skipped.
    malformed: Vec<usize>,
}

fn parse_leases(text: &str) -> ParsedLeases {
    let first =
        text.lines().map(|l| l.split('#').next().unwrap_or("").trim()).find(|l| !l.is_empty());
    let Some(first) = first else {
        return ParsedLeases { format: Some(LeaseFormat::Dnsmasq), ..Default::default() };
    };
    let word =
        first.split(|c: char| c.is_whitespace() || c == '{' || c == ';').next().unwrap_or("");
    const ISC_STATEMENTS: &[&str] = &[
        "lease",
        "host",
        "authoring-byte-order",
        "server-duid",
        "failover",
        "ia-na",
        "ia-ta",
        "ia-pd",
        "db-time-format",
        "group",
        "subclass",
        "class",
    ];
    if ISC_STATEMENTS.contains(&word) {
        parse_isc(text)
    } else if word == "duid" || word.parse::<u64>().is_ok() {
        parse_dnsmasq(text)
    } else {
        ParsedLeases::default()
    }
}

/// A device-chosen hostname made safe for a label: no control characters, at most 63
/// characters (a DNS label), none for `*` or empty.
fn clean_hostname(raw: &str) -> Option<String> {
    let cleaned: String = raw.chars().filter(|c| !c.is_control()).take(63).collect();
    let cleaned = cleaned.trim();
    (!cleaned.is_empty() && cleaned != "*").then(|| cleaned.to_string())
}

/// MAC as a lease file writes it: `aa:bb:cc:dd:ee:ff`, bytes of one or two hex digits.
fn parse_lease_mac(s: &str) -> Option<Mac> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// dnsmasq: `<expiry> <mac> <ip> <hostname> <client-id>` per line (expiry 0: never). IPv6
/// leases follow a `duid <server duid>` line and carry an IAID where the MAC would be:
/// they name no MAC and are skipped.
fn parse_dnsmasq(text: &str) -> ParsedLeases {
    let mut out = ParsedLeases { format: Some(LeaseFormat::Dnsmasq), ..Default::default() };
    // A last line without its newline is being written: not malformed, just not there yet.
    let complete = if text.ends_with('\n') {
        text
    } else {
        text.rsplit_once('\n').map_or("", |(done, _)| done)
    };
    for (i, line) in complete.lines().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.first() {
            None => continue,
            Some(f) if f.starts_with('#') || *f == "duid" => continue,
            Some(_) => {}
        }
        let lease = (|| {
            if fields.len() < 4 {
                return Err(());
            }
            let expiry: u64 = fields[0].parse().map_err(|_| ())?;
            let ip: IpAddr = fields[2].parse().map_err(|_| ())?;
            let Some(mac) = parse_lease_mac(fields[1]) else {
                // An IPv6 lease's IAID: no MAC to name.
                return if ip.is_ipv6() { Ok(None) } else { Err(()) };
            };
            Ok(Some(Lease {
                mac,
                ip,
                hostname: clean_hostname(fields[3]),
                ends: if expiry == 0 { u64::MAX } else { expiry },
            }))
        })();
        match lease {
            Ok(Some(lease)) => out.leases.push(lease),
            Ok(None) => {}
            Err(()) => out.malformed.push(i + 1),
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Quoted(String),
    Semi,
    Open,
    Close,
}

/// ISC dhcpd.leases tokens with their lines: `#` comments, quoted strings with backslash
/// escapes (octal `\ooo` too), `;`, `{`, `}`.
fn isc_tokens(text: &str) -> Vec<(usize, Token)> {
    let mut tokens = Vec::new();
    let mut line = 1;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' => line += 1,
            c if c.is_whitespace() => {}
            '#' => {
                while let Some(&c) = chars.peek() {
                    if c == '\n' {
                        break;
                    }
                    chars.next();
                }
            }
            ';' => tokens.push((line, Token::Semi)),
            '{' => tokens.push((line, Token::Open)),
            '}' => tokens.push((line, Token::Close)),
            '"' => {
                let start = line;
                let mut bytes = Vec::new();
                let mut closed = false;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => {
                            closed = true;
                            break;
                        }
                        '\\' => match chars.next() {
                            Some(d @ '0'..='7') => {
                                let mut value = d as u32 - '0' as u32;
                                for _ in 0..2 {
                                    match chars.peek() {
                                        Some(&o @ '0'..='7') => {
                                            value = value * 8 + (o as u32 - '0' as u32);
                                            chars.next();
                                        }
                                        _ => break,
                                    }
                                }
                                bytes.push(value as u8);
                            }
                            Some('n') => bytes.push(b'\n'),
                            Some('t') => bytes.push(b'\t'),
                            Some(other) => {
                                if other == '\n' {
                                    line += 1;
                                }
                                let mut buf = [0u8; 4];
                                bytes.extend_from_slice(other.encode_utf8(&mut buf).as_bytes());
                            }
                            None => break,
                        },
                        '\n' => {
                            line += 1;
                            bytes.push(b'\n');
                        }
                        c => {
                            let mut buf = [0u8; 4];
                            bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                        }
                    }
                }
                if closed {
                    tokens
                        .push((start, Token::Quoted(String::from_utf8_lossy(&bytes).into_owned())));
                }
            }
            c => {
                let mut word = String::from(c);
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || matches!(c, ';' | '{' | '}' | '"' | '#') {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                tokens.push((line, Token::Word(word)));
            }
        }
    }
    tokens
}

/// One ISC statement: its words up to `;`, or up to a `{ ... }` block.
#[derive(Debug)]
struct Statement {
    line: usize,
    words: Vec<Token>,
    block: Option<Vec<Statement>>,
}

/// Statements until a `}` at this level (consumed) or the end. `complete` turns false when
/// the text ends inside a block (a file read while being written).
fn isc_statements(
    tokens: &[(usize, Token)],
    pos: &mut usize,
    complete: &mut bool,
    depth: usize,
) -> Vec<Statement> {
    let mut out = Vec::new();
    let mut words = Vec::new();
    let mut line = 0;
    while *pos < tokens.len() {
        let (l, token) = &tokens[*pos];
        *pos += 1;
        if words.is_empty() {
            line = *l;
        }
        match token {
            Token::Semi => {
                out.push(Statement { line, words: std::mem::take(&mut words), block: None })
            }
            Token::Open => {
                let block = isc_statements(tokens, pos, complete, depth + 1);
                out.push(Statement { line, words: std::mem::take(&mut words), block: Some(block) });
            }
            Token::Close => {
                if depth > 0 {
                    return out;
                }
                // A stray `}` at the top: ignore it.
            }
            t => words.push(t.clone()),
        }
    }
    if depth > 0 {
        *complete = false;
    }
    out
}

fn word(t: Option<&Token>) -> Option<&str> {
    match t {
        Some(Token::Word(w)) | Some(Token::Quoted(w)) => Some(w),
        _ => None,
    }
}

/// ISC `ends` value: `4 2026/11/23 20:00:00` (UTC), `never`, or `epoch 1795000000`.
fn isc_time(words: &[Token]) -> Option<u64> {
    match word(words.get(1))? {
        "never" => return Some(u64::MAX),
        "epoch" => return word(words.get(2))?.parse().ok(),
        _ => {}
    }
    let date = word(words.get(2))?;
    let time = word(words.get(3))?;
    let mut d = date.split('/').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':').map(|p| p.parse::<i64>());
    let (hh, mm, ss) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let secs = days_from_civil(y, m, day) * 86_400 + hh * 3600 + mm * 60 + ss;
    u64::try_from(secs).ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// ISC dhcpd.leases: `lease <ip> { ... }` blocks appended as leases change, so for one IP the
/// last block is its state, and for one MAC the last block is its current lease. Leases in
/// `binding state free`, `abandoned` or `backup` belong to no device and are ignored.
fn parse_isc(text: &str) -> ParsedLeases {
    let mut out = ParsedLeases { format: Some(LeaseFormat::Isc), ..Default::default() };
    let tokens = isc_tokens(text);
    let mut pos = 0;
    let mut complete = true;
    let statements = isc_statements(&tokens, &mut pos, &mut complete, 0);
    // (ip → index in `blocks`) so a later block for an IP replaces the earlier one.
    let mut by_ip: HashMap<IpAddr, usize> = HashMap::new();
    let mut blocks: Vec<Option<Lease>> = Vec::new();
    let last = statements.len().saturating_sub(1);
    for (n, st) in statements.iter().enumerate() {
        if word(st.words.first()) != Some("lease") {
            continue;
        }
        let Some(body) = &st.block else {
            out.malformed.push(st.line);
            continue;
        };
        if n == last && !complete {
            // Cut off mid-write: the next refresh reads the whole block.
            out.malformed.push(st.line);
            continue;
        }
        let Some(ip) = word(st.words.get(1)).and_then(|w| w.parse::<IpAddr>().ok()) else {
            out.malformed.push(st.line);
            continue;
        };
        let mut mac = None;
        let mut hostname = None;
        let mut ends = 0;
        let mut state_ignored = false;
        let mut bad = false;
        for s in body {
            match (word(s.words.first()), word(s.words.get(1))) {
                (Some("hardware"), Some("ethernet")) => {
                    match word(s.words.get(2)).and_then(parse_lease_mac) {
                        Some(m) => mac = Some(m),
                        None => bad = true,
                    }
                }
                (Some("client-hostname"), _) => {
                    hostname = word(s.words.get(1)).and_then(clean_hostname)
                }
                (Some("binding"), Some("state")) => {
                    state_ignored =
                        matches!(word(s.words.get(2)), Some("free" | "abandoned" | "backup"));
                }
                (Some("ends"), _) => match isc_time(&s.words) {
                    Some(t) => ends = t,
                    None => bad = true,
                },
                _ => {}
            }
        }
        if bad {
            out.malformed.push(st.line);
            continue;
        }
        let lease = match mac {
            Some(mac) if !state_ignored => Some(Lease { mac, ip, hostname, ends }),
            _ => None,
        };
        if let Some(earlier) = by_ip.insert(ip, blocks.len()) {
            blocks[earlier] = None;
        }
        blocks.push(lease);
    }
    // The last block of each MAC.
    let mut seen = HashSet::new();
    let mut leases: Vec<Lease> =
        blocks.into_iter().rev().flatten().filter(|l| seen.insert(l.mac)).collect();
    leases.reverse();
    out.leases = leases;
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const XIAOMI: Mac = [0x64, 0x09, 0x80, 0x12, 0x34, 0x56];
    const APPLE: Mac = [0x60, 0x8b, 0x0e, 0xaa, 0xbb, 0xcc];
    const RANDOM: Mac = [0xda, 0xa1, 0x19, 0x01, 0x02, 0x03];
    const UNKNOWN: Mac = [0x00, 0x11, 0x22, 0x33, 0x44, 0x55];

    fn data(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/inventory").join(name)
    }

    fn device(mac: &str, name: &str) -> StaticDevice {
        StaticDevice { mac: mac.into(), name: name.into(), ..Default::default() }
    }

    fn config(devices: Vec<StaticDevice>, leases: Vec<PathBuf>) -> InventoryConfig {
        InventoryConfig { devices, dhcp_leases: leases, oui_databases: Some(vec![data("oui.csv")]) }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn mac_syntax() {
        assert_eq!(parse_mac("64:09:80:12:34:56"), Some(XIAOMI));
        assert_eq!(parse_mac("64-09-80-12-34-56"), Some(XIAOMI));
        assert_eq!(parse_mac(" 64:09:80:12:34:56 "), Some(XIAOMI));
        assert_eq!(parse_mac("DA:A1:19:01:02:03"), Some(RANDOM));
        for bad in [
            "64:09:80:12:34",
            "64:09:80:12:34:56:78",
            "64:9:80:12:34:56",
            "64:09:80:12:34:zz",
            "640980123456",
            "",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn config_parses_from_yaml() {
        let cfg: InventoryConfig = serde_yaml::from_str(
            "devices:\n  - mac: 64:09:80:12:34:56\n    name: vacuum\n    group: iot\n    tags: {room: kitchen}\n  \
             - {mac: \"DA-A1-19-01-02-03\", name: phone}\ndhcp_leases: [/tmp/dhcp.leases]\n",
        )
        .unwrap();
        assert_eq!(cfg.devices.len(), 2);
        assert_eq!(cfg.devices[0].tags["room"], "kitchen");
        assert_eq!(cfg.devices[1].group, "");
        assert_eq!(cfg.oui_databases, None);
        assert!(cfg.validate().is_ok());
        let e = serde_yaml::from_str::<InventoryConfig>(
            "devices:\n  - {mac: 64:09:80:12:34:56, nmae: x}\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field `nmae`"), "{e}");
        assert_eq!(
            serde_yaml::from_str::<InventoryConfig>("{}").unwrap(),
            InventoryConfig::default()
        );
    }

    #[test]
    fn validation_says_what_to_fix() {
        let check = |devices: Vec<StaticDevice>| config(devices, vec![]).validate().unwrap_err();
        let e = check(vec![device("64:09:80:12:34", "vacuum")]);
        assert!(
            e.contains("\"64:09:80:12:34\" is not a MAC address")
                && e.contains("aa:bb:cc:dd:ee:ff"),
            "{e}"
        );
        let e = check(vec![
            device("64:09:80:12:34:56", "vacuum"),
            device("64-09-80-12-34-56", "robot"),
        ]);
        assert!(
            e.contains(
                "inventory.devices[1] (\"robot\") has the same MAC 64:09:80:12:34:56 as \
                 inventory.devices[0] (\"vacuum\")"
            ),
            "{e}"
        );
        let e = check(vec![device("64:09:80:12:34:56", " ")]);
        assert!(e.contains("empty name"), "{e}");
        for (key, suggestion) in
            [("room-name", "room_name"), ("1st", "tag_1st"), ("__name__", "name__"), ("", "owner")]
        {
            let mut d = device("64:09:80:12:34:56", "vacuum");
            d.tags.insert(key.into(), "x".into());
            let e = check(vec![d]);
            assert!(
                e.contains("is not a Prometheus label name")
                    && e.contains(&format!("(e.g. {suggestion})")),
                "{e}"
            );
        }
        let mut d = device("64:09:80:12:34:56", "vacuum");
        d.tags.insert("room_2".into(), "kitchen".into());
        d.tags.insert("_private".into(), "yes".into());
        assert_eq!(config(vec![d], vec![]).validate(), Ok(()));
        // Inventory::new refuses what validate refuses.
        let e = Inventory::new(&config(vec![device("nope", "x")], vec![])).unwrap_err();
        assert!(e.to_string().contains("not a MAC address"), "{e}");
    }

    #[test]
    fn fallback_names() {
        let known = |s: &str| Vendor::Known(s.into());
        assert_eq!(fallback_name(&XIAOMI, &known("Xiaomi Communications Co Ltd")), "xiaomi-123456");
        assert_eq!(fallback_name(&APPLE, &known("Apple, Inc.")), "apple-aabbcc");
        assert_eq!(
            fallback_name(&UNKNOWN, &known("TP-LINK TECHNOLOGIES CO.,LTD.")),
            "tp-link-334455"
        );
        assert_eq!(fallback_name(&UNKNOWN, &known("  (c) ")), "c-334455");
        assert_eq!(fallback_name(&UNKNOWN, &known("!!!")), "device-334455");
        assert_eq!(fallback_name(&RANDOM, &Vendor::Randomized), "randomized-010203");
        assert_eq!(fallback_name(&UNKNOWN, &Vendor::Unknown), "device-334455");
    }

    #[test]
    fn dnsmasq_leases() {
        let text = std::fs::read_to_string(data("dnsmasq.leases")).unwrap();
        let parsed = parse_leases(&text);
        assert_eq!(parsed.format, Some(LeaseFormat::Dnsmasq));
        assert_eq!(parsed.malformed, vec![4, 5, 6]);
        let (inv, warnings) =
            Inventory::new(&config(vec![], vec![data("dnsmasq.leases")])).unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0]
                .contains("dnsmasq.leases: 3 malformed lease line(s) skipped (first at line 4)"),
            "{warnings:?}"
        );
        let d = inv.device(&XIAOMI);
        assert_eq!((d.name.as_str(), d.source), ("roborock-vacuum", NameSource::Dhcp));
        assert_eq!(d.vendor, Vendor::Known("Xiaomi Communications Co Ltd".into()));
        assert_eq!(inv.lease_ips(&XIAOMI), vec![ip("192.168.1.23")]);
        // `*`: no hostname, so the fallback name; the lease address is still known.
        let d = inv.device(&APPLE);
        assert_eq!((d.name.as_str(), d.source), ("apple-aabbcc", NameSource::Fallback));
        assert_eq!(inv.lease_ips(&APPLE), vec![ip("192.168.1.40")]);
        // Two leases for one MAC: the later expiry wins, and an infinite (0) one beats both.
        assert_eq!(inv.device(&RANDOM).name, "Pixel-8");
        assert_eq!(inv.lease_ips(&RANDOM), vec![ip("192.168.1.51"), ip("192.168.1.50")]);
        let static_lease: Mac = [0x00, 0x1e, 0xfc, 0x00, 0x00, 0x01];
        assert_eq!(inv.device(&static_lease).name, "scale");
        assert_eq!(inv.lease_ips(&static_lease), vec![ip("192.168.1.2"), ip("192.168.1.3")]);
        // The IPv6 leases name no MAC.
        assert!(inv.leases.values().all(|l| l.ips.iter().all(|ip| ip.is_ipv4())));
        assert_eq!(inv.lease_ips(&UNKNOWN), Vec::<IpAddr>::new());
    }

    #[test]
    fn isc_dhcpd_leases() {
        let text = std::fs::read_to_string(data("dhcpd.leases")).unwrap();
        let parsed = parse_leases(&text);
        assert_eq!(parsed.format, Some(LeaseFormat::Isc));
        assert_eq!(parsed.malformed, vec![64, 69, 74], "{:?}", parsed.leases);
        let (inv, _) = Inventory::new(&config(vec![], vec![data("dhcpd.leases")])).unwrap();
        // The last block for the MAC wins: renewed on .11 with a new hostname.
        let d = inv.device(&XIAOMI);
        assert_eq!((d.name.as_str(), d.source), ("vacuum-2", NameSource::Dhcp));
        assert_eq!(inv.lease_ips(&XIAOMI), vec![ip("192.168.1.11")]);
        // Quoted hostname with an escaped quote, semicolon and brace; comments ignored.
        assert_eq!(inv.device(&APPLE).name, "Ann's \"iPhone\"; {x}");
        // Its lease on .20 was later freed and .20 given to nobody: the MAC's last block is
        // free, so nothing names it.
        let freed: Mac = [0x00, 0x1e, 0xfc, 0x00, 0x00, 0x02];
        assert_eq!(inv.device(&freed).source, NameSource::Fallback);
        assert_eq!(inv.lease_ips(&freed), Vec::<IpAddr>::new());
        // .30 was first leased to RANDOM then re-leased to another MAC: RANDOM has nothing.
        assert_eq!(inv.lease_ips(&RANDOM), Vec::<IpAddr>::new());
        let other: Mac = [0x00, 0x1e, 0xfc, 0x00, 0x00, 0x03];
        assert_eq!(inv.device(&other).name, "tablet");
        assert_eq!(inv.lease_ips(&other), vec![ip("192.168.1.30")]);
        // `ends never` and `ends epoch`.
        let lease = |mac: Mac| parsed.leases.iter().find(|l| l.mac == mac).unwrap().ends;
        assert_eq!(lease(other), u64::MAX);
        assert_eq!(lease(APPLE), 1_795_000_000);
        assert_eq!(lease(XIAOMI), days_from_civil(2026, 11, 23) as u64 * 86_400 + 20 * 3600);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2026, 11, 23), 20_780);
        assert_eq!(
            isc_time(&[
                Token::Word("ends".into()),
                Token::Word("1".into()),
                Token::Word("2024/02/29".into()),
                Token::Word("12:00:00".into())
            ]),
            Some(1_709_208_000)
        );
    }

    #[test]
    fn truncated_isc_file_keeps_complete_blocks() {
        let text = "lease 10.0.0.2 {\n  hardware ethernet 64:09:80:12:34:56;\n  client-hostname \"a\";\n}\nlease 10.0.0.3 {\n  hardware ethernet 60:8b:0e:aa:bb:cc;\n  client-hos";
        let parsed = parse_leases(text);
        assert_eq!(parsed.leases.len(), 1);
        assert_eq!(parsed.leases[0].hostname.as_deref(), Some("a"));
        assert_eq!(parsed.malformed, vec![5]);
    }

    #[test]
    fn precedence_inventory_then_dhcp_then_fallback() {
        let mut vacuum = device("64:09:80:12:34:56", "Vacuum");
        vacuum.group = "iot".into();
        vacuum.tags.insert("room".into(), "kitchen".into());
        let cfg = config(vec![vacuum], vec![data("dnsmasq.leases"), data("dhcpd.leases")]);
        let (inv, _) = Inventory::new(&cfg).unwrap();
        let d = inv.device(&XIAOMI);
        assert_eq!(d.name, "Vacuum");
        assert_eq!(d.group, "iot");
        assert_eq!(d.tags.get("room").map(String::as_str), Some("kitchen"));
        assert_eq!(d.source, NameSource::Inventory);
        assert_eq!(d.vendor, Vendor::Known("Xiaomi Communications Co Ltd".into()));
        // The lease addresses from both files, the later-ending lease first (dhcpd's ends in
        // 2026; dnsmasq's expiry is 2023).
        assert_eq!(inv.lease_ips(&XIAOMI), vec![ip("192.168.1.11"), ip("192.168.1.23")]);
        // Hostname from the more recent lease over both files.
        assert_eq!(inv.device(&APPLE).name, "Ann's \"iPhone\"; {x}");
        assert_eq!(inv.device(&APPLE).source, NameSource::Dhcp);
        let d = inv.device(&UNKNOWN);
        assert_eq!(
            (d.name.as_str(), d.source, d.vendor),
            ("device-334455", NameSource::Fallback, Vendor::Unknown)
        );
        assert_eq!(d.group, "");
        let d = inv.device(&[0xda, 0xa1, 0x19, 0xff, 0xee, 0xdd]);
        assert_eq!((d.name.as_str(), d.vendor), ("randomized-ffeedd", Vendor::Randomized));
        assert_eq!(NameSource::Inventory.as_str(), "inventory");
        assert_eq!(NameSource::Dhcp.as_str(), "dhcp");
        assert_eq!(NameSource::Fallback.as_str(), "fallback");
    }

    #[test]
    fn changed_file_is_reread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dhcp.leases");
        let (mut inv, warnings) = Inventory::new(&config(vec![], vec![path.clone()])).unwrap();
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("does not exist (yet)"), "{warnings:?}");
        assert!(inv.refresh().is_empty(), "a lasting problem is reported once");
        assert_eq!(inv.device(&XIAOMI).source, NameSource::Fallback);

        std::fs::write(&path, "1763900000 64:09:80:12:34:56 192.168.1.23 vacuum *\n").unwrap();
        assert!(inv.refresh().is_empty());
        assert_eq!(inv.device(&XIAOMI).name, "vacuum");

        // Same size, new content: the modification time tells (set explicitly, as a rewrite
        // within the filesystem's timestamp granularity would not change it).
        std::fs::write(&path, "1763900000 64:09:80:12:34:56 192.168.1.24 robot1 *\n").unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000)).unwrap();
        drop(f);
        assert!(inv.refresh().is_empty());
        assert_eq!(inv.device(&XIAOMI).name, "robot1");
        assert_eq!(inv.lease_ips(&XIAOMI), vec![ip("192.168.1.24")]);

        // Replaced by rename (a new inode), as some DHCP servers do.
        let tmp = dir.path().join("dhcp.leases.new");
        std::fs::write(&tmp, "1763900000 64:09:80:12:34:56 192.168.1.25 robot2 *\n").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert!(inv.refresh().is_empty());
        assert_eq!(inv.device(&XIAOMI).name, "robot2");

        // Unchanged: nothing re-read (the parsed leases are the same object).
        let before = inv.lease_files[0].leases.as_ptr();
        assert!(inv.refresh().is_empty());
        assert_eq!(inv.lease_files[0].leases.as_ptr(), before);

        // Garbage: one warning, and the old leases stay until the file is fixed.
        std::fs::write(&path, "hello world, this is not a lease file\n").unwrap();
        let w = inv.refresh();
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("not a dnsmasq or ISC dhcpd leases file"), "{w:?}");
        assert_eq!(inv.device(&XIAOMI).name, "robot2");
        assert!(inv.refresh().is_empty());

        // Caught mid-rewrite: empty, then a partial last line. Neither loses names or warns.
        std::fs::write(&path, "").unwrap();
        assert!(inv.refresh().is_empty());
        assert_eq!(inv.device(&XIAOMI).name, "robot2");
        std::fs::write(&path, "1763900000 64:09:80:12:34:56 192.168.1.25 robot2b *\n17639")
            .unwrap();
        assert!(inv.refresh().is_empty());
        assert_eq!(inv.device(&XIAOMI).name, "robot2b");

        // Removed: warned once, names kept.
        std::fs::write(&path, "1763900000 64:09:80:12:34:56 192.168.1.25 robot3 *\n").unwrap();
        assert!(inv.refresh().is_empty());
        std::fs::remove_file(&path).unwrap();
        let w = inv.refresh();
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(inv.device(&XIAOMI).name, "robot3");
        assert!(inv.refresh().is_empty());
    }

    #[test]
    fn oui_warnings() {
        let cfg = InventoryConfig {
            oui_databases: Some(vec![data("oui.csv"), PathBuf::from("/nonexistent/mam.csv")]),
            ..Default::default()
        };
        let (inv, warnings) = Inventory::new(&cfg).unwrap();
        assert_eq!(
            warnings,
            vec![
                "OUI database /nonexistent/mam.csv not found: vendors of its prefixes will be missing \
                 (check inventory.oui_databases)"
                    .to_string()
            ]
        );
        assert_eq!(inv.vendor(&XIAOMI), Vendor::Known("Xiaomi Communications Co Ltd".into()));
        // An explicit empty list: no lookup, no warning.
        let cfg = InventoryConfig { oui_databases: Some(vec![]), ..Default::default() };
        let (inv, warnings) = Inventory::new(&cfg).unwrap();
        assert!(warnings.is_empty());
        assert_eq!(inv.device(&XIAOMI).name, "device-123456");
        // A malformed registry file is an error naming its line.
        let cfg = InventoryConfig {
            oui_databases: Some(vec![data("bad-oui.csv")]),
            ..Default::default()
        };
        let e = Inventory::new(&cfg).unwrap_err().to_string();
        assert!(
            e.contains("bad-oui.csv:4:") && e.ends_with("(check inventory.oui_databases)"),
            "{e}"
        );
        // Defaults: Debian's files, or the apt-get hint.
        let (inv, warnings) = Inventory::new(&InventoryConfig::default()).unwrap();
        if Path::new(DEFAULT_OUI_PATHS[0]).exists() {
            assert!(warnings.iter().all(|w| !w.contains("oui.csv")), "{warnings:?}");
            assert_eq!(inv.device(&XIAOMI).name, "xiaomi-123456");
        } else {
            assert!(
                warnings.contains(
                    &"OUI database /usr/share/ieee-data/oui.csv not found: vendors will be empty \
                      (apt-get install ieee-data)"
                        .to_string()
                ),
                "{warnings:?}"
            );
        }
    }
}
