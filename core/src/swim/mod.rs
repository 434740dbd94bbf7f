//! SWIM membership and failure detection, with the Lifeguard extensions.
//!
//! One [`Swim`] runs on every member. It probes one member per round in a shuffled
//! round-robin order, asks `k` others to probe indirectly when the direct probe goes
//! unanswered, suspects members that fail a round, and declares them down when the suspicion
//! is not refuted in time. Updates ride piggybacked on every packet, and periodic state
//! exchanges (push-pull) repair whatever gossip missed.
//!
//! Lifeguard:
//! - **local health**: a score that rises when this member's own probes fail without the
//!   expected nacks and when it is suspected itself, and falls on each answered probe; probe
//!   interval and timeout scale by `1 + score`, so a slow member probes less eagerly;
//! - **dynamic suspicion**: a suspicion starts long and shrinks with each independent
//!   confirmation (from `max` to `min`, logarithmically);
//! - **buddy system**: probing a suspect puts the suspicion first in the packet, so the
//!   suspect hears it and refutes;
//! - **nacks**: indirect probers answer "no answer" in time, so a requester can tell its own
//!   trouble from the target's.
//!
//! Beyond the papers, for heavy loss and large clusters (every member hears every suspicion,
//! so the churn of false suspicions, and what it costs each member, grows with n):
//! - **indirect waves** ([`Config::indirect_waves`]): while no ack has come, further waves of
//!   `k` other helpers go out later in the round, so fewer rounds fail for a live member;
//! - **corrections**: a stale suspicion is answered straight back with the refutation held,
//!   and a suspicion still open halfway to its deadline is gossiped once more (a last call), so
//!   a refutation lost on its way to one member does not bury a live member;
//! - **differential anti-entropy**: a view is split into [`SYNC_BUCKETS`] buckets by id, each
//!   with a hash of its live members kept as updates land. A peer whose digest keeps differing
//!   (at once while this member suspects someone: the difference may be a missed refutation)
//!   gets a [`Body::Summary`] of the bucket hashes and starts an exchange of the differing
//!   buckets only, so a repair costs what the difference holds, not the whole membership;
//!   those repairs spend a byte budget ([`Config::sync_bytes_per_s`]). The periodic round is
//!   a summary too, with a whole state one round in eight as a backstop, and it stretches with
//!   the cluster, so anti-entropy costs each member little and the same whatever n.
//!
//! The machine owns its encoding: [`Swim::handle_packet`] takes raw datagrams and
//! [`Action::Send`] carries ready ones, so every packet, in or out, is checked against
//! [`Config::packet_bytes_max`]. See [`member`] for the precedence rule that merges updates.
//!
//! ```
//! use quorate_core::swim::{Action, Addr, Config, Swim};
//! use quorate_core::{Instant, Machine, NodeId};
//!
//! /// Carries every packet `src` wants to send straight to `dst` (a perfect network).
//! fn pump(src: &mut Swim, dst: &mut Swim, now: Instant) -> bool {
//!     let mut moved = false;
//!     while let Some(action) = src.poll_action() {
//!         if let Action::Send { packet, .. } = action {
//!             dst.handle_packet(now, src.addr(), &packet).expect("well-formed");
//!             moved = true;
//!         }
//!     }
//!     moved
//! }
//!
//! let addr = |i| Addr::v4(10, 0, 0, i, 7946);
//! let mut a = Swim::new(Config::lan(NodeId(1), 9, addr(1)), 1, 11, Instant::ZERO).unwrap();
//! let mut cfg = Config::lan(NodeId(2), 9, addr(2));
//! cfg.seeds = vec![addr(1)];
//! let mut b = Swim::new(cfg, 1, 22, Instant::ZERO).unwrap();
//! let mut now = Instant::ZERO;
//! for _ in 0..200 {
//!     while pump(&mut a, &mut b, now) | pump(&mut b, &mut a, now) {}
//!     now = a.poll_timeout().into_iter().chain(b.poll_timeout()).min().unwrap().max(now);
//!     a.handle_timeout(now);
//!     b.handle_timeout(now);
//! }
//! assert_eq!(a.live_members(), 2);
//! assert_eq!(b.live_members(), 2);
//! ```

mod config;
mod gossip;
pub mod member;
pub mod message;
mod table;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
#[cfg(test)]
mod tests;

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::vec::Vec;
use core::time::Duration;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use thiserror::Error;

pub use config::{Config, ConfigError};
use gossip::GossipQueue;
use member::MetaPool;
pub use member::{Addr, Member, Meta, SharedMeta, State, Version};
use message::PacketHead;
pub use message::{in_buckets, member_hash, sync_bucket, Body, Digest, Kind, Packet, Update, SYNC_BUCKETS};
use table::{MemberTable, Record};

use crate::machine::Machine;
use crate::time::{earliest, Instant};
use crate::wire::{self, WireError};
use crate::NodeId;

/// What the host must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send this datagram (already encoded, within the packet limit) to `to`.
    Send {
        /// Destination address.
        to: Addr,
        /// The datagram.
        packet: Vec<u8>,
    },
    /// Something the host may want to know.
    Event(Event),
}

/// Membership news. A [`Member`] rides boxed, so that an [`Action`] is no larger than a
/// `Send`, which almost every action is (actions are moved through a queue by the million).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A member became known alive: new, back after down or left, or a new generation.
    Up(Box<Member>),
    /// A member is suspected.
    Suspect(NodeId),
    /// A suspected member refuted the suspicion.
    Alive(NodeId),
    /// A member was declared down.
    Down(NodeId),
    /// A member left gracefully.
    Left(NodeId),
    /// A live member published new metadata or a new address.
    Updated(Box<Member>),
    /// A Down or Left member's tombstone was collected.
    Forgotten(NodeId),
    /// This member's own health score changed (0 is healthy, see [`Config::health_max`]).
    Health(u32),
    /// This member was declared down or left by others and renewed its identity.
    Renewed {
        /// The new generation.
        gen: u64,
    },
    /// This member got its first full-state answer: it is part of the cluster.
    Joined,
    /// After [`Swim::leave`], the leave was gossiped enough; the host may stop.
    LeaveDone,
}

/// Why a packet or a command was refused. A refused packet changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SwimError {
    /// The datagram failed the envelope checks (size, magic, version, cluster, body).
    #[error("rejected packet: {0}")]
    Wire(#[from] WireError),
    /// The datagram decoded but carries out-of-range counters or chunk numbers.
    #[error("rejected packet: fields out of range")]
    Invalid,
    /// Metadata larger than [`Config::meta_bytes_max`].
    #[error("metadata encodes to {len} bytes, over meta_bytes_max ({max})")]
    MetaTooLarge {
        /// Encoded size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// This member has left; it accepts no more commands.
    #[error("this member has left the cluster")]
    Left,
}

/// Counters for operators and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams sent.
    pub packets_sent: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Datagrams received, accepted or not.
    pub packets_received: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Rejected: over the packet limit.
    pub rejected_too_large: u64,
    /// Rejected: another cluster.
    pub rejected_cluster: u64,
    /// Rejected: unknown protocol version or bad magic.
    pub rejected_version: u64,
    /// Rejected: malformed body or out-of-range fields.
    pub rejected_malformed: u64,
    /// Accepted but ignored (our own id, or after leaving).
    pub ignored: u64,
    /// Probe rounds started.
    pub probes: u64,
    /// Probe rounds that ended without an ack.
    pub probe_failures: u64,
    /// Suspicions about this member refuted.
    pub refutations: u64,
    /// State exchanges started (whole, or some sync buckets).
    pub push_pulls: u64,
    /// Of those, the bucket exchanges started in answer to a peer's [`Body::Summary`].
    pub digest_syncs: u64,
    /// Summaries sent: because a peer's view digest kept differing, or periodically.
    pub summaries: u64,
    /// Periodic anti-entropy rounds with a live member (a summary, or every eighth a whole
    /// state).
    pub periodic_syncs: u64,
    /// Stale suspicions answered with the refutation this member held.
    pub corrections: u64,
    /// Packets built but not sent because they did not encode within the packet limit:
    /// sizes are budgeted exactly, so anything but zero is a bug.
    pub send_errors: u64,
    /// Datagrams sent, by [`Kind`] (index with `kind as usize`).
    pub sent_packets_by_kind: [u64; Kind::COUNT],
    /// Bytes sent, by [`Kind`] (index with `kind as usize`).
    pub sent_bytes_by_kind: [u64; Kind::COUNT],
}

struct Probe {
    target: NodeId,
    seq: u32,
    /// When the next indirect wave goes out, while waves remain.
    indirect_at: Instant,
    /// Indirect waves sent so far.
    waves: u32,
    /// Helpers asked so far (a later wave asks others).
    helpers: Vec<NodeId>,
    acked: bool,
    direct_ack: bool,
    nacks: u32,
    expected_nacks: u32,
}

