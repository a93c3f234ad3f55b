//! A backend's session settings: the [`Setting`]s a session wants, the SQL
//! that applies them, and the backend's quiet round trips that apply them
//! or reset the session (`DISCARD ALL`). pgvane's own statements here never
//! count as the client's session state. Fed by the session's checkout and
//! the pool's release.

use super::{Backend, BackendError, state};
use crate::protocol::encode;
use crate::protocol::message;
use crate::protocol::tag::backend as bt;
use std::sync::Arc;
use std::time::Duration;

/// One session setting pgvane applies to the backends a session uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Setting {
    /// A startup parameter (name, value), applied with `set_config`, which
    /// reads the value exactly as the startup packet would.
    Startup(String, String),
    /// A `SET` the client ran in autocommit (lower-case name, statement
    /// text), replayed verbatim so quoting and lists mean what they meant.
    Set(String, Arc<str>),
}

impl Setting {
    /// The setting's lower-case name.
    #[must_use]
    pub fn name(&self) -> &str {
        match self {
            Self::Startup(n, _) | Self::Set(n, _) => n,
        }
    }
}

/// The settings a session wants on its backends, in order.
pub type Settings = Arc<Vec<Setting>>;

/// The SQL that turns a backend's settings into `wanted`.
#[must_use]
pub fn apply_sql(wanted: &[Setting], reset_first: bool) -> String {
    let mut sql = String::new();
    if reset_first {
        sql.push_str("RESET ALL;");
    }
    for s in wanted {
        match s {
            Setting::Startup(name, value) => {
                sql.push_str("SELECT pg_catalog.set_config(");
                push_literal(&mut sql, name);
                sql.push(',');
                push_literal(&mut sql, value);
                sql.push_str(",false);");
            }
            Setting::Set(_, stmt) => {
                sql.push_str(stmt);
                sql.push(';');
            }
        }
    }
    sql
}

/// Appends `v` as an `E'...'` literal, whatever `standard_conforming_strings` is.
fn push_literal(out: &mut String, v: &str) {
    out.push_str("E'");
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("''"),
            c => out.push(c),
        }
    }
    out.push('\'');
}

impl Backend {
    /// Makes the backend's session settings `wanted` (one round trip, its
    /// replies swallowed), unless they already are. Only at rest.
    ///
    /// # Errors
    /// [`BackendError::Apply`] with the server's error, or an IO error.
    pub async fn apply(&mut self, wanted: &Settings) -> Result<(), BackendError> {
        let reset_first = match &self.applied {
            Some(a) if Arc::ptr_eq(a, wanted) || **a == **wanted => return Ok(()),
            Some(a) => !a.is_empty(),
            None => true,
        };
        let sql = apply_sql(wanted, reset_first);
        let result = self.quiet(&sql).await;
        self.applied = result.is_ok().then(|| Arc::clone(wanted));
        result
    }

    /// Runs `sql` (pgvane's own statements) with its replies swallowed,
    /// up to ReadyForQuery; whether the backend holds client session state
    /// (`dirty`) stays as it was.
    ///
    /// # Errors
    /// [`BackendError::Apply`] with the server's error, or an IO error.
    pub async fn quiet(&mut self, sql: &str) -> Result<(), BackendError> {
        let was_dirty = self.state.dirty;
        let mut out = Vec::with_capacity(sql.len() + 6);
        encode::query(&mut out, sql);
        self.send(&out).await?;
        let mut failed = None;
        loop {
            let m = self.read().await?;
            match m.tag() {
                bt::ERROR_RESPONSE => {
                    let (code, message) = message::error_fields(m.body());
                    failed = Some(BackendError::Apply {
                        code,
                        message,
                        raw: m,
                    });
                }
                bt::READY_FOR_QUERY => break,
                _ => {}
            }
        }
        // Its own settings changes are pgvane's, not the client's.
        self.state.settings_changed = false;
        self.state.dirty = was_dirty;
        failed.map_or(Ok(()), Err)
    }

    /// Resets session state with `DISCARD ALL` within `timeout`; true when
    /// the server confirmed it and the connection is clean.
    pub async fn reset(&mut self, timeout: Duration) -> bool {
        if !self.state.at_rest() || !self.drained() {
            return false;
        }
        let work = async {
            let mut out = Vec::new();
            encode::query(&mut out, "DISCARD ALL");
            self.send(&out).await.ok()?;
            let mut ok = false;
            loop {
                let m = self.read().await.ok()?;
                match m.tag() {
                    bt::COMMAND_COMPLETE => {
                        ok = state::Tag::of(m.body()) == state::Tag::DiscardAll;
                    }
                    bt::ERROR_RESPONSE => ok = false,
                    bt::READY_FOR_QUERY => return Some(ok),
                    _ => {}
                }
            }
        };
        let ok = tokio::time::timeout(timeout, work)
            .await
            .ok()
            .flatten()
            .unwrap_or(false);
        ok && self.state.clean()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_values_are_quoted_and_sets_replayed_verbatim() {
        let wanted = [
            Setting::Startup("application_name".into(), r"it's a \ test".into()),
            Setting::Set("search_path".into(), "SET search_path = a, \"B\"".into()),
        ];
        assert_eq!(
            apply_sql(&wanted, true),
            r#"RESET ALL;SELECT pg_catalog.set_config(E'application_name',E'it''s a \\ test',false);SET search_path = a, "B";"#
        );
        assert_eq!(apply_sql(&[], false), "");
        assert_eq!(wanted[1].name(), "search_path");
    }
}
