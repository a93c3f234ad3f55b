//! `pgvane status`: a running pgvane's map, ports and pool use, read from
//! its admin API (`GET /clusters` and `GET /metrics`) and printed as text
//! for a terminal. Rendering is pure; the two requests are the only IO.

use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write;

/// Fetches the state of the pgvane whose admin API is at `admin`
/// (`host:port`) and renders it.
///
/// # Errors
/// What failed, naming the address.
pub fn fetch(admin: &str) -> Result<String, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(5))
            .build()
            .map_err(|e| e.to_string())?;
        let get = |path: &'static str| {
            let client = client.clone();
            let url = format!("http://{admin}{path}");
            async move {
                let r = client
                    .get(&url)
                    .send()
                    .await
                    .map_err(|e| format!("{url}: {e}"))?;
                r.text().await.map_err(|e| format!("{url}: {e}"))
            }
        };
        let clusters: Value = serde_json::from_str(&get("/clusters").await?)
            .map_err(|e| format!("http://{admin}/clusters: {e}"))?;
        let metrics = get("/metrics").await.unwrap_or_default();
        Ok(render(&clusters, &metrics))
    })
}

/// `pgvane_pool_backends` summed per (cluster, port, state).
fn pool_use(metrics: &str) -> BTreeMap<(String, String, String), f64> {
    let mut out = BTreeMap::new();
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("pgvane_pool_backends{"))
    {
        let Some((labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let label = |name: &str| {
            let key = format!("{name}=\"");
            labels
                .split_once(&key)
                .and_then(|(_, rest)| rest.split_once('"'))
                .map(|(v, _)| v.to_owned())
                .unwrap_or_default()
        };
        let v: f64 = value.parse().unwrap_or(0.0);
        *out.entry((label("cluster"), label("port"), label("state")))
            .or_insert(0.0) += v;
    }
    out
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The status text of `/clusters` (and `/metrics` for pool use).
#[must_use]
pub fn render(clusters: &Value, metrics: &str) -> String {
    let pools = pool_use(metrics);
    let mut out = String::new();
    for (name, c) in clusters.as_object().into_iter().flatten() {
        let age = c["age_seconds"]
            .as_f64()
            .map_or("never".to_owned(), |a| format!("{a:.1} s ago"));
        let _ = writeln!(
            out,
            "cluster {name}: generation {}, updated {age}{}{}",
            text(&c["generation"]),
            if c["stale"] == true {
                ", STALE (Patroni unreachable)"
            } else {
                ""
            },
            if c["paused"] == true {
                ", maintenance mode"
            } else {
                ""
            },
        );
        let _ = writeln!(
            out,
            "  {:<12} {:<14} {:<10} {:<22} {:>12}  eligible",
            "member", "role", "state", "address", "lag"
        );
        for m in c["members"].as_array().into_iter().flatten() {
            let eligible: Vec<String> = m["eligible"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(p, e)| {
                    if *e == true {
                        p.clone()
                    } else {
                        format!("{p}({})", text(e))
                    }
                })
                .collect();
            let _ = writeln!(
                out,
                "  {:<12} {:<14} {:<10} {:<22} {:>12}  {}",
                text(&m["name"]),
                text(&m["role"]),
                text(&m["state"]),
                format!("{}:{}", text(&m["host"]), text(&m["port"])),
                text(&m["lag"]),
                eligible.join(" ")
            );
        }
        let _ = writeln!(
            out,
            "  {:<12} {:<6} {:<22} {:>8}  pool (open/idle/waiting) or clients per node",
            "port", "mode", "listen", "clients"
        );
        for (port, p) in c["ports"].as_object().into_iter().flatten() {
            let detail = if p["mode"] == "split" {
                let n = |state: &str| {
                    pools
                        .get(&(name.clone(), port.clone(), state.to_owned()))
                        .copied()
                        .unwrap_or(0.0)
                };
                format!("{}/{}/{}", n("open"), n("idle"), n("waiting"))
            } else {
                p["clients_by_node"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(node, k)| format!("{node}={k}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let _ = writeln!(
                out,
                "  {:<12} {:<6} {:<22} {:>8}  {detail}",
                port,
                text(&p["mode"]),
                text(&p["listen"]),
                text(&p["clients"]),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_members_ports_and_pool_use() {
        let clusters: Value = serde_json::from_str(
            r#"{"lab": {"generation": 7, "stale": false, "paused": false, "age_seconds": 0.5,
                "members": [
                  {"name": "node1", "role": "leader", "state": "running", "host": "127.0.0.11", "port": 5432, "lag": null, "eligible": {"rw": true, "ro": "role"}},
                  {"name": "node2", "role": "replica", "state": "streaming", "host": "127.0.0.12", "port": 5432, "lag": 0, "eligible": {"rw": "role", "ro": true}}],
                "ports": {
                  "rw": {"mode": "tcp", "listen": "127.0.0.1:6432", "clients": 2, "clients_by_node": {"node1": 2}},
                  "app": {"mode": "split", "listen": "127.0.0.1:6435", "clients": 5, "clients_by_node": {}}}}}"#,
        )
        .unwrap_or(Value::Null);
        let metrics = "pgvane_pool_backends{cluster=\"lab\",port=\"app\",node=\"a\",state=\"open\"} 3\npgvane_pool_backends{cluster=\"lab\",port=\"app\",node=\"b\",state=\"open\"} 1\npgvane_pool_backends{cluster=\"lab\",port=\"app\",node=\"a\",state=\"idle\"} 2\n";
        let out = render(&clusters, metrics);
        assert!(
            out.contains("cluster lab: generation 7, updated 0.5 s ago"),
            "{out}"
        );
        assert!(
            out.contains("node1") && out.contains("ro(role) rw"),
            "{out}"
        );
        assert!(out.contains("ro rw(role)"), "{out}");
        assert!(out.contains("node1=2"), "{out}");
        assert!(out.contains("4/2/0"), "{out}");
    }
}
