//! Extended-protocol batches (Parse/Bind/Describe/Execute/Close up to Sync
//! or Flush): one routing decision per batch, and transparent named
//! prepared statements. A client's statement `s1` becomes `pgv_<n>` on
//! whichever backend runs it, prepared there on first use and kept in that
//! backend's bounded LRU (what it evicts is closed). Replies pgvane owes
//! the client (ParseComplete of an already prepared statement,
//! CloseComplete) are made up in order from a queue of expected replies;
//! after a server error the queue skips to Sync exactly as the server does.
//! The batch's rewrite for the backend that runs it is [`rewrite`].

use super::Session;
use super::client::OUT_LIMIT;
use super::consistency::Effect;
use super::error::SessionError;
use super::mentions::Mentions;
use super::pipeline::{Job, Work};
use crate::classifier::{Classification, Reason, Route};
use crate::protocol::encode;
use crate::protocol::message::{Frontend, Message, Relay};
use std::sync::Arc;

/// A reply the backend (or pgvane) owes the client, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Forward backend messages until this request completes.
    Real(Kind),
    /// ParseComplete of a `pgv_` Parse: mark prepared; forward it when the
    /// client sent the Parse itself, swallow it when pgvane injected it.
    Prepare { id: u64, forward: bool },
    /// ParseComplete of an injected unnamed Parse: swallow.
    Swallow,
    /// CloseComplete of a statement pgvane evicted: swallow.
    SwallowClose,
    /// A reply pgvane makes up.
    Synth(Synth),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Synth {
    ParseComplete,
    CloseComplete,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Parse,
    Bind,
    Describe,
    Execute,
    Close,
    Sync,
}

/// What routing needs to know of a batch.
struct BatchInfo {
    /// The merged verdict, `None` when the batch names no statement.
    class: Option<Classification>,
    /// Each Parse's own verdict, in order.
    parses: smallvec::SmallVec<[Classification; 4]>,
    /// The SQL of the statement the last Execute ran.
    exec_sql: Option<Arc<str>>,
    /// Execute messages.
    executes: usize,
    /// The words the statements it parses or binds mention, together.
    words: Mentions,
    /// What its statements mean for read-your-writes, together.
    effect: Option<Effect>,
}

impl Session {
    fn batch_info(&mut self, msgs: &[Message]) -> BatchInfo {
        let mut info = BatchInfo {
            class: None,
            parses: smallvec::SmallVec::new(),
            exec_sql: None,
            executes: 0,
            words: Mentions::default(),
            effect: None,
        };
        let note = |sql: &str, c: &Classification, words: Mentions, info: &mut BatchInfo| {
            info.words = info.words.or(words);
            let e = Effect::of(c, sql, 1);
            info.effect = Some(info.effect.map_or(e, |prev| prev.and(e)));
        };
        let merge = |c: Classification, class: &mut Option<Classification>| {
            *class = Some(class.map_or(c, |prev| prev.merge(c)));
        };
        let mut unnamed: Option<Arc<str>> = None;
        let mut bound: Option<Arc<str>> = None;
        for m in msgs {
            match Frontend::parse(m) {
                Some(Frontend::Parse { name, sql, .. }) => {
                    let (c, hit) = self.ctx.classifier.classify(sql, self.scs);
                    self.count_cache(hit);
                    merge(c, &mut info.class);
                    info.parses.push(c);
                    // The same text as the unnamed statement's (a driver
                    // running one statement over and over): its words.
                    let words = match &self.statements.unnamed {
                        Some(st) if name.is_empty() && *st.text.sql == *sql => st.words,
                        _ => Mentions::of(sql),
                    };
                    note(sql, &c, words, &mut info);
                    if name.is_empty() {
                        // The same text as the last unnamed Parse (a driver
                        // running one statement over and over) is shared,
                        // not copied.
                        unnamed = Some(match &self.statements.unnamed {
                            Some(st) if *st.text.sql == *sql => Arc::clone(&st.text.sql),
                            _ => Arc::from(sql),
                        });
                    }
                }
                Some(Frontend::Bind { statement, .. }) => {
                    if statement.is_empty() {
                        match &unnamed {
                            Some(sql) => bound = Some(Arc::clone(sql)),
                            None => {
                                if let Some(st) = &self.statements.unnamed {
                                    merge(st.class, &mut info.class);
                                    note(&st.text.sql, &st.class, st.words, &mut info);
                                    bound = Some(Arc::clone(&st.text.sql));
                                }
                            }
                        }
                    } else if let Some(st) = self.statements.get(statement) {
                        merge(st.class, &mut info.class);
                        note(&st.text.sql, &st.class, st.words, &mut info);
                        bound = Some(Arc::clone(&st.text.sql));
                    }
                }
                Some(Frontend::Execute) => {
                    info.executes += 1;
                    info.exec_sql.clone_from(&bound);
                }
                _ => {}
            }
        }
        info
    }

