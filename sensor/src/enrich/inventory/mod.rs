//! Who a MAC address is: the user's own inventory first, then the hostname the device gave
//! the DHCP server, else a stable name made from its vendor and MAC.
//!
//! The parts: [`config`] (what the user lists, validated), `lease_file` (the DHCP servers'
//! lease files, re-read as they change), one parser per lease format in a file of its own
//! (listed in `lease_file::LeaseFormat`), and here the three sources merged into a [`Device`].

pub mod config;
mod dnsmasq;
mod isc;
mod lease;
mod lease_file;

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    path::PathBuf,
};

pub use config::{InventoryConfig, StaticDevice};
use lease_file::LeaseFiles;

use super::{
    error::EnrichError,
    oui::{DEFAULT_OUI_PATHS, OuiDb, Vendor},
};
use crate::types::{Mac, mac};

/// Where a device's name came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NameSource {
    Inventory,
    Dhcp,
    Fallback,
}

impl NameSource {
    pub fn as_str(self) -> &'static str {
        match self {
            NameSource::Inventory => "inventory",
            NameSource::Dhcp => "dhcp",
            NameSource::Fallback => "fallback",
        }
    }
}

/// What the sensor knows about one MAC address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub name: String,
    pub group: String,
    pub tags: BTreeMap<String, String>,
    /// The OUI registry's answer for the address.
    pub vendor: Vendor,
    /// The inventory's `vendor`, empty when the user gave none.
    pub stated_vendor: String,
    /// The inventory's `os` and `device_class`, empty when the user gave none.
    pub stated_os: String,
    pub stated_class: String,
    pub source: NameSource,
}

impl Device {
    /// The vendor to show: what the user said, else the registry's (`randomized` for a
    /// private MAC).
    pub fn vendor_label(&self) -> String {
        if self.stated_vendor.is_empty() { self.vendor.label() } else { self.stated_vendor.clone() }
    }
}

/// The name of a device nobody named: `<vendor>-<last three bytes>`, e.g. `xiaomi-123456`,
/// `randomized-123456` for a locally administered address, `device-123456` when the vendor
/// is unknown. Stable: the same MAC always gets the same name.
pub fn fallback_name(mac: &Mac, vendor: &Vendor) -> String {
    let slug = match vendor {
        Vendor::Known(org) => {
            let first = org
                .split(|c: char| c.is_whitespace() || c == ',')
                .find(|w| !w.is_empty())
                .unwrap_or("");
            let slug: String = first
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .map(|c| c.to_ascii_lowercase())
                .collect();
            let slug = slug.trim_matches('-').to_string();
            if slug.is_empty() { "device".to_string() } else { slug }
        }
        Vendor::Randomized => "randomized".to_string(),
        Vendor::Unknown => "device".to_string(),
    };
    format!("{slug}-{:02x}{:02x}{:02x}", mac[3], mac[4], mac[5])
}

/// Static inventory, DHCP leases and the OUI registry, merged.
#[derive(Debug)]
pub struct Inventory {
    devices: HashMap<Mac, StaticDevice>,
    oui: OuiDb,
    leases: LeaseFiles,
}

