//! The packet parser: Ethernet with its VLAN tags, IPv4, IPv6 with its extension headers, and
//! the TCP/UDP ports, into a flow key; and the packet cursor it reads through, the only code
//! that reads packet memory or writes key words, so that every read is bounds-checked where
//! the verifier wants it.

use core::mem::MaybeUninit;
use sensor_common::{
    Direction, FlowKey, MAX_IPV6_EXT_HEADERS, MAX_LAN_PREFIXES, MAX_VLAN_TAGS, Stat,
};

use crate::maps::{LAN_PREFIXES, LAN_SLOTS};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
pub(crate) const IPPROTO_TCP: u8 = 6;
pub(crate) const IPPROTO_UDP: u8 = 17;
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AH: u8 = 51;
const IPV6_DSTOPTS: u8 = 60;

// ---------------------------------------------------------------------------------------------
// Packet and key access: the only places that read packet memory or write key words.

/// Integer types read from packets and written into keys, each with one load or store.
pub(crate) trait Word: Copy {}
impl Word for u8 {}
impl Word for u16 {}
impl Word for u32 {}
impl Word for u64 {}

/// The packet, `[data, end)`.
#[derive(Clone, Copy)]
pub(crate) struct Packet {
    pub(crate) data: usize,
    pub(crate) end: usize,
}

/// `N` bytes of the packet from address `.0`, checked to lie before the packet end when made.
#[derive(Clone, Copy)]
pub(crate) struct Span<const N: usize>(usize);

impl Packet {
    /// The `N` bytes at `off`, if the packet holds them: the bounds check the verifier needs
    /// before any read through the span.
    #[inline(always)]
    pub(crate) fn span<const N: usize>(self, off: usize) -> Option<Span<N>> {
        let start = self.data + off;
        if start + N > self.end { None } else { Some(Span(start)) }
    }

    /// Does the packet hold `len` bytes at `off`? (A length check only: nothing is read.)
    #[inline(always)]
    fn holds(self, off: usize, len: usize) -> bool {
        self.data + off + len <= self.end
    }
}

impl<const N: usize> Span<N> {
    /// The `T` at byte `AT` of the span, read with one load of `T`'s width, in packet byte
    /// order (convert with `from_be`).
    ///
    /// The load is unaligned whenever the packet puts the field there (an IPv4 address behind
    /// a 14-byte Ethernet header, say). That is deliberate: the BPF backend splits an
    /// align-1 read (`read_unaligned`, or a `[u8; N]` copy) into byte loads, one instruction
    /// per byte, which is what this replaces. The kernel executes the wide load as is: the JIT
    /// emits a plain load, which x86 and arm64 perform unaligned, and the verifier only insists
    /// on aligned packet access where the architecture lacks efficient unaligned access (or with
    /// BPF_F_STRICT_ALIGNMENT, which we never set). The object is built in release mode, so no
    /// debug alignment check is inserted either.
    #[inline(always)]
    pub(crate) fn get<T: Word, const AT: usize>(self) -> T {
        const { assert!(AT + size_of::<T>() <= N) };
        // SAFETY: [self.0, self.0 + N) lies inside the packet (checked when the span was made)
        // and AT + size_of::<T>() <= N (checked at compile time above); alignment as above.
        unsafe { core::ptr::read((self.0 + AT) as *const T) }
    }
}

/// Byte offsets of the key fields, for [`put`] and [`key_word`].
const K_CLIENT_IP: usize = core::mem::offset_of!(FlowKey, client_ip);
const K_REMOTE_IP: usize = core::mem::offset_of!(FlowKey, remote_ip);
pub(crate) const K_MAC: usize = core::mem::offset_of!(FlowKey, client_mac);
const K_PORT: usize = core::mem::offset_of!(FlowKey, remote_port);
const K_PROTO: usize = core::mem::offset_of!(FlowKey, protocol);
const _: () = assert!(core::mem::align_of::<FlowKey>() == 8 && K_PROTO + 8 == size_of::<FlowKey>());

