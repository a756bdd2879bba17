"""Benchmark 5: the memory report's time and the bot's peak RSS as the key count grows.

A fresh server per size (100k and 1M; 5M and 10M with ``--large``); the report runs in its own process
each time (see :mod:`bench.memreport_child`), so the peak RSS is the report's alone (interpreter and
imports included). Time should grow linearly with the keys, memory not at all. From 5M keys on, the
sampled estimate (``redis.memory_estimate``) runs on the same data too: under a second, and its top
namespace's share within 3 points of the exact report's, whatever the key count.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from bench.common import PY, RedisProc, Results, fmt_mb, fmt_s, log, median, tempdir
from bench.dataset import build
from bench.memory_report import Measure, add_estimate_rows, run_estimate

ESTIMATE_FROM = 5_000_000


def bench(res: Results, sizes: list[int], runs: int) -> None:
    rows: list[dict[str, float]] = []
    for keys in sizes:
        with tempdir(f"scale{keys}") as d, RedisProc(d) as r:
            log(f"scaling: building {keys:,} keys")
            ds = build(r.client, keys)
            used = r.used_memory()
            times, peaks, growth = [], [], []
            estimates: list[Measure] = []
            exact: dict[str, Any] = {}
            for i in range(runs):
                out = subprocess.run(
                    [PY, "-m", "bench.memreport_child", r.url],
                    capture_output=True,
                    text=True,
                    timeout=3600,
                    check=True,
                )
                data = json.loads(out.stdout)
                exact = data
                times.append(data["elapsed_s"])
                peaks.append(data["rss_peak_kb"])
                growth.append(data["rss_peak_kb"] - data["rss_before_kb"])
                log(
                    f"scaling {keys:,} keys run {i + 1}/{runs}: {data['elapsed_s']:.2f} s,"
                    f" peak RSS {data['rss_peak_kb'] / 1024:.1f} MiB"
                )
                if keys >= ESTIMATE_FROM:
                    estimates.append(run_estimate(r))
                    log(
                        f"scaling {keys:,} keys run {i + 1}/{runs}: estimates in {estimates[-1].seconds:.2f} s"
                    )
            if estimates:
                label = f"{keys / 1e6:g}M"
                add_estimate_rows(res, f"5b sampled estimate, {label} keys", estimates, exact)
            rows.append(
                {
                    "keys": keys,
                    "build_s": ds.build_s,
                    "redis_used_mib": used / 2**20,
                    "seconds": median(times),
                    "peak_kb": median(peaks),
                    "growth_kb": median(growth),
                }
            )
    res.raw["scaling"] = rows
    base = rows[0]
    per_key0 = base["seconds"] / base["keys"]
    for row in rows:
        keys = int(row["keys"])
        per_key = row["seconds"] / keys
        label = f"{keys / 1e6:g}M" if keys >= 1_000_000 else f"{keys / 1e3:g}k"
        res.add(
            "5 scaling",
            f"memory report, {label} keys (Redis {row['redis_used_mib']:.0f} MiB)",
            f"{fmt_s(row['seconds'])}, peak RSS {fmt_mb(row['peak_kb'])} (+{row['growth_kb'] / 1024:.1f})",
            "",
            f"{per_key / per_key0:.2f}x time/key",
            "linear, flat RSS",
        )
    linear = all(0.5 <= (r["seconds"] / r["keys"]) / per_key0 <= 1.5 for r in rows)
    spread = max(r["peak_kb"] for r in rows) - min(r["peak_kb"] for r in rows)
    span = f"{rows[0]['keys']:,} -> {rows[-1]['keys']:,} keys"
    res.add(
        "5 scaling",
        f"{span}: bot peak RSS during the report",
        f"spread {spread / 1024:.1f} MiB ({fmt_mb(min(r['peak_kb'] for r in rows))}"
        f" to {fmt_mb(max(r['peak_kb'] for r in rows))})",
        "",
        "",
        "flat (spread < 10 MiB)",
        spread < 10 * 1024,
    )
    res.add(
        "5 scaling",
        f"{span}: report time per key",
        f"within {max(r['seconds'] / r['keys'] for r in rows) / per_key0:.2f}x of the smallest step's",
        "",
        "",
        "linear (within 1.5x)",
        linear,
    )
