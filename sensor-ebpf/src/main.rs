//! Kernel side of the gateway sensor: counts every LAN client's packets and bytes per remote
//! endpoint. XDP on the LAN interface sees uploads (client → anywhere), a TC classifier on its
//! egress sees downloads (anywhere → client). Both always let the packet through unchanged.
//!
//! No CO-RE and no kernel BTF: the programs touch only packet bytes and stable `__sk_buff`
//! fields, so they load on router kernels built without `/sys/kernel/btf/vmlinux`.
#![no_std]
#![no_main]
// Inline assembly for one instruction, the atomic fetch-and-add of slot allocation (see
// `fetch_add`). The crate is built with nightly only (build-std), like every aya program.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_NOEXIST, TC_ACT_UNSPEC, xdp_action},
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_skb_load_bytes},
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, LruPerCpuHashMap, PerCpuArray, ProgramArray, Queue, RingBuf},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::warn;
use core::mem::MaybeUninit;
use sensor_common::{
    ClientKey, Counters, DEFAULT_CLIENT_CAPACITY, DEFAULT_FLOW_CAPACITY, Direction, EVENT_DATA_MAX,
    EVENT_RING_BYTES, EVENT_STATS_LEN, Event, EventKind, EventOutcome, FlowKey, FlowValue,
    LanPrefix, LanPrefixes, MAX_IPV6_EXT_HEADERS, MAX_LAN_PREFIXES, MAX_VLAN_TAGS, PendingEvent,
    RateWindow, STATS_LEN, Stat, wire_bytes,
};

/// Per-flow counters, and the flow's client slot. LRU so that memory stays bounded whatever the
/// traffic; the per-client totals below keep every count even when a flow is evicted. The one
/// hash lookup of a known flow's packet.
#[map(name = "FLOWS")]
static FLOWS: LruPerCpuHashMap<FlowKey, FlowValue> =
    LruPerCpuHashMap::with_max_entries(DEFAULT_FLOW_CAPACITY, 0);

/// Client MAC → slot in `CLIENT_TOTALS`. Read only for the first packet of a flow (on a CPU);
/// written only when a new client gets a slot (and by the agent when it retires one).
#[map(name = "CLIENT_SLOTS")]
static CLIENT_SLOTS: HashMap<ClientKey, u32> =
    HashMap::with_max_entries(DEFAULT_CLIENT_CAPACITY, 0);

/// Per-client totals by slot: an array (the kernel inlines the lookup), never evicted. When
/// every slot is held, new clients are counted in the `client_table_full` stat instead of
/// displacing others. Its size is the client capacity (set by the loader).
#[map(name = "CLIENT_TOTALS")]
static CLIENT_TOTALS: PerCpuArray<Counters> =
    PerCpuArray::with_max_entries(DEFAULT_CLIENT_CAPACITY, 0);

/// Slots of retired clients, zeroed and pushed by the agent; popped before a new slot is used.
#[map(name = "FREE_SLOTS")]
static FREE_SLOTS: Queue<u32> = Queue::with_max_entries(DEFAULT_CLIENT_CAPACITY, 0);

/// Slot 0: how many slots were ever handed out (the next never-used slot).
#[map(name = "NEXT_SLOT")]
static NEXT_SLOT: Array<u64> = Array::with_max_entries(1, 0);

/// Per CPU: the last reading of the coarse clock and the jiffies it was taken at (see
/// [`coarse_now`]).
#[map(name = "CLOCK")]
static CLOCK: PerCpuArray<ClockReading> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
struct ClockReading {
    jiffies: u64,
    ns: u64,
}

/// Packet outcomes by direction: slot `Stat::slot(direction)`. The `seen` slots stay 0 (the
/// agent sums the outcomes).
#[map(name = "STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STATS_LEN, 0);

/// Payload starts that name a destination (DNS answers, TLS ClientHellos, HTTP requests),
/// for the agent to parse. Bounded twice: the ring's size and a per-second ceiling.
#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENT_RING_BYTES, 0);

/// Events by kind and outcome: slot `EventOutcome::slot(kind)`.
#[map(name = "EVENT_STATS")]
static EVENT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(EVENT_STATS_LEN, 0);

/// The current one-second window of the event rate limit, per CPU.
#[map(name = "EVENT_RATE")]
static EVENT_RATE: PerCpuArray<RateWindow> = PerCpuArray::with_max_entries(1, 0);

