//! The `inventory` part of the configuration and its validation: the devices the user named,
//! the lease files to read and the OUI registries, checked before anything is opened so that
//! `check-config` and a reload refuse what the agent would.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
};

use serde::Deserialize;

use crate::{
    enrich::error::EnrichError,
    types::{Mac, mac},
};

/// The `inventory` part of the configuration.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InventoryConfig {
    /// Devices named by the user; they win over DHCP hostnames.
    #[serde(default)]
    pub devices: Vec<StaticDevice>,
    /// DHCP lease files in any format `lease_file::LeaseFormat` lists, e.g. dnsmasq's
    /// `/tmp/dhcp.leases` on OpenWrt.
    #[serde(default)]
    pub dhcp_leases: Vec<PathBuf>,
    /// OUI registry files (IEEE CSV/TXT or Wireshark `manuf`). Absent: Debian's `ieee-data`
    /// files ([`DEFAULT_OUI_PATHS`](crate::enrich::oui::DEFAULT_OUI_PATHS)); an empty list: no
    /// vendor lookup.
    #[serde(default)]
    pub oui_databases: Option<Vec<PathBuf>>,
    /// Capture clients' DHCP requests on the LAN interface for their device fingerprint (the
    /// `os` and `device_class` labels, a vendor hint): [`crate::enrich::dhcp`].
    #[serde(default = "default_dhcp_fingerprint")]
    pub dhcp_fingerprint: bool,
}

fn default_dhcp_fingerprint() -> bool {
    true
}

impl Default for InventoryConfig {
    fn default() -> Self {
        InventoryConfig {
            devices: Vec::new(),
            dhcp_leases: Vec::new(),
            oui_databases: None,
            dhcp_fingerprint: default_dhcp_fingerprint(),
        }
    }
}

/// A device the user named.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StaticDevice {
    /// Six bytes in hex of one or two digits, `:` or `-` between them, any case:
    /// `aa:bb:cc:dd:ee:ff`, `AA-BB-CC-DD-EE-FF`, `64:9:80:4a:1c:7` ([`mac::parse`]).
    pub mac: String,
    pub name: String,
    #[serde(default)]
    pub group: String,
    /// Who made it, as the user knows it (`Xiaomi`): the `vendor` label, and matched by a
    /// policy's `vendor` besides the OUI registry's. What names a phone on a private
    /// (randomized) MAC, whose address says nothing of its maker.
    #[serde(default)]
    pub vendor: String,
    /// The operating system as the user knows it (`android`): the `os` label, over what the
    /// device's DHCP requests suggest.
    #[serde(default)]
    pub os: String,
    /// What kind of device it is (`phone`, `tv`): the `device_class` label, over what the
    /// device's DHCP requests suggest.
    #[serde(default)]
    pub device_class: String,
    /// Extra labels; keys must be Prometheus label names.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// A Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__` (reserved).
fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with("__")
}

