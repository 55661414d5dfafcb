//! A real Prometheus (Debian's `prometheus`) for tests and the demo: in a lab namespace (the
//! demo's, scraping the agent) or on the host's loopback (a checker of PromQL), started on the
//! caller's config and queried through its HTTP API the way Grafana queries it.

use std::{net::SocketAddr, process::Command, time::Duration};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{
    Lab, Process,
    http::{Client, encode},
    wait,
};

pub const BINARY: &str = "prometheus";

pub struct Prometheus {
    addr: SocketAddr,
    http: Client,
    process: Process,
}

impl Prometheus {
    /// Starts Prometheus on `listen` in `ns` (None: on the host) with `config` (its YAML), its
    /// data in the lab's directory, and waits until it is ready.
    pub fn start(
        lab: &Lab,
        ns: Option<&str>,
        listen: SocketAddr,
        config: &str,
    ) -> anyhow::Result<Prometheus> {
        let dir = lab.dir().join(format!("prometheus-{}", listen.port()));
        std::fs::create_dir_all(dir.join("data"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, config).with_context(|| format!("writing {}", file.display()))?;
        let mut cmd = Command::new(BINARY);
        cmd.arg(format!("--config.file={}", file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={listen}"))
            .arg("--storage.tsdb.retention.time=1d")
            .arg("--log.level=warn");
        let process = lab
            .spawn_at(ns, cmd)
            .with_context(|| format!("starting {BINARY} (apt-get install prometheus)"))?;
        let p = Prometheus { addr: listen, http: Client::new(ns), process };
        let url = format!("{}/-/ready", p.url());
        let ready = wait::until(
            "prometheus to be ready",
            Duration::from_secs(60),
            Duration::from_millis(200),
            || {
                if let Some(status) = p.process.try_wait()? {
                    bail!("prometheus exited ({status}) before it was ready");
                }
                Ok(p.http.get_ok(&url).is_ok().then_some(()))
            },
        );
        ready.map_err(|e| anyhow::anyhow!("{e:#}:\n{}", p.process.log()))?;
        Ok(p)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    /// GET an API path: its `data` when the status is success, else an error with Prometheus's
    /// own message (a query it refuses).
    pub fn api(&self, path_and_query: &str) -> anyhow::Result<Value> {
        let body = self.http.get_ok(&format!("{}{path_and_query}", self.url()))?;
        let v: Value = serde_json::from_str(&body)
            .with_context(|| format!("Prometheus {path_and_query}: not JSON"))?;
        if v["status"] != "success" {
            bail!("Prometheus {path_and_query}: {}", v["error"]);
        }
        Ok(v["data"].clone())
    }

    /// An instant query now: the result vector's samples.
    pub fn query(&self, promql: &str) -> anyhow::Result<Vec<Value>> {
        let data = self.api(&format!("/api/v1/query?query={}", encode(promql)))?;
        Ok(result_of(&data))
    }

    /// Why Prometheus refuses `promql`, None when it accepts it.
    pub fn refuses(&self, promql: &str) -> Option<String> {
        self.query(promql).err().map(|e| format!("{e:#}"))
    }

    /// A query over [start, end] (Unix seconds) at `step` seconds, as a Grafana time series
    /// panel runs it: the result's series.
    pub fn query_range(
        &self,
        promql: &str,
        start: f64,
        end: f64,
        step: f64,
    ) -> anyhow::Result<Vec<Value>> {
        let data = self.api(&format!(
            "/api/v1/query_range?query={}&start={start:.3}&end={end:.3}&step={step}",
            encode(promql)
        ))?;
        Ok(result_of(&data))
    }

    /// An instant query at `time` (Unix seconds).
    pub fn query_at(&self, promql: &str, time: f64) -> anyhow::Result<Vec<Value>> {
        let data = self.api(&format!("/api/v1/query?query={}&time={time:.3}", encode(promql)))?;
        Ok(result_of(&data))
    }

    /// Values of `label` on the series matching `selector` (Grafana's `label_values`).
    pub fn label_values(
        &self,
        selector: Option<&str>,
        label: &str,
        start: f64,
        end: f64,
    ) -> anyhow::Result<Vec<String>> {
        let mut q = format!("/api/v1/label/{}/values?start={start:.3}&end={end:.3}", encode(label));
        if let Some(s) = selector {
            q.push_str(&format!("&match[]={}", encode(s)));
        }
        let data = self.api(&q)?;
        Ok(data
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
            .unwrap_or_default())
    }

    /// Waits until Prometheus has scraped job `job` successfully (`up == 1`).
    pub fn wait_scraping(&self, job: &str, timeout: Duration) -> anyhow::Result<()> {
        let q = format!("up{{job=\"{job}\"}} == 1");
        let scraped = wait::until(
            &format!("Prometheus to scrape {job}"),
            timeout,
            Duration::from_millis(250),
            || Ok(self.query(&q).is_ok_and(|r| !r.is_empty()).then_some(())),
        );
        scraped.map_err(|e| {
            anyhow::anyhow!("{e:#}; its targets: {:?}", self.api("/api/v1/targets").ok())
        })
    }
}

fn result_of(data: &Value) -> Vec<Value> {
    match &data["result"] {
        Value::Array(a) => a.clone(),
        // A scalar or string result: one value.
        Value::Null => Vec::new(),
        other => vec![other.clone()],
    }
}
