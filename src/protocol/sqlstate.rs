//! SQLSTATE codes pgvane sends or acts on, as named constants.
//! Source: PostgreSQL's src/backend/utils/errcodes.txt
//! (<https://www.postgresql.org/docs/15/errcodes-appendix.html>).

/// A five-character SQLSTATE code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SqlState(pub &'static str);

impl SqlState {
    /// The code as text, e.g. `"08006"`.
    #[must_use]
    pub fn code(self) -> &'static str {
        self.0
    }

    /// Whether `code` (a server's SQLSTATE, as read from its
    /// ErrorResponse) is this one.
    #[must_use]
    pub fn is(self, code: &str) -> bool {
        self.0 == code
    }
}

/// `08006 connection_failure`: every eligible node refused or timed out.
pub const CONNECTION_FAILURE: SqlState = SqlState("08006");
/// `08P01 protocol_violation`: malformed startup packet.
pub const PROTOCOL_VIOLATION: SqlState = SqlState("08P01");
/// `57P03 cannot_connect_now`: no node currently qualifies for the port.
pub const CANNOT_CONNECT_NOW: SqlState = SqlState("57P03");
/// `57P01 admin_shutdown`: pgvane is shutting down or the port was removed.
pub const ADMIN_SHUTDOWN: SqlState = SqlState("57P01");
/// `idle_in_transaction_session_timeout`.
pub const IDLE_IN_TRANSACTION_TIMEOUT: SqlState = SqlState("25P03");
/// `idle_session_timeout`.
pub const IDLE_SESSION_TIMEOUT: SqlState = SqlState("57P05");
/// `53300 too_many_connections`: the port's client limit is reached.
pub const TOO_MANY_CONNECTIONS: SqlState = SqlState("53300");
/// `28000 invalid_authorization_specification`: no access rule admits the
/// client (e.g. plaintext on a port that requires TLS).
pub const INVALID_AUTHORIZATION_SPECIFICATION: SqlState = SqlState("28000");
/// `28P01 invalid_password`: wrong password or unknown user.
pub const INVALID_PASSWORD: SqlState = SqlState("28P01");
/// `3D000 invalid_catalog_name`: unknown database.
pub const INVALID_CATALOG_NAME: SqlState = SqlState("3D000");
/// `01000 warning`.
pub const SUCCESSFUL_WITH_WARNING: SqlState = SqlState("01000");
/// `42601 syntax_error`.
pub const SYNTAX_ERROR: SqlState = SqlState("42601");
/// `42704 undefined_object`.
pub const UNDEFINED_OBJECT: SqlState = SqlState("42704");
/// `42725 ambiguous_function`.
pub const AMBIGUOUS_FUNCTION: SqlState = SqlState("42725");
/// `55000 object_not_in_prerequisite_state`.
pub const OBJECT_NOT_IN_PREREQUISITE_STATE: SqlState = SqlState("55000");
/// `0A000 feature_not_supported`.
pub const FEATURE_NOT_SUPPORTED: SqlState = SqlState("0A000");
/// `53000 insufficient_resources`: a node out of memory or slots.
pub const INSUFFICIENT_RESOURCES: SqlState = SqlState("53000");
/// `53400 configuration_limit_exceeded`: pool acquire timed out.
pub const CONFIGURATION_LIMIT_EXCEEDED: SqlState = SqlState("53400");
/// `54000` program_limit_exceeded.
pub const PROGRAM_LIMIT_EXCEEDED: SqlState = SqlState("54000");
/// `22023` invalid_parameter_value.
pub const INVALID_PARAMETER_VALUE: SqlState = SqlState("22023");

/// `system_error` (58000): a floored read no replica reached in time, when
/// `read_your_writes_on_timeout: error` (PgDog answers the same).
pub const SYSTEM_ERROR: SqlState = SqlState("58000");
/// `read_only_sql_transaction`: a replica refused a write.
pub const READ_ONLY_SQL_TRANSACTION: SqlState = SqlState("25006");
/// `serialization_failure`: also a recovery conflict on a replica.
pub const SERIALIZATION_FAILURE: SqlState = SqlState("40001");
/// `crash_shutdown`.
pub const CRASH_SHUTDOWN: SqlState = SqlState("57P02");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_matches_only_itself() {
        assert!(READ_ONLY_SQL_TRANSACTION.is("25006"));
        assert!(!READ_ONLY_SQL_TRANSACTION.is("25P02"));
        assert_eq!(CANNOT_CONNECT_NOW.code(), "57P03");
    }
}
