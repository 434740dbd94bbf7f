//! The `quorate-sim replication` command line.

use std::io::Write;
use std::ops::Range;

use crate::repl_sim::{self, ReplReport, ReplSimConfig};

const USAGE: &str = "\
usage: quorate-sim replication [options]

Runs seeded simulations of one shard's replicas serving concurrent multi-master clients
(writes, batches, deletes and reads at One, Quorum and All, through any replica) under
crashes that lose unsynced writes, a wiped disk, partitions, pauses, loss, duplication and
reordering, in a conflict mode the seed picks (last-write-wins, multi-value with or without a
resolver, CRDT map). Checks, after healing and anti-entropy: acknowledged writes readable,
nothing silently dropped, read-your-writes, convergence, and the sync throttle.

options:
  --seeds A..B        run seeds A (inclusive) to B (exclusive), in parallel  [default: 0..100]
  --seed N            run one seed and print its trace hash
  --rf N              replicas, 1 to 7                                        [default: 3]
  --clients N         concurrent clients, 1 to 32                             [default: 4]
  --keys N            distinct keys, 1 to 1000                                [default: 40]
  --chaos-secs S      virtual seconds of faults                               [default: 10]
  --healed-secs S     virtual seconds after healing, at least 10              [default: 20]
  --no-faults         run without faults
  --planted-bug B     ack | tombstone | lww (builds with feature planted-bugs only)
  -h, --help          print this help

The run ends with one line:
  replication: seeds=<n> violations=<n> lost_acked=<n> converged=<n> trace=<16 hex digits>
and exits with status 1 if any seed found a violation (its seed, what broke and the last
client events are printed first), 2 on bad arguments.";

/// A parsed `replication` invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplArgs {
    /// Seeds to run.
    pub seeds: Range<u64>,
    /// True when `--seed` chose one seed.
    pub single: bool,
    /// Replicas.
    pub rf: usize,
    /// Clients.
    pub clients: usize,
    /// Keys.
    pub keys: u64,
    /// Virtual seconds of faults.
    pub chaos_secs: u64,
    /// Virtual seconds after healing.
    pub healed_secs: u64,
    /// Inject faults.
    pub faults: bool,
    /// The planted bug's name.
    pub planted_bug: Option<String>,
}

use crate::cli::{bounded, number, seed_range};

/// Parses the arguments after `replication`. Errors name the flag and what it expects.
pub fn parse(args: &[String]) -> Result<ReplArgs, String> {
    let mut a = ReplArgs {
        seeds: 0..100,
        single: false,
        rf: 3,
        clients: 4,
        keys: 40,
        chaos_secs: 10,
        healed_secs: 20,
        faults: true,
        planted_bug: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or_else(|| format!("{name} needs a value"));
        match flag.as_str() {
            "--seeds" => {
                let v = value("--seeds")?;
                a.seeds = seed_range(&v)?;
                a.single = false;
            }
            "--seed" => {
                let n = number(&value("--seed")?, "--seed")?;
                a.seeds = n..n.saturating_add(1);
                a.single = true;
            }
            "--rf" => a.rf = bounded(&value("--rf")?, "--rf", 1, 7)? as usize,
            "--clients" => a.clients = bounded(&value("--clients")?, "--clients", 1, 32)? as usize,
            "--keys" => a.keys = bounded(&value("--keys")?, "--keys", 1, 1000)?,
            "--chaos-secs" => a.chaos_secs = bounded(&value("--chaos-secs")?, "--chaos-secs", 0, 3600)?,
            "--healed-secs" => a.healed_secs = bounded(&value("--healed-secs")?, "--healed-secs", 10, 3600)?,
            "--no-faults" => a.faults = false,
            "--planted-bug" => a.planted_bug = Some(value("--planted-bug")?),
            other => return Err(format!("unknown option {other:?}; see quorate-sim replication --help")),
        }
    }
    Ok(a)
}

/// The simulation config for one seed.
pub fn sim_config(a: &ReplArgs, seed: u64) -> Result<ReplSimConfig, String> {
    let mut c = ReplSimConfig::new(seed, a.rf);
    c.clients = a.clients;
    c.keys = a.keys;
    c.chaos_ns = a.chaos_secs * 1_000_000_000;
    c.healed_ns = a.healed_secs * 1_000_000_000;
    c.faults = a.faults;
    if let Some(name) = &a.planted_bug {
        set_planted_bug(&mut c, name)?;
    }
    Ok(c)
}

#[cfg(feature = "planted-bugs")]
fn set_planted_bug(c: &mut ReplSimConfig, name: &str) -> Result<(), String> {
    use quorate_core::replication::PlantedBug;
    c.planted_bug = Some(match name {
        "ack" => PlantedBug::AckCountedTwice,
        "tombstone" => PlantedBug::TombstoneCollectedEarly,
        "lww" => PlantedBug::LwwWithoutNodeTiebreak,
        other => return Err(format!("--planted-bug expects ack, tombstone or lww, got {other:?}")),
    });
    Ok(())
}

