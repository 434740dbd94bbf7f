//! Replication of vector entries: one [`Replica`] per shard replica, multi-master.
//!
//! Any replica coordinates a write: it stamps the write with a [`Dot`] and an [`Hlc`]
//! timestamp, merges it into its own state of the key, and sends the whole key state to the
//! other replicas, counting acknowledgements until the write's [`Consistency`] is met or its
//! timeout runs out. "Not acknowledged" means *unknown*, never *lost*: the write stays on the
//! coordinator and on whichever replicas took it, and reaches the rest later. Reads gather
//! states from enough replicas, merge them, and write the merged state back to those found
//! behind (**read repair**). A write a replica did not acknowledge in time is remembered as a
//! **hint** (durably, through the host) and handed to it when it answers again. Every
//! replica periodically compares its **hash tree** ([`merkle`]) with a peer's, level by
//! level, and exchanges only the keys under differing nodes, in bounded batches through a
//! per-peer **token bucket**; a replica whose disk was wiped, or a new one, catches up this
//! way with no manual step. Everything that happens to the data is recorded in a resumable
//! **change stream** ([`stream`]).
//!
//! Conflicts are settled per collection ([`ConflictMode`]): last-write-wins by timestamp then
//! node id; multi-value, keeping concurrent writes as siblings that reads surface and a
//! host-given [`Resolver`] may merge; or a CRDT map whose fields merge one by one. See
//! [`state`] for why every merge is a join, and [`version`] for why version vectors stay exact.
//!
//! # Driving contract
//! [`Replica`] has the crate-wide [`Machine`] shape:
//! - inputs: [`Replica::handle_message`] (or [`Replica::handle_datagram`] for raw bytes),
//!   [`Replica::handle_timeout`];
//! - commands: [`Replica::write`], [`Replica::write_batch`], [`Replica::delete`],
//!   [`Replica::get`], [`Replica::force_sync`], [`Replica::add_replica`],
//!   [`Replica::remove_replica`];
//! - outputs: [`Replica::poll_action`] until `None`, then [`Replica::poll_timeout`].
//!
//! Carry out actions **in order**, with one duty: every [`Action::Persist`] must be durable
//! before any [`Action::Send`] or [`Action::Event`] polled after it leaves the process. That
//! is what makes an acknowledgement (a `Send`) or a client's "written" (an `Event`) a promise
//! that the data is on disk. Recovery is the constructor: [`Replica::new`] takes what the host
//! persisted ([`Recovered`]).
//!
//! ```
//! use quorate_core::replication::{Action, Config, ConflictMode, Consistency, Entry, Event, Op, Recovered, Replica};
//! use quorate_core::replication::state::{EntryId, Visible};
//! use quorate_core::{Instant, Machine, NodeId};
//!
//! let ids = vec![NodeId(1), NodeId(2), NodeId(3)];
//! let mut replicas: Vec<Replica> = ids
//!     .iter()
//!     .map(|&id| {
//!         let cfg = Config::new(id, ids.clone(), ConflictMode::LastWriteWins);
//!         Replica::new(cfg, Recovered::default(), id.0, Instant::ZERO).expect("valid config")
//!     })
//!     .collect();
//! let now = Instant::from_nanos(1_000_000_000);
//! let entry = Entry { vector: vec![0.1, 0.2], metadata: Default::default() };
//! let receipt = replicas[0].write(now, EntryId(7), Op::Put(entry.clone()), None, Consistency::Quorum).unwrap();
//! let mut done = false;
//! // A perfect network: deliver every message at once; "persist" by doing nothing.
//! loop {
//!     let mut moved = false;
//!     for i in 0..replicas.len() {
//!         while let Some(action) = replicas[i].poll_action() {
//!             match action {
//!                 Action::Send { to, message } => {
//!                     let from = replicas[i].id();
//!                     let j = ids.iter().position(|&x| x == to).unwrap();
//!                     replicas[j].handle_message(now, from, message).expect("well-formed");
//!                     moved = true;
//!                 }
//!                 Action::Event(Event::WriteDone { ticket, acked, .. }) if ticket == receipt.ticket => done = acked,
//!                 _ => {}
//!             }
//!         }
//!     }
//!     if !moved {
//!         break;
//!     }
//! }
//! assert!(done, "acknowledged by a quorum");
//! assert_eq!(replicas[2].state(EntryId(7)).map(|s| s.visible()), Some(Visible::One(entry)));
//! ```

