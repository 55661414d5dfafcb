//! The kernel programs against hand-made frames, run with BPF_PROG_TEST_RUN: the parser and
//! the counters, checked exactly (flow keys, packets, bytes, client totals, every stat slot).
//!
//! Each test loads its own private instance (no pinning), so its maps start empty. Needs root
//! (CAP_BPF + CAP_SYS_ADMIN); skips loudly otherwise, and fails under CI=true or
//! GWSENSOR_TEST_REQUIRE_PRIVILEGED=1. No timings here: speed is `cargo xtask bench`'s job.
//!
//! Layout: `harness` (the privilege check and `Sensor`, a private instance of the programs),
//! `expect` (`Count`, `check` and the counted / rejected assertions) and `frames` (frame
//! builders) are the shared tooling; every other module is one group of tests. The constants
//! and `client_n` below are the addresses and numbers the tests share.

// Shared tooling.
mod expect;
mod frames;
mod harness;

// The tests, a group a file.
mod aggregation;
mod batch_reads;
mod client_slots;
mod download;
mod flow_overflow;
mod hello_segments;
mod ipv4_header;
mod ipv6_extensions;
mod loading;
mod naming_budget;
mod not_client;
mod truncated;
mod upload;
mod vlan;

use std::net::{Ipv4Addr, Ipv6Addr};

const XDP_PASS: u32 = 2;
/// TC_ACT_UNSPEC (-1) as the u32 the test run reports.
const TC_ACT_UNSPEC: u32 = u32::MAX;

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AH: u8 = 51;
const IPV6_DSTOPTS: u8 = 60;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

/// A LAN client (locally administered unicast MAC) and the gateway's LAN port.
const CLIENT_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
const CLIENT2_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
const GW_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0xfe];
const BROADCAST_MAC: [u8; 6] = [0xff; 6];
const MCAST4_MAC: [u8; 6] = [0x01, 0x00, 0x5e, 0x00, 0x00, 0x01];
const MCAST6_MAC: [u8; 6] = [0x33, 0x33, 0x00, 0x00, 0x00, 0x01];

const LAN: [&str; 2] = ["192.168.1.0/24", "fd00:1::/64"];
const CLIENT4: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);
const CLIENT4_B: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 11);
const REMOTE4: Ipv4Addr = Ipv4Addr::new(93, 184, 216, 34);
const OUTSIDE4: Ipv4Addr = Ipv4Addr::new(192, 168, 2, 10);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0x10);
const REMOTE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
const OUTSIDE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 0x10);

/// A LAN client number `i` (locally administered unicast MAC) and its IPv4 address.
fn client_n(i: u8) -> ([u8; 6], Ipv4Addr) {
    ([0x02, 0x00, 0x00, 0x00, 0x01, i], Ipv4Addr::new(192, 168, 1, 100 + i))
}
