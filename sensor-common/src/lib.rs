//! Types shared by the kernel programs (`sensor-ebpf`) and the agent (`sensor`).
//!
//! Every type here is `#[repr(C)]` with explicit padding fields, so that the bytes the kernel
//! hashes for a map key are exactly the bytes userspace builds: implicit padding would be
//! uninitialised stack memory on the BPF side and make equal keys hash differently.
#![cfg_attr(not(test), no_std)]

/// Names of the maps and globals in the eBPF object, so both sides spell them once.
pub mod names {
    pub const FLOWS: &str = "FLOWS";
    pub const CLIENT_SLOTS: &str = "CLIENT_SLOTS";
    pub const CLIENT_TOTALS: &str = "CLIENT_TOTALS";
    pub const FREE_SLOTS: &str = "FREE_SLOTS";
    pub const NEXT_SLOT: &str = "NEXT_SLOT";
    pub const STATS: &str = "STATS";
    pub const EVENTS: &str = "EVENTS";
    pub const EVENT_STATS: &str = "EVENT_STATS";
    pub const EVENT_RATE: &str = "EVENT_RATE";
    pub const EVENT_CLIENT_RATE: &str = "EVENT_CLIENT_RATE";
    pub const EVENT_PENDING: &str = "EVENT_PENDING";
    pub const EVENT_TAIL: &str = "EVENT_TAIL";
    pub const HELLO_TAILS: &str = "HELLO_TAILS";
    pub const TC_EVENT_TAIL: &str = "TC_EVENT_TAIL";
    /// XDP program that copies a staged event's payload (tail-called by the XDP program).
    pub const XDP_CAPTURE_PROGRAM: &str = "gwsensor_xdp_capture";
    pub const TC_CAPTURE_PROGRAM: &str = "gwsensor_tc_capture";
    pub const EVENTS_PER_SEC_PER_CPU: &str = "EVENTS_PER_SEC_PER_CPU";
    pub const LAN_PREFIXES: &str = "LAN_PREFIXES";
    /// Global: how many prefix slots the programs check (see `LAN_SLOTS` in sensor-ebpf).
    pub const LAN_SLOTS: &str = "LAN_SLOTS";
    pub const XDP_PROGRAM: &str = "gwsensor_xdp";
    pub const TC_PROGRAM: &str = "gwsensor_tc";
    /// TC ingress: uploads where the interface has no native XDP (a bridge).
    pub const TC_INGRESS_PROGRAM: &str = "gwsensor_tc_ingress";
    /// A program that only returns XDP_PASS: the baseline of `cargo xtask bench`.
    pub const XDP_PASS_PROGRAM: &str = "gwsensor_xdp_pass";
    /// The benchmarks' floor (a separate, bench-only object: sensor-ebpf's `sensor-floor`
    /// binary): the least XDP program that counts the flow key.
    pub const FLOOR_PROGRAM: &str = "gwsensor_floor";
    /// Its one map: an LRU per-CPU hash of `FlowKey` → [packets, bytes].
    pub const FLOOR_FLOWS: &str = "FLOOR_FLOWS";
}

/// Default capacity of the flow LRU map.
pub const DEFAULT_FLOW_CAPACITY: u32 = 65_536;
/// Default number of client slots (entries of `CLIENT_SLOTS` and `CLIENT_TOTALS`; a slot is
/// never taken from a client that holds one, so totals are never evicted).
pub const DEFAULT_CLIENT_CAPACITY: u32 = 4_096;
/// Most LAN prefixes (IPv4 and IPv6 together) the kernel program checks.
pub const MAX_LAN_PREFIXES: usize = 16;
/// Most VLAN tags (802.1Q / 802.1ad) the parser walks before giving up.
pub const MAX_VLAN_TAGS: usize = 2;
/// Most IPv6 extension headers the parser walks before giving up.
pub const MAX_IPV6_EXT_HEADERS: usize = 8;

/// Direction of a packet, seen from the LAN client.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Client to anywhere: seen by XDP on the LAN interface's ingress.
    Upload = 0,
    /// Anywhere to client: seen by TC on the LAN interface's egress.
    Download = 1,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Upload, Direction::Download];

    pub const fn index(self) -> usize {
        self as usize
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Upload => "upload",
            Direction::Download => "download",
        }
    }
}

