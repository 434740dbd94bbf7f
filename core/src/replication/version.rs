//! Causality and time for replicated entries: actors, dots, version vectors and the hybrid
//! logical clock.
//!
//! A write is named by a [`Dot`]: the [`Actor`] that coordinated it and that actor's counter,
//! which rises by one with every write the actor coordinates (on any key). A key's
//! [`VersionVector`] says which dots of each actor the key's state has seen; with full key
//! states shipped between replicas (never deltas), "seen `(a, c)`" also covers every earlier
//! dot of `a` on that key, so a vector is exact. Dots of `a` on other keys that a vector
//! happens to cover never appear on this key, so covering them is harmless.
//!
//! [`Hlc`] orders writes for last-write-wins: the wall part comes from the host's `now`
//! (never from a clock read here), the logical part breaks ties and keeps causally later
//! writes later even when clocks disagree.

use alloc::vec::Vec;
use core::cmp::Ordering;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::time::Instant;
use crate::NodeId;

/// One life of a replica: its node and a number chosen when its storage started empty.
///
/// A replica whose disk is wiped comes back as a new actor, so it never reuses a dot that
/// other replicas may still hold. Ordered by node first: last-write-wins breaks timestamp ties
/// by node id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Actor {
    /// The node.
    pub node: NodeId,
    /// The life of the node's storage (nonzero).
    pub life: u32,
}

/// One write: the actor that coordinated it and its counter at that actor (from 1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    /// Who coordinated the write.
    pub actor: Actor,
    /// The actor's counter for it.
    pub counter: u64,
}

/// How two version vectors relate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Causality {
    /// Both have seen exactly the same.
    Equal,
    /// The first has seen strictly less than the second.
    Before,
    /// The first has seen strictly more than the second.
    After,
    /// Each has seen something the other has not.
    Concurrent,
}

/// A version vector: for each actor, the highest counter seen. Kept as a vector sorted by
/// actor with no zero entries, so equal vectors are equal values and encode identically.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VersionVector(Vec<(Actor, u64)>);

/// Why a version vector from the wire was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum VectorError {
    /// Actors out of order, repeated, or with a zero counter.
    #[error("version vector not in canonical form (sorted, unique actors, nonzero counters)")]
    NotCanonical,
}

impl VersionVector {
    /// The empty vector: has seen nothing.
    pub const fn new() -> Self {
        VersionVector(Vec::new())
    }

    /// A vector from `(actor, counter)` pairs in any order; the highest counter per actor wins.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (Actor, u64)>) -> Self {
        let mut v = VersionVector::new();
        for (actor, counter) in pairs {
            v.insert(Dot { actor, counter });
        }
        v
    }

    /// The highest counter of `actor` seen (0 if none).
    pub fn get(&self, actor: Actor) -> u64 {
        match self.0.binary_search_by(|(a, _)| a.cmp(&actor)) {
            Ok(i) => self.0[i].1,
            Err(_) => 0,
        }
    }

    /// True if `dot` has been seen.
    pub fn contains(&self, dot: Dot) -> bool {
        dot.counter <= self.get(dot.actor)
    }

    /// Records `dot` (and so every earlier dot of its actor) as seen.
    pub fn insert(&mut self, dot: Dot) {
        if dot.counter == 0 {
            return;
        }
        match self.0.binary_search_by(|(a, _)| a.cmp(&dot.actor)) {
            Ok(i) => self.0[i].1 = self.0[i].1.max(dot.counter),
            Err(i) => self.0.insert(i, (dot.actor, dot.counter)),
        }
    }

    /// Raises this vector to the pointwise maximum with `other` (the join).
    pub fn merge(&mut self, other: &VersionVector) {
        if other.0.is_empty() {
            return;
        }
        if self.0.is_empty() {
            self.0.clone_from(&other.0);
            return;
        }
        // Fast path: the same actors in the same order (the common case among replicas).
        if self.0.len() == other.0.len() && self.0.iter().zip(&other.0).all(|(a, b)| a.0 == b.0) {
            for (mine, theirs) in self.0.iter_mut().zip(&other.0) {
                mine.1 = mine.1.max(theirs.1);
            }
            return;
        }
        let mut out = Vec::with_capacity(self.0.len() + other.0.len());
        let (mut i, mut j) = (0, 0);
        while i < self.0.len() && j < other.0.len() {
            let (a, b) = (self.0[i], other.0[j]);
            match a.0.cmp(&b.0) {
                Ordering::Less => {
                    out.push(a);
                    i += 1;
                }
                Ordering::Greater => {
                    out.push(b);
                    j += 1;
                }
                Ordering::Equal => {
                    out.push((a.0, a.1.max(b.1)));
                    i += 1;
                    j += 1;
                }
            }
        }
        out.extend_from_slice(&self.0[i..]);
        out.extend_from_slice(&other.0[j..]);
        self.0 = out;
    }

    /// The join of `self` and `other`, as a new vector.
    pub fn joined(&self, other: &VersionVector) -> VersionVector {
        let mut v = self.clone();
        v.merge(other);
        v
    }

    /// How `self` relates to `other`, in one pass over both.
    pub fn compare(&self, other: &VersionVector) -> Causality {
        let (mut less, mut greater) = (false, false);
        let (mut i, mut j) = (0, 0);
        while i < self.0.len() && j < other.0.len() {
            let (a, b) = (self.0[i], other.0[j]);
            match a.0.cmp(&b.0) {
                Ordering::Less => {
                    greater = true;
                    i += 1;
                }
                Ordering::Greater => {
                    less = true;
                    j += 1;
                }
                Ordering::Equal => {
                    match a.1.cmp(&b.1) {
                        Ordering::Less => less = true,
                        Ordering::Greater => greater = true,
                        Ordering::Equal => {}
                    }
                    i += 1;
                    j += 1;
                }
            }
            if less && greater {
                return Causality::Concurrent;
            }
        }
        greater |= i < self.0.len();
        less |= j < other.0.len();
        match (less, greater) {
            (false, false) => Causality::Equal,
            (true, false) => Causality::Before,
            (false, true) => Causality::After,
            (true, true) => Causality::Concurrent,
        }
    }

    /// True if `self` has seen everything `other` has.
    pub fn descends(&self, other: &VersionVector) -> bool {
        matches!(self.compare(other), Causality::Equal | Causality::After)
    }

    /// The `(actor, counter)` pairs, sorted by actor.
    pub fn iter(&self) -> impl Iterator<Item = (Actor, u64)> + '_ {
        self.0.iter().copied()
    }

    /// Number of actors with a nonzero counter.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True if nothing has been seen.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Checks the canonical form a vector from the wire must have.
    pub fn validate(&self) -> Result<(), VectorError> {
        let sorted = self.0.windows(2).all(|w| w[0].0 < w[1].0);
        if !sorted || self.0.iter().any(|(_, c)| *c == 0) {
            return Err(VectorError::NotCanonical);
        }
        Ok(())
    }
}

