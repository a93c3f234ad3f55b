//! The Patroni JSON parsers (`/cluster` and a member's `/patroni`) on
//! arbitrary bytes: errors, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgvane::topology::patroni;

fuzz_target!(|data: &[u8]| {
    let _ = patroni::parse(data);
    let _ = patroni::parse_status(data);
});
