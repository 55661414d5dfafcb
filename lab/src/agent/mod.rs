//! The real agent binary run by tests, benches, the demo and the peer bench: started in a lab
//! namespace with a config written for it, awaited until its programs are attached, then read
//! the ways a user reads it (/metrics, the JSON API, the `sensor` CLI). Every error and failure
//! carries the agent's log tail, so a broken run says why without a rerun.

mod config;
mod observe;
mod watch;

use std::{
    ffi::OsString,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail};
use nix::sys::signal::Signal;
use serde_json::Value;

pub use self::{
    config::{Config, DEFAULT_API, DEFAULT_METRICS, DEFAULT_POLL, Secured},
    observe::Observation,
    watch::{CounterWatch, Watched},
};
use crate::{
    Lab, Process,
    http::Client,
    prom::Scrape,
    wait::{self, Settle},
};

/// How many lines of the agent's log an error carries.
const LOG_TAIL: usize = 60;
/// Marks the log tail in a message, so it is not appended twice.
const LOG_MARKER: &str = "----- the agent's log";

/// How to start the agent: which binary, with what around it.
#[derive(Debug, Clone)]
pub struct Launch {
    binary: PathBuf,
    name: String,
    env: Vec<(OsString, OsString)>,
    wrapper: Vec<OsString>,
    own_process_group: bool,
    ready_timeout: Option<Duration>,
}

impl Launch {
    /// `binary run --config <lab dir>/sensor.yaml`, logging at `RUST_LOG` (or info), without
    /// colours, awaited for up to 60 s. Tests pass `env!("CARGO_BIN_EXE_sensor")`, the benches
    /// and xtask the release build.
    pub fn new(binary: impl AsRef<Path>) -> Launch {
        let filter = std::env::var_os("RUST_LOG").unwrap_or_else(|| "info".into());
        Launch {
            binary: binary.as_ref().to_path_buf(),
            name: "sensor".into(),
            env: vec![("RUST_LOG".into(), filter), ("NO_COLOR".into(), "1".into())],
            wrapper: Vec::new(),
            own_process_group: false,
            ready_timeout: Some(Duration::from_secs(60)),
        }
    }

    /// The config file's stem in the lab's directory (several agents in one lab).
    pub fn name(mut self, name: &str) -> Launch {
        self.name = name.to_string();
        self
    }

    /// The log filter (`RUST_LOG`).
    pub fn log(self, filter: &str) -> Launch {
        self.env("RUST_LOG", filter)
    }

    pub fn env(mut self, key: &str, value: impl Into<OsString>) -> Launch {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
        self
    }

    /// Runs `program args… <binary> run …`, e.g. setpriv with a capability bounding set.
    pub fn wrapped_in(mut self, program: &str, args: &[&str]) -> Launch {
        self.wrapper =
            std::iter::once(program).chain(args.iter().copied()).map(Into::into).collect();
        self
    }

    /// In a process group of its own: a terminal's Ctrl-C reaches the caller only, which then
    /// stops the agent itself (and the agent saves its state on the way out).
    pub fn own_process_group(mut self) -> Launch {
        self.own_process_group = true;
        self
    }

    /// How long [`Agent::start`] waits for /metrics to report the attached programs.
    pub fn ready_within(mut self, timeout: Duration) -> Launch {
        self.ready_timeout = Some(timeout);
        self
    }

    /// [`Agent::start`] returns once the process runs (a test that watches it start itself).
    pub fn no_ready_wait(mut self) -> Launch {
        self.ready_timeout = None;
        self
    }

    fn command(&self, config: &Path) -> Command {
        let mut cmd = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&self.binary);
                c
            }
            None => Command::new(&self.binary),
        };
        cmd.arg("run").arg("--config").arg(config);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        if self.own_process_group {
            use std::os::unix::process::CommandExt as _;
            cmd.process_group(0);
        }
        cmd
    }
}

/// One of the agent's listeners as a client reaches it.
#[derive(Clone)]
struct Endpoint {
    addr: SocketAddr,
    scheme: &'static str,
    http: Client,
    secured: Option<Secured>,
}

