//! `quorate-sim runtime`: seeds of the real runtime under madsim (see `runtime_sim`).

use std::io::Write;
use std::ops::Range;

const USAGE: &str = "\
usage: scripts/madsim runtime [options]     (the madsim build; see scripts/madsim)

Runs `quorate` nodes unchanged on madsim's simulated network, clock and disks, under seeded
partitions, loss, kills and restarts (unsynced writes lost, torn tails, flipped bits), pauses and
membership changes, with clients doing put, get, cas and delete; checks linearizability, one
leader per term, one entry per index, SWIM agreement and liveness after healing.

options:
  --seeds A..B        run seeds A (inclusive) to B (exclusive)         [default: 0..20]
  --seed N            run one seed and print its trace hash
  --nodes N           cluster size, 3 to 7                              [default: 5]
  --clients N         concurrent clients, 1 to 16                       [default: 4]
  --keys N            distinct keys, 1 to 100                           [default: 4]
  --chaos-secs S      virtual seconds of faults                         [default: 20]
  --healed-secs S     virtual seconds after healing, at least 8         [default: 10]
  --no-faults         run without faults
  --history FILE      with --seed: write the client history as JSON lines
  --faults            print the fault schedule of each seed
  --planted-bug B     ack | vote | checksum (builds with feature planted-bugs only)

The run ends with one line:
  runtime: seeds=<n> violations=<n> ops=<operations> trace=<16 hex digits>
and exits with status 1 if any seed found a violation, 2 on bad arguments.";

/// A parsed `runtime` invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeArgs {
    /// Seeds to run.
    pub seeds: Range<u64>,
    /// True when `--seed` chose one seed.
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
    /// Print each seed's fault schedule.
    pub print_faults: bool,
    /// The planted bug's name.
    pub planted_bug: Option<String>,
}

use crate::cli::{bounded, number, seed_range};

/// Parses the arguments after `runtime`. Errors name the flag and what it expects.
pub fn parse(args: &[String]) -> Result<RuntimeArgs, String> {
    let mut a = RuntimeArgs {
        seeds: 0..20,
        single: false,
        nodes: 5,
        clients: 4,
        keys: 4,
        chaos_secs: 20,
        healed_secs: 10,
        faults: true,
        history: None,
        print_faults: false,
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
            "--nodes" => a.nodes = bounded(&value("--nodes")?, "--nodes", 3, 7)? as usize,
            "--clients" => a.clients = bounded(&value("--clients")?, "--clients", 1, 16)? as usize,
            "--keys" => a.keys = bounded(&value("--keys")?, "--keys", 1, 100)? as u32,
            "--chaos-secs" => a.chaos_secs = bounded(&value("--chaos-secs")?, "--chaos-secs", 0, 3600)?,
            "--healed-secs" => a.healed_secs = bounded(&value("--healed-secs")?, "--healed-secs", 8, 3600)?,
            "--no-faults" => a.faults = false,
            "--faults" => a.print_faults = true,
            "--history" => a.history = Some(value("--history")?),
            "--planted-bug" => {
                let b = value("--planted-bug")?;
                if !matches!(b.as_str(), "ack" | "vote" | "checksum") {
                    return Err(format!("--planted-bug expects ack, vote or checksum, got {b:?}"));
                }
                if !cfg!(feature = "planted-bugs") {
                    return Err("--planted-bug needs a build with `--features planted-bugs`".into());
                }
                a.planted_bug = Some(b);
            }
            other => return Err(format!("unknown option {other:?}; see --help")),
        }
    }
    if a.history.is_some() && !a.single {
        return Err("--history needs --seed N (one history per run)".into());
    }
    Ok(a)
}

/// Runs the command line; returns the exit status.
pub fn main(args: &[String], out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        let _ = writeln!(out, "{USAGE}");
        return 0;
    }
    let parsed = match parse(args) {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return 2;
        }
    };
    run(&parsed, out, err)
}

#[cfg(not(madsim))]
fn run(_: &RuntimeArgs, _: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let _ = writeln!(
        err,
        "error: `quorate-sim runtime` runs the real runtime under madsim and needs that build: use `scripts/madsim runtime ...`"
    );
    2
}

