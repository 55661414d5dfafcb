//! A real Prometheus Alertmanager (Debian's `prometheus-alertmanager`) for tests and the demo:
//! in a lab namespace or on the host's loopback, alone, clustered or behind TLS and basic
//! auth, started with a minimal config and read back through its API v2 and its metrics.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{Lab, Process, http::Client, prom::Scrape, wait};

pub const BINARY: &str = "prometheus-alertmanager";

/// How an Alertmanager joins a cluster: its own gossip port and its peers' (all on loopback).
#[derive(Debug, Clone)]
pub struct Cluster {
    pub port: u16,
    pub peers: Vec<u16>,
}

/// TLS and basic auth in front of its API (`--web.config.file`), and what a client needs to
/// get through.
#[derive(Debug, Clone)]
pub struct Web {
    /// The web config file's text (tls_server_config, basic_auth_users).
    pub config: String,
    /// The certificate authority of its server certificate (PEM).
    pub ca_pem: Vec<u8>,
    pub user: String,
    pub password: String,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Keeps the storage and config of several apart (and lets a restart on the same port find
    /// its data).
    pub name: String,
    pub port: u16,
    /// None: one process, no gossip (what it holds came from its clients alone).
    pub cluster: Option<Cluster>,
    /// The route's group_wait: how long it holds a new group's first notification.
    pub group_wait: Duration,
    pub web: Option<Web>,
    /// A webhook receiver (with send_resolved) instead of the receiver that does nothing.
    pub webhook: Option<String>,
}

impl Setup {
    /// `name` on 127.0.0.1:`port`, alone, plain HTTP, group_wait 1 s.
    pub fn new(name: &str, port: u16) -> Setup {
        Setup {
            name: name.to_string(),
            port,
            cluster: None,
            group_wait: Duration::from_secs(1),
            web: None,
            webhook: None,
        }
    }

    /// Gossips on `port` with the Alertmanagers gossiping on `peers`.
    pub fn cluster(mut self, port: u16, peers: &[u16]) -> Setup {
        self.cluster = Some(Cluster { port, peers: peers.to_vec() });
        self
    }

    pub fn group_wait(mut self, d: Duration) -> Setup {
        self.group_wait = d;
        self
    }

    pub fn web(mut self, web: Web) -> Setup {
        self.web = Some(web);
        self
    }

    /// Notifies `url` (a [`Webhook`]'s), firing and resolved alerts.
    pub fn webhook(mut self, url: &str) -> Setup {
        self.webhook = Some(url.to_string());
        self
    }

