//! Unit tests of the replica machine on the deterministic testkit network: consistency levels,
//! the meaning of "not acknowledged", hinted handoff, read repair, anti-entropy (including a
//! wiped replica), tombstone collection, siblings and their resolver, the CRDT map, the
//! throttle, the change stream, lag and status, and refusals of bad input.

use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;

use super::testkit::{config, entry, id, Net, CLUSTER, LIMIT};
use super::*;
use crate::replication::state::Body;

const MODE: ConflictMode = ConflictMode::LastWriteWins;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn visible(net: &Net, i: usize, key: u64) -> Option<Visible> {
    net.node(i).state(EntryId(key)).map(|s| s.visible())
}

#[test]
fn one_quorum_and_all_count_acknowledgements() {
    let mut net = Net::new(3, MODE);
    let one = net.write(0, 1, Op::Put(entry(1.0)), None, Consistency::One);
    assert_eq!(net.write_done(0, one.ticket), Some(true), "One is acknowledged by the coordinator alone");
    let q = net.write(0, 2, Op::Put(entry(2.0)), None, Consistency::Quorum);
    let all = net.write(0, 3, Op::Put(entry(3.0)), None, Consistency::All);
    assert_eq!(net.write_done(0, q.ticket), None, "nothing acknowledged before a round trip");
    net.run_for(Duration::from_millis(2));
    assert_eq!(net.write_done(0, q.ticket), Some(true), "a quorum write costs one round trip");
    assert_eq!(net.write_done(0, all.ticket), Some(true));
    for i in 0..3 {
        assert_eq!(visible(&net, i, 3), Some(Visible::One(entry(3.0))));
    }
}

#[test]
fn not_acknowledged_means_unknown_and_the_write_still_arrives() {
    let mut net = Net::new(3, MODE);
    net.isolate(2);
    let w = net.write(0, 1, Op::Put(entry(1.0)), None, Consistency::All);
    net.run_for(secs(2));
    assert_eq!(net.write_done(0, w.ticket), Some(false), "All cannot be met with n3 cut off");
    assert_eq!(net.node(0).hints_for(id(2)), 1, "the missed write is hinted");
    assert_eq!(net.disks[0].hints.len(), 1, "and the hint is durable");
    assert_eq!(visible(&net, 1, 1), Some(Visible::One(entry(1.0))), "n2 has it all the same");
    net.heal();
    net.run_for(secs(3));
    assert_eq!(visible(&net, 2, 1), Some(Visible::One(entry(1.0))), "handed off to n3 once it answers");
    assert_eq!(net.node(0).hints(), 0);
    assert!(net.disks[0].hints.is_empty());
    assert!(net.node(0).stats().hints_delivered >= 1);
}

#[test]
fn a_duplicated_acknowledgement_counts_once() {
    let ids = vec![id(0), id(1), id(2)];
    let now = Instant::from_nanos(1_000_000_000);
    let mut a = Replica::new(config(0, 3, MODE), Recovered::default(), 1, now).unwrap();
    let w = a.write(now, EntryId(1), Op::Put(entry(1.0)), None, Consistency::All).unwrap();
    let mut req = None;
    while let Some(act) = a.poll_action() {
        if let Action::Send { message: Message::Write { req: r, .. }, .. } = act {
            req = Some(r);
        }
    }
    let req = req.expect("the write was sent");
    for _ in 0..3 {
        a.handle_message(now, ids[1], Message::WriteAck { req, part: 0 }).unwrap();
    }
    let done = core::iter::from_fn(|| a.poll_action()).any(|act| matches!(act, Action::Event(Event::WriteDone { .. })));
    assert!(!done, "n2 acknowledging three times is still one of the three replicas All needs");
    a.handle_message(now, ids[2], Message::WriteAck { req, part: 0 }).unwrap();
    let by = core::iter::from_fn(|| a.poll_action()).find_map(|act| match act {
        Action::Event(Event::WriteDone { ticket, acked: true, by }) if ticket == w.ticket => Some(by),
        _ => None,
    });
    assert_eq!(by, Some(ids));
    a.check_invariants();
}

