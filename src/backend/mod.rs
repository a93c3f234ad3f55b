//! One pgvane → PostgreSQL connection: connect, start up, authenticate
//! (SCRAM-SHA-256, md5, cleartext or trust), remember the server's
//! parameters and key, and exchange messages. Never uses pool, router or
//! session; the session drives it.

use crate::protocol::encode;
use crate::protocol::message::{self, Backend as B, Message, ReadError};
use crate::topology::NodeAddr;
use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use std::collections::HashSet;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Who pgvane logs in as, and with which startup parameters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Credentials {
    /// Role name.
    pub user: String,
    /// Password for SCRAM/md5/cleartext; `None` for trust.
    pub password: Option<String>,
    /// Database.
    pub database: String,
    /// Extra startup parameters (client_encoding, DateStyle, ...), sorted.
    pub params: Vec<(String, String)>,
}

/// Why a backend could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// TCP connect failed or timed out.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// Node.
        addr: NodeAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The server sent an ErrorResponse during startup (kept to forward).
    #[error("server refused the connection: {code} {message}")]
    Refused {
        /// SQLSTATE.
        code: String,
        /// Message.
        message: String,
        /// The raw ErrorResponse.
        raw: Message,
    },
    /// The server asked for an authentication method pgvane lacks, or a
    /// password that is not configured.
    #[error("authentication: {0}")]
    Auth(String),
    /// Reading failed.
    #[error("reading from the server: {0}")]
    Read(#[from] ReadError),
    /// Writing failed.
    #[error("writing to the server: {0}")]
    Write(#[from] std::io::Error),
    /// The server broke the protocol.
    #[error("protocol: {0}")]
    Protocol(&'static str),
}

/// An open, authenticated backend.
#[derive(Debug)]
pub struct Backend {
    stream: TcpStream,
    buf: BytesMut,
    /// The node it is connected to.
    pub addr: NodeAddr,
    /// BackendKeyData (pid, secret) for cancel requests.
    pub key: (u32, u32),
    /// ParameterStatus values from startup.
    pub params: Vec<(String, String)>,
    /// Keys of the statements prepared on it (`pgv_<key>`).
    pub prepared: HashSet<u64>,
    /// Last ReadyForQuery status (`I`, `T`, `E`).
    pub status: u8,
    /// When it was opened.
    pub created: Instant,
    /// When it was last returned idle.
    pub idle_since: Instant,
}

impl Backend {
    /// Connects and authenticates; returns after the first ReadyForQuery.
    ///
    /// # Errors
    /// [`BackendError`].
    pub async fn connect(
        addr: &NodeAddr,
        creds: &Credentials,
        timeout: Duration,
    ) -> Result<Self, BackendError> {
        let work = async {
            let stream = TcpStream::connect((addr.host.as_str(), addr.port))
                .await
                .map_err(|source| BackendError::Connect {
                    addr: addr.clone(),
                    source,
                })?;
            let _ = stream.set_nodelay(true);
            let mut b = Self {
                stream,
                buf: BytesMut::with_capacity(8192),
                addr: addr.clone(),
                key: (0, 0),
                params: Vec::new(),
                prepared: HashSet::new(),
                status: b'I',
                created: Instant::now(),
                idle_since: Instant::now(),
            };
            b.startup(creds).await?;
            Ok(b)
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(BackendError::Connect {
                addr: addr.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("timed out after {timeout:?}"),
                ),
            }),
        }
    }

    async fn startup(&mut self, creds: &Credentials) -> Result<(), BackendError> {
        let mut out = Vec::new();
        let mut params: Vec<(&str, &str)> =
            vec![("user", &creds.user), ("database", &creds.database)];
        params.extend(creds.params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        encode::startup(&mut out, &params);
        self.send(&out).await?;
        let mut scram: Option<ScramSha256> = None;
        loop {
            let m = self.read().await?;
            match B::parse(&m).ok_or(BackendError::Protocol("malformed message during startup"))? {
                B::Auth(0, _) => {}
                B::Auth(3, _) => {
                    let pw = self.password(creds)?;
                    let mut data = pw.as_bytes().to_vec();
                    data.push(0);
                    self.send_password(&data).await?;
                }
                B::Auth(5, salt) => {
                    let pw = self.password(creds)?;
                    let salt: [u8; 4] = salt
                        .get(..4)
                        .and_then(|s| s.try_into().ok())
                        .ok_or(BackendError::Protocol("md5 salt"))?;
                    let mut data = postgres_protocol::authentication::md5_hash(
                        creds.user.as_bytes(),
                        pw.as_bytes(),
                        salt,
                    )
                    .into_bytes();
                    data.push(0);
                    self.send_password(&data).await?;
                }
                B::Auth(10, mechs) => {
                    if !mechs.split(|b| *b == 0).any(|m| m == b"SCRAM-SHA-256") {
                        return Err(BackendError::Auth("server offers no SCRAM-SHA-256".into()));
                    }
                    let pw = self.password(creds)?;
                    let s = ScramSha256::new(pw.as_bytes(), ChannelBinding::unsupported());
                    let mut out = Vec::new();
                    encode::sasl_initial(&mut out, "SCRAM-SHA-256", s.message());
                    self.send(&out).await?;
                    scram = Some(s);
                }
                B::Auth(11, data) => {
                    let s = scram
                        .as_mut()
                        .ok_or(BackendError::Protocol("SASL continue without start"))?;
                    s.update(data)
                        .map_err(|e| BackendError::Auth(format!("SCRAM: {e}")))?;
                    let msg = s.message().to_vec();
                    self.send_password(&msg).await?;
                }
                B::Auth(12, data) => {
                    let mut s = scram
                        .take()
                        .ok_or(BackendError::Protocol("SASL final without start"))?;
                    s.finish(data)
                        .map_err(|e| BackendError::Auth(format!("SCRAM server signature: {e}")))?;
                }
                B::Auth(code, _) => {
                    return Err(BackendError::Auth(format!("unsupported method {code}")));
                }
                B::ParameterStatus(k, v) => self.params.push((k.to_owned(), v.to_owned())),
                B::KeyData(pid, key) => self.key = (pid, key),
                B::Ready(status) => {
                    self.status = status;
                    return Ok(());
                }
                B::Error => {
                    let (code, message) = message::error_fields(m.body());
                    return Err(BackendError::Refused {
                        code,
                        message,
                        raw: m,
                    });
                }
                B::Other(_) => {}
            }
        }
    }

    fn password<'c>(&self, creds: &'c Credentials) -> Result<&'c str, BackendError> {
        creds.password.as_deref().ok_or_else(|| {
            BackendError::Auth(format!(
                "{} asks for a password and none is configured for user {}",
                self.addr, creds.user
            ))
        })
    }

    async fn send_password(&mut self, data: &[u8]) -> Result<(), BackendError> {
        let mut out = Vec::new();
        encode::password(&mut out, data);
        self.send(&out).await
    }

    /// Writes bytes to the server.
    ///
    /// # Errors
    /// The IO error.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), BackendError> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Reads the next message. Cancel safe: the buffer lives in `self`.
    ///
    /// # Errors
    /// [`ReadError`].
    pub async fn read(&mut self) -> Result<Message, ReadError> {
        message::read_message(&mut self.stream, &mut self.buf).await
    }

    /// A message already buffered, without awaiting.
    ///
    /// # Errors
    /// [`ReadError::BadLength`].
    pub fn try_buffered(&mut self) -> Result<Option<Message>, ReadError> {
        message::try_cut(&mut self.buf)
    }

    /// True when the idle connection is still open and silent: no buffered
    /// bytes, and a non-blocking read finds nothing (not EOF, not a FATAL
    /// the server sent when it shut down).
    #[must_use]
    pub fn idle_and_open(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// True when no unread bytes are buffered.
    #[must_use]
    pub fn drained(&self) -> bool {
        self.buf.is_empty()
    }

    /// Sends Terminate and drops the connection.
    pub async fn close(mut self) {
        let mut out = Vec::new();
        encode::terminate(&mut out);
        let _ = tokio::time::timeout(Duration::from_millis(200), self.stream.write_all(&out)).await;
    }
}

/// Sends a CancelRequest for backend `key` to `addr` (best effort).
pub async fn cancel(addr: &NodeAddr, key: (u32, u32)) {
    let work = async {
        let mut s = TcpStream::connect((addr.host.as_str(), addr.port)).await?;
        let mut out = Vec::new();
        encode::cancel_request(&mut out, key.0, key.1);
        s.write_all(&out).await?;
        s.shutdown().await
    };
    if let Err(e) = tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
    {
        tracing::warn!(%addr, error = %e, "cancel request failed");
    }
}