    /// The name in a Close of a named statement.
    fn named_close(m: &Message) -> Option<String> {
        match Frontend::parse(m) {
            Some(Frontend::Close { kind: b'S', name }) if !name.is_empty() => Some(name.to_owned()),
            _ => None,
        }
    }

    /// Runs one batch ending in Sync or Flush (or, with `inject_flush`, one
    /// cut short by the buffering limit or a Query: pgvane adds a Flush).
    pub(super) async fn extended(
        &mut self,
        msgs: Vec<Message>,
        inject_flush: bool,
    ) -> Result<(), SessionError> {
        // The list goes back to the worker's stash however this ends.
        let msgs = super::buffers::BatchList(msgs);
        if self
            .held
            .as_ref()
            .is_some_and(|h| h.pooled.backend.state.skipping)
        {
            return self.skipped_batch(&msgs).await;
        }
        if msgs.first().is_some_and(|m| m.tag() == b'P') && self.batch_command(&msgs) {
            return self.client.flush().await;
        }
        let info = self.batch_info(&msgs);
        if self.held.is_none()
            && info.class.is_none()
            && msgs
                .iter()
                .all(|m| matches!(m.tag(), b'S' | b'H') || Self::named_close(m).is_some())
        {
            // Between transactions, a batch of Sync/Flush and Closes of named
            // statements needs no backend: pgvane keeps the server-side
            // statements for reuse and answers here.
            for m in msgs.iter() {
                if let Some(name) = Self::named_close(m) {
                    self.statements.forget(&name);
                    encode::close_complete(&mut self.client.out);
                } else if m.tag() == b'S' {
                    encode::ready_for_query(&mut self.client.out, b'I');
                }
            }
            return self.client.flush().await;
        }
        // A batch naming no statement (a portal Describe, an unnamed Close)
        // writes nothing: it must not start the read-your-writes window.
        let class = info.class.unwrap_or(Classification {
            route: Route::Leader,
            reason: Reason::Session,
            ..self.ctx.classifier.classify("select 1", true).0
        });
        let sql = info.exec_sql.clone();
        let job = Job {
            class,
            sql: sql.as_deref().unwrap_or(""),
            statements: info.executes,
            words: Some(info.words),
            effect: info.effect.unwrap_or_default(),
        };
        let work = Work::Batch {
            msgs: &msgs,
            parses: &info.parses,
            inject_flush,
        };
        self.request(work, job).await
    }

    /// The server ignores everything up to Sync after an error: so does
    /// pgvane (no statement is recorded or closed), and relays the
    /// ReadyForQuery of the Sync.
    async fn skipped_batch(&mut self, msgs: &[Message]) -> Result<(), SessionError> {
        let mut out = Vec::new();
        let mut synced = false;
        for m in msgs {
            if m.tag() == b'S' {
                encode::sync(&mut out);
                synced = true;
            }
        }
        if !synced {
            return Ok(());
        }
        self.send_backend(&out).await?;
        loop {
            let m = self.read_backend().await?;
            self.client.out.extend_from_slice(m.raw());
            if m.tag() == b'Z' {
                let status = m.body().first().copied().unwrap_or(b'I');
                self.client.flush().await?;
                self.after_ready(status);
                return Ok(());
            }
        }
    }

