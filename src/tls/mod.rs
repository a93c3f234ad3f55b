//! TLS settings → ready-to-use TLS objects: the Patroni REST client
//! (`reqwest` on rustls) from a cluster's `tls` block, and the acceptor of a
//! split port's clients from the port's `tls` block (`server`), and the
//! connector of a split port's backends from its `server_tls` block
//! (`client`), and the one plain-or-TLS stream type both sides use
//! (`stream`). Reads PEM files; opens no sockets.

pub mod client;
pub mod server;
pub mod stream;

pub use client::BackendSecurity;
pub use server::ServerTls;

use crate::config::TlsConfig;
use std::time::Duration;

/// Why a cluster's HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file did not hold what it should.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// reqwest refused the settings (the message carries its causes).
    #[error("HTTP client: {0}")]
    Client(String),
}

fn read(path: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Builds the Patroni API client for a cluster. `connect_timeout` bounds the
/// TCP (and TLS) connect; the watcher bounds each request as a whole.
///
/// # Errors
/// [`TlsError`] when a certificate or key cannot be read or parsed.
pub fn patroni_client(
    tls: Option<&TlsConfig>,
    connect_timeout: Duration,
) -> Result<reqwest::Client, TlsError> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .no_proxy()
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .user_agent(concat!("pgvane/", env!("CARGO_PKG_VERSION")));
    if let Some(tls) = tls {
        if let Some(ca) = &tls.ca_cert {
            // The same PEM reading as a split port's certificate chain.
            for der in server::certs(ca)? {
                let cert = reqwest::Certificate::from_der(&der).map_err(|e| TlsError::Pem {
                    path: ca.clone(),
                    message: e.to_string(),
                })?;
                builder = builder.add_root_certificate(cert);
            }
        }
        if let (Some(cert), Some(key)) = (&tls.client_cert, &tls.client_key) {
            let mut pem = read(cert)?;
            pem.push(b'\n');
            pem.extend(read(key)?);
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| TlsError::Pem {
                path: format!("{cert} + {key}"),
                message: e.to_string(),
            })?;
            builder = builder.identity(identity);
        }
        if tls.skip_verify == Some(true) {
            builder = builder.danger_accept_invalid_certs(true);
        }
    }
    builder.build().map_err(|e| {
        // reqwest's own text is "builder error"; the cause says what.
        let mut text = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            text.push_str(": ");
            text.push_str(&c.to_string());
            cause = c.source();
        }
        TlsError::Client(text)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_skip_verify_clients_build() {
        assert!(patroni_client(None, Duration::from_secs(1)).is_ok());
        let tls = TlsConfig {
            skip_verify: Some(true),
            ..TlsConfig::default()
        };
        assert!(patroni_client(Some(&tls), Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn missing_or_bad_files_are_named() {
        let tls = TlsConfig {
            ca_cert: Some("/nonexistent/ca.pem".into()),
            ..TlsConfig::default()
        };
        let e = patroni_client(Some(&tls), Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        let dir = std::env::temp_dir().join(format!("pgvane-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("bad.pem");
        std::fs::write(&bad, "not a pem").unwrap();
        let tls = TlsConfig {
            ca_cert: Some(bad.to_string_lossy().into_owned()),
            ..TlsConfig::default()
        };
        let e = patroni_client(Some(&tls), Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.pem"), "{e}");
    }
}