    /// Groups and notifies fast, and routes to a receiver that does nothing (the alerts are
    /// read back from the API) or to the webhook.
    fn config(&self) -> String {
        let receiver = match &self.webhook {
            None => String::new(),
            Some(url) => {
                format!("    webhook_configs:\n      - url: '{url}'\n        send_resolved: true\n")
            }
        };
        format!(
            "route:\n  receiver: lab\n  group_by: [alertname, client]\n  group_wait: {}ms\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: lab\n{receiver}",
            self.group_wait.as_millis()
        )
    }
}

pub struct Alertmanager {
    /// Its namespace, None on the host.
    pub ns: Option<String>,
    pub addr: SocketAddr,
    url: String,
    http: Client,
    process: Process,
}

impl Alertmanager {
    /// Starts one on 127.0.0.1:`setup.port` in `ns` (None: on the host) and waits until its
    /// API answers; its files are in the lab's directory.
    pub fn start(lab: &Lab, ns: Option<&str>, setup: Setup) -> anyhow::Result<Alertmanager> {
        let dir: PathBuf = lab.dir().join(format!("alertmanager-{}", setup.name));
        std::fs::create_dir_all(dir.join("data"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let config = dir.join("alertmanager.yml");
        std::fs::write(&config, setup.config())
            .with_context(|| format!("writing {}", config.display()))?;
        let mut cmd = Command::new(BINARY);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{}", setup.port))
            .arg("--log.level=info");
        match &setup.cluster {
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
        let (scheme, http) = match &setup.web {
            None => ("http", Client::new(ns)),
            Some(web) => {
                let file = dir.join("web.yml");
                std::fs::write(&file, &web.config)
                    .with_context(|| format!("writing {}", file.display()))?;
                cmd.arg(format!("--web.config.file={}", file.display()));
                ("https", Client::trusting(ns, &web.ca_pem)?.basic_auth(&web.user, &web.password))
            }
        };
        let process = lab.spawn_at(ns, cmd).with_context(|| {
            format!("starting {BINARY} (apt-get install prometheus-alertmanager)")
        })?;
        let am = Alertmanager {
            ns: ns.map(str::to_string),
            addr: SocketAddr::from(([127, 0, 0, 1], setup.port)),
            url: format!("{scheme}://127.0.0.1:{}", setup.port),
            http,
            process,
        };
        am.wait_ready(Duration::from_secs(20))?;
        Ok(am)
    }

    pub fn url(&self) -> String {
        self.url.clone()
    }

    fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let ready =
            wait::until("alertmanager to be ready", timeout, Duration::from_millis(100), || {
                if let Some(status) = self.process.try_wait()? {
                    bail!("alertmanager exited ({status}) before it was ready");
                }
                Ok(self.get("/-/ready").is_ok().then_some(()))
            });
        ready.map_err(|e| anyhow::anyhow!("{e:#}:\n{}", self.process.log()))
    }

    /// GET `path` of its API (the body of a 200).
    pub fn get(&self, path: &str) -> anyhow::Result<String> {
        self.http.get_ok(&format!("{}{path}", self.url))
    }

    /// Every alert it holds (API v2) that has not ended.
    pub fn alerts(&self) -> anyhow::Result<Vec<Value>> {
        match serde_json::from_str(&self.get("/api/v2/alerts")?)? {
            Value::Array(alerts) => Ok(alerts),
            other => bail!("{}/api/v2/alerts answered {other}", self.url),
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

    /// Waits until it holds exactly `count` alerts, all processed (state "active").
    pub fn wait_alerts(&self, count: usize, timeout: Duration) -> anyhow::Result<Vec<Value>> {
        let what = format!("{} to hold {count} active alert(s)", self.url);
        wait::until(&what, timeout, Duration::from_millis(100), || {
            let alerts = self.alerts()?;
            Ok((alerts.len() == count && alerts.iter().all(|a| a["status"]["state"] == "active"))
                .then_some(alerts))
        })
    }

    /// Alerts it received through its API, by status ("firing" or "resolved"), from its own
    /// metrics.
    pub fn received(&self, status: &str) -> anyhow::Result<f64> {
        let scrape = Scrape::parse(&self.get("/metrics")?)?;
        Ok(scrape.sum("alertmanager_alerts_received_total", &[("status", status)]))
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    pub fn stop(&self) -> anyhow::Result<()> {
        self.process.terminate(Duration::from_secs(5)).map(|_| ())
    }
}

/// A webhook receiver on the host's loopback: records every notification Alertmanager posts
/// (its JSON body) and answers 200.
pub struct Webhook {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Value>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Webhook {
    pub fn start() -> anyhow::Result<Webhook> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the webhook receiver")?;
        let addr = listener.local_addr()?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (received.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                if let Some(body) = read_request_body(&mut conn)
                    && let Ok(v) = serde_json::from_slice::<Value>(&body)
                {
                    r.lock().unwrap_or_else(|e| e.into_inner()).push(v);
                }
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        Ok(Webhook { addr, received, stop, thread: Some(thread) })
    }

    pub fn url(&self) -> String {
        format!("http://{}/notify", self.addr)
    }

    /// `http://host:port`, for a sender that appends its own path (the sensor's notifier
    /// posts to `{url}/api/v2/alerts`; any path is recorded).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every JSON body received so far, oldest first, as posted.
    pub fn bodies(&self) -> Vec<Value> {
        self.received.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The notifications so far, oldest first: each one's `status` ("firing" or "resolved")
    /// and its alerts' `labels.client`.
    pub fn notifications(&self) -> Vec<(String, Vec<String>)> {
        let received = self.received.lock().unwrap_or_else(|e| e.into_inner());
        received
            .iter()
            .map(|n| {
                let clients = n["alerts"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|a| a["labels"]["client"].as_str().unwrap_or("").to_string())
                            .collect()
                    })
                    .unwrap_or_default();
                (n["status"].as_str().unwrap_or("").to_string(), clients)
            })
            .collect()
    }
}

/// The body of one HTTP/1.1 request (Content-Length framed, as Alertmanager sends).
fn read_request_body(conn: &mut TcpStream) -> Option<Vec<u8>> {
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_string();
    let length: usize = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
    })?;
    while data.len() < head_end + length {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
    Some(data[head_end..head_end + length].to_vec())
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(500));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
