//! darkstat (Debian's, libpcap; what OpenWrt and Debian ship for per-host counters) as the
//! second peer: running it in a lab namespace on the LAN interface and reading its counters from
//! its web interface: packets seen and libpcap's drops from the front page, bytes per host from
//! the full hosts table. (The Debian package, 3.0.719, predates darkstat's `/metrics`
//! exporter; the pages hold the same counters.)

use std::{
    collections::BTreeMap,
    net::IpAddr,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use lab::{Lab, Process};
use nix::sys::signal::Signal;

use super::cpu;

/// Where its web interface listens, on the namespace's loopback.
const ADDR: &str = "127.0.0.1";
const PORT: u16 = 8667;

pub struct Darkstat {
    process: Process,
    http: lab::http::Client,
}

/// The counters of the front page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    /// Packets darkstat saw ("in N packets").
    pub packets: u64,
    /// libpcap's statistics: captured, dropped.
    pub captured: u64,
    pub dropped: u64,
}

/// What darkstat counted over a run.
#[derive(Debug, Clone)]
pub struct Counted {
    /// Packets seen during the run.
    pub packets: u64,
    /// libpcap's drops during the run.
    pub dropped: u64,
    /// Bytes sent ("Out") per host, at the end of the run (it started fresh).
    pub out_bytes: BTreeMap<IpAddr, u64>,
}

