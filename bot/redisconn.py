"""Connections to the Redis targets: URL handling, timeouts, and error translation.

Every client has connect and socket timeouts, so an unreachable Redis is a clear step error, never a
hang. Passwords live only in the URL given here and never reach logs, messages or the audit trail:
use :attr:`RedisTarget.name` or :func:`redact_url` for anything shown to people.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis import exceptions as rex
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from bot.cluster import ClusterNode, cluster_enabled, primaries_of
from bot.errors import CommandNotAllowed, RedisUnavailable, StepError
from bot.topology import SentinelConfig, online_replicas, replica_in_sync


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (user names stay: they help debugging ACLs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def url_db(url: str) -> int:
    """The database number a ``redis://host:port/N`` URL selects (0 when absent)."""
    path = urlsplit(url).path.strip("/")
    if path.isdigit():
        return int(path)
    return 0


def port_problem(url: str) -> str | None:
    """What is wrong with a URL's port (``None`` when it has none or a usable one); never a secret.

    ``urlsplit`` raises ``ValueError`` on reading a port over 65535 and port 0 means "any": checked
    where a URL is built, such a port is a clear error instead of a crash deep in a client.
    """
    address = urlsplit(url).netloc.rpartition("@")[2]
    try:
        port = urlsplit(url).port
    except ValueError:
        port = -1
    if port is None or 0 < port <= 65535:
        return None
    return f"address {address!r}, whose port {address.rpartition(':')[2]} is not in 1-65535"


