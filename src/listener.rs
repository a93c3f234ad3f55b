//! Role ports: bind, accept, and serve each client by choosing a node
//! (`router`), connecting with retry on the next node, and relaying
//! (`relay`). A port's shared state is [`PortShared`], built by `app`.

use crate::admission::{Admissions, Limits};
use crate::backend::SocketOptions;
use crate::classifier::Classifier;
use crate::config::Mode;
use crate::config::{AccessClient, Config, PortConfig, PortKey, RoleSel};
use crate::consistency::ClusterLink;
use crate::pool::PoolSet;
use crate::protocol::sqlstate::{self, SqlState};
use crate::relay::{self, ByteCounters, RelayEnd};
use crate::router::{self, Balancer, HealthBook, LagGate, LagRules, LagView, NoTarget, NodeKey};
use crate::session::{self, CancelRegistry, SessionContext};
use crate::telemetry::Metrics;
use crate::topology::{ClusterMap, NodeAddr};
use crate::workers::Workers;
use arc_swap::ArcSwap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Longest time pgvane spends telling a refused client why.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(5);

/// Reads a role-port client's first 8 bytes. A CancelRequest (the only
/// packet of its connection) is sent to every node the port could have
/// chosen, since the key names a backend on one of them and PostgreSQL
/// ignores keys it does not know; anything else is handed to the relay.
async fn first_bytes(client: &mut TcpStream, port: &PortShared) -> Option<[u8; 8]> {
    use tokio::io::AsyncReadExt;
    // Bounded by `client_login_timeout_ms` (PostgreSQL's `authentication_timeout`).
    let wait = port.globals.load().client_login_timeout;
    let mut head = [0u8; 8];
    tokio::time::timeout(wait, client.read_exact(&mut head))
        .await
        .ok()?
        .ok()?;
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let code = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    if len != 16 || code != crate::protocol::CANCEL_REQUEST_CODE {
        return Some(head);
    }
    let mut key = [0u8; 8];
    tokio::time::timeout(wait, client.read_exact(&mut key))
        .await
        .ok()?
        .ok()?;
    let pid = u32::from_be_bytes([key[0], key[1], key[2], key[3]]);
    let secret = u32::from_be_bytes([key[4], key[5], key[6], key[7]]);
    let map = port.map.load_full();
    let cfg = port.config.load_full();
    let mut addrs: Vec<NodeAddr> = map
        .members
        .iter()
        .map(|m| router::policy::target_key(m, &cfg).addr)
        .collect();
    addrs.sort();
    addrs.dedup();
    tracing::debug!(port = %port.key, nodes = addrs.len(), "forwarding a cancel request to every node of the port");
    futures_util::future::join_all(
        addrs
            .iter()
            .map(|a| crate::backend::cancel(a, (pid, secret))),
    )
    .await;
    None
}

/// What every port of the process shares.
#[derive(Debug, Clone)]
pub struct ProcessShared {
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Runtimes client tasks run on.
    pub workers: Arc<Workers>,
    /// Client counts for the global and per-address limits.
    pub admissions: Arc<Admissions>,
}

