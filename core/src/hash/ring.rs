//! A Ketama ring: nodes own arcs of the 64-bit hash circle through weighted virtual nodes.
//!
//! Each node puts `vnodes × weight / 100` points on the circle (weight 100 is one nominal
//! node); a key belongs to the first point at or after its hash, wrapping around. Adding a
//! node only takes arcs from others, and removing one only gives its arcs away, so about
//! `1/n` of the keys move either way. Balance is what virtual nodes buy: with 160 per node the
//! fullest node holds about 1.2× the mean. Placement of shards does not use the ring (it
//! computes an exact balanced map, see `placement`); the ring serves routing where
//! membership changes freely and nothing may be stored per key, and the operators' `ring info`.
//!
//! Lookups are constant time: a table indexed by the top bits of the hash gives the first
//! point of each slot, so a lookup reads one slot and scans about one point, instead of a
//! binary search over every point.

use alloc::vec::Vec;
use thiserror::Error;

use super::key::key_hash;
use crate::NodeId;

/// The weight of one nominal node.
pub const WEIGHT_UNIT: u32 = 100;

/// How a ring is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingConfig {
    /// Points per node of weight [`WEIGHT_UNIT`]; a node of weight `w` gets `vnodes × w / 100`
    /// (at least one). Ketama's classic choice is 160.
    pub vnodes: u32,
    /// The most points the ring may hold (memory bound: 16 bytes each, plus the index).
    pub points_max: usize,
}

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig { vnodes: 160, points_max: 1 << 22 }
    }
}

/// Why a ring could not be built. Nothing is built on error.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum RingError {
    /// `vnodes` must be between 1 and 65,536.
    #[error("vnodes must be between 1 and 65536, got {0}")]
    VnodesOutOfRange(u32),
    /// A node was listed twice.
    #[error("node {0} is listed twice")]
    DuplicateNode(NodeId),
    /// A node had weight zero (leave it out instead).
    #[error("node {0} has weight 0")]
    ZeroWeight(NodeId),
    /// The ring would hold more than `points_max` points.
    #[error("the ring would hold {points} points, over points_max ({max})")]
    TooManyPoints {
        /// Points asked for.
        points: u64,
        /// The limit.
        max: usize,
    },
}

/// A point on the circle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Point {
    hash: u64,
    /// Index into `Ring::nodes`.
    owner: u32,
}

/// What `ring info` shows about a ring.
#[derive(Clone, Debug, PartialEq)]
pub struct RingInfo {
    /// Nodes on the ring.
    pub nodes: usize,
    /// Virtual nodes (points) on the circle.
    pub vnodes: usize,
    /// Slots of the lookup index (a power of two, at least the number of points).
    pub total_slots: usize,
    /// The largest node's share of the circle over its fair share by weight (1.0 is perfect).
    pub max_over_mean: f64,
    /// The smallest node's share over its fair share.
    pub min_over_mean: f64,
}

/// A Ketama ring over weighted nodes: each node of weight `w` puts `vnodes × w / 100` points on the 64-bit circle, and a key belongs to the first point at or after its hash.
#[derive(Clone, Debug)]
pub struct Ring {
    nodes: Vec<(NodeId, u32)>,
    points: Vec<Point>,
    /// `index[s]` is the position of the first point whose top bits are at least `s`.
    index: Vec<u32>,
    shift: u32,
}

/// Where virtual node `i` of `node` sits: the key hash of the 16 bytes `node ‖ i`
/// (both little-endian `u64`). Fixed forever, like the key hash.
pub fn point_hash(node: NodeId, i: u64) -> u64 {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&node.0.to_le_bytes());
    bytes[8..].copy_from_slice(&i.to_le_bytes());
    key_hash(&bytes)
}

impl Ring {
    /// Builds a ring over `(node, weight)` pairs (any order; the ring does not depend on it).
    pub fn new(cfg: RingConfig, nodes: &[(NodeId, u32)]) -> Result<Ring, RingError> {
        if !(1..=65_536).contains(&cfg.vnodes) {
            return Err(RingError::VnodesOutOfRange(cfg.vnodes));
        }
        let mut sorted: Vec<(NodeId, u32)> = nodes.to_vec();
        sorted.sort_unstable();
        let mut total: u64 = 0;
        for (i, &(id, w)) in sorted.iter().enumerate() {
            if w == 0 {
                return Err(RingError::ZeroWeight(id));
            }
            if i > 0 && sorted[i - 1].0 == id {
                return Err(RingError::DuplicateNode(id));
            }
            total += points_for(cfg.vnodes, w);
        }
        if total > cfg.points_max as u64 {
            return Err(RingError::TooManyPoints { points: total, max: cfg.points_max });
        }
        let mut points = Vec::with_capacity(total as usize);
        for (owner, &(id, w)) in sorted.iter().enumerate() {
            for i in 0..points_for(cfg.vnodes, w) {
                points.push(Point { hash: point_hash(id, i), owner: owner as u32 });
            }
        }
        // Equal hashes (astronomically rare) are ordered by node, so the ring stays a function
        // of its node set.
        points.sort_unstable();
        let bits = (usize::BITS - points.len().max(2).saturating_sub(1).leading_zeros()).max(1);
        let slots = 1usize << bits;
        let shift = 64 - bits;
        let mut index = Vec::with_capacity(slots + 1);
        let mut p = 0usize;
        for s in 0..=slots as u64 {
            while p < points.len() && (points[p].hash >> shift) < s {
                p += 1;
            }
            index.push(p as u32);
        }
        Ok(Ring { nodes: sorted, points, index, shift })
    }

