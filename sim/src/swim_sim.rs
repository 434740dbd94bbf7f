//! Seeded simulations of SWIM membership: join storms, crashes, restarts, partitions, packet
//! loss and slow members, with completeness, accuracy and convergence checked.
//!
//! # What is checked, and the stated bounds
//! - **Completeness**: every crash that happens while no partition is in force is declared
//!   down by every member that ran unpaused throughout, within [`SwimReport::detect_bound_ms`]
//!   (the unconfirmed suspicion timeout plus ten probe intervals). A miss is a violation.
//! - **Accuracy**: a member that is running is declared down by someone: a false positive.
//!   Those within [`EXCUSE_NS`] of a partition are counted apart (cut off, a member is
//!   rightly declared down); the rest are the `false_positives` of the summary.
//! - **Convergence**: after the last fault heals, every running member must see exactly the
//!   running members, at their current generations, within [`CONVERGE_BOUND_NS`]. A miss is a
//!   violation.
//! - Every member's invariants after every step (clusters over 100 members: every
//!   `max(64, members / 16)`-th step of each member and at the end, since one check costs
//!   O(members)).

use std::collections::BTreeMap;

use quorate_core::swim::{Action, Addr, Config, Digest, Event, Kind, Packet, Swim};
use quorate_core::{fnv1a64, fnv1a64_extend, Instant, Machine, NodeId};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::net::{chance, uniform, LinkModel, Scheduler};

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000_000_000;
/// Declarations this close after a partition started or healed are not counted as false positives.
pub const EXCUSE_NS: u64 = 90 * SEC;
/// After the last fault heals, views must agree within this long.
pub const CONVERGE_BOUND_NS: u64 = 60 * SEC;
/// Packets a paused member buffers (its socket buffer); more are dropped.
const BACKLOG_MAX: usize = 512;

/// One simulation's settings.
#[derive(Clone, Debug)]
pub struct SwimSimConfig {
    /// The seed; fixes everything.
    pub seed: u64,
    /// Members.
    pub members: usize,
    /// Packet loss probability, 0 to 0.3 (the CLI's range).
    pub loss: f64,
    /// Virtual run time.
    pub duration_ns: u64,
    /// Inject crashes, restarts, partitions, pauses and leaves.
    pub faults: bool,
    /// One-way delay range.
    pub delay_min_ns: u64,
    /// One-way delay range.
    pub delay_max_ns: u64,
    /// SWIM settings applied to every member (id, addr and seeds are filled in per member).
    pub swim: fn(NodeId, Addr) -> Config,
    /// Print a timeline of this member to stderr: what every member hears about it, every event
    /// it has itself, its pauses and crashes, and partitions (to explain an incident).
    pub watch: Option<usize>,
}

/// The cluster id of every simulated member.
const CLUSTER_ID: u64 = 0x5157_494d;

fn lan(id: NodeId, addr: Addr) -> Config {
    Config::lan(id, CLUSTER_ID, addr)
}

impl SwimSimConfig {
    /// `members` members for `duration_ns`, 1–10 ms delay, faults on, no loss.
    pub fn new(seed: u64, members: usize, duration_ns: u64) -> Self {
        SwimSimConfig {
            seed,
            members,
            loss: 0.0,
            duration_ns,
            faults: true,
            delay_min_ns: MS,
            delay_max_ns: 10 * MS,
            swim: lan,
            watch: None,
        }
    }
}

/// Steady-state load is measured from this time on (the join storm is over; faults begin).
pub const STEADY_FROM_NS: u64 = 30 * SEC;

/// Traffic over some span, all members.
#[derive(Clone, Debug, Default)]
pub struct Load {
    /// Datagrams sent.
    pub packets: u64,
    /// Bytes sent.
    pub bytes: u64,
    /// Datagrams sent, by [`Kind`] (index with `kind as usize`).
    pub packets_by_kind: [u64; Kind::COUNT],
    /// Bytes sent, by [`Kind`].
    pub bytes_by_kind: [u64; Kind::COUNT],
    /// Member-seconds of the span.
    pub member_secs: f64,
}

impl Load {
    /// Messages sent per member per virtual second.
    pub fn msgs_per_member_s(&self) -> f64 {
        self.packets as f64 / self.member_secs.max(1e-9)
    }

