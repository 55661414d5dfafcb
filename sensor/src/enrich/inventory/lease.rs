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

/// A device-chosen hostname made safe for a label and a terminal table: no control
/// characters and no invisible formatting characters (bidi overrides and isolates, zero-width
/// characters), which a hostile device could use to make its name read as another's; at most
/// 63 characters (a DNS label); none for `*` or empty.
pub(super) fn clean_hostname(raw: &str) -> Option<String> {
    let cleaned: String =
        raw.chars().filter(|&c| !c.is_control() && !is_invisible_format(c)).take(63).collect();
    let cleaned = cleaned.trim();
    (!cleaned.is_empty() && cleaned != "*").then(|| cleaned.to_string())
}

/// Unicode format characters that change how the text around them displays, or do not
/// display at all: the bidi marks, embeddings, overrides and isolates, the zero-width
/// characters, invisible operators and the byte-order mark.
fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{061C}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_lose_controls_and_invisible_formatting() {
        assert_eq!(clean_hostname("redmi-note").as_deref(), Some("redmi-note"));
        // "laptop<RLO>gpj.exe" would show as "laptopexe.jpg" in a table.
        assert_eq!(clean_hostname("laptop\u{202E}gpj.exe").as_deref(), Some("laptopgpj.exe"));
        assert_eq!(
            clean_hostname("\u{2066}tv\u{2069}\u{200B}\u{200F}\u{FEFF}-room\u{7}\n").as_deref(),
            Some("tv-room")
        );
        assert_eq!(clean_hostname("Zoë's iPhone").as_deref(), Some("Zoë's iPhone"));
        assert_eq!(clean_hostname("\u{202E}\u{200B}"), None);
        assert_eq!(clean_hostname(" * "), None);
        assert_eq!(clean_hostname(&"a".repeat(80)).map(|h| h.len()), Some(63));
    }
}
