//! The demo household and its "internet": named devices with vendor MACs, lab servers that
//! the lab's DNS and a demo GeoIP/ASN database attribute, and the agent's config and policy
//! derived from the examples in deploy/.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
};

use anyhow::{Context as _, Result, bail};
use lab::{LanKind, Topology, TopologyBuilder, mmdb::GeoDatabases, services::DnsRecord};
use serde_yaml::{Mapping, Value};

/// A device of the household, as the inventory names it.
pub struct Device {
    pub name: &'static str,
    pub what: &'static str,
    pub mac: [u8; 6],
    pub group: &'static str,
}

/// The Xiaomi phone whose cloud upload is the story (64:09:80 is Xiaomi's OUI, so the
/// policy's `vendor: "xiaomi*"` matches it through the IEEE registry).
pub const PHONE: Device = Device {
    name: "redmi-note",
    what: "Xiaomi phone",
    mac: [0x64, 0x09, 0x80, 0x4a, 0x1c, 0x07],
    group: "phones",
};
/// 3c:a9:f4 is Intel's.
pub const LAPTOP: Device = Device {
    name: "laptop",
    what: "laptop",
    mac: [0x3c, 0xa9, 0xf4, 0x12, 0x34, 0x56],
    group: "laptops",
};
/// 20:17:42 is LG Electronics'.
pub const TV: Device = Device {
    name: "living-room-tv",
    what: "LG TV",
    mac: [0x20, 0x17, 0x42, 0x5e, 0x10, 0x01],
    group: "media",
};
pub const DEVICES: [&Device; 3] = [&PHONE, &LAPTOP, &TV];

/// A server on the lab's internet (an address on the internet host's loopback), known to the
/// lab's DNS under `name`.
pub struct Server {
    pub name: &'static str,
    pub role: &'static str,
    pub ipv4: &'static str,
    pub ipv6: Option<&'static str>,
}

pub const UPDATE: Server =
    Server { name: "update.miui.com", role: "phone update server", ipv4: "10.77.3.11", ipv6: None };
pub const CLOUD: Server = Server {
    name: "upload.micloud.xiaomi.net",
    role: "cloud photo server",
    ipv4: "10.77.3.10",
    ipv6: None,
};
pub const VIDEO_CDN: Server = Server {
    name: "cdn-lab-01.nflxvideo.net",
    role: "video CDN",
    ipv4: "10.77.4.20",
    ipv6: Some("fd77:4::20"),
};
pub const WEB: Server = Server {
    name: "www.example.org",
    role: "web site on the CDN",
    ipv4: "10.77.4.21",
    ipv6: Some("fd77:4::21"),
};
pub const SERVERS: [&Server; 4] = [&UPDATE, &CLOUD, &VIDEO_CDN, &WEB];

/// The demo GeoIP/ASN database: (networks, country, ASN, AS organisation).
const GEO: [lab::mmdb::Geo; 2] = [
    (&["10.77.3.0/24"], "CN", 4808, "China Unicom Beijing Province Network"),
    (&["10.77.4.0/24", "fd77:4::/64"], "US", 64500, "Example CDN"),
];

/// Where the home router's DNS (dnsmasq) answers, on the gateway's LAN address.
pub const DNS_SERVER: &str = "10.77.1.1:53";

/// Inside the gateway namespace; the same ports are forwarded to the host when free.
pub const METRICS: &str = "127.0.0.1:9977";
/// The agent's JSON API (deploy/sensor.yaml's `api_listen`).
pub const API: &str = "127.0.0.1:9978";
pub const PROMETHEUS: &str = "127.0.0.1:9090";
pub const ALERTMANAGER_PORT: u16 = 9093;

/// The agent's poll interval in the demo (faster than the default 5 s, for a snappy demo).
pub const POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// The example rule the story triggers, and the demo's shorter window for it.
pub const RULE: &str = "PhoneCloudUploadWhileSyncOff";
pub const DEMO_WINDOW: &str = "30s";
pub const DEMO_WINDOW_SECS: u64 = 30;

impl Server {
    pub fn v4(&self, port: u16) -> SocketAddr {
        SocketAddr::new(parse_ip(self.ipv4), port)
    }

    pub fn v6(&self, port: u16) -> Option<SocketAddr> {
        self.ipv6.map(|a| SocketAddr::new(parse_ip(a), port))
    }