pub mod config;
mod coordinator;
pub mod merkle;
pub mod message;
pub mod state;
pub mod store;
pub mod stream;
mod sync;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
#[cfg(test)]
mod tests;
pub mod throttle;
mod upkeep;
pub mod version;

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::vec::Vec;
use core::time::Duration;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use config::{Config, ConfigError, Consistency, PlantedBug, Resolver};
pub use message::{Limits, Message, MessageError, Origin};
pub use state::{ConflictMode, Context, Entry, EntryId, KeyState, Metadata, Op, Scalar, Stamp, Visible};
pub use stream::{Change, ChangeEvent, Cursor, StreamError};
pub use version::{Actor, Causality, Dot, Hlc, HlcError, VersionVector};

use crate::machine::Machine;
use crate::time::{earliest, Instant};
use crate::NodeId;
use coordinator::{PendingRead, PendingWrite};
use store::Store;
use sync::Session;
use throttle::TokenBucket;
use upkeep::{Owner, Tomb};
use version::HlcClock;

/// What the host must do, in order. See the module doc for the one duty order carries.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Send `message` to replica `to`. Every `Persist` polled before it must be durable first.
    Send {
        /// The recipient.
        to: NodeId,
        /// The message.
        message: Message,
    },
    /// Make this durable (see [`Durable`]).
    Persist(Durable),
    /// News for the host. Every `Persist` polled before it must be durable before the host
    /// passes the news on (a `WriteDone` tells a client its data is safe).
    Event(Event),
}

/// A durable change the host must make.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Durable {
    /// Write [`Replica::state`] of `id` as it is now (read it while draining, before the next
    /// input); if it is `None`, delete the key. States are lent, not copied.
    Entry {
        /// The key.
        id: EntryId,
    },
    /// Remember that `target` still needs `id` (a hinted write).
    Hint {
        /// The replica that missed the write.
        target: NodeId,
        /// The key.
        id: EntryId,
    },
    /// Forget that hint.
    HintDone {
        /// The replica.
        target: NodeId,
        /// The key.
        id: EntryId,
    },
    /// This replica's identity and how many dot counters it may use before persisting more.
    Identity(Identity),
}

/// Which life of its storage a replica is in, and the dot counters reserved for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Chosen when the storage started empty; never reused.
    pub life: u32,
    /// Dot counters up to this may be used without persisting again.
    pub counters_reserved: u64,
}

/// What the host recovered from its storage, handed to [`Replica::new`]. `Default` is an
/// empty (new or wiped) replica.
#[derive(Clone, Debug, Default)]
pub struct Recovered {
    /// The last persisted identity (`None` for empty storage: a new life begins).
    pub identity: Option<Identity>,
    /// Every persisted key state.
    pub entries: Vec<(EntryId, KeyState)>,
    /// Every persisted hint, as `(target, key)`.
    pub hints: Vec<(NodeId, EntryId)>,
}

/// Names a write or read in its completion event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(pub u64);

/// What a write command returns at once: its ticket and the stamp given to each entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteReceipt {
    /// Named again in [`Event::WriteDone`].
    pub ticket: Ticket,
    /// Each entry's new version, in the order given.
    pub stamps: Vec<(EntryId, Stamp)>,
}

/// One entry of a [`Replica::write_batch`].
#[derive(Clone, Debug, PartialEq)]
pub struct WriteItem {
    /// The key.
    pub id: EntryId,
    /// What to do.
    pub op: Op,
    /// The context of the read this write follows, if any (a blind write otherwise).
    pub context: Option<Context>,
}

/// What a read found.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadResult {
    /// The key.
    pub id: EntryId,
    /// The merge of every state gathered; see [`KeyState::visible`] and [`KeyState::context`].
    pub state: Option<KeyState>,
    /// Replicas whose states were merged, this one first.
    pub from: Vec<NodeId>,
    /// Multi-value mode with a resolver: the write that merged the siblings this read found.
    pub resolved: Option<Stamp>,
}

/// News for the host.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A write finished: acknowledged by enough replicas (`acked`), or not within its timeout,
    /// which means *unknown*: the write may still reach every replica.
    WriteDone {
        /// The write.
        ticket: Ticket,
        /// Its consistency level was met.
        acked: bool,
        /// Who had acknowledged it, this replica first.
        by: Vec<NodeId>,
    },
    /// A read finished.
    ReadDone {
        /// The read.
        ticket: Ticket,
        /// What it found, or why it found nothing.
        result: Result<Box<ReadResult>, ReadError>,
    },
    /// An anti-entropy session ended.
    SyncDone {
        /// The peer.
        peer: NodeId,
        /// Key states exchanged.
        entries: u64,
        /// Bytes sent to the peer.
        bytes: u64,
        /// False if abandoned (the next session resumes the work).
        complete: bool,
    },
    /// A replica's status as seen from here changed.
    StatusChanged {
        /// The replica.
        peer: NodeId,
        /// Its new status.
        status: ReplicaStatus,
    },
}

