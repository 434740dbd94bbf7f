//! Shard placement: which nodes hold which shards, and how that changes without losing a
//! replica.
//!
//! Keys reach shards through [`crate::hash::shard_of`]; shards reach nodes through an explicit
//! [`ShardMap`] that the Raft leader maintains. Everything here is pure: from a
//! [`Topology`] (nodes with region, zone, rack, weight and state), the current map and the
//! moves in flight, [`plan()`] computes a balanced, failure-domain-aware [`Target`] and the
//! next moves towards it ([`Plan`]), within per-node limits. The leader commits the plan, and
//! one [`Migration`] machine per move carries it out, driven by committed [`Event`]s; the
//! replica states it sets in the map ([`ReplicaState`]) are the routing rules for reads and
//! writes, and it never leaves a shard with fewer readable replicas than it started with.
//! [`LoadTracker`] keeps decaying per-replica load, finds hot shards and hot nodes, and
//! proposes count-neutral trades that cool them without fighting the balancer.
//!
//! Determinism: nothing here iterates a hash map, reads a clock or draws randomness; the same
//! inputs give the same target and the same plan, bit for bit.

pub mod hot;
mod map;
pub mod migration;
pub mod plan;
pub mod target;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
#[cfg(test)]
mod tests;

pub use hot::{Hot, LoadConfig, LoadError, LoadSample, LoadTracker, Relief};
pub use map::{
    Collection, CollectionId, DomainLevel, MapError, Node, NodeState, Replica, ReplicaSet, ReplicaState, ShardId,
    ShardMap, Topology, NODES_MAX, RF_MAX, SHARDS_PER_COLLECTION_MAX,
};
pub use migration::{AbortReason, Event, Migration, MigrationConfig, MigrationError, Phase};
pub use plan::{apply_immediate, apply_move_now, plan, Create, Drop, Move, MoveReason, Plan, Planned, PrimaryChange};
pub use target::{
    compute_target, per_domain_max, DomainShortfall, NodeLoad, PlacementConfig, PlacementConfigError, Target,
    TargetReport, TargetSet,
};