#[test]
fn every_ack_follows_the_persist_it_promises() {
    let mut b = Replica::new(config(1, 3, MODE), Recovered::default(), 2, Instant::ZERO).unwrap();
    while b.poll_action().is_some() {}
    let mut st = KeyState::empty(MODE);
    let dot = Dot { actor: Actor { node: id(0), life: 1 }, counter: 1 };
    st.apply_write(MODE, &Op::Put(entry(1.0)), &Context::default(), Stamp { ts: Hlc::default(), dot }).unwrap();
    let msg = Message::Write { req: 9, part: 0, origin: Origin::Client, states: vec![(EntryId(5), st)] };
    b.handle_message(Instant::ZERO, id(0), msg.clone()).unwrap();
    let actions: Vec<Action> = core::iter::from_fn(|| b.poll_action()).collect();
    let persist = actions.iter().position(|a| matches!(a, Action::Persist(Durable::Entry { id: EntryId(5) })));
    let ack = actions.iter().position(|a| matches!(a, Action::Send { message: Message::WriteAck { req: 9, .. }, .. }));
    assert!(persist.is_some() && ack.is_some() && persist < ack, "persist before the ack: {actions:?}");
    // A duplicate changes nothing and is acknowledged again (the first persist came before it).
    b.handle_message(Instant::ZERO, id(0), msg).unwrap();
    let again: Vec<Action> = core::iter::from_fn(|| b.poll_action()).collect();
    assert!(!again.iter().any(|a| matches!(a, Action::Persist(_))));
    assert!(again.iter().any(|a| matches!(a, Action::Send { message: Message::WriteAck { req: 9, .. }, .. })));
}

#[test]
fn reads_repair_replicas_found_behind() {
    let mut net = Net::new(3, MODE);
    net.isolate(2);
    net.write(0, 1, Op::Put(entry(1.0)), None, Consistency::Quorum);
    net.run_for(Duration::from_millis(10));
    net.heal();
    // Before any hint or anti-entropy runs, a read through n3 sees n3 behind and repairs it.
    let t = net.read(2, 1, Consistency::All);
    net.run_for(Duration::from_millis(5));
    let read = net.read_done(2, t).expect("read done").expect("found");
    assert_eq!(read.visible(), Visible::One(entry(1.0)));
    assert_eq!(visible(&net, 2, 1), Some(Visible::One(entry(1.0))), "n3 repaired itself from the read");
    assert!(net.node(2).stats().repairs >= 1);
}

#[test]
fn anti_entropy_brings_back_a_wiped_replica() {
    let mut net = Net::new(3, MODE);
    for k in 0..40 {
        net.write((k % 3) as usize, k, Op::Put(entry(k as f32)), None, Consistency::Quorum);
        net.run_for(Duration::from_millis(3));
    }
    net.run_for(secs(1));
    assert!(net.converged());
    net.wipe(2);
    assert!(net.node(2).is_empty());
    assert_ne!(net.node(2).actor(), net.node(0).actor());
    assert!(net.run_until(secs(10), |n| n.converged()), "the wiped replica bootstraps without any command");
    assert_eq!(net.node(2).len(), 40);
    let synced = net.events.iter().any(|(_, _, e)| matches!(e, Event::SyncDone { entries, .. } if *entries > 0));
    assert!(synced);
    // A later write from the new life is not mistaken for one of the old life's.
    net.write(2, 7, Op::Put(entry(70.0)), None, Consistency::All);
    net.run_for(secs(1));
    assert_eq!(visible(&net, 0, 7), Some(Visible::One(entry(70.0))));
}

