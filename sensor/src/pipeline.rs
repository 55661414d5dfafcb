//! One poll, start to end, in the order data flows: naming events → enrichment → kernel maps
//! → accounting → metrics and the API view.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use sensor_common::Direction;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::{
    accounting::{Accounting, Params},
    alerting::Alert,
    api::{ClientView, FlowView, View},
    collector::{KernelMaps, Snapshot},
    enrich::{Enricher, PollNamer, domain, geo::GeoInfo},
    events::Observation,
    labels,
    metrics::{ClientLabels, Metrics},
    policy::{
        eval::Evaluator,
        matcher::{ClientFacts, FlowFacts, PollFacts},
    },
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
    pub policy: Evaluator,
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
    /// One poll; returns the alerts to deliver (firing, and resolved within the retention).
    pub fn poll(&mut self) -> anyhow::Result<Vec<Alert>> {
        let started = Instant::now();
        let now = unix_now();
        self.learn_names(now);
        for warning in self.enricher.maintain(now) {
            warn!("{warning}");
        }
        // Map reads are blocking syscalls (tens of ms for a full map): keep them off the reactor.
        let snap = tokio::task::block_in_place(|| self.maps.read())?;
        let enricher = &self.enricher;
        let retired = self.accounting.update(&snap, now, &self.params, &PollNamer { enricher, now });
        for mac in &retired {
            info!(client = %labels::mac(mac), "client idle: retired from the metrics until seen again");
        }
        // One pass over the flow map for all of them (retiring frees their kernel slots).
        self.maps.remove_clients(&retired)?;
        self.metrics.publish(&self.accounting, &snap, &|mac| enricher.client_labels(mac));
        self.metrics.flows_tracked.set(snap.flows.len() as i64);
        self.metrics.clients_tracked.set(snap.clients.len() as i64);
        self.metrics.names_cached.set(self.enricher.names.len() as i64);
        let view = Arc::new(self.build_view(&snap, now));
        if let Ok(mut slot) = self.view.write() {
            *slot = view;
        }
        let alerts = self.evaluate_policy(&snap, now);
        self.metrics.poll_duration.observe(started.elapsed().as_secs_f64());
        Ok(alerts)
    }

    fn evaluate_policy(&mut self, snap: &Snapshot, now: u64) -> Vec<Alert> {
        let started = Instant::now();
        let facts = self.policy_facts(snap, now);
        let outcome = self.policy.evaluate(&facts);
        for (rule, client) in &outcome.started {
            // Creates the series at 0 (a no-op when it exists).
            self.metrics.policy_violations.with_label_values(&[rule.as_str(), client.as_str()]);
        }
        for (rule, client) in &outcome.fired {
            self.metrics.policy_violations.with_label_values(&[rule.as_str(), client.as_str()]).inc();
            info!(rule = %rule, client = %client, "alert firing");
        }
        self.metrics.set_policy_alerts(&outcome.counts);
        self.metrics.policy_series.set(outcome.series as i64);
        self.metrics.policy_series_dropped.inc_by(outcome.series_dropped as u64);
        self.metrics.policy_evaluation.observe(started.elapsed().as_secs_f64());
        outcome.alerts
    }

    /// The policy's view of this poll: every client the kernel counts, and the flows that
    /// gained traffic since the last poll, named.
    fn policy_facts(&self, snap: &Snapshot, now: u64) -> PollFacts {
        let mut index: HashMap<[u8; 6], usize> = HashMap::new();
        let mut clients = Vec::new();
        let mut client_index = |mac: &[u8; 6], clients: &mut Vec<ClientFacts>| {
            *index.entry(*mac).or_insert_with(|| {
                let l = self.enricher.client_labels(mac);
                clients.push(ClientFacts { mac: *mac, mac_text: labels::mac(mac), name: l.name, group: l.group, vendor: l.vendor, tags: l.tags });
                clients.len() - 1
            })
        };
        for mac in snap.clients.keys() {
            client_index(mac, &mut clients);
        }
        let mut geos: HashMap<std::net::IpAddr, GeoInfo> = HashMap::new();
        let flows = self
            .accounting
            .gains
            .iter()
            .map(|(key, gain)| {
                let remote = labels::ip(&key.remote_ip);
                let geo = geos.entry(remote).or_insert_with(|| self.enricher.geo(remote));
                let name = self.enricher.flow_name(key, now).unwrap_or_default().to_ascii_lowercase();
                FlowFacts {
                    client: client_index(&key.client_mac, &mut clients),
                    remote_ip: Some(remote),
                    protocol: key.protocol,
                    port: key.remote_port,
                    domain: if name.is_empty() { String::new() } else { domain::registrable(&name) },
                    name,
                    country: geo.country.clone(),
                    asn: geo.asn,
                    upload_bytes: gain.bytes[Direction::Upload.index()],
                    download_bytes: gain.bytes[Direction::Download.index()],
                    upload_packets: gain.packets[Direction::Upload.index()],
                    download_packets: gain.packets[Direction::Download.index()],
                }
            })
            .collect();
        PollFacts { now, clients, flows }
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