    /// The nodes and their weights, in id order.
    pub fn nodes(&self) -> &[(NodeId, u32)] {
        &self.nodes
    }

    /// The node that owns `key_hash`, or `None` on an empty ring.
    #[inline]
    pub fn node(&self, key_hash: u64) -> Option<NodeId> {
        let i = self.position(key_hash)?;
        Some(self.nodes[self.points[i].owner as usize].0)
    }

    /// The first `count` distinct nodes clockwise from `key_hash` (Ketama's replica order),
    /// appended to `out`; fewer if the ring has fewer nodes.
    pub fn nodes_for(&self, key_hash: u64, count: usize, out: &mut Vec<NodeId>) {
        let Some(start) = self.position(key_hash) else { return };
        let want = count.min(self.nodes.len());
        let first = out.len();
        let mut i = start;
        while out.len() - first < want {
            let id = self.nodes[self.points[i].owner as usize].0;
            if !out[first..].contains(&id) {
                out.push(id);
            }
            i = if i + 1 == self.points.len() { 0 } else { i + 1 };
        }
    }

    #[inline]
    fn position(&self, key_hash: u64) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let slot = (key_hash >> self.shift) as usize;
        let mut i = self.index[slot] as usize;
        let end = self.index[slot + 1] as usize;
        while i < end && self.points[i].hash < key_hash {
            i += 1;
        }
        Some(if i == self.points.len() { 0 } else { i })
    }

    /// Ring statistics: points, index slots, and how evenly the circle is shared by weight.
    pub fn info(&self) -> RingInfo {
        let mut arcs = alloc::vec![0u128; self.nodes.len()];
        if let Some(last) = self.points.last() {
            let mut prev = last.hash;
            for p in &self.points {
                // The arc (prev, p] belongs to p's owner; the first point's arc wraps around.
                arcs[p.owner as usize] += u128::from(p.hash.wrapping_sub(prev));
                prev = p.hash;
            }
            if self.points.len() == 1 {
                arcs[0] = 1u128 << 64;
            }
        }
        let total_weight: u64 = self.nodes.iter().map(|&(_, w)| u64::from(w)).sum();
        let (mut max, mut min) = (0f64, f64::INFINITY);
        for (i, &(_, w)) in self.nodes.iter().enumerate() {
            let share = arcs[i] as f64 / 18_446_744_073_709_551_616.0;
            let fair = f64::from(w) / total_weight as f64;
            max = max.max(share / fair);
            min = min.min(share / fair);
        }
        if self.nodes.is_empty() {
            min = 0.0;
        }
        RingInfo {
            nodes: self.nodes.len(),
            vnodes: self.points.len(),
            total_slots: self.index.len() - 1,
            max_over_mean: max,
            min_over_mean: min,
        }
    }
}