/// The XDP program's staged event, read by the capture program it tail-calls.
#[map(name = "EVENT_PENDING")]
static EVENT_PENDING: PerCpuArray<PendingEvent> = PerCpuArray::with_max_entries(1, 0);

/// Slot 0: the XDP capture program (set by the loader).
#[map(name = "EVENT_TAIL")]
static EVENT_TAIL: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Events allowed per second on each CPU (set by the loader; 0 disables events).
#[unsafe(no_mangle)]
static EVENTS_PER_SEC_PER_CPU: u32 = 0;

/// LAN prefixes, written by the loader into .rodata: the verifier sees a frozen map, so the
/// common case (a few prefixes) costs a handful of compares and no map lookup.
#[unsafe(no_mangle)]
static LAN_PREFIXES: LanPrefixes = LanPrefixes {
    count: 0,
    _pad: 0,
    prefixes: [LanPrefix { addr: [0; 4], mask: [0; 4] }; MAX_LAN_PREFIXES],
};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AH: u8 = 51;
const IPV6_DSTOPTS: u8 = 60;
const EEXIST: i32 = 17;
/// Deepest payload offset an event is taken from (headers beyond this are not worth naming).
const MAX_PAYLOAD_OFF: usize = 1024;

#[xdp]
pub fn gwsensor_xdp(ctx: XdpContext) -> u32 {
    let pkt = Packet { data: ctx.data(), end: ctx.data_end() };
    let size = Size { len: (pkt.end - pkt.data) as u64, segs: 1, per_frame: 0 };
    let mut key = MaybeUninit::uninit();
    observe(&ctx, pkt, &mut key, Direction::Upload, size, |key, ev| {
        if let Some(slot) = EVENT_PENDING.get_ptr_mut(0) {
            // SAFETY: per-CPU slot; the tail call below runs on this CPU, right after.
            unsafe {
                *slot = ev.pending(key, Direction::Upload);
                // Does not return on success; on failure the packet passes all the same.
                EVENT_TAIL.tail_call(&ctx, 0);
            }
        }
    });
    xdp_action::XDP_PASS
}

/// Tail-called by `gwsensor_xdp` to copy a staged event's payload into the ring buffer.
#[xdp]
pub fn gwsensor_xdp_capture(ctx: XdpContext) -> u32 {
    if let Some(pending) = EVENT_PENDING.get(0) {
        emit(&ctx, pending);
    }
    xdp_action::XDP_PASS
}

/// Baseline for benchmarks: what an XDP program costs when it does nothing.
#[xdp]
pub fn gwsensor_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[classifier]
pub fn gwsensor_tc(ctx: TcContext) -> i32 {
    // SAFETY: `skb` is the context pointer the kernel handed us; these fields are plain reads.
    let (gso_segs, vlan_present) =
        unsafe { ((*ctx.skb.skb).gso_segs, (*ctx.skb.skb).vlan_present) };
    // Headers of a locally built or forwarded skb may sit outside the linear area: pull just
    // enough for the deepest header we parse. Only paid when the linear part is short.
    let want = core::cmp::min(ctx.len(), 256);
    if ((ctx.data_end() - ctx.data()) as u32) < want {
        let _ = ctx.pull_data(want);
    }
    let size = Size {
        len: ctx.len() as u64,
        // A GSO skb is several frames on the wire: count each, with its own copy of the headers.
        segs: if gso_segs > 1 { gso_segs } else { 1 },
        // Each of those frames carries the 802.1Q tag that TC sees as skb metadata.
        per_frame: if vlan_present != 0 { 4 } else { 0 },
    };
    let pkt = Packet { data: ctx.data(), end: ctx.data_end() };
    let mut key = MaybeUninit::uninit();
    observe(&ctx, pkt, &mut key, Direction::Download, size, |key, ev| {
        emit(&ctx, &ev.pending(key, Direction::Download));
    });
    // "Unspecified": carry on with whatever else is attached (TCX next / next filter).
    TC_ACT_UNSPEC
}

/// Copies packet bytes into an event, however the program type allows.
trait Capture: EbpfContext {
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
        if want == 0 || want > EVENT_DATA_MAX {
            return 0;
        }
        // skb_load_bytes also reads what sits outside the linear area. Called directly: the
        // verifier must see a length of at least 1, which aya's wrapper does not prove.
        // SAFETY: dst holds EVENT_DATA_MAX bytes and 1 <= want <= EVENT_DATA_MAX.
        let rc = unsafe {
            bpf_skb_load_bytes(
                self.skb.skb.cast(),
                off as u32,
                dst.as_mut_ptr().cast(),
                want as u32,
            )
        };
        if rc == 0 { want } else { 0 }
    }
}

