//! The `quorate-sim` command line, as a function of its arguments so tests can run it.

use std::io::Write;
use std::ops::Range;

use crate::raft_sim::{self, RaftSimConfig, RunReport};

const USAGE: &str = "\
usage: quorate-sim raft [options]
       quorate-sim swim [options]       (quorate-sim swim --help for its options)
       quorate-sim replication [options] (quorate-sim replication --help for its options)
       quorate-sim runtime [options]    (the real runtime under madsim: scripts/madsim runtime --help)
       quorate-sim placement [options]  (quorate-sim placement --help for its options)

Runs seeded fault simulations of a Raft cluster serving a key-value store, and checks Raft
safety, linearizability of the client history and liveness after healing.

options:
  --seeds A..B        run seeds A (inclusive) to B (exclusive)         [default: 0..100]
  --seed N            run one seed and print its trace hash
  --nodes N           cluster size, 1 to 9                              [default: 5]
  --clients N         concurrent clients, 1 to 64                       [default: 5]
  --keys N            distinct keys, 1 to 1000                          [default: 3]
  --chaos-secs S      virtual seconds of faults                         [default: 20]
  --healed-secs S     virtual seconds after healing, at least 9         [default: 10]
  --no-faults         run without faults
  --history FILE      with --seed: write the client history as JSON lines
  --planted-bug B     vote | ack | commit (builds with feature planted-bugs only)
  -h, --help          print this help

The run ends with one line:
  raft: seeds=<n> violations=<n> ops=<checked operations> trace=<16 hex digits>
and exits with status 1 if any seed found a violation (its seed and a history excerpt are
printed first), 2 on bad arguments.";

/// A parsed `raft` invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftArgs {
    /// Seeds to run.
    pub seeds: Range<u64>,
    /// True when `--seed` chose a single seed.
    pub single: bool,
    /// Cluster size.
    pub nodes: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Distinct keys.
    pub keys: u32,
    /// Virtual seconds of faults.
    pub chaos_secs: u64,
    /// Virtual seconds after healing.
    pub healed_secs: u64,
    /// Inject faults.
    pub faults: bool,
    /// Where to write the history.
    pub history: Option<String>,
    /// The planted bug's name.
    pub planted_bug: Option<String>,
}

/// Parses the arguments after `raft`. Errors say which flag and what it expects.
pub fn parse_raft(args: &[String]) -> Result<RaftArgs, String> {
    let mut a = RaftArgs {
        seeds: 0..100,
        single: false,
        nodes: 5,
        clients: 5,
        keys: 3,
        chaos_secs: 20,
        healed_secs: 10,
        faults: true,
        history: None,
        planted_bug: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or_else(|| format!("{name} needs a value"));
        match flag.as_str() {
            "--seeds" => {
                let v = value("--seeds")?;
                a.seeds = seed_range(&v)?;
            }
            "--seed" => {
                let n = number(&value("--seed")?, "--seed")?;
                a.seeds = n..n.saturating_add(1);
                a.single = true;
            }
            "--nodes" => a.nodes = bounded(&value("--nodes")?, "--nodes", 1, 9)? as usize,
            "--clients" => a.clients = bounded(&value("--clients")?, "--clients", 1, 64)? as usize,
            "--keys" => a.keys = bounded(&value("--keys")?, "--keys", 1, 1000)? as u32,
            "--chaos-secs" => a.chaos_secs = bounded(&value("--chaos-secs")?, "--chaos-secs", 0, 3600)?,
            "--healed-secs" => a.healed_secs = bounded(&value("--healed-secs")?, "--healed-secs", 9, 3600)?,
            "--no-faults" => a.faults = false,
            "--history" => a.history = Some(value("--history")?),
            "--planted-bug" => a.planted_bug = Some(value("--planted-bug")?),
            other => return Err(format!("unknown option {other:?}; see --help")),
        }
    }
    if a.history.is_some() && !a.single {
        return Err("--history needs --seed N (one history per run)".to_string());
    }
    Ok(a)
}

/// Parses a flag's non-negative integer; the error names the flag.
pub(crate) fn number(s: &str, what: &str) -> Result<u64, String> {
    s.trim().parse::<u64>().map_err(|_| format!("{what} expects a non-negative integer, got {s:?}"))
}

