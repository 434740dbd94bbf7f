//! AnchorHash (Mendelson, Vargaftik, Barabash, Lorenz, Keslassy and Orda, 2020): consistent
//! hashing that stays optimal when an *arbitrary* bucket is removed.
//!
//! Jump hash can only drop its last bucket; a ring moves the right keys but balances only as
//! well as its virtual nodes. Here a removal moves exactly the removed bucket's keys, spread
//! uniformly over the buckets still working, and nothing else; adding a bucket back undoes the
//! last removal exactly, so it takes a fair share from every bucket and moves nothing between
//! the others. That is what routing to a changing set of stateless workers (search
//! coordinators, caches) wants, so it earns its place beside jump (shards) and the placement
//! map (replicas).
//!
//! How: a fixed capacity `a` of buckets, and a permutation whose first `w` positions hold the
//! working ones. Removing bucket `b` swaps it with the last working position and records `w`
//! (the working count right after) and the bucket that took its place. A key starts at bucket
//! `H(k) mod a`; while that bucket is removed, it re-hashes into the `w_b` positions that were
//! working when `b` left, and follows the recorded replacements of buckets that had left
//! before `b` (those positions' occupants at that time). Each removal is a step back in time,
//! so both loops end; the expected work is `O(1 + ln(a / w))`.
//!
//! This is our implementation of the paper's algorithm, not a port of its code.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use thiserror::Error;

use super::key::{fast_range, mix64, GOLDEN_GAMMA};
use crate::NodeId;

/// The largest capacity an [`Anchor`] accepts (16 bytes of state per bucket).
pub const ANCHOR_CAPACITY_MAX: u32 = 1 << 24;

/// Why an anchor operation was refused. A refused operation changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum AnchorError {
    /// Capacity must be between 1 and [`ANCHOR_CAPACITY_MAX`], and working at most capacity.
    #[error("capacity {capacity} with {working} working buckets is out of range")]
    BadSize {
        /// Capacity asked for.
        capacity: u32,
        /// Working buckets asked for.
        working: u32,
    },
    /// The bucket is beyond the capacity.
    #[error("bucket {0} is beyond the capacity")]
    NoSuchBucket(u32),
    /// The bucket is already removed.
    #[error("bucket {0} is not working")]
    NotWorking(u32),
    /// Every bucket is working; there is none to add back.
    #[error("every bucket is already working (capacity reached)")]
    Full,
    /// The node is already in the map.
    #[error("node {0} is already present")]
    DuplicateNode(NodeId),
    /// The node is not in the map.
    #[error("node {0} is not present")]
    UnknownNode(NodeId),
}

/// Buckets `0..capacity`, some working. See the [hash module](crate::hash) and the notes at the top of `hash/anchor.rs`.
#[derive(Clone, Debug)]
pub struct Anchor {
    /// Per bucket: 0 while working, else `1 +` the working count right after its removal.
    removed_at: Vec<u32>,
    /// Per removed bucket: the bucket that took its position when it left.
    replacer: Vec<u32>,
    /// Position to bucket; positions `0..working` hold the working buckets.
    slot: Vec<u32>,
    /// Bucket to position.
    pos: Vec<u32>,
    /// Removed buckets, last removed on top: adding pops it.
    removed: Vec<u32>,
    working: u32,
}

impl Anchor {
    /// `capacity` buckets of which the first `working` (`0..working`) work.
    pub fn new(capacity: u32, working: u32) -> Result<Anchor, AnchorError> {
        if capacity == 0 || capacity > ANCHOR_CAPACITY_MAX || working > capacity {
            return Err(AnchorError::BadSize { capacity, working });
        }
        let n = capacity as usize;
        let mut a = Anchor {
            removed_at: alloc::vec![0; n],
            replacer: alloc::vec![0; n],
            slot: (0..capacity).collect(),
            pos: (0..capacity).collect(),
            removed: Vec::with_capacity(n),
            working: capacity,
        };
        for b in (working..capacity).rev() {
            a.remove(b)?;
        }
        Ok(a)
    }

    /// Buckets in all, working or not.
    pub fn capacity(&self) -> u32 {
        self.slot.len() as u32
    }

    /// Working buckets.
    pub fn working(&self) -> u32 {
        self.working
    }

    /// True if `bucket` is working.
    pub fn is_working(&self, bucket: u32) -> bool {
        self.removed_at.get(bucket as usize) == Some(&0)
    }

    /// The working bucket of `key_hash`, or `None` when no bucket works.
    #[inline]
    pub fn bucket(&self, key_hash: u64) -> Option<u32> {
        if self.working == 0 {
            return None;
        }
        let mut b = fast_range(key_hash, u64::from(self.capacity())) as usize;
        loop {
            let since = self.removed_at[b];
            if since == 0 {
                return Some(b as u32);
            }
            // Re-hash into the positions that were working right after `b` left ...
            let salt = mix64(key_hash ^ (b as u64 + 1).wrapping_mul(GOLDEN_GAMMA));
            let mut p = fast_range(salt, u64::from(since - 1)) as usize;
            // ... and find that position's occupant at that time: while the bucket that was
            // first there had left before `b`, its replacer took the position.
            while self.removed_at[p] >= since {
                p = self.replacer[p] as usize;
            }
            b = p;
        }
    }

