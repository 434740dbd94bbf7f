//! Replication's wire messages, their exact encoded sizes, and the checks a decoded message
//! must pass before a replica acts on it.
//!
//! Messages travel in the crate's [`wire`] envelope, postcard-encoded. The
//! replica knows the exact datagram size of every message before it emits it (see
//! [`datagram_len`]), so it splits batches that would not fit and charges the sync throttle
//! exactly what the network will carry.

use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use super::merkle::FANOUT;
use super::state::{EntryId, KeyState, StateError};
use super::version::VersionVector;
use crate::wire::{self, Envelope, WireError, HEADER_BYTES};
use crate::NodeId;

/// Why a write message was sent: decides what its acknowledgement means to the sender and
/// which traffic class it belongs to (sync writes go through the throttle).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Origin {
    /// A client write, from its coordinator.
    Client,
    /// A read found this replica behind.
    Repair,
    /// A hinted write, handed off late.
    Hint,
    /// Anti-entropy.
    Sync,
}

/// A replication message between two replicas of a shard.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// Merge these key states and acknowledge `(req, part)`.
    Write {
        /// The sender's request number.
        req: u64,
        /// Which datagram of a split batch.
        part: u16,
        /// Why it was sent.
        origin: Origin,
        /// Whole key states.
        states: Vec<(EntryId, KeyState)>,
    },
    /// The states of `(req, part)` are durable here.
    WriteAck {
        /// The request number.
        req: u64,
        /// The datagram acknowledged.
        part: u16,
    },
    /// Send your state of `id`.
    Read {
        /// The coordinator's request number.
        req: u64,
        /// The key.
        id: EntryId,
    },
    /// The answer to a read.
    ReadReply {
        /// The request number.
        req: u64,
        /// The key.
        id: EntryId,
        /// The state, if any.
        state: Option<KeyState>,
    },
    /// Anti-entropy: send your child hashes of these nodes of `level`. `root` is the sender's
    /// root; when it equals yours, say so instead.
    SyncTree {
        /// The session.
        session: u64,
        /// The request within it.
        rid: u32,
        /// The sender's root hash.
        root: u64,
        /// The level of `parents` (0 is the root).
        level: u8,
        /// Node indices at `level`.
        parents: Vec<u32>,
    },
    /// The answer: 16 child hashes per parent, in order (none if the roots are equal).
    SyncTreeReply {
        /// The session.
        session: u64,
        /// The request answered.
        rid: u32,
        /// The responder's root.
        root: u64,
        /// The children's hashes.
        children: Vec<u64>,
    },
    /// Anti-entropy: list your keys and state digests in these leaves (ascending), starting
    /// after `after` (which lies in the first leaf).
    SyncKeys {
        /// The session.
        session: u64,
        /// The request within it.
        rid: u32,
        /// Leaves, ascending.
        leaves: Vec<u32>,
        /// Resume after this key.
        after: Option<EntryId>,
    },
    /// The answer: keys in key-hash order; `more` if the listing stopped early (resume after
    /// the last key listed).
    SyncKeysReply {
        /// The session.
        session: u64,
        /// The request answered.
        rid: u32,
        /// Keys and their state digests.
        keys: Vec<(EntryId, u64)>,
        /// True if more keys follow the last one listed.
        more: bool,
    },
    /// Anti-entropy: send me your states of these keys, unless my clock of a key (empty if I
    /// lack it) strictly dominates yours: then leave it out and I push mine instead, so a
    /// change crosses once, not as your old state out and my new one back.
    SyncPull {
        /// The session.
        session: u64,
        /// The request within it.
        rid: u32,
        /// The keys, each with the initiator's clock of it.
        ids: Vec<(EntryId, VersionVector)>,
    },
    /// Anti-entropy: send me your states in leaves `first..end` after `after`, one datagram's
    /// worth.
    SyncPullRange {
        /// The session.
        session: u64,
        /// The request within it.
        rid: u32,
        /// First leaf.
        first: u32,
        /// End leaf (exclusive).
        end: u32,
        /// Resume after this key.
        after: Option<EntryId>,
    },
    /// States answering a pull: datagram `part` of `parts`. For a range pull, `more` says
    /// that states follow the last one sent.
    SyncStates {
        /// The session.
        session: u64,
        /// The request answered.
        rid: u32,
        /// This datagram's number.
        part: u16,
        /// Datagrams in the answer.
        parts: u16,
        /// The states.
        states: Vec<(EntryId, KeyState)>,
        /// A range pull stopped early.
        more: bool,
    },
}

