//! A hash tree over key hashes, so two replicas find the keys on which they differ by
//! exchanging a few hashes per level instead of their data.
//!
//! The key-hash space is cut into `16^depth` leaves by the top `4 · depth` bits of each key's
//! hash; every node holds the wrapping sum of the contributions of the keys below it, where a
//! key's contribution mixes its hash with its state's digest. A sum, unlike a hash of
//! children, updates in `depth + 1` additions when one key changes and does not depend on the
//! order keys arrived in. Two replicas with equal node hashes hold the same keys in the same
//! states below that node (barring a 64-bit collision); a differing node has at least one key
//! that differs below it.

use alloc::vec;
use alloc::vec::Vec;

use super::state::mix64;

/// Children per node.
pub const FANOUT: usize = 16;
/// Key-hash bits consumed per level.
pub const FANOUT_BITS: u32 = 4;
/// The deepest tree allowed: `16^6` (about 16.8 million) leaves.
pub const DEPTH_MAX: u8 = 6;

/// What one key adds to every node above it.
pub fn contribution(key_hash: u64, state_digest: u64) -> u64 {
    mix64(key_hash ^ mix64(state_digest ^ 0x6a09_e667_f3bc_c909))
}

/// The hash tree of one shard replica. See the [module docs](self).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MerkleTree {
    depth: u8,
    /// `levels[l]` holds the `16^l` node sums of level `l`; level 0 is the root.
    levels: Vec<Vec<u64>>,
}

impl MerkleTree {
    /// An empty tree with `16^depth` leaves; `depth` is clamped to `1..=DEPTH_MAX`.
    pub fn new(depth: u8) -> MerkleTree {
        let depth = depth.clamp(1, DEPTH_MAX);
        let levels = (0..=u32::from(depth)).map(|l| vec![0u64; 1usize << (FANOUT_BITS * l)]).collect();
        MerkleTree { depth, levels }
    }

    /// Levels below the root.
    pub fn depth(&self) -> u8 {
        self.depth
    }

    /// Number of leaves.
    pub fn leaf_count(&self) -> u32 {
        1u32 << (FANOUT_BITS * u32::from(self.depth))
    }

    /// The leaf a key hash falls in.
    pub fn leaf_of(&self, key_hash: u64) -> u32 {
        (key_hash >> (64 - FANOUT_BITS * u32::from(self.depth))) as u32
    }

    /// The smallest and largest key hash of `leaf`.
    pub fn leaf_bounds(&self, leaf: u32) -> (u64, u64) {
        let shift = 64 - FANOUT_BITS * u32::from(self.depth);
        let lo = u64::from(leaf) << shift;
        (lo, lo | ((1u64 << shift) - 1))
    }

    /// The leaves below node `index` of `level`, as a half-open range.
    pub fn leaves_below(&self, level: u8, index: u32) -> (u32, u32) {
        let span = 1u32 << (FANOUT_BITS * u32::from(self.depth.saturating_sub(level)));
        (index.saturating_mul(span), index.saturating_add(1).saturating_mul(span))
    }

    /// Adds a key's contribution.
    pub fn add(&mut self, key_hash: u64, contribution: u64) {
        self.walk(key_hash, |h| *h = h.wrapping_add(contribution));
    }

    /// Removes a key's contribution (as added before).
    pub fn remove(&mut self, key_hash: u64, contribution: u64) {
        self.walk(key_hash, |h| *h = h.wrapping_sub(contribution));
    }

    fn walk(&mut self, key_hash: u64, mut f: impl FnMut(&mut u64)) {
        for (l, level) in self.levels.iter_mut().enumerate() {
            let index = if l == 0 { 0 } else { (key_hash >> (64 - FANOUT_BITS * l as u32)) as usize };
            f(&mut level[index]);
        }
    }

    /// The root hash: a digest of the whole replica.
    pub fn root(&self) -> u64 {
        self.levels[0][0]
    }

    /// Node `index` of `level`, if both exist.
    pub fn node(&self, level: u8, index: u32) -> Option<u64> {
        self.levels.get(usize::from(level))?.get(index as usize).copied()
    }

    /// The 16 children of node `index` of `level` (which must be above the leaves).
    pub fn children(&self, level: u8, index: u32) -> Option<&[u64]> {
        if level >= self.depth {
            return None;
        }
        let below = self.levels.get(usize::from(level) + 1)?;
        let first = (index as usize).checked_mul(FANOUT)?;
        below.get(first..first + FANOUT)
    }

