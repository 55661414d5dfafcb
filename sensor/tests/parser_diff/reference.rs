//! The reference classifier: what the kernel parser (`sensor-ebpf`) must do with a frame,
//! predicted in userspace.
//!
//! Every header is read with etherparse's header parsers. The parser rules on top of them are
//! the documented ones (docs/design.md, "Parsing" and "Who is the client", and the `Stat`
//! reasons in sensor-common). Where etherparse's notion of a valid packet differs from those
//! rules, the rule wins and a comment at that place says why; [`etherparse_view`] is the
//! independent check that, on the well-formed frames where both views apply, etherparse's own
//! whole-packet parse gives the same flow key.

use std::net::{IpAddr, Ipv6Addr};

use etherparse::{
    EtherType, Ethernet2HeaderSlice, IpAuthHeaderSlice, IpNumber, Ipv4HeaderSlice,
    Ipv6FragmentHeaderSlice, Ipv6HeaderSlice, Ipv6RawExtHeaderSlice, LinkExtSlice, LinkSlice,
    NetSlice, SingleVlanHeaderSlice, SlicedPacket, TcpHeaderSlice, TransportSlice, UdpHeaderSlice,
    err,
};
use ipnet::IpNet;
use sensor::common::{Direction, FlowKey, MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS, Stat};

/// What the program must do with one frame (as the program sees it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Counted under this key (and, if its client has or gets a slot, in its client's totals).
    Counted(FlowKey),
    /// Not counted, for this reason.
    Rejected(Stat),
}

/// The two VLAN tag protocol identifiers the kernel follows. etherparse also takes 0x9100 (the
/// pre-standard QinQ TPID) as a tag; the kernel does not (docs: "802.1Q, 802.1ad"), so a frame
/// with it is an unknown EtherType, `not_ip`.
fn is_kernel_vlan(t: EtherType) -> bool {
    t == EtherType::VLAN_TAGGED_FRAME || t == EtherType::PROVIDER_BRIDGING
}

/// The extension headers the kernel walks (docs: "hop-by-hop, routing, fragment, destination
/// options, AH"). etherparse's `is_ipv6_ext_header_value` also lists ESP, mobility, HIP, shim6
/// and the experimental numbers; the kernel stops at those and takes them as the protocol.
fn is_kernel_ext(n: IpNumber) -> bool {
    matches!(
        n,
        IpNumber::IPV6_HEADER_HOP_BY_HOP
            | IpNumber::IPV6_ROUTE_HEADER
            | IpNumber::IPV6_FRAGMENTATION_HEADER
            | IpNumber::AUTHENTICATION_HEADER
            | IpNumber::IPV6_DESTINATION_OPTIONS
    )
}

/// The LAN prefixes, as the kernel compares them: in the IPv4-mapped space of the flow key.
#[derive(Clone, Debug)]
pub struct Reference {
    lan: Vec<IpNet>,
}

/// What the L3 parse found.
struct L3 {
    client: IpAddr,
    remote: IpAddr,
    /// The address came from an IPv6 header (an IPv4-mapped one there is not a client).
    v6: bool,
    protocol: u8,
    /// The L4 header, from its first byte to the end of the frame.
    l4: usize,
    first_fragment: bool,
}

impl Reference {
    pub fn new(lan: &[IpNet]) -> Reference {
        Reference { lan: lan.iter().map(|n| mapped_net(*n)).collect() }
    }

    /// The outcome of `frame` (the bytes the program sees) in direction `dir`.
    pub fn classify(&self, frame: &[u8], dir: Direction) -> Outcome {
        match self.parse(frame, dir) {
            Ok(key) => Outcome::Counted(key),
            Err(stat) => Outcome::Rejected(stat),
        }
    }

