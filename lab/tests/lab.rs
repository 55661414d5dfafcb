//! The lab on its own, without the agent: topology reachability, exact UDP delivery, a
//! silent LAN, and complete cleanup. Needs root; skips loudly otherwise (fails under CI=true
//! or GWSENSOR_TEST_REQUIRE_PRIVILEGED=1).

use std::{net::SocketAddr, process::Command, time::Duration};

use lab::{LanKind, TopologyBuilder, UdpReceiver, send_udp};

fn privileged() -> bool {
    match lab::check_privileged() {
        Ok(()) => true,
        Err(e) => {
            let required = std::env::var("CI").as_deref() == Ok("true")
                || std::env::var("GWSENSOR_TEST_REQUIRE_PRIVILEGED").as_deref() == Ok("1");
            if required {
                panic!("lab tests need root and network namespaces: {e:#}");
            }
            lab::notice(&format!("SKIPPED: needs root ({e:#})"));
            false
        }
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ping(ns: &str, target: &str) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-c", "1", "-W", "2", target])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ping {target} from {ns}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn bridge_lab_routes_counts_and_cleans_up() {
    if !privileged() {
        return;
    }
    let names;
    {
        let topo = TopologyBuilder::new("labt-br")
            .lan(LanKind::Bridge)
            .client("phone", [0x64, 0x09, 0x80, 0x00, 0x00, 0x01])
            .client("laptop", [0x02, 0x77, 0x10, 0x00, 0x00, 0x02])
            .remote("10.77.3.1".parse().unwrap())
            .remote("fd77:3::1".parse().unwrap())
            .build()
            .unwrap();
        names = topo.lab.namespaces();
        assert_eq!(names.len(), 4);
        let (phone, laptop) = (topo.client("phone"), topo.client("laptop"));
        if Command::new("ping").arg("-V").output().is_ok() {
            ping(&phone.ns, "10.77.1.1");
            ping(&phone.ns, "10.77.2.2");
            ping(&laptop.ns, "10.77.3.1");
            ping(&laptop.ns, "fd77:3::1");
            ping(&topo.internet.ns, "fd77:1::10");
            ping(&laptop.ns, "10.77.1.10"); // client to client across the bridge
        }

        let up = UdpReceiver::bind(&topo.internet.ns, addr("10.77.3.1:5001")).unwrap();
        let up6 = UdpReceiver::bind(&topo.internet.ns, addr("[fd77:3::1]:5001")).unwrap();
        let down = UdpReceiver::bind(&phone.ns, addr("10.77.1.10:6000")).unwrap();
        send_udp(&phone.ns, addr("10.77.1.10:40000"), up.addr(), 50, 1000).unwrap();
        send_udp(&laptop.ns, addr("[fd77:1::11]:40000"), up6.addr(), 20, 1400).unwrap();
        send_udp(&topo.internet.ns, addr("10.77.3.1:5002"), down.addr(), 30, 1200).unwrap();
        up.wait_for(50, Duration::from_secs(5)).unwrap();
        up6.wait_for(20, Duration::from_secs(5)).unwrap();
        down.wait_for(30, Duration::from_secs(5)).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!((up.datagrams(), up.bytes()), (50, 50_000));
        assert_eq!((up6.datagrams(), up6.bytes()), (20, 28_000));
        assert_eq!((down.datagrams(), down.bytes()), (30, 36_000));

        // Spawned processes live in the namespace and die with the lab.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "ip -o link show; sleep 600"]);
        let p = topo.lab.spawn(&topo.gateway.ns, cmd).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            p.log().contains("br-lan"),
            "spawned process is not in the gateway namespace:\n{}",
            p.log()
        );
        assert!(p.try_wait().unwrap().is_none());
        let body_ns = topo.gateway.ns.clone();
        let list = lab::in_netns(&body_ns, || {
            std::fs::read_to_string("/proc/thread-self/net/dev").unwrap()
        })
        .unwrap();
        assert!(list.contains("wan0"), "{list}");
        drop(up);
        drop(up6);
        drop(down);
    }
    let left = lab::ip(&["netns", "list"]).unwrap();
    for n in names {
        assert!(
            !left.lines().any(|l| l.split_whitespace().next() == Some(n.as_str())),
            "{n} left behind:\n{left}"
        );
    }
}

#[test]
fn lan_stays_silent() {
    if !privileged() {
        return;
    }
    let topo = TopologyBuilder::new("labt-quiet")
        .client("c", [0x02, 0x77, 0x10, 0, 0, 9])
        .build()
        .unwrap();
    // Count every frame on both LAN ends for a while: the sensor's exact assertions rely on
    // there being none besides the test's own traffic.
    let stats = |ns: &str, ifname: &str| {
        lab::ip(&["-n", ns, "-s", "-j", "link", "show", "dev", ifname]).unwrap()
    };
    let at_build = (stats(&topo.gateway.ns, "lan0"), stats(&topo.clients[0].ns, "eth0"));
    std::thread::sleep(Duration::from_secs(3));
    let before = (stats(&topo.gateway.ns, "lan0"), stats(&topo.clients[0].ns, "eth0"));
    std::thread::sleep(Duration::from_secs(3));
    let after = (stats(&topo.gateway.ns, "lan0"), stats(&topo.clients[0].ns, "eth0"));
    assert_eq!(at_build, before, "frames crossed the LAN after the topology was built");
    assert_eq!(before, after, "frames crossed the idle LAN");
}
