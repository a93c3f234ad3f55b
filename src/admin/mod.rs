//! The admin HTTP API (axum): `/`, `/update_clusters`, `/clusters`,
//! `/metrics`, `/health`, `/ready`, `/reload`. Reads snapshots and stats;
//! reload is a [`Command`] to `app`, never done here. State-changing
//! requests need the configured bearer token and are refused when a
//! browser marks them cross-site. The PostgreSQL-protocol console
//! (`console`) reads the same state.

pub mod console;
mod operate;

use crate::control::{Command, ReloadReply};
use crate::listener::PortShared;
use crate::router::policy;
use crate::telemetry::Metrics;
use crate::topology::watcher::WatcherHandle;
use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::{mpsc, oneshot};

/// What admin sees of one cluster.
#[derive(Debug, Clone)]
pub struct ClusterView {
    /// The cluster's watcher (map snapshot and on-demand poll).
    pub watcher: WatcherHandle,
    /// The cluster's running ports.
    pub ports: Vec<Arc<PortShared>>,
    /// The cluster's replica positions.
    pub positions: crate::tracker::TrackerHandle,
}

/// Shared state of the admin router.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// Clusters by name, republished by `app` on reload.
    pub clusters: Arc<ArcSwap<BTreeMap<String, ClusterView>>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Where reload requests go.
    pub commands: mpsc::Sender<Command>,
    /// The running config (for `admin_token`), swapped on reload.
    pub globals: Arc<ArcSwap<crate::config::Config>>,
    /// Fires when shutdown starts: `/ready` answers 503 from then on.
    pub draining: tokio_util::sync::CancellationToken,
}

/// The admin API as an axum router (tests drive it with `oneshot`).
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/", get(|| async { "OK" }))
        .route(
            "/update_clusters",
            get(update_clusters)
                .post(update_clusters)
                .route_layer(axum::middleware::from_fn(not_cross_site)),
        )
        .route("/clusters", get(clusters))
        .route("/metrics", get(metrics))
        .route("/health", get(|| async { "OK" }))
        .route("/ready", get(ready))
        .route(
            "/reload",
            axum::routing::post(reload)
                .route_layer(axum::middleware::from_fn_with_state(state.clone(), guard)),
        )
        .with_state(state)
}

/// Longest a client may take to send a request's headers (slow-loris).
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Longest one request may take, body included (`/update_clusters` waits
/// for a poll round, which the API timeout bounds far below this).
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves `app` on `listener` until `stop`: HTTP/1.1 with
/// [`HEADER_READ_TIMEOUT`] and [`REQUEST_TIMEOUT`] (`axum::serve` has
/// neither), then lets open requests finish for up to 5 s.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    stop: tokio_util::sync::CancellationToken,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let app = app.layer(axum::middleware::from_fn(request_timeout));
    let conns = tokio_util::task::TaskTracker::new();
    loop {
        let (sock, peer) = tokio::select! {
            () = stop.cancelled() => break,
            a = listener.accept() => match a {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let service = hyper_util::service::TowerToHyperService::new(
            app.clone().layer(axum::Extension(Peer(peer))),
        );
        let stop = stop.clone();
        conns.spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(sock), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conn).await;
                }
            }
        });
    }
    conns.close();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conns.wait()).await;
}

/// Answers 503 to a request that takes longer than [`REQUEST_TIMEOUT`].
async fn request_timeout(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "request timed out\n").into_response(),
    }
}

/// The address an admin request came from, set per connection by
/// [`serve`]; a request without it (none in production) counts as remote.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

/// A refusal when a browser page sent the request cross-site.
fn refuse_cross_site(headers: &axum::http::HeaderMap) -> Option<Response> {
    let cross_site = headers.contains_key(axum::http::header::ORIGIN)
        || headers
            .get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes() != b"same-origin" && v.as_bytes() != b"none");
    cross_site.then(|| {
        (
            StatusCode::FORBIDDEN,
            "pgvane: state-changing admin requests from a browser page are refused\n",
        )
            .into_response()
    })
}

/// `/update_clusters` only makes the next Patroni poll come sooner (the
/// watcher coalesces and spaces them), so it needs no token, as Patroni's
/// callbacks call it; a browser page still cannot.
async fn not_cross_site(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if let Some(refusal) = refuse_cross_site(req.headers()) {
        return refusal;
    }
    next.run(req).await
}

