//! Quorate's SWIM versus foca: both in one seeded simulated network, side by side.
//!
//! One event loop, generic over [`Peer`], drives either implementation through the same
//! network model: every datagram is lost with probability `loss`, otherwise delivered after a
//! one-way delay drawn uniformly from 1–10 ms (so packets reorder); virtual time jumps from
//! event to event. Both sides see the same seed, the same join schedule and the same kills:
//!
//! 1. member 0 starts at t = 0; every other member starts at a seeded time in the first
//!    second and joins through member 0 alone (Quorate: `Config::seeds`; foca: `announce`,
//!    retried by the host with backoff, 500 ms doubling to 30 s, until foca has a member);
//! 2. **full view**: the first instant at which every member sees all `n` members alive
//!    (tracked exactly, after every step, not sampled); reported as "not reached" if that has
//!    not happened by the first kill;
//! 3. at half time one member is killed (three, 10 s apart, for n ≥ 100): it stops receiving
//!    and its timers stop. **Detection** is, per victim and per observer that saw the victim
//!    alive at the kill, the time until that observer declares it down; p50 and max over all
//!    such pairs, and how many pairs never detected it;
//! 4. **false positives**: every declaration of a running member as down (each observer,
//!    each time), and how many distinct members that hit;
//! 5. **load**: datagrams and bytes sent per member per virtual second, over the whole run,
//!    and from 60 s on (the steady load, without the join storm);
//! 6. **speed**: events (datagrams delivered to a running member plus timers handed to it)
//!    per CPU-second of the thread, and the run's CPU time. The loop, network model and
//!    bookkeeping are the same code for both, so they dilute the difference, never favour one.
//!
//! Settings: Quorate `Config::lan` (probe every 1 s, 500 ms probe timeout, 3 indirect probes,
//! gossip every 200 ms to 3, 1,400-byte packets); foca `Config::new_lan(n)` (the same four
//! settings, suspicion 4·max(1, log10 n) s). Both probe every second. See `peer_foca.rs` for
//! foca's identity, codec and RNG.
//!
//! Run the whole grid (loss 0/5/20% × n 10/100/1,000 × both, 10 virtual minutes):
//! `cargo bench -p quorate-benches --bench swim`. A subset, through the environment:
//! `SWIM_BENCH_MEMBERS=10,100 SWIM_BENCH_LOSS=0.2 SWIM_BENCH_SECS=600 SWIM_BENCH_SEED=1`
//! (and `SWIM_BENCH_PEERS=quorate` or `foca` for one side alone, without the table). Each
//! configuration is repeated until its runs add up to `SWIM_BENCH_MIN_CPU_S` (default 2) of
//! CPU, every repetition checked to end the same way; the mean CPU time per run is reported.
//! It prints a progress line per run on stderr and the Markdown table on stdout.

pub mod peer_foca;

use std::cmp::Ordering;
use std::collections::{BTreeSet, BinaryHeap};
use std::fmt::Write as _;

use quorate_core::swim::{Action, Addr, Config, Event, State, Swim};
use quorate_core::{fnv1a64_extend, Instant, Machine, NodeId};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// One millisecond in virtual nanoseconds.
pub const MS: u64 = 1_000_000;
/// One second in virtual nanoseconds.
pub const SEC: u64 = 1_000 * MS;
/// Cluster id stamped on Quorate's packets.
const CLUSTER: u64 = 0x5357_494d;
/// SWIM port of every simulated member.
pub const PORT: u16 = 7946;
/// Members start at seeded times within this long after member 0.
const JOIN_SPREAD_NS: u64 = SEC;
/// Victims after the first are killed this long apart.
const KILL_GAP_NS: u64 = 10 * SEC;
/// Steady load is counted from here on: the join storm is over (its cost, each member
/// learning `n` others once, is O(n) per member however it is done).
pub const STEADY_FROM_NS: u64 = 60 * SEC;

