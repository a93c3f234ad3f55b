//! The watcher: one task per cluster that, each round, asks every Patroni
//! host for `/cluster` in parallel (the first good answer plus whatever
//! else arrives within [`SETTLE`]), then every listed member for its own
//! `/patroni`, reconciles them (`reconcile`) and publishes a new
//! [`ClusterMap`] with one `ArcSwap::store`, then bumps a `watch` of the
//! generation. It is the only writer of a map. Spawned and stopped by `app`.

use super::map::ClusterMap;
use super::patroni::{self, ClusterInfo, NodeStatus};
use super::reconcile::{self, Statuses};
use crate::telemetry::Metrics;
use arc_swap::ArcSwap;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

/// How long after the first good `/cluster` answer the other hosts' answers
/// are still awaited, so that views can be compared.
pub const SETTLE: Duration = Duration::from_millis(250);

/// Longest wait for one member's `/patroni` (bounded by the API timeout
/// too), so a partitioned member delays a round by at most this.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(1);

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
    drained: watch::Sender<Arc<BTreeSet<String>>>,
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

    /// The members marked drained, in the map or not.
    #[must_use]
    pub fn drained(&self) -> Arc<BTreeSet<String>> {
        Arc::clone(&self.drained.borrow())
    }

    /// Marks member `name` drained (or not); the map is republished with
    /// the mark at once. Returns whether the mark changed.
    pub fn set_drained(&self, name: &str, drained: bool) -> bool {
        self.drained.send_if_modified(|set| {
            if set.contains(name) == drained {
                return false;
            }
            let mut next = (**set).clone();
            if drained {
                next.insert(name.to_owned());
            } else {
                next.remove(name);
            }
            *set = Arc::new(next);
            true
        })
    }
}

/// Shortest time between two polls asked for by `/update_clusters`.
pub const TRIGGER_GAP: std::time::Duration = std::time::Duration::from_millis(250);