/// Why a read returned nothing.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ReadError {
    /// Too few replicas answered in time.
    #[error("read timed out with answers from {answered:?}")]
    Timeout {
        /// Who answered.
        answered: Vec<NodeId>,
    },
}

/// Why a write command was refused. Nothing visible changed.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum WriteError {
    /// Too many writes and reads are waiting for acknowledgements.
    #[error("too many writes and reads pending; retry later")]
    TooManyPending,
    /// A batch with no entries.
    #[error("empty batch")]
    EmptyBatch,
    /// More entries than `batch_entries_max`.
    #[error("batch of {len} entries over batch_entries_max ({max})")]
    BatchTooLarge {
        /// Entries given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The operation does not fit the collection or the limits (vector too long, a float
    /// that is not finite, a patch outside CRDT mode).
    #[error("invalid write: {0}")]
    Invalid(state::StateError),
    /// The key would have more siblings or fields than `width_max`; resolve first.
    #[error("key {0:?} has too many siblings or fields; read and resolve first")]
    TooWide(EntryId),
    /// The key's state would encode larger than `state_bytes_max`.
    #[error("key state of {len} bytes over state_bytes_max ({max})")]
    TooLarge {
        /// Encoded size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The context carries a timestamp too far ahead of this replica's clock.
    #[error("context from the future: {0}")]
    ContextAhead(HlcError),
}

/// Why an input was refused. A refused input changes nothing but counters.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ReplicaError {
    /// The datagram or message was refused.
    #[error("{0}")]
    Message(#[from] MessageError),
    /// The sender is not a replica of this shard.
    #[error("{0} is not a replica of this shard")]
    NotAReplica(NodeId),
}

/// Why a membership or sync command was refused. Nothing changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum MembershipError {
    /// Already a replica.
    #[error("{0} is already a replica")]
    AlreadyReplica(NodeId),
    /// Not a replica.
    #[error("{0} is not a replica")]
    NotAReplica(NodeId),
    /// The replica set is at `replicas_max`.
    #[error("replica set full")]
    Full,
    /// A replica cannot remove itself (the host retires it instead).
    #[error("a replica cannot remove itself")]
    IsSelf,
    /// A session with this peer is already running.
    #[error("already syncing with {0}")]
    AlreadySyncing(NodeId),
}

/// How a replica looks from here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaStatus {
    /// Answers, and nothing is known to be missing.
    InSync,
    /// Answers, but hints or anti-entropy differences are pending for it.
    CatchingUp,
    /// Has not answered for `down_after`.
    Down,
}

/// How far a replica is behind, as known here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lag {
    /// Entries known to be missing there: hinted writes plus differences found by the
    /// current anti-entropy session and not yet sent.
    pub entries: u64,
    /// How long the oldest of them has been missing.
    pub behind: Duration,
}

/// Counters for operators and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Writes coordinated here (entries).
    pub writes: u64,
    /// Reads coordinated here.
    pub reads: u64,
    /// Key states merged in from other replicas that changed something.
    pub applied: u64,
    /// Read repairs sent.
    pub repairs: u64,
    /// Hints stored.
    pub hints_stored: u64,
    /// Hints delivered and acknowledged.
    pub hints_delivered: u64,
    /// Hints dropped because `hints_max` was reached.
    pub hints_dropped: u64,
    /// Anti-entropy sessions started / completed.
    pub sync_sessions: u64,
    /// Anti-entropy sessions that ran to the end.
    pub sync_completed: u64,
    /// Sync bytes sent.
    pub sync_bytes: u64,
    /// Sync datagrams dropped because the peer's queue was full.
    pub sync_dropped: u64,
    /// Conflicts settled while merging.
    pub conflicts: u64,
    /// Siblings merged by the resolver.
    pub resolved: u64,
    /// Tombstones collected.
    pub collected: u64,
    /// Stale states dropped because their tombstone was collected.
    pub stale_dropped: u64,
    /// States refused because their timestamps ran too far ahead.
    pub rejected_future: u64,
    /// Messages refused (malformed, out of range, from a non-replica).
    pub rejected: u64,
    /// States too large to send alone (should never happen with a valid config).
    pub oversized: u64,
}

