//! raft-rs (`raft` 0.7) side of the Raft comparison benchmark.
//!
//! Three voters live in one thread and talk through in-memory queues; there
//! is no IO and no ticking (no heartbeats or elections during measurement).
//! Each node uses `RawNode<MemStorage>` and handles `Ready` in the order the
//! raft-rs documentation and `examples/five_mem_node` prescribe:
//!
//! 1. `ready.messages()` are sent right away (only non-empty on the leader,
//!    which may replicate before its own write, thesis §10.2.1);
//! 2. a snapshot, if any, is applied to storage;
//! 3. `ready.committed_entries()` are applied (they are already durable);
//! 4. `ready.entries()` are appended and the `HardState` stored;
//! 5. `ready.persisted_messages()` are sent;
//! 6. `advance(ready)` yields a `LightReady`: its commit index is stored, its
//!    messages are sent, its committed entries applied, then
//!    `advance_apply()` is called.
//!
//! Config (everything else is raft-rs's `Config::default()`): election_tick
//! 10, heartbeat_tick 3, max_size_per_msg 1 MiB, max_inflight_msgs 256,
//! check_quorum false, pre_vote false, read_only_option Safe (ReadIndex
//! confirms leadership with a heartbeat round), batch_append true (append
//! messages queued for the same follower are merged), skip_bcast_commit false
//! (a commit advance is broadcast at once, as raft-rs does by default).
//! Logging goes to `slog::Discard`; no ticks are issued after the election.
//!
//! A batch is proposed as one `MsgPropose` carrying all its entries, the
//! raft-rs counterpart of a batched propose (one log append, one
//! `bcast_append`). `RawNode::propose` is used for single proposals.

// Included by several bench targets, each of which uses only part of it.
#![allow(dead_code)]

use std::collections::VecDeque;

use raft::eraftpb::{ConfState, Entry, Message, MessageType};
use raft::storage::MemStorage;
use raft::{Config, RawNode, StateRole, Storage};

/// Number of voters in the cluster.
const NODES: usize = 3;

/// Index (into `nodes`) of the node that is elected leader (raft id 1).
const LEADER: usize = 0;

/// The leader compacts every node's log after this many applied entries.
const COMPACT_EVERY: u64 = 10_000;

/// One raft-rs voter plus the state the harness keeps for it.
struct Node {
    /// The raft-rs state machine.
    raw: RawNode<MemStorage>,
    /// Index of the last entry handed to this node's application.
    applied: u64,
}

/// Three raft-rs voters driven in one thread over in-memory queues.
pub struct RaftRsCluster {
    /// The voters; `nodes[i]` has raft id `i + 1`.
    nodes: Vec<Node>,
    /// Per-node inbound message queues, indexed like `nodes`.
    inboxes: [VecDeque<Message>; NODES],
    /// Counter that makes every ReadIndex context unique.
    next_read_ctx: u64,
    /// Index returned by the ReadState whose context is `next_read_ctx`.
    read_done: Option<u64>,
    /// Leader applied index at the last log compaction.
    last_compact: u64,
    /// Total payload bytes applied on the leader (keeps apply observable).
    applied_bytes: u64,
    /// Snapshots applied by any node.
    snapshots: u64,
}

impl RaftRsCluster {
    /// Builds three voters (ids 1, 2, 3), elects node 1 and settles the cluster.
    pub fn new() -> Self {
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let nodes = (1..=NODES as u64)
            .map(|id| {
                let cfg = Config {
                    id,
                    election_tick: 10,
                    heartbeat_tick: 3,
                    max_size_per_msg: 1 << 20,
                    max_inflight_msgs: 256,
                    check_quorum: false,
                    pre_vote: false,
                    batch_append: true,
                    ..Config::default()
                };
                let storage = MemStorage::new_with_conf_state(ConfState::from((vec![1, 2, 3], vec![])));
                let raw = RawNode::new(&cfg, storage, &logger).expect("valid raft-rs config");
                Node { raw, applied: 0 }
            })
            .collect();
        let mut cluster = Self {
            nodes,
            inboxes: Default::default(),
            next_read_ctx: 0,
            read_done: None,
            last_compact: 0,
            applied_bytes: 0,
            snapshots: 0,
        };
        cluster.nodes[LEADER].raw.campaign().expect("campaign");
        cluster.settle();
        assert_eq!(cluster.nodes[LEADER].raw.raft.state, StateRole::Leader);
        cluster
    }

    /// Raft id of the node that currently believes it is leader (0 if none).
    pub fn leader_id(&self) -> u64 {
        self.nodes.iter().find(|n| n.raw.raft.state == StateRole::Leader).map_or(0, |n| n.raw.raft.id)
    }

    /// Index of the last entry applied on the leader.
    pub fn applied(&self) -> u64 {
        self.nodes[LEADER].applied
    }

    /// Total payload bytes applied on the leader so far.
    pub fn applied_bytes(&self) -> u64 {
        self.applied_bytes
    }

    /// Number of entries held in the leader's `MemStorage` (bounded by compaction).
    pub fn leader_log_len(&self) -> u64 {
        let store = self.nodes[LEADER].raw.store();
        store.last_index().expect("last index") + 1 - store.first_index().expect("first index")
    }

    /// Number of snapshots any node has applied (expected to stay 0).
    pub fn snapshots_applied(&self) -> u64 {
        self.snapshots
    }

    /// Proposes one entry on the leader and drives until the leader applies it.
    pub fn propose_one(&mut self, payload: &[u8]) {
        let leader = &mut self.nodes[LEADER].raw;
        leader.propose(Vec::new(), payload.to_vec()).expect("propose");
        let target = leader.raft.raft_log.last_index();
        self.drive_until(|c| c.nodes[LEADER].applied >= target);
        self.maybe_compact();
    }