/// A hybrid logical clock reading: wall milliseconds from the host's `now`, then a logical
/// counter for events within one millisecond or after a clock that ran ahead.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Hlc {
    /// Milliseconds of the host's clock (the largest seen).
    pub wall_ms: u64,
    /// Events since `wall_ms` last rose.
    pub logical: u32,
}

/// Why a remote timestamp was not taken into the clock. The clock did not change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum HlcError {
    /// The remote clock is further ahead of ours than the configured bound.
    #[error("remote timestamp {ahead_ms} ms ahead of the local clock (bound {max_ms} ms)")]
    TooFarAhead {
        /// How far ahead.
        ahead_ms: u64,
        /// The bound.
        max_ms: u64,
    },
}

/// The hybrid logical clock of one replica. Time is an input: every call takes the host's
/// `now`, whose milliseconds are the physical part.
#[derive(Clone, Debug)]
pub struct HlcClock {
    last: Hlc,
    ahead_max_ms: u64,
}

impl HlcClock {
    /// A clock that refuses to follow remote clocks more than `ahead_max_ms` ahead of `now`.
    pub fn new(ahead_max_ms: u64) -> Self {
        HlcClock { last: Hlc::default(), ahead_max_ms }
    }

    /// The last reading handed out or observed.
    pub fn last(&self) -> Hlc {
        self.last
    }

    /// A fresh reading for a local event: later than every reading before it.
    pub fn tick(&mut self, now: Instant) -> Hlc {
        let wall = now.as_nanos() / 1_000_000;
        self.last = if wall > self.last.wall_ms { Hlc { wall_ms: wall, logical: 0 } } else { next_logical(self.last) };
        self.last
    }

    /// Takes a remote reading into account, so the next [`HlcClock::tick`] is later than it.
    /// Refuses (and changes nothing) if `remote` runs too far ahead of `now`.
    pub fn observe(&mut self, now: Instant, remote: Hlc) -> Result<(), HlcError> {
        let wall = now.as_nanos() / 1_000_000;
        let ahead_ms = remote.wall_ms.saturating_sub(wall);
        if ahead_ms > self.ahead_max_ms {
            return Err(HlcError::TooFarAhead { ahead_ms, max_ms: self.ahead_max_ms });
        }
        if remote > self.last {
            self.last = remote;
        }
        Ok(())
    }
}

