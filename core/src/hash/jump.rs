//! Jump consistent hashing: a key hash to one of `n` buckets, with nothing stored.
//!
//! Both functions keep the contract of Lamping and Veach's jump hash ("A Fast, Minimal Memory,
//! Consistent Hash Algorithm", 2014): every bucket gets `1/n` of the keys, and going from `n`
//! to `n + 1` buckets moves only the keys that now land in the new bucket `n`, about
//! `1/(n + 1)` of them. Buckets can only be added or removed at the end, which is what a
//! collection's shard count needs (shards are split, never removed from the middle).
//!
//! [`jump_classic`] is the paper's loop: `O(ln n)` steps, each with a division. [`jump`] is
//! ours, in expected constant time, and is what Quorate routes keys with. The idea: the paper's
//! key "jumps to" bucket `i` with probability `1/(i + 1)`, independently per bucket, and lands
//! on the last jump below `n`. Group buckets by powers of two, `[2^l, 2^(l+1))`: a group holds
//! at least one jump with probability exactly `1/2`, and the last jump inside a group is
//! uniform over the group. So bit `l` of the key hash says whether group `l` has a jump, a
//! per-group hash says where its last one is, and only the group that holds `n - 1` (cut off
//! at `n`) needs more work: from its last jump `m`, the previous jump inside the group is
//! uniform on `[2^l, m)` with probability `1 - 2^l/m` and otherwise there is none, so we jump
//! back, below one step on average, until we are under `n`. Same distribution as the paper,
//! different bucket numbers: the two are not interchangeable on stored data.

use super::key::{fast_range, mix64, GOLDEN_GAMMA};

/// The paper's jump consistent hash, exactly: the bucket in `0..buckets` of a 64-bit key hash
/// (0 when `buckets` is 0). `O(ln buckets)`; kept for interoperability and comparison.
pub fn jump_classic(key_hash: u64, buckets: u32) -> u32 {
    let n = i64::from(buckets.max(1));
    let (mut b, mut j, mut k) = (-1i64, 0i64, key_hash);
    while j < n {
        b = j;
        k = k.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((k >> 33) + 1) as f64)) as i64;
    }
    b as u32
}

/// The bucket in `0..buckets` of a 64-bit key hash, in expected constant time (0 when
/// `buckets` is 0 or 1). Consistent: `jump(h, n + 1)` is either `jump(h, n)` or `n`.
#[inline]
pub fn jump(key_hash: u64, buckets: u32) -> u32 {
    if buckets <= 1 {
        return 0;
    }
    let n = u64::from(buckets);
    // The group that holds bucket n - 1 is the only one that is cut off.
    let top = 63 - (n - 1).leading_zeros();
    let top_low = 1u64 << top;
    if key_hash & top_low != 0 {
        let mut state = group_hash(key_hash, top);
        let mut last = top_low | (state & (top_low - 1));
        loop {
            if last < n {
                return last as u32;
            }
            // The jump before `last` inside the group, or none if it falls below the group.
            state = state.wrapping_add(GOLDEN_GAMMA);
            let previous = fast_range(mix64(state), last);
            if previous < top_low {
                break;
            }
            last = previous;
        }
    }
    // Every lower group lies wholly below n: the highest one with a jump holds the answer.
    let lower = key_hash & (top_low - 1);
    if lower == 0 {
        return 0;
    }
    let group = 63 - lower.leading_zeros();
    let low = 1u64 << group;
    (low | (group_hash(key_hash, group) & (low - 1))) as u32
}

/// The hash that places the last jump of `group`, the same whichever `n` asks.
#[inline(always)]
fn group_hash(key_hash: u64, group: u32) -> u64 {
    mix64(key_hash ^ u64::from(group + 1).wrapping_mul(GOLDEN_GAMMA))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::key::key_hash_u64;
    use alloc::vec;
    use proptest::prelude::*;

    #[test]
    fn classic_matches_the_paper_reference() {
        // Values of the paper's C++ reference for keys 0, 1, 2 over 60 buckets.
        assert_eq!(jump_classic(0, 60), 0);
        assert_eq!(jump_classic(1, 60), 55);
        assert_eq!(jump_classic(2, 60), 46);
        assert_eq!(jump_classic(7, 0), 0);
    }

    #[test]
    fn jump_golden_vectors() {
        // Pinned: a change here re-routes every key of every deployment.
        let got: alloc::vec::Vec<u32> =
            [(0u64, 10u32), (1, 10), (2, 100), (3, 1000), (4, 1024), (5, 1025), (6, u32::MAX)]
                .iter()
                .map(|&(k, n)| jump(key_hash_u64(k), n))
                .collect();
        assert_eq!(got, vec![8, 7, 45, 112, 886, 511, 305_967_683]);
        assert_eq!(jump(12345, 0), 0);
        assert_eq!(jump(12345, 1), 0);
    }

    /// Max over mean and min over mean of bucket counts for `keys` consecutive ids.
    fn spread(f: impl Fn(u64, u32) -> u32, n: u32, keys: u64) -> (f64, f64) {
        let mut counts = vec![0u64; n as usize];
        for k in 0..keys {
            counts[f(key_hash_u64(k), n) as usize] += 1;
        }
        let mean = keys as f64 / f64::from(n);
        let max = *counts.iter().max().unwrap_or(&0) as f64;
        let min = *counts.iter().min().unwrap_or(&0) as f64;
        (max / mean, min / mean)
    }

    #[test]
    fn jump_is_balanced() {
        // 1M keys: the binomial spread is about 1% at n = 10 and 3% at n = 1000 (one sigma).
        for (n, tol) in [(2u32, 0.01), (10, 0.02), (100, 0.05), (1000, 0.16), (1024, 0.16), (1025, 0.16)] {
            let (max, min) = spread(jump, n, 1_000_000);
            assert!(max < 1.0 + tol && min > 1.0 - tol, "n={n}: max/mean {max:.4}, min/mean {min:.4}");
        }
    }

    #[test]
    fn adding_a_bucket_moves_one_share_of_the_keys() {
        for n in [9u32, 99, 127, 128, 999] {
            let keys = 200_000u64;
            let moved = (0..keys).filter(|&k| jump(key_hash_u64(k), n) != jump(key_hash_u64(k), n + 1)).count();
            let optimum = keys as f64 / f64::from(n + 1);
            let ratio = moved as f64 / optimum;
            assert!((0.85..1.15).contains(&ratio), "n={n}: moved {moved}, optimum {optimum:.0}");
        }
    }

    proptest! {
        #[test]
        fn jump_is_in_range_and_monotone(h in any::<u64>(), n in 1u32..5000) {
            let a = jump(h, n);
            let b = jump(h, n + 1);
            prop_assert!(a < n);
            prop_assert!(b == a || b == n, "n={} -> {}: {} -> {}", n, n + 1, a, b);
        }

        #[test]
        fn jump_is_monotone_across_powers_of_two(h in any::<u64>(), shift in 1u32..31) {
            let n = 1u32 << shift;
            let a = jump(h, n);
            let b = jump(h, n + 1);
            prop_assert!(b == a || b == n);
            let c = jump(h, n - 1);
            prop_assert!(a == c || a == n - 1);
        }

        #[test]
        fn classic_is_in_range_and_monotone(h in any::<u64>(), n in 1u32..5000) {
            let a = jump_classic(h, n);
            let b = jump_classic(h, n + 1);
            prop_assert!(a < n);
            prop_assert!(b == a || b == n);
        }
    }
}
