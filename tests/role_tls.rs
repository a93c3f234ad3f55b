//! Role ports pass TLS through: the client's SSLRequest goes to the chosen
//! PostgreSQL node unchanged and the TLS session runs end to end with the
//! node (pgvane sees only ciphertext). Checked both ways against the real
//! lab: with the nodes' `ssl` on, libpq's `sslmode=verify-full` verifies
//! the node's certificate through pgvane and `pg_stat_ssl` shows the
//! backend connection encrypted; with `ssl` off, the node's `N` reaches the
//! client, so `sslmode=require` fails as it would against PostgreSQL and
//! `sslmode=prefer` goes on in plaintext.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::*;

const BACKEND_SSL: &str = "select ssl from pg_stat_ssl where pid = pg_backend_pid()";

#[test]
fn role_ports_pass_tls_through_both_ways() {
    healthy_lab();
    let _off = SslOff;
    let p = Ports::new();
    let pg = Pgvane::start(&lab_config(&p), p.admin);
    let ca = lab(&["ssl", "ca"]);

    // Nodes without TLS: their `N` reaches the client.
    lab(&["ssl", "off"]);
    for port in [p.rw, p.ro] {
        let (ok, text) = psql_at(port, "sslmode=require", "select 1");
        assert!(
            !ok && text.contains("server does not support SSL"),
            "port {port}: {text}"
        );
        let (ok, text) = psql_at(port, "sslmode=prefer", BACKEND_SSL);
        assert!(ok && text.trim() == "f", "port {port}: {text}");
    }

    // Nodes with TLS: the session is encrypted end to end, and the node's
    // certificate verifies through pgvane's address.
    lab(&["ssl", "on"]);
    for port in [p.rw, p.ro, p.any] {
        let (ok, text) = psql_at(
            port,
            &format!("sslmode=verify-full sslrootcert={ca}"),
            BACKEND_SSL,
        );
        assert!(ok && text.trim() == "t", "port {port}: {text}");
    }
    let (ok, text) = psql_at(
        p.rw,
        &format!("sslmode=verify-full sslrootcert={ca}"),
        "select pg_is_in_recovery()",
    );
    assert!(ok && text.trim() == "f", "leader port: {text}");
    // A plaintext client of a TLS-capable node still gets in: TLS is the
    // node's pg_hba.conf to require, not the relay's.
    let (ok, text) = psql_at(p.rw, "sslmode=disable", BACKEND_SSL);
    assert!(ok && text.trim() == "f", "{text}");
    drop(pg);
}