    fn parse(&self, frame: &[u8], dir: Direction) -> Result<FlowKey, Stat> {
        let upload = dir == Direction::Upload;
        let eth = Ethernet2HeaderSlice::from_slice(frame).map_err(|_| Stat::TruncatedL2)?;
        let client_mac = if upload { eth.source() } else { eth.destination() };
        let mut ether_type = eth.ether_type();
        let mut off = eth.slice().len();
        for _ in 0..MAX_VLAN_TAGS {
            if !is_kernel_vlan(ether_type) {
                break;
            }
            let tag =
                SingleVlanHeaderSlice::from_slice(&frame[off..]).map_err(|_| Stat::TruncatedL2)?;
            ether_type = tag.ether_type();
            off += tag.slice().len();
        }
        let l3 = match ether_type {
            EtherType::IPV4 => ipv4(frame, off, upload)?,
            EtherType::IPV6 => ipv6(frame, off, upload)?,
            t if is_kernel_vlan(t) => return Err(Stat::VlanDepth),
            _ => return Err(Stat::NotIp),
        };
        let port = if l3.first_fragment { port(frame, &l3, upload)? } else { 0 };
        let key = flow_key(client_mac, l3.client, l3.remote, l3.protocol, port);
        self.client_check(&key, l3.v6)?;
        Ok(key)
    }

    /// Parse errors come first; then the client side must be a unicast MAC and a LAN address
    /// (and not an IPv4-mapped address in an IPv6 header, which would pose as an IPv4 host).
    fn client_check(&self, key: &FlowKey, v6: bool) -> Result<(), Stat> {
        let group_mac = key.client_mac[0] & 1 != 0;
        let client = Ipv6Addr::from(key.client_ip);
        let mapped = client.to_ipv4_mapped().is_some();
        if group_mac || (v6 && mapped) || !self.lan.iter().any(|n| n.contains(&IpAddr::V6(client)))
        {
            return Err(Stat::NotClient);
        }
        Ok(())
    }
}

/// An IPv4 prefix as the kernel holds it: `::ffff:a.b.c.d/(96 + len)`.
fn mapped_net(n: IpNet) -> IpNet {
    match n {
        IpNet::V4(v4) => {
            IpNet::new(IpAddr::V6(v4.network().to_ipv6_mapped()), 96 + v4.prefix_len())
                .expect("prefix length ≤ 128")
        }
        v6 => v6,
    }
}

fn ipv4(frame: &[u8], off: usize, upload: bool) -> Result<L3, Stat> {
    // etherparse checks in the kernel's order: 20 bytes, version, IHL ≥ 5, IHL × 4 bytes. Only
    // the header is parsed: the kernel trusts no total length (a bogus one changes nothing).
    let ip = Ipv4HeaderSlice::from_slice(&frame[off..]).map_err(|e| match e {
        err::ipv4::HeaderSliceError::Len(_) => Stat::TruncatedL3,
        err::ipv4::HeaderSliceError::Content(_) => Stat::BadL3Header,
    })?;
    let (src, dst) = (IpAddr::V4(ip.source_addr()), IpAddr::V4(ip.destination_addr()));
    let (client, remote) = if upload { (src, dst) } else { (dst, src) };
    Ok(L3 {
        client,
        remote,
        v6: false,
        protocol: ip.protocol().0,
        l4: off + ip.slice().len(),
        // Docs: "Non-first fragments count without ports": a first fragment (offset 0, more
        // fragments) keeps its ports, where etherparse leaves every fragment's payload unparsed.
        first_fragment: ip.fragments_offset().value() == 0,
    })
}

/// One IPv6 extension header at the start of `h`, as far as the frame holds it.
enum Ext {
    /// Whole: what follows it, its length, and for a fragment header whether it is the first.
    Whole { next: IpNumber, len: usize, first_fragment: bool },
    /// Its first two bytes (next header, length) are there but not all of it.
    Partial { next: IpNumber },
    /// Not even what the kernel reads of it first (2 bytes; 8 of a fragment header).
    Missing,
}

