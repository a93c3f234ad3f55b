//! Least-connections balancing and eviction for one role port. Each client
//! holds a [`Lease`] on its node; the lease carries the node's eviction
//! token, so evicting a node's clients is one `cancel()`.

use crate::topology::NodeAddr;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// A node as a port connects to it: member name and target address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeKey {
    /// Patroni member name.
    pub name: Arc<str>,
    /// Address pgvane connects to.
    pub addr: NodeAddr,
}

#[derive(Debug)]
struct Slot {
    id: u64,
    active: usize,
    evict: CancellationToken,
    /// Fired by [`Balancer::drain_where`]: clients leave as their
    /// transactions end. Replaced for leases taken after it fired.
    drain: CancellationToken,
    /// When `drain` fired: clients still there after the drain's grace
    /// are evicted.
    drained_at: Option<Instant>,
}

#[derive(Debug, Default)]
struct Slots {
    by_node: HashMap<NodeKey, Slot>,
    next_id: u64,
}

/// Per-port client counts and eviction tokens per node.
#[derive(Debug, Default)]
pub struct Balancer {
    slots: Mutex<Slots>,
}

/// A client's claim on a node; dropping it releases the count.
#[derive(Debug)]
pub struct Lease {
    balancer: Arc<Balancer>,
    key: NodeKey,
    slot: u64,
    evict: CancellationToken,
    drain: CancellationToken,
}

impl Lease {
    /// The node this lease is on.
    #[must_use]
    pub fn node(&self) -> &NodeKey {
        &self.key
    }

    /// Fires when the node stops qualifying for the port.
    #[must_use]
    pub fn evicted(&self) -> &CancellationToken {
        &self.evict
    }

    /// The token that fires when the node is drained: the client leaves
    /// at its next idle point.
    #[must_use]
    pub fn drained(&self) -> &CancellationToken {
        &self.drain
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.balancer.with(|slots| {
            // An evicted slot is gone or replaced: only the lease's own slot counts.
            if let Some(slot) = slots
                .by_node
                .get_mut(&self.key)
                .filter(|s| s.id == self.slot)
            {
                slot.active = slot.active.saturating_sub(1);
                if slot.active == 0 {
                    slots.by_node.remove(&self.key);
                }
            }
        });
    }
}

