//! The datagram envelope: magic, protocol version, cluster id, sender, then the message.
//!
//! Layout: two magic bytes `QR`, one version byte, then the postcard encoding of
//! `(cluster_id, from, body)`. Decoding is bounded and total: it checks the size limit before
//! anything else, rejects an unknown version without guessing, and never panics on any input
//! (postcard caps allocations by the input length).

use alloc::vec::Vec;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::NodeId;

/// The two bytes every Quorate datagram starts with.
pub const MAGIC: [u8; 2] = *b"QR";
/// The protocol version this build speaks. Bumped explicitly on any incompatible change.
pub const PROTOCOL_VERSION: u8 = 1;
/// Bytes before the postcard body.
pub const HEADER_BYTES: usize = 3;

/// A decoded datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope<T> {
    /// The cluster the sender belongs to.
    pub cluster_id: u64,
    /// The sender.
    pub from: NodeId,
    /// The message.
    pub body: T,
}

#[derive(Serialize)]
struct BodyRef<'a, T> {
    cluster_id: u64,
    from: NodeId,
    body: &'a T,
}

#[derive(Deserialize)]
struct BodyOwned<T> {
    cluster_id: u64,
    from: NodeId,
    body: T,
}

/// Why a datagram was not encoded or was rejected. A rejected datagram changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum WireError {
    /// Larger than the configured maximum.
    #[error("datagram of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// The datagram's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Does not start with the magic bytes.
    #[error("not a Quorate datagram (bad magic)")]
    BadMagic,
    /// Speaks a protocol version this build does not.
    #[error("unsupported protocol version {0} (this build speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion(u8),
    /// From another cluster.
    #[error("datagram for cluster {got:#x}, expected {expected:#x}")]
    WrongCluster {
        /// This node's cluster.
        expected: u64,
        /// The datagram's cluster.
        got: u64,
    },
    /// The body does not decode, or bytes follow it.
    #[error("malformed datagram body")]
    Malformed,
}

/// Encodes `body` from `from` for `cluster_id`, failing if it exceeds `max_bytes`.
pub fn encode<T: Serialize>(cluster_id: u64, from: NodeId, body: &T, max_bytes: usize) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&MAGIC);
    out.push(PROTOCOL_VERSION);
    let out = postcard::to_extend(&BodyRef { cluster_id, from, body }, out).map_err(|_| WireError::Malformed)?;
    if out.len() > max_bytes {
        return Err(WireError::TooLarge { len: out.len(), max: max_bytes });
    }
    Ok(out)
}

/// A datagram built in one pass: the envelope, a message's leading fields (`head`), then its
/// trailing sequence item by item. Postcard encodes a struct as its fields in order and a
/// sequence as its length then its items, so this writes exactly the bytes [`encode`] writes
/// for the whole message, while the sender sizes each item against the bytes already written
/// instead of encoding everything twice (once to measure, once to send).
#[derive(Debug)]
pub struct SeqWriter {
    out: Vec<u8>,
    count_at: usize,
    count: usize,
    /// An item failed to serialize (its buffer went with it); `finish` refuses.
    failed: bool,
}

impl SeqWriter {
    /// Writes the envelope for `cluster_id` from `from` and `head`, with room for `capacity`
    /// bytes in all.
    pub fn new<T: Serialize>(cluster_id: u64, from: NodeId, head: &T, capacity: usize) -> Result<SeqWriter, WireError> {
        let mut out = Vec::with_capacity(capacity);
        out.extend_from_slice(&MAGIC);
        out.push(PROTOCOL_VERSION);
        let mut out =
            postcard::to_extend(&BodyRef { cluster_id, from, body: head }, out).map_err(|_| WireError::Malformed)?;
        let count_at = out.len();
        // The count's first varint byte; `finish` widens it in the rare case of 128 items or more.
        out.push(0);
        Ok(SeqWriter { out, count_at, count: 0, failed: false })
    }

    /// Bytes written so far, counting the sequence's length as one byte.
    pub fn written(&self) -> usize {
        self.out.len()
    }

    /// Items appended so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Appends `item` if the datagram stays within `limit` bytes; returns whether it did.
    pub fn push_within<T: Serialize>(&mut self, item: &T, limit: usize) -> bool {
        if self.failed {
            return false;
        }
        let mark = self.out.len();
        match postcard::to_extend(item, core::mem::take(&mut self.out)) {
            Ok(out) => {
                self.out = out;
                if self.out.len() <= limit {
                    self.count += 1;
                    return true;
                }
                self.out.truncate(mark);
                false
            }
            // An item whose `Serialize` fails; postcard took the buffer with it, so the
            // datagram is lost and `finish` says so.
            Err(_) => {
                self.failed = true;
                false
            }
        }
    }

    /// The finished datagram, or `TooLarge` if it exceeds `max_bytes`.
    pub fn finish(mut self, max_bytes: usize) -> Result<Vec<u8>, WireError> {
        if self.failed {
            return Err(WireError::Malformed);
        }
        // Ten bytes hold any u64 in LEB128 (7 bits each), so `len` never passes the array.
        let mut varint = [0u8; 10];
        let mut n = self.count as u64;
        let mut len = 0;
        // An unsigned LEB128 varint, as postcard writes a sequence's length.
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            varint[len] = if n == 0 { byte } else { byte | 0x80 };
            len += 1;
            if n == 0 {
                break;
            }
        }
        // `new` pushed the placeholder at `count_at` and nothing truncates below it.
        self.out[self.count_at] = varint[0];
        if len > 1 {
            let at = self.count_at + 1;
            self.out.splice(at..at, varint[1..len].iter().copied());
        }
        if self.out.len() > max_bytes {
            return Err(WireError::TooLarge { len: self.out.len(), max: max_bytes });
        }
        Ok(self.out)
    }
}