/// Everything a role port's clients share. Lives as long as the port,
/// across reloads that change its settings.
#[derive(Debug)]
pub struct PortShared {
    /// Cluster and port name.
    pub key: PortKey,
    /// The port's settings (swapped by reload).
    pub config: Arc<ArcSwap<PortConfig>>,
    /// Split ports: what their sessions share (pools, classifier, cancel keys).
    pub split: arc_swap::ArcSwapOption<SessionContext>,
    /// The whole config snapshot (timeouts).
    pub globals: Arc<ArcSwap<Config>>,
    /// The cluster's published map.
    pub map: Arc<ArcSwap<ClusterMap>>,
    /// Least-connections counts and eviction tokens.
    pub balancer: Arc<Balancer>,
    /// The cluster's connect-failure book.
    pub health: Arc<HealthBook>,
    /// Lag verdicts of the last observation (hysteresis), read by routing.
    pub lag: Arc<ArcSwap<LagView>>,
    /// The hysteresis state behind `lag`; only the evictor touches it.
    gate: std::sync::Mutex<LagGate>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Tracks client tasks for drain.
    pub clients: TaskTracker,
    /// Fires to disconnect every client of the port (removal, shutdown).
    pub close: CancellationToken,
    /// Fires when the port starts draining: idle split sessions end, the
    /// others after their transaction.
    pub drain: CancellationToken,
    /// Split ports' cancel keys; kept across reloads that rebuild the context.
    pub cancels: Arc<CancelRegistry>,
    /// Runtimes client tasks run on.
    pub workers: Arc<Workers>,
    /// Split ports' client TLS, rebuilt from the files on every reload.
    pub tls: Arc<arc_swap::ArcSwapOption<crate::tls::ServerTls>>,
    /// Split ports' backend TLS and login rules, rebuilt on every reload.
    pub backend_security: Arc<ArcSwap<crate::tls::BackendSecurity>>,
    /// Client counts of every port, for the global and per-address limits.
    pub admissions: Arc<Admissions>,
    /// The cluster's replica positions, shared floors and map generation.
    pub link: Arc<ClusterLink>,
    active: AtomicUsize,
    bytes: ByteCounters,
}

impl PortShared {
    /// Creates a port's shared state.
    #[must_use]
    pub fn new(
        key: PortKey,
        config: PortConfig,
        globals: Arc<ArcSwap<Config>>,
        map: Arc<ArcSwap<ClusterMap>>,
        health: Arc<HealthBook>,
        link: Arc<ClusterLink>,
        process: ProcessShared,
    ) -> Self {
        let ProcessShared {
            metrics,
            workers,
            admissions,
        } = process;
        let labels = |dir: &str| {
            metrics
                .bytes
                .with_label_values(&[&key.cluster, &key.port, dir])
        };
        let bytes = ByteCounters {
            to_server: labels("to_server"),
            to_client: labels("to_client"),
        };
        let config = Arc::new(ArcSwap::from_pointee(config));
        let split = arc_swap::ArcSwapOption::empty();
        let port = Self {
            split,
            config,
            globals,
            map,
            balancer: Arc::new(Balancer::default()),
            health,
            lag: Arc::default(),
            gate: std::sync::Mutex::default(),
            clients: TaskTracker::new(),
            close: CancellationToken::new(),
            drain: CancellationToken::new(),
            cancels: Arc::default(),
            workers,
            tls: Arc::default(),
            backend_security: Arc::default(),
            admissions,
            link,
            active: AtomicUsize::new(0),
            bytes,
            metrics,
            key,
        };
        port.rebuild_split();
        port
    }

    /// (Re)builds what split sessions share from the current settings: on
    /// creation, and on reload when `mode`, the classifier's settings or the
    /// backends' TLS and login rules change.
    /// Sessions already running keep the context they started with.
    pub fn rebuild_split(&self) {
        let cfg = self.config.load();
        let ctx = (cfg.mode == Mode::Split).then(|| {
            Arc::new(SessionContext {
                key: self.key.clone(),
                port: Arc::clone(&self.config),
                globals: Arc::clone(&self.globals),
                map: Arc::clone(&self.map),
                lag: Arc::clone(&self.lag),
                health: Arc::clone(&self.health),
                pools: Arc::new(PoolSet::new(Arc::clone(&self.backend_security))),
                classifier: Arc::new(
                    Classifier::new(cfg.read_only_functions.clone())
                        .with_max_query_len(cfg.resolved.max_classified_query_bytes),
                ),
                cancels: Arc::clone(&self.cancels),
                metrics: Arc::clone(&self.metrics),
                secrets: std::sync::Mutex::default(),
                drain: self.drain.clone(),
                close: self.close.clone(),
                tls: Arc::clone(&self.tls),
                link: Arc::clone(&self.link),
            })
        });
        self.split.store(ctx);
    }

