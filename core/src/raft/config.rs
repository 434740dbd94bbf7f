//! Raft's knobs, validated once at construction. Every limit the node enforces lives here.

use core::time::Duration;
use thiserror::Error;

use crate::NodeId;

/// How linearizable reads are confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    /// ReadIndex: the leader confirms with a quorum round after the read arrives. Always safe.
    Safe,
    /// Lease reads: the leader answers without a round while it holds a lease.
    ///
    /// **Clock assumption**: no node's clock runs faster or slower than real time by more than
    /// `clock_drift_max_ppm` parts per million. A follower that heard from the leader refuses to
    /// vote for `election_timeout_min` of its own time; the leader's lease is that span measured
    /// from when it *sent* the heartbeat a quorum answered, shortened by the drift bound. If the
    /// drift bound is violated (a VM paused and resumed, a clock stepped), lease reads may be
    /// stale. Requires `check_quorum`.
    Lease {
        /// The bound on clock rate error, in parts per million.
        clock_drift_max_ppm: u32,
    },
}

/// Test-only switches that plant known bugs, so the simulator can prove it catches them.
/// They can only be switched on with the `planted-bugs` feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// Grant votes without the log up-to-date check of §5.4.1.
    VoteWithoutUpToDateCheck,
    /// Send an append acknowledgement before the entries it acknowledges are persisted.
    AckBeforePersist,
    /// Commit entries of an older term by counting replicas (violates the Figure 8 rule).
    CommitOldTermByCounting,
}

/// Configuration of one Raft node.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id; never zero.
    pub id: NodeId,
    /// Lower bound of the randomized election timeout.
    pub election_timeout_min: Duration,
    /// Upper bound (exclusive) of the randomized election timeout.
    pub election_timeout_max: Duration,
    /// How often a leader sends heartbeats; must be well below `election_timeout_min`.
    pub heartbeat_interval: Duration,
    /// Run a pre-vote round before a real election, so a partitioned node cannot disrupt.
    pub pre_vote: bool,
    /// A leader steps down when it has not heard from a quorum for `election_timeout_min`,
    /// and followers that hear from a leader ignore votes for that long.
    pub check_quorum: bool,
    /// How reads are confirmed.
    pub read_mode: ReadMode,
    /// Largest total entry size in one append message (at least one entry is always sent).
    pub append_bytes_max: u64,
    /// Largest single entry a proposal may carry (as counted by `Entry::size_bytes`).
    pub entry_bytes_max: u64,
    /// Most append messages in flight to one follower.
    pub inflight_msgs_max: usize,
    /// Most entry bytes in flight to one follower.
    pub inflight_bytes_max: u64,
    /// Most bytes of proposals the leader holds uncommitted before refusing more.
    pub uncommitted_bytes_max: u64,
    /// Bytes of snapshot data per `InstallSnapshot` chunk.
    pub snapshot_chunk_bytes: u64,
    /// Most snapshot chunks in flight to one follower.
    pub snapshot_chunks_inflight_max: u64,
    /// Largest snapshot a follower accepts.
    pub snapshot_bytes_max: u64,
    /// Ask the host for a snapshot when this many applied entries follow the last one (0: never).
    pub snapshot_threshold_entries: u64,
    /// Most ReadIndex requests waiting for confirmation.
    pub reads_pending_max: usize,
    /// Planted bug for simulator self-tests.
    #[cfg(feature = "planted-bugs")]
    pub planted_bug: Option<PlantedBug>,
}

impl Config {
    /// Sensible defaults for a LAN: 150–300 ms elections, 50 ms heartbeats.
    pub fn new(id: NodeId) -> Self {
        Config {
            id,
            election_timeout_min: Duration::from_millis(150),
            election_timeout_max: Duration::from_millis(300),
            heartbeat_interval: Duration::from_millis(50),
            pre_vote: true,
            check_quorum: true,
            read_mode: ReadMode::Safe,
            append_bytes_max: 1 << 20,
            entry_bytes_max: 1 << 20,
            inflight_msgs_max: 256,
            inflight_bytes_max: 32 << 20,
            uncommitted_bytes_max: 64 << 20,
            snapshot_chunk_bytes: 64 << 10,
            snapshot_chunks_inflight_max: 8,
            snapshot_bytes_max: 1 << 30,
            snapshot_threshold_entries: 10_000,
            reads_pending_max: 4096,
            #[cfg(feature = "planted-bugs")]
            planted_bug: None,
        }
    }

