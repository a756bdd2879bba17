"""State: the :class:`Store` protocol the engine talks to, and its backends.

``open_store(config)`` opens the backend the config names: the embedded default (SQLite, the
``state_file``) or PostgreSQL (``database_url: postgresql://...``, for several replicas). Only the
lifecycle's events write a state (see :mod:`bot.lifecycle` and :mod:`bot.store.protocol`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bot.store.protocol import Store
from bot.store.records import DecisionOutcome, Fence, IngestItem, IngestResult, StepResult, process_owner
from bot.store.sqlite import SQLiteStore

if TYPE_CHECKING:
    from bot.config import Config

_PG_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(url: str) -> bool:
    return url.startswith(_PG_SCHEMES)


def _location(where: Config | Path | str) -> tuple[str, Path | str]:
    """(database URL or "", SQLite file) of a config, a URL or a path."""
    if isinstance(where, Path):
        return "", where
    if isinstance(where, str):
        return where, where[len("sqlite://") :] if where.startswith("sqlite://") else where
    return where.database_url or "", where.state_file


async def open_store(where: Config | Path | str) -> Store:
    """Open (creating and migrating) the store of a config, a database URL or a SQLite file path.

    The PostgreSQL backend (and its driver) is imported only when a config asks for it, so the
    embedded default loads nothing more than it did.
    """
    url, path = _location(where)
    if is_postgres_url(url):
        from bot.store.postgres import PostgresStore

        return await PostgresStore(url).open()
    return await SQLiteStore(path).open()


__all__ = [
    "DecisionOutcome",
    "Fence",
    "IngestItem",
    "IngestResult",
    "SQLiteStore",
    "StepResult",
    "Store",
    "is_postgres_url",
    "open_store",
    "process_owner",
]
