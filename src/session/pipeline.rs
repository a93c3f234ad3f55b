//! The one request path of a split session, for a simple Query, a fast-path
//! FunctionCall and an extended-protocol batch alike: answer pgvane's own
//! session commands; get a backend for the request's classification and
//! the session's floor (the router decides, `checkout` carries it out);
//! send it, with the commit capture appended when it may end a writing
//! transaction; relay the replies; retry once on the leader a read a
//! replica refused before answering; settle pins and settings; read the
//! capture and raise the floors before the client hears of the commit;
//! give the backend back when the request left it at rest.

use super::Session;
use super::consistency::{self, Captured, Command};
use super::error::SessionError;
use crate::classifier::Classification;
use crate::protocol::encode;
use crate::protocol::message::Message;
use crate::protocol::sqlstate;
use crate::router::split::NodeRole;
use crate::topology::{Floor, Lsn};

/// What a request sends to its backend.
pub(super) enum Work<'a> {
    /// A simple Query or a fast-path FunctionCall, relayed as is.
    Simple(&'a Message),
    /// An extended-protocol batch: its messages, each Parse's verdict, and
    /// whether pgvane adds a Flush (a batch cut short).
    Batch {
        msgs: &'a [Message],
        parses: &'a [Classification],
        inject_flush: bool,
    },
}

impl Work<'_> {
    fn synced(&self) -> bool {
        match self {
            Self::Simple(_) => true,
            Self::Batch { msgs, .. } => msgs.iter().any(|m| m.tag() == b'S'),
        }
    }
}

/// What the pipeline knows of a request besides its bytes.
pub(super) struct Job<'a> {
    /// The merged verdict.
    pub(super) class: Classification,
    /// The SQL of the (last executed) statement, for settings replay.
    pub(super) sql: &'a str,
    /// Statements it runs.
    pub(super) statements: usize,
    /// Its text mentions COPY: nothing may follow it in the same write
    /// (a COPY FROM would read pgvane's capture as its data).
    pub(super) copy: bool,
    /// Its text names `synchronous_commit`: the commit may be asynchronous.
    pub(super) async_commit: bool,
}

/// Most times one request runs again after a refusal or a shutdown (a
/// switchover can shut the old leader's pooled backends one by one).
const MAX_RETRIES: usize = 3;

/// SQLSTATEs with which a replica refuses a read that the leader can run:
/// read-only (a write hidden in a view or function), recovery conflict,
/// shutdown.
fn retryable_refusal(code: &str) -> bool {
    code == "25006" || code == "40001" || shutdown(code)
}

/// SQLSTATEs of a server shutting down (a switchover, a restart).
fn shutdown(code: &str) -> bool {
    matches!(code, "57P01" | "57P02" | "57P03")
}

/// Whether the current request may run again elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum Armed {
    /// No: it is in a transaction, pinned, or was not on a fresh backend.
    #[default]
    Off,
    /// A read on a replica: after a refusal, before any byte reached the
    /// client.
    ReplicaRead,
    /// On the leader, until a command of it completes: after a shutdown
    /// error, since nothing of it can have committed.
    NothingDone,
}

impl Session {
    /// Runs one request through the pipeline.
    pub(super) async fn request(
        &mut self,
        work: Work<'_>,
        job: Job<'_>,
    ) -> Result<(), SessionError> {
        let class = job.class;
        let fresh = self.held.is_none();
        let status_before = self.status();
        let mark = self.client.out.len();
        self.backend_for(&class).await?;
        self.client.forwarded = false;
        let before = self.before_request(&class);
        let may_capture = self.capture_possible(&class);
        let mut pipelined = may_capture
            && work.synced()
            && !job.copy
            && (status_before == b'I' || class.reason == crate::classifier::Reason::Transaction);
        self.hold_ready = may_capture;
        self.retry_armed = self.arm(fresh, status_before, &class);
        self.refused = None;
        let mut result = self.run(&work, pipelined).await;
        let mut retries = 0;
        while retries < MAX_RETRIES {
            let Some(why) = self.retry_cause(&result, fresh, &class) else {
                break;
            };
            retries += 1;
            self.client.out.truncate(mark);
            self.client.hold = false;
            self.retry_armed = Armed::Off;
            self.retry_on(why, &class).await?;
            let _ = self.before_request(&class);
            self.retry_armed = self.arm(true, status_before, &class);
            // The retry runs without a pipelined capture: one is sent after
            // its ReadyForQuery if the transaction ended.
            pipelined = false;
            result = self.run(&work, false).await;
        }
        self.retry_armed = Armed::Off;
        let status = result?;
        self.after_request(&class, before, job.sql, job.statements, status);
        if let Some(status) = status {
            if may_capture {
                self.settle_capture(pipelined, status, job.async_commit)
                    .await?;
            } else if status == b'I' {
                self.consistency.wrote = false;
                self.consistency.maybe_async = false;
            }
            self.after_ready(status);
        }
        self.hold_ready = false;
        self.client.flush().await
    }

