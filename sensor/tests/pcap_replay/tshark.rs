//! tshark's side: the conversation statistics of a capture, and the frames a display filter
//! selects.

use std::{collections::BTreeMap, net::IpAddr, path::Path, process::Command};

use anyhow::{Context as _, bail};

/// A conversation: its two addresses, lower first.
pub(crate) type Pair = (IpAddr, IpAddr);

pub(crate) fn pair(a: IpAddr, b: IpAddr) -> Pair {
    if a <= b { (a, b) } else { (b, a) }
}

/// `tshark -q -z conv,ip -z conv,ipv6` on the file: frames and bytes per conversation.
///
/// The conversation tables give exact frame counts, but tshark 4.0 prints byte counts of 10,000
/// and more rounded ("63 kB"). So each conversation's exact byte count is tshark's too, from
/// the lengths of the frames its conversation filter selects, and it must agree with the table
/// (the same frames; the same bytes, or the same rounded figure).
pub(crate) fn tshark_conversations(pcap: &Path) -> anyhow::Result<BTreeMap<Pair, (u64, u64)>> {
    let out = Command::new("tshark")
        .args(["-n", "-q", "-z", "conv,ip", "-z", "conv,ipv6", "-r"])
        .arg(pcap)
        .output()
        .context("running tshark")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("tshark failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    let table = parse_conversations(&text).with_context(|| format!("tshark output:\n{text}"))?;
    let mut convs = BTreeMap::new();
    for ((a, b), (frames, shown)) in table {
        let (f, bytes) = tshark_frames(pcap, &conv_filter(&a, &b));
        let consistent = match shown {
            Bytes::Exact(n) => n == bytes,
            Bytes::Kilo(k) => (bytes as f64 / 1000.0 - k as f64).abs() < 1.0,
        };
        if f != frames || !consistent {
            bail!(
                "{a} <-> {b}: the table says {frames} frames, {shown:?}; its filter selects {f} frames, {bytes} bytes"
            );
        }
        convs.insert((a, b), (frames, bytes));
    }
    Ok(convs)
}

/// A byte count as tshark's conversation table prints it.
#[derive(Debug, Clone, Copy)]
enum Bytes {
    Exact(u64),
    /// Rounded to kB.
    Kilo(u64),
}

/// The rows of tshark's conversation tables: `A <-> B`, then (frames, bytes) from B to A, from
/// A to B and in all, then the start and duration. Returns the totals.
fn parse_conversations(text: &str) -> anyhow::Result<BTreeMap<Pair, (u64, Bytes)>> {
    let mut convs = BTreeMap::new();
    for line in text.lines().filter(|l| l.contains("<->")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let (Some(a), Some(b)) = (words.first(), words.get(2)) else {
            bail!("conversation line: {line}")
        };
        let (a, b): (IpAddr, IpAddr) = (a.parse()?, b.parse()?);
        // Three (frames, count, unit) triples.
        let mut counts = Vec::new();
        let mut rest = &words[3..];
        for _ in 0..3 {
            let [frames, n, unit, tail @ ..] = rest else { bail!("conversation line: {line}") };
            let frames: u64 = frames.parse()?;
            let n: u64 = n.parse()?;
            let bytes = match *unit {
                "bytes" => Bytes::Exact(n),
                "kB" => Bytes::Kilo(n),
                u => bail!("unit {u:?} in: {line}"),
            };
            counts.push((frames, bytes));
            rest = tail;
        }
        convs.insert(pair(a, b), counts[2]);
    }
    Ok(convs)
}

pub(crate) fn conv_filter(a: &IpAddr, b: &IpAddr) -> String {
    let f = if a.is_ipv4() { "ip.addr" } else { "ipv6.addr" };
    format!("{f} == {a} && {f} == {b}")
}

/// (frames, bytes) of the capture's frames that match a display filter.
pub(crate) fn tshark_frames(pcap: &Path, filter: &str) -> (u64, u64) {
    lab::wire::capture_frames(pcap, filter).unwrap_or_else(|e| panic!("{e:#}"))
}
