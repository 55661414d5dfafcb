//! QUIC Initial packets from clients: the server name (SNI) of the TLS ClientHello they carry.
//!
//! HTTP/3 goes over QUIC, where the ClientHello travels in CRYPTO frames of Initial packets.
//! Those are encrypted, but with keys anyone can derive: RFC 9001 §5.2 (and RFC 9369 for QUIC
//! version 2) makes them from a public salt and the Destination Connection ID of the client's
//! first Initial. So, as a server would, per packet: parse the long header, derive the client's
//! Initial keys (rustls with ring: HKDF, header protection and AES-128-GCM are not written here),
//! remove the header protection, decode the packet number, decrypt and authenticate, then walk
//! the frames. The CRYPTO data is put back together by offset (out of order, retransmitted and
//! overlapping pieces are fine) until the ClientHello handshake message is whole; then
//! [`super::tls::handshake_info`] reads it.
//!
//! A ClientHello is often larger than one packet (a post-quantum key share alone is 1.2 kB), so
//! [`InitialAssembler`] keeps the state of one flow over several datagrams. Its work is bounded:
//! at most [`MAX_DATAGRAMS`] datagrams and [`MAX_CRYPTO_BYTES`] of CRYPTO data, then it gives up.
//!
//! The kernel hands up at most the first 1280 bytes of a datagram. A packet that does not end
//! within them cannot be authenticated, so it cannot be read (`Truncated`); most clients' Initial
//! datagrams are 1200 to 1280 bytes, some are larger.

use rustls::{
    Side,
    crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
    quic::{DirectionalKeys, Version},
};

use super::{
    parse::ParseError,
    tls::{self, Hello},
};

/// QUIC version 1 (RFC 9000).
const VERSION_1: u32 = 0x0000_0001;
/// QUIC version 2 (RFC 9369).
const VERSION_2: u32 = 0x6b33_43cf;
/// Long header form and fixed bit.
const LONG_FIXED: u8 = 0xc0;
/// RFC 9000 §17.2: connection IDs of version 1 (and 2) are at most 20 bytes.
const MAX_CID_LEN: usize = 20;
/// Handshake message header: type (1), length (3).
const HANDSHAKE_HEADER_LEN: usize = 4;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
/// Largest value of a QUIC variable-length integer, the limit of stream offsets.
const MAX_VARINT: u64 = (1 << 62) - 1;

/// Datagrams an assembler reads before it gives up on a flow. A ClientHello takes one or two
/// (three with a very large key share); the rest is room for retransmissions.
pub const MAX_DATAGRAMS: usize = 8;
/// CRYPTO data kept per flow: no ClientHello comes near it (Chrome's post-quantum one is 2 kB).
pub const MAX_CRYPTO_BYTES: usize = 16 * 1024;

/// The packet type bits of an Initial in `version`, if it is one this module reads.
fn initial_type_bits(version: u32) -> Option<u8> {
    match version {
        VERSION_1 => Some(0b00),
        VERSION_2 => Some(0b01),
        _ => None,
    }
}

/// True when `datagram` starts with a long-header Initial packet of QUIC version 1 or 2.
pub fn is_initial(datagram: &[u8]) -> bool {
    let Some(&[first, a, b, c, d]) = datagram.get(..5) else {
        return false;
    };
    first & LONG_FIXED == LONG_FIXED
        && initial_type_bits(u32::from_be_bytes([a, b, c, d])) == Some((first >> 4) & 0b11)
}

/// The client Initial packets of one flow, read into the ClientHello they carry.
///
/// Feed it the datagrams a client sends (long header first byte) with [`Self::push`]: each
/// call says `Err(Truncated)` while more are needed, and the final answer once there is one.
/// After a final answer (any `Ok`, or an error that more datagrams cannot mend, including giving
/// up at the bounds) [`Self::is_finished`] is true and every further push returns that answer
/// again without reading the datagram.
///
/// A datagram that does not open (not an Initial, cut by the copy, failing authentication: an
/// off-path sender can inject those) is reported as `Err` and otherwise ignored: it leaves the
/// state as it was, except that it counts towards [`MAX_DATAGRAMS`].
#[derive(Default)]
pub struct InitialAssembler {
    /// The Destination Connection ID that the client's Initial keys come from: that of its first
    /// Initial (RFC 9001 §5.2), kept when later Initials carry the server's chosen ID; replaced
    /// after a Retry, where the client starts over with the ID the server gave.
    key_dcid: Option<Vec<u8>>,
    /// Largest packet number opened, for decoding truncated packet numbers (RFC 9000 §A.3).
    largest_pn: Option<u64>,
    crypto: CryptoStream,
    datagrams: usize,
    outcome: Option<Result<Hello, ParseError>>,
}

