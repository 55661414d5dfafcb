//! The test harness: the privilege check, and `Sensor`, a private instance of the programs
//! (no pinning, so its maps start empty) with one-frame runs through XDP and TC.

use aya::{
    Ebpf,
    programs::{SchedClassifier, TestRun as _, TestRunOptions, TestRunResult, Xdp},
};
use ipnet::IpNet;
use sensor::{
    common::names,
    kernel::collector::{KernelMaps, Snapshot},
    kernel::loader::{LoadOptions, install_capture, load, load_with_events, verify_for_test_runs},
};

use crate::{LAN, TC_ACT_UNSPEC, XDP_PASS};

// Privileges

pub(crate) fn privileged() -> bool {
    nix::unistd::geteuid().is_root()
        || lab::cannot_run(
            "kernel tests",
            "need root (to load eBPF programs and run BPF_PROG_TEST_RUN)",
        )
}

/// Skips the test (returns) unless privileged.
macro_rules! require_root {
    () => {
        if !$crate::harness::privileged() {
            return;
        }
    };
}
pub(crate) use require_root;

// A private instance of the programs

pub(crate) struct Sensor {
    pub(crate) ebpf: Ebpf,
    pub(crate) maps: KernelMaps,
}

impl Sensor {
    pub(crate) fn new() -> Sensor {
        Sensor::with_btf(false).expect("loading the eBPF programs")
    }

    pub(crate) fn with_btf(kernel_btf: bool) -> anyhow::Result<Sensor> {
        Sensor::with_options(kernel_btf, 4096, 256)
    }

    /// Small maps, to make the flow LRU evict or the client slots run out.
    pub(crate) fn with_capacities(flow_capacity: u32, client_capacity: u32) -> Sensor {
        Sensor::with_options(false, flow_capacity, client_capacity)
            .expect("loading the eBPF programs")
    }

    pub(crate) fn with_options(
        kernel_btf: bool,
        flow_capacity: u32,
        client_capacity: u32,
    ) -> anyhow::Result<Sensor> {
        let prefixes: Vec<IpNet> = LAN.iter().map(|p| p.parse().unwrap()).collect();
        let (mut ebpf, _) = load(&LoadOptions {
            lan_prefixes: &prefixes,
            flow_capacity,
            client_capacity,
            pin_dir: None,
            kernel_btf,
        })?;
        verify_for_test_runs(&mut ebpf)?;
        let maps = KernelMaps::take(&mut ebpf)?;
        Ok(Sensor { ebpf, maps })
    }

    /// With naming events on, up to `per_sec_per_cpu` a second and CPU, the capture program
    /// installed (with them off, the verifier prunes the event paths as dead code).
    pub(crate) fn with_events(per_sec_per_cpu: u32) -> Sensor {
        let prefixes: Vec<IpNet> = LAN.iter().map(|p| p.parse().unwrap()).collect();
        let opts = LoadOptions {
            lan_prefixes: &prefixes,
            flow_capacity: 4096,
            client_capacity: 256,
            pin_dir: None,
            kernel_btf: false,
        };
        let (mut ebpf, _) = load_with_events(&opts, per_sec_per_cpu).expect("loading with events");
        install_capture(&mut ebpf).expect("verifying the capture program");
        verify_for_test_runs(&mut ebpf).expect("verifying the XDP and TC programs with events");
        let maps = KernelMaps::take(&mut ebpf).unwrap();
        Sensor { ebpf, maps }
    }

    pub(crate) fn xdp_run(
        &self,
        name: &str,
        opts: TestRunOptions<'_>,
    ) -> anyhow::Result<TestRunResult> {
        let prog: &Xdp = self.ebpf.program(name).unwrap().try_into()?;
        Ok(prog.test_run(opts)?)
    }

    pub(crate) fn tc_run(&self, opts: TestRunOptions<'_>) -> anyhow::Result<TestRunResult> {
        self.tc_run_of(names::TC_PROGRAM, opts)
    }

    /// A run of a TC program by name: `gwsensor_tc` (egress, downloads) or
    /// `gwsensor_tc_ingress` (uploads where the interface has no native XDP).
    pub(crate) fn tc_run_of(
        &self,
        name: &str,
        opts: TestRunOptions<'_>,
    ) -> anyhow::Result<TestRunResult> {
        let prog: &SchedClassifier = self.ebpf.program(name).unwrap().try_into()?;
        Ok(prog.test_run(opts)?)
    }

    /// One frame through the XDP program (upload direction).
    pub(crate) fn upload(&self, frame: &[u8]) {
        let r = self
            .xdp_run(
                names::XDP_PROGRAM,
                TestRunOptions { data_in: Some(frame), repeat: 1, ..Default::default() },
            )
            .unwrap_or_else(|e| panic!("XDP test run of a {}-byte frame: {e:#}", frame.len()));
        assert_eq!(r.return_value, XDP_PASS, "the XDP program must always pass the packet");
    }

    /// One frame through the TC program (download direction).
    pub(crate) fn download(&self, frame: &[u8]) {
        let r = self
            .tc_run(TestRunOptions { data_in: Some(frame), repeat: 1, ..Default::default() })
            .unwrap_or_else(|e| panic!("TC test run of a {}-byte frame: {e:#}", frame.len()));
        assert_eq!(
            r.return_value, TC_ACT_UNSPEC,
            "the TC program must always return TC_ACT_UNSPEC"
        );
    }

    /// One frame through the TC ingress program (uploads where there is no native XDP).
    pub(crate) fn upload_tc(&self, frame: &[u8]) {
        let r = self
            .tc_run_of(
                names::TC_INGRESS_PROGRAM,
                TestRunOptions { data_in: Some(frame), repeat: 1, ..Default::default() },
            )
            .unwrap_or_else(|e| {
                panic!("TC ingress test run of a {}-byte frame: {e:#}", frame.len())
            });
        assert_eq!(r.return_value, TC_ACT_UNSPEC);
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        self.maps.read().expect("reading the maps")
    }
}
