//! Quorate vs raft-rs: the same in-memory Raft workloads on both, side by side.
//!
//! Both peers run three voters in one thread, exchange messages through
//! in-memory queues (no encoding), "persist" by keeping writes in memory
//! (durable at once), do no IO and get no ticks after the election. Payloads
//! are 128 bytes, copied into a fresh buffer per proposal on both sides, and a
//! proposal counts once the leader applied it. Each workload is one criterion
//! group holding both peers, so they run in the same process and run:
//!
//! - `raft/propose_one/{quorate,raftrs}`: one proposal in flight;
//! - `raft/propose_batch_{64,256}/...`: one batch in flight, proposed as a unit;
//! - `raft/read_index_one/...`: one ReadIndex read in flight (served once the
//!   read index is known and the leader applied up to it).
//!
//! The raft-rs side lives in `peer_raftrs.rs`. The Quorate host below mirrors
//! it: node 1 is elected at setup; config matches raft-rs's (pre-vote and
//! check-quorum off, `ReadMode::Safe` like raft-rs's `ReadOnlySafe`, 256
//! in-flight appends, 1 MiB per append); messages wait in one FIFO
//! `VecDeque<(from, to, Message)>` and are moved, never cloned; persisted
//! entries are moved into a per-node in-memory log; logs are compacted every
//! 10k entries (Quorate: an empty snapshot handed over on
//! `Event::SnapshotWanted`; raft-rs: `MemStorage::compact`). The virtual clock
//! advances 1 µs per operation so each ReadIndex gets its own confirmation
//! round; timers are never fired after the election, so that is invisible to
//! everything else. Differences that remain: raft-rs merges appends queued
//! for one follower within a `Ready` (`batch_append`); Quorate hands each
//! input's outputs over at once instead.

mod peer_raftrs;

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use peer_raftrs::RaftRsCluster;
use quorate_core::raft::{
    Action, Command, Config, Entry, EntryPayload, Event, HardState, LogIndex, Membership, Message, Raft, Recovered,
    Role, Term,
};
use quorate_core::{Instant, NodeId};

/// Payload size of every proposal, in bytes.
const PAYLOAD: usize = 128;

/// Batch sizes benchmarked with `propose_batch`.
const BATCHES: [usize; 2] = [64, 256];

/// Number of voters in each cluster.
const NODES: usize = 3;

/// Index (into `nodes`) of the node elected leader (node id 1).
const LEADER: usize = 0;

/// Snapshot (and so compact) after this many applied entries, like raft-rs's harness.
const COMPACT_EVERY: u64 = 10_000;

/// Virtual time that passes per operation (never enough to matter: no timer is fired).
const STEP: Duration = Duration::from_micros(1);

/// What one Quorate node persisted: kept in memory, durable at once.
#[derive(Default)]
struct Disk {
    /// The last persisted hard state.
    hard_state: HardState,
    /// Index of the last persisted snapshot (0 if none).
    snapshot_index: LogIndex,
    /// Persisted entries; `entries[i].index == snapshot_index + 1 + i`.
    entries: Vec<Entry>,
}

impl Disk {
    /// Replaces every entry at or after `first_index` with copies of `entries`, as a disk
    /// write would (raft-rs's `MemStorage::append` copies too).
    fn write_entries(&mut self, first_index: LogIndex, entries: &[Entry]) {
        let keep = first_index.0.saturating_sub(self.snapshot_index.0 + 1) as usize;
        self.entries.truncate(keep);
        self.entries.extend_from_slice(entries);
    }

    /// The persisted entry at `index`, if any.
    fn entry(&self, index: LogIndex) -> Option<&Entry> {
        let offset = index.0.checked_sub(self.snapshot_index.0 + 1)?;
        self.entries.get(usize::try_from(offset).ok()?)
    }

    /// Stores a snapshot at `(index, term)`: keeps the log if it holds that entry, drops it otherwise.
    fn write_snapshot(&mut self, index: LogIndex, term: Term) {
        if self.entry(index).is_none_or(|e| e.term != term) {
            self.entries.clear();
            self.snapshot_index = index;
        }
    }

