//! DNS responses going to clients (UDP or TCP from port 53): which addresses the name a client
//! asked for resolved to, so that later traffic to those addresses can be named.
//!
//! Decoding is hickory-proto's (`Message::from_vec`: header, every section, compression
//! pointers). Its name decoder only follows pointers to offsets *before* the name being read,
//! so pointer loops (a pointer to itself, forward pointers, cycles) are rejected rather than
//! followed; the tests below check that. Before handing the bytes over, `check_skeleton`
//! walks the message's framing (names, fixed fields, rdata lengths) without allocating: a
//! message cut anywhere is reliably `Truncated` (hickory reports some cuts as rdata length
//! mismatches), and absurd header counts cost nothing. Bytes after the message are ignored.
//!
//! What comes back:
//! - `Err(Truncated)`: the payload ends before the message does (UDP copy cut short, a TCP
//!   length prefix larger than what is there, counts or lengths that cannot fit).
//! - `Err(Malformed)`: not a well-formed DNS message (bad labels, label > 63 bytes, pointer
//!   loops, rdata length mismatch...), or a message without exactly one question (then there is
//!   no name to attribute addresses to).
//! - `Err(InvalidHostname)`: the question's name is not a plausible host name.
//! - `Ok` with empty `addrs`: well-formed, but nothing to learn: a query (QR=0), an opcode other
//!   than QUERY, a non-zero RCODE (NXDOMAIN, SERVFAIL...), or no A/AAAA record on the CNAME
//!   chain starting at the question's name.

use std::net::IpAddr;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData};
use hickory_proto::serialize::binary::DecodeError;

use super::parse::ParseError;

/// What a DNS response taught: the name the client asked for and the addresses it resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsAnswer {
    /// The question's name, lower-case, without the trailing dot.
    pub qname: String,
    /// Every A/AAAA address on the CNAME chain from `qname`, with its record's TTL in seconds
    /// (each address once, first occurrence wins).
    pub addrs: Vec<(IpAddr, u32)>,
}

/// DNS header length.
const HEADER_LEN: usize = 12;
/// Smallest encoding of a question: root name (1) + type (2) + class (2).
const MIN_QUESTION_LEN: usize = 5;
/// Smallest encoding of a resource record: root name (1) + type, class (4) + TTL (4) + rdlength (2).
const MIN_RECORD_LEN: usize = 11;

/// Parses a DNS response as copied by the kernel. For `tcp`, `payload` starts with the 2-byte
/// length prefix, which is stripped; bytes after the first message (pipelined responses) are
/// ignored. See the module documentation for what is an error and what is an empty answer.
pub fn parse_response(payload: &[u8], tcp: bool) -> Result<DnsAnswer, ParseError> {
    let msg = if tcp {
        let [hi, lo, rest @ ..] = payload else {
            return Err(ParseError::Truncated);
        };
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        if len == 0 {
            return Err(ParseError::Malformed("zero TCP length prefix".into()));
        }
        rest.get(..len).ok_or(ParseError::Truncated)?
    } else {
        payload
    };
    check_skeleton(msg)?;
    let message = Message::from_vec(msg).map_err(decode_error)?;

    let [query] = message.queries.as_slice() else {
        return Err(ParseError::Malformed(format!(
            "{} questions, expected 1",
            message.queries.len()
        )));
    };
    let qname = name_to_string(&query.name)?;
    let mut answer = DnsAnswer { qname, addrs: Vec::new() };
    let meta = &message.metadata;
    if meta.message_type != MessageType::Response
        || meta.op_code != OpCode::Query
        || meta.response_code != ResponseCode::NoError
    {
        return Ok(answer);
    }

    // The chain qname → CNAME target → ... as far as the answer section goes. Each step must
    // reach a name not yet on the chain, so a CNAME loop ends it; it has at most one more name
    // than there are answers.
    let mut chain: Vec<&Name> = vec![&query.name];
    while let Some(target) = message.answers.iter().find_map(|r| match &r.data {
        RData::CNAME(cname) if r.dns_class == DNSClass::IN && r.name == *chain[chain.len() - 1] => {
            Some(&cname.0)
        }
        _ => None,
    }) {
        if chain.contains(&target) {
            break;
        }
        chain.push(target);
    }

    for record in &message.answers {
        if record.dns_class != DNSClass::IN || !chain.contains(&&record.name) {
            continue;
        }
        let ip = match &record.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(aaaa) => IpAddr::V6(aaaa.0),
            _ => continue,
        };
        if !answer.addrs.iter().any(|(seen, _)| *seen == ip) {
            answer.addrs.push((ip, record.ttl));
        }
    }
    Ok(answer)
}

