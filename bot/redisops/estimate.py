"""What uses the memory, in under a second at any key count: a sampled estimate with its margin.

``RANDOMKEY`` picks keys uniformly (with replacement) and ``MEMORY USAGE`` sizes them, in a short
read-only Lua script per batch (one round trip per 1000 keys). Each namespace's share of key memory
is a ratio estimate, sum of its sampled bytes over all sampled bytes, and its 95% margin of error
comes from the ratio estimator's variance. With 10,000 keys the top namespace's share is within a
couple of points whatever the key count; the exact streaming report (:mod:`bot.redisops.memory`)
follows for the details.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as rex

from bot.redisops.common import prefix_label, prefix_of

_SAMPLE_SCRIPT = """
local out = {}
for i = 1, tonumber(ARGV[1]) do
  local k = redis.call('RANDOMKEY')
  if not k then break end
  out[#out + 1] = k
  out[#out + 1] = redis.call('MEMORY', 'USAGE', k, 'SAMPLES', ARGV[2]) or -1
end
return out
"""
Z95 = 1.96


@dataclass
class NamespaceEstimate:
    """One namespace's estimated share of key memory, with its 95% margin of error."""

    prefix: str
    pattern: str | None
    sampled: int
    share: float
    margin: float
    keys: int
    bytes: int


@dataclass
class MemoryEstimate:
    dbsize: int
    sampled: int
    elapsed_s: float
    mean_key_bytes: float
    total_bytes: int
    used_memory: int
    method: str
    namespaces: list[NamespaceEstimate]
    unavailable: dict[str, str] = field(default_factory=dict)


async def sample_sizes(
    client: aioredis.Redis, n: int, *, batch: int = 1000, samples: int = 5, unavailable: dict[str, str]
) -> tuple[list[tuple[bytes, int]], str]:
    """``n`` random (key, bytes) pairs: by script, or two pipelines per batch where scripts are refused."""
    out: list[tuple[bytes, int]] = []
    script = client.register_script(_SAMPLE_SCRIPT)
    method = "script"
    while len(out) < n:
        size = min(batch, n - len(out))
        if method == "script":
            try:
                reply: list[Any] = await script(args=[size, samples])
            except rex.ResponseError as exc:
                unavailable["script"] = f"Lua script refused ({exc}); sampled with pipelines"
                method = "pipeline"
                continue
        else:
            pipe = client.pipeline(transaction=False)
            for _ in range(size):
                pipe.randomkey()
            keys = [k for k in await pipe.execute() if k is not None]
            pipe = client.pipeline(transaction=False)
            for k in keys:
                pipe.memory_usage(k, samples=samples)
            sizes = await pipe.execute(raise_on_error=False)
            reply = [
                v for k, s in zip(keys, sizes, strict=True) for v in (k, s if isinstance(s, int) else -1)
            ]
        if not reply:
            break  # the database is empty
        out.extend((k, int(b)) for k, b in zip(reply[0::2], reply[1::2], strict=True) if int(b) >= 0)
    return out, method


def estimate_shares(
    pairs: list[tuple[bytes, int]], dbsize: int, *, separator: bytes, depth: int, top: int
) -> list[NamespaceEstimate]:
    """Per namespace: share of bytes (ratio estimator) with its 95% margin, and keys and bytes scaled
    to the database size."""
    n = len(pairs)
    if not n:
        return []
    total = sum(b for _, b in pairs)
    total_sq = sum(b * b for _, b in pairs)
    mean = total / n
    by_prefix: dict[bytes, list[int]] = defaultdict(list)
    for key, b in pairs:
        by_prefix[prefix_of(key, separator, depth)].append(b)
    rows: list[NamespaceEstimate] = []
    for prefix, sizes in by_prefix.items():
        ratio = sum(sizes) / total if total else 0.0
        # Var(R) ~ sum((y_i - R x_i)^2) / (n (n - 1) mean^2), y_i = x_i inside the namespace, else 0.
        inside_sq = sum(b * b for b in sizes)
        residuals = (1 - ratio) ** 2 * inside_sq + ratio**2 * (total_sq - inside_sq)
        var = residuals / (n * max(n - 1, 1) * mean * mean) if mean else 0.0
        name, pattern = prefix_label(prefix)
        rows.append(
            NamespaceEstimate(
                prefix=name,
                pattern=pattern,
                sampled=len(sizes),
                share=round(ratio, 4),
                margin=round(Z95 * math.sqrt(var), 4),
                keys=round(dbsize * len(sizes) / n),
                bytes=round(dbsize * mean * ratio),
            )
        )
    rows.sort(key=lambda r: (-r.share, r.prefix))
    return rows[:top]


async def memory_estimate(
    clients: list[aioredis.Redis],
    *,
    sample: int = 10_000,
    batch: int = 1000,
    samples: int = 5,
    separator: bytes = b":",
    depth: int = 1,
    top: int = 10,
) -> MemoryEstimate:
    """Sample ``sample`` random keys (at most the database's size) and estimate shares per namespace.

    With several ``clients`` (the primaries of a cluster), each is sampled in proportion to its key
    count, at the same time: together a uniform sample of the whole keyspace.
    """
    started = time.perf_counter()
    unavailable: dict[str, str] = {}
    sizes = [int(await c.dbsize()) for c in clients]
    dbsize = sum(sizes)
    want = min(sample, dbsize)
    parts = await asyncio.gather(
        *(
            sample_sizes(c, round(want * n / dbsize), batch=batch, samples=samples, unavailable=unavailable)
            for c, n in zip(clients, sizes, strict=True)
            if n
        )
    )
    pairs = [pair for part, _ in parts for pair in part]
    method = parts[0][1] if parts else "script"
    used = sum([int((await c.info("memory")).get("used_memory", 0)) for c in clients])
    mean = sum(b for _, b in pairs) / len(pairs) if pairs else 0.0
    return MemoryEstimate(
        dbsize=dbsize,
        sampled=len(pairs),
        elapsed_s=round(time.perf_counter() - started, 3),
        mean_key_bytes=round(mean, 1),
        total_bytes=round(mean * dbsize),
        used_memory=used,
        method=method,
        namespaces=estimate_shares(pairs, dbsize, separator=separator, depth=depth, top=top),
        unavailable=unavailable,
    )
