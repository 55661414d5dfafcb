//! `cargo xtask demo`: the real agent (release build) watching a small home network built
//! from network namespaces: a phone and a laptop behind a gateway with `br-lan`, an
//! "internet" host with a few servers, and steady mixed traffic (UDP both ways over IPv4 and
//! IPv6 to several remotes and ports, plus a real TCP download). Prints a live per-client
//! summary read from /metrics, and serves /metrics on the host through a small forwarder.
//! Everything is torn down on Ctrl-C or after `--seconds`.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use lab::{LanKind, Process, TcpForwarder, Topology, TopologyBuilder, UdpReceiver, prom::Scrape};

#[derive(clap::Args)]
pub struct DemoOpts {
    /// stop after this many seconds (default: run until Ctrl-C)
    #[arg(long)]
    pub seconds: Option<u64>,
}

/// Inside the gateway namespace; the forwarder makes the same port reachable on the host.
const METRICS: &str = "127.0.0.1:9977";
const SUMMARY_EVERY: Duration = Duration::from_secs(5);
/// Xiaomi's OUI, so the phone looks like one in the metrics.
const PHONE_MAC: [u8; 6] = [0x64, 0x09, 0x80, 0x4a, 0x1c, 0x07];
/// An Intel OUI, for the laptop.
const LAPTOP_MAC: [u8; 6] = [0x3c, 0xa9, 0xf4, 0x12, 0x34, 0x56];

