//! One poll, start to end, in the order data flows: naming events → enrichment → kernel maps
//! → accounting → metrics and the API view.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use sensor_common::Direction;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::{
    accounting::{Accounting, Params},
    api::{ClientView, FlowView, View},
    collector::{KernelMaps, Snapshot},
    enrich::{Enricher, PollNamer, domain, geo::GeoInfo},
    events::Observation,
    labels,
    metrics::{ClientLabels, Metrics},
    server::SharedView,
};

pub struct Pipeline {
    pub maps: KernelMaps,
    pub accounting: Accounting,
    pub enricher: Enricher,
    pub params: Params,
    pub metrics: Arc<Metrics>,
    pub view: SharedView,
    pub events: mpsc::Receiver<Observation>,
    /// Where the last poll's time went.
    pub timings: PollTimings,
}

/// Where one poll's time went, stage by stage (the histogram metric has the total; the scale
/// benchmark reports the stages).
#[derive(Debug, Clone, Copy, Default)]
pub struct PollTimings {
    /// Reading the kernel maps into a snapshot.
    pub read: Duration,
    /// Deltas, top-N, retirement.
    pub account: Duration,
    /// Rebuilding the traffic metric families.
    pub publish: Duration,
    /// Rebuilding the API view.
    pub view: Duration,
    pub total: Duration,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// Kernel timestamps (CLOCK_MONOTONIC, ns) as Unix seconds.
struct Clock {
    unix: u64,
    mono_ns: u64,
}

impl Clock {
    fn now() -> Clock {
        let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
            .unwrap_or(0);
        Clock { unix: unix_now(), mono_ns: mono }
    }

    fn unix_of(&self, mono_ns: u64) -> u64 {
        if mono_ns == 0 {
            return 0;
        }
        self.unix.saturating_sub(self.mono_ns.saturating_sub(mono_ns) / 1_000_000_000)
    }
}

impl Pipeline {
    pub fn poll(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        let now = unix_now();
        self.learn_names(now);
        for warning in self.enricher.maintain(now) {
            warn!("{warning}");
        }
        // Map reads are blocking syscalls (milliseconds for a full map): keep them off the reactor.
        let mut stage = Instant::now();
        let mut lap = || std::mem::replace(&mut stage, Instant::now()).elapsed();
        let snap = tokio::task::block_in_place(|| self.maps.read())?;
        let read = lap();
        let enricher = &self.enricher;
        let retired = self.accounting.update(&snap, now, &self.params, &PollNamer { enricher, now });
        for mac in &retired {
            info!(client = %labels::mac(mac), "client idle: retired from the metrics until seen again");
        }
        // One pass over the flow map for all of them (retiring frees their kernel slots).
        self.maps.remove_clients(&retired)?;
        let account = lap();
        self.metrics.publish(&self.accounting, &snap, &|mac| enricher.client_labels(mac));
        self.metrics.flows_tracked.set(snap.flows.len() as i64);
        self.metrics.clients_tracked.set(snap.clients.len() as i64);
        self.metrics.names_cached.set(self.enricher.names.len() as i64);
        let publish = lap();
        let view = Arc::new(self.build_view(&snap, now));
        if let Ok(mut slot) = self.view.write() {
            *slot = view;
        }
        let view = lap();
        let total = started.elapsed();
        self.metrics.poll_duration.observe(total.as_secs_f64());
        self.timings = PollTimings { read, account, publish, view, total };
        Ok(())
    }

    /// Everything the kernel sent since the last poll names flows before they are attributed.
    fn learn_names(&mut self, now: u64) {
        while let Ok(obs) = self.events.try_recv() {
            let kind = obs.kind.as_str();
            self.metrics.events_received.with_label_values(&[kind]).inc();
            if let Err(e) = self.enricher.learn(&obs, now) {
                self.metrics.name_parse_errors.with_label_values(&[kind]).inc();
                tracing::debug!(kind, client = %labels::mac(&obs.key.client_mac), "unparsable naming event: {e}");
            }
        }
    }

    fn build_view(&self, snap: &Snapshot, now: u64) -> View {
        let clock = Clock::now();
        let mut flows = Vec::with_capacity(snap.flows.len());
        let mut ips: BTreeMap<[u8; 6], BTreeSet<String>> = BTreeMap::new();
        let mut flow_counts: BTreeMap<[u8; 6], usize> = BTreeMap::new();
        // One inventory lookup per client, one GeoIP lookup per remote and one public-suffix
        // lookup per name: many flows share them.
        let mut names: HashMap<[u8; 6], ClientLabels> = HashMap::new();
        let mut geos: HashMap<std::net::IpAddr, GeoInfo> = HashMap::new();
        let mut domains: HashMap<String, String> = HashMap::new();
        for (key, c) in &snap.flows {
            let labels_of = names.entry(key.client_mac).or_insert_with(|| self.enricher.client_labels(&key.client_mac));
            let client_ip = labels::ip(&key.client_ip).to_string();
            ips.entry(key.client_mac).or_default().insert(client_ip.clone());
            *flow_counts.entry(key.client_mac).or_default() += 1;
            let remote = labels::ip(&key.remote_ip);
            let name = self.enricher.flow_name(key, now).unwrap_or_default().to_string();
            let geo = geos.entry(remote).or_insert_with(|| self.enricher.geo(remote)).clone();
            let domain = match name.as_str() {
                "" => String::new(),
                n => domains.entry(name.clone()).or_insert_with(|| domain::registrable(n)).clone(),
            };
            flows.push(FlowView {
                client: labels_of.name.clone(),
                mac: labels::mac(&key.client_mac),
                client_ip,
                remote_ip: remote.to_string(),
                protocol: labels::protocol(key.protocol),
                port: key.remote_port,
                domain,
                name,
                country: geo.country,
                asn: geo.asn,
                as_org: geo.as_org,
                upload_bytes: c.bytes[Direction::Upload.index()],
                download_bytes: c.bytes[Direction::Download.index()],
                upload_packets: c.packets[Direction::Upload.index()],
                download_packets: c.packets[Direction::Download.index()],
                first_seen: clock.unix_of(c.first_seen_ns),
                last_seen: clock.unix_of(c.last_seen_ns),
            });
        }
        flows.sort_by(|a, b| (&a.client, b.upload_bytes + b.download_bytes).cmp(&(&b.client, a.upload_bytes + a.download_bytes)));
        let clients = self
            .accounting
            .clients
            .iter()
            .map(|(mac, account)| {
                let l = names.remove(mac).unwrap_or_else(|| self.enricher.client_labels(mac));
                let mut addrs = ips.remove(mac).unwrap_or_default();
                addrs.extend(self.enricher.inventory.lease_ips(mac).iter().map(ToString::to_string));
                ClientView {
                    client: l.name,
                    mac: labels::mac(mac),
                    group: l.group,
                    vendor: l.vendor,
                    source: l.source,
                    tags: l.tags,
                    ips: addrs.into_iter().collect(),
                    upload_bytes: account.totals.bytes(Direction::Upload),
                    download_bytes: account.totals.bytes(Direction::Download),
                    upload_packets: account.totals.packets(Direction::Upload),
                    download_packets: account.totals.packets(Direction::Download),
                    flows: flow_counts.get(mac).copied().unwrap_or(0),
                    last_seen: account.last_seen,
                }
            })
            .collect();
        View { updated: now, clients, flows }
    }
}