/// Per-peer state: throttle, sync queue, liveness.
struct Peer {
    bucket: TokenBucket,
    outbox: VecDeque<(Message, usize)>,
    last_heard: Option<Instant>,
    awaiting_since: Option<Instant>,
    status: ReplicaStatus,
    sync_bytes: u64,
}

/// Dot counters reserved per persist of the identity.
const COUNTER_BLOCK: u64 = 1 << 16;

/// One replica of one shard. See the [module docs](self).
pub struct Replica {
    cfg: Config,
    rng: ChaCha8Rng,
    actor: Actor,
    counter: u64,
    counters_reserved: u64,
    hlc: HlcClock,
    store: Store,
    tombs: BTreeMap<(u64, EntryId), Tomb>,
    collected: BTreeMap<EntryId, (KeyState, Instant)>,
    collected_order: BTreeSet<(Instant, EntryId)>,
    hints: BTreeMap<(NodeId, EntryId), Instant>,
    /// The same hints per target, oldest first: counts and ages without a scan.
    hint_times: BTreeMap<NodeId, BTreeSet<(Instant, EntryId)>>,
    next_hint_retry: Instant,
    writes: BTreeMap<u64, PendingWrite>,
    reads: BTreeMap<u64, PendingRead>,
    owners: BTreeMap<u64, Owner>,
    next_req: u64,
    next_ticket: u64,
    sessions: BTreeMap<NodeId, Session>,
    next_session: u64,
    next_sync: Instant,
    sync_turn: usize,
    peers: BTreeMap<NodeId, Peer>,
    next_gc: Instant,
    stream: stream::ChangeStream,
    actions: VecDeque<Action>,
    stats: Stats,
}

impl Replica {
    /// Starts (or recovers) a replica from what the host persisted. `seed` seeds its RNG
    /// (jitter, a new life's number, the stream id). A replica with empty storage starts a new
    /// life and asks for its identity to be persisted.
    pub fn new(cfg: Config, recovered: Recovered, seed: u64, now: Instant) -> Result<Replica, ConfigError> {
        cfg.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (life, counter) = match recovered.identity {
            Some(id) => (id.life, id.counters_reserved),
            None => ((rng.next_u32() >> 1) + 1, 0),
        };
        let actor = Actor { node: cfg.id, life };
        let hlc = HlcClock::new(u64::try_from(cfg.hlc_ahead_max.as_millis()).unwrap_or(u64::MAX));
        let stream = stream::ChangeStream::new(rng.next_u64(), cfg.stream_events_max);
        let jitter = rng.next_u64() % (cfg.sync_interval.as_nanos() as u64).max(1);
        // A random start, so acknowledgements still in flight from an earlier life of this
        // replica never match a request of this one (0 stays "untracked").
        let next_req = (rng.next_u64() >> 2) | 1;
        let mut r = Replica {
            store: Store::new(cfg.merkle_depth),
            tombs: BTreeMap::new(),
            collected: BTreeMap::new(),
            collected_order: BTreeSet::new(),
            hints: BTreeMap::new(),
            hint_times: BTreeMap::new(),
            next_hint_retry: now.saturating_add(cfg.hint_retry_interval),
            writes: BTreeMap::new(),
            reads: BTreeMap::new(),
            owners: BTreeMap::new(),
            next_req,
            next_ticket: 1,
            sessions: BTreeMap::new(),
            next_session: rng.next_u64() >> 16,
            next_sync: now.saturating_add(Duration::from_nanos(jitter)),
            sync_turn: 0,
            peers: BTreeMap::new(),
            next_gc: now.saturating_add(cfg.gc_interval),
            stream,
            actions: VecDeque::new(),
            stats: Stats::default(),
            actor,
            counter,
            counters_reserved: counter,
            hlc,
            rng,
            cfg,
        };
        for id in r.cfg.replicas.clone() {
            r.add_peer(id, now);
        }
        for (id, state) in recovered.entries {
            let _ = r.hlc.observe(Instant::MAX, state.max_ts());
            let digest = r.store.put(id, state);
            r.note_stored(now, id, digest, None);
        }
        for (target, id) in recovered.hints {
            if r.cfg.replicas.contains(&target) && target != r.cfg.id {
                r.hints.insert((target, id), now);
                r.hint_times.entry(target).or_default().insert((now, id));
            }
        }
        r.reserve_counters();
        Ok(r)
    }

    // ----- getters -----

    /// This replica's node.
    pub fn id(&self) -> NodeId {
        self.cfg.id
    }

