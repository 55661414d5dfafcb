//! End-to-end naming: the real agent binary on a namespace lab with a real resolver (dnsmasq on
//! the gateway's LAN addresses), real TLS (openssl) and HTTP exchanges, test GeoIP databases
//! for the lab's "internet" prefixes, and exact numbers on /metrics, the JSON API and the CLI.
//!
//! Needs root (network namespaces, BPF), dnsmasq and openssl. Without root the tests print a
//! loud SKIPPED line and pass, unless CI=true or GWSENSOR_TEST_REQUIRE_PRIVILEGED=1, where they
//! fail (as in netns.rs).
//!
//! Frame sizes: the sensor counts whole Ethernet frames without FCS, so a UDP datagram of
//! P payload bytes is 14 (Ethernet) + 20 (IPv4) or 40 (IPv6) + 8 (UDP) + P bytes. DNS
//! exchanges are built by hand, so their sizes are known too. TCP byte counts are not
//! predictable (options, timing of ACKs): TCP flows are checked by comparing the two views the
//! agent gives of the same flow (the API's kernel counters and the destination series), after
//! the traffic stopped.
//!
//! The lab's "internet" in the test GeoIP databases:
//!   10.77.3.0/24, fd77:3::/64 → CN, AS4808 "China Unicom"
//!   10.77.4.0/24, fd77:4::/64 → US, AS64500 "Example CDN"
//! The LAN (10.77.1.0/24, fd77:1::/64), where the resolver is, is in neither.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    path::Path,
    process::Command,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use lab::{
    LanKind, Process, Topology, TopologyBuilder, UdpReceiver,
    mmdb::MmdbWriter,
    prom::{Scrape, format_sample},
    send_udp,
    services::{self, DNS_A, DNS_AAAA, DnsRecord},
};
use serde_json::Value;

const ETHERNET: u64 = 14;
const IPV4: u64 = 20;
const IPV6: u64 = 40;
const UDP: u64 = 8;

const POLL: Duration = Duration::from_millis(200);
const METRICS: &str = "127.0.0.1:9977";
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// (country, asn) labels of the lab's networks.
const CN: (&str, &str) = ("CN", "4808");
const US: (&str, &str) = ("US", "64500");
const NO_GEO: (&str, &str) = ("", "");

const XIAOMI_VENDOR: &str = "Xiaomi Communications Co Ltd";

