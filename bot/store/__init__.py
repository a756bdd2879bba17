"""State: the :class:`Store` protocol the engine talks to, and its backends.

``open_store(path)`` gives the embedded default (SQLite). Only the lifecycle's events write a state
(see :mod:`bot.lifecycle` and :mod:`bot.store.protocol`).
"""

from __future__ import annotations

from pathlib import Path

from bot.store.protocol import Store
from bot.store.records import DecisionOutcome, Fence, IngestItem, IngestResult, StepResult, process_owner
from bot.store.sqlite import SQLiteStore


async def open_store(path: Path | str) -> Store:
    """Open the state store at ``path`` (creating and migrating it)."""
    return await SQLiteStore(path).open()


__all__ = [
    "DecisionOutcome",
    "Fence",
    "IngestItem",
    "IngestResult",
    "SQLiteStore",
    "StepResult",
    "Store",
    "open_store",
    "process_owner",
]
