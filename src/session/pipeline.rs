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
use super::consistency::{self, Captured};
use super::error::SessionError;
use super::mentions::Mentions;
use crate::classifier::Classification;
use crate::protocol::message::Message;
use crate::router::split::NodeRole;
use crate::topology::Floor;

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
    /// The words its text mentions (COPY: nothing may follow it in the
    /// same write, as a COPY FROM would read pgvane's capture as its data;
    /// `synchronous_commit`: the commit may be asynchronous); `None` until
    /// needed, then scanned from `sql` (a Query's whole text). Only a
    /// request on the leader needs them.
    pub(super) words: Option<Mentions>,
    /// What it means for read-your-writes (writes, ends, may run again).
    pub(super) effect: consistency::Effect,
}

impl Job<'_> {
    /// The words its text mentions, scanned the first time they are asked.
    fn words(&mut self) -> Mentions {
        let sql = self.sql;
        *self.words.get_or_insert_with(|| Mentions::of(sql))
    }
}

/// Longest pgvane waits for the commit capture's answer behind a commit.
const CAPTURE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether a captured floor is believable: on the leader's timeline when
/// one is known, and not far past the leader's last known position (a
/// client that replaced pgvane's statement cannot poison shared floors).
fn plausible(f: &Floor, positions: &crate::topology::Positions) -> bool {
    if positions.leader_timeline.is_some_and(|t| t != f.timeline) {
        return false;
    }
    positions
        .leader
        .as_ref()
        .is_none_or(|l| f.lsn.0 <= l.lsn.0.saturating_add(16 << 30))
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
        mut job: Job<'_>,
    ) -> Result<(), SessionError> {
        let class = job.class;
        let fresh = self.held.is_none();
        let status_before = self.status();
        let mark = self.client.out.len();
        self.backend_for(&class).await?;
        self.client.forwarded = false;
        let before = self.before_request(&class);
        let mut may_capture = self.capture_possible(&mut job);
        // Pipelined only behind a request that ends the transaction it may
        // have written in: an autocommit request, or a lone COMMIT. Anything
        // else that turns out to end one gets its capture afterwards.
        let mut pipelined = may_capture
            && work.synced()
            && !job.words().copy
            && (status_before == b'I' || job.effect.commits);
        self.hold_ready = may_capture;
        self.retry_armed = self.arm(fresh, status_before, &job);
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
            let hidden_write = matches!(&why, Retry::Refused(code) if code == "25006");
            // Boxed: rare, and its checkout would make every request's
            // future larger.
            Box::pin(self.retry_on(why, &class)).await?;
            let _ = self.before_request(&class);
            if hidden_write {
                // The replica refused a write hidden in the read (a view
                // over a writing function): on the leader it commits, so
                // its position is captured like any write's.
                self.consistency.wrote = true;
                may_capture = self.capture_possible(&mut job);
                self.hold_ready = may_capture;
            }
            self.retry_armed = self.arm(true, status_before, &job);
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
                self.settle_capture(pipelined, status, job.effect.rolls_back)
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
    /// or shuts down under it: never inside a transaction, pinned, or on a
    /// backend it did not take for itself; on the leader only a lone plain
    /// DML or SELECT (a procedure, DO block or utility command may commit
    /// part of its work before a shutdown stops it).
    fn arm(&self, fresh: bool, status_before: u8, job: &Job<'_>) -> Armed {
        let class = &job.class;
        if !fresh
            || status_before != b'I'
            || self.in_transaction()
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
        } else if job.effect.rerunnable {
            Armed::NothingDone
        } else {
            Armed::Off
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
                    consistency::capture_bytes(&mut out);
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
    /// held until the capture is read. Notes what it may have written.
    fn capture_possible(&mut self, job: &mut Job<'_>) -> bool {
        let on_leader = self
            .held
            .as_ref()
            .is_some_and(|h| h.role == NodeRole::Leader);
        if !on_leader {
            return false;
        }
        let c = &mut self.consistency;
        c.wrote |= job.effect.writes;
        // `SET LOCAL synchronous_commit = off` has reverted by COMMIT: the
        // whole transaction remembers it.
        c.maybe_async |= job.words().synchronous_commit;
        c.wrote && self.ctx.port.load().resolved.read_your_writes.captures()
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
                    // A replica going away cools down; a leader is left to
                    // the retry's own connect (a 57P01 may be one backend
                    // terminated by an operator, not a shutdown).
                    if shutdown(&code) {
                        // Its pooled siblings are being terminated too: the
                        // retry connects afresh (a node shutting down then
                        // refuses, and the request waits for the next one).
                        h.pooled.pool().drop_idle();
                    }
                    if shutdown(&code) && h.role == NodeRole::Replica {
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
    /// command completed on the leader, its work may be committed. So may
    /// it be after a notice: a commit waiting for a synchronous standby
    /// when a shutdown terminates it warns "already committed locally"
    /// before its FATAL 57P01, and running it again would apply it twice.
    pub(super) fn note_reply(&mut self, tag: u8) {
        if matches!(tag, b'C' | b'N') && self.retry_armed == Armed::NothingDone {
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
    /// and lets the held ReadyForQuery go. A transaction that ended in a
    /// ROLLBACK needs no capture.
    async fn settle_capture(
        &mut self,
        pipelined: bool,
        status: u8,
        rolled_back: bool,
    ) -> Result<(), SessionError> {
        let ended = status == b'I';
        if !pipelined {
            if !ended || rolled_back {
                if ended {
                    self.consistency.wrote = false;
                    self.consistency.maybe_async = false;
                }
                return Ok(());
            }
            let Some(h) = self.held.as_mut() else {
                return Err(self.lost("no backend"));
            };
            let mut out = Vec::with_capacity(256);
            consistency::capture_bytes(&mut out);
            if let Err(e) = h.pooled.backend.send(&out).await {
                return self.capture_lost(ended, self.lost(e));
            }
        }
        let captured = match self.read_capture().await {
            Ok(c) => c,
            Err(e @ SessionError::BackendLost { .. }) => return self.capture_lost(ended, e),
            Err(e) => return Err(e),
        };
        if !ended {
            return Ok(());
        }
        let maybe_async = self.consistency.maybe_async;
        self.consistency.wrote = false;
        self.consistency.maybe_async = false;
        let positions = self.ctx.link.tracker.current();
        let floor = captured
            .map(|c| c.floor(maybe_async))
            .filter(|f| plausible(f, &positions));
        let floor = match floor {
            Some(f) => Some(f),
            None => self.leader_floor_now().await,
        };
        self.raise_floors(floor, positions.epoch);
        Ok(())
    }

    /// The capture's backend went away. After a commit the client still
    /// hears of it (its floor comes from the leader's position, else its
    /// reads go to the leader); inside a transaction the client's held
    /// ReadyForQuery is taken back and the loss reported in its place.
    fn capture_lost(&mut self, ended: bool, e: SessionError) -> Result<(), SessionError> {
        if let Some(h) = self.held.take() {
            h.pooled.discard();
        }
        super::cancel::set(&self.cancel_slot, None);
        self.consistency.wrote = false;
        self.consistency.maybe_async = false;
        if !ended {
            let out = &mut self.client.out;
            if out.len() >= 6 && out[out.len() - 6] == b'Z' {
                out.truncate(out.len() - 6);
            }
            // The request left a transaction block open on the lost
            // backend: the client is in it, so the loss ends the session.
            self.state = super::ClientState::InTransaction;
            return Err(e);
        }
        tracing::info!(port = %self.ctx.key, error = %e, "backend lost during a commit capture; the session reads from the leader until its next capture");
        self.consistency.unknown = Some(self.ctx.link.tracker.current().epoch);
        self.count_capture("error");
        Ok(())
    }

    /// The leader's position now, when a capture gave none: at or past the
    /// commit the client is about to hear of. Bounded.
    async fn leader_floor_now(&self) -> Option<Floor> {
        let asked = self
            .ctx
            .link
            .tracker
            .leader_lsn_after(std::time::Instant::now());
        match tokio::time::timeout(std::time::Duration::from_secs(1), asked).await {
            Ok(Ok(f)) => Some(f),
            _ => None,
        }
    }

    /// Raises the session's and the shared floors after a commit, or marks
    /// the session's floor unknown (reads on the leader until the next
    /// capture or leader change).
    fn raise_floors(&mut self, floor: Option<Floor>, epoch: u64) {
        let outcome = match floor {
            Some(f) => {
                self.consistency.raise(f);
                self.consistency.unknown = None;
                self.ctx
                    .link
                    .floors
                    .raise(&self.creds.user, &self.creds.database, f);
                "ok"
            }
            None => {
                self.consistency.unknown = Some(epoch);
                "error"
            }
        };
        self.count_capture(outcome);
    }

    fn count_capture(&self, outcome: &str) {
        self.ctx
            .metrics
            .ryw_captures
            .with_label_values(&[&self.ctx.key.cluster, &self.ctx.key.port, outcome])
            .inc();
    }

    /// Reads the capture's replies up to its ReadyForQuery without letting
    /// the client have anything buffered; the row when it gave one. A
    /// backend silent past [`CAPTURE_TIMEOUT`] counts as lost.
    async fn read_capture(&mut self) -> Result<Option<Captured>, SessionError> {
        let deadline = tokio::time::Instant::now() + CAPTURE_TIMEOUT;
        let mut row = None;
        let mut failed = false;
        loop {
            let Some(h) = self.held.as_mut() else {
                return Err(self.lost("no backend"));
            };
            let m = match tokio::time::timeout_at(deadline, h.pooled.backend.read()).await {
                Ok(Ok(m)) => m,
                Ok(Err(e)) => return Err(self.lost(e)),
                Err(_) => return Err(self.lost("no answer to the commit capture")),
            };
            match m.tag() {
                b'D' => row = Captured::parse(m.body()),
                b'E' => {
                    failed = true;
                    let (code, text) = crate::protocol::message::error_fields(m.body());
                    tracing::debug!(port = %self.ctx.key, sqlstate = %code, "commit capture failed: {text}");
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
}

/// Why a request runs again.
enum Retry {
    /// A replica refused it with this SQLSTATE.
    Refused(String),
    /// Its fresh backend was lost before it answered.
    Lost,
}
