//! Kernel side of the gateway sensor: counts every LAN client's packets and bytes per remote
//! endpoint. XDP on the LAN interface sees uploads (client → anywhere), a TC classifier on its
//! egress sees downloads (anywhere → client). Both always let the packet through unchanged.
//!
//! No CO-RE and no kernel BTF: the programs touch only packet bytes and stable `__sk_buff`
//! fields, so they load on router kernels built without `/sys/kernel/btf/vmlinux`.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_NOEXIST, TC_ACT_UNSPEC, xdp_action},
    helpers::{bpf_ktime_get_coarse_ns, bpf_skb_load_bytes},
    macros::{classifier, map, xdp},
    maps::{LruPerCpuHashMap, PerCpuArray, PerCpuHashMap, ProgramArray, RingBuf},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::warn;
use sensor_common::{
    ClientKey, Counters, DEFAULT_CLIENT_CAPACITY, DEFAULT_FLOW_CAPACITY, Direction, EVENT_DATA_MAX,
    EVENT_RING_BYTES, EVENT_STATS_LEN, Event, EventKind, EventOutcome, FlowKey, LanPrefix,
    LanPrefixes, MAX_IPV6_EXT_HEADERS, MAX_LAN_PREFIXES, MAX_VLAN_TAGS, PendingEvent, RateWindow,
    STATS_LEN, Stat,
};

/// Per-flow counters. LRU so that memory stays bounded whatever the traffic; the per-client
/// totals below keep every count even when a flow is evicted.
#[map(name = "FLOWS")]
static FLOWS: LruPerCpuHashMap<FlowKey, Counters> =
    LruPerCpuHashMap::with_max_entries(DEFAULT_FLOW_CAPACITY, 0);

/// Per-client totals. A plain hash (never evicts): when full, new clients are counted in the
/// `client_table_full` stat instead of silently displacing others.
#[map(name = "CLIENTS")]
static CLIENTS: PerCpuHashMap<ClientKey, Counters> =
    PerCpuHashMap::with_max_entries(DEFAULT_CLIENT_CAPACITY, 0);

/// Packet outcomes by direction: slot `Stat::slot(direction)`.
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
    prefixes: [LanPrefix {
        addr: [0; 4],
        mask: [0; 4],
    }; MAX_LAN_PREFIXES],
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
    let len = ctx.data_end() - ctx.data();
    if let Some(pending) = observe(&ctx, ctx.data(), ctx.data_end(), Direction::Upload, len, len as u64, 1)
        && let Some(slot) = EVENT_PENDING.get_ptr_mut(0)
    {
        // SAFETY: per-CPU slot; the tail call below runs on this CPU, right after.
        unsafe {
            *slot = pending;
            // Does not return on success; on failure the packet passes all the same.
            EVENT_TAIL.tail_call(&ctx, 0);
        }
    }
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
    let (gso_segs, vlan_present) = unsafe { ((*ctx.skb.skb).gso_segs, (*ctx.skb.skb).vlan_present) };
    // The frame on the wire carries the 802.1Q tag that TC sees as skb metadata.
    let len = ctx.len() as u64 + if vlan_present != 0 { 4 } else { 0 };
    // Headers of a locally built or forwarded skb may sit outside the linear area: pull just
    // enough for the deepest header we parse. Only paid when the linear part is short.
    let want = core::cmp::min(ctx.len(), 256);
    if ((ctx.data_end() - ctx.data()) as u32) < want {
        let _ = ctx.pull_data(want);
    }
    // A GSO skb is several frames on the wire: count each, with its own copy of the headers.
    let segs = if gso_segs > 1 { gso_segs } else { 1 };
    if let Some(pending) = observe(&ctx, ctx.data(), ctx.data_end(), Direction::Download, ctx.len() as usize, len, segs) {
        emit(&ctx, &pending);
    }
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
        let (data, end) = (self.data(), self.data_end());
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
            match at::<[u8; 8]>(data, end, off + o) {
                // SAFETY: packet read bounds-checked by `at`; o + 8 <= EVENT_DATA_MAX.
                Some(p) => unsafe { core::ptr::write_unaligned(dst.as_mut_ptr().add(o).cast::<[u8; 8]>(), *p) },
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
            if let Some(p) = at::<[u8; 8]>(data, end, off + o) {
                // SAFETY: as above; o + 8 == want <= EVENT_DATA_MAX.
                unsafe { core::ptr::write_unaligned(dst.as_mut_ptr().add(o).cast::<[u8; 8]>(), *p) };
                n = want;
            }
        }
        n
    }
}

