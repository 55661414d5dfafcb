//! Frames put on a link by hand, and what a link says it carried: a packet socket that sends
//! whole Ethernet frames (or one GSO packet behind a virtio_net_hdr, as a tap or a VM's NIC
//! hands them to the kernel), a link's offload features (what `ethtool -K` sets, through the
//! same ioctl: the lab machines have no ethtool), and a link's own frame counters.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use anyhow::{Context as _, bail, ensure};
use nix::libc;

use crate::{cmd::ip, netns::in_netns};

/// An offload feature of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offload {
    /// TCP segmentation offload: off makes the kernel segment a GSO packet before the driver.
    Tso,
    /// Generic segmentation offload.
    Gso,
    /// Generic receive offload: on merges a flow's segments into one packet on receive (on a
    /// veth, it also gives the link the NAPI poll that GRO runs in).
    Gro,
}

/// Turns an offload feature of `ifname` (inside `ns`) on or off, as `ethtool -K` does.
pub fn set_offload(ns: &str, ifname: &str, feature: Offload, on: bool) -> anyhow::Result<()> {
    // The legacy per-feature commands of SIOCETHTOOL (linux/ethtool.h), still served by
    // every kernel.
    const ETHTOOL_STSO: u32 = 0x1f;
    const ETHTOOL_SGSO: u32 = 0x24;
    const ETHTOOL_SGRO: u32 = 0x2c;
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    let cmd = match feature {
        Offload::Tso => ETHTOOL_STSO,
        Offload::Gso => ETHTOOL_SGSO,
        Offload::Gro => ETHTOOL_SGRO,
    };
    let name = ifname.to_string();
    in_netns(ns, move || -> anyhow::Result<()> {
        // struct ethtool_value { u32 cmd; u32 data; }
        let mut value = [cmd, u32::from(on)];
        // SAFETY: a zeroed ifreq is valid; the name fits (checked) and stays NUL-terminated.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        ensure!(name.len() < ifr.ifr_name.len(), "interface name {name} is too long");
        for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        ifr.ifr_ifru.ifru_data = value.as_mut_ptr().cast();
        let sock = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
        // SAFETY: SIOCETHTOOL with an ifreq whose data points at a live ethtool_value.
        let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut ifr) };
        if rc != 0 {
            bail!(
                "setting {feature:?} {} on {name} in {ns}: {}",
                if on { "on" } else { "off" },
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    })?
}

fn socket(domain: libc::c_int, kind: libc::c_int, proto: libc::c_int) -> anyhow::Result<OwnedFd> {
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        bail!("socket({domain}, {kind}): {}", std::io::Error::last_os_error());
    }
    // SAFETY: a new fd, owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A GSO packet's virtio_net_hdr: the packet is one skb that the kernel segments (or a
