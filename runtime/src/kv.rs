//! The cluster's metadata: a key-value map replicated through Raft, with client sessions.
//!
//! Every node applies the same committed commands in the same order, so every node's map is
//! the same at the same index. Client sessions live in the replicated state too: a retried
//! write (same client id and sequence number) is answered from the session, never applied
//! twice, on whichever node is leader when the retry arrives. Sessions are bounded; the one
//! used least recently (by log index, so every node evicts the same one) goes first.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use quorate_core::raft::LogIndex;
use serde::{Deserialize, Serialize};

use crate::protocol::{Reply, WriteOp};

/// A write as it travels through the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// The client's id.
    pub client_id: u64,
    /// The request's sequence number.
    pub seq: u64,
    /// The write.
    pub op: WriteOp,
}

/// A [`Command`] borrowing its write: encodes exactly as the `Command` it describes, so a
/// node can put a client's request into the log without copying its key or value first.
#[derive(Debug, Serialize)]
pub struct CommandRef<'a> {
    /// The client's id.
    pub client_id: u64,
    /// The request's sequence number.
    pub seq: u64,
    /// The write.
    pub op: &'a WriteOp,
}

/// A committed command decoded in place: its key and values borrow the log entry's bytes, so
/// applying an overwrite copies the value into the buffer the key already has and allocates
/// nothing. The same bytes as a [`Command`], decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub struct CommandView<'a> {
    /// The client's id.
    pub client_id: u64,
    /// The request's sequence number.
    pub seq: u64,
    /// The write.
    #[serde(borrow)]
    pub op: WriteOpView<'a>,
}

/// A [`WriteOp`] borrowed from its encoding (variants and fields in the same order, so the
/// same bytes decode to either).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum WriteOpView<'a> {
    /// Sets `key` to `value`.
    Put {
        /// The key.
        key: &'a str,
        /// The value.
        value: &'a [u8],
    },
    /// Removes `key`.
    Delete {
        /// The key.
        key: &'a str,
    },
    /// Sets `key` to `value` (or removes it when `None`) only if it now holds `expected`
    /// (`None`: only if absent).
    Cas {
        /// The key.
        key: &'a str,
        /// What the key must hold for the swap to happen.
        #[serde(borrow)]
        expected: Option<&'a [u8]>,
        /// The new value, or `None` to delete.
        #[serde(borrow)]
        value: Option<&'a [u8]>,
    },
}

impl Command {
    /// The command as a [`CommandView`] of its own fields.
    pub fn view(&self) -> CommandView<'_> {
        CommandView { client_id: self.client_id, seq: self.seq, op: WriteOpView::of(&self.op) }
    }
}

