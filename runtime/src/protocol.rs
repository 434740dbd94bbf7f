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

/// Values as byte strings in serde: postcard writes them exactly as a `Vec<u8>`'s sequence of
/// bytes (a length, then the bytes), so the wire format is unchanged, but decoding copies the
/// bytes in one go instead of visiting them one at a time.
pub(crate) mod byte_string {
    use serde::de::{Deserializer, Error, SeqAccess, Visitor};
    use serde::Serializer;
    use std::fmt;

    pub(crate) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_bytes(BytesVisitor)
    }

    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            // The length hint comes from the peer: never trust it for the allocation.
            let mut data = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(b) = seq.next_element::<u8>()? {
                data.push(b);
            }
            Ok(data)
        }
    }

    /// The same for an optional value.
    pub(super) mod option {
        use super::BytesVisitor;
        use serde::de::{Deserializer, Error, Visitor};
        use serde::{Serialize, Serializer};
        use std::fmt;

        struct Bytes<'a>(&'a [u8]);

        impl Serialize for Bytes<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(self.0)
            }
        }

        pub(in crate::protocol) fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Some(v) => s.serialize_some(&Bytes(v)),
                None => s.serialize_none(),
            }
        }

        pub(in crate::protocol) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
            d.deserialize_option(OptionVisitor)
        }

        struct OptionVisitor;

        impl<'de> Visitor<'de> for OptionVisitor {
            type Value = Option<Vec<u8>>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an optional byte string")
            }

            fn visit_none<E: Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }

            fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }

            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_bytes(BytesVisitor).map(Some)
            }
        }
    }
}

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
        #[serde(with = "byte_string")]
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
        #[serde(with = "byte_string::option")]
        expected: Option<Vec<u8>>,
        /// The new value, or `None` to delete.
        #[serde(with = "byte_string::option")]
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
        #[serde(with = "byte_string::option")]
        current: Option<Vec<u8>>,
        /// The log index the request was applied at.
        index: LogIndex,
    },
    /// A value read (or `None`).
    Value(#[serde(with = "byte_string::option")] Option<Vec<u8>>),
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

// ----- batches -----

/// Most requests (or responses) one batch datagram carries. A batch that claims more is
/// dropped unread: its count is checked before any item is decoded.
pub const BATCH_ITEMS_MAX: usize = 64;

/// Several requests, or several responses, in one envelope: the body of a
/// [`crate::transport::Kind::ClientRequestBatch`] or
/// [`crate::transport::Kind::ClientResponseBatch`] datagram. Each item keeps its own client id
/// and sequence number, so client sessions treat it exactly as if it had come alone.
///
/// On the wire a batch is the postcard encoding of a sequence: a varint count (1 to
/// [`BATCH_ITEMS_MAX`]) followed by the items, the same bytes a `Vec<T>` encodes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch<T>(pub Vec<T>);

impl<T: Serialize> Serialize for Batch<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Batch<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Bounded<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Bounded<T> {
            type Value = Batch<T>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "1 to {BATCH_ITEMS_MAX} items")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Batch<T>, A::Error> {
                use serde::de::Error;
                // postcard knows the count up front: refuse a huge one before allocating.
                let claimed = seq.size_hint().unwrap_or(0);
                if claimed == 0 || claimed > BATCH_ITEMS_MAX {
                    return Err(A::Error::invalid_length(claimed, &self));
                }
                let mut items = Vec::with_capacity(claimed);
                while let Some(item) = seq.next_element()? {
                    if items.len() == BATCH_ITEMS_MAX {
                        return Err(A::Error::invalid_length(items.len() + 1, &self));
                    }
                    items.push(item);
                }
                Ok(Batch(items))
            }
        }
        d.deserialize_seq(Bounded(std::marker::PhantomData))
    }
}

/// One body to send: a lone item in the single-item format, or a batch of several.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packed {
    /// The envelope of one item (the format of [`crate::transport::Kind::ClientRequest`] and
    /// [`crate::transport::Kind::ClientResponse`]); it may be larger than one datagram, and
    /// the transport then splits it into fragments.
    Single(Vec<u8>),
    /// The envelope of a [`Batch`] of at least two items; never larger than the body limit
    /// it was packed for.
    Batch(Vec<u8>),
}

