//! What can go wrong between the agent and the kernel: loading and attaching the programs,
//! the pinned maps, reading and retiring from the maps, and the LAN interface.
//!
//! Each variant names what was being done and on which interface, map, file or program, and
//! what to do where the fix is known; the OS or aya error underneath is its `source()`, so that
//! `{:#}` (anyhow at the binary's edge) prints the whole chain.

use std::{io, path::PathBuf};

use aya::{
    EbpfError,
    maps::MapError,
    programs::{ProgramError, tc::TcError},
};
use sensor_common::MAX_LAN_PREFIXES;

use super::bpf_batch::BatchError;

/// What removing pinned maps costs, said with every "remove them" advice.
const RESETS: &str =
    "this resets the kernel counters; the exported counters continue from the state file";

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "Linux {release} is too old: the sensor's eBPF programs need BPF atomic fetch-and-add \
         (BPF_ATOMIC with BPF_FETCH, for the client slot allocator), which Linux has from 5.12"
    )]
    KernelTooOld { release: String },
    #[error("{count} LAN prefixes; at most {MAX_LAN_PREFIXES} are supported")]
    TooManyPrefixes { count: usize },

    #[error(
        "interface {interface} not found (check `interface` in the config; `ip link` lists them)"
    )]
    InterfaceNotFound { interface: String, source: nix::Error },
    #[error("listing interface addresses")]
    ListAddresses { source: nix::Error },
    #[error("interface {interface} has a netmask that is not a prefix")]
    NotAPrefix { interface: String, source: ipnet::PrefixLenError },
    #[error(
        "interface {interface} has no IP addresses, so the LAN prefixes cannot be derived: set \
         `lan_prefixes` in the config (e.g. [192.168.1.0/24, \"fd00::/64\"])"
    )]
    NoAddresses { interface: String },
    #[error("watching the interfaces' address changes (a NETLINK_ROUTE socket)")]
    WatchAddresses { source: io::Error },

    /// `dir` is the parent of the pin directory, which must be on the BPF filesystem.
    #[error(
        "{} does not exist: mount the BPF filesystem with `mount -t bpf bpf /sys/fs/bpf`",
        dir.display()
    )]
    PinParentMissing { dir: PathBuf, source: nix::Error },
    #[error(
        "{} is not on a BPF filesystem, so maps cannot be pinned there: mount one with `mount -t \
         bpf bpf /sys/fs/bpf`, or set `pin_path` below a bpf mount. (Started with `ip netns \
         exec`? It mounts a fresh /sys without the BPF filesystem: use `nsenter \
         --net=/run/netns/NAME` instead.)",
        dir.display()
    )]
    NotBpfFs { dir: PathBuf },
    #[error("creating pin directory {}", dir.display())]
    CreatePinDir { dir: PathBuf, source: io::Error },
    #[error("reading pinned map {}", path.display())]
    ReadPinnedMap { path: PathBuf, source: MapError },
    #[error(
        "{} holds pinned maps {} but not {}: the client slot maps only work as a set; remove \
         them all with `rm -r {}` ({RESETS})",
        dir.display(), present.join(", "), missing.join(", "), dir.display()
    )]
    PartialClientPins { dir: PathBuf, present: Vec<&'static str>, missing: Vec<&'static str> },
    /// `capacities` of the pinned `CLIENT_SLOTS`, `CLIENT_TOTALS` and `FREE_SLOTS`.
    #[error(
        "the pinned client maps in {} disagree on their capacity ({}/{}/{} entries in {}, {}, \
         {}): remove them with `rm -r {}` ({RESETS})",
        dir.display(), capacities[0], capacities[1], capacities[2],
        sensor_common::names::CLIENT_SLOTS, sensor_common::names::CLIENT_TOTALS,
        sensor_common::names::FREE_SLOTS, dir.display()
    )]
    ClientPinCapacities { dir: PathBuf, capacities: [u32; 3] },

    #[error("loading the eBPF object into the kernel")]
    Load(#[source] EbpfError),
    /// `program` is its role, e.g. "XDP capture".
    #[error("{program} program missing from the eBPF object")]
    MissingProgram { program: &'static str },
    #[error("map {map} missing from the eBPF object")]
    MissingMap { map: &'static str },
    /// The program is not of the expected type, or has no fd to hand on.
    #[error("preparing the {program} program")]
    PrepareProgram { program: &'static str, source: ProgramError },
    #[error("opening map {map}")]
    OpenMap { map: &'static str, source: MapError },
    #[error("the kernel verifier rejected the {program} program")]
    Verify { program: &'static str, source: ProgramError },

    /// `mode`: "driver" or "generic".
    #[error(
        "attaching XDP in {mode} mode to {interface} (if another XDP program holds it, `ip link \
         show {interface}` names it; one left by a sensor with another `pin_path` goes with \
         `sensor detach` on that config)"
    )]
    AttachXdp { mode: &'static str, interface: String, source: ProgramError },
    /// `side`: "egress" or "ingress".
    #[error(
        "attaching TC {side} with TCX to {interface} (needs kernel 6.6+; try `tc_attach: netlink`)"
    )]
    AttachTcx { side: &'static str, interface: String, source: ProgramError },
    /// A link pinned below `<pin_path>/links/`.
    #[error("{doing} {}", path.display())]
    PinnedLink { doing: &'static str, path: PathBuf, source: io::Error },
    #[error("removing the clsact {side} filter from {interface}")]
    RemoveTcFilter { side: &'static str, interface: String, source: TcError },
    #[error("adding a clsact qdisc to {interface}")]
    AddClsact { interface: String, source: TcError },
    #[error("attaching the TC {side} filter to {interface}")]
    AttachTc { side: &'static str, interface: String, source: ProgramError },

    #[error("reading the possible CPUs from {file}")]
    PossibleCpus { file: &'static str, source: io::Error },
    /// A batch read (`BPF_MAP_LOOKUP_BATCH`) that failed on a kernel that has it; `map` is
    /// e.g. "flow".
    #[error("reading the {map} map")]
    BatchRead { map: &'static str, source: BatchError },
    /// A map operation, `doing` what, e.g. "reading the stats map".
    #[error("{doing}")]
    Map { doing: &'static str, source: MapError },
    #[error("scanning the flow map for a retired client's flows")]
    RetireScan { source: Box<KernelError> },
    #[error("watching the events ring buffer")]
    WatchEvents { source: io::Error },
    /// The capture of clients' DHCP requests (device fingerprints; `inventory.dhcp_fingerprint`
    /// turns it off).
    #[error(
        "DHCP capture on {interface}: {doing} (needs CAP_NET_RAW and the AF_PACKET address \
         family; `inventory.dhcp_fingerprint: false` turns the capture off)"
    )]
    DhcpCapture { doing: &'static str, interface: String, source: io::Error },
}

impl KernelError {
    /// A map operation's error, for `map_err`.
    pub(crate) fn map(doing: &'static str) -> impl FnOnce(MapError) -> KernelError {
        move |source| KernelError::Map { doing, source }
    }
}
