//! The agent's config file for a lab run: the keys every run sets (where it watches, where it
//! pins and saves, where it serves), written the same way for tests, benches and the demo,
//! plus whatever top-level keys a scenario adds as YAML text.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{LAN_PREFIXES, PinDir, Topology};

/// Where the agent serves /metrics unless told otherwise (its default `metrics_listen`).
pub const DEFAULT_METRICS: SocketAddr =
    SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 9977));

/// Where the agent serves its JSON API unless told otherwise (its default `api_listen`); also
/// the CLI's default `--api`.
pub const DEFAULT_API: SocketAddr =
    SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 9978));

/// TLS and basic auth in front of one of the agent's listeners (`metrics_web:` / `api_web:`),
/// and what a client needs to get through.
#[derive(Debug, Clone)]
pub struct Secured {
    /// The server's certificate and key (PEM files).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The certificate authority a client trusts (PEM text).
    pub ca_pem: Vec<u8>,
    pub user: String,
    pub password: String,
    /// The bcrypt hash of `password`, as the config holds it.
    pub bcrypt_hash: String,
}

impl Secured {
    /// The `<section>:` block of the config.
    fn yaml(&self, section: &str) -> String {
        format!(
            "{section}:\n  tls_cert_file: {}\n  tls_key_file: {}\n  basic_auth_users:\n    {}: '{}'\n",
            self.cert.display(),
            self.key.display(),
            self.user,
            self.bcrypt_hash
        )
    }
}

/// The agent's own default `poll_interval`.
pub const DEFAULT_POLL: Duration = Duration::from_secs(5);

/// A config for `sensor run`.
#[derive(Debug, Clone)]
pub struct Config {
    pub interface: String,
    pub lan_prefixes: Vec<String>,
    /// None: the agent's default ([`DEFAULT_POLL`]).
    pub poll_interval: Option<Duration>,
    pub metrics_listen: SocketAddr,
    pub api_listen: SocketAddr,
    /// TLS and basic auth of /metrics (None: plain HTTP, open).
    pub metrics_web: Option<Secured>,
    /// TLS and basic auth of the API.
    pub api_web: Option<Secured>,
    pub pin_path: PathBuf,
    pub state_path: PathBuf,
    /// Further top-level keys, as YAML text (each line ending in a newline).
    pub extra: String,
}

impl Config {
    /// Watching `interface` for the lab's LAN prefixes, serving on [`DEFAULT_METRICS`] and
    /// [`DEFAULT_API`].
    pub fn new(interface: &str, pin_path: &Path, state_path: &Path) -> Config {
        Config {
            interface: interface.to_string(),
            lan_prefixes: LAN_PREFIXES.iter().map(|p| p.to_string()).collect(),
            poll_interval: None,
            metrics_listen: DEFAULT_METRICS,
            api_listen: DEFAULT_API,
            metrics_web: None,
            api_web: None,
            pin_path: pin_path.to_path_buf(),
            state_path: state_path.to_path_buf(),
            extra: String::new(),
        }
    }

    /// On the topology's gateway LAN interface, pinning in `pins`, its state in the lab's
    /// directory.
    pub fn for_topology(topo: &Topology, pins: &PinDir) -> Config {
        Config::new(&topo.gateway.lan_if, pins.path(), &topo.lab.dir().join("state.json"))
    }

    /// `&[]`: none in the config, so the agent follows the interface's.
    pub fn lan_prefixes(mut self, prefixes: &[&str]) -> Config {
        self.lan_prefixes = prefixes.iter().map(|p| p.to_string()).collect();
        self
    }

    pub fn poll(mut self, interval: Duration) -> Config {
        self.poll_interval = Some(interval);
        self
    }

    pub fn metrics(mut self, listen: SocketAddr) -> Config {
        self.metrics_listen = listen;
        self
    }

    pub fn api(mut self, listen: SocketAddr) -> Config {
        self.api_listen = listen;
        self
    }

