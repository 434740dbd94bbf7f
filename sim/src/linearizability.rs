//! Linearizability checking for key-value register histories.
//!
//! The simulator records every client request as an invocation event followed
//! (usually) by a completion event in a [`History`]. [`History::check`] decides
//! whether the recorded history is linearizable with respect to a per-key
//! register whose sequential specification is:
//!
//! * the register starts absent (`None`);
//! * `Read` returns the current value;
//! * `Write(v)` sets `Some(v)`; `Delete` sets `None`;
//! * `Cas { expected, new }` sets `Some(new)` if the current value is
//!   `Some(expected)`; otherwise the client records it as `Fail`.
//!
//! # Outcomes
//!
//! * `Ok` ops must take effect exactly once between their invocation and
//!   completion.
//! * `Fail` ops had no effect and are ignored.
//! * `Info` ops (and ops never completed) may take effect at any point after
//!   their invocation, or never. An `Info` read carries no information and is
//!   dropped.
//!
//! # Equal timestamps
//!
//! Op A precedes op B in real time only if A's completion time is *strictly*
//! less than B's invocation time. Ops that touch at the same nanosecond are
//! concurrent and may be linearized in either order. In the search this is
//! implemented by sorting call entries before return entries that carry the
//! same timestamp.
//!
//! # Algorithm
//!
//! Histories are split per key (linearizability is compositional, so each key
//! can be checked on its own), in key order. Each key is checked with the
//! Wing–Gong search with Lowe's just-in-time linearization and a memo of
//! visited configurations (as popularised by Porcupine): a doubly linked list
//! of call/return entries of `Ok` ops sorted by time; the search repeatedly
//! linearizes a pending call that is consistent with the register, lifting
//! its entries from the list, and backtracks (undoing via the list) when it
//! reaches a return entry whose op has not been linearized. The search
//! succeeds once every `Ok` op is linearized.
//!
//! `Info` ops have no return entry: they are kept in a second list and may be
//! applied whenever they were invoked no later than the earliest pending
//! return, or never. Several reductions keep them cheap, all sound:
//!
//! * `Info` ops whose resulting value is never observed (by a read result or
//!   a cas `expected`) are dropped up front.
//! * A configuration is (linearized `Ok` ops as a bitset over `u64` words,
//!   register, applied `Info` ops). Applying fewer `Info` ops is never worse,
//!   so a configuration is pruned when one with the same `Ok` set and register
//!   and a subset of its `Info` ops was already visited.
//! * `Info` ops of the same kind are interchangeable once invoked, so they are
//!   applied in invocation order.
//! * An applied `Info` op must be followed directly by an op that observes
//!   the register (read or cas); otherwise it could be dropped.
//!
//! A cheap necessary condition runs first: every value an `Ok` read returns
//! or an `Ok` cas expects must be produced by an op invoked before the reader
//! completes.
//!
//! Each per-key search is capped by a budget of visited configurations
//! ([`DEFAULT_STATE_BUDGET`]); running out is reported as
//! [`CheckError::Budget`], never as a pass.
//!
//! When a key fails, the report is shrunk: first to the smallest time cut
//! `T` such that the ops invoked by `T` (with ops completing after `T`
//! treated as in flight) are already non-linearizable (the failed search
//! yields it: the latest return any configuration got stuck at), then by
//! dropping the earliest-completing ops while the remainder is still
//! non-linearizable starting from *any* register value.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::io;

/// A register value.
pub type Value = u64;

/// Default cap on distinct configurations explored by one per-key search.
pub const DEFAULT_STATE_BUDGET: u64 = 10_000_000;

/// What a client asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Read the key's current value.
    Read,
    /// Set the key to a value.
    Write(Value),
    /// Compare-and-set: store `new` iff the key currently holds `expected`.
    Cas {
        /// Value the key must currently hold.
        expected: Value,
        /// Value stored when the comparison succeeds.
        new: Value,
    },
    /// Remove the key.
    Delete,
}

impl Op {
    /// The op's name as written in the JSON `f` field.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write(_) => "write",
            Op::Cas { .. } => "cas",
            Op::Delete => "delete",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Read => f.write_str("read"),
            Op::Write(v) => write!(f, "write({v})"),
            Op::Cas { expected, new } => write!(f, "cas({expected} -> {new})"),
            Op::Delete => f.write_str("delete"),
        }
    }
}

/// How an invocation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Completion {
    /// Applied; for a read, carries the value read (None = key absent).
    /// The payload is ignored for non-read ops.
    Ok(Option<Value>),
    /// Definitely not applied (e.g. a cas whose compare failed, or a request rejected before it reached the log).
    Fail,
    /// Unknown outcome (timeout): it may take effect at any time after its invocation, or never.
    Info,
}

/// The kind of a recorded event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A client issued a request.
    Invoke,
    /// The request was applied.
    Ok,
    /// The request was definitely not applied.
    Fail,
    /// The request's outcome is unknown.
    Info,
}

impl EventKind {
    /// The kind's name as written in the JSON `type` field.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Invoke => "invoke",
            EventKind::Ok => "ok",
            EventKind::Fail => "fail",
            EventKind::Info => "info",
        }
    }
}

/// Identifies one invocation in a [`History`] (its index in invocation order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub usize);

/// An event of the recorded history (one JSON line each).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The invocation this event belongs to.
    pub op_id: OpId,
    /// The client that issued the op.
    pub client: u64,
    /// Invocation or which kind of completion.
    pub kind: EventKind,
    /// The requested operation.
    pub op: Op,
    /// The key the op touches.
    pub key: String,
    /// For a read's `Ok` completion, the value read (`Some(None)` = absent); otherwise `None`.
    pub read_value: Option<Option<Value>>,
    /// Virtual time of the event in nanoseconds.
    pub time_ns: u64,
}

impl Event {
    /// Appends this event to `out` as one JSON object (without a newline).
    pub fn write_json(&self, out: &mut String) {
        // Writing into a String cannot fail.
        let _ = write!(out, "{{\"client\":{},\"type\":\"", self.client);
        out.push_str(self.kind.name());
        out.push_str("\",\"f\":\"");
        out.push_str(self.op.name());
        out.push_str("\",\"key\":");
        push_json_string(out, &self.key);
        out.push_str(",\"value\":");
        match &self.op {
            Op::Read => match self.read_value {
                Some(Some(v)) => {
                    let _ = write!(out, "{v}");
                }
                _ => out.push_str("null"),
            },
            Op::Write(v) => {
                let _ = write!(out, "{v}");
            }
            Op::Cas { expected, new } => {
                let _ = write!(out, "[{expected},{new}]");
            }
            Op::Delete => out.push_str("null"),
        }
        let _ = write!(out, ",\"time\":{}}}", self.time_ns);
    }

    /// This event as one JSON object (without a newline).
    pub fn to_json(&self) -> String {
        let mut s = String::new();
        self.write_json(&mut s);
        s
    }
}

/// Appends `s` as a JSON string literal.
fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// One invocation and (once known) its outcome.
#[derive(Clone, Debug)]
struct OpRecord {
    client: u64,
    key: String,
    op: Op,
    invoke_ns: u64,
    end: Option<(Completion, u64)>,
}

/// Records invocations and completions in time order.
///
/// Event times must be non-decreasing and a client may have at most one op
/// outstanding; both are asserted, since violating them is a simulator bug.
#[derive(Clone, Debug, Default)]
pub struct History {
    events: Vec<Event>,
    ops: Vec<OpRecord>,
    outstanding: BTreeMap<u64, OpId>,
}

/// Outcome of [`History::check`].
pub type CheckResult = Result<CheckStats, CheckError>;

/// Statistics of a successful check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckStats {
    /// Ops that entered the per-key searches (after dropping `Fail` ops, `Info` reads and unobservable `Info` ops).
    pub ops_checked: u64,
    /// Distinct keys in the history.
    pub keys: usize,
    /// Distinct configurations visited, summed over keys.
    pub states_explored: u64,
}

/// Why a check did not pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckError {
    /// A key's history is not linearizable.
    NotLinearizable(Violation),
    /// The search for a key ran out of its state budget; linearizability is undecided.
    Budget {
        /// The key whose search was abandoned.
        key: String,
        /// The per-search budget that was exhausted.
        budget: u64,
    },
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckError::NotLinearizable(v) => v.fmt(f),
            CheckError::Budget { key, budget } => {
                write!(f, "linearizability of key {key:?} undecided: search exceeded {budget} states")
            }
        }
    }
}

impl std::error::Error for CheckError {}

/// One op of a [`Violation`], with its outcome as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViolationOp {
    /// The op's id in the history.
    pub id: OpId,
    /// The client that issued it.
    pub client: u64,
    /// The requested operation.
    pub op: Op,
    /// Invocation time.
    pub invoke_ns: u64,
    /// Recorded outcome (`Info` if never completed).
    pub completion: Completion,
    /// Completion time, if it was completed.
    pub complete_ns: Option<u64>,
}

/// A key whose history cannot be linearized, with a small set of ops that already cannot be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The offending key.
    pub key: String,
    /// Ops (in invocation order) that admit no linearization. `Ok` ops completing after
    /// `fails_at_ns` are treated as in flight (may or may not have taken effect).
    pub ops: Vec<ViolationOp>,
    /// The earliest completion time at which the key's history stops being linearizable.
    pub fails_at_ns: u64,
    /// True if `ops` fail only from the initial absent register; false if they fail whatever value the key held.
    pub from_initial_state: bool,
}