#[test]
fn anti_entropy_syncs_only_what_differs() {
    let cfg = |i| {
        let mut c = config(i, 2, MODE);
        c.merkle_depth = 2;
        c.hints_max = 1;
        c.hint_retry_interval = secs(3600);
        c
    };
    let mut net = Net::with(2, cfg);
    for k in 0..200 {
        net.write(0, k, Op::Put(entry(k as f32)), None, Consistency::All);
        net.run_for(Duration::from_millis(2));
    }
    net.run_for(secs(5));
    assert!(net.converged());
    net.isolate(1);
    for k in [3, 77, 150] {
        net.write(0, k, Op::Put(entry(-1.0)), None, Consistency::One);
    }
    net.run_for(secs(2));
    net.heal();
    let before = net.delivered[1];
    assert!(net.run_until(secs(10), |n| n.converged()));
    let sync_bytes = net.delivered[1].1 - before.1;
    let everything: u64 =
        (0..200).map(|k| postcard::to_allocvec(net.node(0).state(EntryId(k)).unwrap()).unwrap().len() as u64).sum();
    assert!(sync_bytes * 4 < everything, "{sync_bytes} sync bytes to fix 3 of 200 entries ({everything} bytes in all)");
}

/// Whichever side starts the session, a change crosses once: the changed side's pull names its
/// clocks, so the peer leaves its older states out and the changed side pushes; the stale side
/// pulls the new states and has nothing to push back.
#[test]
fn a_change_crosses_once_whichever_side_starts() {
    let cfg = |i| {
        let mut c = config(i, 2, MODE);
        c.merkle_depth = 2;
        c.sync_interval = secs(3600);
        c.hint_retry_interval = secs(3600);
        c
    };
    for changed_starts in [true, false] {
        let mut net = Net::with(2, cfg);
        for k in 0..100 {
            net.write(0, k, Op::Put(entry(k as f32)), None, Consistency::All);
            net.run_for(Duration::from_millis(2));
        }
        net.isolate(1);
        let changed = [4u64, 40, 90];
        for k in changed {
            net.write(0, k, Op::Put(entry(-1.0)), None, Consistency::One);
        }
        net.run_for(secs(2));
        net.heal();
        net.quiet_sync = false;
        net.transcript.clear();
        let (from, to) = if changed_starts { (0, 1) } else { (1, 0) };
        let now = net.now;
        net.node_mut(from).force_sync(now, id(to)).unwrap();
        net.drain();
        net.run_for(secs(1));
        assert!(net.converged(), "changed side starts: {changed_starts}\n{}", net.transcript);
        for k in changed {
            assert_eq!(visible(&net, 1, k), Some(Visible::One(entry(-1.0))));
        }
        // Only n1's new states travel, exactly once each; n2's old ones never do.
        let carried: Vec<&str> =
            net.transcript.lines().filter(|l| l.contains("sync: states [e") || l.contains("sync push")).collect();
        assert!(carried.iter().all(|l| l.contains("n1 -> n2")), "{}", net.transcript);
        let mut sent: Vec<u64> = carried
            .iter()
            .flat_map(|l| l.rsplit('[').next().unwrap_or("").trim_end_matches(']').split(','))
            .map(|k| k.trim_start_matches('e').parse::<u64>().unwrap())
            .collect();
        sent.sort_unstable();
        assert_eq!(sent, changed, "{}", net.transcript);
    }
}

#[test]
fn tombstones_are_collected_once_every_replica_saw_them() {
    let mut net = Net::new(3, MODE);
    net.write(0, 1, Op::Put(entry(1.0)), None, Consistency::All);
    net.run_for(secs(1));
    net.isolate(2);
    net.write(0, 1, Op::Delete, None, Consistency::Quorum);
    net.run_for(secs(10));
    assert_eq!(net.node(0).tombstones(), 1, "n3 has not seen the delete: the tombstone stays");
    assert_eq!(visible(&net, 2, 1), Some(Visible::One(entry(1.0))));
    net.heal();
    assert!(net.run_until(secs(30), |n| (0..3).all(|i| n.node(i).is_empty())), "collected everywhere");
    assert!(net.converged());
    assert!((0..3).all(|i| net.node(i).stats().collected == 1));
    // A stale copy arriving now is recognised and dropped.
    let mut old = KeyState::empty(MODE);
    let dot = Dot { actor: net.node(0).actor(), counter: 1 };
    old.apply_write(MODE, &Op::Put(entry(1.0)), &Context::default(), Stamp { ts: Hlc::default(), dot }).unwrap();
    let now = net.now;
    let stale_before = net.node(1).stats().stale_dropped;
    let msg = Message::Write { req: 0, part: 0, origin: Origin::Sync, states: vec![(EntryId(1), old)] };
    net.node_mut(1).handle_message(now, id(0), msg).unwrap();
    net.drain();
    assert!(net.node(1).is_empty(), "the deleted entry does not come back");
    assert_eq!(net.node(1).stats().stale_dropped, stale_before + 1);
}

