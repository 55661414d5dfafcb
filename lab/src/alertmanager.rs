//! A real Prometheus Alertmanager (Debian's `prometheus-alertmanager`) inside a lab namespace,
//! for tests and the demo: started with a minimal config, read back through its API v2.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{Lab, Process, traffic::http_get};

pub const BINARY: &str = "prometheus-alertmanager";

/// Groups and notifies fast (tests), routes to a receiver that does nothing: the alerts are
/// read back from the API.
const CONFIG: &str = "route:\n  receiver: lab\n  group_by: [alertname, client]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: lab\n";

pub struct Alertmanager {
    pub ns: String,
    pub addr: SocketAddr,
    process: Process,
}

/// How an Alertmanager joins a cluster: its own gossip port and its peers' (all on loopback).
pub struct Cluster {
    pub port: u16,
    pub peers: Vec<u16>,
}

impl Alertmanager {
    /// Starts one on 127.0.0.1:`port` in `ns` and waits until its API answers. `name` keeps the
    /// storage and config of several apart (and lets a restart on the same port find its data).
    pub fn start(
        lab: &Lab,
        ns: &str,
        name: &str,
        port: u16,
        cluster: Option<&Cluster>,
    ) -> anyhow::Result<Alertmanager> {
        let dir: PathBuf = lab.dir().join(format!("alertmanager-{name}"));
        std::fs::create_dir_all(dir.join("data"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let config = dir.join("alertmanager.yml");
        std::fs::write(&config, CONFIG)?;
        let mut cmd = Command::new(BINARY);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=info");
        match cluster {
            None => {
                cmd.arg("--cluster.listen-address=");
            }
            Some(c) => {
                cmd.arg(format!("--cluster.listen-address=127.0.0.1:{}", c.port))
                    .arg(format!("--cluster.advertise-address=127.0.0.1:{}", c.port))
                    .arg("--cluster.gossip-interval=50ms")
                    .arg("--cluster.pushpull-interval=1s");
                for p in &c.peers {
                    cmd.arg(format!("--cluster.peer=127.0.0.1:{p}"));
                }
            }
        }
        let process = lab.spawn(ns, cmd).with_context(|| {
            format!("starting {BINARY} (apt-get install prometheus-alertmanager)")
        })?;
        let am = Alertmanager {
            ns: ns.to_string(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            process,
        };
        am.wait_ready(Duration::from_secs(20))?;
        Ok(am)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if http_get(&self.ns, &format!("{}/-/ready", self.url())).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.process.try_wait()? {
                bail!(
                    "alertmanager exited ({status}) before it was ready:\n{}",
                    self.process.log()
                );
            }
            if Instant::now() > deadline {
                bail!("alertmanager not ready after {timeout:?}:\n{}", self.process.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every alert it holds (API v2), active or not.
    pub fn alerts(&self) -> anyhow::Result<Vec<Value>> {
        let body = http_get(&self.ns, &format!("{}/api/v2/alerts", self.url()))?;
        match serde_json::from_str(&body)? {
            Value::Array(alerts) => Ok(alerts),
            other => bail!("{}/api/v2/alerts answered {other}", self.url()),
        }
    }

    /// Its active alerts whose labels include all of `labels`.
    pub fn active(&self, labels: &[(&str, &str)]) -> anyhow::Result<Vec<Value>> {
        Ok(self
            .alerts()?
            .into_iter()
            .filter(|a| a["status"]["state"] == "active")
            .filter(|a| labels.iter().all(|(k, v)| a["labels"][*k] == *v))
            .collect())
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    pub fn stop(&self) -> anyhow::Result<()> {
        self.process.terminate(Duration::from_secs(5)).map(|_| ())
    }
}