    /// Removes a working bucket; its keys spread over the remaining ones, no other key moves.
    pub fn remove(&mut self, bucket: u32) -> Result<(), AnchorError> {
        let b = bucket as usize;
        match self.removed_at.get(b) {
            None => return Err(AnchorError::NoSuchBucket(bucket)),
            Some(&r) if r != 0 => return Err(AnchorError::NotWorking(bucket)),
            Some(_) => {}
        }
        self.working -= 1;
        let w = self.working as usize;
        let from = self.pos[b] as usize;
        let last = self.slot[w];
        self.slot[from] = last;
        self.pos[last as usize] = from as u32;
        self.slot[w] = bucket;
        self.pos[b] = w as u32;
        self.removed_at[b] = self.working + 1;
        self.replacer[b] = last;
        self.removed.push(bucket);
        Ok(())
    }

    /// Adds back the most recently removed bucket, exactly undoing its removal; returns it.
    pub fn add(&mut self) -> Result<u32, AnchorError> {
        let bucket = self.removed.pop().ok_or(AnchorError::Full)?;
        let b = bucket as usize;
        let last = self.replacer[b];
        let w = self.working as usize;
        let at = self.pos[last as usize] as usize;
        self.slot[w] = last;
        self.pos[last as usize] = w as u32;
        self.slot[at] = bucket;
        self.pos[b] = at as u32;
        self.removed_at[b] = 0;
        self.working += 1;
        Ok(bucket)
    }

    /// Panics if the permutation, the removal records or the stack disagree.
    pub fn check_invariants(&self) {
        let cap = self.capacity() as usize;
        assert_eq!(self.removed.len(), cap - self.working as usize, "stack holds every removed bucket");
        for p in 0..cap {
            assert_eq!(self.pos[self.slot[p] as usize] as usize, p, "slot and pos are inverse");
            let working = self.removed_at[self.slot[p] as usize] == 0;
            assert_eq!(working, p < self.working as usize, "working buckets fill the first positions");
        }
        for (depth, &b) in self.removed.iter().rev().enumerate() {
            // The removed bucket at depth d left when d others were still to leave after it.
            assert_eq!(self.removed_at[b as usize] as usize, self.working as usize + depth + 1);
            assert_eq!(self.pos[b as usize] as usize, self.working as usize + depth, "a removed bucket never moves");
        }
    }
}

/// An [`Anchor`] whose buckets are nodes: add and remove nodes by id, in any order.
#[derive(Clone, Debug)]
pub struct AnchorMap {
    anchor: Anchor,
    owner: Vec<NodeId>,
    bucket_of: BTreeMap<NodeId, u32>,
}

impl AnchorMap {
    /// An empty map with room for `capacity` nodes at once.
    pub fn new(capacity: u32) -> Result<AnchorMap, AnchorError> {
        let anchor = Anchor::new(capacity, 0)?;
        Ok(AnchorMap { anchor, owner: alloc::vec![NodeId::NONE; capacity as usize], bucket_of: BTreeMap::new() })
    }

    /// Adds a node: it takes a fair share of keys from every other node, and nothing else moves.
    pub fn add(&mut self, node: NodeId) -> Result<(), AnchorError> {
        if self.bucket_of.contains_key(&node) {
            return Err(AnchorError::DuplicateNode(node));
        }
        let b = self.anchor.add()?;
        self.owner[b as usize] = node;
        self.bucket_of.insert(node, b);
        Ok(())
    }

    /// Removes a node: only its keys move, spread evenly over the rest.
    pub fn remove(&mut self, node: NodeId) -> Result<(), AnchorError> {
        let &b = self.bucket_of.get(&node).ok_or(AnchorError::UnknownNode(node))?;
        self.anchor.remove(b)?;
        self.bucket_of.remove(&node);
        self.owner[b as usize] = NodeId::NONE;
        Ok(())
    }

    /// The node of `key_hash`, or `None` when the map is empty.
    #[inline]
    pub fn node(&self, key_hash: u64) -> Option<NodeId> {
        self.anchor.bucket(key_hash).map(|b| self.owner[b as usize])
    }

    /// Nodes present.
    pub fn len(&self) -> usize {
        self.bucket_of.len()
    }