#[test]
fn concurrent_writes_surface_as_siblings_and_the_resolver_merges_them() {
    fn keep_largest(s: &[Option<Entry>]) -> Option<Entry> {
        s.iter().flatten().max_by(|a, b| a.vector[0].total_cmp(&b.vector[0])).cloned()
    }
    let mode = ConflictMode::MultiValue;
    let mut net = Net::new(3, mode);
    net.isolate(0);
    net.write(0, 1, Op::Put(entry(1.0)), None, Consistency::One);
    net.write(1, 1, Op::Put(entry(2.0)), None, Consistency::One);
    net.heal();
    net.run_for(secs(5));
    assert!(net.converged());
    let siblings = Visible::Siblings(vec![Some(entry(1.0)), Some(entry(2.0))]);
    assert_eq!(visible(&net, 2, 1), Some(siblings.clone()), "neither concurrent write is dropped");
    let t = net.read(2, 1, Consistency::Quorum);
    net.run_for(Duration::from_millis(5));
    let read = net.read_done(2, t).unwrap().unwrap();
    assert_eq!(read.visible(), siblings);
    // A write with the read's context replaces both.
    net.write(2, 1, Op::Put(entry(3.0)), Some(read.context()), Consistency::All);
    net.run_for(secs(1));
    assert_eq!(visible(&net, 0, 1), Some(Visible::One(entry(3.0))));

    let mut net = Net::with(3, |i| {
        let mut c = config(i, 3, mode);
        c.resolver = Some(keep_largest);
        c
    });
    net.isolate(0);
    net.write(0, 1, Op::Put(entry(5.0)), None, Consistency::One);
    net.write(1, 1, Op::Put(entry(4.0)), None, Consistency::One);
    net.heal();
    net.run_for(secs(5));
    let t = net.read(1, 1, Consistency::All);
    net.run_for(secs(1));
    assert!(net.read_done(1, t).unwrap().is_some());
    for i in 0..3 {
        assert_eq!(visible(&net, i, 1), Some(Visible::One(entry(5.0))), "replica {i} holds the resolution");
    }
    let resolved = net.node(1).read_stream(net.node(1).stream_start(), 1_000).unwrap().0;
    assert!(resolved.iter().any(|e| matches!(e.change, Change::Resolved { siblings: 2, .. })));
}

#[test]
fn lww_keeps_the_later_write_everywhere() {
    let mut net = Net::new(3, MODE);
    net.isolate(0);
    net.write(0, 1, Op::Put(entry(1.0)), None, Consistency::One);
    net.run_for(Duration::from_millis(5));
    net.write(1, 1, Op::Put(entry(2.0)), None, Consistency::One);
    net.heal();
    net.run_for(secs(5));
    assert!(net.converged());
    assert_eq!(visible(&net, 0, 1), Some(Visible::One(entry(2.0))));
    let stream = net.node(0).read_stream(net.node(0).stream_start(), 1_000).unwrap().0;
    assert!(stream
        .iter()
        .any(|e| matches!(e.change, Change::Conflict { resolution: state::Resolution::LastWriteWins { .. }, .. })));
}

