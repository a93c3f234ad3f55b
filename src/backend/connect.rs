//! Opening a backend, the IO shell around [`Login`]: TCP connect with the
//! port's socket options, TLS negotiation as libpq's `sslmode` (one
//! SSLRequest, one answer byte), then the login's messages written and
//! the server's read until the first ReadyForQuery, all within a timeout.

use super::login::{Credentials, Login, Step};
use super::socket::SocketOptions;
use super::state::ConnState;
use super::stream::{HomedTcp, ServerStream};
use super::{Backend, BackendError, PreparedCache};
use crate::config::ServerTlsMode;
use crate::protocol::encode;
use crate::protocol::message;
use crate::protocol::tag::{backend as bt, ssl};
use crate::tls::BackendSecurity;
use crate::topology::NodeAddr;
use bytes::BytesMut;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
            let tcp = TcpStream::connect((&*addr.host, addr.port))
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
            b.login(creds, security).await?;
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

    /// Runs [`Login`] over the stream: writes what it answers, reads what
    /// the server sends (ParameterStatus is kept by [`Backend::read`]).
    async fn login(
        &mut self,
        creds: &Credentials,
        security: &BackendSecurity,
    ) -> Result<(), BackendError> {
        let end_point = self
            .stream
            .peer_certificate()
            .map(crate::tls::server::end_point_hash);
        let addr = self.addr.clone();
        let mut login = Login::new(creds, security, &addr, end_point);
        let mut out = Vec::new();
        login.start(&mut out);
        loop {
            if !out.is_empty() {
                self.write_now(&out).await?;
                out.clear();
            }
            let m = self.read().await?;
            if let Step::Ready(status) = login.on_message(&m, &mut out)? {
                self.key = login.key();
                self.state = ConnState {
                    status,
                    ..ConnState::default()
                };
                return Ok(());
            }
        }
    }

    /// Writes login messages at once (they bypass the protocol state).
    async fn write_now(&mut self, bytes: &[u8]) -> Result<(), BackendError> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        Ok(())
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
        ssl::ACCEPTED => {
            let name = crate::tls::client::server_name(&addr.host).map_err(BackendError::Tls)?;
            let tls = connector
                .connect(name, HomedTcp::new(tcp))
                .await
                .map_err(|e| BackendError::Tls(format!("handshake with {addr}: {e}")))?;
            Ok(ServerStream::from(tls))
        }
        ssl::REFUSED if security.mode == ServerTlsMode::Prefer => {
            Ok(ServerStream::Plain(HomedTcp::new(tcp)))
        }
        ssl::REFUSED => Err(BackendError::Tls(format!(
            "{addr} does not support SSL, but server_tls.mode is {}",
            security.mode.name()
        ))),
        // A server that failed before it could answer (out of processes,
        // shutting down) sends its ErrorResponse instead, as libpq expects.
        bt::ERROR_RESPONSE => Err(read_ssl_refusal(&mut tcp).await?),
        _ => Err(BackendError::Protocol("unexpected answer to SSLRequest")),
    }
}

/// Reads the rest of an ErrorResponse sent in place of the SSLRequest's
/// answer (its tag already read) and returns it as the refusal.
async fn read_ssl_refusal(tcp: &mut TcpStream) -> Result<BackendError, BackendError> {
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
    raw.extend_from_slice(&[bt::ERROR_RESPONSE]);
    raw.extend_from_slice(&len);
    raw.resize(n + 1, 0);
    tcp.read_exact(&mut raw[5..])
        .await
        .map_err(|e| BackendError::Read(e.into()))?;
    let m =
        message::try_cut(&mut raw)?.ok_or(BackendError::Protocol("error answer to SSLRequest"))?;
    Ok(BackendError::refused(m))
}