/// One flow: a client (MAC + IP) talking to one remote endpoint.
///
/// IPv4 addresses are stored IPv4-mapped (`::ffff:a.b.c.d`) so that one key type serves both
/// families. `remote_port` is in host byte order and 0 where there is no port (ICMP, other
/// protocols, non-first fragments).
///
/// 8-byte aligned and padded to 48 bytes so that the kernel builds it with 8-byte (and a few
/// narrower, aligned) stores instead of byte by byte; the kernel hashes 48 bytes as quickly as
/// 44 (jhash mixes 12-byte blocks). The 44 meaningful bytes are the fields before `_pad`.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct FlowKey {
    pub client_ip: [u8; 16],
    pub remote_ip: [u8; 16],
    pub client_mac: [u8; 6],
    pub remote_port: u16,
    pub protocol: u8,
    pub _pad: [u8; 7],
}

/// A client, identified by its MAC only: one device, whatever addresses it uses.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ClientKey {
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// Packet and byte counters by direction (indexed by [`Direction::index`]), with first and
/// last time seen (`bpf_ktime_get_coarse_ns`, CLOCK_MONOTONIC at tick resolution; the kernel
/// reads it once per tick and CPU). Used per CPU for both flows and
/// client totals (`CLIENT_TOTALS`, indexed by client slot); userspace sums the CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counters {
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
}

/// The `FLOWS` value: the flow's counters and its client's slot in `CLIENT_TOTALS`, so that a
/// packet of a known flow adds to its client's totals without a second hash lookup.
///
/// Per CPU, like the counters: `client_slot` is the slot + 1, 0 until this CPU's copy learned
/// it (a per-CPU hash entry inserted on one CPU starts zeroed on the others).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowValue {
    pub counters: Counters,
    pub client_slot: u32,
    pub _pad: u32,
}

impl FlowValue {
    /// The client slot this CPU's copy knows, if any.
    pub const fn slot(&self) -> Option<u32> {
        self.client_slot.checked_sub(1)
    }
}

impl Counters {
    /// Adds another CPU's share: counts add up, first/last seen take the extremes
    /// (0 means "never" on a CPU that did not see the flow).
    pub fn merge(&mut self, other: &Counters) {
        for d in 0..2 {
            self.packets[d] += other.packets[d];
            self.bytes[d] += other.bytes[d];
        }
        if other.first_seen_ns != 0
            && (self.first_seen_ns == 0 || other.first_seen_ns < self.first_seen_ns)
        {
            self.first_seen_ns = other.first_seen_ns;
        }
        if other.last_seen_ns > self.last_seen_ns {
            self.last_seen_ns = other.last_seen_ns;
        }
    }
}

/// Bytes on the wire of a packet of `len` bytes (an skb: linear and paged data, with its
/// headers once) that leaves as `segs` frames (a GSO skb: its segments; otherwise 1). Each frame
/// after the first carries its own copy of the `header_len` bytes of headers (Ethernet to L4),
/// and every frame carries `per_frame` bytes that the packet holds as metadata (an 802.1Q tag
/// offloaded to the skb, 4 bytes).
pub const fn wire_bytes(len: u64, segs: u32, header_len: u64, per_frame: u64) -> u64 {
    let segs = if segs > 1 { segs as u64 } else { 1 };
    len + (segs - 1) * header_len + segs * per_frame
}

/// Frames a packet leaves as. An skb with `gso_size` set is a GSO packet: `gso_segs` frames
/// when the kernel counted them, else (a packet from a packet socket or tap/tun with a
/// virtio_net_hdr, whose `gso_segs` stays 0 until the kernel segments it) as many as its
/// payload (`len` minus the `header_len` bytes of headers) fills at `gso_size` bytes each,
/// which is what segmentation makes of it. Anything else is one frame.
pub const fn wire_frames(len: u64, header_len: u64, gso_segs: u32, gso_size: u32) -> u32 {
    if gso_segs > 1 {
        return gso_segs;
    }
    if gso_size == 0 || gso_segs == 1 || len <= header_len {
        return 1;
    }
    let frames = (len - header_len).div_ceil(gso_size as u64);
    if frames > u32::MAX as u64 { u32::MAX } else { frames as u32 }
}

/// The deepest a header the parser reads can end: Ethernet, [`MAX_VLAN_TAGS`] tags, an IPv6
/// header, [`MAX_IPV6_EXT_HEADERS`] extension headers of the largest size (2,048 bytes: a
/// length byte of 255 in 8-byte units), a TCP header with the most options (60). TC makes this
/// much of the packet linear (or the whole packet, if shorter) when an IPv6 extension header
/// follows the IPv6 header, so that the walk never stops at the end of the linear area.
pub const MAX_HEADER_DEPTH: u32 =
    14 + 4 * MAX_VLAN_TAGS as u32 + 40 + 2048 * MAX_IPV6_EXT_HEADERS as u32 + 60;

