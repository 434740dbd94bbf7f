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
        let mut h = SeqWriter::begin(cluster_id, from, capacity);
        h.value(head)?;
        Ok(h.items())
    }

    /// Writes the envelope for `cluster_id` from `from`, leaving the head to the caller: a
    /// hot message's fields written by hand cost a few instructions each, where serde's
    /// generic path costs tens (the caller's tests pin the bytes to postcard's).
    pub fn begin(cluster_id: u64, from: NodeId, capacity: usize) -> HeadWriter {
        let mut out = Vec::with_capacity(capacity);
        out.extend_from_slice(&MAGIC);
        out.push(PROTOCOL_VERSION);
        put_varint(&mut out, cluster_id);
        put_varint(&mut out, from.0);
        HeadWriter { out }
    }

    /// Bytes written so far, counting the sequence's length as one byte.
    pub fn written(&self) -> usize {
        self.out.len()
    }

    /// Items appended so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Appends an item that `write` encodes (a hand-written encoding) if the datagram stays
    /// within `limit` bytes; returns whether it did.
    pub fn push_encoded_within(&mut self, limit: usize, write: impl FnOnce(&mut Vec<u8>)) -> bool {
        if self.failed {
            return false;
        }
        let mark = self.out.len();
        write(&mut self.out);
        if self.out.len() <= limit {
            self.count += 1;
            return true;
        }
        self.out.truncate(mark);
        false
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
        // `HeadWriter::items` pushed a one-byte placeholder at `count_at`, and nothing truncates
        // below it, so the index holds.
        if self.count < 0x80 {
            self.out[self.count_at] = self.count as u8;
        } else {
            let mut wide = Vec::with_capacity(10);
            put_varint(&mut wide, self.count as u64);
            self.out.splice(self.count_at..=self.count_at, wide);
        }
        if self.out.len() > max_bytes {
            return Err(WireError::TooLarge { len: self.out.len(), max: max_bytes });
        }
        Ok(self.out)
    }
}

/// The start of a [`SeqWriter`]'s datagram: the envelope is written, the message's leading
/// fields are being written.
#[derive(Debug)]
pub struct HeadWriter {
    out: Vec<u8>,
}

impl HeadWriter {
    /// Appends an integer as postcard writes any `u16`, `u32`, `u64` or `usize`, an enum's
    /// variant index or a sequence's length: an unsigned LEB128 varint.
    #[inline]
    pub fn varint(&mut self, v: u64) {
        put_varint(&mut self.out, v);
    }

    /// Appends `value` in its postcard encoding.
    pub fn value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), WireError> {
        let out = postcard::to_extend(value, core::mem::take(&mut self.out)).map_err(|_| WireError::Malformed)?;
        self.out = out;
        Ok(())
    }

    /// Ends the head; what follows is the trailing sequence, item by item.
    pub fn items(mut self) -> SeqWriter {
        let count_at = self.out.len();
        // The count's first varint byte; `finish` widens it in the rare case of 128 items or more.
        self.out.push(0);
        SeqWriter { out: self.out, count_at, count: 0, failed: false }
    }
}

