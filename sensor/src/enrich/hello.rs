//! ClientHellos that span several packets, put back together before they are parsed: TCP
//! segments ([`TcpHellos`]) and QUIC Initials ([`QuicHellos`]).
//!
//! A ClientHello with a post-quantum key share (X25519MLKEM768, sent by every major browser and
//! Android's TLS stack) is ~1.9 kB: over TCP it spans two segments, and the kernel hands up
//! the first segment and then the later ones it follows (`TlsSegment` events, placed by their
//! sequence numbers), each in chunks of at most `EVENT_DATA_MAX` bytes. Here the pieces of a
//! flow are laid out by stream offset (out of order, retransmitted and overlapping pieces are
//! fine: a byte's first copy is kept) and the ClientHello is parsed once the bytes from its
//! start are contiguous to its end. (A server_name found earlier is used only if the rest never
//! comes: an `encrypted_client_hello` extension after it would change what it means.)
//!
//! QUIC: each datagram comes in chunks too (one, for Chromium's 1,250-byte Initials); they are
//! joined, then handed to the connection's [`InitialAssembler`], which decrypts and gathers
//! the CRYPTO frames. Connections under one flow key are told apart by the Destination
//! Connection ID of their first Initial.
//!
//! Bounds: a flow waits at most [`WAIT_SECS`] and gathers at most [`MAX_BYTES`]; at most
//! [`MAX_PENDING`] flows wait at once (the oldest is given up first). A flow given up counts
//! as a parse error (`truncated`) of its kind.

use sensor_common::FlowKey;

use super::{
    parse::ParseError,
    quic::InitialAssembler,
    tls::{self, Hello},
};
use crate::types::FastMap;

/// How long a flow's ClientHello may take to arrive whole.
pub const WAIT_SECS: u64 = 10;
/// The most stream bytes gathered for one ClientHello.
pub const MAX_BYTES: usize = 16 * 1024;
/// The most flows waiting at once.
pub const MAX_PENDING: usize = 4096;
/// The most pieces kept for one flow (chunks and segments, retransmissions included).
const MAX_PIECES: usize = 32;

/// What a piece brought.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// The ClientHello is read: its name, if any, and whether it offers ECH.
    Named(Hello),
    /// More of it is still to come.
    Waiting,
}

/// The TCP ClientHellos being put back together, by flow. A flow key has no client port, so
/// two connections to the same server may be under way at once under one key: each of its
/// ClientHellos is kept apart by its starting sequence number (at most [`PER_KEY`]).
#[derive(Default)]
pub struct TcpHellos {
    pending: FastMap<FlowKey, Vec<Pending>>,
    /// Hellos waiting, over all keys.
    count: usize,
    /// Hellos given up (too slow, too big, or pushed out by newer ones) since the last take.
    given_up: u64,
}

/// ClientHellos under way at once under one flow key.
const PER_KEY: usize = 4;

struct Pending {
    /// The sequence number of the ClientHello's first byte, once its first segment is seen.
    start: Option<u32>,
    /// Pieces by sequence number of their first byte.
    pieces: Vec<(u32, Vec<u8>)>,
    since: u64,
    /// What the bytes so far say, when they hold a server_name but not the whole ClientHello:
    /// the answer if the rest never comes.
    partial: Option<Hello>,
}

impl Pending {
    /// Whether a piece at `seq` can belong to this ClientHello.
    fn holds(&self, seq: u32) -> bool {
        match self.start {
            Some(start) => (seq.wrapping_sub(start) as usize) < MAX_BYTES,
            // Before its first segment: any piece within reach of the pieces it has.
            None => self.pieces.iter().any(|(s, _)| {
                (seq.wrapping_sub(*s) as usize) < MAX_BYTES
                    || (s.wrapping_sub(seq) as usize) < MAX_BYTES
            }),
        }
    }
}

