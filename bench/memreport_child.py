"""The bot's memory report in a process of its own, so its time and peak RSS are its alone.

    python -m bench.memreport_child URL

Prints one JSON object: wall time, resident memory before the report and at its peak (VmHWM, which
includes the interpreter and imports), and the biggest key of each type by memory and by elements.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import redis.asyncio as aioredis

from bench.common import rss_kb
from bot.redisconn import RedisTarget
from bot.redisops.memory import memory_report


async def main(url: str) -> None:
    target = RedisTarget(name="bench", url=url, timeout=30.0)
    client: aioredis.Redis = target.client
    await client.ping()
    rss_before, _ = rss_kb_self()
    started = time.perf_counter()
    report = await memory_report(client, top=10)
    elapsed = time.perf_counter() - started
    rss_after, hwm = rss_kb_self()
    await target.close()
    print(
        json.dumps(
            {
                "elapsed_s": elapsed,
                "scanned": report.scanned_keys,
                "complete": report.complete,
                "method": report.method,
                "rss_before_kb": rss_before,
                "rss_after_kb": rss_after,
                "rss_peak_kb": hwm,
                "by_memory": {t.type: t.biggest_by_memory.key for t in report.types},
                "by_elements": {t.type: t.biggest_by_elements.key for t in report.types},
                "top_keys": [k.key for k in report.top_keys],
            }
        )
    )


def rss_kb_self() -> tuple[int, int]:
    import os

    return rss_kb(os.getpid())


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
