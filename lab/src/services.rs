//! Real services and clients inside lab namespaces, for the naming tests: DNS queries built by
//! hand (sizes known to the byte), dnsmasq as the LAN's resolver, a tiny HTTP responder, plain
//! TCP exchanges, and external commands (openssl, the agent's CLI) run inside a namespace.
//!
//! Everything stays inside the lab: servers bind lab addresses, clients only talk to them.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::Path,
    process::{Command, Output, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU16, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

use crate::{netns::Lab, netns::in_netns, process::Process};

// ---------------------------------------------------------------------------------------
// DNS client

/// DNS record types the lab asks for.
pub const DNS_A: u16 = 1;
pub const DNS_AAAA: u16 = 28;

/// One DNS exchange over UDP: what was sent and received, to the byte, and the addresses in
/// the answer.
#[derive(Debug, Clone)]
pub struct DnsExchange {
    /// The server the query went to.
    pub server: SocketAddr,
    /// UDP payload bytes of the query.
    pub query_len: usize,
    /// UDP payload bytes of the response.
    pub response_len: usize,
    /// RCODE of the response (0 = no error, 3 = NXDOMAIN).
    pub rcode: u8,
    /// A and AAAA records of the answer section, with their TTLs.
    pub addrs: Vec<(IpAddr, u32)>,
}

static NEXT_DNS_ID: AtomicU16 = AtomicU16::new(0x4d00);

/// The wire form of a standard query (RD set, no EDNS) for `name`/`qtype`, class IN.
pub fn dns_query_bytes(id: u16, name: &str, qtype: u16) -> anyhow::Result<Vec<u8>> {
    let mut q = Vec::with_capacity(18 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00]); // RD
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // QD=1, AN=NS=AR=0
    for label in name.trim_end_matches('.').split('.') {
        ensure!(!label.is_empty() && label.len() < 64, "bad DNS name {name:?}");
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    Ok(q)
}

/// Steps over a (possibly compressed) name at `pos`; returns the position after it.
fn skip_name(msg: &[u8], mut pos: usize) -> anyhow::Result<usize> {
    loop {
        let len = *msg.get(pos).context("DNS name runs past the message")?;
        match len {
            0 => return Ok(pos + 1),
            l if l & 0xc0 == 0xc0 => {
                ensure!(pos + 2 <= msg.len(), "DNS pointer runs past the message");
                return Ok(pos + 2);
            }
            l => pos += 1 + usize::from(l),
        }
    }
}

fn be16(msg: &[u8], pos: usize) -> anyhow::Result<u16> {
    let b = msg.get(pos..pos + 2).context("DNS message cut short")?;
    Ok(u16::from_be_bytes([b[0], b[1]]))
}

/// Parses a response to query `id`: RCODE and the A/AAAA records of the answer section.
pub fn parse_dns_response(id: u16, msg: &[u8]) -> anyhow::Result<(u8, Vec<(IpAddr, u32)>)> {
    ensure!(msg.len() >= 12, "DNS response of {} bytes", msg.len());
    ensure!(be16(msg, 0)? == id, "DNS response for another query");
    ensure!(msg[2] & 0x80 != 0, "not a DNS response");
    let rcode = msg[3] & 0x0f;
    let (qd, an) = (be16(msg, 4)?, be16(msg, 6)?);
    let mut pos = 12;
    for _ in 0..qd {
        pos = skip_name(msg, pos)? + 4;
    }
    let mut addrs = Vec::new();
    for _ in 0..an {
        pos = skip_name(msg, pos)?;
        let rtype = be16(msg, pos)?;
        let ttl_bytes = msg.get(pos + 4..pos + 8).context("DNS record cut short")?;
        let ttl = u32::from_be_bytes(ttl_bytes.try_into().expect("4 bytes"));
        let rdlen = usize::from(be16(msg, pos + 8)?);
        let rdata = msg.get(pos + 10..pos + 10 + rdlen).context("DNS rdata cut short")?;
        match (rtype, rdlen) {
            (DNS_A, 4) => {
                let b: [u8; 4] = rdata.try_into().expect("4 bytes");
                addrs.push((IpAddr::V4(Ipv4Addr::from(b)), ttl));
            }
            (DNS_AAAA, 16) => {
                let b: [u8; 16] = rdata.try_into().expect("16 bytes");
                addrs.push((IpAddr::V6(Ipv6Addr::from(b)), ttl));
            }
            _ => {}
        }
        pos += 10 + rdlen;
    }
    Ok((rcode, addrs))
}

/// Resolves `name` (`qtype` [`DNS_A`] or [`DNS_AAAA`]) with one real DNS query over UDP from
/// inside `ns` to `server`, as a device's stub resolver would: no retry, so exactly one query
/// and one response cross the wire (an error if none arrives within 3 s).
pub fn dns_query(
    ns: &str,
    server: SocketAddr,
    name: &str,
    qtype: u16,
) -> anyhow::Result<DnsExchange> {
    let id = NEXT_DNS_ID.fetch_add(1, Ordering::Relaxed);
    let query = dns_query_bytes(id, name, qtype)?;
    let response = in_netns(ns, || -> anyhow::Result<Vec<u8>> {
        let any: SocketAddr = if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse()?;
        let sock = UdpSocket::bind(any)?;
        sock.connect(server)?;
        sock.set_read_timeout(Some(Duration::from_secs(3)))?;
        sock.send(&query)?;
        let mut buf = vec![0u8; 4096];
        let n = sock.recv(&mut buf)?;
        buf.truncate(n);
        Ok(buf)
    })?
    .with_context(|| format!("DNS query {name} type {qtype} to {server} in {ns}"))?;
    let (rcode, addrs) = parse_dns_response(id, &response)
        .with_context(|| format!("DNS response for {name} from {server}"))?;
    Ok(DnsExchange { server, query_len: query.len(), response_len: response.len(), rcode, addrs })
}

/// Like [`dns_query`], over TCP (RFC 1035 4.2.2: a two-byte length, then the message), as a
/// resolver falls back to when an answer is truncated. One connection, one query; the
/// byte counts are the DNS messages' (without the length prefixes), TCP overhead unknown.
pub fn dns_query_tcp(
    ns: &str,
    server: SocketAddr,
    name: &str,
    qtype: u16,
) -> anyhow::Result<DnsExchange> {
    let id = NEXT_DNS_ID.fetch_add(1, Ordering::Relaxed);
    let query = dns_query_bytes(id, name, qtype)?;
    let response = in_netns(ns, || -> anyhow::Result<Vec<u8>> {
        let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut framed = (query.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&query);
        s.write_all(&framed)?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len)?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut buf)?;
        Ok(buf)
    })?
    .with_context(|| format!("DNS query over TCP {name} type {qtype} to {server} in {ns}"))?;
    let (rcode, addrs) = parse_dns_response(id, &response)
        .with_context(|| format!("DNS response over TCP for {name} from {server}"))?;
    Ok(DnsExchange { server, query_len: query.len(), response_len: response.len(), rcode, addrs })
}

