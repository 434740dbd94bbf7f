//! What placement works on: nodes with their failure domains, and the shard map.
//!
//! Both are plain values, serde-serializable and ordered (`BTreeMap`s and sorted `Vec`s), so
//! the Raft leader can commit them and every node decodes the same thing.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::NodeId;

/// The most replicas a shard may ask for.
pub const RF_MAX: u8 = 9;
/// The most shards one collection may have.
pub const SHARDS_PER_COLLECTION_MAX: u32 = 1 << 20;
/// The most nodes a topology may describe.
pub const NODES_MAX: usize = 1 << 16;

/// A collection's id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CollectionId(pub u32);

/// One shard: a collection and the shard's index in it (`0..shards`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ShardId {
    /// The collection.
    pub collection: CollectionId,
    /// Index of the shard in its collection.
    pub index: u32,
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}/s{}", self.collection.0, self.index)
    }
}

/// What a node is doing, as far as placement cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum NodeState {
    /// Serving and accepting new replicas.
    Active,
    /// Serving its replicas but taking no new ones; the planner moves everything off it.
    Draining,
    /// Unreachable: its replicas count as lost, and the planner replaces them.
    Down,
}

/// The failure-domain levels, from widest to narrowest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum DomainLevel {
    /// Replicas in distinct regions.
    Region,
    /// Replicas in distinct zones (the default: a zone is what fails together in a cloud).
    Zone,
    /// Replicas in distinct racks.
    Rack,
    /// Replicas on distinct nodes only.
    Node,
}

/// One node: where it sits, how much it should hold, and its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The node's id (never [`NodeId::NONE`]).
    pub id: NodeId,
    /// Region label (the host maps names to numbers).
    pub region: u32,
    /// Zone label, unique within the region.
    pub zone: u32,
    /// Rack label, unique within the zone.
    pub rack: u32,
    /// Relative capacity: a node of weight 200 holds twice what one of 100 holds. At least 1.
    pub weight: u32,
    /// Active, draining or down.
    pub state: NodeState,
}

impl Node {
    /// An active node of weight 100 in region 0, `zone`, rack 0.
    pub fn new(id: NodeId, zone: u32) -> Node {
        Node { id, region: 0, zone, rack: 0, weight: 100, state: NodeState::Active }
    }

    /// The failure domain this node belongs to at `level`, as a sortable key.
    pub fn domain(&self, level: DomainLevel) -> (u32, u32, u32, u64) {
        match level {
            DomainLevel::Region => (self.region, 0, 0, 0),
            DomainLevel::Zone => (self.region, self.zone, 0, 0),
            DomainLevel::Rack => (self.region, self.zone, self.rack, 0),
            DomainLevel::Node => (self.region, self.zone, self.rack, self.id.0),
        }
    }
}

/// Why a topology or a shard map was refused. Nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum MapError {
    /// A node id was zero.
    #[error("node id 0 is reserved")]
    ZeroNodeId,
    /// A node was listed twice.
    #[error("node {0} is listed twice")]
    DuplicateNode(NodeId),
    /// A node had weight 0 (drain it instead).
    #[error("node {0} has weight 0; drain it instead")]
    ZeroWeight(NodeId),
    /// More than [`NODES_MAX`] nodes.
    #[error("{0} nodes, over the limit of {NODES_MAX}")]
    TooManyNodes(usize),
    /// The collection exists already.
    #[error("collection {0:?} already exists")]
    DuplicateCollection(CollectionId),
    /// The collection does not exist.
    #[error("collection {0:?} does not exist")]
    UnknownCollection(CollectionId),
    /// The shard does not exist.
    #[error("shard {0} does not exist")]
    UnknownShard(ShardId),
    /// Shard count out of `1..=SHARDS_PER_COLLECTION_MAX`.
    #[error("shard count {0} out of range 1..={SHARDS_PER_COLLECTION_MAX}")]
    ShardCount(u32),
    /// Replication factor out of `1..=RF_MAX`.
    #[error("replication factor {0} out of range 1..={RF_MAX}")]
    ReplicationFactor(u8),
}

/// The nodes placement may use, in id order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    nodes: Vec<Node>,
}