impl Inventory {
    /// Builds the inventory: validates the devices, loads the OUI registry and reads the
    /// lease files. Missing files are warnings (vendors stay empty; a lease file may only be
    /// created later by the DHCP server); an invalid device list or a malformed OUI file named
    /// in `oui_databases` is an error.
    pub fn new(cfg: &InventoryConfig) -> Result<(Inventory, Vec<String>), EnrichError> {
        cfg.validate()?;
        let mut warnings = Vec::new();
        let devices = cfg
            .devices
            .iter()
            .filter_map(|d| Some((mac::parse(&d.mac).ok()?, d.clone())))
            .collect();
        let (oui_paths, defaults): (Vec<PathBuf>, bool) = match &cfg.oui_databases {
            Some(paths) => (paths.clone(), false),
            None => (DEFAULT_OUI_PATHS.iter().map(PathBuf::from).collect(), true),
        };
        let mut oui = OuiDb::empty();
        let missing: Vec<&PathBuf> = oui_paths.iter().filter(|p| !p.exists()).collect();
        for path in oui_paths.iter().filter(|p| p.exists()) {
            match oui.add_file(path) {
                Ok(_) => {}
                // Debian's files are not the user's doing: a format change there should cost
                // the vendor labels, not the agent.
                Err(e) if defaults => {
                    warnings.push(format!("{e}: vendors from it will be missing"))
                }
                Err(e) => return Err(EnrichError::OuiConfigured(Box::new(e))),
            }
        }
        if !missing.is_empty() {
            let all = missing.len() == oui_paths.len();
            let listed =
                missing.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
            let (what, consequence) = match (all, missing.len()) {
                (true, 1) => ("database", "vendors will be empty"),
                (true, _) => ("databases", "vendors will be empty"),
                (false, 1) => ("database", "vendors of its prefixes will be missing"),
                (false, _) => ("databases", "vendors of their prefixes will be missing"),
            };
            let listed = if defaults && all { DEFAULT_OUI_PATHS[0].to_string() } else { listed };
            let fix = if defaults {
                "apt-get install ieee-data"
            } else {
                "check inventory.oui_databases"
            };
            warnings.push(format!("OUI {what} {listed} not found: {consequence} ({fix})"));
        }
        let leases = LeaseFiles::new(&cfg.dhcp_leases);
        let mut inventory = Inventory { devices, oui, leases };
        warnings.extend(inventory.refresh());
        Ok((inventory, warnings))
    }

    /// Re-reads the lease files that changed since the last call. Cheap when none did (one
    /// `stat` per file). Returns warnings for files that cannot be read, each once until it
    /// changes; a file that cannot be read keeps the leases last read from it.
    pub fn refresh(&mut self) -> Vec<String> {
        self.leases.refresh()
    }

    /// Who `mac` is: the inventory entry, else the DHCP hostname of its most recent lease
    /// that has one, else [`fallback_name`].
    pub fn device(&self, mac: &Mac) -> Device {
        let vendor = self.oui.vendor(mac);
        if let Some(d) = self.devices.get(mac) {
            return Device {
                name: d.name.clone(),
                group: d.group.clone(),
                tags: d.tags.clone(),
                vendor,
                stated_vendor: d.vendor.trim().to_string(),
                stated_os: d.os.trim().to_string(),
                stated_class: d.device_class.trim().to_string(),
                source: NameSource::Inventory,
            };
        }
        if let Some(hostname) = self.leases.hostname(mac) {
            return Device {
                name: hostname.clone(),
                group: String::new(),
                tags: BTreeMap::new(),
                vendor,
                stated_vendor: String::new(),
                stated_os: String::new(),
                stated_class: String::new(),
                source: NameSource::Dhcp,
            };
        }
        Device {
            name: fallback_name(mac, &vendor),
            group: String::new(),
            tags: BTreeMap::new(),
            vendor,
            stated_vendor: String::new(),
            stated_os: String::new(),
            stated_class: String::new(),
            source: NameSource::Fallback,
        }
    }

    /// The addresses leased to `mac`, most recent first.
    pub fn lease_ips(&self, mac: &Mac) -> Vec<IpAddr> {
        self.leases.ips(mac)
    }

    /// The vendor of `mac` alone.
    pub fn vendor(&self, mac: &Mac) -> Vendor {
        self.oui.vendor(mac)
    }

    /// The OUI registry in use.
    pub fn oui(&self) -> &OuiDb {
        &self.oui
    }
}

#[cfg(test)]
mod tests {
    use std::{path::Path, time::SystemTime};

    use super::{
        config::tests::{RANDOM, XIAOMI, config, data, device},
        isc::days_from_civil,
        lease_file::{LeaseFormat, parse_leases},
        *,
    };

    const APPLE: Mac = [0x60, 0x8b, 0x0e, 0xaa, 0xbb, 0xcc];
    const UNKNOWN: Mac = [0x00, 0x11, 0x22, 0x33, 0x44, 0x55];

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn new_refuses_what_validate_refuses() {
        let e = Inventory::new(&config(vec![device("nope", "x")], vec![])).unwrap_err();
        assert!(e.to_string().contains("not a MAC address"), "{e}");
    }

