"""A real PostgreSQL for the tests, and the store fixtures that run the contract on both backends.

One server per test session, so one per pytest-xdist worker (Debian's ``postgresql`` binaries, a
free loopback port, a folder of its own under /tmp, ``fsync=off``; as root it runs as the
``postgres`` user: see :mod:`bot.localpg`), one fresh database per test. Without the binaries the
PostgreSQL half of each parametrised test is skipped with the reason; the SQLite half still runs.

Fixtures (imported by ``tests/conftest.py``):

- ``pg_server``: the session's :class:`~bot.localpg.PostgresServer`.
- ``pg_url``: the URL of a new empty database for this test (dropped after it).
- ``backend``: ``"sqlite"`` or ``"postgres"``, parametrised: a test that takes it (or ``store`` or
  ``database_line``) runs once per backend.
- ``store``: an open store of that backend (closed after the test).
- ``database_line``: the config line that selects the store, for tests that build the whole engine
  or run the CLI from a config file.
- ``asked_database_line``: ``database_line`` if the test takes ``backend``, else "": for shared
  fixtures whose tests opt in to both backends one by one.

:class:`RawDB` reads and writes a store's tables behind its back (as another process, or time
passing, would), with the same SQL on both backends.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import sqlite3
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from bot.localpg import PostgresServer, missing_reason
from bot.store import Store, open_store

BACKENDS = ("sqlite", "postgres")
_databases = itertools.count(1)
# Each pytest-xdist worker is a process with its own counter and its own server, so the counter alone
# is unique per server; the worker's name in it keeps names unique should a server ever be shared.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> Iterator[str]:
    name = f"test_{_WORKER}_{next(_databases)}"
    url = pg_server.create_database(name)
    yield url
    pg_server.drop_database(name)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store's location for this backend: a PostgreSQL URL, or ``sqlite://`` + a file path."""
    if backend == "postgres":
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite://{tmp_path / 'state.sqlite3'}"


@pytest.fixture
def database_line(database_url: str) -> str:
    """The config line naming this test's store (``database_url: sqlite://...`` or ``postgresql://``)."""
    return f"database_url: {database_url}\n"


@pytest.fixture
def asked_database_line(request: pytest.FixtureRequest) -> str:
    """For fixtures shared by many tests (the Slack bot, a service config) of which only some need
    both backends: ``database_line`` when the test takes the ``backend`` fixture (so it runs once
    per backend), else "" (the SQLite ``state_file`` default, once)."""
    return str(request.getfixturevalue("database_line")) if "backend" in request.fixturenames else ""


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    s = await open_store(database_url)
    try:
        yield s
    finally:
        await s.close()


class RawDB:
    """Synchronous SQL on a store's tables, outside the store: what the tests check invariants with
    and what simulates another (dead) process writing, on SQLite or PostgreSQL alike.

    The SQL is written once with SQLite's ``?`` placeholders; on PostgreSQL they become ``$1``,
    ``$2``... (the only dialect difference the callers meet: none of them put a ``?`` in a string
    literal). SQLite: a fresh connection per call, read-only for reads (one kept open across a
    restart could keep reading the WAL index the old store deleted). PostgreSQL: one autocommit
    asyncpg connection on a private event loop (each statement sees what was committed before it),
    so these calls work between the steps of a test that drives its own loop.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.postgres = url.startswith(("postgresql://", "postgres://"))
        self.path = url.removeprefix("sqlite://")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: asyncpg.Connection[asyncpg.Record] | None = None

    @staticmethod
    def numbered(sql: str) -> str:
        """``?`` placeholders as PostgreSQL's ``$n``."""
        n = itertools.count(1)
        return re.sub(r"\?", lambda _: f"${next(n)}", sql)

    def _pg(self) -> tuple[asyncio.AbstractEventLoop, asyncpg.Connection[asyncpg.Record]]:
        if self._conn is None or self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._conn = self._loop.run_until_complete(asyncpg.connect(self.url))
        return self._loop, self._conn

    def q(self, sql: str, *args: Any) -> list[Mapping[str, Any]]:
        """The rows of a query (each row read by column name)."""
        if self.postgres:
            loop, conn = self._pg()
            return list(loop.run_until_complete(conn.fetch(self.numbered(sql), *args)))
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)
        conn.row_factory = sqlite3.Row
        try:
            return list(conn.execute(sql, args).fetchall())
        finally:
            conn.close()

    def write(self, sql: str, *args: Any) -> None:
        """One statement, committed at once."""
        if self.postgres:
            loop, conn = self._pg()
            loop.run_until_complete(conn.execute(self.numbered(sql), *args))
            return
        conn = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        try:
            conn.execute(sql, args)
        finally:
            conn.close()

    async def awrite(self, sql: str, *args: Any) -> None:
        """:meth:`write` from inside a running event loop (an async test): on PostgreSQL a
        connection of that loop's, for this statement only."""
        if not self.postgres:
            self.write(sql, *args)
            return
        conn = await asyncpg.connect(self.url)
        try:
            await conn.execute(self.numbered(sql), *args)
        finally:
            await conn.close()

    def close(self) -> None:
        loop, conn = self._loop, self._conn
        self._loop = self._conn = None
        if loop is not None:
            if conn is not None:
                loop.run_until_complete(conn.close())
            loop.close()
