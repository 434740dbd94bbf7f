//! The rebalance planner: the moves that take the current map to the target, a few at a time.
//!
//! A plan is a compact, serde value the Raft leader computes from committed state (topology,
//! shard map, moves in flight), commits, and then drives, one migration machine per move.
//! Every move is make-before-break: the target copies the shard from a live `source` replica
//! and becomes readable before the replica it replaces (`from`) stops serving, so a move
//! never takes a shard below the readable replicas it had. A replica is only dropped outright
//! when the shard keeps at least its replication factor of readable replicas without it, or
//! when it is on a down node and serves nothing anyway. So a drain that would leave too few
//! nodes for the replication factor keeps the draining node's replicas (counted as deferred).
//!
//! Moves are ordered by urgency, and at most `moves_in_per_node_max` copy into and
//! `moves_out_per_node_max` copy out of one node at once (counting moves in flight); the rest
//! wait for the next plan (`deferred`). Urgency: shards below their replication factor first
//! (fewest readable replicas first), then replicas off draining nodes, then spreading over
//! failure domains, then balance. Within a class, shard order. Same inputs, same plan.

use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use super::map::{NodeState, ReplicaState, ShardId, ShardMap, Topology};
use super::target::{compute_target, intended, PlacementConfig, Target, TargetReport};
use crate::NodeId;

/// Why a move is planned, most urgent first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum MoveReason {
    /// The shard has fewer readable replicas than its replication factor.
    Repair,
    /// The replica sits on a draining node.
    Drain,
    /// Two replicas share a failure domain though the domains allow them apart.
    Spread,
    /// The node holds more than its share.
    Balance,
}

/// Copy a shard to `to` from `source`, then retire `from` (if any).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    /// The shard.
    pub shard: ShardId,
    /// The replica this move replaces; `None` adds one (the shard was short).
    pub from: Option<NodeId>,
    /// The node that receives the new replica.
    pub to: NodeId,
    /// The live replica that sends the snapshot and the deltas.
    pub source: NodeId,
    /// Why.
    pub reason: MoveReason,
}

/// Remove a replica outright (the shard has more than it needs, or the replica is lost).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drop {
    /// The shard.
    pub shard: ShardId,
    /// The node whose replica goes.
    pub node: NodeId,
}

/// Hand the primary role to another replica (no data moves).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrimaryChange {
    /// The shard.
    pub shard: ShardId,
    /// The primary now, if any.
    pub from: Option<NodeId>,
    /// The new primary, an `Active` replica on a node that is up.
    pub to: NodeId,
}

/// Place a shard that has never held data: its replicas start `Active` and empty.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Create {
    /// The shard.
    pub shard: ShardId,
    /// Its replicas.
    pub replicas: Vec<NodeId>,
    /// Its primary.
    pub primary: NodeId,
}

/// One planning round's decisions: what the leader commits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// New shards to place as they are.
    pub creates: Vec<Create>,
    /// Replica moves to start, most urgent first.
    pub moves: Vec<Move>,
    /// Replicas to remove outright.
    pub drops: Vec<Drop>,
    /// Primary roles to hand over.
    pub primaries: Vec<PrimaryChange>,
    /// Moves the target needs that wait for a later round (node limits, or the shard is busy).
    pub deferred: u32,
    /// Shards with no readable replica on a node that is up: nothing to copy from. They are
    /// reported, never recreated empty.
    pub unavailable: u32,
}

impl Plan {
    /// True if the plan changes nothing.
    pub fn is_empty(&self) -> bool {
        self.creates.is_empty() && self.moves.is_empty() && self.drops.is_empty() && self.primaries.is_empty()
    }
}

/// A plan with the target it heads for.
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    /// What to do now.
    pub plan: Plan,
    /// Where it leads.
    pub target: Target,
}

impl Planned {
    /// The target's report.
    pub fn report(&self) -> &TargetReport {
        &self.target.report
    }
}

/// A move the target wants, before the node limits decide whether it starts now.
struct Candidate {
    reason: MoveReason,
    /// Readable replicas the shard has now: fewer goes first.
    readable: usize,
    shard: ShardId,
    from: Option<NodeId>,
    to: NodeId,
    /// Live readable replicas that could send the data.
    sources: Vec<NodeId>,
}

