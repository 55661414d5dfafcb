//! End-to-end: the real agent binary on a namespace lab, real kernel traffic of known sizes,
//! and exact per-client and per-remote numbers on /metrics, across an agent restart.
//!
//! Needs root (network namespaces, BPF). Without it the tests print a loud SKIPPED line and
//! pass, unless CI=true or GWSENSOR_TEST_REQUIRE_PRIVILEGED=1, where they fail.
//!
//! Frame sizes: the sensor counts whole Ethernet frames without FCS, so a UDP datagram of
//! P payload bytes is 14 (Ethernet) + 20 (IPv4) or 40 (IPv6) + 8 (UDP) + P bytes.

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::{IpAddr, SocketAddr},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType};
use lab::{
    Agent, LanKind, Topology, TopologyBuilder, UdpReceiver,
    agent::{Config, Launch},
    ledger::{Count, Dir, ETHERNET, IPV4, IPV6, UDP, add_frames, compare},
    prom::Scrape,
    send_udp,
};

const POLL: Duration = Duration::from_millis(200);
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// True when the test can run; false (after a loud notice) when it should be skipped.
fn privileged() -> bool {
    lab::lab_tests_can_run("netns tests", &[])
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

// ---------------------------------------------------------------------------------------
// What the sensor should report, accumulated as traffic is sent.

#[derive(Default)]
struct Ledger {
    /// Names (from the inventory) and client totals.
    base: lab::ledger::Ledger,
    /// (client MAC, direction, remote IP, remote port) → totals; protocol is always udp here
    remotes: BTreeMap<(String, Dir, String, u16), Count>,
}

impl Ledger {
    fn for_topology(topo: &Topology) -> Ledger {
        let mut base = lab::ledger::Ledger::default();
        for c in &topo.clients {
            base.name(&c.mac_text(), &c.name);
        }
        Ledger { base, ..Ledger::default() }
    }

    /// Records `packets` UDP frames of `frame` bytes each between a client and a remote.
    fn udp(&mut self, mac: &str, dir: Dir, remote: SocketAddr, packets: u64, frame: u64) {
        self.base.add_client(mac, dir, packets, packets * frame);
        let r = self
            .remotes
            .entry((mac.to_string(), dir, remote.ip().to_string(), remote.port()))
            .or_default();
        add_frames(r, packets, frame);
    }

    fn client(&self, mac: &str, dir: Dir) -> Count {
        self.base.client(mac, dir)
    }

    /// Every difference between the scrape and the ledger, as readable lines.
    fn mismatches(&self, scrape: &Scrape) -> Vec<String> {
        let mut out = Vec::new();
        self.base.client_mismatches(scrape, &mut out);
        for ((mac, dir, remote, port), (packets, bytes)) in &self.remotes {
            let port = port.to_string();
            let labels = [
                ("client", self.base.label(mac)),
                ("mac", mac.as_str()),
                ("direction", dir.label()),
                ("remote", remote.as_str()),
                ("protocol", "udp"),
                ("port", port.as_str()),
            ];
            let id = format!("{mac} {} {remote} udp/{port}", dir.label());
            compare(
                &mut out,
                format!("remote packets {id}"),
                scrape.get("gwsensor_remote_packets_total", &labels),
                *packets,
            );
            compare(
                &mut out,
                format!("remote bytes   {id}"),
                scrape.get("gwsensor_remote_bytes_total", &labels),
                *bytes,
            );
        }
        // Anything counted for our clients that was not sent is noise or double counting.
        for name in ["gwsensor_remote_packets_total", "gwsensor_client_packets_total"] {
            for s in scrape.series(name) {
                let (mac, dir) = (s.label("mac"), Dir::of_label(s.label("direction")));
                let known = if name == "gwsensor_client_packets_total" {
                    self.base.clients.contains_key(&(mac.to_string(), dir))
                } else {
                    s.label("protocol") == "udp"
                        && s.label("port").parse::<u16>().is_ok_and(|p| {
                            self.remotes.contains_key(&(
                                mac.to_string(),
                                dir,
                                s.label("remote").to_string(),
                                p,
                            ))
                        })
                };
                if !known && s.value != 0.0 {
                    out.push(format!("unexpected series: {}", lab::prom::format_sample(s)));
                }
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------
// The agent under test.

/// The agent's config: the lab's LAN, fast polls, private pins and state, and an inventory
/// naming each lab client (so the `client` label is the client's name).
fn start_agent<'t>(topo: &'t Topology, pins: &lab::PinDir, extra: &str) -> Agent<'t> {
    start_binary(topo, pins, extra, Path::new(env!("CARGO_BIN_EXE_sensor")))
}

/// [`start_agent`] with another build of the agent.
fn start_binary<'t>(
    topo: &'t Topology,
    pins: &lab::PinDir,
    extra: &str,
    binary: &Path,
) -> Agent<'t> {
    let devices: String = topo
        .clients
        .iter()
        .map(|c| format!("    - {{ mac: \"{}\", name: {} }}\n", c.mac_text(), c.name))
        .collect();
    let config = Config::for_topology(topo, pins)
        .poll(POLL)
        .with(&format!("inventory:\n  devices:\n{devices}"))
        .with(extra);
    Agent::start(&topo.lab, &topo.gateway.ns, Launch::new(binary), &config)
        .unwrap_or_else(|e| panic!("starting the agent: {e:#}"))
}

/// The scrape, text and parsed; fails the test when there is none.
fn scrape_of(agent: &Agent) -> (String, Scrape) {
    let text = agent.scrape_text().unwrap_or_else(|e| agent.fail(&format!("scrape failed: {e:#}")));
    let parsed = Scrape::parse(&text)
        .unwrap_or_else(|e| agent.fail(&format!("unparsable scrape: {e:#}\n{text}")));
    (text, parsed)
}

/// Waits until the scrape matches the ledger and stays so for two polls.
fn expect(agent: &Agent, ledger: &Ledger, context: &str) {
    agent.expect(context, |o| ledger.mismatches(&o.scrape));
}

/// A real scrape's lint: every family in it is in docs/metrics.md with its type, then
/// `promtool check metrics` (names, types, HELP, counter suffixes).
fn promtool_check(agent: &Agent, text: &str) {
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/metrics.md");
    let documented = lab::docs::metric_reference(&reference).unwrap_or_else(|e| panic!("{e:#}"));
    let undocumented: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter(|l| {
            let mut words = l.split(' ');
            let (name, kind) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            documented.get(name).map(String::as_str) != Some(kind)
        })
        .collect();
    if !undocumented.is_empty() {
        agent.fail(&format!("families not in docs/metrics.md as typed: {undocumented:?}"));
    }
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if !lab::privileged_required() => {
            lab::notice(&format!("promtool check SKIPPED: promtool not runnable ({e})"));
            return;
        }
        Err(e) => panic!("promtool is needed for the metrics lint: {e}"),
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        agent.report(
            &format!("promtool check metrics failed ({}):\n{report}", out.status),
            None,
            &[],
            &[("scrape", text.to_string())],
        );
    }
}

fn assert_gauge(agent: &Agent, scrape: &Scrape, name: &str, labels: &[(&str, &str)], want: f64) {
    match scrape.value(name, labels) {
        Ok(v) if v == want => {}
        Ok(v) => agent.fail(&format!("{name}{labels:?} = {v}, want {want}")),
        Err(e) => agent.fail(&format!("{e:#}")),
    }
}

// ---------------------------------------------------------------------------------------

