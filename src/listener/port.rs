//! A port's shared state as a tagged type: what every port has (settings,
//! map, limits, drain and close signals, lag hysteresis) beside what only
//! its kind has, a role port's relay context or a split port's session
//! context. Built by `app`, read by the accept loop, the evictor and admin.

use crate::admission::{Admissions, Limits, Ticket};
use crate::classifier::Classifier;
use crate::config::{Config, Mode, PortConfig, PortKey};
use crate::consistency::ClusterLink;
use crate::gate::Gate;
use crate::pool::{MoveCounter, PoolSet};

use crate::relay::{ByteCounters, Engine, RoleContext};
use crate::router::{self, Balancer, HealthBook, LagGate, LagRules, LagView, NodeKey};
use crate::session::{CancelRegistry, SessionContext};
use crate::telemetry::Metrics;
use crate::tls::{BackendSecurity, ServerTls};
use crate::topology::ClusterMap;
use crate::workers::Workers;
use arc_swap::{ArcSwap, ArcSwapOption};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often a split port's pools close backends idle past their timeout.
const POOL_SWEEP: std::time::Duration = std::time::Duration::from_secs(1);

/// What every port of the process shares.
#[derive(Debug, Clone)]
pub struct ProcessShared {
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Runtimes client tasks run on.
    pub workers: Arc<Workers>,
    /// Client counts for the global and per-address limits.
    pub admissions: Arc<Admissions>,
    /// The role ports' relay engine.
    pub engine: Arc<Engine>,
}

/// What a port serves, by `mode`.
#[derive(Debug)]
pub enum PortKind {
    /// `mode: tcp`: whole connections relayed to one node.
    Role(Arc<RoleContext>),
    /// `mode: split`: statement routing over pools.
    Split(Arc<SplitPort>),
}

/// A split port's own state: the context new sessions start with, and what
/// outlives a rebuilt context (client and backend TLS, cancel keys).
#[derive(Debug)]
pub struct SplitPort {
    /// What new sessions share; rebuilt by reload when the classifier's
    /// settings or the backends' TLS and login rules change.
    context: ArcSwap<SessionContext>,
    /// What outlives a rebuilt context.
    parts: SplitParts,
}

/// The parts of a split port a rebuilt context shares with the last one.
#[derive(Debug, Default)]
struct SplitParts {
    /// Client TLS, rebuilt from the files on every reload.
    tls: Arc<ArcSwapOption<ServerTls>>,
    /// Backend TLS and login rules, rebuilt on every reload.
    backend_security: Arc<ArcSwap<BackendSecurity>>,
    /// Cancel keys; kept across reloads that rebuild the context.
    cancels: Arc<CancelRegistry>,
}

impl SplitPort {
    /// The context a new session starts with.
    #[must_use]
    pub fn context(&self) -> Arc<SessionContext> {
        self.context.load_full()
    }
}

/// Everything the clients of one port share, whatever its kind. Lives as
/// long as the port, across reloads that change its settings or its mode.
#[derive(Debug)]
pub struct PortShared {
    /// Cluster and port name.
    pub key: PortKey,
    /// The port's settings (swapped by reload).
    pub config: Arc<ArcSwap<PortConfig>>,
    /// The whole config snapshot (timeouts).
    pub globals: Arc<ArcSwap<Config>>,
    /// The cluster's published map.
    pub map: Arc<ArcSwap<ClusterMap>>,
    /// The cluster's connect-failure book.
    pub health: Arc<HealthBook>,
    /// Lag verdicts of the last observation (hysteresis), read by routing.
    pub lag: Arc<ArcSwap<LagView>>,
    /// The hysteresis state behind `lag`; only the evictor touches it.
    lag_gate: std::sync::Mutex<LagGate>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Tracks client tasks for drain.
    pub clients: TaskTracker,
    /// Fires to disconnect every client of the port (removal, shutdown).
    pub close: CancellationToken,
    /// Fires when the port starts draining: idle split sessions end, the
    /// others after their transaction. A child of `close`, so it fires
    /// with it too and an idle session waits on this token alone.
    pub drain: CancellationToken,
    /// `drain` as split sessions watch it (see [`crate::beacon`]).
    pub drain_beacon: crate::beacon::Beacon,
    /// Runtimes client tasks run on.
    pub workers: Arc<Workers>,
    /// Client counts of every port, for the global and per-address limits.
    admissions: Arc<Admissions>,
    /// The role ports' relay engine.
    engine: Arc<Engine>,
    /// The cluster's replica positions, shared floors and map generation.
    pub link: Arc<ClusterLink>,
    /// This port's clients right now.
    active: Arc<AtomicUsize>,
    /// The operator's switches: PAUSE/RESUME and KILL (the console).
    pub gate: Arc<Gate>,
    /// The role or split part, swapped when reload changes `mode`; set
    /// by `new`, never empty after it.
    kind: ArcSwapOption<PortKind>,
}

