//! The io_uring engine: one monoio runtime thread per core relays the bytes
//! of the clients handed to it, each as its own task. Fed by `Engine` on
//! the client's tokio worker, which chose and connected the node; knows
//! nothing of routing.
//!
//! Memory: reads go straight into an owned buffer the kernel fills when
//! bytes arrive, so a waiting read holds one. It is small (`SMALL`) while a
//! direction is quiet and grows four times per full read up to `LARGE` for
//! bulk transfers (COPY, big results), back to small after the first short
//! read: an idle client holds two small buffers, not two large ones.

use super::{ByteCounters, Handoff, RelayEnd, Watch};
use futures_util::future::{Either, select};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::net::TcpStream;
use std::io;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Read size of a quiet direction, which a waiting read holds: most
/// requests and short results fit.
const SMALL: usize = 192;
/// Largest read size, reached after a few full reads in a row.
const LARGE: usize = 16 * 1024;
/// Submission queue entries of each ring (completions: twice as many).
const ENTRIES: u32 = 1024;

/// Why io_uring cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UringError {
    /// `kernel.io_uring_disabled` is 2: io_uring is off for everyone.
    #[error("kernel.io_uring_disabled is 2")]
    Disabled,
    /// The kernel refused to set up a ring (seccomp, permissions, an old kernel).
    #[error("io_uring setup failed: {0}")]
    Setup(#[source] io::Error),
    /// A relay thread could not be started.
    #[error("cannot start an io_uring thread: {0}")]
    Thread(#[source] io::Error),
}

/// A relay as it travels to an io_uring thread: sockets taken off the
/// tokio reactor.
struct Job {
    client: std::net::TcpStream,
    server: std::net::TcpStream,
    evict: CancellationToken,
    drain: CancellationToken,
    watch: Watch,
    close: CancellationToken,
    bytes: ByteCounters,
    done: Box<dyn FnOnce(RelayEnd) + Send>,
}

/// One io_uring thread: where to send it relays, and how many it runs.
#[derive(Debug)]
struct Lane {
    jobs: mpsc::UnboundedSender<Job>,
    load: Arc<AtomicUsize>,
}

/// The io_uring relay threads; dropping it ends them and their relays.
#[derive(Debug)]
pub struct Uring {
    lanes: Vec<Lane>,
}

impl Uring {
    /// Starts `threads` relay threads (at least one), each with its own
    /// ring; fails when the kernel disallows io_uring or a ring cannot be
    /// set up.
    pub(super) fn start(threads: usize) -> Result<Self, UringError> {
        if std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
            .is_ok_and(|v| v.trim() == "2")
        {
            return Err(UringError::Disabled);
        }
        let mut lanes = Vec::new();
        for i in 0..threads.max(1) {
            let (jobs, inbox) = mpsc::unbounded_channel();
            let (ready, started) = std::sync::mpsc::channel();
            let load = Arc::new(AtomicUsize::new(0));
            let lane_load = Arc::clone(&load);
            std::thread::Builder::new()
                .name(format!("pgvane-uring-{i}"))
                .spawn(move || match ring(true).or_else(|_| ring(false)) {
                    Ok(mut rt) => {
                        let _ = ready.send(Ok(()));
                        rt.block_on(serve(inbox, lane_load));
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                    }
                })
                .map_err(UringError::Thread)?;
            match started.recv() {
                Ok(Ok(())) => lanes.push(Lane { jobs, load }),
                Ok(Err(e)) => return Err(UringError::Setup(e)),
                Err(_) => return Err(UringError::Setup(io::Error::other("thread ended"))),
            }
        }
        Ok(Self { lanes })
    }

    /// Takes `h`'s sockets off the calling tokio reactor and hands the
    /// relay to the least busy io_uring thread.
    pub(super) fn relay(&self, h: Handoff) {
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
        let sockets = detach(client).and_then(|c| Ok((c, detach(server)?)));
        let (client, server) = match sockets {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "could not hand the client to an io_uring thread");
                return done(RelayEnd::Closed);
            }
        };
        let Some(lane) = self
            .lanes
            .iter()
            .min_by_key(|l| l.load.load(Ordering::Relaxed))
        else {
            return done(RelayEnd::Closed);
        };
        lane.load.fetch_add(1, Ordering::Relaxed);
        let job = Job {
            client,
            server,
            evict,
            drain,
            watch,
            close,
            bytes,
            done,
        };
        if let Err(mpsc::error::SendError(job)) = lane.jobs.send(job) {
            lane.load.fetch_sub(1, Ordering::Relaxed);
            (job.done)(RelayEnd::Closed);
        }
    }
}

