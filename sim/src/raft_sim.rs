//! One seeded run of a Raft cluster serving a key-value store under faults.
//!
//! A run has two phases. During the **chaos** phase the seed chooses partitions (symmetric,
//! one-way, bridge), crashes and restarts (unsynced writes lost), pauses, packet loss,
//! duplication and reordering, membership changes and leadership transfers, while clients
//! issue reads, writes, cas and deletes with retries. In the **healed** phase every fault is
//! lifted and every crashed node restarts; clients keep going.
//!
//! Checks: every node's invariants after every step; one leader per term; every applied
//! index holds the same entry everywhere (state-machine safety, and thus no committed entry
//! lost across crashes); every new leader holds every entry applied anywhere (leader
//! completeness); log matching across nodes; linearizability of the client history; and
//! liveness after healing (operations invoked [`LIVENESS_GRACE_NS`] after healing complete
//! definitively within [`LIVENESS_BOUND_NS`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use quorate_core::raft::{
    Action, ConfChange, ConfChangeItem, ConfTransition, Config, Entry, EntryPayload, Event, HardState, LogIndex,
    Membership, Message, ProposeError, Raft, ReadMode, Recovered, Role, Snapshot, Term, VoteResult,
};
use quorate_core::{fnv1a64, fnv1a64_extend, wire, Instant, NodeId};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::kv::{Kv, KvCommand, KvOp, KvResult};
use crate::linearizability::{Completion, History, Op, OpId};
use crate::net::{chance, uniform, LinkModel, Scheduler};

/// After healing, operations invoked this long after it must complete definitively...
pub const LIVENESS_GRACE_NS: u64 = 5_000_000_000;
/// ...within this long.
pub const LIVENESS_BOUND_NS: u64 = 3_000_000_000;
const MS: u64 = 1_000_000;
const CLUSTER_ID: u64 = 0x5157_4f52_4154_4531;
const DATAGRAM_BYTES_MAX: usize = 1 << 20;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct RaftSimConfig {
    /// The seed: everything else random derives from it.
    pub seed: u64,
    /// Number of nodes (3 to 7 is typical).
    pub nodes: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Distinct keys (few keys, more contention).
    pub keys: u32,
    /// Virtual length of the chaos phase.
    pub chaos_ns: u64,
    /// Virtual length of the healed phase that follows.
    pub healed_ns: u64,
    /// Inject faults during the chaos phase.
    pub faults: bool,
    /// A planted bug, to prove the checks catch it.
    #[cfg(feature = "planted-bugs")]
    pub planted_bug: Option<quorate_core::raft::PlantedBug>,
}

impl RaftSimConfig {
    /// Defaults for `seed` and `nodes`: 5 clients, 3 keys, 20 s of chaos, 10 s healed.
    pub fn new(seed: u64, nodes: usize) -> Self {
        RaftSimConfig {
            seed,
            nodes,
            clients: 5,
            keys: 3,
            chaos_ns: 20_000 * MS,
            healed_ns: 10_000 * MS,
            faults: true,
            #[cfg(feature = "planted-bugs")]
            planted_bug: None,
        }
    }
}

/// The outcome of one run.
pub struct RunReport {
    /// The seed that produced it.
    pub seed: u64,
    /// A digest of everything that happened; the same seed gives the same trace.
    pub trace: u64,
    /// Client operations checked for linearizability.
    pub ops_checked: u64,
    /// The first violation found, with context.
    pub violation: Option<String>,
    /// Virtual time at which the violation was detected.
    pub violation_at_ns: u64,
    /// The client history.
    pub history: History,
    /// Counters.
    pub stats: SimStats,
}

/// Counters of one run.
#[derive(Clone, Debug, Default)]
pub struct SimStats {
    /// Datagrams delivered.
    pub delivered: u64,
    /// Crashes injected.
    pub crashes: u64,
    /// Membership changes committed.
    pub membership_changes: u64,
    /// Leaders elected.
    pub elections: u64,
    /// Snapshots installed from a leader.
    pub snapshots_installed: u64,
    /// Virtual time simulated.
    pub virtual_ns: u64,
    /// Each node's final role, term, commit and log bounds, for diagnosing a failing seed.
    pub final_nodes: Vec<String>,
}

/// Requests clients send to nodes.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Request {
    Write(KvCommand),
    Read { client: u64, seq: u64, key: u32 },
}

/// Node answers.
#[derive(Clone, Debug)]
enum Reply {
    Written(KvResult),
    Value(Option<u64>),
    NotLeader(Option<NodeId>),
    Retry,
}

enum Ev {
    Deliver {
        from: NodeId,
        to: NodeId,
        bytes: Vec<u8>,
    },
    DiskSync {
        node: NodeId,
        epoch: u64,
    },
    Request {
        node: NodeId,
        client: usize,
        req: Request,
    },
    Reply {
        client: usize,
        seq: u64,
        reply: Reply,
    },
    ClientWake {
        client: usize,
        token: u64,
    },
    Resend {
        client: usize,
        token: u64,
    },
    Fault,
    Admin,
    HealPartition {
        generation: u64,
    },
    Restart {
        node: NodeId,
    },
    /// Kill or cut off a freshly elected leader before its no-op spreads (Figure 8 territory).
    StrikeLeader {
        node: NodeId,
        term: Term,
    },
    Heal,
}

#[derive(Clone, Debug)]
enum Write {
    HardState(HardState),
    Entries(LogIndex, Vec<Entry>),
    Snapshot(Snapshot),
    Compact(LogIndex),
}

#[derive(Clone, Debug, Default)]
struct Durable {
    hard_state: HardState,
    snapshot: Option<Snapshot>,
    entries: Vec<Entry>,
}