#[cfg(madsim)]
fn run(a: &RuntimeArgs, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    use crate::runtime_sim::{self, RuntimeSimConfig};
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).try_init();
    }
    let configs: Vec<RuntimeSimConfig> = a
        .seeds
        .clone()
        .map(|seed| RuntimeSimConfig {
            seed,
            nodes: a.nodes,
            clients: a.clients,
            keys: a.keys,
            chaos_secs: a.chaos_secs,
            healed_secs: a.healed_secs,
            faults: a.faults,
            planted: a.planted_bug.clone(),
            inline_when_following: runtime_sim::inline_for_seed(seed),
        })
        .collect();
    // Each seed is its own madsim runtime: run them on every core, report in seed order.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(configs.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots = std::sync::Mutex::new((0..configs.len()).map(|_| None).collect::<Vec<_>>());
    let wall = std::time::Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(cfg) = configs.get(i) else { break };
                let cfg = cfg.clone();
                // A fresh thread per seed: madsim keeps per-thread state.
                let mut report = std::thread::spawn(move || runtime_sim::run(cfg)).join();
                // A clean seed's history is only needed to write it out (`--seed N --history`):
                // holding every seed's until the sweep ends grew the sweep by about 1.3 MB a seed.
                if let Ok(r) = &mut report {
                    if r.violation.is_none() && !a.single {
                        r.history = Default::default();
                    }
                }
                if let Ok(mut s) = slots.lock() {
                    s[i] = Some(report);
                }
            });
        }
    });
    let wall_secs = wall.elapsed().as_secs_f64();
    let reports = slots.into_inner().unwrap_or_default();
    let (mut violations, mut ops, mut sim_secs) = (0usize, 0usize, 0f64);
    let mut trace = quorate_core::fnv1a64(b"quorate-sim runtime");
    for (i, r) in reports.into_iter().enumerate() {
        let seed = a.seeds.start + i as u64;
        let r = match r {
            Some(Ok(r)) => r,
            _ => {
                violations += 1;
                let _ = writeln!(out, "VIOLATION seed={seed} : the simulation panicked (see above)");
                let _ = writeln!(out, "  replay: scripts/madsim runtime --seed {seed} --nodes {}", a.nodes);
                continue;
            }
        };
        ops += r.ops;
        sim_secs += r.sim_secs;
        trace = quorate_core::fnv1a64_extend(trace, &r.trace.to_le_bytes());
        if a.print_faults {
            for line in &r.faults {
                let _ = writeln!(out, "seed={seed} fault {line}");
            }
        }
        if let Some(v) = &r.violation {
            violations += 1;
            let _ = writeln!(out, "VIOLATION seed={seed} : {v}");
            let _ = writeln!(
                out,
                "  faults: {}",
                r.faults.iter().rev().take(8).rev().cloned().collect::<Vec<_>>().join("; ")
            );
            let events = r.history.events();
            let _ = writeln!(out, "  last client events:");
            for e in events.iter().rev().take(10).rev() {
                let _ = writeln!(out, "    {}", e.to_json());
            }
            let _ = writeln!(out, "  replay: scripts/madsim runtime --seed {seed} --nodes {}", a.nodes);
        }
        if a.single {
            trace = r.trace;
            if let Some(path) = &a.history {
                let written =
                    std::fs::File::create(path).and_then(|f| r.history.write_json_lines(std::io::BufWriter::new(f)));
                if let Err(e) = written {
                    let _ = writeln!(err, "error: cannot write history to {path}: {e}");
                    return 2;
                }
            }
        }
    }
    if std::env::var_os("QUORATE_SIM_VERBOSE").is_some() {
        let _ = writeln!(
            err,
            "simulated {sim_secs:.0} s in {wall_secs:.1} s of wall time ({:.0}x)",
            sim_secs / wall_secs.max(1e-9)
        );
    }
    let seeds =
        if a.single { format!("seed={}", a.seeds.start) } else { format!("seeds={}", a.seeds.end - a.seeds.start) };
    let _ = writeln!(out, "runtime: {seeds} violations={violations} ops={ops} trace={trace:016x}");
    i32::from(violations > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn flags_parse_and_bad_ones_are_named() {
        let a = parse(&args("--seeds 3..9 --nodes 3 --no-faults")).unwrap();
        assert_eq!((a.seeds, a.nodes, a.faults), (3..9, 3, false));
        assert!(parse(&args("--nodes 2")).unwrap_err().contains("--nodes"));
        assert!(parse(&args("--history h")).unwrap_err().contains("--seed"));
        assert!(parse(&args("--planted-bug nope")).unwrap_err().contains("ack, vote or checksum"));
        assert!(parse(&args("--wat")).unwrap_err().contains("--wat"));
    }
}
