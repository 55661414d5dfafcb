//! Naming events: which packets carry a payload that names a destination (DNS answers, TLS
//! ClientHellos with their later segments, QUIC Initials, HTTP requests), the per-CPU rate limit on them, and copying a staged event
//! with its payload start into the ring buffer for the agent. The counting never depends on
//! any of it: a packet is counted before it is looked at for an event.

use aya_ebpf::{
    EbpfContext,
    helpers::bpf_skb_load_bytes,
    programs::{TcContext, XdpContext},
};
use sensor_common::{
    Direction, EVENT_DATA_MAX, Event, EventKind, EventOutcome, FlowKey, HELLO_MAX_LEN,
    HELLO_MAX_SEGMENTS, HelloTail, MAX_EVENT_CHUNKS, PendingEvent, RateWindow,
};

use crate::{
    maps::{
        EVENT_CLIENT_RATE, EVENT_RATE, EVENT_STATS, EVENTS, EVENTS_PER_SEC_PER_CPU, FLOWS,
        HELLO_TAILS,
    },
    parse::{IPPROTO_TCP, IPPROTO_UDP, Packet},
};

/// Deepest payload offset an event is taken from (headers beyond this are not worth naming).
pub(crate) const MAX_PAYLOAD_OFF: usize = 1024;
/// Deepest packet offset a chunk is copied from.
const MAX_COPY_OFF: usize = MAX_PAYLOAD_OFF + (MAX_EVENT_CHUNKS - 1) * EVENT_DATA_MAX;

/// Copies packet bytes into an event, however the program type allows.
pub(crate) trait Capture: EbpfContext {
    /// Copies up to `want` (at most EVENT_DATA_MAX) bytes from packet offset `off`; returns how
    /// many were copied.
    fn capture(&self, off: usize, dst: &mut [u8; EVENT_DATA_MAX], want: usize) -> usize;
}

impl Capture for XdpContext {
    fn capture(&self, off: usize, dst: &mut [u8; EVENT_DATA_MAX], want: usize) -> usize {
        // bpf_xdp_load_bytes needs 5.18; router kernels are older. Eight bytes at a time, each
        // read checked against the packet end.
        let pkt = Packet { data: self.data(), end: self.data_end() };
        // `off` comes through a map: give the verifier its bound again.
        if off > MAX_COPY_OFF {
            return 0;
        }
        let mut n = 0;
        for i in 0..EVENT_DATA_MAX / 8 {
            let o = i * 8;
            if o + 8 > want {
                break;
            }
            match pkt.span::<8>(off + o) {
                Some(s) => put_bytes(dst, o, s.get::<u64, 0>()),
                None => break,
            }
            n = o + 8;
        }
        // The tail: the last eight bytes, overlapping what is already copied. (A byte-wise
        // tail compiles to `p >= end` checks the verifier does not accept for packet reads.)
        if n < want && (8..=EVENT_DATA_MAX).contains(&want) {
            // Opaque to LLVM: otherwise it folds `o + 8` into `want` and checks a different
            // pointer than the one it reads through, which the verifier refuses.
            let o = core::hint::black_box(want - 8);
            if let Some(s) = pkt.span::<8>(off + o) {
                put_bytes(dst, o, s.get::<u64, 0>());
                n = want;
            }
        }
        n
    }
}

/// Stores eight packet bytes (as loaded, in packet order) at `dst[o..o + 8]`.
#[inline(always)]
fn put_bytes(dst: &mut [u8; EVENT_DATA_MAX], o: usize, v: u64) {
    if let Some(d) = dst.get_mut(o..o + 8) {
        d.copy_from_slice(&v.to_ne_bytes());
    }
}

impl Capture for TcContext {
    fn capture(&self, off: usize, dst: &mut [u8; EVENT_DATA_MAX], want: usize) -> usize {
        // Opaque to LLVM: it knows how `want` was computed and would test something equivalent
        // instead (the payload offset against the packet length), which tells the verifier
        // nothing about the length register passed below.
        let want = core::hint::black_box(want);
        // The length must be proven in 1..=EVENT_DATA_MAX. `want == 0 || want > MAX` compiles
        // to a `== 0` jump, from which verifiers before ~6.8 learn no lower bound (6.1 refuses
        // the program). So: bound `want - 1` to 0..MAX-1, hide it from LLVM (which would
        // otherwise pass `want` itself, a register the verifier never saw checked), and add 1
        // back. sensor/tests/ebpf_object.rs checks the emitted instructions keep this shape.
        let below = want.wrapping_sub(1);
        if below >= EVENT_DATA_MAX {
            return 0;
        }
        let len = core::hint::black_box(below) + 1;
        // skb_load_bytes also reads what sits outside the linear area. Called directly: the
        // verifier must see a length of at least 1, which aya's wrapper does not prove.
        // SAFETY: dst holds EVENT_DATA_MAX bytes and 1 <= len <= EVENT_DATA_MAX.
        let rc = unsafe {
            bpf_skb_load_bytes(self.skb.skb.cast(), off as u32, dst.as_mut_ptr().cast(), len as u32)
        };
        if rc == 0 { len } else { 0 }
    }
}