impl<'a> WriteOpView<'a> {
    /// A view of `op`'s fields.
    pub fn of(op: &'a WriteOp) -> WriteOpView<'a> {
        match op {
            WriteOp::Put { key, value } => WriteOpView::Put { key, value },
            WriteOp::Delete { key } => WriteOpView::Delete { key },
            WriteOp::Cas { key, expected, value } => {
                WriteOpView::Cas { key, expected: expected.as_deref(), value: value.as_deref() }
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    seq: u64,
    reply: Reply,
    last_index: LogIndex,
}

/// The replicated map and its sessions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kv {
    map: Pairs,
    sessions: BTreeMap<u64, Session>,
    /// `(last_index, client_id)` of every session, oldest first, for eviction.
    by_age: BTreeSet<(LogIndex, u64)>,
    applied: LogIndex,
    sessions_max: usize,
}

/// The key-value pairs: values by hashed key for point reads and writes (a put that
/// overwrites does one hash lookup, not a walk of string comparisons down a tree), keys in
/// order for scans and snapshots. Nothing iterates the hash map, so its order never shows.
/// Encodes exactly as the `BTreeMap<String, Vec<u8>>` it replaces.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Pairs {
    values: HashMap<Arc<str>, Vec<u8>>,
    keys: BTreeSet<Arc<str>>,
}

impl Pairs {
    fn len(&self) -> usize {
        self.values.len()
    }

    fn get(&self, key: &str) -> Option<&Vec<u8>> {
        self.values.get(key)
    }

    /// Sets `key` to `value`; true if it was there.
    fn put(&mut self, key: String, value: Vec<u8>) -> bool {
        if let Some(v) = self.values.get_mut(key.as_str()) {
            *v = value;
            return true;
        }
        self.insert_new(Arc::from(key), value);
        false
    }

    fn insert_new(&mut self, key: Arc<str>, value: Vec<u8>) {
        self.keys.insert(key.clone());
        self.values.insert(key, value);
    }

    /// [`Pairs::put`] from borrowed bytes. An overwrite reuses the old value's buffer when it
    /// fits: freeing the old value and allocating the new one were each a cache miss on a
    /// cold block, about as much as the rest of an apply (profile at 256 put clients).
    fn put_slice(&mut self, key: &str, value: &[u8]) -> bool {
        if let Some(v) = self.values.get_mut(key) {
            // Not a buffer far larger than the value: a map of small values must not keep
            // the memory of a large one it once held.
            if v.capacity() >= value.len() && v.capacity() <= value.len().saturating_mul(2).max(64) {
                v.clear();
                v.extend_from_slice(value);
            } else {
                *v = value.to_vec();
            }
            return true;
        }
        self.insert_new(Arc::from(key), value.to_vec());
        false
    }

    fn remove(&mut self, key: &str) -> Option<Vec<u8>> {
        let value = self.values.remove(key)?;
        self.keys.remove(key);
        Some(value)
    }

    /// Pairs in key order from `lower` on.
    fn range<'a>(&'a self, lower: Bound<&'a str>) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'a {
        self.keys
            .range::<str, _>((lower, Bound::Unbounded))
            .map(|k| (&**k, self.values.get(k).map_or(&[][..], Vec::as_slice)))
    }
}

impl Serialize for Pairs {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        // Values as byte strings: postcard writes them exactly as a `Vec<u8>`'s sequence (a
        // length, then the bytes), in one copy instead of one call per byte.
        struct Value<'a>(&'a [u8]);
        impl Serialize for Value<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(self.0)
            }
        }
        let mut map = s.serialize_map(Some(self.keys.len()))?;
        for (k, v) in self.range(Bound::Unbounded) {
            map.serialize_entry(k, &Value(v))?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Pairs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// A value, decoded as a byte string (the same bytes as a `Vec<u8>`, in one copy).
        #[derive(Deserialize)]
        struct Value(#[serde(with = "crate::protocol::byte_string")] Vec<u8>);
        let map = BTreeMap::<String, Value>::deserialize(d)?;
        let mut pairs = Pairs::default();
        for (k, v) in map {
            pairs.put(k, v.0);
        }
        Ok(pairs)
    }
}

/// Why a snapshot could not be restored.
#[derive(Debug, thiserror::Error)]
#[error("metadata snapshot does not decode: {0}")]
pub struct RestoreError(String);

impl Kv {
    /// An empty map keeping at most `sessions_max` client sessions.
    pub fn new(sessions_max: usize) -> Kv {
        Kv { sessions_max: sessions_max.max(1), ..Kv::default() }
    }

    /// The index of the last command applied.
    pub fn applied(&self) -> LogIndex {
        self.applied
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True if no key is held.
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.map.get(key).map(Vec::as_slice)
    }