impl InitialAssembler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads one datagram; the server name once the ClientHello is whole. See the type's
    /// documentation for the results, and [`super::tls`] for the name's.
    pub fn push(&mut self, datagram: &[u8]) -> Result<Option<String>, ParseError> {
        self.push_hello(datagram).map(|hello| hello.sni)
    }

    /// [`Self::push`], with whether the ClientHello offers ECH ([`Hello::ech`]).
    pub fn push_hello(&mut self, datagram: &[u8]) -> Result<Hello, ParseError> {
        if let Some(outcome) = &self.outcome {
            return outcome.clone();
        }
        self.datagrams += 1;
        let step = match self.read_datagram(datagram) {
            Ok(closed) => self.hello(closed),
            Err(step) => step,
        };
        match step {
            Step::Done(outcome) => self.finish(outcome),
            Step::More(_) if self.datagrams >= MAX_DATAGRAMS => self.finish(Err(
                ParseError::Malformed(format!("no whole ClientHello in {MAX_DATAGRAMS} datagrams")),
            )),
            Step::More(e) => Err(e),
        }
    }

    /// A final answer has been given (see the type's documentation).
    pub fn is_finished(&self) -> bool {
        self.outcome.is_some()
    }

    fn finish(&mut self, outcome: Result<Hello, ParseError>) -> Result<Hello, ParseError> {
        // The CRYPTO bytes are no longer needed; the assembler may be kept a while.
        self.crypto = CryptoStream::default();
        self.outcome = Some(outcome.clone());
        outcome
    }

    /// Opens the Initial packets coalesced at the start of `datagram` and keeps their CRYPTO
    /// data. `Ok(true)`: the client closed the connection.
    fn read_datagram(&mut self, datagram: &[u8]) -> Result<bool, Step> {
        let mut rest = datagram;
        let mut opened = 0;
        let mut closed = false;
        // Stops at the first packet that is not an Initial: 0-RTT, Handshake and short-header
        // packets that may follow carry nothing of the ClientHello (nor can they be opened), and
        // some clients pad the datagram with zeros after the last packet.
        while is_initial(rest) {
            let (len, plain) = match self.open(rest) {
                Ok(packet) => packet,
                Err(e) if opened == 0 => return Err(Step::More(e)),
                // A later packet cut by the copy (or not opening): what came before counts.
                Err(_) => break,
            };
            let frames = frames(&plain).map_err(Step::More)?;
            for (offset, data) in frames.crypto {
                self.crypto.insert(offset, data).map_err(|e| Step::Done(Err(e)))?;
            }
            closed |= frames.closed;
            opened += 1;
            rest = rest.get(len..).unwrap_or_default();
        }
        match opened {
            0 => Err(Step::More(ParseError::NotClientHello)),
            _ => Ok(closed),
        }
    }

    /// The next step once a datagram's CRYPTO data is in.
    fn hello(&self, closed: bool) -> Step {
        let stream = self.crypto.contiguous();
        match stream.first() {
            Some(&HANDSHAKE_CLIENT_HELLO) | None => {}
            Some(_) => return Step::Done(Err(ParseError::NotClientHello)),
        }
        if let Some(&[_, a, b, c]) = stream.get(..HANDSHAKE_HEADER_LEN) {
            let len = HANDSHAKE_HEADER_LEN
                + (usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c));
            if len > MAX_CRYPTO_BYTES {
                return Step::Done(Err(ParseError::Malformed(format!(
                    "ClientHello of {len} bytes"
                ))));
            }
            // Only a whole one is read, so that an ECH extension after the name is seen too.
            if let Some(msg) = stream.get(..len) {
                return Step::Done(tls::handshake_info(msg));
            }
        }
        match closed {
            true => Step::Done(Err(ParseError::Malformed(
                "CONNECTION_CLOSE before the whole ClientHello".into(),
            ))),
            false => Step::More(ParseError::Truncated),
        }
    }

    /// Removes the protection of the Initial packet starting `bytes`: its length (where the
    /// next coalesced packet starts) and its decrypted payload. Leaves `self` unchanged but for
    /// the packet number and connection ID it learns from a packet that opens.
    fn open(&mut self, bytes: &[u8]) -> Result<(usize, Vec<u8>), ParseError> {
        let header = LongHeader::parse(bytes)?;
        let packet = bytes.get(..header.end).ok_or(ParseError::Truncated)?;
        let first_dcid = self.key_dcid.get_or_insert_with(|| header.dcid.to_vec()).clone();
        let opened = match unprotect(packet, &header, &first_dcid, self.largest_pn) {
            Ok(opened) => opened,
            // After a Retry the client's Initials carry the ID the server chose, and their keys
            // come from it (RFC 9001 §5.2).
            Err(e) if header.dcid != first_dcid.as_slice() => {
                let opened =
                    unprotect(packet, &header, header.dcid, self.largest_pn).map_err(|_| e)?;
                self.key_dcid = Some(header.dcid.to_vec());
                opened
            }
            Err(e) => {
                if self.largest_pn.is_none() {
                    // Nothing opened yet: the next Initial may be the client's first.
                    self.key_dcid = None;
                }
                return Err(e);
            }
        };
        self.largest_pn = Some(self.largest_pn.map_or(opened.pn, |pn| pn.max(opened.pn)));
        Ok((header.end, opened.payload))
    }
}

enum Step {
    /// A final answer.
    Done(Result<Hello, ParseError>),
    /// Not yet: more datagrams may give one.
    More(ParseError),
}

/// The fields of a long-header packet this module needs.
struct LongHeader<'a> {
    version: Version,
    dcid: &'a [u8],
    /// Where the (protected) packet number starts.
    pn_offset: usize,
    /// Where the packet ends (its Length field counts from `pn_offset`).
    end: usize,
}

impl<'a> LongHeader<'a> {
    /// RFC 9000 §17.2 (RFC 9369 §3 for version 2, same layout): first byte, version, DCID,
    /// SCID, token, length. Only Initials of versions 1 and 2 come here.
    fn parse(bytes: &'a [u8]) -> Result<Self, ParseError> {
        let mut r = Reader(bytes);
        r.skip(1)?;
        let version = match r.take(4)? {
            [0x00, 0x00, 0x00, 0x01] => Version::V1,
            [0x6b, 0x33, 0x43, 0xcf] => Version::V2,
            _ => return Err(ParseError::NotClientHello),
        };
        let dcid = r.cid()?;
        r.cid()?; // source connection ID
        let token_len = r.varint()?;
        r.skip(usize::try_from(token_len).map_err(|_| ParseError::Truncated)?)?;
        let length = r.varint()?;
        let pn_offset = bytes.len() - r.0.len();
        let end = usize::try_from(length)
            .ok()
            .and_then(|len| pn_offset.checked_add(len))
            .ok_or(ParseError::Truncated)?;
        Ok(Self { version, dcid, pn_offset, end })
    }
}

/// What a packet decrypts to.
struct Opened {
    pn: u64,
    payload: Vec<u8>,
}