    /// Bytes sent per member per virtual second.
    pub fn bytes_per_member_s(&self) -> f64 {
        self.bytes as f64 / self.member_secs.max(1e-9)
    }
}

/// What a run measured and found.
#[derive(Clone, Debug, Default)]
pub struct SwimReport {
    /// The seed.
    pub seed: u64,
    /// Members.
    pub members: usize,
    /// The first violation found, if any.
    pub violation: Option<String>,
    /// Time from a crash to its declaration as down, per (crash, observer), in milliseconds.
    pub detect_ms: Vec<u64>,
    /// The completeness bound used, in milliseconds.
    pub detect_bound_ms: u64,
    /// Lives of running members declared down (one per member and generation, however many
    /// members heard it), outside partition windows.
    pub false_positives: u64,
    /// Running members declared down near a partition (expected, counted apart).
    pub partition_downs: u64,
    /// Time from the last fault healing to agreement, in milliseconds.
    pub converge_ms: Option<u64>,
    /// Time from start until every member saw every other (join storm), in milliseconds.
    pub full_view_ms: Option<u64>,
    /// Datagrams sent, all members.
    pub packets: u64,
    /// Bytes sent, all members.
    pub bytes: u64,
    /// Packets rejected by receivers (malformed, oversized, ...).
    pub rejected: u64,
    /// Member-seconds simulated (members times virtual seconds).
    pub member_secs: f64,
    /// Events processed (deliveries and timer firings).
    pub events: u64,
    /// Datagrams sent, all members, by [`Kind`] (index with `kind as usize`).
    pub packets_by_kind: [u64; Kind::COUNT],
    /// Bytes sent, all members, by [`Kind`].
    pub bytes_by_kind: [u64; Kind::COUNT],
    /// Full-state exchanges started, all members, and how many of them for a differing digest.
    pub push_pulls: (u64, u64),
    /// Gossip updates dropped unsent from full queues, all members.
    pub gossip_dropped: u64,
    /// Stale suspicions answered with a refutation, all members.
    pub corrections: u64,
    /// The load from [`STEADY_FROM_NS`] on, after the join storm, when only faults and loss
    /// remain: the per-member cost of running, where the whole run's also holds each member's
    /// one-off cost of learning n others.
    pub steady: Load,
    /// Digest of everything that happened.
    pub trace: u64,
}

impl SwimReport {
    /// The `q` quantile (0..=1) of detection times, in milliseconds.
    pub fn detect_quantile(&self, q: f64) -> Option<u64> {
        let mut v = self.detect_ms.clone();
        v.sort_unstable();
        if v.is_empty() {
            return None;
        }
        let i = ((v.len() - 1) as f64 * q).round() as usize;
        Some(v[i])
    }

    /// Messages sent per member per virtual second.
    pub fn msgs_per_member_s(&self) -> f64 {
        self.packets as f64 / self.member_secs.max(1e-9)
    }

    /// Bytes sent per member per virtual second.
    pub fn bytes_per_member_s(&self) -> f64 {
        self.bytes as f64 / self.member_secs.max(1e-9)
    }

    /// Adds one member's sent-traffic counters to the per-kind totals.
    fn add_stats(&mut self, swim: &Swim) {
        let st = swim.stats();
        self.push_pulls.0 += st.push_pulls;
        self.push_pulls.1 += st.digest_syncs;
        self.gossip_dropped += swim.dropped_gossip();
        self.corrections += st.corrections;
        for k in 0..Kind::COUNT {
            self.packets_by_kind[k] += st.sent_packets_by_kind[k];
            self.bytes_by_kind[k] += st.sent_bytes_by_kind[k];
        }
    }
}

enum Ev {
    Deliver { to: usize, from: Addr, bytes: Vec<u8> },
    Timer { node: usize, at: u64 },
    Start(usize),
    Crash(usize),
    Resume(usize),
    Leave(usize),
    Partition,
    Heal,
    CheckCrash { node: usize, gen: u64, at: u64 },
    Sample,
}

struct Slot {
    swim: Option<Swim>,
    addr: Addr,
    gen: u64,
    timer: Option<u64>,
    paused: bool,
    backlog: Vec<(Addr, Vec<u8>)>,
    /// Last time this member was paused or (re)started; its own declarations near then are excused.
    disturbed_at: Option<u64>,
    left: bool,
    steps: u64,
}

