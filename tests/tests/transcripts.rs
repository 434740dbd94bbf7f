//! Scenario transcripts for Raft's tricky cases, compared against reviewed golden files.
//!
//! Each scenario runs on the deterministic testkit and records every delivery, role change,
//! commit and read. The transcript must match `tests/transcripts/<name>.txt`; after an
//! intended change, regenerate with `UPDATE_TRANSCRIPTS=1 cargo test --test transcripts` and
//! review the diff like code. Every scenario also asserts the facts that make it correct, so
//! a regenerated transcript cannot hide a broken outcome.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use quorate_core::raft::testkit::{Cluster, Disk};
use quorate_core::raft::{
    ConfChange, ConfChangeItem, Config, Entry, EntryPayload, Event, HardState, LogIndex, Membership, MessageBody, Role,
    Term,
};
use quorate_core::NodeId;

const N1: NodeId = NodeId(1);
const N2: NodeId = NodeId(2);
const N3: NodeId = NodeId(3);
const N4: NodeId = NodeId(4);
const N5: NodeId = NodeId(5);

fn check_transcript(name: &str, c: &Cluster) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("transcripts").join(format!("{name}.txt"));
    if std::env::var_os("UPDATE_TRANSCRIPTS").is_some() {
        std::fs::write(&path, &c.transcript).expect("write transcript");
        return;
    }
    let golden = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("missing {}; run with UPDATE_TRANSCRIPTS=1 and review it", path.display()));
    if golden != c.transcript {
        let first_diff = golden.lines().zip(c.transcript.lines()).position(|(a, b)| a != b);
        panic!(
            "transcript {name} changed (first differing line {:?}); rerun with UPDATE_TRANSCRIPTS=1 and review the diff\n--- got ---\n{}",
            first_diff.map(|l| l + 1),
            c.transcript
        );
    }
}

fn disk(term: u64, log_terms: &[u64]) -> Disk {
    Disk {
        hard_state: HardState { term: Term(term), vote: None, commit: LogIndex(1) },
        snapshot: None,
        entries: log_terms
            .iter()
            .enumerate()
            .map(|(i, t)| Entry { term: Term(*t), index: LogIndex(i as u64 + 1), payload: EntryPayload::Noop })
            .collect(),
    }
}

fn one_entry_per_message(id: NodeId) -> Config {
    let mut cfg = Cluster::test_config(id);
    cfg.append_bytes_max = 1;
    cfg
}

/// Figure 8: the leader of term 4 gets its term-2 entry onto a majority, but must not count
/// it as committed; a node holding a term-3 entry at that index can still win and replace it.
#[test]
fn figure8_commit_rule() {
    let disks = vec![
        (N1, disk(3, &[1, 2])),
        (N2, disk(3, &[1, 2])),
        (N3, disk(3, &[1])),
        (N4, disk(3, &[1])),
        (N5, disk(3, &[1, 3])),
    ];
    let mut c = Cluster::from_disks(disks, &[N1, N2, N3, N4, N5], one_entry_per_message);
    c.isolate(N5);
    c.note("n1 campaigns; appends that would hand its term-4 no-op to a follower are lost".into());
    c.fire_timer(N1);
    loop {
        let lose = c.queue.front().is_some_and(|m| match &m.message.body {
            MessageBody::AppendEntries { entries, prev_log_index, prev_log_term, .. } => {
                let accepts = c.nodes.get(&m.to).is_some_and(|r| r.term_at(*prev_log_index) == Some(*prev_log_term));
                accepts && entries.iter().any(|e| e.term == Term(4))
            }
            _ => false,
        });
        if lose {
            c.queue.pop_front();
        } else if !c.deliver_one() {
            break;
        }
    }
    let holders = c.nodes.values().filter(|r| r.term_at(LogIndex(2)) == Some(Term(2))).count();
    assert!(holders >= 3, "the term-2 entry is on a majority");
    assert_eq!(c.node(N1).committed(), LogIndex(1), "but is not committed by counting");
    c.note("n1 crashes before its no-op spreads; n5 rejoins".into());
    c.crash(N1);
    c.heal();
    c.advance(Duration::from_millis(300));
    c.elect(N5);
    c.elect(N5);
    assert_eq!(c.leader(), Some(N5));
    c.heartbeat();
    assert_eq!(c.node(N3).term_at(LogIndex(2)), Some(Term(3)), "the uncommitted entry was replaced, as it may be");
    check_transcript("figure8_commit_rule", &c);
}

/// A node cut off from the cluster keeps timing out. Pre-vote keeps its term still, so when it
/// comes back it cannot depose the healthy leader.
#[test]
fn prevote_stops_a_rejoining_partitioned_node() {
    let mut c = Cluster::new(3, Cluster::test_config);
    c.elect(N1);
    c.propose(N1, "before").unwrap();
    c.isolate(N3);
    c.run_for(Duration::from_millis(700));
    assert_eq!(c.node(N3).term(), Term(1), "pre-votes failed, so the term never moved");
    assert!(c.node(N3).stats().campaigns >= 2);
    c.heal();
    c.run_for(Duration::from_millis(400));
    assert_eq!(c.leader(), Some(N1));
    assert_eq!(c.node(N1).term(), Term(1), "the leader was never disturbed");
    assert_eq!(c.node(N3).leader(), Some(N1));
    check_transcript("prevote_rejoin", &c);
}

