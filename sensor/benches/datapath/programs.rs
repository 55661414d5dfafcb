//! The programs: loaded privately (no pinning, no attachment), run with BPF_PROG_TEST_RUN.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use aya::{
    Ebpf,
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use ipnet::IpNet;
use sensor::{
    common::names,
    kernel::collector::{KernelMaps, Snapshot},
    kernel::loader::{LoadOptions, load, verify_for_test_runs},
};

use crate::{LAN, TC_ACT_UNSPEC, XDP_PASS};

pub(crate) struct Programs {
    ebpf: Ebpf,
    maps: KernelMaps,
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
        Ok(Programs { ebpf, maps })
    }

    /// Runs an XDP program `repeat` times on `frame`: the kernel's mean time per run.
    pub(crate) fn xdp(&self, name: &str, frame: &[u8], repeat: u32) -> anyhow::Result<Duration> {
        let prog: &Xdp = self.ebpf.program(name).context("program missing")?.try_into()?;
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
}
