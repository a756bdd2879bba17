"""Benchmark 1: the bot's memory report against its floor, ``redis-cli --memkeys`` and ``--bigkeys``.

The floor (:mod:`bench.memfloor_child`) is the least any exact report must make Redis do: SCAN COUNT
1000 and one Lua call per batch running MEMORY USAGE on each key, nothing else. Its ratio does not
move with the machine the way a ratio to redis-cli's round-trip-bound loop does. Same server, same
data, same run; the sides are interleaved (the order rotates from run to run) so background noise
hits them alike. For each: wall time, Redis' main-thread CPU, a concurrent client's PING round
trips, the slowest command Redis logged (SLOWLOG, >= 1 ms), and the biggest key of each type it
found. The bot runs in a process of its own (see :mod:`bench.memreport_child`) for its peak RSS.
The sampled estimate (``redis.memory_estimate``) runs in the same rotation; its top namespace's
share is compared with the exact report's.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from bench.common import (
    PY,
    Pinger,
    PingStats,
    RedisProc,
    Results,
    fmt_mb,
    fmt_ms,
    fmt_s,
    log,
    median,
    tempdir,
)
from bench.dataset import EXPECTED_BIGGEST, build

_BIGGEST = re.compile(r"^Biggest\s+(\w+) found '\"(.*)\"' has (\d+) (\w+)$", re.M)


@dataclass
class Measure:
    seconds: float
    ping: PingStats
    server_max_ms: float
    biggest: dict[str, str]
    extra: dict[str, Any]
    redis_cpu_s: float = 0.0


def _child(r: RedisProc, module: str, *args: str) -> tuple[dict[str, Any], PingStats, float]:
    """Run a measuring child process under a concurrent PING client: (its JSON, PING stats, Redis CPU s)."""
    r.client.slowlog_reset()
    cpu0 = r.cpu_s()
    with Pinger(r.port) as p:
        out = subprocess.run(
            [PY, "-m", module, *args, r.url], capture_output=True, text=True, timeout=3600, check=True
        )
    return json.loads(out.stdout), p.stats, r.cpu_s() - cpu0


def run_bot(r: RedisProc) -> Measure:
    data, ping, cpu = _child(r, "bench.memreport_child")
    return Measure(data["elapsed_s"], ping, r.slowest_ms(), data["by_memory"], data, cpu)


def run_floor(r: RedisProc) -> Measure:
    data, ping, cpu = _child(r, "bench.memfloor_child")
    if data["keys"] < r.client.dbsize():
        raise RuntimeError(f"floor measured {data['keys']} keys of {r.client.dbsize()}")
    return Measure(data["elapsed_s"], ping, r.slowest_ms(), {}, data, cpu)


ESTIMATES_PER_RUN = 7
"""Estimates per rotation slot (one process): 21 in 3 runs, so a rare bad draw shows in the row."""


def run_estimate(r: RedisProc) -> Measure:
    data, ping, cpu = _child(r, "bench.memreport_child", "--estimate", str(ESTIMATES_PER_RUN))
    return Measure(data["elapsed_s"], ping, r.slowest_ms(), {}, data, cpu)


def run_cli(r: RedisProc, mode: str) -> Measure:
    r.client.slowlog_reset()
    cpu0 = r.cpu_s()
    with Pinger(r.port) as p:
        t0 = time.perf_counter()
        out = subprocess.run(
            ["redis-cli", "-p", str(r.port), mode], capture_output=True, text=True, timeout=1800, check=True
        )
        seconds = time.perf_counter() - t0
    biggest = {m.group(1): m.group(2) for m in _BIGGEST.finditer(out.stdout)}
    return Measure(seconds, p.stats, r.slowest_ms(), biggest, {}, r.cpu_s() - cpu0)


FLOOR = "floor: SCAN COUNT 1000 + Lua MEMORY USAGE"
FLOOR_TARGET = 1.15


def bench(res: Results, keys: int, runs: int) -> None:
    with tempdir("memreport") as d, RedisProc(d) as r:
        log(f"memory report: building {keys:,} keys")
        ds = build(r.client, keys)
        log(f"memory report: built in {ds.build_s:.1f} s, used_memory {r.used_memory() / 2**20:.0f} MiB")
        sides: dict[str, list[Measure]] = {
            "bot": [],
            "floor": [],
            "--memkeys": [],
            "--bigkeys": [],
            "estimate": [],
        }
        order = list(sides)
        for i in range(runs):
            k = i % len(order)
            for side in order[k:] + order[:k]:
                if side == "bot":
                    m = run_bot(r)
                elif side == "floor":
                    m = run_floor(r)
                elif side == "estimate":
                    m = run_estimate(r)
                else:
                    m = run_cli(r, side)
                sides[side].append(m)
                log(
                    f"memory report run {i + 1}/{runs} {side}: {m.seconds:.2f} s, Redis CPU {m.redis_cpu_s:.2f} s,"
                    f" PING max {m.ping.max_ms:.1f} ms, p99 {m.ping.p99_ms:.2f} ms,"
                    f" slowest command {m.server_max_ms:.1f} ms; load {os.getloadavg()[0]:.1f}"
                )
        bot, floor, mem, big = sides["bot"], sides["floor"], sides["--memkeys"], sides["--bigkeys"]
        t_bot = median([m.seconds for m in bot])
        t_floor = median([m.seconds for m in floor])
        t_mem = median([m.seconds for m in mem])
        t_big = median([m.seconds for m in big])
        name = f"1 memory report, {keys / 1e6:g}M keys"
        ratio = t_bot / t_floor
        res.add(
            name,
            f"wall time vs the {FLOOR}",
            fmt_s(t_bot),
            fmt_s(t_floor),
            f"{ratio:.2f}x",
            f"<= {FLOOR_TARGET:.2f}x",
            ratio <= FLOOR_TARGET,
            note=f"per run bot/floor: {', '.join(f'{b.seconds:.2f}/{f.seconds:.2f}' for b, f in zip(bot, floor, strict=True))}"
            f" s; Redis main-thread CPU bot/floor: {', '.join(f'{b.redis_cpu_s:.2f}/{f.redis_cpu_s:.2f}' for b, f in zip(bot, floor, strict=True))} s",
        )
        c_bot = median([m.redis_cpu_s for m in bot])
        c_floor = median([m.redis_cpu_s for m in floor])
        res.add(
            name,
            "Redis main-thread CPU vs the floor",
            fmt_s(c_bot),
            fmt_s(c_floor),
            f"{c_bot / c_floor:.2f}x",
        )
        res.add(name, "wall time vs redis-cli --memkeys", fmt_s(t_bot), fmt_s(t_mem), f"{t_bot / t_mem:.2f}x")
        res.add(name, "wall time vs redis-cli --bigkeys", fmt_s(t_bot), fmt_s(t_big), f"{t_bot / t_big:.2f}x")
        same_mem = all(m.biggest == EXPECTED_BIGGEST for m in bot + mem)
        same_big = all(m.extra["by_elements"] == EXPECTED_BIGGEST for m in bot) and all(
            m.biggest == EXPECTED_BIGGEST for m in big
        )
        res.add(
            name,
            "biggest key per type (memory / elements)",
            "same" if same_mem and same_big else "DIFFERENT",
            "--memkeys / --bigkeys",
            "",
            "same keys",
            same_mem and same_big,
            note=""
            if same_mem and same_big
            else f"bot {bot[0].biggest} cli {mem[0].biggest} {big[0].biggest}",
        )
        res.add_ping(name, bot, floor)
        res.add(
            name,
            "slowest command in Redis (SLOWLOG)",
            fmt_ms(max(m.server_max_ms for m in bot)),
            fmt_ms(max(m.server_max_ms for m in floor + mem + big)),
        )
        growth = median([m.extra["rss_peak_kb"] - m.extra["rss_before_kb"] for m in bot])
        res.add(
            name,
            "bot peak RSS (growth during the report)",
            f"{fmt_mb(median([m.extra['rss_peak_kb'] for m in bot]))} (+{growth / 1024:.1f} MiB)",
            "",
            "",
            "flat",
        )
        add_estimate_rows(res, f"1b sampled estimate, {keys / 1e6:g}M keys", sides["estimate"], bot[0].extra)
        res.raw["memory_report"] = {
            "keys": keys,
            "build_s": ds.build_s,
            "runs": {k: [vars(m) | {"ping": vars(m.ping)} for m in v] for k, v in sides.items()},
        }


ESTIMATE_SECONDS = 1.0
ESTIMATE_POINTS = 0.03


def add_estimate_rows(res: Results, name: str, runs: list[Measure], exact: dict[str, Any]) -> None:
    """Two target rows over every estimate of ``runs``: the time (median, < 1 s) and the top
    namespace's share against the exact report's (each within 3 points, and the same top; the
    row says in how many of them); the exact shares come from ``exact`` (a report on the same data)."""
    each = [e for m in runs for e in m.extra["runs"]]
    times = [float(e["elapsed_s"]) for e in each]
    t = median(times)
    res.add(
        name,
        f"redis.memory_estimate time (10,000 random keys; median of {len(each)})",
        fmt_s(t),
        "",
        "",
        f"< {ESTIMATE_SECONDS:g} s",
        t < ESTIMATE_SECONDS and max(times) < ESTIMATE_SECONDS,
        note=f"slowest {max(times):.2f} s",
    )
    shares: dict[str, float] = exact["shares"]
    top = max(shares, key=lambda k: shares[k])
    errors = [float(e["shares"].get(top, 0.0)) - shares[top] for e in each]
    within = sum(1 for x in errors if abs(x) <= ESTIMATE_POINTS)
    named = sum(1 for e in each if max(e["shares"], key=lambda k: e["shares"][k]) == top)
    res.add(
        name,
        f"top namespace {top} share, estimate vs exact report (median; within 3 points in n of {len(each)})",
        f"{shares[top] + median(errors):.1%} (median error {median(errors) * 100:+.1f} points)",
        f"{shares[top]:.1%}",
        f"{within}/{len(each)} within, worst {max(errors, key=abs) * 100:+.1f} points",
        f"<= {ESTIMATE_POINTS * 100:g} points, same top",
        within == len(each) and named == len(each),
        note="errors (points): "
        + ", ".join(f"{x * 100:+.1f}" for x in sorted(errors, key=abs)[-5:])
        + f"; top named in {named}/{len(each)}",
    )
