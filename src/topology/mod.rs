//! Cluster topology: the Patroni `/cluster` and `/patroni` models, the
//! reconciling of one poll round, the published [`ClusterMap`], the
//! watcher that polls Patroni and publishes it, and the WAL position
//! types the `tracker` publishes ([`Positions`]).
//! Nothing but the watcher writes a map; everyone else reads snapshots.

pub mod map;
pub mod patroni;
pub mod position;
pub mod reconcile;
pub mod watcher;

pub use map::{
    ClusterMap, LagSource, LiveWal, Member, MemberRole, MemberState, NodeAddr, SelfReport,
};
pub use position::{Floor, Lsn, Position, PositionSource, Positions, normalize_insert_lsn};