    #[test]
    fn fallback_names() {
        let known = |s: &str| Vendor::Known(s.into());
        assert_eq!(fallback_name(&XIAOMI, &known("Xiaomi Communications Co Ltd")), "xiaomi-123456");
        assert_eq!(fallback_name(&APPLE, &known("Apple, Inc.")), "apple-aabbcc");
        assert_eq!(
            fallback_name(&UNKNOWN, &known("TP-LINK TECHNOLOGIES CO.,LTD.")),
            "tp-link-334455"
        );
        assert_eq!(fallback_name(&UNKNOWN, &known("  (c) ")), "c-334455");
        assert_eq!(fallback_name(&UNKNOWN, &known("!!!")), "device-334455");
        assert_eq!(fallback_name(&RANDOM, &Vendor::Randomized), "randomized-010203");
        assert_eq!(fallback_name(&UNKNOWN, &Vendor::Unknown), "device-334455");
    }

    #[test]
    fn dnsmasq_leases() {
        let text = std::fs::read_to_string(data("dnsmasq.leases")).unwrap();
        let parsed = parse_leases(&text);
        assert_eq!(parsed.format, Some(LeaseFormat::Dnsmasq));
        assert_eq!(parsed.malformed, vec![4, 5, 6]);
        let (inv, warnings) =
            Inventory::new(&config(vec![], vec![data("dnsmasq.leases")])).unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0]
                .contains("dnsmasq.leases: 3 malformed lease line(s) skipped (first at line 4)"),
            "{warnings:?}"
        );
        let d = inv.device(&XIAOMI);
        assert_eq!((d.name.as_str(), d.source), ("roborock-vacuum", NameSource::Dhcp));
        assert_eq!(d.vendor, Vendor::Known("Xiaomi Communications Co Ltd".into()));
        assert_eq!(inv.lease_ips(&XIAOMI), vec![ip("192.168.1.23")]);
        // `*`: no hostname, so the fallback name; the lease address is still known.
        let d = inv.device(&APPLE);
        assert_eq!((d.name.as_str(), d.source), ("apple-aabbcc", NameSource::Fallback));
        assert_eq!(inv.lease_ips(&APPLE), vec![ip("192.168.1.40")]);
        // Two leases for one MAC: the later expiry wins, and an infinite (0) one beats both.
        assert_eq!(inv.device(&RANDOM).name, "Pixel-8");
        assert_eq!(inv.lease_ips(&RANDOM), vec![ip("192.168.1.51"), ip("192.168.1.50")]);
        let static_lease: Mac = [0x00, 0x1e, 0xfc, 0x00, 0x00, 0x01];
        assert_eq!(inv.device(&static_lease).name, "scale");
        assert_eq!(inv.lease_ips(&static_lease), vec![ip("192.168.1.2"), ip("192.168.1.3")]);
        // The IPv6 leases name no MAC.
        assert!(inv.leases.by_mac.values().all(|l| l.ips.iter().all(|ip| ip.is_ipv4())));
        assert_eq!(inv.lease_ips(&UNKNOWN), Vec::<IpAddr>::new());
    }

    #[test]
    fn isc_dhcpd_leases() {
        let text = std::fs::read_to_string(data("dhcpd.leases")).unwrap();
        let parsed = parse_leases(&text);
        assert_eq!(parsed.format, Some(LeaseFormat::Isc));
        assert_eq!(parsed.malformed, vec![64, 69, 74], "{:?}", parsed.leases);
        let (inv, _) = Inventory::new(&config(vec![], vec![data("dhcpd.leases")])).unwrap();
        // The last block for the MAC wins: renewed on .11 with a new hostname.
        let d = inv.device(&XIAOMI);
        assert_eq!((d.name.as_str(), d.source), ("vacuum-2", NameSource::Dhcp));
        assert_eq!(inv.lease_ips(&XIAOMI), vec![ip("192.168.1.11")]);
        // Quoted hostname with an escaped quote, semicolon and brace; comments ignored.
        assert_eq!(inv.device(&APPLE).name, "Ann's \"iPhone\"; {x}");
        // Its lease on .20 was later freed and .20 given to nobody: the MAC's last block is
        // free, so nothing names it.
        let freed: Mac = [0x00, 0x1e, 0xfc, 0x00, 0x00, 0x02];
        assert_eq!(inv.device(&freed).source, NameSource::Fallback);
        assert_eq!(inv.lease_ips(&freed), Vec::<IpAddr>::new());
        // .30 was first leased to RANDOM then re-leased to another MAC: RANDOM has nothing.
        assert_eq!(inv.lease_ips(&RANDOM), Vec::<IpAddr>::new());
        let other: Mac = [0x00, 0x1e, 0xfc, 0x00, 0x00, 0x03];
        assert_eq!(inv.device(&other).name, "tablet");
        assert_eq!(inv.lease_ips(&other), vec![ip("192.168.1.30")]);
        // `ends never` and `ends epoch`.
        let lease = |mac: Mac| parsed.leases.iter().find(|l| l.mac == mac).unwrap().ends;
        assert_eq!(lease(other), u64::MAX);
        assert_eq!(lease(APPLE), 1_795_000_000);
        assert_eq!(lease(XIAOMI), days_from_civil(2026, 11, 23) as u64 * 86_400 + 20 * 3600);
    }

    #[test]
    fn precedence_inventory_then_dhcp_then_fallback() {
        let mut vacuum = device("64:09:80:12:34:56", "Vacuum");
        vacuum.group = "iot".into();
        vacuum.tags.insert("room".into(), "kitchen".into());
        let cfg = config(vec![vacuum], vec![data("dnsmasq.leases"), data("dhcpd.leases")]);
        let (inv, _) = Inventory::new(&cfg).unwrap();
        let d = inv.device(&XIAOMI);
        assert_eq!(d.name, "Vacuum");
        assert_eq!(d.group, "iot");
        assert_eq!(d.tags.get("room").map(String::as_str), Some("kitchen"));
        assert_eq!(d.source, NameSource::Inventory);
        assert_eq!(d.vendor, Vendor::Known("Xiaomi Communications Co Ltd".into()));
        // The lease addresses from both files, the later-ending lease first (dhcpd's ends in
        // 2026; dnsmasq's expiry is 2023).
        assert_eq!(inv.lease_ips(&XIAOMI), vec![ip("192.168.1.11"), ip("192.168.1.23")]);
        // Hostname from the more recent lease over both files.
        assert_eq!(inv.device(&APPLE).name, "Ann's \"iPhone\"; {x}");
        assert_eq!(inv.device(&APPLE).source, NameSource::Dhcp);
        let d = inv.device(&UNKNOWN);
        assert_eq!(
            (d.name.as_str(), d.source, d.vendor),
            ("device-334455", NameSource::Fallback, Vendor::Unknown)
        );
        assert_eq!(d.group, "");
        let d = inv.device(&[0xda, 0xa1, 0x19, 0xff, 0xee, 0xdd]);
        assert_eq!((d.name.as_str(), d.vendor), ("randomized-ffeedd", Vendor::Randomized));
        assert_eq!(NameSource::Inventory.as_str(), "inventory");
        assert_eq!(NameSource::Dhcp.as_str(), "dhcp");
        assert_eq!(NameSource::Fallback.as_str(), "fallback");
    }

    #[test]
    fn changed_file_is_reread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dhcp.leases");
        let (mut inv, warnings) = Inventory::new(&config(vec![], vec![path.clone()])).unwrap();
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("does not exist (yet)"), "{warnings:?}");
        assert!(inv.refresh().is_empty(), "a lasting problem is reported once");
        assert_eq!(inv.device(&XIAOMI).source, NameSource::Fallback);

        std::fs::write(&path, "1763900000 64:09:80:12:34:56 192.168.1.23 vacuum *\n").unwrap();
        assert!(inv.refresh().is_empty());
        assert_eq!(inv.device(&XIAOMI).name, "vacuum");

        // Same size, new content: the modification time tells (set explicitly, as a rewrite
        // within the filesystem's timestamp granularity would not change it).
        std::fs::write(&path, "1763900000 64:09:80:12:34:56 192.168.1.24 robot1 *\n").unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000)).unwrap();
        drop(f);
        assert!(inv.refresh().is_empty());
        assert_eq!(inv.device(&XIAOMI).name, "robot1");
        assert_eq!(inv.lease_ips(&XIAOMI), vec![ip("192.168.1.24")]);

        // Replaced by rename (a new inode), as some DHCP servers do.
        let tmp = dir.path().join("dhcp.leases.new");
        std::fs::write(&tmp, "1763900000 64:09:80:12:34:56 192.168.1.25 robot2 *\n").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert!(inv.refresh().is_empty());
        assert_eq!(inv.device(&XIAOMI).name, "robot2");

        // Unchanged: nothing re-read (the parsed leases are the same object).
        let before = inv.leases.files[0].leases.as_ptr();
        assert!(inv.refresh().is_empty());
        assert_eq!(inv.leases.files[0].leases.as_ptr(), before);

        // Garbage: one warning, and the old leases stay until the file is fixed.
        std::fs::write(&path, "hello world, this is not a lease file\n").unwrap();
        let w = inv.refresh();
        assert_eq!(w.len(), 1);
        assert!(w[0].contains(&format!("not a {} leases file", LeaseFormat::names())), "{w:?}");
        assert_eq!(inv.device(&XIAOMI).name, "robot2");
        assert!(inv.refresh().is_empty());

        // Caught mid-rewrite: empty, then a partial last line. Neither loses names or warns.
        std::fs::write(&path, "").unwrap();
        assert!(inv.refresh().is_empty());
        assert_eq!(inv.device(&XIAOMI).name, "robot2");
        std::fs::write(&path, "1763900000 64:09:80:12:34:56 192.168.1.25 robot2b *\n17639")
            .unwrap();
        assert!(inv.refresh().is_empty());
        assert_eq!(inv.device(&XIAOMI).name, "robot2b");

        // Removed: warned once, names kept.
        std::fs::write(&path, "1763900000 64:09:80:12:34:56 192.168.1.25 robot3 *\n").unwrap();
        assert!(inv.refresh().is_empty());
        std::fs::remove_file(&path).unwrap();
        let w = inv.refresh();
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(inv.device(&XIAOMI).name, "robot3");
        assert!(inv.refresh().is_empty());
    }

    #[test]
    fn oui_warnings() {
        let cfg = InventoryConfig {
            oui_databases: Some(vec![data("oui.csv"), PathBuf::from("/nonexistent/mam.csv")]),
            ..Default::default()
        };
        let (inv, warnings) = Inventory::new(&cfg).unwrap();
        assert_eq!(
            warnings,
            vec![
                "OUI database /nonexistent/mam.csv not found: vendors of its prefixes will be missing \
                 (check inventory.oui_databases)"
                    .to_string()
            ]
        );
        assert_eq!(inv.vendor(&XIAOMI), Vendor::Known("Xiaomi Communications Co Ltd".into()));
        // An explicit empty list: no lookup, no warning.
        let cfg = InventoryConfig { oui_databases: Some(vec![]), ..Default::default() };
        let (inv, warnings) = Inventory::new(&cfg).unwrap();
        assert!(warnings.is_empty());
        assert_eq!(inv.device(&XIAOMI).name, "device-123456");
        // A malformed registry file is an error naming its line.
        let cfg = InventoryConfig {
            oui_databases: Some(vec![data("bad-oui.csv")]),
            ..Default::default()
        };
        let e = Inventory::new(&cfg).unwrap_err().to_string();
        assert!(
            e.contains("bad-oui.csv:4:") && e.ends_with("(check inventory.oui_databases)"),
            "{e}"
        );
        // Defaults: Debian's files, or the apt-get hint.
        let (inv, warnings) = Inventory::new(&InventoryConfig::default()).unwrap();
        if Path::new(DEFAULT_OUI_PATHS[0]).exists() {
            assert!(warnings.iter().all(|w| !w.contains("oui.csv")), "{warnings:?}");
            assert_eq!(inv.device(&XIAOMI).name, "xiaomi-123456");
        } else {
            assert!(
                warnings.contains(
                    &"OUI database /usr/share/ieee-data/oui.csv not found: vendors will be empty \
                      (apt-get install ieee-data)"
                        .to_string()
                ),
                "{warnings:?}"
            );
        }
    }
}
