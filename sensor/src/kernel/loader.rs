//! Puts the embedded eBPF programs into the kernel: sets the LAN prefixes and map capacities,
//! reuses pinned maps so counts survive restarts, and attaches XDP (upload) and TC (download)
//! to the LAN interface.

use std::path::Path;

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapInfo, ProgramArray},
    programs::{
        LinkOrder, Program, ProgramError, SchedClassifier, TcAttachType, Xdp,
        links::FdLink,
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions},
        xdp::{XdpLink, XdpMode as AyaXdpMode},
    },
};
use ipnet::IpNet;
use sensor_common::{
    ClientKey, Counters, FlowKey, FlowValue, LanPrefixSets, MAX_LAN_PREFIXES, STATS_LEN, names,
};
use serde::Deserialize;
use tracing::{info, warn};

use super::{
    error::KernelError,
    lan_prefixes::{self, LanPrefixMap},
    links::{self, Hook, LinkPins},
    netif,
};

/// The eBPF object built by build.rs, embedded so the agent is one self-contained binary.
pub fn ebpf_object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sensor-ebpf"))
}

/// The benchmarks' floor (sensor-ebpf's bench-only `sensor-floor` binary): the least XDP
/// program that counts the flow key, one LRU per-CPU hash and nothing else. A separate object
/// that the agent never loads (aya creates every map of an object it loads).
pub fn floor_object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sensor-floor"))
}

/// Loads the floor object privately (no BTF, nothing pinned) and verifies its program, for
/// test runs or to attach it; its program is `names::FLOOR_PROGRAM`.
pub fn load_floor() -> Result<Ebpf, KernelError> {
    let mut ebpf = EbpfLoader::new().btf(None).load(floor_object()).map_err(KernelError::Load)?;
    verified::<Xdp>(&mut ebpf, names::FLOOR_PROGRAM, "XDP floor")?;
    Ok(ebpf)
}

/// Attaches the floor program that [`load_floor`] loaded to `iface` in driver (native) XDP mode; the attachment
/// lasts as long as `ebpf`.
pub fn attach_floor(ebpf: &mut Ebpf, iface: &str) -> Result<(), KernelError> {
    const ROLE: &str = "XDP floor";
    // Already verified (loaded) by `load_floor`.
    let prog: &mut Xdp = ebpf
        .program_mut(names::FLOOR_PROGRAM)
        .ok_or(KernelError::MissingProgram { program: ROLE })?
        .try_into()
        .map_err(|source| KernelError::PrepareProgram { program: ROLE, source })?;
    prog.attach(iface, AyaXdpMode::Driver).map(|_| ()).map_err(|source| KernelError::AttachXdp {
        mode: "driver",
        interface: iface.into(),
        source,
    })
}

/// What to load. `pin_dir: None` keeps the maps private to this process (tests, benchmarks).
pub struct LoadOptions<'a> {
    pub lan_prefixes: &'a [IpNet],
    pub flow_capacity: u32,
    pub client_capacity: u32,
    pub pin_dir: Option<&'a Path>,
    /// Use the kernel's BTF when it has one. Off proves the programs need none (old routers).
    pub kernel_btf: bool,
}

/// Map capacities as the kernel has them (a pinned map keeps the capacity it was made with).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacities {
    pub flows: u32,
    /// Client slots: the size of `CLIENT_SLOTS`, `CLIENT_TOTALS` and `FREE_SLOTS`.
    pub clients: u32,
}

/// Which pinned maps the load reused (their counts go on) rather than made anew (their counts
/// start from zero: the first load after a reboot, or after the pins were removed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeptMaps {
    pub flows: bool,
    /// The client slot maps, with the client totals (all or none: see `CLIENT_SLOT_MAPS`).
    pub clients: bool,
    pub stats: bool,
}

/// What a load found and made.
#[derive(Debug, Clone, Copy)]
pub struct Loaded {
    pub capacities: Capacities,
    pub kept: KeptMaps,
    /// How many LAN prefixes the programs check (until the next load).
    pub lan_slots: usize,
}

/// Prefix slots the programs check beyond the prefixes at load: room for prefixes that follow
/// the interface to grow (a rotation that adds the new prefix before it removes the old).
/// Each slot costs the verifier a walk of the rest of the program: Linux 6.1 refused the TC
/// program (naming events on) with 4 spare; with 1, 2 prefixes cost less than the 2 of the
/// read-only global before (Linux 6.18: 430,179 instructions verified, against 442,175).
pub const SPARE_LAN_SLOTS: usize = 1;

/// The maps that hand out client slots: pinned together or not at all, since a slot is only
/// meaningful with all of them (a fresh `NEXT_SLOT` beside old `CLIENT_SLOTS` would hand out
/// slots that are taken).
const CLIENT_SLOT_MAPS: [&str; 4] =
    [names::CLIENT_SLOTS, names::CLIENT_TOTALS, names::FREE_SLOTS, names::NEXT_SLOT];