#[test]
fn plain_veth_exact_counts_survive_restart() {
    if !privileged() {
        return;
    }
    let pins = lab::PinDir::new("test", "plain");
    let topo = TopologyBuilder::new("gwt-plain")
        .lan(LanKind::Veth)
        .client("phone", [0x64, 0x09, 0x80, 0x77, 0x00, 0x01])
        .build()
        .expect("building the lab");
    let phone = topo.client("phone");
    let mac = phone.mac_text();
    let inet = &topo.internet.ns;

    let mut agent = start_agent(&topo, &pins, "");
    let (_, scrape) = scrape_of(&agent);
    assert_gauge(
        &agent,
        &scrape,
        "gwsensor_xdp_attach_mode",
        &[("interface", "lan0"), ("mode", "driver")],
        1.0,
    );

    // Servers on the internet host and the phone, bound before anything is sent.
    let srv4 = UdpReceiver::bind(inet, sa("10.77.2.2:5001")).unwrap();
    let srv6 = UdpReceiver::bind(inet, sa("[fd77:2::2]:5001")).unwrap();
    let phone4 = UdpReceiver::bind(&phone.ns, sa("10.77.1.10:6000")).unwrap();
    let phone6 = UdpReceiver::bind(&phone.ns, sa("[fd77:1::10]:6000")).unwrap();
    let mut ledger = Ledger::for_topology(&topo);

    // Upload, IPv4: 10 × 1000 B payload → 10 frames of 14 + 20 + 8 + 1000 = 1042 B.
    send_udp(&phone.ns, sa("10.77.1.10:40001"), srv4.addr(), 10, 1000).unwrap();
    ledger.udp(&mac, Dir::Upload, srv4.addr(), 10, ETHERNET + IPV4 + UDP + 1000);
    // Upload, IPv6: 4 × 700 B → 4 frames of 14 + 40 + 8 + 700 = 762 B.
    send_udp(&phone.ns, sa("[fd77:1::10]:40002"), srv6.addr(), 4, 700).unwrap();
    ledger.udp(&mac, Dir::Upload, srv6.addr(), 4, ETHERNET + IPV6 + UDP + 700);
    // Download, IPv4: 6 × 1200 B from port 5002 → 6 frames of 14 + 20 + 8 + 1200 = 1242 B.
    send_udp(inet, sa("10.77.2.2:5002"), phone4.addr(), 6, 1200).unwrap();
    ledger.udp(&mac, Dir::Download, sa("10.77.2.2:5002"), 6, ETHERNET + IPV4 + UDP + 1200);
    // Download, IPv6: 5 × 500 B from port 5003 → 5 frames of 14 + 40 + 8 + 500 = 562 B.
    send_udp(inet, sa("[fd77:2::2]:5003"), phone6.addr(), 5, 500).unwrap();
    ledger.udp(&mac, Dir::Download, sa("[fd77:2::2]:5003"), 5, ETHERNET + IPV6 + UDP + 500);

    for (r, n) in [(&srv4, 10), (&srv6, 4), (&phone4, 6), (&phone6, 5)] {
        r.wait_for(n, DELIVERY_TIMEOUT).unwrap();
    }
    // The same totals written out: upload 10 × 1042 + 4 × 762, download 6 × 1242 + 5 × 562.
    assert_eq!(ledger.client(&mac, Dir::Upload), (14, 10_420 + 3_048));
    assert_eq!(ledger.client(&mac, Dir::Download), (11, 7_452 + 2_810));
    expect(&agent, &ledger, "before restart");
    let (text, _) = scrape_of(&agent);
    promtool_check(&agent, &text);

    // Restart: the counts must come back exactly (pinned maps + state file), and new
    // traffic must add to them, not restart from zero nor count anything twice.
    if let Err(e) = agent.restart(Duration::from_secs(15)) {
        agent.fail(&format!("{e:#}"));
    }
    let (_, scrape) = scrape_of(&agent);
    assert_gauge(
        &agent,
        &scrape,
        "gwsensor_xdp_attach_mode",
        &[("interface", "lan0"), ("mode", "driver")],
        1.0,
    );
    expect(&agent, &ledger, "right after restart");

    let srv4b = UdpReceiver::bind(inet, sa("10.77.2.2:5004")).unwrap();
    // Upload, IPv4, same series again: 3 × 1042 B.
    send_udp(&phone.ns, sa("10.77.1.10:40001"), srv4.addr(), 3, 1000).unwrap();
    ledger.udp(&mac, Dir::Upload, srv4.addr(), 3, ETHERNET + IPV4 + UDP + 1000);
    // Upload, IPv4, a new remote port: 2 × (14 + 20 + 8 + 200) = 2 × 242 B.
    send_udp(&phone.ns, sa("10.77.1.10:40003"), srv4b.addr(), 2, 200).unwrap();
    ledger.udp(&mac, Dir::Upload, srv4b.addr(), 2, ETHERNET + IPV4 + UDP + 200);
    // Download, IPv6, same series again: 2 × 562 B.
    send_udp(inet, sa("[fd77:2::2]:5003"), phone6.addr(), 2, 500).unwrap();
    ledger.udp(&mac, Dir::Download, sa("[fd77:2::2]:5003"), 2, ETHERNET + IPV6 + UDP + 500);
    for (r, n) in [(&srv4, 13), (&srv4b, 2), (&phone6, 7)] {
        r.wait_for(n, DELIVERY_TIMEOUT).unwrap();
    }
    assert_eq!(ledger.client(&mac, Dir::Upload), (14 + 5, 13_468 + 3 * 1_042 + 2 * 242));
    assert_eq!(ledger.client(&mac, Dir::Download), (11 + 2, 10_262 + 2 * 562));
    expect(&agent, &ledger, "after restart and more traffic");

    let (text, _) = scrape_of(&agent);
    promtool_check(&agent, &text);
}

/// Issue 14: after any start (SIGTERM, kill -9, kill -9 and a reboot) no exported counter (the
/// traffic's, the kernel's outcomes, the agent's own) is lower than any value it was scraped
/// with before, and the counts are exact: a crash with the
/// pins kept loses nothing; a reboot loses only what the kernel counted after the last save,
/// which was never exported. The state is saved once an hour here, so the kernel runs far
/// ahead of it: exporting what was not saved would show as a decrease after the reboot.
#[test]
fn counters_never_go_backwards_across_a_crash_and_a_reboot() {
    if !privileged() {
        return;
    }
    let pins = lab::PinDir::new("test", "reboot");
    let topo = TopologyBuilder::new("gwt-reboot")
        .lan(LanKind::Veth)
        .client("camera", [0x02, 0x5e, 0x10, 0x00, 0x00, 0x07])
        .build()
        .expect("building the lab");
    let camera = topo.client("camera");
    let mac = camera.mac_text();
    let inet = &topo.internet.ns;
    let mut agent = start_agent(&topo, &pins, "state_save_interval: 1h\n");
    let watch = agent.watch_counters(Duration::from_millis(100));
    let srv = UdpReceiver::bind(inet, sa("10.77.2.2:5001")).unwrap();
    let cam = UdpReceiver::bind(&camera.ns, sa("10.77.1.10:6000")).unwrap();
    let mut ledger = Ledger::for_topology(&topo);
    let frame = |payload: u64| ETHERNET + IPV4 + UDP + payload;
    let grace = Duration::from_secs(15);
    let fail = |agent: &Agent, e: anyhow::Error| -> ! { agent.fail(&format!("{e:#}")) };

    // A: upload and download; SIGTERM (last poll, save) and start: exact.
    send_udp(&camera.ns, sa("10.77.1.10:40001"), srv.addr(), 10, 1000).unwrap();
    ledger.udp(&mac, Dir::Upload, srv.addr(), 10, frame(1000));
    send_udp(inet, sa("10.77.2.2:5002"), cam.addr(), 6, 1200).unwrap();
    ledger.udp(&mac, Dir::Download, sa("10.77.2.2:5002"), 6, frame(1200));
    srv.wait_for(10, DELIVERY_TIMEOUT).unwrap();
    cam.wait_for(6, DELIVERY_TIMEOUT).unwrap();
    // One of the agent's own counters: a reload refused (a config that is not YAML). Counters
    // show as saved (hourly here, and at SIGTERM): it shows after the restart.
    let reload_failures = |agent: &Agent| {
        scrape_of(agent).1.get("gwsensor_config_reload_failures_total", &[]).unwrap_or(-1.0)
    };
    let good = std::fs::read_to_string(agent.config_path()).unwrap();
    std::fs::write(agent.config_path(), "interface: [\n").unwrap();
    agent.reload().unwrap_or_else(|e| fail(&agent, e));
    lab::wait::until("the refused reload logged", grace, Duration::from_millis(50), || {
        Ok(agent.log_tail().contains("new configuration refused").then_some(()))
    })
    .unwrap_or_else(|e| fail(&agent, e));
    std::fs::write(agent.config_path(), good).unwrap();
    agent.restart(grace).unwrap_or_else(|e| fail(&agent, e));
    expect(&agent, &ledger, "A, after SIGTERM and a start");
    assert_eq!(reload_failures(&agent), 1.0, "config reload failures, after SIGTERM");

    // B: counted by the kernel and read by polls, never saved; kill -9, the pins stay: the
    // start adds what the pinned maps counted since the save to the saved totals.
    let srv_b = UdpReceiver::bind(inet, sa("10.77.2.2:5003")).unwrap();
    send_udp(&camera.ns, sa("10.77.1.10:40002"), srv_b.addr(), 5, 300).unwrap();
    ledger.udp(&mac, Dir::Upload, srv_b.addr(), 5, frame(300));
    srv_b.wait_for(5, DELIVERY_TIMEOUT).unwrap();
    agent.wait_polls(agent.polls().unwrap_or(0.0) + 2.0, grace).unwrap_or_else(|e| fail(&agent, e));
    agent.kill().unwrap_or_else(|e| fail(&agent, e));
    agent.start_again().unwrap_or_else(|e| fail(&agent, e));
    expect(&agent, &ledger, "A + B, after kill -9 with the pins kept");

    // C: read by polls, never saved; kill -9 and a reboot (the pins go): C is gone with the
    // kernel's maps, and was never exported.
    let srv_c = UdpReceiver::bind(inet, sa("10.77.2.2:5004")).unwrap();
    send_udp(&camera.ns, sa("10.77.1.10:40003"), srv_c.addr(), 7, 700).unwrap();
    srv_c.wait_for(7, DELIVERY_TIMEOUT).unwrap();
    agent.wait_polls(agent.polls().unwrap_or(0.0) + 2.0, grace).unwrap_or_else(|e| fail(&agent, e));
    // And the watch scraped after those polls: had C been exported, it has seen it.
    let scrapes = watch.seen().scrapes;
    lab::wait::until("two more scrapes", grace, Duration::from_millis(20), || {
        Ok((watch.seen().scrapes >= scrapes + 2).then_some(()))
    })
    .unwrap();
    agent.kill().unwrap_or_else(|e| fail(&agent, e));
    pins.remove_all().unwrap();
    agent.start_again().unwrap_or_else(|e| fail(&agent, e));
    expect(&agent, &ledger, "A + B, after kill -9 and a reboot");

    // D: new maps count from zero onto the saved totals, old series and a new one.
    let srv_d = UdpReceiver::bind(inet, sa("10.77.2.2:5005")).unwrap();
    send_udp(&camera.ns, sa("10.77.1.10:40001"), srv.addr(), 4, 1000).unwrap();
    ledger.udp(&mac, Dir::Upload, srv.addr(), 4, frame(1000));
    send_udp(&camera.ns, sa("10.77.1.10:40004"), srv_d.addr(), 2, 100).unwrap();
    ledger.udp(&mac, Dir::Upload, srv_d.addr(), 2, frame(100));
    send_udp(inet, sa("10.77.2.2:5002"), cam.addr(), 3, 1200).unwrap();
    ledger.udp(&mac, Dir::Download, sa("10.77.2.2:5002"), 3, frame(1200));
    srv.wait_for(14, DELIVERY_TIMEOUT).unwrap();
    srv_d.wait_for(2, DELIVERY_TIMEOUT).unwrap();
    cam.wait_for(9, DELIVERY_TIMEOUT).unwrap();
    agent.restart(grace).unwrap_or_else(|e| fail(&agent, e));
    assert_eq!(ledger.client(&mac, Dir::Upload), (21, 14 * 1042 + 5 * 342 + 2 * 142));
    assert_eq!(ledger.client(&mac, Dir::Download), (9, 9 * 1242));
    expect(&agent, &ledger, "A + B + D, after the reboot and SIGTERM");

    // The agent's own counter went on through both kills and the reboot.
    assert_eq!(reload_failures(&agent), 1.0, "config reload failures, continued");
    let seen = watch.finish();
    if !seen.decreases.is_empty() {
        agent.fail(&format!(
            "counters went backwards ({} scrapes):\n{}",
            seen.scrapes,
            seen.decreases.join("\n")
        ));
    }
    // The watch saw the agent down (the starts) and up.
    assert!(seen.gaps > 0 && seen.scrapes > 20, "{} scrapes, {} gaps", seen.scrapes, seen.gaps);
}

