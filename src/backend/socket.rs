//! TCP socket options pgvane sets on the sockets it accepts or opens
//! (the config's `tcp_*`): keepalive and `TCP_USER_TIMEOUT`. No IO beyond
//! `setsockopt`; the listener applies them to clients, the backend to nodes.

use crate::config::TcpConfig;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpStream;

/// Socket options pgvane sets on the sockets it accepts or opens (the
/// config's `tcp_*`), so a peer that vanished without a FIN, or a client
/// that stopped taking bytes, is noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SocketOptions {
    tcp: TcpConfig,
}

/// Set once a socket option could not be set, so that is logged once.
static OPTION_FAILED: AtomicBool = AtomicBool::new(false);

impl SocketOptions {
    /// For client sockets: keepalive and the user timeout.
    #[must_use]
    pub fn for_clients(tcp: &TcpConfig) -> Self {
        Self { tcp: *tcp }
    }

    /// For sockets to nodes: keepalive only. A node that stops reading
    /// for a while (a `COPY FROM` waiting on a lock) is not a dead peer.
    #[must_use]
    pub fn for_servers(tcp: &TcpConfig) -> Self {
        Self {
            tcp: TcpConfig {
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
            if !OPTION_FAILED.swap(true, Ordering::Relaxed) {
                tracing::warn!(error = %e, "cannot set TCP keepalive or user timeout (logged once)");
            }
        }
    }
}
