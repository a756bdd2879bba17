"""What each database is for, judged from a sample: queue (BullMQ), protected data, or cache; and
which keys never expire.

A BullMQ queue must never be evicted (``noeviction``), a pure cache should be (an LRU or LFU
policy), and a cache namespace without TTLs grows until maxmemory: the usual cause of
RedisMemoryUsageHigh. These reports say which is which, per database and per namespace, from a
bounded SCAN sample (PTTL only: cheap, and it does not count as a keyspace hit).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from bot.formatting import pct
from bot.keypatterns import key_matcher
from bot.redisops.common import prefix_label, prefix_of, scan_batch

BULL = "bull:*"


@dataclass
class TTLSample:
    """Per prefix: keys sampled and how many of them have a TTL; example keys of protected data."""

    sampled: int
    with_ttl: Counter[bytes]
    sizes: Counter[bytes]
    bull: int
    protected: int


async def sample_ttls(
    client: aioredis.Redis,
    protected: list[str],
    *,
    sample: int,
    count: int = 1000,
    separator: bytes = b":",
    depth: int = 1,
) -> TTLSample:
    """SCAN until ``sample`` keys are seen, with one pipelined PTTL per batch."""
    is_bull = key_matcher([BULL])
    is_protected = key_matcher(protected)
    s = TTLSample(0, Counter(), Counter(), 0, 0)
    cursor = 0
    while s.sampled < sample:
        cursor, keys = await scan_batch(client, cursor, count)
        keys = keys[: sample - s.sampled]
        if keys:
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.pttl(key)
            for key, pttl in zip(keys, await pipe.execute(raise_on_error=False), strict=True):
                if not isinstance(pttl, int) or pttl == -2:
                    continue  # gone meanwhile
                prefix = prefix_of(key, separator, depth)
                s.sampled += 1
                s.sizes[prefix] += 1
                if pttl >= 0:
                    s.with_ttl[prefix] += 1
                if is_bull(key):
                    s.bull += 1
                elif is_protected(key):
                    s.protected += 1
        if cursor == 0:
            break
    return s


def merge_samples(samples: list[TTLSample]) -> TTLSample:
    """One sample from several nodes' (a cluster's primaries): counts per prefix added up."""
    out = TTLSample(0, Counter(), Counter(), 0, 0)
    for s in samples:
        out.sampled += s.sampled
        out.with_ttl.update(s.with_ttl)
        out.sizes.update(s.sizes)
        out.bull += s.bull
        out.protected += s.protected
    return out


def sum_keyspaces(sections: list[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """INFO keyspace of several nodes added up per database (``keys`` and ``expires``)."""
    out: dict[str, dict[str, int]] = {}
    for section in sections:
        for name, v in section.items():
            if isinstance(v, Mapping):
                db = out.setdefault(name, {"keys": 0, "expires": 0})
                db["keys"] += int(v.get("keys", 0))
                db["expires"] += int(v.get("expires", 0))
    return out


@asynccontextmanager
async def db_client(client: aioredis.Redis, db: int) -> AsyncIterator[aioredis.Redis]:
    """A client like ``client`` on database ``db`` (same address, credentials, timeouts)."""
    pool = client.connection_pool
    if int(pool.connection_kwargs.get("db", 0) or 0) == db:
        yield client
        return
    other = aioredis.ConnectionPool(
        connection_class=pool.connection_class, **{**pool.connection_kwargs, "db": db}
    )
    conn = aioredis.Redis(connection_pool=other)
    try:
        yield conn
    finally:
        await conn.aclose()
        await other.disconnect()


# ------------------------------------------------------------------------------- keys without TTL


@dataclass
class NamespaceTTL:
    prefix: str
    pattern: str | None
    sampled: int
    without_ttl: int
    share_without_ttl: float
    protected: bool


@dataclass
class TTLAudit:
    """INFO keyspace's keys vs expires per database, and per namespace from the sample."""

    databases: dict[str, dict[str, Any]]
    keys: int
    without_ttl: int
    sampled: int
    namespaces: list[NamespaceTTL]
    flagged: list[NamespaceTTL] = field(default_factory=list)


def ttl_audit(
    keyspace: Mapping[str, Any], s: TTLSample, protected: list[str], *, share_warn: float, top: int
) -> TTLAudit:
    """Cache namespaces (not protected) where at least ``share_warn`` of the sampled keys never expire."""
    is_protected = key_matcher(protected)
    dbs: dict[str, dict[str, Any]] = {}
    for name, v in keyspace.items():
        if isinstance(v, Mapping):
            keys, expires = int(v.get("keys", 0)), int(v.get("expires", 0))
            dbs[name] = {"keys": keys, "expires": expires, "without_ttl": keys - expires}
    rows: list[NamespaceTTL] = []
    for prefix, n in sorted(s.sizes.items(), key=lambda it: (-it[1], it[0]))[:top]:
        name, pattern = prefix_label(prefix)
        without = n - s.with_ttl[prefix]
        probe = prefix + b"x" if prefix else b""
        rows.append(
            NamespaceTTL(
                prefix=name,
                pattern=pattern,
                sampled=n,
                without_ttl=without,
                share_without_ttl=round(without / n, 4),
                protected=bool(prefix) and is_protected(probe),
            )
        )
    flagged = [r for r in rows if not r.protected and r.share_without_ttl >= share_warn]
    return TTLAudit(
        databases=dbs,
        keys=sum(d["keys"] for d in dbs.values()),
        without_ttl=sum(d["without_ttl"] for d in dbs.values()),
        sampled=s.sampled,
        namespaces=rows,
        flagged=flagged,
    )


