//! Startup packets: the length check and the parser of the first packet
//! (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest) on arbitrary
//! bytes. Nothing may panic; a packet the length check accepts is at most
//! 10,000 bytes, as PostgreSQL allows.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgvane::protocol::startup;

fuzz_target!(|data: &[u8]| {
    if data.len() >= 4 {
        if let Ok(Some(len)) = startup::packet_len(&data[..4]) {
            assert!(len <= 10_000);
        }
    }
    let _ = startup::parse(data);
});
