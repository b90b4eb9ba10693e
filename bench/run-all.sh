#!/usr/bin/env bash
# The figures of BENCHMARKS.md, "Results": every target of issues #4 and #9, herald and
# nchan side by side in one run each, and issue #23's churn (herald only),
# repeated RUNS times (medians are quoted). Run on a quiet machine:  bash bench/run-all.sh [OUT_DIR] [RUNS]
# ONLY=REGEX runs only the tables whose file name matches, e.g.
# ONLY=peruser bash bench/run-all.sh   (the per-user tables of issue #9).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench-results}
runs=${2:-3}
mkdir -p "$out"
cargo build --release -q -p herald -p herald-bench
# A run with correctness errors (exit 2) is reported in its table and the
# JSON; the remaining runs still go on. Any other failure (a server that
# cannot start: nchan not installed, say) stops here, before more runs.
bench() {
    local rc=0
    target/release/herald-bench "$@" || rc=$?
    case $rc in
        0) ;;
        2) echo "herald-bench exited 2 (correctness errors): see the table above" ;;
        *) echo "herald-bench failed ($rc); stopping" >&2; exit "$rc" ;;
    esac
}
only=${ONLY:-.}
# table NAME ARGS...: one comparison, its JSON in $out/NAME-$run.json.
table() {
    local name=$1
    shift
    [[ $name =~ $only ]] || return 0
    bench compare "$@" --json "$out/$name-$run.json"
}
# herald_only NAME ARGS...: one run on a herald started for it, its JSON in
# $out/NAME-$run.json.
herald_only() {
    local name=$1
    shift
    [[ $name =~ $only ]] || return 0
    bench run --spawn --target herald "$@" --json "$out/$name-$run.json"
}
start=${START:-1}
for run in $(seq "$start" "$runs"); do
    echo "== run $run of $runs"
    table publish --scenario publish --publishers 64 --topics 4 --subscribers 4 --duration 10s
    table publish5000 --scenario publish --publishers 64 --topics 4 --subscribers 4 --rate 5000 --duration 10s
    # Saturation: publishers ask for 2M deliveries/s, more than either server delivers.
    table fanout-sat-1000 --scenario fanout --subscribers 1000 --publishers 8 --rate 2000 --duration 10s
    table fanout-sat-10000 --scenario fanout --subscribers 10000 --publishers 8 --rate 200 --duration 10s
    table fanout-1000x50 --scenario fanout --subscribers 1000 --rate 50 --duration 10s
    table fanout-10000x5 --scenario fanout --subscribers 10000 --rate 5 --duration 10s
    table idle --scenario idle --subscribers 10000
    table resume --scenario resume --missed 10000
    table storm --scenario storm --subscribers 2000
    # Per-user topics (issue #9): one topic per subscriber, 5,000 events/s
    # from 64 publishers; 19,000 is this machine's open-file limit (20,000)
    # less the harness's own; the mixed case adds 10 subscribers on `*`.
    table peruser-10000 --scenario peruser --subscribers 10000 --rate 5000 --publishers 64 --duration 15s
    table peruser-19000 --scenario peruser --subscribers 19000 --rate 5000 --publishers 64 --duration 15s
    table peruser-mixed --scenario peruser --subscribers 10000 --wildcard-subscribers 10 --rate 5000 --publishers 64 --duration 15s
    # A reconnect storm of 2,000 per-user clients against a full ring
    # (65,536 events filled first) while the 5,000 events/s flow.
    table peruser-storm --scenario peruser-storm --subscribers 10000 --storm-clients 2000 --fill 65536 --rate 5000 --publishers 64 --duration 15s
    # Stream churn (issue #23): 10,000 opens a minute held 2 s each beside
    # 1,000 events/s for 5 minutes, and its baseline without churn (publish
    # p99 of the two compared); herald only, the registry is herald's.
    herald_only churn --scenario churn --rate 1000 --churn-per-minute 10000 --churn-hold 2s --duration 5m
    herald_only churn-baseline --scenario churn --rate 1000 --churn-per-minute 0 --duration 5m
    # Several instances on one database (issue 26): 1, 2 and 3 instances in
    # turn, the 64 publishers split evenly; herald only (nchan is one
    # server). The medians across runs are BENCHMARKS.md's figures.
    if [[ instances =~ $only ]]; then
        bench compare --scenario publish --instances 1,2,3 --rounds 1 \
            --publishers 64 --topics 4 --subscribers 4 --duration 15s --json "$out/instances-$run.json"
    fi
done
if [[ fanout-curve =~ $only ]]; then
    bench compare --scenario fanout --subscribers 100,1000,3000,10000 --rate 5 --duration 10s --json "$out/fanout-curve.json"
    python3 bench/plot.py "$out/fanout-curve.json" -o docs/fanout-latency.png || echo "plot skipped (pip install matplotlib)"
fi
