//! Leaving: a removed port drains, and shutdown stops accepting at once,
//! reports not ready, lets clients finish up to the drain deadline and
//! closes the rest.

use super::{App, PortRt};
use crate::listener::PortShared;
use std::sync::Arc;
use std::time::Duration;

impl App {
    pub(super) fn drain_port(&self, p: PortRt, deadline: Duration) {
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
            }
            // Every client has gone (or goes now): the close also ends
            // what still follows the port's tokens (the tasks of its
            // beacons), which would otherwise wait for the process's end.
            shared.close.cancel();
        });
    }

    /// Stops accepting, waits for clients up to the drain deadline, closes
    /// the rest, then stops the watchers.
    pub(super) async fn shutdown(self) {
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
