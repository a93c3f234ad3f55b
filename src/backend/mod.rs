//! One pgvane → PostgreSQL connection: connect, negotiate TLS (libpq's
//! `sslmode`), start up, authenticate (SCRAM-SHA-256 with channel binding
//! over TLS, md5, cleartext or trust, each only when the port's
//! `server_require_auth` allows it), remember the server's
//! parameters and key, and exchange messages. The connection owns its
//! protocol state ([`state::ConnState`]), its transparently prepared
//! statements ([`prepared::PreparedCache`]) and the session settings
//! applied to it, all updated from what is sent and what the server
//! answers. Never uses pool, router or session; the session drives it.

pub mod prepared;
pub mod query;
pub mod state;
pub mod stream;

use crate::auth::scram::{ClientBinding, KeyClient, ScramKeys};
use crate::config::{ChannelBinding as Binding, ServerAuth, ServerTlsMode};
use crate::protocol::encode;
use crate::protocol::message::{self, Backend as B, Message, ReadError};
use crate::tls::BackendSecurity;
use crate::topology::NodeAddr;
use bytes::{Buf, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use prepared::PreparedCache;
use state::{ConnState, PreparedEffect};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use stream::{HomedTcp, ServerStream};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Who pgvane logs in as. Startup parameters are not part of it: they are
/// applied per session as [`Setting`]s, so one pool serves every client of
/// a (node, database, user).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Credentials {
    /// Role name.
    pub user: String,
    /// What pgvane proves itself with.
    pub secret: BackendSecret,
    /// Database.
    pub database: String,
}

/// What pgvane logs in to PostgreSQL with. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum BackendSecret {
    /// Nothing: the server must trust pgvane.
    None,
    /// A plaintext password: SCRAM-SHA-256, md5 or cleartext, as asked.
    Password(String),
    /// An `md5…` hash (md5 of password and user name): answers md5 requests.
    Md5Hash(String),
    /// The keys a client proved at its SCRAM login to pgvane (pass-through):
    /// answers SCRAM requests of a server that stores the same verifier.
    Scram(ScramKeys),
}

impl std::fmt::Debug for BackendSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "None",
            Self::Password(_) => "Password(..)",
            Self::Md5Hash(_) => "Md5Hash(..)",
            Self::Scram(_) => "Scram(..)",
        })
    }
}

/// The SCRAM client of one login: from a password or from pass-through keys.
enum ScramLogin {
    Password(ScramSha256),
    Keys(KeyClient),
}

/// One session setting pgvane applies to the backends a session uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Setting {
    /// A startup parameter (name, value), applied with `set_config`, which
    /// reads the value exactly as the startup packet would.
    Startup(String, String),
    /// A `SET` the client ran in autocommit (lower-case name, statement
    /// text), replayed verbatim so quoting and lists mean what they meant.
    Set(String, Arc<str>),
}

impl Setting {
    /// The setting's lower-case name.
    #[must_use]
    pub fn name(&self) -> &str {
        match self {
            Self::Startup(n, _) | Self::Set(n, _) => n,
        }
    }
}

/// The settings a session wants on its backends, in order.
pub type Settings = Arc<Vec<Setting>>;

/// The SQL that turns a backend's settings into `wanted`.
#[must_use]
pub fn apply_sql(wanted: &[Setting], reset_first: bool) -> String {
    let mut sql = String::new();
    if reset_first {
        sql.push_str("RESET ALL;");
    }
    for s in wanted {
        match s {
            Setting::Startup(name, value) => {
                sql.push_str("SELECT pg_catalog.set_config(");
                push_literal(&mut sql, name);
                sql.push(',');
                push_literal(&mut sql, value);
                sql.push_str(",false);");
            }
            Setting::Set(_, stmt) => {
                sql.push_str(stmt);
                sql.push(';');
            }
        }
    }
    sql
}

