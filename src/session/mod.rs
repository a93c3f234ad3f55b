//! One split-port client: login, then the request loop. Each autocommit
//! statement or transaction runs on a pooled backend of the node the router
//! chose; transaction state comes from ReadyForQuery; session state pins
//! the client to its leader backend until a `DISCARD ALL` the server
//! confirmed. Every backend owns its protocol state (`backend::state`), so
//! whatever the client does, a backend goes back to the pool only when
//! clean. A session reads its own writes: each writing transaction's
//! commit position is captured on its backend before the client hears of
//! the commit, and reads carry that floor to the router.
//!
//! Files by job: `login` (startup, access rules, authentication),
//! `pipeline` (the one request path: classify, route, run, retry, capture),
//! `checkout` (the router's decision carried out: waits; the usual request
//! taken without awaiting), `acquire` (the targets' pools in turn: waits,
//! logins, settings),
//! `consistency` (floors, the commit capture, the causal token), `effects`
//! (pins, replayed settings), `simple` (Query, fast path, COPY), `extended`
//! (batches, transparent prepared statements), `statements`, `metrics`,
//! `token` (the causal token's commands), `client` (socket, buffers,
//! [`client::ClientState`]), `buffers` (the per-worker stash of client
//! buffers), `cancel`, `settings`, `error`, `handshake`, `stream` (plain
//! or TLS socket).

mod acquire;
mod buffers;
mod cancel;
mod checkout;
mod client;
mod consistency;
mod context;
mod effects;
mod error;
mod extended;
pub mod handshake;
mod login;
mod mentions;
mod metrics;
mod moves;
mod pipeline;
mod settings;
mod simple;
mod statements;
mod stream;
mod token;

pub use cancel::CancelRegistry;
pub use context::SessionContext;

use crate::backend::Credentials;
use crate::classifier::Pin;
use crate::pool::Pooled;
use crate::protocol::encode;
use crate::protocol::message::Message;
use crate::protocol::sqlstate;
use crate::router::split::NodeRole;
use crate::topology::NodeAddr;
use cancel::CancelTarget;
use client::{ClientConn, ClientState};
use consistency::Consistency;
use error::SessionError;
use metrics::SessionMetrics;
use moves::Served;
use settings::SessionSettings;
use statements::Statements;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use stream::ClientStream;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Most named prepared statements one session may hold.
pub const MAX_SESSION_STATEMENTS: usize = 10_000;
/// Most bytes of SQL text one session's prepared statements may hold.
pub const MAX_SESSION_STATEMENT_BYTES: usize = 64 * 1024 * 1024;
/// Extended-protocol messages buffered before Sync; past this pgvane sends
/// what it has with a Flush and goes on (the backend stays with the session).
pub const MAX_BATCH_MESSAGES: usize = 1024;
/// Bytes of extended-protocol messages buffered before Sync (as above).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// The backend a session holds, and where it came from.
struct Held {
    pooled: Pooled,
    node: Arc<str>,
    role: NodeRole,
    /// pgvane's own SQL to run on it before the client's next request
    /// (startup values back after a `RESET` on a held backend).
    fixup: Option<String>,
}

/// One client's session: the client side, the backend it holds, and one
/// owner for each kind of state it keeps.
struct Session {
    ctx: Arc<SessionContext>,
    client: ClientConn,
    state: ClientState,
    creds: Credentials,
    settings: SessionSettings,
    /// The backend held now, and the pools this session used.
    /// Boxed: an idle session (most of them) then holds one pointer, not
    /// the backend's whole state.
    held: Option<Box<Held>>,
    pools: Vec<(NodeAddr, Arc<crate::pool::Pool>)>,
    pin: Option<Pin>,
    scs: bool,
    statements: Statements,
    consistency: Consistency,
    metrics: SessionMetrics,
    cancel_key: (u32, u32),
    cancel_slot: CancelTarget,
    /// An ErrorResponse came back for the current request.
    saw_error: bool,
    /// The current request's ReadyForQuery stays buffered until pgvane
    /// has read what it sent behind it (the commit capture).
    hold_ready: bool,
    /// The retryable refusal a replica answered the current read with
    /// (nothing of it reached the client), when a retry is allowed.
    refused: Option<String>,
    /// Whether the current request may run again on the leader after a
    /// refusal or a shutdown.
    retry_armed: pipeline::Armed,
    /// Why the session ended, for its disconnect line: `terminate` (the
    /// client said so), `client_gone`, or the error that ended it.
    ended: &'static str,
    /// When the current request and transaction began.
    timing: metrics::Timing,
    /// The client's state when its COPY FROM STDIN began (while in
    /// `CopyIn`): whether a loss then ends a transaction block.
    copy_outer: ClientState,
    /// The worker runtime the session runs on, counted there.
    placement: crate::workers::Placement,
}

