//! Raft's data: terms, indexes, entries, snapshots and the messages peers exchange.

use alloc::boxed::Box;
use alloc::vec::Vec;
use bytes::Bytes;
use core::fmt;
use serde::{Deserialize, Serialize};

use super::command::Command;
use super::membership::{ConfChange, Membership};

/// A Raft term. Terms only grow; zero is the term before any election.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Term(pub u64);

impl Term {
    /// The largest term a node accepts from a peer (2^62), so `next()` never saturates.
    pub const MAX_VALID: Term = Term(1 << 62);

    /// The term after this one.
    pub fn next(self) -> Term {
        Term(self.0.saturating_add(1))
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t{}", self.0)
    }
}

/// A position in the replicated log. Index zero is before the first entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LogIndex(pub u64);

impl LogIndex {
    /// The largest index a node accepts from a peer (2^62), far beyond any real log, so that
    /// index arithmetic can never overflow whatever a forged message claims.
    pub const MAX_VALID: LogIndex = LogIndex(1 << 62);

    /// The index after this one.
    pub fn next(self) -> LogIndex {
        LogIndex(self.0.saturating_add(1))
    }

    /// The index before this one (zero stays zero).
    pub fn prev(self) -> LogIndex {
        LogIndex(self.0.saturating_sub(1))
    }
}

impl fmt::Display for LogIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "i{}", self.0)
    }
}

/// What a log entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryPayload {
    /// The empty entry a new leader appends to commit entries of earlier terms.
    Noop,
    /// An opaque command for the host's state machine.
    Command(Command),
    /// A membership change, applied by Raft itself when committed (boxed: rare, and it would
    /// otherwise make every entry larger).
    ConfChange(Box<ConfChange>),
}

/// One entry of the replicated log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The term of the leader that created the entry.
    pub term: Term,
    /// The entry's position in the log.
    pub index: LogIndex,
    /// What the entry carries.
    pub payload: EntryPayload,
}

impl Entry {
    /// Bytes this entry counts for against message and in-flight limits.
    pub fn size_bytes(&self) -> u64 {
        const OVERHEAD_BYTES: u64 = 24;
        let body = match &self.payload {
            EntryPayload::Noop => 0,
            EntryPayload::Command(data) => data.len() as u64,
            EntryPayload::ConfChange(cc) => 16 * cc.changes.len() as u64,
        };
        OVERHEAD_BYTES + body
    }
}

/// The state a node must make durable before it promises anything that depends on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// The latest term this node has seen.
    pub term: Term,
    /// Whom this node voted for in `term`, if anyone.
    pub vote: Option<crate::NodeId>,
    /// The highest index known committed (persisting it is an optimisation, not a duty).
    pub commit: LogIndex,
}

/// Describes a snapshot: the log prefix it replaces and the membership at its last entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// Index of the last entry the snapshot covers.
    pub index: LogIndex,
    /// Term of that entry.
    pub term: Term,
    /// Membership as of `index`.
    pub membership: Membership,
    /// Length of the snapshot's data.
    pub size_bytes: u64,
    /// FNV-1a digest of the data, so chunks from different snapshots never mix.
    pub digest: u64,
}

/// A snapshot of the host's state machine with Raft's description of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// What the snapshot covers.
    pub meta: SnapshotMeta,
    /// The host's serialized state machine, opaque to Raft.
    pub data: Bytes,
}

/// Why a follower rejected an append, with a hint for the leader to skip back quickly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectHint {
    /// The largest index at or below the rejected one whose term is at most the leader's.
    pub index: LogIndex,
    /// The follower's term at `index`.
    pub term: Term,
}

/// A Raft message. The sender travels in the envelope, not here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The sender's term (for a pre-vote request, the term it would campaign in).
    pub term: Term,
    /// What the message says.
    pub body: MessageBody,
}

