"""Redis algorithms behind the diagnostic steps: pure async functions returning typed results.

Every function takes a ``redis.asyncio.Redis`` client with bytes replies (key names may be binary)
and never holds the whole key space: scans are streamed batch by batch. Commands a managed Redis
may refuse (CONFIG, CLIENT LIST, LATENCY, scripting) are optional: their refusal is recorded in the
result's ``unavailable`` mapping and the rest of the result still comes back. Connection errors and
timeouts are not caught here; the steps translate them with :func:`bot.redisconn.redis_errors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis import exceptions as rex

T = TypeVar("T")

NO_PREFIX = "(no prefix)"
OTHER_PREFIXES = "(other prefixes)"

# Element unit of each type's length command, as --bigkeys reports them.
ELEMENT_UNITS = {
    "string": "bytes",
    "list": "items",
    "hash": "fields",
    "set": "members",
    "zset": "members",
    "stream": "entries",
}

# Commands a BullMQ worker (or any queue consumer) blocks on while waiting for jobs: normal, not stuck.
QUEUE_BLOCKING_COMMANDS = frozenset(
    {
        "brpoplpush",
        "blmove",
        "bzpopmin",
        "bzpopmax",
        "brpop",
        "blpop",
        "blmpop",
        "bzmpop",
        "xread",
        "xreadgroup",
    }
)

# Commands worth flagging when seen in live traffic: they block the server on large key spaces.
DANGEROUS_COMMANDS = frozenset({"KEYS", "FLUSHALL", "FLUSHDB"})

# Used when COMMAND is refused: commands whose first argument is not a key.
_KEYLESS_COMMANDS = frozenset(
    {
        "PING", "ECHO", "INFO", "SELECT", "MULTI", "EXEC", "DISCARD", "AUTH", "HELLO", "CLIENT", "CONFIG",
        "SCRIPT", "EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO", "FUNCTION", "PUBLISH",
        "SUBSCRIBE", "PSUBSCRIBE", "UNSUBSCRIBE", "PUNSUBSCRIBE", "SCAN", "DBSIZE", "TIME", "COMMAND", "QUIT",
        "FLUSHDB", "FLUSHALL", "KEYS", "RANDOMKEY", "WAIT", "SLOWLOG", "LATENCY", "MEMORY", "OBJECT",
        "CLUSTER", "READONLY", "READWRITE", "ROLE", "LASTSAVE", "XREAD", "XREADGROUP", "ACL", "RESET",
    }
)  # fmt: skip

ProgressCallback = Callable[[int, int], Awaitable[None]]


def display_key(key: bytes) -> str:
    """A key name fit for people: UTF-8 where it is, ``\\xNN`` escapes where it is not."""
    return key.decode("utf-8", "backslashreplace")


def glob_escape(text: str) -> str:
    """``text`` with glob metacharacters escaped: ``glob_escape(prefix) + "*"`` matches it literally."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def to_jsonable(obj: Any) -> dict[str, Any]:
    """A result dataclass as plain JSON-able data (for ``StepOutput.data``)."""
    return asdict(obj)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return display_key(value)
    return str(value)


def _quantile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank quantile: a value that really occurred, no interpolation."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


async def optional(aw: Awaitable[T], what: str, unavailable: dict[str, str]) -> T | None:
    """Await ``aw``; if the server refuses it (ACL, renamed or blocked command), note why and return None.

    Only server replies are absorbed: a dead connection still raises, so a step never reports a
    broken Redis as a partial success.
    """
    try:
        return await aw
    except rex.ResponseError as exc:
        unavailable[what] = f"{what} refused by the server: {exc}"
        return None


async def call(client: aioredis.Redis, *args: Any) -> Any:
    """One command by name, for what redis-py has no typed method for or what we parse ourselves."""
    return await client.execute_command(*args)  # type: ignore[no-untyped-call]


async def scan_batch(client: aioredis.Redis, cursor: int, count: int) -> tuple[int, list[bytes]]:
    """One SCAN step: the next cursor (0 when the scan is complete) and a batch of key names."""
    next_cursor, keys = await client.scan(cursor, count=count)
    return int(next_cursor), [k if isinstance(k, bytes) else k.encode() for k in keys]


