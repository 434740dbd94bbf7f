//! A seeded placement simulation: joins, leaves, drains, failures (some in the middle of a
//! move), weight changes and load skews, each carried out through the planner and one
//! migration machine per move, with every rule checked after every step.
//!
//! Per event: the planner plans from the committed map and the moves in flight; each move
//! runs as a [`Migration`] whose events (start, snapshot loaded, caught up, cutover confirmed,
//! cleanup done) are fed in a seeded interleaving across all moves in flight; its actions are
//! applied to the map. After every action batch the shard must have at least as many readable
//! replicas as when its move started (up to its rf), else an `rf_violation` is counted. When
//! the plan is empty the map is settled: every shard must have its replicas spread over
//! distinct zones where the zones allow, else a `zone_violation` is counted, and its balance
//! (fullest node over its fair share, see `TargetReport::max_over_mean`) is recorded.
//! Movement: for joins, leaves, drains, failures and weight changes, the replicas copied over
//! the planner's lower bound for the event (`TargetReport::copies_lower_bound`), summed.
//! Events with a failure in the middle of a move and load skews are run and checked but left
//! out of that ratio (their optimum is not defined by one map).

use std::collections::BTreeMap;
use std::time::Duration;

use quorate_core::placement::migration::Action;
use quorate_core::placement::{
    apply_immediate, compute_target, per_domain_max, plan, CollectionId, Event, LoadConfig, LoadSample, LoadTracker,
    Migration, MigrationConfig, Move, Node, NodeState, Phase, PlacementConfig, ShardId, ShardMap, Topology,
};
use quorate_core::{fnv1a64, fnv1a64_extend, Instant, Machine, NodeId};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// One simulation's shape.
#[derive(Clone, Debug)]
pub struct PlacementSimConfig {
    /// Seed of everything random.
    pub seed: u64,
    /// Nodes at the start.
    pub nodes: usize,
    /// Shards of the one collection.
    pub shards: u32,
    /// Its replication factor.
    pub rf: u8,
    /// Zones the nodes are spread over.
    pub zones: u32,
    /// Events to run.
    pub events: usize,
}

/// What a run found.
#[derive(Clone, Debug, Default)]
pub struct PlacementReport {
    /// The worst balance of any settled map.
    pub max_over_mean: f64,
    /// Replicas copied for the counted events.
    pub moved: u64,
    /// The lower bounds of those events, summed.
    pub optimal: u64,
    /// Steps at which a shard had fewer readable replicas than its move started with.
    pub rf_violations: u64,
    /// Settled shards with replicas sharing a zone where the zones allowed them apart.
    pub zone_violations: u64,
    /// Moves aborted (their target failed).
    pub aborted: u64,
    /// Moves completed.
    pub completed: u64,
    /// Events run, by kind.
    pub events: BTreeMap<&'static str, u64>,
    /// Fingerprint of the run.
    pub trace: u64,
}

impl PlacementReport {
    /// Replicas moved over the optimum (1.0 when nothing needed moving).
    pub fn moved_over_optimal(&self) -> f64 {
        if self.optimal == 0 {
            1.0
        } else {
            self.moved as f64 / self.optimal as f64
        }
    }
}

struct World {
    rng: ChaCha8Rng,
    topology: Topology,
    map: ShardMap,
    cfg: PlacementConfig,
    now: Instant,
    next_id: u64,
    zones: u32,
    report: PlacementReport,
    trace: u64,
}

impl World {
    fn below(&mut self, n: u64) -> u64 {
        self.rng.next_u64() % n.max(1)
    }

    fn active(&self) -> Vec<Node> {
        self.topology.nodes().iter().copied().filter(|n| n.state == NodeState::Active).collect()
    }

    fn note(&mut self, what: &str) {
        self.trace = fnv1a64_extend(self.trace, what.as_bytes());
    }

