//! Hot-spot detection: decaying per-replica load, hot shards and hot nodes, and the moves that
//! cool them.
//!
//! Each node reports, per replica it holds, the writes, reads, searches and bytes it served
//! since its last report. The tracker keeps, per replica and per kind, an exponentially
//! decaying sum `S ← S·2^(−Δt/half_life) + count`, whose rate estimate is `S·ln 2 / half_life`:
//! a burst counts fully now and half as much one half-life later, with no per-sample memory.
//! A replica's load is a weighted sum of its rates (a search usually costs far more than a
//! read). A shard is hot when its load is over `hot_shard_factor` times the mean shard's; a node
//! is hot when its load per unit of weight is over `hot_node_factor` times the mean node's.
//!
//! Relief never fights the balancer: the target map balances replica and primary *counts*,
//! so relief trades instead of moving one way. A hot node swaps its hottest replica for a cold
//! replica of a cool node (two moves, counts unchanged), or swaps a primary role with a cool
//! node that shares two of its shards (no data moves). Each trade must lower the hotter
//! side's load and must not make the cooler side hot. Moves obey the same spread rules and
//! per-node limits as the planner's, and carry [`MoveReason::Balance`].
//!
//! Time is an input (`now`); rates are `f64` computed in a fixed order, so the same reports
//! give the same relief plan.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use core::time::Duration;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::map::{NodeState, ReplicaState, ShardId, ShardMap, Topology};
use super::plan::{Move, MoveReason, PrimaryChange};
use super::target::PlacementConfig;
use crate::{Instant, NodeId};

/// What one replica served since its previous report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadSample {
    /// Writes applied.
    pub writes: u64,
    /// Point reads served.
    pub reads: u64,
    /// Searches served.
    pub searches: u64,
    /// Bytes read or written.
    pub bytes: u64,
}

/// How load is weighed and what counts as hot.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadConfig {
    /// Time for a burst's weight to halve.
    pub half_life: Duration,
    /// Cost of one write per second, in load units.
    pub write_cost: f64,
    /// Cost of one read per second.
    pub read_cost: f64,
    /// Cost of one search per second.
    pub search_cost: f64,
    /// Cost of one byte per second.
    pub byte_cost: f64,
    /// A shard is hot above this many times the mean shard load.
    pub hot_shard_factor: f64,
    /// A node is hot above this many times the mean load per unit of weight.
    pub hot_node_factor: f64,
    /// Loads below this (load units) are never hot, however skewed: an idle cluster is calm.
    pub load_min: f64,
    /// Most trades one relief plan proposes.
    pub trades_max: u32,
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            half_life: Duration::from_secs(300),
            write_cost: 1.0,
            read_cost: 0.2,
            search_cost: 5.0,
            byte_cost: 1e-6,
            hot_shard_factor: 3.0,
            hot_node_factor: 1.25,
            load_min: 1.0,
            trades_max: 16,
        }
    }
}

/// Why a configuration or a report was refused. Nothing changed.
#[derive(Clone, Debug, PartialEq, Error)]
pub enum LoadError {
    /// A field out of range; the error names it.
    #[error("{0} out of range")]
    Config(&'static str),
    /// A report older than the last one for the same replica.
    #[error("report for {shard} on {node} at {at} is older than the last one")]
    Stale {
        /// The shard.
        shard: ShardId,
        /// The node.
        node: NodeId,
        /// The report's instant.
        at: Instant,
    },
}

impl LoadConfig {
    /// Checks every field once.
    pub fn validate(&self) -> Result<(), LoadError> {
        if self.half_life.is_zero() {
            return Err(LoadError::Config("half_life"));
        }
        let costs = [self.write_cost, self.read_cost, self.search_cost, self.byte_cost];
        if costs.iter().any(|c| !c.is_finite() || *c < 0.0) {
            return Err(LoadError::Config("a cost"));
        }
        if !(self.hot_shard_factor.is_finite() && self.hot_shard_factor > 1.0) {
            return Err(LoadError::Config("hot_shard_factor"));
        }
        if !(self.hot_node_factor.is_finite() && self.hot_node_factor > 1.0) {
            return Err(LoadError::Config("hot_node_factor"));
        }
        if !(self.load_min.is_finite() && self.load_min >= 0.0) {
            return Err(LoadError::Config("load_min"));
        }
        if self.trades_max == 0 {
            return Err(LoadError::Config("trades_max"));
        }
        Ok(())
    }
}

/// Decaying sums of one replica's counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Decaying {
    sums: [f64; 4],
    at: Instant,
}

