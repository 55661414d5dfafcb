//! A do-nothing XDP program (`return XDP_PASS`) attached in driver mode, for the run that
//! separates what attaching any XDP program costs on this interface (a veth switches to its
//! XDP receive path, which copies each frame into a page with XDP headroom) from what the
//! sensor's programs do. Two instructions loaded with bpf(2) and attached with a BPF link, so
//! no object file or loader is needed; dropping it detaches it.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use anyhow::{Context as _, Result};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
const XDP_PASS: i32 = 2;

/// One eBPF instruction (struct bpf_insn).
#[repr(C)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

/// The BPF_PROG_LOAD part of union bpf_attr, up to the fields used (the kernel zero-extends a
/// shorter attribute).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The BPF_LINK_CREATE part of union bpf_attr.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

pub struct XdpPass {
    prog: OwnedFd,
    _link: OwnedFd,
}

impl XdpPass {
    /// Loads the program and attaches it (driver mode) to `ifname` in namespace `ns`.
    pub fn attach(ns: &str, ifname: &str) -> Result<XdpPass> {
        lab::in_netns(ns, || attach_here(ifname))?
            .with_context(|| format!("attaching a do-nothing XDP program to {ns}/{ifname}"))
    }

    /// (run_time_ns, run_cnt) of the program so far, from our own fd info.
    pub fn run_time(&self) -> Result<(u64, u64)> {
        let path = format!("/proc/self/fdinfo/{}", self.prog.as_raw_fd());
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let (_, ns, runs) = super::agent::parse_prog_fdinfo(&text)
            .with_context(|| format!("{path} is not a BPF program's"))?;
        Ok((ns, runs))
    }
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<OwnedFd> {
    // SAFETY: `attr` is a repr(C) prefix of union bpf_attr for `cmd`, valid for the call; the
    // size passed is its own.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            (attr as *mut T).cast::<libc::c_void>(),
            std::mem::size_of::<T>() as u32,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a successful BPF_PROG_LOAD/BPF_LINK_CREATE returns a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn attach_here(ifname: &str) -> Result<XdpPass> {
    let insns = [
        // r0 = XDP_PASS (BPF_ALU64 | BPF_MOV | BPF_K)
        Insn { code: 0xb7, regs: 0, off: 0, imm: XDP_PASS },
        // exit (BPF_JMP | BPF_EXIT)
        Insn { code: 0x95, regs: 0, off: 0, imm: 0 },
    ];
    let license = c"GPL";
    let mut name = [0u8; 16];
    name[..9].copy_from_slice(b"peer_pass");
    let mut load = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        expected_attach_type: BPF_XDP,
        ..Default::default()
    };
    let prog = bpf(BPF_PROG_LOAD, &mut load).context("BPF_PROG_LOAD")?;
    let cname = std::ffi::CString::new(ifname)?;
    // SAFETY: a plain lookup of a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if index == 0 {
        return Err(std::io::Error::last_os_error()).context(format!("no interface {ifname}"));
    }
    let mut create = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_ifindex: index,
        attach_type: BPF_XDP,
        flags: XDP_FLAGS_DRV_MODE,
    };
    let link = bpf(BPF_LINK_CREATE, &mut create).context("BPF_LINK_CREATE (XDP, driver mode)")?;
    Ok(XdpPass { prog, _link: link })
}
