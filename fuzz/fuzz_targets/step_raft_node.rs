//! Fuzz target: no sequence of peer messages, timers, host commands and crashes makes a Raft
//! node panic, and every node's `check_invariants()` holds after every step (the testkit's
//! `drain` checks it, and also checks persist-before-send on votes and append acks).
//!
//! The input is a structured program (via `arbitrary`): a cluster flavour, then up to 256
//! operations on a 3-node testkit cluster that has elected node 1. Forged messages are built
//! relative to the target's state (its term, last and committed index), so they reach deep
//! paths instead of bouncing off the term check, and may come from any sender id, including 0,
//! the target itself and ids outside the cluster.
//!
//! Run (stable toolchain; needs `cargo install cargo-fuzz`):
//!
//! ```text
//! cd fuzz && cargo fuzz run -s none step_raft_node -- -max_total_time=60
//! # keep going after a crash (each distinct crash is saved under artifacts/):
//! cd fuzz && cargo fuzz run -s none step_raft_node -- -max_total_time=60 -fork=2 -ignore_crashes=1
//! # reproduce, print and minimise a crash:
//! cd fuzz && cargo fuzz run -s none step_raft_node artifacts/step_raft_node/crash-<hash>
//! cd fuzz && cargo fuzz fmt -s none step_raft_node artifacts/step_raft_node/crash-<hash>
//! cd fuzz && cargo fuzz tmin -s none step_raft_node artifacts/step_raft_node/crash-<hash>
//! ```
//!
//! Core bugs it found, all fixed and pinned by `fuzz_smoke_regression_N_*` in
//! tests/tests/fuzz_smoke.rs:
//! 1. Appended entries whose terms decrease or fall below `prev_log_term`: "log terms decrease".
//! 2. A snapshot's membership installed unvalidated (unsorted, id 0, ...): membership invariants.
//! 3. A snapshot at index u64::MAX: the next append overflows `RaftLog::last_index`.
//! 4. Entries or a snapshot from a term above the message's: "leader append with an older term".
//! 5. A follower contradicting its own ack makes a probing leader re-send forever (livelock).

#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use core::time::Duration;
use libfuzzer_sys::fuzz_target;
use quorate_core::raft::testkit::Cluster;
use quorate_core::raft::{
    Command, ConfChange, ConfChangeItem, ConfTransition, Config, Entry, EntryPayload, LogIndex, Membership, Message,
    MessageBody, ReadMode, RejectHint, SnapshotMeta, Term,
};
use quorate_core::{fnv1a64, NodeId};

const MAX_OPS: usize = 256;

/// Any sender or member id: the three nodes, the reserved zero, strangers, and the extreme.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Peer {
    N1,
    N2,
    N3,
    Zero,
    Stranger(u8),
    Max,
}

impl Peer {
    fn id(self) -> NodeId {
        match self {
            Peer::N1 => NodeId(1),
            Peer::N2 => NodeId(2),
            Peer::N3 => NodeId(3),
            Peer::Zero => NodeId::NONE,
            Peer::Stranger(x) => NodeId(4 + u64::from(x)),
            Peer::Max => NodeId(u64::MAX),
        }
    }
}

/// One of the three cluster nodes.
#[derive(Arbitrary, Debug, Clone, Copy)]
struct Node(u8);

impl Node {
    fn id(self) -> NodeId {
        NodeId(u64::from(self.0 % 3) + 1)
    }
}

