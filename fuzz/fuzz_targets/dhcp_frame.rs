//! Whole Ethernet frames as the DHCP capture hands them up (device fingerprints): any device
//! on the LAN can send them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sensor::enrich::dhcp::{MAX_FIELD, classify, parse_frame};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(sighting)) = parse_frame(data) {
        let r = &sighting.request;
        for field in [&r.hostname, &r.vendor_class, &r.parameters, &r.client_id] {
            assert!(field.len() <= MAX_FIELD, "{field:?}");
            assert!(field.bytes().all(|b| b.is_ascii_graphic() || b == b' '), "{field:?}");
        }
        assert_ne!(sighting.other_mac, Some(sighting.mac));
        let _ = classify(r);
    }
});
