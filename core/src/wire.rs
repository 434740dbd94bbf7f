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

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut bytes = alloc::vec![b'Q', b'R', PROTOCOL_VERSION];
            bytes.extend_from_slice(&tail);
            let _ = decode::<Message>(&bytes, 0, 4096);
            let _ = decode::<Message>(&tail, 0, 4096);
        }
    }
}
