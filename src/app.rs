//! The composition root: builds watchers, ports and the admin API from the
//! config, runs the command loop (reload, shutdown) and owns every
//! long-lived task. The only module that knows all the others.

use crate::admin::{self, AdminState, ClusterView};
use crate::config::{self, ClusterConfig, Config, ConfigDiff, PortConfig, PortKey};
use crate::consistency::ClusterLink;
use crate::control::{Command, ReloadReply};
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
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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
    /// A cluster's TLS files are unusable.
    #[error("clusters.{cluster}.tls: {source}")]
    Tls {
        /// Cluster name.
        cluster: String,
        /// The TLS error.
        #[source]
        source: tls::TlsError,
    },
    /// A split port's TLS files are unusable.
    #[error("clusters.{cluster}.ports.{port}.{field}: {source}")]
    PortTls {
        /// Cluster name.
        cluster: String,
        /// Port name.
        port: String,
        /// `tls` or `server_tls`.
        field: &'static str,
        /// The TLS error.
        #[source]
        source: tls::TlsError,
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
}

/// Runs pgvane until SIGTERM/SIGINT (or a [`Command::Shutdown`]); client
/// tasks run on `workers`, role-port relays on `engine`, everything else
/// on the calling runtime.
///
/// # Errors
/// [`StartError`] when a listener cannot bind or TLS files are unusable.
pub async fn run(
    path: PathBuf,
    config: Config,
    workers: Arc<Workers>,
    engine: Arc<Engine>,
) -> Result<(), StartError> {
    let metrics = Arc::new(Metrics::new());
    let (commands, mut inbox) = mpsc::channel(16);
    let admin_listener = TcpListener::bind(config.listen_address)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.listen_address,
            what: "listen_address".into(),
            source,
        })?;
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
    for (name, c) in &config.clusters {
        let settings = watch_settings(&config, name, c).map_err(|source| StartError::Tls {
            cluster: name.clone(),
            source,
        })?;
        app.start_cluster(name, settings);
        for (pname, p) in &c.ports {
            let tls = port_tls(p).map_err(|(field, source)| StartError::PortTls {
                cluster: name.clone(),
                port: pname.clone(),
                field,
                source,
            })?;
            if let Some(l) = listeners.remove(&key(name, pname)) {
                app.start_port(name, pname, p, l, tls);
            }
        }
    }
    app.publish_views();
    let stop_admin = CancellationToken::new();
    let admin_state = AdminState {
        clusters: Arc::clone(&app.admin_view),
        metrics,
        commands: commands.clone(),
        globals: Arc::clone(&app.globals),
    };
    let admin_task = tokio::spawn({
        let stop = stop_admin.clone();
        async move {
            admin::serve(admin_listener, admin::router(admin_state), stop).await;
        }
    });
    let signals = signals_task(commands, stop_admin.clone())?;
    tracing::info!(admin = %config.listen_address, clusters = config.clusters.len(), "pgvane started");
    while let Some(cmd) = inbox.recv().await {
        match cmd {
            Command::Reload(reply) => {
                let result = app.reload().await;
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
    app.shutdown().await;
    stop_admin.cancel();
    let _ = admin_task.await;
    signals.abort();
    tracing::info!("pgvane stopped");
    Ok(())
}

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

fn watch_settings(
    config: &Config,
    _name: &str,
    c: &ClusterConfig,
) -> Result<WatchSettings, tls::TlsError> {
    let timeout = config.api_timeout.min(config.cluster_update_interval);
    Ok(WatchSettings {
        hosts: c.hosts.clone(),
        interval: config.cluster_update_interval,
        timeout,
        client: tls::patroni_client(c.tls.as_ref(), timeout)?,
    })
}

/// A port's TLS, both ways, as read from its files.
struct PortSecurity {
    /// To clients (split ports with a `tls` block).
    client: Option<Arc<tls::ServerTls>>,
    /// To backends (split ports).
    backend: Arc<tls::BackendSecurity>,
}

/// A split port's client TLS from its `tls` block and its backend TLS from
/// `server_tls` (files read now); the error names the block.
fn port_tls(p: &PortConfig) -> Result<PortSecurity, (&'static str, tls::TlsError)> {
    let split = p.mode == config::Mode::Split;
    let client = match &p.tls {
        Some(t) if split => Some(Arc::new(
            tls::ServerTls::from_config(t).map_err(|e| ("tls", e))?,
        )),
        _ => None,
    };
    let backend = if split {
        tls::BackendSecurity::from_config(
            &p.server_tls.clone().unwrap_or_default(),
            &p.server_require_auth,
            p.server_channel_binding.unwrap_or_default(),
        )
        .map_err(|e| ("server_tls", e))?
    } else {
        tls::BackendSecurity::default()
    };
    Ok(PortSecurity {
        client,
        backend: Arc::new(backend),
    })
}

/// What a reload reads and computes before it changes anything: the new
/// config (passwords hashed), watcher clients and port TLS (files read).
struct Prepared {
    new: Config,
    settings: BTreeMap<String, WatchSettings>,
    tls: HashMap<PortKey, PortSecurity>,
}

/// The part of a reload that touches files and burns CPU; runs on a blocking
/// thread so the runtime that accepts clients never waits on them.
fn prepare(path: &std::path::Path) -> Result<Prepared, String> {
    let new = config::load_file(path).map_err(|e| e.to_string())?;
    let mut settings = BTreeMap::new();
    let mut tls = HashMap::new();
    let mut errors = Vec::new();
    for (name, c) in &new.clusters {
        match watch_settings(&new, name, c) {
            Ok(s) => {
                settings.insert(name.clone(), s);
            }
            Err(e) => errors.push(format!("clusters.{name}.tls: {e}")),
        }
        for (pname, p) in &c.ports {
            match port_tls(p) {
                Ok(t) => {
                    tls.insert(key(name, pname), t);
                }
                Err((field, e)) => {
                    errors.push(format!("clusters.{name}.ports.{pname}.{field}: {e}"));
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(Prepared { new, settings, tls })
    } else {
        Err(errors.join("\n"))
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

    /// Applies the config file by diff, in numbered steps; any failure
    /// before step 4 keeps the old config untouched.
    async fn reload(&mut self) -> ReloadReply {
        // 1. Load and validate the whole file, build watcher clients and
        //    port TLS, off this runtime.
        let path = self.path.clone();
        let prepared = tokio::task::spawn_blocking(move || prepare(&path))
            .await
            .map_err(|e| format!("reload failed: {e}"))
            .and_then(|r| r);
        let Prepared {
            new,
            settings,
            tls: mut port_tls,
        } = prepared.map_err(|text| {
            tracing::error!("reload rejected, old configuration kept:\n{text}");
            text
        })?;
        // 2. Diff against the running config.
        let old = self.globals.load_full();
        let diff = ConfigDiff::between(&old, &new);
        // 3. Prepare what else can fail: new listeners.
        let mut errors = Vec::new();
        let mut bound = HashMap::new();
        for k in diff.ports_added.iter().chain(&diff.ports_changed) {
            let cfg = &new.clusters[&k.cluster].ports[&k.port];
            let rebind = old
                .clusters
                .get(&k.cluster)
                .and_then(|c| c.ports.get(&k.port))
                .is_none_or(|o| o.listen != cfg.listen);
            if rebind {
                match listener::bind(cfg.listen) {
                    Ok(l) => {
                        bound.insert(k.clone(), l);
                    }
                    Err(e) => errors.push(format!(
                        "clusters.{}.ports.{}.listen: cannot listen on {}: {e}",
                        k.cluster, k.port, cfg.listen
                    )),
                }
            }
        }
        if !errors.is_empty() {
            let text = errors.join("\n");
            tracing::error!("reload rejected, old configuration kept:\n{text}");
            return Err(text);
        }
        // 4. Publish the new config.
        self.globals.store(Arc::new(new.clone()));
        let drain = new.drain_timeout;
        // 5. Stop removed ports (drain) and removed clusters.
        for k in &diff.ports_removed {
            if let Some(p) = self
                .clusters
                .get_mut(&k.cluster)
                .and_then(|c| c.ports.remove(&k.port))
            {
                self.drain_port(p, drain);
            }
        }
        for name in &diff.clusters_removed {
            if let Some(c) = self.clusters.remove(name) {
                c.stop.cancel();
            }
        }
        // 6. Start added clusters; give every other watcher its new settings
        //    when its hosts, TLS or the poll timing changed.
        let timing_changed = old.cluster_update_interval != new.cluster_update_interval
            || old.api_timeout != new.api_timeout;
        for (name, s) in settings {
            if diff.clusters_added.contains(&name) {
                self.start_cluster(&name, s);
            } else if timing_changed || diff.watchers_changed.contains(&name) {
                if let Some(c) = self.clusters.get(&name) {
                    c.watcher.set_settings(s);
                }
            }
            if diff.trackers_changed.contains(&name)
                || old.connect_timeout != new.connect_timeout
                || old.tcp != new.tcp
            {
                let t = Arc::new(self.tracker_settings(&name));
                if let Some(c) = self.clusters.get(&name) {
                    c.tracker.send_replace(t);
                }
            }
        }
        // 7. Changed ports keep their clients: swap settings, rebind if the
        //    address moved, then evict clients that no longer qualify.
        for k in &diff.ports_changed {
            let cfg = new.clusters[&k.cluster].ports[&k.port].clone();
            let Some(p) = self
                .clusters
                .get_mut(&k.cluster)
                .and_then(|c| c.ports.get_mut(&k.port))
            else {
                continue;
            };
            let old_cfg = p.shared.config.load_full();
            // New backend TLS or login rules: new pools, so no backend
            // opened under the old ones is handed out again.
            let rebuild = old_cfg.mode != cfg.mode
                || old_cfg.read_only_functions != cfg.read_only_functions
                || old_cfg.max_classified_query_bytes != cfg.max_classified_query_bytes
                || old_cfg.server_tls != cfg.server_tls
                || old_cfg.server_require_auth != cfg.server_require_auth
                || old_cfg.server_channel_binding != cfg.server_channel_binding;
            p.shared.config.store(Arc::new(cfg));
            if rebuild {
                p.shared.rebuild();
                // A port that became split takes its TLS before new clients come.
                if let Some(t) = port_tls.get(k) {
                    p.shared
                        .set_security(t.client.clone(), Arc::clone(&t.backend));
                }
            }
            if let Some(l) = bound.remove(k) {
                p.stop_accept.cancel();
                p.stop_accept = CancellationToken::new();
                self.tasks.spawn(listener::serve(
                    l,
                    Arc::clone(&p.shared),
                    p.stop_accept.clone(),
                ));
            }
            p.shared.evict_unqualified();
        }
        // 8. Every kept port takes its TLS as read now (renewed files),
        //    then added ports start.
        for (cname, c) in &self.clusters {
            for (pname, p) in &c.ports {
                if let Some(t) = port_tls.remove(&key(cname, pname)) {
                    p.shared.set_security(t.client, t.backend);
                }
            }
        }
        for k in &diff.ports_added {
            if let Some(l) = bound.remove(k) {
                let cfg = new.clusters[&k.cluster].ports[&k.port].clone();
                if let Some(tls) = port_tls.remove(k) {
                    self.start_port(&k.cluster, &k.port, &cfg, l, tls);
                }
            }
        }
        // 9. Publish the views admin and the evictors read.
        self.publish_views();
        // 10. Log.
        if !diff.restart_needed.is_empty() {
            tracing::warn!(fields = ?diff.restart_needed, "these fields change only on restart");
        }
        tracing::info!(%diff, "configuration reloaded");
        Ok(diff.to_string())
    }

    fn drain_port(&self, p: PortRt, deadline: Duration) {
        p.stop_accept.cancel();
        let shared = p.shared;
        tracing::info!(port = %shared.key, clients = shared.active(), "port removed; draining");
        shared.clients.close();
        shared.drain.cancel();
        self.tasks.spawn(async move {
            if tokio::time::timeout(deadline, shared.clients.wait()).await.is_err() {
                tracing::info!(port = %shared.key, clients = shared.active(), "drain deadline passed; closing clients");
                shared
                    .metrics
                    .evictions
                    .with_label_values(&[&shared.key.cluster, &shared.key.port, "port_removed"])
                    .inc_by(shared.active() as u64);
                shared.close.cancel();
            }
        });
    }

    /// Stops accepting, waits for clients up to the drain deadline, closes
    /// the rest, then stops the watchers.
    async fn shutdown(self) {
        let deadline = self.globals.load().drain_timeout;
        let ports: Vec<Arc<PortShared>> = self
            .clusters
            .values()
            .flat_map(|c| c.ports.values())
            .map(|p| {
                p.stop_accept.cancel();
                p.shared.clients.close();
                p.shared.drain.cancel();
                Arc::clone(&p.shared)
            })
            .collect();
        let clients: usize = ports.iter().map(|p| p.active()).sum();
        tracing::info!(clients, ?deadline, "shutting down: draining clients");
        let wait_all = futures_util::future::join_all(ports.iter().map(|p| p.clients.wait()));
        if tokio::time::timeout(deadline, wait_all).await.is_err() {
            for p in &ports {
                p.close.cancel();
            }
            let wait_all = futures_util::future::join_all(ports.iter().map(|p| p.clients.wait()));
            let _ = tokio::time::timeout(Duration::from_secs(2), wait_all).await;
        }
        for c in self.clusters.values() {
            c.stop.cancel();
        }
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.tasks.wait()).await;
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
