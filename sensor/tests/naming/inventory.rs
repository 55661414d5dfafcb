//! 4 and 6. Device names (inventory, DHCP lease, OUI fallback, randomized MAC) and the
//! `sensor clients` / `sensor flows` commands.

use super::*;

/// A CLI table as rows of column → cell, cut at the header's column starts.
fn parse_table(text: &str) -> (Vec<String>, Vec<BTreeMap<String, String>>) {
    let mut lines = text.lines();
    let header = lines.next().unwrap_or("");
    let mut starts = Vec::new();
    let mut names = Vec::new();
    let chars: Vec<char> = header.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        if !c.is_whitespace() && (i == 0 || chars[i - 1].is_whitespace()) {
            starts.push(i);
            let end =
                chars[i..].iter().position(|c| c.is_whitespace()).map_or(chars.len(), |n| i + n);
            names.push(chars[i..end].iter().collect::<String>());
        }
    }
    let rows = lines
        .map(|line| {
            let cs: Vec<char> = line.chars().collect();
            let mut row = BTreeMap::new();
            for (k, start) in starts.iter().enumerate() {
                let end = starts.get(k + 1).copied().unwrap_or(cs.len()).min(cs.len());
                let cell: String =
                    cs.get(*start..end).map(|s| s.iter().collect()).unwrap_or_default();
                row.insert(names[k].clone(), cell.trim().to_string());
            }
            row
        })
        .collect();
    (names, rows)
}

