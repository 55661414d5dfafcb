//! Traffic of known shape between lab hosts, and reaching servers inside a namespace from the
//! host.

use std::{
    net::{Ipv6Addr, Shutdown, SocketAddr, SocketAddrV6, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::netns::in_netns;

/// Sends `count` UDP datagrams of `payload` bytes from `from` (bound there, so the remote
/// port the sensor sees is known) to `to`, inside namespace `ns`. Bind the receiver first:
/// a datagram to a closed port makes the receiver answer with ICMP port-unreachable, which
/// the sensor would count too.
pub fn send_udp(
    ns: &str,
    from: SocketAddr,
    to: SocketAddr,
    count: usize,
    payload: usize,
) -> anyhow::Result<()> {
    in_netns(ns, || -> anyhow::Result<()> {
        let sock = UdpSocket::bind(from).with_context(|| format!("binding UDP {from} in {ns}"))?;
        // A device's discovery broadcasts (255.255.255.255) need it; harmless otherwise.
        sock.set_broadcast(true).with_context(|| format!("allowing broadcast from {from}"))?;
        let buf: Vec<u8> = (0..payload).map(|i| (i % 251) as u8).collect();
        for _ in 0..count {
            let n = sock
                .send_to(&buf, to)
                .with_context(|| format!("sending UDP {from} -> {to} in {ns}"))?;
            if n != payload {
                bail!("short UDP send {from} -> {to}: {n} of {payload} bytes");
            }
        }
        Ok(())
    })?
}

/// Sends `count` ICMPv6 messages of `icmp_type` (code 0, `body` bytes after the 4-byte header;
/// the kernel fills in the checksum) from `from` to `to` (a link-scoped group needs the
/// interface: `to`'s scope id) inside namespace `ns`: a device's router solicitations (133 to
/// ff02::2) and MLDv2 reports (143 to ff02::16) without waiting for the kernel to send them.
pub fn send_icmpv6(
    ns: &str,
    from: Ipv6Addr,
    to: SocketAddrV6,
    icmp_type: u8,
    count: usize,
    body: usize,
) -> anyhow::Result<()> {
    use nix::sys::socket::{
        AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn6, bind, sendto,
        socket,
    };
    use std::os::fd::AsRawFd as _;
    in_netns(ns, || -> anyhow::Result<()> {
        let fd = socket(
            AddressFamily::Inet6,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::IcmpV6,
        )
        .with_context(|| format!("opening a raw ICMPv6 socket in {ns}"))?;
        bind(fd.as_raw_fd(), &SockaddrIn6::from(SocketAddrV6::new(from, 0, 0, 0)))
            .with_context(|| format!("binding ICMPv6 to {from} in {ns}"))?;
        let mut msg = vec![0u8; 4 + body];
        msg[0] = icmp_type;
        for _ in 0..count {
            let n = sendto(fd.as_raw_fd(), &msg, &SockaddrIn6::from(to), MsgFlags::empty())
                .with_context(|| {
                    format!("sending ICMPv6 type {icmp_type} {from} -> {to} in {ns}")
                })?;
            if n != msg.len() {
                bail!("short ICMPv6 send {from} -> {to}: {n} of {} bytes", msg.len());
            }
        }
        Ok(())
    })?
}

/// A UDP socket bound inside a namespace that counts what arrives, on a background thread,
/// so tests can confirm the traffic they sent really crossed the gateway (and a count
/// mismatch in the sensor is not just a lost datagram).
pub struct UdpReceiver {
    addr: SocketAddr,
    sock: UdpSocket,
    datagrams: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpReceiver {
    pub fn bind(ns: &str, addr: SocketAddr) -> anyhow::Result<UdpReceiver> {
        let sock = in_netns(ns, || UdpSocket::bind(addr))?
            .with_context(|| format!("binding UDP {addr} in {ns}"))?;
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        let datagrams = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (d, b, s) = (datagrams.clone(), bytes.clone(), stop.clone());
        let sock_for_thread = sock.try_clone()?;
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !s.load(Ordering::Relaxed) {
                if let Ok(n) = sock_for_thread.recv(&mut buf) {
                    b.fetch_add(n as u64, Ordering::Relaxed);
                    d.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Ok(UdpReceiver { addr, sock, datagrams, bytes, stop, thread: Some(thread) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends `count` datagrams of `payload` bytes to `to` from this socket, as a server
    /// answers from its listening port (so the port is both the upload's destination and
    /// the download's source).
    pub fn reply(&self, to: SocketAddr, count: usize, payload: usize) -> anyhow::Result<()> {
        let buf: Vec<u8> = (0..payload).map(|i| (i % 251) as u8).collect();
        for _ in 0..count {
            let n = self
                .sock
                .send_to(&buf, to)
                .with_context(|| format!("sending UDP {} -> {to}", self.addr))?;
            if n != payload {
                bail!("short UDP send {} -> {to}: {n} of {payload} bytes", self.addr);
            }
        }
        Ok(())
    }

    pub fn datagrams(&self) -> u64 {
        self.datagrams.load(Ordering::Relaxed)
    }

    /// UDP payload bytes received.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Waits until at least `datagrams` have arrived in total; an error says how many did.
    pub fn wait_for(&self, datagrams: u64, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while self.datagrams() < datagrams {
            if Instant::now() >= deadline {
                bail!(
                    "UDP receiver {}: {} of {datagrams} datagrams arrived within {timeout:?}",
                    self.addr,
                    self.datagrams()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

impl Drop for UdpReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A TCP server inside a namespace that accepts every connection and reads what arrives,
/// never answering: a client's first flight (its ClientHello) goes out, nothing comes back.
/// Connections stay open until the sink is dropped.
pub struct TcpSink {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TcpSink {
    pub fn start(ns: &str, addr: SocketAddr) -> anyhow::Result<TcpSink> {
        let listener = in_netns(ns, || TcpListener::bind(addr))?
            .with_context(|| format!("binding TCP {addr} in {ns}"))?;
        listener.set_nonblocking(true)?;
        let accepted = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (accepted.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            use std::io::Read as _;
            let mut open: Vec<TcpStream> = Vec::new();
            let mut buf = vec![0u8; 65536];
            while !s.load(Ordering::Relaxed) {
                while let Ok((conn, _)) = listener.accept() {
                    if conn.set_nonblocking(true).is_ok() {
                        a.fetch_add(1, Ordering::Relaxed);
                        open.push(conn);
                    }
                }
                // Drain what clients send, so their windows never close.
                open.retain_mut(|c| !matches!(c.read(&mut buf), Ok(0)));
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Ok(TcpSink { addr, accepted, stop, thread: Some(thread) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for TcpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Forwards TCP connections accepted on a host address to a server inside a namespace, e.g.
/// to make the agent's /metrics (on the gateway's loopback) reachable from the host.
pub struct TcpForwarder {
    local: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl TcpForwarder {
    /// Listens on `listen` in the caller's namespace; each connection is relayed to `target`
    /// as connected from inside `ns`.
    pub fn start(listen: SocketAddr, ns: &str, target: SocketAddr) -> anyhow::Result<TcpForwarder> {
        let listener =
            TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
        let local = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let ns = ns.to_string();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let upstream = match in_netns(&ns, || {
                    TcpStream::connect_timeout(&target, Duration::from_secs(2))
                }) {
                    Ok(Ok(u)) => u,
                    _ => continue, // dropping `client` closes it: the caller sees a refused-like EOF
                };
                let _ = relay(client, upstream);
            }
        });
        Ok(TcpForwarder { local, stop })
    }

    /// The address actually listened on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for TcpForwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect_timeout(&self.local, Duration::from_millis(200)); // wake accept()
    }
}

fn relay(a: TcpStream, b: TcpStream) -> std::io::Result<()> {
    let (mut a2, mut b2) = (a.try_clone()?, b.try_clone()?);
    let (mut a1, mut b1) = (a, b);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut a1, &mut b1);
        let _ = b1.shutdown(Shutdown::Write);
    });
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut b2, &mut a2);
        let _ = a2.shutdown(Shutdown::Write);
    });
    Ok(())
}

/// Sends `bytes` over one TCP connection from namespace `client_ns` to a server this starts
/// at `to` in `server_ns`, which reads to the end and closes. Returns once the client has seen
/// the server close too, so the whole connection (handshake, data, both FINs) has been sent
/// but for the client's last ACK, already on its way.
pub fn tcp_upload(
    client_ns: &str,
    server_ns: &str,
    to: SocketAddr,
    bytes: usize,
) -> anyhow::Result<()> {
    use std::io::{Read as _, Write as _};
    let listener = in_netns(server_ns, || TcpListener::bind(to))?
        .with_context(|| format!("listening on {to} in {server_ns}"))?;
    let server = std::thread::spawn(move || -> anyhow::Result<usize> {
        let (mut conn, _) = listener.accept()?;
        let mut got = Vec::new();
        conn.read_to_end(&mut got)?;
        Ok(got.len())
    });
    let mut conn = in_netns(client_ns, || TcpStream::connect_timeout(&to, Duration::from_secs(5)))?
        .with_context(|| format!("connecting to {to} from {client_ns}"))?;
    let data: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
    conn.write_all(&data).with_context(|| format!("sending {bytes} bytes to {to}"))?;
    conn.shutdown(Shutdown::Write)?;
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest)?;
    let received = server.join().map_err(|_| anyhow::anyhow!("the TCP server panicked"))??;
    if received != bytes {
        bail!("the server at {to} received {received} of {bytes} bytes");
    }
    Ok(())
}
