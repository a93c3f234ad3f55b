//! Simple-protocol requests: a Query (every statement of it classified),
//! the fast-path FunctionCall (always the leader; the backend is reset
//! before reuse, since any function can be called by OID), and COPY in
//! both directions, relayed with bounded buffers.

use super::Session;
use super::client::{ClientState, OUT_LIMIT};
use super::consistency::Effect;
use super::error::SessionError;
use super::mentions::Mentions;
use super::pipeline::{Job, Work};
use crate::classifier::{self, Classification, Reason, Route};
use crate::protocol::message::{self, Frontend, Message, ReadError, Relay};

impl Session {
    pub(super) async fn simple(&mut self, m: &Message) -> Result<(), SessionError> {
        let Some(Frontend::Query(sql)) = Frontend::parse(m) else {
            return Err(SessionError::Protocol("malformed Query message".into()));
        };
        if self.session_command(sql) {
            return self.client.flush().await;
        }
        if self.skipping() {
            // After an error in an extended-protocol batch the server
            // ignores everything up to Sync, a Query too: so does pgvane.
            return Ok(());
        }
        // One pass decides the common shapes; the statement count comes
        // with the verdict, so the text is not split again here.
        let v = self.ctx.classifier.classify_query(sql, self.scs);
        self.count_cache(v.source != classifier::Source::Full);
        let job = Job {
            class: v.class,
            sql,
            statements: v.statements,
            // Scanned from `sql` only if it runs on the leader.
            words: None,
            effect: Effect::of(&v.class, sql, v.statements),
        };
        self.request(Work::Simple(m), job).await
    }

    /// The fast-path FunctionCall ('F'): on the leader, relayed as is.
    pub(super) async fn function_call(&mut self, m: &Message) -> Result<(), SessionError> {
        let class = Classification {
            route: Route::Leader,
            reason: Reason::WriteFunction,
            pin: None,
            reset: true,
            ..self.ctx.classifier.classify("select 1", true).0
        };
        if self.skipping() {
            return Ok(());
        }
        let job = Job {
            class,
            sql: "",
            statements: 1,
            words: Some(Mentions::default()),
            // Any function by OID: it may write, and may not run twice.
            effect: Effect {
                writes: true,
                ..Effect::default()
            },
        };
        self.request(Work::Simple(m), job).await
    }

    /// The held backend ignores everything up to the next Sync (an error
    /// in an extended-protocol batch).
    fn skipping(&self) -> bool {
        self.held
            .as_ref()
            .is_some_and(|h| h.pooled.backend.state.skipping)
    }

    pub(super) async fn send_backend(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        let Some(h) = self.held.as_mut() else {
            return Err(self.lost("no backend"));
        };
        if let Err(e) = h.pooled.backend.send(bytes).await {
            return Err(self.lost(e));
        }
        Ok(())
    }

    /// The next backend message; lets the client have what is buffered
    /// when nothing more is ready, so replies stream with bounded memory.
    pub(super) async fn read_backend(&mut self) -> Result<Message, SessionError> {
        let Some(h) = self.held.as_mut() else {
            return Err(self.lost("no backend"));
        };
        if h.pooled.backend.drained() && !h.pooled.backend.has_unsent() {
            self.client.flush().await?;
        } else {
            self.client.flush_if_full().await?;
        }
        let Some(h) = self.held.as_mut() else {
            return Err(self.lost("no backend"));
        };
        match h.pooled.backend.read().await {
            Ok(m) => Ok(m),
            Err(ReadError::Closed | ReadError::Truncated) => {
                Err(self.lost("the server closed the connection"))
            }
            Err(e) => Err(self.lost(e)),
        }
    }

