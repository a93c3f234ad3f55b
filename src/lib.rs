//! pgvane: a PostgreSQL router for Patroni clusters.
//!
//! Applications connect to pgvane as if it were PostgreSQL. pgvane polls
//! the Patroni REST API, publishes one atomically swapped [`topology::ClusterMap`]
//! per cluster, and relays each client connection to a node chosen by
//! Patroni role (role ports).
//!
//! ```text
//!  Patroni ──poll──▶ topology::watcher ──ArcSwap<ClusterMap>──┐
//!                                                             ▼
//!  client ──▶ listener ──▶ router (policy, balance, health) ──▶ relay ──▶ node
//!                 ▲                                              ▲
//!  config ──▶ app (reload, shutdown, evictor) ─────────────── admin API
//! ```
//!
//! Words: *client* (an application connection), *node* (a Patroni member),
//! *port* (a listening address with a mode), *map* and *generation* (the
//! published cluster picture and its version), *evicted* (a client
//! disconnected because its node stopped qualifying for its port).
//!
//! Module map: [`config`] (model, load, diff), [`topology`] (Patroni model,
//! map, watcher, WAL positions), [`tracker`] (replica positions, read
//! index), [`router`] (policy, balance, health), [`relay`] (role-port
//! client flow, byte relay, refusals), [`listener`] (ports as a tagged type, accept), [`admission`] (client limits), [`admin`] (HTTP API and the PostgreSQL-protocol console), [`status`] (`pgvane status`),
//! [`protocol`] (wire format), [`telemetry`] (logs, metrics), [`tls`],
//! [`signals`], [`control`], [`notify`] (systemd readiness), [`workers`] (per-core client runtimes),
//! [`app`] (composition root).

pub mod admin;
pub mod admission;
pub mod app;
pub mod auth;
pub mod backend;
pub mod beacon;
pub mod classifier;
pub mod config;
pub mod consistency;
pub mod control;
pub mod gate;
pub mod listener;
pub mod notify;
pub mod pool;
pub mod protocol;
pub mod relay;
pub mod router;
pub mod session;
pub mod signals;
pub mod status;
pub mod telemetry;
pub mod tls;
pub mod topology;
pub mod tracker;
pub mod workers;