/// Parses a flag's integer within `lo..=hi`; the error names the flag and the bounds.
pub(crate) fn bounded(s: &str, what: &str, lo: u64, hi: u64) -> Result<u64, String> {
    let n = number(s, what)?;
    if n < lo || n > hi {
        return Err(format!("{what} must be between {lo} and {hi}, got {n}"));
    }
    Ok(n)
}

/// Parses `--seeds A..B` (B exclusive, greater than A), shared by every simulation.
pub(crate) fn seed_range(v: &str) -> Result<std::ops::Range<u64>, String> {
    let (lo, hi) = v.split_once("..").ok_or_else(|| format!("--seeds expects A..B, got {v:?}"))?;
    let (lo, hi) = (number(lo, "--seeds start")?, number(hi, "--seeds end")?);
    if hi <= lo {
        return Err(format!("--seeds {v}: the end must be greater than the start"));
    }
    Ok(lo..hi)
}

/// Builds the simulation config for one seed.
pub fn sim_config(a: &RaftArgs, seed: u64) -> Result<RaftSimConfig, String> {
    let mut cfg = RaftSimConfig::new(seed, a.nodes);
    cfg.clients = a.clients;
    cfg.keys = a.keys;
    cfg.chaos_ns = a.chaos_secs * 1_000_000_000;
    cfg.healed_ns = a.healed_secs * 1_000_000_000;
    cfg.faults = a.faults;
    if let Some(name) = &a.planted_bug {
        set_planted_bug(&mut cfg, name)?;
    }
    Ok(cfg)
}

#[cfg(feature = "planted-bugs")]
fn set_planted_bug(cfg: &mut RaftSimConfig, name: &str) -> Result<(), String> {
    use quorate_core::raft::PlantedBug;
    cfg.planted_bug = Some(match name {
        "vote" => PlantedBug::VoteWithoutUpToDateCheck,
        "ack" => PlantedBug::AckBeforePersist,
        "commit" => PlantedBug::CommitOldTermByCounting,
        other => return Err(format!("--planted-bug expects vote, ack or commit, got {other:?}")),
    });
    Ok(())
}

#[cfg(not(feature = "planted-bugs"))]
fn set_planted_bug(_: &mut RaftSimConfig, _: &str) -> Result<(), String> {
    Err("--planted-bug needs a build with `--features planted-bugs`".to_string())
}

/// Runs every seed of `a` (in parallel, combined in seed order) and returns the reports. In a
/// sweep (not `--seed N`), a clean seed's report comes without its history.
pub fn run_seeds(a: &RaftArgs) -> Result<Vec<RunReport>, String> {
    let seeds: Vec<u64> = a.seeds.clone().collect();
    let configs = seeds.iter().map(|&s| sim_config(a, s)).collect::<Result<Vec<_>, _>>()?;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(configs.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let verbose = std::env::var_os("QUORATE_SIM_VERBOSE").is_some();
    let mut slots: Vec<Option<RunReport>> = (0..configs.len()).map(|_| None).collect();
    let results = std::sync::Mutex::new(&mut slots);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(cfg) = configs.get(i) else { break };
                let mut report = raft_sim::run(cfg.clone());
                // Only a violation's excerpt, `--history` (one seed) and the verbose counts read
                // a history: holding every clean seed's to the sweep's end cost about 1 MB a seed.
                if !a.single && report.violation.is_none() && !verbose {
                    report.history = Default::default();
                }
                if let Ok(mut r) = results.lock() {
                    r[i] = Some(report);
                }
            });
        }
    });
    Ok(slots.into_iter().flatten().collect())
}

/// The combined trace of many runs: their traces folded in seed order.
pub fn combined_trace(reports: &[RunReport]) -> u64 {
    reports.iter().fold(quorate_core::fnv1a64(b"quorate-sim raft"), |acc, r| {
        quorate_core::fnv1a64_extend(acc, &r.trace.to_le_bytes())
    })
}