struct World {
    cfg: SwimSimConfig,
    rng: ChaCha8Rng,
    now: u64,
    q: Scheduler<Ev>,
    net: LinkModel,
    slots: Vec<Slot>,
    by_addr: BTreeMap<Addr, usize>,
    /// For each crash awaiting its completeness check, `(member, generation)`: when each
    /// observer first declared it down or left (0: before the crash; `u64::MAX`: not yet). Only
    /// crashes in flight are tracked, so this stays small however long the run.
    pending: BTreeMap<(usize, u64), Vec<u64>>,
    incidents: std::collections::BTreeSet<(usize, u64)>,
    agreed_since: Option<u64>,
    partition_events: Vec<u64>,
    faults_end: u64,
    report: SwimReport,
    last_fault_healed: u64,
    /// Everything sent up to [`STEADY_FROM_NS`].
    steady_mark: Option<Load>,
}

fn addr_of(i: usize) -> Addr {
    Addr::v4(10, (i >> 16) as u8, (i >> 8) as u8, i as u8, 7946)
}

/// Runs one simulation.
pub fn run(cfg: SwimSimConfig) -> SwimReport {
    let n = cfg.members.max(1);
    let mut w = World {
        rng: ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5357_494d),
        now: 0,
        q: Scheduler::default(),
        net: LinkModel {
            delay_min_ns: cfg.delay_min_ns,
            delay_max_ns: cfg.delay_max_ns,
            loss: cfg.loss,
            ..Default::default()
        },
        slots: (0..n)
            .map(|i| Slot {
                swim: None,
                addr: addr_of(i),
                gen: 1,
                timer: None,
                paused: false,
                backlog: Vec::new(),
                disturbed_at: None,
                left: false,
                steps: 0,
            })
            .collect(),
        by_addr: (0..n).map(|i| (addr_of(i), i)).collect(),
        pending: BTreeMap::new(),
        incidents: std::collections::BTreeSet::new(),
        agreed_since: None,
        partition_events: Vec::new(),
        faults_end: cfg.duration_ns.saturating_sub(CONVERGE_BOUND_NS + 30 * SEC),
        report: SwimReport {
            seed: cfg.seed,
            members: n,
            trace: fnv1a64(&cfg.seed.to_le_bytes()),
            ..Default::default()
        },
        last_fault_healed: 0,
        steady_mark: None,
        cfg,
    };
    w.report.detect_bound_ms = w.detect_bound_ns() / MS;
    // Join storm: member 0 first, everyone else within two seconds, all through member 0.
    w.q.at(0, Ev::Start(0));
    for i in 1..n {
        let at = uniform(&mut w.rng, 10 * MS, 2 * SEC);
        w.q.at(at, Ev::Start(i));
    }
    if w.cfg.faults && n >= 4 {
        w.plan_faults();
    }
    w.q.at(SEC, Ev::Sample);
    w.run_loop();
    w.finish()
}

impl World {
    fn detect_bound_ns(&self) -> u64 {
        let c = (self.cfg.swim)(NodeId(1), addr_of(0));
        let (_, max, _) = c.suspicion_bounds(self.cfg.members.max(1));
        max.as_nanos() as u64 + 10 * c.probe_interval.as_nanos() as u64
    }

