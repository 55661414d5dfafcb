//! The four registry file formats: the IEEE's CSV and TXT files (each in its MA-L, MA-M, MA-S
//! and IAB forms), and Wireshark's `manuf`. Each parser hands its entries to a sink, so none
//! knows how they are stored. Tested through `OuiDb::load` with the samples in
//! tests/data/inventory.

use crate::enrich::error::EnrichError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    IeeeCsv,
    IeeeTxt,
    Manuf,
}

/// (1-based line, what is wrong there: one of `EnrichError`'s line problems)
pub(super) type LineError = (usize, EnrichError);

pub(super) fn detect(text: &str) -> Option<Format> {
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
pub(super) type Sink<'a> = dyn FnMut(u8, u64, &str) -> Result<(), EnrichError> + 'a;

pub(super) fn parse_ieee_csv(text: &str, add: &mut Sink<'_>) -> Result<(), LineError> {
    let mut header = true;
    for_each_csv_record(text, |line, fields| {
        if std::mem::take(&mut header) {
            return Ok(());
        }
        if fields.len() < 3 {
            return Err((line, EnrichError::CsvFields { found: fields.len() }));
        }
        let assignment = fields[1].trim();
        let (bits, value) = parse_hex_prefix(assignment)
            .filter(|(bits, _)| (24..=48).contains(bits))
            .ok_or_else(|| (line, EnrichError::IeeePrefix { text: assignment.to_string() }))?;
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
        return Err((quote_line, EnrichError::CsvQuote));
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
pub(super) fn parse_ieee_txt(text: &str, add: &mut Sink<'_>) -> Result<(), LineError> {
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
                .ok_or_else(|| (line, EnrichError::IeeeOui { text: prefix.to_string() }))?;
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
                let range = range.to_string();
                return Err((line, EnrichError::IeeeRange { range, oui_line: hex_line }));
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
pub(super) fn parse_manuf(text: &str, add: &mut Sink<'_>) -> Result<(), LineError> {
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
fn parse_manuf_line(line: &str) -> Result<(u8, u64, &str), EnrichError> {
    let (prefix, rest) = match line.split_once(|c: char| c.is_whitespace()) {
        Some((p, r)) => (p, r.trim()),
        None => (line, ""),
    };
    let (addr, mask) = match prefix.split_once('/') {
        Some((a, m)) => (a, Some(m)),
        None => (prefix, None),
    };
    let bad = || EnrichError::ManufPrefix { text: prefix.to_string() };
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
