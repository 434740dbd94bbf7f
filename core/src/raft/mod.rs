//! Raft for Quorate's metadata: a pure state machine that does no IO.
//!
//! # Driving contract
//!
//! [`Raft`] follows the crate-wide [`Machine`] shape:
//! - inputs: [`Raft::handle_message`], [`Raft::handle_timeout`], [`Raft::handle_persisted`],
//!   [`Raft::handle_snapshot`];
//! - commands: [`Raft::propose`], [`Raft::propose_batch`], [`Raft::propose_conf_change`],
//!   [`Raft::read_index`], [`Raft::transfer_leader`];
//! - outputs: [`Raft::poll_action`] until `None`, then [`Raft::poll_timeout`].
//!
//! Every call takes `now`, the host's monotonic clock. The host must carry out actions **in the
//! order they are polled**, with one duty: every [`Action::PersistHardState`],
//! [`Action::PersistEntries`] and [`Action::PersistSnapshot`] must be durable before any
//! [`Action::Send`] polled *after* it leaves the node. That is how a vote or an append
//! acknowledgement never runs ahead of the state it promises. A leader's own log write may
//! finish after its appends left (they are polled first); the leader counts itself toward a
//! quorum only once the host reports the write durable through [`Raft::handle_persisted`].
//!
//! One refinement lets a leader keep its pipeline full: a message for which
//! [`MessageBody::may_precede_log_writes`] is true (a leader's append or heartbeat) need only
//! wait for the [`Action::PersistHardState`] writes polled before it, not for earlier
//! [`Action::PersistEntries`] or [`Action::PersistSnapshot`]: it promises nothing about the
//! sender's log. A host that ignores the refinement and holds every send is still correct.
//!
//! Recovery is the constructor: [`Raft::new`] takes what the host persisted.
//!
//! # What it implements
//! Elections with randomized timeouts from the node's seeded RNG, pre-vote, check-quorum,
//! pipelined replication with per-follower flow control, batching, the Figure 8 commit rule,
//! ReadIndex and lease reads, joint consensus, learners, leadership transfer, chunked and
//! resumable snapshots, and bounded, total handling of every message.

mod command;
mod config;
mod election;
mod log;
mod membership;
mod message;
mod progress;
mod read;
mod replication;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;
use bytes::Bytes;
use core::time::Duration;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use thiserror::Error;

pub use command::Command;
pub use config::{Config, ConfigError, PlantedBug, ReadMode};
pub use membership::{
    ConfChange, ConfChangeError, ConfChangeItem, ConfTransition, Membership, MembershipError, VoteResult,
};
pub use message::{
    Entry, EntryPayload, HardState, LogIndex, Message, MessageBody, RejectHint, Snapshot, SnapshotMeta, Term,
};
pub use progress::ProgressState;

use crate::time::{earliest, Instant};
use crate::{Machine, NodeId};
use log::RaftLog;
use progress::{Progress, ProgressMap};
use read::{PendingRead, ReadOrigin};

/// A node's role in its current term.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Follows a leader, or waits for one.
    Follower,
    /// Asks whether it could win before disrupting anyone (pre-vote).
    PreCandidate,
    /// Campaigns in a new term.
    Candidate,
    /// Leads the current term.
    Leader,
}

/// What the node asks its host to do. Carry them out in order; see the module doc.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Send `message` to `to`. Every persist polled before this must be durable first.
    Send {
        /// The recipient.
        to: NodeId,
        /// The message.
        message: Message,
    },
    /// Make the hard state durable (replacing the previous one).
    PersistHardState(HardState),
    /// Drop every log entry at or after `first_index`, then append the entries
    /// `first_index..=last_index`, read with [`Raft::entries`] while draining (before the next
    /// input). Report durability with [`Raft::handle_persisted`] and the last entry's index
    /// and term. Entries are lent, not copied: the host serializes straight from the log.
    PersistEntries {
        /// Where the write starts; everything from here on is replaced.
        first_index: LogIndex,
        /// The last entry to write.
        last_index: LogIndex,
    },
    /// Store the snapshot durably. If the log has no entry at the snapshot's index with the
    /// snapshot's term, drop the whole log; entries after a matching entry are kept.
    /// Report durability with [`Raft::handle_persisted`] and the snapshot's index and term.
    PersistSnapshot(Box<Snapshot>),
    /// Log entries up to `upto` are covered by a stored snapshot; the host may delete them.
    CompactLog {
        /// Last index that may be deleted.
        upto: LogIndex,
    },
    /// Apply the committed entries `first_index..=last_index` to the state machine, in order,
    /// reading them with [`Raft::entries`] while draining. Commands are the host's; membership
    /// changes were already applied by Raft and are there for information.
    ApplyEntries {
        /// The first entry to apply.
        first_index: LogIndex,
        /// The last entry to apply.
        last_index: LogIndex,
    },
    /// Replace the state machine with this snapshot.
    ApplySnapshot(Box<Snapshot>),
    /// Something the host may want to know.
    Event(Event),
}

