//! The watcher: one task per cluster that polls every Patroni host in
//! parallel, takes the first good answer and publishes a new [`ClusterMap`]
//! with one `ArcSwap::store`, then bumps a `watch` of the generation.
//! It is the only writer of a map. Spawned and stopped by `app`.

use super::map::ClusterMap;
use super::patroni::{self, ClusterInfo};
use crate::telemetry::Metrics;
use arc_swap::ArcSwap;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

/// How a watcher polls; replaced as a whole on reload.
#[derive(Debug, Clone)]
pub struct WatchSettings {
    /// Patroni REST base URLs.
    pub hosts: Vec<String>,
    /// Time between polls.
    pub interval: Duration,
    /// Timeout of one request (connect + answer).
    pub timeout: Duration,
    /// HTTP client, built with the cluster's TLS settings.
    pub client: reqwest::Client,
}

/// Reply to an on-demand poll: the published generation, or why no host answered.
pub type PollReply = Result<u64, String>;

/// The reading side of a watcher, held by `app`, ports and admin.
#[derive(Debug, Clone)]
pub struct WatcherHandle {
    /// The published map.
    pub map: Arc<ArcSwap<ClusterMap>>,
    /// Changes whenever a map with a new generation is published.
    pub generation: watch::Receiver<u64>,
    settings: watch::Sender<Arc<WatchSettings>>,
    trigger: mpsc::Sender<oneshot::Sender<PollReply>>,
}

impl WatcherHandle {
    /// Polls now and answers once the resulting map is published.
    ///
    /// # Errors
    /// The poll errors when no host gave a good answer, or the watcher stopped.
    pub async fn update_now(&self) -> PollReply {
        let (tx, rx) = oneshot::channel();
        self.trigger
            .send(tx)
            .await
            .map_err(|_| "watcher stopped".to_owned())?;
        rx.await.map_err(|_| "watcher stopped".to_owned())?
    }

    /// Replaces hosts, interval, timeout or TLS; the watcher polls at once.
    pub fn set_settings(&self, settings: WatchSettings) {
        self.settings.send_replace(Arc::new(settings));
    }
}

/// The polling task's state. Create with [`Watcher::new`], run with [`Watcher::run`].
#[derive(Debug)]
pub struct Watcher {
    cluster: String,
    map: Arc<ArcSwap<ClusterMap>>,
    generation: watch::Sender<u64>,
    settings: watch::Receiver<Arc<WatchSettings>>,
    trigger: mpsc::Receiver<oneshot::Sender<PollReply>>,
    metrics: Arc<Metrics>,
}

impl Watcher {
    /// Creates a watcher with an empty map and its handle.
    #[must_use]
    pub fn new(
        cluster: &str,
        settings: WatchSettings,
        metrics: Arc<Metrics>,
    ) -> (Self, WatcherHandle) {
        let map = Arc::new(ArcSwap::from_pointee(ClusterMap::empty(cluster)));
        let (gen_tx, gen_rx) = watch::channel(0);
        let (set_tx, set_rx) = watch::channel(Arc::new(settings));
        let (trig_tx, trig_rx) = mpsc::channel(16);
        let watcher = Self {
            cluster: cluster.to_owned(),
            map: Arc::clone(&map),
            generation: gen_tx,
            settings: set_rx,
            trigger: trig_rx,
            metrics,
        };
        let handle = WatcherHandle {
            map,
            generation: gen_rx,
            settings: set_tx,
            trigger: trig_tx,
        };
        (watcher, handle)
    }