    /// Proposes every payload on the leader, then drives until all are applied there.
    ///
    /// The batch goes in as one `MsgPropose` carrying all entries (one log
    /// append, one `bcast_append`), raft-rs's own way to propose a batch.
    pub fn propose_batch(&mut self, payloads: &[Vec<u8>]) {
        let leader = &mut self.nodes[LEADER].raw;
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgPropose);
        m.from = leader.raft.id;
        m.entries = payloads.iter().map(|p| Entry { data: p.clone().into(), ..Entry::default() }).collect();
        leader.step(m).expect("propose batch");
        let target = leader.raft.raft_log.last_index();
        self.drive_until(|c| c.nodes[LEADER].applied >= target);
        self.maybe_compact();
    }

    /// Issues one ReadIndex on the leader and drives until it is served.
    ///
    /// Served means the matching `ReadState` came out of the leader's `Ready`
    /// and the leader's applied index is at least its read index.
    pub fn read_index_one(&mut self) {
        self.next_read_ctx += 1;
        self.read_done = None;
        let ctx = self.next_read_ctx.to_le_bytes().to_vec();
        self.nodes[LEADER].raw.read_index(ctx);
        self.drive_until(|c| c.read_done.is_some_and(|idx| c.nodes[LEADER].applied >= idx));
    }

    /// Drives all nodes until no queue holds a message and no node has a Ready.
    pub fn settle(&mut self) {
        self.drive_until(|c| c.inboxes.iter().all(VecDeque::is_empty) && c.nodes.iter().all(|n| !n.raw.has_ready()));
    }

    /// Services nodes round-robin until `done` holds; panics if the cluster stalls first.
    fn drive_until(&mut self, done: impl Fn(&Self) -> bool) {
        if done(self) {
            return;
        }
        loop {
            let mut progressed = false;
            for i in 0..NODES {
                progressed |= self.service(i);
                if done(self) {
                    return;
                }
            }
            assert!(progressed, "raft-rs cluster went quiescent before the awaited event");
        }
    }

    /// Delivers node `i`'s inbox and handles one Ready; returns whether it did anything.
    fn service(&mut self, i: usize) -> bool {
        let mut progressed = false;
        let raw = &mut self.nodes[i].raw;
        while let Some(m) = self.inboxes[i].pop_front() {
            raw.step(m).expect("step");
            progressed = true;
        }
        if raw.has_ready() {
            self.handle_ready(i);
            progressed = true;
        }
        progressed
    }

    /// Handles one `Ready` of node `i` in raft-rs's documented order.
    fn handle_ready(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let mut rd = node.raw.ready();

        // Leader only: replicate before the local write.
        if !rd.messages().is_empty() {
            route(&mut self.inboxes, rd.take_messages());
        }
        if !rd.read_states().is_empty() {
            let want = self.next_read_ctx.to_le_bytes();
            for rs in rd.take_read_states() {
                if rs.request_ctx == want {
                    self.read_done = Some(rs.index);
                }
            }
        }
        {
            let store = node.raw.mut_store();
            let mut core = store.wl();
            if !rd.snapshot().is_empty() {
                let snap = rd.snapshot().clone();
                node.applied = snap.get_metadata().index;
                core.apply_snapshot(snap).expect("apply snapshot");
                self.snapshots += 1;
            }
        }
        let bytes = apply(&mut node.applied, rd.take_committed_entries());
        {
            let store = node.raw.mut_store();
            let mut core = store.wl();
            if !rd.entries().is_empty() {
                core.append(rd.entries()).expect("append");
            }
            if let Some(hs) = rd.hs() {
                core.set_hardstate(hs.clone());
            }
        }
        if !rd.persisted_messages().is_empty() {
            route(&mut self.inboxes, rd.take_persisted_messages());
        }

        let mut light = node.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            node.raw.mut_store().wl().mut_hard_state().set_commit(commit);
        }
        if !light.messages().is_empty() {
            route(&mut self.inboxes, light.take_messages());
        }
        let bytes = bytes + apply(&mut node.applied, light.take_committed_entries());
        node.raw.advance_apply();
        if i == LEADER {
            self.applied_bytes += bytes;
        }
    }

    /// Compacts every node's log up to the lowest applied index, every `COMPACT_EVERY` entries.
    fn maybe_compact(&mut self) {
        let applied = self.nodes[LEADER].applied;
        if applied < self.last_compact + COMPACT_EVERY {
            return;
        }
        let upto = self.nodes.iter().map(|n| n.applied).min().unwrap_or(0);
        for n in &mut self.nodes {
            n.raw.mut_store().wl().compact(upto).expect("compact");
        }
        self.last_compact = applied;
    }
}

impl Default for RaftRsCluster {
    /// Same as [`RaftRsCluster::new`].
    fn default() -> Self {
        Self::new()
    }
}

/// Moves each message into the inbox of its destination node.
fn route(inboxes: &mut [VecDeque<Message>; NODES], msgs: Vec<Message>) {
    for m in msgs {
        inboxes[(m.to - 1) as usize].push_back(m);
    }
}

/// "Applies" committed entries (a no-op state machine); returns the payload bytes seen.
fn apply(applied: &mut u64, entries: Vec<Entry>) -> u64 {
    let mut bytes = 0;
    for e in &entries {
        debug_assert_eq!(e.index, *applied + 1, "entries applied out of order");
        bytes += e.data.len() as u64;
        *applied = e.index;
    }
    bytes
}