    /// Up to `limit` pairs whose key starts with `prefix`, after `start_after`; and whether more follow.
    pub fn list(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> (Vec<(String, Vec<u8>)>, bool) {
        let mut items = Vec::new();
        let lower = match start_after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        let mut range = self.map.range(lower).take_while(|(k, _)| k.starts_with(prefix));
        for (k, v) in range.by_ref() {
            if items.len() == limit {
                return (items, true);
            }
            items.push((k.to_string(), v.to_vec()));
        }
        (items, false)
    }

    /// Records that an entry without a command (a no-op or membership change) was applied.
    pub fn skip(&mut self, index: LogIndex) {
        self.applied = self.applied.max(index);
    }

    /// Applies a committed command at `index` and returns its reply (the remembered one for a
    /// retry). The key and value are copied from the view: decode the entry as a
    /// [`CommandView`] and nothing is allocated for them unless the key is new or the old
    /// value's buffer does not fit the new one.
    pub fn apply(&mut self, index: LogIndex, cmd: &CommandView<'_>) -> Reply {
        self.applied = self.applied.max(index);
        if let Some(s) = self.sessions.get(&cmd.client_id) {
            if cmd.seq == s.seq {
                return s.reply.clone();
            }
            if cmd.seq < s.seq {
                return Reply::Error(format!("request {} is older than this client's last ({})", cmd.seq, s.seq));
            }
        }
        let reply = self.write(index, &cmd.op);
        let session = Session { seq: cmd.seq, reply: reply.clone(), last_index: index };
        match self.sessions.get_mut(&cmd.client_id) {
            Some(s) => {
                self.by_age.remove(&(s.last_index, cmd.client_id));
                *s = session;
            }
            None => {
                self.sessions.insert(cmd.client_id, session);
            }
        }
        self.by_age.insert((index, cmd.client_id));
        while self.sessions.len() > self.sessions_max {
            let Some((_, client)) = self.by_age.pop_first() else { break };
            self.sessions.remove(&client);
        }
        reply
    }

    /// Applies a write that carries no client session (the node's own bookkeeping).
    pub fn apply_unsessioned(&mut self, index: LogIndex, op: &WriteOpView<'_>) -> Reply {
        self.applied = self.applied.max(index);
        self.write(index, op)
    }

    fn write(&mut self, index: LogIndex, op: &WriteOpView<'_>) -> Reply {
        match *op {
            WriteOpView::Put { key, value } => Reply::Written { existed: self.map.put_slice(key, value), index },
            WriteOpView::Delete { key } => Reply::Written { existed: self.map.remove(key).is_some(), index },
            WriteOpView::Cas { key, expected, value } => {
                let current = self.map.get(key).cloned();
                let swapped = current.as_deref() == expected;
                if swapped {
                    match value {
                        Some(v) => {
                            self.map.put_slice(key, v);
                        }
                        None => {
                            self.map.remove(key);
                        }
                    }
                }
                Reply::Cas { swapped, current, index }
            }
        }
    }

    /// The whole state (map, sessions, applied index) as bytes.
    pub fn snapshot(&self) -> Vec<u8> {
        // Encoding a map of strings and byte vectors cannot fail.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Replaces the state with a snapshot's.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), RestoreError> {
        let sessions_max = self.sessions_max;
        let mut restored: Kv = postcard::from_bytes(bytes).map_err(|e| RestoreError(e.to_string()))?;
        restored.sessions_max = sessions_max;
        *self = restored;
        Ok(())
    }

    /// Client sessions held.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn write_op() -> impl Strategy<Value = WriteOp> {
        write_op_with(".{0,12}", proptest::collection::vec(any::<u8>(), 0..300))
    }