/// Removes header protection and decrypts `packet` with the client Initial keys of `dcid`
/// (RFC 9001 §5.4, §5.3). Works on a copy: the datagram is not changed.
fn unprotect(
    packet: &[u8],
    header: &LongHeader,
    dcid: &[u8],
    largest_pn: Option<u64>,
) -> Result<Opened, ParseError> {
    let keys = client_initial_keys(header.version, dcid)?;
    let pn_offset = header.pn_offset;
    // The sample starts 4 bytes after the packet number's start, whatever its length.
    let sample_at = pn_offset + 4;
    let sample = packet
        .get(sample_at..sample_at + keys.header.sample_len())
        .ok_or_else(|| ParseError::Malformed("Initial packet too short to sample".into()))?;
    let (Some(&first), Some(pn_field)) = (packet.first(), packet.get(pn_offset..sample_at)) else {
        return Err(ParseError::Malformed("Initial packet too short".into()));
    };
    let mut first = first;
    let mut pn_field = <[u8; 4]>::try_from(pn_field)
        .map_err(|_| ParseError::Malformed("Initial packet too short".into()))?;
    // Unmasks the first byte's low bits and as many packet number bytes as they then say.
    keys.header
        .decrypt_in_place(sample, &mut first, &mut pn_field)
        .map_err(|e| ParseError::Malformed(format!("header protection: {e}")))?;
    let pn_len = usize::from(first & 0b11) + 1;
    let truncated = pn_field[..pn_len].iter().fold(0u64, |n, &b| n << 8 | u64::from(b));
    let pn = decode_packet_number(largest_pn, truncated, pn_len);

    // The header, unprotected, is the associated data.
    let mut buf = packet.to_vec();
    buf[0] = first;
    buf[pn_offset..pn_offset + pn_len].copy_from_slice(&pn_field[..pn_len]);
    let (aad, payload) = buf.split_at_mut(pn_offset + pn_len);
    let plain_len = keys
        .packet
        .decrypt_in_place(pn, aad, payload)
        .map_err(|_| ParseError::Malformed("Initial packet does not authenticate".into()))?
        .len();
    // Checked only once authenticated: before, they are noise from a wrong key.
    if first & 0b1100 != 0 {
        return Err(ParseError::Malformed("reserved header bits set".into()));
    }
    let mut payload = buf.split_off(pn_offset + pn_len);
    payload.truncate(plain_len);
    Ok(Opened { pn, payload })
}

/// The keys a client protects its Initial packets with, as the server derives them to open
/// them (`Side::Server`'s remote keys).
fn client_initial_keys(version: Version, dcid: &[u8]) -> Result<DirectionalKeys, ParseError> {
    // Initial packets always use this suite (RFC 9001 §5.2); ring's has QUIC support.
    let suite = TLS13_AES_128_GCM_SHA256
        .tls13()
        .and_then(|suite| suite.quic_suite())
        .ok_or_else(|| ParseError::Malformed("no QUIC AES-128-GCM suite".into()))?;
    Ok(suite.keys(dcid, Side::Server, version).remote)
}

/// RFC 9000 §A.3: the full packet number closest to the next one expected.
fn decode_packet_number(largest: Option<u64>, truncated: u64, pn_len: usize) -> u64 {
    let expected = largest.map_or(0, |pn| pn.saturating_add(1));
    let window = 1u64 << (8 * pn_len);
    let half = window / 2;
    let candidate = (expected & !(window - 1)) | truncated;
    if candidate.saturating_add(half) <= expected && candidate < (1 << 62) - window {
        candidate + window
    } else if candidate > expected.saturating_add(half) && candidate >= window {
        candidate - window
    } else {
        candidate
    }
}

/// The frames of an Initial packet's payload.
struct Frames<'a> {
    /// CRYPTO frames: offset and data.
    crypto: Vec<(u64, &'a [u8])>,
    /// A CONNECTION_CLOSE was among them.
    closed: bool,
}

/// Walks the frames an Initial packet may hold (RFC 9000 §12.4, Table 3): PADDING, PING, ACK,
/// CRYPTO and CONNECTION_CLOSE. The payload is authenticated and whole, so running out is
/// malformed, not truncated.
fn frames(payload: &[u8]) -> Result<Frames<'_>, ParseError> {
    let cut = |_| ParseError::Malformed("frame runs past the packet".into());
    let mut r = Reader(payload);
    let mut frames = Frames { crypto: Vec::new(), closed: false };
    while !r.0.is_empty() {
        match r.varint().map_err(cut)? {
            0x00 | 0x01 => {} // PADDING, PING
            t @ (0x02 | 0x03) => {
                // ACK: largest acknowledged, delay, range count, first range, the ranges
                // (gap, length), then with 0x03 the three ECN counts.
                r.varint().map_err(cut)?;
                r.varint().map_err(cut)?;
                let ranges = r.varint().map_err(cut)?;
                r.varint().map_err(cut)?;
                // Each range takes at least two bytes: running out ends the loop.
                for _ in 0..ranges {
                    r.varint().map_err(cut)?;
                    r.varint().map_err(cut)?;
                }
                if t == 0x03 {
                    for _ in 0..3 {
                        r.varint().map_err(cut)?;
                    }
                }
            }
            0x06 => {
                let offset = r.varint().map_err(cut)?;
                let len = r.varint().map_err(cut)?;
                let data = usize::try_from(len).map_err(|_| ParseError::Truncated);
                let data = data.and_then(|len| r.take(len)).map_err(cut)?;
                if offset + len > MAX_VARINT {
                    return Err(ParseError::Malformed("CRYPTO frame past 2^62".into()));
                }
                frames.crypto.push((offset, data));
            }
            0x1c => {
                // CONNECTION_CLOSE (transport): error code, frame type, reason phrase.
                r.varint().map_err(cut)?;
                r.varint().map_err(cut)?;
                let reason = r.varint().map_err(cut)?;
                let reason = usize::try_from(reason).map_err(|_| ParseError::Truncated);
                reason.and_then(|len| r.skip(len)).map_err(cut)?;
                frames.closed = true;
            }
            t => {
                return Err(ParseError::Malformed(format!("frame type {t:#x} in an Initial")));
            }
        }
    }
    Ok(frames)
}

