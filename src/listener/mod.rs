//! Ports: bind, accept, client limits, and dispatch of each accepted
//! client to its port's flow, the role-port relay (`relay`) or a split
//! session (`session`). A port's shared state is [`PortShared`], a tagged
//! type built by `app` (`port`).

mod port;

pub use port::{PortKind, PortShared, ProcessShared, SplitPort};

use crate::admission::Limits;
use crate::backend::SocketOptions;
use crate::relay;
use crate::session;
use crate::workers::Placement;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Binds a listening socket with `SO_REUSEADDR` and `SO_REUSEPORT`: a new
/// pgvane on the same config (same user) binds beside a running one, so a
/// restart or upgrade never leaves the port closed. With
/// `net.ipv4.tcp_migrate_req = 1` the kernel hands connections queued on a
/// closing listener to the one beside it instead of resetting them.
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
    socket.set_reuse_port(true)?;
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
                    // The future `on_worker` returns goes straight into the
                    // await: bound to a local first, this task (alive as long
                    // as the client) would hold it twice.
                    async move { on_worker(std_client, peer, &port, placement).await },
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

/// One accepted client, on its worker runtime: counted for the limits
/// from accept to close, then served by its port's kind (the future). A relayed client's counts, placement and drain tracking move
/// with its relay.
///
/// Not an `async fn`: what it computes here is moved into the future, so
/// the client's task (alive as long as the client, mostly idle) keeps no
/// copy of it.
fn on_worker(
    std_client: std::net::TcpStream,
    peer: SocketAddr,
    port: &PortShared,
    placement: Placement,
) -> impl std::future::Future<Output = ()> + Send + use<> {
    use tokio_util::either::Either;
    use tracing::Instrument;
    let limits = {
        let globals = port.globals.load();
        Limits {
            port: port.config.load().max_clients,
            total: globals.max_clients,
            per_address: globals.max_clients_per_address,
        }
    };
    let ticket = port.admit(peer.ip(), limits);
    let kind = port.kind();
    let split = matches!(*kind, PortKind::Split(_));
    let admitted = match &ticket.full {
        None => Ok(()),
        Some(full) => Err(full.text(&port.key.to_string(), split, peer.ip())),
    };
    let client = match TcpStream::from_std(std_client) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(port = %port.key, error = %e, "worker could not take the client");
            return Either::Right(std::future::ready(()));
        }
    };
    SocketOptions::for_clients(&port.globals.load().tcp).apply(&client);
    Either::Left(match &*kind {
        PortKind::Split(s) => Either::Left(session::run(
            client,
            s.context(),
            (admitted, ticket),
            peer,
            placement,
        )),
        PortKind::Role(ctx) => {
            let ctx = Arc::clone(ctx);
            let keep: relay::Keep = Box::new((ticket, placement, port.clients.token()));
            // Every log line of the client names its address. Boxed: the
            // flow ends once its relay runs as a task of its own, and
            // inline it would size every split session's task too.
            Either::Right(Box::pin(
                async move { relay::serve_client(client, &ctx, admitted, peer, keep).await }
                    .instrument(tracing::info_span!("client", %peer)),
            ))
        }
    })
}