/// Serves one split-port client until it leaves; `admitted` holds the
/// refusal text when a client limit is reached (the client is told so after
/// its startup packet, as PostgreSQL does), beside the client's place in
/// the limits' counts, held until it leaves. Everything before the session starts is
/// bounded by `client_login_timeout_ms`.
///
/// Not an `async fn`: an async fn keeps its arguments in its future for
/// as long as it runs, and every idle client's task would carry them. The
/// login takes them into a boxed future of its own, gone once it ends, and
/// what the task keeps is [`serve_client`]'s few pointers.
pub fn run(
    client: TcpStream,
    ctx: Arc<SessionContext>,
    (admitted, ticket): (Result<(), String>, impl Send + 'static),
    peer: SocketAddr,
    placement: crate::workers::Placement,
) -> impl std::future::Future<Output = ()> + Send {
    use tracing::Instrument;
    // Every log line of the session names the client's address.
    let span = tracing::info_span!("client", %peer);
    // Taken before the login: a KILL from now on ends this session too.
    let kill = ctx.gate.kill_beacon();
    let login = Box::pin(start(
        client,
        Arc::clone(&ctx),
        admitted,
        peer,
        (placement, kill),
    ));
    serve_client(login, ctx, ticket).instrument(span)
}

async fn serve_client(
    login: std::pin::Pin<Box<impl std::future::Future<Output = Option<Session>>>>,
    ctx: Arc<SessionContext>,
    _ticket: impl Send,
) {
    let Some(s) = login.await else {
        return;
    };
    // On the heap once: the task and the request loop's future each hold
    // a pointer to it, not a copy of their own (a session moving between
    // workers travels as this pointer).
    let mut s = Box::new(s);
    let since = std::time::Instant::now();
    tracing::info!(
        target: crate::telemetry::CONN,
        event = "login",
        port = %ctx.key,
        user = %s.creds.user,
        database = %s.creds.database,
        tls = s.client.is_tls(),
        "login"
    );
    // Boxed: the task of an idle session then holds only the small future
    // of the request loop, not the largest request's state machine.
    if Box::pin(s.greet()).await.is_ok() {
        match Box::pin(s.serve_anywhere()).await {
            Some(back) => s = back,
            None => return,
        }
    }
    s.release_held();
    ctx.cancels.remove(s.cancel_key);
    // Split ports' bytes are counted as each session ends.
    for (direction, n) in [
        ("to_server", s.client.bytes_in),
        ("to_client", s.client.bytes_out),
    ] {
        ctx.metrics
            .bytes
            .with_label_values(&[&ctx.key.cluster, &ctx.key.port, direction])
            .inc_by(n);
    }
    let nodes: Vec<String> = s.pools.iter().map(|(n, _)| n.to_string()).collect();
    tracing::info!(
        target: crate::telemetry::CONN,
        event = "disconnect",
        port = %ctx.key,
        user = %s.creds.user,
        database = %s.creds.database,
        nodes = %nodes.join(","),
        duration_ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX),
        bytes_in = s.client.bytes_in,
        bytes_out = s.client.bytes_out,
        reason = s.ended,
        "disconnect"
    );
}

