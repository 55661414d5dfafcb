//! What the DNS, TLS and HTTP parsers share: the error type and host-name normalisation.

/// Why a payload handed up by the kernel did not yield a name. One type for the three parsers
/// ([`super::dns`], [`super::tls`], [`super::http`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The payload ends before the structure it starts does (cut short by the kernel copy, or a
    /// length/count field claims more than is there).
    #[error("truncated")]
    Truncated,
    /// The bytes are inconsistent with the protocol.
    #[error("malformed: {0}")]
    Malformed(String),
    /// A TLS record that is not a handshake record starting with a ClientHello.
    #[error("not a TLS ClientHello")]
    NotClientHello,
    /// Not an HTTP/1.x request (bad method token or version).
    #[error("not an HTTP/1.x request")]
    NotHttpRequest,
    /// The protocol was fine but the name in it is not a plausible host name (non-ASCII,
    /// longer than 253 bytes, empty labels, characters outside `[A-Za-z0-9_-]`).
    #[error("implausible host name")]
    InvalidHostname,
}

/// Checks that `raw` is a plausible DNS host name and returns it lower-cased without a
/// trailing dot: ASCII letters, digits, `-` and `_` only, labels of 1 to 63 bytes, at most 253
/// bytes in total. Deliberately lenient about `_` and leading/trailing `-` (seen in the wild);
/// strict about anything that could not appear in a DNS name or a metric label.
pub fn normalize_hostname(raw: &[u8]) -> Result<String, ParseError> {
    let raw = raw.strip_suffix(b".").unwrap_or(raw);
    if raw.is_empty() || raw.len() > 253 {
        return Err(ParseError::InvalidHostname);
    }
    for label in raw.split(|&b| b == b'.') {
        if label.is_empty() || label.len() > 63 {
            return Err(ParseError::InvalidHostname);
        }
        if !label.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(ParseError::InvalidHostname);
        }
    }
    // All bytes are ASCII, checked above.
    Ok(String::from_utf8_lossy(raw).to_ascii_lowercase())
}

/// True when `host` (already normalised) is an IPv4 address literal rather than a name.
pub(crate) fn is_ipv4_literal(host: &str) -> bool {
    host.parse::<std::net::Ipv4Addr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_normalisation() {
        assert_eq!(normalize_hostname(b"WWW.Example.COM.").unwrap(), "www.example.com");
        assert_eq!(normalize_hostname(b"_443._tcp.x-y.example").unwrap(), "_443._tcp.x-y.example");
        assert_eq!(normalize_hostname(b"localhost").unwrap(), "localhost");
        for bad in [
            &b""[..],
            b".",
            b"a..b",
            b".a",
            b"a b",
            b"a/b",
            b"caf\xc3\xa9.example",
            b"a\0b",
            b"*.example.com",
        ] {
            assert_eq!(normalize_hostname(bad), Err(ParseError::InvalidHostname), "{bad:?}");
        }
        let label63 = "a".repeat(63);
        assert!(normalize_hostname(label63.as_bytes()).is_ok());
        assert!(normalize_hostname("a".repeat(64).as_bytes()).is_err());
        // 4 × 63 + 3 dots = 255 > 253
        let long = [label63.as_str(); 4].join(".");
        assert!(normalize_hostname(long.as_bytes()).is_err());
        let ok253 = format!("{}.{}.{}.{}", label63, label63, label63, "a".repeat(61));
        assert_eq!(ok253.len(), 253);
        assert!(normalize_hostname(ok253.as_bytes()).is_ok());
        assert!(is_ipv4_literal("192.0.2.1"));
        assert!(!is_ipv4_literal("192.0.2.example"));
    }
}
