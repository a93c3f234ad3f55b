//! A batch rewritten for the backend that runs it: each client statement
//! name mapped to the backend's `pgv_<n>` (prepared there first when it is
//! not, what the backend's LRU evicts closed first), the client's unnamed
//! statement parsed again where the server's may be another's, and the
//! queue of replies owed, in order, with the ones pgvane makes up or
//! swallows marked.

use super::{Expect, Kind, Synth};
use crate::backend::prepared::{PreparedCache, StmtText, server_name};
use crate::classifier::Classification;
use crate::protocol::encode;
use crate::protocol::message::{Frontend, Message};
use crate::session::Session;
use crate::session::error::SessionError;
use crate::session::mentions::Mentions;
use crate::session::statements::Stmt;
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Arc;

impl Session {
    /// Rewrites the batch for the held backend and lists the replies owed.
    pub(super) fn rewrite(
        &mut self,
        msgs: &[Message],
        parses: &[Classification],
    ) -> Result<(Vec<u8>, VecDeque<Expect>), SessionError> {
        let mut parses = parses.iter().copied();
        // From the worker's stash: `run_batch` gives it back once queued.
        let mut out = crate::session::buffers::take_reply();
        out.reserve(msgs.iter().map(|m| m.raw().len() + 24).sum());
        let mut queue = VecDeque::with_capacity(msgs.len() + 2);
        let mut used = Used::new();
        let mut parsed_unnamed = false;
        let Some(held) = self.held.as_mut() else {
            return Err(SessionError::BackendLost {
                node: String::new(),
                cause: "no backend".into(),
            });
        };
        let cache = &mut held.pooled.backend.prepared;
        for m in msgs {
            let Some(f) = Frontend::parse(m) else {
                return Err(SessionError::Protocol(format!(
                    "invalid '{}' message",
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
                    match &mut self.statements.unnamed {
                        // The same statement again: kept, nothing copied.
                        Some(st) if *st.text.sql == *sql && st.text.types == types => {
                            st.class = class;
                        }
                        unnamed => {
                            *unnamed = Some(Stmt {
                                text: Arc::new(StmtText {
                                    sql: Arc::from(sql),
                                    types: Bytes::copy_from_slice(types),
                                }),
                                class,
                                words: Mentions::of(sql),
                            });
                        }
                    }
                }
                Frontend::Parse { name, sql, types } => {
                    let class = parses
                        .next()
                        .unwrap_or_else(|| self.ctx.classifier.classify(sql, self.scs).0);
                    let text = Arc::new(StmtText {
                        sql: Arc::from(sql),
                        types: Bytes::copy_from_slice(types),
                    });
                    self.statements.insert(
                        name,
                        Stmt {
                            text: Arc::clone(&text),
                            class,
                            words: Mentions::of(sql),
                        },
                    )?;
                    match cache.lookup(&text) {
                        Some(id) => {
                            used.push(id);
                            queue.push_back(Expect::Synth(Synth::ParseComplete));
                        }
                        None => {
                            let id = prepare(cache, &mut out, &mut queue, &mut used, text);
                            queue.push_back(Expect::Prepare { id, forward: true });
                        }
                    }
                }
                // Uses of the client's unnamed statement.
                Frontend::Bind { statement: "", .. }
                | Frontend::Describe {
                    kind: b'S',
                    name: "",
                } => {
                    reparse_unnamed(
                        self.statements.unnamed.as_ref(),
                        &mut parsed_unnamed,
                        &mut out,
                        &mut queue,
                    );
                    out.extend_from_slice(m.raw());
                    let kind = if m.tag() == b'B' {
                        Kind::Bind
                    } else {
                        Kind::Describe
                    };
                    queue.push_back(Expect::Real(kind));
                }
                Frontend::Bind {
                    portal,
                    statement,
                    rest,
                } => {
                    if let Some(st) = self.statements.get(statement) {
                        let id = ensure(cache, &mut out, &mut queue, &mut used, &st.text);
                        encode::bind_raw(&mut out, portal, &server_name(id), rest);
                    } else {
                        out.extend_from_slice(m.raw());
                    }
                    queue.push_back(Expect::Real(Kind::Bind));
                }
                Frontend::Describe { kind: b'S', name } if !name.is_empty() => {
                    if let Some(st) = self.statements.get(name) {
                        let id = ensure(cache, &mut out, &mut queue, &mut used, &st.text);
                        encode::describe_or_close(&mut out, b'D', b'S', &server_name(id));
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
                    self.statements.forget(name);
                    queue.push_back(Expect::Synth(Synth::CloseComplete));
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
}

/// Parses the client's unnamed statement `unnamed` again on the backend
/// (its ParseComplete swallowed) unless this batch already did: the
/// server's unnamed statement may be another batch's or pgvane's capture.
fn reparse_unnamed(
    unnamed: Option<&Stmt>,
    parsed: &mut bool,
    out: &mut Vec<u8>,
    queue: &mut VecDeque<Expect>,
) {
    if *parsed {
        return;
    }
    if let Some(u) = unnamed {
        encode::parse(out, "", &u.text.sql, &u.text.types);
        queue.push_back(Expect::Swallow);
        *parsed = true;
    }
}

/// Ids of the server-side statements a batch uses (kept from eviction
/// while it runs); inline for the common few.
type Used = smallvec::SmallVec<[u64; 8]>;

/// Prepares `text` on the backend under a new name, closing the statement
/// the LRU evicts first; returns the new id (its ParseComplete is owed).
fn prepare(
    cache: &mut PreparedCache,
    out: &mut Vec<u8>,
    queue: &mut VecDeque<Expect>,
    used: &mut Used,
    text: Arc<StmtText>,
) -> u64 {
    let (sql, types) = (Arc::clone(&text.sql), text.types.clone());
    let (id, evicted) = cache.insert(text, used);
    if let Some(old) = evicted {
        encode::describe_or_close(out, b'C', b'S', &server_name(old));
        queue.push_back(Expect::SwallowClose);
    }
    encode::parse(out, &server_name(id), &sql, &types);
    used.push(id);
    id
}

/// The backend's id for `text`, preparing it first when it is not there.
fn ensure(
    cache: &mut PreparedCache,
    out: &mut Vec<u8>,
    queue: &mut VecDeque<Expect>,
    used: &mut Used,
    text: &Arc<StmtText>,
) -> u64 {
    if let Some(id) = cache.lookup(text) {
        used.push(id);
        return id;
    }
    let id = prepare(cache, out, queue, used, Arc::clone(text));
    queue.push_back(Expect::Prepare { id, forward: false });
    id
}

#[cfg(test)]
mod tests;