#[test]
fn crdt_mode_keeps_concurrent_field_updates() {
    let mode = ConflictMode::CrdtMap;
    let mut net = Net::new(3, mode);
    net.write(0, 1, Op::Put(entry(1.0)), None, Consistency::All);
    net.run_for(secs(1));
    net.isolate(0);
    let set = |k: &str, v: i64| {
        let mut m = Metadata::new();
        m.insert(k.into(), Scalar::Int(v));
        Op::Patch { set: m, remove: Vec::new() }
    };
    net.write(0, 1, set("a", 1), None, Consistency::One);
    net.write(1, 1, set("b", 2), None, Consistency::One);
    net.heal();
    net.run_for(secs(5));
    assert!(net.converged());
    let Some(Visible::One(e)) = visible(&net, 2, 1) else { panic!("entry missing") };
    assert_eq!(e.metadata.len(), 2, "both fields survive: {e:?}");
    assert!(matches!(net.node(2).state(EntryId(1)).map(|s| &s.body), Some(Body::Fields(_))));
}

#[test]
fn lag_and_status_follow_a_replica_that_goes_away() {
    let mut net = Net::new(3, MODE);
    net.isolate(2);
    for k in 0..5 {
        net.write(0, k, Op::Put(entry(1.0)), None, Consistency::Quorum);
    }
    net.run_for(secs(5));
    let now = net.now;
    let lag = net.node(0).lag(now, id(2)).unwrap();
    assert_eq!(lag.entries, 5);
    assert!(lag.behind >= secs(3));
    assert_eq!(net.node(0).status(id(2)), Some(ReplicaStatus::Down));
    assert_eq!(net.node(0).status(id(1)), Some(ReplicaStatus::InSync));
    net.heal();
    net.run_for(secs(5));
    let now = net.now;
    assert_eq!(net.node(0).lag(now, id(2)).unwrap().entries, 0);
    assert_eq!(net.node(0).status(id(2)), Some(ReplicaStatus::InSync));
    let changes: Vec<ReplicaStatus> = net
        .events
        .iter()
        .filter_map(|(_, i, e)| match e {
            Event::StatusChanged { peer, status } if *i == 0 && *peer == id(2) => Some(*status),
            _ => None,
        })
        .collect();
    assert!(changes.contains(&ReplicaStatus::Down) && changes.last() == Some(&ReplicaStatus::InSync), "{changes:?}");
}

#[test]
fn sync_traffic_stays_within_the_throttle() {
    let mut net = Net::with(2, |i| {
        let mut c = config(i, 2, MODE);
        c.sync_bytes_per_sec = 16 << 10;
        c.sync_burst_bytes = 4096;
        c
    });
    net.isolate(1);
    for k in 0..300 {
        net.write(0, k, Op::Put(Entry { vector: vec![0.5; 16], metadata: Metadata::new() }), None, Consistency::One);
    }
    net.run_for(secs(2));
    net.heal();
    let start = net.now;
    let before = net.delivered[1].1;
    net.run_for(Duration::from_millis(300));
    assert!(net.node(0).is_syncing(id(1)) || net.node(1).is_syncing(id(0)), "sync is held back by the throttle");
    // Production traffic is never queued behind it: a write at All still costs one round trip.
    let w = net.write(0, 1000, Op::Put(entry(9.0)), None, Consistency::All);
    net.run_for(Duration::from_millis(2));
    assert_eq!(net.write_done(0, w.ticket), Some(true), "a client write waited behind sync");
    assert!(net.run_until(secs(60), |n| n.converged()), "converges under the throttle");
    let elapsed = net.now.saturating_duration_since(start).as_secs_f64();
    let bytes = (net.delivered[1].1 - before) as f64;
    // Both directions share nothing: each is held to burst + rate · time.
    assert!(bytes <= 2.0 * (4096.0 + 16384.0 * elapsed), "{bytes} sync bytes in {elapsed} s");
    assert!(elapsed > 1.0, "300 entries of ~100 bytes cannot pass in a moment at 16 KiB/s");
}

