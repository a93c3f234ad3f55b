//! One split-port client: handshake and authentication, then the request
//! loop. Each autocommit statement or transaction runs on a pooled backend
//! of the node the router chose; transaction state comes from ReadyForQuery;
//! session state pins the client to its leader backend until `DISCARD ALL`.
//! Named prepared statements are prepared transparently on whichever
//! backend runs them (`extended`).

mod extended;
pub mod handshake;

use crate::auth::Secret;
use crate::backend::{BackendError, Credentials};
use crate::classifier::{Classification, Classifier, Pin, Route};
use crate::config::{Config, PortConfig, PortKey};
use crate::pool::{PoolError, PoolKey, PoolSet, PoolSettings, Pooled};
use crate::protocol::encode::{self, Severity};
use crate::protocol::message::{self, Frontend, Message, ReadError};
use crate::protocol::sqlstate::{self, SqlState};
use crate::router::{self, HealthBook};
use crate::telemetry::Metrics;
use crate::topology::{ClusterMap, NodeAddr};
use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use handshake::{Handshake, HandshakeError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Where a running query can be cancelled: node and backend key.
type CancelTarget = Arc<Mutex<Option<(NodeAddr, (u32, u32))>>>;

/// pgvane-issued BackendKeyData → the backend a client's query runs on.
#[derive(Debug, Default)]
pub struct CancelRegistry {
    map: Mutex<HashMap<(u32, u32), CancelTarget>>,
}

impl CancelRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(u32, u32), CancelTarget>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn register(&self) -> ((u32, u32), CancelTarget) {
        let slot: CancelTarget = Arc::new(Mutex::new(None));
        loop {
            let b = crate::auth::random_bytes::<8>();
            let key = (
                u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff,
                u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            );
            let mut m = self.lock();
            if let std::collections::hash_map::Entry::Vacant(e) = m.entry(key) {
                e.insert(Arc::clone(&slot));
                return (key, slot);
            }
        }
    }

    fn remove(&self, key: (u32, u32)) {
        self.lock().remove(&key);
    }

    async fn cancel(&self, key: (u32, u32)) {
        let target = self.lock().get(&key).and_then(|t| {
            t.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        });
        if let Some((addr, backend_key)) = target {
            crate::backend::cancel(&addr, backend_key).await;
        }
    }
}

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
    /// The cluster's connect-failure book.
    pub health: Arc<HealthBook>,
    /// Backend pools.
    pub pools: Arc<PoolSet>,
    /// Statement classifier with its cache.
    pub classifier: Arc<Classifier>,
    /// Cancel keys.
    pub cancels: Arc<CancelRegistry>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Parsed user secrets by configured password text.
    pub secrets: Mutex<HashMap<String, Secret>>,
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
        }
    }
}

/// A failure while serving a request.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    /// The client went away.
    #[error("client gone")]
    ClientGone,
    /// The held backend broke; the text says how.
    #[error("connection to node {node} lost: {cause}")]
    BackendLost {
        /// Node name.
        node: String,
        /// What happened.
        cause: String,
    },
    /// No backend could be had (SQLSTATE, message).
    #[error("{1}")]
    NoBackend(SqlState, String),
    /// The server refused the backend login: forward its ErrorResponse.
    #[error("server refused login")]
    Refused(Message),
    /// The client broke the protocol.
    #[error("{0}")]
    Protocol(String),
}

struct Held {
    pooled: Pooled,
    node: String,
}

#[derive(Debug, Clone)]
struct Stmt {
    sql: Arc<str>,
    types: Bytes,
    key: u64,
    class: Classification,
}

