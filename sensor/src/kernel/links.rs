//! Program attachments that outlive the agent, so that traffic is counted (into the pinned
//! maps) while it restarts, crashes or is upgraded: XDP and TCX links pinned under
//! `<pin_path>/links/`, and clsact filters at a fixed priority and handle of ours. The next
//! agent adopts them and swaps its programs in atomically (`BPF_LINK_UPDATE`, or a netlink
//! filter replace); `sensor detach` removes them.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use aya::programs::{
    TcAttachType,
    links::{FdLink, PinnedLink},
    tc::{self, TcHandle},
};
use sensor_common::names;

use super::KernelError;

/// Below the pin directory: the pinned links.
pub const LINKS_DIR: &str = "links";

/// Our clsact filters' priority and handle on both sides. Fixed, so that the next agent finds
/// its predecessor's filter and replaces it in place (no gap, no double count); `tc filter
/// show dev IF egress` lists them as `pref 18259 bpf ... handle 0x1`.
pub const TC_PRIORITY: u16 = 0x4753;
pub const TC_HANDLE: TcHandle = TcHandle::new(0, 1);

/// The pinned links the agent creates, one per hook; the name says the hook and its mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    XdpDriver,
    XdpGeneric,
    TcxEgress,
    TcxIngress,
}

impl Hook {
    pub const ALL: [Hook; 4] =
        [Hook::XdpDriver, Hook::XdpGeneric, Hook::TcxEgress, Hook::TcxIngress];

    /// Its pin's file name under [`LINKS_DIR`].
    pub fn pin_name(self) -> &'static str {
        match self {
            Hook::XdpDriver => "xdp_driver",
            Hook::XdpGeneric => "xdp_generic",
            Hook::TcxEgress => "tcx_egress",
            Hook::TcxIngress => "tcx_ingress",
        }
    }

    /// The kernel's link type for it (`BPF_LINK_TYPE_XDP` or `BPF_LINK_TYPE_TCX`).
    fn link_type(self) -> u32 {
        match self {
            Hook::XdpDriver | Hook::XdpGeneric => 6,
            Hook::TcxEgress | Hook::TcxIngress => 11,
        }
    }
}

/// The link pins below one pin directory.
#[derive(Debug, Clone)]
pub struct LinkPins {
    dir: PathBuf,
}

/// What a pinned link is attached to, as the kernel says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinnedInfo {
    pub link_type: u32,
    /// The link's id: an adopted link keeps it.
    pub id: u32,
    /// The program attached through it: adoption swaps it.
    pub prog_id: u32,
    pub ifindex: u32,
}

impl LinkPins {
    /// The links of the maps pinned in `pin_path`.
    pub fn new(pin_path: &Path) -> LinkPins {
        LinkPins { dir: pin_path.join(LINKS_DIR) }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, hook: Hook) -> PathBuf {
        self.dir.join(hook.pin_name())
    }

    /// The link pinned for `hook`, if there is one and it is attached to `ifindex`: the link
    /// to update with the new program. A pin of another interface or of an unexpected type is
    /// left alone here (see [`LinkPins::remove`]).
    pub fn adoptable(&self, hook: Hook, ifindex: u32) -> io::Result<Option<FdLink>> {
        let path = self.path(hook);
        let Some(info) = pinned_info(&path)? else { return Ok(None) };
        if info.link_type != hook.link_type() || info.ifindex != ifindex {
            return Ok(None);
        }
        let link = PinnedLink::from_pin(&path).map_err(io::Error::other)?;
        Ok(Some(FdLink::from(link)))
    }

    /// What the pin of `hook` is attached to; `None` when there is no pin.
    pub fn info(&self, hook: Hook) -> io::Result<Option<PinnedInfo>> {
        pinned_info(&self.path(hook))
    }

