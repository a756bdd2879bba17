"""SQLite plumbing: one connection on one worker thread, versioned schema migrations, the audit trail.

Why SQLite: the bot must answer Alertmanager only after an alert is on disk, survive restarts with
pending approvals intact, and let the CLI (another process) decide approvals with a compare-and-set.
SQLite does all three without a service to run. All calls go through one worker thread, which keeps
the event loop free and serialises writes within the process; ``BEGIN IMMEDIATE`` serialises them
across processes. The audit table is append-only, enforced by triggers.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from bot.errors import StoreError
from bot.incidents import AuditEntry, iso
from bot.store.records import dumps
from bot.store.sqlite_checkpoint import Checkpointer
from bot.store.sqlite_checkpoint import configure as configure_checkpoints
from bot.store.sqlite_checkpoint import finish as finish_checkpoint

T = TypeVar("T")

_V1 = """
CREATE TABLE IF NOT EXISTS incidents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    fingerprint TEXT NOT NULL,
    starts_at TEXT NOT NULL,
    alertname TEXT NOT NULL,
    alert_status TEXT NOT NULL,
    state TEXT NOT NULL,
    playbook TEXT,
    target TEXT,
    target_index INTEGER,
    labels TEXT NOT NULL,
    annotations TEXT NOT NULL,
    note TEXT NOT NULL DEFAULT '',
    next_step INTEGER NOT NULL DEFAULT 0,
    source TEXT NOT NULL DEFAULT 'alertmanager',
    dry_run INTEGER NOT NULL DEFAULT 0,
    chat_ref TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    ends_at TEXT,
    UNIQUE (fingerprint, starts_at)
);
CREATE INDEX IF NOT EXISTS incidents_state ON incidents (state);
CREATE TABLE IF NOT EXISTS step_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id INTEGER REFERENCES incidents (id),
    step_index INTEGER NOT NULL,
    step_id TEXT NOT NULL,
    step_type TEXT NOT NULL,
    mutating INTEGER NOT NULL,
    status TEXT NOT NULL,
    summary TEXT NOT NULL DEFAULT '',
    details TEXT NOT NULL DEFAULT '',
    data TEXT NOT NULL DEFAULT '{}',
    error TEXT,
    plan TEXT,
    plan_hash TEXT,
    started_at REAL NOT NULL,
    finished_at REAL,
    owner TEXT
);
CREATE INDEX IF NOT EXISTS step_runs_incident ON step_runs (incident_id);
CREATE TABLE IF NOT EXISTS approvals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id INTEGER NOT NULL REFERENCES incidents (id),
    step_run_id INTEGER NOT NULL REFERENCES step_runs (id),
    step_id TEXT NOT NULL,
    step_index INTEGER NOT NULL,
    step_type TEXT NOT NULL,
    plan TEXT NOT NULL,
    plan_hash TEXT NOT NULL,
    state TEXT NOT NULL,
    required INTEGER NOT NULL,
    decisions TEXT NOT NULL DEFAULT '[]',
    requested_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    decided_by TEXT,
    decided_at REAL,
    chat_ref TEXT NOT NULL DEFAULT '{}',
    owner TEXT
);
CREATE INDEX IF NOT EXISTS approvals_state ON approvals (state);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    incident_id INTEGER,
    actor TEXT,
    target TEXT,
    plan_hash TEXT,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS audit_target ON audit (target, kind, ts);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_V2_COLUMNS = (
    ("incidents", "requested_by", "TEXT"),
    ("incidents", "alert_count", "INTEGER NOT NULL DEFAULT 1"),
    ("incidents", "merged_into", "INTEGER"),
    ("approvals", "requested_by", "TEXT"),
)
_V2_INDEXES = """
CREATE INDEX IF NOT EXISTS incidents_open_by_target ON incidents (target, playbook, state);
CREATE INDEX IF NOT EXISTS incidents_firing_by_target ON incidents (target, alertname, alert_status);
CREATE INDEX IF NOT EXISTS approvals_incident ON approvals (incident_id, state);
"""


def _execute_script(conn: sqlite3.Connection, script: str) -> None:
    """Run a script statement by statement inside the caller's transaction (``executescript``
    would COMMIT first)."""
    buf = ""
    for part in script.split(";"):
        buf += part + ";"
        if sqlite3.complete_statement(buf):
            if buf.strip(" \n;"):
                conn.execute(buf)
            buf = ""


def _migrate_v1(conn: sqlite3.Connection) -> None:
    _execute_script(conn, _V1)


def _migrate_v2(conn: sqlite3.Connection) -> None:
    """Requester of hand-started work, alert-storm grouping, and indexed look-ups by target."""
    for table, column, decl in _V2_COLUMNS:
        have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
    _execute_script(conn, _V2_INDEXES)


def _migrate_v3(conn: sqlite3.Connection) -> None:
    """Hand-started playbooks keep their parameters (the eviction pattern) beside the name."""
    if "params" not in {r[1] for r in conn.execute("PRAGMA table_info(incidents)")}:
        conn.execute("ALTER TABLE incidents ADD COLUMN params TEXT NOT NULL DEFAULT '{}'")