/// Notifications for the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The role, term or known leader changed.
    RoleChanged {
        /// The new role.
        role: Role,
        /// The current term.
        term: Term,
        /// The leader, if known.
        leader: Option<NodeId>,
    },
    /// A membership change was applied at `index`.
    MembershipChanged {
        /// Index of the change entry (or snapshot).
        index: LogIndex,
        /// The membership now in force.
        membership: Box<Membership>,
    },
    /// A committed membership change was invalid and was skipped.
    ConfChangeSkipped {
        /// Index of the skipped entry.
        index: LogIndex,
        /// Why it was skipped.
        error: ConfChangeError,
    },
    /// Read `id` is linearizable once the state machine has applied `index`.
    ReadReady {
        /// The id the host gave [`Raft::read_index`].
        id: u64,
        /// The index to wait for.
        index: LogIndex,
    },
    /// Read `id` could not be confirmed (leadership changed); retry it.
    ReadFailed {
        /// The id the host gave [`Raft::read_index`].
        id: u64,
    },
    /// A leadership transfer to `target` gave up (timed out, or the target left).
    TransferAborted {
        /// The intended new leader.
        target: NodeId,
    },
    /// Enough entries were applied since the last snapshot: the host should take one at
    /// `applied` and hand it to [`Raft::handle_snapshot`].
    SnapshotWanted {
        /// The applied index to snapshot at.
        applied: LogIndex,
    },
}

/// What the host recovered from storage, handed to [`Raft::new`].
#[derive(Clone, Debug, Default)]
pub struct Recovered {
    /// The last persisted hard state (default for a fresh node).
    pub hard_state: HardState,
    /// The last persisted snapshot, if any.
    pub snapshot: Option<Snapshot>,
    /// The persisted log entries, in index order.
    pub entries: Vec<Entry>,
}

/// Why a proposal was refused. Nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ProposeError {
    /// Only the leader accepts proposals; `leader` is a hint for where to go.
    #[error("not the leader (leader hint: {leader:?})")]
    NotLeader {
        /// The leader this node knows of, if any.
        leader: Option<NodeId>,
    },
    /// A leadership transfer is under way.
    #[error("leadership transfer in progress")]
    TransferInProgress,
    /// Too many proposal bytes are waiting to commit.
    #[error("too many uncommitted bytes; retry once earlier proposals commit")]
    UncommittedLimit,
    /// A single entry is larger than `entry_bytes_max`.
    #[error("entry of {size_bytes} bytes exceeds entry_bytes_max")]
    TooLarge {
        /// The entry's size.
        size_bytes: u64,
    },
    /// An earlier membership change has not been applied yet.
    #[error("a membership change is already pending")]
    ConfChangePending,
    /// The membership change cannot apply to the current membership.
    #[error("invalid membership change: {0}")]
    InvalidConfChange(ConfChangeError),
}

/// Why a read could not be started. Nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ReadError {
    /// No leader is known to serve it.
    #[error("no leader known")]
    NoLeader,
    /// Too many reads are waiting for confirmation.
    #[error("too many pending reads")]
    TooManyPending,
}

/// Why a leadership transfer was refused. Nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum TransferError {
    /// Only a leader can transfer leadership.
    #[error("not the leader")]
    NotLeader,
    /// The target already leads.
    #[error("target is already the leader")]
    TargetIsLeader,
    /// The target is not a voter of the current membership.
    #[error("target {0} is not a voter")]
    NotAVoter(NodeId),
    /// Another transfer is under way.
    #[error("a transfer is already in progress")]
    InProgress,
}

