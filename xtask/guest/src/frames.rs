//! The frames the checker sends: UDP both ways, an HTTP request and a TLS ClientHello from the
//! client (XDP naming events), a 1,900-byte ClientHello over two segments and a 1,350-byte QUIC
//! Initial (events of several chunks, and a followed segment), a DNS answer to it (a TC naming
//! event); and what the kernel must count for them. L4 checksums are left zero:
//! nothing on the path checks them.

use std::net::Ipv4Addr;

use sensor::common::{Counters, Direction, EventKind, FlowKey};

use crate::{CLIENT4, Expected};

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// A locally administered unicast MAC: the LAN client.
const CLIENT_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
const REMOTE4: Ipv4Addr = Ipv4Addr::new(93, 184, 216, 34);
const RESOLVER4: Ipv4Addr = Ipv4Addr::new(9, 9, 9, 9);

pub(crate) struct Frame {
    pub(crate) bytes: Vec<u8>,
    key: FlowKey,
    dir: Direction,
    /// Set for the frames that must raise a naming event: its kind and L4 payload.
    event: Option<(EventKind, Vec<u8>)>,
}

/// A naming event the kernel must hand up: its kind, flow, TCP sequence number (0 for UDP)
/// and the whole payload (which may come in several chunks).
pub(crate) struct WantEvent {
    pub(crate) kind: EventKind,
    pub(crate) key: FlowKey,
    pub(crate) seq: u32,
    pub(crate) payload: Vec<u8>,
}

/// Sequence numbers of the frames this checker sends.
const SEQ: u32 = 1;
/// The long ClientHello's first sequence number, and where its first segment ends.
const LONG_SEQ: u32 = 1000;
const LONG_CUT: usize = 1400;

pub(crate) struct Traffic {
    frames: Vec<Frame>,
}

impl Traffic {
    /// `gw_mac`: the sensor's interface (uploads are sent to it, downloads come from it).
    pub(crate) fn new(gw_mac: [u8; 6]) -> Traffic {
        let up_udp =
            |len: usize| udp(CLIENT_MAC, gw_mac, CLIENT4, REMOTE4, 40000, 5000, &vec![0xab; len]);
        let down_udp =
            |len: usize| udp(gw_mac, CLIENT_MAC, REMOTE4, CLIENT4, 5000, 40000, &vec![0xcd; len]);
        let http = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n".to_vec();
        let hello = client_hello("example.org");
        let answer = dns_answer("example.net", [93, 184, 216, 34]);
        let mut frames = vec![up_udp(18), up_udp(400), up_udp(1400), down_udp(100), down_udp(1000)];
        let mut f = tcp_up(gw_mac, 40001, 80, SEQ, &http);
        f.event = Some((EventKind::HttpRequest, http));
        frames.push(f);
        let mut f = tcp_up(gw_mac, 40002, 443, SEQ, &hello);
        f.event = Some((EventKind::TlsClientHello, hello));
        frames.push(f);
        // A post-quantum-sized ClientHello: its second segment is followed by sequence number.
        let long = padded_client_hello("pq.example.org", 1900);
        let (first, second) = long.split_at(LONG_CUT);
        let mut f = tcp_up(gw_mac, 40003, 8443, LONG_SEQ, first);
        f.event = Some((EventKind::TlsClientHello, first.to_vec()));
        frames.push(f);
        let second_seq = LONG_SEQ + LONG_CUT as u32;
        let mut f = tcp_up(gw_mac, 40003, 8443, second_seq, second);
        f.event = Some((EventKind::TlsSegment, second.to_vec()));
        frames.push(f);
        // A QUIC v1 Initial of 1,350 bytes: two chunks.
        let mut initial = vec![0x5a; 1350];
        initial[..5].copy_from_slice(&[0xc3, 0, 0, 0, 1]);
        let mut f = udp(CLIENT_MAC, gw_mac, CLIENT4, REMOTE4, 40004, 443, &initial);
        f.event = Some((EventKind::QuicInitial, initial));
        frames.push(f);
        let mut f = udp(gw_mac, CLIENT_MAC, RESOLVER4, CLIENT4, 53, 51000, &answer);
        f.event = Some((EventKind::DnsResponse, answer));
        frames.push(f);
        Traffic { frames }
    }

    pub(crate) fn upload(&self) -> impl Iterator<Item = &Frame> {
        self.frames.iter().filter(|f| f.dir == Direction::Upload)
    }

    pub(crate) fn download(&self) -> impl Iterator<Item = &Frame> {
        self.frames.iter().filter(|f| f.dir == Direction::Download)
    }

