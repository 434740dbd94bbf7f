//! The stable key hash and the mixers every other scheme derives its randomness from.
//!
//! Routing must give the same answer on every node, every platform and every release, or a
//! key written through one node is looked for on the wrong shard through another. So the key
//! hash is a published, fixed function: **XXH64 with seed 0** over the key's bytes (Yann
//! Collet's xxHash, 64-bit variant, as specified in the xxHash repository's `doc/xxhash_spec.md`).
//! Numeric ids hash as their 8 little-endian bytes. Golden vectors below pin the values; they
//! were checked against the reference `xxhsum -H64`. Never change these functions: a new
//! function needs a new name and a data migration.

/// XXH64's five primes.
const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;
const P5: u64 = 0x27D4_EB2F_1656_67C5;

/// The golden ratio in 64 bits, the increment of [`mix64`]-based streams.
pub const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The stable hash of a key's bytes: XXH64 with seed 0.
#[inline]
pub fn key_hash(bytes: &[u8]) -> u64 {
    xxh64(bytes)
}

/// The stable hash of a numeric key: exactly `key_hash(&id.to_le_bytes())`, without the loop.
#[inline]
pub fn key_hash_u64(id: u64) -> u64 {
    let mut h = P5.wrapping_add(8);
    h ^= round(0, id);
    h = h.rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
    avalanche(h)
}

/// XXH64 of `bytes` with seed 0, as the xxHash specification defines it.
fn xxh64(bytes: &[u8]) -> u64 {
    let seed = 0u64;
    let len = bytes.len() as u64;
    let mut rest = bytes;
    let mut h = if rest.len() >= 32 {
        let mut v = [seed.wrapping_add(P1).wrapping_add(P2), seed.wrapping_add(P2), seed, seed.wrapping_sub(P1)];
        while rest.len() >= 32 {
            let (stripe, tail) = rest.split_at(32);
            for (lane, acc) in v.iter_mut().enumerate() {
                *acc = round(*acc, read64(&stripe[lane * 8..]));
            }
            rest = tail;
        }
        let mut h = v[0]
            .rotate_left(1)
            .wrapping_add(v[1].rotate_left(7))
            .wrapping_add(v[2].rotate_left(12))
            .wrapping_add(v[3].rotate_left(18));
        for acc in v {
            h = (h ^ round(0, acc)).wrapping_mul(P1).wrapping_add(P4);
        }
        h
    } else {
        seed.wrapping_add(P5)
    };
    h = h.wrapping_add(len);
    while rest.len() >= 8 {
        h ^= round(0, read64(rest));
        h = h.rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
        rest = &rest[8..];
    }
    if rest.len() >= 4 {
        h ^= u64::from(read32(rest)).wrapping_mul(P1);
        h = h.rotate_left(23).wrapping_mul(P2).wrapping_add(P3);
        rest = &rest[4..];
    }
    for &b in rest {
        h ^= u64::from(b).wrapping_mul(P5);
        h = h.rotate_left(11).wrapping_mul(P1);
    }
    avalanche(h)
}

#[inline(always)]
fn round(acc: u64, input: u64) -> u64 {
    acc.wrapping_add(input.wrapping_mul(P2)).rotate_left(31).wrapping_mul(P1)
}

#[inline(always)]
fn avalanche(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(P2);
    h ^= h >> 29;
    h = h.wrapping_mul(P3);
    h ^ (h >> 32)
}

#[inline(always)]
fn read64(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[..8]);
    u64::from_le_bytes(w)
}

#[inline(always)]
fn read32(b: &[u8]) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[..4]);
    u32::from_le_bytes(w)
}

/// SplitMix64's finalizer (Steele, Lea and Flood, 2014): a fixed bijection on `u64` whose
/// every output bit depends on every input bit. Schemes derive independent-looking values
/// from one key hash with it (`mix64(h ^ salt)`).
#[inline(always)]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Maps a uniform 64-bit `x` onto `0..n` without division (Lemire's multiply-shift).
///
/// The bias is below `n / 2^64`, far under anything a test or a cluster can observe.
#[inline(always)]
pub fn fast_range(x: u64, n: u64) -> u64 {
    ((u128::from(x) * u128::from(n)) >> 64) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    /// `0, 1, 2, ...` as bytes: the inputs of the golden vectors.
    fn counting(len: usize) -> Vec<u8> {
        (0..len).map(|i| i as u8).collect()
    }

    #[test]
    fn xxh64_golden_vectors_match_the_reference() {
        // Values printed by the reference `xxhsum -H64` (xxHash 0.8) for the same bytes.
        assert_eq!(key_hash(b""), 0xef46_db37_51d8_e999);
        assert_eq!(key_hash(b"a"), 0xd24e_c4f1_a98c_6e5b);
        assert_eq!(key_hash(b"abc"), 0x44bc_2cf5_ad77_0999);
        assert_eq!(key_hash(b"message digest"), 0x066e_d728_fcee_b3be);
        assert_eq!(key_hash(b"abcdefghijklmnopqrstuvwxyz"), 0xcfe1_f278_fa89_835c);
        assert_eq!(
            key_hash(b"12345678901234567890123456789012345678901234567890123456789012345678901234567890"),
            0xe04a_477f_19ee_145d
        );
        let expected: [(usize, u64); 9] = [
            (3, 0xe5c7_bb45_33bc_65dd),
            (4, 0xffce_d860_4453_cc1e),
            (7, 0x14cc_643f_630c_72d2),
            (8, 0x884a_1736_14b8_1b8d),
            (15, 0xa948_f5f0_f6ab_ac2d),
            (16, 0x44b6_ef2f_b841_69f7),
            (31, 0xc346_d2b5_9b4d_8ee1),
            (32, 0xcbf5_9c51_16ff_32b4),
            (100, 0x6ac1_e580_3216_6597),
        ];
        for (len, want) in expected {
            assert_eq!(key_hash(&counting(len)), want, "counting bytes of length {len}");
        }
    }

    #[test]
    fn numeric_keys_hash_as_their_little_endian_bytes() {
        for id in [0u64, 1, 42, u64::MAX, 0x0102_0304_0506_0708] {
            assert_eq!(key_hash_u64(id), key_hash(&id.to_le_bytes()), "id {id}");
        }
        assert_eq!(key_hash_u64(0), 0x34c9_6acd_cadb_1bbb);
    }

    #[test]
    fn mix64_and_fast_range_golden_values() {
        assert_eq!(mix64(0), 0);
        assert_eq!(mix64(1), 0x5692_161d_100b_05e5);
        assert_eq!(fast_range(u64::MAX, 10), 9);
        assert_eq!(fast_range(0, 10), 0);
        assert_eq!(fast_range(1 << 63, 10), 5);
    }

    proptest! {
        #[test]
        fn numeric_fast_path_equals_the_byte_path(id in any::<u64>()) {
            prop_assert_eq!(key_hash_u64(id), key_hash(&id.to_le_bytes()));
        }

        #[test]
        fn fast_range_stays_in_range(x in any::<u64>(), n in 1u64..) {
            prop_assert!(fast_range(x, n) < n);
        }
    }
}
