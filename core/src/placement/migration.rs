//! One shard move, as a state machine: planned → copying snapshot → catching up → cutover →
//! cleanup → done, or aborted.
//!
//! # Routing rules, per phase
//!
//! | phase             | reads go to                 | writes go to                         |
//! | ----------------- | --------------------------- | ------------------------------------ |
//! | `Planned`         | the old replicas            | the old replicas                     |
//! | `CopyingSnapshot` | the old replicas            | the old replicas (the target loads a snapshot; later writes wait in the source's change stream) |
//! | `CatchingUp`      | the old replicas            | the old replicas **and the target** (double writes) while it replays the deltas after its snapshot |
//! | `Cutover`         | the new set (target in, `from` out) | the new set **and `from`**, which keeps every write so an abort loses nothing |
//! | `Cleanup`         | the new set                 | the new set; `from`'s data is deleted |
//! | `Done`            | the new set                 | the new set                          |
//! | `Aborted`         | the old replicas            | the old replicas; the target's partial data is deleted |
//!
//! The machine states them as [`ReplicaState`]s and hands them to the host as
//! [`Action::SetReplica`] / [`Action::RemoveReplica`], which the host applies to its
//! [`super::ShardMap`]; [`Migration::routing`] gives the same sets directly.
//!
//! # Never fewer readable replicas
//! Readability only changes at two steps, and both swap one replica for another in one action
//! batch: at cutover the target becomes readable as `from` stops being read, and an abort
//! during cutover makes `from` readable again as the target leaves. So the readable replicas
//! never drop below what the shard had when the move started (at most its replication
//! factor), except for nodes that fail; [`Migration::check_invariants`] checks exactly that.
//!
//! # Failures
//! The target failing before cleanup aborts the move cleanly (back to the old set). The copy
//! source failing before cutover restarts the snapshot from another readable replica, or
//! aborts if none is left. `from` failing changes nothing: the move goes on and replaces it.
//!
//! # Driving from Raft
//! [`Event`]s are serde values: the leader commits each one to the Raft log and every node
//! applies it to its own copy of the machine, so all routers change routing at the same log
//! index. Timeouts never change the phase on their own: [`Action::TimedOut`] asks the driver
//! to commit an [`Event::Abort`] (or, in cleanup, the machine simply asks again for the delete).

use alloc::collections::{BTreeSet, VecDeque};
use alloc::vec::Vec;
use core::time::Duration;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::map::{ReplicaSet, ReplicaState, ShardId};
use super::plan::Move;
use crate::machine::Machine;
use crate::{Instant, NodeId};

/// Where a move is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Phase {
    /// Committed, not started.
    Planned,
    /// The target loads a snapshot from the source.
    CopyingSnapshot,
    /// Writes reach the target too while it replays what it missed.
    CatchingUp,
    /// Reads moved to the target; `from` still takes writes.
    Cutover,
    /// `from` is out of the set and its data being deleted.
    Cleanup,
    /// Finished.
    Done,
    /// Given up; the shard is as it was.
    Aborted,
}

/// Why a move was given up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AbortReason {
    /// The target failed.
    TargetFailed,
    /// No readable replica is left to copy from.
    NoSource,
    /// The driver asked (operator, or a timeout it committed).
    Requested,
}

/// What happened, as committed by the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// Start copying.
    Start,
    /// The target holds the snapshot, taken at the source's change-stream position `position`.
    SnapshotLoaded {
        /// The position the snapshot reflects; the target replays from just after it.
        position: u64,
    },
    /// The target replayed the deltas and is within the catch-up bound.
    CaughtUp,
    /// Every router has switched reads; `from` may go.
    CutoverConfirmed,
    /// `from`'s data is deleted.
    CleanupDone,
    /// A node failed (anyone's: the machine picks out what concerns it).
    NodeDown(NodeId),
    /// Give up (before cleanup; later it is too late and the move finishes).
    Abort,
}

