//! Scenario transcripts for replication's recovery paths, compared against reviewed golden files
//! in `tests/transcripts/repl_*.txt` (regenerate with `UPDATE_TRANSCRIPTS=1` and review the
//! diff). Each scenario also asserts the facts that make it correct, so a regenerated transcript
//! cannot hide a broken outcome.

use std::path::PathBuf;
use std::time::Duration;

use quorate_core::replication::testkit::{config, entry, id, Net};
use quorate_core::replication::{ConflictMode, Consistency, EntryId, Event, Op, Visible};

fn check_transcript(name: &str, net: &Net) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("transcripts").join(format!("{name}.txt"));
    if std::env::var_os("UPDATE_TRANSCRIPTS").is_some() {
        std::fs::write(&path, &net.transcript).expect("write transcript");
        return;
    }
    let golden = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("missing {}; run with UPDATE_TRANSCRIPTS=1 and review it", path.display()));
    if golden != net.transcript {
        let first = golden.lines().zip(net.transcript.lines()).position(|(a, b)| a != b);
        panic!(
            "transcript {name} changed (first differing line {:?}); rerun with UPDATE_TRANSCRIPTS=1 and review\n{}",
            first.map(|l| l + 1),
            net.transcript
        );
    }
}

fn visible(net: &Net, i: usize, key: u64) -> Option<Visible> {
    net.node(i).state(EntryId(key)).map(|s| s.visible())
}

/// n3 is cut off while a Quorum write goes through n1: acknowledged by n1 and n2, the write
/// times out for n3 and becomes a durable hint; when n3 answers again the hint is handed off,
/// acknowledged, and forgotten. Anti-entropy is kept out of the way so the hint does the work.
#[test]
fn repl_hinted_handoff() {
    let mut net = Net::with(3, |i| {
        let mut c = config(i, 3, ConflictMode::LastWriteWins);
        c.sync_interval = Duration::from_secs(3600);
        c
    });
    net.isolate(2);
    let w = net.write(0, 7, Op::Put(entry(1.0)), None, Consistency::Quorum);
    net.run_for(Duration::from_secs(2));
    assert_eq!(net.write_done(0, w.ticket), Some(true));
    assert_eq!(net.node(0).hints_for(id(2)), 1);
    assert!(net.disks[0].hints.contains(&(id(2), EntryId(7))), "the hint is durable");
    assert_eq!(visible(&net, 2, 7), None);
    net.heal();
    net.run_for(Duration::from_secs(2));
    assert_eq!(visible(&net, 2, 7), Some(Visible::One(entry(1.0))), "handed off");
    assert_eq!(net.node(0).hints(), 0);
    assert!(net.disks[0].hints.is_empty());
    check_transcript("repl_hinted_handoff", &net);
}

/// A write reaches only n1 and n2; right after n3 is back, a read at All through n3 finds it
/// behind, answers with the merged state, and writes it back to n3 (read repair), before any
/// hint or anti-entropy session could.
#[test]
fn repl_read_repair() {
    let mut net = Net::with(3, |i| {
        let mut c = config(i, 3, ConflictMode::LastWriteWins);
        c.sync_interval = Duration::from_secs(3600);
        c.hint_retry_interval = Duration::from_secs(3600);
        c
    });
    net.isolate(2);
    net.write(0, 3, Op::Put(entry(5.0)), None, Consistency::Quorum);
    net.run_for(Duration::from_millis(10));
    net.heal();
    let t = net.read(2, 3, Consistency::All);
    net.run_for(Duration::from_millis(10));
    let read = net.read_done(2, t).expect("read done").expect("found");
    assert_eq!(read.visible(), Visible::One(entry(5.0)));
    assert_eq!(visible(&net, 2, 3), Some(Visible::One(entry(5.0))), "n3 repaired");
    assert_eq!(net.node(2).stats().repairs, 1);
    check_transcript("repl_read_repair", &net);
}

/// n3 loses its disk and comes back empty, as a new life. No command is given: its periodic
/// anti-entropy sessions (and its peers') find every subtree empty on its side and pull the
/// ranges whole, until every replica holds the same data.
#[test]
fn repl_wiped_replica_recovers() {
    let mut net = Net::new(3, ConflictMode::MultiValue);
    net.quiet_sync = true;
    for k in 0..12 {
        net.write((k % 3) as usize, k, Op::Put(entry(k as f32)), None, Consistency::All);
        net.run_for(Duration::from_millis(5));
    }
    net.run_for(Duration::from_secs(1));
    net.transcript.clear();
    net.quiet_sync = false;
    let old_life = net.node(2).actor();
    net.wipe(2);
    assert!(net.node(2).is_empty());
    assert_ne!(net.node(2).actor(), old_life, "a wiped replica is a new actor");
    assert!(net.run_until(Duration::from_secs(10), |n| n.converged()), "recovered without a command");
    assert_eq!(net.node(2).len(), 12);
    for k in 0..12 {
        assert_eq!(visible(&net, 2, k), Some(Visible::One(entry(k as f32))));
    }
    let synced: u64 = net
        .events
        .iter()
        .filter_map(|(_, _, e)| match e {
            Event::SyncDone { entries, .. } => Some(*entries),
            _ => None,
        })
        .sum();
    assert!(synced >= 12, "anti-entropy carried the data ({synced} entries)");
    check_transcript("repl_wiped_replica_recovers", &net);
}
