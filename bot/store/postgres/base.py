"""PostgreSQL plumbing: the connection pool, transactions with retries, errors, audit and settings.

Why PostgreSQL: several ``serve`` replicas share one state, and the database the bot's users already
run highly available is the one place where they can agree. Every lifecycle event is one
transaction, as on SQLite; where SQLite serialises every write with ``BEGIN IMMEDIATE``, here the
records an event moves are locked (``SELECT ... FOR UPDATE``, incident first, then approval, then
step run: one order everywhere, so two events cannot wait on each other), which makes each check of
a state a compare-and-set across replicas. A deadlock or serialization failure (always rolled back
whole by the server) is retried; nothing else is, because after a lost connection a COMMIT may or
may not have happened and an event such as ``claim`` must never run twice.

Every call has a deadline: acquiring a pooled connection (``acquire_timeout``), connecting
(``connect_timeout``) and each statement (``command_timeout`` on the client, ``statement_timeout``
on the server). Every driver or server error becomes :class:`~bot.errors.StoreError`, so the webhook
answers 503 and ``/readyz`` fails while the database is unreachable; the pool reconnects by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from bot.errors import StoreError
from bot.incidents import AuditEntry, iso
from bot.store.postgres.schema import JOIN_LOCK_NAMESPACE, migrate
from bot.store.records import dumps, process_owner

T = TypeVar("T")

_RETRIED = (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError)
_DRIVER_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    # A pooled connection that was idle when the server shut down may be handed out after the
    # server's FATAL arrived but before the socket closed: asyncpg then raises this, not a
    # connection error (a 500 instead of a 503 when PostgreSQL restarts; see tests/test_chaos.py).
    asyncpg.exceptions.InternalClientError,
    OSError,
    TimeoutError,
)
ATTEMPTS = 4


def storable(value: Any) -> Any:
    """A parameter PostgreSQL can store: its text cannot hold NUL, which alert labels and Redis key
    names (in step summaries) may contain, so NUL becomes U+FFFD. SQLite keeps NUL; the same input
    gives the same record on both, repeats included, apart from that one character."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if isinstance(value, list) and any(isinstance(v, str) and "\x00" in v for v in value):
        return [storable(v) for v in value]
    return value


class Conn:
    """A pooled asyncpg connection whose parameters pass :func:`storable` (the calls the store uses)."""

    __slots__ = ("raw",)

    def __init__(self, raw: PoolConnectionProxy[asyncpg.Record]) -> None:
        self.raw = raw

    async def execute(self, sql: str, *args: Any) -> str:
        return await self.raw.execute(sql, *map(storable, args))

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return await self.raw.fetch(sql, *map(storable, args))

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        return await self.raw.fetchrow(sql, *map(storable, args))

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self.raw.fetchval(sql, *map(storable, args))