impl Durable {
    /// Applies one write; returns the `(index, term)` it makes durable, if any.
    fn write(&mut self, w: Write) -> Option<(LogIndex, Term)> {
        match w {
            Write::HardState(hs) => {
                self.hard_state = hs;
                None
            }
            Write::Entries(first, entries) => {
                self.entries.retain(|e| e.index < first);
                let last = entries.last().map(|e| (e.index, e.term));
                self.entries.extend(entries);
                last
            }
            Write::Snapshot(s) => {
                let (index, term) = (s.meta.index, s.meta.term);
                if !self.entries.iter().any(|e| e.index == index && e.term == term) {
                    self.entries.clear();
                }
                self.snapshot = Some(s);
                Some((index, term))
            }
            Write::Compact(upto) => {
                self.entries.retain(|e| e.index > upto);
                None
            }
        }
    }
}

struct Node {
    id: NodeId,
    raft: Option<Raft>,
    durable: Durable,
    pending: Vec<Write>,
    sync_scheduled: bool,
    epoch: u64,
    kv: Kv,
    kv_applied: LogIndex,
    /// The membership in force before the entries being applied now: the one their commit
    /// was counted under.
    commit_membership: Membership,
    /// Proposals this node made for clients: index -> (client, seq).
    waiting_writes: BTreeMap<LogIndex, (usize, u64, u64)>,
    /// Reads issued through Raft: read id -> (client, seq, key).
    waiting_reads: BTreeMap<u64, (usize, u64, u32)>,
    /// Reads confirmed, waiting for the state machine to reach their index.
    ready_reads: Vec<(LogIndex, usize, u64, u32)>,
    paused_until: u64,
    /// Crash right after handling this many more messages: a crash at an arbitrary point,
    /// typically with writes not yet synced.
    crash_after_deliveries: Option<u32>,
    clock_offset_ns: u64,
    clock_ppm: i64,
    next_read_id: u64,
}

impl Node {
    fn local(&self, global: u64) -> Instant {
        let skew = (global as i128) * (self.clock_ppm as i128) / 1_000_000;
        Instant::from_nanos((self.clock_offset_ns as i128 + global as i128 + skew).max(0) as u64)
    }

    fn global(&self, local: Instant) -> u64 {
        let l = local.as_nanos() as i128 - self.clock_offset_ns as i128;
        let mut g = (l * 1_000_000 / (1_000_000 + self.clock_ppm as i128)).max(0) as u64;
        while self.local(g) < local {
            g += 1;
        }
        g
    }
}

struct PendingOp {
    op_id: OpId,
    seq: u64,
    req: Request,
    give_up_at: u64,
}

struct Client {
    id: u64,
    seq: u64,
    target: NodeId,
    token: u64,
    current: Option<PendingOp>,
}

/// The whole simulated world of one run.
struct World {
    cfg: RaftSimConfig,
    rng: ChaCha8Rng,
    now: u64,
    sched: Scheduler<Ev>,
    link: LinkModel,
    nodes: BTreeMap<NodeId, Node>,
    ids: Vec<NodeId>,
    clients: Vec<Client>,
    history: History,
    trace: u64,
    next_value: u64,
    partition_generation: u64,
    healed_at: Option<u64>,
    /// Until this time every new leader is struck down soon after winning (a leader storm).
    churn_until: u64,
    leaders: BTreeMap<Term, NodeId>,
    /// Every index applied anywhere: its term, payload digest, and the term it was committed
    /// in (the first node to apply an entry is the leader that committed it).
    applied_log: BTreeMap<LogIndex, (Term, u64, Term)>,
    violation: Option<String>,
    stats: SimStats,
    raft_template: Config,
}

/// Runs one seed and reports what happened. Panics inside a node are caught and reported
/// as violations.
pub fn run(cfg: RaftSimConfig) -> RunReport {
    let seed = cfg.seed;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut world = World::new(cfg);
        world.run();
        world.finish()
    }));
    match result {
        Ok(report) => report,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_else(|| "unknown panic".to_string());
            RunReport {
                seed,
                trace: 0,
                ops_checked: 0,
                violation: Some(format!("panic: {msg}")),
                violation_at_ns: 0,
                history: History::new(),
                stats: SimStats::default(),
            }
        }
    }
}

impl RunReport {
    /// The last `n` client events at or before the violation, as JSON lines: context for
    /// a safety violation (a linearizability violation carries its own excerpt).
    pub fn history_excerpt(&self, n: usize) -> Vec<String> {
        let events = self.history.events();
        let upto = events.partition_point(|e| e.time_ns <= self.violation_at_ns);
        events[upto.saturating_sub(n)..upto].iter().map(|e| e.to_json()).collect()
    }
}

impl World {
    fn new(cfg: RaftSimConfig) -> World {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let ids: Vec<NodeId> = (1..=cfg.nodes as u64).map(NodeId).collect();
        let raft_template = Self::raft_config(&mut rng, &cfg);
        let drift_ppm = 20_000;
        let mut nodes = BTreeMap::new();
        for &id in &ids {
            let clock_ppm = uniform(&mut rng, 0, 2 * drift_ppm) as i64 - drift_ppm as i64;
            let clock_offset_ns = uniform(&mut rng, 0, 1_000_000 * MS);
            let node = Node {
                id,
                raft: None,
                durable: Durable::default(),
                pending: Vec::new(),
                sync_scheduled: false,
                epoch: 0,
                kv: Kv::default(),
                kv_applied: LogIndex(0),
                commit_membership: Membership::default(),
                waiting_writes: BTreeMap::new(),
                waiting_reads: BTreeMap::new(),
                ready_reads: Vec::new(),
                paused_until: 0,
                crash_after_deliveries: None,
                clock_offset_ns,
                clock_ppm,
                next_read_id: 1,
            };
            nodes.insert(id, node);
        }
        let clients = (0..cfg.clients)
            .map(|i| Client { id: i as u64 + 1, seq: 0, target: ids[i % ids.len()], token: 0, current: None })
            .collect();
        let link = LinkModel::default();
        let mut w = World {
            rng,
            now: 0,
            sched: Scheduler::default(),
            link,
            nodes,
            ids,
            clients,
            history: History::new(),
            trace: fnv1a64(&cfg.seed.to_le_bytes()),
            next_value: 1,
            partition_generation: 0,
            healed_at: None,
            churn_until: 0,
            leaders: BTreeMap::new(),
            applied_log: BTreeMap::new(),
            violation: None,
            stats: SimStats::default(),
            raft_template,
            cfg,
        };
        for id in w.ids.clone() {
            w.start_node(id);
        }
        for c in 0..w.clients.len() {
            let at = uniform(&mut w.rng, 0, 50 * MS);
            w.sched.at(at, Ev::ClientWake { client: c, token: 0 });
        }
        if w.cfg.faults {
            let at = uniform(&mut w.rng, 200 * MS, 1_000 * MS);
            w.sched.at(at, Ev::Fault);
            let at = uniform(&mut w.rng, 500 * MS, 3_000 * MS);
            w.sched.at(at, Ev::Admin);
        }
        w.sched.at(w.cfg.chaos_ns, Ev::Heal);
        w
    }