/// The polling task's state. Create with [`Watcher::new`], run with [`Watcher::run`].
#[derive(Debug)]
pub struct Watcher {
    cluster: String,
    map: Arc<ArcSwap<ClusterMap>>,
    generation: watch::Sender<u64>,
    settings: watch::Receiver<Arc<WatchSettings>>,
    trigger: mpsc::Receiver<oneshot::Sender<PollReply>>,
    drained: watch::Receiver<Arc<BTreeSet<String>>>,
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
        let (drained_tx, drained_rx) = watch::channel(Arc::default());
        let watcher = Self {
            cluster: cluster.to_owned(),
            map: Arc::clone(&map),
            generation: gen_tx,
            settings: set_rx,
            trigger: trig_rx,
            drained: drained_rx,
            metrics,
        };
        let handle = WatcherHandle {
            map,
            generation: gen_rx,
            settings: set_tx,
            trigger: trig_tx,
            drained: drained_tx,
        };
        (watcher, handle)
    }

    /// Polls until `cancel` fires: at start, every interval, on each trigger
    /// and on each settings change.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut next = Instant::now();
        let mut last_triggered = Instant::now();
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
                    // Callers who asked before this poll starts share it,
                    // and triggered polls are spaced by TRIGGER_GAP, so a
                    // flood of requests costs Patroni a few polls a second.
                    tokio::time::sleep_until(last_triggered.into()).await;
                    let mut replies = vec![reply];
                    while let Ok(r) = self.trigger.try_recv() {
                        replies.push(r);
                    }
                    last_triggered = Instant::now() + TRIGGER_GAP;
                    next = Instant::now() + settings.interval;
                    let result = self.poll_and_publish(&settings).await;
                    for reply in replies {
                        let _ = reply.send(result.clone());
                    }
                }
                Ok(()) = self.settings.changed() => {
                    next = Instant::now();
                }
                Ok(()) = self.drained.changed() => {
                    // An operator's mark: republish the map we have, now
                    // (before Patroni's first answer there is none; the
                    // first poll applies the mark).
                    let old = self.map.load_full();
                    if old.generation > 0 {
                        self.store((*old).clone());
                    }
                }
            }
        }
    }

    async fn poll_and_publish(&mut self, settings: &WatchSettings) -> PollReply {
        let started = Instant::now();
        let previous = self.map.load_full();
        let result = poll(settings, &previous).await;
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
    fn publish(&mut self, result: Result<Round, String>) -> u64 {
        let old = self.map.load_full();
        let new = match result {
            Ok(Round {
                info,
                source,
                disagreement,
            }) => ClusterMap {
                cluster: self.cluster.clone(),
                generation: old.generation,
                members: info.members,
                skipped: info.skipped,
                paused: info.paused,
                stale: false,
                updated_at: SystemTime::now(),
                source: Some(source),
                last_error: None,
                disagreement,
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
        self.store(new)
    }

    /// Applies the operator's marks to `new`, gives it a new generation
    /// when its facts changed, stores it and updates the metrics.
    fn store(&mut self, mut new: ClusterMap) -> u64 {
        let old = self.map.load_full();
        let drained = Arc::clone(&self.drained.borrow_and_update());
        for m in &mut new.members {
            m.drained = drained.contains(&*m.name);
        }
        if new.disagreement != old.disagreement && !new.stale {
            if let Some(why) = &new.disagreement {
                tracing::warn!(cluster = %self.cluster, "Patroni hosts disagree: {why}");
            } else if old.disagreement.is_some() {
                tracing::info!(cluster = %self.cluster, "Patroni hosts agree again");
            }
        }
        if !new.same_facts(&old) || (old.generation == 0 && !new.stale) {
            new.generation = old.generation + 1;
            if old.stale && !new.stale {
                tracing::info!(cluster = %self.cluster, "Patroni answers again; map is fresh");
            }
            if old.generation > 0 && new.only_lag_differs(&old) {
                tracing::debug!(cluster = %self.cluster, generation = new.generation, members = %describe(&new), "lag changed");
            } else {
                tracing::info!(
                    cluster = %self.cluster,
                    generation = new.generation,
                    members = %describe(&new),
                    "new cluster map"
                );
            }
        }
        let generation = new.generation;
        self.metrics.set_map(&self.cluster, generation, new.stale);
        for m in &old.members {
            if new.member(&m.name).is_none_or(|n| n.role.is_leader()) {
                self.metrics.remove_member(&self.cluster, &m.name);
            }
        }
        for m in new.members.iter().filter(|m| !m.role.is_leader()) {
            self.metrics.set_member(
                &self.cluster,
                &m.name,
                (m.lag, m.receive_lag),
                m.replay_paused,
            );
        }
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
            let paused = if m.replay_paused { " paused" } else { "" };
            format!("{}={:?}/{:?}{lag}{paused}", m.name, m.role, m.state)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// What one poll round found.
#[derive(Debug)]
struct Round {
    info: ClusterInfo,
    source: String,
    disagreement: Option<String>,
}

/// One round: every host's `/cluster` (the first good answer, then others
/// for up to [`SETTLE`]), every member's `/patroni`, reconciled.
async fn poll(settings: &WatchSettings, previous: &ClusterMap) -> Result<Round, String> {
    let mut answers = cluster_answers(settings).await?;
    let mut urls: Vec<(String, String)> = Vec::new();
    for (_, info) in &answers {
        for m in &info.members {
            if let Some(url) = &m.api_url {
                if !urls.iter().any(|(name, _)| **name == *m.name) {
                    urls.push((m.name.to_string(), url.clone()));
                }
            }
        }
    }
    let timeout = settings.timeout.min(STATUS_TIMEOUT);
    let statuses: Statuses = futures_util::future::join_all(urls.into_iter().map(|(name, url)| {
        let client = &settings.client;
        async move { (name, fetch_status(client, &url, timeout).await) }
    }))
    .await
    .into_iter()
    .collect();
    let (best, disagreement) = reconcile::pick(&answers, &statuses);
    let (source, mut info) = answers.swap_remove(best);
    reconcile::apply_live(&mut info, &statuses, previous);
    Ok(Round {
        info,
        source,
        disagreement,
    })
}

/// Good `/cluster` answers in arrival order: every host is asked at once;
/// after the first good answer the rest get [`SETTLE`] more.
async fn cluster_answers(settings: &WatchSettings) -> Result<Vec<(String, ClusterInfo)>, String> {
    let mut pending: FuturesUnordered<_> = settings
        .hosts
        .iter()
        .map(|host| fetch(&settings.client, host, settings.timeout))
        .collect();
    let mut answers = Vec::new();
    let mut errors = Vec::new();
    let mut settle = None;
    loop {
        let next = match settle {
            None => pending.next().await,
            Some(deadline) => match tokio::time::timeout_at(deadline, pending.next()).await {
                Ok(next) => next,
                Err(_) => break,
            },
        };
        match next {
            None => break,
            Some(Ok((info, host))) => {
                answers.push((host, info));
                settle.get_or_insert_with(|| tokio::time::Instant::now() + SETTLE);
            }
            Some(Err(e)) => errors.push(e),
        }
    }
    if answers.is_empty() {
        errors.sort();
        return Err(errors.join("; "));
    }
    Ok(answers)
}

/// Largest Patroni answer read: a 100-member `/cluster` is about 50 KB.
pub const MAX_BODY: usize = 4 * 1024 * 1024;

/// Reads a response body up to [`MAX_BODY`], refusing a larger
/// `Content-Length` before reading and a longer body as soon as it passes.
async fn body(mut resp: reqwest::Response, shown: &str) -> Result<Vec<u8>, String> {
    let too_big = || format!("{shown}: answer larger than {MAX_BODY} bytes");
    if resp.content_length().is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_big());
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("{shown}: {}", error_chain(e)))?
    {
        if out.len() + chunk.len() > MAX_BODY {
            return Err(too_big());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// One member's own `GET /patroni` (its `api_url`), bounded by `timeout`.
async fn fetch_status(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
) -> Result<NodeStatus, String> {
    let shown = redact(url);
    let work = async {
        let resp = client
            .get(url)
            .send()
            .await
            .map_err(|e| format!("{shown}: {}", error_chain(e)))?;
        // `/patroni` answers 503 with a full body when PostgreSQL is down.
        let body = body(resp, &shown).await?;
        patroni::parse_status(&body).map_err(|e| format!("{shown}: {e}"))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("{shown}: timed out after {timeout:?}"))?
}

async fn fetch(
    client: &reqwest::Client,
    host: &str,
    timeout: Duration,
) -> Result<(ClusterInfo, String), String> {
    let url = format!("{}/cluster", host.trim_end_matches('/'));
    let host = redact(host);
    let host = host.as_str();
    let work = async {
        let resp = client
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("{host}: {}", error_chain(e)))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("{host}: HTTP {status}"));
        }
        let body = body(resp, host).await?;
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

/// `url` with any `user:password@` replaced by `***@`, for logs, errors
/// and `/clusters`.
#[must_use]
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// A reqwest error's chain, without its URL (which may hold credentials).
fn error_chain(e: reqwest::Error) -> String {
    chain(&e.without_url())
}

fn chain(e: &dyn std::error::Error) -> String {
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