    pub(crate) fn events(&self) -> impl Iterator<Item = WantEvent> + '_ {
        self.frames.iter().filter_map(|f| {
            let (kind, payload) = f.event.clone()?;
            // The sequence number sits after the ports in a TCP header (IPv4 without options).
            let seq = if f.key.protocol == IPPROTO_TCP {
                u32::from_be_bytes([f.bytes[38], f.bytes[39], f.bytes[40], f.bytes[41]])
            } else {
                0
            };
            Some(WantEvent { kind, key: f.key, seq, payload })
        })
    }

    /// Per flow: packets and frame bytes each way.
    pub(crate) fn expected(&self) -> Expected {
        let mut flows: Vec<(FlowKey, Counters)> = Vec::new();
        for f in &self.frames {
            let at = match flows.iter().position(|(k, _)| *k == f.key) {
                Some(at) => at,
                None => {
                    flows.push((f.key, Counters::default()));
                    flows.len() - 1
                }
            };
            let c = &mut flows[at].1;
            c.packets[f.dir.index()] += 1;
            c.bytes[f.dir.index()] += f.bytes.len() as u64;
        }
        Expected { flows, client_mac: CLIENT_MAC }
    }
}

fn key(client: Ipv4Addr, remote: Ipv4Addr, protocol: u8, remote_port: u16) -> FlowKey {
    FlowKey {
        client_ip: client.to_ipv6_mapped().octets(),
        remote_ip: remote.to_ipv6_mapped().octets(),
        client_mac: CLIENT_MAC,
        remote_port,
        protocol,
        _pad: [0; 7],
    }
}

/// Ethernet + IPv4 header (no options) for an L4 segment of `l4_len` bytes.
fn eth_ipv4(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    l4_len: usize,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(34 + l4_len);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = (20 + l4_len) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    // The header checksum: a bridge with br_netfilter drops IPv4 frames without a valid one.
    let sum = f[14..34].chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum::<u32>();
    let folded = (sum & 0xffff) + (sum >> 16);
    let csum = !((folded & 0xffff) + (folded >> 16)) as u16;
    f[24..26].copy_from_slice(&csum.to_be_bytes());
    f
}

/// Which side is the client decides the flow key and direction.
fn flow(
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    sport: u16,
    dport: u16,
) -> (FlowKey, Direction) {
    if src_mac == CLIENT_MAC {
        (key(src, dst, proto, dport), Direction::Upload)
    } else {
        (key(dst, src, proto, sport), Direction::Download)
    }
}

fn udp(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Frame {
    let mut f = eth_ipv4(src_mac, dst_mac, src, dst, IPPROTO_UDP, 8 + payload.len());
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    let (key, dir) = flow(src_mac, src, dst, IPPROTO_UDP, sport, dport);
    Frame { bytes: f, key, dir, event: None }
}

/// A TCP segment from the client to the remote, through the sensor's interface `gw_mac`.
fn tcp_up(gw_mac: [u8; 6], sport: u16, dport: u16, seq: u32, payload: &[u8]) -> Frame {
    let (src_mac, dst_mac, src, dst) = (CLIENT_MAC, gw_mac, CLIENT4, REMOTE4);
    let mut f = eth_ipv4(src_mac, dst_mac, src, dst, IPPROTO_TCP, 20 + payload.len());
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&1u32.to_be_bytes()); // ack
    f.extend_from_slice(&[0x50, 0x18]); // 20-byte header, PSH+ACK
    f.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]); // window, checksum, urgent
    f.extend_from_slice(payload);
    let (key, dir) = flow(src_mac, src, dst, IPPROTO_TCP, sport, dport);
    Frame { bytes: f, key, dir, event: None }
}

/// A TLS 1.2 record holding a ClientHello with one cipher suite and a server_name extension.
fn client_hello(host: &str) -> Vec<u8> {
    padded_client_hello(host, 0)
}

/// [`client_hello`], `len` bytes long in all when `len` is not 0: a padding extension (21)
/// before the server_name makes up the rest, as a large key share would.
fn padded_client_hello(host: &str, len: usize) -> Vec<u8> {
    let bare = if len == 0 { Vec::new() } else { padded_client_hello(host, 0) };
    let pad = if len == 0 { None } else { Some(len - bare.len() - 4) };
    let name = host.as_bytes();
    let mut sni = Vec::new();
    sni.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes()); // server_name_list
    sni.push(0); // host_name
    sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sni.extend_from_slice(name);
    let mut ext = Vec::new();
    if let Some(pad) = pad {
        ext.extend_from_slice(&[0, 21]);
        ext.extend_from_slice(&(pad as u16).to_be_bytes());
        ext.extend(std::iter::repeat_n(0, pad));
    }
    ext.extend_from_slice(&[0, 0]); // server_name
    ext.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    ext.extend_from_slice(&sni);
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[0x11; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
    body.extend_from_slice(&[1, 0]); // null compression
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![1]; // ClientHello
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

/// A DNS response: one question (`name` A) and its A answer.
fn dns_answer(name: &str, addr: [u8; 4]) -> Vec<u8> {
    let mut m = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
    for label in name.split('.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&[0, 1, 0, 1]); // A, IN
    m.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0x0e, 0x10, 0, 4]); // ptr, A, IN, TTL, len
    m.extend_from_slice(&addr);
    m
}
