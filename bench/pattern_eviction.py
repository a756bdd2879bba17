"""Benchmark 2: the bot's eviction of ``agent:*`` against the runbook's KEYS | xargs DEL pipeline.

Both start from the identical data: the data set is built once, saved, and reloaded with DEBUG
RELOAD NOSAVE before every attempt. The baseline is the runbook's command as written, run by
``sh`` (xargs batches the key names into as many ``redis-cli DEL`` calls as its buffer needs). The
bot runs :func:`bot.eviction.evict` as its ``redis.evict`` step does, with the default protected
patterns. After each attempt every namespace is counted again.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from dataclasses import dataclass

from bench.common import (
    Pinger,
    PingStats,
    RedisProc,
    Results,
    fmt_ms,
    fmt_s,
    log,
    median,
    spawn,
    stop,
    tempdir,
)
from bench.dataset import build, count_matching, counts
from bot.config import ALWAYS_PROTECTED
from bot.eviction import evict
from bot.redisconn import RedisTarget


@dataclass
class Attempt:
    seconds: float
    ping: PingStats
    server_max_ms: float
    server_max_cmd: str
    deleted: int
    left: dict[str, int]


def reload(r: RedisProc) -> None:
    r.client.execute_command("DEBUG", "RELOAD", "NOSAVE")
    r.client.slowlog_reset()


def namespaces(r: RedisProc) -> dict[str, int]:
    return {ns: count_matching(r.client, f"{ns}:*") for ns in ("agent", "sess", "rl", "bull")}


def run_bot(r: RedisProc) -> Attempt:
    async def go() -> int:
        target = RedisTarget(name="bench", url=r.url, timeout=30.0)
        try:
            res = await evict(target.client, "agent:*", list(ALWAYS_PROTECTED), max_keys=1_000_000)
        finally:
            await target.close()
        return res.deleted

    reload(r)
    with Pinger(r.port) as p:
        t0 = time.perf_counter()
        deleted = asyncio.run(go())
        seconds = time.perf_counter() - t0
    return Attempt(seconds, p.stats, r.slowest_ms(), r.slowest_command(), deleted, namespaces(r))


def run_runbook(r: RedisProc) -> Attempt:
    reload(r)
    script = f'redis-cli -u {r.url} KEYS "agent:*" | xargs redis-cli -u {r.url} DEL'
    with Pinger(r.port) as p:
        t0 = time.perf_counter()
        proc = spawn(["sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=600)
        finally:
            stop(proc)
        seconds = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"runbook pipeline failed ({proc.returncode}): {err[-500:]}")
    deleted = sum(int(x) for x in out.split())
    return Attempt(seconds, p.stats, r.slowest_ms(), r.slowest_command(), deleted, namespaces(r))


def bench(res: Results, keys: int, runs: int) -> None:
    expected = counts(keys)
    with tempdir("evict") as d, RedisProc(d) as r:
        log(f"eviction: building {keys:,} keys")
        build(r.client, keys)
        r.client.execute_command("SAVE")
        sides: dict[str, list[Attempt]] = {"bot": [], "runbook": []}
        for i in range(runs):
            for side in ("bot", "runbook") if i % 2 == 0 else ("runbook", "bot"):
                a = run_bot(r) if side == "bot" else run_runbook(r)
                sides[side].append(a)
                log(
                    f"eviction run {i + 1}/{runs} {side}: {a.seconds:.2f} s, deleted {a.deleted:,},"
                    f" PING max {a.ping.max_ms:.1f} ms, slowest command {a.server_max_ms:.1f} ms"
                    f" ({a.server_max_cmd}), left {a.left}"
                )
        bot, base = sides["bot"], sides["runbook"]
        t_bot, t_base = median([a.seconds for a in bot]), median([a.seconds for a in base])
        name = f"2 evict agent:* ({expected['agent'] / 1e3:g}k of {keys / 1e6:g}M keys)"
        res.add(
            name,
            "wall time vs KEYS | xargs DEL",
            fmt_s(t_bot),
            fmt_s(t_base),
            f"{t_bot / t_base:.2f}x",
            "<= 2x",
            t_bot / t_base <= 2,
        )
        res.add_ping(name, bot, base)
        slow_base = max(base, key=lambda a: a.server_max_ms)
        res.add(
            name,
            "slowest command in Redis (SLOWLOG)",
            fmt_ms(max(a.server_max_ms for a in bot)),
            f"{fmt_ms(slow_base.server_max_ms)} ({slow_base.server_max_cmd.split()[0]})",
        )
        untouched = {ns: expected[ns] for ns in ("sess", "rl", "bull")} | {"agent": 0}
        ok_bot = all(a.left == untouched and a.deleted == expected["agent"] for a in bot)
        ok_base = all(a.left == untouched for a in base)
        res.add(
            name,
            "deleted all agent:*, other namespaces untouched",
            "yes" if ok_bot else "NO",
            "yes" if ok_base else "NO",
            "",
            f"bull:* {expected['bull']:,} kept",
            ok_bot,
            note="" if ok_bot else f"bot left {bot[0].left}",
        )
        res.raw["eviction"] = {k: [vars(a) | {"ping": vars(a.ping)} for a in v] for k, v in sides.items()}