/// Logs the client in, bounded by `client_login_timeout_ms`: its session,
/// or None when it was refused or timed out (and was told so).
async fn start(
    client: TcpStream,
    ctx: Arc<SessionContext>,
    admitted: Result<(), String>,
    peer: SocketAddr,
    (placement, kill): (crate::workers::Placement, crate::beacon::Beacon),
) -> Option<Session> {
    let ctx = &ctx;
    let _ = client.set_nodelay(true);
    let mut client = ClientStream::Plain(client);
    let timeout = ctx.globals.load().client_login_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let logged_in =
        tokio::time::timeout_at(deadline, login::login(&mut client, ctx, admitted, peer)).await;
    let (creds, startup) = match logged_in {
        Ok(s) => s?,
        Err(_) => {
            let text = "canceling authentication due to timeout".to_owned();
            tracing::info!(port = %ctx.key, ?timeout, "{text}");
            ctx.metrics
                .client_errors
                .with_label_values(&[
                    &ctx.key.cluster,
                    &ctx.key.port,
                    sqlstate::PROTOCOL_VIOLATION.code(),
                ])
                .inc();
            let mut out = Vec::new();
            encode::error_response(
                &mut out,
                encode::Severity::Fatal,
                sqlstate::PROTOCOL_VIOLATION,
                &text,
            );
            // Best effort: a client that never reads must not hold us here.
            let _ = tokio::time::timeout(Duration::from_millis(100), async {
                client.write_all(&out).await?;
                client.flush().await
            })
            .await;
            return None;
        }
    };
    let (cancel_key, cancel_slot) = ctx.cancels.register(ctx.globals.load().peer_id);
    Some(Session {
        creds,
        settings: SessionSettings::new(startup),
        client: ClientConn::new(client, &ctx.drain, &kill),
        state: ClientState::Idle,
        metrics: SessionMetrics::new(ctx),
        ctx: Arc::clone(ctx),
        held: None,
        pools: Vec::new(),
        pin: None,
        scs: true,
        statements: Statements::default(),
        consistency: Consistency::default(),
        cancel_key,
        cancel_slot,
        saw_error: false,
        hold_ready: false,
        refused: None,
        placement,
        retry_armed: pipeline::Armed::Off,
        ended: "client_gone",
        timing: metrics::Timing::default(),
        copy_outer: ClientState::Idle,
    })
}

/// How a request ended for the client: whether PostgreSQL would now send
/// ReadyForQuery (Query, FunctionCall, a batch ending in Sync) or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Ready,
    NoReady,
}

/// An extended-protocol batch being collected.
#[derive(Default)]
struct Batch {
    msgs: Vec<Message>,
    bytes: usize,
}

impl Batch {
    /// Adds a message; the first takes a list from the worker's stash
    /// (`extended` gives it back).
    fn push(&mut self, m: Message) {
        if self.msgs.capacity() == 0 {
            self.msgs = buffers::take_batch();
        }
        self.msgs.push(m);
    }
}

impl Session {
    /// Finishes the client's startup: a backend (the leader's, or a
    /// replica's while there is no leader) with the session's settings
    /// tells the server's parameters; then BackendKeyData and ready.
    async fn greet(&mut self) -> Result<(), SessionError> {
        if let Err(e) = self.checkout_for_login().await {
            self.ended = e.label();
            let fatal = match e {
                SessionError::Server(m) => SessionError::Server(m),
                other => SessionError::Protocol(other.to_string()).with_code(other.sqlstate()),
            };
            fatal.encode_fatal(&mut self.client.out);
            let _ = self.client.flush().await;
            return Err(SessionError::ClientGone);
        }
        if let Some(h) = &self.held {
            for (k, v) in &h.pooled.backend.params {
                encode::parameter_status(&mut self.client.out, k, v);
                if k == "standard_conforming_strings" {
                    self.scs = v == "on";
                }
            }
        }
        encode::backend_key_data(&mut self.client.out, self.cancel_key.0, self.cancel_key.1);
        encode::ready_for_query(&mut self.client.out, b'I');
        self.after_ready(b'I');
        self.client.flush().await
    }