impl PortShared {
    /// Creates a port's shared state, of the kind its `mode` names.
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
            engine,
        } = process;
        let close = CancellationToken::new();
        let drain = close.child_token();
        let port = Self {
            key,
            config: Arc::new(ArcSwap::from_pointee(config)),
            globals,
            map,
            health,
            lag: Arc::default(),
            lag_gate: std::sync::Mutex::default(),
            metrics,
            clients: TaskTracker::new(),
            drain_beacon: crate::beacon::Beacon::following(&drain),
            drain,
            gate: Arc::new(Gate::new(&close)),
            close,
            workers,
            admissions,
            engine,
            link,
            active: Arc::default(),
            kind: ArcSwapOption::empty(),
        };
        port.rebuild();
        port
    }

    /// The port's kind now; a client keeps the one it started with.
    #[must_use]
    pub fn kind(&self) -> Arc<PortKind> {
        self.kind
            .load_full()
            .unwrap_or_else(|| unreachable!("PortShared::new sets the kind"))
    }

    /// (Re)builds the kind's part from the current settings: on creation,
    /// and on reload when `mode`, the classifier's settings or the
    /// backends' TLS and login rules change. A split port keeps its TLS and
    /// cancel keys across a rebuilt context; a role port keeps its part
    /// (nothing in it depends on those settings). Clients already running
    /// keep the part they started with.
    pub fn rebuild(&self) {
        let current = self.kind.load_full();
        let kind = match (self.config.load().mode, current.as_deref()) {
            (Mode::Tcp, Some(PortKind::Role(_))) => return,
            (Mode::Tcp, _) => PortKind::Role(Arc::new(self.role_context())),
            (Mode::Split, Some(PortKind::Split(s))) => {
                s.context.store(Arc::new(self.session_context(&s.parts)));
                return;
            }
            (Mode::Split, _) => {
                let parts = SplitParts::default();
                let context = ArcSwap::from_pointee(self.session_context(&parts));
                PortKind::Split(Arc::new(SplitPort { context, parts }))
            }
        };
        self.kind.store(Some(Arc::new(kind)));
    }

    fn role_context(&self) -> RoleContext {
        // Eviction series start at 0, so `increase()` and alerts over
        // them answer 0 rather than nothing before the first eviction.
        for reason in router::policy::Ineligible::ALL {
            self.metrics.evictions.with_label_values(&[
                &self.key.cluster,
                &self.key.port,
                reason.label(),
            ]);
        }
        let labels = |dir: &str| {
            self.metrics
                .bytes
                .with_label_values(&[&self.key.cluster, &self.key.port, dir])
        };
        RoleContext {
            key: self.key.clone(),
            config: Arc::clone(&self.config),
            globals: Arc::clone(&self.globals),
            map: Arc::clone(&self.map),
            lag: Arc::clone(&self.lag),
            health: Arc::clone(&self.health),
            link: Arc::clone(&self.link),
            metrics: Arc::clone(&self.metrics),
            close: self.close.clone(),
            gate: Arc::clone(&self.gate),
            balancer: Arc::new(Balancer::default()),
            bytes: ByteCounters {
                to_server: labels("to_server"),
                to_client: labels("to_client"),
                moved: Arc::default(),
            },
            engine: Arc::clone(&self.engine),
        }
    }

    fn session_context(&self, split: &SplitParts) -> SessionContext {
        let cfg = self.config.load();
        let pools = Arc::new(
            PoolSet::new(Arc::clone(&split.backend_security)).counting_moves(MoveCounter {
                counter: self.metrics.pool_moves.clone(),
                cluster: self.key.cluster.clone(),
                port: self.key.port.clone(),
            }),
        );
        // Idle backends past server_idle_timeout_ms close even in pools no
        // request uses any more; the task ends with the set.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(PoolSet::sweep_every(Arc::downgrade(&pools), POOL_SWEEP));
        }
        SessionContext {
            key: self.key.clone(),
            port: Arc::clone(&self.config),
            globals: Arc::clone(&self.globals),
            map: Arc::clone(&self.map),
            lag: Arc::clone(&self.lag),
            health: Arc::clone(&self.health),
            pools,
            classifier: Arc::new(
                Classifier::new(cfg.read_only_functions.clone())
                    .with_max_query_len(cfg.resolved.max_classified_query_bytes),
            ),
            cancels: Arc::clone(&split.cancels),
            metrics: Arc::clone(&self.metrics),
            secrets: std::sync::Mutex::default(),
            drain: self.drain_beacon.clone(),
            close: self.close.clone(),
            gate: Arc::clone(&self.gate),
            workers: Arc::clone(&self.workers),
            tls: Arc::clone(&split.tls),
            link: Arc::clone(&self.link),
            eligible: arc_swap::ArcSwapOption::empty(),
        }
    }

    /// Takes a split port's client and backend TLS as read from the files
    /// now; a role port has none.
    pub fn set_security(&self, client: Option<Arc<ServerTls>>, backend: Arc<BackendSecurity>) {
        if let PortKind::Split(s) = &*self.kind() {
            s.parts.tls.store(client);
            s.parts.backend_security.store(backend);
        }
    }

    /// Counts a new client against the port's and the global limits, until
    /// the ticket is dropped.
    pub fn admit(&self, ip: IpAddr, limits: Limits) -> Ticket {
        self.admissions.admit(&self.active, ip, limits)
    }

    /// Clients connected right now.
    #[must_use]
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// A role port's relayed clients per node (empty for a split port).
    #[must_use]
    pub fn clients_by_node(&self) -> Vec<(NodeKey, usize)> {
        match &*self.kind() {
            PortKind::Role(r) => r.balancer.active(),
            PortKind::Split(_) => Vec::new(),
        }
    }

    /// A split port's current session context (`None` for a role port).
    #[must_use]
    pub fn split_context(&self) -> Option<Arc<SessionContext>> {
        match &*self.kind() {
            PortKind::Split(s) => Some(s.context()),
            PortKind::Role(_) => None,
        }
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
                    .lag_gate
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
        let role = match &*self.kind() {
            PortKind::Split(split) => {
                // Split ports disconnect nobody: pools of nodes that left the
                // map or changed role are closed, reads simply avoid lagging
                // replicas.
                // Pools of drained replicas close too (reads avoid them).
                split.context().pools.retain(|addr, role| {
                    map.members.iter().any(|m| {
                        router::policy::target_key(m, &cfg).addr == *addr
                            && (m.role.is_leader() == (role == "leader"))
                            && !(role == "replica" && m.drained)
                    })
                });
                return wake;
            }
            PortKind::Role(r) => Arc::clone(r),
        };
        let out = role.balancer.evict_where(|k| {
            router::policy::still_qualifies(k, map.member(&k.name), &cfg, &lag).err()
        });
        let now = Instant::now();
        let drains = |k: &NodeKey| {
            map.member(&k.name)
                .is_some_and(|m| router::policy::drains(m, &cfg))
        };
        for (node, clients) in role.balancer.drain_where(now, drains) {
            tracing::info!(port = %self.key, node = %node.name, clients, "draining: clients leave as their transactions end");
        }
        // What a drain's grace (`drain_timeout_ms`) did not see leave is
        // evicted: TLS streams, long transactions, idle-in-transaction.
        let grace = self.globals.load().drain_timeout;
        let (overdue, next) = role.balancer.overdue(now, grace, drains);
        for (node, clients) in overdue {
            tracing::info!(port = %self.key, node = %node.name, clients, "drain_timeout_ms passed: evicting what is left of a drained node's clients");
            self.metrics
                .evictions
                .with_label_values(&[&self.key.cluster, &self.key.port, "drained"])
                .inc_by(clients as u64);
        }
        let wake = match (wake, next) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
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
