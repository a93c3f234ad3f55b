//! The Patroni REST API over mutual TLS, against the real lab with
//! `lab.sh restapi-tls on` (every node serves https with its certificate
//! from the lab CA and `verify_client: required`). pgvane with the
//! cluster's `tls.ca_cert`, `client_cert` and `client_key` reads the whole
//! topology, including each member's own `/patroni` over https, and its
//! leader port reaches the leader; without a client certificate, or
//! trusting another CA, it gets no map and says why in `last_error`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

/// Puts the lab's REST API back to plain http when the test ends.
struct RestapiPlain;

impl Drop for RestapiPlain {
    fn drop(&mut self) {
        let _ = Command::new(root().join("deploy/lab/lab.sh"))
            .args(["restapi-tls", "off"])
            .status();
    }
}

fn yaml(p: &Ports, tls: &str) -> String {
    format!(
        "cluster_update_interval: 1
listen_address: 127.0.0.1:{admin}
clusters:
  lab:
    hosts: [https://127.0.0.11:8008, https://127.0.0.12:8008, https://127.0.0.13:8008]
    tls: {{{tls}}}
    ports:
      rw: {{listen: 127.0.0.1:{rw}, roles: [leader], host_port: 5432}}
",
        admin = p.admin,
        rw = p.rw
    )
}

fn members(pg: &Pgvane) -> usize {
    pg.clusters()["lab"]["members"]
        .as_array()
        .map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread")]
async fn patroni_api_over_mutual_tls() {
    healthy_lab();
    let _plain = RestapiPlain;
    lab(&["restapi-tls", "on"]);
    let paths = lab(&["restapi-tls", "paths"]);
    let [ca, cert, key]: [&str; 3] = paths
        .lines()
        .collect::<Vec<_>>()
        .try_into()
        .expect("three paths");

    // With the client certificate: the whole map, the leader confirmed by
    // its own /patroni over https, and the leader port works.
    let p = Ports::new();
    let tls = format!("ca_cert: {ca}, client_cert: {cert}, client_key: {key}");
    let pg = Pgvane::start(&yaml(&p, &tls), p.admin);
    let leader_confirmed = |pg: &Pgvane| {
        pg.clusters()["lab"]["members"]
            .as_array()
            .is_some_and(|m| m.len() == 3 && m.iter().any(|m| m["eligible"]["rw"] == true))
    };
    assert!(
        wait_until(Duration::from_secs(20), || leader_confirmed(&pg)),
        "{}\n{}",
        pg.clusters(),
        pg.log_text()
    );
    let view = pg.clusters();
    assert_eq!(view["lab"]["last_error"], serde_json::Value::Null, "{view}");
    let c = match connect(p.rw).await {
        Ok(c) => c,
        Err(e) => panic!("{e}\n{}\n{}", pg.clusters(), pg.log_text()),
    };
    let (node, in_recovery) = c.whereami().await.unwrap();
    assert!(!in_recovery, "{node}");
    assert_eq!(node, leader());
    drop(c);
    drop(pg);

    // Without a client certificate the API refuses pgvane; trusting
    // another CA, pgvane refuses the API. Either way: no map, and why.
    let stranger = {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let path = temp_path("stranger-ca.pem");
        std::fs::write(&path, params.self_signed(&key).unwrap().pem()).unwrap();
        path.to_string_lossy().into_owned()
    };
    for tls in [
        format!("ca_cert: {ca}"),
        format!("ca_cert: {stranger}, client_cert: {cert}, client_key: {key}"),
    ] {
        let p = Ports::new();
        let pg = Pgvane::start_unready(&yaml(&p, &tls), p.admin);
        assert!(
            wait_until(Duration::from_secs(10), || {
                pg.clusters()["lab"]["last_error"].is_string()
            }),
            "{tls}: {}",
            pg.clusters()
        );
        assert_eq!(members(&pg), 0, "{tls}: {}", pg.clusters());
        let (code, _) = connect_err(p.rw).await;
        assert_eq!(code, "57P03", "{tls}");
        drop(pg);
    }
}
