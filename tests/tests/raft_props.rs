//! Property tests: Raft's safety holds under any schedule of deliveries, reorderings, drops,
//! duplicates, timer firings, proposals, crashes and restarts.

use std::collections::BTreeMap;

use proptest::prelude::*;
use quorate_core::raft::testkit::Cluster;
use quorate_core::raft::{EntryPayload, Event, LogIndex, Role, Term};
use quorate_core::NodeId;

#[derive(Clone, Debug)]
enum Step {
    Deliver(usize),
    Drop(usize),
    Duplicate(usize),
    Timer(u64),
    Propose,
    Crash(u64),
    Restart(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => any::<usize>().prop_map(Step::Deliver),
        1 => any::<usize>().prop_map(Step::Drop),
        1 => any::<usize>().prop_map(Step::Duplicate),
        3 => (1u64..=5).prop_map(Step::Timer),
        2 => Just(Step::Propose),
        1 => (1u64..=5).prop_map(Step::Crash),
        1 => (1u64..=5).prop_map(Step::Restart),
    ]
}

/// Cluster-wide safety state, checked after every step.
#[derive(Default)]
struct Oracle {
    leaders: BTreeMap<Term, NodeId>,
    applied: BTreeMap<LogIndex, (Term, Vec<u8>)>,
    seen_events: BTreeMap<NodeId, usize>,
    seen_applied: BTreeMap<NodeId, usize>,
}

impl Oracle {
    fn check(&mut self, c: &Cluster) -> Result<(), TestCaseError> {
        for (id, events) in &c.events {
            let from = self.seen_events.insert(*id, events.len()).unwrap_or(0).min(events.len());
            for e in &events[from..] {
                if let Event::RoleChanged { role: Role::Leader, term, .. } = e {
                    let prev = self.leaders.insert(*term, *id);
                    prop_assert!(prev.is_none() || prev == Some(*id), "two leaders in {term}: {prev:?} and {id}");
                }
            }
        }
        for (id, applied) in &c.applied {
            // A restart or snapshot resets a node's applied list; re-check it from the start.
            let seen = self.seen_applied.get(id).copied().unwrap_or(0);
            let from = if seen > applied.len() { 0 } else { seen };
            for e in &applied[from..] {
                let data = match &e.payload {
                    EntryPayload::Command(d) => d.to_vec(),
                    EntryPayload::Noop => Vec::new(),
                    EntryPayload::ConfChange(_) => vec![0xcc],
                };
                match self.applied.get(&e.index) {
                    Some((t, d)) => prop_assert!(
                        *t == e.term && *d == data,
                        "{id} applied {}/{} but {}/{t} was applied there before",
                        e.index,
                        e.term,
                        e.index
                    ),
                    None => {
                        self.applied.insert(e.index, (e.term, data));
                    }
                }
            }
            self.seen_applied.insert(*id, applied.len());
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn safety_holds_under_any_schedule(steps in proptest::collection::vec(step(), 1..300)) {
        let mut c = Cluster::new(5, Cluster::test_config);
        let mut oracle = Oracle::default();
        let mut value = 0u32;
        for s in steps {
            match s {
                Step::Deliver(i) => {
                    if !c.queue.is_empty() {
                        c.deliver_at(i % c.queue.len());
                    }
                }
                Step::Drop(i) => {
                    if !c.queue.is_empty() {
                        let i = i % c.queue.len();
                        c.queue.remove(i);
                    }
                }
                Step::Duplicate(i) => {
                    if !c.queue.is_empty() {
                        let m = c.queue[i % c.queue.len()].clone();
                        c.queue.push_back(m);
                    }
                }
                Step::Timer(id) => c.fire_timer(NodeId(id)),
                Step::Propose => {
                    if let Some(leader) = c.leader() {
                        value += 1;
                        let now = c.now;
                        let data = value.to_le_bytes().to_vec();
                        let _ = c.node_mut(leader).propose(now, data);
                        c.drain(leader);
                    }
                }
                Step::Crash(id) => {
                    if c.nodes.contains_key(&NodeId(id)) {
                        c.crash(NodeId(id));
                    }
                }
                Step::Restart(id) => {
                    if !c.nodes.contains_key(&NodeId(id)) {
                        c.start(NodeId(id));
                    }
                }
            }
            oracle.check(&c)?;
        }
        // Liveness once the schedule stops being adversarial: everyone up, messages flow.
        for id in 1..=5 {
            if !c.nodes.contains_key(&NodeId(id)) {
                c.start(NodeId(id));
            }
        }
        c.deliver_all();
        c.run_for(std::time::Duration::from_secs(3));
        oracle.check(&c)?;
        let leader = c.leader();
        prop_assert!(leader.is_some(), "no leader after healing");
        let leader = leader.unwrap();
        let now = c.now;
        let index = c.node_mut(leader).propose(now, "final").unwrap();
        c.drain(leader);
        c.deliver_all();
        c.heartbeat();
        for (id, r) in &c.nodes {
            prop_assert!(r.committed() >= index, "{id} did not commit the final entry");
        }
        oracle.check(&c)?;
    }
}
