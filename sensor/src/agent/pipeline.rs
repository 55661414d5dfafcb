//! One poll, start to end, in the order data flows: naming events → enrichment → kernel maps
//! → accounting → metrics and the API view.

use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use sensor_common::{Direction, FlowKey};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::{
    accounting::{self, Accounting, Params},
    enrich::{Enricher, PollNamer, domain, geo::GeoInfo},
    export::{
        api::{ClientView, FlowRow, LiveView, Owner},
        metrics::Metrics,
        server::SharedView,
    },
    kernel::{
        collector::{KernelMaps, Snapshot},
        events::Observation,
    },
    policy::{
        eval::Evaluator,
        matcher::{ClientFacts, FlowFacts},
    },
    types::{Alert, AlertStatus, FastMap, FastSet, labels},
};

pub struct Pipeline {
    pub maps: KernelMaps,
    pub accounting: Accounting,
    pub enricher: Enricher,
    pub params: Params,
    pub metrics: Arc<Metrics>,
    pub view: SharedView,
    pub events: mpsc::Receiver<Observation>,
    /// Clients' DHCP requests (none arrive when `inventory.dhcp_fingerprint` is off).
    pub dhcp: mpsc::Receiver<crate::kernel::dhcp_socket::Frame>,
    pub policy: Evaluator,
    /// Where the last poll's time went.
    pub timings: PollTimings,
}

/// Gained flows named per part of a policy evaluation.
const FACTS_PER_PART: usize = 4096;

/// The policy's view of one flow that gained traffic in this poll, named.
fn flow_facts(
    enricher: &Enricher,
    accounting: &Accounting,
    index: &FastMap<[u8; 6], usize>,
    key: &FlowKey,
    gain: &accounting::Gain,
    now: u64,
) -> FlowFacts {
    let delta = gain.delta();
    // Its destination has the remote's country and ASN: no second lookup.
    let geo = accounting.destination(gain.destination());
    let name = enricher.flow_name(key, now).unwrap_or_default().to_ascii_lowercase();
    let remote = labels::ip(&key.remote_ip);
    FlowFacts {
        // policy_clients indexed every gain's client.
        client: index.get(&key.client_mac).copied().unwrap_or_default(),
        remote_ip: Some(remote),
        reach: enricher.reach(&remote),
        protocol: key.protocol,
        port: key.remote_port,
        domain: if name.is_empty() { String::new() } else { domain::registrable(&name) },
        name,
        country: geo.country.clone(),
        asn: geo.asn,
        upload_bytes: delta.bytes[Direction::Upload.index()],
        download_bytes: delta.bytes[Direction::Download.index()],
        upload_packets: delta.packets[Direction::Upload.index()],
        download_packets: delta.packets[Direction::Download.index()],
    }
}

/// One poll's alerts: their statuses, and the policy series each stands for.
#[derive(Debug)]
pub struct PollAlerts {
    pub statuses: Vec<AlertStatus>,
    series: Vec<String>,
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
    /// Evaluating the policy.
    pub policy: Duration,
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
}

impl Pipeline {
    /// One poll; returns the alerts to deliver (firing, and resolved within the retention).
    pub fn poll(&mut self) -> anyhow::Result<PollAlerts> {
        let started = Instant::now();
        let now = unix_now();
        self.learn_names(now);
        self.learn_fingerprints(now);
        for warning in self.enricher.maintain(now) {
            warn!("{warning}");
        }
        let tally = self.enricher.take_tally();
        for (kind, n) in tally.given_up {
            self.metrics.name_parse_errors.with_label_values(&[kind.as_str()]).inc_by(n);
        }
        self.metrics.tls_ech.inc_by(tally.ech);
        self.refresh_router_addresses();
        // Map reads are blocking syscalls (milliseconds for a full map): keep them off the reactor.
        let mut stage = Instant::now();
        let mut lap = || std::mem::replace(&mut stage, Instant::now()).elapsed();
        let snap = Arc::new(tokio::task::block_in_place(|| self.maps.read())?);
        let read = lap();
        let enricher = &self.enricher;
        let retired =
            self.accounting.update(&snap, now, &self.params, &PollNamer { enricher, now });
        let one_way = self.accounting.retired_one_way();
        if one_way > 0 {
            warn!(
                retired = one_way,
                held = snap.clients.len(),
                capacity = self.params.client_slots,
                "client slots are short: retired the clients no packet ever went to (spoofed \
                 or one-packet MACs) that this poll did not see"
            );
        }
        for mac in &retired {
            info!(client = %labels::mac(mac), "client retired from the metrics until seen again");
        }
        let idle = retired.len() as u64 - one_way;
        self.metrics.clients_retired.with_label_values(&["idle"]).inc_by(idle);
        self.metrics.clients_retired.with_label_values(&["one_way"]).inc_by(one_way);
        // One pass over the flow map for all of them (retiring frees their kernel slots).
        self.maps.remove_clients(&retired)?;
        let account = lap();
        // The view first: replacing it lets the previous snapshot go before the metrics
        // families are made (a full map's list is megabytes).
        let new_view = Arc::new(self.build_view(Arc::clone(&snap), now));
        if let Ok(mut slot) = self.view.write() {
            *slot = new_view;
        }
        let view = lap();
        let enricher = &self.enricher;
        self.metrics.publish(&self.accounting, &|mac| enricher.client_labels(mac));
        self.metrics.flows_tracked.set(snap.flows.len() as i64);
        let (tracked, forgotten) = (self.accounting.tracked(), self.accounting.forgotten());
        for (i, kind) in ["remote", "destination"].into_iter().enumerate() {
            self.metrics.tracked.with_label_values(&[kind]).set(tracked[i] as i64);
            self.metrics.tracking_forgotten.with_label_values(&[kind]).inc_by(forgotten[i]);
        }
        self.metrics.clients_tracked.set(snap.clients.len() as i64);
        self.metrics.names_cached.set(self.enricher.names.len() as i64);
        let publish = lap();
        let alerts = self.evaluate_policy(&snap, now);
        let policy = lap();
        let total = started.elapsed();
        self.metrics.poll_duration.observe(total.as_secs_f64());
        self.timings = PollTimings { read, account, publish, view, policy, total };
        Ok(alerts)
    }