    /// Whether the request may run again elsewhere if its node refuses it
    /// or shuts down under it.
    fn arm(&self, fresh: bool, status_before: u8, class: &Classification) -> Armed {
        if !fresh
            || status_before != b'I'
            || class.begin.is_some()
            || class.pin.is_some()
            || self.pin.is_some()
        {
            Armed::Off
        } else if self
            .held
            .as_ref()
            .is_some_and(|h| h.role == NodeRole::Replica)
        {
            Armed::ReplicaRead
        } else {
            Armed::NothingDone
        }
    }

    /// Sends the request (and the pipelined capture) and relays replies up
    /// to its ReadyForQuery; the status when it ended in one.
    async fn run(&mut self, work: &Work<'_>, capture: bool) -> Result<Option<u8>, SessionError> {
        match work {
            Work::Simple(m) => {
                let Some(h) = self.held.as_mut() else {
                    return Err(self.lost("no backend"));
                };
                h.pooled.backend.queue(m.raw());
                if capture {
                    let mut out = Vec::with_capacity(256);
                    consistency::capture_bytes(&mut out, h.pooled.backend.capture_ready);
                    h.pooled.backend.queue(&out);
                }
                if let Err(e) = h.pooled.backend.flush().await {
                    return Err(self.lost(e));
                }
                self.pump_until_ready().await.map(Some)
            }
            Work::Batch {
                msgs,
                parses,
                inject_flush,
            } => self.run_batch(msgs, parses, *inject_flush, capture).await,
        }
    }

    /// Whether this request may end a transaction that wrote on the
    /// leader, in a scope that captures commits: its ReadyForQuery is then
    /// held until the capture is read.
    fn capture_possible(&mut self, class: &Classification) -> bool {
        let on_leader = self
            .held
            .as_ref()
            .is_some_and(|h| h.role == NodeRole::Leader);
        if on_leader && consistency::writes(class) {
            self.consistency.wrote = true;
        }
        self.consistency.wrote && self.ctx.port.load().resolved.read_your_writes.captures()
    }

    /// Why the request should run again on the leader: a replica's
    /// retryable refusal (or a lost replica backend after one), or a read
    /// that lost its fresh backend before answering.
    fn retry_cause(
        &mut self,
        result: &Result<Option<u8>, SessionError>,
        fresh: bool,
        class: &Classification,
    ) -> Option<Retry> {
        if let Some(code) = self.refused.take() {
            if !self.client.forwarded {
                return Some(Retry::Refused(code));
            }
        }
        if matches!(result, Err(SessionError::BackendLost { .. })) && self.may_retry(fresh, class) {
            return Some(Retry::Lost);
        }
        None
    }

    /// Gives back (or drops) the backend that failed and takes another:
    /// the leader after a refusal, any node again after a loss.
    async fn retry_on(&mut self, why: Retry, class: &Classification) -> Result<(), SessionError> {
        match why {
            Retry::Refused(code) => {
                tracing::info!(port = %self.ctx.key, sqlstate = %code, "a node refused the request before running it; running it on the leader");
                self.ctx
                    .metrics
                    .refusals_retried
                    .with_label_values(&[&self.ctx.key.cluster, &self.ctx.key.port, &code])
                    .inc();
                if let Some(h) = self.held.take() {
                    if shutdown(&code) {
                        // Its node is going away: new requests wait for
                        // the map instead of meeting it again.
                        self.ctx
                            .health
                            .failure(&h.pooled.backend.addr, std::time::Instant::now());
                    }
                    if h.pooled.backend.state.at_rest() {
                        h.pooled.release();
                    } else {
                        h.pooled.discard();
                    }
                }
                super::cancel::set(&self.cancel_slot, None);
                self.backend_on_leader(class).await
            }
            Retry::Lost => self.retry_elsewhere(class).await,
        }
    }

    /// Notes a message from the backend that may cancel a retry: once a
    /// command completed on the leader, its work may be committed.
    pub(super) fn note_reply(&mut self, tag: u8) {
        if tag == b'C' && self.retry_armed == Armed::NothingDone {
            self.retry_armed = Armed::Off;
        }
    }

    /// Notes an ErrorResponse from the backend: a replica's retryable
    /// refusal of a read, or a shutdown of the leader before any command
    /// of the request completed (so nothing of it ran to commit), is kept
    /// from the client when nothing of the answer reached it.
    pub(super) fn note_error(&mut self, m: &Message) {
        self.saw_error = true;
        if self.retry_armed == Armed::Off || self.client.forwarded || self.refused.is_some() {
            return;
        }
        let (code, _) = crate::protocol::message::error_fields(m.body());
        let retry = match self.retry_armed {
            Armed::ReplicaRead => retryable_refusal(&code),
            Armed::NothingDone => shutdown(&code),
            Armed::Off => false,
        };
        if retry {
            self.refused = Some(code);
            self.client.hold = true;
        }
    }

