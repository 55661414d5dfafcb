//! Flow offloading (nftables flowtables; OpenWrt's fw4 `flow_offloading` and
//! `flow_offloading_hw`): an offloaded flow's packets skip the forward path, and with hardware
//! offload the CPU altogether, so the sensor can miss them. Detected at start, to say so.

use std::{path::Path, process::Command};

/// What the router offloads, as far as this process can see.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowOffload {
    /// A flowtable exists (software fast path) or fw4 turns it on.
    pub software: bool,
    /// A flowtable has the `offload` flag (the switch or NIC forwards the flow) or fw4 turns
    /// hardware offloading on.
    pub hardware: bool,
    /// Where it was seen: `nft: inet fw4 ft (lan1, wan)`, `/etc/config/firewall`.
    pub sources: Vec<String>,
}

/// OpenWrt's firewall configuration (fw4 reads its `defaults` section).
pub const OPENWRT_FIREWALL: &str = "/etc/config/firewall";

/// Asks nftables (`nft -j list flowtables`, in this network namespace) and reads `firewall`
/// (OpenWrt's UCI file). A missing `nft` or file is simply not a source.
pub fn detect(firewall: &Path) -> FlowOffload {
    let mut found = FlowOffload::default();
    if let Ok(out) = Command::new("nft").args(["-j", "list", "flowtables"]).output()
        && out.status.success()
    {
        from_nft_json(&String::from_utf8_lossy(&out.stdout), &mut found);
    }
    if let Ok(text) = std::fs::read_to_string(firewall) {
        from_uci(&text, &firewall.display().to_string(), &mut found);
    }
    found
}

/// `nft -j list flowtables`: `{"nftables": [{"flowtable": {family, table, name, dev, flags}}]}`.
fn from_nft_json(text: &str, found: &mut FlowOffload) {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else { return };
    let Some(items) = v["nftables"].as_array() else { return };
    for ft in items.iter().filter_map(|i| i.get("flowtable")) {
        let s = |k: &str| ft[k].as_str().unwrap_or("?").to_string();
        let devs: Vec<&str> = match &ft["dev"] {
            serde_json::Value::Array(a) => a.iter().filter_map(|d| d.as_str()).collect(),
            serde_json::Value::String(d) => vec![d.as_str()],
            _ => Vec::new(),
        };
        let hw = match &ft["flags"] {
            serde_json::Value::Array(a) => a.iter().any(|f| f.as_str() == Some("offload")),
            serde_json::Value::String(f) => f == "offload",
            _ => false,
        };
        found.software = true;
        found.hardware |= hw;
        found.sources.push(format!(
            "nft: {} {} {} ({}){}",
            s("family"),
            s("table"),
            s("name"),
            devs.join(", "),
            if hw { ", hardware offload" } else { "" }
        ));
    }
}

/// UCI `option flow_offloading '1'` / `option flow_offloading_hw '1'` (quotes optional).
fn from_uci(text: &str, path: &str, found: &mut FlowOffload) {
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let [option, name, value, ..] = words[..] else { continue };
        if option != "option" || value.trim_matches(|c| c == '\'' || c == '"') != "1" {
            continue;
        }
        match name {
            "flow_offloading" => found.software = true,
            "flow_offloading_hw" => found.hardware = true,
            _ => continue,
        }
        found.sources.push(format!("{path}: {name}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nft_flowtables_say_software_and_hardware_offload() {
        // `nft -j list flowtables` as nftables 1.0 prints it (fw4's flowtable, hardware flag).
        let text = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
            {"flowtable": {"family": "inet", "name": "ft", "table": "fw4", "handle": 2,
             "hook": "ingress", "prio": -100, "dev": ["lan1", "wan"], "flags": ["offload"]}},
            {"flowtable": {"family": "inet", "name": "soft", "table": "t", "handle": 3,
             "hook": "ingress", "prio": 0, "dev": "eth0"}}]}"#;
        let mut f = FlowOffload::default();
        from_nft_json(text, &mut f);
        assert_eq!(
            f,
            FlowOffload {
                software: true,
                hardware: true,
                sources: vec![
                    "nft: inet fw4 ft (lan1, wan), hardware offload".into(),
                    "nft: inet t soft (eth0)".into()
                ],
            }
        );
        let mut none = FlowOffload::default();
        from_nft_json(r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}]}"#, &mut none);
        assert_eq!(none, FlowOffload::default());
    }

    #[test]
    fn openwrt_firewall_defaults_say_what_fw4_offloads() {
        let text = "config defaults\n\toption syn_flood '1'\n\toption flow_offloading '1'\n\t\
                    option flow_offloading_hw 1\n\nconfig zone\n\toption name 'lan'\n";
        let mut f = FlowOffload::default();
        from_uci(text, "/etc/config/firewall", &mut f);
        assert_eq!(
            f,
            FlowOffload {
                software: true,
                hardware: true,
                sources: vec![
                    "/etc/config/firewall: flow_offloading".into(),
                    "/etc/config/firewall: flow_offloading_hw".into()
                ],
            }
        );
        let mut off = FlowOffload::default();
        from_uci("config defaults\n\toption flow_offloading '0'\n", "f", &mut off);
        assert_eq!(off, FlowOffload::default());
    }
}
