//! The client side of pgvane's TLS to PostgreSQL: a split port's
//! `server_tls` block (libpq's `sslmode`, a CA file) turned into a rustls
//! connector, plus the login requirements (`server_require_auth`,
//! `server_channel_binding`) the backend login checks. Built at start and
//! on every reload, so a SIGHUP reads a renewed CA file. No sockets here.

use super::{TlsError, server};
use crate::config::{ChannelBinding, ServerAuth, ServerTlsConfig, ServerTlsMode};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::{CertificateError, DigitallySignedStruct, Error, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::sync::Arc;

/// How a split port's backends log in: TLS and what the server may ask.
#[derive(Clone)]
pub struct BackendSecurity {
    /// libpq's `sslmode`.
    pub mode: ServerTlsMode,
    /// The connector, `None` when the mode is `disable`.
    pub connector: Option<tokio_rustls::TlsConnector>,
    /// Authentication requests the server may make (empty: any).
    pub require_auth: Vec<ServerAuth>,
    /// Whether SCRAM channel binding is used, required or never used.
    pub channel_binding: ChannelBinding,
}

impl std::fmt::Debug for BackendSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendSecurity")
            .field("mode", &self.mode)
            .field("require_auth", &self.require_auth)
            .field("channel_binding", &self.channel_binding)
            .finish_non_exhaustive()
    }
}

impl Default for BackendSecurity {
    /// libpq's defaults: `sslmode=prefer` without verification, any
    /// authentication method, channel binding when offered.
    fn default() -> Self {
        Self::from_config(&ServerTlsConfig::default(), &[], ChannelBinding::Prefer).unwrap_or_else(
            |_| Self {
                mode: ServerTlsMode::Disable,
                connector: None,
                require_auth: Vec::new(),
                channel_binding: ChannelBinding::Prefer,
            },
        )
    }
}

impl BackendSecurity {
    /// Reads the CA file of a `server_tls` block and builds the connector.
    /// With a CA file every mode but `disable` verifies the chain, as libpq
    /// does when a root certificate is present; `verify-full` also checks
    /// that the certificate names the node's host (an IP SAN for an IP).
    ///
    /// # Errors
    /// [`TlsError`] naming the file that cannot be read or used.
    pub fn from_config(
        cfg: &ServerTlsConfig,
        require_auth: &[ServerAuth],
        channel_binding: ChannelBinding,
    ) -> Result<Self, TlsError> {
        let connector = match cfg.mode {
            ServerTlsMode::Disable => None,
            mode => Some(connector(mode, cfg.ca_file.as_deref())?),
        };
        Ok(Self {
            mode: cfg.mode,
            connector,
            require_auth: require_auth.to_vec(),
            channel_binding,
        })
    }

    /// Whether the server may make authentication request `method`.
    #[must_use]
    pub fn allows(&self, method: ServerAuth) -> bool {
        self.require_auth.is_empty() || self.require_auth.contains(&method)
    }
}

fn connector(
    mode: ServerTlsMode,
    ca_file: Option<&str>,
) -> Result<tokio_rustls::TlsConnector, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = match ca_file {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for der in server::certs(path)? {
                roots.add(der).map_err(|e| TlsError::Pem {
                    path: path.to_owned(),
                    message: e.to_string(),
                })?;
            }
            let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                Arc::clone(&provider),
            )
            .build()
            .map_err(|e| TlsError::Pem {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
            Some(webpki)
        }
        None if matches!(mode, ServerTlsMode::VerifyCa | ServerTlsMode::VerifyFull) => {
            return Err(TlsError::Pem {
                path: "server_tls.ca_file".into(),
                message: "required for verify-ca and verify-full".into(),
            });
        }
        None => None,
    };
    let verifier = Arc::new(NodeVerifier {
        chain,
        check_name: mode == ServerTlsMode::VerifyFull,
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Pem {
            path: "server_tls".into(),
            message: e.to_string(),
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![server::ALPN_POSTGRESQL.to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// The name rustls checks a node's certificate against: its IP address
/// (an IP SAN) or its DNS name.
///
/// # Errors
/// A message when `host` is neither.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_owned()).map_err(|e| format!("{host}: {e}"))
}

/// What a node's certificate must prove: with a CA file, a chain to it (and
/// the node's name only for `verify-full`); without one, nothing, as libpq's
/// `prefer`/`require` (encryption without proof of who the server is). The
/// handshake signatures are checked either way.
#[derive(Debug)]
struct NodeVerifier {
    chain: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    check_name: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NodeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA and a leaf it signed for `names`: (CA DER, leaf DER).
    fn pki(names: &[&str]) -> (CertificateDer<'static>, CertificateDer<'static>) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let leaf = rcgen::CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        (ca.der().clone(), leaf.der().clone())
    }

    fn chain(ca: &CertificateDer<'static>, check_name: bool) -> NodeVerifier {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone()).unwrap();
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        NodeVerifier {
            chain: Some(webpki),
            check_name,
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        }
    }

    #[test]
    fn verify_full_checks_the_name_and_verify_ca_only_the_chain() {
        let (ca, leaf) = pki(&["db.example"]);
        let node = server_name("127.0.0.11").unwrap();
        let named = server_name("db.example").unwrap();
        let now = UnixTime::now();
        let full = chain(&ca, true);
        let ca_only = chain(&ca, false);
        assert!(
            full.verify_server_cert(&leaf, &[], &named, &[], now)
                .is_ok()
        );
        let e = full
            .verify_server_cert(&leaf, &[], &node, &[], now)
            .unwrap_err();
        assert!(e.to_string().contains("not valid for name"), "{e}");
        assert!(
            ca_only
                .verify_server_cert(&leaf, &[], &node, &[], now)
                .is_ok()
        );
        // Another CA's certificate (same issuer name, other key) fails
        // either way.
        let (_, stranger) = pki(&["127.0.0.11"]);
        for v in [&full, &ca_only] {
            let e = v
                .verify_server_cert(&stranger, &[], &node, &[], now)
                .unwrap_err();
            assert!(e.to_string().contains("BadSignature"), "{e}");
        }
    }

    #[test]
    fn verify_modes_need_a_ca_file_and_bad_files_are_named() {
        for mode in [ServerTlsMode::VerifyCa, ServerTlsMode::VerifyFull] {
            let cfg = ServerTlsConfig {
                mode,
                ca_file: None,
            };
            let e = BackendSecurity::from_config(&cfg, &[], ChannelBinding::Prefer)
                .unwrap_err()
                .to_string();
            assert!(e.contains("server_tls.ca_file"), "{e}");
        }
        let cfg = ServerTlsConfig {
            mode: ServerTlsMode::Require,
            ca_file: Some("/nonexistent/ca.pem".into()),
        };
        let e = BackendSecurity::from_config(&cfg, &[], ChannelBinding::Prefer)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        let off = ServerTlsConfig {
            mode: ServerTlsMode::Disable,
            ca_file: None,
        };
        let s =
            BackendSecurity::from_config(&off, &[ServerAuth::ScramSha256], ChannelBinding::Disable)
                .unwrap();
        assert!(s.connector.is_none());
        assert!(s.allows(ServerAuth::ScramSha256) && !s.allows(ServerAuth::Password));
        let any = BackendSecurity::default();
        assert!(any.connector.is_some() && any.mode == ServerTlsMode::Prefer);
        assert!(any.allows(ServerAuth::Password) && any.allows(ServerAuth::None));
    }
}