    /// The request loop.
    async fn serve(&mut self) -> Served {
        let mut batch = Batch::default();
        loop {
            let idle = self.held.is_none() && batch.msgs.is_empty();
            if idle && self.state == ClientState::Idle {
                if let Some(worker) = self.wants_move() {
                    return Served::Move(worker);
                }
            }
            let limit = self.idle_limit(&batch);
            let m = match self.client.read(idle, limit).await {
                Ok(m) => m,
                Err(e) => {
                    Box::pin(self.end_with(e)).await;
                    return Served::Ended;
                }
            };
            // A request's time runs from its first message (a query, or
            // the first message of an extended batch) to its ReadyForQuery
            // (`after_ready`); each new request starts its own clock.
            let starts = match m.tag() {
                b'Q' | b'F' => true,
                b'P' | b'B' | b'D' | b'C' | b'E' | b'S' | b'H' => batch.msgs.is_empty(),
                _ => false,
            };
            if starts {
                self.timing.request = Some(std::time::Instant::now());
            }
            if self.state == ClientState::AwaitingSync {
                match m.tag() {
                    b'S' => {
                        let status = self.status();
                        self.timing.request = None;
                        self.state = ClientState::from_status(status);
                        encode::ready_for_query(&mut self.client.out, status);
                        if self.client.flush().await.is_err() {
                            return Served::Ended;
                        }
                    }
                    b'X' => {
                        self.ended = "terminate";
                        return Served::Ended;
                    }
                    _ => {}
                }
                continue;
            }
            let (result, ending) = match m.tag() {
                b'Q' | b'F' => {
                    if !batch.msgs.is_empty() {
                        // PostgreSQL ran those messages as they came: run them
                        // now, with a Flush so their replies come back.
                        let msgs = std::mem::take(&mut batch).msgs;
                        let r = Box::pin(self.extended(msgs, true)).await;
                        if r.is_err() && !Box::pin(self.recover(r, Ending::NoReady)).await {
                            return Served::Ended;
                        }
                        if self.state == ClientState::AwaitingSync {
                            continue;
                        }
                    }
                    let r = if m.tag() == b'Q' {
                        Box::pin(self.simple(&m)).await
                    } else {
                        Box::pin(self.function_call(&m)).await
                    };
                    (r, Ending::Ready)
                }
                b'P' | b'B' | b'D' | b'C' | b'E' => {
                    batch.bytes += m.raw().len();
                    batch.push(m);
                    if batch.msgs.len() < MAX_BATCH_MESSAGES && batch.bytes < MAX_BATCH_BYTES {
                        continue;
                    }
                    let msgs = std::mem::take(&mut batch).msgs;
                    (Box::pin(self.extended(msgs, true)).await, Ending::NoReady)
                }
                b'S' | b'H' => {
                    let ending = if m.tag() == b'S' {
                        Ending::Ready
                    } else {
                        Ending::NoReady
                    };
                    batch.push(m);
                    let msgs = std::mem::take(&mut batch).msgs;
                    (Box::pin(self.extended(msgs, false)).await, ending)
                }
                b'X' => {
                    self.ended = "terminate";
                    return Served::Ended;
                }
                // CopyData/Done/Fail outside COPY: PostgreSQL ignores them.
                b'd' | b'c' | b'f' => continue,
                other => {
                    let e =
                        SessionError::Protocol(format!("invalid frontend message type {other}"));
                    Box::pin(self.end_with(e)).await;
                    return Served::Ended;
                }
            };
            // Boxed, and only on failure: the request loop's own future
            // stays small, since every idle session's task holds it.
            if result.is_err() && !Box::pin(self.recover(result, ending)).await {
                return Served::Ended;
            }
        }
    }

    /// How long the client may sit idle while this session holds a backend
    /// (`idle_in_transaction_timeout_ms` in a transaction,
    /// `pinned_idle_timeout_ms` when pinned outside one), and the error
    /// that then ends the session. None: no limit applies.
    fn idle_limit(&self, batch: &Batch) -> Option<(Duration, SessionError)> {
        if self.held.is_none() || !batch.msgs.is_empty() {
            return None;
        }
        let port = self.ctx.port.load();
        match self.state {
            ClientState::InTransaction | ClientState::FailedTransaction => {
                port.resolved.idle_in_transaction_timeout.map(|d| {
                    (
                        d,
                        SessionError::Idle(
                            sqlstate::IDLE_IN_TRANSACTION_TIMEOUT,
                            "terminating connection due to idle-in-transaction timeout".into(),
                        ),
                    )
                })
            }
            ClientState::Idle if self.pin.is_some() => {
                port.resolved.pinned_idle_timeout.map(|d| {
                    (
                        d,
                        SessionError::Idle(
                            sqlstate::IDLE_SESSION_TIMEOUT,
                            "terminating connection due to idle-session timeout: pgvane: the session held a backend pinned (pinned_idle_timeout_ms)".into(),
                        ),
                    )
                })
            }
            _ => None,
        }
    }