impl TcpHellos {
    /// Takes one piece: the start of a ClientHello (`first`: its segment's first chunk) or a
    /// later piece (a later chunk, a later segment), `data` at sequence number `seq`.
    pub fn add(
        &mut self,
        key: &FlowKey,
        first: bool,
        seq: u32,
        data: &[u8],
        now: u64,
    ) -> Result<Progress, ParseError> {
        // The common case: a ClientHello that its first chunk holds whole.
        if first && whole(data) {
            return tls::client_hello_info(data).map(Progress::Named);
        }
        let list = self.pending.get(key);
        let at = list.and_then(|l| {
            l.iter().position(|p| match p.start {
                Some(start) => {
                    if first {
                        start == seq
                    } else {
                        p.holds(seq)
                    }
                }
                None => p.holds(seq),
            })
        });
        let at = match at {
            Some(at) => at,
            None => {
                if self.count >= MAX_PENDING {
                    self.give_up_oldest();
                }
                let list = self.pending.entry(*key).or_default();
                if list.len() >= PER_KEY {
                    list.remove(0);
                    self.count -= 1;
                    self.given_up += 1;
                }
                list.push(Pending { start: None, pieces: Vec::new(), since: now, partial: None });
                self.count += 1;
                list.len() - 1
            }
        };
        let Some(list) = self.pending.get_mut(key) else { return Ok(Progress::Waiting) };
        let p = &mut list[at];
        if first {
            p.start = Some(seq);
        }
        if p.pieces.len() >= MAX_PIECES {
            self.remove(key, at);
            self.given_up += 1;
            return Ok(Progress::Waiting);
        }
        p.pieces.push((seq, data.to_vec()));
        let Some(start) = p.start else { return Ok(Progress::Waiting) };
        let stream = contiguous(start, &p.pieces);
        let read = tls::client_hello_info(&stream);
        match read {
            Err(ParseError::Truncated) if stream.len() < MAX_BYTES => Ok(Progress::Waiting),
            Ok(hello) if !whole(&stream) && stream.len() < MAX_BYTES => {
                p.partial = Some(hello);
                Ok(Progress::Waiting)
            }
            done => {
                self.remove(key, at);
                done.map(Progress::Named)
            }
        }
    }

    /// Ends hellos that waited longer than [`WAIT_SECS`]: those whose server_name had come
    /// are returned to be learnt; the others are given up. Pieces that never saw their
    /// ClientHello's start go silently (mostly retransmissions after it was read).
    pub fn expire(&mut self, now: u64) -> Vec<(FlowKey, Hello)> {
        let mut given_up = 0;
        let mut late = Vec::new();
        self.pending.retain(|key, list| {
            list.retain_mut(|p| {
                let keep = now.saturating_sub(p.since) < WAIT_SECS;
                if !keep {
                    match p.partial.take() {
                        Some(hello) => late.push((*key, hello)),
                        None => given_up += u64::from(p.start.is_some()),
                    }
                }
                keep
            });
            !list.is_empty()
        });
        self.count = self.pending.values().map(Vec::len).sum();
        self.given_up += given_up;
        late
    }

    /// Hellos given up since the last call.
    pub fn take_given_up(&mut self) -> u64 {
        std::mem::take(&mut self.given_up)
    }

    /// Hellos waiting for the rest of their bytes.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn remove(&mut self, key: &FlowKey, at: usize) {
        if let Some(list) = self.pending.get_mut(key) {
            list.remove(at);
            self.count -= 1;
            if list.is_empty() {
                self.pending.remove(key);
            }
        }
    }

    fn give_up_oldest(&mut self) {
        let oldest = self
            .pending
            .iter()
            .flat_map(|(k, l)| l.iter().enumerate().map(move |(i, p)| (p.since, *k, i)))
            .min_by_key(|(since, _, _)| *since);
        if let Some((_, key, at)) = oldest {
            self.remove(&key, at);
            self.given_up += 1;
        }
    }
}

/// Whether `stream` holds the whole first TLS record it starts (a ClientHello's, as a rule).
fn whole(stream: &[u8]) -> bool {
    match stream.get(3..5) {
        Some(&[a, b]) => stream.len() >= 5 + usize::from(u16::from_be_bytes([a, b])),
        _ => false,
    }
}

/// The QUIC connections whose Initials are being read, by flow.
#[derive(Default)]
pub struct QuicHellos {
    flows: FastMap<FlowKey, QuicFlow>,
    /// Connections held, over all flows.
    count: usize,
    /// Connections given up since the last take (see [`QuicHellos::expire`]).
    given_up: u64,
}