/// Appends `v` as an `E'...'` literal, whatever `standard_conforming_strings` is.
fn push_literal(out: &mut String, v: &str) {
    out.push_str("E'");
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("''"),
            c => out.push(c),
        }
    }
    out.push('\'');
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
    /// The server asked for an authentication method pgvane lacks or the
    /// port does not allow, or a password that is not configured.
    #[error("authentication: {0}")]
    Auth(String),
    /// TLS could not be set up as `server_tls` demands.
    #[error("TLS: {0}")]
    Tls(String),
    /// Reading failed.
    #[error("reading from the server: {0}")]
    Read(#[from] ReadError),
    /// Writing failed.
    #[error("writing to the server: {0}")]
    Write(#[from] std::io::Error),
    /// The server broke the protocol.
    #[error("protocol: {0}")]
    Protocol(&'static str),
    /// One of pgvane's own queries failed (the server's ErrorResponse).
    #[error("query: {code} {message}")]
    Query {
        /// SQLSTATE.
        code: String,
        /// Message.
        message: String,
    },
    /// Applying the session's settings failed (the server's ErrorResponse).
    #[error("applying session settings: {code} {message}")]
    Apply {
        /// SQLSTATE.
        code: String,
        /// Message.
        message: String,
        /// The raw ErrorResponse.
        raw: Message,
    },
}

/// An open, authenticated backend.
#[derive(Debug)]
pub struct Backend {
    stream: ServerStream,
    buf: BytesMut,
    wbuf: BytesMut,
    /// The node it is connected to.
    pub addr: NodeAddr,
    /// BackendKeyData (pid, secret) for cancel requests.
    pub key: (u32, u32),
    /// ParameterStatus values, kept current from every report.
    pub params: Vec<(String, String)>,
    /// Protocol state, from what was sent and answered.
    pub state: ConnState,
    /// Statements pgvane prepared on it.
    pub prepared: PreparedCache,
    /// Session settings applied on top of the server defaults; `None`
    /// when a `SET`/`RESET` made them unknown.
    pub applied: Option<Settings>,
    /// When it was opened.
    pub created: Instant,
    /// When it was last returned idle.
    pub idle_since: Instant,
}

/// Socket options pgvane sets on the sockets it accepts or opens (the
/// config's `tcp_*`), so a peer that vanished without a FIN, or a client
/// that stopped taking bytes, is noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SocketOptions {
    tcp: crate::config::TcpConfig,
}

/// Set once a socket option could not be set, so that is logged once.
static OPTION_FAILED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl SocketOptions {
    /// For client sockets: keepalive and the user timeout.
    #[must_use]
    pub fn for_clients(tcp: &crate::config::TcpConfig) -> Self {
        Self { tcp: *tcp }
    }

    /// For sockets to nodes: keepalive only. A node that stops reading
    /// for a while (a `COPY FROM` waiting on a lock) is not a dead peer.
    #[must_use]
    pub fn for_servers(tcp: &crate::config::TcpConfig) -> Self {
        Self {
            tcp: crate::config::TcpConfig {
                user_timeout: None,
                ..*tcp
            },
        }
    }

    /// Turns keepalive on with the configured timings (the system's where
    /// none is set) and sets `TCP_USER_TIMEOUT` when configured. A failure
    /// only loses the option: it is logged (once), not returned.
    pub fn apply(&self, s: &TcpStream) {
        let sock = socket2::SockRef::from(s);
        let tcp = &self.tcp;
        let mut ka = socket2::TcpKeepalive::new();
        if let Some(t) = tcp.keepalives_idle {
            ka = ka.with_time(t);
        }
        if let Some(t) = tcp.keepalives_interval {
            ka = ka.with_interval(t);
        }
        if let Some(n) = tcp.keepalives_count {
            ka = ka.with_retries(n);
        }
        let results = [
            sock.set_tcp_keepalive(&ka),
            tcp.user_timeout
                .map_or(Ok(()), |t| sock.set_tcp_user_timeout(Some(t))),
        ];
        for e in results.into_iter().filter_map(Result::err) {
            if !OPTION_FAILED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(error = %e, "cannot set TCP keepalive or user timeout (logged once)");
            }
        }
    }
}