/// Why a decoded message was refused. Nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// The envelope was refused.
    #[error("rejected datagram: {0}")]
    Wire(#[from] WireError),
    /// A key state that no replica would send.
    #[error("rejected key state: {0}")]
    State(#[from] StateError),
    /// Out-of-range tree levels, leaves or parts.
    #[error("rejected message: fields out of range")]
    OutOfRange,
}

impl Message {
    /// True for anti-entropy traffic, which goes through the per-peer throttle.
    pub fn is_sync(&self) -> bool {
        match self {
            Message::Write { origin, .. } => *origin == Origin::Sync,
            Message::WriteAck { .. } | Message::Read { .. } | Message::ReadReply { .. } => false,
            _ => true,
        }
    }

    /// Every key state the message carries.
    pub fn states(&self) -> impl Iterator<Item = &KeyState> + '_ {
        let (list, one): (&[(EntryId, KeyState)], Option<&KeyState>) = match self {
            Message::Write { states, .. } | Message::SyncStates { states, .. } => (states, None),
            Message::ReadReply { state, .. } => (&[], state.as_ref()),
            _ => (&[], None),
        };
        list.iter().map(|(_, s)| s).chain(one)
    }
}

/// Limits a decoded message is checked against (from the replica's config).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The conflict mode every state must have the shape of.
    pub mode: super::state::ConflictMode,
    /// Longest vector.
    pub vector_len_max: usize,
    /// Most siblings or registers in one state.
    pub width_max: usize,
    /// The tree depth.
    pub depth: u8,
}

/// Checks what decoding cannot: state shapes and sizes, tree levels, leaves and parts.
pub fn check(msg: &Message, limits: &Limits) -> Result<(), MessageError> {
    for s in msg.states() {
        s.validate(limits.mode, limits.vector_len_max, limits.width_max)?;
    }
    let leaves = 1u64 << (4 * u32::from(limits.depth));
    let leaf_range_ok = |first: u32, end: u32| first < end && u64::from(end) <= leaves;
    let ok = match msg {
        Message::SyncTree { level, parents, .. } => {
            *level < limits.depth && parents.iter().all(|p| u64::from(*p) < 1u64 << (4 * u32::from(*level)))
        }
        Message::SyncTreeReply { children, .. } => children.len() % FANOUT == 0,
        Message::SyncKeys { leaves: l, .. } => {
            !l.is_empty() && l.windows(2).all(|w| w[0] < w[1]) && l.iter().all(|x| u64::from(*x) < leaves)
        }
        Message::SyncPull { ids, .. } => {
            if ids.iter().any(|(_, clock)| clock.validate().is_err()) {
                return Err(MessageError::State(StateError::BadClock));
            }
            true
        }
        Message::SyncPullRange { first, end, .. } => leaf_range_ok(*first, *end),
        Message::SyncStates { part, parts, .. } => part < parts,
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(MessageError::OutOfRange)
    }
}

/// The exact size of `msg` as a datagram from `from` in `cluster_id`.
pub fn datagram_len(cluster_id: u64, from: NodeId, msg: &Message) -> usize {
    let body = postcard::experimental::serialized_size(msg).unwrap_or(usize::MAX / 2);
    HEADER_BYTES + varint_len(cluster_id) + varint_len(from.0) + body
}

/// Bytes postcard spends on `v`.
pub fn varint_len(v: u64) -> usize {
    (64 - v.max(1).leading_zeros() as usize).div_ceil(7)
}

/// Encodes `msg` into a datagram, failing if it exceeds `max_bytes`.
pub fn encode(cluster_id: u64, from: NodeId, msg: &Message, max_bytes: usize) -> Result<Vec<u8>, WireError> {
    wire::encode(cluster_id, from, msg, max_bytes)
}

