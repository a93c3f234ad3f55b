//! Reload by diff: prepare everything that can fail, then publish the new
//! config and change only what the diff names, in numbered steps.

use super::prepare::{Prepared, prepare};
use super::{App, key};
use crate::config::ConfigDiff;
use crate::control::ReloadReply;
use crate::listener;
use std::collections::HashMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

impl App {
    /// Applies the config file by diff, in numbered steps; any failure
    /// before step 4 keeps the old config untouched.
    pub(super) async fn reload(&mut self) -> ReloadReply {
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
        // 4. Publish the new config (and its log level).
        self.globals.store(Arc::new(new.clone()));
        if diff.globals_changed.contains(&"log_level") {
            // Said before the change: a quieter level would hide it after.
            tracing::info!(log_level = %new.log_level, "log level changing");
            if let Err(e) = self.logs.set_level(&new.log_level) {
                tracing::warn!("{e}");
            }
        }
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
                let map = c.watcher.map.load();
                self.metrics
                    .remove_cluster(name, map.members.iter().map(|m| &*m.name));
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
}