struct Indirect {
    requester: Addr,
    seq: u32,
    nack_at: Instant,
}

struct Suspicion {
    version: Version,
    start: Instant,
    confirmers: Vec<NodeId>,
    deadline: Instant,
    /// Halfway to the deadline, until it has been done: the last call.
    recheck: Option<Instant>,
}

/// Indirect probes this member runs for others at once; more are refused (flood bound).
const INDIRECT_MAX: usize = 256;
/// Push-pull requests remembered so a repeated chunk is not answered twice.
const ANSWERED_MAX: usize = 64;
/// Room left in every packet for the envelope and the gossip list's length.
const GOSSIP_SLACK: usize = 4;
/// A record of news in a push-pull answer refunds this many records' worth of sync budget.
const SYNC_NEWS_WORTH: u64 = 16;
/// Corrections of stale suspicions sent back for one received packet.
const CORRECTIONS_MAX: usize = 4;
/// One periodic anti-entropy round in this many exchanges whole states; the others send a
/// summary.
const FULL_EXCHANGE_EVERY: u32 = 8;
/// What a [`Body::Summary`] costs the sync budget: its encoded size, about 5 bytes a bucket.
const SUMMARY_BYTES: u64 = 5 * SYNC_BUCKETS as u64 + 32;

/// The settings every wake-up and every send reads, copied out of the [`Config`] (which never
/// changes after [`Swim::new`]) so that they share a cache line with the deadlines.
#[derive(Clone, Copy)]
#[repr(C)]
struct Tuning {
    probe_interval: Duration,
    probe_timeout: Duration,
    gossip_interval: Duration,
    packet_bytes_max: usize,
    indirect_waves: u32,
    retransmit_mult: u32,
}

/// One SWIM member. See the [module docs](self).
///
/// Laid out in declaration order (`repr(C)`), hot fields first: a simulation steps thousands
/// of members in turn, so each wake-up finds its member cold in cache, and what a probe or
/// gossip round reads should be a few cache lines, not one line per field across 2 KB.
#[repr(C)]
pub struct Swim {
    // Read on every wake-up and deadline computation.
    next_probe: Instant,
    next_gossip: Instant,
    next_push_pull: Instant,
    next_join: Option<Instant>,
    live: usize,
    seq: u32,
    health: u32,
    leave_done: bool,
    leaving: bool,
    joined: bool,
    tuning: Tuning,
    probe: Option<Probe>,
    indirect: BTreeMap<u32, Indirect>,
    suspicion_deadlines: BTreeSet<(Instant, NodeId)>,
    suspicion_rechecks: BTreeSet<(Instant, NodeId)>,
    /// When each Down or Left member's tombstone is collected, in both orders.
    tombstones: BTreeSet<(Instant, NodeId)>,
    actions: VecDeque<Action>,
    // Read on every packet.
    gossip: GossipQueue,
    members: MemberTable,
    /// Live members in this round's probe order, each with a [slot hint](MemberTable::get_hinted).
    probe_order: Vec<(NodeId, u32)>,
    probe_pos: usize,
    digest_hash: u32,
    view_hash: u32,
    stats: Stats,
    // The rest.
    suspicions: BTreeMap<NodeId, Suspicion>,
    tomb_due: BTreeMap<NodeId, Instant>,
    mismatch_since: Option<Instant>,
    last_sync: Option<Instant>,
    cfg: Config,
    rng: ChaCha8Rng,
    me: Member,
    metas: MetaPool,
    /// The digest split by [`sync_bucket`]: what a [`Body::Summary`] carries.
    bucket_hashes: [u32; SYNC_BUCKETS],
    /// The period `next_push_pull` was planned with (it grows with the cluster).
    planned_period: Duration,
    /// Bytes digest-driven repairs may still spend, as of `sync_tokens_at`; negative after a
    /// bucket exchange cost more than was left (a debt paid back before the next summary).
    sync_tokens: i64,
    sync_tokens_at: Instant,
    /// Average encoded bytes per member in the last full state sent.
    record_bytes: u64,
    answered: VecDeque<(NodeId, u64, u32)>,
    /// Periodic anti-entropy rounds so far (every `FULL_EXCHANGE_EVERY`-th is a whole state).
    periodic_rounds: u32,
    /// The last ping sent to a member held down, `(seq, id)`: its ack (the member is
    /// reachable again) starts a whole-state exchange with it.
    reconnect: Option<(u32, NodeId)>,
    /// Summaries answered lately, by sender, so one peer gets at most one bucket exchange per
    /// half `sync_gap` (an honest one asks at most once per gap): a 350-byte summary can cost
    /// a whole state, and an unbounded answer rate would be an amplifier.
    summaries_answered: VecDeque<(NodeId, Instant)>,
    join_backoff: Duration,
}

impl Swim {
    /// Starts a member of generation `gen` (one per life: pass a counter persisted across
    /// restarts, or the boot time in milliseconds; if it is ever lower than what the cluster
    /// remembers, the member adopts a higher one as soon as it hears of it). `seed` seeds the
    /// member's RNG. Joining through [`Config::seeds`] starts at once.
    pub fn new(cfg: Config, gen: u64, seed: u64, now: Instant) -> Result<Swim, ConfigError> {
        cfg.validate()?;
        let me = Member {
            id: cfg.id,
            addr: cfg.addr,
            version: Version { gen: gen.min(Version::MAX_VALID), inc: 0, state: State::Alive },
            meta: SharedMeta::new(cfg.meta.clone()),
        };
        let gossip = GossipQueue::new(cfg.gossip_queue_max, cfg.id);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let jitter = |rng: &mut ChaCha8Rng, d: Duration| {
            now.saturating_add(Duration::from_nanos(rng.next_u64() % (d.as_nanos() as u64).max(1)))
        };
        let next_probe = jitter(&mut rng, cfg.probe_interval);
        let next_gossip = jitter(&mut rng, cfg.gossip_interval);
        let next_push_pull = jitter(&mut rng, cfg.push_pull_interval).saturating_add(cfg.push_pull_interval);
        let next_join = if cfg.seeds.iter().any(|s| *s != cfg.addr) { Some(now) } else { None };
        let join_backoff = cfg.join_retry_min;
        // A random start, so a restarted member (same id, perhaps the same generation) does not
        // reuse the sequence numbers its previous life used, which peers may still remember.
        let seq = rng.next_u32();
        let planned_period = cfg.push_pull_interval;
        let tuning = Tuning {
            probe_interval: cfg.probe_interval,
            probe_timeout: cfg.probe_timeout,
            gossip_interval: cfg.gossip_interval,
            packet_bytes_max: cfg.packet_bytes_max,
            indirect_waves: cfg.indirect_waves,
            retransmit_mult: cfg.retransmit_mult,
        };
        let mut swim = Swim {
            tuning,
            cfg,
            rng,
            me,
            members: MemberTable::default(),
            metas: MetaPool::default(),
            live: 1,
            digest_hash: 0,
            bucket_hashes: [0; SYNC_BUCKETS],
            probe_order: Vec::new(),
            probe_pos: 0,
            probe: None,
            next_probe,
            seq,
            indirect: BTreeMap::new(),
            suspicions: BTreeMap::new(),
            suspicion_deadlines: BTreeSet::new(),
            suspicion_rechecks: BTreeSet::new(),
            tombstones: BTreeSet::new(),
            tomb_due: BTreeMap::new(),
            gossip,
            health: 0,
            next_gossip,
            next_push_pull,
            planned_period,
            last_sync: None,
            mismatch_since: None,
            sync_tokens: i64::MAX,
            sync_tokens_at: now,
            record_bytes: 32,
            view_hash: 0,
            answered: VecDeque::new(),
            periodic_rounds: 0,
            reconnect: None,
            summaries_answered: VecDeque::new(),
            joined: false,
            next_join,
            join_backoff,
            leaving: false,
            leave_done: false,
            actions: VecDeque::new(),
            stats: Stats::default(),
        };
        swim.toggle_live(swim.me.id, swim.me.version.gen, swim.me.version.inc);
        swim.view_hash = member_hash(swim.me.id, swim.me.version.gen, 0);
        Ok(swim)
    }

    // ----- getters -----

    /// This member's id.
    pub fn id(&self) -> NodeId {
        self.cfg.id
    }

    /// This member's SWIM address.
    pub fn addr(&self) -> Addr {
        self.cfg.addr
    }

    /// This member's own record (generation, incarnation, metadata).
    pub fn me(&self) -> &Member {
        &self.me
    }

    /// Everything known about `id` (this member excluded). Members are stored compactly, so
    /// this builds the value (the metadata is shared, not copied).
    pub fn member(&self, id: NodeId) -> Option<Member> {
        self.members.get(id).map(|r| self.members.member(r))
    }

