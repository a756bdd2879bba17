"""What uses the memory, in under a second at any key count: a sampled estimate with its margin.

``RANDOMKEY`` picks keys uniformly (with replacement) and ``MEMORY USAGE`` sizes them, in a short
read-only Lua script per batch (one round trip per 1000 keys). Each namespace's share of key memory
is a ratio estimate, sum of its sampled bytes over all sampled bytes, and its 95% margin of error
comes from the ratio estimator's variance. With 10,000 keys the top namespace's share is within a
couple of points whatever the key count; the exact streaming report (:mod:`bot.redisops.memory`)
follows for the details.

Big keys are the estimator's weak spot: each sampled key stands for ``dbsize / sampled`` keys, so
one multi-MiB hash drawn from a million small keys would be counted a hundred times and swamp
every share (measured: 2 of 21 estimates 29 and 36 points off on the bench's data, which has a
handful of such keys). A key whose bytes, multiplied like that, would stand for more than
:data:`BIG_WEIGHT` of the memory is therefore counted **once**, at its exact size, and named
(``big_keys``): that is what it is, and on-call wants to see it anyway. The other keys are scaled
as before. Big keys not drawn stay unseen, as they would in any sample; the exact report finds them.
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
BIG_WEIGHT = 0.05
"""A sampled key whose bytes times ``dbsize / sampled`` exceed this share of the memory used is
counted once, not scaled (see the module docstring)."""


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
class BigKey:
    """A big key the sample drew: counted once at its exact size, not multiplied."""

    key: str
    prefix: str
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
    big_keys: list[BigKey] = field(default_factory=list)


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


def split_big(
    pairs: list[tuple[bytes, int]], dbsize: int, used_memory: int
) -> tuple[list[tuple[bytes, int]], dict[bytes, int]]:
    """The sample without its big keys, and the big keys (each once) with their bytes: keys whose
    scaled weight, ``bytes * dbsize / sampled``, would exceed :data:`BIG_WEIGHT` of ``used_memory``."""
    if not pairs or used_memory <= 0:
        return pairs, {}
    limit = BIG_WEIGHT * used_memory * len(pairs) / max(dbsize, 1)
    big = {k: b for k, b in pairs if b > limit}
    return [(k, b) for k, b in pairs if k not in big], big


def estimate_shares(
    pairs: list[tuple[bytes, int]],
    dbsize: int,
    *,
    separator: bytes,
    depth: int,
    top: int,
    big: dict[bytes, int] | None = None,
) -> list[NamespaceEstimate]:
    """Per namespace: share of bytes (ratio estimator) with its 95% margin, and keys and bytes scaled
    to the database size; ``big`` keys (drawn, but left out of ``pairs``) are added once each."""
    big = big or {}
    if not pairs and not big:
        return []
    total = sum(b for _, b in pairs)
    total_sq = sum(b * b for _, b in pairs)
    mean = total / len(pairs) if pairs else 0.0
    scale = (dbsize - len(big)) / len(pairs) if pairs else 0.0
    big_by_prefix: dict[bytes, list[int]] = defaultdict(list)
    for key, b in big.items():
        big_by_prefix[prefix_of(key, separator, depth)].append(b)
    grand = total * scale + sum(big.values())
    by_prefix: dict[bytes, list[int]] = defaultdict(list)
    for key, b in pairs:
        by_prefix[prefix_of(key, separator, depth)].append(b)
    rows: list[NamespaceEstimate] = []
    for prefix in by_prefix.keys() | big_by_prefix.keys():
        sizes, bigs = by_prefix.get(prefix, []), big_by_prefix.get(prefix, [])
        ratio = sum(sizes) / total if total else 0.0
        # Var(R) ~ sum((y_i - R x_i)^2) / (n (n - 1) mean^2), y_i = x_i inside the namespace, else 0;
        # the big keys are known exactly, so only the scaled part's share carries the error.
        inside_sq = sum(b * b for b in sizes)
        residuals = (1 - ratio) ** 2 * inside_sq + ratio**2 * (total_sq - inside_sq)
        m = len(pairs)
        var = residuals / (m * max(m - 1, 1) * mean * mean) if mean else 0.0
        scaled_part = total * scale / grand if grand else 0.0
        est_bytes = sum(sizes) * scale + sum(bigs)
        name, pattern = prefix_label(prefix)
        rows.append(
            NamespaceEstimate(
                prefix=name,
                pattern=pattern,
                sampled=len(sizes) + len(bigs),
                share=round(est_bytes / grand, 4) if grand else 0.0,
                margin=round(Z95 * math.sqrt(var) * scaled_part, 4),
                keys=round(len(sizes) * scale) + len(bigs),
                bytes=round(est_bytes),
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
    small, big = split_big(pairs, dbsize, used)
    mean = sum(b for _, b in small) / len(small) if small else 0.0
    rows = estimate_shares(small, dbsize, separator=separator, depth=depth, top=top, big=big)
    return MemoryEstimate(
        dbsize=dbsize,
        sampled=len(pairs),
        elapsed_s=round(time.perf_counter() - started, 3),
        mean_key_bytes=round(mean, 1),
        total_bytes=round(mean * (dbsize - len(big)) + sum(big.values())),
        used_memory=used,
        method=method,
        namespaces=rows,
        unavailable=unavailable,
        big_keys=[
            BigKey(
                key=k.decode(errors="backslashreplace"),
                prefix=prefix_label(prefix_of(k, separator, depth))[0],
                bytes=b,
            )
            for k, b in sorted(big.items(), key=lambda kv: -kv[1])
        ],
    )
