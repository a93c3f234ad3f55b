//! The console's commands that change something, as pgbouncer's console
//! has them: `PAUSE`/`RESUME` and `KILL` on every port, a cluster's ports
//! or one port, and `DRAIN`/`UNDRAIN` of a node. Owns which ports and
//! members a command names and what each does to them; the console only
//! parses and answers.

use super::{AdminState, ClusterView};
use crate::listener::PortShared;
use crate::protocol::sqlstate::{self, SqlState};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An operator's command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    /// New work waits; answers once split ports' transactions ended.
    Pause,
    /// Waiting work goes on.
    Resume,
    /// Every client of the ports ends now.
    Kill,
    /// A node takes no new clients as a replica; its clients leave as
    /// their transactions end.
    Drain,
    /// A drained node serves again.
    Undrain,
}

impl Op {
    /// The command a word names.
    pub(super) fn of(word: &str) -> Option<Self> {
        Some(match word {
            "PAUSE" => Self::Pause,
            "RESUME" => Self::Resume,
            "KILL" => Self::Kill,
            "DRAIN" => Self::Drain,
            "UNDRAIN" => Self::Undrain,
            _ => return None,
        })
    }

    /// Its command tag.
    fn tag(self) -> &'static str {
        match self {
            Self::Pause => "PAUSE",
            Self::Resume => "RESUME",
            Self::Kill => "KILL",
            Self::Drain => "DRAIN",
            Self::Undrain => "UNDRAIN",
        }
    }
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Done: the command tag, and warnings to show first.
    Done(&'static str, Vec<String>),
    /// Refused: nothing changed.
    Failed(SqlState, String),
}

/// The command's words are wrong.
const SYNTAX: SqlState = sqlstate::SYNTAX_ERROR;
/// No such port, cluster or node.
const UNDEFINED: SqlState = sqlstate::UNDEFINED_OBJECT;
/// The leader, which cannot be drained.
const NOT_NOW: SqlState = sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE;
/// A name that means two things.
const AMBIGUOUS: SqlState = sqlstate::AMBIGUOUS_FUNCTION;

/// How often PAUSE looks whether split ports' transactions have ended.
const PAUSE_POLL: Duration = Duration::from_millis(10);

/// Runs `op` with its argument words (as typed, case kept).
pub(super) async fn run(op: Op, args: &[&str], state: &AdminState) -> Outcome {
    let views = state.clusters.load_full();
    match op {
        Op::Pause | Op::Resume | Op::Kill => {
            let target = match args {
                // A bare KILL would end every client: pgbouncer's needs a
                // database too.
                [] if op != Op::Kill => None,
                [t] => Some(*t),
                _ => {
                    let optional = if op == Op::Kill {
                        ""
                    } else {
                        " (none: every port)"
                    };
                    return Outcome::Failed(
                        SYNTAX,
                        format!(
                            "usage: {} cluster | cluster/port | port{optional}",
                            op.tag()
                        ),
                    );
                }
            };
            match ports(&views, target) {
                Ok(ports) => on_ports(op, &ports, state).await,
                Err((code, text)) => Outcome::Failed(code, text),
            }
        }
        Op::Drain | Op::Undrain => {
            let (cluster, node) = match args {
                [node] => (None, *node),
                [cluster, node] => (Some(*cluster), *node),
                _ => {
                    return Outcome::Failed(SYNTAX, format!("usage: {} [cluster] node", op.tag()));
                }
            };
            drain(op == Op::Drain, &views, (cluster, node), state).await
        }
    }
}

/// The ports `target` names: all (None), a cluster's, `cluster/port`, or
/// every port of that name; a name that is a cluster's and another
/// cluster's port's is ambiguous.
fn ports(
    views: &BTreeMap<String, ClusterView>,
    target: Option<&str>,
) -> Result<Vec<Arc<PortShared>>, (SqlState, String)> {
    let all = || {
        views
            .iter()
            .flat_map(|(name, v)| v.ports.iter().map(move |p| (name.as_str(), p)))
    };
    if let Some(t) = target {
        let cluster = views.contains_key(t);
        let elsewhere: Vec<String> = all()
            .filter(|(c, p)| p.key.port == t && *c != t)
            .map(|(_, p)| p.key.to_string())
            .collect();
        if cluster && !elsewhere.is_empty() {
            return Err((
                AMBIGUOUS,
                format!(
                    "\"{t}\" names a cluster and the port {}: write cluster/port",
                    elsewhere.join(", ")
                ),
            ));
        }
    }
    let chosen: Vec<Arc<PortShared>> = all()
        .filter(|(cluster, p)| {
            target.is_none_or(|t| t == *cluster || t == p.key.port || t == p.key.to_string())
        })
        .map(|(_, p)| Arc::clone(p))
        .collect();
    if chosen.is_empty() {
        return Err((
            UNDEFINED,
            match target {
                Some(t) => format!("no cluster or port named \"{t}\""),
                None => "no port is configured".to_owned(),
            },
        ));
    }
    Ok(chosen)
}

