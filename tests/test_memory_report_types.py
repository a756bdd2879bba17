"""The memory report's type guess: keys are typed by their prefix's last type, never wrongly.

The report script skips TYPE for a key whose prefix has had one type so far and asks the length
command of that type instead (type-checked by Redis, so a number proves the type). These tests
attack that shortcut with prefixes that mix every type, keys without a separator, deeper prefixes
and an empty separator: the figures must equal the pipeline path's (which asks TYPE of every key),
WRONGTYPE replies must stay a handful per mixed prefix, and TYPE must be skipped where it can be.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import redis

from bot.redisconn import RedisTarget
from bot.redisops import memory

MIXED_KEYS = 300
CACHE_KEYS = 2000
SESSION_KEYS = 1000


def seed_mixed(client: redis.Redis) -> None:
    """``user:`` mixes all six types in random order; ``cache:`` strings and ``sess:`` hashes don't."""
    rng = random.Random(7)
    pipe = client.pipeline(transaction=False)
    for i in range(MIXED_KEYS):
        key = f"user:{i}"
        kind = rng.choice(["string", "hash", "list", "set", "zset", "stream"])
        n = rng.randint(1, 40)
        if kind == "string":
            pipe.set(key, "x" * n)
        elif kind == "hash":
            pipe.hset(key, mapping={f"f{j}": j for j in range(n)})
        elif kind == "list":
            pipe.rpush(key, *range(n))
        elif kind == "set":
            pipe.sadd(key, *range(n))
        elif kind == "zset":
            pipe.zadd(key, {f"m{j}": j for j in range(n)})
        else:
            for j in range(n):
                pipe.xadd(key, {"j": j})
    for i in range(CACHE_KEYS):
        pipe.set(f"cache:{i}", "v" * (i % 50))
    for i in range(SESSION_KEYS):
        pipe.hset(f"sess:{i}", mapping={"user": i, "ts": i})
    pipe.set("nosep", "abc")
    pipe.rpush("queue", *range(5))
    pipe.execute()


def comparable(report: memory.MemoryReport) -> dict[str, Any]:
    return {
        "scanned": report.scanned_keys,
        "total": report.total_bytes,
        "prefixes": report.prefixes,
        "types": report.types,
        "top": report.top_keys,
    }


@pytest.mark.parametrize(
    ("separator", "depth"), [(b":", 1), (b":", 2), (b"", 1), (b"s", 3)], ids=["colon", "depth2", "empty", "s"]
)
async def test_guessed_types_give_the_pipelines_figures(
    target: RedisTarget, redis_sync: redis.Redis, separator: bytes, depth: int
) -> None:
    seed_mixed(redis_sync)
    client = target.client
    # SAMPLES 0: exact sizes on both paths (sampled sizes of big keys differ from call to call).
    guessed = await memory.memory_report(client, count=50, samples=0, separator=separator, depth=depth)
    typed = await memory.memory_report(
        client, count=50, samples=0, separator=separator, depth=depth, use_script=False
    )
    assert guessed.method == "script"
    assert typed.method == "pipeline"
    assert comparable(guessed) == comparable(typed)
    assert guessed.scanned_keys == MIXED_KEYS + CACHE_KEYS + SESSION_KEYS + 2


async def test_type_is_asked_only_where_the_prefix_mixes_types(
    target: RedisTarget, redis_sync: redis.Redis
) -> None:
    seed_mixed(redis_sync)
    redis_sync.config_resetstat()
    report = await memory.memory_report(target.client, count=50)
    total = MIXED_KEYS + CACHE_KEYS + SESSION_KEYS + 2
    assert report.scanned_keys == total
    types = {t.type: t.keys for t in report.types}
    assert types["hash"] >= SESSION_KEYS
    assert sum(types.values()) == total

    stats = redis_sync.info("commandstats")
    type_calls = stats["cmdstat_type"]["calls"]
    batches = total // 50 + 2
    # Every user: key is asked (its prefix mixes types); a cache: or sess: key only while its
    # prefix is not yet known: at most once per prefix and batch, in the first batches.
    assert MIXED_KEYS <= type_calls <= MIXED_KEYS + 4 * batches
    assert type_calls < total / 5
    assert stats["cmdstat_memory|usage"]["calls"] == total
    # A wrong guess costs one WRONGTYPE reply, then the prefix is not guessed again: the first
    # batches may guess user: once each before the caller marks it as mixed.
    errors = redis_sync.info("errorstats").get("errorstat_WRONGTYPE", {"count": 0})["count"]
    assert errors <= 3


async def test_samples_reach_memory_usage(target: RedisTarget, redis_sync: redis.Redis) -> None:
    """SAMPLES 5 is Redis's default and is left out; any other value is sent."""
    # A set of members of very different lengths: sizes sampled from 5 or 50 members differ from
    # each other and from the exact one, so each figure shows which SAMPLES the report used.
    redis_sync.sadd("l", *(f"{i}:" + "y" * (i * 37 % 1000) for i in range(2000)))
    redis_sync.set("s", "z" * 100)
    usage = {n: sum(int(redis_sync.memory_usage(k, samples=n)) for k in ("l", "s")) for n in (0, 5, 50)}
    assert len(set(usage.values())) == 3
    for n, expected in usage.items():
        report = await memory.memory_report(target.client, samples=n)
        assert report.total_bytes == expected, n
