//! Role ports (`mode: tcp`): each client's flow from its first bytes to the
//! end of its connection. Owns choosing a node and connecting with retry
//! (`flow`), the byte relay (`epoll`), and the polite refusal when no node
//! can take a client (`refuse`). Does not bind or accept, nor parse
//! anything past a client's first packet; fed accepted sockets by `listener`.

mod epoll;
mod flow;
mod refuse;

pub use flow::{RoleContext, serve_client};
pub use refuse::refuse;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

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

/// Relays between `client` and `server` until the server side ends, the
/// client side fails, or `evict` fires; both sockets are closed when it
/// returns. A client's EOF reaches the server as a half-close.
/// Cancel safe: dropping it closes both sockets.
pub async fn relay(
    client: TcpStream,
    server: TcpStream,
    evict: &CancellationToken,
    bytes: &ByteCounters,
) -> RelayEnd {
    tokio::select! {
        () = epoll::copy(&client, &server, bytes) => RelayEnd::Closed,
        () = evict.cancelled() => RelayEnd::Evicted,
    }
}

#[cfg(test)]
mod tests;
