//! One lease, as every lease format's parser gives it, and what the parsers share. A leaf of
//! the inventory: the parsers and `lease_file` import it, it imports neither.

use std::net::IpAddr;

use crate::types::Mac;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Lease {
    pub(super) mac: Mac,
    pub(super) ip: IpAddr,
    pub(super) hostname: Option<String>,
    /// Unix seconds; `u64::MAX` for a lease that never ends.
    pub(super) ends: u64,
}

/// What a format's parser read from one file.
#[derive(Debug, Default)]
pub(super) struct Parsed {
    pub(super) leases: Vec<Lease>,
    /// 1-based lines of the entries skipped.
    pub(super) malformed: Vec<usize>,
}

/// The first word of the first line that is not blank or a comment, if any: what most
/// formats are recognized by.
pub(super) fn first_word(text: &str) -> Option<&str> {
    let first =
        text.lines().map(|l| l.split('#').next().unwrap_or("").trim()).find(|l| !l.is_empty())?;
    first.split(|c: char| c.is_whitespace() || c == '{' || c == ';').next()
}

/// A device-chosen hostname made safe for a label: no control characters, at most 63
/// characters (a DNS label), none for `*` or empty.
pub(super) fn clean_hostname(raw: &str) -> Option<String> {
    let cleaned: String = raw.chars().filter(|c| !c.is_control()).take(63).collect();
    let cleaned = cleaned.trim();
    (!cleaned.is_empty() && cleaned != "*").then(|| cleaned.to_string())
}