    /// Leaves where `self` and `other` (of the same depth) differ, found by descending only
    /// into differing nodes, in leaf order. Empty when the depths differ.
    pub fn diff_leaves(&self, other: &MerkleTree) -> Vec<u32> {
        if self.depth != other.depth {
            return Vec::new();
        }
        let mut frontier = if self.root() == other.root() { Vec::new() } else { vec![0u32] };
        for level in 0..self.depth {
            let mut next = Vec::new();
            for &parent in &frontier {
                let (Some(a), Some(b)) = (self.children(level, parent), other.children(level, parent)) else {
                    continue;
                };
                for (i, (x, y)) in a.iter().zip(b).enumerate() {
                    if x != y {
                        next.push(parent * FANOUT as u32 + i as u32);
                    }
                }
            }
            frontier = next;
        }
        frontier
    }

    /// Recomputes every node from the leaves and checks it matches (for invariant checks).
    pub fn is_consistent(&self) -> bool {
        (0..usize::from(self.depth)).all(|l| {
            self.levels[l].iter().enumerate().all(|(i, h)| {
                let kids = &self.levels[l + 1][i * FANOUT..(i + 1) * FANOUT];
                kids.iter().fold(0u64, |acc, k| acc.wrapping_add(*k)) == *h
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;
    use proptest::prelude::*;

    fn tree_of(depth: u8, keys: &BTreeMap<u64, u64>) -> MerkleTree {
        let mut t = MerkleTree::new(depth);
        for (&k, &d) in keys {
            t.add(mix64(k), contribution(mix64(k), d));
        }
        t
    }

    #[test]
    fn leaves_partition_the_hash_space() {
        let t = MerkleTree::new(2);
        assert_eq!(t.leaf_count(), 256);
        assert_eq!(t.leaf_of(0), 0);
        assert_eq!(t.leaf_of(u64::MAX), 255);
        assert_eq!(t.leaf_bounds(1), (1 << 56, (2 << 56) - 1));
        assert_eq!(t.leaves_below(1, 3), (48, 64));
        assert_eq!(t.leaves_below(0, 0), (0, 256));
        assert!(t.children(2, 0).is_none(), "leaves have no children");
        assert_eq!(MerkleTree::new(0).depth(), 1);
        assert_eq!(MerkleTree::new(99).depth(), DEPTH_MAX);
    }

    #[test]
    fn updates_are_order_independent_and_reversible() {
        let mut a = MerkleTree::new(3);
        let mut b = MerkleTree::new(3);
        for k in 0..50u64 {
            a.add(mix64(k), contribution(mix64(k), k * 7));
        }
        for k in (0..50u64).rev() {
            b.add(mix64(k), contribution(mix64(k), k * 7));
        }
        assert_eq!(a, b);
        assert!(a.is_consistent());
        for k in 0..50u64 {
            a.remove(mix64(k), contribution(mix64(k), k * 7));
        }
        assert_eq!(a, MerkleTree::new(3));
    }

    proptest! {
        /// Any difference is found, and no leaf is reported that holds no difference.
        #[test]
        fn diff_finds_exactly_the_differing_leaves(
            depth in 1u8..4,
            common in proptest::collection::btree_map(any::<u64>(), any::<u64>(), 0..200),
            changes in proptest::collection::vec((any::<u64>(), any::<u64>(), 0u8..3), 0..20),
        ) {
            let mut left = common.clone();
            let mut right = common;
            for (k, d, what) in changes {
                match what {
                    0 => { left.insert(k, d); }
                    1 => { right.insert(k, d); }
                    _ => { right.remove(&k); }
                }
            }
            let (a, b) = (tree_of(depth, &left), tree_of(depth, &right));
            let found = a.diff_leaves(&b);
            let mut truly = alloc::collections::BTreeSet::new();
            for k in left.keys().chain(right.keys()) {
                if left.get(k) != right.get(k) {
                    truly.insert(a.leaf_of(mix64(*k)));
                }
            }
            prop_assert_eq!(found.into_iter().collect::<alloc::collections::BTreeSet<_>>(), truly);
            prop_assert_eq!(a.root() == b.root(), left == right);
            prop_assert!(a.is_consistent() && b.is_consistent());
        }
    }
}
