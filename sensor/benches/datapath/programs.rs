//! The programs: loaded privately (no pinning, no attachment), run with BPF_PROG_TEST_RUN.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use aya::{
    Ebpf,
    maps::{MapData, PerCpuHashMap},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use ipnet::IpNet;
use sensor::{
    common::{FlowKey, names},
    kernel::collector::{KernelMaps, Snapshot},
    kernel::loader::{LoadOptions, load, load_floor, verify_for_test_runs},
};

use crate::{LAN, TC_ACT_UNSPEC, XDP_PASS};

/// The sensor's programs, and the floor (a separate object: the least XDP program that counts
/// the flow key).
pub(crate) struct Programs {
    ebpf: Ebpf,
    maps: KernelMaps,
    floor: Ebpf,
}

impl Programs {
    pub(crate) fn load() -> anyhow::Result<Programs> {
        let prefixes: Vec<IpNet> = LAN.iter().map(|p| p.parse().unwrap()).collect();
        let (mut ebpf, _) = load(&LoadOptions {
            lan_prefixes: &prefixes,
            flow_capacity: sensor::common::DEFAULT_FLOW_CAPACITY,
            client_capacity: sensor::common::DEFAULT_CLIENT_CAPACITY,
            pin_dir: None,
            kernel_btf: false,
        })?;
        verify_for_test_runs(&mut ebpf)?;
        let maps = KernelMaps::take(&mut ebpf)?;
        let floor = load_floor()?;
        Ok(Programs { ebpf, maps, floor })
    }

    /// Runs an XDP program (the sensor's, or `names::FLOOR_PROGRAM`) `repeat` times on `frame`:
    /// the kernel's mean time per run.
    pub(crate) fn xdp(&self, name: &str, frame: &[u8], repeat: u32) -> anyhow::Result<Duration> {
        let object = if name == names::FLOOR_PROGRAM { &self.floor } else { &self.ebpf };
        let prog: &Xdp = object.program(name).context("program missing")?.try_into()?;
        let r =
            prog.test_run(TestRunOptions { data_in: Some(frame), repeat, ..Default::default() })?;
        ensure!(
            r.return_value == XDP_PASS,
            "{name} returned {} instead of XDP_PASS",
            r.return_value
        );
        Ok(r.duration)
    }

    pub(crate) fn tc(&self, frame: &[u8], repeat: u32) -> anyhow::Result<Duration> {
        let prog: &SchedClassifier =
            self.ebpf.program(names::TC_PROGRAM).context("program missing")?.try_into()?;
        let r =
            prog.test_run(TestRunOptions { data_in: Some(frame), repeat, ..Default::default() })?;
        ensure!(
            r.return_value == TC_ACT_UNSPEC,
            "TC program returned {:#x} instead of TC_ACT_UNSPEC",
            r.return_value
        );
        Ok(r.duration)
    }

    pub(crate) fn snapshot(&self) -> anyhow::Result<Snapshot> {
        Ok(self.maps.read()?)
    }

    /// The floor's flows: key and [packets, bytes] summed over the CPUs, sorted by key.
    pub(crate) fn floor_flows(&self) -> anyhow::Result<Vec<(FlowKey, [u64; 2])>> {
        let map = self.floor.map(names::FLOOR_FLOWS).context("floor map missing")?;
        let map: PerCpuHashMap<&MapData, FlowKey, [u64; 2]> = PerCpuHashMap::try_from(map)?;
        let mut flows = Vec::new();
        for entry in map.iter() {
            let (key, per_cpu) = entry?;
            let sum = per_cpu.iter().fold([0, 0], |a, v| [a[0] + v[0], a[1] + v[1]]);
            flows.push((key, sum));
        }
        flows.sort_by_key(|f| f.0);
        Ok(flows)
    }
}
