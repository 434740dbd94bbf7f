//! The versioned store of one shard replica: key states ordered by key hash, with the hash
//! tree kept in step on every change.
//!
//! Ordering by key hash (then id) makes every leaf of the tree a contiguous range, so listing
//! or scanning a leaf for anti-entropy is a range read, and a bounded scan can resume from
//! any entry.

use alloc::collections::BTreeMap;
use core::ops::Bound;

use super::merkle::{contribution, MerkleTree};
use super::state::{mix64, state_digest, EntryId, KeyState};

/// Where a key sits in the store and the tree.
pub fn key_hash(id: EntryId) -> u64 {
    mix64(id.0 ^ 0x243f_6a88_85a3_08d3)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    hash: u64,
    id: EntryId,
}

impl Key {
    fn of(id: EntryId) -> Key {
        Key { hash: key_hash(id), id }
    }
}

#[derive(Clone, Debug)]
struct Slot {
    state: KeyState,
    digest: u64,
}

/// Key states of one shard replica and their hash tree.
#[derive(Clone, Debug)]
pub struct Store {
    map: BTreeMap<Key, Slot>,
    tree: MerkleTree,
    tombstones: usize,
}

impl Store {
    /// An empty store whose tree has `16^depth` leaves.
    pub fn new(depth: u8) -> Store {
        Store { map: BTreeMap::new(), tree: MerkleTree::new(depth), tombstones: 0 }
    }

    /// Keys stored, tombstones included.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True if nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Keys whose state is a tombstone.
    pub fn tombstones(&self) -> usize {
        self.tombstones
    }

    /// The state of `id`.
    pub fn get(&self, id: EntryId) -> Option<&KeyState> {
        self.map.get(&Key::of(id)).map(|s| &s.state)
    }

    /// The digest of `id`'s state.
    pub fn digest(&self, id: EntryId) -> Option<u64> {
        self.map.get(&Key::of(id)).map(|s| s.digest)
    }

    /// Stores `state` for `id`, replacing what was there; returns the new digest.
    pub fn put(&mut self, id: EntryId, state: KeyState) -> u64 {
        let digest = state_digest(&state);
        self.put_digested(id, state, digest)
    }

    /// [`Store::put`] with the state's digest already known (it must be
    /// [`state_digest`] of `state`; the invariant check verifies it).
    pub fn put_digested(&mut self, id: EntryId, state: KeyState, digest: u64) -> u64 {
        let key = Key::of(id);
        let tomb = state.is_tombstone();
        if let Some(old) = self.map.get_mut(&key) {
            self.tree.remove(key.hash, contribution(key.hash, old.digest));
            self.tombstones -= usize::from(old.state.is_tombstone());
            *old = Slot { state, digest };
        } else {
            self.map.insert(key, Slot { state, digest });
        }
        self.tombstones += usize::from(tomb);
        self.tree.add(key.hash, contribution(key.hash, digest));
        digest
    }

    /// Removes `id`; returns its state.
    pub fn remove(&mut self, id: EntryId) -> Option<KeyState> {
        let key = Key::of(id);
        let slot = self.map.remove(&key)?;
        self.tree.remove(key.hash, contribution(key.hash, slot.digest));
        self.tombstones -= usize::from(slot.state.is_tombstone());
        Some(slot.state)
    }

    /// The hash tree.
    pub fn tree(&self) -> &MerkleTree {
        &self.tree
    }

    /// The root hash: equal on two replicas exactly when they hold the same states.
    pub fn root(&self) -> u64 {
        self.tree.root()
    }

