//! DNS responses as the kernel hands them up, over UDP and over TCP (length-prefixed).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sensor::enrich::dns::parse_response;

fuzz_target!(|data: &[u8]| {
    for tcp in [false, true] {
        if let Ok(answer) = parse_response(data, tcp) {
            let q = &answer.qname;
            assert!(!q.is_empty() && q.len() <= 253, "{q:?}");
            assert!(!q.ends_with('.') && *q == q.to_ascii_lowercase(), "{q:?}");
            for (i, (ip, _)) in answer.addrs.iter().enumerate() {
                assert!(!answer.addrs[..i].iter().any(|(seen, _)| seen == ip));
            }
        }
    }
});
