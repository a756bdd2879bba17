"""How the cache is used: hit ratio and evictions from INFO stats, idle time and TTLs per key prefix."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from bot.redisops.common import call, config_dict, optional, prefix_label, prefix_of, scan_batch


@dataclass
class HitStats:
    """Cache effectiveness from INFO stats, counted since the server started or stats were reset."""

    hits: int
    misses: int
    ratio: float | None
    evicted_keys: int
    expired_keys: int
    rejected_connections: int
    ops_per_sec: int


def hit_stats(info: Mapping[str, Any]) -> HitStats:
    """Hit ratio is None when there were no lookups at all (nothing to judge)."""
    hits = int(info.get("keyspace_hits", 0))
    misses = int(info.get("keyspace_misses", 0))
    return HitStats(
        hits=hits,
        misses=misses,
        ratio=round(hits / (hits + misses), 4) if hits + misses else None,
        evicted_keys=int(info.get("evicted_keys", 0)),
        expired_keys=int(info.get("expired_keys", 0)),
        rejected_connections=int(info.get("rejected_connections", 0)),
        ops_per_sec=int(info.get("instantaneous_ops_per_sec", 0)),
    )


def _quantile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank quantile: a value that really occurred, no interpolation."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


# ----------------------------------------------------------------------------------------- keyspace


@dataclass
class PrefixActivity:
    """How a sampled prefix is used: idle time (or LFU frequency) and how many keys expire."""

    prefix: str
    pattern: str | None
    sampled: int
    with_ttl: int
    ttl_share: float
    ttl_median_s: float | None
    idle_median_s: float | None
    idle_p90_s: float | None
    freq_median: float | None
    freq_p90: float | None


@dataclass
class KeyspaceReport:
    hits: int
    misses: int
    hit_ratio: float | None
    evicted_keys: int
    expired_keys: int
    policy: str | None
    policy_source: str | None
    databases: dict[str, dict[str, Any]]
    sampled: int
    activity_metric: str | None
    prefixes: list[PrefixActivity]
    unavailable: dict[str, str] = field(default_factory=dict)


async def keyspace_report(
    client: aioredis.Redis,
    *,
    sample: int = 2000,
    count: int = 1000,
    separator: bytes = b":",
    depth: int = 1,
    top: int = 20,
) -> KeyspaceReport:
    """Hit ratio, evictions and eviction policy, plus an idle-time and TTL profile per prefix.

    The stats are read before sampling: OBJECT and PTTL lookups count as keyspace hits, and would
    otherwise flatter the very ratio this report is about. Under an LFU policy Redis does not
    track idle time, so the access frequency (OBJECT FREQ) is profiled instead.
    """
    unavailable: dict[str, str] = {}
    stats = hit_stats(await client.info("stats"))
    keyspace = await client.info("keyspace")
    config = await optional(call(client, "CONFIG", "GET", "maxmemory-policy"), "CONFIG GET", unavailable)
    policy = config_dict(config).get("maxmemory-policy")
    source: str | None = "config"
    if policy is None:
        mem = await client.info("memory")
        policy = str(mem["maxmemory_policy"]) if "maxmemory_policy" in mem else None
        source = "info" if policy is not None else None
    metric: str | None = "freq" if policy is not None and "lfu" in policy else "idletime"

    idle: dict[bytes, list[float]] = {}
    ttls: dict[bytes, list[float]] = {}
    sizes: Counter[bytes] = Counter()
    sampled = 0
    cursor = 0
    while sampled < sample:
        cursor, keys = await scan_batch(client, cursor, count)
        keys = keys[: sample - sampled]
        if keys:
            pipe = client.pipeline(transaction=False)
            for key in keys:
                if metric is not None:
                    pipe.execute_command("OBJECT", metric.upper(), key)
                pipe.execute_command("PTTL", key)
            replies = await pipe.execute(raise_on_error=False)
            metrics = replies[0::2] if metric is not None else [None] * len(keys)
            pttls = replies[1::2] if metric is not None else replies
            for key, value, pttl in zip(keys, metrics, pttls, strict=True):
                if not isinstance(pttl, int) or pttl == -2:
                    continue
                prefix = prefix_of(key, separator, depth)
                sizes[prefix] += 1
                sampled += 1
                if pttl >= 0:
                    ttls.setdefault(prefix, []).append(pttl / 1000)
                if isinstance(value, int):
                    idle.setdefault(prefix, []).append(float(value))
                elif isinstance(value, Exception) and metric is not None:
                    unavailable[f"OBJECT {metric.upper()}"] = f"OBJECT {metric.upper()} refused: {value}"
            if any(isinstance(v, Exception) for v in metrics):
                metric = None
                idle.clear()
        if cursor == 0:
            break

    rows: list[PrefixActivity] = []
    for prefix, n in sorted(sizes.items(), key=lambda it: (-it[1], it[0]))[:top]:
        name, pattern = prefix_label(prefix)
        values = sorted(idle.get(prefix, []))
        with_ttl = sorted(ttls.get(prefix, []))
        is_freq = metric == "freq"
        rows.append(
            PrefixActivity(
                prefix=name,
                pattern=pattern,
                sampled=n,
                with_ttl=len(with_ttl),
                ttl_share=round(len(with_ttl) / n, 4),
                ttl_median_s=_quantile(with_ttl, 0.5),
                idle_median_s=None if is_freq else _quantile(values, 0.5),
                idle_p90_s=None if is_freq else _quantile(values, 0.9),
                freq_median=_quantile(values, 0.5) if is_freq else None,
                freq_p90=_quantile(values, 0.9) if is_freq else None,
            )
        )
    return KeyspaceReport(
        hits=stats.hits,
        misses=stats.misses,
        hit_ratio=stats.ratio,
        evicted_keys=stats.evicted_keys,
        expired_keys=stats.expired_keys,
        policy=policy,
        policy_source=source,
        databases={k: dict(v) for k, v in keyspace.items() if isinstance(v, Mapping)},
        sampled=sampled,
        activity_metric=metric,
        prefixes=rows,
        unavailable=unavailable,
    )
