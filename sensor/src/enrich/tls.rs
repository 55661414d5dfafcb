//! TLS ClientHellos from clients (any TCP port): the server name (SNI) the client asked for.
//!
//! The kernel copies the start of the TCP payload, at most 1280 bytes, so a large ClientHello
//! (Chrome's with a post-quantum key share is about 1.8 kB) arrives cut short. tls-parser needs
//! the whole message: its ClientHello parser treats an extension block that runs past the end
//! as "no extensions" and reports a cut inside the cipher suites as a length error, so with it
//! alone a cut cannot be told from garbage and a present server_name would be missed. So:
//! - whole ClientHello here: tls-parser parses its fixed fields (and every byte must belong to
//!   it);
//! - cut short: `walk_cut_short` steps over the fixed fields itself (a few bounds-checked
//!   reads);
//! - either way, `find_sni` frames the extensions one by one and hands each *complete* one to
//!   tls-parser, up to the first server_name (and notes an encrypted_client_hello among them:
//!   [`Hello::ech`]).
//!
//! QUIC carries the same ClientHello in CRYPTO frames, without the record header:
//! [`handshake_sni`] / [`handshake_info`] read it there (see [`super::quic`]).
//!
//! A server_name that is fully present is therefore found wherever the copy ends; one that is
//! not gives `Truncated`. Only the first record is read: a ClientHello fragmented over several
//! records is treated like one cut short at the end of the first. (Chrome randomises its
//! extension order, so in a cut-short Chrome ClientHello the server_name may be beyond the copy.)
//!
//! Results: `Ok(Some(name))` lower-cased, without a trailing dot; `Ok(None)` for a complete
//! ClientHello without a host_name server name, or one whose name is an IPv4 literal (RFC 6066
//! forbids literals; a literal names nothing); `Err(NotClientHello)` for another record or
//! handshake type; `Err(Truncated)` when the copy ends before the server_name extension (or the
//! end of the ClientHello) does; `Err(InvalidHostname)` for a name that is not a plausible host
//! name; `Err(Malformed)` otherwise.

use tls_parser::{
    MAX_RECORD_LEN, SNIType, TlsExtension, TlsRecordType, parse_tls_client_hello_extension,
    parse_tls_handshake_client_hello, parse_tls_record_header,
};

use super::parse::{ParseError, is_ipv4_literal, normalize_hostname};

/// TLS record header: type (1), version (2), length (2).
const RECORD_HEADER_LEN: usize = 5;
/// Handshake header: type (1), length (3).
const HANDSHAKE_HEADER_LEN: usize = 4;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
/// encrypted_client_hello (TLS Encrypted Client Hello).
const EXT_ENCRYPTED_CLIENT_HELLO: u16 = 0xfe0d;

/// What a ClientHello tells about the connection it opens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hello {
    /// The server_name's host_name (see the module documentation for `None`).
    pub sni: Option<String>,
    /// The hello carries an `encrypted_client_hello` extension (TLS Encrypted Client Hello, type
    /// 0xfe0d): `sni` then names only the client-facing (outer) server, not the one the client
    /// reaches. Chrome sends a GREASE one (random bytes, same type) when it has no ECH config,
    /// which cannot be told apart from outside: this says "ECH offered or greased". Only the
    /// extensions in the copy are looked at: in a cut-short hello, one past the copy is missed.
    pub ech: bool,
}

/// The server_name (host_name type) of the ClientHello starting `payload` (a TLS record). See the
/// module documentation for the results.
pub fn client_hello_sni(payload: &[u8]) -> Result<Option<String>, ParseError> {
    client_hello_info(payload).map(|hello| hello.sni)
}