/// Plans the next round of moves. `in_flight` are the moves started earlier and not finished;
/// shards they touch are left alone until they finish, and they count against the node limits.
pub fn plan(topology: &Topology, map: &ShardMap, cfg: &PlacementConfig, in_flight: &[Move]) -> Planned {
    let target = compute_target(topology, map, cfg, in_flight);
    let mut plan = Plan::default();
    let mut ins: alloc::collections::BTreeMap<NodeId, u32> = alloc::collections::BTreeMap::new();
    let mut outs: alloc::collections::BTreeMap<NodeId, u32> = alloc::collections::BTreeMap::new();
    for m in in_flight {
        *ins.entry(m.to).or_insert(0) += 1;
        *outs.entry(m.source).or_insert(0) += 1;
    }
    let domain = |id: NodeId| topology.node(id).map(|n| n.domain(cfg.spread));
    let up = |id: NodeId| topology.is_up(id);
    let mut candidates: Vec<Candidate> = Vec::new();
    for ((shard, rf, set), t) in map.shards().zip(&target.sets) {
        debug_assert_eq!(shard, t.shard, "the target lists shards in map order");
        let busy =
            in_flight.iter().any(|m| m.shard == shard) || set.replicas.iter().any(|r| r.state != ReplicaState::Active);
        let readable: Vec<NodeId> = set.readable().filter(|&n| up(n)).collect();
        let members = intended(set, shard, in_flight);
        if set.replicas.is_empty() {
            if let (Some(primary), false) = (t.primary, t.replicas.is_empty()) {
                plan.creates.push(Create { shard, replicas: t.replicas.clone(), primary });
            }
            continue;
        }
        if readable.is_empty() {
            plan.unavailable += 1;
            continue;
        }
        // The primary must be an Active replica on a node that is up.
        let desired = t
            .primary
            .filter(|p| readable.contains(p))
            .or_else(|| set.primary.filter(|p| readable.contains(p)))
            .or_else(|| readable.iter().copied().find(|n| t.replicas.contains(n)))
            .or_else(|| readable.first().copied());
        // A shard in the middle of a move only changes primary when its primary is gone.
        let primary_ok = set.primary.is_some_and(|p| readable.contains(&p));
        if let Some(to) = desired.filter(|&d| set.primary != Some(d) && !(busy && primary_ok)) {
            plan.primaries.push(PrimaryChange { shard, from: set.primary, to });
        }
        if busy {
            let needs = t.replicas.iter().filter(|n| !members.contains(n)).count();
            plan.deferred += needs as u32;
            continue;
        }
        let mut adds: Vec<NodeId> = t.replicas.iter().copied().filter(|n| !members.contains(n)).collect();
        let mut removes: Vec<NodeId> = members.iter().copied().filter(|n| !t.replicas.contains(n)).collect();
        // Lost replicas are replaced first, then draining ones, then the rest.
        let rank = |id: NodeId| match topology.node(id).map(|n| n.state) {
            None | Some(NodeState::Down) => 0,
            Some(NodeState::Draining) => 1,
            Some(NodeState::Active) => 2,
        };
        removes.sort_by_key(|&id| (rank(id), id));
        adds.sort_unstable();
        let target_r = t.replicas.len().max(usize::from(rf).min(target.report.eligible_nodes));
        let spread_broken = {
            let mut ds: Vec<_> = readable.iter().filter_map(|&n| domain(n)).collect();
            let before = ds.len();
            ds.sort_unstable();
            ds.dedup();
            ds.len() < before && target.report.domains >= before
        };
        let mut removes_iter = removes.iter().copied();
        for to in adds {
            let from = removes_iter.next();
            let reason = if readable.len() < target_r {
                MoveReason::Repair
            } else if from.is_some_and(|f| rank(f) < 2) {
                MoveReason::Drain
            } else if spread_broken {
                MoveReason::Spread
            } else {
                MoveReason::Balance
            };
            candidates.push(Candidate { reason, readable: readable.len(), shard, from, to, sources: readable.clone() });
        }
        // Unpaired removes: a replica that serves reads goes only while the shard keeps its
        // replication factor without it. A drain with too few nodes left waits (deferred).
        let mut left = readable.len();
        let keep_at_least = target_r.max(usize::from(rf));
        for node in removes_iter {
            let counts = readable.contains(&node);
            if !counts || left > keep_at_least {
                plan.drops.push(Drop { shard, node });
                left -= usize::from(counts);
            } else {
                plan.deferred += 1;
            }
        }
    }
    candidates.sort_by_key(|c| (c.reason, c.readable, c.shard, c.to));
    for Candidate { reason, shard, from, to, sources, .. } in candidates {
        if plan.moves.len() as u32 >= cfg.moves_per_plan_max || *ins.get(&to).unwrap_or(&0) >= cfg.moves_in_per_node_max
        {
            plan.deferred += 1;
            continue;
        }
        // The replica being replaced sends, if it can; else the least busy live replica.
        let has_room = |n: &NodeId| *outs.get(n).unwrap_or(&0) < cfg.moves_out_per_node_max;
        let source = from
            .filter(|f| sources.contains(f) && has_room(f))
            .or_else(|| sources.iter().copied().filter(has_room).min_by_key(|n| (*outs.get(n).unwrap_or(&0), *n)));
        let Some(source) = source else {
            plan.deferred += 1;
            continue;
        };
        *ins.entry(to).or_insert(0) += 1;
        *outs.entry(source).or_insert(0) += 1;
        plan.moves.push(Move { shard, from, to, source, reason });
    }
    Planned { plan, target }
}

/// Applies a plan's creates, drops and primary changes to `map` (moves go through their
/// migration machines instead). What a node does when the plan commits.
pub fn apply_immediate(map: &mut ShardMap, plan: &Plan) -> Result<(), super::map::MapError> {
    for c in &plan.creates {
        let set = map.get_mut(c.shard)?;
        for &n in &c.replicas {
            set.set(n, ReplicaState::Active);
        }
        set.primary = Some(c.primary);
    }
    for d in &plan.drops {
        map.get_mut(d.shard)?.remove(d.node);
    }
    for p in &plan.primaries {
        let set = map.get_mut(p.shard)?;
        if set.replica(p.to).is_some_and(|r| r.state == ReplicaState::Active) {
            set.primary = Some(p.to);
        }
    }
    Ok(())
}

/// Carries a move out at once (snapshot, catch-up and cutover in one step): for tests and
/// simulations that study placement without migrations.
pub fn apply_move_now(map: &mut ShardMap, m: &Move) -> Result<(), super::map::MapError> {
    let set = map.get_mut(m.shard)?;
    set.set(m.to, ReplicaState::Active);
    if let Some(from) = m.from {
        set.remove(from);
        if set.primary.is_none() {
            set.primary = Some(m.to);
        }
    }
    Ok(())
}
