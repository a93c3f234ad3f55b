//! The PostgreSQL v3 wire format, as far as pgvane needs it.
//! Owns constants (message tags, auth codes: [`tag`]), SQLSTATEs, startup-packet reading and message encoders;
//! knows nothing of pgvane's types. Fed raw bytes by `relay` and `listener`.

pub mod encode;
pub mod message;
pub mod sqlstate;
pub mod startup;
pub mod tag;

#[cfg(test)]
mod proptests;

/// Largest startup packet accepted, as PostgreSQL's `MAX_STARTUP_PACKET_LENGTH`
/// (src/include/libpq/pqcomm.h).
pub const MAX_STARTUP_PACKET_LENGTH: usize = 10_000;

/// Request code of an SSLRequest (`1234 << 16 | 5679`, pqcomm.h `NEGOTIATE_SSL_CODE`).
pub const SSL_REQUEST_CODE: u32 = 80_877_103;

/// Request code of a GSSENCRequest (`1234 << 16 | 5680`, pqcomm.h `NEGOTIATE_GSS_CODE`).
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;

/// Request code of a CancelRequest (`1234 << 16 | 5678`, pqcomm.h `CANCEL_REQUEST_CODE`).
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;

/// Protocol version 3.0 (`3 << 16`).
pub const PROTOCOL_3_0: u32 = 196_608;
