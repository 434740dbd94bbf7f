//! The real runtime under madsim: determinism, a clean sweep, and planted bugs caught.
//!
//! Only in the madsim build: `scripts/madsim test`.
#![cfg(madsim)]

use quorate_sim::runtime_sim::{run, RuntimeSimConfig};

fn config(seed: u64) -> RuntimeSimConfig {
    RuntimeSimConfig::new(seed)
}

#[test]
fn the_same_seed_gives_the_same_trace_and_history() {
    let a = run(config(11));
    let b = run(config(11));
    assert!(a.violation.is_none(), "{:?}", a.violation);
    assert!(a.ops > 100, "the clients did work: {} ops", a.ops);
    assert_eq!(a.trace, b.trace, "same seed, same trace");
    assert_eq!(a.history.events(), b.history.events(), "same seed, same history");
    assert_eq!(a.faults, b.faults, "same seed, same faults");
    let c = run(config(12));
    assert_ne!(a.trace, c.trace, "another seed, another run");
}

/// madsim's own check: it records every random draw of a run and replays the seed, failing
/// at the first draw that differs (say, from OS entropy or a hash map's order).
#[test]
fn madsim_finds_no_nondeterminism() {
    async fn short_run() {
        let mut cfg = RuntimeSimConfig::new(5);
        cfg.chaos_secs = 6;
        cfg.healed_secs = 8;
        let report = quorate_sim::runtime_sim::world(cfg).await;
        assert!(report.violation.is_none(), "{:?}", report.violation);
    }
    madsim::runtime::Runtime::check_determinism(5, quorate_sim::runtime_sim::net_config(), short_run);
}

#[test]
fn fifty_seeds_with_every_fault_find_no_violation() {
    for seed in 100..150 {
        let r = run(config(seed));
        assert!(r.violation.is_none(), "seed {seed}: {:?}\nfaults: {:?}", r.violation, r.faults);
        assert!(r.ops > 100, "seed {seed} did work");
    }
}

/// Runs seeds from 0 until `bug` is caught, once with followers syncing their log on their own
/// loop and once through the storage task (each path must catch it on its own); panics if
/// either does not within `bound` seeds.
#[cfg(feature = "planted-bugs")]
fn first_catch(bug: &str, bound: u64) {
    for inline in [true, false] {
        let caught = (0..bound).any(|seed| {
            let mut cfg = config(seed);
            cfg.planted = Some(bug.to_string());
            cfg.inline_when_following = inline;
            run(cfg).violation.is_some()
        });
        assert!(caught, "planted bug {bug:?} was not caught within {bound} seeds (inline_when_following = {inline})");
    }
}

#[cfg(feature = "planted-bugs")]
#[test]
fn acking_a_client_write_before_the_wal_fsync_is_caught_within_10_seeds() {
    first_catch("ack", 10);
}

#[cfg(feature = "planted-bugs")]
#[test]
fn sending_a_vote_before_the_hard_state_is_synced_is_caught_within_10_seeds() {
    first_catch("vote", 10);
}

#[cfg(feature = "planted-bugs")]
#[test]
fn skipping_the_checksum_on_recovery_is_caught_within_60_seeds() {
    first_catch("checksum", 60);
}
