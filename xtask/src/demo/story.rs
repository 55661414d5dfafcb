//! The story, played on a timeline: routine update checks raise nothing, a bulk photo upload
//! with cloud sync "off" fires the example policy's alert (shown as Alertmanager has it), and
//! the alert resolves once the upload has left the rule's window. Every alert Alertmanager
//! holds is recorded along the way, so the verdict knows whether the expected one fired and
//! resolved and nothing else fired.

use std::{
    collections::BTreeMap,
    io::{IsTerminal as _, Write as _},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use lab::{Process, Topology, alertmanager::Alertmanager, prometheus::Prometheus, services};
use serde_json::Value;

use super::{
    home::{self, DemoPolicy, PHONE, RULE},
    summary::human,
    traffic::{self, Background, Upload},
};

/// Ctrl-C during the story.
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// Timestamped lines (`[mm:ss] who: what`) and, on a terminal, one progress line that the
/// next line replaces; without a terminal, progress is printed now and then.
pub struct Timeline {
    start: Instant,
    tty: bool,
    progress_open: bool,
    last_progress: Option<Instant>,
}

impl Timeline {
    pub fn new() -> Timeline {
        Timeline {
            start: Instant::now(),
            tty: std::io::stdout().is_terminal(),
            progress_open: false,
            last_progress: None,
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    pub fn stamp(&self) -> String {
        let s = self.start.elapsed().as_secs();
        format!("[{:02}:{:02}]", s / 60, s % 60)
    }

    fn close_progress(&mut self) {
        if self.progress_open {
            print!("\r\x1b[2K");
            self.progress_open = false;
        }
        self.last_progress = None;
    }

    pub fn say(&mut self, who: &str, what: &str) {
        self.close_progress();
        println!("{} {who}: {what}", self.stamp());
    }

    /// An indented continuation line.
    pub fn detail(&mut self, what: &str) {
        self.close_progress();
        println!("          {what}");
    }

    pub fn progress(&mut self, what: &str) {
        if self.tty {
            print!("\r\x1b[2K          {} {what}", self.stamp());
            let _ = std::io::stdout().flush();
            self.progress_open = true;
        } else if self.last_progress.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
            println!("          {} {what}", self.stamp());
            self.last_progress = Some(Instant::now());
        }
    }
}

/// An alert as Alertmanager had it, and when the story saw it come and go.
pub struct Seen {
    pub alert: Value,
    pub labels: BTreeMap<String, String>,
    pub first: Duration,
    pub gone: Option<Duration>,
    pub gone_at: Option<SystemTime>,
}

impl Seen {
    fn ends_at(&self) -> Option<SystemTime> {
        self.alert["endsAt"].as_str().and_then(|s| humantime::parse_rfc3339_weak(s).ok())
    }

    /// `alertname for client → destination`, with the parts the alert has.
    fn title(&self) -> String {
        let mut t = self.labels.get("alertname").cloned().unwrap_or_else(|| "?".into());
        if let Some(c) = self.labels.get("client") {
            t.push_str(&format!(" for {c}"));
        }
        if let Some(d) = self.labels.get("destination") {
            t.push_str(&format!(" → {d}"));
        }
        t
    }
}

/// What the story needs of the running lab.
pub struct Ctx<'a> {
    pub topo: &'a Topology,
    pub agent: &'a Process,
    pub am: &'a Alertmanager,
    pub prom: &'a Prometheus,
    pub policy: &'a DemoPolicy,
    pub stop: Arc<AtomicBool>,
}

pub struct Story<'a> {
    ctx: Ctx<'a>,
    pub tl: Timeline,
    /// Every alert Alertmanager showed, by fingerprint.
    seen: BTreeMap<String, Seen>,
    am_errors: u32,
    /// What went against the script; empty for a good run.
    pub problems: Vec<String>,
}

const TICK: Duration = Duration::from_millis(250);
/// The phone's photo upload rate (a home uplink).
const UPLOAD_RATE: u64 = 1_000_000;