fn ext_header(kind: IpNumber, h: &[u8]) -> Ext {
    let partial =
        || if h.len() >= 2 { Ext::Partial { next: IpNumber(h[0]) } } else { Ext::Missing };
    match kind {
        IpNumber::IPV6_FRAGMENTATION_HEADER => match Ipv6FragmentHeaderSlice::from_slice(h) {
            Ok(f) => Ext::Whole {
                next: f.next_header(),
                len: f.slice().len(),
                first_fragment: f.fragment_offset().value() == 0,
            },
            Err(_) => Ext::Missing,
        },
        IpNumber::AUTHENTICATION_HEADER => {
            // etherparse refuses an AH whose payload length is 0 (RFC 4302 has no such AH);
            // the kernel walks it by the formula, (0 + 2) × 4 = 8 bytes.
            if h.len() >= 2 && h[1] == 0 {
                return if h.len() >= 8 {
                    Ext::Whole { next: IpNumber(h[0]), len: 8, first_fragment: true }
                } else {
                    partial()
                };
            }
            match IpAuthHeaderSlice::from_slice(h) {
                Ok(a) => {
                    Ext::Whole { next: a.next_header(), len: a.slice().len(), first_fragment: true }
                }
                Err(_) => partial(),
            }
        }
        _ => match Ipv6RawExtHeaderSlice::from_slice(h) {
            Ok(x) => {
                Ext::Whole { next: x.next_header(), len: x.slice().len(), first_fragment: true }
            }
            Err(_) => partial(),
        },
    }
}

fn ipv6(frame: &[u8], off: usize, upload: bool) -> Result<L3, Stat> {
    let ip = Ipv6HeaderSlice::from_slice(&frame[off..]).map_err(|e| match e {
        err::ipv6::HeaderSliceError::Len(_) => Stat::TruncatedL3,
        err::ipv6::HeaderSliceError::Content(_) => Stat::BadL3Header,
    })?;
    let (src, dst) = (IpAddr::V6(ip.source_addr()), IpAddr::V6(ip.destination_addr()));
    let (client, remote) = if upload { (src, dst) } else { (dst, src) };

    // The extension-header walk, with the kernel's rules where etherparse's
    // `Ipv6ExtensionsSlice` has others: any order (etherparse wants hop-by-hop first), any
    // number of each, at most MAX_IPV6_EXT_HEADERS of them (a longer chain is
    // `ipv6_ext_limit`), and a non-first fragment ends the walk (what follows it is not
    // parsed, and its next-header value is the protocol).
    let mut nh = ip.next_header();
    let mut l4 = off + ip.slice().len();
    let mut first_fragment = true;
    let mut walked = 0;
    while is_kernel_ext(nh) && first_fragment {
        if walked == MAX_IPV6_EXT_HEADERS {
            return Err(Stat::Ipv6ExtLimit);
        }
        walked += 1;
        match ext_header(nh, frame.get(l4..).unwrap_or(&[])) {
            Ext::Whole { next, len, first_fragment: first } => {
                nh = next;
                l4 += len;
                first_fragment = first;
            }
            // The kernel reads a header's first two bytes and moves on by its length; that the
            // header was cut short shows at the next read, or at the end of the walk, either
            // way `truncated_l3`. Except when this header was the last the walk may take and
            // another extension header follows: the limit is checked first.
            Ext::Partial { next } if walked == MAX_IPV6_EXT_HEADERS && is_kernel_ext(next) => {
                return Err(Stat::Ipv6ExtLimit);
            }
            Ext::Partial { .. } | Ext::Missing => return Err(Stat::TruncatedL3),
        }
    }
    Ok(L3 { client, remote, v6: true, protocol: nh.0, l4, first_fragment })
}

/// The remote port of a first (or unfragmented) packet: TCP and UDP only.
fn port(frame: &[u8], l3: &L3, upload: bool) -> Result<u16, Stat> {
    let l4 = &frame[l3.l4..];
    let (src, dst) = match IpNumber(l3.protocol) {
        IpNumber::TCP => match TcpHeaderSlice::from_slice(l4) {
            Ok(tcp) => (tcp.source_port(), tcp.destination_port()),
            // etherparse also wants a data offset of at least 5 and the options it announces;
            // the kernel reads the fixed 20 bytes only (the ports; the data offset just places
            // the payload for GSO byte counts and naming events), so it counts such a segment.
            Err(_) if l4.len() >= 20 => {
                (u16::from_be_bytes([l4[0], l4[1]]), u16::from_be_bytes([l4[2], l4[3]]))
            }
            Err(_) => return Err(Stat::TruncatedL4),
        },
        IpNumber::UDP => {
            let udp = UdpHeaderSlice::from_slice(l4).map_err(|_| Stat::TruncatedL4)?;
            (udp.source_port(), udp.destination_port())
        }
        _ => return Ok(0),
    };
    Ok(if upload { dst } else { src })
}