/// The address of member `i` (10.x.y.z, so up to 2^24 members).
pub fn addr_of(i: usize) -> Addr {
    Addr::v4(10, (i >> 16) as u8, (i >> 8) as u8, i as u8, PORT)
}

/// The member index behind an address made by [`addr_of`].
pub fn index_of(addr: Addr) -> Option<usize> {
    match addr.0 {
        std::net::SocketAddr::V4(a) if a.port() == PORT => {
            let [_, x, y, z] = a.ip().octets();
            Some(usize::from(x) << 16 | usize::from(y) << 8 | usize::from(z))
        }
        _ => None,
    }
}

/// What one step of a member asks of the harness; reused between steps.
pub struct Out<T> {
    /// Datagrams to send: (destination member, bytes).
    pub sends: Vec<(usize, Vec<u8>)>,
    /// Timers to fire: (virtual instant, what to hand back).
    pub timers: Vec<(u64, T)>,
    /// Members this member just declared down.
    pub downs: Vec<usize>,
}

impl<T> Default for Out<T> {
    fn default() -> Self {
        Out { sends: Vec::new(), timers: Vec::new(), downs: Vec::new() }
    }
}

/// A SWIM implementation as the harness drives it. Every input appends its consequences to
/// `out`; the harness carries them out in order.
pub trait Peer: Sized {
    /// What a timer hands back.
    type Timer;
    /// Name in the report.
    const NAME: &'static str;
    /// Starts member `idx` of `n` at `now` (members other than 0 join through member 0).
    fn start(idx: usize, n: usize, seed: u64, now: u64, out: &mut Out<Self::Timer>) -> Self;
    /// A datagram from member `from`; false if the member rejected it.
    fn handle_packet(&mut self, now: u64, from: usize, bytes: &[u8], out: &mut Out<Self::Timer>) -> bool;
    /// A timer this member asked for; `None` if it was stale and ignored without work,
    /// otherwise whether the member accepted it without error.
    fn handle_timer(&mut self, now: u64, timer: Self::Timer, out: &mut Out<Self::Timer>) -> Option<bool>;
    /// Members this one sees alive (or suspect), itself included.
    fn live_members(&self) -> usize;
    /// True if this member sees member `idx` alive (or suspect).
    fn sees_alive(&self, idx: usize) -> bool;
}

/// One run's settings.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    /// Members.
    pub members: usize,
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Virtual run time.
    pub duration_ns: u64,
    /// Seed of the join schedule, the victims and the network.
    pub seed: u64,
}

impl Scenario {
    /// Members killed: one below 100 members, three from 100 on.
    pub fn victims(&self) -> usize {
        if self.members >= 100 {
            3
        } else {
            1
        }
    }

    /// When the first victim is killed: half time.
    pub fn kill_at_ns(&self) -> u64 {
        self.duration_ns / 2
    }
}

/// What one run measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// Which implementation.
    pub name: &'static str,
    /// Members.
    pub members: usize,
    /// Loss probability.
    pub loss: f64,
    /// Virtual seconds run.
    pub secs: u64,
    /// When every member first saw all members alive, if before the first kill.
    pub full_view_ms: Option<u64>,
    /// Until when full view was looked for.
    pub full_view_limit_ms: u64,
    /// Detection times over (victim, observer) pairs, sorted, in milliseconds.
    pub detect_ms: Vec<u64>,
    /// (victim, observer) pairs where the observer saw the victim alive when it was killed.
    pub detect_expected: usize,
    /// Declarations of running members as down.
    pub false_positives: u64,
    /// Distinct running members declared down at least once.
    pub false_positive_members: usize,
    /// Datagrams sent, all members.
    pub packets: u64,
    /// Bytes sent, all members.
    pub bytes: u64,
    /// Datagrams sent from [`STEADY_FROM_NS`] on, all members.
    pub steady_packets: u64,
    /// Bytes sent from [`STEADY_FROM_NS`] on, all members.
    pub steady_bytes: u64,
    /// Datagrams delivered to running members plus timers handled by them.
    pub events: u64,
    /// Inputs a member refused with an error.
    pub errors: u64,
    /// Thread CPU time of the event loop, in nanoseconds (not part of equality).
    pub cpu_ns: u64,
    /// Digest of everything that happened, for determinism checks.
    pub trace: u64,
}

