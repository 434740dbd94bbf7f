//! Replication benchmarks: apply throughput of 128-dimension vector writes on a replica,
//! version-vector compare and merge against the `crdts` crate's `VClock` on the same inputs,
//! and the cost of anti-entropy over a million entries against sending everything.
//!
//! - `replication/apply_128d/{lww,multi_value,crdt_map}`: a replica takes the `Write` messages
//!   a coordinator sent (one 128-dimension entry with one metadata field each), merges,
//!   "persists" (the lent state is read, as a host would) and acknowledges. Half the messages
//!   create a key, half replace it with a newer version. No peer: the row has none.
//! - `replication/vv_{compare,merge}/{quorate,crdts}/<actors>`: 256 pairs of vectors with
//!   4, 16 or 64 actors, a third equal or dominated, two thirds concurrent; the same pairs in
//!   both representations (actor = node and life, as in Quorate). Merges are timed on
//!   pre-cloned inputs for both sides, so neither pays for the other's API shape.
//! - `replication/anti_entropy_1m/k=<k>`: two replicas hold the same million 128-dimension
//!   entries (hash tree depth 4); one takes `k` writes the other misses; a session started by
//!   the changed side runs to completion over in-memory queues (no throttle, no loss). Before
//!   timing, the harness prints bytes and round trips for both directions of initiation next to
//!   the bytes of sending everything.

use std::collections::VecDeque;
use std::time::{Duration, Instant as WallInstant};

use crdts::{CvRDT, VClock};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use quorate_core::replication::state::Scalar;
use quorate_core::replication::{
    message, Action, Actor, Config, ConflictMode, Consistency, Durable, Entry, EntryId, KeyState, Message, Metadata,
    Op, Recovered, Replica, VersionVector,
};
use quorate_core::{Instant, Machine, NodeId};

const DIM: usize = 128;

fn entry(i: u64) -> Entry {
    let vector = (0..DIM as u64).map(|j| ((i * 31 + j) % 97) as f32 / 97.0).collect();
    let mut metadata = Metadata::new();
    metadata.insert("tag".into(), Scalar::Int(i as i64));
    Entry { vector, metadata }
}

fn ids(n: u64) -> Vec<NodeId> {
    (1..=n).map(NodeId).collect()
}

fn config(id: u64, mode: ConflictMode) -> Config {
    let mut c = Config::new(NodeId(id), ids(3), mode);
    c.vector_len_max = DIM;
    c.sync_bytes_per_sec = 1 << 40;
    c.sync_burst_bytes = 1 << 30;
    c.sync_interval = Duration::from_secs(1 << 30);
    c.hint_retry_interval = Duration::from_secs(1 << 30);
    c.gc_interval = Duration::from_secs(1 << 30);
    c.merkle_depth = 4;
    // The coordinators here never see acknowledgements; let their writes wait.
    c.pending_max = 1 << 16;
    c
}

/// Drains a replica, reading every lent state as a host writing it to disk would.
fn drain(r: &mut Replica, out: &mut Vec<(NodeId, Message)>) {
    while let Some(a) = r.poll_action() {
        match a {
            Action::Send { to, message } => out.push((to, message)),
            Action::Persist(Durable::Entry { id }) => {
                std::hint::black_box(r.state(id));
            }
            other => {
                std::hint::black_box(other);
            }
        }
    }
}

// ----- apply -----

fn apply_messages(mode: ConflictMode, keys: u64) -> Vec<Message> {
    let now = Instant::from_nanos(1_000_000_000);
    let mut a = Replica::new(config(1, mode), Recovered::default(), 1, now).expect("valid");
    let mut msgs = Vec::new();
    let mut sent = Vec::new();
    for round in 0..2 {
        for k in 0..keys {
            let op = Op::Put(entry(k + round * keys));
            a.write(now, EntryId(k), op, None, Consistency::One).expect("write accepted");
            drain(&mut a, &mut sent);
            msgs.extend(sent.drain(..).filter(|(to, _)| *to == NodeId(2)).map(|(_, m)| m));
        }
    }
    msgs
}