def default_name(url: str) -> str:
    """A readable, secret-free name for a target: ``host:port/db``."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = parts.port or 6379
    return f"{host}:{port}/{url_db(url)}"


ReplicaRule = Callable[[str, int], bool]
"""Whether the bot may connect to a replica at (host, port) (a templated target's allowed_addresses)."""


@dataclass
class RedisTarget:
    """One Redis database the bot may diagnose or act on: a URL, or a Sentinel-monitored master.

    For a Sentinel target, :meth:`locate` asks Sentinel for the current primary (the runner calls it
    before each step and action) and :attr:`node` is where that is; the client always connects to
    the primary Sentinel names. ``prefer_replica`` lets :meth:`read_client` hand heavy read-only
    scans to a healthy, in-sync replica.
    """

    name: str
    url: str = field(repr=False)
    timeout: float = 5.0
    sentinel: SentinelConfig | None = None
    prefer_replica: bool = False
    replica_allowed: ReplicaRule | None = field(default=None, repr=False)
    mode: str = "auto"
    """``cluster`` or ``single`` as the config declares, else found out (INFO cluster) on first use."""
    _client: aioredis.Redis | None = field(default=None, init=False, repr=False)
    _sentinel: Sentinel | None = field(default=None, init=False, repr=False)
    _node: str | None = field(default=None, init=False)
    _replicas: dict[tuple[str, int], aioredis.Redis] = field(default_factory=dict, init=False, repr=False)
    _cluster: bool | None = field(default=None, init=False)

    @property
    def db(self) -> int:
        return self.sentinel.db if self.sentinel is not None else url_db(self.url)

    @property
    def display_url(self) -> str:
        return self.sentinel.display() if self.sentinel is not None else redact_url(self.url)

    @property
    def node(self) -> str | None:
        """The primary Sentinel named at the last :meth:`locate` (None for a URL target)."""
        return self._node

    def _options(self) -> dict[str, Any]:
        return {
            "socket_timeout": self.timeout,
            "socket_connect_timeout": min(self.timeout, 3.0),
            "retry": Retry(NoBackoff(), 1),
            "decode_responses": False,
        }

    def _sentinels(self) -> Sentinel:
        assert self.sentinel is not None
        if self._sentinel is None:
            s = self.sentinel
            self._sentinel = Sentinel(  # type: ignore[no-untyped-call]
                s.pairs(),
                sentinel_kwargs={
                    "username": s.sentinel_username,
                    "password": s.sentinel_password,
                    "socket_timeout": self.timeout,
                    "socket_connect_timeout": min(self.timeout, 3.0),
                },
            )
        return self._sentinel

    @property
    def client(self) -> aioredis.Redis:
        """A lazily created client (bytes replies: key names may be binary)."""
        if self._client is None:
            if self.sentinel is not None:
                s = self.sentinel
                self._client = self._sentinels().master_for(
                    s.master, db=s.db, username=s.username, password=s.password, **self._options()
                )
            else:
                self._client = aioredis.Redis.from_url(self.url, **self._options())
        return self._client

    async def is_cluster(self) -> bool:
        """A Redis Cluster node: declared (``mode: cluster``) or found (INFO cluster, asked once)."""
        if self.mode != "auto" or self.sentinel is not None:
            return self.mode == "cluster"
        if self._cluster is None:
            self._cluster = await cluster_enabled(self.client)
        return self._cluster

    async def topology(self) -> list[ClusterNode]:
        """The cluster's primaries now (CLUSTER NODES through the configured node)."""
        return await primaries_of(self.client, urlsplit(self.url).hostname or "127.0.0.1")

    async def primaries(self) -> list[tuple[str, aioredis.Redis]]:
        """Where the data is: every primary of a cluster as (``host:port``, client), else this one."""
        if not await self.is_cluster():
            return [(self.node or self.name, self.client)]
        return [(n.addr, self.node_client(n.host, n.port)) for n in await self.topology()]

    def node_client(self, host: str, port: int) -> aioredis.Redis:
        """A client for another node of this target (a replica, a cluster primary): same credentials."""
        return self._replica_client(host, port)

    def _replica_client(self, host: str, port: int) -> aioredis.Redis:
        if (host, port) not in self._replicas:
            if self.sentinel is not None:
                s = self.sentinel
                r = aioredis.Redis(
                    host=host, port=port, db=s.db, username=s.username, password=s.password, **self._options()
                )
            else:
                r = aioredis.Redis.from_url(with_address(self.url, host, port), **self._options())
            self._replicas[(host, port)] = r
        return self._replicas[(host, port)]

    async def locate(self) -> str | None:
        """Ask Sentinel where the primary is now; after a failover, drop the connections to the old
        one. Returns the primary's ``host:port`` (None for a URL target, which has one address)."""
        if self.sentinel is None:
            return None
        host, port = await self._sentinels().discover_master(self.sentinel.master)
        node = f"{text_of(host)}:{port}"
        if self._node is not None and node != self._node:
            await self.client.connection_pool.disconnect()
        self._node = node
        return node

    async def read_client(self) -> tuple[aioredis.Redis, str | None]:
        """The client heavy read-only scans should use, and the replica's address when it is one.

        With ``prefer_replica``, the first replica that is healthy and in sync (see
        :func:`bot.topology.replica_in_sync`); otherwise, or when none is, the primary.
        """
        if not self.prefer_replica:
            return self.client, None
        primary = await self.client.info("replication")
        if self.sentinel is not None:
            candidates = [
                (text_of(h), int(p)) for h, p in await self._sentinels().discover_slaves(self.sentinel.master)
            ]
        else:
            candidates = online_replicas(primary)
        for host, port in candidates:
            if self.replica_allowed is not None and not self.replica_allowed(host, port):
                continue
            replica = self._replica_client(host, port)
            try:
                if await replica_in_sync(primary, replica) is None:
                    return replica, f"{host}:{port}"
            except (rex.RedisError, OSError):
                continue  # an unreachable replica is not a healthy one
        return self.client, None

    async def close(self) -> None:
        for r in self._replicas.values():
            await r.aclose()
        self._replicas.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._sentinel is not None:
            for s in self._sentinel.sentinels:
                await s.aclose()
            self._sentinel = None


def with_address(url: str, host: str, port: int) -> str:
    """``url`` pointed at another node (same credentials, database and options): redis-py lets a
    URL's host win over keyword arguments, so the URL itself must change."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{where}" if userinfo else where))


def text_of(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def describe_redis_error(exc: BaseException, target_name: str) -> StepError:
    """Map a redis-py exception to the bot's error with a message an on-call engineer can act on."""
    if isinstance(exc, rex.AuthenticationError):
        return RedisUnavailable(f"Redis {target_name} rejected the credentials: {exc}")
    if isinstance(exc, rex.TimeoutError):
        return RedisUnavailable(f"Redis {target_name} did not answer in time ({exc})")
    if isinstance(exc, rex.ConnectionError):
        return RedisUnavailable(f"cannot reach Redis {target_name}: {exc}")
    if isinstance(exc, rex.NoPermissionError):
        return CommandNotAllowed(f"Redis {target_name} does not allow this command for our user: {exc}")
    if isinstance(exc, rex.ResponseError):
        text = str(exc)
        if "unknown command" in text.lower() or "not allowed" in text.lower() or "noperm" in text.lower():
            return CommandNotAllowed(f"Redis {target_name} refused the command: {text}")
        return StepError(f"Redis {target_name} answered with an error: {text}")
    return StepError(f"Redis {target_name}: {exc}")


@contextlib.asynccontextmanager
async def redis_errors(target_name: str) -> AsyncIterator[None]:
    """Translate redis-py exceptions raised inside the block into :class:`StepError` subclasses."""
    try:
        yield
    except rex.RedisError as exc:
        raise describe_redis_error(exc, target_name) from exc
    except OSError as exc:
        raise RedisUnavailable(f"cannot reach Redis {target_name}: {exc}") from exc
