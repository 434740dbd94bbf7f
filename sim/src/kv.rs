//! The replicated key-value state machine the Raft simulation runs, with client sessions.
//!
//! Each command carries `(client, seq)`. The session table remembers each client's last
//! sequence number and its result, so a retried command is applied at most once and the
//! retry gets the original answer (Raft dissertation §6.3).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// An operation on the map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvOp {
    /// Set `key` to `value`.
    Put {
        /// The key.
        key: u32,
        /// The value.
        value: u64,
    },
    /// Set `key` to `new` if it holds `expected`.
    Cas {
        /// The key.
        key: u32,
        /// The value it must hold.
        expected: u64,
        /// The value to set.
        new: u64,
    },
    /// Remove `key`.
    Delete {
        /// The key.
        key: u32,
    },
}

/// A command as stored in the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvCommand {
    /// The client that issued it.
    pub client: u64,
    /// The client's sequence number for it.
    pub seq: u64,
    /// What to do.
    pub op: KvOp,
}

/// What applying a command returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvResult {
    /// Applied.
    Ok,
    /// A cas whose compare failed; nothing changed.
    CasFailed,
}

/// The state machine: the map plus the session table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kv {
    map: BTreeMap<u32, u64>,
    sessions: BTreeMap<u64, (u64, KvResult)>,
}

impl Kv {
    /// Applies `cmd`; a duplicate gets its first result, an older command is ignored.
    pub fn apply(&mut self, cmd: &KvCommand) -> Option<KvResult> {
        match self.sessions.get(&cmd.client) {
            Some((seq, result)) if *seq == cmd.seq => return Some(*result),
            Some((seq, _)) if *seq > cmd.seq => return None,
            _ => {}
        }
        let result = match cmd.op {
            KvOp::Put { key, value } => {
                self.map.insert(key, value);
                KvResult::Ok
            }
            KvOp::Cas { key, expected, new } => {
                if self.map.get(&key) == Some(&expected) {
                    self.map.insert(key, new);
                    KvResult::Ok
                } else {
                    KvResult::CasFailed
                }
            }
            KvOp::Delete { key } => {
                self.map.remove(&key);
                KvResult::Ok
            }
        };
        self.sessions.insert(cmd.client, (cmd.seq, result));
        Some(result)
    }

    /// The value under `key`.
    pub fn get(&self, key: u32) -> Option<u64> {
        self.map.get(&key).copied()
    }

    /// Serializes the whole state (deterministic: every map is ordered).
    pub fn snapshot(&self) -> Vec<u8> {
        // Serializing ordered maps of integers into a Vec has no failure case.
        postcard::to_allocvec(self).expect("a Kv always serializes")
    }

    /// Restores from [`Kv::snapshot`] bytes; an empty snapshot is the empty map. Bytes that
    /// do not decode are an error, never an empty map in disguise.
    pub fn restore(bytes: &[u8]) -> Result<Kv, postcard::Error> {
        if bytes.is_empty() {
            return Ok(Kv::default());
        }
        postcard::from_bytes(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_apply_each_command_once() {
        let mut kv = Kv::default();
        let cas = KvCommand { client: 1, seq: 1, op: KvOp::Cas { key: 0, expected: 0, new: 5 } };
        assert_eq!(kv.apply(&cas), Some(KvResult::CasFailed));
        let put = KvCommand { client: 1, seq: 2, op: KvOp::Put { key: 0, value: 0 } };
        assert_eq!(kv.apply(&put), Some(KvResult::Ok));
        assert_eq!(kv.apply(&cas), None, "an older command is ignored");
        let cas2 = KvCommand { client: 1, seq: 3, op: KvOp::Cas { key: 0, expected: 0, new: 7 } };
        assert_eq!(kv.apply(&cas2), Some(KvResult::Ok));
        let again = KvCommand { client: 1, seq: 3, op: KvOp::Cas { key: 0, expected: 0, new: 7 } };
        kv.apply(&KvCommand { client: 2, seq: 1, op: KvOp::Put { key: 0, value: 0 } });
        assert_eq!(kv.apply(&again), Some(KvResult::Ok), "a retry gets the first answer");
        assert_eq!(kv.get(0), Some(0), "and is not applied twice");
        assert_eq!(Kv::restore(&kv.snapshot()).unwrap(), kv);
        assert!(Kv::restore(&[0xff; 3]).is_err(), "garbage is an error, not an empty map");
    }
}
