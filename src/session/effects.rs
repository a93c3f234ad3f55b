//! What a request leaves behind: pins (set before the request is sent, so
//! a client that leaves mid-way still leaves a backend marked for reset),
//! replayed settings, the unpin of a `DISCARD ALL` the server confirmed
//! outside a transaction, and the `window` mode's read-your-writes window.

use super::Session;
use super::settings::{self, Replay};
use crate::backend::state::Tag;
use crate::classifier::{Classification, Pin, Reason, Route};
use crate::config::RywScope;
use std::sync::Arc;
use std::time::Instant;

/// What the session knew before a request ran, for [`Session::after_request`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Before {
    pin: Option<Pin>,
    dirty: bool,
    status: u8,
}

impl Session {
    /// Marks session state before `class` runs on the held backend.
    pub(super) fn before_request(&mut self, class: &Classification) -> Before {
        let before = Before {
            pin: self.pin,
            dirty: self
                .held
                .as_ref()
                .is_some_and(|h| h.pooled.backend.state.dirty),
            status: self.status(),
        };
        self.saw_error = false;
        if let Some(pin) = class.pin {
            if self.pin.is_none() {
                self.ctx
                    .metrics
                    .pins
                    .with_label_values(&[&self.ctx.key.cluster, &self.ctx.key.port, pin.label()])
                    .inc();
                tracing::debug!(port = %self.ctx.key, reason = pin.label(), "session pinned to the leader");
            }
            self.pin = Some(pin);
        }
        self.mark_dirty(class);
        before
    }

    fn mark_dirty(&mut self, class: &Classification) {
        if class.pin.is_some() || class.reset {
            if let Some(h) = self.held.as_mut() {
                h.pooled.backend.state.dirty = true;
            }
        }
    }

    /// Settles pins and settings after a request that ran `statements`
    /// statements, the first being `sql`, and ended with `status` (None
    /// when it did not end in ReadyForQuery).
    pub(super) fn after_request(
        &mut self,
        class: &Classification,
        before: Before,
        sql: &str,
        statements: usize,
        status: Option<u8>,
    ) {
        if class.route == Route::Leader
            && !matches!(
                class.reason,
                Reason::Probe | Reason::Session | Reason::NodeLocal
            )
        {
            let port = self.ctx.port.load();
            if port.resolved.read_your_writes == RywScope::Window {
                self.consistency.leader_until =
                    Some(Instant::now() + port.resolved.read_your_writes_window);
            }
        }
        let Some(h) = self.held.as_mut() else {
            return;
        };
        let last_tag = h.pooled.backend.state.last_tag;
        // A RESET of a startup parameter on the backend went to the server's
        // default: on a backend that stays held (pinned, in a transaction)
        // the startup value is set again before the next request; one that
        // goes back to the pool is re-applied on checkout.
        if status.is_some_and(|s| s != b'E') && !self.saw_error && class.pin == Some(Pin::Set) {
            let back = self.settings.reset_by(sql, self.scs);
            if !back.is_empty() {
                h.fixup = Some(crate::backend::apply_sql(&back, false));
                h.pooled.backend.applied = None;
            }
        }
        let clean_autocommit =
            before.status == b'I' && status == Some(b'I') && !self.saw_error && statements == 1;
        if clean_autocommit && class.discard_all && last_tag == Tag::DiscardAll {
            // The server confirmed DISCARD ALL outside a transaction: every
            // pin and replayed setting is gone.
            self.pin = None;
            self.settings.discard_all();
            return;
        }
        if clean_autocommit
            && before.pin.is_none()
            && class.pin == Some(Pin::Set)
            && matches!(last_tag, Tag::Set | Tag::Reset)
        {
            if let Some(replay) = settings::replay_of(sql, self.scs) {
                // DateStyle takes partial values (`SET datestyle TO ymd`
                // keeps the output style): replay what the server reported
                // it became, not the statement.
                let reported = match &replay {
                    Replay::Set(name) if name == "datestyle" => h
                        .pooled
                        .backend
                        .params
                        .iter()
                        .find(|(k, _)| k == "DateStyle")
                        .map(|(_, v)| format!("SET datestyle = '{}'", v.replace('\'', "''"))),
                    _ => None,
                };
                let exact = self
                    .settings
                    .record(&replay, reported.as_deref().unwrap_or(sql));
                let backend = &mut h.pooled.backend;
                backend.applied = exact.then(|| Arc::clone(&self.settings.wanted));
                backend.state.dirty = before.dirty;
                self.pin = None;
                if matches!(replay, Replay::Set(_)) {
                    tracing::debug!(port = %self.ctx.key, "SET replayed on later backends instead of pinning");
                }
                return;
            }
        }
        // A DISCARD ALL earlier in the request may have cleared the mark.
        self.mark_dirty(class);
    }

    pub(super) fn count_cache(&self, hit: bool) {
        let c = if hit {
            &self.ctx.metrics.classifier_hits
        } else {
            &self.ctx.metrics.classifier_misses
        };
        c.inc();
    }
}