/// Why a host snapshot was refused. Nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SnapshotError {
    /// The snapshot must be taken at the applied index.
    #[error("snapshot index {given} is not the applied index {applied}")]
    NotAtApplied {
        /// The index given.
        given: LogIndex,
        /// The applied index.
        applied: LogIndex,
    },
}

/// Counters of what the node ignored or did, for metrics and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages handled.
    pub messages_received: u64,
    /// Messages from an older term, dropped.
    pub dropped_stale_term: u64,
    /// Messages from a sender the node does not track for that message kind, dropped.
    pub dropped_unknown_sender: u64,
    /// Malformed or contradictory messages (e.g. conflicting with committed entries), dropped.
    pub dropped_invalid: u64,
    /// Vote requests ignored because a leader was heard recently.
    pub ignored_in_lease: u64,
    /// Elections (pre-vote or real) this node started.
    pub campaigns: u64,
    /// Snapshot chunks rejected (wrong offset, size, or digest).
    pub snapshot_chunks_rejected: u64,
    /// Snapshots installed from a leader.
    pub snapshots_installed: u64,
    /// Leader step-downs for lack of a quorum (check-quorum).
    pub check_quorum_step_downs: u64,
}

#[derive(Clone, Copy, Debug)]
struct Transfer {
    target: NodeId,
    deadline: Instant,
}

/// A Raft node. See the module doc for the driving contract.
#[derive(Debug)]
pub struct Raft {
    cfg: Config,
    rng: ChaCha8Rng,
    role: Role,
    term: Term,
    vote: Option<NodeId>,
    leader: Option<NodeId>,
    log: RaftLog,
    membership: Membership,
    /// The latest snapshot, kept to send to followers that fell behind the log.
    snapshot: Snapshot,
    progress: ProgressMap,
    votes: BTreeMap<NodeId, bool>,
    actions: VecDeque<Action>,
    last_hard_state: HardState,
    last_event_role: (Role, Term, Option<NodeId>),
    election_deadline: Instant,
    heartbeat_deadline: Instant,
    check_quorum_deadline: Instant,
    last_leader_contact: Option<Instant>,
    /// With lease reads, a restarted node may have promised a leader not to vote until some
    /// instant it no longer remembers; it refuses votes until this one to keep that promise.
    vote_fence_until: Instant,
    transfer: Option<Transfer>,
    /// Once a leader sent TimeoutNow, other voters may elect without waiting out its lease.
    lease_revoked: bool,
    pending_conf_index: LogIndex,
    uncommitted_bytes: u64,
    reads: VecDeque<PendingRead>,
    reads_awaiting_commit: VecDeque<ReadOrigin>,
    /// Reads forwarded to the leader: id and the instant after which they are failed.
    forwarded_reads: VecDeque<(u64, Instant)>,
    last_read_heartbeat_ctx: u64,
    incoming_snapshot: Option<(SnapshotMeta, Vec<u8>)>,
    snapshot_wanted_at: LogIndex,
    stats: Stats,
    scratch: Vec<u64>,
    peers_scratch: Vec<NodeId>,
    now: Instant,
}

