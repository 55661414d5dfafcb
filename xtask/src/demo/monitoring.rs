//! The monitoring side of the demo: a real Prometheus (Debian's `prometheus`) scraping the
//! agent inside the gateway namespace, with the sensor's rule files when the repository has
//! them, its HTTP API, and forwarders that make the lab's services reachable from the host.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use lab::{Lab, Process, TcpForwarder};
use serde_json::Value;

pub const PROMETHEUS_BINARY: &str = "prometheus";
/// The scrape job of the agent, and the `site` target label dashboards select on.
pub const JOB: &str = "gateway-sensor";
pub const SITE: &str = "home-lab";

pub struct Prometheus {
    ns: String,
    addr: SocketAddr,
    process: Process,
}

impl Prometheus {
    /// Starts Prometheus on `listen` in `ns`, scraping the agent at `agent` every second and
    /// sending its own alerts (from `rule_files`) to `alertmanager`; waits until it is ready.
    pub fn start(
        lab: &Lab,
        ns: &str,
        listen: SocketAddr,
        agent: &str,
        alertmanager: &str,
        rule_files: &[PathBuf],
    ) -> Result<Prometheus> {
        let dir = lab.dir().join("prometheus");
        std::fs::create_dir_all(dir.join("data"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, config_yaml(agent, alertmanager, rule_files))?;
        let mut cmd = Command::new(PROMETHEUS_BINARY);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={listen}"))
            .arg("--storage.tsdb.retention.time=1d")
            .arg("--log.level=warn");
        let process = lab.spawn(ns, cmd).with_context(|| {
            format!("starting {PROMETHEUS_BINARY} (apt-get install prometheus)")
        })?;
        let p = Prometheus { ns: ns.to_string(), addr: listen, process };
        let deadline = Instant::now() + Duration::from_secs(60);
        while lab::http_get(ns, &format!("{}/-/ready", p.url())).is_err() {
            if let Some(status) = p.process.try_wait()? {
                bail!("prometheus exited ({status}) before it was ready:\n{}", p.process.log());
            }
            if Instant::now() > deadline {
                bail!("prometheus not ready after 60 s:\n{}", p.process.log());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(p)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    fn api(&self, path_and_query: &str) -> Result<Value> {
        let body = lab::http_get(&self.ns, &format!("{}{path_and_query}", self.url()))?;
        let v: Value = serde_json::from_str(&body)
            .with_context(|| format!("Prometheus {path_and_query}: not JSON"))?;
        if v["status"] != "success" {
            bail!("Prometheus {path_and_query}: {}", v["error"]);
        }
        Ok(v["data"].clone())
    }

    /// An instant query now: the result vector's samples.
    pub fn query(&self, promql: &str) -> Result<Vec<Value>> {
        let data = self.api(&format!("/api/v1/query?query={}", encode(promql)))?;
        Ok(result_of(&data))
    }

    /// A query over [start, end] (Unix seconds) at `step` seconds, as a Grafana time series
    /// panel runs it: the result's series.
    pub fn query_range(&self, promql: &str, start: f64, end: f64, step: f64) -> Result<Vec<Value>> {
        let data = self.api(&format!(
            "/api/v1/query_range?query={}&start={start:.3}&end={end:.3}&step={step}",
            encode(promql)
        ))?;
        Ok(result_of(&data))
    }

    /// An instant query at `time` (Unix seconds).
    pub fn query_at(&self, promql: &str, time: f64) -> Result<Vec<Value>> {
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
    ) -> Result<Vec<String>> {
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

    /// Waits until Prometheus has scraped the agent successfully (`up == 1`).
    pub fn wait_scraping(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let q = format!("up{{job=\"{JOB}\"}} == 1");
        loop {
            if self.query(&q).is_ok_and(|r| !r.is_empty()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "Prometheus has not scraped the agent within {timeout:?}; its targets: {:?}",
                    self.api("/api/v1/targets").ok()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
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

fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn config_yaml(agent: &str, alertmanager: &str, rule_files: &[PathBuf]) -> String {
    let rules: String = rule_files.iter().map(|f| format!("  - {}\n", f.display())).collect();
    format!(
        "# Written by `cargo xtask demo`.\n\
         global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         rule_files:\n{rules}\
         alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: [\"{alertmanager}\"]\n\
         scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: [\"{agent}\"]\n        labels: {{site: {SITE}}}\n",
        rules = if rules.is_empty() { "  []\n".to_string() } else { rules },
    )
}

/// The sensor's Prometheus rule files in the repository: every YAML file under
/// `deploy/prometheus/` whose top level has `groups` (alerting and recording rules).
pub fn rule_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    if !dir.is_dir() {
        return Ok(found);
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if !path.extension().is_some_and(|e| e == "yml" || e == "yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let doc: serde_yaml::Value = serde_yaml::from_str(&text)
                .with_context(|| format!("parsing {}", path.display()))?;
            if doc.get("groups").is_some() {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Forwards `preferred` on the host's loopback to `target` inside `ns`, or any free port when
/// it is taken (a real agent, Prometheus or Alertmanager on this host).
pub fn forward(preferred: SocketAddr, ns: &str, target: SocketAddr) -> Result<TcpForwarder> {
    match TcpForwarder::start(preferred, ns, target) {
        Ok(f) => Ok(f),
        Err(_) => TcpForwarder::start(SocketAddr::new(preferred.ip(), 0), ns, target),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrape_config() {
        let y = config_yaml("127.0.0.1:9977", "127.0.0.1:9093", &[PathBuf::from("/r/a.yml")]);
        let v: serde_yaml::Value = serde_yaml::from_str(&y).unwrap();
        assert_eq!(v["rule_files"][0], "/r/a.yml");
        assert_eq!(v["scrape_configs"][0]["job_name"], JOB);
        assert_eq!(v["scrape_configs"][0]["static_configs"][0]["targets"][0], "127.0.0.1:9977");
        assert_eq!(v["scrape_configs"][0]["static_configs"][0]["labels"]["site"], SITE);
        assert_eq!(
            v["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"][0],
            "127.0.0.1:9093"
        );
        let none: serde_yaml::Value =
            serde_yaml::from_str(&config_yaml("a:1", "b:2", &[])).unwrap();
        assert_eq!(none["rule_files"].as_sequence().map(Vec::len), Some(0));
    }
}
