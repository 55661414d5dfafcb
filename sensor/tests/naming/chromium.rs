//! 6. A current browser is named from the wire alone.
//!
//! Debian's Chromium, headless in the client's namespace, opens HTTPS connections to names no
//! DNS answer carries (`--host-resolver-rules` maps each to its own address), over TCP with its
//! default post-quantum key share (a ~1.9 kB ClientHello over two segments), then over QUIC
//! (`--origin-to-force-quic-on`). At least 99% of the flows must carry their exact name.
//!
//! The servers never answer (a TCP sink, a UDP receiver): the client's first flight is all the
//! sensor needs, and Chromium's retries stay within the first packets of each flow.

use super::*;

/// Hosts per run: 99% of them is all but one.
const HOSTS: usize = 100;

/// Host `i`'s address: over TCP in 10.77.3.0/24, over QUIC in 10.77.4.0/24 (a flow's own
/// name is kept per address and port, whatever the protocol).
fn remote(quic: bool, i: usize) -> String {
    format!("10.77.{}.{}", if quic { 4 } else { 3 }, 100 + i)
}

/// Runs Chromium headless in `client`'s namespace on a page with one image from each of
/// `hosts` (host `i` mapped to [`remote`]`(quic, i)`), over QUIC if `quic`, until at least 99%
/// of the flows carry their host's name (or the agent's settle timeout passes).
fn browse(
    topo: &Topology,
    agent: &Agent,
    client: &lab::Client,
    quic: bool,
    hosts: &[String],
) -> Observation {
    let what = if quic { "chromium over QUIC" } else { "chromium over TCP" };
    let protocol = if quic { "udp" } else { "tcp" };
    let dir = topo.lab.dir().join(format!("chromium-{what}"));
    std::fs::create_dir_all(&dir).unwrap();
    let page = dir.join("page.html");
    let imgs: String = hosts.iter().map(|h| format!("<img src=\"https://{h}/p.png\">\n")).collect();
    std::fs::write(&page, format!("<html><body>\n{imgs}</body></html>\n")).unwrap();
    // Every other name fails, so that nothing of Chromium's own reaches a resolver.
    let mut rules: Vec<String> =
        hosts.iter().enumerate().map(|(i, h)| format!("MAP {h} {}", remote(quic, i))).collect();
    rules.push("MAP * ~NOTFOUND".into());
    let mut cmd = Command::new("chromium");
    cmd.env("HOME", &dir)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--ignore-certificate-errors",
        ])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .arg(format!("--host-resolver-rules={}", rules.join(",")))
        .arg(format!("file://{}", page.display()));
    if quic {
        // Forced for every host: no TCP fallback to name them instead.
        let force: Vec<String> = hosts.iter().map(|h| format!("{h}:443")).collect();
        cmd.arg("--enable-quic").arg(format!("--origin-to-force-quic-on={}", force.join(",")));
    }
    let chromium = topo.lab.spawn(&client.ns, cmd).expect("starting chromium");
    let mac = client.mac_text();
    let seen = agent.expect(what, |o| {
        if let Ok(Some(status)) = chromium.try_wait() {
            return vec![format!("chromium exited early ({status}): {}", chromium.log_tail(20))];
        }
        named_share(o, &mac, protocol, hosts)
    });
    let _ = chromium.terminate(Duration::from_secs(5));
    seen
}

/// Flows of `protocol`/443 to the hosts' addresses and how many carry their host's exact
/// name; complaints unless all flows exist and at least 99% are named.
fn named_share(o: &Observation, mac: &str, protocol: &str, hosts: &[String]) -> Vec<String> {
    let mut missing = Vec::new();
    let mut wrong = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let quic = protocol == "udp";
        match o.flow(mac, &remote(quic, i), protocol, 443) {
            None => missing.push(remote(quic, i)),
            Some(f) if f["name"] != h.as_str() => {
                wrong.push(format!("{} named {}", remote(quic, i), f["name"]))
            }
            Some(_) => {}
        }
    }
    let named = hosts.len() - missing.len() - wrong.len();
    eprintln!("{protocol}: {named} of {} flows named", hosts.len());
    let mut out = Vec::new();
    if !missing.is_empty() {
        out.push(format!(
            "{} of {} {protocol} flows missing: {missing:?}",
            missing.len(),
            hosts.len()
        ));
    }
    if named * 100 < hosts.len() * 99 {
        out.push(format!(
            "{named} of {} {protocol} flows named, want >= 99%: {wrong:?}",
            hosts.len()
        ));
    }
    out
}

#[test]
fn chromium_is_named_over_tcp_and_quic() {
    if !privileged(&["chromium"]) {
        return;
    }
    let pins = lab::PinDir::new("naming", "chromium");
    let mut builder = TopologyBuilder::new("gwn-chr")
        .lan(LanKind::Veth)
        .client("laptop", [0x3c, 0x22, 0xfb, 0x10, 0x00, 0x01]);
    for i in 0..HOSTS {
        builder = builder.remote(ip(&remote(false, i))).remote(ip(&remote(true, i)));
    }
    let topo = builder.build().expect("building the lab");
    let laptop = topo.client("laptop");
    let (mac, inet) = (laptop.mac_text(), topo.internet.ns.clone());
    let tcp = lab::TcpSink::start(&inet, sa("0.0.0.0:443")).expect("TCP sink");
    let udp = UdpReceiver::bind(&inet, sa("0.0.0.0:443")).expect("UDP receiver");

    let devices = [Device { mac: &mac, name: "laptop", group: "", tags: &[] }];
    let agent = start_agent(&topo, config(&topo, &pins, &devices, &[], ""));

    // TLS over TCP, Chromium's defaults (X25519MLKEM768 key share).
    let tls_hosts: Vec<String> = (0..HOSTS).map(|i| format!("c{i}.pq-tls.example")).collect();
    let o = browse(&topo, &agent, laptop, false, &tls_hosts);
    assert!(tcp.accepted() >= HOSTS as u64, "{} connections accepted", tcp.accepted());
    // The ClientHellos did span segments: the kernel followed them.
    let segments =
        o.value("gwsensor_events_received_total", &[("kind", "tls_segment")]).unwrap_or(0.0);
    assert!(segments >= HOSTS as f64, "tls_segment events: {segments}");

    let quic_hosts: Vec<String> = (0..HOSTS).map(|i| format!("q{i}.pq-quic.example")).collect();
    let o = browse(&topo, &agent, laptop, true, &quic_hosts);
    assert!(udp.datagrams() >= 2 * HOSTS as u64, "{} datagrams", udp.datagrams());
    // Chromium's post-quantum ClientHello spans two Initials.
    let initials = o.value("gwsensor_events_received_total", &[("kind", "quic")]).unwrap_or(0.0);
    assert!(initials >= 2.0 * HOSTS as f64, "quic events: {initials}");
}