#[cfg(not(feature = "planted-bugs"))]
fn set_planted_bug(_: &mut ReplSimConfig, _: &str) -> Result<(), String> {
    Err("--planted-bug needs a build with `--features planted-bugs`".to_string())
}

/// Runs every seed (in parallel, reported in seed order).
pub fn run_seeds(a: &ReplArgs) -> Result<Vec<ReplReport>, String> {
    let configs = a.seeds.clone().map(|s| sim_config(a, s)).collect::<Result<Vec<_>, _>>()?;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(configs.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots = std::sync::Mutex::new((0..configs.len()).map(|_| None).collect::<Vec<Option<ReplReport>>>());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(cfg) = configs.get(i) else { break };
                let report = repl_sim::run(cfg.clone());
                if let Ok(mut s) = slots.lock() {
                    s[i] = Some(report);
                }
            });
        }
    });
    Ok(slots.into_inner().unwrap_or_default().into_iter().flatten().collect())
}

/// The combined trace of many runs: their traces folded in seed order.
pub fn combined_trace(reports: &[ReplReport]) -> u64 {
    reports.iter().fold(quorate_core::fnv1a64(b"quorate-sim replication"), |acc, r| {
        quorate_core::fnv1a64_extend(acc, &r.trace.to_le_bytes())
    })
}

/// The summary line.
pub fn summary(a: &ReplArgs, reports: &[ReplReport]) -> String {
    let violations = reports.iter().filter(|r| r.violation.is_some()).count();
    let lost: u64 = reports.iter().map(|r| r.lost_acked).sum();
    let converged = reports.iter().filter(|r| r.converged).count();
    let trace = if a.single { reports.first().map_or(0, |r| r.trace) } else { combined_trace(reports) };
    let seeds = if a.single { format!("seed={}", a.seeds.start) } else { format!("seeds={}", reports.len()) };
    format!("replication: {seeds} violations={violations} lost_acked={lost} converged={converged} trace={trace:016x}")
}

/// What Quorum and All writes cost once the network is healed: how many were acknowledged
/// within one round trip (two of the healed network's largest one-way delays), and the slowest.
pub fn round_trips(reports: &[ReplReport]) -> String {
    let acked: u64 = reports.iter().map(|r| r.stats.healed_strong_acked).sum();
    let one: u64 = reports.iter().map(|r| r.stats.healed_one_round_trip).sum();
    let max = reports.iter().map(|r| r.stats.healed_ack_max_ns).max().unwrap_or(0);
    let bound = 2 * crate::net::LinkModel::default().delay_max_ns;
    format!(
        "strong writes after healing: acknowledged={acked} within_one_round_trip={one} (<= {} ms) slowest_ms={:.1}",
        bound / 1_000_000,
        max as f64 / 1e6
    )
}

/// Runs `quorate-sim replication`; returns the exit status.
pub fn main(args: &[String], out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        let _ = writeln!(out, "{USAGE}");
        return 0;
    }
    let a = match parse(args) {
        Ok(a) => a,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return 2;
        }
    };
    let reports = match run_seeds(&a) {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return 2;
        }
    };
    for r in &reports {
        if let Some(v) = &r.violation {
            let _ = writeln!(out, "VIOLATION seed={} ({:?}): {v}", r.seed, r.mode);
            if !r.excerpt.is_empty() {
                let _ = writeln!(out, "  last client events:");
                for line in &r.excerpt {
                    let _ = writeln!(out, "    {line}");
                }
            }
            let _ = writeln!(out, "  replay: quorate-sim replication --seed {} --rf {}", r.seed, a.rf);
        }
        if std::env::var_os("QUORATE_SIM_VERBOSE").is_some() {
            let _ = writeln!(err, "seed={} mode={:?} converged={} {:?}", r.seed, r.mode, r.converged, r.stats);
        }
    }
    let _ = writeln!(out, "{}", round_trips(&reports));
    let _ = writeln!(out, "{}", summary(&a, &reports));
    if reports.iter().any(|r| r.violation.is_some()) {
        1
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn flags_parse_and_bad_ones_are_named() {
        let a = parse(&args("--seeds 0..500 --rf 3")).unwrap();
        assert_eq!((a.seeds.clone(), a.rf, a.single), (0..500, 3, false));
        assert!(parse(&args("--seed 4")).unwrap().single);
        assert!(parse(&args("--rf 0")).unwrap_err().contains("--rf"));
        assert!(parse(&args("--rf 8")).unwrap_err().contains("--rf"));
        assert!(parse(&args("--seeds 5..5")).unwrap_err().contains("greater"));
        assert!(parse(&args("--healed-secs 3")).unwrap_err().contains("--healed-secs"));
        assert!(parse(&args("--frob")).unwrap_err().contains("--frob"));
        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert_eq!(main(&args("--keys 0"), &mut out, &mut err), 2);
    }
}
