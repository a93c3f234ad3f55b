use super::*;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/patroni")
}

pub(crate) fn fixture(name: &str) -> ClusterInfo {
    let path = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let f = p.file_name().unwrap().to_string_lossy().into_owned();
            f.starts_with(name) && f.ends_with(".cluster.json")
        })
        .unwrap_or_else(|| panic!("no fixture {name}"));
    parse(&std::fs::read(path).unwrap()).unwrap()
}

fn summary(info: &ClusterInfo) -> String {
    info.members
        .iter()
        .map(|m| {
            let role = match &m.role {
                MemberRole::Leader => "leader".to_owned(),
                MemberRole::StandbyLeader => "standby_leader".to_owned(),
                MemberRole::SyncStandby => "sync_standby".to_owned(),
                MemberRole::QuorumStandby => "quorum_standby".to_owned(),
                MemberRole::Replica => "replica".to_owned(),
                MemberRole::Other(s) => s.clone(),
            };
            let state = match &m.state {
                MemberState::Running => "running".to_owned(),
                MemberState::Streaming => "streaming".to_owned(),
                MemberState::Other(s) => s.clone(),
            };
            format!("{}={role}/{state}", m.name)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn every_fixture_parses() {
    let mut n = 0;
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let body = std::fs::read(&path).unwrap();
        if name.ends_with(".cluster.json") {
            let info = parse(&body).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!info.members.is_empty(), "{name}");
            assert!(info.skipped.is_empty(), "{name}");
            assert!(
                info.members.iter().filter(|m| m.role.is_leader()).count() <= 1,
                "{name}"
            );
            n += 1;
        } else if name.ends_with(".trace.json") {
            // Each trace step carries Patroni's own one-line summary: ours must match.
            let trace: Value = serde_json::from_slice(&body).unwrap();
            for step in trace["trace"].as_array().unwrap() {
                let Some(cluster) = step.get("cluster").filter(|c| c.is_object()) else {
                    continue;
                };
                let info = parse(cluster.to_string().as_bytes()).unwrap();
                assert_eq!(
                    summary(&info),
                    step["members"].as_str().unwrap(),
                    "{name} t={}",
                    step["t"]
                );
                n += 1;
            }
        }
    }
    assert!(n >= 35, "only {n} samples parsed");
}

#[test]
fn healthy_replicas_are_streaming() {
    let info = fixture("01-healthy");
    assert_eq!(
        summary(&info),
        "node1=leader/running node2=replica/streaming node3=replica/streaming"
    );
    assert_eq!(info.members[0].lag, None);
    assert_eq!(info.members[1].lag, Some(0));
    assert_eq!(
        info.members[1].addr,
        NodeAddr {
            host: "127.0.0.12".into(),
            port: 5432
        }
    );
}

#[test]
fn replay_lag_wins_over_lag() {
    let info = fixture("07-lag-replay");
    let node1 = info.members.iter().find(|m| &*m.name == "node1").unwrap();
    assert_eq!(node1.lag, Some(16_781_584));
}

#[test]
fn receive_lag_is_seen() {
    let info = fixture("08-lag-receive");
    let node2 = info.members.iter().find(|m| &*m.name == "node2").unwrap();
    assert!(node2.lag.unwrap() >= 16 * 1024 * 1024);
}

#[test]
fn sync_quorum_tags_stopped_pause() {
    assert_eq!(
        fixture("09-sync-on").members[1].role,
        MemberRole::SyncStandby
    );
    assert!(
        fixture("10-sync-quorum").members[..2]
            .iter()
            .all(|m| m.role == MemberRole::QuorumStandby)
    );
    assert!(fixture("11-noloadbalance").members[0].noloadbalance);
    assert!(fixture("12-nofailover").members[1].nofailover);
    let stopped = &fixture("13-replica-stopped").members[0];
    assert_eq!(stopped.state, MemberState::Other("stopped".into()));
    assert_eq!(stopped.lag, None);
    assert!(fixture("16-maintenance-mode").paused);
    assert_eq!(fixture("17-four-nodes").members.len(), 4);
    assert_eq!(fixture("04-after-failover").members.len(), 2);
}

#[test]
fn lenient_on_odd_members() {
    let body = br#"{"members": [
        {"name": "a", "role": "leader", "state": "running", "api_url": null, "host": "::1", "port": 5433, "extra": {"x": 1}},
        {"name": "b", "role": "replica", "state": "streaming", "host": "db-b.example", "port": "5432", "lag": "unknown", "tags": {"noloadbalance": "true", "nofailover": "off"}},
        {"name": "c", "role": "replica", "state": "running"},
        {"role": "replica", "host": "x", "port": 1},
        {"name": "e", "role": "standby_leader", "state": "running", "host": "[fe80::1]", "port": 5432, "lag": 12},
        "not an object"
    ], "pause": "on"}"#;
    let info = parse(body).unwrap();
    assert_eq!(info.members.len(), 3);
    assert_eq!(&*info.members[0].addr.host, "::1");
    assert_eq!(info.members[0].addr.to_string(), "[::1]:5433");
    assert_eq!(info.members[1].addr.port, 5432);
    assert_eq!(info.members[1].lag, None);
    assert!(info.members[1].noloadbalance);
    assert!(!info.members[1].nofailover);
    assert_eq!(&*info.members[2].addr.host, "fe80::1");
    assert_eq!(info.members[2].role, MemberRole::StandbyLeader);
    assert_eq!(
        info.skipped,
        vec!["c".to_owned(), "#3".to_owned(), "#5".to_owned()]
    );
    assert!(info.paused);
}

#[test]
fn rejects_non_cluster_bodies() {
    assert!(matches!(parse(b"<html>"), Err(ParseError::Json(_))));
    assert_eq!(
        parse(b"{\"state\": \"running\"}"),
        Err(ParseError::NoMembers)
    );
    assert_eq!(parse(b"[]"), Err(ParseError::NoMembers));
    assert_eq!(parse(b"{\"members\": []}").unwrap().members.len(), 0);
}