def _migrate_v4(conn: sqlite3.Connection) -> None:
    """Leases: which process runs an incident (with a fencing token), and who leads the scheduler."""
    have = {r[1] for r in conn.execute("PRAGMA table_info(incidents)")}
    for column, decl in (
        ("lease_owner", "TEXT"),
        ("lease_until", "REAL NOT NULL DEFAULT 0"),
        ("lease_token", "INTEGER NOT NULL DEFAULT 0"),
    ):
        if column not in have:
            conn.execute(f"ALTER TABLE incidents ADD COLUMN {column} {decl}")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS leaders (name TEXT PRIMARY KEY, owner TEXT NOT NULL,"
        " until REAL NOT NULL, token INTEGER NOT NULL)"
    )
    conn.execute("CREATE INDEX IF NOT EXISTS incidents_lease ON incidents (state, lease_until)")


def _migrate_v5(conn: sqlite3.Connection) -> None:
    """Links the alert came with (its Prometheus graph, Alertmanager), shown on the incident card."""
    if "links" not in {r[1] for r in conn.execute("PRAGMA table_info(incidents)")}:
        conn.execute("ALTER TABLE incidents ADD COLUMN links TEXT NOT NULL DEFAULT '{}'")


def _migrate_v6(conn: sqlite3.Connection) -> None:
    """Charts in the store, not only as files beside it: the incident page shows a chart whichever
    replica (or host) drew it (see :meth:`bot.store.protocol.Store.save_chart`)."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS charts (step_run_id INTEGER PRIMARY KEY REFERENCES step_runs (id),"
        " png BLOB NOT NULL, created_at REAL NOT NULL)"
    )


OPEN_STATES_SQL = "('new', 'diagnosing', 'awaiting_approval', 'remediating')"
_V7_INDEXES = f"""
DROP INDEX IF EXISTS incidents_open_by_target;
DROP INDEX IF EXISTS incidents_firing_by_target;
DROP INDEX IF EXISTS incidents_lease;
CREATE INDEX incidents_open_by_target ON incidents (target, playbook, state)
    WHERE state IN {OPEN_STATES_SQL};
CREATE INDEX incidents_firing_by_target ON incidents (target, alertname, alert_status)
    WHERE alert_status = 'firing' AND state NOT IN ('unmatched', 'merged');