    /// Polls until `cancel` fires: at start, every interval, on each trigger
    /// and on each settings change.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut next = Instant::now();
        loop {
            let settings = Arc::clone(&self.settings.borrow_and_update());
            let sleep = tokio::time::sleep_until(next.into());
            tokio::select! {
                () = cancel.cancelled() => return,
                () = sleep => {
                    next = Instant::now() + settings.interval;
                    let _ = self.poll_and_publish(&settings).await;
                }
                Some(reply) = self.trigger.recv() => {
                    next = Instant::now() + settings.interval;
                    let result = self.poll_and_publish(&settings).await;
                    let _ = reply.send(result);
                }
                Ok(()) = self.settings.changed() => {
                    next = Instant::now();
                }
            }
        }
    }

    async fn poll_and_publish(&self, settings: &WatchSettings) -> PollReply {
        let started = Instant::now();
        let result = poll(settings).await;
        self.metrics
            .poll_duration
            .with_label_values(&[&self.cluster])
            .observe(started.elapsed().as_secs_f64());
        let label = if result.is_ok() { "ok" } else { "error" };
        self.metrics
            .polls
            .with_label_values(&[&self.cluster, label])
            .inc();
        let reply = result.as_ref().map(|_| ()).map_err(Clone::clone);
        let generation = self.publish(result);
        reply.map(|()| generation)
    }

    /// Builds and stores the next map; returns its generation.
    fn publish(&self, result: Result<(ClusterInfo, String), String>) -> u64 {
        let old = self.map.load_full();
        let mut new = match result {
            Ok((info, source)) => ClusterMap {
                cluster: self.cluster.clone(),
                generation: old.generation,
                members: info.members,
                skipped: info.skipped,
                paused: info.paused,
                stale: false,
                updated_at: SystemTime::now(),
                source: Some(source),
                last_error: None,
            },
            Err(error) => {
                let mut m = (*old).clone();
                if !old.stale {
                    tracing::warn!(cluster = %self.cluster, %error, "every Patroni host failed; keeping the last map, marked stale");
                }
                m.stale = true;
                m.last_error = Some(error);
                m
            }
        };
        if !new.same_facts(&old) || (old.generation == 0 && !new.stale) {
            new.generation = old.generation + 1;
            if old.stale && !new.stale {
                tracing::info!(cluster = %self.cluster, "Patroni answers again; map is fresh");
            }
            tracing::info!(
                cluster = %self.cluster,
                generation = new.generation,
                members = %describe(&new),
                "new cluster map"
            );
        }
        let generation = new.generation;
        self.metrics.set_map(&self.cluster, generation, new.stale);
        self.map.store(Arc::new(new));
        self.generation.send_if_modified(|g| {
            let changed = *g != generation;
            *g = generation;
            changed
        });
        generation
    }
}

/// One line naming each member as `name=role/state lag`.
#[must_use]
pub fn describe(map: &ClusterMap) -> String {
    map.members
        .iter()
        .map(|m| {
            let lag = m.lag.map(|l| format!(" lag={l}")).unwrap_or_default();
            format!("{}={:?}/{:?}{lag}", m.name, m.role, m.state)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Asks every host at once; the first good answer wins.
async fn poll(settings: &WatchSettings) -> Result<(ClusterInfo, String), String> {
    let mut pending: FuturesUnordered<_> = settings
        .hosts
        .iter()
        .map(|host| fetch(&settings.client, host, settings.timeout))
        .collect();
    let mut errors = Vec::new();
    while let Some(result) = pending.next().await {
        match result {
            Ok(info) => return Ok(info),
            Err(e) => errors.push(e),
        }
    }
    errors.sort();
    Err(errors.join("; "))
}

async fn fetch(
    client: &reqwest::Client,
    host: &str,
    timeout: Duration,
) -> Result<(ClusterInfo, String), String> {
    let url = format!("{}/cluster", host.trim_end_matches('/'));
    let work = async {
        let resp = client
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("{host}: {}", error_chain(&e)))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("{host}: HTTP {status}"));
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| format!("{host}: {}", error_chain(&e)))?;
        let info = patroni::parse(&body).map_err(|e| format!("{host}: {e}"))?;
        if info.members.is_empty() {
            return Err(format!("{host}: answer lists no routable member"));
        }
        Ok((info, host.to_owned()))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("{host}: timed out after {timeout:?}"))?
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests;