pub fn run(opts: DemoOpts) -> Result<()> {
    lab::check_privileged().context(
        "the demo needs root (it builds network namespaces and loads eBPF): run it with sudo",
    )?;
    lab::ensure_bpffs()?;
    let stop = lab::interrupt_flag()?;
    let binary = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target/release/sensor");
    if !binary.exists() {
        bail!(
            "{} is missing: build it with `cargo xtask build --release`",
            binary.display()
        );
    }

    println!("[demo] building the home network (namespaces, br-lan, veths)…");
    let topo = TopologyBuilder::new("gwdemo")
        .lan(LanKind::Bridge)
        .client("phone", PHONE_MAC)
        .client("laptop", LAPTOP_MAC)
        .remote(ip("10.77.3.1"))
        .remote(ip("10.77.3.2"))
        .remote(ip("10.77.3.3"))
        .remote(ip("10.77.3.4"))
        .remote(ip("fd77:3::1"))
        .remote(ip("fd77:3::2"))
        .build()?;
    let pins = PinDir(PathBuf::from(format!(
        "/sys/fs/bpf/gwsensor-demo-{}",
        std::process::id()
    )));

    let config = topo.lab.dir().join("sensor.yaml");
    std::fs::write(
        &config,
        format!(
            "interface: {iface}\n\
             lan_prefixes: [\"{v4}\", \"{v6}\"]\n\
             poll_interval: 1s\n\
             metrics_listen: {METRICS}\n\
             top_remotes: 5\n\
             pin_path: {pin}\n\
             state_path: {state}\n",
            iface = topo.gateway.lan_if,
            v4 = lab::LAN_PREFIXES[0],
            v6 = lab::LAN_PREFIXES[1],
            pin = pins.0.display(),
            state = topo.lab.dir().join("state.json").display(),
        ),
    )?;
    let mut cmd = Command::new(&binary);
    cmd.arg("run")
        .arg("--config")
        .arg(&config)
        .env("NO_COLOR", "1");
    // Own process group: the terminal's Ctrl-C goes to the demo, which stops the agent itself.
    cmd.process_group(0);
    let agent = topo.lab.spawn(&topo.gateway.ns, cmd)?;
    wait_ready(&topo, &agent)?;

    let forwarder = match TcpForwarder::start(METRICS.parse()?, &topo.gateway.ns, METRICS.parse()?)
    {
        Ok(f) => f,
        // Port taken on the host (a real agent?): any free port will do.
        Err(_) => TcpForwarder::start("127.0.0.1:0".parse()?, &topo.gateway.ns, METRICS.parse()?)?,
    };
    let url = format!("http://{}/metrics", forwarder.local_addr());

    println!(
        "[demo] agent running (pid {}), log: {}",
        agent.pid(),
        agent.log_path().display()
    );
    println!("[demo] config: {}", config.display());
    for c in &topo.clients {
        println!(
            "[demo] client {:<6} {}  {}  {}",
            c.name,
            c.mac_text(),
            c.ipv4,
            c.ipv6
        );
    }
    println!("[demo] metrics on the host:   curl {url}");
    println!(
        "[demo] or inside the gateway: ip netns exec {} curl http://{METRICS}/metrics",
        topo.gateway.ns
    );
    match opts.seconds {
        Some(s) => println!("[demo] running for {s} s (Ctrl-C stops earlier)"),
        None => println!("[demo] running until Ctrl-C"),
    }

    let traffic_stop = Arc::new(AtomicBool::new(false));
    let traffic = start_traffic(&topo, &traffic_stop)?;

    let started = Instant::now();
    let deadline = opts.seconds.map(|s| started + Duration::from_secs(s));
    let mut next_summary = started + SUMMARY_EVERY;
    let mut outcome = Ok(());
    while !stop.load(Ordering::SeqCst) && deadline.is_none_or(|d| Instant::now() < d) {
        if let Some(status) = agent.try_wait()? {
            outcome = Err(anyhow::anyhow!(
                "the agent exited ({status}); its log:\n{}",
                agent.log()
            ));
            break;
        }
        if Instant::now() >= next_summary {
            next_summary += SUMMARY_EVERY;
            match lab::http_get(&topo.gateway.ns, &format!("http://{METRICS}/metrics")) {
                Ok(text) => print_summary(&topo, started.elapsed(), &url, &text),
                Err(e) => println!("[demo] scrape failed: {e:#}"),
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    println!("[demo] stopping: traffic, agent, namespaces…");
    traffic_stop.store(true, Ordering::SeqCst);
    for t in traffic {
        let _ = t.join();
    }
    drop(forwarder);
    if outcome.is_ok() {
        outcome = agent.terminate(Duration::from_secs(10)).map(drop);
    }
    let names = topo.lab.namespaces();
    drop(topo);
    drop(pins);
    let left = lab::ip(&["netns", "list"]).unwrap_or_default();
    let leaked: Vec<&String> = names
        .iter()
        .filter(|n| {
            left.lines()
                .any(|l| l.split_whitespace().next() == Some(n.as_str()))
        })
        .collect();
    if leaked.is_empty() {
        println!("[demo] cleaned up: namespaces {} removed", names.join(", "));
    } else {
        println!(
            "[demo] warning: namespaces left behind: {leaked:?} (remove with `ip netns del NAME`)"
        );
    }
    outcome
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("literal address")
}

/// Removes the demo agent's pinned maps (bpffs is global, they would outlive the demo).
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn wait_ready(topo: &Topology, agent: &Process) -> Result<()> {
    let url = format!("http://{METRICS}/metrics");
    lab::wait_agent_ready(&topo.gateway.ns, &url, agent, Duration::from_secs(30))
        .map_err(|e| anyhow::anyhow!("{e:#}; the agent's log:\n{}", agent.log()))
}

// ---------------------------------------------------------------------------------------
// Traffic

/// One UDP conversation: every 100 ms the client sends `up` datagrams and the server answers
/// with `down` ones, each socket bound to a fixed port (so the sensor sees a stable remote).
struct Conversation {
    client_ns: String,
    client: &'static str,
    server: &'static str,
    up: (usize, usize),
    down: (usize, usize),
}

fn start_traffic(topo: &Topology, stop: &Arc<AtomicBool>) -> Result<Vec<JoinHandle<()>>> {
    let (phone, laptop) = (
        topo.client("phone").ns.clone(),
        topo.client("laptop").ns.clone(),
    );
    let conversations = [
        // Phone: QUIC video over IPv6 (small acks up, full datagrams down) and DNS.
        Conversation {
            client_ns: phone.clone(),
            client: "[fd77:1::10]:50000",
            server: "[fd77:3::1]:443",
            up: (2, 120),
            down: (8, 1200),
        },
        Conversation {
            client_ns: phone.clone(),
            client: "10.77.1.10:50001",
            server: "10.77.3.2:53",
            up: (1, 40),
            down: (1, 120),
        },
        // Laptop: a voice call (symmetric), a photo backup over IPv6 (mostly up), DNS.
        Conversation {
            client_ns: laptop.clone(),
            client: "10.77.1.11:50002",
            server: "10.77.3.3:3478",
            up: (2, 160),
            down: (2, 160),
        },
        Conversation {
            client_ns: laptop.clone(),
            client: "[fd77:1::11]:50003",
            server: "[fd77:3::2]:8443",
            up: (4, 1300),
            down: (1, 80),
        },
        Conversation {
            client_ns: laptop.clone(),
            client: "10.77.1.11:50004",
            server: "10.77.3.2:53",
            up: (1, 40),
            down: (1, 150),
        },
    ];
    let mut threads = Vec::new();
    // One socket per server, shared by the clients talking to it (DNS).
    let mut servers: BTreeMap<&str, Arc<UdpReceiver>> = BTreeMap::new();
    for c in conversations {
        let client = UdpReceiver::bind(&c.client_ns, c.client.parse()?)?;
        let server = match servers.get(c.server) {
            Some(s) => s.clone(),
            None => {
                let s = Arc::new(UdpReceiver::bind(&topo.internet.ns, c.server.parse()?)?);
                servers.insert(c.server, s.clone());
                s
            }
        };
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = client.reply(server.addr(), c.up.0, c.up.1);
                let _ = server.reply(client.addr(), c.down.0, c.down.1);
                std::thread::sleep(Duration::from_millis(100));
            }
        }));
    }
    threads.push(tcp_download(
        &topo.internet.ns,
        &laptop,
        "10.77.3.4:80".parse()?,
        stop.clone(),
    )?);
    Ok(threads)
}