    /// Counts a new client held while the leader was replaced.
    fn leader_waited(&self, outcome: &str, started: Instant) {
        self.metrics.leader_waited(
            &self.key.cluster,
            &self.key.port,
            outcome,
            started.elapsed(),
        );
    }

    /// Clients connected right now.
    #[must_use]
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Observes lag (hysteresis) and evicts clients of nodes that no longer
    /// qualify under the current map and port settings; records metrics
    /// and logs each eviction. Returns when to look again without a new
    /// map (a lag grace period ending).
    pub fn evict_unqualified(&self) -> Option<Instant> {
        let map = self.map.load();
        let cfg = self.config.load();
        let wake = match LagRules::of(&cfg) {
            Some(rules) => {
                let mut gate = self
                    .gate
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let (view, wake) = gate.observe(&map, &rules, Instant::now());
                self.lag.store(Arc::new(view));
                wake
            }
            None => {
                self.lag.store(Arc::default());
                None
            }
        };
        let lag = self.lag.load();
        if let Some(split) = self.split.load_full() {
            // Split ports disconnect nobody: pools of nodes that left the map
            // or changed role are closed, reads simply avoid lagging replicas.
            split.pools.retain(|addr, role| {
                map.members.iter().any(|m| {
                    router::policy::target_key(m, &cfg).addr == *addr
                        && (m.role.is_leader() == (role == "leader"))
                })
            });
            return wake;
        }
        let out = self.balancer.evict_where(|k| {
            router::policy::still_qualifies(k, map.member(&k.name), &cfg, &lag).err()
        });
        for (node, reason, clients) in out {
            let m = map.member(&node.name);
            let why = m.map_or_else(
                || "left the cluster".to_owned(),
                |m| reason.describe(m, &cfg),
            );
            tracing::info!(port = %self.key, node = %node.name, clients, reason = reason.label(), "evicting clients: node {why}");
            self.metrics
                .evictions
                .with_label_values(&[&self.key.cluster, &self.key.port, reason.label()])
                .inc_by(clients as u64);
        }
        wake
    }
}