    /// The router's own addresses are local (never remote, a new destination or in a
    /// country); read each poll, as a delegated prefix can change at any time.
    fn refresh_router_addresses(&mut self) {
        match crate::kernel::netif::host_addresses() {
            Ok(addrs) => {
                if self.enricher.set_router_addresses(addrs) {
                    tracing::debug!("the router's own addresses changed");
                }
            }
            Err(e) => warn!("cannot list the router's own addresses: {e}"),
        }
    }

    /// Naming from a reloaded config (SIGHUP), from the next poll on; see
    /// [`Enricher::replace_sources`] for what is kept.
    pub fn replace_enrichment(&mut self, reloaded: Enricher) {
        self.enricher.replace_sources(reloaded, unix_now());
    }

    /// The alert `alerts.statuses[i]` stands for, built now (the notifier asks only for what
    /// it sends).
    pub fn alert(&self, alerts: &PollAlerts, i: usize) -> Option<Alert> {
        self.policy.alert(alerts.series.get(i)?, alerts.statuses.get(i)?)
    }

    fn evaluate_policy(&mut self, snap: &Snapshot, now: u64) -> PollAlerts {
        let started = Instant::now();
        // No rule counts flows (e.g. only new_device rules): they would be named for nothing.
        let needs_flows = self.policy.policy().needs_flows();
        let gained = || self.accounting.gained().take(if needs_flows { usize::MAX } else { 0 });
        let (clients, index) = self.policy_clients(snap, gained().map(|(key, _)| &key.client_mac));
        let mut outcome = self.policy.begin(now, &clients);
        // The flows in parts: their facts are ~140 bytes each, megabytes for a full map.
        let mut flows = gained();
        loop {
            let part: Vec<FlowFacts> = flows
                .by_ref()
                .take(FACTS_PER_PART)
                .map(|(key, g)| flow_facts(&self.enricher, &self.accounting, &index, key, g, now))
                .collect();
            if part.is_empty() {
                break;
            }
            self.policy.add_flows(&mut outcome, now, &clients, &part);
        }
        let outcome = self.policy.finish(now, outcome);
        for (rule, client) in &outcome.started {
            // Creates the series at 0 (a no-op when it exists).
            self.metrics.policy_violations.with_label_values(&[rule.as_str(), client.as_str()]);
        }
        for (rule, client) in &outcome.fired {
            self.metrics
                .policy_violations
                .with_label_values(&[rule.as_str(), client.as_str()])
                .inc();
            info!(rule = %rule, client = %client, "alert firing");
        }
        self.metrics.set_policy_alerts(&outcome.counts);
        self.metrics.policy_series.set(outcome.series as i64);
        self.metrics.policy_series_dropped.inc_by(outcome.series_dropped as u64);
        self.metrics.policy_evaluation.observe(started.elapsed().as_secs_f64());
        PollAlerts { statuses: outcome.alerts, series: outcome.alert_series }
    }

