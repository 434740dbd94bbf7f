//! Quorate's consistent hashing side by side with the crates `jump-consistent-hash`,
//! `hashring` (what Qdrant uses), `anchorhash` and `maglev`, at n = 10, 100 and 1,000.
//!
//! Timed (criterion, both sides in the same group): nanoseconds per lookup of a random 64-bit
//! id, each side hashing the id with its own key hash, over 4,096 ids cycled so the tables are
//! warm the way a busy router's are:
//! - `hash/key_to_shard/{n}`: Quorate `shard_of_id` (XXH64 + constant-time jump) vs
//!   `jump_consistent_hash::hash` over std's SipHash of the id (the classic jump loop);
//! - `hash/ring/{n}`: Quorate's Ketama `Ring` (160 vnodes per node, indexed) vs `hashring`
//!   with 160 virtual nodes per node (binary search);
//! - `hash/anchor/{n}`: Quorate `AnchorMap` vs `anchorhash`, both with capacity 2n;
//! - `hash/maglev/{n}`: Quorate's `Ring` vs `maglev` (a 65,537-entry table).
//!
//! Not timed, printed first (deterministic, from 1M ids): balance (the fullest node over the
//! mean) and the fraction of keys that move when one node is added and when an arbitrary one
//! (the 3rd of n) is removed, next to the optimum 1/(n+1) and 1/n. Jump can only drop its last
//! bucket, so an arbitrary removal renumbers: the last bucket takes the removed one's place.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use criterion::{black_box, BenchmarkId, Criterion};
use quorate_core::hash::{jump, jump_classic, key_hash_u64, shard_of_id, AnchorMap, Ring, RingConfig};
use quorate_core::NodeId;

const SIZES: [usize; 3] = [10, 100, 1000];
const VNODES: usize = 160;
const KEYS_TIMED: usize = 4096;
const KEYS_METRICS: u64 = 1_000_000;
const MAGLEV_TABLE: usize = 65_537;

/// Random-looking ids (SplitMix64 from a fixed seed), the same for every side.
fn ids(count: usize) -> Vec<u64> {
    let mut s = 0x1234_5678_9abc_def0u64;
    (0..count)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            quorate_core::hash::mix64(s)
        })
        .collect()
}