/// Every map the agent pins (what `sensor detach --maps` removes). `LAN_PREFIXES` is rewritten
/// at every load: pinned so that a layout change of it is replaced like the others'.
pub const PINNED_MAPS: [&str; 7] = [
    names::FLOWS,
    names::STATS,
    names::CLIENT_SLOTS,
    names::CLIENT_TOTALS,
    names::FREE_SLOTS,
    names::NEXT_SLOT,
    names::LAN_PREFIXES,
];

/// `sensor detach --maps`: unpins the maps in `pin_dir` (the kernel counters; the exported
/// counters continue from the state file), after [`links::detach`], and removes the directory
/// when nothing else is pinned there. Returns what it did, a line each.
pub fn unpin_maps(pin_dir: &Path) -> Result<Vec<String>, KernelError> {
    let mut done = Vec::new();
    for name in PINNED_MAPS {
        let path = pin_dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => done.push(format!("unpinned map {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(KernelError::PinnedLink { doing: "unpinning map", path, source });
            }
        }
    }
    if pin_dir.join(STAGED_DIR).exists() {
        remove_staged(pin_dir)?;
        done.push(format!("removed {}", pin_dir.join(STAGED_DIR).display()));
    }
    // Not empty: something else of the operator's is pinned there; leave it.
    if std::fs::remove_dir(pin_dir).is_ok() {
        done.push(format!("removed {}", pin_dir.display()));
    }
    Ok(done)
}

/// Loads the object with naming events off (programs are not yet verified; see [`attach`]).
pub fn load(opts: &LoadOptions) -> Result<(Ebpf, Loaded), KernelError> {
    load_with_events(opts, 0)
}

/// Loads the object with naming events (DNS answers, TLS ClientHellos, HTTP requests) allowed
/// up to `events_per_sec_per_cpu` per second on each CPU.
pub fn load_with_events(
    opts: &LoadOptions,
    events_per_sec_per_cpu: u32,
) -> Result<(Ebpf, Loaded), KernelError> {
    check_kernel_release()?;
    // Refused before any map is made; written once the object is loaded.
    lan_prefixes::encode(opts.lan_prefixes)?;
    let mut capacities = Capacities { flows: opts.flow_capacity, clients: opts.client_capacity };
    let mut loader = EbpfLoader::new();
    if !opts.kernel_btf {
        loader.btf(None);
    }
    let lan_slots = (opts.lan_prefixes.len() + SPARE_LAN_SLOTS).min(MAX_LAN_PREFIXES);
    let lan_slots_global = lan_slots as u32;
    loader
        .override_global(names::EVENTS_PER_SEC_PER_CPU, &events_per_sec_per_cpu, true)
        .override_global(names::LAN_SLOTS, &lan_slots_global, true);
    let mut kept = KeptMaps::default();
    let mut pin_paths: Vec<std::path::PathBuf> = Vec::new();
    if let Some(dir) = opts.pin_dir {
        prepare_pin_dir(dir)?;
        let changed = layout_changes(dir)?;
        // Left by a replacement that did not finish (a crash between load and attach): made
        // anew below if this load replaces again, never adopted.
        remove_staged(dir)?;
        if changed.is_empty() {
            kept = keep_pinned(dir, &mut capacities)?;
            pin_paths = PINNED_MAPS.iter().map(|name| dir.join(name)).collect();
        } else {
            // Another build's maps: this build's programs cannot use them, and their counts
            // since that build's last state save cannot be read. Fresh maps, pinned aside
            // until `attach_pinned` has swapped the programs in (the hooks are never empty).
            warn!(
                pin_dir = %dir.display(),
                "the pinned maps have another layout ({}): a build with another map layout \
                 ran before; this one replaces them with new maps once its programs are \
                 swapped in (what the old programs counted since the last state save is lost)",
                changed.iter().map(LayoutChange::to_string).collect::<Vec<_>>().join("; ")
            );
            let staged = dir.join(STAGED_DIR);
            std::fs::create_dir_all(&staged)
                .map_err(|source| KernelError::CreatePinDir { dir: staged.clone(), source })?;
            pin_paths = PINNED_MAPS.iter().map(|name| staged.join(name)).collect();
        }
        for (name, path) in PINNED_MAPS.iter().zip(&pin_paths) {
            loader.map_pin_path(name, path.as_path());
        }
    }
    // After the pin checks, so that a map created beside pinned ones gets their capacity.
    loader
        .map_max_entries(names::FLOWS, capacities.flows)
        .map_max_entries(names::CLIENT_SLOTS, capacities.clients)
        .map_max_entries(names::CLIENT_TOTALS, capacities.clients)
        .map_max_entries(names::FREE_SLOTS, capacities.clients)
        .map_max_entries(names::EVENT_CLIENT_RATE, capacities.clients);
    // Which pins are there before: a load that fails part-way (the kernel refuses a map) must
    // not leave the ones it made, or the next start finds a partial set and refuses it.
    let existed: Vec<bool> = pin_paths.iter().map(|p| p.exists()).collect();
    let mut ebpf = loader.load(ebpf_object()).map_err(|e| {
        for (path, existed) in pin_paths.iter().zip(existed) {
            if !existed
                && path.exists()
                && let Err(err) = std::fs::remove_file(path)
            {
                warn!("removing {} after the failed load: {err}", path.display());
            }
        }
        KernelError::Load(e)
    })?;
    // A kept map may be read by the programs of the agent before: swapped, not overwritten.
    LanPrefixMap::borrow(&mut ebpf)?.set(opts.lan_prefixes)?;
    Ok((ebpf, Loaded { capacities, kept, lan_slots }))
}