#[test]
fn bridge_two_clients_exact_counts() {
    if !privileged() {
        return;
    }
    let pins = lab::PinDir::new("test", "bridge");
    let remote4: IpAddr = "10.77.3.1".parse().unwrap();
    let remote6: IpAddr = "fd77:3::2".parse().unwrap();
    let topo = TopologyBuilder::new("gwt-bridge")
        .lan(LanKind::Bridge)
        .client("phone", [0x64, 0x09, 0x80, 0x77, 0x00, 0x01])
        .client("laptop", [0x02, 0x77, 0x10, 0x00, 0x00, 0x02])
        .remote(remote4)
        .remote(remote6)
        .build()
        .expect("building the lab");
    let (phone, laptop) = (topo.client("phone"), topo.client("laptop"));
    let (pmac, lmac) = (phone.mac_text(), laptop.mac_text());
    let inet = &topo.internet.ns;

    let agent = start_agent(&topo, &pins, "tc_attach: netlink\n");
    let (_, scrape) = scrape_of(&agent);
    assert_gauge(
        &agent,
        &scrape,
        "gwsensor_xdp_attach_mode",
        &[("interface", "br-lan"), ("mode", "tc_ingress")],
        1.0,
    );
    assert_gauge(
        &agent,
        &scrape,
        "gwsensor_tc_attach_mode",
        &[("interface", "br-lan"), ("mode", "netlink")],
        1.0,
    );

    // QUIC-like servers; they answer from their listening ports, so the same (remote, port)
    // appears in both directions.
    let quic4 = UdpReceiver::bind(inet, SocketAddr::new(remote4, 443)).unwrap();
    let quic6 = UdpReceiver::bind(inet, SocketAddr::new(remote6, 8443)).unwrap();
    let phone4 = UdpReceiver::bind(&phone.ns, sa("10.77.1.10:6000")).unwrap();
    let phone6 = UdpReceiver::bind(&phone.ns, sa("[fd77:1::10]:6000")).unwrap();
    let laptop6 = UdpReceiver::bind(&laptop.ns, sa("[fd77:1::11]:6000")).unwrap();
    let mut ledger = Ledger::for_topology(&topo);

    // phone → 10.77.3.1:443, 7 × 300 B: 7 × (14 + 20 + 8 + 300) = 7 × 342 B.
    send_udp(&phone.ns, sa("10.77.1.10:40001"), quic4.addr(), 7, 300).unwrap();
    ledger.udp(&pmac, Dir::Upload, quic4.addr(), 7, ETHERNET + IPV4 + UDP + 300);
    // laptop → [fd77:3::2]:8443, 3 × 1400 B: 3 × (14 + 40 + 8 + 1400) = 3 × 1462 B.
    send_udp(&laptop.ns, sa("[fd77:1::11]:40002"), quic6.addr(), 3, 1400).unwrap();
    ledger.udp(&lmac, Dir::Upload, quic6.addr(), 3, ETHERNET + IPV6 + UDP + 1400);
    // laptop → 10.77.3.1:443, 2 × 64 B: 2 × (14 + 20 + 8 + 64) = 2 × 106 B.
    send_udp(&laptop.ns, sa("10.77.1.11:40003"), quic4.addr(), 2, 64).unwrap();
    ledger.udp(&lmac, Dir::Upload, quic4.addr(), 2, ETHERNET + IPV4 + UDP + 64);
    quic4.wait_for(9, DELIVERY_TIMEOUT).unwrap();
    quic6.wait_for(3, DELIVERY_TIMEOUT).unwrap();

    // 10.77.3.1:443 → phone, 5 × 1100 B: 5 × (14 + 20 + 8 + 1100) = 5 × 1142 B.
    quic4.reply(phone4.addr(), 5, 1100).unwrap();
    ledger.udp(&pmac, Dir::Download, quic4.addr(), 5, ETHERNET + IPV4 + UDP + 1100);
    // [fd77:3::2]:8443 → laptop, 4 × 1000 B: 4 × (14 + 40 + 8 + 1000) = 4 × 1062 B.
    quic6.reply(laptop6.addr(), 4, 1000).unwrap();
    ledger.udp(&lmac, Dir::Download, quic6.addr(), 4, ETHERNET + IPV6 + UDP + 1000);
    // [fd77:3::2]:8443 → phone, 1 × 1232 B: 14 + 40 + 8 + 1232 = 1294 B.
    quic6.reply(phone6.addr(), 1, 1232).unwrap();
    ledger.udp(&pmac, Dir::Download, quic6.addr(), 1, ETHERNET + IPV6 + UDP + 1232);
    phone4.wait_for(5, DELIVERY_TIMEOUT).unwrap();
    laptop6.wait_for(4, DELIVERY_TIMEOUT).unwrap();
    phone6.wait_for(1, DELIVERY_TIMEOUT).unwrap();

    assert_eq!(ledger.client(&pmac, Dir::Upload), (7, 7 * 342));
    assert_eq!(ledger.client(&lmac, Dir::Upload), (5, 3 * 1462 + 2 * 106));
    assert_eq!(ledger.client(&pmac, Dir::Download), (6, 5 * 1142 + 1294));
    assert_eq!(ledger.client(&lmac, Dir::Download), (4, 4 * 1062));
    expect(&agent, &ledger, "bridge");

    let (text, _) = scrape_of(&agent);
    promtool_check(&agent, &text);
}

/// OpenWrt's LAN as routers run it: a client whose TCP stack sends GSO packets (segmented in
/// software: the wire carries MSS-sized frames), a bridge port with GRO on, which merges them
/// again, and the sensor on `br-lan`, which has no native XDP. Generic XDP saw the merged
/// packets (15 packets / 129,398 B for 93 frames / 134,546 B in the issue); TC ingress counts
/// each merged packet as its segments with their headers. ~130 kB uploaded over TCP: the
/// client's packets and frame bytes, both ways, equal a capture of the client's wire.
#[test]
fn bridge_with_gro_counts_a_tcp_upload_exactly_against_the_wire() {
    use lab::wire::{Capture, Offload, capture_frames, link_counters, set_offload};
    if !lab::lab_tests_can_run("netns GRO test", &["tshark"]) {
        return;
    }
    const UPLOAD: usize = 130_000;
    let pins = lab::PinDir::new("test", "gro");
    let remote: IpAddr = "10.77.3.7".parse().unwrap();
    let topo = TopologyBuilder::new("gwt-gro")
        .lan(LanKind::Bridge)
        .client("laptop", [0x02, 0x77, 0x10, 0x00, 0x00, 0x07])
        .remote(remote)
        .build()
        .expect("building the lab");
    let laptop = topo.client("laptop");
    let mac = laptop.mac_text();
    let gw = &topo.gateway;
    // The client segments in software (GSO on, TSO off), the port merges (GRO on).
    set_offload(&laptop.ns, &laptop.ifname, Offload::Tso, false).expect("TSO off on the client");
    set_offload(&laptop.ns, &laptop.ifname, Offload::Gso, true).expect("GSO on on the client");
    set_offload(&gw.ns, &laptop.gw_port, Offload::Gro, true).expect("GRO on on the bridge port");

    let agent = start_agent(&topo, &pins, "");
    let (_, scrape) = scrape_of(&agent);
    assert_gauge(
        &agent,
        &scrape,
        "gwsensor_xdp_attach_mode",
        &[("interface", "br-lan"), ("mode", "tc_ingress")],
        1.0,
    );

    let bridge_before = link_counters(&gw.ns, "br-lan").expect("br-lan counters");
    let capture = Capture::start(&topo.lab, &laptop.ns, &laptop.ifname, "gro-wire")
        .unwrap_or_else(|e| agent.fail(&format!("{e:#}")));
    lab::tcp_upload(&laptop.ns, &topo.internet.ns, SocketAddr::new(remote, 8080), UPLOAD)
        .unwrap_or_else(|e| agent.fail(&format!("{e:#}")));
    // The client's last ACK is on its way: let it cross before the capture stops.
    std::thread::sleep(Duration::from_millis(300));
    // Checked there against the link's own frame count.
    let pcap = capture.finish().unwrap_or_else(|e| agent.fail(&format!("{e:#}")));
    let bridge_after = link_counters(&gw.ns, "br-lan").expect("br-lan counters");

    let wire = |filter: &str| {
        capture_frames(&pcap, filter).unwrap_or_else(|e| agent.fail(&format!("{e:#}")))
    };
    let up = wire(&format!("eth.src == {mac}"));
    let down = wire(&format!("eth.dst == {mac}"));
    // The wire carried MSS-sized frames, and GRO merged them: the bridge received fewer
    // packets than the client sent (else this test would not test the merge).
    assert!(up.0 > 90 && up.1 > UPLOAD as u64, "the upload on the wire: {up:?}");
    let merged = bridge_after.rx_packets - bridge_before.rx_packets;
    assert!(merged < up.0, "GRO merged nothing: br-lan received {merged} for {} frames", up.0);
    eprintln!(
        "wire: upload {} frames / {} B, download {} / {} B; br-lan received {merged} packets",
        up.0, up.1, down.0, down.1
    );

    let mut ledger = lab::ledger::Ledger::default();
    ledger.name(&mac, &laptop.name);
    ledger.add_client(&mac, Dir::Upload, up.0, up.1);
    ledger.add_client(&mac, Dir::Download, down.0, down.1);
    agent.expect("a TCP upload through a bridge port with GRO on", |o| {
        let mut out = Vec::new();
        ledger.client_mismatches(&o.scrape, &mut out);
        out
    });
}

