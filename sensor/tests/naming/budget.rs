//! 5. Series budget: per-client top-N and a global bound, the rest in `other`.

use super::*;

#[test]
fn series_budget_keeps_the_most_active_destinations() {
    if !privileged(&[]) {
        return;
    }
    let pins = lab::PinDir::new("naming", "budget");
    let a_remotes: Vec<String> = (1..=6).map(|i| format!("10.77.3.{i}")).collect();
    let b_remotes: Vec<String> = (1..=6).map(|i| format!("10.77.4.{i}")).collect();
    let mut builder = TopologyBuilder::new("gwn-bud")
        .lan(LanKind::Bridge)
        .client("a", [0x02, 0x77, 0x20, 0x00, 0x00, 0x0a])
        .client("b", [0x02, 0x77, 0x20, 0x00, 0x00, 0x0b]);
    for r in a_remotes.iter().chain(&b_remotes) {
        builder = builder.remote(ip(r));
    }
    let topo = builder.build().expect("building the lab");
    let (a, b) = (topo.client("a"), topo.client("b"));
    let (amac, bmac) = (a.mac_text(), b.mac_text());
    let devices = [
        Device { mac: &amac, name: "client-a", group: "", tags: &[] },
        Device { mac: &bmac, name: "client-b", group: "", tags: &[] },
    ];
    let agent = start_agent(
        &topo,
        config(
            &topo,
            &pins,
            &devices,
            &[],
            "destinations:\n  level: ip\n  top_per_client: 3\nseries_budget: 5\n",
        ),
    );

    // Datagrams of 1000 B payload (1042 B frames) per remote, sent in decreasing size over
    // both clients so that at every poll the remotes seen so far are the most active ones:
    // no remote ever holds a series it later loses (which would hide its bytes: a series that
    // ends keeps its value in memory, not in `other`).
    //   a: 20 16 12 | 8 4 2      b: 18 14 | 10 6 3 1
    // Per client the top 3 are a1-a3 and b1-b3; the budget of 5 then drops the least active,
    // b3 (10 packets).
    let a_packets = [20u64, 16, 12, 8, 4, 2];
    let b_packets = [18u64, 14, 10, 6, 3, 1];
    let mut order: Vec<(u64, bool, usize)> =
        a_packets.iter().enumerate().map(|(i, &n)| (n, true, i)).collect();
    order.extend(b_packets.iter().enumerate().map(|(i, &n)| (n, false, i)));
    order.sort_by_key(|x| std::cmp::Reverse(x.0));
    let frame = udp_frame(ip("10.77.3.1"), 1000);
    let mut receivers = Vec::new();
    for r in a_remotes.iter().chain(&b_remotes) {
        receivers.push(UdpReceiver::bind(&topo.internet.ns, SocketAddr::new(ip(r), 443)).unwrap());
    }
    for &(packets, is_a, i) in &order {
        let (client, remotes, n) = if is_a { (a, &a_remotes, 0) } else { (b, &b_remotes, 6) };
        let to = SocketAddr::new(ip(&remotes[i]), 443);
        let from = SocketAddr::new(IpAddr::V4(client.ipv4), 41000 + i as u16);
        send_udp(&client.ns, from, to, packets as usize, 1000).unwrap();
        // Delivered (so counted) before the next remote starts.
        receivers[n + i].wait_for(packets, DELIVERY_TIMEOUT).unwrap();
    }

    let mut ledger = Ledger::default();
    ledger.name(&amac, "client-a");
    ledger.name(&bmac, "client-b");
    let series: [(&str, &str, u64, (&str, &str)); 5] = [
        (&amac, "10.77.3.1", 20, CN),
        (&amac, "10.77.3.2", 16, CN),
        (&amac, "10.77.3.3", 12, CN),
        (&bmac, "10.77.4.1", 18, US),
        (&bmac, "10.77.4.2", 14, US),
    ];
    for (mac, remote, packets, geo) in series {
        ledger.add(mac, Dir::Upload, (remote, geo), packets, frame);
    }
    ledger.add(&amac, Dir::Upload, ("other", NO_GEO), 8 + 4 + 2, frame);
    ledger.add(&bmac, Dir::Upload, ("other", NO_GEO), 10 + 6 + 3 + 1, frame);
    assert_eq!(ledger.client(&amac, Dir::Upload), (62, 62 * 1042));
    assert_eq!(ledger.client(&bmac, Dir::Upload), (52, 52 * 1042));

    agent.expect("series budget", |o| {
        // Exact series, nothing else; each client's series and `other` sum to its totals.
        let mut bad = ledger.mismatches(&o.scrape, true);
        let named: Vec<String> = o
            .scrape
            .series("gwsensor_destination_bytes_total")
            .filter(|s| s.label("destination") != "other")
            .map(format_sample)
            .collect();
        if named.len() > 5 {
            bad.push(format!(
                "{} destination series besides other, budget is 5: {named:#?}",
                named.len()
            ));
        }
        // Remotes without a series: a4-a6 and b3-b6.
        check_value(
            o,
            &mut bad,
            "gwsensor_series_overflow",
            &[("family", "destination")],
            |v| v == 7.0,
            "7",
        );
        // The budget bounds remote series too (top_remotes is 20 per client here): the same
        // five remotes keep one.
        check_value(
            o,
            &mut bad,
            "gwsensor_series_overflow",
            &[("family", "remote")],
            |v| v == 7.0,
            "7",
        );
        let remotes: BTreeSet<String> = o
            .scrape
            .series("gwsensor_remote_bytes_total")
            .map(|s| format!("{} {} {}", s.label("client"), s.label("remote"), s.value))
            .collect();
        let want: BTreeSet<String> = series
            .iter()
            .map(|(mac, r, n, _)| format!("{} {r} {}", ledger.label(mac), n * frame))
            .chain([
                format!("client-a other {}", 14 * frame),
                format!("client-b other {}", 20 * frame),
            ])
            .collect();
        if remotes != want {
            bad.push(format!("remote series {remotes:#?}, want {want:#?}"));
        }
        bad
    });
}
