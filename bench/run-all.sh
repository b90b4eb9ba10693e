#!/usr/bin/env bash
# The figures of BENCHMARKS.md: every target of issue #4, herald and nchan
# side by side in one run each, repeated RUNS times (medians are quoted).
# Run on a quiet machine:  bash bench/run-all.sh [OUT_DIR] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench-results}
runs=${2:-3}
mkdir -p "$out"
cargo build --release -q -p herald -p herald-bench
# A run with correctness errors (exit 2) is reported in its table and the
# JSON; the remaining runs still go on.
bench() { target/release/herald-bench "$@" || echo "herald-bench exited $?: see the table above"; }
start=${START:-1}
for run in $(seq "$start" "$runs"); do
    echo "== run $run of $runs"
    bench compare --scenario publish --publishers 64 --topics 4 --subscribers 4 --duration 10s --json "$out/publish-$run.json"
    bench compare --scenario publish --publishers 64 --topics 4 --subscribers 4 --rate 5000 --duration 10s --json "$out/publish5000-$run.json"
    # Saturation: publishers ask for 2M deliveries/s, more than either server delivers.
    bench compare --scenario fanout --subscribers 1000 --publishers 8 --rate 2000 --duration 10s --json "$out/fanout-sat-1000-$run.json"
    bench compare --scenario fanout --subscribers 10000 --publishers 8 --rate 200 --duration 10s --json "$out/fanout-sat-10000-$run.json"
    bench compare --scenario fanout --subscribers 1000 --rate 50 --duration 10s --json "$out/fanout-1000x50-$run.json"
    bench compare --scenario fanout --subscribers 10000 --rate 5 --duration 10s --json "$out/fanout-10000x5-$run.json"
    bench compare --scenario idle --subscribers 10000 --json "$out/idle-$run.json"
    bench compare --scenario resume --missed 10000 --json "$out/resume-$run.json"
    bench compare --scenario storm --subscribers 2000 --json "$out/storm-$run.json"
done
bench compare --scenario fanout --subscribers 100,1000,3000,10000 --rate 5 --duration 10s --json "$out/fanout-curve.json"
python3 bench/plot.py "$out/fanout-curve.json" -o docs/fanout-latency.png || echo "plot skipped (pip install matplotlib)"