impl Report {
    /// The `q` quantile of detection times.
    pub fn detect_quantile(&self, q: f64) -> Option<u64> {
        let v = &self.detect_ms;
        if v.is_empty() {
            return None;
        }
        Some(v[((v.len() - 1) as f64 * q).round() as usize])
    }

    /// (victim, observer) pairs that never declared the victim down.
    pub fn detect_missed(&self) -> usize {
        self.detect_expected - self.detect_ms.len()
    }

    /// Datagrams per member per virtual second.
    pub fn msgs_per_member_s(&self) -> f64 {
        self.packets as f64 / (self.members as f64 * self.secs as f64)
    }

    /// Bytes per member per virtual second.
    pub fn bytes_per_member_s(&self) -> f64 {
        self.bytes as f64 / (self.members as f64 * self.secs as f64)
    }

    /// Datagrams per member per virtual second from [`STEADY_FROM_NS`] on.
    pub fn steady_msgs_per_member_s(&self) -> f64 {
        self.steady_packets as f64 / (self.members as f64 * self.steady_secs())
    }

    /// Bytes per member per virtual second from [`STEADY_FROM_NS`] on.
    pub fn steady_bytes_per_member_s(&self) -> f64 {
        self.steady_bytes as f64 / (self.members as f64 * self.steady_secs())
    }

    fn steady_secs(&self) -> f64 {
        (self.secs as f64 - (STEADY_FROM_NS / SEC) as f64).max(1.0)
    }

    /// Events per CPU-second.
    pub fn events_per_cpu_s(&self) -> f64 {
        self.events as f64 / (self.cpu_ns.max(1) as f64 / SEC as f64)
    }

    /// Equal apart from CPU time (which differs run to run).
    pub fn same_outcome(&self, other: &Report) -> bool {
        Report { cpu_ns: 0, ..self.clone() } == Report { cpu_ns: 0, ..other.clone() }
    }
}

enum Ev<T> {
    Start(usize),
    Kill(usize),
    Deliver { to: usize, from: usize, bytes: Vec<u8> },
    Timer { node: usize, timer: T },
}

/// An event with its time; ordered by time, then by scheduling order (FIFO at equal times).
struct Queued<T> {
    at: u64,
    seq: u64,
    ev: Ev<T>,
}

