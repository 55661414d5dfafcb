//! The scenarios' shared setup and checks: the test GeoIP databases, the agent's config with
//! an inventory, real DNS queries booked in the ledger, and the naming each flow must show.

use lab::{
    agent::{Config, Launch, Observation},
    mmdb::GeoDatabases,
};

use super::*;

/// The lab's "internet" in the test GeoIP databases (see the crate's doc).
const GEO: [lab::mmdb::Geo; 2] = [
    (&["10.77.3.0/24", "fd77:3::/64"], "CN", 4808, "China Unicom"),
    (&["10.77.4.0/24", "fd77:4::/64"], "US", 64500, "Example CDN"),
];

/// A static inventory entry.
pub(crate) struct Device<'a> {
    pub(crate) mac: &'a str,
    pub(crate) name: &'a str,
    pub(crate) group: &'a str,
    pub(crate) tags: &'a [(&'a str, &'a str)],
}

/// The agent's config: the lab's LAN, fast polls, private pins and state, the test GeoIP
/// databases, the given inventory and lease files, then `extra` top-level keys.
pub(crate) fn config(
    topo: &Topology,
    pins: &lab::PinDir,
    devices: &[Device],
    leases: &[&Path],
    extra: &str,
) -> Config {
    let mut inventory = String::from("inventory:\n");
    if devices.is_empty() {
        inventory.push_str("  devices: []\n");
    } else {
        inventory.push_str("  devices:\n");
        for d in devices {
            let tags: Vec<String> = d.tags.iter().map(|(k, v)| format!("{k}: {v:?}")).collect();
            inventory.push_str(&format!(
                "    - {{ mac: \"{}\", name: {:?}, group: {:?}, tags: {{ {} }} }}\n",
                d.mac,
                d.name,
                d.group,
                tags.join(", ")
            ));
        }
    }
    let leases: Vec<String> =
        leases.iter().map(|p| format!("{:?}", p.display().to_string())).collect();
    inventory.push_str(&format!("  dhcp_leases: [{}]\n", leases.join(", ")));
    let geo = GeoDatabases::write(topo.lab.dir(), "", &GEO).expect("writing the GeoIP databases");
    Config::for_topology(topo, pins)
        .poll(POLL)
        .with(&geo.config_yaml())
        .with(&inventory)
        .with(extra)
}

/// The agent under test, on the gateway, ready.
pub(crate) fn start_agent<'t>(topo: &'t Topology, config: Config) -> Agent<'t> {
    Agent::start(&topo.lab, &topo.gateway.ns, Launch::new(env!("CARGO_BIN_EXE_sensor")), &config)
        .unwrap_or_else(|e| panic!("starting the agent: {e:#}"))
}

/// Returns just after a poll completed, so that what the caller does next (a short TCP
/// exchange) most likely falls within one poll interval: the kernel counts a connection's
/// handshake before the ClientHello (or HTTP request) that names it, and the agent names
/// flows when it attributes each poll's deltas.
pub(crate) fn wait_poll(agent: &Agent) {
    if let Err(e) = agent.wait_next_poll(Duration::from_secs(10)) {
        agent.fail(&format!("the agent did not poll within 10 s: {e:#}"));
    }
}

/// Waits until the agent has read at least `n` naming events of `kind`.
pub(crate) fn wait_events(agent: &Agent, kind: &str, n: f64) {
    agent.expect(&format!("waiting for {n} {kind} events"), |o| {
        let got = o.value("gwsensor_events_received_total", &[("kind", kind)]).unwrap_or(0.0);
        if got >= n {
            vec![]
        } else {
            vec![format!("gwsensor_events_received_total{{kind={kind:?}}} = {got}, want >= {n}")]
        }
    });
}

/// `sensor <args>` run inside the gateway namespace against the agent.
pub(crate) fn cli(agent: &Agent, args: &[&str]) -> String {
    agent.cli(args).unwrap_or_else(|e| agent.fail(&format!("{e:#}")))
}

