//! A raw protocol client for the tests that must misbehave: send half a
//! message, a Flush without Sync, leave in the middle of a result or a
//! COPY. Logs in as postgres/postgres with SCRAM-SHA-256 (or md5/trust).

use bytes::{Buf, BytesMut};
use pgvane::protocol::encode;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One backend message: tag and body.
pub type Msg = (u8, Vec<u8>);

/// A logged-in raw connection.
pub struct Raw {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    /// Connects and logs in with extra startup `params`; panics on failure.
    pub async fn login(port: u16, params: &[(&str, &str)]) -> Self {
        let mut all = vec![("user", "postgres"), ("database", "postgres")];
        all.extend_from_slice(params);
        let mut out = Vec::new();
        encode::startup(&mut out, &all);
        match Self::login_packet(port, &out).await {
            Ok(r) => r,
            Err(body) => panic!("login refused: {}", String::from_utf8_lossy(&body)),
        }
    }

    /// Sends `startup` (a whole startup packet, any bytes) and logs in as
    /// postgres/postgres; the ErrorResponse body when refused.
    pub async fn login_packet(port: u16, startup: &[u8]) -> Result<Self, Vec<u8>> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        Self::login_on(stream, startup).await
    }

    /// Logs in as libpq does with `sslmode=prefer` against a server with
    /// `ssl=off`: an SSLRequest, its `N`, then the startup packet.
    pub async fn login_after_ssl_refused(port: u16) -> Self {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut out = Vec::new();
        encode::ssl_request(&mut out);
        stream.write_all(&out).await.unwrap();
        let mut answer = [0u8; 1];
        stream.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"N", "the lab runs with ssl=off");
        let mut startup = Vec::new();
        encode::startup(
            &mut startup,
            &[("user", "postgres"), ("database", "postgres")],
        );
        match Self::login_on(stream, &startup).await {
            Ok(r) => r,
            Err(body) => panic!("login refused: {}", String::from_utf8_lossy(&body)),
        }
    }

    async fn login_on(stream: TcpStream, startup: &[u8]) -> Result<Self, Vec<u8>> {
        let mut r = Self {
            stream,
            buf: BytesMut::new(),
        };
        r.send(startup).await;
        let mut scram: Option<ScramSha256> = None;
        loop {
            let (tag, body) = r.read().await.expect("login answer");
            match tag {
                b'R' => {
                    let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                    let data = &body[4..];
                    let mut out = Vec::new();
                    match code {
                        0 => continue,
                        3 => encode::password(&mut out, b"postgres\0"),
                        5 => {
                            let mut pw = postgres_protocol::authentication::md5_hash(
                                b"postgres",
                                b"postgres",
                                [data[0], data[1], data[2], data[3]],
                            )
                            .into_bytes();
                            pw.push(0);
                            encode::password(&mut out, &pw);
                        }
                        10 => {
                            let s = ScramSha256::new(b"postgres", ChannelBinding::unsupported());
                            encode::sasl_initial(&mut out, "SCRAM-SHA-256", s.message());
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram.as_mut().unwrap();
                            s.update(data).unwrap();
                            encode::password(&mut out, s.message());
                        }
                        12 => {
                            scram.take().unwrap().finish(data).unwrap();
                            continue;
                        }
                        other => panic!("auth method {other}"),
                    }
                    r.send(&out).await;
                }
                b'E' => return Err(body),
                b'Z' => return Ok(r),
                _ => {}
            }
        }
    }

    /// Writes bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next message, or `None` when the server closed; panics after 20 s.
    pub async fn read(&mut self) -> Option<Msg> {
        tokio::time::timeout(Duration::from_secs(20), self.read_inner())
            .await
            .expect("server answered within 20 s")
    }

    async fn read_inner(&mut self) -> Option<Msg> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if self.buf.len() > len {
                    let tag = self.buf[0];
                    self.buf.advance(5);
                    let body = self.buf.split_to(len - 4).to_vec();
                    return Some((tag, body));
                }
            }
            let n = self.stream.read_buf(&mut self.buf).await.ok()?;
            if n == 0 {
                return None;
            }
        }
    }

    /// Reads until a message with `tag` (included); panics on close.
    pub async fn until(&mut self, tag: u8) -> Vec<Msg> {
        let mut out = Vec::new();
        loop {
            let m = self.read().await.expect("connection open");
            let done = m.0 == tag;
            out.push(m);
            if done {
                return out;
            }
        }
    }

    /// Runs a simple query to its ReadyForQuery.
    pub async fn simple(&mut self, sql: &str) -> Vec<Msg> {
        self.send(&query(sql)).await;
        self.until(b'Z').await
    }
}

/// A Query message.
pub fn query(sql: &str) -> Vec<u8> {
    let mut out = Vec::new();
    encode::query(&mut out, sql);
    out
}

/// Parse (unnamed or `name`) + Bind + Execute of `sql` without parameters.
pub fn parse_bind_execute(name: &str, sql: &str) -> Vec<u8> {
    let mut out = Vec::new();
    encode::parse(&mut out, name, sql, &[0, 0]);
    bind_execute(&mut out, name, None);
    out
}

/// Bind of statement `name` to the unnamed portal (no parameters, text
/// results), then `between` if any, then Execute of the portal, no row limit.
pub fn bind_execute(out: &mut Vec<u8>, name: &str, between: Option<&[u8]>) {
    encode::bind_raw(out, "", name, &[0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(between.unwrap_or_default());
    encode::frame(out, b'E', |b| b.extend_from_slice(&[0, 0, 0, 0, 0]));
}

/// A Flush message.
pub fn flush() -> Vec<u8> {
    let mut out = Vec::new();
    encode::frame(&mut out, b'H', |_| {});
    out
}

/// A Sync message.
pub fn sync() -> Vec<u8> {
    let mut out = Vec::new();
    encode::sync(&mut out);
    out
}

/// The text of the first column of each DataRow.
pub fn texts(msgs: &[Msg]) -> Vec<String> {
    msgs.iter()
        .filter(|(t, _)| *t == b'D')
        .map(|(_, b)| {
            let len = i32::from_be_bytes([b[2], b[3], b[4], b[5]]);
            if len < 0 {
                "NULL".to_owned()
            } else {
                String::from_utf8_lossy(&b[6..6 + len as usize]).into_owned()
            }
        })
        .collect()
}

/// The SQLSTATE of the first ErrorResponse, if any.
pub fn error_code(msgs: &[Msg]) -> Option<String> {
    let (_, body) = msgs.iter().find(|(t, _)| *t == b'E')?;
    let mut at = 0;
    while at < body.len() && body[at] != 0 {
        let field = body[at];
        let end = body[at + 1..].iter().position(|b| *b == 0)? + at + 1;
        if field == b'C' {
            return Some(String::from_utf8_lossy(&body[at + 1..end]).into_owned());
        }
        at = end + 1;
    }
    None
}
