#!/usr/bin/env bash
# OpenTelemetry export off against on (issue #25; BENCHMARKS.md, "OpenTelemetry
# export, off and on"): publish and fan-out on a herald started for each
# run, once without export and once exporting every span to an OTLP/HTTP
# endpoint on this machine that accepts and discards them
# (tests/python/otlp_receiver.py --discard). Off and on alternate, RUNS
# times (medians are quoted).   bash bench/otel.sh [OUT_DIR] [RUNS]
# BEFORE=PATH adds a third column, a herald binary built without export
# (the commit before it), run in turn with the other two.
# ONLY=REGEX runs only the scenarios whose name matches.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench-results/otel}
runs=${2:-3}
mkdir -p "$out"
cargo build --release -q -p herald -p herald-bench

python3 tests/python/otlp_receiver.py --discard > "$out/receiver.port" &
receiver=$!
trap 'kill $receiver' EXIT
for _ in $(seq 50); do
    [[ -s $out/receiver.port ]] && break
    sleep 0.1
done
port=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["port"])' "$out/receiver.port")
endpoint="--herald-arg=--otlp-endpoint=http://127.0.0.1:$port"

# one NAME MODE ARGS...: one run on a herald started for it; herald's own log
# (the exporter's warnings, such as spans dropped from a full queue) is kept
# in $out/NAME-MODE-RUN.log.
one() {
    local name=$1 mode=$2
    shift 2
    [[ $name =~ ${ONLY:-.} ]] || return 0
    local tmp
    tmp=$(mktemp -d)
    local extra=()
    [[ $mode == on ]] && extra=("$endpoint")
    [[ $mode == before ]] && extra=("--herald-bin=$BEFORE")
    TMPDIR=$tmp target/release/herald-bench run --spawn --target herald "$@" "${extra[@]}" \
        --json "$out/$name-$mode-$run.json"
    cat "$tmp"/herald-bench-*/herald.log > "$out/$name-$mode-$run.log" 2>/dev/null || true
    rm -rf "$tmp"
}

modes=(off on)
[[ -n ${BEFORE:-} ]] && modes=(before off on)
for run in $(seq "$runs"); do
    echo "== run $run of $runs"
    for mode in "${modes[@]}"; do
        one publish "$mode" --scenario publish --publishers 64 --topics 4 --subscribers 4 --duration 10s
        one publish5000 "$mode" --scenario publish --publishers 64 --topics 4 --subscribers 4 --rate 5000 --duration 10s
        one fanout-sat-1000 "$mode" --scenario fanout --subscribers 1000 --publishers 8 --rate 2000 --duration 10s
        one fanout-1000x50 "$mode" --scenario fanout --subscribers 1000 --rate 50 --duration 10s
    done
done

# The medians of every figure quoted, off and on.
python3 - "$out" "$runs" "${modes[@]}" <<'EOF'
import json, statistics, sys
out, runs, modes = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def get(r, path):
    for key in path.split("."):
        r = r.get(key) if isinstance(r, dict) else None
    return r
rows = [
    ("publish", "publish.events_per_sec", "events/s"),
    ("publish", "publish.latency.p99_ms", "publish p99 ms"),
    ("publish", "server.cpu_percent", "herald CPU %"),
    ("publish5000", "publish.latency.p50_ms", "publish p50 ms"),
    ("publish5000", "publish.latency.p99_ms", "publish p99 ms"),
    ("publish5000", "delivery.latency.p99_ms", "publish→receive p99 ms"),
    ("publish5000", "server.cpu_percent", "herald CPU %"),
    ("fanout-sat-1000", "delivery.deliveries_per_sec", "deliveries/s"),
    ("fanout-sat-1000", "delivery.latency.p99_ms", "publish→receive p99 ms"),
    ("fanout-sat-1000", "server.cpu_percent", "herald CPU %"),
    ("fanout-1000x50", "delivery.latency.p50_ms", "publish→receive p50 ms"),
    ("fanout-1000x50", "delivery.latency.p99_ms", "publish→receive p99 ms"),
    ("fanout-1000x50", "server.cpu_percent", "herald CPU %"),
]
print("| scenario | figure | " + " | ".join(modes) + " |")
print("| --- | --- |" + " --- |" * len(modes))
per_event = {}
for name, path, label in rows:
    cells = []
    for mode in modes:
        values = []
        for run in range(1, runs + 1):
            try:
                report = json.load(open(f"{out}/{name}-{mode}-{run}.json"))[0]
            except (OSError, IndexError):
                continue
            if report["correctness"]["missing"] or report["correctness"]["duplicates"]:
                print(f"{name}-{mode}-{run}: missing or duplicate events", file=sys.stderr)
            value = get(report, path)
            if value is not None:
                values.append(value)
            if label == "herald CPU %":
                # CPU time per acknowledged event: steadier than rates on a
                # shared machine.
                per_event.setdefault((name, mode), []).append(
                    report["server"]["cpu_seconds"] / report["publish"]["events_acked"] * 1e6)
        runs_text = "/".join(f"{v:,.1f}" for v in values)
        cells.append(f"{statistics.median(values):,.1f} ({runs_text})" if values else "-")
    print(f"| {name} | {label} | " + " | ".join(cells) + " |")
for name in dict.fromkeys(n for n, _ in per_event):
    cells = []
    for mode in modes:
        values = per_event.get((name, mode), [])
        runs_text = "/".join(f"{v:,.1f}" for v in values)
        cells.append(f"{statistics.median(values):,.1f} ({runs_text})" if values else "-")
    print(f"| {name} | herald CPU µs per event | " + " | ".join(cells) + " |")
EOF