/// One LAN prefix, IPv4-mapped like [`FlowKey`] addresses, as four 32-bit words in network
/// byte order (the kernel compares `ip & mask == addr` word by word).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LanPrefix {
    pub addr: [u32; 4],
    pub mask: [u32; 4],
}

/// One set of LAN prefixes: the first `count` of `prefixes`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LanPrefixes {
    pub count: u32,
    pub _pad: u32,
    pub prefixes: [LanPrefix; MAX_LAN_PREFIXES],
}

/// The one value of the `LAN_PREFIXES` array map: two sets, of which the programs read
/// `sets[active & 1]`. An array map's update copies the value in place, so a program could
/// read a set half written; the agent writes the set nobody reads, then flips `active` (a
/// second update whose only changed byte is `active`'s): a packet sees the old set or the new.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LanPrefixSets {
    pub active: u32,
    pub _pad: u32,
    pub sets: [LanPrefixes; 2],
}

/// What happened to a packet. The STATS per-CPU array has `2 * Stat::COUNT` slots:
/// `direction * Stat::COUNT + stat`; the kernel counts the outcomes, [`Stat::Seen`] is their sum.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stat {
    /// Every packet the program ran on. Not counted by the kernel (its slot stays 0): every
    /// packet gets exactly one of the outcomes below, and the agent sums them.
    Seen = 0,
    /// Counted in the client's totals (and, unless `FlowUpdateFailed`, in its flow).
    Counted,
    /// Not IPv4 or IPv6 (ARP, LLDP, ...).
    NotIp,
    /// IP, but the client side is outside the LAN prefixes or not a unicast MAC.
    NotClient,
    /// Ethernet header or a VLAN tag cut short.
    TruncatedL2,
    /// More VLAN tags than [`MAX_VLAN_TAGS`].
    VlanDepth,
    /// IPv4/IPv6 header (or an IPv6 extension header) cut short.
    TruncatedL3,
    /// IP version field does not match the EtherType, or IPv4 IHL below 5.
    BadL3Header,
    /// More IPv6 extension headers than [`MAX_IPV6_EXT_HEADERS`].
    Ipv6ExtLimit,
    /// TCP or UDP header cut short in a first (or unfragmented) packet.
    TruncatedL4,
    /// Counted in the client totals but the flow map refused the update.
    FlowUpdateFailed,
    /// No client slot left for a new client (all `client_capacity` slots are held): the packet
    /// could not be counted.
    ClientTableFull,
}

impl Stat {
    pub const COUNT: usize = 12;
    pub const ALL: [Stat; Stat::COUNT] = [
        Stat::Seen,
        Stat::Counted,
        Stat::NotIp,
        Stat::NotClient,
        Stat::TruncatedL2,
        Stat::VlanDepth,
        Stat::TruncatedL3,
        Stat::BadL3Header,
        Stat::Ipv6ExtLimit,
        Stat::TruncatedL4,
        Stat::FlowUpdateFailed,
        Stat::ClientTableFull,
    ];

    /// Slot of this stat for a direction in the STATS array.
    pub const fn slot(self, dir: Direction) -> u32 {
        (dir as u32) * (Stat::COUNT as u32) + self as u32
    }

    /// The `reason` label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Stat::Seen => "seen",
            Stat::Counted => "counted",
            Stat::NotIp => "not_ip",
            Stat::NotClient => "not_client",
            Stat::TruncatedL2 => "truncated_l2",
            Stat::VlanDepth => "vlan_depth",
            Stat::TruncatedL3 => "truncated_l3",
            Stat::BadL3Header => "bad_l3_header",
            Stat::Ipv6ExtLimit => "ipv6_ext_limit",
            Stat::TruncatedL4 => "truncated_l4",
            Stat::FlowUpdateFailed => "flow_update_failed",
            Stat::ClientTableFull => "client_table_full",
        }
    }
}

/// Size of the STATS array.
pub const STATS_LEN: u32 = 2 * Stat::COUNT as u32;

/// Bytes of L4 payload an event carries at most: an EDNS answer of 1232 bytes, or a
/// ClientHello that fits one segment, fits.
pub const EVENT_DATA_MAX: usize = 1280;
/// Size of the events ring buffer (a power of two, a multiple of the page size).
pub const EVENT_RING_BYTES: u32 = 256 * 1024;
/// Default ceiling of events per second and CPU (the kernel drops, and counts, the excess).
pub const DEFAULT_EVENTS_PER_SEC_PER_CPU: u32 = 500;

