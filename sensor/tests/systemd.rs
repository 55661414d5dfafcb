//! The agent as deploy/systemd/gateway-sensor.service runs it: as root with only CAP_BPF,
//! CAP_NET_ADMIN, CAP_PERFMON and CAP_NET_RAW (the unit's CapabilityBoundingSet; the last for
//! the DHCP capture of device fingerprints alone), telling systemd through
//! $NOTIFY_SOCKET when it is ready (Type=notify) and when it stops. The capability set is
//! applied with setpriv's bounding set, as systemd does; the notifications go to a real unix
//! datagram socket bound here, as systemd's is.
//!
//! Needs root (network namespaces, BPF). Without it the tests print a loud SKIPPED line and
//! pass, unless CI=true or GWSENSOR_TEST_REQUIRE_PRIVILEGED=1, where they fail.

use std::{
    net::SocketAddr,
    os::unix::net::UnixDatagram,
    path::Path,
    time::{Duration, Instant},
};

use lab::{
    Agent, LanKind, Process, Topology, TopologyBuilder, UdpReceiver,
    agent::{Config, Launch},
    prom::Scrape,
    send_udp,
};
use nix::sys::signal::Signal;

const METRICS: &str = "127.0.0.1:9977";
const API: &str = "127.0.0.1:9978";
/// The unit's CapabilityBoundingSet, in setpriv's words.
const UNIT_CAPABILITIES: [&str; 4] = ["bpf", "net_admin", "perfmon", "net_raw"];
/// What the agent warns without CAP_NET_RAW (it counts on, without device fingerprints).
const NO_DHCP_CAPTURE: &str = "DHCP capture on lan0: opening a packet socket";
const START_TIMEOUT: Duration = Duration::from_secs(60);

fn can_run() -> bool {
    lab::lab_tests_can_run("systemd tests", &["setpriv"])
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn config(topo: &Topology, pins: &lab::PinDir) -> Config {
    Config::for_topology(topo, pins)
        .lan_prefixes(&[lab::LAN_PREFIXES[0]])
        .poll(Duration::from_millis(200))
        .with(&format!(
            "inventory:\n  devices:\n    - {{ mac: \"{}\", name: phone }}\n",
            topo.clients[0].mac_text()
        ))
}

/// Starts `sensor run` (config file `<name>.yaml`) in the gateway namespace with exactly `caps`
/// as its bounding (and so effective) capability set and $NOTIFY_SOCKET pointing at `notify`;
/// returns at once (the test watches it start).
fn start_agent<'t>(
    topo: &'t Topology,
    name: &str,
    caps: &[&str],
    config: &Config,
    notify: &Path,
) -> Agent<'t> {
    let set: String = std::iter::once("-all".to_string())
        .chain(caps.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    let launch = Launch::new(env!("CARGO_BIN_EXE_sensor"))
        .name(name)
        .wrapped_in("setpriv", &["--bounding-set", &set, "--inh-caps=-all", "--"])
        .env("NOTIFY_SOCKET", notify)
        .log("info")
        .no_ready_wait();
    Agent::start(&topo.lab, &topo.gateway.ns, launch, config)
        .unwrap_or_else(|e| panic!("starting the agent under setpriv: {e:#}"))
}

fn notify_socket(topo: &Topology, name: &str) -> (UnixDatagram, std::path::PathBuf) {
    let path = topo.lab.dir().join(name);
    let sock =
        UnixDatagram::bind(&path).unwrap_or_else(|e| panic!("binding {}: {e}", path.display()));
    (sock, path)
}

/// The next datagram, or None if none comes within `timeout` (or, with `agent`, once it exits).
fn receive(sock: &UnixDatagram, timeout: Duration, agent: Option<&Process>) -> Option<String> {
    let deadline = Instant::now() + timeout;
    sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match sock.recv(&mut buf) {
            Ok(n) => return Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("reading the notify socket: {e}"),
        }
        if Instant::now() > deadline || agent.is_some_and(|a| a.try_wait().ok().flatten().is_some())
        {
            return None;
        }
    }
}

#[test]
fn with_the_units_capabilities_the_agent_counts_and_notifies_ready_and_stopping() {
    unit_capabilities("tcx");
}