impl Raft {
    /// Builds a node from what the host persisted (everything default for a fresh node).
    ///
    /// `bootstrap` is the membership the cluster started with; it is used only when
    /// `recovered` holds no snapshot. A node joining an existing cluster passes an empty
    /// membership and learns the real one from the leader. `rng_seed` seeds election jitter.
    pub fn new(
        cfg: Config,
        bootstrap: Membership,
        recovered: Recovered,
        rng_seed: u64,
        now: Instant,
    ) -> Result<Raft, ConfigError> {
        cfg.validate()?;
        let bad_membership = |m: &Membership| m.validate().is_err();
        if bad_membership(&bootstrap) || recovered.snapshot.as_ref().is_some_and(|s| bad_membership(&s.meta.membership))
        {
            return Err(ConfigError { field: "bootstrap", expected: "a well-formed membership (sorted, no id 0)" });
        }
        let snapshot = recovered.snapshot.unwrap_or_else(|| Snapshot {
            meta: SnapshotMeta { membership: bootstrap, ..SnapshotMeta::default() },
            data: Bytes::new(),
        });
        let mut log = RaftLog::new(snapshot.meta.index, snapshot.meta.term, recovered.entries);
        log.committed = recovered.hard_state.commit.clamp(log.snapshot_index(), log.last_index());
        // Membership starts at the snapshot's; the committed changes after it are applied
        // exactly once, by `apply_committed` at the end of construction, before any election.
        let membership = snapshot.meta.membership.clone();
        let hs = recovered.hard_state;
        let mut raft = Raft {
            rng: ChaCha8Rng::seed_from_u64(rng_seed),
            role: Role::Follower,
            term: hs.term,
            vote: hs.vote,
            leader: None,
            log,
            membership,
            snapshot,
            progress: ProgressMap::default(),
            votes: BTreeMap::new(),
            actions: VecDeque::new(),
            last_hard_state: HardState { term: hs.term, vote: hs.vote, commit: hs.commit },
            last_event_role: (Role::Follower, hs.term, None),
            election_deadline: now,
            heartbeat_deadline: Instant::MAX,
            check_quorum_deadline: Instant::MAX,
            last_leader_contact: None,
            vote_fence_until: Instant::ZERO,
            transfer: None,
            lease_revoked: false,
            pending_conf_index: LogIndex(0),
            uncommitted_bytes: 0,
            reads: VecDeque::new(),
            reads_awaiting_commit: VecDeque::new(),
            forwarded_reads: VecDeque::new(),
            last_read_heartbeat_ctx: 0,
            incoming_snapshot: None,
            snapshot_wanted_at: LogIndex(0),
            stats: Stats::default(),
            scratch: Vec::new(),
            peers_scratch: Vec::new(),
            now,
            cfg,
        };
        if raft.cfg.lease_duration().is_some() {
            raft.vote_fence_until = now.saturating_add(raft.cfg.election_timeout_min);
        }
        // Applied restarts at the snapshot: the host's state machine is rebuilt from it.
        raft.log.applied = raft.log.snapshot_index();
        if raft.snapshot.meta.index > LogIndex(0) {
            raft.actions.push_back(Action::ApplySnapshot(Box::new(raft.snapshot.clone())));
        }
        raft.reset_election_deadline(now);
        raft.apply_committed();
        Ok(raft)
    }

