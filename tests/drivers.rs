//! Real drivers through the split port: psql, pgbench (simple, extended,
//! prepared), psycopg 3, asyncpg, node-postgres and pgJDBC, each a small
//! program in tests/drivers/ (tokio-postgres is covered by split_routing.rs).
//! Each: authenticate, prepared insert and select, a transaction, a read on
//! a replica, an error that leaves the session usable.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::*;
use std::process::Command;

fn start() -> (Pgvane, u16, String) {
    healthy_lab();
    let p = Ports::new();
    let split = free_port();
    let pg = Pgvane::start(&split_config(&p, split), p.admin);
    (pg, split, node_ip(&leader()))
}

fn run(cmd: &mut Command, split: u16, leader_ip: &str, pg: &Pgvane) -> String {
    let out = cmd
        .env("PGVANE_PORT", split.to_string())
        .env("LEADER_IP", leader_ip)
        .env("PGPASSWORD", "postgres")
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{text}\npgvane log:\n{}",
        pg.log_text()
    );
    text
}

#[test]
fn psql() {
    let (pg, split, leader_ip) = start();
    let script = "select host(inet_server_addr()) as where_read;
select 1/0;
select 'still usable' as after_error;
create table if not exists drv_psql(id int primary key, v text);
delete from drv_psql;
begin;
insert into drv_psql values (10, 'tx');
commit;
prepare ins(int, text) as insert into drv_psql values ($1, $2);
execute ins(1, 'v1');
prepare sel(int) as select v from drv_psql where id = $1;
execute sel(1);
do $$ begin raise notice 'notice relayed'; end $$;
listen drv_chan;
notify drv_chan, 'payload';
";
    let file = temp_path("smoke.sql");
    std::fs::write(&file, script).unwrap();
    let text = run(
        Command::new("psql")
            .args([
                "-X",
                "-h",
                "127.0.0.1",
                "-p",
                &split.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-f",
            ])
            .arg(&file),
        split,
        &leader_ip,
        &pg,
    );
    let read_line = text
        .lines()
        .skip_while(|l| !l.contains("where_read"))
        .nth(2)
        .unwrap()
        .trim()
        .to_owned();
    assert_ne!(read_line, leader_ip, "read reached the leader:\n{text}");
    assert!(
        text.contains("division by zero") && text.contains("still usable"),
        "{text}"
    );
    assert!(text.contains(" v1"), "{text}");
    assert!(
        text.contains("notice relayed"),
        "NOTICE not relayed:\n{text}"
    );
    assert!(
        text.contains("Asynchronous notification \"drv_chan\" with payload \"payload\""),
        "NOTIFY not relayed:\n{text}"
    );
}

#[test]
fn pgbench_simple_extended_prepared() {
    let (pg, split, leader_ip) = start();
    let bench = "/usr/lib/postgresql/15/bin/pgbench";
    let port = split.to_string();
    let base = ["-h", "127.0.0.1", "-p", port.as_str(), "-U", "postgres"];
    run(
        Command::new(bench)
            .args(base)
            .args(["-i", "-s", "1", "-q", "postgres"]),
        split,
        &leader_ip,
        &pg,
    );
    for mode in ["simple", "extended", "prepared"] {
        for builtin in ["select-only", "tpcb-like"] {
            let text = run(
                Command::new(bench).args(base).args([
                    "-n", "-M", mode, "-b", builtin, "-c", "4", "-j", "2", "-t", "200", "postgres",
                ]),
                split,
                &leader_ip,
                &pg,
            );
            assert!(
                text.contains("number of failed transactions: 0"),
                "{mode} {builtin}:\n{text}"
            );
            assert!(
                text.contains("number of transactions actually processed: 800/800"),
                "{mode} {builtin}:\n{text}"
            );
        }
    }
    assert!(pg.metric("pgvane_statements_routed_total", &["role=\"replica\""]) > 100.0);
}

#[test]
fn psycopg3() {
    let (pg, split, leader_ip) = start();
    let text = run(
        Command::new("/opt/pgvane-lab-venv/bin/python")
            .arg(root().join("tests/drivers/psycopg_smoke.py")),
        split,
        &leader_ip,
        &pg,
    );
    assert!(text.trim().ends_with("OK"), "{text}");
}

#[test]
fn asyncpg() {
    let (pg, split, leader_ip) = start();
    let text = run(
        Command::new("/opt/pgvane-lab-venv/bin/python")
            .arg(root().join("tests/drivers/asyncpg_smoke.py")),
        split,
        &leader_ip,
        &pg,
    );
    assert!(text.trim().ends_with("OK"), "{text}");
}

#[test]
fn node_postgres() {
    let (pg, split, leader_ip) = start();
    let text = run(
        Command::new("node").arg(root().join("tests/drivers/node/smoke.js")),
        split,
        &leader_ip,
        &pg,
    );
    assert!(text.trim().ends_with("OK"), "{text}");
}

#[test]
fn pgjdbc() {
    let (pg, split, leader_ip) = start();
    let text = run(
        Command::new("java")
            .args(["-cp", "/usr/share/java/postgresql.jar"])
            .arg(root().join("tests/drivers/jdbc/Smoke.java")),
        split,
        &leader_ip,
        &pg,
    );
    assert!(text.trim().ends_with("OK"), "{text}");
}
