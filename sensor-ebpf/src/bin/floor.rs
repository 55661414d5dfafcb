//! The floor of the benchmarks (`cargo xtask bench --peer`, the datapath bench): the least an
//! XDP program can do to count the sensor's flow key. It parses just enough to build the key
//! (Ethernet, up to two VLAN tags, IPv4 or IPv6 without extension headers, the TCP/UDP port),
//! then one lookup-and-add in one LRU per-CPU hash keyed like the sensor's flows. No LAN check,
//! no client totals, no stats, no clock, no events: what is left of the sensor's cost above it
//! is what those cost.
//!
//! A binary of its own, so a separate object: the agent never loads it (aya creates every map
//! of an object it loads, and this one's map would cost every user memory for nothing).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_NOEXIST, xdp_action},
    macros::{map, xdp},
    maps::LruPerCpuHashMap,
    programs::XdpContext,
};
use sensor_common::{DEFAULT_FLOW_CAPACITY, FlowKey};

/// Per flow and CPU: [packets, bytes]. Same capacity as the sensor's `FLOWS`.
#[map(name = "FLOOR_FLOWS")]
static FLOOR_FLOWS: LruPerCpuHashMap<FlowKey, [u64; 2]> =
    LruPerCpuHashMap::with_max_entries(DEFAULT_FLOW_CAPACITY, 0);

/// Named `sensor_common::names::FLOOR_PROGRAM`.
#[xdp]
pub fn gwsensor_floor(ctx: XdpContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    if let Some(key) = key(data, end) {
        let len = (end - data) as u64;
        match FLOOR_FLOWS.get_ptr_mut(key) {
            // SAFETY: this CPU's copy of the value.
            Some(v) => unsafe {
                (*v)[0] += 1;
                (*v)[1] += len;
            },
            None => {
                let _ = FLOOR_FLOWS.insert(key, [1, len], BPF_NOEXIST as u64);
            }
        }
    }
    xdp_action::XDP_PASS
}

/// The `T` at `data + off`, if the packet holds it: one load, unaligned where the packet puts
/// the field, exactly as the sensor's parser reads it (see `Span::get` there for why).
#[inline(always)]
fn at<T: Copy>(data: usize, end: usize, off: usize) -> Option<T> {
    if data + off + size_of::<T>() > end {
        return None;
    }
    // SAFETY: inside the packet (checked just above).
    Some(unsafe { core::ptr::read((data + off) as *const T) })
}

/// The upload frame's flow key, as the sensor builds it (client = sender; IPv4 addresses
/// IPv4-mapped; remote port in host order, 0 for other protocols).
#[inline(always)]
fn key(data: usize, end: usize) -> Option<FlowKey> {
    let mut k = FlowKey::default();
    let mac_head: u32 = at(data, end, 6)?;
    let mac_tail: u16 = at(data, end, 10)?;
    let mut off = 12;
    let mut ethertype = u16::from_be(at(data, end, off)?);
    for _ in 0..2 {
        if ethertype != 0x8100 && ethertype != 0x88a8 {
            break;
        }
        off += 4;
        ethertype = u16::from_be(at(data, end, off)?);
    }
    off += 2;
    let (protocol, l4) = match ethertype {
        0x0800 => {
            let ihl = ((at::<u8>(data, end, off)? & 0x0f) as usize) * 4;
            let (src, dst): (u32, u32) = (at(data, end, off + 12)?, at(data, end, off + 16)?);
            k.client_ip[10..12].copy_from_slice(&[0xff, 0xff]);
            k.client_ip[12..].copy_from_slice(&src.to_ne_bytes());
            k.remote_ip[10..12].copy_from_slice(&[0xff, 0xff]);
            k.remote_ip[12..].copy_from_slice(&dst.to_ne_bytes());
            (at::<u8>(data, end, off + 9)?, off + ihl)
        }
        0x86dd => {
            let words: [u64; 4] = [
                at(data, end, off + 8)?,
                at(data, end, off + 16)?,
                at(data, end, off + 24)?,
                at(data, end, off + 32)?,
            ];
            // SAFETY: [u64; 4] and the two [u8; 16] addresses are plain bytes of one size.
            let [c0, c1, r0, r1] = words;
            k.client_ip = unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>([c0, c1]) };
            k.remote_ip = unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>([r0, r1]) };
            (at::<u8>(data, end, off + 6)?, off + 40)
        }
        _ => return None,
    };
    if protocol == 6 || protocol == 17 {
        k.remote_port = u16::from_be(at(data, end, l4 + 2)?);
    }
    k.protocol = protocol;
    let (h, t) = (mac_head.to_ne_bytes(), mac_tail.to_ne_bytes());
    k.client_mac = [h[0], h[1], h[2], h[3], t[0], t[1]];
    Some(k)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
