"""The bot's memory report (or its sampled estimate) in a process of its own, so its time and peak
RSS are its alone.

    python -m bench.memreport_child URL               the exact report (``redis.memory_report``)
    python -m bench.memreport_child --estimate N URL  the sampled estimate (``redis.memory_estimate``),
                                                      N times in a row

Prints one JSON object: wall time (interpreter start-up excluded), resident memory before the work
and at its peak (VmHWM, which includes the interpreter and imports), and what the benchmarks compare:
the biggest key of each type by memory and by elements, and each namespace's share of key memory.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

import redis.asyncio as aioredis

from bench.common import rss_kb
from bot.redisconn import RedisTarget
from bot.redisops.estimate import memory_estimate
from bot.redisops.memory import memory_report


async def main(url: str, estimates: int) -> None:
    target = RedisTarget(name="bench", url=url, timeout=30.0)
    client: aioredis.Redis = target.client
    await client.ping()
    rss_before, _ = rss_kb(os.getpid())
    started = time.perf_counter()
    out: dict[str, Any]
    if estimates:
        runs = []
        for _ in range(estimates):
            t0 = time.perf_counter()
            est = await memory_estimate([client], sample=10_000)
            runs.append(
                {
                    "elapsed_s": time.perf_counter() - t0,
                    "sampled": est.sampled,
                    "shares": {x.pattern or x.prefix: x.share for x in est.namespaces},
                    "margins": {x.pattern or x.prefix: x.margin for x in est.namespaces},
                }
            )
        elapsed = time.perf_counter() - started
        out = {"runs": runs}
    else:
        report = await memory_report(client, top=10)
        elapsed = time.perf_counter() - started
        out = {
            "scanned": report.scanned_keys,
            "complete": report.complete,
            "method": report.method,
            "by_memory": {t.type: t.biggest_by_memory.key for t in report.types},
            "by_elements": {t.type: t.biggest_by_elements.key for t in report.types},
            "top_keys": [k.key for k in report.top_keys],
            "shares": {x.pattern or x.prefix: x.share for x in report.prefixes},
        }
    rss_after, hwm = rss_kb(os.getpid())
    await target.close()
    print(
        json.dumps(
            {"elapsed_s": elapsed, "rss_before_kb": rss_before, "rss_after_kb": rss_after, "rss_peak_kb": hwm}
            | out
        )
    )


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(main(args[-1], int(args[args.index("--estimate") + 1]) if "--estimate" in args else 0))
