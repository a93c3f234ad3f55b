//! Cluster topology: the Patroni `/cluster` model, the published
//! [`ClusterMap`] and the watcher that polls Patroni and publishes it.
//! Nothing but the watcher writes a map; everyone else reads snapshots.

pub mod map;
pub mod patroni;
pub mod watcher;

pub use map::{ClusterMap, Member, MemberRole, MemberState, NodeAddr};