#[test]
fn batches_split_into_datagrams_and_are_acknowledged_whole() {
    let mut net = Net::new(3, MODE);
    let items: Vec<WriteItem> = (0..200)
        .map(|k| WriteItem {
            id: EntryId(k),
            op: Op::Put(Entry { vector: vec![1.0; 16], metadata: Metadata::new() }),
            context: None,
        })
        .collect();
    let now = net.now;
    let r = net.node_mut(0).write_batch(now, items, Consistency::All).unwrap();
    let parts = net.transcript.matches("write #").count();
    net.drain();
    assert_eq!(r.stamps.len(), 200);
    net.run_for(Duration::from_millis(5));
    assert_eq!(net.write_done(0, r.ticket), Some(true));
    assert_eq!(net.node(2).len(), 200);
    let _ = parts;
    let writes = net.delivered[0].0;
    assert!(writes > 4, "split into several datagrams ({writes} delivered)");
}

#[test]
fn restarts_keep_data_hints_and_never_reuse_a_dot() {
    let mut net = Net::new(3, MODE);
    net.isolate(2);
    let a = net.write(0, 1, Op::Put(entry(1.0)), None, Consistency::Quorum);
    net.run_for(secs(2));
    net.crash(0);
    net.restart(0);
    assert_eq!(net.node(0).hints_for(id(2)), 1, "the hint survived the crash");
    let b = net.write(0, 2, Op::Put(entry(2.0)), None, Consistency::Quorum);
    assert!(b.stamps[0].1.dot.counter > a.stamps[0].1.dot.counter, "counters move on across restarts");
    assert_eq!(b.stamps[0].1.dot.actor, a.stamps[0].1.dot.actor, "same life: same actor");
    net.heal();
    net.run_for(secs(5));
    assert_eq!(visible(&net, 2, 1), Some(Visible::One(entry(1.0))));
}

#[test]
fn a_new_replica_is_added_and_fills_up() {
    // A shard of three; n4 starts empty, already told it is a replica.
    let mut net = Net::with(4, |i| config(i, if i == 3 { 4 } else { 3 }, MODE));
    for k in 0..20 {
        net.write(0, k, Op::Put(entry(1.0)), None, Consistency::All);
    }
    net.run_for(secs(1));
    assert!(net.node(3).is_empty());
    let now = net.now;
    assert_eq!(net.node_mut(0).remove_replica(now, id(0)), Err(MembershipError::IsSelf));
    for i in 0..3 {
        net.node_mut(i).add_replica(now, id(3)).unwrap();
    }
    assert_eq!(net.node_mut(0).add_replica(now, id(3)), Err(MembershipError::AlreadyReplica(id(3))));
    assert!(net.run_until(secs(10), |n| n.converged()));
    assert_eq!(net.node(3).len(), 20);
    assert!(net.refused > 0, "n4's sessions were refused until the others added it");
    let now = net.now;
    net.node_mut(0).remove_replica(now, id(3)).unwrap();
    assert_eq!(net.node(0).replicas(), &[id(0), id(1), id(2)]);
}

#[test]
fn force_sync_runs_at_once_and_reports() {
    let mut net = Net::new(2, MODE);
    net.isolate(1);
    net.write(0, 1, Op::Put(entry(1.0)), None, Consistency::One);
    net.run_for(Duration::from_millis(10));
    net.heal();
    let now = net.now;
    net.node_mut(0).force_sync(now, id(1)).unwrap();
    assert_eq!(net.node_mut(0).force_sync(now, id(1)), Err(MembershipError::AlreadySyncing(id(1))));
    assert_eq!(net.node_mut(0).force_sync(now, id(0)), Err(MembershipError::NotAReplica(id(0))));
    net.drain();
    net.run_for(Duration::from_millis(50));
    assert!(net.converged());
}

#[test]
fn the_change_stream_resumes_from_a_cursor() {
    let mut net = Net::new(3, MODE);
    let start = net.node(1).stream_end();
    net.write(0, 1, Op::Put(entry(1.0)), None, Consistency::All);
    net.write(0, 2, Op::Put(entry(2.0)), None, Consistency::All);
    net.run_for(Duration::from_millis(5));
    let (first, cursor) = net.node(1).read_stream(start, 1).unwrap();
    assert!(matches!(first[0].change, Change::Applied { id: EntryId(1), origin: Origin::Client, .. }));
    let (rest, end) = net.node(1).read_stream(cursor, 10).unwrap();
    assert!(matches!(rest[0].change, Change::Applied { id: EntryId(2), .. }));
    assert_eq!(end, net.node(1).stream_end());
    net.crash(1);
    net.restart(1);
    assert!(
        matches!(net.node(1).read_stream(end, 10), Err(StreamError::OtherStream { .. })),
        "a new life, a new stream"
    );
}

