//! The per-device summary, read from the agent's JSON API (/api/v1/clients and
//! /api/v1/flows, what `sensor clients` and `sensor flows` print).

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use serde_json::Value;

/// Bytes in the policy's units (decimal: 5MB = 5,000,000 bytes).
pub fn human(bytes: f64) -> String {
    const UNITS: [&str; 4] = ["kB", "MB", "GB", "TB"];
    if bytes < 1000.0 {
        return format!("{bytes:.0} B");
    }
    let mut v = bytes / 1000.0;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[derive(Default)]
struct Totals {
    up: f64,
    down: f64,
}

/// The table: one block per device (name, vendor, group, totals), then its top destinations
/// (name or address, country, ASN) by bytes.
pub fn render(clients: &Value, flows: &Value, top: usize) -> Result<String> {
    let clients = clients["clients"].as_array().context("/api/v1/clients: no clients array")?;
    let flows = flows["flows"].as_array().context("/api/v1/flows: no flows array")?;
    let mut out = String::new();
    out.push_str(&format!(
        "  {:<16} {:<30} {:<8} {:>10} {:>10}\n",
        "device", "vendor", "group", "upload", "download"
    ));
    for c in clients {
        let mac = c["mac"].as_str().unwrap_or_default();
        out.push_str(&format!(
            "  {:<16} {:<30} {:<8} {:>10} {:>10}\n",
            c["client"].as_str().unwrap_or_default(),
            truncate(c["vendor"].as_str().unwrap_or_default(), 30),
            c["group"].as_str().unwrap_or_default(),
            human(c["upload_bytes"].as_f64().unwrap_or(0.0)),
            human(c["download_bytes"].as_f64().unwrap_or(0.0)),
        ));
        // Destinations: the flows' domain (else name, else address) with where it is.
        let mut dest: BTreeMap<(String, String, String), Totals> = BTreeMap::new();
        for f in flows.iter().filter(|f| f["mac"] == mac) {
            let what = [&f["domain"], &f["name"], &f["remote_ip"]]
                .iter()
                .find_map(|v| v.as_str().filter(|s| !s.is_empty()))
                .unwrap_or("?")
                .to_string();
            let asn = match f["asn"].as_u64() {
                Some(n) if n > 0 => format!("AS{n} {}", f["as_org"].as_str().unwrap_or_default()),
                _ => String::new(),
            };
            let e = dest
                .entry((what, f["country"].as_str().unwrap_or_default().to_string(), asn))
                .or_default();
            e.up += f["upload_bytes"].as_f64().unwrap_or(0.0);
            e.down += f["download_bytes"].as_f64().unwrap_or(0.0);
        }
        let mut dest: Vec<_> = dest.into_iter().collect();
        dest.sort_by(|a, b| (b.1.up + b.1.down).total_cmp(&(a.1.up + a.1.down)));
        for ((what, country, asn), t) in dest.into_iter().take(top) {
            out.push_str(&format!(
                "      → {:<22} {:<3} {:<23} {:>10} {:>10}\n",
                truncate(&what, 22),
                if country.is_empty() { "-" } else { &country },
                truncate(if asn.is_empty() { "(LAN)" } else { &asn }, 23),
                human(t.up),
                human(t.down)
            ));
        }
    }
    Ok(out)
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn units() {
        assert_eq!(human(999.0), "999 B");
        assert_eq!(human(120_000.0), "120.0 kB");
        assert_eq!(human(6_240_000.0), "6.2 MB");
    }

    #[test]
    fn table() {
        let clients = json!({"clients": [{"client": "redmi-note", "mac": "64:09:80:4a:1c:07", "vendor": "Xiaomi Communications Co Ltd",
            "group": "phones", "upload_bytes": 6_300_000, "download_bytes": 400_000}]});
        let flows = json!({"flows": [
            {"mac": "64:09:80:4a:1c:07", "remote_ip": "10.77.3.10", "name": "upload.micloud.xiaomi.net", "domain": "xiaomi.net",
             "country": "CN", "asn": 4808, "as_org": "China Unicom", "upload_bytes": 6_200_000, "download_bytes": 50_000},
            {"mac": "64:09:80:4a:1c:07", "remote_ip": "10.77.1.1", "name": "", "domain": "", "country": "", "asn": 0,
             "upload_bytes": 300, "download_bytes": 600},
            {"mac": "3c:a9:f4:12:34:56", "remote_ip": "10.77.4.21", "domain": "example.org", "upload_bytes": 1, "download_bytes": 1}
        ]});
        let t = render(&clients, &flows, 3).unwrap();
        let lines: Vec<&str> = t.lines().map(str::trim_end).collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert_eq!(
            lines[1],
            "  redmi-note       Xiaomi Communications Co Ltd   phones       6.3 MB   400.0 kB"
        );
        // Columns line up with the device's upload and download.
        assert_eq!(
            lines[2],
            "      → xiaomi.net             CN  AS4808 China Unicom         6.2 MB    50.0 kB"
        );
        assert_eq!(
            lines[3],
            "      → 10.77.1.1              -   (LAN)                        300 B      600 B"
        );
    }
}