/// [`client_hello_sni`] and whether the hello offers ECH.
pub fn client_hello_info(payload: &[u8]) -> Result<Hello, ParseError> {
    match payload.first() {
        None => return Err(ParseError::Truncated),
        Some(&t) if t != u8::from(TlsRecordType::Handshake) => {
            return Err(ParseError::NotClientHello);
        }
        Some(_) => {}
    }
    if payload.len() < RECORD_HEADER_LEN {
        return Err(ParseError::Truncated);
    }
    let (rest, hdr) = parse_tls_record_header(payload)
        .map_err(|e| ParseError::Malformed(format!("record header: {e:?}")))?;
    let record_len = usize::from(hdr.len);
    if record_len == 0 || hdr.len > MAX_RECORD_LEN {
        return Err(ParseError::Malformed(format!("record length {record_len}")));
    }
    handshake_info(&rest[..rest.len().min(record_len)])
}

/// The server_name of a ClientHello handshake message without a record header (as QUIC's CRYPTO
/// frames carry it), whole or a prefix; the same results as [`client_hello_sni`].
pub fn handshake_sni(msg: &[u8]) -> Result<Option<String>, ParseError> {
    handshake_info(msg).map(|hello| hello.sni)
}

/// [`handshake_sni`] and whether the hello offers ECH.
pub fn handshake_info(msg: &[u8]) -> Result<Hello, ParseError> {
    match msg.first() {
        None => return Err(ParseError::Truncated),
        Some(&HANDSHAKE_CLIENT_HELLO) => {}
        Some(_) => return Err(ParseError::NotClientHello),
    }
    let Some(&[_, a, b, c]) = msg.get(..HANDSHAKE_HEADER_LEN) else {
        return Err(ParseError::Truncated);
    };
    let hello_len = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
    let hello = &msg[HANDSHAKE_HEADER_LEN..];

    match hello.get(..hello_len) {
        Some(hello) => complete_hello(hello),
        // Cut short by the copy, or continued in a following record.
        None => walk_cut_short(hello),
    }
}

/// A whole ClientHello body: tls-parser parses the fixed fields; every byte must belong to it.
fn complete_hello(hello: &[u8]) -> Result<Hello, ParseError> {
    let (rest, ch) = parse_tls_handshake_client_hello(hello)
        .map_err(|e| ParseError::Malformed(format!("ClientHello: {e:?}")))?;
    if !rest.is_empty() {
        // Includes an extensions length larger than what follows it (tls-parser then reports
        // no extensions and leaves the bytes).
        return Err(ParseError::Malformed(format!(
            "{} bytes after the ClientHello's fields",
            rest.len()
        )));
    }
    match ch.ext {
        None => Ok(Hello::default()),
        Some(ext) => {
            let found = find_sni(ext, true)?;
            Ok(Hello { sni: found.sni.flatten(), ech: found.ech })
        }
    }
}

/// A ClientHello body of which only a prefix is here: step over the fixed fields, then look for
/// the server_name in the complete extensions.
fn walk_cut_short(hello: &[u8]) -> Result<Hello, ParseError> {
    let mut r = Reader(hello);
    r.skip(2 + 32)?; // legacy_version, random
    let session_id = r.u8()?;
    if session_id > 32 {
        return Err(ParseError::Malformed(format!("session id of {session_id} bytes")));
    }
    r.skip(usize::from(session_id))?;
    let cipher_suites = r.u16()?;
    if cipher_suites % 2 == 1 {
        return Err(ParseError::Malformed("odd cipher suites length".into()));
    }
    r.skip(usize::from(cipher_suites))?;
    let compression = r.u8()?;
    r.skip(usize::from(compression))?;
    let extensions_len = usize::from(r.u16()?);
    let all_here = r.0.len() >= extensions_len;
    let found = find_sni(&r.0[..r.0.len().min(extensions_len)], all_here)?;
    match found.sni {
        Some(name) => Ok(Hello { sni: name, ech: found.ech }),
        // Every extension is here, yet the ClientHello claims to be longer.
        None if all_here => {
            Err(ParseError::Malformed("ClientHello longer than its extensions".into()))
        }
        None => Err(ParseError::Truncated),
    }
}