/// The oldest kernel the programs load on: the client slot allocator takes slots with an
/// atomic fetch-and-add, which the verifier accepts from 5.12. Refused here with one line,
/// before the verifier would refuse with a page of instructions.
pub const MIN_KERNEL: (u32, u32) = (5, 12);

fn check_kernel_release() -> Result<(), KernelError> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim().to_owned();
    match release_version(&release) {
        Some(v) if v < MIN_KERNEL => Err(KernelError::KernelTooOld { release }),
        // Unparsable: let the verifier decide.
        _ => Ok(()),
    }
}

/// (major, minor) of a release string such as `5.10.0-35-amd64`.
fn release_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The client-slot maps must all be pinned or none: refuses a partial set (an interrupted
/// cleanup, say) rather than hand out slots that clients already hold.
fn check_client_slot_pins(dir: &Path) -> Result<(), KernelError> {
    let (present, missing): (Vec<&'static str>, Vec<&'static str>) =
        CLIENT_SLOT_MAPS.iter().copied().partition(|name| dir.join(name).exists());
    if !present.is_empty() && !missing.is_empty() {
        return Err(KernelError::PartialClientPins { dir: dir.into(), present, missing });
    }
    Ok(())
}

/// The pin directory must be on a BPF filesystem, or pinning fails with an obscure error.
fn prepare_pin_dir(dir: &Path) -> Result<(), KernelError> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let parent = dir.parent().unwrap_or(dir);
    let fs = nix::sys::statfs::statfs(parent)
        .map_err(|source| KernelError::PinParentMissing { dir: parent.into(), source })?;
    // f_type is an i32 on 32-bit routers and an i64 elsewhere.
    #[allow(clippy::unnecessary_cast)]
    let fs_type = fs.filesystem_type().0 as i64;
    if fs_type != BPF_FS_MAGIC {
        return Err(KernelError::NotBpfFs { dir: parent.into() });
    }
    std::fs::create_dir_all(dir)
        .map_err(|source| KernelError::CreatePinDir { dir: dir.into(), source })
}

/// The maps' layouts in this build: type, key and value sizes, and the entries of the maps
/// whose size is part of the layout (a new stat slot grows `STATS`). A pinned map that
/// differs in any of them belongs to another build.
fn layouts() -> [MapLayout; 7] {
    use aya::maps::MapType as T;
    let sized = |name, kind, k: usize, v: usize, entries| MapLayout {
        name,
        kind: kind as u32,
        sizes: (k as u32, v as u32),
        entries,
    };
    [
        sized(names::FLOWS, T::LruPerCpuHash, size_of::<FlowKey>(), size_of::<FlowValue>(), None),
        sized(names::STATS, T::PerCpuArray, 4, 8, Some(STATS_LEN)),
        sized(names::CLIENT_SLOTS, T::Hash, size_of::<ClientKey>(), 4, None),
        sized(names::CLIENT_TOTALS, T::PerCpuArray, 4, size_of::<Counters>(), None),
        sized(names::FREE_SLOTS, T::Queue, 0, 4, None),
        sized(names::NEXT_SLOT, T::Array, 4, 8, Some(1)),
        sized(names::LAN_PREFIXES, T::Array, 4, size_of::<LanPrefixSets>(), Some(1)),
    ]
}

/// What a pinned map must be for this build to use it.
#[derive(Debug, Clone, Copy)]
struct MapLayout {
    name: &'static str,
    /// `bpf_map_type`.
    kind: u32,
    /// Key and value sizes.
    sizes: (u32, u32),
    /// Entries, where they are part of the layout rather than a capacity.
    entries: Option<u32>,
}

/// A pinned map that another build made.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LayoutChange {
    name: &'static str,
    found: String,
    expected: String,
}

impl std::fmt::Display for LayoutChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is {}, this build's is {}", self.name, self.found, self.expected)
    }
}

impl MapLayout {
    /// `type T, key/value K/V[, N entries]`, as a log line says it.
    fn describe(kind: u32, sizes: (u32, u32), entries: Option<u32>) -> String {
        let n = entries.map(|n| format!(", {n} entries")).unwrap_or_default();
        format!("type {kind}, key/value {}/{}{n}", sizes.0, sizes.1)
    }

    /// `None` when the pinned map `info` is of this layout.
    fn change(&self, info: &MapInfo) -> Option<LayoutChange> {
        let kind = info.map_type().map(|t| t as u32).unwrap_or(u32::MAX);
        let sizes = (info.key_size(), info.value_size());
        let entries = self.entries.map(|_| info.max_entries());
        if (kind, sizes, entries) == (self.kind, self.sizes, self.entries) {
            return None;
        }
        Some(LayoutChange {
            name: self.name,
            found: Self::describe(kind, sizes, entries),
            expected: Self::describe(self.kind, self.sizes, self.entries),
        })
    }
}

