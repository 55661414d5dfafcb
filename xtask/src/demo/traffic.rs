//! What the household does on the wire: an HTTP server on the lab's internet (downloads of a
//! requested size, uploads of any size), the devices' requests to it, and the steady
//! background traffic (the TV streams video, the laptop browses).

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use lab::{UdpReceiver, in_netns};

/// Plain HTTP/1.0 on the lab's servers: `GET /bytes/N` answers N bytes, `POST` reads the
/// body it announces and answers `201`. One thread per connection; stops with `stop`.
fn start_http_server(ns: &str, addr: SocketAddr, stop: Arc<AtomicBool>) -> Result<JoinHandle<()>> {
    let listener = in_netns(ns, || TcpListener::bind(addr))?
        .with_context(|| format!("listening on {addr} in {ns}"))?;
    // Non-blocking accept, so the thread notices `stop` (a blocked accept never would).
    listener.set_nonblocking(true)?;
    Ok(std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((conn, _)) => {
                    std::thread::spawn(move || {
                        let _ = serve(conn);
                    });
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }))
}

fn serve(mut conn: TcpStream) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let body_start = loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if head.len() > 16 * 1024 {
            return Ok(());
        }
    };
    let text = String::from_utf8_lossy(&head[..body_start]).into_owned();
    let request_line = text.lines().next().unwrap_or_default();
    let mut words = request_line.split_whitespace();
    let (method, path) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
    if method == "POST" {
        let length: usize = text
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim().eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        let mut received = head.len() - body_start;
        while received < length {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                break;
            }
            received += n;
        }
        conn.write_all(
            format!("HTTP/1.0 201 Created\r\nContent-Length: 0\r\n\r\nreceived {received}")
                .as_bytes(),
        )?;
        return Ok(());
    }
    let size: usize = path.strip_prefix("/bytes/").and_then(|n| n.parse().ok()).unwrap_or(0);
    conn.write_all(format!("HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n").as_bytes())?;
    let chunk = vec![0x5a_u8; 16 * 1024];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len());
        conn.write_all(&chunk[..n])?;
        left -= n;
    }
    Ok(())
}

fn connect(ns: &str, to: SocketAddr) -> Result<TcpStream> {
    let conn = in_netns(ns, || TcpStream::connect_timeout(&to, Duration::from_secs(3)))?
        .with_context(|| format!("connecting to {to} from {ns}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(conn)
}

/// `GET /bytes/<size>` with `Host: host` from inside `ns`; returns the body's length.
pub fn http_download(ns: &str, to: SocketAddr, host: &str, size: usize) -> Result<usize> {
    let mut conn = connect(ns, to)?;
    conn.write_all(
        format!("GET /bytes/{size} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: gwdemo\r\n\r\n")
            .as_bytes(),
    )?;
    let mut answer = Vec::with_capacity(size + 256);
    conn.read_to_end(&mut answer).with_context(|| format!("downloading from {host} ({to})"))?;
    let body = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| answer.len() - i - 4)
        .with_context(|| format!("{host} ({to}) sent no HTTP answer"))?;
    Ok(body)
}

/// A paced upload: `POST` of `size` bytes at about `bytes_per_second`, from inside `ns`, on
/// its own thread; `sent` counts the body bytes written so far.
pub struct Upload {
    pub sent: Arc<AtomicU64>,
    pub size: u64,
    thread: Option<JoinHandle<Result<()>>>,
}

impl Upload {
    pub fn start(
        ns: &str,
        to: SocketAddr,
        host: &str,
        size: u64,
        bytes_per_second: u64,
        stop: Arc<AtomicBool>,
    ) -> Result<Upload> {
        let mut conn = connect(ns, to)?;
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        let head = format!(
            "POST /photos/backup HTTP/1.0\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n"
        );
        let thread = std::thread::spawn(move || -> Result<()> {
            conn.write_all(head.as_bytes())?;
            const CHUNK: u64 = 32 * 1024;
            let chunk = vec![0xa5_u8; CHUNK as usize];
            let started = Instant::now();
            let mut done = 0;
            while done < size {
                if stop.load(Ordering::Relaxed) {
                    bail!("interrupted");
                }
                let n = CHUNK.min(size - done);
                conn.write_all(&chunk[..n as usize])?;
                done += n;
                counter.store(done, Ordering::Relaxed);
                // Paced against the start, so that scheduling delays do not add up.
                let due = Duration::from_secs_f64(done as f64 / bytes_per_second as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            let mut answer = String::new();
            conn.read_to_string(&mut answer)?;
            if !answer.starts_with("HTTP/1.0 201") {
                bail!("the upload server answered {answer:?}");
            }
            Ok(())
        });
        Ok(Upload { sent, size, thread: Some(thread) })
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    pub fn join(mut self) -> Result<()> {
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| anyhow::anyhow!("the upload thread panicked"))?,
            None => Ok(()),
        }
    }
}

/// The lab's servers and the steady background traffic, until dropped.
pub struct Background {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Background {
    pub fn new(stop: Arc<AtomicBool>) -> Background {
        Background { stop, threads: Vec::new() }
    }

    /// An HTTP server (see [`start_http_server`]) on `addr` in `ns`.
    pub fn serve_http(&mut self, ns: &str, addr: SocketAddr) -> Result<()> {
        self.threads.push(start_http_server(ns, addr, self.stop.clone())?);
        Ok(())
    }

    /// A video stream over UDP: every 100 ms the server sends `datagrams` × 1200 B, the client
    /// answers with one small acknowledgement (as QUIC does), both on fixed ports.
    pub fn stream(
        &mut self,
        server_ns: &str,
        server: SocketAddr,
        client_ns: &str,
        client: SocketAddr,
        datagrams: usize,
    ) -> Result<()> {
        let server = UdpReceiver::bind(server_ns, server)?;
        let client = UdpReceiver::bind(client_ns, client)?;
        let stop = self.stop.clone();
        self.threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = server.reply(client.addr(), datagrams, 1200);
                let _ = client.reply(server.addr(), 1, 80);
                std::thread::sleep(Duration::from_millis(100));
            }
        }));
        Ok(())
    }

    /// Web browsing: a download of `size` bytes every `every`.
    pub fn browse(
        &mut self,
        ns: &str,
        to: SocketAddr,
        host: &'static str,
        size: usize,
        every: Duration,
    ) {
        let (stop, ns) = (self.stop.clone(), ns.to_string());
        self.threads.push(std::thread::spawn(move || {
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if Instant::now() >= next {
                    let _ = http_download(&ns, to, host, size);
                    next += every;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }));
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