impl Topology {
    /// Validates and sorts `nodes`: ids non-zero and unique, weights at least 1.
    pub fn new(mut nodes: Vec<Node>) -> Result<Topology, MapError> {
        if nodes.len() > NODES_MAX {
            return Err(MapError::TooManyNodes(nodes.len()));
        }
        nodes.sort_unstable_by_key(|n| n.id);
        for (i, n) in nodes.iter().enumerate() {
            if n.id == NodeId::NONE {
                return Err(MapError::ZeroNodeId);
            }
            if n.weight == 0 {
                return Err(MapError::ZeroWeight(n.id));
            }
            if i > 0 && nodes[i - 1].id == n.id {
                return Err(MapError::DuplicateNode(n.id));
            }
        }
        Ok(Topology { nodes })
    }

    /// Every node, in id order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The node `id`, if described.
    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.binary_search_by_key(&id, |n| n.id).ok().map(|i| &self.nodes[i])
    }

    /// True if `id` is described and not down: its replicas still hold data and answer.
    pub fn is_up(&self, id: NodeId) -> bool {
        self.node(id).is_some_and(|n| n.state != NodeState::Down)
    }

    /// Adds or replaces a node (a join, a state change, a weight change).
    pub fn upsert(&mut self, node: Node) -> Result<(), MapError> {
        if node.id == NodeId::NONE {
            return Err(MapError::ZeroNodeId);
        }
        if node.weight == 0 {
            return Err(MapError::ZeroWeight(node.id));
        }
        match self.nodes.binary_search_by_key(&node.id, |n| n.id) {
            Ok(i) => self.nodes[i] = node,
            Err(i) => {
                if self.nodes.len() >= NODES_MAX {
                    return Err(MapError::TooManyNodes(self.nodes.len() + 1));
                }
                self.nodes.insert(i, node)
            }
        }
        Ok(())
    }

    /// Forgets a node (after it left); its replicas, if any remain, count as lost.
    pub fn remove(&mut self, id: NodeId) -> Option<Node> {
        let i = self.nodes.binary_search_by_key(&id, |n| n.id).ok()?;
        Some(self.nodes.remove(i))
    }
}

/// A replica's part in serving its shard. The states are the routing rules:
///
/// | state        | serves reads | takes writes | counts toward the RF |
/// | ------------ | ------------ | ------------ | -------------------- |
/// | `Active`     | yes          | yes          | yes                  |
/// | `Copying`    | no           | no           | no                   |
/// | `CatchingUp` | no           | yes (double writes) | no            |
/// | `Leaving`    | no           | yes (until cleanup) | no            |
///
/// A move's target is `Copying` while it loads a snapshot (writes after the snapshot's
/// position reach it as deltas), `CatchingUp` once writes are doubled to it while it replays
/// the deltas, and `Active` at cutover, when the source becomes `Leaving`: reads switch over,
/// and the source keeps taking writes until cleanup so that a target failure right after the
/// cutover loses nothing. The migration machine moves replicas through these states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ReplicaState {
    /// A full member.
    Active,
    /// A move's target loading a snapshot.
    Copying,
    /// A move's target receiving double writes and replaying deltas.
    CatchingUp,
    /// A move's source after cutover, until cleanup deletes it.
    Leaving,
}

impl ReplicaState {
    /// True if the replica serves reads.
    pub fn readable(self) -> bool {
        self == ReplicaState::Active
    }

    /// True if writes must reach the replica.
    pub fn writable(self) -> bool {
        self != ReplicaState::Copying
    }
}

/// One replica of a shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    /// Where it lives.
    pub node: NodeId,
    /// Its part in serving (see [`ReplicaState`]).
    pub state: ReplicaState,
}

/// A shard's replicas (in node order) and its primary.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaSet {
    /// The primary (an `Active` replica), if one is chosen.
    pub primary: Option<NodeId>,
    /// The replicas, sorted by node, at most one per node.
    pub replicas: Vec<Replica>,
}

impl ReplicaSet {
    /// The replica on `node`, if any.
    pub fn replica(&self, node: NodeId) -> Option<&Replica> {
        self.replicas.iter().find(|r| r.node == node)
    }

    /// Sets (adds or updates) the replica on `node`.
    pub fn set(&mut self, node: NodeId, state: ReplicaState) {
        match self.replicas.binary_search_by_key(&node, |r| r.node) {
            Ok(i) => self.replicas[i].state = state,
            Err(i) => self.replicas.insert(i, Replica { node, state }),
        }
    }

