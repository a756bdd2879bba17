"""Where the memory goes: INFO memory figures, and the report by key prefix and type (``--bigkeys``)."""

from __future__ import annotations

import heapq
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as rex

from bot.redisops.common import ProgressCallback, display_key, prefix_label, prefix_of, scan_batch
from bot.redisops.measure import HINTS, ReportScript, batch_by_pipeline, no_touch_client, type_hints

HINT_EVERY = 8
"""Batches between two updates of the script's type guesses (each update reads every hinted bucket)."""

# Element unit of each type's length command, as --bigkeys reports them.
ELEMENT_UNITS = {
    "string": "bytes",
    "list": "items",
    "hash": "fields",
    "set": "members",
    "zset": "members",
    "stream": "entries",
}


@dataclass
class MemoryFigures:
    """The figures of INFO memory the runbook looks at first."""

    used_memory: int
    used_memory_human: str
    used_memory_peak: int | None
    used_memory_rss: int | None
    maxmemory: int
    ratio: float | None
    fragmentation_ratio: float | None
    policy: str | None


def memory_figures(info: Mapping[str, Any]) -> MemoryFigures:
    """Used memory against maxmemory (``ratio`` is None when maxmemory is 0, i.e. unlimited)."""
    used = int(info.get("used_memory", 0))
    maxmemory = int(info.get("maxmemory", 0) or 0)
    frag = info.get("mem_fragmentation_ratio")
    policy = info.get("maxmemory_policy")
    return MemoryFigures(
        used_memory=used,
        used_memory_human=str(info.get("used_memory_human", "")),
        used_memory_peak=info.get("used_memory_peak"),
        used_memory_rss=info.get("used_memory_rss"),
        maxmemory=maxmemory,
        ratio=round(used / maxmemory, 4) if maxmemory > 0 else None,
        fragmentation_ratio=float(frag) if frag is not None else None,
        policy=str(policy) if policy is not None else None,
    )


# ------------------------------------------------------------------------------------ memory report


@dataclass
class BigKey:
    """One key with its memory (MEMORY USAGE, sampled) and element count (STRLEN/LLEN/HLEN/...)."""

    key: str
    type: str
    bytes: int
    elements: int
    prefix: str


@dataclass
class PrefixMemory:
    """Keys sharing a prefix: how many, how much memory, and which key is biggest."""

    prefix: str
    pattern: str | None
    keys: int
    bytes: int
    elements: int
    share: float
    types: dict[str, int]
    biggest_key: str | None
    biggest_key_bytes: int


@dataclass
class TypeMemory:
    """Keys of one type, with the biggest by memory (like --memkeys) and by elements (like --bigkeys)."""

    type: str
    keys: int
    bytes: int
    elements: int
    element_unit: str
    avg_bytes: float
    share: float
    biggest_by_memory: BigKey
    biggest_by_elements: BigKey


@dataclass
class MemoryReport:
    """Where the memory goes, by prefix and type, from one SCAN pass over the database."""

    scanned_keys: int
    vanished_keys: int
    dbsize: int
    complete: bool
    max_keys_reached: bool
    total_bytes: int
    used_memory: int
    share_of_used_memory: float | None
    separator: str
    depth: int
    samples: int
    method: str
    no_touch: bool
    type_guess_misses: int
    elapsed_s: float
    prefixes_tracked: int
    prefixes_overflowed: bool
    prefixes: list[PrefixMemory]
    types: list[TypeMemory]
    top_keys: list[BigKey]
    unavailable: dict[str, str] = field(default_factory=dict)