#[derive(Default)]
struct QuicFlow {
    /// A datagram whose chunks are still arriving: its packet's time stamp, its length and
    /// the bytes so far.
    partial: Option<(u64, u32, Vec<u8>)>,
    conns: Vec<QuicConn>,
}

struct QuicConn {
    /// The Destination Connection ID of its first Initial.
    dcid: Vec<u8>,
    assembler: InitialAssembler,
    since: u64,
    /// An Initial of it was read (its CRYPTO data is under way): giving it up is a failure,
    /// where a connection none of whose datagrams opened is just noise.
    opened: bool,
}

impl QuicHellos {
    /// Takes one chunk of a client's QUIC datagram: `data` at `chunk_off` of a datagram of
    /// `len` bytes sent at `stamp` (the kernel's time stamp, the same for its chunks).
    pub fn add(
        &mut self,
        key: &FlowKey,
        stamp: u64,
        len: u32,
        chunk_off: u16,
        data: &[u8],
        now: u64,
    ) -> Result<Progress, ParseError> {
        let max = MAX_CHUNKS * sensor_common::EVENT_DATA_MAX;
        let want = (len as usize).min(max);
        let flow = self.flows.entry(*key).or_default();
        let datagram = if chunk_off == 0 && data.len() >= want {
            flow.partial = None;
            data.to_vec()
        } else {
            let mut partial = match flow.partial.take() {
                Some(p)
                    if chunk_off != 0 && p.0 == stamp && p.2.len() == usize::from(chunk_off) =>
                {
                    p
                }
                _ if chunk_off == 0 => (stamp, len, Vec::new()),
                // A chunk whose start is lost (the ring was full): the datagram cannot be read.
                _ => return Ok(Progress::Waiting),
            };
            partial.2.extend_from_slice(data);
            if partial.2.len() < want {
                flow.partial = Some(partial);
                return Ok(Progress::Waiting);
            }
            partial.2
        };
        let Some(dcid) = initial_dcid(&datagram) else {
            return Err(ParseError::NotClientHello);
        };
        let at = match flow.conns.iter().position(|c| c.dcid == dcid) {
            Some(at) => at,
            None => {
                if flow.conns.len() >= PER_KEY {
                    flow.conns.remove(0);
                    self.count -= 1;
                }
                flow.conns.push(QuicConn {
                    dcid: dcid.to_vec(),
                    assembler: InitialAssembler::new(),
                    since: now,
                    opened: false,
                });
                self.count += 1;
                flow.conns.len() - 1
            }
        };
        let conn = &mut flow.conns[at];
        if conn.assembler.is_finished() {
            // A retransmission of a connection already read.
            return Ok(Progress::Waiting);
        }
        match conn.assembler.push_hello(&datagram) {
            Ok(hello) => Ok(Progress::Named(hello)),
            Err(ParseError::Truncated) => {
                conn.opened = true;
                Ok(Progress::Waiting)
            }
            Err(e) if conn.assembler.is_finished() => Err(e),
            // Not an Initial of this connection that opens (the server's connection ID after
            // its reply, an injected packet): noise, not a failure.
            Err(_) => Ok(Progress::Waiting),
        }
        .inspect(|_| self.bound())
    }

    /// Forgets connections older than [`WAIT_SECS`]; those that were under way and never
    /// finished are given up.
    pub fn expire(&mut self, now: u64) {
        let mut given_up = 0;
        self.flows.retain(|_, flow| {
            flow.conns.retain(|c| {
                let keep = now.saturating_sub(c.since) < WAIT_SECS;
                given_up += u64::from(!keep && c.opened && !c.assembler.is_finished());
                keep
            });
            // A datagram's later chunks come right after its first: one left over is stale.
            flow.partial = None;
            !flow.conns.is_empty()
        });
        self.count = self.flows.values().map(|f| f.conns.len()).sum();
        self.given_up += given_up;
    }

    /// Connections given up since the last call.
    pub fn take_given_up(&mut self) -> u64 {
        std::mem::take(&mut self.given_up)
    }

