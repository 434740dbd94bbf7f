//! The `quorate-sim swim` command line.

use std::io::Write;
use std::ops::Range;

use crate::swim_sim::{self, SwimReport, SwimSimConfig};

const USAGE: &str = "\\
usage: quorate-sim swim [options]

Runs seeded simulations of SWIM membership (join storm through one seed, then crashes,
restarts, partitions, slow members and a graceful leave under packet loss) and checks
completeness, accuracy and convergence after healing.

options:
  --members N         members, 1 to 20000                             [default: 100]
  --loss P            packet loss probability, 0 to 0.3               [default: 0]
  --duration D        virtual run time: 600s, 10m or seconds; >= 180s  [default: 600s]
  --seed N            run one seed                                    [default: 1]
  --seeds A..B        run seeds A (inclusive) to B (exclusive), in parallel
  --no-faults         only the join storm and loss, no crashes or partitions
  --watch I           print a timeline of member I to stderr (what everyone hears
                      about it, its health, stalls, crashes, partitions)
  -h, --help          print this help

The run ends with one line:
  swim: members=<n> loss=<p> detect_p50_ms=<n> detect_max_ms=<n> false_positives=<n>
        converge_ms=<n> msgs_per_member_s=<x> bytes_per_member_s=<x> trace=<16 hex>
(on one line). With several seeds, detection times are pooled, false positives summed,
converge_ms is the worst, and the trace folds every seed's. A violation prints the seed and
what failed, and exits with status 1; bad arguments exit with status 2.";

/// A parsed `swim` invocation.
#[derive(Clone, Debug, PartialEq)]
pub struct SwimArgs {
    /// Members.
    pub members: usize,
    /// Loss probability.
    pub loss: f64,
    /// Virtual duration in nanoseconds.
    pub duration_ns: u64,
    /// Seeds.
    pub seeds: Range<u64>,
    /// Inject faults.
    pub faults: bool,
    /// Member whose timeline to print.
    pub watch: Option<usize>,
}

/// Parses the arguments after `swim`. Errors name the flag and what it expects.
pub fn parse(args: &[String]) -> Result<SwimArgs, String> {
    let mut a =
        SwimArgs { members: 100, loss: 0.0, duration_ns: 600_000_000_000, seeds: 1..2, faults: true, watch: None };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or_else(|| format!("{name} needs a value"));
        match flag.as_str() {
            "--members" => {
                let v = value("--members")?;
                let n: usize = v.parse().map_err(|_| format!("--members expects an integer, got {v:?}"))?;
                if !(1..=20_000).contains(&n) {
                    return Err(format!("--members must be between 1 and 20000, got {n}"));
                }
                a.members = n;
            }
            "--loss" => {
                let v = value("--loss")?;
                let p: f64 = v.parse().map_err(|_| format!("--loss expects a probability like 0.2, got {v:?}"))?;
                if !(0.0..=0.3).contains(&p) {
                    return Err(format!("--loss must be between 0 and 0.3, got {v}"));
                }
                a.loss = p;
            }
            "--duration" => {
                let v = value("--duration")?;
                let secs = parse_duration_secs(&v)
                    .ok_or_else(|| format!("--duration expects seconds like 600s, 10m or 600, got {v:?}"))?;
                if !(180..=86_400).contains(&secs) {
                    return Err(format!("--duration must be between 180s and 24h, got {v}"));
                }
                a.duration_ns = secs * 1_000_000_000;
            }
            "--seed" => {
                let v = value("--seed")?;
                let n: u64 = v.parse().map_err(|_| format!("--seed expects a non-negative integer, got {v:?}"))?;
                a.seeds = n..n.saturating_add(1);
            }
            "--seeds" => {
                let v = value("--seeds")?;
                a.seeds = crate::cli::seed_range(&v)?;
            }
            "--no-faults" => a.faults = false,
            "--watch" => {
                let v = value("--watch")?;
                a.watch = Some(v.parse().map_err(|_| format!("--watch expects a member index, got {v:?}"))?);
            }
            other => return Err(format!("unknown option {other:?}; see quorate-sim swim --help")),
        }
    }
    Ok(a)
}

fn parse_duration_secs(v: &str) -> Option<u64> {
    if let Some(m) = v.strip_suffix('m') {
        return m.parse::<u64>().ok()?.checked_mul(60);
    }
    v.strip_suffix('s').unwrap_or(v).parse().ok()
}

/// Runs every seed (in parallel, reported in seed order).
pub fn run_seeds(a: &SwimArgs) -> Vec<SwimReport> {
    let configs: Vec<SwimSimConfig> = a
        .seeds
        .clone()
        .map(|seed| {
            let mut c = SwimSimConfig::new(seed, a.members, a.duration_ns);
            c.loss = a.loss;
            c.faults = a.faults;
            c.watch = a.watch;
            c
        })
        .collect();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(configs.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots = std::sync::Mutex::new((0..configs.len()).map(|_| None).collect::<Vec<Option<SwimReport>>>());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(cfg) = configs.get(i) else { break };
                let report = swim_sim::run(cfg.clone());
                if let Ok(mut s) = slots.lock() {
                    s[i] = Some(report);
                }
            });
        }
    });
    slots.into_inner().unwrap_or_default().into_iter().flatten().collect()
}

