//! The role-port data path: a byte-for-byte relay between a client and the
//! node chosen for it, and the polite refusal (an `ErrorResponse`) when no
//! node can take it. Knows nothing of routing; fed sockets by `listener`.
//!
//! Memory: no buffer lives in an idle connection. Each direction waits for
//! readiness, then reads into a stack buffer inside a synchronous function
//! and writes straight on; only bytes the peer cannot take yet are copied
//! into a per-direction `Vec`, freed as soon as it drains.

use crate::protocol::encode::{Severity, error_response};
use crate::protocol::sqlstate::{PROTOCOL_VIOLATION, SqlState};
use crate::protocol::startup::{self, FirstPacket};
use std::io;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Bytes moved per wake-up at most, on the stack of the runtime thread.
const CHUNK: usize = 16 * 1024;

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEnd {
    /// Both sides closed (or one failed): the normal end.
    Closed,
    /// The lease's eviction token fired.
    Evicted,
}

/// Counters a relay adds to as bytes move.
#[derive(Debug, Clone)]
pub struct ByteCounters {
    /// Client → server bytes.
    pub to_server: prometheus::IntCounter,
    /// Server → client bytes.
    pub to_client: prometheus::IntCounter,
}

/// Relays until the server side ends, the client side fails, or `evict`
/// fires. A client's EOF is passed on as a half-close and the server may
/// still answer; the server's EOF (its backend exited: terminated, idle
/// timeout, shutdown) ends the relay once its last bytes reached the
/// client, so an idle client that never reads or writes again does not hold
/// the connection, just as with a direct connection to PostgreSQL.
/// Cancel safe: dropping it drops both sockets.
pub async fn relay(
    client: &TcpStream,
    server: &TcpStream,
    evict: &CancellationToken,
    bytes: &ByteCounters,
) -> RelayEnd {
    let both = async {
        let up = pump(client, server, &bytes.to_server);
        let down = pump(server, client, &bytes.to_client);
        tokio::pin!(up, down);
        tokio::select! {
            _ = &mut down => {}
            r = &mut up => {
                if r.is_ok() {
                    let _ = down.await;
                }
            }
        }
    };
    tokio::select! {
        _ = both => RelayEnd::Closed,
        () = evict.cancelled() => RelayEnd::Evicted,
    }
}

/// One direction: `from` → `to`, propagating EOF as a half-close.
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    counter: &prometheus::IntCounter,
) -> io::Result<()> {
    let mut pending: Vec<u8> = Vec::new();
    loop {
        if !pending.is_empty() {
            to.writable().await?;
            match to.try_write(&pending) {
                Ok(n) => {
                    pending.drain(..n);
                    if pending.is_empty() {
                        pending = Vec::new();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            continue;
        }
        from.readable().await?;
        match move_once(from, to, &mut pending) {
            Ok(0) => {
                // EOF: tell the other side we will send no more, keep reading it.
                let _ = socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
                return Ok(());
            }
            Ok(n) => counter.inc_by(n as u64),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// Reads once into a stack buffer and writes what it can; the rest goes to
/// `pending`. Returns bytes read (0 = EOF).
///
/// A short read means the socket buffer is drained, so readiness is cleared
/// right away (the closure reports `WouldBlock` after keeping the bytes):
/// this saves the extra `recv` that would only return `EAGAIN`. Tokio's
/// readiness tick makes this safe if more data arrived meanwhile.
fn move_once(from: &TcpStream, to: &TcpStream, pending: &mut Vec<u8>) -> io::Result<usize> {
    let mut buf = [0u8; CHUNK];
    let sock = socket2::SockRef::from(from);
    let mut got = 0;
    let read = from.try_io(Interest::READABLE, || {
        let n = io::Read::read(&mut &*sock, &mut buf)?;
        got = n;
        if n > 0 && n < CHUNK {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(n)
        }
    });
    let n = match read {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => got,
        Err(e) => return Err(e),
    };
    let mut off = 0;
    while off < n {
        match to.try_write(&buf[off..n]) {
            Ok(w) => off += w,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                pending.extend_from_slice(&buf[off..n]);
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Answers a client that cannot be served with a FATAL `ErrorResponse`, as
/// PostgreSQL itself would: read its first packet (answering `N` to an
/// SSL or GSS encryption request, then reading the startup message), send
/// the error, and close. A CancelRequest is closed silently. Bounded by `deadline`.
pub async fn refuse(
    client: &mut TcpStream,
    already: &[u8],
    code: SqlState,
    message: &str,
    deadline: Duration,
) {
    let mut pending = already.to_vec();
    let work = async {
        let mut out = Vec::with_capacity(64 + message.len());
        loop {
            match read_first(client, &mut pending).await {
                Ok(FirstPacket::SslRequest | FirstPacket::GssEncRequest) => {
                    client.write_all(b"N").await?
                }
                Ok(FirstPacket::Cancel { .. }) => return Ok(()),
                Ok(FirstPacket::Startup { .. }) => {
                    error_response(&mut out, Severity::Fatal, code, message);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    let text = format!("invalid startup packet: {e}");
                    error_response(&mut out, Severity::Fatal, PROTOCOL_VIOLATION, &text);
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        client.write_all(&out).await?;
        client.shutdown().await
    };
    let result: io::Result<()> = match tokio::time::timeout(deadline, work).await {
        Ok(r) => r,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "could not deliver the refusal");
    }
}

/// Fills `buf` from `pending` (bytes already read off the socket) first,
/// then from the socket.
async fn read_exact_after(
    client: &mut TcpStream,
    pending: &mut Vec<u8>,
    buf: &mut [u8],
) -> io::Result<()> {
    let n = pending.len().min(buf.len());
    buf[..n].copy_from_slice(&pending[..n]);
    pending.drain(..n);
    if n < buf.len() {
        client.read_exact(&mut buf[n..]).await?;
    }
    Ok(())
}

async fn read_first(client: &mut TcpStream, pending: &mut Vec<u8>) -> io::Result<FirstPacket> {
    let mut head = [0u8; 4];
    read_exact_after(client, pending, &mut head).await?;
    let len = startup::packet_len(&head)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
        .unwrap_or(8);
    let mut packet = vec![0u8; len];
    packet[..4].copy_from_slice(&head);
    read_exact_after(client, pending, &mut packet[4..]).await?;
    startup::parse(&packet).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests;