    /// Reads the pipelined capture's replies (or runs the capture now when
    /// it was not pipelined and the transaction ended), raises the floors,
    /// and lets the held ReadyForQuery go.
    async fn settle_capture(
        &mut self,
        pipelined: bool,
        status: u8,
        async_commit: bool,
    ) -> Result<(), SessionError> {
        self.consistency.maybe_async |= async_commit;
        let ended = status == b'I';
        if !pipelined {
            if !ended {
                return Ok(());
            }
            let Some(h) = self.held.as_mut() else {
                return Err(self.lost("no backend"));
            };
            let mut out = Vec::with_capacity(256);
            consistency::capture_bytes(&mut out, h.pooled.backend.capture_ready);
            if let Err(e) = h.pooled.backend.send(&out).await {
                return Err(self.lost(e));
            }
        }
        let captured = match self.read_capture().await {
            Ok(c) => c,
            // The backend went away behind the client's answer (a leader
            // shutting down): the client still hears of its commit; the
            // session's reads go to the leader until a capture succeeds.
            Err(SessionError::BackendLost { node, cause }) if ended => {
                tracing::info!(port = %self.ctx.key, %node, %cause, "backend lost during a commit capture; reads go to the leader until the next capture");
                if let Some(h) = self.held.take() {
                    h.pooled.discard();
                }
                super::cancel::set(&self.cancel_slot, None);
                None
            }
            Err(e) => return Err(e),
        };
        if !ended {
            return Ok(());
        }
        let maybe_async = self.consistency.maybe_async;
        self.consistency.wrote = false;
        self.consistency.maybe_async = false;
        let outcome = match captured {
            Some(c) => {
                let floor = c.floor(maybe_async);
                self.consistency.raise(floor);
                self.consistency.unknown = false;
                self.ctx
                    .link
                    .floors
                    .raise(&self.creds.user, &self.creds.database, floor);
                "ok"
            }
            None => {
                self.consistency.unknown = true;
                "error"
            }
        };
        self.ctx
            .metrics
            .ryw_captures
            .with_label_values(&[&self.ctx.key.cluster, &self.ctx.key.port, outcome])
            .inc();
        Ok(())
    }

    /// Reads the capture's replies up to its ReadyForQuery without letting
    /// the client have anything buffered; the row when it gave one.
    async fn read_capture(&mut self) -> Result<Option<Captured>, SessionError> {
        let mut row = None;
        let mut failed = false;
        loop {
            let Some(h) = self.held.as_mut() else {
                return Err(self.lost("no backend"));
            };
            let m = match h.pooled.backend.read().await {
                Ok(m) => m,
                Err(e) => return Err(self.lost(e)),
            };
            let Some(h) = self.held.as_mut() else {
                return Err(self.lost("no backend"));
            };
            match m.tag() {
                b'1' => h.pooled.backend.capture_ready = true,
                b'D' => row = Captured::parse(m.body()),
                b'E' => {
                    failed = true;
                    let (code, text) = crate::protocol::message::error_fields(m.body());
                    tracing::debug!(port = %self.ctx.key, sqlstate = %code, "commit capture failed: {text}");
                    if code == "26000" {
                        h.pooled.backend.capture_ready = false;
                    }
                }
                b'Z' => return Ok(if failed { None } else { row }),
                // Notices and notifications belong to the client.
                b'N' | b'A' | b'S' => {
                    if m.tag() == b'S' {
                        self.note_parameter(&m);
                    }
                    self.client.out.extend_from_slice(m.raw());
                }
                _ => {}
            }
        }
    }

    /// Answers pgvane's own session commands (`SHOW pgvane.last_write_lsn`,
    /// `SET pgvane.min_lsn`) without a backend; false when `sql` is not one.
    pub(super) fn session_command(&mut self, sql: &str) -> bool {
        let Some(cmd) = consistency::command(sql) else {
            return false;
        };
        let out = &mut self.client.out;
        match cmd {
            Command::ShowLastWrite => {
                let lsn = self.consistency.floor.map_or(Lsn(0), |f| f.lsn).to_string();
                encode::row_description(out, &["pgvane.last_write_lsn"]);
                encode::data_row(out, &[&lsn]);
                encode::command_complete(out, "SHOW");
            }
            Command::SetMinLsn(text) => match text.parse::<Lsn>() {
                Ok(lsn) => {
                    let timeline = self.ctx.link.tracker.current().leader_timeline.unwrap_or(0);
                    self.consistency.raise(Floor { timeline, lsn });
                    encode::command_complete(out, "SET");
                }
                Err(_) => encode::error_response(
                    out,
                    encode::Severity::Error,
                    sqlstate::INVALID_PARAMETER_VALUE,
                    &format!(
                        "invalid value for parameter \"pgvane.min_lsn\": \"{text}\" (expected an LSN such as 0/3000148)"
                    ),
                ),
            },
        }
        let status = self.status();
        encode::ready_for_query(&mut self.client.out, status);
        true
    }
}

/// Why a request runs again.
enum Retry {
    /// A replica refused it with this SQLSTATE.
    Refused(String),
    /// Its fresh backend was lost before it answered.
    Lost,
}