    /// Plans and drives moves until the plan is empty; returns the replicas copied. With
    /// `fail_target`, fails the target of one move in flight partway through.
    fn settle(&mut self, mut fail_target: bool) -> u64 {
        let mcfg = MigrationConfig::default();
        let mut copied = 0u64;
        let mut running: Vec<(Migration, usize)> = Vec::new();
        for _round in 0..400 {
            let in_flight: Vec<Move> = running.iter().map(|(m, _)| *m.plan()).collect();
            let planned = plan(&self.topology, &self.map, &self.cfg, &in_flight);
            let p = planned.plan;
            if p.is_empty() && running.is_empty() {
                self.check_settled();
                return copied;
            }
            apply_immediate(&mut self.map, &p).expect("a plan applies to the map it was made from");
            let down: Vec<NodeId> =
                self.topology.nodes().iter().filter(|n| n.state == NodeState::Down).map(|n| n.id).collect();
            for mv in &p.moves {
                let set = self.map.get(mv.shard).expect("planned shards exist").clone();
                let rf = self.map.rf(mv.shard).unwrap_or(1);
                let m = Migration::new(mcfg, *mv, &set, rf, &down).expect("the planner plans moves that fit");
                let floor = set.readable().filter(|&n| self.topology.is_up(n)).count().min(usize::from(rf));
                running.push((m, floor));
                self.note(&format!("{mv:?}"));
            }
            // Feed the moves' events in a seeded interleaving until all finish.
            while !running.is_empty() {
                let k = self.below(running.len() as u64) as usize;
                if fail_target && self.below(4) == 0 {
                    fail_target = false;
                    let target = running[k].0.plan().to;
                    if let Some(n) = self.topology.node(target).copied() {
                        self.topology.upsert(Node { state: NodeState::Down, ..n }).expect("valid node");
                        self.note(&format!("fail target {target}"));
                        for (m, _) in running.iter_mut() {
                            let _ = m.handle_event(self.now, Event::NodeDown(target));
                        }
                    }
                } else {
                    let m = &mut running[k].0;
                    let event = match m.phase() {
                        Phase::Planned => Event::Start,
                        Phase::CopyingSnapshot => Event::SnapshotLoaded { position: self.now.as_nanos() },
                        Phase::CatchingUp => Event::CaughtUp,
                        Phase::Cutover => Event::CutoverConfirmed,
                        _ => Event::CleanupDone,
                    };
                    let _ = m.handle_event(self.now, event);
                }
                self.now = self.now.saturating_add(Duration::from_millis(10));
                for (m, floor) in running.iter_mut() {
                    m.handle_timeout(self.now);
                    m.check_invariants();
                    let shard = m.plan().shard;
                    while let Some(a) = m.poll_action() {
                        if apply_action(&mut self.map, shard, a) {
                            copied += 1;
                        }
                    }
                    let set = self.map.get(shard).expect("moves name real shards");
                    // Counting failed nodes' replicas too: the move itself must not lose one.
                    if set.readable().count() < *floor {
                        self.report.rf_violations += 1;
                    }
                }
                running.retain(|(m, _)| {
                    if m.phase() == Phase::Aborted {
                        self.report.aborted += 1;
                    }
                    if m.phase() == Phase::Done {
                        self.report.completed += 1;
                    }
                    !m.is_finished()
                });
            }
        }
        panic!("placement did not settle in 400 rounds");
    }

    fn check_settled(&mut self) {
        let report = compute_target(&self.topology, &self.map, &self.cfg, &[]).report;
        self.report.max_over_mean = self.report.max_over_mean.max(report.max_over_mean);
        let active = self.active();
        let mut zones: BTreeMap<(u32, u32), usize> = BTreeMap::new();
        for n in &active {
            *zones.entry((n.region, n.zone)).or_default() += 1;
        }
        let sizes: Vec<usize> = zones.values().copied().collect();
        for (_, rf, set) in self.map.shards() {
            let r = usize::from(rf).min(active.len());
            let max = per_domain_max(r, &sizes);
            let mut per: BTreeMap<(u32, u32), usize> = BTreeMap::new();
            for rep in &set.replicas {
                if let Some(n) = self.topology.node(rep.node).filter(|n| n.state == NodeState::Active) {
                    *per.entry((n.region, n.zone)).or_default() += 1;
                }
            }
            if per.values().any(|&c| c > max) {
                self.report.zone_violations += 1;
            }
        }
        let bytes = postcard::to_allocvec(&self.map).unwrap_or_default();
        self.trace = fnv1a64_extend(self.trace, &bytes);
    }
}

/// Applies one migration action to the map; true if it started a copy.
fn apply_action(map: &mut ShardMap, shard: ShardId, a: Action) -> bool {
    let Ok(set) = map.get_mut(shard) else { return false };
    match a {
        Action::SetReplica { node, state } => set.set(node, state),
        Action::RemoveReplica { node } => {
            set.remove(node);
        }
        Action::SetPrimary { node } => set.primary = Some(node),
        Action::CopySnapshot { .. } => return true,
        _ => {}
    }
    false
}

