//! Settings of one shard replica, validated once at construction. Every limit the replica
//! enforces lives here, and the error names the field to change.

use alloc::vec::Vec;
use core::time::Duration;
use thiserror::Error;

use super::merkle::DEPTH_MAX;
use super::state::{ConflictMode, Entry};
use crate::NodeId;

/// Merges surfaced siblings (multi-value mode) into one value; `None` deletes. It must be a
/// pure, deterministic function of the siblings (given in dot order), so that replicas that
/// resolve the same siblings write the same value.
pub type Resolver = fn(&[Option<Entry>]) -> Option<Entry>;

/// Test-only switches that plant known bugs, so the simulator can prove it catches them.
/// They can only be switched on with the `planted-bugs` feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// The coordinator counts every acknowledgement message, so a duplicated ack counts twice.
    AckCountedTwice,
    /// Tombstones are collected as soon as they are stored here, before every replica saw them.
    TombstoneCollectedEarly,
    /// Last-write-wins compares timestamps only; on a tie each replica keeps what it had.
    LwwWithoutNodeTiebreak,
}

/// Settings of one shard replica. [`Config::new`] gives sound defaults for a LAN.
#[derive(Clone, Debug)]
pub struct Config {
    /// This replica's node; never [`NodeId::NONE`].
    pub id: NodeId,
    /// Every replica of the shard, this one included.
    pub replicas: Vec<NodeId>,
    /// Stamped on every datagram; datagrams of other clusters are rejected.
    pub cluster_id: u64,
    /// How concurrent writes are reconciled.
    pub mode: ConflictMode,
    /// Multi-value mode: merges siblings when a read surfaces them (`None`: siblings stay
    /// until a client writes with the read's context).
    pub resolver: Option<Resolver>,
    /// Largest datagram sent or accepted, in bytes (envelope included).
    pub datagram_bytes_max: usize,
    /// Largest encoded key state a write may leave on its coordinator.
    pub state_bytes_max: usize,
    /// Longest vector accepted.
    pub vector_len_max: usize,
    /// Multi-value mode: a write is refused while the key has this many siblings (read and
    /// resolve first). CRDT mode: most metadata fields per entry.
    pub width_max: usize,
    /// Largest replica set (bounds merged key states: see [`Config::validate`]).
    pub replicas_max: usize,
    /// Entries in one `write_batch`.
    pub batch_entries_max: usize,
    /// Writes and reads waiting for acknowledgements at once.
    pub pending_max: usize,
    /// How long a write waits for its acknowledgements before answering "not acknowledged".
    pub write_timeout: Duration,
    /// How often a write is sent again to replicas that have not acknowledged it.
    pub write_resend_interval: Duration,
    /// How long a read waits for enough answers.
    pub read_timeout: Duration,
    /// Most hinted writes kept for unreachable replicas; the oldest is dropped beyond (anti-
    /// entropy still repairs it).
    pub hints_max: usize,
    /// How often hints are offered to their replicas.
    pub hint_retry_interval: Duration,
    /// Hinted entries sent per replica per retry while it answers (one while it does not).
    pub hints_per_retry: usize,
    /// Time between anti-entropy sessions started by this replica (jittered by ±25%).
    pub sync_interval: Duration,
    /// A sync request unanswered this long is sent again (doubling per try).
    pub sync_retry_interval: Duration,
    /// A session that makes no progress this long is abandoned.
    pub sync_timeout: Duration,
    /// Token bucket refill: sync bytes per second to each peer.
    pub sync_bytes_per_sec: u64,
    /// Token bucket size: sync bytes sent at once to a peer; at least one datagram.
    pub sync_burst_bytes: u64,
    /// Sync datagrams queued per peer behind the throttle; more are dropped (and retried).
    pub sync_queue_max: usize,
    /// Sync requests in flight per session.
    pub sync_window: usize,
    /// The hash tree has `16^merkle_depth` leaves; all replicas of a shard must agree.
    pub merkle_depth: u8,
    /// A tombstone every replica has seen is collected after being stored this long.
    pub tombstone_grace: Duration,
    /// A collected tombstone is remembered this long, to drop stale copies that arrive late.
    pub collected_ttl: Duration,
    /// Most collected tombstones remembered.
    pub collected_max: usize,
    /// How often tombstones are checked for collection.
    pub gc_interval: Duration,
    /// A replica that has not answered anything for this long after being asked is down.
    pub down_after: Duration,
    /// Remote timestamps further ahead of this replica's `now` are refused.
    pub hlc_ahead_max: Duration,
    /// Change-stream events kept for readers.
    pub stream_events_max: usize,
    /// Planted bug for simulator self-tests.
    #[cfg(feature = "planted-bugs")]
    pub planted_bug: Option<PlantedBug>,
}