/// Walks the message's skeleton (names without following pointers, fixed fields, rdata
/// lengths) without allocating, so that a message cut short is reported as `Truncated` (hickory
/// reports some cuts, inside rdata for instance, as length mismatches) and absurd header counts
/// cost no more than the bytes that are there.
fn check_skeleton(msg: &[u8]) -> Result<(), ParseError> {
    let Some(header) = msg.get(..HEADER_LEN) else {
        return Err(ParseError::Truncated);
    };
    let count = |i: usize| usize::from(u16::from_be_bytes([header[i], header[i + 1]]));
    let (qd, records) = (count(4), count(6) + count(8) + count(10));
    if HEADER_LEN + qd * MIN_QUESTION_LEN + records * MIN_RECORD_LEN > msg.len() {
        return Err(ParseError::Truncated);
    }
    let mut pos = HEADER_LEN;
    let skip_name = |pos: &mut usize| -> Result<(), ParseError> {
        loop {
            let len = *msg.get(*pos).ok_or(ParseError::Truncated)?;
            match len & 0xc0 {
                0x00 if len == 0 => {
                    *pos += 1;
                    return Ok(());
                }
                0x00 => *pos += 1 + usize::from(len),
                0xc0 => {
                    *pos += 2;
                    return if *pos > msg.len() { Err(ParseError::Truncated) } else { Ok(()) };
                }
                _ => {
                    return Err(ParseError::Malformed(format!("label length byte {len:#04x}")));
                }
            }
        }
    };
    for _ in 0..qd {
        skip_name(&mut pos)?;
        pos += 4;
    }
    for _ in 0..records {
        skip_name(&mut pos)?;
        let rdlength = msg.get(pos + 8..pos + 10).ok_or(ParseError::Truncated)?;
        pos += 10 + usize::from(u16::from_be_bytes([rdlength[0], rdlength[1]]));
    }
    if pos > msg.len() {
        return Err(ParseError::Truncated);
    }
    Ok(())
}

fn decode_error(e: DecodeError) -> ParseError {
    match e {
        DecodeError::InsufficientBytes => ParseError::Truncated,
        other => ParseError::Malformed(other.to_string()),
    }
}

