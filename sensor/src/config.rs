//! The agent's YAML configuration: parsing, defaults and validation with errors that name the
//! file, line and column, and say how to fix them.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;
use sensor_common::{
    DEFAULT_CLIENT_CAPACITY, DEFAULT_EVENTS_PER_SEC_PER_CPU, DEFAULT_FLOW_CAPACITY,
    MAX_LAN_PREFIXES,
};
use serde::Deserialize;

use crate::{
    enrich::{NamesConfig, geo::GeoConfig, inventory::InventoryConfig},
    export::{server::HttpConfig, web::WebConfig},
    kernel::loader::{TcAttach, XdpMode},
    types::{DestinationLevel, LocatedError, user_file},
};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// LAN interface: a plain interface or a bridge such as OpenWrt's `br-lan`.
    pub interface: String,
    /// Prefixes whose hosts are clients. Empty: the interface's own prefixes at startup.
    #[serde(default)]
    pub lan_prefixes: Vec<IpNet>,
    #[serde(default = "default_flow_capacity")]
    pub flow_capacity: u32,
    #[serde(default = "default_client_capacity")]
    pub client_capacity: u32,
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// `/metrics` and `/healthz`.
    #[serde(default = "default_metrics_listen")]
    pub metrics_listen: SocketAddr,
    /// TLS and authentication of `metrics_listen`.
    #[serde(default)]
    pub metrics_web: WebConfig,
    /// The JSON API (`/api/v1/...`, what `sensor clients` and `sensor flows` read).
    #[serde(default = "default_api_listen")]
    pub api_listen: SocketAddr,
    /// TLS and authentication of `api_listen`.
    #[serde(default)]
    pub api_web: WebConfig,
    /// Connection limits and timeouts of the HTTP server.
    #[serde(default)]
    pub http: HttpConfig,
    /// Remote series per client and direction; the rest are summed into `remote="other"`.
    #[serde(default = "default_top_remotes")]
    pub top_remotes: usize,
    #[serde(default = "default_remote_idle_expiry", with = "humantime_serde")]
    pub remote_idle_expiry: Duration,
    /// Per-destination series (names rather than addresses).
    #[serde(default)]
    pub destinations: DestinationsConfig,
    /// Most remote series, and most destination series, over all clients together.
    #[serde(default = "default_series_budget")]
    pub series_budget: usize,
    /// A client unseen this long is retired from the metrics until it is seen again.
    #[serde(default = "default_client_idle_expiry", with = "humantime_serde")]
    pub client_idle_expiry: Duration,
    /// How many remotes and destinations the agent remembers (with or without a series).
    #[serde(default)]
    pub tracking: TrackingConfig,
    #[serde(default = "default_pin_path")]
    pub pin_path: PathBuf,
    #[serde(default = "default_state_path")]
    pub state_path: PathBuf,
    #[serde(default = "default_state_save_interval", with = "humantime_serde")]
    pub state_save_interval: Duration,
    #[serde(default)]
    pub xdp_mode: XdpMode,
    #[serde(default)]
    pub tc_attach: TcAttach,
    /// Who the clients are: static inventory, DHCP leases, OUI registry.
    #[serde(default)]
    pub inventory: InventoryConfig,
    /// Country and ASN databases (MaxMind format).
    #[serde(default)]
    pub geoip: GeoConfig,
    /// How long names learnt from DNS, SNI and HTTP Host are kept.
    #[serde(default)]
    pub names: NamesConfig,
    /// Naming events (DNS answers, TLS ClientHellos, HTTP requests) the kernel may send per
    /// second and CPU; the excess is counted, not queued. 0 turns naming from traffic off.
    #[serde(default = "default_events_per_second")]
    pub events_per_second: u32,
    /// The policy file (docs/policy.md); relative paths are relative to this config file.
    /// Unset: no policy, no alerts.
    #[serde(default)]
    pub policy: Option<PathBuf>,
    /// How the sensor is reached from where alerts are read, for the alerts' generatorURL.
    /// Unset: `http://<api_listen>` (`https://` with `api_web.tls_cert_file`).
    #[serde(default)]
    pub external_url: Option<String>,
    /// Where alerts go (docs/alerting.md). No Alertmanagers: alerts are only metrics.
    #[serde(default)]
    pub alerting: crate::alerting::AlertingConfig,
}

