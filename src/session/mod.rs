//! One split-port client: handshake and authentication, then the request
//! loop. Each autocommit statement or transaction runs on a pooled backend
//! of the node the router chose; transaction state comes from ReadyForQuery;
//! session state pins the client to its leader backend until a `DISCARD
//! ALL` the server confirmed. Every backend owns its protocol state
//! (`backend::state`), so whatever the client does, a backend goes back to
//! the pool only when clean.
//!
//! Files by job: `client` (socket, buffers, [`client::ClientState`]),
//! `checkout` (targets, pools, retries, settings), `effects` (pins,
//! replayed settings, read-your-writes), `simple` (Query, fast path, COPY),
//! `extended` (batches, transparent prepared statements), `cancel`,
//! `settings`, `error`, `handshake`, `stream` (plain or TLS socket).

mod cancel;
mod checkout;
mod client;
mod effects;
mod error;
mod extended;
pub mod handshake;
mod settings;
mod simple;
mod stream;

pub use cancel::CancelRegistry;

use crate::auth::Secret;
use crate::auth::scram::ScramKeys;
use crate::backend::prepared::StmtText;
use crate::backend::{BackendSecret, Credentials};
use crate::classifier::{Classification, Classifier, Pin};
use crate::config::{AccessClient, ClientTlsMode, Config, PortConfig, PortKey, UserConfig};
use crate::pool::{PoolSet, PoolSettings, Pooled};
use crate::protocol::encode;
use crate::protocol::message::Message;
use crate::protocol::sqlstate;
use crate::router::{HealthBook, LagView};
use crate::telemetry::Metrics;
use crate::tls::ServerTls;
use crate::topology::{ClusterMap, NodeAddr};
use arc_swap::{ArcSwap, ArcSwapOption};
use cancel::CancelTarget;
use client::{ClientConn, ClientState};
use error::SessionError;
use handshake::{Handshake, HandshakeError, Login, TlsOffer};
use settings::SessionSettings;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stream::ClientStream;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Most named prepared statements one session may hold.
pub const MAX_SESSION_STATEMENTS: usize = 10_000;
/// Most bytes of SQL text one session's prepared statements may hold.
pub const MAX_SESSION_STATEMENT_BYTES: usize = 64 * 1024 * 1024;
/// Extended-protocol messages buffered before Sync; past this pgvane sends
/// what it has with a Flush and goes on (the backend stays with the session).
pub const MAX_BATCH_MESSAGES: usize = 1024;
/// Bytes of extended-protocol messages buffered before Sync (as above).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// Everything the sessions of one split port share.
#[derive(Debug)]
pub struct SessionContext {
    /// Cluster and port name.
    pub key: PortKey,
    /// The port's settings (swapped by reload).
    pub port: Arc<ArcSwap<PortConfig>>,
    /// The whole config (users, timeouts).
    pub globals: Arc<ArcSwap<Config>>,
    /// The cluster's published map.
    pub map: Arc<ArcSwap<ClusterMap>>,
    /// The port's lag verdicts (hysteresis), published by its evictor.
    pub lag: Arc<ArcSwap<LagView>>,
    /// The cluster's connect-failure book.
    pub health: Arc<HealthBook>,
    /// Backend pools.
    pub pools: Arc<PoolSet>,
    /// Statement classifier with its cache.
    pub classifier: Arc<Classifier>,
    /// Cancel keys (the port's: they outlive a rebuilt context).
    pub cancels: Arc<CancelRegistry>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Parsed user secrets by configured password text.
    pub secrets: Mutex<HashMap<String, Secret>>,
    /// Fires when the port drains: idle sessions end, others after their
    /// transaction.
    pub drain: CancellationToken,
    /// Fires when the port closes: every session ends now.
    pub close: CancellationToken,
    /// The port's client TLS, swapped by reload (`None`: answer `N`).
    pub tls: Arc<ArcSwapOption<ServerTls>>,
}

impl SessionContext {
    fn secret(&self, password: &str) -> Option<Secret> {
        let mut m = self
            .secrets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(s) = m.get(password) {
            return Some(s.clone());
        }
        let s = Secret::from_config(password).ok()?;
        m.insert(password.to_owned(), s.clone());
        Some(s)
    }

    fn pool_settings(&self) -> PoolSettings {
        let p = self.port.load();
        let g = self.globals.load();
        PoolSettings {
            size: p.pool_size.unwrap_or(20),
            acquire_timeout: Duration::from_millis(p.pool_acquire_timeout_ms.unwrap_or(5000)),
            idle_timeout: Duration::from_millis(p.server_idle_timeout_ms.unwrap_or(600_000)),
            lifetime: Duration::from_millis(p.server_lifetime_ms.unwrap_or(3_600_000)),
            connect_timeout: g.connect_timeout,
            max_prepared: p.max_prepared_statements.unwrap_or(200),
            socket: crate::backend::SocketOptions::for_servers(&g.tcp),
        }
    }
}

