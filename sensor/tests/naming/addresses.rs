//! 3. One device is one MAC, whatever its addresses.

use super::*;

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
    let agent = start_agent(&topo, config(&topo, &pins, &devices, &[], ""));
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