    /// True when no node is present.
    pub fn is_empty(&self) -> bool {
        self.bucket_of.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::key::key_hash_u64;
    use alloc::vec;
    use proptest::prelude::*;

    fn buckets(a: &Anchor, keys: u64) -> Vec<u32> {
        (0..keys).map(|k| a.bucket(key_hash_u64(k)).unwrap()).collect()
    }

    #[test]
    fn anchor_golden_vectors() {
        let mut a = Anchor::new(16, 10).unwrap();
        a.remove(3).unwrap();
        a.remove(7).unwrap();
        let got: Vec<u32> = (0..10u64).map(|k| a.bucket(key_hash_u64(k)).unwrap()).collect();
        assert_eq!(got, vec![8, 9, 4, 8, 2, 8, 9, 0, 6, 6]);
    }

    #[test]
    fn bad_sizes_and_operations_get_typed_errors() {
        assert!(matches!(Anchor::new(0, 0), Err(AnchorError::BadSize { .. })));
        assert!(matches!(Anchor::new(4, 5), Err(AnchorError::BadSize { .. })));
        let mut a = Anchor::new(4, 4).unwrap();
        assert_eq!(a.add(), Err(AnchorError::Full));
        assert_eq!(a.remove(9), Err(AnchorError::NoSuchBucket(9)));
        a.remove(1).unwrap();
        assert_eq!(a.remove(1), Err(AnchorError::NotWorking(1)));
        let mut m = AnchorMap::new(2).unwrap();
        assert_eq!(m.node(1), None);
        m.add(NodeId(5)).unwrap();
        assert_eq!(m.add(NodeId(5)), Err(AnchorError::DuplicateNode(NodeId(5))));
        m.add(NodeId(6)).unwrap();
        assert_eq!(m.add(NodeId(7)), Err(AnchorError::Full));
        assert_eq!(m.remove(NodeId(8)), Err(AnchorError::UnknownNode(NodeId(8))));
        m.remove(NodeId(5)).unwrap();
        m.remove(NodeId(6)).unwrap();
        assert!(m.is_empty());
        assert_eq!(m.node(1), None);
    }

    #[test]
    fn removal_is_balanced_and_optimal() {
        let mut a = Anchor::new(200, 100).unwrap();
        let keys = 300_000u64;
        let before = buckets(&a, keys);
        a.remove(42).unwrap();
        a.check_invariants();
        let after = buckets(&a, keys);
        let mut gained = vec![0u64; 200];
        for (x, y) in before.iter().zip(&after) {
            if x != y {
                assert_eq!(*x, 42, "only the removed bucket's keys move");
                gained[*y as usize] += 1;
            }
        }
        let moved: u64 = gained.iter().sum();
        let share = keys as f64 / 100.0;
        assert!((moved as f64 / share - 1.0).abs() < 0.1, "moved {moved}, one share is {share}");
        // Spread evenly: each of 99 buckets gets about 1/99 of them.
        let most = *gained.iter().max().unwrap() as f64;
        assert!(most < moved as f64 / 99.0 * 1.6, "most {most}");
        let mut counts = vec![0u64; 200];
        for &b in &after {
            counts[b as usize] += 1;
        }
        let mean = keys as f64 / 99.0;
        let max = counts.iter().max().copied().unwrap() as f64 / mean;
        assert!(max < 1.1, "max/mean {max}");
    }

    #[derive(Clone, Debug)]
    enum Op {
        Remove(u32),
        Add,
    }

    proptest! {
        #[test]
        fn any_sequence_moves_only_what_it_must(cap in 2u32..64, ops in proptest::collection::vec(
            prop_oneof![(0u32..64).prop_map(Op::Remove), Just(Op::Add)], 1..40)) {
            let mut a = Anchor::new(cap, cap).unwrap();
            let keys = 2_000u64;
            let mut history = vec![buckets(&a, keys)];
            for op in ops {
                let before = history.last().unwrap().clone();
                match op {
                    Op::Remove(b) => {
                        let b = b % cap;
                        if !a.is_working(b) || a.working() == 1 {
                            continue;
                        }
                        a.remove(b).unwrap();
                        a.check_invariants();
                        let after = buckets(&a, keys);
                        for (x, y) in before.iter().zip(&after) {
                            prop_assert!(a.is_working(*y));
                            prop_assert!(x == y || *x == b, "key moved from {} to {} when {} was removed", x, y, b);
                        }
                        history.push(after);
                    }
                    Op::Add => {
                        let Ok(b) = a.add() else { continue };
                        a.check_invariants();
                        let after = buckets(&a, keys);
                        for (x, y) in before.iter().zip(&after) {
                            prop_assert!(x == y || *y == b, "key moved from {} to {} when {} was added", x, y, b);
                        }
                        history.push(after);
                    }
                }
            }
        }

        #[test]
        fn add_undoes_remove_exactly(cap in 2u32..64, victims in proptest::collection::vec(0u32..64, 1..10)) {
            let mut a = Anchor::new(cap, cap).unwrap();
            let start = buckets(&a, 500);
            let mut removed = 0;
            for v in victims {
                if a.is_working(v % cap) && a.working() > 1 {
                    a.remove(v % cap).unwrap();
                    removed += 1;
                }
            }
            for _ in 0..removed {
                a.add().unwrap();
            }
            a.check_invariants();
            prop_assert_eq!(buckets(&a, 500), start);
        }
    }
}
