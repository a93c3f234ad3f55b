//! Encoders for the few backend messages pgvane writes itself.
//! Each appends to a caller's buffer; none does IO.

use super::sqlstate::SqlState;
use super::tag::{backend as bt, field, frontend as ft};

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
    report(buf, bt::ERROR_RESPONSE, severity.as_str(), code, message);
}

/// Appends a `NoticeResponse` ('N') of severity WARNING, fields as
/// [`error_response`]'s.
pub fn warning(buf: &mut Vec<u8>, code: SqlState, message: &str) {
    report(buf, bt::NOTICE_RESPONSE, "WARNING", code, message);
}

fn report(buf: &mut Vec<u8>, kind: u8, severity: &str, code: SqlState, message: &str) {
    let start = buf.len();
    buf.push(kind);
    buf.extend_from_slice(&[0, 0, 0, 0]);
    for (tag, value) in [
        (field::SEVERITY, severity),
        (field::SEVERITY_RAW, severity),
        (field::CODE, code.code()),
    ] {
        buf.push(tag);
        buf.extend_from_slice(value.as_bytes());
        buf.push(0);
    }
    buf.push(field::MESSAGE);
    buf.extend(message.bytes().filter(|b| *b != 0));
    buf.push(0);
    buf.push(0);
    let len = u32::try_from(buf.len() - start - 1).unwrap_or(u32::MAX);
    buf[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

/// Appends one tagged message whose body `f` writes; fills in the length.
pub fn frame(buf: &mut Vec<u8>, tag: u8, f: impl FnOnce(&mut Vec<u8>)) {
    buf.push(tag);
    let at = buf.len();
    buf.extend_from_slice(&[0, 0, 0, 0]);
    f(buf);
    let len = u32::try_from(buf.len() - at).unwrap_or(u32::MAX);
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(buf: &mut Vec<u8>, s: &str) {
    buf.extend(s.bytes().filter(|b| *b != 0));
    buf.push(0);
}

/// 'Q' Query.
pub fn query(buf: &mut Vec<u8>, sql: &str) {
    frame(buf, ft::QUERY, |b| put_cstr(b, sql));
}

/// 'S' Sync.
pub fn sync(buf: &mut Vec<u8>) {
    frame(buf, ft::SYNC, |_| {});
}

/// 'X' Terminate.
pub fn terminate(buf: &mut Vec<u8>) {
    frame(buf, ft::TERMINATE, |_| {});
}

/// 'P' Parse with a raw parameter-type section (count + OIDs).
pub fn parse(buf: &mut Vec<u8>, name: &str, sql: &str, types: &[u8]) {
    frame(buf, ft::PARSE, |b| {
        put_cstr(b, name);
        put_cstr(b, sql);
        b.extend_from_slice(types);
    });
}

/// 'B' Bind with everything after the two names raw.
pub fn bind_raw(buf: &mut Vec<u8>, portal: &str, statement: &str, rest: &[u8]) {
    frame(buf, ft::BIND, |b| {
        put_cstr(b, portal);
        put_cstr(b, statement);
        b.extend_from_slice(rest);
    });
}

/// 'D' Describe or 'C' Close (`tag`) of `kind` `S`/`P`.
pub fn describe_or_close(buf: &mut Vec<u8>, tag: u8, kind: u8, name: &str) {
    frame(buf, tag, |b| {
        b.push(kind);
        put_cstr(b, name);
    });
}

/// 'R' Authentication request with `code` ([`super::tag::auth`]) and `data`.
pub fn auth(buf: &mut Vec<u8>, code: i32, data: &[u8]) {
    frame(buf, bt::AUTHENTICATION, |b| {
        b.extend_from_slice(&code.to_be_bytes());
        b.extend_from_slice(data);
    });
}

/// 'S' ParameterStatus.
pub fn parameter_status(buf: &mut Vec<u8>, name: &str, value: &str) {
    frame(buf, bt::PARAMETER_STATUS, |b| {
        put_cstr(b, name);
        put_cstr(b, value);
    });
}

/// 'K' BackendKeyData.
pub fn backend_key_data(buf: &mut Vec<u8>, pid: u32, key: u32) {
    frame(buf, bt::BACKEND_KEY_DATA, |b| {
        b.extend_from_slice(&pid.to_be_bytes());
        b.extend_from_slice(&key.to_be_bytes());
    });
}

/// 'Z' ReadyForQuery.
pub fn ready_for_query(buf: &mut Vec<u8>, status: u8) {
    frame(buf, bt::READY_FOR_QUERY, |b| b.push(status));
}

/// '1' ParseComplete.
pub fn parse_complete(buf: &mut Vec<u8>) {
    frame(buf, bt::PARSE_COMPLETE, |_| {});
}

/// '3' CloseComplete.
pub fn close_complete(buf: &mut Vec<u8>) {
    frame(buf, bt::CLOSE_COMPLETE, |_| {});
}

/// 'p' password / SASL response with raw `data`.
pub fn password(buf: &mut Vec<u8>, data: &[u8]) {
    frame(buf, ft::PASSWORD, |b| b.extend_from_slice(data));
}

/// 'p' SASLInitialResponse.
pub fn sasl_initial(buf: &mut Vec<u8>, mechanism: &str, data: &[u8]) {
    frame(buf, ft::PASSWORD, |b| {
        put_cstr(b, mechanism);
        b.extend_from_slice(&i32::try_from(data.len()).unwrap_or(i32::MAX).to_be_bytes());
        b.extend_from_slice(data);
    });
}

/// Untagged StartupMessage, protocol 3.0, with `params`.
pub fn startup(buf: &mut Vec<u8>, params: &[(&str, &str)]) {
    let at = buf.len();
    buf.extend_from_slice(&[0, 0, 0, 0]);
    buf.extend_from_slice(&super::PROTOCOL_3_0.to_be_bytes());
    for (k, v) in params {
        put_cstr(buf, k);
        put_cstr(buf, v);
    }
    buf.push(0);
    let len = u32::try_from(buf.len() - at).unwrap_or(u32::MAX);
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Untagged SSLRequest.
pub fn ssl_request(buf: &mut Vec<u8>) {
    buf.extend_from_slice(&8u32.to_be_bytes());
    buf.extend_from_slice(&super::SSL_REQUEST_CODE.to_be_bytes());
}

/// Untagged CancelRequest.
pub fn cancel_request(buf: &mut Vec<u8>, pid: u32, key: u32) {
    buf.extend_from_slice(&16u32.to_be_bytes());
    buf.extend_from_slice(&super::CANCEL_REQUEST_CODE.to_be_bytes());
    buf.extend_from_slice(&pid.to_be_bytes());
    buf.extend_from_slice(&key.to_be_bytes());
}

/// 'v' NegotiateProtocolVersion: newest minor supported and unknown options.
pub fn negotiate_protocol_version(buf: &mut Vec<u8>, minor: u32, unknown: &[&str]) {
    frame(buf, bt::NEGOTIATE_PROTOCOL_VERSION, |b| {
        b.extend_from_slice(&minor.to_be_bytes());
        b.extend_from_slice(&u32::try_from(unknown.len()).unwrap_or(0).to_be_bytes());
        for o in unknown {
            put_cstr(b, o);
        }
    });
}

/// '2' BindComplete.
pub fn bind_complete(buf: &mut Vec<u8>) {
    frame(buf, bt::BIND_COMPLETE, |_| {});
}

/// 'E' Execute of `portal`, all rows.
pub fn execute(buf: &mut Vec<u8>, portal: &str) {
    frame(buf, ft::EXECUTE, |b| {
        put_cstr(b, portal);
        b.extend_from_slice(&0u32.to_be_bytes());
    });
}

/// 'T' RowDescription of text columns named `names`.
pub fn row_description(buf: &mut Vec<u8>, names: &[&str]) {
    frame(buf, bt::ROW_DESCRIPTION, |b| {
        b.extend_from_slice(&u16::try_from(names.len()).unwrap_or(u16::MAX).to_be_bytes());
        for n in names {
            put_cstr(b, n);
            b.extend_from_slice(&0u32.to_be_bytes()); // table oid
            b.extend_from_slice(&0u16.to_be_bytes()); // column number
            b.extend_from_slice(&25u32.to_be_bytes()); // text
            b.extend_from_slice(&(-1i16).to_be_bytes()); // variable length
            b.extend_from_slice(&(-1i32).to_be_bytes()); // no modifier
            b.extend_from_slice(&0u16.to_be_bytes()); // text format
        }
    });
}

/// 'D' DataRow of text values.
pub fn data_row(buf: &mut Vec<u8>, values: &[&str]) {
    frame(buf, bt::DATA_ROW, |b| {
        b.extend_from_slice(
            &u16::try_from(values.len())
                .unwrap_or(u16::MAX)
                .to_be_bytes(),
        );
        for v in values {
            b.extend_from_slice(&u32::try_from(v.len()).unwrap_or(u32::MAX).to_be_bytes());
            b.extend_from_slice(v.as_bytes());
        }
    });
}

/// 'C' CommandComplete with `tag`.
pub fn command_complete(buf: &mut Vec<u8>, tag: &str) {
    frame(buf, bt::COMMAND_COMPLETE, |b| put_cstr(b, tag));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::sqlstate::CANNOT_CONNECT_NOW;

    #[test]
    fn error_response_is_framed() {
        let mut buf = Vec::new();
        error_response(&mut buf, Severity::Fatal, CANNOT_CONNECT_NOW, "no\0 node");
        assert_eq!(buf[0], bt::ERROR_RESPONSE);
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        assert_eq!(len + 1, buf.len());
        let body = &buf[5..];
        assert_eq!(body, b"SFATAL\0VFATAL\0C57P03\0Mno node\0\0");
    }
}