    fn plan_faults(&mut self) {
        let n = self.cfg.members;
        let start = 30 * SEC;
        let end = self.faults_end;
        if end <= start {
            return;
        }
        let bound = self.detect_bound_ns();
        let span = end - start;
        // Crashes: about one per minute per 100 members, at least two; each restarts later
        // (after its detection was checked) with a new generation, or with the same one half of
        // the time, as a host without a persisted counter would, to exercise renewal.
        let most = (n as u64) / 4;
        let crashes = (span / (60 * SEC) * (n as u64).div_ceil(100)).clamp(2.min(most), most);
        let mut crashed = std::collections::BTreeSet::new();
        for _ in 0..crashes {
            let i = 1 + self.rng.next_u64() as usize % (n - 1);
            if !crashed.insert(i) {
                continue;
            }
            let at = start + self.rng.next_u64() % span;
            self.q.at(at, Ev::Crash(i));
            if chance(&mut self.rng, 0.7) {
                let back = at + bound + uniform(&mut self.rng, SEC, 30 * SEC);
                if back < end {
                    self.q.at(back, Ev::Start(i));
                }
            }
        }
        // Partitions: a few, 10-40 s each, never overlapping.
        let mut t = start + uniform(&mut self.rng, 0, 60 * SEC);
        while t + 40 * SEC < end {
            if chance(&mut self.rng, 0.5) {
                let len = uniform(&mut self.rng, 10 * SEC, 40 * SEC);
                self.q.at(t, Ev::Partition);
                self.q.at(t + len, Ev::Heal);
                t += len;
            }
            t += uniform(&mut self.rng, 60 * SEC, 180 * SEC);
        }
        // Slow members: short pauses, as under CPU starvation.
        let pauses = (span / (20 * SEC)).max(1);
        for _ in 0..pauses {
            let i = self.rng.next_u64() as usize % n;
            let at = start + self.rng.next_u64() % span;
            self.q.at(at, Ev::Resume(usize::MAX - i));
        }
        // A graceful leave.
        if n >= 8 {
            let i = 1 + self.rng.next_u64() as usize % (n - 1);
            if !crashed.contains(&i) {
                let at = start + self.rng.next_u64() % span;
                self.q.at(at, Ev::Leave(i));
            }
        }
    }

    fn trace(&mut self, bytes: &[u8]) {
        self.report.trace = fnv1a64_extend(self.report.trace, &self.now.to_le_bytes());
        self.report.trace = fnv1a64_extend(self.report.trace, bytes);
    }

    fn run_loop(&mut self) {
        while let Some((t, ev)) = self.q.pop() {
            if t > self.cfg.duration_ns || self.report.violation.is_some() {
                break;
            }
            self.now = t;
            match ev {
                Ev::Deliver { to, from, bytes } => self.deliver(to, from, bytes),
                Ev::Timer { node, at } => {
                    let slot = &mut self.slots[node];
                    if slot.timer == Some(at) && !slot.paused {
                        slot.timer = None;
                        if let Some(s) = slot.swim.as_mut() {
                            s.handle_timeout(Instant::from_nanos(t));
                        }
                        self.report.events += 1;
                        self.after_step(node);
                    }
                }
                Ev::Start(i) => self.start(i),
                Ev::Crash(i) => self.crash(i),
                Ev::Resume(i) if i > usize::MAX / 2 => self.pause(usize::MAX - i),
                Ev::Resume(i) => self.resume(i),
                Ev::Leave(i) => {
                    if let Some(s) = self.slots[i].swim.as_mut() {
                        if s.leave(Instant::from_nanos(t)).is_ok() {
                            self.slots[i].left = true;
                            self.trace(&[b'L', i as u8]);
                            self.after_step(i);
                        }
                    }
                }
                Ev::Partition => {
                    if self.cfg.watch.is_some() {
                        self.watch_line("partition starts");
                    }
                    let n = self.cfg.members;
                    let k = uniform(&mut self.rng, 1, (n * 2 / 5).max(1) as u64) as usize;
                    let mut ids: Vec<usize> = (0..n).collect();
                    for i in (1..n).rev() {
                        ids.swap(i, self.rng.next_u64() as usize % (i + 1));
                    }
                    let a: Vec<NodeId> = ids[..k].iter().map(|&i| NodeId(i as u64)).collect();
                    let b: Vec<NodeId> = ids[k..].iter().map(|&i| NodeId(i as u64)).collect();
                    if chance(&mut self.rng, 0.25) {
                        self.net.cut_one_way(&a, &b);
                    } else {
                        self.net.split(&a, &b);
                    }
                    self.partition_events.push(t);
                    self.trace(b"partition");
                }
                Ev::Heal => {
                    if self.cfg.watch.is_some() {
                        self.watch_line("partition heals");
                    }
                    self.net.heal();
                    self.partition_events.push(t);
                    self.last_fault_healed = self.last_fault_healed.max(t);
                    self.trace(b"heal");
                }
                Ev::CheckCrash { node, gen, at } => self.check_crash(node, gen, at),
                Ev::Sample => self.sample(),
            }
        }
    }

    fn config_for(&self, i: usize) -> Config {
        let mut c = (self.cfg.swim)(NodeId(i as u64 + 1), addr_of(i));
        c.meta.zone = format!("z{}", i % 3);
        c.meta.weight = 1;
        if i != 0 {
            c.seeds = vec![addr_of(0)];
        }
        c
    }