/// Bounds on what is remembered per kind (remote endpoints, and destinations, each): a port
/// scan or a device talking to every address must not grow memory and the state file without
/// end. Beyond a bound the least active keys without a series are forgotten; their traffic
/// stays in `other`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrackingConfig {
    /// Remotes, and destinations, remembered per client.
    #[serde(default = "default_tracked_per_client")]
    pub per_client: usize,
    /// Remotes, and destinations, remembered over all clients together.
    #[serde(default = "default_tracked_total")]
    pub total: usize,
}

impl Default for TrackingConfig {
    fn default() -> Self {
        TrackingConfig { per_client: default_tracked_per_client(), total: default_tracked_total() }
    }
}

/// Sized for a 128 MB router: with them a scan of a million remotes left the agent at 41 MB
/// peak RSS and a 12 MB state file (docs/benchmarks.md, "Tracking under a scan").
fn default_tracked_per_client() -> usize {
    2_048
}
fn default_tracked_total() -> usize {
    16_384
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DestinationsConfig {
    /// What names a destination series.
    #[serde(default)]
    pub level: DestinationLevel,
    /// Destination series per client; the rest are summed into destination="other".
    #[serde(default = "default_top_remotes")]
    pub top_per_client: usize,
    /// A destination idle this long loses its series.
    #[serde(default = "default_destination_idle_expiry", with = "humantime_serde")]
    pub idle_expiry: Duration,
}

impl Default for DestinationsConfig {
    fn default() -> Self {
        DestinationsConfig {
            level: DestinationLevel::default(),
            top_per_client: default_top_remotes(),
            idle_expiry: default_destination_idle_expiry(),
        }
    }
}

fn default_events_per_second() -> u32 {
    DEFAULT_EVENTS_PER_SEC_PER_CPU
}
fn default_flow_capacity() -> u32 {
    DEFAULT_FLOW_CAPACITY
}
fn default_client_capacity() -> u32 {
    DEFAULT_CLIENT_CAPACITY
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_metrics_listen() -> SocketAddr {
    // Loopback by default: exposing traffic metadata to the LAN is the user's decision.
    SocketAddr::from(([127, 0, 0, 1], 9977))
}
/// Also the default `--api` of `sensor clients` and `sensor flows`.
pub const DEFAULT_API_LISTEN: SocketAddr =
    SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 9978));
