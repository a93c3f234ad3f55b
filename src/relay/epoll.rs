//! The epoll engine: a byte copy on the client's tokio worker runtime.
//!
//! Memory: no buffer lives in an idle connection. Each direction waits for
//! readiness, then reads into a stack buffer inside a synchronous function
//! and writes straight on; only bytes the peer cannot take yet are copied
//! into a per-direction `Vec`, freed as soon as it drains.

use super::{ByteCounters, Handoff, RelayEnd, Watch};
use std::io;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Bytes moved per wake-up at most, on the stack of the runtime thread.
const CHUNK: usize = 16 * 1024;

/// Copies both ways until the server side ends or the client side fails
/// (`Closed`), or the node is drained and the connection is idle
/// (`Drained`). A client's EOF is passed on as a half-close and the server
/// may still answer; the server's EOF (its backend exited: terminated,
/// idle timeout, shutdown) ends the copy once its last bytes reached the
/// client, so an idle client that never reads or writes again does not
/// hold the connection, just as with a direct connection to PostgreSQL.
/// Cancel safe: dropping it stops the copy (the caller drops the sockets).
async fn copy(
    client: &TcpStream,
    server: &TcpStream,
    bytes: &ByteCounters,
    watch: &Watch,
    drain: &CancellationToken,
) -> RelayEnd {
    let up = pump(client, server, bytes.up(), watch, None);
    let down = pump(server, client, bytes.down(), watch, Some(drain));
    tokio::pin!(up, down);
    tokio::select! {
        r = &mut down => if matches!(r, Ok(true)) { return RelayEnd::Drained },
        r = &mut up => {
            if r.is_ok() && matches!(down.await, Ok(true)) {
                return RelayEnd::Drained;
            }
        }
    }
    RelayEnd::Closed
}

/// One direction: `from` → `to`, propagating EOF as a half-close; the
/// bytes are read by `watch` on their way. The server → client direction
/// (given `drain`) returns `Ok(true)` once the node is drained and the
/// connection idle.
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    counter: super::Counted<'_>,
    watch: &Watch,
    drain: Option<&CancellationToken>,
) -> io::Result<bool> {
    let down = drain.is_some();
    let mut pending: Vec<u8> = Vec::new();
    loop {
        if !pending.is_empty() {
            to.writable().await?;
            match to.try_write(&pending) {
                Ok(n) => {
                    pending.drain(..n);
                    if pending.is_empty() {
                        pending = Vec::new();
                        if down {
                            watch
                                .owed
                                .store(false, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            continue;
        }
        match drain {
            Some(d) if d.is_cancelled() => {
                if watch.idle() {
                    return Ok(true);
                }
                from.readable().await?;
            }
            Some(d) => tokio::select! {
                r = from.readable() => r?,
                () = d.cancelled() => continue,
            },
            None => from.readable().await?,
        }
        match move_once(from, to, &mut pending, watch, down) {
            Ok(0) => {
                // EOF: tell the other side we will send no more, keep reading it.
                let _ = socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
                return Ok(false);
            }
            Ok(n) => counter.add(n as u64),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        if down {
            watch
                .owed
                .store(!pending.is_empty(), std::sync::atomic::Ordering::Relaxed);
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
fn move_once(
    from: &TcpStream,
    to: &TcpStream,
    pending: &mut Vec<u8>,
    watch: &Watch,
    down: bool,
) -> io::Result<usize> {
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
    watch.saw(down, &buf[..n]);
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
            drain,
            watch,
            close,
            bytes,
            done,
        } = h;
        let (end, tell) = tokio::select! {
            end = copy(&client, &server, &bytes, &watch, &drain) => (end, true),
            () = evict.cancelled() => (RelayEnd::Evicted, false),
            // A kill or the port's close: the client is told when its
            // stream is between messages.
            () = close.cancelled() => (RelayEnd::Evicted, watch.may_tell()),
        };
        if let Some(bytes) = super::farewell_for(end).filter(|_| tell) {
            // One try, no waiting: an idle socket's buffer has room.
            let _ = client.try_write(bytes);
        }
        drop((client, server));
        done(end);
    });
}