fn points_for(vnodes: u32, weight: u32) -> u64 {
    (u64::from(vnodes) * u64::from(weight) / u64::from(WEIGHT_UNIT)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::key::key_hash_u64;
    use alloc::vec;
    use proptest::prelude::*;

    fn ring(n: u64) -> Ring {
        let nodes: Vec<(NodeId, u32)> = (1..=n).map(|i| (NodeId(i), WEIGHT_UNIT)).collect();
        Ring::new(RingConfig::default(), &nodes).unwrap()
    }

    /// The first point at or after `h`, found the slow way.
    fn linear(r: &Ring, h: u64) -> NodeId {
        let p = r.points.iter().find(|p| p.hash >= h).unwrap_or(&r.points[0]);
        r.nodes[p.owner as usize].0
    }

    #[test]
    fn ring_golden_vectors() {
        let r = ring(5);
        let got: Vec<u64> = (0..8u64).map(|k| r.node(key_hash_u64(k)).unwrap().0).collect();
        assert_eq!(got, vec![2, 4, 2, 4, 4, 5, 2, 3]);
        // Checked with `xxhsum -H64` over the same 16 bytes.
        assert_eq!(point_hash(NodeId(1), 0), 0x6c1c_ff04_59c8_bb10);
        let mut replicas = Vec::new();
        r.nodes_for(key_hash_u64(0), 3, &mut replicas);
        assert_eq!(replicas, vec![NodeId(2), NodeId(1), NodeId(4)]);
    }

    #[test]
    fn bad_configs_get_typed_errors() {
        let cfg = RingConfig::default();
        assert_eq!(Ring::new(RingConfig { vnodes: 0, ..cfg }, &[]).unwrap_err(), RingError::VnodesOutOfRange(0));
        let dup = [(NodeId(1), 100), (NodeId(1), 100)];
        assert_eq!(Ring::new(cfg, &dup).unwrap_err(), RingError::DuplicateNode(NodeId(1)));
        assert_eq!(Ring::new(cfg, &[(NodeId(2), 0)]).unwrap_err(), RingError::ZeroWeight(NodeId(2)));
        let small = RingConfig { points_max: 100, ..cfg };
        assert!(matches!(Ring::new(small, &[(NodeId(1), 100)]), Err(RingError::TooManyPoints { points: 160, .. })));
    }

    #[test]
    fn empty_and_single_node_rings() {
        let empty = Ring::new(RingConfig::default(), &[]).unwrap();
        assert_eq!(empty.node(5), None);
        let info = empty.info();
        assert_eq!((info.nodes, info.vnodes), (0, 0));
        let one = Ring::new(RingConfig { vnodes: 1, ..RingConfig::default() }, &[(NodeId(9), 100)]).unwrap();
        assert_eq!(one.node(0), Some(NodeId(9)));
        assert_eq!(one.node(u64::MAX), Some(NodeId(9)));
        assert!((one.info().max_over_mean - 1.0).abs() < 1e-9);
    }

    #[test]
    fn info_reports_points_slots_and_spread() {
        let r = ring(100);
        let info = r.info();
        assert_eq!(info.nodes, 100);
        assert_eq!(info.vnodes, 16_000);
        assert_eq!(info.total_slots, 16_384);
        // 160 vnodes: the spread is about ±8% (one sigma); the fullest node about 1.2-1.3×.
        assert!(info.max_over_mean > 1.05 && info.max_over_mean < 1.45, "{info:?}");
        assert!(info.min_over_mean < 0.95 && info.min_over_mean > 0.55, "{info:?}");
        // The circle's shares match what keys see.
        let mut counts = vec![0u64; 100];
        for k in 0..400_000u64 {
            counts[(r.node(key_hash_u64(k)).unwrap().0 - 1) as usize] += 1;
        }
        let max = *counts.iter().max().unwrap() as f64 / 4000.0;
        assert!((max - info.max_over_mean).abs() < 0.08, "keys {max:.3} vs arcs {:.3}", info.max_over_mean);
    }

    #[test]
    fn weight_scales_the_share() {
        let r = Ring::new(RingConfig::default(), &[(NodeId(1), 100), (NodeId(2), 300)]).unwrap();
        let heavy = (0..100_000u64).filter(|&k| r.node(key_hash_u64(k)) == Some(NodeId(2))).count();
        assert!((70_000..80_000).contains(&heavy), "{heavy}");
        assert_eq!(r.info().vnodes, 160 + 480);
    }

    #[test]
    fn adding_and_removing_a_node_moves_only_its_keys() {
        let before = ring(50);
        let after = ring(51);
        let keys = 100_000u64;
        let mut moved = 0;
        for k in 0..keys {
            let (a, b) = (before.node(key_hash_u64(k)).unwrap(), after.node(key_hash_u64(k)).unwrap());
            if a != b {
                assert_eq!(b, NodeId(51), "a key moved between old nodes");
                moved += 1;
            }
        }
        // About 1/51 of the keys, give or take the new node's arc spread.
        assert!((1_000..3_200).contains(&moved), "{moved}");
    }

    proptest! {
        #[test]
        fn indexed_lookup_equals_linear_search(n in 1u64..40, vnodes in 1u32..50, keys in proptest::collection::vec(any::<u64>(), 1..64)) {
            let nodes: Vec<(NodeId, u32)> = (1..=n).map(|i| (NodeId(i * 7), 100 + (i as u32 % 3) * 50)).collect();
            let r = Ring::new(RingConfig { vnodes, ..RingConfig::default() }, &nodes).unwrap();
            for h in keys.into_iter().chain([0, u64::MAX, r.points[0].hash, r.points[r.points.len() - 1].hash]) {
                prop_assert_eq!(r.node(h), Some(linear(&r, h)));
            }
        }

        #[test]
        fn ring_does_not_depend_on_input_order(mut ids in proptest::collection::btree_set(1u64..1000, 1..20), h in any::<u64>()) {
            let mut nodes: Vec<(NodeId, u32)> = ids.iter().map(|&i| (NodeId(i), 100)).collect();
            let a = Ring::new(RingConfig::default(), &nodes).unwrap();
            nodes.reverse();
            let b = Ring::new(RingConfig::default(), &nodes).unwrap();
            prop_assert_eq!(a.node(h), b.node(h));
            let mut ra = Vec::new();
            let mut rb = Vec::new();
            a.nodes_for(h, 3, &mut ra);
            b.nodes_for(h, 3, &mut rb);
            prop_assert_eq!(&ra, &rb);
            prop_assert_eq!(ra.len(), 3.min(ids.len()));
            ids.clear();
        }
    }
}
