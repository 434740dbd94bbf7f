//! `node.toml`: a node's configuration, parsed strictly and validated once.
//!
//! Unknown fields are errors (a typo must not silently fall back to a default), and every
//! error names the field and says what is expected.
//!
//! ```toml
//! id = 1
//! listen = "127.0.0.1:7001"
//! data_dir = "/var/lib/quorate/n1"
//! cluster_key_file = "/etc/quorate/cluster.key"
//! cluster = "prod"                      # name hashed into the cluster id
//! seeds = ["127.0.0.1:7002"]            # SWIM join addresses
//! metrics_listen = "127.0.0.1:9101"     # optional: Prometheus text format on /metrics
//! initial_members = [                   # optional: bootstrap voters of a new cluster
//!   { id = 1, addr = "127.0.0.1:7001" },
//!   { id = 2, addr = "127.0.0.1:7002" },
//!   { id = 3, addr = "127.0.0.1:7003" },
//! ]
//!
//! [raft]
//! election_timeout_min_ms = 150
//! election_timeout_max_ms = 300
//! heartbeat_interval_ms = 50
//!
//! [swim]
//! probe_interval_ms = 1000
//!
//! [storage]
//! syncs_in_flight = 1                   # WAL fsyncs that may overlap (1: one storage thread)
//! inline_when_following = true          # a follower's loop syncs its own writes
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use quorate_core::NodeId;
use serde::Deserialize;

/// A bootstrap voter.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitialMember {
    /// Its node id.
    pub id: u64,
    /// Its cluster address.
    pub addr: SocketAddr,
}

/// Raft timings and limits.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftSection {
    /// Lower bound of the randomized election timeout.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomized election timeout.
    pub election_timeout_max_ms: u64,
    /// Leader heartbeat period.
    pub heartbeat_interval_ms: u64,
    /// Pre-vote before campaigning.
    pub pre_vote: bool,
    /// Leaders step down without a quorum.
    pub check_quorum: bool,
    /// Take a snapshot after this many applied entries. The default, 100,000, is etcd's
    /// `--snapshot-count`: each snapshot writes the whole map from the node's loop (about
    /// 1 MB, three times a second, at 30k puts/s with 10,000), while a larger threshold keeps
    /// more log in memory (~25 MB of 128-byte puts) and replays more of it on restart.
    pub snapshot_threshold_entries: u64,
    /// Largest append message, in bytes of entries.
    pub append_bytes_max: u64,
}

impl Default for RaftSection {
    fn default() -> Self {
        RaftSection {
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 300,
            heartbeat_interval_ms: 50,
            pre_vote: true,
            check_quorum: true,
            snapshot_threshold_entries: 100_000,
            append_bytes_max: 64 << 10,
        }
    }
}

/// SWIM timings.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SwimSection {
    /// Time between probes.
    pub probe_interval_ms: u64,
    /// Time to wait for a direct ack.
    pub probe_timeout_ms: u64,
    /// Members asked to probe indirectly.
    pub indirect_probes: usize,
    /// Time between full-state exchanges with a random member (also how often members held
    /// down are tried again, which heals partitions both sides gave up on).
    pub push_pull_interval_ms: u64,
    /// Zone label published in metadata.
    pub zone: String,
    /// Rack label published in metadata.
    pub rack: String,
    /// Region label published in metadata.
    pub region: String,
}

impl Default for SwimSection {
    fn default() -> Self {
        SwimSection {
            probe_interval_ms: 1000,
            probe_timeout_ms: 500,
            indirect_probes: 3,
            push_pull_interval_ms: 30_000,
            zone: String::new(),
            rack: String::new(),
            region: String::new(),
        }
    }
}

/// Sizes and bounds.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Largest datagram sent or accepted (the Raft traffic's aside).
    pub datagram_bytes: usize,
    /// Largest Raft datagram sent or accepted: a Raft message up to this size goes as one
    /// datagram when the route to the peer carries it whole (the OS's path MTU: loopback's
    /// 64 KiB, jumbo frames), and in `datagram_bytes` fragments otherwise. The same on every
    /// node.
    pub raft_datagram_bytes: usize,
    /// Largest value a client may write.
    pub value_bytes_max: usize,
    /// Client sessions remembered for at-most-once writes.
    pub client_sessions_max: usize,
    /// Client requests waiting for an answer on this node.
    pub pending_requests_max: usize,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            datagram_bytes: 1400,
            raft_datagram_bytes: 65_000,
            value_bytes_max: 64 << 10,
            client_sessions_max: 100_000,
            pending_requests_max: 16_384,
        }
    }
}

