"""Verification steps: after an action, did it help? Each reports ``ok`` (helped) or ``failed``.

They poll within a time window, because an eviction's memory is reclaimed asynchronously (UNLINK)
and hit rates need fresh traffic. Their ``data`` carries ``verification: true`` so the runner can
mark the incident verified, or "did not help".
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from pydantic import Field

from bot.durations import Duration
from bot.formatting import format_duration, human_bytes
from bot.redisconn import redis_errors
from bot.steps.registry import StepContext, StepOutput, StepParams, step


class MemoryBelowParams(StepParams):
    ratio: float = Field(default=0.8, gt=0.0, le=1.0)
    within: Duration = 60.0
    interval: Duration = 1.0


@step("redis.verify_memory_below", params=MemoryBelowParams, timeout=600.0, verifies=True)
async def verify_memory_below(ctx: StepContext, p: MemoryBelowParams) -> StepOutput:
    """Helped if used memory falls below ``ratio`` of maxmemory within the time window.

    On a Redis Cluster, on every primary: the fullest one decides (one full primary rejects the
    writes to its slots however empty the others are).
    """
    deadline = time.monotonic() + p.within
    while True:
        async with redis_errors(ctx.target.name):
            nodes = [(addr, await client.info("memory")) for addr, client in await ctx.target.primaries()]
        cluster = len(nodes) > 1

        def ratio_of(info: dict[str, Any]) -> float:
            limit = int(info.get("maxmemory", 0))
            return int(info.get("used_memory", 0)) / limit if limit else float("inf")

        node, info = max(nodes, key=lambda n: ratio_of(n[1]))
        used, limit = int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
        data: dict[str, Any] = {
            "verification": True,
            "used_memory": used,
            "maxmemory": limit,
            "target_ratio": p.ratio,
        }
        on = f" on node {node} (the fullest of {len(nodes)} primaries)" if cluster else ""
        if cluster:
            data |= {"node": node, "nodes": {a: int(i.get("used_memory", 0)) for a, i in nodes}}
        if limit == 0:
            return StepOutput(
                summary=f"cannot verify: maxmemory is 0 (no limit){on}, so there is no ratio",
                data=data,
                status="failed",
            )
        ratio = used / limit
        data["ratio"] = round(ratio, 4)
        if ratio < p.ratio:
            return StepOutput(
                summary=f"helped: memory at {ratio:.0%} of maxmemory ({human_bytes(used)} of"
                f" {human_bytes(limit)}){on}, below {p.ratio:.0%}",
                data=data,
            )
        if time.monotonic() >= deadline:
            return StepOutput(
                summary=f"did not help: memory still at {ratio:.0%} of maxmemory{on} after"
                f" {format_duration(p.within)} (wanted < {p.ratio:.0%})",
                data=data,
                status="failed",
            )
        await asyncio.sleep(p.interval)


class HitRateParams(StepParams):
    min_ratio: float = Field(default=0.5, ge=0.0, le=1.0)
    window: Duration = 30.0
    min_lookups: int = Field(default=20, ge=1)


@step("redis.verify_hit_rate", params=HitRateParams, timeout=600.0, verifies=True)
async def verify_hit_rate(ctx: StepContext, p: HitRateParams) -> StepOutput:
    """Helped if the hit ratio of lookups made during the window is at least ``min_ratio``."""
    client = ctx.target.client
    async with redis_errors(ctx.target.name):
        a = await client.info("stats")
        await asyncio.sleep(p.window)
        b = await client.info("stats")
    hits = int(b["keyspace_hits"]) - int(a["keyspace_hits"])
    misses = int(b["keyspace_misses"]) - int(a["keyspace_misses"])
    data = {"verification": True, "hits": hits, "misses": misses, "window_s": p.window}
    if hits + misses < p.min_lookups:
        return StepOutput(
            summary=f"cannot tell: only {hits + misses} lookups in {format_duration(p.window)}",
            data=data,
            status="warning",
        )
    ratio = hits / (hits + misses)
    data["hit_ratio"] = round(ratio, 4)
    ok = ratio >= p.min_ratio
    return StepOutput(
        summary=f"{'helped' if ok else 'did not help'}: hit ratio {ratio:.0%} over {format_duration(p.window)}"
        f" (wanted >= {p.min_ratio:.0%})",
        data=data,
        status="ok" if ok else "failed",
    )


class LatencyParams(StepParams):
    max_ms: float = Field(default=10.0, gt=0)
    samples: int = Field(default=20, ge=3, le=1000)
    within: Duration = 60.0


@step("redis.verify_latency", params=LatencyParams, timeout=600.0, verifies=True)
async def verify_latency(ctx: StepContext, p: LatencyParams) -> StepOutput:
    """Helped if the 95th percentile of PING round trips from the bot is under ``max_ms``."""
    deadline = time.monotonic() + p.within
    client = ctx.target.client
    while True:
        rtts = []
        async with redis_errors(ctx.target.name):
            for _ in range(p.samples):
                t0 = time.perf_counter()
                await client.ping()
                rtts.append((time.perf_counter() - t0) * 1000)
                await asyncio.sleep(0.01)
        p95 = statistics.quantiles(rtts, n=20)[-1]
        data = {
            "verification": True,
            "p95_ms": round(p95, 3),
            "max_ms": round(max(rtts), 3),
            "samples": len(rtts),
        }
        if p95 < p.max_ms:
            return StepOutput(summary=f"helped: PING p95 {p95:.1f} ms (< {p.max_ms:g} ms)", data=data)
        if time.monotonic() >= deadline:
            return StepOutput(
                summary=f"did not help: PING p95 {p95:.1f} ms (wanted < {p.max_ms:g} ms)",
                data=data,
                status="failed",
            )
        await asyncio.sleep(1.0)


class KeyCountParams(StepParams):
    pattern: str
    max: int = Field(default=0, ge=0)
    within: Duration = 30.0


@step("redis.verify_key_count", params=KeyCountParams, timeout=600.0, verifies=True)
async def verify_key_count(ctx: StepContext, p: KeyCountParams) -> StepOutput:
    """Helped if at most ``max`` keys match ``pattern`` (counted with SCAN) within the window."""
    deadline = time.monotonic() + p.within
    while True:
        n = 0
        async with redis_errors(ctx.target.name):
            for _, client in await ctx.target.primaries():  # every primary of a cluster
                async for _ in client.scan_iter(match=p.pattern, count=1000):
                    n += 1
        data = {"verification": True, "pattern": p.pattern, "count": n, "max": p.max}
        if n <= p.max:
            return StepOutput(
                summary=f"helped: {n:,} keys match {p.pattern} (at most {p.max:,} wanted)", data=data
            )
        if time.monotonic() >= deadline:
            return StepOutput(
                summary=f"did not help: {n:,} keys still match {p.pattern}", data=data, status="failed"
            )
        await asyncio.sleep(1.0)
