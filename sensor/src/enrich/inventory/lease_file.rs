//! The DHCP servers' lease files: each re-read only when its size, modification time or inode
//! changed (so it can be checked every poll), its format recognized by its content, and the
//! leases of all files merged per MAC. [`LeaseFormat`] lists the formats.

use std::{
    collections::HashMap, net::IpAddr, os::unix::fs::MetadataExt as _, path::PathBuf,
    time::SystemTime,
};

use super::{
    dnsmasq, isc,
    lease::{Lease, Parsed},
};
use crate::{enrich::error::EnrichError, types::Mac};

/// The configured lease files, and their leases merged per MAC.
#[derive(Debug)]
pub(super) struct LeaseFiles {
    pub(super) files: Vec<LeaseFile>,
    /// Per MAC, merged over all lease files.
    pub(super) by_mac: HashMap<Mac, MacLeases>,
}

impl LeaseFiles {
    /// The files at `paths`, not read yet: [`LeaseFiles::refresh`] reads them.
    pub(super) fn new(paths: &[PathBuf]) -> LeaseFiles {
        let files = paths
            .iter()
            .map(|path| LeaseFile {
                path: path.clone(),
                stamp: None,
                leases: Vec::new(),
                last_warning: None,
            })
            .collect();
        LeaseFiles { files, by_mac: HashMap::new() }
    }

    /// Re-reads the lease files that changed since the last call. Cheap when none did (one
    /// `stat` per file). Returns warnings for files that cannot be read, each once until it
    /// changes; a file that cannot be read keeps the leases last read from it.
    pub(super) fn refresh(&mut self) -> Vec<String> {
        let mut warnings = Vec::new();
        let mut changed = false;
        for file in &mut self.files {
            let warning = match file.check() {
                Ok(c) => {
                    changed |= c.changed;
                    c.warning
                }
                Err(w) => Some(w.to_string()),
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

    /// The hostname of `mac`'s most recent lease that has one.
    pub(super) fn hostname(&self, mac: &Mac) -> Option<&String> {
        self.by_mac.get(mac).and_then(|l| l.hostname.as_ref())
    }

    /// The addresses leased to `mac`, most recent first.
    pub(super) fn ips(&self, mac: &Mac) -> Vec<IpAddr> {
        self.by_mac.get(mac).map(|l| l.ips.clone()).unwrap_or_default()
    }

    /// Leases from all files per MAC, most recent first: latest end, then later file.
    fn merge(&mut self) {
        let mut all: Vec<(u64, usize, usize, &Lease)> = Vec::new();
        for (f, file) in self.files.iter().enumerate() {
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
        self.by_mac = merged;
    }
}

#[derive(Debug)]
pub(super) struct LeaseFile {
    path: PathBuf,
    stamp: Option<Stamp>,
    pub(super) leases: Vec<Lease>,
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

#[derive(Debug, Default)]
pub(super) struct MacLeases {
    hostname: Option<String>,
    /// Most recent first.
    pub(super) ips: Vec<IpAddr>,
}

struct Checked {
    changed: bool,
    warning: Option<String>,
}

impl LeaseFile {
    /// Re-reads the file if its stamp changed. Err: a warning, the old leases kept.
    fn check(&mut self) -> Result<Checked, EnrichError> {
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(EnrichError::LeasesMissing { path: self.path.clone() });
            }
            Err(error) => return Err(EnrichError::LeasesRead { path: self.path.clone(), error }),
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
            .map_err(|error| EnrichError::LeasesRead { path: self.path.clone(), error })?;
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
                warning: Some(
                    EnrichError::LeasesFormat {
                        path: self.path.clone(),
                        formats: LeaseFormat::names(),
                    }
                    .to_string(),
                ),
            });
        }
        self.leases = parsed.leases;
        let warning = parsed.malformed.first().map(|&first| {
            let count = parsed.malformed.len();
            EnrichError::LeasesMalformed { path: self.path.clone(), count, first }.to_string()
        });
        Ok(Checked { changed: true, warning })
    }
}

/// The lease file formats, each read by its own file: the one place that lists them. A new
/// format is a variant, its arm in each match below and its place in [`LeaseFormat::ALL`]
/// (docs/design.md, "Adding a lease format").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LeaseFormat {
    Dnsmasq,
    Isc,
}

impl LeaseFormat {
    /// Every format, in the order they are asked whether a file is theirs and named in
    /// warnings. dnsmasq's takes a file without a statement (blank or only comments, as
    /// dnsmasq leaves it without leases): a format whose lines all start with `#` goes first.
    const ALL: [LeaseFormat; 2] = [LeaseFormat::Dnsmasq, LeaseFormat::Isc];

    /// As the user knows it, for warnings.
    fn name(self) -> &'static str {
        match self {
            LeaseFormat::Dnsmasq => dnsmasq::NAME,
            LeaseFormat::Isc => isc::NAME,
        }
    }

    /// Whether `text` is a file of this format, from its first lines.
    fn recognizes(self, text: &str) -> bool {
        match self {
            LeaseFormat::Dnsmasq => dnsmasq::recognizes(text),
            LeaseFormat::Isc => isc::recognizes(text),
        }
    }

    fn parse(self, text: &str) -> Parsed {
        match self {
            LeaseFormat::Dnsmasq => dnsmasq::parse(text),
            LeaseFormat::Isc => isc::parse(text),
        }
    }

    /// The formats' names as a warning lists them: `a`, `a or b`, `a, b or c`.
    pub(super) fn names() -> String {
        let names = LeaseFormat::ALL.map(LeaseFormat::name);
        match names.split_last() {
            Some((last, [])) => last.to_string(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct ParsedLeases {
    /// None: no format recognized the text.
    pub(super) format: Option<LeaseFormat>,
    pub(super) leases: Vec<Lease>,
    /// 1-based lines of the entries skipped.
    pub(super) malformed: Vec<usize>,
}

/// The leases of `text`, read by the first format that recognizes it.
pub(super) fn parse_leases(text: &str) -> ParsedLeases {
    let Some(format) = LeaseFormat::ALL.into_iter().find(|f| f.recognizes(text)) else {
        return ParsedLeases::default();
    };
    let Parsed { leases, malformed } = format.parse(text);
    ParsedLeases { format: Some(format), leases, malformed }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_format_is_told_by_its_first_statement() {
        for (text, format) in [
            ("1763900000 64:09:80:12:34:56 192.168.1.23 vacuum *\n", Some(LeaseFormat::Dnsmasq)),
            ("duid 00:01:00:01:2c:5f:1a:2b:64:09:80:12:34:56\n", Some(LeaseFormat::Dnsmasq)),
            // dnsmasq writes an empty file when it has no leases.
            ("", Some(LeaseFormat::Dnsmasq)),
            ("# nothing yet\n\n", Some(LeaseFormat::Dnsmasq)),
            ("lease 10.0.0.2 {\n}\n", Some(LeaseFormat::Isc)),
            ("# dhcpd\nauthoring-byte-order little-endian;\n", Some(LeaseFormat::Isc)),
            ("server-duid \"x\";\n", Some(LeaseFormat::Isc)),
            ("hello world, this is not a lease file\n", None),
            ("{ 1763900000 }\n", None),
        ] {
            assert_eq!(parse_leases(text).format, format, "{text:?}");
        }
        assert_eq!(LeaseFormat::names(), "dnsmasq or ISC dhcpd");
    }
}
