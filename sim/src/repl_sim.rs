//! One seeded run of a shard's replicas serving concurrent multi-master clients under faults.
//!
//! A run has two phases. During the **chaos** phase the seed chooses partitions (symmetric,
//! one-way, bridge), crashes and restarts that lose every write not yet synced to disk,
//! crashes in the middle of handling messages, pauses, at most one wiped disk (the replica
//! comes back empty, as a new life), packet loss, duplication, reordering and delay, while
//! clients write (single entries and batches), delete and read at every consistency level,
//! through any replica, with and without the context of an earlier read; now and then every
//! replica takes a write of the same key at the same instant (a conflict burst). The seed also
//! picks the conflict mode (last-write-wins, multi-value with or without a resolver, CRDT
//! map) and whether the replicas' clocks agree. In the **healed** phase every fault is lifted;
//! clients go on for a while, then stop, and anti-entropy must converge.
//!
//! Checks:
//! - every replica's invariants after every step (a panic is a violation);
//! - every datagram fits the configured size, and sync bytes from each replica to each peer
//!   stay within the token bucket's bound (`burst + rate · 1 s`) in every one-second window;
//! - **convergence**: at the end every replica holds the same state digest;
//! - **acknowledged writes are readable**: every write acknowledged at Quorum or All is in
//!   the final state, unless a later write replaced it (causally, or by winning
//!   last-write-wins), or a delete covering it was collected;
//! - **nothing is silently dropped**: every write the final state has seen survives, or was
//!   replaced as its mode allows (multi-value: only by a write whose context included it, so
//!   concurrent writes survive as siblings);
//! - **read your writes**: a client's read at level R after its own write acknowledged at W,
//!   with W ≥ Quorum and W + R > replicas, sees the write or what replaced it (unless a
//!   replica that acknowledged it lost its disk since).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use quorate_core::replication::state::{Body, Metadata, Scalar};
use quorate_core::replication::{
    message, Action, Config, ConflictMode, Consistency, Context, Durable, Entry, EntryId, Event, Identity, KeyState,
    Message, Op, Recovered, Replica, Stamp, Ticket, Visible, WriteItem,
};
use quorate_core::{fnv1a64, fnv1a64_extend, Instant, Machine, NodeId};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use crate::net::{chance, uniform, LinkModel, Scheduler};

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000_000_000;
const CLUSTER_ID: u64 = 0x5245_504c_5349_4d31;
/// Clients stop this long after healing, so anti-entropy gets the rest of the run.
pub const CLIENT_TAIL_NS: u64 = 3 * SEC;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct ReplSimConfig {
    /// The seed: everything else random derives from it.
    pub seed: u64,
    /// Replicas of the shard.
    pub rf: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Distinct keys.
    pub keys: u64,
    /// Virtual length of the chaos phase.
    pub chaos_ns: u64,
    /// Virtual length of the healed phase.
    pub healed_ns: u64,
    /// Inject faults.
    pub faults: bool,
    /// Datagram limit of every replica.
    pub datagram_bytes: usize,
    /// A planted bug, to prove the checks catch it.
    #[cfg(feature = "planted-bugs")]
    pub planted_bug: Option<quorate_core::replication::PlantedBug>,
}

impl ReplSimConfig {
    /// Defaults for `seed` and `rf`: 4 clients, 40 keys, 10 s of chaos, 20 s healed.
    pub fn new(seed: u64, rf: usize) -> Self {
        ReplSimConfig {
            seed,
            rf,
            clients: 4,
            keys: 40,
            chaos_ns: 10 * SEC,
            healed_ns: 20 * SEC,
            faults: true,
            datagram_bytes: 2048,
            #[cfg(feature = "planted-bugs")]
            planted_bug: None,
        }
    }
}

/// The outcome of one run.
#[derive(Clone, Debug, Default)]
pub struct ReplReport {
    /// The seed.
    pub seed: u64,
    /// A digest of everything that happened; the same seed gives the same trace.
    pub trace: u64,
    /// The first violation found, with context.
    pub violation: Option<String>,
    /// Acknowledged (Quorum or All) writes not readable at the end.
    pub lost_acked: u64,
    /// All replicas ended with the same state digest.
    pub converged: bool,
    /// The conflict mode the seed chose.
    pub mode: Option<ConflictMode>,
    /// Counters.
    pub stats: ReplStats,
    /// The last client events before the violation.
    pub excerpt: Vec<String>,
}

/// Counters of one run.
#[derive(Clone, Debug, Default)]
pub struct ReplStats {
    /// Writes stamped (entries).
    pub writes: u64,
    /// Writes acknowledged at Quorum or All.
    pub acked_strong: u64,
    /// Writes reported not acknowledged.
    pub not_acked: u64,
    /// Reads completed.
    pub reads: u64,
    /// Reads that surfaced siblings.
    pub sibling_reads: u64,
    /// Read-your-writes checks made.
    pub ryw_checks: u64,
    /// Crashes, wipes.
    pub crashes: u64,
    /// Wiped disks.
    pub wipes: u64,
    /// Datagrams delivered.
    pub delivered: u64,
    /// Sync bytes sent.
    pub sync_bytes: u64,
    /// Hints delivered, repairs sent, tombstones collected, conflicts settled (summed over
    /// replicas still running at the end).
    pub hints_delivered: u64,
    /// Read repairs.
    pub repairs: u64,
    /// Tombstones collected.
    pub collected: u64,
    /// Conflicts settled.
    pub conflicts: u64,
    /// Siblings resolved by the resolver.
    pub resolved: u64,
    /// When all digests last became equal (virtual ns), if they did.
    pub converged_at_ns: Option<u64>,
    /// Writes at Quorum or All begun after healing (fault-free network) and acknowledged.
    pub healed_strong_acked: u64,
    /// Of those, acknowledged within one round trip: no later than two of the healed
    /// network's largest one-way delays after they began (a resend would come 100 ms later).
    pub healed_one_round_trip: u64,
    /// The slowest of those acknowledgements (virtual ns after the write began).
    pub healed_ack_max_ns: u64,
}

