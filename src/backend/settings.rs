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
        push_setting(&mut sql, s);
    }
    sql
}

/// The SQL that turns a backend that has `applied` (on top of its
/// connection's own values) into one that has `wanted`, touching only what
/// differs: each name's last entry decides its value, so a name whose last
/// entry is the same in both is left alone, one only `applied` names is
/// `RESET` (back to the connection's value, as `RESET ALL` would put it),
/// and the others get their last `wanted` entry. `None` when a name to
/// reset is not a plain lower-case identifier: the caller then resets all.
///
/// Pooled backends mostly differ from the next session in one or two
/// values (`application_name`); this replaces `RESET ALL` and the whole
/// list, several statements the server parses and answers, with those.
#[must_use]
pub fn diff_sql(applied: &[Setting], wanted: &[Setting]) -> Option<String> {
    let mut sql = String::new();
    for (i, s) in applied.iter().enumerate() {
        let name = s.name();
        let first = !applied[..i].iter().any(|p| p.name() == name);
        if first && !wanted.iter().any(|w| w.name() == name) {
            let plain = name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !plain {
                return None;
            }
            sql.push_str("RESET ");
            sql.push_str(name);
            sql.push(';');
        }
    }
    for (i, s) in wanted.iter().enumerate() {
        let is_last = !wanted[i + 1..].iter().any(|w| w.name() == s.name());
        // The backend's value of the name: its last entry there.
        let theirs = applied.iter().rev().find(|a| a.name() == s.name());
        if is_last && theirs != Some(s) {
            push_setting(&mut sql, s);
        }
    }
    Some(sql)
}

/// Appends the statement that applies one setting.
fn push_setting(sql: &mut String, s: &Setting) {
    match s {
        Setting::Startup(name, value) => {
            sql.push_str("SELECT pg_catalog.set_config(");
            push_literal(sql, name);
            sql.push(',');
            push_literal(sql, value);
            sql.push_str(",false);");
        }
        Setting::Set(_, stmt) => {
            sql.push_str(stmt);
            sql.push(';');
        }
    }
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
    /// Whether the backend's session settings already are `wanted`: then
    /// [`Self::apply`] has nothing to send (checked first, so the request
    /// path carries no future for it in the usual case).
    #[must_use]
    pub fn has_applied(&self, wanted: &Settings) -> bool {
        self.applied
            .as_ref()
            .is_some_and(|a| Arc::ptr_eq(a, wanted) || **a == **wanted)
    }

    /// Makes the backend's session settings `wanted` (one round trip, its
    /// replies swallowed), unless they already are. Only at rest.
    ///
    /// # Errors
    /// [`BackendError::Apply`] with the server's error, or an IO error.
    pub async fn apply(&mut self, wanted: &Settings) -> Result<(), BackendError> {
        let sql = match &self.applied {
            Some(a) if Arc::ptr_eq(a, wanted) || **a == **wanted => return Ok(()),
            Some(a) => diff_sql(a, wanted).unwrap_or_else(|| apply_sql(wanted, true)),
            None => apply_sql(wanted, true),
        };
        if sql.is_empty() {
            // Different lists with the same values (a value set twice).
            self.applied = Some(Arc::clone(wanted));
            return Ok(());
        }
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

    fn startup(n: &str, v: &str) -> Setting {
        Setting::Startup(n.into(), v.into())
    }

    fn set(n: &str, stmt: &str) -> Setting {
        Setting::Set(n.into(), stmt.into())
    }

    #[test]
    fn a_diff_touches_only_the_values_that_differ() {
        let app = startup("application_name", "pgbench");
        let mine = [
            app.clone(),
            set("application_name", "SET application_name = a1"),
        ];
        let theirs = [
            app.clone(),
            set("application_name", "SET application_name = a7"),
        ];
        // Another session's application_name: one SET, no RESET ALL.
        assert_eq!(
            diff_sql(&theirs, &mine).unwrap(),
            "SET application_name = a1;"
        );
        // Only the last entry of a name counts, on both sides.
        assert_eq!(diff_sql(&mine, &mine).unwrap(), "");
        assert_eq!(
            diff_sql(
                &[set("application_name", "SET application_name = a1")],
                &mine
            )
            .unwrap(),
            ""
        );
        // A name only the backend has goes back to the connection's value;
        // one only the session has is applied; the same value is left.
        let backend = [app.clone(), set("search_path", "SET search_path = x")];
        let session = [app, startup("timezone", "UTC")];
        assert_eq!(
            diff_sql(&backend, &session).unwrap(),
            "RESET search_path;SELECT pg_catalog.set_config(E'timezone',E'UTC',false);"
        );
        // A startup name that is not a plain identifier: the caller resets all.
        assert_eq!(diff_sql(&[startup("my.guc", "1")], &[]), None);
        assert_eq!(diff_sql(&[startup("Odd", "1")], &[]), None);
        // Applying one needs no RESET, whatever its name.
        assert_eq!(
            diff_sql(&[], &[startup("my.guc", "1")]).unwrap(),
            "SELECT pg_catalog.set_config(E'my.guc',E'1',false);"
        );
    }
}