async def memory_report(
    client: aioredis.Redis,
    *,
    top: int = 10,
    count: int = 500,
    separator: bytes = b":",
    depth: int = 1,
    samples: int = 5,
    max_keys: int | None = None,
    max_prefixes: int = 10_000,
    top_prefixes: int = 20,
    use_script: bool = True,
    progress: ProgressCallback | None = None,
    progress_every: int = 100_000,
) -> MemoryReport:
    """``redis-cli --bigkeys`` and ``--memkeys`` in one streamed pass, grouped by key prefix.

    SCAN (never KEYS) batch by batch: a read-only Lua script runs each SCAN step and measures the
    keys it found in the same round trip, with the next batch requested before the current one is
    aggregated; when scripting is refused or ``use_script`` is False, SCAN is followed by two
    pipelines per batch (slower). Only aggregates per (prefix, type), a heap of the ``top`` biggest
    keys and at most ``max_prefixes`` distinct prefixes are kept (later prefixes are lumped
    together), so memory stays flat whatever the key count. Side effect to know: TYPE and the length commands count as keyspace hits.

    ``count`` is 500, not 1000: the script runs two or three commands per key, so a batch of 1000 held
    Redis for up to 12 ms (a PING from another client waited that long); 500 keeps every script
    under 5 ms at the same total time (measured with ``python -m bench --only memory``).
    """
    started = time.perf_counter()
    unavailable: dict[str, str] = {}
    dbsize = int(await client.dbsize())
    seplen = len(separator)
    # (prefix, type) -> [keys, bytes, elements, biggest by bytes: bytes, key, elements,
    #                     biggest by elements: elements, key, bytes]; prefix None = over max_prefixes.
    stats: dict[tuple[bytes | None, bytes], list[Any]] = {}
    prefixes: dict[bytes, None] = {}  # in the order met: the first HINTS are the script's type guesses
    heap: list[tuple[int, bytes, bytes, int]] = []
    heap_floor = -1  # keys smaller than this cannot enter the full heap
    types_seen: set[bytes] = set()
    scanned = vanished = 0
    next_progress = progress_every
    cursor = 0
    complete = reached = False

    def new_bucket(prefix: bytes, typ: bytes) -> list[Any]:
        bucket_prefix: bytes | None = prefix
        if prefix not in prefixes:
            if len(prefixes) >= max_prefixes:
                bucket_prefix = None
            else:
                prefixes[prefix] = None
        bucket = stats.get((bucket_prefix, typ))
        if bucket is None:
            bucket = stats[(bucket_prefix, typ)] = [0, 0, 0, -1, b"", 0, -1, b"", 0]
            types_seen.add(typ)
        return bucket

    async with no_touch_client(client) as (conn, no_touch):
        script = ReportScript(conn, count, samples, separator, depth) if use_script else None
        scripted = script
        try:
            while True:
                reply: list[Any] | None = None
                if script is not None:
                    try:
                        cursor, keys, reply = await script.fetch(cursor)
                    except rex.ResponseError as exc:
                        unavailable["script"] = f"Lua script refused ({exc}); measured with pipelines, slower"
                        script, use_script = None, False
                if script is None:
                    cursor, keys = await scan_batch(conn, cursor, count)
                if max_keys is not None and scanned + len(keys) >= max_keys:
                    reached = cursor != 0 or len(keys) > max_keys - scanned
                    keys = keys[: max_keys - scanned]
                if script is not None and cursor != 0 and not reached:
                    if script.batches % HINT_EVERY == 0:
                        script.hints = type_hints(stats, islice(prefixes, HINTS), types_seen)
                    await script.prefetch(cursor)
                if keys:
                    if reply is None:
                        reply = await batch_by_pipeline(conn, keys, samples)
                    n_keys = len(keys)
                    end = 3 * n_keys
                    types, mems, lengths = reply[0:end:3], reply[1:end:3], reply[2:end:3]
                    for key, typ, mem, n in zip(keys, types, mems, lengths, strict=True):
                        if mem is None:
                            vanished += 1
                            continue
                        if depth == 1:
                            i = key.find(separator)
                            prefix = key[: i + seplen] if i >= 0 else b""
                        else:
                            prefix = prefix_of(key, separator, depth)
                        bucket = stats.get((prefix, typ))
                        if bucket is None:
                            bucket = new_bucket(prefix, typ)
                        bucket[0] += 1
                        bucket[1] += mem
                        bucket[2] += n
                        if mem > bucket[3]:
                            bucket[3:6] = mem, key, n
                        if n > bucket[6]:
                            bucket[6:9] = n, key, mem
                        if mem < heap_floor:
                            continue
                        if len(heap) < top:
                            heapq.heappush(heap, (mem, key, typ, n))
                        # Ties are broken by name: the same result in any scan order.
                        elif (mem, key) > heap[0][:2]:
                            heapq.heapreplace(heap, (mem, key, typ, n))
                        if len(heap) >= top:
                            heap_floor = heap[0][0]
                    scanned += n_keys
                    if progress is not None and scanned >= next_progress:
                        next_progress += progress_every
                        await progress(scanned, dbsize)
                if reached:
                    break
                if cursor == 0:
                    complete = True
                    break
        finally:
            if script is not None:
                await script.close()
        misses = scripted.misses if scripted is not None else 0
        used_memory = int((await conn.info("memory")).get("used_memory", 0))

    total = sum(b[1] for b in stats.values())
    return MemoryReport(
        scanned_keys=scanned,
        vanished_keys=vanished,
        dbsize=dbsize,
        complete=complete,
        max_keys_reached=reached,
        total_bytes=total,
        used_memory=used_memory,
        share_of_used_memory=round(total / used_memory, 4) if used_memory else None,
        separator=display_key(separator),
        depth=depth,
        samples=samples,
        method="script" if use_script else "pipeline",
        no_touch=no_touch,
        type_guess_misses=misses,
        elapsed_s=round(time.perf_counter() - started, 3),
        prefixes_tracked=len(prefixes),
        prefixes_overflowed=any(p is None for p, _ in stats),
        prefixes=_prefix_rows(stats, total, top_prefixes),
        types=_type_rows(stats, total, separator, depth),
        top_keys=[
            _big_key(k, t, m, n, separator, depth) for m, k, t, n in sorted(heap, key=lambda e: (-e[0], e[1]))
        ],
        unavailable=unavailable,
    )


