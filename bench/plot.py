#!/usr/bin/env python3
"""Plot delivery latency (p50 and p99) against subscribers from herald-bench
JSON reports, one line per target and percentile, as a PNG.

    herald-bench compare --scenario fanout --subscribers 100,1000,10000 --json fanout.json
    python3 bench/plot.py fanout.json -o fanout.png

Needs matplotlib (`pip install matplotlib`). Several JSON files may be given;
their reports are pooled. Reports without a delivery latency (resume, storm)
are skipped; by default only fanout reports are plotted (--scenario to pick
another).
"""

import argparse
import json
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt  # noqa: E402


def load(paths):
    reports = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        reports.extend(data if isinstance(data, list) else [data])
    return reports


def series(reports, scenario):
    """{target: [(subscribers, p50_ms, p99_ms)]}, sorted by subscribers."""
    out = defaultdict(list)
    for r in reports:
        if r.get("scenario") != scenario:
            continue
        latency = (r.get("delivery") or {}).get("latency")
        if not latency:
            continue
        out[r["target"]].append(
            (r["params"]["subscribers"], latency["p50_ms"], latency["p99_ms"])
        )
    return {t: sorted(points) for t, points in out.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+", help="herald-bench --json output")
    parser.add_argument("-o", "--output", default="latency.png", help="PNG to write")
    parser.add_argument("--scenario", default="fanout")
    args = parser.parse_args()

    data = series(load(args.json), args.scenario)
    if not data:
        sys.exit(f"no {args.scenario} report with a delivery latency in {args.json}")

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for target, points in sorted(data.items()):
        xs = [p[0] for p in points]
        line = ax.plot(xs, [p[1] for p in points], marker="o", label=f"{target} p50")[0]
        ax.plot(
            xs,
            [p[2] for p in points],
            marker="s",
            linestyle="--",
            color=line.get_color(),
            label=f"{target} p99",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("subscribers")
    ax.set_ylabel("publish → receive latency (ms)")
    ax.set_title(f"{args.scenario}: delivery latency against subscribers")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
