//! The running agent's lifecycle: load and attach, start the event reader and the HTTP server,
//! run the [`Pipeline`] on an interval until told to stop, then save state (the programs stay
//! attached, for the next start to adopt).

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use aya::maps::RingBuf;
use sensor_common::{MAX_LAN_PREFIXES, names};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};
use tracing::{info, warn};

pub mod lan_follow;
pub mod pipeline;
mod sdnotify;
pub mod state;

use lan_follow::Follower;
use pipeline::Pipeline;

use crate::{
    accounting::Params,
    alerting::Notifier,
    config::Config,
    enrich::Enricher,
    export::{metrics::Metrics, server},
    kernel::{
        KernelError,
        addr_watch::AddressWatch,
        collector::KernelMaps,
        dhcp_socket, events,
        lan_prefixes::LanPrefixMap,
        loader::{self, LoadOptions},
        netif, offload,
    },
    policy::eval::Evaluator,
};

/// How fast a remote's activity score halves: ranks "top" remotes by the last minutes.
const SCORE_HALF_LIFE: Duration = Duration::from_secs(120);
/// Longest a new TCP flow waits for its ClientHello or HTTP request to name it.
const NAME_WAIT: Duration = Duration::from_secs(2);
/// Naming events buffered between the ring-buffer reader and the poll (the excess is dropped
/// and counted: names are a best effort, counting is not).
const EVENT_QUEUE: usize = 8192;
/// DHCP frames buffered between their capture and the poll: a few seconds of the capture's
/// rate limit.
const DHCP_QUEUE: usize = 4 * dhcp_socket::MAX_PER_SECOND as usize;

/// Longest the agent waits on shutdown for queued alerts to reach Alertmanager.
const NOTIFY_GRACE: Duration = Duration::from_secs(5);

