//! The evaluator on synthetic time: conditions, windows, the alert lifecycle, reloads and
//! state files (of this release and older ones).

use std::{
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use super::{EvalState, Evaluator, Outcome};
use crate::{
    policy::{
        Policy,
        matcher::{ClientFacts, FlowFacts, PollFacts},
    },
    types::{
        Alert,
        address::{self, Reach},
    },
};

/// Unix seconds as the alerts' times.
fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn policy(yaml: &str) -> Policy {
    Policy::parse(yaml, Path::new("policy.yaml")).unwrap_or_else(|e| panic!("{e}"))
}

const PHONE: [u8; 6] = [0x64, 0x09, 0x80, 0x4a, 0x1c, 0x07];
const TV: [u8; 6] = [0xa4, 0x77, 0x33, 0x00, 0x00, 0x02];

fn client(mac: [u8; 6], name: &str, group: &str) -> ClientFacts {
    ClientFacts {
        mac,
        mac_text: crate::types::labels::mac(&mac),
        name: name.into(),
        group: group.into(),
        ..ClientFacts::default()
    }
}

/// A poll at `now` with flows (client index, remote, port, name, country, up bytes, down bytes).
struct Poll {
    now: u64,
    flows: Vec<FlowFacts>,
}

fn poll(now: u64) -> Poll {
    Poll { now, flows: Vec::new() }
}

impl Poll {
    #[allow(clippy::too_many_arguments)] // one call reads as one row of a table
    fn flow(
        mut self,
        client: usize,
        ip: &str,
        port: u16,
        name: &str,
        country: &str,
        up: u64,
        down: u64,
    ) -> Poll {
        let domain =
            if name.is_empty() { String::new() } else { crate::enrich::domain::registrable(name) };
        let remote_ip = ip.parse().ok();
        self.flows.push(FlowFacts {
            client,
            remote_ip,
            reach: remote_ip.map_or(Reach::Internet, |ip| address::reach(&ip)),
            protocol: 6,
            port,
            name: name.into(),
            domain,
            country: country.into(),
            asn: if country == "CN" { 4808 } else { 64500 },
            upload_bytes: up,
            download_bytes: down,
            upload_packets: up.div_ceil(1000),
            download_packets: down.div_ceil(1000),
        });
        self
    }
    fn run(self, ev: &mut Evaluator) -> Outcome {
        ev.evaluate(&PollFacts {
            now: self.now,
            clients: vec![client(PHONE, "phone", "phones"), client(TV, "tv", "media")],
            flows: self.flows,
        })
    }
}

fn evaluator(yaml: &str) -> Evaluator {
    Evaluator::new(
        policy(yaml),
        EvalState::default(),
        "http://sensor:9977".into(),
        Duration::from_secs(900),
    )
}

/// The firing alerts of `o`, built.
fn firing(ev: &Evaluator, o: &Outcome) -> Vec<Alert> {
    o.alerts
        .iter()
        .zip(&o.alert_series)
        .filter(|(a, _)| a.resolved_at.is_none())
        .map(|(a, series)| ev.alert(series, a).expect("a firing alert's series exists"))
        .collect()
}

const T0: u64 = 1_795_392_000; // Monday 2026-11-23 00:00 UTC

const UPLOAD_RULE: &str = r#"
rules:
  - name: PhoneCloudUpload
    match:
      client: {group: phones}
      destination: [{domain: xiaomi.net}, {country: CN}]
    condition: {volume: {direction: upload, above: 5MB, window: 10m}}
    severity: critical
    labels: {story: cloud-sync-off}
    summary: "{{ client }} uploaded {{ bytes }} to {{ destination }} in {{ window }}"
"#;

#[test]
fn volume_fires_over_the_window_with_exact_labels_and_resolves() {
    let mut ev = evaluator(UPLOAD_RULE);
    // Small update checks: 100 kB every minute stay below 5 MB in any 10 minutes.
    for i in 0..12 {
        let o = poll(T0 + 60 * i)
            .flow(0, "203.0.113.10", 443, "update.miui.xiaomi.net", "CN", 100_000, 2_000_000)
            .run(&mut ev);
        assert!(o.alerts.is_empty(), "poll {i}: {:?}", o.alerts);
        // The series starts with the first matching traffic (its violations counter at 0).
        let started = if i == 0 {
            vec![("PhoneCloudUpload".to_string(), "phone".to_string())]
        } else {
            vec![]
        };
        assert_eq!(o.started, started, "poll {i}");
    }
    // A bulk upload: 3 MB, then 3 MB a minute later: 6.3 MB within 10 minutes.
    let o = poll(T0 + 720)
        .flow(0, "203.0.113.20", 443, "upload.micloud.xiaomi.net", "CN", 3_000_000, 10_000)
        .run(&mut ev);
    assert!(o.alerts.is_empty());
    let o = poll(T0 + 780)
        .flow(0, "203.0.113.20", 443, "upload.micloud.xiaomi.net", "CN", 3_000_000, 10_000)
        .run(&mut ev);
    let a = firing(&ev, &o);
    assert_eq!(a.len(), 1, "{:?}", o.alerts);
    let labels: Vec<(&str, &str)> =
        a[0].labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(
        labels,
        vec![
            ("alertname", "PhoneCloudUpload"),
            ("client", "phone"),
            ("destination", "xiaomi.net"),
            ("mac", "64:09:80:4a:1c:07"),
            ("severity", "critical"),
            ("story", "cloud-sync-off"),
        ]
    );
    // 100 kB × 8 polls still inside the window (T0+240..T0+660) + 6 MB.
    assert_eq!(a[0].annotations["summary"], "phone uploaded 6.8 MB to xiaomi.net in 10m");
    assert_eq!(a[0].starts_at, at(T0 + 780));
    assert_eq!(a[0].generator_url, "http://sensor:9977/api/v1/flows?client=64:09:80:4a:1c:07");
    assert_eq!(o.fired, vec![("PhoneCloudUpload".to_string(), "phone".to_string())]);
    assert_eq!(o.counts["PhoneCloudUpload"], (0, 1));
    // Upload stops: the window drains; the alert resolves when it holds 5 MB or less.
    let mut resolved_at = None;
    for i in 1..=10 {
        let o = poll(T0 + 780 + 60 * i).run(&mut ev);
        if let Some(r) = o.alerts.iter().find_map(|a| a.resolved_at) {
            resolved_at = Some(r);
            break;
        }
        assert_eq!(firing(&ev, &o).len(), 1);
    }
    // Samples at T0+720 and +780 (3 MB each) leave the window at +1320 and +1380: 3 MB
    // remain at +1320 (below 5 MB), so it resolves then.
    assert_eq!(resolved_at, Some(at(T0 + 1320)));
    // Resolved alerts are passed on for the retention (15 min), then dropped.
    let o = poll(T0 + 1320 + 899).run(&mut ev);
    assert_eq!(o.alerts.len(), 1);
    assert_eq!(o.alerts[0].resolved_at, Some(at(T0 + 1320)));
    let o = poll(T0 + 1320 + 900).run(&mut ev);
    assert!(o.alerts.is_empty());
    assert_eq!(o.series, 0, "finished series are forgotten");
}

#[test]
fn for_keeps_an_alert_pending_until_it_held_long_enough() {
    let mut ev = evaluator(
        "rules:\n  - name: Rate\n    for: 2m\n    condition: {rate: {direction: upload, bytes_per_second: 10kB, window: 1m}}\n",
    );
    // 1.2 MB per minute = 20 kB/s.
    let o = poll(T0).flow(1, "198.51.100.1", 443, "", "US", 1_200_000, 0).run(&mut ev);
    assert_eq!(o.counts["Rate"], (1, 0));
    assert!(o.alerts.is_empty());
    let o = poll(T0 + 60).flow(1, "198.51.100.1", 443, "", "US", 1_200_000, 0).run(&mut ev);
    assert_eq!(o.counts["Rate"], (1, 0));
    let o = poll(T0 + 120).flow(1, "198.51.100.1", 443, "", "US", 1_200_000, 0).run(&mut ev);
    assert_eq!(o.counts["Rate"], (0, 1));
    assert_eq!(firing(&ev, &o)[0].labels["destination"], "198.51.100.1");
    assert_eq!(
        firing(&ev, &o)[0].annotations["summary"],
        "tv sustains 20.0 kB/s with 198.51.100.1"
    );
    // A dip below the rate while pending resets it.
    let mut ev = evaluator(
        "rules:\n  - name: Rate\n    for: 2m\n    condition: {rate: {bytes_per_second: 10kB, window: 1m}}\n",
    );
    poll(T0).flow(1, "198.51.100.1", 443, "", "US", 1_200_000, 0).run(&mut ev);
    let o = poll(T0 + 60).flow(1, "198.51.100.1", 443, "", "US", 100_000, 0).run(&mut ev);
    assert_eq!(o.counts["Rate"], (0, 0));
    let o = poll(T0 + 120).flow(1, "198.51.100.1", 443, "", "US", 1_200_000, 0).run(&mut ev);
    assert_eq!(o.counts["Rate"], (1, 0), "pending again from the start");
    let o = poll(T0 + 240).flow(1, "198.51.100.1", 443, "", "US", 1_200_000, 0).run(&mut ev);
    assert_eq!(o.counts["Rate"], (0, 1));
    // packets_per_second
    let mut ev = evaluator(
        "rules:\n  - name: Pps\n    condition: {rate: {packets_per_second: 10, window: 10s}}\n",
    );
    let o = poll(T0).flow(0, "198.51.100.1", 443, "", "US", 100_000, 0).run(&mut ev);
    assert_eq!(o.counts["Pps"], (0, 0), "100 packets in 10 s is 10/s, not above");
    let o = poll(T0 + 1).flow(0, "198.51.100.1", 443, "", "US", 1_000, 0).run(&mut ev);
    assert_eq!(o.counts["Pps"], (0, 1));
}

#[test]
fn traffic_condition_and_exceptions_at_every_level() {
    let yaml = r#"
exceptions:
  - client: {name: tv}
    destination: {domain: "*.netflix.com"}
rules:
  - name: AnyCN
    match: {destination: {country: CN}}
    condition: {traffic: {window: 5m}}
    except:
      - destination: {domain: ntp.example.cn}
      - client: {group: media}
        destination: {cidr: 203.0.113.0/24}
"#;
    let mut ev = evaluator(yaml);
    let o = poll(T0)
        .flow(1, "203.0.113.5", 443, "x.netflix.com", "CN", 10, 10)
        .flow(0, "198.51.100.9", 123, "ntp.example.cn", "CN", 10, 10)
        .flow(1, "203.0.113.6", 443, "", "CN", 10, 10)
        .flow(0, "198.51.100.1", 443, "cdn.example.com", "US", 10, 10)
        .run(&mut ev);
    assert!(o.alerts.is_empty(), "{:?}", o.alerts);
    // The same TV traffic from the phone is not excepted.
    let o = poll(T0 + 5).flow(0, "203.0.113.6", 443, "", "CN", 10, 10).run(&mut ev);
    assert_eq!(firing(&ev, &o).len(), 1);
    assert_eq!(firing(&ev, &o)[0].labels["client"], "phone");
    // Holds for the window after the last packet, then resolves.
    let o = poll(T0 + 304).run(&mut ev);
    assert_eq!(firing(&ev, &o).len(), 1);
    let o = poll(T0 + 305).run(&mut ev);
    assert_eq!(o.alerts[0].resolved_at, Some(at(T0 + 305)));
}

#[test]
fn new_destination_after_learning_and_across_a_restart() {
    let yaml = "rules:\n  - name: NewDest\n    match: {client: {group: phones}}\n    condition: {new_destination: {by: domain, learning: 1h, window: 10m}}\n";
    let mut ev = evaluator(yaml);
    let o = poll(T0).flow(0, "198.51.100.1", 443, "www.example.com", "US", 10, 10).run(&mut ev);
    assert!(o.alerts.is_empty(), "learning");
    // Saved and restored (an agent restart): what was learnt stays learnt.
    let saved = serde_json::to_string(ev.state()).unwrap();
    let state: EvalState = serde_json::from_str(&saved).unwrap();
    let mut ev =
        Evaluator::new(policy(yaml), state, "http://sensor:9977".into(), Duration::from_secs(900));
    let o =
        poll(T0 + 3600).flow(0, "198.51.100.2", 443, "api.example.com", "US", 10, 10).run(&mut ev);
    assert!(o.alerts.is_empty(), "example.com was learnt: {:?}", o.alerts);
    let o =
        poll(T0 + 3601).flow(0, "203.0.113.7", 443, "sync.xiaomi.net", "CN", 10, 10).run(&mut ev);
    assert_eq!(firing(&ev, &o).len(), 1);
    assert_eq!(firing(&ev, &o)[0].labels["destination"], "xiaomi.net");
    assert_eq!(
        firing(&ev, &o)[0].annotations["summary"],
        "phone contacted a new destination: xiaomi.net"
    );
    // Seen once, known from now on; the alert holds for its window.
    let o =
        poll(T0 + 3700).flow(0, "203.0.113.7", 443, "sync.xiaomi.net", "CN", 10, 10).run(&mut ev);
    assert_eq!(o.fired.len(), 0);
    assert_eq!(firing(&ev, &o).len(), 1);
    let o = poll(T0 + 3601 + 600).run(&mut ev);
    assert_eq!(o.alerts[0].resolved_at, Some(at(T0 + 4201)));
    // The TV is not matched by the rule.
    let o =
        poll(T0 + 4300).flow(1, "203.0.113.8", 443, "new.example.org", "US", 10, 10).run(&mut ev);
    assert!(firing(&ev, &o).is_empty());
}

/// State files written before destinations were stored as hashes list their labels: they
/// load as the same destinations, and the state is saved as hashes from then on.
#[test]
fn learnt_destinations_from_an_older_state_file_stay_learnt() {
    let yaml = "rules:\n  - name: NewDest\n    condition: {new_destination: {by: domain, learning: 1h, window: 10m}}\n";
    let phone = crate::types::labels::mac(&PHONE);
    let old = format!(
        r#"{{"started":{T0},"devices":{{}},"series":{{}},"destinations":{{"{phone}":{{"first_seen":{T0},"seen":{{"domain":["example.com","198.51.100.9"]}}}}}}}}"#
    );
    let state: EvalState = serde_json::from_str(&old).unwrap();
    let mut ev =
        Evaluator::new(policy(yaml), state, "http://sensor:9977".into(), Duration::from_secs(900));
    let o = poll(T0 + 7200)
        .flow(0, "198.51.100.1", 443, "www.example.com", "US", 10, 10)
        .flow(0, "198.51.100.9", 443, "", "US", 10, 10)
        .run(&mut ev);
    assert!(o.alerts.is_empty(), "both were learnt: {:?}", o.alerts);
    let o =
        poll(T0 + 7201).flow(0, "203.0.113.7", 443, "sync.xiaomi.net", "CN", 10, 10).run(&mut ev);
    assert_eq!(firing(&ev, &o).len(), 1);
    // Saved as three numbers (hashes), and read back as the same three.
    let saved: serde_json::Value = serde_json::to_value(ev.state()).unwrap();
    let seen = &saved["destinations"][phone.as_str()]["seen"]["domain"];
    assert_eq!(seen.as_array().map(|a| a.iter().filter(|v| v.is_u64()).count()), Some(3), "{seen}");
    let again: EvalState = serde_json::from_value(saved.clone()).unwrap();
    assert_eq!(serde_json::to_value(&again).unwrap(), saved);
}

/// A state file written while every series held all its texts itself (and its destination
/// twice): it loads, saves byte for byte the same, and its alerts carry on.
#[test]
fn series_of_an_older_state_file_load_and_save_the_same() {
    let yaml = "rules:\n  - name: Up\n    for: 5m\n    condition: {volume: {direction: upload, above: 5MB, window: 10m}}\n  - name: NewDevice\n    condition: {new_device: {learning: 10m, window: 1h}}\n";
    let (mac, tv) = (crate::types::labels::mac(&PHONE), crate::types::labels::mac(&TV));
    let labels = r#""client":"phone","group":"phones","vendor":"Xiaomi""#;
    let sample =
        |t: u64, up: u64| format!(r#"{{"t":{t},"bytes":[{up},0],"packets":[{},0]}}"#, up / 1000);
    let old = [
        format!(r#"{{"started":{T0},"devices":{{"{mac}":{T0},"{tv}":{T0}}},"destinations":{{}},"series":{{"#),
        format!(r#""NewDevice\u001f{mac}\u001f":{{"rule":"NewDevice","mac":"{mac}","destination":"",{labels},"country":"","asn":0,"samples":[],"event_at":{},"phase":{{"Firing":{{"fired_at":{}}}}},"resolved":null,"last_bytes":0,"last_packets":0}},"#, T0 + 100, T0 + 100),
        format!(r#""Up\u001f{mac}\u001fexample.com":{{"rule":"Up","mac":"{mac}","destination":"example.com",{labels},"country":"US","asn":64500,"samples":[{}],"event_at":null,"phase":{{"Pending":{{"active_at":{}}}}},"resolved":null,"last_bytes":5500000,"last_packets":5500}},"#, sample(T0 + 540, 5_500_000), T0 + 540),
        format!(r#""Up\u001f{mac}\u001fxiaomi.net":{{"rule":"Up","mac":"{mac}","destination":"xiaomi.net",{labels},"country":"CN","asn":4808,"samples":[{},{},{}],"event_at":null,"phase":{{"Firing":{{"fired_at":{}}}}},"resolved":[{},{}],"last_bytes":6000000,"last_packets":6000}}}}}}"#, sample(T0 + 500, 2_000_000), sample(T0 + 530, 2_000_000), sample(T0 + 560, 2_000_000), T0 + 560, T0 + 100, T0 + 400),
    ]
    .concat();
    let state: EvalState = serde_json::from_str(&old).unwrap();
    assert_eq!(serde_json::to_string(&state).unwrap(), old);
    let mut ev =
        Evaluator::new(policy(yaml), state, "http://sensor:9977".into(), Duration::from_secs(900));
    let o = poll(T0 + 600).run(&mut ev);
    let a = firing(&ev, &o);
    let label = |i: usize, k: &str| a[i].labels.get(k).cloned();
    assert_eq!(a.len(), 2, "{:?}", o.alerts);
    assert_eq!((label(0, "alertname"), label(0, "destination")), (Some("NewDevice".into()), None));
    assert_eq!(label(1, "destination").as_deref(), Some("xiaomi.net"));
    assert_eq!((label(1, "client"), label(1, "mac")), (Some("phone".into()), Some(mac.clone())));
    assert_eq!(a[1].starts_at, at(T0 + 560));
    assert_eq!(
        a[1].annotations["description"],
        "phone (64:09:80:4a:1c:07) moved 6.0 MB with xiaomi.net (CN AS4808) within 10m, above the rule's limit."
    );
    // The pending series holds 5.5 MB for 60 s of its 5 minutes.
    assert_eq!(o.counts["Up"], (1, 1));
}

/// A window's samples through many polls (a few, many, none) and restarts: it always adds up
/// the traffic of exactly the last `window` seconds.
#[test]
fn window_adds_up_its_samples_as_it_grows_and_drains() {
    let yaml = "rules:\n  - name: T\n    condition: {traffic: {window: 64s}}\n    summary: \"{{ packets }}\"\n";
    let mut ev = evaluator(yaml);
    let mut rng = fastrand::Rng::with_seed(7);
    let mut sent: Vec<(u64, u64)> = Vec::new();
    let mut now = T0;
    for i in 0..600 {
        // A step of the window is 1 s: every poll is a sample of its own.
        now += [1, 1, 1, 2, 3, 10, 40, 70][rng.usize(..8)];
        let packets = rng.u64(0..4);
        let mut p = poll(now);
        if packets > 0 {
            p = p.flow(0, "198.51.100.1", 443, "", "US", packets * 1000, 0);
            sent.push((now, packets));
        }
        let o = p.run(&mut ev);
        let expected: u64 = sent.iter().filter(|(t, _)| t + 64 > now).map(|(_, p)| p).sum();
        let summary = firing(&ev, &o).first().map(|a| a.annotations["summary"].clone());
        assert_eq!(summary, (expected > 0).then(|| expected.to_string()), "poll {i}");
        if i % 7 == 3 {
            let saved = serde_json::to_string(ev.state()).unwrap();
            let state: EvalState = serde_json::from_str(&saved).unwrap();
            assert_eq!(serde_json::to_string(&state).unwrap(), saved);
            ev = Evaluator::new(
                policy(yaml),
                state,
                "http://sensor:9977".into(),
                Duration::from_secs(900),
            );
        }
    }
}

#[test]
fn new_device_after_learning() {
    let yaml = "rules:\n  - name: NewDevice\n    condition: {new_device: {learning: 10m, window: 1h}}\n    except: [{client: {mac: \"a4:77:33:00:00:99\"}}]\n";
    let mut ev = evaluator(yaml);
    let o = poll(T0).run(&mut ev);
    assert!(o.alerts.is_empty(), "phone and TV are learnt at first start");
    let facts = |now: u64, macs: &[[u8; 6]]| PollFacts {
        now,
        clients: macs.iter().map(|m| client(*m, &format!("dev-{:02x}", m[5]), "")).collect(),
        flows: Vec::new(),
    };
    let guest = [0x3c, 0xa9, 0xf4, 0, 0, 0x42];
    let excepted = [0xa4, 0x77, 0x33, 0, 0, 0x99];
    let o = ev.evaluate(&facts(T0 + 600, &[PHONE, TV, guest, excepted]));
    let a = firing(&ev, &o);
    assert_eq!(a.len(), 1, "{:?}", o.alerts);
    assert_eq!(a[0].labels["client"], "dev-42");
    assert_eq!(a[0].labels["mac"], "3c:a9:f4:00:00:42");
    assert!(!a[0].labels.contains_key("destination"));
    // Not new a second time.
    let o = ev.evaluate(&facts(T0 + 700, &[guest]));
    assert!(o.fired.is_empty());
}

#[test]
fn dns_bypass_fires_on_dns_elsewhere_not_on_the_resolvers() {
    let yaml = "dns: {resolvers: [198.51.100.53]}\nrules:\n  - name: DnsBypass\n    condition: {dns_bypass: {}}\n";
    let mut ev = evaluator(yaml);
    let o = poll(T0).flow(0, "198.51.100.53", 53, "", "US", 60, 120).run(&mut ev);
    assert!(o.alerts.is_empty());
    let o = poll(T0 + 5)
        .flow(1, "8.8.8.8", 853, "", "US", 60, 120)
        .flow(0, "1.1.1.1", 443, "", "US", 600, 900)
        .run(&mut ev);
    let mut got: Vec<(String, String)> = firing(&ev, &o)
        .iter()
        .map(|a| (a.labels["client"].clone(), a.labels["destination"].clone()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("phone".to_string(), "1.1.1.1".to_string()),
            ("tv".to_string(), "8.8.8.8".to_string())
        ]
    );
}

#[test]
fn schedule_only_counts_traffic_inside_its_windows() {
    let yaml = r#"
rules:
  - name: NightUpload
    condition: {traffic: {direction: upload, window: 1m}}
    schedule: {timezone: UTC, windows: [{days: [mon], from: "22:00", to: "06:00"}]}
"#;
    let mut ev = evaluator(yaml);
    let o = poll(T0 + 12 * 3600).flow(0, "198.51.100.1", 443, "", "US", 10, 0).run(&mut ev);
    assert!(o.alerts.is_empty(), "Monday noon");
    let o = poll(T0 + 23 * 3600).flow(0, "198.51.100.1", 443, "", "US", 10, 0).run(&mut ev);
    assert_eq!(firing(&ev, &o).len(), 1, "Monday 23:00");
    // Download only does not count.
    let mut ev = evaluator(yaml);
    let o = poll(T0 + 23 * 3600).flow(0, "198.51.100.1", 443, "", "US", 0, 10).run(&mut ev);
    assert!(o.alerts.is_empty());
}

#[test]
fn reload_keeps_state_of_rules_that_remain() {
    let mut ev = evaluator(UPLOAD_RULE);
    let o = poll(T0).flow(0, "203.0.113.20", 443, "up.xiaomi.net", "CN", 6_000_000, 0).run(&mut ev);
    assert_eq!(firing(&ev, &o).len(), 1);
    let mut changed = UPLOAD_RULE.replace("severity: critical", "severity: warning");
    changed.push_str(
        "  - name: Other\n    condition: {traffic: {}}\n    match: {client: {name: nobody}}\n",
    );
    ev.replace(policy(&changed), "http://sensor:9977".into(), Duration::from_secs(900));
    let o = poll(T0 + 60).run(&mut ev);
    let a = firing(&ev, &o);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].starts_at, at(T0), "still the same firing instance");
    assert_eq!(a[0].labels["severity"], "warning");
    ev.replace(policy("rules: []\n"), "http://sensor:9977".into(), Duration::from_secs(900));
    assert!(poll(T0 + 120).run(&mut ev).alerts.is_empty());
}

/// A household's own-network chatter (SSDP, mDNS, LLMNR, DHCP broadcasts, router solicitations,
/// MLD reports, link-local) is never remote and never a new destination: the shipped
/// CameraForeignCountry and PhoneNewDestination rules fired on it before.
#[test]
fn the_network_itself_is_never_remote_nor_a_new_destination() {
    let yaml = r#"
rules:
  - name: ForeignCountry
    match:
      client: {group: media}
      destination: {scope: remote}
    condition: {traffic: {window: 5m}}
    group_by: country
    except: [{destination: {country: [DE]}}]
  - name: NewDest
    match: {client: {group: phones}}
    condition: {new_destination: {by: domain, learning: 1h, window: 10m}}
"#;
    let mut ev = evaluator(yaml);
    let chatter = [
        ("239.255.255.250", 1900),
        ("224.0.0.251", 5353),
        ("224.0.0.252", 5355),
        ("255.255.255.255", 67),
        ("169.254.1.1", 80),
        ("ff02::2", 0),
        ("ff02::16", 0),
        ("ff02::fb", 5353),
        ("ff02::c", 3702),
        ("fe80::1", 53),
    ];
    let household = |now: u64| {
        let mut p = poll(now);
        for (ip, port) in chatter {
            p = p.flow(0, ip, port, "", "", 300, 0).flow(1, ip, port, "", "", 300, 0);
        }
        // A LAN host is local too (not remote), though a phone's first visit to it is news.
        p.flow(1, "192.168.1.50", 445, "", "", 5_000, 100)
    };
    let o = household(T0).run(&mut ev);
    assert!(o.alerts.is_empty(), "learning, and nothing remote: {:?}", o.alerts);
    // After the learning hour the same chatter again, and for the first time: still nothing.
    let o = household(T0 + 3600).run(&mut ev);
    assert!(o.alerts.is_empty(), "{:?}", o.alerts);
    let o = poll(T0 + 3601)
        .flow(0, "ff02::1:ff00:7", 0, "", "", 72, 0)
        .flow(1, "224.0.0.22", 0, "", "", 54, 0)
        .run(&mut ev);
    assert!(o.alerts.is_empty(), "new groups are not new destinations: {:?}", o.alerts);
    // The same two rules on the internet: each fires once.
    let o = poll(T0 + 3602)
        .flow(0, "203.0.113.7", 443, "sync.xiaomi.net", "CN", 10, 10)
        .flow(1, "198.51.100.4", 443, "", "CN", 10, 10)
        .run(&mut ev);
    let mut fired: Vec<(String, String)> = firing(&ev, &o)
        .iter()
        .map(|a| (a.labels["alertname"].clone(), a.labels["destination"].clone()))
        .collect();
    fired.sort();
    assert_eq!(
        fired,
        [("ForeignCountry".into(), "CN".into()), ("NewDest".into(), "xiaomi.net".into())]
    );
}

/// The shipped story rule (deploy/policy.yaml) sums the maker's domains and China per phone:
/// 6 MB split over three CN addresses, or over xiaomi.net and xiaomi.com, fires once; a phone
/// on a private MAC fires when the inventory says who made it, and only then. Per destination
/// (the rule without `group_by: client`) the same uploads raise nothing.
#[test]
fn the_shipped_story_rule_sums_a_split_upload_and_sees_a_private_mac() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/policy.yaml");
    let shipped = std::fs::read_to_string(&path).unwrap();
    let phone = |mac: [u8; 6], name: &str, vendor: &str, oui_vendor: &str| ClientFacts {
        vendor: vendor.into(),
        oui_vendor: oui_vendor.into(),
        ..client(mac, name, "phones")
    };
    let xiaomi = "Xiaomi Communications Co Ltd";
    const PRIVATE: [u8; 6] = [0x6a, 0x1f, 0x33, 0x0c, 0x7e, 0x05];
    const UNNAMED: [u8; 6] = [0x7e, 0x00, 0x11, 0x22, 0x33, 0x44];
    let clients = vec![
        phone(PHONE, "redmi", xiaomi, xiaomi),
        phone(PRIVATE, "private-redmi", "Xiaomi", "randomized"),
        phone(UNNAMED, "randomized-223344", "randomized", "randomized"),
    ];
    let flow = |client: usize, ip: &str, name: &str, country: &str| {
        let remote_ip = ip.parse().ok();
        FlowFacts {
            client,
            remote_ip,
            reach: remote_ip.map_or(Reach::Internet, |ip| address::reach(&ip)),
            protocol: 6,
            port: 443,
            name: name.into(),
            domain: if name.is_empty() {
                String::new()
            } else {
                crate::enrich::domain::registrable(name)
            },
            country: country.into(),
            upload_bytes: 2_000_000,
            upload_packets: 1_400,
            ..FlowFacts::default()
        }
    };
    let uploads = |ev: &mut Evaluator, now: u64| {
        let mut flows = Vec::new();
        // The Xiaomi-OUI phone and the unnamed private one: three unnamed addresses in China,
        // 2 MB each.
        for client in [0, 2] {
            for ip in ["203.0.113.21", "203.0.113.22", "203.0.113.23"] {
                flows.push(flow(client, ip, "", "CN"));
            }
        }
        // The named private phone: two of the maker's domains, in the US, 3 MB each.
        for (ip, name) in
            [("198.51.100.31", "upload.xiaomi.net"), ("198.51.100.32", "sync.xiaomi.com")]
        {
            let mut f = flow(1, ip, name, "US");
            f.upload_bytes = 3_000_000;
            flows.push(f);
        }
        flows.sort_by_key(|f| f.client);
        ev.evaluate(&PollFacts { now, clients: clients.clone(), flows })
    };

    let mut ev = evaluator(&shipped);
    let o = uploads(&mut ev, T0);
    let mut fired: Vec<Vec<(String, String)>> = firing(&ev, &o)
        .iter()
        .map(|a| a.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .collect();
    fired.sort();
    let labels = |client: &str, mac: [u8; 6]| -> Vec<(String, String)> {
        [
            ("alertname", "PhoneCloudUploadWhileSyncOff"),
            ("client", client),
            ("mac", crate::types::labels::mac(&mac).as_str()),
            ("severity", "critical"),
            ("story", "cloud-sync-off"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    };
    assert_eq!(fired, [labels("private-redmi", PRIVATE), labels("redmi", PHONE)]);
    let summary: Vec<String> =
        firing(&ev, &o).iter().map(|a| a.annotations["summary"].clone()).collect();
    assert!(
        summary.contains(&"redmi uploaded 6.0 MB to its maker's cloud or to China in 10m".into()),
        "{summary:?}"
    );

    // The same rules per destination: every part stays under 5 MB.
    let per_destination = shipped.replace("    group_by: client\n", "");
    assert_ne!(per_destination, shipped);
    let mut ev = evaluator(&per_destination);
    let o = uploads(&mut ev, T0);
    assert!(firing(&ev, &o).is_empty(), "{:?}", firing(&ev, &o));
}
