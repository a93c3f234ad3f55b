//! Extended-protocol batches (Parse/Bind/Describe/Execute/Close up to Sync
//! or Flush): one routing decision per batch, and transparent named
//! prepared statements. A client's statement `s1` becomes `pgv_<hash>` on
//! whichever backend runs it, prepared there on first use; replies pgvane
//! owes the client (ParseComplete for an already prepared statement,
//! CloseComplete) are made up in order from a queue of expected replies.

use super::{Session, SessionError, Stmt};
use crate::classifier::{Classification, Reason, Route};
use crate::protocol::encode;
use crate::protocol::message::{Frontend, Message};
use bytes::Bytes;
use std::collections::{HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// A reply the backend (or pgvane) owes the client, in order.
#[derive(Debug)]
enum Expect {
    /// Forward backend messages until this request completes.
    Real(Kind),
    /// ParseComplete of a `pgv_` Parse: mark prepared; forward it when the
    /// client sent the Parse itself, swallow it when pgvane injected it.
    Prepare { key: u64, forward: bool },
    /// ParseComplete of an injected unnamed Parse: swallow.
    Swallow,
    /// A reply pgvane makes up: the encoded message.
    Synth(fn(&mut Vec<u8>)),
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

fn key_of(sql: &str, types: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    sql.hash(&mut h);
    types.hash(&mut h);
    h.finish()
}

fn server_name(key: u64) -> String {
    format!("pgv_{key:016x}")
}

impl Session {
    /// The merged verdict of a batch, its first SQL text, and each Parse's
    /// own verdict in order (handed to `rewrite`, so no Parse is classified twice).
    fn batch_class(
        &mut self,
        msgs: &[Message],
    ) -> (Option<Classification>, String, Vec<Classification>) {
        let mut class: Option<Classification> = None;
        let mut parses = Vec::new();
        let mut first_sql = String::new();
        let merge = |c: Classification, class: &mut Option<Classification>| {
            *class = Some(class.map_or(c, |prev| prev.merge(c)));
        };
        let mut parsed_unnamed = false;
        for m in msgs {
            match Frontend::parse(m) {
                Some(Frontend::Parse { name, sql, .. }) => {
                    let (c, hit) = self.ctx.classifier.classify(sql, self.scs);
                    self.count_cache(hit);
                    merge(c, &mut class);
                    parses.push(c);
                    parsed_unnamed |= name.is_empty();
                    if first_sql.is_empty() {
                        first_sql = sql.to_owned();
                    }
                }
                Some(Frontend::Bind { statement, .. }) => {
                    let st = if statement.is_empty() {
                        (!parsed_unnamed).then_some(self.unnamed.as_ref()).flatten()
                    } else {
                        self.prepared.get(statement)
                    };
                    if let Some(st) = st {
                        merge(st.class, &mut class);
                    }
                }
                _ => {}
            }
        }
        (class, first_sql, parses)
    }

    /// The name in a Close of a named statement.
    fn named_close(m: &Message) -> Option<String> {
        match Frontend::parse(m) {
            Some(Frontend::Close { kind: b'S', name }) if !name.is_empty() => Some(name.to_owned()),
            _ => None,
        }
    }

    /// Runs one batch ending in Sync or Flush.
    pub(super) async fn extended(&mut self, msgs: Vec<Message>) -> Result<(), SessionError> {
        let (class, first_sql, parses) = self.batch_class(&msgs);
        if self.held.is_none()
            && class.is_none()
            && msgs
                .iter()
                .all(|m| matches!(m.tag(), b'S' | b'H') || Self::named_close(m).is_some())
        {
            // Between transactions, a batch of Sync/Flush and Closes of named
            // statements needs no backend: pgvane keeps the server-side
            // statements for reuse and answers here.
            for m in &msgs {
                if let Some(name) = Self::named_close(m) {
                    self.prepared.remove(&name);
                    encode::close_complete(&mut self.out);
                } else if m.tag() == b'S' {
                    encode::ready_for_query(&mut self.out, b'I');
                }
            }
            return self.flush().await;
        }
        // A batch naming no statement (a portal Describe, an unnamed Close)
        // writes nothing: it must not start the read-your-writes window.
        let class = class.unwrap_or(Classification {
            route: Route::Leader,
            reason: Reason::Session,
            ..self.ctx.classifier.classify("select 1", true).0
        });
        let fresh = self.held.is_none();
        self.backend_for(&class).await?;
        self.forwarded = false;
        let mut result = self.run_batch(&msgs, &parses).await;
        if matches!(result, Err(SessionError::BackendLost { .. })) && self.may_retry(fresh, &class)
        {
            self.retry_elsewhere(&class).await?;
            result = self.run_batch(&msgs, &parses).await;
        }
        let status = result?;
        self.apply_effects(&class, &first_sql, status);
        if let Some(status) = status {
            self.after_ready(status);
        }
        Ok(())
    }

    /// Sends one rewritten batch and relays its replies; the ReadyForQuery
    /// status when the batch ended in Sync.
    async fn run_batch(
        &mut self,
        msgs: &[Message],
        parses: &[Classification],
    ) -> Result<Option<u8>, SessionError> {
        let (out, mut queue) = self.rewrite(msgs, parses)?;
        self.send_backend(&out).await?;
        let mut status = None;
        loop {
            while let Some(Expect::Synth(f)) = queue.front() {
                f(&mut self.out);
                queue.pop_front();
            }
            if queue.is_empty() {
                break;
            }
            let m = self.read_backend().await?;
            match m.tag() {
                b'E' => {
                    self.saw_error = true;
                    self.out.extend_from_slice(m.raw());
                    // The server skips everything up to Sync after an error.
                    while queue
                        .front()
                        .is_some_and(|e| !matches!(e, Expect::Real(Kind::Sync)))
                    {
                        queue.pop_front();
                    }
                }
                b'1' => match queue.pop_front() {
                    Some(Expect::Prepare { key, forward }) => {
                        if let Some(h) = self.held.as_mut() {
                            h.pooled.backend.prepared.insert(key);
                        }
                        if forward {
                            self.out.extend_from_slice(m.raw());
                        }
                    }
                    Some(Expect::Swallow) => {}
                    _ => self.out.extend_from_slice(m.raw()),
                },
                b'2' | b'3' | b'C' | b'I' | b's' => {
                    self.out.extend_from_slice(m.raw());
                    queue.pop_front();
                }
                b'T' | b'n' => {
                    self.out.extend_from_slice(m.raw());
                    if matches!(queue.front(), Some(Expect::Real(Kind::Describe))) {
                        queue.pop_front();
                    }
                }
                b'G' => {
                    self.out.extend_from_slice(m.raw());
                    self.flush().await?;
                    self.copy_in(true).await?;
                }
                b'Z' => {
                    self.out.extend_from_slice(m.raw());
                    status = m.body().first().copied();
                    queue.pop_front();
                }
                b'S' => {
                    self.note_parameter(&m);
                    self.out.extend_from_slice(m.raw());
                }
                _ => self.out.extend_from_slice(m.raw()),
            }
        }
        self.flush().await?;
        Ok(status)
    }

    /// Rewrites the batch for the held backend and lists the replies owed.
    fn rewrite(
        &mut self,
        msgs: &[Message],
        parses: &[Classification],
    ) -> Result<(Vec<u8>, VecDeque<Expect>), SessionError> {
        let mut parses = parses.iter().copied();
        let mut out = Vec::with_capacity(msgs.iter().map(|m| m.raw().len() + 24).sum());
        let mut queue = VecDeque::with_capacity(msgs.len() + 2);
        let mut pending: HashSet<u64> = HashSet::new();
        let mut parsed_unnamed = false;
        let Some(held) = self.held.as_ref() else {
            return Err(self.lost("no backend"));
        };
        let prepared = &held.pooled.backend.prepared;
        for m in msgs {
            let Some(f) = Frontend::parse(m) else {
                return Err(SessionError::Protocol(format!(
                    "malformed '{}' message",
                    m.tag() as char
                )));
            };
            match f {
                Frontend::Parse {
                    name: "",
                    sql,
                    types,
                } => {
                    out.extend_from_slice(m.raw());
                    queue.push_back(Expect::Real(Kind::Parse));
                    parsed_unnamed = true;
                    let class = parses
                        .next()
                        .unwrap_or_else(|| self.ctx.classifier.classify(sql, self.scs).0);
                    self.unnamed = Some(Stmt {
                        sql: Arc::from(sql),
                        types: Bytes::copy_from_slice(types),
                        key: 0,
                        class,
                    });
                }
                Frontend::Parse { name, sql, types } => {
                    let key = key_of(sql, types);
                    let class = parses
                        .next()
                        .unwrap_or_else(|| self.ctx.classifier.classify(sql, self.scs).0);
                    self.prepared.insert(
                        name.to_owned(),
                        Stmt {
                            sql: Arc::from(sql),
                            types: Bytes::copy_from_slice(types),
                            key,
                            class,
                        },
                    );
                    if prepared.contains(&key) || pending.contains(&key) {
                        queue.push_back(Expect::Synth(encode::parse_complete));
                    } else {
                        encode::parse(&mut out, &server_name(key), sql, types);
                        queue.push_back(Expect::Prepare { key, forward: true });
                        pending.insert(key);
                    }
                }
                Frontend::Bind {
                    portal,
                    statement,
                    rest,
                } => {
                    if statement.is_empty() {
                        if !parsed_unnamed {
                            if let Some(u) = &self.unnamed {
                                encode::parse(&mut out, "", &u.sql, &u.types);
                                queue.push_back(Expect::Swallow);
                                parsed_unnamed = true;
                            }
                        }
                        out.extend_from_slice(m.raw());
                    } else if let Some(st) = self.prepared.get(statement) {
                        Self::ensure(&mut out, &mut queue, &mut pending, prepared, st);
                        encode::bind_raw(&mut out, portal, &server_name(st.key), rest);
                    } else {
                        out.extend_from_slice(m.raw());
                    }
                    queue.push_back(Expect::Real(Kind::Bind));
                }
                Frontend::Describe { kind: b'S', name } if !name.is_empty() => {
                    if let Some(st) = self.prepared.get(name) {
                        Self::ensure(&mut out, &mut queue, &mut pending, prepared, st);
                        encode::describe_or_close(&mut out, b'D', b'S', &server_name(st.key));
                    } else {
                        out.extend_from_slice(m.raw());
                    }
                    queue.push_back(Expect::Real(Kind::Describe));
                }
                Frontend::Describe { .. } => {
                    out.extend_from_slice(m.raw());
                    queue.push_back(Expect::Real(Kind::Describe));
                }
                Frontend::Close { kind: b'S', name } if !name.is_empty() => {
                    // The server-side statement stays for other clients to reuse.
                    self.prepared.remove(name);
                    queue.push_back(Expect::Synth(encode::close_complete));
                }
                Frontend::Close { .. } => {
                    out.extend_from_slice(m.raw());
                    queue.push_back(Expect::Real(Kind::Close));
                }
                Frontend::Execute => {
                    out.extend_from_slice(m.raw());
                    queue.push_back(Expect::Real(Kind::Execute));
                }
                Frontend::Sync => {
                    out.extend_from_slice(m.raw());
                    queue.push_back(Expect::Real(Kind::Sync));
                }
                _ => out.extend_from_slice(m.raw()),
            }
        }
        Ok((out, queue))
    }

    /// Prepares `st` on the backend first if it is not there yet.
    fn ensure(
        out: &mut Vec<u8>,
        queue: &mut VecDeque<Expect>,
        pending: &mut HashSet<u64>,
        prepared: &HashSet<u64>,
        st: &Stmt,
    ) {
        if !prepared.contains(&st.key) && pending.insert(st.key) {
            encode::parse(out, &server_name(st.key), &st.sql, &st.types);
            queue.push_back(Expect::Prepare {
                key: st.key,
                forward: false,
            });
        }
    }
}