    fn start(&mut self, i: usize) {
        let cfg = self.config_for(i);
        let seed = self.cfg.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (i as u64) ^ (self.slots[i].gen << 32);
        // Half of the restarts reuse the old generation, as a host without a persisted counter
        // would; the member must renew when it hears it was declared down.
        let restart = self.slots[i].swim.is_none() && self.slots[i].disturbed_at.is_some();
        if restart && chance(&mut self.rng, 0.5) {
            self.slots[i].gen += 1;
        }
        let gen = self.slots[i].gen;
        match Swim::new(cfg, gen, seed, Instant::from_nanos(self.now)) {
            Ok(s) => {
                let slot = &mut self.slots[i];
                slot.swim = Some(s);
                slot.paused = false;
                slot.left = false;
                slot.timer = None;
                slot.disturbed_at = Some(self.now);
                self.trace(&[b'S', i as u8]);
                self.after_step(i);
            }
            Err(e) => self.report.violation = Some(format!("member {i} rejected its config: {e}")),
        }
    }

    fn crash(&mut self, i: usize) {
        let Some(s) = self.slots[i].swim.take() else { return };
        if self.cfg.watch == Some(i) {
            self.watch_line(&format!("member {i} crashes"));
        }
        self.report.add_stats(&s);
        let gen = s.me().version.gen;
        self.slots[i].gen = gen;
        self.slots[i].timer = None;
        self.slots[i].backlog.clear();
        self.slots[i].disturbed_at = Some(self.now);
        self.trace(&[b'C', i as u8]);
        let at = self.now;
        let id = NodeId(i as u64 + 1);
        let seen: Vec<u64> = self
            .slots
            .iter()
            .map(|o| match o.swim.as_ref().and_then(|s| s.member(id)) {
                Some(m) if m.version.gen == gen && m.version.state.is_terminal() => 0,
                _ => u64::MAX,
            })
            .collect();
        self.pending.insert((i, gen), seen);
        self.q.at(self.now + self.detect_bound_ns(), Ev::CheckCrash { node: i, gen, at });
    }

    fn pause(&mut self, i: usize) {
        if self.slots[i].swim.is_none() || self.slots[i].paused {
            return;
        }
        self.slots[i].paused = true;
        self.slots[i].disturbed_at = Some(self.now);
        if self.cfg.watch == Some(i) {
            self.watch_line(&format!("member {i} stalls"));
        }
        let len = uniform(&mut self.rng, 500 * MS, 3 * SEC);
        self.q.at(self.now + len, Ev::Resume(i));
        self.trace(&[b'P', i as u8]);
    }

    fn resume(&mut self, i: usize) {
        if !self.slots[i].paused {
            return;
        }
        self.slots[i].paused = false;
        self.slots[i].disturbed_at = Some(self.now);
        let backlog = std::mem::take(&mut self.slots[i].backlog);
        for (from, bytes) in backlog {
            self.deliver(i, from, bytes);
        }
        if let Some(s) = self.slots[i].swim.as_mut() {
            s.handle_timeout(Instant::from_nanos(self.now));
        }
        self.after_step(i);
    }

    fn deliver(&mut self, to: usize, from: Addr, bytes: Vec<u8>) {
        let slot = &mut self.slots[to];
        let Some(s) = slot.swim.as_mut() else { return };
        if slot.paused {
            if slot.backlog.len() < BACKLOG_MAX {
                slot.backlog.push((from, bytes));
            }
            return;
        }
        self.report.events += 1;
        if let Some(w) = self.cfg.watch {
            watch_packet(self.now, to, w, s, &bytes);
        }
        if s.handle_packet(Instant::from_nanos(self.now), from, &bytes).is_err() {
            self.report.rejected += 1;
        }
        self.after_step(to);
    }