/// Writes `v` at byte `AT` of the key being built, with one aligned store.
#[inline(always)]
fn put<T: Word, const AT: usize>(key: &mut MaybeUninit<FlowKey>, v: T) {
    const { assert!(AT.is_multiple_of(size_of::<T>()) && AT + size_of::<T>() <= size_of::<FlowKey>()) };
    // SAFETY: in bounds (checked at compile time), and aligned: FlowKey is align(8) and AT is
    // a multiple of T's size (at most 8).
    unsafe { key.as_mut_ptr().cast::<u8>().add(AT).cast::<T>().write(v) }
}

/// Reads the `T` at byte `AT` of the key with one aligned load.
#[inline(always)]
pub(crate) fn key_word<T: Word, const AT: usize>(key: &FlowKey) -> T {
    const { assert!(AT.is_multiple_of(size_of::<T>()) && AT + size_of::<T>() <= size_of::<FlowKey>()) };
    // SAFETY: as in `put`.
    unsafe { (key as *const FlowKey).cast::<u8>().add(AT).cast::<T>().read() }
}

/// The third word of an IPv4-mapped address (`::ffff:a.b.c.d`): bytes 00 00 ff ff.
const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

// ---------------------------------------------------------------------------------------------
// Parser

/// Parses a packet into `key`, writing every byte of it when it succeeds; returns the key,
/// where the L4 payload starts (for GSO byte accounting and events) and a TCP segment's
/// sequence number (0 otherwise), or the reason the packet is not counted.
#[inline(always)]
pub(crate) fn parse(
    pkt: Packet,
    dir: Direction,
    key: &mut MaybeUninit<FlowKey>,
) -> Result<(&FlowKey, usize, u32), Stat> {
    let upload = matches!(dir, Direction::Upload);
    let eth = pkt.span::<ETH_HLEN>(0).ok_or(Stat::TruncatedL2)?;
    // The client is the sender of an upload and the receiver of a download.
    let (mac_head, mac_tail) = if upload {
        (eth.get::<u32, 6>(), eth.get::<u16, 10>())
    } else {
        (eth.get::<u32, 0>(), eth.get::<u16, 4>())
    };

    let mut ethertype = u16::from_be(eth.get::<u16, 12>());
    let mut off = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let tag = pkt.span::<4>(off).ok_or(Stat::TruncatedL2)?;
        ethertype = u16::from_be(tag.get::<u16, 2>());
        off += 4;
    }

    let l3 = match ethertype {
        ETH_P_IP => parse_ipv4(pkt, off, upload, key)?,
        ETH_P_IPV6 => parse_ipv6(pkt, off, upload, key)?,
        ETH_P_8021Q | ETH_P_8021AD => return Err(Stat::VlanDepth),
        _ => return Err(Stat::NotIp),
    };

    // Ports: only in the first (or only) fragment, and only for TCP and UDP.
    let (mut port, mut header_len, mut seq) = (0u16, l3.l4_off, 0u32);
    if l3.first_fragment {
        match l3.protocol {
            IPPROTO_TCP => {
                let tcp = pkt.span::<20>(l3.l4_off).ok_or(Stat::TruncatedL4)?;
                port = u16::from_be(if upload { tcp.get::<u16, 2>() } else { tcp.get::<u16, 0>() });
                seq = u32::from_be(tcp.get::<u32, 4>());
                let doff = ((tcp.get::<u8, 12>() >> 4) as usize) * 4;
                header_len = l3.l4_off + if doff > 20 { doff } else { 20 };
            }
            IPPROTO_UDP => {
                let udp = pkt.span::<8>(l3.l4_off).ok_or(Stat::TruncatedL4)?;
                port = u16::from_be(if upload { udp.get::<u16, 2>() } else { udp.get::<u16, 0>() });
                header_len = l3.l4_off + 8;
            }
            _ => {}
        }
    }

    put::<u32, K_MAC>(key, mac_head);
    put::<u16, { K_MAC + 4 }>(key, mac_tail);
    put::<u16, K_PORT>(key, port);
    // The protocol and the seven padding bytes after it, in one store.
    put::<u64, K_PROTO>(key, u64::from_ne_bytes([l3.protocol, 0, 0, 0, 0, 0, 0, 0]));

    // Group/broadcast MACs are never a client; nor is an address outside the LAN, nor an
    // IPv4-mapped address in an IPv6 header (it would pose as an IPv4 LAN host).
    let w = l3.client;
    let group_mac = mac_head.to_ne_bytes()[0] & 1 != 0;
    let mapped = w[0] == 0 && w[1] == 0 && w[2] == V4_MAPPED_WORD;
    if group_mac || (l3.v6 && mapped) || !in_lan(w) {
        return Err(Stat::NotClient);
    }
    // SAFETY: every byte of the key is written: the addresses (32 bytes) by the L3 parser, then
    // the MAC (6), the port (2), and the protocol with the padding (8).
    Ok((unsafe { key.assume_init_ref() }, header_len, seq))
}

