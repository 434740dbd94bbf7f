//! SWIM settings, with LAN defaults close to memberlist's and validation that names the field.

use alloc::vec::Vec;
use core::time::Duration;
use thiserror::Error;

use super::member::{Addr, Meta};
use crate::NodeId;

/// Settings of one SWIM member. [`Config::lan`] gives sound defaults for a data-center LAN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This member's id; never [`NodeId::NONE`].
    pub id: NodeId,
    /// The cluster every packet is stamped with; packets of other clusters are rejected.
    pub cluster_id: u64,
    /// Where this member receives SWIM packets.
    pub addr: Addr,
    /// What this member publishes about itself.
    pub meta: Meta,
    /// Addresses to join through. Empty for the first member of a cluster.
    pub seeds: Vec<Addr>,
    /// Time between two probes while healthy; scaled by `1 + health score` (Lifeguard).
    pub probe_interval: Duration,
    /// How long to wait for a direct ack before asking others to probe; also scaled by health.
    pub probe_timeout: Duration,
    /// Members asked to probe indirectly when a direct probe times out (k).
    pub indirect_probes: usize,
    /// Waves of indirect probes per round: after the first (Lifeguard's, at `probe_timeout`),
    /// each further wave asks `k` other members halfway through what is left of the probe
    /// interval, only while no ack has come. Under heavy loss this cuts the rounds that fail
    /// while the target is alive, and so the suspicions and refutations every member must
    /// hear about, at no cost on a healthy network. 1 is classic SWIM.
    pub indirect_waves: u32,
    /// Suspicion timeout at full confirmation: `suspicion_mult · max(1, log10 n) · probe_interval`,
    /// but never below `suspicion_floor` probe intervals (see [`Config::suspicion_bounds`]).
    /// Lifeguard reaches it only after `suspicion_confirmations` independent suspicions, so it
    /// can be shorter than classic SWIM's fixed timeout at the same accuracy: 3 here, where
    /// memberlist and foca wait 4 (a member that stops answering for longer than this, and
    /// is confirmed, is declared down and renews its identity when it wakes).
    pub suspicion_mult: u32,
    /// The unconfirmed suspicion timeout is this many times the confirmed one (Lifeguard).
    pub suspicion_max_mult: u32,
    /// The confirmed suspicion timeout is never shorter than this many probe intervals, so a
    /// member of a small cluster that stalls for a few seconds (CPU starvation, a pause) is
    /// still there to refute when it wakes.
    pub suspicion_floor: u32,
    /// Independent suspicions (other members' failed probes) that bring the timeout down to
    /// its confirmed value, logarithmically (Lifeguard's K).
    pub suspicion_confirmations: u32,
    /// Each gossip update is sent about `retransmit_mult · ⌈log10(n + 1)⌉` times (λ).
    pub retransmit_mult: u32,
    /// Time between two gossip-only rounds.
    pub gossip_interval: Duration,
    /// Members a gossip-only round sends to.
    pub gossip_fanout: usize,
    /// Most updates waiting to be gossiped; past that the most-sent, oldest is dropped (push-pull
    /// repairs what gossip drops). Only a join storm or a healed partition fills it.
    pub gossip_queue_max: usize,
    /// Time between periodic anti-entropy rounds with one random member, for clusters up to
    /// 32 members; larger clusters stretch it in proportion to `n / 32`. A round sends a
    /// summary of the view's sync buckets (only differing buckets are exchanged), and one
    /// round in eight the whole state, so the bytes each member sends per second stay small
    /// and constant as the cluster grows.
    pub push_pull_interval: Duration,
    /// Shortest time between two repairs asked for because a peer's view digest differed
    /// (and how long an incarnation-only difference must last first, unless this member
    /// suspects someone).
    pub sync_gap: Duration,
    /// Average bytes per second those digest-driven repairs may cost: the summaries asked,
    /// and the bucket exchanges answered (request and reply, at the buckets' share of this
    /// member's state; a burst of two whole exchanges is allowed). This budget is what keeps
    /// their load per member constant in n.
    pub sync_bytes_per_s: u32,
    /// Health score ceiling (Lifeguard's awareness): intervals scale by up to this factor.
    pub health_max: u32,
    /// Largest datagram sent or accepted, in bytes.
    pub packet_bytes_max: usize,
    /// Largest encoded [`Meta`], in bytes; must leave room in a packet.
    pub meta_bytes_max: usize,
    /// How long Down and Left members are remembered (and reconnection to them tried).
    pub tombstone_ttl: Duration,
    /// First delay between join attempts; doubles on each failure.
    pub join_retry_min: Duration,
    /// Longest delay between join attempts.
    pub join_retry_max: Duration,
}

/// A setting that cannot work, with the field to change.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// A field is out of range.
    #[error("swim config: `{field}` {problem}")]
    Invalid {
        /// The field's name.
        field: &'static str,
        /// What is wrong and how to fix it.
        problem: &'static str,
    },
}

