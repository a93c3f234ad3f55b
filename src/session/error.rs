//! The one error type of a split session. Each variant knows its SQLSTATE,
//! its severity, the text a client may see and its metric label, so the
//! request loop turns any failure into the right ErrorResponse in one place.

use crate::protocol::encode::{self, Severity};
use crate::protocol::message::Message;
use crate::protocol::sqlstate::{self, SqlState};

/// A failure while serving a request.
#[derive(Debug, thiserror::Error)]
pub(super) enum SessionError {
    /// The client went away.
    #[error("client gone")]
    ClientGone,
    /// The port is closing (removed, or pgvane shuts down).
    #[error("terminating connection due to administrator command")]
    Shutdown,
    /// The held backend broke; the text says how.
    #[error("connection to node {node} lost: {cause}")]
    BackendLost {
        /// Node name.
        node: String,
        /// What happened.
        cause: String,
    },
    /// No backend could be had (SQLSTATE, message).
    #[error("{1}")]
    NoBackend(SqlState, String),
    /// The server refused a login or a setting: forward its ErrorResponse.
    #[error("server error")]
    Server(Message),
    /// The client broke the protocol.
    #[error("{0}")]
    Protocol(String),
    /// A per-session limit was reached (SQLSTATE, message).
    #[error("{1}")]
    Limit(SqlState, String),
    /// The client sat idle past a timeout while holding a backend; the
    /// session ends (SQLSTATE, message).
    #[error("{1}")]
    Idle(SqlState, String),
}

impl SessionError {
    /// The SQLSTATE the client gets.
    pub(super) fn sqlstate(&self) -> SqlState {
        match self {
            Self::ClientGone | Self::BackendLost { .. } | Self::Server(_) => {
                sqlstate::CONNECTION_FAILURE
            }
            Self::Shutdown => sqlstate::ADMIN_SHUTDOWN,
            Self::NoBackend(code, _) | Self::Limit(code, _) | Self::Idle(code, _) => *code,
            Self::Protocol(_) => sqlstate::PROTOCOL_VIOLATION,
        }
    }

    /// Whether the session ends: protocol violations, shutdown, and a lost
    /// backend that held session state the client relied on.
    pub(super) fn fatal(&self, pinned: bool) -> bool {
        match self {
            Self::ClientGone | Self::Shutdown | Self::Protocol(_) | Self::Idle(..) => true,
            Self::BackendLost { .. } => pinned,
            Self::NoBackend(..) | Self::Server(_) | Self::Limit(..) => false,
        }
    }

    /// Metric label (`pgvane_client_errors_total{sqlstate}` uses the code;
    /// this names the kind for logs).
    pub(super) fn label(&self) -> &'static str {
        match self {
            Self::ClientGone => "client_gone",
            Self::Shutdown => "shutdown",
            Self::BackendLost { .. } => "backend_lost",
            Self::NoBackend(..) => "no_backend",
            Self::Server(_) => "server",
            Self::Protocol(_) => "protocol",
            Self::Limit(..) => "limit",
            Self::Idle(..) => "idle_timeout",
        }
    }

    /// Appends the ErrorResponse the client sees.
    pub(super) fn encode(&self, out: &mut Vec<u8>, pinned: bool) {
        if let Self::Server(m) = self {
            out.extend_from_slice(m.raw());
            return;
        }
        let text = match self {
            Self::BackendLost { node, cause } => format!(
                "pgvane: connection to node {node} lost: {cause}; the transaction (if any) is rolled back"
            ),
            other => other.to_string(),
        };
        let severity = if self.fatal(pinned) {
            Severity::Fatal
        } else {
            Severity::Error
        };
        encode::error_response(out, severity, self.sqlstate(), &text);
    }
}