/// Large buffers from mmap, always. glibc raises its mmap threshold once such a buffer is
/// freed and serves the next ones from the heap; the flow list of a full map is megabytes,
/// read every poll, and its freed holes then stay in the agent's RSS (7 MB of peak RSS at
/// 65,536 flows in the scale benchmark, docs/benchmarks.md). A fixed threshold keeps them out.
fn keep_large_buffers_out_of_the_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter (it takes the allocator's own lock).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

/// `config_path` is re-read on SIGHUP.
pub async fn run(config: Config, config_path: &Path) -> anyhow::Result<()> {
    keep_large_buffers_out_of_the_heap();
    let mut config = config;
    let ifindex = netif::ifindex(&config.interface)?;
    // Unset `lan_prefixes`: the interface's, followed. The watch opens before the read, so
    // that a change in between is seen.
    let (mut prefixes, watch) = if config.lan_prefixes.is_empty() {
        let watch = AddressWatch::open()?;
        let derived = lan_follow::interface_prefixes(&config.interface, MAX_LAN_PREFIXES)?;
        info!(
            interface = %config.interface,
            "lan_prefixes not set: using the interface's own prefixes, and following their changes"
        );
        (derived, Some(watch))
    } else {
        (config.lan_prefixes.clone(), None)
    };
    let shown: Vec<String> = prefixes.iter().map(ToString::to_string).collect();
    info!(prefixes = %shown.join(", "), "clients are the hosts inside these LAN prefixes");
    raise_memlock_limit();
    raise_open_files_limit(&config);

    let mut policy = config.load_policy()?;
    policy.allow_lan_resolvers(&prefixes);
    if let Some(path) = &config.policy {
        info!(policy = %path.display(), rules = policy.rules.len(), "policy loaded");
    }
    let metrics = Arc::new(Metrics::new()?);
    metrics.config_last_reload_successful.set(1);
    let (mut enricher, warnings) =
        Enricher::new(&config.inventory, &config.geoip, &config.names, config.destinations.level)?;
    for warning in &warnings {
        warn!("{warning}");
    }
    metrics.config_warnings.set(warnings.len() as i64);
    // What the running enrichment warned about: a reload logs only what is new.
    let mut warned = warnings;

    let options = LoadOptions {
        lan_prefixes: &prefixes,
        flow_capacity: config.flow_capacity,
        client_capacity: config.client_capacity,
        pin_dir: Some(&config.pin_path),
        kernel_btf: true,
    };
    let (mut ebpf, loaded) = loader::load_with_events(&options, config.events_per_second)?;
    let capacities = loaded.capacities;
    spawn_kernel_logger(&mut ebpf);
    let attachment = loader::attach_pinned(
        &mut ebpf,
        &config.interface,
        config.xdp_mode,
        config.tc_attach,
        &config.pin_path,
    )?;
    let maps = KernelMaps::take(&mut ebpf)?;
    let mut follower = match watch {
        Some(watch) => {
            let map = LanPrefixMap::take(&mut ebpf)?;
            Some(Follower::new(&config.interface, watch, map, prefixes.clone(), loaded.lan_slots))
        }
        None => None,
    };
    let ring =
        ebpf.take_map(names::EVENTS).context("events ring buffer missing from the eBPF object")?;
    let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
    let dropped = metrics.events_dropped.clone();
    let reader = events::spawn_reader(RingBuf::try_from(ring)?, events_tx, move || dropped.inc())?;
    let (dhcp_tx, dhcp_rx) = mpsc::channel(DHCP_QUEUE);
    let dhcp_reader = if config.inventory.dhcp_fingerprint {
        let requests = metrics.dhcp_requests.clone();
        let on_drop = move |why| {
            let outcome = match why {
                dhcp_socket::Dropped::RateLimited => "rate_limited",
                dhcp_socket::Dropped::QueueFull => "queue_full",
            };
            requests.with_label_values(&[outcome]).inc();
        };
        // Fingerprints are a best effort, like the other naming sources: without the socket
        // (no CAP_NET_RAW, a sandbox without AF_PACKET) the agent counts on, and says so.
        match dhcp_socket::spawn_reader(&config.interface, ifindex, dhcp_tx, on_drop) {
            Ok(reader) => Some(reader),
            Err(e) => {
                warn!("{:#}; counting goes on without device fingerprints", anyhow::Error::new(e));
                None
            }
        }
    } else {
        info!("inventory.dhcp_fingerprint is off: no device fingerprints from DHCP");
        None
    };

    metrics.lan_prefixes.set(prefixes.len() as i64);
    metrics.flows_capacity.set(capacities.flows.into());
    metrics.clients_capacity.set(capacities.clients.into());
    metrics
        .xdp_attach_mode
        .with_label_values(&[config.interface.as_str(), attachment.xdp_mode])
        .set(1);
    metrics
        .tc_attach_mode
        .with_label_values(&[config.interface.as_str(), attachment.tc_mode])
        .set(1);

    let offload = offload::detect(Path::new(offload::OPENWRT_FIREWALL));
    metrics.flow_offload.with_label_values(&["software"]).set(offload.software.into());
    metrics.flow_offload.with_label_values(&["hardware"]).set(offload.hardware.into());
    if offload.software || offload.hardware {
        warn!(
            software = offload.software,
            hardware = offload.hardware,
            seen = offload.sources.join("; "),
            "flow offloading is on: an offloaded flow's packets can bypass the interface the \
             sensor watches (hardware offload: the CPU too), and are then not counted; turn \
             off flow_offloading and flow_offloading_hw (OpenWrt: Network > Firewall) for \
             exact counts (docs/deploy.md)"
        );
    }

    let mut saved = state::load(&config.state_path)?;
    let maps_new = !(loaded.kept.flows && loaded.kept.clients);
    if maps_new && !saved.accounting.clients.is_empty() {
        info!(
            "the kernel maps are new (a reboot, the pins were removed, or another build's \
             map layout was replaced): counting goes on from the totals in {}",
            config.state_path.display()
        );
    }
    saved.accounting.kernel_maps_recreated(&loaded.kept);
    // One fingerprint per client the kernel can hold.
    enricher.fingerprints.set_capacity(capacities.clients as usize);
    enricher.fingerprints.restore(std::mem::take(&mut saved.fingerprints));
    metrics.continue_counters(std::mem::take(&mut saved.counters));
    // Violations of rules removed while the agent was stopped are not continued.
    metrics.keep_policy_rules(&rule_names(&policy));
    let mut pipeline = Pipeline {
        maps,
        accounting: saved.accounting,
        policy: Evaluator::new(
            policy,
            saved.policy,
            config.external_url(),
            config.alerting.resolved_retention,
        ),
        enricher,
        // The kernel's slots (pinned maps keep their size, whatever the config says).
        params: Params { client_slots: capacities.clients as usize, ..params(&config) },
        metrics: metrics.clone(),
        view: server::SharedView::default(),
        events: events_rx,
        dhcp: dhcp_rx,
        timings: Default::default(),
    };
    let notifier =
        Notifier::start(&config.alerting, config.poll_interval, &|c| metrics.register(c))?;
    let metrics_listener = server::Listener {
        tcp: server::bind(config.metrics_listen, "metrics_listen", "/metrics").await?,
        web: config.metrics_web.load().context("metrics_web")?,
    };
    let api_listener = server::Listener {
        tcp: server::bind(config.api_listen, "api_listen", "the JSON API").await?,
        web: config.api_web.load().context("api_web")?,
    };
    for (key, listen, web) in [
        ("metrics", config.metrics_listen, &config.metrics_web),
        ("api", config.api_listen, &config.api_web),
    ] {
        if web.has_auth() && !web.is_tls() && !listen.ip().is_loopback() {
            warn!(
                "{key}_web: passwords and tokens cross the network in clear text to {listen}: \
                 set tls_cert_file and tls_key_file too"
            );
        }
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let http = tokio::spawn(server::serve(
        metrics_listener,
        api_listener,
        metrics.clone(),
        pipeline.view.clone(),
        config.http,
        stop_rx,
    ));
    // Before READY=1: a stop right after it (systemd, a test) must reach the handler, not the
    // default action (under load the agent was killed by a SIGTERM that came in between).
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let scheme = |web: &crate::export::web::WebConfig| if web.is_tls() { "https" } else { "http" };
    info!(
        interface = %config.interface,
        xdp = attachment.xdp_mode,
        tc = attachment.tc_mode,
        pins = %config.pin_path.display(),
        "counting; metrics at {}://{}/metrics, clients at {}://{}/api/v1/clients",
        scheme(&config.metrics_web),
        config.metrics_listen,
        scheme(&config.api_web),
        config.api_listen,
    );
    sdnotify::ready(&format!(
        "counting on {}, metrics at {}, API at {}",
        config.interface, config.metrics_listen, config.api_listen
    ));

    let mut ticker = tokio::time::interval(config.poll_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first poll saves at once: scrapes see counters from the start, not after an interval.
    let mut last_save: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                match pipeline.poll() {
                    Ok(alerts) => notifier.update(SystemTime::now(), &alerts.statuses, &|i| pipeline.alert(&alerts, i)),
                    Err(e) => warn!("poll failed: {e:#}"),
                }
                // Scrapes see a poll's counters once they are on disk: no restart, crash or
                // reboot can then continue from below what was exported.
                if last_save.is_none_or(|t| t.elapsed() >= config.state_save_interval) {
                    save_state(&config, &pipeline, &metrics);
                    last_save = Some(Instant::now());
                }
            }
            settled = lan_prefixes_settled(&mut follower) => {
                let applied = settled.and_then(|()| match &mut follower {
                    Some(f) => f.apply(),
                    None => Ok(None),
                });
                match applied {
                    Ok(Some(change)) => {
                        metrics.lan_prefix_changes.inc();
                        metrics.lan_prefixes.set(change.new.len() as i64);
                        pipeline.policy.set_lan_prefixes(&change.new);
                        prefixes = change.new;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        warn!(
                            "following the LAN prefixes failed; they stay {} until a restart: {:#}",
                            lan_follow::shown(&prefixes),
                            anyhow::Error::from(e)
                        );
                        follower = None;
                    }
                }
            }
            _ = sighup.recv() => {
                match reload(config_path, &config, &prefixes, &mut pipeline, &notifier, &warned) {
                    Ok((new, warnings)) => {
                        config = new;
                        metrics.config_last_reload_successful.set(1);
                        metrics.config_warnings.set(warnings.len() as i64);
                        warned = warnings;
                    }
                    Err(e) => {
                        metrics.config_last_reload_successful.set(0);
                        metrics.config_reload_failures.inc();
                        warn!("SIGHUP: new configuration refused, the running one stays active:\n{e}");
                    }
                }
            }
            _ = sigterm.recv() => { info!("SIGTERM: stopping"); break; }
            _ = sigint.recv() => { info!("SIGINT: stopping"); break; }
        }
    }

    sdnotify::stopping("saving state; the programs stay attached");
    // A last poll so that the state file holds everything counted up to now.
    match pipeline.poll() {
        Ok(alerts) => {
            notifier.update(SystemTime::now(), &alerts.statuses, &|i| pipeline.alert(&alerts, i))
        }
        Err(e) => warn!("final poll failed: {e:#}"),
    }
    save_state(&config, &pipeline, &metrics);
    notifier.shutdown(NOTIFY_GRACE).await;
    let _ = stop_tx.send(true);
    // The server stops on `stop_tx`; an error it ended with earlier is said here at least.
    match http.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!("the HTTP server had failed: {e:#}"),
        Err(e) => warn!("the HTTP server task ended abnormally: {e}"),
    }
    reader.abort();
    if let Some(dhcp_reader) = dhcp_reader {
        dhcp_reader.abort();
    }
    drop(pipeline);
    drop(ebpf);
    info!(
        "stopped: programs stay attached to {} and keep counting into the pinned maps until the \
         next start adopts them (`sensor detach` removes them); counters kept in {} and {}",
        config.interface,
        config.pin_path.display(),
        config.state_path.display()
    );
    Ok(())
}

