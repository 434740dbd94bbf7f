//! A deterministic in-memory cluster for tests and scenario transcripts (feature `testkit`).
//!
//! Messages wait in one FIFO queue until a test delivers them; links can be cut; nodes can
//! crash (losing nothing, since this kit persists every write at once) and restart from what
//! they persisted. Every delivery, role change, commit and read is written to a transcript, so
//! scenario tests read like a story and compare against a reviewed golden file.
//!
//! The kit also checks **persist before send** on every action: a granted vote must follow the
//! persisted vote, and an append acknowledgement must follow the persisted entries.

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;
use core::time::Duration;

use super::*;

/// What one node persisted, exactly as its host would have.
#[derive(Clone, Debug, Default)]
pub struct Disk {
    /// The last persisted hard state.
    pub hard_state: HardState,
    /// The last persisted snapshot.
    pub snapshot: Option<Snapshot>,
    /// The persisted log entries.
    pub entries: Vec<Entry>,
}

impl Disk {
    fn write_entries(&mut self, first_index: LogIndex, entries: &[Entry]) {
        self.entries.retain(|e| e.index < first_index);
        self.entries.extend_from_slice(entries);
    }

    fn write_snapshot(&mut self, snapshot: &Snapshot) {
        let (index, term) = (snapshot.meta.index, snapshot.meta.term);
        let matches = self.entries.iter().any(|e| e.index == index && e.term == term);
        if !matches {
            self.entries.clear();
        }
        self.snapshot = Some(snapshot.clone());
    }

    /// The term of the persisted entry at `index`.
    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        if let Some(s) = &self.snapshot {
            if s.meta.index == index {
                return Some(s.meta.term);
            }
        }
        self.entries.iter().find(|e| e.index == index).map(|e| e.term)
    }
}

/// A message waiting for delivery.
#[derive(Clone, Debug)]
pub struct InFlight {
    /// Sender.
    pub from: NodeId,
    /// Recipient.
    pub to: NodeId,
    /// The message.
    pub message: Message,
}

/// A cluster of Raft nodes joined by a controllable, lossless, in-order network.
pub struct Cluster {
    /// Live nodes.
    pub nodes: BTreeMap<NodeId, Raft>,
    /// What each node persisted (kept across crashes).
    pub disks: BTreeMap<NodeId, Disk>,
    /// Commands each node applied, in order (reset when a node restarts or installs a snapshot).
    pub applied: BTreeMap<NodeId, Vec<Entry>>,
    /// Events each node emitted.
    pub events: BTreeMap<NodeId, Vec<Event>>,
    /// Messages waiting for delivery.
    pub queue: VecDeque<InFlight>,
    /// Links cut in the direction `(from, to)`.
    pub cut: BTreeSet<(NodeId, NodeId)>,
    /// The shared clock.
    pub now: Instant,
    /// The story so far.
    pub transcript: String,
    config: fn(NodeId) -> Config,
    bootstrap: Membership,
}

impl Cluster {
    /// Nodes `1..=n`, all voters, with `config` for each.
    pub fn new(n: u64, config: fn(NodeId) -> Config) -> Self {
        let ids: Vec<NodeId> = (1..=n).map(NodeId).collect();
        Self::with_membership(&ids, Membership::with_voters(ids.iter().copied()), config)
    }

    /// Nodes `ids` that all start from `bootstrap`.
    pub fn with_membership(ids: &[NodeId], bootstrap: Membership, config: fn(NodeId) -> Config) -> Self {
        let mut c = Cluster {
            nodes: BTreeMap::new(),
            disks: BTreeMap::new(),
            applied: BTreeMap::new(),
            events: BTreeMap::new(),
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            now: Instant::ZERO,
            transcript: String::new(),
            config,
            bootstrap,
        };
        for &id in ids {
            c.start(id);
        }
        c
    }

    /// A config with fixed, short timers for tests: elections 100–200 ms, heartbeats 10 ms.
    pub fn test_config(id: NodeId) -> Config {
        let mut cfg = Config::new(id);
        cfg.election_timeout_min = Duration::from_millis(100);
        cfg.election_timeout_max = Duration::from_millis(200);
        cfg.heartbeat_interval = Duration::from_millis(10);
        cfg.snapshot_threshold_entries = 0;
        cfg
    }