/// What the host must do, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Set `node`'s replica of the shard to `state` in the shard map (adding it if absent).
    SetReplica {
        /// The node.
        node: NodeId,
        /// Its new state.
        state: ReplicaState,
    },
    /// Remove `node`'s replica from the shard map.
    RemoveReplica {
        /// The node.
        node: NodeId,
    },
    /// Make `node` the shard's primary (it just became readable in place of the old primary).
    SetPrimary {
        /// The new primary.
        node: NodeId,
    },
    /// Send a snapshot of the shard from `from` to `to`, and keep the change stream after it.
    CopySnapshot {
        /// The sender.
        from: NodeId,
        /// The receiver.
        to: NodeId,
    },
    /// Stream the changes after `after` from `from` to `to` until caught up.
    StreamDeltas {
        /// The sender.
        from: NodeId,
        /// The receiver.
        to: NodeId,
        /// The snapshot's position.
        after: u64,
    },
    /// Delete the shard's data on `node`.
    DeleteData {
        /// The node.
        node: NodeId,
    },
    /// The phase took longer than its limit; commit [`Event::Abort`] to give up.
    TimedOut {
        /// The phase.
        phase: Phase,
    },
    /// The move is over.
    Finished {
        /// `Done` or `Aborted`.
        phase: Phase,
    },
}

/// Time limits per phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationConfig {
    /// Longest a snapshot copy may take.
    pub copy_timeout: Duration,
    /// Longest catching up may take.
    pub catch_up_timeout: Duration,
    /// Longest the cutover may wait for confirmation.
    pub cutover_timeout: Duration,
    /// How often a delete is asked for again until confirmed.
    pub cleanup_retry: Duration,
}

impl Default for MigrationConfig {
    fn default() -> Self {
        MigrationConfig {
            copy_timeout: Duration::from_secs(3600),
            catch_up_timeout: Duration::from_secs(600),
            cutover_timeout: Duration::from_secs(60),
            cleanup_retry: Duration::from_secs(30),
        }
    }
}

/// Why a move or an event was refused. A refused event changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum MigrationError {
    /// The move does not fit the shard (target already a replica, source not readable, ...).
    #[error("move does not fit shard {shard}: {why}")]
    BadMove {
        /// The shard.
        shard: ShardId,
        /// What is wrong.
        why: &'static str,
    },
    /// The event does not apply in this phase.
    #[error("{event:?} does not apply in phase {phase:?}")]
    Unexpected {
        /// The phase.
        phase: Phase,
        /// The event.
        event: Event,
    },
    /// A time limit was zero.
    #[error("{0} must be above zero")]
    Config(&'static str),
}

/// One shard move. See the [module docs](crate::placement::migration).
#[derive(Clone, Debug)]
pub struct Migration {
    cfg: MigrationConfig,
    mv: Move,
    phase: Phase,
    reason: Option<AbortReason>,
    /// The machine's view of the shard's replicas, kept in step with its own actions.
    view: ReplicaSet,
    /// Readable replicas when the move started, capped at the replication factor.
    floor: usize,
    source: NodeId,
    down: BTreeSet<NodeId>,
    position: u64,
    deadline: Option<Instant>,
    timed_out: bool,
    actions: VecDeque<Action>,
}

impl Migration {
    /// A planned move of a shard whose replicas are `set` and replication factor `rf`.
    pub fn new(
        cfg: MigrationConfig,
        mv: Move,
        set: &ReplicaSet,
        rf: u8,
        down: &[NodeId],
    ) -> Result<Migration, MigrationError> {
        let bad = |why| Err(MigrationError::BadMove { shard: mv.shard, why });
        if cfg.copy_timeout.is_zero() {
            return Err(MigrationError::Config("copy_timeout"));
        }
        if cfg.catch_up_timeout.is_zero() {
            return Err(MigrationError::Config("catch_up_timeout"));
        }
        if cfg.cutover_timeout.is_zero() {
            return Err(MigrationError::Config("cutover_timeout"));
        }
        if cfg.cleanup_retry.is_zero() {
            return Err(MigrationError::Config("cleanup_retry"));
        }
        if set.replica(mv.to).is_some() {
            return bad("the target already holds a replica");
        }
        if set.replicas.iter().any(|r| r.state != ReplicaState::Active) {
            return bad("another move is in progress");
        }
        if mv.from.is_some_and(|f| set.replica(f).is_none()) {
            return bad("the replica to replace is not in the set");
        }
        if !set.readable().any(|n| n == mv.source) || down.contains(&mv.source) {
            return bad("the source is not a live readable replica");
        }
        if down.contains(&mv.to) {
            return bad("the target is down");
        }
        let down: BTreeSet<NodeId> = down.iter().copied().collect();
        let floor = set.readable().filter(|n| !down.contains(n)).count().min(usize::from(rf));
        Ok(Migration {
            cfg,
            mv,
            phase: Phase::Planned,
            reason: None,
            view: set.clone(),
            floor,
            source: mv.source,
            down,
            position: 0,
            deadline: None,
            timed_out: false,
            actions: VecDeque::new(),
        })
    }

