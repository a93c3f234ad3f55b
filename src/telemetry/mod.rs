//! Logging setup and every Prometheus metric pgvane exports, defined in one
//! place. Handles are created by `app` and passed down; nothing is global.

mod logs;

pub use logs::{CONN, LogControl, init as init_logging};

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric, registered in its own [`Registry`].
#[derive(Debug)]
pub struct Metrics {
    /// The registry rendered by `/metrics`.
    pub registry: Registry,
    /// `pgvane_clients{cluster,port,node}`: clients relayed right now.
    pub clients: IntGaugeVec,
    /// `pgvane_clients_accepted_total{cluster,port}`.
    pub accepted: IntCounterVec,
    /// `pgvane_evictions_total{cluster,port,reason}`: clients disconnected
    /// because their node stopped qualifying (or the port went away).
    pub evictions: IntCounterVec,
    /// `pgvane_client_errors_total{cluster,port,sqlstate}`: ErrorResponses sent.
    pub client_errors: IntCounterVec,
    /// `pgvane_connect_failures_total{cluster,node}`: pgvane's own failed connects.
    pub connect_failures: IntCounterVec,
    /// `pgvane_bytes_relayed_total{cluster,port,direction}`.
    pub bytes: IntCounterVec,
    /// `pgvane_relays_total{cluster,port,engine}`: role-port clients relayed,
    /// by the engine that copied their bytes (`epoll` or `io_uring`).
    pub relays: IntCounterVec,
    /// `pgvane_session_moves_total{cluster,port}`: split sessions moved to
    /// another worker between requests (worker packing).
    pub session_moves: IntCounterVec,
    /// `pgvane_patroni_polls_total{cluster,result}`.
    pub polls: IntCounterVec,
    /// `pgvane_patroni_poll_duration_seconds{cluster}`.
    pub poll_duration: HistogramVec,
    /// `pgvane_map_generation{cluster}`.
    pub map_generation: IntGaugeVec,
    /// `pgvane_map_stale{cluster}`: 1 when every Patroni host failed.
    pub map_stale: IntGaugeVec,
    /// `pgvane_map_age_seconds{cluster}`: time since the last good answer,
    /// refreshed at each scrape.
    pub map_age: prometheus::GaugeVec,
    /// `pgvane_member_lag_bytes{cluster,member,kind}`: a replica's replay
    /// and receive lag as the last map has it (`kind` replay or receive).
    pub member_lag: IntGaugeVec,
    /// `pgvane_member_replay_paused{cluster,member}`: 1 while replay is paused.
    pub member_paused: IntGaugeVec,
    /// `pgvane_reloads_total{result}`.
    pub reloads: IntCounterVec,
    /// `pgvane_statements_routed_total{cluster,port,node,role,reason}`: split-port
    /// backend acquisitions (one per autocommit statement, batch or transaction).
    pub statements: IntCounterVec,
    /// `pgvane_pins_total{cluster,port,reason}`: sessions pinned to the leader.
    pub pins: IntCounterVec,
    /// `pgvane_pool_acquire_seconds{cluster,port}`: wait for a pooled backend.
    pub acquire_wait: HistogramVec,
    /// `pgvane_pool_backends{cluster,port,node,state}`: open, idle, active and
    /// waiting, refreshed at each scrape.
    pub pool: IntGaugeVec,
    /// `pgvane_pool_backend_moves_total{cluster,port,node}`: idle backends
    /// one client worker took from another worker's list (their sockets
    /// move between the workers' reactors).
    pub pool_moves: IntCounterVec,
    /// `pgvane_replica_position_polls_total{cluster,member,outcome}`: WAL
    /// position polls by the tracker (`outcome`: ok, not_streaming,
    /// hidden, error, connect_error, login_refused, no_credentials).
    pub position_polls: IntCounterVec,
    /// `pgvane_read_index_queries_total{cluster}`: leader insert-LSN
    /// queries sent for `cluster`-scope reads.
    pub read_index_queries: IntCounterVec,
    /// `pgvane_classifier_cache_hits_total`.
    pub classifier_hits: prometheus::IntCounter,
    /// `pgvane_classifier_cache_misses_total`.
    pub classifier_misses: prometheus::IntCounter,
    /// `pgvane_ryw_reads_total{cluster,port,target,reason}`: split-port reads
    /// by where they ran and why (`no_floor`, `replayed`, `waited`,
    /// `timeout`, `fresh`, `fallback`).
    pub ryw_reads: IntCounterVec,
    /// `pgvane_ryw_wait_seconds{cluster,port}`: how long floored reads
    /// waited for a replica to replay their floor.
    pub ryw_wait: HistogramVec,
    /// `pgvane_ryw_captures_total{cluster,port,outcome}`: commit positions
    /// learned (`ok`) or not (`error`).
    pub ryw_captures: IntCounterVec,
    /// `pgvane_replica_refusals_retried_total{cluster,port,sqlstate}`: reads
    /// a replica refused, run again on the leader.
    pub refusals_retried: IntCounterVec,
    /// `pgvane_leader_waits_total{cluster,port,outcome}`: requests or
    /// connections held while the leader was replaced (`leader`: served,
    /// `timeout`: refused after `leader_wait_ms`).
    pub leader_waits: IntCounterVec,
    /// `pgvane_leader_wait_seconds{cluster,port}`: how long they waited.
    pub leader_wait: HistogramVec,
    /// `pgvane_build_info{version}`: 1, labelled with the running version.
    pub build_info: IntGaugeVec,
    /// `pgvane_port_clients{cluster,port,mode}`: clients of a port now,
    /// from accept to close (role and split), refreshed at each scrape.
    pub port_clients: IntGaugeVec,
    /// `pgvane_request_duration_seconds{cluster,port}`: split ports, one
    /// client request from its first message to the answer's last.
    pub request_duration: HistogramVec,
    /// `pgvane_transaction_duration_seconds{cluster,port}`: split ports, a
    /// transaction block from its first statement to its end.
    pub transaction_duration: HistogramVec,
    /// `pgvane_map_updated_timestamp_seconds{cluster}`: Unix time of
    /// Patroni's last good answer (no series before the first).
    pub map_updated: prometheus::GaugeVec,
    /// `pgvane_cluster_leader{cluster}`: 1 while the map names a running
    /// leader, else 0; refreshed at each scrape.
    pub cluster_leader: IntGaugeVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    c
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(vec![
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0,
        ]),
        labels,
    )
    .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(h.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    h
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(g.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    g
}

impl Metrics {
    /// Creates and registers every metric. Names are constants, so a failure
    /// here is a programming error caught by the unit test below.
    #[must_use]
    #[allow(clippy::missing_panics_doc)]
    pub fn new() -> Self {
        let r = Registry::new();
        let poll_duration = HistogramVec::new(
            HistogramOpts::new(
                "pgvane_patroni_poll_duration_seconds",
                "Time to get a good /cluster answer (or give up)",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["cluster"],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        r.register(Box::new(poll_duration.clone()))
            .unwrap_or_else(|e| panic!("{e}"));
        let map_age = prometheus::GaugeVec::new(
            Opts::new(
                "pgvane_map_age_seconds",
                "Seconds since Patroni last confirmed the map",
            ),
            &["cluster"],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        r.register(Box::new(map_age.clone()))
            .unwrap_or_else(|e| panic!("{e}"));
        let acquire_wait = HistogramVec::new(
            HistogramOpts::new("pgvane_pool_acquire_seconds", "Wait for a pooled backend").buckets(
                vec![
                    0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
                ],
            ),
            &["cluster", "port"],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        r.register(Box::new(acquire_wait.clone()))
            .unwrap_or_else(|e| panic!("{e}"));
        let classifier_hits = prometheus::IntCounter::new(
            "pgvane_classifier_cache_hits_total",
            "Classifier cache hits",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        r.register(Box::new(classifier_hits.clone()))
            .unwrap_or_else(|e| panic!("{e}"));
        let classifier_misses = prometheus::IntCounter::new(
            "pgvane_classifier_cache_misses_total",
            "Classifier cache misses",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        r.register(Box::new(classifier_misses.clone()))
            .unwrap_or_else(|e| panic!("{e}"));
        let map_updated = prometheus::GaugeVec::new(
            Opts::new(
                "pgvane_map_updated_timestamp_seconds",
                "Unix time of Patroni's last good answer",
            ),
            &["cluster"],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        r.register(Box::new(map_updated.clone()))
            .unwrap_or_else(|e| panic!("{e}"));
        // process_cpu_seconds_total, process_resident_memory_bytes,
        // process_open_fds, process_start_time_seconds, … (from /proc).
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        let build_info = gauge(
            &r,
            "pgvane_build_info",
            "1, labelled with the running pgvane's version",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        Self {
            build_info,
            port_clients: gauge(
                &r,
                "pgvane_port_clients",
                "Clients of a port now, from accept to close",
                &["cluster", "port", "mode"],
            ),
            request_duration: histogram(
                &r,
                "pgvane_request_duration_seconds",
                "Split ports: one client request, first message to last answer byte",
                &["cluster", "port"],
            ),
            transaction_duration: histogram(
                &r,
                "pgvane_transaction_duration_seconds",
                "Split ports: a transaction block from its first statement to its end",
                &["cluster", "port"],
            ),
            map_updated,
            cluster_leader: gauge(
                &r,
                "pgvane_cluster_leader",
                "1 while the map names a running leader",
                &["cluster"],
            ),
            clients: gauge(
                &r,
                "pgvane_clients",
                "Clients relayed right now",
                &["cluster", "port", "node"],
            ),
            accepted: counter(
                &r,
                "pgvane_clients_accepted_total",
                "Client connections accepted",
                &["cluster", "port"],
            ),
            evictions: counter(
                &r,
                "pgvane_evictions_total",
                "Clients disconnected because their node stopped qualifying",
                &["cluster", "port", "reason"],
            ),
            client_errors: counter(
                &r,
                "pgvane_client_errors_total",
                "ErrorResponses pgvane sent to clients",
                &["cluster", "port", "sqlstate"],
            ),
            connect_failures: counter(
                &r,
                "pgvane_connect_failures_total",
                "pgvane's own failed connects to a node",
                &["cluster", "node"],
            ),
            bytes: counter(
                &r,
                "pgvane_bytes_relayed_total",
                "Bytes relayed",
                &["cluster", "port", "direction"],
            ),
            relays: counter(
                &r,
                "pgvane_relays_total",
                "Role-port clients relayed, by relay engine",
                &["cluster", "port", "engine"],
            ),
            session_moves: counter(
                &r,
                "pgvane_session_moves_total",
                "Split sessions moved to another worker runtime between requests",
                &["cluster", "port"],
            ),
            polls: counter(
                &r,
                "pgvane_patroni_polls_total",
                "Patroni polls by result",
                &["cluster", "result"],
            ),
            map_generation: gauge(
                &r,
                "pgvane_map_generation",
                "Generation of the published cluster map",
                &["cluster"],
            ),
            map_stale: gauge(
                &r,
                "pgvane_map_stale",
                "1 when every Patroni host failed and the last map is kept",
                &["cluster"],
            ),
            member_lag: gauge(
                &r,
                "pgvane_member_lag_bytes",
                "Replica replay and receive lag in bytes, by member",
                &["cluster", "member", "kind"],
            ),
            member_paused: gauge(
                &r,
                "pgvane_member_replay_paused",
                "1 while a replica's replay is paused",
                &["cluster", "member"],
            ),
            reloads: counter(
                &r,
                "pgvane_reloads_total",
                "Config reloads by result",
                &["result"],
            ),
            statements: counter(
                &r,
                "pgvane_statements_routed_total",
                "Split-port backend acquisitions by node, role and reason",
                &["cluster", "port", "node", "role", "reason"],
            ),
            pins: counter(
                &r,
                "pgvane_pins_total",
                "Split sessions pinned to the leader, by reason",
                &["cluster", "port", "reason"],
            ),
            pool_moves: counter(
                &r,
                "pgvane_pool_backend_moves_total",
                "Split-port idle backends taken from another client worker's list",
                &["cluster", "port", "node"],
            ),
            pool: gauge(
                &r,
                "pgvane_pool_backends",
                "Split-port pool backends by state (open, idle, active, waiting)",
                &["cluster", "port", "node", "state"],
            ),
            ryw_reads: counter(
                &r,
                "pgvane_ryw_reads_total",
                "Split-port reads by target and read-your-writes reason",
                &["cluster", "port", "target", "reason"],
            ),
            ryw_wait: histogram(
                &r,
                "pgvane_ryw_wait_seconds",
                "Waits of floored reads for a replica to replay their floor",
                &["cluster", "port"],
            ),
            ryw_captures: counter(
                &r,
                "pgvane_ryw_captures_total",
                "Commit positions captured after writing transactions",
                &["cluster", "port", "outcome"],
            ),
            refusals_retried: counter(
                &r,
                "pgvane_replica_refusals_retried_total",
                "Reads a replica refused, retried on the leader",
                &["cluster", "port", "sqlstate"],
            ),
            leader_waits: counter(
                &r,
                "pgvane_leader_waits_total",
                "Requests and connections held while the leader was replaced",
                &["cluster", "port", "outcome"],
            ),
            leader_wait: histogram(
                &r,
                "pgvane_leader_wait_seconds",
                "How long requests and connections waited for a leader",
                &["cluster", "port"],
            ),
            position_polls: counter(
                &r,
                "pgvane_replica_position_polls_total",
                "WAL position polls of members by outcome",
                &["cluster", "member", "outcome"],
            ),
            read_index_queries: counter(
                &r,
                "pgvane_read_index_queries_total",
                "Leader insert-LSN queries sent for cluster-scope reads",
                &["cluster"],
            ),
            acquire_wait,
            classifier_hits,
            classifier_misses,
            poll_duration,
            map_age,
            registry: r,
        }
    }

    /// Records a request or client held while the leader was replaced:
    /// `outcome` `leader` (served) or `timeout`, and how long it waited.
    pub fn leader_waited(
        &self,
        cluster: &str,
        port: &str,
        outcome: &str,
        waited: std::time::Duration,
    ) {
        self.leader_waits
            .with_label_values(&[cluster, port, outcome])
            .inc();
        self.leader_wait
            .with_label_values(&[cluster, port])
            .observe(waited.as_secs_f64());
    }

    /// Records a published map's generation and staleness.
    pub fn set_map(&self, cluster: &str, generation: u64, stale: bool) {
        self.map_generation
            .with_label_values(&[cluster])
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        self.map_stale
            .with_label_values(&[cluster])
            .set(i64::from(stale));
    }

    /// Records one replica's replay and receive lag (no series while
    /// unknown, rather than a sentinel a query would average in) and
    /// whether its replay is paused.
    pub fn set_member(
        &self,
        cluster: &str,
        member: &str,
        lag: (Option<u64>, Option<u64>),
        paused: bool,
    ) {
        for (kind, value) in [("replay", lag.0), ("receive", lag.1)] {
            match value {
                Some(v) => self
                    .member_lag
                    .with_label_values(&[cluster, member, kind])
                    .set(i64::try_from(v).unwrap_or(i64::MAX)),
                None => {
                    let _ = self
                        .member_lag
                        .remove_label_values(&[cluster, member, kind]);
                }
            }
        }
        self.member_paused
            .with_label_values(&[cluster, member])
            .set(i64::from(paused));
    }

    /// Drops the series a removed cluster's watcher set (a reload took the
    /// cluster away): its map and members no longer exist.
    pub fn remove_cluster<'a>(&self, cluster: &str, members: impl Iterator<Item = &'a str>) {
        let _ = self.map_generation.remove_label_values(&[cluster]);
        let _ = self.map_stale.remove_label_values(&[cluster]);
        for m in members {
            self.remove_member(cluster, m);
        }
    }

    /// Drops a member's lag series (it left the cluster or became leader).
    pub fn remove_member(&self, cluster: &str, member: &str) {
        for kind in ["replay", "receive"] {
            let _ = self
                .member_lag
                .remove_label_values(&[cluster, member, kind]);
        }
        let _ = self.member_paused.remove_label_values(&[cluster, member]);
    }

    /// Prometheus text exposition of every metric.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_named_pgvane() {
        let m = Metrics::new();
        m.set_map("c", 3, true);
        m.clients.with_label_values(&["c", "p", "n"]).inc();
        m.accepted.with_label_values(&["c", "p"]).inc();
        m.evictions.with_label_values(&["c", "p", "lag"]).inc();
        m.client_errors
            .with_label_values(&["c", "p", "57P03"])
            .inc();
        m.connect_failures.with_label_values(&["c", "n"]).inc();
        m.bytes.with_label_values(&["c", "p", "to_server"]).inc();
        m.relays.with_label_values(&["c", "p", "io_uring"]).inc();
        m.polls.with_label_values(&["c", "ok"]).inc();
        m.poll_duration.with_label_values(&["c"]).observe(0.1);
        m.map_age.with_label_values(&["c"]).set(1.0);
        m.reloads.with_label_values(&["ok"]).inc();
        m.position_polls.with_label_values(&["c", "n", "ok"]).inc();
        m.read_index_queries.with_label_values(&["c"]).inc();
        let text = m.render();
        let names: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(['{', ' ']).next().unwrap())
            .collect();
        assert!(names.len() >= 12, "{text}");
        // pgvane's own, and the process collector's standard names.
        assert!(
            names
                .iter()
                .all(|n| n.starts_with("pgvane_") || n.starts_with("process_")),
            "{names:?}"
        );
        assert!(text.contains("pgvane_map_stale{cluster=\"c\"} 1"));
        let version = format!(
            "pgvane_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&version), "{text}");
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
    }
}
