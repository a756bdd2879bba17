"""Redis Cluster: the primaries, deletion that survives a resharding, and reports merged across nodes.

Each primary holds its own slots, so a keyspace walk is one SCAN per primary, and a multi-key
``UNLINK`` of keys from different slots is refused (``CROSSSLOT``): keys are unlinked one by one in
a pipeline instead, and a key that moved meanwhile is followed to its new node (``MOVED``) or asked
for there while its slot migrates (``ASK``). A resharding during an eviction can move keys from a
primary not yet walked to one already walked; the walk is then repeated until the slot map holds
still, so no key is missed.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as rex

from bot.errors import ActionStopped
from bot.eviction import (
    CheckpointFn,
    EvictionEstimate,
    EvictionResult,
    ProgressFn,
    StopFn,
    estimate_eviction,
    evict,
)
from bot.redisops.common import call
from bot.redisops.memory import BigKey, MemoryReport, PrefixMemory, TypeMemory

Connect = Callable[[str, int], aioredis.Redis]
"""A client for the node at (host, port), with the target's credentials."""
Primaries = Callable[[], Awaitable[list[tuple[str, aioredis.Redis]]]]
"""The current primaries as (``host:port``, client), asked afresh each time."""
MAX_PASSES = 3


@dataclass(frozen=True)
class ClusterNode:
    id: str
    host: str
    port: int
    slots: tuple[str, ...]
    """Slot ranges as CLUSTER NODES lists them; ``[slot->-id]`` entries mean a migration under way."""

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"


def parse_nodes(text: str, seed_host: str) -> list[ClusterNode]:
    """The reachable primaries of a CLUSTER NODES reply (an empty host is the seed's), by address."""
    nodes = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        flags = set(parts[2].split(","))
        if "master" not in flags or flags & {"fail", "noaddr", "handshake"}:
            continue
        host, _, port = parts[1].split("@")[0].rpartition(":")
        nodes.append(ClusterNode(parts[0], host or seed_host, int(port), tuple(parts[8:])))
    return sorted(nodes, key=lambda n: (n.host, n.port))


async def cluster_enabled(client: aioredis.Redis) -> bool:
    """INFO cluster says ``cluster_enabled:1``."""
    return bool(int((await client.info("cluster")).get("cluster_enabled", 0) or 0))


async def primaries_of(client: aioredis.Redis, seed_host: str) -> list[ClusterNode]:
    reply = await call(client, "CLUSTER", "NODES")
    return parse_nodes(reply.decode() if isinstance(reply, bytes) else str(reply), seed_host)