impl Endpoint {
    /// From namespace `ns`: plain HTTP, or HTTPS with basic auth through `secured`.
    fn new(ns: &str, addr: SocketAddr, secured: Option<&Secured>) -> anyhow::Result<Endpoint> {
        Ok(match secured {
            None => Endpoint { addr, scheme: "http", http: Client::new(Some(ns)), secured: None },
            Some(s) => Endpoint {
                addr,
                scheme: "https",
                http: Client::trusting(Some(ns), &s.ca_pem)?.basic_auth(&s.user, &s.password),
                secured: Some(s.clone()),
            },
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }
}

/// A running agent in namespace `ns` of a lab (which stops it if the caller does not).
pub struct Agent<'l> {
    lab: &'l Lab,
    ns: String,
    launch: Launch,
    config_path: PathBuf,
    metrics: Endpoint,
    api: Endpoint,
    poll: Duration,
    process: Process,
}

impl<'l> Agent<'l> {
    /// Writes `config` into the lab's directory and starts the agent on it in `ns`; reads it
    /// over TLS with basic auth where the config secures a listener.
    pub fn start(
        lab: &'l Lab,
        ns: &str,
        launch: Launch,
        config: &Config,
    ) -> anyhow::Result<Agent<'l>> {
        let metrics = Endpoint::new(ns, config.metrics_listen, config.metrics_web.as_ref())?;
        let api = Endpoint::new(ns, config.api_listen, config.api_web.as_ref())?;
        Agent::launch(lab, ns, launch, &config.yaml(), metrics, api, config.effective_poll())
    }