/// The next settled change of the interface's addresses; never, when the prefixes are the
/// config's.
async fn lan_prefixes_settled(follower: &mut Option<Follower>) -> Result<(), KernelError> {
    match follower {
        Some(f) => f.settled().await,
        None => std::future::pending().await,
    }
}

/// The accounting knobs of a config.
pub fn params(config: &Config) -> Params {
    Params {
        top_remotes: config.top_remotes,
        top_destinations: config.destinations.top_per_client,
        series_budget: config.series_budget,
        remote_idle_expiry_secs: config.remote_idle_expiry.as_secs().max(1),
        destination_idle_expiry_secs: config.destinations.idle_expiry.as_secs().max(1),
        client_idle_expiry_secs: config.client_idle_expiry.as_secs().max(1),
        tracked_per_client: config.tracking.per_client,
        tracked_total: config.tracking.total,
        client_slots: 0,
        score_half_life_secs: SCORE_HALF_LIFE.as_secs_f64(),
        name_wait_secs: NAME_WAIT.as_secs(),
    }
}

/// Re-reads the config and the policy (SIGHUP). Applies what can change while running:
/// the policy, naming of clients, series limits and expiries. Keys that shape the kernel side
/// (interface, capacities, pins) need a restart; a change there is logged, not applied.
/// Returns the config in effect and the enrichment's warnings, of which only those not in
/// `warned` (the running enrichment's) are logged.
fn reload(
    path: &Path,
    running: &Config,
    lan_prefixes: &[ipnet::IpNet],
    pipeline: &mut Pipeline,
    notifier: &Notifier,
    warned: &[String],
) -> anyhow::Result<(Config, Vec<String>)> {
    let new = Config::load(path)?;
    let mut policy = new.load_policy()?;
    policy.allow_lan_resolvers(lan_prefixes);
    let (enricher, warnings) =
        Enricher::new(&new.inventory, &new.geoip, &new.names, new.destinations.level)?;
    for warning in unlogged(warned, &warnings) {
        warn!("{warning}");
    }
    let restart_only = [
        ("interface", new.interface != running.interface),
        ("lan_prefixes", new.lan_prefixes != running.lan_prefixes),
        ("flow_capacity", new.flow_capacity != running.flow_capacity),
        ("client_capacity", new.client_capacity != running.client_capacity),
        ("pin_path", new.pin_path != running.pin_path),
        ("state_path", new.state_path != running.state_path),
        ("metrics_listen", new.metrics_listen != running.metrics_listen),
        ("http", new.http != running.http),
        ("api_listen", new.api_listen != running.api_listen),
        ("metrics_web", new.metrics_web != running.metrics_web),
        ("api_web", new.api_web != running.api_web),
        ("xdp_mode", new.xdp_mode != running.xdp_mode),
        ("tc_attach", new.tc_attach != running.tc_attach),
        ("poll_interval", new.poll_interval != running.poll_interval),
        ("events_per_second", new.events_per_second != running.events_per_second),
        (
            "inventory.dhcp_fingerprint",
            new.inventory.dhcp_fingerprint != running.inventory.dhcp_fingerprint,
        ),
    ];
    for (key, changed) in restart_only {
        if changed {
            warn!(key, "SIGHUP: `{key}` changed; it takes effect at the next restart");
        }
    }
    pipeline.replace_enrichment(enricher);
    pipeline.params = Params { client_slots: pipeline.params.client_slots, ..params(&new) };
    notifier.reconfigure(&new.alerting, running.poll_interval)?;
    pipeline.metrics.keep_policy_rules(&rule_names(&policy));
    // The API keeps its running address until a restart: links lead there meanwhile.
    let external_url = new.external_url.clone().unwrap_or_else(|| running.api_base_url());
    pipeline.policy.replace(policy, external_url, new.alerting.resolved_retention);
    info!(
        rules = pipeline.policy.policy().rules.len(),
        "SIGHUP: configuration and policy reloaded"
    );
    let mut applied = new;
    // Keep the running values of what only a restart changes, so that the next reload
    // compares against what is really in effect.
    applied.interface = running.interface.clone();
    applied.lan_prefixes = running.lan_prefixes.clone();
    applied.flow_capacity = running.flow_capacity;
    applied.client_capacity = running.client_capacity;
    applied.pin_path = running.pin_path.clone();
    applied.state_path = running.state_path.clone();
    applied.metrics_listen = running.metrics_listen;
    applied.http = running.http;
    applied.api_listen = running.api_listen;
    applied.metrics_web = running.metrics_web.clone();
    applied.api_web = running.api_web.clone();
    applied.xdp_mode = running.xdp_mode;
    applied.tc_attach = running.tc_attach;
    applied.poll_interval = running.poll_interval;
    applied.events_per_second = running.events_per_second;
    applied.inventory.dhcp_fingerprint = running.inventory.dhcp_fingerprint;
    Ok((applied, warnings))
}

