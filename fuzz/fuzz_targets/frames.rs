//! Frame decoding: arbitrary bytes cut into messages (with and without the
//! pre-login 65,535-byte cap), each decoded as a client and a server
//! message and, for errors, into its fields. Nothing may panic, and a cut
//! message must be exactly what its header announced.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgvane::protocol::message::{self, Backend, Frontend};

fuzz_target!(|data: &[u8]| {
    for max in [usize::MAX, message::MAX_AUTH_MESSAGE_LEN] {
        let mut buf = BytesMut::from(data);
        loop {
            let cut = if max == usize::MAX {
                message::try_cut(&mut buf)
            } else {
                message::try_cut_max(&mut buf, max)
            };
            match cut {
                Ok(Some(m)) => {
                    let announced =
                        u32::from_be_bytes([m.raw()[1], m.raw()[2], m.raw()[3], m.raw()[4]]);
                    assert_eq!(m.raw().len(), announced as usize + 1);
                    let _ = Frontend::parse(&m);
                    let _ = Backend::parse(&m);
                    let _ = message::error_fields(m.body());
                }
                Ok(None) | Err(_) => break,
            }
        }
    }
});
