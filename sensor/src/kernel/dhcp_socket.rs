//! Clients' DHCP requests, captured on the LAN interface for device fingerprints
//! ([`crate::enrich::dhcp`]): a packet socket with a classic BPF filter, so that the kernel
//! hands up only UDP to port 67 (DHCPv4 servers) and 547 (DHCPv6 servers) and every other
//! packet costs one short filter run; read with tokio, at most [`MAX_PER_SECOND`] frames a
//! second.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Instant,
};

use tokio::{io::unix::AsyncFd, sync::mpsc};
use tracing::warn;

use super::error::KernelError;

/// Frames handed on per second at most (a burst of as many is allowed): a household's
/// clients send a few requests a minute; a flood costs the agent no more than this.
pub const MAX_PER_SECOND: u32 = 50;
/// Longest frame read: a DHCP request fits an Ethernet MTU.
const SNAP: usize = 1600;
/// Frames read before the reader lets other tasks run.
const BATCH: usize = 64;

/// One captured frame, from its Ethernet header on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame(pub Vec<u8>);

/// What happened to captured frames besides being handed on, for the caller's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Over [`MAX_PER_SECOND`].
    RateLimited,
    /// The consumer's queue was full.
    QueueFull,
}

/// `struct sock_filter` instructions (linux/filter.h): codes from linux/bpf_common.h.
const fn insn(code: u32, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code: code as u16, jt, jf, k }
}

/// The socket filter, on whole Ethernet frames (SOCK_RAW): untagged IPv4 UDP to port 67 that
/// is not a later fragment, or IPv6 UDP (no extension header) to port 547; at most [`SNAP`]
/// bytes of those are kept, nothing of anything else. Jumps count the instructions skipped.
#[rustfmt::skip]
const FILTER: [libc::sock_filter; 16] = {
    use libc::{BPF_ABS, BPF_B, BPF_H, BPF_IND, BPF_JEQ, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_LDX, BPF_MSH, BPF_RET};
    [
        /* 0 */ insn(BPF_LD | BPF_H | BPF_ABS, 0, 0, 12),         // ethertype
        /* 1 */ insn(BPF_JMP | BPF_JEQ | BPF_K, 0, 7, 0x0800),    // IPv4, else 9
        /* 2 */ insn(BPF_LD | BPF_B | BPF_ABS, 0, 0, 14 + 9),     // IPv4 protocol
        /* 3 */ insn(BPF_JMP | BPF_JEQ | BPF_K, 0, 11, 17),       // UDP, else drop
        /* 4 */ insn(BPF_LD | BPF_H | BPF_ABS, 0, 0, 14 + 6),     // flags, fragment offset
        /* 5 */ insn(BPF_JMP | BPF_JSET | BPF_K, 9, 0, 0x1fff),   // a later fragment: drop
        /* 6 */ insn(BPF_LDX | BPF_B | BPF_MSH, 0, 0, 14),        // X = IPv4 header length
        /* 7 */ insn(BPF_LD | BPF_H | BPF_IND, 0, 0, 14 + 2),     // UDP destination port
        /* 8 */ insn(BPF_JMP | BPF_JEQ | BPF_K, 5, 6, 67),        // keep, else drop
        /* 9 */ insn(BPF_JMP | BPF_JEQ | BPF_K, 0, 5, 0x86dd),    // IPv6, else drop
        /* 10 */ insn(BPF_LD | BPF_B | BPF_ABS, 0, 0, 14 + 6),    // next header
        /* 11 */ insn(BPF_JMP | BPF_JEQ | BPF_K, 0, 3, 17),       // UDP, else drop
        /* 12 */ insn(BPF_LD | BPF_H | BPF_ABS, 0, 0, 14 + 40 + 2), // UDP destination port
        /* 13 */ insn(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, 547),      // keep, else drop
        /* 14 */ insn(BPF_RET | BPF_K, 0, 0, SNAP as u32),        // keep
        /* 15 */ insn(BPF_RET | BPF_K, 0, 0, 0),                  // drop
    ]
};

