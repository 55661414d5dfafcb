//! Clients' DHCP requests as whole Ethernet frames, for [`crate::wire::send_frames`]: what a
//! phone or laptop broadcasts when it joins (no DHCP client program needed). Headers carry
//! correct checksums, so that the gateway's own stack would take them too.

/// A DHCPv4 message type (option 53).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V4Kind {
    Discover = 1,
    Request = 3,
    Inform = 8,
}

/// A DHCPv4 client request from `mac` (also its `chaddr`), broadcast from 0.0.0.0:68 to
/// 255.255.255.255:67, with `options` (code, value) after option 53.
pub fn v4_frame(mac: [u8; 6], kind: V4Kind, options: &[(u8, &[u8])]) -> Vec<u8> {
    let mut bootp = vec![1, 1, 6, 0]; // BOOTREQUEST, Ethernet, 6-byte address, no hops
    bootp.extend_from_slice(&0x3903_f326u32.to_be_bytes()); // xid
    bootp.extend_from_slice(&[0, 0, 0x80, 0]); // secs; flags: broadcast
    bootp.extend_from_slice(&[0; 16]); // ciaddr, yiaddr, siaddr, giaddr
    bootp.extend_from_slice(&mac);
    bootp.extend_from_slice(&[0; 10 + 64 + 128]); // chaddr padding, sname, file
    bootp.extend_from_slice(&[99, 130, 83, 99]); // magic cookie
    bootp.extend_from_slice(&[53, 1, kind as u8]);
    for (code, value) in options {
        bootp.push(*code);
        bootp.push(value.len() as u8);
        bootp.extend_from_slice(value);
    }
    bootp.push(255);
    let udp = udp(68, 67, &bootp, |_| {}); // checksum 0: none, as IPv4 allows
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&(20 + udp.len() as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0]); // id, flags, TTL, UDP, checksum
    ip.extend_from_slice(&[0, 0, 0, 0, 255, 255, 255, 255]);
    let sum = checksum(&ip, 0);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut frame = ethernet([0xff; 6], mac, 0x0800);
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&udp);
    frame
}

/// A DHCPv6 message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V6Kind {
    Solicit = 1,
    Request = 3,
    InformationRequest = 11,
}

/// A DHCPv6 client message from `mac` (link-local source derived from it, EUI-64) to
/// ff02::1:2 port 547, with a DUID-LL of `mac` and `options` (code, value).
pub fn v6_frame(mac: [u8; 6], kind: V6Kind, options: &[(u16, &[u8])]) -> Vec<u8> {
    let mut message = vec![kind as u8, 0x5a, 0x17, 0x0c];
    let duid = [&[0, 3, 0, 1][..], &mac].concat();
    let push = |m: &mut Vec<u8>, code: u16, value: &[u8]| {
        m.extend_from_slice(&code.to_be_bytes());
        m.extend_from_slice(&(value.len() as u16).to_be_bytes());
        m.extend_from_slice(value);
    };
    push(&mut message, 1, &duid);
    for (code, value) in options {
        push(&mut message, *code, value);
    }
    let mut src = [0u8; 16];
    src[..2].copy_from_slice(&[0xfe, 0x80]);
    src[8..].copy_from_slice(&[mac[0] ^ 2, mac[1], mac[2], 0xff, 0xfe, mac[3], mac[4], mac[5]]);
    let dst = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 2];
    let udp = udp(546, 547, &message, |segment| {
        // The pseudo-header: addresses, length, next header.
        let mut pseudo = Vec::with_capacity(40);
        pseudo.extend_from_slice(&src);
        pseudo.extend_from_slice(&dst);
        pseudo.extend_from_slice(&(segment.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 17]);
        let sum = checksum(segment, sum_words(&pseudo));
        segment[6..8].copy_from_slice(&(if sum == 0 { 0xffff } else { sum }).to_be_bytes());
    });
    let mut frame = ethernet([0x33, 0x33, 0, 1, 0, 2], mac, 0x86dd);
    frame.extend_from_slice(&[0x60, 0, 0, 0]);
    frame.extend_from_slice(&(udp.len() as u16).to_be_bytes());
    frame.extend_from_slice(&[17, 1]); // UDP, hop limit 1
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&udp);
    frame
}

fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut frame = Vec::with_capacity(600);
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame
}

/// A UDP segment; `finish` fills its checksum in.
fn udp(src: u16, dst: u16, payload: &[u8], finish: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let mut segment = Vec::with_capacity(8 + payload.len());
    segment.extend_from_slice(&src.to_be_bytes());
    segment.extend_from_slice(&dst.to_be_bytes());
    segment.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    segment.extend_from_slice(&[0, 0]);
    segment.extend_from_slice(payload);
    finish(&mut segment);
    segment
}

fn sum_words(bytes: &[u8]) -> u32 {
    bytes.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum()
}

/// The Internet checksum of `bytes`, `start` (a pseudo-header's sum) added.
fn checksum(bytes: &[u8], start: u32) -> u16 {
    let mut sum = start + sum_words(bytes);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header with its checksum in sums to 0xffff (its checksum is then 0).
    #[test]
    fn checksums_verify() {
        let f = v4_frame([2, 0, 0, 0, 0, 1], V4Kind::Discover, &[(12, b"x")]);
        assert_eq!(checksum(&f[14..34], 0), 0);
        let f = v6_frame([2, 0, 0, 0, 0, 1], V6Kind::Solicit, &[]);
        let mut pseudo = f[22..54].to_vec();
        pseudo.extend_from_slice(&((f.len() - 54) as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 17]);
        assert_eq!(checksum(&f[54..], sum_words(&pseudo)), 0);
    }
}
