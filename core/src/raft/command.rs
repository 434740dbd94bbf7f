//! The payload of a command entry: immutable bytes shared by every copy of the entry.
//!
//! A leader's entry is held by its log, by one append per follower and by the host's
//! persist and apply paths at the same time. `Command` is an `Arc<[u8]>`, so all of them
//! share one allocation made when the command is proposed, and a copy costs one reference
//! count. (`bytes::Bytes` built from a `Vec` allocates a second time on its first clone,
//! which profiles of batched proposals showed as the largest single cost.)

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Deref;
use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// An opaque command for the host's state machine: cheap to clone, never mutated.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Command(Arc<[u8]>);

impl Command {
    /// A command holding a copy of `data`.
    pub fn copy_from_slice(data: &[u8]) -> Command {
        Command(Arc::from(data))
    }

    /// The command's bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }
}

impl Default for Command {
    fn default() -> Self {
        Command(Arc::from(&[][..]))
    }
}

impl Deref for Command {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Command {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl From<&[u8]> for Command {
    fn from(data: &[u8]) -> Self {
        Command::copy_from_slice(data)
    }
}

impl<const N: usize> From<&[u8; N]> for Command {
    fn from(data: &[u8; N]) -> Self {
        Command::copy_from_slice(data)
    }
}

impl From<&str> for Command {
    fn from(data: &str) -> Self {
        Command::copy_from_slice(data.as_bytes())
    }
}

impl From<Vec<u8>> for Command {
    fn from(data: Vec<u8>) -> Self {
        Command(Arc::from(data))
    }
}

impl From<bytes::Bytes> for Command {
    fn from(data: bytes::Bytes) -> Self {
        Command::copy_from_slice(&data)
    }
}

impl PartialEq<[u8]> for Command {
    fn eq(&self, other: &[u8]) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&[u8]> for Command {
    fn eq(&self, other: &&[u8]) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<str> for Command {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other.as_bytes()
    }
}

impl PartialEq<&str> for Command {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == *other.as_bytes()
    }
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Printable commands read as text in transcripts and failures; others as escapes.
        write!(f, "b\"{}\"", self.0.escape_ascii())
    }
}

impl Serialize for Command {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_bytes(CommandVisitor)
    }
}

/// Accepts the byte-string forms serde formats produce (and a sequence of bytes, for
/// self-describing formats that have no byte strings).
struct CommandVisitor;

impl<'de> Visitor<'de> for CommandVisitor {
    type Value = Command;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Command, E> {
        Ok(Command::copy_from_slice(v))
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Command, E> {
        Ok(Command::from(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Command, A::Error> {
        // The length hint comes from the peer: never trust it for the allocation.
        let mut data = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(b) = seq.next_element::<u8>()? {
            data.push(b);
        }
        Ok(Command::from(data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_one_allocation() {
        let a = Command::from(&b"hello"[..]);
        let b = a.clone();
        assert!(core::ptr::eq(a.as_slice().as_ptr(), b.as_slice().as_ptr()));
        assert_eq!(b, "hello");
    }

    #[test]
    fn postcard_encodes_as_length_prefixed_bytes() {
        let c = Command::from("abc");
        let wire = postcard::to_allocvec(&c).expect("encode");
        assert_eq!(wire, [3, b'a', b'b', b'c']);
        let back: Command = postcard::from_bytes(&wire).expect("decode");
        assert_eq!(back, c);
        // A length longer than the input is an error, not an allocation.
        assert!(postcard::from_bytes::<Command>(&[0xff, 0xff, 0xff, 0x0f, 1]).is_err());
    }

    #[test]
    fn debug_escapes_non_printable_bytes() {
        assert_eq!(alloc::format!("{:?}", Command::from(&[b'o', b'k', 0][..])), "b\"ok\\x00\"");
    }
}