impl<T> PartialEq for Queued<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<T> Eq for Queued<T> {}
impl<T> PartialOrd for Queued<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Queued<T> {
    // Reversed: the heap pops the earliest first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

struct World<P: Peer> {
    sc: Scenario,
    now: u64,
    seq: u64,
    q: BinaryHeap<Queued<P::Timer>>,
    net_rng: ChaCha8Rng,
    peers: Vec<Option<P>>,
    killed_at: Vec<Option<u64>>,
    victims: Vec<usize>,
    out: Out<P::Timer>,
    full: Vec<bool>,
    full_count: usize,
    /// Per victim: per observer, Some(None) if expected to detect, Some(Some(ms)) once it did.
    detect: Vec<Vec<Option<Option<u64>>>>,
    fp_members: BTreeSet<usize>,
    report: Report,
}

/// A uniform draw in `[lo, hi]`.
fn uniform(rng: &mut ChaCha8Rng, lo: u64, hi: u64) -> u64 {
    lo + rng.next_u64() % (hi - lo + 1)
}

/// True with probability `p`.
fn chance(rng: &mut ChaCha8Rng, p: f64) -> bool {
    p > 0.0 && ((rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
}

/// The seed member `idx`'s implementation gets (the same for both sides).
fn member_seed(seed: u64, idx: usize) -> u64 {
    seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ idx as u64
}

/// The thread's CPU time in nanoseconds (Linux), or wall time where that is not readable.
fn cpu_now_ns(wall: std::time::Instant) -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| wall.elapsed().as_nanos() as u64)
}

/// Runs one scenario with implementation `P`.
pub fn run<P: Peer>(sc: Scenario) -> Report {
    assert!(sc.members >= 2, "a cluster of one detects nothing");
    assert!(sc.victims() < sc.members, "victims must leave member 0 and observers running");
    let n = sc.members;
    let mut w = World::<P> {
        sc,
        now: 0,
        seq: 0,
        q: BinaryHeap::new(),
        net_rng: ChaCha8Rng::seed_from_u64(sc.seed ^ 0x006e_6574),
        peers: (0..n).map(|_| None).collect(),
        killed_at: vec![None; n],
        victims: Vec::new(),
        out: Out::default(),
        full: vec![false; n],
        full_count: 0,
        detect: Vec::new(),
        fp_members: BTreeSet::new(),
        report: Report {
            name: P::NAME,
            members: n,
            loss: sc.loss,
            secs: sc.duration_ns / SEC,
            full_view_ms: None,
            full_view_limit_ms: sc.kill_at_ns() / MS,
            detect_ms: Vec::new(),
            detect_expected: 0,
            false_positives: 0,
            false_positive_members: 0,
            packets: 0,
            bytes: 0,
            steady_packets: 0,
            steady_bytes: 0,
            events: 0,
            errors: 0,
            cpu_ns: 0,
            trace: sc.seed,
        },
    };
    // The schedule has its own RNG, so both sides get the same starts and victims.
    let mut plan = ChaCha8Rng::seed_from_u64(sc.seed ^ 0x706c_616e);
    w.push(0, Ev::Start(0));
    for i in 1..n {
        let at = uniform(&mut plan, MS, JOIN_SPREAD_NS);
        w.push(at, Ev::Start(i));
    }
    while w.victims.len() < sc.victims() {
        let v = 1 + plan.next_u64() as usize % (n - 1);
        if !w.victims.contains(&v) {
            let at = sc.kill_at_ns() + w.victims.len() as u64 * KILL_GAP_NS;
            w.victims.push(v);
            w.push(at, Ev::Kill(v));
        }
    }
    let wall = std::time::Instant::now();
    let cpu0 = cpu_now_ns(wall);
    w.run_loop();
    w.report.cpu_ns = cpu_now_ns(wall).saturating_sub(cpu0);
    w.finish()
}

impl<P: Peer> World<P> {
    fn push(&mut self, at: u64, ev: Ev<P::Timer>) {
        self.seq += 1;
        self.q.push(Queued { at, seq: self.seq, ev });
    }

    fn trace(&mut self, tag: u8, a: usize, b: usize) {
        let mut buf = [0u8; 17];
        buf[0] = tag;
        buf[1..9].copy_from_slice(&self.now.to_le_bytes());
        buf[9..13].copy_from_slice(&(a as u32).to_le_bytes());
        buf[13..17].copy_from_slice(&(b as u32).to_le_bytes());
        self.report.trace = fnv1a64_extend(self.report.trace, &buf);
    }

