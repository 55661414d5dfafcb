//! The traffic generator: raw Ethernet frames written to one interface through an AF_PACKET
//! socket, in batches with sendmmsg(2), paced to an offered rate or as fast as it goes. Frames
//! carry their own source MACs and addresses, so one veth carries many clients.

use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// Frames per sendmmsg call. At 100 kpps a batch is 320 µs of traffic: coarse enough that the
/// pacing sleeps are not all timer overhead, fine enough that the rate is smooth.
const BATCH: usize = 32;
/// Consecutive failed sendmmsg calls (the veth's queue full) before giving up.
const MAX_STALLS: u32 = 100_000;

pub struct Blaster {
    fd: OwnedFd,
}

/// What one `send` did.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    /// Frames the kernel accepted (sendmmsg's count): the generator's own count.
    pub frames: u64,
    pub elapsed: Duration,
    /// System time of the sending thread: the syscalls, and the softirq work (veth, XDP, the
    /// stack, packet taps) that the kernel ran in this thread's context on the way. The
    /// generator's own user time (building batches) is left out.
    pub thread_sys: Duration,
    /// sendmmsg calls that failed (ENOBUFS and the like) and were retried.
    pub stalls: u64,
}

impl Sent {
    pub fn rate(&self) -> f64 {
        self.frames as f64 / self.elapsed.as_secs_f64()
    }
}

impl Blaster {
    /// A packet socket bound to `ifname` in namespace `ns`. It bypasses the qdisc (as pktgen
    /// and trafgen do): the frames go straight to the driver, the path under test.
    pub fn open(ns: &str, ifname: &str) -> Result<Blaster> {
        lab::in_netns(ns, || open_here(ifname))?
            .with_context(|| format!("packet socket on {ns}/{ifname}"))
    }

    /// Sends `count` frames, cycling through `frames`, at `rate` frames per second (None: as
    /// fast as possible). Retries what the kernel refused, so `Sent::frames == count` unless it
    /// stalls for good.
    pub fn send(&self, frames: &[Vec<u8>], count: u64, rate: Option<u64>) -> Result<Sent> {
        if frames.is_empty() {
            bail!("no frames to send");
        }
        let sys_start = thread_sys()?;
        let start = Instant::now();
        let mut sent: u64 = 0;
        let mut stalls: u64 = 0;
        let mut consecutive: u32 = 0;
        let mut iov: Vec<libc::iovec> = Vec::with_capacity(BATCH);
        let mut msgs: Vec<libc::mmsghdr> = Vec::with_capacity(BATCH);
        while sent < count {
            let mut want = (count - sent).min(BATCH as u64);
            if let Some(rate) = rate {
                let due = due_by(start.elapsed(), rate).min(count);
                if due <= sent {
                    std::thread::sleep(until_next(sent + want, rate, start.elapsed()));
                    continue;
                }
                want = want.min(due - sent);
            }
            iov.clear();
            msgs.clear();
            for k in 0..want {
                let f = &frames[((sent + k) % frames.len() as u64) as usize];
                iov.push(libc::iovec {
                    iov_base: f.as_ptr() as *mut libc::c_void,
                    iov_len: f.len(),
                });
            }
            for v in iov.iter_mut() {
                // SAFETY: an all-zero mmsghdr is valid (no name, no control data).
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = v;
                m.msg_hdr.msg_iovlen = 1;
                msgs.push(m);
            }
            // SAFETY: `msgs` holds `want` headers, each pointing at one iovec in `iov`, which
            // points into `frames`; all outlive the call, and the kernel only reads them.
            let n = unsafe {
                libc::sendmmsg(self.fd.as_raw_fd(), msgs.as_mut_ptr(), msgs.len() as u32, 0)
            };
            if n <= 0 {
                let err = std::io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR) => {
                        stalls += 1;
                        consecutive += 1;
                        if consecutive > MAX_STALLS {
                            bail!("sendmmsg kept failing after {sent} frames: {err}");
                        }
                        std::thread::yield_now();
                        continue;
                    }
                    _ => return Err(err).context(format!("sendmmsg after {sent} frames")),
                }
            }
            consecutive = 0;
            sent += n as u64;
        }
        Ok(Sent {
            frames: sent,
            elapsed: start.elapsed(),
            thread_sys: thread_sys()?.saturating_sub(sys_start),
            stalls,
        })
    }
}

/// Frames due `elapsed` after the start at `rate` frames per second.
fn due_by(elapsed: Duration, rate: u64) -> u64 {
    (elapsed.as_nanos() * u128::from(rate) / 1_000_000_000) as u64
}

/// How long until frame number `frame` is due (zero if it already is).
fn until_next(frame: u64, rate: u64, elapsed: Duration) -> Duration {
    let at = Duration::from_nanos((u128::from(frame) * 1_000_000_000 / u128::from(rate)) as u64);
    at.saturating_sub(elapsed)
}

fn thread_sys() -> Result<Duration> {
    // SAFETY: an all-zero rusage is valid, and getrusage only writes into it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_THREAD reports the calling thread.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrusage(RUSAGE_THREAD)");
    }
    let t = usage.ru_stime;
    Ok(Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64))
}

fn open_here(ifname: &str) -> Result<Blaster> {
    let cname = std::ffi::CString::new(ifname)?;
    // SAFETY: plain syscalls on values we own; the returned fd is checked before use.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if index == 0 {
        return Err(std::io::Error::last_os_error()).context(format!("no interface {ifname}"));
    }
    // Protocol 0: a send-only socket, it receives nothing (no copy of the traffic comes back).
    // SAFETY: as above.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error()).context("socket(AF_PACKET)");
    }
    // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid starting point.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = index as i32;
    // SAFETY: `addr` is a properly sized sockaddr_ll for this AF_PACKET socket.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context(format!("bind to {ifname}"));
    }
    set_int(&fd, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, 1).context("PACKET_QDISC_BYPASS")?;
    set_int(&fd, libc::SOL_SOCKET, libc::SO_SNDBUF, 4 << 20).context("SO_SNDBUF")?;
    Ok(Blaster { fd })
}

fn set_int(fd: &OwnedFd, level: i32, name: i32, value: i32) -> std::io::Result<()> {
    // SAFETY: `value` is an int, as these options expect, and lives across the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<i32>() as u32,
        )
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_schedule() {
        // 100 kpps: one frame every 10 µs.
        assert_eq!(due_by(Duration::from_millis(1), 100_000), 100);
        assert_eq!(due_by(Duration::from_secs(10), 100_000), 1_000_000);
        assert_eq!(
            until_next(132, 100_000, Duration::from_micros(1000)),
            Duration::from_micros(320)
        );
        assert_eq!(until_next(10, 100_000, Duration::from_secs(1)), Duration::ZERO);
    }
}