def _prefix_of(key: bytes, sep: bytes, depth: int) -> bytes:
    """The key up to and including its ``depth``-th separator (fewer if it has fewer); b"" if none."""
    end = 0
    pos = 0
    for _ in range(depth):
        i = key.find(sep, pos)
        if i < 0:
            break
        end = pos = i + len(sep)
    return key[:end]


def _prefix_label(prefix: bytes | None) -> tuple[str, str | None]:
    """Display name and glob pattern of a prefix bucket (None is the overflow bucket)."""
    if prefix is None:
        return OTHER_PREFIXES, None
    if not prefix:
        return NO_PREFIX, None
    name = display_key(prefix)
    return name, glob_escape(name) + "*"


# --------------------------------------------------------------------------------------------- ping


@dataclass
class PingStats:
    """Round trips of PING from the bot, in milliseconds (the network plus Redis' own delay)."""

    count: int
    min_ms: float
    avg_ms: float
    max_ms: float
    samples_ms: list[float]


async def ping_latency(client: aioredis.Redis, count: int = 3) -> PingStats:
    """PING ``count`` times after one untimed PING, so connection setup is not counted as latency."""
    await call(client, "PING")
    samples: list[float] = []
    for _ in range(count):
        start = time.perf_counter()
        await call(client, "PING")
        samples.append(round((time.perf_counter() - start) * 1000, 3))
    return PingStats(
        count=count,
        min_ms=min(samples),
        avg_ms=round(sum(samples) / len(samples), 3),
        max_ms=max(samples),
        samples_ms=samples,
    )


# --------------------------------------------------------------------------------------------- info


async def read_info(client: aioredis.Redis, section: str) -> dict[str, Any]:
    """INFO ``section`` parsed by redis-py into a dict (nested dicts for keyspace and commandstats)."""
    return dict(await client.info(section))


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
    elapsed_s: float
    prefixes_tracked: int
    prefixes_overflowed: bool
    prefixes: list[PrefixMemory]
    types: list[TypeMemory]
    top_keys: list[BigKey]
    unavailable: dict[str, str] = field(default_factory=dict)


# One round trip per batch: the script runs the SCAN step itself, then TYPE, MEMORY USAGE and the
# type's length command for every key found, and returns {next cursor, keys, type, bytes, elements,
# ...}. Key names never travel back to Redis, and nothing can vanish between SCAN and measurement.
# MEMORY USAGE is nil (Lua false) for a missing key; such keys are skipped by the caller. The script
# only reads, touches only keys SCAN found on this node, and has no shebang so it also runs on
# Redis 6 and while Redis is OOM.
_REPORT_SCRIPT = """
local lencmd = {string='STRLEN', list='LLEN', hash='HLEN', set='SCARD', zset='ZCARD', stream='XLEN'}
local page = redis.call('SCAN', ARGV[1], 'COUNT', ARGV[2])
local keys = page[2]
local samples = ARGV[3]
local out = {page[1], keys}
for i = 1, #keys do
  local k = keys[i]
  local t = redis.call('TYPE', k)['ok']
  local c = lencmd[t]
  out[3 * i] = t
  out[3 * i + 1] = redis.call('MEMORY', 'USAGE', k, 'SAMPLES', samples)
  out[3 * i + 2] = c and redis.call(c, k) or 0
end
return out
"""
_REPORT_SCRIPT_SHA = hashlib.sha1(_REPORT_SCRIPT.encode(), usedforsecurity=False).hexdigest()
_LENGTH_COMMANDS = {
    b"string": "STRLEN",
    b"list": "LLEN",
    b"hash": "HLEN",
    b"set": "SCARD",
    b"zset": "ZCARD",
    b"stream": "XLEN",
}