    /// Starts (or restarts) `id` from its disk.
    pub fn start(&mut self, id: NodeId) {
        let disk = self.disks.entry(id).or_default().clone();
        let recovered = Recovered { hard_state: disk.hard_state, snapshot: disk.snapshot, entries: disk.entries };
        let raft = Raft::new((self.config)(id), self.bootstrap.clone(), recovered, id.0, self.now)
            .expect("test config is valid");
        self.nodes.insert(id, raft);
        self.applied.insert(id, Vec::new());
        self.note(format!("{id} starts"));
        self.drain(id);
    }

    /// Stops `id`; its disk survives. Messages to it are lost.
    pub fn crash(&mut self, id: NodeId) {
        self.nodes.remove(&id);
        self.queue.retain(|m| m.to != id);
        self.note(format!("{id} crashes"));
    }

    /// The node `id`, which must be running.
    pub fn node(&self, id: NodeId) -> &Raft {
        &self.nodes[&id]
    }

    /// The node `id`, mutably.
    pub fn node_mut(&mut self, id: NodeId) -> &mut Raft {
        self.nodes.get_mut(&id).expect("node is running")
    }

    /// Appends a line to the transcript.
    pub fn note(&mut self, line: String) {
        let _ = writeln!(self.transcript, "{line}");
    }

    /// Cuts both directions between `a` and every node in `others`.
    pub fn isolate(&mut self, a: NodeId) {
        let ids: Vec<NodeId> = self.disks.keys().copied().collect();
        for b in ids {
            if b != a {
                self.cut.insert((a, b));
                self.cut.insert((b, a));
            }
        }
        self.note(format!("{a} isolated"));
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cut.clear();
        self.note(String::from("network healed"));
    }

    /// Moves time forward by `d` without firing timers.
    pub fn advance(&mut self, d: Duration) {
        self.now = self.now.saturating_add(d);
    }

    /// Fires `id`'s timer at its deadline (moving the clock there if it is later).
    pub fn fire_timer(&mut self, id: NodeId) {
        let Some(deadline) = self.nodes.get(&id).and_then(|r| r.poll_timeout()) else { return };
        self.now = self.now.max(deadline);
        let now = self.now;
        self.node_mut(id).handle_timeout(now);
        self.drain(id);
    }

    /// Makes `id` time out and campaign, then delivers until quiet.
    pub fn elect(&mut self, id: NodeId) {
        self.note(format!("{id} times out"));
        self.fire_timer(id);
        self.deliver_all();
    }

    /// Runs every node's timers in deadline order for `d` of virtual time, delivering all
    /// messages after each firing, as a real cluster would.
    pub fn run_for(&mut self, d: Duration) {
        assert!(self.try_run_for(d), "network did not go quiet");
    }

    /// [`Cluster::run_for`], returning false instead of panicking on a livelock.
    pub fn try_run_for(&mut self, d: Duration) -> bool {
        let end = self.now.saturating_add(d);
        for _ in 0..1_000_000 {
            let next = self.nodes.iter().filter_map(|(id, r)| r.poll_timeout().map(|t| (t, *id))).min();
            match next {
                Some((t, id)) if t <= end => {
                    self.now = self.now.max(t);
                    let now = self.now;
                    self.node_mut(id).handle_timeout(now);
                    self.drain(id);
                    if !self.try_deliver_all() {
                        return false;
                    }
                }
                _ => break,
            }
        }
        self.now = self.now.max(end);
        true
    }

    /// Builds a cluster whose nodes start from the given disks (all voters of `voters`).
    pub fn from_disks(disks: Vec<(NodeId, Disk)>, voters: &[NodeId], config: fn(NodeId) -> Config) -> Self {
        let mut c = Cluster {
            nodes: BTreeMap::new(),
            disks: disks.iter().cloned().collect(),
            applied: BTreeMap::new(),
            events: BTreeMap::new(),
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            now: Instant::ZERO,
            transcript: String::new(),
            config,
            bootstrap: Membership::with_voters(voters.iter().copied()),
        };
        for (id, _) in disks {
            c.start(id);
        }
        c
    }

    /// Fires the timers of every running leader once and delivers until quiet (a heartbeat round).
    pub fn heartbeat(&mut self) {
        let leaders: Vec<NodeId> =
            self.nodes.iter().filter(|(_, r)| r.role() == Role::Leader).map(|(id, _)| *id).collect();
        for id in leaders {
            self.fire_timer(id);
        }
        self.deliver_all();
    }

