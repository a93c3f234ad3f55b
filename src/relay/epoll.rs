//! The epoll engine: a byte copy on the client's tokio worker runtime.
//!
//! Memory: no buffer lives in an idle connection. Each direction waits for
//! readiness, then reads into a stack buffer inside a synchronous function
//! and writes straight on; only bytes the peer cannot take yet are copied
//! into a per-direction `Vec`, freed as soon as it drains.

use super::{ByteCounters, Handoff, RelayEnd};
use std::io;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes moved per wake-up at most, on the stack of the runtime thread.
const CHUNK: usize = 16 * 1024;

/// Copies both ways until the server side ends or the client side fails.
/// A client's EOF is passed on as a half-close and the server may still
/// answer; the server's EOF (its backend exited: terminated, idle timeout,
/// shutdown) ends the copy once its last bytes reached the client, so an
/// idle client that never reads or writes again does not hold the
/// connection, just as with a direct connection to PostgreSQL.
/// Cancel safe: dropping it stops the copy (the caller drops the sockets).
async fn copy(client: &TcpStream, server: &TcpStream, bytes: &ByteCounters) {
    let up = pump(client, server, bytes.up());
    let down = pump(server, client, bytes.down());
    tokio::pin!(up, down);
    tokio::select! {
        _ = &mut down => {}
        r = &mut up => {
            if r.is_ok() {
                let _ = down.await;
            }
        }
    }
}

/// One direction: `from` → `to`, propagating EOF as a half-close.
async fn pump(from: &TcpStream, to: &TcpStream, counter: super::Counted<'_>) -> io::Result<()> {
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
            Ok(n) => counter.add(n as u64),
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

/// Runs the relay of `h` as its own task on the calling tokio runtime (the
/// client's worker), so the task that chose the node can end: only the
/// sockets, the copy's state and `h.done` stay while the client idles.
pub(super) fn spawn(h: Handoff) {
    tokio::spawn(async move {
        let Handoff {
            client,
            server,
            evict,
            close,
            bytes,
            done,
        } = h;
        let end = tokio::select! {
            () = copy(&client, &server, &bytes) => RelayEnd::Closed,
            () = evict.cancelled() => RelayEnd::Evicted,
            () = close.cancelled() => RelayEnd::Evicted,
        };
        drop((client, server));
        done(end);
    });
}
