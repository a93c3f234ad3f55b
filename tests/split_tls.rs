//! TLS between clients and a split port, checked with libpq (psql) and
//! rustls against the real lab: `sslmode=verify-full` with the test's CA and
//! SCRAM-SHA-256-PLUS (`channel_binding=require`); PostgreSQL 17's direct
//! TLS with ALPN `postgresql` (refused without ALPN, like PostgreSQL);
//! `mode: require` refuses plaintext with 28000; a SIGHUP reads renewed
//! certificate files for new clients while connected TLS clients stay; a
//! reload to `mode: allow` lets plaintext in.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::*;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A CA and a server certificate for 127.0.0.1 and localhost it signed.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn make_pki(name: &str) -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("pgvane test CA {name}"));
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let pki = Pki {
        ca: temp_path(&format!("{name}-ca.pem")),
        cert: temp_path(&format!("{name}-cert.pem")),
        key: temp_path(&format!("{name}-key.pem")),
    };
    std::fs::write(&pki.ca, ca.pem()).unwrap();
    std::fs::write(&pki.cert, cert.pem()).unwrap();
    std::fs::write(&pki.key, key.serialize_pem()).unwrap();
    pki
}

/// A direct TLS connection (no SSLRequest) with `alpn`, then tokio-postgres
/// over it.
async fn direct(
    port: u16,
    ca: &PathBuf,
    alpn: Option<&[u8]>,
) -> Result<tokio_postgres::Client, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut std::fs::read(ca).unwrap().as_slice()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    if let Some(a) = alpn {
        cfg.alpn_protocols = vec![a.to_vec()];
    }
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let mut pg = tokio_postgres::Config::new();
    pg.user("postgres").password("postgres").dbname("postgres");
    let (client, conn) = pg
        .connect_raw(tls, tokio_postgres::NoTls)
        .await
        .map_err(|e| {
            e.as_db_error().map_or(e.to_string(), |d| {
                format!("{} {}", d.code().code(), d.message())
            })
        })?;
    tokio::spawn(conn);
    Ok(client)
}

#[tokio::test(flavor = "multi_thread")]
async fn split_port_tls_end_to_end() {
    let first = make_pki("first");
    let tls = |mode: &str| {
        format!(
            "roles: [sync, async], tls: {{mode: {mode}, cert: {}, key: {}}}",
            first.cert.display(),
            first.key.display()
        )
    };
    let (pg, split) = start_split(&tls("require"));
    let verify = |ca: &PathBuf| format!("sslmode=verify-full sslrootcert={}", ca.display());

    // libpq: verify-full against the test CA, channel binding required.
    let (ok, text) = psql_at(
        split,
        &format!("{} channel_binding=require", verify(&first.ca)),
        "\\conninfo",
    );
    assert!(ok && text.contains("SSL connection"), "{text}");
    let (ok, text) = psql_at(split, &verify(&first.ca), "select 40 + 2");
    assert!(ok && text.trim() == "42", "{text}");

    // Plaintext on a `require` port: 28000, told after the startup packet.
    let (ok, text) = psql_at(split, "sslmode=disable", "select 1");
    assert!(!ok && text.contains("no encryption"), "{text}");
    let err = connect(split).await.err().expect("plaintext admitted");
    assert_eq!(
        err.as_db_error().map(|d| d.code().code()),
        Some("28000"),
        "{err}"
    );

    // Direct TLS (PostgreSQL 17's sslnegotiation=direct): works with ALPN,
    // refused without it.
    let kept = direct(split, &first.ca, Some(b"postgresql")).await.unwrap();
    let row = kept.query_one("select 7::int", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 7);
    let Err(e) = direct(split, &first.ca, None).await else {
        panic!("no ALPN admitted")
    };
    assert!(e.contains("08P01") && e.contains("ALPN"), "{e}");
    let Err(e) = direct(split, &first.ca, Some(b"http/1.1")).await else {
        panic!("wrong ALPN admitted")
    };
    assert!(!e.is_empty());

    // Renewed certificate files, same paths: a SIGHUP serves the new
    // certificate to new clients; the connected TLS client stays.
    let second = make_pki("second");
    std::fs::copy(&second.cert, &first.cert).unwrap();
    std::fs::copy(&second.key, &first.key).unwrap();
    pg.signal("HUP");
    let renewed = wait_until(Duration::from_secs(10), || {
        psql_at(split, &verify(&second.ca), "select 1").0
    });
    assert!(
        renewed,
        "new certificate not served after SIGHUP:\n{}",
        pg.log_text()
    );
    let (ok, text) = psql_at(split, &verify(&first.ca), "select 1");
    assert!(!ok && text.contains("certificate verify failed"), "{text}");
    let row = kept.query_one("select 8::int", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 8, "TLS client dropped by the reload");

    // A reload to `mode: allow`: plaintext comes in, TLS still works.
    let yaml = std::fs::read_to_string(&pg.config)
        .unwrap()
        .replace("mode: require", "mode: allow");
    pg.rewrite_config(&yaml);
    pg.signal("HUP");
    let plain = wait_until(Duration::from_secs(10), || {
        psql_at(split, "sslmode=disable", "select 1").0
    });
    assert!(
        plain,
        "plaintext still refused after reload:\n{}",
        pg.log_text()
    );
    let (ok, text) = psql_at(split, &verify(&second.ca), "\\conninfo");
    assert!(ok && text.contains("SSL connection"), "{text}");
    // A broken certificate file fails the reload and keeps the old TLS.
    std::fs::write(&first.cert, "not a certificate").unwrap();
    let (status, body) = pg.http("POST", "/reload").unwrap();
    assert_ne!(status, 200, "{body}");
    assert!(body.contains("tls"), "{body}");
    let (ok, text) = psql_at(split, &verify(&second.ca), "select 1");
    assert!(ok, "old TLS lost after a failed reload: {text}");
}