impl Darkstat {
    /// Starts darkstat in `ns` on `iface` (no promiscuous mode: the frames are addressed to the
    /// gateway; no reverse DNS: nothing to ask in the lab) and waits until its pages answer.
    pub fn start(lab: &Lab, ns: &str, iface: &str) -> Result<Darkstat> {
        let mut cmd = Command::new("darkstat");
        cmd.args(["-i", iface, "--no-daemon", "--no-promisc", "--no-dns", "-b", ADDR])
            .args(["-p", &PORT.to_string()]);
        let process = lab.spawn(ns, cmd)?;
        let d = Darkstat { process, http: lab::http::Client::new(Some(ns)) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = d.process.try_wait()? {
                bail!("darkstat exited at startup ({status}):\n{}", d.process.log());
            }
            if d.totals().is_ok() {
                return Ok(d);
            }
            if Instant::now() > deadline {
                bail!("darkstat not answering after 20 s:\n{}", d.process.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn cpu(&self) -> Result<Duration> {
        cpu::tree_cpu(self.process.pid())
    }

    pub fn totals(&self) -> Result<Totals> {
        let page = self.http.get_ok(&format!("http://{ADDR}:{PORT}/"))?;
        parse_totals(&page).with_context(|| format!("no totals on darkstat's front page:\n{page}"))
    }

    pub fn hosts(&self) -> Result<BTreeMap<IpAddr, u64>> {
        let page = self.http.get_ok(&format!("http://{ADDR}:{PORT}/hosts/?full=yes"))?;
        parse_hosts(&page).context("parsing darkstat's hosts table")
    }

    pub fn stop(self) -> Result<()> {
        self.process.signal(Signal::SIGTERM)?;
        if self.process.wait_timeout(Duration::from_secs(10))?.is_none() {
            bail!("darkstat did not exit 10 s after SIGTERM:\n{}", self.process.log());
        }
        Ok(())
    }
}

/// The number in `<span id="{id}">1,234</span>`.
fn span_number(page: &str, id: &str) -> Option<u64> {
    let start = page.find(&format!("<span id=\"{id}\">"))? + id.len() + 12;
    let end = start + page[start..].find("</span>")?;
    number(&page[start..end])
}

/// A counter as darkstat prints it, possibly with thousands separators.
fn number(text: &str) -> Option<u64> {
    text.trim().replace([',', '\''], "").parse().ok()
}

/// "Seen <tb> bytes, in <tp> packets. (<pc> captured, <pd> dropped)".
pub fn parse_totals(page: &str) -> Option<Totals> {
    Some(Totals {
        packets: span_number(page, "tp")?,
        captured: span_number(page, "pc")?,
        dropped: span_number(page, "pd")?,
    })
}

/// Out bytes per host from the full hosts table: each row is the host's link, hostname, MAC,
/// then In, Out, Total and Last seen in `<td class="num">` cells.
pub fn parse_hosts(page: &str) -> Result<BTreeMap<IpAddr, u64>> {
    let mut out = BTreeMap::new();
    for row in page.split("<tr").skip(1) {
        let Some(start) = row.find("<a href=\"./") else {
            continue; // the header row
        };
        let rest = &row[start + 11..];
        let ip = &rest[..rest.find("/\"").context("unterminated host link")?];
        let ip: IpAddr = ip.parse().with_context(|| format!("host {ip:?} is not an address"))?;
        let nums: Vec<&str> = row
            .split("<td class=\"num\">")
            .skip(1)
            .map(|c| c.split("</td>").next().unwrap_or(""))
            .collect();
        let out_bytes = nums
            .get(1)
            .and_then(|n| number(n))
            .with_context(|| format!("no Out bytes for {ip}: {row}"))?;
        out.insert(ip, out_bytes);
    }
    Ok(out)
}

/// darkstat's version and its Debian package's: `3.0.719, Debian package darkstat 3.0.719-1.1`.
pub fn version() -> Result<String> {
    let out = Command::new("darkstat").arg("--version").output().context("darkstat --version")?;
    // "darkstat 3.0.719 (using libpcap version ...)"
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let own = text.split_whitespace().nth(1).unwrap_or("?").to_string();
    let package = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", "darkstat"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    Ok(match package {
        Some(p) => format!("{own}, Debian package darkstat {p}"),
        None => own,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_from_the_front_page() {
        let page = "<b>Seen</b> <span id=\"tb\">1,505</span> <b>bytes, in</b> <span \
                    id=\"tp\">1,000,010</span> <b>packets.</b> (<span id=\"pc\">30</span> \
                    <b>captured,</b> <span id=\"pd\">7</span> <b>dropped)</b><br>";
        assert_eq!(
            parse_totals(page),
            Some(Totals { packets: 1_000_010, captured: 30, dropped: 7 })
        );
        assert_eq!(parse_totals("<p>nothing</p>"), None);
    }

    #[test]
    fn out_bytes_per_host_from_the_hosts_table() {
        // As darkstat 3.0.719 writes it (header row, then one row per host).
        let page = "<table>\n<tr>\n <th>IP</th>\n <th>Hostname</th>\n <th>MAC Address</th>\n \
                    <th><a href=\"?sort=in\">In</a></th>\n</tr>\n<tr class=\"alt2\">\n \
                    <td><a href=\"./10.9.0.77/\">10.9.0.77</a></td>\n <td></td>\n \
                    <td><tt>02:42:77:01:00:05</tt></td>\n <td class=\"num\">0</td>\n \
                    <td class=\"num\">1,640</td>\n <td class=\"num\">1,640</td>\n \
                    <td class=\"num\">1 sec</td></tr>\n<tr class=\"alt1\">\n \
                    <td><a href=\"./fd77:1::1:7/\">fd77:1::1:7</a></td>\n <td></td>\n \
                    <td><tt>02:00:00:00:00:01</tt></td>\n <td class=\"num\">640</td>\n \
                    <td class=\"num\">0</td>\n <td class=\"num\">640</td>\n \
                    <td class=\"num\">(never)</td></tr>\n</table>";
        let hosts = parse_hosts(page).unwrap();
        assert_eq!(hosts.len(), 2);
        assert_eq!(hosts[&"10.9.0.77".parse::<IpAddr>().unwrap()], 1640);
        assert_eq!(hosts[&"fd77:1::1:7".parse::<IpAddr>().unwrap()], 0);
    }
}