CREATE INDEX incidents_lease ON incidents (state, lease_until) WHERE state IN {OPEN_STATES_SQL};
"""


def _migrate_v7(conn: sqlite3.Connection) -> None:
    """The look-ups of open or firing incidents by target, and the lease sweep, use partial indexes
    holding only the rows they can find (each query repeats the index's condition word for word, so
    SQLite uses it): closed, unmatched and merged incidents, the bulk of the table, are no longer
    written into three indexes on every ingest."""
    _execute_script(conn, _V7_INDEXES)


_ACTIONS = "('action.executed', 'breaker.reset')"
_V8_INDEXES = f"""
DROP INDEX IF EXISTS incidents_state;
DROP INDEX IF EXISTS audit_target;
DROP INDEX IF EXISTS audit_actions_by_target;
CREATE INDEX audit_actions_by_target ON audit (target, kind, ts) WHERE kind IN {_ACTIONS};
"""


def _migrate_v8(conn: sqlite3.Connection) -> None:
    """Every alert writes an incident and an audit row; two indexes held every one of them for
    look-ups that only ever find a few: open incidents by state (``incidents_lease`` serves those:
    same condition) and actions/breaker resets by target. About 40 us per notification each."""
    _execute_script(conn, _V8_INDEXES)


MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _migrate_v1,
    _migrate_v2,
    _migrate_v3,
    _migrate_v4,
    _migrate_v5,
    _migrate_v6,
    _migrate_v7,
    _migrate_v8,
)
"""Schema versions in order; ``PRAGMA user_version`` records how many have been applied."""


class SQLiteBase:
    """Connection, transactions and the audit trail; the other parts of the store build on these."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._conn: sqlite3.Connection | None = None
        self.checkpointer: Checkpointer | None = None
        """Background WAL checkpoints (see :mod:`bot.store.sqlite_checkpoint`), once open."""
        self.write_failures = 0
        """Consecutive failed write transactions (readiness reports the store as failing)."""

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(self._guard, fn, *args, **kwargs))

    def _guard(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except sqlite3.Error as exc:
            raise StoreError(f"state store {self.path}: {exc}") from exc

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("the store is not open")
        return self._conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error:
            self.write_failures += 1
            raise
        self.write_failures = 0
        self._committed()
        finish_checkpoint(self.checkpointer, conn)

    def _committed(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.committed()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=10000")
        self._conn = conn
        self._migrate(conn)
        configure_checkpoints(conn)
        self.checkpointer = Checkpointer(self.path)
        self.checkpointer.start()

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        """Apply the migrations this file has not seen, each in its own transaction (processes that
        open the same file at once serialise on ``BEGIN IMMEDIATE`` and re-read the version)."""
        for version, migration in enumerate(MIGRATIONS, start=1):
            conn.execute("BEGIN IMMEDIATE")
            try:
                if conn.execute("PRAGMA user_version").fetchone()[0] < version:
                    migration(conn)
                    conn.execute(f"PRAGMA user_version = {version}")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    async def open(self) -> Any:
        await self._run(self._open)
        return self

    async def close(self) -> None:
        if self.checkpointer is not None:  # joins its thread: off the event loop
            await asyncio.get_running_loop().run_in_executor(self._executor, self.checkpointer.stop)
            self.checkpointer = None
        if self._conn is not None:
            await self._run(self.conn.close)
            self._conn = None
        self._executor.shutdown(wait=True)

    async def ping(self) -> None:
        """Raise :class:`StoreError` unless the store answers and can write (readiness).

        A read alone is not enough: with the disk full every write fails while reads still work, and
        a replica that cannot persist alerts must not be sent any.
        """

        def run() -> None:
            self.conn.execute("SELECT 1").fetchone()
            with self._tx() as conn:
                conn.execute(
                    "INSERT OR REPLACE INTO settings (key, value) VALUES ('readiness', ?)",
                    (str(time.time()),),
                )

        await self._run(run)

    # -- audit ----------------------------------------------------------------------------------

    @staticmethod
    def _audit(
        conn: sqlite3.Connection,
        kind: str,
        *,
        incident_id: int | None = None,
        actor: str | None = None,
        target: str | None = None,
        plan_hash: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        conn.execute(
            "INSERT INTO audit (ts, kind, incident_id, actor, target, plan_hash, detail) VALUES (?,?,?,?,?,?,?)",
            (time.time(), kind, incident_id, actor, target, plan_hash, dumps(detail or {})),
        )

    async def audit(self, kind: str, **kw: Any) -> None:
        """An audit record that changes no state (a refusal, a breaker reset, a probe note)."""

        def run() -> None:
            with self._tx() as conn:
                self._audit(conn, kind, **kw)

        await self._run(run)

    async def list_audit(self, *, limit: int = 200, incident_id: int | None = None) -> list[AuditEntry]:
        def run() -> list[AuditEntry]:
            sql, args = "SELECT * FROM audit", []
            if incident_id is not None:
                sql += " WHERE incident_id = ?"
                args.append(incident_id)
            sql += " ORDER BY id DESC LIMIT ?"
            rows = self.conn.execute(sql, (*args, limit)).fetchall()
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

        return await self._run(run)

    # -- settings (kill switch) -----------------------------------------------------------------

    async def get_setting(self, key: str) -> str | None:
        def run() -> str | None:
            row = self.conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
            return None if row is None else str(row["value"])

        return await self._run(run)

    async def set_setting(self, key: str, value: str | None, *, actor: str | None = None) -> None:
        def run() -> None:
            with self._tx() as conn:
                if value is None:
                    conn.execute("DELETE FROM settings WHERE key = ?", (key,))
                else:
                    conn.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", (key, value))
                self._audit(conn, "setting.changed", actor=actor, detail={"key": key, "value": value})

        await self._run(run)

    async def setting_default(self, key: str, value: str, *, actor: str | None = None) -> str:
        """The stored value of ``key``, storing ``value`` first when there is none: the first writer
        wins, across processes. The value is never audited (a generated secret), only its key."""

        def run() -> str:
            with self._tx() as conn:
                cur = conn.execute("INSERT OR IGNORE INTO settings (key, value) VALUES (?, ?)", (key, value))
                if cur.rowcount:
                    self._audit(conn, "setting.created", actor=actor, detail={"key": key})
                row = conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
            return str(row["value"])

        return await self._run(run)

    # -- guardrail inputs -----------------------------------------------------------------------

    async def action_history(self, target: str, since: float) -> tuple[int, int]:
        """(actions on ``target`` since ``since`` and since its last breaker reset, consecutive
        failed actions at the end of its history). The rules that use them live in the engine."""

        def run() -> tuple[int, int]:
            reset = self.conn.execute(
                f"SELECT coalesce(max(ts), 0) FROM audit WHERE target = ? AND kind IN {_ACTIONS}"  # noqa: S608
                " AND kind = 'breaker.reset'",
                (target,),
            ).fetchone()[0]
            count = self.conn.execute(
                f"SELECT COUNT(*) FROM audit WHERE target = ? AND kind IN {_ACTIONS}"  # noqa: S608
                " AND kind = 'action.executed' AND ts >= ?",
                (target, max(since, reset)),
            ).fetchone()[0]
            failures = 0
            for r in self.conn.execute(
                f"SELECT detail FROM audit WHERE target = ? AND kind IN {_ACTIONS}"  # noqa: S608
                " ORDER BY id DESC LIMIT 50",
                (target,),
            ):
                d = json.loads(r["detail"])
                if d.get("ok") is False:
                    failures += 1
                else:
                    break
            return int(count), failures

        return await self._run(run)