/// How the write-ahead log reaches the disk.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    /// WAL fsyncs that may run at once. 1 (the default) writes and syncs each group on one
    /// storage thread; more lets the next group's fsync start while one is still running, on
    /// that many sync threads, which pays off only where the disk overlaps flushes and the
    /// CPUs have room for the extra hand-offs (see `storage::DEFAULT_SYNCS_IN_FLIGHT`).
    pub syncs_in_flight: usize,
    /// Whether a node that is not leading (a follower, candidate or learner) writes and syncs
    /// its log entries and hard state on its own loop while the storage thread is idle, instead
    /// of handing them over (default true; only with `syncs_in_flight = 1`, though the
    /// simulator honours it whatever that is). A follower's loop only waits during that fsync,
    /// and skipping the hand-off and its report takes two wake-ups off each acknowledgement's
    /// path. Snapshots, compaction and new segments stay on the storage thread. The cost: while
    /// an fsync runs the node answers nothing, so a disk stalled for longer than SWIM's probe
    /// timeout makes it look dead (arguably true of a node that cannot write).
    pub inline_when_following: bool,
}

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection { syncs_in_flight: crate::storage::DEFAULT_SYNCS_IN_FLIGHT, inline_when_following: true }
    }
}

/// The parsed `node.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id, never 0.
    pub id: u64,
    /// Where the node's single UDP socket listens.
    pub listen: SocketAddr,
    /// Where the node keeps its WAL, snapshots and identity.
    pub data_dir: PathBuf,
    /// A file with the 32-byte cluster key as 64 hex digits.
    pub cluster_key_file: PathBuf,
    /// The cluster's name; datagrams of other clusters are dropped.
    #[serde(default = "default_cluster")]
    pub cluster: String,
    /// SWIM join addresses.
    #[serde(default)]
    pub seeds: Vec<SocketAddr>,
    /// Bootstrap voters (used only when the data directory is empty).
    #[serde(default)]
    pub initial_members: Vec<InitialMember>,
    /// Prometheus metrics address (`/metrics`), if any.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Raft settings.
    #[serde(default)]
    pub raft: RaftSection,
    /// SWIM settings.
    #[serde(default)]
    pub swim: SwimSection,
    /// Limits.
    #[serde(default)]
    pub limits: LimitsSection,
    /// Storage settings.
    #[serde(default)]
    pub storage: StorageSection,
}

fn default_cluster() -> String {
    "default".into()
}

/// A configuration that cannot work: which field, and what it must be.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML does not parse, or a field has the wrong type or is unknown.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message, naming the field.
        message: String,
    },
    /// A field has a value that cannot work.
    #[error("config field `{field}`: expected {expected}")]
    Invalid {
        /// The field, as written in the file.
        field: &'static str,
        /// What it must be.
        expected: String,
    },
}

impl NodeConfig {
    /// A configuration with defaults for everything but the essentials.
    pub fn new(id: u64, listen: SocketAddr, data_dir: PathBuf, cluster_key_file: PathBuf) -> NodeConfig {
        NodeConfig {
            id,
            listen,
            data_dir,
            cluster_key_file,
            cluster: default_cluster(),
            seeds: Vec::new(),
            initial_members: Vec::new(),
            metrics_listen: None,
            raft: RaftSection::default(),
            swim: SwimSection::default(),
            limits: LimitsSection::default(),
            storage: StorageSection::default(),
        }
    }

