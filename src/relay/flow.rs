//! A role-port client's flow, whatever engine copies its bytes: read its
//! first bytes (a CancelRequest is fanned out to the port's nodes), check
//! the access rules, choose a node (`router`), connect with retry on the
//! next node, wait for a leader while one is replaced, then relay until
//! the client leaves or is evicted; refuse with an `ErrorResponse` when no
//! node can take it. Fed accepted, admitted sockets by `listener`.

use super::frames::Frames;
use super::{ByteCounters, Engine, Handoff, RelayEnd, Watch};
use crate::backend::SocketOptions;
use crate::config::{AccessClient, Config, PortConfig, PortKey, RoleSel};
use crate::consistency::ClusterLink;
use crate::protocol::sqlstate::{self, SqlState};
use crate::router::{self, Balancer, HealthBook, LagView, NoTarget, NodeKey};
use crate::telemetry::Metrics;
use crate::topology::{ClusterMap, NodeAddr};
use arc_swap::ArcSwap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Longest time pgvane spends telling a refused client why.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(5);

/// What the listener keeps alive as long as a client (its place in the
/// client counts, its worker placement, its drain tracking); dropped when
/// the client's connection ends, on whichever thread relayed it.
pub type Keep = Box<dyn std::any::Any + Send>;

/// Everything the clients of one role port share: the port's part of
/// `listener`'s port state that only role ports have (balancer, byte
/// counters), and the snapshots the flow reads.
#[derive(Debug)]
pub struct RoleContext {
    /// Cluster and port name.
    pub key: PortKey,
    /// The port's settings (swapped by reload).
    pub config: Arc<ArcSwap<PortConfig>>,
    /// The whole config snapshot (timeouts, TCP settings).
    pub globals: Arc<ArcSwap<Config>>,
    /// The cluster's published map.
    pub map: Arc<ArcSwap<ClusterMap>>,
    /// The port's lag verdicts (hysteresis), published by its evictor.
    pub lag: Arc<ArcSwap<LagView>>,
    /// The cluster's connect-failure book.
    pub health: Arc<HealthBook>,
    /// The cluster's map generation (the leader wait watches it).
    pub link: Arc<ClusterLink>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Fires to disconnect every client of the port (removal, shutdown).
    pub close: CancellationToken,
    /// The port's PAUSE/RESUME and KILL switches.
    pub gate: Arc<crate::gate::Gate>,
    /// Least-connections counts and eviction tokens.
    pub balancer: Arc<Balancer>,
    /// Bytes relayed each way.
    pub bytes: ByteCounters,
    /// The engine that copies the bytes (the process's, chosen at start).
    pub engine: Arc<Engine>,
}

impl RoleContext {
    /// Counts a new client held while the leader was replaced.
    fn leader_waited(&self, outcome: &str, started: Instant) {
        self.metrics.leader_waited(
            &self.key.cluster,
            &self.key.port,
            outcome,
            started.elapsed(),
        );
    }
}

/// A connection to the node chosen for a client, with its lease.
struct Connected {
    server: TcpStream,
    key: NodeKey,
    lease: router::Lease,
    /// The start of the server's answer to the startup packet, read to
    /// tell a node that is shutting down from one that serves; goes to
    /// the client before the relay starts.
    early: Vec<u8>,
}

