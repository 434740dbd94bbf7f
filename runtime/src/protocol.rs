//! The client protocol: requests and responses carried in the same authenticated datagrams as
//! cluster traffic.
//!
//! Every request names a client id and a sequence number. A client sends one request at a time
//! and retries it with the same number until it gets an answer, so the cluster can apply a
//! retried write at most once (client sessions, Raft dissertation §6.3): the state machine
//! remembers each client's last sequence number and its reply.

use std::net::SocketAddr;

use quorate_core::raft::{LogIndex, Role, Term};
use quorate_core::NodeId;
use serde::{Deserialize, Serialize};

/// Longest key accepted, in bytes.
pub const KEY_BYTES_MAX: usize = 1024;

/// A client's request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Who is asking; unique per client process.
    pub client_id: u64,
    /// Increases by one per new request; a retry repeats it.
    pub seq: u64,
    /// What to do.
    pub op: Op,
}

/// A write to the metadata map; goes through the Raft log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOp {
    /// Sets `key` to `value`.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
    },
    /// Removes `key`.
    Delete {
        /// The key.
        key: String,
    },
    /// Sets `key` to `value` (or removes it when `None`) only if it now holds `expected`
    /// (`None`: only if absent).
    Cas {
        /// The key.
        key: String,
        /// What the key must hold for the swap to happen.
        expected: Option<Vec<u8>>,
        /// The new value, or `None` to delete.
        value: Option<Vec<u8>>,
    },
}

impl WriteOp {
    /// The key written.
    pub fn key(&self) -> &str {
        match self {
            WriteOp::Put { key, .. } | WriteOp::Delete { key } | WriteOp::Cas { key, .. } => key,
        }
    }
}

/// Administrative operations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminOp {
    /// This node's view: role, term, indexes, membership, SWIM members.
    Status,
    /// Bootstraps a new cluster with this node as its only voter (empty node only).
    Init,
    /// Adds a node: as a learner first, promoted to voter once it caught up.
    AddNode {
        /// The new node's id.
        id: NodeId,
        /// Its address, if SWIM does not know it yet.
        addr: Option<SocketAddr>,
    },
    /// Removes a node from the Raft membership.
    RemoveNode {
        /// The node to remove.
        id: NodeId,
    },
    /// Hands leadership to `to`, or to the most caught-up voter.
    TransferLeader {
        /// The target, if chosen.
        to: Option<NodeId>,
    },
}

/// What a request asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// A write, applied once through the log.
    Write(WriteOp),
    /// A linearizable read of one key (ReadIndex).
    Get {
        /// The key.
        key: String,
    },
    /// A linearizable scan of keys starting with `prefix`, in key order, from `start_after`.
    List {
        /// The prefix.
        prefix: String,
        /// Resume after this key (for paging).
        start_after: Option<String>,
        /// Most keys to return.
        limit: u32,
    },
    /// An administrative operation.
    Admin(AdminOp),
}

/// The answer to a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The request's client id.
    pub client_id: u64,
    /// The request's sequence number.
    pub seq: u64,
    /// The outcome.
    pub reply: Reply,
}

/// Outcomes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// A put or delete applied; `existed` says whether the key was there before.
    Written {
        /// The key existed before the write.
        existed: bool,
        /// The log index the write was applied at.
        index: LogIndex,
    },
    /// The result of a compare-and-swap.
    Cas {
        /// True if the swap happened.
        swapped: bool,
        /// The value the key held when the swap was decided.
        current: Option<Vec<u8>>,
        /// The log index the request was applied at.
        index: LogIndex,
    },
    /// A value read (or `None`).
    Value(Option<Vec<u8>>),
    /// Keys and values read, and whether more follow.
    Listed {
        /// The pairs, in key order.
        items: Vec<(String, Vec<u8>)>,
        /// True if the limit cut the list short.
        more: bool,
    },
    /// This node's status.
    Status(Box<NodeStatus>),
    /// An admin operation completed; a line for the operator.
    Done(String),
    /// This node is not the leader; go to `addr` (if known).
    NotLeader {
        /// The leader, if known.
        leader: Option<NodeId>,
        /// Its client address, if known.
        addr: Option<SocketAddr>,
    },
    /// Could not be served now (for example leadership changed); the outcome of a write is
    /// unknown. Retry with the same sequence number.
    Retry(String),
    /// Refused: retrying will not help.
    Error(String),
}

/// One member as a node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// The node's id.
    pub id: NodeId,
    /// Its address, if known.
    pub addr: Option<SocketAddr>,
    /// `voter`, `learner`, or `-` (not in the Raft membership).
    pub raft: String,
    /// SWIM state: `alive`, `suspect`, `down`, `left`, or `-` if unknown.
    pub swim: String,
    /// For a leader: the member's matched index.
    pub matched: Option<LogIndex>,
}

/// A node's view of itself and the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// This node.
    pub id: NodeId,
    /// Its address.
    pub addr: SocketAddr,
    /// Its Raft role.
    pub role: String,
    /// The current term.
    pub term: Term,
    /// The leader, if known.
    pub leader: Option<NodeId>,
    /// Highest committed index.
    pub commit: LogIndex,
    /// Highest applied index.
    pub applied: LogIndex,
    /// Last log index.
    pub last_index: LogIndex,
    /// Keys in the metadata map.
    pub keys: u64,
    /// Members by id.
    pub members: Vec<MemberStatus>,
    /// SWIM's count of live members (this one included).
    pub swim_live: u64,
    /// This node's Lifeguard health score (0 is healthy).
    pub swim_health: u32,
}

/// A Raft role as text.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Follower => "follower",
        Role::PreCandidate => "pre-candidate",
        Role::Candidate => "candidate",
        Role::Leader => "leader",
    }
}

/// Checks a write's sizes before it reaches the log.
pub fn validate_write(op: &WriteOp, value_bytes_max: usize) -> Result<(), String> {
    let key = op.key();
    if key.is_empty() || key.len() > KEY_BYTES_MAX {
        return Err(format!("key must be 1 to {KEY_BYTES_MAX} bytes, got {}", key.len()));
    }
    let too_big = |v: &Option<Vec<u8>>| v.as_ref().is_some_and(|v| v.len() > value_bytes_max);
    let big = match op {
        WriteOp::Put { value, .. } => value.len() > value_bytes_max,
        WriteOp::Delete { .. } => false,
        WriteOp::Cas { expected, value, .. } => too_big(expected) || too_big(value),
    };
    if big {
        return Err(format!("value larger than {value_bytes_max} bytes"));
    }
    Ok(())
}
