//! The `quorate-sim placement` command line.

use std::io::Write;

use crate::placement_sim::{self, PlacementSimConfig};

const USAGE: &str = "\
usage: quorate-sim placement [options]

Runs a seeded sequence of joins, leaves, drains, failures (some in the middle of a move),
weight changes and load skews over one collection, carrying out every plan through one
migration machine per move, and checks the replication factor after every step and the
zone spread and balance of every settled map.

options:
  --nodes N           nodes at the start, 1 to 2000                     [default: 100]
  --shards N          shards, 1 to 100000                               [default: 1024]
  --rf N              replication factor, 1 to 9                        [default: 3]
  --zones N           zones, 1 to 64                                    [default: 3]
  --events N          events to run, 0 to 10000                         [default: 40]
  --seed N            seed                                              [default: 1]
  -h, --help          print this help

The run ends with one line:
  placement: nodes=<n> shards=<n> rf=<n> max_over_mean=<x> moved_over_optimal=<x>
             rf_violations=<n> zone_violations=<n> trace=<16 hex>
(on one line), and exits with status 1 if a violation was found, 2 on bad arguments.";

fn number(args: &mut std::slice::Iter<'_, String>, flag: &str, lo: u64, hi: u64) -> Result<u64, String> {
    let v = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
    let n: u64 = v.parse().map_err(|_| format!("{flag} expects a non-negative integer, got {v:?}"))?;
    if n < lo || n > hi {
        return Err(format!("{flag} must be between {lo} and {hi}, got {n}"));
    }
    Ok(n)
}

/// Parses the arguments after `placement`. Errors name the flag and what it expects.
pub fn parse(args: &[String]) -> Result<PlacementSimConfig, String> {
    let mut c = PlacementSimConfig { seed: 1, nodes: 100, shards: 1024, rf: 3, zones: 3, events: 40 };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--nodes" => c.nodes = number(&mut it, "--nodes", 1, 2000)? as usize,
            "--shards" => c.shards = number(&mut it, "--shards", 1, 100_000)? as u32,
            "--rf" => c.rf = number(&mut it, "--rf", 1, 9)? as u8,
            "--zones" => c.zones = number(&mut it, "--zones", 1, 64)? as u32,
            "--events" => c.events = number(&mut it, "--events", 0, 10_000)? as usize,
            "--seed" => c.seed = number(&mut it, "--seed", 0, u64::MAX)?,
            other => return Err(format!("unknown option {other:?}; see quorate-sim placement --help")),
        }
    }
    Ok(c)
}

/// Runs `quorate-sim placement`; returns the exit status.
pub fn main(args: &[String], out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        let _ = writeln!(out, "{USAGE}");
        return 0;
    }
    let cfg = match parse(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return 2;
        }
    };
    let r = placement_sim::run(&cfg);
    let events: Vec<String> = r.events.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let _ = writeln!(out, "events: {}", events.join(" "));
    let _ = writeln!(
        out,
        "moves: completed={} aborted={} copied={} lower_bound={}",
        r.completed, r.aborted, r.moved, r.optimal
    );
    let _ = writeln!(
        out,
        "placement: nodes={} shards={} rf={} max_over_mean={:.3} moved_over_optimal={:.3} rf_violations={} zone_violations={} trace={:016x}",
        cfg.nodes,
        cfg.shards,
        cfg.rf,
        r.max_over_mean,
        r.moved_over_optimal(),
        r.rf_violations,
        r.zone_violations,
        r.trace
    );
    if r.rf_violations > 0 || r.zone_violations > 0 {
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
        assert!(parse(&args("--rf 0")).unwrap_err().contains("between 1 and 9"));
        assert!(parse(&args("--nodes x")).unwrap_err().contains("integer"));
        assert!(parse(&args("--bogus")).unwrap_err().contains("--bogus"));
        assert!(parse(&args("--seed")).unwrap_err().contains("needs a value"));
        assert_eq!(main(&args("--zones 0"), &mut Vec::new(), &mut Vec::new()), 2);
    }

    #[test]
    fn a_small_run_is_clean_and_reproducible() {
        let line = |seed: u64| {
            let mut out = Vec::new();
            let code =
                main(&args(&format!("--nodes 12 --shards 64 --events 12 --seed {seed}")), &mut out, &mut Vec::new());
            assert_eq!(code, 0);
            String::from_utf8(out).unwrap().lines().last().unwrap().to_string()
        };
        let a = line(3);
        assert_eq!(a, line(3), "same seed, same line");
        assert!(a.starts_with("placement: nodes=12 shards=64 rf=3 "), "{a}");
        assert!(a.contains("rf_violations=0 zone_violations=0"), "{a}");
        assert_ne!(a, line(4));
    }
}