/// Serves one admitted (or refused: `admitted` holds the text) role-port
/// client: refuses it, or connects it and hands it to the port's engine,
/// which relays it (holding `keep`) until it leaves or is evicted.
pub async fn serve_client(
    mut client: TcpStream,
    port: &Arc<RoleContext>,
    admitted: Result<(), String>,
    peer: SocketAddr,
    keep: Keep,
) {
    let port = Arc::clone(port);
    // Taken first: a KILL from now on ends this client too.
    let kill = port.gate.kill_token();
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
    let Some(head) = whole_startup(&mut client, head, &port).await else {
        return;
    };
    // A paused port holds new clients up to `leader_wait_ms`, as a
    // leader being replaced does.
    let opened = tokio::select! {
        r = port.gate.wait_open(cfg.resolved.leader_wait) => r,
        () = kill.cancelled() => return,
    };
    if let Err(paused) = opened {
        let code = sqlstate::CANNOT_CONNECT_NOW;
        return refuse(&mut client, &head, &port, code, &paused.text(&port.key)).await;
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
        let refusal = match choose_and_connect(&head, &port).await {
            Ok(connected) => {
                if waited {
                    port.leader_waited("leader", started);
                }
                if !connected.early.is_empty()
                    && tokio::io::AsyncWriteExt::write_all(&mut client, &connected.early)
                        .await
                        .is_err()
                {
                    return;
                }
                let frames = if is_startup(&head) {
                    Frames::after_startup(&connected.early)
                } else {
                    Frames::after_request(&head)
                };
                return relay(client, connected, (frames, kill), &port, peer, keep);
            }
            Err(r) => r,
        };
        // Before Patroni's first answer (a pgvane just started, perhaps
        // beside the one it replaces) every port waits for it, at most one
        // API timeout. Otherwise only a leader being replaced is waited for:
        // with an empty map (Patroni unreachable since start, or listing no
        // member) refuse at once.
        let map = port.map.load();
        let first = map.generation == 0;
        let patience = if first {
            Some(port.globals.load().api_timeout)
        } else {
            wait.filter(|_| !map.members.is_empty())
        };
        drop(map);
        let Some(wait) = patience.filter(|w| started.elapsed() < *w) else {
            if waited {
                port.leader_waited("timeout", started);
            }
            let (code, text) = refusal;
            return refuse(&mut client, &head, &port, code, &text).await;
        };
        if first {
            tracing::debug!(port = %port.key, "no answer from Patroni yet; waiting for its first");
        } else {
            if !waited {
                tracing::info!(port = %port.key, "no leader to relay to; waiting up to leader_wait_ms for one");
            }
            waited = true;
        }
        generation.mark_unchanged();
        let until = (started + wait).min(Instant::now() + Duration::from_millis(100));
        let changed =
            tokio::time::timeout_at(tokio::time::Instant::from_std(until), generation.changed());
        tokio::select! {
            _ = changed => {}
            () = kill.cancelled() => return,
        }
    }
}

