//! How far traffic to a remote address goes: the internet, a host of the local network, or the
//! network itself (a multicast group, broadcast, the router). One definition for the policy's
//! `scope` and `new_destination` and for GeoIP naming, so a camera's SSDP or a phone's router
//! solicitation is never "remote", never a new destination and never in a country.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Reach {
    /// Anything else: a remote, `scope: remote`.
    #[default]
    Internet,
    /// A host by a private address: RFC 1918, CGNAT (100.64/10), unique-local (fc00::/7).
    /// `scope: local`; still a destination of its own and looked up in the GeoIP databases
    /// (a database a user built may place a VPN's private range).
    Lan,
    /// Not a host out there: multicast (224/4, ff00::/8), the limited broadcast
    /// 255.255.255.255, link-local, loopback, unspecified, and the router's own addresses
    /// (which only the agent knows: `Enricher::reach`). `scope: local`, never a new
    /// destination, never in a country or AS.
    Network,
}

impl Reach {
    /// Whether the traffic stays on the local network (`scope: local`).
    pub fn is_local(self) -> bool {
        self != Reach::Internet
    }
}

/// The reach of `ip` by its address alone. IPv4-mapped IPv6 addresses are judged as IPv4.
pub fn reach(ip: &IpAddr) -> Reach {
    match ip {
        IpAddr::V4(v4) => v4_reach(v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or_else(|| v6_reach(v6), |v4| v4_reach(&v4)),
    }
}

fn v4_reach(v4: &Ipv4Addr) -> Reach {
    let o = v4.octets();
    if v4.is_multicast()
        || v4.is_broadcast()
        || v4.is_link_local()
        || v4.is_loopback()
        || v4.is_unspecified()
    {
        Reach::Network
    } else if v4.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64) {
        Reach::Lan
    } else {
        Reach::Internet
    }
}

fn v6_reach(v6: &Ipv6Addr) -> Reach {
    let s = v6.segments();
    if v6.is_multicast() || v6.is_loopback() || v6.is_unspecified() || (s[0] & 0xffc0) == 0xfe80 {
        Reach::Network
    } else if (s[0] & 0xfe00) == 0xfc00 {
        Reach::Lan
    } else {
        Reach::Internet
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(s: &str) -> Reach {
        reach(&s.parse().unwrap())
    }

    #[test]
    fn what_devices_send_to_the_network_itself() {
        for a in [
            // SSDP and WS-Discovery's IPv4 group, mDNS, LLMNR, IGMPv3 reports.
            "239.255.255.250",
            "224.0.0.251",
            "224.0.0.252",
            "224.0.0.22",
            "255.255.255.255",
            "169.254.10.20",
            "127.0.0.1",
            "0.0.0.0",
            // Router solicitation, MLDv2 reports, mDNS, all nodes, a solicited-node group,
            // WS-Discovery's IPv6 group, a site-scoped group.
            "ff02::2",
            "ff02::16",
            "ff02::fb",
            "ff02::1",
            "ff02::1:ff00:1",
            "ff02::c",
            "ff05::c",
            "fe80::1",
            "::1",
            "::",
            "::ffff:239.255.255.250",
        ] {
            assert_eq!(of(a), Reach::Network, "{a}");
        }
    }

    #[test]
    fn private_hosts_are_the_lan() {
        for a in ["192.168.1.1", "10.0.0.7", "172.16.5.4", "100.64.0.1", "fd00:1::5", "fc00::1"] {
            assert_eq!(of(a), Reach::Lan, "{a}");
        }
        assert_eq!(of("::ffff:192.168.1.9"), Reach::Lan);
    }

    #[test]
    fn the_internet_is_remote() {
        for a in [
            "8.8.8.8",
            "203.0.113.9",
            "100.128.0.1",
            "172.32.0.1",
            "223.255.255.255",
            "2001:db8::1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(of(a), Reach::Internet, "{a}");
            assert!(!of(a).is_local());
        }
    }
}
