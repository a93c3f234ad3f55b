//! Tagged protocol messages as zero-copy views over `Bytes`, and the framed
//! reader that cuts them out of a stream ("check, then parse").
//! Frontend and backend tags mean different things, so readers are split
//! by direction: [`Frontend`] for what clients send, [`Backend`] for what
//! servers send. Malformed input is an error, never a panic.

use super::tag::{backend as bt, field, frontend as ft, target};
use bytes::{Buf, Bytes, BytesMut};
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest message pgvane accepts from either side (PostgreSQL's own
/// `PQ_LARGE_MESSAGE_LIMIT` is 1 GB; a router needs less).
pub const MAX_MESSAGE_LEN: usize = 256 * 1024 * 1024;

/// Largest message accepted before login (password, SASL), as PostgreSQL's
/// `PG_MAX_AUTH_TOKEN_LENGTH`.
pub const MAX_AUTH_MESSAGE_LEN: usize = 65_535;

/// Most buffer reserved ahead for one announced message: a larger one grows
/// as its bytes arrive, so an announced length alone costs no memory.
const RESERVE_AHEAD: usize = 1024 * 1024;

/// One whole tagged message: tag byte, 4-byte length, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    raw: Bytes,
}

impl Message {
    /// Wraps raw bytes that already form one message.
    #[must_use]
    pub fn from_raw(raw: Bytes) -> Self {
        Self { raw }
    }

    /// The tag byte.
    #[must_use]
    pub fn tag(&self) -> u8 {
        self.raw[0]
    }

    /// The body after the length.
    #[must_use]
    pub fn body(&self) -> &[u8] {
        &self.raw[5..]
    }

    /// The whole message, ready to forward.
    #[must_use]
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }
}

/// Why a stream of messages could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer closed between messages.
    #[error("connection closed")]
    Closed,
    /// The peer closed inside a message.
    #[error("connection closed mid-message")]
    Truncated,
    /// A length field below 4 or above the limit.
    #[error("invalid message length {0}")]
    BadLength(u32),
    /// Socket error.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Cuts one message out of `buf` if a whole one is there.
///
/// # Errors
/// [`ReadError::BadLength`] for an impossible length.
pub fn try_cut(buf: &mut BytesMut) -> Result<Option<Message>, ReadError> {
    try_cut_max(buf, MAX_MESSAGE_LEN)
}

/// [`try_cut`] with messages longer than `max` (length field included)
/// refused.
///
/// # Errors
/// [`ReadError::BadLength`] for an impossible or too large length.
pub fn try_cut_max(buf: &mut BytesMut, max: usize) -> Result<Option<Message>, ReadError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 || len as usize > max {
        return Err(ReadError::BadLength(len));
    }
    let total = len as usize + 1;
    if buf.len() < total {
        buf.reserve((total - buf.len()).min(RESERVE_AHEAD));
        return Ok(None);
    }
    Ok(Some(Message {
        raw: buf.split_to(total).freeze(),
    }))
}

/// What [`relay_run`] does with a message, by its tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relay {
    /// Relays it and goes on.
    Pass,
    /// Relays it and stops after it.
    Last,
    /// Leaves it (the caller reads it as a message) and stops.
    Keep,
}

/// The length of the run of whole messages at the start of `buf` to relay
/// as they are, at least `room` bytes long only by its last message:
/// each message `decide` passes, up to one it keeps, one after a
/// [`Relay::Last`], one not whole yet, or one of an impossible length
/// (left for [`try_cut`] to refuse). `each` sees every relayed message's
/// tag and body, in order. Nothing is cut or copied.
pub fn relay_run(
    buf: &[u8],
    room: usize,
    mut decide: impl FnMut(u8) -> Relay,
    mut each: impl FnMut(u8, &[u8]),
) -> usize {
    let mut end = 0;
    while end < room {
        let Some(&[tag, a, b, c, d]) = buf.get(end..end + 5) else {
            break;
        };
        let len = u32::from_be_bytes([a, b, c, d]) as usize;
        let total = len + 1;
        if !(4..=MAX_MESSAGE_LEN).contains(&len) || buf.len() - end < total {
            break;
        }
        let then = decide(tag);
        if then == Relay::Keep {
            break;
        }
        each(tag, &buf[end + 5..end + total]);
        end += total;
        if then == Relay::Last {
            break;
        }
    }
    end
}

