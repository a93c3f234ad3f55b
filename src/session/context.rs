//! What the sessions of one split port share: settings and map snapshots,
//! pools, the classifier, cancel keys, the cluster's consistency link, the
//! port's drain and close signals, and parsed user secrets.

use super::CancelRegistry;
use crate::auth::Secret;
use crate::classifier::Classifier;
use crate::config::{Config, PortConfig, PortKey};
use crate::consistency::ClusterLink;
use crate::pool::{PoolSet, PoolSettings};
use crate::router::{HealthBook, LagView};
use crate::telemetry::Metrics;
use crate::tls::ServerTls;
use crate::topology::ClusterMap;
use arc_swap::{ArcSwap, ArcSwapOption};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

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
    /// transaction. Follows a child of `close` (an idle session waits on
    /// this one alone), as a beacon: read on every request.
    pub drain: crate::beacon::Beacon,
    /// Fires when the port closes: every session ends now.
    pub close: CancellationToken,
    /// The port's PAUSE/RESUME and KILL switches.
    pub gate: Arc<crate::gate::Gate>,
    /// The worker runtimes a session may move between.
    pub workers: Arc<crate::workers::Workers>,
    /// The port's client TLS, swapped by reload (`None`: answer `N`).
    pub tls: Arc<ArcSwapOption<ServerTls>>,
    /// The cluster's replica positions, shared floors and map generation.
    pub link: Arc<ClusterLink>,
    /// What the routing policy admits under the current map, port and lag
    /// snapshots, computed by the first request after one of them changes.
    pub eligible: ArcSwapOption<crate::router::split::Eligible>,
}

impl SessionContext {
    pub(super) fn secret(&self, password: &str) -> Option<Secret> {
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

    pub(super) fn pool_settings(&self) -> PoolSettings {
        let p = &self.port.load().resolved;
        let g = self.globals.load();
        PoolSettings {
            size: p.pool_size,
            acquire_timeout: p.pool_acquire_timeout,
            idle_timeout: p.server_idle_timeout,
            lifetime: p.server_lifetime,
            connect_timeout: g.connect_timeout,
            max_prepared: p.max_prepared_statements,
            socket: crate::backend::SocketOptions::for_servers(&g.tcp),
        }
    }
}