    /// Pins a freshly attached link for `hook`, detaching the link of a pin of the same name.
    pub fn pin(&self, hook: Hook, link: FdLink) -> io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        // A pin of the same name is on another interface (else it was adopted): detach it.
        self.remove(hook)?;
        link.pin(self.path(hook)).map(|_| ()).map_err(io::Error::other)
    }

    /// Detaches the link pinned for `hook` (even while another process holds it open) and
    /// removes the pin. True when there was one.
    pub fn remove(&self, hook: Hook) -> io::Result<bool> {
        let path = self.path(hook);
        let Some(fd) = obj_get(&path)? else { return Ok(false) };
        // BPF_LINK_DETACH: the hook lets go of the program now, not when the last fd closes.
        if let Err(e) = link_detach(&fd) {
            // Not every link type detaches on request; removing the pin still does once the
            // last holder closes it.
            tracing::debug!("BPF_LINK_DETACH on {}: {e}", path.display());
        }
        std::fs::remove_file(&path)?;
        Ok(true)
    }

    /// Removes the links directory when it is empty (after `sensor detach`).
    pub fn remove_dir_if_empty(&self) -> io::Result<()> {
        match std::fs::remove_dir(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Removes our clsact filter of `side` from `iface`: the one at [`TC_PRIORITY`]/[`TC_HANDLE`],
/// and any filter running our program by name (left by a build before the fixed priority).
/// True when one was removed.
pub fn remove_tc_filters(iface: &str, side: TcAttachType) -> Result<bool, tc::TcError> {
    let name = match side {
        TcAttachType::Ingress => names::TC_INGRESS_PROGRAM,
        _ => names::TC_PROGRAM,
    };
    match tc::qdisc_detach_program(iface, side, name) {
        Ok(()) => Ok(true),
        Err(tc::TcError::IoError(e)) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        // No clsact qdisc (so no filter): netlink answers EINVAL or ENOENT.
        Err(tc::TcError::NetlinkError(e))
            if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// `sensor detach`: takes the programs off `iface` (the pinned links below `pin_path`, our
/// clsact filters on both sides; `loader::unpin_maps` does `--maps`). Returns what it did, a
/// line each. The agent should be stopped first: it would re-attach at its next start anyway.
pub fn detach(pin_path: &Path, iface: &str) -> Result<Vec<String>, KernelError> {
    let mut done = Vec::new();
    let pins = LinkPins::new(pin_path);
    for hook in Hook::ALL {
        let path = pins.path(hook);
        let removed = pins.remove(hook).map_err(|source| KernelError::PinnedLink {
            doing: "detaching and unpinning",
            path: path.clone(),
            source,
        })?;
        if removed {
            done.push(format!("detached and unpinned {}", path.display()));
        }
    }
    pins.remove_dir_if_empty().map_err(|source| KernelError::PinnedLink {
        doing: "removing the directory",
        path: pins.dir().into(),
        source,
    })?;
    if nix::net::if_::if_nametoindex(iface).is_err() {
        done.push(format!("interface {iface} not found: no clsact filters to remove there"));
    } else {
        for side in [TcAttachType::Egress, TcAttachType::Ingress] {
            let removed =
                remove_tc_filters(iface, side).map_err(|source| KernelError::RemoveTcFilter {
                    side: side_name(side),
                    interface: iface.into(),
                    source,
                })?;
            if removed {
                done.push(format!("removed the clsact {} filter from {iface}", side_name(side)));
            }
        }
    }
    Ok(done)
}

fn side_name(side: TcAttachType) -> &'static str {
    match side {
        TcAttachType::Ingress => "ingress",
        _ => "egress",
    }
}

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_DETACH: libc::c_long = 34;

fn sys_bpf<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, properly laid-out attribute struct for `cmd`, of the size
    // passed; pointers inside it point into buffers the caller keeps alive.
    let ret = unsafe {
        libc::syscall(libc::SYS_bpf, cmd, attr as *mut A, size_of::<A>() as libc::c_uint)
    };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

/// The object pinned at `path`, opened; `None` when nothing is pinned there.
fn obj_get(path: &Path) -> io::Result<Option<OwnedFd>> {
    #[repr(C)]
    #[derive(Default)]
    struct ObjAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut attr = ObjAttr { pathname: c.as_ptr() as u64, ..ObjAttr::default() };
    match sys_bpf(BPF_OBJ_GET, &mut attr) {
        // SAFETY: BPF_OBJ_GET returned a new fd that nothing else owns.
        Ok(fd) => Ok(Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The link type and interface of the link pinned at `path` (`None`: nothing pinned).
fn pinned_info(path: &Path) -> io::Result<Option<PinnedInfo>> {
    let Some(fd) = obj_get(path)? else { return Ok(None) };
    #[repr(C)]
    #[derive(Default)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    // struct bpf_link_info: type, id, prog_id, then a union 8-aligned at byte 16 whose `xdp`
    // and `tcx` members start with the ifindex. Zeroed beyond what this kernel fills in.
    let mut info = [0u32; 32];
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(Some(parse_link_info(&info)))
}

fn parse_link_info(info: &[u32; 32]) -> PinnedInfo {
    PinnedInfo { link_type: info[0], id: info[1], prog_id: info[2], ifindex: info[4] }
}

fn link_detach(fd: &OwnedFd) -> io::Result<()> {
    #[repr(C)]
    struct DetachAttr {
        link_fd: u32,
    }
    let mut attr = DetachAttr { link_fd: fd.as_raw_fd() as u32 };
    sys_bpf(BPF_LINK_DETACH, &mut attr).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_names_are_distinct_and_under_links() {
        let pins = LinkPins::new(Path::new("/sys/fs/bpf/gwsensor"));
        let mut paths: Vec<PathBuf> = Hook::ALL.iter().map(|h| pins.path(*h)).collect();
        assert_eq!(paths[0], Path::new("/sys/fs/bpf/gwsensor/links/xdp_driver"));
        assert_eq!(paths[3], Path::new("/sys/fs/bpf/gwsensor/links/tcx_ingress"));
        paths.dedup();
        assert_eq!(paths.len(), 4);
    }

    #[test]
    fn link_info_reads_type_and_ifindex() {
        let mut raw = [0u32; 32];
        raw[0] = 6; // BPF_LINK_TYPE_XDP
        raw[1] = 99; // link id
        raw[2] = 123; // program id
        raw[4] = 7; // xdp.ifindex
        assert_eq!(
            parse_link_info(&raw),
            PinnedInfo { link_type: 6, id: 99, prog_id: 123, ifindex: 7 }
        );
        assert_eq!(Hook::XdpGeneric.link_type(), 6);
        assert_eq!(Hook::TcxEgress.link_type(), 11);
    }

    #[test]
    fn tc_handle_is_fixed_and_nonzero() {
        assert_eq!(u32::from(TC_HANDLE), 1);
        assert_ne!(TC_PRIORITY, 0);
    }
}