    /// Sends a fatal error (when it is one the client should see) and ends.
    async fn end_with(&mut self, e: SessionError) {
        self.ended = e.label();
        if matches!(e, SessionError::ClientGone) {
            return;
        }
        self.count_error(&e);
        e.encode(&mut self.client.out, true);
        let _ = self.client.flush().await;
    }

    fn count_error(&self, e: &SessionError) {
        let code = e.sqlstate();
        self.ctx
            .metrics
            .client_errors
            .with_label_values(&[&self.ctx.key.cluster, &self.ctx.key.port, code.code()])
            .inc();
        match e {
            SessionError::Server(_) => {
                tracing::info!(port = %self.ctx.key, kind = e.label(), "server refused a backend login or setting");
            }
            _ => {
                tracing::warn!(port = %self.ctx.key, sqlstate = code.code(), kind = e.label(), "{e}")
            }
        }
    }

    /// Turns a request failure into what the client sees; false ends the session.
    async fn recover(&mut self, result: Result<(), SessionError>, ending: Ending) -> bool {
        let err = match result {
            Ok(()) => return true,
            Err(SessionError::ClientGone) => {
                self.ended = SessionError::ClientGone.label();
                return false;
            }
            Err(e) => e,
        };
        self.count_error(&err);
        // The request ends here; a transaction whose backend was lost is
        // gone (and is not timed as one).
        self.timing.request = None;
        self.hold_ready = false;
        self.client.hold = false;
        self.refused = None;
        self.retry_armed = pipeline::Armed::Off;
        // A backend lost inside the client's transaction block took the
        // transaction with it: the session ends, as a direct connection
        // would, rather than go on in autocommit on another backend.
        let fatal = err.fatal(self.pin.is_some())
            || (matches!(err, SessionError::BackendLost { .. }) && self.in_transaction());
        if let SessionError::BackendLost { .. } = err {
            self.timing = metrics::Timing::default();
            if let Some(h) = self.held.take() {
                h.pooled.discard();
            }
            // Its transaction is gone with it.
            self.consistency.wrote = false;
            self.consistency.maybe_async = false;
            cancel::set(&self.cancel_slot, None);
        }
        // FATAL whenever the session ends here (`encode` alone knows of
        // pins, not of transaction blocks).
        err.encode(&mut self.client.out, self.pin.is_some() || fatal);
        if fatal {
            self.ended = err.label();
            let _ = self.client.flush().await;
            return false;
        }
        match ending {
            Ending::Ready => {
                let status = self.status();
                self.state = ClientState::from_status(status);
                encode::ready_for_query(&mut self.client.out, status);
            }
            Ending::NoReady => self.state = ClientState::AwaitingSync,
        }
        let flushed = self.client.flush().await.is_ok();
        if !flushed {
            self.ended = SessionError::ClientGone.label();
        }
        flushed
    }

    /// The transaction status the client is told: the held backend's.
    fn status(&self) -> u8 {
        self.held
            .as_ref()
            .map_or(b'I', |h| h.pooled.backend.state.status)
    }

    /// Returns the held backend at session end; the pool decides whether it
    /// is clean, needs a reset, or must be closed.
    fn release_held(&mut self) {
        if let Some(h) = self.held.take() {
            cancel::set(&self.cancel_slot, None);
            h.pooled.release();
        }
    }
}

impl SessionError {
    /// Re-labels a non-server error with `code` for a FATAL at login.
    fn with_code(self, code: sqlstate::SqlState) -> Self {
        match self {
            Self::Protocol(text) => Self::Limit(code, text),
            other => other,
        }
    }

    /// Appends this error as FATAL (login failures end the connection).
    fn encode_fatal(&self, out: &mut Vec<u8>) {
        match self {
            Self::Server(m) => out.extend_from_slice(m.raw()),
            other => encode::error_response(
                out,
                encode::Severity::Fatal,
                other.sqlstate(),
                &other.to_string(),
            ),
        }
    }
}