    // ----- getters -----

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.cfg.id
    }

    /// The current term.
    pub fn term(&self) -> Term {
        self.term
    }

    /// The current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The leader of the current term, if known.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// The vote cast in the current term, if any.
    pub fn vote(&self) -> Option<NodeId> {
        self.vote
    }

    /// The membership in force.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The highest committed index.
    pub fn committed(&self) -> LogIndex {
        self.log.committed
    }

    /// The highest index handed to the host to apply.
    pub fn applied(&self) -> LogIndex {
        self.log.applied
    }

    /// The last index in the log.
    pub fn last_index(&self) -> LogIndex {
        self.log.last_index()
    }

    /// The term of the last entry in the log.
    pub fn last_term(&self) -> Term {
        self.log.last_term()
    }

    /// The highest index the host reported durable.
    pub fn persisted(&self) -> LogIndex {
        self.log.persisted
    }

    /// The term of the entry at `index`, if the log (or snapshot boundary) holds it.
    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        self.log.term(index)
    }

    /// The entries `first..=last` the log holds (clamped to its bounds). Hosts read the
    /// ranges of [`Action::PersistEntries`] and [`Action::ApplyEntries`] with it.
    pub fn entries(&self, first: LogIndex, last: LogIndex) -> &[Entry] {
        self.log.slice(first, last)
    }

    /// The entry at `index`, if the in-memory log holds it.
    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        self.log.entry(index)
    }

    /// Index and term of the last snapshot (the log starts after it).
    pub fn snapshot_meta(&self) -> &SnapshotMeta {
        &self.snapshot.meta
    }

    /// The first index the in-memory log holds.
    pub fn first_index(&self) -> LogIndex {
        self.log.first_index()
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The hard state as the node sees it now.
    pub fn hard_state(&self) -> HardState {
        HardState { term: self.term, vote: self.vote, commit: self.log.committed }
    }

    /// The replication state of `peer` as seen by this leader.
    pub fn progress_of(&self, peer: NodeId) -> Option<(ProgressState, LogIndex, LogIndex)> {
        self.progress.get(&peer).map(|p| (p.state, p.matched, p.next))
    }

    /// The configuration this node runs with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    // ----- inputs -----

    /// Handles a message from `from`. Anything stale, unknown or malformed is counted and
    /// ignored; nothing a peer sends can make this panic.
    pub fn handle_message(&mut self, now: Instant, from: NodeId, msg: Message) {
        self.now = self.now.max(now);
        self.stats.messages_received += 1;
        if from == NodeId::NONE || from == self.cfg.id {
            self.stats.dropped_invalid += 1;
            return;
        }
        if !self.admit_term(from, &msg) {
            return;
        }
        let term = msg.term;
        match msg.body {
            MessageBody::RequestVote { pre_vote, last_log_index, last_log_term, .. } => {
                self.on_request_vote(from, term, pre_vote, last_log_index, last_log_term)
            }
            MessageBody::RequestVoteResponse { pre_vote, granted } => self.on_vote_response(from, pre_vote, granted),
            MessageBody::AppendEntries { prev_log_index, prev_log_term, entries, leader_commit, ctx, commit_only } => {
                let append =
                    replication::Append { prev_log_index, prev_log_term, entries, leader_commit, ctx, commit_only };
                self.on_append(from, append)
            }
            MessageBody::AppendEntriesResponse { index, reject, ctx } => {
                self.on_append_response(from, index, reject, ctx)
            }
            MessageBody::Heartbeat { commit, ctx } => self.on_heartbeat(from, commit, ctx),
            MessageBody::HeartbeatResponse { ctx } => self.on_heartbeat_response(from, ctx),
            MessageBody::InstallSnapshot { meta, offset, data, ctx } => {
                self.on_snapshot_chunk(from, &meta, offset, data, ctx)
            }
            MessageBody::InstallSnapshotResponse { index, next_offset, done, ctx } => {
                self.on_snapshot_response(from, index, next_offset, done, ctx)
            }
            MessageBody::TimeoutNow => self.on_timeout_now(from),
            MessageBody::ReadIndex { id } => self.on_read_index_request(from, id),
            MessageBody::ReadIndexResponse { id, index } => self.on_read_index_response(from, id, index),
        }
        self.flush_role_event();
    }

    /// Lets timers fire: elections, heartbeats, check-quorum, transfer and snapshot retries.
    /// Harmless when early or repeated.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        let now = self.now;
        self.expire_forwarded_reads(now);
        if self.role == Role::Leader {
            self.leader_tick(now);
        } else if now >= self.election_deadline {
            if self.membership.is_voter(self.cfg.id) {
                self.campaign(now, self.cfg.pre_vote, false);
            } else {
                self.reset_election_deadline(now);
            }
        }
        self.flush_role_event();
    }

    /// The host made the log durable up to `(index, term)`: the last entry of a
    /// [`Action::PersistEntries`] or the snapshot of an [`Action::PersistSnapshot`].
    pub fn handle_persisted(&mut self, now: Instant, index: LogIndex, term: Term) {
        self.now = self.now.max(now);
        if !self.log.persisted_to(index, term) {
            return;
        }
        if self.role == Role::Leader {
            let persisted = self.log.persisted;
            if let Some(pr) = self.progress.get_mut(&self.cfg.id) {
                pr.maybe_update(persisted);
            }
            if self.maybe_commit() {
                self.broadcast_append(replication::Empty::CommitOnly);
            }
        }
        self.flush_role_event();
    }

    /// The host took a snapshot of its state machine at `index` (the applied index), answering
    /// [`Event::SnapshotWanted`] or on its own. The log before it is compacted.
    pub fn handle_snapshot(&mut self, now: Instant, index: LogIndex, data: Bytes) -> Result<(), SnapshotError> {
        self.now = self.now.max(now);
        if index != self.log.applied {
            return Err(SnapshotError::NotAtApplied { given: index, applied: self.log.applied });
        }
        if index <= self.snapshot.meta.index {
            return Ok(());
        }
        let term = self.log.term(index).unwrap_or(self.log.snapshot_term());
        let meta = SnapshotMeta {
            index,
            term,
            membership: self.membership.clone(),
            size_bytes: data.len() as u64,
            digest: crate::fnv1a64(&data),
        };
        self.snapshot = Snapshot { meta, data };
        self.actions.push_back(Action::PersistSnapshot(Box::new(self.snapshot.clone())));
        self.log.compact_to(index);
        self.actions.push_back(Action::CompactLog { upto: index });
        Ok(())
    }

    // ----- commands -----

    /// Proposes one command. Returns the index it will commit at, if it commits.
    pub fn propose(&mut self, now: Instant, data: impl Into<Command>) -> Result<LogIndex, ProposeError> {
        self.propose_batch(now, core::iter::once(data.into())).map(|(_, last)| last)
    }

    /// Proposes many commands as one batch: one log write and one append per follower.
    /// Returns the first and last index, or an error (and then nothing was proposed).
    pub fn propose_batch<I>(&mut self, now: Instant, batch: I) -> Result<(LogIndex, LogIndex), ProposeError>
    where
        I: IntoIterator,
        I::Item: Into<Command>,
    {
        self.now = self.now.max(now);
        self.check_can_propose()?;
        // Entries go straight into the log; a refused batch is cut off again, so a refusal
        // still changes nothing.
        let first = self.log.last_index().next();
        let mut bytes = 0u64;
        for data in batch {
            let entry = Entry {
                term: self.term,
                index: self.log.last_index().next(),
                payload: EntryPayload::Command(data.into()),
            };
            let size = entry.size_bytes();
            if size > self.cfg.entry_bytes_max {
                self.log.truncate_uncommitted_from(first);
                return Err(ProposeError::TooLarge { size_bytes: size });
            }
            bytes = bytes.saturating_add(size);
            self.log.append(entry);
        }
        let last = self.log.last_index();
        if last < first {
            return Ok((first, last));
        }
        if self.uncommitted_bytes.saturating_add(bytes) > self.cfg.uncommitted_bytes_max && self.uncommitted_bytes > 0 {
            self.log.truncate_uncommitted_from(first);
            return Err(ProposeError::UncommittedLimit);
        }
        self.uncommitted_bytes = self.uncommitted_bytes.saturating_add(bytes);
        self.replicate_appended(first);
        Ok((first, last))
    }

    /// Proposes a membership change. Only one may be pending at a time.
    pub fn propose_conf_change(&mut self, now: Instant, cc: ConfChange) -> Result<LogIndex, ProposeError> {
        self.now = self.now.max(now);
        self.check_can_propose()?;
        if self.pending_conf_index > self.log.applied {
            return Err(ProposeError::ConfChangePending);
        }
        self.membership.apply(&cc).map_err(ProposeError::InvalidConfChange)?;
        let entry = Entry {
            term: self.term,
            index: self.log.last_index().next(),
            payload: EntryPayload::ConfChange(Box::new(cc)),
        };
        let index = self.append_as_leader(alloc::vec![entry]);
        self.pending_conf_index = index;
        Ok(index)
    }

    /// Hands leadership to `target` once its log is caught up; aborts after an election timeout.
    pub fn transfer_leader(&mut self, now: Instant, target: NodeId) -> Result<(), TransferError> {
        self.now = self.now.max(now);
        if self.role != Role::Leader {
            return Err(TransferError::NotLeader);
        }
        if target == self.cfg.id {
            return Err(TransferError::TargetIsLeader);
        }
        if !self.membership.is_voter(target) {
            return Err(TransferError::NotAVoter(target));
        }
        if self.transfer.is_some() {
            return Err(TransferError::InProgress);
        }
        self.transfer = Some(Transfer { target, deadline: now.saturating_add(self.cfg.election_timeout_min) });
        let caught_up = self.progress.get(&target).is_some_and(|p| p.matched == self.log.last_index());
        if caught_up {
            self.send_timeout_now(target);
        } else {
            self.send_append(target, replication::Empty::WantReply);
        }
        Ok(())
    }

    // ----- outputs -----

    /// The next action, in order; `None` once drained.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The earliest instant at which [`Raft::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.role {
            Role::Leader => {
                let mut t = Some(self.heartbeat_deadline);
                if self.cfg.check_quorum {
                    t = earliest(t, Some(self.check_quorum_deadline));
                }
                earliest(t, self.transfer.map(|tr| tr.deadline))
            }
            _ => earliest(Some(self.election_deadline), self.forwarded_reads.front().map(|(_, t)| *t)),
        }
    }

    /// Panics if an invariant of this node is broken.
    pub fn check_invariants(&self) {
        self.log.check_invariants();
        self.membership.check_invariants();
        assert!(self.log.committed >= self.snapshot.meta.index, "commit behind the snapshot");
        assert!(self.log.snapshot_index() <= self.snapshot.meta.index, "log compacted past the snapshot");
        assert!(self.last_hard_state.term <= self.term, "persisted term ahead of memory");
        match self.role {
            Role::Leader => {
                assert_eq!(self.vote, Some(self.cfg.id), "leader did not vote for itself");
                assert_eq!(self.leader, Some(self.cfg.id), "leader does not know itself as leader");
                let members = self.membership.members();
                assert!(
                    self.progress.keys().copied().eq(members.iter().copied()),
                    "progress tracks {:?} but members are {members:?}",
                    self.progress.keys().collect::<Vec<_>>()
                );
                for (id, pr) in self.progress.iter() {
                    assert!(pr.matched <= self.log.last_index(), "{id} matched past the last index");
                    assert!(pr.next > pr.matched, "{id} next {} not after match {}", pr.next, pr.matched);
                    assert!(pr.inflights.len() <= self.cfg.inflight_msgs_max, "{id} inflight window overflow");
                    // One message over the window: up to append_bytes_max, or one entry if larger.
                    let message_max = self.cfg.append_bytes_max.max(self.cfg.entry_bytes_max);
                    let bytes_bound = self.cfg.inflight_bytes_max.saturating_add(message_max);
                    assert!(pr.inflights.bytes() <= bytes_bound, "{id} inflight bytes overflow");
                }
                if let Some(me) = self.progress.get(&self.cfg.id) {
                    assert!(me.matched <= self.log.persisted, "leader counts unpersisted entries");
                }
            }
            Role::Candidate => assert_eq!(self.vote, Some(self.cfg.id), "candidate did not vote for itself"),
            Role::Follower | Role::PreCandidate => assert!(self.progress.is_empty(), "non-leader tracks progress"),
        }
        assert!(self.reads.len() <= self.cfg.reads_pending_max, "pending reads over the limit");
    }

    // ----- internals shared by the submodules -----

    fn send(&mut self, to: NodeId, body: MessageBody) {
        self.actions.push_back(Action::Send { to, message: Message { term: self.term, body } });
    }

    fn send_with_term(&mut self, to: NodeId, term: Term, body: MessageBody) {
        self.actions.push_back(Action::Send { to, message: Message { term, body } });
    }

    fn event(&mut self, event: Event) {
        self.actions.push_back(Action::Event(event));
    }

    /// Persists term and vote (and commit) if they changed. Called before any send that
    /// depends on them, which the action order then guarantees.
    fn persist_hard_state(&mut self) {
        let hs = self.hard_state();
        if hs != self.last_hard_state {
            self.last_hard_state = hs;
            self.actions.push_back(Action::PersistHardState(hs));
        }
    }

    fn flush_role_event(&mut self) {
        // Commit moves often; persisting it lazily here batches it with the step's other writes.
        self.persist_hard_state();
        let now = (self.role, self.term, self.leader);
        if now != self.last_event_role {
            self.last_event_role = now;
            self.event(Event::RoleChanged { role: self.role, term: self.term, leader: self.leader });
        }
    }

    fn random_election_timeout(&mut self) -> Duration {
        let min = self.cfg.election_timeout_min.as_nanos() as u64;
        let span = (self.cfg.election_timeout_max.as_nanos() as u64).saturating_sub(min).max(1);
        Duration::from_nanos(min + self.rng.next_u64() % span)
    }

    fn reset_election_deadline(&mut self, now: Instant) {
        let timeout = self.random_election_timeout();
        self.election_deadline = now.saturating_add(timeout);
    }

    /// True when the test-only `bug` is planted (always false without `planted-bugs`).
    fn planted(&self, bug: PlantedBug) -> bool {
        #[cfg(feature = "planted-bugs")]
        {
            self.cfg.planted_bug == Some(bug)
        }
        #[cfg(not(feature = "planted-bugs"))]
        {
            let _ = bug;
            false
        }
    }

    fn check_can_propose(&self) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader { leader: self.leader });
        }
        if self.transfer.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        Ok(())
    }

    /// Hands newly committed entries to the host and applies membership changes.
    fn apply_committed(&mut self) {
        if self.log.committed <= self.log.applied {
            return;
        }
        let (first_index, last_index) = (self.log.applied.next(), self.log.committed);
        self.log.applied = last_index;
        let mut freed = 0u64;
        let mut changes = Vec::new();
        for e in self.log.slice(first_index, last_index) {
            freed = freed.saturating_add(e.size_bytes());
            if let EntryPayload::ConfChange(cc) = &e.payload {
                changes.push((e.index, cc.clone()));
            }
        }
        self.uncommitted_bytes = self.uncommitted_bytes.saturating_sub(freed);
        // Membership changes take effect as they are applied, in log order.
        let membership_changed = !changes.is_empty();
        for (index, cc) in changes {
            match self.membership.apply(&cc) {
                Ok(next) => self.set_membership(index, next),
                Err(error) => self.event(Event::ConfChangeSkipped { index, error }),
            }
        }
        self.actions.push_back(Action::ApplyEntries { first_index, last_index });
        self.after_apply();
        // A smaller quorum may already hold later entries: count again rather than wait for
        // the next acknowledgement.
        if membership_changed && self.role == Role::Leader && self.maybe_commit() {
            self.broadcast_append(replication::Empty::CommitOnly);
        }
    }

    fn after_apply(&mut self) {
        let applied = self.log.applied;
        let threshold = self.cfg.snapshot_threshold_entries;
        if threshold > 0
            && applied.0.saturating_sub(self.snapshot.meta.index.0) >= threshold
            && applied.0.saturating_sub(self.snapshot_wanted_at.0) >= threshold
        {
            self.snapshot_wanted_at = applied;
            self.event(Event::SnapshotWanted { applied });
        }
        self.maybe_auto_leave();
    }

    /// Proposes leaving a joint membership once it is applied, unless a transfer is pending
    /// (it is retried when the transfer ends).
    fn maybe_auto_leave(&mut self) {
        if self.role == Role::Leader
            && self.membership.is_joint()
            && self.membership.auto_leave
            && self.pending_conf_index <= self.log.applied
            && self.transfer.is_none()
        {
            let entry = Entry {
                term: self.term,
                index: self.log.last_index().next(),
                payload: EntryPayload::ConfChange(Box::new(ConfChange::leave_joint())),
            };
            let index = self.append_as_leader(alloc::vec![entry]);
            self.pending_conf_index = index;
        }
    }

    fn set_membership(&mut self, index: LogIndex, next: Membership) {
        self.membership = next;
        self.event(Event::MembershipChanged { index, membership: Box::new(self.membership.clone()) });
        if self.role != Role::Leader {
            return;
        }
        let members = self.membership.members();
        self.progress.retain(|id| members.binary_search(id).is_ok());
        let next_index = self.log.last_index().next();
        for id in members {
            let (msgs, bytes) = (self.cfg.inflight_msgs_max, self.cfg.inflight_bytes_max);
            self.progress.get_or_insert_with(id, || Progress::new(next_index, msgs, bytes));
        }
        if let Some(tr) = self.transfer {
            if !self.membership.is_voter(tr.target) {
                self.transfer = None;
                self.event(Event::TransferAborted { target: tr.target });
            }
        }
        if !self.membership.is_voter(self.cfg.id) {
            self.step_down_after_removal();
        }
    }
}

impl Machine for Raft {
    type Action = Action;

    fn handle_timeout(&mut self, now: Instant) {
        Raft::handle_timeout(self, now)
    }

    fn poll_action(&mut self) -> Option<Action> {
        Raft::poll_action(self)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Raft::poll_timeout(self)
    }

    fn check_invariants(&self) {
        Raft::check_invariants(self)
    }
}

#[cfg(test)]
mod tests;