/// The pinned maps in `dir` that this build cannot use as they are.
fn layout_changes(dir: &Path) -> Result<Vec<LayoutChange>, KernelError> {
    let mut changes = Vec::new();
    for layout in layouts() {
        if let Some(info) = pinned_info(&dir.join(layout.name))? {
            changes.extend(layout.change(&info));
        }
    }
    Ok(changes)
}

fn pinned_info(path: &Path) -> Result<Option<MapInfo>, KernelError> {
    match MapInfo::from_pin(path) {
        Ok(info) => Ok(Some(info)),
        Err(_) if !path.exists() => Ok(None),
        Err(source) => Err(KernelError::ReadPinnedMap { path: path.into(), source }),
    }
}

/// Pinned maps of this build's layout are used as they are: their counts go on, and their
/// capacities win over the config (resizing means new maps, losing the kernel's counts).
fn keep_pinned(dir: &Path, capacities: &mut Capacities) -> Result<KeptMaps, KernelError> {
    let pin = |name: &str| dir.join(name);
    check_client_slot_pins(dir)?;
    keep_capacity(&pin(names::FLOWS), &mut capacities.flows)?;
    // One capacity for the three client maps: pinned ones keep theirs, and must agree.
    let mut client = [capacities.clients; 3];
    keep_capacity(&pin(names::CLIENT_SLOTS), &mut client[0])?;
    keep_capacity(&pin(names::CLIENT_TOTALS), &mut client[1])?;
    keep_capacity(&pin(names::FREE_SLOTS), &mut client[2])?;
    if client[1..].iter().any(|c| *c != client[0]) {
        return Err(KernelError::ClientPinCapacities { dir: dir.into(), capacities: client });
    }
    capacities.clients = client[0];
    Ok(KeptMaps {
        flows: pin(names::FLOWS).exists(),
        clients: pin(names::CLIENT_TOTALS).exists(),
        stats: pin(names::STATS).exists(),
    })
}

/// A pinned map keeps its capacity, with a warning when the config asks for another.
fn keep_capacity(path: &Path, capacity: &mut u32) -> Result<(), KernelError> {
    let Some(info) = pinned_info(path)? else { return Ok(()) };
    if info.max_entries() != *capacity {
        warn!(
            pinned = info.max_entries(),
            configured = *capacity,
            "pinned map {} keeps its capacity; to resize, stop the agent and remove {} (resets \
             kernel counters; exported counters continue from the state file)",
            path.display(),
            path.display()
        );
        *capacity = info.max_entries();
    }
    Ok(())
}

/// Below the pin directory: a replacement's new maps, until its programs are attached.
pub const STAGED_DIR: &str = "replacing";

/// Removes what an unfinished replacement staged (and the directory).
fn remove_staged(dir: &Path) -> Result<(), KernelError> {
    let staged = dir.join(STAGED_DIR);
    match std::fs::remove_dir_all(&staged) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(KernelError::PinnedLink {
            doing: "removing an unfinished replacement's maps",
            path: staged,
            source,
        }),
    }
}

/// Ends a replacement (a load that found another build's maps): once this load's programs
/// are on the hooks, its maps take the old pins' names, one atomic rename each, and the old
/// maps go when nothing holds them. Nothing to do after a load that used the pins.
pub fn finish_replacement(dir: &Path) -> Result<Vec<&'static str>, KernelError> {
    let staged = dir.join(STAGED_DIR);
    let mut moved = Vec::new();
    for name in PINNED_MAPS {
        let (from, to) = (staged.join(name), dir.join(name));
        match std::fs::rename(&from, &to) {
            Ok(()) => moved.push(name),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(KernelError::PinnedLink {
                    doing: "putting the new map in place of the old",
                    path: to,
                    source,
                });
            }
        }
    }
    remove_staged(dir)?;
    Ok(moved)
}

/// How the programs ended up attached, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attachment {
    /// The upload hook: `driver` or `generic` XDP, or `tc_ingress` (TC, attached the way
    /// `tc_mode` says) where the interface has no native XDP.
    pub xdp_mode: &'static str,
    pub tc_mode: &'static str,
}

/// Verifies and attaches the programs to `iface`: the upload hook (native XDP; where the
/// interface has none, TC ingress in `auto` mode, generic XDP when forced) and TC egress. The
/// links live as long as `ebpf`: dropping it detaches them. For tests and the matrix guest; the
/// agent uses [`attach_pinned`].
pub fn attach(
    ebpf: &mut Ebpf,
    iface: &str,
    xdp: XdpMode,
    tc: TcAttach,
) -> Result<Attachment, KernelError> {
    attach_with(ebpf, iface, xdp, tc, None)
}