    /// Forwards backend messages to the client until ReadyForQuery; handles
    /// COPY FROM STDIN by relaying the client's CopyData meanwhile.
    pub(super) async fn pump_until_ready(&mut self) -> Result<u8, SessionError> {
        loop {
            let m = self.read_backend().await?;
            self.client.out.extend_from_slice(m.raw());
            match m.tag() {
                b'E' => self.note_error(&m),
                b'C' | b'V' => self.note_reply(b'C'),
                b'N' => self.note_reply(b'N'),
                b'Z' => {
                    let status = m.body().first().copied().unwrap_or(b'I');
                    if !self.hold_ready {
                        self.client.flush().await?;
                    }
                    return Ok(status);
                }
                b'G' => {
                    self.client.flush().await?;
                    self.copy_in(false, false).await?;
                }
                b'S' => self.note_parameter(&m),
                _ => {}
            }
            if let Some(status) = self.relay_in_place() {
                if !self.hold_ready {
                    self.client.flush().await?;
                }
                return Ok(status);
            }
        }
    }

    /// Moves the replies already buffered from the server to the client's
    /// output in place, up to ReadyForQuery (its status returned) or a
    /// message [`Self::pump_until_ready`] must read (an error, COPY FROM
    /// STDIN, a ParameterStatus), noting what it passed as the pump does.
    fn relay_in_place(&mut self) -> Option<u8> {
        let h = self.held.as_mut()?;
        let (mut completed, mut notice, mut ready) = (false, false, false);
        h.pooled
            .backend
            .relay_buffered(&mut self.client.out, OUT_LIMIT, |tag| match tag {
                b'E' | b'G' | b'S' => Relay::Keep,
                b'Z' => {
                    ready = true;
                    Relay::Last
                }
                b'C' | b'V' => {
                    completed = true;
                    Relay::Pass
                }
                b'N' => {
                    notice = true;
                    Relay::Pass
                }
                _ => Relay::Pass,
            });
        let status = h.pooled.backend.state.status;
        if completed {
            self.note_reply(b'C');
        }
        if notice {
            self.note_reply(b'N');
        }
        ready.then_some(status)
    }

    pub(super) fn note_parameter(&mut self, m: &Message) {
        if let Some(message::Backend::ParameterStatus(k, v)) = message::Backend::parse(m) {
            if k == "standard_conforming_strings" {
                self.scs = v == "on";
            }
        }
    }

    /// Relays CopyData/CopyDone/CopyFail from the client to the backend.
    /// After an extended-protocol COPY the server ignored the batch's Sync,
    /// so the client sends another one after CopyDone: relay up to it too.
    /// A client that leaves mid-COPY leaves the backend in COPY: the pool
    /// closes it. The server ignores Sync during copy-in, so the Syncs it
    /// skipped (the batch's own, when it had one, and any sent before
    /// CopyDone) are taken off what the backend is owed.
    pub(super) async fn copy_in(
        &mut self,
        extended: bool,
        batch_synced: bool,
    ) -> Result<(), SessionError> {
        let outer = self.state;
        self.copy_outer = outer;
        self.state = ClientState::CopyIn;
        let mut pending: Vec<u8> = Vec::new();
        let mut copy_done = false;
        let mut ignored = u32::from(batch_synced);
        loop {
            let m = self.client.read(false, None).await?;
            match m.tag() {
                b'd' | b'c' | b'f' | b'H' => {}
                b'S' => {
                    if !copy_done {
                        ignored += 1;
                    }
                }
                // Anything else during COPY: PostgreSQL fails the COPY.
                other => {
                    let text =
                        format!("unexpected message type 0x{other:02x} during COPY from stdin");
                    let mut fail = Vec::new();
                    crate::protocol::encode::frame(&mut fail, b'f', |b| {
                        b.extend_from_slice(text.as_bytes());
                        b.push(0);
                    });
                    pending.extend_from_slice(&fail);
                    self.send_backend(&pending).await?;
                    return Err(SessionError::Protocol(text));
                }
            }
            pending.extend_from_slice(m.raw());
            copy_done |= matches!(m.tag(), b'c' | b'f');
            let done = copy_done && (!extended || m.tag() == b'S');
            if done || pending.len() > 64 * 1024 || !self.client.has_buffered() {
                self.send_backend(&pending).await?;
                pending.clear();
            }
            if done {
                if let Some(h) = self.held.as_mut() {
                    let st = &mut h.pooled.backend.state;
                    st.ready_owed = st.ready_owed.saturating_sub(ignored);
                }
                self.state = outer;
                return Ok(());
            }
        }
    }
}
