//! The composition root: builds watchers, ports and the admin API from the
//! config, runs the command loop (reload, shutdown) and owns every
//! long-lived task. The only module that knows all the others.

use crate::admin::{self, AdminState, ClusterView};
use crate::config::{Config, PortConfig, PortKey};
use crate::consistency::ClusterLink;
use crate::control::Command;
use crate::listener::{self, PortShared};
use crate::relay::Engine;
use crate::router::HealthBook;
use crate::telemetry::Metrics;
use crate::tls;
use crate::topology::watcher::{WatchSettings, Watcher, WatcherHandle};
use crate::tracker::TrackerSettings;
use crate::workers::Workers;
use arc_swap::ArcSwap;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod prepare;
mod reload;
mod shutdown;

use prepare::PortSecurity;
pub use prepare::{Prepared, check, prepare};

/// Why pgvane could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A port or the admin API could not bind.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Which listener.
        what: String,
        /// The bind error.
        #[source]
        source: std::io::Error,
    },
    /// Signal handlers could not be installed.
    #[error("signals: {0}")]
    Signals(std::io::Error),
}

struct PortRt {
    shared: Arc<PortShared>,
    stop_accept: CancellationToken,
}

struct ClusterRt {
    watcher: WatcherHandle,
    stop: CancellationToken,
    health: Arc<HealthBook>,
    link: Arc<ClusterLink>,
    tracker: watch::Sender<Arc<TrackerSettings>>,
    ports: BTreeMap<String, PortRt>,
    ports_view: Arc<ArcSwap<Vec<Arc<PortShared>>>>,
}

/// The running pgvane.
struct App {
    path: PathBuf,
    globals: Arc<ArcSwap<Config>>,
    metrics: Arc<Metrics>,
    clusters: BTreeMap<String, ClusterRt>,
    admin_view: Arc<ArcSwap<BTreeMap<String, ClusterView>>>,
    tasks: TaskTracker,
    workers: Arc<Workers>,
    engine: Arc<Engine>,
    admissions: Arc<crate::admission::Admissions>,
    logs: crate::telemetry::LogControl,
}