    /// Removes the replica on `node` (and the primary role if it held it).
    pub fn remove(&mut self, node: NodeId) -> Option<Replica> {
        let i = self.replicas.binary_search_by_key(&node, |r| r.node).ok()?;
        if self.primary == Some(node) {
            self.primary = None;
        }
        Some(self.replicas.remove(i))
    }

    /// Nodes of the replicas that serve reads.
    pub fn readable(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.replicas.iter().filter(|r| r.state.readable()).map(|r| r.node)
    }

    /// Nodes of the replicas that writes must reach.
    pub fn writable(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.replicas.iter().filter(|r| r.state.writable()).map(|r| r.node)
    }

    /// Readable replicas on nodes the topology says are up.
    pub fn readable_up(&self, topology: &Topology) -> usize {
        self.readable().filter(|&n| topology.is_up(n)).count()
    }
}

/// A collection: its replication factor and one replica set per shard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collection {
    /// Replicas each shard should have.
    pub rf: u8,
    /// Replica sets, indexed by shard index.
    pub shards: Vec<ReplicaSet>,
}

/// Per collection, a fixed number of shards; per shard, its replica set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMap {
    collections: BTreeMap<CollectionId, Collection>,
}

impl ShardMap {
    /// An empty map.
    pub fn new() -> ShardMap {
        ShardMap::default()
    }

    /// Adds a collection of `shards` shards, none placed yet (the planner places them).
    pub fn add_collection(&mut self, id: CollectionId, shards: u32, rf: u8) -> Result<(), MapError> {
        if self.collections.contains_key(&id) {
            return Err(MapError::DuplicateCollection(id));
        }
        if shards == 0 || shards > SHARDS_PER_COLLECTION_MAX {
            return Err(MapError::ShardCount(shards));
        }
        if rf == 0 || rf > RF_MAX {
            return Err(MapError::ReplicationFactor(rf));
        }
        let sets = (0..shards).map(|_| ReplicaSet::default()).collect();
        self.collections.insert(id, Collection { rf, shards: sets });
        Ok(())
    }

    /// Changes a collection's replication factor; the next plan adds or drops replicas.
    pub fn set_rf(&mut self, id: CollectionId, rf: u8) -> Result<(), MapError> {
        if rf == 0 || rf > RF_MAX {
            return Err(MapError::ReplicationFactor(rf));
        }
        self.collections.get_mut(&id).ok_or(MapError::UnknownCollection(id))?.rf = rf;
        Ok(())
    }

    /// Drops a collection and its shards.
    pub fn remove_collection(&mut self, id: CollectionId) -> Option<Collection> {
        self.collections.remove(&id)
    }

    /// The collections, in id order.
    pub fn collections(&self) -> impl Iterator<Item = (CollectionId, &Collection)> {
        self.collections.iter().map(|(&id, c)| (id, c))
    }

    /// Every shard with its replication factor and replica set, in shard order.
    pub fn shards(&self) -> impl Iterator<Item = (ShardId, u8, &ReplicaSet)> {
        self.collections.iter().flat_map(|(&collection, c)| {
            c.shards.iter().enumerate().map(move |(i, set)| (ShardId { collection, index: i as u32 }, c.rf, set))
        })
    }

    /// The number of shards over all collections.
    pub fn shard_count(&self) -> usize {
        self.collections.values().map(|c| c.shards.len()).sum()
    }

    /// The replication factor of `shard`'s collection.
    pub fn rf(&self, shard: ShardId) -> Option<u8> {
        let c = self.collections.get(&shard.collection)?;
        (shard.index < c.shards.len() as u32).then_some(c.rf)
    }

    /// The replica set of `shard`.
    pub fn get(&self, shard: ShardId) -> Option<&ReplicaSet> {
        self.collections.get(&shard.collection)?.shards.get(shard.index as usize)
    }

    /// The replica set of `shard`, to change it.
    pub fn get_mut(&mut self, shard: ShardId) -> Result<&mut ReplicaSet, MapError> {
        self.collections
            .get_mut(&shard.collection)
            .and_then(|c| c.shards.get_mut(shard.index as usize))
            .ok_or(MapError::UnknownShard(shard))
    }

