//! Plain HTTP/1.x requests from clients: the Host header names the destination.
//!
//! httparse parses the request. The kernel's copy can end anywhere, so a request whose head is
//! not complete (httparse's `Partial`) is accepted when the Host header line is complete: the
//! copy is cut after its last complete line, an empty line is appended, and that head is parsed
//! again. (httparse leaves the headers it managed to parse in the caller's array on `Partial`,
//! but does not document it; re-parsing a completed head relies only on documented behaviour.)
//!
//! Results: `Ok(Some(host))` lower-cased, port and trailing dot removed; `Ok(None)` for a
//! complete head without Host (HTTP/1.0), an empty Host, or a Host that is an IP literal
//! (`[2001:db8::1]:8080`, a bare `::1`, `192.0.2.1`: a literal names nothing);
//! `Err(Truncated)` when the copy ends before the head does and no Host line is complete;
//! `Err(NotHttpRequest)` when the method or version is not HTTP/1.x's; `Err(InvalidHostname)`
//! for a Host that is not a plausible host name; `Err(Malformed)` otherwise (bad header syntax,
//! bad port, several different Host headers, more than 128 headers).

use httparse::{Error as HttpError, Header, Request, Status};

use super::parse::{ParseError, is_ipv4_literal, normalize_hostname};

/// Headers parsed at most. A 1280-byte copy holds far fewer real headers than this.
const MAX_HEADERS: usize = 128;

/// The Host of the HTTP/1.x request starting `payload`. See the module documentation.
pub fn request_host(payload: &[u8]) -> Result<Option<String>, ParseError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = Request::new(&mut headers);
    match req.parse(payload).map_err(http_error)? {
        Status::Complete(_) => host_of(req.headers),
        Status::Partial => partial_head_host(payload),
    }
}

/// The head is cut short: parse its complete lines as a head of their own.
fn partial_head_host(payload: &[u8]) -> Result<Option<String>, ParseError> {
    let Some(last_newline) = payload.iter().rposition(|&b| b == b'\n') else {
        return Err(ParseError::Truncated);
    };
    let mut head = payload[..=last_newline].to_vec();
    head.extend_from_slice(b"\r\n");
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = Request::new(&mut headers);
    match req.parse(&head).map_err(http_error)? {
        Status::Complete(_) => match host_of(req.headers)? {
            Some(host) => Ok(Some(host)),
            // No Host (yet), or an IP literal: only a complete head can say there is no name.
            None if has_host(req.headers) => Ok(None),
            None => Err(ParseError::Truncated),
        },
        Status::Partial => Err(ParseError::Truncated),
    }
}

