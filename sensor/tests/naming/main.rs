//! End-to-end naming: the real agent binary on a namespace lab with a real resolver (dnsmasq on
//! the gateway's LAN addresses), real TLS (openssl) and HTTP exchanges, test GeoIP databases
//! for the lab's "internet" prefixes, and exact numbers on /metrics, the JSON API and the CLI.
//!
//! Needs root (network namespaces, BPF), dnsmasq and openssl. Without root the tests print a
//! loud SKIPPED line and pass, unless CI=true or GWSENSOR_TEST_REQUIRE_PRIVILEGED=1, where they
//! fail (as in netns.rs).
//!
//! Frame sizes: the sensor counts whole Ethernet frames without FCS, so a UDP datagram of
//! P payload bytes is 14 (Ethernet) + 20 (IPv4) or 40 (IPv6) + 8 (UDP) + P bytes. DNS
//! exchanges are built by hand, so their sizes are known too. TCP byte counts are not
//! predictable (options, timing of ACKs): TCP flows are checked by comparing the two views the
//! agent gives of the same flow (the API's kernel counters and the destination series), after
//! the traffic stopped.
//!
//! The lab's "internet" in the test GeoIP databases:
//!   10.77.3.0/24, fd77:3::/64 → CN, AS4808 "China Unicom"
//!   10.77.4.0/24, fd77:4::/64 → US, AS64500 "Example CDN"
//! The LAN (10.77.1.0/24, fd77:1::/64), where the resolver is, is in neither.

mod addresses;
mod budget;
mod checks;
mod chromium;
mod dns;
mod fingerprint;
mod inventory;
mod ledger;
mod sni_http;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    path::Path,
    process::Command,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use lab::{
    Agent, LanKind, Topology, TopologyBuilder, UdpReceiver,
    agent::Observation,
    ledger::{Count, Dir, udp_frame},
    prom::{Scrape, format_sample},
    send_udp,
    services::{self, DNS_A, DNS_AAAA, DnsRecord},
};
use serde_json::Value;

use self::{checks::*, ledger::*};

const POLL: Duration = Duration::from_millis(200);
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// (country, asn) labels of the lab's networks.
const CN: (&str, &str) = ("CN", "4808");
const US: (&str, &str) = ("US", "64500");
const NO_GEO: (&str, &str) = ("", "");

const XIAOMI_VENDOR: &str = "Xiaomi Communications Co Ltd";

/// True when the test can run (with `tools`); false (after a loud notice) when skipped.
fn privileged(tools: &[&str]) -> bool {
    lab::lab_tests_can_run("naming tests", tools)
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}
