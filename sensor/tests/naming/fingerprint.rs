//! Device fingerprints from real DHCP requests (issue 15): a phone on a private MAC broadcasts
//! Android's DISCOVER and REQUEST, a laptop Windows' DHCPv6 SOLICIT; the agent's capture on
//! the gateway's LAN interface takes them in, `gwsensor_client_info` says what each device is,
//! a policy rule matching `os: android` applies to the phone alone, and the fingerprints
//! survive a restart.

use lab::dhcp::{V4Kind, V6Kind, v4_frame, v6_frame};

use super::*;

/// Android's default host name on a Xiaomi phone, its vendor class, on a randomized MAC.
const PHONE_MAC: [u8; 6] = [0x6a, 0x1f, 0x33, 0x10, 0x20, 0x30];
const LAPTOP_MAC: [u8; 6] = [0x3c, 0xa9, 0xf4, 0x77, 0x00, 0x02];

/// Android 13's requests, as its DHCP client sends them.
fn android_requests() -> Vec<Vec<u8>> {
    let client_id = [&[1u8][..], &PHONE_MAC].concat();
    let options: [(u8, &[u8]); 5] = [
        (61, &client_id),
        (57, &[0x05, 0xdc]),
        (60, b"android-dhcp-13"),
        (12, b"Redmi-Note-12"),
        (55, &[1, 3, 6, 15, 26, 28, 51, 58, 59, 43, 114, 108]),
    ];
    let mut request = options.to_vec();
    request.push((50, &[10, 77, 1, 10]));
    vec![
        v4_frame(PHONE_MAC, V4Kind::Discover, &options),
        v4_frame(PHONE_MAC, V4Kind::Request, &request),
    ]
}

/// Windows 11's SOLICIT: client FQDN, vendor class (Microsoft, `MSFT 5.0`), ORO.
fn windows_solicit() -> Vec<u8> {
    let fqdn = [&[0u8, 15][..], b"DESKTOP-4T2K9QF", &[0]].concat();
    let vendor = [&311u32.to_be_bytes()[..], &[0, 8], b"MSFT 5.0"].concat();
    v6_frame(
        LAPTOP_MAC,
        V6Kind::Solicit,
        &[
            (8, &[0, 0]),
            (3, &[0; 12]),
            (39, &fqdn),
            (16, &vendor),
            (6, &[0, 17, 0, 23, 0, 24, 0, 32]),
        ],
    )
}

