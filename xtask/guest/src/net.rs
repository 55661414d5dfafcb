//! The guest's interfaces (made with busybox `ip`) and the AF_PACKET sockets that put frames on
//! them. IPv6 is off on them and they have no addresses, so nothing but the checker's frames
//! crosses them and the counts can be compared exactly.

use std::{
    fs,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// Where the sensor attaches, and the client's end of the wire.
pub(crate) struct Lan {
    pub(crate) sensor: String,
    pub(crate) sensor_mac: [u8; 6],
    pub(crate) client: String,
    /// Interfaces to delete afterwards.
    made: Vec<String>,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn no_ipv6(iface: &str) {
    // Absent when the kernel has no IPv6: then there is nothing to silence.
    let _ = fs::write(format!("/proc/sys/net/ipv6/conf/{iface}/disable_ipv6"), "1");
}

/// A veth pair `a`/`b`. busybox's `ip` drops the peer's name (the kernel calls it vethN), so
/// the peer is found by its ifindex and renamed.
fn veth_pair(a: &str, b: &str) -> Result<()> {
    ip(&["link", "add", a, "type", "veth"])?;
    let iflink = fs::read_to_string(format!("/sys/class/net/{a}/iflink"))?;
    let peer = fs::read_dir("/sys/class/net")?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| {
            fs::read_to_string(format!("/sys/class/net/{n}/ifindex")).ok().as_deref()
                == Some(iflink.as_str())
        })
        .with_context(|| format!("the peer of {a}"))?;
    ip(&["link", "set", "dev", &peer, "name", b])?;
    for i in [a, b] {
        no_ipv6(i);
    }
    Ok(())
}

fn up(iface: &str) -> Result<()> {
    ip(&["link", "set", "dev", iface, "up"])
}

fn mac(iface: &str) -> Result<[u8; 6]> {
    let text = fs::read_to_string(format!("/sys/class/net/{iface}/address"))?;
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = text.trim().split(':').collect();
    if parts.len() != 6 {
        bail!("{iface}: address {text:?}");
    }
    for (b, p) in mac.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16)?;
    }
    Ok(mac)
}

/// The sensor on `lan0`, the client on its peer `cli0`.
pub(crate) fn veth() -> Result<Lan> {
    clear();
    veth_pair("lan0", "cli0")?;
    up("lan0")?;
    up("cli0")?;
    Ok(Lan {
        sensor: "lan0".into(),
        sensor_mac: mac("lan0")?,
        client: "cli0".into(),
        made: vec!["lan0".into()],
    })
}

/// The sensor on `br-lan` (STP off, so its port forwards at once), the client behind `port0`.
pub(crate) fn bridge() -> Result<Lan> {
    clear();
    ip(&["link", "add", "br-lan", "type", "bridge"])?;
    no_ipv6("br-lan");
    veth_pair("port0", "cli0")?;
    ip(&["link", "set", "dev", "port0", "master", "br-lan"])?;
    for i in ["br-lan", "port0", "cli0"] {
        up(i)?;
    }
    // Frames reaching a port before it forwards are dropped; with STP off it forwards as soon
    // as its carrier is up.
    const BR_STATE_FORWARDING: &str = "3";
    let state = "/sys/class/net/port0/brport/state";
    let deadline = Instant::now() + Duration::from_secs(10);
    while fs::read_to_string(state)?.trim() != BR_STATE_FORWARDING {
        if Instant::now() > deadline {
            bail!(
                "port0 of br-lan not forwarding after 10 s ({state}: {})",
                fs::read_to_string(state)?.trim()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Lan {
        sensor: "br-lan".into(),
        sensor_mac: mac("br-lan")?,
        client: "cli0".into(),
        made: vec!["port0".into(), "br-lan".into()],
    })
}

/// Removes what an earlier check may have left behind (a failed setup).
fn clear() {
    for i in ["lan0", "port0", "br-lan"] {
        let _ = ip(&["link", "del", i]);
    }
}

pub(crate) fn teardown(lan: &Lan) {
    for i in &lan.made {
        let _ = ip(&["link", "del", i]);
    }
}

/// A raw AF_PACKET socket bound to one interface: frames sent through it leave through the
/// interface's qdisc (so through TC egress) exactly as written.
pub(crate) struct PacketSocket {
    fd: libc::c_int,
    ifindex: libc::c_int,
}

impl PacketSocket {
    pub(crate) fn new(iface: &str) -> Result<PacketSocket> {
        let ifindex: libc::c_int =
            fs::read_to_string(format!("/sys/class/net/{iface}/ifindex"))?.trim().parse()?;
        // SAFETY: plain socket(2); protocol 0 receives nothing.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if fd < 0 {
            bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
        }
        Ok(PacketSocket { fd, ifindex })
    }

    pub(crate) fn send(&self, frame: &[u8]) -> Result<()> {
        // SAFETY: sockaddr_ll is plain old data; zeroed is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = self.ifindex;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: frame and addr outlive the call; the lengths are theirs.
        let n = unsafe {
            libc::sendto(
                self.fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n != frame.len() as isize {
            bail!("sending a {}-byte frame: {}", frame.len(), std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for PacketSocket {
    fn drop(&mut self) {
        // SAFETY: fd is ours and closed once.
        unsafe { libc::close(self.fd) };
    }
}
