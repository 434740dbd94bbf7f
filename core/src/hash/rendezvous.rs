//! Weighted rendezvous (highest random weight) hashing: every node scores every key, the best
//! scores win.
//!
//! A key's replicas are the `r` nodes with the highest `weight / -ln(u)`, where `u` in `(0, 1)`
//! is a hash of the key and the node (the "logarithmic method" of Schindelhauer and Schomaker,
//! 2005): a node of weight `w` wins a key with probability `w / Σw`, and its share of second and
//! third places follows. Removing a node moves only the keys it held, adding one moves only the
//! keys it now wins, and no state is kept beyond the node list. Lookups cost `O(n)`, which is why
//! shards, not keys, are placed this way: the placement planner uses these scores as each
//! shard's stable order of preference among equally good nodes.
//!
//! `ln` comes from `libm` (pure software), so scores are bit-identical on every platform.

use alloc::vec::Vec;

use super::key::{mix64, GOLDEN_GAMMA};
use crate::NodeId;

/// The rendezvous score of `node` (weight `weight`) for a key; higher wins.
#[inline]
pub fn rendezvous_score(key_hash: u64, node: NodeId, weight: u32) -> f64 {
    score_salted(key_hash, node_salt(node), weight)
}

/// The per-node half of the score's hash, computed once per node.
#[inline]
pub fn node_salt(node: NodeId) -> u64 {
    mix64(node.0.wrapping_mul(GOLDEN_GAMMA) ^ 0x5851_F42D_4C95_7F2D)
}

#[inline]
fn score_salted(key_hash: u64, salt: u64, weight: u32) -> f64 {
    let bits = mix64(key_hash ^ salt) >> 11;
    // (bits + 0.5) / 2^53 is uniform in (0, 1), never 0 or 1, so the logarithm is finite and < 0.
    let u = (bits as f64 + 0.5) * (1.0 / 9_007_199_254_740_992.0);
    f64::from(weight) / -libm::log(u)
}

/// Appends to `out` the `count` best nodes for `key_hash` among `(node, weight)` candidates,
/// best first (fewer if there are fewer candidates with non-zero weight). Equal scores, which
/// need a 53-bit coincidence, go to the lower id.
pub fn rendezvous_top(key_hash: u64, candidates: &[(NodeId, u32)], count: usize, out: &mut Vec<NodeId>) {
    let mut best: Vec<(f64, NodeId)> = Vec::with_capacity(count + 1);
    for &(node, weight) in candidates {
        if weight == 0 || count == 0 {
            continue;
        }
        let s = rendezvous_score(key_hash, node, weight);
        let better = |&(bs, bn): &(f64, NodeId)| bs > s || (bs == s && bn < node);
        let at = best.iter().take_while(|e| better(e)).count();
        if at < count {
            best.insert(at, (s, node));
            best.truncate(count);
        }
    }
    out.extend(best.into_iter().map(|(_, n)| n));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::key::key_hash_u64;
    use alloc::vec;
    use proptest::prelude::*;

    fn top1(h: u64, nodes: &[(NodeId, u32)]) -> NodeId {
        let mut out = Vec::new();
        rendezvous_top(h, nodes, 1, &mut out);
        out[0]
    }

    #[test]
    fn rendezvous_golden_vectors() {
        let nodes: Vec<(NodeId, u32)> = (1..=5).map(|i| (NodeId(i), 100)).collect();
        let mut out = Vec::new();
        rendezvous_top(key_hash_u64(7), &nodes, 3, &mut out);
        assert_eq!(out, vec![NodeId(1), NodeId(3), NodeId(5)]);
        assert_eq!(rendezvous_score(key_hash_u64(7), NodeId(1), 100).to_bits(), 4_654_938_444_729_690_521);
    }

    #[test]
    fn weights_set_the_shares() {
        let nodes = [(NodeId(1), 100), (NodeId(2), 300), (NodeId(3), 0)];
        let keys = 100_000u64;
        let heavy = (0..keys).filter(|&k| top1(key_hash_u64(k), &nodes) == NodeId(2)).count();
        assert!((73_500..76_500).contains(&heavy), "{heavy}");
        let mut out = Vec::new();
        rendezvous_top(1, &nodes, 5, &mut out);
        assert_eq!(out.len(), 2, "weight 0 never wins");
        rendezvous_top(1, &nodes, 0, &mut out);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn removing_a_node_moves_only_its_keys() {
        let all: Vec<(NodeId, u32)> = (1..=20).map(|i| (NodeId(i), 100 + (i as u32 % 4) * 25)).collect();
        let without: Vec<(NodeId, u32)> = all.iter().copied().filter(|&(n, _)| n != NodeId(7)).collect();
        for k in 0..20_000u64 {
            let (a, b) = (top1(key_hash_u64(k), &all), top1(key_hash_u64(k), &without));
            assert!(a == b || a == NodeId(7));
        }
    }

    proptest! {
        #[test]
        fn top_is_distinct_ordered_and_stable(h in any::<u64>(), n in 1u64..30, count in 1usize..6) {
            let nodes: Vec<(NodeId, u32)> = (1..=n).map(|i| (NodeId(i * 3), 50 + (i as u32 * 37) % 200)).collect();
            let mut out = Vec::new();
            rendezvous_top(h, &nodes, count, &mut out);
            prop_assert_eq!(out.len(), count.min(n as usize));
            let scores: Vec<f64> = out.iter().map(|&id| {
                let w = nodes.iter().find(|&&(x, _)| x == id).unwrap().1;
                rendezvous_score(h, id, w)
            }).collect();
            prop_assert!(scores.windows(2).all(|w| w[0] >= w[1]));
            let mut fewer = Vec::new();
            rendezvous_top(h, &nodes, 1, &mut fewer);
            prop_assert_eq!(fewer[0], out[0]);
            let mut reversed = nodes.clone();
            reversed.reverse();
            let mut again = Vec::new();
            rendezvous_top(h, &reversed, count, &mut again);
            prop_assert_eq!(again, out);
        }
    }
}