/// One real DNS query from client `mac` in `ns` to `server` (the gateway's dnsmasq), checked
/// to answer exactly `want`; the query and the answer go into the ledger as traffic to the
/// resolver's address (no name, no country, no ASN: it is on the LAN).
#[allow(clippy::too_many_arguments)]
pub(crate) fn resolve(
    agent: &Agent,
    ledger: &mut Ledger,
    mac: &str,
    ns: &str,
    server: SocketAddr,
    name: &str,
    qtype: u16,
    want: &[&str],
) {
    let x = services::dns_query(ns, server, name, qtype)
        .unwrap_or_else(|e| agent.fail(&format!("resolving {name}: {e:#}")));
    let got: Vec<String> = x.addrs.iter().map(|(a, _)| a.to_string()).collect();
    if x.rcode != 0 || got != want {
        agent.fail(&format!(
            "{name} type {qtype} via {server}: rcode {}, answer {got:?}, want {want:?}",
            x.rcode
        ));
    }
    let resolver = server.ip().to_string();
    let dest = (resolver.as_str(), NO_GEO);
    ledger.add(mac, Dir::Upload, dest, 1, udp_frame(server.ip(), x.query_len as u64));
    ledger.add(mac, Dir::Download, dest, 1, udp_frame(server.ip(), x.response_len as u64));
}

/// Checks one flow of the API against its expected naming.
#[allow(clippy::too_many_arguments)]
pub(crate) fn check_flow(
    o: &Observation,
    mac: &str,
    remote: &str,
    protocol: &str,
    port: u16,
    name: &str,
    domain: &str,
    geo: (&str, &str, u64),
) -> Vec<String> {
    let Some(f) = o.flow(mac, remote, protocol, port) else {
        return vec![format!("no flow {mac} -> {remote} {protocol}/{port} in /api/v1/flows")];
    };
    let mut out = Vec::new();
    let (country, as_org, asn) = geo;
    for (field, want) in [
        ("name", Value::from(name)),
        ("domain", Value::from(domain)),
        ("country", Value::from(country)),
        ("asn", Value::from(asn)),
        ("as_org", Value::from(as_org)),
    ] {
        if f[field] != want {
            out.push(format!(
                "flow {remote} {protocol}/{port}: {field} = {}, want {want}",
                f[field]
            ));
        }
    }
    out
}

pub(crate) fn check_value(
    o: &Observation,
    out: &mut Vec<String>,
    name: &str,
    labels: &[(&str, &str)],
    want: impl Fn(f64) -> bool,
    what: &str,
) {
    match o.value(name, labels) {
        Some(v) if want(v) => {}
        got => out.push(format!("{name}{labels:?} = {got:?}, want {what}")),
    }
}

/// The naming counters: at least `min` events of each kind read, none unparsable, none
/// dropped or rate-limited.
pub(crate) fn check_events(o: &Observation, min: &[(&str, f64)]) -> Vec<String> {
    let mut out = Vec::new();
    for (kind, n) in min {
        check_value(
            o,
            &mut out,
            "gwsensor_events_received_total",
            &[("kind", kind)],
            |v| v >= *n,
            &format!(">= {n}"),
        );
        check_value(
            o,
            &mut out,
            "gwsensor_kernel_events_total",
            &[("kind", kind), ("outcome", "sent")],
            |v| v >= *n,
            &format!(">= {n}"),
        );
    }
    for kind in ["dns", "tls", "http"] {
        check_value(
            o,
            &mut out,
            "gwsensor_name_parse_errors_total",
            &[("kind", kind)],
            |v| v == 0.0,
            "0",
        );
        for outcome in ["rate_limited", "ring_full"] {
            check_value(
                o,
                &mut out,
                "gwsensor_kernel_events_total",
                &[("kind", kind), ("outcome", outcome)],
                |v| v == 0.0,
                "0",
            );
        }
    }
    check_value(o, &mut out, "gwsensor_events_dropped_total", &[], |v| v == 0.0, "0");
    out
}
