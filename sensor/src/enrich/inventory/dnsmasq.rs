//! dnsmasq's lease file (OpenWrt's `/tmp/dhcp.leases`, Debian's
//! `/var/lib/misc/dnsmasq.leases`).

use std::net::IpAddr;

use super::lease::{Lease, Parsed, clean_hostname, first_word};
use crate::types::mac;

pub(super) const NAME: &str = "dnsmasq";

/// A file whose first statement is a number (a lease's expiry) or `duid` (the line before
/// the IPv6 leases); also an empty one, as dnsmasq writes it when it has no leases.
pub(super) fn recognizes(text: &str) -> bool {
    match first_word(text) {
        None => true,
        Some(word) => word == "duid" || word.parse::<u64>().is_ok(),
    }
}

/// dnsmasq: `<expiry> <mac> <ip> <hostname> <client-id>` per line (expiry 0: never). IPv6
/// leases follow a `duid <server duid>` line and carry an IAID where the MAC would be:
/// they name no MAC and are skipped.
pub(super) fn parse(text: &str) -> Parsed {
    let mut out = Parsed::default();
    // A last line without its newline is being written: not malformed, just not there yet.
    let complete = if text.ends_with('\n') {
        text
    } else {
        text.rsplit_once('\n').map_or("", |(done, _)| done)
    };
    for (i, line) in complete.lines().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.first() {
            None => continue,
            Some(f) if f.starts_with('#') || *f == "duid" => continue,
            Some(_) => {}
        }
        let lease = (|| {
            if fields.len() < 4 {
                return Err(());
            }
            let expiry: u64 = fields[0].parse().map_err(|_| ())?;
            let ip: IpAddr = fields[2].parse().map_err(|_| ())?;
            let Ok(mac) = mac::parse(fields[1]) else {
                // An IPv6 lease's IAID: no MAC to name.
                return if ip.is_ipv6() { Ok(None) } else { Err(()) };
            };
            Ok(Some(Lease {
                mac,
                ip,
                hostname: clean_hostname(fields[3]),
                ends: if expiry == 0 { u64::MAX } else { expiry },
            }))
        })();
        match lease {
            Ok(Some(lease)) => out.leases.push(lease),
            Ok(None) => {}
            Err(()) => out.malformed.push(i + 1),
        }
    }
    out
}
