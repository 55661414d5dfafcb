//! Replay: the capture split by the side its frames come from, and tcpreplay out of the lab's
//! interfaces.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use pcap_file::pcap::{PcapReader, PcapWriter};

use crate::GW_MAC;

/// The capture's frames split by the side they come from: (LAN side, gateway side).
pub(crate) fn split_by_side(
    pcap: &Path,
    dir: &Path,
) -> anyhow::Result<(PathBuf, PathBuf, usize, usize)> {
    let file = std::fs::File::open(pcap).with_context(|| pcap.display().to_string())?;
    let mut reader = PcapReader::new(file)?;
    let header = reader.header();
    let (lan, gw) = (dir.join("from-lan.pcap"), dir.join("from-gateway.pcap"));
    let mut w_lan = PcapWriter::with_header(std::fs::File::create(&lan)?, header)?;
    let mut w_gw = PcapWriter::with_header(std::fs::File::create(&gw)?, header)?;
    let (mut n_lan, mut n_gw) = (0, 0);
    while let Some(p) = reader.next_packet() {
        let p = p?;
        if p.data.get(6..12) == Some(&GW_MAC[..]) {
            w_gw.write_packet(&p)?;
            n_gw += 1;
        } else {
            w_lan.write_packet(&p)?;
            n_lan += 1;
        }
    }
    Ok((lan, gw, n_lan, n_gw))
}

/// tcpreplay `pcap` out of `ifname` in namespace `ns`, at a rate the veth rings keep up with;
/// checks that every frame was sent.
pub(crate) fn replay(ns: &str, ifname: &str, pcap: &Path, frames: usize) -> anyhow::Result<()> {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .args(["tcpreplay", "--pps=2000", "-i", ifname])
        .arg(pcap)
        .output()
        .context("running tcpreplay")?;
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("tcpreplay on {ns}/{ifname} failed ({}):\n{text}", out.status);
    }
    let stat = |key: &str| -> Option<usize> {
        text.lines().find_map(|l| l.trim().strip_prefix(key)).and_then(|v| v.trim().parse().ok())
    };
    if stat("Successful packets:") != Some(frames) || stat("Failed packets:") != Some(0) {
        bail!("tcpreplay on {ns}/{ifname} did not send all {frames} frames:\n{text}");
    }
    Ok(())
}
