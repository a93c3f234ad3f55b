//! deploy/monitoring against a real Prometheus (Debian's 2.42): the alert
//! rules pass `promtool check rules` and their own `promtool test rules`
//! cases; a Prometheus scraping pgvane in the lab answers every dashboard
//! query and variable with series, finds every metric the alerts use, and
//! fires the replica lag alert when a replica replays behind.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::*;
use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn monitoring(file: &str) -> std::path::PathBuf {
    root().join("deploy/monitoring").join(file)
}

#[test]
fn promtool_checks_the_rules_and_runs_their_tests() {
    for args in [
        vec!["check", "rules", "alerts.yml"],
        vec!["test", "rules", "alerts_test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(root().join("deploy/monitoring"))
            .output()
            .expect("promtool (Debian's prometheus package; deploy/test.sh installs it)");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Prometheus on loopback, scraping pgvane's admin port every second with
/// the shipped rules; killed on drop.
struct Prometheus {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Prometheus {
    fn start(admin: u16, rules: &std::path::Path) -> Self {
        let port = free_port();
        let config = temp_path("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: [{}]\nscrape_configs:\n  - job_name: pgvane\n    static_configs: [{{targets: ['127.0.0.1:{admin}']}}]\n",
                rules.display()
            ),
        )
        .unwrap();
        let data = temp_path("prometheus-data");
        let log = temp_path("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self { child, port, log }
    }

    /// `GET /api/v1/<path>`'s `data`.
    fn api(&self, path: &str) -> Value {
        let (status, body) = http(self.port, "GET", &format!("/api/v1/{path}"))
            .unwrap_or_else(|| panic!("prometheus did not answer:\n{}", self.log_text()));
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str::<Value>(&body).unwrap()["data"].clone()
    }

    /// The series an instant query returns.
    fn query(&self, expr: &str) -> Vec<Value> {
        self.api(&format!("query?query={}", encode(expr)))["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a query string value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every query the dashboard makes (panel targets and variables), with
/// its variables set to "all".
fn dashboard_queries() -> Vec<(String, String)> {
    let d: Value =
        serde_json::from_str(&std::fs::read_to_string(monitoring("dashboard.json")).unwrap())
            .unwrap();
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push((
                p["title"].as_str().unwrap().to_owned(),
                t["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        let q = &v["query"];
        let text = q["query"].as_str().or(q.as_str()).unwrap_or_default();
        if let Some(inner) = text.strip_prefix("label_values(") {
            // label_values(metric{…}, label): the series of the metric.
            let metric = inner.rsplit_once(',').unwrap().0;
            out.push((format!("variable {}", v["name"]), metric.to_owned()));
        }
    }
    out.into_iter()
        .map(|(t, e)| {
            let e = e
                .replace("$cluster", ".*")
                .replace("$port", ".*")
                .replace("$__rate_interval", "1m");
            (t, e)
        })
        .collect()
}

/// Split and role traffic that gives every series a value: a transaction,
/// autocommit reads, a refused login, a role-port query.
async fn traffic(split: u16, rw: u16) {
    let c = connect(split).await.unwrap();
    for _ in 0..5 {
        c.client.simple_query("select 1").await.unwrap();
    }
    c.client
        .batch_execute("begin; select 1; select 2; commit")
        .await
        .unwrap();
    c.client.simple_query("begin").await.unwrap();
    c.client.simple_query("select 3").await.unwrap();
    c.client.simple_query("commit").await.unwrap();
    drop(c);
    let bad = format!(
        "host=127.0.0.1 port={split} user=postgres password=wrong dbname=postgres connect_timeout=5"
    );
    assert!(
        tokio_postgres::connect(&bad, tokio_postgres::NoTls)
            .await
            .is_err()
    );
    let r = connect(rw).await.unwrap();
    r.client.simple_query("select 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_answers_every_panel_and_fires_the_lag_alert() {
    healthy_lab();
    let p = Ports::new();
    let split = free_port();
    let pv = Pgvane::start(&split_config(&p, split), p.admin);
    // The shipped rules, with the lag alert's `for` cut to 5 s so the
    // test waits for the lag, not for the hold.
    let rules_text = std::fs::read_to_string(monitoring("alerts.yml")).unwrap();
    let marker = "- alert: PgvaneReplicaLagging";
    let at = rules_text.find(marker).unwrap();
    let (head, tail) = rules_text.split_at(at);
    let tail = tail.replacen("for: 30s", "for: 5s", 1);
    let rules = temp_path("alerts.yml");
    std::fs::write(&rules, format!("{head}{tail}")).unwrap();
    let prom = Prometheus::start(p.admin, &rules);
    assert!(
        wait_until(Duration::from_secs(30), || {
            http(prom.port, "GET", "/api/v1/query?query=up")
                .is_some_and(|(s, b)| s == 200 && b.contains("\"1\""))
        }),
        "prometheus never scraped pgvane:\n{}",
        prom.log_text()
    );
    traffic(split, p.rw).await;
    // rate() and histogram_quantile() need two scrapes after the traffic.
    let queries = dashboard_queries();
    assert!(queries.len() >= 20, "{queries:?}");
    let mut empty = Vec::new();
    let all_answer = wait_until(Duration::from_secs(20), || {
        empty = queries
            .iter()
            .filter(|(_, e)| prom.query(e).is_empty())
            .cloned()
            .collect();
        empty.is_empty()
    });
    assert!(all_answer, "dashboard queries with no series: {empty:#?}");

    // Every metric the alert rules use exists.
    let rules: serde_yaml::Value = serde_yaml::from_str(&rules_text).unwrap();
    for r in rules["groups"][0]["rules"].as_sequence().unwrap() {
        let expr = r["expr"].as_str().unwrap();
        for name in expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("pgvane_") || *w == "up")
        {
            assert!(
                !prom.query(name).is_empty(),
                "{name} (in {expr}) has no series"
            );
        }
    }
    assert!(
        prom.api("alerts")["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["labels"]["alertname"] != "PgvaneReplicaLagging")
    );

    // A replica replays 20 s behind while the leader writes 32 MiB of WAL:
    // the lag alert fires for it.
    let delay = Delay::on(20_000);
    let leader_client = connect_node(&leader()).await;
    switch_wal(&leader_client, 2).await;
    let firing = wait_until_async(Duration::from_secs(60), || async {
        prom.api("alerts")["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["labels"]["alertname"] == "PgvaneReplicaLagging" && a["state"] == "firing")
    })
    .await;
    delay.assert_held();
    drop(delay);
    assert!(
        firing,
        "lag alert not firing; lag series: {:?}",
        prom.query("pgvane_member_lag_bytes")
    );
    drop(pv);
}
