"""Where a target's Redis is: Sentinel's current primary, and a healthy replica for heavy reads.

A target given as Sentinel addresses and a master name has no fixed address: the runner asks
Sentinel for the current primary before each step and action (:meth:`RedisTarget.locate
<bot.redisconn.RedisTarget.locate>`), so a failover between approval and execution is seen, and the
plan (bound to the node it was made on) is made again on the new primary. ``prefer_replica`` sends
the heavy read-only scans to a replica, only while one is healthy and in sync, never an action.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import redis.asyncio as aioredis
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

REPLICA_MAX_LAG_S = 10
REPLICA_MAX_BEHIND = 1 << 20
"""A replica further behind its primary than this (bytes of replication stream) is not "in sync"."""


def split_hostport(text: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) as a pair; a ``ValueError`` says what is wrong."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not host:port (e.g. 10.0.0.5:26379)")
    return host.strip("[]"), int(port)


def _hostport(text: str) -> str:
    split_hostport(text)
    return text.strip()


class SentinelConfig(BaseModel):
    """``sentinel:`` of a target, instead of ``url``: where the Sentinels are and which master."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    addresses: list[Annotated[str, AfterValidator(_hostport)]] = Field(min_length=1)
    master: str = Field(pattern=r"^[A-Za-z0-9._-]{1,128}$", description="the master name Sentinel monitors")
    db: int = Field(default=0, ge=0, le=1000)
    username: str | None = None
    password: str | None = Field(default=None, repr=False, description="of the Redis servers (use ${VAR})")
    sentinel_username: str | None = None
    sentinel_password: str | None = Field(default=None, repr=False, description="of the Sentinels, if any")

    def pairs(self) -> list[tuple[str, int]]:
        return [split_hostport(a) for a in self.addresses]

    def display(self) -> str:
        """Secret-free: ``sentinel://mymaster/0``."""
        return f"sentinel://{self.master}/{self.db}"


async def replica_in_sync(primary: Mapping[str, Any], replica: aioredis.Redis) -> str | None:
    """Why ``replica`` should not serve heavy reads now (None when it is healthy and in sync).

    ``primary`` is the primary's INFO replication, read just before: the replica's offset may only
    be up to :data:`REPLICA_MAX_BEHIND` behind it, its link up, and its last contact recent.
    """
    info = await replica.info("replication")
    if info.get("role") != "slave":
        return f"it is a {info.get('role')}, not a replica"
    if info.get("master_link_status") != "up":
        return f"its link to the primary is {info.get('master_link_status')}"
    if int(info.get("master_sync_in_progress", 0) or 0):
        return "it is resynchronising"
    io = int(info.get("master_last_io_seconds_ago", 0) or 0)
    if io > REPLICA_MAX_LAG_S:
        return f"it heard from the primary {io} s ago"
    behind = int(primary.get("master_repl_offset", 0) or 0) - int(info.get("slave_repl_offset", 0) or 0)
    if behind > REPLICA_MAX_BEHIND:
        return f"it is {behind:,} bytes behind the primary"
    return None


def online_replicas(primary: Mapping[str, Any]) -> list[tuple[str, int]]:
    """Replicas the primary's INFO replication lists as online and recently acknowledged."""
    found = []
    for name, v in primary.items():
        listed = name.startswith("slave") and name[5:].isdigit() and isinstance(v, Mapping)
        if listed and v.get("state") == "online" and int(v.get("lag", 0) or 0) <= REPLICA_MAX_LAG_S:
            found.append((str(v.get("ip")), int(v.get("port", 0))))
    return found
