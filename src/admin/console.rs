//! The PostgreSQL-protocol admin console (`console.listen`), for the tools
//! and habits pgbouncer's console built: `psql -p 6499 -U admin pgvane`
//! logs in with SCRAM (`console.users`), then `SHOW POOLS`, `SHOW SERVERS`,
//! `SHOW CLIENTS`, `SHOW STATS`, `SHOW CLUSTERS`, `SHOW VERSION` and
//! `RELOAD` run in the simple protocol, with pgbouncer's column names
//! where the meaning is the same. Reads the snapshots the HTTP admin API
//! reads; changes nothing except through `RELOAD` on the command loop.

use super::operate::{self, Op, Outcome};
use super::{AdminState, ClusterView};
use crate::control::Command;
use crate::protocol::encode::{self, Severity};
use crate::protocol::message;
use crate::protocol::sqlstate::{self, SqlState};
use crate::session::handshake::{self, Handshake, Login, TlsOffer};
use bytes::BytesMut;
use serde_json::Value;
use std::collections::BTreeMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The one database name the console answers to, as pgbouncer's.
pub const DATABASE: &str = "pgvane";

/// Longest a console client may take to log in.
const LOGIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Most console connections at once (each, until it logs in, is anyone's).
const MAX_CONNECTIONS: usize = 32;

/// Console users' parsed secrets by password text: a plaintext password
/// is hashed once, not at every attempt (which would cost the control
/// thread a PBKDF2 per anonymous startup packet, and change the salt a
/// real user is offered while a mock user's stays the same).
type Secrets = std::sync::Mutex<std::collections::HashMap<String, crate::auth::Secret>>;

/// Accepts console clients until `stop` fires.
pub async fn serve(listener: TcpListener, state: AdminState, stop: CancellationToken) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let secrets = std::sync::Arc::new(Secrets::default());
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors, say: do not spin on this thread.
                    tracing::warn!(error = %e, "console: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = std::sync::Arc::clone(&slots).try_acquire_owned() else {
            tracing::info!(%peer, "console: {MAX_CONNECTIONS} connections already; closed");
            continue;
        };
        let state = state.clone();
        let stop = stop.clone();
        let secrets = std::sync::Arc::clone(&secrets);
        tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = client(stream, &state, &secrets) => {}
            }
            drop(slot);
            tracing::debug!(%peer, "console client left");
        });
    }
}

/// One console client: log in, then answer queries until it leaves.
async fn client(mut s: TcpStream, state: &AdminState, secrets: &Secrets) {
    let login = login(&mut s, state, secrets);
    let Ok(Some(user)) = tokio::time::timeout(LOGIN_TIMEOUT, login).await else {
        return;
    };
    tracing::info!(target: crate::telemetry::CONN, event = "login", port = "console", %user, "console login");
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    loop {
        let m = loop {
            match message::try_cut(&mut buf) {
                Ok(Some(m)) => break m,
                Ok(None) => {}
                Err(_) => return,
            }
            match s.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        match m.tag() {
            b'X' => return,
            b'Q' => {
                let body = m.body();
                let sql = String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(body));
                run(&sql, state, &mut out).await;
            }
            _ => error(
                &mut out,
                sqlstate::FEATURE_NOT_SUPPORTED,
                "the pgvane console speaks the simple query protocol only",
            ),
        }
        encode::ready_for_query(&mut out, b'I');
        if s.write_all(&out).await.is_err() {
            return;
        }
        out.clear();
    }
}

/// The startup exchange: database `pgvane`, a `console.users` login.
/// The user's name on success (AuthenticationOk and ready sent).
async fn login(s: &mut TcpStream, state: &AdminState, secrets: &Secrets) -> Option<String> {
    let params = match handshake::handshake(s, TlsOffer::Refuse).await.ok()? {
        Handshake::Session(p) => p,
        Handshake::Cancel(..) | Handshake::StartTls => return None,
    };
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let user = get("user").unwrap_or_default();
    let database = get("database").unwrap_or_else(|| user.clone());
    let globals = state.globals.load_full();
    let configured = globals
        .console
        .as_ref()
        .and_then(|c| c.users.iter().find(|u| u.name == user))
        .and_then(|u| {
            let mut cache = secrets
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !cache.contains_key(&u.password) {
                let secret = crate::auth::Secret::from_config(&u.password).ok()?;
                cache.insert(u.password.clone(), secret);
            }
            cache.get(&u.password).cloned()
        });
    let mock = crate::auth::mock_secret(&user, false);
    let login = configured
        .as_ref()
        .map_or(Login::Unknown(&mock), Login::Known);
    handshake::authenticate(s, &user, login, None).await.ok()?;
    let mut out = Vec::new();
    if database != DATABASE {
        let text =
            format!("database \"{database}\" does not exist (the console's is \"{DATABASE}\")");
        error_fatal(&mut out, sqlstate::INVALID_CATALOG_NAME, &text);
        let _ = s.write_all(&out).await;
        return None;
    }
    for (k, v) in [
        (
            "server_version",
            concat!("15.0 (pgvane ", env!("CARGO_PKG_VERSION"), ")"),
        ),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO"),
        ("standard_conforming_strings", "on"),
        ("integer_datetimes", "on"),
    ] {
        encode::parameter_status(&mut out, k, v);
    }
    encode::ready_for_query(&mut out, b'I');
    s.write_all(&out).await.ok()?;
    Some(user)
}

