//! What the LAN interface itself says about the LAN: its prefixes, the default `lan_prefixes`.

use anyhow::{Context as _, bail};
use ipnet::IpNet;
use nix::ifaddrs::getifaddrs;

/// Every prefix configured on `iface` (IPv4 and IPv6, link-local included: a client's
/// link-local traffic to the router is client traffic too).
pub fn prefixes(iface: &str) -> anyhow::Result<Vec<IpNet>> {
    let mut out = Vec::new();
    for ifa in getifaddrs().context("listing interface addresses")? {
        if ifa.interface_name != iface {
            continue;
        }
        let (Some(addr), Some(mask)) = (ifa.address, ifa.netmask) else { continue };
        let net = if let (Some(a), Some(m)) = (addr.as_sockaddr_in(), mask.as_sockaddr_in()) {
            IpNet::with_netmask(a.ip().into(), m.ip().into())
        } else if let (Some(a), Some(m)) = (addr.as_sockaddr_in6(), mask.as_sockaddr_in6()) {
            IpNet::with_netmask(a.ip().into(), m.ip().into())
        } else {
            continue;
        };
        let net = net.context("interface netmask is not a prefix")?.trunc();
        if !out.contains(&net) {
            out.push(net);
        }
    }
    if out.is_empty() {
        bail!(
            "interface {iface} has no IP addresses, so the LAN prefixes cannot be derived: \
             set `lan_prefixes` in the config (e.g. [192.168.1.0/24, \"fd00::/64\"])"
        );
    }
    Ok(out)
}

/// The interface's index, or an error that says the interface is missing.
pub fn ifindex(iface: &str) -> anyhow::Result<u32> {
    nix::net::if_::if_nametoindex(iface).with_context(|| {
        format!(
            "interface {iface} not found (check `interface` in the config; `ip link` lists them)"
        )
    })
}