    /// Every other known member, tombstones included, in id order. Sorts a list of the
    /// records first (the table is kept in slot order for speed), so it costs O(n log n).
    pub fn members(&self) -> impl Iterator<Item = Member> + '_ {
        let mut recs: Vec<&Record> = self.members.iter().collect();
        recs.sort_unstable_by_key(|r| r.id);
        recs.into_iter().map(|r| self.members.member(r))
    }

    /// Other members known, tombstones included.
    pub fn known_members(&self) -> usize {
        self.members.len()
    }

    /// Alive and suspect members, this one included.
    pub fn live_members(&self) -> usize {
        self.live
    }

    /// The local health score (0 is healthy).
    pub fn health(&self) -> u32 {
        self.health
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// This member's view digest, as sent in every packet.
    pub fn digest(&self) -> Digest {
        Digest { live: u32::try_from(self.live).unwrap_or(u32::MAX), hash: self.digest_hash }
    }

    /// A fingerprint of the membership itself: which members are live, at which generation,
    /// ignoring incarnations. Members that agree on who is in the cluster have equal views.
    pub fn view(&self) -> Digest {
        Digest { live: u32::try_from(self.live).unwrap_or(u32::MAX), hash: self.view_hash }
    }

    /// True once a full-state answer arrived (always true for a member without seeds).
    pub fn is_joined(&self) -> bool {
        self.joined || self.cfg.seeds.iter().all(|s| *s == self.cfg.addr)
    }

    /// Updates waiting to be gossiped.
    pub fn pending_gossip(&self) -> usize {
        self.gossip.len()
    }

    /// Updates dropped unsent because the gossip queue was full ([`Config::gossip_queue_max`]).
    pub fn dropped_gossip(&self) -> u64 {
        self.gossip.dropped()
    }

    /// Distinct metadata values held (equal values are shared by every record that has them).
    pub fn distinct_metas(&self) -> usize {
        self.metas.len()
    }

    // ----- commands -----

    /// Publishes new metadata: bumps the incarnation and gossips it.
    pub fn set_meta(&mut self, now: Instant, meta: Meta) -> Result<(), SwimError> {
        if self.leaving {
            return Err(SwimError::Left);
        }
        let len = postcard::experimental::serialized_size(&meta).unwrap_or(usize::MAX);
        if len > self.cfg.meta_bytes_max {
            return Err(SwimError::MetaTooLarge { len, max: self.cfg.meta_bytes_max });
        }
        self.me.meta = SharedMeta::new(meta);
        self.bump_incarnation(self.me.version.inc);
        let _ = now;
        Ok(())
    }

    /// Leaves gracefully: gossips `Left` at once and keeps gossiping (without probing) until
    /// [`Event::LeaveDone`].
    pub fn leave(&mut self, now: Instant) -> Result<(), SwimError> {
        if self.leaving {
            return Err(SwimError::Left);
        }
        self.leaving = true;
        self.me.version.state = State::Left;
        self.probe = None;
        self.next_join = None;
        self.gossip.push(&Update::of(&self.me, self.cfg.id));
        self.gossip_round(now);
        Ok(())
    }

    /// Joins (again) through `seeds`, replacing the configured ones.
    pub fn join(&mut self, now: Instant, seeds: Vec<Addr>) -> Result<(), SwimError> {
        if self.leaving {
            return Err(SwimError::Left);
        }
        self.cfg.seeds = seeds;
        self.join_backoff = self.cfg.join_retry_min;
        self.next_join = Some(now);
        Ok(())
    }

    // ----- inputs -----

    /// Handles one datagram received from `from`. A rejected datagram is counted and changes
    /// nothing else.
    pub fn handle_packet(&mut self, now: Instant, from: Addr, bytes: &[u8]) -> Result<(), SwimError> {
        self.stats.packets_received += 1;
        self.stats.bytes_received += bytes.len() as u64;
        let env = match message::decode_packet(bytes, self.cfg.cluster_id, self.tuning.packet_bytes_max) {
            Ok(env) => env,
            Err(e) => {
                match e {
                    WireError::TooLarge { .. } => self.stats.rejected_too_large += 1,
                    WireError::WrongCluster { .. } => self.stats.rejected_cluster += 1,
                    WireError::BadMagic | WireError::UnsupportedVersion(_) => self.stats.rejected_version += 1,
                    WireError::Malformed => self.stats.rejected_malformed += 1,
                }
                return Err(SwimError::Wire(e));
            }
        };
        if !env.body.validate() || env.from == NodeId::NONE {
            self.stats.rejected_malformed += 1;
            return Err(SwimError::Invalid);
        }
        if env.from == self.cfg.id || self.leaving {
            self.stats.ignored += 1;
            return Ok(());
        }
        let sender = env.from;
        let packet = env.body;
        let mut corrections = Vec::new();
        let me_before = self.me.version;
        for u in packet.gossip {
            if corrections.len() < CORRECTIONS_MAX {
                if let Some(c) = self.correction(&u) {
                    self.stats.corrections += 1;
                    corrections.push(c);
                }
            }
            let _ = self.apply(now, u.id(), u.version(), claim_by(&u, sender), info_of(u), true);
        }
        // This packet made this member refute a suspicion or renew: the sender, who holds the
        // claim it answers, hears the answer first (it also spreads by gossip).
        if self.me.version != me_before && !self.leaving {
            corrections.insert(0, Update::of(&self.me, self.cfg.id));
        }
        // A sender we hold for dead in its generation learns so first, and renews.
        // `tomb_due` holds exactly the members recorded Down or Left (an invariant), so the
        // common case, a live sender, costs no lookup in the member table.
        let warn = if self.tomb_due.contains_key(&sender) {
            self.members
                .get(sender)
                .and_then(|r| (!r.is_live() && r.gen >= packet.gen).then(|| self.update_of(r, self.cfg.id)))
        } else {
            None
        };
        match packet.body {
            Body::Ping { seq, target } => {
                if target == self.cfg.id {
                    let first = warn.into_iter().chain(core::mem::take(&mut corrections)).collect();
                    self.send(from, Body::Ack { seq }, first);
                }
            }
            Body::Ack { seq } => self.on_ack(seq),
            Body::Nack { seq } => {
                if let Some(p) = self.probe.as_mut().filter(|p| p.seq == seq) {
                    p.nacks += 1;
                }
            }
            Body::PingReq { seq, target, addr } => {
                if self.indirect.len() < INDIRECT_MAX && target != self.cfg.id {
                    let my_seq = self.next_seq();
                    let nack_at = now.saturating_add(self.scaled(self.tuning.probe_timeout) * 4 / 5);
                    self.indirect.insert(my_seq, Indirect { requester: from, seq, nack_at });
                    let buddy = self.buddy(target);
                    self.send(addr, Body::Ping { seq: my_seq, target }, buddy.into_iter().collect());
                }
            }
            Body::PushPull { seq, reply, join, buckets, members, .. } => {
                let mut news = 0u64;
                for m in members {
                    let info = (m.addr != Addr::UNSPECIFIED).then_some((m.addr, m.meta));
                    news += u64::from(self.apply(now, m.id, m.version, sender, info, m.id == sender));
                }
                self.refund_sync_budget(news);
                if reply {
                    if !self.joined {
                        self.joined = true;
                        self.next_join = None;
                        self.emit(Event::Joined);
                    }
                } else if !self.answered.contains(&(sender, packet.gen, seq)) {
                    if self.answered.len() >= ANSWERED_MAX {
                        self.answered.pop_front();
                    }
                    self.answered.push_back((sender, packet.gen, seq));
                    if buckets != u64::MAX {
                        self.charge_bucket_sync(buckets);
                    }
                    self.send_state(from, seq, true, join, buckets);
                }
            }
            Body::Summary { buckets, .. } => self.on_summary(now, sender, from, &buckets),
            Body::Gossip => {
                if let Some(w) = warn {
                    corrections.insert(0, w);
                }
            }
        }
        if !corrections.is_empty() {
            self.send(from, Body::Gossip, corrections);
        }
        // Views that keep differing are repaired by a bucket exchange with the sender. A
        // difference in incarnations only is usually an update still spreading, so it must
        // persist for a gap first; a difference in member count is repaired at once, and so is
        // any difference while this member suspects someone: the difference may be the
        // suspect's refutation, missed, and waiting would let the suspicion time out.
        if packet.digest == self.digest() {
            self.mismatch_since = None;
        } else if self.members.get(sender).is_some_and(Record::is_live) {
            let gap = self.cfg.sync_gap;
            let since = *self.mismatch_since.get_or_insert(now);
            // Different member counts are no passing refutation: repair at once.
            let persistent = packet.digest.live != self.digest().live
                || now >= since.saturating_add(gap)
                || !self.suspicions.is_empty();
            let rested = self.last_sync.is_none_or(|t| now >= t.saturating_add(gap));
            if persistent && rested && self.take_sync_budget(now, SUMMARY_BYTES) {
                self.last_sync = Some(now);
                self.mismatch_since = None;
                self.send_summary(from);
            }
        }
        Ok(())
    }

    /// When `u` is a suspicion older than a refutation this member holds (the suspect's own
    /// `Alive` at a higher incarnation or generation, or this member's own life), the sender
    /// missed the refutation: the update that tells it, sent straight back. A refutation lost
    /// on its way to one member would otherwise let that member's timer bury a live member.
    /// At most [`CORRECTIONS_MAX`] go back per received packet.
    fn correction(&self, u: &Update) -> Option<Update> {
        let Update::Suspect { id, .. } = *u else { return None };
        let v = u.version();
        if id == self.cfg.id {
            let mine = self.me.version;
            let stale = mine.state == State::Alive && (v.gen < mine.gen || (v.gen == mine.gen && v.inc < mine.inc));
            return stale.then(|| Update::of(&self.me, self.cfg.id));
        }
        let r = self.members.get(id)?;
        (r.state == State::Alive && r.version().supersedes(&v)).then(|| self.update_of(r, self.cfg.id))
    }

    /// A peer whose digest differs sent its bucket hashes: the buckets that differ are
    /// exchanged, this member's records first (the peer answers with its own for the same
    /// buckets). Only the differing buckets travel, so the cost of a repair follows the size
    /// of the difference, not of the membership.
    fn on_summary(&mut self, now: Instant, sender: NodeId, from: Addr, theirs: &[u32]) {
        if !self.members.get(sender).is_some_and(Record::is_live) {
            return;
        }
        let differ = theirs.iter().zip(&self.bucket_hashes).enumerate().filter(|(_, (a, b))| a != b);
        let buckets = differ.fold(0u64, |set, (i, _)| set | (1 << i));
        if buckets == 0 {
            return;
        }
        let half_gap = self.cfg.sync_gap / 2;
        while self.summaries_answered.front().is_some_and(|(_, t)| now >= t.saturating_add(half_gap)) {
            self.summaries_answered.pop_front();
        }
        if self.summaries_answered.iter().any(|(s, _)| *s == sender) || self.summaries_answered.len() >= ANSWERED_MAX {
            return;
        }
        self.summaries_answered.push_back((sender, now));
        // Answered whatever this member's budget: the asker pays (see `charge_bucket_sync`), as
        // the one that wants the repair; a responder paying would refuse the members that need
        // it most (every joiner asks the few that know everyone).
        self.stats.push_pulls += 1;
        self.stats.digest_syncs += 1;
        let seq = self.next_seq();
        self.send_state(from, seq, false, false, buckets);
    }

    /// Sends this member's bucket hashes to `to`, asking it to exchange the buckets that differ
    /// (the caller has charged the budget).
    fn send_summary(&mut self, to: Addr) {
        self.stats.summaries += 1;
        let seq = self.next_seq();
        self.send(to, Body::Summary { seq, buckets: self.bucket_hashes.to_vec() }, Vec::new());
    }

    /// Charges the budget for a bucket exchange this member asked for with a summary, at its
    /// request and reply for the buckets' share of the state. It may leave the budget empty,
    /// which holds back the next summaries until it refills.
    fn charge_bucket_sync(&mut self, buckets: u64) {
        let share = u64::from(buckets.count_ones());
        let cost = 2 * self.state_bytes() * share / SYNC_BUCKETS as u64;
        let floor = -self.sync_budget_cap();
        self.sync_tokens = self.sync_tokens.saturating_sub(i64::try_from(cost).unwrap_or(i64::MAX)).max(floor);
    }

    /// Digest-driven repairs draw on a budget of [`Config::sync_bytes_per_s`]: the summary
    /// that asks for one, and the bucket exchange that answers it, counted at its request and
    /// reply. Their cost stays constant per member as the cluster grows, where a full state
    /// grows with it. Records of an answer that were news are refunded
    /// ([`Self::refund_sync_budget`]), so exchanges that repair much (after a join storm, a
    /// healed partition) are not held back; exchanges that find views nearly equal (churn
    /// still spreading) are.
    fn take_sync_budget(&mut self, now: Instant, cost: u64) -> bool {
        let cap = self.sync_budget_cap();
        let elapsed = now.saturating_duration_since(self.sync_tokens_at);
        let earned = elapsed.as_nanos() * u128::from(self.cfg.sync_bytes_per_s) / 1_000_000_000;
        let earned = i64::try_from(earned).unwrap_or(i64::MAX);
        self.sync_tokens = self.sync_tokens.saturating_add(earned).min(cap);
        self.sync_tokens_at = now;
        let cost = i64::try_from(cost).unwrap_or(i64::MAX);
        if self.sync_tokens < cost {
            return false;
        }
        self.sync_tokens -= cost;
        true
    }

    fn refund_sync_budget(&mut self, news: u64) {
        // An answer that is at least 1/SYNC_NEWS_WORTH news pays for its exchange.
        let refund = news.saturating_mul(2 * SYNC_NEWS_WORTH * self.record_bytes);
        let refund = i64::try_from(refund).unwrap_or(i64::MAX);
        self.sync_tokens = self.sync_tokens.saturating_add(refund).min(self.sync_budget_cap());
    }

    /// Two full exchanges' worth.
    fn sync_budget_cap(&self) -> i64 {
        i64::try_from((4 * self.state_bytes()).max(4 * SUMMARY_BYTES)).unwrap_or(i64::MAX)
    }

    /// The encoded size of this member's full state, from the last one it sent.
    fn state_bytes(&self) -> u64 {
        self.record_bytes * (self.members.len() as u64 + 1)
    }

    fn on_ack(&mut self, seq: u32) {
        if let Some(p) = self.probe.as_mut().filter(|p| p.seq == seq) {
            if !p.acked {
                p.acked = true;
                p.direct_ack = p.waves == 0;
            }
            return;
        }
        if let Some((_, id)) = self.reconnect.filter(|(s, _)| *s == seq) {
            self.reconnect = None;
            self.push_pull_with(id, false);
            return;
        }
        if let Some(ind) = self.indirect.remove(&seq) {
            self.send(ind.requester, Body::Ack { seq: ind.seq }, Vec::new());
        }
    }

    // ----- merging -----

    /// Merges one claim about member `id`. `info` carries address and metadata when known.
    ///
    /// `regossip` is false for claims learned in a full-state exchange: the partner already
    /// knows them and digest-driven exchanges spread them further, so re-gossiping every
    /// member of a large cluster after each exchange would only flood the piggyback queue.
    fn apply(
        &mut self,
        now: Instant,
        id: NodeId,
        v: Version,
        by: NodeId,
        info: Option<(Addr, SharedMeta)>,
        regossip: bool,
    ) -> bool {
        if id == NodeId::NONE {
            return false;
        }
        if id == self.cfg.id {
            self.about_me(v);
            return false;
        }
        let Some(rec) = self.members.get(id) else {
            return self.apply_new(now, id, v, by, info, regossip);
        };
        let old = rec.version();
        let old_addr = self.members.addr(rec);
        // A member known only from a tombstone has no address: a live claim without one cannot
        // be acted on, and ignoring it keeps the view independent of delivery order.
        if info.is_none() && !v.state.is_terminal() && old_addr == Addr::UNSPECIFIED {
            return false;
        }
        if !v.supersedes(&old) {
            if v == old && v.state == State::Suspect {
                self.confirm_suspicion(id, v, by);
            }
            return false;
        }
        let mut meta_changed = false;
        if let Some((addr, meta)) = info {
            let same_meta = *rec.meta == *meta;
            meta_changed = addr != old_addr || !same_meta;
            if addr != old_addr {
                self.members.set_addr(id, addr);
            }
            if !same_meta {
                let meta = self.metas.intern(meta);
                if let Some(r) = self.members.get_mut(id) {
                    r.meta = meta;
                }
            }
        }
        if let Some(r) = self.members.get_mut(id) {
            r.set_version(v);
        }
        let was_live = !old.state.is_terminal();
        let is_live_now = !v.state.is_terminal();
        if was_live {
            self.toggle_live(id, old.gen, old.inc);
        }
        if is_live_now {
            self.toggle_live(id, v.gen, v.inc);
        }
        if was_live && (!is_live_now || v.gen != old.gen) {
            self.became_dead(id, old.gen);
        }
        if is_live_now && (!was_live || v.gen != old.gen) {
            self.became_live(id, v.gen);
        }
        if v.state != State::Suspect || v.gen != old.gen || v.inc != old.inc {
            self.cancel_suspicion(id);
        }
        match v.state {
            State::Alive => {
                if !was_live || v.gen != old.gen {
                    self.emit_member(id, Event::Up);
                } else {
                    if old.state == State::Suspect {
                        self.emit(Event::Alive(id));
                    }
                    if meta_changed {
                        self.emit_member(id, Event::Updated);
                    }
                }
            }
            State::Suspect => {
                if !was_live || v.gen != old.gen {
                    self.emit_member(id, Event::Up);
                }
                self.emit(Event::Suspect(id));
                self.start_suspicion(now, id, v, by);
            }
            State::Down | State::Left => {
                self.set_tombstone(now, id);
                if was_live || old.state != v.state {
                    self.emit(if v.state == State::Down { Event::Down(id) } else { Event::Left(id) });
                }
            }
        }
        if is_live_now && !was_live {
            self.clear_tombstone(id);
        }
        if regossip {
            self.queue_gossip(id, by);
        } else {
            // Whatever was pending about this member is now stale.
            self.gossip.remove(id);
        }
        true
    }

    /// [`Self::apply`] for a member not known before.
    fn apply_new(
        &mut self,
        now: Instant,
        id: NodeId,
        v: Version,
        by: NodeId,
        info: Option<(Addr, SharedMeta)>,
        regossip: bool,
    ) -> bool {
        match (v.state, info) {
            (State::Suspect | State::Alive, Some((addr, meta))) => {
                let meta = self.metas.intern(meta);
                self.members.insert(id, v, addr, meta.clone());
                self.toggle_live(id, v.gen, v.inc);
                self.became_live(id, v.gen);
                self.emit(Event::Up(Box::new(Member { id, addr, version: v, meta })));
                if v.state == State::Suspect {
                    self.emit(Event::Suspect(id));
                    self.start_suspicion(now, id, v, by);
                }
            }
            (State::Down | State::Left, info) => {
                let (addr, meta) = info.unwrap_or_else(|| (Addr::UNSPECIFIED, SharedMeta::default()));
                let meta = self.metas.intern(meta);
                self.members.insert(id, v, addr, meta);
                self.set_tombstone(now, id);
            }
            _ => return false,
        }
        if regossip {
            self.queue_gossip(id, by);
        }
        true
    }

    /// Emits `event` with the current public view of member `id`.
    fn emit_member(&mut self, id: NodeId, event: fn(Box<Member>) -> Event) {
        if let Some(r) = self.members.get(id) {
            let m = self.members.member(r);
            self.emit(event(Box::new(m)));
        }
    }

    /// The update that states what `rec` records (`by`: the suspecter, for a suspicion).
    fn update_of(&self, rec: &Record, by: NodeId) -> Update {
        update_of(&self.members, rec, by)
    }

    /// The update about `id` as known now (this member's own, or from its record).
    fn current_update(&self, id: NodeId, by: NodeId) -> Option<Update> {
        current_update(&self.members, &self.me, id, by)
    }

    fn queue_gossip(&mut self, id: NodeId, by: NodeId) {
        if let Some(u) = self.current_update(id, by) {
            self.gossip.push(&u);
        }
    }

    /// Schedules the collection of `id`'s tombstone, replacing any earlier schedule.
    fn set_tombstone(&mut self, now: Instant, id: NodeId) {
        self.clear_tombstone(id);
        let at = now.saturating_add(self.cfg.tombstone_ttl);
        self.tombstones.insert((at, id));
        self.tomb_due.insert(id, at);
    }

    fn clear_tombstone(&mut self, id: NodeId) {
        if let Some(at) = self.tomb_due.remove(&id) {
            self.tombstones.remove(&(at, id));
        }
    }

    /// A claim about this member: refute suspicion, adopt a newer life, renew after death.
    fn about_me(&mut self, v: Version) {
        let mine = self.me.version;
        if self.leaving || v.gen < mine.gen {
            return;
        }
        match v.state {
            State::Alive => {
                if (v.gen, v.inc) > (mine.gen, mine.inc) {
                    self.adopt(v.gen, v.inc);
                }
            }
            State::Suspect => {
                if v.gen > mine.gen || v.inc >= mine.inc {
                    self.stats.refutations += 1;
                    self.adopt(v.gen, v.inc);
                    self.set_health(self.health + 1);
                }
            }
            State::Down | State::Left => self.renew(v.gen),
        }
    }

    fn adopt(&mut self, gen: u64, inc: u64) {
        if gen > self.me.version.gen {
            self.set_me(gen, self.me.version.inc);
        }
        self.bump_incarnation(inc);
    }

    fn bump_incarnation(&mut self, above: u64) {
        if above >= Version::MAX_VALID {
            self.renew(self.me.version.gen);
            return;
        }
        self.set_me(self.me.version.gen, above + 1);
        self.gossip.push(&Update::of(&self.me, self.cfg.id));
    }

    fn renew(&mut self, dead_gen: u64) {
        let gen = dead_gen.max(self.me.version.gen).saturating_add(1).min(Version::MAX_VALID);
        self.set_me(gen, 0);
        self.emit(Event::Renewed { gen });
        self.gossip.push(&Update::of(&self.me, self.cfg.id));
    }

    fn set_me(&mut self, gen: u64, inc: u64) {
        let old = self.me.version;
        self.toggle_live(self.me.id, old.gen, old.inc);
        self.toggle_live(self.me.id, gen, inc);
        self.view_hash ^= member_hash(self.me.id, old.gen, 0) ^ member_hash(self.me.id, gen, 0);
        self.me.version.gen = gen;
        self.me.version.inc = inc;
    }

    /// Adds a live `(id, gen, inc)` to the digest and its sync bucket, or takes it out.
    fn toggle_live(&mut self, id: NodeId, gen: u64, inc: u64) {
        let h = member_hash(id, gen, inc);
        self.digest_hash ^= h;
        self.bucket_hashes[sync_bucket(id)] ^= h;
    }

    fn became_live(&mut self, id: NodeId, gen: u64) {
        self.live += 1;
        self.view_hash ^= member_hash(id, gen, 0);
        // New members go to a random place in the rest of this round, so they are probed in it;
        // the member they displace moves to the end, still in this round. O(1), where an insert
        // would move the whole order of a large cluster.
        let hint = self.members.hint_of(id);
        self.probe_order.push((id, hint));
        let rest = self.probe_order.len() - self.probe_pos.min(self.probe_order.len());
        if rest > 1 {
            let at = self.probe_pos + self.rng.next_u64() as usize % rest;
            let last = self.probe_order.len() - 1;
            self.probe_order.swap(at, last);
        }
    }

    fn became_dead(&mut self, id: NodeId, gen: u64) {
        self.live -= 1;
        self.view_hash ^= member_hash(id, gen, 0);
    }

    // ----- suspicion (Lifeguard's dynamic timeout) -----

    /// `(min, max, k)`: the timeout with every expected confirmation, without any, and how
    /// many confirmations are expected.
    fn suspicion_bounds(&self) -> (f64, f64, u32) {
        let (min, max, k) = self.cfg.suspicion_bounds(self.live);
        (min.as_nanos() as f64, max.as_nanos() as f64, k)
    }

    fn suspicion_timeout(&self, confirmations: usize) -> Duration {
        let (min, max, k) = self.suspicion_bounds();
        let t = if k == 0 {
            min
        } else {
            let frac = libm::log(confirmations as f64 + 1.0) / libm::log(f64::from(k) + 1.0);
            (max - frac * (max - min)).max(min)
        };
        Duration::from_nanos(t as u64)
    }

    fn start_suspicion(&mut self, now: Instant, id: NodeId, version: Version, by: NodeId) {
        self.cancel_suspicion(id);
        let deadline = now.saturating_add(self.suspicion_timeout(0));
        let recheck = halfway(now, deadline);
        let s = Suspicion { version, start: now, confirmers: alloc::vec![by], deadline, recheck: Some(recheck) };
        self.suspicions.insert(id, s);
        self.suspicion_deadlines.insert((deadline, id));
        self.suspicion_rechecks.insert((recheck, id));
    }

    /// The last call: a suspicion still open halfway to its deadline goes out once more (queued
    /// as already sent `gossip_fanout` times, so it costs fewer sends than news). A refutation
    /// spreads in a burst of a second or two; a member that
    /// missed all of it has its suspicion answered by a correction from whoever got it
    /// ([`Self::correction`]), instead of burying a live member when its timer runs out.
    fn recheck_suspicion(&mut self, id: NodeId) {
        let Some(s) = self.suspicions.get_mut(&id) else { return };
        s.recheck = None;
        let Some(u) = self.current_update(id, self.cfg.id) else { return };
        self.gossip.push_sent(&u, self.cfg.gossip_fanout as u32);
    }

    fn confirm_suspicion(&mut self, id: NodeId, v: Version, by: NodeId) {
        let (_, _, k) = self.suspicion_bounds();
        let Some(s) = self.suspicions.get(&id) else { return };
        if s.version != v || s.confirmers.contains(&by) || s.confirmers.len() > k as usize {
            return;
        }
        let confirmations = s.confirmers.len();
        let deadline = s.start.saturating_add(self.suspicion_timeout(confirmations));
        let Some(s) = self.suspicions.get_mut(&id) else { return };
        s.confirmers.push(by);
        self.suspicion_deadlines.remove(&(s.deadline, id));
        s.deadline = deadline;
        self.suspicion_deadlines.insert((deadline, id));
        if let Some(at) = s.recheck {
            let again = halfway(s.start, deadline);
            self.suspicion_rechecks.remove(&(at, id));
            self.suspicion_rechecks.insert((again, id));
            s.recheck = Some(again);
        }
        // Re-gossip, so the confirmation reaches the others' timers too.
        self.queue_gossip(id, by);
    }

    fn cancel_suspicion(&mut self, id: NodeId) {
        if let Some(s) = self.suspicions.remove(&id) {
            self.suspicion_deadlines.remove(&(s.deadline, id));
            if let Some(at) = s.recheck {
                self.suspicion_rechecks.remove(&(at, id));
            }
        }
    }

    // ----- health (Lifeguard's local health awareness) -----

    fn set_health(&mut self, score: u32) {
        let score = score.min(self.cfg.health_max - 1);
        if score != self.health {
            self.health = score;
            self.emit(Event::Health(score));
        }
    }

    fn scaled(&self, d: Duration) -> Duration {
        d * (self.health + 1)
    }

    // ----- probing -----

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// The next live member in the probe order, its address, and its buddy-system warning.
    fn pick_probe_target(&mut self) -> Option<(NodeId, Addr, Option<Update>)> {
        for pass in 0..2 {
            while self.probe_pos < self.probe_order.len() {
                let (id, hint) = self.probe_order[self.probe_pos];
                self.probe_pos += 1;
                if let Some(r) = self.members.get_hinted(id, hint).filter(|r| r.is_live()) {
                    return Some((id, self.members.addr(r), self.buddy_of(r)));
                }
            }
            if pass == 0 {
                // A round is over: a fresh shuffle of the live members (which also drops the dead).
                self.probe_order.clear();
                self.probe_order.extend(
                    self.members.iter().enumerate().filter(|(_, r)| r.is_live()).map(|(s, r)| (r.id, s as u32)),
                );
                self.probe_order.shrink_to(self.live);
                shuffle(&mut self.rng, &mut self.probe_order);
                self.probe_pos = 0;
            }
        }
        None
    }

    fn finish_probe(&mut self, now: Instant) {
        let Some(p) = self.probe.take() else { return };
        if p.acked {
            // A direct ack shows this member is healthy. An indirect one says nothing either way:
            // helpers that got the target's ack send no nack, so missing nacks prove nothing.
            if p.direct_ack {
                self.set_health(self.health.saturating_sub(1));
            }
            return;
        }
        // A failed round: every nack that did not come back hints the trouble is ours.
        let missed = if p.expected_nacks > 0 { p.expected_nacks.saturating_sub(p.nacks) } else { 1 };
        self.set_health(self.health + missed);
        self.stats.probe_failures += 1;
        let Some(v) = self.members.get(p.target).map(Record::version) else { return };
        if !v.state.is_terminal() {
            // Suspecting an already suspected member is an independent confirmation.
            let suspect = Version { state: State::Suspect, ..v };
            let raised = self.apply(now, p.target, suspect, self.cfg.id, None, true) && v.state == State::Alive;
            // Buddy system, at once: the member that raises a suspicion tells the suspect
            // itself, rather than waiting for gossip (which may all be lost) to reach it.
            if let Some(r) = self.members.get(p.target).filter(|_| raised) {
                let (addr, u) = (self.members.addr(r), self.update_of(r, self.cfg.id));
                self.send(addr, Body::Gossip, alloc::vec![u]);
            }
        }
    }

    fn start_probe(&mut self, now: Instant) {
        let Some((target, addr, buddy)) = self.pick_probe_target() else { return };
        let seq = self.next_seq();
        self.stats.probes += 1;
        self.probe = Some(Probe {
            target,
            seq,
            indirect_at: now.saturating_add(self.scaled(self.tuning.probe_timeout)),
            waves: 0,
            helpers: Vec::new(),
            acked: false,
            direct_ack: false,
            nacks: 0,
            expected_nacks: 0,
        });
        self.send(addr, Body::Ping { seq, target }, buddy.into_iter().collect());
    }

    /// Buddy system: when the target is suspected, the suspicion rides first so it can refute.
    fn buddy(&self, target: NodeId) -> Option<Update> {
        self.buddy_of(self.members.get(target)?)
    }

    /// [`Self::buddy`] for a record already in hand.
    fn buddy_of(&self, r: &Record) -> Option<Update> {
        (r.state == State::Suspect).then(|| self.update_of(r, self.cfg.id))
    }

    /// An indirect wave: `k` helpers not asked before probe the target, and the target gets one
    /// more direct try. The first wave's helpers owe nacks (Lifeguard); a later wave goes out
    /// halfway through what is left of the period, so its nacks would come too late to count.
    fn send_indirect(&mut self, now: Instant) {
        let Some(p) = self.probe.as_ref() else { return };
        let (target, seq) = (p.target, p.seq);
        // The target may have been declared down (or left) since the round began.
        let Some(addr) = self.members.get(target).filter(|r| r.is_live()).map(|r| self.members.addr(r)) else {
            self.probe = None;
            return;
        };
        let mut exclude = p.helpers.clone();
        exclude.push(target);
        let helpers = self.random_live(self.cfg.indirect_probes, &exclude);
        let end = self.next_probe;
        if let Some(p) = self.probe.as_mut() {
            if p.waves == 0 {
                p.expected_nacks = helpers.len() as u32;
            }
            p.waves += 1;
            p.helpers.extend(helpers.iter().map(|(h, _)| *h));
            p.indirect_at = now.saturating_add(end.saturating_duration_since(now) / 2);
        }
        for (_, haddr) in helpers {
            self.send(haddr, Body::PingReq { seq, target, addr }, Vec::new());
        }
        // Lifeguard/memberlist: also retry the target directly, in case only the first ping was lost.
        let buddy = self.buddy(target);
        self.send(addr, Body::Ping { seq, target }, buddy.into_iter().collect());
    }

    /// Up to `k` distinct live members other than those in `exclude`, at random, with their
    /// addresses.
    fn random_live(&mut self, k: usize, exclude: &[NodeId]) -> Vec<(NodeId, Addr)> {
        let mut out: Vec<(NodeId, Addr)> = Vec::with_capacity(k);
        if k == 0 || self.probe_order.is_empty() {
            return out;
        }
        let n = self.probe_order.len();
        if n <= 4 * k + exclude.len() {
            let members = &self.members;
            let mut all: Vec<(NodeId, Addr)> = self
                .probe_order
                .iter()
                .filter(|(id, _)| !exclude.contains(id))
                .filter_map(|&(id, hint)| {
                    members.get_hinted(id, hint).filter(|r| r.is_live()).map(|r| (id, members.addr(r)))
                })
                .collect();
            all.sort_unstable_by_key(|(id, _)| *id);
            all.dedup_by_key(|(id, _)| *id);
            shuffle(&mut self.rng, &mut all);
            all.truncate(k);
            return all;
        }
        for _ in 0..8 * k {
            let (id, hint) = self.probe_order[self.rng.next_u64() as usize % n];
            if exclude.contains(&id) || out.iter().any(|(o, _)| *o == id) {
                continue;
            }
            if let Some(r) = self.members.get_hinted(id, hint).filter(|r| r.is_live()) {
                out.push((id, self.members.addr(r)));
                if out.len() == k {
                    break;
                }
            }
        }
        out
    }

    // ----- dissemination -----

    fn retransmit_limit(&self) -> u32 {
        // λ · ⌈log10(n + 1)⌉, and ⌈log10(n + 1)⌉ is the number of decimal digits of n.
        let digits = (self.live.max(1) as u64).ilog10() + 1;
        self.tuning.retransmit_mult * digits
    }

    /// Sends `body` with piggybacked gossip: `first` (warnings and corrections for this
    /// receiver) ahead of the queue's updates. One pass: the packet's leading fields are
    /// encoded, then each update is appended while it fits.
    fn send(&mut self, to: Addr, body: Body, first: Vec<Update>) {
        let max = self.tuning.packet_bytes_max;
        let head = PacketHead { gen: self.me.version.gen, digest: self.digest(), body: &body };
        let mut h = wire::SeqWriter::begin(self.cfg.cluster_id, self.cfg.id, 64);
        // The head of a packet this member builds always encodes; an error here is a bug,
        // counted (as an unsent packet would be) rather than a panic.
        if head.write(&mut h).is_err() {
            self.stats.send_errors += 1;
            return;
        }
        let mut w = h.items();
        // The sequence length was counted as one byte; the slack covers a wider one.
        let limit = max.saturating_sub(GOSSIP_SLACK);
        let skip: Vec<NodeId> = first.iter().map(Update::id).collect();
        for u in &first {
            w.push_encoded_within(limit, |out| u.write(out));
        }
        let mut queued = Vec::new();
        let retransmit = self.retransmit_limit();
        let (members, me) = (&self.members, &self.me);
        let budget = limit.saturating_sub(w.written());
        self.gossip.take(budget, retransmit, &skip, &mut queued, |id, by| current_update(members, me, id, by));
        for u in &queued {
            w.push_encoded_within(limit, |out| u.write(out));
        }
        if body == Body::Gossip && w.count() == 0 {
            return; // the queue ran dry part-way through a gossip round
        }
        match w.finish(max) {
            Ok(bytes) => self.record_send(to, body.kind(), bytes),
            Err(_) => self.stats.send_errors += 1,
        }
    }

    /// Counts `bytes` of kind `kind` as sent to `to` and queues them.
    fn record_send(&mut self, to: Addr, kind: Kind, bytes: Vec<u8>) {
        let kind = kind as usize;
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += bytes.len() as u64;
        self.stats.sent_packets_by_kind[kind] += 1;
        self.stats.sent_bytes_by_kind[kind] += bytes.len() as u64;
        self.actions.push_back(Action::Send { to, packet: bytes });
    }

    fn push_send(&mut self, to: Addr, packet: &Packet) {
        // Sizes were budgeted exactly; an encoding error here is a bug, counted not sent.
        match wire::encode(self.cfg.cluster_id, self.cfg.id, packet, self.tuning.packet_bytes_max) {
            Ok(bytes) => self.record_send(to, packet.body.kind(), bytes),
            Err(_) => self.stats.send_errors += 1,
        }
    }

    /// A gossip-only round to `gossip_fanout` random members, while anything is pending.
    fn gossip_round(&mut self, now: Instant) {
        let _ = now;
        if self.gossip.len() == 0 {
            return;
        }
        for (_, addr) in self.random_live(self.cfg.gossip_fanout, &[]) {
            self.send(addr, Body::Gossip, Vec::new());
        }
    }

    /// Sends this member's state in the sync buckets `buckets` to `to`, in chunks that fit the
    /// packet limit.
    fn send_state(&mut self, to: Addr, seq: u32, reply: bool, join: bool, buckets: u64) {
        let all = core::iter::once(self.me.clone())
            .chain(self.members.iter().map(|r| self.members.member(r)))
            .filter(|m| in_buckets(buckets, m.id));
        let header = Packet {
            gen: self.me.version.gen,
            digest: self.digest(),
            body: Body::PushPull { seq, reply, join, part: u16::MAX, parts: u16::MAX, buckets, members: Vec::new() },
            gossip: Vec::new(),
        };
        let base = postcard::experimental::serialized_size(&header).unwrap_or(usize::MAX)
            + postcard::experimental::serialized_size(&(self.cfg.cluster_id, self.cfg.id)).unwrap_or(usize::MAX)
            + wire::HEADER_BYTES
            + GOSSIP_SLACK;
        let budget = self.tuning.packet_bytes_max.saturating_sub(base);
        let mut chunks: Vec<Vec<Member>> = alloc::vec![Vec::new()];
        let mut used = 0;
        let (mut total, mut count) = (0u64, 0u64);
        for m in all {
            let size = postcard::experimental::serialized_size(&m).unwrap_or(usize::MAX);
            if size > budget {
                continue;
            }
            total += size as u64;
            count += 1;
            if used + size > budget {
                chunks.push(Vec::new());
                used = 0;
            }
            used += size;
            if let Some(c) = chunks.last_mut() {
                c.push(m);
            }
        }
        if let Some(avg) = total.checked_div(count) {
            self.record_bytes = avg.max(1);
        }
        let parts = u16::try_from(chunks.len()).unwrap_or(u16::MAX);
        for (part, members) in chunks.into_iter().take(usize::from(parts)).enumerate() {
            let part = part as u16;
            let packet = Packet {
                gen: self.me.version.gen,
                digest: self.digest(),
                body: Body::PushPull { seq, reply, join, part, parts, buckets, members },
                gossip: Vec::new(),
            };
            self.push_send(to, &packet);
        }
    }

    fn reconnect_ping(&mut self, id: NodeId) {
        let Some(addr) = self.members.addr_of(id) else { return };
        let seq = self.next_seq();
        self.reconnect = Some((seq, id));
        self.send(addr, Body::Ping { seq, target: id }, Vec::new());
    }

    fn push_pull_with(&mut self, id: NodeId, join: bool) {
        let Some(addr) = self.members.addr_of(id) else { return };
        self.stats.push_pulls += 1;
        let seq = self.next_seq();
        self.send_state(addr, seq, false, join, u64::MAX);
    }

    /// Plans the next periodic exchange; false if this one is put off instead. A member that
    /// planned its exchange in a small cluster (before a join storm) would otherwise send a
    /// full state of the grown cluster at the small cluster's pace: every member of a new
    /// cluster of n at once, costing each O(n). It plans again at a random point of the grown
    /// period, so members that planned together spread out.
    fn replan_push_pull(&mut self, now: Instant) -> bool {
        let period = self.push_pull_period();
        let grew = period > self.planned_period;
        self.planned_period = period;
        let wait =
            if grew { Duration::from_nanos(self.rng.next_u64() % (period.as_nanos() as u64).max(1)) } else { period };
        self.next_push_pull = now.saturating_add(wait);
        !grew
    }

    fn push_pull_period(&self) -> Duration {
        let stretch = (self.live as u32).div_ceil(32).max(1);
        self.cfg.push_pull_interval * stretch
    }

    fn emit(&mut self, e: Event) {
        self.actions.push_back(Action::Event(e));
    }

    /// A leaving member's wake-up: gossip its leave until the queue holds it no more.
    #[cold]
    #[inline(never)]
    fn leaving_tick(&mut self, now: Instant) {
        if now >= self.next_gossip {
            self.next_gossip = now.saturating_add(self.tuning.gossip_interval);
            if !self.gossip.contains(self.cfg.id) {
                self.leave_done = true;
                self.emit(Event::LeaveDone);
                return;
            }
            self.gossip_round(now);
        }
    }

    /// Nacks for indirect probes that got no answer in time.
    #[inline(never)]
    fn send_due_nacks(&mut self, now: Instant) {
        let due: Vec<u32> = self.indirect.iter().filter(|(_, i)| now >= i.nack_at).map(|(s, _)| *s).collect();
        for s in due {
            if let Some(ind) = self.indirect.remove(&s) {
                self.send(ind.requester, Body::Nack { seq: ind.seq }, Vec::new());
            }
        }
    }

    /// Suspicions halfway to their deadline, then those that ran out.
    #[inline(never)]
    fn expire_suspicions(&mut self, now: Instant) {
        while let Some(id) = pop_due(&mut self.suspicion_rechecks, now) {
            self.recheck_suspicion(id);
        }
        while let Some(id) = pop_due(&mut self.suspicion_deadlines, now) {
            if let Some(s) = self.suspicions.remove(&id) {
                if let Some(r) = s.recheck {
                    self.suspicion_rechecks.remove(&(r, id));
                }
                let down = Version { state: State::Down, ..s.version };
                let _ = self.apply(now, id, down, self.cfg.id, None, true);
            }
        }
    }

    /// Periodic anti-entropy, plus one attempt to reach a member held down (a healed
    /// partition whose sides declared each other down has no other way back).
    /// The periodic exchange with a live member is a summary (about 350 bytes; only the
    /// buckets that differ travel), and a whole state only every `FULL_EXCHANGE_EVERY`
    /// periods, as a backstop for what bucket hashes cannot show (a collision).
    #[cold]
    #[inline(never)]
    fn periodic_sync(&mut self, now: Instant) {
        if !self.replan_push_pull(now) {
            return;
        }
        self.periodic_rounds = self.periodic_rounds.wrapping_add(1);
        if let Some(&(id, addr)) = self.random_live(1, &[]).first() {
            self.stats.periodic_syncs += 1;
            if self.periodic_rounds % FULL_EXCHANGE_EVERY == 0 {
                self.push_pull_with(id, false);
            } else if self.take_sync_budget(now, SUMMARY_BYTES) {
                self.send_summary(addr);
            }
        }
        // A ping first, and the whole state only once it is answered: a member held down
        // is almost always dead, and a whole state sent into the void costs O(n) each
        // period, where a ping costs the same in any cluster.
        let down: Vec<NodeId> = self.members.iter().filter(|r| r.state == State::Down).map(|r| r.id).collect();
        if !down.is_empty() {
            let id = down[self.rng.next_u64() as usize % down.len()];
            self.reconnect_ping(id);
        }
    }

    /// Joining, and rejoining when every other member is gone.
    #[cold]
    #[inline(never)]
    fn join_tick(&mut self, now: Instant) {
        if self.next_join.is_none() && self.live == 1 && !self.cfg.seeds.is_empty() && self.is_joined() {
            self.joined = false;
            self.join_backoff = self.cfg.join_retry_min;
            self.next_join = Some(now);
        }
        if self.next_join.is_some_and(|at| now >= at) {
            let seeds: Vec<Addr> = self.cfg.seeds.iter().copied().filter(|s| *s != self.cfg.addr).collect();
            for s in seeds {
                let seq = self.next_seq();
                self.stats.push_pulls += 1;
                self.send_state(s, seq, false, true, u64::MAX);
            }
            let jitter = self.rng.next_u64() % (self.join_backoff.as_nanos() as u64 / 4).max(1);
            self.next_join = Some(now.saturating_add(self.join_backoff + Duration::from_nanos(jitter)));
            self.join_backoff = (self.join_backoff * 2).min(self.cfg.join_retry_max);
        }
    }

    #[inline(never)]
    fn collect_tombstones(&mut self, now: Instant) {
        while let Some(id) = pop_due(&mut self.tombstones, now) {
            self.tomb_due.remove(&id);
            if self.members.get(id).is_some_and(|r| !r.is_live()) {
                self.members.remove(id);
                self.gossip.remove(id);
                self.emit(Event::Forgotten(id));
            }
        }
    }
}