impl Violation {
    /// Time span `(first invocation, last event)` of the reported ops, for [`History::excerpt`].
    pub fn time_range(&self) -> (u64, u64) {
        let from = self.ops.iter().map(|o| o.invoke_ns).min().unwrap_or(0);
        let to = self.ops.iter().map(|o| o.complete_ns.unwrap_or(o.invoke_ns)).max().unwrap_or(0).max(self.fails_at_ns);
        (from, to)
    }
}

/// Shrinking a violation may explore this many times the states the failing search did.
const MINIMIZE_FACTOR: u64 = 4;
/// Shrinking a violation may always explore at least this many states.
const MINIMIZE_MIN_BUDGET: u64 = 1_000_000;

/// Most ops printed by `Violation`'s `Display`.
const MAX_DISPLAY_OPS: usize = 40;

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "key {:?} is not linearizable: no linearization of these {} ops exists {} \
             (fails at t={}ns; '*' completes then, '~' completes later and is treated as in flight):",
            self.key,
            self.ops.len(),
            if self.from_initial_state {
                "from the initial (absent) state"
            } else {
                "whatever value the key held before"
            },
            self.fails_at_ns
        )?;
        for o in self.ops.iter().take(MAX_DISPLAY_OPS) {
            let (end, mark) = match (&o.completion, o.complete_ns) {
                (Completion::Ok(_), Some(t)) if t == self.fails_at_ns => (t.to_string(), '*'),
                (Completion::Ok(_), Some(t)) if t > self.fails_at_ns => (t.to_string(), '~'),
                (_, Some(t)) => (t.to_string(), ' '),
                (_, None) => ("-".to_string(), ' '),
            };
            let outcome = match (&o.completion, &o.op) {
                (Completion::Ok(Some(v)), Op::Read) => format!("ok({v})"),
                (Completion::Ok(None), Op::Read) => "ok(absent)".to_string(),
                (Completion::Ok(_), _) => "ok".to_string(),
                (Completion::Fail, _) => "fail".to_string(),
                (Completion::Info, _) => "info".to_string(),
            };
            write!(f, "\n  {mark} client {:<4} [{}, {}] {} -> {}", o.client, o.invoke_ns, end, o.op, outcome)?;
        }
        if self.ops.len() > MAX_DISPLAY_OPS {
            write!(f, "\n  ... {} more", self.ops.len() - MAX_DISPLAY_OPS)?;
        }
        Ok(())
    }
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    fn assert_time(&self, time_ns: u64) {
        if let Some(last) = self.events.last() {
            assert!(
                time_ns >= last.time_ns,
                "history events must be recorded in time order: {time_ns} < {}",
                last.time_ns
            );
        }
    }

    /// Records an invocation; returns an id to complete it with. A client has at most one op outstanding.
    pub fn invoke(&mut self, client: u64, key: &str, op: Op, time_ns: u64) -> OpId {
        self.assert_time(time_ns);
        if let Some(prev) = self.outstanding.get(&client) {
            panic!("client {client} invoked {op} on {key:?} while {prev:?} is outstanding");
        }
        let id = OpId(self.ops.len());
        self.ops.push(OpRecord { client, key: key.to_owned(), op: op.clone(), invoke_ns: time_ns, end: None });
        self.outstanding.insert(client, id);
        self.events.push(Event {
            op_id: id,
            client,
            kind: EventKind::Invoke,
            op,
            key: key.to_owned(),
            read_value: None,
            time_ns,
        });
        id
    }

    /// Records the completion of an outstanding invocation.
    pub fn complete(&mut self, id: OpId, completion: Completion, time_ns: u64) {
        self.assert_time(time_ns);
        let rec = self.ops.get_mut(id.0).expect("complete: unknown op id");
        assert!(rec.end.is_none(), "complete: {id:?} already completed");
        let (kind, read_value) = match (&completion, &rec.op) {
            (Completion::Ok(v), Op::Read) => (EventKind::Ok, Some(*v)),
            (Completion::Ok(_), _) => (EventKind::Ok, None),
            (Completion::Fail, _) => (EventKind::Fail, None),
            (Completion::Info, _) => (EventKind::Info, None),
        };
        rec.end = Some((completion, time_ns));
        let event = Event {
            op_id: id,
            client: rec.client,
            kind,
            op: rec.op.clone(),
            key: rec.key.clone(),
            read_value,
            time_ns,
        };
        self.outstanding.remove(&rec.client);
        self.events.push(event);
    }

    /// Ops still outstanding at end of run are completed as Info by this.
    pub fn finish_pending(&mut self, time_ns: u64) {
        let mut pending: Vec<OpId> = self.outstanding.values().copied().collect();
        pending.sort_unstable();
        for id in pending {
            self.complete(id, Completion::Info, time_ns);
        }
    }

    /// All recorded events in time order.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Ops invoked at or after `time_ns` that did not complete with a definite outcome (still
    /// outstanding, or `Info`): the liveness check after faults heal.
    pub fn unfinished_after(&self, time_ns: u64) -> usize {
        self.ops
            .iter()
            .filter(|r| r.invoke_ns >= time_ns && matches!(r.end, None | Some((Completion::Info, _))))
            .count()
    }

    /// Number of invocations recorded.
    pub fn len_ops(&self) -> usize {
        self.ops.len()
    }

    /// Writes one JSON object per event, newline-terminated, in event order.
    pub fn write_json_lines<W: io::Write>(&self, mut w: W) -> io::Result<()> {
        let mut line = String::new();
        for e in &self.events {
            line.clear();
            e.write_json(&mut line);
            line.push('\n');
            w.write_all(line.as_bytes())?;
        }
        w.flush()
    }

    /// Checks the whole history. Partitions per key (P-compositionality), checks each key independently.
    ///
    /// Uses [`DEFAULT_STATE_BUDGET`] per search.
    pub fn check(&self) -> CheckResult {
        self.check_with_budget(DEFAULT_STATE_BUDGET)
    }

    /// Like [`History::check`] with an explicit cap on configurations explored per search.
    ///
    /// Keys are checked in lexicographic order; the first non-linearizable key is
    /// reported. A budget exhaustion is reported only if no key is found non-linearizable.
    pub fn check_with_budget(&self, budget: u64) -> CheckResult {
        let per_key = self.partition();
        let mut stats = CheckStats { ops_checked: 0, keys: per_key.len(), states_explored: 0 };
        let mut budget_err = None;
        for (key, ops) in &per_key {
            let pruned = prune(ops);
            stats.ops_checked += pruned.len() as u64;
            match search(&pruned, Reg::Known(None), budget) {
                Outcome::Linearizable(s) => stats.states_explored += s,
                Outcome::Budget(s) => {
                    stats.states_explored += s;
                    budget_err.get_or_insert_with(|| CheckError::Budget { key: (*key).to_owned(), budget });
                }
                Outcome::NotLinearizable(s, at) => {
                    return Err(CheckError::NotLinearizable(self.minimize(key, ops, budget, s, at)));
                }
            }
        }
        match budget_err {
            Some(e) => Err(e),
            None => Ok(stats),
        }
    }

    /// Events that involve `key` with `from_ns <= time_ns <= to_ns`, in order.
    pub fn excerpt(&self, key: &str, from_ns: u64, to_ns: u64) -> Vec<&Event> {
        self.events.iter().filter(|e| e.key == key && e.time_ns >= from_ns && e.time_ns <= to_ns).collect()
    }

    /// Model ops per key, each list in invocation order. Every key appears,
    /// even if all of its ops were filtered out.
    fn partition(&self) -> BTreeMap<&str, Vec<KOp>> {
        let mut per_key: BTreeMap<&str, Vec<KOp>> = BTreeMap::new();
        for (i, rec) in self.ops.iter().enumerate() {
            let list = per_key.entry(rec.key.as_str()).or_default();
            if let Some(k) = model_op(OpId(i), rec) {
                list.push(k);
            }
        }
        per_key
    }

    /// Shrinks a failing key history to a small failing set of ops.
    ///
    /// First the smallest failing time cut `T` (ops invoked by `T`; Ok ops
    /// completing after `T` treated as in flight) is found; failure is monotone
    /// in `T`, and the failed search reports it. Then the earliest-completing
    /// Ok ops are dropped while the rest still fails from an arbitrary
    /// register value.
    ///
    /// The shrinking searches share a budget of `MINIMIZE_FACTOR` times the
    /// states the failing search needed (at least `MINIMIZE_MIN_BUDGET`, at
    /// most `budget`); a search that runs out counts as "not known to fail",
    /// which only makes the report less tight.
    fn minimize(&self, key: &str, ops: &[KOp], budget: u64, states: u64, at: FailAt) -> Violation {
        let mut remaining = states.saturating_mul(MINIMIZE_FACTOR).max(MINIMIZE_MIN_BUDGET).min(budget);
        let mut search_shared = |set: &[KOp], init: Reg| {
            let outcome = search(&prune(set), init, remaining);
            let used = match outcome {
                Outcome::Linearizable(n) | Outcome::NotLinearizable(n, _) | Outcome::Budget(n) => n,
            };
            remaining = remaining.saturating_sub(used);
            outcome
        };
        let fails_at_ns = match at {
            FailAt::Exact(t) => t,
            FailAt::AtMost(t) => {
                // The cut just before `t` passes the pre-check; search it.
                match ops.iter().filter_map(|o| o.ret).filter(|&r| r < t).max() {
                    Some(before) => match search_shared(&cut_at(ops, before), Reg::Known(None)) {
                        Outcome::NotLinearizable(_, FailAt::Exact(e)) => e,
                        _ => t,
                    },
                    None => t,
                }
            }
        };
        let mut fails = |set: &[KOp], init: Reg| matches!(search_shared(set, init), Outcome::NotLinearizable(..));
        let prefix = cut_at(ops, fails_at_ns);

        // Drop the earliest-completing Ok ops while the rest still fails from
        // an arbitrary register value. Dropping 0 uses the real initial state
        // (fails); dropping all Ok ops leaves only Info ops (passes).
        let mut order: Vec<usize> = (0..prefix.len()).filter(|&i| prefix[i].ret.is_some()).collect();
        order.sort_by_key(|&i| (prefix[i].ret, prefix[i].id));
        let without_first = |j: usize| -> Vec<KOp> {
            let dropped: BTreeSet<usize> = order[..j].iter().copied().collect();
            (0..prefix.len()).filter(|i| !dropped.contains(i)).map(|i| prefix[i].clone()).collect()
        };
        let (mut lo, mut hi) = (0usize, order.len());
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if fails(&without_first(mid), Reg::Unknown) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        // Info ops invoked before the window's first Ok op are left out of the
        // report (removing Info ops never makes a history linearizable).
        let window = without_first(lo);
        let start = window.iter().filter(|o| o.ret.is_some()).map(|o| o.call).min().unwrap_or(0);
        let window: Vec<KOp> = window.into_iter().filter(|o| o.ret.is_some() || o.call >= start).collect();
        let window = prune(&window);
        let ops = window
            .iter()
            .map(|k| {
                let rec = &self.ops[k.id.0];
                let (completion, complete_ns) = match &rec.end {
                    Some((c, t)) => (c.clone(), Some(*t)),
                    None => (Completion::Info, None),
                };
                ViolationOp {
                    id: k.id,
                    client: rec.client,
                    op: rec.op.clone(),
                    invoke_ns: rec.invoke_ns,
                    completion,
                    complete_ns,
                }
            })
            .collect();
        Violation { key: key.to_owned(), ops, fails_at_ns, from_initial_state: lo == 0 }
    }
}

