//! What a start, a reload and `--check` read and compute before anything
//! changes: the config file (passwords hashed), each cluster's Patroni
//! client (CA and client certificates read) and each port's TLS, both
//! ways. One preparation, so what passes `--check` starts and reloads.

use crate::config::{self, ClusterConfig, Config, PortConfig, PortKey};
use crate::tls;
use crate::topology::watcher::WatchSettings;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::key;

fn watch_settings(config: &Config, c: &ClusterConfig) -> Result<WatchSettings, tls::TlsError> {
    let timeout = config.api_timeout.min(config.cluster_update_interval);
    Ok(WatchSettings {
        hosts: c.hosts.clone(),
        interval: config.cluster_update_interval,
        timeout,
        client: tls::patroni_client(c.tls.as_ref(), timeout)?,
    })
}

/// A port's TLS, both ways, as read from its files.
pub(super) struct PortSecurity {
    /// To clients (split ports with a `tls` block).
    pub(super) client: Option<Arc<tls::ServerTls>>,
    /// To backends (split ports).
    pub(super) backend: Arc<tls::BackendSecurity>,
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

/// What a start or a reload reads and computes before it changes
/// anything: the config (passwords hashed), watcher clients and port TLS
/// (files read).
pub struct Prepared {
    pub(super) new: Config,
    pub(super) settings: BTreeMap<String, WatchSettings>,
    pub(super) tls: HashMap<PortKey, PortSecurity>,
}

impl Prepared {
    /// The config that was read.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.new
    }
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared").finish_non_exhaustive()
    }
}

/// The part of a start or reload that touches files and burns CPU (a
/// reload runs it on a blocking thread so the runtime that accepts clients
/// never waits on it); every problem found, one per line, each naming its
/// field.
///
/// # Errors
/// The problems, as text.
pub fn prepare(path: &std::path::Path) -> Result<Prepared, String> {
    let new = config::load_file(path).map_err(|e| e.to_string())?;
    let mut settings = BTreeMap::new();
    let mut tls = HashMap::new();
    let mut errors = Vec::new();
    for (name, c) in &new.clusters {
        match watch_settings(&new, c) {
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

/// `pgvane --check`: the same preparation as a reload (config, passwords,
/// every TLS and CA file), so a file that passes starts; the summary line,
/// or every error found.
///
/// # Errors
/// Every problem, one per line, each naming its field.
pub fn check(path: &std::path::Path) -> Result<String, String> {
    let p = prepare(path)?;
    let ports: usize = p.new.clusters.values().map(|c| c.ports.len()).sum();
    Ok(format!(
        "configuration OK ({} clusters, {ports} ports)",
        p.new.clusters.len()
    ))
}