impl Decaying {
    fn decay_to(&self, now: Instant, half_life: Duration) -> [f64; 4] {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        let f = libm::exp2(-dt / half_life.as_secs_f64());
        self.sums.map(|s| s * f)
    }
}

/// A hot shard or node: what it carries and how far over the mean it is.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hot<T> {
    /// The shard or node.
    pub id: T,
    /// Its load, in load units.
    pub load: f64,
    /// Its load over the mean (per unit of weight for nodes).
    pub over_mean: f64,
}

/// What the tracker found and what it proposes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Relief {
    /// Hot shards, hottest first.
    pub hot_shards: Vec<Hot<ShardId>>,
    /// Hot nodes, hottest first.
    pub hot_nodes: Vec<Hot<NodeId>>,
    /// Replica moves, in trades of two (the hot replica out, a cold one back).
    pub moves: Vec<Move>,
    /// Primary hand-overs, in trades of two.
    pub primaries: Vec<PrimaryChange>,
}

/// Per-replica decaying load. See the [module docs](crate::placement::hot).
#[derive(Clone, Debug)]
pub struct LoadTracker {
    cfg: LoadConfig,
    replicas: BTreeMap<(ShardId, NodeId), Decaying>,
}

impl LoadTracker {
    /// A tracker with no history.
    pub fn new(cfg: LoadConfig) -> Result<LoadTracker, LoadError> {
        cfg.validate()?;
        Ok(LoadTracker { cfg, replicas: BTreeMap::new() })
    }

    /// Adds what `node`'s replica of `shard` served since its last report, as of `now`.
    pub fn handle_report(
        &mut self,
        now: Instant,
        shard: ShardId,
        node: NodeId,
        sample: LoadSample,
    ) -> Result<(), LoadError> {
        let entry = self.replicas.entry((shard, node)).or_insert(Decaying { sums: [0.0; 4], at: now });
        if now < entry.at {
            return Err(LoadError::Stale { shard, node, at: now });
        }
        let mut sums = entry.decay_to(now, self.cfg.half_life);
        let counts = [sample.writes, sample.reads, sample.searches, sample.bytes];
        for (s, c) in sums.iter_mut().zip(counts) {
            *s += c as f64;
        }
        *entry = Decaying { sums, at: now };
        Ok(())
    }

    /// Forgets replicas that are no longer in `map` (moved, dropped, collection removed).
    pub fn retain_in(&mut self, map: &ShardMap) {
        self.replicas.retain(|(s, n), _| map.get(*s).is_some_and(|set| set.replica(*n).is_some()));
    }

    /// The load of `node`'s replica of `shard` at `now`, in load units.
    pub fn replica_load(&self, now: Instant, shard: ShardId, node: NodeId) -> f64 {
        self.replicas.get(&(shard, node)).map_or(0.0, |d| self.load_of(d, now))
    }

    fn load_of(&self, d: &Decaying, now: Instant) -> f64 {
        let rate = core::f64::consts::LN_2 / self.cfg.half_life.as_secs_f64();
        let [w, r, s, b] = d.decay_to(now, self.cfg.half_life);
        rate * (w * self.cfg.write_cost + r * self.cfg.read_cost + s * self.cfg.search_cost + b * self.cfg.byte_cost)
    }