    /// (country, ASN, organisation) in the demo database.
    pub fn geo(&self) -> (&'static str, u32, &'static str) {
        let a = parse_ip(self.ipv4);
        GEO.iter()
            .find(|(nets, ..)| {
                nets.iter().any(|n| n.parse::<ipnet::IpNet>().is_ok_and(|n| n.contains(&a)))
            })
            .map(|(_, c, asn, org)| (*c, *asn, *org))
            .unwrap_or(("", 0, ""))
    }
}

fn parse_ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("address literal {s}: {e}"))
}

/// Builds the namespaces: the household on `br-lan`, the servers on the internet host.
pub fn build_network() -> Result<Topology> {
    let mut b = TopologyBuilder::new("gwdemo").lan(LanKind::Bridge);
    for d in DEVICES {
        b = b.client(d.name, d.mac);
    }
    for s in SERVERS {
        b = b.remote(parse_ip(s.ipv4));
        if let Some(v6) = s.ipv6 {
            b = b.remote(parse_ip(v6));
        }
    }
    b.build()
}

/// Every server's A and AAAA record, for the lab's dnsmasq.
pub fn dns_records() -> Vec<DnsRecord> {
    SERVERS
        .iter()
        .flat_map(|s| std::iter::once(s.ipv4).chain(s.ipv6).map(|a| DnsRecord::new(s.name, a)))
        .collect()
}

/// Writes the demo country and ASN databases into `dir`.
pub fn write_geoip(dir: &Path) -> Result<GeoDatabases> {
    GeoDatabases::write(dir, "demo-", &GEO)
}

/// What the demo changed in the example policy, for the screen.
pub struct DemoPolicy {
    pub yaml: String,
    /// The rule's upload threshold, in bytes.
    pub threshold: u64,
    pub threshold_text: String,
    /// The example's window and the demo's.
    pub window_was: String,
    pub window: String,
    pub window_secs: u64,
}

/// deploy/policy.yaml with one change: the story rule's window shortened to [`DEMO_WINDOW`],
/// so that the alert resolves within the demo instead of ten minutes after the upload.
pub fn demo_policy(example: &Path) -> Result<DemoPolicy> {
    let text = std::fs::read_to_string(example)
        .with_context(|| format!("reading {}", example.display()))?;
    let mut doc: Value =
        serde_yaml::from_str(&text).with_context(|| format!("parsing {}", example.display()))?;
    let rules = doc
        .get_mut("rules")
        .and_then(Value::as_sequence_mut)
        .with_context(|| format!("{}: no rules", example.display()))?;
    let rule = rules
        .iter_mut()
        .find(|r| r.get("name").and_then(Value::as_str) == Some(RULE))
        .with_context(|| format!("{}: the story's rule {RULE} is missing", example.display()))?;
    let volume = rule
        .get_mut("condition")
        .and_then(|c| c.get_mut("volume"))
        .and_then(Value::as_mapping_mut)
        .with_context(|| {
            format!(
                "{}: {RULE} is no longer a volume condition; update the demo's story",
                example.display()
            )
        })?;
    let threshold_text = volume
        .get("above")
        .and_then(Value::as_str)
        .with_context(|| format!("{}: {RULE}: volume.above is not a size", example.display()))?
        .to_string();
    let threshold = parse_size(&threshold_text)?;
    let window_was = volume.get("window").and_then(Value::as_str).unwrap_or("10m").to_string();
    volume.insert("window".into(), DEMO_WINDOW.into());
    let header = format!(
        "# {} for the demo: {RULE}'s window shortened from {window_was} to {DEMO_WINDOW},\n# so that its alert resolves within the demo.\n",
        example.display()
    );
    Ok(DemoPolicy {
        yaml: header + &serde_yaml::to_string(&doc)?,
        threshold,
        threshold_text,
        window_was,
        window: DEMO_WINDOW.to_string(),
        window_secs: DEMO_WINDOW_SECS,
    })
}

/// `5MB`, `500kB`, `5MiB` or a number of bytes (the policy's size syntax, the forms the
/// example uses).
fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().with_context(|| format!("size {s:?}"))?;
    let mult = match unit.trim() {
        "" | "B" => 1.0,
        "kB" | "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        u => bail!("size {s:?}: unknown unit {u:?}"),
    };
    Ok((n * mult) as u64)
}

/// The paths and addresses the config needs from the running lab.
pub struct ConfigInputs<'a> {
    pub lan_if: &'a str,
    pub pin_path: &'a Path,
    pub state_path: &'a Path,
    pub geoip: &'a GeoDatabases,
    pub alertmanager: &'a str,
    pub external_url: &'a str,
}

