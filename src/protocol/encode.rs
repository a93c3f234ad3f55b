//! Encoders for the few backend messages pgvane writes itself.
//! Each appends to a caller's buffer; none does IO.

use super::sqlstate::SqlState;

/// Severity of an `ErrorResponse`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The statement failed; the session goes on.
    Error,
    /// The session ends.
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// Appends an `ErrorResponse` ('E') with fields S, V, C and M
/// (<https://www.postgresql.org/docs/15/protocol-error-fields.html>).
/// Interior NUL bytes in `message` are dropped so the frame stays valid.
pub fn error_response(buf: &mut Vec<u8>, severity: Severity, code: SqlState, message: &str) {
    let start = buf.len();
    buf.push(b'E');
    buf.extend_from_slice(&[0, 0, 0, 0]);
    for (tag, value) in [
        (b'S', severity.as_str()),
        (b'V', severity.as_str()),
        (b'C', code.code()),
    ] {
        buf.push(tag);
        buf.extend_from_slice(value.as_bytes());
        buf.push(0);
    }
    buf.push(b'M');
    buf.extend(message.bytes().filter(|b| *b != 0));
    buf.push(0);
    buf.push(0);
    let len = u32::try_from(buf.len() - start - 1).unwrap_or(u32::MAX);
    buf[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::sqlstate::CANNOT_CONNECT_NOW;

    #[test]
    fn error_response_is_framed() {
        let mut buf = Vec::new();
        error_response(&mut buf, Severity::Fatal, CANNOT_CONNECT_NOW, "no\0 node");
        assert_eq!(buf[0], b'E');
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        assert_eq!(len + 1, buf.len());
        let body = &buf[5..];
        assert_eq!(body, b"SFATAL\0VFATAL\0C57P03\0Mno node\0\0");
    }
}