// ---------------------------------------------------------------------------------------
// Offloaded VLAN tags on GSO packets (no agent: the programs, attached, and their maps)

/// The gateway sends one UDP GSO packet (UDP_SEGMENT) of three segments to a client; a TC
/// program ahead of ours pushes an 802.1Q tag, which the kernel keeps as skb metadata
/// (`vlan_present`) as it does for an offloaded tag. Each segment leaves with its own headers
/// and its own tag, and all of them count. (A VLAN device or bridge VLAN filtering would make
/// the same skb, but this kernel may have neither: a 6-instruction program calling
/// bpf_skb_vlan_push needs nothing but TCX.)
#[test]
fn download_gso_with_offloaded_vlan_tag_counts_the_tag_per_segment() {
    use sensor::{
        kernel::collector::KernelMaps,
        kernel::loader::{LoadOptions, attach, load},
        kernel::loader::{TcAttach, XdpMode},
    };
    if !privileged() {
        return;
    }
    const CLIENT_MAC: [u8; 6] = [0x02, 0x77, 0x00, 0x10, 0x00, 0x01];
    const SEGMENT: usize = 1000;
    const PAYLOAD: usize = 2500; // segments of 1000, 1000 and 500
    let lab = lab::Lab::new("gwt-vlan").expect("lab");
    let gw = lab.add_netns("gw").expect("gateway namespace");
    let c0 = lab.add_netns("c0").expect("client namespace");
    let mac = |m: &[u8; 6]| m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    let (gw_mac, c_mac) = (mac(&[0x02, 0x77, 0, 0x10, 0, 0xfe]), mac(&CLIENT_MAC));
    let ip = |args: &[&str]| lab::ip(args).unwrap_or_else(|e| panic!("{e:#}"));
    ip(&[
        "-n", &gw, "link", "add", "lan0", "address", &gw_mac, "type", "veth", "peer", "name",
        "eth0", "address", &c_mac, "netns", &c0,
    ]);
    ip(&["-n", &gw, "addr", "add", "10.77.1.1/24", "dev", "lan0"]);
    ip(&["-n", &gw, "link", "set", "lan0", "up"]);
    ip(&["-n", &c0, "link", "set", "eth0", "up"]);
    ip(&[
        "-n",
        &gw,
        "neigh",
        "replace",
        "10.77.1.10",
        "lladdr",
        &c_mac,
        "dev",
        "lan0",
        "nud",
        "permanent",
    ]);

    let prefixes: Vec<ipnet::IpNet> = vec!["10.77.1.0/24".parse().unwrap()];
    let (ebpf, maps, _tagger) = lab
        .in_netns(&gw, || -> anyhow::Result<_> {
            let opts = LoadOptions {
                lan_prefixes: &prefixes,
                flow_capacity: 1024,
                client_capacity: 16,
                pin_dir: None,
                kernel_btf: false,
            };
            let (mut ebpf, _) = load(&opts)?;
            attach(&mut ebpf, "lan0", XdpMode::Generic, TcAttach::Tcx)?;
            let maps = KernelMaps::take(&mut ebpf)?;
            let tagger = vlan_tagger_before_all("lan0", 10)?;
            Ok((ebpf, maps, tagger))
        })
        .unwrap()
        .expect("attaching the programs and the VLAN tagger to lan0");

    lab.in_netns(&gw, || {
        send_udp_gso(sa("10.77.1.1:4000"), sa("10.77.1.10:5000"), PAYLOAD, SEGMENT)
    })
    .unwrap()
    .expect("sending the GSO datagram");

    // Ethernet + 802.1Q tag + IPv4 + UDP, on each of the three frames. (The client has no VLAN
    // device and drops them: what matters is what left.)
    let want = (3, 3 * (ETHERNET + 4 + IPV4 + UDP) + PAYLOAD as u64);
    let deadline = Instant::now() + DELIVERY_TIMEOUT;
    loop {
        let snap = maps.read().expect("reading the maps");
        let got = snap.clients.get(&CLIENT_MAC).map(|c| (c.packets[1], c.bytes[1]));
        if got == Some(want) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "download (packets, bytes) of the client: {got:?}, want {want:?}; all: {:?}",
            snap.clients
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(ebpf);
}

/// One sendmsg of `payload` bytes with UDP_SEGMENT `segment`: the kernel builds one GSO skb.
fn send_udp_gso(
    from: SocketAddr,
    to: SocketAddr,
    payload: usize,
    segment: usize,
) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd as _;
    const UDP_SEGMENT: libc::c_int = 103;
    let sock = std::net::UdpSocket::bind(from)?;
    let size = segment as libc::c_int;
    // SAFETY: a valid socket and a c_int option of the right size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_UDP,
            UDP_SEGMENT,
            (&size as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    anyhow::ensure!(rc == 0, "UDP_SEGMENT: {}", std::io::Error::last_os_error());
    let buf: Vec<u8> = (0..payload).map(|i| (i % 251) as u8).collect();
    let n = sock.send_to(&buf, to)?;
    anyhow::ensure!(n == payload, "short send: {n} of {payload}");
    Ok(())
}

/// Attaches, first on `ifname`'s TCX egress, a program that pushes an 802.1Q tag `vid` onto
/// every packet (bpf_skb_vlan_push: the tag becomes skb metadata) and passes it on. Built from
/// raw instructions with the bpf() syscall. The link lives as long as the returned fd.
fn vlan_tagger_before_all(ifname: &str, vid: i32) -> anyhow::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_LINK_CREATE: libc::c_long = 28;
    const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
    const BPF_TCX_EGRESS: u32 = 47;
    const BPF_F_BEFORE: u32 = 8;
    const BPF_FUNC_SKB_VLAN_PUSH: i32 = 18;
    // struct bpf_insn: opcode, dst | src << 4, offset, immediate.
    fn insn(code: u8, dst: u8, imm: i32) -> [u8; 8] {
        let mut b = [code, dst, 0, 0, 0, 0, 0, 0];
        b[4..].copy_from_slice(&imm.to_ne_bytes());
        b
    }
    let prog: Vec<u8> = [
        insn(0xb7, 2, 0x8100u16.to_be() as i32), // r2 = htons(ETH_P_8021Q); r1 is the skb
        insn(0xb7, 3, vid),                      // r3 = VLAN id
        insn(0x85, 0, BPF_FUNC_SKB_VLAN_PUSH),   // call bpf_skb_vlan_push
        insn(0xb7, 0, -1),                       // r0 = TC_ACT_UNSPEC (next program)
        insn(0x95, 0, 0),                        // exit
    ]
    .concat();
    let license = c"GPL";
    let mut attr = [0u8; 144];
    attr[0..4].copy_from_slice(&BPF_PROG_TYPE_SCHED_CLS.to_ne_bytes());
    attr[4..8].copy_from_slice(&((prog.len() / 8) as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(prog.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    // SAFETY: bpf(BPF_PROG_LOAD) with an attr whose pointers outlive the call.
    let fd =
        unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, attr.as_ptr(), attr.len() as u32) };
    anyhow::ensure!(fd >= 0, "loading the VLAN tagger: {}", std::io::Error::last_os_error());
    // SAFETY: a new fd the kernel just returned, owned here.
    let prog_fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    let name = std::ffi::CString::new(ifname)?;
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    anyhow::ensure!(ifindex != 0, "{ifname}: {}", std::io::Error::last_os_error());
    let mut attr = [0u8; 144];
    attr[0..4].copy_from_slice(&(fd as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    attr[8..12].copy_from_slice(&BPF_TCX_EGRESS.to_ne_bytes());
    // Before every program already there (no relative fd or id: the head of the chain).
    attr[12..16].copy_from_slice(&BPF_F_BEFORE.to_ne_bytes());
    // SAFETY: bpf(BPF_LINK_CREATE) with a plain attr.
    let link =
        unsafe { libc::syscall(libc::SYS_bpf, BPF_LINK_CREATE, attr.as_ptr(), attr.len() as u32) };
    anyhow::ensure!(link >= 0, "attaching the VLAN tagger: {}", std::io::Error::last_os_error());
    drop(prog_fd);
    // SAFETY: as above.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(link as i32) })
}

// ---------------------------------------------------------------------------------------
// Restarts, crashes and upgrades lose nothing (issue 14): the programs stay attached while the
// agent is down, counting into the pinned maps, and the next agent adopts them.

#[test]
fn steady_stream_counted_exactly_through_sigterm_kill9_and_upgrade_tcx() {
    restart_under_traffic("tcx", "");
}

#[test]
fn steady_stream_counted_exactly_through_sigterm_kill9_and_upgrade_clsact() {
    restart_under_traffic("clsact", "tc_attach: netlink\n");
}

/// A UDP stream of `payload`-byte datagrams in batches until `stop`; the number sent.
fn stream(
    ns: String,
    from: SocketAddr,
    to: SocketAddr,
    payload: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<anyhow::Result<u64>> {
    std::thread::spawn(move || {
        // One socket for the whole stream: binding the port anew every few milliseconds failed
        // now and then with EADDRINUSE while the test process spawned a child (between its
        // fork and exec the child holds a copy of the last socket).
        let sock = lab::in_netns(&ns, || std::net::UdpSocket::bind(from))?
            .map_err(|e| anyhow::anyhow!("binding UDP {from} in {ns}: {e}"))?;
        let buf: Vec<u8> = (0..payload).map(|i| (i % 251) as u8).collect();
        let mut sent = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            for _ in 0..10 {
                let n = sock.send_to(&buf, to)?;
                anyhow::ensure!(n == payload, "short UDP send {from} -> {to}: {n} of {payload}");
            }
            sent += 10;
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(sent)
    })
}

/// What is on `lan0` in the gateway, as the kernel says: `ip link` (XDP), the TCX programs
/// of both sides (by name) and `tc filter show` (clsact filters).
fn hooks_on(topo: &Topology) -> String {
    let gw = &topo.gateway.ns;
    let link =
        lab::ip(&["-n", gw, "link", "show", "dev", "lan0"]).unwrap_or_else(|e| format!("{e:#}"));
    let tcx = [TcAttachType::Ingress, TcAttachType::Egress]
        .map(|side| {
            let progs = lab::in_netns(gw, || SchedClassifier::query_tcx("lan0", side));
            match progs {
                Ok(Ok((_, progs))) => progs
                    .iter()
                    .map(|p| format!("tcx/{side:?} {}\n", p.name_as_str().unwrap_or("?")))
                    .collect(),
                Ok(Err(e)) => format!("query_tcx {side:?}: {e}\n"),
                Err(e) => format!("{e:#}\n"),
            }
        })
        .join("");
    let tc = ["ingress", "egress"]
        .map(|side| {
            lab::run("tc", &["-n", gw, "filter", "show", "dev", "lan0", side])
                .unwrap_or_else(|e| format!("{e:#}"))
        })
        .join("");
    format!("{link}{tcx}{tc}")
}

/// Asserts the counting programs are on `lan0` while no agent runs.
fn assert_attached_while_down(topo: &Topology, pins: &lab::PinDir, tc: &str, when: &str) {
    let hooks = hooks_on(topo);
    assert!(hooks.contains("prog/xdp"), "{when}: no XDP program on lan0:\n{hooks}");
    let links = pins.path().join("links");
    assert!(links.join("xdp_driver").exists(), "{when}: {} has no xdp_driver pin", links.display());
    match tc {
        "tcx" => {
            assert!(
                hooks.contains("tcx/Egress gwsensor_tc"),
                "{when}: no TCX egress program:\n{hooks}"
            );
            assert!(links.join("tcx_egress").exists(), "{when}: no tcx_egress pin");
        }
        _ => assert!(
            hooks.contains("pref 18259 bpf") && hooks.contains("gwsensor_tc"),
            "{when}: no clsact filter of ours:\n{hooks}"
        ),
    }
}

/// The binary the restart test upgrades to (set by `cargo xtask test`: the static release
/// build); unset, a copy of the test's own build.
const UPGRADE_BINARY: &str = "GWSENSOR_UPGRADE_BINARY";

fn restart_under_traffic(tc: &str, extra: &str) {
    if !privileged() {
        return;
    }
    let pins = lab::PinDir::new("test", &format!("restart-{tc}"));
    let topo = TopologyBuilder::new(&format!("gwt-rs{}", &tc[..2]))
        .lan(LanKind::Veth)
        .client("phone", [0x64, 0x09, 0x80, 0x77, 0x00, 0x01])
        .build()
        .expect("building the lab");
    let phone = topo.client("phone");
    let mac = phone.mac_text();
    let inet = &topo.internet.ns;

    let mut agent = start_agent(&topo, &pins, extra);
    let (_, scrape) = scrape_of(&agent);
    assert_gauge(
        &agent,
        &scrape,
        "gwsensor_xdp_attach_mode",
        &[("interface", "lan0"), ("mode", "driver")],
        1.0,
    );
    let (want_tc, tc_log) =
        if tc == "tcx" { ("tcx", "TCX link") } else { ("netlink", "clsact filter") };
    assert_gauge(
        &agent,
        &scrape,
        "gwsensor_tc_attach_mode",
        &[("interface", "lan0"), ("mode", want_tc)],
        1.0,
    );

    let srv = UdpReceiver::bind(inet, sa("10.77.2.2:5011")).unwrap();
    let phone_rx = UdpReceiver::bind(&phone.ns, sa("10.77.1.10:6011")).unwrap();
    let stop_streams = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watch = agent.watch_counters(Duration::from_millis(500));
    // Upload 300 B and download 400 B payloads, ~2,000 datagrams a second each way.
    let up =
        stream(phone.ns.clone(), sa("10.77.1.10:40011"), srv.addr(), 300, stop_streams.clone());
    let down =
        stream(inet.clone(), sa("10.77.2.2:5012"), phone_rx.addr(), 400, stop_streams.clone());
    // Traffic flows for a while in each state; how long does not matter to the assertions.
    let pause = || std::thread::sleep(Duration::from_secs(1));
    // Each new agent must have taken over its predecessor's attachments, not added its own.
    let adopted = ["XDP (driver) link adopted", &format!("TC egress {tc_log} adopted")];
    let again = |agent: &mut Agent, binary: Option<&Path>, what: &str| {
        let started = match binary {
            Some(binary) => agent.upgrade_to(binary),
            None => agent.start_again(),
        };
        if let Err(e) = started {
            agent.fail(&format!("starting again after {what}: {e:#}"));
        }
        let log = agent.process().log();
        if let Some(missing) = adopted.iter().find(|a| !log.contains(**a)) {
            agent.fail(&format!("after {what}, the log does not say \"{missing}\""));
        }
    };

    pause();
    // 1. SIGTERM, then start: the programs stay attached while it is down.
    agent.stop(Duration::from_secs(15)).unwrap_or_else(|e| panic!("SIGTERM: {e:#}"));
    assert_attached_while_down(&topo, &pins, tc, "after SIGTERM");
    pause();
    again(&mut agent, None, "SIGTERM");
    pause();
    // 2. SIGKILL (a crash: no last poll, no state save), then start.
    agent.kill().unwrap_or_else(|e| panic!("{e:#}"));
    assert_attached_while_down(&topo, &pins, tc, "after kill -9");
    pause();
    again(&mut agent, None, "kill -9");
    pause();
    // 3. An upgrade: SIGTERM, then another binary. `cargo xtask test` runs this test a second
    // time with UPGRADE_BINARY set to the static release build it ships (another build: other
    // target, profile and program instances, same map layout); run alone, a copy of this
    // build from another path. A build with another map layout has its own test below.
    agent.stop(Duration::from_secs(15)).unwrap_or_else(|e| panic!("SIGTERM: {e:#}"));
    let upgraded = topo.lab.dir().join("sensor-upgraded");
    let from = std::env::var_os(UPGRADE_BINARY)
        .map_or_else(|| env!("CARGO_BIN_EXE_sensor").into(), std::path::PathBuf::from);
    std::fs::copy(&from, &upgraded)
        .unwrap_or_else(|e| panic!("copying {} ({UPGRADE_BINARY}): {e}", from.display()));
    pause();
    again(&mut agent, Some(&upgraded), "the upgrade");
    pause();

    stop_streams.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent_up = up.join().expect("upload stream").expect("upload stream");
    let sent_down = down.join().expect("download stream").expect("download stream");
    srv.wait_for(sent_up, DELIVERY_TIMEOUT).unwrap();
    phone_rx.wait_for(sent_down, DELIVERY_TIMEOUT).unwrap();
    let mut ledger = Ledger::for_topology(&topo);
    ledger.udp(&mac, Dir::Upload, srv.addr(), sent_up, ETHERNET + IPV4 + UDP + 300);
    ledger.udp(&mac, Dir::Download, sa("10.77.2.2:5012"), sent_down, ETHERNET + IPV4 + UDP + 400);
    expect(&agent, &ledger, &format!("after {sent_up} up and {sent_down} down through 3 restarts"));
    // Every counter family, as Prometheus would see it: the traffic's, the kernel's outcomes
    // and the agent's own.
    let seen = watch.finish();
    if !seen.decreases.is_empty() {
        agent.fail(&format!(
            "counters went backwards ({} scrapes):\n{}",
            seen.scrapes,
            seen.decreases.join("\n")
        ));
    }
    assert!(seen.scrapes > 0 && seen.gaps > 0, "{} scrapes, {} gaps", seen.scrapes, seen.gaps);

    // Uninstall: `sensor detach` takes everything off the interface and unpins it.
    agent.stop(Duration::from_secs(15)).unwrap_or_else(|e| panic!("SIGTERM: {e:#}"));
    let mut detach = Command::new(env!("CARGO_BIN_EXE_sensor"));
    detach.args(["detach", "--maps", "-c"]).arg(agent.config_path());
    let out =
        lab::services::output_in_netns(&topo.gateway.ns, detach, b"", Duration::from_secs(20))
            .expect("running sensor detach");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "sensor detach failed: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("detached and unpinned") && said.contains("xdp_driver"), "{said}");
    assert!(said.contains("unpinned map"), "{said}");
    let hooks = hooks_on(&topo);
    assert!(!hooks.contains("prog/xdp"), "XDP still on lan0 after sensor detach:\n{hooks}");
    assert!(!hooks.contains("tcx/"), "TCX still on lan0 after sensor detach:\n{hooks}");
    assert!(!hooks.contains("bpf"), "a clsact filter is left after sensor detach:\n{hooks}");
    assert!(!pins.path().exists(), "{} is left after sensor detach --maps", pins.path().display());
}

/// A change of `tc_attach` between two runs: the new agent attaches with TCX, then removes the
/// clsact filter the old run left, so every packet is counted once.
#[test]
fn changing_the_tc_mode_between_runs_leaves_one_program_per_hook() {
    if !privileged() {
        return;
    }
    let pins = lab::PinDir::new("test", "mode-change");
    let topo = TopologyBuilder::new("gwt-mode")
        .lan(LanKind::Veth)
        .client("phone", [0x64, 0x09, 0x80, 0x77, 0x00, 0x01])
        .build()
        .expect("building the lab");
    let phone = topo.client("phone");
    let mac = phone.mac_text();
    let inet = &topo.internet.ns;

    let mut agent = start_agent(&topo, &pins, "tc_attach: netlink\n");
    agent.stop(Duration::from_secs(15)).unwrap_or_else(|e| panic!("SIGTERM: {e:#}"));
    let hooks = hooks_on(&topo);
    assert!(hooks.contains("pref 18259 bpf"), "the clsact filter should stay:\n{hooks}");
    let yaml = std::fs::read_to_string(agent.config_path()).unwrap();
    std::fs::write(agent.config_path(), yaml.replace("tc_attach: netlink\n", "")).unwrap();
    if let Err(e) = agent.start_again() {
        agent.fail(&format!("starting with TCX: {e:#}"));
    }
    let hooks = hooks_on(&topo);
    assert!(hooks.contains("tcx/Egress gwsensor_tc"), "no TCX egress program:\n{hooks}");
    assert!(!hooks.contains("pref 18259"), "the old clsact filter is left:\n{hooks}");
    let log = agent.process().log();
    assert!(log.contains("removed the clsact Egress filter an earlier run left"), "{log}");

    let phone_rx = UdpReceiver::bind(&phone.ns, sa("10.77.1.10:6021")).unwrap();
    send_udp(inet, sa("10.77.2.2:5021"), phone_rx.addr(), 7, 100).unwrap();
    phone_rx.wait_for(7, DELIVERY_TIMEOUT).unwrap();
    let mut ledger = Ledger::for_topology(&topo);
    ledger.udp(&mac, Dir::Download, sa("10.77.2.2:5021"), 7, ETHERNET + IPV4 + UDP + 100);
    expect(&agent, &ledger, "downloads after the mode change, counted once");
}

/// An upgrade to a build whose maps have another layout: the new agent swaps its programs into
/// the pinned links (same links: the hooks are never empty) and puts new maps in place of the
/// old pins; the exported counters go on from the state file, never backwards, and what is sent
/// after is counted exactly. The old build is stood in for by its mark: a pinned STATS of
/// another layout (4-byte values).
#[test]
fn a_map_layout_change_swaps_the_programs_in_place_and_replaces_the_maps() {
    use sensor::{
        common::names,
        kernel::{
            links::{Hook, LinkPins},
            loader::STAGED_DIR,
        },
    };
    if !privileged() {
        return;
    }
    let pins = lab::PinDir::new("test", "layout-change");
    let topo = TopologyBuilder::new("gwt-lay")
        .lan(LanKind::Veth)
        .client("phone", [0x64, 0x09, 0x80, 0x77, 0x00, 0x01])
        .build()
        .expect("building the lab");
    let phone = topo.client("phone");
    let mac = phone.mac_text();
    let inet = &topo.internet.ns;
    let srv = UdpReceiver::bind(inet, sa("10.77.2.2:5031")).unwrap();
    let phone_rx = UdpReceiver::bind(&phone.ns, sa("10.77.1.10:6031")).unwrap();
    let remote = sa("10.77.2.2:5032");
    let mut ledger = Ledger::for_topology(&topo);
    let mut exchange = |agent: &Agent, up: u64, down: u64, context: &str| {
        let (had_up, had_down) = (srv.datagrams(), phone_rx.datagrams());
        send_udp(&phone.ns, sa("10.77.1.10:40031"), srv.addr(), up as usize, 200).unwrap();
        send_udp(inet, remote, phone_rx.addr(), down as usize, 300).unwrap();
        srv.wait_for(had_up + up, DELIVERY_TIMEOUT).unwrap();
        phone_rx.wait_for(had_down + down, DELIVERY_TIMEOUT).unwrap();
        ledger.udp(&mac, Dir::Upload, srv.addr(), up, ETHERNET + IPV4 + UDP + 200);
        ledger.udp(&mac, Dir::Download, remote, down, ETHERNET + IPV4 + UDP + 300);
        expect(agent, &ledger, context);
    };

    let mut agent = start_agent(&topo, &pins, "");
    let watch = agent.watch_counters(Duration::from_millis(100));
    exchange(&agent, 5, 7, "before the upgrade");
    agent.stop(Duration::from_secs(15)).unwrap_or_else(|e| panic!("SIGTERM: {e:#}"));
    let links = LinkPins::new(pins.path());
    let hooks = [Hook::XdpDriver, Hook::TcxEgress];
    let before = hooks.map(|h| links.info(h).unwrap().expect("a pinned link while down"));
    // The old build's mark: its STATS had 4-byte values (its programs would count into it).
    let stats = pins.path().join(names::STATS);
    std::fs::remove_file(&stats).unwrap();
    lab::pin_percpu_array(&stats, 4, "old_stats").expect("bpftool map create");

    if let Err(e) = agent.start_again() {
        agent.fail(&format!("starting over maps of another layout: {e:#}"));
    }
    let log = agent.process().log();
    for said in [
        "the pinned maps have another layout (STATS is type 6, key/value 4/4",
        "XDP (driver) link adopted",
        "TC egress TCX link adopted",
        "pinned in place of the old build's: FLOWS, STATS, CLIENT_SLOTS",
    ] {
        if !log.contains(said) {
            agent.fail(&format!("the log does not say \"{said}\""));
        }
    }
    for (hook, before) in hooks.into_iter().zip(before) {
        let after = links.info(hook).unwrap().expect("the link is still pinned");
        assert_eq!(after.id, before.id, "{}: a new link, so the hook was empty", hook.pin_name());
        assert_ne!(after.prog_id, before.prog_id, "{}: the old program", hook.pin_name());
    }
    let info = aya::maps::MapInfo::from_pin(&stats).expect("reading the pinned STATS");
    assert_eq!((info.key_size(), info.value_size()), (4, 8), "STATS is not the new one");
    assert!(!pins.path().join(STAGED_DIR).exists(), "the staged maps are left");
    let hooks = hooks_on(&topo);
    assert_eq!(hooks.matches("gwsensor_tc").count(), 1, "one TC program, ours:\n{hooks}");
    assert_eq!(hooks.matches("prog/xdp").count(), 1, "one XDP program:\n{hooks}");

    exchange(&agent, 3, 4, "after the upgrade: new maps, totals from the state file");
    let seen = watch.finish();
    if !seen.decreases.is_empty() {
        agent.fail(&format!("counters went backwards:\n{}", seen.decreases.join("\n")));
    }
    assert!(seen.scrapes > 0 && seen.gaps > 0, "{} scrapes, {} gaps", seen.scrapes, seen.gaps);
}

/// A port scan from LAN clients, scaled to the test command: three clients each reach 15,000
/// unique remotes, with the shipped config's tracking bounds and the shipped policy. Each
/// client remembers 2,048 remotes and 2,048 destinations, the rest is forgotten (and counted),
/// every packet stays in the client's series or `other`, the totals are exact, and memory and
/// the state file stay small, running and at the next start. `cargo xtask bench --scan` runs
/// it at full size (GWSENSOR_SCAN_PER_CLIENT, paced over GWSENSOR_SCAN_SECONDS) and writes
/// the figures into docs/benchmarks.md (GWSENSOR_SCAN_DOCS).
#[test]
fn a_scan_of_unique_remotes_stays_within_the_tracking_bounds() {
    const FRAME: u64 = ETHERNET + IPV4 + UDP + 20;
    const BUSY_REMOTES: usize = 20;
    const BUSY_PACKETS: usize = 5;
    const BUSY_FRAME: u64 = ETHERNET + IPV4 + UDP + 1_000;
    const TRACKED: u64 = 2_048;
    const MB: u64 = 1024;
    if !privileged() {
        return;
    }
    let env = |name: &str, default: u32| {
        std::env::var(name).ok().map_or(default, |v| v.parse().expect("a number"))
    };
    let per_client = env("GWSENSOR_SCAN_PER_CLIENT", 15_000);
    let seconds = env("GWSENSOR_SCAN_SECONDS", 0);
    assert!(per_client <= 1 << 20, "at most 2^20 remotes per client");
    let pins = lab::PinDir::new("test", "scan");
    let topo = TopologyBuilder::new("gwt-scan")
        .lan(LanKind::Bridge)
        .client("cam", [0x64, 0x09, 0x80, 0x77, 0x00, 0x11])
        .client("plug", [0x64, 0x09, 0x80, 0x77, 0x00, 0x12])
        .client("laptop", [0x64, 0x09, 0x80, 0x77, 0x00, 0x13])
        .build()
        .expect("building the lab");
    // The scanned addresses end at the gateway, silently (a blackhole sends no ICMP back).
    lab::ip(&["-n", &topo.gateway.ns, "route", "add", "blackhole", "100.64.0.0/10"]).unwrap();
    let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/policy.yaml");
    // Memory is the release build's, as deployed (`cargo xtask test` and `bench --scan` set
    // GWSENSOR_SCAN_BINARY to it); run by hand without it, the test's debug build, whose code
    // alone is about 20 MB more resident, gets a bound that much higher.
    let release = std::env::var_os("GWSENSOR_SCAN_BINARY").map(std::path::PathBuf::from);
    let binary = release.clone().unwrap_or_else(|| env!("CARGO_BIN_EXE_sensor").into());
    let rss_bound = if release.is_some() { 64 * MB } else { 88 * MB };
    let extra = format!("policy: {}\n", policy.display());
    let mut agent = start_binary(&topo, &pins, &extra, &binary);
    let mut ledger = lab::ledger::Ledger::default();
    // Each client's own top: 20 busy remotes (a series each, as many as `top_remotes`), sent
    // and counted before the scan, so that the scanned remotes (one small packet each) never
    // take a series: a series that leaves the top takes its value out of the sum below.
    // One socket per client for the whole run (a socket belongs to the namespace it was made
    // in; binding anew each time races with child processes holding a copy).
    let sockets: Vec<std::net::UdpSocket> = topo
        .clients
        .iter()
        .map(|c| lab::in_netns(&c.ns, || std::net::UdpSocket::bind("0.0.0.0:40100")).unwrap())
        .collect::<Result<_, _>>()
        .expect("binding the clients' sockets");
    let send = |k: usize, to: &mut dyn Iterator<Item = std::net::Ipv4Addr>, payload: usize| {
        let buf = vec![0x5a; payload];
        for to in to {
            sockets[k].send_to(&buf, (to, 9)).expect("sending a datagram");
        }
    };
    for (k, client) in topo.clients.iter().enumerate() {
        ledger.name(&client.mac_text(), &client.name);
        let mut busy = (0..BUSY_REMOTES)
            .flat_map(|j| [std::net::Ipv4Addr::new(100, 120, k as u8, j as u8); BUSY_PACKETS]);
        send(k, &mut busy, 1_000);
        let packets = (BUSY_REMOTES * BUSY_PACKETS) as u64;
        ledger.add_client(&client.mac_text(), Dir::Upload, packets, packets * BUSY_FRAME);
    }
    agent.expect("the busy remotes", |o| {
        let mut out = Vec::new();
        ledger.client_mismatches(&o.scrape, &mut out);
        out
    });
    // Client k's remotes: 100.(64 + 16k).0.0 up, one each (16 × 65,536 addresses a client).
    let remote = |k: usize, i: u32| {
        let [_, b1, b2, b3] = i.to_be_bytes();
        std::net::Ipv4Addr::new(100, 64 + 16 * k as u8 + b1, b2, b3)
    };
    let started = Instant::now();
    let slices = seconds.max(1);
    for slice in 0..slices {
        let bound = |s: u32| (u64::from(per_client) * u64::from(s) / u64::from(slices)) as u32;
        let (from, to) = (bound(slice), bound(slice + 1));
        for k in 0..topo.clients.len() {
            send(k, &mut (from..to).map(|i| remote(k, i)), 20);
        }
        if seconds > 0 {
            let due = started + Duration::from_secs(u64::from(slice) + 1);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
    }
    let scan_time = started.elapsed();
    for client in &topo.clients {
        let packets = u64::from(per_client);
        ledger.add_client(&client.mac_text(), Dir::Upload, packets, packets * FRAME);
    }
    let sent = (BUSY_REMOTES * BUSY_PACKETS) as f64 + f64::from(per_client);
    // Paced over minutes, remotes also expire (`remote_idle_expiry`), busy ones included: then
    // only the totals and the bounds are exact, not the forgotten count or the series' sum.
    let exact = seconds == 0;
    let check = |o: &lab::agent::Observation| {
        let mut out = Vec::new();
        ledger.client_mismatches(&o.scrape, &mut out);
        for client in topo.clients.iter().filter(|_| exact) {
            // Every packet in one of the client's remote series or its `other`.
            let mac = client.mac_text();
            let series: f64 = o
                .scrape
                .series("gwsensor_remote_packets_total")
                .filter(|s| s.label("mac") == mac && s.label("direction") == "upload")
                .map(|s| s.value)
                .sum();
            if series != sent {
                out.push(format!("{mac}: its remote series and other hold {series} packets"));
            }
        }
        for kind in ["remote", "destination"] {
            let tracked = o.scrape.get("gwsensor_tracked", &[("kind", kind)]);
            let bound = (3 * TRACKED) as f64;
            if tracked.is_none_or(|t| t > bound || (exact && t != bound)) {
                out.push(format!("gwsensor_tracked{{kind=\"{kind}\"}} is {tracked:?}"));
            }
            let forgotten = o.scrape.get("gwsensor_tracking_forgotten_total", &[("kind", kind)]);
            let want = 3 * (u64::from(per_client) + BUSY_REMOTES as u64 - TRACKED);
            if exact && forgotten != Some(want as f64) {
                out.push(format!("forgotten {kind}s: {forgotten:?}, want {want}"));
            }
        }
        out
    };
    let seen = agent.expect("after the scan", check);
    let running = agent.process().status_kb("VmHWM").unwrap();
    let forgotten = seen.scrape.get("gwsensor_tracking_forgotten_total", &[("kind", "remote")]);

    agent.stop(Duration::from_secs(15)).unwrap_or_else(|e| panic!("SIGTERM: {e:#}"));
    let state = std::fs::metadata(topo.lab.dir().join("state.json")).expect("the state file").len();
    if let Err(e) = agent.start_again() {
        agent.fail(&format!("starting again after the scan: {e:#}"));
    }
    agent.expect("after a restart", check);
    let restarted = agent.process().status_kb("VmHWM").unwrap();
    let report = format!(
        "{} unique remotes from 3 clients ({per_client} each) in {:.0} s, with \
         deploy/sensor.yaml's tracking bounds and deploy/policy.yaml: the agent's ({} build) \
         peak RSS (VmHWM) was {:.1} MB while running and {:.1} MB after a restart; the state \
         file was {:.1} MB; {} remotes forgotten; client totals exact.",
        3 * per_client,
        scan_time.as_secs_f64(),
        if release.is_some() { "release" } else { "debug" },
        running as f64 / 1024.0,
        restarted as f64 / 1024.0,
        state as f64 / 1e6,
        forgotten.unwrap_or(f64::NAN),
    );
    eprintln!("{report}");
    assert!(running <= rss_bound, "peak RSS while running: {running} kB ({})", binary.display());
    assert!(restarted <= rss_bound, "peak RSS after the restart: {restarted} kB");
    assert!(state <= 16 * MB * MB, "state file: {state} bytes");
    if std::env::var_os("GWSENSOR_SCAN_DOCS").is_some() {
        let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/benchmarks.md");
        let body = format!(
            "## Tracking under a scan\n\n{report} Targets: peak RSS at most 64 MB running and at \
             the next start, a state file of at most 16 MB.\n\nMeasured by `cargo xtask bench \
             --scan` ({}, the release build of the agent): the netns test \
             `a_scan_of_unique_remotes_stays_within_the_tracking_bounds` with \
             GWSENSOR_SCAN_PER_CLIENT={per_client} and GWSENSOR_SCAN_SECONDS={seconds}: each \
             client first sends 5 datagrams of 1,000 bytes to each of 20 remotes (its top), then \
             one 20-byte datagram to each of its unique remotes, paced over the run; the \
             gateway blackholes them. The test command runs the same test with 15,000 remotes \
             a client, unpaced, and then also checks that exactly 2,048 remotes and 2,048 \
             destinations a client are remembered, that the forgotten count is exact, and that \
             every packet is in a remote series or `other`.\n",
            lab::docs::now_utc()
        );
        lab::docs::write_section(&doc, "scan", &body).expect("writing docs/benchmarks.md");
    }
}

/// A device on the LAN sends from made-up source MACs (one packet each) until the kernel's
/// client slots are all taken. The agent retires those clients (nothing ever answered them) at
/// the first poll that does not see them, so a device that joins after the flood is counted,
/// exactly, instead of waiting `client_idle_expiry`; a device that was talking keeps its slot.
#[test]
fn a_flood_of_spoofed_macs_does_not_keep_new_devices_out() {
    const SLOTS: u64 = 16;
    const SPOOFED: u8 = 40;
    if !privileged() {
        return;
    }
    let pins = lab::PinDir::new("test", "spoof");
    let topo = TopologyBuilder::new("gwt-spoof")
        .lan(LanKind::Bridge)
        .client("phone", [0x64, 0x09, 0x80, 0x77, 0x00, 0x31])
        .client("rogue", [0x64, 0x09, 0x80, 0x77, 0x00, 0x32])
        .client("laptop", [0x64, 0x09, 0x80, 0x77, 0x00, 0x33])
        .build()
        .expect("building the lab");
    lab::ip(&["-n", &topo.gateway.ns, "route", "add", "blackhole", "100.64.0.0/10"]).unwrap();
    let agent = start_agent(&topo, &pins, &format!("client_capacity: {SLOTS}\n"));
    let inet = &topo.internet.ns;
    let mut ledger = Ledger::for_topology(&topo);
    let mut exchange = |agent: &Agent, name: &str, port: u16, n: u64, context: &str| {
        let client = topo.client(name);
        let rx_addr = SocketAddr::new(client.ipv4.into(), port);
        let srv = UdpReceiver::bind(inet, sa(&format!("10.77.2.2:{port}"))).unwrap();
        let rx = UdpReceiver::bind(&client.ns, rx_addr).unwrap();
        let from = SocketAddr::new(client.ipv4.into(), port + 1);
        send_udp(&client.ns, from, srv.addr(), n as usize, 100).unwrap();
        let remote = sa(&format!("10.77.2.2:{}", port + 2));
        send_udp(inet, remote, rx.addr(), n as usize, 100).unwrap();
        srv.wait_for(n, DELIVERY_TIMEOUT).unwrap();
        rx.wait_for(n, DELIVERY_TIMEOUT).unwrap();
        let mac = client.mac_text();
        ledger.udp(&mac, Dir::Upload, srv.addr(), n, ETHERNET + IPV4 + UDP + 100);
        ledger.udp(&mac, Dir::Download, remote, n, ETHERNET + IPV4 + UDP + 100);
        expect(agent, &ledger, context);
    };
    exchange(&agent, "phone", 5041, 3, "the phone before the flood");

    // The flood: one UDP packet from each made-up MAC and LAN address, to a blackholed remote.
    let rogue = topo.client("rogue");
    let frames: Vec<Vec<u8>> = (0..SPOOFED)
        .map(|n| {
            let mut frame = Vec::new();
            etherparse::PacketBuilder::ethernet2([0x02, 0x66, 0, 0, 0, n], topo.gateway.lan_mac)
                .ipv4([10, 77, 1, 100 + n], [100, 64, 0, 1], 64)
                .udp(40000, 9)
                .write(&mut frame, &[0; 20])
                .unwrap();
            frame
        })
        .collect();
    lab::wire::send_frames(&rogue.ns, &rogue.ifname, &frames).unwrap();
    // 15 free slots went to the first spoofed MACs; once a poll no longer sees them (they
    // send nothing more) they are retired, being one-way with three quarters of slots held.
    let seen = agent.expect("the spoofed MACs retired", |o| {
        let one_way = o.scrape.get("gwsensor_clients_retired_total", &[("reason", "one_way")]);
        let mut out = Vec::new();
        if one_way != Some((SLOTS - 1) as f64) {
            out.push(format!("clients retired one-way: {one_way:?}, want {}", SLOTS - 1));
        }
        let full = o.scrape.get(
            "gwsensor_packets_total",
            &[("direction", "upload"), ("reason", "client_table_full")],
        );
        let want = f64::from(SPOOFED) - (SLOTS - 1) as f64;
        if full != Some(want) {
            out.push(format!("client_table_full uploads: {full:?}, want {want}"));
        }
        out
    });
    assert_eq!(seen.scrape.get("gwsensor_clients_tracked", &[]), Some(1.0), "the phone's slot");

    // A device that joins now gets a slot, and the phone kept its own: both exact.
    exchange(&agent, "laptop", 5051, 5, "the laptop after the flood");
    exchange(&agent, "phone", 5061, 2, "the phone after the flood");
}

/// Issue 15: with `lan_prefixes` unset, the clients' prefixes follow the interface. Under a
/// steady IPv4 stream both ways, the LAN's IPv6 /64 is replaced (the gateway's address
/// deleted and one of a new /64 added, the phone moved into it), as an ISP's rotated
/// delegation does; the phone's IPv6 streams run before and after, from its old and its new
/// address. Every packet of every stream is counted for the phone, exactly: nothing of the old
/// prefix is lost before the change, nothing of the new one is `not_client` after it, and the
/// IPv4 stream goes on through the swap of the kernel's prefix set. The change is one change.
#[test]
fn lan_prefixes_follow_a_renumbered_interface() {
    if !privileged() {
        return;
    }
    let pins = lab::PinDir::new("test", "follow");
    let topo = TopologyBuilder::new("gwt-follow")
        .lan(LanKind::Veth)
        .client("phone", [0x64, 0x09, 0x80, 0x77, 0x00, 0x01])
        .build()
        .expect("building the lab");
    let (phone_ns, mac, old_ip6) = {
        let phone = topo.client("phone");
        (phone.ns.clone(), phone.mac_text(), phone.ipv6)
    };
    let inet = topo.internet.ns.clone();
    let devices = format!("inventory:\n  devices:\n    - {{ mac: \"{mac}\", name: phone }}\n");
    let config = Config::for_topology(&topo, &pins).lan_prefixes(&[]).poll(POLL).with(&devices);
    let agent = Agent::start(
        &topo.lab,
        &topo.gateway.ns,
        Launch::new(env!("CARGO_BIN_EXE_sensor")),
        &config,
    )
    .unwrap_or_else(|e| panic!("starting the agent: {e:#}"));
    let value = |scrape: &Scrape, name: &str| {
        scrape.value(name, &[]).unwrap_or_else(|e| agent.fail(&format!("{e:#}")))
    };
    let (_, scrape) = scrape_of(&agent);
    assert_eq!(value(&scrape, "gwsensor_lan_prefixes"), 2.0, "10.77.1.0/24 and fd77:1::/64");
    assert_eq!(value(&scrape, "gwsensor_lan_prefix_changes_total"), 0.0);

    let stop_v4 = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let srv4 = UdpReceiver::bind(&inet, sa("10.77.2.2:5021")).unwrap();
    let phone4 = UdpReceiver::bind(&phone_ns, sa("10.77.1.10:6021")).unwrap();
    let up4 = stream(phone_ns.clone(), sa("10.77.1.10:40021"), srv4.addr(), 300, stop_v4.clone());
    let down4 = stream(inet.clone(), sa("10.77.2.2:5022"), phone4.addr(), 400, stop_v4.clone());

    // IPv6 streams both ways from (to) `phone6` for a second; what they sent, after delivery.
    let srv6 = UdpReceiver::bind(&inet, sa("[fd77:2::2]:5023")).unwrap();
    let mut ledger = Ledger::for_topology(&topo);
    let ipv6_phase = |phone6: std::net::Ipv6Addr, port: u16, ledger: &mut Ledger| {
        let phone_rx = UdpReceiver::bind(&phone_ns, SocketAddr::new(phone6.into(), 6023)).unwrap();
        let from_inet = sa(&format!("[fd77:2::2]:{port}"));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let before = srv6.datagrams();
        let up = stream(
            phone_ns.clone(),
            SocketAddr::new(phone6.into(), 40023),
            srv6.addr(),
            500,
            stop.clone(),
        );
        let down = stream(inet.clone(), from_inet, phone_rx.addr(), 600, stop.clone());
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let sent_up = up.join().expect("IPv6 upload stream").expect("IPv6 upload stream");
        let sent_down = down.join().expect("IPv6 download stream").expect("IPv6 download stream");
        srv6.wait_for(before + sent_up, DELIVERY_TIMEOUT).unwrap();
        phone_rx.wait_for(sent_down, DELIVERY_TIMEOUT).unwrap();
        ledger.udp(&mac, Dir::Upload, srv6.addr(), sent_up, ETHERNET + IPV6 + UDP + 500);
        ledger.udp(&mac, Dir::Download, from_inet, sent_down, ETHERNET + IPV6 + UDP + 600);
        (sent_up, sent_down)
    };
    let old_phase = ipv6_phase(old_ip6, 5024, &mut ledger);

    // The delegation rotates: fd77:1::/64 out, fd77:5::/64 in.
    let moved = topo.renumber_lan_ipv6("fd77:5::".parse().unwrap()).expect("renumbering the LAN");
    let new_ip6 = moved[0];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, scrape) = scrape_of(&agent);
        if value(&scrape, "gwsensor_lan_prefix_changes_total") >= 1.0 {
            break;
        }
        if Instant::now() > deadline {
            agent.fail("the LAN prefix change was not followed within 10 s");
        }
        std::thread::sleep(POLL);
    }
    let log = agent.process().log();
    if !log.contains("the LAN prefixes changed") || !log.contains("fd77:5::/64") {
        agent.fail("the log does not say the LAN prefixes changed to fd77:5::/64");
    }
    // The renumbering's own frames (MLD reports from ::, to group MACs) are `not_client`;
    // they are over within the second. From then on nothing may be.
    std::thread::sleep(Duration::from_secs(1));
    let not_client = |scrape: &Scrape| {
        ["upload", "download"]
            .map(|d| {
                scrape
                    .value("gwsensor_packets_total", &[("direction", d), ("reason", "not_client")])
                    .unwrap_or(0.0)
            })
            .iter()
            .sum::<f64>()
    };
    let not_client_after_change = not_client(&scrape_of(&agent).1);
    let new_phase = ipv6_phase(new_ip6, 5025, &mut ledger);

    stop_v4.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent_up = up4.join().expect("upload stream").expect("upload stream");
    let sent_down = down4.join().expect("download stream").expect("download stream");
    srv4.wait_for(sent_up, DELIVERY_TIMEOUT).unwrap();
    phone4.wait_for(sent_down, DELIVERY_TIMEOUT).unwrap();
    ledger.udp(&mac, Dir::Upload, srv4.addr(), sent_up, ETHERNET + IPV4 + UDP + 300);
    ledger.udp(&mac, Dir::Download, sa("10.77.2.2:5022"), sent_down, ETHERNET + IPV4 + UDP + 400);
    expect(
        &agent,
        &ledger,
        &format!(
            "IPv4 {sent_up} up / {sent_down} down throughout; IPv6 {old_phase:?} (up, down) from \
             the old prefix, {new_phase:?} from the new"
        ),
    );
    let (_, scrape) = scrape_of(&agent);
    assert_eq!(value(&scrape, "gwsensor_lan_prefix_changes_total"), 1.0, "one rotation");
    assert_eq!(value(&scrape, "gwsensor_lan_prefixes"), 2.0, "10.77.1.0/24 and fd77:5::/64");
    assert_eq!(not_client(&scrape), not_client_after_change, "not_client after the change");
}
