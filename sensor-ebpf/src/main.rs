//! Kernel side of the gateway sensor: counts every LAN client's packets and bytes per remote
//! endpoint. XDP on the LAN interface sees uploads (client → anywhere), a TC classifier on its
//! egress sees downloads (anywhere → client); where the interface has no native XDP (a bridge),
//! a TC classifier on its ingress sees the uploads instead. All always let the packet through
//! unchanged.
//!
//! No CO-RE and no kernel BTF: the programs touch only packet bytes and stable `__sk_buff`
//! fields, so they load on router kernels built without `/sys/kernel/btf/vmlinux`.
//!
//! This file holds the entry points and `observe`, the per-packet path they share (and the one
//! log record, which names this file). Module `parse` reads a packet into a flow key, `account`
//! counts it, `events` hands the agent payloads that name a destination, and `maps` holds every
//! map and loader-set global.
#![no_std]
#![no_main]
// Inline assembly for one instruction, the atomic fetch-and-add of slot allocation (see
// `account::fetch_add`). The crate is built with nightly only (build-std), like every aya
// program.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

mod account;
mod events;
mod maps;
mod parse;

use aya_ebpf::{
    EbpfContext,
    bindings::{TC_ACT_UNSPEC, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::warn;
use core::mem::MaybeUninit;
use sensor_common::{
    Direction, EventKind, EventOutcome, FlowKey, MAX_HEADER_DEPTH, Stat, wire_bytes, wire_frames,
};

use crate::{
    account::{account, bump_stat, coarse_now},
    events::{
        EventStart, MAX_PAYLOAD_OFF, allow_event, bump_event, emit, event_kind, follow_hello,
        next_chunk,
    },
    maps::{EVENT_PENDING, EVENT_TAIL, TC_EVENT_TAIL, TC_PENDING, XDP_PENDING},
    parse::{Packet, ipv6_ext_chain, parse},
};

#[xdp]
pub fn gwsensor_xdp(ctx: XdpContext) -> u32 {
    let pkt = Packet { data: ctx.data(), end: ctx.data_end() };
    let size = Size { len: (pkt.end - pkt.data) as u64, gso_segs: 0, gso_size: 0, per_frame: 0 };
    let mut key = MaybeUninit::uninit();
    observe(&ctx, pkt, &mut key, Direction::Upload, size, |key, ev| {
        if let Some(slot) = EVENT_PENDING.get_ptr_mut(XDP_PENDING) {
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

/// Tail-called by `gwsensor_xdp` to copy a staged event's payload into the ring buffer; a
/// payload of several chunks tail-calls this program again for each next one.
#[xdp]
pub fn gwsensor_xdp_capture(ctx: XdpContext) -> u32 {
    if let Some(pending) = EVENT_PENDING.get_ptr_mut(XDP_PENDING) {
        // SAFETY: per-CPU slot, staged by the program that tail-called this one on this CPU.
        let pending = unsafe { &mut *pending };
        emit(&ctx, pending);
        if next_chunk(pending) {
            // SAFETY: as above; does not return on success.
            unsafe { EVENT_TAIL.tail_call(&ctx, 0) };
        }
    }
    xdp_action::XDP_PASS
}

/// Tail-called by the TC programs to copy a staged event's payload into the ring buffer, a
/// chunk a call like [`gwsensor_xdp_capture`]. On its own, so that the counting programs stay
/// well within what old verifiers explore (6.1 refused them with the copy inlined per chunk).
#[classifier]
pub fn gwsensor_tc_capture(ctx: TcContext) -> i32 {
    if let Some(pending) = EVENT_PENDING.get_ptr_mut(TC_PENDING) {
        // SAFETY: per-CPU slot, staged by the program that tail-called this one on this CPU.
        let pending = unsafe { &mut *pending };
        emit(&ctx, pending);
        if next_chunk(pending) {
            // SAFETY: as above; does not return on success.
            unsafe { TC_EVENT_TAIL.tail_call(&ctx, 0) };
        }
    }
    TC_ACT_UNSPEC
}

/// Baseline for benchmarks: what an XDP program costs when it does nothing.
#[xdp]
pub fn gwsensor_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[classifier]
pub fn gwsensor_tc(ctx: TcContext) -> i32 {
    tc_observe(&ctx, Direction::Download)
}

/// Uploads on an interface without native XDP (a bridge such as `br-lan`): generic XDP would
/// see a GRO-merged packet as one, while TC has its segment count.
#[classifier]
pub fn gwsensor_tc_ingress(ctx: TcContext) -> i32 {
    tc_observe(&ctx, Direction::Upload)
}

/// The TC side of both directions: makes the headers linear, sizes the skb as the frames it is
/// on the wire, counts it and stages its event for the TC capture program (which copies with
/// `bpf_skb_load_bytes`, also what lies outside the linear area).
#[inline(always)]
fn tc_observe(ctx: &TcContext, dir: Direction) -> i32 {
    // SAFETY: `skb` is the context pointer the kernel handed us; these fields are plain reads.
    let (gso_segs, gso_size, vlan_present) = unsafe {
        let skb = ctx.skb.skb;
        ((*skb).gso_segs, (*skb).gso_size, (*skb).vlan_present)
    };
    // Headers of a locally built or forwarded skb may sit outside the linear area (a packet
    // socket's frame of a page or more has only its Ethernet header there): pull enough for
    // the deepest header we parse. Only paid when the linear part is short; an IPv6 extension
    // chain can end far beyond the usual 256 bytes, so it gets the parser's whole reach.
    let len = ctx.len();
    pull(ctx, core::cmp::min(len, SHALLOW_PULL));
    if ipv6_ext_chain(Packet { data: ctx.data(), end: ctx.data_end() }) {
        pull(ctx, core::cmp::min(len, MAX_HEADER_DEPTH));
    }
    let size = Size {
        len: len as u64,
        gso_segs,
        gso_size,
        // Each frame carries the 802.1Q tag that TC sees as skb metadata.
        per_frame: if vlan_present != 0 { 4 } else { 0 },
    };
    let pkt = Packet { data: ctx.data(), end: ctx.data_end() };
    let mut key = MaybeUninit::uninit();
    observe(ctx, pkt, &mut key, dir, size, |key, ev| {
        if let Some(slot) = EVENT_PENDING.get_ptr_mut(TC_PENDING) {
            // SAFETY: per-CPU slot; the tail call below runs on this CPU, right after.
            unsafe {
                *slot = ev.pending(key, dir);
                // Does not return on success; on failure the packet passes all the same.
                TC_EVENT_TAIL.tail_call(ctx, 0);
            }
        }
    });
    // "Unspecified": carry on with whatever else is attached (TCX next / next filter).
    TC_ACT_UNSPEC
}

/// What TC makes linear of every packet whose linear part is shorter: Ethernet, two VLAN tags,
/// IPv4 with options and TCP with options end well before it.
const SHALLOW_PULL: u32 = 256;

/// Makes the first `want` bytes (at most the packet length) linear, if they are not yet.
#[inline(always)]
fn pull(ctx: &TcContext, want: u32) {
    if ((ctx.data_end() - ctx.data()) as u32) < want {
        let _ = ctx.pull_data(want);
    }
}

/// How much a packet weighs on the wire.
#[derive(Clone, Copy)]
struct Size {
    /// The packet's length (an skb's: linear and paged data, its headers once).
    len: u64,
    /// An skb's `gso_segs` and `gso_size` (0 for XDP): see [`wire_frames`].
    gso_segs: u32,
    gso_size: u32,
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
    // Exactly one outcome per packet, and no `seen` count: the agent derives it as the sum of
    // the outcomes, which saves an array update per packet.
    let (outcome, n) = match parse(pkt, dir, key) {
        Ok((key, header_len, seq)) => {
            let segs = wire_frames(size.len, header_len as u64, size.gso_segs, size.gso_size);
            let bytes = wire_bytes(size.len, segs, header_len as u64, size.per_frame);
            let packets = segs as u64;
            let now = coarse_now();
            let (outcome, young) = account(key, dir, packets, bytes, now);
            // Counted before the event: XDP emits it through a tail call, which does not
            // return when it succeeds, so nothing after `event` runs for that packet.
            let n = bump_stat(outcome, dir);
            if let Some(found) = event_kind(key, header_len, seq, dir, pkt, young) {
                let kind = found.kind;
                if header_len <= MAX_PAYLOAD_OFF && allow_event(key, now) {
                    let payload_len = (size.len as usize).saturating_sub(header_len) as u32;
                    if kind == EventKind::TlsClientHello {
                        follow_hello(key, seq, payload_len, found.hello_len);
                    }
                    let start =
                        EventStart { kind, payload_off: header_len as u16, payload_len, now, seq };
                    event(key, &start);
                } else {
                    bump_event(kind, EventOutcome::RateLimited);
                }
            }
            (outcome, n)
        }
        Err(stat) => (stat, bump_stat(stat, dir)),
    };
    // Diagnostics only for map failures, and only on the 1st, 2nd, 4th, 8th... occurrence per
    // CPU, so that logging never becomes a per-packet cost. (A packet whose event went out
    // through XDP's tail call does not get here: its occurrence is counted, not logged.)
    if matches!(outcome, Stat::FlowUpdateFailed | Stat::ClientTableFull) && n & (n - 1) == 0 {
        let which = outcome as u32;
        warn!(ctx, "gwsensor: map update failed (stat {}), occurrence {}", which, n);
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
