//! Naming events: which packets carry a payload that names a destination (DNS answers, TLS
//! ClientHellos, HTTP requests), the per-CPU rate limit on them, and copying a staged event
//! with its payload start into the ring buffer for the agent. The counting never depends on
//! any of it: a packet is counted before it is looked at for an event.

use aya_ebpf::{
    EbpfContext,
    helpers::bpf_skb_load_bytes,
    programs::{TcContext, XdpContext},
};
use sensor_common::{
    Direction, EVENT_DATA_MAX, Event, EventKind, EventOutcome, FlowKey, PendingEvent, RateWindow,
};

use crate::{
    maps::{EVENT_CLIENT_RATE, EVENT_RATE, EVENT_STATS, EVENTS, EVENTS_PER_SEC_PER_CPU, FLOWS},
    parse::{IPPROTO_TCP, IPPROTO_UDP, Packet},
};

/// Deepest payload offset an event is taken from (headers beyond this are not worth naming).
pub(crate) const MAX_PAYLOAD_OFF: usize = 1024;

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
        if off > MAX_PAYLOAD_OFF {
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
        }
    }
}

/// Does this packet's payload name a destination? DNS answers to clients, ClientHellos and
/// HTTP requests from clients. Only the first bytes are looked at.
#[inline(always)]
pub(crate) fn event_kind(
    key: &FlowKey,
    header_len: usize,
    dir: Direction,
    pkt: Packet,
) -> Option<EventKind> {
    let proto = key.protocol;
    match dir {
        Direction::Download
            if key.remote_port == 53 && (proto == IPPROTO_UDP || proto == IPPROTO_TCP) =>
        {
            // A TCP segment with no payload (an ACK) carries no answer.
            pkt.span::<1>(header_len).map(|_| EventKind::DnsResponse)
        }
        Direction::Upload if proto == IPPROTO_TCP && key.remote_port != 0 => {
            let head = pkt.span::<6>(header_len)?;
            let (b0, b1, b5) = (head.get::<u8, 0>(), head.get::<u8, 1>(), head.get::<u8, 5>());
            // TLS record: handshake (22), version 3.x, first message a ClientHello (1).
            if b0 == 22 && b1 == 3 && b5 == 1 {
                return Some(EventKind::TlsClientHello);
            }
            const METHODS: [[u8; 4]; 7] =
                [*b"GET ", *b"POST", *b"HEAD", *b"PUT ", *b"DELE", *b"OPTI", *b"PATC"];
            let method = head.get::<u32, 0>();
            METHODS
                .iter()
                .any(|m| method == u32::from_ne_bytes(*m))
                .then_some(EventKind::HttpRequest)
        }
        _ => None,
    }
}

/// Copies a staged event with the start of its payload into the ring buffer.
#[inline(always)]
pub(crate) fn emit<C: Capture>(ctx: &C, pending: &PendingEvent) {
    let Some(kind) = EventKind::from_u8(pending.kind) else { return };
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        bump_event(kind, EventOutcome::RingFull);
        return;
    };
    let ev = entry.as_mut_ptr();
    let payload_len = pending.payload_len as usize;
    let want = if payload_len < EVENT_DATA_MAX { payload_len } else { EVENT_DATA_MAX };
    // SAFETY: `ev` points at a reserved, exclusively owned ring-buffer record of Event size.
    unsafe {
        (*ev).key = pending.key;
        (*ev).kind = pending.kind;
        (*ev).direction = pending.direction;
        (*ev).payload_len = pending.payload_len;
        (*ev).ktime_ns = pending.ktime_ns;
        let captured = ctx.capture(pending.payload_off as usize, &mut (*ev).data, want);
        (*ev).captured = captured as u16;
    }
    entry.submit(0);
    bump_event(kind, EventOutcome::Sent);
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
    if let Some(p) = EVENT_STATS.get_ptr_mut(outcome.slot(kind)) {
        // SAFETY: per-CPU slot.
        unsafe { *p += 1 };
    }
}
