//! Named wire constants of protocol 3.0: message tags by direction,
//! authentication request codes, ReadyForQuery statuses, error fields and
//! the one-byte answers to an SSLRequest. Only names for bytes; framing
//! and parsing live in `message` and `encode`. Names follow PostgreSQL's
//! `src/include/libpq/protocol.h` (`PqMsg_*`, `AUTH_REQ_*`) and
//! <https://www.postgresql.org/docs/current/protocol-message-formats.html>.

/// Tags of messages a client (or pgvane towards a node) sends.
pub mod frontend {
    /// `Q` Query (simple protocol).
    pub const QUERY: u8 = b'Q';
    /// `P` Parse.
    pub const PARSE: u8 = b'P';
    /// `B` Bind.
    pub const BIND: u8 = b'B';
    /// `D` Describe (same byte as the backend's DataRow).
    pub const DESCRIBE: u8 = b'D';
    /// `E` Execute (same byte as the backend's ErrorResponse).
    pub const EXECUTE: u8 = b'E';
    /// `C` Close (same byte as the backend's CommandComplete).
    pub const CLOSE: u8 = b'C';
    /// `S` Sync (same byte as the backend's ParameterStatus).
    pub const SYNC: u8 = b'S';
    /// `H` Flush (same byte as the backend's CopyOutResponse).
    pub const FLUSH: u8 = b'H';
    /// `F` FunctionCall (fast path).
    pub const FUNCTION_CALL: u8 = b'F';
    /// `X` Terminate.
    pub const TERMINATE: u8 = b'X';
    /// `d` CopyData (both directions).
    pub const COPY_DATA: u8 = b'd';
    /// `c` CopyDone (both directions).
    pub const COPY_DONE: u8 = b'c';
    /// `f` CopyFail.
    pub const COPY_FAIL: u8 = b'f';
    /// `p` PasswordMessage, SASLInitialResponse, SASLResponse, GSSResponse.
    pub const PASSWORD: u8 = b'p';
}

/// Tags of messages a server (or pgvane towards a client) sends.
pub mod backend {
    /// `R` Authentication request (the code follows, see [`super::auth`]).
    pub const AUTHENTICATION: u8 = b'R';
    /// `S` ParameterStatus.
    pub const PARAMETER_STATUS: u8 = b'S';
    /// `K` BackendKeyData.
    pub const BACKEND_KEY_DATA: u8 = b'K';
    /// `Z` ReadyForQuery (a status byte follows, see [`super::status`]).
    pub const READY_FOR_QUERY: u8 = b'Z';
    /// `E` ErrorResponse.
    pub const ERROR_RESPONSE: u8 = b'E';
    /// `N` NoticeResponse.
    pub const NOTICE_RESPONSE: u8 = b'N';
    /// `A` NotificationResponse (`NOTIFY`).
    pub const NOTIFICATION_RESPONSE: u8 = b'A';
    /// `C` CommandComplete.
    pub const COMMAND_COMPLETE: u8 = b'C';
    /// `D` DataRow.
    pub const DATA_ROW: u8 = b'D';
    /// `T` RowDescription.
    pub const ROW_DESCRIPTION: u8 = b'T';
    /// `t` ParameterDescription.
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    /// `n` NoData.
    pub const NO_DATA: u8 = b'n';
    /// `I` EmptyQueryResponse.
    pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
    /// `s` PortalSuspended.
    pub const PORTAL_SUSPENDED: u8 = b's';
    /// `1` ParseComplete.
    pub const PARSE_COMPLETE: u8 = b'1';
    /// `2` BindComplete.
    pub const BIND_COMPLETE: u8 = b'2';
    /// `3` CloseComplete.
    pub const CLOSE_COMPLETE: u8 = b'3';
    /// `G` CopyInResponse.
    pub const COPY_IN_RESPONSE: u8 = b'G';
    /// `H` CopyOutResponse.
    pub const COPY_OUT_RESPONSE: u8 = b'H';
    /// `W` CopyBothResponse.
    pub const COPY_BOTH_RESPONSE: u8 = b'W';
    /// `d` CopyData (both directions).
    pub const COPY_DATA: u8 = b'd';
    /// `c` CopyDone (both directions).
    pub const COPY_DONE: u8 = b'c';
    /// `V` FunctionCallResponse.
    pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
    /// `v` NegotiateProtocolVersion.
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
}

/// Codes of an Authentication request (`R`), PostgreSQL's `AUTH_REQ_*`
/// (src/include/libpq/pqcomm.h).
pub mod auth {
    /// `AuthenticationOk`: the server accepts the client.
    pub const OK: i32 = 0;
    /// `AuthenticationKerberosV5` (no longer supported by PostgreSQL).
    pub const KERBEROS_V5: i32 = 2;
    /// `AuthenticationCleartextPassword`.
    pub const CLEARTEXT_PASSWORD: i32 = 3;
    /// `AuthenticationMD5Password` (a 4-byte salt follows).
    pub const MD5_PASSWORD: i32 = 5;
    /// `AuthenticationGSS`.
    pub const GSS: i32 = 7;
    /// `AuthenticationGSSContinue`.
    pub const GSS_CONTINUE: i32 = 8;
    /// `AuthenticationSSPI`.
    pub const SSPI: i32 = 9;
    /// `AuthenticationSASL` (the offered mechanisms follow).
    pub const SASL: i32 = 10;
    /// `AuthenticationSASLContinue` (SCRAM server-first follows).
    pub const SASL_CONTINUE: i32 = 11;
    /// `AuthenticationSASLFinal` (SCRAM server-final follows).
    pub const SASL_FINAL: i32 = 12;
}

/// Transaction status bytes of ReadyForQuery.
pub mod status {
    /// `I`: idle, outside a transaction block.
    pub const IDLE: u8 = b'I';
    /// `T`: inside a transaction block.
    pub const IN_TRANSACTION: u8 = b'T';
    /// `E`: inside a failed transaction block.
    pub const FAILED: u8 = b'E';
}

/// Field type bytes of ErrorResponse and NoticeResponse
/// (<https://www.postgresql.org/docs/current/protocol-error-fields.html>).
pub mod field {
    /// `S` severity, possibly localized.
    pub const SEVERITY: u8 = b'S';
    /// `V` severity, never localized.
    pub const SEVERITY_RAW: u8 = b'V';
    /// `C` SQLSTATE code.
    pub const CODE: u8 = b'C';
    /// `M` primary message.
    pub const MESSAGE: u8 = b'M';
}

/// What Describe and Close name.
pub mod target {
    /// `S` a prepared statement.
    pub const STATEMENT: u8 = b'S';
    /// `P` a portal.
    pub const PORTAL: u8 = b'P';
}

/// The one-byte answers to an SSLRequest (a server that fails before it
/// can answer sends an ErrorResponse, [`backend::ERROR_RESPONSE`], instead).
pub mod ssl {
    /// `S`: the server goes on with a TLS handshake.
    pub const ACCEPTED: u8 = b'S';
    /// `N`: the server does not do TLS.
    pub const REFUSED: u8 = b'N';
}