/// Lets `/reload` through only with the bearer token when `admin_token` is
/// set, only from a loopback peer when it is not, and never when a browser
/// sent it cross-site.
async fn guard(
    State(s): State<AdminState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(refusal) = refuse_cross_site(req.headers()) {
        return refusal;
    }
    if let Some(refusal) = refuse_unauthorized(&s, &req) {
        return refusal;
    }
    next.run(req).await
}

/// Why `/reload` is refused: a wrong or missing bearer token when
/// `admin_token` is set, a peer other than loopback when it is not.
fn refuse_unauthorized(s: &AdminState, req: &axum::extract::Request) -> Option<Response> {
    let globals = s.globals.load();
    let Some(token) = globals.admin_token.as_deref() else {
        let local = req
            .extensions()
            .get::<Peer>()
            .is_some_and(|p| p.0.ip().is_loopback());
        return (!local).then(|| {
            (
                StatusCode::FORBIDDEN,
                "pgvane: without `admin_token`, this admin request is taken only from loopback\n",
            )
                .into_response()
        });
    };
    let given = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    (!constant_time_eq(given.as_bytes(), token.as_bytes())).then(|| {
        (
            StatusCode::UNAUTHORIZED,
            [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
            "pgvane: this admin request needs `Authorization: Bearer <admin_token>`\n",
        )
            .into_response()
    })
}

/// Compares without stopping at the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn update_clusters(State(s): State<AdminState>) -> Response {
    let views = s.clusters.load_full();
    let polls = views
        .iter()
        .map(|(name, v)| async move { (name.clone(), v.watcher.update_now().await) });
    let results = futures_util::future::join_all(polls).await;
    let mut body = serde_json::Map::new();
    let mut ok = true;
    for (name, r) in results {
        match r {
            Ok(generation) => body.insert(name, json!({"generation": generation})),
            Err(error) => {
                ok = false;
                body.insert(name, json!({"error": error}))
            }
        };
    }
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(Value::Object(body))).into_response()
}

/// A member's last known WAL position, with its age.
fn position_json(p: Option<&crate::topology::Position>) -> Value {
    p.map_or(Value::Null, |p| {
        json!({
            "lsn": p.lsn.to_string(), "timeline": p.timeline, "streaming": p.streaming,
            "source": format!("{:?}", p.source).to_lowercase(),
            "age_ms": u64::try_from(p.polled_at.elapsed().as_millis()).unwrap_or(u64::MAX),
        })
    })
}

fn cluster_json(view: &ClusterView) -> Value {
    let map = view.watcher.map.load();
    let positions = view.positions.current();
    let ports: Vec<_> = view
        .ports
        .iter()
        .map(|p| (p, p.config.load_full()))
        .collect();
    let members: Vec<Value> = map
        .members
        .iter()
        .map(|m| {
            let eligible: serde_json::Map<String, Value> = ports
                .iter()
                .map(|(p, cfg)| {
                    let verdict = match policy::check(m, cfg, &p.lag.load()) {
                        Ok(()) => json!(true),
                        Err(reason) => json!(reason.label()),
                    };
                    (p.key.port.clone(), verdict)
                })
                .collect();
            json!({
                "name": m.name, "role": m.role, "state": m.state, "host": m.addr.host,
                "port": m.addr.port, "lag": m.lag, "receive_lag": m.receive_lag,
                "replay_paused": m.replay_paused, "lag_source": m.lag_source,
                "self_report": m.self_report, "noloadbalance": m.noloadbalance, "drained": m.drained,
                "nofailover": m.nofailover, "timeline": m.timeline, "eligible": eligible,
                "position": position_json(
                    positions.get(&m.name).or(positions.leader.as_ref().filter(|l| *l.member == *m.name)),
                ),
            })
        })
        .collect();
    let port_json: serde_json::Map<String, Value> = ports
        .iter()
        .map(|(p, cfg)| {
            let clients: serde_json::Map<String, Value> = p
                .clients_by_node()
                .into_iter()
                .map(|(k, n)| (k.name.to_string(), json!(n)))
                .collect();
            let roles: Vec<String> = cfg
                .roles
                .iter()
                .map(|r| format!("{r:?}").to_lowercase())
                .collect();
            (
                p.key.port.clone(),
                json!({"listen": cfg.listen.to_string(), "mode": format!("{:?}", cfg.mode).to_lowercase(), "roles": roles,
                       "host_port": cfg.host_port, "max_lag_in_bytes": cfg.max_lag_in_bytes,
                       "clients": p.active(), "clients_by_node": clients, "paused": p.gate.is_paused()}),
            )
        })
        .collect();
    json!({
        "generation": map.generation, "stale": map.stale, "paused": map.paused,
        "updated_at": map.updated_at.duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
        "age_seconds": age(map.updated_at), "source": map.source, "last_error": map.last_error,
        "disagreement": map.disagreement,
        "skipped_members": map.skipped, "members": members, "ports": port_json,
        "epoch": positions.epoch, "leader_timeline": positions.leader_timeline,
    })
}