    /// Raft settings vary by seed so flow control, snapshots and reads are all exercised.
    fn raft_config(rng: &mut ChaCha8Rng, cfg: &RaftSimConfig) -> Config {
        let mut c = Config::new(NodeId(1));
        c.election_timeout_min = Duration::from_millis(150);
        c.election_timeout_max = Duration::from_millis(300);
        c.heartbeat_interval = Duration::from_millis(30);
        c.append_bytes_max = [1, 512, 4096][uniform(rng, 0, 2) as usize];
        c.inflight_bytes_max = c.append_bytes_max.max(4096) * 4;
        c.inflight_msgs_max = [1, 4, 64][uniform(rng, 0, 2) as usize];
        c.snapshot_threshold_entries = uniform(rng, 16, 200);
        c.snapshot_chunk_bytes = uniform(rng, 16, 512);
        c.snapshot_chunks_inflight_max = uniform(rng, 1, 4);
        if chance(rng, 0.5) {
            // The simulator's clocks drift by at most 2%; the lease assumes at most 5%.
            c.read_mode = ReadMode::Lease { clock_drift_max_ppm: 50_000 };
        }
        #[cfg(feature = "planted-bugs")]
        {
            c.planted_bug = cfg.planted_bug;
        }
        let _ = cfg;
        c
    }

    fn start_node(&mut self, id: NodeId) {
        let now = self.now;
        let mut cfg = self.raft_template.clone();
        cfg.id = id;
        let node = self.nodes.get_mut(&id).expect("known node");
        let recovered = Recovered {
            hard_state: node.durable.hard_state,
            snapshot: node.durable.snapshot.clone(),
            entries: node.durable.entries.clone(),
        };
        let bootstrap = Membership::with_voters(self.ids.iter().copied());
        let seed = self.cfg.seed ^ (id.0 << 32) ^ node.epoch;
        let raft = Raft::new(cfg, bootstrap, recovered, seed, node.local(now)).expect("sim config is valid");
        node.commit_membership = raft.membership().clone();
        node.raft = Some(raft);
        node.kv = Kv::default();
        node.kv_applied = LogIndex(0);
        self.process(id);
    }

    fn crash(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        if node.raft.is_none() {
            return;
        }
        node.raft = None;
        node.pending.clear();
        node.sync_scheduled = false;
        node.epoch += 1;
        node.waiting_writes.clear();
        node.waiting_reads.clear();
        node.ready_reads.clear();
        self.stats.crashes += 1;
        self.mix(&[b'C', id.0 as u8]);
    }

    fn mix(&mut self, bytes: &[u8]) {
        self.trace = fnv1a64_extend(self.trace, &self.now.to_le_bytes());
        self.trace = fnv1a64_extend(self.trace, bytes);
    }