fn rule_names(policy: &crate::policy::Policy) -> Vec<&str> {
    policy.rules.iter().map(|r| r.name.as_str()).collect()
}

/// The warnings of a reload that the running enrichment did not already give (`warned`): a
/// SIGHUP that changes nothing repeats none of them (a missing GeoIP database is said once,
/// not at every reload); one that appears, or comes back after it was fixed, is logged.
fn unlogged<'a>(warned: &[String], warnings: &'a [String]) -> Vec<&'a String> {
    warnings.iter().filter(|w| !warned.contains(w)).collect()
}

/// Saves the state; once saved, scrapes see its counters.
fn save_state(config: &Config, pipeline: &Pipeline, metrics: &Metrics) {
    let counters = metrics.counters();
    let fingerprints = pipeline.enricher.fingerprints.saved();
    let saved = state::save(
        &config.state_path,
        &pipeline.accounting,
        pipeline.policy.state(),
        &counters,
        &fingerprints,
    );
    match saved {
        Ok(()) => {
            metrics.state_save_failures.set(0);
            metrics.release(&counters);
        }
        Err(e) => {
            metrics.state_save_failures.inc();
            warn!(
                "saving state failed; exported traffic counters stay where they were until a \
                 save works again: {e:#}"
            );
        }
    }
}