// ---------------------------------------------------------------------------
// Model

/// An op as the checker sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum MKind {
    /// A read that returned this value (`Info` reads are dropped).
    Read(Option<Value>),
    Write(Value),
    Cas(Value, Value),
    Delete,
}

impl MKind {
    /// The register value after this op takes effect, if it does not depend on the prior value.
    fn output(self) -> Option<Option<Value>> {
        match self {
            MKind::Read(_) => None,
            MKind::Write(v) => Some(Some(v)),
            MKind::Cas(_, n) => Some(Some(n)),
            MKind::Delete => Some(None),
        }
    }
}

/// A per-key op: `ret == None` means it may take effect any time after `call`, or never.
#[derive(Clone, Debug, PartialEq, Eq)]
struct KOp {
    id: OpId,
    kind: MKind,
    call: u64,
    ret: Option<u64>,
}

fn model_op(id: OpId, rec: &OpRecord) -> Option<KOp> {
    let kind = |read: Option<Value>| match rec.op {
        Op::Read => MKind::Read(read),
        Op::Write(v) => MKind::Write(v),
        Op::Cas { expected, new } => MKind::Cas(expected, new),
        Op::Delete => MKind::Delete,
    };
    match &rec.end {
        Some((Completion::Fail, _)) => None,
        Some((Completion::Ok(v), t)) => Some(KOp { id, kind: kind(*v), call: rec.invoke_ns, ret: Some(*t) }),
        Some((Completion::Info, _)) | None => match rec.op {
            Op::Read => None,
            _ => Some(KOp { id, kind: kind(None), call: rec.invoke_ns, ret: None }),
        },
    }
}

/// The history cut at time `t`: ops invoked by `t`; ops completing after `t`
/// become in-flight (`Info`), and such reads are dropped.
fn cut_at(ops: &[KOp], t: u64) -> Vec<KOp> {
    ops.iter()
        .filter(|o| o.call <= t)
        .filter_map(|o| match o.ret {
            Some(r) if r > t => match o.kind {
                MKind::Read(_) => None,
                _ => Some(KOp { ret: None, ..o.clone() }),
            },
            _ => Some(o.clone()),
        })
        .collect()
}

