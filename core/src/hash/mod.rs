//! Consistent hashing: how keys find shards, and how anything finds nodes, without a table
//! that every node must agree on.
//!
//! Quorate routes in two steps. A key's bytes hash with the stable [`key_hash`] (XXH64, fixed
//! forever), and [`jump`] maps that hash to one of a collection's shards, in expected constant
//! time with nothing stored. Shards are then placed on nodes by the `placement` module, which
//! keeps an explicit, balanced, rack-aware map committed through Raft. The schemes here that
//! map straight to nodes serve what has no such map:
//! - [`Ring`]: a Ketama ring with weighted virtual nodes, constant-time lookups through an index
//!   by the hash's top bits, and [`RingInfo`] for operators;
//! - [`rendezvous_top`]: weighted highest-random-weight, the placement planner's stable order of
//!   preference among nodes for each shard;
//! - [`Anchor`] / [`AnchorMap`]: AnchorHash, optimal when an arbitrary node leaves, for routing
//!   to a changing set of stateless workers.
//!
//! Everything is a pure function of its inputs, identical on every platform; golden vectors in
//! each file pin the outputs.

mod anchor;
mod jump;
mod key;
mod rendezvous;
mod ring;

pub use anchor::{Anchor, AnchorError, AnchorMap, ANCHOR_CAPACITY_MAX};
pub use jump::{jump, jump_classic};
pub use key::{fast_range, key_hash, key_hash_u64, mix64, GOLDEN_GAMMA};
pub use rendezvous::{node_salt, rendezvous_score, rendezvous_top};
pub use ring::{point_hash, Ring, RingConfig, RingError, RingInfo, WEIGHT_UNIT};

/// The shard of a key (by its bytes) in a collection of `shards` shards: `jump(key_hash(key))`.
#[inline]
pub fn shard_of(key: &[u8], shards: u32) -> u32 {
    jump(key_hash(key), shards)
}

/// The shard of a numeric key (an id) in a collection of `shards` shards.
#[inline]
pub fn shard_of_id(id: u64, shards: u32) -> u32 {
    jump(key_hash_u64(id), shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_of_golden_vectors() {
        assert_eq!(shard_of(b"vector-1", 16), 6);
        assert_eq!(shard_of_id(1, 16), 7);
        assert_eq!(shard_of_id(1, 16), shard_of(&1u64.to_le_bytes(), 16));
    }
}
