//! The config loader on arbitrary YAML: a list of errors with field
//! paths, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(errors) = pgvane::config::load_str(text) {
            assert!(!errors.0.is_empty());
        }
    }
});