/// What an event carries: the start of a packet payload that names a destination.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A DNS response (from port 53, UDP or TCP) going to a client.
    DnsResponse = 0,
    /// A TLS ClientHello from a client (any TCP port): carries the SNI.
    TlsClientHello = 1,
    /// A plain HTTP request from a client: carries the Host header.
    HttpRequest = 2,
    /// A later segment of a ClientHello that did not fit its first one (a post-quantum key
    /// share makes it ~1.9 kB): `seq` places it in the stream.
    TlsSegment = 3,
    /// A QUIC Initial (v1 or v2) from a client, any UDP port: its CRYPTO frames carry the
    /// ClientHello, protected with keys anyone can derive from the packet.
    QuicInitial = 4,
}
// A payload longer than EVENT_DATA_MAX goes out in several chunks (up to MAX_EVENT_CHUNKS) for
// the ClientHello kinds (TLS, its segments, QUIC): a ClientHello must arrive whole to be read.

impl EventKind {
    pub const COUNT: usize = 5;
    pub const ALL: [EventKind; 5] = [
        EventKind::DnsResponse,
        EventKind::TlsClientHello,
        EventKind::HttpRequest,
        EventKind::TlsSegment,
        EventKind::QuicInitial,
    ];

    pub fn from_u8(v: u8) -> Option<EventKind> {
        EventKind::ALL.get(v as usize).copied()
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            EventKind::DnsResponse => "dns",
            EventKind::TlsClientHello => "tls",
            EventKind::HttpRequest => "http",
            EventKind::TlsSegment => "tls_segment",
            EventKind::QuicInitial => "quic",
        }
    }
}

/// Outcome of an event in the kernel: `EVENT_STATS[kind * EventOutcome::COUNT + outcome]`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventOutcome {
    Sent = 0,
    /// Over the per-second ceiling.
    RateLimited = 1,
    /// The ring buffer was full (userspace too slow).
    RingFull = 2,
}

impl EventOutcome {
    pub const COUNT: usize = 3;
    pub const ALL: [EventOutcome; 3] =
        [EventOutcome::Sent, EventOutcome::RateLimited, EventOutcome::RingFull];

    pub const fn slot(self, kind: EventKind) -> u32 {
        (kind as u32) * (EventOutcome::COUNT as u32) + self as u32
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            EventOutcome::Sent => "sent",
            EventOutcome::RateLimited => "rate_limited",
            EventOutcome::RingFull => "ring_full",
        }
    }
}

pub const EVENT_STATS_LEN: u32 = (EventKind::COUNT * EventOutcome::COUNT) as u32;

/// One event in the ring buffer: which flow it belongs to and the start of its payload.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Event {
    pub key: FlowKey,
    pub kind: u8,
    pub direction: u8,
    /// Bytes of `data` that are valid.
    pub captured: u16,
    /// L4 payload length in the packet (can exceed `captured`).
    pub payload_len: u32,
    pub ktime_ns: u64,
    /// TCP: the segment's sequence number (0 for UDP).
    pub seq: u32,
    /// Where `data` starts in the payload: a multiple of [`EVENT_DATA_MAX`] (a chunk).
    pub chunk_off: u16,
    pub _pad: u16,
    pub data: [u8; EVENT_DATA_MAX],
}

/// An event decided on but not yet copied: staged per CPU by the XDP program for the capture
/// program it tail-calls (the copy loop is verified there, on its own).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PendingEvent {
    pub key: FlowKey,
    pub kind: u8,
    pub direction: u8,
    pub payload_off: u16,
    pub payload_len: u32,
    pub ktime_ns: u64,
    pub seq: u32,
    pub chunk_off: u16,
    pub _pad: u16,
}

/// Chunks of [`EVENT_DATA_MAX`] one packet's payload is handed up in at most (a GRO-merged skb
/// of a ClientHello's segments, a 1,472-byte QUIC datagram).
pub const MAX_EVENT_CHUNKS: usize = 3;

/// A ClientHello the kernel follows into later segments: `HELLO_TAILS[flow]`. Segments whose
/// sequence number lies in `(start_seq, start_seq + len)` are handed up, at most `segments`
/// more of them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct HelloTail {
    pub start_seq: u32,
    pub len: u32,
    pub segments: u32,
    pub _pad: u32,
}

/// The most bytes of a ClientHello followed across segments (a 4 kB one with room to spare).
pub const HELLO_MAX_LEN: u32 = 8192;
/// The most later segments of one ClientHello handed up.
pub const HELLO_MAX_SEGMENTS: u32 = 6;
/// Flows whose ClientHello is being followed at once; the least recent is dropped beyond it.
pub const HELLO_TAILS_CAPACITY: u32 = 1024;