    /// /metrics behind TLS and basic auth.
    pub fn metrics_secured(mut self, web: Secured) -> Config {
        self.metrics_web = Some(web);
        self
    }

    /// The API behind TLS and basic auth.
    pub fn api_secured(mut self, web: Secured) -> Config {
        self.api_web = Some(web);
        self
    }

    pub fn state(mut self, path: &Path) -> Config {
        self.state_path = path.to_path_buf();
        self
    }

    /// Appends top-level keys (YAML text).
    pub fn with(mut self, yaml: &str) -> Config {
        self.extra.push_str(yaml);
        if !self.extra.is_empty() && !self.extra.ends_with('\n') {
            self.extra.push('\n');
        }
        self
    }

    /// The poll interval the agent will use.
    pub fn effective_poll(&self) -> Duration {
        self.poll_interval.unwrap_or(DEFAULT_POLL)
    }

    pub fn yaml(&self) -> String {
        let prefixes: Vec<String> = self.lan_prefixes.iter().map(|p| format!("{p:?}")).collect();
        // None: the agent follows the interface's own prefixes.
        let prefixes = if prefixes.is_empty() {
            String::new()
        } else {
            format!("lan_prefixes: [{}]\n", prefixes.join(", "))
        };
        let poll = self
            .poll_interval
            .map_or(String::new(), |p| format!("poll_interval: {}ms\n", p.as_millis()));
        let web = |section: &str, web: &Option<Secured>| {
            web.as_ref().map_or(String::new(), |w| w.yaml(section))
        };
        format!(
            "interface: {}\n{prefixes}{poll}metrics_listen: \"{}\"\napi_listen: \"{}\"\n{}{}pin_path: {}\nstate_path: {}\n{}",
            self.interface,
            self.metrics_listen,
            self.api_listen,
            web("metrics_web", &self.metrics_web),
            web("api_web", &self.api_web),
            self.pin_path.display(),
            self.state_path.display(),
            self.extra,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_common_keys_then_the_scenarios() {
        let c = Config::new("lan0", Path::new("/sys/fs/bpf/x"), Path::new("/tmp/s.json"))
            .poll(Duration::from_millis(200))
            .with("inventory:\n  devices: []")
            .with("tc_attach: netlink\n");
        assert_eq!(
            c.yaml(),
            "interface: lan0\nlan_prefixes: [\"10.77.1.0/24\", \"fd77:1::/64\"]\npoll_interval: 200ms\n\
             metrics_listen: \"127.0.0.1:9977\"\napi_listen: \"127.0.0.1:9978\"\npin_path: /sys/fs/bpf/x\n\
             state_path: /tmp/s.json\n\
             inventory:\n  devices: []\ntc_attach: netlink\n"
        );
        let d =
            Config::new("br-lan", Path::new("/p"), Path::new("/s")).lan_prefixes(&["10.0.0.0/8"]);
        assert_eq!(d.effective_poll(), DEFAULT_POLL);
        assert!(!d.yaml().contains("poll_interval"), "{}", d.yaml());
        assert!(d.yaml().contains("lan_prefixes: [\"10.0.0.0/8\"]\n"));
        let secured = Secured {
            cert: "/l/c.crt".into(),
            key: "/l/c.key".into(),
            ca_pem: Vec::new(),
            user: "prometheus".into(),
            password: "pw".into(),
            bcrypt_hash: "$2b$04$x".into(),
        };
        let e = Config::new("lan0", Path::new("/p"), Path::new("/s"))
            .api("127.0.0.1:19978".parse().unwrap())
            .metrics_secured(secured);
        assert!(
            e.yaml().contains(
                "metrics_listen: \"127.0.0.1:9977\"\napi_listen: \"127.0.0.1:19978\"\n\
                 metrics_web:\n  tls_cert_file: /l/c.crt\n  tls_key_file: /l/c.key\n  \
                 basic_auth_users:\n    prometheus: '$2b$04$x'\npin_path: /p\n"
            ),
            "{}",
            e.yaml()
        );
    }
}