/// An event decided on by [`observe`](crate::observe): what its caller needs, with the flow
/// key, to stage or emit it.
pub(crate) struct EventStart {
    pub(crate) kind: EventKind,
    pub(crate) payload_off: u16,
    pub(crate) payload_len: u32,
    pub(crate) now: u64,
    pub(crate) seq: u32,
}

impl EventStart {
    #[inline(always)]
    pub(crate) fn pending(&self, key: &FlowKey, dir: Direction) -> PendingEvent {
        PendingEvent {
            key: *key,
            kind: self.kind as u8,
            direction: dir as u8,
            payload_off: self.payload_off,
            payload_len: self.payload_len,
            ktime_ns: self.now,
            seq: self.seq,
            chunk_off: 0,
            _pad: 0,
        }
    }
}

/// A packet whose payload names a destination: the kind of event, and for a ClientHello the
/// length its first TLS record announces (to follow it into later segments).
pub(crate) struct Found {
    pub(crate) kind: EventKind,
    pub(crate) hello_len: u32,
}

/// A flow's first few packets (on this CPU) are the ones looked at for the later segments of
/// a ClientHello and for QUIC Initials; an established flow's packets cost nothing more.
pub(crate) const YOUNG_PACKETS: u64 = 8;

/// Does this packet's payload name a destination? DNS answers to clients, ClientHellos (and
/// their later segments), QUIC Initials and HTTP requests from clients. Only the first bytes
/// are looked at, and only a young flow's (`young`) for segments and Initials.
#[inline(always)]
pub(crate) fn event_kind(
    key: &FlowKey,
    header_len: usize,
    seq: u32,
    dir: Direction,
    pkt: Packet,
    young: bool,
) -> Option<Found> {
    let proto = key.protocol;
    let found = |kind| Some(Found { kind, hello_len: 0 });
    match dir {
        Direction::Download
            if key.remote_port == 53 && (proto == IPPROTO_UDP || proto == IPPROTO_TCP) =>
        {
            // A TCP segment with no payload (an ACK) carries no answer.
            pkt.span::<1>(header_len).and_then(|_| found(EventKind::DnsResponse))
        }
        Direction::Upload if proto == IPPROTO_TCP && key.remote_port != 0 => {
            // A segment with no payload (an ACK) names nothing.
            pkt.span::<1>(header_len)?;
            if let Some(head) = pkt.span::<6>(header_len) {
                let (b0, b1, b5) = (head.get::<u8, 0>(), head.get::<u8, 1>(), head.get::<u8, 5>());
                // TLS record: handshake (22), version 3.x, first message a ClientHello (1).
                if b0 == 22 && b1 == 3 && b5 == 1 {
                    let record = u16::from_be(head.get::<u16, 3>()) as u32;
                    return Some(Found { kind: EventKind::TlsClientHello, hello_len: 5 + record });
                }
                const METHODS: [[u8; 4]; 7] =
                    [*b"GET ", *b"POST", *b"HEAD", *b"PUT ", *b"DELE", *b"OPTI", *b"PATC"];
                let method = head.get::<u32, 0>();
                if METHODS.iter().any(|m| method == u32::from_ne_bytes(*m)) {
                    return found(EventKind::HttpRequest);
                }
            }
            if young && hello_segment(key, seq) {
                return found(EventKind::TlsSegment);
            }
            None
        }
        Direction::Upload if proto == IPPROTO_UDP && young => {
            let head = pkt.span::<5>(header_len)?;
            let b0 = head.get::<u8, 0>();
            let version = u32::from_be(head.get::<u32, 1>());
            // Long header with the fixed bit, and the Initial type of its version (RFC 9000
            // 17.2: 0b00; RFC 9369 3.2: 0b01 for version 2).
            let initial = match version {
                QUIC_V1 => b0 & 0xf0 == 0xc0,
                QUIC_V2 => b0 & 0xf0 == 0xd0,
                _ => false,
            };
            if initial { found(EventKind::QuicInitial) } else { None }
        }
        _ => None,
    }
}

const QUIC_V1: u32 = 0x0000_0001;
const QUIC_V2: u32 = 0x6b33_43cf;

/// Whether this segment continues a ClientHello being followed; takes one of its segments.
#[inline(always)]
fn hello_segment(key: &FlowKey, seq: u32) -> bool {
    let Some(tail) = HELLO_TAILS.get_ptr_mut(key) else { return false };
    // SAFETY: a value of the shared map. Another CPU may update it at once; a lost decrement
    // only lets one more segment through, still bounded by the sequence window.
    let tail = unsafe { &mut *tail };
    let into = seq.wrapping_sub(tail.start_seq);
    if into == 0 || into >= tail.len || tail.segments == 0 {
        return false;
    }
    tail.segments -= 1;
    true
}