/// The next logical reading after `h`; at the logical counter's end, the wall part moves on
/// by a millisecond instead of wrapping.
fn next_logical(h: Hlc) -> Hlc {
    match h.logical.checked_add(1) {
        Some(logical) => Hlc { wall_ms: h.wall_ms, logical },
        None => Hlc { wall_ms: h.wall_ms.saturating_add(1), logical: 0 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn actor(n: u64) -> Actor {
        Actor { node: NodeId(n), life: 1 }
    }

    fn vv(pairs: &[(u64, u64)]) -> VersionVector {
        VersionVector::from_pairs(pairs.iter().map(|&(a, c)| (actor(a), c)))
    }

    #[test]
    fn compare_names_every_relation() {
        assert_eq!(vv(&[]).compare(&vv(&[])), Causality::Equal);
        assert_eq!(vv(&[(1, 1)]).compare(&vv(&[(1, 2)])), Causality::Before);
        assert_eq!(vv(&[(1, 2), (2, 1)]).compare(&vv(&[(1, 2)])), Causality::After);
        assert_eq!(vv(&[(1, 2)]).compare(&vv(&[(2, 1)])), Causality::Concurrent);
        assert_eq!(vv(&[(1, 3), (2, 1)]).compare(&vv(&[(1, 2), (2, 2)])), Causality::Concurrent);
        assert_eq!(vv(&[(2, 1)]).compare(&vv(&[(1, 1), (2, 1)])), Causality::Before);
    }

    #[test]
    fn zero_dots_and_non_canonical_vectors() {
        let mut v = vv(&[]);
        v.insert(Dot { actor: actor(1), counter: 0 });
        assert!(v.is_empty());
        assert!(vv(&[(2, 1), (1, 4)]).validate().is_ok());
        let bad = VersionVector(alloc::vec![(actor(2), 1), (actor(1), 4)]);
        assert_eq!(bad.validate(), Err(VectorError::NotCanonical));
        let zero = VersionVector(alloc::vec![(actor(1), 0)]);
        assert_eq!(zero.validate(), Err(VectorError::NotCanonical));
    }

    #[test]
    fn hlc_is_monotonic_follows_remote_and_refuses_far_future() {
        let mut c = HlcClock::new(1_000);
        let ms = |m: u64| Instant::from_nanos(m * 1_000_000);
        let a = c.tick(ms(10));
        let b = c.tick(ms(10));
        assert!(b > a && b.wall_ms == 10 && b.logical == 1);
        let back = c.tick(ms(5));
        assert!(back > b, "a clock that stepped back still moves forward");
        c.observe(ms(10), Hlc { wall_ms: 500, logical: 7 }).unwrap();
        let after = c.tick(ms(11));
        assert_eq!(after, Hlc { wall_ms: 500, logical: 8 });
        let err = c.observe(ms(11), Hlc { wall_ms: 5_000, logical: 0 }).unwrap_err();
        assert_eq!(err, HlcError::TooFarAhead { ahead_ms: 4_989, max_ms: 1_000 });
        assert_eq!(c.last(), after, "a refused reading changes nothing");
        let end = next_logical(Hlc { wall_ms: 3, logical: u32::MAX });
        assert_eq!(end, Hlc { wall_ms: 4, logical: 0 });
    }

    fn arb_vv() -> impl Strategy<Value = VersionVector> {
        proptest::collection::vec((1u64..6, 0u64..8), 0..6)
            .prop_map(|pairs| VersionVector::from_pairs(pairs.into_iter().map(|(a, c)| (actor(a), c))))
    }

    proptest! {
        #[test]
        fn merge_is_a_join(a in arb_vv(), b in arb_vv(), c in arb_vv()) {
            prop_assert_eq!(a.joined(&b), b.joined(&a));
            prop_assert_eq!(a.joined(&b).joined(&c), a.joined(&b.joined(&c)));
            prop_assert_eq!(a.joined(&a), a.clone());
            let j = a.joined(&b);
            prop_assert!(j.descends(&a) && j.descends(&b));
            prop_assert!(j.validate().is_ok());
        }

        #[test]
        fn compare_agrees_with_pointwise_order(a in arb_vv(), b in arb_vv()) {
            let le = a.iter().all(|(x, c)| c <= b.get(x));
            let ge = b.iter().all(|(x, c)| c <= a.get(x));
            let expected = match (le, ge) {
                (true, true) => Causality::Equal,
                (true, false) => Causality::Before,
                (false, true) => Causality::After,
                (false, false) => Causality::Concurrent,
            };
            prop_assert_eq!(a.compare(&b), expected);
            let flipped = match expected {
                Causality::Before => Causality::After,
                Causality::After => Causality::Before,
                other => other,
            };
            prop_assert_eq!(b.compare(&a), flipped);
        }

        #[test]
        fn hlc_ticks_strictly_increase(steps in proptest::collection::vec((0u64..50, any::<bool>(), 0u64..80), 1..60)) {
            let mut c = HlcClock::new(40);
            let mut prev = Hlc::default();
            for (now_ms, remote, remote_ms) in steps {
                let now = Instant::from_nanos(now_ms * 1_000_000);
                if remote {
                    let _ = c.observe(now, Hlc { wall_ms: remote_ms, logical: 3 });
                }
                let t = c.tick(now);
                prop_assert!(t > prev);
                prop_assert!(t.wall_ms >= now_ms);
                prev = t;
            }
        }
    }
}
