//! The policy end to end: the real agent on a namespace lab, real traffic, a real resolver
//! (dnsmasq) and test GeoIP databases naming it, and real Alertmanagers (Debian's
//! `prometheus-alertmanager`) receiving the alerts, checked through Alertmanager's own API.
//!
//! The lab's "internet" in the test GeoIP database: 10.77.3.0/24 → CN (AS4808),
//! 10.77.4.0/24 → US (AS64500). The LAN is 10.77.1.0/24; dnsmasq answers on 10.77.1.1.

use std::{
    net::{IpAddr, SocketAddr, SocketAddrV6},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use lab::{
    LanKind, Topology, TopologyBuilder, UdpReceiver,
    agent::{Config, Launch},
    alertmanager::{self, Alertmanager, Setup},
    mmdb::GeoDatabases,
    prom::Scrape,
    send_udp,
    services::{self, DNS_A, DnsRecord},
};
use serde_json::Value;

const POLL: Duration = Duration::from_millis(250);
const PHONE_MAC: [u8; 6] = [0x64, 0x09, 0x80, 0x77, 0x00, 0x01];
const LAPTOP_MAC: [u8; 6] = [0x3c, 0xa9, 0xf4, 0x77, 0x00, 0x02];
const GUEST_MAC: [u8; 6] = [0x3c, 0xa9, 0xf4, 0x77, 0x00, 0x03];
const CAMERA_MAC: [u8; 6] = [0x2c, 0xaa, 0x8e, 0x77, 0x00, 0x04];
/// A phone on its private (randomized) MAC, named in the inventory with its maker.
const PRIVATE_MAC: [u8; 6] = [0x6a, 0x1f, 0x33, 0x77, 0x00, 0x05];

fn can_run() -> bool {
    lab::lab_tests_can_run("policy tests", &["dnsmasq", alertmanager::BINARY])
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// The lab's "internet" in the test GeoIP database.
const GEO: [lab::mmdb::Geo; 4] = [
    (&["10.77.3.0/24"], "CN", 4808, "China Unicom"),
    (&["10.77.4.0/24"], "US", 64500, "Example CDN"),
    // Public-looking remotes (`scope: remote`), and a database that places multicast in a
    // country, as real ones have blocks that cover it.
    (&["198.51.100.0/24"], "CN", 4808, "China Unicom"),
    (&["224.0.0.0/4", "ff00::/8"], "US", 64501, "Multicast Example"),
];

/// The agent under test and the Alertmanagers it sends to (shown when a test fails).
struct Agent<'t> {
    agent: lab::Agent<'t>,
    ams: Vec<&'t Alertmanager>,
}

impl<'t> Agent<'t> {
    /// Starts the agent with the lab's inventory (phone, laptop, guest), `alerting` and the
    /// policy text.
    fn start(topo: &'t Topology, pins: &lab::PinDir, alerting: &str, policy: &str) -> Agent<'t> {
        let dir = topo.lab.dir();
        std::fs::write(dir.join("policy.yaml"), policy).unwrap();
        let geo = GeoDatabases::write(dir, "", &GEO).unwrap();
        let config = Config::for_topology(topo, pins).poll(POLL).with(&geo.config_yaml()).with(&format!(
            "inventory:\n  devices:\n    - {{ mac: \"{phone}\", name: phone, group: phones }}\n\
             \x20   - {{ mac: \"{laptop}\", name: laptop, group: laptops }}\n    - {{ mac: \"{guest}\", name: guest-tablet, group: guests }}\n\
             \x20   - {{ mac: \"{camera}\", name: camera, group: cameras }}\n\x20   - {{ mac: \"{private}\", name: private-phone, group: phones, vendor: Xiaomi }}\n\x20 dhcp_leases: []\npolicy: policy.yaml\nexternal_url: http://gateway.lab:9977\n{alerting}",
            phone = lab::mac_text(&PHONE_MAC),
            laptop = lab::mac_text(&LAPTOP_MAC),
            guest = lab::mac_text(&GUEST_MAC),
            camera = lab::mac_text(&CAMERA_MAC),
            private = lab::mac_text(&PRIVATE_MAC),
        ));
        let launch = Launch::new(env!("CARGO_BIN_EXE_sensor")).log("info,sensor::alerting=debug");
        let agent = lab::Agent::start(&topo.lab, &topo.gateway.ns, launch, &config)
            .unwrap_or_else(|e| panic!("starting the agent: {e:#}"));
        Agent { agent, ams: Vec::new() }
    }

    fn scrape(&self) -> Scrape {
        self.agent.scrape().unwrap_or_else(|e| self.fail(&format!("{e:#}")))
    }

    /// A metric as it stands (counters show once saved: see `scrape_saved`).
    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let scrape = self.agent.scrape_saved(Duration::from_secs(10));
        scrape.unwrap_or_else(|e| self.fail(&format!("{e:#}"))).get(name, labels).unwrap_or(0.0)
    }

    /// Waits until `f` returns Some, failing with every log after `timeout`.
    fn wait<T>(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        lab::wait::until(what, timeout, Duration::from_millis(50), || Ok(f()))
            .unwrap_or_else(|e| self.fail(&format!("{e:#}")))
    }

    /// The active alerts of `am` with these labels, once there are exactly `n` of them.
    fn wait_active(
        &self,
        am: &Alertmanager,
        labels: &[(&str, &str)],
        n: usize,
        timeout: Duration,
    ) -> Vec<Value> {
        self.wait(&format!("{n} active alert(s) {labels:?} at {}", am.url()), timeout, || {
            am.active(labels).ok().filter(|a| a.len() == n)
        })
    }

    fn reload(&self, policy: &str) {
        std::fs::write(self.agent.config_path().with_file_name("policy.yaml"), policy).unwrap();
        self.agent.reload().unwrap();
    }

    fn fail(&self, msg: &str) -> ! {
        let alerts: Vec<(String, String)> = self
            .ams
            .iter()
            .map(|am| (format!("alerts at {}", am.url()), format!("{:#?}", am.alerts().ok())))
            .collect();
        let extra: Vec<(&str, String)> =
            alerts.iter().map(|(title, text)| (title.as_str(), text.clone())).collect();
        self.agent.report(msg, None, &[], &extra)
    }
}

fn labels_of(alert: &Value) -> Vec<(String, String)> {
    let mut l: Vec<(String, String)> = alert["labels"]
        .as_object()
        .map(|o| {
            o.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect()
        })
        .unwrap_or_default();
    l.sort();
    l
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

const STORY_POLICY: &str = r#"
rules:
  - name: PhoneCloudUploadWhileSyncOff
    match:
      client: {group: phones}
      destination: [{domain: xiaomi.net}, {country: CN}]
    condition: {volume: {direction: upload, above: 2MB, window: 15s}}
    severity: critical
    labels: {story: cloud-sync-off}
    summary: "{{ client }} uploaded {{ bytes }} to {{ destination }} ({{ country }})"
"#;

/// The story: small update checks raise nothing; a bulk upload to a CN cloud domain fires
/// within two poll intervals at two clustered Alertmanagers and at a third that was down when
/// it started; when the upload stops the alert resolves everywhere.
#[test]
fn bulk_upload_fires_at_every_alertmanager_and_resolves() {
    if !can_run() {
        return;
    }
    let pins = lab::PinDir::new("policy", "story");
    let topo = TopologyBuilder::new("gwp-story")
        .lan(LanKind::Bridge)
        .client("phone", PHONE_MAC)
        .remote(ip("10.77.3.10"))
        .remote(ip("10.77.3.11"))
        .build()
        .expect("building the lab");
    let (gw, phone, inet) =
        (topo.gateway.ns.clone(), topo.client("phone").ns.clone(), topo.internet.ns.clone());
    services::start_dnsmasq(
        &topo.lab,
        &gw,
        &[ip("10.77.1.1")],
        &[
            DnsRecord::new("upload.micloud.xiaomi.net", "10.77.3.10"),
            DnsRecord::new("update.miui.com", "10.77.3.11"),
        ],
        600,
    )
    .expect("starting dnsmasq");
    let am1 = Alertmanager::start(
        &topo.lab,
        Some(&gw),
        Setup::new("one", 19093).cluster(19094, &[19096]),
    )
    .unwrap();
    let am2 = Alertmanager::start(
        &topo.lab,
        Some(&gw),
        Setup::new("two", 19095).cluster(19096, &[19094]),
    )
    .unwrap();
    let alerting = "alerting:\n  alertmanagers:\n    - url: http://127.0.0.1:19093\n    - url: http://127.0.0.1:19095\n    - url: http://127.0.0.1:19097\n";
    let mut agent = Agent::start(&topo, &pins, alerting, STORY_POLICY);
    agent.ams = vec![&am1, &am2];

    // Routine: the phone checks for updates: tiny requests, 200 kB answers, for 3 seconds.
    services::dns_query(&phone, sa("10.77.1.1:53"), "update.miui.com", DNS_A).unwrap();
    let update = UdpReceiver::bind(&inet, sa("10.77.3.11:8080")).unwrap();
    let phone_rx = UdpReceiver::bind(&phone, sa("10.77.1.10:6000")).unwrap();
    for _ in 0..6 {
        send_udp(&phone, sa("10.77.1.10:6001"), update.addr(), 1, 300).unwrap();
        send_udp(&inet, sa("10.77.3.11:8081"), phone_rx.addr(), 200, 1000).unwrap();
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(2 * POLL);
    assert_eq!(
        agent.metric(
            "gwsensor_policy_alerts",
            &[("rule", "PhoneCloudUploadWhileSyncOff"), ("state", "firing")]
        ),
        0.0
    );
    assert!(
        am1.alerts().unwrap().is_empty(),
        "update checks must raise nothing: {:?}",
        am1.alerts()
    );
    // The rule counted the update checks (CN): its violations counter exists, at 0, so that
    // Prometheus's increase() will see the first violation.
    assert_eq!(
        agent.scrape().get(
            "gwsensor_policy_violations_total",
            &[("rule", "PhoneCloudUploadWhileSyncOff"), ("client", "phone")]
        ),
        Some(0.0)
    );

    // Cloud sync is "off"; the phone uploads 2.4 MB of photos to its maker's cloud in China.
    services::dns_query(&phone, sa("10.77.1.1:53"), "upload.micloud.xiaomi.net", DNS_A).unwrap();
    let cloud = UdpReceiver::bind(&inet, sa("10.77.3.10:443")).unwrap();
    send_udp(&phone, sa("10.77.1.10:40001"), cloud.addr(), 2000, 1200).unwrap();
    let sent_at = Instant::now();
    let sent_unix = unix_now();
    let expected = owned(&[
        ("alertname", "PhoneCloudUploadWhileSyncOff"),
        ("client", "phone"),
        ("destination", "xiaomi.net"),
        ("mac", "64:09:80:77:00:01"),
        ("severity", "critical"),
        ("story", "cloud-sync-off"),
    ]);
    let got = agent.wait_active(
        &am1,
        &[("alertname", "PhoneCloudUploadWhileSyncOff")],
        1,
        Duration::from_secs(10),
    );
    let seen_after = sent_at.elapsed();
    assert_eq!(labels_of(&got[0]), expected);
    // 2000 × (14 + 20 + 8 + 1200) B = 2,484,000 B, plus the 6 update requests (6 × 342 B,
    // same country) still inside the 15 s window: 2,486,052 B.
    assert_eq!(got[0]["annotations"]["summary"], "phone uploaded 2.5 MB to xiaomi.net (CN)");
    assert_eq!(
        got[0]["generatorURL"],
        "http://gateway.lab:9977/api/v1/flows?client=64:09:80:77:00:01"
    );
    // The evaluator stamps whole seconds: the alert started within two polls of the upload.
    let starts = humantime::parse_rfc3339(got[0]["startsAt"].as_str().unwrap()).unwrap();
    let starts = starts.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(
        starts <= (sent_unix + 2.0 * POLL.as_secs_f64()).ceil(),
        "startsAt {starts}, upload done at {sent_unix}"
    );
    eprintln!("alert visible at Alertmanager {seen_after:?} after the upload (poll {POLL:?})");
    let at2 = agent.wait_active(
        &am2,
        &[("alertname", "PhoneCloudUploadWhileSyncOff")],
        1,
        Duration::from_secs(5),
    );
    assert_eq!(labels_of(&at2[0]), expected);

    // The third Alertmanager was down all along; it comes back and gets the alert from the
    // sensor's retry queue (the resend interval, 1 min, has not come round).
    assert!(
        agent.metric(
            "gwsensor_alert_notifications_failed_total",
            &[("alertmanager", "http://127.0.0.1:19097")]
        ) >= 1.0
    );
    let am3 = Alertmanager::start(&topo.lab, Some(&gw), Setup::new("three", 19097)).unwrap();
    agent.ams.push(&am3);
    let at3 = agent.wait_active(
        &am3,
        &[("alertname", "PhoneCloudUploadWhileSyncOff")],
        1,
        Duration::from_secs(70),
    );
    assert_eq!(labels_of(&at3[0]), expected);
    assert_eq!(
        agent.metric(
            "gwsensor_policy_violations_total",
            &[("rule", "PhoneCloudUploadWhileSyncOff"), ("client", "phone")]
        ),
        1.0
    );

    // The upload stopped: once it leaves the 15 s window the alert resolves, everywhere.
    for am in [&am1, &am2, &am3] {
        agent.wait_active(
            am,
            &[("alertname", "PhoneCloudUploadWhileSyncOff")],
            0,
            Duration::from_secs(30),
        );
    }
    assert_eq!(
        agent.metric(
            "gwsensor_policy_alerts",
            &[("rule", "PhoneCloudUploadWhileSyncOff"), ("state", "firing")]
        ),
        0.0
    );
    for url in ["http://127.0.0.1:19093", "http://127.0.0.1:19095", "http://127.0.0.1:19097"] {
        assert!(
            agent.metric("gwsensor_alert_notifications_sent_total", &[("alertmanager", url)])
                >= 2.0,
            "{url}: firing and resolved"
        );
        assert_eq!(
            agent.metric("gwsensor_alertmanager_up", &[("alertmanager", url)]),
            1.0,
            "{url}"
        );
    }
}

const DEVICE_POLICY: &str = r#"
rules:
  - name: NewDevice
    condition: {new_device: {learning: 3s, window: 1h}}
    severity: info
  - name: DnsBypass
    condition: {dns_bypass: {window: 1h}}
"#;

/// A device never seen before and a DNS bypass each fire their rule; DNS to the router does
/// not. A broken policy sent with SIGHUP is refused (the running one stays); a good one is
/// applied without losing the firing alerts.
#[test]
fn new_device_and_dns_bypass_fire_and_reload_is_safe() {
    if !can_run() {
        return;
    }
    let pins = lab::PinDir::new("policy", "device");
    let topo = TopologyBuilder::new("gwp-dev")
        .lan(LanKind::Bridge)
        .client("phone", PHONE_MAC)
        .client("laptop", LAPTOP_MAC)
        .client("guest", GUEST_MAC)
        .remote(ip("10.77.4.53"))
        .build()
        .expect("building the lab");
    let gw = topo.gateway.ns.clone();
    let (phone, laptop, guest) = (
        topo.client("phone").ns.clone(),
        topo.client("laptop").ns.clone(),
        topo.client("guest").ns.clone(),
    );
    services::start_dnsmasq(
        &topo.lab,
        &gw,
        &[ip("10.77.1.1")],
        &[DnsRecord::new("cdn.example.org", "10.77.4.53")],
        600,
    )
    .unwrap();
    let am = Alertmanager::start(&topo.lab, Some(&gw), Setup::new("one", 19193)).unwrap();
    let mut agent = Agent::start(
        &topo,
        &pins,
        "alerting:\n  alertmanagers: [{url: \"http://127.0.0.1:19193\"}]\n",
        DEVICE_POLICY,
    );
    agent.ams = vec![&am];

    // Phone and laptop are there during the learning period: they are not new.
    services::dns_query(&phone, sa("10.77.1.1:53"), "cdn.example.org", DNS_A).unwrap();
    services::dns_query(&laptop, sa("10.77.1.1:53"), "cdn.example.org", DNS_A).unwrap();
    std::thread::sleep(Duration::from_secs(4));
    // The tablet joins after it.
    services::dns_query(&guest, sa("10.77.1.1:53"), "cdn.example.org", DNS_A).unwrap();
    let new = agent.wait_active(&am, &[("alertname", "NewDevice")], 1, Duration::from_secs(10));
    assert_eq!(
        labels_of(&new[0]),
        owned(&[
            ("alertname", "NewDevice"),
            ("client", "guest-tablet"),
            ("mac", "3c:a9:f4:77:00:03"),
            ("severity", "info")
        ])
    );

    // The laptop asks a resolver on the internet directly (plain DNS to 10.77.4.53:53).
    let _resolver = UdpReceiver::bind(&topo.internet.ns, sa("10.77.4.53:53")).unwrap();
    send_udp(&laptop, sa("10.77.1.11:5353"), sa("10.77.4.53:53"), 1, 40).unwrap();
    let bypass = agent.wait_active(&am, &[("alertname", "DnsBypass")], 1, Duration::from_secs(10));
    assert_eq!(
        labels_of(&bypass[0]),
        owned(&[
            ("alertname", "DnsBypass"),
            ("client", "laptop"),
            ("destination", "10.77.4.53"),
            ("mac", "3c:a9:f4:77:00:02"),
            ("severity", "warning")
        ])
    );
    // DNS to the router (dnsmasq on the LAN) was no bypass for anyone.
    std::thread::sleep(2 * POLL);
    assert_eq!(am.active(&[("alertname", "DnsBypass")]).unwrap().len(), 1);

    // SIGHUP with a broken policy: refused, counted, the old policy keeps running.
    agent.reload("rules:\n  - name: Broken\n    condition: {volume: {above: 5MB}}\n    match: {destination: {country: XX}}\n");
    agent.wait("the refused reload to show", Duration::from_secs(10), || {
        (agent.metric("gwsensor_config_reload_failures_total", &[]) == 1.0).then_some(())
    });
    assert_eq!(agent.metric("gwsensor_config_last_reload_successful", &[]), 0.0);
    assert_eq!(
        agent.metric("gwsensor_policy_alerts", &[("rule", "DnsBypass"), ("state", "firing")]),
        1.0
    );
    // A good one with an extra rule: applied; the firing alerts stay firing (same startsAt).
    let mut extended = DEVICE_POLICY.to_string();
    extended.push_str(
        "  - name: AnyUS\n    match: {destination: {country: US}}\n    condition: {traffic: {}}\n",
    );
    agent.reload(&extended);
    agent.wait("the good reload to apply", Duration::from_secs(10), || {
        (agent.metric("gwsensor_config_last_reload_successful", &[]) == 1.0).then_some(())
    });
    send_udp(&phone, sa("10.77.1.10:6001"), sa("10.77.4.53:9"), 1, 10).unwrap();
    agent.wait_active(
        &am,
        &[("alertname", "AnyUS"), ("client", "phone")],
        1,
        Duration::from_secs(10),
    );
    let still = agent.wait_active(&am, &[("alertname", "DnsBypass")], 1, Duration::from_secs(5));
    assert_eq!(still[0]["startsAt"], bypass[0]["startsAt"]);
}

/// The shipped policy, with the phones' week of learning replaced by `learning`.
fn shipped_policy(learning: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/policy.yaml");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(text.contains("learning: 7d"), "deploy/policy.yaml changed: adapt this test");
    text.replace("learning: 7d", &format!("learning: {learning}"))
}

/// A household's chatter on its own network (a camera's SSDP and mDNS, discovery broadcasts,
/// LLMNR, router solicitations, MLD reports) with the shipped policy: no alert, no new
/// destination, though the test database places multicast in the US. The same rules then fire
/// for the internet: CameraForeignCountry for a CN remote, PhoneNewDestination for a new one.
#[test]
fn a_households_own_network_raises_nothing() {
    if !can_run() {
        return;
    }
    let pins = lab::PinDir::new("policy", "local");
    let topo = TopologyBuilder::new("gwp-local")
        .lan(LanKind::Bridge)
        .client("phone", PHONE_MAC)
        .client("camera", CAMERA_MAC)
        .remote(ip("198.51.100.7"))
        .remote(ip("198.51.100.8"))
        .build()
        .expect("building the lab");
    let am =
        Alertmanager::start(&topo.lab, Some(&topo.gateway.ns), Setup::new("one", 19293)).unwrap();
    let mut agent = Agent::start(
        &topo,
        &pins,
        "alerting:\n  alertmanagers: [{url: \"http://127.0.0.1:19293\"}]\n",
        &shipped_policy("2s"),
    );
    agent.ams = vec![&am];
    let inet = topo.internet.ns.clone();
    let cloud = UdpReceiver::bind(&inet, sa("198.51.100.7:443")).unwrap();
    let other = UdpReceiver::bind(&inet, sa("198.51.100.8:443")).unwrap();
    let (phone, camera) = (topo.client("phone").clone(), topo.client("camera").clone());
    // The phone's first sighting starts its learning (2 s): what it reaches then is known.
    send_udp(&phone.ns, SocketAddr::new(phone.ipv4.into(), 6001), cloud.addr(), 1, 100).unwrap();
    cloud.wait_for(1, Duration::from_secs(5)).unwrap();
    std::thread::sleep(Duration::from_secs(3));

    let chatter = |c: &lab::Client| {
        let scope = lab::in_netns(&c.ns, || nix::net::if_::if_nametoindex(c.ifname.as_str()))
            .unwrap()
            .unwrap();
        let v4 = |port| SocketAddr::new(c.ipv4.into(), port);
        let v6 = |port| SocketAddr::new(c.ipv6.into(), port);
        let group6 =
            |g: &str, port| SocketAddr::V6(SocketAddrV6::new(g.parse().unwrap(), port, 0, scope));
        for (from, to) in [
            (v4(1900), sa("239.255.255.250:1900")),
            (v4(5353), sa("224.0.0.251:5353")),
            (v4(5355), sa("224.0.0.252:5355")),
            (v4(9), sa("255.255.255.255:9")),
            (v6(5353), group6("ff02::fb", 5353)),
            (v6(3702), group6("ff02::c", 3702)),
        ] {
            send_udp(&c.ns, from, to, 2, 120).unwrap_or_else(|e| panic!("{from} -> {to}: {e:#}"));
        }
        let group = |g: &str| SocketAddrV6::new(g.parse().unwrap(), 0, 0, scope);
        lab::send_icmpv6(&c.ns, c.ipv6, group("ff02::2"), 133, 2, 4).unwrap();
        lab::send_icmpv6(&c.ns, c.ipv6, group("ff02::16"), 143, 2, 24).unwrap();
    };
    chatter(&camera);
    chatter(&phone);
    // Every one of them counted: 6 UDP kinds and 2 ICMPv6 kinds, twice each, per client.
    for c in [&phone, &camera] {
        let mac = c.mac_text();
        agent.wait(&format!("{mac}'s chatter counted"), Duration::from_secs(10), || {
            let s = agent.scrape();
            let remotes: Vec<String> = s
                .series("gwsensor_remote_packets_total")
                .filter(|x| x.label("mac") == mac)
                .map(|x| x.label("remote").to_string())
                .collect();
            (remotes.len() >= 8).then_some(())
        });
        let s = agent.scrape();
        for remote in ["239.255.255.250", "224.0.0.251", "255.255.255.255", "ff02::2", "ff02::16"] {
            let labels = [("mac", mac.as_str()), ("remote", remote), ("direction", "upload")];
            assert_eq!(s.sum("gwsensor_remote_packets_total", &labels), 2.0, "{mac} {remote}");
        }
    }
    // Two more polls for the policy, then: nothing pending, nothing firing, nothing sent.
    std::thread::sleep(4 * POLL);
    let s = agent.scrape();
    for state in ["pending", "firing"] {
        assert_eq!(s.sum("gwsensor_policy_alerts", &[("state", state)]), 0.0, "{state}");
    }
    assert_eq!(am.alerts().unwrap(), Vec::<Value>::new());
    // The multicast series carry no country, whatever the database says.
    let countries: Vec<String> = s
        .series("gwsensor_destination_packets_total")
        .filter(|x| {
            x.label("destination").starts_with("2") || x.label("destination").starts_with("ff")
        })
        .filter(|x| !x.label("country").is_empty() || !x.label("asn").is_empty())
        .map(|x| format!("{} {} {}", x.label("destination"), x.label("country"), x.label("asn")))
        .collect();
    assert_eq!(countries, Vec::<String>::new());

    // The internet: the camera reaches CN, the phone a destination it never contacted.
    send_udp(&camera.ns, SocketAddr::new(camera.ipv4.into(), 6002), cloud.addr(), 1, 100).unwrap();
    send_udp(&phone.ns, SocketAddr::new(phone.ipv4.into(), 6003), other.addr(), 1, 100).unwrap();
    let foreign = agent.wait_active(
        &am,
        &[("alertname", "CameraForeignCountry")],
        1,
        Duration::from_secs(10),
    );
    assert_eq!(foreign[0]["labels"]["destination"], "CN");
    assert_eq!(foreign[0]["labels"]["client"], "camera");
    let new =
        agent.wait_active(&am, &[("alertname", "PhoneNewDestination")], 1, Duration::from_secs(10));
    assert_eq!(new[0]["labels"]["destination"], "198.51.100.8");
    std::thread::sleep(2 * POLL);
    assert_eq!(am.alerts().unwrap().len(), 2, "{:#?}", am.alerts());
}

/// The shipped story rule, end to end: a phone on a private MAC that the inventory names
/// (`vendor: Xiaomi`) uploads 6 MB split over two of the maker's domains; a phone with a
/// Xiaomi MAC uploads 6 MB split over three addresses in China. Each part is under the rule's
/// 5 MB; together each phone fires it once (`group_by: client`), and nothing else fires.
#[test]
fn the_shipped_story_rule_catches_a_private_mac_and_a_split_upload() {
    if !can_run() {
        return;
    }
    let pins = lab::PinDir::new("policy", "split");
    let cn = ["10.77.3.21", "10.77.3.22", "10.77.3.23"];
    let maker = [("upload.micloud.xiaomi.net", "10.77.4.31"), ("sync.xiaomi.com", "10.77.4.32")];
    let mut builder = TopologyBuilder::new("gwp-split")
        .lan(LanKind::Bridge)
        .client("phone", PHONE_MAC)
        .client("private", PRIVATE_MAC);
    for a in cn.iter().chain(maker.iter().map(|(_, a)| a)) {
        builder = builder.remote(ip(a));
    }
    let topo = builder.build().expect("building the lab");
    let gw = topo.gateway.ns.clone();
    let records: Vec<DnsRecord> = maker.iter().map(|(n, a)| DnsRecord::new(n, a)).collect();
    services::start_dnsmasq(&topo.lab, &gw, &[ip("10.77.1.1")], &records, 600).unwrap();
    let am = Alertmanager::start(&topo.lab, Some(&gw), Setup::new("one", 19393)).unwrap();
    let mut agent = Agent::start(
        &topo,
        &pins,
        "alerting:\n  alertmanagers: [{url: \"http://127.0.0.1:19393\"}]\n",
        &shipped_policy("7d"),
    );
    agent.ams = vec![&am];
    let inet = topo.internet.ns.clone();
    let (phone, private) = (topo.client("phone").clone(), topo.client("private").clone());
    for (n, _) in maker {
        services::dns_query(&private.ns, sa("10.77.1.1:53"), n, DNS_A).unwrap();
    }
    // 3,300 datagrams of 1,000 bytes to each maker domain; 2,200 to each CN address.
    let upload = |c: &lab::Client, port: u16, to: &str, datagrams: usize| {
        let rx = UdpReceiver::bind(&inet, SocketAddr::new(ip(to), 443)).unwrap();
        let from = SocketAddr::new(c.ipv4.into(), port);
        // Paced: the receiver's socket buffer, not the sensor, would lose a burst.
        for _ in 0..datagrams / 25 {
            send_udp(&c.ns, from, rx.addr(), 25, 1000).unwrap();
            std::thread::sleep(Duration::from_millis(3));
        }
        // UDP on a loaded machine may lose a few; the sizes leave room (6.6 MB each phone
        // at 5 MB), and this only checks the upload really crossed the gateway.
        rx.wait_for(datagrams as u64 * 95 / 100, Duration::from_secs(10)).unwrap();
    };
    for (i, (_, a)) in maker.iter().enumerate() {
        upload(&private, 7000 + i as u16, a, 3300);
    }
    for (i, a) in cn.iter().enumerate() {
        upload(&phone, 7100 + i as u16, a, 2200);
    }
    let fired = agent.wait_active(
        &am,
        &[("alertname", "PhoneCloudUploadWhileSyncOff")],
        2,
        Duration::from_secs(10),
    );
    let mut got: Vec<Vec<(String, String)>> = fired.iter().map(labels_of).collect();
    got.sort();
    let want = |client: &str, mac: &[u8; 6]| {
        owned(&[
            ("alertname", "PhoneCloudUploadWhileSyncOff"),
            ("client", client),
            ("mac", &lab::mac_text(mac)),
            ("severity", "critical"),
            ("story", "cloud-sync-off"),
        ])
    };
    assert_eq!(got, [want("phone", &PHONE_MAC), want("private-phone", &PRIVATE_MAC)]);
    // The private phone is reported as such, under the maker the inventory gave it.
    let s = agent.scrape();
    let info = [("mac", lab::mac_text(&PRIVATE_MAC)), ("vendor", "Xiaomi".into())];
    let info: Vec<(&str, &str)> = info.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut with_type = info.clone();
    with_type.push(("mac_type", "private"));
    assert_eq!(s.sum("gwsensor_client_info", &with_type), 1.0, "{info:?}");
    std::thread::sleep(2 * POLL);
    assert_eq!(am.alerts().unwrap().len(), 2, "{:#?}", am.alerts());
}
