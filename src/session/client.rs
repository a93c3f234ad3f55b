//! The client side of a split session: its socket with one read buffer
//! (a partial message always waits for readiness, never spins), a bounded
//! output buffer, the explicit [`ClientState`], and the port's drain and
//! close signals. Holds no buffer while the client idles.

use super::error::SessionError;
use super::stream::ClientStream;
use crate::beacon::{Beacon, Watch};
use crate::protocol::message::{self, Message};
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

/// Output is written to the client once this much is buffered.
pub(super) const OUT_LIMIT: usize = 64 * 1024;

/// Where the client side of a session stands. Transaction states mirror the
/// last ReadyForQuery the client got; the others are pgvane's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ClientState {
    /// Between requests, outside a transaction (`I`).
    Idle,
    /// Inside a transaction block (`T`).
    InTransaction,
    /// Inside a failed transaction block (`E`).
    FailedTransaction,
    /// pgvane failed an extended-protocol batch itself: like PostgreSQL,
    /// it ignores everything up to the next Sync.
    AwaitingSync,
    /// Relaying COPY FROM STDIN.
    CopyIn,
}

impl ClientState {
    /// The state a ReadyForQuery status announces.
    pub(super) fn from_status(status: u8) -> Self {
        match status {
            b'T' => Self::InTransaction,
            b'E' => Self::FailedTransaction,
            _ => Self::Idle,
        }
    }
}

/// A client socket with its buffers and the port's signals.
pub(super) struct ClientConn {
    stream: ClientStream,
    buf: BytesMut,
    /// Bytes waiting to be written to the client.
    pub(super) out: Vec<u8>,
    /// Bytes of the current request's answer already reached the client.
    pub(super) forwarded: bool,
    /// Nothing is written while set: what is buffered may yet be taken
    /// back (a replica's refusal that pgvane retries on the leader).
    pub(super) hold: bool,
    drain: Watch,
    /// Fires when the port closes or an operator kills its clients.
    pub(super) close: Watch,
    /// A request of this session has been read: a drain then ends it as
    /// soon as it is idle.
    served: bool,
    /// A session that had read no request when the drain began ends at
    /// this time: its client may have connected just before the listener
    /// closed and be about to send its first request.
    fresh_until: Option<tokio::time::Instant>,
    /// A message larger than a stashed buffer was read into `buf`: it goes
    /// back to the allocator, not to the stash.
    buf_grown: bool,
    /// Bytes read from the client (for its disconnect line).
    pub(super) bytes_in: u64,
    /// Bytes written to the client.
    pub(super) bytes_out: u64,
}

/// How long a drain spares a session that has sent no request yet.
pub(super) const FRESH_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

