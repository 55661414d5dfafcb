//! ISC dhcpd's lease file (`/var/lib/dhcp/dhcpd.leases`): a small tokenizer and statement
//! reader for its `lease <ip> { ... }` blocks.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use super::lease::{Lease, Parsed, clean_hostname, first_word};
use crate::types::mac;

pub(super) const NAME: &str = "ISC dhcpd";

/// A file whose first statement is one dhcpd writes at the top level.
pub(super) fn recognizes(text: &str) -> bool {
    const STATEMENTS: &[&str] = &[
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
    first_word(text).is_some_and(|word| STATEMENTS.contains(&word))
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
pub(super) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
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
pub(super) fn parse(text: &str) -> Parsed {
    let mut out = Parsed::default();
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
                    match word(s.words.get(2)).and_then(|w| mac::parse(w).ok()) {
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
    use super::*;

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
        let parsed = parse(text);
        assert_eq!(parsed.leases.len(), 1);
        assert_eq!(parsed.leases[0].hostname.as_deref(), Some("a"));
        assert_eq!(parsed.malformed, vec![5]);
    }
}
