"""WAL checkpoints off the commit path (``bot/store/sqlite_checkpoint.py``), on a real SQLite file.

The store's own connection no longer copies the WAL into the database inside a COMMIT (it would
only past the safety mark); a background thread does, and the WAL still starts over once that
thread has caught up, so it cannot grow without bound.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bot.alerts import Alert
from bot.store import IngestItem
from bot.store import sqlite_checkpoint as ckpt
from bot.store.sqlite import SQLiteStore
from tests.conftest import alert_payload, wait_for


def _items(n: int) -> list[IngestItem]:
    """One notification of five unmatched alerts with new fingerprints, as the webhook stores them."""
    out = []
    for j in range(5):
        raw = alert_payload("CheckpointTest", fingerprint=f"cp-{n}-{j}")["alerts"][0]
        out.append(IngestItem(Alert.model_validate(raw), None, None, None, "no playbook"))
    return out


def _checkpoint(db: Path) -> tuple[int, int] | None:
    """(frames in the WAL, frames copied into the database), from a passive checkpoint run by
    another connection; None while the background thread is checkpointing (SQLite answers busy)."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return None if busy else (int(frames), int(copied))
    finally:
        conn.close()


def _copied_all(db: Path) -> bool:
    state = _checkpoint(db)
    return state is not None and state[0] == state[1]


async def test_commits_are_checkpointed_by_the_background_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ckpt, "DELAY_S", 0.001)
    db = tmp_path / "s.sqlite3"
    store = await SQLiteStore(db).open()
    try:
        # The committing connection leaves checkpoints to the thread, up to the safety mark.
        autocheckpoint = await store._run(
            lambda: store.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        )
        assert autocheckpoint == ckpt.SAFETY_PAGES
        assert store.checkpointer is not None
        for n in range(50):
            await store.ingest(_items(n))
        cp = store.checkpointer
        await wait_for(lambda: cp.checkpoints >= 1)
        # What was committed is in the database file itself, copied by the thread: the store's
        # connection never reached its automatic checkpoint.
        await wait_for(lambda: _copied_all(db))
    finally:
        await store.close()
    assert store.checkpointer is None  # stopped with the store


async def test_the_wal_starts_over_instead_of_growing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst writes hundreds of WAL frames; once the thread caught up, the next commit reuses the
    WAL from its start (a few frames in it), instead of appending to an ever longer file."""
    monkeypatch.setattr(ckpt, "DELAY_S", 0.001)
    monkeypatch.setattr(ckpt, "RESTART_PAGES", 64)
    db = tmp_path / "s.sqlite3"
    store = await SQLiteStore(db).open()
    try:
        for n in range(200):
            await store.ingest(_items(n))
        cp = store.checkpointer
        assert cp is not None
        await wait_for(lambda: _copied_all(db))
        assert cp.max_wal_pages > 64  # the burst did fill the WAL past the mark
        await store.ingest(_items(10_000))
        state = await wait_for(lambda: _checkpoint(db))
        assert 0 < state[0] < 64, state
        incidents = await store.list_incidents(limit=10_000, steps=False)
        assert len(incidents) == 201 * 5  # nothing lost on the way
    finally:
        await store.close()