    fn after_step(&mut self, i: usize) {
        let now = self.now;
        self.slots[i].steps += 1;
        // A check costs O(members): every step in small clusters, and often enough in large ones
        // that it costs O(1) per step on average.
        let check = self.cfg.members <= 100 || self.slots[i].steps % (self.cfg.members as u64 / 16).max(64) == 0;
        let Some(s) = self.slots[i].swim.as_mut() else { return };
        if check {
            s.check_invariants();
        }
        let mut out = Vec::new();
        while let Some(a) = s.poll_action() {
            out.push(a);
        }
        let deadline = s.poll_timeout();
        let gen_of = |s: &Swim, id: NodeId| s.member(id).map_or(0, |m| m.version.gen);
        let mut downs = Vec::new();
        for a in &out {
            if let Action::Event(Event::Down(id) | Event::Left(id)) = a {
                downs.push((*id, gen_of(s, *id)));
            }
        }
        for a in out {
            match a {
                Action::Send { to, packet } => {
                    self.report.packets += 1;
                    self.report.bytes += packet.len() as u64;
                    let Some(&j) = self.by_addr.get(&to) else { continue };
                    let (a, b) = (NodeId(i as u64), NodeId(j as u64));
                    for at in self.net.deliveries(&mut self.rng, now, a, b) {
                        let from = self.slots[i].addr;
                        self.q.at(at, Ev::Deliver { to: j, from, bytes: packet.clone() });
                    }
                }
                Action::Event(e) => {
                    if let Some(w) = self.cfg.watch {
                        self.watch_event(i, w, &e);
                    }
                    let tag: [u8; 9] = match &e {
                        Event::Up(m) => tagged(1, m.id),
                        Event::Suspect(id) => tagged(2, *id),
                        Event::Alive(id) => tagged(3, *id),
                        Event::Down(id) => tagged(4, *id),
                        Event::Left(id) => tagged(5, *id),
                        Event::Updated(m) => tagged(6, m.id),
                        Event::Forgotten(id) => tagged(7, *id),
                        Event::Health(h) => tagged(8, NodeId(u64::from(*h))),
                        Event::Renewed { gen } => tagged(9, NodeId(*gen)),
                        Event::Joined => tagged(10, NodeId(i as u64)),
                        Event::LeaveDone => tagged(11, NodeId(i as u64)),
                    };
                    self.trace(&tag);
                }
            }
        }
        for (id, gen) in downs {
            self.on_down(i, id, gen);
        }
        if let Some(d) = deadline {
            let at = d.as_nanos().max(now);
            if self.slots[i].timer != Some(at) {
                self.slots[i].timer = Some(at);
                self.q.at(at, Ev::Timer { node: i, at });
            }
        }
    }

    fn watch_line(&self, what: &str) {
        eprintln!("watch {:>10.3}s {what}", self.now as f64 / SEC as f64);
    }

    fn watch_event(&self, observer: usize, w: usize, e: &Event) {
        let about = match e {
            Event::Up(m) | Event::Updated(m) => Some(m.id),
            Event::Suspect(id) | Event::Alive(id) | Event::Down(id) | Event::Left(id) | Event::Forgotten(id) => {
                Some(*id)
            }
            _ => None,
        };
        let watched = NodeId(w as u64 + 1);
        let own = observer == w;
        if about != Some(watched) && !own {
            return;
        }
        let Some(s) = self.slots[observer].swim.as_ref() else { return };
        let seen = s.member(watched).map(|m| (m.version.gen, m.version.inc));
        let me = s.me().version;
        self.watch_line(&format!(
            "member {observer} (g{}/i{} health {}): {e:?}; holds {w} at {seen:?}",
            me.gen,
            me.inc,
            s.health()
        ));
    }

    fn on_down(&mut self, observer: usize, id: NodeId, gen: u64) {
        let m = (id.0 - 1) as usize;
        if let Some(t) = self.pending.get_mut(&(m, gen)).and_then(|v| v.get_mut(observer)) {
            if *t == u64::MAX {
                *t = self.now;
            }
        }
        let running = self.slots[m].swim.as_ref().is_some_and(|s| s.me().version.gen == gen) && !self.slots[m].left;
        // One incident per wrongly buried life, however many members hear of it.
        if !running || !self.incidents.insert((m, gen)) {
            return;
        }
        let near_partition = self.partition_events.iter().any(|&t| self.now.saturating_sub(t) < EXCUSE_NS);
        if near_partition {
            self.report.partition_downs += 1;
        } else {
            self.report.false_positives += 1;
            if std::env::var_os("QUORATE_SIM_VERBOSE").is_some() {
                let paused = self.slots[m].disturbed_at.map(|t| (self.now - t) / MS);
                eprintln!(
                    "false positive at {}ms: member {observer} declared {m} (gen {gen}) down; {m} last paused/started {:?}ms before",
                    self.now / MS,
                    paused
                );
            }
        }
    }

