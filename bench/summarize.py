#!/usr/bin/env python3
"""Medians of bench/run-all.sh's runs, one table per scenario: the figures
behind BENCHMARKS.md, "Results".

    python3 bench/summarize.py bench-results
"""
import glob
import json
import statistics
import sys
from collections import defaultdict

out_dir = sys.argv[1] if len(sys.argv) > 1 else "bench-results"


def load(name):
    """{target: [report, ...]} over every run of one scenario file."""
    by_target = defaultdict(list)
    for path in sorted(glob.glob(f"{out_dir}/{name}-[0-9]*.json")):
        for report in json.load(open(path)):
            by_target[report["target"]].append(report)
    return by_target


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def get(report, *path):
    for key in path:
        if report is None:
            return None
        report = report.get(key)
    return report


def fmt(v, digits=1):
    if v is None:
        return "–"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


# The per-user tables (issue #9): does the server keep up, at what latency
# and what CPU (herald's with PostgreSQL's beside it).
PERUSER = [
    ("deliveries/s", ("delivery", "deliveries_per_sec"), 0),
    ("deliveries/s offered", ("delivery", "offered_per_sec"), 0),
    ("drained after publishing (ms)", ("delivery", "drain_ms"), 0),
    ("publish→receive p50 (ms)", ("delivery", "latency", "p50_ms"), 1),
    ("publish→receive p99 (ms)", ("delivery", "latency", "p99_ms"), 1),
    ("server CPU (% of one core)", ("server", "cpu_percent"), 0),
    ("PostgreSQL CPU (% of one core)", ("postgres", "cpu_percent"), 0),
    ("client CPU (% of one core)", ("client", "cpu_percent"), 0),
]

ROWS = {
    "publish": [
        ("publish rate (events/s)", ("publish", "events_per_sec"), 0),
        ("publish latency p50 (ms)", ("publish", "latency", "p50_ms"), 2),
        ("publish latency p99 (ms)", ("publish", "latency", "p99_ms"), 2),
        ("server CPU (% of one core)", ("server", "cpu_percent"), 0),
    ],
    "publish5000": [
        ("publish rate (events/s)", ("publish", "events_per_sec"), 0),
        ("publish latency p50 (ms)", ("publish", "latency", "p50_ms"), 2),
        ("publish latency p99 (ms)", ("publish", "latency", "p99_ms"), 2),
        ("publish→receive p99 (ms)", ("delivery", "latency", "p99_ms"), 2),
    ],
    "fanout-sat-1000": [
        ("deliveries/s", ("delivery", "deliveries_per_sec"), 0),
        ("publish→receive p50 (ms)", ("delivery", "latency", "p50_ms"), 1),
        ("publish→receive p99 (ms)", ("delivery", "latency", "p99_ms"), 1),
        ("server CPU (% of one core)", ("server", "cpu_percent"), 0),
        ("client CPU (% of one core)", ("client", "cpu_percent"), 0),
    ],
    "fanout-sat-10000": [
        ("deliveries/s", ("delivery", "deliveries_per_sec"), 0),
        ("publish→receive p50 (ms)", ("delivery", "latency", "p50_ms"), 1),
        ("publish→receive p99 (ms)", ("delivery", "latency", "p99_ms"), 1),
        ("server CPU (% of one core)", ("server", "cpu_percent"), 0),
        ("client CPU (% of one core)", ("client", "cpu_percent"), 0),
    ],
    "fanout-1000x50": [
        ("deliveries/s", ("delivery", "deliveries_per_sec"), 0),
        ("publish→receive p50 (ms)", ("delivery", "latency", "p50_ms"), 1),
        ("publish→receive p99 (ms)", ("delivery", "latency", "p99_ms"), 1),
        ("server CPU (% of one core)", ("server", "cpu_percent"), 0),
    ],
    "fanout-10000x5": [
        ("deliveries/s", ("delivery", "deliveries_per_sec"), 0),
        ("publish→receive p50 (ms)", ("delivery", "latency", "p50_ms"), 1),
        ("publish→receive p99 (ms)", ("delivery", "latency", "p99_ms"), 1),
        ("server CPU (% of one core)", ("server", "cpu_percent"), 0),
    ],
    "idle": [
        ("server RSS per open stream (KiB)", ("idle", "rss_per_stream_bytes"), 2, 1 / 1024),
        ("server RSS with 10,000 streams (MiB)", ("idle", "rss_after_kib"), 1, 1 / 1024),
    ],
    "resume": [
        ("catch-up of 10,000 missed, p50 (ms)", ("catch_up", "time", "p50_ms"), 1),
        ("catch-up of 10,000 missed, max (ms)", ("catch_up", "time", "max_ms"), 1),
    ],
    "storm": [
        ("2,000 clients all caught up (ms)", ("catch_up", "all_caught_up_ms"), 0),
        ("catch-up p99 (ms)", ("catch_up", "time", "p99_ms"), 0),
    ],
    "peruser-10000": PERUSER,
    "peruser-19000": PERUSER,
    "peruser-mixed": PERUSER + [
        ("wildcard subscribers' publish→receive p99 (ms)", ("per_user", "wildcard_latency", "p99_ms"), 1),
    ],
    "peruser-storm": [
        ("2,000 storm clients all caught up (ms)", ("per_user", "storm", "all_caught_up_ms"), 0),
        ("storm catch-up p99 (ms)", ("per_user", "storm", "catch_up", "p99_ms"), 0),
        ("live publish→receive p99 before the storm (ms)", ("per_user", "storm", "live_latency_before", "p99_ms"), 1),
        ("live publish→receive p99 during the storm (ms)", ("per_user", "storm", "live_latency_during", "p99_ms"), 1),
        ("deliveries/s (offered 5,000)", ("delivery", "deliveries_per_sec"), 0),
        ("server CPU (% of one core)", ("server", "cpu_percent"), 0),
        ("PostgreSQL CPU (% of one core)", ("postgres", "cpu_percent"), 0),
    ],
}

for name, rows in ROWS.items():
    data = load(name)
    if not data:
        continue
    runs = max(len(v) for v in data.values())
    targets = sorted(data)
    print(f"\n### {name} (median of {runs} runs)\n")
    print("| | " + " | ".join(targets) + " |")
    print("| --- |" + " --- |" * len(targets))
    for label, path, digits, *scale in rows:
        factor = scale[0] if scale else 1
        cells = [
            fmt(med([(get(r, *path) or 0) * factor if get(r, *path) is not None else None for r in data[t]]), digits)
            for t in targets
        ]
        print(f"| {label} | " + " | ".join(cells) + " |")
    errors = {t: sum(1 for r in data[t] if get(r, "correctness", "missing") or get(r, "correctness", "duplicates") or get(r, "correctness", "out_of_order")) for t in targets}
    print("| runs with missing/duplicate/out-of-order | " + " | ".join(str(errors[t]) for t in targets) + " |")