/// [`attach`], with attachments that outlive the process: XDP and TCX links pinned under
/// `<pin_dir>/links/`, clsact filters at our fixed priority and handle. Links that an earlier
/// agent left on the same hook of `iface` are adopted: their program is swapped for this
/// load's atomically, so no packet goes uncounted across a restart, crash or upgrade. Pins of
/// another interface or mode are detached once the new hooks are in place. When the load
/// replaced another build's maps, the new maps take their pins' names last
/// ([`finish_replacement`]).
pub fn attach_pinned(
    ebpf: &mut Ebpf,
    iface: &str,
    xdp: XdpMode,
    tc: TcAttach,
    pin_dir: &Path,
) -> Result<Attachment, KernelError> {
    let attachment = attach_with(ebpf, iface, xdp, tc, Some(&LinkPins::new(pin_dir)))?;
    let replaced = finish_replacement(pin_dir)?;
    if !replaced.is_empty() {
        warn!(
            pin_dir = %pin_dir.display(),
            "the programs now count into new maps, pinned in place of the old build's: {}",
            replaced.join(", ")
        );
    }
    Ok(attachment)
}

fn attach_with(
    ebpf: &mut Ebpf,
    iface: &str,
    xdp: XdpMode,
    tc: TcAttach,
    pins: Option<&LinkPins>,
) -> Result<Attachment, KernelError> {
    let ifindex = netif::ifindex(iface)?;
    let at = Hooked { iface, ifindex, pins };
    let upload = attach_xdp(ebpf, &at, xdp)?;
    let tc_mode = attach_tc(ebpf, &at, tc, TcAttachType::Egress)?;
    let xdp_mode = match upload {
        Some(mode) => mode,
        None => match attach_tc(ebpf, &at, tc, TcAttachType::Ingress) {
            Ok(ingress) => {
                info!(
                    interface = iface,
                    attach = ingress,
                    "uploads counted on TC ingress: no native XDP here, and generic XDP would \
                     see a GRO-merged packet as one"
                );
                "tc_ingress"
            }
            // Linux 6.1's verifier runs out of its instruction budget on the TC ingress
            // program (the kernel matrix shows it); counting on generic XDP beats not starting.
            Err(KernelError::Verify { source, .. }) if xdp == XdpMode::Auto => {
                tracing::warn!(
                    interface = iface,
                    "this kernel's verifier refused the TC ingress program ({source}): uploads \
                     are counted by generic XDP, which counts a GRO-merged packet as one (on a \
                     bridge, turn GRO off on its ports for exact packet counts)"
                );
                // Loaded (verified) by attach_xdp already: only attached here.
                let prog: &mut Xdp = ebpf
                    .program_mut(names::XDP_PROGRAM)
                    .ok_or(KernelError::MissingProgram { program: "XDP" })?
                    .try_into()
                    .map_err(|source| KernelError::PrepareProgram { program: "XDP", source })?;
                at.xdp(prog, Hook::XdpGeneric)?;
                "generic"
            }
            Err(e) => return Err(e),
        },
    };
    if let Some(pins) = pins {
        sweep(pins, iface, xdp_mode, tc_mode)?;
    }
    Ok(Attachment { xdp_mode, tc_mode })
}

/// After attaching: detaches what an earlier run left on hooks this one does not use (another
/// interface, another mode), so that nothing counts twice. After, not before, so that a mode
/// change has no gap (at worst a moment of counting twice).
fn sweep(
    pins: &LinkPins,
    iface: &str,
    xdp_mode: &'static str,
    tc_mode: &'static str,
) -> Result<(), KernelError> {
    for hook in unused_hooks(xdp_mode, tc_mode) {
        let removed = pins.remove(hook).map_err(|source| KernelError::PinnedLink {
            doing: "detaching a pinned link an earlier run left",
            path: pins.path(hook),
            source,
        })?;
        if removed {
            warn!(
                link = %pins.path(hook).display(),
                "detached the {} link an earlier run left (the interface or attach mode changed)",
                hook.pin_name()
            );
        }
    }
    for side in unused_filters(xdp_mode, tc_mode) {
        match links::remove_tc_filters(iface, side) {
            Ok(true) => warn!(
                interface = iface,
                "removed the clsact {side:?} filter an earlier run left (the attach mode changed)"
            ),
            Ok(false) => {}
            Err(e) => warn!(interface = iface, "removing an old clsact {side:?} filter: {e}"),
        }
    }
    Ok(())
}

/// The pinned links an attachment as `xdp_mode`/`tc_mode` (an [`Attachment`]'s) does not use.
fn unused_hooks(xdp_mode: &str, tc_mode: &str) -> Vec<Hook> {
    let tcx = tc_mode == "tcx";
    let used = |hook: &Hook| match hook {
        Hook::XdpDriver => xdp_mode == "driver",
        Hook::XdpGeneric => xdp_mode == "generic",
        Hook::TcxEgress => tcx,
        Hook::TcxIngress => tcx && xdp_mode == "tc_ingress",
    };
    Hook::ALL.into_iter().filter(|h| !used(h)).collect()
}

/// The sides where such an attachment has no clsact filter of ours.
fn unused_filters(xdp_mode: &str, tc_mode: &str) -> Vec<TcAttachType> {
    let netlink = tc_mode == "netlink";
    [(TcAttachType::Egress, netlink), (TcAttachType::Ingress, netlink && xdp_mode == "tc_ingress")]
        .into_iter()
        .filter(|(_, used)| !used)
        .map(|(side, _)| side)
        .collect()
}