fn default_api_listen() -> SocketAddr {
    // Loopback too: the API lists every flow of every device.
    DEFAULT_API_LISTEN
}
fn default_top_remotes() -> usize {
    20
}
fn default_remote_idle_expiry() -> Duration {
    Duration::from_secs(600)
}
fn default_destination_idle_expiry() -> Duration {
    Duration::from_secs(900)
}
fn default_series_budget() -> usize {
    10_000
}
fn default_client_idle_expiry() -> Duration {
    Duration::from_secs(3600)
}
fn default_pin_path() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/gateway-sensor")
}
fn default_state_path() -> PathBuf {
    PathBuf::from("/var/lib/gateway-sensor/state.json")
}
/// Zero: after every poll. Exported counters advance when the state holding them is saved.
fn default_state_save_interval() -> Duration {
    Duration::ZERO
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, LocatedError> {
        let text = user_file::read_user_file(
            path,
            "config file",
            "pass the path of a YAML config, e.g. deploy/sensor.yaml",
        )?;
        let mut config = Config::parse(&text, path)?;
        if let Some(policy) = &config.policy
            && policy.is_relative()
        {
            let dir = path.parent().unwrap_or(Path::new("."));
            config.policy = Some(dir.join(policy));
        }
        Ok(config)
    }

    /// Loads the policy file the config names (an empty policy when none is named).
    pub fn load_policy(&self) -> Result<crate::policy::Policy, LocatedError> {
        match &self.policy {
            Some(path) => crate::policy::Policy::load(path),
            None => Ok(crate::policy::Policy::default()),
        }
    }

    /// Base URL of the sensor's API as alert readers reach it.
    pub fn external_url(&self) -> String {
        self.external_url.clone().unwrap_or_else(|| self.api_base_url())
    }

    /// `http://<api_listen>`, `https://` with `api_web` TLS: the default `external_url`.
    pub fn api_base_url(&self) -> String {
        let scheme = if self.api_web.is_tls() { "https" } else { "http" };
        format!("{scheme}://{}", self.api_listen)
    }

    /// Parses and validates config text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, LocatedError> {
        user_file::check_yaml(text, path)?;
        let config: Config =
            serde_yaml::from_str(text).map_err(|e| LocatedError::from_yaml(&e, path, hint_for))?;
        config.validate(text, path)?;
        Ok(config)
    }

    fn validate(&self, text: &str, path: &Path) -> Result<(), LocatedError> {
        let fail = |key: &str, message: String, hint: &str| LocatedError {
            path: path.to_owned(),
            location: locate_key(text, key),
            message,
            hint: Some(hint.to_string()),
        };
        if self.interface.is_empty() || self.interface.len() >= libc::IFNAMSIZ {
            return Err(fail(
                "interface",
                format!("`interface` must be 1 to {} characters", libc::IFNAMSIZ - 1),
                "name the LAN interface, e.g. `interface: br-lan`",
            ));
        }
        if self.lan_prefixes.len() > MAX_LAN_PREFIXES {
            return Err(fail(
                "lan_prefixes",
                format!(
                    "{} LAN prefixes given; the kernel program checks at most {MAX_LAN_PREFIXES}",
                    self.lan_prefixes.len()
                ),
                "merge adjacent prefixes into larger ones",
            ));
        }
        self.check_bounds().map_err(|(key, message, hint)| LocatedError {
            path: path.to_owned(),
            location: locate_path(text, key),
            message,
            hint: Some(hint),
        })?;
        if same_port(self.metrics_listen, self.api_listen) {
            return Err(fail(
                "api_listen",
                format!(
                    "`api_listen` ({}) and `metrics_listen` ({}) are the same port",
                    self.api_listen, self.metrics_listen
                ),
                "give the API a port of its own, e.g. the default 127.0.0.1:9978",
            ));
        }
        for (section, web) in [("metrics_web", &self.metrics_web), ("api_web", &self.api_web)] {
            if let Err(e) = web.load() {
                return Err(LocatedError {
                    path: path.to_owned(),
                    location: locate_path(text, &format!("{section}.{}", e.web_key())),
                    message: format!("{section}.{e}"),
                    hint: Some(e.hint().to_string()),
                });
            }
        }
        if let Err(e) = self.inventory.validate() {
            return Err(fail("inventory", e.to_string(), "see docs/config.md, section inventory"));
        }
        if let Err(e) = self.alerting.validate() {
            return Err(fail("alerting", e.to_string(), "see docs/alerting.md"));
        }
        Ok(())
    }

    /// Every duration and size within a range the agent works in: the kernel accepts the
    /// maps, time arithmetic cannot overflow, and no value makes a thread die or wait for
    /// ever. Errors: (key, what, hint with the allowed range and the default).
    fn check_bounds(&self) -> Result<(), (&'static str, String, String)> {
        const MS: Duration = Duration::from_millis(1);
        const S: Duration = Duration::from_secs(1);
        const MIN: Duration = Duration::from_secs(60);
        const DAY: Duration = Duration::from_secs(86_400);
        let durations: [(&'static str, Duration, Duration, Duration, &str); 12] = [
            ("poll_interval", self.poll_interval, 100 * MS, 60 * MIN, "5s"),
            ("remote_idle_expiry", self.remote_idle_expiry, S, 30 * DAY, "10m"),
            ("client_idle_expiry", self.client_idle_expiry, S, 365 * DAY, "1h"),
            ("state_save_interval", self.state_save_interval, Duration::ZERO, DAY, "0s"),
            ("destinations.idle_expiry", self.destinations.idle_expiry, S, 30 * DAY, "15m"),
            ("names.dns_grace", self.names.dns_grace, Duration::ZERO, DAY, "5m"),
            ("names.flow_name_ttl", self.names.flow_name_ttl, S, 30 * DAY, "1h"),
            ("alerting.resend_interval", self.alerting.resend_interval, S, DAY, "1m"),
            (
                "alerting.resolved_retention",
                self.alerting.resolved_retention,
                Duration::ZERO,
                30 * DAY,
                "15m",
            ),
            ("alerting.timeout", self.alerting.timeout, 100 * MS, 10 * MIN, "10s"),
            ("http.header_timeout", self.http.header_timeout, 100 * MS, 10 * MIN, "10s"),
            ("http.write_timeout", self.http.write_timeout, 100 * MS, 60 * MIN, "30s"),
        ];
        for (key, value, min, max, default) in durations {
            if value < min || value > max {
                let show = |d: Duration| humantime::format_duration(d).to_string();
                return Err((
                    key,
                    format!("`{key}` is {}, outside {} to {}", show(value), show(min), show(max)),
                    format!("write a value in that range, e.g. the default `{default}`"),
                ));
            }
        }
        let top = self.top_remotes.max(self.destinations.top_per_client) as u64;
        let sizes: [(&'static str, u64, u64, u64, u64); 12] = [
            (
                "flow_capacity",
                self.flow_capacity.into(),
                16,
                MAX_FLOW_CAPACITY,
                DEFAULT_FLOW_CAPACITY.into(),
            ),
            (
                "client_capacity",
                self.client_capacity.into(),
                1,
                MAX_CLIENT_CAPACITY,
                DEFAULT_CLIENT_CAPACITY.into(),
            ),
            ("top_remotes", self.top_remotes as u64, 1, 1_000, 20),
            ("destinations.top_per_client", self.destinations.top_per_client as u64, 1, 1_000, 20),
            ("series_budget", self.series_budget as u64, 1, 1_000_000, 10_000),
            ("names.max_names", self.names.max_names as u64, 1, 10_000_000, 100_000),
            // A client's top series are never forgotten, and no more keys than the series
            // budget have one: the bounds must leave room for both.
            ("tracking.per_client", self.tracking.per_client as u64, top, 1 << 20, 2_048),
            (
                "tracking.total",
                self.tracking.total as u64,
                (self.tracking.per_client as u64).max(self.series_budget as u64),
                1 << 22,
                16_384,
            ),
            (
                "events_per_second",
                self.events_per_second.into(),
                0,
                1_000_000,
                DEFAULT_EVENTS_PER_SEC_PER_CPU.into(),
            ),
            ("alerting.queue_capacity", self.alerting.queue_capacity as u64, 1, 1_000_000, 10_000),
            ("http.max_connections", self.http.max_connections as u64, 1, 4_096, 64),
            (
                "http.max_connections_per_address",
                self.http.max_connections_per_address as u64,
                1,
                self.http.max_connections as u64,
                8,
            ),
        ];
        for (key, value, min, max, default) in sizes {
            if value < min || value > max {
                let hint = if key == "http.max_connections_per_address" {
                    format!("at most http.max_connections; the default is {default}")
                } else if key == "tracking.per_client" {
                    format!(
                        "at least top_remotes and destinations.top_per_client; the default is \
                         {default}"
                    )
                } else if key == "tracking.total" {
                    format!(
                        "at least tracking.per_client and series_budget; the default is {default}"
                    )
                } else {
                    format!("write a value in that range, e.g. the default {default}")
                };
                return Err((key, format!("`{key}` is {value}, outside {min} to {max}"), hint));
            }
        }
        Ok(())
    }
}

/// Whether two listen addresses would take the same port (the same address, or one of them
/// every address).
fn same_port(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Largest `flow_capacity`: 4Mi flows, about 600 MB of kernel memory with 8 CPUs; far beyond
/// what the kernel (E2BIG) and a router accept.
pub const MAX_FLOW_CAPACITY: u64 = 1 << 22;
/// Largest `client_capacity`.
pub const MAX_CLIENT_CAPACITY: u64 = 1 << 16;

/// Extra advice for the most common mistakes, keyed on serde's message.
fn hint_for(message: &str) -> Option<String> {
    if message.starts_with("unknown field") {
        Some("check the spelling; docs/config.md lists every key".into())
    } else if message.contains("missing field `interface`") {
        Some("add `interface: <LAN interface>`, e.g. `interface: br-lan`".into())
    } else if message.contains("invalid IP address syntax") || message.contains("IpNet") {
        Some("write prefixes in CIDR form, e.g. 192.168.1.0/24 or \"fd00::/64\"".into())
    } else if message.contains("duration") || message.contains("time unit") {
        Some("durations look like 500ms, 5s, 10m or 1h".into())
    } else if message.contains("SocketAddr") || message.contains("socket address") {
        Some("write host:port, e.g. 127.0.0.1:9977 or \"[::]:9977\"".into())
    } else if message.contains("basic_auth_users") {
        Some("write `basic_auth_users: {USER: BCRYPT_HASH}`".into())
    } else {
        None
    }
}

/// Line and column of a top-level `key:` in the YAML text, for semantic errors.
fn locate_key(text: &str, key: &str) -> Option<(usize, usize)> {
    locate_path(text, key)
}

/// Line and column of `section.key` (block style, any indentation) or a top-level `key`; the
/// section's line when the key is not on a line of its own (flow style), None when absent.
fn locate_path(text: &str, path: &str) -> Option<(usize, usize)> {
    let key_of = |line: &str, key: &str| {
        let trimmed = line.trim_start();
        let rest = trimmed.strip_prefix(key)?;
        rest.trim_start().starts_with(':').then_some(line.len() - trimmed.len() + 1)
    };
    let lines: Vec<&str> = text.lines().collect();
    let (section, key) = match path.split_once('.') {
        Some((section, key)) => (section, Some(key)),
        None => (path, None),
    };
    let start =
        lines.iter().position(|l| l.starts_with(section) && key_of(l, section).is_some())?;
    let Some(key) = key else { return Some((start + 1, 1)) };
    for (i, line) in lines.iter().enumerate().skip(start + 1) {
        if !line.is_empty() && !line.starts_with([' ', '\t', '#']) {
            break;
        }
        if let Some(column) = key_of(line, key) {
            return Some((i + 1, column));
        }
    }
    Some((start + 1, 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, LocatedError> {
        Config::parse(text, Path::new("sensor.yaml"))
    }

    #[test]
    fn minimal_config_takes_defaults() {
        let c = parse("interface: br-lan\n").unwrap();
        assert_eq!(c.interface, "br-lan");
        assert!(c.lan_prefixes.is_empty());
        assert_eq!(c.flow_capacity, 65_536);
        assert_eq!(c.client_capacity, 4_096);
        assert_eq!(c.poll_interval, Duration::from_secs(5));
        assert_eq!(c.metrics_listen, "127.0.0.1:9977".parse().unwrap());
        assert_eq!(c.top_remotes, 20);
        assert_eq!(c.xdp_mode, XdpMode::Auto);
        assert_eq!(c.tc_attach, TcAttach::Auto);
        assert_eq!(c.pin_path, PathBuf::from("/sys/fs/bpf/gateway-sensor"));
    }

    #[test]
    fn full_config_parses() {
        let c = parse(
            "interface: lan0\nlan_prefixes: [10.0.0.0/8, \"fd00::/64\"]\nflow_capacity: 1000\n\
             client_capacity: 10\npoll_interval: 250ms\nmetrics_listen: \"[::]:9100\"\n\
             top_remotes: 3\nremote_idle_expiry: 1h\npin_path: /sys/fs/bpf/x\n\
             state_path: /tmp/s.json\nstate_save_interval: 30s\nxdp_mode: generic\ntc_attach: netlink\n",
        )
        .unwrap();
        assert_eq!(
            c.lan_prefixes,
            vec!["10.0.0.0/8".parse::<IpNet>().unwrap(), "fd00::/64".parse().unwrap()]
        );
        assert_eq!(c.poll_interval, Duration::from_millis(250));
        assert_eq!(c.remote_idle_expiry, Duration::from_secs(3600));
        assert_eq!(c.xdp_mode, XdpMode::Generic);
        assert_eq!(c.tc_attach, TcAttach::Netlink);
        assert_eq!(c.metrics_listen, "[::]:9100".parse().unwrap());
    }

    #[test]
    fn unknown_key_names_line_column_and_hint() {
        let e = parse("interface: br-lan\npoll_intervall: 5s\n").unwrap_err();
        assert_eq!(e.location, Some((2, 1)));
        let text = e.to_string();
        assert!(text.starts_with("sensor.yaml:2:1: unknown field `poll_intervall`"), "{text}");
        assert!(text.contains("hint: check the spelling"), "{text}");
    }

    #[test]
    fn bad_prefix_is_located() {
        let e = parse("interface: br-lan\nlan_prefixes:\n  - 10.0.0.0/33\n").unwrap_err();
        assert_eq!(e.location.map(|l| l.0), Some(3), "{e}");
        assert!(e.to_string().contains("CIDR"), "{e}");
    }

    #[test]
    fn bad_duration_is_located() {
        let e = parse("interface: br-lan\npoll_interval: 5 parsecs\n").unwrap_err();
        assert_eq!(e.location.map(|l| l.0), Some(2), "{e}");
        assert!(e.to_string().contains("durations look like"), "{e}");
    }

    #[test]
    fn semantic_errors_point_at_the_key() {
        let e = parse("interface: br-lan\n\npoll_interval: 10ms\n").unwrap_err();
        assert_eq!(e.location, Some((3, 1)));
        assert!(e.message.contains("outside 100ms to 1h"), "{e}");
        let e = parse("interface: br-lan\ntop_remotes: 0\n").unwrap_err();
        assert_eq!(e.location, Some((2, 1)));
    }

    #[test]
    fn out_of_range_values_are_refused_with_the_range_and_their_line() {
        for (text, line, column, message) in [
            (
                "interface: br-lan\nalerting:\n  resend_interval: 18446744073709551615s\n",
                3,
                3,
                "`alerting.resend_interval` is 584542046090years 7months 15days 17h 5m 3s, outside 1s to 1day",
            ),
            (
                "interface: br-lan\nalerting:\n  timeout: 10000y\n",
                3,
                3,
                "`alerting.timeout` is 10000years, outside 100ms to 10m",
            ),
            (
                "interface: br-lan\nremote_idle_expiry: 10000y\n",
                2,
                1,
                "`remote_idle_expiry` is 10000years, outside 1s to 30days",
            ),
            (
                "interface: br-lan\nflow_capacity: 4294967295\n",
                2,
                1,
                "`flow_capacity` is 4294967295, outside 16 to 4194304",
            ),
            ("interface: br-lan\ntop_remotes: 0\n", 2, 1, "`top_remotes` is 0, outside 1 to 1000"),
            (
                "interface: br-lan\nhttp: {max_connections: 4, max_connections_per_address: 5}\n",
                2,
                1,
                "`http.max_connections_per_address` is 5, outside 1 to 4",
            ),
            (
                "interface: br-lan\nnames:\n  # a comment\n\n  flow_name_ttl: 0s\n",
                5,
                3,
                "`names.flow_name_ttl` is 0s, outside 1s to 30days",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!((e.location, e.message.as_str()), (Some((line, column)), message), "{text}");
            assert!(e.to_string().contains("hint: "), "{e}");
        }
        // The largest values allowed are accepted.
        parse(
            "interface: br-lan\nflow_capacity: 4194304\nclient_capacity: 65536\n\
             alerting: {resend_interval: 1d, timeout: 10m}\n",
        )
        .unwrap();
    }

    /// check-config and SIGHUP both read the files through `Config::load` and `load_policy`:
    /// a FIFO (or a directory, a device) is refused at once, named, not waited on.
    #[test]
    fn a_fifo_as_config_or_policy_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let mode = nix::sys::stat::Mode::S_IRWXU;
        let config_fifo = dir.path().join("fifo.yaml");
        nix::unistd::mkfifo(&config_fifo, mode).unwrap();
        let policy_fifo = dir.path().join("policy.yaml");
        nix::unistd::mkfifo(&policy_fifo, mode).unwrap();
        let config = dir.path().join("sensor.yaml");
        std::fs::write(&config, "interface: br-lan\npolicy: policy.yaml\n").unwrap();

        let start = std::time::Instant::now();
        let e = Config::load(&config_fifo).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}: the config file is a FIFO (named pipe), not a regular file\n  hint: pass \
                 the path of a YAML config, e.g. deploy/sensor.yaml (a regular file)",
                config_fifo.display()
            )
        );
        let e = Config::load(&config).unwrap().load_policy().unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}: the policy file is a FIFO (named pipe), not a regular file\n  hint: point \
                 `policy:` in the config at a policy YAML, e.g. deploy/policy.yaml (a regular \
                 file)",
                policy_fifo.display()
            )
        );
        assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
    }

    #[test]
    fn alerting_site_is_read_and_an_empty_one_refused_at_its_section() {
        let c = parse("interface: br-lan\nalerting:\n  site: home-1\n").unwrap();
        assert_eq!(c.alerting.site.as_deref(), Some("home-1"));
        assert_eq!(parse("interface: br-lan\n").unwrap().alerting.site, None);
        let e = parse("interface: br-lan\nalerting:\n  site: \"\"\n").unwrap_err();
        assert_eq!(e.location, Some((2, 1)));
        assert!(e.message.starts_with("alerting.site must be a name"), "{e}");
    }

    #[test]
    fn listeners_are_apart_and_their_web_settings_located() {
        let c = parse("interface: br-lan\n").unwrap();
        assert_eq!(c.api_listen, "127.0.0.1:9978".parse().unwrap());
        assert_eq!(c.external_url(), "http://127.0.0.1:9978");
        assert_eq!(c.metrics_web, WebConfig::default());
        let e =
            parse("interface: br-lan\nmetrics_listen: \"[::]:9977\"\napi_listen: 127.0.0.1:9977\n")
                .unwrap_err();
        assert_eq!(
            (e.location, e.message.as_str()),
            (
                Some((3, 1)),
                "`api_listen` (127.0.0.1:9977) and `metrics_listen` ([::]:9977) are the same port"
            )
        );
        parse("interface: br-lan\nmetrics_listen: \"[::]:9977\"\napi_listen: 127.0.0.1:9978\n")
            .unwrap();
        let e = parse(
            "interface: br-lan\nmetrics_web:\n  tls_cert_file: /nonexistent/c.pem\n  \
             tls_key_file: /nonexistent/k.pem\n",
        )
        .unwrap_err();
        assert_eq!(e.location, Some((3, 3)));
        assert_eq!(
            e.message,
            "metrics_web.tls_cert_file: cannot read /nonexistent/c.pem: No such file or \
             directory (os error 2)"
        );
        let e = parse("interface: br-lan\napi_web:\n  tls_key_file: /k.pem\n").unwrap_err();
        assert_eq!(
            (e.location, e.message.as_str()),
            (Some((3, 3)), "api_web.tls_key_file is set without tls_cert_file")
        );
        let e = parse(
            "interface: br-lan\napi_web:\n  basic_auth_users:\n    alice: \
             '$2y$31$JjkvHPOmCQOMaRmQtqBGWOx0mRm3zmUhpW4Jvw7g1wHSGqgvgwCoi'\n",
        )
        .unwrap_err();
        assert_eq!(
            (e.location, e.message.as_str()),
            (
                Some((3, 3)),
                "api_web.basic_auth_users: the hash of `alice` has cost 31, outside 4 to 17"
            )
        );
        assert!(e.to_string().contains("hint: write the bcrypt hash"), "{e}");
        let e = parse("interface: br-lan\napi_web: {basic_auth_users: {}}\n").unwrap_err();
        assert_eq!(
            (e.location, e.message.as_str()),
            (Some((2, 1)), "api_web.basic_auth_users has 0 users, outside 1 to 1000")
        );
    }

    #[test]
    fn missing_interface_says_what_to_add() {
        let e = parse("flow_capacity: 100\n").unwrap_err();
        assert!(e.to_string().contains("missing field `interface`"), "{e}");
        assert!(e.to_string().contains("interface: br-lan"), "{e}");
    }
}