async fn on_ports(op: Op, ports: &[Arc<PortShared>], state: &AdminState) -> Outcome {
    let names: Vec<String> = ports.iter().map(|p| p.key.to_string()).collect();
    match op {
        Op::Pause => {
            for p in ports {
                p.gate.pause();
            }
            tracing::warn!(ports = %names.join(","), "console: PAUSE: new work waits");
            let deadline = Instant::now() + state.globals.load().drain_timeout;
            loop {
                let busy = busy_backends(ports);
                if busy == 0 {
                    return Outcome::Done(op.tag(), Vec::new());
                }
                if Instant::now() >= deadline {
                    let text = format!(
                        "{busy} backends still in use (open transactions or pinned sessions) after drain_timeout_ms; the ports stay paused"
                    );
                    return Outcome::Done(op.tag(), vec![text]);
                }
                tokio::time::sleep(PAUSE_POLL).await;
            }
        }
        Op::Resume => {
            for p in ports {
                p.gate.resume();
            }
            tracing::warn!(ports = %names.join(","), "console: RESUME");
            Outcome::Done(op.tag(), Vec::new())
        }
        Op::Kill => {
            let clients: usize = ports.iter().map(|p| p.active()).sum();
            for p in ports {
                p.gate.kill();
            }
            tracing::warn!(ports = %names.join(","), clients, "console: KILL: every client of the ports ends");
            Outcome::Done(op.tag(), Vec::new())
        }
        Op::Drain | Op::Undrain => unreachable!("node commands do not name ports"),
    }
}

/// Split-port backends checked out now (a transaction, a request or a
/// pinned session each); role ports relay whole connections and hold none.
fn busy_backends(ports: &[Arc<PortShared>]) -> usize {
    ports
        .iter()
        .filter_map(|p| p.split_context())
        .flat_map(|c| c.pools.snapshot())
        .map(|(_, _, open, idle, _)| open.saturating_sub(idle))
        .sum()
}

/// Marks `node` drained (or not) in `cluster`, or in the one cluster that
/// lists it (DRAIN) or has it marked (UNDRAIN, also once it left the
/// map); answers once the map with the mark is published.
async fn drain(
    on: bool,
    views: &BTreeMap<String, ClusterView>,
    (cluster, node): (Option<&str>, &str),
    state: &AdminState,
) -> Outcome {
    let op = if on { Op::Drain } else { Op::Undrain };
    let listing: Vec<(&String, &ClusterView)> = views
        .iter()
        .filter(|(name, v)| {
            cluster.is_none_or(|c| c == name.as_str())
                && if on {
                    v.watcher.map.load().member(node).is_some()
                } else {
                    v.watcher.drained().contains(node)
                }
        })
        .collect();
    let (name, view) = match listing.as_slice() {
        [one] => *one,
        [] => {
            let text = match cluster {
                Some(c) if !views.contains_key(c) => format!("no cluster named \"{c}\""),
                Some(c) if on => format!("cluster \"{c}\" lists no member named \"{node}\""),
                Some(c) => format!("cluster \"{c}\" has no member \"{node}\" drained"),
                None if on => format!("no cluster lists a member named \"{node}\""),
                None => format!("no cluster has a member \"{node}\" drained"),
            };
            return Outcome::Failed(UNDEFINED, text);
        }
        many => {
            let names: Vec<&str> = many.iter().map(|(n, _)| n.as_str()).collect();
            return Outcome::Failed(
                AMBIGUOUS,
                format!(
                    "clusters {} each have \"{node}\": name one, {} <cluster> {node}",
                    names.join(", "),
                    op.tag()
                ),
            );
        }
    };
    if on {
        let map = view.watcher.map.load();
        if map.member(node).is_some_and(|m| m.role.is_leader()) {
            return Outcome::Failed(
                NOT_NOW,
                format!(
                    "\"{node}\" leads cluster \"{name}\": a drain moves clients off replicas; switch over first (patronictl switchover)"
                ),
            );
        }
    }
    let mut generation = view.watcher.generation.clone();
    generation.mark_unchanged();
    let changed = view.watcher.set_drained(node, on);
    tracing::warn!(cluster = %name, node, changed, "console: {}", op.tag());
    let mut warnings = Vec::new();
    if !changed {
        let already = if on { "drained" } else { "not drained" };
        warnings.push(format!(
            "\"{node}\" in cluster \"{name}\" is {already} already"
        ));
    } else if view.watcher.map.load().generation > 0 {
        // The watcher republishes once a poll under way has ended.
        let bound = state.globals.load().api_timeout * 2 + Duration::from_secs(1);
        if tokio::time::timeout(bound, generation.changed())
            .await
            .is_err()
        {
            warnings.push(format!(
                "the mark is set; the map showing it is published when the Patroni poll under way ends (over {} ms now)",
                bound.as_millis()
            ));
        }
    }
    Outcome::Done(op.tag(), warnings)
}
