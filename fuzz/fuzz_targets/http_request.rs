//! HTTP/1.x requests from clients, possibly cut short.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sensor::enrich::http::request_host;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(host)) = request_host(data) {
        assert!(!host.is_empty() && host.len() <= 253, "{host:?}");
        assert!(!host.ends_with('.') && host == host.to_ascii_lowercase(), "{host:?}");
        assert!(host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
    }
});
