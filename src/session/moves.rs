//! Moving a session to another worker runtime between requests, when the
//! workers' packing says so (`workers::pack`): the client's socket leaves
//! this worker's reactor and joins the other's, and the session's request
//! loop goes on there. Only at rest: outside a transaction, no backend
//! held, nothing buffered to write, a plain (not TLS) client socket. The
//! task that started the session waits for it and finishes it.

use super::Session;
use tokio::runtime::Handle;

/// How a stretch of the request loop ended.
pub(super) enum Served {
    /// The session is over.
    Ended,
    /// The session is at rest and should go on on this worker.
    Move(Handle),
}

impl Session {
    /// Whether to move now: the new worker's handle (the session's
    /// placement already counts there).
    pub(super) fn wants_move(&mut self) -> Option<Handle> {
        if self.held.is_some() || !self.client.out.is_empty() || self.client.is_tls() {
            return None;
        }
        let (handle, placement) = self.ctx.workers.move_from(&self.placement)?;
        self.placement = placement;
        Some(handle)
    }

    /// Serves the session to its end, following it to each worker it
    /// moves to; the session back once it ended, or None when it was lost
    /// on the way (the worker stopped: pgvane is exiting).
    pub(super) async fn serve_anywhere(mut self: Box<Self>) -> Option<Box<Self>> {
        use tracing::Instrument;
        let mut served = self.serve().await;
        while let Served::Move(handle) = served {
            let Some(socket) = self.client.detach() else {
                self.ended = "client_gone";
                return Some(self);
            };
            let span = tracing::Span::current();
            let task = handle.spawn(
                async move {
                    let served = if self.client.attach(socket).is_ok() {
                        self.serve().await
                    } else {
                        self.ended = "client_gone";
                        Served::Ended
                    };
                    (self, served)
                }
                .instrument(span),
            );
            (self, served) = task.await.ok()?;
            let key = &self.ctx.key;
            self.ctx
                .metrics
                .session_moves
                .with_label_values(&[&key.cluster, &key.port])
                .inc();
        }
        Some(self)
    }
}
