"""Benchmarks of the bot against its baselines, measured side by side in one run.

    .venv/bin/python -m bench                   the default set, under 10 minutes on 2 cores
    .venv/bin/python -m bench --all --large     everything, with 5M and 10M keys (about 35 minutes)
    .venv/bin/python -m bench --quick           a small smoke run (about 2 minutes)
    .venv/bin/python -m bench --only memory,eviction
    .venv/bin/python -m bench --json out.json --markdown table.md

Benchmarks: memory (report vs its floor, a bare SCAN + Lua MEMORY USAGE loop, and redis-cli --memkeys/--bigkeys;
the sampled estimate on the same data), eviction (SCAN+UNLINK vs the
runbook's KEYS | xargs DEL), ingest (POST /alerts vs a bare aiohttp + SQLite handler), first-message
(alert to first notification, full memory-high diagnostics), dry-run (the memory-high playbook as
`remediation-bot run --dry-run`, a process, vs the report alone; no second scan), scaling (report at
100k and 1M keys, 5M and 10M with --large; RSS; the sampled estimate from 5M on),
ha (ingest with two replicas on PostgreSQL vs one on SQLite; time from a replica's death to the
takeover of its incident);
cluster (report on a 3-primary Redis Cluster vs one node, same keys).
The default set is every benchmark with a target of the performance issue (memory, eviction,
ingest, dry-run, scaling); first-message, ha and cluster run with --all or --only.
Every benchmark starts its own redis-server on a free loopback port and stops every process it
started, also on Ctrl-C. Figures are medians over ``--runs`` runs; the machine is shared, so expect
noise and compare the ratios, which are measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench import (
    cluster_report,
    dry_run,
    first_message,
    ha,
    memory_report,
    pattern_eviction,
    scaling,
    webhook_ingest,
)
from bench.common import Results, install_cleanup, log, machine, stop_all

BENCHMARKS = ("memory", "eviction", "ingest", "first-message", "dry-run", "scaling", "ha", "cluster")
DEFAULT = ("memory", "eviction", "ingest", "dry-run", "scaling")
"""What ``make bench`` runs: under 10 minutes on 2 cores (the rest: ``--all`` or ``--only``)."""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small data and short runs: a smoke test")
    p.add_argument(
        "--only",
        default="",
        help=f"comma-separated subset of: {', '.join(BENCHMARKS)} (default: {', '.join(DEFAULT)})",
    )
    p.add_argument("--all", action="store_true", help="every benchmark (about 25 minutes; ha alone about 12)")
    p.add_argument("--runs", type=int, default=0, help="repetitions per measurement (default 3, quick 1)")
    p.add_argument(
        "--keys", type=int, default=0, help="keys for memory/eviction/first-message (1M; quick 200k)"
    )
    p.add_argument(
        "--large", action="store_true", help="scaling with 5M- and 10M-key steps too (about 8 more minutes)"
    )
    p.add_argument("--no-5m", action="store_true", help="with --large: the 10M-key step without the 5M one")
    p.add_argument("--rates", default="", help="ingest rates, notifications/s (1000,2000,3000,4000,5000)")
    p.add_argument("--seconds", type=float, default=0, help="ingest seconds per rate (5; quick 3)")
    p.add_argument("--json", type=Path, help="write raw measurements here")
    p.add_argument("--markdown", type=Path, help="write the results table (Markdown) here")
    args = p.parse_args(argv)
    only = [x.strip() for x in args.only.split(",") if x.strip()] or list(BENCHMARKS if args.all else DEFAULT)
    unknown = set(only) - set(BENCHMARKS)
    if unknown:
        p.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}; choose from {', '.join(BENCHMARKS)}")
    runs = args.runs or (1 if args.quick else 3)
    keys = args.keys or (200_000 if args.quick else 1_000_000)
    sizes = [20_000, 100_000, 200_000] if args.quick else [100_000, 1_000_000]
    if args.large:
        sizes += [10_000_000] if args.no_5m else [5_000_000, 10_000_000]
    rates = (
        [float(x) for x in args.rates.split(",")]
        if args.rates
        else ([1000.0, 3000.0] if args.quick else [1000.0, 2000.0, 3000.0, 4000.0, 5000.0])
    )
    seconds = args.seconds or (3.0 if args.quick else 5.0)

    install_cleanup()
    res = Results()
    info = machine()
    res.raw["machine"] = info
    started = time.time()
    log("machine: " + "; ".join(f"{k} {v}" for k, v in info.items()))
    try:
        if "memory" in only:
            memory_report.bench(res, keys, runs)
        if "eviction" in only:
            pattern_eviction.bench(res, keys, runs)
        if "ingest" in only:
            webhook_ingest.bench(res, rates, seconds, runs)
        if "first-message" in only:
            first_message.bench(res, keys, max(runs, 3) if not args.quick else 2)
        if "dry-run" in only:
            dry_run.bench(res, keys, runs)
        if "scaling" in only:
            scaling.bench(res, sizes, runs)
        if "ha" in only:
            ha.bench(res, rates, seconds, runs)
        if "cluster" in only:
            cluster_report.bench(res, keys, runs)
    except KeyboardInterrupt:
        log("interrupted: stopping every process the bench started")
        stop_all()
        return 130
    finally:
        stop_all()
    res.raw["duration_s"] = round(time.time() - started, 1)
    res.raw["rows"] = [vars(r) for r in res.rows]
    print()
    print("machine: " + "; ".join(f"{k} {v}" for k, v in info.items()))
    print(f"runs per measurement: {runs}; duration {res.raw['duration_s']:.0f} s")
    print()
    print(res.table())
    for note in res.notes():
        print("note: " + note)
    if args.markdown:
        args.markdown.write_text(res.table(markdown=True) + "\n")
    if args.json:
        args.json.write_text(json.dumps(res.raw, indent=2, default=str))
    missed = [r for r in res.rows if r.met is False]
    if missed:
        print(f"\n{len(missed)} target(s) not met: " + "; ".join(f"{r.bench} / {r.metric}" for r in missed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