/// Reads the next message from `r`, buffering in `buf`.
/// Not cancel safe across the buffer: keep `buf` with the stream.
///
/// # Errors
/// [`ReadError`] on EOF, a bad length or an IO error.
pub async fn read_message<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
) -> Result<Message, ReadError> {
    read_message_max(r, buf, MAX_MESSAGE_LEN).await
}

/// [`read_message`] with messages longer than `max` refused.
///
/// # Errors
/// [`ReadError`] on EOF, a bad or too large length, or an IO error.
pub async fn read_message_max<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Message, ReadError> {
    loop {
        if let Some(m) = try_cut_max(buf, max)? {
            return Ok(m);
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(8192);
        }
        let n = r.read_buf(buf).await?;
        if n == 0 {
            return Err(if buf.is_empty() {
                ReadError::Closed
            } else {
                ReadError::Truncated
            });
        }
    }
}

/// Reads a NUL-terminated string at `*pos`, advancing past the NUL.
#[must_use]
pub fn cstr<'a>(body: &'a [u8], pos: &mut usize) -> Option<&'a str> {
    let rest = body.get(*pos..)?;
    // A vector search: a query's whole text is read here.
    let end = memchr::memchr(0, rest)?;
    let s = std::str::from_utf8(&rest[..end]).ok()?;
    *pos += end + 1;
    Some(s)
}

