#!/usr/bin/env bash
# Quorate versus etcd 3.4, side by side on this machine: three Quorate nodes and three etcd
# members on loopback, each fsyncing every write, driven by `kvbench` with the same
# closed-loop load. Prints a markdown table (benchmark | Quorate | etcd | ratio); above 1 means
# Quorate is faster. Not part of the test suite.
#
#   benches/etcd-vs-quorate.sh            # the whole grid, ~10 minutes
#   SECONDS_PER_RUN=5 REPEAT=1 TRIALS=5 benches/etcd-vs-quorate.sh
#
# Each put/get cell is run REPEAT times, alternating Quorate and etcd, and the table shows the
# median of the runs (every run is listed below it): the disk's fsync latency on a shared
# machine drifts between phases far apart, and alternating keeps both sides in the same ones.
#
# Installs Debian's etcd-server when `etcd` is missing. Every cluster lives in a temporary
# directory that is removed on exit, with any process still running from it.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
WARMUP=${WARMUP:-2}
REPEAT=${REPEAT:-3}
TRIALS=${TRIALS:-9}
VALUE_BYTES=${VALUE_BYTES:-128}

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v etcd >/dev/null 2>&1; then
    echo "etcd-vs-quorate: installing Debian's etcd-server" >&2
    # The package would start a system etcd on the default ports, competing for the cores and
    # the disk: forbid service starts while it installs (only if no policy is in place).
    policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        policy=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
        as_root chmod +x "$policy"
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
    if [ -n "$policy" ]; then as_root rm -f "$policy"; fi
fi
# sed, not head: head exits after one line, etcd may then die of SIGPIPE writing the next,
# and under pipefail and set -e the script would stop here without a word.
etcd_version=$(etcd --version | sed -n 1p)
case "$etcd_version" in
    *" 3.4."*) ;;
    *) echo "etcd-vs-quorate: warning: expected etcd 3.4, found: $etcd_version" >&2 ;;
esac

cargo build --release --locked -q -p quorate-runtime --bin quorate -p quorate-benches --bin kvbench
kvbench=target/release/kvbench

work=$(mktemp -d "${TMPDIR:-/tmp}/etcd-vs-quorate.XXXXXX")
cleanup() {
    # kvbench kills its clusters itself; this catches a run that was interrupted.
    pkill -KILL -f -- "$work/" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# One kvbench run; prints its summary line (`kvbench: target=... key=value ...`).
run() {
    local log="$work/run-$1-$2-$3-$RANDOM.log"
    TMPDIR="$work" "$kvbench" --target "$1" --workload "$2" --clients "$3" --seconds "$SECONDS_PER_RUN" \
        --warmup "$WARMUP" --value-bytes "$VALUE_BYTES" --trials "$TRIALS" >"$log" 2>&1 || {
        echo "etcd-vs-quorate: kvbench $* failed:" >&2
        cat "$log" >&2
        exit 1
    }
    grep '^kvbench: ' "$log" | grep -v '^kvbench: target=' | sed 's/^/    /' >&2
    grep '^kvbench: target=' "$log" | tail -n 1
}

field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }
median() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f×", a / b; else print "n/a" }'; }

echo "etcd-vs-quorate: $(date -u '+%Y-%m-%d %H:%M UTC'), $etcd_version, $(nproc) cores" >&2
echo "etcd-vs-quorate: load before: $(uptime)" >&2
rows=()
runs=()
for spec in put:1 put:16 put:64 put:256 get:1 get:64; do
    workload=${spec%%:*}
    clients=${spec##*:}
    echo "etcd-vs-quorate: $workload, $clients clients, $REPEAT runs each" >&2
    declare -A got=()
    for _ in $(seq "$REPEAT"); do
        for target in quorate etcd; do
            line=$(run "$target" "$workload" "$clients")
            for k in ops_per_s p50_ms p99_ms; do got[$target.$k]+="$(field "$k" "$line") "; done
        done
    done
    qt=$(median <<<"${got[quorate.ops_per_s]}") et=$(median <<<"${got[etcd.ops_per_s]}")
    q50=$(median <<<"${got[quorate.p50_ms]}") e50=$(median <<<"${got[etcd.p50_ms]}")
    q99=$(median <<<"${got[quorate.p99_ms]}") e99=$(median <<<"${got[etcd.p99_ms]}")
    runs+=("- $workload, $clients: Quorate ops/s ${got[quorate.ops_per_s]}p50 ${got[quorate.p50_ms]}p99 ${got[quorate.p99_ms]}; etcd ops/s ${got[etcd.ops_per_s]}p50 ${got[etcd.p50_ms]}p99 ${got[etcd.p99_ms]}")
    unset got
    plural=$([ "$clients" = 1 ] && echo client || echo clients)
    rows+=("| $workload, $clients $plural: throughput | $qt/s | $et/s | $(ratio "$qt" "$et") |")
    rows+=("| $workload, $clients $plural: p50 / p99 | $q50 / $q99 ms | $e50 / $e99 ms | $(ratio "$e50" "$q50") (p50) |")
done
echo "etcd-vs-quorate: failover, $TRIALS leader kills each" >&2
q=$(run quorate failover 1)
e=$(run etcd failover 1)
qm=$(field median_ms "$q") em=$(field median_ms "$e")
rows+=("| failover: SIGKILL of the leader to the first acknowledged write, median (min–max) | $qm ms ($(field min_ms "$q")–$(field max_ms "$q")) | $em ms ($(field min_ms "$e")–$(field max_ms "$e")) | $(ratio "$em" "$qm") |")
echo "etcd-vs-quorate: load after: $(uptime)" >&2

echo "| benchmark | Quorate | etcd | ratio |"
echo "| --- | --- | --- | --- |"
printf '%s\n' "${rows[@]}"
echo
echo "Every run (ms for latencies):"
echo
printf '%s\n' "${runs[@]}"
echo "- failover trials (ms): Quorate $(field all_ms "$q"); etcd $(field all_ms "$e")"