    /// This replica's actor (node and storage life).
    pub fn actor(&self) -> Actor {
        self.actor
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The current replica set.
    pub fn replicas(&self) -> &[NodeId] {
        &self.cfg.replicas
    }

    /// This replica's state of `id`.
    pub fn state(&self, id: EntryId) -> Option<&KeyState> {
        self.store.get(id)
    }

    /// A bounded scan of local states in key-hash order, strictly after `after`: the same
    /// order anti-entropy uses, so a scan can resume from any entry.
    pub fn scan(&self, after: Option<EntryId>, limit: usize) -> Vec<(EntryId, &KeyState)> {
        self.store.scan(after).take(limit).map(|(id, s, _)| (id, s)).collect()
    }

    /// Keys stored (tombstones included).
    pub fn len(&self) -> usize {
        self.store.len()
    }

    /// True if nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.store.is_empty()
    }

    /// Keys stored as tombstones, waiting to be collected.
    pub fn tombstones(&self) -> usize {
        self.store.tombstones()
    }

    /// The remembered state of a collected tombstone of `id`, while it is remembered.
    pub fn collected(&self, id: EntryId) -> Option<&KeyState> {
        self.collected.get(&id).map(|(s, _)| s)
    }

    /// The hash tree's root: replicas with equal roots hold the same data.
    pub fn digest(&self) -> u64 {
        self.store.root()
    }

    /// The hash tree.
    pub fn tree(&self) -> &merkle::MerkleTree {
        self.store.tree()
    }

    /// Hints waiting for `target`.
    pub fn hints_for(&self, target: NodeId) -> usize {
        self.hint_times.get(&target).map_or(0, BTreeSet::len)
    }

    /// All hints waiting.
    pub fn hints(&self) -> usize {
        self.hints.len()
    }

    /// True while an anti-entropy session with `peer` runs.
    pub fn is_syncing(&self, peer: NodeId) -> bool {
        self.sessions.contains_key(&peer)
    }

    /// How `peer` looks from here (`None` if it is not a replica, or is this one).
    pub fn status(&self, peer: NodeId) -> Option<ReplicaStatus> {
        self.peers.get(&peer).map(|p| p.status)
    }

    /// How far `peer` is behind, as known here (`None` if it is not a peer replica).
    pub fn lag(&self, now: Instant, peer: NodeId) -> Option<Lag> {
        self.peers.get(&peer)?;
        let hinted = self.hint_times.get(&peer);
        let mut entries = hinted.map_or(0, |h| h.len() as u64);
        let mut oldest: Option<Instant> = hinted.and_then(|h| h.first()).map(|(at, _)| *at);
        if let Some(s) = self.sessions.get(&peer) {
            let pending = s.pending_pushes();
            if pending > 0 {
                entries += pending;
                oldest = Some(oldest.map_or(s.diff_since(), |o| o.min(s.diff_since())));
            }
        }
        let behind = oldest.map_or(Duration::ZERO, |o| now.saturating_duration_since(o));
        Some(Lag { entries, behind })
    }

    /// The change stream from `cursor`: up to `max` events and where to resume.
    pub fn read_stream(&self, cursor: Cursor, max: usize) -> Result<(Vec<ChangeEvent>, Cursor), StreamError> {
        self.stream.read(cursor, max)
    }

    /// The oldest position of the change stream still readable.
    pub fn stream_start(&self) -> Cursor {
        self.stream.start()
    }

