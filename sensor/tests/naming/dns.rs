//! 1. DNS answers name UDP flows, over IPv4 and IPv6.

use super::*;

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
    let agent = start_agent(&topo, config(&topo, &pins, &devices, &[], ""));
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
    wait_poll(&agent);
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
        .unwrap_or_else(|e| agent.fail(&format!("resolving over TCP: {e:#}")));
    if x.rcode != 0
        || x.addrs.iter().map(|(a, _)| a.to_string()).collect::<Vec<_>>() != ["10.77.3.12"]
    {
        agent.fail(&format!("ota.tcp-only.net over TCP: rcode {}, answer {:?}", x.rcode, x.addrs));
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
