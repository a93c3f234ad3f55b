//! One poll round made into one list of members: which host's `/cluster`
//! view wins when hosts disagree, and each member's live WAL positions
//! and self-reported role from its own `GET /patroni`. Pure: the watcher
//! does the fetching and hands the answers here.

use super::map::{ClusterMap, LagSource, Member, SelfReport};
use super::patroni::{ClusterInfo, NodeStatus};
use std::collections::HashMap;

/// Each member's own `/patroni` answer this round, by member name: the
/// parsed status, or why it failed. Members not asked are absent.
pub type Statuses = HashMap<String, Result<NodeStatus, String>>;

/// The leader a `/cluster` answer lists, with its timeline.
fn leader_of(info: &ClusterInfo) -> Option<(&str, Option<u64>)> {
    info.members
        .iter()
        .find(|m| m.role.is_leader())
        .map(|m| (&*m.name, m.timeline))
}

fn confirmed(statuses: &Statuses, name: &str) -> bool {
    matches!(statuses.get(name), Some(Ok(s)) if s.is_primary())
}

/// Picks the answer to trust among `answers` (host, view), in arrival
/// order: the one whose leader confirms itself primary in its own
/// `/patroni`, then the leader named by most answers, then the newest
/// leader timeline, then the earliest answer. Returns its index and, when
/// the answers name different leaders, a line describing the disagreement.
#[must_use]
pub fn pick(answers: &[(String, ClusterInfo)], statuses: &Statuses) -> (usize, Option<String>) {
    let mut votes: HashMap<Option<&str>, usize> = HashMap::new();
    for (_, info) in answers {
        *votes.entry(leader_of(info).map(|l| l.0)).or_default() += 1;
    }
    let score = |info: &ClusterInfo| {
        let leader = leader_of(info);
        let name = leader.map(|l| l.0);
        (
            name.is_some_and(|n| confirmed(statuses, n)),
            votes.get(&name).copied().unwrap_or(0),
            leader.and_then(|l| l.1).unwrap_or(0),
        )
    };
    let mut best = 0;
    for (i, (_, info)) in answers.iter().enumerate().skip(1) {
        if score(info) > score(&answers[best].1) {
            best = i;
        }
    }
    let disagreement = (votes.len() > 1).then(|| {
        answers
            .iter()
            .map(|(host, info)| match leader_of(info) {
                Some((name, tl)) => format!(
                    "{host} lists leader {name} (timeline {})",
                    tl.map_or_else(|| "?".to_owned(), |t| t.to_string())
                ),
                None => format!("{host} lists no leader"),
            })
            .collect::<Vec<_>>()
            .join("; ")
    });
    (best, disagreement)
}

/// Fills each member's live lag, receive lag, paused flag, WAL position
/// (`live`) and self-report from `statuses`. A replica's lag is the leader's `xlog.location` minus
/// its `replayed_location`, both from this round; without both, the
/// `/cluster` figure stays (`lag_source: cluster`). A leader confirmed
/// primary on its timeline stays confirmed through a round where its
/// `/patroni` did not answer (`previous` is the last published map).
pub fn apply_live(info: &mut ClusterInfo, statuses: &Statuses, previous: &ClusterMap) {
    let leader_at = info
        .members
        .iter()
        .find(|m| m.role.is_leader())
        .and_then(|m| match statuses.get(&*m.name) {
            Some(Ok(s)) if s.is_primary() => s.location,
            _ => None,
        });
    for m in &mut info.members {
        let status = statuses.get(&*m.name);
        m.self_report = self_report(m, status, previous);
        let Some(Ok(s)) = status else { continue };
        m.replay_paused = s.paused;
        m.live = s.live();
        if m.role.is_leader() {
            continue;
        }
        if let (Some(at), Some(replayed)) = (leader_at, s.replayed) {
            m.lag = Some(at.saturating_sub(replayed));
            m.receive_lag = Some(at.saturating_sub(s.received.unwrap_or(replayed)));
            m.lag_source = LagSource::Patroni;
        }
    }
}

fn self_report(
    m: &Member,
    status: Option<&Result<NodeStatus, String>>,
    previous: &ClusterMap,
) -> SelfReport {
    match status {
        None => SelfReport::Unasked,
        Some(Ok(s)) if s.is_primary() => SelfReport::Primary,
        Some(Ok(_)) => SelfReport::NotPrimary,
        Some(Err(_)) => {
            let was_confirmed = previous.member(&m.name).is_some_and(|p| {
                p.self_report == SelfReport::Primary
                    && p.role.is_leader() == m.role.is_leader()
                    && p.timeline == m.timeline
            });
            if was_confirmed {
                SelfReport::Primary
            } else {
                SelfReport::NoAnswer
            }
        }
    }
}

#[cfg(test)]
mod tests;