/// The CRYPTO stream of the Initial packets, put back together by offset.
#[derive(Default)]
struct CryptoStream {
    buf: Vec<u8>,
    /// The byte ranges received: sorted, disjoint and not touching.
    have: Vec<(usize, usize)>,
}

impl CryptoStream {
    /// Keeps `data` at `offset`. A retransmission carries the same bytes (RFC 9000 §19.6), so
    /// overwriting what overlaps changes nothing.
    fn insert(&mut self, offset: u64, data: &[u8]) -> Result<(), ParseError> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let end = start.saturating_add(data.len());
        if end > MAX_CRYPTO_BYTES {
            return Err(ParseError::Malformed(format!(
                "CRYPTO data past {MAX_CRYPTO_BYTES} bytes"
            )));
        }
        if data.is_empty() {
            return Ok(());
        }
        if self.buf.len() < end {
            self.buf.resize(end, 0);
        }
        self.buf[start..end].copy_from_slice(data);
        self.have.push((start, end));
        self.have.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(self.have.len());
        for &(s, e) in &self.have {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        self.have = merged;
        Ok(())
    }

    /// The bytes from offset 0 up to the first gap.
    fn contiguous(&self) -> &[u8] {
        match self.have.first() {
            Some(&(0, end)) => &self.buf[..end],
            _ => &[],
        }
    }
}