/// File descriptors the agent needs besides HTTP connections: maps, programs, the state file,
/// lease files, databases, Alertmanager connections.
const FD_RESERVE: u64 = 256;

/// Raises the soft open-files limit to the hard one (systemd's LimitNOFILE sets both), and
/// says so when it is still too low for `http.max_connections` plus the agent's own needs.
fn raise_open_files_limit(config: &Config) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    let needed = config.http.max_connections as u64 + FD_RESERVE;
    if limit.rlim_cur < needed {
        warn!(
            limit = limit.rlim_cur,
            needed,
            "the open-files limit is below http.max_connections + {FD_RESERVE}: raise LimitNOFILE \
             or lower http.max_connections"
        );
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; routers often run those.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        let old_kernel = aya::util::KernelVersion::current()
            .is_ok_and(|v| v < aya::util::KernelVersion::new(5, 11, 0));
        if old_kernel {
            warn!(
                "could not raise RLIMIT_MEMLOCK: map creation may fail on this kernel (before 5.11)"
            );
        }
    }
}

/// Forwards aya-log records from the kernel programs (rare diagnostics) into our logs.
fn spawn_kernel_logger(ebpf: &mut aya::Ebpf) {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => logger,
        Err(e) => {
            warn!("kernel-side diagnostics unavailable: {e}");
            return;
        }
    };
    // SAFETY: the logger owns its ring-buffer fd and keeps it open for as long as it lives,
    // and the AsyncFd owns the logger.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            warn!("kernel-side diagnostics unavailable: {e}");
            return;
        }
    };
    tokio::spawn(async move {
        while let Ok(mut guard) = fd.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The warnings `Enricher::new` gives for missing GeoIP databases are the same at start
    /// and at a SIGHUP that changed nothing: that SIGHUP logs none of them. One that is new
    /// (a database named since, and missing) is logged alone.
    #[test]
    fn a_reload_that_changes_nothing_repeats_no_warning() {
        use crate::enrich::geo::GeoConfig;
        let dir = tempfile::tempdir().unwrap();
        let config = Config::parse("interface: br-lan\n", Path::new("sensor.yaml")).unwrap();
        let open = |geoip: &GeoConfig| {
            Enricher::new(&config.inventory, geoip, &config.names, config.destinations.level)
                .map(|(_, warnings)| warnings)
                .unwrap()
        };
        let both = GeoConfig {
            country_database: Some(dir.path().join("country.mmdb")),
            asn_database: Some(dir.path().join("asn.mmdb")),
        };
        let at_start = open(&both);
        assert!(at_start.iter().any(|w| w.contains("country.mmdb not found")), "{at_start:?}");
        assert!(at_start.iter().any(|w| w.contains("asn.mmdb not found")), "{at_start:?}");
        let at_reload = open(&both);
        assert_eq!(unlogged(&at_start, &at_reload), Vec::<&String>::new());

        let country_only = GeoConfig { asn_database: None, ..both.clone() };
        let running = open(&country_only);
        let fresh = unlogged(&running, &at_reload);
        assert_eq!(fresh.len(), 1, "{fresh:?}");
        assert!(fresh[0].contains("asn.mmdb not found"), "{fresh:?}");
    }
}
