"""Connections to the Redis targets: URL handling, timeouts, and error translation.

Every client has connect and socket timeouts, so an unreachable Redis is a clear step error, never a
hang. Passwords live only in the URL given here and never reach logs, messages or the audit trail:
use :attr:`RedisTarget.name` or :func:`redact_url` for anything shown to people.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis import exceptions as rex
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from bot.errors import CommandNotAllowed, RedisUnavailable, StepError


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


@dataclass
class RedisTarget:
    """One Redis database the bot may diagnose or act on."""

    name: str
    url: str = field(repr=False)
    timeout: float = 5.0
    _client: aioredis.Redis | None = field(default=None, init=False, repr=False)

    @property
    def db(self) -> int:
        return url_db(self.url)

    @property
    def display_url(self) -> str:
        return redact_url(self.url)

    @property
    def client(self) -> aioredis.Redis:
        """A lazily created client (bytes replies: key names may be binary)."""
        if self._client is None:
            self._client = aioredis.Redis.from_url(
                self.url,
                socket_timeout=self.timeout,
                socket_connect_timeout=min(self.timeout, 3.0),
                retry=Retry(NoBackoff(), 1),
                decode_responses=False,
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


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