    fn check_crash(&mut self, node: usize, gen: u64, at: u64) {
        let seen = self.pending.remove(&(node, gen)).unwrap_or_default();
        // Only crashes clear of partitions are held to the bound.
        if self.partition_events.iter().any(|&t| t + EXCUSE_NS > at && t < self.now) || self.net_has_cuts() {
            return;
        }
        let bound = self.detect_bound_ns();
        for o in 0..self.slots.len() {
            let slot = &self.slots[o];
            let steady = slot.swim.is_some() && !slot.left && slot.disturbed_at.is_none_or(|t| t + SEC < at);
            if o == node || !steady {
                continue;
            }
            match seen.get(o).copied().filter(|t| *t != u64::MAX) {
                Some(t) if t >= at && t <= at + bound => self.report.detect_ms.push((t - at) / MS),
                Some(t) if t < at => {}
                _ => {
                    // A member that only ever heard of this life as Down (it joined or restarted
                    // around the crash and learned it from a full state) emits no event but
                    // holds it down; one that forgot the tombstone holds nothing. Both are fine.
                    let held = slot.swim.as_ref().map(|s| s.member(NodeId(node as u64 + 1)));
                    let buried = held.as_ref().is_some_and(|m| {
                        m.as_ref().is_none_or(|m| m.version.gen == gen && m.version.state.is_terminal())
                    });
                    if !buried {
                        self.report.violation = Some(format!(
                            "completeness: member {node} (gen {gen}) crashed at {}ms and member {o} had not declared it down {}ms later",
                            at / MS,
                            bound / MS
                        ));
                        return;
                    }
                }
            }
        }
    }

    fn net_has_cuts(&self) -> bool {
        !self.net.cut.is_empty()
    }

    /// The digest every running member should hold once views agree.
    fn expected_digest(&self) -> Digest {
        Digest::of(self.slots.iter().enumerate().filter_map(|(i, s)| {
            let swim = s.swim.as_ref()?;
            (!s.left).then(|| (NodeId(i as u64 + 1), swim.me().version.gen, 0))
        }))
    }