/// Bounds-checked reads; running out is `Truncated`.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ParseError> {
        if self.0.len() < n {
            return Err(ParseError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn skip(&mut self, n: usize) -> Result<(), ParseError> {
        self.take(n).map(|_| ())
    }

    /// A connection ID: length byte, then the ID.
    fn cid(&mut self) -> Result<&'a [u8], ParseError> {
        let len = usize::from(self.take(1)?[0]);
        if len > MAX_CID_LEN {
            return Err(ParseError::Malformed(format!("connection ID of {len} bytes")));
        }
        self.take(len)
    }

    /// RFC 9000 §16: the two top bits of the first byte give the length (1, 2, 4 or 8 bytes).
    fn varint(&mut self) -> Result<u64, ParseError> {
        let first = self.take(1)?[0];
        let len = 1usize << (first >> 6);
        let rest = self.take(len - 1)?;
        Ok(rest.iter().fold(u64::from(first & 0x3f), |n, &b| n << 8 | u64::from(b)))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// RFC 9001 Appendix A: the client's first Destination Connection ID.
    const RFC_DCID: &[u8] = &[0x83, 0x94, 0xc8, 0xf0, 0x3e, 0x51, 0x57, 0x08];

    /// RFC 9001 Appendix A.2 (and RFC 9369 Appendix A.2): the CRYPTO frame of the client's
    /// Initial, a ClientHello for example.com. The payload is padded to 1162 bytes.
    const RFC_CRYPTO_FRAME: &str = "
        060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e868
        04fe3a47f06a2b69484c00000413011302010000c000000010000e00000b6578
        616d706c652e636f6dff01000100000a00080006001d00170018001000070005
        04616c706e000500050100000000003300260024001d00209370b2c9caa47fba
        baf4559fedba753de171fa71f50f1ce15d43e994ec74d748002b000302030400
        0d0010000e0403050306030203080408050806002d00020101001c0002400100
        3900320408ffffffffffffffff05048000ffff07048000ffff08011001048000
        75300901100f088394c8f03e51570806048000ffff";
    const RFC_PAYLOAD_LEN: usize = 1162;

    /// RFC 9001 Appendix A.2: the protected client Initial (packet number 2), 1200 bytes.
    const RFC9001_CLIENT_INITIAL: &str = "
        c000000001088394c8f03e5157080000449e7b9aec34d1b1c98dd7689fb8ec11
        d242b123dc9bd8bab936b47d92ec356c0bab7df5976d27cd449f63300099f399
        1c260ec4c60d17b31f8429157bb35a1282a643a8d2262cad67500cadb8e7378c
        8eb7539ec4d4905fed1bee1fc8aafba17c750e2c7ace01e6005f80fcb7df6212
        30c83711b39343fa028cea7f7fb5ff89eac2308249a02252155e2347b63d58c5
        457afd84d05dfffdb20392844ae812154682e9cf012f9021a6f0be17ddd0c208
        4dce25ff9b06cde535d0f920a2db1bf362c23e596d11a4f5a6cf3948838a3aec
        4e15daf8500a6ef69ec4e3feb6b1d98e610ac8b7ec3faf6ad760b7bad1db4ba3
        485e8a94dc250ae3fdb41ed15fb6a8e5eba0fc3dd60bc8e30c5c4287e53805db
        059ae0648db2f64264ed5e39be2e20d82df566da8dd5998ccabdae053060ae6c
        7b4378e846d29f37ed7b4ea9ec5d82e7961b7f25a9323851f681d582363aa5f8
        9937f5a67258bf63ad6f1a0b1d96dbd4faddfcefc5266ba6611722395c906556
        be52afe3f565636ad1b17d508b73d8743eeb524be22b3dcbc2c7468d54119c74
        68449a13d8e3b95811a198f3491de3e7fe942b330407abf82a4ed7c1b311663a
        c69890f4157015853d91e923037c227a33cdd5ec281ca3f79c44546b9d90ca00
        f064c99e3dd97911d39fe9c5d0b23a229a234cb36186c4819e8b9c5927726632
        291d6a418211cc2962e20fe47feb3edf330f2c603a9d48c0fcb5699dbfe58964
        25c5bac4aee82e57a85aaf4e2513e4f05796b07ba2ee47d80506f8d2c25e50fd
        14de71e6c418559302f939b0e1abd576f279c4b2e0feb85c1f28ff18f58891ff
        ef132eef2fa09346aee33c28eb130ff28f5b766953334113211996d20011a198
        e3fc433f9f2541010ae17c1bf202580f6047472fb36857fe843b19f5984009dd
        c324044e847a4f4a0ab34f719595de37252d6235365e9b84392b061085349d73
        203a4a13e96f5432ec0fd4a1ee65accdd5e3904df54c1da510b0ff20dcc0c77f
        cb2c0e0eb605cb0504db87632cf3d8b4dae6e705769d1de354270123cb11450e
        fc60ac47683d7b8d0f811365565fd98c4c8eb936bcab8d069fc33bd801b03ade
        a2e1fbc5aa463d08ca19896d2bf59a071b851e6c239052172f296bfb5e724047
        90a2181014f3b94a4e97d117b438130368cc39dbb2d198065ae3986547926cd2
        162f40a29f0c3c8745c0f50fba3852e566d44575c29d39a03f0cda721984b6f4
        40591f355e12d439ff150aab7613499dbd49adabc8676eef023b15b65bfc5ca0
        6948109f23f350db82123535eb8a7433bdabcb909271a6ecbcb58b936a88cd4e
        8f2e6ff5800175f113253d8fa9ca8885c2f552e657dc603f252e1a8e308f76f0
        be79e2fb8f5d5fbbe2e30ecadd220723c8c0aea8078cdfcb3868263ff8f09400
        54da48781893a7e49ad5aff4af300cd804a6b6279ab3ff3afb64491c85194aab
        760d58a606654f9f4400e8b38591356fbf6425aca26dc85244259ff2b19c41b9
        f96f3ca9ec1dde434da7d2d392b905ddf3d1f9af93d1af5950bd493f5aa731b4
        056df31bd267b6b90a079831aaf579be0a39013137aac6d404f518cfd4684064
        7e78bfe706ca4cf5e9c5453e9f7cfd2b8b4c8d169a44e55c88d4a9a7f9474241
        e221af44860018ab0856972e194cd934";

    /// RFC 9369 Appendix A.2: the same client Initial in QUIC version 2.
    const RFC9369_CLIENT_INITIAL: &str = "
        d76b3343cf088394c8f03e5157080000449ea0c95e82ffe67b6abcdb4298b485
        dd04de806071bf03dceebfa162e75d6c96058bdbfb127cdfcbf903388e99ad04
        9f9a3dd4425ae4d0992cfff18ecf0fdb5a842d09747052f17ac2053d21f57c5d
        250f2c4f0e0202b70785b7946e992e58a59ac52dea6774d4f03b55545243cf1a
        12834e3f249a78d395e0d18f4d766004f1a2674802a747eaa901c3f10cda5500
        cb9122faa9f1df66c392079a1b40f0de1c6054196a11cbea40afb6ef5253cd68
        18f6625efce3b6def6ba7e4b37a40f7732e093daa7d52190935b8da58976ff33
        12ae50b187c1433c0f028edcc4c2838b6a9bfc226ca4b4530e7a4ccee1bfa2a3
        d396ae5a3fb512384b2fdd851f784a65e03f2c4fbe11a53c7777c023462239dd
        6f7521a3f6c7d5dd3ec9b3f233773d4b46d23cc375eb198c63301c21801f6520
        bcfb7966fc49b393f0061d974a2706df8c4a9449f11d7f3d2dcbb90c6b877045
        636e7c0c0fe4eb0f697545460c806910d2c355f1d253bc9d2452aaa549e27a1f
        ac7cf4ed77f322e8fa894b6a83810a34b361901751a6f5eb65a0326e07de7c12
        16ccce2d0193f958bb3850a833f7ae432b65bc5a53975c155aa4bcb4f7b2c4e5
        4df16efaf6ddea94e2c50b4cd1dfe06017e0e9d02900cffe1935e0491d77ffb4
        fdf85290fdd893d577b1131a610ef6a5c32b2ee0293617a37cbb08b847741c3b
        8017c25ca9052ca1079d8b78aebd47876d330a30f6a8c6d61dd1ab5589329de7
        14d19d61370f8149748c72f132f0fc99f34d766c6938597040d8f9e2bb522ff9
        9c63a344d6a2ae8aa8e51b7b90a4a806105fcbca31506c446151adfeceb51b91
        abfe43960977c87471cf9ad4074d30e10d6a7f03c63bd5d4317f68ff325ba3bd
        80bf4dc8b52a0ba031758022eb025cdd770b44d6d6cf0670f4e990b22347a7db
        848265e3e5eb72dfe8299ad7481a408322cac55786e52f633b2fb6b614eaed18
        d703dd84045a274ae8bfa73379661388d6991fe39b0d93debb41700b41f90a15
        c4d526250235ddcd6776fc77bc97e7a417ebcb31600d01e57f32162a8560cacc
        7e27a096d37a1a86952ec71bd89a3e9a30a2a26162984d7740f81193e8238e61
        f6b5b984d4d3dfa033c1bb7e4f0037febf406d91c0dccf32acf423cfa1e70710
        10d3f270121b493ce85054ef58bada42310138fe081adb04e2bd901f2f13458b
        3d6758158197107c14ebb193230cd1157380aa79cae1374a7c1e5bbcb80ee23e
        06ebfde206bfb0fcbc0edc4ebec309661bdd908d532eb0c6adc38b7ca7331dce
        8dfce39ab71e7c32d318d136b6100671a1ae6a6600e3899f31f0eed19e3417d1
        34b90c9058f8632c798d4490da4987307cba922d61c39805d072b589bd52fdf1
        e86215c2d54e6670e07383a27bbffb5addf47d66aa85a0c6f9f32e59d85a44dd
        5d3b22dc2be80919b490437ae4f36a0ae55edf1d0b5cb4e9a3ecabee93dfc6e3
        8d209d0fa6536d27a5d6fbb17641cde27525d61093f1b28072d111b2b4ae5f89
        d5974ee12e5cf7d5da4d6a31123041f33e61407e76cffcdcfd7e19ba58cf4b53
        6f4c4938ae79324dc402894b44faf8afbab35282ab659d13c93f70412e85cb19
        9a37ddec600545473cfb5a05e08d0b209973b2172b4d21fb69745a262ccde96b
        a18b2faa745b6fe189cf772a9f84cbfc";

    fn unhex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
            .collect()
    }

    fn varint(v: u64) -> Vec<u8> {
        match v {
            0..64 => vec![v as u8],
            64..16384 => (0x4000 | v as u16).to_be_bytes().to_vec(),
            _ => (0x8000_0000 | v as u32).to_be_bytes().to_vec(),
        }
    }

    fn rustls_version(version: u32) -> Version {
        match version {
            VERSION_2 => Version::V2,
            _ => Version::V1,
        }
    }

    /// A client Initial: header with `dcid`, protected with the keys of `key_dcid` (the client's
    /// first DCID), as a client seals it (RFC 9001 §5).
    pub(crate) fn seal(
        version: u32,
        key_dcid: &[u8],
        dcid: &[u8],
        pn: u64,
        pn_len: usize,
        payload: &[u8],
    ) -> Vec<u8> {
        let suite = TLS13_AES_128_GCM_SHA256.tls13().unwrap().quic_suite().unwrap();
        let keys = suite.keys(key_dcid, Side::Client, rustls_version(version)).local;
        let type_bits = initial_type_bits(version).unwrap();
        let mut pkt = vec![LONG_FIXED | type_bits << 4 | (pn_len as u8 - 1)];
        pkt.extend(version.to_be_bytes());
        pkt.push(dcid.len() as u8);
        pkt.extend(dcid);
        pkt.extend([0, 0]); // no source connection ID, no token
        pkt.extend((0x4000 | (pn_len + payload.len() + 16) as u16).to_be_bytes());
        let pn_offset = pkt.len();
        pkt.extend(&pn.to_be_bytes()[8 - pn_len..]);
        let mut body = payload.to_vec();
        let tag = keys.packet.encrypt_in_place(pn, &pkt, &mut body).unwrap();
        pkt.extend(body);
        pkt.extend(tag.as_ref());
        let sample = pkt[pn_offset + 4..pn_offset + 20].to_vec();
        let mut first = pkt[0];
        let mut pn_field = pkt[pn_offset..pn_offset + pn_len].to_vec();
        keys.header.encrypt_in_place(&sample, &mut first, &mut pn_field).unwrap();
        pkt[0] = first;
        pkt[pn_offset..pn_offset + pn_len].copy_from_slice(&pn_field);
        pkt
    }

    pub(crate) fn crypto_frame(offset: usize, data: &[u8]) -> Vec<u8> {
        let mut f = vec![0x06];
        f.extend(varint(offset as u64));
        f.extend(varint(data.len() as u64));
        f.extend(data);
        f
    }

    /// A v1 Initial from `RFC_DCID` carrying `frames`, padded as clients do.
    fn initial(pn: u64, frames: &[u8]) -> Vec<u8> {
        let mut payload = frames.to_vec();
        payload.resize(payload.len().max(40), 0);
        seal(VERSION_1, RFC_DCID, RFC_DCID, pn, 2, &payload)
    }

    /// A ClientHello handshake message naming `name`, with `pad` bytes of padding extension
    /// (a stand-in for a post-quantum key share) and an ECH extension if `ech`.
    pub(crate) fn client_hello(name: &str, pad: usize, ech: bool) -> Vec<u8> {
        let mut exts = Vec::new();
        let mut entry = vec![0];
        entry.extend((name.len() as u16).to_be_bytes());
        entry.extend(name.as_bytes());
        exts.extend([0, 0]);
        exts.extend((entry.len() as u16 + 2).to_be_bytes());
        exts.extend((entry.len() as u16).to_be_bytes());
        exts.extend(entry);
        exts.extend([0x00, 0x15]);
        exts.extend((pad as u16).to_be_bytes());
        exts.extend(std::iter::repeat_n(0, pad));
        if ech {
            exts.extend([0xfe, 0x0d, 0, 40]);
            exts.extend([0x33; 40]);
        }
        let mut body = vec![0x03, 0x03];
        body.extend([0x11; 32]);
        body.extend([0, 0, 2, 0x13, 0x01, 1, 0]); // session id, cipher suites, compression
        body.extend((exts.len() as u16).to_be_bytes());
        body.extend(exts);
        let mut msg = vec![HANDSHAKE_CLIENT_HELLO];
        msg.extend(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend(body);
        msg
    }

    fn rfc_payload() -> Vec<u8> {
        let mut payload = unhex(RFC_CRYPTO_FRAME);
        assert_eq!(payload.len(), 245);
        payload.resize(RFC_PAYLOAD_LEN, 0);
        payload
    }

    fn name(s: &str) -> Result<Option<String>, ParseError> {
        Ok(Some(s.to_string()))
    }

    #[test]
    fn rfc9001_client_initial() {
        let packet = unhex(RFC9001_CLIENT_INITIAL);
        assert_eq!(packet.len(), 1200);
        // The test's sealing is the RFC's, byte for byte (and so the hex above is).
        assert_eq!(seal(VERSION_1, RFC_DCID, RFC_DCID, 2, 4, &rfc_payload()), packet);
        assert!(is_initial(&packet));
        let mut a = InitialAssembler::new();
        assert_eq!(a.push(&packet), name("example.com"));
        assert!(a.is_finished());
        assert_eq!(a.push(b"anything"), name("example.com"));
    }

    #[test]
    fn rfc9369_client_initial() {
        let packet = unhex(RFC9369_CLIENT_INITIAL);
        assert_eq!(packet.len(), 1200);
        assert_eq!(seal(VERSION_2, RFC_DCID, RFC_DCID, 2, 4, &rfc_payload()), packet);
        assert!(is_initial(&packet));
        let mut a = InitialAssembler::new();
        assert_eq!(
            a.push_hello(&packet),
            Ok(Hello { sni: Some("example.com".into()), ech: false })
        );
    }

    /// `hello` in CRYPTO frames of `cuts.len() + 1` pieces.
    fn pieces(hello: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut bounds = vec![0];
        bounds.extend(cuts);
        bounds.push(hello.len());
        bounds.windows(2).map(|w| crypto_frame(w[0], &hello[w[0]..w[1]])).collect()
    }

    #[test]
    fn hello_over_three_datagrams_in_every_order() {
        let hello = client_hello("www.example.org", 1500, false);
        let frames = pieces(&hello, &[500, 1000]);
        for order in [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]] {
            let mut a = InitialAssembler::new();
            for (i, &p) in order.iter().enumerate() {
                // Packet numbers in sending order, arriving in another.
                let got = a.push(&initial(p as u64, &frames[p]));
                match i {
                    2 => assert_eq!(got, name("www.example.org"), "{order:?}"),
                    _ => assert_eq!(got, Err(ParseError::Truncated), "{order:?} {i}"),
                }
            }
        }
    }

    #[test]
    fn retransmitted_and_overlapping_pieces() {
        let hello = client_hello("www.example.org", 1500, false);
        let first = crypto_frame(0, &hello[..700]);
        let overlap = crypto_frame(600, &hello[600..1200]);
        let last = crypto_frame(1100, &hello[1100..]);
        for order in [
            vec![&first, &first, &overlap, &last],
            vec![&last, &overlap, &overlap, &first],
            vec![&overlap, &last, &first],
        ] {
            let mut a = InitialAssembler::new();
            let n = order.len();
            for (pn, f) in order.into_iter().enumerate() {
                let got = a.push(&initial(pn as u64, f));
                match pn + 1 == n {
                    true => assert_eq!(got, name("www.example.org")),
                    false => assert_eq!(got, Err(ParseError::Truncated)),
                }
            }
        }
        // The halves of a split frame retransmitted in one packet, the same data twice.
        let mut a = InitialAssembler::new();
        let mut both = crypto_frame(0, &hello[..900]);
        both.extend(crypto_frame(0, &hello[..900]));
        assert_eq!(a.push(&initial(0, &both)), Err(ParseError::Truncated));
        assert_eq!(a.push(&initial(1, &crypto_frame(800, &hello[800..]))), name("www.example.org"));
    }

    #[test]
    fn coalesced_packets_in_one_datagram() {
        let hello = client_hello("www.example.org", 1000, false);
        let frames = pieces(&hello, &[600]);
        let mut datagram = initial(0, &frames[0]);
        datagram.extend(initial(1, &frames[1]));
        // A 0-RTT packet after them, then zero padding: not read.
        datagram.extend([0xd0, 0, 0, 0, 1, 8]);
        datagram.extend([0xee; 60]);
        datagram.extend([0; 30]);
        assert_eq!(InitialAssembler::new().push(&datagram), name("www.example.org"));

        // A second Initial cut by the copy: the first still counts.
        let mut datagram = initial(0, &frames[0]);
        let second = initial(1, &frames[1]);
        datagram.extend(&second[..second.len() - 10]);
        let mut a = InitialAssembler::new();
        assert_eq!(a.push(&datagram), Err(ParseError::Truncated));
        assert_eq!(a.push(&second), name("www.example.org"));
    }

    #[test]
    fn keys_come_from_the_first_dcid() {
        let hello = client_hello("www.example.org", 1500, false);
        let frames = pieces(&hello, &[700]);
        let server_cid = [0x5e; 12];
        // The second Initial carries the server's connection ID, still with the first keys.
        let mut a = InitialAssembler::new();
        assert_eq!(a.push(&initial(0, &frames[0])), Err(ParseError::Truncated));
        let second = seal(VERSION_1, RFC_DCID, &server_cid, 1, 2, &frames[1]);
        assert_eq!(a.push(&second), name("www.example.org"));

        // After a Retry: the client starts over with the ID the Retry gave, and its keys.
        let retry_cid = [0x7a; 8];
        let mut a = InitialAssembler::new();
        assert_eq!(a.push(&initial(0, &frames[0])), Err(ParseError::Truncated));
        let mut again = crypto_frame(0, &hello[..700]);
        again.resize(800, 0);
        let again = seal(VERSION_1, &retry_cid, &retry_cid, 1, 2, &again);
        assert_eq!(a.push(&again), Err(ParseError::Truncated));
        // ... then the server's ID, with the Retry's keys.
        let last = seal(VERSION_1, &retry_cid, &server_cid, 2, 2, &frames[1]);
        assert_eq!(a.push(&last), name("www.example.org"));
    }

    #[test]
    fn the_frames_an_initial_may_hold() {
        let hello = client_hello("www.example.org", 100, true);
        let mut frames = vec![0x01, 0x00, 0x00]; // PING, PADDING
        // ACK: largest 5, delay 0, 2 ranges, first range 1, (gap 0, len 0) twice.
        frames.extend([0x02, 5, 0, 2, 1, 0, 0, 0, 0]);
        // ACK with ECN counts, a two-byte largest.
        frames.extend([0x03, 0x40, 0x80, 0, 0, 0, 1, 2, 3]);
        frames.extend(crypto_frame(0, &hello));
        let mut a = InitialAssembler::new();
        let want = Hello { sni: Some("www.example.org".into()), ech: true };
        assert_eq!(a.push_hello(&initial(0, &frames)), Ok(want));

        // CONNECTION_CLOSE before the hello is whole: given up.
        let mut frames = crypto_frame(0, &hello[..50]);
        frames.extend([0x1c, 0x0a, 0x06, 3, b'b', b'y', b'e']);
        let mut a = InitialAssembler::new();
        assert!(matches!(a.push(&initial(0, &frames)), Err(ParseError::Malformed(_))));
        assert!(a.is_finished());

        // A frame type that has no place in an Initial (STREAM), a frame running past the
        // payload: the datagram is rejected, the flow goes on.
        let mut a = InitialAssembler::new();
        for bad in [vec![0x08, 0, 1, 0xaa], vec![0x06, 0, 0x50, 0x00, 1, 2]] {
            let mut bad = bad;
            bad.truncate(6);
            let packet = seal(VERSION_1, RFC_DCID, RFC_DCID, 0, 4, &bad);
            assert!(matches!(a.push(&packet), Err(ParseError::Malformed(_))), "{bad:?}");
            assert!(!a.is_finished());
        }
        assert_eq!(a.push(&initial(0, &crypto_frame(0, &hello))), name("www.example.org"));
    }

    #[test]
    fn crypto_data_not_a_client_hello() {
        let mut hello = client_hello("www.example.org", 0, false);
        hello[0] = 2; // a ServerHello
        let mut a = InitialAssembler::new();
        assert_eq!(
            a.push(&initial(0, &crypto_frame(0, &hello[..10]))),
            Err(ParseError::NotClientHello)
        );
        assert!(a.is_finished());
    }

    #[test]
    fn not_initials() {
        let rfc = unhex(RFC9001_CLIENT_INITIAL);
        let mut v2_bits_in_v1 = rfc.clone();
        v2_bits_in_v1[0] |= 0x10;
        let mut v1_bits_in_v2 = unhex(RFC9369_CLIENT_INITIAL);
        v1_bits_in_v2[0] &= !0x30;
        let mut handshake = rfc.clone();
        handshake[0] |= 0x20;
        let mut other_version = rfc.clone();
        other_version[4] = 2;
        let mut version_negotiation = rfc.clone();
        version_negotiation[1..5].fill(0);
        let mut short = rfc.clone();
        short[0] &= 0x7f;
        let mut no_fixed_bit = rfc.clone();
        no_fixed_bit[0] &= !0x40;
        for d in [
            v2_bits_in_v1,
            v1_bits_in_v2,
            handshake,
            other_version,
            version_negotiation,
            short,
            no_fixed_bit,
        ] {
            assert!(!is_initial(&d), "{:x?}", &d[..5]);
            let mut a = InitialAssembler::new();
            assert_eq!(a.push(&d), Err(ParseError::NotClientHello));
            assert!(!a.is_finished());
        }
        assert!(!is_initial(&[]));
        assert!(!is_initial(&rfc[..4]));
        assert_eq!(InitialAssembler::new().push(&[]), Err(ParseError::NotClientHello));
    }

    #[test]
    fn every_damaged_byte_and_every_cut_is_refused() {
        let rfc = unhex(RFC9001_CLIENT_INITIAL);
        for i in 0..rfc.len() {
            let mut d = rfc.clone();
            d[i] ^= 0x01;
            let mut a = InitialAssembler::new();
            assert!(a.push(&d).is_err(), "byte {i}");
            // The flow is not spoiled by it.
            assert_eq!(a.push(&rfc), name("example.com"), "byte {i}");
        }
        for cut in 0..rfc.len() {
            let got = InitialAssembler::new().push(&rfc[..cut]);
            assert!(got.is_err(), "cut at {cut}");
            if cut >= 22 {
                assert_eq!(got, Err(ParseError::Truncated), "cut at {cut}");
            }
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut x: u32 = 0x9e37_79b9;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        let rfc = unhex(RFC9001_CLIENT_INITIAL);
        let small = initial(0, &crypto_frame(0, &client_hello("a.example", 30, false)));
        for _ in 0..3000 {
            let mut a = InitialAssembler::new();
            for _ in 0..(next() % 4 + 1) {
                let mut d = match next() % 3 {
                    0 => rfc.clone(),
                    1 => small.clone(),
                    _ => {
                        let mut d = vec![0xc0, 0, 0, 0, 1];
                        d.extend((0..next() % 200).map(|_| next() as u8));
                        d
                    }
                };
                // Header bytes most often: they decide the framing.
                for _ in 0..(next() % 3) {
                    let i = next() as usize % d.len().min(40);
                    d[i] = next() as u8;
                }
                d.truncate(next() as usize % (d.len() + 1));
                let _ = a.push(&d);
            }
        }
    }

    #[test]
    fn gives_up_at_the_bounds() {
        // Pieces that never reach offset 0.
        let hello = client_hello("www.example.org", 1500, false);
        let mut a = InitialAssembler::new();
        for pn in 0..MAX_DATAGRAMS as u64 - 1 {
            let got = a.push(&initial(pn, &crypto_frame(100, &hello[100..300])));
            assert_eq!(got, Err(ParseError::Truncated));
        }
        let got = a.push(&initial(7, &crypto_frame(100, &hello[100..300])));
        assert!(matches!(got, Err(ParseError::Malformed(_))), "{got:?}");
        assert!(a.is_finished());
        // Even a whole hello is no longer read.
        assert_eq!(a.push(&initial(8, &crypto_frame(0, &hello))), got);

        // Datagrams that do not open count too.
        let mut a = InitialAssembler::new();
        for _ in 0..MAX_DATAGRAMS {
            let _ = a.push(b"\xc0\x00\x00\x00\x01garbage");
        }
        assert!(a.is_finished());

        // CRYPTO data past the bound, a hello claiming to be longer than it.
        let mut a = InitialAssembler::new();
        let got = a.push(&initial(0, &crypto_frame(MAX_CRYPTO_BYTES - 10, &[1; 20])));
        assert!(matches!(got, Err(ParseError::Malformed(_))), "{got:?}");
        assert!(a.is_finished());
        let mut a = InitialAssembler::new();
        let got = a.push(&initial(0, &crypto_frame(0, &[1, 0, 0x40, 0, 3, 3])));
        assert!(matches!(got, Err(ParseError::Malformed(_))), "{got:?}");
    }

    #[test]
    fn packet_numbers() {
        // RFC 9000 Appendix A.3's example.
        assert_eq!(decode_packet_number(Some(0xa82f30ea), 0x9b32, 2), 0xa82f9b32);
        assert_eq!(decode_packet_number(None, 2, 4), 2);
        assert_eq!(decode_packet_number(Some(0xff), 0x01, 1), 0x101);
        assert_eq!(decode_packet_number(Some(0x101), 0xff, 1), 0xff);
    }
}