// ---------------------------------------------------------------------------------------
// dnsmasq

/// A DNS record dnsmasq serves (`--address=/name/addr`, which also covers subdomains).
#[derive(Debug, Clone)]
pub struct DnsRecord {
    pub name: String,
    pub addr: IpAddr,
}

impl DnsRecord {
    pub fn new(name: &str, addr: &str) -> DnsRecord {
        DnsRecord {
            name: name.to_string(),
            addr: addr.parse().unwrap_or_else(|e| panic!("{addr}: {e}")),
        }
    }
}

/// Starts dnsmasq as a DNS server only (no DHCP, no upstream, no /etc/hosts) inside `ns`,
/// bound to `listen` alone, answering `records` with TTL `ttl`; pid file and lease file in the
/// lab's directory, log (every query) in the lab's logs. Returns once it answers on every
/// address. Queries for anything else get REFUSED/NXDOMAIN locally, never leave the lab.
pub fn start_dnsmasq(
    lab: &Lab,
    ns: &str,
    listen: &[IpAddr],
    records: &[DnsRecord],
    ttl: u32,
) -> anyhow::Result<Process> {
    ensure!(!listen.is_empty(), "dnsmasq needs an address to listen on");
    let dir = lab.dir();
    let seq = NEXT_DNS_ID.fetch_add(1, Ordering::Relaxed);
    let mut cmd = Command::new("dnsmasq");
    cmd.args([
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--no-poll",
        "--bind-interfaces",
        "--port=53",
        "--user=root",
        "--group=root",
        "--log-facility=-",
        "--log-queries",
    ])
    .arg(format!("--local-ttl={ttl}"))
    .arg(format!("--pid-file={}", dir.join(format!("dnsmasq-{seq}.pid")).display()))
    .arg(format!("--dhcp-leasefile={}", dir.join(format!("dnsmasq-{seq}.leases")).display()));
    for a in listen {
        cmd.arg(format!("--listen-address={a}"));
    }
    for r in records {
        cmd.arg(format!("--address=/{}/{}", r.name, r.addr));
    }
    let p = lab.spawn(ns, cmd).context("starting dnsmasq (apt-get install dnsmasq-base)")?;
    // Ready when it answers on every address; queried from inside `ns`, so over its loopback,
    // never across a lab link (the sensor does not see these probes).
    let probe = records.first().map_or("probe.lab.invalid", |r| r.name.as_str());
    let deadline = Instant::now() + Duration::from_secs(10);
    for a in listen {
        loop {
            if let Some(status) = p.try_wait()? {
                bail!("dnsmasq exited at startup ({status}):\n{}", p.log());
            }
            match dns_query(ns, SocketAddr::new(*a, 53), probe, DNS_A) {
                Ok(_) => break,
                Err(e) if Instant::now() > deadline => {
                    bail!("dnsmasq does not answer on {a}: {e:#}\n{}", p.log())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
    Ok(p)
}

// ---------------------------------------------------------------------------------------
// TCP

/// A minimal HTTP/1.x server inside a namespace: reads each request head, records its Host
/// header, answers `200 OK` with a fixed body and closes the connection.
pub struct HttpResponder {
    addr: SocketAddr,
    ns: String,
    hosts: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpResponder {
    pub fn start(ns: &str, addr: SocketAddr, body: &str) -> anyhow::Result<HttpResponder> {
        let listener = in_netns(ns, || TcpListener::bind(addr))?
            .with_context(|| format!("listening on TCP {addr} in {ns}"))?;
        let hosts = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (hosts.clone(), stop.clone());
        let body = body.to_string();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut head = Vec::new();
                let mut buf = [0u8; 2048];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head);
                if let Some(host) = text.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim().eq_ignore_ascii_case("host").then(|| v.trim().to_string())
                }) {
                    h.lock().unwrap().push(host);
                }
                let response = format!(
                    "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(response.as_bytes());
                let _ = conn.shutdown(Shutdown::Write);
                // Wait for the peer's FIN so that the close is orderly (no RST for unread data).
                let _ = conn.read(&mut buf);
            }
        });
        Ok(HttpResponder { addr, ns: ns.to_string(), hosts, stop, thread: Some(thread) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The Host headers of the requests served so far.
    pub fn hosts(&self) -> Vec<String> {
        self.hosts.lock().unwrap().clone()
    }
}

impl Drop for HttpResponder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake accept() from inside the namespace (over its loopback: no lab link involved).
        let addr = self.addr;
        let _ =
            in_netns(&self.ns, || TcpStream::connect_timeout(&addr, Duration::from_millis(500)));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects from inside `ns` to `to`, writes `request`, half-closes and reads the whole answer
/// (until the server closes). The remote port the sensor sees is `to`'s.
pub fn tcp_exchange(ns: &str, to: SocketAddr, request: &[u8]) -> anyhow::Result<Vec<u8>> {
    tcp_exchange_after(ns, to, Duration::ZERO, request)
}

/// Like [`tcp_exchange`], but waits `pause` between the handshake and the request (a client
/// that connects, then thinks).
pub fn tcp_exchange_after(
    ns: &str,
    to: SocketAddr,
    pause: Duration,
    request: &[u8],
) -> anyhow::Result<Vec<u8>> {
    in_netns(ns, || -> anyhow::Result<Vec<u8>> {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        std::thread::sleep(pause);
        s.write_all(request)?;
        let mut answer = Vec::new();
        s.read_to_end(&mut answer)?;
        Ok(answer)
    })?
    .with_context(|| format!("TCP exchange with {to} from {ns}"))
}

/// Whether something listens on TCP `addr` inside `ns` (as `ss` lists it), without connecting.
pub fn tcp_listening(ns: &str, addr: SocketAddr) -> anyhow::Result<bool> {
    let out = crate::cmd::ip(&["netns", "exec", ns, "ss", "-Hltn"])?;
    let want = addr.to_string();
    Ok(out.split_whitespace().any(|w| w == want))
}

/// Waits until [`tcp_listening`] (a server started as a [`Process`] binding asynchronously).
pub fn wait_tcp_listening(
    ns: &str,
    addr: SocketAddr,
    server: &Process,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !tcp_listening(ns, addr)? {
        if let Some(status) = server.try_wait()? {
            bail!("server exited ({status}) before listening on {addr}:\n{}", server.log());
        }
        if Instant::now() > deadline {
            bail!("nothing listens on TCP {addr} in {ns} after {timeout:?}:\n{}", server.log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Commands

/// Runs `cmd` to completion inside network namespace `ns` (joined with setns before exec, in
/// the host's mount namespace, unlike `ip netns exec`), feeding it `stdin` and capturing its
/// output; killed after `timeout` (an error carrying what it printed).
pub fn output_in_netns(
    ns: &str,
    mut cmd: Command,
    stdin: &[u8],
    timeout: Duration,
) -> anyhow::Result<Output> {
    let desc = format!("{cmd:?}");
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let netns = crate::netns::enter_before_exec(&mut cmd, ns)?;
    let mut child = cmd.spawn().with_context(|| format!("starting {desc} in {ns}"))?;
    drop(netns);
    let mut input = child.stdin.take().expect("piped");
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let reader_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let reader_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let (o, e) =
                (reader_out.join().unwrap_or_default(), reader_err.join().unwrap_or_default());
            bail!(
                "{desc} in {ns} did not finish within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&o),
                String::from_utf8_lossy(&e)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = writer.join();
    Ok(Output {
        status,
        stdout: reader_out.join().unwrap_or_default(),
        stderr: reader_err.join().unwrap_or_default(),
    })
}

/// A self-signed certificate and key (PEM) for `common_name`, written by `openssl req` into
/// `dir` as `<stem>.crt` / `<stem>.key`; returns their paths.
pub fn self_signed_cert(
    dir: &Path,
    stem: &str,
    common_name: &str,
) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let cert = dir.join(format!("{stem}.crt"));
    let key = dir.join(format!("{stem}.key"));
    crate::cmd::run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={common_name}"),
            "-keyout",
            &key.display().to_string(),
            "-out",
            &cert.display().to_string(),
        ],
    )
    .context("generating a test certificate (apt-get install openssl)")?;
    Ok((cert, key))
}

/// A test certificate authority and a server certificate it signed for 127.0.0.1 (subject
/// alternative name IP:127.0.0.1, what Go's and rustls's clients check), written by `openssl`
/// into a directory: for a lab service behind TLS (a secured Alertmanager, the agent's
/// listeners).
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA's certificate (PEM): what a client trusts.
    pub ca: std::path::PathBuf,
    /// The server's certificate and key (PEM).
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

impl TestPki {
    /// Writes `ca.crt`, `server.crt` and `server.key` (and their by-products) into `dir`.
    pub fn create(dir: &Path) -> anyhow::Result<TestPki> {
        let path = |name: &str| dir.join(name).display().to_string();
        let openssl = |args: &[&str]| {
            crate::cmd::run("openssl", args)
                .context("generating a test certificate (apt-get install openssl)")
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let (ca_key, ca) = (path("ca.key"), path("ca.crt"));
        let (key, csr, cert) = (path("server.key"), path("server.csr"), path("server.crt"));
        openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &["-days", "2", "-subj", "/CN=gwsensor test CA", "-keyout", &ca_key, "-out", &ca],
            ]
            .concat(),
        )?;
        openssl(
            &[&["req"][..], &ec, &["-subj", "/CN=127.0.0.1", "-keyout", &key, "-out", &csr]]
                .concat(),
        )?;
        let ext = dir.join("server.ext");
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n\
             extendedKeyUsage=serverAuth\n",
        )
        .with_context(|| format!("writing {}", ext.display()))?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext.display().to_string(),
            "-out",
            &cert,
        ])?;
        Ok(TestPki { ca: ca.into(), cert: cert.into(), key: key.into() })
    }

    /// The CA certificate's PEM text.
    pub fn ca_pem(&self) -> anyhow::Result<Vec<u8>> {
        std::fs::read(&self.ca).with_context(|| format!("reading {}", self.ca.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_wire_form() {
        let q = dns_query_bytes(0x1234, "api.xiaomi.net.", DNS_AAAA).unwrap();
        let mut want = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        want.extend_from_slice(b"\x03api\x06xiaomi\x03net\x00");
        want.extend_from_slice(&[0, 28, 0, 1]);
        assert_eq!(q, want);
        assert!(dns_query_bytes(1, "a..b", DNS_A).is_err());
    }

    #[test]
    fn response_with_compression_cname_a_and_aaaa() {
        let mut r = dns_query_bytes(7, "www.example.org", DNS_A).unwrap();
        r[2] = 0x81; // QR + RD
        r[3] = 0x80; // RA, RCODE 0
        r[7] = 3; // ANCOUNT
        // CNAME www.example.org -> cdn.example.org (compressed), TTL 60
        r.extend_from_slice(&[
            0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 6, 3, b'c', b'd', b'n', 0xc0, 16,
        ]);
        // A cdn.example.org (pointer to the CNAME's target) 10.77.4.12, TTL 300
        let cdn = 12 + 17 + 4 + 12; // offset of "cdn" in the CNAME's rdata
        r.extend_from_slice(&[0xc0, cdn as u8, 0, 1, 0, 1, 0, 0, 1, 44, 0, 4, 10, 77, 4, 12]);
        // AAAA fd77:4::12, TTL 300
        r.extend_from_slice(&[0xc0, cdn as u8, 0, 28, 0, 1, 0, 0, 1, 44, 0, 16]);
        r.extend_from_slice(&"fd77:4::12".parse::<Ipv6Addr>().unwrap().octets());
        let (rcode, addrs) = parse_dns_response(7, &r).unwrap();
        assert_eq!(rcode, 0);
        assert_eq!(
            addrs,
            [(IpAddr::from([10, 77, 4, 12]), 300), ("fd77:4::12".parse().unwrap(), 300)]
        );
        assert!(parse_dns_response(8, &r).is_err(), "another query's id");
        assert!(parse_dns_response(7, &r[..r.len() - 3]).is_err(), "cut short");
    }
}