def _big_key(key: bytes, typ: bytes, mem: int, n: int, sep: bytes, depth: int) -> BigKey:
    return BigKey(
        key=display_key(key),
        type=display_key(typ),
        bytes=mem,
        elements=n,
        prefix=prefix_label(prefix_of(key, sep, depth))[0],
    )


def _prefix_rows(
    stats: Mapping[tuple[bytes | None, bytes], list[Any]], total: int, limit: int
) -> list[PrefixMemory]:
    """One row per prefix, biggest first; past ``limit`` rows the rest is summed into one row."""
    merged: dict[bytes | None, list[Any]] = {}
    for (prefix, typ), b in stats.items():
        row = merged.setdefault(prefix, [0, 0, 0, Counter(), -1, b""])
        row[0] += b[0]
        row[1] += b[1]
        row[2] += b[2]
        row[3][display_key(typ)] += b[0]
        if b[3] > row[4]:
            row[4], row[5] = b[3], b[4]
    ordered = sorted(merged.items(), key=lambda item: (-item[1][1], item[0] or b""))
    rows: list[PrefixMemory] = []
    for prefix, r in ordered[:limit]:
        name, pattern = prefix_label(prefix)
        rows.append(
            PrefixMemory(
                prefix=name,
                pattern=pattern,
                keys=r[0],
                bytes=r[1],
                elements=r[2],
                share=round(r[1] / total, 4) if total else 0.0,
                types=dict(r[3].most_common()),
                biggest_key=display_key(r[5]) if r[4] >= 0 else None,
                biggest_key_bytes=max(r[4], 0),
            )
        )
    rest = ordered[limit:]
    if rest:
        keys = sum(r[0] for _, r in rest)
        size = sum(r[1] for _, r in rest)
        types: Counter[str] = Counter()
        for _, r in rest:
            types.update(r[3])
        rows.append(
            PrefixMemory(
                prefix=f"({len(rest)} smaller prefixes)",
                pattern=None,
                keys=keys,
                bytes=size,
                elements=sum(r[2] for _, r in rest),
                share=round(size / total, 4) if total else 0.0,
                types=dict(types.most_common()),
                biggest_key=None,
                biggest_key_bytes=0,
            )
        )
    return rows


def _type_rows(
    stats: Mapping[tuple[bytes | None, bytes], list[Any]], total: int, sep: bytes, depth: int
) -> list[TypeMemory]:
    per_type: dict[bytes, list[Any]] = {}
    for (_, typ), b in stats.items():
        row = per_type.setdefault(typ, [0, 0, 0, b, b])
        row[0] += b[0]
        row[1] += b[1]
        row[2] += b[2]
        if b[3] > row[3][3]:
            row[3] = b
        if b[6] > row[4][6]:
            row[4] = b
    rows: list[TypeMemory] = []
    for typ, (keys, size, elements, by_mem, by_n) in sorted(per_type.items(), key=lambda it: -it[1][1]):
        name = display_key(typ)
        rows.append(
            TypeMemory(
                type=name,
                keys=keys,
                bytes=size,
                elements=elements,
                element_unit=ELEMENT_UNITS.get(name, "elements"),
                avg_bytes=round(size / keys, 1) if keys else 0.0,
                share=round(size / total, 4) if total else 0.0,
                biggest_by_memory=_big_key(by_mem[4], typ, by_mem[3], by_mem[5], sep, depth),
                biggest_by_elements=_big_key(by_n[7], typ, by_n[8], by_n[6], sep, depth),
            )
        )
    return rows