    /// Proposes a command on `id` and delivers until quiet.
    pub fn propose(&mut self, id: NodeId, data: &'static str) -> Result<LogIndex, ProposeError> {
        let now = self.now;
        let result = self.node_mut(id).propose(now, data);
        self.note(format!("{id} propose {data:?} -> {result:?}"));
        self.drain(id);
        self.deliver_all();
        result
    }

    /// Delivers the next queued message. Returns false when the queue is empty.
    pub fn deliver_one(&mut self) -> bool {
        self.deliver_at(0)
    }

    /// Delivers the queued message at position `i` (out of order). Returns false if there is none.
    pub fn deliver_at(&mut self, i: usize) -> bool {
        let Some(m) = self.queue.remove(i) else { return false };
        if self.cut.contains(&(m.from, m.to)) || !self.nodes.contains_key(&m.to) {
            return true;
        }
        let line = format!("{} -> {} {}", m.from, m.to, describe(&m.message));
        self.note(line);
        let now = self.now;
        self.node_mut(m.to).handle_message(now, m.from, m.message);
        self.drain(m.to);
        true
    }

    /// Delivers until no message is left (bounded, so a livelock fails loudly).
    pub fn deliver_all(&mut self) {
        assert!(self.try_deliver_all(), "network did not go quiet");
    }

    /// Delivers until no message is left; false if 100,000 deliveries did not get there (a
    /// livelock: some nodes keep answering each other).
    pub fn try_deliver_all(&mut self) -> bool {
        (0..100_000).any(|_| !self.deliver_one())
    }

    /// Drops every queued message matching `pred`.
    pub fn drop_where(&mut self, pred: impl Fn(&InFlight) -> bool) {
        self.queue.retain(|m| !pred(m));
    }

    /// Carries out `id`'s actions in order, persisting at once and checking persist-before-send,
    /// then reports durability and drains again until the node has nothing left to do.
    pub fn drain(&mut self, id: NodeId) {
        for _ in 0..1_000 {
            let mut durable = Vec::new();
            while let Some(action) = self.nodes.get_mut(&id).and_then(Raft::poll_action) {
                self.carry_out(id, action, &mut durable);
            }
            if durable.is_empty() {
                if let Some(r) = self.nodes.get(&id) {
                    r.check_invariants();
                }
                return;
            }
            let now = self.now;
            if let Some(r) = self.nodes.get_mut(&id) {
                for (index, term) in durable {
                    r.handle_persisted(now, index, term);
                }
            }
        }
        panic!("{id} kept producing writes");
    }

    fn carry_out(&mut self, id: NodeId, action: Action, durable: &mut Vec<(LogIndex, Term)>) {
        let lent = |c: &Self, first, last| c.nodes.get(&id).map_or(Vec::new(), |r| r.entries(first, last).to_vec());
        let action = match action {
            Action::PersistEntries { first_index, last_index } => {
                let entries = lent(self, first_index, last_index);
                return self.persist_entries(id, first_index, entries, durable);
            }
            Action::ApplyEntries { first_index, last_index } => {
                let entries = lent(self, first_index, last_index);
                self.applied.entry(id).or_default().extend(entries);
                self.note(format!("{id} applied through {last_index}"));
                return;
            }
            other => other,
        };
        let disk = self.disks.entry(id).or_default();
        match action {
            Action::Send { to, message } => {
                check_persisted_before_send(disk, to, &message);
                self.queue.push_back(InFlight { from: id, to, message });
            }
            Action::PersistHardState(hs) => disk.hard_state = hs,
            Action::PersistEntries { .. } | Action::ApplyEntries { .. } => unreachable!("handled above"),
            Action::PersistSnapshot(s) => {
                disk.write_snapshot(&s);
                durable.push((s.meta.index, s.meta.term));
            }
            Action::CompactLog { upto } => disk.entries.retain(|e| e.index > upto),
            Action::ApplySnapshot(s) => {
                self.applied.insert(id, Vec::new());
                self.note(format!("{id} restores snapshot at {}", s.meta.index));
            }
            Action::Event(e) => {
                if let Event::RoleChanged { role, term, leader } = &e {
                    let leader = leader.map_or(String::from("none"), |l| format!("{l}"));
                    self.note(format!("{id} is {role:?} in {term}, leader {leader}"));
                }
                self.events.entry(id).or_default().push(e);
            }
        }
    }

