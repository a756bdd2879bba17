"""Mutating Redis algorithms: estimating and running a pattern eviction, guarded flush, snapshots.

Why not the runbook's ``KEYS "agent:*" | xargs DEL``: KEYS blocks Redis for the whole keyspace walk
(hundreds of ms on a million keys) and DEL frees big values on the main thread. Here the keyspace is
walked with ``SCAN MATCH ... COUNT`` and keys are removed with ``UNLINK`` (freed in a background
thread) in batches, the walk overlapping the deletion, pausing whenever Redis answers slowly, so
other clients keep their latency.
Protected keys are filtered on the bot's side even when the pattern matches them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import cast

import redis.asyncio as aioredis

from bot.errors import ActionStopped
from bot.keypatterns import key_matcher

ProgressFn = Callable[[str], Awaitable[None]]

SLOW_CALL_S = 0.005
"""A batch answered slower than this makes the eviction pause as long again (adaptive pacing)."""


async def scan_page(client: aioredis.Redis, cursor: int, pattern: str, count: int) -> tuple[int, list[bytes]]:
    """One SCAN call; our clients use bytes replies (key names may be binary)."""
    next_cursor, keys = await client.scan(cursor=cursor, match=pattern, count=count)
    return int(next_cursor), cast(list[bytes], keys)


def unix_time(value: object) -> int:
    """LASTSAVE as an integer, whether redis-py parsed it into a datetime or not."""
    if isinstance(value, datetime):
        return int(value.timestamp())
    return int(cast(int, value))


def show_key(key: bytes, limit: int = 80) -> str:
    text = key.decode("utf-8", "backslashreplace")
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class EvictionEstimate:
    """What a pattern eviction would delete right now (counts exact, bytes from a sample)."""

    matched: int = 0
    protected: int = 0
    sampled: int = 0
    sample_bytes: int = 0
    samples: list[str] = field(default_factory=list)
    scanned_calls: int = 0

    @property
    def deletable(self) -> int:
        return self.matched - self.protected

    @property
    def estimated_bytes(self) -> int:
        if not self.sampled:
            return 0
        return int(self.sample_bytes / self.sampled * self.deletable)


async def estimate_eviction(
    client: aioredis.Redis,
    pattern: str,
    protected: Sequence[str],
    *,
    count: int = 1000,
    sample_size: int = 500,
    show: int = 5,
) -> EvictionEstimate:
    """Count keys matching ``pattern`` (protected ones apart) and size a random sample of them.

    The count is exact at the time of the scan; bytes are extrapolated from ``MEMORY USAGE`` of a
    reservoir sample, which is what an approver needs without touching every key twice.
    """
    is_protected = key_matcher(protected)
    est = EvictionEstimate()
    reservoir: list[bytes] = []
    seen = 0
    cursor = 0
    while True:
        cursor, keys = await scan_page(client, cursor, pattern, count)
        est.scanned_calls += 1
        for key in keys:
            est.matched += 1
            if is_protected(key):
                est.protected += 1
                continue
            seen += 1
            if len(reservoir) < sample_size:
                reservoir.append(key)
            else:
                j = random.randrange(seen)
                if j < sample_size:
                    reservoir[j] = key
        if cursor == 0:
            break
    if reservoir:
        pipe = client.pipeline(transaction=False)
        for key in reservoir:
            pipe.memory_usage(key, samples=5)
        sizes = await pipe.execute(raise_on_error=False)
        for key, size in zip(reservoir, sizes, strict=True):
            if isinstance(size, int):
                est.sampled += 1
                est.sample_bytes += size
                if len(est.samples) < show:
                    est.samples.append(show_key(key))
    return est


StopFn = Callable[[], Awaitable[str | None]]
Unlinker = Callable[[list[bytes]], Awaitable[int]]
CheckpointFn = Callable[[dict[str, object]], Awaitable[None]]


async def stop_point(should_stop: StopFn | None, done: dict[str, object]) -> None:
    """Raise :class:`ActionStopped` with ``done`` when ``should_stop`` gives a reason (kill switch).

    A ``should_stop`` that fails (the store is unreadable) stops the action too: whether the kill
    switch is on is unknown, and stopping is the safe answer.
    """
    if should_stop is None:
        return
    try:
        reason = await should_stop()
    except Exception as exc:  # any failure to ask means "stop"
        reason = f"could not read the kill switch ({type(exc).__name__}: {exc}), stopping to be safe"
    if reason:
        raise ActionStopped(reason, done)


@dataclass
class EvictionResult:
    deleted: int = 0
    matched: int = 0
    protected_skipped: int = 0
    batches: int = 0
    pauses: int = 0
    duration_s: float = 0.0
    slowest_call_ms: float = 0.0

    def done(self) -> dict[str, object]:
        """How far the eviction got, for a checkpoint or :class:`ActionStopped`."""
        return {
            "deleted": self.deleted,
            "scanned": self.matched,
            "protected_skipped": self.protected_skipped,
            "batches": self.batches,
        }


async def evict(
    client: aioredis.Redis,
    pattern: str,
    protected: Sequence[str],
    *,
    max_keys: int,
    limit_name: str = "the limit",
    count: int = 1000,
    batch: int = 500,
    progress: ProgressFn | None = None,
    progress_every_s: float = 1.0,
    should_stop: StopFn | None = None,
    checkpoint: CheckpointFn | None = None,
    unlinker: Unlinker | None = None,
) -> EvictionResult:
    """Delete keys matching ``pattern``, never protected ones; stop when more than ``max_keys`` match.

    ``unlinker`` removes one batch and says how many keys it removed (default: one ``UNLINK`` of
    the batch; a Redis Cluster node needs one per key, see :func:`bot.cluster.unlink_each`).

    SCAN and UNLINK calls are small. The next SCAN page is requested before the current one is
    filtered, and a batch is unlinked while the walk goes on (one SCAN and one UNLINK in flight, on
    two pooled connections), so Redis and the bot work side by side and the eviction takes about
    as long as Redis needs for it. When a call is slow (Redis busy),
    its side sleeps as long as the call took before the next one, so the eviction yields to the
    application. Protected keys are filtered here, whatever the pattern says.

    Stops, raising :class:`ActionStopped` with :meth:`EvictionResult.done`:

    - when ``should_stop`` gives a reason. It is asked before *every* UNLINK batch, after the
      previous batch finished, so after the kill switch is turned on at most the one batch already
      sent to Redis completes (``batch`` keys, 500 by default);
    - when the walk finds more than ``max_keys`` deletable keys (a cap is a safety stop, not a
      quota): the check runs before each batch, so nothing is deleted once the count is known to be
      over, and at most ``max_keys`` keys are ever deleted.

    ``checkpoint`` is awaited after every finished batch with :meth:`EvictionResult.done`, so a
    process killed mid-run leaves a record of the keys it deleted (to within one batch).
    """
    is_protected = key_matcher(protected)
    res = EvictionResult()
    started = last_report = time.monotonic()
    pending: dict[bytes, None] = {}  # an ordered set: SCAN may return a key twice
    unlinking: asyncio.Task[object] | None = None
    in_flight = 0  # keys in the UNLINK under way

    async def timed(coro: Awaitable[object]) -> object:
        t0 = time.monotonic()
        out = await coro
        took = time.monotonic() - t0
        res.slowest_call_ms = max(res.slowest_call_ms, took * 1000)
        if took > SLOW_CALL_S:
            res.pauses += 1
            await asyncio.sleep(took)
        return out

    async def settle() -> None:
        """Wait for the UNLINK under way, if any, count what it removed and checkpoint."""
        nonlocal unlinking, in_flight
        if unlinking is not None:
            task, unlinking = unlinking, None
            removed = await task
            res.deleted += int(removed)  # type: ignore[call-overload]
            res.batches += 1
            in_flight = 0
            if checkpoint is not None:
                try:
                    await checkpoint(res.done())
                except Exception as exc:  # an unrecorded deletion must not go on
                    raise ActionStopped(
                        f"could not record progress ({type(exc).__name__}: {exc}), stopping to be safe",
                        res.done(),
                    ) from exc

    async def over_limit() -> bool:
        """More deletable keys seen than ``max_keys``? Keys someone else deleted do not count."""
        if res.deleted + in_flight + len(pending) <= max_keys:
            return False
        await settle()
        return res.deleted + len(pending) > max_keys

    async def unlink(keys: list[bytes]) -> None:
        nonlocal unlinking, in_flight
        await settle()
        await stop_point(should_stop, res.done())
        unlinking = asyncio.create_task(timed(unlinker(keys) if unlinker else client.unlink(*keys)))
        in_flight = len(keys)

    def scan_from(cursor: int) -> asyncio.Task[object]:
        return asyncio.create_task(timed(scan_page(client, cursor, pattern, count)))

    scanning = True
    scan: asyncio.Task[object] | None = scan_from(0)
    try:
        while True:
            if scan is not None:
                cursor, keys = cast(tuple[int, list[bytes]], await scan)
                scan = None
                scanning = cursor != 0
                if scanning:
                    # Ask for the next page now: Redis walks on while this one is filtered and unlinked.
                    scan = scan_from(cursor)
                    await asyncio.sleep(0)
                for key in keys:
                    res.matched += 1
                    if is_protected(key):
                        res.protected_skipped += 1
                    else:
                        pending[key] = None
                if await over_limit():
                    raise ActionStopped(
                        f"more than {max_keys:,} keys match {pattern} now ({limit_name}): stopped after"
                        f" deleting {res.deleted:,}, none past the limit",
                        res.done(),
                    )
            # Full batches while scanning; everything once the scan is over.
            while pending and (len(pending) >= batch or not scanning):
                take = list(itertools.islice(pending, batch))
                for key in take:
                    del pending[key]
                await unlink(take)
            if not scanning and not pending:
                break
            if progress is not None and time.monotonic() - last_report >= progress_every_s:
                last_report = time.monotonic()
                await progress(
                    f"deleted {res.deleted + in_flight:,} keys so far ({res.protected_skipped:,} protected skipped)"
                )
        await settle()
    finally:
        for task in (scan, unlinking):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
    res.duration_s = time.monotonic() - started
    return res


async def find_protected(
    client: aioredis.Redis, protected: Sequence[str], *, limit: int = 100, count: int = 1000
) -> list[str]:
    """Up to ``limit`` protected keys present in the database (one SCAN per protected pattern)."""
    found: list[str] = []
    for pattern in protected:
        async for key in client.scan_iter(match=pattern, count=count):
            found.append(show_key(key))
            if len(found) >= limit:
                return found
    return found


async def bgsave_and_wait(client: aioredis.Redis, timeout: float = 120.0, poll: float = 0.2) -> int:  # noqa: ASYNC109
    """Start a background save and wait until LASTSAVE moves; returns the new LASTSAVE (unix time).

    Raises TimeoutError when the snapshot does not complete in time, and RuntimeError when Redis
    reports the save failed.
    """
    before = await client.lastsave()
    before_ts = unix_time(before)
    try:
        await client.bgsave()
    except aioredis.ResponseError as exc:
        if "in progress" not in str(exc).lower():
            raise
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await asyncio.sleep(poll)
        now = await client.lastsave()
        now_ts = unix_time(now)
        if now_ts > before_ts or (now_ts == before_ts and await _save_done_ok(client, before_ts)):
            info = await client.info("persistence")
            if info.get("rdb_last_bgsave_status") not in (None, "ok"):
                raise RuntimeError(
                    f"BGSAVE failed: rdb_last_bgsave_status={info.get('rdb_last_bgsave_status')}"
                )
            return now_ts
    raise TimeoutError(f"BGSAVE did not finish within {timeout:.0f}s")


async def _save_done_ok(client: aioredis.Redis, before_ts: int) -> bool:
    """LASTSAVE has a one-second resolution: a save finishing in the same second shows here."""
    info = await client.info("persistence")
    return (
        not info.get("rdb_bgsave_in_progress")
        and info.get("rdb_last_bgsave_status") == "ok"
        and int(info.get("rdb_last_save_time", 0)) >= before_ts
        and int(info.get("rdb_changes_since_last_save", 1)) == 0
    )