/// Where the programs go: the interface, and the pins when attachments are to outlive us.
struct Hooked<'a> {
    iface: &'a str,
    ifindex: u32,
    pins: Option<&'a LinkPins>,
}

impl Hooked<'_> {
    /// Attaches `prog` as XDP in `hook`'s mode: adopts the pinned link of this interface (an
    /// atomic program swap), or attaches and pins a new one.
    fn xdp(&self, prog: &mut Xdp, hook: Hook) -> Result<(), KernelError> {
        let (mode, flags) = match hook {
            Hook::XdpGeneric => ("generic", AyaXdpMode::Skb),
            _ => ("driver", AyaXdpMode::Driver),
        };
        let err = |source| KernelError::AttachXdp { mode, interface: self.iface.into(), source };
        let Some(pins) = self.pins else {
            return prog.attach(self.iface, flags).map(|_| ()).map_err(err);
        };
        if let Some(old) = self.adoptable(hook)? {
            let link = XdpLink::try_from(old).map_err(|e| self.link_error(hook, e))?;
            let id = prog.attach_to_link(link).map_err(err)?;
            // Ours no more: the pin keeps it attached when this process ends.
            drop(prog.take_link(id).map_err(err)?);
            info!(interface = self.iface, "XDP ({mode}) link adopted: program swapped in place");
            return Ok(());
        }
        let id = prog.attach(self.iface, flags).map_err(err)?;
        let link = prog.take_link(id).map_err(err)?;
        match FdLink::try_from(link) {
            Ok(fd) => self.pin(pins, hook, fd),
            // A netlink XDP attachment (no XDP links before 5.9): it stays attached when this
            // process ends too (aya detaches it only through the link just taken), but the
            // next agent cannot swap it: it replaces it.
            Err(e) => {
                warn!(
                    interface = self.iface,
                    "XDP attached without a BPF link ({e}); it cannot be pinned, so a restart \
                     re-attaches it"
                );
                Ok(())
            }
        }
    }

    /// The pinned link of `hook` on this interface, if any.
    fn adoptable(&self, hook: Hook) -> Result<Option<FdLink>, KernelError> {
        let Some(pins) = self.pins else { return Ok(None) };
        pins.adoptable(hook, self.ifindex).map_err(|source| KernelError::PinnedLink {
            doing: "opening the pinned link",
            path: pins.path(hook),
            source,
        })
    }

    /// Detaches the pinned link of `hook` when it is on this interface: the kernel runs one
    /// XDP mode at a time, so a change of `xdp_mode` has to take the old one off first (the
    /// one restart that leaves a moment uncounted, said in the log).
    fn drop_pin_on_this_interface(&self, hook: Hook) -> Result<(), KernelError> {
        let Some(pins) = self.pins else { return Ok(()) };
        let err = |source| KernelError::PinnedLink {
            doing: "detaching a pinned link of another XDP mode",
            path: pins.path(hook),
            source,
        };
        if pins.info(hook).map_err(err)?.is_some_and(|i| i.ifindex == self.ifindex) {
            pins.remove(hook).map_err(err)?;
            warn!(
                interface = self.iface,
                "xdp_mode changed: detached the {} link first (uploads are uncounted until the \
                 new one is attached)",
                hook.pin_name()
            );
        }
        Ok(())
    }

    /// A link that is not what its pin name says.
    fn link_error(&self, hook: Hook, e: aya::programs::links::LinkError) -> KernelError {
        KernelError::PinnedLink {
            doing: "taking over the link",
            path: self.pins.map(|p| p.path(hook)).unwrap_or_default(),
            source: std::io::Error::other(e),
        }
    }

    fn pin(&self, pins: &LinkPins, hook: Hook, link: FdLink) -> Result<(), KernelError> {
        pins.pin(hook, link).map_err(|source| KernelError::PinnedLink {
            doing: "pinning the link",
            path: pins.path(hook),
            source,
        })
    }
}

/// The program types the agent loads; aya's `load` is inherent to each.
trait Verifiable {
    fn verify(&mut self) -> Result<(), ProgramError>;
}

impl Verifiable for Xdp {
    fn verify(&mut self) -> Result<(), ProgramError> {
        self.load()
    }
}

impl Verifiable for SchedClassifier {
    fn verify(&mut self) -> Result<(), ProgramError> {
        self.load()
    }
}

/// The program `name` of the object, of type `P` and verified by the kernel; `role` names it
/// in errors ("XDP", "TC").
fn verified<'a, P>(
    ebpf: &'a mut Ebpf,
    name: &str,
    role: &'static str,
) -> Result<&'a mut P, KernelError>
where
    &'a mut P: TryFrom<&'a mut Program, Error = ProgramError>,
    P: Verifiable,
{
    let prog: &mut P = ebpf
        .program_mut(name)
        .ok_or(KernelError::MissingProgram { program: role })?
        .try_into()
        .map_err(|source| KernelError::PrepareProgram { program: role, source })?;
    prog.verify().map_err(|source| KernelError::Verify { program: role, source })?;
    Ok(prog)
}

