//! Role ports (`mode: tcp`): each client's flow from its first bytes to the
//! end of its connection. Owns choosing a node and connecting with retry
//! (`flow`), the byte relay on one of two engines (`epoll` on the client's
//! tokio worker, `uring` on io_uring threads), and the polite refusal when
//! no node can take a client (`refuse`). Does not bind or accept, nor parse
//! anything past a client's first packet; fed accepted sockets by `listener`.

mod epoll;
mod flow;
pub mod frames;
mod refuse;
mod uring;

pub use flow::{Keep, RoleContext, serve_client};
pub use refuse::refuse;
pub use uring::UringError;

use crate::config::IoUring;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEnd {
    /// Both sides closed (or one failed): the normal end.
    Closed,
    /// The client's eviction token, a KILL or its port's close fired.
    Evicted,
    /// Its node was drained and the connection reached an idle point: the
    /// client was told (FATAL 57P01) and both sides closed.
    Drained,
}

/// What a client reads before pgvane closes its connection, by how the
/// relay ended, as PostgreSQL's `pg_terminate_backend` answers: FATAL
/// 57P01. None: nothing to say (the connection simply ended).
fn farewell_for(end: RelayEnd) -> Option<&'static [u8]> {
    fn fatal(text: &str) -> Vec<u8> {
        let mut out = Vec::new();
        crate::protocol::encode::error_response(
            &mut out,
            crate::protocol::encode::Severity::Fatal,
            crate::protocol::sqlstate::ADMIN_SHUTDOWN,
            text,
        );
        out
    }
    static DRAINED: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
        fatal("terminating connection because pgvane drained its node; reconnect to reach another")
    });
    static KILLED: std::sync::LazyLock<Vec<u8>> =
        std::sync::LazyLock::new(|| fatal("terminating connection due to administrator command"));
    match end {
        RelayEnd::Drained => Some(&DRAINED),
        RelayEnd::Evicted => Some(&KILLED),
        RelayEnd::Closed => None,
    }
}

/// A relay's protocol position, shared by its two directions (which run
/// in one task; the lock is never contended), and whether the client is
/// being told its connection ends (then nothing more is passed on).
#[derive(Debug)]
pub struct Watch {
    frames: std::sync::Mutex<frames::Frames>,
    closing: std::sync::atomic::AtomicBool,
    /// The epoll engine holds server bytes the client has not taken yet.
    owed: std::sync::atomic::AtomicBool,
}

impl Watch {
    /// Watches a relay starting at `frames`.
    #[must_use]
    pub fn new(frames: frames::Frames) -> Self {
        Self {
            frames: std::sync::Mutex::new(frames),
            closing: std::sync::atomic::AtomicBool::new(false),
            owed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut frames::Frames) -> R) -> R {
        f(&mut self
            .frames
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    fn idle(&self) -> bool {
        self.with(|f| f.idle())
    }

    /// Reads bytes on their way: the server's (`down`) or the client's.
    fn saw(&self, down: bool, bytes: &[u8]) {
        self.with(|f| {
            if down {
                f.down(bytes);
            } else {
                f.up(bytes);
            }
        });
    }

    fn close(&self) {
        self.closing
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn closing(&self) -> bool {
        self.closing.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether a message of pgvane's own may go to the client now: the
    /// server's bytes read so far end between messages and all reached it.
    fn may_tell(&self) -> bool {
        !self.owed.load(std::sync::atomic::Ordering::Relaxed) && self.with(|f| f.between_messages())
    }
}

/// Counters a relay adds to as bytes move: the port's, and the client's
/// own totals for its disconnect line.
#[derive(Debug, Clone)]
pub struct ByteCounters {
    /// Client → server bytes.
    pub to_server: prometheus::IntCounter,
    /// Server → client bytes.
    pub to_client: prometheus::IntCounter,
    /// This client's bytes, to the server and to the client.
    pub moved: std::sync::Arc<[std::sync::atomic::AtomicU64; 2]>,
}

impl ByteCounters {
    /// The port's counters with totals of the client's own.
    #[must_use]
    pub fn for_client(&self) -> Self {
        Self {
            to_server: self.to_server.clone(),
            to_client: self.to_client.clone(),
            moved: std::sync::Arc::default(),
        }
    }

    /// The client → server direction.
    fn up(&self) -> Counted<'_> {
        Counted {
            port: &self.to_server,
            own: &self.moved[0],
        }
    }

    /// The server → client direction.
    fn down(&self) -> Counted<'_> {
        Counted {
            port: &self.to_client,
            own: &self.moved[1],
        }
    }

    /// The client's totals so far: (to the server, to the client).
    #[must_use]
    pub fn moved(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.moved[0].load(Relaxed), self.moved[1].load(Relaxed))
    }
}

/// One direction's counters, as a pump adds to them.
struct Counted<'a> {
    port: &'a prometheus::IntCounter,
    own: &'a std::sync::atomic::AtomicU64,
}