    /// The policy's clients for this poll: every client the kernel counts, and any other a
    /// gained flow belongs to; with their indices by MAC.
    fn policy_clients<'a>(
        &self,
        snap: &'a Snapshot,
        flow_clients: impl Iterator<Item = &'a [u8; 6]>,
    ) -> (Vec<ClientFacts>, FastMap<[u8; 6], usize>) {
        // Looked up once per gained flow: foldhash, not SipHash.
        let mut index: FastMap<[u8; 6], usize> = FastMap::default();
        let mut clients = Vec::new();
        for mac in snap.clients.keys().chain(flow_clients) {
            index.entry(*mac).or_insert_with(|| {
                let l = self.enricher.client_labels(mac);
                clients.push(ClientFacts {
                    mac: *mac,
                    mac_text: labels::mac(mac),
                    name: l.name,
                    group: l.group,
                    vendor: l.vendor,
                    oui_vendor: l.oui_vendor,
                    fingerprint_vendor: l.fingerprint_vendor,
                    os: l.os,
                    device_class: l.device_class,
                    tags: l.tags,
                });
                clients.len() - 1
            });
        }
        (clients, index)
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

    /// The DHCP requests captured since the last poll fingerprint their clients before they
    /// are named.
    fn learn_fingerprints(&mut self, now: u64) {
        while let Ok(frame) = self.dhcp.try_recv() {
            let outcome = match self.enricher.learn_dhcp(&frame.0, now) {
                Ok(Some(sighting)) => {
                    if let Some(inner) = sighting.other_mac {
                        tracing::debug!(
                            client = %labels::mac(&sighting.mac),
                            inside = %labels::mac(&inner),
                            "a DHCP request names another hardware address than its frame's \
                             source; fingerprinted under the source"
                        );
                    }
                    "learnt"
                }
                Ok(None) => "not_a_request",
                Err(e) => {
                    tracing::debug!("unparsable DHCP frame: {e}");
                    "malformed"
                }
            };
            self.metrics.dhcp_requests.with_label_values(&[outcome]).inc();
        }
        self.metrics.dhcp_fingerprints.set(self.enricher.fingerprints.len() as i64);
    }

    /// The API's view of this poll. Takes the snapshot's flow list as it is; per flow it only
    /// looks up indices (client, remote's network) and the flow's name, shared per poll.
    fn build_view(&self, snap: Arc<Snapshot>, now: u64) -> LiveView {
        let clock = Clock::now();
        let mut owners: Vec<Owner> = Vec::new();
        let mut owner_of: FastMap<[u8; 6], u32> = FastMap::default();
        // Per owner: its client IPs and flow count.
        let mut ips: Vec<FastSet<[u8; 16]>> = Vec::new();
        let mut flow_counts: Vec<usize> = Vec::new();
        let mut geos: Vec<GeoInfo> = vec![GeoInfo::default()];
        let mut geo_of: FastMap<[u8; 16], u32> = FastMap::default();
        // Names once each, rows index them (0: no name).
        let mut name_of: FastMap<&str, u32> = FastMap::default();
        let mut names: Vec<Box<str>> = vec!["".into()];
        let mut rows = Vec::with_capacity(snap.flows.len());
        let geo_known = self.enricher.geo.has_databases();
        let mut last_ip = None;
        for (key, _) in &snap.flows {
            let owner = *owner_of.entry(key.client_mac).or_insert_with(|| {
                let l = self.enricher.client_labels(&key.client_mac);
                owners.push(Owner { name: l.name, mac: labels::mac(&key.client_mac) });
                ips.push(FastSet::default());
                flow_counts.push(0);
                (owners.len() - 1) as u32
            });
            // The flows are sorted by client address: its flows come together.
            if last_ip != Some((owner, key.client_ip)) {
                ips[owner as usize].insert(key.client_ip);
                last_ip = Some((owner, key.client_ip));
            }
            flow_counts[owner as usize] += 1;
            // Without databases every answer is the empty one (index 0): no lookup per remote.
            let geo = if !geo_known {
                0
            } else {
                *geo_of.entry(key.remote_ip).or_insert_with(|| {
                    let info = self.enricher.geo(labels::ip(&key.remote_ip));
                    // Remotes with no answer share the empty one.
                    if info == geos[0] {
                        return 0;
                    }
                    geos.push(info);
                    (geos.len() - 1) as u32
                })
            };
            let name = self.enricher.flow_name(key, now).map_or(0, |n| {
                *name_of.entry(n).or_insert_with(|| {
                    names.push(n.into());
                    (names.len() - 1) as u32
                })
            });
            rows.push(FlowRow { owner, geo, name });
        }
        drop(name_of);
        let clients = self
            .accounting
            .clients
            .iter()
            .map(|(mac, account)| {
                let l = self.enricher.client_labels(mac);
                let owner = owner_of.get(mac).map(|&o| o as usize);
                let mut addrs: BTreeSet<String> = owner
                    .map(|o| ips[o].iter().map(|ip| labels::ip(ip).to_string()).collect())
                    .unwrap_or_default();
                addrs
                    .extend(self.enricher.inventory.lease_ips(mac).iter().map(ToString::to_string));
                ClientView {
                    client: l.name,
                    mac: labels::mac(mac),
                    group: l.group,
                    vendor: l.vendor,
                    os: l.os,
                    device_class: l.device_class,
                    source: l.source,
                    tags: l.tags,
                    ips: addrs.into_iter().collect(),
                    upload_bytes: account.totals.bytes(Direction::Upload),
                    download_bytes: account.totals.bytes(Direction::Download),
                    upload_packets: account.totals.packets(Direction::Upload),
                    download_packets: account.totals.packets(Direction::Download),
                    flows: owner.map_or(0, |o| flow_counts[o]),
                    last_seen: account.last_seen,
                }
            })
            .collect();
        LiveView::new(now, clients, snap, rows, owners, geos, names, clock.unix, clock.mono_ns)
    }
}
