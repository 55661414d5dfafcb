//! The agent under test, and what it shows.

use super::*;

/// One look at the agent: the scrape and the API's two views.
pub(crate) struct Obs {
    pub(crate) text: String,
    pub(crate) scrape: Scrape,
    pub(crate) clients: Value,
    pub(crate) flows: Value,
}

impl Obs {
    pub(crate) fn clients(&self) -> &[Value] {
        self.clients["clients"].as_array().map_or(&[], Vec::as_slice)
    }

    pub(crate) fn flows(&self) -> &[Value] {
        self.flows["flows"].as_array().map_or(&[], Vec::as_slice)
    }

    pub(crate) fn client_by_mac(&self, mac: &str) -> Option<&Value> {
        self.clients().iter().find(|c| c["mac"] == mac)
    }

    /// The flow of client `mac` to `remote`:`port`/`protocol`.
    pub(crate) fn flow(
        &self,
        mac: &str,
        remote: &str,
        protocol: &str,
        port: u16,
    ) -> Option<&Value> {
        self.flows().iter().find(|f| {
            f["mac"] == mac
                && f["remote_ip"] == remote
                && f["protocol"] == protocol
                && f["port"] == u64::from(port)
        })
    }

    pub(crate) fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.scrape.get(name, labels)
    }
}

pub(crate) struct Agent<'t> {
    pub(crate) topo: &'t Topology,
    pub(crate) process: Process,
}

impl<'t> Agent<'t> {
    pub(crate) fn start(topo: &'t Topology, config_yaml: &str) -> Agent<'t> {
        let config = topo.lab.dir().join("sensor.yaml");
        std::fs::write(&config, config_yaml).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sensor"));
        cmd.arg("run").arg("--config").arg(&config);
        cmd.env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .env("NO_COLOR", "1");
        let process = topo.lab.spawn(&topo.gateway.ns, cmd).expect("starting the agent");
        let agent = Agent { topo, process };
        agent.wait_ready();
        agent
    }

    /// Ready = /metrics answers and reports the XDP attachment (programs are in place).
    pub(crate) fn wait_ready(&self) {
        let url = format!("http://{METRICS}/metrics");
        if let Err(e) = lab::wait_agent_ready(
            &self.topo.gateway.ns,
            &url,
            &self.process,
            Duration::from_secs(60),
        ) {
            self.fail(&format!("{e:#}"), None, &[]);
        }
    }

    pub(crate) fn get(&self, path: &str) -> anyhow::Result<String> {
        lab::http_get(&self.topo.gateway.ns, &format!("http://{METRICS}{path}"))
    }

    pub(crate) fn scrape_text(&self) -> anyhow::Result<String> {
        self.get("/metrics")
    }

    pub(crate) fn try_observe(&self) -> anyhow::Result<Obs> {
        let text = self.scrape_text()?;
        let scrape = Scrape::parse(&text)?;
        let clients = serde_json::from_str(&self.get("/api/v1/clients")?)?;
        let flows = serde_json::from_str(&self.get("/api/v1/flows")?)?;
        Ok(Obs { text, scrape, clients, flows })
    }

    pub(crate) fn observe(&self) -> Obs {
        self.try_observe()
            .unwrap_or_else(|e| self.fail(&format!("reading the agent failed: {e:#}"), None, &[]))
    }

    pub(crate) fn polls(&self) -> f64 {
        let text = self
            .scrape_text()
            .unwrap_or_else(|e| self.fail(&format!("scrape failed: {e:#}"), None, &[]));
        let scrape = Scrape::parse(&text)
            .unwrap_or_else(|e| self.fail(&format!("bad scrape: {e:#}"), None, &[]));
        scrape.get("gwsensor_poll_duration_seconds_count", &[]).unwrap_or(0.0)
    }

    /// Returns just after a poll completed, so that what the caller does next (a short TCP
    /// exchange) most likely falls within one poll interval: the kernel counts a connection's
    /// handshake before the ClientHello (or HTTP request) that names it, and the agent names
    /// flows when it attributes each poll's deltas.
    pub(crate) fn wait_poll(&self) {
        let before = self.polls();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.polls() <= before {
            if Instant::now() > deadline {
                self.fail("the agent did not poll within 10 s", None, &[]);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Polls until `check` finds nothing wrong, then keeps checking for two more poll
    /// intervals (a late change must not slip through); fails with every complaint, the
    /// scrape, the API and the logs otherwise.
    pub(crate) fn expect(&self, context: &str, check: impl Fn(&Obs) -> Vec<String>) -> Obs {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut matched_since: Option<Instant> = None;
        loop {
            let obs = self.observe();
            let bad = check(&obs);
            if bad.is_empty() {
                let since = *matched_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= 2 * POLL + Duration::from_millis(100) {
                    return obs;
                }
            } else if matched_since.is_some() || Instant::now() > deadline {
                self.fail(&format!("{context}: the agent's view does not match"), Some(&obs), &bad);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the agent has read at least `n` naming events of `kind`.
    pub(crate) fn wait_events(&self, kind: &str, n: f64) {
        self.expect(&format!("waiting for {n} {kind} events"), |o| {
            let got = o.value("gwsensor_events_received_total", &[("kind", kind)]).unwrap_or(0.0);
            if got >= n {
                vec![]
            } else {
                vec![format!(
                    "gwsensor_events_received_total{{kind={kind:?}}} = {got}, want >= {n}"
                )]
            }
        });
    }

    pub(crate) fn fail(&self, msg: &str, obs: Option<&Obs>, complaints: &[String]) -> ! {
        for log in self.topo.lab.logs() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            eprintln!("===== {} =====\n{text}", log.display());
        }
        let fresh;
        let obs = match obs {
            Some(o) => Some(o),
            None => {
                fresh = self.try_observe().ok();
                fresh.as_ref()
            }
        };
        if let Some(o) = obs {
            eprintln!("===== scrape =====\n{}", o.text);
            eprintln!("===== /api/v1/clients =====\n{:#}", o.clients);
            eprintln!("===== /api/v1/flows =====\n{:#}", o.flows);
        }
        if !complaints.is_empty() {
            eprintln!("===== mismatches =====\n{}", complaints.join("\n"));
        }
        panic!("{msg}\n{}", complaints.join("\n"));
    }

    /// `sensor <args>` run inside the gateway namespace against this agent (the default
    /// --api, 127.0.0.1:9977, is the agent's metrics_listen).
    pub(crate) fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sensor"));
        cmd.args(args).env_remove("GWSENSOR_API");
        let out =
            services::output_in_netns(&self.topo.gateway.ns, cmd, b"", Duration::from_secs(20))
                .unwrap_or_else(|e| self.fail(&format!("sensor {args:?}: {e:#}"), None, &[]));
        if !out.status.success() {
            self.fail(
                &format!(
                    "sensor {args:?} failed ({}):\n{}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
                None,
                &[],
            );
        }
        String::from_utf8(out.stdout).expect("CLI output is UTF-8")
    }
}