    /// Deletes the entries up to `upto`, which a stored snapshot covers.
    fn compact(&mut self, upto: LogIndex) {
        let drop = upto.0.saturating_sub(self.snapshot_index.0) as usize;
        self.entries.drain(..drop.min(self.entries.len()));
        self.snapshot_index = self.snapshot_index.max(upto);
    }
}

/// The host side of one Quorate node: its disk, state machine and pending reports.
#[derive(Default)]
struct Host {
    /// The node's in-memory "disk".
    disk: Disk,
    /// Index of the last entry applied to the (no-op) state machine.
    applied: u64,
    /// Command payload bytes applied (keeps apply observable).
    applied_bytes: u64,
    /// Snapshots restored from a leader (expected to stay 0).
    snapshots: u64,
    /// Writes made durable since the last `handle_persisted` (reused buffer).
    durable: Vec<(LogIndex, Term)>,
    /// Set by `Event::SnapshotWanted`: hand Raft a snapshot after the drain.
    snapshot_wanted: bool,
    /// The last `Event::ReadReady` seen: `(id, index)`.
    read_ready: Option<(u64, LogIndex)>,
}

impl Host {
    /// Carries out one action of node `me`; messages go to the back of `queue`.
    fn carry_out(&mut self, me: NodeId, node: &Raft, action: Action, queue: &mut VecDeque<(NodeId, NodeId, Message)>) {
        match action {
            Action::Send { to, message } => queue.push_back((me, to, message)),
            Action::PersistHardState(hs) => self.disk.hard_state = hs,
            Action::PersistEntries { first_index, last_index } => {
                let entries = node.entries(first_index, last_index);
                if let Some(last) = entries.last() {
                    self.durable.push((last.index, last.term));
                }
                self.disk.write_entries(first_index, entries);
            }
            Action::PersistSnapshot(s) => {
                self.durable.push((s.meta.index, s.meta.term));
                self.disk.write_snapshot(s.meta.index, s.meta.term);
            }
            Action::CompactLog { upto } => self.disk.compact(upto),
            Action::ApplyEntries { first_index, last_index } => {
                for e in node.entries(first_index, last_index) {
                    debug_assert_eq!(e.index.0, self.applied + 1, "entries applied out of order");
                    if let EntryPayload::Command(data) = &e.payload {
                        self.applied_bytes += data.len() as u64;
                    }
                    self.applied = e.index.0;
                }
            }
            Action::ApplySnapshot(s) => {
                self.applied = s.meta.index.0;
                self.snapshots += 1;
            }
            Action::Event(Event::SnapshotWanted { .. }) => self.snapshot_wanted = true,
            Action::Event(Event::ReadReady { id, index }) => self.read_ready = Some((id, index)),
            Action::Event(Event::ReadFailed { id }) => panic!("read {id} failed"),
            Action::Event(_) => {}
        }
    }
}

/// Three Quorate voters driven in one thread over one in-memory FIFO queue.
struct QuorateCluster {
    /// The voters; `nodes[i]` has id `i + 1`.
    nodes: Vec<Raft>,
    /// The host state of each voter, indexed like `nodes`.
    hosts: Vec<Host>,
    /// Messages in flight, delivered in order.
    queue: VecDeque<(NodeId, NodeId, Message)>,
    /// The shared virtual clock.
    now: Instant,
    /// Id of the last ReadIndex issued.
    next_read_id: u64,
}