/// A runtime on a new ring; `fast` asks for completions to run only when
/// the thread waits for them, without interrupts (`COOP_TASKRUN`,
/// `SINGLE_ISSUER`, `DEFER_TASKRUN`: Linux 6.1+; older kernels get a plain ring).
/// Timers serve one bound only: the grace a killed relay has to say so.
fn ring(
    fast: bool,
) -> io::Result<monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>> {
    let mut builder = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new().with_entries(ENTRIES);
    if fast {
        let mut flags = io_uring::IoUring::builder();
        flags
            .setup_coop_taskrun()
            .setup_single_issuer()
            .setup_defer_taskrun();
        builder = builder.uring_builder(flags);
    }
    builder.enable_timer().build()
}

/// A tokio socket as a blocking std socket: io_uring waits inside the
/// kernel, and a non-blocking socket would answer its reads `EAGAIN`.
fn detach(s: tokio::net::TcpStream) -> io::Result<std::net::TcpStream> {
    let s = s.into_std()?;
    s.set_nonblocking(false)?;
    Ok(s)
}

/// An io_uring thread's main task: starts each relay sent to it.
async fn serve(mut inbox: mpsc::UnboundedReceiver<Job>, load: Arc<AtomicUsize>) {
    while let Some(job) = inbox.recv().await {
        // The relay's future is the task itself: wrapped in another
        // block, the job (or the future, when made outside) would be kept
        // twice for the relay's life.
        monoio::spawn(run(job, LoadShare(Arc::clone(&load))));
    }
}

/// One relay: copy until it ends or eviction fires, close, run `done`.
///
/// Not an `async fn`: the job's parts move into the future once (an
/// async fn would keep the whole job beside them for the relay's life).
fn run(job: Job, share: LoadShare) -> impl std::future::Future<Output = ()> {
    let Job {
        client,
        server,
        evict,
        drain,
        watch,
        close,
        bytes,
        done,
    } = job;
    async move {
        // Uncounted when the relay ends, however it ends.
        let _share = share;
        let stops = Stops {
            drain: &drain,
            kill: &close,
        };
        let copy = pin!(copy(client, server, &bytes, &watch, stops));
        // A kill is the copy's to answer (the client is told when its
        // stream is between messages); this bounds it. The timer is
        // boxed: armed only after a kill, inline it would size (and
        // align to 128 bytes) every relay's task.
        let closed = async {
            close.cancelled().await;
            Box::pin(monoio::time::sleep(KILL_GRACE)).await;
        };
        let (evicted, closed) = (pin!(evict.cancelled()), pin!(closed));
        let end = match select(copy, select(evicted, closed)).await {
            Either::Left((end, _)) => end,
            Either::Right(_) => RelayEnd::Evicted,
        };
        done(end);
    }
}

/// A relay counted in its thread's load until dropped.
struct LoadShare(Arc<AtomicUsize>);

impl Drop for LoadShare {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What ends a relay from outside, as the server → client direction
/// watches for it: a drain (at the next idle point) and a kill (now).
#[derive(Clone, Copy)]
struct Stops<'a> {
    drain: &'a CancellationToken,
    kill: &'a CancellationToken,
}

/// How long a killed relay may take to tell its client.
const KILL_GRACE: std::time::Duration = std::time::Duration::from_millis(200);

/// Copies both ways until the server side ends or the client side fails
/// (`Closed`), the node is drained and the connection is idle (`Drained`,
/// the client told so) or the relay is killed (`Evicted`, the client told
/// so when its stream is between messages); a client's EOF reaches the
/// server as a half-close and the server may still answer, the server's
/// EOF ends the copy. Dropping it closes both sockets (once the kernel has
/// cancelled their reads).
async fn copy(
    client: std::net::TcpStream,
    server: std::net::TcpStream,
    bytes: &ByteCounters,
    watch: &Watch,
    stops: Stops<'_>,
) -> RelayEnd {
    // Split as they are taken: a named stream would keep its storage in
    // this future after the split.
    let (Ok((client_r, client_w)), Ok((server_r, server_w))) = (
        TcpStream::from_std(client).map(TcpStream::into_split),
        TcpStream::from_std(server).map(TcpStream::into_split),
    ) else {
        return RelayEnd::Closed;
    };
    let up = pin!(pump(client_r, server_w, bytes.up(), watch, None));
    let down = pin!(pump(server_r, client_w, bytes.down(), watch, Some(stops)));
    let ended = match select(up, down).await {
        Either::Left((Ok(_), down)) => down.await,
        Either::Left((Err(e), _)) => Err(e),
        Either::Right((r, _)) => r,
    };
    match ended {
        Ok(Some(end)) => end,
        _ => RelayEnd::Closed,
    }
}