    /// Entries in key-hash order strictly after `after` (from the start if `None`), with
    /// their digests.
    pub fn scan(&self, after: Option<EntryId>) -> impl Iterator<Item = (EntryId, &KeyState, u64)> + '_ {
        let lower = after.map_or(Bound::Unbounded, |a| Bound::Excluded(Key::of(a)));
        self.map.range((lower, Bound::Unbounded)).map(|(k, s)| (k.id, &s.state, s.digest))
    }

    /// Entries of leaves `first..end` (half-open) of the tree, in key-hash order, strictly
    /// after `after` if given.
    pub fn scan_leaves(
        &self,
        first: u32,
        end: u32,
        after: Option<EntryId>,
    ) -> impl Iterator<Item = (EntryId, &KeyState, u64)> + '_ {
        let leaves = self.tree.leaf_count();
        let empty = end <= first || first >= leaves;
        let lo_hash = if empty { 0 } else { self.tree.leaf_bounds(first).0 };
        let hi = if end >= leaves { None } else { Some(Key { hash: self.tree.leaf_bounds(end).0, id: EntryId(0) }) };
        let lo = match after {
            Some(a) if key_hash(a) >= lo_hash => Bound::Excluded(Key::of(a)),
            _ => Bound::Included(Key { hash: lo_hash, id: EntryId(0) }),
        };
        // BTreeMap::range panics on an inverted range: an `after` at or past the end is empty.
        let inverted = match (&lo, &hi) {
            (Bound::Excluded(l) | Bound::Included(l), Some(h)) => l >= h,
            _ => false,
        };
        let range = if empty || inverted {
            None
        } else {
            Some(self.map.range((lo, hi.map_or(Bound::Unbounded, Bound::Excluded))))
        };
        range.into_iter().flatten().map(|(k, s)| (k.id, &s.state, s.digest))
    }

    /// Checks the tree against the stored digests (slow: for tests and invariant checks).
    pub fn check(&self) {
        let mut fresh = MerkleTree::new(self.tree.depth());
        let mut tombs = 0;
        for (k, s) in &self.map {
            assert_eq!(k.hash, key_hash(k.id), "key filed under the wrong hash");
            assert_eq!(s.digest, state_digest(&s.state), "stale digest for {:?}", k.id);
            fresh.add(k.hash, contribution(k.hash, s.digest));
            tombs += usize::from(s.state.is_tombstone());
        }
        assert_eq!(fresh, self.tree, "hash tree out of step with the store");
        assert_eq!(tombs, self.tombstones, "tombstone count out of step");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::state::{ConflictMode, Context, Entry, Op, Stamp};
    use crate::replication::version::{Actor, Dot};
    use alloc::vec;
    use alloc::vec::Vec;

    fn state(x: f32, delete: bool) -> KeyState {
        let mode = ConflictMode::LastWriteWins;
        let mut s = KeyState::empty(mode);
        let op = if delete { Op::Delete } else { Op::Put(Entry { vector: vec![x], metadata: Default::default() }) };
        let dot = Dot { actor: Actor { node: crate::NodeId(1), life: 1 }, counter: 1 };
        s.apply_write(mode, &op, &Context::default(), Stamp { ts: Default::default(), dot }).unwrap();
        s
    }

    #[test]
    fn tree_and_counts_follow_puts_and_removes() {
        let mut st = Store::new(2);
        for i in 0..100 {
            st.put(EntryId(i), state(i as f32, i % 10 == 0));
        }
        st.check();
        assert_eq!((st.len(), st.tombstones()), (100, 10));
        let root = st.root();
        st.put(EntryId(5), state(0.5, false));
        assert_ne!(st.root(), root);
        st.put(EntryId(5), state(5.0, false));
        assert_eq!(st.root(), root, "same contents, same root");
        st.remove(EntryId(0));
        st.put(EntryId(10), state(10.0, false));
        st.check();
        assert_eq!(st.tombstones(), 8);
    }

    #[test]
    fn scans_resume_and_leaves_are_ranges() {
        let mut st = Store::new(1);
        for i in 0..60 {
            st.put(EntryId(i), state(i as f32, false));
        }
        let all: Vec<EntryId> = st.scan(None).map(|(id, _, _)| id).collect();
        assert_eq!(all.len(), 60);
        let resumed: Vec<EntryId> = st.scan(Some(all[20])).map(|(id, _, _)| id).collect();
        assert_eq!(resumed, all[21..].to_vec());
        let mut by_leaves = Vec::new();
        for leaf in 0..16 {
            let ids: Vec<EntryId> = st.scan_leaves(leaf, leaf + 1, None).map(|(id, _, _)| id).collect();
            for id in &ids {
                assert_eq!(st.tree().leaf_of(key_hash(*id)), leaf);
            }
            by_leaves.extend(ids);
        }
        assert_eq!(by_leaves, all, "leaves in order make the whole scan");
        let tail: Vec<EntryId> = st.scan_leaves(0, 16, Some(all[58])).map(|(id, _, _)| id).collect();
        assert_eq!(tail, vec![all[59]]);
        assert_eq!(st.scan_leaves(3, 3, None).count(), 0);
        let last = *all.last().unwrap();
        assert_eq!(st.scan_leaves(0, 1, Some(last)).count(), 0, "a cursor past the range is empty, not a panic");
        assert_eq!(st.scan_leaves(16, 20, None).count(), 0);
    }
}