    fn end_ns(&self) -> u64 {
        self.cfg.chaos_ns + self.cfg.healed_ns
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
                self.fire_timer(id);
            } else {
                let Some((t, ev)) = self.sched.pop() else { break };
                if t > end {
                    break;
                }
                self.now = self.now.max(t);
                self.handle_event(ev);
            }
        }
        self.stats.virtual_ns = self.now;
    }

    fn earliest_timer(&self) -> Option<(u64, NodeId)> {
        self.nodes
            .values()
            .filter_map(|n| {
                let r = n.raft.as_ref()?;
                let t = n.global(r.poll_timeout()?).max(n.paused_until);
                Some((t, n.id))
            })
            .min()
    }

    fn fire_timer(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        let local = node.local(self.now);
        if let Some(r) = node.raft.as_mut() {
            r.handle_timeout(local);
        }
        self.process(id);
    }

    /// Defers an event aimed at a paused node until it resumes. Returns true if deferred.
    fn defer_if_paused(&mut self, node: NodeId, ev: Ev) -> Option<Ev> {
        let until = self.nodes[&node].paused_until;
        if until > self.now {
            self.sched.at(until, ev);
            return None;
        }
        Some(ev)
    }

    fn handle_event(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver { from, to, bytes } => {
                let Some(Ev::Deliver { from, to, bytes }) = self.defer_if_paused(to, Ev::Deliver { from, to, bytes })
                else {
                    return;
                };
                self.deliver(from, to, &bytes);
            }
            Ev::DiskSync { node, epoch } => {
                if self.nodes[&node].epoch == epoch && self.nodes[&node].raft.is_some() {
                    let reports = self.sync(node);
                    self.report_persisted(node, reports);
                    self.process(node);
                }
            }
            Ev::Request { node, client, req } => {
                let Some(Ev::Request { node, client, req }) =
                    self.defer_if_paused(node, Ev::Request { node, client, req })
                else {
                    return;
                };
                self.on_request(node, client, req);
            }
            Ev::Reply { client, seq, reply } => self.on_reply(client, seq, reply),
            Ev::ClientWake { client, token } => self.on_client_wake(client, token),
            Ev::Resend { client, token } => {
                if self.clients[client].token == token && self.clients[client].current.is_some() {
                    self.send_request(client);
                }
            }
            Ev::Fault => self.inject_fault(),
            Ev::Admin => self.admin(),
            Ev::HealPartition { generation } => {
                if generation == self.partition_generation {
                    self.link.heal();
                    self.mix(b"heal-partition");
                }
            }
            Ev::Restart { node } => {
                if self.nodes[&node].raft.is_none() {
                    self.start_node(node);
                    self.mix(&[b'R', node.0 as u8]);
                }
            }
            Ev::StrikeLeader { node, term } => self.strike_leader(node, term),
            Ev::Heal => self.heal_all(),
        }
    }

    fn deliver(&mut self, from: NodeId, to: NodeId, bytes: &[u8]) {
        if self.nodes[&to].raft.is_none() {
            return;
        }
        self.stats.delivered += 1;
        self.mix(bytes);
        let env = match wire::decode::<Message>(bytes, CLUSTER_ID, DATAGRAM_BYTES_MAX) {
            Ok(env) => env,
            Err(e) => {
                self.violation = Some(format!("a datagram we encoded failed to decode: {e}"));
                return;
            }
        };
        debug_assert_eq!(env.from, from);
        let node = self.nodes.get_mut(&to).expect("known node");
        let local = node.local(self.now);
        node.raft.as_mut().expect("checked above").handle_message(local, env.from, env.body);
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
        let at = self.now + uniform(&mut self.rng, 100 * MS, 3_000 * MS);
        self.sched.at(at, Ev::Restart { node: id });
    }

    /// Makes every pending write durable; returns what became durable.
    fn sync(&mut self, id: NodeId) -> Vec<(LogIndex, Term)> {
        let node = self.nodes.get_mut(&id).expect("known node");
        node.sync_scheduled = false;
        let writes = std::mem::take(&mut node.pending);
        writes.into_iter().filter_map(|w| node.durable.write(w)).collect()
    }

    fn report_persisted(&mut self, id: NodeId, reports: Vec<(LogIndex, Term)>) {
        let node = self.nodes.get_mut(&id).expect("known node");
        let local = node.local(self.now);
        if let Some(r) = node.raft.as_mut() {
            for (index, term) in reports {
                r.handle_persisted(local, index, term);
            }
        }
    }

    /// Carries out a node's actions in order until it has nothing more to do.
    fn process(&mut self, id: NodeId) {
        for _ in 0..10_000 {
            let mut reports = Vec::new();
            let mut snapshot_wanted = None;
            loop {
                let Some(action) = self.nodes.get_mut(&id).and_then(|n| n.raft.as_mut()).and_then(Raft::poll_action)
                else {
                    break;
                };
                self.carry_out(id, action, &mut reports, &mut snapshot_wanted);
                if self.violation.is_some() {
                    return;
                }
            }
            self.serve_ready_reads(id);
            let node = self.nodes.get_mut(&id).expect("known node");
            if !node.pending.is_empty() && !node.sync_scheduled && node.raft.is_some() {
                node.sync_scheduled = true;
                let latency = uniform(&mut self.rng, 100_000, 5 * MS);
                let epoch = node.epoch;
                self.sched.at(self.now + latency, Ev::DiskSync { node: id, epoch });
            }
            let mut more = !reports.is_empty();
            self.report_persisted(id, reports);
            if let Some(applied) = snapshot_wanted {
                let node = self.nodes.get_mut(&id).expect("known node");
                let local = node.local(self.now);
                let data = Bytes::from(node.kv.snapshot());
                if let Some(r) = node.raft.as_mut() {
                    // Refused only if more was applied meanwhile; the next request will do.
                    let _ = r.handle_snapshot(local, applied, data);
                }
                more = true;
            }
            if let Some(r) = self.nodes[&id].raft.as_ref() {
                r.check_invariants();
            }
            if !more {
                return;
            }
        }
        self.violation = Some(format!("{id} never ran out of actions"));
    }

    fn carry_out(
        &mut self,
        id: NodeId,
        action: Action,
        reports: &mut Vec<(LogIndex, Term)>,
        snapshot_wanted: &mut Option<LogIndex>,
    ) {
        match action {
            Action::Send { to, message } => {
                // Persist before send: everything written so far is synced first.
                if !self.nodes[&id].pending.is_empty() {
                    reports.extend(self.sync(id));
                }
                self.send(id, to, &message);
            }
            Action::PersistHardState(hs) => self.push_write(id, Write::HardState(hs)),
            Action::PersistEntries { first_index, last_index } => {
                let entries = self.lent_entries(id, first_index, last_index);
                self.push_write(id, Write::Entries(first_index, entries));
            }
            Action::PersistSnapshot(s) => self.push_write(id, Write::Snapshot(*s)),
            Action::CompactLog { upto } => self.push_write(id, Write::Compact(upto)),
            Action::ApplyEntries { first_index, last_index } => {
                self.check_commit_is_durable(id, last_index);
                for e in self.lent_entries(id, first_index, last_index) {
                    self.apply_entry(id, &e);
                }
                self.record_commit_membership(id);
            }
            Action::ApplySnapshot(s) => {
                self.apply_snapshot(id, &s);
                self.record_commit_membership(id);
            }
            Action::Event(ev) => self.on_raft_event(id, ev, snapshot_wanted),
        }
    }

    /// Why a commit is safe (Raft dissertation §3.6.2): when the leader of term T commits
    /// through `last`, a quorum of the membership it counted under durably stores an entry of
    /// term T at or after `last`, so every later leader must hold it. Checked against what is
    /// really on each node's synced disk, this catches commits counted wrongly and
    /// acknowledgements sent before their entries were persisted.
    fn check_commit_is_durable(&mut self, id: NodeId, last: LogIndex) {
        let node = &self.nodes[&id];
        let Some(raft) = node.raft.as_ref().filter(|r| r.role() == Role::Leader) else { return };
        let term = raft.term();
        // A durable snapshot at or past `last` holds it too: snapshots hold only committed state.
        let stores = |v: NodeId| {
            self.nodes.get(&v).is_some_and(|n| {
                n.durable.snapshot.as_ref().is_some_and(|s| s.meta.index >= last)
                    || n.durable.entries.iter().rev().take_while(|e| e.index >= last).any(|e| e.term == term)
            })
        };
        if node.commit_membership.vote_result(|v| Some(stores(v))) != VoteResult::Won {
            self.violation = Some(format!(
                "commit not durable: {id}, leader of {term}, committed through {last} but no quorum of {:?} durably \
                 stores an entry of {term} at or after it",
                node.commit_membership.all_voters()
            ));
        }
    }

    fn record_commit_membership(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        if let Some(r) = node.raft.as_ref() {
            node.commit_membership = r.membership().clone();
        }
    }

    /// Entries the node lends for a persist or apply action (a real host would serialize them
    /// in place; the simulator keeps copies on its simulated disk).
    fn lent_entries(&self, id: NodeId, first: LogIndex, last: LogIndex) -> Vec<Entry> {
        self.nodes[&id].raft.as_ref().map_or(Vec::new(), |r| r.entries(first, last).to_vec())
    }

    fn push_write(&mut self, id: NodeId, w: Write) {
        self.nodes.get_mut(&id).expect("known node").pending.push(w);
    }

    fn send(&mut self, from: NodeId, to: NodeId, message: &Message) {
        let bytes = match wire::encode(CLUSTER_ID, from, message, DATAGRAM_BYTES_MAX) {
            Ok(b) => b,
            Err(e) => {
                self.violation = Some(format!("{from} produced an unencodable message: {e}"));
                return;
            }
        };
        for at in self.link.deliveries(&mut self.rng, self.now, from, to) {
            self.sched.at(at, Ev::Deliver { from, to, bytes: bytes.clone() });
        }
    }

    fn apply_entry(&mut self, id: NodeId, e: &Entry) {
        let digest = match &e.payload {
            EntryPayload::Noop => 0,
            EntryPayload::Command(d) => fnv1a64(d),
            EntryPayload::ConfChange(cc) => fnv1a64(&postcard::to_allocvec(cc).unwrap_or_default()) ^ 1,
        };
        let applier_term = self.nodes[&id].raft.as_ref().map_or(e.term, |r| r.term());
        match self.applied_log.get(&e.index) {
            Some(&(term, d, _)) if (term, d) != (e.term, digest) => {
                self.violation = Some(format!(
                    "state machine safety: {id} applied {}/{} but {}/{} was applied at that index before",
                    e.index, e.term, e.index, term
                ));
                return;
            }
            Some(_) => {}
            None => {
                self.applied_log.insert(e.index, (e.term, digest, applier_term));
            }
        }
        let node = self.nodes.get_mut(&id).expect("known node");
        if e.index != node.kv_applied.next() {
            self.violation = Some(format!("{id} applied {} after {}", e.index, node.kv_applied));
            return;
        }
        node.kv_applied = e.index;
        let waiter = node.waiting_writes.remove(&e.index);
        let EntryPayload::Command(data) = &e.payload else { return };
        let Ok(cmd) = postcard::from_bytes::<KvCommand>(data) else {
            self.violation = Some(format!("{id} applied an undecodable command at {}", e.index));
            return;
        };
        let result = node.kv.apply(&cmd);
        if let (Some((client, _, seq)), Some(result)) = (waiter, result) {
            if cmd.client == self.clients[client].id && cmd.seq == seq {
                self.reply(client, seq, Reply::Written(result));
            }
        }
    }

    fn apply_snapshot(&mut self, id: NodeId, s: &Snapshot) {
        if let Some(&(term, _, _)) = self.applied_log.get(&s.meta.index) {
            if term != s.meta.term {
                self.violation = Some(format!(
                    "{id} restored a snapshot at {} of {} but {} was applied",
                    s.meta.index, s.meta.term, term
                ));
                return;
            }
        }
        let node = self.nodes.get_mut(&id).expect("known node");
        node.kv = match Kv::restore(&s.data) {
            Ok(kv) => kv,
            Err(e) => {
                self.violation =
                    Some(format!("{id} received a snapshot at {} that does not decode: {e}", s.meta.index));
                return;
            }
        };
        node.kv_applied = s.meta.index;
        node.waiting_writes.retain(|index, _| *index > s.meta.index);
        self.stats.snapshots_installed += 1;
    }

    fn on_raft_event(&mut self, id: NodeId, ev: Event, snapshot_wanted: &mut Option<LogIndex>) {
        match ev {
            Event::RoleChanged { role: Role::Leader, term, .. } => self.on_new_leader(id, term),
            Event::RoleChanged { .. } => {}
            Event::ReadReady { id: read, index } => {
                let node = self.nodes.get_mut(&id).expect("known node");
                if let Some((client, seq, key)) = node.waiting_reads.remove(&read) {
                    node.ready_reads.push((index, client, seq, key));
                }
            }
            Event::ReadFailed { id: read } => {
                let node = self.nodes.get_mut(&id).expect("known node");
                if let Some((client, seq, _)) = node.waiting_reads.remove(&read) {
                    self.reply(client, seq, Reply::Retry);
                }
            }
            Event::SnapshotWanted { applied } => *snapshot_wanted = Some(applied),
            Event::MembershipChanged { .. } => self.stats.membership_changes += 1,
            Event::ConfChangeSkipped { .. } | Event::TransferAborted { .. } => {}
        }
    }

    fn on_new_leader(&mut self, id: NodeId, term: Term) {
        self.stats.elections += 1;
        if let Some(other) = self.leaders.insert(term, id) {
            if other != id {
                self.violation = Some(format!("election safety: {other} and {id} both led {term}"));
                return;
            }
        }
        // Leader completeness: every entry committed in an earlier term is in the new leader's
        // log. (A leader of an older term can still win late, on votes granted long ago.)
        let raft = self.nodes[&id].raft.as_ref().expect("a leader is running");
        let snapshot_index = raft.snapshot_meta().index;
        for (&index, &(t, _, committed_in)) in &self.applied_log {
            if index <= snapshot_index || committed_in >= term {
                continue;
            }
            if raft.term_at(index) != Some(t) {
                self.violation = Some(format!(
                    "leader completeness: {id} leads {term} without committed entry {index}/{t} (has {:?})",
                    raft.term_at(index)
                ));
                return;
            }
        }
        self.check_log_matching();
        let storm = self.now < self.churn_until;
        if self.cfg.faults && self.healed_at.is_none() && (storm || chance(&mut self.rng, 0.3)) {
            let at = self.now + uniform(&mut self.rng, 0, if storm { 40 } else { 15 } * MS);
            self.sched.at(at, Ev::StrikeLeader { node: id, term });
        }
    }

    fn strike_leader(&mut self, id: NodeId, term: Term) {
        if self.healed_at.is_some() {
            return;
        }
        let still_leading = self.nodes[&id].raft.as_ref().is_some_and(|r| r.role() == Role::Leader && r.term() == term);
        if !still_leading {
            return;
        }
        if self.now < self.churn_until {
            // During a storm, struck leaders come back quickly to compete again.
            self.crash(id);
            let at = self.now + uniform(&mut self.rng, 30 * MS, 300 * MS);
            self.sched.at(at, Ev::Restart { node: id });
        } else if chance(&mut self.rng, 0.5) {
            self.crash_and_restart_later(id);
        } else {
            let others: Vec<NodeId> = self.ids.iter().copied().filter(|x| *x != id).collect();
            self.link.heal();
            self.link.split(&[id], &others);
            self.partition_generation += 1;
            let generation = self.partition_generation;
            let at = self.now + uniform(&mut self.rng, 200 * MS, 3_000 * MS);
            self.sched.at(at, Ev::HealPartition { generation });
        }
        self.mix(&[b'S', id.0 as u8]);
    }

    /// Log matching: where two logs hold an entry with the same index and term, they hold the
    /// same entries before it.
    fn check_log_matching(&mut self) {
        let running: Vec<&Raft> = self.nodes.values().filter_map(|n| n.raft.as_ref()).collect();
        for (i, a) in running.iter().enumerate() {
            for b in &running[i + 1..] {
                let lo = a.first_index().max(b.first_index());
                let hi = a.last_index().min(b.last_index());
                let mut agreed = false;
                let mut idx = hi;
                while idx >= lo && idx.0 > 0 {
                    let same = a.term_at(idx) == b.term_at(idx);
                    if agreed && !same {
                        self.violation =
                            Some(format!("log matching: {} and {} agree above {idx} but not at it", a.id(), b.id()));
                        return;
                    }
                    if same {
                        agreed = true;
                        if let (Some(x), Some(y)) = (a.entry(idx), b.entry(idx)) {
                            if x.payload != y.payload {
                                self.violation =
                                    Some(format!("log matching: {} and {} differ at {idx}", a.id(), b.id()));
                                return;
                            }
                        }
                    }
                    idx = idx.prev();
                }
            }
        }
    }

    fn serve_ready_reads(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        if node.ready_reads.is_empty() {
            return;
        }
        let applied = node.kv_applied;
        let (ready, waiting): (Vec<_>, Vec<_>) = node.ready_reads.drain(..).partition(|(index, ..)| *index <= applied);
        node.ready_reads = waiting;
        let answers: Vec<_> = ready.into_iter().map(|(_, client, seq, key)| (client, seq, node.kv.get(key))).collect();
        for (client, seq, value) in answers {
            self.reply(client, seq, Reply::Value(value));
        }
    }

    // ----- clients -----

    fn on_request(&mut self, id: NodeId, client: usize, req: Request) {
        let node = self.nodes.get_mut(&id).expect("known node");
        let local = node.local(self.now);
        let Some(raft) = node.raft.as_mut() else { return };
        match req {
            Request::Write(cmd) => {
                let seq = cmd.seq;
                let data = postcard::to_allocvec(&cmd).unwrap_or_default();
                match raft.propose(local, data) {
                    Ok(index) => {
                        node.waiting_writes.insert(index, (client, cmd.client, seq));
                    }
                    Err(ProposeError::NotLeader { leader }) => self.reply(client, seq, Reply::NotLeader(leader)),
                    Err(_) => self.reply(client, seq, Reply::Retry),
                }
            }
            Request::Read { seq, key, .. } => {
                let read_id = node.next_read_id;
                node.next_read_id += 1;
                match raft.read_index(local, read_id) {
                    Ok(()) => {
                        node.waiting_reads.insert(read_id, (client, seq, key));
                    }
                    Err(_) => {
                        let leader = raft.leader();
                        self.reply(client, seq, Reply::NotLeader(leader));
                    }
                }
            }
        }
        self.process(id);
    }

    fn reply(&mut self, client: usize, seq: u64, reply: Reply) {
        if chance(&mut self.rng, self.link.loss) {
            return;
        }
        let at = self.now + uniform(&mut self.rng, self.link.delay_min_ns, self.link.delay_max_ns);
        self.sched.at(at, Ev::Reply { client, seq, reply });
    }

    fn send_request(&mut self, client: usize) {
        let c = &self.clients[client];
        let Some(op) = c.current.as_ref() else { return };
        let (target, req) = (c.target, op.req.clone());
        if !chance(&mut self.rng, self.link.loss) {
            let at = self.now + uniform(&mut self.rng, self.link.delay_min_ns, self.link.delay_max_ns);
            self.sched.at(at, Ev::Request { node: target, client, req });
        }
        let c = &mut self.clients[client];
        c.token += 1;
        let token = c.token;
        self.sched.at(self.now + 300 * MS, Ev::ClientWake { client, token });
    }

    fn on_client_wake(&mut self, client: usize, token: u64) {
        if self.clients[client].token != token {
            return;
        }
        let give_up = self.clients[client].current.as_ref().map(|op| op.give_up_at);
        match give_up {
            None => self.start_op(client),
            Some(at) if self.now >= at => {
                let op = self.clients[client].current.take().expect("checked");
                self.history.complete(op.op_id, Completion::Info, self.now);
                self.mix(&[b'I', client as u8]);
                self.schedule_next_op(client);
            }
            Some(_) => {
                self.rotate_target(client, None);
                self.send_request(client);
            }
        }
    }

    fn rotate_target(&mut self, client: usize, hint: Option<NodeId>) {
        let next = match hint {
            Some(h) => h,
            None => self.ids[uniform(&mut self.rng, 0, self.ids.len() as u64 - 1) as usize],
        };
        self.clients[client].target = next;
    }

    fn start_op(&mut self, client: usize) {
        let key = uniform(&mut self.rng, 0, u64::from(self.cfg.keys) - 1) as u32;
        let roll = uniform(&mut self.rng, 0, 99);
        let c = &mut self.clients[client];
        c.seq += 1;
        let (cid, seq) = (c.id, c.seq);
        let value = self.next_value;
        let (op, req) = match roll {
            0..=39 => (Op::Read, Request::Read { client: cid, seq, key }),
            40..=74 => {
                self.next_value += 1;
                (Op::Write(value), Request::Write(KvCommand { client: cid, seq, op: KvOp::Put { key, value } }))
            }
            75..=89 => {
                self.next_value += 1;
                let expected = value.saturating_sub(uniform(&mut self.rng, 1, 4));
                let cmd = KvCommand { client: cid, seq, op: KvOp::Cas { key, expected, new: value } };
                (Op::Cas { expected, new: value }, Request::Write(cmd))
            }
            _ => (Op::Delete, Request::Write(KvCommand { client: cid, seq, op: KvOp::Delete { key } })),
        };
        let op_id = self.history.invoke(cid, &format!("k{key}"), op, self.now);
        let give_up_at = self.now + 5_000 * MS;
        self.clients[client].current = Some(PendingOp { op_id, seq, req, give_up_at });
        self.send_request(client);
    }

    fn schedule_next_op(&mut self, client: usize) {
        let c = &mut self.clients[client];
        c.token += 1;
        let token = c.token;
        let at = self.now + uniform(&mut self.rng, 0, 20 * MS);
        self.sched.at(at, Ev::ClientWake { client, token });
    }

    fn on_reply(&mut self, client: usize, seq: u64, reply: Reply) {
        let Some(op) = self.clients[client].current.as_ref() else { return };
        if op.seq != seq {
            return;
        }
        let completion = match (&op.req, reply) {
            (_, Reply::NotLeader(hint)) => {
                self.rotate_target(client, hint);
                self.retry_soon(client);
                return;
            }
            (_, Reply::Retry) => {
                self.retry_soon(client);
                return;
            }
            (Request::Write(_), Reply::Written(KvResult::CasFailed)) => Completion::Fail,
            (Request::Write(_), Reply::Written(KvResult::Ok)) => Completion::Ok(None),
            (Request::Read { .. }, Reply::Value(v)) => Completion::Ok(v),
            // A reply of the wrong kind cannot happen; ignore it rather than guess.
            _ => return,
        };
        let op = self.clients[client].current.take().expect("checked");
        self.history.complete(op.op_id, completion, self.now);
        self.mix(&[b'O', client as u8]);
        self.schedule_next_op(client);
    }

    /// Retries the current operation shortly (same sequence number, so at most once).
    fn retry_soon(&mut self, client: usize) {
        let c = &mut self.clients[client];
        c.token += 1;
        let token = c.token;
        let at = self.now + uniform(&mut self.rng, 5 * MS, 30 * MS);
        self.sched.at(at, Ev::Resend { client, token });
    }

    // ----- faults -----

    fn random_node(&mut self) -> NodeId {
        self.ids[uniform(&mut self.rng, 0, self.ids.len() as u64 - 1) as usize]
    }

    fn shuffled_ids(&mut self) -> Vec<NodeId> {
        let mut ids = self.ids.clone();
        for i in (1..ids.len()).rev() {
            let j = uniform(&mut self.rng, 0, i as u64) as usize;
            ids.swap(i, j);
        }
        ids
    }

    fn inject_fault(&mut self) {
        if self.healed_at.is_some() {
            return;
        }
        let kind = uniform(&mut self.rng, 0, 8);
        match kind {
            8 => {
                self.churn_until = self.now + uniform(&mut self.rng, 500 * MS, 3_000 * MS);
                self.mix(b"storm");
            }
            0..=2 => self.partition(kind),
            3 => {
                let id = self.random_node();
                self.crash_and_restart_later(id);
            }
            4 => {
                let id = self.random_node();
                let n = uniform(&mut self.rng, 1, 30) as u32;
                self.nodes.get_mut(&id).expect("known node").crash_after_deliveries = Some(n);
            }
            5 => {
                self.link.loss = [0.0, 0.05, 0.1, 0.2, 0.3][uniform(&mut self.rng, 0, 4) as usize];
                self.link.duplicate = [0.0, 0.02, 0.1][uniform(&mut self.rng, 0, 2) as usize];
                self.mix(b"loss");
            }
            6 => {
                self.link.delay_max_ns = [5, 10, 30, 80][uniform(&mut self.rng, 0, 3) as usize] * MS;
                self.mix(b"delay");
            }
            _ => {
                let id = self.random_node();
                let until = self.now + uniform(&mut self.rng, 50 * MS, 1_500 * MS);
                self.nodes.get_mut(&id).expect("known node").paused_until = until;
                self.mix(&[b'P', id.0 as u8]);
            }
        }
        let at = self.now + uniform(&mut self.rng, 100 * MS, 1_500 * MS);
        self.sched.at(at, Ev::Fault);
    }

    fn partition(&mut self, kind: u64) {
        if self.ids.len() < 2 {
            return;
        }
        let ids = self.shuffled_ids();
        let cut = uniform(&mut self.rng, 1, (ids.len() / 2) as u64) as usize;
        let (a, b) = ids.split_at(cut);
        self.link.heal();
        match kind {
            0 => self.link.split(a, b),
            1 => self.link.cut_one_way(a, b),
            // A bridge: b[0] still talks to both sides; the rest of `b` is cut from `a`.
            _ if b.len() > 1 => self.link.split(a, &b[1..]),
            _ => self.link.split(a, b),
        }
        self.partition_generation += 1;
        let generation = self.partition_generation;
        let at = self.now + uniform(&mut self.rng, 200 * MS, 4_000 * MS);
        self.sched.at(at, Ev::HealPartition { generation });
        self.mix(&[b'N', kind as u8, cut as u8]);
    }

    fn current_leader(&self) -> Option<NodeId> {
        self.nodes
            .values()
            .filter_map(|n| n.raft.as_ref())
            .filter(|r| r.role() == Role::Leader)
            .max_by_key(|r| r.term())
            .map(|r| r.id())
    }

    /// Operator actions chosen by the seed: membership changes and leadership transfers.
    fn admin(&mut self) {
        if self.healed_at.is_some() {
            return;
        }
        let at = self.now + uniform(&mut self.rng, 500 * MS, 3_000 * MS);
        self.sched.at(at, Ev::Admin);
        let Some(leader) = self.current_leader() else { return };
        let membership = self.nodes[&leader].raft.as_ref().expect("leader runs").membership().clone();
        let voters = membership.voters.clone();
        let outsiders: Vec<NodeId> = self.ids.iter().copied().filter(|id| !membership.is_voter(*id)).collect();
        let roll = uniform(&mut self.rng, 0, 4);
        let pick = |rng: &mut ChaCha8Rng, v: &[NodeId]| v[uniform(rng, 0, v.len() as u64 - 1) as usize];
        let cc = match roll {
            0 if voters.len() > 3 => {
                let v = pick(&mut self.rng, &voters);
                Some(ConfChange::single(ConfChangeItem::RemoveNode(v)))
            }
            1 if !outsiders.is_empty() => {
                let o = pick(&mut self.rng, &outsiders);
                let item =
                    if membership.is_learner(o) { ConfChangeItem::AddVoter(o) } else { ConfChangeItem::AddLearner(o) };
                Some(ConfChange::single(item))
            }
            2 if !outsiders.is_empty() && voters.len() >= 3 => {
                let (o, v) = (pick(&mut self.rng, &outsiders), pick(&mut self.rng, &voters));
                let changes = vec![ConfChangeItem::AddVoter(o), ConfChangeItem::AddLearner(v)];
                Some(ConfChange { changes, transition: ConfTransition::Joint { auto_leave: true } })
            }
            3 => {
                let target = pick(&mut self.rng, &voters);
                let node = self.nodes.get_mut(&leader).expect("leader runs");
                let local = node.local(self.now);
                let _ = node.raft.as_mut().expect("leader runs").transfer_leader(local, target);
                None
            }
            _ => None,
        };
        if let Some(cc) = cc {
            let node = self.nodes.get_mut(&leader).expect("leader runs");
            let local = node.local(self.now);
            let _ = node.raft.as_mut().expect("leader runs").propose_conf_change(local, cc);
        }
        self.mix(&[b'A', roll as u8]);
        self.process(leader);
    }

    fn heal_all(&mut self) {
        self.healed_at = Some(self.now);
        self.link = LinkModel::default();
        self.partition_generation += 1;
        for id in self.ids.clone() {
            let node = self.nodes.get_mut(&id).expect("known node");
            node.paused_until = 0;
            node.crash_after_deliveries = None;
            if self.nodes[&id].raft.is_none() {
                self.start_node(id);
            }
        }
        self.mix(b"heal-all");
    }

    fn finish(mut self) -> RunReport {
        let violation_at_ns = self.now;
        let end = self.end_ns();
        self.history.finish_pending(end);
        if self.violation.is_none() {
            self.check_log_matching();
        }
        if self.violation.is_none() {
            self.check_liveness();
        }
        let mut ops_checked = 0;
        if self.violation.is_none() {
            match self.history.check() {
                Ok(stats) => ops_checked = stats.ops_checked,
                Err(e) => self.violation = Some(format!("linearizability: {e}")),
            }
        }
        self.trace = fnv1a64_extend(self.trace, &(self.history.len_ops() as u64).to_le_bytes());
        for n in self.nodes.values() {
            let line = match &n.raft {
                Some(r) => format!(
                    "{} {:?} {} leader={:?} commit={} applied={} last={} first={} voters={:?} learners={:?} stats={:?}",
                    n.id,
                    r.role(),
                    r.term(),
                    r.leader(),
                    r.committed(),
                    r.applied(),
                    r.last_index(),
                    r.first_index(),
                    r.membership().voters,
                    r.membership().learners,
                    r.stats()
                ),
                None => format!("{} down", n.id),
            };
            self.stats.final_nodes.push(line);
        }
        RunReport {
            seed: self.cfg.seed,
            trace: self.trace,
            ops_checked,
            violation: self.violation,
            violation_at_ns,
            history: self.history,
            stats: self.stats,
        }
    }

    fn check_liveness(&mut self) {
        let Some(healed) = self.healed_at else { return };
        let from = healed + LIVENESS_GRACE_NS;
        let end = self.end_ns();
        let mut open: BTreeMap<u64, (u64, &'static str)> = BTreeMap::new();
        let mut stuck = BTreeSet::new();
        for e in self.history.events() {
            use crate::linearizability::EventKind;
            match e.kind {
                EventKind::Invoke => {
                    open.insert(e.client, (e.time_ns, e.op.name()));
                }
                kind => {
                    if let Some((t, name)) = open.remove(&e.client) {
                        let late = e.time_ns.saturating_sub(t) > LIVENESS_BOUND_NS;
                        let unknown = kind == EventKind::Info && e.time_ns < end;
                        if t >= from && (late || unknown) {
                            stuck.insert((e.client, t, name));
                        }
                    }
                }
            }
        }
        for (client, (t, name)) in open {
            if t >= from && end.saturating_sub(t) > LIVENESS_BOUND_NS {
                stuck.insert((client, t, name));
            }
        }
        if let Some((client, t, name)) = stuck.into_iter().next() {
            self.violation = Some(format!(
                "liveness: client {client}'s {name} invoked at {}ms, {}ms after healing, did not complete within {}ms",
                t / MS,
                (t - healed) / MS,
                LIVENESS_BOUND_NS / MS
            ));
        }
    }
}