impl Counted<'_> {
    fn add(&self, n: u64) {
        self.port.inc_by(n);
        self.own.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A connected client handed to an engine: both sockets, what ends the
/// relay early, and what runs when it ends.
pub struct Handoff {
    /// The client's socket (registered with the calling worker's reactor).
    pub client: TcpStream,
    /// The node's socket.
    pub server: TcpStream,
    /// Fires when the client's node stops qualifying.
    pub evict: CancellationToken,
    /// Fires when the client's node is drained: the relay ends at the
    /// connection's next idle point ([`Watch`]).
    pub drain: CancellationToken,
    /// Where the connection stands, from the bytes pgvane passed already.
    pub watch: Watch,
    /// Fires when the port closes (removal, shutdown past the drain).
    pub close: CancellationToken,
    /// Byte counters.
    pub bytes: ByteCounters,
    /// Runs once the relay has ended and both sockets are closed; holds
    /// whatever must live as long as the client (lease, counts).
    pub done: Box<dyn FnOnce(RelayEnd) + Send>,
}

impl std::fmt::Debug for Handoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handoff")
            .field("client", &self.client)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// The role ports' relay engine, chosen once at start (`io_uring`).
#[derive(Debug)]
pub enum Engine {
    /// Bytes copied on the client's tokio worker runtime (epoll).
    Epoll,
    /// Bytes copied on io_uring runtime threads, one per core.
    Uring(uring::Uring),
}

impl Engine {
    /// Starts the engine `choice` asks for: `auto` tries io_uring with
    /// `threads` threads and falls back to epoll with one info line, `on`
    /// fails when io_uring is unavailable, `off` is epoll.
    ///
    /// # Errors
    /// With `on`, why io_uring cannot be used.
    pub fn start(choice: IoUring, threads: usize) -> Result<Self, UringError> {
        if choice == IoUring::Off {
            return Ok(Self::Epoll);
        }
        match uring::Uring::start(threads) {
            Ok(u) => Ok(Self::Uring(u)),
            Err(e) if choice == IoUring::Auto => {
                tracing::info!("io_uring unavailable ({e}); role ports relay with epoll");
                Ok(Self::Epoll)
            }
            Err(e) => Err(e),
        }
    }

    /// `epoll` or `io_uring`, as metrics and logs name the engine.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::Epoll => "epoll",
            Self::Uring(_) => "io_uring",
        }
    }

    /// Relays `h` until the server side ends, the client side fails, or
    /// eviction or the port's close fires, then closes both sockets and
    /// runs `h.done`. Returns at once: the relay runs as its own task (on
    /// the calling tokio runtime, or on an io_uring thread). A client's EOF
    /// reaches the server as a half-close; the server's EOF ends the relay
    /// once its last bytes reached the client.
    pub fn relay(&self, h: Handoff) {
        match self {
            Self::Epoll => epoll::spawn(h),
            Self::Uring(u) => u.relay(h),
        }
    }
}

#[cfg(test)]
mod tests;
