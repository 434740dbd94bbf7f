//! Drivers the placement fuzz targets share with their smoke tests (feature `testkit`): bytes
//! in, every rule checked, panics on a broken one.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::time::Duration;

use super::migration::{Action, Event, Migration, MigrationConfig};
use super::{
    apply_immediate, apply_move_now, plan, CollectionId, Node, NodeState, PlacementConfig, Replica, ReplicaSet,
    ReplicaState, ShardId, ShardMap, Topology,
};
use crate::machine::Machine;
use crate::{Instant, NodeId};

/// Reads bytes one at a time, then zeros.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn next(&mut self) -> u8 {
        let (&b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        b
    }
}

/// Builds a topology, a shard map and limits from `data`, then plans and carries out rounds
/// (moves at once), checking after each: limits held, sources live and readable, targets
/// active and new, drops never below the replication factor, readable replicas never fewer
/// than before (up to the replication factor), and the same inputs give the same plan.
pub fn drive_planner(data: &[u8]) {
    let mut b = Bytes(data);
    let nodes = 1 + usize::from(b.next() % 24);
    let zones = 1 + u32::from(b.next() % 4);
    let mut list = Vec::with_capacity(nodes);
    for i in 0..nodes {
        let state = match b.next() % 8 {
            0 => NodeState::Down,
            1 => NodeState::Draining,
            _ => NodeState::Active,
        };
        let weight = 1 + u32::from(b.next()) * 2;
        list.push(Node {
            rack: u32::from(b.next() % 3),
            weight,
            state,
            ..Node::new(NodeId(i as u64 + 1), i as u32 % zones)
        });
    }
    let Ok(t) = Topology::new(list) else { return };
    let mut m = ShardMap::new();
    for c in 0..1 + b.next() % 3 {
        let shards = 1 + u32::from(b.next() % 40);
        let rf = 1 + b.next() % 4;
        let _ = m.add_collection(CollectionId(u32::from(c)), shards, rf);
    }
    // Seed some existing replicas (including on down and draining nodes) from the bytes.
    let shard_ids: Vec<ShardId> = m.shards().map(|(s, _, _)| s).collect();
    for s in shard_ids {
        let count = b.next() % 4;
        let Ok(set) = m.get_mut(s) else { continue };
        for _ in 0..count {
            let node = NodeId(1 + u64::from(b.next()) % nodes as u64);
            set.set(node, ReplicaState::Active);
            if set.primary.is_none() {
                set.primary = Some(node);
            }
        }
    }
    let limit = 1 + u32::from(b.next() % 3);
    let cfg =
        PlacementConfig { moves_in_per_node_max: limit, moves_out_per_node_max: limit, ..PlacementConfig::default() };
    for _ in 0..12 {
        let planned = plan(&t, &m, &cfg, &[]);
        assert_eq!(planned.plan, plan(&t, &m, &cfg, &[]).plan, "same inputs, same plan");
        let p = &planned.plan;
        let mut ins: BTreeMap<NodeId, u32> = BTreeMap::new();
        let mut outs: BTreeMap<NodeId, u32> = BTreeMap::new();
        for mv in &p.moves {
            *ins.entry(mv.to).or_default() += 1;
            *outs.entry(mv.source).or_default() += 1;
            let set = m.get(mv.shard).expect("moves name real shards");
            assert!(set.readable().any(|n| n == mv.source) && t.is_up(mv.source), "{mv:?}: source");
            assert!(set.replica(mv.to).is_none(), "{mv:?}: target holds it");
            assert_eq!(t.node(mv.to).map(|n| n.state), Some(NodeState::Active), "{mv:?}: target state");
        }
        assert!(ins.values().chain(outs.values()).all(|&c| c <= limit), "limits: {ins:?} {outs:?}");
        let before: BTreeMap<ShardId, (usize, u8)> =
            m.shards().map(|(s, rf, set)| (s, (set.readable_up(&t), rf))).collect();
        if p.is_empty() {
            return;
        }
        apply_immediate(&mut m, p).expect("a plan applies to its map");
        for mv in &p.moves {
            apply_move_now(&mut m, mv).expect("a move applies to its map");
        }
        for (s, _, set) in m.shards() {
            let (was, rf) = before[&s];
            assert!(set.readable_up(&t) >= was.min(usize::from(rf)), "{s}: {was} -> {}", set.readable_up(&t));
        }
    }
}

/// A migration of a three-replica shard fed events from `data`: the machine keeps its
/// invariants, a refused event changes nothing, its actions carry its view to the host's map,
/// and that map never has fewer than three readable replicas (failed nodes' included).
pub fn drive_migration(data: &[u8]) {
    let mut b = Bytes(data);
    let shard = ShardId { collection: CollectionId(1), index: 0 };
    let set = ReplicaSet {
        primary: Some(NodeId(1 + u64::from(b.next() % 3))),
        replicas: (1..=3).map(|n| Replica { node: NodeId(n), state: ReplicaState::Active }).collect(),
    };
    let from = match b.next() % 4 {
        0 => None,
        k => Some(NodeId(u64::from(k))),
    };
    let source = from.unwrap_or(NodeId(1 + u64::from(b.next() % 3)));
    let mv = super::Move { shard, from, to: NodeId(4), source, reason: super::MoveReason::Balance };
    let cfg = MigrationConfig {
        copy_timeout: Duration::from_secs(10),
        catch_up_timeout: Duration::from_secs(10),
        cutover_timeout: Duration::from_secs(10),
        cleanup_retry: Duration::from_secs(5),
    };
    let Ok(mut m) = Migration::new(cfg, mv, &set, 3, &[]) else { return };
    let mut host = set;
    let mut now = Instant::ZERO;
    while !b.0.is_empty() {
        let op = b.next();
        let event = match op % 9 {
            0 => Some(Event::Start),
            1 => Some(Event::SnapshotLoaded { position: u64::from(b.next()) }),
            2 => Some(Event::CaughtUp),
            3 => Some(Event::CutoverConfirmed),
            4 => Some(Event::CleanupDone),
            5 => Some(Event::NodeDown(NodeId(1 + u64::from(b.next() % 5)))),
            6 => Some(Event::Abort),
            _ => None,
        };
        match event {
            Some(e) => {
                let phase = m.phase();
                if m.handle_event(now, e).is_err() {
                    assert_eq!(m.phase(), phase, "a refused event changed the phase");
                }
            }
            None => {
                now = now.saturating_add(Duration::from_secs(u64::from(b.next() % 16)));
                m.handle_timeout(now);
            }
        }
        m.check_invariants();
        while let Some(a) = m.poll_action() {
            match a {
                Action::SetReplica { node, state } => host.set(node, state),
                Action::RemoveReplica { node } => {
                    host.remove(node);
                }
                Action::SetPrimary { node } => host.primary = Some(node),
                _ => {}
            }
        }
        assert_eq!(&host, m.view(), "the host's map follows the machine's view");
        assert!(host.readable().count() >= 3, "fewer than three readable replicas: {host:?}");
        if let Some(deadline) = m.poll_timeout() {
            assert!(deadline >= now || m.phase() != super::migration::Phase::Planned);
        }
    }
}