/// One direction: `from` → `to`, propagating EOF as a half-close; the
/// bytes are read by `watch` on their way. The server → client direction
/// (given `stops`) tells the client and ends the copy once the node is
/// drained and the connection idle, or at a kill. Once the client is being
/// told, the other direction passes nothing on.
#[allow(clippy::manual_async_fn)] // on purpose: see the comment below
fn pump<'a, R: AsyncReadRent + 'a, W: AsyncWriteRent + 'a>(
    mut from: R,
    mut to: W,
    counter: super::Counted<'a>,
    watch: &'a Watch,
    stops: Option<Stops<'a>>,
) -> impl std::future::Future<Output = io::Result<Option<RelayEnd>>> + 'a {
    // Not an `async fn`: its arguments would be kept twice (as arguments
    // and as the locals they are moved into); captured by this block they
    // are kept once. Two of these live in every relay, mostly waiting for
    // bytes: the wait is one future (`wait`) so that the write reuses its
    // room; awaited in place, its parts were kept beside the write's.
    async move {
        let mut size = SMALL;
        let mut buf: Vec<u8> = Vec::with_capacity(size);
        loop {
            let (read, b) = match wait(&mut from, buf, stops, watch).await {
                Waited::Read(read, b) => (read, b),
                Waited::Stop(end) => return Ok(Some(Box::pin(farewell(&mut to, end)).await)),
            };
            buf = b;
            let n = match read {
                Ok(0) => {
                    // EOF: tell the other side we will send no more, keep reading it.
                    let _ = to.shutdown().await;
                    return Ok(None);
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            watch.saw(stops.is_some(), &buf[..n]);
            if watch.closing() {
                // The client is being told its connection ends: what it sent
                // meanwhile is not run.
                return Ok(None);
            }
            let (written, b) = to.write_all(buf).await;
            buf = b;
            written?;
            counter.add(n as u64);
            let next = if n >= size {
                (size * 4).min(LARGE)
            } else {
                SMALL
            };
            if next == size {
                buf.clear();
            } else {
                size = next;
                buf = Vec::with_capacity(size);
            }
        }
    }
}

/// What a direction's wait for bytes came to.
enum Waited {
    /// The read ended: its result and the buffer back.
    Read(io::Result<usize>, Vec<u8>),
    /// The relay ends here (a drain at an idle point or a kill): how, and
    /// whether the client may be told.
    Stop((RelayEnd, bool)),
}

/// Waits for `from`'s next bytes into `buf`; given `stops`, also for a
/// drain or a kill: every stop decision of a direction is made here. A
/// read under way is never given up while bytes may be due (its bytes
/// would be lost), only where the connection ends anyway.
///
/// Not an `async fn`, for the reason `pump` gives.
#[allow(clippy::manual_async_fn)]
fn wait<'a, R: AsyncReadRent>(
    from: &'a mut R,
    buf: Vec<u8>,
    stops: Option<Stops<'a>>,
    watch: &'a Watch,
) -> impl std::future::Future<Output = Waited> + 'a {
    async move {
        let Some(stops) = stops else {
            let (r, b) = from.read(buf).await;
            return Waited::Read(r, b);
        };
        // A drain or a kill that fired while the last bytes were passed on
        // is due now, before another read is made.
        if let Some(end) = stopping(stops, watch) {
            return Waited::Stop(end);
        }
        let mut read = pin!(from.read(buf));
        let drained = pin!(async {
            if stops.drain.is_cancelled() {
                std::future::pending::<()>().await;
            }
            stops.drain.cancelled().await;
        });
        let killed = pin!(stops.kill.cancelled());
        let (r, b) = match select(read.as_mut(), select(drained, killed)).await {
            Either::Left((done, _)) => done,
            Either::Right(_) => match stopping(stops, watch) {
                Some(end) => return Waited::Stop(end),
                None => read.await,
            },
        };
        Waited::Read(r, b)
    }
}

/// Whether the relay ends now, and whether the client may be told: a
/// kill (told when its stream is between messages), or a drain reaching
/// an idle point (told). Marks the watch closing when so, before anything
/// else can be passed on.
fn stopping(stops: Stops<'_>, watch: &Watch) -> Option<(RelayEnd, bool)> {
    let (killed, drained) = (stops.kill.is_cancelled(), stops.drain.is_cancelled());
    let end = watch.with(|f| {
        if killed {
            Some((RelayEnd::Evicted, f.between_messages()))
        } else if drained && f.idle() {
            Some((RelayEnd::Drained, true))
        } else {
            None
        }
    })?;
    watch.close();
    Some(end)
}

/// Tells the client why its connection ends when it may; returns how the
/// relay ended.
async fn farewell<W: AsyncWriteRent>(to: &mut W, (end, tell): (RelayEnd, bool)) -> RelayEnd {
    if let Some(bytes) = super::farewell_for(end).filter(|_| tell) {
        let _ = to.write_all(bytes).await;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_sets_up_where_io_uring_is_allowed() {
        if std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
            .is_ok_and(|v| v.trim() == "2")
        {
            return;
        }
        let fast = ring(true).map(drop);
        eprintln!("fast ring (DEFER_TASKRUN): {fast:?}");
        assert!(fast.is_ok() || ring(false).is_ok());
    }
}