impl Machine for Swim {
    type Action = Action;

    fn handle_timeout(&mut self, now: Instant) {
        if self.leave_done {
            return;
        }
        if self.leaving {
            self.leaving_tick(now);
            return;
        }
        // Probing.
        let waves = self.tuning.indirect_waves;
        let indirect_due = self
            .probe
            .as_ref()
            .is_some_and(|p| !p.acked && p.waves < waves && now >= p.indirect_at && now < self.next_probe);
        if indirect_due {
            self.send_indirect(now);
        }
        if now >= self.next_probe {
            self.finish_probe(now);
            self.start_probe(now);
            self.next_probe = now.saturating_add(self.scaled(self.tuning.probe_interval));
        }
        // The rarer duties below each sit in a function of their own, entered only when due, so
        // that the common wake-up (a probe or a gossip round) stays short and in cache.
        if !self.indirect.is_empty() {
            self.send_due_nacks(now);
        }
        if is_due(&self.suspicion_rechecks, now) || is_due(&self.suspicion_deadlines, now) {
            self.expire_suspicions(now);
        }
        // Gossip-only round.
        if now >= self.next_gossip {
            self.next_gossip = now.saturating_add(self.tuning.gossip_interval);
            self.gossip_round(now);
        }
        if now >= self.next_push_pull {
            self.periodic_sync(now);
        }
        if self.next_join.is_some() || (self.live == 1 && !self.cfg.seeds.is_empty()) {
            self.join_tick(now);
        }
        if is_due(&self.tombstones, now) {
            self.collect_tombstones(now);
        }
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.leave_done {
            return None;
        }
        if self.leaving {
            return Some(self.next_gossip);
        }
        let mut t = Some(self.next_probe.min(self.next_gossip).min(self.next_push_pull));
        if let Some(p) = self.probe.as_ref().filter(|p| !p.acked && p.waves < self.tuning.indirect_waves) {
            t = earliest(t, Some(p.indirect_at));
        }
        if !self.indirect.is_empty() {
            t = earliest(t, self.indirect.values().map(|i| i.nack_at).min());
        }
        t = earliest(t, self.suspicion_deadlines.first().map(|(at, _)| *at));
        t = earliest(t, self.suspicion_rechecks.first().map(|(at, _)| *at));
        t = earliest(t, self.tombstones.first().map(|(at, _)| *at));
        earliest(t, self.next_join)
    }