/// Runs the command line; returns the process exit status.
pub fn main(args: &[String], out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    match args.first().map(String::as_str) {
        Some("raft") => {}
        Some("swim") => return crate::swim_cli::main(&args[1..], out, err),
        Some("replication") => return crate::repl_cli::main(&args[1..], out, err),
        Some("runtime") => return crate::runtime_cli::main(&args[1..], out, err),
        Some("placement") => return crate::placement_cli::main(&args[1..], out, err),
        Some("-h") | Some("--help") | None => {
            let _ = writeln!(out, "{USAGE}");
            return if args.is_empty() { 2 } else { 0 };
        }
        Some(other) => {
            let _ = writeln!(
                err,
                "error: unknown simulation {other:?}; available: raft, swim, replication, runtime, placement\n\n{USAGE}"
            );
            return 2;
        }
    }
    if args[1..].iter().any(|a| a == "-h" || a == "--help") {
        let _ = writeln!(out, "{USAGE}");
        return 0;
    }
    let parsed = match parse_raft(&args[1..]) {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return 2;
        }
    };
    let reports = match run_seeds(&parsed) {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return 2;
        }
    };
    let mut violations = 0;
    let mut ops = 0;
    for r in &reports {
        ops += r.ops_checked;
        if let Some(v) = &r.violation {
            violations += 1;
            let _ = writeln!(out, "VIOLATION seed={} : {v}", r.seed);
            if !v.starts_with("linearizability") {
                let _ = writeln!(out, "  last client events before it (virtual time {} ns):", r.violation_at_ns);
                for line in r.history_excerpt(12) {
                    let _ = writeln!(out, "    {line}");
                }
            }
            let _ = writeln!(out, "  replay: quorate-sim raft --seed {} --nodes {}", r.seed, parsed.nodes);
        }
        if std::env::var_os("QUORATE_SIM_VERBOSE").is_some() {
            let _ = writeln!(err, "seed={} ops={} {:?}", r.seed, r.history.len_ops(), r.stats);
            for line in &r.stats.final_nodes {
                let _ = writeln!(err, "  {line}");
            }
        }
    }
    if let (Some(path), Some(r)) = (&parsed.history, reports.first()) {
        let written = std::fs::File::create(path).and_then(|f| r.history.write_json_lines(std::io::BufWriter::new(f)));
        if let Err(e) = written {
            let _ = writeln!(err, "error: cannot write history to {path}: {e}");
            return 2;
        }
    }
    let trace = if parsed.single { reports.first().map_or(0, |r| r.trace) } else { combined_trace(&reports) };
    let seeds = if parsed.single { format!("seed={}", parsed.seeds.start) } else { format!("seeds={}", reports.len()) };
    let _ = writeln!(out, "raft: {seeds} violations={violations} ops={ops} trace={trace:016x}");
    if violations > 0 {
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
    fn bad_flags_get_clear_errors() {
        assert!(parse_raft(&args("--seeds 5")).unwrap_err().contains("A..B"));
        assert!(parse_raft(&args("--seeds 5..2")).unwrap_err().contains("greater"));
        assert!(parse_raft(&args("--nodes 0")).unwrap_err().contains("between 1 and 9"));
        assert!(parse_raft(&args("--nodes x")).unwrap_err().contains("integer"));
        assert!(parse_raft(&args("--bogus")).unwrap_err().contains("--bogus"));
        assert!(parse_raft(&args("--history h.jsonl")).unwrap_err().contains("--seed"));
        assert!(parse_raft(&args("--seed")).unwrap_err().contains("needs a value"));
        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert_eq!(main(&args("raft --nodes 99"), &mut out, &mut err), 2);
        assert!(String::from_utf8(err).unwrap().contains("--nodes"));
        assert_eq!(main(&args("paxos"), &mut out, &mut Vec::new()), 2);
    }

    #[test]
    fn defaults_and_seed_ranges_parse() {
        let a = parse_raft(&args("--seeds 3..10 --nodes 3 --no-faults")).unwrap();
        assert_eq!(a.seeds, 3..10);
        assert_eq!(a.nodes, 3);
        assert!(!a.faults && !a.single);
        let one = parse_raft(&args("--seed 42 --history /tmp/x")).unwrap();
        assert_eq!(one.seeds, 42..43);
        assert!(one.single);
    }
}