fn bench_apply(c: &mut Criterion) {
    let mut g = c.benchmark_group("replication/apply_128d");
    let keys = 4096;
    for (name, mode) in [
        ("lww", ConflictMode::LastWriteWins),
        ("multi_value", ConflictMode::MultiValue),
        ("crdt_map", ConflictMode::CrdtMap),
    ] {
        let msgs = apply_messages(mode, keys);
        assert_eq!(msgs.len() as u64, 2 * keys);
        g.throughput(Throughput::Elements(msgs.len() as u64));
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let r = Replica::new(config(2, mode), Recovered::default(), 2, Instant::ZERO).expect("valid");
                    (r, msgs.clone(), Vec::with_capacity(msgs.len()))
                },
                |(mut r, msgs, mut out)| {
                    let now = Instant::from_nanos(1_000_000_000);
                    for m in msgs {
                        r.handle_message(now, NodeId(1), m).expect("well-formed");
                        drain(&mut r, &mut out);
                    }
                    // Every message was taken in and acknowledged: the bench cannot measure nothing.
                    assert_eq!(r.len() as u64, keys);
                    assert_eq!(out.len() as u64, 2 * keys);
                    (r, out)
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

// ----- version vectors -----

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

type Pairs = Vec<(Vec<(Actor, u64)>, Vec<(Actor, u64)>)>;
type Clock = VClock<(u64, u32)>;

fn vv_pairs(actors: u64, count: usize) -> Pairs {
    let mut rng = Rng(actors);
    let actor = |i: u64| Actor { node: NodeId(i + 1), life: 7 };
    (0..count)
        .map(|p| {
            let a: Vec<(Actor, u64)> = (0..actors).map(|i| (actor(i), 1 + rng.next() % 1000)).collect();
            let b = match p % 3 {
                // Equal or dominated: raise some counters of a copy.
                0 => a.iter().map(|&(x, c)| (x, if rng.next() & 3 == 0 { c + 1 } else { c })).collect(),
                // Concurrent: some up, some down.
                _ => a
                    .iter()
                    .map(|&(x, c)| {
                        (x, if rng.next() & 1 == 0 { c + 1 + rng.next() % 5 } else { c.saturating_sub(1).max(1) })
                    })
                    .collect(),
            };
            (a, b)
        })
        .collect()
}

fn ours(v: &[(Actor, u64)]) -> VersionVector {
    VersionVector::from_pairs(v.iter().copied())
}

fn theirs(v: &[(Actor, u64)]) -> Clock {
    v.iter().map(|(a, c)| crdts::Dot::new((a.node.0, a.life), *c)).collect()
}

fn bench_vv(c: &mut Criterion) {
    for actors in [4u64, 16, 64] {
        let pairs = vv_pairs(actors, 256);
        let q: Vec<(VersionVector, VersionVector)> = pairs.iter().map(|(a, b)| (ours(a), ours(b))).collect();
        let t: Vec<(Clock, Clock)> = pairs.iter().map(|(a, b)| (theirs(a), theirs(b))).collect();
        // Same inputs, same answers.
        for ((qa, qb), (ta, tb)) in q.iter().zip(&t) {
            let ours = match qa.compare(qb) {
                quorate_core::replication::Causality::Equal => Some(std::cmp::Ordering::Equal),
                quorate_core::replication::Causality::Before => Some(std::cmp::Ordering::Less),
                quorate_core::replication::Causality::After => Some(std::cmp::Ordering::Greater),
                quorate_core::replication::Causality::Concurrent => None,
            };
            assert_eq!(ours, ta.partial_cmp(tb));
            let mut m = ta.clone();
            m.merge(tb.clone());
            let joined = qa.joined(qb);
            assert!(joined.iter().all(|(a, c)| m.get(&(a.node.0, a.life)) == c) && joined.len() == m.iter().count());
        }
        let mut g = c.benchmark_group(format!("replication/vv_compare/{actors}"));
        g.throughput(Throughput::Elements(pairs.len() as u64));
        g.bench_function(BenchmarkId::from_parameter("quorate"), |b| {
            b.iter(|| {
                q.iter().filter(|(a, b)| a.compare(b) == quorate_core::replication::Causality::Concurrent).count()
            })
        });
        g.bench_function(BenchmarkId::from_parameter("crdts"), |b| {
            b.iter(|| t.iter().filter(|(a, b)| a.partial_cmp(b).is_none()).count())
        });
        g.finish();
        let mut g = c.benchmark_group(format!("replication/vv_merge/{actors}"));
        g.throughput(Throughput::Elements(pairs.len() as u64));
        g.bench_function(BenchmarkId::from_parameter("quorate"), |b| {
            b.iter_batched(
                || q.clone(),
                |mut v| {
                    for (a, b) in v.iter_mut() {
                        a.merge(b);
                    }
                    v
                },
                BatchSize::SmallInput,
            )
        });
        g.bench_function(BenchmarkId::from_parameter("crdts"), |b| {
            b.iter_batched(
                || t.clone(),
                |mut v| {
                    // In place, as on our side: `merge` takes `b` by value; taking it leaves an
                    // empty map behind, which allocates nothing.
                    for (a, b) in v.iter_mut() {
                        a.merge(std::mem::take(b));
                    }
                    v
                },
                BatchSize::SmallInput,
            )
        });
        g.finish();
    }
}

// ----- anti-entropy -----

struct Pair {
    a: Replica,
    b: Replica,
    now: Instant,
    next: u64,
}

/// What one session cost.
#[derive(Default, Debug)]
struct Cost {
    bytes: u64,
    /// Of `bytes`, the datagrams that carry states (pushes and pulled states); the rest is
    /// hashes, key listings, requests and acknowledgements.
    state_bytes: u64,
    datagrams: u64,
    round_trips: u64,
}

const CLUSTER: u64 = 0;

impl Pair {
    fn new(n: u64) -> Pair {
        let states: Vec<(EntryId, KeyState)> = {
            let now = Instant::from_nanos(1_000_000_000);
            let mut seed =
                Replica::new(config(3, ConflictMode::LastWriteWins), Recovered::default(), 3, now).expect("valid");
            let mut sink = Vec::new();
            let mut out = Vec::with_capacity(n as usize);
            for k in 0..n {
                seed.write(now, EntryId(k), Op::Put(entry(k)), None, Consistency::One).expect("accepted");
                drain(&mut seed, &mut sink);
                sink.clear();
                if let Some(s) = seed.state(EntryId(k)) {
                    out.push((EntryId(k), s.clone()));
                }
                if k % 4096 == 4095 {
                    // Keep the seed replica small: its copies are all we need.
                    seed = Replica::new(config(3, ConflictMode::LastWriteWins), Recovered::default(), 3 + k, now)
                        .expect("valid");
                }
            }
            out
        };
        let rec = |s: &Vec<(EntryId, KeyState)>| Recovered { identity: None, entries: s.clone(), hints: Vec::new() };
        let now = Instant::from_nanos(2_000_000_000);
        let a = Replica::new(config(1, ConflictMode::LastWriteWins), rec(&states), 1, now).expect("valid");
        let b = Replica::new(config(2, ConflictMode::LastWriteWins), rec(&states), 2, now).expect("valid");
        assert_eq!(a.digest(), b.digest());
        Pair { a, b, now, next: 0 }
    }

    /// `k` writes on A that B misses.
    fn diverge(&mut self, k: u64, n: u64) {
        let mut sink = Vec::new();
        for _ in 0..k {
            let key = (self.next * 7919) % n;
            self.next += 1;
            self.a.write(self.now, EntryId(key), Op::Put(entry(key + 17)), None, Consistency::One).expect("accepted");
            drain(&mut self.a, &mut sink);
            sink.clear();
        }
        // Let the writes time out (B never answers), so they do not pile up as pending; their
        // hints are never retried here (the retry interval is far away).
        self.now = self.now.saturating_add(Duration::from_secs(2));
        self.a.handle_timeout(self.now);
        drain(&mut self.a, &mut sink);
    }

    /// Runs one session started by A (or B) until both are idle; counts what crossed.
    fn sync(&mut self, a_starts: bool) -> Cost {
        let mut cost = Cost::default();
        let mut queue: VecDeque<(NodeId, NodeId, Message)> = VecDeque::new();
        let (first, peer) = if a_starts { (&mut self.a, NodeId(2)) } else { (&mut self.b, NodeId(1)) };
        first.force_sync(self.now, peer).expect("no session running");
        let mut out = Vec::new();
        let from = first.id();
        drain(first, &mut out);
        queue.extend(out.drain(..).map(|(to, m)| (from, to, m)));
        while !queue.is_empty() {
            cost.round_trips += 1;
            let wave: Vec<_> = queue.drain(..).collect();
            for (from, to, m) in wave {
                let len = message::datagram_len(CLUSTER, from, &m) as u64;
                cost.bytes += len;
                if matches!(m, Message::Write { .. } | Message::SyncStates { .. }) {
                    cost.state_bytes += len;
                }
                cost.datagrams += 1;
                let r = if to == NodeId(1) { &mut self.a } else { &mut self.b };
                r.handle_message(self.now, from, m).expect("well-formed");
                drain(r, &mut out);
                queue.extend(out.drain(..).map(|(t, m)| (to, t, m)));
            }
        }
        assert_eq!(self.a.digest(), self.b.digest(), "the session converged");
        cost.round_trips = cost.round_trips.div_ceil(2);
        cost
    }
}

fn bench_anti_entropy(c: &mut Criterion) {
    let n = 1_000_000;
    let built = WallInstant::now();
    let mut pair = Pair::new(n);
    eprintln!("anti-entropy: built two replicas of {n} entries in {:.1?}", built.elapsed());
    let state_bytes = |p: &Pair, id: EntryId| {
        postcard::to_allocvec(&(id, p.a.state(id).expect("stored"))).map_or(0, |v| v.len()) as u64
    };
    let everything: u64 = {
        let per = state_bytes(&pair, EntryId(0));
        // One entry's bytes times n, plus the header of every full datagram carrying them.
        let per_datagram = (60_000 - 32) / per;
        n * per + n.div_ceil(per_datagram) * 32
    };
    for k in [1u64, 10, 100, 1000] {
        for a_starts in [true, false] {
            pair.diverge(k, n);
            let changed = k * state_bytes(&pair, EntryId(0));
            let cost = pair.sync(a_starts);
            let digests = cost.bytes - cost.state_bytes;
            eprintln!(
                "anti-entropy k={k:>4} started by {}: {:>8} bytes in {:>5} datagrams, {} round trips; changed data {changed} bytes ({:.2}x); states {} bytes ({:.2}x changed), digests and requests {digests} bytes ({} per changed entry); sending everything {everything} bytes ({:.0}x more)",
                if a_starts { "the changed side" } else { "the stale side  " },
                cost.bytes,
                cost.datagrams,
                cost.round_trips,
                cost.bytes as f64 / changed as f64,
                cost.state_bytes,
                cost.state_bytes as f64 / changed as f64,
                digests / k,
                everything as f64 / cost.bytes as f64
            );
        }
    }
    let mut g = c.benchmark_group("replication/anti_entropy_1m");
    g.sample_size(10);
    for k in [1u64, 100, 1000] {
        g.throughput(Throughput::Elements(k));
        g.bench_function(BenchmarkId::from_parameter(format!("k={k}")), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    pair.diverge(k, n);
                    let t = WallInstant::now();
                    std::hint::black_box(pair.sync(true));
                    total += t.elapsed();
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_apply, bench_vv, bench_anti_entropy);
criterion_main!(benches);