    fn run_loop(&mut self) {
        while let Some(Queued { at, ev, .. }) = self.q.pop() {
            if at > self.sc.duration_ns {
                break;
            }
            self.now = at;
            match ev {
                Ev::Start(i) => {
                    let seed = member_seed(self.sc.seed, i);
                    self.peers[i] = Some(P::start(i, self.sc.members, seed, at, &mut self.out));
                    self.trace(b'S', i, 0);
                    self.after_step(i);
                }
                Ev::Kill(v) => self.kill(v),
                Ev::Deliver { to, from, bytes } => {
                    let Some(p) = self.peers[to].as_mut() else { continue };
                    self.report.events += 1;
                    if !p.handle_packet(at, from, &bytes, &mut self.out) {
                        self.report.errors += 1;
                    }
                    self.after_step(to);
                }
                Ev::Timer { node, timer } => {
                    let Some(p) = self.peers[node].as_mut() else { continue };
                    if let Some(ok) = p.handle_timer(at, timer, &mut self.out) {
                        self.report.events += 1;
                        self.report.errors += u64::from(!ok);
                    }
                    // Even a stale timer's output (there should be none) belongs to this member.
                    self.after_step(node);
                }
            }
        }
    }

    fn kill(&mut self, v: usize) {
        self.peers[v] = None;
        self.killed_at[v] = Some(self.now);
        self.trace(b'K', v, 0);
        // Who is expected to notice: every running non-victim that sees `v` alive now.
        let expected = (0..self.sc.members)
            .map(|o| {
                let observer = !self.victims.contains(&o) && self.peers[o].as_ref().is_some_and(|p| p.sees_alive(v));
                observer.then_some(None)
            })
            .collect::<Vec<_>>();
        self.report.detect_expected += expected.iter().filter(|e| e.is_some()).count();
        let k = self.victims.iter().position(|&x| x == v).expect("only victims are killed");
        if self.detect.len() <= k {
            self.detect.resize(k + 1, Vec::new());
        }
        self.detect[k] = expected;
    }

    /// Carries out what member `i`'s last step asked for.
    fn after_step(&mut self, i: usize) {
        let mut out = std::mem::take(&mut self.out);
        for (to, bytes) in out.sends.drain(..) {
            self.report.packets += 1;
            self.report.bytes += bytes.len() as u64;
            if self.now >= STEADY_FROM_NS {
                self.report.steady_packets += 1;
                self.report.steady_bytes += bytes.len() as u64;
            }
            if chance(&mut self.net_rng, self.sc.loss) {
                continue;
            }
            let at = self.now + uniform(&mut self.net_rng, MS, 10 * MS);
            self.push(at, Ev::Deliver { to, from: i, bytes });
        }
        for (at, timer) in out.timers.drain(..) {
            self.push(at.max(self.now), Ev::Timer { node: i, timer });
        }
        for d in out.downs.drain(..) {
            self.on_down(i, d);
        }
        self.out = out;
        let Some(p) = self.peers[i].as_ref() else { return };
        let full = p.live_members() == self.sc.members;
        if full != self.full[i] {
            self.full[i] = full;
            if full {
                self.full_count += 1;
            } else {
                self.full_count -= 1;
            }
        }
        if self.full_count == self.sc.members && self.report.full_view_ms.is_none() && self.now < self.sc.kill_at_ns() {
            self.report.full_view_ms = Some(self.now / MS);
            self.trace(b'F', 0, 0);
        }
    }

    fn on_down(&mut self, observer: usize, d: usize) {
        self.trace(b'D', observer, d);
        match self.killed_at.get(d).copied().flatten() {
            Some(at) => {
                let k = self.victims.iter().position(|&x| x == d).expect("only victims are killed");
                if let Some(slot @ None) = self.detect[k].get_mut(observer).and_then(|e| e.as_mut()) {
                    *slot = Some((self.now - at) / MS);
                }
            }
            None => {
                self.report.false_positives += 1;
                self.fp_members.insert(d);
            }
        }
    }

