//! The frame mix (seeded, the same on every run) and the priming of the maps with it.

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{bail, ensure};
use etherparse::PacketBuilder;
use sensor::{
    common::{Direction, Stat, names},
    kernel::collector::Snapshot,
};

use crate::{CLIENTS, FLOWS, GW_MAC, NEW_FLOWS_PER_CLIENT, REMOTES_PER_CLIENT, programs::Programs};

/// xorshift64*: a fixed seed, so every run times the same mix.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Vlan {
    None,
    Single,
    Double,
}

#[derive(Clone, Copy)]
pub(crate) struct FlowSpec {
    client: usize,
    remote: usize,
    pub(crate) ipv6: bool,
    pub(crate) tcp: bool,
    remote_port: u16,
    client_port: u16,
    pub(crate) vlan: Vlan,
    /// Frame lengths (no FCS) of the upload and download frames.
    up_len: usize,
    down_len: usize,
}

fn client_mac(i: usize) -> [u8; 6] {
    [0x02, 0x00, 0x00, 0x01, (i >> 8) as u8, i as u8]
}

fn client_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 1 + (i / 200) as u8, 10 + (i % 200) as u8)
}

fn client_v6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 1, 0, 0, 0x1000, 0, (i >> 16) as u16, i as u16)
}

/// Remote number `r`: public-looking, all distinct for r < 65536.
fn remote_v4(r: usize) -> Ipv4Addr {
    Ipv4Addr::new(23 + (r % 150) as u8, (r >> 8) as u8, r as u8, 1 + (r % 253) as u8)
}

fn remote_v6(r: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, (r >> 16) as u16, 0, 0, r as u16, 1)
}

/// Frame length: many small (ACKs, DNS, QUIC acks), some medium, many full-size.
fn frame_len(rng: &mut Rng) -> usize {
    match rng.below(100) {
        0..40 => 64 + rng.below(65) as usize,
        40..55 => 129 + rng.below(472) as usize,
        55..60 => 601 + rng.below(599) as usize,
        _ => 1200 + rng.below(301) as usize,
    }
}

fn flow_spec(rng: &mut Rng, client: usize, j: usize) -> FlowSpec {
    let tcp = rng.chance(75);
    let remote_port = if tcp {
        match rng.below(100) {
            0..60 => 443,
            60..80 => 80,
            80..88 => 8443,
            88..94 => 993,
            _ => 1024 + rng.below(64_000) as u16,
        }
    } else {
        match rng.below(100) {
            0..50 => 443,
            50..80 => 53,
            80..88 => 123,
            88..94 => 3478,
            _ => 1024 + rng.below(64_000) as u16,
        }
    };
    FlowSpec {
        client,
        // Distinct remotes per client (j < 65536), spread over the whole remote space.
        remote: (client * 1_009 + j * 7_919) % 65_536,
        ipv6: rng.chance(30),
        tcp,
        remote_port,
        client_port: 32_768 + rng.below(28_000) as u16,
        vlan: match client % 20 {
            0 | 7 => Vlan::Single,
            13 => Vlan::Double,
            _ => Vlan::None,
        },
        up_len: frame_len(rng),
        down_len: frame_len(rng),
    }
}

/// One frame of the flow: upload (client → remote) or download (remote → client), padded with
/// payload to `len` (at least the headers). VLAN tags are inserted after the MAC addresses.
fn frame(f: &FlowSpec, upload: bool) -> Vec<u8> {
    let (len, cmac) = (if upload { f.up_len } else { f.down_len }, client_mac(f.client));
    let (src_mac, dst_mac) = if upload { (cmac, GW_MAC) } else { (GW_MAC, cmac) };
    let (sport, dport) =
        if upload { (f.client_port, f.remote_port) } else { (f.remote_port, f.client_port) };
    let tags: &[u8] = match f.vlan {
        Vlan::None => &[],
        Vlan::Single => &[0x81, 0x00, 0x00, 10],
        Vlan::Double => &[0x88, 0xa8, 0x00, 100, 0x81, 0x00, 0x00, 10],
    };
    let eth = PacketBuilder::ethernet2(src_mac, dst_mac);
    let l3 = if f.ipv6 {
        let (c, r) = (client_v6(f.client).octets(), remote_v6(f.remote).octets());
        let (s, d) = if upload { (c, r) } else { (r, c) };
        eth.ipv6(s, d, 64)
    } else {
        let (c, r) = (client_v4(f.client).octets(), remote_v4(f.remote).octets());
        let (s, d) = if upload { (c, r) } else { (r, c) };
        eth.ipv4(s, d, 64)
    };
    let target = len.saturating_sub(tags.len());
    let mut out = Vec::with_capacity(len.max(128));
    if f.tcp {
        let b = l3.tcp(sport, dport, 1, 64_240);
        let payload = vec![0x5a; target.saturating_sub(b.size(0))];
        b.write(&mut out, &payload).unwrap();
    } else {
        let b = l3.udp(sport, dport);
        let payload = vec![0x5a; target.saturating_sub(b.size(0))];
        b.write(&mut out, &payload).unwrap();
    }
    out.splice(12..12, tags.iter().copied());
    out
}