    /// With `watch` set: which members' views differ from the running set, and how.
    fn watch_disagreement(&self) {
        let running: Vec<(NodeId, u64)> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.left)
            .filter_map(|(i, s)| s.swim.as_ref().map(|w| (NodeId(i as u64 + 1), w.me().version.gen)))
            .collect();
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(swim) = slot.swim.as_ref().filter(|_| !slot.left) else { continue };
            let mut wrong = Vec::new();
            for &(id, gen) in &running {
                if id == swim.id() {
                    continue;
                }
                match swim.member(id) {
                    Some(m) if m.version.gen == gen && !m.version.state.is_terminal() => {}
                    other => wrong.push(format!("{id}: holds {:?} runs g{gen}", other.map(|m| m.version))),
                }
            }
            for m in swim.members().filter(|m| !m.version.state.is_terminal()) {
                if !running.iter().any(|(id, _)| *id == m.id) {
                    wrong.push(format!("{}: holds {:?}, not running", m.id, m.version));
                }
            }
            if !wrong.is_empty() {
                self.watch_line(&format!("view of member {i} differs: {}", wrong.join("; ")));
            }
        }
    }

    fn agree(&self) -> bool {
        let want = self.expected_digest();
        self.slots.iter().all(|s| match &s.swim {
            Some(swim) if !s.left => swim.view() == want,
            _ => true,
        })
    }

    /// Everything sent so far, by the members running now and those crashed before.
    fn load_so_far(&self) -> Load {
        let mut l = Load {
            packets: self.report.packets,
            bytes: self.report.bytes,
            packets_by_kind: self.report.packets_by_kind,
            bytes_by_kind: self.report.bytes_by_kind,
            member_secs: 0.0,
        };
        for swim in self.slots.iter().filter_map(|s| s.swim.as_ref()) {
            for k in 0..Kind::COUNT {
                l.packets_by_kind[k] += swim.stats().sent_packets_by_kind[k];
                l.bytes_by_kind[k] += swim.stats().sent_bytes_by_kind[k];
            }
        }
        l
    }

    fn sample(&mut self) {
        if self.steady_mark.is_none() && self.now >= STEADY_FROM_NS {
            self.steady_mark = Some(self.load_so_far());
        }
        let agree = self.agree();
        let late = self.now + CONVERGE_BOUND_NS >= self.faults_end;
        if !agree && late && self.cfg.watch.is_some() && self.now % SEC < 100 * MS {
            self.watch_disagreement();
        }
        if agree {
            self.agreed_since.get_or_insert(self.now);
        } else {
            self.agreed_since = None;
        }
        if self.report.full_view_ms.is_none() && agree && self.slots.iter().all(|s| s.swim.is_some()) {
            self.report.full_view_ms = Some(self.now / MS);
        }
        let healed = self.now >= self.faults_end && !self.net_has_cuts() && !self.slots.iter().any(|s| s.paused);
        if healed && self.report.converge_ms.is_none() {
            let from = self.last_change_before_heal();
            if let Some(since) = self.agreed_since {
                self.report.converge_ms = Some(since.max(from) - from).map(|ns| ns / MS);
            } else if self.now > from + CONVERGE_BOUND_NS {
                self.report.violation = Some(format!(
                    "convergence: views still differ {}ms after the last fault (at {}ms)",
                    CONVERGE_BOUND_NS / MS,
                    from / MS
                ));
                return;
            }
        }
        self.q.at(self.now + 100 * MS, Ev::Sample);
    }

    /// When the last fault (heal, crash, restart, pause, leave) happened.
    fn last_change_before_heal(&self) -> u64 {
        let disturbed = self.slots.iter().filter_map(|s| s.disturbed_at).max().unwrap_or(0);
        self.last_fault_healed.max(disturbed).min(self.faults_end.max(self.last_fault_healed))
    }

    fn finish(mut self) -> SwimReport {
        if self.report.violation.is_none()
            && self.report.converge_ms.is_none()
            && self.cfg.duration_ns >= 2 * CONVERGE_BOUND_NS
        {
            self.report.violation = Some("convergence: views never agreed after the faults ended".to_string());
        }
        self.report.member_secs = self.cfg.members as f64 * self.cfg.duration_ns as f64 / SEC as f64;
        let mark = self.steady_mark.take().unwrap_or_default();
        for s in &self.slots {
            if let Some(swim) = &s.swim {
                swim.check_invariants();
                self.report.add_stats(swim);
                let st = swim.stats();
                self.report.trace = fnv1a64_extend(self.report.trace, &st.packets_sent.to_le_bytes());
            }
        }
        let r = &self.report;
        let mut steady = Load {
            packets: r.packets - mark.packets,
            bytes: r.bytes - mark.bytes,
            member_secs: self.cfg.members as f64 * self.cfg.duration_ns.saturating_sub(STEADY_FROM_NS) as f64
                / SEC as f64,
            ..Load::default()
        };
        for k in 0..Kind::COUNT {
            steady.packets_by_kind[k] = r.packets_by_kind[k] - mark.packets_by_kind[k];
            steady.bytes_by_kind[k] = r.bytes_by_kind[k] - mark.bytes_by_kind[k];
        }
        self.report.steady = steady;
        self.report
    }
}

/// With `watch` set: every update about the watched member as it is delivered, and what the
/// receiver held before.
fn watch_packet(now: u64, to: usize, w: usize, receiver: &Swim, bytes: &[u8]) {
    let Ok(env) = quorate_core::wire::decode::<Packet>(bytes, CLUSTER_ID, usize::MAX) else { return };
    let watched = NodeId(w as u64 + 1);
    for u in env.body.gossip.iter().filter(|u| u.id() == watched) {
        let held = receiver.member(watched).map(|m| m.version);
        eprintln!(
            "watch {:>10.3}s member {} -> {to} {:?}: {u:?}; {to} held {held:?}",
            now as f64 / SEC as f64,
            env.from.0 - 1,
            env.body.body.kind()
        );
    }
}

fn tagged(kind: u8, id: NodeId) -> [u8; 9] {
    let mut b = [0u8; 9];
    b[0] = kind;
    b[1..].copy_from_slice(&id.0.to_le_bytes());
    b
}