struct Held {
    pooled: Pooled,
    node: String,
    /// pgvane's own SQL to run on it before the client's next request
    /// (startup values back after a `RESET` on a held backend).
    fixup: Option<String>,
}

/// A client's prepared statement: its identity and verdict.
#[derive(Debug, Clone)]
struct Stmt {
    text: Arc<StmtText>,
    class: Classification,
}

/// One client's session state.
struct Session {
    ctx: Arc<SessionContext>,
    client: ClientConn,
    state: ClientState,
    creds: Credentials,
    settings: SessionSettings,
    held: Option<Held>,
    pin: Option<Pin>,
    scs: bool,
    prepared: HashMap<String, Stmt>,
    prepared_bytes: usize,
    unnamed: Option<Stmt>,
    cancel_key: (u32, u32),
    cancel_slot: CancelTarget,
    /// An ErrorResponse came back for the current request.
    saw_error: bool,
    /// Reads go to the leader until then: the session wrote just before.
    leader_until: Option<Instant>,
    /// Pools this session used, by node.
    pools: Vec<(NodeAddr, Arc<crate::pool::Pool>)>,
    /// Metric handles this session used: (node, role, reason) → counter.
    counters: Vec<((String, &'static str, &'static str), prometheus::IntCounter)>,
    /// `pgvane_pool_acquire_seconds` for this port.
    acquire_wait: prometheus::Histogram,
}

/// The startup parameters pgvane applies as settings, or why it cannot.
fn startup_settings(params: &[(String, String)]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (k, v) in params {
        match k.as_str() {
            "user" | "database" => {}
            "replication" => {
                if !matches!(v.as_str(), "false" | "off" | "no" | "0") {
                    return Err("pgvane does not relay replication connections".into());
                }
            }
            "options" => out.extend(settings::parse_options(v)?),
            _ => out.push((k.clone(), v.clone())),
        }
    }
    Ok(out)
}

/// Serves one split-port client until it leaves; `admitted` holds the
/// refusal text when a client limit is reached (the client is told so after
/// its startup packet, as PostgreSQL does). Everything before the session starts is
/// bounded by `client_login_timeout_ms`.
pub async fn run(
    client: TcpStream,
    ctx: Arc<SessionContext>,
    admitted: Result<(), String>,
    peer: SocketAddr,
) {
    use tracing::Instrument;
    // Every log line of the session names the client's address.
    let span = tracing::info_span!("client", %peer);
    serve_client(client, ctx, admitted, peer)
        .instrument(span)
        .await;
}

async fn serve_client(
    client: TcpStream,
    ctx: Arc<SessionContext>,
    admitted: Result<(), String>,
    peer: SocketAddr,
) {
    let _ = client.set_nodelay(true);
    let mut client = ClientStream::Plain(client);
    let timeout = ctx.globals.load().client_login_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let logged_in = Box::pin(tokio::time::timeout_at(
        deadline,
        login(&mut client, &ctx, admitted, peer),
    ))
    .await;
    let Some(s) = (match logged_in {
        Ok(s) => s,
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
            None
        }
    }) else {
        return;
    };
    let (creds, startup) = s;
    let (cancel_key, cancel_slot) = ctx.cancels.register();
    let mut s = Session {
        creds,
        settings: SessionSettings::new(startup),
        client: ClientConn::new(client, ctx.drain.clone(), ctx.close.clone()),
        state: ClientState::Idle,
        ctx: Arc::clone(&ctx),
        held: None,
        pin: None,
        scs: true,
        prepared: HashMap::new(),
        prepared_bytes: 0,
        unnamed: None,
        cancel_key,
        cancel_slot,
        saw_error: false,
        leader_until: None,
        pools: Vec::new(),
        counters: Vec::new(),
        acquire_wait: ctx
            .metrics
            .acquire_wait
            .with_label_values(&[&ctx.key.cluster, &ctx.key.port]),
    };
    // Boxed: the task of an idle session then holds only the small future
    // of the request loop, not the largest request's state machine.
    if Box::pin(s.greet()).await.is_ok() {
        s.serve().await;
    }
    s.release_held();
    ctx.cancels.remove(cancel_key);
}