/// Runs pgvane until SIGTERM/SIGINT (or a [`Command::Shutdown`]); client
/// tasks run on `workers`, role-port relays on `engine`, everything else
/// on the calling runtime.
///
/// # Errors
/// [`StartError`] when a listener cannot bind.
pub async fn run(
    path: PathBuf,
    prepared: Prepared,
    workers: Arc<Workers>,
    engine: Arc<Engine>,
    logs: crate::telemetry::LogControl,
) -> Result<(), StartError> {
    let Prepared {
        new: config,
        settings: mut watch,
        tls: mut port_security,
    } = prepared;
    let metrics = Arc::new(Metrics::new());
    let (commands, mut inbox) = mpsc::channel(16);
    let admin_listener =
        listener::bind(config.listen_address).map_err(|source| StartError::Bind {
            addr: config.listen_address,
            what: "listen_address".into(),
            source,
        })?;
    let console_listener = match &config.console {
        Some(c) => Some(listener::bind(c.listen).map_err(|source| StartError::Bind {
            addr: c.listen,
            what: "console.listen".into(),
            source,
        })?),
        None => None,
    };
    let mut app = App {
        path,
        globals: Arc::new(ArcSwap::from_pointee(config.clone())),
        metrics: Arc::clone(&metrics),
        clusters: BTreeMap::new(),
        admin_view: Arc::new(ArcSwap::from_pointee(BTreeMap::new())),
        tasks: TaskTracker::new(),
        workers,
        engine,
        admissions: Arc::default(),
        logs,
    };
    let mut listeners = HashMap::new();
    for (cname, c) in &config.clusters {
        for (pname, p) in &c.ports {
            let l = listener::bind(p.listen).map_err(|source| StartError::Bind {
                addr: p.listen,
                what: format!("clusters.{cname}.ports.{pname}.listen"),
                source,
            })?;
            listeners.insert(key(cname, pname), l);
        }
    }
    // Everything fallible was read by `prepare`: only binding was left.
    for (name, c) in &config.clusters {
        if let Some(settings) = watch.remove(name) {
            app.start_cluster(name, settings);
        }
        for (pname, p) in &c.ports {
            let k = key(name, pname);
            if let (Some(l), Some(tls)) = (listeners.remove(&k), port_security.remove(&k)) {
                app.start_port(name, pname, p, l, tls);
            }
        }
    }
    app.publish_views();
    let stop_admin = CancellationToken::new();
    let draining = CancellationToken::new();
    let admin_state = AdminState {
        clusters: Arc::clone(&app.admin_view),
        metrics,
        commands: commands.clone(),
        globals: Arc::clone(&app.globals),
        draining: draining.clone(),
    };
    if let Some(l) = console_listener {
        tokio::spawn(admin::console::serve(
            l,
            admin_state.clone(),
            stop_admin.clone(),
        ));
    }
    let admin_task = tokio::spawn({
        let stop = stop_admin.clone();
        async move {
            admin::serve(admin_listener, admin::router(admin_state), stop).await;
        }
    });
    let signals = signals_task(commands, stop_admin.clone())?;
    tracing::info!(admin = %config.listen_address, clusters = config.clusters.len(), "pgvane started");
    let readiness = tokio::spawn(announce_ready(
        app.clusters
            .iter()
            .map(|(n, c)| (n.clone(), c.watcher.generation.clone()))
            .collect(),
        draining.clone(),
    ));
    while let Some(cmd) = inbox.recv().await {
        match cmd {
            Command::Reload(reply) => {
                // Reloading and ready again only once start-up readiness
                // was announced: READY=1 must not come before the maps.
                let announced = readiness.is_finished();
                if announced {
                    crate::notify::reloading();
                }
                let result = app.reload().await;
                if announced {
                    crate::notify::ready("reloaded");
                }
                app.metrics
                    .reloads
                    .with_label_values(&[if result.is_ok() { "ok" } else { "error" }])
                    .inc();
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
            Command::Shutdown => break,
        }
    }
    draining.cancel();
    readiness.abort();
    app.shutdown().await;
    stop_admin.cancel();
    let _ = admin_task.await;
    signals.abort();
    tracing::info!("pgvane stopped");
    Ok(())
}

/// Tells the service manager pgvane is ready once every cluster has its
/// first map (ports listen before this task starts); until then the status
/// names the clusters still waiting for Patroni.
async fn announce_ready(
    mut clusters: Vec<(String, watch::Receiver<u64>)>,
    draining: CancellationToken,
) {
    let deadline = tokio::time::Instant::now() + READY_WAIT;
    loop {
        let waiting: Vec<String> = clusters
            .iter()
            .filter(|(_, g)| *g.borrow() == 0)
            .map(|(n, _)| n.clone())
            .collect();
        if waiting.is_empty() {
            break;
        }
        crate::notify::status(&format!("waiting for Patroni: {}", waiting.join(", ")));
        let changes = clusters.iter_mut().map(|(_, g)| Box::pin(g.changed()));
        tokio::select! {
            () = draining.cancelled() => return,
            () = tokio::time::sleep_until(deadline) => {
                // One cluster's Patroni being down must not keep the
                // others' ports from a started service (systemd would
                // kill and restart it at TimeoutStartSec): ready, saying
                // which clusters have no map; /ready stays 503 for them.
                let text = format!("ready; no map yet for {}", waiting.join(", "));
                tracing::warn!(clusters = %waiting.join(","), "{text}");
                crate::notify::ready(&text);
                return;
            }
            _ = futures_util::future::select_all(changes) => {}
        }
    }
    tracing::info!("ready: every port listens and every cluster has a map");
    crate::notify::ready("ready");
}

/// Longest time start-up readiness (`READY=1`) waits for every cluster's
/// first map.
const READY_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

fn signals_task(
    commands: mpsc::Sender<Command>,
    stop: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, StartError> {
    crate::signals::spawn(commands, stop).map_err(StartError::Signals)
}

fn key(cluster: &str, port: &str) -> PortKey {
    PortKey {
        cluster: cluster.to_owned(),
        port: port.to_owned(),
    }
}

impl App {
    /// The position tracker's settings for cluster `name` from the current
    /// config: the monitor user's credentials (database `postgres`), and
    /// the TLS rules of the cluster's first split port (libpq's defaults
    /// when it has none or its files cannot be read).
    fn tracker_settings(&self, name: &str) -> TrackerSettings {
        let config = self.globals.load();
        let cluster = config.clusters.get(name);
        let creds = cluster.and_then(|c| {
            let user = c.replica_positions.monitor_user.as_ref()?;
            let u = c.users.iter().find(|u| &u.name == user)?;
            let password = u
                .backend_password
                .clone()
                .unwrap_or_else(|| u.password.clone());
            Some(crate::backend::Credentials {
                user: u.name.clone(),
                secret: crate::backend::BackendSecret::Password(password),
                database: "postgres".to_owned(),
            })
        });
        let security = cluster
            .and_then(|c| {
                c.ports
                    .values()
                    .find(|p| p.mode == crate::config::Mode::Split)
            })
            .and_then(|p| {
                tls::BackendSecurity::from_config(
                    &p.server_tls.clone().unwrap_or_default(),
                    &p.server_require_auth,
                    p.server_channel_binding.unwrap_or_default(),
                )
                .ok()
            })
            .unwrap_or_default();
        let positions = cluster
            .map(|c| c.replica_positions.clone())
            .unwrap_or_default();
        TrackerSettings {
            poll: positions.poll,
            fast_poll: positions.fast_poll,
            creds,
            security: Arc::new(security),
            connect_timeout: config.connect_timeout,
            socket: crate::backend::SocketOptions::for_servers(&config.tcp),
        }
    }

    fn start_cluster(&mut self, name: &str, settings: WatchSettings) {
        let (watcher, handle) = Watcher::new(name, settings, Arc::clone(&self.metrics));
        let stop = CancellationToken::new();
        self.tasks.spawn(watcher.run(stop.clone()));
        let ports_view: Arc<ArcSwap<Vec<Arc<PortShared>>>> =
            Arc::new(ArcSwap::from_pointee(Vec::new()));
        self.tasks.spawn(evictor(
            handle.generation.clone(),
            Arc::clone(&ports_view),
            stop.clone(),
        ));
        let (tracker, tracker_rx) = watch::channel(Arc::new(self.tracker_settings(name)));
        let positions = crate::tracker::spawn(
            name.to_owned(),
            Arc::clone(&handle.map),
            handle.generation.clone(),
            tracker_rx,
            Arc::clone(&self.metrics),
            stop.clone(),
        );
        let link = Arc::new(ClusterLink::new(positions, handle.generation.clone()));
        self.clusters.insert(
            name.to_owned(),
            ClusterRt {
                watcher: handle,
                stop,
                health: Arc::new(HealthBook::default()),
                link,
                tracker,
                ports: BTreeMap::new(),
                ports_view,
            },
        );
    }

    fn start_port(
        &mut self,
        cluster: &str,
        port: &str,
        cfg: &PortConfig,
        l: TcpListener,
        tls: PortSecurity,
    ) {
        let Some(c) = self.clusters.get_mut(cluster) else {
            return;
        };
        let shared = Arc::new(PortShared::new(
            key(cluster, port),
            cfg.clone(),
            Arc::clone(&self.globals),
            Arc::clone(&c.watcher.map),
            Arc::clone(&c.health),
            Arc::clone(&c.link),
            listener::ProcessShared {
                metrics: Arc::clone(&self.metrics),
                workers: Arc::clone(&self.workers),
                admissions: Arc::clone(&self.admissions),
                engine: Arc::clone(&self.engine),
            },
        ));
        shared.set_security(tls.client, tls.backend);
        let stop_accept = CancellationToken::new();
        self.tasks
            .spawn(listener::serve(l, Arc::clone(&shared), stop_accept.clone()));
        tracing::info!(port = %shared.key, listen = %cfg.listen, "port listening");
        c.ports.insert(
            port.to_owned(),
            PortRt {
                shared,
                stop_accept,
            },
        );
    }

    fn publish_views(&self) {
        let mut views = BTreeMap::new();
        for (name, c) in &self.clusters {
            let ports: Vec<Arc<PortShared>> =
                c.ports.values().map(|p| Arc::clone(&p.shared)).collect();
            c.ports_view.store(Arc::new(ports.clone()));
            views.insert(
                name.clone(),
                ClusterView {
                    watcher: c.watcher.clone(),
                    ports,
                    positions: c.link.tracker.clone(),
                },
            );
        }
        self.admin_view.store(Arc::new(views));
    }
}

/// Runs eviction on every port of a cluster whenever a new map generation
/// is published, and when a port's lag grace period ends.
async fn evictor(
    mut generation: tokio::sync::watch::Receiver<u64>,
    ports: Arc<ArcSwap<Vec<Arc<PortShared>>>>,
    stop: CancellationToken,
) {
    let mut wake: Option<Instant> = None;
    loop {
        let grace_end = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            changed = generation.changed() => if changed.is_err() { return },
            () = grace_end => {}
        }
        wake = ports
            .load()
            .iter()
            .filter_map(|p| p.evict_unqualified())
            .min();
    }
}