/// The same with a clsact filter over netlink (kernels before 6.6), through a `kill -9`: the
/// next agent, with the same capabilities, replaces the filter the killed one left.
#[test]
fn with_the_units_capabilities_the_clsact_filter_is_replaced_after_kill_9() {
    unit_capabilities("netlink");
}

fn unit_capabilities(tc: &str) {
    if !can_run() {
        return;
    }
    let pins = lab::PinDir::new("systemd", &format!("caps-{tc}"));
    let topo = TopologyBuilder::new(&format!("gwt-sd{}", &tc[..1]))
        .lan(LanKind::Veth)
        .client("phone", [0x64, 0x09, 0x80, 0x77, 0x00, 0x21])
        .build()
        .expect("building the lab");
    let (sock, path) = notify_socket(&topo, "notify.sock");
    let config = config(&topo, &pins).with(&format!("tc_attach: {tc}\n"));
    let mut agent = start_agent(&topo, "sensor", &UNIT_CAPABILITIES, &config, &path);
    let fail = |agent: &Agent, msg: &str| -> ! { panic!("{msg}\n{}", agent.log_tail()) };

    let ready = receive(&sock, START_TIMEOUT, Some(agent.process()))
        .unwrap_or_else(|| fail(&agent, "no READY=1 from the agent"));
    assert_eq!(
        ready,
        format!("READY=1\nSTATUS=counting on lan0, metrics at {METRICS}, API at {API}\n")
    );
    // READY means ready: the programs are attached and /metrics answers at that moment.
    let text = agent
        .scrape_text()
        .unwrap_or_else(|e| fail(&agent, &format!("/metrics after READY=1: {e:#}")));
    let scrape = Scrape::parse(&text).unwrap();
    assert_eq!(
        scrape.get("gwsensor_xdp_attach_mode", &[("interface", "lan0"), ("mode", "driver")]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        scrape.get("gwsensor_tc_attach_mode", &[("interface", "lan0"), ("mode", tc)]),
        Some(1.0),
        "{text}"
    );

    // And it counts with nothing more: datagrams of 100 bytes, 14 + 20 + 8 + 100 = 142 B each.
    let phone = topo.client("phone");
    let server = UdpReceiver::bind(&topo.internet.ns, sa("10.77.2.2:5001")).unwrap();
    let phone_rx = UdpReceiver::bind(&phone.ns, sa("10.77.1.10:6001")).unwrap();
    let counted = |agent: &Agent, sent: u64| {
        let labels = |dir| [("client", "phone"), ("mac", "64:09:80:77:00:21"), ("direction", dir)];
        let want = (Some(sent as f64), Some((sent * 142) as f64));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = agent.scrape_text().unwrap_or_default();
            let scrape = Scrape::parse(&text).unwrap_or_default();
            let got = |dir| {
                (
                    scrape.get("gwsensor_client_packets_total", &labels(dir)),
                    scrape.get("gwsensor_client_bytes_total", &labels(dir)),
                )
            };
            if got("upload") == want && got("download") == want {
                break;
            }
            if Instant::now() > deadline {
                let seen = (got("upload"), got("download"));
                fail(agent, &format!("phone (up, down): {seen:?}, want {want:?} each\n{text}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let exchange = |n: u64, total: u64| {
        send_udp(&phone.ns, sa("10.77.1.10:40001"), server.addr(), n as usize, 100).unwrap();
        send_udp(&topo.internet.ns, sa("10.77.2.2:5002"), phone_rx.addr(), n as usize, 100)
            .unwrap();
        server.wait_for(total, Duration::from_secs(5)).unwrap();
        phone_rx.wait_for(total, Duration::from_secs(5)).unwrap();
    };
    exchange(4, 4);
    counted(&agent, 4);
    if agent.process().log().contains(NO_DHCP_CAPTURE) {
        fail(&agent, "the DHCP capture did not open with the unit's capabilities");
    }

    if tc == "netlink" {
        // A crash, then the next start with the same capabilities: it must replace the
        // filter left on lan0 (netlink, CAP_NET_ADMIN) and go on counting, downloads too.
        agent.kill().unwrap_or_else(|e| panic!("{e:#}"));
        if let Err(e) = agent.start_again() {
            fail(&agent, &format!("starting again after kill -9: {e:#}"));
        }
        receive(&sock, START_TIMEOUT, Some(agent.process()))
            .unwrap_or_else(|| fail(&agent, "no READY=1 after kill -9"));
        let log = agent.process().log();
        if !log.contains("TC egress clsact filter adopted") {
            fail(&agent, "the agent after kill -9 did not adopt the clsact filter");
        }
        exchange(3, 7);
        counted(&agent, 7);
    }

    agent.process().signal(Signal::SIGTERM).unwrap();
    let stopping = receive(&sock, Duration::from_secs(15), None)
        .unwrap_or_else(|| fail(&agent, "no STOPPING=1 after SIGTERM"));
    assert_eq!(stopping, "STOPPING=1\nSTATUS=saving state; the programs stay attached\n");
    match agent.process().wait_timeout(Duration::from_secs(15)).unwrap() {
        Some(status) if status.success() => {}
        other => fail(&agent, &format!("the agent did not exit cleanly after SIGTERM: {other:?}")),
    }
}

#[test]
fn without_any_one_of_the_three_capabilities_the_agent_refuses_to_start() {
    if !can_run() {
        return;
    }
    let topo = TopologyBuilder::new("gwt-sdc")
        .lan(LanKind::Veth)
        .client("phone", [0x64, 0x09, 0x80, 0x77, 0x00, 0x22])
        .build()
        .expect("building the lab");
    // What the kernel says when each one is missing: CAP_BPF creates maps; CAP_NET_ADMIN lets
    // networking program types (XDP, TC) load at all (EPERM); without CAP_PERFMON the verifier
    // refuses the payload-copy program's pointer handling (EACCES, with its log).
    let expected = [
        ("bpf", "failed to create map"),
        (
            "net_admin",
            "the kernel verifier rejected the XDP capture program: the BPF_PROG_LOAD syscall returned Operation not permitted",
        ),
        ("perfmon", "pointer arithmetic with it prohibited for !root"),
    ];
    for (missing, error) in expected {
        let pins = lab::PinDir::new("systemd", &format!("no-{missing}"));
        let (sock, path) = notify_socket(&topo, &format!("notify-no-{missing}.sock"));
        let caps: Vec<&str> = UNIT_CAPABILITIES.into_iter().filter(|c| *c != missing).collect();
        let name = format!("sensor-no-{missing}");
        let agent = start_agent(&topo, &name, &caps, &config(&topo, &pins), &path);
        let status = agent.process().wait_timeout(START_TIMEOUT).unwrap();
        let log = agent.process().log();
        if status.is_none() {
            agent.process().signal(Signal::SIGKILL).unwrap();
        }
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(1),
            "without CAP_{missing}: exit status\n{log}"
        );
        assert!(log.contains(error), "without CAP_{missing}: expected {error:?} in the log\n{log}");
        assert_eq!(
            receive(&sock, Duration::ZERO, None),
            None,
            "without CAP_{missing}: READY=1 sent\n{log}"
        );
    }
}

/// CAP_NET_RAW only opens the packet socket of the DHCP capture: without it the agent starts,
/// says what is missing, and counts.
#[test]
fn without_cap_net_raw_the_agent_runs_without_device_fingerprints() {
    if !can_run() {
        return;
    }
    let topo = TopologyBuilder::new("gwt-sdr")
        .lan(LanKind::Veth)
        .client("phone", [0x64, 0x09, 0x80, 0x77, 0x00, 0x23])
        .build()
        .expect("building the lab");
    let pins = lab::PinDir::new("systemd", "no-net_raw");
    let (sock, path) = notify_socket(&topo, "notify-no-net_raw.sock");
    let caps: Vec<&str> = UNIT_CAPABILITIES.into_iter().filter(|c| *c != "net_raw").collect();
    let agent = start_agent(&topo, "sensor-no-net_raw", &caps, &config(&topo, &pins), &path);
    let ready = receive(&sock, START_TIMEOUT, Some(agent.process()));
    let log = agent.process().log();
    assert!(ready.is_some_and(|r| r.starts_with("READY=1")), "no READY=1\n{log}");
    assert!(log.contains(NO_DHCP_CAPTURE), "expected {NO_DHCP_CAPTURE:?} in the log\n{log}");
    agent.stop(Duration::from_secs(15)).unwrap_or_else(|e| panic!("{e:#}"));
}