    // ----- getters -----

    /// The move.
    pub fn plan(&self) -> &Move {
        &self.mv
    }

    /// The phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Why it was aborted, if it was.
    pub fn abort_reason(&self) -> Option<AbortReason> {
        self.reason
    }

    /// The node sending the data now (the plan's source, or a replacement after a failure).
    pub fn source(&self) -> NodeId {
        self.source
    }

    /// The machine's view of the shard's replicas.
    pub fn view(&self) -> &ReplicaSet {
        &self.view
    }

    /// True once done or aborted.
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Done | Phase::Aborted)
    }

    /// Where reads and writes of the shard go now: `(reads, writes)`, each in node order,
    /// failed nodes left out.
    pub fn routing(&self) -> (Vec<NodeId>, Vec<NodeId>) {
        let up = |n: &NodeId| !self.down.contains(n);
        (self.view.readable().filter(up).collect(), self.view.writable().filter(up).collect())
    }

    /// Readable replicas on live nodes, in the machine's view.
    pub fn readable_up(&self) -> usize {
        self.view.readable().filter(|n| !self.down.contains(n)).count()
    }

    // ----- inputs -----

    /// Applies one committed event at `now`. A refused event changes nothing.
    pub fn handle_event(&mut self, now: Instant, event: Event) -> Result<(), MigrationError> {
        let unexpected = Err(MigrationError::Unexpected { phase: self.phase, event });
        match (self.phase, event) {
            (_, Event::NodeDown(n)) => {
                self.node_down(now, n);
                Ok(())
            }
            (Phase::Planned, Event::Start) => {
                self.set(self.mv.to, ReplicaState::Copying);
                self.actions.push_back(Action::CopySnapshot { from: self.source, to: self.mv.to });
                self.enter(now, Phase::CopyingSnapshot);
                Ok(())
            }
            (Phase::CopyingSnapshot, Event::SnapshotLoaded { position }) => {
                self.position = position;
                self.set(self.mv.to, ReplicaState::CatchingUp);
                self.actions.push_back(Action::StreamDeltas { from: self.source, to: self.mv.to, after: position });
                self.enter(now, Phase::CatchingUp);
                Ok(())
            }
            (Phase::CatchingUp, Event::CaughtUp) => {
                // One batch: the target becomes readable as `from` stops being read.
                self.set(self.mv.to, ReplicaState::Active);
                if let Some(from) = self.mv.from {
                    self.set(from, ReplicaState::Leaving);
                    if self.view.primary == Some(from) {
                        self.view.primary = Some(self.mv.to);
                        self.actions.push_back(Action::SetPrimary { node: self.mv.to });
                    }
                }
                self.enter(now, Phase::Cutover);
                Ok(())
            }
            (Phase::Cutover, Event::CutoverConfirmed) => {
                if let Some(from) = self.mv.from {
                    self.view.remove(from);
                    self.actions.push_back(Action::RemoveReplica { node: from });
                    self.actions.push_back(Action::DeleteData { node: from });
                    self.enter(now, Phase::Cleanup);
                } else {
                    self.finish(Phase::Done);
                }
                Ok(())
            }
            (Phase::Cleanup, Event::CleanupDone) => {
                self.finish(Phase::Done);
                Ok(())
            }
            (Phase::Planned | Phase::CopyingSnapshot | Phase::CatchingUp | Phase::Cutover, Event::Abort) => {
                self.abort(AbortReason::Requested);
                Ok(())
            }
            _ => unexpected,
        }
    }

    fn node_down(&mut self, now: Instant, n: NodeId) {
        if !self.down.insert(n) || self.is_finished() {
            return;
        }
        let copying = matches!(self.phase, Phase::CopyingSnapshot | Phase::CatchingUp);
        if n == self.mv.to && self.phase != Phase::Cleanup {
            self.abort(AbortReason::TargetFailed);
        } else if n == self.source && copying {
            // Another live readable replica takes over; the copy starts again from scratch.
            let next = self.view.readable().find(|r| *r != self.mv.to && !self.down.contains(r));
            match next {
                Some(s) => {
                    self.source = s;
                    self.set(self.mv.to, ReplicaState::Copying);
                    self.actions.push_back(Action::CopySnapshot { from: s, to: self.mv.to });
                    self.enter(now, Phase::CopyingSnapshot);
                }
                None => self.abort(AbortReason::NoSource),
            }
        }
    }

    fn abort(&mut self, reason: AbortReason) {
        // One batch again: in cutover, `from` becomes readable as the target leaves.
        if let Some(from) = self.mv.from {
            if self.view.replica(from).is_some_and(|r| r.state == ReplicaState::Leaving) {
                self.set(from, ReplicaState::Active);
                if self.view.primary == Some(self.mv.to) {
                    self.view.primary = Some(from);
                    self.actions.push_back(Action::SetPrimary { node: from });
                }
            }
        }
        if self.view.replica(self.mv.to).is_some() {
            self.view.remove(self.mv.to);
            self.actions.push_back(Action::RemoveReplica { node: self.mv.to });
            self.actions.push_back(Action::DeleteData { node: self.mv.to });
        }
        self.reason = Some(reason);
        self.finish(Phase::Aborted);
    }

    fn set(&mut self, node: NodeId, state: ReplicaState) {
        self.view.set(node, state);
        self.actions.push_back(Action::SetReplica { node, state });
    }

    fn enter(&mut self, now: Instant, phase: Phase) {
        self.phase = phase;
        self.timed_out = false;
        let limit = match phase {
            Phase::CopyingSnapshot => self.cfg.copy_timeout,
            Phase::CatchingUp => self.cfg.catch_up_timeout,
            Phase::Cutover => self.cfg.cutover_timeout,
            Phase::Cleanup => self.cfg.cleanup_retry,
            _ => {
                self.deadline = None;
                return;
            }
        };
        self.deadline = Some(now.saturating_add(limit));
    }

    fn finish(&mut self, phase: Phase) {
        self.phase = phase;
        self.deadline = None;
        self.actions.push_back(Action::Finished { phase });
    }
}