impl ClientConn {
    /// Wraps an accepted socket.
    pub(super) fn new(stream: ClientStream, drain: &Beacon, close: &Beacon) -> Self {
        // One waker slot for both: the session's task waits on both at once.
        let slot = std::sync::Arc::new(futures_util::task::AtomicWaker::new());
        let (drain, close) = (drain.watch(&slot), close.watch(&slot));
        Self {
            stream,
            buf: BytesMut::new(),
            out: Vec::new(),
            forwarded: false,
            hold: false,
            drain,
            close,
            served: false,
            fresh_until: None,
            buf_grown: false,
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    /// Takes the plain socket off this worker's reactor, for another
    /// worker; None (the stream kept) for a TLS client.
    pub(super) fn detach(&mut self) -> Option<std::net::TcpStream> {
        match std::mem::replace(&mut self.stream, ClientStream::Closed) {
            ClientStream::Plain(tcp) => tcp.into_std().ok(),
            other => {
                self.stream = other;
                None
            }
        }
    }

    /// Registers a detached socket with the calling worker's reactor.
    pub(super) fn attach(&mut self, socket: std::net::TcpStream) -> std::io::Result<()> {
        self.stream = ClientStream::Plain(tokio::net::TcpStream::from_std(socket)?);
        Ok(())
    }

    /// Whether the client speaks TLS.
    pub(super) fn is_tls(&self) -> bool {
        matches!(self.stream, crate::tls::stream::MaybeTls::Tls(_))
    }

    /// Writes everything buffered.
    pub(super) async fn flush(&mut self) -> Result<(), SessionError> {
        if !self.out.is_empty() && !self.hold {
            self.forwarded = true;
            let stream = &mut self.stream;
            let out = &self.out;
            let write = async move {
                stream.write_all(out).await?;
                stream.flush().await
            };
            // The write first: one that completes at once (the common
            // case) never polls the close beacon.
            tokio::select! {
                biased;
                r = write => if r.is_err() {
                    // A write that failed as the port closed ends as a
                    // shutdown, as when the beacon was polled first.
                    return Err(if self.close.is_fired() {
                        SessionError::Shutdown
                    } else {
                        SessionError::ClientGone
                    });
                },
                () = self.close.fired() => return Err(SessionError::Shutdown),
            }
            self.bytes_out += self.out.len() as u64;
            self.out.clear();
            if self.out.capacity() > OUT_LIMIT {
                self.out = Vec::new();
            }
        }
        Ok(())
    }

    /// Writes when more than [`OUT_LIMIT`] is buffered: the client's reading
    /// speed bounds what pgvane holds for it.
    pub(super) async fn flush_if_full(&mut self) -> Result<(), SessionError> {
        if self.out.len() >= OUT_LIMIT {
            self.flush().await?;
        }
        Ok(())
    }

    /// Whether a whole message is already buffered.
    pub(super) fn has_buffered(&self) -> bool {
        self.buf.len() >= 5
            && self.buf.len()
                > u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize
    }

    /// Gives the (empty) read buffer and the reply buffer back to the
    /// worker's stash.
    fn stash_buffers(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        if !std::mem::take(&mut self.buf_grown) {
            super::buffers::give_read(buf);
        }
        if self.out.capacity() > 0 && self.out.is_empty() {
            super::buffers::give_reply(std::mem::take(&mut self.out));
        }
    }

    /// Reads one client message. `idle` says the session holds no backend:
    /// then a draining port ends it here. A partial message waits for the
    /// socket to become readable again. `limit` bounds how long the client
    /// may stay silent, and names the error that then ends the session.
    ///
    /// Not an `async fn`: every idle session's request loop holds this
    /// future, and an async fn would keep `limit` in it twice over.
    pub(super) fn read(
        &mut self,
        idle: bool,
        limit: Option<(std::time::Duration, SessionError)>,
    ) -> impl std::future::Future<Output = Result<Message, SessionError>> + '_ {
        use tokio_util::either::Either;
        match limit {
            // Boxed, and only with a limit (a held backend under
            // `idle_in_transaction_timeout_ms` or `pinned_idle_timeout_ms`):
            // the common wait holds no timer.
            Some((after, e)) => {
                let deadline = tokio::time::Instant::now() + after;
                let timed = Box::pin(tokio::time::timeout_at(
                    deadline,
                    self.read_until_stopped(idle),
                ));
                Either::Left(async move { timed.await.unwrap_or(Err(e)) })
            }
            None => Either::Right(self.read_until_stopped(idle)),
        }
    }

    /// [`Self::read`] without a limit: until a message, the client leaves,
    /// the port closes or (while `idle`) drains.
    async fn read_until_stopped(&mut self, idle: bool) -> Result<Message, SessionError> {
        loop {
            if let Some(m) = message::try_cut(&mut self.buf)
                .map_err(|e| SessionError::Protocol(e.to_string()))?
            {
                self.buf_grown |= m.raw().len() > super::buffers::READ_BYTES;
                if self.out.capacity() == 0 {
                    // A request starts: its replies go to a stashed buffer.
                    self.out = super::buffers::take_reply();
                }
                self.served = true;
                return Ok(m);
            }
            // A draining port ends a session that holds no backend, even
            // with half a message buffered: no request of it has started.
            // One that has sent nothing yet gets FRESH_GRACE to send it.
            let fresh = if idle && !self.served && self.drain.is_fired() {
                let until = *self
                    .fresh_until
                    .get_or_insert_with(|| tokio::time::Instant::now() + FRESH_GRACE);
                (tokio::time::Instant::now() < until).then_some(until)
            } else {
                None
            };
            if idle && self.drain.is_fired() && fresh.is_none() {
                return Err(SessionError::Shutdown);
            }
            if self.buf.is_empty() && idle {
                // About to wait on an idle client: hold no buffer meanwhile
                // (the next request of this worker's sessions reuses them).
                self.stash_buffers();
            }
            // Boxed, and only in a fresh session's grace: an idle wait
            // holds no timer.
            let grace = fresh.map(|at| Box::pin(tokio::time::sleep_until(at)));
            let grace_over = async move {
                match grace {
                    Some(timer) => timer.await,
                    None => std::future::pending().await,
                }
            };
            let waits_for_drain = idle && fresh.is_none();
            if self.close.is_fired() {
                return Err(SessionError::Shutdown);
            }
            // The read first: the wake-up that brings the client's bytes
            // does not poll the close and drain beacons again; a close or
            // drain that fired meanwhile still wins, checked once the
            // bytes are in.
            tokio::select! {
                biased;
                r = self.stream.read_some(&mut self.buf) => {
                    // Whatever the read brought, as when the beacons were
                    // polled first.
                    if self.close.is_fired()
                        || (waits_for_drain && self.drain.is_fired() && self.served)
                    {
                        return Err(SessionError::Shutdown);
                    }
                    match r {
                        Ok(0) => return Err(SessionError::ClientGone),
                        Ok(n) => self.bytes_in += n as u64,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            if self.buf.is_empty() && idle {
                                self.stash_buffers();
                            }
                        }
                        Err(_) => return Err(SessionError::ClientGone),
                    }
                }
                () = self.close.fired() => return Err(SessionError::Shutdown),
                () = self.drain.fired(), if waits_for_drain => {
                    // The drain began during this wait: a session that has
                    // sent nothing yet goes round again, into its grace.
                    if !self.served {
                        continue;
                    }
                    return Err(SessionError::Shutdown);
                }
                () = grace_over => return Err(SessionError::Shutdown),
            }
        }
    }
}