async def _keep_session(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """A released connection needs no reset beyond the rollback the pool does anyway."""


def lock_key(text: str) -> int:
    """A stable 32-bit advisory lock key for ``text`` (a collision only serialises more)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "big", signed=True)


def one(row: asyncpg.Record | None) -> asyncpg.Record:
    """The row a statement that always returns one (``UPDATE ... RETURNING`` of a locked row) gave."""
    if row is None:
        raise StoreError("the database returned no row where one was expected")
    return row


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = urllib.parse.unquote(parts.username or "")
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


class PGBase:
    """Pool, transactions and the audit trail; the other parts of the store build on these."""

    def __init__(
        self,
        url: str,
        *,
        pool_min: int = 1,
        pool_max: int = 10,
        connect_timeout: float = 5.0,
        acquire_timeout: float = 5.0,
        command_timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.where = redact(url)
        self.pool_min, self.pool_max = pool_min, pool_max
        self.connect_timeout = connect_timeout
        self.acquire_timeout = acquire_timeout
        self.command_timeout = command_timeout
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self.write_failures = 0
        """Consecutive failed write transactions (readiness reports the store as failing)."""
        self.ingest_transactions = 0
        self.migrations_applied: list[int] = []
        """Schema versions this store applied when it opened (empty: another replica had)."""

    def _error(self, exc: BaseException) -> StoreError:
        return StoreError(f"state store {self.where}: {type(exc).__name__}: {exc}")

    @property
    def pool(self) -> asyncpg.Pool[asyncpg.Record]:
        if self._pool is None:
            raise StoreError("the store is not open")
        return self._pool

    async def open(self) -> Any:
        """Connect the pool and migrate the schema (waiting for another replica's migration)."""
        try:
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=self.pool_min,
                max_size=self.pool_max,
                timeout=self.connect_timeout,
                command_timeout=self.command_timeout,
                # The store keeps no session state on a connection (no SET, LISTEN, session
                # locks): skip the reset query the pool would send at every release.
                reset=_keep_session,
                server_settings={
                    "application_name": "remediation-bot",
                    # The server's own deadlines, should the client's cancel not get through.
                    "statement_timeout": str(int(self.command_timeout * 1000) + 1000),
                    "idle_in_transaction_session_timeout": str(int(self.command_timeout * 3000)),
                },
            )
            async with self.pool.acquire(timeout=self.acquire_timeout) as conn:
                self.migrations_applied = await migrate(conn)
        except _DRIVER_ERRORS as exc:
            await self.close()
            raise self._error(exc) from exc
        return self

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), self.command_timeout)
        except (*_DRIVER_ERRORS,):
            pool.terminate()

    # -- transactions ---------------------------------------------------------------------------

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[Conn]:
        async with self.pool.acquire(timeout=self.acquire_timeout) as conn:
            yield Conn(conn)

    async def _read(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """Run reads on one pooled connection (no transaction: each statement sees committed rows)."""
        try:
            async with self._conn() as conn:
                return await fn(conn)
        except _DRIVER_ERRORS as exc:
            raise self._error(exc) from exc

    async def _write(self, fn: Callable[[Conn], Awaitable[T]], *, locks: Sequence[int] = ()) -> T:
        """Run ``fn`` in one transaction; retried from the start on a deadlock or serialization
        failure (the server rolled it back whole). ``fn`` must build its result from scratch.

        ``locks``: advisory lock keys (namespace :data:`JOIN_LOCK_NAMESPACE`) taken in the same round
        trip as BEGIN, in ascending order (so two transactions cannot wait on each other for them).
        """
        begin = "BEGIN;" + "".join(
            f"SELECT pg_advisory_xact_lock({JOIN_LOCK_NAMESPACE}, {int(k)});" for k in sorted(set(locks))
        )
        for attempt in range(1, ATTEMPTS + 1):
            try:
                async with self._conn() as conn:
                    # No arguments: one simple-query round trip for every statement in it.
                    await conn.raw.execute(begin)
                    try:
                        result = await fn(conn)
                    except BaseException:
                        if not conn.raw.is_closed():
                            with contextlib.suppress(Exception):  # else the pool rolls it back
                                await conn.raw.execute("ROLLBACK")
                        raise
                    await conn.raw.execute("COMMIT")
            except _RETRIED as exc:
                if attempt == ATTEMPTS:
                    self.write_failures += 1
                    raise self._error(exc) from exc
                continue
            except _DRIVER_ERRORS as exc:
                self.write_failures += 1
                raise self._error(exc) from exc
            self.write_failures = 0
            return result
        raise AssertionError("unreachable")

    @staticmethod
    def _owner() -> str:
        """Who runs the work a record is started or claimed for (``host:pid`` for now; a lease
        token for replicas is added beside it)."""
        return process_owner()

    async def ping(self) -> None:
        """Raise :class:`StoreError` unless the database answers and accepts a write (readiness)."""

        async def run(conn: Conn) -> None:
            await conn.execute(
                "INSERT INTO settings (key, value) VALUES ('readiness', $1)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                str(time.time()),
            )

        await self._write(run)

    # -- audit ----------------------------------------------------------------------------------

    @staticmethod
    async def _audit(
        conn: Conn,
        kind: str,
        *,
        incident_id: int | None = None,
        actor: str | None = None,
        target: str | None = None,
        plan_hash: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        await conn.execute(
            "INSERT INTO audit (ts, kind, incident_id, actor, target, plan_hash, detail)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7)",
            time.time(),
            kind,
            incident_id,
            actor,
            target,
            plan_hash,
            dumps(detail or {}),
        )

    async def audit(self, kind: str, **kw: Any) -> None:
        """An audit record that changes no state (a refusal, a breaker reset, a probe note)."""

        async def run(conn: Conn) -> None:
            await self._audit(conn, kind, **kw)

        await self._write(run)

    async def list_audit(self, *, limit: int = 200, incident_id: int | None = None) -> list[AuditEntry]:
        async def run(conn: Conn) -> list[AuditEntry]:
            if incident_id is None:
                rows = await conn.fetch("SELECT * FROM audit ORDER BY id DESC LIMIT $1", limit)
            else:
                rows = await conn.fetch(
                    "SELECT * FROM audit WHERE incident_id = $1 ORDER BY id DESC LIMIT $2", incident_id, limit
                )
            return [
                AuditEntry(
                    id=r["id"],
                    ts=iso(r["ts"]) or "",
                    kind=r["kind"],
                    incident_id=r["incident_id"],
                    actor=r["actor"],
                    target=r["target"],
                    plan_hash=r["plan_hash"],
                    detail=json.loads(r["detail"]),
                )
                for r in reversed(rows)
            ]

        return await self._read(run)

    # -- settings (kill switch) -----------------------------------------------------------------

    async def get_setting(self, key: str) -> str | None:
        async def run(conn: Conn) -> str | None:
            value = await conn.fetchval("SELECT value FROM settings WHERE key = $1", key)
            return None if value is None else str(value)

        return await self._read(run)

    async def set_setting(self, key: str, value: str | None, *, actor: str | None = None) -> None:
        async def run(conn: Conn) -> None:
            if value is None:
                await conn.execute("DELETE FROM settings WHERE key = $1", key)
            else:
                await conn.execute(
                    "INSERT INTO settings (key, value) VALUES ($1, $2)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    key,
                    value,
                )
            await self._audit(conn, "setting.changed", actor=actor, detail={"key": key, "value": value})

        await self._write(run)

    async def setting_default(self, key: str, value: str, *, actor: str | None = None) -> str:
        """The stored value of ``key``, storing ``value`` first when there is none: the first writer
        wins, across processes. The value is never audited (a generated secret), only its key."""

        async def run(conn: Conn) -> str:
            stored = await conn.fetchval(
                "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING RETURNING value",
                key,
                value,
            )
            if stored is not None:
                await self._audit(conn, "setting.created", actor=actor, detail={"key": key})
                return str(stored)
            return str(await conn.fetchval("SELECT value FROM settings WHERE key = $1", key))

        return await self._write(run)

    # -- guardrail inputs -----------------------------------------------------------------------

    async def action_history(self, target: str, since: float) -> tuple[int, int]:
        """(actions on ``target`` since ``since`` and since its last breaker reset, consecutive
        failed actions at the end of its history). The rules that use them live in the engine."""

        async def run(conn: Conn) -> tuple[int, int]:
            reset = await conn.fetchval(
                "SELECT coalesce(max(ts), 0) FROM audit WHERE target = $1 AND kind = 'breaker.reset'", target
            )
            count = await conn.fetchval(
                "SELECT count(*) FROM audit WHERE target = $1 AND kind = 'action.executed' AND ts >= $2",
                target,
                max(since, float(reset)),
            )
            failures = 0
            for r in await conn.fetch(
                "SELECT detail FROM audit WHERE target = $1 AND kind IN ('action.executed', 'breaker.reset')"
                " ORDER BY id DESC LIMIT 50",
                target,
            ):
                if json.loads(r["detail"]).get("ok") is False:
                    failures += 1
                else:
                    break
            return int(count), failures

        return await self._read(run)
