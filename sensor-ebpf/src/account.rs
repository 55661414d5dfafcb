//! Counting: a packet's flow and its client's totals, client slot allocation (with the one
//! atomic instruction it needs), the packet outcome stats, and the coarse clock that stamps
//! them. Everything that writes the counting maps the agent reads.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
};
use sensor_common::{ClientKey, Counters, Direction, FlowKey, FlowValue, Stat};

use crate::{
    events::YOUNG_PACKETS,
    maps::{CLIENT_SLOTS, CLIENT_TOTALS, CLOCK, FLOWS, FREE_SLOTS, NEXT_SLOT, STATS},
    parse::{K_MAC, key_word},
};

const EEXIST: i32 = 17;

/// Increments a stat and returns its new per-CPU value (0 if the slot is missing).
#[inline(always)]
pub(crate) fn bump_stat(stat: Stat, dir: Direction) -> u64 {
    match STATS.get_ptr_mut(stat.slot(dir)) {
        Some(p) => unsafe {
            *p += 1;
            *p
        },
        None => 0,
    }
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
pub(crate) fn coarse_now() -> u64 {
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

/// Adds one packet (or a GSO batch) to its flow and to its client's totals. A known flow costs
/// one hash lookup (`FLOWS`) and one array lookup (`CLIENT_TOTALS`, at the slot the flow holds).
/// Also says whether the flow is young: new, or with at most [`YOUNG_PACKETS`] packets in this
/// direction on this CPU.
#[inline(always)]
pub(crate) fn account(
    key: &FlowKey,
    dir: Direction,
    packets: u64,
    bytes: u64,
    now: u64,
) -> (Stat, bool) {
    let Some(flow) = FLOWS.get_ptr_mut(key) else {
        return (account_new_flow(key, dir, packets, bytes, now), true);
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
            Err(stat) => return (stat, false),
        },
    };
    let Some(totals) = CLIENT_TOTALS.get_ptr_mut(slot) else {
        return (Stat::ClientTableFull, false);
    };
    add(&mut flow.counters, dir, packets, bytes, now);
    // SAFETY: this CPU's element of the per-CPU array.
    add(unsafe { &mut *totals }, dir, packets, bytes, now);
    (Stat::Counted, flow.counters.packets[dir.index()] <= YOUNG_PACKETS)
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