/// Decodes a datagram for `cluster_id`, refusing anything over `max_bytes`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], cluster_id: u64, max_bytes: usize) -> Result<Envelope<T>, WireError> {
    if bytes.len() > max_bytes {
        return Err(WireError::TooLarge { len: bytes.len(), max: max_bytes });
    }
    if bytes.len() < HEADER_BYTES || bytes[..2] != MAGIC {
        return Err(WireError::BadMagic);
    }
    if bytes[2] != PROTOCOL_VERSION {
        return Err(WireError::UnsupportedVersion(bytes[2]));
    }
    let (decoded, rest): (BodyOwned<T>, &[u8]) =
        postcard::take_from_bytes(&bytes[HEADER_BYTES..]).map_err(|_| WireError::Malformed)?;
    if !rest.is_empty() {
        return Err(WireError::Malformed);
    }
    if decoded.cluster_id != cluster_id {
        return Err(WireError::WrongCluster { expected: cluster_id, got: decoded.cluster_id });
    }
    Ok(Envelope { cluster_id, from: decoded.from, body: decoded.body })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{LogIndex, Message, MessageBody, Term};
    use proptest::prelude::*;

    fn sample() -> Message {
        Message { term: Term(3), body: MessageBody::Heartbeat { commit: LogIndex(9), ctx: 77 } }
    }

    #[test]
    fn round_trips() {
        let bytes = encode(5, NodeId(2), &sample(), 1400).unwrap();
        let env: Envelope<Message> = decode(&bytes, 5, 1400).unwrap();
        assert_eq!(env, Envelope { cluster_id: 5, from: NodeId(2), body: sample() });
    }

    #[test]
    fn rejects_with_typed_errors() {
        let bytes = encode(5, NodeId(2), &sample(), 1400).unwrap();
        assert_eq!(decode::<Message>(&bytes, 6, 1400), Err(WireError::WrongCluster { expected: 6, got: 5 }));
        assert_eq!(decode::<Message>(&bytes, 5, 4), Err(WireError::TooLarge { len: bytes.len(), max: 4 }));
        let mut v2 = bytes.clone();
        v2[2] = 2;
        assert_eq!(decode::<Message>(&v2, 5, 1400), Err(WireError::UnsupportedVersion(2)));
        assert_eq!(decode::<Message>(b"XX\x01", 5, 1400), Err(WireError::BadMagic));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(decode::<Message>(&trailing, 5, 1400), Err(WireError::Malformed));
        assert_eq!(decode::<Message>(&bytes[..bytes.len() - 1], 5, 1400), Err(WireError::Malformed));
        assert!(matches!(encode(5, NodeId(2), &sample(), 3), Err(WireError::TooLarge { .. })));
    }

    /// A value whose serialization fails, as a foreign `Serialize` impl may.
    struct Unserializable;

    impl Serialize for Unserializable {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("refuses"))
        }
    }

    #[test]
    fn an_item_that_fails_to_serialize_fails_the_datagram_without_a_panic() {
        let mut w = SeqWriter::new(7, NodeId(3), &1u64, 64).unwrap();
        assert!(w.push_within(&5u64, usize::MAX));
        assert!(!w.push_within(&Unserializable, usize::MAX));
        assert!(!w.push_within(&6u64, usize::MAX), "nothing more after a failure");
        assert_eq!(w.finish(usize::MAX), Err(WireError::Malformed));
    }

    #[derive(Serialize)]
    struct Whole {
        a: u64,
        b: Message,
        tail: Vec<u64>,
    }

    #[derive(Serialize)]
    struct Head<'a> {
        a: u64,
        b: &'a Message,
    }

    proptest! {
        /// A head plus a sequence appended item by item is byte for byte the whole message,
        /// at every length (the count's varint widens at 128 items) and item size; an item
        /// that would cross the limit is left out and leaves no trace.
        #[test]
        fn a_head_and_an_appended_sequence_encode_as_the_whole_message(
            a in any::<u64>(),
            tail in proptest::collection::vec(any::<u64>(), 0..300),
        ) {
            let whole = Whole { a, b: sample(), tail: tail.clone() };
            let expected = encode(7, NodeId(3), &whole, usize::MAX).unwrap();
            let mut w = SeqWriter::new(7, NodeId(3), &Head { a, b: &sample() }, 64).unwrap();
            for x in &tail {
                prop_assert!(!w.push_within(&u64::MAX, w.written() + 9), "a 10-byte varint does not fit in 9");
                prop_assert!(w.push_within(x, usize::MAX));
            }
            prop_assert_eq!(w.count(), tail.len());
            let limit = expected.len() - 1;
            let mut again = SeqWriter::new(7, NodeId(3), &Head { a, b: &sample() }, 64).unwrap();
            for x in &tail {
                again.push_within(x, usize::MAX);
            }
            prop_assert_eq!(w.finish(usize::MAX).unwrap(), expected.clone());
            prop_assert_eq!(again.finish(limit), Err(WireError::TooLarge { len: expected.len(), max: limit }));
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut bytes = alloc::vec![b'Q', b'R', PROTOCOL_VERSION];
            bytes.extend_from_slice(&tail);
            let _ = decode::<Message>(&bytes, 0, 4096);
            let _ = decode::<Message>(&tail, 0, 4096);
        }
    }
}