class _ReportScript:
    """Runs the report script batch after batch on one connection, one request ahead.

    :meth:`prefetch` sends the next batch's request before the caller works through the current
    reply, so Redis measures batch n+1 while Python aggregates batch n: the scan takes about as long
    as the slower of the two sides instead of their sum. Each call is still one short script (about
    a millisecond per 1000 keys), so other clients wait no longer than before. At most one request is
    in flight; :meth:`close` drops the connection if one is left unread (an error or cancellation).
    """

    def __init__(self, conn: aioredis.Redis, count: int, samples: int) -> None:
        self.conn = conn
        self.count = count
        self.samples = samples
        self.loaded = False
        self.pending: int | None = None
        self.batches = 0

    async def _send(self, cursor: int) -> None:
        connection = self.conn.connection
        assert connection is not None
        args = (cursor, self.count, self.samples)
        if self.loaded:
            await connection.send_command("EVALSHA", _REPORT_SCRIPT_SHA, 0, *args)
        else:
            await connection.send_command("EVAL", _REPORT_SCRIPT, 0, *args)
        self.pending = cursor

    async def _read(self) -> Any:
        connection = self.conn.connection
        assert connection is not None
        try:
            reply = await connection.read_response()
        except rex.ResponseError:
            self.pending = None  # an error reply is still the reply: the connection stays in step
            raise
        self.pending = None
        return reply

    async def prefetch(self, cursor: int) -> None:
        await self._send(cursor)

    async def fetch(self, cursor: int) -> tuple[int, list[bytes], list[Any]]:
        """The batch at ``cursor``: (next cursor, keys, flat [type, bytes, elements, ...])."""
        await self.conn.initialize()
        if self.pending != cursor:
            await self._send(cursor)
        try:
            reply = await self._read()
        except rex.NoScriptError:  # the script cache was flushed meanwhile: send the body again
            self.loaded = False
            await self._send(cursor)
            reply = await self._read()
        self.loaded = True
        self.batches += 1
        return int(reply[0]), list(reply[1]), reply[2:]

    async def close(self) -> None:
        if self.pending is not None and self.conn.connection is not None:
            self.pending = None
            await self.conn.connection.disconnect()


async def _batch_by_pipeline(client: aioredis.Redis, keys: list[bytes], samples: int) -> list[Any]:
    """The same flat [type, bytes, elements, ...] reply as the script, from two pipelined round trips.

    Much slower client-side than the script (redis-py's per-command cost), but needs no scripting
    permission. A key that changed type between the two round trips counts 0 elements.
    """
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.execute_command("TYPE", key)
        pipe.execute_command("MEMORY", "USAGE", key, "SAMPLES", samples)
    first = await pipe.execute()
    types = first[0::2]
    pipe = client.pipeline(transaction=False)
    wanted: list[int] = []
    for i, (key, typ) in enumerate(zip(keys, types, strict=True)):
        command = _LENGTH_COMMANDS.get(typ)
        if command is not None:
            pipe.execute_command(command, key)
            wanted.append(i)
    lengths = [0] * len(keys)
    if wanted:
        replies = await pipe.execute(raise_on_error=False)
        for i, n in zip(wanted, replies, strict=True):
            lengths[i] = n if isinstance(n, int) else 0
    out: list[Any] = []
    for typ, mem, n in zip(types, first[1::2], lengths, strict=True):
        out += (typ, mem, n)
    return out


@contextlib.asynccontextmanager
async def _no_touch_client(client: aioredis.Redis) -> AsyncIterator[tuple[aioredis.Redis, bool]]:
    """A single-connection client with CLIENT NO-TOUCH on where the server has it (Redis >= 7.2).

    Reading every key's length would otherwise refresh its LRU/LFU data and skew what eviction
    removes next; older servers refuse the subcommand, and then the report says so.
    """
    single = client.client()
    no_touch = False
    try:
        try:
            await call(single, "CLIENT", "NO-TOUCH", "ON")
            no_touch = True
        except rex.ResponseError:
            no_touch = False
        yield single, no_touch
    finally:
        if no_touch:
            with contextlib.suppress(rex.RedisError, OSError):
                await call(single, "CLIENT", "NO-TOUCH", "OFF")
        await single.aclose()