/// The name as a host name: labels joined with dots, lower-case, no trailing dot.
fn name_to_string(name: &Name) -> Result<String, ParseError> {
    let mut wire = Vec::with_capacity(name.len());
    for (i, label) in name.iter().enumerate() {
        if i > 0 {
            wire.push(b'.');
        }
        wire.extend_from_slice(label);
    }
    super::parse::normalize_hostname(&wire)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::rdata::{A, AAAA, CNAME};
    use hickory_proto::rr::{Record, RecordType};
    use std::net::{Ipv4Addr, Ipv6Addr};

    // Recorded from dnsmasq on loopback: see sensor/tests/data/dns/README.md.
    const UDP_A_CNAME_CHAIN: &[u8] = include_bytes!("../../tests/data/dns/udp_a_cname_chain.bin");
    const TCP_A_CNAME_CHAIN: &[u8] = include_bytes!("../../tests/data/dns/tcp_a_cname_chain.bin");
    const UDP_AAAA: &[u8] = include_bytes!("../../tests/data/dns/udp_aaaa.bin");
    const UDP_NXDOMAIN: &[u8] = include_bytes!("../../tests/data/dns/udp_nxdomain.bin");
    const UDP_MIXED_CASE: &[u8] = include_bytes!("../../tests/data/dns/udp_mixed_case.bin");
    const UDP_MX_NODATA: &[u8] = include_bytes!("../../tests/data/dns/udp_mx_nodata.bin");

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn tcp_frame(msg: &[u8]) -> Vec<u8> {
        let mut v = (msg.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(msg);
        v
    }

    // --- hand-written wire format helpers ---

    /// Header: id 0x1234, the given flags and counts.
    fn header(flags: u16, qd: u16, an: u16, ns: u16, ar: u16) -> Vec<u8> {
        let mut v = vec![0x12, 0x34];
        for x in [flags, qd, an, ns, ar] {
            v.extend_from_slice(&x.to_be_bytes());
        }
        v
    }

    /// Uncompressed wire name.
    fn wire_name(s: &str) -> Vec<u8> {
        let mut v = Vec::new();
        for label in s.split('.').filter(|l| !l.is_empty()) {
            v.push(label.len() as u8);
            v.extend_from_slice(label.as_bytes());
        }
        v.push(0);
        v
    }

    /// A resource record (class IN) with an already-encoded owner name.
    fn rr(owner: &[u8], rtype: u16, ttl: u32, rdata: &[u8]) -> Vec<u8> {
        let mut v = owner.to_vec();
        v.extend_from_slice(&rtype.to_be_bytes());
        v.extend_from_slice(&1u16.to_be_bytes());
        v.extend_from_slice(&ttl.to_be_bytes());
        v.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        v.extend_from_slice(rdata);
        v
    }

    const RESPONSE: u16 = 0x8180; // QR, RD, RA, NOERROR
    const PTR_QNAME: [u8; 2] = [0xc0, 0x0c]; // pointer to the question name at offset 12

    fn question(qname: &str, qtype: u16) -> Vec<u8> {
        let mut v = wire_name(qname);
        v.extend_from_slice(&qtype.to_be_bytes());
        v.extend_from_slice(&1u16.to_be_bytes());
        v
    }

    // --- recorded responses ---

    #[test]
    fn recorded_cname_chain_udp() {
        let a = parse_response(UDP_A_CNAME_CHAIN, false).unwrap();
        assert_eq!(a.qname, "cdn.example.test");
        assert_eq!(a.addrs, vec![(v4(192, 0, 2, 10), 300), (v4(192, 0, 2, 11), 300)]);
    }

    #[test]
    fn recorded_cname_chain_tcp() {
        let a = parse_response(TCP_A_CNAME_CHAIN, true).unwrap();
        assert_eq!(a.qname, "cdn.example.test");
        assert_eq!(a.addrs, vec![(v4(192, 0, 2, 11), 300), (v4(192, 0, 2, 10), 300)]);
        // The same bytes without the prefix parse as UDP; with tcp=false the prefix is garbage.
        assert_eq!(parse_response(&TCP_A_CNAME_CHAIN[2..], false).unwrap().addrs.len(), 2);
        assert!(parse_response(TCP_A_CNAME_CHAIN, false).is_err());
    }

    #[test]
    fn recorded_aaaa() {
        let a = parse_response(UDP_AAAA, false).unwrap();
        assert_eq!(a.qname, "www.example.test");
        let ip: Ipv6Addr = "2001:db8::10".parse().unwrap();
        assert_eq!(a.addrs, vec![(IpAddr::V6(ip), 300)]);
    }

    #[test]
    fn recorded_nxdomain_and_nodata_are_empty() {
        let a = parse_response(UDP_NXDOMAIN, false).unwrap();
        assert_eq!(a.qname, "nope.example.test");
        assert!(a.addrs.is_empty());
        let a = parse_response(UDP_MX_NODATA, false).unwrap();
        assert_eq!(a.qname, "www.example.test");
        assert!(a.addrs.is_empty());
    }

    #[test]
    fn recorded_mixed_case_is_lowered() {
        let a = parse_response(UDP_MIXED_CASE, false).unwrap();
        assert_eq!(a.qname, "mixed.example.test");
        assert_eq!(a.addrs, vec![(v4(198, 51, 100, 7), 300)]);
    }

    #[test]
    fn every_prefix_of_a_recorded_response_is_truncated() {
        for msg in [
            UDP_A_CNAME_CHAIN,
            UDP_AAAA,
            UDP_NXDOMAIN,
            UDP_MIXED_CASE,
            UDP_MX_NODATA,
            &TCP_A_CNAME_CHAIN[2..],
        ] {
            let framed = tcp_frame(msg);
            for cut in 0..msg.len() {
                let r = parse_response(&msg[..cut], false);
                assert_eq!(r, Err(ParseError::Truncated), "UDP prefix of {cut} bytes");
                // TCP: the prefix gives the whole length, the copy is cut short.
                for cut in [cut, cut + 1] {
                    let r = parse_response(&framed[..cut], true);
                    assert_eq!(r, Err(ParseError::Truncated), "TCP prefix of {cut} bytes");
                }
            }
            assert!(parse_response(msg, false).is_ok());
            assert!(parse_response(&framed, true).is_ok());
        }
    }

    // --- built with hickory's encoder ---

    fn encode(msg: &Message) -> Vec<u8> {
        msg.to_vec().unwrap()
    }

    fn response_for(qname: &str, qtype: RecordType, answers: Vec<Record>) -> Message {
        let mut m = Message::response(7, OpCode::Query);
        m.add_query(Query::query(name(qname), qtype));
        m.add_answers(answers);
        m
    }

    #[test]
    fn encoded_a_and_aaaa_with_cname_chain() {
        let m = response_for(
            "Shop.Example.com.",
            RecordType::A,
            vec![
                Record::from_rdata(
                    name("shop.example.com."),
                    60,
                    RData::CNAME(CNAME(name("shop.cdn.example.net."))),
                ),
                Record::from_rdata(
                    name("shop.cdn.example.net."),
                    30,
                    RData::CNAME(CNAME(name("edge.cdn.example.net."))),
                ),
                Record::from_rdata(
                    name("edge.cdn.example.net."),
                    20,
                    RData::A(A::new(203, 0, 113, 5)),
                ),
                Record::from_rdata(
                    name("EDGE.cdn.example.net."),
                    21,
                    RData::AAAA(AAAA::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 5)),
                ),
                // Not on the chain: ignored.
                Record::from_rdata(
                    name("other.example.org."),
                    20,
                    RData::A(A::new(203, 0, 113, 99)),
                ),
                // Duplicate address: first TTL kept.
                Record::from_rdata(
                    name("edge.cdn.example.net."),
                    99,
                    RData::A(A::new(203, 0, 113, 5)),
                ),
            ],
        );
        let bytes = encode(&m);
        for (payload, tcp) in [(bytes.clone(), false), (tcp_frame(&bytes), true)] {
            let a = parse_response(&payload, tcp).unwrap();
            assert_eq!(a.qname, "shop.example.com");
            assert_eq!(
                a.addrs,
                vec![(v4(203, 0, 113, 5), 20), ("2001:db8::5".parse().unwrap(), 21),]
            );
        }
    }

    #[test]
    fn encoded_chain_out_of_order_and_with_a_loop() {
        // Answers in any order still form the chain.
        let m = response_for(
            "a.example.",
            RecordType::A,
            vec![
                Record::from_rdata(name("c.example."), 5, RData::A(A::new(192, 0, 2, 3))),
                Record::from_rdata(name("b.example."), 5, RData::CNAME(CNAME(name("c.example.")))),
                Record::from_rdata(name("a.example."), 5, RData::CNAME(CNAME(name("b.example.")))),
            ],
        );
        assert_eq!(parse_response(&encode(&m), false).unwrap().addrs, vec![(v4(192, 0, 2, 3), 5)]);

        // a → b → a: the walk stops, nothing learnt, no hang.
        let m = response_for(
            "a.example.",
            RecordType::A,
            vec![
                Record::from_rdata(name("a.example."), 5, RData::CNAME(CNAME(name("b.example.")))),
                Record::from_rdata(name("b.example."), 5, RData::CNAME(CNAME(name("a.example.")))),
                Record::from_rdata(name("x.example."), 5, RData::A(A::new(192, 0, 2, 4))),
            ],
        );
        let a = parse_response(&encode(&m), false).unwrap();
        assert_eq!(a.qname, "a.example");
        assert!(a.addrs.is_empty());
    }

    #[test]
    fn encoded_error_rcode_query_and_notify_give_empty_answers() {
        let addr =
            || vec![Record::from_rdata(name("x.example."), 5, RData::A(A::new(192, 0, 2, 4)))];
        let mut m = response_for("x.example.", RecordType::A, addr());
        m.metadata.response_code = ResponseCode::ServFail;
        assert!(parse_response(&encode(&m), false).unwrap().addrs.is_empty());

        let mut m = response_for("x.example.", RecordType::A, addr());
        m.metadata.message_type = MessageType::Query;
        let a = parse_response(&encode(&m), false).unwrap();
        assert_eq!(a.qname, "x.example");
        assert!(a.addrs.is_empty());

        let mut m = response_for("x.example.", RecordType::A, addr());
        m.metadata.op_code = OpCode::Notify;
        assert!(parse_response(&encode(&m), false).unwrap().addrs.is_empty());

        // Sanity: unchanged, it does give the address.
        let m = response_for("x.example.", RecordType::A, addr());
        assert_eq!(parse_response(&encode(&m), false).unwrap().addrs.len(), 1);
    }

    #[test]
    fn question_count_must_be_one() {
        let mut m = Message::response(7, OpCode::Query);
        m.add_answer(Record::from_rdata(name("x.example."), 5, RData::A(A::new(192, 0, 2, 4))));
        assert!(matches!(parse_response(&encode(&m), false), Err(ParseError::Malformed(_))));
        m.add_query(Query::query(name("x.example."), RecordType::A));
        m.add_query(Query::query(name("y.example."), RecordType::A));
        assert!(matches!(parse_response(&encode(&m), false), Err(ParseError::Malformed(_))));
    }

    // --- hand-written bytes ---

    #[test]
    fn hand_written_compressed_answer() {
        let mut msg = header(RESPONSE, 1, 2, 0, 0);
        msg.extend(question("svc.example.com", 1));
        // svc.example.com CNAME www.<ptr to example.com at offset 16>
        msg.extend(rr(&PTR_QNAME, 5, 60, &[3, b'w', b'w', b'w', 0xc0, 16]));
        let www_at = msg.len() - 6; // offset of the CNAME target in the message
        msg.extend(rr(&[0xc0, www_at as u8], 1, 42, &[192, 0, 2, 80]));
        let a = parse_response(&msg, false).unwrap();
        assert_eq!(a.qname, "svc.example.com");
        assert_eq!(a.addrs, vec![(v4(192, 0, 2, 80), 42)]);
    }

    #[test]
    fn compression_pointer_to_itself_is_an_error() {
        let mut msg = header(RESPONSE, 1, 0, 0, 0);
        msg.extend([0xc0, 0x0c, 0, 1, 0, 1]); // question name = pointer to offset 12 = itself
        assert!(matches!(parse_response(&msg, false), Err(ParseError::Malformed(_))));
    }

    #[test]
    fn forward_and_cyclic_pointers_are_errors() {
        // Question name points forward to a valid name after the question.
        let mut msg = header(RESPONSE, 1, 0, 0, 0);
        msg.extend([0xc0, 18, 0, 1, 0, 1]);
        msg.extend(wire_name("x.example"));
        assert!(matches!(parse_response(&msg, false), Err(ParseError::Malformed(_))));

        // A two-pointer cycle: the question name at 12 is "q" + pointer to 20; at 20 (after
        // the question) a pointer back to 12.
        let mut msg = header(RESPONSE, 1, 0, 0, 0);
        msg.extend([1, b'q', 0xc0, 20, 0, 1, 0, 1]);
        msg.extend([0xc0, 12]);
        assert!(matches!(parse_response(&msg, false), Err(ParseError::Malformed(_))));

        // A label then a pointer back to the start of the same name: "a.a.a...." forever.
        let mut msg = header(RESPONSE, 1, 0, 0, 0);
        msg.extend([1, b'a', 0xc0, 12, 0, 1, 0, 1]);
        assert!(matches!(parse_response(&msg, false), Err(ParseError::Malformed(_))));

        // The same cycle reached from an answer's owner name (its first pointer is backward).
        let mut msg = header(RESPONSE, 1, 1, 0, 0);
        msg.extend(question("x.example", 1));
        let owner_at = msg.len();
        msg.extend([1, b'b', 0xc0, owner_at as u8]);
        msg.extend([0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 192, 0, 2, 1]);
        assert!(matches!(parse_response(&msg, false), Err(ParseError::Malformed(_))));

        // Control: a backward pointer to the question name is fine.
        let mut msg = header(RESPONSE, 1, 1, 0, 0);
        msg.extend(question("x.example", 1));
        msg.extend(PTR_QNAME);
        msg.extend([0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 192, 0, 2, 1]);
        assert_eq!(parse_response(&msg, false).unwrap().addrs, vec![(v4(192, 0, 2, 1), 5)]);
    }

    #[test]
    fn pointer_beyond_end_is_an_error() {
        let mut msg = header(RESPONSE, 1, 1, 0, 0);
        msg.extend(question("x.example", 1));
        msg.extend([0xc0, 0xff]); // owner points past the end of the message
        msg.extend([0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 192, 0, 2, 1]);
        assert!(parse_response(&msg, false).is_err());
        let mut msg = header(RESPONSE, 1, 1, 0, 0);
        msg.extend(question("x.example", 1));
        msg.extend([0xff, 0xff]); // offset 0x3fff
        msg.extend([0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 192, 0, 2, 1]);
        assert!(parse_response(&msg, false).is_err());
    }

    #[test]
    fn label_length_over_63_is_an_error() {
        // 0x40..=0xbf have the reserved 01/10 top bits: no way to encode a 64-byte label.
        for len in [64u8, 0x7f, 0x80, 0xbf] {
            let mut msg = header(RESPONSE, 1, 0, 0, 0);
            msg.push(len);
            msg.extend(std::iter::repeat_n(b'a', usize::from(len)));
            msg.extend([0, 0, 1, 0, 1]);
            assert!(matches!(parse_response(&msg, false), Err(ParseError::Malformed(_))), "{len}");
        }
    }

    #[test]
    fn name_over_255_bytes_is_an_error() {
        let mut msg = header(RESPONSE, 1, 0, 0, 0);
        for _ in 0..5 {
            msg.push(63);
            msg.extend([b'a'; 63]);
        }
        msg.extend([0, 0, 1, 0, 1]);
        assert!(matches!(parse_response(&msg, false), Err(ParseError::Malformed(_))));
    }

    #[test]
    fn absurd_counts_are_errors() {
        for (qd, an, ns, ar) in
            [(0xffff, 0, 0, 0), (1, 0xffff, 0xffff, 0xffff), (1, 1, 0, 0), (1, 0, 0, 9)]
        {
            let mut msg = header(RESPONSE, qd, an, ns, ar);
            msg.extend(question("x.example", 1));
            assert_eq!(
                parse_response(&msg, false),
                Err(ParseError::Truncated),
                "{qd} {an} {ns} {ar}"
            );
        }
    }

    #[test]
    fn rdata_length_lies_are_errors() {
        // A record with rdlength 5, then 5 bytes: an A with 5 bytes of data.
        let mut msg = header(RESPONSE, 1, 1, 0, 0);
        msg.extend(question("x.example", 1));
        msg.extend(rr(&PTR_QNAME, 1, 5, &[192, 0, 2, 1, 9]));
        assert!(parse_response(&msg, false).is_err());
        // rdlength larger than the rest of the message.
        let mut msg = header(RESPONSE, 1, 1, 0, 0);
        msg.extend(question("x.example", 1));
        msg.extend(PTR_QNAME);
        msg.extend([0, 1, 0, 1, 0, 0, 0, 5, 0xff, 0xff, 192, 0, 2, 1]);
        assert!(parse_response(&msg, false).is_err());
    }

    #[test]
    fn binary_qname_is_an_invalid_hostname() {
        let mut msg = header(RESPONSE, 1, 0, 0, 0);
        msg.extend([3, b'a', b' ', 0xff, 0, 0, 1, 0, 1]);
        assert_eq!(parse_response(&msg, false), Err(ParseError::InvalidHostname));
    }

    #[test]
    fn non_in_class_records_are_ignored() {
        let mut msg = header(RESPONSE, 1, 1, 0, 0);
        msg.extend(question("x.example", 1));
        let mut chaos = rr(&PTR_QNAME, 1, 5, &[192, 0, 2, 1]);
        chaos[4] = 0x03; // class CH
        msg.extend(chaos);
        assert!(parse_response(&msg, false).unwrap().addrs.is_empty());
    }

    #[test]
    fn tcp_framing() {
        let msg = UDP_MIXED_CASE;
        assert_eq!(parse_response(&[], true), Err(ParseError::Truncated));
        assert_eq!(parse_response(&[0], true), Err(ParseError::Truncated));
        assert!(matches!(parse_response(&[0, 0], true), Err(ParseError::Malformed(_))));
        // Prefix claims one byte more than there is.
        let mut framed = ((msg.len() + 1) as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(msg);
        assert_eq!(parse_response(&framed, true), Err(ParseError::Truncated));
        // A second (pipelined) message after the first is ignored, even if cut short.
        let mut two = tcp_frame(msg);
        two.extend(&tcp_frame(UDP_AAAA)[..10]);
        assert_eq!(parse_response(&two, true).unwrap().qname, "mixed.example.test");
        // Prefix shorter than the message: the message is cut at the prefix length.
        let mut short = ((msg.len() - 4) as u16).to_be_bytes().to_vec();
        short.extend_from_slice(msg);
        assert!(parse_response(&short, true).is_err());
    }

    #[test]
    fn garbage_never_panics() {
        // A cheap deterministic sweep (the fuzz targets do the real work).
        let mut x: u32 = 0x9e37_79b9;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        for _ in 0..20_000 {
            let base = [UDP_A_CNAME_CHAIN, UDP_AAAA, UDP_MIXED_CASE][next() as usize % 3];
            let mut v = base.to_vec();
            for _ in 0..(next() % 4 + 1) {
                let i = next() as usize % v.len();
                v[i] = next() as u8;
            }
            let _ = parse_response(&v, false);
            let _ = parse_response(&tcp_frame(&v), true);
        }
    }
}
