//! `cargo xtask demo`: the real agent (release build) on the router of a home network built
//! from namespaces, with the example config and policy, a lab "internet" that the lab's DNS
//! and a demo GeoIP/ASN database attribute, and a real Prometheus and Alertmanager. It plays
//! the story on a timeline (routine update checks, a bulk photo upload with cloud sync off
//! that fires the alert, its resolution), prints the per-device summary and the URLs, and
//! runs until Ctrl-C. `--replay-once` plays the story, runs every dashboard panel query
//! against the demo's Prometheus, and exits non-zero if anything expected did not happen.
//!
//! - `home`: devices, servers, GeoIP, DNS, the config and policy derived from deploy/.
//! - `traffic`: the lab's HTTP servers, the devices' requests, the background traffic.
//! - `monitoring`: Prometheus's config and the host forwarders.
//! - `story`: the timeline and the alerts as Alertmanager shows them.
//! - `summary`: the per-device table from the agent's API.
//! - `dashboards`: the panel queries of grafana/dashboards/*.json.
//!
//! The agent, Prometheus, Alertmanager and the dashboard reader are lab's, as the tests use them.

mod dashboards;
mod home;
mod monitoring;
mod story;
mod summary;
mod traffic;

use std::{
    net::SocketAddr,
    path::Path,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use lab::{
    Agent,
    agent::Launch,
    alertmanager::{Alertmanager, Setup},
    dashboards::{Outcome, Range},
    prometheus::Prometheus,
    services,
};

use crate::process::{output, workspace_root};
use home::{ALERTMANAGER_PORT, API, DEVICES, METRICS, POLL as DEMO_POLL, PROMETHEUS, SERVERS};
use story::{Ctx, Interrupted, Story, Timeline};

#[derive(clap::Args)]
pub struct DemoOpts {
    /// Play the story once and exit: 0 only if every expected alert fired and resolved, no
    /// other alert fired, and every dashboard panel query returned data (the tests use it).
    #[arg(long)]
    pub replay_once: bool,
}

fn section(title: &str) {
    println!("\n── {title} {}", "─".repeat(78usize.saturating_sub(title.chars().count())));
}

pub fn run(opts: DemoOpts) -> Result<()> {
    lab::check_privileged().context(
        "the demo needs root (it builds network namespaces and loads eBPF): run it with sudo",
    )?;
    lab::ensure_bpffs()?;
    let stop = lab::interrupt_flag()?;
    let root = workspace_root();
    let binary = root.join("target/release/sensor");
    if !binary.exists() {
        bail!("{} is missing: build it with `cargo xtask build --release`", binary.display());
    }
    let policy = home::demo_policy(&root.join("deploy/policy.yaml"))?;

    println!(
        "[demo] building the home network: namespaces, br-lan, the router, the lab's internet…"
    );
    let pins = lab::PinDir::new("demo", "agent");
    let topo = home::build_network()?;
    let (gw, inet) = (topo.gateway.ns.clone(), topo.internet.ns.clone());
    let dir = topo.lab.dir().to_path_buf();

    // The router's DNS, the internet's servers, and the monitoring.
    services::start_dnsmasq(&topo.lab, &gw, &["10.77.1.1".parse()?], &home::dns_records(), 600)?;
    let geoip = home::write_geoip(&dir)?;
    let mut background = traffic::Background::new(Arc::new(AtomicBool::new(false)));
    for s in SERVERS {
        background.serve_http(&inet, s.v4(80))?;
        if let Some(v6) = s.v6(80) {
            background.serve_http(&inet, v6)?;
        }
    }
    let am = Alertmanager::start(&topo.lab, Some(&gw), Setup::new("demo", ALERTMANAGER_PORT))?;
    let am_addr = SocketAddr::from(([127, 0, 0, 1], ALERTMANAGER_PORT));
    let metrics: SocketAddr = METRICS.parse()?;
    let metrics_fwd = monitoring::forward(metrics, &gw, metrics)?;
    let api: SocketAddr = API.parse()?;
    let api_fwd = monitoring::forward(api, &gw, api)?;
    let am_fwd = monitoring::forward(am_addr, &gw, am_addr)?;
    // Alert links lead to the API's flows of the device.
    let external_url = format!("http://{}", api_fwd.local_addr());

    // The agent, with the example config and policy adapted to the lab.
    std::fs::write(dir.join("policy.yaml"), &policy.yaml)?;
    let (config_text, changes) = home::demo_config(
        &root.join("deploy/sensor.yaml"),
        &home::ConfigInputs {
            lan_if: &topo.gateway.lan_if,
            pin_path: pins.path(),
            state_path: &dir.join("state.json"),
            geoip: &geoip,
            alertmanager: &format!("http://{am_addr}"),
            external_url: &external_url,
        },
    )?;
    let config = dir.join("sensor.yaml");
    std::fs::write(&config, &config_text)?;
    let checked = output(Command::new(&binary).arg("check-config").arg(&config))?;
    // Own process group: the terminal's Ctrl-C goes to the demo, which stops the agent itself
    // (and the agent saves its state on the way out).
    let launch = Launch::new(&binary).own_process_group();
    let agent = Agent::start_yaml(&topo.lab, &gw, launch, &config_text, metrics, api, DEMO_POLL)?;
    // The story and the clean-up hold the process; `agent` (which borrows the lab) reads it.
    let agent_process = agent.process().clone();

    let rules = monitoring::rule_files(&root.join("deploy/prometheus"))?;
    let prometheus: SocketAddr = PROMETHEUS.parse()?;
    let prom = monitoring::start_prometheus(
        &topo.lab,
        &gw,
        prometheus,
        METRICS,
        &am_addr.to_string(),
        &rules,
    )?;
    prom.wait_scraping(monitoring::JOB, Duration::from_secs(30))
        .map_err(|e| anyhow::anyhow!("{e:#}\nPrometheus's log:\n{}", prom.log()))?;
    let prom_fwd = monitoring::forward(prometheus, &gw, prometheus)?;

    print_setting(&topo, &policy, &changes, checked.trim(), &rules);
    let urls = Urls {
        metrics: format!("http://{}/metrics", metrics_fwd.local_addr()),
        api: external_url.clone(),
        prometheus: format!("http://{}", prom_fwd.local_addr()),
        alertmanager: format!("http://{}", am_fwd.local_addr()),
    };

    section("The story");
    let story_start = story::unix_now();
    let mut story = Story::new(
        Ctx {
            topo: &topo,
            agent: &agent_process,
            am: &am,
            prom: &prom,
            policy: &policy,
            stop: stop.clone(),
        },
        Timeline::new(),
    );
    // --replay-once: the dashboards' queries run while the alert fires.
    let dashboards_dir = lab::dashboards::dashboards_dir();
    let mut dashboard_outcomes: Option<Vec<Outcome>> = None;
    let mut while_firing = |tl: &mut Timeline| -> Result<()> {
        if !opts.replay_once {
            return Ok(());
        }
        let range = Range::ending_at(story_start, story::unix_now(), 2.0, 1.0);
        let outcomes = dashboards::run(&dashboards_dir, &prom, &range)?;
        let with_data = outcomes.iter().filter(|o| o.ok()).count();
        let what = format!(
            "{} panel queries run against Prometheus while the alert fires: {with_data} with data",
            outcomes.len()
        );
        tl.say("Grafana dashboards", &what);
        dashboard_outcomes = Some(outcomes);
        Ok(())
    };
    match story.play(&mut background, &mut while_firing) {
        Ok(()) => {}
        Err(e) if e.is::<Interrupted>() => {
            println!("\n[demo] interrupted: cleaning up");
            drop(background);
            finish(topo, pins, &agent_process)?;
            return if opts.replay_once { Err(e) } else { Ok(()) };
        }
        Err(e) => {
            print_logs(&agent, &prom, &am);
            return Err(e);
        }
    }
    let mut problems = story.verdict();

    section("Per device (agent API: /api/v1/clients, /api/v1/flows)");
    let clients = agent.api_json("/api/v1/clients")?;
    let flows = agent.api_json("/api/v1/flows")?;
    print!("{}", summary::render(&clients, &flows, 3)?);
    urls.print(&dir);

    if opts.replay_once {
        let (queries, dashboard_problems) =
            dashboards::print(&dashboards_dir, dashboard_outcomes.as_deref());
        problems.extend(dashboard_problems);
        section("Verdict");
        for (title, fired, gone) in story.alerts() {
            let gone = gone.map_or("never".to_string(), |g| format!("at {}", mmss(g)));
            println!("  alert {title}: fired at {}, resolved {gone}", mmss(fired));
        }
        drop(background);
        let cleaned = finish(topo, pins, &agent_process);
        if !problems.is_empty() {
            bail!("the demo replay failed:\n  - {}", problems.join("\n  - "));
        }
        cleaned?;
        println!(
            "[demo] replay: every expected alert fired and resolved; all {queries} dashboard queries returned data"
        );
        return Ok(());
    }

    for p in &problems {
        println!("[demo] warning: {p}");
    }
    println!("\n[demo] running until Ctrl-C (the TV keeps streaming, the laptop keeps browsing)…");
    let mut outcome = Ok(());
    while !stop.load(Ordering::SeqCst) {
        if let Some(status) = agent.process().try_wait()? {
            outcome = Err(agent.with_log(anyhow::anyhow!("the agent exited ({status})")));
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("\n[demo] stopping: traffic, agent, Prometheus, Alertmanager, namespaces…");
    drop(background);
    drop((metrics_fwd, api_fwd, am_fwd, prom_fwd));
    let cleaned = finish(topo, pins, &agent_process);
    outcome.and(cleaned)
}

fn mmss(d: Duration) -> String {
    format!("{:02}:{:02}", d.as_secs() / 60, d.as_secs() % 60)
}

fn print_setting(
    topo: &lab::Topology,
    policy: &home::DemoPolicy,
    changes: &[String],
    checked: &str,
    rules: &[std::path::PathBuf],
) {
    section("The household (LAN br-lan on the router, named by the inventory)");
    for d in DEVICES {
        let c = topo.client(d.name);
        println!(
            "  {:<16} {:<14} {}  group {:<8} {} {}",
            d.name,
            d.what,
            c.mac_text(),
            d.group,
            c.ipv4,
            c.ipv6
        );
    }
    section("The internet (lab DNS records, demo GeoIP/ASN database)");
    for s in SERVERS {
        let (country, asn, org) = s.geo();
        let addrs = std::iter::once(s.ipv4).chain(s.ipv6).collect::<Vec<_>>().join(" ");
        println!("  {:<27} {:<22} {country} AS{asn} {org:<38} {}", s.name, addrs, s.role);
    }
    section("The router: deploy/sensor.yaml and deploy/policy.yaml");
    println!("  sensor check-config: {}", checked.replace('\n', "; "));
    println!("  config changed for the lab: {}", changes.join(", "));
    println!(
        "  policy: as in deploy/policy.yaml, but {}'s window shortened from {} to {} for the demo",
        home::RULE,
        policy.window_was,
        policy.window
    );
    println!(
        "  the rule: phones with a xiaomi* vendor, to xiaomi.net, xiaomi.com, micloud.com, mi.com, miui.com or any address in CN,"
    );
    println!(
        "            more than {} uploaded within {} → critical alert",
        policy.threshold_text, policy.window
    );
    match rules {
        [] => println!(
            "  Prometheus: scrapes the agent every second (no rule files in deploy/prometheus/)"
        ),
        r => println!(
            "  Prometheus: scrapes the agent every second, with the rules in {}",
            r.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ),
    }
}

struct Urls {
    metrics: String,
    api: String,
    prometheus: String,
    alertmanager: String,
}

impl Urls {
    fn print(&self, dir: &Path) {
        section("Where to look");
        println!("  /metrics      {}", self.metrics);
        println!(
            "  agent API     {}/api/v1/clients   (or: sensor clients --api {})",
            self.api, self.api
        );
        println!(
            "  Prometheus    {}   e.g. sum by (client) (rate(gwsensor_client_bytes_total[1m]))",
            self.prometheus
        );
        println!("  Alertmanager  {}", self.alertmanager);
        println!(
            "  lab files     {}   (config, policy, logs; kept after the demo with LAB_KEEP_LOGS=1)",
            dir.display()
        );
    }
}

fn print_logs(agent: &Agent, prom: &Prometheus, am: &Alertmanager) {
    for (name, log) in
        [("agent", agent.process().log()), ("Prometheus", prom.log()), ("Alertmanager", am.log())]
    {
        eprintln!("===== {name} (last 40 lines) =====\n{}", lab::tail(&log, 40));
    }
}

/// Stops the agent (it saves its state), removes the namespaces and the pinned maps, and
/// checks that nothing is left behind.
fn finish(topo: lab::Topology, pins: lab::PinDir, agent: &lab::Process) -> Result<()> {
    let stopped = agent.terminate(Duration::from_secs(10)).map(drop);
    let names = topo.lab.namespaces();
    let pin_path = pins.path().to_path_buf();
    drop(topo);
    drop(pins);
    let left = lab::ip(&["netns", "list"]).unwrap_or_default();
    let leaked: Vec<&String> = names
        .iter()
        .filter(|n| left.lines().any(|l| l.split_whitespace().next() == Some(n.as_str())))
        .collect();
    if !leaked.is_empty() {
        bail!("namespaces left behind: {leaked:?} (remove them with `ip netns del NAME`)");
    }
    if pin_path.exists() {
        bail!("pinned maps left behind in {}", pin_path.display());
    }
    println!("[demo] cleaned up: {} namespaces and the pinned maps removed", names.len());
    stopped
}