/// Why items could not be packed.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// An item did not encode.
    #[error("cannot encode: {0}")]
    Encode(#[from] quorate_core::wire::WireError),
    /// An item's size could not be computed.
    #[error("cannot size an item: {0}")]
    Size(#[from] postcard::Error),
}

fn varint_bytes(mut n: usize) -> usize {
    let mut bytes = 1;
    while n >= 0x80 {
        n >>= 7;
        bytes += 1;
    }
    bytes
}

/// Packs `items`, in order, into as few bodies as fit: consecutive items share a batch body of
/// at most `body_bytes_max` bytes and [`BATCH_ITEMS_MAX`] items; an item alone (or too large to
/// share a datagram with anything) goes in the single-item format.
pub fn pack<T: Serialize>(
    cluster_id: u64,
    from: NodeId,
    items: &[T],
    body_bytes_max: usize,
) -> Result<Vec<Packed>, PackError> {
    use quorate_core::wire;
    let mut out = Vec::new();
    if items.len() == 1 {
        out.push(Packed::Single(wire::encode(cluster_id, from, &items[0], usize::MAX)?));
        return Ok(out);
    }
    // An envelope's bytes are its header, the cluster id and sender, then the body's; a
    // batch's body is a count and the items back to back.
    let envelope = wire::encode(cluster_id, from, &(), usize::MAX)?.len();
    let sizes = items.iter().map(postcard::experimental::serialized_size).collect::<Result<Vec<usize>, _>>()?;
    let mut start = 0;
    while start < items.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < items.len()
            && end - start < BATCH_ITEMS_MAX
            && envelope + varint_bytes(end + 1 - start) + bytes + sizes[end] <= body_bytes_max
        {
            bytes += sizes[end];
            end += 1;
        }
        if end - start <= 1 {
            // Alone: too large to share, or the last one left.
            out.push(Packed::Single(wire::encode(cluster_id, from, &items[start], usize::MAX)?));
            start += 1;
            continue;
        }
        let body = wire::encode(cluster_id, from, &BatchRef(&items[start..end]), usize::MAX)?;
        debug_assert!(body.len() <= body_bytes_max, "batch of {} bytes over {body_bytes_max}", body.len());
        out.push(Packed::Batch(body));
        start = end;
    }
    Ok(out)
}

/// A borrowed batch, encoded like [`Batch`].
struct BatchRef<'a, T>(&'a [T]);