impl QuorateCluster {
    /// Builds three voters (ids 1, 2, 3), elects node 1 and settles the cluster.
    fn new() -> Self {
        let ids = (1..=NODES as u64).map(NodeId);
        let nodes = ids
            .clone()
            .map(|id| {
                let mut cfg = Config::new(id);
                cfg.pre_vote = false;
                cfg.check_quorum = false;
                cfg.inflight_msgs_max = 256;
                cfg.append_bytes_max = 1 << 20;
                cfg.snapshot_threshold_entries = COMPACT_EVERY;
                let voters = Membership::with_voters(ids.clone());
                Raft::new(cfg, voters, Recovered::default(), id.0, Instant::ZERO).expect("valid quorate config")
            })
            .collect();
        let mut c = Self {
            nodes,
            hosts: (0..NODES).map(|_| Host::default()).collect(),
            queue: VecDeque::new(),
            now: Instant::ZERO,
            next_read_id: 0,
        };
        for i in 0..NODES {
            c.drain(i);
        }
        c.now = c.nodes[LEADER].poll_timeout().expect("election timer");
        c.nodes[LEADER].handle_timeout(c.now);
        c.drain(LEADER);
        c.settle();
        assert_eq!(c.nodes[LEADER].role(), Role::Leader, "node 1 must win");
        assert!(c.nodes.iter().all(|n| n.leader() == Some(NodeId(1))));
        c
    }

    /// Id of the node that believes it is leader (0 if none).
    fn leader_id(&self) -> u64 {
        self.nodes.iter().find(|n| n.role() == Role::Leader).map_or(0, |n| n.id().0)
    }

    /// Index of the last entry applied by the leader's host.
    fn applied(&self) -> u64 {
        self.hosts[LEADER].applied
    }

    /// Command payload bytes applied by the leader's host.
    fn applied_bytes(&self) -> u64 {
        self.hosts[LEADER].applied_bytes
    }

    /// The leader's last log index.
    fn last_index(&self) -> u64 {
        self.nodes[LEADER].last_index().0
    }

    /// Entries held in the leader's in-memory log (bounded by snapshots).
    fn leader_log_len(&self) -> u64 {
        let n = &self.nodes[LEADER];
        n.last_index().0 + 1 - n.first_index().0
    }

    /// Largest number of entries any host's disk holds.
    fn max_disk_len(&self) -> usize {
        self.hosts.iter().map(|h| h.disk.entries.len()).max().unwrap_or(0)
    }

    /// Snapshots installed from a leader by any node (expected to stay 0).
    fn snapshots_installed(&self) -> u64 {
        self.hosts.iter().map(|h| h.snapshots).sum()
    }

    /// Moves the virtual clock one step forward.
    fn tick(&mut self) {
        self.now = self.now.saturating_add(STEP);
    }

    /// Proposes one entry on the leader and drives until the leader applies it.
    fn propose_one(&mut self, payload: &[u8]) {
        self.tick();
        let target = self.nodes[LEADER].propose(self.now, Command::copy_from_slice(payload)).expect("leader accepts");
        self.drain(LEADER);
        self.drive_until(|c| c.hosts[LEADER].applied >= target.0);
    }

    /// Proposes every payload as one batch on the leader, then drives until all are applied there.
    fn propose_batch(&mut self, payloads: &[Vec<u8>]) {
        self.tick();
        let batch = payloads.iter().map(|p| Command::copy_from_slice(p));
        let (_, last) = self.nodes[LEADER].propose_batch(self.now, batch).expect("leader accepts");
        self.drain(LEADER);
        self.drive_until(|c| c.hosts[LEADER].applied >= last.0);
    }

    /// Issues one ReadIndex on the leader and drives until it is served.
    ///
    /// Served means `Event::ReadReady` for this id came out and the leader's
    /// host applied at least its index.
    fn read_index_one(&mut self) {
        self.tick();
        self.next_read_id += 1;
        let id = self.next_read_id;
        self.nodes[LEADER].read_index(self.now, id).expect("read accepted");
        self.drain(LEADER);
        self.drive_until(|c| {
            let h = &c.hosts[LEADER];
            h.read_ready.is_some_and(|(rid, idx)| rid == id && h.applied >= idx.0)
        });
    }

    /// Delivers messages until the queue is empty.
    fn settle(&mut self) {
        while self.deliver_one() {}
    }