    /// Reads and validates a `node.toml`.
    pub fn load(path: &str) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        NodeConfig::parse(&text, path)
    }

    /// Parses and validates TOML text (`origin` names it in errors).
    pub fn parse(text: &str, origin: &str) -> Result<NodeConfig, ConfigError> {
        let cfg: NodeConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: origin.into(), message: e.to_string() })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every field; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field: &'static str, expected: &str| Err(ConfigError::Invalid { field, expected: expected.into() });
        if self.id == 0 {
            return bad("id", "a node id of 1 or more (0 means \"no node\")");
        }
        if self.listen.port() == 0 {
            return bad("listen", "an address with a fixed port (peers must know where to reach this node)");
        }
        if self.data_dir.as_os_str().is_empty() {
            return bad("data_dir", "a directory path");
        }
        if self.cluster.is_empty() {
            return bad("cluster", "a non-empty cluster name");
        }
        let r = &self.raft;
        if r.election_timeout_min_ms == 0 {
            return bad("raft.election_timeout_min_ms", "a positive number of milliseconds");
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            return bad("raft.election_timeout_max_ms", "more than raft.election_timeout_min_ms");
        }
        if r.heartbeat_interval_ms == 0 || r.heartbeat_interval_ms * 2 > r.election_timeout_min_ms {
            return bad("raft.heartbeat_interval_ms", "positive and at most half of raft.election_timeout_min_ms");
        }
        if r.append_bytes_max < 1024 {
            return bad("raft.append_bytes_max", "at least 1024 bytes");
        }
        let s = &self.swim;
        if s.probe_interval_ms == 0 || s.probe_timeout_ms == 0 || s.probe_timeout_ms >= s.probe_interval_ms {
            return bad("swim.probe_timeout_ms", "positive and less than swim.probe_interval_ms");
        }
        if s.push_pull_interval_ms < s.probe_interval_ms {
            return bad("swim.push_pull_interval_ms", "at least swim.probe_interval_ms");
        }
        let l = &self.limits;
        if !(512..=65_000).contains(&l.datagram_bytes) {
            return bad("limits.datagram_bytes", "512 to 65000 bytes (1400 fits every Ethernet path)");
        }
        if !(l.datagram_bytes..=65_000).contains(&l.raft_datagram_bytes) {
            return bad("limits.raft_datagram_bytes", "limits.datagram_bytes to 65000 bytes");
        }
        if l.value_bytes_max == 0 || l.value_bytes_max as u64 > (4 << 20) {
            return bad("limits.value_bytes_max", "1 byte to 4 MiB");
        }
        if l.client_sessions_max == 0 {
            return bad("limits.client_sessions_max", "at least 1");
        }
        if l.pending_requests_max == 0 {
            return bad("limits.pending_requests_max", "at least 1");
        }
        if !(1..=8).contains(&self.storage.syncs_in_flight) {
            return bad("storage.syncs_in_flight", "1 to 8 (1 syncs on the storage thread itself)");
        }
        let mut ids: Vec<u64> = self.initial_members.iter().map(|m| m.id).collect();
        ids.sort_unstable();
        if ids.contains(&0) || ids.windows(2).any(|w| w[0] == w[1]) {
            return bad("initial_members", "distinct node ids of 1 or more");
        }
        if !self.initial_members.is_empty() && !ids.contains(&self.id) {
            return bad("initial_members", "a list that includes this node's own id");
        }
        Ok(())
    }

    /// The node id.
    pub fn node_id(&self) -> NodeId {
        NodeId(self.id)
    }

    /// The cluster id all datagrams carry: a fixed hash of the cluster name.
    pub fn cluster_id(&self) -> u64 {
        cluster_id(&self.cluster)
    }

    /// Raft's election timeout bounds and heartbeat.
    pub fn raft_timings(&self) -> (Duration, Duration, Duration) {
        let ms = Duration::from_millis;
        (
            ms(self.raft.election_timeout_min_ms),
            ms(self.raft.election_timeout_max_ms),
            ms(self.raft.heartbeat_interval_ms),
        )
    }
}

/// The cluster id of a cluster name (FNV-1a, fixed across versions and platforms).
pub fn cluster_id(name: &str) -> u64 {
    quorate_core::fnv1a64(name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
id = 1
listen = "127.0.0.1:7001"
data_dir = "/tmp/n1"
cluster_key_file = "/tmp/k"
"#;

    fn parse(extra: &str) -> Result<NodeConfig, ConfigError> {
        NodeConfig::parse(&format!("{BASE}{extra}"), "node.toml")
    }

    #[test]
    fn defaults_fill_everything_but_the_essentials() {
        let cfg = parse("").unwrap();
        assert_eq!(cfg.raft, RaftSection::default());
        assert_eq!(cfg.cluster, "default");
        assert!(cfg.storage.inline_when_following);
        let cfg = parse("[storage]\ninline_when_following = false\n").unwrap();
        assert!(!cfg.storage.inline_when_following);
        assert_eq!(cfg.storage.syncs_in_flight, crate::storage::DEFAULT_SYNCS_IN_FLIGHT);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("[raft]\nheartbeat_interval_ms = 100\n", "raft.heartbeat_interval_ms"),
            ("[raft]\nelection_timeout_max_ms = 100\n", "raft.election_timeout_max_ms"),
            ("[limits]\ndatagram_bytes = 70000\n", "limits.datagram_bytes"),
            ("[limits]\nraft_datagram_bytes = 1000\n", "limits.raft_datagram_bytes"),
            ("[storage]\nsyncs_in_flight = 0\n", "storage.syncs_in_flight"),
            ("[storage]\nsyncs_in_flight = 9\n", "storage.syncs_in_flight"),
            ("initial_members = [{ id = 2, addr = \"127.0.0.1:7002\" }]\n", "initial_members"),
        ];
        for (extra, field) in cases {
            let err = parse(extra).unwrap_err().to_string();
            assert!(err.contains(field), "{extra:?} gave {err:?}");
        }
        let err = NodeConfig::parse(&BASE.replace("id = 1", "id = 0"), "node.toml").unwrap_err().to_string();
        assert!(err.contains("`id`"), "{err}");
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_errors_that_name_them() {
        let err = parse("[raft]\nheartbeat_ms = 10\n").unwrap_err().to_string();
        assert!(err.contains("heartbeat_ms"), "{err}");
        let err = parse("seeds = \"not a list\"\n").unwrap_err().to_string();
        assert!(err.contains("seeds"), "{err}");
        let err = NodeConfig::parse("listen = \"127.0.0.1:1\"", "node.toml").unwrap_err().to_string();
        assert!(err.contains("id"), "a missing field is named: {err}");
    }
}