impl<'a> Story<'a> {
    pub fn new(ctx: Ctx<'a>, tl: Timeline) -> Story<'a> {
        Story { ctx, tl, seen: BTreeMap::new(), am_errors: 0, problems: Vec::new() }
    }

    /// One look at the world: Ctrl-C, the agent still alive, Alertmanager's alerts (new ones
    /// and ones gone since the last look are printed at once).
    fn tick(&mut self) -> Result<()> {
        if self.ctx.stop.load(Ordering::SeqCst) {
            return Err(Interrupted.into());
        }
        if let Some(status) = self.ctx.agent.try_wait()? {
            bail!("the agent exited ({status}); its log:\n{}", self.ctx.agent.log());
        }
        let alerts = match self.ctx.am.alerts() {
            Ok(a) => a,
            Err(e) => {
                self.am_errors += 1;
                if self.am_errors == 20 {
                    self.problems.push(format!("Alertmanager's API keeps failing: {e:#}"));
                }
                return Ok(());
            }
        };
        let now = self.tl.elapsed();
        let mut present = Vec::new();
        for a in alerts {
            let fp = a["fingerprint"].as_str().unwrap_or_default().to_string();
            present.push(fp.clone());
            match self.seen.get_mut(&fp) {
                Some(s) => s.alert = a,
                None => {
                    let labels = a["labels"]
                        .as_object()
                        .map(|o| {
                            o.iter()
                                .map(|(k, v)| {
                                    (k.clone(), v.as_str().unwrap_or_default().to_string())
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    let s = Seen { alert: a, labels, first: now, gone: None, gone_at: None };
                    self.print_fired(&s);
                    self.seen.insert(fp, s);
                }
            }
        }
        let mut gone = Vec::new();
        for (fp, s) in self.seen.iter_mut() {
            if s.gone.is_none() && !present.contains(fp) {
                s.gone = Some(now);
                s.gone_at = Some(SystemTime::now());
                gone.push(fp.clone());
            }
        }
        for fp in gone {
            let s = &self.seen[&fp];
            let (title, lasted) = (s.title(), now.saturating_sub(s.first));
            let ends = s.ends_at().and_then(|e| e.duration_since(SystemTime::now()).ok());
            self.tl.say(
                "Alertmanager",
                &format!("✔ RESOLVED  {title}  (active for {:.0} s)", lasted.as_secs_f64()),
            );
            if let Some(left) = ends {
                self.tl.detail(&format!(
                    "resolved by the sensor's notification, not by Alertmanager's timeout (its endsAt was {:.0} s away)",
                    left.as_secs_f64()
                ));
            }
        }
        Ok(())
    }

    fn print_fired(&mut self, s: &Seen) {
        let a = &s.alert;
        let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        self.tl.say(
            "Alertmanager",
            &format!(
                "▶ FIRING  {}  ({})",
                s.title(),
                s.labels.get("severity").map_or("", String::as_str)
            ),
        );
        self.tl.detail(&format!("labels       {}", labels.join(" ")));
        for key in ["summary", "description"] {
            if let Some(v) = a["annotations"][key].as_str() {
                self.tl.detail(&format!("{key:<12} {v}"));
            }
        }
        self.tl.detail(&format!(
            "startsAt     {}   endsAt {}   state {}",
            a["startsAt"].as_str().unwrap_or("?"),
            a["endsAt"].as_str().unwrap_or("?"),
            a["status"]["state"].as_str().unwrap_or("?")
        ));
        if let Some(url) = a["generatorURL"].as_str() {
            self.tl.detail(&format!("generatorURL {url}"));
        }
    }

    /// Waits `d`, looking at the world every tick.
    fn pause(&mut self, d: Duration) -> Result<()> {
        let until = Instant::now() + d;
        while Instant::now() < until {
            self.tick()?;
            std::thread::sleep(TICK.min(until.saturating_duration_since(Instant::now())));
        }
        Ok(())
    }

    /// Waits up to `timeout` for `done`, showing `progress(elapsed)` meanwhile; false on timeout.
    fn wait_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&Self) -> bool,
        progress: impl Fn(Duration) -> String,
    ) -> Result<bool> {
        let since = Instant::now();
        loop {
            self.tick()?;
            if done(self) {
                return Ok(true);
            }
            if since.elapsed() > timeout {
                return Ok(false);
            }
            let line = progress(since.elapsed());
            self.tl.progress(&line);
            std::thread::sleep(TICK);
        }
    }

    fn expected(&self) -> Vec<(String, String)> {
        let mac = lab::mac_text(&PHONE.mac);
        [
            ("alertname", RULE),
            ("client", PHONE.name),
            // The rule sums the maker's domains and China per phone (`group_by: client`).
            ("mac", mac.as_str()),
            ("severity", "critical"),
            ("story", "cloud-sync-off"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn is_expected(&self, s: &Seen) -> bool {
        let labels: Vec<(String, String)> =
            s.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        labels == self.expected()
    }

    /// Plays the story; the background traffic (TV, laptop) starts on `background`.
    /// `while_firing` runs once the alert fires and Prometheus has scraped it firing (the
    /// dashboards are looked at then, as a person would during the incident).
    pub fn play(
        &mut self,
        background: &mut Background,
        while_firing: &mut dyn FnMut(&mut Timeline) -> Result<()>,
    ) -> Result<()> {
        let topo = self.ctx.topo;
        let (phone, laptop, tv) =
            (topo.client(PHONE.name), topo.client(home::LAPTOP.name), topo.client(home::TV.name));
        let dns = home::DNS_SERVER.parse()?;
        let inet = topo.internet.ns.clone();
        let policy = self.ctx.policy;

        // Background: the TV streams over IPv6, the laptop browses; both all demo long.
        let cdn = &home::VIDEO_CDN;
        let answer = services::dns_query(&tv.ns, dns, cdn.name, services::DNS_AAAA)?;
        let cdn_addr = answer
            .addrs
            .first()
            .map(|(a, _)| *a)
            .with_context(|| format!("the lab's DNS has no AAAA for {}", cdn.name))?;
        background.stream(
            &inet,
            std::net::SocketAddr::new(cdn_addr, 443),
            &tv.ns,
            std::net::SocketAddr::new(tv.ipv6.into(), 50000),
            30,
        )?;
        self.tl.say(
            tv.name.as_str(),
            &format!(
                "streams video from {} ([{cdn_addr}]:443, {} AS{}): ~360 kB/s down, all demo long (the policy's exceptions allow media streaming)",
                cdn.name,
                cdn.geo().0,
                cdn.geo().1
            ),
        );
        let web = &home::WEB;
        let answer = services::dns_query(&laptop.ns, dns, web.name, services::DNS_AAAA)?;
        let web_addr = answer
            .addrs
            .first()
            .map(|(a, _)| *a)
            .with_context(|| format!("the lab's DNS has no AAAA for {}", web.name))?;
        background.browse(
            &laptop.ns,
            std::net::SocketAddr::new(web_addr, 80),
            web.name,
            300_000,
            Duration::from_secs(4),
        );
        self.tl.say(
            laptop.name.as_str(),
            &format!("browses {} ([{web_addr}]:80): 300 kB pages every 4 s", web.name),
        );

        // Routine: update checks, small and mostly downloads.
        let upd = &home::UPDATE;
        let (country, asn, _) = upd.geo();
        for _ in 0..3 {
            self.pause(Duration::from_secs(3))?;
            let answer = services::dns_query(&phone.ns, dns, upd.name, services::DNS_A)?;
            let addr = answer
                .addrs
                .first()
                .map(|(a, _)| *a)
                .with_context(|| format!("the lab's DNS has no A for {}", upd.name))?;
            let got = traffic::http_download(
                &phone.ns,
                std::net::SocketAddr::new(addr, 80),
                upd.name,
                120_000,
            )?;
            self.tl.say(
                phone.name.as_str(),
                &format!("routine update check at {} ({addr}, {country} AS{asn}): {} down — no alert expected", upd.name, human(got as f64)),
            );
        }
        self.pause(Duration::from_secs(3))?;
        if self.seen.is_empty() {
            self.tl.say(
                "Alertmanager",
                "no alerts, as expected: update checks are small, and the rule counts uploads",
            );
        } else {
            let titles: Vec<String> = self.seen.values().map(Seen::title).collect();
            self.problems.push(format!("alerts during the routine update checks: {titles:?}"));
        }

        // The upload: cloud sync is off, yet the phone sends its photos to the maker's cloud.
        let cloud = &home::CLOUD;
        let (country, asn, org) = cloud.geo();
        let answer = services::dns_query(&phone.ns, dns, cloud.name, services::DNS_A)?;
        let addr = answer
            .addrs
            .first()
            .map(|(a, _)| *a)
            .with_context(|| format!("the lab's DNS has no A for {}", cloud.name))?;
        let size = policy.threshold / 5 * 6;
        self.tl.say(
            phone.name.as_str(),
            &format!(
                "cloud sync is OFF, yet it starts a bulk photo upload to {} ({addr}, {country} AS{asn} {org}): {} at {}/s",
                cloud.name,
                human(size as f64),
                human(UPLOAD_RATE as f64)
            ),
        );
        self.tl.detail(&format!(
            "expected: {RULE} fires once more than {} went up within {}",
            policy.threshold_text, policy.window
        ));
        let upload_started = self.tl.elapsed();
        let upload = Upload::start(
            &phone.ns,
            std::net::SocketAddr::new(addr, 80),
            cloud.name,
            size,
            UPLOAD_RATE,
            self.ctx.stop.clone(),
        )?;
        let total = upload.size;
        let finished = self.wait_until(
            Duration::from_secs(size / UPLOAD_RATE + 30),
            |_| upload.is_finished(),
            |_| {
                let sent = upload.sent();
                let bar = (sent * 20 / total.max(1)) as usize;
                format!(
                    "upload [{}{}] {} / {}",
                    "#".repeat(bar),
                    ".".repeat(20 - bar),
                    human(sent as f64),
                    human(total as f64)
                )
            },
        )?;
        if !finished {
            bail!("the photo upload did not finish within {} s", size / UPLOAD_RATE + 30);
        }
        upload.join().context("the photo upload")?;
        let upload_ended = self.tl.elapsed();
        self.tl.say(
            phone.name.as_str(),
            &format!(
                "upload finished: {} in {:.1} s",
                human(size as f64),
                (upload_ended - upload_started).as_secs_f64()
            ),
        );

        let fired = self.wait_until(
            Duration::from_secs(20),
            |s| s.seen.values().any(|a| s.is_expected(a)),
            |t| format!("waiting for {RULE} at Alertmanager… {:.0} s", t.as_secs_f64()),
        )?;
        if !fired {
            self.problems
                .push(format!("{RULE} did not reach Alertmanager within 20 s of the upload"));
            return Ok(());
        }

        let q = format!("gwsensor_policy_alerts{{rule=\"{RULE}\",state=\"firing\"}} > 0");
        let prom = self.ctx.prom;
        let scraped = self.wait_until(
            Duration::from_secs(10),
            |_| prom.query(&q).is_ok_and(|r| !r.is_empty()),
            |t| {
                format!(
                    "waiting for Prometheus to scrape the firing alert… {:.0} s",
                    t.as_secs_f64()
                )
            },
        )?;
        if !scraped {
            self.problems.push(format!("Prometheus has no {q} within 10 s of the alert firing"));
        }
        while_firing(&mut self.tl)?;

        // The upload has stopped: the window drains, and the alert resolves.
        self.tl.say(
            "story",
            &format!(
                "the upload has stopped; {RULE} resolves once it leaves the rule's window (shortened from {} to {} for the demo)",
                policy.window_was, policy.window
            ),
        );
        let window = policy.window_secs;
        let resolved = self.wait_until(
            Duration::from_secs(window + 30),
            |s| s.seen.values().any(|a| s.is_expected(a) && a.gone.is_some()),
            |t| {
                format!(
                    "the {window} s window drains… {:.0} s since the upload ended",
                    t.as_secs_f64()
                )
            },
        )?;
        if !resolved {
            self.problems.push(format!(
                "{RULE} did not resolve within {} s of the upload's end",
                window + 30
            ));
        }
        self.pause(Duration::from_secs(2))?;
        self.prometheus_view()?;
        Ok(())
    }

    /// The same story as Prometheus recorded it (it scraped the agent every second).
    fn prometheus_view(&mut self) -> Result<()> {
        let prom = self.ctx.prom;
        let q = format!(
            "gwsensor_policy_violations_total{{rule=\"{RULE}\",client=\"{}\"}}",
            PHONE.name
        );
        // Every sample Prometheus scraped during the story: the counter must go from 0 (it
        // exists from the phone's first counted traffic) to 1, or increase() misses the alert.
        let secs = self.tl.elapsed().as_secs() + 1;
        let samples: Vec<f64> = prom
            .query(&format!("{q}[{secs}s]"))?
            .first()
            .and_then(|s| s["values"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|v| v[1].as_str().and_then(|v| v.parse().ok()))
            .collect();
        let (first, last) = (samples.first().copied(), samples.last().copied());
        let text = match (first, last) {
            (Some(f), Some(l)) => format!("went from {f} to {l} ({} scrapes)", samples.len()),
            _ => "has no samples".to_string(),
        };
        self.tl.say("Prometheus", &format!("{q} {text}"));
        if (first, last) != (Some(0.0), Some(1.0)) {
            self.problems.push(format!(
                "Prometheus's samples of {q} go from {first:?} to {last:?}, expected 0 to 1"
            ));
        }
        let secs = self.tl.elapsed().as_secs().max(60);
        let q = format!(
            "sum by (client) (increase(gwsensor_client_bytes_total{{direction=\"upload\"}}[{secs}s]))"
        );
        let mut rows: Vec<(String, f64)> = prom
            .query(&q)?
            .iter()
            .map(|s| {
                let v = s["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(0.0);
                (s["metric"]["client"].as_str().unwrap_or_default().to_string(), v)
            })
            .collect();
        rows.sort_by(|a, b| b.1.total_cmp(&a.1));
        let text: Vec<String> = rows.iter().map(|(c, v)| format!("{c} {}", human(*v))).collect();
        self.tl.say("Prometheus", &format!("uploads during the story: {}", text.join(", ")));
        Ok(())
    }

    /// The verdict: the expected alert fired once and resolved (by the sensor, before
    /// Alertmanager's own timeout), nothing else fired, and the script's checks held.
    pub fn verdict(&self) -> Vec<String> {
        let mut problems = self.problems.clone();
        let (not_fired, not_resolved) = (
            problems.iter().any(|p| p.contains("did not reach")),
            problems.iter().any(|p| p.contains("did not resolve")),
        );
        let expected: Vec<&Seen> = self.seen.values().filter(|s| self.is_expected(s)).collect();
        match expected.as_slice() {
            [] if !not_fired => problems.push(format!("{RULE} never fired with labels {:?}", self.expected())),
            [] => {}
            [one] => match (one.gone_at, one.ends_at()) {
                (None, _) if !not_resolved => problems.push(format!("{RULE} did not resolve")),
                (Some(gone), Some(ends)) if gone >= ends => {
                    problems.push(format!("{RULE} only went away at its endsAt: Alertmanager timed it out, the sensor never resolved it"))
                }
                _ => {}
            },
            many => problems.push(format!("{RULE} fired {} times, expected once", many.len())),
        }
        for s in self.seen.values().filter(|s| !self.is_expected(s)) {
            problems.push(format!("unexpected alert {} with labels {:?}", s.title(), s.labels));
        }
        problems
    }

    /// Every alert seen, for the final report: (title, fired at, resolved at).
    pub fn alerts(&self) -> Vec<(String, Duration, Option<Duration>)> {
        self.seen.values().map(|s| (s.title(), s.first, s.gone)).collect()
    }
}

/// Unix seconds now, for Prometheus ranges.
pub fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}
