//! The monitoring side of the demo: lab's Prometheus scraping the agent inside the gateway
//! namespace, with the sensor's rule files when the repository has them, and forwarders that
//! make the lab's services reachable from the host.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use lab::{Lab, TcpForwarder, prometheus::Prometheus};

/// The scrape job of the agent, and the `site` target label dashboards select on.
pub const JOB: &str = "gateway-sensor";
pub const SITE: &str = "home-lab";

/// Starts lab's Prometheus on `listen` in `ns`, scraping the agent at `agent` every second and
/// sending its own alerts (from `rule_files`) to `alertmanager`; waits until it is ready.
pub fn start_prometheus(
    lab: &Lab,
    ns: &str,
    listen: SocketAddr,
    agent: &str,
    alertmanager: &str,
    rule_files: &[PathBuf],
) -> Result<Prometheus> {
    Prometheus::start(lab, Some(ns), listen, &config_yaml(agent, alertmanager, rule_files))
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