/// The startup packet and authentication: the backend credentials and the
/// startup settings of a logged-in client, or `None` (refused or gone).
async fn login(
    client: &mut ClientStream,
    ctx: &Arc<SessionContext>,
    admitted: Result<(), String>,
    peer: SocketAddr,
) -> Option<(Credentials, Vec<(String, String)>)> {
    let tls = ctx.tls.load_full();
    let acceptor = tls.as_ref().and_then(|t| t.acceptor.as_ref());
    // PostgreSQL 17's direct TLS (`sslnegotiation=direct`): a ClientHello
    // first, and ALPN `postgresql` required.
    if let (Some(acceptor), ClientStream::Plain(tcp)) = (acceptor, &*client) {
        let mut first = [0u8; 1];
        if matches!(tcp.peek(&mut first).await, Ok(1)) && first[0] == 0x16 {
            if let Err(e) = client.start_tls(acceptor).await {
                tracing::info!(port = %ctx.key, error = %e, "TLS handshake failed");
                return None;
            }
            if client.alpn() != Some(crate::tls::server::ALPN_POSTGRESQL) {
                let text = "received direct SSL connection request without ALPN protocol negotiation extension";
                return refused(client, ctx, sqlstate::PROTOCOL_VIOLATION, text.into()).await;
            }
        }
    }
    let mut offer = match (client.is_tls(), acceptor.is_some()) {
        (true, _) => TlsOffer::Active,
        (false, true) => TlsOffer::Offer,
        (false, false) => TlsOffer::Refuse,
    };
    let params = loop {
        match handshake::handshake(client, offer).await {
            Ok(Handshake::Cancel(pid, key)) => {
                ctx.cancels.cancel((pid, key)).await;
                return None;
            }
            Ok(Handshake::Session(p)) => break p,
            Ok(Handshake::StartTls) => {
                let acceptor = acceptor?;
                client.write_all(b"S").await.ok()?;
                if let Err(e) = client.start_tls(acceptor).await {
                    tracing::info!(port = %ctx.key, error = %e, "TLS handshake failed");
                    return None;
                }
                offer = TlsOffer::Active;
            }
            Err(e) => {
                count_refusal(ctx, &e);
                return None;
            }
        }
    };
    if let Err(text) = admitted {
        return refused(client, ctx, sqlstate::TOO_MANY_CONNECTIONS, text).await;
    }
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let Some(user) = get("user") else {
        return refused(
            client,
            ctx,
            sqlstate::INVALID_PASSWORD,
            "no PostgreSQL user name specified in startup packet".into(),
        )
        .await;
    };
    let database = get("database").unwrap_or_else(|| user.clone());
    let require_tls = tls
        .as_ref()
        .is_some_and(|t| t.mode == ClientTlsMode::Require);
    let who = AccessClient {
        ip: peer.ip(),
        user: Some(&user),
        database: Some(&database),
        tls: client.is_tls(),
    };
    if (require_tls && !client.is_tls()) || !ctx.port.load().admits(&who) {
        // What pg_hba.conf answers when no line matches.
        let encryption = if client.is_tls() {
            "SSL encryption"
        } else {
            "no encryption"
        };
        let text = format!(
            "no pg_hba.conf entry for host \"{}\", user \"{user}\", database \"{database}\", {encryption}",
            peer.ip()
        );
        let code = sqlstate::INVALID_AUTHORIZATION_SPECIFICATION;
        return refused(client, ctx, code, text).await;
    }
    let globals = ctx.globals.load_full();
    let users = globals
        .clusters
        .get(&ctx.key.cluster)
        .map_or(&[][..], |c| c.users.as_slice());
    let entry = users.iter().find(|u| u.name == user).cloned();
    let secret = entry.as_ref().and_then(|u| ctx.secret(&u.password));
    // An unknown user is asked what most users would be: md5 only when
    // every configured user is md5, SCRAM otherwise.
    let mock;
    let login = match &secret {
        Some(s) => Login::Known(s),
        None => {
            let all_md5 =
                !users.is_empty() && users.iter().all(|u| crate::auth::is_md5_hash(&u.password));
            mock = crate::auth::mock_secret(&user, all_md5);
            Login::Unknown(&mock)
        }
    };
    let binding = client
        .is_tls()
        .then(|| tls.as_ref().map(|t| t.end_point.as_slice()))
        .flatten();
    let proved = match handshake::authenticate(client, &user, login, binding).await {
        Ok(keys) => keys,
        Err(e) => {
            count_refusal(ctx, &e);
            return None;
        }
    };
    let entry = entry?;
    let startup = match startup_settings(&params) {
        Ok(s) => s,
        Err(text) => {
            return refused(client, ctx, sqlstate::FEATURE_NOT_SUPPORTED, text).await;
        }
    };
    Some((
        Credentials {
            user,
            secret: backend_secret(&entry, proved),
            database,
        },
        startup,
    ))
}