/// The kinds of Raft message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageBody {
    /// A candidate (or pre-candidate) asks for a vote.
    RequestVote {
        /// True for a pre-vote: nobody changes term or records a vote.
        pre_vote: bool,
        /// Index of the candidate's last entry.
        last_log_index: LogIndex,
        /// Term of the candidate's last entry.
        last_log_term: Term,
        /// True when campaigning on the leader's `TimeoutNow`: voters ignore their lease.
        transfer: bool,
    },
    /// The answer to [`MessageBody::RequestVote`].
    RequestVoteResponse {
        /// Echoes the request's `pre_vote`.
        pre_vote: bool,
        /// Whether the vote was granted.
        granted: bool,
    },
    /// The leader replicates entries following `(prev_log_index, prev_log_term)`.
    AppendEntries {
        /// Index of the entry just before `entries`.
        prev_log_index: LogIndex,
        /// Term of that entry.
        prev_log_term: Term,
        /// Entries to append, possibly none.
        entries: Vec<Entry>,
        /// The leader's commit index.
        leader_commit: LogIndex,
        /// The leader's clock when sent; echoed back to confirm leadership after that instant.
        ctx: u64,
        /// Sent only to carry a new commit index: a follower whose log matches need not answer
        /// (a mismatch is always answered). Saves a message per follower per commit.
        commit_only: bool,
    },
    /// The answer to [`MessageBody::AppendEntries`].
    AppendEntriesResponse {
        /// On success, the follower's last matching index; on rejection, the rejected index.
        index: LogIndex,
        /// `None` on success; the skip-back hint on rejection.
        reject: Option<RejectHint>,
        /// The request's `ctx`.
        ctx: u64,
    },
    /// The leader asserts its leadership and carries its commit index.
    Heartbeat {
        /// `min(follower's match, leader's commit)`: safe for the follower to commit.
        commit: LogIndex,
        /// The leader's clock when sent.
        ctx: u64,
    },
    /// The answer to [`MessageBody::Heartbeat`].
    HeartbeatResponse {
        /// The request's `ctx`.
        ctx: u64,
    },
    /// One chunk of a snapshot.
    InstallSnapshot {
        /// The snapshot the chunk belongs to (boxed: it is large and rare, messages stay small).
        meta: Box<SnapshotMeta>,
        /// Where in the snapshot's data the chunk starts.
        offset: u64,
        /// The chunk's bytes.
        data: Bytes,
        /// The leader's clock when sent.
        ctx: u64,
    },
    /// The answer to [`MessageBody::InstallSnapshot`].
    InstallSnapshotResponse {
        /// Index of the snapshot being received.
        index: LogIndex,
        /// How many bytes of it the follower holds; equal to its size once installed.
        next_offset: u64,
        /// True once the follower installed the snapshot (or already had its entries).
        done: bool,
        /// The request's `ctx`.
        ctx: u64,
    },
    /// The leader tells a caught-up voter to campaign at once (leadership transfer).
    TimeoutNow,
    /// A follower asks the leader for a read index on behalf of its host.
    ReadIndex {
        /// The follower's request id, echoed back.
        id: u64,
    },
    /// The leader's answer to [`MessageBody::ReadIndex`].
    ReadIndexResponse {
        /// The follower's request id.
        id: u64,
        /// The index to wait for, or `None` if the leader could not serve it.
        index: Option<LogIndex>,
    },
}

impl MessageBody {
    /// Whether this message may leave before the *log* writes polled ahead of it are durable
    /// (the hard-state writes polled ahead of it must still be): true for a leader's appends
    /// and heartbeats.
    ///
    /// Such a message promises nothing about the sender's log. Its entries are sent from
    /// memory (Raft dissertation §10.2.1: a leader may write its log in parallel with
    /// replicating it); the commit index it carries counts the leader only once its write was
    /// reported through [`Raft::handle_persisted`](super::Raft::handle_persisted), so it is
    /// backed by a durable quorum; its term is in the hard state, which stays a barrier.
    /// Without this, a leader's appends for new proposals would queue behind its previous
    /// fsync, and the pipeline would drain once per write.
    pub fn may_precede_log_writes(&self) -> bool {
        matches!(self, MessageBody::AppendEntries { .. } | MessageBody::Heartbeat { .. })
    }

    /// A short name for counters and traces.
    pub fn kind(&self) -> &'static str {
        match self {
            MessageBody::RequestVote { pre_vote: true, .. } => "pre_vote",
            MessageBody::RequestVote { .. } => "vote",
            MessageBody::RequestVoteResponse { pre_vote: true, .. } => "pre_vote_resp",
            MessageBody::RequestVoteResponse { .. } => "vote_resp",
            MessageBody::AppendEntries { .. } => "append",
            MessageBody::AppendEntriesResponse { .. } => "append_resp",
            MessageBody::Heartbeat { .. } => "heartbeat",
            MessageBody::HeartbeatResponse { .. } => "heartbeat_resp",
            MessageBody::InstallSnapshot { .. } => "snapshot",
            MessageBody::InstallSnapshotResponse { .. } => "snapshot_resp",
            MessageBody::TimeoutNow => "timeout_now",
            MessageBody::ReadIndex { .. } => "read_index",
            MessageBody::ReadIndexResponse { .. } => "read_index_resp",
        }
    }
}