/// The target's state that forged values are built relative to.
struct View {
    term: u64,
    last: u64,
    committed: u64,
    now: u64,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum FTerm {
    Current,
    Prev,
    Next,
    Plus(u8),
    Zero,
    Abs(u64),
    Max,
}

impl FTerm {
    fn get(self, v: &View) -> Term {
        Term(match self {
            FTerm::Current => v.term,
            FTerm::Prev => v.term.saturating_sub(1),
            FTerm::Next => v.term.saturating_add(1),
            FTerm::Plus(d) => v.term.saturating_add(u64::from(d)),
            FTerm::Zero => 0,
            FTerm::Abs(t) => t,
            FTerm::Max => u64::MAX,
        })
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum FIndex {
    Zero,
    Last,
    Committed,
    LastPlus(u8),
    LastMinus(u8),
    CommittedMinus(u8),
    Abs(u64),
    Max,
}

impl FIndex {
    fn get(self, v: &View) -> LogIndex {
        LogIndex(match self {
            FIndex::Zero => 0,
            FIndex::Last => v.last,
            FIndex::Committed => v.committed,
            FIndex::LastPlus(d) => v.last.saturating_add(u64::from(d)),
            FIndex::LastMinus(d) => v.last.saturating_sub(u64::from(d)),
            FIndex::CommittedMinus(d) => v.committed.saturating_sub(u64::from(d)),
            FIndex::Abs(i) => i,
            FIndex::Max => u64::MAX,
        })
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum FCtx {
    Now,
    Zero,
    Abs(u64),
}

impl FCtx {
    fn get(self, v: &View) -> u64 {
        match self {
            FCtx::Now => v.now,
            FCtx::Zero => 0,
            FCtx::Abs(c) => c,
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
enum FItem {
    AddVoter(Peer),
    AddLearner(Peer),
    Remove(Peer),
}

#[derive(Arbitrary, Debug, Clone)]
struct FConfChange {
    changes: Vec<FItem>,
    /// `None`: automatic; `Some(auto_leave)`: joint.
    joint: Option<bool>,
}

impl FConfChange {
    fn get(&self) -> ConfChange {
        let changes = self
            .changes
            .iter()
            .map(|i| match i {
                FItem::AddVoter(p) => ConfChangeItem::AddVoter(p.id()),
                FItem::AddLearner(p) => ConfChangeItem::AddLearner(p.id()),
                FItem::Remove(p) => ConfChangeItem::RemoveNode(p.id()),
            })
            .collect();
        let transition = match self.joint {
            None => ConfTransition::Auto,
            Some(auto_leave) => ConfTransition::Joint { auto_leave },
        };
        ConfChange { changes, transition }
    }
}

#[derive(Arbitrary, Debug, Clone)]
enum FPayload {
    Noop,
    Command(Vec<u8>),
    ConfChange(FConfChange),
}

impl FPayload {
    fn get(&self) -> EntryPayload {
        match self {
            FPayload::Noop => EntryPayload::Noop,
            FPayload::Command(d) => EntryPayload::Command(Command::copy_from_slice(d)),
            FPayload::ConfChange(cc) => EntryPayload::ConfChange(Box::new(cc.get())),
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
struct FEntry {
    term: FTerm,
    /// `None`: the next index after the previous entry (or after `prev_log_index`).
    index: Option<FIndex>,
    payload: FPayload,
}

/// A membership as a peer may claim it: well-formed or raw (unsorted, duplicates, zero).
#[derive(Arbitrary, Debug, Clone)]
enum FMembership {
    Three,
    Voters(Vec<Peer>),
    Raw { voters: Vec<Peer>, outgoing: Vec<Peer>, learners: Vec<Peer>, learners_next: Vec<Peer>, auto_leave: bool },
}

impl FMembership {
    fn get(&self) -> Membership {
        let ids = |v: &[Peer]| v.iter().map(|p| p.id()).collect::<Vec<_>>();
        match self {
            FMembership::Three => Membership::with_voters([NodeId(1), NodeId(2), NodeId(3)]),
            FMembership::Voters(v) => Membership::with_voters(ids(v)),
            FMembership::Raw { voters, outgoing, learners, learners_next, auto_leave } => Membership {
                voters: ids(voters),
                voters_outgoing: ids(outgoing),
                learners: ids(learners),
                learners_next: ids(learners_next),
                auto_leave: *auto_leave,
            },
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
enum FBody {
    RequestVote {
        pre_vote: bool,
        last_log_index: FIndex,
        last_log_term: FTerm,
        transfer: bool,
    },
    RequestVoteResponse {
        pre_vote: bool,
        granted: bool,
    },
    AppendEntries {
        prev_log_index: FIndex,
        prev_log_term: FTerm,
        entries: Vec<FEntry>,
        leader_commit: FIndex,
        ctx: FCtx,
    },
    AppendEntriesResponse {
        index: FIndex,
        reject: Option<(FIndex, FTerm)>,
        ctx: FCtx,
    },
    Heartbeat {
        commit: FIndex,
        ctx: FCtx,
    },
    HeartbeatResponse {
        ctx: FCtx,
    },
    InstallSnapshot {
        index: FIndex,
        term: FTerm,
        membership: FMembership,
        /// True: size and digest describe `data`, sent whole from offset 0 (installs if fresh).
        consistent: bool,
        size_bytes: u64,
        digest: u64,
        offset: u64,
        data: Vec<u8>,
        ctx: FCtx,
    },
    InstallSnapshotResponse {
        index: FIndex,
        next_offset: u64,
        done: bool,
        ctx: FCtx,
    },
    TimeoutNow,
    ReadIndex {
        id: u64,
    },
    ReadIndexResponse {
        id: u64,
        index: Option<FIndex>,
    },
}

#[derive(Arbitrary, Debug, Clone)]
struct FMessage {
    term: FTerm,
    body: FBody,
}

impl FMessage {
    fn get(&self, v: &View) -> Message {
        let body = match &self.body {
            FBody::RequestVote { pre_vote, last_log_index, last_log_term, transfer } => MessageBody::RequestVote {
                pre_vote: *pre_vote,
                last_log_index: last_log_index.get(v),
                last_log_term: last_log_term.get(v),
                transfer: *transfer,
            },
            FBody::RequestVoteResponse { pre_vote, granted } => {
                MessageBody::RequestVoteResponse { pre_vote: *pre_vote, granted: *granted }
            }
            FBody::AppendEntries { prev_log_index, prev_log_term, entries, leader_commit, ctx } => {
                let prev = prev_log_index.get(v);
                let mut next = prev;
                let entries = entries
                    .iter()
                    .map(|e| {
                        let index = e.index.map_or(next.next(), |i| i.get(v));
                        next = index;
                        Entry { term: e.term.get(v), index, payload: e.payload.get() }
                    })
                    .collect();
                MessageBody::AppendEntries {
                    prev_log_index: prev,
                    prev_log_term: prev_log_term.get(v),
                    entries,
                    leader_commit: leader_commit.get(v),
                    ctx: ctx.get(v),
                    commit_only: ctx.get(v) % 2 == 1,
                }
            }
            FBody::AppendEntriesResponse { index, reject, ctx } => MessageBody::AppendEntriesResponse {
                index: index.get(v),
                reject: reject.map(|(i, t)| RejectHint { index: i.get(v), term: t.get(v) }),
                ctx: ctx.get(v),
            },
            FBody::Heartbeat { commit, ctx } => MessageBody::Heartbeat { commit: commit.get(v), ctx: ctx.get(v) },
            FBody::HeartbeatResponse { ctx } => MessageBody::HeartbeatResponse { ctx: ctx.get(v) },
            FBody::InstallSnapshot { index, term, membership, consistent, size_bytes, digest, offset, data, ctx } => {
                let (size_bytes, digest, offset) = if *consistent {
                    (data.len() as u64, fnv1a64(data), 0)
                } else {
                    // Bounded so a forged size never asks a follower to buffer a gigabyte.
                    (*size_bytes % (1 << 16), *digest, *offset)
                };
                let meta = SnapshotMeta {
                    index: index.get(v),
                    term: term.get(v),
                    membership: membership.get(),
                    size_bytes,
                    digest,
                };
                // `into()`: the message may hold the meta inline or boxed.
                MessageBody::InstallSnapshot {
                    meta: meta.into(),
                    offset,
                    data: Bytes::copy_from_slice(data),
                    ctx: ctx.get(v),
                }
            }
            FBody::InstallSnapshotResponse { index, next_offset, done, ctx } => MessageBody::InstallSnapshotResponse {
                index: index.get(v),
                next_offset: *next_offset,
                done: *done,
                ctx: ctx.get(v),
            },
            FBody::TimeoutNow => MessageBody::TimeoutNow,
            FBody::ReadIndex { id } => MessageBody::ReadIndex { id: *id },
            FBody::ReadIndexResponse { id, index } => {
                MessageBody::ReadIndexResponse { id: *id, index: index.map(|i| i.get(v)) }
            }
        };
        Message { term: self.term.get(v), body }
    }
}

#[derive(Arbitrary, Debug, Clone)]
enum Op {
    /// A forged message from any sender id to a running node.
    Inject {
        from: Peer,
        to: Node,
        msg: FMessage,
    },
    /// Deliver the next `n % 16 + 1` queued messages.
    Deliver(u8),
    DeliverAll,
    /// Lose the next queued message.
    DropNext,
    /// Deliver the next queued message twice.
    Duplicate,
    /// Move the next queued message to the back (reordering).
    Reorder,
    FireTimer(Node),
    /// Move the clock forward by up to 255 ms without firing timers.
    Advance(u8),
    /// Run every timer for up to 510 ms, delivering everything.
    RunFor(u8),
    Propose {
        node: Node,
        data: Vec<u8>,
    },
    ProposeConfChange {
        node: Node,
        cc: FConfChange,
    },
    TransferLeader {
        node: Node,
        target: Peer,
    },
    ReadIndex {
        node: Node,
        id: u64,
    },
    /// The host reports durability of an arbitrary `(index, term)`.
    Persisted {
        node: Node,
        index: FIndex,
        term: FTerm,
    },
    /// The host snapshots its state machine at the applied index.
    TakeSnapshot {
        node: Node,
        data: Vec<u8>,
    },
    Crash(Node),
    Restart(Node),
    Isolate(Node),
    Heal,
}

/// The cluster's configuration flavour.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Flavour {
    Default,
    NoPreVote,
    Lease,
    TinyWindows,
}

fn no_prevote(id: NodeId) -> Config {
    let mut cfg = Cluster::test_config(id);
    cfg.pre_vote = false;
    cfg.check_quorum = false;
    cfg
}

fn lease(id: NodeId) -> Config {
    let mut cfg = Cluster::test_config(id);
    cfg.read_mode = ReadMode::Lease { clock_drift_max_ppm: 500 };
    cfg
}

fn tiny_windows(id: NodeId) -> Config {
    let mut cfg = Cluster::test_config(id);
    cfg.append_bytes_max = 1;
    cfg.inflight_msgs_max = 2;
    cfg.snapshot_chunk_bytes = 3;
    cfg.snapshot_chunks_inflight_max = 2;
    cfg.reads_pending_max = 4;
    cfg.uncommitted_bytes_max = 256;
    cfg.entry_bytes_max = 128;
    cfg
}

#[derive(Arbitrary, Debug)]
struct Input {
    flavour: Flavour,
    ops: Vec<Op>,
}


fn view(c: &Cluster, id: NodeId) -> Option<View> {
    let r = c.nodes.get(&id)?;
    Some(View { term: r.term().0, last: r.last_index().0, committed: r.committed().0, now: c.now.as_nanos() })
}

/// The network never went quiet: two nodes answer each other forever.
struct Livelock;

/// `Cluster::deliver_all`, but reporting a livelock instead of panicking.
fn deliver_all(c: &mut Cluster) -> Result<(), Livelock> {
    c.try_deliver_all().then_some(()).ok_or(Livelock)
}

/// `Cluster::run_for`, reporting a livelock instead of panicking.
fn run_for(c: &mut Cluster, d: Duration) -> Result<(), Livelock> {
    c.try_run_for(d).then_some(()).ok_or(Livelock)
}

fn step(c: &mut Cluster, op: &Op) -> Result<(), Livelock> {
    let now = c.now;
    match op {
        Op::Inject { from, to, msg } => {
            let to = to.id();
            let Some(v) = view(c, to) else { return Ok(()) };
            let msg = msg.get(&v);
            c.node_mut(to).handle_message(now, from.id(), msg);
            c.drain(to);
        }
        Op::Deliver(n) => {
            for _ in 0..=(n % 16) {
                c.deliver_one();
            }
        }
        Op::DeliverAll => deliver_all(c)?,
        Op::DropNext => {
            c.queue.pop_front();
        }
        Op::Duplicate => {
            if let Some(m) = c.queue.front().cloned() {
                c.queue.push_front(m);
                c.deliver_one();
                c.deliver_one();
            }
        }
        Op::Reorder => {
            if let Some(m) = c.queue.pop_front() {
                c.queue.push_back(m);
            }
        }
        Op::FireTimer(n) => c.fire_timer(n.id()),
        Op::Advance(ms) => c.advance(Duration::from_millis(u64::from(*ms))),
        Op::RunFor(d) => run_for(c, Duration::from_millis(u64::from(*d) * 2))?,
        Op::Propose { node, data } => {
            let id = node.id();
            if let Some(r) = c.nodes.get_mut(&id) {
                let _ = r.propose(now, Bytes::copy_from_slice(data));
                c.drain(id);
            }
        }
        Op::ProposeConfChange { node, cc } => {
            let id = node.id();
            if let Some(r) = c.nodes.get_mut(&id) {
                let _ = r.propose_conf_change(now, cc.get());
                c.drain(id);
            }
        }
        Op::TransferLeader { node, target } => {
            let id = node.id();
            if let Some(r) = c.nodes.get_mut(&id) {
                let _ = r.transfer_leader(now, target.id());
                c.drain(id);
            }
        }
        Op::ReadIndex { node, id: read } => {
            let id = node.id();
            if let Some(r) = c.nodes.get_mut(&id) {
                let _ = r.read_index(now, *read);
                c.drain(id);
            }
        }
        Op::Persisted { node, index, term } => {
            let id = node.id();
            let Some(v) = view(c, id) else { return Ok(()) };
            c.node_mut(id).handle_persisted(now, index.get(&v), term.get(&v));
            c.drain(id);
        }
        Op::TakeSnapshot { node, data } => {
            let id = node.id();
            if let Some(r) = c.nodes.get_mut(&id) {
                let applied = r.applied();
                r.handle_snapshot(now, applied, Bytes::copy_from_slice(data)).expect("snapshot at the applied index");
                c.drain(id);
            }
        }
        Op::Crash(n) => c.crash(n.id()),
        Op::Restart(n) => {
            if !c.nodes.contains_key(&n.id()) {
                c.start(n.id());
            }
        }
        Op::Isolate(n) => c.isolate(n.id()),
        Op::Heal => c.heal(),
    }
    Ok(())
}

fuzz_target!(|input: Input| {
    let config: fn(NodeId) -> Config = match input.flavour {
        Flavour::Default => Cluster::test_config,
        Flavour::NoPreVote => no_prevote,
        Flavour::Lease => lease,
        Flavour::TinyWindows => tiny_windows,
    };
    let mut c = Cluster::new(3, config);
    c.elect(NodeId(1));
    for op in input.ops.iter().take(MAX_OPS) {
        if step(&mut c, op).is_err() {
            panic!("livelock: the network did not go quiet");
        }
        for r in c.nodes.values() {
            r.check_invariants();
        }
    }
});
