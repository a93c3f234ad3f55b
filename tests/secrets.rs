//! Secrets outside the config file: `${NAME}` environment references,
//! `password_file` / `admin_token_file`, and a `users_file` in pgbouncer's
//! `auth_file` format that a reload reads again (a rotated Kubernetes
//! Secret).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::*;
use std::ffi::OsStr;
use std::time::Duration;

/// `pgvane --check` on `yaml` with `env`: (passed, what it printed).
fn check_env(yaml: &str, env: &[(&str, &str)]) -> (bool, String) {
    let path = temp_path("secrets.yaml");
    std::fs::write(&path, yaml).unwrap();
    check_file(&path, env)
}

fn secret_file(name: &str, content: &str) -> String {
    let p = temp_path(name);
    std::fs::write(&p, content).unwrap();
    p.display().to_string()
}

#[test]
fn check_reads_environment_and_secret_files_and_names_each_failure() {
    let token = secret_file("token", "a-token-of-more-than-16-chars\n");
    let pw = secret_file("pw", "from-a-file\n");
    let users = secret_file(
        "userlist.txt",
        ";; pgbouncer style\n\"reader\" \"md5d5f9d2b3b0c3e7a6c0d1e2f3a4b5c6d7\"\n",
    );
    let yaml = |token_field: &str, pw_field: &str, users_file: &str| {
        format!(
            "listen_address: 127.0.0.1:{admin}
{token_field}
clusters:
  c:
    hosts: ['${{PGVANE_T_PATRONI}}']
    users_file: {users_file}
    users:
      - {{name: app, {pw_field}}}
      - {{name: env, password: '${{PGVANE_T_PW}}'}}
    ports:
      s: {{listen: '127.0.0.1:{port}', mode: split, roles: [any]}}
",
            admin = free_port(),
            port = free_port(),
        )
    };
    let env = [
        ("PGVANE_T_PATRONI", "http://127.0.0.11:8008"),
        ("PGVANE_T_PW", "from-the-environment"),
    ];
    let good = yaml(
        &format!("admin_token_file: {token}"),
        &format!("password_file: {pw}"),
        &users,
    );
    let (ok, out) = check_env(&good, &env);
    assert!(ok, "{out}");

    // An unset variable names the field and the variable.
    let (ok, out) = check_env(&good, &env[..1]);
    assert!(!ok);
    assert!(
        out.contains("clusters.c.users[1].password") && out.contains("PGVANE_T_PW"),
        "{out}"
    );

    // Missing files, both forms at once, a malformed users file.
    let bad = yaml(
        &format!("admin_token: a-token-of-more-than-16-chars\nadmin_token_file: {token}"),
        "password_file: /nonexistent/pw",
        &secret_file("bad-userlist.txt", "\"ok\" \"x\"\nreader secret\n"),
    );
    let (ok, out) = check_env(&bad, &env);
    assert!(!ok);
    for want in [
        "admin_token: give `admin_token` or `admin_token_file`, not both",
        "clusters.c.users[0].password_file: cannot read /nonexistent/pw",
        "clusters.c.users_file:",
        "line 2:",
    ] {
        assert!(out.contains(want), "{want:?} missing:\n{out}");
    }
}

/// Runs SQL on the leader directly (not through pgvane).
async fn on_leader(sql: &str) {
    let c = connect_node(&leader()).await;
    c.batch_execute(sql).await.unwrap();
}

async fn login(port: u16, user: &str, password: &str) -> Result<bool, String> {
    let conn_str = format!(
        "host=127.0.0.1 port={port} user={user} password={password} dbname=postgres connect_timeout=10"
    );
    match tokio_postgres::connect(&conn_str, tokio_postgres::NoTls).await {
        Ok((client, conn)) => {
            tokio::spawn(conn);
            let row = client.query_one("select current_user::text", &[]).await;
            Ok(row.map_err(|e| e.to_string())?.get::<_, String>(0) == user)
        }
        Err(e) => Err(e
            .as_db_error()
            .map_or_else(|| e.to_string(), |d| d.code().code().to_owned())),
    }
}

/// `login` retried for up to 10 s until it succeeds (a role created or
/// altered on the leader reaches a replica a moment later).
async fn login_eventually(port: u16, user: &str, password: &str) -> Result<bool, String> {
    let mut last = Err(String::new());
    for _ in 0..100 {
        last = login(port, user, password).await;
        if last == Ok(true) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_users_file_takes_effect_at_reload() {
    healthy_lab();
    on_leader(
        "drop role if exists pgvane_rotated; create role pgvane_rotated login password 'first-pass'",
    )
    .await;
    let users = temp_path("userlist.txt");
    std::fs::write(&users, "\"pgvane_rotated\" \"first-pass\"\n").unwrap();
    let p = Ports::new();
    let split = free_port();
    // postgres's password comes from the environment, pgvane_rotated's
    // from the users file.
    let yaml = lab_config(&p).replace(
        "    ports:\n",
        &format!(
            "    users_file: {}\n    users:\n      - {{name: postgres, password: '${{PGVANE_T_PW}}'}}\n    ports:\n      app: {{listen: 127.0.0.1:{split}, mode: split, roles: [any]}}\n",
            users.display()
        ),
    );
    let pv = Pgvane::start_with_env(&yaml, p.admin, &[("PGVANE_T_PW", OsStr::new("postgres"))]);
    assert_eq!(login(split, "postgres", "postgres").await, Ok(true));
    assert_eq!(
        login_eventually(split, "pgvane_rotated", "first-pass").await,
        Ok(true)
    );

    // Rotate: the role's password, then the file, then SIGHUP.
    on_leader("alter role pgvane_rotated password 'second-pass'").await;
    std::fs::write(&users, "\"pgvane_rotated\" \"second-pass\"\n").unwrap();
    pv.signal("HUP");
    let last = login_eventually(split, "pgvane_rotated", "second-pass").await;
    assert_eq!(last, Ok(true), "new password not taken:\n{}", pv.log_text());
    // The old one is now refused by pgvane itself, as PostgreSQL would.
    assert_eq!(
        login(split, "pgvane_rotated", "first-pass").await,
        Err("28P01".to_owned())
    );
    assert_eq!(login(split, "postgres", "postgres").await, Ok(true));

    // A reload that cannot read the file keeps the running users.
    std::fs::remove_file(&users).unwrap();
    pv.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(10), || pv
            .log_text()
            .contains("users_file")),
        "a failed reload was not logged:\n{}",
        pv.log_text()
    );
    assert_eq!(
        login(split, "pgvane_rotated", "second-pass").await,
        Ok(true)
    );
    on_leader("drop role if exists pgvane_rotated").await;
}