/// One client's session state.
struct Session {
    ctx: Arc<SessionContext>,
    client: TcpStream,
    cbuf: BytesMut,
    out: Vec<u8>,
    creds: Credentials,
    held: Option<Held>,
    pin: Option<Pin>,
    scs: bool,
    prepared: HashMap<String, Stmt>,
    unnamed: Option<Stmt>,
    cancel_key: (u32, u32),
    cancel_slot: CancelTarget,
    /// An ErrorResponse came back for the current request.
    saw_error: bool,
    /// The held backend ran a replayed SET: close it instead of pooling it.
    tainted: bool,
    /// Bytes of the current request's answer already reached the client.
    forwarded: bool,
    /// Reads go to the leader until then: the session wrote just before.
    leader_until: Option<Instant>,
    /// Pools this session used, by node (valid while `creds` is unchanged).
    pools: Vec<(NodeAddr, Arc<crate::pool::Pool>)>,
    /// Metric handles this session used: (node, role, reason) → counter.
    counters: Vec<((String, &'static str, &'static str), prometheus::IntCounter)>,
    /// `pgvane_pool_acquire_seconds` for this port.
    acquire_wait: prometheus::Histogram,
}

/// Session settings pgvane replays as startup parameters of new backends
/// instead of pinning: client formatting and timeouts that drivers set at
/// connect (pgJDBC sends `SET extra_float_digits = 3`).
const REPLAYABLE: &[&str] = &[
    "application_name",
    "extra_float_digits",
    "datestyle",
    "timezone",
    "intervalstyle",
    "client_encoding",
    "bytea_output",
    "search_path",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
];

/// `SET [SESSION] name {= | TO} value` with one simple value for a
/// [`REPLAYABLE`] setting: (name, value) to replay.
fn replayable_set(sql: &str) -> Option<(String, String)> {
    let t = sql.trim().trim_end_matches(';').trim();
    let rest = t.get(..4).filter(|p| p.eq_ignore_ascii_case("set "))?;
    let mut rest = &t[rest.len()..];
    if rest
        .get(..8)
        .is_some_and(|p| p.eq_ignore_ascii_case("session "))
    {
        rest = &rest[8..];
    }
    let (name, value) = match rest.split_once('=') {
        Some(pair) => pair,
        None => {
            let lower = rest.to_ascii_lowercase();
            let at = lower.find(" to ")?;
            (&rest[..at], &rest[at + 4..])
        }
    };
    let name = name.trim().to_ascii_lowercase();
    if !REPLAYABLE.contains(&name.as_str()) {
        return None;
    }
    let value = value.trim();
    let plain = |v: &str| {
        !v.is_empty()
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.:+-/".contains(&b))
    };
    let value = match value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        Some(inner) if !inner.contains('\'') && !inner.contains('\\') => inner,
        Some(_) => return None,
        None if plain(value) => value,
        None => return None,
    };
    Some((name, value.to_owned()))
}

