//! The programs and the agent's pipeline, on pinned maps: filling them with the real XDP
//! program, and timed reads of the flow map.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use aya::{
    Ebpf,
    programs::{TestRun, TestRunOptions, Xdp},
};
use ipnet::IpNet;
use sensor::{
    accounting::Accounting,
    agent,
    agent::pipeline::{Pipeline, PollTimings},
    common::names,
    config::Config,
    enrich::Enricher,
    export::metrics::Metrics,
    export::server::SharedView,
    kernel::collector::{KernelMaps, ReadMethod, Snapshot},
    kernel::loader::{LoadOptions, load},
    policy::{
        Policy,
        eval::{EvalState, Evaluator},
    },
};

use crate::{
    CLIENT_CAPACITY, Case, LAN, XDP_PASS,
    traffic::{frame, frame_len},
};

pub(crate) struct Instance {
    ebpf: Ebpf,
    pub(crate) pipeline: Pipeline,
}

pub(crate) fn load_instance(case: &Case, pins: &Path) -> anyhow::Result<Instance> {
    let prefixes: Vec<IpNet> = vec![LAN.parse()?];
    let (mut ebpf, loaded) = load(&LoadOptions {
        lan_prefixes: &prefixes,
        flow_capacity: case.capacity,
        client_capacity: CLIENT_CAPACITY,
        pin_dir: Some(pins),
        kernel_btf: false,
    })?;
    ensure!(
        loaded.capacities.flows == case.capacity,
        "flow map of {} entries, wanted {}",
        loaded.capacities.flows,
        case.capacity
    );
    let prog: &mut Xdp =
        ebpf.program_mut(names::XDP_PROGRAM).context("XDP program missing")?.try_into()?;
    prog.load().context("verifying the XDP program")?;
    let maps = KernelMaps::take(&mut ebpf)?;
    let config = Config::parse("interface: lo\n", Path::new("scale-bench.yaml"))?;
    let (enricher, _warnings) =
        Enricher::new(&config.inventory, &config.geoip, &config.names, config.destinations.level)?;
    let (_, events) = tokio::sync::mpsc::channel(1);
    let (_, dhcp) = tokio::sync::mpsc::channel(1);
    let pipeline = Pipeline {
        maps,
        accounting: Accounting::default(),
        enricher,
        params: agent::params(&config),
        metrics: Arc::new(Metrics::new()?),
        view: SharedView::default(),
        events,
        dhcp,
        // The example policy: its evaluation is part of every poll.
        policy: Evaluator::new(
            Policy::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/policy.yaml"))
                .map_err(|e| anyhow::anyhow!("{e}"))?,
            EvalState::default(),
            config.external_url(),
            config.alerting.resolved_retention,
        ),
        timings: PollTimings::default(),
    };
    Ok(Instance { ebpf, pipeline })
}

impl Instance {
    /// One frame of every flow through the real XDP program: fills the map, or makes every
    /// flow grow. Returns the bytes sent per client.
    pub(crate) fn pass(&self, case: &Case) -> anyhow::Result<Vec<u64>> {
        let prog: &Xdp =
            self.ebpf.program(names::XDP_PROGRAM).context("program missing")?.try_into()?;
        let mut buf = Vec::with_capacity(1600);
        let mut bytes = vec![0u64; case.clients];
        for i in 0..case.flows {
            frame(case, i, &mut buf);
            let r = prog.test_run(TestRunOptions {
                data_in: Some(&buf),
                repeat: 1,
                ..Default::default()
            })?;
            ensure!(r.return_value == XDP_PASS, "XDP returned {}", r.return_value);
            bytes[i % case.clients] += frame_len(i);
        }
        Ok(bytes)
    }

    pub(crate) fn maps(&self) -> &KernelMaps {
        &self.pipeline.maps
    }
}

/// Flows in the map now (the view lists each once).
pub(crate) fn by_snapshot_len(inst: &Instance) -> anyhow::Result<usize> {
    Ok(inst.maps().read()?.flows.len())
}

/// Times one full read of the maps with `method`.
pub(crate) fn timed_read(
    maps: &KernelMaps,
    method: ReadMethod,
) -> anyhow::Result<(Duration, Snapshot)> {
    maps.set_read_method(method);
    let started = Instant::now();
    let snap = maps.read()?;
    let took = started.elapsed();
    maps.set_read_method(ReadMethod::Batch);
    Ok((took, snap))
}