    /// The position after the newest event.
    pub fn stream_end(&self) -> Cursor {
        self.stream.end()
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The limits incoming messages are checked against.
    pub fn limits(&self) -> Limits {
        Limits {
            mode: self.cfg.mode,
            vector_len_max: self.cfg.vector_len_max,
            width_max: self.width_bound(),
            depth: self.cfg.merkle_depth,
        }
    }

    /// The most siblings or registers a merged state can have: each coordinator leaves at most
    /// `width_max`, and states only grow by merging coordinators' states.
    fn width_bound(&self) -> usize {
        self.cfg.width_max.saturating_mul(self.cfg.replicas_max).saturating_add(1)
    }

    // ----- inputs -----

    /// Decodes and handles one datagram.
    pub fn handle_datagram(&mut self, now: Instant, bytes: &[u8]) -> Result<(), ReplicaError> {
        let limits = self.limits();
        match message::decode(bytes, self.cfg.cluster_id, self.cfg.datagram_bytes_max, &limits) {
            Ok(env) => self.handle_message(now, env.from, env.body),
            Err(e) => {
                self.stats.rejected += 1;
                Err(e.into())
            }
        }
    }

    /// Handles one message from replica `from`. A refused message changes nothing but counters.
    pub fn handle_message(&mut self, now: Instant, from: NodeId, msg: Message) -> Result<(), ReplicaError> {
        if from == self.cfg.id || !self.cfg.replicas.contains(&from) {
            self.stats.rejected += 1;
            return Err(ReplicaError::NotAReplica(from));
        }
        if let Err(e) = message::check(&msg, &self.limits()) {
            self.stats.rejected += 1;
            return Err(e.into());
        }
        self.heard(now, from);
        match msg {
            Message::Write { req, part, origin, states } => self.on_write(now, from, req, part, origin, states),
            Message::WriteAck { req, part } => self.on_write_ack(now, from, req, part),
            Message::Read { req, id } => {
                let state = self.store.get(id).cloned();
                self.send(now, from, Message::ReadReply { req, id, state });
            }
            Message::ReadReply { req, id, state } => self.on_read_reply(now, from, req, id, state),
            m @ (Message::SyncTree { .. }
            | Message::SyncKeys { .. }
            | Message::SyncPull { .. }
            | Message::SyncPullRange { .. }) => self.on_sync_request(now, from, m),
            m @ (Message::SyncTreeReply { .. } | Message::SyncKeysReply { .. } | Message::SyncStates { .. }) => {
                self.on_sync_reply(now, from, m)
            }
        }
        self.update_statuses(now);
        Ok(())
    }

    // ----- commands -----

    /// Writes one entry. `context` is the context of the read this write follows (multi-value
    /// mode: the siblings it saw are replaced); `None` makes a blind write.
    pub fn write(
        &mut self,
        now: Instant,
        id: EntryId,
        op: Op,
        context: Option<Context>,
        consistency: Consistency,
    ) -> Result<WriteReceipt, WriteError> {
        self.write_batch(now, alloc::vec![WriteItem { id, op, context }], consistency)
    }

    /// Deletes one entry (a tombstone, collected once every replica has seen it).
    pub fn delete(
        &mut self,
        now: Instant,
        id: EntryId,
        context: Option<Context>,
        consistency: Consistency,
    ) -> Result<WriteReceipt, WriteError> {
        self.write(now, id, Op::Delete, context, consistency)
    }

    /// Writes several entries as one request: one ticket, acknowledged when every entry is
    /// acknowledged by enough replicas. Batches larger than a datagram are split.
    pub fn write_batch(
        &mut self,
        now: Instant,
        items: Vec<WriteItem>,
        consistency: Consistency,
    ) -> Result<WriteReceipt, WriteError> {
        self.coordinate_write(now, items, consistency, true)
    }

    /// Reads `id` from enough replicas for `consistency`; the answer comes as
    /// [`Event::ReadDone`]. Replicas found behind are repaired.
    pub fn get(&mut self, now: Instant, id: EntryId, consistency: Consistency) -> Result<Ticket, WriteError> {
        self.coordinate_read(now, id, consistency)
    }

    /// Starts an anti-entropy session with `peer` now.
    pub fn force_sync(&mut self, now: Instant, peer: NodeId) -> Result<(), MembershipError> {
        if peer == self.cfg.id || !self.cfg.replicas.contains(&peer) {
            return Err(MembershipError::NotAReplica(peer));
        }
        if self.sessions.contains_key(&peer) {
            return Err(MembershipError::AlreadySyncing(peer));
        }
        self.start_session(now, peer);
        Ok(())
    }

    /// Adds `peer` to the replica set; anti-entropy with it starts at once, so a new empty
    /// replica fills up without further steps. Every replica of the shard must be told.
    pub fn add_replica(&mut self, now: Instant, peer: NodeId) -> Result<(), MembershipError> {
        if self.cfg.replicas.contains(&peer) {
            return Err(MembershipError::AlreadyReplica(peer));
        }
        if peer == NodeId::NONE {
            return Err(MembershipError::NotAReplica(peer));
        }
        if self.cfg.replicas.len() >= self.cfg.replicas_max {
            return Err(MembershipError::Full);
        }
        self.cfg.replicas.push(peer);
        self.cfg.replicas.sort();
        self.add_peer(peer, now);
        // A tombstone must now also be seen by the newcomer before it is collected.
        self.start_session(now, peer);
        Ok(())
    }

    /// Removes `peer` from the replica set: its hints, sessions and queues are dropped, and
    /// tombstones no longer wait for it.
    pub fn remove_replica(&mut self, now: Instant, peer: NodeId) -> Result<(), MembershipError> {
        if peer == self.cfg.id {
            return Err(MembershipError::IsSelf);
        }
        if !self.cfg.replicas.contains(&peer) {
            return Err(MembershipError::NotAReplica(peer));
        }
        self.cfg.replicas.retain(|r| *r != peer);
        self.peers.remove(&peer);
        if let Some(s) = self.sessions.remove(&peer) {
            self.owners.retain(|_, o| !o.is_session(peer, s.id()));
        }
        let hinted: Vec<EntryId> =
            self.hints.range((peer, EntryId(0))..=(peer, EntryId(u64::MAX))).map(|(&(_, id), _)| id).collect();
        for id in hinted {
            self.drop_hint(peer, id);
        }
        for w in self.writes.values_mut() {
            w.forget(peer);
        }
        let _ = now;
        Ok(())
    }

    // ----- internals shared by the parts -----

    fn add_peer(&mut self, id: NodeId, now: Instant) {
        if id == self.cfg.id {
            return;
        }
        let bucket = TokenBucket::new(self.cfg.sync_bytes_per_sec, self.cfg.sync_burst_bytes, now);
        self.peers.insert(
            id,
            Peer {
                bucket,
                outbox: VecDeque::new(),
                last_heard: None,
                awaiting_since: None,
                status: ReplicaStatus::InSync,
                sync_bytes: 0,
            },
        );
    }

    fn next_req(&mut self) -> u64 {
        let r = self.next_req;
        self.next_req += 1;
        r
    }

    fn next_dot(&mut self) -> Dot {
        self.counter += 1;
        if self.counter > self.counters_reserved {
            self.reserve_counters();
        }
        Dot { actor: self.actor, counter: self.counter }
    }

    /// Persists a new block of dot counters before any of them leaves in a message.
    fn reserve_counters(&mut self) {
        self.counters_reserved = self.counter.saturating_add(COUNTER_BLOCK);
        let identity = Identity { life: self.actor.life, counters_reserved: self.counters_reserved };
        self.actions.push_back(Action::Persist(Durable::Identity(identity)));
    }

    fn emit(&mut self, e: Event) {
        self.actions.push_back(Action::Event(e));
    }

    fn persist(&mut self, d: Durable) {
        self.actions.push_back(Action::Persist(d));
    }

    fn record(&mut self, now: Instant, change: Change) {
        self.stream.push(now, change);
    }

    /// Sends production traffic at once, never behind the sync queue.
    fn send(&mut self, now: Instant, to: NodeId, message: Message) {
        if message.is_sync() {
            return self.send_sync(now, to, message);
        }
        if let Some(p) = self.peers.get_mut(&to) {
            if matches!(message, Message::Write { .. } | Message::Read { .. }) {
                p.awaiting_since.get_or_insert(now);
            }
        }
        self.actions.push_back(Action::Send { to, message });
    }

    /// Sends anti-entropy traffic through `to`'s token bucket, queueing what does not fit.
    fn send_sync(&mut self, now: Instant, to: NodeId, message: Message) {
        let len = message::datagram_len(self.cfg.cluster_id, self.cfg.id, &message);
        let Some(p) = self.peers.get_mut(&to) else { return };
        if p.outbox.is_empty() && p.bucket.try_take(now, len as u64) {
            self.stats.sync_bytes += len as u64;
            p.sync_bytes += len as u64;
            self.actions.push_back(Action::Send { to, message });
        } else if p.outbox.len() < self.cfg.sync_queue_max {
            p.outbox.push_back((message, len));
        } else {
            self.stats.sync_dropped += 1;
        }
    }

    /// Sends whatever the buckets now allow, in queue order.
    fn drain_outboxes(&mut self, now: Instant) {
        let ids: Vec<NodeId> = self.peers.iter().filter(|(_, p)| !p.outbox.is_empty()).map(|(id, _)| *id).collect();
        for id in ids {
            while let Some(p) = self.peers.get_mut(&id) {
                let Some(&(_, len)) = p.outbox.front() else { break };
                if !p.bucket.try_take(now, len as u64) {
                    break;
                }
                let Some((message, _)) = p.outbox.pop_front() else { break };
                p.sync_bytes += len as u64;
                self.stats.sync_bytes += len as u64;
                self.actions.push_back(Action::Send { to: id, message });
            }
        }
    }

    fn heard(&mut self, now: Instant, from: NodeId) {
        if let Some(p) = self.peers.get_mut(&from) {
            p.last_heard = Some(now);
            p.awaiting_since = None;
        }
    }

    fn update_statuses(&mut self, now: Instant) {
        let ids: Vec<NodeId> = self.peers.keys().copied().collect();
        for id in ids {
            let down =
                self.peers[&id].awaiting_since.is_some_and(|t| now.saturating_duration_since(t) >= self.cfg.down_after);
            let status = if down {
                ReplicaStatus::Down
            } else if self.lag(now, id).is_some_and(|l| l.entries > 0) {
                ReplicaStatus::CatchingUp
            } else {
                ReplicaStatus::InSync
            };
            if let Some(p) = self.peers.get_mut(&id) {
                if p.status != status {
                    p.status = status;
                    self.actions.push_back(Action::Event(Event::StatusChanged { peer: id, status }));
                }
            }
        }
    }

    /// A uniform jitter in `[-d/4, +d/4]` around `d`.
    fn jittered(&mut self, d: Duration) -> Duration {
        let quarter = (d.as_nanos() / 4) as u64;
        let span = quarter.saturating_mul(2).max(1);
        let offset = self.rng.next_u64() % span;
        Duration::from_nanos((d.as_nanos() as u64).saturating_sub(quarter).saturating_add(offset))
    }

    #[cfg(feature = "planted-bugs")]
    fn planted(&self, bug: PlantedBug) -> bool {
        self.cfg.planted_bug == Some(bug)
    }

    #[cfg(not(feature = "planted-bugs"))]
    fn planted(&self, _bug: PlantedBug) -> bool {
        false
    }
}

impl Machine for Replica {
    type Action = Action;