/// The summary line for a set of reports.
pub fn summary(a: &SwimArgs, reports: &[SwimReport]) -> String {
    let mut pooled = SwimReport::default();
    let mut converge = Some(0);
    let mut trace = quorate_core::fnv1a64(b"quorate-sim swim");
    for r in reports {
        pooled.detect_ms.extend_from_slice(&r.detect_ms);
        pooled.false_positives += r.false_positives;
        pooled.packets += r.packets;
        pooled.bytes += r.bytes;
        pooled.member_secs += r.member_secs;
        converge = match (converge, r.converge_ms) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
        trace = quorate_core::fnv1a64_extend(trace, &r.trace.to_le_bytes());
    }
    if let [only] = reports {
        trace = only.trace;
    }
    let show = |v: Option<u64>| v.map_or_else(|| "none".to_string(), |x| x.to_string());
    format!(
        "swim: members={} loss={:.2} detect_p50_ms={} detect_max_ms={} false_positives={} converge_ms={} msgs_per_member_s={:.2} bytes_per_member_s={:.1} trace={:016x}",
        a.members,
        a.loss,
        show(pooled.detect_quantile(0.5)),
        show(pooled.detect_quantile(1.0)),
        pooled.false_positives,
        show(converge),
        pooled.msgs_per_member_s(),
        pooled.bytes_per_member_s(),
        trace
    )
}

/// The whole run's load of one report.
fn whole(r: &SwimReport) -> swim_sim::Load {
    swim_sim::Load {
        packets: r.packets,
        bytes: r.bytes,
        packets_by_kind: r.packets_by_kind,
        bytes_by_kind: r.bytes_by_kind,
        member_secs: r.member_secs,
    }
}

/// Runs `quorate-sim swim`; returns the exit status.
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
    let reports = run_seeds(&a);
    let mut violations = 0;
    for r in &reports {
        if let Some(v) = &r.violation {
            violations += 1;
            let _ = writeln!(out, "VIOLATION seed={} : {v}", r.seed);
            let _ = writeln!(
                out,
                "  replay: quorate-sim swim --seed {} --members {} --loss {} --duration {}s{}",
                r.seed,
                a.members,
                a.loss,
                a.duration_ns / 1_000_000_000,
                if a.faults { "" } else { " --no-faults" }
            );
        }
        if std::env::var_os("QUORATE_SIM_VERBOSE").is_some() {
            let _ = writeln!(
                err,
                "seed={} full_view_ms={:?} converge_ms={:?} detections={} fp={} partition_downs={} rejected={} events={}",
                r.seed,
                r.full_view_ms,
                r.converge_ms,
                r.detect_ms.len(),
                r.false_positives,
                r.partition_downs,
                r.rejected,
                r.events
            );
            for (name, load) in [("whole run", whole(r)), ("steady, from 30 s", r.steady.clone())] {
                let per = load.member_secs.max(1e-9);
                let kinds: Vec<String> = quorate_core::swim::Kind::ALL
                    .iter()
                    .map(|k| {
                        let i = *k as usize;
                        let (p, b) = (load.packets_by_kind[i] as f64 / per, load.bytes_by_kind[i] as f64 / per);
                        format!("{}={p:.2}/{b:.0}", k.name())
                    })
                    .collect();
                let _ = writeln!(
                    err,
                    "seed={} {name}: msgs_per_member_s={:.2} bytes_per_member_s={:.1} by kind (msgs/bytes): {}",
                    r.seed,
                    load.msgs_per_member_s(),
                    load.bytes_per_member_s(),
                    kinds.join(" ")
                );
            }
            let _ = writeln!(
                err,
                "seed={} push_pulls={} of_them_for_digests={} gossip_dropped={} corrections={}",
                r.seed, r.push_pulls.0, r.push_pulls.1, r.gossip_dropped, r.corrections
            );
        }
    }
    let _ = writeln!(out, "{}", summary(&a, &reports));
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
    fn flags_parse_and_bad_ones_are_named() {
        let a = parse(&args("--members 100 --loss 0.2 --duration 600s --seed 1")).unwrap();
        assert_eq!((a.members, a.duration_ns, a.seeds.clone()), (100, 600_000_000_000, 1..2));
        assert_eq!(parse(&args("--duration 10m")).unwrap().duration_ns, 600_000_000_000);
        assert!(parse(&args("--loss 0.5")).unwrap_err().contains("--loss"));
        assert!(parse(&args("--members 0")).unwrap_err().contains("--members"));
        assert!(parse(&args("--duration 5s")).unwrap_err().contains("--duration"));
        assert!(parse(&args("--duration soon")).unwrap_err().contains("--duration"));
        assert!(parse(&args("--seeds 3..1")).unwrap_err().contains("greater"));
        assert!(parse(&args("--frobnicate")).unwrap_err().contains("--frobnicate"));
    }
}
