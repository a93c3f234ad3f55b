use super::*;
use crate::topology::patroni::parse_status;
use crate::topology::patroni::tests::fixture;
use serde_json::Value;

/// The `/patroni` answers of a fixture, by member name (a member whose
/// REST API refused gets an error).
fn statuses(name: &str, info: &ClusterInfo) -> Statuses {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/patroni");
    let path = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let f = p.file_name().unwrap().to_string_lossy().into_owned();
            f.starts_with(name) && f.ends_with(".nodes.json")
        })
        .unwrap();
    let nodes: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let mut out = Statuses::new();
    for m in &info.members {
        let base = m.api_url.as_deref().unwrap().trim_end_matches("/patroni");
        let answer = &nodes[base]["GET /patroni"];
        let status = if answer["status"] == 200 {
            let body = serde_json::to_vec(&answer["body"]).unwrap();
            Ok(parse_status(&body).unwrap())
        } else {
            Err(answer["body"].to_string())
        };
        out.insert(m.name.to_string(), status);
    }
    out
}

fn live(name: &str, previous: &ClusterMap) -> ClusterInfo {
    let mut info = fixture(name);
    let st = statuses(name, &info);
    apply_live(&mut info, &st, previous);
    info
}

fn member<'a>(info: &'a ClusterInfo, name: &str) -> &'a Member {
    info.members.iter().find(|m| &*m.name == name).unwrap()
}

#[test]
fn replay_lag_comes_from_live_positions() {
    let info = live("07-lag-replay", &ClusterMap::empty("lab"));
    let paused = member(&info, "node1");
    // node3's xlog.location 84082048 minus node1's replayed_location 67300464.
    assert_eq!(paused.lag, Some(84_082_048 - 67_300_464));
    assert_eq!(paused.receive_lag, Some(0));
    assert_eq!(paused.lag_source, LagSource::Patroni);
    assert_eq!(member(&info, "node2").lag, Some(0));
    assert_eq!(member(&info, "node3").self_report, SelfReport::Primary);
    assert_eq!(member(&info, "node1").self_report, SelfReport::NotPrimary);
}

#[test]
fn live_wal_positions_are_kept_per_member() {
    let info = live("07-lag-replay", &ClusterMap::empty("lab"));
    let replica = member(&info, "node1").live.clone().unwrap();
    assert_eq!(replica.lsn, 67_300_464);
    assert_eq!(replica.timeline, Some(6));
    assert!(replica.streaming);
    assert_eq!(
        replica.postmaster_start_time.as_deref(),
        Some("2026-11-23 00:39:32.489611+00:00")
    );
    let leader = member(&info, "node3").live.clone().unwrap();
    assert_eq!(
        (leader.lsn, leader.timeline, leader.streaming),
        (84_082_048, Some(6), true)
    );
    // A changed position alone is no new routing fact.
    let mut moved = info.clone();
    for m in &mut moved.members {
        if let Some(l) = &mut m.live {
            l.lsn += 1;
        }
    }
    let map = |i: &ClusterInfo| ClusterMap {
        members: i.members.clone(),
        stale: false,
        ..ClusterMap::empty("lab")
    };
    assert!(map(&info).same_facts(&map(&moved)));
}

#[test]
fn receive_lag_comes_from_live_positions() {
    let info = live("08-lag-receive", &ClusterMap::empty("lab"));
    let behind = member(&info, "node2");
    assert_eq!(behind.receive_lag, Some(100_985_560 - 84_082_104));
    assert_eq!(behind.lag, behind.receive_lag);
    assert_eq!(member(&info, "node1").lag, Some(0));
}

#[test]
fn a_member_that_did_not_answer_keeps_cluster_figures() {
    let mut info = fixture("07-lag-replay");
    let mut st = statuses("07-lag-replay", &info);
    st.insert("node1".into(), Err("timed out".into()));
    apply_live(&mut info, &st, &ClusterMap::empty("lab"));
    let m = member(&info, "node1");
    assert_eq!(
        (m.lag, m.lag_source),
        (Some(16_781_584), LagSource::Cluster)
    );
    assert_eq!(m.self_report, SelfReport::NoAnswer);
    // Without the leader's own position nobody's lag is live.
    let mut info = fixture("07-lag-replay");
    let mut st = statuses("07-lag-replay", &info);
    st.insert("node3".into(), Err("refused".into()));
    apply_live(&mut info, &st, &ClusterMap::empty("lab"));
    assert!(
        info.members
            .iter()
            .all(|m| m.lag_source != LagSource::Patroni)
    );
}

#[test]
fn a_crashed_leader_is_unconfirmed_unless_it_was_confirmed_on_its_timeline() {
    let fresh = live("03-leader-crashed-within-ttl", &ClusterMap::empty("lab"));
    assert_eq!(member(&fresh, "node2").self_report, SelfReport::NoAnswer);
    let mut before = ClusterMap::empty("lab");
    before.members = fresh.members.clone();
    before.members[1].self_report = SelfReport::Primary;
    let sticky = live("03-leader-crashed-within-ttl", &before);
    assert_eq!(member(&sticky, "node2").self_report, SelfReport::Primary);
    // A new timeline needs a new confirmation.
    before.members[1].timeline = Some(1);
    let newer = live("03-leader-crashed-within-ttl", &before);
    assert_eq!(member(&newer, "node2").self_report, SelfReport::NoAnswer);
}

#[test]
fn a_leader_still_in_recovery_is_not_primary() {
    let mut info = fixture("01-healthy");
    let mut st = statuses("01-healthy", &info);
    // Listed leader, but its own answer still shows replica positions.
    let replica_view = st["node2"].clone();
    st.insert("node1".into(), replica_view);
    apply_live(&mut info, &st, &ClusterMap::empty("lab"));
    assert_eq!(member(&info, "node1").self_report, SelfReport::NotPrimary);
    assert!(
        info.members
            .iter()
            .all(|m| m.lag_source != LagSource::Patroni)
    );
}

#[test]
fn the_majority_and_the_self_confirmed_leader_win() {
    let new = fixture("02-after-switchover");
    let old = fixture("01-healthy");
    let st = statuses("02-after-switchover", &new);
    // An old view answering first loses to two current ones.
    let answers = vec![
        ("http://old".to_owned(), old.clone()),
        ("http://a".to_owned(), new.clone()),
        ("http://b".to_owned(), new.clone()),
    ];
    let (i, why) = pick(&answers, &Statuses::new());
    assert_eq!(i, 1);
    let why = why.unwrap();
    assert!(why.contains("http://old lists leader node1"), "{why}");
    // One old view against one current one: the self-confirmed leader wins.
    let answers = vec![
        ("http://old".to_owned(), old.clone()),
        ("http://a".to_owned(), new.clone()),
    ];
    assert_eq!(pick(&answers, &st).0, 1);
    // Agreeing answers: the first, no disagreement.
    let answers = vec![
        ("http://a".to_owned(), new.clone()),
        ("http://b".to_owned(), new),
    ];
    assert_eq!(pick(&answers, &st), (0, None));
}
