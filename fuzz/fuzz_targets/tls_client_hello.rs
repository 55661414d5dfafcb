//! TLS records from clients, possibly cut short (the kernel copies at most 1280 bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sensor::enrich::tls::client_hello_sni;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(name)) = client_hello_sni(data) {
        assert!(!name.is_empty() && name.len() <= 253, "{name:?}");
        assert!(!name.ends_with('.') && name == name.to_ascii_lowercase(), "{name:?}");
        assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
    }
});
