"""Keys that never expire: INFO keyspace ``keys`` vs ``expires``, cache namespaces without TTLs from
a sample, and how the count of keys without TTL moved (its growth), when something recorded it.

A cache namespace without TTLs grows until maxmemory: the usual cause of RedisMemoryUsageHigh.
"Growing" needs an earlier reading: the bot keeps none of its own between incidents, so the growth
comes from Prometheus (redis_exporter's ``redis_db_keys`` minus ``redis_db_keys_expiring``) when one
is configured, and the summary says plainly when no earlier reading exists. On a Redis Cluster the
keyspace is summed and the sample taken on every primary (:mod:`bot.steps.pernode`).
"""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aioredis
from pydantic import Field

from bot.durations import Duration
from bot.formatting import format_duration, pct, table
from bot.prom import PrometheusError
from bot.redisops import roles
from bot.redisops.common import to_jsonable
from bot.steps.pernode import on_primaries
from bot.steps.prometheus import Matchers, prepare_query
from bot.steps.redis_memory import on_replica
from bot.steps.registry import StepContext, StepOutput, StepParams, step

WITHOUT_TTL_QUERY = "sum(redis_db_keys{{ selector }} - redis_db_keys_expiring{{ selector }})"


class KeysWithoutTTLParams(StepParams):
    sample: int = Field(2000, ge=1, le=100_000, description="keys sampled (per primary on a cluster)")
    share_warn: float = Field(0.5, gt=0, le=1, description="flag a cache namespace above this share")
    separator: str = Field(":", min_length=1, max_length=8)
    depth: int = Field(1, ge=1, le=10)
    top: int = Field(20, ge=1, le=1000)
    history: Duration = Field(3600.0, gt=0, description="how far back the growth is measured (Prometheus)")
    selector: Matchers | None = None


async def ttl_growth(ctx: StepContext, p: KeysWithoutTTLParams) -> tuple[str, dict[str, Any]]:
    """How the number of keys without TTL moved over ``history``, from the oldest Prometheus reading
    in that window to the newest; or a plain statement that no earlier reading exists."""
    prepared = prepare_query(ctx, WITHOUT_TTL_QUERY, p.selector)
    if isinstance(prepared, StepOutput):
        why = (
            "no Prometheus configured"
            if ctx.prometheus is None
            else prepared.summary.removeprefix("skipped: ")
        )
        return f"growth unknown: no earlier reading ({why})", {"known": False, "reason": why}
    client, query = prepared
    end = time.time()
    try:
        series = await client.query_range(
            query, start=end - p.history, end=end, step=max(p.history / 120, 1.0)
        )
    except PrometheusError as exc:
        return f"growth unknown: {exc}", {"known": False, "reason": str(exc)}
    points = series[0].points if series else []
    if len(points) < 2:
        why = f"Prometheus has no earlier reading of {query} in the last {format_duration(p.history)}"
        return f"growth unknown: {why}", {"known": False, "reason": why, "query": query}
    (t0, v0), (t1, v1) = points[0], points[-1]
    delta = int(v1 - v0)
    span = format_duration(t1 - t0)
    trend = f"grew by {delta:,}" if delta > 0 else f"fell by {-delta:,}" if delta < 0 else "did not change"
    text = f"keys without TTL {trend} in {span} ({int(v0):,} -> {int(v1):,}, Prometheus)"
    data = {"known": True, "from": int(v0), "to": int(v1), "delta": delta, "seconds": round(t1 - t0, 1)}
    return text, data | {"query": query}


@step("redis.keys_without_ttl", params=KeysWithoutTTLParams, timeout=60.0)
async def keys_without_ttl(ctx: StepContext, p: KeysWithoutTTLParams) -> StepOutput:
    """Keys that never expire: INFO keyspace keys vs expires, per namespace from a SCAN sample, and
    their growth over ``history`` when Prometheus recorded it.

    A cache namespace without TTLs grows until maxmemory, the usual cause of RedisMemoryUsageHigh.
    Protected namespaces (queues, sessions) without TTLs are expected and not flagged. On a cluster,
    every primary's keyspace is summed and sampled.
    """
    protected = list(ctx.protected_patterns)

    async def read(client: aioredis.Redis) -> tuple[dict[str, Any], roles.TTLSample]:
        keyspace = dict(await client.info("keyspace"))
        s = await roles.sample_ttls(
            client, protected, sample=p.sample, separator=p.separator.encode(), depth=p.depth
        )
        return keyspace, s

    runs = await on_primaries(ctx.target, read, read=True)
    keyspace = roles.sum_keyspaces([k for _, (k, _) in runs.results])
    sample = roles.merge_samples([s for _, (_, s) in runs.results])
    a = roles.ttl_audit(keyspace, sample, protected, share_warn=p.share_warn, top=p.top)
    dbs = "; ".join(
        f"{name}: {d['without_ttl']:,} of {d['keys']:,} keys without TTL" for name, d in a.databases.items()
    )
    if runs.cluster:
        dbs += f" (summed over {len(runs.results)} primaries)"
    if not a.keys:
        summary = "no keys"
    elif a.flagged:
        names = ", ".join(roles.describe_namespace(n) for n in a.flagged[:3])
        summary = (
            f"cache namespaces without TTL: {names} have none. Such keys stay until evicted or deleted"
            " and grow until maxmemory: set a TTL where they are written (SET key value EX 3600) or"
            f" evict the namespace. {dbs}"
        )
    else:
        summary = f"{dbs}; no unprotected namespace in the {a.sampled:,}-key sample lacks TTLs"
    expected = [n for n in a.namespaces if n.protected and n.without_ttl]
    if expected:
        summary += (
            f" (protected {', '.join(n.pattern or n.prefix for n in expected[:3])} without TTL: expected)"
        )
    growth, growth_data = await ttl_growth(ctx, p)
    rows = [
        [
            n.pattern or n.prefix,
            n.sampled,
            n.without_ttl,
            pct(n.share_without_ttl),
            "yes" if n.protected else "",
        ]
        for n in a.namespaces
    ]
    nodes = {addr: k for addr, (k, _) in runs.results} if runs.cluster else {}
    return StepOutput(
        summary=f"{summary}; {growth}{on_replica(runs.replica)}{runs.note()}",
        data=to_jsonable(a)
        | {"replica": runs.replica, "growth": growth_data, "nodes": nodes, "errors": runs.errors},
        status="warning" if a.flagged or runs.errors else "ok",
        details=table(["namespace", "sampled", "no TTL", "share", "protected"], rows) if rows else "",
    )