    /// Like [`Agent::start`] with a whole config of the caller's (the demo adapts the shipped
    /// example); `metrics`, `api` and `poll` must be its `metrics_listen`, `api_listen` and
    /// `poll_interval` (plain HTTP).
    pub fn start_yaml(
        lab: &'l Lab,
        ns: &str,
        launch: Launch,
        yaml: &str,
        metrics: SocketAddr,
        api: SocketAddr,
        poll: Duration,
    ) -> anyhow::Result<Agent<'l>> {
        let metrics = Endpoint::new(ns, metrics, None)?;
        let api = Endpoint::new(ns, api, None)?;
        Agent::launch(lab, ns, launch, yaml, metrics, api, poll)
    }

    fn launch(
        lab: &'l Lab,
        ns: &str,
        launch: Launch,
        yaml: &str,
        metrics: Endpoint,
        api: Endpoint,
        poll: Duration,
    ) -> anyhow::Result<Agent<'l>> {
        let config_path = lab.dir().join(format!("{}.yaml", launch.name));
        std::fs::write(&config_path, yaml)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let process = Agent::spawn(lab, ns, &launch, &config_path)?;
        let agent =
            Agent { lab, ns: ns.to_string(), launch, config_path, metrics, api, poll, process };
        agent.await_ready()?;
        Ok(agent)
    }

    fn spawn(lab: &Lab, ns: &str, launch: &Launch, config: &Path) -> anyhow::Result<Process> {
        lab.spawn(ns, launch.command(config))
            .with_context(|| format!("starting the agent {}", launch.binary.display()))
    }

    fn await_ready(&self) -> anyhow::Result<()> {
        match self.launch.ready_timeout {
            Some(t) => self.wait_ready(t),
            None => Ok(()),
        }
    }

    pub fn process(&self) -> &Process {
        &self.process
    }

    pub fn ns(&self) -> &str {
        &self.ns
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics.addr
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.api.addr
    }

    /// The poll interval it runs with.
    pub fn poll_interval(&self) -> Duration {
        self.poll
    }

    /// The listener serving `path`: the API's for `/api/...`, else the metrics'.
    fn endpoint(&self, path: &str) -> &Endpoint {
        if path.starts_with("/api/") { &self.api } else { &self.metrics }
    }

    /// `http(s)://<metrics_listen><path>`, or `<api_listen>` for an `/api/` path.
    pub fn url(&self, path: &str) -> String {
        self.endpoint(path).url(path)
    }

    /// The API's base URL (`http(s)://<api_listen>`), what `sensor clients --api` takes.
    pub fn api_url(&self) -> String {
        self.api.url("")
    }

    /// The last lines of its log, under a header.
    pub fn log_tail(&self) -> String {
        format!(
            "{LOG_MARKER} ({}, last {LOG_TAIL} lines) -----\n{}",
            self.process.log_path().display(),
            self.process.log_tail(LOG_TAIL)
        )
    }

    /// `e` with the agent's log tail added.
    pub fn with_log(&self, e: anyhow::Error) -> anyhow::Error {
        let text = format!("{e:#}");
        if text.contains(LOG_MARKER) { e } else { anyhow::anyhow!("{text}\n{}", self.log_tail()) }
    }

    /// Waits until /metrics reports the XDP attach mode (its programs are in place); fails if
    /// it exits or `timeout` passes.
    pub fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let url = self.url("/metrics");
        let ready = wait::until(
            &format!("the agent to serve {url} with gwsensor_xdp_attach_mode"),
            timeout,
            Duration::from_millis(100),
            || {
                if let Some(status) = self.process.try_wait()? {
                    bail!("the agent exited during startup ({status})");
                }
                Ok(self
                    .metrics
                    .http
                    .get_ok(&url)
                    .is_ok_and(|body| body.contains("gwsensor_xdp_attach_mode"))
                    .then_some(()))
            },
        );
        ready.map_err(|e| self.with_log(e))
    }

    /// GET `path` (the body of a 200) from the listener that serves it.
    pub fn get(&self, path: &str) -> anyhow::Result<String> {
        self.endpoint(path).http.get_ok(&self.url(path)).map_err(|e| self.with_log(e))
    }

    pub fn scrape_text(&self) -> anyhow::Result<String> {
        self.get("/metrics")
    }

    pub fn scrape(&self) -> anyhow::Result<Scrape> {
        Scrape::parse(&self.scrape_text()?).map_err(|e| self.with_log(e.context("bad scrape")))
    }

    /// GET `path` as JSON (`/api/v1/clients`, `/api/v1/flows`).
    pub fn api_json(&self, path: &str) -> anyhow::Result<Value> {
        let body = self.get(path)?;
        serde_json::from_str(&body).with_context(|| format!("{path}: not JSON"))
    }

    /// The scrape and both API views.
    pub fn observe(&self) -> anyhow::Result<Observation> {
        let text = self.scrape_text()?;
        let scrape = Scrape::parse(&text).context("bad scrape")?;
        let clients = self.api_json("/api/v1/clients")?;
        let flows = self.api_json("/api/v1/flows")?;
        Ok(Observation { text, scrape, clients, flows })
    }

    /// Polls completed so far (gwsensor_poll_duration_seconds_count; 0 before the first).
    pub fn polls(&self) -> anyhow::Result<f64> {
        Ok(self.scrape()?.get("gwsensor_poll_duration_seconds_count", &[]).unwrap_or(0.0))
    }

    /// Returns just after a poll completed, so that what the caller does next most likely
    /// falls within one poll interval.
    pub fn wait_next_poll(&self, timeout: Duration) -> anyhow::Result<()> {
        let before = self.polls()?;
        wait::until("the agent's next poll", timeout, Duration::from_millis(5), || {
            Ok((self.polls()? > before).then_some(()))
        })
        .map_err(|e| self.with_log(e))
    }

    /// Waits until it has completed at least `n` polls; returns the scrape that showed it.
    pub fn wait_polls(&self, n: f64, timeout: Duration) -> anyhow::Result<Scrape> {
        wait::until(&format!("{n} polls of the agent"), timeout, Duration::from_millis(100), || {
            let s = self.scrape()?;
            let polls = s.get("gwsensor_poll_duration_seconds_count", &[]).unwrap_or(0.0);
            Ok((polls >= n).then_some(s))
        })
        .map_err(|e| self.with_log(e))
    }

    /// A scrape whose counters include everything the agent counted before the call: counters
    /// show as of the agent's last state save (after each poll by default), so it waits two
    /// polls (the first one may have been under way).
    pub fn scrape_saved(&self, timeout: Duration) -> anyhow::Result<Scrape> {
        self.wait_polls(self.polls()? + 2.0, timeout)
    }

    /// How [`Agent::expect`] looks: up to 15 s for a match, which must then hold for two polls.
    pub fn settle_timing(&self) -> Settle {
        Settle {
            timeout: Duration::from_secs(15),
            hold: 2 * self.poll + Duration::from_millis(100),
            interval: Duration::from_millis(100),
        }
    }

    /// For tests: observes until `check` finds nothing wrong and it stays so for two polls;
    /// otherwise fails the test (see [`Agent::report`]) with every complaint.
    pub fn expect(
        &self,
        context: &str,
        check: impl Fn(&Observation) -> Vec<String>,
    ) -> Observation {
        match wait::settle(self.settle_timing(), || self.observe(), check) {
            Ok(Ok(seen)) => seen,
            Ok(Err(m)) => self.report(
                &format!("{context}: the agent's view does not match"),
                Some(&m.last),
                &m.complaints,
                &[],
            ),
            Err(e) => self.fail(&format!("{context}: reading the agent failed: {e:#}")),
        }
    }

    /// SIGHUP: re-read the policy.
    pub fn reload(&self) -> anyhow::Result<()> {
        self.process.signal(Signal::SIGHUP)
    }

    /// SIGTERM, then a clean exit within `grace` (exit status 0) or an error with the log.
    pub fn stop(&self, grace: Duration) -> anyhow::Result<()> {
        let stopped = match self.process.terminate(grace) {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(anyhow::anyhow!("the agent exited with {status} on SIGTERM")),
            Err(e) => Err(e),
        };
        stopped.map_err(|e| self.with_log(e))
    }

    /// [`Agent::stop`], then the same binary on the same config, awaited as at the start.
    pub fn restart(&mut self, grace: Duration) -> anyhow::Result<()> {
        self.stop(grace)?;
        self.start_again()
    }

    /// SIGKILL, as a crash or the OOM killer ends it: no last poll, no state save. Returns once
    /// the process is gone.
    pub fn kill(&self) -> anyhow::Result<()> {
        self.process.signal(Signal::SIGKILL)?;
        match self.process.wait_timeout(Duration::from_secs(10))? {
            Some(_) => Ok(()),
            None => Err(self.with_log(anyhow::anyhow!("the agent outlived SIGKILL by 10 s"))),
        }
    }

    /// After [`Agent::stop`] or [`Agent::kill`]: the same binary on the same config, awaited
    /// as at the start.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        self.process = Agent::spawn(self.lab, &self.ns, &self.launch, &self.config_path)?;
        self.await_ready()
    }

    /// After [`Agent::stop`]: `binary` from now on (an upgrade), on the same config, awaited as
    /// at the start.
    pub fn upgrade_to(&mut self, binary: &Path) -> anyhow::Result<()> {
        self.launch.binary = binary.to_path_buf();
        self.start_again()
    }

    /// Scrapes /metrics every `interval` on a thread, through stops and crashes, watching for
    /// any counter that goes backwards.
    pub fn watch_counters(&self, interval: Duration) -> CounterWatch {
        CounterWatch::start(self.metrics.http.clone(), self.url("/metrics"), interval)
    }

    /// `sensor <args>` run in the agent's namespace against it, as a user on the router would:
    /// with the CLI's default `--api` when the agent's API listens there in plain HTTP, else
    /// `--api` to it (and `--ca-file`, `--user`, `--password-file` for a secured API). Its
    /// stdout, or an error with everything it printed.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.cli_output(args, true)?;
        if !out.status.success() {
            bail!(
                "sensor {args:?} failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8(out.stdout)
            .with_context(|| format!("sensor {args:?}: output is not UTF-8"))
    }

    /// Like [`Agent::cli`], whatever its exit status; without the credentials of a secured API
    /// unless `credentials`.
    pub fn cli_output(
        &self,
        args: &[&str],
        credentials: bool,
    ) -> anyhow::Result<std::process::Output> {
        let mut cmd = Command::new(&self.launch.binary);
        cmd.args(args);
        for var in ["GWSENSOR_API", "GWSENSOR_API_CA_FILE", "GWSENSOR_API_USER"] {
            cmd.env_remove(var);
        }
        cmd.env_remove("GWSENSOR_API_PASSWORD_FILE").env_remove("GWSENSOR_API_TOKEN_FILE");
        if self.api.addr != DEFAULT_API || self.api.scheme != "http" {
            cmd.arg("--api").arg(self.api_url());
        }
        if let Some(s) = &self.api.secured {
            let ca = self.lab.dir().join("cli-api-ca.pem");
            std::fs::write(&ca, &s.ca_pem).with_context(|| format!("writing {}", ca.display()))?;
            cmd.arg("--ca-file").arg(&ca);
            if credentials {
                let password = self.lab.dir().join("cli-api-password");
                std::fs::write(&password, &s.password)
                    .with_context(|| format!("writing {}", password.display()))?;
                cmd.arg("--user").arg(&s.user).arg("--password-file").arg(&password);
            }
        }
        crate::services::output_in_netns(&self.ns, cmd, b"", Duration::from_secs(20))
            .with_context(|| format!("sensor {args:?}"))
    }

    /// For tests: fails with `msg` (see [`Agent::report`]).
    pub fn fail(&self, msg: &str) -> ! {
        self.report(msg, None, &[], &[])
    }

    /// For tests: prints every log of the lab, the agent's config, `seen` (or a fresh look at
    /// the agent), `extra` sections and the complaints to stderr, then panics with `msg`, the
    /// complaints and the agent's log tail.
    pub fn report(
        &self,
        msg: &str,
        seen: Option<&Observation>,
        complaints: &[String],
        extra: &[(&str, String)],
    ) -> ! {
        for log in self.lab.logs() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            eprintln!("===== {} =====\n{text}", log.display());
        }
        let config = std::fs::read_to_string(&self.config_path).unwrap_or_default();
        eprintln!("===== config {} =====\n{config}", self.config_path.display());
        let fresh;
        let seen = match seen {
            Some(s) => Some(s),
            None => {
                fresh = self.observe().ok();
                fresh.as_ref()
            }
        };
        for (title, text) in seen.map(Observation::sections).unwrap_or_default() {
            eprintln!("===== {title} =====\n{text}");
        }
        for (title, text) in extra {
            eprintln!("===== {title} =====\n{text}");
        }
        if !complaints.is_empty() {
            eprintln!("===== mismatches =====\n{}", complaints.join("\n"));
        }
        let tail = if msg.contains(LOG_MARKER) { String::new() } else { self.log_tail() };
        panic!("{msg}\n{}\n{tail}", complaints.join("\n"));
    }
}