impl Capture for TcContext {
    fn capture(&self, off: usize, dst: &mut [u8; EVENT_DATA_MAX], want: usize) -> usize {
        if want == 0 || want > EVENT_DATA_MAX {
            return 0;
        }
        // skb_load_bytes also reads what sits outside the linear area. Called directly: the
        // verifier must see a length of at least 1, which aya's wrapper does not prove.
        // SAFETY: dst holds EVENT_DATA_MAX bytes and 1 <= want <= EVENT_DATA_MAX.
        let rc = unsafe { bpf_skb_load_bytes(self.skb.skb.cast(), off as u32, dst.as_mut_ptr().cast(), want as u32) };
        if rc == 0 { want } else { 0 }
    }
}

/// Parses and counts one packet; returns an event to emit if its payload names a destination
/// and the rate limit allows it.
#[inline(always)]
fn observe<C: EbpfContext>(
    ctx: &C,
    data: usize,
    end: usize,
    dir: Direction,
    pkt_len: usize,
    len: u64,
    segs: u32,
) -> Option<PendingEvent> {
    bump_stat(Stat::Seen, dir);
    let mut pending = None;
    let outcome = match parse(data, end, dir) {
        Ok(p) => {
            let packets = segs as u64;
            let bytes = len + (packets - 1) * p.header_len as u64;
            // SAFETY: coarse ktime has no preconditions.
            let now = unsafe { bpf_ktime_get_coarse_ns() };
            let outcome = account(&p.key, dir, packets, bytes, now);
            if let Some(kind) = event_kind(&p, dir, data, end) {
                if allow_event(now) && p.header_len <= MAX_PAYLOAD_OFF {
                    pending = Some(PendingEvent {
                        key: p.key,
                        kind: kind as u8,
                        direction: dir as u8,
                        payload_off: p.header_len as u16,
                        payload_len: pkt_len.saturating_sub(p.header_len) as u32,
                        _pad: 0,
                        ktime_ns: now,
                    });
                } else {
                    bump_event(kind, EventOutcome::RateLimited);
                }
            }
            outcome
        }
        Err(stat) => stat,
    };
    let n = bump_stat(outcome, dir);
    // Diagnostics only for map failures, and only on the 1st, 2nd, 4th, 8th... occurrence per
    // CPU, so that logging never becomes a per-packet cost.
    if matches!(outcome, Stat::FlowUpdateFailed | Stat::ClientTableFull) && n & (n - 1) == 0 {
        let which = outcome as u32;
        warn!(ctx, "gwsensor: map update failed (stat {}), occurrence {}", which, n);
    }
    pending
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
fn event_kind(p: &Parsed, dir: Direction, data: usize, end: usize) -> Option<EventKind> {
    let proto = p.key.protocol;
    match dir {
        Direction::Download if p.key.remote_port == 53 && (proto == IPPROTO_UDP || proto == IPPROTO_TCP) => {
            // A TCP segment with no payload (an ACK) carries no answer.
            at::<u8>(data, end, p.header_len).map(|_| EventKind::DnsResponse)
        }
        Direction::Upload if proto == IPPROTO_TCP && p.key.remote_port != 0 => {
            let head: [u8; 6] = read(data, end, p.header_len, Stat::Seen).ok()?;
            // TLS record: handshake (22), version 3.x, first message a ClientHello (1).
            if head[0] == 22 && head[1] == 3 && head[5] == 1 {
                return Some(EventKind::TlsClientHello);
            }
            let method = [head[0], head[1], head[2], head[3]];
            matches!(&method, b"GET " | b"POST" | b"HEAD" | b"PUT " | b"DELE" | b"OPTI" | b"PATC")
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
        (*ev)._pad = 0;
        (*ev).ktime_ns = pending.ktime_ns;
        let captured = ctx.capture(pending.payload_off as usize, &mut (*ev).data, want);
        (*ev).captured = captured as u16;
    }
    entry.submit(0);
    bump_event(kind, EventOutcome::Sent);
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

/// Adds one packet (or a GSO batch) to the client's totals and to its flow.
#[inline(always)]
fn account(key: &FlowKey, dir: Direction, packets: u64, bytes: u64, now: u64) -> Stat {
    let client = ClientKey {
        mac: key.client_mac,
        _pad: [0; 2],
    };
    if !upsert!(CLIENTS, &client, dir, packets, bytes, now) {
        return Stat::ClientTableFull;
    }
    if !upsert!(FLOWS, key, dir, packets, bytes, now) {
        return Stat::FlowUpdateFailed;
    }
    Stat::Counted
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

/// Look up once and increment in place (the common case); insert only for a new key, and if
/// another CPU inserted it first, increment that entry. Evaluates to false if the map refused.
macro_rules! upsert {
    ($map:ident, $key:expr, $dir:expr, $packets:expr, $bytes:expr, $now:expr) => {{
        match $map.get_ptr_mut($key) {
            Some(p) => {
                add(unsafe { &mut *p }, $dir, $packets, $bytes, $now);
                true
            }
            None => {
                let mut fresh = Counters {
                    first_seen_ns: $now,
                    ..Counters::default()
                };
                add(&mut fresh, $dir, $packets, $bytes, $now);
                match $map.insert($key, &fresh, BPF_NOEXIST as u64) {
                    Ok(()) => true,
                    Err(e) if e == -EEXIST => match $map.get_ptr_mut($key) {
                        Some(p) => {
                            add(unsafe { &mut *p }, $dir, $packets, $bytes, $now);
                            true
                        }
                        None => false,
                    },
                    Err(_) => false,
                }
            }
        }
    }};
}
use upsert;

/// A parsed packet: its flow key and where its L4 payload starts (for GSO byte accounting).
struct Parsed {
    key: FlowKey,
    header_len: usize,
}

/// Pointer to a `T` at `off` bytes into the packet, if the packet is long enough.
#[inline(always)]
fn at<T>(data: usize, end: usize, off: usize) -> Option<*const T> {
    let start = data + off;
    if start + core::mem::size_of::<T>() > end {
        None
    } else {
        Some(start as *const T)
    }
}

/// Reads a `T` (a byte array) at `off`; `Err(stat)` if the packet ends first.
#[inline(always)]
fn read<T: Copy>(data: usize, end: usize, off: usize, stat: Stat) -> Result<T, Stat> {
    match at::<T>(data, end, off) {
        // SAFETY: bounds checked against data_end just above; T is a byte array (align 1).
        Some(p) => Ok(unsafe { *p }),
        None => Err(stat),
    }
}

#[inline(always)]
fn parse(data: usize, end: usize, dir: Direction) -> Result<Parsed, Stat> {
    let eth: [u8; ETH_HLEN] = read(data, end, 0, Stat::TruncatedL2)?;
    let upload = matches!(dir, Direction::Upload);
    // The client is the sender of an upload and the receiver of a download.
    let m = if upload { 6 } else { 0 };
    let client_mac = [eth[m], eth[m + 1], eth[m + 2], eth[m + 3], eth[m + 4], eth[m + 5]];

    let mut ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    let mut off = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let tag: [u8; 4] = read(data, end, off, Stat::TruncatedL2)?;
        ethertype = u16::from_be_bytes([tag[2], tag[3]]);
        off += 4;
    }

    let l3 = match ethertype {
        ETH_P_IP => parse_ipv4(data, end, off)?,
        ETH_P_IPV6 => parse_ipv6(data, end, off)?,
        ETH_P_8021Q | ETH_P_8021AD => return Err(Stat::VlanDepth),
        _ => return Err(Stat::NotIp),
    };

    // Ports: only in the first (or only) fragment, and only for TCP and UDP.
    let (mut src_port, mut dst_port, mut header_len) = (0u16, 0u16, l3.l4_off);
    if l3.first_fragment {
        match l3.protocol {
            IPPROTO_TCP => {
                let tcp: [u8; 20] = read(data, end, l3.l4_off, Stat::TruncatedL4)?;
                src_port = u16::from_be_bytes([tcp[0], tcp[1]]);
                dst_port = u16::from_be_bytes([tcp[2], tcp[3]]);
                let doff = ((tcp[12] >> 4) as usize) * 4;
                header_len = l3.l4_off + if doff > 20 { doff } else { 20 };
            }
            IPPROTO_UDP => {
                let udp: [u8; 8] = read(data, end, l3.l4_off, Stat::TruncatedL4)?;
                src_port = u16::from_be_bytes([udp[0], udp[1]]);
                dst_port = u16::from_be_bytes([udp[2], udp[3]]);
                header_len = l3.l4_off + 8;
            }
            _ => {}
        }
    }

    let (client_ip, remote_ip, remote_port) = if upload {
        (l3.src, l3.dst, dst_port)
    } else {
        (l3.dst, l3.src, src_port)
    };
    // Group/broadcast MACs are never a client; nor is an address outside the LAN, nor an
    // IPv4-mapped address in an IPv6 header (it would pose as an IPv4 LAN host).
    if client_mac[0] & 1 != 0 || (l3.v6 && is_v4_mapped(&client_ip)) || !in_lan(&client_ip) {
        return Err(Stat::NotClient);
    }
    Ok(Parsed {
        key: FlowKey {
            client_ip,
            remote_ip,
            client_mac,
            remote_port,
            protocol: l3.protocol,
            _pad: [0; 3],
        },
        header_len,
    })
}

struct L3 {
    /// IPv6 (addresses are native), not IPv4 (addresses are IPv4-mapped).
    v6: bool,
    src: [u8; 16],
    dst: [u8; 16],
    protocol: u8,
    l4_off: usize,
    first_fragment: bool,
}

#[inline(always)]
fn is_v4_mapped(ip: &[u8; 16]) -> bool {
    ip[..10].iter().all(|b| *b == 0) && ip[10] == 0xff && ip[11] == 0xff
}

#[inline(always)]
fn mapped(a: u8, b: u8, c: u8, d: u8) -> [u8; 16] {
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d]
}

#[inline(always)]
fn parse_ipv4(data: usize, end: usize, off: usize) -> Result<L3, Stat> {
    let ip: [u8; 20] = read(data, end, off, Stat::TruncatedL3)?;
    if ip[0] >> 4 != 4 {
        return Err(Stat::BadL3Header);
    }
    // IHL, not 20: options are part of the header. Total length is not trusted for anything.
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Err(Stat::BadL3Header);
    }
    if data + off + ihl > end {
        return Err(Stat::TruncatedL3);
    }
    let frag_offset = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff;
    Ok(L3 {
        v6: false,
        src: mapped(ip[12], ip[13], ip[14], ip[15]),
        dst: mapped(ip[16], ip[17], ip[18], ip[19]),
        protocol: ip[9],
        l4_off: off + ihl,
        first_fragment: frag_offset == 0,
    })
}

#[inline(always)]
fn is_ipv6_ext(nh: u8) -> bool {
    matches!(nh, IPV6_HOPOPTS | IPV6_ROUTING | IPV6_FRAGMENT | IPV6_AH | IPV6_DSTOPTS)
}

#[inline(always)]
fn parse_ipv6(data: usize, end: usize, off: usize) -> Result<L3, Stat> {
    let ip: [u8; 40] = read(data, end, off, Stat::TruncatedL3)?;
    if ip[0] >> 4 != 6 {
        return Err(Stat::BadL3Header);
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&ip[8..24]);
    dst.copy_from_slice(&ip[24..40]);

    let mut nh = ip[6];
    let mut l4 = off + 40;
    let mut first_fragment = true;
    // Bounded walk: each header's own length field moves us on, and every read is checked.
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        if !is_ipv6_ext(nh) || !first_fragment {
            break;
        }
        if nh == IPV6_FRAGMENT {
            let frag: [u8; 8] = read(data, end, l4, Stat::TruncatedL3)?;
            nh = frag[0];
            first_fragment = u16::from_be_bytes([frag[2], frag[3]]) >> 3 == 0;
            l4 += 8;
        } else {
            let h: [u8; 2] = read(data, end, l4, Stat::TruncatedL3)?;
            // AH counts its length in 4-byte units minus 2; the others in 8-byte units minus 1.
            let len = if nh == IPV6_AH {
                (h[1] as usize + 2) * 4
            } else {
                (h[1] as usize + 1) * 8
            };
            nh = h[0];
            l4 += len;
        }
    }
    if first_fragment && is_ipv6_ext(nh) {
        return Err(Stat::Ipv6ExtLimit);
    }
    // The last extension header must end inside the packet, even when nothing after it is read.
    if data + l4 > end {
        return Err(Stat::TruncatedL3);
    }
    Ok(L3 {
        v6: true,
        src,
        dst,
        protocol: nh,
        l4_off: l4,
        first_fragment,
    })
}

/// Is this (IPv4-mapped) address inside one of the LAN prefixes?
#[inline(always)]
fn in_lan(ip: &[u8; 16]) -> bool {
    let w = [
        u32::from_ne_bytes([ip[0], ip[1], ip[2], ip[3]]),
        u32::from_ne_bytes([ip[4], ip[5], ip[6], ip[7]]),
        u32::from_ne_bytes([ip[8], ip[9], ip[10], ip[11]]),
        u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]),
    ];
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