fn sip(id: u64) -> u64 {
    let mut h = DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct VNode {
    node: u64,
    index: usize,
}

fn hashring_of(nodes: &[u64]) -> hashring::HashRing<VNode> {
    let mut ring = hashring::HashRing::new();
    for &node in nodes {
        for index in 0..VNODES {
            ring.add(VNode { node, index });
        }
    }
    ring
}

fn ring_of(nodes: &[u64]) -> Ring {
    let list: Vec<(NodeId, u32)> = nodes.iter().map(|&n| (NodeId(n), 100)).collect();
    Ring::new(RingConfig { vnodes: VNODES as u32, ..RingConfig::default() }, &list).expect("valid ring")
}

fn anchor_of(nodes: &[u64], capacity: usize) -> AnchorMap {
    let mut a = AnchorMap::new(capacity as u32).expect("valid capacity");
    for &n in nodes {
        a.add(NodeId(n)).expect("room");
    }
    a
}

fn peer_anchor_of(
    nodes: &[u64],
    capacity: usize,
) -> anchorhash::AnchorHash<u64, u64, std::collections::hash_map::RandomState> {
    anchorhash::Builder::default().with_resources(nodes.to_vec()).build(capacity as u16)
}

fn maglev_of(nodes: &[u64]) -> maglev::Maglev<u64> {
    maglev::Maglev::with_capacity(nodes.to_vec(), MAGLEV_TABLE)
}

/// Balance and movement of one scheme, computed from owner functions over `KEYS_METRICS` ids.
struct Metrics {
    balance: f64,
    moved_add: f64,
    moved_remove: f64,
}

fn metrics(n: usize, base: &dyn Fn(u64) -> u64, added: &dyn Fn(u64) -> u64, removed: &dyn Fn(u64) -> u64) -> Metrics {
    let mut counts = std::collections::BTreeMap::<u64, u64>::new();
    let (mut moved_add, mut moved_remove) = (0u64, 0u64);
    let mut s = 0xfeed_f00du64;
    for _ in 0..KEYS_METRICS {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let id = quorate_core::hash::mix64(s);
        let owner = base(id);
        *counts.entry(owner).or_default() += 1;
        moved_add += u64::from(added(id) != owner);
        moved_remove += u64::from(removed(id) != owner);
    }
    let max = counts.values().copied().max().unwrap_or(0) as f64;
    let mean = KEYS_METRICS as f64 / n as f64;
    Metrics {
        balance: max / mean,
        moved_add: moved_add as f64 / KEYS_METRICS as f64,
        moved_remove: moved_remove as f64 / KEYS_METRICS as f64,
    }
}

fn print_metrics() {
    println!("balance and movement over {KEYS_METRICS} ids (optimum: moved on add 1/(n+1), on removal 1/n)");
    println!("| n | scheme | max/mean | moved on add (opt) | moved on removal (opt) |");
    println!("| --- | --- | --- | --- | --- |");
    for n in SIZES {
        let nodes: Vec<u64> = (1..=n as u64).collect();
        let more: Vec<u64> = (1..=n as u64 + 1).collect();
        let victim = 3u64;
        let fewer: Vec<u64> = nodes.iter().copied().filter(|&x| x != victim).collect();
        // Jump over buckets; an arbitrary removal renumbers: the last bucket takes the victim's.
        let renumber = |b: u32| if u64::from(b) + 1 == victim { n as u64 - 1 } else { u64::from(b) };
        let nn = n as u32;
        let rows: Vec<(&str, Metrics)> = vec![
            (
                "Quorate jump",
                metrics(
                    n,
                    &|id| u64::from(jump(key_hash_u64(id), nn)),
                    &|id| u64::from(jump(key_hash_u64(id), nn + 1)),
                    &|id| renumber(jump(key_hash_u64(id), nn - 1)),
                ),
            ),
            (
                "jump-consistent-hash",
                metrics(
                    n,
                    &|id| u64::from(jump_consistent_hash::hash(sip(id), n)),
                    &|id| u64::from(jump_consistent_hash::hash(sip(id), n + 1)),
                    &|id| renumber(jump_consistent_hash::hash(sip(id), n - 1)),
                ),
            ),
            {
                let (a, b, c) = (ring_of(&nodes), ring_of(&more), ring_of(&fewer));
                let f = |r: &Ring, id: u64| r.node(key_hash_u64(id)).map_or(0, |x| x.0);
                ("Quorate ring (160 vnodes)", metrics(n, &|id| f(&a, id), &|id| f(&b, id), &|id| f(&c, id)))
            },
            {
                let (a, b, c) = (hashring_of(&nodes), hashring_of(&more), hashring_of(&fewer));
                let f = |r: &hashring::HashRing<VNode>, id: u64| r.get(&id).map_or(0, |v| v.node);
                ("hashring (160 vnodes)", metrics(n, &|id| f(&a, id), &|id| f(&b, id), &|id| f(&c, id)))
            },
            {
                let a = anchor_of(&nodes, 2 * n);
                let mut b = a.clone();
                b.add(NodeId(n as u64 + 1)).expect("room");
                let mut c = a.clone();
                c.remove(NodeId(victim)).expect("present");
                let f = |r: &AnchorMap, id: u64| r.node(key_hash_u64(id)).map_or(0, |x| x.0);
                ("Quorate anchor (capacity 2n)", metrics(n, &|id| f(&a, id), &|id| f(&b, id), &|id| f(&c, id)))
            },
            {
                // One hasher for all three, so the comparison sees the same key hashes.
                let a = peer_anchor_of(&nodes, 2 * n);
                let mut b = a.clone();
                b.add_resource(n as u64 + 1).expect("room");
                let mut c = a.clone();
                c.remove_resource(&victim).expect("present");
                let f = |r: &anchorhash::AnchorHash<u64, u64, _>, id: u64| r.get_resource(id).copied().unwrap_or(0);
                ("anchorhash (capacity 2n)", metrics(n, &|id| f(&a, id), &|id| f(&b, id), &|id| f(&c, id)))
            },
            {
                use maglev::ConsistentHasher;
                let (a, b, c) = (maglev_of(&nodes), maglev_of(&more), maglev_of(&fewer));
                let f = |r: &maglev::Maglev<u64>, id: u64| r.get(&id).copied().unwrap_or(0);
                ("maglev (65,537 entries)", metrics(n, &|id| f(&a, id), &|id| f(&b, id), &|id| f(&c, id)))
            },
        ];
        for (name, m) in rows {
            println!(
                "| {n} | {name} | {:.3} | {:.4} ({:.4}) | {:.4} ({:.4}) |",
                m.balance,
                m.moved_add,
                1.0 / (n as f64 + 1.0),
                m.moved_remove,
                1.0 / n as f64
            );
        }
    }
    println!();
}

/// Both jump implementations of the paper's loop agree, so the peer measures the same thing.
fn sanity() {
    for id in ids(10_000) {
        for n in [1usize, 7, 60, 1000] {
            assert_eq!(jump_classic(id, n as u32), jump_consistent_hash::hash(id, n), "classic jump disagrees");
        }
    }
}

fn bench(c: &mut Criterion) {
    let keys = ids(KEYS_TIMED);
    for n in SIZES {
        let nodes: Vec<u64> = (1..=n as u64).collect();
        let mut g = c.benchmark_group(format!("hash/key_to_shard/{n}"));
        let mut i = 0usize;
        g.bench_function(BenchmarkId::new("quorate", n), |b| {
            b.iter(|| {
                i = (i + 1) % KEYS_TIMED;
                black_box(shard_of_id(black_box(keys[i]), n as u32))
            })
        });
        g.bench_function(BenchmarkId::new("jump-consistent-hash", n), |b| {
            b.iter(|| {
                i = (i + 1) % KEYS_TIMED;
                black_box(jump_consistent_hash::hash(sip(black_box(keys[i])), n))
            })
        });
        g.finish();

        let ring = ring_of(&nodes);
        let peer = hashring_of(&nodes);
        let mut g = c.benchmark_group(format!("hash/ring/{n}"));
        g.bench_function(BenchmarkId::new("quorate", n), |b| {
            b.iter(|| {
                i = (i + 1) % KEYS_TIMED;
                black_box(ring.node(key_hash_u64(black_box(keys[i]))))
            })
        });
        g.bench_function(BenchmarkId::new("hashring", n), |b| {
            b.iter(|| {
                i = (i + 1) % KEYS_TIMED;
                black_box(peer.get(&black_box(keys[i])).map(|v| v.node))
            })
        });
        g.finish();

        let anchor = anchor_of(&nodes, 2 * n);
        let peer = peer_anchor_of(&nodes, 2 * n);
        let mut g = c.benchmark_group(format!("hash/anchor/{n}"));
        g.bench_function(BenchmarkId::new("quorate", n), |b| {
            b.iter(|| {
                i = (i + 1) % KEYS_TIMED;
                black_box(anchor.node(key_hash_u64(black_box(keys[i]))))
            })
        });
        g.bench_function(BenchmarkId::new("anchorhash", n), |b| {
            b.iter(|| {
                i = (i + 1) % KEYS_TIMED;
                black_box(peer.get_resource(black_box(keys[i])).copied())
            })
        });
        g.finish();

        let peer = maglev_of(&nodes);
        let mut g = c.benchmark_group(format!("hash/maglev/{n}"));
        g.bench_function(BenchmarkId::new("quorate", n), |b| {
            b.iter(|| {
                i = (i + 1) % KEYS_TIMED;
                black_box(ring.node(key_hash_u64(black_box(keys[i]))))
            })
        });
        g.bench_function(BenchmarkId::new("maglev", n), |b| {
            use maglev::ConsistentHasher;
            b.iter(|| {
                i = (i + 1) % KEYS_TIMED;
                black_box(peer.get(&black_box(keys[i])).copied())
            })
        });
        g.finish();
        drop(peer);
    }
}

fn main() {
    sanity();
    print_metrics();
    let mut c = Criterion::default().warm_up_time(Duration::from_secs(1)).configure_from_args();
    bench(&mut c);
    c.final_summary();
}