/// Serves one split-port client until it leaves.
pub async fn run(mut client: TcpStream, ctx: Arc<SessionContext>) {
    let _ = client.set_nodelay(true);
    let params = match handshake::handshake(&mut client).await {
        Ok(Handshake::Cancel(pid, key)) => return ctx.cancels.cancel((pid, key)).await,
        Ok(Handshake::Session(p)) => p,
        Err(e) => return count_refusal(&ctx, &e),
    };
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let app_name = get("application_name");
    let Some(user) = get("user") else {
        let e = handshake::refuse(
            &mut client,
            sqlstate::INVALID_PASSWORD,
            "no PostgreSQL user name specified in startup packet".into(),
        )
        .await;
        return count_refusal(&ctx, &e);
    };
    let database = get("database").unwrap_or_else(|| user.clone());
    let globals = ctx.globals.load_full();
    let entry = globals
        .clusters
        .get(&ctx.key.cluster)
        .and_then(|c| c.users.iter().find(|u| u.name == user).cloned());
    let secret = entry.as_ref().and_then(|u| ctx.secret(&u.password));
    if let Err(e) = handshake::authenticate(
        &mut client,
        &user,
        secret.as_ref().filter(|_| entry.is_some()),
    )
    .await
    {
        return count_refusal(&ctx, &e);
    }
    let Some(entry) = entry else { return };
    let mut startup: Vec<(String, String)> = params
        .into_iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "user" | "database" | "application_name" | "replication"
            )
        })
        .collect();
    startup.sort();
    let backend_password = entry.backend_password.clone().or_else(|| {
        let plain = !(entry.password.starts_with("SCRAM-SHA-256$")
            || (entry.password.len() == 35 && entry.password.starts_with("md5")));
        plain.then(|| entry.password.clone())
    });
    let (cancel_key, cancel_slot) = ctx.cancels.register();
    let mut s = Session {
        creds: Credentials {
            user,
            password: backend_password,
            database,
            params: startup,
        },
        ctx: Arc::clone(&ctx),
        client,
        cbuf: BytesMut::new(),
        out: Vec::new(),
        held: None,
        pin: None,
        scs: true,
        prepared: HashMap::new(),
        unnamed: None,
        cancel_key,
        cancel_slot,
        saw_error: false,
        tainted: false,
        forwarded: false,
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
    if Box::pin(s.greet(app_name.as_deref())).await.is_ok() {
        s.serve().await;
    }
    if let Some(h) = s.held.take() {
        if h.pooled.backend.status == b'I' && s.pin.is_none() {
            h.pooled.release();
        } else {
            h.pooled.discard();
        }
    }
    ctx.cancels.remove(cancel_key);
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

impl Session {
    /// Logs in on a leader backend to learn the server's parameters, then
    /// finishes the client's startup (ParameterStatus, BackendKeyData, ready).
    async fn greet(&mut self, app_name: Option<&str>) -> Result<(), SessionError> {
        let leader = Classification {
            route: Route::Leader,
            ..self.ctx.classifier.classify("select 1", true).0
        };
        let got = self.backend_for(&leader).await;
        if let Err(e) = got {
            let (code, text, raw) = describe(&e);
            match raw {
                Some(m) => self.out.extend_from_slice(m.raw()),
                None => encode::error_response(&mut self.out, Severity::Fatal, code, &text),
            }
            let _ = self.flush().await;
            return Err(e);
        }
        if let Some(h) = &self.held {
            for (k, v) in &h.pooled.backend.params {
                let v = if k == "application_name" {
                    app_name.unwrap_or("")
                } else {
                    v
                };
                encode::parameter_status(&mut self.out, k, v);
                if k == "standard_conforming_strings" {
                    self.scs = v == "on";
                }
            }
        }
        encode::backend_key_data(&mut self.out, self.cancel_key.0, self.cancel_key.1);
        encode::ready_for_query(&mut self.out, b'I');
        self.after_ready(b'I');
        self.flush().await
    }

    async fn flush(&mut self) -> Result<(), SessionError> {
        if !self.out.is_empty() {
            self.forwarded = true;
            self.client
                .write_all(&self.out)
                .await
                .map_err(|_| SessionError::ClientGone)?;
            self.out.clear();
            if self.out.capacity() > 64 * 1024 {
                self.out = Vec::new();
            }
        }
        Ok(())
    }

    /// Reads one client message; holds no buffer while the client idles.
    async fn read_client(&mut self) -> Result<Message, SessionError> {
        loop {
            if let Some(m) = message::try_cut(&mut self.cbuf)
                .map_err(|e| SessionError::Protocol(e.to_string()))?
            {
                if self.cbuf.is_empty() {
                    self.cbuf = BytesMut::new();
                }
                return Ok(m);
            }
            if self.cbuf.is_empty() {
                // About to wait on the client: hold no buffer while it idles.
                if self.out.capacity() > 0 && self.held.is_none() {
                    self.out = Vec::new();
                }
                self.client
                    .readable()
                    .await
                    .map_err(|_| SessionError::ClientGone)?;
            }
            self.cbuf.reserve(8192);
            match self.client.try_read_buf(&mut self.cbuf) {
                Ok(0) => return Err(SessionError::ClientGone),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if self.cbuf.is_empty() {
                        self.cbuf = BytesMut::new();
                    }
                }
                Err(_) => return Err(SessionError::ClientGone),
            }
        }
    }

    async fn serve(&mut self) {
        let mut batch: Vec<Message> = Vec::new();
        loop {
            let m = match self.read_client().await {
                Ok(m) => m,
                Err(SessionError::Protocol(text)) => {
                    encode::error_response(
                        &mut self.out,
                        Severity::Fatal,
                        sqlstate::PROTOCOL_VIOLATION,
                        &text,
                    );
                    let _ = self.flush().await;
                    return;
                }
                Err(_) => return,
            };
            let result = match m.tag() {
                b'Q' => Box::pin(self.simple(&m)).await,
                b'P' | b'B' | b'D' | b'C' | b'E' => {
                    batch.push(m);
                    continue;
                }
                b'S' | b'H' => {
                    batch.push(m);
                    let msgs = std::mem::take(&mut batch);
                    Box::pin(self.extended(msgs)).await
                }
                b'X' => return,
                b'd' | b'c' | b'f' => continue,
                other => {
                    let text = format!(
                        "pgvane does not support message type '{}' on split ports",
                        other as char
                    );
                    encode::error_response(
                        &mut self.out,
                        Severity::Error,
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        &text,
                    );
                    let status = self.status();
                    encode::ready_for_query(&mut self.out, status);
                    self.flush().await
                }
            };
            if !self.recover(result).await {
                return;
            }
        }
    }

    /// Turns a request failure into what the client sees; false ends the session.
    async fn recover(&mut self, result: Result<(), SessionError>) -> bool {
        let err = match result {
            Ok(()) => return true,
            Err(SessionError::ClientGone) => return false,
            Err(e) => e,
        };
        let (code, text, raw) = describe(&err);
        self.ctx
            .metrics
            .client_errors
            .with_label_values(&[&self.ctx.key.cluster, &self.ctx.key.port, code.code()])
            .inc();
        tracing::warn!(port = %self.ctx.key, sqlstate = code.code(), "{text}");
        let fatal = matches!(err, SessionError::Protocol(_))
            || (matches!(err, SessionError::BackendLost { .. }) && self.pin.is_some());
        if let SessionError::BackendLost { .. } = err {
            if let Some(h) = self.held.take() {
                h.pooled.discard();
            }
            self.clear_cancel();
        }
        match raw {
            Some(m) => self.out.extend_from_slice(m.raw()),
            None => encode::error_response(
                &mut self.out,
                if fatal {
                    Severity::Fatal
                } else {
                    Severity::Error
                },
                code,
                &text,
            ),
        }
        if !fatal {
            let status = self.status();
            encode::ready_for_query(&mut self.out, status);
        }
        self.flush().await.is_ok() && !fatal
    }

    fn status(&self) -> u8 {
        self.held.as_ref().map_or(b'I', |h| h.pooled.backend.status)
    }

    fn clear_cancel(&self) {
        *self
            .cancel_slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// Makes sure a backend is held for `class` (keeps the current one in a
    /// transaction or while pinned).
    async fn backend_for(&mut self, class: &Classification) -> Result<(), SessionError> {
        if self.held.is_some() {
            return Ok(());
        }
        let reads_own_writes = self.leader_until.is_some_and(|t| Instant::now() < t);
        let route = if self.pin.is_some() || class.pin.is_some() || reads_own_writes {
            Route::Leader
        } else {
            class.route
        };
        let map = self.ctx.map.load_full();
        let port = self.ctx.port.load_full();
        let pools = Arc::clone(&self.ctx.pools);
        let targets =
            router::split::targets(&map, &port, route, &self.ctx.health, Instant::now(), |a| {
                pools.busy(a)
            })
            .map_err(|why| {
                SessionError::NoBackend(sqlstate::CANNOT_CONNECT_NOW, format!("pgvane: {why}"))
            })?;
        let settings = self.ctx.pool_settings();
        let mut failures = Vec::new();
        for t in targets {
            let cached = self
                .pools
                .iter()
                .find(|(a, p)| *a == t.addr && p.role == t.role && !p.is_closed())
                .map(|(_, p)| Arc::clone(p));
            let pool = match cached {
                Some(p) => p,
                None => {
                    let key = PoolKey {
                        node: t.addr.clone(),
                        creds: self.creds.clone(),
                    };
                    let p = self.ctx.pools.get(&key, t.role, settings);
                    self.pools.retain(|(a, _)| *a != t.addr);
                    self.pools.push((t.addr.clone(), Arc::clone(&p)));
                    p
                }
            };
            let started = Instant::now();
            match pool.acquire().await {
                Ok(p) => {
                    self.ctx.health.success(&t.addr);
                    self.acquire_wait.observe(started.elapsed().as_secs_f64());
                    *self
                        .cancel_slot
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) =
                        Some((t.addr.clone(), p.backend.key));
                    self.count_statement(&t.name, t.role, class.reason.label());
                    self.held = Some(Held {
                        pooled: p,
                        node: t.name,
                    });
                    return Ok(());
                }
                Err(PoolError::Backend(BackendError::Refused { raw, .. })) => {
                    return Err(SessionError::Refused(raw));
                }
                Err(e @ PoolError::Timeout { .. }) => {
                    return Err(SessionError::NoBackend(
                        sqlstate::CONFIGURATION_LIMIT_EXCEEDED,
                        format!("pgvane: {e}"),
                    ));
                }
                Err(e) => {
                    self.ctx.health.failure(&t.addr, Instant::now());
                    self.ctx
                        .metrics
                        .connect_failures
                        .with_label_values(&[&self.ctx.key.cluster, &t.name])
                        .inc();
                    failures.push(format!("{} ({}): {e}", t.name, t.addr));
                }
            }
        }
        Err(SessionError::NoBackend(
            sqlstate::CONNECTION_FAILURE,
            format!(
                "pgvane: could not connect to any node for port \"{}\": {}",
                self.ctx.key,
                failures.join("; ")
            ),
        ))
    }

    fn count_statement(&mut self, node: &str, role: &'static str, reason: &'static str) {
        if let Some((_, c)) = self
            .counters
            .iter()
            .find(|((n, ro, re), _)| n == node && *ro == role && *re == reason)
        {
            c.inc();
            return;
        }
        let c = self.ctx.metrics.statements.with_label_values(&[
            &self.ctx.key.cluster,
            &self.ctx.key.port,
            node,
            role,
            reason,
        ]);
        c.inc();
        self.counters.push(((node.to_owned(), role, reason), c));
    }

    /// After a ReadyForQuery: release the backend when idle and unpinned.
    fn after_ready(&mut self, status: u8) {
        if let Some(h) = &mut self.held {
            h.pooled.backend.status = status;
        }
        if status == b'I' && self.pin.is_none() {
            if let Some(h) = self.held.take() {
                self.clear_cancel();
                if std::mem::take(&mut self.tainted) {
                    h.pooled.discard();
                } else {
                    h.pooled.release();
                }
            }
        }
    }

    fn apply_effects(&mut self, class: &Classification, sql: &str, status: Option<u8>) {
        let saw_error = std::mem::take(&mut self.saw_error);
        if class.route == Route::Leader
            && !matches!(
                class.reason,
                crate::classifier::Reason::Probe | crate::classifier::Reason::Session
            )
        {
            let window = self.ctx.port.load().read_your_writes_ms.unwrap_or(1000);
            if window > 0 {
                self.leader_until = Some(Instant::now() + Duration::from_millis(window));
            }
        }
        if class.pin == Some(Pin::Set) && self.pin.is_none() && status == Some(b'I') && !saw_error {
            if let Some((name, value)) = replayable_set(sql) {
                // Replayed on every new backend instead of pinning; the
                // backend that ran it carries it, so it is not pooled again.
                self.creds
                    .params
                    .retain(|(k, _)| !k.eq_ignore_ascii_case(&name));
                self.creds.params.push((name, value));
                self.creds.params.sort();
                self.pools.clear();
                self.tainted = true;
                return;
            }
        }
        if let Some(pin) = class.pin {
            if self.pin.is_none() {
                let head: String = sql.chars().take(80).collect();
                tracing::debug!(port = %self.ctx.key, reason = pin.label(), statement = %head, "session pinned to the leader");
                self.ctx
                    .metrics
                    .pins
                    .with_label_values(&[&self.ctx.key.cluster, &self.ctx.key.port, pin.label()])
                    .inc();
            }
            self.pin = Some(pin);
        }
        let first = crate::classifier::lexer::keywords(sql, 1);
        if class.discard_all || first.first().is_some_and(|k| k == "DEALLOCATE") {
            if class.discard_all {
                self.pin = None;
            }
            if let Some(h) = &mut self.held {
                // Our transparent statements on this backend are gone too.
                h.pooled.backend.prepared.clear();
            }
        }
    }

    async fn simple(&mut self, m: &Message) -> Result<(), SessionError> {
        let Some(Frontend::Query(sql)) = Frontend::parse(m) else {
            return Err(SessionError::Protocol("malformed Query message".into()));
        };
        let sql = sql.to_owned();
        let (class, hit) = self.ctx.classifier.classify(&sql, self.scs);
        self.count_cache(hit);
        let fresh = self.held.is_none();
        self.backend_for(&class).await?;
        self.forwarded = false;
        let mut result = self.run_simple(m).await;
        if matches!(result, Err(SessionError::BackendLost { .. })) && self.may_retry(fresh, &class)
        {
            self.retry_elsewhere(&class).await?;
            result = self.run_simple(m).await;
        }
        let status = result?;
        self.apply_effects(&class, &sql, Some(status));
        self.after_ready(status);
        Ok(())
    }

    /// A read may be retried when its backend was taken for it alone, it
    /// pins nothing, and no byte of its answer reached the client.
    fn may_retry(&self, fresh: bool, class: &Classification) -> bool {
        fresh
            && class.route == Route::Replica
            && class.pin.is_none()
            && self.pin.is_none()
            && !self.forwarded
    }

    /// Drops the lost backend (its node backs off) and takes another.
    async fn retry_elsewhere(&mut self, class: &Classification) -> Result<(), SessionError> {
        if let Some(h) = self.held.take() {
            tracing::info!(port = %self.ctx.key, node = %h.node, "read lost its backend before answering; retrying once");
            let addr = self
                .pools
                .iter()
                .find(|(_, p)| Arc::ptr_eq(p, h.pooled.pool()))
                .map(|(a, _)| a.clone());
            if let Some(addr) = addr {
                self.ctx.health.failure(&addr, Instant::now());
            }
            h.pooled.discard();
        }
        self.clear_cancel();
        // Nothing of the lost answer was sent: drop what was buffered of it.
        self.out.clear();
        self.backend_for(class).await
    }

    async fn run_simple(&mut self, m: &Message) -> Result<u8, SessionError> {
        self.send_backend(m.raw()).await?;
        self.pump_until_ready().await
    }

    fn count_cache(&self, hit: bool) {
        let c = if hit {
            &self.ctx.metrics.classifier_hits
        } else {
            &self.ctx.metrics.classifier_misses
        };
        c.inc();
    }

    fn lost(&self, cause: impl std::fmt::Display) -> SessionError {
        SessionError::BackendLost {
            node: self
                .held
                .as_ref()
                .map_or_else(String::new, |h| h.node.clone()),
            cause: cause.to_string(),
        }
    }

    async fn send_backend(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        let Some(h) = self.held.as_mut() else {
            return Err(self.lost("no backend"));
        };
        if let Err(e) = h.pooled.backend.send(bytes).await {
            return Err(self.lost(e));
        }
        Ok(())
    }

    async fn read_backend(&mut self) -> Result<Message, SessionError> {
        let Some(h) = self.held.as_mut() else {
            return Err(self.lost("no backend"));
        };
        if h.pooled.backend.drained() {
            // Nothing more buffered: let the client have what we have.
            self.flush().await?;
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
    async fn pump_until_ready(&mut self) -> Result<u8, SessionError> {
        loop {
            let m = self.read_backend().await?;
            self.out.extend_from_slice(m.raw());
            match m.tag() {
                b'E' => self.saw_error = true,
                b'Z' => {
                    let status = m.body().first().copied().unwrap_or(b'I');
                    self.flush().await?;
                    return Ok(status);
                }
                b'G' => {
                    self.flush().await?;
                    self.copy_in(false).await?;
                }
                b'S' => self.note_parameter(&m),
                _ => {}
            }
        }
    }

    fn note_parameter(&mut self, m: &Message) {
        if let Some(message::Backend::ParameterStatus(k, v)) = message::Backend::parse(m) {
            if k == "standard_conforming_strings" {
                self.scs = v == "on";
            }
        }
    }

    /// Relays CopyData/CopyDone/CopyFail from the client to the backend.
    /// After an extended-protocol COPY the server ignored the batch's Sync,
    /// so the client sends another one after CopyDone: relay up to it too.
    async fn copy_in(&mut self, extended: bool) -> Result<(), SessionError> {
        let mut pending: Vec<u8> = Vec::new();
        let mut copy_done = false;
        loop {
            let m = self.read_client().await?;
            pending.extend_from_slice(m.raw());
            copy_done |= matches!(m.tag(), b'c' | b'f');
            let done = copy_done && (!extended || m.tag() == b'S');
            if done || pending.len() > 64 * 1024 || self.cbuf.is_empty() {
                self.send_backend(&pending).await?;
                pending.clear();
            }
            if done {
                return Ok(());
            }
        }
    }
}

/// (SQLSTATE, client-safe text, raw server error to forward) for an error.
fn describe(e: &SessionError) -> (SqlState, String, Option<Message>) {
    match e {
        SessionError::ClientGone => (sqlstate::CONNECTION_FAILURE, "client gone".into(), None),
        SessionError::BackendLost { node, cause } => (
            sqlstate::CONNECTION_FAILURE,
            format!(
                "pgvane: connection to node {node} lost: {cause}; the transaction (if any) is rolled back"
            ),
            None,
        ),
        SessionError::NoBackend(code, text) => (*code, text.clone(), None),
        SessionError::Refused(raw) => (
            sqlstate::CONNECTION_FAILURE,
            String::new(),
            Some(raw.clone()),
        ),
        SessionError::Protocol(text) => (sqlstate::PROTOCOL_VIOLATION, text.clone(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::replayable_set;

    #[test]
    fn replayable_sets() {
        let r = |s: &str| replayable_set(s).map(|(k, v)| format!("{k}={v}"));
        assert_eq!(
            r("SET extra_float_digits = 3").as_deref(),
            Some("extra_float_digits=3")
        );
        assert_eq!(
            r("set session TimeZone to 'Europe/Berlin';").as_deref(),
            Some("timezone=Europe/Berlin")
        );
        assert_eq!(
            r("SET application_name = 'PostgreSQL JDBC Driver'").as_deref(),
            Some("application_name=PostgreSQL JDBC Driver")
        );
        assert_eq!(r("set search_path = a, b"), None, "lists pin");
        assert_eq!(r("set work_mem = '64MB'"), None, "not in the list");
        assert_eq!(r("set local statement_timeout = 5"), None);
        assert_eq!(r("set role x"), None);
        assert_eq!(r("set application_name = 'a''b'"), None);
    }
}
