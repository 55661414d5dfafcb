//! The scenarios' shared setup and checks: GeoIP databases, config, resolving, flow naming.

use super::*;

/// Writes the test country and ASN databases into `dir`; returns the config's `geoip:` block.
pub(crate) fn geo_databases(dir: &Path) -> String {
    let net = |s: &str| s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
    let mut country = MmdbWriter::new("GeoLite2-Country");
    let mut asn = MmdbWriter::new("GeoLite2-ASN");
    for prefix in ["10.77.3.0/24", "fd77:3::/64"] {
        country.insert_country(net(prefix), "CN");
        asn.insert_asn(net(prefix), 4808, "China Unicom");
    }
    for prefix in ["10.77.4.0/24", "fd77:4::/64"] {
        country.insert_country(net(prefix), "US");
        asn.insert_asn(net(prefix), 64500, "Example CDN");
    }
    let (c, a) = (dir.join("country.mmdb"), dir.join("asn.mmdb"));
    country.write(&c).expect("writing the country database");
    asn.write(&a).expect("writing the ASN database");
    format!("geoip:\n  country_database: {}\n  asn_database: {}\n", c.display(), a.display())
}

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
) -> String {
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
    format!(
        "interface: {iface}\n\
         lan_prefixes: [\"{v4}\", \"{v6}\"]\n\
         poll_interval: {poll}ms\n\
         metrics_listen: {METRICS}\n\
         pin_path: {pin}\n\
         state_path: {state}\n\
         {geo}\
         {inventory}\
         {extra}",
        iface = topo.gateway.lan_if,
        v4 = lab::LAN_PREFIXES[0],
        v6 = lab::LAN_PREFIXES[1],
        poll = POLL.as_millis(),
        pin = pins.path().display(),
        state = topo.lab.dir().join("state.json").display(),
        geo = geo_databases(topo.lab.dir()),
    )
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
        .unwrap_or_else(|e| agent.fail(&format!("resolving {name}: {e:#}"), None, &[]));
    let got: Vec<String> = x.addrs.iter().map(|(a, _)| a.to_string()).collect();
    if x.rcode != 0 || got != want {
        agent.fail(
            &format!(
                "{name} type {qtype} via {server}: rcode {}, answer {got:?}, want {want:?}",
                x.rcode
            ),
            None,
            &[],
        );
    }
    let resolver = server.ip().to_string();
    let dest = (resolver.as_str(), NO_GEO);
    ledger.add(mac, Dir::Upload, dest, 1, udp_frame(server.ip(), x.query_len as u64));
    ledger.add(mac, Dir::Download, dest, 1, udp_frame(server.ip(), x.response_len as u64));
}

/// Checks one flow of the API against its expected naming.
#[allow(clippy::too_many_arguments)]
pub(crate) fn check_flow(
    o: &Obs,
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
    o: &Obs,
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
pub(crate) fn check_events(o: &Obs, min: &[(&str, f64)]) -> Vec<String> {
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
