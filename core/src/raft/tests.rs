//! One test per rule of the Raft paper (Figure 2, §5–§6) and of the extensions, on the testkit.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;

use super::testkit::{self, Cluster, InFlight};
use super::*;

const N1: NodeId = NodeId(1);
const N2: NodeId = NodeId(2);
const N3: NodeId = NodeId(3);
const N4: NodeId = NodeId(4);
const N5: NodeId = NodeId(5);

fn three() -> Cluster {
    let mut c = Cluster::new(3, Cluster::test_config);
    c.elect(N1);
    assert_eq!(c.leader(), Some(N1));
    c
}

fn no_prevote(id: NodeId) -> Config {
    let mut cfg = Cluster::test_config(id);
    cfg.pre_vote = false;
    cfg.check_quorum = false;
    cfg
}

fn msg(term: u64, body: MessageBody) -> Message {
    Message { term: Term(term), body }
}

// ----- §5.1 terms -----

#[test]
fn s5_1_a_node_that_sees_a_higher_term_adopts_it_and_steps_down() {
    let mut c = three();
    let now = c.now;
    let hb = msg(9, MessageBody::Heartbeat { commit: LogIndex(0), ctx: 0 });
    c.node_mut(N1).handle_message(now, N2, hb);
    c.drain(N1);
    assert_eq!(c.node(N1).role(), Role::Follower);
    assert_eq!(c.node(N1).term(), Term(9));
    assert_eq!(c.disks[&N1].hard_state.term, Term(9), "the new term is persisted");
}

#[test]
fn s5_1_a_message_from_an_older_term_is_dropped_and_counted() {
    let mut c = three();
    let before = c.node(N2).log.last_index();
    let now = c.now;
    let stale = msg(
        0,
        MessageBody::AppendEntries {
            prev_log_index: LogIndex(0),
            prev_log_term: Term(0),
            entries: vec![Entry { term: Term(0), index: LogIndex(1), payload: EntryPayload::Noop }],
            leader_commit: LogIndex(1),
            ctx: 0,
            commit_only: false,
        },
    );
    c.node_mut(N2).handle_message(now, N3, stale);
    assert_eq!(c.node(N2).stats().dropped_stale_term, 1);
    assert_eq!(c.node(N2).log.last_index(), before);
}

// ----- §5.2 leader election -----

#[test]
fn s5_2_a_candidate_with_a_majority_becomes_leader_and_sends_a_noop() {
    let c = three();
    assert_eq!(c.node(N1).term(), Term(1));
    for id in [N2, N3] {
        assert_eq!(c.node(id).leader(), Some(N1));
        assert_eq!(c.node(id).committed(), LogIndex(1), "the no-op of term 1 commits everywhere");
    }
}

#[test]
fn s5_2_each_node_votes_at_most_once_per_term() {
    let mut c = Cluster::new(3, no_prevote);
    let now = c.now;
    let ask = |last| {
        msg(
            5,
            MessageBody::RequestVote {
                pre_vote: false,
                last_log_index: LogIndex(last),
                last_log_term: Term(0),
                transfer: false,
            },
        )
    };
    c.node_mut(N3).handle_message(now, N1, ask(0));
    c.node_mut(N3).handle_message(now, N2, ask(0));
    c.drain(N3);
    let grants: Vec<(NodeId, bool)> = c
        .queue
        .iter()
        .filter_map(|m| match m.message.body {
            MessageBody::RequestVoteResponse { granted, .. } => Some((m.to, granted)),
            _ => None,
        })
        .collect();
    assert_eq!(grants, vec![(N1, true), (N2, false)]);
    assert_eq!(c.disks[&N3].hard_state.vote, Some(N1));
}

#[test]
fn s5_2_a_candidate_that_hears_from_a_leader_of_its_term_steps_down() {
    let mut c = Cluster::new(3, no_prevote);
    c.fire_timer(N2);
    assert_eq!(c.node(N2).role(), Role::Candidate);
    let term = c.node(N2).term();
    c.queue.clear();
    let now = c.now;
    let hb = Message { term, body: MessageBody::Heartbeat { commit: LogIndex(0), ctx: 0 } };
    c.node_mut(N2).handle_message(now, N3, hb);
    assert_eq!(c.node(N2).role(), Role::Follower);
    assert_eq!(c.node(N2).leader(), Some(N3));
}

#[test]
fn s5_2_split_votes_are_resolved_by_randomized_timeouts() {
    let mut c = Cluster::new(5, no_prevote);
    let deadlines: Vec<Instant> = c.nodes.values().map(|r| r.poll_timeout().unwrap()).collect();
    let mut sorted = deadlines.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 5, "seeded jitter gives every node its own deadline");
    // Two candidates at once; whoever loses retries with a new random timeout until one wins.
    c.fire_timer(N1);
    c.fire_timer(N2);
    for _ in 0..20 {
        c.deliver_all();
        if c.leader().is_some() {
            break;
        }
        let next = c.nodes.iter().min_by_key(|(_, r)| r.poll_timeout()).map(|(id, _)| *id).unwrap();
        c.fire_timer(next);
    }
    assert!(c.leader().is_some());
}

// ----- §5.3 log replication -----

#[test]
fn s5_3_the_leader_commits_once_a_majority_stored_the_entry() {
    let mut c = three();
    c.isolate(N3);
    let index = c.propose(N1, "x").unwrap();
    assert_eq!(c.node(N1).committed(), index, "leader plus one follower is a majority");
    assert_eq!(c.applied_commands(N1), vec![String::from("x")]);
    assert!(c.node(N3).log.last_index() < index);
    c.heal();
    c.heartbeat();
    assert_eq!(c.node(N3).committed(), index, "the lagging follower catches up");
    assert_eq!(c.applied_commands(N3), vec![String::from("x")]);
}

