//! The flows of a case: each one's client and remote, and its upload frame.

use etherparse::PacketBuilder;

use crate::{Case, GW_MAC};

pub(crate) fn client_mac(c: usize) -> [u8; 6] {
    [0x02, 0x00, 0x00, 0x01, (c >> 8) as u8, c as u8]
}

fn client_ip(c: usize) -> [u8; 4] {
    [10, 1, (c >> 8) as u8, c as u8]
}

/// Flow `i` of `case`: client i mod M, its (i / M)-th remote (distinct per client).
fn flow(case: &Case, i: usize) -> (usize, [u8; 4], u16) {
    let (c, j) = (i % case.clients, i / case.clients);
    let remote = [23 + (j >> 16) as u8, (j >> 8) as u8, j as u8, 1 + (c % 250) as u8];
    let port = [443, 53, 123, 3478][j % 4];
    (c, remote, port)
}

/// Payload length of flow `i`'s frames: they differ, so sums catch a mix-up.
fn payload_len(i: usize) -> usize {
    18 + (i * 7) % 1400
}

/// The upload frame of flow `i` (UDP over IPv4: UDP flows are attributed at their first poll;
/// a TCP flow without a name may wait up to 2 s for its ClientHello).
pub(crate) fn frame(case: &Case, i: usize, out: &mut Vec<u8>) {
    let (c, remote, port) = flow(case, i);
    out.clear();
    let b = PacketBuilder::ethernet2(client_mac(c), GW_MAC)
        .ipv4(client_ip(c), remote, 64)
        .udp(40_000, port);
    let payload = [0x5a; 1500];
    b.write(out, &payload[..payload_len(i)]).expect("building a frame");
}

pub(crate) fn frame_len(i: usize) -> u64 {
    (14 + 20 + 8 + payload_len(i)) as u64
}