/// Drops `Info` ops whose resulting value no remaining op can observe
/// (iterated to a fixpoint). Order is preserved.
fn prune(ops: &[KOp]) -> Vec<KOp> {
    let mut keep = vec![true; ops.len()];
    loop {
        let mut observed: BTreeSet<Option<Value>> = BTreeSet::new();
        for (o, _) in ops.iter().zip(&keep).filter(|(_, &k)| k) {
            match o.kind {
                MKind::Read(v) => {
                    observed.insert(v);
                }
                MKind::Cas(e, _) => {
                    observed.insert(Some(e));
                }
                _ => {}
            }
        }
        let mut changed = false;
        for (o, k) in ops.iter().zip(keep.iter_mut()) {
            if *k && o.ret.is_none() {
                if let Some(out) = o.kind.output() {
                    if !observed.contains(&out) {
                        *k = false;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    ops.iter().zip(&keep).filter(|(_, &k)| k).map(|(o, _)| o.clone()).collect()
}

/// Register state during the search.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reg {
    /// Any value (used when shrinking a violation to a window).
    Unknown,
    Known(Option<Value>),
}

impl Reg {
    fn encode(self) -> (u64, u64) {
        match self {
            Reg::Known(None) => (0, 0),
            Reg::Known(Some(v)) => (1, v),
            Reg::Unknown => (2, 0),
        }
    }
}

/// Applies `kind` to `reg`; `None` if the op cannot take effect in this state.
/// (An `Info` cas whose compare fails is equivalent to leaving it out.)
fn step(reg: Reg, kind: MKind) -> Option<Reg> {
    match kind {
        MKind::Read(r) => match reg {
            Reg::Unknown => Some(Reg::Known(r)),
            Reg::Known(x) => (x == r).then_some(reg),
        },
        MKind::Write(v) => Some(Reg::Known(Some(v))),
        MKind::Delete => Some(Reg::Known(None)),
        MKind::Cas(e, n) => match reg {
            Reg::Known(x) if x != Some(e) => None,
            _ => Some(Reg::Known(Some(n))),
        },
    }
}

// ---------------------------------------------------------------------------
// Search

/// Result of one search; each variant carries the configurations visited.
enum Outcome {
    Linearizable(u64),
    NotLinearizable(u64, FailAt),
    Budget(u64),
}

/// Where a failed search locates the failure.
#[derive(Clone, Copy)]
enum FailAt {
    /// The smallest failing time cut (see `History::minimize`).
    Exact(u64),
    /// The provenance pre-check failed for an op completing at this time, so
    /// the cut there fails; an earlier cut may fail too.
    AtMost(u64),
}

/// Set of linearized ops with a canonical compact form: the index of the first
/// word that is not all ones and the words from there to the last non-zero one.
struct Bits {
    words: Vec<u64>,
    /// Lower bound on the first non-full word.
    lo: usize,
    /// Upper bound on the last non-zero word.
    hi: usize,
}

impl Bits {
    fn new(n: usize) -> Self {
        Bits { words: vec![0; n.div_ceil(64)], lo: 0, hi: 0 }
    }

    fn set(&mut self, i: usize) {
        let w = i / 64;
        self.words[w] |= 1 << (i % 64);
        self.hi = self.hi.max(w);
    }

    fn clear(&mut self, i: usize) {
        let w = i / 64;
        self.words[w] &= !(1 << (i % 64));
        self.lo = self.lo.min(w);
    }

    fn compact(&mut self) -> (usize, &[u64]) {
        let n = self.words.len();
        while self.lo < n && self.words[self.lo] == u64::MAX {
            self.lo += 1;
        }
        if self.lo == n {
            return (n, &[]);
        }
        self.hi = self.hi.max(self.lo);
        while self.hi > self.lo && self.words[self.hi] == 0 {
            self.hi -= 1;
        }
        (self.lo, &self.words[self.lo..=self.hi])
    }
}

const OFFSET_BITS: u32 = 48;
const OFFSET_MASK: u64 = (1 << OFFSET_BITS) - 1;
/// Words of an interner entry before its bitset words: `[n_words, header, value, id]`.
const ENTRY_HEAD: usize = 4;

/// Interns `(set of linearized Ok ops, register)` keys to dense ids:
/// open addressing over an arena of entries `[n_words, header, value, id,
/// words...]`. Slots hold a 16-bit hash fingerprint and `offset + 1`
/// (0 = empty). Never iterated, so nothing depends on its order.
struct Interner {
    slots: Vec<u64>,
    arena: Vec<u64>,
    len: usize,
}

fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

fn hash_words<'a>(words: impl Iterator<Item = &'a u64>) -> u64 {
    let mut h = 0x9e37_79b9_7f4a_7c15u64;
    for &w in words {
        h = (h.rotate_left(26) ^ w).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    mix(h)
}

impl Interner {
    fn new() -> Self {
        Interner { slots: vec![0; 1 << 10], arena: Vec::new(), len: 0 }
    }

    /// Looks up `(bits, reg, flag)`; adds it if `insert`. Returns the id and
    /// whether it was newly added, or `None` if absent and not inserted.
    fn lookup(&mut self, bits: &mut Bits, reg: Reg, flag: bool, insert: bool) -> Option<(usize, bool)> {
        if insert && (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow();
        }
        let (lo, words) = bits.compact();
        let (tag, value) = reg.encode();
        let header = ((lo as u64) << 3) | (u64::from(flag) << 2) | tag;
        let head = [words.len() as u64, header, value];
        let h = hash_words(head.iter().chain(words));
        let fp = h >> OFFSET_BITS;
        let mask = self.slots.len() - 1;
        let mut idx = h as usize & mask;
        loop {
            let s = self.slots[idx];
            if s == 0 {
                if !insert {
                    return None;
                }
                let off = self.arena.len() as u64;
                assert!(off < OFFSET_MASK, "state cache arena overflow");
                let id = self.len;
                self.arena.extend_from_slice(&head);
                self.arena.push(id as u64);
                self.arena.extend_from_slice(words);
                self.slots[idx] = (fp << OFFSET_BITS) | (off + 1);
                self.len += 1;
                return Some((id, true));
            }
            if s >> OFFSET_BITS == fp {
                let off = ((s & OFFSET_MASK) - 1) as usize;
                let body = off + ENTRY_HEAD;
                if self.arena[off..off + 3] == head && self.arena[body..body + words.len()] == *words {
                    return Some((self.arena[off + 3] as usize, false));
                }
            }
            idx = (idx + 1) & mask;
        }
    }

    fn grow(&mut self) {
        let cap = self.slots.len() * 2;
        let mask = cap - 1;
        let mut slots = vec![0u64; cap];
        let mut off = 0;
        while off < self.arena.len() {
            let end = off + ENTRY_HEAD + self.arena[off] as usize;
            let h = hash_words(self.arena[off..off + 3].iter().chain(&self.arena[off + ENTRY_HEAD..end]));
            let mut idx = h as usize & mask;
            while slots[idx] != 0 {
                idx = (idx + 1) & mask;
            }
            slots[idx] = ((h >> OFFSET_BITS) << OFFSET_BITS) | (off as u64 + 1);
            off = end;
        }
        self.slots = slots;
    }
}

/// Visited configurations. A configuration is (linearized Ok ops, register,
/// applied Info ops, whether the last move applied an Info op). Applying
/// fewer Info ops is never worse (an Info op may be left out), and a
/// configuration whose last move was an Info op is restricted in its next
/// move, so a configuration is pruned if one with the same Ok set and
/// register, a *subset* of its applied Info ops and a flag that is not more
/// restrictive was visited. Per (Ok set, register, flag) the minimal Info
/// sets are kept as an antichain of sorted index lists.
struct Visited {
    keys: Interner,
    /// Per key id, compact Info sets: `[first non-full word, words...]`.
    info_sets: Vec<Vec<Box<[u64]>>>,
    count: u64,
}

/// Word `k` of a compact set `[lo, words...]` (all ones below `lo`, zero past the end).
fn compact_word(set: &[u64], k: usize) -> u64 {
    let lo = set[0] as usize;
    if k < lo {
        u64::MAX
    } else {
        set.get(1 + k - lo).copied().unwrap_or(0)
    }
}

/// Whether compact set `a` is a subset of compact set `b`.
fn compact_subset(a: &[u64], b: &[u64]) -> bool {
    // Words of `a` below its `lo` are full, so `b` must be full there too.
    let a_lo = a[0] as usize;
    (0..a_lo).all(|k| compact_word(b, k) == u64::MAX)
        && a[1..].iter().enumerate().all(|(i, &w)| w & !compact_word(b, a_lo + i) == 0)
}

impl Visited {
    fn new() -> Self {
        Visited { keys: Interner::new(), info_sets: Vec::new(), count: 0 }
    }

    /// Records the configuration; false if it is dominated by a visited one.
    fn visit(&mut self, ok: &mut Bits, reg: Reg, after_info: bool, info: &mut Bits) -> bool {
        let (lo, words) = info.compact();
        let mut cur = Vec::with_capacity(1 + words.len());
        cur.push(lo as u64);
        cur.extend_from_slice(words);
        let dominated = |sets: &[Box<[u64]>]| sets.iter().any(|s| compact_subset(s, &cur));
        if after_info {
            if let Some((id, _)) = self.keys.lookup(ok, reg, false, false) {
                if dominated(&self.info_sets[id]) {
                    return false;
                }
            }
        }
        let Some((id, new)) = self.keys.lookup(ok, reg, after_info, true) else {
            unreachable!("insert always yields an id")
        };
        if new {
            self.info_sets.push(vec![cur.into_boxed_slice()]);
        } else {
            let sets = &mut self.info_sets[id];
            if dominated(sets) {
                return false;
            }
            sets.retain(|s| !compact_subset(&cur, s));
            sets.push(cur.into_boxed_slice());
        }
        self.count += 1;
        true
    }
}

/// Whether an op's effect depends on the register's value.
fn observes(kind: MKind) -> bool {
    matches!(kind, MKind::Read(_) | MKind::Cas(..))
}

const NIL: usize = usize::MAX;
const HEAD: usize = 0;

/// A choice on the search stack.
#[derive(Clone, Copy)]
enum Choice {
    /// Linearized the Ok op with this index into `oks`.
    Ok(usize),
    /// Applied the Info op at this position of `infos`, while Info ops invoked
    /// up to `bound` were candidates.
    Info(usize, u64),
}

/// Where the candidate scan is.
#[derive(Clone, Copy)]
enum Cursor {
    /// At this node of the Ok entry list.
    Main(usize),
    /// At this node of the unapplied Info list, with candidates invoked up to `bound`.
    Info(usize, u64),
}

/// Necessary condition: every value an Ok read returns or an Ok cas expects
/// is the initial value or is produced by an op invoked no later than the
/// reader completes. Cheaply rejects e.g. reads of values never written.
/// Returns the earliest completion time of an op violating it.
fn unproduced(ops: &[KOp], initial: Option<Value>) -> Option<u64> {
    let mut first_producer: BTreeMap<Option<Value>, u64> = BTreeMap::new();
    first_producer.insert(initial, 0);
    for o in ops {
        if let Some(v) = o.kind.output() {
            let t = first_producer.entry(v).or_insert(o.call);
            *t = (*t).min(o.call);
        }
    }
    ops.iter()
        .filter_map(|o| {
            let needed = match o.kind {
                MKind::Read(v) => v,
                MKind::Cas(e, _) => Some(e),
                _ => return None,
            };
            let ret = o.ret?;
            match first_producer.get(&needed) {
                Some(&t) if t <= ret => None,
                _ => Some(ret),
            }
        })
        .min()
}

/// Just-in-time linearization search over one key's ops.
///
/// Ok ops live in a doubly linked list of call/return entries sorted by time
/// (calls before returns at equal times, then by index). The candidates in
/// a configuration are the Ok calls before the first return entry, then the
/// unapplied Info ops invoked no later than that return; Ok candidates are
/// tried first so that configurations with few Info ops applied are visited
/// early and dominate later ones.
///
/// Right after an Info op is applied, only ops that observe the register
/// (reads and cas) may follow: an applied Info op followed by a write, a
/// delete or nothing can be removed from any linearization, so some valid
/// linearization always has this shape.
fn search(ops: &[KOp], initial: Reg, budget: u64) -> Outcome {
    let oks: Vec<usize> = (0..ops.len()).filter(|&i| ops[i].ret.is_some()).collect();
    if oks.is_empty() {
        return Outcome::Linearizable(0);
    }
    if let Reg::Known(init) = initial {
        if let Some(t) = unproduced(ops, init) {
            return Outcome::NotLinearizable(0, FailAt::AtMost(t));
        }
    }
    let mut infos: Vec<usize> = (0..ops.len()).filter(|&i| ops[i].ret.is_none()).collect();
    infos.sort_by_key(|&i| (ops[i].call, i));
    // Info ops of the same kind are interchangeable once both are invoked, so
    // an Info op is only applied if the previous one of its kind already is
    // (applied Info ops then form a prefix of each kind's invocation order).
    let mut prev_same = vec![NIL; infos.len()];
    let mut last_of_kind: BTreeMap<MKind, usize> = BTreeMap::new();
    for (p, &i) in infos.iter().enumerate() {
        if let Some(q) = last_of_kind.insert(ops[i].kind, p) {
            prev_same[p] = q;
        }
    }

    let mut entries: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * oks.len());
    for (j, &i) in oks.iter().enumerate() {
        entries.push((ops[i].call, false, j));
        entries.push((ops[i].ret.unwrap_or(u64::MAX), true, j));
    }
    entries.sort_unstable();
    let m = entries.len();
    // Node 0 is the head sentinel; entry k is node k + 1.
    let mut next: Vec<usize> = (1..=m + 1).collect();
    next[m] = NIL;
    let mut prev: Vec<usize> = (0..=m).map(|k| k.wrapping_sub(1)).collect();
    let mut node_op = vec![0usize; m + 1];
    let mut node_ret = vec![false; m + 1];
    let mut node_time = vec![0u64; m + 1];
    let mut call_node = vec![NIL; oks.len()];
    let mut ret_node = vec![NIL; oks.len()];
    for (k, &(t, is_ret, j)) in entries.iter().enumerate() {
        node_op[k + 1] = j;
        node_ret[k + 1] = is_ret;
        node_time[k + 1] = t;
        if is_ret {
            ret_node[j] = k + 1;
        } else {
            call_node[j] = k + 1;
        }
    }

    fn unlink(next: &mut [usize], prev: &mut [usize], x: usize) {
        let (p, n) = (prev[x], next[x]);
        next[p] = n;
        if n != NIL {
            prev[n] = p;
        }
    }
    fn relink(next: &mut [usize], prev: &mut [usize], x: usize) {
        let (p, n) = (prev[x], next[x]);
        next[p] = x;
        if n != NIL {
            prev[n] = x;
        }
    }

    // Unapplied Info ops as a linked list in invocation order: node p + 1 is
    // `infos[p]`, node 0 is the head.
    let mut info_next: Vec<usize> = (1..=infos.len() + 1).collect();
    info_next[infos.len()] = NIL;
    let mut info_prev: Vec<usize> = (0..=infos.len()).map(|k| k.wrapping_sub(1)).collect();

    let mut ok_bits = Bits::new(oks.len());
    let mut info_bits = Bits::new(infos.len());
    let mut applied = vec![false; infos.len()];
    let mut visited = Visited::new();
    let mut stack: Vec<(Choice, Reg)> = Vec::new();
    let mut reg = initial;
    let mut done = 0usize;
    let mut cur = Cursor::Main(next[HEAD]);
    // Latest return entry at which some configuration got stuck.
    let mut stuck = HEAD;
    loop {
        // Next candidate, or backtrack if there is none.
        let choice = match cur {
            Cursor::Main(node) if node != NIL && !node_ret[node] => Choice::Ok(node_op[node]),
            Cursor::Main(node) => {
                // Every unlinearized Ok op has a return entry, so `node` is the
                // earliest pending return.
                let bound = if node == NIL { u64::MAX } else { node_time[node] };
                if node != NIL {
                    stuck = stuck.max(node);
                }
                cur = Cursor::Info(info_next[HEAD], bound);
                continue;
            }
            Cursor::Info(node, bound) if node != NIL && ops[infos[node - 1]].call <= bound => {
                let p = node - 1;
                if prev_same[p] != NIL && !applied[prev_same[p]] {
                    cur = Cursor::Info(info_next[node], bound);
                    continue;
                }
                Choice::Info(p, bound)
            }
            Cursor::Info(..) => {
                let Some((choice, old)) = stack.pop() else {
                    // Some visited configuration linearized every op completing
                    // before `stuck`, and none got past it: the smallest failing cut
                    // is its time.
                    return Outcome::NotLinearizable(visited.count, FailAt::Exact(node_time[stuck]));
                };
                reg = old;
                cur = match choice {
                    Choice::Ok(j) => {
                        ok_bits.clear(j);
                        relink(&mut next, &mut prev, ret_node[j]);
                        relink(&mut next, &mut prev, call_node[j]);
                        done -= 1;
                        Cursor::Main(next[call_node[j]])
                    }
                    Choice::Info(p, bound) => {
                        applied[p] = false;
                        info_bits.clear(p);
                        relink(&mut info_next, &mut info_prev, p + 1);
                        Cursor::Info(info_next[p + 1], bound)
                    }
                };
                continue;
            }
        };
        let kind = match choice {
            Choice::Ok(j) => ops[oks[j]].kind,
            Choice::Info(p, _) => ops[infos[p]].kind,
        };
        let after_info = matches!(stack.last(), Some((Choice::Info(..), _)));
        let new_reg = if after_info && !observes(kind) { None } else { step(reg, kind) };
        if let Some(new_reg) = new_reg {
            match choice {
                Choice::Ok(j) => ok_bits.set(j),
                Choice::Info(p, _) => info_bits.set(p),
            }
            let now_after_info = matches!(choice, Choice::Info(..));
            if visited.visit(&mut ok_bits, new_reg, now_after_info, &mut info_bits) {
                if visited.count > budget {
                    return Outcome::Budget(visited.count);
                }
                stack.push((choice, reg));
                reg = new_reg;
                match choice {
                    Choice::Ok(j) => {
                        unlink(&mut next, &mut prev, call_node[j]);
                        unlink(&mut next, &mut prev, ret_node[j]);
                        done += 1;
                        if done == oks.len() {
                            return Outcome::Linearizable(visited.count);
                        }
                    }
                    Choice::Info(p, _) => {
                        applied[p] = true;
                        unlink(&mut info_next, &mut info_prev, p + 1);
                    }
                }
                cur = Cursor::Main(next[HEAD]);
                continue;
            }
            match choice {
                Choice::Ok(j) => ok_bits.clear(j),
                Choice::Info(p, _) => info_bits.clear(p),
            }
        }
        cur = match cur {
            Cursor::Main(node) => Cursor::Main(next[node]),
            Cursor::Info(node, bound) => Cursor::Info(info_next[node], bound),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NEVER: Value = 1 << 60;

    /// `(client, key, op, invoke, completion, complete)`; `complete == None` leaves it pending.
    type Spec<'a> = (u64, &'a str, Op, u64, Completion, Option<u64>);

    /// Builds a history from op specs, feeding events in time order (a
    /// completion at `t` goes before invocations at `t`, unless it is the
    /// completion of an op invoked at `t`).
    fn hist(specs: &[Spec<'_>]) -> History {
        let mut evs: Vec<(u64, u8, usize)> = Vec::new();
        for (i, s) in specs.iter().enumerate() {
            evs.push((s.3, 1, i));
            if let Some(t) = s.5 {
                evs.push((t, if t == s.3 { 2 } else { 0 }, i));
            }
        }
        evs.sort_unstable();
        let mut h = History::new();
        let mut ids = vec![None; specs.len()];
        for (t, tier, i) in evs {
            let s = &specs[i];
            if tier == 1 {
                ids[i] = Some(h.invoke(s.0, s.1, s.2.clone(), t));
            } else {
                h.complete(ids[i].unwrap(), s.4.clone(), t);
            }
        }
        h
    }

    fn ok(v: Option<Value>) -> Completion {
        Completion::Ok(v)
    }

    fn cas(expected: Value, new: Value) -> Op {
        Op::Cas { expected, new }
    }

    fn assert_lin(specs: &[Spec<'_>]) {
        let h = hist(specs);
        if let Err(e) = h.check() {
            panic!("expected linearizable, got: {e}");
        }
        assert_eq!(h.check().is_ok(), brute_history(&h));
    }

    fn assert_not_lin(specs: &[Spec<'_>]) -> Violation {
        let h = hist(specs);
        assert!(!brute_history(&h), "brute force disagrees");
        match h.check() {
            Err(CheckError::NotLinearizable(v)) => v,
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    // ---- brute-force reference (definition of linearizability, no pruning) ----

    fn brute(ops: &[KOp], reg: Reg) -> bool {
        let mut placed = vec![false; ops.len()];
        fn go(ops: &[KOp], placed: &mut [bool], reg: Reg) -> bool {
            if ops.iter().zip(placed.iter()).all(|(o, &p)| p || o.ret.is_none()) {
                return true;
            }
            for x in 0..ops.len() {
                if placed[x] {
                    continue;
                }
                // x may go next unless some unplaced Ok op completed strictly before x's call.
                let blocked = ops
                    .iter()
                    .zip(placed.iter())
                    .enumerate()
                    .any(|(y, (o, &p))| y != x && !p && o.ret.is_some_and(|r| r < ops[x].call));
                if blocked {
                    continue;
                }
                if let Some(r) = step(reg, ops[x].kind) {
                    placed[x] = true;
                    let found = go(ops, placed, r);
                    placed[x] = false;
                    if found {
                        return true;
                    }
                }
            }
            false
        }
        go(ops, &mut placed, reg)
    }

    /// Brute force with an arbitrary initial value (tries every relevant one).
    fn brute_any_initial(ops: &[KOp]) -> bool {
        let mut candidates = vec![None, Some(NEVER + 1)];
        for o in ops {
            match o.kind {
                MKind::Read(v) => candidates.push(v),
                MKind::Write(v) | MKind::Cas(v, _) => candidates.push(Some(v)),
                MKind::Delete => {}
            }
        }
        candidates.iter().any(|&c| brute(ops, Reg::Known(c)))
    }

    fn brute_history(h: &History) -> bool {
        h.partition().values().all(|ops| brute(ops, Reg::Known(None)))
    }

    /// The ops a violation claims are non-linearizable, as the checker saw them.
    fn violation_kops(h: &History, v: &Violation) -> Vec<KOp> {
        let ops: Vec<KOp> = v.ops.iter().filter_map(|o| model_op(o.id, &h.ops[o.id.0])).collect();
        cut_at(&ops, v.fails_at_ns)
    }

    // ---- hand-written linearizable histories ----

    #[test]
    fn empty_history_passes() {
        let s = History::new().check().unwrap();
        assert_eq!((s.keys, s.ops_checked), (0, 0));
    }

    #[test]
    fn concurrent_writes_read_sees_either() {
        for seen in [1, 2] {
            assert_lin(&[
                (1, "k", Op::Write(1), 0, ok(None), Some(10)),
                (2, "k", Op::Write(2), 1, ok(None), Some(11)),
                (3, "k", Op::Read, 20, ok(Some(seen)), Some(30)),
            ]);
        }
    }

    #[test]
    fn read_concurrent_with_write_sees_old_or_new() {
        for seen in [None, Some(1)] {
            assert_lin(&[(1, "k", Op::Write(1), 0, ok(None), Some(10)), (2, "k", Op::Read, 5, ok(seen), Some(6))]);
        }
    }

    #[test]
    fn cas_chain_passes() {
        assert_lin(&[
            (1, "k", Op::Write(1), 0, ok(None), Some(10)),
            (2, "k", cas(1, 2), 11, ok(None), Some(20)),
            (3, "k", cas(1, 3), 12, Completion::Fail, Some(21)),
            (1, "k", cas(2, 4), 22, ok(None), Some(30)),
            (2, "k", Op::Read, 31, ok(Some(4)), Some(40)),
        ]);
    }

    #[test]
    fn concurrent_cas_pair_one_wins() {
        assert_lin(&[
            (1, "k", Op::Write(1), 0, ok(None), Some(5)),
            (2, "k", cas(1, 2), 10, ok(None), Some(20)),
            (3, "k", cas(1, 3), 10, Completion::Fail, Some(20)),
            (4, "k", cas(2, 5), 12, ok(None), Some(22)),
            (1, "k", Op::Read, 30, ok(Some(5)), Some(31)),
        ]);
    }

    #[test]
    fn delete_then_read_absent() {
        assert_lin(&[
            (1, "k", Op::Read, 0, ok(None), Some(1)),
            (1, "k", Op::Write(7), 2, ok(None), Some(3)),
            (2, "k", Op::Read, 4, ok(Some(7)), Some(5)),
            (2, "k", Op::Delete, 6, ok(None), Some(7)),
            (3, "k", Op::Read, 8, ok(None), Some(9)),
        ]);
    }

    #[test]
    fn info_write_becomes_visible_later() {
        assert_lin(&[
            (1, "k", Op::Write(1), 0, Completion::Info, Some(10)),
            (2, "k", Op::Read, 20, ok(None), Some(30)),
            (2, "k", Op::Read, 40, ok(Some(1)), Some(50)),
            (3, "k", Op::Read, 60, ok(Some(1)), Some(70)),
        ]);
    }

    #[test]
    fn info_write_never_visible() {
        assert_lin(&[
            (1, "k", Op::Write(1), 0, Completion::Info, Some(10)),
            (2, "k", Op::Read, 20, ok(None), Some(30)),
            (2, "k", Op::Write(2), 40, ok(None), Some(50)),
            (3, "k", Op::Read, 60, ok(Some(2)), Some(70)),
        ]);
    }

    #[test]
    fn pending_and_info_cas_may_apply() {
        let mut h = hist(&[
            (1, "k", Op::Write(1), 0, ok(None), Some(1)),
            (2, "k", cas(1, 2), 5, Completion::Info, None),
            (3, "k", Op::Read, 10, ok(Some(2)), Some(11)),
        ]);
        h.finish_pending(100);
        assert!(h.check().is_ok());
        assert_eq!(h.events().last().unwrap().kind, EventKind::Info);
    }

    #[test]
    fn fail_and_info_reads_are_ignored() {
        assert_lin(&[
            (1, "k", Op::Write(1), 0, ok(None), Some(1)),
            (2, "k", Op::Read, 2, Completion::Fail, Some(3)),
            (2, "k", Op::Read, 4, Completion::Info, Some(5)),
            (3, "k", Op::Write(9), 6, Completion::Fail, Some(7)),
            (1, "k", Op::Read, 8, ok(Some(1)), Some(9)),
        ]);
    }

    #[test]
    fn touching_ops_are_concurrent() {
        // Write completes at 10, read invoked at 10: concurrent, so the read may
        // precede the write and see the key absent.
        assert_lin(&[(1, "k", Op::Write(1), 0, ok(None), Some(10)), (2, "k", Op::Read, 10, ok(None), Some(20))]);
        // One nanosecond later the write strictly precedes the read.
        assert_not_lin(&[(1, "k", Op::Write(1), 0, ok(None), Some(10)), (2, "k", Op::Read, 11, ok(None), Some(20))]);
    }

    #[test]
    fn keys_are_independent() {
        // Per key it is fine; a single global register would reject this.
        let h = hist(&[
            (1, "a", Op::Write(1), 0, ok(None), Some(1)),
            (2, "b", Op::Write(2), 2, ok(None), Some(3)),
            (1, "a", Op::Read, 4, ok(Some(1)), Some(5)),
            (2, "b", Op::Read, 6, ok(Some(2)), Some(7)),
        ]);
        let s = h.check().unwrap();
        assert_eq!((s.keys, s.ops_checked), (2, 4));
    }

    // ---- hand-written non-linearizable histories ----

    #[test]
    fn stale_read_after_completed_write_fails() {
        let v = assert_not_lin(&[
            (1, "k", Op::Write(1), 0, ok(None), Some(10)),
            (2, "k", Op::Read, 11, ok(Some(1)), Some(20)),
            (1, "k", Op::Write(2), 21, ok(None), Some(30)),
            (2, "k", Op::Read, 31, ok(Some(1)), Some(40)),
        ]);
        assert_eq!(v.key, "k");
        assert_eq!(v.fails_at_ns, 40);
        // Shrunk to "write(2) then read 1", from any prior value.
        let ids: Vec<usize> = v.ops.iter().map(|o| o.id.0).collect();
        assert_eq!(ids, vec![2, 3]);
        assert!(!v.from_initial_state);
    }

    #[test]
    fn read_of_unwritten_value_fails() {
        let v = assert_not_lin(&[
            (1, "k", Op::Write(1), 0, ok(None), Some(10)),
            (2, "k", Op::Read, 5, ok(Some(42)), Some(20)),
        ]);
        assert_eq!(v.fails_at_ns, 20);
        let v = assert_not_lin(&[(2, "k", Op::Read, 5, ok(Some(42)), Some(20))]);
        assert!(v.from_initial_state);
    }

    #[test]
    fn two_cas_from_same_expected_both_ok_fails() {
        assert_not_lin(&[
            (1, "k", Op::Write(1), 0, ok(None), Some(10)),
            (2, "k", cas(1, 2), 20, ok(None), Some(30)),
            (3, "k", cas(1, 3), 21, ok(None), Some(31)),
        ]);
    }

    #[test]
    fn new_then_old_value_sequentially_fails() {
        assert_not_lin(&[
            (1, "k", Op::Write(1), 0, ok(None), Some(10)),
            (2, "k", Op::Write(2), 5, ok(None), Some(50)),
            (3, "k", Op::Read, 20, ok(Some(2)), Some(25)),
            (3, "k", Op::Read, 30, ok(Some(1)), Some(35)),
        ]);
    }

    #[test]
    fn info_write_cannot_take_effect_before_invocation() {
        assert_not_lin(&[
            (1, "k", Op::Read, 0, ok(Some(5)), Some(10)),
            (2, "k", Op::Write(5), 11, Completion::Info, Some(20)),
        ]);
    }

    #[test]
    fn read_after_delete_fails() {
        assert_not_lin(&[
            (1, "k", Op::Write(3), 0, ok(None), Some(1)),
            (1, "k", Op::Delete, 2, ok(None), Some(3)),
            (2, "k", Op::Read, 4, ok(Some(3)), Some(5)),
        ]);
    }

    #[test]
    fn violation_reports_the_failing_key_and_a_short_window() {
        let mut specs: Vec<Spec<'_>> = Vec::new();
        let mut t = 0;
        for i in 0..200u64 {
            specs.push((1, "good", Op::Write(i), t, ok(None), Some(t + 3)));
            specs.push((2, "bad", Op::Write(i), t + 1, ok(None), Some(t + 4)));
            specs.push((3, "bad", Op::Read, t + 5, ok(Some(i)), Some(t + 6)));
            t += 10;
        }
        // A stale read at the end of "bad".
        specs.push((3, "bad", Op::Read, t + 5, ok(Some(7)), Some(t + 6)));
        let h = hist(&specs);
        let Err(CheckError::NotLinearizable(v)) = h.check() else {
            panic!("expected violation");
        };
        assert_eq!(v.key, "bad");
        assert_eq!(v.fails_at_ns, t + 6);
        assert!(v.ops.len() <= 3, "window not shrunk: {v}");
        assert!(v.ops.iter().any(|o| o.id.0 == specs.len() - 1));
        let text = v.to_string();
        assert!(text.contains("key \"bad\""), "{text}");
        assert!(text.contains("read -> ok(7)"), "{text}");
        let (from, to) = v.time_range();
        let ex = h.excerpt("bad", from, to);
        assert!(!ex.is_empty() && ex.iter().all(|e| e.key == "bad"));
        assert!(!brute_any_initial(&violation_kops(&h, &v)));
    }

    #[test]
    fn budget_exhaustion_is_not_a_pass() {
        let mut specs: Vec<Spec<'_>> = Vec::new();
        for c in 0..8u64 {
            specs.push((c, "k", Op::Write(c), 0, ok(None), Some(100)));
        }
        specs.push((9, "k", Op::Read, 200, ok(Some(3)), Some(201)));
        let h = hist(&specs);
        assert!(h.check().is_ok());
        match h.check_with_budget(2) {
            Err(CheckError::Budget { key, budget }) => assert_eq!((key.as_str(), budget), ("k", 2)),
            other => panic!("expected budget error, got {other:?}"),
        }
    }

    #[test]
    #[should_panic(expected = "outstanding")]
    fn one_outstanding_op_per_client() {
        let mut h = History::new();
        h.invoke(1, "k", Op::Read, 0);
        h.invoke(1, "k", Op::Read, 1);
    }

    #[test]
    #[should_panic(expected = "time order")]
    fn events_must_be_in_time_order() {
        let mut h = History::new();
        let id = h.invoke(1, "k", Op::Read, 10);
        h.complete(id, Completion::Ok(None), 9);
    }

    // ---- JSON lines ----

    #[test]
    fn json_lines_all_types_and_functions() {
        let mut h = History::new();
        let ops = [Op::Read, Op::Write(17), cas(1, 2), Op::Delete];
        let ends = [Completion::Ok(Some(5)), Completion::Fail, Completion::Info];
        let mut t = 0;
        for op in &ops {
            for end in &ends {
                let id = h.invoke(3, "k1", op.clone(), t);
                h.complete(id, end.clone(), t + 1);
                t += 2;
            }
        }
        let id = h.invoke(4, "k1", Op::Read, t);
        h.complete(id, Completion::Ok(None), t);
        let mut out = Vec::new();
        h.write_json_lines(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let expected = [
            r#"{"client":3,"type":"invoke","f":"read","key":"k1","value":null,"time":0}"#,
            r#"{"client":3,"type":"ok","f":"read","key":"k1","value":5,"time":1}"#,
            r#"{"client":3,"type":"invoke","f":"read","key":"k1","value":null,"time":2}"#,
            r#"{"client":3,"type":"fail","f":"read","key":"k1","value":null,"time":3}"#,
            r#"{"client":3,"type":"invoke","f":"read","key":"k1","value":null,"time":4}"#,
            r#"{"client":3,"type":"info","f":"read","key":"k1","value":null,"time":5}"#,
            r#"{"client":3,"type":"invoke","f":"write","key":"k1","value":17,"time":6}"#,
            r#"{"client":3,"type":"ok","f":"write","key":"k1","value":17,"time":7}"#,
            r#"{"client":3,"type":"invoke","f":"write","key":"k1","value":17,"time":8}"#,
            r#"{"client":3,"type":"fail","f":"write","key":"k1","value":17,"time":9}"#,
            r#"{"client":3,"type":"invoke","f":"write","key":"k1","value":17,"time":10}"#,
            r#"{"client":3,"type":"info","f":"write","key":"k1","value":17,"time":11}"#,
            r#"{"client":3,"type":"invoke","f":"cas","key":"k1","value":[1,2],"time":12}"#,
            r#"{"client":3,"type":"ok","f":"cas","key":"k1","value":[1,2],"time":13}"#,
            r#"{"client":3,"type":"invoke","f":"cas","key":"k1","value":[1,2],"time":14}"#,
            r#"{"client":3,"type":"fail","f":"cas","key":"k1","value":[1,2],"time":15}"#,
            r#"{"client":3,"type":"invoke","f":"cas","key":"k1","value":[1,2],"time":16}"#,
            r#"{"client":3,"type":"info","f":"cas","key":"k1","value":[1,2],"time":17}"#,
            r#"{"client":3,"type":"invoke","f":"delete","key":"k1","value":null,"time":18}"#,
            r#"{"client":3,"type":"ok","f":"delete","key":"k1","value":null,"time":19}"#,
            r#"{"client":3,"type":"invoke","f":"delete","key":"k1","value":null,"time":20}"#,
            r#"{"client":3,"type":"fail","f":"delete","key":"k1","value":null,"time":21}"#,
            r#"{"client":3,"type":"invoke","f":"delete","key":"k1","value":null,"time":22}"#,
            r#"{"client":3,"type":"info","f":"delete","key":"k1","value":null,"time":23}"#,
            r#"{"client":4,"type":"invoke","f":"read","key":"k1","value":null,"time":24}"#,
            r#"{"client":4,"type":"ok","f":"read","key":"k1","value":null,"time":24}"#,
        ];
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines, expected);
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn json_key_escaping() {
        let mut h = History::new();
        h.invoke(u64::MAX, "a\"b\\c\nd\re\tf\u{1}g\u{8}\u{c}\u{7f}é/", Op::Read, u64::MAX);
        let mut out = Vec::new();
        h.write_json_lines(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"client\":18446744073709551615,\"type\":\"invoke\",\"f\":\"read\",\
             \"key\":\"a\\\"b\\\\c\\nd\\re\\tf\\u0001g\\b\\f\\u007fé/\",\
             \"value\":null,\"time\":18446744073709551615}\n"
        );
    }

    // ---- generated histories ----

    /// splitmix64.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn chance(&mut self, pct: u64) -> bool {
            self.below(100) < pct
        }
    }

    #[derive(Clone, Debug)]
    enum Action {
        Invoke { client: u64, key: String, op: Op, t: u64 },
        Complete { client: u64, completion: Completion, t: u64 },
    }

    #[derive(Clone, Copy, Debug)]
    struct GenCfg {
        ops: usize,
        keys: usize,
        clients: usize,
        /// Percentage of completions replaced by Info (the op may or may not have been applied).
        info_pct: u64,
        /// Percentage of ops never applied (completed as Fail or Info).
        lost_pct: u64,
        /// Draw values from 0..4 instead of unique values.
        small_values: bool,
    }

    #[derive(Clone)]
    enum ClientState {
        Idle,
        Invoked { key: usize, op: Op, lost: bool },
        Applied { result: Completion },
    }

    /// A concurrent execution against a real register: each op takes effect at
    /// one tick inside its [invoke, complete] interval, so the history is
    /// linearizable by construction. Ops outstanding at the end are left pending.
    fn gen_actions(seed: u64, cfg: GenCfg) -> Vec<Action> {
        let mut rng = Rng(seed);
        let mut regs: Vec<Option<Value>> = vec![None; cfg.keys];
        let mut clients = vec![ClientState::Idle; cfg.clients];
        let mut next_value = 1;
        let mut t = 0;
        let mut invoked = 0;
        let mut actions = Vec::new();
        while invoked < cfg.ops {
            t += rng.below(3);
            let c = rng.below(cfg.clients as u64) as usize;
            clients[c] = match clients[c].clone() {
                ClientState::Idle => {
                    let key = rng.below(cfg.keys as u64) as usize;
                    let value = |rng: &mut Rng, next_value: &mut u64| {
                        if cfg.small_values {
                            rng.below(4)
                        } else {
                            *next_value += 1;
                            *next_value
                        }
                    };
                    let op = match rng.below(10) {
                        0..=3 => Op::Read,
                        4..=6 => Op::Write(value(&mut rng, &mut next_value)),
                        7..=8 => {
                            let new = value(&mut rng, &mut next_value);
                            let expected = match regs[key] {
                                Some(v) if rng.chance(60) => v,
                                _ if cfg.small_values => rng.below(4),
                                _ => rng.below(next_value + 1),
                            };
                            Op::Cas { expected, new }
                        }
                        _ => Op::Delete,
                    };
                    invoked += 1;
                    actions.push(Action::Invoke { client: c as u64, key: format!("key{key}"), op: op.clone(), t });
                    ClientState::Invoked { key, op, lost: rng.chance(cfg.lost_pct) }
                }
                ClientState::Invoked { lost: true, .. } => {
                    let completion = if rng.chance(50) { Completion::Fail } else { Completion::Info };
                    actions.push(Action::Complete { client: c as u64, completion, t });
                    ClientState::Idle
                }
                ClientState::Invoked { key, op, .. } => {
                    let reg = &mut regs[key];
                    let result = match op {
                        Op::Read => Completion::Ok(*reg),
                        Op::Write(v) => {
                            *reg = Some(v);
                            Completion::Ok(None)
                        }
                        Op::Delete => {
                            *reg = None;
                            Completion::Ok(None)
                        }
                        Op::Cas { expected, new } => {
                            if *reg == Some(expected) {
                                *reg = Some(new);
                                Completion::Ok(None)
                            } else {
                                Completion::Fail
                            }
                        }
                    };
                    ClientState::Applied { result }
                }
                ClientState::Applied { result } => {
                    let completion = if rng.chance(cfg.info_pct) { Completion::Info } else { result };
                    actions.push(Action::Complete { client: c as u64, completion, t });
                    ClientState::Idle
                }
            };
        }
        actions
    }

    fn replay(actions: &[Action]) -> History {
        let mut h = History::new();
        let mut current = BTreeMap::new();
        let mut end = 0;
        for a in actions {
            match a {
                Action::Invoke { client, key, op, t } => {
                    current.insert(*client, h.invoke(*client, key, op.clone(), *t));
                    end = *t;
                }
                Action::Complete { client, completion, t } => {
                    h.complete(current.remove(client).unwrap(), completion.clone(), *t);
                    end = *t;
                }
            }
        }
        h.finish_pending(end + 1);
        h
    }

    /// Indices of completions that are Ok reads.
    fn ok_read_completions(actions: &[Action]) -> Vec<usize> {
        let mut current: BTreeMap<u64, bool> = BTreeMap::new();
        let mut out = Vec::new();
        for (i, a) in actions.iter().enumerate() {
            match a {
                Action::Invoke { client, op, .. } => {
                    current.insert(*client, *op == Op::Read);
                }
                Action::Complete { client, completion, .. } => {
                    if current.remove(client) == Some(true) && matches!(completion, Completion::Ok(_)) {
                        out.push(i);
                    }
                }
            }
        }
        out
    }

    /// Makes the read completed by `actions[at]` return `value`.
    fn corrupt(actions: &mut [Action], at: usize, value: Value) {
        let Action::Complete { completion, .. } = &mut actions[at] else { unreachable!() };
        *completion = Completion::Ok(Some(value));
    }

    /// A generated op that completed Ok: its key, op, interval and completion action.
    struct OkOp {
        key: String,
        op: Op,
        call: u64,
        ret: u64,
        complete_at: usize,
    }

    fn ok_ops(actions: &[Action]) -> Vec<OkOp> {
        let mut current: BTreeMap<u64, (String, Op, u64)> = BTreeMap::new();
        let mut out = Vec::new();
        for (i, a) in actions.iter().enumerate() {
            match a {
                Action::Invoke { client, key, op, t } => {
                    current.insert(*client, (key.clone(), op.clone(), *t));
                }
                Action::Complete { client, completion, t } => {
                    let (key, op, call) = current.remove(client).unwrap();
                    if matches!(completion, Completion::Ok(_)) {
                        out.push(OkOp { key, op, call, ret: *t, complete_at: i });
                    }
                }
            }
        }
        out
    }

    /// Stale reads to plant, for histories with unique values: `(completion
    /// index of an Ok read R, value v)` where v was produced by an Ok op W, W
    /// completed before an Ok write/delete/cas X was invoked, and X completed
    /// before R was invoked. W is v's only producer, so R cannot read v.
    fn stale_read_plants(actions: &[Action]) -> Vec<(usize, Value)> {
        let ops = ok_ops(actions);
        let mut out = Vec::new();
        for r in ops.iter().filter(|o| o.op == Op::Read) {
            let same_key = || ops.iter().filter(|o| o.key == r.key && o.op != Op::Read);
            let Some(x) = same_key().filter(|x| x.ret < r.call).max_by_key(|x| x.call) else { continue };
            let produced = |o: &OkOp| match o.op {
                Op::Write(v) | Op::Cas { new: v, .. } => Some(v),
                _ => None,
            };
            if let Some(v) = same_key().filter(|w| w.ret < x.call).filter_map(|w| produced(w).map(|v| (w.ret, v))).max()
            {
                out.push((r.complete_at, v.1));
            }
        }
        out
    }

    /// Checks a history that must be non-linearizable because of the read
    /// completed by `events[at]`.
    fn assert_planted_violation(bad: &History, at: usize) -> Result<(), TestCaseError> {
        let read = &bad.events()[at];
        match bad.check() {
            Err(CheckError::NotLinearizable(v)) => {
                prop_assert_eq!(&v.key, &read.key);
                prop_assert_eq!(v.fails_at_ns, read.time_ns);
                prop_assert!(
                    v.ops
                        .iter()
                        .any(|o| matches!(o.completion, Completion::Ok(_)) && o.complete_ns == Some(v.fails_at_ns)),
                    "{}",
                    v
                );
                if v.ops.len() <= 8 {
                    let window = violation_kops(bad, &v);
                    if v.from_initial_state {
                        prop_assert!(!brute(&window, Reg::Known(None)), "{}", v);
                    } else {
                        prop_assert!(!brute_any_initial(&window), "{}", v);
                    }
                }
            }
            other => prop_assert!(false, "expected violation, got {:?}", other),
        }
        Ok(())
    }

    fn gen_cfg() -> impl Strategy<Value = GenCfg> {
        (1usize..150, 1usize..4, 1usize..9, 0u64..30, 0u64..20, any::<bool>()).prop_map(
            |(ops, keys, clients, info_pct, lost_pct, small_values)| GenCfg {
                ops,
                keys,
                clients,
                info_pct,
                lost_pct,
                small_values,
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn generated_histories_pass_and_corruption_fails(
            seed in any::<u64>(),
            cfg in gen_cfg(),
            pick in any::<prop::sample::Index>(),
        ) {
            let mut actions = gen_actions(seed, cfg);
            let h = replay(&actions);
            let stats = h.check();
            prop_assert!(stats.is_ok(), "{:?}", stats);

            // A read of a value nothing wrote.
            let reads = ok_read_completions(&actions);
            prop_assume!(!reads.is_empty());
            let at = reads[pick.index(reads.len())];
            let mut bad = actions.clone();
            corrupt(&mut bad, at, NEVER);
            assert_planted_violation(&replay(&bad), at)?;

            // A stale read (passes the provenance pre-check; needs the search).
            if !cfg.small_values {
                let plants = stale_read_plants(&actions);
                if !plants.is_empty() {
                    let (at, value) = plants[pick.index(plants.len())];
                    corrupt(&mut actions, at, value);
                    assert_planted_violation(&replay(&actions), at)?;
                }
            }
        }

        #[test]
        fn agrees_with_brute_force_on_small_histories(
            raw in prop::collection::vec(
                (0u8..4, 0u64..3, 0u64..3, 0u64..12, 0u64..6, 0u8..6, 0u64..4),
                1..7,
            ),
        ) {
            let specs: Vec<Spec<'_>> = raw
                .iter()
                .enumerate()
                .map(|(i, &(kind, a, b, call, dur, end, rv))| {
                    let op = match kind {
                        0 => Op::Read,
                        1 => Op::Write(a),
                        2 => cas(a, b),
                        _ => Op::Delete,
                    };
                    let completion = match end {
                        0 => Completion::Fail,
                        1 => Completion::Info,
                        _ if op == Op::Read => Completion::Ok(rv.checked_sub(1)),
                        _ => Completion::Ok(None),
                    };
                    (i as u64, "k", op, call, completion, Some(call + dur))
                })
                .collect();
            let h = hist(&specs);
            let expected = brute_history(&h);
            match h.check() {
                Ok(_) => prop_assert!(expected),
                Err(CheckError::NotLinearizable(v)) => {
                    prop_assert!(!expected);
                    let window = violation_kops(&h, &v);
                    if v.from_initial_state {
                        prop_assert!(!brute(&window, Reg::Known(None)), "{}", v);
                    } else {
                        prop_assert!(!brute_any_initial(&window), "{}", v);
                    }
                    // The failing cut is the smallest: it fails, the one before passes.
                    let ops = &h.partition()["k"];
                    prop_assert!(!brute(&cut_at(ops, v.fails_at_ns), Reg::Known(None)));
                    let before: Vec<u64> = ops
                        .iter()
                        .filter_map(|o| o.ret)
                        .filter(|&r| r < v.fails_at_ns)
                        .collect();
                    if let Some(&t) = before.iter().max() {
                        prop_assert!(brute(&cut_at(ops, t), Reg::Known(None)));
                    }
                }
                Err(e) => prop_assert!(false, "{}", e),
            }
        }
    }

    #[test]
    fn scale_5000_ops_10_keys_8_clients() {
        let cfg = GenCfg { ops: 5_000, keys: 10, clients: 8, info_pct: 5, lost_pct: 5, small_values: false };
        let actions = gen_actions(0x5eed, cfg);
        let h = replay(&actions);
        assert_eq!(h.len_ops(), 5_000);
        let stats = h.check().unwrap();
        assert_eq!(stats.keys, 10);
        assert!(stats.ops_checked > 4_000, "{stats:?}");

        let reads = ok_read_completions(&actions);
        let at = reads[reads.len() / 2];
        let mut bad = actions.clone();
        corrupt(&mut bad, at, NEVER);
        assert_planted_violation(&replay(&bad), at).unwrap();

        let plants = stale_read_plants(&actions);
        assert!(plants.len() > 100);
        for &(at, value) in plants.iter().step_by(plants.len() / 5) {
            let mut bad = actions.clone();
            corrupt(&mut bad, at, value);
            let bad = replay(&bad);
            assert_planted_violation(&bad, at).unwrap();
            let Err(CheckError::NotLinearizable(v)) = bad.check() else { unreachable!() };
            assert!(v.ops.len() < 20, "{v}");
        }
    }

    #[test]
    fn scale_small_value_domain() {
        let cfg = GenCfg { ops: 5_000, keys: 10, clients: 8, info_pct: 5, lost_pct: 5, small_values: true };
        let h = replay(&gen_actions(7, cfg));
        h.check().unwrap();
    }
}
