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

/// patroni_proxy's README example, verbatim shape (names, `master` port,
/// `host_port`, `max_lag_in_bytes`, tls block).
#[test]
fn patroni_proxy_config_passes_unchanged() {
    let (ok, out) = check(
        r#"
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
"#,
    );
    assert!(ok, "{out}");
}

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