    /// Delivers messages until `done` holds; panics if the queue empties first.
    fn drive_until(&mut self, done: impl Fn(&Self) -> bool) {
        while !done(self) {
            assert!(self.deliver_one(), "quorate cluster went quiescent before the awaited event");
        }
    }

    /// Delivers the oldest queued message and drains its recipient; false if none was queued.
    fn deliver_one(&mut self) -> bool {
        let Some((from, to, message)) = self.queue.pop_front() else {
            return false;
        };
        let i = (to.0 - 1) as usize;
        self.nodes[i].handle_message(self.now, from, message);
        self.drain(i);
        true
    }

    /// Carries out node `i`'s actions in order, reporting durability and snapshots until quiet.
    fn drain(&mut self, i: usize) {
        let (node, host, now) = (&mut self.nodes[i], &mut self.hosts[i], self.now);
        let me = node.id();
        loop {
            while let Some(action) = node.poll_action() {
                host.carry_out(me, node, action, &mut self.queue);
            }
            if host.snapshot_wanted {
                host.snapshot_wanted = false;
                // The state machine is a no-op, so its snapshot is empty.
                let at = LogIndex(host.applied);
                node.handle_snapshot(now, at, Bytes::new()).expect("snapshot at the applied index");
                continue;
            }
            if host.durable.is_empty() {
                return;
            }
            for (index, term) in host.durable.drain(..) {
                node.handle_persisted(now, index, term);
            }
        }
    }
}

/// What the sanity check needs from either peer's harness.
trait Harness {
    /// The leader's id.
    fn leader_id(&self) -> u64;
    /// The leader's applied index.
    fn applied(&self) -> u64;
    /// Command payload bytes applied on the leader.
    fn applied_bytes(&self) -> u64;
    /// Entries in the leader's in-memory log.
    fn leader_log_len(&self) -> u64;
    /// One proposal, driven until applied on the leader.
    fn propose_one(&mut self, payload: &[u8]);
    /// One batch, driven until applied on the leader.
    fn propose_batch(&mut self, payloads: &[Vec<u8>]);
    /// One ReadIndex read, driven until served.
    fn read_index_one(&mut self);
}

/// Implements [`Harness`] by forwarding to the type's inherent methods of the same names.
macro_rules! harness {
    ($t:ty) => {
        impl Harness for $t {
            fn leader_id(&self) -> u64 {
                <$t>::leader_id(self)
            }
            fn applied(&self) -> u64 {
                <$t>::applied(self)
            }
            fn applied_bytes(&self) -> u64 {
                <$t>::applied_bytes(self)
            }
            fn leader_log_len(&self) -> u64 {
                <$t>::leader_log_len(self)
            }
            fn propose_one(&mut self, payload: &[u8]) {
                <$t>::propose_one(self, payload)
            }
            fn propose_batch(&mut self, payloads: &[Vec<u8>]) {
                <$t>::propose_batch(self, payloads)
            }
            fn read_index_one(&mut self) {
                <$t>::read_index_one(self)
            }
        }
    };
}

harness!(QuorateCluster);
harness!(RaftRsCluster);

/// Checks that a harness really commits and reads, so a benchmark cannot measure nothing.
fn checked<H: Harness>(mut c: H) -> H {
    assert_eq!(c.leader_id(), 1, "node 1 must lead after setup");
    let payload = vec![7u8; PAYLOAD];
    let before = c.applied();
    c.propose_one(&payload);
    assert_eq!(c.applied(), before + 1, "one proposal must apply one entry");
    for n in BATCHES {
        let batch = vec![payload.clone(); n];
        let (before, bytes) = (c.applied(), c.applied_bytes());
        c.propose_batch(&batch);
        assert_eq!(c.applied(), before + n as u64, "batch must apply n entries");
        assert_eq!(c.applied_bytes(), bytes + (n * PAYLOAD) as u64);
    }
    let (before, len) = (c.applied(), c.leader_log_len());
    c.read_index_one();
    assert_eq!(c.applied(), before, "a read must not apply entries");
    assert_eq!(c.leader_log_len(), len, "a read must not append entries");
    c
}

