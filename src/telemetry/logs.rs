//! The log output: text or JSON lines on stderr, filtered by a level that
//! a reload can change, and the one-line-per-connection records (login,
//! disconnect) every port writes under the `pgvane::conn` target.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// Target of the per-connection lines, so a filter can keep or drop them
/// (`log_level: warn,pgvane::conn=info`).
pub const CONN: &str = "pgvane::conn";

/// Changes the running log filter; held by `app` for reloads.
#[derive(Debug, Clone)]
pub struct LogControl {
    handle: Option<reload::Handle<EnvFilter, Registry>>,
    /// Set when `RUST_LOG` or `--log` chose the filter: the config's
    /// `log_level` then does not apply, at start or at reload.
    overridden: Option<String>,
}

impl LogControl {
    /// A control that changes nothing (tests, or before logging starts).
    #[must_use]
    pub fn inert() -> Self {
        Self {
            handle: None,
            overridden: None,
        }
    }

    /// Applies `level` (the config's `log_level`) unless `RUST_LOG` or
    /// `--log` chose the filter.
    ///
    /// # Errors
    /// Why it was not applied.
    pub fn set_level(&self, level: &str) -> Result<(), String> {
        if let Some(by) = &self.overridden {
            return Err(format!(
                "log_level {level} not applied: {by} sets the filter"
            ));
        }
        let Some(handle) = &self.handle else {
            return Err("log_level not applied: logging not started".to_owned());
        };
        let filter = EnvFilter::builder()
            .parse(level)
            .map_err(|e| format!("log_level {level} not applied: {e}"))?;
        handle
            .reload(filter)
            .map_err(|e| format!("log_level {level} not applied: {e}"))
    }
}

/// Installs the subscriber: text lines on stderr (JSON objects when
/// `json`), filtered by `RUST_LOG` if set, else `cli` (`--log`) if given,
/// else `level`.
pub fn init(json: bool, level: &str, cli: Option<&str>) -> LogControl {
    let env = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    let (chosen, overridden) = match (env, cli) {
        (Some(v), _) => (v, Some("RUST_LOG".to_owned())),
        (None, Some(c)) => (c.to_owned(), Some("--log".to_owned())),
        (None, None) => (level.to_owned(), None),
    };
    let filter = EnvFilter::builder()
        .parse(&chosen)
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let (text, json) = if json {
        (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            ),
        )
    } else {
        (
            Some(
                tracing_subscriber::fmt::layer()
                    .with_target(false)
                    .with_writer(std::io::stderr),
            ),
            None,
        )
    };
    let started = tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .try_init()
        .is_ok();
    LogControl {
        handle: started.then_some(handle),
        overridden,
    }
}