/// Is this an IPv6 packet whose header is followed by an extension header? Only those can have
/// headers that end past TC's usual pull (see `tc_observe`); read from the linear part, with
/// the parser's VLAN walk.
#[inline(always)]
pub(crate) fn ipv6_ext_chain(pkt: Packet) -> bool {
    let Some(eth) = pkt.span::<ETH_HLEN>(0) else { return false };
    let mut ethertype = u16::from_be(eth.get::<u16, 12>());
    let mut off = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let Some(tag) = pkt.span::<4>(off) else { return false };
        ethertype = u16::from_be(tag.get::<u16, 2>());
        off += 4;
    }
    ethertype == ETH_P_IPV6 && pkt.span::<40>(off).is_some_and(|ip| is_ipv6_ext(ip.get::<u8, 6>()))
}

/// What the L3 parsers found besides the addresses (which they write into the key).
struct L3 {
    /// IPv6 (addresses are native), not IPv4 (addresses are IPv4-mapped).
    v6: bool,
    /// The client address as four words (network byte order), as written into the key.
    client: [u32; 4],
    protocol: u8,
    l4_off: usize,
    first_fragment: bool,
}

#[inline(always)]
fn parse_ipv4(
    pkt: Packet,
    off: usize,
    upload: bool,
    key: &mut MaybeUninit<FlowKey>,
) -> Result<L3, Stat> {
    let ip = pkt.span::<20>(off).ok_or(Stat::TruncatedL3)?;
    let version_ihl = ip.get::<u8, 0>();
    if version_ihl >> 4 != 4 {
        return Err(Stat::BadL3Header);
    }
    // IHL, not 20: options are part of the header. Total length is not trusted for anything.
    let ihl = ((version_ihl & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Err(Stat::BadL3Header);
    }
    if !pkt.holds(off, ihl) {
        return Err(Stat::TruncatedL3);
    }
    let frag_offset = u16::from_be(ip.get::<u16, 6>()) & 0x1fff;
    let (src, dst) = (ip.get::<u32, 12>(), ip.get::<u32, 16>());
    let (client, remote) = if upload { (src, dst) } else { (dst, src) };
    // IPv4-mapped: ::ffff:a.b.c.d.
    put::<u64, K_CLIENT_IP>(key, 0);
    put::<u32, { K_CLIENT_IP + 8 }>(key, V4_MAPPED_WORD);
    put::<u32, { K_CLIENT_IP + 12 }>(key, client);
    put::<u64, K_REMOTE_IP>(key, 0);
    put::<u32, { K_REMOTE_IP + 8 }>(key, V4_MAPPED_WORD);
    put::<u32, { K_REMOTE_IP + 12 }>(key, remote);
    Ok(L3 {
        v6: false,
        client: [0, 0, V4_MAPPED_WORD, client],
        protocol: ip.get::<u8, 9>(),
        l4_off: off + ihl,
        first_fragment: frag_offset == 0,
    })
}

/// The first four bytes (in memory order) of eight loaded as a u64.
#[inline(always)]
fn first_word(v: u64) -> u32 {
    let b = v.to_ne_bytes();
    u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
}

/// The last four bytes (in memory order) of eight loaded as a u64.
#[inline(always)]
fn second_word(v: u64) -> u32 {
    let b = v.to_ne_bytes();
    u32::from_ne_bytes([b[4], b[5], b[6], b[7]])
}

#[inline(always)]
fn is_ipv6_ext(nh: u8) -> bool {
    matches!(nh, IPV6_HOPOPTS | IPV6_ROUTING | IPV6_FRAGMENT | IPV6_AH | IPV6_DSTOPTS)
}

#[inline(always)]
fn parse_ipv6(
    pkt: Packet,
    off: usize,
    upload: bool,
    key: &mut MaybeUninit<FlowKey>,
) -> Result<L3, Stat> {
    let ip = pkt.span::<40>(off).ok_or(Stat::TruncatedL3)?;
    if ip.get::<u8, 0>() >> 4 != 6 {
        return Err(Stat::BadL3Header);
    }
    let src = (ip.get::<u64, 8>(), ip.get::<u64, 16>());
    let dst = (ip.get::<u64, 24>(), ip.get::<u64, 32>());
    let (client, remote) = if upload { (src, dst) } else { (dst, src) };
    put::<u64, K_CLIENT_IP>(key, client.0);
    put::<u64, { K_CLIENT_IP + 8 }>(key, client.1);
    put::<u64, K_REMOTE_IP>(key, remote.0);
    put::<u64, { K_REMOTE_IP + 8 }>(key, remote.1);

    let mut nh = ip.get::<u8, 6>();
    let mut l4 = off + 40;
    let mut first_fragment = true;
    // Bounded walk: each header's own length field moves us on, and every read is checked.
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        if !is_ipv6_ext(nh) || !first_fragment {
            break;
        }
        if nh == IPV6_FRAGMENT {
            let frag = pkt.span::<8>(l4).ok_or(Stat::TruncatedL3)?;
            nh = frag.get::<u8, 0>();
            first_fragment = u16::from_be(frag.get::<u16, 2>()) >> 3 == 0;
            l4 += 8;
        } else {
            let h = pkt.span::<2>(l4).ok_or(Stat::TruncatedL3)?;
            let units = h.get::<u8, 1>() as usize;
            // AH counts its length in 4-byte units minus 2; the others in 8-byte units minus 1.
            let len = if nh == IPV6_AH { (units + 2) * 4 } else { (units + 1) * 8 };
            nh = h.get::<u8, 0>();
            l4 += len;
        }
    }
    if first_fragment && is_ipv6_ext(nh) {
        return Err(Stat::Ipv6ExtLimit);
    }
    // The last extension header must end inside the packet, even when nothing after it is read.
    if !pkt.holds(l4, 0) {
        return Err(Stat::TruncatedL3);
    }
    Ok(L3 {
        v6: true,
        client: [
            first_word(client.0),
            second_word(client.0),
            first_word(client.1),
            second_word(client.1),
        ],
        protocol: nh,
        l4_off: l4,
        first_fragment,
    })
}