    /// Replicas per node (any state), in node order.
    pub fn replicas_per_node(&self) -> BTreeMap<NodeId, usize> {
        let mut counts = BTreeMap::new();
        for (_, _, set) in self.shards() {
            for r in &set.replicas {
                *counts.entry(r.node).or_insert(0) += 1;
            }
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn topology_validates_and_sorts() {
        let n = |id| Node::new(NodeId(id), 0);
        assert_eq!(Topology::new(vec![n(0)]).unwrap_err(), MapError::ZeroNodeId);
        assert_eq!(Topology::new(vec![n(2), n(2)]).unwrap_err(), MapError::DuplicateNode(NodeId(2)));
        let heavy = Node { weight: 0, ..n(3) };
        assert_eq!(Topology::new(vec![heavy]).unwrap_err(), MapError::ZeroWeight(NodeId(3)));
        let mut t = Topology::new(vec![n(5), n(1), n(3)]).unwrap();
        let ids: Vec<u64> = t.nodes().iter().map(|x| x.id.0).collect();
        assert_eq!(ids, vec![1, 3, 5]);
        t.upsert(Node { state: NodeState::Down, ..n(3) }).unwrap();
        assert!(!t.is_up(NodeId(3)));
        t.upsert(n(4)).unwrap();
        assert!(t.is_up(NodeId(4)));
        assert_eq!(t.remove(NodeId(1)).map(|x| x.id), Some(NodeId(1)));
        assert!(!t.is_up(NodeId(1)));
        assert_eq!(t.upsert(Node { weight: 0, ..n(9) }), Err(MapError::ZeroWeight(NodeId(9))));
    }

    #[test]
    fn shard_map_validates_and_tracks_replicas() {
        let mut m = ShardMap::new();
        assert_eq!(m.add_collection(CollectionId(1), 0, 3), Err(MapError::ShardCount(0)));
        assert_eq!(m.add_collection(CollectionId(1), 4, 0), Err(MapError::ReplicationFactor(0)));
        assert_eq!(m.add_collection(CollectionId(1), 4, RF_MAX + 1), Err(MapError::ReplicationFactor(RF_MAX + 1)));
        m.add_collection(CollectionId(1), 4, 3).unwrap();
        assert_eq!(m.add_collection(CollectionId(1), 4, 3), Err(MapError::DuplicateCollection(CollectionId(1))));
        let s = ShardId { collection: CollectionId(1), index: 2 };
        assert_eq!(m.rf(s), Some(3));
        assert_eq!(m.rf(ShardId { index: 4, ..s }), None);
        assert!(m.get_mut(ShardId { index: 9, ..s }).is_err());
        let set = m.get_mut(s).unwrap();
        set.set(NodeId(7), ReplicaState::Active);
        set.set(NodeId(3), ReplicaState::CatchingUp);
        set.primary = Some(NodeId(7));
        assert_eq!(set.replicas.iter().map(|r| r.node.0).collect::<Vec<_>>(), vec![3, 7]);
        assert_eq!(set.readable().collect::<Vec<_>>(), vec![NodeId(7)]);
        assert_eq!(set.writable().count(), 2);
        set.remove(NodeId(7));
        assert_eq!(set.primary, None);
        assert_eq!(m.shard_count(), 4);
        assert_eq!(m.replicas_per_node().get(&NodeId(3)), Some(&1));
        m.set_rf(CollectionId(1), 2).unwrap();
        assert_eq!(m.set_rf(CollectionId(2), 2), Err(MapError::UnknownCollection(CollectionId(2))));
        let bytes = postcard::to_allocvec(&m).unwrap();
        let back: ShardMap = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn domains_nest() {
        let a = Node { region: 1, zone: 2, rack: 3, ..Node::new(NodeId(9), 2) };
        assert_eq!(a.domain(DomainLevel::Region), (1, 0, 0, 0));
        assert_eq!(a.domain(DomainLevel::Zone), (1, 2, 0, 0));
        assert_eq!(a.domain(DomainLevel::Rack), (1, 2, 3, 0));
        assert_eq!(a.domain(DomainLevel::Node), (1, 2, 3, 9));
    }
}
