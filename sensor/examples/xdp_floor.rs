//! Bench-only (`cargo xtask bench --peer`): attaches the floor program (the least XDP program
//! that counts the sensor's flow key; `sensor::kernel::loader::load_floor`) to an interface in
//! driver mode, prints `attached`, and on SIGTERM or SIGINT prints what it counted,
//! `counted <packets> packets in <flows> flows`, and exits (which detaches it).
//!
//! `xdp_floor IFACE`, as root, in the interface's network namespace.

use anyhow::Context as _;
use aya::maps::{MapData, PerCpuHashMap};
use nix::sys::signal::{SigSet, Signal};
use sensor::{
    common::{FlowKey, names},
    kernel::loader::{attach_floor, load_floor},
};

fn main() -> anyhow::Result<()> {
    let iface = std::env::args().nth(1).context("usage: xdp_floor IFACE")?;
    // Blocked before anything else, so a signal that comes early waits for `wait` below.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.thread_block().context("blocking SIGTERM and SIGINT")?;

    let mut ebpf = load_floor().context("loading the floor object")?;
    attach_floor(&mut ebpf, &iface).with_context(|| format!("attaching the floor to {iface}"))?;
    println!("attached");
    signals.wait().context("waiting for SIGTERM or SIGINT")?;

    let map = ebpf.map(names::FLOOR_FLOWS).context("the floor's map is missing")?;
    let map: PerCpuHashMap<&MapData, FlowKey, [u64; 2]> = PerCpuHashMap::try_from(map)?;
    let (mut packets, mut flows) = (0u64, 0u64);
    for entry in map.iter() {
        let (_, per_cpu) = entry?;
        packets += per_cpu.iter().map(|v| v[0]).sum::<u64>();
        flows += 1;
    }
    println!("counted {packets} packets in {flows} flows");
    Ok(())
}