    /// Finds hot shards and nodes at `now` and proposes trades that cool the nodes.
    /// `in_flight` moves count against the per-node limits, and their shards are left alone.
    pub fn relief(
        &self,
        now: Instant,
        topology: &Topology,
        map: &ShardMap,
        placement: &PlacementConfig,
        in_flight: &[Move],
    ) -> Relief {
        let mut out = Relief::default();
        // Replica loads of shards that are settled (every replica Active, no move in flight).
        let mut load: BTreeMap<(ShardId, NodeId), f64> = BTreeMap::new();
        let mut shard_load: BTreeMap<ShardId, f64> = BTreeMap::new();
        let mut node_load: BTreeMap<NodeId, f64> =
            topology.nodes().iter().filter(|n| n.state == NodeState::Active).map(|n| (n.id, 0.0)).collect();
        let mut busy: BTreeSet<ShardId> = in_flight.iter().map(|m| m.shard).collect();
        for (shard, _, set) in map.shards() {
            if set.replicas.iter().any(|r| r.state != ReplicaState::Active) {
                busy.insert(shard);
            }
            let mut total = 0.0;
            for r in &set.replicas {
                let l = self.replica_load(now, shard, r.node);
                total += l;
                load.insert((shard, r.node), l);
                if let Some(n) = node_load.get_mut(&r.node) {
                    *n += l;
                }
            }
            shard_load.insert(shard, total);
        }
        let shards = shard_load.len().max(1) as f64;
        let mean_shard = shard_load.values().sum::<f64>() / shards;
        for (&id, &l) in &shard_load {
            if l > self.cfg.load_min && l > self.cfg.hot_shard_factor * mean_shard {
                out.hot_shards.push(Hot { id, load: l, over_mean: l / mean_shard });
            }
        }
        out.hot_shards.sort_by(|a, b| b.load.total_cmp(&a.load).then(a.id.cmp(&b.id)));
        let weight = |id: NodeId| topology.node(id).map_or(1.0, |n| f64::from(n.weight));
        let total_weight: f64 = node_load.keys().map(|&n| weight(n)).sum();
        let mean_per_weight = node_load.values().sum::<f64>() / total_weight.max(1.0);
        let threshold = |id: NodeId| self.cfg.hot_node_factor * mean_per_weight * weight(id);
        for (&id, &l) in &node_load {
            if l > self.cfg.load_min && l > threshold(id) {
                out.hot_nodes.push(Hot { id, load: l, over_mean: l / (mean_per_weight * weight(id)) });
            }
        }
        out.hot_nodes.sort_by(|a, b| b.over_mean.total_cmp(&a.over_mean).then(a.id.cmp(&b.id)));

        let mut ins: BTreeMap<NodeId, u32> = BTreeMap::new();
        let mut outs: BTreeMap<NodeId, u32> = BTreeMap::new();
        for m in in_flight {
            *ins.entry(m.to).or_default() += 1;
            *outs.entry(m.source).or_default() += 1;
        }
        let mut trades = 0u32;
        let hot_nodes: Vec<NodeId> = out.hot_nodes.iter().map(|h| h.id).collect();
        for hot in hot_nodes {
            // Coolest nodes first, by load relative to their threshold.
            let mut cool: Vec<NodeId> =
                node_load.keys().copied().filter(|&n| n != hot && node_load[&n] < threshold(n)).collect();
            cool.sort_by(|a, b| {
                (node_load[a] / threshold(*a)).total_cmp(&(node_load[b] / threshold(*b))).then(a.cmp(b))
            });
            // Cheapest first: trade primary roles (no data moves).
            for &c in &cool {
                if trades >= self.cfg.trades_max || node_load[&hot] <= threshold(hot) {
                    break;
                }
                if let Some((give, take, delta)) = self.primary_trade(map, &load, &busy, hot, c) {
                    if node_load[&c] + delta <= threshold(c) {
                        out.primaries.push(PrimaryChange { shard: give, from: Some(hot), to: c });
                        out.primaries.push(PrimaryChange { shard: take, from: Some(c), to: hot });
                        *node_load.entry(hot).or_default() -= delta;
                        *node_load.entry(c).or_default() += delta;
                        busy.insert(give);
                        busy.insert(take);
                        trades += 1;
                    }
                }
            }
            for &c in &cool {
                if trades >= self.cfg.trades_max || node_load[&hot] <= threshold(hot) {
                    break;
                }
                let room = |n: NodeId, m: &BTreeMap<NodeId, u32>, max: u32| *m.get(&n).unwrap_or(&0) < max;
                if !(room(hot, &ins, placement.moves_in_per_node_max)
                    && room(hot, &outs, placement.moves_out_per_node_max)
                    && room(c, &ins, placement.moves_in_per_node_max)
                    && room(c, &outs, placement.moves_out_per_node_max))
                {
                    continue;
                }
                let Some((give, take, delta)) = self.replica_trade(topology, map, placement, &load, &busy, hot, c)
                else {
                    continue;
                };
                if node_load[&c] + delta > threshold(c) {
                    continue;
                }
                out.moves.push(Move { shard: give, from: Some(hot), to: c, source: hot, reason: MoveReason::Balance });
                out.moves.push(Move { shard: take, from: Some(c), to: hot, source: c, reason: MoveReason::Balance });
                for n in [hot, c] {
                    *ins.entry(n).or_default() += 1;
                    *outs.entry(n).or_default() += 1;
                }
                *node_load.entry(hot).or_default() -= delta;
                *node_load.entry(c).or_default() += delta;
                busy.insert(give);
                busy.insert(take);
                trades += 1;
            }
        }
        out
    }