impl Balancer {
    fn with<R>(&self, f: impl FnOnce(&mut Slots) -> R) -> R {
        let mut guard = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard)
    }

    /// Sorts `nodes` best first: fewest active clients, then fewest recent
    /// failures, then name.
    #[must_use]
    pub fn order(
        &self,
        mut nodes: Vec<NodeKey>,
        failures: impl Fn(&NodeKey) -> u32,
    ) -> Vec<NodeKey> {
        let counts: Vec<usize> = self.with(|s| {
            nodes
                .iter()
                .map(|k| s.by_node.get(k).map_or(0, |x| x.active))
                .collect()
        });
        let mut ranked: Vec<(usize, u32, NodeKey)> = counts
            .into_iter()
            .zip(nodes.drain(..))
            .map(|(c, k)| (c, failures(&k), k))
            .collect();
        ranked.sort();
        ranked.into_iter().map(|(_, _, k)| k).collect()
    }

    /// Takes a lease on `key`.
    #[must_use]
    pub fn lease(self: &Arc<Self>, key: NodeKey) -> Lease {
        let (slot, evict, drain) = self.with(|s| {
            let next = &mut s.next_id;
            let slot = s.by_node.entry(key.clone()).or_insert_with(|| {
                *next += 1;
                Slot {
                    id: *next,
                    active: 0,
                    evict: CancellationToken::new(),
                    drain: CancellationToken::new(),
                    drained_at: None,
                }
            });
            if slot.drain.is_cancelled() {
                // Drained before and qualifying again: a new client stays
                // (the earlier ones still leave at their idle point).
                slot.drain = CancellationToken::new();
                slot.drained_at = None;
            }
            slot.active += 1;
            (slot.id, slot.evict.clone(), slot.drain.clone())
        });
        Lease {
            balancer: Arc::clone(self),
            key,
            slot,
            evict,
            drain,
        }
    }

    /// Evicts the clients of every node for which `verdict` gives a reason;
    /// returns each evicted node with its reason and client count.
    pub fn evict_where<R>(
        &self,
        mut verdict: impl FnMut(&NodeKey) -> Option<R>,
    ) -> Vec<(NodeKey, R, usize)> {
        self.with(|slots| {
            let mut out = Vec::new();
            slots.by_node.retain(|key, slot| match verdict(key) {
                Some(reason) => {
                    slot.evict.cancel();
                    out.push((key.clone(), reason, slot.active));
                    false
                }
                None => true,
            });
            out
        })
    }

    /// Fires the drain token of every node `drains` names (once per
    /// token); returns each newly drained node with its client count.
    pub fn drain_where(
        &self,
        now: Instant,
        mut drains: impl FnMut(&NodeKey) -> bool,
    ) -> Vec<(NodeKey, usize)> {
        self.with(|slots| {
            let mut out = Vec::new();
            for (key, slot) in &mut slots.by_node {
                if !slot.drain.is_cancelled() && drains(key) {
                    slot.drain.cancel();
                    slot.drained_at = Some(now);
                    out.push((key.clone(), slot.active));
                }
            }
            out
        })
    }

    /// Evicts the clients of nodes drained `grace` ago or more that
    /// `drains` still names; returns them with their client count, and
    /// when the next drain runs out.
    pub fn overdue(
        &self,
        now: Instant,
        grace: std::time::Duration,
        mut drains: impl FnMut(&NodeKey) -> bool,
    ) -> (Vec<(NodeKey, usize)>, Option<Instant>) {
        self.with(|slots| {
            let (mut out, mut next) = (Vec::new(), None::<Instant>);
            slots.by_node.retain(|key, slot| {
                let Some(at) = slot.drained_at.filter(|_| drains(key)) else {
                    return true;
                };
                let due = at + grace;
                if due > now {
                    next = Some(next.map_or(due, |n| n.min(due)));
                    return true;
                }
                slot.evict.cancel();
                out.push((key.clone(), slot.active));
                false
            });
            (out, next)
        })
    }

    /// Active clients per node.
    #[must_use]
    pub fn active(&self) -> Vec<(NodeKey, usize)> {
        let mut v: Vec<_> = self.with(|s| {
            s.by_node
                .iter()
                .map(|(k, x)| (k.clone(), x.active))
                .collect()
        });
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> NodeKey {
        NodeKey {
            name: name.into(),
            addr: NodeAddr {
                host: format!("{name}.h").into(),
                port: 5432,
            },
        }
    }

    #[test]
    fn least_connections_then_failures_then_name() {
        let b = Arc::new(Balancer::default());
        let nodes = vec![key("c"), key("b"), key("a")];
        assert_eq!(
            b.order(nodes.clone(), |_| 0),
            vec![key("a"), key("b"), key("c")]
        );
        let _l1 = b.lease(key("a"));
        let _l2 = b.lease(key("a"));
        let _l3 = b.lease(key("b"));
        assert_eq!(
            b.order(nodes.clone(), |_| 0),
            vec![key("c"), key("b"), key("a")]
        );
        let failures = |k: &NodeKey| u32::from(&*k.name == "c");
        assert_eq!(
            b.order(vec![key("c"), key("d")], failures),
            vec![key("d"), key("c")]
        );
    }

    #[test]
    fn eviction_cancels_exactly_that_nodes_leases() {
        let b = Arc::new(Balancer::default());
        let a1 = b.lease(key("a"));
        let a2 = b.lease(key("a"));
        let c1 = b.lease(key("c"));
        let out = b.evict_where(|k| (&*k.name == "a").then_some("lag"));
        assert_eq!(out, vec![(key("a"), "lag", 2)]);
        assert!(a1.evicted().is_cancelled() && a2.evicted().is_cancelled());
        assert!(!c1.evicted().is_cancelled());
        // A new client on the same node after eviction gets a fresh token and
        // its count is not disturbed by the evicted leases dropping.
        let a3 = b.lease(key("a"));
        assert!(!a3.evicted().is_cancelled());
        drop(a1);
        drop(a2);
        assert_eq!(b.active(), vec![(key("a"), 1), (key("c"), 1)]);
        drop(a3);
        drop(c1);
        assert!(b.active().is_empty());
    }

    #[test]
    fn draining_fires_once_and_a_later_client_gets_a_fresh_token() {
        let b = Arc::new(Balancer::default());
        let a1 = b.lease(key("a"));
        let c1 = b.lease(key("c"));
        let t0 = Instant::now();
        let out = b.drain_where(t0, |k| &*k.name == "a");
        assert_eq!(out, vec![(key("a"), 1)]);
        assert!(a1.drained().is_cancelled());
        assert!(!c1.drained().is_cancelled());
        assert!(!a1.evicted().is_cancelled(), "draining is not eviction");
        assert!(
            b.drain_where(t0, |k| &*k.name == "a").is_empty(),
            "once per token"
        );
        // Past the grace, what is left of a drained node is evicted.
        let grace = std::time::Duration::from_secs(10);
        let (gone, next) = b.overdue(t0 + grace / 2, grace, |_| true);
        assert!(gone.is_empty());
        assert_eq!(next, Some(t0 + grace));
        let (gone, _) = b.overdue(t0 + grace, grace, |k| &*k.name == "c");
        assert!(gone.is_empty(), "no longer drained: nothing evicted");
        let (gone, next) = b.overdue(t0 + grace, grace, |_| true);
        assert_eq!(gone, vec![(key("a"), 1)]);
        assert_eq!(next, None);
        assert!(a1.evicted().is_cancelled());
        assert!(!c1.evicted().is_cancelled());
        let a2 = b.lease(key("a"));
        assert!(!a2.drained().is_cancelled());
        assert!(!a2.evicted().is_cancelled());
        assert_eq!(b.active(), vec![(key("a"), 1), (key("c"), 1)]);
    }
}
