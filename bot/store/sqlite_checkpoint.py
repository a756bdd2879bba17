"""WAL checkpoints off the commit path: a background thread copies committed pages into the database.

In WAL mode SQLite appends every commit to the ``-wal`` file and, by default, the connection whose
commit takes the WAL past 1,000 pages copies them back into the database file itself, inside that
COMMIT (a checkpoint, with two fsyncs). On the webhook's path that stalled a group of notifications
by 10-50 ms now and then. Here the store's connection checkpoints only past a much higher mark
(:data:`SAFETY_PAGES`), and this thread, on a connection of its own, runs passive checkpoints (which
never block a writer or a reader) shortly after commits.

Why the WAL stays bounded: a passive checkpoint that catches up lets the next writer start the WAL
over from its beginning. Under a steady stream of commits it rarely catches up exactly (and a
restarting checkpoint from this thread would starve: the store takes the write lock again at once),
so past :data:`RESTART_PAGES` the thread asks the store thread to run one more passive checkpoint
itself, after it has answered its callers and before its next transaction: it copies only what the
background rounds left, and the next transaction starts the WAL over. If the thread cannot keep up at
all (starved of CPU, a reader holding an old snapshot), the writer's own automatic checkpoint takes
over at :data:`SAFETY_PAGES`, as before.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

SAFETY_PAGES = 16_384
"""WAL pages (64 MiB at 4 KiB) past which the committing connection checkpoints by itself."""
RESTART_PAGES = 4_096
"""WAL pages (16 MiB) past which the store thread copies the last pages itself, between two
transactions, so that the next one starts the WAL over."""
DELAY_S = 0.05
"""How long the thread lets commits accumulate before a checkpoint (fewer, larger copies)."""


class Checkpointer:
    """A daemon thread running ``PRAGMA wal_checkpoint(PASSIVE)`` after the store commits."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="store-checkpoint", daemon=True)
        self.checkpoints = 0
        """Passive checkpoints run so far (tests and the benchmark read it)."""
        self.restart_wanted = False
        """Set past :data:`RESTART_PAGES`: the store thread finishes the copy between two transactions."""
        self.restarts = 0
        """Times the store thread finished a copy so that the WAL could start over."""
        self.max_wal_pages = 0
        """The most pages the WAL held at a checkpoint (how far behind the thread ever was)."""

    def start(self) -> None:
        self._thread.start()

    def committed(self) -> None:
        """Called by the store thread after a COMMIT: cheap when the thread is already awake."""
        if not self._wake.is_set():
            self._wake.set()

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        try:
            conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:  # the store's own automatic checkpoints still bound the WAL
            log.warning("no background WAL checkpoints for %s: %s", self.path, exc)
            return
        try:
            behind = False
            while True:
                self._wake.wait()
                if not behind:
                    time.sleep(DELAY_S)
                self._wake.clear()
                if self._stop:  # after clear(): stop() sets the flag before it wakes the thread
                    return
                behind = self._checkpoint(conn)
        finally:
            conn.close()

    def _checkpoint(self, conn: sqlite3.Connection) -> bool:
        """One passive checkpoint; True when commits landed meanwhile (go again at once)."""
        try:
            busy, wal_pages, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if wal_pages >= RESTART_PAGES:
                self.restart_wanted = True
        except sqlite3.Error as exc:  # a transient lock or I/O error: the next commit wakes us again
            log.debug("background WAL checkpoint of %s failed: %s", self.path, exc)
            return False
        self.checkpoints += 1
        self.max_wal_pages = max(self.max_wal_pages, int(wal_pages))
        if not busy and wal_pages > copied >= 0:
            self.committed()
            return True
        return False


def finish(checkpointer: Checkpointer | None, conn: sqlite3.Connection) -> None:
    """Store thread, between transactions (its callers already answered): when the background thread
    asked for it, copy the last pages so the next transaction starts the WAL over."""
    if checkpointer is None or not checkpointer.restart_wanted:
        return
    checkpointer.restart_wanted = False
    try:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    except sqlite3.Error as exc:  # the next request, or the safety mark, will do it
        log.debug("WAL checkpoint of %s failed: %s", checkpointer.path, exc)
        return
    checkpointer.restarts += 1


def configure(conn: sqlite3.Connection) -> None:
    """The store connection's side: checkpoint by itself only past the safety mark."""
    with contextlib.suppress(sqlite3.Error):
        conn.execute(f"PRAGMA wal_autocheckpoint={SAFETY_PAGES}")