    fn check_invariants(&self) {
        assert_eq!(self.stats.send_errors, 0, "a packet this member built did not encode");
        self.gossip.check();
        self.members.check();
        for (id, by, size) in self.gossip.pending() {
            let u = self.current_update(id, by);
            assert!(u.is_some(), "{}: gossip pending about unknown {id}", self.cfg.id);
            let now_size = u.map(|u| postcard::experimental::serialized_size(&u).unwrap_or(usize::MAX));
            assert_eq!(now_size, Some(size), "{}: gossip about {id} changed without being queued again", self.cfg.id);
        }
        assert!(!self.members.contains(self.cfg.id), "{} lists itself as a member", self.cfg.id);
        let live = self.members.iter().filter(|r| r.is_live()).count() + 1;
        assert_eq!(self.live, live, "{}: live count out of step", self.cfg.id);
        let v = self.me.version;
        let mut hash = member_hash(self.me.id, v.gen, v.inc);
        for r in self.members.iter().filter(|r| r.is_live()) {
            hash ^= member_hash(r.id, r.gen, r.inc);
        }
        assert_eq!(self.digest_hash, hash, "{}: digest out of step", self.cfg.id);
        let mut buckets = [0u32; SYNC_BUCKETS];
        buckets[sync_bucket(self.me.id)] ^= member_hash(self.me.id, v.gen, v.inc);
        for r in self.members.iter().filter(|r| r.is_live()) {
            buckets[sync_bucket(r.id)] ^= member_hash(r.id, r.gen, r.inc);
        }
        assert_eq!(self.bucket_hashes, buckets, "{}: sync bucket hashes out of step", self.cfg.id);
        let live_gens = self.members.iter().filter(|r| r.is_live()).map(|r| (r.id, r.gen, 0));
        let view = Digest::of(core::iter::once((self.me.id, v.gen, 0)).chain(live_gens));
        assert_eq!(self.view(), view, "{}: view fingerprint out of step", self.cfg.id);
        assert_eq!(self.suspicions.len(), self.suspicion_deadlines.len(), "suspicion index out of step");
        for (id, s) in &self.suspicions {
            let r = self.members.get(*id).map(Record::version);
            assert_eq!(r, Some(s.version), "{}: suspicion of {id} for a version no longer held", self.cfg.id);
            assert!(self.suspicion_deadlines.contains(&(s.deadline, *id)));
            if let Some(at) = s.recheck {
                assert!(self.suspicion_rechecks.contains(&(at, *id)), "suspicion recheck index out of step");
            }
        }
        let rechecks = self.suspicions.values().filter(|s| s.recheck.is_some()).count();
        assert_eq!(rechecks, self.suspicion_rechecks.len(), "suspicion recheck index out of step");
        assert_eq!(self.tombstones.len(), self.tomb_due.len(), "tombstone index out of step");
        for (id, at) in &self.tomb_due {
            assert!(self.tombstones.contains(&(*at, *id)), "tombstone index out of step for {id}");
            assert!(self.members.get(*id).is_some_and(|r| !r.is_live()), "{}: tombstone for live {id}", self.cfg.id);
        }
        let dead = self.members.iter().filter(|r| !r.is_live()).count();
        assert_eq!(dead, self.tomb_due.len(), "{}: a Down or Left member without a tombstone", self.cfg.id);
        assert!(self.health < self.cfg.health_max, "health score above its ceiling");
        assert!(self.indirect.len() <= INDIRECT_MAX);
        for r in self.members.iter() {
            assert!(r.gen <= Version::MAX_VALID && r.inc <= Version::MAX_VALID);
        }
    }
}

