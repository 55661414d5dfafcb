//! The agent's config file for a lab run: the keys every run sets (where it watches, where it
//! pins and saves, where it serves), written the same way for tests, benches and the demo,
//! plus whatever top-level keys a scenario adds as YAML text.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{LAN_PREFIXES, PinDir, Topology};

/// Where the agent serves /metrics and its API unless told otherwise; also the CLI's default
/// `--api`.
pub const DEFAULT_METRICS: SocketAddr =
    SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 9977));

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
    pub pin_path: PathBuf,
    pub state_path: PathBuf,
    /// Further top-level keys, as YAML text (each line ending in a newline).
    pub extra: String,
}

impl Config {
    /// Watching `interface` for the lab's LAN prefixes, serving on [`DEFAULT_METRICS`].
    pub fn new(interface: &str, pin_path: &Path, state_path: &Path) -> Config {
        Config {
            interface: interface.to_string(),
            lan_prefixes: LAN_PREFIXES.iter().map(|p| p.to_string()).collect(),
            poll_interval: None,
            metrics_listen: DEFAULT_METRICS,
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
        let poll = self
            .poll_interval
            .map_or(String::new(), |p| format!("poll_interval: {}ms\n", p.as_millis()));
        format!(
            "interface: {}\nlan_prefixes: [{}]\n{poll}metrics_listen: \"{}\"\npin_path: {}\nstate_path: {}\n{}",
            self.interface,
            prefixes.join(", "),
            self.metrics_listen,
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
             metrics_listen: \"127.0.0.1:9977\"\npin_path: /sys/fs/bpf/x\nstate_path: /tmp/s.json\n\
             inventory:\n  devices: []\ntc_attach: netlink\n"
        );
        let d =
            Config::new("br-lan", Path::new("/p"), Path::new("/s")).lan_prefixes(&["10.0.0.0/8"]);
        assert_eq!(d.effective_poll(), DEFAULT_POLL);
        assert!(!d.yaml().contains("poll_interval"), "{}", d.yaml());
        assert!(d.yaml().contains("lan_prefixes: [\"10.0.0.0/8\"]\n"));
    }
}