# --------------------------------------------------------------------------------- policy per role


@dataclass
class DatabaseRole:
    db: int
    keys: int
    expires: int
    sampled: int
    role: str
    """``queue`` (BullMQ keys), ``protected`` (other protected namespaces), ``cache``, or ``empty``."""
    ttl_share: float | None


async def database_roles(
    client: aioredis.Redis, keyspace: Mapping[str, Any], protected: list[str], *, sample: int
) -> list[DatabaseRole]:
    """Sample every database INFO keyspace lists and say what it holds."""
    roles: list[DatabaseRole] = []
    for name, v in sorted(keyspace.items()):
        if not (isinstance(v, Mapping) and name.startswith("db") and name[2:].isdigit()):
            continue
        db = int(name[2:])
        async with db_client(client, db) as conn:
            s = await sample_ttls(conn, protected, sample=sample)
        role = "queue" if s.bull else "protected" if s.protected else "cache" if s.sampled else "empty"
        ttl = round(sum(s.with_ttl.values()) / s.sampled, 4) if s.sampled else None
        roles.append(DatabaseRole(db, int(v.get("keys", 0)), int(v.get("expires", 0)), s.sampled, role, ttl))
    return roles


def policy_advice(policy: str | None, maxmemory: int, roles: list[DatabaseRole]) -> tuple[str, bool]:
    """(what the eviction policy means for these databases and what to do, whether it is a problem).

    One policy covers every database of an instance: a BullMQ queue needs ``noeviction`` (an
    evicted job key corrupts the queue), a pure cache wants ``allkeys-lru``/``allkeys-lfu`` (under
    ``noeviction`` it rejects writes at maxmemory instead of dropping cold keys), and ``volatile-*``
    only evicts keys that have a TTL.
    """
    which = {r: [f"db{d.db}" for d in roles if d.role == r] for r in ("queue", "protected", "cache")}
    said = "; ".join(f"{', '.join(dbs)}: {r}" for r, dbs in which.items() if dbs) or "no keys"
    policy = policy or "unknown"
    if maxmemory == 0:
        return (
            f"policy {policy} never applies: no maxmemory, so Redis grows until the OS kills it ({said});"
            " set a maxmemory below the container's limit",
            False,
        )
    if which["queue"]:
        if policy != "noeviction":
            return (
                f"BullMQ needs noeviction, but the policy is {policy}: queued jobs in {', '.join(which['queue'])}"
                " can be evicted, which corrupts the queue. CONFIG SET maxmemory-policy noeviction now, and"
                f" move the cache to a Redis of its own if it needs evicting ({said})",
                True,
            )
        if which["cache"]:
            return (
                f"noeviction is right for BullMQ ({', '.join(which['queue'])}), but the cache in"
                f" {', '.join(which['cache'])} shares the limit and is never evicted: give its keys TTLs,"
                f" or move it to a Redis of its own with allkeys-lru ({said})",
                False,
            )
        return f"noeviction is right for BullMQ ({said})", False
    if which["protected"] and policy.startswith("allkeys"):
        return (
            f"policy {policy} may evict protected keys in {', '.join(which['protected'])}: use volatile-lru"
            f" (and TTLs on cache keys only) or noeviction ({said})",
            True,
        )
    if which["cache"] and not which["protected"]:
        if policy == "noeviction":
            return (
                "a pure cache under noeviction rejects writes at maxmemory (OOM errors) instead of dropping"
                " cold keys: CONFIG SET maxmemory-policy allkeys-lru (or allkeys-lfu for skewed reads)"
                f" ({said})",
                True,
            )
        no_ttl = [d for d in roles if d.role == "cache" and (d.ttl_share or 0) < 0.5]
        if policy.startswith("volatile") and no_ttl:
            share = pct(1 - (no_ttl[0].ttl_share or 0))
            return (
                f"{policy} only evicts keys with a TTL, and {share} of db{no_ttl[0].db}'s sampled keys have"
                f" none: at maxmemory writes fail. Use allkeys-lru, or set TTLs ({said})",
                True,
            )
    return f"policy {policy} fits ({said})", False


def describe_namespace(n: NamespaceTTL) -> str:
    return f"{n.pattern or n.prefix} {pct(n.share_without_ttl)} of {n.sampled:,} sampled"