/// Per-CPU window of the event rate limit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RateWindow {
    pub start_ns: u64,
    pub count: u64,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all of these are repr(C), Copy, made of integers and byte arrays with explicit
    // padding fields, so every bit pattern is valid and there are no implicit padding bytes.
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::ClientKey {}
    unsafe impl aya::Pod for super::Counters {}
    unsafe impl aya::Pod for super::FlowValue {}
    unsafe impl aya::Pod for super::LanPrefixes {}
    unsafe impl aya::Pod for super::LanPrefixSets {}
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::PendingEvent {}
    unsafe impl aya::Pod for super::RateWindow {}
    unsafe impl aya::Pod for super::HelloTail {}
}

// Layout is part of the kernel/user contract: a change here must be deliberate.
const _: () = assert!(core::mem::size_of::<FlowKey>() == 48);
const _: () = assert!(core::mem::align_of::<FlowKey>() == 8);
const _: () = assert!(core::mem::offset_of!(FlowKey, remote_ip) == 16);
const _: () = assert!(core::mem::offset_of!(FlowKey, client_mac) == 32);
const _: () = assert!(core::mem::offset_of!(FlowKey, remote_port) == 38);
const _: () = assert!(core::mem::offset_of!(FlowKey, protocol) == 40);
const _: () = assert!(core::mem::size_of::<ClientKey>() == 8);
const _: () = assert!(core::mem::align_of::<ClientKey>() == 8);
const _: () = assert!(core::mem::size_of::<Counters>() == 48);
const _: () = assert!(core::mem::size_of::<FlowValue>() == 56);
const _: () = assert!(core::mem::size_of::<LanPrefixes>() == 8 + 32 * MAX_LAN_PREFIXES);
const _: () = assert!(core::mem::size_of::<LanPrefixSets>() == 8 + 2 * (8 + 32 * MAX_LAN_PREFIXES));
const _: () =
    assert!(core::mem::size_of::<Event>() == 48 + 1 + 1 + 2 + 4 + 8 + 4 + 2 + 2 + EVENT_DATA_MAX);
const _: () = assert!(core::mem::offset_of!(Event, data).is_multiple_of(8));
const _: () = assert!(core::mem::size_of::<PendingEvent>() == 72);
const _: () = assert!(core::mem::size_of::<HelloTail>() == 16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_bytes_counts_headers_and_offloaded_tags_once_per_frame() {
        // A plain frame, and one whose 802.1Q tag is skb metadata.
        assert_eq!(wire_bytes(1514, 1, 54, 0), 1514);
        assert_eq!(wire_bytes(1514, 1, 54, 4), 1518);
        // gso_segs 0 (not GSO) is one frame.
        assert_eq!(wire_bytes(1514, 0, 54, 4), 1518);
        // TCP GSO: 66 bytes of headers (14 + 20 + 32) and 3 x 1000 bytes of payload in the skb;
        // on the wire 3 frames of 66 + 1000, each with its own 4-byte tag.
        assert_eq!(wire_bytes(66 + 3000, 3, 66, 0), 3 * (66 + 1000));
        assert_eq!(wire_bytes(66 + 3000, 3, 66, 4), 3 * (66 + 1000 + 4));
        // UDP GSO over IPv6 with a short last segment: 62-byte headers, 1000 + 1000 + 500.
        assert_eq!(wire_bytes(62 + 2500, 3, 62, 4), (62 + 1000 + 4) * 2 + (62 + 500 + 4));
    }

    #[test]
    fn wire_frames_trusts_gso_segs_else_divides_the_payload_by_gso_size() {
        // Not GSO.
        assert_eq!(wire_frames(1514, 54, 0, 0), 1);
        // The kernel counted the segments (a local TCP send, a GRO-merged packet).
        assert_eq!(wire_frames(66 + 3000, 66, 3, 1000), 3);
        // A virtio_net_hdr GSO packet: gso_segs 0 until segmentation. 10 segments of 1448 and
        // one of 1 byte; and a payload that is an exact multiple.
        assert_eq!(wire_frames(66 + 14_481, 66, 0, 1448), 11);
        assert_eq!(wire_frames(54 + 14_480, 54, 0, 1448), 10);
        // One segment, or no payload at all: one frame.
        assert_eq!(wire_frames(66 + 100, 66, 1, 1448), 1);
        assert_eq!(wire_frames(66, 66, 0, 1448), 1);
    }
}