/// Opens the capture on `ifindex`: the filter is attached before the socket is bound, so no
/// unfiltered frame is ever queued.
fn open(interface: &str, ifindex: u32) -> Result<OwnedFd, KernelError> {
    let fail = |doing: &'static str| {
        let source = io::Error::last_os_error();
        KernelError::DhcpCapture { doing, interface: interface.to_string(), source }
    };
    // Protocol 0: receives nothing until bound with a protocol.
    // SAFETY: plain socket(2).
    let fd = unsafe {
        libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0)
    };
    if fd < 0 {
        return Err(fail("opening a packet socket"));
    }
    // SAFETY: a new fd, owned from here on.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let program = FILTER;
    let prog = libc::sock_fprog { len: program.len() as u16, filter: program.as_ptr().cast_mut() };
    // SAFETY: the program outlives the call (the kernel copies it).
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&prog as *const libc::sock_fprog).cast(),
            size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(fail("attaching the socket filter"));
    }
    // SAFETY: a zeroed sockaddr_ll is valid; the fields set are the ones bind reads.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: addr is a sockaddr_ll of the size given.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(fail("binding the packet socket"));
    }
    Ok(fd)
}

/// Counts `MAX_PER_SECOND` frames a second, with a burst of as many.
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new() -> Bucket {
        Bucket { tokens: f64::from(MAX_PER_SECOND), last: Instant::now() }
    }

    fn take(&mut self, now: Instant) -> bool {
        let per_second = f64::from(MAX_PER_SECOND);
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * per_second;
        self.tokens = (self.tokens + refill).min(per_second);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Captures clients' DHCP requests on `interface` and hands each frame on; frames over the
/// rate or that the consumer has no room for are dropped and told to `on_drop`. Frames the
/// router sends itself are skipped (a DHCP client of its own on the LAN).
pub fn spawn_reader(
    interface: &str,
    ifindex: u32,
    tx: mpsc::Sender<Frame>,
    on_drop: impl Fn(Dropped) + Send + 'static,
) -> Result<tokio::task::JoinHandle<()>, KernelError> {
    let fd = open(interface, ifindex)?;
    // SAFETY: the AsyncFd owns the socket and keeps it open while it is registered.
    let fd = unsafe { AsyncFd::register(fd) }.map_err(|source| KernelError::DhcpCapture {
        doing: "watching the packet socket",
        interface: interface.to_string(),
        source: source.into(),
    })?;
    let interface = interface.to_string();
    Ok(tokio::spawn(async move {
        let mut bucket = Bucket::new();
        let mut buf = vec![0u8; SNAP];
        loop {
            let mut guard = match fd.readable().await {
                Ok(guard) => guard,
                Err(e) => {
                    warn!(interface, "DHCP capture: {e}; device fingerprints stop");
                    return;
                }
            };
            // A batch at a time, then the other tasks' turn: a flood of DHCP frames (each
            // read, most dropped by the rate) must not hold this worker thread.
            for _ in 0..BATCH {
                match receive(fd.get_ref(), &mut buf) {
                    Ok(Some(len)) => {
                        if !bucket.take(Instant::now()) {
                            on_drop(Dropped::RateLimited);
                        } else if tx.try_send(Frame(buf[..len.min(SNAP)].to_vec())).is_err() {
                            on_drop(Dropped::QueueFull);
                        }
                    }
                    Ok(None) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        guard.clear_ready();
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        warn!(interface, "DHCP capture: {e}; device fingerprints stop");
                        return;
                    }
                }
            }
            drop(guard);
            tokio::task::yield_now().await;
        }
    }))
}

/// One frame into `buf`: its length, or `None` for a frame this host sent.
fn receive(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: a zeroed sockaddr_ll is valid for recvfrom to fill.
    let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    let mut from_len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: buf and from are valid for the sizes given.
    let n = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            0,
            (&mut from as *mut libc::sockaddr_ll).cast(),
            &mut from_len,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((from.sll_pkttype != libc::PACKET_OUTGOING).then_some(n as usize))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_rate_is_bounded() {
        let mut b = Bucket::new();
        let t = Instant::now();
        let passed = (0..200).filter(|_| b.take(t)).count();
        assert_eq!(passed, MAX_PER_SECOND as usize, "a burst of one second's worth");
        assert!(b.take(t + Duration::from_millis(40)), "refilled at 50/s: two in 40 ms");
        assert!(b.take(t + Duration::from_millis(40)));
        assert!(!b.take(t + Duration::from_millis(40)));
    }
}