fn ip16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

pub fn flow_key(mac: [u8; 6], client: IpAddr, remote: IpAddr, protocol: u8, port: u16) -> FlowKey {
    FlowKey {
        client_ip: ip16(client),
        remote_ip: ip16(remote),
        client_mac: mac,
        remote_port: port,
        protocol,
        _pad: [0; 7],
    }
}

/// etherparse's own whole-packet view of a well-formed frame: `None` unless `SlicedPacket`
/// parses it strictly (lengths consistent, headers valid) and it lies where the documented
/// rules and etherparse agree on what the packet is (kernel-known VLAN tags, at most the walk
/// limit of kernel-known extension headers, not a fragment). There, the flow key and outcome
/// must equal [`Reference::classify`]'s: the check that the rules above were put on top of
/// etherparse's parsing without changing what it says about ordinary packets.
pub fn etherparse_view(reference: &Reference, frame: &[u8], dir: Direction) -> Option<Outcome> {
    let p = SlicedPacket::from_ethernet(frame).ok()?;
    let Some(LinkSlice::Ethernet2(eth)) = &p.link else { return None };
    if p.link_exts.len() > MAX_VLAN_TAGS {
        return None;
    }
    let mut tpid = eth.ether_type();
    for ext in &p.link_exts {
        let LinkExtSlice::Vlan(tag) = ext else { return None };
        if !is_kernel_vlan(tpid) {
            return None;
        }
        tpid = tag.ether_type();
    }
    let (client_mac, upload) = match dir {
        Direction::Upload => (eth.source(), true),
        Direction::Download => (eth.destination(), false),
    };
    let (src, dst, v6, payload) = match p.net.as_ref()? {
        NetSlice::Ipv4(ip) => {
            // etherparse walks an AH after an IPv4 header (IPsec) and reports what follows it;
            // the kernel walks extension headers after IPv6 only (docs: "IPv4 honouring IHL"),
            // so an IPv4 AH packet counts as protocol 51 without a port. Not compared here.
            if !ip.extensions().is_empty() {
                return None;
            }
            let h = ip.header();
            (IpAddr::V4(h.source_addr()), IpAddr::V4(h.destination_addr()), false, ip.payload())
        }
        NetSlice::Ipv6(ip) => {
            let exts: Vec<_> = ip.extensions().clone().into_iter().collect();
            if exts.len() > MAX_IPV6_EXT_HEADERS {
                return None;
            }
            let h = ip.header();
            (IpAddr::V6(h.source_addr()), IpAddr::V6(h.destination_addr()), true, ip.payload())
        }
        NetSlice::Arp(_) => return None,
    };
    if payload.fragmented || is_kernel_ext(payload.ip_number) {
        return None;
    }
    let port = match (&p.transport, payload.ip_number) {
        (Some(TransportSlice::Tcp(t)), IpNumber::TCP) => {
            if upload {
                t.destination_port()
            } else {
                t.source_port()
            }
        }
        (Some(TransportSlice::Udp(u)), IpNumber::UDP) => {
            if upload {
                u.destination_port()
            } else {
                u.source_port()
            }
        }
        (_, IpNumber::TCP | IpNumber::UDP) => return None,
        _ => 0,
    };
    let (client, remote) = if upload { (src, dst) } else { (dst, src) };
    let key = flow_key(client_mac, client, remote, payload.ip_number.0, port);
    Some(match reference.client_check(&key, v6) {
        Ok(()) => Outcome::Counted(key),
        Err(stat) => Outcome::Rejected(stat),
    })
}

/// Printable key: `mac ip -> ip proto N port P`.
pub fn show_key(k: &FlowKey) -> String {
    let ip = |b: [u8; 16]| {
        let v6 = Ipv6Addr::from(b);
        v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6))
    };
    let mac = k.client_mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    format!(
        "{mac} {} -> {} proto {} port {}",
        ip(k.client_ip),
        ip(k.remote_ip),
        k.protocol,
        k.remote_port
    )
}