/// A setting that cannot work, with the field to change.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("replication config: `{field}` {problem}")]
pub struct ConfigError {
    /// The field's name.
    pub field: &'static str,
    /// What is wrong and how to fix it.
    pub problem: &'static str,
}

impl Config {
    /// LAN defaults for replica `id` of the shard held by `replicas`: 60,000-byte datagrams,
    /// 1 s write and read timeouts, anti-entropy every 10 s throttled to 4 MiB/s per peer.
    pub fn new(id: NodeId, replicas: Vec<NodeId>, mode: ConflictMode) -> Config {
        Config {
            id,
            replicas,
            cluster_id: 0,
            mode,
            resolver: None,
            datagram_bytes_max: 60_000,
            state_bytes_max: 8_000,
            vector_len_max: 1_536,
            width_max: 8,
            replicas_max: 7,
            batch_entries_max: 1_024,
            pending_max: 4_096,
            write_timeout: Duration::from_secs(1),
            write_resend_interval: Duration::from_millis(200),
            read_timeout: Duration::from_secs(1),
            hints_max: 100_000,
            hint_retry_interval: Duration::from_secs(1),
            hints_per_retry: 256,
            sync_interval: Duration::from_secs(10),
            sync_retry_interval: Duration::from_millis(300),
            sync_timeout: Duration::from_secs(5),
            sync_bytes_per_sec: 4 << 20,
            sync_burst_bytes: 256 << 10,
            sync_queue_max: 256,
            sync_window: 16,
            merkle_depth: 4,
            tombstone_grace: Duration::from_secs(10),
            collected_ttl: Duration::from_secs(300),
            collected_max: 100_000,
            gc_interval: Duration::from_secs(1),
            down_after: Duration::from_secs(5),
            hlc_ahead_max: Duration::from_secs(60),
            stream_events_max: 10_000,
            #[cfg(feature = "planted-bugs")]
            planted_bug: None,
        }
    }

