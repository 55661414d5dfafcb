//! What the peer bench reads from the kernel to account for work: CPU time of processes (from
//! /proc/<pid>/stat), of the softirq threads, and the packet counters of an interface.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context as _, Result, bail};

/// utime + stime of a process (all its threads, live and exited), from /proc/<pid>/stat.
pub fn process_cpu(pid: u32) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let stat = parse_stat(&text).with_context(|| format!("parsing {path}"))?;
    Ok(ticks(stat.utime + stat.stime))
}

/// Total CPU of `root` and every process descended from it (pmacctd forks its plugins).
pub fn tree_cpu(root: u32) -> Result<Duration> {
    let mut total = Duration::ZERO;
    for pid in descendants(root)? {
        // A child that exits between the listing and the read has nothing left to count.
        if let Ok(t) = process_cpu(pid) {
            total += t;
        }
    }
    Ok(total)
}

/// `root` and its descendants, found through every process's parent in /proc.
pub fn descendants(root: u32) -> Result<Vec<u32>> {
    let mut parent: BTreeMap<u32, u32> = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").context("listing /proc")? {
        let entry = entry?;
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(text) = std::fs::read_to_string(entry.path().join("stat"))
            && let Ok(stat) = parse_stat(&text)
        {
            parent.insert(pid, stat.ppid);
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(parent.iter().filter(|&(_, &pp)| pp == p).map(|(&c, _)| c));
        i += 1;
    }
    Ok(out)
}

/// CPU time of all ksoftirqd threads together: softirq work the kernel deferred out of the
/// context that raised it (under load), which then belongs to no process of ours.
pub fn ksoftirqd_cpu() -> Result<Duration> {
    let mut total = Duration::ZERO;
    for entry in std::fs::read_dir("/proc").context("listing /proc")? {
        let entry = entry?;
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.starts_with("ksoftirqd/")
            && let Ok(t) = process_cpu(pid)
        {
            total += t;
        }
    }
    Ok(total)
}

#[derive(Debug, PartialEq, Eq)]
struct Stat {
    ppid: u32,
    utime: u64,
    stime: u64,
}

/// The fields of /proc/<pid>/stat we need. The command name (field 2) is in parentheses and
/// may itself contain spaces and parentheses, so fields are counted from the last `)`.
fn parse_stat(text: &str) -> Result<Stat> {
    let rest = &text[text.rfind(')').context("no `)` after the command name")? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    let field = |n: usize| -> Result<u64> {
        fields
            .get(n - 3)
            .with_context(|| format!("field {n} missing"))?
            .parse::<u64>()
            .with_context(|| format!("field {n} is not a number"))
    };
    Ok(Stat { ppid: field(4)? as u32, utime: field(14)?, stime: field(15)? })
}

fn ticks(n: u64) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(n * 1_000_000_000 / hz)
}

/// Packet counters of one interface, as `ip -s link` reports them (the driver's own stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounters {
    pub rx_packets: u64,
    pub rx_dropped: u64,
    pub tx_packets: u64,
    pub tx_dropped: u64,
}

impl LinkCounters {
    pub fn since(&self, before: &LinkCounters) -> LinkCounters {
        LinkCounters {
            rx_packets: self.rx_packets - before.rx_packets,
            rx_dropped: self.rx_dropped - before.rx_dropped,
            tx_packets: self.tx_packets - before.tx_packets,
            tx_dropped: self.tx_dropped - before.tx_dropped,
        }
    }
}

/// Counters of `ifname` in namespace `ns` (read through netlink by `ip`: sysfs would show the
/// host's namespace).
pub fn link_counters(ns: &str, ifname: &str) -> Result<LinkCounters> {
    let json = lab::ip(&["-n", ns, "-s", "-j", "link", "show", "dev", ifname])?;
    parse_link_json(&json).with_context(|| format!("`ip -s -j link show` of {ns}/{ifname}"))
}

fn parse_link_json(json: &str) -> Result<LinkCounters> {
    let v: serde_json::Value = serde_json::from_str(json)?;
    let stats = &v[0]["stats64"];
    let get = |dir: &str, key: &str| -> Result<u64> {
        stats[dir][key].as_u64().with_context(|| format!("no stats64.{dir}.{key}"))
    };
    if stats.is_null() {
        bail!("no stats64 in {json}");
    }
    Ok(LinkCounters {
        rx_packets: get("rx", "packets")?,
        rx_dropped: get("rx", "dropped")?,
        tx_packets: get("tx", "packets")?,
        tx_dropped: get("tx", "dropped")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let line = "4242 (pmacctd: Core (x) y) S 4200 4242 4200 0 -1 4194560 1365 0 0 0 \
                    1234 56 0 0 20 0 1 0 9921 20312064 1618 18446744073709551615";
        assert_eq!(parse_stat(line).unwrap(), Stat { ppid: 4200, utime: 1234, stime: 56 });
        assert!(parse_stat("4242 (x) S 1").is_err());
    }

    #[test]
    fn our_own_process_has_cpu_time_and_is_its_own_tree_root() {
        let me = std::process::id();
        let tree = descendants(me).unwrap();
        assert_eq!(tree[0], me);
        // Burn a little CPU so the tick-based count is not zero.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(60) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        assert!(process_cpu(me).unwrap() > Duration::ZERO);
    }

    #[test]
    fn link_counters_from_ip_json() {
        let json = r#"[{"ifindex":2,"ifname":"lan0","stats64":{"rx":{"bytes":700,"packets":10,"errors":0,"dropped":1,"over_errors":0,"multicast":0},"tx":{"bytes":0,"packets":3,"errors":0,"dropped":2,"carrier_errors":0,"collisions":0}}}]"#;
        assert_eq!(
            parse_link_json(json).unwrap(),
            LinkCounters { rx_packets: 10, rx_dropped: 1, tx_packets: 3, tx_dropped: 2 }
        );
        assert!(parse_link_json(r#"[{"ifname":"lan0"}]"#).is_err());
    }
}