/// driver, with TSO) into frames of `gso_size` bytes of payload, each with the `hdr_len`
/// bytes of headers.
#[derive(Debug, Clone, Copy)]
pub struct Gso {
    pub kind: GsoKind,
    /// Bytes of headers, Ethernet to L4 inclusive.
    pub hdr_len: u16,
    pub gso_size: u16,
    /// Where the L4 header starts (the checksum is left to the kernel from there).
    pub csum_start: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GsoKind {
    TcpV4,
    TcpV6,
}

/// Sends `frames` (whole Ethernet frames, FCS excluded) out of `ifname` in `ns` through a
/// packet socket: each leaves through the interface's egress path (its TC egress programs run)
/// as it is. A frame of a page or more is built as an skb with only its Ethernet header in
/// the linear area, the rest in pages, as the kernel does for any large packet-socket send.
pub fn send_frames(ns: &str, ifname: &str, frames: &[Vec<u8>]) -> anyhow::Result<()> {
    let sock = packet_socket(ns, ifname, false)?;
    for f in frames {
        send_one(&sock, f).with_context(|| format!("sending a {}-byte frame", f.len()))?;
    }
    Ok(())
}

/// Sends one GSO packet: `frame` (headers once, then the whole payload) behind a
/// virtio_net_hdr, out of `ifname` in `ns`. The kernel marks it as from an untrusted source
/// and leaves its segment count at 0 until it segments it.
pub fn send_gso(ns: &str, ifname: &str, frame: &[u8], gso: Gso) -> anyhow::Result<()> {
    const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
    let (gso_type, csum_offset) = match gso.kind {
        GsoKind::TcpV4 => (1u8, 16u16),
        GsoKind::TcpV6 => (4u8, 16u16),
    };
    // struct virtio_net_hdr, little-endian fields (virtio 1.0; x86 and arm64 alike).
    let mut packet = vec![VIRTIO_NET_HDR_F_NEEDS_CSUM, gso_type];
    for v in [gso.hdr_len, gso.gso_size, gso.csum_start, csum_offset] {
        packet.extend_from_slice(&v.to_le_bytes());
    }
    packet.extend_from_slice(frame);
    let sock = packet_socket(ns, ifname, true)?;
    send_one(&sock, &packet).with_context(|| format!("sending a {}-byte GSO packet", frame.len()))
}

/// A packet socket bound to `ifname` in `ns` that receives nothing (protocol 0), with a
/// virtio_net_hdr in front of each frame when `vnet` is set.
fn packet_socket(ns: &str, ifname: &str, vnet: bool) -> anyhow::Result<OwnedFd> {
    const PACKET_VNET_HDR: libc::c_int = 15;
    let name = std::ffi::CString::new(ifname)?;
    let ns_name = ns.to_string();
    in_netns(ns, move || -> anyhow::Result<OwnedFd> {
        let sock = socket(libc::AF_PACKET, libc::SOCK_RAW, 0)?;
        if vnet {
            let one: libc::c_int = 1;
            // SAFETY: a c_int option of the right size.
            let rc = unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_PACKET,
                    PACKET_VNET_HDR,
                    (&one as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            ensure!(rc == 0, "PACKET_VNET_HDR: {}", std::io::Error::last_os_error());
        }
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        ensure!(ifindex != 0, "{ifname:?} in {ns_name}: {}", std::io::Error::last_os_error());
        // SAFETY: a zeroed sockaddr_ll is valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: bind(2) with a sockaddr_ll of its size.
        let rc = unsafe {
            libc::bind(
                sock.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        ensure!(rc == 0, "binding to {ifname:?}: {}", std::io::Error::last_os_error());
        Ok(sock)
    })?
}

fn send_one(sock: &OwnedFd, bytes: &[u8]) -> anyhow::Result<()> {
    // SAFETY: send(2) of a live buffer.
    let n = unsafe { libc::send(sock.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
    if n < 0 {
        bail!("{}", std::io::Error::last_os_error());
    }
    ensure!(n as usize == bytes.len(), "short send: {n} of {} bytes", bytes.len());
    Ok(())
}

/// A link's own counters: frames and bytes (Ethernet frames without FCS, as the driver
/// counts them) received and sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

/// `ip -s link show` of `ifname` in `ns`.
pub fn link_counters(ns: &str, ifname: &str) -> anyhow::Result<LinkCounters> {
    let out = ip(&["-n", ns, "-s", "-j", "link", "show", "dev", ifname])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("ip -s -j link output")?;
    let stats = &v[0]["stats64"];
    let n = |dir: &str, k: &str| -> anyhow::Result<u64> {
        stats[dir][k].as_u64().with_context(|| format!("{dir}.{k} in {out}"))
    };
    Ok(LinkCounters {
        rx_packets: n("rx", "packets")?,
        rx_bytes: n("rx", "bytes")?,
        tx_packets: n("tx", "packets")?,
        tx_bytes: n("tx", "bytes")?,
    })
}

/// A capture of what crosses an interface (dumpcap, inside the interface's namespace), written
/// to a pcap file: the wire's own account of frames and bytes. Checked against the
/// interface's own frame counters when it stops, so a capture that missed frames fails loudly
/// instead of passing for the truth.
pub struct Capture {
    process: crate::Process,
    path: std::path::PathBuf,
    ns: String,
    ifname: String,
    before: LinkCounters,
}

impl Capture {
    /// Starts capturing on `ifname` in `ns` into `<lab dir>/<name>.pcap`; returns once dumpcap
    /// says it is capturing.
    pub fn start(lab: &crate::Lab, ns: &str, ifname: &str, name: &str) -> anyhow::Result<Capture> {
        let path = lab.dir().join(format!("{name}.pcap"));
        let mut cmd = std::process::Command::new("dumpcap");
        cmd.args(["-q", "-P", "-i", ifname, "-w"]).arg(&path);
        let process = lab.spawn(ns, cmd)?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !process.log().contains("Capturing on") {
            if process.try_wait()?.is_some() || std::time::Instant::now() > deadline {
                bail!("dumpcap did not start capturing on {ifname} in {ns}:\n{}", process.log());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        // Said is not yet done on a loaded machine: give the capture a moment to be live.
        std::thread::sleep(std::time::Duration::from_millis(500));
        let before = link_counters(ns, ifname)?;
        Ok(Capture { process, path, ns: ns.into(), ifname: ifname.into(), before })
    }

    /// Stops the capture (SIGINT: dumpcap writes out what it has) and returns the file, after
    /// checking that it holds as many frames as the interface sent and received meanwhile.
    pub fn finish(self) -> anyhow::Result<std::path::PathBuf> {
        let after = link_counters(&self.ns, &self.ifname)?;
        std::thread::sleep(std::time::Duration::from_millis(200));
        self.process.signal(nix::sys::signal::Signal::SIGINT)?;
        if self.process.wait_timeout(std::time::Duration::from_secs(10))?.is_none() {
            bail!("dumpcap did not stop within 10 s:\n{}", self.process.log());
        }
        let crossed = (after.rx_packets + after.tx_packets)
            - (self.before.rx_packets + self.before.tx_packets);
        let (captured, _) = capture_frames(&self.path, "frame")?;
        if captured != crossed {
            bail!(
                "the capture on {} in {} holds {captured} frames where the interface counted \
                 {crossed}: not a complete record of the wire\n{}",
                self.ifname,
                self.ns,
                self.process.log()
            );
        }
        Ok(self.path)
    }
}

/// (frames, bytes) of a capture's frames that match a tshark display filter (`frame.len`:
/// the frame as captured, FCS excluded).
pub fn capture_frames(pcap: &std::path::Path, filter: &str) -> anyhow::Result<(u64, u64)> {
    let out = std::process::Command::new("tshark")
        .args(["-n", "-r"])
        .arg(pcap)
        .args(["-Y", filter, "-T", "fields", "-e", "frame.len"])
        .output()
        .context("running tshark")?;
    if !out.status.success() {
        bail!("tshark -Y {filter}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut n = (0, 0);
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let len: u64 = l.trim().parse().with_context(|| format!("frame.len {l:?}"))?;
        n = (n.0 + 1, n.1 + len);
    }
    Ok(n)
}