fn age(t: SystemTime) -> Option<f64> {
    (t != SystemTime::UNIX_EPOCH).then(|| {
        SystemTime::now()
            .duration_since(t)
            .map_or(0.0, |d| d.as_secs_f64())
    })
}

async fn clusters(State(s): State<AdminState>) -> axum::Json<Value> {
    let views = s.clusters.load();
    let body: serde_json::Map<String, Value> = views
        .iter()
        .map(|(n, v)| (n.clone(), cluster_json(v)))
        .collect();
    axum::Json(Value::Object(body))
}

async fn metrics(State(s): State<AdminState>) -> Response {
    // Gauges computed here from the running state start empty at each
    // scrape: a port or cluster a reload removed (or a port whose mode
    // changed) leaves no series behind.
    for g in [
        &s.metrics.port_clients,
        &s.metrics.pool,
        &s.metrics.cluster_leader,
    ] {
        g.reset();
    }
    s.metrics.map_age.reset();
    s.metrics.map_updated.reset();
    for (name, v) in s.clusters.load().iter() {
        for p in &v.ports {
            let split = p.split_context();
            let mode = if split.is_some() { "split" } else { "tcp" };
            s.metrics
                .port_clients
                .with_label_values(&[name, &p.key.port, mode])
                .set(i64::try_from(p.active()).unwrap_or(i64::MAX));
            let Some(split) = split else {
                continue;
            };
            for (key, _role, open, idle, waiting) in split.pools.snapshot() {
                let node = key.node.to_string();
                for (state, n) in [
                    ("open", open),
                    ("idle", idle),
                    ("active", open.saturating_sub(idle)),
                    ("waiting", waiting),
                ] {
                    s.metrics
                        .pool
                        .with_label_values(&[name, &p.key.port, &node, state])
                        .set(i64::try_from(n).unwrap_or(i64::MAX));
                }
            }
        }
        let map = v.watcher.map.load();
        // Before Patroni's first answer: no age or timestamp series at all
        // (a sentinel would read as a real value).
        if let Some(a) = age(map.updated_at) {
            s.metrics.map_age.with_label_values(&[name]).set(a);
            let at = map
                .updated_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            s.metrics.map_updated.with_label_values(&[name]).set(at);
        }
        // A standby cluster's leader streams from its source (Patroni
        // 3.0.4+ reports `streaming`): running, for this gauge.
        let leader = map.leader().is_some_and(|m| {
            matches!(
                m.state,
                crate::topology::MemberState::Running | crate::topology::MemberState::Streaming
            )
        });
        s.metrics
            .cluster_leader
            .with_label_values(&[name])
            .set(i64::from(leader));
    }
    (
        [("content-type", "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

async fn ready(State(s): State<AdminState>) -> Response {
    if s.draining.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "draining: shutting down, not accepting clients",
        )
            .into_response();
    }
    let views = s.clusters.load();
    let waiting: Vec<&String> = views
        .iter()
        .filter(|(_, v)| v.watcher.map.load().generation == 0)
        .map(|(n, _)| n)
        .collect();
    if waiting.is_empty() {
        (StatusCode::OK, "OK").into_response()
    } else {
        let names: Vec<&str> = waiting.iter().map(|s| s.as_str()).collect();
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no Patroni answer yet for: {}", names.join(", ")),
        )
            .into_response()
    }
}

async fn reload(State(s): State<AdminState>) -> Response {
    let (tx, rx) = oneshot::channel();
    if s.commands.send(Command::Reload(Some(tx))).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    let reply: ReloadReply = rx.await.unwrap_or_else(|_| Err("shutting down".into()));
    match reply {
        Ok(diff) => (StatusCode::OK, format!("reloaded: {diff}\n")).into_response(),
        Err(errors) => (
            StatusCode::BAD_REQUEST,
            format!("reload rejected, old configuration kept:\n{errors}\n"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests;