/// Reads a role-port client's first 8 bytes. A CancelRequest (the only
/// packet of its connection) is sent to every node the port could have
/// chosen, since the key names a backend on one of them and PostgreSQL
/// ignores keys it does not know; anything else is handed to the relay.
async fn first_bytes(client: &mut TcpStream, port: &RoleContext) -> Option<[u8; 8]> {
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

/// Chooses a node and connects, on to the next eligible node when one
/// fails, and sends the client's first bytes; the SQLSTATE and text to
/// refuse with when no node could be used.
async fn choose_and_connect(
    head: &[u8],
    port: &Arc<RoleContext>,
) -> Result<Connected, (SqlState, String)> {
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
                if let Err(reason) = router::policy::takes_new_client(
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
                let early = if is_startup(head) {
                    match first_reply(&mut server, timeout).await {
                        Ok(Reply::Serves(early)) => early,
                        Ok(Reply::NotAccepting(code)) => {
                            // A node shutting down (a switchover) or starting
                            // up: the next node, or the leader wait, instead
                            // of relaying the refusal.
                            port.health.failure(&key.addr, Instant::now());
                            tracing::info!(port = %port.key, node = %key.name, sqlstate = %code, "node is not accepting connections; trying the next");
                            failures.push(format!("{} answered {code}", key.name));
                            continue;
                        }
                        Err(e) => {
                            failures.push(format!("{} closed before answering: {e}", key.name));
                            continue;
                        }
                    }
                } else {
                    Vec::new()
                };
                return Ok(Connected {
                    server,
                    key,
                    lease,
                    early,
                });
            }
            Err(e) => {
                port.health.failure(&key.addr, Instant::now());
                port.metrics
                    .connect_failures
                    .with_label_values(&[&*port.key.cluster, &*key.name])
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

/// Longest startup packet read whole (PostgreSQL's `MAX_STARTUP_PACKET_LENGTH`).
const MAX_STARTUP: usize = 10_000;

/// Whether `head` is a whole protocol-3 startup packet (not an SSL or GSS
/// request, a cancel, or direct TLS).
pub(super) fn is_startup(head: &[u8]) -> bool {
    head.len() >= 8
        && u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize == head.len()
        && u32::from_be_bytes([head[4], head[5], head[6], head[7]]) >> 16 == 3
}

/// The client's first packet: a protocol-3 startup message is read whole
/// (bounded by `client_login_timeout_ms` and PostgreSQL's size limit), so
/// the node's answer to it can be read before relaying; anything else
/// (SSLRequest, GSSENCRequest, direct TLS) stays the 8 bytes read. None:
/// the client left or stalled.
async fn whole_startup(
    client: &mut TcpStream,
    head: [u8; 8],
    port: &RoleContext,
) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let version = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    let mut packet = head.to_vec();
    if version >> 16 != 3 || !(8..=MAX_STARTUP).contains(&len) {
        return Some(packet);
    }
    packet.resize(len, 0);
    let wait = port.globals.load().client_login_timeout;
    tokio::time::timeout(wait, client.read_exact(&mut packet[8..]))
        .await
        .ok()?
        .ok()?;
    Some(packet)
}

/// How a node first answered a startup packet.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Reply {
    /// It serves: the bytes read so far (the first message's header, or a
    /// whole ErrorResponse that is not about accepting connections).
    Serves(Vec<u8>),
    /// An ErrorResponse 57P01/57P02/57P03: shutting down, starting up, not
    /// accepting connections.
    NotAccepting(String),
}

/// Reads the start of a node's answer to a startup packet, within `timeout`.
pub(super) async fn first_reply(server: &mut TcpStream, timeout: Duration) -> io::Result<Reply> {
    use tokio::io::AsyncReadExt;
    let read = async {
        let mut header = [0u8; 5];
        server.read_exact(&mut header).await?;
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if header[0] != b'E' || !(4..=8192).contains(&len) {
            return Ok(Reply::Serves(header.to_vec()));
        }
        let mut message = header.to_vec();
        message.resize(len + 1, 0);
        server.read_exact(&mut message[5..]).await?;
        let (code, _) = crate::protocol::message::error_fields(&message[5..]);
        Ok(if code.starts_with("57P0") {
            Reply::NotAccepting(code)
        } else {
            Reply::Serves(message)
        })
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer to the startup packet"))?
}

/// Hands a connected client to the port's engine; the per-node client
/// gauge, the lease and `keep` last until its relay ends.
fn relay(
    client: TcpStream,
    connected: Connected,
    (frames, kill): (Frames, CancellationToken),
    port: &Arc<RoleContext>,
    peer: SocketAddr,
    keep: Keep,
) {
    let Connected {
        server, key, lease, ..
    } = connected;
    let _ = server.set_nodelay(true);
    let m = &port.metrics;
    let labels = [port.key.cluster.as_str(), port.key.port.as_str()];
    m.relays
        .with_label_values(&[labels[0], labels[1], port.engine.name()])
        .inc();
    let gauge = m
        .clients
        .with_label_values(&[labels[0], labels[1], &key.name]);
    gauge.inc();
    let evict = lease.evicted().clone();
    let drain = lease.drained().clone();
    let ctx = Arc::clone(port);
    let bytes = port.bytes.for_client();
    let tally = bytes.clone();
    let since = Instant::now();
    // Role ports read no names: the line says the node, not the user.
    tracing::info!(target: crate::telemetry::CONN, event = "connect", port = %port.key, node = %key.name, %peer, "connect");
    let done = move |end: RelayEnd| {
        gauge.dec();
        let (to_server, to_client) = tally.moved();
        let reason = match end {
            RelayEnd::Closed => "closed",
            RelayEnd::Evicted if ctx.close.is_cancelled() => "port_closed",
            RelayEnd::Evicted if lease.evicted().is_cancelled() => "evicted",
            RelayEnd::Evicted => "killed",
            RelayEnd::Drained => "drained",
        };
        tracing::info!(
            target: crate::telemetry::CONN,
            event = "disconnect",
            port = %ctx.key,
            node = %lease.node().name,
            %peer,
            duration_ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX),
            bytes_in = to_server,
            bytes_out = to_client,
            reason,
            "disconnect"
        );
        drop((lease, keep));
    };
    port.engine.relay(Handoff {
        client,
        server,
        evict,
        drain,
        watch: Watch::new(frames),
        close: kill,
        bytes,
        done: Box::new(done),
    });
}

/// Connects to a node within `timeout` and sets `socket` on the socket.
async fn connect(
    addr: &NodeAddr,
    timeout: Duration,
    socket: SocketOptions,
) -> io::Result<TcpStream> {
    match tokio::time::timeout(timeout, TcpStream::connect((&*addr.host, addr.port))).await {
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

/// Refuses a client with `code`, counted and logged; `already` holds the
/// bytes of its first packet read so far.
async fn refuse(
    client: &mut TcpStream,
    already: &[u8],
    port: &RoleContext,
    code: SqlState,
    text: &str,
) {
    tracing::warn!(port = %port.key, sqlstate = code.code(), "{text}");
    port.metrics
        .client_errors
        .with_label_values(&[&port.key.cluster, &port.key.port, code.code()])
        .inc();
    super::refuse(client, already, code, text, REFUSAL_DEADLINE).await;
}