/// Verifies the counting programs (XDP, both TC programs and the XDP baseline) without
/// attaching them: what `BPF_PROG_TEST_RUN` needs, for the kernel tests and the benchmarks.
pub fn verify_for_test_runs(ebpf: &mut Ebpf) -> Result<(), KernelError> {
    verified::<Xdp>(ebpf, names::XDP_PROGRAM, "XDP")?;
    verified::<Xdp>(ebpf, names::XDP_PASS_PROGRAM, "XDP baseline")?;
    verified::<SchedClassifier>(ebpf, names::TC_PROGRAM, "TC")?;
    verified::<SchedClassifier>(ebpf, names::TC_INGRESS_PROGRAM, "TC ingress")?;
    Ok(())
}

/// Attaches XDP in the mode asked for; `None` for `tc`, and in `auto` mode when the driver has
/// no native XDP (the caller counts uploads on TC ingress then).
fn attach_xdp(
    ebpf: &mut Ebpf,
    at: &Hooked,
    mode: XdpMode,
) -> Result<Option<&'static str>, KernelError> {
    install_capture(ebpf)?;
    let prog: &mut Xdp = verified(ebpf, names::XDP_PROGRAM, "XDP")?;
    match mode {
        XdpMode::Driver => {
            at.drop_pin_on_this_interface(Hook::XdpGeneric)?;
            at.xdp(prog, Hook::XdpDriver).map(|()| Some("driver"))
        }
        XdpMode::Generic => {
            at.drop_pin_on_this_interface(Hook::XdpDriver)?;
            at.xdp(prog, Hook::XdpGeneric).map(|()| Some("generic"))
        }
        XdpMode::Tc => Ok(None),
        XdpMode::Auto => match at.xdp(prog, Hook::XdpDriver) {
            Ok(()) => {
                info!(interface = at.iface, "XDP attached in driver (native) mode");
                Ok(Some("driver"))
            }
            Err(KernelError::AttachXdp { source: driver, .. }) => {
                info!(interface = at.iface, "no native XDP here ({driver})");
                Ok(None)
            }
            Err(e) => Err(e),
        },
    }
}

/// Loads the capture programs (XDP's and TC's) into their tail-call slots, so that the
/// counting programs never run without them (they copy event payloads; verified on their own
/// to keep the verifier's work small).
pub fn install_capture(ebpf: &mut Ebpf) -> Result<(), KernelError> {
    const XDP_ROLE: &str = "XDP capture";
    let xdp: &mut Xdp = verified(ebpf, names::XDP_CAPTURE_PROGRAM, XDP_ROLE)?;
    let xdp = xdp.fd().and_then(|fd| fd.try_clone().map_err(ProgramError::from));
    let xdp = xdp.map_err(|source| KernelError::PrepareProgram { program: XDP_ROLE, source })?;
    set_tail(ebpf, names::EVENT_TAIL, &xdp, "installing the XDP capture program")?;
    const TC_ROLE: &str = "TC capture";
    let tc: &mut SchedClassifier = verified(ebpf, names::TC_CAPTURE_PROGRAM, TC_ROLE)?;
    let tc = tc.fd().and_then(|fd| fd.try_clone().map_err(ProgramError::from));
    let tc = tc.map_err(|source| KernelError::PrepareProgram { program: TC_ROLE, source })?;
    set_tail(ebpf, names::TC_EVENT_TAIL, &tc, "installing the TC capture program")
}

/// Puts `prog` in slot 0 of the program array `map`.
fn set_tail(
    ebpf: &mut Ebpf,
    map: &'static str,
    prog: &aya::programs::ProgramFd,
    what: &'static str,
) -> Result<(), KernelError> {
    let mut tail: ProgramArray<_> = ebpf
        .map_mut(map)
        .ok_or(KernelError::MissingMap { map })?
        .try_into()
        .map_err(|source| KernelError::OpenMap { map, source })?;
    tail.set(0, prog, 0).map_err(KernelError::map(what))
}

