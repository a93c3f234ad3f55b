//! No plaintext password in the config: a split-port user stored only as
//! the SCRAM-SHA-256 verifier PostgreSQL itself holds (`pg_authid`), with
//! no `backend_password`, logs in through pgvane to the real lab, reads on
//! a replica and writes on the leader: pgvane logs in to each node with the
//! keys the client proved (SCRAM pass-through, as pgbouncer). A verifier of
//! the same password with another salt lets the client into pgvane but not
//! into PostgreSQL, which refuses with its own 28P01. Neither the password
//! nor the verifier's keys appear in pgvane's log, `/metrics` or
//! `/clusters`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::*;

const ROLE: &str = "pt_user";
const PASSWORD: &str = "Pass-Through-Secret-42";

/// Drops the test's role when the test ends.
struct DropRole(String);

impl Drop for DropRole {
    fn drop(&mut self) {
        let _ = std::process::Command::new(root().join("deploy/lab/lab.sh"))
            .args(["psql", &self.0, &format!("drop role if exists {ROLE}")])
            .status();
    }
}

fn yaml(p: &Ports, split: u16, verifier: &str) -> String {
    lab_config(p).replace(
        "    ports:\n",
        &format!(
            "    users:\n      - {{name: {ROLE}, password: '{verifier}'}}\n    ports:\n      app: {{listen: 127.0.0.1:{split}, mode: split, roles: [sync, async], pool_size: 2, server_require_auth: [scram-sha-256]}}\n"
        ),
    )
}

async fn login(split: u16) -> Result<tokio_postgres::Client, (String, String)> {
    let conn = format!(
        "host=127.0.0.1 port={split} user={ROLE} password={PASSWORD} dbname=postgres connect_timeout=10"
    );
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .map_err(|e| match e.as_db_error() {
            Some(d) => (d.code().code().to_owned(), d.message().to_owned()),
            None => (String::new(), e.to_string()),
        })?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

fn db_error(e: &tokio_postgres::Error) -> (String, String) {
    match e.as_db_error() {
        Some(d) => (d.code().code().to_owned(), d.message().to_owned()),
        None => (String::new(), e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_verifier_alone_logs_in_to_every_node() {
    healthy_lab();
    let lead = leader();
    let n = lead.trim_start_matches("node").to_owned();
    let _role = DropRole(n.clone());
    lab(&[
        "psql",
        &n,
        &format!("drop role if exists {ROLE}; create role {ROLE} login password '{PASSWORD}'"),
    ]);
    let verifier = lab(&[
        "psql",
        &n,
        &format!("select rolpassword from pg_authid where rolname = '{ROLE}'"),
    ]);
    let verifier = verifier.trim().to_owned();
    assert!(verifier.starts_with("SCRAM-SHA-256$"), "{verifier}");

    let p = Ports::new();
    let split = free_port();
    let pg = Pgvane::start(&yaml(&p, split, &verifier), p.admin);
    let c = login(split).await.expect("login with a verifier only");
    // A read on a replica (the role has replicated by the time it answers),
    // then a write on the leader: both nodes took pgvane's SCRAM keys.
    let read = c
        .query_one("select current_user::text, host(inet_server_addr())", &[])
        .await;
    let row = read.unwrap_or_else(|e| panic!("{:?}\n{}", db_error(&e), pg.log_text()));
    assert_eq!(row.get::<_, String>(0), ROLE);
    let read_on = node_of_ip(row.get::<_, &str>(1));
    assert!(replicas().contains(&read_on), "a read ran on {read_on}");
    let row = c
        .query_one(
            "select host(inet_server_addr()) from (select txid_current()) w",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{:?}", db_error(&e)));
    assert_eq!(node_of_ip(row.get(0)), lead, "a write runs on the leader");
    drop(c);

    // Nothing secret in what pgvane shows.
    let keys: Vec<String> = verifier
        .split('$')
        .nth(2)
        .unwrap()
        .split(':')
        .map(str::to_owned)
        .collect();
    let shown = format!("{}{}{}", pg.log_text(), pg.metrics(), pg.clusters());
    for secret in [PASSWORD, &verifier, &keys[0], &keys[1]] {
        assert!(!shown.contains(secret), "{secret} shown");
    }
    drop(pg);

    // The same password under another salt: pgvane accepts the client, the
    // node does not accept the keys, and says so itself.
    let other = pgvane::auth::scram::Verifier::from_password(PASSWORD, b"another-salt-123", 4096);
    let other = format!(
        "SCRAM-SHA-256${}:{}${}:{}",
        other.iterations,
        B64.encode(&other.salt),
        B64.encode(other.stored_key),
        B64.encode(other.server_key)
    );
    let p = Ports::new();
    let split = free_port();
    let _pg = Pgvane::start(&yaml(&p, split, &other), p.admin);
    let err = match login(split).await {
        Err(e) => e,
        Ok(c) => db_error(&c.simple_query("select 1").await.expect_err("node refuses")),
    };
    assert_eq!(err.0, "28P01", "{err:?}");
    assert!(err.1.contains(ROLE), "{err:?}");
}