    fn finish(mut self) -> Report {
        let mut times: Vec<u64> = self.detect.iter().flatten().filter_map(|e| e.flatten()).collect();
        times.sort_unstable();
        self.report.detect_ms = times;
        self.report.false_positive_members = self.fp_members.len();
        for &t in &self.report.detect_ms {
            self.report.trace = fnv1a64_extend(self.report.trace, &t.to_le_bytes());
        }
        // A harness that measured nothing must not report numbers.
        assert_eq!(self.detect.len(), self.sc.victims(), "every victim was killed");
        assert!(self.report.packets > 0 && self.report.events > 0, "{}: nothing happened", P::NAME);
        assert!(self.report.detect_missed() <= self.report.detect_expected);
        self.report
    }
}

/// Quorate's SWIM as the harness drives it.
pub struct QuorateMember {
    swim: Swim,
    /// The deadline asked for last; an older timer event is stale.
    timer: Option<u64>,
}

impl QuorateMember {
    fn drain(&mut self, now: u64, out: &mut Out<u64>) {
        while let Some(action) = self.swim.poll_action() {
            match action {
                Action::Send { to, packet } => {
                    let to = index_of(to).expect("members only know addresses the harness made");
                    out.sends.push((to, packet));
                }
                Action::Event(Event::Down(id)) => out.downs.push(id.0 as usize - 1),
                Action::Event(_) => {}
            }
        }
        if let Some(deadline) = self.swim.poll_timeout() {
            let at = deadline.as_nanos().max(now);
            if self.timer != Some(at) {
                self.timer = Some(at);
                out.timers.push((at, at));
            }
        }
    }
}

impl Peer for QuorateMember {
    type Timer = u64;
    const NAME: &'static str = "Quorate";

    fn start(idx: usize, _n: usize, seed: u64, now: u64, out: &mut Out<u64>) -> Self {
        let mut cfg = Config::lan(NodeId(idx as u64 + 1), CLUSTER, addr_of(idx));
        if idx != 0 {
            cfg.seeds = vec![addr_of(0)];
        }
        let swim = Swim::new(cfg, 1, seed, Instant::from_nanos(now)).expect("Config::lan is valid");
        let mut m = QuorateMember { swim, timer: None };
        m.drain(now, out);
        m
    }

    fn handle_packet(&mut self, now: u64, from: usize, bytes: &[u8], out: &mut Out<u64>) -> bool {
        let ok = self.swim.handle_packet(Instant::from_nanos(now), addr_of(from), bytes).is_ok();
        self.drain(now, out);
        ok
    }

    fn handle_timer(&mut self, now: u64, at: u64, out: &mut Out<u64>) -> Option<bool> {
        if self.timer != Some(at) {
            return None;
        }
        self.timer = None;
        self.swim.handle_timeout(Instant::from_nanos(now));
        self.drain(now, out);
        Some(true)
    }

    fn live_members(&self) -> usize {
        self.swim.live_members()
    }

