//! Lag eviction with hysteresis, per port. A replica over
//! `max_lag_in_bytes` takes no new clients at once; its connected clients
//! are evicted only once it has stayed over the limit for `lag_grace_ms`,
//! or at once past `lag_hard_factor` × the limit; it takes new clients
//! again only at or below `lag_low_watermark_in_bytes`. Pure: the port's
//! evictor feeds it maps and instants, routing reads the [`LagView`] it
//! produces.

use crate::config::PortConfig;
use crate::topology::{ClusterMap, Member};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Default `lag_grace_ms`: about two of Patroni's `loop_wait` 1 s polls,
/// long enough for a WAL burst that replicas replay at once.
pub const DEFAULT_GRACE: Duration = Duration::from_millis(2000);
/// Default `lag_hard_factor`: past 4 × the limit, evict without grace.
pub const DEFAULT_HARD_FACTOR: u64 = 4;

/// What lag allows for one member on one port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LagVerdict {
    /// Under the limit (and under the low watermark since it last exceeded it).
    Admit,
    /// No new clients; connected ones stay (in grace, or not yet back
    /// under the low watermark).
    Hold,
    /// Connected clients must go.
    Evict,
}

/// The lag rules of a port with `max_lag_in_bytes` set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LagRules {
    /// `max_lag_in_bytes`.
    pub max: u64,
    /// `lag_low_watermark_in_bytes` (default half of `max`).
    pub low: u64,
    /// `lag_grace_ms` (default [`DEFAULT_GRACE`]; zero evicts at once).
    pub grace: Duration,
    /// `lag_hard_factor` × `max`: evicted without grace.
    pub hard: u64,
}

impl LagRules {
    /// The rules of `port`, `None` when it sets no lag limit.
    #[must_use]
    pub fn of(port: &PortConfig) -> Option<Self> {
        let max = port.max_lag_in_bytes?;
        Some(Self {
            max,
            low: port.lag_low_watermark_in_bytes.unwrap_or(max / 2).min(max),
            grace: port
                .lag_grace_ms
                .map_or(DEFAULT_GRACE, Duration::from_millis),
            hard: max.saturating_mul(port.lag_hard_factor.unwrap_or(DEFAULT_HARD_FACTOR).max(1)),
        })
    }

    /// The verdict from a member's lag alone, with no history: over the
    /// limit (or unknown) holds, past the hard limit evicts.
    #[must_use]
    pub fn instant(&self, lag: Option<u64>) -> LagVerdict {
        match lag {
            Some(l) if l <= self.max => LagVerdict::Admit,
            Some(l) if l > self.hard => LagVerdict::Evict,
            _ => LagVerdict::Hold,
        }
    }
}

/// Verdicts of the last observation, by member name; read by routing.
#[derive(Debug, Clone, Default)]
pub struct LagView {
    verdicts: HashMap<String, LagVerdict>,
}

impl LagView {
    /// The verdict for `m` under `port`: the stricter of the last
    /// observation and `m`'s lag right now (a map published since the
    /// last observation is never more lenient than its own figures).
    #[must_use]
    pub fn verdict(&self, m: &Member, port: &PortConfig) -> LagVerdict {
        let Some(rules) = LagRules::of(port) else {
            return LagVerdict::Admit;
        };
        let now = rules.instant(m.lag);
        self.verdicts
            .get(&*m.name)
            .map_or(now, |&seen| seen.max(now))
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct NodeGate {
    over_since: Option<Instant>,
    closed: bool,
}

/// A port's hysteresis state: since when each member has been over the
/// limit, and whether it is closed to new clients.
#[derive(Debug, Default)]
pub struct LagGate {
    nodes: HashMap<String, NodeGate>,
}

impl LagGate {
    /// Observes the replicas of `map` at `now` under `rules`; returns the
    /// verdicts and the earliest instant one may change without a new map
    /// (a grace period ending).
    pub fn observe(
        &mut self,
        map: &ClusterMap,
        rules: &LagRules,
        now: Instant,
    ) -> (LagView, Option<Instant>) {
        self.nodes
            .retain(|name, _| map.members.iter().any(|m| *m.name == **name));
        let mut view = LagView::default();
        let mut wake: Option<Instant> = None;
        for m in map.members.iter().filter(|m| !m.role.is_leader()) {
            let gate = self.nodes.entry(m.name.to_string()).or_default();
            let verdict = match m.lag {
                Some(l) if l <= rules.max => {
                    gate.over_since = None;
                    if gate.closed && l > rules.low {
                        LagVerdict::Hold
                    } else {
                        gate.closed = false;
                        LagVerdict::Admit
                    }
                }
                lag => {
                    gate.closed = true;
                    let since = *gate.over_since.get_or_insert(now);
                    let end = since + rules.grace;
                    if lag.is_some_and(|l| l > rules.hard) || now >= end {
                        LagVerdict::Evict
                    } else {
                        wake = Some(wake.map_or(end, |w| w.min(end)));
                        LagVerdict::Hold
                    }
                }
            };
            view.verdicts.insert(m.name.to_string(), verdict);
        }
        (view, wake)
    }
}

#[cfg(test)]
mod tests;