    /// Checks every field; the error names the field and what it must be.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field: &'static str, expected: &'static str| Err(ConfigError { field, expected });
        if self.id == NodeId::NONE {
            return bad("id", "a non-zero node id");
        }
        if self.election_timeout_min.is_zero() {
            return bad("election_timeout_min", "a positive duration");
        }
        if self.election_timeout_max <= self.election_timeout_min {
            return bad("election_timeout_max", "greater than election_timeout_min");
        }
        if self.heartbeat_interval.is_zero() || self.heartbeat_interval * 2 > self.election_timeout_min {
            return bad("heartbeat_interval", "positive and at most half of election_timeout_min");
        }
        if let ReadMode::Lease { clock_drift_max_ppm } = self.read_mode {
            if !self.check_quorum {
                return bad("read_mode", "Safe unless check_quorum is on (leases rely on it)");
            }
            if clock_drift_max_ppm >= 500_000 {
                return bad("read_mode.clock_drift_max_ppm", "below 500000 (50%)");
            }
        }
        if self.append_bytes_max == 0 {
            return bad("append_bytes_max", "at least 1");
        }
        if self.entry_bytes_max == 0 || self.entry_bytes_max > self.uncommitted_bytes_max {
            return bad("entry_bytes_max", "at least 1 and at most uncommitted_bytes_max");
        }
        if self.inflight_msgs_max == 0 {
            return bad("inflight_msgs_max", "at least 1");
        }
        if self.inflight_bytes_max < self.append_bytes_max {
            return bad("inflight_bytes_max", "at least append_bytes_max");
        }
        if self.uncommitted_bytes_max == 0 {
            return bad("uncommitted_bytes_max", "at least 1");
        }
        if self.snapshot_chunk_bytes == 0 {
            return bad("snapshot_chunk_bytes", "at least 1");
        }
        if self.snapshot_chunks_inflight_max == 0 {
            return bad("snapshot_chunks_inflight_max", "at least 1");
        }
        if self.reads_pending_max == 0 {
            return bad("reads_pending_max", "at least 1");
        }
        Ok(())
    }

    /// The lease a leader may rely on after a quorum answered a message it sent.
    pub(crate) fn lease_duration(&self) -> Option<Duration> {
        match self.read_mode {
            ReadMode::Safe => None,
            ReadMode::Lease { clock_drift_max_ppm } => {
                let nanos = self.election_timeout_min.as_nanos();
                let shrink = nanos * u128::from(clock_drift_max_ppm) / 1_000_000;
                // Both clocks may err in opposite directions: shrink by twice the bound.
                let lease = nanos.saturating_sub(2 * shrink);
                Some(Duration::from_nanos(u64::try_from(lease).unwrap_or(u64::MAX)))
            }
        }
    }
}

/// A configuration field is out of range.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("invalid raft config: `{field}` must be {expected}")]
pub struct ConfigError {
    /// The offending field.
    pub field: &'static str,
    /// What the field must be.
    pub expected: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        assert_eq!(Config::new(NodeId(1)).validate(), Ok(()));
    }

    #[test]
    fn errors_name_the_field() {
        let mut c = Config::new(NodeId(1));
        c.heartbeat_interval = c.election_timeout_min;
        let err = c.validate().unwrap_err();
        assert_eq!(err.field, "heartbeat_interval");
        assert!(alloc::format!("{err}").contains("heartbeat_interval"));
        let mut c = Config::new(NodeId(1));
        c.check_quorum = false;
        c.read_mode = ReadMode::Lease { clock_drift_max_ppm: 1000 };
        assert_eq!(c.validate().unwrap_err().field, "read_mode");
        assert_eq!(Config::new(NodeId::NONE).validate().unwrap_err().field, "id");
    }

    #[test]
    fn lease_shrinks_with_drift() {
        let mut c = Config::new(NodeId(1));
        assert_eq!(c.lease_duration(), None);
        c.read_mode = ReadMode::Lease { clock_drift_max_ppm: 100_000 };
        assert_eq!(c.lease_duration(), Some(Duration::from_millis(120)));
    }
}
