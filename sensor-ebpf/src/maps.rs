//! Every map and loader-set global of the programs, in one place. The agent finds them by name
//! in the object: the maps by their `#[map(name = ...)]`, the globals (written with
//! `EbpfLoader::override_global`) by their unmangled symbol. Renaming one breaks the loader.

use aya_ebpf::{
    macros::map,
    maps::{
        Array, HashMap, LruHashMap, LruPerCpuHashMap, PerCpuArray, ProgramArray, Queue, RingBuf,
    },
};
use sensor_common::{
    ClientKey, Counters, DEFAULT_CLIENT_CAPACITY, DEFAULT_FLOW_CAPACITY, EVENT_RING_BYTES,
    EVENT_STATS_LEN, FlowKey, FlowValue, HELLO_TAILS_CAPACITY, HelloTail, LanPrefixSets,
    PendingEvent, RateWindow, STATS_LEN,
};

/// Per-flow counters, and the flow's client slot. LRU so that memory stays bounded whatever the
/// traffic; the per-client totals below keep every count even when a flow is evicted. The one
/// hash lookup of a known flow's packet.
#[map(name = "FLOWS")]
pub(crate) static FLOWS: LruPerCpuHashMap<FlowKey, FlowValue> =
    LruPerCpuHashMap::with_max_entries(DEFAULT_FLOW_CAPACITY, 0);

/// Client MAC → slot in `CLIENT_TOTALS`. Read only for the first packet of a flow (on a CPU);
/// written only when a new client gets a slot (and by the agent when it retires one).
#[map(name = "CLIENT_SLOTS")]
pub(crate) static CLIENT_SLOTS: HashMap<ClientKey, u32> =
    HashMap::with_max_entries(DEFAULT_CLIENT_CAPACITY, 0);

/// Per-client totals by slot: an array (the kernel inlines the lookup), never evicted. When
/// every slot is held, new clients are counted in the `client_table_full` stat instead of
/// displacing others. Its size is the client capacity (set by the loader).
#[map(name = "CLIENT_TOTALS")]
pub(crate) static CLIENT_TOTALS: PerCpuArray<Counters> =
    PerCpuArray::with_max_entries(DEFAULT_CLIENT_CAPACITY, 0);

/// Slots of retired clients, zeroed and pushed by the agent; popped before a new slot is used.
#[map(name = "FREE_SLOTS")]
pub(crate) static FREE_SLOTS: Queue<u32> = Queue::with_max_entries(DEFAULT_CLIENT_CAPACITY, 0);

/// Slot 0: how many slots were ever handed out (the next never-used slot).
#[map(name = "NEXT_SLOT")]
pub(crate) static NEXT_SLOT: Array<u64> = Array::with_max_entries(1, 0);

/// Per CPU: the last reading of the coarse clock and the jiffies it was taken at (see
/// [`coarse_now`](crate::account::coarse_now)).
#[map(name = "CLOCK")]
pub(crate) static CLOCK: PerCpuArray<ClockReading> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
pub(crate) struct ClockReading {
    pub(crate) jiffies: u64,
    pub(crate) ns: u64,
}

/// Packet outcomes by direction: slot `Stat::slot(direction)`. The `seen` slots stay 0 (the
/// agent sums the outcomes).
#[map(name = "STATS")]
pub(crate) static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STATS_LEN, 0);

/// Payload starts that name a destination (DNS answers, TLS ClientHellos, HTTP requests),
/// for the agent to parse. Bounded twice: the ring's size and a per-second ceiling.
#[map(name = "EVENTS")]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(EVENT_RING_BYTES, 0);

/// Events by kind and outcome: slot `EventOutcome::slot(kind)`.
#[map(name = "EVENT_STATS")]
pub(crate) static EVENT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(EVENT_STATS_LEN, 0);

/// The current one-second window of the event rate limit, per CPU.
#[map(name = "EVENT_RATE")]
pub(crate) static EVENT_RATE: PerCpuArray<RateWindow> = PerCpuArray::with_max_entries(1, 0);

/// Each client's one-second window of naming events, per CPU, by client slot (sized like
/// `CLIENT_TOTALS` by the loader): a client gets at most half of [`EVENTS_PER_SEC_PER_CPU`],
/// so one device cannot use up the naming budget of the others.
#[map(name = "EVENT_CLIENT_RATE")]
pub(crate) static EVENT_CLIENT_RATE: PerCpuArray<RateWindow> =
    PerCpuArray::with_max_entries(DEFAULT_CLIENT_CAPACITY, 0);

/// The staged event, read by the capture program the staging program tail-calls: slot
/// [`XDP_PENDING`] for XDP's, [`TC_PENDING`] for the TC programs'.
#[map(name = "EVENT_PENDING")]
pub(crate) static EVENT_PENDING: PerCpuArray<PendingEvent> = PerCpuArray::with_max_entries(2, 0);
pub(crate) const XDP_PENDING: u32 = 0;
pub(crate) const TC_PENDING: u32 = 1;

/// Slot 0: the XDP capture program (set by the loader).
#[map(name = "EVENT_TAIL")]
pub(crate) static EVENT_TAIL: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Slot 0: the TC capture program (set by the loader). Tail calls stay within a program type,
/// so TC has its own array.
#[map(name = "TC_EVENT_TAIL")]
pub(crate) static TC_EVENT_TAIL: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// ClientHellos followed into their later segments (see [`HelloTail`]). Shared by the CPUs:
/// a flow's segments need not arrive on the CPU its first one did. LRU, so a flow that ends
/// before its ClientHello does leaves no entry behind for long.
#[map(name = "HELLO_TAILS")]
pub(crate) static HELLO_TAILS: LruHashMap<FlowKey, HelloTail> =
    LruHashMap::with_max_entries(HELLO_TAILS_CAPACITY, 0);

/// Events allowed per second on each CPU (set by the loader; 0 disables events).
#[unsafe(no_mangle)]
pub(crate) static EVENTS_PER_SEC_PER_CPU: u32 = 0;

/// Slot 0: the LAN prefixes (client addresses), written by the agent at load and whenever the
/// interface's prefixes change (a rotated IPv6 delegation). An array: the verifier inlines the
/// lookup of slot 0, one per packet.
#[map(name = "LAN_PREFIXES")]
pub(crate) static LAN_PREFIXES: Array<LanPrefixSets> = Array::with_max_entries(1, 0);

/// How many of `LAN_PREFIXES`'s slots the programs check, set by the loader (the prefixes at
/// load and one spare, for a rotation that adds the new prefix before it removes the old):
/// a constant to the verifier, which then explores only those slots. More made Linux 6.1's
/// verifier give up on the TC program with naming events on.
#[unsafe(no_mangle)]
pub(crate) static LAN_SLOTS: u32 = 0;