/// What pgvane logs in to PostgreSQL with for `entry`: its
/// `backend_password`, else its password when plaintext, else what the
/// stored form allows without one: the keys the client proved against a
/// SCRAM verifier (pass-through), or the md5 hash itself.
fn backend_secret(entry: &UserConfig, proved: Option<ScramKeys>) -> BackendSecret {
    if let Some(pw) = &entry.backend_password {
        return BackendSecret::Password(pw.clone());
    }
    if crate::auth::is_md5_hash(&entry.password) {
        return BackendSecret::Md5Hash(entry.password.clone());
    }
    if entry.password.starts_with("SCRAM-SHA-256$") {
        return proved.map_or(BackendSecret::None, BackendSecret::Scram);
    }
    BackendSecret::Password(entry.password.clone())
}

/// Refuses a client that is logging in, counts and logs it; `None` for
/// `login` to return.
async fn refused<T>(
    client: &mut ClientStream,
    ctx: &SessionContext,
    code: sqlstate::SqlState,
    text: String,
) -> Option<T> {
    let e = handshake::refuse(client, code, text).await;
    count_refusal(ctx, &e);
    None
}

fn count_refusal(ctx: &SessionContext, e: &HandshakeError) {
    if let HandshakeError::Refused(code, text) = e {
        tracing::info!(port = %ctx.key, sqlstate = code.code(), "{text}");
        ctx.metrics
            .client_errors
            .with_label_values(&[&ctx.key.cluster, &ctx.key.port, code.code()])
            .inc();
    }
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

impl Session {
    /// Finishes the client's startup: a backend (the leader's, or a
    /// replica's while there is no leader) with the session's settings
    /// tells the server's parameters; then BackendKeyData and ready.
    async fn greet(&mut self) -> Result<(), SessionError> {
        if let Err(e) = self.checkout_for_login().await {
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
    async fn serve(&mut self) {
        let mut batch = Batch::default();
        loop {
            let idle = self.held.is_none() && batch.msgs.is_empty();
            let limit = self.idle_limit(&batch);
            let m = match self.client.read(idle, limit).await {
                Ok(m) => m,
                Err(e) => {
                    self.end_with(e).await;
                    return;
                }
            };
            if self.state == ClientState::AwaitingSync {
                match m.tag() {
                    b'S' => {
                        let status = self.status();
                        self.state = ClientState::from_status(status);
                        encode::ready_for_query(&mut self.client.out, status);
                        if self.client.flush().await.is_err() {
                            return;
                        }
                    }
                    b'X' => return,
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
                        if !self.recover(r, Ending::NoReady).await {
                            return;
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
                    batch.msgs.push(m);
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
                    batch.msgs.push(m);
                    let msgs = std::mem::take(&mut batch).msgs;
                    (Box::pin(self.extended(msgs, false)).await, ending)
                }
                b'X' => return,
                // CopyData/Done/Fail outside COPY: PostgreSQL ignores them.
                b'd' | b'c' | b'f' => continue,
                other => {
                    let e =
                        SessionError::Protocol(format!("invalid frontend message type {other}"));
                    self.end_with(e).await;
                    return;
                }
            };
            if !self.recover(result, ending).await {
                return;
            }
        }
    }

    /// Sends a fatal error (when it is one the client should see) and ends.
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
                port.idle_in_transaction_timeout_ms.filter(|ms| *ms > 0).map(|ms| {
                    (
                        Duration::from_millis(ms),
                        SessionError::Idle(
                            sqlstate::IDLE_IN_TRANSACTION_TIMEOUT,
                            "terminating connection due to idle-in-transaction timeout".into(),
                        ),
                    )
                })
            }
            ClientState::Idle if self.pin.is_some() => {
                port.pinned_idle_timeout_ms.filter(|ms| *ms > 0).map(|ms| {
                    (
                        Duration::from_millis(ms),
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

    async fn end_with(&mut self, e: SessionError) {
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
            Err(SessionError::ClientGone) => return false,
            Err(e) => e,
        };
        self.count_error(&err);
        let fatal = err.fatal(self.pin.is_some());
        if let SessionError::BackendLost { .. } = err {
            if let Some(h) = self.held.take() {
                h.pooled.discard();
            }
            cancel::set(&self.cancel_slot, None);
        }
        err.encode(&mut self.client.out, self.pin.is_some());
        if fatal {
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
        self.client.flush().await.is_ok()
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