/// An event decided on by [`observe`]: what its caller needs, with the flow key, to stage or
/// emit it.
struct EventStart {
    kind: EventKind,
    payload_off: u16,
    payload_len: u32,
    now: u64,
}

impl EventStart {
    #[inline(always)]
    fn pending(&self, key: &FlowKey, dir: Direction) -> PendingEvent {
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

/// How much a packet weighs on the wire.
#[derive(Clone, Copy)]
struct Size {
    /// The packet's length (an skb's: linear and paged data, its headers once).
    len: u64,
    /// The frames it leaves as: a GSO skb's segments, else 1.
    segs: u32,
    /// Bytes each frame carries besides (an offloaded VLAN tag).
    per_frame: u64,
}

/// Parses (into `key`, the caller's stack slot) and counts one packet; calls `event` if its
/// payload names a destination and the rate limit allows it.
#[inline(always)]
fn observe<C: EbpfContext>(
    ctx: &C,
    pkt: Packet,
    key: &mut MaybeUninit<FlowKey>,
    dir: Direction,
    size: Size,
    event: impl FnOnce(&FlowKey, &EventStart),
) {
    let outcome = match parse(pkt, dir, key) {
        Ok((key, header_len)) => {
            let packets = size.segs as u64;
            let bytes = wire_bytes(size.len, size.segs, header_len as u64, size.per_frame);
            let now = coarse_now();
            let outcome = account(key, dir, packets, bytes, now);
            if let Some(kind) = event_kind(key, header_len, dir, pkt) {
                if allow_event(now) && header_len <= MAX_PAYLOAD_OFF {
                    let start = EventStart {
                        kind,
                        payload_off: header_len as u16,
                        payload_len: (size.len as usize).saturating_sub(header_len) as u32,
                        now,
                    };
                    event(key, &start);
                } else {
                    bump_event(kind, EventOutcome::RateLimited);
                }
            }
            outcome
        }
        Err(stat) => stat,
    };
    // Exactly one outcome per packet, and no `seen` count: the agent derives it as the sum of
    // the outcomes, which saves an array update per packet.
    let n = bump_stat(outcome, dir);
    // Diagnostics only for map failures, and only on the 1st, 2nd, 4th, 8th... occurrence per
    // CPU, so that logging never becomes a per-packet cost.
    if matches!(outcome, Stat::FlowUpdateFailed | Stat::ClientTableFull) && n & (n - 1) == 0 {
        let which = outcome as u32;
        warn!(ctx, "gwsensor: map update failed (stat {}), occurrence {}", which, n);
    }
}

/// Increments a stat and returns its new per-CPU value (0 if the slot is missing).
#[inline(always)]
fn bump_stat(stat: Stat, dir: Direction) -> u64 {
    match STATS.get_ptr_mut(stat.slot(dir)) {
        Some(p) => unsafe {
            *p += 1;
            *p
        },
        None => 0,
    }
}

/// Does this packet's payload name a destination? DNS answers to clients, ClientHellos and
/// HTTP requests from clients. Only the first bytes are looked at.
#[inline(always)]
fn event_kind(key: &FlowKey, header_len: usize, dir: Direction, pkt: Packet) -> Option<EventKind> {
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
fn emit<C: Capture>(ctx: &C, pending: &PendingEvent) {
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

/// CLOCK_MONOTONIC at tick resolution, as `bpf_ktime_get_coarse_ns` gives it, but mostly
/// without calling it (a helper call costs several ns per packet; `bpf_jiffies64` is two
/// instructions once the verifier inlines it on 64-bit JITs).
///
/// The coarse clock only moves when the tick updates the timekeeping, which comes right after
/// the tick advances jiffies: while jiffies stays the same, a reading taken since it last
/// changed is still what the clock says, and this CPU's last one is reused. A reading taken in
/// the instant between the two updates (jiffies advanced, the clock not yet) would be reused
/// until the next tick, one tick late; it is not kept when the clock shows no progress since
/// the reading before, which catches that case whenever this CPU saw the previous tick.
/// (`adjtimex` can also move the clock between ticks, by less than a tick.)
#[inline(always)]
fn coarse_now() -> u64 {
    // SAFETY: neither helper has preconditions.
    let jiffies = unsafe { bpf_jiffies64() };
    let Some(last) = CLOCK.get_ptr_mut(0) else {
        return unsafe { bpf_ktime_get_coarse_ns() };
    };
    // SAFETY: this CPU's element; only this program, on this CPU, uses it.
    let last = unsafe { &mut *last };
    if last.jiffies == jiffies && last.ns != 0 {
        return last.ns;
    }
    let ns = unsafe { bpf_ktime_get_coarse_ns() };
    if ns != last.ns {
        last.jiffies = jiffies;
        last.ns = ns;
    }
    ns
}

#[inline(always)]
fn allow_event(now: u64) -> bool {
    // SAFETY: read of a loader-set static.
    let limit = unsafe { core::ptr::read_volatile(&EVENTS_PER_SEC_PER_CPU) } as u64;
    let Some(w) = EVENT_RATE.get_ptr_mut(0) else { return false };
    // SAFETY: per-CPU slot, no concurrent writer.
    let w = unsafe { &mut *w };
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
fn bump_event(kind: EventKind, outcome: EventOutcome) {
    if let Some(p) = EVENT_STATS.get_ptr_mut(outcome.slot(kind)) {
        // SAFETY: per-CPU slot.
        unsafe { *p += 1 };
    }
}

/// Adds one packet (or a GSO batch) to its flow and to its client's totals. A known flow costs
/// one hash lookup (`FLOWS`) and one array lookup (`CLIENT_TOTALS`, at the slot the flow holds).
#[inline(always)]
fn account(key: &FlowKey, dir: Direction, packets: u64, bytes: u64, now: u64) -> Stat {
    let Some(flow) = FLOWS.get_ptr_mut(key) else {
        return account_new_flow(key, dir, packets, bytes, now);
    };
    // SAFETY: this CPU's copy of the value; only this program on this CPU writes it.
    let flow = unsafe { &mut *flow };
    let slot = match flow.slot() {
        Some(slot) => slot,
        // The flow was inserted on another CPU: learn its client's slot once for this CPU.
        None => match client_slot(key, now) {
            Ok(slot) => {
                flow.client_slot = slot + 1;
                slot
            }
            Err(stat) => return stat,
        },
    };
    let Some(totals) = CLIENT_TOTALS.get_ptr_mut(slot) else {
        return Stat::ClientTableFull;
    };
    add(&mut flow.counters, dir, packets, bytes, now);
    // SAFETY: this CPU's element of the per-CPU array.
    add(unsafe { &mut *totals }, dir, packets, bytes, now);
    Stat::Counted
}

/// The first packet of a flow (or of a flow evicted since): its client's slot, then the flow.
#[inline(always)]
fn account_new_flow(key: &FlowKey, dir: Direction, packets: u64, bytes: u64, now: u64) -> Stat {
    let slot = match client_slot(key, now) {
        Ok(slot) => slot,
        Err(stat) => return stat,
    };
    let Some(totals) = CLIENT_TOTALS.get_ptr_mut(slot) else {
        return Stat::ClientTableFull;
    };
    let mut fresh = FlowValue {
        counters: Counters { first_seen_ns: now, ..Counters::default() },
        client_slot: slot + 1,
        _pad: 0,
    };
    add(&mut fresh.counters, dir, packets, bytes, now);
    let outcome = match FLOWS.insert(key, fresh, BPF_NOEXIST as u64) {
        Ok(()) => Stat::Counted,
        // Another CPU inserted it first: add to that entry (this CPU's copy of it).
        Err(e) if e == -EEXIST => match FLOWS.get_ptr_mut(key) {
            Some(p) => {
                // SAFETY: this CPU's copy of the value.
                let flow = unsafe { &mut *p };
                add(&mut flow.counters, dir, packets, bytes, now);
                if flow.client_slot == 0 {
                    flow.client_slot = slot + 1;
                }
                Stat::Counted
            }
            None => Stat::FlowUpdateFailed,
        },
        Err(_) => Stat::FlowUpdateFailed,
    };
    // The client's totals count the packet even when the flow map refused it.
    // SAFETY: this CPU's element of the per-CPU array.
    add(unsafe { &mut *totals }, dir, packets, bytes, now);
    outcome
}

/// The client's slot in `CLIENT_TOTALS`: looked up by MAC, or taken for a new client. Only for
/// the first packet of a flow on a CPU, so never on the per-packet path of a known flow.
#[inline(always)]
fn client_slot(key: &FlowKey, now: u64) -> Result<u32, Stat> {
    // The MAC and two zero bytes: the key's word at the MAC, without the port's bytes.
    let mac_word = key_word::<u64, K_MAC>(key)
        & u64::from_ne_bytes([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0]);
    // SAFETY: ClientKey is 8 plain bytes (asserted in sensor-common): any value is valid.
    let client: ClientKey = unsafe { core::mem::transmute::<u64, ClientKey>(mac_word) };
    if let Some(slot) = CLIENT_SLOTS.get_ptr(client) {
        // SAFETY: a value of the map, read once.
        return Ok(unsafe { *slot });
    }
    // A new client: a retired slot (zeroed by the agent) if there is one, else a never-used one.
    let slot = match FREE_SLOTS.pop() {
        Ok(Some(slot)) => slot,
        _ => {
            let Some(next) = NEXT_SLOT.get_ptr_mut(0) else {
                return Err(Stat::ClientTableFull);
            };
            // SAFETY: the map value, shared by all CPUs: updated atomically.
            let n = unsafe { fetch_add(next, 1) };
            // Past u32 means far past the capacity (an array's size is a u32).
            if n > u32::MAX as u64 {
                return Err(Stat::ClientTableFull);
            }
            n as u32
        }
    };
    // Beyond the array (slot >= client_capacity): every slot is held.
    let Some(totals) = CLIENT_TOTALS.get_ptr_mut(slot) else {
        return Err(Stat::ClientTableFull);
    };
    match CLIENT_SLOTS.insert(client, slot, BPF_NOEXIST as u64) {
        Ok(()) => {
            // SAFETY: this CPU's element; the other CPUs' first_seen stay 0 ("never").
            unsafe { (*totals).first_seen_ns = now };
            Ok(slot)
        }
        Err(e) => {
            // Not needed after all: hand the slot back for the next new client.
            let _ = FREE_SLOTS.push(slot, 0);
            if e != -EEXIST {
                return Err(Stat::ClientTableFull);
            }
            // Another CPU gave this client a slot first: use that one.
            match CLIENT_SLOTS.get_ptr(client) {
                // SAFETY: as above.
                Some(slot) => Ok(unsafe { *slot }),
                None => Err(Stat::ClientTableFull),
            }
        }
    }
}

/// `*p += v` atomically; returns the previous value.
///
/// One `BPF_ATOMIC | BPF_FETCH | BPF_ADD` instruction (kernel 5.12+), written out because LLVM
/// only emits it for `-mcpu=v3`, and the object is built for the generic CPU (aya-build does
/// not pass a CPU), where it rejects a fetch-and-add whose result is used.
///
/// # Safety
///
/// `p` must point to a u64 in map memory (8-byte aligned), valid for the program's run.
#[inline(always)]
unsafe fn fetch_add(p: *mut u64, v: u64) -> u64 {
    let mut old = v;
    // SAFETY: the caller's contract; the instruction reads and writes `*p` only.
    unsafe {
        core::arch::asm!(
            "{old} = atomic_fetch_add((u64 *)({p} + 0), {old})",
            old = inout(reg) old,
            p = in(reg) p,
            options(nostack),
        );
    }
    old
}

#[inline(always)]
fn add(c: &mut Counters, dir: Direction, packets: u64, bytes: u64, now: u64) {
    match dir {
        Direction::Upload => {
            c.packets[0] += packets;
            c.bytes[0] += bytes;
        }
        Direction::Download => {
            c.packets[1] += packets;
            c.bytes[1] += bytes;
        }
    }
    c.last_seen_ns = now;
}

// ---------------------------------------------------------------------------------------------
// Packet and key access: the only places that read packet memory or write key words.

/// Integer types read from packets and written into keys, each with one load or store.
trait Word: Copy {}
impl Word for u8 {}
impl Word for u16 {}
impl Word for u32 {}
impl Word for u64 {}

/// The packet, `[data, end)`.
#[derive(Clone, Copy)]
struct Packet {
    data: usize,
    end: usize,
}

/// `N` bytes of the packet from address `.0`, checked to lie before the packet end when made.
#[derive(Clone, Copy)]
struct Span<const N: usize>(usize);

impl Packet {
    /// The `N` bytes at `off`, if the packet holds them: the bounds check the verifier needs
    /// before any read through the span.
    #[inline(always)]
    fn span<const N: usize>(self, off: usize) -> Option<Span<N>> {
        let start = self.data + off;
        if start + N > self.end { None } else { Some(Span(start)) }
    }

    /// Does the packet hold `len` bytes at `off`? (A length check only: nothing is read.)
    #[inline(always)]
    fn holds(self, off: usize, len: usize) -> bool {
        self.data + off + len <= self.end
    }
}

impl<const N: usize> Span<N> {
    /// The `T` at byte `AT` of the span, read with one load of `T`'s width, in packet byte
    /// order (convert with `from_be`).
    ///
    /// The load is unaligned whenever the packet puts the field there (an IPv4 address behind
    /// a 14-byte Ethernet header, say). That is deliberate: the BPF backend splits an
    /// align-1 read (`read_unaligned`, or a `[u8; N]` copy) into byte loads, one instruction
    /// per byte, which is what this replaces. The kernel executes the wide load as is: the JIT
    /// emits a plain load, which x86 and arm64 perform unaligned, and the verifier only insists
    /// on aligned packet access where the architecture lacks efficient unaligned access (or with
    /// BPF_F_STRICT_ALIGNMENT, which we never set). The object is built in release mode, so no
    /// debug alignment check is inserted either.
    #[inline(always)]
    fn get<T: Word, const AT: usize>(self) -> T {
        const { assert!(AT + size_of::<T>() <= N) };
        // SAFETY: [self.0, self.0 + N) lies inside the packet (checked when the span was made)
        // and AT + size_of::<T>() <= N (checked at compile time above); alignment as above.
        unsafe { core::ptr::read((self.0 + AT) as *const T) }
    }
}

/// Byte offsets of the key fields, for [`put`] and [`key_word`].
const K_CLIENT_IP: usize = core::mem::offset_of!(FlowKey, client_ip);
const K_REMOTE_IP: usize = core::mem::offset_of!(FlowKey, remote_ip);
const K_MAC: usize = core::mem::offset_of!(FlowKey, client_mac);
const K_PORT: usize = core::mem::offset_of!(FlowKey, remote_port);
const K_PROTO: usize = core::mem::offset_of!(FlowKey, protocol);
const _: () = assert!(core::mem::align_of::<FlowKey>() == 8 && K_PROTO + 8 == size_of::<FlowKey>());

/// Writes `v` at byte `AT` of the key being built, with one aligned store.
#[inline(always)]
fn put<T: Word, const AT: usize>(key: &mut MaybeUninit<FlowKey>, v: T) {
    const { assert!(AT.is_multiple_of(size_of::<T>()) && AT + size_of::<T>() <= size_of::<FlowKey>()) };
    // SAFETY: in bounds (checked at compile time), and aligned: FlowKey is align(8) and AT is
    // a multiple of T's size (at most 8).
    unsafe { key.as_mut_ptr().cast::<u8>().add(AT).cast::<T>().write(v) }
}

/// Reads the `T` at byte `AT` of the key with one aligned load.
#[inline(always)]
fn key_word<T: Word, const AT: usize>(key: &FlowKey) -> T {
    const { assert!(AT.is_multiple_of(size_of::<T>()) && AT + size_of::<T>() <= size_of::<FlowKey>()) };
    // SAFETY: as in `put`.
    unsafe { (key as *const FlowKey).cast::<u8>().add(AT).cast::<T>().read() }
}

/// The third word of an IPv4-mapped address (`::ffff:a.b.c.d`): bytes 00 00 ff ff.
const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

// ---------------------------------------------------------------------------------------------
// Parser

/// Parses a packet into `key`, writing every byte of it when it succeeds; returns the key and
/// where the L4 payload starts (for GSO byte accounting and events), or the reason the packet
/// is not counted.
#[inline(always)]
fn parse(
    pkt: Packet,
    dir: Direction,
    key: &mut MaybeUninit<FlowKey>,
) -> Result<(&FlowKey, usize), Stat> {
    let upload = matches!(dir, Direction::Upload);
    let eth = pkt.span::<ETH_HLEN>(0).ok_or(Stat::TruncatedL2)?;
    // The client is the sender of an upload and the receiver of a download.
    let (mac_head, mac_tail) = if upload {
        (eth.get::<u32, 6>(), eth.get::<u16, 10>())
    } else {
        (eth.get::<u32, 0>(), eth.get::<u16, 4>())
    };

    let mut ethertype = u16::from_be(eth.get::<u16, 12>());
    let mut off = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let tag = pkt.span::<4>(off).ok_or(Stat::TruncatedL2)?;
        ethertype = u16::from_be(tag.get::<u16, 2>());
        off += 4;
    }

    let l3 = match ethertype {
        ETH_P_IP => parse_ipv4(pkt, off, upload, key)?,
        ETH_P_IPV6 => parse_ipv6(pkt, off, upload, key)?,
        ETH_P_8021Q | ETH_P_8021AD => return Err(Stat::VlanDepth),
        _ => return Err(Stat::NotIp),
    };

    // Ports: only in the first (or only) fragment, and only for TCP and UDP.
    let (mut port, mut header_len) = (0u16, l3.l4_off);
    if l3.first_fragment {
        match l3.protocol {
            IPPROTO_TCP => {
                let tcp = pkt.span::<20>(l3.l4_off).ok_or(Stat::TruncatedL4)?;
                port = u16::from_be(if upload { tcp.get::<u16, 2>() } else { tcp.get::<u16, 0>() });
                let doff = ((tcp.get::<u8, 12>() >> 4) as usize) * 4;
                header_len = l3.l4_off + if doff > 20 { doff } else { 20 };
            }
            IPPROTO_UDP => {
                let udp = pkt.span::<8>(l3.l4_off).ok_or(Stat::TruncatedL4)?;
                port = u16::from_be(if upload { udp.get::<u16, 2>() } else { udp.get::<u16, 0>() });
                header_len = l3.l4_off + 8;
            }
            _ => {}
        }
    }

    put::<u32, K_MAC>(key, mac_head);
    put::<u16, { K_MAC + 4 }>(key, mac_tail);
    put::<u16, K_PORT>(key, port);
    // The protocol and the seven padding bytes after it, in one store.
    put::<u64, K_PROTO>(key, u64::from_ne_bytes([l3.protocol, 0, 0, 0, 0, 0, 0, 0]));

    // Group/broadcast MACs are never a client; nor is an address outside the LAN, nor an
    // IPv4-mapped address in an IPv6 header (it would pose as an IPv4 LAN host).
    let w = l3.client;
    let group_mac = mac_head.to_ne_bytes()[0] & 1 != 0;
    let mapped = w[0] == 0 && w[1] == 0 && w[2] == V4_MAPPED_WORD;
    if group_mac || (l3.v6 && mapped) || !in_lan(w) {
        return Err(Stat::NotClient);
    }
    // SAFETY: every byte of the key is written: the addresses (32 bytes) by the L3 parser, then
    // the MAC (6), the port (2), and the protocol with the padding (8).
    Ok((unsafe { key.assume_init_ref() }, header_len))
}

/// What the L3 parsers found besides the addresses (which they write into the key).
struct L3 {
    /// IPv6 (addresses are native), not IPv4 (addresses are IPv4-mapped).
    v6: bool,
    /// The client address as four words (network byte order), as written into the key.
    client: [u32; 4],
    protocol: u8,
    l4_off: usize,
    first_fragment: bool,
}

#[inline(always)]
fn parse_ipv4(
    pkt: Packet,
    off: usize,
    upload: bool,
    key: &mut MaybeUninit<FlowKey>,
) -> Result<L3, Stat> {
    let ip = pkt.span::<20>(off).ok_or(Stat::TruncatedL3)?;
    let version_ihl = ip.get::<u8, 0>();
    if version_ihl >> 4 != 4 {
        return Err(Stat::BadL3Header);
    }
    // IHL, not 20: options are part of the header. Total length is not trusted for anything.
    let ihl = ((version_ihl & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Err(Stat::BadL3Header);
    }
    if !pkt.holds(off, ihl) {
        return Err(Stat::TruncatedL3);
    }
    let frag_offset = u16::from_be(ip.get::<u16, 6>()) & 0x1fff;
    let (src, dst) = (ip.get::<u32, 12>(), ip.get::<u32, 16>());
    let (client, remote) = if upload { (src, dst) } else { (dst, src) };
    // IPv4-mapped: ::ffff:a.b.c.d.
    put::<u64, K_CLIENT_IP>(key, 0);
    put::<u32, { K_CLIENT_IP + 8 }>(key, V4_MAPPED_WORD);
    put::<u32, { K_CLIENT_IP + 12 }>(key, client);
    put::<u64, K_REMOTE_IP>(key, 0);
    put::<u32, { K_REMOTE_IP + 8 }>(key, V4_MAPPED_WORD);
    put::<u32, { K_REMOTE_IP + 12 }>(key, remote);
    Ok(L3 {
        v6: false,
        client: [0, 0, V4_MAPPED_WORD, client],
        protocol: ip.get::<u8, 9>(),
        l4_off: off + ihl,
        first_fragment: frag_offset == 0,
    })
}

/// The first four bytes (in memory order) of eight loaded as a u64.
#[inline(always)]
fn first_word(v: u64) -> u32 {
    let b = v.to_ne_bytes();
    u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
}

/// The last four bytes (in memory order) of eight loaded as a u64.
#[inline(always)]
fn second_word(v: u64) -> u32 {
    let b = v.to_ne_bytes();
    u32::from_ne_bytes([b[4], b[5], b[6], b[7]])
}

#[inline(always)]
fn is_ipv6_ext(nh: u8) -> bool {
    matches!(nh, IPV6_HOPOPTS | IPV6_ROUTING | IPV6_FRAGMENT | IPV6_AH | IPV6_DSTOPTS)
}

#[inline(always)]
fn parse_ipv6(
    pkt: Packet,
    off: usize,
    upload: bool,
    key: &mut MaybeUninit<FlowKey>,
) -> Result<L3, Stat> {
    let ip = pkt.span::<40>(off).ok_or(Stat::TruncatedL3)?;
    if ip.get::<u8, 0>() >> 4 != 6 {
        return Err(Stat::BadL3Header);
    }
    let src = (ip.get::<u64, 8>(), ip.get::<u64, 16>());
    let dst = (ip.get::<u64, 24>(), ip.get::<u64, 32>());
    let (client, remote) = if upload { (src, dst) } else { (dst, src) };
    put::<u64, K_CLIENT_IP>(key, client.0);
    put::<u64, { K_CLIENT_IP + 8 }>(key, client.1);
    put::<u64, K_REMOTE_IP>(key, remote.0);
    put::<u64, { K_REMOTE_IP + 8 }>(key, remote.1);

    let mut nh = ip.get::<u8, 6>();
    let mut l4 = off + 40;
    let mut first_fragment = true;
    // Bounded walk: each header's own length field moves us on, and every read is checked.
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        if !is_ipv6_ext(nh) || !first_fragment {
            break;
        }
        if nh == IPV6_FRAGMENT {
            let frag = pkt.span::<8>(l4).ok_or(Stat::TruncatedL3)?;
            nh = frag.get::<u8, 0>();
            first_fragment = u16::from_be(frag.get::<u16, 2>()) >> 3 == 0;
            l4 += 8;
        } else {
            let h = pkt.span::<2>(l4).ok_or(Stat::TruncatedL3)?;
            let units = h.get::<u8, 1>() as usize;
            // AH counts its length in 4-byte units minus 2; the others in 8-byte units minus 1.
            let len = if nh == IPV6_AH { (units + 2) * 4 } else { (units + 1) * 8 };
            nh = h.get::<u8, 0>();
            l4 += len;
        }
    }
    if first_fragment && is_ipv6_ext(nh) {
        return Err(Stat::Ipv6ExtLimit);
    }
    // The last extension header must end inside the packet, even when nothing after it is read.
    if !pkt.holds(l4, 0) {
        return Err(Stat::TruncatedL3);
    }
    Ok(L3 {
        v6: true,
        client: [
            first_word(client.0),
            second_word(client.0),
            first_word(client.1),
            second_word(client.1),
        ],
        protocol: nh,
        l4_off: l4,
        first_fragment,
    })
}

/// Is this address (the four words of an IPv4-mapped or IPv6 address, network byte order)
/// inside one of the LAN prefixes?
#[inline(always)]
fn in_lan(w: [u32; 4]) -> bool {
    // SAFETY: reads of a static; volatile so the compiler does not fold the zero default.
    let count = unsafe { core::ptr::read_volatile(&LAN_PREFIXES.count) } as usize;
    for i in 0..MAX_LAN_PREFIXES {
        if i >= count {
            break;
        }
        let p = unsafe { core::ptr::read_volatile(&LAN_PREFIXES.prefixes[i]) };
        if w[0] & p.mask[0] == p.addr[0]
            && w[1] & p.mask[1] == p.addr[1]
            && w[2] & p.mask[2] == p.addr[2]
            && w[3] & p.mask[3] == p.addr[3]
        {
            return true;
        }
    }
    false
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
