//! What the LAN interface itself says about the LAN: its prefixes, the default `lan_prefixes`.

use ipnet::IpNet;
use nix::ifaddrs::getifaddrs;

use super::error::KernelError;

/// Every prefix configured on `iface` (IPv4 and IPv6, link-local included: a client's
/// link-local traffic to the router is client traffic too).
pub fn prefixes(iface: &str) -> Result<Vec<IpNet>, KernelError> {
    let mut out = Vec::new();
    for ifa in getifaddrs().map_err(|source| KernelError::ListAddresses { source })? {
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
        let net = net
            .map_err(|source| KernelError::NotAPrefix { interface: iface.into(), source })?
            .trunc();
        if !out.contains(&net) {
            out.push(net);
        }
    }
    if out.is_empty() {
        return Err(KernelError::NoAddresses { interface: iface.into() });
    }
    Ok(out)
}

/// Every address of this machine, on any interface (the router's own: its LAN addresses, its
/// WAN address, a delegated prefix's address). Traffic from a client to them is local.
pub fn host_addresses() -> Result<Vec<std::net::IpAddr>, KernelError> {
    let mut out = Vec::new();
    for ifa in getifaddrs().map_err(|source| KernelError::ListAddresses { source })? {
        let Some(addr) = ifa.address else { continue };
        if let Some(a) = addr.as_sockaddr_in() {
            out.push(a.ip().into());
        } else if let Some(a) = addr.as_sockaddr_in6() {
            out.push(a.ip().into());
        }
    }
    Ok(out)
}

/// The interface's index, or an error that says the interface is missing.
pub fn ifindex(iface: &str) -> Result<u32, KernelError> {
    nix::net::if_::if_nametoindex(iface)
        .map_err(|source| KernelError::InterfaceNotFound { interface: iface.into(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hosts_addresses_include_loopback() {
        let all = host_addresses().unwrap();
        assert!(all.contains(&std::net::IpAddr::from([127, 0, 0, 1])), "{all:?}");
    }

    #[test]
    fn a_missing_interface_says_where_to_look() {
        let e = ifindex("gws-none0").unwrap_err();
        assert_eq!(
            e.to_string(),
            "interface gws-none0 not found (check `interface` in the config; `ip link` lists them)"
        );
        // The OS error follows in the chain (`{:#}` at the binary's edge).
        let os = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(os.as_deref(), Some("ENODEV: No such device"));
    }
}
