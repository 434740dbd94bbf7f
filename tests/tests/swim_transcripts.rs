//! Scenario transcripts for SWIM's tricky cases, compared against reviewed golden files in
//! `tests/transcripts/swim_*.txt` (regenerate with `UPDATE_TRANSCRIPTS=1` and review the diff).
//! Each scenario also asserts the facts that make it correct, so a regenerated transcript
//! cannot hide a broken outcome.

use std::path::PathBuf;
use std::time::Duration;

use quorate_core::swim::testkit::{id, Net};
use quorate_core::swim::{Event, State};

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

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A member cut off for a moment is suspected; the buddy system tells it so as soon as it is
/// reachable, it refutes with a higher incarnation, and nobody declares it down.
#[test]
fn swim_refutation() {
    let mut net = Net::converged(4);
    net.isolate(3);
    net.run_for(secs(3));
    assert!(net.events.iter().any(|(_, _, e)| *e == Event::Suspect(id(3))));
    net.heal();
    net.run_for(secs(8));
    assert!(net.all_see(3, State::Alive));
    assert!(net.node(3).me().version.inc >= 1);
    assert!(!net.events.iter().any(|(_, _, e)| *e == Event::Down(id(3))));
    check_transcript("swim_refutation", &net);
}

/// Two halves declare each other down; after healing, the push-pull towards down members and
/// identity renewal bring every member back at a new generation, and all views agree.
#[test]
fn swim_partition_healing() {
    let mut net = Net::converged(4);
    net.note("-- partition {n1, n2} | {n3, n4}");
    for (a, b) in [(0, 2), (0, 3), (1, 2), (1, 3)] {
        net.cut.insert((a, b));
        net.cut.insert((b, a));
    }
    net.run_for(secs(45));
    assert_eq!(net.node(0).live_members(), 2);
    assert_eq!(net.node(3).live_members(), 2);
    net.heal();
    net.run_for(secs(60));
    for i in 0..4 {
        assert_eq!(net.node(i).live_members(), 4, "member {i}");
        assert_eq!(net.node(i).view(), net.node(0).view(), "member {i} agrees");
    }
    check_transcript("swim_partition_healing", &net);
}

/// A member crashes and is declared down; it restarts with the generation it had (a host
/// without a persisted counter), hears it is down, renews its identity, and is up again.
#[test]
fn swim_restart_renews_identity() {
    let mut net = Net::converged(3);
    net.crash(2);
    net.run_for(secs(30));
    assert!(net.all_see(2, State::Down));
    net.restart(2, 1);
    net.run_for(secs(10));
    assert!(net.node(2).me().version.gen >= 2);
    assert!(net.events.iter().any(|(_, i, e)| *i == 2 && matches!(e, Event::Renewed { .. })));
    assert!(net.all_see(2, State::Alive));
    check_transcript("swim_restart_renews_identity", &net);
}

/// A member that stalls for 3 seconds (as under CPU starvation) misses its acks and is
/// suspected, but on resuming it reads the suspicion and refutes before any timer runs out:
/// healthy members never declare it down, and its own late timers declare nobody down.
#[test]
fn swim_slow_member_is_not_declared_down() {
    let mut net = Net::converged(5);
    net.pause(4);
    net.run_for(secs(3));
    net.resume(4);
    net.run_for(secs(30));
    assert!(net.events.iter().any(|(_, _, e)| *e == Event::Suspect(id(4))), "the stall was noticed");
    assert!(!net.events.iter().any(|(_, _, e)| matches!(e, Event::Down(_))), "nobody was declared down");
    assert!(net.all_see(4, State::Alive));
    check_transcript("swim_slow_member_is_not_declared_down", &net);
}