    /// The best primary trade between `hot` and `cool`: `hot` hands its hottest primary shard
    /// that `cool` also holds, and takes back `cool`'s coolest primary shard that it holds.
    /// Returns the shards and how much load leaves `hot` (approximated as the difference
    /// between the primary's replica load and the other's, for each shard).
    fn primary_trade(
        &self,
        map: &ShardMap,
        load: &BTreeMap<(ShardId, NodeId), f64>,
        busy: &BTreeSet<ShardId>,
        hot: NodeId,
        cool: NodeId,
    ) -> Option<(ShardId, ShardId, f64)> {
        let mut give: Option<(f64, ShardId)> = None;
        let mut take: Option<(f64, ShardId)> = None;
        for (shard, _, set) in map.shards() {
            if busy.contains(&shard) || set.replica(hot).is_none() || set.replica(cool).is_none() {
                continue;
            }
            let diff =
                load.get(&(shard, hot)).copied().unwrap_or(0.0) - load.get(&(shard, cool)).copied().unwrap_or(0.0);
            if set.primary == Some(hot) && give.is_none_or(|(d, _)| diff > d) {
                give = Some((diff, shard));
            }
            if set.primary == Some(cool) && take.is_none_or(|(d, _)| -diff < d) {
                take = Some((-diff, shard));
            }
        }
        let ((g, gs), (t, ts)) = (give?, take?);
        // Hot gives away `g` and takes on `t` (negative if cool's primary replica is hotter).
        let delta = g - t;
        (delta > 0.0).then_some((gs, ts, delta / 2.0))
    }