/// Decodes and checks a datagram: bounded and total on any input.
pub fn decode(
    bytes: &[u8],
    cluster_id: u64,
    max_bytes: usize,
    limits: &Limits,
) -> Result<Envelope<Message>, MessageError> {
    let env: Envelope<Message> = wire::decode(bytes, cluster_id, max_bytes)?;
    check(&env.body, limits)?;
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::state::ConflictMode;
    use alloc::vec;

    #[test]
    fn datagram_len_is_exact() {
        let msgs = [
            Message::WriteAck { req: 1 << 40, part: 3 },
            Message::Read { req: 7, id: EntryId(u64::MAX) },
            Message::SyncTree { session: 9, rid: 1, root: 77, level: 1, parents: vec![1, 2, 15] },
            Message::SyncKeysReply { session: 1, rid: 2, keys: vec![(EntryId(5), 1 << 63)], more: true },
        ];
        for (i, m) in msgs.iter().enumerate() {
            let cluster = [0, 1, 300, u64::MAX][i];
            let bytes = encode(cluster, NodeId(1 << (i * 9)), m, 65_000).unwrap();
            assert_eq!(bytes.len(), datagram_len(cluster, NodeId(1 << (i * 9)), m), "message {i}");
        }
        assert_eq!([0u64, 127, 128, u64::MAX].map(varint_len), [1, 1, 2, 10]);
    }

    #[test]
    fn out_of_range_fields_are_refused() {
        let limits = Limits { mode: ConflictMode::LastWriteWins, vector_len_max: 8, width_max: 4, depth: 2 };
        let tree = |level, parents| Message::SyncTree { session: 1, rid: 1, root: 0, level, parents };
        assert_eq!(check(&tree(1, vec![15]), &limits), Ok(()));
        assert_eq!(check(&tree(1, vec![16]), &limits), Err(MessageError::OutOfRange));
        assert_eq!(check(&tree(2, vec![0]), &limits), Err(MessageError::OutOfRange));
        let keys = |leaves: Vec<u32>| Message::SyncKeys { session: 1, rid: 1, leaves, after: None };
        assert_eq!(check(&keys(vec![0, 9, 255]), &limits), Ok(()));
        assert_eq!(check(&keys(vec![256]), &limits), Err(MessageError::OutOfRange));
        assert_eq!(check(&keys(vec![4, 4]), &limits), Err(MessageError::OutOfRange));
        assert_eq!(check(&keys(vec![]), &limits), Err(MessageError::OutOfRange));
        let range = |first, end| Message::SyncPullRange { session: 1, rid: 1, first, end, after: None };
        assert_eq!(check(&range(0, 256), &limits), Ok(()));
        assert_eq!(check(&range(3, 3), &limits), Err(MessageError::OutOfRange));
        assert_eq!(check(&range(0, 257), &limits), Err(MessageError::OutOfRange));
        let odd = Message::SyncTreeReply { session: 1, rid: 1, root: 0, children: vec![0; 17] };
        assert_eq!(check(&odd, &limits), Err(MessageError::OutOfRange));
        let parts = Message::SyncStates { session: 1, rid: 1, part: 2, parts: 2, states: vec![], more: false };
        assert_eq!(check(&parts, &limits), Err(MessageError::OutOfRange));
        let actor = |n| crate::replication::Actor { node: NodeId(n), life: 0 };
        let pull = |pairs: Vec<(u64, u64)>| {
            let clock: VersionVector = postcard::from_bytes(
                &postcard::to_allocvec(&pairs.iter().map(|&(n, c)| (actor(n), c)).collect::<Vec<_>>()).unwrap(),
            )
            .unwrap();
            Message::SyncPull { session: 1, rid: 1, ids: vec![(EntryId(1), clock)] }
        };
        assert_eq!(check(&pull(vec![(1, 3), (2, 1)]), &limits), Ok(()));
        assert_eq!(check(&pull(vec![]), &limits), Ok(()));
        assert_eq!(check(&pull(vec![(2, 1), (1, 3)]), &limits), Err(MessageError::State(StateError::BadClock)));
        assert_eq!(check(&pull(vec![(1, 0)]), &limits), Err(MessageError::State(StateError::BadClock)));
    }
}
