//! The agent's HTTP server against LAN clients that hold connections (issue 16): slowloris
//! (a request head a byte at a time), never-reading clients (pipelined scrapes, responses never
//! read) and idle connections, from a lab client, while /metrics and /healthz are asked from
//! the gateway itself. Small limits and timeouts, so the test sees them act.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use lab::{
    LanKind, TopologyBuilder,
    agent::{Agent, Config, Launch},
    http::Client,
    prom::Scrape,
};

const HEADER_TIMEOUT: Duration = Duration::from_secs(4);
/// Shorter than the header timeout: a never-reading client also stops sending requests.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Per kind of attack: more than the per-address limit.
const ATTACKERS: usize = 60;

fn connect_all(ns: &str, to: SocketAddr, n: usize) -> Vec<TcpStream> {
    lab::in_netns(ns, move || {
        (0..n)
            .map(|_| TcpStream::connect_timeout(&to, Duration::from_secs(2)).expect("connect"))
            .collect::<Vec<_>>()
    })
    .unwrap()
}

/// Whether the server has closed `s` (EOF or reset; data it sent before is read and skipped).
fn closed_by_server(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut s = s;
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

#[test]
fn slow_and_idle_clients_cannot_hold_the_server() {
    if !lab::lab_tests_can_run("http tests", &[]) {
        return;
    }
    let pins = lab::PinDir::new("test", "http");
    let topo = TopologyBuilder::new("gwt-http")
        .lan(LanKind::Veth)
        .client("laptop", [0x64, 0x09, 0x80, 0x77, 0x00, 0x21])
        .build()
        .expect("building the lab");
    let laptop = topo.client("laptop");
    let config = Config::for_topology(&topo, &pins)
        .poll(Duration::from_millis(500))
        .metrics("[::]:9977".parse().unwrap())
        .with(&format!(
            "http:\n  max_connections: 12\n  max_connections_per_address: 6\n  \
             header_timeout: {}ms\n  write_timeout: {}ms\n",
            HEADER_TIMEOUT.as_millis(),
            WRITE_TIMEOUT.as_millis()
        ));
    // No ready wait through the agent's own client: its pooled connection would hold a place.
    let launch = Launch::new(env!("CARGO_BIN_EXE_sensor")).no_ready_wait();
    let agent = Agent::start(&topo.lab, &topo.gateway.ns, launch, &config)
        .unwrap_or_else(|e| panic!("starting the agent: {e:#}"));
    // The scraper: the gateway's own loopback (an address of its own), a new client (and
    // connection) each time, dropped after use so that no pooled connection holds a place.
    let ns = topo.gateway.ns.clone();
    let get = |path: &str| -> String {
        Client::new(Some(&ns))
            .get_ok(&format!("http://127.0.0.1:9977{path}"))
            .unwrap_or_else(|e| agent.fail(&format!("GET {path}: {e:#}")))
    };
    let scrape = || Scrape::parse(&get("/metrics")).unwrap();
    lab::wait::until(
        "the agent to serve",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || Ok(Client::new(Some(&ns)).get_ok("http://127.0.0.1:9977/healthz").is_ok().then_some(())),
    )
    .unwrap_or_else(|e| agent.fail(&format!("{e:#}")));
    let polls_before = scrape().value("gwsensor_poll_duration_seconds_count", &[]).unwrap();
    // The scraper's connections are closed (EOF) by now.
    std::thread::sleep(Duration::from_millis(300));

    let gw4 = SocketAddr::from((topo.gateway.lan_ipv4, 9977));
    let gw6 = SocketAddr::from((topo.gateway.lan_ipv6, 9977));
    // Over IPv4: every other connection idle, the others slowloris (a head that never ends).
    let slow = connect_all(&laptop.ns, gw4, ATTACKERS);
    for mut s in slow.iter().skip(1).step_by(2) {
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: gw\r\n");
    }
    // Over IPv6 (a second address): many pipelined scrapes each, responses never read.
    let deaf = connect_all(&laptop.ns, gw6, ATTACKERS);
    // Requests are fed as the server reads them, until its responses fill every buffer
    // between it and the client and its writes stall.
    let pipelined = b"GET /metrics HTTP/1.1\r\nHost: gw\r\n\r\n".repeat(400);
    let feeds: Vec<TcpStream> = deaf.iter().map(|s| s.try_clone().unwrap()).collect();
    let feeder = std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            for mut s in &feeds {
                s.set_nonblocking(true).unwrap();
                let _ = s.write(&pipelined);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let attack_at = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    for mut s in slow.iter().skip(1).step_by(2) {
        let _ = s.write_all(b"X-a: b\r\n");
    }

    // They hold every place (6 per address, 12 in all): the scrape and /healthz are answered,
    // the scrape's connection taking the place of the oldest of an address holding 6.
    // One client for both, so that /healthz goes over the scrape's connection (kept alive):
    // a second connection would evict once more, or not, depending on whether the server had
    // seen the first one close yet.
    let during_client = Client::new(Some(&ns));
    let during_get = |path: &str| {
        during_client
            .get_ok(&format!("http://127.0.0.1:9977{path}"))
            .unwrap_or_else(|e| agent.fail(&format!("GET {path}: {e:#}")))
    };
    let during = Scrape::parse(&during_get("/metrics")).unwrap();
    assert_eq!(during_get("/healthz"), "ok\n");
    drop(during_client);
    assert!(
        attack_at.elapsed() < HEADER_TIMEOUT.min(WRITE_TIMEOUT),
        "the scrape came after the timeouts: the test proves nothing on so slow a machine"
    );
    assert_eq!(during.value("gwsensor_http_connections", &[]).unwrap(), 12.0);

    feeder.join().unwrap();
    // The held ones are closed after their timeout: the client sees it.
    let deadline = attack_at + HEADER_TIMEOUT.max(WRITE_TIMEOUT) + Duration::from_secs(10);
    loop {
        let open_slow = slow.iter().filter(|s| !closed_by_server(s)).count();
        let open_deaf = deaf.iter().filter(|s| !closed_by_server(s)).count();
        if open_slow + open_deaf == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open_slow} idle or slowloris and {open_deaf} never-reading connections still open"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Counters show as of the agent's last state save (after every poll here): read them once
    // the timeouts are there.
    let closed = |s: &Scrape, reason: &str| {
        s.get("gwsensor_http_connections_closed_total", &[("reason", reason)]).unwrap_or(0.0)
    };
    let after = lab::wait::until(
        "the timeouts counted",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || {
            let s = scrape();
            Ok((closed(&s, "header_timeout") + closed(&s, "write_timeout") >= 11.0).then_some(s))
        },
    )
    .unwrap_or_else(|e| agent.fail(&format!("{e:#}")));
    assert_eq!(closed(&after, "address_limit"), (2 * (ATTACKERS - 6)) as f64);
    assert_eq!(closed(&after, "evicted"), 1.0);
    assert_eq!(closed(&after, "limit"), 0.0);
    let (header, write) = (closed(&after, "header_timeout"), closed(&after, "write_timeout"));
    // 11 held (12, one evicted): 6 of one kind, 5 of the other.
    assert_eq!(header + write, 11.0, "header {header}, write {write}");
    assert!(header >= 5.0 && write >= 5.0, "header {header}, write {write}");
    assert_eq!(after.value("gwsensor_http_connections", &[]).unwrap(), 1.0, "only the scraper");
    // Polling and saving went on throughout.
    assert!(after.value("gwsensor_poll_duration_seconds_count", &[]).unwrap() > polls_before);
    assert_eq!(after.value("gwsensor_state_save_failures", &[]).unwrap(), 0.0);
}