    /// The best replica trade: `hot`'s hottest replica that `cool` may hold goes to `cool`,
    /// and `cool`'s coldest replica that `hot` may hold comes back.
    #[allow(clippy::too_many_arguments)]
    fn replica_trade(
        &self,
        topology: &Topology,
        map: &ShardMap,
        placement: &PlacementConfig,
        load: &BTreeMap<(ShardId, NodeId), f64>,
        busy: &BTreeSet<ShardId>,
        hot: NodeId,
        cool: NodeId,
    ) -> Option<(ShardId, ShardId, f64)> {
        let domain = |n: NodeId| topology.node(n).map(|x| x.domain(placement.spread));
        // Moving `shard`'s replica from `a` to `b` keeps the spread if `b` adds no domain
        // that the shard's other replicas already use (or `b` shares `a`'s domain).
        let may_move = |shard: ShardId, a: NodeId, b: NodeId| {
            let Some(set) = map.get(shard) else { return false };
            set.replica(b).is_none()
                && (domain(a) == domain(b) || !set.replicas.iter().any(|r| r.node != a && domain(r.node) == domain(b)))
        };
        let mut give: Option<(f64, ShardId)> = None;
        let mut take: Option<(f64, ShardId)> = None;
        for (shard, _, set) in map.shards() {
            if busy.contains(&shard) {
                continue;
            }
            if let Some(l) = set.replica(hot).and(load.get(&(shard, hot))) {
                if may_move(shard, hot, cool) && give.is_none_or(|(g, _)| *l > g) {
                    give = Some((*l, shard));
                }
            }
            if let Some(l) = set.replica(cool).and(load.get(&(shard, cool))) {
                if may_move(shard, cool, hot) && take.is_none_or(|(t, _)| *l < t) {
                    take = Some((*l, shard));
                }
            }
        }
        let ((g, gs), (t, ts)) = (give?, take?);
        (gs != ts && g > t).then_some((gs, ts, g - t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::{apply_immediate, apply_move_now, plan, CollectionId, Node};
    use alloc::vec;

    fn secs(s: u64) -> Instant {
        Instant::from_nanos(s * 1_000_000_000)
    }

    fn writes(n: u64) -> LoadSample {
        LoadSample { writes: n, ..LoadSample::default() }
    }

    #[test]
    fn config_is_validated() {
        let bad = LoadConfig { half_life: Duration::ZERO, ..LoadConfig::default() };
        assert_eq!(LoadTracker::new(bad).unwrap_err(), LoadError::Config("half_life"));
        let bad = LoadConfig { hot_node_factor: 1.0, ..LoadConfig::default() };
        assert_eq!(bad.validate(), Err(LoadError::Config("hot_node_factor")));
        let bad = LoadConfig { read_cost: f64::NAN, ..LoadConfig::default() };
        assert_eq!(bad.validate(), Err(LoadError::Config("a cost")));
    }

    #[test]
    fn load_decays_by_half_each_half_life() {
        let cfg = LoadConfig { half_life: Duration::from_secs(10), ..LoadConfig::default() };
        let mut t = LoadTracker::new(cfg).unwrap();
        let s = ShardId { collection: CollectionId(1), index: 0 };
        t.handle_report(secs(0), s, NodeId(1), writes(1000)).unwrap();
        let l0 = t.replica_load(secs(0), s, NodeId(1));
        let l10 = t.replica_load(secs(10), s, NodeId(1));
        let l20 = t.replica_load(secs(20), s, NodeId(1));
        assert!((l0 - 1000.0 * core::f64::consts::LN_2 / 10.0).abs() < 1e-9, "{l0}");
        assert!((l10 / l0 - 0.5).abs() < 1e-12 && (l20 / l0 - 0.25).abs() < 1e-12);
        // A steady 100 writes per second converges to a rate of 100.
        for k in 1..=200 {
            t.handle_report(secs(k), s, NodeId(2), writes(100)).unwrap();
        }
        let steady = t.replica_load(secs(200), s, NodeId(2));
        assert!((steady - 100.0).abs() < 4.0, "{steady}");
        assert_eq!(
            t.handle_report(secs(100), s, NodeId(2), writes(1)),
            Err(LoadError::Stale { shard: s, node: NodeId(2), at: secs(100) })
        );
        assert_eq!(t.replica_load(secs(0), s, NodeId(9)), 0.0);
    }

    fn settled(nodes: u64, shards: u32) -> (Topology, ShardMap) {
        let t = Topology::new((1..=nodes).map(|i| Node::new(NodeId(i), (i % 3) as u32)).collect()).unwrap();
        let mut m = ShardMap::new();
        m.add_collection(CollectionId(1), shards, 3).unwrap();
        let cfg = PlacementConfig::default();
        for _ in 0..50 {
            let p = plan(&t, &m, &cfg, &[]).plan;
            if p.is_empty() {
                break;
            }
            apply_immediate(&mut m, &p).unwrap();
            for mv in &p.moves {
                apply_move_now(&mut m, mv).unwrap();
            }
        }
        (t, m)
    }

    #[test]
    fn hot_nodes_are_cooled_by_count_neutral_trades() {
        let (t, mut m) = settled(12, 48);
        let cfg = LoadConfig::default();
        let mut tracker = LoadTracker::new(cfg).unwrap();
        let hot = NodeId(4);
        // Every replica serves 10 writes/s, node 4's serve 100 searches/s on top.
        for (s, _, set) in m.shards() {
            for r in &set.replicas {
                let extra = if r.node == hot { 100 * 300 } else { 0 };
                tracker
                    .handle_report(
                        secs(300),
                        s,
                        r.node,
                        LoadSample { writes: 3000, searches: extra, ..LoadSample::default() },
                    )
                    .unwrap();
            }
        }
        let pcfg =
            PlacementConfig { moves_in_per_node_max: 4, moves_out_per_node_max: 4, ..PlacementConfig::default() };
        let before = m.replicas_per_node();
        let relief = tracker.relief(secs(300), &t, &m, &pcfg, &[]);
        assert_eq!(relief.hot_nodes.first().map(|h| h.id), Some(hot), "{:?}", relief.hot_nodes);
        // The shards on node 4 carry about 18 times the others' load: they are the hot ones.
        assert!(!relief.hot_shards.is_empty());
        assert!(relief.hot_shards.iter().all(|h| m.get(h.id).unwrap().replica(hot).is_some()));
        assert!(!relief.moves.is_empty());
        assert_eq!(relief.moves.len() % 2, 0, "moves come in trades");
        for pair in relief.moves.chunks(2) {
            assert_eq!((pair[0].from, pair[0].to), (Some(pair[1].to), pair[1].from.unwrap_or(NodeId::NONE)));
        }
        // Carry the trades out: counts per node are unchanged, the hot node carries less.
        let load_on = |m: &ShardMap, tr: &LoadTracker, n: NodeId| -> f64 {
            m.shards()
                .filter(|(_, _, set)| set.replica(n).is_some())
                .map(|(s, _, _)| tr.replica_load(secs(300), s, hot))
                .sum()
        };
        let hot_before = load_on(&m, &tracker, hot);
        for mv in &relief.moves {
            apply_move_now(&mut m, mv).unwrap();
        }
        assert_eq!(m.replicas_per_node(), before);
        assert!(load_on(&m, &tracker, hot) < hot_before);
        // Still spread: no two replicas of a shard share a zone.
        for (s, _, set) in m.shards() {
            let mut zones: Vec<u32> = set.replicas.iter().map(|r| t.node(r.node).unwrap().zone).collect();
            zones.sort_unstable();
            zones.dedup();
            assert_eq!(zones.len(), 3, "{s}");
        }
        // And the balancer has nothing to undo.
        assert!(plan(&t, &m, &PlacementConfig::default(), &[]).plan.moves.is_empty());
        assert_eq!(tracker.relief(secs(300), &t, &m, &pcfg, &[]), tracker.relief(secs(300), &t, &m, &pcfg, &[]));
    }

    #[test]
    fn a_hot_shard_is_reported_and_an_idle_cluster_is_calm() {
        let (t, m) = settled(9, 30);
        let mut tracker = LoadTracker::new(LoadConfig::default()).unwrap();
        let relief = tracker.relief(secs(0), &t, &m, &PlacementConfig::default(), &[]);
        assert!(relief.hot_nodes.is_empty() && relief.hot_shards.is_empty() && relief.moves.is_empty());
        let s = ShardId { collection: CollectionId(1), index: 7 };
        for (shard, _, set) in m.shards() {
            for r in &set.replicas {
                let n = if shard == s { 300_000 } else { 3_000 };
                tracker.handle_report(secs(10), shard, r.node, writes(n)).unwrap();
            }
        }
        let relief = tracker.relief(secs(10), &t, &m, &PlacementConfig::default(), &[]);
        assert_eq!(relief.hot_shards.iter().map(|h| h.id).collect::<Vec<_>>(), vec![s]);
        let mut pruned = m.clone();
        pruned.get_mut(s).unwrap().replicas.clear();
        tracker.retain_in(&pruned);
        assert_eq!(tracker.replica_load(secs(10), s, m.get(s).unwrap().replicas[0].node), 0.0);
    }
}