    /// Connections held.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Beyond [`MAX_PENDING`] connections, the oldest go (given up if under way).
    fn bound(&mut self) {
        while self.count > MAX_PENDING {
            let oldest = self
                .flows
                .iter()
                .flat_map(|(k, f)| f.conns.iter().enumerate().map(move |(i, c)| (c.since, *k, i)))
                .min_by_key(|(since, _, _)| *since);
            let Some((_, key, at)) = oldest else { break };
            if let Some(flow) = self.flows.get_mut(&key) {
                let c = flow.conns.remove(at);
                self.given_up += u64::from(c.opened && !c.assembler.is_finished());
                self.count -= 1;
                if flow.conns.is_empty() {
                    self.flows.remove(&key);
                }
            }
        }
    }
}

/// Chunks a datagram comes in at most (the kernel's `MAX_EVENT_CHUNKS`).
const MAX_CHUNKS: usize = sensor_common::MAX_EVENT_CHUNKS;

/// The Destination Connection ID of a long-header packet starting `datagram`.
fn initial_dcid(datagram: &[u8]) -> Option<&[u8]> {
    let len = usize::from(*datagram.get(5)?);
    datagram.get(6..6 + len)
}

/// The stream from `start` as far as the pieces cover it without a gap (at most
/// [`MAX_BYTES`]). Pieces before `start` (or too far past it) are ignored; where pieces
/// overlap, the first one laid down wins.
fn contiguous(start: u32, pieces: &[(u32, Vec<u8>)]) -> Vec<u8> {
    let mut placed: Vec<(usize, &[u8])> = pieces
        .iter()
        .filter_map(|(seq, data)| {
            let off = seq.wrapping_sub(start) as usize;
            (off < MAX_BYTES).then_some((off, data.as_slice()))
        })
        .collect();
    placed.sort_by_key(|(off, _)| *off);
    let mut out = Vec::new();
    for (off, data) in placed {
        if off > out.len() {
            break;
        }
        let skip = out.len() - off;
        if let Some(rest) = data.get(skip..) {
            let room = MAX_BYTES - out.len();
            out.extend_from_slice(&rest[..rest.len().min(room)]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TLS record holding a ClientHello for `name`, padded with an extension of `pad` bytes
    /// placed before the server_name (as Chrome's shuffled order may), so that the name sits
    /// past the first segment.
    pub(crate) fn client_hello(name: &str, pad: usize) -> Vec<u8> {
        let mut exts = Vec::new();
        // A large extension first (stands in for the post-quantum key share).
        exts.extend_from_slice(&0x0033u16.to_be_bytes());
        exts.extend_from_slice(&(pad as u16).to_be_bytes());
        exts.extend(std::iter::repeat_n(0xab, pad));
        let host = name.as_bytes();
        let sni_list_len = 3 + host.len();
        exts.extend_from_slice(&0x0000u16.to_be_bytes());
        exts.extend_from_slice(&((sni_list_len + 2) as u16).to_be_bytes());
        exts.extend_from_slice(&(sni_list_len as u16).to_be_bytes());
        exts.push(0);
        exts.extend_from_slice(&(host.len() as u16).to_be_bytes());
        exts.extend_from_slice(host);
        record(&exts)
    }

    /// A TLS record holding a ClientHello with these extensions.
    fn record(exts: &[u8]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend([7u8; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[1, 0]); // compression: null
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(exts);
        let mut hs = vec![1];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend(body);
        let mut rec = vec![22, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend(hs);
        rec
    }

    fn named(name: &str, ech: bool) -> Progress {
        Progress::Named(Hello { sni: Some(name.into()), ech })
    }

    fn key(last: u8) -> FlowKey {
        FlowKey {
            client_mac: [2, 0, 0, 0, 0, last],
            remote_port: 443,
            protocol: 6,
            ..FlowKey::default()
        }
    }

    /// Splits `hello` into the pieces the kernel hands up: segments of `mss` bytes from
    /// sequence number `isn`, each in chunks of 1280; (first, seq, data).
    fn pieces(hello: &[u8], isn: u32, mss: usize) -> Vec<(bool, u32, Vec<u8>)> {
        let mut out = Vec::new();
        for (i, seg) in hello.chunks(mss).enumerate() {
            let seg_seq = isn.wrapping_add((i * mss) as u32);
            for (j, chunk) in seg.chunks(1280).enumerate() {
                out.push((
                    i == 0 && j == 0,
                    seg_seq.wrapping_add((j * 1280) as u32),
                    chunk.to_vec(),
                ));
            }
        }
        out
    }

    fn permutations(n: usize) -> Vec<Vec<usize>> {
        if n == 0 {
            return vec![vec![]];
        }
        let mut out = Vec::new();
        for p in permutations(n - 1) {
            for i in 0..=p.len() {
                let mut q = p.clone();
                q.insert(i, n - 1);
                out.push(q);
            }
        }
        out
    }

    /// Feeds the pieces in `order`; the name must come exactly when the last needed piece
    /// arrives, and never before.
    fn feed(
        h: &mut TcpHellos,
        k: &FlowKey,
        ps: &[(bool, u32, Vec<u8>)],
        order: &[usize],
    ) -> Vec<Progress> {
        order.iter().map(|&i| h.add(k, ps[i].0, ps[i].1, &ps[i].2, 100).unwrap()).collect()
    }

    /// Chromium 156's ClientHello (recorded from `chromium --headless=new` on Debian 12): 1,926
    /// bytes with its X25519MLKEM768 key share, its server_name at byte 1,898, and a GREASE
    /// `encrypted_client_hello` extension (Chrome offers one when it knows no ECH config).
    const CHROMIUM: &[u8] = include_bytes!("../../tests/data/chromium/clienthello-tcp.bin");
    const CHROMIUM_NAME: &str = "rec.pq-tls.example";

    /// The recorded ClientHello split into two segments at every byte, each segment in chunks
    /// as the kernel hands them up, fed in both orders: named exactly once, as soon as its
    /// server_name is there; the pieces after that wait for nothing and are dropped silently.
    #[test]
    fn chromiums_clienthello_split_anywhere_in_any_order() {
        assert_eq!(CHROMIUM.len(), 1926);
        assert!(CHROMIUM.windows(2).any(|w| w == [0x11, 0xec]), "the X25519MLKEM768 group");
        let named = named(CHROMIUM_NAME, true);
        for cut in 1..CHROMIUM.len() {
            let (a, b) = CHROMIUM.split_at(cut);
            let isn = 4_000_000_000u32.wrapping_add(cut as u32 * 7919);
            let mut ps = Vec::new();
            for (first, seq, seg) in [(true, isn, a), (false, isn.wrapping_add(cut as u32), b)] {
                for (j, chunk) in seg.chunks(1280).enumerate() {
                    ps.push((first && j == 0, seq.wrapping_add(j as u32 * 1280), chunk.to_vec()));
                }
            }
            let n = ps.len();
            assert!(n >= 2);
            let forward: Vec<usize> = (0..n).collect();
            let backward: Vec<usize> = (0..n).rev().collect();
            for order in [forward, backward] {
                let mut h = TcpHellos::default();
                let got = feed(&mut h, &key(1), &ps, &order);
                let names: Vec<&Progress> =
                    got.iter().filter(|p| **p != Progress::Waiting).collect();
                assert_eq!(names, [&named], "cut {cut}, order {order:?}");
                h.expire(100 + WAIT_SECS);
                assert_eq!((h.len(), h.take_given_up()), (0, 0), "cut {cut}, order {order:?}");
            }
        }
    }

    /// Three segments, every order, for cuts across the ClientHello.
    #[test]
    fn chromiums_clienthello_in_three_segments_in_every_order() {
        let named = named(CHROMIUM_NAME, true);
        for c1 in (100..1800).step_by(173) {
            for c2 in [c1 + 1, c1 + 400, 1900].into_iter().filter(|&c2| c2 > c1 && c2 < 1926) {
                let segs = [&CHROMIUM[..c1], &CHROMIUM[c1..c2], &CHROMIUM[c2..]];
                let ps: Vec<(bool, u32, Vec<u8>)> = [0, c1, c2]
                    .iter()
                    .zip(segs)
                    .enumerate()
                    .map(|(i, (&off, seg))| (i == 0, 9 + off as u32, seg.to_vec()))
                    .collect();
                for order in permutations(3) {
                    let mut h = TcpHellos::default();
                    let got = feed(&mut h, &key(1), &ps, &order);
                    let names: Vec<&Progress> =
                        got.iter().filter(|p| **p != Progress::Waiting).collect();
                    assert_eq!(names, [&named], "{c1}/{c2} {order:?}");
                }
            }
        }
    }

    #[test]
    fn a_hello_in_one_chunk_is_named_at_once_and_kept_nowhere() {
        let mut h = TcpHellos::default();
        let hello = client_hello("one.example.com", 100);
        assert_eq!(h.add(&key(1), true, 5, &hello, 100), Ok(named("one.example.com", false)));
        assert!(h.is_empty());
    }

    /// A 1.9 kB ClientHello whose name is past the first segment, over 1460-byte segments
    /// (three pieces: 1280 + 180 of the first segment, then the second), in every order, with
    /// a sequence number that wraps inside it.
    #[test]
    fn every_order_of_the_pieces_names_the_flow() {
        let hello = client_hello("pq.example.org", 1700);
        assert!(hello.len() > 1460 && hello.len() < 2920, "{}", hello.len());
        for isn in [1000, u32::MAX - 700] {
            let ps = pieces(&hello, isn, 1460);
            assert_eq!(ps.len(), 3);
            for order in permutations(ps.len()) {
                let mut h = TcpHellos::default();
                let got = feed(&mut h, &key(1), &ps, &order);
                let named = named("pq.example.org", false);
                assert_eq!(got.last(), Some(&named), "order {order:?}");
                assert!(
                    got[..got.len() - 1].iter().all(|p| *p == Progress::Waiting),
                    "{order:?}: {got:?}"
                );
                assert!(h.is_empty(), "done flows are not kept");
            }
        }
    }

    /// Retransmitted and overlapping segments (a resend that coalesces two segments, a
    /// duplicate of the first) do not disturb it; a segment of another flow does not count.
    #[test]
    fn retransmissions_and_overlaps_are_fine() {
        let hello = client_hello("rt.example.net", 2500);
        let isn = 77;
        let mut h = TcpHellos::default();
        let k = key(1);
        // The first segment, its duplicate, then a resend of bytes 1000..2400 in one piece.
        assert_eq!(h.add(&k, true, isn, &hello[..1280], 1), Ok(Progress::Waiting));
        assert_eq!(h.add(&k, true, isn, &hello[..1280], 1), Ok(Progress::Waiting));
        assert_eq!(h.add(&key(2), false, isn + 1280, &hello[1280..], 1), Ok(Progress::Waiting));
        assert_eq!(h.add(&k, false, isn + 1000, &hello[1000..2400], 1), Ok(Progress::Waiting));
        assert_eq!(
            h.add(&k, false, isn + 2000, &hello[2000..], 1),
            Ok(named("rt.example.net", false))
        );
        assert_eq!(h.len(), 1, "the other flow still waits");
    }

    /// Two connections to one server under way at once (one flow key): each is named.
    #[test]
    fn two_hellos_under_one_key() {
        let (a, b) = (client_hello("a.example.com", 1700), client_hello("b.example.com", 1700));
        let mut h = TcpHellos::default();
        let k = key(1);
        assert_eq!(h.add(&k, true, 10, &a[..1460], 1), Ok(Progress::Waiting));
        assert_eq!(h.add(&k, true, 900_000, &b[..1460], 1), Ok(Progress::Waiting));
        assert_eq!(
            h.add(&k, false, 900_000 + 1460, &b[1460..], 1),
            Ok(named("b.example.com", false))
        );
        assert_eq!(h.add(&k, false, 10 + 1460, &a[1460..], 1), Ok(named("a.example.com", false)));
        assert!(h.is_empty());
    }

    /// A lost segment: the flow waits, then is given up after WAIT_SECS and counted once.
    #[test]
    fn a_lost_segment_is_given_up_after_the_wait() {
        let hello = client_hello("lost.example.com", 1700);
        let mut h = TcpHellos::default();
        assert_eq!(h.add(&key(1), true, 0, &hello[..1460], 100), Ok(Progress::Waiting));
        h.expire(100 + WAIT_SECS - 1);
        assert_eq!((h.len(), h.take_given_up()), (1, 0));
        h.expire(100 + WAIT_SECS);
        assert_eq!((h.len(), h.take_given_up()), (0, 1));
        assert_eq!(h.take_given_up(), 0);
    }

    /// A server_name in the first segment, the rest lost: the name is learnt when the wait ends
    /// (not at once: an ECH extension after it would change what it means).
    #[test]
    fn a_name_without_the_rest_is_used_when_the_wait_ends() {
        // The name first, then a large key share.
        let big = {
            let mut exts = Vec::new();
            let host = b"early.example.com";
            exts.extend_from_slice(&[0, 0]);
            exts.extend_from_slice(&((host.len() + 5) as u16).to_be_bytes());
            exts.extend_from_slice(&((host.len() + 3) as u16).to_be_bytes());
            exts.push(0);
            exts.extend_from_slice(&(host.len() as u16).to_be_bytes());
            exts.extend_from_slice(host);
            exts.extend_from_slice(&[0, 0x33, 0x07, 0xd0]);
            exts.extend(std::iter::repeat_n(0xab, 2000));
            record(&exts)
        };
        let mut h = TcpHellos::default();
        assert_eq!(h.add(&key(1), true, 0, &big[..1460], 100), Ok(Progress::Waiting));
        assert!(h.expire(100 + WAIT_SECS - 1).is_empty());
        let late = h.expire(100 + WAIT_SECS);
        assert_eq!(late, [(key(1), Hello { sni: Some("early.example.com".into()), ech: false })]);
        assert_eq!(h.take_given_up(), 0);
        // With the rest, it is read at once.
        let mut h = TcpHellos::default();
        assert_eq!(h.add(&key(1), true, 0, &big[..1460], 100), Ok(Progress::Waiting));
        assert_eq!(
            h.add(&key(1), false, 1460, &big[1460..], 100),
            Ok(named("early.example.com", false))
        );
    }

    /// Garbage after a valid start ends the flow with an error, not a wait.
    #[test]
    fn a_malformed_continuation_is_an_error() {
        let mut hello = client_hello("bad.example.com", 1700);
        let n = hello.len();
        // The server_name's length now runs past the record.
        hello[n - "bad.example.com".len() - 2] = 0xff;
        let mut h = TcpHellos::default();
        assert_eq!(h.add(&key(1), true, 0, &hello[..1460], 1), Ok(Progress::Waiting));
        assert!(h.add(&key(1), false, 1460, &hello[1460..], 1).is_err());
        assert!(h.is_empty());
    }

    /// Bounds: pieces per flow and flows at once.
    #[test]
    fn bounded() {
        let hello = client_hello("big.example.com", 3000);
        let mut h = TcpHellos::default();
        for i in 0..MAX_PIECES as u32 {
            let at = i as usize;
            assert_eq!(h.add(&key(1), i == 0, i, &hello[at..=at], 1), Ok(Progress::Waiting));
        }
        assert_eq!(h.add(&key(1), false, 40, &hello[40..41], 1), Ok(Progress::Waiting));
        assert_eq!((h.len(), h.take_given_up()), (0, 1), "too many pieces");
        for i in 0..=MAX_PENDING {
            let k = FlowKey { remote_port: i as u16, protocol: 6, ..FlowKey::default() };
            h.add(&k, true, 0, &hello[..1460], i as u64).unwrap();
        }
        assert_eq!((h.len(), h.take_given_up()), (MAX_PENDING, 1), "the oldest went");
    }

    // QUIC

    /// Chromium 156's first three Initials to `rec.pq-quic.example` (recorded as above, with
    /// `--origin-to-force-quic-on`): 1,250-byte datagrams, the ClientHello over the first two,
    /// the third a retransmission.
    const INITIALS: [&[u8]; 3] = [
        include_bytes!("../../tests/data/chromium/initial-0.bin"),
        include_bytes!("../../tests/data/chromium/initial-1.bin"),
        include_bytes!("../../tests/data/chromium/initial-2.bin"),
    ];

    fn quic_key(last: u8) -> FlowKey {
        FlowKey { protocol: 17, ..key(last) }
    }

    /// Each datagram whole in one chunk, as the kernel hands up a 1,250-byte one.
    fn push(h: &mut QuicHellos, k: &FlowKey, stamp: u64, d: &[u8]) -> Progress {
        h.add(k, stamp, d.len() as u32, 0, d, 100).unwrap()
    }

    #[test]
    fn chromiums_initials_in_every_order() {
        let want = Progress::Named(Hello { sni: Some("rec.pq-quic.example".into()), ech: true });
        for order in permutations(3) {
            let mut h = QuicHellos::default();
            let got: Vec<Progress> =
                order.iter().map(|&i| push(&mut h, &quic_key(1), i as u64, INITIALS[i])).collect();
            let names: Vec<&Progress> = got.iter().filter(|p| **p != Progress::Waiting).collect();
            assert_eq!(names, [&want], "{order:?}: {got:?}");
            h.expire(100 + WAIT_SECS);
            assert_eq!((h.len(), h.take_given_up()), (0, 0));
        }
    }

    /// A 1,400-byte datagram comes in two chunks (1,280 + 120) with one time stamp: read once
    /// both are there. A chunk of another datagram (another stamp) does not complete it.
    #[test]
    fn a_datagram_in_chunks_is_joined() {
        use crate::enrich::quic::tests::{client_hello, crypto_frame, seal};
        let dcid = [7u8; 8];
        let mut payload = crypto_frame(0, &client_hello("chunks.example.net", 600, false));
        payload.resize(1400 - 50, 0);
        let d = seal(1, &dcid, &dcid, 0, 2, &payload);
        assert!(d.len() > 1280 && d.len() < 1500, "{}", d.len());
        let len = d.len() as u32;
        let k = quic_key(1);
        let mut h = QuicHellos::default();
        assert_eq!(h.add(&k, 5, len, 0, &d[..1280], 100), Ok(Progress::Waiting));
        assert_eq!(h.add(&k, 6, len, 1280, &d[1280..], 100), Ok(Progress::Waiting), "other stamp");
        assert_eq!(h.add(&k, 7, len, 0, &d[..1280], 100), Ok(Progress::Waiting));
        assert_eq!(
            h.add(&k, 7, len, 1280, &d[1280..], 100),
            Ok(named("chunks.example.net", false))
        );
    }

    /// Two connections under one flow key (two client ports to one server): each is read
    /// with the keys of its own first Destination Connection ID; a connection that opened
    /// and never finished is given up, datagrams that never open are not counted.
    #[test]
    fn connections_are_apart_and_given_up_only_when_under_way() {
        use crate::enrich::quic::tests::{client_hello, crypto_frame, seal};
        let k = quic_key(1);
        let hello = client_hello("two.example.org", 1500, false);
        let (a, b) = ([1u8; 8], [2u8; 8]);
        let part = |dcid: &[u8; 8], range: std::ops::Range<usize>| {
            let mut p = crypto_frame(range.start, &hello[range]);
            p.resize(1200, 0);
            seal(1, dcid, dcid, 0, 2, &p)
        };
        let mut h = QuicHellos::default();
        let cut = 1000;
        assert_eq!(push(&mut h, &k, 1, &part(&a, 0..cut)), Progress::Waiting);
        assert_eq!(push(&mut h, &k, 2, &part(&b, 0..cut)), Progress::Waiting);
        assert_eq!(
            push(&mut h, &k, 3, &part(&b, cut..hello.len())),
            named("two.example.org", false)
        );
        // Noise: an Initial that does not open, under a new connection ID.
        let mut noise = part(&a, 0..cut);
        noise[6] ^= 0xff;
        assert_eq!(push(&mut h, &k, 4, &noise), Progress::Waiting);
        assert_eq!(h.len(), 3);
        h.expire(100 + WAIT_SECS);
        assert_eq!((h.len(), h.take_given_up()), (0, 1), "only `a` was under way");
    }
}