/// Selects the flows of a subset of the sample.
pub(crate) type Filter = fn(&FlowSpec) -> bool;

pub(crate) struct Mix {
    pub(crate) flows: Vec<FlowSpec>,
    pub(crate) up: Vec<Vec<u8>>,
    pub(crate) down: Vec<Vec<u8>>,
    /// First packets of flows the primed maps do not have.
    pub(crate) new_up: Vec<Vec<u8>>,
}

pub(crate) fn mix() -> Mix {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut flows = Vec::with_capacity(FLOWS);
    for j in 0..REMOTES_PER_CLIENT {
        for c in 0..CLIENTS {
            flows.push(flow_spec(&mut rng, c, j));
        }
    }
    let up = flows.iter().map(|f| frame(f, true)).collect();
    let down = flows.iter().map(|f| frame(f, false)).collect();
    let new_up = (REMOTES_PER_CLIENT..REMOTES_PER_CLIENT + NEW_FLOWS_PER_CLIENT)
        .flat_map(|j| (0..CLIENTS).map(move |c| (c, j)))
        .map(|(c, j)| frame(&flow_spec(&mut rng, c, j), true))
        .collect();
    Mix { flows, up, down, new_up }
}

/// Runs every frame of the mix once in each direction (and each upload frame through the
/// floor), and checks all were counted as flows, the floor's under the sensor's keys.
pub(crate) fn prime(p: &Programs, m: &Mix) -> anyhow::Result<()> {
    for (u, d) in m.up.iter().zip(&m.down) {
        p.xdp(names::XDP_PROGRAM, u, 1)?;
        p.xdp(names::FLOOR_PROGRAM, u, 1)?;
        p.tc(d, 1)?;
    }
    let snap = p.snapshot()?;
    ensure!(
        snap.flows.len() == FLOWS,
        "{} flows after priming, expected {FLOWS}",
        snap.flows.len()
    );
    ensure!(
        snap.clients.len() == CLIENTS,
        "{} clients after priming, expected {CLIENTS}",
        snap.clients.len()
    );
    check_all_counted(&snap)?;
    check_floor_keys(p, &snap)?;
    Ok(())
}

/// The floor counted the same flows as the sensor, under the same keys, one packet and the
/// same upload bytes each: it does the sensor's counting work, no less.
pub(crate) fn check_floor_keys(p: &Programs, snap: &Snapshot) -> anyhow::Result<()> {
    let floor = p.floor_flows()?;
    ensure!(
        floor.len() == snap.flows.len(),
        "floor: {} flows, sensor {}",
        floor.len(),
        snap.flows.len()
    );
    for ((fk, [packets, bytes]), (sk, c)) in floor.iter().zip(&snap.flows) {
        ensure!(fk == sk, "floor key {fk:?} where the sensor has {sk:?}");
        ensure!(
            *packets == c.packets[0] && *bytes == c.bytes[0],
            "floor counted {packets} packets / {bytes} bytes for {fk:?}, the sensor {} / {}",
            c.packets[0],
            c.bytes[0]
        );
    }
    Ok(())
}

/// Every packet so far took the counting path (not rejected, not failed): the figures are the
/// cost of counting, not of an early exit.
pub(crate) fn check_all_counted(snap: &Snapshot) -> anyhow::Result<()> {
    for dir in Direction::ALL {
        let (seen, counted) = (snap.stat(Stat::Seen, dir), snap.stat(Stat::Counted, dir));
        if seen != counted {
            let other: Vec<String> = Stat::ALL[2..]
                .iter()
                .filter(|s| snap.stat(**s, dir) != 0)
                .map(|s| format!("{}={}", s.as_str(), snap.stat(*s, dir)))
                .collect();
            bail!("{}: {seen} seen but {counted} counted ({})", dir.as_str(), other.join(", "));
        }
    }
    Ok(())
}
