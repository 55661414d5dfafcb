//! The agent's YAML config, whatever the file holds: `Config::parse` never panics; it returns
//! a config that passes its own validation, or an error that names the file.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sensor::config::Config;

fuzz_target!(|data: &[u8]| {
    // A config file is text: the loader reads it with read_to_string, which refuses non-UTF-8.
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Config::parse(text, Path::new("fuzz.yaml")) {
        Ok(config) => {
            assert!(
                !config.interface.is_empty() && config.interface.len() < 16,
                "{:?}",
                config.interface
            );
            assert!(config.flow_capacity >= 16 && config.client_capacity >= 1);
            assert!(config.top_remotes >= 1 && config.series_budget >= 1);
        }
        Err(e) => {
            let shown = e.to_string();
            assert!(shown.starts_with("fuzz.yaml"), "{shown}");
        }
    }
});