fn error(out: &mut Vec<u8>, code: SqlState, text: &str) {
    encode::error_response(out, Severity::Error, code, text);
}

fn error_fatal(out: &mut Vec<u8>, code: SqlState, text: &str) {
    encode::error_response(out, Severity::Fatal, code, text);
}

/// A console command, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Cmd {
    Show(String),
    Reload,
    /// PAUSE, RESUME, KILL, DRAIN or UNDRAIN with its words as typed.
    Operate(Op, Vec<String>),
    /// A command pgbouncer has that pgvane's console does not (yet).
    Unsupported(String),
    Unknown,
}

/// Parses one command: words in any case, an optional `;`.
fn parse(sql: &str) -> Cmd {
    let text = sql.trim().trim_end_matches(';').trim();
    let typed = split_words(text);
    let words: Vec<String> = typed.iter().map(|w| w.to_ascii_uppercase()).collect();
    if let Some(op) = words.first().and_then(|w| Op::of(w)) {
        return Cmd::Operate(op, typed[1..].to_vec());
    }
    match words
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["SHOW", what] => Cmd::Show((*what).to_owned()),
        ["RELOAD"] => Cmd::Reload,
        [
            w
            @ ("SUSPEND" | "SHUTDOWN" | "DISABLE" | "ENABLE" | "RECONNECT" | "WAIT_CLOSE" | "SET"),
            ..,
        ] => Cmd::Unsupported((*w).to_owned()),
        _ => Cmd::Unknown,
    }
}

/// Words split at white space; a double-quoted word keeps its spaces
/// (`""` inside it is one quote), as PostgreSQL quotes names.
fn split_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut word = String::new();
        if c == '"' {
            chars.next();
            while let Some(c) = chars.next() {
                if c == '"' {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                    } else {
                        break;
                    }
                }
                word.push(c);
            }
        } else {
            while let Some(&c) = chars.peek().filter(|c| !c.is_whitespace()) {
                word.push(c);
                chars.next();
            }
        }
        words.push(word);
    }
    words
}

/// Runs one command, appending its answer to `out`.
async fn run(sql: &str, state: &AdminState, out: &mut Vec<u8>) {
    match parse(sql) {
        Cmd::Show(what) => match rows(&what, state) {
            Some((columns, rows)) => table(out, &columns, &rows),
            None => error(
                out,
                sqlstate::SYNTAX_ERROR,
                &format!(
                    "unknown SHOW {what}: POOLS, SERVERS, CLIENTS, STATS, CLUSTERS and VERSION are known"
                ),
            ),
        },
        Cmd::Reload => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let sent = state.commands.send(Command::Reload(Some(tx))).await.is_ok();
            match (sent, rx.await) {
                (true, Ok(Ok(_))) => encode::command_complete(out, "RELOAD"),
                (true, Ok(Err(text))) => error(out, sqlstate::INVALID_PARAMETER_VALUE, &text),
                _ => error(out, sqlstate::ADMIN_SHUTDOWN, "pgvane is shutting down"),
            }
        }
        Cmd::Operate(op, args) => {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            match operate::run(op, &args, state).await {
                Outcome::Done(tag, warnings) => {
                    for w in warnings {
                        encode::warning(out, sqlstate::SUCCESSFUL_WITH_WARNING, &w);
                    }
                    encode::command_complete(out, tag);
                }
                Outcome::Failed(code, text) => error(out, code, &text),
            }
        }
        Cmd::Unsupported(w) => error(
            out,
            sqlstate::FEATURE_NOT_SUPPORTED,
            &format!("{w} is not supported by pgvane's console yet"),
        ),
        Cmd::Unknown => error(
            out,
            sqlstate::SYNTAX_ERROR,
            "unknown command: SHOW POOLS|SERVERS|CLIENTS|STATS|CLUSTERS|VERSION, RELOAD, PAUSE, RESUME, KILL, DRAIN or UNDRAIN",
        ),
    }
}