async def memory_report(
    client: aioredis.Redis,
    *,
    top: int = 10,
    count: int = 1000,
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
    """
    started = time.perf_counter()
    unavailable: dict[str, str] = {}
    dbsize = int(await client.dbsize())
    seplen = len(separator)
    # (prefix, type) -> [keys, bytes, elements, biggest by bytes: bytes, key, elements,
    #                     biggest by elements: elements, key, bytes]; prefix None = over max_prefixes.
    stats: dict[tuple[bytes | None, bytes], list[Any]] = {}
    prefixes: set[bytes] = set()
    heap: list[tuple[int, bytes, bytes, int]] = []
    heap_floor = -1  # keys smaller than this cannot enter the full heap
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
                prefixes.add(prefix)
        bucket = stats.get((bucket_prefix, typ))
        if bucket is None:
            bucket = stats[(bucket_prefix, typ)] = [0, 0, 0, -1, b"", 0, -1, b"", 0]
        return bucket

    async with _no_touch_client(client) as (conn, no_touch):
        script = _ReportScript(conn, count, samples) if use_script else None
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
                    await script.prefetch(cursor)
                if keys:
                    if reply is None:
                        reply = await _batch_by_pipeline(conn, keys, samples)
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
                            prefix = _prefix_of(key, separator, depth)
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
        prefix=_prefix_label(_prefix_of(key, sep, depth))[0],
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
        name, pattern = _prefix_label(prefix)
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


# ------------------------------------------------------------------------------------------ slowlog


@dataclass
class SlowlogEntry:
    """One SLOWLOG entry; arguments are shortened for display (the log itself truncates too)."""

    id: int
    time: str
    timestamp: int
    duration_ms: float
    command: str
    args: list[str]
    client_addr: str
    client_name: str


@dataclass
class SlowlogReport:
    entries: list[SlowlogEntry]
    length: int | None
    log_slower_than_us: int | None
    max_len: int | None
    unavailable: dict[str, str] = field(default_factory=dict)


def shorten(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, marking the cut with its original length."""
    if len(text) <= limit:
        return text
    return f"{text[: max(limit - 12, 1)]}...({len(text)} ch)"


def format_command(args: Iterable[str], *, max_args: int = 8, max_arg_len: int = 40) -> str:
    """A readable one-line command: name upper-cased, long values and long argument lists cut."""
    items = list(args)
    if not items:
        return ""
    shown = [items[0].upper(), *(shorten(a, max_arg_len) for a in items[1:max_args])]
    if len(items) > max_args:
        shown.append(f"... (+{len(items) - max_args} args)")
    return " ".join(shown)


async def slowlog(client: aioredis.Redis, n: int = 10) -> SlowlogReport:
    """SLOWLOG GET ``n`` and SLOWLOG LEN, plus the logging threshold when CONFIG is allowed."""
    unavailable: dict[str, str] = {}
    raw = await call(client, "SLOWLOG", "GET", n)
    entries: list[SlowlogEntry] = []
    for item in raw:
        # Redis Enterprise puts a complexity figure before the arguments.
        offset = 1 if not isinstance(item[3], list) else 0
        args = [shorten(_text(a), 120) for a in item[3 + offset]]
        rest = item[4 + offset :]
        entries.append(
            SlowlogEntry(
                id=int(item[0]),
                time=_iso(int(item[1])),
                timestamp=int(item[1]),
                duration_ms=round(int(item[2]) / 1000, 3),
                command=format_command(args),
                args=args,
                client_addr=_text(rest[0]) if len(rest) > 0 else "",
                client_name=_text(rest[1]) if len(rest) > 1 else "",
            )
        )
    length = await optional(call(client, "SLOWLOG", "LEN"), "SLOWLOG LEN", unavailable)
    config = await optional(call(client, "CONFIG", "GET", "slowlog-*"), "CONFIG GET", unavailable)
    settings = _config_dict(config)
    return SlowlogReport(
        entries=entries,
        length=int(length) if length is not None else None,
        log_slower_than_us=_int_or_none(settings.get("slowlog-log-slower-than")),
        max_len=_int_or_none(settings.get("slowlog-max-len")),
        unavailable=unavailable,
    )


def _config_dict(reply: Any) -> dict[str, str]:
    """CONFIG GET's reply (a RESP3 map or a RESP2 flat list) as a str -> str dict."""
    if reply is None:
        return {}
    if isinstance(reply, Mapping):
        return {_text(k): _text(v) for k, v in reply.items()}
    items = list(reply)
    return {_text(k): _text(v) for k, v in zip(items[0::2], items[1::2], strict=True)}


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


# ------------------------------------------------------------------------------------------ clients


@dataclass
class ClientEntry:
    """One connection from CLIENT LIST, with the memory it holds on the server."""

    id: int
    addr: str
    name: str
    user: str
    cmd: str
    flags: str
    age_s: int
    idle_s: int
    tot_mem: int
    omem: int
    qbuf: int


@dataclass
class ClientsReport:
    source: str
    total: int | None
    maxclients: int | None
    blocked: int | None
    blocked_queue_workers: int | None
    blocked_by_cmd: dict[str, int]
    pubsub: int | None
    monitors: int | None
    replicas: int | None
    by_name: dict[str, int]
    by_host: dict[str, int]
    by_cmd: dict[str, int]
    total_mem: int | None
    total_omem: int | None
    total_qbuf: int | None
    top_memory: list[ClientEntry]
    info: dict[str, Any]
    unavailable: dict[str, str] = field(default_factory=dict)


def parse_client_list(raw: bytes | str) -> list[dict[str, str]]:
    """CLIENT LIST lines as dicts; a value with spaces (a unix socket path) is glued back together."""
    text = raw.decode("utf-8", "backslashreplace") if isinstance(raw, bytes) else raw
    clients: list[dict[str, str]] = []
    for line in text.splitlines():
        entry: dict[str, str] = {}
        last = ""
        for token in line.split(" "):
            name, eq, value = token.partition("=")
            if eq:
                entry[name] = value
                last = name
            elif last:
                entry[last] += " " + token
        if entry:
            clients.append(entry)
    return clients


def _host(addr: str) -> str:
    host, sep, _port = addr.rpartition(":")
    return host if sep else addr


async def clients_report(client: aioredis.Redis, *, top: int = 10) -> ClientsReport:
    """CLIENT LIST grouped by name, host and last command; INFO clients when CLIENT LIST is refused.

    Queue workers blocked on BRPOPLPUSH/BZPOPMIN/... are counted apart: for BullMQ that is idle
    waiting, not a problem.
    """
    unavailable: dict[str, str] = {}
    info = dict(await client.info("clients"))
    maxclients = _int_or_none(str(info["maxclients"])) if "maxclients" in info else None
    raw = await optional(call(client, "CLIENT", "LIST"), "CLIENT LIST", unavailable)
    if raw is None:
        return ClientsReport(
            source="info",
            total=int(info.get("connected_clients", 0)),
            maxclients=maxclients,
            blocked=int(info.get("blocked_clients", 0)),
            blocked_queue_workers=None,
            blocked_by_cmd={},
            pubsub=None,
            monitors=None,
            replicas=None,
            by_name={},
            by_host={},
            by_cmd={},
            total_mem=None,
            total_omem=None,
            total_qbuf=None,
            top_memory=[],
            info=info,
            unavailable=unavailable,
        )
    entries = [
        ClientEntry(
            id=int(c.get("id", 0)),
            addr=c.get("addr", ""),
            name=c.get("name", ""),
            user=c.get("user", ""),
            cmd=c.get("cmd", ""),
            flags=c.get("flags", ""),
            age_s=int(c.get("age", 0)),
            idle_s=int(c.get("idle", 0)),
            tot_mem=int(c.get("tot-mem", 0)),
            omem=int(c.get("omem", 0)),
            qbuf=int(c.get("qbuf", 0)),
        )
        for c in parse_client_list(raw)
    ]
    blocked = [e for e in entries if "b" in e.flags]
    return ClientsReport(
        source="client list",
        total=len(entries),
        maxclients=maxclients,
        blocked=len(blocked),
        blocked_queue_workers=sum(1 for e in blocked if e.cmd in QUEUE_BLOCKING_COMMANDS),
        blocked_by_cmd=dict(Counter(e.cmd for e in blocked).most_common()),
        pubsub=sum(1 for e in entries if "P" in e.flags),
        monitors=sum(1 for e in entries if "O" in e.flags),
        replicas=sum(1 for e in entries if "S" in e.flags),
        by_name=dict(Counter(e.name or "(unnamed)" for e in entries).most_common(top)),
        by_host=dict(Counter(_host(e.addr) for e in entries).most_common(top)),
        by_cmd=dict(Counter(e.cmd for e in entries).most_common(top)),
        total_mem=sum(e.tot_mem for e in entries),
        total_omem=sum(e.omem for e in entries),
        total_qbuf=sum(e.qbuf for e in entries),
        top_memory=heapq.nlargest(top, entries, key=lambda e: (e.tot_mem, e.omem, e.qbuf)),
        info=info,
        unavailable=unavailable,
    )


# ------------------------------------------------------------------------------------------ latency


@dataclass
class LatencyEvent:
    """A LATENCY LATEST row: the server's own record of a slow event (e.g. ``command``, ``fork``)."""

    event: str
    time: str
    timestamp: int
    latest_ms: int
    max_ms: int


@dataclass
class LatencyReport:
    ping: PingStats
    events: list[LatencyEvent] | None
    monitor_threshold_ms: int | None
    cpu_percent: float | None
    cpu_interval_s: float
    ops_per_sec: int | None
    unavailable: dict[str, str] = field(default_factory=dict)


async def latency_report(client: aioredis.Redis, *, interval: float = 1.0, pings: int = 5) -> LatencyReport:
    """The runbook's three latency checks: slow server events, network round trip, and CPU.

    CPU is the change of used_cpu_sys + used_cpu_user over ``interval`` seconds of wall time, as a
    percentage of one core (Redis executes commands on one thread, so near 100% means saturated).
    """
    unavailable: dict[str, str] = {}
    ping = await ping_latency(client, pings)
    raw_events = await optional(call(client, "LATENCY", "LATEST"), "LATENCY LATEST", unavailable)
    events = None
    if raw_events is not None:
        events = [
            LatencyEvent(
                event=_text(e[0]),
                time=_iso(int(e[1])),
                timestamp=int(e[1]),
                latest_ms=int(e[2]),
                max_ms=int(e[3]),
            )
            for e in raw_events
        ]
    config = await optional(
        call(client, "CONFIG", "GET", "latency-monitor-threshold"), "CONFIG GET", unavailable
    )
    threshold = _int_or_none(_config_dict(config).get("latency-monitor-threshold"))
    before = await client.info("cpu")
    t0 = time.monotonic()
    await asyncio.sleep(interval)
    after = await client.info("cpu")
    wall = time.monotonic() - t0
    used = (after["used_cpu_sys"] + after["used_cpu_user"]) - (
        before["used_cpu_sys"] + before["used_cpu_user"]
    )
    stats = await client.info("stats")
    return LatencyReport(
        ping=ping,
        events=events,
        monitor_threshold_ms=threshold,
        cpu_percent=round(100 * used / wall, 1) if wall > 0 else None,
        cpu_interval_s=round(wall, 3),
        ops_per_sec=_int_or_none(str(stats.get("instantaneous_ops_per_sec"))),
        unavailable=unavailable,
    )


# ------------------------------------------------------------------------------------------ monitor


@dataclass
class MonitorClient:
    addr: str
    name: str | None
    commands: int


@dataclass
class MonitorReport:
    """What MONITOR saw in a bounded window: busiest commands, key prefixes and clients."""

    seconds: float
    commands: int
    capped: bool
    rate_per_sec: float
    top_commands: dict[str, int]
    top_prefixes: dict[str, int]
    top_clients: list[MonitorClient]
    dangerous: dict[str, int]
    key_positions: str
    unavailable: dict[str, str] = field(default_factory=dict)


def _quoted_arg(args: bytes, index: int) -> bytes | None:
    """The ``index``-th ``"quoted"`` token of a MONITOR line (escapes kept, as MONITOR shows them)."""
    pos = 0
    size = len(args)
    for i in range(index + 1):
        if pos >= size or args[pos] != 0x22:
            return None
        end = pos + 1
        while True:
            end = args.find(b'"', end)
            if end < 0:
                return None
            backslashes = 0
            k = end - 1
            while args[k] == 0x5C:
                backslashes += 1
                k -= 1
            if backslashes % 2 == 0:
                break
            end += 1
        if i == index:
            return args[pos + 1 : end]
        pos = end + 2
    return None


async def _key_positions(client: aioredis.Redis, unavailable: dict[str, str]) -> dict[bytes, int] | None:
    """Command name -> position of its first key, from COMMAND (None when COMMAND is refused)."""
    table = await optional(client.command(), "COMMAND", unavailable)
    if table is None:
        return None
    positions: dict[bytes, int] = {}
    for name, spec in table.items():
        first = spec.get("first_key_pos")
        if isinstance(first, int) and first > 0:
            positions[_text(name).upper().encode()] = first
    return positions


async def monitor_sample(
    client: aioredis.Redis,
    *,
    seconds: float = 3.0,
    max_commands: int = 100_000,
    separator: bytes = b":",
    depth: int = 1,
    top: int = 10,
) -> MonitorReport:
    """Run MONITOR for at most ``seconds`` and ``max_commands`` lines on a connection of its own.

    The connection is never shared with other steps and is closed on every way out (end of the
    window, error, cancellation), so the server never keeps streaming to a forgotten monitor.
    Prefixes count the first key of each command.
    """
    unavailable: dict[str, str] = {}
    positions = await _key_positions(client, unavailable)
    commands: Counter[bytes] = Counter()
    prefix_counts: Counter[bytes] = Counter()
    clients: Counter[bytes] = Counter()
    seen = 0
    loop = asyncio.get_running_loop()
    conn = client.connection_pool.make_connection()  # type: ignore[no-untyped-call]
    try:
        await conn.connect()
        await conn.send_command("MONITOR")
        reply = await conn.read_response()
        if reply not in (b"OK", "OK", True):
            raise rex.ResponseError(f"MONITOR answered {reply!r}")
        started = loop.time()
        deadline = started + seconds
        while seen < max_commands:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                line = await conn.read_response(disable_decoding=True, timeout=remaining)
            except rex.TimeoutError:
                break
            if not isinstance(line, bytes):
                continue
            seen += 1
            open_at = line.find(b" [")
            close_at = line.find(b"] ", open_at)
            if open_at < 0 or close_at < 0:
                continue
            clients[line[line.find(b" ", open_at + 2) + 1 : close_at]] += 1
            args = line[close_at + 2 :]
            name_end = args.find(b'"', 1)
            name = args[1:name_end].upper()
            commands[name] += 1
            if positions is not None:
                position = positions.get(name, 0)
            else:
                position = 0 if name.decode("ascii", "replace") in _KEYLESS_COMMANDS else 1
            if position:
                key = _quoted_arg(args, position)
                if key is not None:
                    prefix_counts[_prefix_of(key, separator, depth)] += 1
        elapsed = loop.time() - started
    finally:
        await conn.disconnect(nowait=True)
    names = await _client_names(client, unavailable)
    return MonitorReport(
        seconds=round(elapsed, 3),
        commands=seen,
        capped=seen >= max_commands,
        rate_per_sec=round(seen / elapsed, 1) if elapsed > 0 else 0.0,
        top_commands={_text(k): v for k, v in commands.most_common(top)},
        top_prefixes={_prefix_label(p)[0]: v for p, v in prefix_counts.most_common(top)},
        top_clients=[
            MonitorClient(addr=_text(a), name=names.get(_text(a)), commands=v)
            for a, v in clients.most_common(top)
        ],
        dangerous={_text(k): v for k, v in commands.items() if _text(k) in DANGEROUS_COMMANDS},
        key_positions="COMMAND" if positions is not None else "first argument (COMMAND refused)",
        unavailable=unavailable,
    )


async def _client_names(client: aioredis.Redis, unavailable: dict[str, str]) -> dict[str, str]:
    raw = await optional(call(client, "CLIENT", "LIST"), "CLIENT LIST", unavailable)
    if raw is None:
        return {}
    return {c["addr"]: c["name"] for c in parse_client_list(raw) if c.get("name") and "addr" in c}


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
    policy = _config_dict(config).get("maxmemory-policy")
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
                prefix = _prefix_of(key, separator, depth)
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
        name, pattern = _prefix_label(prefix)
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
