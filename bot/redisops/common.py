"""Shared helpers of the Redis algorithms: one command, optional commands, SCAN batches, key prefixes.

Every algorithm takes a ``redis.asyncio.Redis`` client with bytes replies (key names may be binary)
and never holds the whole key space: scans are streamed batch by batch. Commands a managed Redis
may refuse (CONFIG, CLIENT LIST, LATENCY, scripting) go through :func:`optional`: their refusal is
recorded in the result's ``unavailable`` mapping and the rest of the result still comes back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis import exceptions as rex

T = TypeVar("T")

NO_PREFIX = "(no prefix)"
OTHER_PREFIXES = "(other prefixes)"

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


def iso_time(ts: float) -> str:
    """A Unix timestamp as ISO 8601 UTC, to the second."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def text_of(value: Any) -> str:
    """A reply value as text (bytes decoded like :func:`display_key`)."""
    if isinstance(value, bytes):
        return display_key(value)
    return str(value)


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


async def read_info(client: aioredis.Redis, section: str) -> dict[str, Any]:
    """INFO ``section`` parsed by redis-py into a dict (nested dicts for keyspace and commandstats)."""
    return dict(await client.info(section))


def config_dict(reply: Any) -> dict[str, str]:
    """CONFIG GET's reply (a RESP3 map or a RESP2 flat list) as a str -> str dict."""
    if reply is None:
        return {}
    if isinstance(reply, Mapping):
        return {text_of(k): text_of(v) for k, v in reply.items()}
    items = list(reply)
    return {text_of(k): text_of(v) for k, v in zip(items[0::2], items[1::2], strict=True)}


def int_or_none(value: str | None) -> int | None:
    """``value`` as an int; None when it is missing or not a number."""
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def prefix_of(key: bytes, sep: bytes, depth: int) -> bytes:
    """The key up to and including its ``depth``-th separator (fewer if it has fewer); b"" if none."""
    end = 0
    pos = 0
    for _ in range(depth):
        i = key.find(sep, pos)
        if i < 0:
            break
        end = pos = i + len(sep)
    return key[:end]


def prefix_label(prefix: bytes | None) -> tuple[str, str | None]:
    """Display name and glob pattern of a prefix bucket (None is the overflow bucket)."""
    if prefix is None:
        return OTHER_PREFIXES, None
    if not prefix:
        return NO_PREFIX, None
    name = display_key(prefix)
    return name, glob_escape(name) + "*"