/// Attaches the TC program of a direction (`Egress`: downloads, `Ingress`: uploads).
fn attach_tc(
    ebpf: &mut Ebpf,
    at: &Hooked,
    mode: TcAttach,
    hook: TcAttachType,
) -> Result<&'static str, KernelError> {
    let iface = at.iface;
    let (name, role, side, tcx_hook) = match hook {
        TcAttachType::Ingress => {
            (names::TC_INGRESS_PROGRAM, "TC ingress", "ingress", Hook::TcxIngress)
        }
        _ => (names::TC_PROGRAM, "TC", "egress", Hook::TcxEgress),
    };
    let prog: &mut SchedClassifier = verified(ebpf, name, role)?;
    if mode != TcAttach::Netlink {
        let tcx_err = |source| KernelError::AttachTcx { side, interface: iface.into(), source };
        if let Some(old) = at.adoptable(tcx_hook)? {
            let link =
                SchedClassifierLink::try_from(old).map_err(|e| at.link_error(tcx_hook, e))?;
            let id = prog.attach_to_link(link).map_err(tcx_err)?;
            drop(prog.take_link(id).map_err(tcx_err)?);
            info!(interface = iface, "TC {side} TCX link adopted: program swapped in place");
            return Ok("tcx");
        }
        match prog.attach_with_options(iface, hook, TcAttachOptions::TcxOrder(LinkOrder::default()))
        {
            Ok(id) => {
                if let Some(pins) = at.pins {
                    let link = prog.take_link(id).map_err(tcx_err)?;
                    let fd = FdLink::try_from(link).map_err(|e| at.link_error(tcx_hook, e))?;
                    at.pin(pins, tcx_hook, fd)?;
                }
                info!(interface = iface, "TC {side} program attached with TCX");
                return Ok("tcx");
            }
            Err(source) if mode == TcAttach::Tcx => return Err(tcx_err(source)),
            Err(e) => info!(interface = iface, "TCX unavailable ({e}); using a clsact qdisc"),
        }
    }
    if let Err(e) = tc::qdisc_add_clsact(iface) {
        let exists =
            matches!(&e, tc::TcError::NetlinkError(n) if n.raw_os_error() == Some(libc::EEXIST));
        if !exists && !e.to_string().contains("exists") {
            return Err(KernelError::AddClsact { interface: iface.into(), source: e });
        }
    }
    let err = |source| KernelError::AttachTc { side, interface: iface.into(), source };
    if at.pins.is_none() {
        // A netlink filter outlives a crashed agent: remove ours before adding, or packets
        // would be counted twice.
        if let Err(e) = tc::qdisc_detach_program(iface, hook, name) {
            tracing::debug!("no stale TC {side} filter to remove: {e}");
        }
        prog.attach_with_options(iface, hook, TcAttachOptions::Netlink(NlOptions::default()))
            .map_err(err)?;
        info!(interface = iface, "TC {side} program attached as a clsact filter (netlink)");
        return Ok("netlink");
    }
    // Our filter sits at a fixed priority and handle: replace it in place (the new program
    // takes over between two packets), or add it.
    let ours =
        SchedClassifierLink::attached(iface, hook, links::TC_PRIORITY, links::TC_HANDLE, None)
            .map_err(|e| err(tc::TcError::IoError(e).into()))?;
    let id = match prog.attach_to_link(ours) {
        Ok(id) => {
            info!(interface = iface, "TC {side} clsact filter adopted: program replaced in place");
            id
        }
        Err(replace) => {
            tracing::debug!("no clsact {side} filter of ours to replace: {replace}");
            // One an older build left at another priority would count twice.
            if let Err(e) = tc::qdisc_detach_program(iface, hook, name) {
                tracing::debug!("no stale TC {side} filter to remove: {e}");
            }
            let options =
                NlOptions { priority: links::TC_PRIORITY, handle: links::TC_HANDLE, classid: None };
            let id = prog
                .attach_with_options(iface, hook, TcAttachOptions::Netlink(options))
                .map_err(err)?;
            info!(interface = iface, "TC {side} program attached as a clsact filter (netlink)");
            id
        }
    };
    // Dropping the link would delete the filter; it is to stay when this process ends.
    std::mem::forget(prog.take_link(id).map_err(err)?);
    Ok("netlink")
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Driver (native) mode; where the driver lacks XDP, uploads are counted on TC ingress
    /// instead (exact for GRO-merged packets, which generic XDP counts as one).
    #[default]
    Auto,
    Driver,
    /// Generic (skb) XDP: after GRO, so a merged packet counts as one (not exact on a bridge).
    Generic,
    /// No XDP: uploads on TC ingress, as `auto` does where the driver lacks native XDP.
    Tc,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TcAttach {
    /// TCX where the kernel has it (6.6+), else a clsact qdisc filter over netlink.
    #[default]
    Auto,
    Tcx,
    Netlink,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_versions_parse() {
        assert_eq!(release_version("5.10.0-35-amd64"), Some((5, 10)));
        assert_eq!(release_version("6.12.44-fc-v1147"), Some((6, 12)));
        assert_eq!(release_version("garbage"), None);
        assert!(release_version("5.10.0-35-amd64").unwrap() < MIN_KERNEL);
        assert!(release_version("5.15.167").unwrap() >= MIN_KERNEL);
    }

    #[test]
    fn the_sweep_keeps_exactly_the_hooks_in_use() {
        use Hook::*;
        assert_eq!(unused_hooks("driver", "tcx"), [XdpGeneric, TcxIngress]);
        assert_eq!(unused_hooks("tc_ingress", "tcx"), [XdpDriver, XdpGeneric]);
        // The 6.1 bridge fallback: generic XDP up, clsact down.
        assert_eq!(unused_hooks("generic", "netlink"), [XdpDriver, TcxEgress, TcxIngress]);
        assert_eq!(unused_hooks("tc_ingress", "netlink"), Hook::ALL);
        assert_eq!(unused_filters("driver", "tcx"), [TcAttachType::Egress, TcAttachType::Ingress]);
        assert_eq!(unused_filters("driver", "netlink"), [TcAttachType::Ingress]);
        assert!(unused_filters("tc_ingress", "netlink").is_empty());
        assert_eq!(unused_filters("tc_ingress", "tcx").len(), 2);
    }
}