/// RowDescription, the rows and CommandComplete `SHOW`, as pgbouncer.
fn table(out: &mut Vec<u8>, columns: &[&str], rows: &[Vec<String>]) {
    encode::row_description(out, columns);
    for r in rows {
        let values: Vec<&str> = r.iter().map(String::as_str).collect();
        encode::data_row(out, &values);
    }
    encode::command_complete(out, "SHOW");
}

type Table = (Vec<&'static str>, Vec<Vec<String>>);

/// The columns and rows of `SHOW what`; None for an unknown `what`.
fn rows(what: &str, state: &AdminState) -> Option<Table> {
    let views = state.clusters.load();
    Some(match what {
        "VERSION" => (
            vec!["version"],
            vec![vec![format!("pgvane {}", env!("CARGO_PKG_VERSION"))]],
        ),
        "CLUSTERS" => clusters(&views),
        "POOLS" => pools(&views, false),
        "SERVERS" => pools(&views, true),
        "CLIENTS" => clients(&views),
        "STATS" => stats(&views, state),
        _ => return None,
    })
}

/// SHOW CLUSTERS: one row per member, with its eligibility per port.
fn clusters(views: &BTreeMap<String, ClusterView>) -> Table {
    let mut rows = Vec::new();
    for (name, v) in views {
        let j = super::cluster_json(v);
        let text = |x: &Value| match x {
            Value::Null => String::new(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        for m in j["members"].as_array().into_iter().flatten() {
            let eligible: Vec<String> = m["eligible"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(port, e)| match e {
                    Value::Bool(true) => format!("{port}=yes"),
                    other => format!("{port}={}", text(other)),
                })
                .collect();
            rows.push(vec![
                name.clone(),
                text(&j["generation"]),
                text(&j["stale"]),
                text(&m["name"]),
                text(&m["role"]),
                text(&m["state"]),
                text(&m["host"]),
                text(&m["port"]),
                text(&m["lag"]),
                text(&m["receive_lag"]),
                text(&m["drained"]),
                eligible.join(" "),
            ]);
        }
    }
    (
        vec![
            "cluster",
            "generation",
            "stale",
            "member",
            "role",
            "state",
            "host",
            "port",
            "lag",
            "receive_lag",
            "drained",
            "eligible",
        ],
        rows,
    )
}

/// SHOW POOLS (one row per split-port pool: node, database, user) or SHOW
/// SERVERS (`by_node`: the same summed per node).
fn pools(views: &BTreeMap<String, ClusterView>, by_node: bool) -> Table {
    let mut sums: BTreeMap<Vec<String>, [usize; 3]> = BTreeMap::new();
    for (name, v) in views {
        for p in &v.ports {
            let Some(split) = p.split_context() else {
                continue;
            };
            for (key, role, open, idle, waiting) in split.pools.snapshot() {
                let mut k = vec![
                    name.clone(),
                    p.key.port.clone(),
                    key.node.to_string(),
                    role.to_owned(),
                ];
                if !by_node {
                    k.push(key.creds.database.clone());
                    k.push(key.creds.user.clone());
                }
                let e = sums.entry(k).or_default();
                e[0] += waiting;
                e[1] += open.saturating_sub(idle);
                e[2] += idle;
            }
        }
    }
    let rows = sums
        .into_iter()
        .map(|(mut k, [waiting, active, idle])| {
            k.extend([waiting, active, idle, active + idle].map(|n| n.to_string()));
            k
        })
        .collect();
    let mut columns = vec!["cluster", "port", "node", "role"];
    if !by_node {
        columns.extend(["database", "user"]);
    }
    columns.extend(["cl_waiting", "sv_active", "sv_idle", "sv_open"]);
    (columns, rows)
}

/// SHOW CLIENTS: clients per port and node (role ports), per port (split).
fn clients(views: &BTreeMap<String, ClusterView>) -> Table {
    let mut rows = Vec::new();
    for (name, v) in views {
        for p in &v.ports {
            let mode = if p.split_context().is_some() {
                "split"
            } else {
                "tcp"
            };
            let paused = p.gate.is_paused().to_string();
            rows.push(vec![
                name.clone(),
                p.key.port.clone(),
                mode.to_owned(),
                String::new(),
                p.active().to_string(),
                paused.clone(),
            ]);
            for (node, n) in p.clients_by_node() {
                rows.push(vec![
                    name.clone(),
                    p.key.port.clone(),
                    mode.to_owned(),
                    node.name.to_string(),
                    n.to_string(),
                    paused.clone(),
                ]);
            }
        }
    }
    (
        vec!["cluster", "port", "mode", "node", "clients", "paused"],
        rows,
    )
}

/// SHOW STATS: per port totals since start, from the metrics.
fn stats(views: &BTreeMap<String, ClusterView>, state: &AdminState) -> Table {
    let families = state.metrics.registry.gather();
    // (family, cluster, port, extra label filter) → summed value.
    let sum = |family: &str, cluster: &str, port: &str, filter: Option<(&str, &str)>| -> f64 {
        series(&families, family, cluster, port, filter)
            .map(|m| m.get_counter().get_value() + m.get_histogram().get_sample_sum())
            .sum()
    };
    let count = |family: &str, cluster: &str, port: &str| -> u64 {
        series(&families, family, cluster, port, None)
            .map(|m| m.get_histogram().get_sample_count())
            .sum()
    };
    let mut rows = Vec::new();
    for (name, v) in views {
        for p in &v.ports {
            let port = p.key.port.as_str();
            let requests = count("pgvane_request_duration_seconds", name, port);
            let request_time = sum("pgvane_request_duration_seconds", name, port, None);
            let avg_us = if requests == 0 {
                0.0
            } else {
                request_time * 1e6 / requests as f64
            };
            let n = |x: f64| format!("{x:.0}");
            rows.push(vec![
                name.clone(),
                port.to_owned(),
                n(sum("pgvane_clients_accepted_total", name, port, None)),
                n(sum("pgvane_client_errors_total", name, port, None)),
                n(sum("pgvane_evictions_total", name, port, None)),
                n(sum("pgvane_statements_routed_total", name, port, None)),
                requests.to_string(),
                count("pgvane_transaction_duration_seconds", name, port).to_string(),
                n(sum(
                    "pgvane_bytes_relayed_total",
                    name,
                    port,
                    Some(("direction", "to_server")),
                )),
                n(sum(
                    "pgvane_bytes_relayed_total",
                    name,
                    port,
                    Some(("direction", "to_client")),
                )),
                n(avg_us),
            ]);
        }
    }
    (
        vec![
            "cluster",
            "port",
            "total_accepted",
            "total_refused",
            "total_evicted",
            "total_routed",
            "total_query_count",
            "total_xact_count",
            "total_received",
            "total_sent",
            "avg_query_time",
        ],
        rows,
    )
}

/// The series of `family` labelled with `cluster` and `port` (and the
/// `filter` label's value, when given).
fn series<'a>(
    families: &'a [prometheus::proto::MetricFamily],
    family: &'a str,
    cluster: &'a str,
    port: &'a str,
    filter: Option<(&'a str, &'a str)>,
) -> impl Iterator<Item = &'a prometheus::proto::Metric> {
    families
        .iter()
        .filter(move |f| f.name() == family)
        .flat_map(|f| f.get_metric())
        .filter(move |m| {
            let label = |n: &str| {
                m.get_label()
                    .iter()
                    .find(|l| l.name() == n)
                    .map(|l| l.value())
            };
            label("cluster") == Some(cluster)
                && label("port") == Some(port)
                && filter.is_none_or(|(k, v)| label(k) == Some(v))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_in_any_case_with_or_without_a_semicolon() {
        assert_eq!(parse("show pools;"), Cmd::Show("POOLS".into()));
        assert_eq!(parse("  SHOW   clusters  "), Cmd::Show("CLUSTERS".into()));
        assert_eq!(parse("reload"), Cmd::Reload);
        assert_eq!(
            parse("pause main/app;"),
            Cmd::Operate(Op::Pause, vec!["main/app".into()])
        );
        assert_eq!(
            parse("DRAIN Node-B"),
            Cmd::Operate(Op::Drain, vec!["Node-B".into()])
        );
        assert_eq!(parse("resume"), Cmd::Operate(Op::Resume, vec![]));
        assert_eq!(parse("SHUTDOWN"), Cmd::Unsupported("SHUTDOWN".into()));
        assert_eq!(
            parse(r#"drain lab "node ""1""""#),
            Cmd::Operate(Op::Drain, vec!["lab".into(), r#"node "1""#.into()])
        );
        assert_eq!(parse("select 1"), Cmd::Unknown);
        assert_eq!(parse("show"), Cmd::Unknown);
    }
}