    /// Checks every field; the error names the first bad one.
    ///
    /// Key states only grow by merging the states of concurrent coordinators, each at most
    /// `state_bytes_max` when written, so `replicas_max · state_bytes_max` plus room for the
    /// headers must fit in a datagram: every state a replica holds can then be sent alone.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, problem| Err(ConfigError { field, problem });
        if self.id == NodeId::NONE {
            return bad("id", "must not be 0 (reserved for \"none\")");
        }
        if !self.replicas.contains(&self.id) {
            return bad("replicas", "must include this replica's own id");
        }
        let mut sorted = self.replicas.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != self.replicas.len() || sorted.contains(&NodeId::NONE) {
            return bad("replicas", "must not repeat an id or contain 0");
        }
        if self.replicas_max == 0 || self.replicas.len() > self.replicas_max {
            return bad("replicas_max", "must be at least the number of replicas");
        }
        if !(1024..=65_000).contains(&self.datagram_bytes_max) {
            return bad("datagram_bytes_max", "must be between 1024 and 65000");
        }
        if self.state_bytes_max < 64
            || self.state_bytes_max.saturating_mul(self.replicas_max) + 512 > self.datagram_bytes_max
        {
            return bad(
                "state_bytes_max",
                "must be at least 64 and replicas_max times it plus 512 must fit a datagram",
            );
        }
        if self.vector_len_max == 0 || self.vector_len_max * 4 + 64 > self.state_bytes_max {
            return bad("vector_len_max", "must be positive and a vector must fit in state_bytes_max");
        }
        if self.width_max == 0 || self.width_max > 1024 {
            return bad("width_max", "must be between 1 and 1024 (8 is usual)");
        }
        if self.batch_entries_max == 0 || self.pending_max == 0 || self.hints_max == 0 || self.collected_max == 0 {
            return bad(
                "batch_entries_max",
                "batch_entries_max, pending_max, hints_max and collected_max must be positive",
            );
        }
        if self.hints_per_retry == 0 || self.sync_window == 0 || self.sync_queue_max == 0 || self.stream_events_max == 0
        {
            return bad(
                "hints_per_retry",
                "hints_per_retry, sync_window, sync_queue_max and stream_events_max must be positive",
            );
        }
        let durations = [
            ("write_timeout", self.write_timeout),
            ("write_resend_interval", self.write_resend_interval),
            ("read_timeout", self.read_timeout),
            ("hint_retry_interval", self.hint_retry_interval),
            ("sync_interval", self.sync_interval),
            ("sync_retry_interval", self.sync_retry_interval),
            ("sync_timeout", self.sync_timeout),
            ("gc_interval", self.gc_interval),
            ("down_after", self.down_after),
            ("collected_ttl", self.collected_ttl),
        ];
        for (field, d) in durations {
            if d.is_zero() {
                return bad(field, "must be positive");
            }
        }
        if self.collected_ttl < self.tombstone_grace {
            return bad("collected_ttl", "must be at least tombstone_grace");
        }
        if self.sync_bytes_per_sec == 0 {
            return bad("sync_bytes_per_sec", "must be positive");
        }
        if self.sync_burst_bytes < self.datagram_bytes_max as u64 {
            return bad("sync_burst_bytes", "must hold at least one datagram (datagram_bytes_max)");
        }
        if self.merkle_depth == 0 || self.merkle_depth > DEPTH_MAX {
            return bad("merkle_depth", "must be between 1 and 6 (16^depth leaves; 4 suits a million entries)");
        }
        if self.resolver.is_some() && self.mode != ConflictMode::MultiValue {
            return bad("resolver", "only multi-value mode has siblings to resolve");
        }
        Ok(())
    }

    /// Acknowledgements `c` needs among the current replicas.
    pub fn required(&self, c: Consistency) -> usize {
        c.required(self.replicas.len())
    }
}

/// How many replicas must answer a write or read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Consistency {
    /// The coordinator alone.
    One,
    /// A majority of the replicas.
    Quorum,
    /// Every replica.
    All,
}

impl Consistency {
    /// Answers needed among `n` replicas.
    pub fn required(self, n: usize) -> usize {
        match self {
            Consistency::One => 1.min(n),
            Consistency::Quorum => n / 2 + 1,
            Consistency::All => n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn defaults_are_valid_and_bad_fields_are_named() {
        let ids = vec![NodeId(1), NodeId(2), NodeId(3)];
        let ok = Config::new(NodeId(1), ids.clone(), ConflictMode::LastWriteWins);
        assert_eq!(ok.validate(), Ok(()));
        let field = |f: fn(&mut Config)| {
            let mut c = ok.clone();
            f(&mut c);
            c.validate().unwrap_err().field
        };
        assert_eq!(field(|c| c.id = NodeId(0)), "id");
        assert_eq!(field(|c| c.id = NodeId(9)), "replicas");
        assert_eq!(field(|c| c.replicas.push(NodeId(2))), "replicas");
        assert_eq!(field(|c| c.replicas_max = 2), "replicas_max");
        assert_eq!(field(|c| c.state_bytes_max = 20_000), "state_bytes_max");
        assert_eq!(field(|c| c.vector_len_max = 4_000), "vector_len_max");
        assert_eq!(field(|c| c.sync_burst_bytes = 100), "sync_burst_bytes");
        assert_eq!(field(|c| c.merkle_depth = 7), "merkle_depth");
        assert_eq!(field(|c| c.write_timeout = Duration::ZERO), "write_timeout");
        assert_eq!(field(|c| c.collected_ttl = Duration::from_secs(1)), "collected_ttl");
        assert_eq!(field(|c| c.resolver = Some(|s| s[0].clone())), "resolver");
    }

    #[test]
    fn consistency_levels_count_replicas() {
        assert_eq!([1, 2, 3].map(|n| Consistency::Quorum.required(n)), [1, 2, 2]);
        assert_eq!(Consistency::All.required(5), 5);
        assert_eq!(Consistency::One.required(5), 1);
        assert_eq!(Consistency::Quorum.required(4), 3);
    }
}