/// Runs one simulation.
pub fn run(cfg: &PlacementSimConfig) -> PlacementReport {
    let zones = cfg.zones.max(1);
    let nodes: Vec<Node> = (0..cfg.nodes)
        .map(|i| Node { rack: (i as u32 / zones) % 4, ..Node::new(NodeId(i as u64 + 1), i as u32 % zones) })
        .collect();
    let mut map = ShardMap::new();
    map.add_collection(CollectionId(1), cfg.shards, cfg.rf).expect("the command line checks the shape");
    let mut w = World {
        rng: ChaCha8Rng::seed_from_u64(cfg.seed),
        topology: Topology::new(nodes).expect("distinct ids"),
        map,
        cfg: PlacementConfig::default(),
        now: Instant::ZERO,
        next_id: cfg.nodes as u64 + 1,
        zones,
        report: PlacementReport::default(),
        trace: fnv1a64(b"quorate-sim placement"),
    };
    w.settle(false);
    let mut tracker = LoadTracker::new(LoadConfig::default()).expect("default load config is valid");
    for _ in 0..cfg.events {
        let active = w.active();
        let kind = w.below(8);
        let (name, counted, fail_target) = match kind {
            0 | 1 => {
                let id = NodeId(w.next_id);
                w.next_id += 1;
                let zone = w.below(u64::from(w.zones)) as u32;
                let weight = [100, 100, 150, 200][w.below(4) as usize];
                w.topology.upsert(Node { weight, ..Node::new(id, zone) }).expect("valid node");
                ("join", true, false)
            }
            2 if active.len() > usize::from(cfg.rf) + 1 => {
                let n = active[w.below(active.len() as u64) as usize];
                w.topology.upsert(Node { state: NodeState::Draining, ..n }).expect("valid node");
                ("drain", true, false)
            }
            3 if active.len() > usize::from(cfg.rf) + 1 => {
                // A graceful leave: drain, then forget the node once it holds nothing.
                let n = active[w.below(active.len() as u64) as usize];
                w.topology.upsert(Node { state: NodeState::Draining, ..n }).expect("valid node");
                ("leave", true, false)
            }
            4 if active.len() > usize::from(cfg.rf) + 1 => {
                let n = active[w.below(active.len() as u64) as usize];
                w.topology.upsert(Node { state: NodeState::Down, ..n }).expect("valid node");
                ("failure", true, false)
            }
            5 if !active.is_empty() => {
                let n = active[w.below(active.len() as u64) as usize];
                let weight = [50, 75, 150, 200][w.below(4) as usize];
                w.topology.upsert(Node { weight, ..n }).expect("valid node");
                ("weight", true, false)
            }
            6 => {
                // A join whose moves see one target fail partway.
                let id = NodeId(w.next_id);
                w.next_id += 1;
                let zone = w.below(u64::from(w.zones)) as u32;
                w.topology.upsert(Node::new(id, zone)).expect("valid node");
                ("target-failure", false, true)
            }
            _ => ("load-skew", false, false),
        };
        *w.report.events.entry(name).or_default() += 1;
        w.note(name);
        if name == "load-skew" {
            skew(&mut w, &mut tracker);
            continue;
        }
        let lb = compute_target(&w.topology, &w.map, &w.cfg, &[]).report.copies_lower_bound as u64;
        let copied = w.settle(fail_target);
        if counted {
            w.report.optimal += lb;
            w.report.moved += copied;
        }
        if name == "leave" {
            let gone: Vec<NodeId> = w
                .topology
                .nodes()
                .iter()
                .filter(|n| n.state == NodeState::Draining)
                .map(|n| n.id)
                .filter(|id| !w.map.shards().any(|(_, _, set)| set.replica(*id).is_some()))
                .collect();
            for id in gone {
                w.topology.remove(id);
            }
        }
    }
    w.report.trace = w.trace;
    w.report
}

/// A load skew: a few nodes' replicas get heavy search traffic; the relief trades run as
/// moves through migration machines, and the map must settle again.
fn skew(w: &mut World, tracker: &mut LoadTracker) {
    let active = w.active();
    let hot: Vec<NodeId> = (0..3).map(|_| active[w.below(active.len() as u64) as usize].id).collect();
    w.now = w.now.saturating_add(Duration::from_secs(60));
    for (shard, _, set) in w.map.shards() {
        for r in &set.replicas {
            let searches = if hot.contains(&r.node) { 60 * 200 } else { 60 * 2 };
            let sample = LoadSample { writes: 600, reads: 1200, searches, bytes: 1 << 20 };
            let _ = tracker.handle_report(w.now, shard, r.node, sample);
        }
    }
    let relief = tracker.relief(w.now, &w.topology, &w.map, &w.cfg, &[]);
    w.note(&format!("relief {} {} {}", relief.hot_nodes.len(), relief.moves.len(), relief.primaries.len()));
    for p in &relief.primaries {
        if let Ok(set) = w.map.get_mut(p.shard) {
            if set.replica(p.to).is_some() {
                set.primary = Some(p.to);
            }
        }
    }
    // Trades are run as moves one after another, each through its own migration machine.
    let mcfg = MigrationConfig::default();
    for mv in &relief.moves {
        let Some(set) = w.map.get(mv.shard).cloned() else { continue };
        let rf = w.map.rf(mv.shard).unwrap_or(1);
        let Ok(mut m) = Migration::new(mcfg, *mv, &set, rf, &[]) else { continue };
        let floor = set.readable().count().min(usize::from(rf));
        for e in [
            Event::Start,
            Event::SnapshotLoaded { position: 0 },
            Event::CaughtUp,
            Event::CutoverConfirmed,
            Event::CleanupDone,
        ] {
            let _ = m.handle_event(w.now, e);
            m.check_invariants();
            while let Some(a) = m.poll_action() {
                apply_action(&mut w.map, mv.shard, a);
            }
            if w.map.get(mv.shard).map_or(0, |s| s.readable().count()) < floor {
                w.report.rf_violations += 1;
            }
        }
    }
    tracker.retain_in(&w.map);
    w.settle(false);
}