/// Binds a listening socket with `SO_REUSEADDR`, as servers do.
///
/// # Errors
/// The bind error.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Accepts clients until `stop` fires; each client runs in `port.clients`.
pub async fn serve(listener: TcpListener, port: Arc<PortShared>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((client, peer)) => {
                port.metrics
                    .accepted
                    .with_label_values(&[&port.key.cluster, &port.key.port])
                    .inc();
                // Move the socket to a worker runtime: deregister here,
                // register with the worker's reactor inside the task.
                let std_client = match client.into_std() {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(port = %port.key, error = %e, "could not hand the client to a worker");
                        continue;
                    }
                };
                let (handle, placement) = port.workers.pick();
                let port = Arc::clone(&port);
                port.clients.clone().spawn_on(
                    async move {
                        let _placement = placement;
                        // Counted for the limits from accept to close.
                        let limits = {
                            let globals = port.globals.load();
                            Limits {
                                port: port.config.load().max_clients,
                                total: globals.max_clients,
                                per_address: globals.max_clients_per_address,
                            }
                        };
                        let ticket = port.admissions.admit(&port.active, peer.ip(), limits);
                        let split = port.split.load_full();
                        let admitted = match ticket.full {
                            None => Ok(()),
                            Some(full) => {
                                Err(full.text(&port.key.to_string(), split.is_some(), peer.ip()))
                            }
                        };
                        match TcpStream::from_std(std_client) {
                            Ok(client) => {
                                SocketOptions::for_clients(&port.globals.load().tcp)
                                    .apply(&client);
                                match split {
                                    Some(ctx) => session::run(client, ctx, admitted, peer).await,
                                    None => {
                                        use tracing::Instrument;
                                        // Every log line of the client names its address.
                                        serve_client(client, &port, admitted, peer)
                                            .instrument(tracing::info_span!("client", %peer))
                                            .await;
                                    }
                                }
                            }
                            Err(e) => tracing::warn!(port = %port.key, error = %e, "worker could not take the client"),
                        }
                    },
                    &handle,
                );
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(port = %port.key, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_client(
    mut client: TcpStream,
    port: &Arc<PortShared>,
    admitted: Result<(), String>,
    peer: SocketAddr,
) {
    let port = Arc::clone(port);
    let _ = client.set_nodelay(true);
    let cfg = port.config.load_full();
    if let Err(text) = admitted {
        let code = sqlstate::TOO_MANY_CONNECTIONS;
        return refuse(&mut client, &[], &port, code, &text).await;
    }
    let Some(head) = first_bytes(&mut client, &port).await else {
        return;
    };
    let who = AccessClient {
        ip: peer.ip(),
        user: None,
        database: None,
        tls: false,
    };
    if !cfg.admits(&who) {
        // What pg_hba.conf answers; the bytes are relayed unread, so the
        // user and database are not known here.
        let text = format!("no pg_hba.conf entry for host \"{}\"", peer.ip());
        let code = sqlstate::INVALID_AUTHORIZATION_SPECIFICATION;
        return refuse(&mut client, &head, &port, code, &text).await;
    }
    // The leader port (`roles: [leader]`) waits for a leader while one is
    // replaced, up to `leader_wait_ms`, instead of refusing.
    let wait = (cfg.roles == [RoleSel::Leader])
        .then_some(cfg.resolved.leader_wait)
        .filter(|d| !d.is_zero());
    let started = Instant::now();
    let mut generation = port.link.generation.clone();
    let mut waited = false;
    loop {
        let refusal = match connect_and_relay(&client, &head, &port).await {
            Ok(()) => {
                if waited {
                    port.leader_waited("leader", started);
                }
                return;
            }
            Err(r) => r,
        };
        // Only a leader being replaced is waited for: with no map (Patroni
        // unreachable since start) or an empty one, refuse at once.
        let known = !port.map.load().members.is_empty();
        let Some(wait) = wait.filter(|w| known && started.elapsed() < *w) else {
            if waited {
                port.leader_waited("timeout", started);
            }
            let (code, text) = refusal;
            return refuse(&mut client, &head, &port, code, &text).await;
        };
        if !waited {
            tracing::info!(port = %port.key, "no leader to relay to; waiting up to leader_wait_ms for one");
        }
        waited = true;
        generation.mark_unchanged();
        let until = (started + wait).min(Instant::now() + Duration::from_millis(100));
        let changed =
            tokio::time::timeout_at(tokio::time::Instant::from_std(until), generation.changed());
        tokio::select! {
            _ = changed => {}
            () = port.close.cancelled() => return,
        }
    }
}

/// Chooses a node, connects and relays until the client leaves; the
/// SQLSTATE and text to refuse with when no node could be used.
async fn connect_and_relay(
    client: &TcpStream,
    head: &[u8],
    port: &Arc<PortShared>,
) -> Result<(), (sqlstate::SqlState, String)> {
    let cfg = port.config.load_full();
    let map = port.map.load_full();
    let lag = port.lag.load_full();
    let targets = match router::choose(
        &map,
        &cfg,
        &port.balancer,
        &port.health,
        &lag,
        Instant::now(),
    ) {
        Ok(t) => t,
        Err(NoTarget::NoneQualifies(why)) => {
            let text = format!(
                "pgvane: no node of cluster \"{}\" qualifies for port \"{}\"",
                port.key.cluster, port.key.port
            );
            tracing::info!(port = %port.key, "no node qualifies: {why}");
            return Err((sqlstate::CANNOT_CONNECT_NOW, text));
        }
        Err(NoTarget::AllCoolingDown(nodes)) => {
            let text = format!(
                "pgvane: every node for port \"{}\" refused connections moments ago",
                port.key
            );
            tracing::info!(port = %port.key, "every node cooling down: {nodes}");
            return Err((sqlstate::CONNECTION_FAILURE, text));
        }
    };
    let (timeout, socket) = {
        let g = port.globals.load();
        (g.connect_timeout, SocketOptions::for_servers(&g.tcp))
    };
    let mut failures = Vec::new();
    for key in targets {
        let lease = port.balancer.lease(key.clone());
        match connect(&key.addr, timeout, socket).await {
            Ok(mut server) => {
                port.health.success(&key.addr);
                // The map may have changed since `choose`; a lease taken before
                // an eviction is cancelled by it, one taken after sees the new map.
                let current = port.map.load();
                if let Err(reason) = router::policy::still_qualifies(
                    &key,
                    current.member(&key.name),
                    &port.config.load(),
                    &port.lag.load(),
                ) {
                    failures.push(format!(
                        "{} stopped qualifying ({})",
                        key.name,
                        reason.label()
                    ));
                    continue;
                }
                drop(current);
                if tokio::io::AsyncWriteExt::write_all(&mut server, head)
                    .await
                    .is_err()
                {
                    failures.push(format!("{} closed at once", key.name));
                    continue;
                }
                run_relay(client, &server, port, &key, &lease).await;
                return Ok(());
            }
            Err(e) => {
                port.health.failure(&key.addr, Instant::now());
                port.metrics
                    .connect_failures
                    .with_label_values(&[&port.key.cluster, &key.name])
                    .inc();
                tracing::warn!(port = %port.key, node = %key.name, addr = %key.addr, error = %e, "connect to node failed");
                failures.push(format!("{} ({}): {e}", key.name, key.addr));
            }
        }
    }
    // The client learns no member names or addresses before it has
    // logged in; the log has them.
    tracing::info!(port = %port.key, "every connect failed: {}", failures.join("; "));
    let text = format!(
        "pgvane: could not connect to any node for port \"{}\"",
        port.key
    );
    Err((sqlstate::CONNECTION_FAILURE, text))
}

async fn run_relay(
    client: &TcpStream,
    server: &TcpStream,
    port: &PortShared,
    key: &NodeKey,
    lease: &router::Lease,
) {
    let _ = server.set_nodelay(true);
    let gauge =
        port.metrics
            .clients
            .with_label_values(&[&port.key.cluster, &port.key.port, &key.name]);
    gauge.inc();
    let end = tokio::select! {
        end = relay::relay(client, server, lease.evicted(), &port.bytes) => end,
        () = port.close.cancelled() => RelayEnd::Evicted,
    };
    gauge.dec();
    if end == RelayEnd::Evicted {
        tracing::debug!(port = %port.key, node = %key.name, "client evicted");
    }
}

/// Connects to a node within `timeout` and sets `socket` on the socket.
async fn connect(
    addr: &NodeAddr,
    timeout: Duration,
    socket: SocketOptions,
) -> io::Result<TcpStream> {
    match tokio::time::timeout(timeout, TcpStream::connect((addr.host.as_str(), addr.port))).await {
        Ok(r) => {
            let s = r?;
            socket.apply(&s);
            Ok(s)
        }
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connect timed out after {timeout:?}"),
        )),
    }
}

/// Refuses a client with `code`; `already` holds the bytes of its first
/// packet read so far.
async fn refuse(
    client: &mut TcpStream,
    already: &[u8],
    port: &PortShared,
    code: SqlState,
    text: &str,
) {
    tracing::warn!(port = %port.key, sqlstate = code.code(), "{text}");
    port.metrics
        .client_errors
        .with_label_values(&[&port.key.cluster, &port.key.port, code.code()])
        .inc();
    relay::refuse(client, already, code, text, REFUSAL_DEADLINE).await;
}
