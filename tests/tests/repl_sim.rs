//! The replication simulator in the default suite: a seed sweep with every fault, determinism,
//! the exercise the sweep must give the replicas, and proof that the checks catch planted bugs.

use quorate_core::replication::ConflictMode;
use quorate_sim::repl_cli::{combined_trace, parse, round_trips, run_seeds, summary};
use quorate_sim::repl_sim::{run, ReplSimConfig};

fn args(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

/// 150 seeds of three replicas under partitions, crashes (losing unsynced writes), a wiped
/// disk, pauses, loss, duplication and reordering, in every conflict mode.
#[test]
fn sweep_150_seeds_with_every_fault_finds_no_violation() {
    let a = parse(&args("--seeds 2000..2150 --rf 3")).unwrap();
    let reports = run_seeds(&a).unwrap();
    assert_eq!(reports.len(), 150);
    let failures: Vec<String> = reports
        .iter()
        .filter_map(|r| r.violation.as_ref().map(|v| format!("seed {}: {v}\n  {}", r.seed, r.excerpt.join("\n  "))))
        .collect();
    assert!(failures.is_empty(), "violations:\n{}", failures.join("\n"));
    assert!(reports.iter().all(|r| r.converged && r.lost_acked == 0));
    let line = summary(&a, &reports);
    assert!(line.starts_with("replication: seeds=150 violations=0 lost_acked=0 converged=150 trace="), "{line}");
    // The sweep must exercise what it claims to check.
    let sum = |f: fn(&quorate_sim::repl_sim::ReplStats) -> u64| reports.iter().map(|r| f(&r.stats)).sum::<u64>();
    assert!(sum(|s| s.acked_strong) > 150 * 200, "acknowledged writes checked: {}", sum(|s| s.acked_strong));
    assert!(sum(|s| s.ryw_checks) > 150 * 200, "read-your-writes checks: {}", sum(|s| s.ryw_checks));
    assert!(sum(|s| s.not_acked) > 150, "writes left unknown: {}", sum(|s| s.not_acked));
    assert!(sum(|s| s.wipes) > 20, "wiped disks: {}", sum(|s| s.wipes));
    assert!(sum(|s| s.crashes) > 150, "crashes: {}", sum(|s| s.crashes));
    assert!(sum(|s| s.hints_delivered) > 150, "hints delivered: {}", sum(|s| s.hints_delivered));
    assert!(sum(|s| s.repairs) > 150, "read repairs: {}", sum(|s| s.repairs));
    assert!(sum(|s| s.collected) > 50, "tombstones collected: {}", sum(|s| s.collected));
    assert!(sum(|s| s.conflicts) > 150, "conflicts settled: {}", sum(|s| s.conflicts));
    assert!(sum(|s| s.resolved) > 50, "siblings resolved: {}", sum(|s| s.resolved));
    // Once the network is healed, a Quorum or All write costs one round trip: no extra phase,
    // no resend (which would come 100 ms later).
    let healed = sum(|s| s.healed_strong_acked);
    assert!(healed > 150 * 10, "strong writes after healing: {healed}");
    assert_eq!(sum(|s| s.healed_one_round_trip), healed, "{}", round_trips(&reports));
    let mv: Vec<_> = reports.iter().filter(|r| r.mode == Some(ConflictMode::MultiValue)).collect();
    assert!(mv.len() > 20 && mv.iter().map(|r| r.stats.sibling_reads).sum::<u64>() > 100, "siblings surfaced on read");
    for mode in [ConflictMode::LastWriteWins, ConflictMode::CrdtMap] {
        assert!(reports.iter().filter(|r| r.mode == Some(mode)).count() > 20, "{mode:?} seeds");
    }
}

#[test]
fn other_replica_counts_find_no_violation() {
    for (rf, seeds) in [(1, 5), (2, 15), (5, 15)] {
        let a = parse(&args(&format!("--seeds 0..{seeds} --rf {rf}"))).unwrap();
        for r in run_seeds(&a).unwrap() {
            assert!(r.violation.is_none(), "rf {rf}, seed {}: {:?}\n{}", r.seed, r.violation, r.excerpt.join("\n"));
        }
    }
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    let cfg = ReplSimConfig::new(77, 3);
    let a = run(cfg.clone());
    let b = run(cfg);
    assert_eq!(a.trace, b.trace);
    assert_eq!(a.stats.writes, b.stats.writes);
    assert_ne!(run(ReplSimConfig::new(78, 3)).trace, a.trace, "another seed, another run");
    let x = run_seeds(&parse(&args("--seeds 0..3 --chaos-secs 2")).unwrap()).unwrap();
    let reversed: Vec<_> = x.iter().rev().cloned().collect();
    assert_ne!(combined_trace(&x), combined_trace(&reversed), "the combined trace depends on seed order");
}

/// Runs seeds from 0 until `bug` is caught; returns the first catching seed and its report.
/// Runs are deterministic, so the first catching seed is a fixed fact of the simulator; the
/// bound leaves room for the fault mix to change.
fn first_catch(bug: &str, max_seeds: u64) -> Option<(u64, String)> {
    const CHUNK: u64 = 10;
    let mut start = 0;
    while start < max_seeds {
        let end = (start + CHUNK).min(max_seeds);
        let a = parse(&args(&format!("--seeds {start}..{end} --planted-bug {bug}"))).unwrap();
        let caught = run_seeds(&a).unwrap().into_iter().find_map(|r| r.violation.map(|v| (r.seed, v)));
        if caught.is_some() {
            return caught;
        }
        start = end;
    }
    None
}

/// A duplicated acknowledgement counted twice: an All write reported with two real holders.
/// Caught within 10 seeds (today at seed 0, and in 72 of seeds 0..100) by the check that every
/// acknowledgement is backed by that many replicas durably holding the write.
#[test]
fn planted_double_counted_ack_is_caught_within_10_seeds() {
    let caught = first_catch("ack", 10);
    assert!(caught.is_some(), "the simulator missed an acknowledgement counted twice");
}

/// Tombstones collected before every replica saw them: a replica that missed the delete
/// brings the entry back, or never agrees. Caught within 20 seeds (today at seed 1, and in 22
/// of seeds 0..100).
#[test]
fn planted_early_tombstone_collection_is_caught_within_20_seeds() {
    let caught = first_catch("tombstone", 20);
    assert!(caught.is_some(), "the simulator missed tombstones collected too early");
}

/// Last-write-wins without the node tiebreak: equal timestamps from two replicas leave each
/// keeping its own. Caught within 60 seeds (today at seed 7, and in 15 of seeds 0..100: only
/// last-write-wins seeds with agreeing clocks can tie).
#[test]
fn planted_lww_without_tiebreak_is_caught_within_60_seeds() {
    let caught = first_catch("lww", 60);
    assert!(caught.is_some(), "the simulator missed last-write-wins without the node tiebreak");
}