/// A Quorate cluster that passed the sanity check.
fn checked_quorate() -> QuorateCluster {
    checked(QuorateCluster::new())
}

/// A raft-rs cluster that passed the sanity check.
fn checked_raftrs() -> RaftRsCluster {
    checked(RaftRsCluster::new())
}

/// Checks that long runs stay bounded on both sides: logs compact, no snapshot is sent.
fn check_compaction() {
    let payload = vec![0xabu8; PAYLOAD];
    let mut q = checked_quorate();
    let mut r = checked_raftrs();
    for _ in 0..25_000 {
        q.propose_one(&payload);
        r.propose_one(&payload);
    }
    let bound = COMPACT_EVERY + 500;
    assert!(q.leader_log_len() <= bound, "quorate log: {}", q.leader_log_len());
    assert!(q.max_disk_len() as u64 <= bound, "quorate disk: {}", q.max_disk_len());
    assert!(r.leader_log_len() <= bound, "raft-rs log: {}", r.leader_log_len());
    assert_eq!(q.snapshots_installed(), 0, "compaction must not force snapshots");
    assert_eq!(r.snapshots_applied(), 0, "compaction must not force snapshots");
}

/// Benchmarks one proposal in flight on both peers.
fn bench_propose_one(crit: &mut Criterion) {
    check_compaction();
    let payload = vec![0xabu8; PAYLOAD];
    let mut g = crit.benchmark_group("raft/propose_one");
    g.throughput(Throughput::Elements(1));
    let mut q = checked_quorate();
    g.bench_function("quorate", |b| {
        b.iter(|| {
            let before = q.applied();
            q.propose_one(&payload);
            assert_eq!(q.applied(), before + 1);
        })
    });
    let mut r = checked_raftrs();
    g.bench_function("raftrs", |b| {
        b.iter(|| {
            let before = r.applied();
            r.propose_one(&payload);
            assert_eq!(r.applied(), before + 1);
        })
    });
    g.finish();
}

/// Benchmarks one batch of 64 or 256 proposals in flight on both peers.
fn bench_propose_batch(crit: &mut Criterion) {
    let payload = vec![0xabu8; PAYLOAD];
    for n in BATCHES {
        let batch = vec![payload.clone(); n];
        let mut g = crit.benchmark_group(format!("raft/propose_batch_{n}"));
        g.throughput(Throughput::Elements(n as u64));
        let mut q = checked_quorate();
        g.bench_function("quorate", |b| {
            b.iter(|| {
                let before = q.applied();
                q.propose_batch(&batch);
                assert_eq!(q.applied(), before + n as u64);
            })
        });
        let mut r = checked_raftrs();
        g.bench_function("raftrs", |b| {
            b.iter(|| {
                let before = r.applied();
                r.propose_batch(&batch);
                assert_eq!(r.applied(), before + n as u64);
            })
        });
        g.finish();
    }
}

/// Benchmarks one ReadIndex read in flight on both peers.
fn bench_read_index_one(crit: &mut Criterion) {
    let mut g = crit.benchmark_group("raft/read_index_one");
    g.throughput(Throughput::Elements(1));
    let mut q = checked_quorate();
    let (applied, last) = (q.applied(), q.last_index());
    let mut reads = 0u64;
    g.bench_function("quorate", |b| {
        b.iter(|| {
            q.read_index_one();
            reads += 1;
        })
    });
    assert_eq!(q.next_read_id, reads + 1, "every read must be served");
    assert_eq!((q.applied(), q.last_index()), (applied, last), "reads must not append");
    let mut r = checked_raftrs();
    let (applied, len) = (r.applied(), r.leader_log_len());
    g.bench_function("raftrs", |b| b.iter(|| r.read_index_one()));
    assert_eq!((r.applied(), r.leader_log_len()), (applied, len), "reads must not append");
    g.finish();
}

criterion_group!(benches, bench_propose_one, bench_propose_batch, bench_read_index_one);
criterion_main!(benches);