/// Is this address (the four words of an IPv4-mapped or IPv6 address, network byte order)
/// inside one of the LAN prefixes? One lookup of the `LAN_PREFIXES` array (inlined by the
/// verifier); the set is the one `active` names (see [`sensor_common::LanPrefixSets`]).
///
/// Unrolled, not a loop: the set's size is a map value the verifier does not know, and it
/// cannot prune a state that leaves a loop until every path through the loop is explored, so a
/// loop with an exit per prefix had it verify the rest of the program once per exit (Linux
/// 6.18 gave up at a million instructions). Unrolled, the exits are plain branches that meet.
/// Still, each slot costs the verifier a walk of the rest of the program: it explores only the
/// `LAN_SLOTS` the loader set.
#[inline(always)]
fn in_lan(w: [u32; 4]) -> bool {
    // SAFETY: a read of a static; volatile so the compiler does not fold the zero default.
    let slots = unsafe { core::ptr::read_volatile(&LAN_SLOTS) } as usize;
    let Some(sets) = LAN_PREFIXES.get(0) else { return false };
    // `active` is read once, and the set's address depends on it: the set read is the one it
    // named (the agent writes a set before it names it).
    let set = &sets.sets[(sets.active & 1) as usize];
    let count = set.count as usize;
    macro_rules! check {
        ($($i:literal)*) => {$(
            if $i >= slots {
                return false;
            }
            if $i >= count {
                return false;
            }
            let p = &set.prefixes[$i];
            if w[0] & p.mask[0] == p.addr[0]
                && w[1] & p.mask[1] == p.addr[1]
                && w[2] & p.mask[2] == p.addr[2]
                && w[3] & p.mask[3] == p.addr[3]
            {
                return true;
            }
        )*};
    }
    const _: () = assert!(MAX_LAN_PREFIXES == 16, "one check! per prefix slot");
    check!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
    false
}