    fn sees_alive(&self, idx: usize) -> bool {
        self.swim
            .member(NodeId(idx as u64 + 1))
            .is_some_and(|m| matches!(m.version.state, State::Alive | State::Suspect))
    }
}

/// Runs `sc` again and again until the runs add up to `min_cpu_ns` of CPU (at most 1,000
/// runs), so that small clusters, whose runs take milliseconds, are timed over enough work
/// (the kernel's per-thread CPU counter can lag by a scheduler tick); reports the mean CPU
/// time per run. Every repetition must have the same outcome.
pub fn measure<P: Peer>(sc: Scenario, min_cpu_ns: u64) -> Report {
    let wall = std::time::Instant::now();
    let cpu0 = cpu_now_ns(wall);
    let first = run::<P>(sc);
    let mut runs = 1;
    while cpu_now_ns(wall).saturating_sub(cpu0) < min_cpu_ns && runs < 1_000 {
        let again = run::<P>(sc);
        assert!(again.same_outcome(&first), "{}: a repeated run differs: the harness is not deterministic", P::NAME);
        runs += 1;
    }
    let cpu_ns = cpu_now_ns(wall).saturating_sub(cpu0) / runs;
    Report { cpu_ns, ..first }
}

/// The grid to run, from the environment (see the module docs).
fn grid() -> (Vec<usize>, Vec<f64>, u64, u64, u64) {
    fn list<T: std::str::FromStr>(var: &str, default: &str) -> Vec<T> {
        let s = std::env::var(var).unwrap_or_else(|_| default.to_string());
        s.split(',').map(|x| x.trim().parse().unwrap_or_else(|_| panic!("{var}: cannot parse {x:?}"))).collect()
    }
    let members = list::<usize>("SWIM_BENCH_MEMBERS", "10,100,1000");
    let loss = list::<f64>("SWIM_BENCH_LOSS", "0,0.05,0.2");
    let secs = list::<u64>("SWIM_BENCH_SECS", "600")[0];
    let seed = list::<u64>("SWIM_BENCH_SEED", "1")[0];
    let min_cpu_s = list::<f64>("SWIM_BENCH_MIN_CPU_S", "2")[0];
    (members, loss, secs, seed, (min_cpu_s * 1e9) as u64)
}

fn ms(v: Option<u64>) -> String {
    match v {
        Some(v) if v >= 10_000 => format!("{:.1} s", v as f64 / 1000.0),
        Some(v) => format!("{v} ms"),
        None => "—".to_string(),
    }
}

/// A ratio where lower values are better: peer / Quorate, so above 1 means Quorate is better.
fn lower_better(q: f64, f: f64) -> String {
    match (q == 0.0, f == 0.0) {
        (true, true) => "equal".to_string(),
        (true, false) => "∞".to_string(),
        _ => format!("{:.2}×", f / q),
    }
}

/// A rate with three significant digits or more: `8.75 M`, `393 K`, `35.7 K`.
fn rate(x: f64) -> String {
    match x {
        x if x >= 1e6 => format!("{:.2} M", x / 1e6),
        x if x >= 1e5 => format!("{:.0} K", x / 1e3),
        x => format!("{:.1} K", x / 1e3),
    }
}

fn full_view(r: &Report) -> String {
    match r.full_view_ms {
        Some(v) => ms(Some(v)),
        None => format!("not reached in {} s", r.full_view_limit_ms / 1000),
    }
}

fn detection(r: &Report, q: f64) -> String {
    let v = ms(r.detect_quantile(q));
    match r.detect_missed() {
        0 => v,
        m => format!("{v} ({m} of {} missed)", r.detect_expected),
    }
}

/// Table rows comparing `q` (Quorate) and `f` (foca) on one configuration.
fn rows(q: &Report, f: &Report) -> String {
    let cfg = format!("n={} loss={}%", q.members, (q.loss * 100.0).round());
    let mut s = String::new();
    let mut row = |what: &str, a: String, b: String, ratio: String| {
        let _ = writeln!(s, "| {cfg}: {what} | {a} | {b} | {ratio} |");
    };
    let fv = |r: &Report| r.full_view_ms.map_or(r.full_view_limit_ms as f64 * 10.0, |v| v as f64);
    let fv_ratio = match (q.full_view_ms, f.full_view_ms) {
        (Some(_), None) => format!("> {:.1}×", q.full_view_limit_ms as f64 / fv(q).max(1.0)),
        (None, _) => "—".to_string(),
        _ => lower_better(fv(q).max(1.0), fv(f).max(1.0)),
    };
    row("full view after join", full_view(q), full_view(f), fv_ratio);
    let d = |r: &Report, x| r.detect_quantile(x).map_or(f64::INFINITY, |v| v as f64);
    for (name, x) in [("detection p50", 0.5), ("detection max", 1.0)] {
        let ratio =
            if d(q, x).is_finite() && d(f, x).is_finite() { lower_better(d(q, x), d(f, x)) } else { "—".to_string() };
        row(name, detection(q, x), detection(f, x), ratio);
    }
    let fp = |r: &Report| format!("{} ({} members)", r.false_positives, r.false_positive_members);
    row("false positives", fp(q), fp(f), lower_better(q.false_positives as f64, f.false_positives as f64));
    row(
        "msgs/member/s",
        format!("{:.2}", q.msgs_per_member_s()),
        format!("{:.2}", f.msgs_per_member_s()),
        lower_better(q.msgs_per_member_s(), f.msgs_per_member_s()),
    );
    row(
        "bytes/member/s",
        format!("{:.0}", q.bytes_per_member_s()),
        format!("{:.0}", f.bytes_per_member_s()),
        lower_better(q.bytes_per_member_s(), f.bytes_per_member_s()),
    );
    row(
        "msgs/member/s from 60 s",
        format!("{:.2}", q.steady_msgs_per_member_s()),
        format!("{:.2}", f.steady_msgs_per_member_s()),
        lower_better(q.steady_msgs_per_member_s(), f.steady_msgs_per_member_s()),
    );
    row(
        "bytes/member/s from 60 s",
        format!("{:.0}", q.steady_bytes_per_member_s()),
        format!("{:.0}", f.steady_bytes_per_member_s()),
        lower_better(q.steady_bytes_per_member_s(), f.steady_bytes_per_member_s()),
    );
    row(
        "events/CPU-s",
        rate(q.events_per_cpu_s()),
        rate(f.events_per_cpu_s()),
        format!("{:.2}×", q.events_per_cpu_s() / f.events_per_cpu_s()),
    );
    row(
        "CPU time of the run",
        format!("{:.3} s", q.cpu_ns as f64 / 1e9),
        format!("{:.3} s", f.cpu_ns as f64 / 1e9),
        lower_better(q.cpu_ns as f64, f.cpu_ns as f64),
    );
    s
}

fn summary(r: &Report) -> String {
    format!(
        "{}: members={} loss={:.2} full_view={} detect_p50={} detect_max={} missed={}/{} false_positives={} ({} members) msgs_per_member_s={:.2} bytes_per_member_s={:.0} steady_msgs_per_member_s={:.2} steady_bytes_per_member_s={:.0} events={} errors={} cpu_s={:.3} events_per_cpu_s={:.0} trace={:016x}",
        r.name,
        r.members,
        r.loss,
        full_view(r),
        ms(r.detect_quantile(0.5)),
        ms(r.detect_quantile(1.0)),
        r.detect_missed(),
        r.detect_expected,
        r.false_positives,
        r.false_positive_members,
        r.msgs_per_member_s(),
        r.bytes_per_member_s(),
        r.steady_msgs_per_member_s(),
        r.steady_bytes_per_member_s(),
        r.events,
        r.errors,
        r.cpu_ns as f64 / 1e9,
        r.events_per_cpu_s(),
        r.trace
    )
}

fn main() {
    let (members, losses, secs, seed, min_cpu_ns) = grid();
    // `SWIM_BENCH_PEERS=quorate` (or `foca`) runs one side only, for profiling; no table then.
    let peers = std::env::var("SWIM_BENCH_PEERS").unwrap_or_else(|_| "quorate,foca".to_string());
    let (quorate, foca) = (peers.contains("quorate"), peers.contains("foca"));
    let mut table = String::from("| benchmark | Quorate | foca | ratio |\n| --- | --- | --- | --- |\n");
    for &loss in &losses {
        for &n in &members {
            let sc = Scenario { members: n, loss, duration_ns: secs * SEC, seed };
            let q = quorate.then(|| measure::<QuorateMember>(sc, min_cpu_ns));
            q.iter().for_each(|r| eprintln!("{}", summary(r)));
            let f = foca.then(|| measure::<peer_foca::FocaMember>(sc, min_cpu_ns));
            f.iter().for_each(|r| eprintln!("{}", summary(r)));
            if let (Some(q), Some(f)) = (&q, &f) {
                table.push_str(&rows(q, f));
            }
        }
    }
    if quorate && foca {
        println!("{table}");
    }
}