impl Machine for Migration {
    type Action = Action;

    fn handle_timeout(&mut self, now: Instant) {
        let Some(deadline) = self.deadline else { return };
        if now < deadline {
            return;
        }
        if self.phase == Phase::Cleanup {
            // Deleting is idempotent: ask again until it is confirmed.
            if let Some(from) = self.mv.from {
                self.actions.push_back(Action::DeleteData { node: from });
            }
            self.deadline = Some(now.saturating_add(self.cfg.cleanup_retry));
        } else if !self.timed_out {
            self.timed_out = true;
            self.actions.push_back(Action::TimedOut { phase: self.phase });
        }
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.timed_out {
            None
        } else {
            self.deadline
        }
    }

    fn check_invariants(&self) {
        let lost = self.down.len();
        assert!(
            self.readable_up() + lost >= self.floor,
            "{}: {} readable replicas on live nodes, {} lost, started with {}",
            self.mv.shard,
            self.readable_up(),
            lost,
            self.floor
        );
        let target = self.view.replica(self.mv.to).map(|r| r.state);
        let expected = match self.phase {
            Phase::Planned | Phase::Aborted => None,
            Phase::CopyingSnapshot => Some(ReplicaState::Copying),
            Phase::CatchingUp => Some(ReplicaState::CatchingUp),
            Phase::Cutover | Phase::Cleanup | Phase::Done => Some(ReplicaState::Active),
        };
        // After cutover a failed target stays in the set (the planner repairs it).
        assert_eq!(target, expected, "{}: target in {:?}", self.mv.shard, self.phase);
        if let Some(from) = self.mv.from {
            let state = self.view.replica(from).map(|r| r.state);
            let expected = match self.phase {
                Phase::Planned | Phase::CopyingSnapshot | Phase::CatchingUp | Phase::Aborted => {
                    Some(ReplicaState::Active)
                }
                Phase::Cutover => Some(ReplicaState::Leaving),
                Phase::Cleanup | Phase::Done => None,
            };
            assert_eq!(state, expected, "{}: from in {:?}", self.mv.shard, self.phase);
        }
        assert_eq!(self.reason.is_some(), self.phase == Phase::Aborted);
        assert!(self.view.primary.is_none_or(|p| self.view.replica(p).is_some()), "primary not a replica");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::{CollectionId, Replica};
    use alloc::vec;
    use proptest::prelude::*;

    const SHARD: ShardId = ShardId { collection: CollectionId(1), index: 3 };

    fn set() -> ReplicaSet {
        ReplicaSet {
            primary: Some(NodeId(1)),
            replicas: [1, 2, 3].iter().map(|&n| Replica { node: NodeId(n), state: ReplicaState::Active }).collect(),
        }
    }

    fn mv(from: Option<u64>) -> Move {
        Move {
            shard: SHARD,
            from: from.map(NodeId),
            to: NodeId(4),
            source: NodeId(from.unwrap_or(2)),
            reason: super::super::MoveReason::Balance,
        }
    }

    fn drain(m: &mut Migration) -> Vec<Action> {
        core::iter::from_fn(|| m.poll_action()).collect()
    }

    #[test]
    fn happy_path_routes_as_written() {
        let now = Instant::ZERO;
        let mut m = Migration::new(MigrationConfig::default(), mv(Some(1)), &set(), 3, &[]).unwrap();
        let (r, w) = m.routing();
        assert_eq!((r.len(), w.len()), (3, 3));
        m.handle_event(now, Event::Start).unwrap();
        assert_eq!(
            drain(&mut m),
            vec![
                Action::SetReplica { node: NodeId(4), state: ReplicaState::Copying },
                Action::CopySnapshot { from: NodeId(1), to: NodeId(4) }
            ]
        );
        assert_eq!(m.routing().1, vec![NodeId(1), NodeId(2), NodeId(3)], "no writes to a copying target");
        m.handle_event(now, Event::SnapshotLoaded { position: 77 }).unwrap();
        assert!(drain(&mut m).contains(&Action::StreamDeltas { from: NodeId(1), to: NodeId(4), after: 77 }));
        assert_eq!(m.routing().1, vec![NodeId(1), NodeId(2), NodeId(3), NodeId(4)], "double writes");
        assert_eq!(m.routing().0, vec![NodeId(1), NodeId(2), NodeId(3)]);
        m.handle_event(now, Event::CaughtUp).unwrap();
        assert_eq!(
            drain(&mut m),
            vec![
                Action::SetReplica { node: NodeId(4), state: ReplicaState::Active },
                Action::SetReplica { node: NodeId(1), state: ReplicaState::Leaving },
                Action::SetPrimary { node: NodeId(4) },
            ]
        );
        assert_eq!(
            m.routing(),
            (vec![NodeId(2), NodeId(3), NodeId(4)], vec![NodeId(1), NodeId(2), NodeId(3), NodeId(4)])
        );
        m.handle_event(now, Event::CutoverConfirmed).unwrap();
        assert_eq!(
            drain(&mut m),
            vec![Action::RemoveReplica { node: NodeId(1) }, Action::DeleteData { node: NodeId(1) }]
        );
        assert_eq!(
            m.handle_event(now, Event::Abort),
            Err(MigrationError::Unexpected { phase: Phase::Cleanup, event: Event::Abort })
        );
        m.handle_event(now, Event::CleanupDone).unwrap();
        assert_eq!(drain(&mut m), vec![Action::Finished { phase: Phase::Done }]);
        m.check_invariants();
        assert_eq!(m.routing().0, vec![NodeId(2), NodeId(3), NodeId(4)]);
    }

    #[test]
    fn bad_moves_and_events_are_refused() {
        let cfg = MigrationConfig::default();
        let mut taken = mv(Some(1));
        taken.to = NodeId(2);
        assert!(matches!(Migration::new(cfg, taken, &set(), 3, &[]), Err(MigrationError::BadMove { .. })));
        let mut ghost = mv(Some(9));
        ghost.source = NodeId(2);
        assert!(matches!(Migration::new(cfg, ghost, &set(), 3, &[]), Err(MigrationError::BadMove { .. })));
        assert!(matches!(
            Migration::new(cfg, mv(Some(1)), &set(), 3, &[NodeId(1)]),
            Err(MigrationError::BadMove { .. })
        ));
        let zero = MigrationConfig { cutover_timeout: Duration::ZERO, ..cfg };
        assert_eq!(
            Migration::new(zero, mv(None), &set(), 3, &[]).unwrap_err(),
            MigrationError::Config("cutover_timeout")
        );
        let mut m = Migration::new(cfg, mv(None), &set(), 3, &[]).unwrap();
        assert!(m.handle_event(Instant::ZERO, Event::CaughtUp).is_err());
        assert_eq!(m.phase(), Phase::Planned);
        assert!(drain(&mut m).is_empty(), "a refused event changes nothing");
    }

    #[test]
    fn target_failure_in_cutover_restores_from() {
        let now = Instant::ZERO;
        let mut m = Migration::new(MigrationConfig::default(), mv(Some(1)), &set(), 3, &[]).unwrap();
        for e in [Event::Start, Event::SnapshotLoaded { position: 1 }, Event::CaughtUp] {
            m.handle_event(now, e).unwrap();
        }
        drain(&mut m);
        m.handle_event(now, Event::NodeDown(NodeId(4))).unwrap();
        assert_eq!(
            drain(&mut m),
            vec![
                Action::SetReplica { node: NodeId(1), state: ReplicaState::Active },
                Action::SetPrimary { node: NodeId(1) },
                Action::RemoveReplica { node: NodeId(4) },
                Action::DeleteData { node: NodeId(4) },
                Action::Finished { phase: Phase::Aborted },
            ]
        );
        assert_eq!(m.abort_reason(), Some(AbortReason::TargetFailed));
        assert_eq!(m.view(), &set());
        m.check_invariants();
    }

    #[test]
    fn source_failure_switches_source_and_timeouts_ask_to_abort() {
        let mut now = Instant::ZERO;
        let cfg = MigrationConfig::default();
        let mut m = Migration::new(cfg, mv(None), &set(), 3, &[]).unwrap();
        m.handle_event(now, Event::Start).unwrap();
        drain(&mut m);
        m.handle_event(now, Event::NodeDown(NodeId(2))).unwrap();
        assert_eq!(m.source(), NodeId(1));
        assert!(drain(&mut m).contains(&Action::CopySnapshot { from: NodeId(1), to: NodeId(4) }));
        now = m.poll_timeout().unwrap();
        m.handle_timeout(now);
        assert_eq!(drain(&mut m), vec![Action::TimedOut { phase: Phase::CopyingSnapshot }]);
        assert_eq!(m.poll_timeout(), None, "asked once per phase");
        m.handle_timeout(now);
        assert!(drain(&mut m).is_empty());
        m.handle_event(now, Event::Abort).unwrap();
        assert_eq!(m.phase(), Phase::Aborted);
        m.check_invariants();
    }

    #[derive(Clone, Debug)]
    enum Step {
        Event(Event),
        Wait(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => Just(Step::Event(Event::Start)),
            3 => (0u64..100).prop_map(|p| Step::Event(Event::SnapshotLoaded { position: p })),
            3 => Just(Step::Event(Event::CaughtUp)),
            3 => Just(Step::Event(Event::CutoverConfirmed)),
            3 => Just(Step::Event(Event::CleanupDone)),
            2 => (1u64..6).prop_map(|n| Step::Event(Event::NodeDown(NodeId(n)))),
            1 => Just(Step::Event(Event::Abort)),
            1 => (0u64..4000).prop_map(Step::Wait),
        ]
    }

    proptest! {
        #[test]
        fn any_order_of_events_keeps_the_readable_floor(
            from in prop_oneof![Just(None), (1u64..4).prop_map(Some)],
            steps in proptest::collection::vec(step(), 0..40),
        ) {
            let mut m = Migration::new(MigrationConfig::default(), mv(from), &set(), 3, &[]).unwrap();
            // The host's copy of the shard map entry, changed only through actions.
            let mut host = set();
            let mut now = Instant::ZERO;
            let mut lost = BTreeSet::new();
            for s in steps {
                match s {
                    Step::Event(e) => {
                        if let Event::NodeDown(n) = e {
                            lost.insert(n);
                        }
                        let before = m.phase();
                        if m.handle_event(now, e).is_err() {
                            prop_assert_eq!(m.phase(), before);
                        }
                    }
                    Step::Wait(secs) => {
                        now = now.saturating_add(Duration::from_secs(secs));
                        m.handle_timeout(now);
                    }
                }
                m.check_invariants();
                while let Some(a) = m.poll_action() {
                    match a {
                        Action::SetReplica { node, state } => host.set(node, state),
                        Action::RemoveReplica { node } => { host.remove(node); }
                        Action::SetPrimary { node } => host.primary = Some(node),
                        _ => {}
                    }
                }
                prop_assert_eq!(&host, m.view(), "actions carry the view");
                // The move itself never takes a readable replica out of the map without putting
                // one in: counting failed nodes' replicas too, three stay readable throughout.
                prop_assert!(host.readable().count() >= 3, "{:?}", host);
                if m.is_finished() {
                    prop_assert!(matches!(m.phase(), Phase::Done | Phase::Aborted));
                }
            }
            let bytes = postcard::to_allocvec(&Event::SnapshotLoaded { position: 5 }).unwrap();
            prop_assert_eq!(postcard::from_bytes::<Event>(&bytes).unwrap(), Event::SnapshotLoaded { position: 5 });
        }
    }
}
