//! SCRAM-SHA-256 server side: arbitrary client-first and client-final
//! messages (split at the first 0xff byte) under each channel-binding
//! state, and arbitrary verifier text. Nothing may panic, and no input
//! may pass the proof check without the password.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgvane::auth::scram::{Binding, Server, Verifier};

fuzz_target!(|data: &[u8]| {
    let (first, fin) = match data.iter().position(|b| *b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let v = Verifier::from_password("secret", b"0123456789abcdef", 1);
    let end_point = [9u8; 32];
    for binding in [
        Binding::Unavailable,
        Binding::Declined,
        Binding::Selected(&end_point),
    ] {
        let mut s = Server::with_binding(&v, "N".into(), binding);
        if s.client_first(first).is_ok() {
            assert!(
                s.client_final(fin).is_err(),
                "a proof passed without the password"
            );
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Verifier::parse(text);
    }
});