/// A leader that loses contact with its quorum steps down after one election timeout, so
/// clients stop waiting on it; the majority side elects a new leader.
#[test]
fn check_quorum_step_down() {
    let mut c = Cluster::new(3, Cluster::test_config);
    c.elect(N1);
    c.isolate(N1);
    c.run_for(Duration::from_millis(600));
    assert_ne!(c.node(N1).role(), Role::Leader, "stepped down; it may be pre-voting now, harmlessly");
    assert_eq!(c.node(N1).stats().check_quorum_step_downs, 1);
    assert_eq!(c.node(N1).term(), Term(1), "pre-vote kept its term from rising while cut off");
    let leader = c.leader().expect("the majority elected a leader");
    assert!(leader == N2 || leader == N3);
    c.heal();
    c.run_for(Duration::from_millis(200));
    assert_eq!(c.node(N1).leader(), Some(leader), "the old leader follows the new one");
    check_transcript("check_quorum_step_down", &c);
}

/// Leadership moves to a newly promoted voter while the membership change that promoted it
/// is still settling; the transfer waits for the target to catch up.
#[test]
fn transfer_during_a_membership_change() {
    let ids = [N1, N2, N3, N4];
    let mut c = Cluster::with_membership(&ids, Membership::with_voters([N1, N2, N3]), Cluster::test_config);
    c.elect(N1);
    c.propose(N1, "a").unwrap();
    let now = c.now;
    let cc = ConfChange::single(ConfChangeItem::AddVoter(N4));
    c.node_mut(N1).propose_conf_change(now, cc).unwrap();
    c.note("n1 proposes adding n4 as a voter and, before it settles, transfers to n4".into());
    c.drain(N1);
    // Deliver only a few messages so the change is committed on the leader but n4 lags.
    for _ in 0..4 {
        c.deliver_one();
    }
    let transfer = c.node_mut(N1).transfer_leader(now, N4);
    c.note(format!("n1 transfer to n4 -> {transfer:?}"));
    if transfer.is_err() {
        // n4 is not a voter yet on the leader: wait for the change to apply, then transfer.
        c.deliver_all();
        c.heartbeat();
        let retry = c.node_mut(N1).transfer_leader(now, N4);
        c.note(format!("n1 transfer to n4 (retry) -> {retry:?}"));
        retry.unwrap();
    }
    c.drain(N1);
    c.deliver_all();
    assert_eq!(c.leader(), Some(N4));
    assert!(c.node(N4).membership().is_voter(N4));
    assert_eq!(c.applied_commands(N4), vec!["a".to_string()]);
    check_transcript("transfer_during_membership_change", &c);
}

fn small_chunks(id: NodeId) -> Config {
    let mut cfg = Cluster::test_config(id);
    cfg.snapshot_chunk_bytes = 8;
    cfg.snapshot_chunks_inflight_max = 2;
    cfg
}

/// A follower that fell behind the leader's snapshot receives it in chunks; the leader dies
/// mid-transfer and the next leader installs its own snapshot, after which replication goes on.
#[test]
fn snapshot_install_interrupted_by_a_leader_change() {
    let mut c = Cluster::new(3, small_chunks);
    c.elect(N1);
    c.isolate(N3);
    c.propose(N1, "a").unwrap();
    c.propose(N1, "b").unwrap();
    for leader_or_follower in [N1, N2] {
        let now = c.now;
        let applied = c.node(leader_or_follower).applied();
        c.node_mut(leader_or_follower)
            .handle_snapshot(now, applied, Bytes::from_static(b"kv: a=1 b=2 (32 bytes of state)"))
            .unwrap();
        c.drain(leader_or_follower);
    }
    c.heal();
    c.fire_timer(N1);
    let mut chunks = 0;
    while chunks < 2 {
        if c.queue.front().is_some_and(|m| matches!(m.message.body, MessageBody::InstallSnapshot { .. })) {
            chunks += 1;
        }
        assert!(c.deliver_one());
    }
    c.note("two chunks arrived; n1 crashes with the rest in flight".into());
    c.crash(N1);
    c.queue.clear();
    c.run_for(Duration::from_secs(1));
    assert_eq!(c.leader(), Some(N2));
    assert_eq!(c.node(N3).snapshot_meta().index, c.node(N2).snapshot_meta().index);
    assert_eq!(c.node(N3).stats().snapshots_installed, 1);
    c.propose(N2, "c").unwrap();
    assert_eq!(c.applied_commands(N3), vec!["c".to_string()]);
    let reads = c.events[&N3].iter().filter(|e| matches!(e, Event::ReadReady { .. })).count();
    assert_eq!(reads, 0);
    check_transcript("snapshot_interrupted_by_leader_change", &c);
}
