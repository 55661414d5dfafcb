//! 2. A flow's own name (TLS SNI, HTTP Host) wins over what DNS said about its address.

use super::*;

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
    let agent = start_agent(&topo, config(&topo, &pins, &devices, &[], ""));
    let mut ledger = Ledger::default();
    ledger.name(&mac, "phone");

    let dns4 = sa("10.77.1.1:53");
    resolve(&agent, &mut ledger, &mac, &cns, dns4, "cdn.decoy-cdn.net", DNS_A, &[tls_ip]);
    resolve(&agent, &mut ledger, &mac, &cns, dns4, "edge.example.net", DNS_A, &[http_ip]);
    wait_events(&agent, "dns", 2.0);

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
    wait_poll(&agent);
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
    .unwrap_or_else(|e| agent.fail(&format!("openssl s_client: {e:#}")));
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !stdout.contains("HTTP/1.0 200 ok") {
        agent.fail(&format!(
            "openssl s_client failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }

    // HTTP: a plain request whose Host names the flow, sent several polls after the handshake:
    // the handshake's packets must still count under the Host name, not the DNS name.
    let request = b"GET /firmware.bin HTTP/1.1\r\nHost: firmware.example.org\r\nUser-Agent: lab\r\nConnection: close\r\n\r\n";
    let answer = services::tcp_exchange_after(&cns, http.addr(), POLL * 3, request)
        .unwrap_or_else(|e| agent.fail(&format!("HTTP request: {e:#}")));
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
