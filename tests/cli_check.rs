//! `pgvane --check`: exit 0 for a valid file, 1 with every problem named by
//! field path otherwise; patroni_proxy's own example config passes as is.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::*;
use std::process::Command;

fn check(yaml: &str) -> (bool, String) {
    let path = temp_path("check.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(bin())
        .arg("--check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn example_config_passes() {
    let out = Command::new(bin())
        .args(["--check", "--config"])
        .arg(root().join("config.example.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration OK"));
}

/// A CA certificate, a client certificate signed by it and its key, as
/// PEM files; their paths.
fn client_pki() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["pgvane".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let write = |name: &str, text: String| {
        let path = temp_path(name);
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    };
    (
        write("ca.pem", ca.pem()),
        write("client.pem", cert.pem()),
        write("client.key", key.serialize_pem()),
    )
}

/// patroni_proxy's README example, verbatim shape (names, `master` port,
/// `host_port`, `max_lag_in_bytes`, tls block), taken as patroni_proxy
/// takes it: the path as the only argument. Its TLS files are read, as a
/// start reads them: with them present it passes; with the CA missing it
/// fails naming the block and the file.
#[test]
fn patroni_proxy_config_passes_unchanged() {
    let (ca, cert, key) = client_pki();
    let config = PATRONI_PROXY
        .replace("/etc/ssl/ca.pem", &ca)
        .replace("/etc/ssl/client.pem", &cert)
        .replace("/etc/ssl/client.key", &key);
    let path = temp_path("patroni_proxy.yaml");
    std::fs::write(&path, &config).unwrap();
    let (ok, out) = check_file(&path, &[]);
    assert!(ok, "{out}");

    let missing_ca = config.replace(&ca, "/nonexistent/ca.pem");
    let (ok, out) = check(&missing_ca);
    assert!(!ok, "{out}");
    assert!(
        out.contains("clusters.my_cluster.tls") && out.contains("/nonexistent/ca.pem"),
        "{out}"
    );
}

/// A split port's client TLS key that is missing fails the check, as it
/// would fail the start.
#[test]
fn check_reads_port_tls_files() {
    let (ok, out) = check(
        "clusters:\n  c:\n    hosts: ['http://127.0.0.1:8008']\n    users: [{name: app, password: secret}]\n    ports:\n      s:\n        listen: '127.0.0.1:7001'\n        mode: split\n        roles: [async]\n        tls: {cert: /nonexistent/server.pem, key: /nonexistent/server.key}\n",
    );
    assert!(!ok, "{out}");
    assert!(out.contains("clusters.c.ports.s.tls"), "{out}");
}

const PATRONI_PROXY: &str = r#"
cluster_update_interval: 3
listen_address: "127.0.0.1:8009"

clusters:
  my_cluster:
    hosts:
      - "http://192.168.1.1:8008"
      - "http://192.168.1.2:8008"
      - "http://192.168.1.3:8008"
    tls:
      ca_cert: "/etc/ssl/ca.pem"
      client_cert: "/etc/ssl/client.pem"
      client_key: "/etc/ssl/client.key"
      skip_verify: false
    ports:
      master:
        listen: "0.0.0.0:6432"
        roles: ["leader"]
        host_port: 6432
      replicas:
        listen: "0.0.0.0:6433"
        roles: ["sync", "async"]
        host_port: 6432
        max_lag_in_bytes: 16777216
"#;

#[test]
fn invalid_config_exits_1_naming_every_field() {
    let (ok, out) = check(
        "clusters:\n  c:\n    hosts: [ftp://x]\n    ports:\n      a: {listen: nope, roles: [leader]}\n      b: {listen: '127.0.0.1:1', roles: [slave]}\n",
    );
    assert!(!ok);
    for path in [
        "clusters.c.hosts[0]",
        "clusters.c.ports.a.listen",
        "clusters.c.ports.b.roles[0]",
    ] {
        assert!(out.contains(path), "{path} missing: {out}");
    }
    let (ok, out) = check("");
    assert!(!ok, "{out}");
    let (ok, out) = check("clusters: {}\nextra: 1\n");
    assert!(!ok && out.contains("extra"), "{out}");
    let missing = Command::new(bin())
        .args(["--check", "--config", "/nonexistent.yaml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent.yaml"));
}