    /// Writes on keys matching `keys`, with values (and expected values) drawn from `values`.
    fn write_op_with<V>(keys: &'static str, values: V) -> impl Strategy<Value = WriteOp>
    where
        V: Strategy<Value = Vec<u8>> + Clone + 'static,
    {
        prop_oneof![
            (keys, values.clone()).prop_map(|(key, value)| WriteOp::Put { key, value }),
            keys.prop_map(|key| WriteOp::Delete { key }),
            (keys, proptest::option::of(values.clone()), proptest::option::of(values))
                .prop_map(|(key, expected, value)| WriteOp::Cas { key, expected, value }),
        ]
    }

    fn put(client_id: u64, seq: u64, key: &str, v: &[u8]) -> Command {
        Command { client_id, seq, op: WriteOp::Put { key: key.into(), value: v.to_vec() } }
    }

    #[test]
    fn a_retried_write_is_applied_once_and_answered_the_same() {
        let mut kv = Kv::new(10);
        let cas = Command {
            client_id: 1,
            seq: 1,
            op: WriteOp::Cas { key: "k".into(), expected: None, value: Some(b"a".to_vec()) },
        };
        let first = kv.apply(LogIndex(1), &cas.view());
        assert!(matches!(first, Reply::Cas { swapped: true, .. }));
        // The retry lands later in the log (a new leader re-proposed it): same answer, no effect.
        kv.apply(LogIndex(2), &put(2, 1, "k", b"b").view());
        assert_eq!(kv.apply(LogIndex(3), &cas.view()), first);
        assert_eq!(kv.get("k"), Some(&b"b"[..]));
        assert!(matches!(kv.apply(LogIndex(4), &Command { seq: 0, ..cas }.view()), Reply::Error(_)));
    }

    #[test]
    fn a_borrowed_command_encodes_as_the_command() {
        for cmd in [
            put(7, 9, "some/key", &[1, 2, 3, 200]),
            Command { client_id: 1, seq: 2, op: WriteOp::Delete { key: "k".into() } },
            Command {
                client_id: 3,
                seq: 4,
                op: WriteOp::Cas { key: "k".into(), expected: None, value: Some(vec![5]) },
            },
        ] {
            let by_ref = CommandRef { client_id: cmd.client_id, seq: cmd.seq, op: &cmd.op };
            let bytes = postcard::to_allocvec(&by_ref).unwrap();
            assert_eq!(bytes, postcard::to_allocvec(&cmd).unwrap());
            assert_eq!(postcard::from_bytes::<Command>(&bytes).unwrap(), cmd);
        }
    }

    #[test]
    fn sessions_are_bounded_and_the_oldest_goes_first() {
        let mut kv = Kv::new(2);
        kv.apply(LogIndex(1), &put(1, 1, "a", b"1").view());
        kv.apply(LogIndex(2), &put(2, 1, "b", b"1").view());
        kv.apply(LogIndex(3), &put(1, 2, "a", b"2").view());
        kv.apply(LogIndex(4), &put(3, 1, "c", b"1").view());
        assert_eq!(kv.sessions(), 2);
        assert!(kv.sessions.contains_key(&1) && kv.sessions.contains_key(&3), "client 2 was least recent");
    }

    #[test]
    fn list_pages_through_a_prefix_in_key_order() {
        let mut kv = Kv::new(10);
        for (i, k) in ["a/1", "a/2", "a/3", "b/1", "a"].iter().enumerate() {
            kv.apply(LogIndex(i as u64 + 1), &put(1, i as u64 + 1, k, b"v").view());
        }
        let (page, more) = kv.list("a/", None, 2);
        assert_eq!(page.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["a/1", "a/2"]);
        assert!(more);
        let (page, more) = kv.list("a/", Some("a/2"), 2);
        assert_eq!(page.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["a/3"]);
        assert!(!more);
    }

    proptest! {
        #[test]
        fn the_pairs_encode_as_the_ordered_map_they_replace(
            ops in proptest::collection::vec(
                ("[a-c]{0,3}", proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200)), any::<bool>()),
                0..40,
            )
        ) {
            let (mut pairs, mut map) = (Pairs::default(), BTreeMap::new());
            for (k, v, borrowed) in ops {
                match v {
                    Some(v) => {
                        let old = pairs.values.get(k.as_str()).map(|old| (old.as_ptr(), old.capacity()));
                        let existed = if borrowed { pairs.put_slice(&k, &v) } else { pairs.put(k.clone(), v.clone()) };
                        // A reused buffer never keeps much more than its value needs...
                        let now = &pairs.values[k.as_str()];
                        prop_assert!(now.capacity() <= (2 * v.len()).max(64), "{} bytes held for {}", now.capacity(), v.len());
                        // ...and a borrowed overwrite that fits does reuse it.
                        if let (true, Some((ptr, capacity))) = (borrowed, old) {
                            if capacity >= v.len() && capacity <= (2 * v.len()).max(64) {
                                prop_assert_eq!(now.as_ptr(), ptr);
                            }
                        }
                        prop_assert_eq!(existed, map.insert(k, v).is_some());
                    }
                    None => prop_assert_eq!(pairs.remove(&k), map.remove(&k)),
                }
            }
            let bytes = postcard::to_allocvec(&pairs).unwrap();
            prop_assert_eq!(&bytes, &postcard::to_allocvec(&map).unwrap());
            prop_assert_eq!(postcard::from_bytes::<Pairs>(&bytes).unwrap(), pairs.clone());
            prop_assert_eq!(pairs.len(), map.len());
            for (k, v) in &map {
                prop_assert_eq!(pairs.get(k), Some(v));
            }
        }