/// What the walk over the extensions found.
struct Found {
    /// `Some` once the server_name extension was seen, with its host_name if it has one.
    sni: Option<Option<String>>,
    /// An encrypted_client_hello extension among the complete ones.
    ech: bool,
}

/// Frames the extensions in `exts` one by one (so that a cut is told from a lie) and hands each
/// complete one to tls-parser, up to the first server_name; past it, only the types are looked
/// at (for ECH), so what follows the server_name cannot spoil a name found. `complete`: `exts`
/// is the whole extension block, so running out is malformed rather than truncated.
fn find_sni(exts: &[u8], complete: bool) -> Result<Found, ParseError> {
    let overrun = |e: ParseError| match complete {
        true => ParseError::Malformed("extension runs past the extension block".into()),
        false => e,
    };
    let mut found = Found { sni: None, ech: false };
    let mut r = Reader(exts);
    while !r.0.is_empty() {
        let start = r.0;
        let (ext_type, len) = match r.extension() {
            Ok(framed) => framed,
            // Past the server_name, the extensions only add the ECH flag: a cut there (or a
            // lie, as before this walk went on) leaves the name as it is.
            Err(_) if found.sni.is_some() => break,
            Err(e) => return Err(overrun(e)),
        };
        found.ech |= ext_type == EXT_ENCRYPTED_CLIENT_HELLO;
        if found.sni.is_some() {
            continue;
        }
        match parse_tls_client_hello_extension(&start[..4 + len]) {
            Ok((_, TlsExtension::SNI(names))) => {
                found.sni = Some(sni_name(&start[4..4 + len], &names)?);
            }
            Ok(_) => {}
            Err(e) => return Err(ParseError::Malformed(format!("extension: {e:?}"))),
        }
    }
    Ok(found)
}

/// The host_name entry of a server_name list, normalised. `data` is the extension's content:
/// tls-parser skips entries it cannot parse, so check that the entries account for all of it.
fn sni_name(data: &[u8], names: &[(SNIType, &[u8])]) -> Result<Option<String>, ParseError> {
    let parsed_len: usize = names.iter().map(|(_, n)| 3 + n.len()).sum();
    if !data.is_empty() && data.len() != 2 + parsed_len {
        return Err(ParseError::Malformed("server_name list lengths".into()));
    }
    let Some((_, raw)) = names.iter().find(|(t, _)| *t == SNIType::HostName) else {
        return Ok(None);
    };
    let name = normalize_hostname(raw)?;
    Ok((!is_ipv4_literal(&name)).then_some(name))
}