impl InventoryConfig {
    /// Checks the devices: MAC syntax, duplicates, names, tag keys.
    pub fn validate(&self) -> Result<(), EnrichError> {
        let mut seen: HashMap<Mac, usize> = HashMap::new();
        for (i, d) in self.devices.iter().enumerate() {
            let Ok(mac) = mac::parse(&d.mac) else {
                return Err(EnrichError::DeviceMac {
                    index: i,
                    name: d.name.clone(),
                    mac: d.mac.clone(),
                });
            };
            if let Some(first) = seen.insert(mac, i) {
                return Err(EnrichError::DuplicateDevice {
                    index: i,
                    name: d.name.clone(),
                    mac,
                    first,
                    first_name: self.devices[first].name.clone(),
                });
            }
            if d.name.trim().is_empty() {
                return Err(EnrichError::DeviceName { index: i, mac });
            }
            if let Some(key) = d.tags.keys().find(|k| !is_label_name(k)) {
                let suggestion: String = key
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
                    .collect();
                let suggestion = suggestion.trim_start_matches('_');
                let suggestion = if suggestion.starts_with(|c: char| c.is_ascii_digit()) {
                    format!("tag_{suggestion}")
                } else if suggestion.is_empty() {
                    "owner".to_string()
                } else {
                    suggestion.to_string()
                };
                return Err(EnrichError::TagKey {
                    index: i,
                    name: d.name.clone(),
                    key: key.clone(),
                    suggestion,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests {
    //! Also the fixtures the other inventory tests share.

    use std::path::Path;

    use super::*;

    pub(in crate::enrich::inventory) const XIAOMI: Mac = [0x64, 0x09, 0x80, 0x12, 0x34, 0x56];
    pub(in crate::enrich::inventory) const RANDOM: Mac = [0xda, 0xa1, 0x19, 0x01, 0x02, 0x03];

    /// A sample file of tests/data/inventory.
    pub(in crate::enrich::inventory) fn data(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/inventory").join(name)
    }

    pub(in crate::enrich::inventory) fn device(mac: &str, name: &str) -> StaticDevice {
        StaticDevice { mac: mac.into(), name: name.into(), ..Default::default() }
    }

    /// The devices and lease files given, with the sample OUI registry.
    pub(in crate::enrich::inventory) fn config(
        devices: Vec<StaticDevice>,
        leases: Vec<PathBuf>,
    ) -> InventoryConfig {
        InventoryConfig {
            devices,
            dhcp_leases: leases,
            oui_databases: Some(vec![data("oui.csv")]),
            ..InventoryConfig::default()
        }
    }

    #[test]
    fn mac_syntax() {
        // The inventory takes what types::mac::parse takes, as lease files and the policy do.
        let parse = |s: &str| {
            let valid = config(vec![device(s, "x")], vec![]).validate().is_ok();
            let parsed = mac::parse(s).ok();
            assert_eq!(valid, parsed.is_some(), "{s}");
            parsed
        };
        assert_eq!(parse("64:09:80:12:34:56"), Some(XIAOMI));
        assert_eq!(parse("64-09-80-12-34-56"), Some(XIAOMI));
        assert_eq!(parse(" 64:09:80:12:34:56 "), Some(XIAOMI));
        assert_eq!(parse("DA:A1:19:01:02:03"), Some(RANDOM));
        assert_eq!(parse("64:9:80:12:34:56"), Some(XIAOMI));
        for bad in
            ["64:09:80:12:34", "64:09:80:12:34:56:78", "64:09:80:12:34:zz", "640980123456", ""]
        {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn config_parses_from_yaml() {
        let cfg: InventoryConfig = serde_yaml::from_str(
            "devices:\n  - mac: 64:09:80:12:34:56\n    name: vacuum\n    group: iot\n    tags: {room: kitchen}\n  \
             - {mac: \"DA-A1-19-01-02-03\", name: phone}\ndhcp_leases: [/tmp/dhcp.leases]\n",
        )
        .unwrap();
        assert_eq!(cfg.devices.len(), 2);
        assert_eq!(cfg.devices[0].tags["room"], "kitchen");
        assert_eq!(cfg.devices[1].group, "");
        assert_eq!(cfg.oui_databases, None);
        assert!(cfg.validate().is_ok());
        let e = serde_yaml::from_str::<InventoryConfig>(
            "devices:\n  - {mac: 64:09:80:12:34:56, nmae: x}\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field `nmae`"), "{e}");
        assert_eq!(
            serde_yaml::from_str::<InventoryConfig>("{}").unwrap(),
            InventoryConfig::default()
        );
    }

    #[test]
    fn validation_says_what_to_fix() {
        let check = |devices: Vec<StaticDevice>| {
            config(devices, vec![]).validate().unwrap_err().to_string()
        };
        let e = check(vec![device("64:09:80:12:34", "vacuum")]);
        assert!(
            e.contains("\"64:09:80:12:34\" is not a MAC address")
                && e.contains("aa:bb:cc:dd:ee:ff"),
            "{e}"
        );
        let e = check(vec![
            device("64:09:80:12:34:56", "vacuum"),
            device("64-09-80-12-34-56", "robot"),
        ]);
        assert!(
            e.contains(
                "inventory.devices[1] (\"robot\") has the same MAC 64:09:80:12:34:56 as \
                 inventory.devices[0] (\"vacuum\")"
            ),
            "{e}"
        );
        let e = check(vec![device("64:09:80:12:34:56", " ")]);
        assert!(e.contains("empty name"), "{e}");
        for (key, suggestion) in
            [("room-name", "room_name"), ("1st", "tag_1st"), ("__name__", "name__"), ("", "owner")]
        {
            let mut d = device("64:09:80:12:34:56", "vacuum");
            d.tags.insert(key.into(), "x".into());
            let e = check(vec![d]);
            assert!(
                e.contains("is not a Prometheus label name")
                    && e.contains(&format!("(e.g. {suggestion})")),
                "{e}"
            );
        }
        let mut d = device("64:09:80:12:34:56", "vacuum");
        d.tags.insert("room_2".into(), "kitchen".into());
        d.tags.insert("_private".into(), "yes".into());
        let valid = config(vec![d], vec![]).validate();
        assert!(valid.is_ok(), "{valid:?}");
    }
}