    fn handle_timeout(&mut self, now: Instant) {
        self.drain_outboxes(now);
        self.write_timers(now);
        self.read_timers(now);
        if now >= self.next_hint_retry {
            self.next_hint_retry = now.saturating_add(self.cfg.hint_retry_interval);
            self.retry_hints(now);
        }
        self.session_timers(now);
        if now >= self.next_sync {
            let d = self.jittered(self.cfg.sync_interval);
            self.next_sync = now.saturating_add(d);
            self.start_periodic_session(now);
        }
        if now >= self.next_gc {
            self.next_gc = now.saturating_add(self.cfg.gc_interval);
            self.collect_garbage(now);
        }
        self.drain_outboxes(now);
        self.update_statuses(now);
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let mut t = Some(self.next_sync);
        t = earliest(t, self.writes.values().map(|w| w.wake()).min());
        t = earliest(t, self.reads.values().map(|r| r.wake()).min());
        if !self.hints.is_empty() {
            t = earliest(t, Some(self.next_hint_retry));
        }
        if !self.tombs.is_empty() || !self.collected.is_empty() {
            t = earliest(t, Some(self.next_gc));
        }
        t = earliest(t, self.sessions.values().filter_map(|s| s.wake()).min());
        for p in self.peers.values() {
            if let Some(&(_, len)) = p.outbox.front() {
                let mut b = p.bucket.clone();
                let last = b.last();
                t = earliest(t, Some(b.ready_at(last, len as u64)));
            }
            if p.status != ReplicaStatus::Down {
                t = earliest(t, p.awaiting_since.map(|a| a.saturating_add(self.cfg.down_after)));
            }
        }
        t
    }

