//! The admin HTTP API against the real lab: `/`, `/update_clusters`,
//! `/clusters`, `/metrics`, `/health`, `/ready`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn admin_endpoints_answer_from_the_live_map() {
    healthy_lab();
    let p = Ports::new();
    let pg = Pgvane::start(&lab_config(&p), p.admin);
    assert_eq!(pg.http("GET", "/").unwrap(), (200, "OK".to_owned()));
    assert_eq!(pg.http("GET", "/health").unwrap().0, 200);
    assert_eq!(pg.http("GET", "/ready").unwrap().0, 200);
    for method in ["GET", "POST"] {
        let (status, body) = pg.http(method, "/update_clusters").unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"lab\""), "{body}");
    }
    let _c = connect(p.ro).await.unwrap();
    let v = pg.clusters();
    let lab_map = &v["lab"];
    assert_eq!(lab_map["stale"], false);
    assert!(lab_map["generation"].as_u64().unwrap() >= 1);
    let members = lab_map["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    let leader = leader();
    for m in members {
        let is_leader = m["name"] == leader.as_str();
        assert_eq!(m["role"], if is_leader { "leader" } else { "replica" });
        assert_eq!(
            m["eligible"]["rw"],
            if is_leader {
                serde_json::json!(true)
            } else {
                serde_json::json!("role")
            }
        );
        assert_eq!(m["eligible"]["any"], true);
        if !is_leader {
            assert_eq!(m["state"], "streaming");
            assert!(m["lag"].is_u64());
        }
    }
    assert_eq!(lab_map["ports"]["ro"]["clients"], 1);
    let metrics = pg.metrics();
    for name in [
        "pgvane_clients{",
        "pgvane_clients_accepted_total{",
        "pgvane_patroni_polls_total{",
        "pgvane_patroni_poll_duration_seconds_bucket{",
        "pgvane_map_generation{",
        "pgvane_map_age_seconds{",
        "pgvane_map_stale{",
        "pgvane_bytes_relayed_total{",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    assert!(pg.metric("pgvane_bytes_relayed_total", &["port=\"ro\"", "to_client"]) > 0.0);
    assert_eq!(pg.metric("pgvane_clients{", &["port=\"ro\""]), 1.0);
    // pgvane's own names, and the process collector's standard ones.
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            line.starts_with("pgvane_") || line.starts_with("process_"),
            "{line}"
        );
    }
    assert!(
        metrics.contains("process_resident_memory_bytes "),
        "{metrics}"
    );
}

/// A client that sends half a request's headers and stops is closed after
/// the header-read timeout (5 s); others are answered meanwhile.
#[test]
fn slow_header_clients_are_closed_and_others_served() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    healthy_lab();
    let p = Ports::new();
    let pg = Pgvane::start(&lab_config(&p), p.admin);
    let mut loris: Vec<std::net::TcpStream> = (0..20)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", p.admin)).unwrap();
            s.write_all(b"GET /clusters HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
            s
        })
        .collect();
    let t0 = Instant::now();
    assert_eq!(
        pg.http("GET", "/health").unwrap().0,
        200,
        "blocked by slow clients"
    );
    for s in &mut loris {
        let mut buf = Vec::new();
        // Closed by pgvane (EOF, possibly after a 408), not by our timeout.
        let r = s.read_to_end(&mut buf);
        assert!(r.is_ok(), "not closed: {r:?}");
    }
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(10),
        "closed after {took:?}"
    );
    assert_eq!(pg.http("GET", "/health").unwrap().0, 200);
}