        #[test]
        fn a_command_decodes_in_place_to_what_it_decodes_to_owned(
            client_id in any::<u64>(),
            seq in any::<u64>(),
            op in write_op(),
            cut in any::<proptest::sample::Index>(),
            flip in (any::<proptest::sample::Index>(), 1u8..=255),
        ) {
            let cmd = Command { client_id, seq, op };
            let bytes = postcard::to_allocvec(&cmd).unwrap();
            prop_assert_eq!(postcard::from_bytes::<CommandView>(&bytes).unwrap(), cmd.view());
            // Damaged bytes: the view is refused exactly when the owned command is.
            let mut flipped = bytes.clone();
            flipped[flip.0.index(bytes.len())] ^= flip.1;
            for damaged in [&bytes[..cut.index(bytes.len())], &flipped[..]] {
                let owned = postcard::from_bytes::<Command>(damaged).ok();
                let view = postcard::from_bytes::<CommandView>(damaged).ok();
                prop_assert_eq!(owned.as_ref().map(Command::view), view);
            }
        }

        #[test]
        fn applied_writes_match_a_model_map(
            ops in proptest::collection::vec(
                // Short values often match a compare-and-swap; long ones cross the buffer rule.
                (0u8..3, write_op_with("[a-c]", prop_oneof![
                    proptest::collection::vec(0u8..2, 0..3),
                    proptest::collection::vec(any::<u8>(), 0..200),
                ])),
                0..60,
            )
        ) {
            let mut kv = Kv::new(4);
            let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
            for (i, (client, op)) in ops.into_iter().enumerate() {
                let index = LogIndex(i as u64 + 1);
                let expected = match &op {
                    WriteOp::Put { key, value } => {
                        Reply::Written { existed: model.insert(key.clone(), value.clone()).is_some(), index }
                    }
                    WriteOp::Delete { key } => Reply::Written { existed: model.remove(key).is_some(), index },
                    WriteOp::Cas { key, expected, value } => {
                        let current = model.get(key).cloned();
                        let swapped = current == *expected;
                        if swapped {
                            match value {
                                Some(v) => model.insert(key.clone(), v.clone()),
                                None => model.remove(key),
                            };
                        }
                        Reply::Cas { swapped, current, index }
                    }
                };
                // Client 0 writes without a session, the others through theirs.
                let cmd = Command { client_id: u64::from(client), seq: i as u64 + 1, op };
                let reply =
                    if client == 0 { kv.apply_unsessioned(index, &cmd.view().op) } else { kv.apply(index, &cmd.view()) };
                prop_assert_eq!(reply, expected);
            }
            let (listed, _) = kv.list("", None, usize::MAX);
            prop_assert_eq!(listed, model.into_iter().collect::<Vec<_>>());
        }

        #[test]
        fn snapshot_and_restore_reproduce_the_state(ops in proptest::collection::vec((0u64..4, 0u8..6, any::<bool>()), 0..60)) {
            let mut kv = Kv::new(3);
            for (i, (client, key, del)) in ops.iter().enumerate() {
                let key = format!("k{key}");
                let op = if *del { WriteOp::Delete { key } } else { WriteOp::Put { key, value: vec![i as u8] } };
                kv.apply(LogIndex(i as u64 + 1), &Command { client_id: *client, seq: i as u64 + 1, op }.view());
            }
            let mut back = Kv::new(3);
            back.restore(&kv.snapshot()).unwrap();
            prop_assert_eq!(back, kv);
        }
    }
}
