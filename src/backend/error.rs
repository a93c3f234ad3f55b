//! Why a backend could not be opened or used: one error type for connect,
//! TLS, login and pgvane's own statements on a backend. Server errors keep
//! their SQLSTATE and, where a client may see them, the raw ErrorResponse.
//! Fed by the other `backend` files; read by pool, session and tracker.

use crate::protocol::message::{Message, ReadError};
use crate::topology::NodeAddr;

/// Why a backend could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// TCP connect failed or timed out.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// Node.
        addr: NodeAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The server sent an ErrorResponse during startup (kept to forward).
    #[error("server refused the connection: {code} {message}")]
    Refused {
        /// SQLSTATE.
        code: String,
        /// Message.
        message: String,
        /// The raw ErrorResponse.
        raw: Message,
    },
    /// The server asked for an authentication method pgvane lacks or the
    /// port does not allow, or a password that is not configured.
    #[error("authentication: {0}")]
    Auth(String),
    /// TLS could not be set up as `server_tls` demands.
    #[error("TLS: {0}")]
    Tls(String),
    /// Reading failed.
    #[error("reading from the server: {0}")]
    Read(#[from] ReadError),
    /// Writing failed.
    #[error("writing to the server: {0}")]
    Write(#[from] std::io::Error),
    /// The server broke the protocol.
    #[error("protocol: {0}")]
    Protocol(&'static str),
    /// One of pgvane's own queries failed (the server's ErrorResponse).
    #[error("query: {code} {message}")]
    Query {
        /// SQLSTATE.
        code: String,
        /// Message.
        message: String,
    },
    /// Applying the session's settings failed (the server's ErrorResponse).
    #[error("applying session settings: {code} {message}")]
    Apply {
        /// SQLSTATE.
        code: String,
        /// Message.
        message: String,
        /// The raw ErrorResponse.
        raw: Message,
    },
}

impl BackendError {
    /// [`BackendError::Refused`] from a server's ErrorResponse.
    pub(super) fn refused(m: Message) -> Self {
        let (code, message) = crate::protocol::message::error_fields(m.body());
        Self::Refused {
            code,
            message,
            raw: m,
        }
    }
}
