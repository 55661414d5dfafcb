//! How kernel key fields and counts read as text: Prometheus label values, table cells and
//! alert descriptions.

use std::net::{IpAddr, Ipv6Addr};

/// `aa:bb:cc:dd:ee:ff`, lower case (the form `ip neigh` and DHCP leases use).
pub fn mac(mac: &[u8; 6]) -> String {
    let [a, b, c, d, e, f] = *mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

/// An address from a flow key: IPv4-mapped addresses read as plain IPv4.
pub fn ip(raw: &[u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(*raw);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// IANA protocol number as a name for the common ones, else the number.
pub fn protocol(proto: u8) -> String {
    match proto {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        n => n.to_string(),
    }
}

/// Bytes in a short human form (1.5 MB), for the tables.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(mac(&[0x64, 0x09, 0x80, 0, 0x0a, 0xff]), "64:09:80:00:0a:ff");
        let mut v4 = [0u8; 16];
        v4[10] = 0xff;
        v4[11] = 0xff;
        v4[12..].copy_from_slice(&[10, 77, 2, 2]);
        assert_eq!(ip(&v4).to_string(), "10.77.2.2");
        let v6: Ipv6Addr = "fd77:2::2".parse().unwrap();
        assert_eq!(ip(&v6.octets()).to_string(), "fd77:2::2");
        assert_eq!(protocol(6), "tcp");
        assert_eq!(protocol(58), "icmpv6");
        assert_eq!(protocol(47), "47");
    }

    #[test]
    fn human_bytes_reads_well() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(40_000_000), "40.0 MB");
        assert_eq!(human_bytes(1_234), "1.2 kB");
    }
}