fn update_of(members: &MemberTable, rec: &Record, by: NodeId) -> Update {
    let (id, gen, inc) = (rec.id, rec.gen, rec.inc);
    match rec.state {
        State::Alive => Update::Alive { id, gen, inc, addr: members.addr(rec), meta: rec.meta.clone() },
        State::Suspect => Update::Suspect { id, gen, inc, by },
        State::Down => Update::Down { id, gen, inc },
        State::Left => Update::Left { id, gen, inc },
    }
}

fn current_update(members: &MemberTable, me: &Member, id: NodeId, by: NodeId) -> Option<Update> {
    if id == me.id {
        return Some(Update::of(me, me.id));
    }
    members.get(id).map(|r| update_of(members, r, by))
}

/// The instant halfway from `a` to `b`.
/// True if the earliest entry of a deadline set is due at `now`.
fn is_due(set: &BTreeSet<(Instant, NodeId)>, now: Instant) -> bool {
    set.first().is_some_and(|(at, _)| *at <= now)
}

/// Takes the earliest entry of a deadline set if it is due at `now`.
fn pop_due(set: &mut BTreeSet<(Instant, NodeId)>, now: Instant) -> Option<NodeId> {
    if is_due(set, now) {
        set.pop_first().map(|(_, id)| id)
    } else {
        None
    }
}

fn halfway(a: Instant, b: Instant) -> Instant {
    a.saturating_add(b.saturating_duration_since(a) / 2)
}

fn shuffle<T>(rng: &mut ChaCha8Rng, v: &mut [T]) {
    for i in (1..v.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

fn claim_by(u: &Update, sender: NodeId) -> NodeId {
    match u {
        Update::Suspect { by, .. } => *by,
        _ => sender,
    }
}

fn info_of(u: Update) -> Option<(Addr, SharedMeta)> {
    match u {
        Update::Alive { addr, meta, .. } => Some((addr, meta)),
        _ => None,
    }
}