impl<T: Serialize> Serialize for BatchRef<'_, T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use quorate_core::wire::{self, WireError};

    const CLUSTER: u64 = 0xc1;

    fn put(client_id: u64, seq: u64, value_bytes: usize) -> Request {
        let op = Op::Write(WriteOp::Put { key: format!("k/{client_id}/{seq}"), value: vec![7; value_bytes] });
        Request { client_id, seq, op }
    }

    /// `WriteOp` and the value-carrying replies as they were encoded before their values
    /// became byte strings: plain `Vec<u8>` fields.
    mod plain {
        use serde::{Deserialize, Serialize};

        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        pub enum WriteOp {
            Put { key: String, value: Vec<u8> },
            Delete { key: String },
            Cas { key: String, expected: Option<Vec<u8>>, value: Option<Vec<u8>> },
        }

        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        pub enum Reply {
            Written { existed: bool, index: u64 },
            Cas { swapped: bool, current: Option<Vec<u8>>, index: u64 },
            Value(Option<Vec<u8>>),
        }
    }

    proptest! {
        #[test]
        fn byte_string_values_keep_the_wire_format(
            key in "[a-z/]{0,20}",
            value in proptest::collection::vec(any::<u8>(), 0..300),
            other in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
        ) {
            let ops = [
                (WriteOp::Put { key: key.clone(), value: value.clone() },
                 plain::WriteOp::Put { key: key.clone(), value: value.clone() }),
                (WriteOp::Cas { key: key.clone(), expected: other.clone(), value: Some(value.clone()) },
                 plain::WriteOp::Cas { key: key.clone(), expected: other.clone(), value: Some(value.clone()) }),
                (WriteOp::Cas { key: key.clone(), expected: Some(value.clone()), value: None },
                 plain::WriteOp::Cas { key: key.clone(), expected: Some(value.clone()), value: None }),
            ];
            for (new, old) in ops {
                let bytes = postcard::to_allocvec(&new).unwrap();
                prop_assert_eq!(&bytes, &postcard::to_allocvec(&old).unwrap());
                prop_assert_eq!(postcard::from_bytes::<WriteOp>(&bytes).unwrap(), new);
            }
            let replies = [
                (Reply::Value(other.clone()), plain::Reply::Value(other.clone())),
                (Reply::Cas { swapped: true, current: other.clone(), index: LogIndex(9) },
                 plain::Reply::Cas { swapped: true, current: other.clone(), index: 9 }),
            ];
            for (new, old) in replies {
                let bytes = postcard::to_allocvec(&new).unwrap();
                prop_assert_eq!(&bytes, &postcard::to_allocvec(&old).unwrap());
                prop_assert_eq!(postcard::from_bytes::<plain::Reply>(&bytes).unwrap(), old);
                prop_assert_eq!(postcard::from_bytes::<Reply>(&bytes).unwrap(), new);
            }
        }
    }

    fn unpack(packed: &[Packed]) -> Vec<Request> {
        let mut out = Vec::new();
        for p in packed {
            match p {
                Packed::Single(b) => out.push(wire::decode::<Request>(b, CLUSTER, usize::MAX).unwrap().body),
                Packed::Batch(b) => out.extend(wire::decode::<Batch<Request>>(b, CLUSTER, usize::MAX).unwrap().body.0),
            }
        }
        out
    }

    /// A batch envelope claiming `count` items, followed by `items` (already encoded).
    fn forged_batch(count: usize, items: &[u8]) -> Vec<u8> {
        let mut body = wire::encode(CLUSTER, NodeId::NONE, &(), usize::MAX).unwrap();
        let mut n = count;
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                body.push(byte);
                break;
            }
            body.push(byte | 0x80);
        }
        body.extend_from_slice(items);
        body
    }

    #[test]
    fn one_item_goes_in_the_single_item_format() {
        let packed = pack(CLUSTER, NodeId::NONE, &[put(1, 1, 10)], 1383).unwrap();
        assert!(matches!(packed.as_slice(), [Packed::Single(_)]));
        assert_eq!(unpack(&packed), vec![put(1, 1, 10)]);
    }

    #[test]
    fn batches_keep_order_and_never_exceed_the_body_limit() {
        for (n, value_bytes, limit) in [(2, 10, 1383), (64, 128, 1383), (200, 1, 1383), (30, 500, 1383), (9, 0, 120)] {
            let items: Vec<Request> = (0..n).map(|i| put(100 + i, i + 1, value_bytes)).collect();
            let packed = pack(CLUSTER, NodeId::NONE, &items, limit).unwrap();
            assert_eq!(unpack(&packed), items, "{n} items of {value_bytes} bytes");
            for p in &packed {
                if let Packed::Batch(b) = p {
                    assert!(b.len() <= limit, "a batch of {} bytes over {limit}", b.len());
                    let count = wire::decode::<Batch<Request>>(b, CLUSTER, usize::MAX).unwrap().body.0.len();
                    assert!((2..=BATCH_ITEMS_MAX).contains(&count), "{count} items in one batch");
                }
            }
            assert!(packed.len() < items.len(), "{n} items were packed into {} bodies", packed.len());
        }
    }

    #[test]
    fn a_batch_is_filled_to_the_byte() {
        let items: Vec<Request> = (0..40).map(|i| put(1 + i, 1, 100)).collect();
        let limit = 1383;
        let packed = pack(CLUSTER, NodeId::NONE, &items, limit).unwrap();
        // Every batch but the last is full: the next item would not have fitted.
        let mut taken = 0;
        for p in &packed[..packed.len() - 1] {
            let Packed::Batch(b) = p else { panic!("a lone item before the last body") };
            let count = wire::decode::<Batch<Request>>(b, CLUSTER, usize::MAX).unwrap().body.0.len();
            let with_next = wire::encode(CLUSTER, NodeId::NONE, &items[taken..taken + count + 1].to_vec(), usize::MAX);
            assert!(with_next.unwrap().len() > limit);
            taken += count;
        }
    }

    #[test]
    fn items_too_large_to_share_go_alone_between_batches() {
        let items = vec![put(1, 1, 10), put(2, 1, 10), put(3, 1, 5000), put(4, 1, 10), put(5, 1, 10)];
        let packed = pack(CLUSTER, NodeId::NONE, &items, 1383).unwrap();
        assert!(matches!(packed.as_slice(), [Packed::Batch(_), Packed::Single(_), Packed::Batch(_)]), "{packed:?}");
        assert_eq!(unpack(&packed), items);
    }

    #[test]
    fn a_batch_encodes_like_a_vec_of_its_items() {
        let items = vec![put(1, 1, 3), put(2, 9, 4)];
        let as_vec = wire::encode(CLUSTER, NodeId::NONE, &items, usize::MAX).unwrap();
        let as_batch = wire::encode(CLUSTER, NodeId::NONE, &Batch(items.clone()), usize::MAX).unwrap();
        assert_eq!(as_vec, as_batch);
        let Packed::Batch(packed) = &pack(CLUSTER, NodeId::NONE, &items, 1383).unwrap()[0] else { panic!() };
        assert_eq!(packed, &as_batch);
    }

    #[test]
    fn malformed_batches_are_refused_with_a_typed_error() {
        let one = postcard::to_allocvec(&put(1, 1, 4)).unwrap();
        let decode = |b: &[u8]| wire::decode::<Batch<Request>>(b, CLUSTER, usize::MAX).map(|e| e.body.0.len());
        // Well formed: two items.
        let two = [one.clone(), one.clone()].concat();
        assert_eq!(decode(&forged_batch(2, &two)), Ok(2));
        // Empty, over the item limit (even with the items present), a count with fewer items,
        // a truncated item, trailing bytes.
        assert_eq!(decode(&forged_batch(0, &[])), Err(WireError::Malformed));
        let many = one.repeat(BATCH_ITEMS_MAX + 1);
        assert_eq!(decode(&forged_batch(BATCH_ITEMS_MAX + 1, &many)), Err(WireError::Malformed));
        assert_eq!(decode(&forged_batch(BATCH_ITEMS_MAX, &one.repeat(BATCH_ITEMS_MAX))), Ok(BATCH_ITEMS_MAX));
        assert_eq!(decode(&forged_batch(u32::MAX as usize, &two)), Err(WireError::Malformed));
        assert_eq!(decode(&forged_batch(3, &two)), Err(WireError::Malformed));
        assert_eq!(decode(&forged_batch(2, &two[..two.len() - 1])), Err(WireError::Malformed));
        assert_eq!(decode(&forged_batch(2, &[two.as_slice(), &[0]].concat())), Err(WireError::Malformed));
        // Another cluster's batch.
        let mut other =
            wire::encode(CLUSTER + 1, NodeId::NONE, &Batch(vec![put(1, 1, 1), put(2, 1, 1)]), usize::MAX).unwrap();
        assert!(matches!(decode(&other), Err(WireError::WrongCluster { .. })));
        other.truncate(5);
        assert!(decode(&other).is_err());
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_batches_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
            let _ = wire::decode::<Batch<Request>>(&bytes, CLUSTER, 1383);
            let _ = wire::decode::<Batch<Response>>(&bytes, CLUSTER, 1383);
            let framed = forged_batch(usize::from(bytes.first().copied().unwrap_or(0)), &bytes);
            if let Ok(env) = wire::decode::<Batch<Request>>(&framed, CLUSTER, usize::MAX) {
                prop_assert!((1..=BATCH_ITEMS_MAX).contains(&env.body.0.len()));
            }
        }

        #[test]
        fn packing_round_trips_within_the_limit(
            sizes in proptest::collection::vec(0usize..2000, 1..100),
            limit in 200usize..1500,
        ) {
            let items: Vec<Request> = sizes.iter().enumerate().map(|(i, s)| put(i as u64 + 1, 1, *s)).collect();
            let packed = pack(CLUSTER, NodeId::NONE, &items, limit).unwrap();
            for p in &packed {
                if let Packed::Batch(b) = p {
                    prop_assert!(b.len() <= limit);
                }
            }
            prop_assert_eq!(unpack(&packed), items);
        }
    }
}