    /// Sends one rewritten batch and relays its replies, writing and
    /// reading at once; the ReadyForQuery status when it ended in Sync.
    pub(super) async fn run_batch(
        &mut self,
        msgs: &[Message],
        parses: &[Classification],
        inject_flush: bool,
        capture: bool,
    ) -> Result<Option<u8>, SessionError> {
        let (mut out, mut queue) = self.rewrite(msgs, parses)?;
        if inject_flush {
            encode::frame(&mut out, b'H', |_| {});
        }
        let synced = msgs.iter().any(|m| m.tag() == b'S');
        {
            let Some(h) = self.held.as_mut() else {
                return Err(self.lost("no backend"));
            };
            if capture && synced {
                super::consistency::capture_bytes(&mut out);
            }
            h.pooled.backend.queue(&out);
        }
        super::buffers::give_reply(out);
        let mut status = None;
        let mut failed = false;
        loop {
            while let Some(Expect::Synth(s)) = queue.front() {
                match s {
                    Synth::ParseComplete => encode::parse_complete(&mut self.client.out),
                    Synth::CloseComplete => encode::close_complete(&mut self.client.out),
                }
                queue.pop_front();
            }
            if queue.is_empty() {
                break;
            }
            let m = self.read_backend().await?;
            match m.tag() {
                b'E' => {
                    self.note_error(&m);
                    failed = true;
                    self.client.out.extend_from_slice(m.raw());
                    // The server skips everything up to Sync after an error,
                    // pgvane's own replies included.
                    while queue
                        .front()
                        .is_some_and(|e| *e != Expect::Real(Kind::Sync))
                    {
                        queue.pop_front();
                    }
                }
                b'1' => match queue.pop_front() {
                    Some(Expect::Prepare { id, forward }) => {
                        if let Some(h) = self.held.as_mut() {
                            h.pooled.backend.prepared.confirm(id);
                        }
                        if forward {
                            self.client.out.extend_from_slice(m.raw());
                        }
                    }
                    Some(Expect::Swallow) => {}
                    _ => self.client.out.extend_from_slice(m.raw()),
                },
                b'3' => {
                    if queue.pop_front() != Some(Expect::SwallowClose) {
                        self.client.out.extend_from_slice(m.raw());
                    }
                }
                b'2' | b'C' | b'I' | b's' => {
                    self.note_reply(m.tag());
                    self.client.out.extend_from_slice(m.raw());
                    queue.pop_front();
                }
                b'T' | b'n' => {
                    self.client.out.extend_from_slice(m.raw());
                    if queue.front() == Some(&Expect::Real(Kind::Describe)) {
                        queue.pop_front();
                    }
                }
                b'G' => {
                    self.client.out.extend_from_slice(m.raw());
                    self.client.flush().await?;
                    self.copy_in(true, synced).await?;
                }
                b'Z' => {
                    self.client.out.extend_from_slice(m.raw());
                    status = m.body().first().copied();
                    queue.pop_front();
                }
                b'S' => {
                    self.note_parameter(&m);
                    self.client.out.extend_from_slice(m.raw());
                }
                b'N' => {
                    self.note_reply(b'N');
                    self.client.out.extend_from_slice(m.raw());
                }
                _ => self.client.out.extend_from_slice(m.raw()),
            }
            // The rows of the Execute now answered, already buffered, in
            // place (they change nothing the loop tracks). Not while a
            // reply pgvane makes up is due first: it goes out before them.
            if queue.front() == Some(&Expect::Real(Kind::Execute))
                && let Some(h) = self.held.as_mut()
            {
                h.pooled
                    .backend
                    .relay_buffered(&mut self.client.out, OUT_LIMIT, |tag| {
                        if tag == b'D' {
                            Relay::Pass
                        } else {
                            Relay::Keep
                        }
                    });
            }
        }
        if let Some(h) = self.held.as_mut() {
            if failed {
                h.pooled.backend.prepared.drop_unconfirmed();
            }
            if let Err(e) = h.pooled.backend.flush().await {
                return Err(self.lost(e));
            }
        }
        if !self.hold_ready {
            self.client.flush().await?;
        }
        Ok(status)
    }
}

mod rewrite;
