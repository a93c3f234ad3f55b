//! The server side of client TLS on split ports: a rustls acceptor built
//! from the port's `tls.cert`/`tls.key` PEM files (ALPN `postgresql`, as
//! PostgreSQL 17), and the certificate's `tls-server-end-point` hash that
//! SCRAM-SHA-256-PLUS binds to (RFC 5929, as PostgreSQL's
//! `be_tls_get_certificate_hash`). Built at start and on every reload, so a
//! SIGHUP picks up renewed certificate files.

use super::{TlsError, read};
use crate::config::{ClientTlsMode, PortTls};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::Digest;
use std::sync::Arc;

/// The ALPN protocol name PostgreSQL 17 uses.
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// What a split port needs to speak TLS with its clients.
pub struct ServerTls {
    /// Whether plaintext clients are refused.
    pub mode: ClientTlsMode,
    /// The acceptor, `None` when the mode is `disable`.
    pub acceptor: Option<tokio_rustls::TlsAcceptor>,
    /// `tls-server-end-point` channel-binding data of the certificate.
    pub end_point: Vec<u8>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("mode", &self.mode)
            .field("acceptor", &self.acceptor.is_some())
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads the certificate chain and key of a port's `tls` block.
    ///
    /// # Errors
    /// [`TlsError`] naming the file that cannot be read or used.
    pub fn from_config(cfg: &PortTls) -> Result<Self, TlsError> {
        if cfg.mode == ClientTlsMode::Disable {
            return Ok(Self {
                mode: cfg.mode,
                acceptor: None,
                end_point: Vec::new(),
            });
        }
        let missing = |what: &str| TlsError::Pem {
            path: format!("tls.{what}"),
            message: "required unless `mode: disable`".into(),
        };
        let cert_path = cfg.cert.as_deref().ok_or_else(|| missing("cert"))?;
        let key_path = cfg.key.as_deref().ok_or_else(|| missing("key"))?;
        let certs = certs(cert_path)?;
        let key = key(key_path)?;
        let end_point = end_point_hash(&certs[0]);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Pem {
                path: cert_path.to_owned(),
                message: e.to_string(),
            })?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Pem {
                path: format!("{cert_path} + {key_path}"),
                message: e.to_string(),
            })?;
        config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        Ok(Self {
            mode: cfg.mode,
            acceptor: Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
            end_point,
        })
    }
}

/// The certificates of a PEM file, in order; an error naming the file when
/// it holds none or is malformed.
pub(super) fn certs(path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            message: "no certificate found".into(),
        });
    }
    Ok(certs)
}

fn key(path: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            message: e.to_string(),
        })?
        .ok_or_else(|| TlsError::Pem {
            path: path.to_owned(),
            message: "no private key found".into(),
        })
}

/// One DER element at the start of `der`: (tag, contents, rest).
fn der_element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The certificate's `signatureAlgorithm` OID (DER contents).
fn signature_oid(cert: &[u8]) -> Option<&[u8]> {
    let (_, certificate, _) = der_element(cert)?;
    let (_, _tbs, rest) = der_element(certificate)?;
    let (_, algorithm, _) = der_element(rest)?;
    let (tag, oid, _) = der_element(algorithm)?;
    (tag == 0x06).then_some(oid)
}

/// RFC 5929 `tls-server-end-point`: the certificate hashed with its
/// signature's hash function, SHA-256 for MD5, SHA-1 and anything else.
#[must_use]
pub fn end_point_hash(cert: &[u8]) -> Vec<u8> {
    // sha384WithRSAEncryption, ecdsa-with-SHA384; sha512WithRSAEncryption, ecdsa-with-SHA512.
    const SHA384: [&[u8]; 2] = [
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c],
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],
    ];
    const SHA512: [&[u8]; 2] = [
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d],
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04],
    ];
    match signature_oid(cert) {
        Some(oid) if SHA384.contains(&oid) => sha2::Sha384::digest(cert).to_vec(),
        Some(oid) if SHA512.contains(&oid) => sha2::Sha512::digest(cert).to_vec(),
        _ => sha2::Sha256::digest(cert).to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(alg: &'static rcgen::SignatureAlgorithm) -> (tempdir::Dir, PortTls, Vec<u8>) {
        let dir = tempdir::Dir::new();
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let cert_path = dir.path("cert.pem");
        let key_path = dir.path("key.pem");
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let cfg = PortTls {
            mode: ClientTlsMode::Require,
            cert: Some(cert_path),
            key: Some(key_path),
        };
        (dir, cfg, cert.der().to_vec())
    }

    mod tempdir {
        /// A directory removed on drop.
        pub(super) struct Dir(std::path::PathBuf);
        impl Dir {
            pub(super) fn new() -> Self {
                use std::sync::atomic::{AtomicUsize, Ordering};
                static N: AtomicUsize = AtomicUsize::new(0);
                let p = std::env::temp_dir().join(format!(
                    "pgvane-tls-server-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&p).unwrap();
                Self(p)
            }
            pub(super) fn path(&self, name: &str) -> String {
                self.0.join(name).to_string_lossy().into_owned()
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn end_point_hash_follows_the_signature_hash() {
        let (_d, _c, p256) = write_pair(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(end_point_hash(&p256), sha2::Sha256::digest(&p256).to_vec());
        let (_d, _c, p384) = write_pair(&rcgen::PKCS_ECDSA_P384_SHA384);
        assert_eq!(end_point_hash(&p384), sha2::Sha384::digest(&p384).to_vec());
        // Not DER at all: SHA-256 of the bytes, no panic.
        assert_eq!(
            end_point_hash(b"\x30\x85"),
            sha2::Sha256::digest(b"\x30\x85").to_vec()
        );
    }

    #[test]
    fn acceptor_builds_and_bad_files_are_named() {
        let (_d, cfg, _) = write_pair(&rcgen::PKCS_ECDSA_P256_SHA256);
        let tls = ServerTls::from_config(&cfg).unwrap();
        assert!(tls.acceptor.is_some());
        assert_eq!(tls.end_point.len(), 32);
        let swapped = PortTls {
            cert: cfg.key.clone(),
            ..cfg.clone()
        };
        let e = ServerTls::from_config(&swapped).unwrap_err().to_string();
        assert!(e.contains("key.pem") && e.contains("no certificate"), "{e}");
        let missing = PortTls {
            key: Some("/nonexistent/key.pem".into()),
            ..cfg.clone()
        };
        let e = ServerTls::from_config(&missing).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/key.pem"), "{e}");
        let none = PortTls { key: None, ..cfg };
        let e = ServerTls::from_config(&none).unwrap_err().to_string();
        assert!(e.contains("tls.key"), "{e}");
    }
}
