//! The admin console with psql, as an operator uses pgbouncer's: SCRAM
//! login to database `pgvane`, SHOW POOLS/SERVERS/CLIENTS/STATS/CLUSTERS/
//! VERSION after real traffic, RELOAD, and clear errors for a wrong
//! password, another database, an unknown command and what is not built.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_shows_pools_clients_clusters_and_reloads() {
    healthy_lab();
    let p = Ports::new();
    let split = free_port();
    let console = free_port();
    let pw = temp_path("console-pw");
    std::fs::write(&pw, "console-secret\n").unwrap();
    let yaml = format!(
        "console:\n  listen: 127.0.0.1:{console}\n  users:\n    - {{name: admin, password_file: {}}}\n{}",
        pw.display(),
        split_config(&p, split)
    );
    let pv = Pgvane::start(&yaml, p.admin);

    // Traffic: a split session that stays, a role-port session that stays.
    let app = connect(split).await.unwrap();
    for _ in 0..3 {
        app.client.simple_query("select 1").await.unwrap();
    }
    app.client.simple_query("begin").await.unwrap();
    app.client.simple_query("select 2").await.unwrap();
    app.client.simple_query("commit").await.unwrap();
    let rw = connect(p.rw).await.unwrap();
    rw.client.simple_query("select 1").await.unwrap();

    let (ok, out, err) = psql(console, "console-secret", "pgvane", "SHOW VERSION");
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("pgvane {}", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );

    let (ok, out, err) = psql(console, "console-secret", "pgvane", "show clusters;");
    assert!(ok, "{err}");
    let members = rows(&out);
    assert_eq!(members.len(), 3, "{out}");
    let leader = leader();
    let l = members.iter().find(|r| r["member"] == leader).unwrap();
    assert_eq!(l["role"], "leader");
    assert!(l["eligible"].contains("rw=yes"), "{out}");
    assert!(
        members
            .iter()
            .filter(|r| r["role"] != "leader")
            .all(|r| r["eligible"].contains("rw=role")),
        "{out}"
    );

    let (ok, out, err) = psql(console, "console-secret", "pgvane", "SHOW POOLS");
    assert!(ok, "{err}");
    let pools = rows(&out);
    assert!(!pools.is_empty(), "{out}");
    assert!(
        pools
            .iter()
            .all(|r| r["port"] == "app" && r["user"] == "postgres" && r["database"] == "postgres"),
        "{out}"
    );
    let open: usize = pools
        .iter()
        .map(|r| r["sv_open"].parse::<usize>().unwrap())
        .sum();
    assert!(open >= 1, "{out}");

    let (ok, out, err) = psql(console, "console-secret", "pgvane", "SHOW SERVERS");
    assert!(ok, "{err}");
    assert!(!rows(&out).is_empty(), "{out}");

    let (ok, out, err) = psql(console, "console-secret", "pgvane", "SHOW CLIENTS");
    assert!(ok, "{err}");
    let clients = rows(&out);
    let port_total = |port: &str| {
        clients
            .iter()
            .find(|r| r["port"] == port && r["node"].is_empty())
            .map(|r| r["clients"].clone())
    };
    assert_eq!(port_total("app").as_deref(), Some("1"), "{out}");
    assert_eq!(port_total("rw").as_deref(), Some("1"), "{out}");
    assert!(
        clients
            .iter()
            .any(|r| r["port"] == "rw" && r["node"] == leader && r["clients"] == "1"),
        "{out}"
    );

    let (ok, out, err) = psql(console, "console-secret", "pgvane", "SHOW STATS");
    assert!(ok, "{err}");
    let stats = rows(&out);
    let app_stats = stats.iter().find(|r| r["port"] == "app").unwrap();
    assert!(
        app_stats["total_query_count"].parse::<u64>().unwrap() >= 6,
        "{out}"
    );
    assert_eq!(app_stats["total_xact_count"], "1", "{out}");
    assert!(
        app_stats["total_accepted"].parse::<u64>().unwrap() >= 1,
        "{out}"
    );

    // RELOAD applies the file: a new port appears.
    let extra = free_port();
    pv.rewrite_config(&yaml.replace(
        "    ports:\n",
        &format!("    ports:\n      extra: {{listen: 127.0.0.1:{extra}, roles: [any]}}\n"),
    ));
    let (ok, _, err) = psql(console, "console-secret", "pgvane", "RELOAD");
    assert!(ok, "{err}");
    let (_, out, _) = psql(console, "console-secret", "pgvane", "SHOW CLIENTS");
    assert!(rows(&out).iter().any(|r| r["port"] == "extra"), "{out}");

    // Refusals: each a clear error, the session goes on after the ones
    // that are not about logging in.
    let (ok, _, err) = psql(console, "wrong", "pgvane", "SHOW VERSION");
    assert!(
        !ok && err.contains("password authentication failed for user \"admin\""),
        "{err}"
    );
    let (ok, _, err) = psql(console, "console-secret", "postgres", "SHOW VERSION");
    assert!(
        !ok && err.contains("database \"postgres\" does not exist"),
        "{err}"
    );
    let (ok, _, err) = psql(console, "console-secret", "pgvane", "SHOW NOTHING");
    assert!(!ok && err.contains("unknown SHOW NOTHING"), "{err}");
    let (ok, _, err) = psql(console, "console-secret", "pgvane", "SHUTDOWN");
    assert!(!ok && err.contains("SHUTDOWN is not supported"), "{err}");
    let (ok, _, err) = psql(console, "console-secret", "pgvane", "select 1");
    assert!(!ok && err.contains("unknown command"), "{err}");
    drop(app);
    drop(rw);
}