    fn persist_entries(
        &mut self,
        id: NodeId,
        first: LogIndex,
        entries: Vec<Entry>,
        durable: &mut Vec<(LogIndex, Term)>,
    ) {
        let disk = self.disks.entry(id).or_default();
        disk.write_entries(first, &entries);
        if let Some(last) = entries.last() {
            durable.push((last.index, last.term));
        }
    }

    /// The single leader among running nodes with the highest term, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.nodes.iter().filter(|(_, r)| r.role() == Role::Leader).max_by_key(|(_, r)| r.term()).map(|(id, _)| *id)
    }

    /// The command payloads `id` applied, as strings.
    pub fn applied_commands(&self, id: NodeId) -> Vec<String> {
        self.applied[&id]
            .iter()
            .filter_map(|e| match &e.payload {
                EntryPayload::Command(d) => Some(String::from_utf8_lossy(d).into_owned()),
                _ => None,
            })
            .collect()
    }
}

fn check_persisted_before_send(disk: &Disk, to: NodeId, message: &Message) {
    match &message.body {
        MessageBody::RequestVoteResponse { pre_vote: false, granted: true } => {
            assert_eq!(disk.hard_state.vote, Some(to), "vote sent before it was persisted");
            assert_eq!(disk.hard_state.term, message.term, "vote's term sent before it was persisted");
        }
        // Under the refinement these need only the hard state: the term they carry.
        body if body.may_precede_log_writes() => {
            assert!(
                disk.hard_state.term >= message.term,
                "leader's {} sent before its term was persisted",
                body.kind()
            );
        }
        MessageBody::AppendEntriesResponse { index, reject: None, .. } => {
            let covered = disk.hard_state.commit >= *index
                || disk.snapshot.as_ref().is_some_and(|s| s.meta.index >= *index)
                || disk.term_at(*index).is_some();
            assert!(covered, "append ack for {index} sent before the entries were persisted");
        }
        _ => {}
    }
}

/// A one-line description of a message for transcripts.
pub fn describe(m: &Message) -> String {
    let t = m.term;
    match &m.body {
        MessageBody::RequestVote { pre_vote, last_log_index, last_log_term, transfer } => {
            let kind = if *pre_vote { "PreVote" } else { "Vote" };
            let tr = if *transfer { " transfer" } else { "" };
            format!("{kind} {t} last={last_log_index}/{last_log_term}{tr}")
        }
        MessageBody::RequestVoteResponse { pre_vote, granted } => {
            let kind = if *pre_vote { "PreVoteResp" } else { "VoteResp" };
            format!("{kind} {t} granted={granted}")
        }
        MessageBody::AppendEntries { prev_log_index, prev_log_term, entries, leader_commit, .. } => {
            let list: Vec<String> = entries.iter().map(|e| format!("{}/{}", e.index, e.term)).collect();
            format!("App {t} prev={prev_log_index}/{prev_log_term} commit={leader_commit} [{}]", list.join(" "))
        }
        MessageBody::AppendEntriesResponse { index, reject: None, .. } => format!("AppResp {t} ok {index}"),
        MessageBody::AppendEntriesResponse { index, reject: Some(h), .. } => {
            format!("AppResp {t} reject {index} hint={}/{}", h.index, h.term)
        }
        MessageBody::Heartbeat { commit, .. } => format!("Heartbeat {t} commit={commit}"),
        MessageBody::HeartbeatResponse { .. } => format!("HeartbeatResp {t}"),
        MessageBody::InstallSnapshot { meta, offset, data, .. } => {
            format!(
                "Snapshot {t} at {}/{} bytes {}..{} of {}",
                meta.index,
                meta.term,
                offset,
                offset + data.len() as u64,
                meta.size_bytes
            )
        }
        MessageBody::InstallSnapshotResponse { index, next_offset, done, .. } => {
            format!("SnapshotResp {t} at {index} next={next_offset} done={done}")
        }
        MessageBody::TimeoutNow => format!("TimeoutNow {t}"),
        MessageBody::ReadIndex { id } => format!("ReadIndex {t} id={id}"),
        MessageBody::ReadIndexResponse { id, index } => format!("ReadIndexResp {t} id={id} index={index:?}"),
    }
}