impl Backend {
    /// Connects and authenticates; returns after the first ReadyForQuery.
    ///
    /// # Errors
    /// [`BackendError`].
    pub async fn connect(
        addr: &NodeAddr,
        creds: &Credentials,
        security: &BackendSecurity,
        timeout: Duration,
        max_prepared: usize,
        socket: SocketOptions,
    ) -> Result<Self, BackendError> {
        let work = async {
            let tcp = TcpStream::connect((addr.host.as_str(), addr.port))
                .await
                .map_err(|source| BackendError::Connect {
                    addr: addr.clone(),
                    source,
                })?;
            let _ = tcp.set_nodelay(true);
            socket.apply(&tcp);
            let stream = negotiate_tls(tcp, addr, security).await?;
            let mut b = Self {
                stream,
                buf: BytesMut::with_capacity(8192),
                wbuf: BytesMut::new(),
                addr: addr.clone(),
                key: (0, 0),
                params: Vec::new(),
                state: ConnState::default(),
                prepared: PreparedCache::new(max_prepared),
                applied: Some(Arc::default()),
                created: Instant::now(),
                idle_since: Instant::now(),
            };
            b.startup(creds, security).await?;
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

    async fn startup(
        &mut self,
        creds: &Credentials,
        security: &BackendSecurity,
    ) -> Result<(), BackendError> {
        let mut out = Vec::new();
        let params: Vec<(&str, &str)> = vec![("user", &creds.user), ("database", &creds.database)];
        encode::startup(&mut out, &params);
        self.write_now(&out).await?;
        let end_point = self
            .stream
            .peer_certificate()
            .map(crate::tls::server::end_point_hash);
        let mut scram: Option<ScramLogin> = None;
        // The method the server asked for, and whether SCRAM was bound to TLS.
        let mut asked: Option<ServerAuth> = None;
        let mut bound = false;
        loop {
            let m = self.read().await?;
            match B::parse(&m).ok_or(BackendError::Protocol("malformed message during startup"))? {
                B::Auth(0, _) => {
                    if scram.is_some() {
                        return Err(BackendError::Auth(format!(
                            "{} ended SCRAM before proving it knows the password",
                            self.addr
                        )));
                    }
                    if asked.is_none() {
                        self.require(security, ServerAuth::None)?;
                    }
                    if security.channel_binding == Binding::Require && !bound {
                        return Err(BackendError::Auth(format!(
                            "server_channel_binding is require, but {} logged pgvane in without SCRAM-SHA-256-PLUS",
                            self.addr
                        )));
                    }
                }
                B::Auth(3, _) => {
                    asked = Some(self.require(security, ServerAuth::Password)?);
                    let BackendSecret::Password(pw) = &creds.secret else {
                        return Err(self.lacks(creds, "a cleartext password"));
                    };
                    let mut data = pw.as_bytes().to_vec();
                    data.push(0);
                    self.send_password(&data).await?;
                }
                B::Auth(5, salt) => {
                    asked = Some(self.require(security, ServerAuth::Md5)?);
                    let salt: [u8; 4] = salt
                        .get(..4)
                        .and_then(|s| s.try_into().ok())
                        .ok_or(BackendError::Protocol("md5 salt"))?;
                    let answer = match &creds.secret {
                        BackendSecret::Password(pw) => postgres_protocol::authentication::md5_hash(
                            creds.user.as_bytes(),
                            pw.as_bytes(),
                            salt,
                        ),
                        BackendSecret::Md5Hash(hash) => crate::auth::md5_expected(hash, salt),
                        _ => return Err(self.lacks(creds, "an md5 password")),
                    };
                    let mut data = answer.into_bytes();
                    data.push(0);
                    self.send_password(&data).await?;
                }
                B::Auth(10, mechs) => {
                    asked = Some(self.require(security, ServerAuth::ScramSha256)?);
                    let offers = |name: &[u8]| mechs.split(|b| *b == 0).any(|m| m == name);
                    let plus = end_point
                        .as_ref()
                        .filter(|_| security.channel_binding != Binding::Disable)
                        .filter(|_| offers(b"SCRAM-SHA-256-PLUS"));
                    let (mechanism, binding) = match plus {
                        Some(hash) => (
                            "SCRAM-SHA-256-PLUS",
                            ChannelBinding::tls_server_end_point(hash.clone()),
                        ),
                        None if security.channel_binding == Binding::Require => {
                            return Err(BackendError::Auth(format!(
                                "server_channel_binding is require, but {} offers no SCRAM-SHA-256-PLUS{}",
                                self.addr,
                                if end_point.is_some() { "" } else { " (no TLS)" }
                            )));
                        }
                        None if !offers(b"SCRAM-SHA-256") => {
                            return Err(BackendError::Auth(format!(
                                "{} offers no SCRAM-SHA-256",
                                self.addr
                            )));
                        }
                        // Over TLS without -PLUS on offer: "y", so a server
                        // that does support binding sees the downgrade.
                        None if end_point.is_some()
                            && security.channel_binding != Binding::Disable =>
                        {
                            ("SCRAM-SHA-256", ChannelBinding::unrequested())
                        }
                        None => ("SCRAM-SHA-256", ChannelBinding::unsupported()),
                    };
                    bound = plus.is_some();
                    let (login, first) = match &creds.secret {
                        BackendSecret::Password(pw) => {
                            let s = ScramSha256::new(pw.as_bytes(), binding);
                            let first = s.message().to_vec();
                            (ScramLogin::Password(s), first)
                        }
                        BackendSecret::Scram(keys) => {
                            let cb = match (plus, end_point.is_some()) {
                                (Some(hash), _) => ClientBinding::EndPoint(hash.clone()),
                                (None, true) if security.channel_binding != Binding::Disable => {
                                    ClientBinding::Unrequested
                                }
                                _ => ClientBinding::Unsupported,
                            };
                            let k = KeyClient::new(keys.clone(), &crate::auth::nonce(), cb);
                            let first = k.first().into_bytes();
                            (ScramLogin::Keys(k), first)
                        }
                        _ => return Err(self.lacks(creds, "SCRAM-SHA-256")),
                    };
                    let mut out = Vec::new();
                    encode::sasl_initial(&mut out, mechanism, &first);
                    self.write_now(&out).await?;
                    scram = Some(login);
                }
                B::Auth(11, data) => {
                    let msg = match scram.as_mut() {
                        Some(ScramLogin::Password(s)) => {
                            s.update(data)
                                .map_err(|e| BackendError::Auth(format!("SCRAM: {e}")))?;
                            s.message().to_vec()
                        }
                        Some(ScramLogin::Keys(k)) => k
                            .respond(data)
                            .map_err(|e| BackendError::Auth(format!("SCRAM: {e}")))?
                            .into_bytes(),
                        None => return Err(BackendError::Protocol("SASL continue without start")),
                    };
                    self.send_password(&msg).await?;
                }
                B::Auth(12, data) => {
                    let signed = match scram.take() {
                        Some(ScramLogin::Password(mut s)) => {
                            s.finish(data).map_err(|e| e.to_string())
                        }
                        Some(ScramLogin::Keys(k)) => k.verify(data).map_err(|e| e.to_string()),
                        None => return Err(BackendError::Protocol("SASL final without start")),
                    };
                    signed
                        .map_err(|e| BackendError::Auth(format!("SCRAM server signature: {e}")))?;
                }
                B::Auth(code, _) => {
                    return Err(BackendError::Auth(format!("unsupported method {code}")));
                }
                B::ParameterStatus(..) => {}
                B::KeyData(pid, key) => self.key = (pid, key),
                B::Ready(status) => {
                    if scram.is_some() || (asked.is_none() && !security.allows(ServerAuth::None)) {
                        return Err(BackendError::Protocol(
                            "ReadyForQuery before authentication ended",
                        ));
                    }
                    self.state = ConnState {
                        status,
                        ..ConnState::default()
                    };
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

    /// `method` when the port allows the server to ask for it, else the
    /// refusal (before any password is used).
    fn require(
        &self,
        security: &BackendSecurity,
        method: ServerAuth,
    ) -> Result<ServerAuth, BackendError> {
        if security.allows(method) {
            return Ok(method);
        }
        let what = match method {
            ServerAuth::Password => "a cleartext password",
            ServerAuth::Md5 => "an md5 password",
            ServerAuth::ScramSha256 => "SCRAM-SHA-256",
            ServerAuth::None => "no authentication",
        };
        let allowed: Vec<&str> = security.require_auth.iter().map(|m| m.name()).collect();
        Err(BackendError::Auth(format!(
            "{} asked for {what}, which server_require_auth [{}] does not allow",
            self.addr,
            allowed.join(", ")
        )))
    }

    /// The refusal when the server asks for `what` and pgvane's secret for
    /// the user cannot answer it.
    fn lacks(&self, creds: &Credentials, what: &str) -> BackendError {
        let held = match creds.secret {
            BackendSecret::None => "no password",
            BackendSecret::Password(_) => "a password",
            BackendSecret::Md5Hash(_) => "only an md5 hash",
            BackendSecret::Scram(_) => "only SCRAM keys",
        };
        BackendError::Auth(format!(
            "{} asks for {what}, and pgvane holds {held} for user {} (set backend_password)",
            self.addr, creds.user
        ))
    }

    async fn send_password(&mut self, data: &[u8]) -> Result<(), BackendError> {
        let mut out = Vec::new();
        encode::password(&mut out, data);
        self.write_now(&out).await
    }

    /// Writes login messages at once (they bypass the protocol state).
    async fn write_now(&mut self, bytes: &[u8]) -> Result<(), BackendError> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// The worker thread whose runtime drives this backend's socket.
    #[must_use]
    pub fn home(&self) -> std::thread::ThreadId {
        self.stream.home()
    }

    /// Moves the socket to the calling thread's runtime when another one
    /// drives it, so replies wake the session's worker directly.
    ///
    /// # Errors
    /// When the socket cannot be moved; the backend is then unusable.
    pub fn rehome(&mut self) -> std::io::Result<()> {
        self.stream.rehome()
    }

    /// Whether the connection to the server is encrypted.
    #[must_use]
    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    /// Queues whole frontend messages; they are written by [`Self::flush`]
    /// or while [`Self::read`] waits for replies.
    pub fn queue(&mut self, bytes: &[u8]) {
        self.state.on_send(bytes);
        self.wbuf.extend_from_slice(bytes);
    }

    /// Writes bytes to the server (queue, then flush).
    ///
    /// # Errors
    /// The IO error.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), BackendError> {
        self.queue(bytes);
        self.flush().await
    }

    /// Writes everything queued.
    ///
    /// # Errors
    /// The IO error.
    pub async fn flush(&mut self) -> Result<(), BackendError> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
            self.stream.flush().await?;
        }
        if self.wbuf.capacity() > 256 * 1024 {
            self.wbuf = BytesMut::new();
        }
        Ok(())
    }

    /// True while queued bytes wait to be written.
    #[must_use]
    pub fn has_unsent(&self) -> bool {
        !self.wbuf.is_empty()
    }

    /// Writes queued bytes as far as the socket takes them, then reads what
    /// arrived into `buf`: the byte count, 0 at EOF.
    fn poll_exchange(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        while !self.wbuf.is_empty() {
            match Pin::new(&mut self.stream).poll_write(cx, &self.wbuf) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => self.wbuf.advance(n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        }
        if self.wbuf.is_empty() && self.stream.is_tls() {
            // Records rustls still holds go out too.
            if let Poll::Ready(Err(e)) = Pin::new(&mut self.stream).poll_flush(cx) {
                return Poll::Ready(Err(e));
            }
        }
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(8192);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.buf)
    }

    /// Reads the next message, writing queued bytes meanwhile so a long
    /// pipeline never deadlocks against a server that is busy answering.
    /// Updates the protocol state, prepared statements and parameters from
    /// what it reads. Cancel safe: both buffers live in `self`.
    ///
    /// # Errors
    /// [`ReadError`].
    pub async fn read(&mut self) -> Result<Message, ReadError> {
        loop {
            if let Some(m) = message::try_cut(&mut self.buf)? {
                self.note(&m);
                return Ok(m);
            }
            let n = std::future::poll_fn(|cx| self.poll_exchange(cx)).await?;
            if n == 0 {
                return Err(if self.buf.is_empty() {
                    ReadError::Closed
                } else {
                    ReadError::Truncated
                });
            }
        }
    }

    fn note(&mut self, m: &Message) {
        if self.state.on_recv(m) == PreparedEffect::AllGone {
            self.prepared.clear();
        }
        match m.tag() {
            b'S' => {
                if let Some(B::ParameterStatus(k, v)) = B::parse(m) {
                    match self.params.iter_mut().find(|(n, _)| n == k) {
                        Some(slot) => v.clone_into(&mut slot.1),
                        None => self.params.push((k.to_owned(), v.to_owned())),
                    }
                }
            }
            b'C' if self.state.settings_changed => {
                self.state.settings_changed = false;
                self.applied = if self.state.last_tag == state::Tag::DiscardAll {
                    Some(Arc::default())
                } else {
                    None
                };
            }
            _ => {}
        }
    }

    /// Makes the backend's session settings `wanted` (one round trip, its
    /// replies swallowed), unless they already are. Only at rest.
    ///
    /// # Errors
    /// [`BackendError::Apply`] with the server's error, or an IO error.
    pub async fn apply(&mut self, wanted: &Settings) -> Result<(), BackendError> {
        let reset_first = match &self.applied {
            Some(a) if Arc::ptr_eq(a, wanted) || **a == **wanted => return Ok(()),
            Some(a) => !a.is_empty(),
            None => true,
        };
        let sql = apply_sql(wanted, reset_first);
        let result = self.quiet(&sql).await;
        self.applied = result.is_ok().then(|| Arc::clone(wanted));
        result
    }

    /// Runs `sql` (pgvane's own statements) with its replies swallowed,
    /// up to ReadyForQuery; whether the backend holds client session state
    /// (`dirty`) stays as it was.
    ///
    /// # Errors
    /// [`BackendError::Apply`] with the server's error, or an IO error.
    pub async fn quiet(&mut self, sql: &str) -> Result<(), BackendError> {
        let was_dirty = self.state.dirty;
        let mut out = Vec::with_capacity(sql.len() + 6);
        encode::query(&mut out, sql);
        self.send(&out).await?;
        let mut failed = None;
        loop {
            let m = self.read().await?;
            match m.tag() {
                b'E' => {
                    let (code, message) = message::error_fields(m.body());
                    failed = Some(BackendError::Apply {
                        code,
                        message,
                        raw: m,
                    });
                }
                b'Z' => break,
                _ => {}
            }
        }
        // Its own settings changes are pgvane's, not the client's.
        self.state.settings_changed = false;
        self.state.dirty = was_dirty;
        failed.map_or(Ok(()), Err)
    }

    /// Resets session state with `DISCARD ALL` within `timeout`; true when
    /// the server confirmed it and the connection is clean.
    pub async fn reset(&mut self, timeout: Duration) -> bool {
        if !self.state.at_rest() || !self.buf.is_empty() {
            return false;
        }
        let work = async {
            let mut out = Vec::new();
            encode::query(&mut out, "DISCARD ALL");
            self.send(&out).await.ok()?;
            let mut ok = false;
            loop {
                let m = self.read().await.ok()?;
                match m.tag() {
                    b'C' => ok = state::Tag::of(m.body()) == state::Tag::DiscardAll,
                    b'E' => ok = false,
                    b'Z' => return Some(ok),
                    _ => {}
                }
            }
        };
        let ok = tokio::time::timeout(timeout, work)
            .await
            .ok()
            .flatten()
            .unwrap_or(false);
        ok && self.state.clean()
    }

    /// A message already buffered, without awaiting.
    ///
    /// # Errors
    /// [`ReadError::BadLength`].
    pub fn try_buffered(&mut self) -> Result<Option<Message>, ReadError> {
        let m = message::try_cut(&mut self.buf)?;
        if let Some(m) = &m {
            self.note(m);
        }
        Ok(m)
    }

    /// True when the idle connection is still open and silent: no buffered
    /// bytes, and a non-blocking read finds nothing (not EOF, not a FATAL
    /// the server sent when it shut down).
    #[must_use]
    pub fn idle_and_open(&self) -> bool {
        self.buf.is_empty() && self.stream.silent()
    }

    /// True when no unread bytes are buffered.
    #[must_use]
    pub fn drained(&self) -> bool {
        self.buf.is_empty()
    }

    /// Sends Terminate (and TLS close_notify) and drops the connection.
    pub async fn close(mut self) {
        let mut out = Vec::new();
        encode::terminate(&mut out);
        let bye = async {
            self.stream.write_all(&out).await?;
            self.stream.shutdown().await
        };
        let _ = tokio::time::timeout(Duration::from_millis(200), bye).await;
    }
}

/// Asks the node for TLS with an SSLRequest when `security` says so and
/// runs the handshake on `S`; `N` is plaintext for `prefer`, an error for
/// stricter modes. Exactly one byte is read before the handshake, so bytes
/// a server sends early cannot be taken for part of the TLS session.
async fn negotiate_tls(
    mut tcp: TcpStream,
    addr: &NodeAddr,
    security: &BackendSecurity,
) -> Result<ServerStream, BackendError> {
    let Some(connector) = &security.connector else {
        return Ok(ServerStream::Plain(HomedTcp::new(tcp)));
    };
    let mut out = Vec::new();
    encode::ssl_request(&mut out);
    tcp.write_all(&out).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer)
        .await
        .map_err(|e| BackendError::Read(e.into()))?;
    match answer[0] {
        b'S' => {
            let name = crate::tls::client::server_name(&addr.host).map_err(BackendError::Tls)?;
            let tls = connector
                .connect(name, HomedTcp::new(tcp))
                .await
                .map_err(|e| BackendError::Tls(format!("handshake with {addr}: {e}")))?;
            Ok(ServerStream::Tls(Box::new(tls)))
        }
        b'N' if security.mode == ServerTlsMode::Prefer => {
            Ok(ServerStream::Plain(HomedTcp::new(tcp)))
        }
        b'N' => Err(BackendError::Tls(format!(
            "{addr} does not support SSL, but server_tls.mode is {}",
            security.mode.name()
        ))),
        // A server that failed before it could answer (out of processes,
        // shutting down) sends its ErrorResponse instead, as libpq expects.
        b'E' => {
            let mut len = [0u8; 4];
            tcp.read_exact(&mut len)
                .await
                .map_err(|e| BackendError::Read(e.into()))?;
            let n = usize::try_from(u32::from_be_bytes(len)).unwrap_or(usize::MAX);
            if !(4..=message::MAX_AUTH_MESSAGE_LEN).contains(&n) {
                return Err(BackendError::Protocol(
                    "error answer to SSLRequest too long",
                ));
            }
            let mut raw = BytesMut::with_capacity(n + 1);
            raw.extend_from_slice(b"E");
            raw.extend_from_slice(&len);
            raw.resize(n + 1, 0);
            tcp.read_exact(&mut raw[5..])
                .await
                .map_err(|e| BackendError::Read(e.into()))?;
            let m = message::try_cut(&mut raw)?
                .ok_or(BackendError::Protocol("error answer to SSLRequest"))?;
            let (code, message) = message::error_fields(m.body());
            Err(BackendError::Refused {
                code,
                message,
                raw: m,
            })
        }
        _ => Err(BackendError::Protocol("unexpected answer to SSLRequest")),
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
