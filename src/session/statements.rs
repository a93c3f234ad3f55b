//! The client's prepared statements as pgvane keeps them: named ones with
//! their verdicts (bounded in count and bytes), and the unnamed one, which
//! pgvane re-parses on whichever backend binds it.

use super::error::SessionError;
use super::mentions::Mentions;
use super::{MAX_SESSION_STATEMENT_BYTES, MAX_SESSION_STATEMENTS};
use crate::backend::prepared::StmtText;
use crate::classifier::Classification;
use crate::protocol::sqlstate;
use std::collections::HashMap;
use std::sync::Arc;

/// A client's prepared statement: its identity and verdict.
#[derive(Debug, Clone)]
pub(super) struct Stmt {
    /// Text and parameter types.
    pub(super) text: Arc<StmtText>,
    /// The classifier's verdict.
    pub(super) class: Classification,
    /// The words its text mentions, scanned once at Parse.
    pub(super) words: Mentions,
}

/// Every statement one client prepared.
#[derive(Debug, Default)]
pub(super) struct Statements {
    named: HashMap<String, Stmt>,
    bytes: usize,
    /// The unnamed statement of the last Parse.
    pub(super) unnamed: Option<Stmt>,
}

impl Statements {
    /// The named statement `name`.
    pub(super) fn get(&self, name: &str) -> Option<&Stmt> {
        self.named.get(name)
    }

    /// Records `name` (replacing an older one), within the session limits.
    pub(super) fn insert(&mut self, name: &str, stmt: Stmt) -> Result<(), SessionError> {
        let len = stmt.text.sql.len();
        let replaced = self.named.get(name).map_or(0, |s| s.text.sql.len());
        if replaced == 0
            && (self.named.len() >= MAX_SESSION_STATEMENTS
                || self.bytes + len > MAX_SESSION_STATEMENT_BYTES)
        {
            return Err(SessionError::Limit(
                sqlstate::PROGRAM_LIMIT_EXCEEDED,
                format!(
                    "pgvane: this session holds {} prepared statements ({} bytes), the most allowed; close some first",
                    self.named.len(),
                    self.bytes
                ),
            ));
        }
        self.bytes = self.bytes - replaced + len;
        self.named.insert(name.to_owned(), stmt);
        Ok(())
    }

    /// Forgets `name` (a Close from the client).
    pub(super) fn forget(&mut self, name: &str) {
        if let Some(old) = self.named.remove(name) {
            self.bytes = self.bytes.saturating_sub(old.text.sql.len());
        }
    }
}
