"""Benchmark 1: the bot's memory report against ``redis-cli --memkeys`` and ``--bigkeys``.

Same server, same data, same run; the three are interleaved (the order rotates from run to run) so
background noise hits them alike. For each: wall time, a concurrent client's PING round trips, the
slowest command Redis logged (SLOWLOG, >= 1 ms), and the biggest key of each type it found. The bot
runs in a process of its own (see :mod:`bench.memreport_child`) for its peak RSS.
"""

from __future__ import annotations

import json
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


def run_bot(r: RedisProc) -> Measure:
    r.client.slowlog_reset()
    with Pinger(r.port) as p:
        out = subprocess.run(
            [PY, "-m", "bench.memreport_child", r.url],
            capture_output=True,
            text=True,
            timeout=1800,
            check=True,
        )
    data = json.loads(out.stdout)
    return Measure(data["elapsed_s"], p.stats, r.slowest_ms(), data["by_memory"], data)


def run_cli(r: RedisProc, mode: str) -> Measure:
    r.client.slowlog_reset()
    with Pinger(r.port) as p:
        t0 = time.perf_counter()
        out = subprocess.run(
            ["redis-cli", "-p", str(r.port), mode], capture_output=True, text=True, timeout=1800, check=True
        )
        seconds = time.perf_counter() - t0
    biggest = {m.group(1): m.group(2) for m in _BIGGEST.finditer(out.stdout)}
    return Measure(seconds, p.stats, r.slowest_ms(), biggest, {})


def bench(res: Results, keys: int, runs: int) -> None:
    with tempdir("memreport") as d, RedisProc(d) as r:
        log(f"memory report: building {keys:,} keys")
        ds = build(r.client, keys)
        log(f"memory report: built in {ds.build_s:.1f} s, used_memory {r.used_memory() / 2**20:.0f} MiB")
        sides: dict[str, list[Measure]] = {"bot": [], "--memkeys": [], "--bigkeys": []}
        order = list(sides)
        for i in range(runs):
            for side in order[i % 3 :] + order[: i % 3]:
                m = run_bot(r) if side == "bot" else run_cli(r, side)
                sides[side].append(m)
                log(
                    f"memory report run {i + 1}/{runs} {side}: {m.seconds:.2f} s, PING max {m.ping.max_ms:.1f} ms,"
                    f" p99 {m.ping.p99_ms:.2f} ms, slowest command {m.server_max_ms:.1f} ms"
                )
        bot, mem, big = sides["bot"], sides["--memkeys"], sides["--bigkeys"]
        t_bot = median([m.seconds for m in bot])
        t_mem = median([m.seconds for m in mem])
        t_big = median([m.seconds for m in big])
        name = f"1 memory report, {keys / 1e6:g}M keys"
        res.add(
            name,
            "wall time vs --memkeys",
            fmt_s(t_bot),
            fmt_s(t_mem),
            f"{t_bot / t_mem:.2f}x",
            "<= 0.20x",
            t_bot / t_mem <= 0.2,
        )
        res.add(name, "wall time vs --bigkeys", fmt_s(t_bot), fmt_s(t_big), f"{t_bot / t_big:.2f}x")
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
        res.add_ping(name, bot, mem)
        res.add(
            name,
            "slowest command in Redis (SLOWLOG)",
            fmt_ms(max(m.server_max_ms for m in bot)),
            fmt_ms(max(m.server_max_ms for m in mem + big)),
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
        res.raw["memory_report"] = {
            "keys": keys,
            "build_s": ds.build_s,
            "runs": {k: [vars(m) | {"ping": vars(m.ping)} for m in v] for k, v in sides.items()},
        }