def slot_map(nodes: Sequence[ClusterNode]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """What changes when a slot moves (or starts or ends a migration): compared between passes."""
    return tuple((n.id, n.slots) for n in nodes)


async def estimate_on(
    primaries: list[tuple[str, aioredis.Redis]], pattern: str, protected: Sequence[str], count: int
) -> EvictionEstimate:
    """:func:`bot.eviction.estimate_eviction` on every primary at once, summed."""
    parts = await asyncio.gather(
        *(estimate_eviction(c, pattern, protected, count=count) for _, c in primaries)
    )
    if len(parts) == 1:
        return parts[0]
    return EvictionEstimate(
        matched=sum(e.matched for e in parts),
        protected=sum(e.protected for e in parts),
        sampled=sum(e.sampled for e in parts),
        sample_bytes=sum(e.sample_bytes for e in parts),
        samples=[k for e in parts for k in e.samples][:5],
        scanned_calls=sum(e.scanned_calls for e in parts),
    )


# ------------------------------------------------------------------------------------------- unlink


async def unlink_each(client: aioredis.Redis, keys: list[bytes], connect: Connect, hops: int = 5) -> int:
    """UNLINK ``keys`` one per command, in one pipeline; how many were removed.

    A key a resharding moved is followed: ``MOVED`` to its new owner, ``ASK`` (its slot is being
    migrated and it left already) with ``ASKING`` on the target node, ``TRYAGAIN`` after a pause.
    """
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.unlink(key)
    replies = await pipe.execute(raise_on_error=False)
    removed = 0
    for key, reply in zip(keys, replies, strict=True):
        node = client
        for _ in range(hops):
            if not isinstance(reply, Exception):
                removed += int(reply)
                break
            if isinstance(reply, rex.AskError):  # also MovedError, its subclass
                node = connect(reply.host, reply.port)
                one = node.pipeline(transaction=False)
                if not isinstance(reply, rex.MovedError):
                    one.execute_command("ASKING")
                one.unlink(key)
                reply = (await one.execute(raise_on_error=False))[-1]
            elif isinstance(reply, rex.TryAgainError):
                await asyncio.sleep(0.05)  # a multi-key step of the migration is under way
                try:
                    reply = await node.unlink(key)
                except rex.ResponseError as exc:
                    reply = exc
            else:
                raise reply
        else:
            raise (
                reply
                if isinstance(reply, Exception)
                else RuntimeError(f"{key!r} moved more than {hops} times")
            )
    return removed


async def evict_cluster(
    primaries: Primaries,
    topology: Callable[[], Awaitable[list[ClusterNode]]],
    connect: Connect,
    pattern: str,
    protected: Sequence[str],
    *,
    max_keys: int,
    limit_name: str,
    count: int,
    batch: int,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    checkpoint: CheckpointFn | None = None,
) -> tuple[EvictionResult, dict[str, int]]:
    """:func:`bot.eviction.evict` on every primary in turn (paced per node, the caps counted over
    all of them), walking again while the slot map changed under it (at most 3 walks).

    Returns the totals and the keys deleted per node.
    """
    total = EvictionResult()
    per_node: Counter[str] = Counter()
    for walk in range(MAX_PASSES):
        before = slot_map(await topology())
        for addr, client in await primaries():
            done = replace(total)

            async def node_progress(msg: str, addr: str = addr) -> None:
                if progress is not None:
                    await progress(f"{addr}: {msg}")

            async def node_checkpoint(node: dict[str, object], done: EvictionResult = done) -> None:
                if checkpoint is not None:
                    await checkpoint(_plus(done.done(), node))

            async def unlink(keys: list[bytes], client: aioredis.Redis = client) -> int:
                return await unlink_each(client, keys, connect)

            try:
                res = await evict(
                    client,
                    pattern,
                    protected,
                    max_keys=max_keys - total.deleted,
                    limit_name=limit_name,
                    count=count,
                    batch=batch,
                    progress=node_progress,
                    should_stop=should_stop,
                    checkpoint=node_checkpoint,
                    unlinker=unlink,
                )
            except ActionStopped as exc:
                raise ActionStopped(exc.reason, _plus(done.done(), exc.done)) from exc
            per_node[addr] += res.deleted
            total = _add(total, res)
        if slot_map(await topology()) == before:
            break
        if progress is not None:
            await progress(f"the slot map changed during walk {walk + 1}: walking the primaries again")
    return total, dict(per_node)


def _plus(a: dict[str, object], b: dict[str, object]) -> dict[str, object]:
    return {k: int(a.get(k, 0)) + int(b.get(k, 0)) for k in {*a, *b}}  # type: ignore[call-overload]


def _add(a: EvictionResult, b: EvictionResult) -> EvictionResult:
    return EvictionResult(
        deleted=a.deleted + b.deleted,
        matched=a.matched + b.matched,
        protected_skipped=a.protected_skipped + b.protected_skipped,
        batches=a.batches + b.batches,
        pauses=a.pauses + b.pauses,
        duration_s=a.duration_s + b.duration_s,
        slowest_call_ms=max(a.slowest_call_ms, b.slowest_call_ms),
    )


# ------------------------------------------------------------------------------------ memory report


def merge_reports(reports: Sequence[MemoryReport], *, top: int, top_prefixes: int) -> MemoryReport:
    """One report from every primary's: sums per prefix and type, the biggest keys of all nodes.

    Node reports must keep every prefix row (``top_prefixes`` as large as ``max_prefixes``), so a
    prefix small on each node but big overall is counted whole.
    """
    total = sum(r.total_bytes for r in reports)
    used = sum(r.used_memory for r in reports)
    prefixes: dict[str, list[PrefixMemory]] = {}
    for r in reports:
        for p in r.prefixes:
            prefixes.setdefault(p.prefix, []).append(p)
    rows = [_merge_prefix(rows, total) for rows in prefixes.values()]
    rows.sort(key=lambda x: (-x.bytes, x.prefix))
    types: dict[str, list[TypeMemory]] = {}
    for r in reports:
        for t in r.types:
            types.setdefault(t.type, []).append(t)
    first = reports[0]
    return replace(
        first,
        scanned_keys=sum(r.scanned_keys for r in reports),
        vanished_keys=sum(r.vanished_keys for r in reports),
        dbsize=sum(r.dbsize for r in reports),
        complete=all(r.complete for r in reports),
        max_keys_reached=any(r.max_keys_reached for r in reports),
        total_bytes=total,
        used_memory=used,
        share_of_used_memory=round(total / used, 4) if used else None,
        no_touch=all(r.no_touch for r in reports),
        elapsed_s=max(r.elapsed_s for r in reports),
        prefixes_tracked=len(rows),
        prefixes_overflowed=any(r.prefixes_overflowed for r in reports),
        prefixes=rows[:top_prefixes],
        types=sorted((_merge_type(ts, total) for ts in types.values()), key=lambda t: -t.bytes),
        top_keys=heapq.nlargest(
            top, (k for r in reports for k in r.top_keys), key=lambda k: (k.bytes, k.key)
        ),
        unavailable={k: v for r in reports for k, v in r.unavailable.items()},
    )


def _merge_prefix(rows: list[PrefixMemory], total: int) -> PrefixMemory:
    size = sum(p.bytes for p in rows)
    types: Counter[str] = Counter()
    for p in rows:
        types.update(p.types)
    big = max(rows, key=lambda p: p.biggest_key_bytes)
    return PrefixMemory(
        prefix=rows[0].prefix,
        pattern=rows[0].pattern,
        keys=sum(p.keys for p in rows),
        bytes=size,
        elements=sum(p.elements for p in rows),
        share=round(size / total, 4) if total else 0.0,
        types=dict(types.most_common()),
        biggest_key=big.biggest_key,
        biggest_key_bytes=big.biggest_key_bytes,
    )


def _merge_type(rows: list[TypeMemory], total: int) -> TypeMemory:
    keys, size = sum(t.keys for t in rows), sum(t.bytes for t in rows)
    by_mem: BigKey = max((t.biggest_by_memory for t in rows), key=lambda k: k.bytes)
    by_n: BigKey = max((t.biggest_by_elements for t in rows), key=lambda k: k.elements)
    return TypeMemory(
        type=rows[0].type,
        keys=keys,
        bytes=size,
        elements=sum(t.elements for t in rows),
        element_unit=rows[0].element_unit,
        avg_bytes=round(size / keys, 1) if keys else 0.0,
        share=round(size / total, 4) if total else 0.0,
        biggest_by_memory=by_mem,
        biggest_by_elements=by_n,
    )


def node_rows(pairs: Sequence[tuple[str, MemoryReport]]) -> list[dict[str, Any]]:
    """Per primary: keys, key memory and used memory (how evenly the data is spread)."""
    return [
        {"node": addr, "keys": r.scanned_keys, "bytes": r.total_bytes, "used_memory": r.used_memory}
        for addr, r in pairs
    ]