#[derive(Clone, Debug)]
enum Pending {
    Entry(EntryId, Option<KeyState>),
    Hint(NodeId, EntryId),
    HintDone(NodeId, EntryId),
    Identity(Identity),
}

#[derive(Clone, Debug, Default)]
struct Disk {
    identity: Option<Identity>,
    entries: BTreeMap<EntryId, KeyState>,
    hints: std::collections::BTreeSet<(NodeId, EntryId)>,
}

impl Disk {
    fn apply(&mut self, p: Pending) {
        match p {
            Pending::Entry(id, Some(s)) => {
                self.entries.insert(id, s);
            }
            Pending::Entry(id, None) => {
                self.entries.remove(&id);
            }
            Pending::Hint(t, id) => {
                self.hints.insert((t, id));
            }
            Pending::HintDone(t, id) => {
                self.hints.remove(&(t, id));
            }
            Pending::Identity(x) => self.identity = Some(x),
        }
    }
}

struct Node {
    id: NodeId,
    replica: Option<Replica>,
    disk: Disk,
    pending: Vec<Pending>,
    sync_scheduled: bool,
    epoch: u64,
    clock_offset_ns: u64,
    paused_until: u64,
    crash_after_deliveries: Option<u32>,
    /// Sync datagrams sent in the last second, per peer: (time, bytes).
    sync_window: BTreeMap<NodeId, VecDeque<(u64, u64)>>,
}

impl Node {
    fn local(&self, global: u64) -> Instant {
        Instant::from_nanos(global + self.clock_offset_ns)
    }

    fn global(&self, local: Instant) -> u64 {
        local.as_nanos().saturating_sub(self.clock_offset_ns)
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Kind {
    Put(Vec<String>),
    Delete,
    Patch(Vec<String>),
}

/// A write the oracle knows of: what it wrote and what it had seen.
#[derive(Clone, Debug)]
struct WriteRec {
    key: EntryId,
    stamp: Stamp,
    ctx: quorate_core::replication::VersionVector,
    kind: Kind,
    level: Consistency,
    acked: Option<bool>,
    ackers: Vec<NodeId>,
    acked_at: u64,
    /// Whether any replica durably held it when it completed (`None`: never completed).
    reached: Option<bool>,
}

struct OpRec {
    client: Option<usize>,
    writes: Vec<usize>,
    level: Consistency,
    invoked: u64,
}

#[derive(Default)]
struct Client {
    busy: bool,
    token: u64,
    contexts: BTreeMap<EntryId, Context>,
    /// Writes of this client acknowledged at Quorum or All (oracle indices).
    acked: Vec<usize>,
    /// Read this key next (after a write of it was acknowledged).
    follow_up: Option<EntryId>,
}

enum Ev {
    Deliver { from: NodeId, to: NodeId, bytes: Vec<u8> },
    DiskSync { node: NodeId, epoch: u64 },
    ClientWake { client: usize, token: u64 },
    Burst,
    Fault,
    HealPartition { generation: u64 },
    Restart { node: NodeId },
    Heal,
}

struct World {
    cfg: ReplSimConfig,
    rng: ChaCha8Rng,
    now: u64,
    sched: Scheduler<Ev>,
    link: LinkModel,
    nodes: BTreeMap<NodeId, Node>,
    ids: Vec<NodeId>,
    mode: ConflictMode,
    template: Config,
    clients: Vec<Client>,
    writes: Vec<WriteRec>,
    ops: BTreeMap<(NodeId, Ticket), OpRec>,
    /// Wipes, as (time, node), for the read-your-writes excuse.
    wipes: Vec<(u64, NodeId)>,
    partition_generation: u64,
    healed_at: Option<u64>,
    trace: u64,
    violation: Option<String>,
    lost_acked: u64,
    log: VecDeque<String>,
    stats: ReplStats,
}

/// Runs one seed. Panics inside a replica are caught and reported as violations.
pub fn run(cfg: ReplSimConfig) -> ReplReport {
    let seed = cfg.seed;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut w = World::new(cfg);
        w.run();
        w.finish()
    }));
    match result {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_else(|| "unknown panic".to_string());
            ReplReport { seed, violation: Some(format!("panic: {msg}")), ..ReplReport::default() }
        }
    }
}

/// The resolver multi-value seeds may use: keep the sibling with the largest first component
/// (a delete loses to any value), ties by the rest of the vector. Deterministic.
pub fn keep_largest(siblings: &[Option<Entry>]) -> Option<Entry> {
    siblings
        .iter()
        .flatten()
        .max_by(|a, b| {
            let ka: Vec<u32> = a.vector.iter().map(|x| x.to_bits()).collect();
            let kb: Vec<u32> = b.vector.iter().map(|x| x.to_bits()).collect();
            a.vector[0].total_cmp(&b.vector[0]).then(ka.cmp(&kb))
        })
        .cloned()
}