#[test]
fn s5_3_a_follower_refuses_entries_that_do_not_follow_its_log() {
    let mut c = three();
    let now = c.now;
    let term = c.node(N1).term();
    let gap = Message {
        term,
        body: MessageBody::AppendEntries {
            prev_log_index: LogIndex(7),
            prev_log_term: term,
            entries: vec![Entry { term, index: LogIndex(8), payload: EntryPayload::Noop }],
            leader_commit: LogIndex(1),
            ctx: 0,
            commit_only: false,
        },
    };
    c.node_mut(N2).handle_message(now, N1, gap);
    let reply = c.nodes.get_mut(&N2).unwrap().poll_action();
    match reply {
        Some(Action::Send {
            to: N1,
            message: Message { body: MessageBody::AppendEntriesResponse { reject: Some(h), index, .. }, .. },
        }) => {
            assert_eq!(index, LogIndex(7));
            assert_eq!(h.index, LogIndex(1), "hint points at the follower's last entry");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn s5_3_the_leader_overwrites_a_followers_uncommitted_conflicting_entries() {
    let mut c = Cluster::new(3, no_prevote);
    c.elect(N1);
    // N1 appends two entries only it holds, then loses leadership.
    c.isolate(N1);
    c.propose(N1, "lost-1").unwrap();
    c.propose(N1, "lost-2").unwrap();
    c.elect(N2);
    assert_eq!(c.leader(), Some(N2));
    c.propose(N2, "kept").unwrap();
    c.heal();
    c.heartbeat();
    c.heartbeat();
    assert_eq!(c.node(N1).leader(), Some(N2));
    assert_eq!(c.applied_commands(N1), vec![String::from("kept")]);
    let n1_log: Vec<Term> =
        (1..=c.node(N1).log.last_index().0).map(|i| c.node(N1).log.term(LogIndex(i)).unwrap()).collect();
    let n2_log: Vec<Term> =
        (1..=c.node(N2).log.last_index().0).map(|i| c.node(N2).log.term(LogIndex(i)).unwrap()).collect();
    assert_eq!(n1_log, n2_log, "logs match after repair");
}

// ----- §5.4 safety -----

#[test]
fn s5_4_1_a_vote_is_refused_to_a_candidate_with_an_older_log() {
    let mut c = three();
    c.isolate(N3);
    c.propose(N1, "a").unwrap();
    c.heal();
    let now = c.now;
    let stale_candidate = msg(
        c.node(N2).term().0 + 1,
        MessageBody::RequestVote {
            pre_vote: false,
            last_log_index: LogIndex(1),
            last_log_term: Term(1),
            transfer: true,
        },
    );
    c.node_mut(N2).handle_message(now, N3, stale_candidate);
    c.drain(N2);
    let refused = c
        .queue
        .iter()
        .any(|m| m.to == N3 && matches!(m.message.body, MessageBody::RequestVoteResponse { granted: false, .. }));
    assert!(refused);
}

fn disk(term: u64, commit: u64, log: &[u64]) -> testkit::Disk {
    testkit::Disk {
        hard_state: HardState { term: Term(term), vote: None, commit: LogIndex(commit) },
        snapshot: None,
        entries: log
            .iter()
            .enumerate()
            .map(|(i, t)| Entry { term: Term(*t), index: LogIndex(i as u64 + 1), payload: EntryPayload::Noop })
            .collect(),
    }
}

fn one_entry_per_append(id: NodeId) -> Config {
    let mut cfg = Cluster::test_config(id);
    cfg.append_bytes_max = 1;
    cfg
}

/// Figure 8 (c): S1 leads term 4 holding index 2 from term 2; S5 holds index 2 from term 3.
fn figure8(config: fn(NodeId) -> Config) -> Cluster {
    let disks = vec![
        (N1, disk(3, 1, &[1, 2])),
        (N2, disk(3, 1, &[1, 2])),
        (N3, disk(3, 1, &[1])),
        (N4, disk(3, 1, &[1])),
        (N5, disk(3, 1, &[1, 3])),
    ];
    let mut c = Cluster::from_disks(disks, &[N1, N2, N3, N4, N5], config);
    c.isolate(N5);
    c.fire_timer(N1);
    // Deliver everything except appends that would hand S1's term-4 no-op to a follower.
    loop {
        let drop_noop = c.queue.front().is_some_and(|m| match &m.message.body {
            MessageBody::AppendEntries { entries, prev_log_index, prev_log_term, .. } => {
                let accepted = c.nodes.get(&m.to).is_some_and(|r| r.log.term(*prev_log_index) == Some(*prev_log_term));
                accepted && entries.iter().any(|e| e.term == Term(4))
            }
            _ => false,
        });
        if drop_noop {
            c.queue.pop_front();
        } else if !c.deliver_one() {
            break;
        }
    }
    assert_eq!(c.leader(), Some(N1));
    assert_eq!(c.node(N1).term(), Term(4));
    c
}

#[test]
fn s5_4_2_entries_of_an_earlier_term_are_not_committed_by_counting() {
    let c = figure8(one_entry_per_append);
    let holders = c.nodes.values().filter(|r| r.log.term(LogIndex(2)) == Some(Term(2))).count();
    assert!(holders >= 3, "index 2 of term 2 is on a majority ({holders})");
    assert_eq!(c.node(N1).committed(), LogIndex(1), "but it is not committed by counting");
    // And rightly so: S5 can still win and overwrite it.
    let mut c = c;
    c.crash(N1);
    c.heal();
    c.advance(Duration::from_millis(300));
    c.elect(N5); // learns term 4 from the refusals
    c.elect(N5);
    assert_eq!(c.leader(), Some(N5));
    c.heartbeat();
    assert_eq!(c.node(N3).log.term(LogIndex(2)), Some(Term(3)), "the uncommitted entry was replaced");
}

#[cfg(feature = "planted-bugs")]
#[test]
fn s5_4_2_the_planted_counting_bug_commits_the_old_entry() {
    fn buggy(id: NodeId) -> Config {
        let mut cfg = one_entry_per_append(id);
        cfg.planted_bug = Some(PlantedBug::CommitOldTermByCounting);
        cfg
    }
    let c = figure8(buggy);
    assert_eq!(c.node(N1).committed(), LogIndex(2), "the planted bug commits by counting");
}

#[test]
fn s5_5_a_restarted_follower_recovers_its_log_and_vote_from_disk() {
    let mut c = three();
    c.propose(N1, "a").unwrap();
    c.propose(N1, "b").unwrap();
    let (term, last) = (c.node(N2).term(), c.node(N2).log.last_index());
    c.crash(N2);
    c.start(N2);
    assert_eq!(c.node(N2).term(), term);
    assert_eq!(c.node(N2).vote(), Some(N1));
    assert_eq!(c.node(N2).log.last_index(), last);
    assert_eq!(c.applied_commands(N2), vec![String::from("a"), String::from("b")], "committed entries are re-applied");
}

// ----- §6 membership -----

fn change(c: &mut Cluster, leader: NodeId, cc: ConfChange) -> LogIndex {
    let now = c.now;
    let index = c.node_mut(leader).propose_conf_change(now, cc).unwrap();
    c.drain(leader);
    c.deliver_all();
    c.heartbeat();
    index
}

fn five_with_two_spare() -> Cluster {
    let ids = [N1, N2, N3, N4, N5];
    let mut c = Cluster::with_membership(&ids, Membership::with_voters([N1, N2, N3]), Cluster::test_config);
    c.elect(N1);
    c
}

#[test]
fn s6_joint_consensus_enters_and_leaves_automatically() {
    let mut c = five_with_two_spare();
    let cc = ConfChange {
        changes: vec![ConfChangeItem::AddVoter(N4), ConfChangeItem::AddVoter(N5), ConfChangeItem::RemoveNode(N3)],
        transition: ConfTransition::Auto,
    };
    change(&mut c, N1, cc);
    c.heartbeat();
    let m = c.node(N1).membership().clone();
    assert!(!m.is_joint(), "auto-leave happened");
    assert_eq!(m.voters, vec![N1, N2, N4, N5]);
    let changes: Vec<bool> = c.events[&N1]
        .iter()
        .filter_map(|e| match e {
            Event::MembershipChanged { membership, .. } => Some(membership.is_joint()),
            _ => None,
        })
        .collect();
    assert_eq!(changes, vec![true, false], "entered then left the joint membership");
    assert_eq!(c.node(N5).membership(), &m, "new voters learned the membership");
}

#[test]
fn s6_one_membership_change_at_a_time() {
    let mut c = five_with_two_spare();
    let now = c.now;
    c.isolate(N1);
    c.node_mut(N1).propose_conf_change(now, ConfChange::single(ConfChangeItem::AddVoter(N4))).unwrap();
    let second = c.node_mut(N1).propose_conf_change(now, ConfChange::single(ConfChangeItem::AddVoter(N5)));
    assert_eq!(second, Err(ProposeError::ConfChangePending));
    let invalid = Membership::with_voters([N1]).apply(&ConfChange::leave_joint());
    assert_eq!(invalid, Err(ConfChangeError::NotJoint));
}

#[test]
fn s6_learners_receive_the_log_but_never_vote_and_can_be_promoted() {
    let mut c = five_with_two_spare();
    change(&mut c, N1, ConfChange::single(ConfChangeItem::AddLearner(N4)));
    c.propose(N1, "for-learner").unwrap();
    c.heartbeat();
    assert_eq!(c.applied_commands(N4), vec![String::from("for-learner")]);
    // A learner never campaigns.
    c.fire_timer(N4);
    assert_eq!(c.node(N4).role(), Role::Follower);
    // Commit needs 2 of {1,2,3}: the learner does not count.
    c.isolate(N2);
    c.isolate(N3);
    c.cut.retain(|(a, b)| !((*a == N1 && *b == N4) || (*a == N4 && *b == N1)));
    let idx = c.propose(N1, "no-quorum").unwrap();
    assert!(c.node(N1).committed() < idx);
    c.heal();
    c.run_for(Duration::from_secs(1));
    let leader = c.leader().unwrap();
    change(&mut c, leader, ConfChange::single(ConfChangeItem::AddVoter(N4)));
    assert!(c.node(leader).membership().is_voter(N4));
    assert!(c.node(N4).membership().is_voter(N4));
}

#[test]
fn s6_removing_the_leader_hands_over_and_the_rest_continue() {
    let mut c = three();
    change(&mut c, N1, ConfChange::single(ConfChangeItem::RemoveNode(N1)));
    assert_ne!(c.node(N1).role(), Role::Leader, "removed leader stepped down");
    // The handover (TimeoutNow) or an election gives the remaining voters a leader.
    for _ in 0..5 {
        if let Some(l) = c.leader() {
            if l != N1 {
                break;
            }
        }
        let next = [N2, N3].into_iter().min_by_key(|id| c.node(*id).poll_timeout()).unwrap();
        c.elect(next);
    }
    let leader = c.leader().unwrap();
    assert!(leader == N2 || leader == N3);
    c.propose(leader, "after-removal").unwrap();
    assert!(c.applied_commands(N2).contains(&String::from("after-removal")));
}

// ----- leadership transfer -----

#[test]
fn transfer_to_a_caught_up_voter_makes_it_leader() {
    let mut c = three();
    c.propose(N1, "a").unwrap();
    let now = c.now;
    c.node_mut(N1).transfer_leader(now, N3).unwrap();
    c.drain(N1);
    c.deliver_all();
    assert_eq!(c.leader(), Some(N3));
    assert_eq!(c.node(N1).role(), Role::Follower);
}

#[test]
fn transfer_to_a_lagging_voter_catches_it_up_first() {
    let mut c = three();
    c.isolate(N3);
    c.propose(N1, "a").unwrap();
    c.heal();
    let now = c.now;
    c.node_mut(N1).transfer_leader(now, N3).unwrap();
    assert_eq!(c.node_mut(N1).propose(now, "x"), Err(ProposeError::TransferInProgress));
    c.drain(N1);
    c.deliver_all();
    assert_eq!(c.leader(), Some(N3));
    assert_eq!(c.applied_commands(N3), vec![String::from("a")]);
}

#[test]
fn transfer_to_a_gone_voter_aborts_cleanly() {
    let mut c = three();
    c.crash(N3);
    let now = c.now;
    c.node_mut(N1).propose(now, "a").unwrap();
    c.drain(N1);
    c.deliver_all();
    c.node_mut(N1).transfer_leader(now, N3).unwrap();
    assert_eq!(c.node_mut(N1).transfer_leader(now, N2), Err(TransferError::InProgress));
    c.run_for(Duration::from_millis(150));
    assert!(c.events[&N1].contains(&Event::TransferAborted { target: N3 }));
    assert_eq!(c.node(N1).role(), Role::Leader);
    assert!(c.propose(N1, "after-abort").is_ok(), "proposals resume after the abort");
    assert_eq!(c.node_mut(N1).transfer_leader(now, N1), Err(TransferError::TargetIsLeader));
    assert_eq!(c.node_mut(N1).transfer_leader(now, NodeId(9)), Err(TransferError::NotAVoter(NodeId(9))));
}

// ----- pre-vote and check-quorum -----

#[test]
fn prevote_keeps_a_rejoining_partitioned_node_from_disrupting_the_leader() {
    let mut c = three();
    c.isolate(N3);
    c.run_for(Duration::from_secs(2));
    assert!(c.node(N3).stats().campaigns >= 5, "the isolated node kept trying");
    assert_eq!(c.node(N3).term(), Term(1), "pre-vote failed, so the term never moved");
    c.heal();
    c.run_for(Duration::from_secs(2));
    assert_eq!(c.leader(), Some(N1), "the leader was not disturbed");
    assert_eq!(c.node(N3).leader(), Some(N1), "the rejoined node follows the leader");
    assert_eq!(c.node(N1).term(), Term(1));
}

#[test]
fn check_quorum_makes_an_isolated_leader_step_down() {
    let mut c = three();
    c.isolate(N1);
    for _ in 0..30 {
        c.fire_timer(N1);
        if c.node(N1).role() != Role::Leader {
            break;
        }
    }
    assert_eq!(c.node(N1).role(), Role::Follower);
    assert_eq!(c.node(N1).stats().check_quorum_step_downs, 1);
}

#[test]
fn followers_in_lease_ignore_vote_requests() {
    let mut c = three();
    let now = c.now;
    let disrupt = msg(
        7,
        MessageBody::RequestVote {
            pre_vote: false,
            last_log_index: LogIndex(9),
            last_log_term: Term(6),
            transfer: false,
        },
    );
    c.node_mut(N2).handle_message(now, N3, disrupt);
    assert_eq!(c.node(N2).term(), Term(1));
    assert_eq!(c.node(N2).stats().ignored_in_lease, 1);
}

// ----- reads -----

fn read_events(c: &Cluster, id: NodeId) -> Vec<Event> {
    c.events[&id].iter().filter(|e| matches!(e, Event::ReadReady { .. } | Event::ReadFailed { .. })).cloned().collect()
}

#[test]
fn read_index_waits_for_a_quorum_round() {
    let mut c = three();
    c.propose(N1, "a").unwrap();
    let now = c.now;
    c.node_mut(N1).read_index(now, 42).unwrap();
    c.drain(N1);
    assert!(read_events(&c, N1).is_empty(), "not ready before the heartbeat round");
    c.deliver_all();
    let committed = c.node(N1).committed();
    assert_eq!(read_events(&c, N1), vec![Event::ReadReady { id: 42, index: committed }]);
}

#[test]
fn read_index_on_an_isolated_leader_never_succeeds_and_fails_on_step_down() {
    let mut c = three();
    c.isolate(N1);
    let now = c.now;
    c.node_mut(N1).read_index(now, 7).unwrap();
    c.drain(N1);
    c.deliver_all();
    assert!(read_events(&c, N1).is_empty());
    for _ in 0..30 {
        c.fire_timer(N1);
        if c.node(N1).role() != Role::Leader {
            break;
        }
    }
    assert_eq!(read_events(&c, N1), vec![Event::ReadFailed { id: 7 }]);
}

#[test]
fn read_index_from_a_follower_is_forwarded() {
    let mut c = three();
    let now = c.now;
    c.node_mut(N2).read_index(now, 5).unwrap();
    c.drain(N2);
    c.deliver_all();
    let committed = c.node(N1).committed();
    assert_eq!(read_events(&c, N2), vec![Event::ReadReady { id: 5, index: committed }]);
    let mut lonely = Cluster::new(3, Cluster::test_config);
    let now = lonely.now;
    assert_eq!(lonely.node_mut(N2).read_index(now, 1), Err(ReadError::NoLeader));
}

#[test]
fn lease_reads_skip_the_round_while_the_lease_holds() {
    fn lease(id: NodeId) -> Config {
        let mut cfg = Cluster::test_config(id);
        cfg.read_mode = ReadMode::Lease { clock_drift_max_ppm: 10_000 };
        cfg
    }
    let mut c = Cluster::new(3, lease);
    c.elect(N1);
    c.heartbeat();
    let now = c.now;
    c.node_mut(N1).read_index(now, 1).unwrap();
    c.drain(N1);
    assert_eq!(read_events(&c, N1).len(), 1, "served from the lease without a round");
    c.isolate(N1);
    c.advance(Duration::from_millis(150));
    let now = c.now;
    c.node_mut(N1).read_index(now, 2).unwrap();
    c.drain(N1);
    assert_eq!(read_events(&c, N1).len(), 1, "lease expired: must confirm with a quorum");
}

// ----- snapshots -----

fn small_chunks(id: NodeId) -> Config {
    let mut cfg = Cluster::test_config(id);
    cfg.snapshot_chunk_bytes = 4;
    cfg.snapshot_chunks_inflight_max = 2;
    cfg
}

fn snapshot_leader(c: &mut Cluster, id: NodeId, data: &'static [u8]) {
    let now = c.now;
    let applied = c.node(id).applied();
    c.node_mut(id).handle_snapshot(now, applied, Bytes::from_static(data)).unwrap();
    c.drain(id);
}

#[test]
fn s7_a_lagging_follower_receives_a_chunked_snapshot() {
    let mut c = Cluster::new(3, small_chunks);
    c.elect(N1);
    c.isolate(N3);
    c.propose(N1, "a").unwrap();
    c.propose(N1, "b").unwrap();
    snapshot_leader(&mut c, N1, b"state-after-a-and-b");
    assert_eq!(c.node(N1).first_index(), c.node(N1).applied().next());
    c.heal();
    c.heartbeat();
    c.heartbeat();
    assert_eq!(c.node(N3).snapshot_meta().index, c.node(N1).snapshot_meta().index);
    assert_eq!(c.node(N3).stats().snapshots_installed, 1);
    let chunks = c.transcript.lines().filter(|l| l.contains("-> n3 Snapshot")).count();
    assert!(chunks >= 5, "19 bytes in 4-byte chunks: {chunks}");
    c.propose(N1, "c").unwrap();
    assert_eq!(c.applied_commands(N3), vec![String::from("c")], "replication continues after the snapshot");
}

#[test]
fn s7_snapshot_transfer_survives_lost_chunks_and_a_leader_change() {
    let mut c = Cluster::new(3, small_chunks);
    c.elect(N1);
    c.isolate(N3);
    c.propose(N1, "a").unwrap();
    snapshot_leader(&mut c, N1, b"0123456789abcdef");
    c.propose(N1, "b").unwrap();
    c.heartbeat();
    snapshot_leader(&mut c, N2, b"0123456789abcdefXY");
    c.heal();
    // Lose every other chunk for a while: the leader resends from what was acknowledged.
    c.fire_timer(N1);
    let mut chunk = 0;
    for _ in 0..200 {
        let is_chunk = c.queue.front().is_some_and(|m| matches!(m.message.body, MessageBody::InstallSnapshot { .. }));
        if is_chunk {
            chunk += 1;
            if chunk % 2 == 0 {
                c.queue.pop_front();
                continue;
            }
        }
        if !c.deliver_one() {
            break;
        }
    }
    assert!(c.node(N3).incoming_snapshot.is_some(), "transfer under way, not finished");
    // Now the leader dies mid-transfer; the next leader sends its own snapshot.
    c.drop_where(|m: &InFlight| m.to == N3);
    c.crash(N1);
    c.run_for(Duration::from_secs(2));
    let leader = c.leader().unwrap();
    assert_eq!(leader, N2);
    assert_eq!(c.node(N3).snapshot_meta().index, c.node(N2).snapshot_meta().index);
    c.propose(N2, "after").unwrap();
    assert!(c.applied_commands(N3).contains(&String::from("after")));
}

#[test]
fn s7_an_interrupted_transfer_of_the_same_snapshot_resumes_where_it_stopped() {
    let mut c = Cluster::new(3, small_chunks);
    c.elect(N1);
    c.isolate(N3);
    c.propose(N1, "a").unwrap();
    snapshot_leader(&mut c, N1, b"0123456789abcdefghijklmnop");
    c.heal();
    c.fire_timer(N1);
    // Deliver three chunks, then lose everything in flight.
    let mut delivered = 0;
    while delivered < 3 {
        let is_chunk = c.queue.front().is_some_and(|m| matches!(m.message.body, MessageBody::InstallSnapshot { .. }));
        if is_chunk {
            delivered += 1;
        }
        assert!(c.deliver_one());
    }
    c.queue.clear();
    let held = c.node(N3).incoming_snapshot.as_ref().map(|(_, b)| b.len()).unwrap();
    assert_eq!(held, 12);
    c.heartbeat();
    c.heartbeat();
    let resent_from_zero =
        c.transcript.lines().filter(|l| l.contains("-> n3 Snapshot") && l.contains("bytes 0..")).count();
    assert_eq!(resent_from_zero, 1, "chunk 0 was sent once: the transfer resumed at byte 12");
    assert_eq!(c.node(N3).snapshot_meta().index, c.node(N1).snapshot_meta().index);
}

#[test]
fn snapshot_wanted_is_emitted_at_the_threshold() {
    fn every_three(id: NodeId) -> Config {
        let mut cfg = Cluster::test_config(id);
        cfg.snapshot_threshold_entries = 3;
        cfg
    }
    let mut c = Cluster::new(3, every_three);
    c.elect(N1);
    c.propose(N1, "a").unwrap();
    c.propose(N1, "b").unwrap();
    assert!(c.events[&N1].iter().any(|e| matches!(e, Event::SnapshotWanted { applied } if *applied == LogIndex(3))));
    let now = c.now;
    assert!(matches!(
        c.node_mut(N1).handle_snapshot(now, LogIndex(2), Bytes::new()),
        Err(SnapshotError::NotAtApplied { .. })
    ));
}

// ----- batching and flow control -----

#[test]
fn a_batch_is_one_write_and_one_append_per_follower() {
    let mut c = three();
    let now = c.now;
    let batch = (0..64).map(|_| [7u8; 128].to_vec());
    let (first, last) = c.node_mut(N1).propose_batch(now, batch).unwrap();
    assert_eq!(last.0 - first.0, 63);
    let actions: Vec<Action> = core::iter::from_fn(|| c.nodes.get_mut(&N1).unwrap().poll_action()).collect();
    let sends = actions.iter().filter(|a| matches!(a, Action::Send { .. })).count();
    let writes = actions.iter().filter(|a| matches!(a, Action::PersistEntries { .. })).count();
    assert_eq!((sends, writes), (2, 1));
    assert!(matches!(actions.last(), Some(Action::PersistEntries { .. })), "the leader sends before its own write");
}

#[test]
fn a_refused_batch_proposes_nothing() {
    fn limited(id: NodeId) -> Config {
        let mut cfg = Cluster::test_config(id);
        cfg.entry_bytes_max = 256;
        cfg.uncommitted_bytes_max = 1024;
        cfg
    }
    let mut c = Cluster::new(3, limited);
    c.elect(N1);
    c.heartbeat();
    c.drain(N1);
    let now = c.now;
    let before = (c.node(N1).last_index(), c.node(N1).last_term());
    // One oversized entry in the middle refuses the whole batch, even the entries before it.
    let batch = [vec![1u8; 8], vec![2u8; 8], vec![3u8; 512], vec![4u8; 8]];
    let refused = c.node_mut(N1).propose_batch(now, batch);
    assert_eq!(refused, Err(ProposeError::TooLarge { size_bytes: 512 + 24 }));
    assert_eq!((c.node(N1).last_index(), c.node(N1).last_term()), before);
    assert_eq!(c.node_mut(N1).poll_action(), None, "a refused batch sends and persists nothing");
    // Over the uncommitted budget (with something already uncommitted): refused as a whole too.
    c.isolate(N2);
    c.isolate(N3);
    c.node_mut(N1).propose(now, vec![0u8; 200]).unwrap();
    c.drain(N1);
    let before = c.node(N1).last_index();
    let refused = c.node_mut(N1).propose_batch(now, (0..5).map(|_| vec![9u8; 200]));
    assert_eq!(refused, Err(ProposeError::UncommittedLimit));
    assert_eq!(c.node(N1).last_index(), before);
    assert_eq!(c.node_mut(N1).poll_action(), None);
    c.node(N1).check_invariants();
}

#[test]
fn the_inflight_window_bounds_unacknowledged_appends() {
    fn tiny(id: NodeId) -> Config {
        let mut cfg = Cluster::test_config(id);
        cfg.inflight_msgs_max = 2;
        cfg
    }
    let mut c = Cluster::new(3, tiny);
    c.elect(N1);
    c.heartbeat();
    c.isolate(N2);
    c.isolate(N3);
    c.cut.clear();
    let now = c.now;
    for _ in 0..5 {
        c.node_mut(N1).propose(now, "p").unwrap();
    }
    let appends_to_n2 = core::iter::from_fn(|| c.nodes.get_mut(&N1).unwrap().poll_action())
        .filter(|a| {
            matches!(a, Action::Send { to: N2, message: Message { body: MessageBody::AppendEntries { .. }, .. } })
        })
        .count();
    assert_eq!(appends_to_n2, 2, "two messages in flight, the rest wait");
}

// ----- robustness -----

#[test]
fn messages_from_self_or_node_zero_are_dropped() {
    let mut c = three();
    let now = c.now;
    let hb = msg(50, MessageBody::Heartbeat { commit: LogIndex(0), ctx: 0 });
    c.node_mut(N2).handle_message(now, N2, hb.clone());
    c.node_mut(N2).handle_message(now, NodeId::NONE, hb);
    assert_eq!(c.node(N2).term(), Term(1));
    assert_eq!(c.node(N2).stats().dropped_invalid, 2);
}

#[test]
fn an_append_contradicting_committed_entries_changes_nothing() {
    let mut c = three();
    c.propose(N1, "a").unwrap();
    let committed = c.node(N2).committed();
    let now = c.now;
    let forged = msg(
        1,
        MessageBody::AppendEntries {
            prev_log_index: LogIndex(1),
            prev_log_term: Term(1),
            entries: vec![Entry {
                term: Term(1),
                index: LogIndex(2),
                payload: EntryPayload::Command(Command::from("evil")),
            }],
            leader_commit: LogIndex(0),
            ctx: 0,
            commit_only: false,
        },
    );
    // prev below commit: answered with the commit index, nothing overwritten.
    c.node_mut(N2).handle_message(now, N1, forged);
    assert_eq!(c.node(N2).committed(), committed);
    assert!(matches!(&c.node(N2).log.entry(LogIndex(2)).unwrap().payload, EntryPayload::Command(d) if d == "a"));
}

#[test]
fn a_response_claiming_an_index_beyond_the_log_is_ignored() {
    let mut c = three();
    let now = c.now;
    let bogus = msg(1, MessageBody::AppendEntriesResponse { index: LogIndex(999), reject: None, ctx: 0 });
    c.node_mut(N1).handle_message(now, N2, bogus);
    c.drain(N1);
    assert!(c.node(N1).committed() < LogIndex(999));
    assert_eq!(c.node(N1).stats().dropped_invalid, 1);
}

// ----- regressions from review -----

fn ids(v: &[u64]) -> Vec<NodeId> {
    v.iter().map(|&x| NodeId(x)).collect()
}

fn propose_cc(c: &mut Cluster, leader: NodeId, changes: Vec<ConfChangeItem>, transition: ConfTransition) {
    let now = c.now;
    c.node_mut(leader).propose_conf_change(now, ConfChange { changes, transition }).unwrap();
    c.drain(leader);
    c.deliver_all();
    c.heartbeat();
}

#[test]
fn recovery_applies_each_committed_membership_change_once() {
    let mut c = Cluster::with_membership(
        &ids(&[1, 2, 3, 4, 5, 6, 7]),
        Membership::with_voters(ids(&[1, 2, 3])),
        Cluster::test_config,
    );
    c.elect(N1);
    propose_cc(&mut c, N1, vec![ConfChangeItem::AddVoter(N4), ConfChangeItem::AddVoter(N5)], ConfTransition::Auto);
    assert_eq!(c.node(N1).membership().voters, ids(&[1, 2, 3, 4, 5]));
    let joint = ConfTransition::Joint { auto_leave: false };
    propose_cc(&mut c, N1, vec![ConfChangeItem::AddVoter(NodeId(6)), ConfChangeItem::AddVoter(NodeId(7))], joint);
    let before = c.node(N2).membership().clone();
    assert!(before.is_joint());
    c.crash(N2);
    c.start(N2);
    assert_eq!(c.node(N2).membership(), &before, "a restart must not replay membership changes twice");
}

#[test]
fn a_newer_snapshot_mid_transfer_replaces_the_one_being_sent() {
    fn chunks(id: NodeId) -> Config {
        let mut cfg = Cluster::test_config(id);
        cfg.snapshot_chunk_bytes = 10;
        cfg.snapshot_chunks_inflight_max = 2;
        cfg
    }
    let mut c = Cluster::new(3, chunks);
    c.elect(N1);
    c.isolate(N3);
    for _ in 0..5 {
        c.propose(N1, "a").unwrap();
    }
    let (now, applied) = (c.now, c.node(N1).applied());
    c.node_mut(N1).handle_snapshot(now, applied, Bytes::from(vec![1u8; 100])).unwrap();
    c.drain(N1);
    c.heal();
    c.fire_timer(N1);
    for _ in 0..6 {
        c.deliver_one();
    }
    c.queue.clear();
    for _ in 0..3 {
        c.propose(N1, "b").unwrap();
    }
    let (now, applied) = (c.now, c.node(N1).applied());
    c.node_mut(N1).handle_snapshot(now, applied, Bytes::from(vec![2u8; 100])).unwrap();
    c.drain(N1);
    c.run_for(Duration::from_secs(5));
    assert_eq!(c.node(N3).committed(), c.node(N1).committed(), "the follower caught up from the newer snapshot");
}

#[test]
fn a_lost_forwarded_read_fails_after_a_timeout() {
    fn few_reads(id: NodeId) -> Config {
        let mut cfg = Cluster::test_config(id);
        cfg.reads_pending_max = 2;
        cfg
    }
    let mut c = Cluster::new(3, few_reads);
    c.elect(N1);
    for id in [1u64, 2] {
        let now = c.now;
        c.node_mut(N2).read_index(now, id).unwrap();
        c.drain(N2);
        c.drop_where(|m| matches!(m.message.body, MessageBody::ReadIndex { .. }));
    }
    c.run_for(Duration::from_secs(1));
    assert_eq!(read_events(&c, N2), vec![Event::ReadFailed { id: 1 }, Event::ReadFailed { id: 2 }]);
    let now = c.now;
    assert!(c.node_mut(N2).read_index(now, 3).is_ok(), "the follower is not wedged");
}

#[test]
fn a_restarted_follower_keeps_the_lease_promise_it_no_longer_remembers() {
    fn lease(id: NodeId) -> Config {
        let mut cfg = Cluster::test_config(id);
        cfg.read_mode = ReadMode::Lease { clock_drift_max_ppm: 0 };
        cfg
    }
    let mut c = Cluster::new(3, lease);
    c.elect(N1);
    c.propose(N1, "x").unwrap();
    c.cut.insert((N1, N3));
    c.cut.insert((N3, N1));
    let d3 = c.node(N3).poll_timeout().unwrap();
    while c.node(N1).poll_timeout().unwrap() < d3 {
        c.fire_timer(N1);
        c.deliver_all();
    }
    // n2 restarts at once: it forgets that it just heard from n1, whose lease still holds.
    c.crash(N2);
    c.start(N2);
    c.cut.insert((N1, N2));
    c.cut.insert((N2, N1));
    c.now = c.now.max(d3);
    let now = c.now;
    c.node_mut(N3).handle_timeout(now);
    c.drain(N3);
    c.deliver_all();
    assert_ne!(c.node(N3).role(), Role::Leader, "n2 must not vote while n1's lease may still hold");
    let now = c.now;
    c.node_mut(N1).read_index(now, 99).unwrap();
    c.drain(N1);
    assert!(read_events(&c, N1).iter().all(|e| matches!(e, Event::ReadReady { .. })), "n1's lease read is still safe");
}

#[test]
fn auto_leave_happens_after_a_transfer_aborts() {
    let mut c = Cluster::with_membership(
        &ids(&[1, 2, 3, 4, 5]),
        Membership::with_voters(ids(&[1, 2, 3])),
        Cluster::test_config,
    );
    c.elect(N1);
    let now = c.now;
    let cc = ConfChange {
        changes: vec![ConfChangeItem::AddVoter(N4), ConfChangeItem::AddVoter(N5)],
        transition: ConfTransition::Auto,
    };
    c.node_mut(N1).propose_conf_change(now, cc).unwrap();
    c.drain(N1);
    c.cut.insert((N1, N2));
    c.cut.insert((N2, N1));
    c.node_mut(N1).transfer_leader(now, N2).unwrap();
    c.drain(N1);
    c.deliver_all();
    c.run_for(Duration::from_secs(2));
    let leader = c.leader().unwrap();
    assert!(!c.node(leader).membership().is_joint(), "the joint membership was left after the transfer aborted");
}

#[test]
fn a_message_with_an_absurd_term_is_dropped() {
    let mut c = three();
    let now = c.now;
    c.node_mut(N2).handle_message(now, N3, msg(u64::MAX, MessageBody::Heartbeat { commit: LogIndex(0), ctx: 0 }));
    assert_eq!(c.node(N2).term(), Term(1));
    assert_eq!(c.node(N2).stats().dropped_invalid, 1);
}

#[test]
fn a_leader_commits_at_once_what_a_shrunken_quorum_already_holds() {
    let mut c = Cluster::new(4, no_prevote);
    c.elect(N1);
    let now = c.now;
    // Remove n4 (quorum 3 of 4 -> 2 of 3) and, right behind it, propose y.
    let cc_index = c.node_mut(N1).propose_conf_change(now, ConfChange::single(ConfChangeItem::RemoveNode(N4))).unwrap();
    c.drain(N1);
    let y = c.node_mut(N1).propose(now, "y").unwrap();
    c.drain(N1);
    // n4 never answers; n3 acknowledges only the removal; n2 acknowledges everything first.
    c.drop_where(|m: &InFlight| m.to == N4 || m.from == N4);
    let to_n3: Vec<InFlight> = c.queue.iter().filter(|m| m.to == N3).cloned().collect();
    c.drop_where(|m: &InFlight| m.to == N3);
    c.deliver_all();
    assert!(c.node(N1).committed() < cc_index, "2 of 4 is not a quorum");
    // n3 gets only the removal (by hand; n1 -> n3 stays cut) and its acknowledgement returns.
    c.cut.insert((N1, N3));
    let removal = to_n3.into_iter().find(|m| match &m.message.body {
        MessageBody::AppendEntries { entries, .. } => entries.iter().any(|e| e.index == cc_index),
        _ => false,
    });
    let removal = removal.expect("the removal was sent to n3");
    let now = c.now;
    c.node_mut(N3).handle_message(now, N1, removal.message);
    c.drain(N3);
    c.deliver_all();
    let r = c.node(N1);
    assert!(!r.membership().is_voter(N4), "the removal committed and applied");
    assert!(r.committed() >= y, "y, held by n1 and n2, is committed under the new quorum at once");
}

#[test]
fn s7_a_snapshot_whose_chunks_do_not_match_its_digest_or_offsets_is_refused() {
    let mut c = three();
    c.elect(N1);
    c.propose(N1, "a").unwrap();
    c.run_for(Duration::from_millis(100));
    let term = c.node(N1).term().0;
    let data: &[u8] = b"abcdefgh";
    let meta = SnapshotMeta {
        index: LogIndex(c.node(N3).committed().0 + 10),
        term: Term(term),
        membership: c.node(N1).membership().clone(),
        size_bytes: data.len() as u64,
        digest: crate::fnv1a64(data) ^ 1,
    };
    let chunk = |meta: &SnapshotMeta, offset: u64, bytes: &[u8]| {
        msg(
            term,
            MessageBody::InstallSnapshot {
                meta: meta.clone().into(),
                offset,
                data: Bytes::from(bytes.to_vec()),
                ctx: 0,
            },
        )
    };
    // Sends to N3 and returns the next offset it asks for.
    let send = |c: &mut Cluster, m: Message| -> u64 {
        c.queue.clear();
        let now = c.now;
        c.node_mut(N3).handle_message(now, N1, m);
        c.drain(N3);
        let asks: Vec<u64> = c
            .queue
            .iter()
            .filter_map(|f| match f.message.body {
                MessageBody::InstallSnapshotResponse { next_offset, .. } => Some(next_offset),
                _ => None,
            })
            .collect();
        assert_eq!(asks.len(), 1, "one answer per chunk");
        asks[0]
    };
    let rejected = |c: &Cluster| c.node(N3).stats().snapshot_chunks_rejected;
    assert_eq!(send(&mut c, chunk(&meta, 0, &data[..4])), 4);
    // A chunk past what is held is refused; the follower asks again from where it is.
    assert_eq!(send(&mut c, chunk(&meta, 6, &data[6..])), 4);
    assert_eq!(rejected(&c), 1);
    // Complete, but the bytes do not match the digest: refused, and asked again from 0.
    assert_eq!(send(&mut c, chunk(&meta, 4, &data[4..])), 0);
    assert_eq!(rejected(&c), 2);
    assert_eq!(c.node(N3).stats().snapshots_installed, 0);
    assert!(c.disks[&N3].snapshot.is_none(), "nothing reached the disk");
    // The same snapshot with its real digest installs.
    let good = SnapshotMeta { digest: crate::fnv1a64(data), ..meta };
    assert_eq!(send(&mut c, chunk(&good, 0, data)), data.len() as u64);
    assert_eq!(c.node(N3).stats().snapshots_installed, 1);
    assert_eq!(c.node(N3).snapshot_meta(), &good);
}
