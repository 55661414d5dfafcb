//! The policy file, whatever it holds: `Policy::parse` never panics; an accepted policy then
//! evaluates a few polls of fixed traffic without panicking, and an error names the file.
#![no_main]

use std::{path::Path, time::Duration};

use libfuzzer_sys::fuzz_target;
use sensor::policy::{
    Policy,
    eval::{EvalState, Evaluator},
    matcher::{ClientFacts, FlowFacts, PollFacts},
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Policy::parse(text, Path::new("fuzz.yaml")) {
        Ok(policy) => {
            let rules = policy.rules.len();
            let mut ev = Evaluator::new(
                policy,
                EvalState::default(),
                "http://sensor".into(),
                Duration::from_secs(900),
            );
            let client = ClientFacts {
                mac: [0x64, 0x09, 0x80, 1, 2, 3],
                mac_text: "64:09:80:01:02:03".into(),
                name: "phone".into(),
                group: "phones".into(),
                vendor: "Xiaomi Communications Co Ltd".into(),
                ..ClientFacts::default()
            };
            let flow = FlowFacts {
                client: 0,
                remote_ip: "203.0.113.9".parse().ok(),
                reach: sensor::types::address::Reach::Internet,
                protocol: 17,
                port: 53,
                name: "api.xiaomi.net".into(),
                domain: "xiaomi.net".into(),
                country: "CN".into(),
                asn: 4808,
                upload_bytes: 6_000_000,
                download_bytes: 1_000,
                upload_packets: 4_000,
                download_packets: 2,
            };
            // Polls across a day and a week boundary, so that schedules are exercised.
            for now in [1_795_392_000u64, 1_795_392_060, 1_795_478_400, 1_795_996_800] {
                let outcome = ev.evaluate(&PollFacts {
                    now,
                    clients: vec![client.clone()],
                    flows: vec![flow.clone()],
                });
                assert!(outcome.counts.len() <= rules);
            }
        }
        Err(e) => {
            let shown = e.to_string();
            assert!(shown.starts_with("fuzz.yaml"), "{shown}");
        }
    }
});