fn has_host(headers: &[Header<'_>]) -> bool {
    headers.iter().any(|h| h.name.eq_ignore_ascii_case("host"))
}

fn http_error(e: HttpError) -> ParseError {
    match e {
        HttpError::Token | HttpError::Version => ParseError::NotHttpRequest,
        other => ParseError::Malformed(format!("HTTP: {other}")),
    }
}

/// The Host header's name part, normalised.
fn host_of(headers: &[Header<'_>]) -> Result<Option<String>, ParseError> {
    let mut hosts = headers.iter().filter(|h| h.name.eq_ignore_ascii_case("host"));
    let Some(first) = hosts.next() else {
        return Ok(None);
    };
    if hosts.any(|h| h.value.trim_ascii() != first.value.trim_ascii()) {
        return Err(ParseError::Malformed("several different Host headers".into()));
    }
    let value = first.value.trim_ascii();
    if value.is_empty() {
        return Ok(None);
    }
    // IPv6 literal: "[" address "]" [":" port]
    if let Some(rest) = value.strip_prefix(b"[") {
        let Some(close) = rest.iter().position(|&b| b == b']') else {
            return Err(ParseError::Malformed("unterminated IPv6 literal in Host".into()));
        };
        check_port(&rest[close + 1..])?;
        return Ok(None);
    }
    // Some clients send an IPv6 literal without brackets.
    if std::str::from_utf8(value).is_ok_and(|v| v.parse::<std::net::Ipv6Addr>().is_ok()) {
        return Ok(None);
    }
    let (name, port) = match value.iter().position(|&b| b == b':') {
        Some(colon) => (&value[..colon], &value[colon..]),
        None => (value, &b""[..]),
    };
    check_port(port)?;
    let name = normalize_hostname(name)?;
    Ok((!is_ipv4_literal(&name)).then_some(name))
}

/// `port` is empty or ":" followed by at most 5 digits (RFC 3986 allows an empty port).
fn check_port(port: &[u8]) -> Result<(), ParseError> {
    match port {
        [] => Ok(()),
        [b':', digits @ ..] if digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit) => Ok(()),
        _ => Err(ParseError::Malformed("bad port in Host".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(req: &str) -> Result<Option<String>, ParseError> {
        request_host(req.as_bytes())
    }

    fn some(s: &str) -> Result<Option<String>, ParseError> {
        Ok(Some(s.to_string()))
    }

    // What curl 7.88.1 sends for `curl http://www.example.test:8080/index.html`.
    const CURL_GET: &str = "GET /index.html HTTP/1.1\r\nHost: www.example.test:8080\r\n\
                            User-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n";

    #[test]
    fn normal_requests() {
        assert_eq!(host(CURL_GET), some("www.example.test"));
        assert_eq!(host("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"), some("example.com"));
        assert_eq!(
            host("POST /api HTTP/1.1\r\nContent-Length: 5\r\nHost: api.example.com\r\n\r\nhello"),
            some("api.example.com")
        );
        assert_eq!(host("GET / HTTP/1.0\nHost: example.com\n\n"), some("example.com"));
        assert_eq!(host("\r\nGET / HTTP/1.1\r\nHost: example.com\r\n\r\n"), some("example.com"));
        assert_eq!(
            host("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"),
            some("example.com")
        );
    }

    #[test]
    fn case_port_and_trailing_dot() {
        assert_eq!(
            host("GET / HTTP/1.1\r\nHOST: WWW.Example.COM\r\n\r\n"),
            some("www.example.com")
        );
        assert_eq!(host("GET / HTTP/1.1\r\nhost:example.com:8080\r\n\r\n"), some("example.com"));
        assert_eq!(host("GET / HTTP/1.1\r\nhOsT:  example.com.:80  \r\n\r\n"), some("example.com"));
        assert_eq!(host("GET / HTTP/1.1\r\nHost: example.com:\r\n\r\n"), some("example.com"));
        assert!(matches!(
            host("GET / HTTP/1.1\r\nHost: example.com:http\r\n\r\n"),
            Err(ParseError::Malformed(_))
        ));
        assert!(matches!(
            host("GET / HTTP/1.1\r\nHost: example.com:1:2\r\n\r\n"),
            Err(ParseError::Malformed(_))
        ));
        assert!(matches!(
            host("GET / HTTP/1.1\r\nHost: example.com:123456\r\n\r\n"),
            Err(ParseError::Malformed(_))
        ));
    }

    #[test]
    fn ip_literals_and_missing_host() {
        assert_eq!(host("GET / HTTP/1.1\r\nHost: [2001:db8::1]:8080\r\n\r\n"), Ok(None));
        assert_eq!(host("GET / HTTP/1.1\r\nHost: [::1]\r\n\r\n"), Ok(None));
        assert_eq!(host("GET / HTTP/1.1\r\nHost: 192.0.2.1:80\r\n\r\n"), Ok(None));
        assert_eq!(host("GET / HTTP/1.0\r\nUser-Agent: x\r\n\r\n"), Ok(None));
        assert_eq!(host("GET / HTTP/1.1\r\nHost:\r\n\r\n"), Ok(None));
        assert!(matches!(
            host("GET / HTTP/1.1\r\nHost: [::1\r\n\r\n"),
            Err(ParseError::Malformed(_))
        ));
        assert_eq!(host("GET / HTTP/1.1\r\nHost: ::1\r\n\r\n"), Ok(None));
        assert!(matches!(
            host("GET / HTTP/1.1\r\nHost: ::1:x\r\n\r\n"),
            Err(ParseError::Malformed(_))
        ));
    }

    #[test]
    fn invalid_hosts() {
        for bad in ["exa mple.com", "a..b", "user@example.com", "example.com/x", "caf\u{e9}.test"] {
            let req = format!("GET / HTTP/1.1\r\nHost: {bad}\r\n\r\n");
            let got = host(&req);
            assert!(
                matches!(got, Err(ParseError::InvalidHostname) | Err(ParseError::Malformed(_))),
                "{bad}: {got:?}"
            );
        }
        let long = format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", "a".repeat(254));
        assert_eq!(host(&long), Err(ParseError::InvalidHostname));
    }

    #[test]
    fn several_host_headers() {
        assert_eq!(
            host("GET / HTTP/1.1\r\nHost: a.example\r\nHost: a.example\r\n\r\n"),
            some("a.example")
        );
        assert!(matches!(
            host("GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n"),
            Err(ParseError::Malformed(_))
        ));
    }

    #[test]
    fn partial_requests() {
        // Host complete, the rest cut.
        assert_eq!(host("GET / HTTP/1.1\r\nHost: example.com\r\nUser-Ag"), some("example.com"));
        assert_eq!(host("GET / HTTP/1.1\r\nHost: example.com\r\n"), some("example.com"));
        assert_eq!(host("GET / HTTP/1.1\r\nHost: example.com\r\n\r"), some("example.com"));
        assert_eq!(host("GET / HTTP/1.1\r\nHost: [::1]\r\nAcc"), Ok(None));
        // Host not (completely) there yet.
        assert_eq!(host("GET / HTTP/1.1\r\nHost: exam"), Err(ParseError::Truncated));
        assert_eq!(host("GET / HTTP/1.1\r\nAccept: */*\r\n"), Err(ParseError::Truncated));
        assert_eq!(host("GET / HTTP/1.1\r\n"), Err(ParseError::Truncated));
        assert_eq!(host("GET /very/long/pa"), Err(ParseError::Truncated));
        assert_eq!(host(""), Err(ParseError::Truncated));
    }

    #[test]
    fn every_prefix_of_a_request() {
        let host_line_end = CURL_GET.find("8080\r\n").unwrap() + 6;
        for cut in 0..CURL_GET.len() {
            let got = host(&CURL_GET[..cut]);
            if cut < host_line_end {
                assert_eq!(got, Err(ParseError::Truncated), "cut at {cut}");
            } else {
                assert_eq!(got, some("www.example.test"), "cut at {cut}");
            }
        }
    }

    #[test]
    fn not_http() {
        assert_eq!(request_host(&[0x16, 0x03, 0x01, 0x02, 0x00]), Err(ParseError::NotHttpRequest));
        assert_eq!(host("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Err(ParseError::NotHttpRequest));
        assert_eq!(host("GET / HTTP/3\r\n\r\n"), Err(ParseError::NotHttpRequest));
        assert_eq!(host("HTTP/1.1 200 OK\r\n\r\n"), Err(ParseError::NotHttpRequest));
        assert!(host("GET / HTTP/1.1\r\nBad Header: x\r\n\r\n").is_err());
        assert!(matches!(
            host("GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n"),
            Err(ParseError::Malformed(_))
        ));
    }

    #[test]
    fn many_headers() {
        let mut req = String::from("GET / HTTP/1.1\r\n");
        for i in 0..MAX_HEADERS + 1 {
            req.push_str(&format!("X-{i}: y\r\n"));
        }
        req.push_str("Host: example.com\r\n\r\n");
        assert!(matches!(host(&req), Err(ParseError::Malformed(_))));
    }

    #[test]
    fn garbage_never_panics() {
        let mut x: u32 = 0xdead_beef;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        for _ in 0..20_000 {
            let mut v = CURL_GET.as_bytes().to_vec();
            for _ in 0..(next() % 4 + 1) {
                let i = next() as usize % v.len();
                v[i] = [b'\r', b'\n', b':', b'[', b']', b' ', next() as u8][next() as usize % 7];
            }
            let cut = next() as usize % (v.len() + 1);
            let _ = request_host(&v);
            let _ = request_host(&v[..cut]);
        }
    }
}