/// Bounds-checked big-endian reads over what the copy holds; running out is `Truncated`.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn skip(&mut self, n: usize) -> Result<(), ParseError> {
        self.0 = self.0.get(n..).ok_or(ParseError::Truncated)?;
        Ok(())
    }

    fn u8(&mut self) -> Result<u8, ParseError> {
        let (&b, rest) = self.0.split_first().ok_or(ParseError::Truncated)?;
        self.0 = rest;
        Ok(b)
    }

    fn u16(&mut self) -> Result<u16, ParseError> {
        let hi = self.u8()?;
        Ok(u16::from_be_bytes([hi, self.u8()?]))
    }

    /// Steps over one extension: its type and the length of its data.
    fn extension(&mut self) -> Result<(u16, usize), ParseError> {
        let ext_type = self.u16()?;
        let len = usize::from(self.u16()?);
        self.skip(len)?;
        Ok((ext_type, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Recorded on loopback: see sensor/tests/data/tls/README.md.
    const OPENSSL_SNI: &[u8] = include_bytes!("../../tests/data/tls/openssl_s_client_sni.bin");
    const OPENSSL_NO_SNI: &[u8] =
        include_bytes!("../../tests/data/tls/openssl_s_client_no_sni.bin");
    const CURL_SNI: &[u8] = include_bytes!("../../tests/data/tls/curl_sni.bin");
    const OPENSSL_TLS12_SNI: &[u8] =
        include_bytes!("../../tests/data/tls/openssl_s_client_tls12_sni.bin");

    /// The kernel's copy limit.
    const COPY_LIMIT: usize = 1280;

    /// A ClientHello record split into its fixed fields (ClientHello body up to, not including,
    /// the extensions length) and its extensions (type, data).
    struct Hello {
        fixed: Vec<u8>,
        exts: Vec<(u16, Vec<u8>)>,
    }

    fn be16(b: &[u8]) -> usize {
        usize::from(u16::from_be_bytes([b[0], b[1]]))
    }

    fn split(record: &[u8]) -> Hello {
        let body = &record[9..];
        let mut p = 34;
        p += 1 + usize::from(body[p]);
        p += 2 + be16(&body[p..]);
        p += 1 + usize::from(body[p]);
        let fixed = body[..p].to_vec();
        let end = p + 2 + be16(&body[p..]);
        assert_eq!(end, body.len(), "recorded hello has nothing after its extensions");
        p += 2;
        let mut exts = Vec::new();
        while p < end {
            let (t, l) = (be16(&body[p..]) as u16, be16(&body[p + 2..]));
            exts.push((t, body[p + 4..p + 4 + l].to_vec()));
            p += 4 + l;
        }
        Hello { fixed, exts }
    }

    fn build(h: &Hello) -> Vec<u8> {
        let mut ext = Vec::new();
        for (t, d) in &h.exts {
            ext.extend(t.to_be_bytes());
            ext.extend((d.len() as u16).to_be_bytes());
            ext.extend(d);
        }
        let mut body = h.fixed.clone();
        body.extend((ext.len() as u16).to_be_bytes());
        body.extend(ext);
        let mut hs = vec![1];
        hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend(body);
        let mut rec = vec![0x16, 0x03, 0x01];
        rec.extend((hs.len() as u16).to_be_bytes());
        rec.extend(hs);
        rec
    }

    fn sni_ext(name: &[u8]) -> (u16, Vec<u8>) {
        let mut entry = vec![0];
        entry.extend((name.len() as u16).to_be_bytes());
        entry.extend(name);
        let mut d = (entry.len() as u16).to_be_bytes().to_vec();
        d.extend(entry);
        (0, d)
    }

    fn with_sni(name: &[u8]) -> Vec<u8> {
        let mut h = split(OPENSSL_SNI);
        h.exts[0] = sni_ext(name);
        build(&h)
    }

    /// Offset just past the server_name extension in a record.
    fn sni_end(record: &[u8]) -> Option<usize> {
        let h = split(record);
        let mut p = 9 + h.fixed.len() + 2;
        for (t, d) in &h.exts {
            p += 4 + d.len();
            if *t == 0 {
                return Some(p);
            }
        }
        None
    }

    #[test]
    fn split_and_build_round_trip() {
        for r in [OPENSSL_SNI, OPENSSL_NO_SNI, CURL_SNI, OPENSSL_TLS12_SNI] {
            assert_eq!(build(&split(r)), r);
        }
    }

    #[test]
    fn recorded_hellos() {
        assert_eq!(client_hello_sni(OPENSSL_SNI).unwrap().as_deref(), Some("example.test"));
        assert_eq!(client_hello_sni(OPENSSL_NO_SNI).unwrap(), None);
        assert_eq!(client_hello_sni(CURL_SNI).unwrap().as_deref(), Some("www.example.test"));
        assert_eq!(client_hello_sni(OPENSSL_TLS12_SNI).unwrap().as_deref(), Some("example.test"));
    }

    #[test]
    fn every_prefix_of_a_recorded_hello() {
        for r in [OPENSSL_SNI, OPENSSL_NO_SNI, CURL_SNI, OPENSSL_TLS12_SNI] {
            let expect = client_hello_sni(r).unwrap();
            let sni_end = sni_end(r).unwrap_or(r.len());
            for cut in 0..r.len() {
                let got = client_hello_sni(&r[..cut]);
                if cut < sni_end {
                    assert_eq!(got, Err(ParseError::Truncated), "cut at {cut}");
                } else {
                    assert_eq!(got.as_ref(), Ok(&expect), "cut at {cut}");
                }
            }
        }
    }

    #[test]
    fn trailing_bytes_after_the_record_are_ignored() {
        let mut two = OPENSSL_SNI.to_vec();
        two.extend([0x14, 0x03, 0x03, 0x00, 0x01, 0x01]); // a ChangeCipherSpec record
        assert_eq!(client_hello_sni(&two).unwrap().as_deref(), Some("example.test"));
    }

    /// A Chrome-like ClientHello of about 1.8 kB: GREASE, then a 1.2 kB key share (X25519MLKEM768
    /// is 1216 + 32 bytes), with the server_name before or after it.
    fn chrome_like(sni_first: bool) -> Vec<u8> {
        let base = split(OPENSSL_SNI);
        let mut key_share = Vec::new();
        let mut entries = Vec::new();
        for (group, len) in [(0x4a4au16, 1usize), (0x11ec, 1216), (0x001d, 32)] {
            entries.extend(group.to_be_bytes());
            entries.extend((len as u16).to_be_bytes());
            entries.extend(std::iter::repeat_n(0x5a, len));
        }
        key_share.extend((entries.len() as u16).to_be_bytes());
        key_share.extend(entries);
        let mut exts =
            vec![(0x0a0a, vec![]), (0x0017, vec![]), (0x002b, vec![4, 0x03, 0x04, 0x03, 0x03])];
        let sni = sni_ext(b"www.Example.com");
        if sni_first {
            exts.push(sni);
            exts.push((0x0033, key_share));
        } else {
            exts.push((0x0033, key_share));
            exts.push(sni);
        }
        exts.push((0x0010, b"\x00\x0c\x02h2\x08http/1.1".to_vec()));
        exts.push((0xfe0d, vec![0x33; 250])); // GREASE ECH
        build(&Hello { fixed: base.fixed, exts })
    }

    #[test]
    fn large_hello_cut_at_the_copy_limit() {
        let hello = chrome_like(true);
        assert!(hello.len() > 1700, "{}", hello.len());
        assert_eq!(client_hello_sni(&hello).unwrap().as_deref(), Some("www.example.com"));
        let cut = &hello[..COPY_LIMIT];
        assert_eq!(client_hello_sni(cut).unwrap().as_deref(), Some("www.example.com"));

        // server_name after the big key share: not in the copy.
        let hello = chrome_like(false);
        assert_eq!(client_hello_sni(&hello).unwrap().as_deref(), Some("www.example.com"));
        assert_eq!(client_hello_sni(&hello[..COPY_LIMIT]), Err(ParseError::Truncated));
        for cut in 0..hello.len() {
            let _ = client_hello_sni(&hello[..cut]);
        }
    }

    #[test]
    fn hello_fragmented_over_two_records() {
        // First record carries the handshake header (full length) and only part of the body.
        let full = OPENSSL_SNI;
        let hs = &full[5..];
        let first = &hs[..200];
        let mut rec = vec![0x16, 0x03, 0x01];
        rec.extend((first.len() as u16).to_be_bytes());
        rec.extend(first);
        rec.extend([0x16, 0x03, 0x01]);
        rec.extend(((hs.len() - 200) as u16).to_be_bytes());
        rec.extend(&hs[200..]);
        assert_eq!(client_hello_sni(&rec).unwrap().as_deref(), Some("example.test"));
    }

    #[test]
    fn names_are_normalised_and_checked() {
        assert_eq!(
            client_hello_sni(&with_sni(b"WWW.Example.TEST.")).unwrap().as_deref(),
            Some("www.example.test")
        );
        assert_eq!(client_hello_sni(&with_sni(b"192.0.2.1")).unwrap(), None);
        for bad in [&b"exa mple.test"[..], b"caf\xc3\xa9.test", b"", b"a..b", b"::1", b"[::1]"] {
            assert_eq!(
                client_hello_sni(&with_sni(bad)),
                Err(ParseError::InvalidHostname),
                "{bad:?}"
            );
        }
        let long = vec![b'a'; 254];
        assert_eq!(client_hello_sni(&with_sni(&long)), Err(ParseError::InvalidHostname));
    }

    #[test]
    fn server_name_list_without_host_name() {
        let mut h = split(OPENSSL_SNI);
        h.exts[0].1 = vec![0, 5, 7, 0, 2, b'x', b'y']; // one entry of name type 7
        assert_eq!(client_hello_sni(&build(&h)).unwrap(), None);
        h.exts[0].1 = vec![]; // empty server_name extension (as servers send)
        assert_eq!(client_hello_sni(&build(&h)).unwrap(), None);
    }

    #[test]
    fn not_client_hellos() {
        assert_eq!(client_hello_sni(&[]), Err(ParseError::Truncated));
        assert_eq!(client_hello_sni(&[0x16, 3, 1]), Err(ParseError::Truncated));
        // Application data, alert, an SSLv2-style hello, HTTP.
        assert_eq!(client_hello_sni(&[0x17, 3, 3, 0, 2, 1, 2]), Err(ParseError::NotClientHello));
        assert_eq!(client_hello_sni(&[0x15, 3, 3, 0, 2, 2, 40]), Err(ParseError::NotClientHello));
        assert_eq!(client_hello_sni(&[0x80, 0x2e, 1, 3, 1]), Err(ParseError::NotClientHello));
        assert_eq!(client_hello_sni(b"GET / HTTP/1.1\r\n"), Err(ParseError::NotClientHello));
        // A ServerHello.
        let mut sh = OPENSSL_SNI.to_vec();
        sh[5] = 2;
        assert_eq!(client_hello_sni(&sh), Err(ParseError::NotClientHello));
        assert_eq!(client_hello_sni(&sh[..6]), Err(ParseError::NotClientHello));
    }

    #[test]
    fn handshake_message_without_record_header() {
        for r in [OPENSSL_SNI, OPENSSL_NO_SNI, CURL_SNI, OPENSSL_TLS12_SNI, &chrome_like(false)] {
            let msg = &r[RECORD_HEADER_LEN..];
            assert_eq!(handshake_sni(msg), client_hello_sni(r));
            for cut in 0..msg.len() {
                let got = handshake_sni(&msg[..cut]);
                assert_eq!(got, client_hello_sni(&r[..RECORD_HEADER_LEN + cut]), "cut at {cut}");
            }
        }
        assert_eq!(handshake_sni(&[]), Err(ParseError::Truncated));
        assert_eq!(handshake_sni(&[1, 0]), Err(ParseError::Truncated));
        assert_eq!(handshake_sni(&[2, 0, 0, 0]), Err(ParseError::NotClientHello));
        assert_eq!(handshake_sni(&[0x16, 3, 1]), Err(ParseError::NotClientHello));
    }

    #[test]
    fn encrypted_client_hello_is_noticed() {
        let hello = |r: &[u8]| client_hello_info(r).unwrap();
        for r in [OPENSSL_SNI, OPENSSL_NO_SNI, CURL_SNI, OPENSSL_TLS12_SNI] {
            assert!(!hello(r).ech);
        }
        // chrome_like ends with a (GREASE) encrypted_client_hello, after the server_name.
        let chrome = chrome_like(true);
        assert_eq!(hello(&chrome), super::Hello { sni: Some("www.example.com".into()), ech: true });
        assert_eq!(handshake_info(&chrome[RECORD_HEADER_LEN..]), client_hello_info(&chrome));
        // Cut before it: the name, without the flag.
        assert_eq!(
            hello(&chrome[..COPY_LIMIT]),
            super::Hello { sni: Some("www.example.com".into()), ech: false }
        );
        // Before the server_name, in a cut-short hello.
        let mut h = split(OPENSSL_SNI);
        h.exts.insert(0, (0xfe0d, vec![0x33; 100]));
        let r = build(&h);
        let whole = super::Hello { sni: Some("example.test".into()), ech: true };
        assert_eq!(hello(&r), whole);
        let end = sni_end(&r).unwrap();
        assert_eq!(hello(&r[..end]), whole);
        // ... and the extensions after the server_name spoil nothing, whatever they hold.
        let mut h = split(OPENSSL_SNI);
        h.exts.push((0x0010, vec![0xff; 3])); // an ALPN extension tls-parser refuses
        h.exts.push((0xfe0d, vec![]));
        assert_eq!(hello(&build(&h)), super::Hello { sni: Some("example.test".into()), ech: true });
    }

    fn malformed(r: &[u8]) -> bool {
        matches!(client_hello_sni(r), Err(ParseError::Malformed(_)))
    }

    #[test]
    fn bogus_lengths() {
        // Record length 0 and over the maximum.
        assert!(malformed(&[0x16, 3, 1, 0, 0]));
        assert!(malformed(&[0x16, 3, 1, 0xff, 0xff, 1, 0, 0]));
        // Handshake length shorter than the ClientHello's fields: bytes left over.
        let mut r = OPENSSL_SNI.to_vec();
        r[8] -= 1;
        assert!(malformed(&r));
        // Handshake length 0.
        assert!(malformed(&[0x16, 3, 1, 0, 4, 1, 0, 0, 0]));
        // Session id longer than 32, complete and cut short.
        let mut r = OPENSSL_SNI.to_vec();
        r[9 + 34] = 33;
        assert!(malformed(&r));
        assert!(malformed(&r[..100]));
        // Odd cipher suites length, complete and cut short.
        let h = split(OPENSSL_SNI);
        let cs_at = 9 + 35 + usize::from(h.fixed[34]);
        let mut r = OPENSSL_SNI.to_vec();
        r[cs_at + 1] |= 1;
        assert!(malformed(&r));
        assert!(malformed(&r[..cs_at + 4]));
        // Extensions length larger than what the hello holds.
        let ext_at = 9 + h.fixed.len();
        let mut r = OPENSSL_SNI.to_vec();
        r[ext_at + 1] = r[ext_at + 1].wrapping_add(1);
        assert!(client_hello_sni(&r).is_err());
        // Extensions length smaller: the last extension overruns the block.
        let mut r = OPENSSL_SNI.to_vec();
        r[ext_at + 1] = r[ext_at + 1].wrapping_sub(1);
        assert!(malformed(&r));
        // The server_name extension's own lengths lie.
        let mut h = split(OPENSSL_SNI);
        h.exts[0].1[1] += 1; // list length one more than the data
        assert!(client_hello_sni(&build(&h)).is_err());
        let mut h = split(OPENSSL_SNI);
        h.exts[0].1[4] += 9; // name length past the list
        assert!(client_hello_sni(&build(&h)).is_err());
        // Handshake longer than the record, record complete, nothing follows: walked as cut.
        let mut r = OPENSSL_SNI.to_vec();
        r[8] += 10;
        assert_eq!(client_hello_sni(&r).unwrap().as_deref(), Some("example.test"));
        // ... without a server_name, all extensions are there yet the hello claims more.
        let mut r = OPENSSL_NO_SNI.to_vec();
        r[8] += 10;
        assert!(malformed(&r));
    }

    #[test]
    fn garbage_never_panics() {
        let mut x: u32 = 0x1234_5678;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        let big = chrome_like(true);
        for _ in 0..20_000 {
            let base = [OPENSSL_SNI, OPENSSL_NO_SNI, CURL_SNI, &big[..]][next() as usize % 4];
            let mut v = base.to_vec();
            for _ in 0..(next() % 4 + 1) {
                let i = next() as usize % v.len();
                v[i] = next() as u8;
            }
            let cut = next() as usize % (v.len() + 1);
            let _ = client_hello_sni(&v);
            let _ = client_hello_sni(&v[..cut]);
        }
    }
}