/// Follows a ClientHello announcing `hello_len` bytes that its first segment (of
/// `payload_len`) does not hold: its next segments become events too.
#[inline(always)]
pub(crate) fn follow_hello(key: &FlowKey, seq: u32, payload_len: u32, hello_len: u32) {
    if payload_len >= hello_len || hello_len > HELLO_MAX_LEN {
        return;
    }
    let tail = HelloTail { start_seq: seq, len: hello_len, segments: HELLO_MAX_SEGMENTS, _pad: 0 };
    // A full map drops its least recent entry; a failure only leaves this one unnamed.
    let _ = HELLO_TAILS.insert(key, tail, 0);
}

/// Whether a staged event has another chunk to hand up, and moves it there.
#[inline(always)]
pub(crate) fn next_chunk(pending: &mut PendingEvent) -> bool {
    // A bit mask, not a table: LLVM turns a match on the kind into a lookup table indexed by
    // a value whose range the verifier does not know.
    const CHUNKED: u32 = (1 << EventKind::TlsClientHello as u32)
        | (1 << EventKind::TlsSegment as u32)
        | (1 << EventKind::QuicInitial as u32);
    let kind = pending.kind as u32;
    let chunkable = kind < 32 && (CHUNKED >> kind) & 1 != 0;
    let next = pending.chunk_off as usize + EVENT_DATA_MAX;
    if !chunkable
        || next >= pending.payload_len as usize
        || next >= MAX_EVENT_CHUNKS * EVENT_DATA_MAX
    {
        return false;
    }
    pending.chunk_off = next as u16;
    true
}

/// Copies a staged event with the start of its payload into the ring buffer.
#[inline(always)]
pub(crate) fn emit<C: Capture>(ctx: &C, pending: &PendingEvent) {
    // The kind as an index, bounds-checked here: `EventKind::from_u8` compiles to a table
    // lookup whose bound LLVM drops when it knows the kind, which the verifier does not.
    let kind = pending.kind as u32;
    if kind >= EventKind::COUNT as u32 {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        bump_event_slot(kind * EventOutcome::COUNT as u32 + EventOutcome::RingFull as u32);
        return;
    };
    let ev = entry.as_mut_ptr();
    let rest = (pending.payload_len as usize).saturating_sub(pending.chunk_off as usize);
    let want = if rest < EVENT_DATA_MAX { rest } else { EVENT_DATA_MAX };
    // SAFETY: `ev` points at a reserved, exclusively owned ring-buffer record of Event size.
    unsafe {
        (*ev).key = pending.key;
        (*ev).kind = pending.kind;
        (*ev).direction = pending.direction;
        (*ev).payload_len = pending.payload_len;
        (*ev).ktime_ns = pending.ktime_ns;
        (*ev).seq = pending.seq;
        (*ev).chunk_off = pending.chunk_off;
        (*ev)._pad = 0;
        let off = pending.payload_off as usize + pending.chunk_off as usize;
        let captured = ctx.capture(off, &mut (*ev).data, want);
        (*ev).captured = captured as u16;
    }
    entry.submit(0);
    // Events count packets: a later chunk is part of its packet's event.
    if pending.chunk_off == 0 {
        bump_event_slot(kind * EventOutcome::COUNT as u32 + EventOutcome::Sent as u32);
    }
}

/// Whether an event of `key`'s flow may go out now: within its client's half of the per-CPU
/// budget, then within the budget. A client over its half is refused before it takes from the
/// budget, so the others always have the other half.
#[inline(always)]
pub(crate) fn allow_event(key: &FlowKey, now: u64) -> bool {
    // SAFETY: read of a loader-set static.
    let limit = unsafe { core::ptr::read_volatile(&EVENTS_PER_SEC_PER_CPU) } as u64;
    // The flow was just counted, so this CPU's copy of it knows its client's slot; a flow the
    // map refused has no entry and goes by the overall budget alone.
    if let Some(flow) = FLOWS.get_ptr(key) {
        // SAFETY: this CPU's copy of the value, read once.
        let slot = unsafe { (*flow).client_slot };
        if slot != 0
            && let Some(w) = EVENT_CLIENT_RATE.get_ptr_mut(slot - 1)
            // SAFETY: per-CPU slot, no concurrent writer.
            && !take(unsafe { &mut *w }, now, limit.div_ceil(2))
        {
            return false;
        }
    }
    let Some(w) = EVENT_RATE.get_ptr_mut(0) else { return false };
    // SAFETY: per-CPU slot, no concurrent writer.
    take(unsafe { &mut *w }, now, limit)
}

/// One event from a one-second window of at most `limit`; false when it is used up.
#[inline(always)]
fn take(w: &mut RateWindow, now: u64, limit: u64) -> bool {
    if now.wrapping_sub(w.start_ns) >= 1_000_000_000 {
        w.start_ns = now;
        w.count = 0;
    }
    if w.count >= limit {
        return false;
    }
    w.count += 1;
    true
}

#[inline(always)]
pub(crate) fn bump_event(kind: EventKind, outcome: EventOutcome) {
    bump_event_slot(outcome.slot(kind));
}

#[inline(always)]
fn bump_event_slot(slot: u32) {
    if let Some(p) = EVENT_STATS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot.
        unsafe { *p += 1 };
    }
}
