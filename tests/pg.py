"""A real PostgreSQL for the tests, and the store fixtures that run the contract on both backends.

One server per test session (Debian's ``postgresql`` binaries, a free loopback port, a folder under
/tmp, ``fsync=off``; as root it runs as the ``postgres`` user: see :mod:`bot.localpg`), one fresh
database per test. Without the binaries the PostgreSQL half of each parametrised test is skipped
with the reason; the SQLite half still runs.

Fixtures (imported by ``tests/conftest.py``):

- ``pg_server``: the session's :class:`~bot.localpg.PostgresServer`.
- ``pg_url``: the URL of a new empty database for this test (dropped after it).
- ``backend``: ``"sqlite"`` or ``"postgres"``, parametrised: a test that takes it (or ``store`` or
  ``database_line``) runs once per backend.
- ``store``: an open store of that backend (closed after the test).
- ``database_line``: the config line that selects the store, for tests that build the whole engine
  or run the CLI from a config file.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bot.localpg import PostgresServer, missing_reason
from bot.store import Store, open_store

BACKENDS = ("sqlite", "postgres")
_databases = itertools.count(1)


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
    name = f"test_{next(_databases)}"
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
async def store(database_url: str) -> AsyncIterator[Store]:
    s = await open_store(database_url)
    try:
        yield s
    finally:
        await s.close()
