//! One pgvane → PostgreSQL connection: its socket, buffers and the
//! protocol state it owns ([`state::ConnState`]), its transparently
//! prepared statements ([`prepared::PreparedCache`]) and the session
//! settings applied to it, all updated from what is sent and what the
//! server answers. This file holds the exchange of messages (queue, flush,
//! read); opening and login (`connect`, [`login`]), settings
//! ([`settings`]), socket options, cancel and errors have their own files.
//! Never uses pool, router or session; the session drives it.

mod cancel;
mod connect;
mod error;
pub mod login;
pub mod prepared;
pub mod query;
pub mod settings;
mod socket;
pub mod state;
pub mod stream;

pub use cancel::cancel;
pub use error::BackendError;
pub use login::{BackendSecret, Credentials};
pub use settings::{Setting, Settings, apply_sql};
pub use socket::SocketOptions;

use crate::protocol::encode;
use crate::protocol::message::{self, Backend as B, Message, ReadError, Relay};
use crate::protocol::tag::backend as bt;
use crate::topology::NodeAddr;
use bytes::{Buf, BytesMut};
use prepared::PreparedCache;
use state::{ConnState, PreparedEffect};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use stream::ServerStream;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// What a message from the server teaches about the connection: its
/// protocol state, prepared statements gone, settings made unknown or
/// reset. (ParameterStatus values are learned by [`Backend::read`] only.)
fn learn(
    state: &mut ConnState,
    prepared: &mut PreparedCache,
    applied: &mut Option<Settings>,
    tag: u8,
    body: &[u8],
) {
    if state.on_recv_parts(tag, body) == PreparedEffect::AllGone {
        prepared.clear();
    }
    if tag == bt::COMMAND_COMPLETE && state.settings_changed {
        state.settings_changed = false;
        *applied = if state.last_tag == state::Tag::DiscardAll {
            Some(Arc::default())
        } else {
            None
        };
    }
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

impl Backend {
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
        learn(
            &mut self.state,
            &mut self.prepared,
            &mut self.applied,
            m.tag(),
            m.body(),
        );
        if m.tag() == bt::PARAMETER_STATUS {
            if let Some(B::ParameterStatus(k, v)) = B::parse(m) {
                match self.params.iter_mut().find(|(n, _)| n == k) {
                    Some(slot) => v.clone_into(&mut slot.1),
                    None => self.params.push((k.to_owned(), v.to_owned())),
                }
            }
        }
    }

    /// Moves the whole messages already buffered from the server to `out`
    /// in place, noting each as [`Self::read`] does, while `relay` says
    /// [`Relay::Pass`] for their tags and `out` holds less than `limit`;
    /// stops after a [`Relay::Last`] one. The first message it keeps (a
    /// [`Relay::Keep`], a ParameterStatus, one not whole yet or of an
    /// impossible length) stays buffered for [`Self::read`]. No message
    /// is cut out of the buffer and the run is copied at once: a reply's
    /// rows cost a header read each.
    pub fn relay_buffered(
        &mut self,
        out: &mut Vec<u8>,
        limit: usize,
        mut relay: impl FnMut(u8) -> Relay,
    ) {
        let (state, prepared, applied) = (&mut self.state, &mut self.prepared, &mut self.applied);
        let end = message::relay_run(
            &self.buf,
            limit.saturating_sub(out.len()),
            // ParameterStatus values are learned by `read` (`note`).
            |tag| {
                if tag == bt::PARAMETER_STATUS {
                    Relay::Keep
                } else {
                    relay(tag)
                }
            },
            |tag, body| learn(state, prepared, applied, tag, body),
        );
        if end > 0 {
            out.extend_from_slice(&self.buf[..end]);
            self.buf.advance(end);
        }
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