/// Frontend (client → server) message views.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frontend<'a> {
    /// 'Q' simple query.
    Query(&'a str),
    /// 'P' Parse: statement name, SQL, the rest (parameter types) raw.
    Parse {
        /// Statement name ("" = unnamed).
        name: &'a str,
        /// SQL text.
        sql: &'a str,
        /// Parameter-type section (count + OIDs), raw.
        types: &'a [u8],
    },
    /// 'B' Bind: portal, statement, the rest raw.
    Bind {
        /// Portal name.
        portal: &'a str,
        /// Statement name.
        statement: &'a str,
        /// Everything after the two names, raw.
        rest: &'a [u8],
    },
    /// 'D' Describe of a statement (`S`) or portal (`P`).
    Describe {
        /// [`target::STATEMENT`] or [`target::PORTAL`].
        kind: u8,
        /// Name.
        name: &'a str,
    },
    /// 'C' Close of a statement (`S`) or portal (`P`).
    Close {
        /// [`target::STATEMENT`] or [`target::PORTAL`].
        kind: u8,
        /// Name.
        name: &'a str,
    },
    /// 'E' Execute.
    Execute,
    /// 'S' Sync.
    Sync,
    /// 'H' Flush.
    Flush,
    /// 'X' Terminate.
    Terminate,
    /// 'd' CopyData, 'c' CopyDone, 'f' CopyFail.
    Copy(u8),
    /// 'p' password / SASL messages.
    Password(&'a [u8]),
    /// 'F' FunctionCall (fast-path).
    FunctionCall,
}

impl<'a> Frontend<'a> {
    /// Decodes a client message; `None` when malformed or unknown.
    #[must_use]
    pub fn parse(m: &'a Message) -> Option<Self> {
        let b = m.body();
        let mut pos = 0;
        Some(match m.tag() {
            ft::QUERY => Self::Query(cstr(b, &mut pos)?),
            ft::PARSE => {
                let name = cstr(b, &mut pos)?;
                let sql = cstr(b, &mut pos)?;
                Self::Parse {
                    name,
                    sql,
                    types: b.get(pos..)?,
                }
            }
            ft::BIND => {
                let portal = cstr(b, &mut pos)?;
                let statement = cstr(b, &mut pos)?;
                Self::Bind {
                    portal,
                    statement,
                    rest: b.get(pos..)?,
                }
            }
            ft::DESCRIBE | ft::CLOSE => {
                let kind = *b.first()?;
                if kind != target::STATEMENT && kind != target::PORTAL {
                    return None;
                }
                pos = 1;
                let name = cstr(b, &mut pos)?;
                if m.tag() == ft::DESCRIBE {
                    Self::Describe { kind, name }
                } else {
                    Self::Close { kind, name }
                }
            }
            ft::EXECUTE => Self::Execute,
            ft::SYNC => Self::Sync,
            ft::FLUSH => Self::Flush,
            ft::TERMINATE => Self::Terminate,
            t @ (ft::COPY_DATA | ft::COPY_DONE | ft::COPY_FAIL) => Self::Copy(t),
            ft::PASSWORD => Self::Password(b),
            ft::FUNCTION_CALL => Self::FunctionCall,
            _ => return None,
        })
    }
}

/// Backend (server → client) facts pgvane reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend<'a> {
    /// 'R' Authentication request: code ([`super::tag::auth`]) and data.
    Auth(i32, &'a [u8]),
    /// 'S' ParameterStatus.
    ParameterStatus(&'a str, &'a str),
    /// 'K' BackendKeyData.
    KeyData(u32, u32),
    /// 'Z' ReadyForQuery with its status byte.
    Ready(u8),
    /// 'E' ErrorResponse.
    Error,
    /// Anything else, by tag.
    Other(u8),
}

impl<'a> Backend<'a> {
    /// Decodes a server message; `None` when malformed.
    #[must_use]
    pub fn parse(m: &'a Message) -> Option<Self> {
        let mut b = m.body();
        Some(match m.tag() {
            bt::AUTHENTICATION => {
                if b.len() < 4 {
                    return None;
                }
                let code = b.get_i32();
                Self::Auth(code, b)
            }
            bt::PARAMETER_STATUS => {
                let mut pos = 0;
                let name = cstr(b, &mut pos)?;
                let value = cstr(b, &mut pos)?;
                Self::ParameterStatus(name, value)
            }
            bt::BACKEND_KEY_DATA => {
                if b.len() < 8 {
                    return None;
                }
                Self::KeyData(b.get_u32(), b.get_u32())
            }
            bt::READY_FOR_QUERY => Self::Ready(*b.first()?),
            bt::ERROR_RESPONSE => Self::Error,
            t => Self::Other(t),
        })
    }
}

/// The fields of an ErrorResponse or NoticeResponse body: (code, message).
#[must_use]
pub fn error_fields(body: &[u8]) -> (String, String) {
    let mut code = String::new();
    let mut message = String::new();
    let mut pos = 0;
    while let Some(&t) = body.get(pos) {
        if t == 0 {
            break;
        }
        pos += 1;
        let Some(v) = cstr(body, &mut pos) else { break };
        match t {
            field::CODE => code = v.to_owned(),
            field::MESSAGE => message = v.to_owned(),
            _ => {}
        }
    }
    (code, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::encode;

    #[test]
    fn an_announced_length_reserves_at_most_a_mebibyte() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(b"Q");
        buf.extend_from_slice(&200_000_000u32.to_be_bytes());
        assert!(try_cut(&mut buf).unwrap().is_none());
        assert!(buf.capacity() <= RESERVE_AHEAD + 64, "{}", buf.capacity());
        assert!(matches!(
            try_cut_max(&mut buf, MAX_AUTH_MESSAGE_LEN),
            Err(ReadError::BadLength(200_000_000))
        ));
    }

    /// A reply: RowDescription, two DataRows, CommandComplete, ReadyForQuery.
    fn reply() -> Vec<u8> {
        let mut b = Vec::new();
        encode::frame(&mut b, b'T', |b| b.extend_from_slice(&[0, 0]));
        encode::frame(&mut b, b'D', |b| b.extend_from_slice(b"row1"));
        encode::frame(&mut b, b'D', |b| b.extend_from_slice(b"row2"));
        encode::frame(&mut b, b'C', |b| b.extend_from_slice(b"SELECT 2\0"));
        encode::frame(&mut b, b'Z', |b| b.push(b'I'));
        b
    }

    #[test]
    fn a_run_ends_where_the_caller_says_or_a_message_is_not_whole() {
        let b = reply();
        let mut seen = Vec::new();
        let all = relay_run(
            &b,
            usize::MAX,
            |_| Relay::Pass,
            |t, body| seen.push((t, body.len())),
        );
        assert_eq!(all, b.len());
        assert_eq!(
            seen,
            [(b'T', 2), (b'D', 4), (b'D', 4), (b'C', 9), (b'Z', 1)]
        );
        // Up to a kept message, which stays out of the run.
        let to_c = relay_run(
            &b,
            usize::MAX,
            |t| if t == b'C' { Relay::Keep } else { Relay::Pass },
            |_, _| {},
        );
        assert_eq!(to_c, 7 + 9 + 9);
        // Through a last one.
        let through_c = relay_run(
            &b,
            usize::MAX,
            |t| if t == b'C' { Relay::Last } else { Relay::Pass },
            |_, _| {},
        );
        assert_eq!(through_c, 7 + 9 + 9 + 14);
        // A message not whole yet ends it; so does a run past the room.
        assert_eq!(
            relay_run(&b[..b.len() - 1], usize::MAX, |_| Relay::Pass, |_, _| {}),
            b.len() - 6
        );
        assert_eq!(relay_run(&b, 8, |_| Relay::Pass, |_, _| {}), 7 + 9);
        assert_eq!(relay_run(&b, 0, |_| Relay::Pass, |_, _| {}), 0);
        // An impossible length is left for try_cut to refuse.
        let mut bad = b[..7].to_vec();
        bad.extend_from_slice(&[b'D', 0, 0, 0, 3]);
        assert_eq!(relay_run(&bad, usize::MAX, |_| Relay::Pass, |_, _| {}), 7);
    }

    #[test]
    fn cuts_messages_and_waits_for_more() {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        encode::query(&mut out, "select 1");
        encode::sync(&mut out);
        buf.extend_from_slice(&out[..3]);
        assert!(try_cut(&mut buf).unwrap().is_none());
        buf.extend_from_slice(&out[3..]);
        let q = try_cut(&mut buf).unwrap().unwrap();
        assert_eq!(Frontend::parse(&q), Some(Frontend::Query("select 1")));
        let s = try_cut(&mut buf).unwrap().unwrap();
        assert_eq!(Frontend::parse(&s), Some(Frontend::Sync));
        assert!(buf.is_empty());
        buf.extend_from_slice(&[b'Q', 0, 0, 0, 1]);
        assert!(matches!(try_cut(&mut buf), Err(ReadError::BadLength(1))));
    }

    #[test]
    fn frontend_views() {
        let mut out = Vec::new();
        encode::parse(&mut out, "s1", "select $1", &[0, 1, 0, 0, 0, 23]);
        encode::bind_raw(&mut out, "", "s1", &[0, 0, 0, 0, 0, 0]);
        let mut buf = BytesMut::from(&out[..]);
        let p = try_cut(&mut buf).unwrap().unwrap();
        assert_eq!(
            Frontend::parse(&p),
            Some(Frontend::Parse {
                name: "s1",
                sql: "select $1",
                types: &[0, 1, 0, 0, 0, 23]
            })
        );
        let b = try_cut(&mut buf).unwrap().unwrap();
        assert!(matches!(
            Frontend::parse(&b),
            Some(Frontend::Bind {
                portal: "",
                statement: "s1",
                ..
            })
        ));
    }

    #[test]
    fn malformed_is_none_not_panic() {
        for tag in [
            b'Q', b'P', b'B', b'D', b'C', b'p', b'R', b'S', b'K', b'Z', b'E',
        ] {
            for body in [&b""[..], b"\0", b"x", b"S", b"Sx", b"\0\0\0"] {
                let mut raw = vec![tag];
                raw.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
                raw.extend_from_slice(body);
                let m = Message::from_raw(Bytes::from(raw));
                let _ = Frontend::parse(&m);
                let _ = Backend::parse(&m);
                let _ = error_fields(m.body());
            }
        }
    }

    #[tokio::test]
    async fn reads_from_a_stream() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let mut out = Vec::new();
        encode::query(&mut out, &"x".repeat(300));
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            a.write_all(&out).await.unwrap();
        });
        let mut buf = BytesMut::new();
        let m = read_message(&mut b, &mut buf).await.unwrap();
        assert_eq!(m.tag(), ft::QUERY);
        assert!(matches!(
            read_message(&mut b, &mut buf).await,
            Err(ReadError::Closed)
        ));
    }
}