/// A real TCP connection: the laptop downloads from an HTTP-ish server at ~160 KiB/s (the
/// sensor sees the data downstream and the ACKs upstream, port 80 both ways).
fn tcp_download(
    server_ns: &str,
    client_ns: &str,
    server: SocketAddr,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>> {
    let listener = lab::in_netns(server_ns, || TcpListener::bind(server))??;
    let server_stop = stop.clone();
    std::thread::spawn(move || {
        let chunk = vec![0x5a_u8; 16 * 1024];
        while let Ok((mut conn, _)) = listener.accept() {
            let mut req = [0u8; 512];
            let _ = conn.read(&mut req);
            let _ = conn
                .write_all(b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n");
            while !server_stop.load(Ordering::Relaxed) {
                if conn.write_all(&chunk).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if server_stop.load(Ordering::Relaxed) {
                break;
            }
        }
    });
    let client_ns = client_ns.to_string();
    Ok(std::thread::spawn(move || {
        let conn = lab::in_netns(&client_ns, || {
            TcpStream::connect_timeout(&server, Duration::from_secs(2))
        });
        let Ok(Ok(mut conn)) = conn else {
            println!("[demo] TCP connection to {server} failed");
            return;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
        let _ =
            conn.write_all(format!("GET /big.iso HTTP/1.0\r\nHost: {server}\r\n\r\n").as_bytes());
        let mut buf = vec![0u8; 64 * 1024];
        while !stop.load(Ordering::Relaxed) {
            match conn.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
        }
    }))
}

// ---------------------------------------------------------------------------------------
// Live summary

#[derive(Default, Clone, Copy)]
struct Totals {
    up_bytes: f64,
    up_packets: f64,
    down_bytes: f64,
    down_packets: f64,
}

fn print_summary(topo: &Topology, elapsed: Duration, url: &str, text: &str) {
    let scrape = match Scrape::parse(text) {
        Ok(s) => s,
        Err(e) => {
            println!("[demo] unparsable scrape: {e:#}");
            return;
        }
    };
    println!();
    println!("── {:>4} s ── {url}", elapsed.as_secs());
    for c in &topo.clients {
        let mac = c.mac_text();
        let client = |name: &str, dir: &str| scrape.sum(name, &[("mac", &mac), ("direction", dir)]);
        let t = Totals {
            up_bytes: client("gwsensor_client_bytes_total", "upload"),
            up_packets: client("gwsensor_client_packets_total", "upload"),
            down_bytes: client("gwsensor_client_bytes_total", "download"),
            down_packets: client("gwsensor_client_packets_total", "download"),
        };
        println!(
            "{:<7} {}  up {:>10} {:>7} pkts   down {:>10} {:>7} pkts",
            c.name,
            mac,
            human_bytes(t.up_bytes),
            t.up_packets,
            human_bytes(t.down_bytes),
            t.down_packets
        );
        // Top remotes by bytes in both directions.
        let mut remotes: BTreeMap<(String, String, String), Totals> = BTreeMap::new();
        for (name, is_bytes) in [
            ("gwsensor_remote_bytes_total", true),
            ("gwsensor_remote_packets_total", false),
        ] {
            for s in scrape.matching(name, &[("mac", &mac)]) {
                let key = (
                    s.label("remote").to_string(),
                    s.label("protocol").to_string(),
                    s.label("port").to_string(),
                );
                let e = remotes.entry(key).or_default();
                match (s.label("direction"), is_bytes) {
                    ("upload", true) => e.up_bytes += s.value,
                    ("upload", false) => e.up_packets += s.value,
                    (_, true) => e.down_bytes += s.value,
                    (_, false) => e.down_packets += s.value,
                }
            }
        }
        let mut top: Vec<_> = remotes
            .into_iter()
            .filter(|(_, t)| t.up_bytes + t.down_bytes > 0.0)
            .collect();
        top.sort_by(|a, b| {
            (b.1.up_bytes + b.1.down_bytes).total_cmp(&(a.1.up_bytes + a.1.down_bytes))
        });
        for ((remote, proto, port), t) in top.into_iter().take(3) {
            let endpoint = if proto.is_empty() {
                remote
            } else {
                format!("{remote} {proto}/{port}")
            };
            println!(
                "          {endpoint:<26} up {:>10}   down {:>10}",
                human_bytes(t.up_bytes),
                human_bytes(t.down_bytes)
            );
        }
    }
}

fn human_bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
