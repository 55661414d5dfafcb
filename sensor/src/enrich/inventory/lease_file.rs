//! The DHCP servers' lease files: each re-read only when its size, modification time or inode
//! changed (so it can be checked every poll), its format recognized by its content.

use std::{
    collections::HashMap, net::IpAddr, os::unix::fs::MetadataExt as _, path::PathBuf,
    time::SystemTime,
};

use super::{
    dnsmasq::parse_dnsmasq,
    isc::parse_isc,
    lease::{Lease, LeaseFormat, ParsedLeases},
};
use crate::types::Mac;

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

pub(super) fn parse_leases(text: &str) -> ParsedLeases {
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
