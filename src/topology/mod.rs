//! Cluster topology: the Patroni `/cluster` and `/patroni` models, the
//! reconciling of one poll round, the published [`ClusterMap`] and the
//! watcher that polls Patroni and publishes it.
//! Nothing but the watcher writes a map; everyone else reads snapshots.

pub mod map;
pub mod patroni;
pub mod reconcile;
pub mod watcher;

pub use map::{
    ClusterMap, LagSource, LiveWal, Member, MemberRole, MemberState, NodeAddr, SelfReport,
};