/// How many bytes [`put_varint`] writes for `v`.
#[inline]
pub fn varint_len(v: u64) -> usize {
    // One byte per started group of 7 bits, and one for zero.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Appends `s` as postcard encodes a string: its length, then its bytes.
#[inline]
pub fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Appends `v` as an unsigned LEB128 varint, as postcard encodes every integer wider than a
/// byte.
#[inline]
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A cursor over a datagram's postcard bytes for a hand-written decoder of a hot message. It
/// accepts exactly what postcard accepts (overlong varints included, a last byte with bits past
/// the type's width refused), so a hand-decoded message equals postcard's decoding of the same
/// bytes; what it does not decode by hand it hands to postcard with [`Reader::value`].
#[derive(Clone, Copy, Debug)]
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Checks the size limit, magic and version as [`decode`] does, and reads the envelope's
    /// cluster id and sender. The caller checks the cluster id after the body decodes, as
    /// [`decode`] does, so both report the same error for the same bytes.
    pub fn open(bytes: &'a [u8], max_bytes: usize) -> Result<(u64, NodeId, Reader<'a>), WireError> {
        check_header(bytes, max_bytes)?;
        let mut r = Reader { rest: &bytes[HEADER_BYTES..] };
        let cluster_id = r.varint_u64()?;
        let from = NodeId(r.varint_u64()?);
        Ok((cluster_id, from, r))
    }

    /// A reader over bare postcard bytes, no envelope.
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { rest: bytes }
    }

    /// The bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }

    #[inline]
    fn varint(&mut self, max_len: usize, last_max: u8) -> Result<u64, WireError> {
        // Most fields are small: one byte, which needs no overflow check at any width.
        match self.rest.split_first() {
            Some((&b, rest)) if b < 0x80 => {
                self.rest = rest;
                Ok(u64::from(b))
            }
            _ => self.varint_long(max_len, last_max),
        }
    }

    fn varint_long(&mut self, max_len: usize, last_max: u8) -> Result<u64, WireError> {
        let mut out = 0u64;
        for i in 0..max_len {
            let Some((&b, rest)) = self.rest.split_first() else { return Err(WireError::Malformed) };
            self.rest = rest;
            out |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return if i == max_len - 1 && b > last_max { Err(WireError::Malformed) } else { Ok(out) };
            }
        }
        Err(WireError::Malformed)
    }

    /// Reads a `u64` as postcard encodes it.
    #[inline]
    pub fn varint_u64(&mut self) -> Result<u64, WireError> {
        self.varint(10, 0x01)
    }

    /// Reads a `u32` (or an enum's variant index) as postcard encodes it.
    #[inline]
    pub fn varint_u32(&mut self) -> Result<u32, WireError> {
        // Five bytes with at most four bits in the last never exceed u32::MAX.
        self.varint(5, 0x0f).map(|v| v as u32)
    }

    /// Reads a `u16` as postcard encodes it.
    #[inline]
    pub fn varint_u16(&mut self) -> Result<u16, WireError> {
        self.varint(3, 0x03).map(|v| v as u16)
    }

    /// Reads a `usize` (a sequence's or a string's length) as postcard encodes it on this
    /// target.
    #[inline]
    pub fn varint_usize(&mut self) -> Result<usize, WireError> {
        let v = if usize::BITS == 64 { self.varint(10, 0x01)? } else { self.varint(5, 0x0f)? };
        usize::try_from(v).map_err(|_| WireError::Malformed)
    }

    /// Reads the next `n` bytes.
    #[inline]
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.rest.len() {
            return Err(WireError::Malformed);
        }
        let (taken, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(taken)
    }

    /// Reads a string as postcard encodes it: its length, then its bytes, which must be UTF-8.
    pub fn str(&mut self) -> Result<&'a str, WireError> {
        let n = self.varint_usize()?;
        core::str::from_utf8(self.bytes(n)?).map_err(|_| WireError::Malformed)
    }

    /// Reads a `T` with postcard.
    pub fn value<T: DeserializeOwned>(&mut self) -> Result<T, WireError> {
        let (value, rest) = postcard::take_from_bytes(self.rest).map_err(|_| WireError::Malformed)?;
        self.rest = rest;
        Ok(value)
    }

    /// Ends the decoding: every byte read, and the datagram from `expected`'s cluster.
    pub fn finish(self, got: u64, expected: u64) -> Result<(), WireError> {
        if !self.rest.is_empty() {
            return Err(WireError::Malformed);
        }
        if got != expected {
            return Err(WireError::WrongCluster { expected, got });
        }
        Ok(())
    }
}

fn check_header(bytes: &[u8], max_bytes: usize) -> Result<(), WireError> {
    if bytes.len() > max_bytes {
        return Err(WireError::TooLarge { len: bytes.len(), max: max_bytes });
    }
    if bytes.len() < HEADER_BYTES || bytes[..2] != MAGIC {
        return Err(WireError::BadMagic);
    }
    if bytes[2] != PROTOCOL_VERSION {
        return Err(WireError::UnsupportedVersion(bytes[2]));
    }
    Ok(())
}

/// Decodes a datagram for `cluster_id`, refusing anything over `max_bytes`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], cluster_id: u64, max_bytes: usize) -> Result<Envelope<T>, WireError> {
    check_header(bytes, max_bytes)?;
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