#[test]
fn dhcp_fingerprints_name_os_and_class_and_drive_the_policy() {
    if !privileged(&[]) {
        return;
    }
    let pins = lab::PinDir::new("naming", "dhcp");
    let topo = TopologyBuilder::new("gwn-dhcp")
        .lan(LanKind::Bridge)
        .client("phone", PHONE_MAC) // 10.77.1.10
        .client("laptop", LAPTOP_MAC) // 10.77.1.11
        .remote(ip("10.77.4.12"))
        .build()
        .expect("building the lab");
    let policy = topo.lab.dir().join("policy.yaml");
    std::fs::write(
        &policy,
        "rules:\n  - name: AndroidTraffic\n    match: {client: {os: \"android*\"}}\n    \
         condition: {traffic: {window: 5m}}\n",
    )
    .unwrap();
    let agent = start_agent(
        &topo,
        config(&topo, &pins, &[], &[], &format!("policy: {:?}\n", policy.display().to_string())),
    );
    let (phone, laptop) = (topo.client("phone"), topo.client("laptop"));
    lab::wire::send_frames(&phone.ns, &phone.ifname, &android_requests()).unwrap();
    lab::wire::send_frames(&laptop.ns, &laptop.ifname, &[windows_solicit()]).unwrap();
    agent.expect("the DHCP requests captured", |o| {
        let learnt = o.value("gwsensor_dhcp_requests_total", &[("outcome", "learnt")]);
        let held = o.value("gwsensor_dhcp_fingerprints", &[]);
        if learnt == Some(3.0) && held == Some(2.0) {
            vec![]
        } else {
            vec![format!("learnt {learnt:?} (want 3), fingerprints {held:?} (want 2)")]
        }
    });

    // Traffic makes them clients of the metrics (and of the rule).
    let srv = UdpReceiver::bind(&topo.internet.ns, sa("10.77.4.12:443")).unwrap();
    for (i, c) in [phone, laptop].into_iter().enumerate() {
        let from = SocketAddr::new(IpAddr::V4(c.ipv4), 41000 + i as u16);
        send_udp(&c.ns, from, srv.addr(), 3, 200).unwrap();
    }
    srv.wait_for(6, DELIVERY_TIMEOUT).unwrap();

    let phone_info = [
        ("client", "randomized-102030"),
        ("mac", "6a:1f:33:10:20:30"),
        ("group", ""),
        ("vendor", "Xiaomi"),
        ("os", "android"),
        ("device_class", "phone"),
        ("mac_type", "private"),
        ("source", "fallback"),
    ];
    let check = |o: &Observation| -> Vec<String> {
        let present = || -> Vec<String> {
            o.scrape.series("gwsensor_client_info").map(format_sample).collect()
        };
        let mut bad = Vec::new();
        // The socket filter passes DHCP alone: the clients' other traffic never reaches it.
        for outcome in ["malformed", "not_a_request", "rate_limited", "queue_full"] {
            let n = o.value("gwsensor_dhcp_requests_total", &[("outcome", outcome)]);
            if n.is_some_and(|n| n != 0.0) {
                bad.push(format!("gwsensor_dhcp_requests_total{{outcome={outcome:?}}} = {n:?}"));
            }
        }
        if o.value("gwsensor_client_info", &phone_info) != Some(1.0) {
            bad.push(format!("no gwsensor_client_info{phone_info:?}; present: {:#?}", present()));
        }
        let api = o.client_by_mac("6a:1f:33:10:20:30");
        let api = api.map(|c| (c["os"].as_str(), c["device_class"].as_str()));
        if api != Some((Some("android"), Some("phone"))) {
            bad.push(format!("/api/v1/clients: the phone's os and device_class are {api:?}"));
        }
        // The laptop's name and vendor come from the OUI registry (Intel's prefix): only
        // what the fingerprint adds is checked.
        let want = [("os", "windows"), ("device_class", "computer"), ("mac_type", "universal")];
        let mut with_mac = want.to_vec();
        with_mac.push(("mac", "3c:a9:f4:77:00:02"));
        if o.scrape.matching("gwsensor_client_info", &with_mac).count() != 1 {
            bad.push(format!(
                "no gwsensor_client_info with {with_mac:?}; present: {:#?}",
                present()
            ));
        }
        bad
    };
    agent.expect("client_info from the fingerprints", check);
    agent.expect("the os: android rule applies to the phone alone", |o| {
        let fired = o.scrape.sum("gwsensor_policy_violations_total", &[("rule", "AndroidTraffic")]);
        let phone = o.value(
            "gwsensor_policy_violations_total",
            &[("rule", "AndroidTraffic"), ("client", "randomized-102030")],
        );
        if phone == Some(1.0) && fired == 1.0 {
            vec![]
        } else {
            vec![format!("AndroidTraffic: phone {phone:?}, all {fired} (want 1 and 1)")]
        }
    });

    // Saved in the state file: a restart knows them before any new request.
    let mut agent = agent;
    agent.restart(Duration::from_secs(10)).unwrap();
    for (i, c) in [phone, laptop].into_iter().enumerate() {
        let from = SocketAddr::new(IpAddr::V4(c.ipv4), 41000 + i as u16);
        send_udp(&c.ns, from, srv.addr(), 1, 200).unwrap();
    }
    agent.expect("client_info after a restart", |o| {
        let mut bad = check(o);
        if o.value("gwsensor_dhcp_fingerprints", &[]) != Some(2.0) {
            bad.push("gwsensor_dhcp_fingerprints is not 2 after the restart".into());
        }
        bad
    });
}
