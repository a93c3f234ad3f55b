use super::*;
use crate::topology::patroni::tests::fixture;

const MIB: u64 = 1024 * 1024;

fn rules(grace_ms: u64) -> LagRules {
    let mut port = PortConfig::new("127.0.0.1:1".parse().unwrap(), vec![]);
    port.max_lag_in_bytes = Some(16 * MIB);
    port.lag_grace_ms = Some(grace_ms);
    LagRules::of(&port).unwrap()
}

/// The healthy fixture with replica node2 at `lag`.
fn map_with(lag: Option<u64>) -> ClusterMap {
    let mut map = ClusterMap::empty("lab");
    map.members = fixture("01-healthy").members;
    map.members[1].lag = lag;
    map
}

fn verdict(gate: &mut LagGate, lag: Option<u64>, r: &LagRules, at: Instant) -> LagVerdict {
    let map = map_with(lag);
    let (view, _) = gate.observe(&map, r, at);
    view.verdicts["node2"]
}

#[test]
fn defaults_follow_the_limit() {
    let mut port = PortConfig::new("127.0.0.1:1".parse().unwrap(), vec![]);
    assert_eq!(LagRules::of(&port), None);
    port.max_lag_in_bytes = Some(16 * MIB);
    let r = LagRules::of(&port).unwrap();
    assert_eq!((r.low, r.grace, r.hard), (8 * MIB, DEFAULT_GRACE, 64 * MIB));
}

#[test]
fn a_burst_shorter_than_the_grace_evicts_nobody() {
    let r = rules(2000);
    let mut gate = LagGate::default();
    let t = Instant::now();
    assert_eq!(verdict(&mut gate, Some(0), &r, t), LagVerdict::Admit);
    let (view, wake) = gate.observe(&map_with(Some(40 * MIB)), &r, t);
    assert_eq!(view.verdicts["node2"], LagVerdict::Hold);
    assert_eq!(wake, Some(t + Duration::from_millis(2000)));
    let later = t + Duration::from_millis(1999);
    assert_eq!(
        verdict(&mut gate, Some(30 * MIB), &r, later),
        LagVerdict::Hold
    );
    // Back under the limit but above the low watermark: keeps its clients,
    // takes no new ones, and the grace starts over next time.
    assert_eq!(
        verdict(&mut gate, Some(10 * MIB), &r, later),
        LagVerdict::Hold
    );
    let again = later + Duration::from_millis(1);
    assert_eq!(
        verdict(&mut gate, Some(20 * MIB), &r, again),
        LagVerdict::Hold
    );
    assert_eq!(
        verdict(&mut gate, Some(4 * MIB), &r, again),
        LagVerdict::Admit
    );
}

#[test]
fn staying_over_the_limit_evicts_after_the_grace() {
    let r = rules(2000);
    let mut gate = LagGate::default();
    let t = Instant::now();
    assert_eq!(verdict(&mut gate, Some(20 * MIB), &r, t), LagVerdict::Hold);
    let end = t + Duration::from_millis(2000);
    assert_eq!(
        verdict(&mut gate, Some(20 * MIB), &r, end),
        LagVerdict::Evict
    );
    // Unknown lag counts as over the limit.
    let mut gate = LagGate::default();
    assert_eq!(verdict(&mut gate, None, &r, t), LagVerdict::Hold);
    assert_eq!(verdict(&mut gate, None, &r, end), LagVerdict::Evict);
}

#[test]
fn past_the_hard_limit_or_with_no_grace_evicts_at_once() {
    let t = Instant::now();
    let mut gate = LagGate::default();
    assert_eq!(
        verdict(&mut gate, Some(64 * MIB + 1), &rules(2000), t),
        LagVerdict::Evict
    );
    let mut gate = LagGate::default();
    assert_eq!(
        verdict(&mut gate, Some(16 * MIB + 1), &rules(0), t),
        LagVerdict::Evict
    );
    assert_eq!(
        verdict(&mut gate, Some(16 * MIB), &rules(0), t),
        LagVerdict::Hold
    );
}

#[test]
fn the_view_is_never_more_lenient_than_the_map() {
    let mut port = PortConfig::new("127.0.0.1:1".parse().unwrap(), vec![]);
    port.max_lag_in_bytes = Some(16 * MIB);
    let view = LagView::default();
    let map = map_with(Some(17 * MIB));
    assert_eq!(view.verdict(&map.members[1], &port), LagVerdict::Hold);
    assert_eq!(view.verdict(&map.members[2], &port), LagVerdict::Admit);
    let map = map_with(Some(65 * MIB));
    assert_eq!(view.verdict(&map.members[1], &port), LagVerdict::Evict);
    port.max_lag_in_bytes = None;
    assert_eq!(view.verdict(&map.members[1], &port), LagVerdict::Admit);
}