    fn check_invariants(&self) {
        if self.store.len() <= 4_096 {
            self.store.check();
        }
        assert!(self.counter <= self.counters_reserved, "a dot counter was used before it was reserved");
        assert_eq!(self.tombs.len(), self.store.tombstones(), "tombstone tracking out of step with the store");
        for (&(hash, id), tomb) in &self.tombs {
            assert_eq!(hash, store::key_hash(id));
            assert_eq!(self.store.digest(id), Some(tomb.digest), "tracked tombstone {id:?} changed unnoticed");
        }
        for id in self.collected.keys() {
            assert!(self.store.get(*id).is_none(), "collected {id:?} is still stored");
        }
        assert_eq!(self.collected.len(), self.collected_order.len());
        assert!(self.collected.len() <= self.cfg.collected_max);
        assert_eq!(self.hints.len(), self.hint_times.values().map(BTreeSet::len).sum::<usize>());
        assert!(self.hints.len() <= self.cfg.hints_max, "hints over their bound");
        for p in self.peers.values() {
            assert!(p.outbox.len() <= self.cfg.sync_queue_max, "sync queue over its bound");
        }
        assert!(self.writes.len() + self.reads.len() <= self.cfg.pending_max + 1);
        let dedup = !self.planted(PlantedBug::AckCountedTwice);
        for w in self.writes.values() {
            w.check(&self.cfg.replicas, dedup);
        }
        for s in self.sessions.values() {
            s.check(self.cfg.sync_window);
        }
    }
}
