//! How long the placement planner takes at the scale: 10,000 shards (rf 3) over 1,000
//! nodes in 3 zones. No peer crate plans replica placement, so these rows have no peer column.
//!
//! - `placement/initial`: the first plan, from an empty map (every shard created);
//! - `placement/one_failure`: from a settled map, the plan after one node fails;
//! - `placement/one_join`: from a settled map, the plan after one node joins.
//!
//! Each iteration computes the whole target and the plan; nothing is cached between them.

use std::time::Duration;

use criterion::{black_box, Criterion};
use quorate_core::placement::{
    apply_immediate, apply_move_now, plan, CollectionId, Node, NodeState, PlacementConfig, ShardMap, Topology,
};
use quorate_core::NodeId;

const NODES: u64 = 1000;
const SHARDS: u32 = 10_000;

fn topology() -> Topology {
    Topology::new(
        (1..=NODES).map(|i| Node { rack: (i as u32 / 3) % 8, ..Node::new(NodeId(i), (i % 3) as u32) }).collect(),
    )
    .expect("valid nodes")
}

fn settled(t: &Topology, cfg: &PlacementConfig) -> ShardMap {
    let mut m = ShardMap::new();
    m.add_collection(CollectionId(1), SHARDS, 3).expect("valid collection");
    for _ in 0..100 {
        let p = plan(t, &m, cfg, &[]).plan;
        if p.is_empty() {
            return m;
        }
        apply_immediate(&mut m, &p).expect("plan applies");
        for mv in &p.moves {
            apply_move_now(&mut m, mv).expect("move applies");
        }
    }
    panic!("the initial placement did not settle");
}

fn bench(c: &mut Criterion) {
    let t = topology();
    let cfg = PlacementConfig::default();
    let mut empty = ShardMap::new();
    empty.add_collection(CollectionId(1), SHARDS, 3).expect("valid collection");
    let m = settled(&t, &cfg);
    let mut failed = t.clone();
    let victim = *t.node(NodeId(500)).expect("node 500");
    failed.upsert(Node { state: NodeState::Down, ..victim }).expect("valid");
    let mut joined = t.clone();
    joined.upsert(Node::new(NodeId(NODES + 1), 1)).expect("valid");
    // The plans are what they should be, so the timing measures real work.
    let r = plan(&t, &empty, &cfg, &[]);
    assert_eq!(r.plan.creates.len(), SHARDS as usize);
    assert!(r.report().max_over_mean <= 1.05, "{}", r.report().max_over_mean);
    assert!(!plan(&failed, &m, &cfg, &[]).plan.moves.is_empty());
    assert!(!plan(&joined, &m, &cfg, &[]).plan.moves.is_empty());

    let mut g = c.benchmark_group("placement");
    g.sample_size(20);
    g.bench_function("initial", |b| b.iter(|| black_box(plan(&t, black_box(&empty), &cfg, &[]))));
    g.bench_function("one_failure", |b| b.iter(|| black_box(plan(&failed, black_box(&m), &cfg, &[]))));
    g.bench_function("one_join", |b| b.iter(|| black_box(plan(&joined, black_box(&m), &cfg, &[]))));
    g.finish();
}

fn main() {
    let mut c = Criterion::default().warm_up_time(Duration::from_secs(1)).configure_from_args();
    bench(&mut c);
    c.final_summary();
}
