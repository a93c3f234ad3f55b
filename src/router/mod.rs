//! Routing decisions for role ports: which members qualify for a port
//! (`policy`), lag hysteresis (`lag`), how clients spread over them
//! (`balance`) and which nodes recently refused pgvane (`health`). Pure:
//! no IO, no awaiting.

pub mod balance;
pub mod health;
pub mod lag;
pub mod policy;
pub mod split;

pub use balance::{Balancer, Lease, NodeKey};
pub use health::HealthBook;
pub use lag::{LagGate, LagRules, LagVerdict, LagView};
pub use policy::{Ineligible, check, target_key};

use crate::config::PortConfig;
use crate::topology::ClusterMap;
use std::time::Instant;

/// Why no node can serve a new client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoTarget {
    /// No member qualifies; the text lists each member and why.
    NoneQualifies(String),
    /// Members qualify, but each refused pgvane's connects moments ago.
    AllCoolingDown(String),
}

/// The nodes to try for a new client, best first: qualifying members, least
/// active clients first, ties broken by fewest recent failures then name.
/// Nodes that refused pgvane recently are left out while others remain.
///
/// # Errors
/// [`NoTarget`] when nothing can be tried.
pub fn choose(
    map: &ClusterMap,
    port: &PortConfig,
    balancer: &Balancer,
    health: &HealthBook,
    lag: &LagView,
    now: Instant,
) -> Result<Vec<NodeKey>, NoTarget> {
    let mut qualifying = Vec::new();
    let mut why = Vec::new();
    for m in &map.members {
        match check(m, port, lag) {
            Ok(()) => qualifying.push(target_key(m, port)),
            Err(reason) => why.push(format!("{} {}", m.name, reason.describe(m, port))),
        }
    }
    if qualifying.is_empty() {
        if map.members.is_empty() {
            why.push(if map.generation == 0 {
                "no answer from Patroni yet".to_owned()
            } else {
                "Patroni lists no member".to_owned()
            });
        }
        return Err(NoTarget::NoneQualifies(why.join(", ")));
    }
    let (cool, warm): (Vec<_>, Vec<_>) = qualifying
        .into_iter()
        .partition(|k| health.cooling(&k.addr, now));
    if warm.is_empty() {
        let names: Vec<String> = cool
            .iter()
            .map(|k| format!("{} ({})", k.name, k.addr))
            .collect();
        return Err(NoTarget::AllCoolingDown(names.join(", ")));
    }
    Ok(balancer.order(warm, |k| health.failures(&k.addr)))
}

#[cfg(test)]
mod tests;