#[test]
fn bad_input_is_refused_with_typed_errors() {
    let mut net = Net::new(3, MODE);
    let now = net.now;
    let r = net.node_mut(0);
    assert_eq!(
        r.handle_message(now, NodeId(9), Message::WriteAck { req: 1, part: 0 }),
        Err(ReplicaError::NotAReplica(NodeId(9)))
    );
    assert!(matches!(r.handle_datagram(now, b"garbage"), Err(ReplicaError::Message(MessageError::Wire(_)))));
    let deep = Message::SyncTree { session: 1, rid: 0, root: 0, level: 5, parents: vec![0] };
    assert_eq!(r.handle_message(now, id(1), deep), Err(ReplicaError::Message(MessageError::OutOfRange)));
    let patch = Op::Patch { set: Metadata::new(), remove: vec![] };
    assert_eq!(
        r.write(now, EntryId(1), patch, None, Consistency::One),
        Err(WriteError::Invalid(state::StateError::WrongShape))
    );
    let long = Op::Put(Entry { vector: vec![0.0; 17], metadata: Metadata::new() });
    assert!(matches!(r.write(now, EntryId(1), long, None, Consistency::One), Err(WriteError::Invalid(_))));
    let nan = Op::Put(Entry { vector: vec![f32::NAN], metadata: Metadata::new() });
    assert!(matches!(r.write(now, EntryId(1), nan, None, Consistency::One), Err(WriteError::Invalid(_))));
    assert_eq!(r.write_batch(now, vec![], Consistency::One), Err(WriteError::EmptyBatch));
    let mut big = Metadata::new();
    big.insert("blob".into(), Scalar::Str("x".repeat(600)));
    let large = Op::Put(Entry { vector: vec![1.0], metadata: big });
    assert!(matches!(r.write(now, EntryId(1), large, None, Consistency::One), Err(WriteError::TooLarge { .. })));
    let ahead = Context { clock: VersionVector::new(), ts: Hlc { wall_ms: u64::MAX / 2, logical: 0 } };
    assert!(matches!(
        r.write(now, EntryId(1), Op::Delete, Some(ahead), Consistency::One),
        Err(WriteError::ContextAhead(_))
    ));
    let _ = (CLUSTER, LIMIT);
    net.drain();

    // Multi-value: a key may not grow past width_max siblings.
    let mut net = Net::new(3, ConflictMode::MultiValue);
    net.isolate(0);
    for v in 0..4 {
        net.write(0, 1, Op::Put(entry(v as f32)), None, Consistency::One);
    }
    let now = net.now;
    assert_eq!(
        net.node_mut(0).write(now, EntryId(1), Op::Put(entry(9.0)), None, Consistency::One),
        Err(WriteError::TooWide(EntryId(1)))
    );
}

#[test]
fn a_restarted_replica_never_reuses_request_numbers() {
    // An acknowledgement still in flight from an earlier life must not match a new request.
    let mut net = Net::new(3, MODE);
    let req_of = |net: &mut Net| {
        let now = net.now;
        net.node_mut(0).write(now, EntryId(1), Op::Put(entry(1.0)), None, Consistency::All).unwrap();
        core::iter::from_fn(|| net.node_mut(0).poll_action()).find_map(|a| match a {
            Action::Send { message: Message::Write { req, .. }, .. } => Some(req),
            _ => None,
        })
    };
    let before = req_of(&mut net).unwrap();
    net.crash(0);
    net.restart(0);
    let after = req_of(&mut net).unwrap();
    assert_ne!(before, after);
    assert!(after.abs_diff(before) > 1_000_000, "lives start far apart ({before} then {after})");
}