#[test]
fn device_names_inventory_dhcp_oui_and_cli() {
    if !privileged(&[]) {
        return;
    }
    let pins = lab::PinDir::new("naming", "devices");
    let topo = TopologyBuilder::new("gwn-dev")
        .lan(LanKind::Bridge)
        .client("redmi", [0x64, 0x09, 0x80, 0xaa, 0x00, 0x01]) // 10.77.1.10, in the inventory
        .client("tv", [0xa4, 0x77, 0x33, 0x00, 0x00, 0x02]) // 10.77.1.11, Google OUI, DHCP later
        .client("vacuum", [0x64, 0x09, 0x80, 0x12, 0x34, 0x56]) // 10.77.1.12, Xiaomi OUI, no name
        .client("laptop", [0x02, 0x77, 0x10, 0xab, 0xcd, 0xef]) // 10.77.1.13, locally administered
        .remote(ip("10.77.3.10"))
        .remote(ip("10.77.4.12"))
        .build()
        .expect("building the lab");
    let macs: BTreeMap<&str, String> =
        topo.clients.iter().map(|c| (c.name.as_str(), c.mac_text())).collect();
    let inet = topo.internet.ns.clone();
    let leases = topo.lab.dir().join("dhcp.leases"); // written later: missing at startup
    let devices = [Device {
        mac: &macs["redmi"],
        name: "redmi-note",
        group: "phones",
        tags: &[("owner", "alice")],
    }];
    let agent = start_agent(&topo, config(&topo, &pins, &devices, &[&leases], ""));

    let mut ledger = Ledger::default();
    ledger.name(&macs["redmi"], "redmi-note");
    ledger.name(&macs["tv"], "google-000002");
    ledger.name(&macs["vacuum"], "xiaomi-123456");
    ledger.name(&macs["laptop"], "randomized-abcdef");

    let srv_cn = UdpReceiver::bind(&inet, sa("10.77.3.10:443")).unwrap();
    let srv_us = UdpReceiver::bind(&inet, sa("10.77.4.12:443")).unwrap();
    let mut sent = 0;
    for (i, (client, packets, payload)) in
        [("redmi", 6u64, 1000u64), ("tv", 4, 800), ("vacuum", 3, 600), ("laptop", 2, 400)]
            .into_iter()
            .enumerate()
    {
        let c = topo.client(client);
        let from = SocketAddr::new(IpAddr::V4(c.ipv4), 40000 + i as u16);
        send_udp(&c.ns, from, srv_cn.addr(), packets as usize, payload as usize).unwrap();
        ledger.add(
            &macs[client],
            Dir::Upload,
            ("10.77.3.10", CN),
            packets,
            udp_frame(ip("10.77.3.10"), payload),
        );
        sent += packets;
    }
    // redmi-note also talks to the US CDN: 2 × 342 B.
    let redmi = topo.client("redmi");
    send_udp(&redmi.ns, sa("10.77.1.10:40010"), srv_us.addr(), 2, 300).unwrap();
    ledger.add(
        &macs["redmi"],
        Dir::Upload,
        ("10.77.4.12", US),
        2,
        udp_frame(ip("10.77.4.12"), 300),
    );
    srv_cn.wait_for(sent, DELIVERY_TIMEOUT).unwrap();
    srv_us.wait_for(2, DELIVERY_TIMEOUT).unwrap();

    let info = |o: &Observation, labels: &[(&str, &str)]| -> Vec<String> {
        match o.value("gwsensor_client_info", labels) {
            Some(1.0) => vec![],
            got => {
                let present: Vec<String> =
                    o.scrape.series("gwsensor_client_info").map(format_sample).collect();
                vec![format!(
                    "gwsensor_client_info{labels:?} = {got:?}, want 1; present: {present:#?}"
                )]
            }
        }
    };
    let client_fields = |o: &Observation, mac: &str, want: &[(&str, Value)]| -> Vec<String> {
        let Some(c) = o.client_by_mac(mac) else {
            return vec![format!("{mac} missing from /api/v1/clients")];
        };
        want.iter()
            .filter(|(k, v)| c[*k] != *v)
            .map(|(k, v)| format!("client {mac}: {k} = {}, want {v}", c[*k]))
            .collect()
    };
    let (redmi_mac, tv_mac, vacuum_mac, laptop_mac) =
        (&macs["redmi"], &macs["tv"], &macs["vacuum"], &macs["laptop"]);
    let tv_total = ledger.client(tv_mac, Dir::Upload);
    agent.expect("names before the lease file", |o| {
        let mut bad = ledger.mismatches(&o.scrape, true);
        bad.extend(info(
            o,
            &[
                ("client", "redmi-note"),
                ("mac", redmi_mac),
                ("group", "phones"),
                ("vendor", XIAOMI_VENDOR),
                ("os", ""),
                ("device_class", ""),
                ("mac_type", "universal"),
                ("source", "inventory"),
                ("tag_owner", "alice"),
            ],
        ));
        bad.extend(info(
            o,
            &[
                ("client", "google-000002"),
                ("mac", tv_mac),
                ("group", ""),
                ("vendor", "Google, Inc."),
                ("os", ""),
                ("device_class", ""),
                ("mac_type", "universal"),
                ("source", "fallback"),
            ],
        ));
        bad.extend(info(
            o,
            &[
                ("client", "xiaomi-123456"),
                ("mac", vacuum_mac),
                ("group", ""),
                ("vendor", XIAOMI_VENDOR),
                ("os", ""),
                ("device_class", ""),
                ("mac_type", "universal"),
                ("source", "fallback"),
            ],
        ));
        bad.extend(info(
            o,
            &[
                ("client", "randomized-abcdef"),
                ("mac", laptop_mac),
                ("group", ""),
                ("vendor", "randomized"),
                ("os", ""),
                ("device_class", ""),
                ("mac_type", "private"),
                ("source", "fallback"),
            ],
        ));
        let n = o.scrape.series("gwsensor_client_info").count();
        if n != 4 {
            bad.push(format!("{n} gwsensor_client_info series, want 4"));
        }
        // The missing lease file is the one enrichment warning at startup.
        check_value(
            o,
            &mut bad,
            "gwsensor_enrichment_warnings",
            &[],
            |v| v == 1.0,
            "1 (the missing lease file)",
        );
        bad.extend(client_fields(
            o,
            redmi_mac,
            &[
                ("client", "redmi-note".into()),
                ("group", "phones".into()),
                ("vendor", XIAOMI_VENDOR.into()),
                ("source", "inventory".into()),
                ("tags", serde_json::json!({ "owner": "alice" })),
                ("ips", serde_json::json!(["10.77.1.10"])),
            ],
        ));
        bad.extend(client_fields(
            o,
            tv_mac,
            &[
                ("client", "google-000002".into()),
                ("source", "fallback".into()),
                ("vendor", "Google, Inc.".into()),
                ("tags", serde_json::json!({})),
            ],
        ));
        bad.extend(client_fields(
            o,
            laptop_mac,
            &[("client", "randomized-abcdef".into()), ("vendor", "randomized".into())],
        ));
        bad
    });

    // The DHCP server writes its leases (dnsmasq's format). The tv's hostname names it; the
    // inventory still wins for redmi-note; a `*` hostname names nothing.
    let expiry = unix_now() + 3600;
    let text = format!(
        "{expiry} {tv_mac} 10.77.1.11 living-room-tv 01:{tv_mac}\n\
         {expiry} {redmi_mac} 10.77.1.10 Redmi-Note-9 01:{redmi_mac}\n\
         {expiry} {laptop_mac} 10.77.1.13 * *\n"
    );
    std::fs::write(&leases, text).unwrap();
    ledger.name(tv_mac, "living-room-tv");
    agent.expect("names after the lease file appeared", |o| {
        let mut bad = ledger.mismatches(&o.scrape, true);
        bad.extend(info(
            o,
            &[
                ("client", "living-room-tv"),
                ("mac", tv_mac),
                ("group", ""),
                ("vendor", "Google, Inc."),
                ("os", ""),
                ("device_class", ""),
                ("mac_type", "universal"),
                ("source", "dhcp"),
            ],
        ));
        bad.extend(info(
            o,
            &[
                ("client", "redmi-note"),
                ("mac", redmi_mac),
                ("group", "phones"),
                ("vendor", XIAOMI_VENDOR),
                ("os", ""),
                ("device_class", ""),
                ("mac_type", "universal"),
                ("source", "inventory"),
                ("tag_owner", "alice"),
            ],
        ));
        bad.extend(info(
            o,
            &[
                ("client", "randomized-abcdef"),
                ("mac", laptop_mac),
                ("group", ""),
                ("vendor", "randomized"),
                ("os", ""),
                ("device_class", ""),
                ("mac_type", "private"),
                ("source", "fallback"),
            ],
        ));
        // The tv's series continue under its new name; nothing is left under the old one.
        for s in o.scrape.samples.iter().filter(|s| s.label("client") == "google-000002") {
            bad.push(format!("series left under the fallback name: {}", format_sample(s)));
        }
        let up = o.value(
            "gwsensor_client_bytes_total",
            &[("client", "living-room-tv"), ("mac", tv_mac), ("direction", "upload")],
        );
        if up != Some(tv_total.1 as f64) {
            bad.push(format!("living-room-tv upload = {up:?}, want {}", tv_total.1));
        }
        bad.extend(client_fields(
            o,
            tv_mac,
            &[
                ("client", "living-room-tv".into()),
                ("source", "dhcp".into()),
                ("ips", serde_json::json!(["10.77.1.11"])),
            ],
        ));
        bad.extend(client_fields(
            o,
            redmi_mac,
            &[("client", "redmi-note".into()), ("source", "inventory".into())],
        ));
        bad
    });

    // 6. The CLI, run like a user on the router, against this agent.
    let json: Value = serde_json::from_str(&cli(&agent, &["clients", "--json"]))
        .expect("sensor clients --json prints JSON");
    let clients = json["clients"].as_array().cloned().unwrap_or_default();
    let mut problems = Vec::new();
    let want_clients = [
        ("redmi-note", redmi_mac, "10.77.1.10", "inventory"),
        ("living-room-tv", tv_mac, "10.77.1.11", "dhcp"),
        ("xiaomi-123456", vacuum_mac, "10.77.1.12", "fallback"),
        ("randomized-abcdef", laptop_mac, "10.77.1.13", "fallback"),
    ];
    if clients.len() != want_clients.len() {
        problems.push(format!("sensor clients --json lists {} clients, want 4", clients.len()));
    }
    for (name, mac, addr, source) in want_clients {
        match clients.iter().find(|c| c["mac"] == mac.as_str()) {
            Some(c) => {
                if c["client"] != name
                    || c["ips"] != serde_json::json!([addr])
                    || c["source"] != source
                {
                    problems.push(format!("sensor clients --json: {c}, want client {name}, ips [{addr}], source {source}"));
                }
                let up = ledger.client(mac, Dir::Upload).1;
                if c["upload_bytes"] != up {
                    problems.push(format!(
                        "sensor clients --json: {name} upload_bytes {}, want {up}",
                        c["upload_bytes"]
                    ));
                }
            }
            None => problems.push(format!("sensor clients --json: no client {mac}")),
        }
    }
    let table = cli(&agent, &["clients"]);
    let (header, rows) = parse_table(&table);
    if header != ["CLIENT", "MAC", "GROUP", "VENDOR", "IPS", "UPLOAD", "DOWNLOAD", "FLOWS"]
        || rows.len() != 4
    {
        problems.push(format!(
            "sensor clients: header {header:?} and {} rows, want 8 columns and 4 rows:\n{table}",
            rows.len()
        ));
    }
    // redmi-note: 6 × 1042 + 2 × 342 = 6936 B up ("6.9 kB"), 2 flows.
    assert_eq!(ledger.client(redmi_mac, Dir::Upload).1, 6936);
    let want_rows = [
        [
            "redmi-note",
            redmi_mac.as_str(),
            "phones",
            XIAOMI_VENDOR,
            "10.77.1.10",
            "6.9 kB",
            "0 B",
            "2",
        ],
        ["living-room-tv", tv_mac.as_str(), "", "Google, Inc.", "10.77.1.11", "3.4 kB", "0 B", "1"],
        [
            "xiaomi-123456",
            vacuum_mac.as_str(),
            "",
            XIAOMI_VENDOR,
            "10.77.1.12",
            "1.9 kB",
            "0 B",
            "1",
        ],
        [
            "randomized-abcdef",
            laptop_mac.as_str(),
            "",
            "randomized",
            "10.77.1.13",
            "884 B",
            "0 B",
            "1",
        ],
    ];
    for want in want_rows {
        let row = rows.iter().find(|r| r.get("CLIENT").map(String::as_str) == Some(want[0]));
        let got: Option<Vec<&str>> = row.map(|r| header.iter().map(|h| r[h].as_str()).collect());
        if got.as_deref() != Some(&want[..]) {
            problems.push(format!("sensor clients row {got:?}, want {want:?}"));
        }
    }
    let table = cli(&agent, &["flows", "--client", "redmi-note"]);
    let (header, rows) = parse_table(&table);
    let got: Vec<Vec<&str>> =
        rows.iter().map(|r| header.iter().map(|h| r[h].as_str()).collect()).collect();
    let want = [
        vec!["redmi-note", "10.77.3.10", "udp/443", "CN", "AS4808", "6.3 kB", "0 B"],
        vec!["redmi-note", "10.77.4.12", "udp/443", "US", "AS64500", "684 B", "0 B"],
    ];
    if header != ["CLIENT", "REMOTE", "PROTO/PORT", "COUNTRY", "ASN", "UPLOAD", "DOWNLOAD"]
        || got != want
    {
        problems.push(format!("sensor flows --client redmi-note: header {header:?} rows {got:?}, want {want:?}:\n{table}"));
    }
    for who in ["redmi-note", "64:09:80:AA:00:01"] {
        let json: Value = serde_json::from_str(&cli(&agent, &["flows", "--client", who, "--json"]))
            .expect("JSON");
        let flows = json["flows"].as_array().cloned().unwrap_or_default();
        let remotes: Vec<(&str, u64)> = flows
            .iter()
            .map(|f| {
                (f["remote_ip"].as_str().unwrap_or(""), f["upload_bytes"].as_u64().unwrap_or(0))
            })
            .collect();
        if remotes != [("10.77.3.10", 6 * 1042u64), ("10.77.4.12", 2 * 342u64)]
            || flows.iter().any(|f| f["client"] != "redmi-note" || f["mac"] != redmi_mac.as_str())
        {
            problems.push(format!("sensor flows --client {who} --json: {remotes:?} ({})", json));
        }
    }
    if !problems.is_empty() {
        agent.report("the CLI does not show what the agent sees", None, &problems, &[]);
    }
}
