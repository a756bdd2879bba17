"""Read-only Redis diagnostics of memory and cache use: the memory report and the keyspace profile.

The runbook's ``redis-cli --bigkeys`` and its "inefficient caching strategy" check; see
:mod:`bot.steps.redis_info` for how these steps wrap :mod:`bot.redisops`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
from pydantic import Field

from bot import cluster
from bot.formatting import human_bytes, join_blocks, pct, table, unavailable_details, unavailable_note
from bot.redisconn import redis_errors
from bot.redisops import estimate, memory
from bot.redisops.common import OTHER_PREFIXES, to_jsonable
from bot.redisops.keyspace import keyspace_report
from bot.steps.redis_info import HIT_RATIO_WARN
from bot.steps.registry import StepContext, StepOutput, StepParams, step


def on_replica(replica: str | None) -> str:
    """Where a heavy read ran, when ``prefer_replica`` sent it to a replica."""
    return f" (read on replica {replica})" if replica else ""


# ------------------------------------------------------------------------------------ memory report


class MemoryReportParams(StepParams):
    top: int = Field(10, ge=1, le=1000)
    count: int = Field(500, ge=10, le=10_000)
    separator: str = Field(":", min_length=1, max_length=8)
    depth: int = Field(1, ge=1, le=10)
    samples: int = Field(5, ge=0, le=10_000)
    max_keys: int | None = Field(None, ge=1)
    max_prefixes: int = Field(10_000, ge=1, le=100_000)
    top_prefixes: int = Field(20, ge=1, le=1000)
    scripts: bool = True


@step("redis.memory_report", params=MemoryReportParams, timeout=900.0)
async def memory_report(ctx: StepContext, p: MemoryReportParams) -> StepOutput:
    """Find what uses the memory: bytes and elements by key prefix and type, and the biggest keys.

    The runbook's ``redis-cli --bigkeys`` (and ``--memkeys``), built on SCAN, never KEYS, with flat
    memory on any key count. ``samples`` is MEMORY USAGE's SAMPLES (0 = exact, slow on big keys);
    ``max_keys`` bounds the scan; ``scripts: false`` avoids Lua (slower). Reading the keys counts
    as keyspace hits, so run hit-ratio checks first.
    """

    async def progress(scanned: int, dbsize: int) -> None:
        await ctx.progress(f"memory report: {scanned:,} of ~{dbsize:,} keys scanned")

    def report(client: aioredis.Redis, top_prefixes: int, report_progress: Any) -> Any:
        return memory.memory_report(
            client,
            top=p.top,
            count=p.count,
            separator=p.separator.encode(),
            depth=p.depth,
            samples=p.samples,
            max_keys=p.max_keys,
            max_prefixes=p.max_prefixes,
            top_prefixes=top_prefixes,
            use_script=p.scripts,
            progress=report_progress,
        )

    nodes: list[dict[str, Any]] = []
    async with redis_errors(ctx.target.name):
        if await ctx.target.is_cluster():
            # Every primary at once: each Redis is single-threaded, so N primaries take ~1/N.
            primaries = await ctx.target.primaries()
            parts = await asyncio.gather(*(report(c, p.max_prefixes, None) for _, c in primaries))
            r = cluster.merge_reports(parts, top=p.top, top_prefixes=p.top_prefixes)
            nodes = cluster.node_rows(
                [(addr, part) for (addr, _), part in zip(primaries, parts, strict=True)]
            )
            replica = None
        else:
            client, replica = await ctx.target.read_client()
            r = await report(client, p.top_prefixes, progress)
    share = f" ({pct(r.share_of_used_memory)} of used_memory {human_bytes(r.used_memory)})"
    summary = f"{r.scanned_keys:,} keys use {human_bytes(r.total_bytes)}{share if r.used_memory else ''}"
    if r.max_keys_reached:
        summary += f", stopped at max_keys (~{r.dbsize:,} keys in db)"
    if r.prefixes:
        first = r.prefixes[0]
        summary += f"; top prefix {first.pattern or first.prefix} {pct(first.share)}"
    if r.top_keys:
        big = r.top_keys[0]
        unit = memory.ELEMENT_UNITS.get(big.type, "elements")
        summary += f"; biggest key {big.key} ({big.type}, {big.elements} {unit}, {human_bytes(big.bytes)})"

    prefix_table = table(
        ["prefix", "keys", "memory", "share", "types"],
        [
            [
                x.pattern or x.prefix,
                x.keys,
                human_bytes(x.bytes),
                pct(x.share),
                ",".join(f"{t}:{n}" for t, n in x.types.items()),
            ]
            for x in r.prefixes
        ],
    )
    type_table = table(
        ["type", "keys", "memory", "share", "elements", "biggest (memory)", "biggest (elements)"],
        [
            [
                t.type,
                t.keys,
                human_bytes(t.bytes),
                pct(t.share),
                f"{t.elements} {t.element_unit}",
                f"{t.biggest_by_memory.key} {human_bytes(t.biggest_by_memory.bytes)}",
                f"{t.biggest_by_elements.key} {t.biggest_by_elements.elements}",
            ]
            for t in r.types
        ],
    )
    keys_table = table(
        ["biggest keys", "type", "memory", "elements"],
        [[k.key, k.type, human_bytes(k.bytes), k.elements] for k in r.top_keys],
    )
    notes = [f"scanned {r.scanned_keys} keys in {r.elapsed_s:.1f} s with {r.method}"]
    if r.vanished_keys:
        notes.append(f"{r.vanished_keys} keys vanished during the scan")
    if r.prefixes_overflowed:
        notes.append(f"more than {p.max_prefixes} prefixes: the rest are lumped as {OTHER_PREFIXES}")
    if nodes:
        summary += f"; {len(nodes)} primaries: " + ", ".join(f"{n['node']} {n['keys']:,} keys" for n in nodes)
    return StepOutput(
        summary=summary + on_replica(replica),
        data=to_jsonable(r) | {"replica": replica, "nodes": nodes},
        details=join_blocks(
            prefix_table, keys_table, type_table, "; ".join(notes), unavailable_details(r.unavailable)
        ),
    )


# ---------------------------------------------------------------------------------- memory estimate


class MemoryEstimateParams(StepParams):
    sample: int = Field(10_000, ge=100, le=1_000_000)
    batch: int = Field(1000, ge=10, le=10_000)
    samples: int = Field(5, ge=0, le=1000)
    separator: str = Field(":", min_length=1, max_length=8)
    depth: int = Field(1, ge=1, le=10)
    top: int = Field(10, ge=1, le=1000)


@step("redis.memory_estimate", params=MemoryEstimateParams, timeout=30.0)
async def memory_estimate(ctx: StepContext, p: MemoryEstimateParams) -> StepOutput:
    """What uses the memory, in under a second at any key count: share per namespace from a random sample.

    ``sample`` keys by RANDOMKEY, sized with MEMORY USAGE, one short script per ``batch``; each
    share comes with its 95% margin of error (``agent:* 68% ±2%``). The exact streaming report
    (``redis.memory_report``) follows for exact figures and the biggest keys.
    """
    async with redis_errors(ctx.target.name):
        if await ctx.target.is_cluster():
            clients, replica = [c for _, c in await ctx.target.primaries()], None
        else:
            client, replica = await ctx.target.read_client()
            clients = [client]
        r = await estimate.memory_estimate(
            clients,
            sample=p.sample,
            batch=p.batch,
            samples=p.samples,
            separator=p.separator.encode(),
            depth=p.depth,
            top=p.top,
        )
    if not r.namespaces:
        return StepOutput(summary="no keys to sample", data=to_jsonable(r))

    def share(x: estimate.NamespaceEstimate) -> str:
        margin = f"{x.margin:.0%}" if x.margin >= 0.01 else f"{x.margin:.1%}"
        return f"{x.pattern or x.prefix} {x.share:.0%} ±{margin}"

    first, *rest = r.namespaces
    then = f", then {', '.join(share(x) for x in rest[:2])}" if rest else ""
    summary = (
        f"{share(first)} of key memory{then} (estimate from {r.sampled:,} random keys of {r.dbsize:,},"
        f" {r.elapsed_s:.2f} s; ~{human_bytes(r.total_bytes)} in keys of {human_bytes(r.used_memory)} used)"
    )
    if r.big_keys:
        named = ", ".join(f"{b.key} ({human_bytes(b.bytes)})" for b in r.big_keys[:3])
        more = f" and {len(r.big_keys) - 3} more" if len(r.big_keys) > 3 else ""
        summary += f"; big keys drawn, counted once: {named}{more}"
    rows = [
        [
            x.pattern or x.prefix,
            f"{x.share:.1%} ±{x.margin:.1%}",
            f"~{x.keys:,}",
            f"~{human_bytes(x.bytes)}",
            x.sampled,
        ]
        for x in r.namespaces
    ]
    return StepOutput(
        summary=summary + on_replica(replica) + unavailable_note(r.unavailable),
        data=to_jsonable(r) | {"replica": replica},
        details=join_blocks(
            table(["namespace", "share", "keys", "memory", "sampled"], rows),
            unavailable_details(r.unavailable),
        ),
    )


# ----------------------------------------------------------------------------------------- keyspace


class KeyspaceParams(StepParams):
    sample: int = Field(2000, ge=1, le=100_000)
    count: int = Field(1000, ge=10, le=10_000)
    separator: str = Field(":", min_length=1, max_length=8)
    depth: int = Field(1, ge=1, le=10)
    top: int = Field(20, ge=1, le=1000)
    hit_ratio_warn: float = Field(HIT_RATIO_WARN, ge=0, le=1)


@step("redis.keyspace", params=KeyspaceParams, timeout=60.0)
async def keyspace(ctx: StepContext, p: KeyspaceParams) -> StepOutput:
    """Judge the caching strategy: hit ratio, evictions, eviction policy, and per-prefix idle time and TTLs.

    The runbook's "inefficient caching strategy" check behind RedisHitRateLow (warning below
    ``hit_ratio_warn``). A SCAN sample of ``sample`` keys shows, per prefix, how long keys sit
    unread (OBJECT IDLETIME, or OBJECT FREQ under an LFU policy) and how many have a TTL.
    """
    async with redis_errors(ctx.target.name):
        client, replica = await ctx.target.read_client()
        r = await keyspace_report(
            client,
            sample=p.sample,
            count=p.count,
            separator=p.separator.encode(),
            depth=p.depth,
            top=p.top,
        )
    low = r.hit_ratio is not None and r.hit_ratio < p.hit_ratio_warn
    with_ttl = sum(x.with_ttl for x in r.prefixes)
    summary = (
        f"hit ratio {pct(r.hit_ratio)} ({r.hits} hits / {r.misses} misses); {r.evicted_keys} evicted, "
        f"{r.expired_keys} expired; policy {r.policy or 'n/a'}"
    )
    if r.sampled:
        summary += f"; {with_ttl / r.sampled:.0%} of {r.sampled} sampled keys have a TTL"
    cause = likely_miss_cause(r.misses, r.evicted_keys, r.expired_keys, r.policy) if low else None
    if low:
        summary = f"low hit ratio (< {p.hit_ratio_warn:.0%}): {summary}"
        if cause:
            summary += f". Likely cause: {cause}"
    freq = r.activity_metric == "freq"
    rows = [
        [
            x.pattern or x.prefix,
            x.sampled,
            pct(x.ttl_share),
            _fmt(x.freq_median if freq else x.idle_median_s),
            _fmt(x.freq_p90 if freq else x.idle_p90_s),
            _fmt(x.ttl_median_s, 0),
        ]
        for x in r.prefixes
    ]
    label = "freq" if freq else "idle s"
    details = table(["prefix", "sampled", "with TTL", f"{label} p50", f"{label} p90", "TTL p50 s"], rows)
    return StepOutput(
        summary=summary + on_replica(replica) + unavailable_note(r.unavailable),
        data=to_jsonable(r) | {"hit_ratio_warn": p.hit_ratio_warn, "likely_cause": cause, "replica": replica},
        status="warning" if low else "ok",
        details=join_blocks(details if rows else "", unavailable_details(r.unavailable)),
    )


def likely_miss_cause(misses: int, evicted: int, expired: int, policy: str | None) -> str:
    """Name the most likely reason for a low hit ratio from what Redis counts.

    Misses come from keys that were evicted (memory pressure), keys that expired (TTLs shorter
    than the read interval), or keys that were never written (a cold cache, a changed key scheme,
    or lookups of IDs that do not exist: cache penetration/poisoning).
    """
    if misses and evicted >= 0.1 * misses:
        return (
            f"evictions: {evicted} keys evicted under memory pressure (policy {policy or 'n/a'});"
            " raise maxmemory or give cold namespaces shorter TTLs"
        )
    if misses and expired >= 0.1 * misses:
        return f"expiry: {expired} keys expired; TTLs may be shorter than how often keys are read"
    return (
        "lookups of keys that were never cached (few evictions or expiries): a cold cache,"
        " a changed key scheme, or requests for IDs that do not exist (cache penetration)"
    )


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}".removesuffix(".0")