/// deploy/sensor.yaml adapted to the lab: (the YAML, the keys changed and why).
pub fn demo_config(example: &Path, i: &ConfigInputs) -> Result<(String, Vec<String>)> {
    let text = std::fs::read_to_string(example)
        .with_context(|| format!("reading {}", example.display()))?;
    let mut doc: Mapping =
        serde_yaml::from_str(&text).with_context(|| format!("parsing {}", example.display()))?;
    let devices: Vec<Value> = DEVICES
        .iter()
        .map(|d| {
            let mut m = Mapping::new();
            m.insert("mac".into(), lab::mac_text(&d.mac).into());
            m.insert("name".into(), d.name.into());
            m.insert("group".into(), d.group.into());
            Value::Mapping(m)
        })
        .collect();
    let mut inventory =
        doc.get("inventory").and_then(Value::as_mapping).cloned().unwrap_or_default();
    inventory.insert("devices".into(), Value::Sequence(devices));
    inventory.insert("dhcp_leases".into(), Value::Sequence(Vec::new()));
    let mut geoip = Mapping::new();
    geoip.insert("country_database".into(), i.geoip.country.display().to_string().into());
    geoip.insert("asn_database".into(), i.geoip.asn.display().to_string().into());
    let mut alerting = doc.get("alerting").and_then(Value::as_mapping).cloned().unwrap_or_default();
    let mut am = Mapping::new();
    am.insert("url".into(), i.alertmanager.into());
    alerting.insert("alertmanagers".into(), Value::Sequence(vec![Value::Mapping(am)]));

    let prefixes = Value::Sequence(lab::LAN_PREFIXES.iter().map(|p| Value::from(*p)).collect());
    let changes: Vec<(&str, Value, &str)> = vec![
        ("interface", i.lan_if.into(), "the lab gateway's LAN bridge"),
        ("lan_prefixes", prefixes, "the lab's LAN"),
        (
            "poll_interval",
            format!("{}s", POLL.as_secs()).into(),
            "faster than the default 5s, for a snappy demo",
        ),
        ("pin_path", i.pin_path.display().to_string().into(), "removed when the demo ends"),
        ("state_path", i.state_path.display().to_string().into(), "in the lab's directory"),
        ("inventory", Value::Mapping(inventory), "the three devices, with their groups"),
        ("geoip", Value::Mapping(geoip), "the demo GeoIP/ASN databases"),
        ("alerting", Value::Mapping(alerting), "the lab's Alertmanager"),
        ("external_url", i.external_url.into(), "so alert links work from this host"),
    ];
    let mut notes = Vec::new();
    for (key, value, why) in changes {
        doc.insert(key.into(), value);
        notes.push(format!("{key} ({why})"));
    }
    let header =
        format!("# {} adapted to the demo lab by `cargo xtask demo`.\n", example.display());
    Ok((header + &serde_yaml::to_string(&doc)?, notes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(path: &str) -> std::path::PathBuf {
        crate::process::workspace_root().join(path)
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("5MB").unwrap(), 5_000_000);
        assert_eq!(parse_size("500kB").unwrap(), 500_000);
        assert_eq!(parse_size("2MiB").unwrap(), 2_097_152);
        assert_eq!(parse_size("1200").unwrap(), 1200);
        assert!(parse_size("5 parsecs").is_err());
    }

    /// The demo changes exactly one thing in the example policy: the story rule's window.
    #[test]
    fn demo_policy_only_shortens_the_window() {
        let example = repo("deploy/policy.yaml");
        let p = demo_policy(&example).unwrap();
        assert_eq!(
            (p.threshold, p.window_was.as_str(), p.window.as_str()),
            (5_000_000, "10m", "30s")
        );
        let mut original: Value =
            serde_yaml::from_str(&std::fs::read_to_string(&example).unwrap()).unwrap();
        let mut demo: Value = serde_yaml::from_str(&p.yaml).unwrap();
        let window = |doc: &mut Value| -> Value {
            let rules = doc["rules"].as_sequence_mut().unwrap();
            let rule = rules.iter_mut().find(|r| r["name"] == RULE).unwrap();
            rule["condition"]["volume"].as_mapping_mut().unwrap().remove("window").unwrap()
        };
        assert_eq!(window(&mut original), Value::from("10m"));
        assert_eq!(window(&mut demo), Value::from("30s"));
        assert_eq!(original, demo);
    }

    #[test]
    fn servers_are_attributed() {
        assert_eq!(CLOUD.geo(), ("CN", 4808, "China Unicom Beijing Province Network"));
        assert_eq!(VIDEO_CDN.geo().0, "US");
        assert_eq!(dns_records().len(), 6);
    }
}