impl Config {
    /// LAN defaults: probe every 1 s with a 500 ms timeout, 3 indirect probes, suspicion between
    /// max(4, 3·log10(n)) probe intervals and 8 times that, gossip to 3 members every 200 ms, push-pull
    /// every 30 s, 1,400-byte packets.
    pub fn lan(id: NodeId, cluster_id: u64, addr: Addr) -> Config {
        Config {
            id,
            cluster_id,
            addr,
            meta: Meta::default(),
            seeds: Vec::new(),
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(500),
            indirect_probes: 3,
            indirect_waves: 3,
            suspicion_mult: 3,
            suspicion_max_mult: 8,
            suspicion_floor: 4,
            suspicion_confirmations: 2,
            retransmit_mult: 4,
            gossip_interval: Duration::from_millis(200),
            gossip_fanout: 3,
            gossip_queue_max: 1024,
            push_pull_interval: Duration::from_secs(30),
            sync_gap: Duration::from_secs(2),
            sync_bytes_per_s: 512,
            health_max: 8,
            packet_bytes_max: 1400,
            meta_bytes_max: 512,
            tombstone_ttl: Duration::from_secs(600),
            join_retry_min: Duration::from_millis(500),
            join_retry_max: Duration::from_secs(30),
        }
    }

    /// Lifeguard's suspicion timeouts in a cluster where `live` members are alive or suspect:
    /// `(min, max, k)`, the timeout once `k` independent suspicions confirmed it, the
    /// timeout without any, and `k` (0 where too few members could confirm).
    pub fn suspicion_bounds(&self, live: usize) -> (Duration, Duration, u32) {
        let scale = libm::log10(live as f64).max(1.0);
        let probes = (f64::from(self.suspicion_mult) * scale).max(f64::from(self.suspicion_floor));
        let min = self.probe_interval.as_nanos() as f64 * probes;
        let max = min * f64::from(self.suspicion_max_mult);
        let mut k = self.suspicion_confirmations;
        if (live as u64).saturating_sub(2) < u64::from(k) {
            k = 0;
        }
        (Duration::from_nanos(min as u64), Duration::from_nanos(max as u64), k)
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, problem| Err(ConfigError::Invalid { field, problem });
        if self.id == NodeId::NONE {
            return bad("id", "must not be 0 (reserved for \"none\")");
        }
        if self.probe_interval.is_zero() {
            return bad("probe_interval", "must be positive (1s is a good LAN value)");
        }
        if self.probe_timeout.is_zero() || self.probe_timeout >= self.probe_interval {
            return bad("probe_timeout", "must be positive and shorter than probe_interval");
        }
        if self.indirect_probes > 16 {
            return bad("indirect_probes", "must be at most 16 (3 is usual)");
        }
        if !(1..=4).contains(&self.indirect_waves) {
            return bad("indirect_waves", "must be between 1 and 4 (3 is usual)");
        }
        if self.suspicion_mult < 1 {
            return bad("suspicion_mult", "must be at least 1 (3 is usual)");
        }
        if self.suspicion_max_mult < 1 {
            return bad("suspicion_max_mult", "must be at least 1 (8 is usual)");
        }
        if self.suspicion_confirmations > 16 {
            return bad("suspicion_confirmations", "must be at most 16 (2 is usual)");
        }
        if self.retransmit_mult < 1 {
            return bad("retransmit_mult", "must be at least 1 (4 is usual)");
        }
        if self.gossip_interval.is_zero() {
            return bad("gossip_interval", "must be positive (200ms is usual)");
        }
        if self.gossip_queue_max < 16 {
            return bad("gossip_queue_max", "must be at least 16 (1024 is usual)");
        }
        if self.push_pull_interval.is_zero() {
            return bad("push_pull_interval", "must be positive (30s is usual)");
        }
        if self.health_max < 1 {
            return bad("health_max", "must be at least 1 (8 is usual)");
        }
        if self.packet_bytes_max < 512 || self.packet_bytes_max > 65_000 {
            return bad("packet_bytes_max", "must be between 512 and 65000 (1400 fits an Ethernet MTU)");
        }
        if self.meta_bytes_max + 256 > self.packet_bytes_max {
            return bad("meta_bytes_max", "must leave 256 bytes of the packet for headers");
        }
        match postcard::experimental::serialized_size(&self.meta) {
            Ok(n) if n <= self.meta_bytes_max => {}
            _ => return bad("meta", "encodes larger than meta_bytes_max; shorten labels or tags"),
        }
        if self.join_retry_min.is_zero() || self.join_retry_max < self.join_retry_min {
            return bad("join_retry_min", "must be positive and at most join_retry_max");
        }
        if self.tombstone_ttl.is_zero() {
            return bad("tombstone_ttl", "must be positive (10 minutes is usual)");
        }
        Ok(())
    }
}