impl World {
    fn new(cfg: ReplSimConfig) -> World {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x7265_706c);
        let ids: Vec<NodeId> = (1..=cfg.rf as u64).map(NodeId).collect();
        let mode = [ConflictMode::LastWriteWins, ConflictMode::MultiValue, ConflictMode::CrdtMap]
            [uniform(&mut rng, 0, 2) as usize];
        let resolver = mode == ConflictMode::MultiValue && chance(&mut rng, 0.5);
        let synced_clocks = chance(&mut rng, 0.5);
        let template = Self::replica_config(&cfg, &ids, mode, resolver);
        let mut nodes = BTreeMap::new();
        for &id in &ids {
            let clock_offset_ns = if synced_clocks { 0 } else { uniform(&mut rng, 0, 40) * MS };
            nodes.insert(
                id,
                Node {
                    id,
                    replica: None,
                    disk: Disk::default(),
                    pending: Vec::new(),
                    sync_scheduled: false,
                    epoch: 0,
                    clock_offset_ns,
                    paused_until: 0,
                    crash_after_deliveries: None,
                    sync_window: BTreeMap::new(),
                },
            );
        }
        let link = LinkModel { duplicate: [0.0, 0.02, 0.05][uniform(&mut rng, 0, 2) as usize], ..LinkModel::default() };
        let mut w = World {
            clients: (0..cfg.clients).map(|_| Client::default()).collect(),
            rng,
            now: 0,
            sched: Scheduler::default(),
            link,
            nodes,
            ids,
            mode,
            template,
            writes: Vec::new(),
            ops: BTreeMap::new(),
            wipes: Vec::new(),
            partition_generation: 0,
            healed_at: None,
            trace: fnv1a64(&cfg.seed.to_le_bytes()),
            violation: None,
            lost_acked: 0,
            log: VecDeque::new(),
            stats: ReplStats::default(),
            cfg,
        };
        for id in w.ids.clone() {
            w.start_node(id);
        }
        for c in 0..w.clients.len() {
            let at = uniform(&mut w.rng, 0, 30 * MS);
            w.sched.at(at, Ev::ClientWake { client: c, token: 0 });
        }
        let at = uniform(&mut w.rng, 200 * MS, 1_500 * MS);
        w.sched.at(at, Ev::Burst);
        if w.cfg.faults {
            let at = uniform(&mut w.rng, 200 * MS, 800 * MS);
            w.sched.at(at, Ev::Fault);
        }
        w.sched.at(w.cfg.chaos_ns, Ev::Heal);
        w
    }

    fn replica_config(cfg: &ReplSimConfig, ids: &[NodeId], mode: ConflictMode, resolver: bool) -> Config {
        let mut c = Config::new(ids[0], ids.to_vec(), mode);
        c.cluster_id = CLUSTER_ID;
        c.datagram_bytes_max = cfg.datagram_bytes;
        c.replicas_max = ids.len().max(3);
        c.state_bytes_max = (cfg.datagram_bytes - 512) / c.replicas_max;
        c.vector_len_max = 8;
        c.width_max = 4;
        c.write_timeout = Duration::from_millis(500);
        c.write_resend_interval = Duration::from_millis(100);
        c.read_timeout = Duration::from_millis(500);
        c.hint_retry_interval = Duration::from_millis(500);
        c.hints_per_retry = 32;
        c.hints_max = 64;
        c.sync_interval = Duration::from_millis(800);
        c.sync_retry_interval = Duration::from_millis(150);
        c.sync_timeout = Duration::from_secs(2);
        c.sync_bytes_per_sec = 6 << 10;
        c.sync_burst_bytes = cfg.datagram_bytes as u64;
        c.sync_queue_max = 64;
        c.merkle_depth = 1;
        c.tombstone_grace = Duration::from_secs(1);
        c.collected_ttl = Duration::from_secs(8);
        c.gc_interval = Duration::from_millis(250);
        c.down_after = Duration::from_secs(2);
        if resolver {
            c.resolver = Some(keep_largest);
        }
        #[cfg(feature = "planted-bugs")]
        {
            c.planted_bug = cfg.planted_bug;
        }
        c
    }

    fn mix(&mut self, bytes: &[u8]) {
        self.trace = fnv1a64_extend(self.trace, &self.now.to_le_bytes());
        self.trace = fnv1a64_extend(self.trace, bytes);
    }

    fn note(&mut self, line: String) {
        if self.log.len() == 16 {
            self.log.pop_front();
        }
        self.log.push_back(format!("{:>8.3}s {line}", self.now as f64 / SEC as f64));
    }

    fn end_ns(&self) -> u64 {
        self.cfg.chaos_ns + self.cfg.healed_ns
    }

    fn start_node(&mut self, id: NodeId) {
        let mut cfg = self.template.clone();
        cfg.id = id;
        let node = self.nodes.get_mut(&id).expect("known node");
        let d = &node.disk;
        let rec = Recovered {
            identity: d.identity,
            entries: d.entries.iter().map(|(k, v)| (*k, v.clone())).collect(),
            hints: d.hints.iter().copied().collect(),
        };
        let seed = self.cfg.seed ^ (id.0 << 40) ^ (node.epoch << 8);
        let local = node.local(self.now);
        node.replica = Some(Replica::new(cfg, rec, seed, local).expect("sim config is valid"));
        node.sync_window.clear();
        self.process(id);
    }

    fn crash(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        if node.replica.is_none() {
            return;
        }
        node.replica = None;
        node.pending.clear();
        node.sync_scheduled = false;
        node.epoch += 1;
        self.stats.crashes += 1;
        let lost: Vec<(NodeId, Ticket)> = self.ops.keys().filter(|(n, _)| *n == id).copied().collect();
        for k in lost {
            if let Some(op) = self.ops.remove(&k) {
                if let Some(c) = op.client {
                    self.client_done(c);
                }
            }
        }
        self.mix(&[b'C', id.0 as u8]);
    }

    fn run(&mut self) {
        let end = self.end_ns();
        while self.violation.is_none() {
            let timer = self.earliest_timer();
            let event_at = self.sched.peek_time();
            let take_timer = match (timer, event_at) {
                (Some((t, _)), Some(e)) => t < e,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if take_timer {
                let (t, id) = timer.expect("checked");
                if t > end {
                    break;
                }
                self.now = self.now.max(t);
                let node = self.nodes.get_mut(&id).expect("known node");
                let local = node.local(self.now);
                if let Some(r) = node.replica.as_mut() {
                    r.handle_timeout(local);
                }
                self.process(id);
            } else {
                let Some((t, ev)) = self.sched.pop() else { break };
                if t > end {
                    break;
                }
                self.now = self.now.max(t);
                self.handle_event(ev);
            }
            self.track_convergence();
        }
    }

    fn track_convergence(&mut self) {
        let Some(healed) = self.healed_at else { return };
        if self.now < healed {
            return;
        }
        let digests: Vec<Option<u64>> = self.nodes.values().map(|n| n.replica.as_ref().map(|r| r.digest())).collect();
        let equal = digests.iter().all(|d| d.is_some() && *d == digests[0]);
        self.stats.converged_at_ns = if equal { self.stats.converged_at_ns.or(Some(self.now)) } else { None };
    }

    fn earliest_timer(&self) -> Option<(u64, NodeId)> {
        self.nodes
            .values()
            .filter_map(|n| {
                let r = n.replica.as_ref()?;
                Some((n.global(r.poll_timeout()?).max(n.paused_until).max(self.now), n.id))
            })
            .min()
    }

    fn handle_event(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver { from, to, bytes } => {
                let until = self.nodes[&to].paused_until;
                if until > self.now {
                    self.sched.at(until, Ev::Deliver { from, to, bytes });
                    return;
                }
                self.deliver(from, to, &bytes);
            }
            Ev::DiskSync { node, epoch } => {
                if self.nodes[&node].epoch == epoch {
                    self.sync_disk(node);
                }
            }
            Ev::ClientWake { client, token } => {
                if self.clients[client].token == token && !self.clients[client].busy {
                    self.start_op(client);
                }
            }
            Ev::Burst => self.burst(),
            Ev::Fault => self.inject_fault(),
            Ev::HealPartition { generation } => {
                if generation == self.partition_generation {
                    self.link.heal();
                    self.mix(b"heal-partition");
                }
            }
            Ev::Restart { node } => {
                if self.nodes[&node].replica.is_none() {
                    self.start_node(node);
                    self.mix(&[b'R', node.0 as u8]);
                }
            }
            Ev::Heal => self.heal_all(),
        }
    }

    fn deliver(&mut self, from: NodeId, to: NodeId, bytes: &[u8]) {
        let node = self.nodes.get_mut(&to).expect("known node");
        let local = node.local(self.now);
        let Some(r) = node.replica.as_mut() else { return };
        self.stats.delivered += 1;
        if let Err(e) = r.handle_datagram(local, bytes) {
            self.violation = Some(format!("{to} refused a datagram {from} sent: {e}"));
            return;
        }
        self.mix(&bytes[..bytes.len().min(64)]);
        self.process(to);
        let node = self.nodes.get_mut(&to).expect("known node");
        if let Some(n) = node.crash_after_deliveries.as_mut() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                node.crash_after_deliveries = None;
                self.crash_and_restart_later(to);
            }
        }
    }

    fn crash_and_restart_later(&mut self, id: NodeId) {
        self.crash(id);
        let at = self.now + uniform(&mut self.rng, 100 * MS, 2_000 * MS);
        self.sched.at(at, Ev::Restart { node: id });
    }

    fn sync_disk(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        node.sync_scheduled = false;
        for p in std::mem::take(&mut node.pending) {
            node.disk.apply(p);
        }
    }

    /// Carries out a node's actions in order. Persists wait in a buffer the crash loses; a
    /// `Send` or an `Event` first syncs everything buffered (the host's one duty).
    fn process(&mut self, id: NodeId) {
        loop {
            let node = self.nodes.get_mut(&id).expect("known node");
            let Some(r) = node.replica.as_mut() else { return };
            let Some(action) = r.poll_action() else { break };
            match action {
                Action::Persist(d) => {
                    let p = match d {
                        Durable::Entry { id: key } => Pending::Entry(key, r.state(key).cloned()),
                        Durable::Hint { target, id: key } => Pending::Hint(target, key),
                        Durable::HintDone { target, id: key } => Pending::HintDone(target, key),
                        Durable::Identity(x) => Pending::Identity(x),
                    };
                    node.pending.push(p);
                }
                Action::Send { to, message } => {
                    if !node.pending.is_empty() {
                        self.sync_disk(id);
                    }
                    self.send(id, to, &message);
                }
                Action::Event(e) => {
                    if !node.pending.is_empty() {
                        self.sync_disk(id);
                    }
                    self.on_event(id, e);
                }
            }
            if self.violation.is_some() {
                return;
            }
        }
        let node = self.nodes.get_mut(&id).expect("known node");
        if let Some(r) = node.replica.as_ref() {
            r.check_invariants();
        }
        if !node.pending.is_empty() && !node.sync_scheduled {
            node.sync_scheduled = true;
            let epoch = node.epoch;
            let at = self.now + uniform(&mut self.rng, 100_000, 5 * MS);
            self.sched.at(at, Ev::DiskSync { node: id, epoch });
        }
    }

    fn send(&mut self, from: NodeId, to: NodeId, msg: &Message) {
        let bytes = match message::encode(CLUSTER_ID, from, msg, self.cfg.datagram_bytes) {
            Ok(b) => b,
            Err(e) => {
                self.violation = Some(format!("{from} produced a message that does not fit: {e}"));
                return;
            }
        };
        if msg.is_sync() {
            self.stats.sync_bytes += bytes.len() as u64;
            self.check_throttle(from, to, bytes.len() as u64);
        }
        for at in self.link.deliveries(&mut self.rng, self.now, from, to) {
            self.sched.at(at, Ev::Deliver { from, to, bytes: bytes.clone() });
        }
    }

    /// Sync bytes from `from` to `to` in the last second never exceed the bucket's bound.
    fn check_throttle(&mut self, from: NodeId, to: NodeId, len: u64) {
        let (rate, burst) = (self.template.sync_bytes_per_sec, self.template.sync_burst_bytes);
        let now = self.now;
        let window = self.nodes.get_mut(&from).expect("known node").sync_window.entry(to).or_default();
        window.push_back((now, len));
        while window.front().is_some_and(|(t, _)| *t + SEC <= now) {
            window.pop_front();
        }
        let total: u64 = window.iter().map(|(_, b)| b).sum();
        if total > burst + rate {
            self.violation = Some(format!(
                "throttle: {from} sent {to} {total} sync bytes within one second (bound {})",
                burst + rate
            ));
        }
    }

    fn on_event(&mut self, node: NodeId, e: Event) {
        match e {
            Event::WriteDone { ticket, acked, by } => {
                let Some(op) = self.ops.remove(&(node, ticket)) else { return };
                let strong = acked && op.level != Consistency::One;
                for &w in &op.writes {
                    let rec = &mut self.writes[w];
                    rec.acked = Some(acked);
                    rec.ackers.clone_from(&by);
                    rec.acked_at = self.now;
                }
                self.check_acknowledgement(&op, acked);
                if strong && self.healed_at.is_some_and(|h| op.invoked >= h) {
                    // The network is fault-free now: a strong write should cost one round trip.
                    let took = self.now - op.invoked;
                    self.stats.healed_strong_acked += 1;
                    self.stats.healed_one_round_trip += u64::from(took <= 2 * LinkModel::default().delay_max_ns);
                    self.stats.healed_ack_max_ns = self.stats.healed_ack_max_ns.max(took);
                }
                if strong {
                    self.stats.acked_strong += op.writes.len() as u64;
                } else if !acked {
                    self.stats.not_acked += op.writes.len() as u64;
                }
                self.mix(&[b'W', u8::from(acked)]);
                let line =
                    format!("{node}: write {:?} {} by {by:?}", op.level, if acked { "acked" } else { "NOT acked" });
                self.note(line);
                if let Some(c) = op.client {
                    if strong {
                        self.clients[c].acked.extend(op.writes.iter().copied());
                        if chance(&mut self.rng, 0.6) {
                            self.clients[c].follow_up = op.writes.first().map(|&w| self.writes[w].key);
                        }
                    }
                    self.client_done(c);
                }
            }
            Event::ReadDone { ticket, result } => {
                let Some(op) = self.ops.remove(&(node, ticket)) else { return };
                if let Ok(r) = result {
                    self.stats.reads += 1;
                    if let (Some(stamp), Some(s)) = (r.resolved, &r.state) {
                        // The replica's own resolving write: the oracle must know what it replaced.
                        let kind = match s.visible() {
                            Visible::Siblings(v) => match keep_largest(&v) {
                                Some(e) => Kind::Put(e.metadata.keys().cloned().collect()),
                                None => Kind::Delete,
                            },
                            _ => Kind::Delete,
                        };
                        let ctx = s.context().clock;
                        self.writes.push(WriteRec {
                            key: r.id,
                            stamp,
                            ctx,
                            kind,
                            level: op.level,
                            acked: None,
                            ackers: Vec::new(),
                            acked_at: 0,
                            reached: None,
                        });
                    }
                    let state = r.state;
                    if let Some(s) = &state {
                        if matches!(s.visible(), Visible::Siblings(_)) {
                            self.stats.sibling_reads += 1;
                        }
                    }
                    let shown = state.as_ref().map_or("absent".to_string(), |s| format!("{:?}", s.visible()));
                    self.note(format!("{node}: read {:?} of e{} -> {shown}", op.level, r.id.0));
                    self.mix(&[b'R', u8::from(state.is_some())]);
                    if let Some(c) = op.client {
                        if let Some(s) = &state {
                            self.clients[c].contexts.insert(r.id, s.context());
                        } else {
                            self.clients[c].contexts.remove(&r.id);
                        }
                        self.check_read_your_writes(c, r.id, op.level, op.invoked, state.as_ref());
                    }
                }
                if let Some(c) = op.client {
                    self.client_done(c);
                }
            }
            Event::SyncDone { .. } | Event::StatusChanged { .. } => {}
        }
    }

    /// A write acknowledged at level L is durably held by at least L's count of distinct
    /// replicas (a replica that lost its disk since the write began is given the benefit, and
    /// so is one that collected the write's tombstone since: a paused coordinator can report
    /// an acknowledgement after the grace period).
    fn check_acknowledgement(&mut self, op: &OpRec, acked: bool) {
        let required = if acked { op.level.required(self.ids.len()) } else { 0 };
        for &w in &op.writes {
            let rec = &self.writes[w];
            let holders = self
                .nodes
                .values()
                .filter(|n| {
                    let held = n.disk.entries.get(&rec.key).is_some_and(|s| s.clock.contains(rec.stamp.dot));
                    // A tombstone collected since (only once every replica had it) counts too.
                    let collected = n
                        .replica
                        .as_ref()
                        .and_then(|r| r.collected(rec.key))
                        .is_some_and(|s| s.clock.contains(rec.stamp.dot));
                    let held = held || collected;
                    held || self.wipes.iter().any(|(t, id)| *id == n.id && *t >= op.invoked)
                })
                .count();
            self.writes[w].reached = Some(holders > 0);
            let rec = &self.writes[w];
            if holders < required {
                if std::env::var_os("QUORATE_SIM_DEBUG").is_some() {
                    for n in self.nodes.values() {
                        eprintln!(
                            "{}: disk {:?}\n   mem {:?}",
                            n.id,
                            n.disk.entries.get(&rec.key).map(|s| &s.clock),
                            n.replica.as_ref().and_then(|r| r.state(rec.key)).map(|s| &s.clock)
                        );
                    }
                    eprintln!("write {:?} {:?} invoked {} wipes {:?}", rec.stamp, rec.kind, op.invoked, self.wipes);
                    for n in self.nodes.values() {
                        eprintln!("{} stats {:?}", n.id, n.replica.as_ref().map(|r| r.stats().clone()));
                        eprintln!("{} memo {:?}", n.id, n.replica.as_ref().and_then(|r| r.collected(rec.key)));
                    }
                    for o in self.writes.iter().filter(|o| o.key == rec.key) {
                        eprintln!("oracle: {:?} ctx={:?} {:?} acked={:?}", o.stamp, o.ctx, o.kind, o.acked);
                    }
                }
                self.violation = Some(format!(
                    "write of e{} acknowledged at {:?} by {:?}, but only {holders} replicas durably hold it",
                    rec.key.0, op.level, rec.ackers
                ));
                return;
            }
        }
    }

    fn client_done(&mut self, c: usize) {
        let client = &mut self.clients[c];
        client.busy = false;
        client.token += 1;
        let token = client.token;
        let at = self.now + uniform(&mut self.rng, 0, 15 * MS);
        self.sched.at(at, Ev::ClientWake { client: c, token });
    }

    fn running(&mut self) -> Option<NodeId> {
        let up: Vec<NodeId> = self.nodes.values().filter(|n| n.replica.is_some()).map(|n| n.id).collect();
        if up.is_empty() {
            return None;
        }
        Some(up[uniform(&mut self.rng, 0, up.len() as u64 - 1) as usize])
    }

    fn level(&mut self) -> Consistency {
        [Consistency::One, Consistency::Quorum, Consistency::Quorum, Consistency::All]
            [uniform(&mut self.rng, 0, 3) as usize]
    }

    fn clients_stopped(&self) -> bool {
        self.healed_at.is_some_and(|h| self.now >= h + CLIENT_TAIL_NS)
    }

    fn start_op(&mut self, c: usize) {
        if self.clients_stopped() {
            return;
        }
        let Some(node) = self.running() else {
            let token = self.clients[c].token;
            self.sched.at(self.now + 50 * MS, Ev::ClientWake { client: c, token });
            return;
        };
        let roll = uniform(&mut self.rng, 0, 99);
        let level = self.level();
        if let Some(key) = self.clients[c].follow_up.take() {
            self.issue_read(Some(c), node, key, level);
            return;
        }
        let key = EntryId(uniform(&mut self.rng, 0, self.cfg.keys - 1));
        if roll < 40 {
            self.issue_read(Some(c), node, key, level);
            return;
        }
        let batch = if roll < 50 { uniform(&mut self.rng, 2, 4) } else { 1 };
        let mut items = Vec::new();
        for i in 0..batch {
            let k = if i == 0 { key } else { EntryId(uniform(&mut self.rng, 0, self.cfg.keys - 1)) };
            let op = if roll >= 88 { Op::Delete } else { self.make_put(c) };
            let context = if chance(&mut self.rng, 0.7) { self.clients[c].contexts.get(&k).cloned() } else { None };
            items.push(WriteItem { id: k, op, context });
        }
        self.issue_write(Some(c), node, items, level);
    }

    fn make_put(&mut self, c: usize) -> Op {
        let v = self.writes.len() as f32 + 1.0;
        let vector = vec![v, c as f32, (self.now % 1000) as f32];
        let mut metadata = Metadata::new();
        let field = format!("f{}", uniform(&mut self.rng, 0, 2));
        metadata.insert(field, Scalar::Int(self.writes.len() as i64));
        if self.mode == ConflictMode::CrdtMap && chance(&mut self.rng, 0.4) {
            return Op::Patch { set: metadata, remove: Vec::new() };
        }
        Op::Put(Entry { vector, metadata })
    }

    fn issue_write(&mut self, client: Option<usize>, node: NodeId, items: Vec<WriteItem>, level: Consistency) {
        let n = self.nodes.get_mut(&node).expect("known node");
        let local = n.local(self.now);
        let Some(r) = n.replica.as_mut() else { return };
        let kinds: Vec<(Kind, quorate_core::replication::VersionVector)> = items
            .iter()
            .map(|it| {
                let kind = match &it.op {
                    Op::Put(e) => Kind::Put(e.metadata.keys().cloned().collect()),
                    Op::Delete => Kind::Delete,
                    Op::Patch { set, remove } => Kind::Patch(set.keys().chain(remove.iter()).cloned().collect()),
                };
                (kind, it.context.as_ref().map(|c| c.clock.clone()).unwrap_or_default())
            })
            .collect();
        match r.write_batch(local, items, level) {
            Ok(receipt) => {
                let mut idx = Vec::new();
                for ((key, stamp), (kind, ctx)) in receipt.stamps.iter().zip(kinds) {
                    idx.push(self.writes.len());
                    self.writes.push(WriteRec {
                        key: *key,
                        stamp: *stamp,
                        ctx,
                        kind,
                        level,
                        acked: None,
                        ackers: Vec::new(),
                        acked_at: 0,
                        reached: None,
                    });
                }
                self.stats.writes += idx.len() as u64;
                let keys: Vec<u64> = receipt.stamps.iter().map(|(k, _)| k.0).collect();
                self.note(format!("{node}: client {client:?} writes {keys:?} at {level:?}"));
                self.ops.insert((node, receipt.ticket), OpRec { client, writes: idx, level, invoked: self.now });
                if let Some(c) = client {
                    self.clients[c].busy = true;
                }
                self.mix(&[b'w', node.0 as u8]);
            }
            Err(_) => {
                // Refused (too many siblings, pending limit): nothing was written.
                if let Some(c) = client {
                    self.client_done(c);
                }
            }
        }
        self.process(node);
    }

    fn issue_read(&mut self, client: Option<usize>, node: NodeId, key: EntryId, level: Consistency) {
        let n = self.nodes.get_mut(&node).expect("known node");
        let local = n.local(self.now);
        let Some(r) = n.replica.as_mut() else { return };
        match r.get(local, key, level) {
            Ok(ticket) => {
                self.ops.insert((node, ticket), OpRec { client, writes: Vec::new(), level, invoked: self.now });
                if let Some(c) = client {
                    self.clients[c].busy = true;
                }
            }
            Err(_) => {
                if let Some(c) = client {
                    self.client_done(c);
                }
            }
        }
        self.process(node);
    }

    /// Every running replica takes a blind write of the same key at the same instant.
    fn burst(&mut self) {
        if self.clients_stopped() {
            return;
        }
        let key = EntryId(uniform(&mut self.rng, 0, self.cfg.keys - 1));
        for id in self.ids.clone() {
            if self.nodes[&id].replica.is_some() {
                let level = if chance(&mut self.rng, 0.5) { Consistency::One } else { Consistency::Quorum };
                let op = self.make_put(self.cfg.clients);
                self.issue_write(None, id, vec![WriteItem { id: key, op, context: None }], level);
            }
        }
        let at = self.now + uniform(&mut self.rng, 100 * MS, 800 * MS);
        self.sched.at(at, Ev::Burst);
    }

    // ----- faults -----

    fn random_node(&mut self) -> NodeId {
        self.ids[uniform(&mut self.rng, 0, self.ids.len() as u64 - 1) as usize]
    }

    fn inject_fault(&mut self) {
        if self.healed_at.is_some() {
            return;
        }
        let kind = uniform(&mut self.rng, 0, 9);
        match kind {
            0..=2 => self.partition(kind),
            3 => {
                let id = self.random_node();
                self.crash_and_restart_later(id);
            }
            4 => {
                let id = self.random_node();
                let n = uniform(&mut self.rng, 1, 20) as u32;
                self.nodes.get_mut(&id).expect("known node").crash_after_deliveries = Some(n);
            }
            5 => {
                self.link.loss = [0.0, 0.05, 0.1, 0.2][uniform(&mut self.rng, 0, 3) as usize];
                self.link.duplicate = [0.0, 0.05, 0.2][uniform(&mut self.rng, 0, 2) as usize];
                self.mix(b"loss");
            }
            6 => {
                self.link.delay_max_ns = [5, 10, 30, 60][uniform(&mut self.rng, 0, 3) as usize] * MS;
                self.mix(b"delay");
            }
            // One wiped disk per run, and only with a second copy of everything acknowledged.
            7 if self.wipes.is_empty() && self.ids.len() >= 2 && chance(&mut self.rng, 0.5) => {
                let id = self.random_node();
                self.wipe(id);
            }
            _ => {
                let id = self.random_node();
                let until = self.now + uniform(&mut self.rng, 50 * MS, 1_000 * MS);
                self.nodes.get_mut(&id).expect("known node").paused_until = until;
                self.mix(&[b'P', id.0 as u8]);
            }
        }
        let at = self.now + uniform(&mut self.rng, 100 * MS, 1_200 * MS);
        self.sched.at(at, Ev::Fault);
    }

    /// The disk is lost: the replica restarts empty, as a new life.
    fn wipe(&mut self, id: NodeId) {
        self.crash(id);
        let node = self.nodes.get_mut(&id).expect("known node");
        node.disk = Disk::default();
        self.stats.wipes += 1;
        self.wipes.push((self.now, id));
        self.note(format!("{id} loses its disk"));
        self.mix(&[b'X', id.0 as u8]);
        let at = self.now + uniform(&mut self.rng, 50 * MS, 1_000 * MS);
        self.sched.at(at, Ev::Restart { node: id });
    }

    fn partition(&mut self, kind: u64) {
        if self.ids.len() < 2 {
            return;
        }
        let mut ids = self.ids.clone();
        for i in (1..ids.len()).rev() {
            let j = uniform(&mut self.rng, 0, i as u64) as usize;
            ids.swap(i, j);
        }
        let cut = uniform(&mut self.rng, 1, (ids.len() / 2) as u64) as usize;
        let (a, b) = ids.split_at(cut);
        self.link.heal();
        match kind {
            0 => self.link.split(a, b),
            1 => self.link.cut_one_way(a, b),
            _ if b.len() > 1 => self.link.split(a, &b[1..]),
            _ => self.link.split(a, b),
        }
        self.partition_generation += 1;
        let generation = self.partition_generation;
        let at = self.now + uniform(&mut self.rng, 200 * MS, 3_000 * MS);
        self.sched.at(at, Ev::HealPartition { generation });
        self.mix(&[b'N', kind as u8, cut as u8]);
    }

    fn heal_all(&mut self) {
        self.healed_at = Some(self.now);
        self.link = LinkModel::default();
        self.partition_generation += 1;
        for id in self.ids.clone() {
            let node = self.nodes.get_mut(&id).expect("known node");
            node.paused_until = 0;
            node.crash_after_deliveries = None;
            if node.replica.is_none() {
                self.start_node(id);
            }
        }
        self.mix(b"heal-all");
    }

    // ----- checks -----

    /// Does `state` hold write `w` or what replaced it (as its mode allows)?
    fn accounts_for(&self, state: Option<&KeyState>, w: &WriteRec) -> bool {
        let key_writes = || self.writes.iter().filter(|o| o.key == w.key);
        let deleted_later = || key_writes().any(|t| t.kind == Kind::Delete && t.stamp > w.stamp);
        let covered_by_delete = || {
            key_writes().any(|t| t.kind == Kind::Delete && (t.stamp.dot == w.stamp.dot || t.ctx.contains(w.stamp.dot)))
        };
        let Some(s) = state else {
            // Absent: collected. Only a delete can have put it there.
            return match self.mode {
                ConflictMode::MultiValue => covered_by_delete(),
                _ => w.kind == Kind::Delete || deleted_later(),
            };
        };
        let seen = s.clock.contains(w.stamp.dot);
        match (&s.body, self.mode) {
            (Body::Versions(vs), ConflictMode::MultiValue) => {
                if vs.iter().any(|v| v.stamp.dot == w.stamp.dot) {
                    return true;
                }
                let replaced = key_writes().any(|o| {
                    o.stamp.dot != w.stamp.dot && o.ctx.contains(w.stamp.dot) && s.clock.contains(o.stamp.dot)
                });
                if w.kind == Kind::Delete {
                    // A delete is kept by what it removed staying removed: its tombstone may be
                    // collected (every sibling a tombstone, every replica saw it), and whatever
                    // is written after that is newer than it.
                    return replaced || vs.iter().all(|v| v.stamp.ts > w.stamp.ts);
                }
                (seen && replaced) || (!seen && covered_by_delete())
            }
            (Body::Versions(vs), ConflictMode::LastWriteWins) => {
                vs.first().is_some_and(|v| v.stamp >= w.stamp) || (!seen && deleted_later())
            }
            (Body::Fields(f), ConflictMode::CrdtMap) => {
                let reg_ok = |stamp: Option<Stamp>| stamp.is_some_and(|st| st >= w.stamp);
                let mut stamps = f.vector.iter().map(|r| r.stamp).chain(f.fields.values().map(|r| r.stamp));
                match &w.kind {
                    // A delete is kept while its stamp is, or once collected, while nothing
                    // older than it is visible again.
                    Kind::Delete => reg_ok(f.deleted) || stamps.all(|st| st > w.stamp),
                    Kind::Put(fields) | Kind::Patch(fields) => {
                        let vector_ok = matches!(w.kind, Kind::Patch(_)) || reg_ok(f.vector.as_ref().map(|r| r.stamp));
                        let ok = vector_ok && fields.iter().all(|n| reg_ok(f.fields.get(n).map(|r| r.stamp)));
                        // Or a later delete that reached a replica removed it (and was
                        // collected); that delete's own check guards against resurrection.
                        let deleted = key_writes()
                            .any(|t| t.kind == Kind::Delete && t.stamp > w.stamp && t.reached != Some(false));
                        ok || deleted
                    }
                }
            }
            _ => false,
        }
    }

    fn check_read_your_writes(
        &mut self,
        c: usize,
        key: EntryId,
        level: Consistency,
        invoked: u64,
        state: Option<&KeyState>,
    ) {
        let n = self.ids.len();
        let r = level.required(n);
        let mine: Vec<usize> = self.clients[c]
            .acked
            .iter()
            .copied()
            .filter(|&w| {
                let rec = &self.writes[w];
                rec.key == key
                    && rec.acked_at <= invoked
                    && rec.level.required(n) + r > n
                    && !self.wipes.iter().any(|(t, id)| *t >= rec.acked_at && rec.ackers.contains(id))
            })
            .collect();
        for w in mine {
            self.stats.ryw_checks += 1;
            if !self.accounts_for(state, &self.writes[w]) {
                let rec = &self.writes[w];
                if std::env::var_os("QUORATE_SIM_DEBUG").is_some() {
                    for o in self.writes.iter().filter(|o| o.key == key) {
                        eprintln!("oracle: {:?} ctx={:?} {:?} acked={:?}", o.stamp, o.ctx, o.kind, o.acked);
                    }
                    eprintln!("state: {state:?}");
                }
                self.violation = Some(format!(
                    "read your writes: client {c} wrote e{} at {:?} (stamp {:?}, acked by {:?}) then read it at {level:?} and got {}",
                    key.0,
                    rec.level,
                    rec.stamp,
                    rec.ackers,
                    state.map_or("absent".to_string(), |s| format!("{:?}", s.visible()))
                ));
                return;
            }
        }
    }

    fn finish(mut self) -> ReplReport {
        self.sync_all_pending();
        let digests: Vec<Option<u64>> = self.nodes.values().map(|n| n.replica.as_ref().map(|r| r.digest())).collect();
        let converged = digests.iter().all(|d| d.is_some() && *d == digests[0]);
        if self.violation.is_none() && !converged {
            let lens: Vec<String> = self
                .nodes
                .values()
                .map(|n| {
                    n.replica.as_ref().map_or("down".to_string(), |r| {
                        format!("{}: {} keys ({} tombstones) digest {:016x}", n.id, r.len(), r.tombstones(), r.digest())
                    })
                })
                .collect();
            self.violation = Some(format!("replicas did not converge after healing: {}", lens.join("; ")));
        }
        // The final state (of the first replica; all equal if converged).
        let reference = self.nodes.values().find_map(|n| n.replica.as_ref());
        let mut lost = Vec::new();
        let mut dropped = None;
        if let Some(r) = reference {
            for w in &self.writes {
                let state = r.state(w.key);
                let strong = w.acked == Some(true) && w.level != Consistency::One;
                let seen = state.is_some_and(|s| s.clock.contains(w.stamp.dot));
                if (strong || seen) && !self.accounts_for(state, w) {
                    if strong {
                        lost.push(w.clone());
                    } else if dropped.is_none() {
                        dropped = Some(w.clone());
                    }
                }
            }
        }
        self.lost_acked = lost.len() as u64;
        if self.violation.is_none() {
            if let Some(w) = lost.first() {
                let state = reference.and_then(|r| r.state(w.key)).map(|s| format!("{:?}", s.visible()));
                self.violation = Some(format!(
                    "acknowledged write lost: e{} {:?} at {:?} (stamp {:?}, acked by {:?}); the final state is {}",
                    w.key.0,
                    w.kind,
                    w.level,
                    w.stamp,
                    w.ackers,
                    state.unwrap_or_else(|| "absent".into())
                ));
            } else if let Some(w) = dropped {
                self.violation = Some(format!(
                    "write silently dropped: e{} {:?} (stamp {:?}) was seen by the final state but neither survives nor was replaced",
                    w.key.0, w.kind, w.stamp
                ));
            }
        }
        for n in self.nodes.values() {
            if let Some(r) = n.replica.as_ref() {
                let s = r.stats();
                self.stats.hints_delivered += s.hints_delivered;
                self.stats.repairs += s.repairs;
                self.stats.collected += s.collected;
                self.stats.conflicts += s.conflicts;
                self.stats.resolved += s.resolved;
            }
        }
        self.trace = fnv1a64_extend(self.trace, &self.stats.writes.to_le_bytes());
        for d in digests.iter().flatten() {
            self.trace = fnv1a64_extend(self.trace, &d.to_le_bytes());
        }
        let excerpt = if self.violation.is_some() { self.log.iter().cloned().collect() } else { Vec::new() };
        ReplReport {
            seed: self.cfg.seed,
            trace: self.trace,
            violation: self.violation,
            lost_acked: self.lost_acked,
            converged,
            mode: Some(self.mode),
            stats: self.stats,
            excerpt,
        }
    }

    fn sync_all_pending(&mut self) {
        for id in self.ids.clone() {
            if self.nodes[&id].replica.is_some() {
                self.sync_disk(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_runs_and_replays() {
        let mut cfg = ReplSimConfig::new(3, 3);
        cfg.chaos_ns = 3 * SEC;
        cfg.healed_ns = 12 * SEC;
        let a = run(cfg.clone());
        assert!(a.violation.is_none(), "{:?}\n{}", a.violation, a.excerpt.join("\n"));
        assert!(a.converged);
        assert_eq!(a.trace, run(cfg).trace);
    }

    #[test]
    fn the_resolver_is_deterministic() {
        let e = |x: f32| Some(Entry { vector: vec![x, 1.0], metadata: Metadata::new() });
        assert_eq!(keep_largest(&[e(1.0), None, e(3.0)]), e(3.0));
        assert_eq!(keep_largest(&[e(3.0), e(1.0)]), keep_largest(&[e(1.0), e(3.0)]));
        assert_eq!(keep_largest(&[None, None]), None);
    }
}