/// True when the test can run (with `tools`); false (after a loud notice) when skipped.
fn privileged(tools: &[&str]) -> bool {
    lab::lab_tests_can_run("naming tests", tools)
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// The Ethernet frame of a UDP datagram of `payload` bytes to or from `peer`.
fn udp_frame(peer: IpAddr, payload: u64) -> u64 {
    ETHERNET + if peer.is_ipv4() { IPV4 } else { IPV6 } + UDP + payload
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

// ---------------------------------------------------------------------------------------
// Expected numbers, accumulated as traffic is sent.

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Dir {
    Upload,
    Download,
}

impl Dir {
    const ALL: [Dir; 2] = [Dir::Upload, Dir::Download];

    fn label(self) -> &'static str {
        match self {
            Dir::Upload => "upload",
            Dir::Download => "download",
        }
    }
}

/// (packets, bytes)
type Count = (u64, u64);

/// (destination, country, asn) as labelled.
type Dest = (String, String, String);

#[derive(Default, Clone)]
struct Ledger {
    /// client MAC → the `client` label it should have
    names: BTreeMap<String, String>,
    /// (client MAC, direction) → totals
    clients: BTreeMap<(String, Dir), Count>,
    /// (client MAC, direction, destination) → totals
    dests: BTreeMap<(String, Dir, Dest), Count>,
}

impl Ledger {
    fn name(&mut self, mac: &str, name: &str) {
        self.names.insert(mac.to_string(), name.to_string());
    }

    /// `packets` frames of `frame` bytes each between a client and a destination.
    fn add(&mut self, mac: &str, dir: Dir, dest: (&str, (&str, &str)), packets: u64, frame: u64) {
        let c = self.clients.entry((mac.to_string(), dir)).or_default();
        c.0 += packets;
        c.1 += packets * frame;
        let (d, (country, asn)) = dest;
        let key = (mac.to_string(), dir, (d.to_string(), country.to_string(), asn.to_string()));
        let e = self.dests.entry(key).or_default();
        e.0 += packets;
        e.1 += packets * frame;
    }

    /// Client totals only (destinations checked separately, e.g. TCP flows).
    fn add_client_only(&mut self, mac: &str, dir: Dir, packets: u64, bytes: u64) {
        let c = self.clients.entry((mac.to_string(), dir)).or_default();
        c.0 += packets;
        c.1 += bytes;
    }

    fn client(&self, mac: &str, dir: Dir) -> Count {
        self.clients.get(&(mac.to_string(), dir)).copied().unwrap_or_default()
    }

    fn label<'a>(&'a self, mac: &'a str) -> &'a str {
        self.names.get(mac).map_or(mac, String::as_str)
    }

    /// Every difference between the scrape and the ledger: client totals and destination
    /// series exact (`strict_dests`: no destination series beyond the ledger's for its
    /// clients), and, whatever the ledger, each client's destination series summing to its
    /// totals.
    fn mismatches(&self, scrape: &Scrape, strict_dests: bool) -> Vec<String> {
        let mut out = Vec::new();
        let mut cmp = |what: String, got: Option<f64>, want: u64| {
            if got != Some(want as f64) {
                out.push(format!(
                    "{what}: got {}, want {want}",
                    got.map_or("nothing".into(), |v| v.to_string())
                ));
            }
        };
        for ((mac, dir), (packets, bytes)) in &self.clients {
            let labels =
                [("client", self.label(mac)), ("mac", mac.as_str()), ("direction", dir.label())];
            let id = format!("{} {mac} {}", self.label(mac), dir.label());
            cmp(
                format!("client packets {id}"),
                scrape.get("gwsensor_client_packets_total", &labels),
                *packets,
            );
            cmp(
                format!("client bytes   {id}"),
                scrape.get("gwsensor_client_bytes_total", &labels),
                *bytes,
            );
        }
        for ((mac, dir, (dest, country, asn)), (packets, bytes)) in &self.dests {
            let labels = [
                ("client", self.label(mac)),
                ("mac", mac.as_str()),
                ("direction", dir.label()),
                ("destination", dest.as_str()),
                ("country", country.as_str()),
                ("asn", asn.as_str()),
            ];
            let id = format!("{} {} {dest} ({country}, {asn})", self.label(mac), dir.label());
            cmp(
                format!("destination packets {id}"),
                scrape.get("gwsensor_destination_packets_total", &labels),
                *packets,
            );
            cmp(
                format!("destination bytes   {id}"),
                scrape.get("gwsensor_destination_bytes_total", &labels),
                *bytes,
            );
        }
        let macs: BTreeSet<&String> = self.clients.keys().map(|(m, _)| m).collect();
        for s in scrape.series("gwsensor_destination_bytes_total") {
            let mac = s.label("mac").to_string();
            if !macs.contains(&mac) {
                continue;
            }
            let dir = if s.label("direction") == "upload" { Dir::Upload } else { Dir::Download };
            let key = (
                mac,
                dir,
                (
                    s.label("destination").to_string(),
                    s.label("country").to_string(),
                    s.label("asn").to_string(),
                ),
            );
            if strict_dests && !self.dests.contains_key(&key) {
                out.push(format!("unexpected series: {}", format_sample(s)));
            }
        }
        for mac in &macs {
            for dir in Dir::ALL {
                let sel = [("mac", mac.as_str()), ("direction", dir.label())];
                let dest_sum = scrape.sum("gwsensor_destination_bytes_total", &sel);
                let total = scrape.sum("gwsensor_client_bytes_total", &sel);
                if dest_sum != total {
                    out.push(format!(
                        "{} {mac} {}: destination series sum to {dest_sum} bytes, client total is {total}",
                        self.label(mac),
                        dir.label()
                    ));
                }
                let dest_sum = scrape.sum("gwsensor_destination_packets_total", &sel);
                let total = scrape.sum("gwsensor_client_packets_total", &sel);
                if dest_sum != total {
                    out.push(format!(
                        "{} {mac} {}: destination series sum to {dest_sum} packets, client total is {total}",
                        self.label(mac),
                        dir.label()
                    ));
                }
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------
// The agent under test, and what it shows.

/// One look at the agent: the scrape and the API's two views.
struct Obs {
    text: String,
    scrape: Scrape,
    clients: Value,
    flows: Value,
}

impl Obs {
    fn clients(&self) -> &[Value] {
        self.clients["clients"].as_array().map_or(&[], Vec::as_slice)
    }

    fn flows(&self) -> &[Value] {
        self.flows["flows"].as_array().map_or(&[], Vec::as_slice)
    }

    fn client_by_mac(&self, mac: &str) -> Option<&Value> {
        self.clients().iter().find(|c| c["mac"] == mac)
    }

    /// The flow of client `mac` to `remote`:`port`/`protocol`.
    fn flow(&self, mac: &str, remote: &str, protocol: &str, port: u16) -> Option<&Value> {
        self.flows().iter().find(|f| {
            f["mac"] == mac
                && f["remote_ip"] == remote
                && f["protocol"] == protocol
                && f["port"] == u64::from(port)
        })
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.scrape.get(name, labels)
    }
}

struct Agent<'t> {
    topo: &'t Topology,
    process: Process,
}

impl<'t> Agent<'t> {
    fn start(topo: &'t Topology, config_yaml: &str) -> Agent<'t> {
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
    fn wait_ready(&self) {
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

    fn get(&self, path: &str) -> anyhow::Result<String> {
        lab::http_get(&self.topo.gateway.ns, &format!("http://{METRICS}{path}"))
    }

    fn scrape_text(&self) -> anyhow::Result<String> {
        self.get("/metrics")
    }

    fn try_observe(&self) -> anyhow::Result<Obs> {
        let text = self.scrape_text()?;
        let scrape = Scrape::parse(&text)?;
        let clients = serde_json::from_str(&self.get("/api/v1/clients")?)?;
        let flows = serde_json::from_str(&self.get("/api/v1/flows")?)?;
        Ok(Obs { text, scrape, clients, flows })
    }

    fn observe(&self) -> Obs {
        self.try_observe()
            .unwrap_or_else(|e| self.fail(&format!("reading the agent failed: {e:#}"), None, &[]))
    }

    fn polls(&self) -> f64 {
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
    fn wait_poll(&self) {
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
    fn expect(&self, context: &str, check: impl Fn(&Obs) -> Vec<String>) -> Obs {
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
    fn wait_events(&self, kind: &str, n: f64) {
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

    fn fail(&self, msg: &str, obs: Option<&Obs>, complaints: &[String]) -> ! {
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
    fn cli(&self, args: &[&str]) -> String {
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

/// Writes the test country and ASN databases into `dir`; returns the config's `geoip:` block.
fn geo_databases(dir: &Path) -> String {
    let net = |s: &str| s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
    let mut country = MmdbWriter::new("GeoLite2-Country");
    let mut asn = MmdbWriter::new("GeoLite2-ASN");
    for prefix in ["10.77.3.0/24", "fd77:3::/64"] {
        country.insert_country(net(prefix), "CN");
        asn.insert_asn(net(prefix), 4808, "China Unicom");
    }
    for prefix in ["10.77.4.0/24", "fd77:4::/64"] {
        country.insert_country(net(prefix), "US");
        asn.insert_asn(net(prefix), 64500, "Example CDN");
    }
    let (c, a) = (dir.join("country.mmdb"), dir.join("asn.mmdb"));
    country.write(&c).expect("writing the country database");
    asn.write(&a).expect("writing the ASN database");
    format!("geoip:\n  country_database: {}\n  asn_database: {}\n", c.display(), a.display())
}

/// A static inventory entry.
struct Device<'a> {
    mac: &'a str,
    name: &'a str,
    group: &'a str,
    tags: &'a [(&'a str, &'a str)],
}

/// The agent's config: the lab's LAN, fast polls, private pins and state, the test GeoIP
/// databases, the given inventory and lease files, then `extra` top-level keys.
fn config(
    topo: &Topology,
    pins: &lab::PinDir,
    devices: &[Device],
    leases: &[&Path],
    extra: &str,
) -> String {
    let mut inventory = String::from("inventory:\n");
    if devices.is_empty() {
        inventory.push_str("  devices: []\n");
    } else {
        inventory.push_str("  devices:\n");
        for d in devices {
            let tags: Vec<String> = d.tags.iter().map(|(k, v)| format!("{k}: {v:?}")).collect();
            inventory.push_str(&format!(
                "    - {{ mac: \"{}\", name: {:?}, group: {:?}, tags: {{ {} }} }}\n",
                d.mac,
                d.name,
                d.group,
                tags.join(", ")
            ));
        }
    }
    let leases: Vec<String> =
        leases.iter().map(|p| format!("{:?}", p.display().to_string())).collect();
    inventory.push_str(&format!("  dhcp_leases: [{}]\n", leases.join(", ")));
    format!(
        "interface: {iface}\n\
         lan_prefixes: [\"{v4}\", \"{v6}\"]\n\
         poll_interval: {poll}ms\n\
         metrics_listen: {METRICS}\n\
         pin_path: {pin}\n\
         state_path: {state}\n\
         {geo}\
         {inventory}\
         {extra}",
        iface = topo.gateway.lan_if,
        v4 = lab::LAN_PREFIXES[0],
        v6 = lab::LAN_PREFIXES[1],
        poll = POLL.as_millis(),
        pin = pins.path().display(),
        state = topo.lab.dir().join("state.json").display(),
        geo = geo_databases(topo.lab.dir()),
    )
}

/// One real DNS query from client `mac` in `ns` to `server` (the gateway's dnsmasq), checked
/// to answer exactly `want`; the query and the answer go into the ledger as traffic to the
/// resolver's address (no name, no country, no ASN: it is on the LAN).
#[allow(clippy::too_many_arguments)]
fn resolve(
    agent: &Agent,
    ledger: &mut Ledger,
    mac: &str,
    ns: &str,
    server: SocketAddr,
    name: &str,
    qtype: u16,
    want: &[&str],
) {
    let x = services::dns_query(ns, server, name, qtype)
        .unwrap_or_else(|e| agent.fail(&format!("resolving {name}: {e:#}"), None, &[]));
    let got: Vec<String> = x.addrs.iter().map(|(a, _)| a.to_string()).collect();
    if x.rcode != 0 || got != want {
        agent.fail(
            &format!(
                "{name} type {qtype} via {server}: rcode {}, answer {got:?}, want {want:?}",
                x.rcode
            ),
            None,
            &[],
        );
    }
    let resolver = server.ip().to_string();
    let dest = (resolver.as_str(), NO_GEO);
    ledger.add(mac, Dir::Upload, dest, 1, udp_frame(server.ip(), x.query_len as u64));
    ledger.add(mac, Dir::Download, dest, 1, udp_frame(server.ip(), x.response_len as u64));
}

/// Checks one flow of the API against its expected naming.
#[allow(clippy::too_many_arguments)]
fn check_flow(
    o: &Obs,
    mac: &str,
    remote: &str,
    protocol: &str,
    port: u16,
    name: &str,
    domain: &str,
    geo: (&str, &str, u64),
) -> Vec<String> {
    let Some(f) = o.flow(mac, remote, protocol, port) else {
        return vec![format!("no flow {mac} -> {remote} {protocol}/{port} in /api/v1/flows")];
    };
    let mut out = Vec::new();
    let (country, as_org, asn) = geo;
    for (field, want) in [
        ("name", Value::from(name)),
        ("domain", Value::from(domain)),
        ("country", Value::from(country)),
        ("asn", Value::from(asn)),
        ("as_org", Value::from(as_org)),
    ] {
        if f[field] != want {
            out.push(format!(
                "flow {remote} {protocol}/{port}: {field} = {}, want {want}",
                f[field]
            ));
        }
    }
    out
}

fn check_value(
    o: &Obs,
    out: &mut Vec<String>,
    name: &str,
    labels: &[(&str, &str)],
    want: impl Fn(f64) -> bool,
    what: &str,
) {
    match o.value(name, labels) {
        Some(v) if want(v) => {}
        got => out.push(format!("{name}{labels:?} = {got:?}, want {what}")),
    }
}

/// The naming counters: at least `min` events of each kind read, none unparsable, none
/// dropped or rate-limited.
fn check_events(o: &Obs, min: &[(&str, f64)]) -> Vec<String> {
    let mut out = Vec::new();
    for (kind, n) in min {
        check_value(
            o,
            &mut out,
            "gwsensor_events_received_total",
            &[("kind", kind)],
            |v| v >= *n,
            &format!(">= {n}"),
        );
        check_value(
            o,
            &mut out,
            "gwsensor_kernel_events_total",
            &[("kind", kind), ("outcome", "sent")],
            |v| v >= *n,
            &format!(">= {n}"),
        );
    }
    for kind in ["dns", "tls", "http"] {
        check_value(
            o,
            &mut out,
            "gwsensor_name_parse_errors_total",
            &[("kind", kind)],
            |v| v == 0.0,
            "0",
        );
        for outcome in ["rate_limited", "ring_full"] {
            check_value(
                o,
                &mut out,
                "gwsensor_kernel_events_total",
                &[("kind", kind), ("outcome", outcome)],
                |v| v == 0.0,
                "0",
            );
        }
    }
    check_value(o, &mut out, "gwsensor_events_dropped_total", &[], |v| v == 0.0, "0");
    out
}

// ---------------------------------------------------------------------------------------
// 1. DNS answers name UDP flows, over IPv4 and IPv6.

#[test]
fn dns_answers_name_udp_destinations_ipv4_and_ipv6() {
    if !privileged(&["dnsmasq"]) {
        return;
    }
    let pins = lab::PinDir::new("naming", "dns");
    let topo = TopologyBuilder::new("gwn-dns")
        .lan(LanKind::Veth)
        .client("phone", [0x64, 0x09, 0x80, 0x77, 0x00, 0x01])
        .remote(ip("10.77.3.10"))
        .remote(ip("fd77:3::10"))
        .remote(ip("10.77.3.11"))
        .remote(ip("10.77.4.12"))
        .remote(ip("10.77.3.12"))
        .build()
        .expect("building the lab");
    let phone = topo.client("phone");
    let (mac, cns, inet) = (phone.mac_text(), phone.ns.clone(), topo.internet.ns.clone());

    // The gateway's resolver, on its LAN addresses only.
    services::start_dnsmasq(
        &topo.lab,
        &topo.gateway.ns,
        &[ip("10.77.1.1"), ip("fd77:1::1")],
        &[
            DnsRecord::new("api.micloud.xiaomi.net", "10.77.3.10"),
            DnsRecord::new("api.micloud.xiaomi.net", "fd77:3::10"),
            DnsRecord::new("update.miui.com", "10.77.3.11"),
            DnsRecord::new("cdn.example.org", "10.77.4.12"),
            DnsRecord::new("ota.tcp-only.net", "10.77.3.12"),
        ],
        600,
    )
    .expect("starting dnsmasq");
    let devices = [Device { mac: &mac, name: "phone", group: "", tags: &[] }];
    let agent = Agent::start(&topo, &config(&topo, &pins, &devices, &[], ""));
    let mut ledger = Ledger::default();
    ledger.name(&mac, "phone");

    let xiaomi4 = UdpReceiver::bind(&inet, sa("10.77.3.10:443")).unwrap();
    let xiaomi6 = UdpReceiver::bind(&inet, sa("[fd77:3::10]:443")).unwrap();
    let miui = UdpReceiver::bind(&inet, sa("10.77.3.11:8080")).unwrap();
    let cdn = UdpReceiver::bind(&inet, sa("10.77.4.12:443")).unwrap();
    let ota = UdpReceiver::bind(&inet, sa("10.77.3.12:443")).unwrap();
    let phone4 = UdpReceiver::bind(&cns, sa("10.77.1.10:6000")).unwrap();
    let phone6 = UdpReceiver::bind(&cns, sa("[fd77:1::10]:6000")).unwrap();

    // Real queries, as the phone's stub resolver makes them (A and AAAA, over both families),
    // each followed at once by traffic to the answer, as a device does: no waiting for the
    // agent. Started right after a poll, so that answers and traffic most likely fall in one
    // poll interval: "a flow named by the DNS answer that preceded it counts under its name
    // from its first bytes" (docs/design.md) is what this exercises.
    let (dns4, dns6) = (sa("10.77.1.1:53"), sa("[fd77:1::1]:53"));
    let xiaomi = ("xiaomi.net", CN);
    agent.wait_poll();
    let started = Instant::now();
    resolve(
        &agent,
        &mut ledger,
        &mac,
        &cns,
        dns4,
        "api.micloud.xiaomi.net",
        DNS_A,
        &["10.77.3.10"],
    );
    // 5 × (14 + 20 + 8 + 1000) = 5 × 1042 B to api.micloud.xiaomi.net over IPv4
    send_udp(&cns, sa("10.77.1.10:40001"), xiaomi4.addr(), 5, 1000).unwrap();
    ledger.add(&mac, Dir::Upload, xiaomi, 5, udp_frame(ip("10.77.3.10"), 1000));
    resolve(
        &agent,
        &mut ledger,
        &mac,
        &cns,
        dns6,
        "api.micloud.xiaomi.net",
        DNS_AAAA,
        &["fd77:3::10"],
    );
    // 3 × (14 + 40 + 8 + 900) = 3 × 962 B to the same name over IPv6: the same destination
    send_udp(&cns, sa("[fd77:1::10]:40002"), xiaomi6.addr(), 3, 900).unwrap();
    ledger.add(&mac, Dir::Upload, xiaomi, 3, udp_frame(ip("fd77:3::10"), 900));
    resolve(&agent, &mut ledger, &mac, &cns, dns4, "update.miui.com", DNS_A, &["10.77.3.11"]);
    // 4 × 542 B to update.miui.com
    send_udp(&cns, sa("10.77.1.10:40003"), miui.addr(), 4, 500).unwrap();
    ledger.add(&mac, Dir::Upload, ("miui.com", CN), 4, udp_frame(ip("10.77.3.11"), 500));
    resolve(&agent, &mut ledger, &mac, &cns, dns6, "cdn.example.org", DNS_A, &["10.77.4.12"]);
    // 2 × 342 B to cdn.example.org (resolved over IPv6, used over IPv4)
    send_udp(&cns, sa("10.77.1.10:40004"), cdn.addr(), 2, 300).unwrap();
    ledger.add(&mac, Dir::Upload, ("example.org", US), 2, udp_frame(ip("10.77.4.12"), 300));
    // DNS over TCP (what a resolver falls back to for a truncated answer). TCP's own bytes are
    // not predictable: the flow's counters from the API stand in for them below.
    let x = services::dns_query_tcp(&cns, dns4, "ota.tcp-only.net", DNS_A)
        .unwrap_or_else(|e| agent.fail(&format!("resolving over TCP: {e:#}"), None, &[]));
    if x.rcode != 0
        || x.addrs.iter().map(|(a, _)| a.to_string()).collect::<Vec<_>>() != ["10.77.3.12"]
    {
        agent.fail(
            &format!("ota.tcp-only.net over TCP: rcode {}, answer {:?}", x.rcode, x.addrs),
            None,
            &[],
        );
    }
    // 2 × 292 B to the name learnt over TCP
    send_udp(&cns, sa("10.77.1.10:40005"), ota.addr(), 2, 250).unwrap();
    ledger.add(&mac, Dir::Upload, ("tcp-only.net", CN), 2, udp_frame(ip("10.77.3.12"), 250));
    eprintln!(
        "queries and traffic took {:?} after a poll (poll interval {POLL:?})",
        started.elapsed()
    );
    ota.wait_for(2, DELIVERY_TIMEOUT).unwrap();
    xiaomi4.wait_for(5, DELIVERY_TIMEOUT).unwrap();
    xiaomi6.wait_for(3, DELIVERY_TIMEOUT).unwrap();
    miui.wait_for(4, DELIVERY_TIMEOUT).unwrap();
    cdn.wait_for(2, DELIVERY_TIMEOUT).unwrap();

    // Answers from the servers' ports: downloads under the same names.
    xiaomi4.reply(phone4.addr(), 2, 1200).unwrap();
    ledger.add(&mac, Dir::Download, xiaomi, 2, udp_frame(ip("10.77.3.10"), 1200));
    xiaomi6.reply(phone6.addr(), 1, 700).unwrap();
    ledger.add(&mac, Dir::Download, xiaomi, 1, udp_frame(ip("fd77:3::10"), 700));
    cdn.reply(phone4.addr(), 3, 100).unwrap();
    ledger.add(&mac, Dir::Download, ("example.org", US), 3, udp_frame(ip("10.77.4.12"), 100));
    phone4.wait_for(5, DELIVERY_TIMEOUT).unwrap();
    phone6.wait_for(1, DELIVERY_TIMEOUT).unwrap();

    // Written out: upload 5×1042 + 3×962 = 8096 B to xiaomi.net, 2168 to miui.com, 684 to
    // example.org; download 2×1242 + 762 = 3246 from xiaomi.net, 426 from example.org.
    let dest = |d: &str, dir: Dir, g: (&str, &str)| {
        ledger.dests[&(mac.clone(), dir, (d.to_string(), g.0.to_string(), g.1.to_string()))].1
    };
    assert_eq!(dest("xiaomi.net", Dir::Upload, CN), 8096);
    assert_eq!(dest("miui.com", Dir::Upload, CN), 2168);
    assert_eq!(dest("example.org", Dir::Upload, US), 684);
    assert_eq!(dest("xiaomi.net", Dir::Download, CN), 3246);
    assert_eq!(dest("example.org", Dir::Download, US), 426);

    let cn = ("CN", "China Unicom", 4808);
    let us = ("US", "Example CDN", 64500);
    let none = ("", "", 0);
    agent.expect("DNS-named UDP destinations", |o| {
        // The DNS-over-TCP flow counts under the resolver's address too, as much as the
        // kernel's flow counters say.
        let mut full = ledger.clone();
        match o.flow(&mac, "10.77.1.1", "tcp", 53) {
            Some(f) => {
                for dir in Dir::ALL {
                    let packets = f[format!("{}_packets", dir.label())].as_u64().unwrap_or(0);
                    let bytes = f[format!("{}_bytes", dir.label())].as_u64().unwrap_or(0);
                    let key =
                        (mac.clone(), dir, ("10.77.1.1".to_string(), String::new(), String::new()));
                    let e = full.dests.entry(key).or_default();
                    e.0 += packets;
                    e.1 += bytes;
                    full.add_client_only(&mac, dir, packets, bytes);
                }
            }
            None => return vec!["no flow to 10.77.1.1 tcp/53 in /api/v1/flows".to_string()],
        }
        let mut bad = full.mismatches(&o.scrape, true);
        bad.extend(check_flow(
            o,
            &mac,
            "10.77.3.10",
            "udp",
            443,
            "api.micloud.xiaomi.net",
            "xiaomi.net",
            cn,
        ));
        bad.extend(check_flow(
            o,
            &mac,
            "fd77:3::10",
            "udp",
            443,
            "api.micloud.xiaomi.net",
            "xiaomi.net",
            cn,
        ));
        bad.extend(check_flow(
            o,
            &mac,
            "10.77.3.11",
            "udp",
            8080,
            "update.miui.com",
            "miui.com",
            cn,
        ));
        bad.extend(check_flow(
            o,
            &mac,
            "10.77.4.12",
            "udp",
            443,
            "cdn.example.org",
            "example.org",
            us,
        ));
        bad.extend(check_flow(o, &mac, "10.77.1.1", "udp", 53, "", "", none));
        bad.extend(check_flow(o, &mac, "fd77:1::1", "udp", 53, "", "", none));
        bad.extend(check_flow(o, &mac, "10.77.1.1", "tcp", 53, "", "", none));
        bad.extend(check_flow(
            o,
            &mac,
            "10.77.3.12",
            "udp",
            443,
            "ota.tcp-only.net",
            "tcp-only.net",
            cn,
        ));
        bad.extend(check_events(o, &[("dns", 5.0)]));
        // One name per (client, address): 10.77.3.10, fd77:3::10, 10.77.3.11, 10.77.4.12,
        // 10.77.3.12.
        check_value(o, &mut bad, "gwsensor_names_cached", &[], |v| v >= 5.0, ">= 5");
        bad
    });
}

// ---------------------------------------------------------------------------------------
// 2. A flow's own name (TLS SNI, HTTP Host) wins over what DNS said about its address.

#[test]
fn sni_and_http_host_win_over_dns() {
    if !privileged(&["dnsmasq", "openssl"]) {
        return;
    }
    let pins = lab::PinDir::new("naming", "sni");
    let (tls_ip, http_ip) = ("10.77.3.20", "10.77.4.21");
    let topo = TopologyBuilder::new("gwn-sni")
        .lan(LanKind::Veth)
        .client("phone", [0x64, 0x09, 0x80, 0x77, 0x00, 0x02])
        .remote(ip(tls_ip))
        .remote(ip(http_ip))
        .build()
        .expect("building the lab");
    let phone = topo.client("phone");
    let (mac, cns, inet) = (phone.mac_text(), phone.ns.clone(), topo.internet.ns.clone());

    // DNS gives both addresses other names than the flows will carry.
    services::start_dnsmasq(
        &topo.lab,
        &topo.gateway.ns,
        &[ip("10.77.1.1")],
        &[DnsRecord::new("cdn.decoy-cdn.net", tls_ip), DnsRecord::new("edge.example.net", http_ip)],
        600,
    )
    .expect("starting dnsmasq");
    // TLS server (self-signed for the SNI name) and HTTP responder on the "internet".
    let (cert, key) =
        services::self_signed_cert(topo.lab.dir(), "photos", "photos.i.mi.com").unwrap();
    let tls_addr = SocketAddr::new(ip(tls_ip), 4443);
    let mut s_server = Command::new("openssl");
    s_server
        .args(["s_server", "-accept", &tls_addr.to_string(), "-www"])
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key);
    let s_server = topo.lab.spawn(&inet, s_server).expect("starting openssl s_server");
    services::wait_tcp_listening(&inet, tls_addr, &s_server, Duration::from_secs(10)).unwrap();
    let http =
        services::HttpResponder::start(&inet, SocketAddr::new(ip(http_ip), 80), "firmware v2\n")
            .unwrap();

    let devices = [Device { mac: &mac, name: "phone", group: "", tags: &[] }];
    let agent = Agent::start(&topo, &config(&topo, &pins, &devices, &[], ""));
    let mut ledger = Ledger::default();
    ledger.name(&mac, "phone");

    let dns4 = sa("10.77.1.1:53");
    resolve(&agent, &mut ledger, &mac, &cns, dns4, "cdn.decoy-cdn.net", DNS_A, &[tls_ip]);
    resolve(&agent, &mut ledger, &mac, &cns, dns4, "edge.example.net", DNS_A, &[http_ip]);
    agent.wait_events("dns", 2.0);

    // The DNS names do name these addresses: a UDP flow to each counts under them.
    let quic_tls = UdpReceiver::bind(&inet, SocketAddr::new(ip(tls_ip), 443)).unwrap();
    let quic_http = UdpReceiver::bind(&inet, SocketAddr::new(ip(http_ip), 443)).unwrap();
    send_udp(&cns, sa("10.77.1.10:40001"), quic_tls.addr(), 3, 200).unwrap();
    ledger.add(&mac, Dir::Upload, ("decoy-cdn.net", CN), 3, udp_frame(ip(tls_ip), 200));
    send_udp(&cns, sa("10.77.1.10:40002"), quic_http.addr(), 2, 100).unwrap();
    ledger.add(&mac, Dir::Upload, ("example.net", US), 2, udp_frame(ip(http_ip), 100));
    quic_tls.wait_for(3, DELIVERY_TIMEOUT).unwrap();
    quic_http.wait_for(2, DELIVERY_TIMEOUT).unwrap();

    // TLS: a short exchange with SNI photos.i.mi.com, started right after a poll.
    agent.wait_poll();
    let mut s_client = Command::new("openssl");
    s_client.args([
        "s_client",
        "-connect",
        &tls_addr.to_string(),
        "-servername",
        "photos.i.mi.com",
        "-ign_eof",
    ]);
    let out = services::output_in_netns(
        &cns,
        s_client,
        b"GET / HTTP/1.0\r\n\r\n",
        Duration::from_secs(15),
    )
    .unwrap_or_else(|e| agent.fail(&format!("openssl s_client: {e:#}"), None, &[]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !stdout.contains("HTTP/1.0 200 ok") {
        agent.fail(
            &format!(
                "openssl s_client failed ({}):\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
            None,
            &[],
        );
    }

    // HTTP: a plain request whose Host names the flow, sent several polls after the handshake:
    // the handshake's packets must still count under the Host name, not the DNS name.
    let request = b"GET /firmware.bin HTTP/1.1\r\nHost: firmware.example.org\r\nUser-Agent: lab\r\nConnection: close\r\n\r\n";
    let answer = services::tcp_exchange_after(&cns, http.addr(), POLL * 3, request)
        .unwrap_or_else(|e| agent.fail(&format!("HTTP request: {e:#}"), None, &[]));
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.0 200 OK") && answer.ends_with("firmware v2\n"), "{answer}");
    assert_eq!(http.hosts(), ["firmware.example.org"]);

    let cn = ("CN", "China Unicom", 4808);
    let us = ("US", "Example CDN", 64500);
    let obs = agent.expect("SNI and Host name their flows", |o| {
        let mut bad = Vec::new();
        bad.extend(check_flow(o, &mac, tls_ip, "tcp", 4443, "photos.i.mi.com", "mi.com", cn));
        bad.extend(check_flow(
            o,
            &mac,
            http_ip,
            "tcp",
            80,
            "firmware.example.org",
            "example.org",
            us,
        ));
        bad.extend(check_flow(
            o,
            &mac,
            tls_ip,
            "udp",
            443,
            "cdn.decoy-cdn.net",
            "decoy-cdn.net",
            cn,
        ));
        bad.extend(check_flow(o, &mac, http_ip, "udp", 443, "edge.example.net", "example.net", us));
        // The TCP flows, both views of each: the API's kernel counters and the series.
        let mut full = ledger.clone();
        for (remote, port, dest, g) in
            [(tls_ip, 4443, "mi.com", CN), (http_ip, 80, "example.org", US)]
        {
            let Some(f) = o.flow(&mac, remote, "tcp", port) else {
                continue;
            };
            for dir in Dir::ALL {
                let packets = f[format!("{}_packets", dir.label())].as_u64().unwrap_or(0);
                let bytes = f[format!("{}_bytes", dir.label())].as_u64().unwrap_or(0);
                if packets == 0 {
                    bad.push(format!(
                        "flow {remote} tcp/{port} carried no {} packets",
                        dir.label()
                    ));
                    continue;
                }
                // Series exist per direction once it carried traffic; a frame's size does not
                // matter here, the flow's totals are what its series must show.
                let key = (mac.clone(), dir, (dest.to_string(), g.0.to_string(), g.1.to_string()));
                let e = full.dests.entry(key).or_default();
                e.0 += packets;
                e.1 += bytes;
                full.add_client_only(&mac, dir, packets, bytes);
            }
        }
        // Exact: the SNI/Host flows count under mi.com / example.org and nothing of them under
        // decoy-cdn.net or example.net (what DNS said about their addresses); each client's
        // destination series sum to its totals.
        bad.extend(full.mismatches(&o.scrape, true));
        bad.extend(check_events(o, &[("dns", 2.0), ("tls", 1.0), ("http", 1.0)]));
        bad
    });
    // What a person reads: the flow list shows the names.
    let flows: Vec<String> =
        obs.flows().iter().map(|f| format!("{} {}", f["remote_ip"], f["name"])).collect();
    eprintln!("flows: {flows:?}");
}

// ---------------------------------------------------------------------------------------
// 3. One device is one MAC, whatever its addresses.

#[test]
fn one_client_across_address_changes() {
    if !privileged(&[]) {
        return;
    }
    let pins = lab::PinDir::new("naming", "rotate");
    let topo = TopologyBuilder::new("gwn-rot")
        .lan(LanKind::Veth)
        .client("phone", [0x64, 0x09, 0x80, 0x77, 0x00, 0x03])
        .remote(ip("10.77.3.1"))
        .remote(ip("fd77:3::1"))
        .build()
        .expect("building the lab");
    let phone = topo.client("phone");
    let (mac, cns, inet) = (phone.mac_text(), phone.ns.clone(), topo.internet.ns.clone());
    let devices = [Device { mac: &mac, name: "phone", group: "", tags: &[] }];
    let agent = Agent::start(&topo, &config(&topo, &pins, &devices, &[], ""));
    let mut ledger = Ledger::default();
    ledger.name(&mac, "phone");
    let cn = |remote: &str| -> (&'static str, (&'static str, &'static str)) {
        (if remote.contains(':') { "fd77:3::1" } else { "10.77.3.1" }, CN)
    };

    let srv4 = UdpReceiver::bind(&inet, sa("10.77.3.1:5000")).unwrap();
    let srv6 = UdpReceiver::bind(&inet, sa("[fd77:3::1]:5000")).unwrap();
    // Stable addresses first: 3 × 142 B over IPv4, 2 × 262 B over IPv6.
    send_udp(&cns, sa("10.77.1.10:40001"), srv4.addr(), 3, 100).unwrap();
    ledger.add(&mac, Dir::Upload, cn("10.77.3.1"), 3, udp_frame(ip("10.77.3.1"), 100));
    send_udp(&cns, sa("[fd77:1::10]:40002"), srv6.addr(), 2, 200).unwrap();
    ledger.add(&mac, Dir::Upload, cn("fd77:3::1"), 2, udp_frame(ip("fd77:3::1"), 200));
    srv4.wait_for(3, DELIVERY_TIMEOUT).unwrap();
    srv6.wait_for(2, DELIVERY_TIMEOUT).unwrap();
    // No DNS here: destinations are the addresses.
    agent.expect("before the new address", |o| ledger.mismatches(&o.scrape, true));

    // Privacy rotation: a new temporary address, used from now on. The gateway learns its
    // neighbour entry the way the lab sets all of them (permanent: no neighbour discovery on
    // the wire).
    lab::ip(&["-n", &cns, "-6", "addr", "add", "fd77:1::beef/64", "dev", "eth0", "nodad"]).unwrap();
    lab::ip(&[
        "-n",
        &topo.gateway.ns,
        "neigh",
        "replace",
        "fd77:1::beef",
        "lladdr",
        &mac,
        "dev",
        &topo.gateway.lan_if,
        "nud",
        "permanent",
    ])
    .unwrap();
    let beef = UdpReceiver::bind(&cns, sa("[fd77:1::beef]:6000")).unwrap();
    // 4 × (14 + 40 + 8 + 300) = 4 × 362 B up from the new address, 2 × 462 B down to it.
    send_udp(&cns, sa("[fd77:1::beef]:40003"), srv6.addr(), 4, 300).unwrap();
    ledger.add(&mac, Dir::Upload, cn("fd77:3::1"), 4, udp_frame(ip("fd77:3::1"), 300));
    srv6.wait_for(6, DELIVERY_TIMEOUT).unwrap();
    srv6.reply(beef.addr(), 2, 400).unwrap();
    ledger.add(&mac, Dir::Download, cn("fd77:3::1"), 2, udp_frame(ip("fd77:3::1"), 400));
    beef.wait_for(2, DELIVERY_TIMEOUT).unwrap();
    assert_eq!(ledger.client(&mac, Dir::Upload), (9, 3 * 142 + 2 * 262 + 4 * 362));
    assert_eq!(ledger.client(&mac, Dir::Download), (2, 2 * 462));

    agent.expect("after the address change", |o| {
        let mut bad = ledger.mismatches(&o.scrape, true);
        // Exactly one series per direction for the MAC: the device did not split in two.
        for name in ["gwsensor_client_bytes_total", "gwsensor_client_packets_total"] {
            let series: Vec<String> =
                o.scrape.matching(name, &[("mac", mac.as_str())]).map(format_sample).collect();
            if series.len() != 2 {
                bad.push(format!(
                    "{name} has {} series for {mac}, want 2 (one per direction): {series:?}",
                    series.len()
                ));
            }
        }
        // The remote series joins the flows from both IPv6 addresses: 2×262 + 4×362 up.
        let remote = |dir: &str| {
            o.value(
                "gwsensor_remote_bytes_total",
                &[
                    ("client", "phone"),
                    ("mac", mac.as_str()),
                    ("direction", dir),
                    ("remote", "fd77:3::1"),
                    ("protocol", "udp"),
                    ("port", "5000"),
                ],
            )
        };
        if remote("upload") != Some((2 * 262 + 4 * 362) as f64)
            || remote("download") != Some((2 * 462) as f64)
        {
            bad.push(format!(
                "remote fd77:3::1 udp/5000: upload {:?}, download {:?}",
                remote("upload"),
                remote("download")
            ));
        }
        let matching: Vec<&Value> = o.clients().iter().filter(|c| c["mac"] == mac).collect();
        match matching.as_slice() {
            [c] => {
                let want_ips = ["10.77.1.10", "fd77:1::10", "fd77:1::beef"];
                let ips: BTreeSet<&str> = c["ips"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                if ips != want_ips.into_iter().collect()
                    || c["ips"].as_array().map(Vec::len) != Some(3)
                {
                    bad.push(format!("client ips = {}, want {want_ips:?}", c["ips"]));
                }
                let (up, down) =
                    (ledger.client(&mac, Dir::Upload), ledger.client(&mac, Dir::Download));
                for (field, want) in [
                    ("client", Value::from("phone")),
                    ("upload_bytes", up.1.into()),
                    ("upload_packets", up.0.into()),
                    ("download_bytes", down.1.into()),
                    ("download_packets", down.0.into()),
                    ("flows", 3.into()),
                ] {
                    if c[field] != want {
                        bad.push(format!("client {field} = {}, want {want}", c[field]));
                    }
                }
            }
            other => bad
                .push(format!("{} clients with mac {mac} in /api/v1/clients, want 1", other.len())),
        }
        bad
    });
}

// ---------------------------------------------------------------------------------------
// 4 and 6. Device names: inventory, DHCP lease (re-read), OUI fallback, randomized MAC; and
// the `sensor clients` / `sensor flows` commands.

/// A CLI table as rows of column → cell, cut at the header's column starts.
fn parse_table(text: &str) -> (Vec<String>, Vec<BTreeMap<String, String>>) {
    let mut lines = text.lines();
    let header = lines.next().unwrap_or("");
    let mut starts = Vec::new();
    let mut names = Vec::new();
    let chars: Vec<char> = header.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        if !c.is_whitespace() && (i == 0 || chars[i - 1].is_whitespace()) {
            starts.push(i);
            let end =
                chars[i..].iter().position(|c| c.is_whitespace()).map_or(chars.len(), |n| i + n);
            names.push(chars[i..end].iter().collect::<String>());
        }
    }
    let rows = lines
        .map(|line| {
            let cs: Vec<char> = line.chars().collect();
            let mut row = BTreeMap::new();
            for (k, start) in starts.iter().enumerate() {
                let end = starts.get(k + 1).copied().unwrap_or(cs.len()).min(cs.len());
                let cell: String =
                    cs.get(*start..end).map(|s| s.iter().collect()).unwrap_or_default();
                row.insert(names[k].clone(), cell.trim().to_string());
            }
            row
        })
        .collect();
    (names, rows)
}

#[test]
fn device_names_inventory_dhcp_oui_and_cli() {
    if !privileged(&[]) {
        return;
    }
    let pins = lab::PinDir::new("naming", "devices");
    let topo = TopologyBuilder::new("gwn-dev")
        .lan(LanKind::Bridge)
        .client("redmi", [0x64, 0x09, 0x80, 0xaa, 0x00, 0x01]) // 10.77.1.10, in the inventory
        .client("tv", [0xa4, 0x77, 0x33, 0x00, 0x00, 0x02]) // 10.77.1.11, Google OUI, DHCP later
        .client("vacuum", [0x64, 0x09, 0x80, 0x12, 0x34, 0x56]) // 10.77.1.12, Xiaomi OUI, no name
        .client("laptop", [0x02, 0x77, 0x10, 0xab, 0xcd, 0xef]) // 10.77.1.13, locally administered
        .remote(ip("10.77.3.10"))
        .remote(ip("10.77.4.12"))
        .build()
        .expect("building the lab");
    let macs: BTreeMap<&str, String> =
        topo.clients.iter().map(|c| (c.name.as_str(), c.mac_text())).collect();
    let inet = topo.internet.ns.clone();
    let leases = topo.lab.dir().join("dhcp.leases"); // written later: missing at startup
    let devices = [Device {
        mac: &macs["redmi"],
        name: "redmi-note",
        group: "phones",
        tags: &[("owner", "alice")],
    }];
    let agent = Agent::start(&topo, &config(&topo, &pins, &devices, &[&leases], ""));

    let mut ledger = Ledger::default();
    ledger.name(&macs["redmi"], "redmi-note");
    ledger.name(&macs["tv"], "google-000002");
    ledger.name(&macs["vacuum"], "xiaomi-123456");
    ledger.name(&macs["laptop"], "randomized-abcdef");

    let srv_cn = UdpReceiver::bind(&inet, sa("10.77.3.10:443")).unwrap();
    let srv_us = UdpReceiver::bind(&inet, sa("10.77.4.12:443")).unwrap();
    let mut sent = 0;
    for (i, (client, packets, payload)) in
        [("redmi", 6u64, 1000u64), ("tv", 4, 800), ("vacuum", 3, 600), ("laptop", 2, 400)]
            .into_iter()
            .enumerate()
    {
        let c = topo.client(client);
        let from = SocketAddr::new(IpAddr::V4(c.ipv4), 40000 + i as u16);
        send_udp(&c.ns, from, srv_cn.addr(), packets as usize, payload as usize).unwrap();
        ledger.add(
            &macs[client],
            Dir::Upload,
            ("10.77.3.10", CN),
            packets,
            udp_frame(ip("10.77.3.10"), payload),
        );
        sent += packets;
    }
    // redmi-note also talks to the US CDN: 2 × 342 B.
    let redmi = topo.client("redmi");
    send_udp(&redmi.ns, sa("10.77.1.10:40010"), srv_us.addr(), 2, 300).unwrap();
    ledger.add(
        &macs["redmi"],
        Dir::Upload,
        ("10.77.4.12", US),
        2,
        udp_frame(ip("10.77.4.12"), 300),
    );
    srv_cn.wait_for(sent, DELIVERY_TIMEOUT).unwrap();
    srv_us.wait_for(2, DELIVERY_TIMEOUT).unwrap();

    let info = |o: &Obs, labels: &[(&str, &str)]| -> Vec<String> {
        match o.value("gwsensor_client_info", labels) {
            Some(1.0) => vec![],
            got => {
                let present: Vec<String> =
                    o.scrape.series("gwsensor_client_info").map(format_sample).collect();
                vec![format!(
                    "gwsensor_client_info{labels:?} = {got:?}, want 1; present: {present:#?}"
                )]
            }
        }
    };
    let client_fields = |o: &Obs, mac: &str, want: &[(&str, Value)]| -> Vec<String> {
        let Some(c) = o.client_by_mac(mac) else {
            return vec![format!("{mac} missing from /api/v1/clients")];
        };
        want.iter()
            .filter(|(k, v)| c[*k] != *v)
            .map(|(k, v)| format!("client {mac}: {k} = {}, want {v}", c[*k]))
            .collect()
    };
    let (redmi_mac, tv_mac, vacuum_mac, laptop_mac) =
        (&macs["redmi"], &macs["tv"], &macs["vacuum"], &macs["laptop"]);
    let tv_total = ledger.client(tv_mac, Dir::Upload);
    agent.expect("names before the lease file", |o| {
        let mut bad = ledger.mismatches(&o.scrape, true);
        bad.extend(info(
            o,
            &[
                ("client", "redmi-note"),
                ("mac", redmi_mac),
                ("group", "phones"),
                ("vendor", XIAOMI_VENDOR),
                ("source", "inventory"),
                ("tag_owner", "alice"),
            ],
        ));
        bad.extend(info(
            o,
            &[
                ("client", "google-000002"),
                ("mac", tv_mac),
                ("group", ""),
                ("vendor", "Google, Inc."),
                ("source", "fallback"),
            ],
        ));
        bad.extend(info(
            o,
            &[
                ("client", "xiaomi-123456"),
                ("mac", vacuum_mac),
                ("group", ""),
                ("vendor", XIAOMI_VENDOR),
                ("source", "fallback"),
            ],
        ));
        bad.extend(info(
            o,
            &[
                ("client", "randomized-abcdef"),
                ("mac", laptop_mac),
                ("group", ""),
                ("vendor", "randomized"),
                ("source", "fallback"),
            ],
        ));
        let n = o.scrape.series("gwsensor_client_info").count();
        if n != 4 {
            bad.push(format!("{n} gwsensor_client_info series, want 4"));
        }
        // The missing lease file is the one enrichment warning at startup.
        check_value(
            o,
            &mut bad,
            "gwsensor_enrichment_warnings",
            &[],
            |v| v == 1.0,
            "1 (the missing lease file)",
        );
        bad.extend(client_fields(
            o,
            redmi_mac,
            &[
                ("client", "redmi-note".into()),
                ("group", "phones".into()),
                ("vendor", XIAOMI_VENDOR.into()),
                ("source", "inventory".into()),
                ("tags", serde_json::json!({ "owner": "alice" })),
                ("ips", serde_json::json!(["10.77.1.10"])),
            ],
        ));
        bad.extend(client_fields(
            o,
            tv_mac,
            &[
                ("client", "google-000002".into()),
                ("source", "fallback".into()),
                ("vendor", "Google, Inc.".into()),
                ("tags", serde_json::json!({})),
            ],
        ));
        bad.extend(client_fields(
            o,
            laptop_mac,
            &[("client", "randomized-abcdef".into()), ("vendor", "randomized".into())],
        ));
        bad
    });

    // The DHCP server writes its leases (dnsmasq's format). The tv's hostname names it; the
    // inventory still wins for redmi-note; a `*` hostname names nothing.
    let expiry = unix_now() + 3600;
    let text = format!(
        "{expiry} {tv_mac} 10.77.1.11 living-room-tv 01:{tv_mac}\n\
         {expiry} {redmi_mac} 10.77.1.10 Redmi-Note-9 01:{redmi_mac}\n\
         {expiry} {laptop_mac} 10.77.1.13 * *\n"
    );
    std::fs::write(&leases, text).unwrap();
    ledger.name(tv_mac, "living-room-tv");
    agent.expect("names after the lease file appeared", |o| {
        let mut bad = ledger.mismatches(&o.scrape, true);
        bad.extend(info(
            o,
            &[
                ("client", "living-room-tv"),
                ("mac", tv_mac),
                ("group", ""),
                ("vendor", "Google, Inc."),
                ("source", "dhcp"),
            ],
        ));
        bad.extend(info(
            o,
            &[
                ("client", "redmi-note"),
                ("mac", redmi_mac),
                ("group", "phones"),
                ("vendor", XIAOMI_VENDOR),
                ("source", "inventory"),
                ("tag_owner", "alice"),
            ],
        ));
        bad.extend(info(
            o,
            &[
                ("client", "randomized-abcdef"),
                ("mac", laptop_mac),
                ("group", ""),
                ("vendor", "randomized"),
                ("source", "fallback"),
            ],
        ));
        // The tv's series continue under its new name; nothing is left under the old one.
        for s in o.scrape.samples.iter().filter(|s| s.label("client") == "google-000002") {
            bad.push(format!("series left under the fallback name: {}", format_sample(s)));
        }
        let up = o.value(
            "gwsensor_client_bytes_total",
            &[("client", "living-room-tv"), ("mac", tv_mac), ("direction", "upload")],
        );
        if up != Some(tv_total.1 as f64) {
            bad.push(format!("living-room-tv upload = {up:?}, want {}", tv_total.1));
        }
        bad.extend(client_fields(
            o,
            tv_mac,
            &[
                ("client", "living-room-tv".into()),
                ("source", "dhcp".into()),
                ("ips", serde_json::json!(["10.77.1.11"])),
            ],
        ));
        bad.extend(client_fields(
            o,
            redmi_mac,
            &[("client", "redmi-note".into()), ("source", "inventory".into())],
        ));
        bad
    });

    // 6. The CLI, run like a user on the router, against this agent.
    let json: Value = serde_json::from_str(&agent.cli(&["clients", "--json"]))
        .expect("sensor clients --json prints JSON");
    let clients = json["clients"].as_array().cloned().unwrap_or_default();
    let mut problems = Vec::new();
    let want_clients = [
        ("redmi-note", redmi_mac, "10.77.1.10", "inventory"),
        ("living-room-tv", tv_mac, "10.77.1.11", "dhcp"),
        ("xiaomi-123456", vacuum_mac, "10.77.1.12", "fallback"),
        ("randomized-abcdef", laptop_mac, "10.77.1.13", "fallback"),
    ];
    if clients.len() != want_clients.len() {
        problems.push(format!("sensor clients --json lists {} clients, want 4", clients.len()));
    }
    for (name, mac, addr, source) in want_clients {
        match clients.iter().find(|c| c["mac"] == mac.as_str()) {
            Some(c) => {
                if c["client"] != name
                    || c["ips"] != serde_json::json!([addr])
                    || c["source"] != source
                {
                    problems.push(format!("sensor clients --json: {c}, want client {name}, ips [{addr}], source {source}"));
                }
                let up = ledger.client(mac, Dir::Upload).1;
                if c["upload_bytes"] != up {
                    problems.push(format!(
                        "sensor clients --json: {name} upload_bytes {}, want {up}",
                        c["upload_bytes"]
                    ));
                }
            }
            None => problems.push(format!("sensor clients --json: no client {mac}")),
        }
    }
    let table = agent.cli(&["clients"]);
    let (header, rows) = parse_table(&table);
    if header != ["CLIENT", "MAC", "GROUP", "VENDOR", "IPS", "UPLOAD", "DOWNLOAD", "FLOWS"]
        || rows.len() != 4
    {
        problems.push(format!(
            "sensor clients: header {header:?} and {} rows, want 8 columns and 4 rows:\n{table}",
            rows.len()
        ));
    }
    // redmi-note: 6 × 1042 + 2 × 342 = 6936 B up ("6.9 kB"), 2 flows.
    assert_eq!(ledger.client(redmi_mac, Dir::Upload).1, 6936);
    let want_rows = [
        [
            "redmi-note",
            redmi_mac.as_str(),
            "phones",
            XIAOMI_VENDOR,
            "10.77.1.10",
            "6.9 kB",
            "0 B",
            "2",
        ],
        ["living-room-tv", tv_mac.as_str(), "", "Google, Inc.", "10.77.1.11", "3.4 kB", "0 B", "1"],
        [
            "xiaomi-123456",
            vacuum_mac.as_str(),
            "",
            XIAOMI_VENDOR,
            "10.77.1.12",
            "1.9 kB",
            "0 B",
            "1",
        ],
        [
            "randomized-abcdef",
            laptop_mac.as_str(),
            "",
            "randomized",
            "10.77.1.13",
            "884 B",
            "0 B",
            "1",
        ],
    ];
    for want in want_rows {
        let row = rows.iter().find(|r| r.get("CLIENT").map(String::as_str) == Some(want[0]));
        let got: Option<Vec<&str>> = row.map(|r| header.iter().map(|h| r[h].as_str()).collect());
        if got.as_deref() != Some(&want[..]) {
            problems.push(format!("sensor clients row {got:?}, want {want:?}"));
        }
    }
    let table = agent.cli(&["flows", "--client", "redmi-note"]);
    let (header, rows) = parse_table(&table);
    let got: Vec<Vec<&str>> =
        rows.iter().map(|r| header.iter().map(|h| r[h].as_str()).collect()).collect();
    let want = [
        vec!["redmi-note", "10.77.3.10", "udp/443", "CN", "AS4808", "6.3 kB", "0 B"],
        vec!["redmi-note", "10.77.4.12", "udp/443", "US", "AS64500", "684 B", "0 B"],
    ];
    if header != ["CLIENT", "REMOTE", "PROTO/PORT", "COUNTRY", "ASN", "UPLOAD", "DOWNLOAD"]
        || got != want
    {
        problems.push(format!("sensor flows --client redmi-note: header {header:?} rows {got:?}, want {want:?}:\n{table}"));
    }
    for who in ["redmi-note", "64:09:80:AA:00:01"] {
        let json: Value =
            serde_json::from_str(&agent.cli(&["flows", "--client", who, "--json"])).expect("JSON");
        let flows = json["flows"].as_array().cloned().unwrap_or_default();
        let remotes: Vec<(&str, u64)> = flows
            .iter()
            .map(|f| {
                (f["remote_ip"].as_str().unwrap_or(""), f["upload_bytes"].as_u64().unwrap_or(0))
            })
            .collect();
        if remotes != [("10.77.3.10", 6 * 1042u64), ("10.77.4.12", 2 * 342u64)]
            || flows.iter().any(|f| f["client"] != "redmi-note" || f["mac"] != redmi_mac.as_str())
        {
            problems.push(format!("sensor flows --client {who} --json: {remotes:?} ({})", json));
        }
    }
    if !problems.is_empty() {
        agent.fail("the CLI does not show what the agent sees", None, &problems);
    }
}

// ---------------------------------------------------------------------------------------
// 5. Series budget: per-client top-N and a global bound, the rest in `other`.

#[test]
fn series_budget_keeps_the_most_active_destinations() {
    if !privileged(&[]) {
        return;
    }
    let pins = lab::PinDir::new("naming", "budget");
    let a_remotes: Vec<String> = (1..=6).map(|i| format!("10.77.3.{i}")).collect();
    let b_remotes: Vec<String> = (1..=6).map(|i| format!("10.77.4.{i}")).collect();
    let mut builder = TopologyBuilder::new("gwn-bud")
        .lan(LanKind::Bridge)
        .client("a", [0x02, 0x77, 0x20, 0x00, 0x00, 0x0a])
        .client("b", [0x02, 0x77, 0x20, 0x00, 0x00, 0x0b]);
    for r in a_remotes.iter().chain(&b_remotes) {
        builder = builder.remote(ip(r));
    }
    let topo = builder.build().expect("building the lab");
    let (a, b) = (topo.client("a"), topo.client("b"));
    let (amac, bmac) = (a.mac_text(), b.mac_text());
    let devices = [
        Device { mac: &amac, name: "client-a", group: "", tags: &[] },
        Device { mac: &bmac, name: "client-b", group: "", tags: &[] },
    ];
    let agent = Agent::start(
        &topo,
        &config(
            &topo,
            &pins,
            &devices,
            &[],
            "destinations:\n  level: ip\n  top_per_client: 3\nseries_budget: 5\n",
        ),
    );

    // Datagrams of 1000 B payload (1042 B frames) per remote, sent in decreasing size over
    // both clients so that at every poll the remotes seen so far are the most active ones:
    // no remote ever holds a series it later loses (which would hide its bytes: a series that
    // ends keeps its value in memory, not in `other`).
    //   a: 20 16 12 | 8 4 2      b: 18 14 | 10 6 3 1
    // Per client the top 3 are a1-a3 and b1-b3; the budget of 5 then drops the least active,
    // b3 (10 packets).
    let a_packets = [20u64, 16, 12, 8, 4, 2];
    let b_packets = [18u64, 14, 10, 6, 3, 1];
    let mut order: Vec<(u64, bool, usize)> =
        a_packets.iter().enumerate().map(|(i, &n)| (n, true, i)).collect();
    order.extend(b_packets.iter().enumerate().map(|(i, &n)| (n, false, i)));
    order.sort_by_key(|x| std::cmp::Reverse(x.0));
    let frame = udp_frame(ip("10.77.3.1"), 1000);
    let mut receivers = Vec::new();
    for r in a_remotes.iter().chain(&b_remotes) {
        receivers.push(UdpReceiver::bind(&topo.internet.ns, SocketAddr::new(ip(r), 443)).unwrap());
    }
    for &(packets, is_a, i) in &order {
        let (client, remotes, n) = if is_a { (a, &a_remotes, 0) } else { (b, &b_remotes, 6) };
        let to = SocketAddr::new(ip(&remotes[i]), 443);
        let from = SocketAddr::new(IpAddr::V4(client.ipv4), 41000 + i as u16);
        send_udp(&client.ns, from, to, packets as usize, 1000).unwrap();
        // Delivered (so counted) before the next remote starts.
        receivers[n + i].wait_for(packets, DELIVERY_TIMEOUT).unwrap();
    }

    let mut ledger = Ledger::default();
    ledger.name(&amac, "client-a");
    ledger.name(&bmac, "client-b");
    let series: [(&str, &str, u64, (&str, &str)); 5] = [
        (&amac, "10.77.3.1", 20, CN),
        (&amac, "10.77.3.2", 16, CN),
        (&amac, "10.77.3.3", 12, CN),
        (&bmac, "10.77.4.1", 18, US),
        (&bmac, "10.77.4.2", 14, US),
    ];
    for (mac, remote, packets, geo) in series {
        ledger.add(mac, Dir::Upload, (remote, geo), packets, frame);
    }
    ledger.add(&amac, Dir::Upload, ("other", NO_GEO), 8 + 4 + 2, frame);
    ledger.add(&bmac, Dir::Upload, ("other", NO_GEO), 10 + 6 + 3 + 1, frame);
    assert_eq!(ledger.client(&amac, Dir::Upload), (62, 62 * 1042));
    assert_eq!(ledger.client(&bmac, Dir::Upload), (52, 52 * 1042));

    agent.expect("series budget", |o| {
        // Exact series, nothing else; each client's series and `other` sum to its totals.
        let mut bad = ledger.mismatches(&o.scrape, true);
        let named: Vec<String> = o
            .scrape
            .series("gwsensor_destination_bytes_total")
            .filter(|s| s.label("destination") != "other")
            .map(format_sample)
            .collect();
        if named.len() > 5 {
            bad.push(format!(
                "{} destination series besides other, budget is 5: {named:#?}",
                named.len()
            ));
        }
        // Remotes without a series: a4-a6 and b3-b6.
        check_value(
            o,
            &mut bad,
            "gwsensor_series_overflow",
            &[("family", "destination")],
            |v| v == 7.0,
            "7",
        );
        // The budget bounds remote series too (top_remotes is 20 per client here): the same
        // five remotes keep one.
        check_value(
            o,
            &mut bad,
            "gwsensor_series_overflow",
            &[("family", "remote")],
            |v| v == 7.0,
            "7",
        );
        let remotes: BTreeSet<String> = o
            .scrape
            .series("gwsensor_remote_bytes_total")
            .map(|s| format!("{} {} {}", s.label("client"), s.label("remote"), s.value))
            .collect();
        let want: BTreeSet<String> = series
            .iter()
            .map(|(mac, r, n, _)| format!("{} {r} {}", ledger.label(mac), n * frame))
            .chain([
                format!("client-a other {}", 14 * frame),
                format!("client-b other {}", 20 * frame),
            ])
            .collect();
        if remotes != want {
            bad.push(format!("remote series {remotes:#?}, want {want:#?}"));
        }
        bad
    });
}
